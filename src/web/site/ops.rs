//! Ops pages: the dashboard of every partner (what `milebatch status`
//! shows, with red/amber/green), the member lookup and the audit log.
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
                next_run: p
                    .schedule
                    .next_after(now, tz)
                    .map(|t| timefmt::for_people(t, tz))
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
    let daemon = crate::heartbeat::status(&state.config.daemon.database, chrono::Utc::now());
    let daemon_at = daemon
        .last_poll
        .as_deref()
        .map(|t| timefmt::stored_for_people(t, tz));
    match rows {
        Ok(rows) => {
            let ctx = minijinja::context! {
                rows => rows, daemon => daemon, daemon_at => daemon_at, ..page.ctx()
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

#[derive(Deserialize)]
struct AuditQuery {
    /// Show rows older than this id (the next page).
    before: Option<i64>,
}

#[derive(Debug, Serialize)]
struct AuditRow {
    id: i64,
    at: String,
    actor: String,
    action: String,
    partner: String,
    detail: String,
    client: String,
}

const AUDIT_PAGE: i64 = 100;

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
    let before = q.before.unwrap_or(i64::MAX);
    let rows = with_read(&state, move |c| {
        let mut st = c
            .prepare(
                "SELECT id, at, actor, action, COALESCE(partner, ''), detail, COALESCE(client, '') \
                 FROM audit WHERE id < ?1 ORDER BY id DESC LIMIT ?2",
            )
            .map_err(|e| e.to_string())?;
        let rows = st
            .query_map(rusqlite::params![before, AUDIT_PAGE], |r| {
                Ok(AuditRow {
                    id: r.get(0)?,
                    at: timefmt::stored_for_people(&r.get::<_, String>(1)?, tz),
                    actor: r.get(2)?,
                    action: r.get(3)?,
                    partner: r.get(4)?,
                    detail: r.get(5)?,
                    client: r.get(6)?,
                })
            })
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| e.to_string())?;
        Ok(rows)
    })
    .await;
    match rows {
        Ok(rows) => {
            let next = (rows.len() as i64 == AUDIT_PAGE).then(|| rows.last().map(|r| r.id));
            let ctx = minijinja::context! { rows => rows, next => next.flatten(), ..page.ctx() };
            render(StatusCode::OK, "ops_audit.html", ctx)
        }
        Err(r) => r,
    }
}
