//! `GET /history`: credits by partner key (exact or prefix) and/or date range,
//! from every channel (pulled and uploaded files, and API exchanges:
//! `file_id = 0`), a page at a time; `GET /history.csv`: the same search
//! as a CSV file.
//!
//! What must stay true: a partner user searches only its own partner (the
//! query's `partner` is ignored for them); the search walks the ledger's
//! clustered key `(partner, partner_key, …)`, so a prefix is a range scan,
//! never a full scan. A search by dates alone lists every credit of the
//! partner in the range (paged). The CSV is for Excel unless `lang=en`
//! (`crate::excel`).

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
    /// CSV only: `en` for English headers and plain UTF-8.
    lang: Option<String>,
}

#[derive(Serialize, Clone)]
struct Row {
    at: String,
    /// Unix seconds (for the CSV's own time form).
    unix: i64,
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

/// Asked of a partner (and ops) when a search names neither key nor dates.
const NOTHING_GIVEN: &str = "指定キー、または期間（開始日・終了日）を入力してください。";

fn bad_date(s: &str) -> String {
    format!("日付「{s}」は YYYY-MM-DD の形式（例: 2026-11-30）で入力してください。")
}

impl Refused {
    fn page(self, p: &Page) -> Response {
        match self {
            Refused::NoSuchPartner => p.not_found(),
            Refused::BadDate(s) => p.error(StatusCode::BAD_REQUEST, &bad_date(&s)),
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
    let given = |s: &Option<String>| s.as_deref().is_some_and(|s| !s.trim().is_empty());
    if key.is_empty() && !given(&q.from) && !given(&q.to) {
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
        // No key: every key (the empty prefix), within the dates.
        prefix: key.is_empty() || q.mode.as_deref() == Some("prefix"),
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
            unix: r.credited_unix,
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
    let partners = super::partner_choices(&state);
    let b = bounds(&state, &page, &q);
    let base = minijinja::context! {
        partners => partners,
        q_partner => q.partner.clone().or(page.session.partner.clone()),
        q_key => q.key.clone(),
        q_mode => q.mode.clone().unwrap_or_else(|| "exact".into()),
        q_from => q.from.clone(),
        q_to => q.to.clone(),
        ..page.ctx()
    };
    // A bad date or an empty search keeps what was typed in the form.
    let b = match b {
        Ok(Some(b)) => b,
        Ok(None) if q.key.is_some() || q.from.is_some() || q.to.is_some() => {
            let ctx = minijinja::context! { error => NOTHING_GIVEN, ..base };
            return render(StatusCode::BAD_REQUEST, "history.html", ctx);
        }
        Ok(None) => return render(StatusCode::OK, "history.html", base),
        Err(Refused::BadDate(s)) => {
            let ctx = minijinja::context! { error => bad_date(&s), ..base };
            return render(StatusCode::BAD_REQUEST, "history.html", ctx);
        }
        Err(r) => return r.page(&page),
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
        csv => format!("/history.csv?{}", query_string(&Search { page: None, lang: None, ..q.clone() })),
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
        Ok(None) => return page.error(StatusCode::BAD_REQUEST, NOTHING_GIVEN),
        Err(r) => return r.page(&page),
    };
    let tz = state.config.daemon.timezone;
    let actor = format!("user:{}", page.session.email);
    let client = super::client(&addr);
    let partner = b.partner.clone();
    let lang = crate::excel::Lang::parse(q.lang.as_deref());
    let encoding = state
        .config
        .partner(&partner)
        .map_or(crate::config::Encoding::Utf8, |p| p.encoding);
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
    use crate::excel::Lang;
    let mut out = lang.writer();
    let _ = out.write_record(match lang {
        Lang::Ja => [
            "積算日時",
            "指定キー",
            "会員ID",
            "マイル",
            "経路",
            "ファイル",
            "行",
        ],
        Lang::En => [
            "credited_at",
            "partner_key",
            "member_id",
            "miles",
            "channel",
            "file",
            "line",
        ],
    });
    // Partner keys and file names are the partner's text: a spreadsheet
    // must not run them (`csvcell`).
    use crate::csvcell::text;
    for r in &rows {
        let at = chrono::DateTime::from_timestamp(r.unix, 0)
            .map(|t| crate::excel::time(t, tz, lang))
            .unwrap_or_else(|| r.at.clone());
        let channel = match lang {
            Lang::Ja => crate::words::channel(&r.channel),
            Lang::En => r.channel.clone(),
        };
        let _ = out.write_record([
            at.as_str(),
            &text(&r.partner_key),
            &text(&r.member_id),
            &r.miles.to_string(),
            &channel,
            &text(&r.file),
            &r.line.to_string(),
        ]);
    }
    let body = out.into_inner().unwrap_or_default();
    let (body, charset) = crate::excel::encode(&String::from_utf8_lossy(&body), lang, encoding);
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_str(&format!("text/csv; charset={charset}"))
                    .expect("ASCII charset"),
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
