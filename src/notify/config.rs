//! `[daemon.smtp]`, `[daemon.notify]` and `[partner.notify]`: raw TOML in,
//! checked settings out. Every problem is one message that says what to
//! write instead; secrets are named by place (`*_env`, `*_file`,
//! `*_credential`), never given inline.

use std::path::PathBuf;

use serde::Deserialize;

use super::Kind;
use crate::source::secret::{Secret, SecretRef};

/// How the SMTP connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain, then `STARTTLS` before anything else (refused if the server
    /// does not offer it). Port 587 unless given.
    StartTls,
    /// TLS from the first byte ("SMTPS"). Port 465 unless given.
    Implicit,
    /// No TLS: allowed only to a loopback relay. Port 25 unless given.
    None,
}

/// The charset of the mails sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    /// `ISO-2022-JP` (7 bit), what many Japanese company mail systems
    /// still expect. A message with a character that has no ISO-2022-JP
    /// form (𠮷, an emoji) goes out in UTF-8 instead, never mangled.
    Iso2022Jp,
    Utf8,
}

/// `[daemon.smtp]`: the one SMTP server every notification mail goes
/// through.
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    /// `From:` (e.g. `milebatch <noreply@operator.example>`).
    pub from: lettre::message::Mailbox,
    pub username: Option<String>,
    pub password: Option<SecretRef>,
    /// Extra trusted roots (PEM), beside the system's.
    pub ca_file: Option<PathBuf>,
    pub charset: Charset,
    /// Also an HTML part (plain text is always there).
    pub html: bool,
    pub timeout: std::time::Duration,
}

/// `[daemon.notify]`: what the operator's own people get.
#[derive(Debug, Clone)]
pub struct OpsNotify {
    pub email: Vec<lettre::message::Mailbox>,
    pub events: Vec<Kind>,
    /// `digest = "08:30"`: one mail a day at this time (in the daemon's
    /// zone) with every event since the last one, instead of a mail each.
    pub digest: Option<chrono::NaiveTime>,
}

/// `[partner.notify]`: what one partner gets, and where.
#[derive(Debug, Clone)]
pub struct PartnerNotify {
    pub email: Vec<lettre::message::Mailbox>,
    pub email_events: Vec<Kind>,
    pub webhook: Option<Webhook>,
}

#[derive(Debug, Clone)]
pub struct Webhook {
    pub url: reqwest::Url,
    /// The HMAC key of `Milebatch-Signature`, shared with the partner.
    pub secret: SecretRef,
    pub ca_file: Option<PathBuf>,
    pub events: Vec<Kind>,
    /// `webhook_timeout`: the whole request, connection included.
    pub timeout: std::time::Duration,
}

impl Webhook {
    pub fn read_secret(&self) -> Result<Secret, String> {
        self.secret.read()
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawSmtp {
    host: Option<String>,
    port: Option<u16>,
    tls: Option<String>,
    from: Option<String>,
    username: Option<String>,
    password_env: Option<String>,
    password_file: Option<String>,
    password_credential: Option<String>,
    ca_file: Option<String>,
    charset: Option<String>,
    #[serde(default)]
    html: bool,
    timeout: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawOpsNotify {
    #[serde(default)]
    email: Vec<String>,
    events: Option<Vec<String>>,
    digest: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawPartnerNotify {
    #[serde(default)]
    email: Vec<String>,
    email_events: Option<Vec<String>>,
    webhook: Option<String>,
    webhook_secret_env: Option<String>,
    webhook_secret_file: Option<String>,
    webhook_secret_credential: Option<String>,
    webhook_ca_file: Option<String>,
    webhook_events: Option<Vec<String>>,
    webhook_timeout: Option<String>,
}

fn events(raw: &Option<Vec<String>>, key: &str) -> Result<Vec<Kind>, String> {
    match raw {
        None => Ok(Kind::CONFIGURABLE.to_vec()),
        Some(list) => list
            .iter()
            .map(|name| {
                Kind::parse(name)
                    .filter(|k| *k != Kind::Test)
                    .ok_or_else(|| {
                        format!(
                            "`{key}`: {name:?} is not an event; the events are {}",
                            Kind::CONFIGURABLE
                                .iter()
                                .map(|k| format!("{:?}", k.as_str()))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    })
            })
            .collect(),
    }
}

fn mailboxes(raw: &[String], key: &str) -> Result<Vec<lettre::message::Mailbox>, String> {
    raw.iter()
        .map(|a| {
            a.parse::<lettre::message::Mailbox>().map_err(|e| {
                format!("`{key}`: {a:?} is not an e-mail address ({e}); write \"name@example.jp\"")
            })
        })
        .collect()
}

use crate::store::is_loopback_name as is_loopback_host;

impl SmtpConfig {
    pub fn from_raw(r: &RawSmtp, resolve: &dyn Fn(&str) -> PathBuf) -> Result<SmtpConfig, String> {
        let host = r
            .host
            .clone()
            .filter(|h| !h.is_empty())
            .ok_or("needs `host`, the SMTP server's name (e.g. \"smtp.example.jp\")")?;
        let tls = match r.tls.as_deref().unwrap_or("starttls") {
            "starttls" => SmtpTls::StartTls,
            "tls" => SmtpTls::Implicit,
            "none" if is_loopback_host(&host) => SmtpTls::None,
            "none" => {
                return Err(format!(
                    "`tls = \"none\"` sends mail and the password in clear: allowed only to a relay on \
                     this host (127.0.0.1, ::1, localhost), not {host:?}; use \"starttls\" or \"tls\""
                ))
            }
            other => {
                return Err(format!(
                    "`tls`: {other:?} is not one of \"starttls\" (port 587), \"tls\" (port 465) or \"none\" (loopback only)"
                ))
            }
        };
        let port = r.port.unwrap_or(match tls {
            SmtpTls::StartTls => 587,
            SmtpTls::Implicit => 465,
            SmtpTls::None => 25,
        });
        let from = r.from.as_deref().ok_or(
            "needs `from`, the sender of the mails (e.g. \"milebatch <noreply@example.jp>\")",
        )?;
        let from = mailboxes(&[from.to_owned()], "from")?.remove(0);
        let password = SecretRef::from_keys(
            &r.password_env,
            &r.password_file,
            &r.password_credential,
            "SMTP password",
            resolve,
        )?;
        if password.is_some() != r.username.is_some() {
            return Err(
                "`username` and a password (`password_env`, `password_file` or `password_credential`) go together"
                    .into(),
            );
        }
        let charset = match r.charset.as_deref().unwrap_or("iso-2022-jp") {
            "iso-2022-jp" | "ISO-2022-JP" => Charset::Iso2022Jp,
            "utf-8" | "UTF-8" => Charset::Utf8,
            other => {
                return Err(format!(
                    "`charset`: {other:?} is not \"iso-2022-jp\" (the default) or \"utf-8\""
                ))
            }
        };
        let timeout = match &r.timeout {
            None => std::time::Duration::from_secs(10),
            Some(t) => crate::config::parse_duration(t).map_err(|e| format!("`timeout`: {e}"))?,
        };
        Ok(SmtpConfig {
            host,
            port,
            tls,
            from,
            username: r.username.clone(),
            password,
            ca_file: r.ca_file.as_deref().map(resolve),
            charset,
            html: r.html,
            timeout,
        })
    }
}

impl OpsNotify {
    pub fn from_raw(r: &RawOpsNotify) -> Result<OpsNotify, String> {
        let email = mailboxes(&r.email, "email")?;
        if email.is_empty() {
            return Err(
                "needs `email`, the operator's addresses (e.g. [\"ops@example.jp\"])".into(),
            );
        }
        let digest = match &r.digest {
            None => None,
            Some(t) => Some(chrono::NaiveTime::parse_from_str(t, "%H:%M").map_err(|_| {
                format!("`digest`: {t:?} is not a time of day like \"08:30\" (in the daemon's timezone)")
            })?),
        };
        Ok(OpsNotify {
            email,
            events: events(&r.events, "events")?,
            digest,
        })
    }
}

impl PartnerNotify {
    pub fn from_raw(
        r: &RawPartnerNotify,
        resolve: &dyn Fn(&str) -> PathBuf,
    ) -> Result<PartnerNotify, String> {
        let email = mailboxes(&r.email, "email")?;
        let webhook = match &r.webhook {
            None => {
                if r.webhook_secret_env.is_some()
                    || r.webhook_secret_file.is_some()
                    || r.webhook_secret_credential.is_some()
                    || r.webhook_ca_file.is_some()
                    || r.webhook_events.is_some()
                    || r.webhook_timeout.is_some()
                {
                    return Err("the `webhook_*` keys need `webhook`, the URL to POST to".into());
                }
                None
            }
            Some(u) => {
                let url = reqwest::Url::parse(u)
                    .map_err(|e| format!("`webhook`: {u:?} is not a URL ({e})"))?;
                let loopback = url.host_str().is_some_and(is_loopback_host);
                match url.scheme() {
                    "https" => {}
                    "http" if loopback => {}
                    _ => {
                        return Err(format!(
                            "`webhook` must be an https:// URL (http:// only to this host), not {u:?}: \
                             the events carry member and file data"
                        ))
                    }
                }
                if !url.username().is_empty() || url.password().is_some() {
                    return Err(
                        "`webhook`: no user or password in the URL; the requests are signed with the webhook secret"
                            .into(),
                    );
                }
                let secret = SecretRef::from_keys(
                    &r.webhook_secret_env,
                    &r.webhook_secret_file,
                    &r.webhook_secret_credential,
                    "webhook secret",
                    resolve,
                )?
                .ok_or(
                    "`webhook` needs its signing secret: one of `webhook_secret_env`, \
                     `webhook_secret_file`, `webhook_secret_credential` (the partner verifies \
                     Milebatch-Signature with it)",
                )?;
                Some(Webhook {
                    url,
                    secret,
                    ca_file: r.webhook_ca_file.as_deref().map(resolve),
                    events: events(&r.webhook_events, "webhook_events")?,
                    timeout: match &r.webhook_timeout {
                        None => super::WEBHOOK_TIMEOUT,
                        Some(t) => crate::config::parse_duration(t)
                            .map_err(|e| format!("`webhook_timeout`: {e}"))?,
                    },
                })
            }
        };
        if email.is_empty() && r.email_events.is_some() {
            return Err("`email_events` needs `email`, the partner's addresses".into());
        }
        if email.is_empty() && webhook.is_none() {
            return Err(
                "says nothing to send: give `email = [\"…\"]`, `webhook = \"https://…\"`, or both"
                    .into(),
            );
        }
        Ok(PartnerNotify {
            email,
            email_events: events(&r.email_events, "email_events")?,
            webhook,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partner(text: &str) -> Result<PartnerNotify, String> {
        let raw: RawPartnerNotify = toml::from_str(text).unwrap();
        PartnerNotify::from_raw(&raw, &|p| PathBuf::from(p))
    }

    #[test]
    fn webhooks_are_https_and_signed() {
        let e = partner("webhook = \"http://hooks.example.jp/x\"\nwebhook_secret_env = \"S\"")
            .unwrap_err();
        assert!(e.contains("https://"), "{e}");
        let e = partner("webhook = \"https://hooks.example.jp/x\"").unwrap_err();
        assert!(e.contains("webhook_secret_env"), "{e}");
        let ok = partner("webhook = \"http://127.0.0.1:9/x\"\nwebhook_secret_env = \"S\"").unwrap();
        assert_eq!(ok.webhook.unwrap().events, Kind::CONFIGURABLE.to_vec());
        let e = partner("webhook = \"https://u:p@hooks.example.jp/x\"\nwebhook_secret_env = \"S\"")
            .unwrap_err();
        assert!(e.contains("no user or password"), "{e}");
    }

    #[test]
    fn events_and_addresses_are_checked() {
        let e = partner(
            "email = [\"ops@acme.example\"]\nemail_events = [\"file.refused\", \"file.lost\"]",
        )
        .unwrap_err();
        assert!(
            e.contains("\"file.lost\" is not an event") && e.contains("credits.reversed"),
            "{e}"
        );
        let e = partner("email = [\"not an address\"]").unwrap_err();
        assert!(e.contains("is not an e-mail address"), "{e}");
        let e = partner("").unwrap_err();
        assert!(e.contains("says nothing to send"), "{e}");
        let ok = partner(
            "email = [\"ACME 経理 <ops@acme.example>\"]\nemail_events = [\"file.refused\"]",
        )
        .unwrap();
        assert_eq!(ok.email_events, vec![Kind::FileRefused]);
    }

    #[test]
    fn plain_smtp_only_to_loopback() {
        let smtp = |t: &str| {
            let raw: RawSmtp = toml::from_str(t).unwrap();
            SmtpConfig::from_raw(&raw, &|p| PathBuf::from(p))
        };
        let e = smtp("host = \"mail.example.jp\"\ntls = \"none\"\nfrom = \"a@example.jp\"")
            .unwrap_err();
        assert!(e.contains("loopback") || e.contains("this host"), "{e}");
        let ok = smtp("host = \"127.0.0.1\"\ntls = \"none\"\nfrom = \"a@example.jp\"").unwrap();
        assert_eq!((ok.port, ok.charset), (25, Charset::Iso2022Jp));
        let ok =
            smtp("host = \"mail.example.jp\"\ntls = \"tls\"\nfrom = \"a@example.jp\"").unwrap();
        assert_eq!(ok.port, 465);
        let e = smtp("host = \"mail.example.jp\"\nfrom = \"a@example.jp\"\nusername = \"u\"")
            .unwrap_err();
        assert!(e.contains("go together"), "{e}");
    }
}
