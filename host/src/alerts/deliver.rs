//! Sending one notice: by e-mail (SMTP through `lettre`, STARTTLS or implicit TLS)
//! and to a webhook (a POST of a JSON document). A delivery error is returned in
//! words for the page; it never holds the SMTP password or the webhook URL.

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::{json, Value};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::settings::{EmailSettings, SmtpTls};
use crate::admin::error::chain;
use crate::admin::rfc3339;
use crate::settings::SecretString;

/// How long one delivery may take.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The problem has lasted `alert_after_minutes`.
    Alert,
    /// It still lasts, `alert_repeat_minutes` after the last one.
    Reminder,
    /// It ended.
    AllClear,
    /// Asked for from the page.
    Test,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Alert => "alert",
            Self::Reminder => "reminder",
            Self::AllClear => "all_clear",
            Self::Test => "test",
        }
    }
}

/// What one alert says.
#[derive(Debug, Clone)]
pub struct Notice {
    pub kind: Kind,
    /// `configuration:<id>`, `plugin:<folder>`, or `test`.
    pub subject: String,
    pub title: String,
    pub reasons: Vec<String>,
    /// When the problem began (ms).
    pub since: Option<i64>,
    pub engine: String,
    pub admin_url: String,
    pub at: i64,
}

impl Notice {
    pub fn headline(&self) -> String {
        match self.kind {
            Kind::Alert => format!("{}: {}", self.title, self.reasons.join("; ")),
            Kind::Reminder => format!("still: {}: {}", self.title, self.reasons.join("; ")),
            Kind::AllClear => format!("all clear: {}", self.title),
            Kind::Test => "test alert".to_owned(),
        }
    }

    fn mail_subject(&self) -> String {
        // One line, of a length mail programs show whole.
        let mut subject = format!("[middleware-engine] {}", self.headline());
        subject.retain(|c| !c.is_control());
        if subject.chars().count() > 160 {
            subject = subject.chars().take(157).collect::<String>() + "...";
        }
        subject
    }

    fn mail_body(&self) -> String {
        let mut body = String::new();
        match self.kind {
            Kind::Alert | Kind::Reminder => {
                body.push_str(&format!("{} needs attention:\n\n", self.title));
                for reason in &self.reasons {
                    body.push_str(&format!("  - {reason}\n"));
                }
                if self.kind == Kind::Reminder {
                    body.push_str("\nThis is a reminder: the problem still lasts.\n");
                }
            }
            Kind::AllClear => {
                body.push_str(&format!("{}: the problem has ended.\n", self.title));
            }
            Kind::Test => {
                body.push_str("A test alert, sent from the admin page: alerts reach you.\n");
            }
        }
        body.push('\n');
        if let Some(since) = self.since {
            body.push_str(&format!("Since:  {}\n", rfc3339(since)));
        }
        body.push_str(&format!("Sent:   {}\n", rfc3339(self.at)));
        body.push_str(&format!("Engine: {}\n", self.engine));
        if !self.admin_url.is_empty() {
            body.push_str(&format!("Admin:  {}\n", self.admin_url));
        }
        body
    }

    /// The webhook's document.
    pub fn json(&self) -> Value {
        json!({
            "kind": self.kind.name(),
            "subject": self.subject,
            "title": self.title,
            "summary": self.headline(),
            "reasons": self.reasons,
            "since": self.since.map(rfc3339),
            "sent_at": rfc3339(self.at),
            "engine": self.engine,
            "admin_url": self.admin_url,
        })
    }
}

/// The certificates of a PEM bundle, one by one (lettre takes them one at a time).
fn pem_certificates(pem: &str) -> Result<Vec<Certificate>, String> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|der| {
            let der = der.map_err(|e| format!("the extra trusted CA file: {e}"))?;
            Certificate::from_der(der.to_vec())
                .map_err(|e| format!("the extra trusted CA file: {e}"))
        })
        .collect()
}

pub async fn email(
    settings: &EmailSettings,
    extra_roots: Option<&str>,
    notice: &Notice,
) -> Result<(), String> {
    let message = Message::builder()
        .from(settings.from.clone())
        .subject(notice.mail_subject())
        .header(ContentType::TEXT_PLAIN);
    let message = settings
        .to
        .iter()
        .fold(message, |m, to| m.to(to.clone()))
        .body(notice.mail_body())
        .map_err(|e| format!("cannot write the e-mail: {e}"))?;
    let tls = if settings.tls == SmtpTls::None {
        Tls::None
    } else {
        let mut parameters = TlsParameters::builder(settings.host.clone());
        for certificate in pem_certificates(extra_roots.unwrap_or_default())? {
            parameters = parameters.add_root_certificate(certificate);
        }
        let parameters = parameters
            .build()
            .map_err(|e| format!("cannot set up TLS for {}: {e}", settings.host))?;
        match settings.tls {
            SmtpTls::Implicit => Tls::Wrapper(parameters),
            _ => Tls::Required(parameters),
        }
    };
    let mut transport =
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(settings.host.clone())
            .port(settings.port)
            .tls(tls)
            .timeout(Some(DELIVERY_TIMEOUT));
    if let Some((user, password)) = &settings.credentials {
        transport =
            transport.credentials(Credentials::new(user.clone(), password.expose().to_owned()));
    }
    transport
        .build()
        .send(message)
        .await
        .map(|_| ())
        .map_err(|e| {
            format!(
                "the mail server {}:{} did not take the alert: {}",
                settings.host,
                settings.port,
                chain(&e)
            )
        })
}

pub async fn webhook(
    url: &SecretString,
    extra_roots: Option<&str>,
    notice: &Notice,
) -> Result<(), String> {
    let mut builder = reqwest::Client::builder()
        .timeout(DELIVERY_TIMEOUT)
        .connect_timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("middleware-engine/", env!("CARGO_PKG_VERSION")));
    if let Some(pem) = extra_roots {
        let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
            .map_err(|e| format!("the extra trusted CA file: {}", e.without_url()))?;
        builder = builder.tls_certs_merge(certs);
    }
    let client = builder
        .build()
        .map_err(|e| format!("cannot set up the webhook's client: {}", e.without_url()))?;
    // reqwest names the URL in its errors: it is a secret, so it is taken out.
    let response = client
        .post(url.expose())
        .json(&notice.json())
        .send()
        .await
        .map_err(|e| format!("the webhook cannot be reached: {}", chain(&e.without_url())))?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the webhook answered {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_splits_into_its_certificates() {
        let ca = |name: &str| {
            let key = rcgen::KeyPair::generate().expect("key");
            let params = rcgen::CertificateParams::new(vec![name.to_owned()]).expect("params");
            params.self_signed(&key).expect("certificate").pem()
        };
        let bundle = format!("# a comment\n{}\n\n{}\n", ca("one"), ca("two"));
        assert_eq!(pem_certificates(&bundle).map(|c| c.len()), Ok(2));
        assert_eq!(pem_certificates("no certificate").map(|c| c.len()), Ok(0));
    }

    #[test]
    fn a_notice_reads_as_an_admin_expects() {
        let notice = Notice {
            kind: Kind::Alert,
            subject: "configuration:3".into(),
            title: "configuration \"Dynamics\"".into(),
            reasons: vec!["2 events failed".into()],
            since: Some(0),
            engine: "engine-a".into(),
            admin_url: "https://engine.example.com/".into(),
            at: 60_000,
        };
        assert_eq!(
            notice.mail_subject(),
            "[middleware-engine] configuration \"Dynamics\": 2 events failed"
        );
        let body = notice.mail_body();
        assert!(body.contains("  - 2 events failed\n"), "{body}");
        assert!(body.contains("Since:  1970-01-01T00:00:00.000Z"), "{body}");
        let doc = notice.json();
        assert_eq!(doc["kind"], "alert");
        assert_eq!(doc["reasons"][0], "2 events failed");
        let clear = Notice {
            kind: Kind::AllClear,
            ..notice
        };
        assert_eq!(
            clear.mail_subject(),
            "[middleware-engine] all clear: configuration \"Dynamics\""
        );
    }
}
