//! Money on the site. Ops: `GET/POST /ops/files/{id}/reverse`, take a
//! credited file back (`money::reverse`), after a confirmation page that
//! shows the file and asks for a reason. Ops and partner users:
//! `GET /statement.csv?partner=ID&month=YYYY-MM`, the monthly statement
//! (`money::statement`) as CSV.
//!
//! What must stay true: a partner user never reaches the reverse pages
//! (404, as for any page not theirs) and gets only its own partner's
//! statement (another partner's is 404); a reversal's refusal (a balance
//! too low) is shown in words, naming each member and the shortfall, and
//! changes nothing; reversals and statement downloads are audited.

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use rusqlite::OptionalExtension;
use serde::{Deserialize, Serialize};

use super::form::Form;
use super::{forbidden, render, with_db, with_db_mut, with_read, Page};
use crate::money::reverse::{self, Outcome, Target};
use crate::money::statement;
use crate::timefmt;
use crate::web::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ops/files/{id}/reverse", get(confirm).post(do_reverse))
        .route("/statement.csv", get(statement_csv))
}

/// The longest reason kept with a reversal (characters).
const REASON_MAX: usize = 500;

#[derive(Serialize)]
struct FileInfo {
    id: i64,
    partner: String,
    name: String,
    at: String,
    outcome: String,
    rows: i64,
    credited: i64,
    miles: i64,
}

async fn file_info(state: &AppState, id: i64) -> Result<Option<FileInfo>, Response> {
    let tz = state.config.daemon.timezone;
    with_read(state, move |c| {
        c.query_row(
            "SELECT id, partner, name, started_at, outcome, rows, credited, miles FROM files WHERE id = ?1",
            [id],
            |r| {
                Ok(FileInfo {
                    id: r.get(0)?,
                    partner: r.get(1)?,
                    name: r.get(2)?,
                    at: timefmt::stored_for_people(&r.get::<_, String>(3)?, tz),
                    outcome: r.get(4)?,
                    rows: r.get(5)?,
                    credited: r.get(6)?,
                    miles: r.get(7)?,
                })
            },
        )
        .optional()
        .map_err(|e| e.to_string())
    })
    .await
}

async fn ops_only(state: &AppState, headers: &HeaderMap) -> Result<Page, Response> {
    let page = Page::require(state, headers).await?;
    if !page.session.is_ops() {
        return Err(page.not_found());
    }
    Ok(page)
}

async fn confirm(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
    let page = match ops_only(&state, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    match file_info(&state, id).await {
        Ok(Some(f)) => render(
            StatusCode::OK,
            "reverse.html",
            minijinja::context! { f => f, ..page.ctx() },
        ),
        Ok(None) => page.not_found(),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
struct ReverseForm {
    csrf: String,
    #[serde(default)]
    reason: String,
}

async fn do_reverse(
    State(state): State<AppState>,
    addr: axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<i64>,
    Form(form): Form<ReverseForm>,
) -> Response {
    let page = match ops_only(&state, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    if !page.post_allowed(&headers, &uri, &form.csrf) {
        return forbidden();
    }
    let f = match file_info(&state, id).await {
        Ok(Some(f)) => f,
        Ok(None) => return page.not_found(),
        Err(r) => return r,
    };
    let reason = form.reason.trim().to_owned();
    if reason.is_empty() || reason.chars().count() > REASON_MAX {
        let ctx = minijinja::context! {
            f => f, reason => form.reason,
            error => format!("理由を 1〜{REASON_MAX} 文字で入力してください（取り消しの記録に残ります）。"),
            ..page.ctx()
        };
        return render(StatusCode::UNPROCESSABLE_ENTITY, "reverse.html", ctx);
    }
    let actor = format!("user:{}", page.session.email);
    let client = super::client(&addr);
    let done = with_db_mut(&state, move |c| {
        reverse::reverse(
            c,
            Target::File(id),
            &reason,
            &actor,
            Some(&client),
            chrono::Utc::now(),
        )
        .map_err(|e| e.to_string())
    })
    .await;
    let outcome = match done {
        Ok(o) => o,
        Err(r) => return r,
    };
    let tz = state.config.daemon.timezone;
    let ctx = match outcome {
        Outcome::Reversed(r) | Outcome::AlreadyReversed(r) if r.file_id != Some(id) => {
            return crate::web::site::internal(format!("reversal {} is not of file {id}", r.id))
        }
        Outcome::Reversed(r) => {
            tracing::info!(file = id, reversal = r.id, "file reversed on the site");
            minijinja::context! {
                f => f, done => "reversed", r => r, at => timefmt::stored_for_people(&r.at, tz), ..page.ctx()
            }
        }
        Outcome::AlreadyReversed(r) => minijinja::context! {
            f => f, done => "already", r => r, at => timefmt::stored_for_people(&r.at, tz), ..page.ctx()
        },
        Outcome::Shortfall { members } => {
            let ctx = minijinja::context! { f => f, shortfall => members, ..page.ctx() };
            return render(StatusCode::CONFLICT, "reverse_result.html", ctx);
        }
        Outcome::Refused { reason } => {
            let ctx = minijinja::context! { f => f, refused => reason, ..page.ctx() };
            return render(StatusCode::CONFLICT, "reverse_result.html", ctx);
        }
    };
    render(StatusCode::OK, "reverse_result.html", ctx)
}

#[derive(Deserialize)]
struct StatementQuery {
    partner: Option<String>,
    month: Option<String>,
    /// `en`: English headers, plain UTF-8 (for scripts).
    lang: Option<String>,
}

async fn statement_csv(
    State(state): State<AppState>,
    addr: axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<StatementQuery>,
) -> Response {
    let page = match Page::require(&state, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    // A partner user: its own partner only; naming another is 404.
    let partner = match (&page.session.partner, q.partner) {
        (Some(own), Some(p)) if *own != p => return page.not_found(),
        (Some(own), _) => own.clone(),
        (None, Some(p)) if state.config.partner(&p).is_some() => p,
        (None, _) => return page.not_found(),
    };
    let tz = state.config.daemon.timezone;
    let month = q.month.unwrap_or_default();
    if statement::month_bounds(&month, tz).is_err() {
        return page.error(
            StatusCode::BAD_REQUEST,
            "月を YYYY-MM の形（例: 2026-11）で指定してください。",
        );
    }
    let who = partner.clone();
    let m = month.clone();
    let st = with_read(&state, move |c| {
        statement::statement(c, &who, &m, tz).map_err(|e| e.to_string())
    })
    .await;
    let st = match st {
        Ok(s) => s,
        Err(r) => return r,
    };
    let lang = crate::excel::Lang::parse(q.lang.as_deref());
    let encoding = state
        .config
        .partner(&partner)
        .map_or(crate::config::Encoding::Utf8, |p| p.encoding);
    let (bytes, charset) = crate::excel::encode(
        &statement::to_csv_for(&st, lang, !page.session.is_ops()),
        lang,
        encoding,
    );
    let actor = format!("user:{}", page.session.email);
    let client = super::client(&addr);
    let who = partner.clone();
    let detail = format!(
        "statement {month}: net {} miles in {} rows",
        st.net.miles, st.net.rows
    );
    if let Err(r) = with_db(&state, move |c| {
        crate::audit::record(
            c,
            &crate::audit::Entry {
                actor: &actor,
                action: "statement-download",
                partner: Some(&who),
                detail: &detail,
                client: Some(&client),
            },
        )
        .map_err(|e| e.to_string())
    })
    .await
    {
        return r;
    }
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_str(&format!("text/csv; charset={charset}"))
                    .expect("ASCII charset"),
            ),
            (
                header::CONTENT_DISPOSITION,
                HeaderValue::from_str(&format!(
                    "attachment; filename=\"statement-{partner}-{month}.csv\""
                ))
                .unwrap_or(HeaderValue::from_static(
                    "attachment; filename=\"statement.csv\"",
                )),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        bytes,
    )
        .into_response()
}
