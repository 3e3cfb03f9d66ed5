//! `GET /upload`, `POST /upload`: a partner hands over an exchange CSV by
//! hand (flow ③); `GET /upload/dry-run/{name}`: the error CSV of a
//! "validate only" upload.
//!
//! What must stay true:
//! - the file is streamed to a temp file under `data_dir` as it arrives
//!   ([`pipeline::upload::Receiving`]), never held whole in memory; at most
//!   [`MAX_UPLOAD`] bytes of it, on this route only (the rest of the site
//!   and the API keep their small limits). An upload cut off, refused or
//!   too big leaves no temp file;
//! - the CSRF token must arrive before the file (a form field that comes
//!   first, or the `X-CSRF-Token` header of the script), and the POST must
//!   be same-origin: nothing of a forged request is written to disk;
//! - the file goes through `pipeline::upload::credit_upload` on a blocking
//!   thread: the same lock, archive, credit stage and reports as a pulled
//!   file, and one audit row, even if the browser goes away meanwhile;
//! - a partner user uploads for its own partner only; ops choose one.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::multipart::{Field, MultipartError, MultipartRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Multipart, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};

use super::ops::not_found;
use super::{client, forbidden, internal, render, Page};
use crate::config::Encoding;
use crate::pipeline::upload::{self as up, Received, Receiving, UploadError};
use crate::pipeline::validate::{Code, FileCode};
use crate::pipeline::{FileReport, PipelineError};
use crate::web::AppState;

/// The largest file an upload may carry.
pub const MAX_UPLOAD: u64 = 100 * 1024 * 1024;

/// Form fields besides the file (token, partner, checkbox, multipart
/// framing) may add at most this much.
const FORM_SLACK: u64 = 1024 * 1024;

/// A request announcing more than this is not read at all.
const DRAIN_MAX: u64 = 4 * MAX_UPLOAD;

/// An upload that sends nothing for this long is given up.
const IDLE: Duration = Duration::from_secs(60);

/// How long an upload waits for the partner's lock while a run holds it.
const LOCK_WAIT: Duration = Duration::from_secs(60);

/// Temp files older than this are left over from a crash.
const STALE: Duration = Duration::from_secs(24 * 3600);

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/upload",
            get(form)
                .post(upload)
                // This route only: the body is streamed to disk and
                // counted by the handler (MAX_UPLOAD).
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/upload/dry-run/{name}", get(dry_run_report))
}

async fn form(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match Page::require(&state, &headers).await {
        Ok(page) => form_page(&state, &page, StatusCode::OK, None, None),
        Err(r) => r,
    }
}

/// The upload form, with an error above it when `error` is set.
fn form_page(
    state: &AppState,
    page: &Page,
    status: StatusCode,
    error: Option<&str>,
    chosen: Option<&str>,
) -> Response {
    let partners: Vec<&str> = state
        .config
        .partners
        .iter()
        .map(|p| p.id.as_str())
        .collect();
    render(
        status,
        "upload.html",
        minijinja::context! {
            error => error,
            partners => partners,
            chosen => chosen,
            max_bytes => MAX_UPLOAD,
            max_mib => MAX_UPLOAD / (1024 * 1024),
            ..page.ctx()
        },
    )
}

/// What the form sent besides the file.
#[derive(Default)]
struct Fields {
    csrf_ok: bool,
    partner: Option<String>,
    dry_run: bool,
}

/// Why an upload was not taken.
enum Refused {
    Forbidden,
    TooLarge,
    /// Shown above the form again (400).
    Form(&'static str),
    Internal(String),
}

async fn upload(
    State(state): State<AppState>,
    addr: ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
    multipart: Result<Multipart, MultipartRejection>,
) -> Response {
    let page = match Page::require(&state, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let Ok(mut mp) = multipart else {
        return form_page(
            &state,
            &page,
            StatusCode::BAD_REQUEST,
            Some(
                "フォームの送信形式が正しくありません（multipart/form-data で送信してください）。",
            ),
            None,
        );
    };
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut fields = Fields {
        csrf_ok: headers
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| page.post_allowed(&headers, &uri, t)),
        ..Default::default()
    };
    let received = if announced.is_some_and(|n| n > MAX_UPLOAD + FORM_SLACK) {
        // Said too big up front: nothing is written.
        Err(Refused::TooLarge)
    } else {
        receive(&state, &page, &headers, &uri, &mut mp, &mut fields).await
    };
    let (received, name) = match received {
        Ok(r) => r,
        Err(refused) => {
            if matches!(refused, Refused::TooLarge) {
                // Read (and drop) the rest, so that the browser, still
                // sending, gets this page rather than a reset connection.
                drain(&mut mp, announced).await;
            }
            return refusal(&state, &page, refused);
        }
    };
    let partner = match (&page.session.partner, fields.partner.as_deref()) {
        (Some(own), _) => own.clone(),
        (None, Some(p)) if state.config.partner(p).is_some() => p.to_owned(),
        (None, _) => {
            return form_page(
                &state,
                &page,
                StatusCode::BAD_REQUEST,
                Some("アップロード先のパートナーを選んでください。"),
                None,
            )
        }
    };
    let config = state.config.clone();
    let actor = format!("user:{}", page.session.email);
    let client = client(&addr);
    let dry_run = fields.dry_run;
    let who = partner.clone();
    let done = tokio::task::spawn_blocking(move || {
        let p = config.partner(&who).expect("partner checked above");
        up::credit_upload(
            &config,
            p,
            up::Upload {
                received,
                name: &name,
                dry_run,
                now: chrono::Utc::now(),
                lock_wait: LOCK_WAIT,
                actor: &actor,
                client: Some(&client),
            },
        )
    })
    .await;
    match done {
        Ok(Ok(fr)) => result_page(&page, &partner, &fr, dry_run),
        Ok(Err(UploadError::BadName(_))) => form_page(
            &state,
            &page,
            StatusCode::BAD_REQUEST,
            Some("このファイル名は使えません。制御文字や「/」「\\」を含まない、200 バイトまでの名前にしてください。"),
            Some(&partner),
        ),
        Ok(Err(UploadError::Pipeline(PipelineError::Busy { .. }))) => form_page(
            &state,
            &page,
            StatusCode::SERVICE_UNAVAILABLE,
            Some("このパートナーのファイルをいま処理中です（自動取得または別のアップロード）。何も積算していません。しばらくしてからもう一度アップロードしてください。"),
            Some(&partner),
        ),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

/// Read the form: the token and the other fields, and the file into a temp
/// file. The token must come before the file.
async fn receive(
    state: &AppState,
    page: &Page,
    headers: &HeaderMap,
    uri: &Uri,
    mp: &mut Multipart,
    fields: &mut Fields,
) -> Result<(Received, String), Refused> {
    let mut file: Option<(Received, String)> = None;
    loop {
        let field = match next(mp.next_field()).await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(cut_off(e)),
        };
        match field.name().unwrap_or("") {
            "csrf" => {
                let token = small_text(field).await?;
                if !page.post_allowed(headers, uri, &token) {
                    return Err(Refused::Forbidden);
                }
                fields.csrf_ok = true;
            }
            "partner" => fields.partner = Some(small_text(field).await?),
            "dry_run" => {
                small_text(field).await?;
                fields.dry_run = true;
            }
            "file" => {
                if !fields.csrf_ok {
                    return Err(Refused::Forbidden);
                }
                if file.is_some() {
                    return Err(Refused::Form(
                        "ファイルは 1 回に 1 つだけアップロードできます。",
                    ));
                }
                let name = field.file_name().unwrap_or("").to_owned();
                let received = to_disk(state, field).await?;
                if name.is_empty() {
                    return Err(Refused::Form("アップロードするファイルを選んでください。"));
                }
                file = Some((received, name));
            }
            _ => {
                small_text(field).await?;
            }
        }
    }
    if !fields.csrf_ok {
        return Err(Refused::Forbidden);
    }
    file.ok_or(Refused::Form("アップロードするファイルを選んでください。"))
}

/// A multipart step, given up after [`IDLE`] without data.
async fn next<T>(
    f: impl std::future::Future<Output = Result<T, MultipartError>>,
) -> Result<T, String> {
    match tokio::time::timeout(IDLE, f).await {
        Ok(r) => r.map_err(|e| e.body_text()),
        Err(_) => Err(format!("nothing received for {} s", IDLE.as_secs())),
    }
}

fn cut_off(e: String) -> Refused {
    tracing::info!(error = %e, "upload cut off or malformed");
    Refused::Form("アップロードが途中で切れたか、形式が正しくありません。何も積算していません。もう一度お試しください。")
}

/// A small form field as text (at most 4 KiB).
async fn small_text(mut field: Field<'_>) -> Result<String, Refused> {
    let mut buf = Vec::new();
    while let Some(chunk) = next(field.chunk()).await.map_err(cut_off)? {
        buf.extend_from_slice(&chunk);
        if buf.len() > 4096 {
            return Err(Refused::Form("フォームの項目が長すぎます。"));
        }
    }
    String::from_utf8(buf).map_err(|_| Refused::Form("フォームの項目が正しくありません。"))
}

/// Stream the file field into a temp file on a blocking thread (hashed on
/// the way), at most [`MAX_UPLOAD`] bytes.
async fn to_disk(state: &AppState, mut field: Field<'_>) -> Result<Received, Refused> {
    let data_dir = state.config.daemon.data_dir.clone();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<axum::body::Bytes>(16);
    let writer = tokio::task::spawn_blocking(move || -> std::io::Result<Received> {
        up::sweep_stale(&data_dir, STALE);
        let mut r = Receiving::create(&data_dir)?;
        while let Some(chunk) = rx.blocking_recv() {
            r.write(&chunk)?;
        }
        r.finish()
    });
    let mut size = 0u64;
    let mut outcome = Ok(());
    loop {
        match next(field.chunk()).await {
            Ok(Some(chunk)) => {
                size += chunk.len() as u64;
                if size > MAX_UPLOAD {
                    outcome = Err(Refused::TooLarge);
                    break;
                }
                if tx.send(chunk).await.is_err() {
                    break; // the writer failed: its error is below
                }
            }
            Ok(None) => break,
            Err(e) => {
                outcome = Err(cut_off(e));
                break;
            }
        }
    }
    drop(tx);
    // Whatever went wrong, the temp file goes with `Received`'s drop.
    let written = writer
        .await
        .map_err(|e| Refused::Internal(e.to_string()))?
        .map_err(|e| Refused::Internal(format!("receiving an upload: {e}")));
    outcome?;
    written
}

/// Read the rest of a refused request and throw it away, so that a browser
/// still sending sees the answer; not past [`DRAIN_MAX`].
async fn drain(mp: &mut Multipart, announced: Option<u64>) {
    if announced.is_some_and(|n| n > DRAIN_MAX) {
        return;
    }
    let mut read = 0u64;
    while let Ok(Some(mut field)) = next(mp.next_field()).await {
        while let Ok(Some(chunk)) = next(field.chunk()).await {
            read += chunk.len() as u64;
            if read > DRAIN_MAX {
                return;
            }
        }
    }
}

fn refusal(state: &AppState, page: &Page, r: Refused) -> Response {
    match r {
        Refused::Forbidden => forbidden(),
        Refused::TooLarge => {
            tracing::info!(user = page.session.user, "upload over the limit refused");
            form_page(
                state,
                page,
                StatusCode::PAYLOAD_TOO_LARGE,
                Some(&format!(
                    "ファイルが大きすぎます。アップロードできるのは {} MiB までです。何も積算していません。ファイルを分けてアップロードしてください。",
                    MAX_UPLOAD / (1024 * 1024)
                )),
                None,
            )
        }
        Refused::Form(msg) => form_page(state, page, StatusCode::BAD_REQUEST, Some(msg), None),
        Refused::Internal(e) => internal(e),
    }
}

/// One line of the "failed by code" table.
#[derive(Serialize)]
struct CodeCount {
    code: &'static str,
    text: &'static str,
    count: u64,
}

fn result_page(page: &Page, partner: &str, fr: &FileReport, dry_run: bool) -> Response {
    let c = &fr.counts;
    let by_code: Vec<CodeCount> = Code::ALL
        .iter()
        .filter(|code| c.by_code[code.index()] > 0)
        .map(|code| CodeCount {
            code: code.as_str(),
            text: code_text(*code),
            count: c.by_code[code.index()],
        })
        .collect();
    let report = fr.report_path.as_ref().and_then(|path| {
        if dry_run {
            let name = path.file_name()?.to_str()?;
            let mut url = format!("/upload/dry-run/{}", percent(name));
            if page.session.is_ops() {
                url.push_str(&format!("?partner={partner}"));
            }
            Some(url)
        } else {
            fr.id.map(|id| format!("/files/{id}/errors"))
        }
    });
    let refused = fr.file_code.is_some();
    let headline = match (dry_run, refused, fr.outcome.as_str()) {
        (false, false, _) => "積算しました",
        (false, true, "duplicate") => "重複のため拒否しました（何も積算していません）",
        (false, true, _) => "ファイル全体を拒否しました（何も積算していません）",
        (true, false, _) => "検証のみ: このファイルは積算できます（何も積算していません）",
        (true, true, _) => "検証のみ: このファイルは拒否されます（何も積算していません）",
    };
    let status = if refused {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    render(
        status,
        "upload_result.html",
        minijinja::context! {
            name => fr.name,
            shown => partner,
            file_id => fr.id,
            dry_run => dry_run,
            refused => refused,
            headline => headline,
            file_code => fr.file_code.map(FileCode::as_str),
            refusal => fr.file_code.map(file_code_text),
            reason => fr.reason,
            warning => fr.warning,
            rows => c.rows,
            credited => c.credited,
            failed => c.failed,
            miles => c.miles,
            by_code => by_code,
            report => report,
            ..page.ctx()
        },
    )
}

/// Percent-encode a file name for a URL path segment.
fn percent(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"._-".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A refusal in plain words, for the partner.
pub fn file_code_text(code: FileCode) -> &'static str {
    match code {
        FileCode::F001 => "同じ内容のファイルがすでに積算されています（ファイル名が違っても、取得・アップロードのどちらでも同じです）。同じ交換を二重に積算しないため、このファイルは処理していません。",
        FileCode::F002 => "CSV として読み取れません（64 KiB を超える行、または閉じられていない引用符があります）。",
        FileCode::F003 => "データ行がありません（空のファイル、またはヘッダー行だけのファイルです）。",
        FileCode::F004 => "エラーになった行の割合が上限を超えています。エラーファイルで各行の理由を確認し、直してからもう一度アップロードしてください。",
        FileCode::F005 => "積算すると会員の残高が上限を超えます。",
        FileCode::F006 => "以前に積算したファイルの再送と思われます（多くの行がすでに積算済みです）。新しい交換だけのファイルにしてください。",
        FileCode::F007 => "1 行目はヘッダー行のはずですが、データ行になっています（その行を失わないよう、ファイル全体を処理していません）。",
        FileCode::F008 => "暗号化ファイルを復号できません（当社の公開鍵で暗号化されていない、ファイルが途中で壊れている・改変されている）、または署名がない・署名を検証できません。正しい鍵で暗号化・署名して、もう一度送ってください。",
    }
}

/// A row error code in plain words.
pub fn code_text(code: Code) -> &'static str {
    match code {
        Code::E001 => "列の数が 3 ではありません",
        Code::E002 => "会員が空です",
        Code::E003 => "会員が見つかりません（会員IDまたは登録メールアドレス）",
        Code::E004 => "会員が有効ではありません（停止中または退会済み）",
        Code::E005 => "指定キーが空、または 64 文字を超えています",
        Code::E006 => "マイルが正の整数ではありません",
        Code::E007 => "マイルが 1 行あたりの上限を超えています",
        Code::E008 => "同じ行がこのファイルの前の行にあります",
        Code::E009 => "文字コードが正しくないか、制御文字（タブ・改行など）が含まれています",
        Code::E010 => "指定キーはすでに積算されています",
    }
}

#[derive(Deserialize)]
struct DryRunQuery {
    partner: Option<String>,
}

/// The report of a "validate only" upload, byte for byte (it has no file
/// row: it is named by content under `reports/<partner>/dry-run/`).
async fn dry_run_report(
    State(state): State<AppState>,
    addr: ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(q): Query<DryRunQuery>,
) -> Response {
    let page = match Page::require(&state, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let partner = match (&page.session.partner, q.partner) {
        (Some(own), _) => own.clone(),
        (None, Some(p)) if state.config.partner(&p).is_some() => p,
        (None, _) => return not_found(),
    };
    // `<16 hex>-<stem>.errors.csv`, one plain name: never a path.
    let well_formed = crate::source::safe_name(&name)
        && name.ends_with(".errors.csv")
        && name.len() > 17
        && name.as_bytes()[16] == b'-'
        && name.as_bytes()[..16]
            .iter()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    if !well_formed {
        return not_found();
    }
    let path = state
        .config
        .daemon
        .data_dir
        .join("reports")
        .join(&partner)
        .join("dry-run")
        .join(&name);
    let actor = format!("user:{}", page.session.email);
    let client = super::client(&addr);
    let who = partner.clone();
    let shown = name.clone();
    let read = super::with_db(&state, move |c| {
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("reading {}: {e}", path.display())),
        };
        crate::audit::record(
            c,
            &crate::audit::Entry {
                actor: &actor,
                action: "download",
                partner: Some(&who),
                detail: &format!("dry-run report {shown}"),
                client: Some(&client),
            },
        )
        .map_err(|e| e.to_string())?;
        Ok(Some(bytes))
    })
    .await;
    let bytes = match read {
        Ok(Some(b)) => b,
        Ok(None) => return not_found(),
        Err(r) => return r,
    };
    let charset = match state.config.partner(&partner).map(|p| p.encoding) {
        Some(Encoding::ShiftJis) => "Shift_JIS",
        _ => "UTF-8",
    };
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_str(&format!("text/csv; charset={charset}"))
                    .expect("ASCII header"),
            ),
            (
                header::CONTENT_DISPOSITION,
                super::files::content_disposition(&name),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        bytes,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_plain_words() {
        for c in Code::ALL {
            assert!(!code_text(c).is_empty());
        }
        assert!(file_code_text(FileCode::F001).contains("すでに積算"));
        assert_eq!(
            percent("交換 1.errors.csv"),
            "%E4%BA%A4%E6%8F%9B%201.errors.csv"
        );
    }
}
