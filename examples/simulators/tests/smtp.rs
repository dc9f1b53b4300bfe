//! The SMTP sink against the client the engine uses (lettre): plain, STARTTLS and
//! implicit TLS, AUTH PLAIN and LOGIN, refusals; and against raw SMTP for the
//! protocol's error paths.

use std::time::Duration;

use lettre::message::header::{ContentTransferEncoding, ContentType};
use lettre::message::{Body, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use simulators::smtp::{SmtpFault, SmtpOptions, SmtpSink, SmtpStage, SmtpTls};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);
const USER: &str = "alerts@example.com";
const PASSWORD: &str = "s3cret-pass";

fn with_account(tls: SmtpTls) -> SmtpOptions {
    SmtpOptions {
        tls,
        credentials: Some((USER.into(), PASSWORD.into())),
        ..Default::default()
    }
}

fn tls_parameters(sink: &SmtpSink) -> TlsParameters {
    let pem = sink.ca_pem().expect("a CA when TLS is on");
    TlsParameters::builder("127.0.0.1".to_owned())
        .add_root_certificate(Certificate::from_pem(pem.as_bytes()).expect("pem"))
        .build()
        .expect("TLS parameters")
}

fn mailer(
    sink: &SmtpSink,
    tls: Tls,
    credentials: Option<(&str, &str)>,
    mechanisms: Option<Vec<Mechanism>>,
) -> AsyncSmtpTransport<Tokio1Executor> {
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(sink.port())
        .tls(tls)
        .timeout(Some(WAIT));
    if let Some((user, password)) = credentials {
        builder = builder.credentials(Credentials::new(user.into(), password.into()));
    }
    if let Some(mechanisms) = mechanisms {
        builder = builder.authentication(mechanisms);
    }
    builder.build()
}

fn alert(subject: &str, body: &str) -> Message {
    Message::builder()
        .from("Engine <engine@example.com>".parse().expect("from"))
        .to("Ops <ops@example.com>".parse().expect("to"))
        .cc("oncall@example.com".parse().expect("cc"))
        .subject(subject)
        .header(ContentType::TEXT_PLAIN)
        .body(body.to_owned())
        .expect("message")
}

#[tokio::test]
async fn plain_smtp_without_auth_delivers_the_message() {
    let sink = SmtpSink::start(SmtpOptions::default())
        .await
        .expect("starts");
    assert!(sink.ca_pem().is_none());
    let mailer = mailer(&sink, Tls::None, None, None);
    mailer
        .send(alert(
            "Source down",
            "The appliance stopped answering.\n.A line with a dot",
        ))
        .await
        .expect("sent");
    let mails = sink.wait_for(1, WAIT).await;
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    assert_eq!(mail.from, "engine@example.com");
    assert_eq!(mail.to, vec!["ops@example.com", "oncall@example.com"]);
    assert_eq!(mail.subject().as_deref(), Some("Source down"));
    // lettre dot-stuffs the second line; the sink undoes it.
    assert_eq!(
        mail.body_text(),
        "The appliance stopped answering.\n.A line with a dot"
    );
    assert!(mail.data.contains("\r\n.A line with a dot\r\n"));
    assert_eq!((mail.tls, mail.authenticated_as.as_deref()), (false, None));
    assert!(!mail.helo.is_empty());
}

#[tokio::test]
async fn starttls_with_auth_plain_and_encoded_text() {
    let sink = SmtpSink::start(with_account(SmtpTls::StartTls))
        .await
        .expect("starts");
    let mailer = mailer(
        &sink,
        Tls::Required(tls_parameters(&sink)),
        Some((USER, PASSWORD)),
        Some(vec![Mechanism::Plain]),
    );
    // Non-ASCII subject and body: lettre encodes them (encoded words; QP or base64).
    mailer
        .send(alert(
            "Échec de la synchronisation — 3 sessions",
            "Le moteur a échoué à 10:00.\nRéessai prévu.",
        ))
        .await
        .expect("sent");
    let mail = sink.wait_for(1, WAIT).await.remove(0);
    assert!(mail.tls);
    assert_eq!(mail.authenticated_as.as_deref(), Some(USER));
    assert_eq!(
        mail.subject().as_deref(),
        Some("Échec de la synchronisation — 3 sessions")
    );
    assert_eq!(
        mail.body_text(),
        "Le moteur a échoué à 10:00.\nRéessai prévu."
    );
}

#[tokio::test]
async fn implicit_tls_with_auth_login_and_a_multipart_message() {
    let sink = SmtpSink::start(with_account(SmtpTls::Implicit))
        .await
        .expect("starts");
    let mailer = mailer(
        &sink,
        Tls::Wrapper(tls_parameters(&sink)),
        Some((USER, PASSWORD)),
        Some(vec![Mechanism::Login]),
    );
    let message = Message::builder()
        .from("engine@example.com".parse().expect("from"))
        .to("ops@example.com".parse().expect("to"))
        .subject("Two parts")
        .multipart(
            MultiPart::alternative()
                .singlepart(
                    SinglePart::builder().header(ContentType::TEXT_PLAIN).body(
                        Body::new_with_encoding(
                            "plain text, in base64".to_owned(),
                            ContentTransferEncoding::Base64,
                        )
                        .expect("base64 body"),
                    ),
                )
                .singlepart(SinglePart::html("<p>html text</p>".to_owned())),
        )
        .expect("message");
    mailer.send(message).await.expect("sent");
    let mail = sink.wait_for(1, WAIT).await.remove(0);
    assert!(mail.tls);
    assert_eq!(mail.authenticated_as.as_deref(), Some(USER));
    assert_eq!(mail.body_text(), "plain text, in base64");
    assert_eq!(
        mail.body_part("text/html").as_deref(),
        Some("<p>html text</p>")
    );
}

#[tokio::test]
async fn wrong_password_is_refused_with_535() {
    let sink = SmtpSink::start(with_account(SmtpTls::StartTls))
        .await
        .expect("starts");
    for mechanism in [Mechanism::Plain, Mechanism::Login] {
        let mailer = mailer(
            &sink,
            Tls::Required(tls_parameters(&sink)),
            Some((USER, "wrong")),
            Some(vec![mechanism]),
        );
        let error = mailer.send(alert("x", "y")).await.expect_err("refused");
        assert!(error.is_permanent(), "{error}");
        assert_eq!(
            error.status().map(|c| c.to_string()).as_deref(),
            Some("535")
        );
    }
    assert_eq!(sink.auth_failures(), 2);
    assert!(sink.messages().is_empty());
}

#[tokio::test]
async fn an_untrusted_certificate_fails_the_handshake() {
    let sink = SmtpSink::start(SmtpOptions {
        tls: SmtpTls::Implicit,
        ..Default::default()
    })
    .await
    .expect("starts");
    let other = SmtpSink::start(SmtpOptions {
        tls: SmtpTls::Implicit,
        ..Default::default()
    })
    .await
    .expect("starts");
    // Trusting another sink's certificate is not trusting this one.
    let mailer = mailer(&sink, Tls::Wrapper(tls_parameters(&other)), None, None);
    let error = mailer.send(alert("x", "y")).await.expect_err("untrusted");
    assert!(
        error.is_tls() || error.to_string().contains("certificate"),
        "{error}"
    );
    assert!(sink.messages().is_empty());
}

#[tokio::test]
async fn armed_refusals_fail_the_next_messages_then_it_accepts() {
    let sink = SmtpSink::start(SmtpOptions {
        fail_next: vec![(2, SmtpFault::transient())],
        ..Default::default()
    })
    .await
    .expect("starts");
    let mailer = mailer(&sink, Tls::None, None, None);
    for _ in 0..2 {
        let error = mailer.send(alert("x", "y")).await.expect_err("refused");
        assert!(error.is_transient(), "{error}");
        assert_eq!(
            error.status().map(|c| c.to_string()).as_deref(),
            Some("451")
        );
    }
    mailer.send(alert("third", "y")).await.expect("accepted");
    sink.fail_next(1, SmtpFault::permanent());
    let error = mailer.send(alert("x", "y")).await.expect_err("refused");
    assert!(error.is_permanent(), "{error}");
    assert_eq!(
        error.status().map(|c| c.to_string()).as_deref(),
        Some("554")
    );
    sink.fail_next(
        1,
        SmtpFault::reply("550 5.1.1 no such user").at(SmtpStage::Rcpt),
    );
    let error = mailer.send(alert("x", "y")).await.expect_err("refused");
    assert_eq!(
        error.status().map(|c| c.to_string()).as_deref(),
        Some("550")
    );
    mailer.send(alert("last", "y")).await.expect("accepted");
    let subjects: Vec<_> = sink
        .wait_for(2, WAIT)
        .await
        .iter()
        .map(|m| m.subject().unwrap_or_default())
        .collect();
    assert_eq!(subjects, ["third", "last"]);
    assert_eq!(sink.refused(), 4);
}

#[tokio::test]
async fn wait_for_returns_what_arrived_when_it_times_out() {
    let sink = SmtpSink::start(SmtpOptions::default())
        .await
        .expect("starts");
    assert!(sink.wait_for(1, Duration::from_millis(1)).await.is_empty());
    mailer(&sink, Tls::None, None, None)
        .send(alert("one", "y"))
        .await
        .expect("sent");
    assert_eq!(sink.wait_for(1, WAIT).await.len(), 1);
    sink.clear();
    assert!(sink.messages().is_empty());
}

/// A raw SMTP client: sends a line, reads one reply (all its lines).
struct Raw {
    io: BufReader<TcpStream>,
}

impl Raw {
    async fn connect(sink: &SmtpSink) -> (Self, String) {
        let tcp = TcpStream::connect(sink.addr()).await.expect("connects");
        let mut raw = Self {
            io: BufReader::new(tcp),
        };
        let greeting = raw.reply().await;
        (raw, greeting)
    }

    async fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            self.io.read_line(&mut line).await.expect("reads");
            assert!(!line.is_empty(), "connection closed after {all:?}");
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    }

    async fn send(&mut self, line: &str) -> String {
        self.io
            .get_mut()
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .expect("writes");
        self.reply().await
    }
}

fn code(reply: &str) -> &str {
    reply.get(..3).unwrap_or(reply)
}

#[tokio::test]
async fn the_protocol_refuses_bad_sequences_and_unknown_commands() {
    let sink = SmtpSink::start(SmtpOptions::default())
        .await
        .expect("starts");
    let (mut c, greeting) = Raw::connect(&sink).await;
    assert_eq!(code(&greeting), "220");
    assert_eq!(code(&c.send("MAIL FROM:<a@example.com>").await), "503");
    assert_eq!(code(&c.send("FROB").await), "500");
    assert_eq!(code(&c.send("EHLO").await), "501");
    let ehlo = c.send("EHLO client.example.com").await;
    assert!(ehlo.starts_with("250-"), "{ehlo}");
    for extension in ["8BITMIME", "SMTPUTF8", "SIZE "] {
        assert!(ehlo.contains(extension), "{ehlo}");
    }
    // Neither TLS nor an account is configured: neither is offered.
    assert!(
        !ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"),
        "{ehlo}"
    );
    assert_eq!(code(&c.send("STARTTLS").await), "502");
    assert_eq!(code(&c.send("AUTH PLAIN AGFiAGM=").await), "502");
    assert_eq!(code(&c.send("RCPT TO:<b@example.com>").await), "503");
    assert_eq!(code(&c.send("DATA").await), "503");
    assert_eq!(code(&c.send("MAIL FROM:a@example.com").await), "501");
    assert_eq!(
        code(&c.send("MAIL FROM:<a@example.com> SIZE=999999999").await),
        "552"
    );
    assert_eq!(
        code(&c.send("MAIL FROM:<a@example.com> FROB=1").await),
        "555"
    );
    assert_eq!(
        code(&c.send("MAIL FROM:<a@example.com> BODY=8BITMIME").await),
        "250"
    );
    assert_eq!(code(&c.send("MAIL FROM:<c@example.com>").await), "503");
    assert_eq!(code(&c.send("DATA").await), "503");
    assert_eq!(code(&c.send("RCPT TO:<>").await), "501");
    assert_eq!(code(&c.send("RCPT TO:<bé@example.com>").await), "553");
    assert_eq!(code(&c.send("RSET").await), "250");
    assert_eq!(code(&c.send("RCPT TO:<b@example.com>").await), "503");
    assert_eq!(code(&c.send("NOOP").await), "250");
    assert_eq!(
        code(&c.send(&format!("NOOP {}", "x".repeat(600))).await),
        "500"
    );
    assert_eq!(code(&c.send("MAIL FROM:<>").await), "250");
    assert_eq!(code(&c.send("RCPT TO:<b@example.com>").await), "250");
    assert_eq!(code(&c.send("DATA").await), "354");
    let reply = c
        .send("Subject: raw\r\n\r\n..leading dot\r\n..\r\n\r\nlast\r\n.")
        .await;
    assert_eq!(code(&reply), "250", "{reply}");
    assert_eq!(code(&c.send("QUIT").await), "221");
    let mail = sink.wait_for(1, WAIT).await.remove(0);
    assert_eq!(mail.from, "");
    assert_eq!(mail.helo, "client.example.com");
    assert_eq!(
        mail.data,
        "Subject: raw\r\n\r\n.leading dot\r\n.\r\n\r\nlast\r\n"
    );
    assert_eq!(mail.body_text(), ".leading dot\n.\n\nlast");
}

#[tokio::test]
async fn auth_is_offered_only_inside_tls_and_needed_for_mail() {
    let sink = SmtpSink::start(with_account(SmtpTls::StartTls))
        .await
        .expect("starts");
    let (mut c, _) = Raw::connect(&sink).await;
    let ehlo = c.send("EHLO client").await;
    assert!(
        ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"),
        "{ehlo}"
    );
    // No password in the clear.
    assert_eq!(
        code(&c.send("AUTH PLAIN AGFsZXJ0cwBzM2NyZXQ=").await),
        "538"
    );
    assert_eq!(code(&c.send("MAIL FROM:<a@example.com>").await), "530");
    assert_eq!(code(&c.send("STARTTLS extra").await), "501");

    let sink = SmtpSink::start(with_account(SmtpTls::None))
        .await
        .expect("starts");
    let (mut c, _) = Raw::connect(&sink).await;
    assert!(c.send("EHLO client").await.contains("AUTH PLAIN LOGIN"));
    assert_eq!(code(&c.send("AUTH CRAM-MD5").await), "504");
    assert_eq!(code(&c.send("AUTH LOGIN").await), "334");
    assert_eq!(code(&c.send("*").await), "501");
    // PLAIN without an initial response: an empty 334 challenge first.
    assert_eq!(code(&c.send("AUTH PLAIN").await), "334");
    let plain = format!("\0{USER}\0{PASSWORD}");
    let encoded = base64_encode(plain.as_bytes());
    assert_eq!(code(&c.send(&encoded).await), "235");
    assert_eq!(code(&c.send(&format!("AUTH PLAIN {encoded}")).await), "503");
    assert_eq!(code(&c.send("MAIL FROM:<a@example.com>").await), "250");
    assert_eq!(code(&c.send("QUIT").await), "221");
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
