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
//! - a partner user uploads for its own partner only; ops choose one;
//! - the form says what the partner's files must look like (encoding,
//!   header line, columns, miles limit) from its configuration, and
//!   `GET /upload/template.csv` is a header-line template in its encoding;
//! - after a partly failed upload the result says what to do next and
//!   offers the failed rows alone (`/files/{id}/failed-rows`); the error
//!   report is never changed. Technical (English) reasons are shown to
//!   ops only, behind 技術的な詳細; a partner is never told to change a
//!   setting.

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
use super::{client, forbidden, internal, render, with_read, Page};
use crate::config::Encoding;
use crate::pipeline::upload::{self as up, Received, Receiving, UploadError};
use crate::pipeline::validate::{Code, FileCode};
use crate::pipeline::{FileReport, PipelineError};
use crate::web::AppState;
use crate::words::{code_text, file_code_text};

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
        .route("/upload/template.csv", get(template))
}

/// Failed rows shown on the result page.
const FAILED_SHOWN: usize = 100;

/// One partner's file format, in words, for the upload page.
#[derive(Serialize)]
struct Format {
    id: String,
    label: String,
    encoding: &'static str,
    header: &'static str,
    max_miles: String,
    unique_key: bool,
}

fn format_of(state: &AppState, p: &crate::config::PartnerConfig) -> Format {
    use crate::config::Header;
    Format {
        id: p.id.clone(),
        label: super::partner_label(state, &p.id),
        encoding: match p.encoding {
            Encoding::ShiftJis => "Shift_JIS（CP932、Windows の「ANSI」）",
            Encoding::Utf8 => "UTF-8",
        },
        header: match p.header {
            Header::Yes => "1 行目は見出し行です（必ず付けてください。データは 2 行目から）",
            Header::No => "見出し行は付けません（1 行目からデータ）",
            Header::Auto => "見出し行はあってもなくてもかまいません",
        },
        max_miles: crate::words::digits(p.max_miles_per_row as i64),
        unique_key: p.unique_partner_key,
    }
}

#[derive(Deserialize)]
struct TemplateQuery {
    partner: Option<String>,
}

/// A template of the partner's exchange file: the column names as the
/// header line, in the partner's encoding, CRLF.
async fn template(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<TemplateQuery>,
) -> Response {
    let page = match Page::require(&state, &headers).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let partner = match (&page.session.partner, q.partner) {
        (Some(own), _) => own.clone(),
        (None, Some(p)) if state.config.partner(&p).is_some() => p,
        (None, _) => return page.not_found(),
    };
    let p = state.config.partner(&partner).expect("checked above");
    let text = "会員ID（またはメールアドレス）,指定キー,マイル\r\n";
    let (bytes, charset) = match p.encoding {
        Encoding::ShiftJis => (
            encoding_rs::SHIFT_JIS.encode(text).0.into_owned(),
            "Shift_JIS",
        ),
        Encoding::Utf8 => (text.as_bytes().to_vec(), "UTF-8"),
    };
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_str(&format!("text/csv; charset={charset}"))
                    .expect("ASCII charset"),
            ),
            (
                header::CONTENT_DISPOSITION,
                super::files::content_disposition(&format!("template-{partner}.csv")),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        bytes,
    )
        .into_response()
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
    let partners = super::partner_choices(state);
    let formats: Vec<Format> = state
        .config
        .partners
        .iter()
        .filter(|p| page.session.partner.as_ref().is_none_or(|own| *own == p.id))
        .map(|p| format_of(state, p))
        .collect();
    render(
        status,
        "upload.html",
        minijinja::context! {
            error => error,
            partners => partners,
            formats => formats,
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
        Ok(Ok(fr)) => {
            let extra = match after(&state, &partner, &fr, dry_run).await {
                Ok(x) => x,
                Err(r) => return r,
            };
            result_page(&state, &page, &partner, &fr, dry_run, extra)
        }
        Ok(Err(UploadError::BadName(_))) => form_page(
            &state,
            &page,
            StatusCode::BAD_REQUEST,
            Some("このファイル名は使えません。制御文字を含まない、200 バイトまでの名前にしてください。"),
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

/// What the result page adds to the pipeline's report.
#[derive(Default)]
struct Extra {
    /// The first failed rows, with line numbers (a credited upload).
    failed_rows: Vec<crate::pipeline::failed_rows::FailedRow>,
    /// Rows did not decode, and the file is in this other encoding.
    other_encoding: Option<Encoding>,
    /// F006: the earlier files it repeats (id, name, when).
    resend_of: Vec<(i64, String, String)>,
}

/// The file ids named in a re-send reason ("… re-send of files 3, 8: …").
fn resend_ids(reason: &str) -> Vec<i64> {
    let Some(rest) = reason.split("re-send of file").nth(1) else {
        return Vec::new();
    };
    let rest = rest.trim_start_matches('s');
    rest.split(':')
        .next()
        .unwrap_or_default()
        .split([',', ' '])
        .filter_map(|t| t.trim().parse().ok())
        .collect()
}

async fn after(
    state: &AppState,
    partner: &str,
    fr: &FileReport,
    dry_run: bool,
) -> Result<Extra, Response> {
    use crate::pipeline::failed_rows;
    let encoding = state
        .config
        .partner(partner)
        .map_or(Encoding::Utf8, |p| p.encoding);
    let tz = state.config.daemon.timezone;
    let who = partner.to_owned();
    let ids = match fr.file_code {
        Some(FileCode::F006) => resend_ids(fr.reason.as_deref().unwrap_or_default()),
        _ => Vec::new(),
    };
    let credited_with_failures = !dry_run && fr.file_code.is_none() && fr.counts.failed > 0;
    let file_id = fr.id.filter(|_| credited_with_failures);
    let mut archive = fr.archive_path.clone();
    with_read(state, move |c| {
        let resend_of = crate::query::file_names(c, &who, &ids)
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|(id, name, at)| (id, name, crate::timefmt::stored_for_people(&at, tz)))
            .collect();
        // Where the report and archive were put, as the files page reads them.
        let paths = match file_id {
            Some(id) => crate::query::file_paths(c, id).map_err(|e| e.to_string())?,
            None => None,
        };
        if let Some(a) = paths.as_ref().and_then(|p| p.archive_path.clone()) {
            archive = a.into();
        }
        let report = paths.and_then(|p| p.report_path);
        let failed_rows = match report {
            Some(r) => failed_rows::first(r.as_ref(), &archive, encoding, FAILED_SHOWN)
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "failed rows not shown");
                    Vec::new()
                }),
            None => Vec::new(),
        };
        // Not only with E009: UTF-8 kana can decode as CP932 (as garbage).
        let other_encoding = failed_rows::other_encoding(&archive, encoding);
        Ok(Extra {
            failed_rows,
            other_encoding,
            resend_of,
        })
    })
    .await
}

/// The wrong-encoding sentences for a partner; `credited`: rows of the
/// file were credited (their Japanese text may have been misread).
fn encoding_advice(found: Encoding, credited: bool) -> String {
    let mut s = match found {
        Encoding::Utf8 => "このファイルは UTF-8 のようです。Shift_JIS で保存してください（Excel では「CSV（コンマ区切り）」で保存します）。",
        Encoding::ShiftJis => "このファイルは Shift_JIS のようです。UTF-8 で保存してください（Excel では「CSV UTF-8（コンマ区切り）」で保存します）。",
    }
    .to_owned();
    if credited {
        s.push_str("文字コードが違うため、日本語を含む行が正しく読めていない可能性があります。積算した行を履歴検索で確かめ、おかしな行があれば運用担当にご連絡ください。");
    }
    s
}

fn result_page(
    state: &AppState,
    page: &Page,
    partner: &str,
    fr: &FileReport,
    dry_run: bool,
    extra: Extra,
) -> Response {
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
    // F006 in words: which earlier file it repeats, and what to do.
    let refusal = match (fr.file_code, extra.resend_of.first()) {
        (Some(FileCode::F006), Some((id, name, at))) => Some(format!(
            "このファイルは、以前に積算したファイル「{name}」（ファイル番号 {id}、{at} 受付）{}の再送と判断しました。\
             {} 行のうち {} 行がすでに積算済みです。何も積算していません。\
             新しい交換の行だけのファイルにしてアップロードしてください。すべて新しい交換で間違いない場合は、運用担当にご連絡ください（運用担当が再処理できます）。",
            if extra.resend_of.len() > 1 { "など" } else { "" },
            crate::words::digits(c.rows as i64),
            crate::words::digits(c.repeats.unwrap_or(0) as i64),
        )),
        (code, _) => code.map(|c| file_code_text(c).to_owned()),
    };
    let failed_file = (!dry_run && !refused && c.failed > 0 && fr.report_path.is_some())
        .then(|| fr.id.map(|id| format!("/files/{id}/failed-rows")))
        .flatten();
    let by_text: std::collections::HashMap<&str, &str> = Code::ALL
        .iter()
        .map(|c| (c.as_str(), code_text(*c)))
        .collect();
    let failed_rows: Vec<minijinja::Value> = extra
        .failed_rows
        .iter()
        .map(|r| {
            minijinja::context! {
                line => r.line, text => r.text, code => r.code,
                meaning => by_text.get(r.code.as_str()).copied().unwrap_or_default(),
            }
        })
        .collect();
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
            refusal => refusal,
            shown_label => super::partner_label(state, partner),
            failed_file => failed_file,
            failed_rows => failed_rows,
            failed_shown => FAILED_SHOWN,
            encoding_advice => extra
                .other_encoding
                .map(|e| encoding_advice(e, !dry_run && !refused && c.credited > 0)),
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
