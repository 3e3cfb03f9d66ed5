//! Ops pages: the dashboard of every partner (what `milebatch status`
//! shows, with red/amber/green), the member lookup and the audit log
//! (filtered by action, user, partner and dates; `/ops/audit.csv`).
//!
//! What must stay true: only ops users see these pages; a partner user
//! gets 404, as for any page that is not theirs. The pages only read.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};

use super::{error_page, render, with_db, with_read, Page};
use crate::timefmt;
use crate::web::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ops", get(dashboard))
        .route("/ops/members", get(member))
        .route("/ops/audit", get(audit_log))
        .route("/ops/audit.csv", get(audit_csv))
}

/// The page for `headers`' session if it is an ops user's; else a redirect
/// (no session) or the same 404 as a missing page.
async fn ops_page(state: &AppState, headers: &HeaderMap) -> Result<Page, Response> {
    let page = Page::require(state, headers).await?;
    if !page.session.is_ops() {
        return Err(page.not_found());
    }
    Ok(page)
}

/// The 404 message, the same for every reason.
pub const NOT_FOUND: &str = "ページが見つかりません。";

/// The 404 page without a session (no menu); see [`Page::not_found`].
pub fn not_found() -> Response {
    error_page(StatusCode::NOT_FOUND, NOT_FOUND)
}

/// One dashboard row.
#[derive(Debug, Serialize)]
struct Row {
    id: String,
    /// The configured name with the id.
    label: String,
    /// red: failing now; amber: needs a look (a missed delivery, a refused
    /// file or a tidy-up owed today); green: fine.
    light: &'static str,
    light_text: &'static str,
    last_run: String,
    last_outcome: String,
    next_run: String,
    consecutive_failures: i64,
    last_error: String,
    last_missed: String,
    refused_today: i64,
}

async fn dashboard(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let page = match ops_page(&state, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let config = state.config.clone();
    let labels: Vec<String> = config
        .partners
        .iter()
        .map(|p| super::partner_label(&state, &p.id))
        .collect();
    let rows = with_read(&state, move |c| {
        let tz = config.daemon.timezone;
        let now = chrono::Utc::now();
        let today = timefmt::start_of_day(now.with_timezone(&tz).date_naive(), tz);
        let today = crate::db::now_text(today);
        let mut rows = Vec::new();
        for (p, label) in config.partners.iter().zip(labels) {
            let st = crate::query::partner_status(c, &p.id).map_err(|e| e.to_string())?;
            let refused_today: i64 = c
                .query_row(
                    "SELECT count(*) FROM files WHERE partner = ?1 AND outcome IN ('refused', 'duplicate') \
                     AND started_at >= ?2",
                    rusqlite::params![p.id, today],
                    |r| r.get(0),
                )
                .map_err(|e| e.to_string())?;
            let missed_today = st.last_missed.as_deref().is_some_and(|m| m >= today.as_str());
            let (light, light_text) = if st.failing {
                ("red", "失敗中")
            } else if missed_today || refused_today > 0 || !st.waiting.is_empty() {
                ("amber", "要確認")
            } else {
                ("green", "正常")
            };
            let people = |t: &Option<String>| {
                t.as_deref()
                    .map(|t| timefmt::stored_for_people(t, tz))
                    .unwrap_or_else(|| "—".into())
            };
            rows.push(Row {
                id: p.id.clone(),
                label,
                light,
                light_text,
                last_run: people(&st.last_run.as_ref().map(|r| r.started_at.clone())),
                last_outcome: st
                    .last_run
                    .as_ref()
                    .map(|r| r.outcome.clone().unwrap_or_else(|| "running".into()))
                    .unwrap_or_else(|| "—".into()),
                // The daemon's plan: business days, on_holiday, moves named.
                next_run: p
                    .plan(&config.daemon)
                    .next_after(now)
                    .map(|o| o.for_people(tz))
                    .unwrap_or_else(|| "—".into()),
                consecutive_failures: st.consecutive_failures,
                last_error: if st.failing {
                    st.last_error.clone().unwrap_or_default()
                } else {
                    String::new()
                },
                last_missed: people(&st.last_missed),
                refused_today,
            });
        }
        Ok(rows)
    })
    .await;
    let tz = state.config.daemon.timezone;
    let notify = with_read(&state, move |c| {
        let counts =
            crate::store::outbox::counts(c, chrono::Utc::now()).map_err(|e| e.to_string())?;
        let unsent = crate::store::outbox::unsent(c, 10).map_err(|e| e.to_string())?;
        Ok((counts, unsent))
    })
    .await;
    let (notify_counts, unsent) = match notify {
        Ok(n) => n,
        Err(r) => return r,
    };
    let unsent: Vec<_> = unsent
        .into_iter()
        .map(|d| {
            minijinja::context! {
                at => timefmt::stored_for_people(&d.created_at, tz),
                partner => d.partner.as_deref().map(|p| super::partner_label(&state, p)).unwrap_or_default(),
                event => crate::notify::Kind::parse(&d.kind).map_or(d.kind.as_str(), |k| k.title_ja()),
                channel => match d.channel.as_str() { "email" => "メール", "webhook" => "Webhook", "ops" => "運用メール", other => other },
                target => d.target,
                failed => d.state == "failed",
                attempts => d.attempts,
                last_error => d.last_error,
            }
        })
        .collect();
    let daemon = crate::heartbeat::status(&state.config.daemon.database, chrono::Utc::now());
    let daemon_at = daemon
        .last_poll
        .as_deref()
        .map(|t| timefmt::stored_for_people(t, tz));
    match rows {
        Ok(rows) => {
            let ctx = minijinja::context! {
                rows => rows, daemon => daemon, daemon_at => daemon_at,
                notify => notify_counts, unsent => unsent, ..page.ctx()
            };
            render(StatusCode::OK, "ops_dashboard.html", ctx)
        }
        Err(r) => r,
    }
}

#[derive(Deserialize)]
struct MemberQuery {
    q: Option<String>,
}

#[derive(Debug, Serialize)]
struct LedgerRow {
    partner: String,
    partner_key: String,
    channel: String,
    file_id: i64,
    miles: i64,
    credited_at: String,
}

/// Ledger entries shown per member (newest first).
const MEMBER_ROWS: i64 = 200;

async fn member(
    State(state): State<AppState>,
    addr: axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<MemberQuery>,
) -> Response {
    let page = match ops_page(&state, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let query = q.q.unwrap_or_default().trim().to_owned();
    if query.is_empty() {
        return render(StatusCode::OK, "ops_member.html", page.ctx());
    }
    let tz = state.config.daemon.timezone;
    let actor = format!("user:{}", page.session.email);
    let client = super::client(&addr);
    let looked_up = query.clone();
    let found = with_read(&state, move |c| {
        let Some((member_id, status, miles)) =
            crate::members::balance(c, &looked_up).map_err(|e| e.to_string())?
        else {
            return Ok(None);
        };
        // Not indexed by member: an ops look-up may scan the ledger.
        let mut st = c
            .prepare(
                "SELECT l.partner, l.partner_key, l.file_id, COALESCE(f.channel, 'api'), l.miles, l.credited_at \
                 FROM ledger l JOIN members m ON m.id = l.member LEFT JOIN files f ON f.id = l.file_id AND l.file_id <> 0 \
                 WHERE m.member_id = ?1 ORDER BY l.credited_at DESC LIMIT ?2",
            )
            .map_err(|e| e.to_string())?;
        let rows = st
            .query_map(rusqlite::params![member_id, MEMBER_ROWS], |r| {
                Ok(LedgerRow {
                    partner: r.get(0)?,
                    partner_key: r.get(1)?,
                    file_id: r.get(2)?,
                    channel: r.get(3)?,
                    miles: r.get(4)?,
                    credited_at: timefmt::unix_for_people(r.get(5)?, tz),
                })
            })
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| e.to_string())?;
        let status = serde_json::to_value(status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        Ok(Some((member_id, status, miles, rows)))
    })
    .await;
    // The member's ID, not the e-mail that may have been typed.
    if let Ok(Some((member_id, ..))) = &found {
        let member_id = member_id.clone();
        if let Err(r) = with_db(&state, move |c| {
            crate::audit::record(
                c,
                &crate::audit::Entry {
                    actor: &actor,
                    action: "member-lookup",
                    partner: None,
                    detail: &format!("member {member_id}"),
                    client: Some(&client),
                },
            )
            .map_err(|e| e.to_string())
        })
        .await
        {
            return r;
        }
    }
    match found {
        Ok(found) => {
            let ctx = match found {
                Some((member_id, status, miles, rows)) => minijinja::context! {
                    q => query, found => true, member_id => member_id, status => status,
                    miles => miles, rows => rows, limit => MEMBER_ROWS, ..page.ctx()
                },
                None => minijinja::context! { q => query, found => false, ..page.ctx() },
            };
            render(StatusCode::OK, "ops_member.html", ctx)
        }
        Err(r) => r,
    }
}

#[derive(Deserialize, Default, Clone)]
struct AuditQuery {
    /// Show rows older than this id (the next page).
    before: Option<i64>,
    action: Option<String>,
    user: Option<String>,
    partner: Option<String>,
    /// YYYY-MM-DD in the configured zone, inclusive.
    from: Option<String>,
    to: Option<String>,
    /// CSV only: `en` for English headers and plain UTF-8.
    lang: Option<String>,
}

const AUDIT_PAGE: i64 = 100;
/// Rows an audit CSV may hold.
const AUDIT_EXPORT_MAX: i64 = 100_000;

/// The query as a filter, or the bad date.
fn audit_filter(q: &AuditQuery, tz: chrono_tz::Tz) -> Result<crate::audit::Filter, String> {
    let given = |s: &Option<String>| {
        s.as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let day = |s: &Option<String>, end: bool| -> Result<Option<String>, String> {
        match given(s) {
            None => Ok(None),
            Some(s) => {
                let d = chrono::NaiveDate::parse_from_str(&s, "%Y-%m-%d").map_err(|_| s.clone())?;
                let d = if end { d.succ_opt().unwrap_or(d) } else { d };
                Ok(Some(crate::db::now_text(timefmt::start_of_day(d, tz))))
            }
        }
    };
    Ok(crate::audit::Filter {
        action: given(&q.action),
        actor: given(&q.user),
        partner: given(&q.partner),
        from: day(&q.from, false)?,
        until: day(&q.to, true)?,
        before: q.before,
    })
}

/// The filter fields as a query string (for the next page and the CSV).
fn audit_query_string(q: &AuditQuery) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in [
        ("action", &q.action),
        ("user", &q.user),
        ("partner", &q.partner),
        ("from", &q.from),
        ("to", &q.to),
    ] {
        if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
            s.append_pair(k, v);
        }
    }
    s.finish()
}

async fn audit_log(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Response {
    let page = match ops_page(&state, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let tz = state.config.daemon.timezone;
    let actions: Vec<minijinja::Value> = crate::words::ACTIONS
        .iter()
        .map(|(k, w)| minijinja::context! { id => k, label => w })
        .collect();
    let base = minijinja::context! {
        actions => actions, partners => super::partner_choices(&state),
        q_action => q.action, q_user => q.user, q_partner => q.partner,
        q_from => q.from, q_to => q.to, filters => audit_query_string(&q),
        ..page.ctx()
    };
    let filter = match audit_filter(&q, tz) {
        Ok(f) => f,
        Err(bad) => {
            let ctx = minijinja::context! {
                error => format!("日付「{bad}」は YYYY-MM-DD の形式（例: 2026-11-30）で入力してください。"),
                ..base
            };
            return render(StatusCode::BAD_REQUEST, "ops_audit.html", ctx);
        }
    };
    let rows = with_read(&state, move |c| {
        crate::audit::search(c, &filter, AUDIT_PAGE).map_err(|e| e.to_string())
    })
    .await;
    match rows {
        Ok(mut rows) => {
            for r in &mut rows {
                r.at = timefmt::stored_for_people(&r.at, tz);
            }
            let next = (rows.len() as i64 == AUDIT_PAGE).then(|| rows.last().map(|r| r.id));
            let ctx = minijinja::context! { rows => rows, next => next.flatten(), ..base };
            render(StatusCode::OK, "ops_audit.html", ctx)
        }
        Err(r) => r,
    }
}

/// `GET /ops/audit.csv`: the filtered audit log for Excel (UTF-8 with a
/// BOM, Japanese headers and actions; `lang=en` for scripts).
async fn audit_csv(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Response {
    use crate::excel::Lang;
    use axum::response::IntoResponse;
    let page = match ops_page(&state, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let tz = state.config.daemon.timezone;
    let filter = match audit_filter(&q, tz) {
        Ok(f) => f,
        Err(bad) => {
            return page.error(
                StatusCode::BAD_REQUEST,
                &format!("日付「{bad}」は YYYY-MM-DD の形式（例: 2026-11-30）で入力してください。"),
            )
        }
    };
    let rows = match with_read(&state, move |c| {
        crate::audit::search(c, &filter, AUDIT_EXPORT_MAX).map_err(|e| e.to_string())
    })
    .await
    {
        Ok(r) => r,
        Err(r) => return r,
    };
    let lang = Lang::parse(q.lang.as_deref());
    let mut out = lang.writer();
    let _ = out.write_record(match lang {
        Lang::Ja => ["日時", "実行者", "操作", "パートナー", "詳細", "接続元"],
        Lang::En => ["at", "actor", "action", "partner", "detail", "client"],
    });
    use crate::csvcell::text;
    for r in &rows {
        let at = timefmt::parse_stored(&r.at)
            .map(|t| crate::excel::time(t, tz, lang))
            .unwrap_or_else(|| r.at.clone());
        let action = match lang {
            Lang::Ja => crate::words::action(&r.action),
            Lang::En => r.action.clone(),
        };
        let _ = out.write_record([
            at.as_str(),
            &text(&r.actor),
            &action,
            &text(&r.partner),
            &text(&r.detail),
            &r.client,
        ]);
    }
    let body = out.into_inner().unwrap_or_default();
    let (body, charset) = crate::excel::encode(
        &String::from_utf8_lossy(&body),
        lang,
        crate::config::Encoding::Utf8,
    );
    (
        [
            (
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderValue::from_str(&format!("text/csv; charset={charset}"))
                    .expect("ASCII charset"),
            ),
            (
                axum::http::header::CONTENT_DISPOSITION,
                axum::http::HeaderValue::from_static("attachment; filename=\"audit.csv\""),
            ),
            (
                axum::http::header::CACHE_CONTROL,
                axum::http::HeaderValue::from_static("no-store"),
            ),
        ],
        body,
    )
        .into_response()
}
