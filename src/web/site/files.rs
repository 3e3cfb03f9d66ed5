//! `GET /files`: the files of the user's partner from every channel (ops:
//! any partner, `?partner=ID`: the drill-down), and `GET /files/{id}/errors`:
//! the error CSV, byte for byte as the pipeline wrote it.
//!
//! What must stay true: a partner user is only ever shown, or sent, files
//! of its own partner; ops asking for `/files` without `?partner=` get the
//! partner picker (an unknown partner id is the 404); a reversal shown to
//! a partner names no person (運用担当), as the API does — ops see who; another partner's file id answers the same 404 as a
//! missing one. A download is audited. The report's bytes are never
//! re-encoded: the partner gets exactly what the pipeline wrote, labelled
//! with the partner's encoding.

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};

use super::{render, with_db, with_read, Page};
use crate::config::Encoding;
use crate::timefmt;
use crate::web::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/files", get(list))
        .route("/files/{id}/errors", get(errors))
        .route("/files/{id}/failed-rows", get(failed_rows))
}

/// Files shown on one page, newest first.
const PAGE: u64 = 100;
/// "Run now" requests shown to ops, newest first.
const REQUESTS_SHOWN: i64 = 5;

#[derive(Deserialize)]
struct ListQuery {
    /// Ops only: the partner to show.
    partner: Option<String>,
}

#[derive(Serialize)]
struct Row {
    id: i64,
    at: String,
    name: String,
    channel: String,
    outcome: String,
    outcome_text: &'static str,
    reason: String,
    /// F001–F008 of a refused file, and what it means in words.
    file_code: String,
    code_text: &'static str,
    /// Rows repeating earlier files' rows (`None`: not checked).
    repeats: Option<i64>,
    rows: i64,
    credited: i64,
    failed: i64,
    miles: i64,
    has_report: bool,
}

fn outcome_text(o: &str) -> &'static str {
    match o {
        "credited" => "積算済み",
        "refused" => "拒否",
        "duplicate" => "重複のため拒否",
        "dry-run" => "検証のみ",
        "reversed" => "取り消し済み",
        _ => "その他",
    }
}

/// A refused file's code in plain words (the README's table).
fn code_text(code: &str) -> &'static str {
    match code {
        "F001" => "同じ内容のファイルがすでに積算されています（重複）",
        "F002" => "CSV として読めません（64 KiB を超える行、または閉じていない引用符）",
        "F003" => "データ行がありません",
        "F004" => "エラー行の割合が上限を超えています",
        "F005" => "積算すると残高が上限を超える会員がいます",
        "F006" => "以前のファイルの再送と判断しました（同じ行が多数）",
        "F007" => "ヘッダー行があるはずの 1 行目がデータ行です",
        "F008" => "暗号化ファイルを復号できないか、署名がない・署名を検証できません",
        _ => "",
    }
}

async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Response {
    let page = match Page::require(&state, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    // A partner user sees its own partner, whatever the query says.
    let partner = match (&page.session.partner, q.partner) {
        (Some(own), _) => own.clone(),
        (None, Some(p)) if state.config.partners.iter().any(|c| c.id == p) => p,
        (None, Some(_)) => return page.not_found(),
        (None, None) => {
            let ctx = minijinja::context! {
                picker => true, partners => super::partner_choices(&state), ..page.ctx()
            };
            return render(StatusCode::OK, "files.html", ctx);
        }
    };
    let shown_label = super::partner_label(&state, &partner);
    let tz = state.config.daemon.timezone;
    let who = partner.clone();
    let ops = page.session.is_ops();
    let result = with_read(&state, move |c| {
        let filter = crate::query::FileFilter {
            partner: Some(&who),
            limit: Some(PAGE),
            newest_first: true,
            ..Default::default()
        };
        let pg = crate::query::files(c, &filter, tz).map_err(|e| e.to_string())?;
        let mut rows = Vec::with_capacity(pg.rows.len());
        for f in pg.rows {
            let (channel, reversal): (String, Option<i64>) = c
                .query_row(
                    "SELECT channel, reversal FROM files WHERE id = ?1",
                    [f.id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(|e| e.to_string())?;
            // A reversed file: who took it back, when (in the zone) and why.
            let reason = match reversal {
                Some(_) => {
                    crate::money::reverse::find(c, crate::money::reverse::Target::File(f.id))
                        .map_err(|e| e.to_string())?
                        .map(|r| {
                            // A partner is told the operator did it, not who.
                            let who = if ops {
                                r.actor.as_str()
                            } else {
                                "運用担当"
                            };
                            format!(
                                "取り消し番号 {}（{}、{}）: {}",
                                r.id,
                                timefmt::stored_for_people(&r.at, tz),
                                who,
                                r.reason
                            )
                        })
                }
                None => None,
            }
            .or(f.reason);
            rows.push(Row {
                id: f.id,
                at: timefmt::stored_for_people(&f.started_at, tz),
                name: f.name,
                channel,
                outcome_text: outcome_text(&f.outcome),
                outcome: f.outcome,
                reason: reason.unwrap_or_default(),
                code_text: code_text(f.file_code.as_deref().unwrap_or_default()),
                file_code: f.file_code.unwrap_or_default(),
                repeats: f.repeats,
                rows: f.rows,
                credited: f.credited,
                failed: f.failed,
                miles: f.miles,
                has_report: f.report_path.is_some(),
            });
        }
        // Ops see the partner's latest "run now" requests.
        let requests = if ops {
            let now = chrono::Utc::now();
            let running: Option<i64> = c
                .query_row(
                    "SELECT max(id) FROM runs WHERE partner = ?1 AND finished_at IS NULL",
                    [&who],
                    |r| r.get(0),
                )
                .map_err(|e| e.to_string())?;
            crate::run_requests::recent(c, &who, REQUESTS_SHOWN)
                .map_err(|e| e.to_string())?
                .iter()
                .map(|r| super::run_now::shown(r, tz, now, running))
                .collect()
        } else {
            Vec::new()
        };
        Ok((rows, pg.total, requests))
    })
    .await;
    match result {
        Ok((rows, total, requests)) => {
            let more = total.saturating_sub(rows.len() as u64);
            // Reload while a request is on its way, to show its result.
            let refresh = requests.iter().any(|r| {
                r.state == "running"
                    || (r.state == "queued" && (!r.stale || r.waiting_for.is_some()))
            });
            let this_month = chrono::Utc::now()
                .with_timezone(&tz)
                .format("%Y-%m")
                .to_string();
            let ctx = minijinja::context! {
                shown => partner, shown_label => shown_label, rows => rows, more => more, requests => requests,
                refresh => refresh, this_month => this_month, timezone => tz.to_string(),
                ..page.ctx()
            };
            render(StatusCode::OK, "files.html", ctx)
        }
        Err(r) => r,
    }
}

async fn errors(
    State(state): State<AppState>,
    addr: axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
    let page = match Page::require(&state, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let own = page.session.partner.clone();
    let actor = format!("user:{}", page.session.email);
    let client = super::client(&addr);
    let found = with_read(&state, move |c| {
        use rusqlite::OptionalExtension;
        let row: Option<(String, Option<String>)> = c
            .query_row(
                "SELECT partner, report_path FROM files WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| e.to_string())?;
        // Another partner's file is exactly as absent as a missing one.
        let Some((partner, Some(path))) = row.filter(|(p, _)| own.as_ref().is_none_or(|o| o == p))
        else {
            return Ok(None);
        };
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("reading error report {path}: {e}")),
        };
        let name = std::path::Path::new(&path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("{id}.errors.csv"));
        Ok(Some((partner, name, bytes)))
    })
    .await;
    if let Ok(Some((partner, ..))) = &found {
        let partner = partner.clone();
        if let Err(r) = with_db(&state, move |c| {
            crate::audit::record(
                c,
                &crate::audit::Entry {
                    actor: &actor,
                    action: "download",
                    partner: Some(&partner),
                    detail: &format!("error report of file {id}"),
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
    let (partner, name, bytes) = match found {
        Ok(Some(x)) => x,
        Ok(None) => return page.not_found(),
        Err(r) => return r,
    };
    let charset = match state
        .config
        .partners
        .iter()
        .find(|p| p.id == partner)
        .map(|p| p.encoding)
    {
        Some(Encoding::ShiftJis) => "Shift_JIS",
        _ => "UTF-8",
    };
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_str(&format!("text/csv; charset={charset}")).unwrap(),
            ),
            (header::CONTENT_DISPOSITION, content_disposition(&name)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        bytes,
    )
        .into_response()
}

/// `GET /files/{id}/failed-rows`: the failed rows of a credited file
/// alone, as the partner sent them (no codes), to fix and upload again
/// (`pipeline::failed_rows`). Same access rule as the error report.
async fn failed_rows(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
    let page = match Page::require(&state, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let own = page.session.partner.clone();
    let config = state.config.clone();
    let found = with_read(&state, move |c| {
        let Some(f) = crate::query::file_paths(c, id).map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        // Another partner's file is exactly as absent as a missing one;
        // a refused file's report holds every row, not failed ones.
        if own.as_ref().is_some_and(|o| *o != f.partner) || f.outcome != "credited" {
            return Ok(None);
        }
        let (Some(report), Some(archive), Some(p)) =
            (f.report_path, f.archive_path, config.partner(&f.partner))
        else {
            return Ok(None);
        };
        let bytes = crate::pipeline::failed_rows::for_resend(
            std::path::Path::new(&report),
            std::path::Path::new(&archive),
            p.header,
        )
        .map_err(|e| e.to_string())?;
        Ok(Some((p.encoding, bytes)))
    })
    .await;
    let (encoding, bytes) = match found {
        Ok(Some(x)) => x,
        Ok(None) => return page.not_found(),
        Err(r) => return r,
    };
    let charset = match encoding {
        Encoding::ShiftJis => "Shift_JIS",
        Encoding::Utf8 => "UTF-8",
    };
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_str(&format!("text/csv; charset={charset}")).unwrap(),
            ),
            (
                header::CONTENT_DISPOSITION,
                content_disposition(&format!("{id}.failed-rows.csv")),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        bytes,
    )
        .into_response()
}

/// `attachment` with an ASCII `filename` (anything else replaced by `_`)
/// and the exact name as RFC 5987 `filename*`.
pub(super) fn content_disposition(name: &str) -> HeaderValue {
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded: String = name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"._-".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    HeaderValue::from_str(&format!(
        "attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}"
    ))
    .expect("ASCII header")
}

#[cfg(test)]
mod tests {
    #[test]
    fn content_disposition_is_safe_ascii_with_the_exact_name() {
        let v = super::content_disposition("交換\"1\".errors.csv");
        let v = v.to_str().unwrap();
        assert_eq!(
            v,
            "attachment; filename=\"___1_.errors.csv\"; filename*=UTF-8''%E4%BA%A4%E6%8F%9B%221%22.errors.csv"
        );
    }
}
