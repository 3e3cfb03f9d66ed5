//! Notification e-mail: the Japanese text of each event, and sending it
//! through `[daemon.smtp]` (lettre, rustls; certificates verified against
//! the system's roots plus `ca_file`).
//!
//! What must stay true:
//! - a partner's mail names no person and no setting the partner cannot
//!   see; the technical reason of a refusal goes to ops only;
//! - `ISO-2022-JP` mail is 7-bit, the subject RFC 2047 encoded-words that
//!   each stand alone; a text that has no ISO-2022-JP form goes out as
//!   UTF-8 rather than with a character lost.

use lettre::message::header::{ContentTransferEncoding, ContentType, HeaderName, HeaderValue};
use lettre::message::{Body, Mailbox, Message, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{SmtpTransport, Transport};
use serde_json::Value;

use super::config::{Charset, SmtpTls};
use super::{file_link, Kind};
use crate::config::{Config, PartnerConfig};
use crate::store::outbox::Event;
use crate::words::digits;

/// A mail before encoding.
pub struct Mail {
    pub subject: String,
    pub text: String,
}

fn n(v: &Value) -> String {
    digits(v.as_i64().unwrap_or(0))
}

fn time(config: &Config, stored: &str) -> String {
    crate::timefmt::stored_for_people(stored, config.daemon.timezone)
}

const FOOTER: &str = "このメールは milebatch から自動で送信しています。返信は届きません。";

/// The row codes of a file, one line each: `E003 会員が見つかりません…: 2 件`.
fn code_lines(by_code: &Value) -> String {
    let mut out = String::new();
    if let Some(m) = by_code.as_object() {
        for (code, count) in m {
            let words = crate::pipeline::validate::Code::ALL
                .iter()
                .find(|c| c.as_str() == code)
                .map_or("", |c| crate::words::code_text(*c));
            out.push_str(&format!("  {code} {words}: {} 件\n", n(count)));
        }
    }
    out
}

fn file_code_words(code: &str) -> &'static str {
    use crate::pipeline::validate::FileCode;
    FileCode::ALL
        .into_iter()
        .chain([FileCode::F008])
        .find(|c| c.as_str() == code)
        .map_or("", crate::words::file_code_text)
}

/// The mail a partner gets for `ev`.
pub fn partner_message(config: &Config, p: &PartnerConfig, ev: &Event) -> Mail {
    let data: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
    let file = &data["file"];
    let file_name = file["name"].as_str().unwrap_or("");
    let link = file["id"]
        .as_i64()
        .and_then(|id| file_link(config, &p.id, id))
        .map(|l| format!("\nファイルの詳細（管理サイト）:\n{l}\n"))
        .unwrap_or_default();
    let who = format!("{}（{}）ご担当者様\n\n", p.name, p.id);
    let facts = |f: &Value| {
        format!(
            "ファイル名: {}\n受付日時: {}\n行数: {} 件\n",
            f["name"].as_str().unwrap_or(""),
            time(config, f["received_at"].as_str().unwrap_or("")),
            n(&f["rows"]),
        )
    };
    let (subject, body) = match Kind::parse(&ev.kind) {
        Some(Kind::FileErrors) => (
            format!("【milebatch】{}: {file_name} の {} 行がエラーになりました", p.name, n(&file["failed"])),
            format!(
                "ファイル「{file_name}」を積算しました。一部の行はエラーのため積算していません。\n\n{}\
                 積算: {} 件（{} マイル）\nエラー: {} 件\n{}\n\
                 次にすること:\n\
                 エラーファイル（送られた行の末尾にエラーコードを付けたもの）で理由を確認し、\
                 エラーの行だけを直して、新しいファイルとして送ってください。\
                 ファイル全体を送り直さないでください（積算済みの行が再送として扱われます）。\n{link}",
                facts(file),
                n(&file["credited"]),
                n(&file["miles"]),
                n(&file["failed"]),
                code_lines(&file["failed_by_code"]),
            ),
        ),
        Some(Kind::FileRefused) => {
            let code = file["file_code"].as_str().unwrap_or("");
            (
                format!("【milebatch】{}: {file_name} を受け付けできませんでした（{code}）", p.name),
                format!(
                    "ファイル「{file_name}」は処理できませんでした。このファイルの行は 1 行も積算していません。\n\n{}\
                     理由（{code}）: {}\n\n\
                     次にすること:\n\
                     エラーファイル（すべての行に理由のコード）で内容を確認し、直したファイルを新しいファイルとして送ってください。\
                     わからない点は運用担当にお問い合わせください。\n{link}",
                    facts(file),
                    file_code_words(code),
                ),
            )
        }
        Some(Kind::DeliveryMissed) => (
            format!("【milebatch】{}: 予定のファイルが届いていません", p.name),
            format!(
                "{} の取得で、新しいファイルが見つかりませんでした。\n\n\
                 次にすること:\n\
                 ファイルを置いたかどうか、置き場所とファイル名の形式が合っているかをご確認ください。\
                 置いたファイルは次の取得で処理されます。\n",
                time(config, data["run"]["at"].as_str().unwrap_or("")),
            ),
        ),
        Some(Kind::ReportUndelivered) => (
            format!("【milebatch】{}: {file_name} の結果ファイルをお届けできていません", p.name),
            format!(
                "ファイル「{file_name}」の結果ファイル（エラーファイル・サマリー）を、貴社のサーバーに書き込めませんでした。\
                 積算の結果は変わりません。次の取得のときにもう一度書き込みます。\n\n\
                 次にすること:\n\
                 結果ファイルの置き場所のフォルダーがあるか、書き込めるか、空き容量があるかをご確認ください。\
                 結果ファイルは管理サイトからもダウンロードできます。\n{link}"
            ),
        ),
        Some(k @ (Kind::KeyCreated | Kind::KeyRevoked)) => {
            let what = if k == Kind::KeyCreated { "作成" } else { "無効に" };
            let key = &data["key"];
            let prefix = key["prefix"].as_str().unwrap_or("");
            (
                format!("【milebatch】{}: API キー {prefix}… が{what}されました", p.name),
                format!(
                    "API キーが{what}されました。\n\nキー: {prefix}…（先頭のみ）\nラベル: {}\n日時: {}\n\n\
                     心当たりがない場合は、すぐに運用担当へご連絡ください。\n",
                    key["label"].as_str().unwrap_or(""),
                    time(config, &ev.created_at),
                ),
            )
        }
        Some(Kind::CreditsReversed) => {
            let r = &data["reversal"];
            (
                format!(
                    "【milebatch】{}: 積算が取り消されました（{} 件、{} マイル）",
                    p.name,
                    n(&r["rows"]),
                    n(&r["miles"])
                ),
                format!(
                    "運用担当が積算を取り消しました。\n\n取り消し: {} 件（{} マイル）\n日時: {}\n\n\
                     取り消した交換は管理サイトの履歴に表示されます。内容についてのお問い合わせは運用担当へどうぞ。\n",
                    n(&r["rows"]),
                    n(&r["miles"]),
                    time(config, &ev.created_at),
                ),
            )
        }
        Some(Kind::Test) | None => (
            format!("【milebatch】{}: 通知のテスト", p.name),
            "これは milebatch からのテスト通知です。このメールが届いていれば、通知の設定は正しく動いています。\n"
                .to_owned(),
        ),
    };
    Mail {
        subject,
        text: format!("{who}{body}\n--\n{FOOTER}\nイベントID: {}\n", ev.event_id),
    }
}

/// What ops read about one event: a line with the partner, the event and
/// the file, and the technical reason when there is one.
fn ops_line(config: &Config, ev: &Event) -> String {
    let data: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
    let partner = ev.partner.as_deref().unwrap_or("-");
    let name = config.partner(partner).map_or(partner, |p| p.name.as_str());
    let title = Kind::parse(&ev.kind).map_or("その他", Kind::title_ja);
    let mut line = format!(
        "{} {name}（{partner}）: {title} [{}]",
        time(config, &ev.created_at),
        ev.kind
    );
    let f = &data["file"];
    if let Some(file) = f["name"].as_str() {
        line.push_str(&format!(" ファイル {file}（#{}）", f["id"]));
        if let Some(code) = f["file_code"].as_str() {
            line.push_str(&format!(" {code}"));
        }
        if f["failed"].as_i64().is_some_and(|x| x > 0) {
            line.push_str(&format!(
                " エラー {} / {} 行",
                n(&f["failed"]),
                n(&f["rows"])
            ));
        }
    }
    for key in ["reason", "error"] {
        if let Some(why) = data[key].as_str() {
            line.push_str(&format!("\n    {why}"));
        }
    }
    line.push_str(&format!("\n    イベントID: {}", ev.event_id));
    line
}

/// The mail ops get: one event, or a digest of several.
pub fn ops_message(config: &Config, events: &[&Event]) -> Mail {
    let lines: Vec<String> = events.iter().map(|e| ops_line(config, e)).collect();
    let subject = match events {
        [_] => {
            let first = lines[0].lines().next().unwrap_or("");
            format!(
                "【milebatch 運用】{}",
                first.split_once(' ').map_or(first, |x| x.1)
            )
        }
        _ => format!(
            "【milebatch 運用】通知のまとめ（{} 件）",
            digits(events.len() as i64)
        ),
    };
    Mail {
        subject,
        text: format!("{}\n\n--\n{FOOTER}\n", lines.join("\n\n")),
    }
}

/// RFC 2047 encoded-words of `s` in ISO-2022-JP, each short enough for a
/// folded header line and each ending back in ASCII; `None` when `s` has
/// a character ISO-2022-JP cannot carry.
fn iso2022jp_words(s: &str) -> Option<String> {
    use base64::Engine;
    let word = |chars: &[char]| {
        let text: String = chars.iter().collect();
        let (bytes, _, errors) = encoding_rs::ISO_2022_JP.encode(&text);
        (!errors).then(|| {
            format!(
                "=?ISO-2022-JP?B?{}?=",
                base64::engine::general_purpose::STANDARD.encode(&bytes)
            )
        })
    };
    let mut rest: Vec<char> = s.chars().collect();
    let mut words = Vec::new();
    while !rest.is_empty() {
        // The longest prefix whose word fits RFC 2047's 75 characters.
        let mut take = 1;
        while take < rest.len() && word(&rest[..take + 1])?.len() <= 75 {
            take += 1;
        }
        words.push(word(&rest[..take])?);
        rest.drain(..take);
    }
    Some(words.join("\r\n "))
}

/// The longest encoded body line of a 7-bit part (RFC 5322 allows 998;
/// lettre takes 7 bit only for lines under 76 bytes with CRLF; Japanese
/// mailers fold about there too).
const LINE_BYTES: usize = 72;

/// `text` in ISO-2022-JP with CRLF, each line folded to at most
/// [`LINE_BYTES`] encoded bytes (a line of 35 or so kanji, as Japanese
/// mailers fold); `None` when a character has no ISO-2022-JP form or a
/// line cannot be folded to fit (a very long URL).
fn iso2022jp_body(text: &str) -> Option<Vec<u8>> {
    let encode = |s: &str| {
        let (b, _, errors) = encoding_rs::ISO_2022_JP.encode(s);
        (!errors).then(|| b.into_owned())
    };
    let mut out = Vec::new();
    for line in text.lines() {
        let mut rest: Vec<char> = line.chars().collect();
        loop {
            let whole = encode(&rest.iter().collect::<String>())?;
            if whole.len() <= LINE_BYTES {
                out.extend_from_slice(&whole);
                out.extend_from_slice(b"\r\n");
                break;
            }
            // The longest prefix that fits.
            let mut take = 0;
            for n in 1..=rest.len() {
                if encode(&rest[..n].iter().collect::<String>())?.len() > LINE_BYTES {
                    break;
                }
                take = n;
            }
            // 禁則: a line does not start with a closing bracket or a stop.
            while take > 1 && "、。，．）」』】〕：,.)".contains(rest[take]) {
                take -= 1;
            }
            if take == 0 || rest[..take].iter().all(char::is_ascii) {
                // An ASCII run (a URL) is never cut: not this charset, then.
                return None;
            }
            out.extend_from_slice(&encode(&rest[..take].iter().collect::<String>())?);
            out.extend_from_slice(b"\r\n");
            rest.drain(..take);
        }
    }
    Some(out)
}

fn html_of(text: &str) -> String {
    let mut out = String::from(
        "<!DOCTYPE html><html lang=\"ja\"><head><meta charset=\"utf-8\"></head><body style=\"font-family:sans-serif\">",
    );
    for para in text.split("\n\n") {
        out.push_str("<p>");
        for (i, line) in para.lines().enumerate() {
            if i > 0 {
                out.push_str("<br>");
            }
            let esc = line
                .replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;");
            match esc.find("https://").or_else(|| esc.find("http://")) {
                Some(at) => {
                    let (before, url) = esc.split_at(at);
                    out.push_str(&format!("{before}<a href=\"{url}\">{url}</a>"));
                }
                None => out.push_str(&esc),
            }
        }
        out.push_str("</p>");
    }
    out.push_str("</body></html>");
    out
}

/// The message as sent: in the configured charset (ISO-2022-JP falls
/// back to UTF-8 for a text it cannot carry), plain text and, with
/// `html = true`, an HTML part beside it.
pub fn build(config: &Config, to: &[Mailbox], mail: &Mail) -> Result<Message, String> {
    let smtp = config
        .daemon
        .smtp
        .as_ref()
        .ok_or("[daemon.smtp] is not configured")?;
    let mut b = Message::builder().from(smtp.from.clone()).date_now();
    for m in to {
        b = b.to(m.clone());
    }
    let jis = match smtp.charset {
        Charset::Iso2022Jp => iso2022jp_words(&mail.subject)
            .and_then(|subject| iso2022jp_body(&mail.text).map(|body| (subject, body))),
        Charset::Utf8 => None,
    };
    let text_part = match jis {
        Some((subject, body)) => {
            b = b.raw_header(HeaderValue::dangerous_new_pre_encoded(
                HeaderName::new_from_ascii_str("Subject"),
                mail.subject.clone(),
                subject,
            ));
            SinglePart::builder()
                .header(
                    ContentType::parse("text/plain; charset=ISO-2022-JP").expect("a valid type"),
                )
                .body(
                    Body::new_with_encoding(body, ContentTransferEncoding::SevenBit)
                        .map_err(|_| "the ISO-2022-JP body is not 7-bit".to_owned())?,
                )
        }
        None => {
            b = b.subject(mail.subject.clone());
            SinglePart::builder().header(ContentType::TEXT_PLAIN).body(
                Body::new_with_encoding(mail.text.clone(), ContentTransferEncoding::Base64)
                    .map_err(|_| "body".to_owned())?,
            )
        }
    };
    let built = if smtp.html {
        let html = SinglePart::builder().header(ContentType::TEXT_HTML).body(
            Body::new_with_encoding(html_of(&mail.text), ContentTransferEncoding::Base64)
                .map_err(|_| "body".to_owned())?,
        );
        b.multipart(
            MultiPart::alternative()
                .singlepart(text_part)
                .singlepart(html),
        )
    } else {
        b.singlepart(text_part)
    };
    built.map_err(|e| format!("cannot build the mail: {e}"))
}

/// Send `mail` to `to` through `[daemon.smtp]`; the error in one line.
pub fn send(config: &Config, to: &[Mailbox], mail: &Mail) -> Result<(), String> {
    let smtp = config
        .daemon
        .smtp
        .as_ref()
        .ok_or("[daemon.smtp] is not configured")?;
    let message = build(config, to, mail)?;
    let mut tls = TlsParameters::builder(smtp.host.clone());
    if let Some(ca) = &smtp.ca_file {
        let pem = std::fs::read(ca).map_err(|e| format!("ca_file {}: {e}", ca.display()))?;
        tls = tls.add_root_certificate(
            Certificate::from_pem(&pem).map_err(|e| format!("ca_file {}: {e}", ca.display()))?,
        );
    }
    let params = match smtp.tls {
        SmtpTls::None => None,
        _ => Some(tls.build_rustls().map_err(|e| format!("TLS setup: {e}"))?),
    };
    let mut t = SmtpTransport::builder_dangerous(smtp.host.as_str())
        .port(smtp.port)
        .timeout(Some(smtp.timeout))
        .tls(match (smtp.tls, params) {
            (SmtpTls::StartTls, Some(p)) => Tls::Required(p),
            (SmtpTls::Implicit, Some(p)) => Tls::Wrapper(p),
            _ => Tls::None,
        });
    if let (Some(user), Some(pw)) = (&smtp.username, &smtp.password) {
        let pw = pw.read()?;
        t = t.credentials(Credentials::new(user.clone(), pw.expose().to_owned()));
    }
    t.build().send(&message).map(|_| ()).map_err(|e| {
        format!(
            "SMTP {}:{}: {}",
            smtp.host,
            smtp.port,
            crate::source::http::chain(&e)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_words_stand_alone_and_decode() {
        use base64::Engine;
        let s = "【milebatch】ACME ストア: orders.csv の 3 行がエラーになりました";
        let w = iso2022jp_words(s).unwrap();
        let mut back = String::new();
        for word in w.split("\r\n ") {
            assert!(word.len() <= 75, "{word}");
            let b64 = word
                .trim_start_matches("=?ISO-2022-JP?B?")
                .trim_end_matches("?=");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap();
            assert!(bytes.iter().all(|b| *b < 0x80));
            // Each word returns to ASCII by itself (ESC ( B) when it left it.
            if bytes.contains(&0x1b) {
                assert!(bytes.ends_with(b"\x1b(B"), "{bytes:?}");
            }
            back.push_str(&encoding_rs::ISO_2022_JP.decode(&bytes).0);
        }
        assert_eq!(back, s);
        assert_eq!(iso2022jp_words("𠮷野家"), None);
    }

    #[test]
    fn body_lines_are_folded_to_fit_seven_bit() {
        let text = "ファイル「orders.csv」を積算しました。一部の行はエラーのため積算していません。エラーファイルで理由を確認してください。\nhttps://mb.example.jp/files/1?partner=acme\n";
        let body = iso2022jp_body(text).unwrap();
        let lines: Vec<&[u8]> = body.split(|b| *b == b'\n').collect();
        assert!(lines.len() > 3, "folded");
        assert!(lines
            .iter()
            .all(|l| l.len() <= LINE_BYTES + 1 && l.iter().all(|b| *b < 0x80)));
        let back = encoding_rs::ISO_2022_JP.decode(&body).0.replace("\r\n", "");
        assert_eq!(back, text.replace('\n', ""));
        // A URL longer than a line is not cut: UTF-8 instead.
        assert_eq!(
            iso2022jp_body(&format!("https://example.jp/{}", "a".repeat(80))),
            None
        );
    }
}
