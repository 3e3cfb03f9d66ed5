//! `POST /ops/partners/{id}/run`: "run now" for ops. `serve` holds no
//! transfer credentials, so the button only records a request
//! ([`crate::run_requests`], audited); the daemon picks it up within
//! seconds and runs the partner under its usual lock. The partner's files
//! page (`/files?partner=ID`) shows the request and its result.
//!
//! What must stay true: ops only (a partner user gets 404, as for any page
//! not theirs); CSRF-checked; a partner has at most one open request.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::post;
use axum::Router;
use serde::{Deserialize, Serialize};

use super::form::Form;
use super::{client, forbidden, with_db_mut, Page};
use crate::run_requests::{self, Request, State as ReqState};
use crate::timefmt;
use crate::web::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/ops/partners/{id}/run", post(run_now))
}

#[derive(Deserialize)]
struct RunForm {
    csrf: String,
}

async fn run_now(
    State(state): State<AppState>,
    addr: ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<String>,
    Form(f): Form<RunForm>,
) -> Response {
    let page = match Page::require(&state, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    if !page.session.is_ops() || state.config.partner(&id).is_none() {
        return page.not_found();
    }
    if !page.post_allowed(&headers, &uri, &f.csrf) {
        return forbidden();
    }
    let actor = format!("user:{}", page.session.email);
    let client = client(&addr);
    let partner = id.clone();
    let asked = with_db_mut(&state, move |c| {
        run_requests::request(c, &partner, &actor, Some(&client), chrono::Utc::now())
            .map_err(|e| e.to_string())
    })
    .await;
    match asked {
        Ok((r, new)) => {
            tracing::info!(partner = %id, request = r.id, new, "run-now requested on the site");
            Redirect::to(&format!("/files?partner={id}")).into_response()
        }
        Err(r) => r,
    }
}

/// A request as the files page shows it.
#[derive(Serialize)]
pub struct Shown {
    pub id: i64,
    pub state: &'static str,
    pub state_text: String,
    pub requested_by: String,
    pub requested_at: String,
    pub run_id: Option<i64>,
    /// Queued for over a minute: the daemon is not picking requests up
    /// (or the partner's run in progress is long).
    pub stale: bool,
    /// The partner's run in progress that a queued request waits for.
    pub waiting_for: Option<i64>,
}

/// `r` for people, in `tz`, judged at `now`; `running` is the partner's
/// run in progress, if any (a request waits for it: not a stuck daemon).
pub fn shown(
    r: &Request,
    tz: chrono_tz::Tz,
    now: chrono::DateTime<chrono::Utc>,
    running: Option<i64>,
) -> Shown {
    let waiting = r.state() == ReqState::Queued && running.is_some();
    let state_text = match r.state() {
        ReqState::Queued => match running {
            Some(run) => format!("待機中（実行中の処理 {run} の終了待ち）"),
            None => "待機中".to_owned(),
        },
        ReqState::Running => "実行中".to_owned(),
        ReqState::Done => format!(
            "完了: {}",
            outcome_text(r.outcome.as_deref().unwrap_or_default())
        ),
    };
    Shown {
        id: r.id,
        state: r.state().as_str(),
        state_text,
        requested_by: r.requested_by.clone(),
        requested_at: timefmt::stored_for_people(&r.requested_at, tz),
        run_id: r.run_id,
        stale: r.stale(now),
        waiting_for: running.filter(|_| waiting),
    }
}

/// A run's outcome (or why there was no run) in words, with the stable
/// name in brackets.
fn outcome_text(o: &str) -> String {
    let words = match o {
        "ok" => "成功",
        "no-file" => "新しいファイルなし",
        "missed" => "ファイル未着",
        "refused" => "ファイルを拒否",
        "failed" => "失敗",
        "tidy-failed" => "後処理に失敗",
        "skipped" => "スキップあり",
        "not-started" => "開始できませんでした（別の実行が同じパートナーを処理中）",
        "interrupted" => "デーモン停止により中断",
        "unknown-partner" => "設定にないパートナー",
        "panicked" => "内部エラー",
        _ => "",
    };
    if words.is_empty() {
        o.to_owned()
    } else {
        format!("{words}（{o}）")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(started: bool, finished: bool, age_s: i64) -> Request {
        let t = |s: i64| crate::db::now_text(chrono::Utc::now() - chrono::Duration::seconds(s));
        Request {
            id: 1,
            partner: "p".into(),
            requested_by: "user:o".into(),
            requested_at: t(age_s),
            started_at: started.then(|| t(1)),
            finished_at: finished.then(|| t(0)),
            run_id: finished.then_some(9),
            outcome: finished.then(|| "ok".into()),
        }
    }

    #[test]
    fn a_queued_request_says_what_it_waits_for() {
        let tz = chrono_tz::Asia::Tokyo;
        let now = chrono::Utc::now();
        let old = shown(&req(false, false, 120), tz, now, None);
        assert!(old.stale && old.waiting_for.is_none(), "no daemon");
        let behind = shown(&req(false, false, 120), tz, now, Some(5));
        assert_eq!(behind.waiting_for, Some(5));
        assert!(
            behind.state_text.contains("5 の終了待ち"),
            "{}",
            behind.state_text
        );
        let fresh = shown(&req(false, false, 5), tz, now, None);
        assert!(!fresh.stale && fresh.state_text == "待機中");
        let running = shown(&req(true, false, 120), tz, now, Some(5));
        assert!(!running.stale && running.waiting_for.is_none());
        let done = shown(&req(true, true, 120), tz, now, None);
        assert_eq!(done.state_text, "完了: 成功（ok）");
    }
}
