//! `GET /history`: credits by partner key (exact or prefix) and date range,
//! from every channel (pulled and uploaded files, and API exchanges:
//! `file_id = 0`), a page at a time; `GET /history.csv`: the same search
//! as a CSV file.
//!
//! What must stay true: a partner user searches only its own partner (the
//! query's `partner` is ignored for them); the search walks the ledger's
//! clustered key `(partner, partner_key, …)`, so a prefix is a range scan,
//! never a full scan.

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};

use super::{render, with_db, with_read, Page};
use crate::timefmt;
use crate::web::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/history", get(page))
        .route("/history.csv", get(csv))
}

/// Rows a page shows.
const PAGE: i64 = 100;
/// Rows a CSV export may hold; a larger result asks for a narrower search.
const EXPORT_MAX: i64 = 200_000;

#[derive(Deserialize, Default, Clone)]
struct Search {
    partner: Option<String>,
    key: Option<String>,
    /// `exact` (default) or `prefix`.
    mode: Option<String>,
    /// YYYY-MM-DD, in the configured zone, inclusive.
    from: Option<String>,
    to: Option<String>,
    page: Option<i64>,
}

#[derive(Serialize, Clone)]
struct Row {
    at: String,
    partner_key: String,
    member_id: String,
    miles: i64,
    channel: String,
    file: String,
    line: i64,
}

/// The search made safe: the partner it may read, the key bounds, the time
/// bounds (unix seconds), or a message for the person.
struct Bounds {
    partner: String,
    key: String,
    prefix: bool,
    from: i64,
    to: i64,
}

/// Why a search cannot run.
enum Refused {
    NoSuchPartner,
    BadDate(String),
}

impl Refused {
    fn page(self, p: &Page) -> Response {
        match self {
            Refused::NoSuchPartner => p.not_found(),
            Refused::BadDate(s) => p.error(
                StatusCode::BAD_REQUEST,
                &format!("日付「{s}」は YYYY-MM-DD の形式で入力してください。"),
            ),
        }
    }
}

fn bounds(state: &AppState, page: &Page, q: &Search) -> Result<Option<Bounds>, Refused> {
    let partner = match (&page.session.partner, &q.partner) {
        (Some(own), _) => own.clone(),
        (None, Some(p)) if state.config.partners.iter().any(|c| &c.id == p) => p.clone(),
        (None, Some(p)) if !p.is_empty() => return Err(Refused::NoSuchPartner),
        (None, _) => return Ok(None),
    };
    let key = q.key.clone().unwrap_or_default().trim().to_owned();
    if key.is_empty() {
        return Ok(None);
    }
    let tz = state.config.daemon.timezone;
    let day = |s: &Option<String>, end: bool| -> Result<i64, Refused> {
        match s.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            None => Ok(if end { i64::MAX } else { i64::MIN }),
            Some(s) => {
                let d = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
                    .map_err(|_| Refused::BadDate(s.to_owned()))?;
                let d = if end { d.succ_opt().unwrap_or(d) } else { d };
                Ok(timefmt::start_of_day(d, tz).timestamp())
            }
        }
    };
    Ok(Some(Bounds {
        partner,
        prefix: q.mode.as_deref() == Some("prefix"),
        key,
        from: day(&q.from, false)?,
        to: day(&q.to, true)?,
    }))
}

/// Matching rows `offset..offset+limit`, in key order, and the total: the
/// shared search of `query::history_search`, shaped for the page and CSV.
fn search(
    c: &rusqlite::Connection,
    b: &Bounds,
    offset: i64,
    limit: i64,
    tz: chrono_tz::Tz,
) -> Result<(Vec<Row>, i64), crate::db::DbError> {
    let found = crate::query::history_search(
        c,
        &crate::query::HistorySearch {
            partner: &b.partner,
            key: &b.key,
            prefix: b.prefix,
            from: b.from,
            to: b.to,
        },
        offset.max(0) as u64,
        Some(limit.max(0) as u64),
    )?;
    let rows = found
        .rows
        .into_iter()
        .map(|r| Row {
            at: timefmt::unix_for_people(r.credited_unix, tz),
            partner_key: r.partner_key,
            member_id: r.member_id,
            miles: r.miles,
            // An API exchange has no file: its `line` is the exchange id.
            file: if r.file_id == 0 {
                String::new()
            } else {
                r.file
            },
            channel: r.channel,
            line: r.line,
        })
        .collect();
    Ok((rows, found.total as i64))
}

async fn page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<Search>,
) -> Response {
    let page = match Page::require(&state, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let partners: Vec<String> = state.config.partners.iter().map(|p| p.id.clone()).collect();
    let b = match bounds(&state, &page, &q) {
        Ok(b) => b,
        Err(r) => return r.page(&page),
    };
    let base = minijinja::context! {
        partners => partners,
        q_partner => q.partner.clone().or(page.session.partner.clone()),
        q_key => q.key.clone(),
        q_mode => q.mode.clone().unwrap_or_else(|| "exact".into()),
        q_from => q.from.clone(),
        q_to => q.to.clone(),
        ..page.ctx()
    };
    let Some(b) = b else {
        return render(StatusCode::OK, "history.html", base);
    };
    let n = q.page.unwrap_or(1).max(1);
    let tz = state.config.daemon.timezone;
    let found = with_read(&state, move |c| {
        search(c, &b, (n - 1) * PAGE, PAGE, tz).map_err(|e| e.to_string())
    })
    .await;
    let (rows, total) = match found {
        Ok(x) => x,
        Err(r) => return r,
    };
    let pages = (total + PAGE - 1) / PAGE;
    let link = |p: i64| {
        let mut qs = q.clone();
        qs.page = Some(p);
        query_string(&qs)
    };
    let ctx = minijinja::context! {
        searched => true, rows => rows, total => total, page => n, pages => pages,
        prev => (n > 1).then(|| link(n - 1)), next => (n < pages).then(|| link(n + 1)),
        csv => format!("/history.csv?{}", query_string(&Search { page: None, ..q.clone() })),
        ..base
    };
    render(StatusCode::OK, "history.html", ctx)
}

fn query_string(q: &Search) -> String {
    let enc = |v: &str| -> String {
        v.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    };
    let mut parts = Vec::new();
    for (k, v) in [
        ("partner", &q.partner),
        ("key", &q.key),
        ("mode", &q.mode),
        ("from", &q.from),
        ("to", &q.to),
    ] {
        if let Some(v) = v {
            parts.push(format!("{k}={}", enc(v)));
        }
    }
    if let Some(p) = q.page {
        parts.push(format!("page={p}"));
    }
    parts.join("&")
}

async fn csv(
    State(state): State<AppState>,
    addr: axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<Search>,
) -> Response {
    let page = match Page::require(&state, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let b = match bounds(&state, &page, &q) {
        Ok(Some(b)) => b,
        Ok(None) => {
            return page.error(
                StatusCode::BAD_REQUEST,
                "パートナーと指定キーを入力してください。",
            )
        }
        Err(r) => return r.page(&page),
    };
    let tz = state.config.daemon.timezone;
    let actor = format!("user:{}", page.session.email);
    let client = super::client(&addr);
    let partner = b.partner.clone();
    let found = with_read(&state, move |c| {
        let (rows, total) = search(c, &b, 0, EXPORT_MAX + 1, tz).map_err(|e| e.to_string())?;
        if total > EXPORT_MAX {
            return Ok(Err(total));
        }
        Ok(Ok((rows, b)))
    })
    .await;
    // Audited after the read (the export is only sent once this is written).
    let found = match found {
        Ok(Ok((rows, b))) => {
            let detail = format!(
                "{} rows, key {}{}",
                rows.len(),
                b.key,
                if b.prefix { "*" } else { "" }
            );
            with_db(&state, move |c| {
                crate::audit::record(
                    c,
                    &crate::audit::Entry {
                        actor: &actor,
                        action: "history-export",
                        partner: Some(&b.partner),
                        detail: &detail,
                        client: Some(&client),
                    },
                )
                .map_err(|e| e.to_string())
            })
            .await
            .map(|_| Ok(rows))
        }
        Ok(Err(total)) => Ok(Err(total)),
        Err(r) => Err(r),
    };
    let rows = match found {
        Ok(Ok(rows)) => rows,
        Ok(Err(total)) => {
            return page.error(
                StatusCode::BAD_REQUEST,
                &format!("該当が {total} 件あり、CSV の上限 {EXPORT_MAX} 件を超えています。期間または指定キーを絞ってください。"),
            )
        }
        Err(r) => return r,
    };
    let mut out = csv::Writer::from_writer(Vec::new());
    let _ = out.write_record([
        "credited_at",
        "partner_key",
        "member_id",
        "miles",
        "channel",
        "file",
        "line",
    ]);
    // Partner keys and file names are the partner's text: a spreadsheet
    // must not run them (`csvcell`).
    use crate::csvcell::text;
    for r in &rows {
        let _ = out.write_record([
            r.at.as_str(),
            &text(&r.partner_key),
            &text(&r.member_id),
            &r.miles.to_string(),
            &r.channel,
            &text(&r.file),
            &r.line.to_string(),
        ]);
    }
    let body = out.into_inner().unwrap_or_default();
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/csv; charset=UTF-8"),
            ),
            (
                header::CONTENT_DISPOSITION,
                HeaderValue::from_str(&format!("attachment; filename=\"history-{partner}.csv\""))
                    .unwrap_or(HeaderValue::from_static(
                        "attachment; filename=\"history.csv\"",
                    )),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body,
    )
        .into_response()
}
