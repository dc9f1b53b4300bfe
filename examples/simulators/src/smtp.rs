//! An SMTP sink: a real SMTP server (RFC 5321) on `127.0.0.1` that keeps every
//! message it accepts, for the engine's e-mail alerts. It speaks the ESMTP a
//! submission client such as `lettre` uses: EHLO and its extensions, STARTTLS
//! (RFC 3207) or TLS from the first byte (SMTPS, RFC 8314), AUTH PLAIN (RFC 4616)
//! and LOGIN (RFC 4954), SIZE (RFC 1870), 8BITMIME (RFC 6152) and SMTPUTF8
//! (RFC 6531). Tests can make the next messages be refused, and read back what
//! arrived, with the subject and text part decoded (RFC 2045, 2046, 2047).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use crate::common::{lock, random_hex, Recorder};
use crate::tls::Identity;

/// How the sink uses TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SmtpTls {
    /// Plain SMTP only.
    #[default]
    None,
    /// Plain at first; `STARTTLS` upgrades (submission, port 587).
    StartTls,
    /// TLS from the first byte (SMTPS, port 465).
    Implicit,
}

/// Where in a transaction a fault refuses the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SmtpStage {
    /// The answer to `MAIL FROM`.
    Mail,
    /// The answer to each `RCPT TO`.
    Rcpt,
    /// The answer after the message data (the usual place for a refusal).
    #[default]
    Data,
}

/// A refusal to give instead of the positive answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpFault {
    /// The whole reply line, code first (e.g. `451 4.3.0 try again later`).
    pub reply: String,
    pub stage: SmtpStage,
}

impl SmtpFault {
    /// `451 4.3.0 try again later` after the data: the client should retry.
    pub fn transient() -> Self {
        Self::reply("451 4.3.0 try again later")
    }

    /// `554 5.6.0 message refused` after the data: the client should give up.
    pub fn permanent() -> Self {
        Self::reply("554 5.6.0 message refused")
    }

    /// Any reply line (a 4xx or 5xx code, then text), after the data.
    pub fn reply(reply: impl Into<String>) -> Self {
        Self {
            reply: reply.into(),
            stage: SmtpStage::Data,
        }
    }

    /// The same reply at another stage of the transaction.
    pub fn at(mut self, stage: SmtpStage) -> Self {
        self.stage = stage;
        self
    }
}

#[derive(Debug, Clone)]
pub struct SmtpOptions {
    pub tls: SmtpTls,
    /// The one account AUTH accepts (user, password). When set, AUTH is advertised
    /// and a message needs it; when not, AUTH is neither advertised nor accepted.
    pub credentials: Option<(String, String)>,
    /// Faults armed from the start: the next `count` messages get the fault.
    pub fail_next: Vec<(u32, SmtpFault)>,
    /// The SIZE limit, in octets of message data.
    pub max_size: usize,
    /// 0: any free port.
    pub port: u16,
}

impl Default for SmtpOptions {
    fn default() -> Self {
        Self {
            tls: SmtpTls::None,
            credentials: None,
            fail_next: Vec::new(),
            max_size: 10 * 1024 * 1024,
            port: 0,
        }
    }
}

/// A message the sink accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    /// The envelope sender (`MAIL FROM`), empty for the null path `<>`.
    pub from: String,
    /// The envelope recipients (`RCPT TO`), in order.
    pub to: Vec<String>,
    /// The message as sent (headers and body, CRLF line ends), dot-stuffing undone.
    pub data: String,
    /// The user AUTH accepted on the connection, if any.
    pub authenticated_as: Option<String>,
    /// Whether the connection was encrypted (STARTTLS or implicit TLS).
    pub tls: bool,
    /// The client's EHLO/HELO name.
    pub helo: String,
}

impl Mail {
    /// The first header of that name (any case), unfolded, encoded words decoded.
    pub fn header(&self, name: &str) -> Option<String> {
        let (head, _) = mime::split(&mime::lf(&self.data));
        mime::headers(&head)
            .into_iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| mime::decode_words(&v))
    }

    pub fn subject(&self) -> Option<String> {
        self.header("Subject")
    }

    /// The text: the first `text/plain` part (else the first `text/*` part, else
    /// the body), transfer encoding undone, LF line ends, no trailing line break.
    pub fn body_text(&self) -> String {
        self.body_part("text/plain")
            .or_else(|| self.body_part("text/"))
            .unwrap_or_else(|| {
                let (_, body) = mime::split(&mime::lf(&self.data));
                mime::trim_breaks(body)
            })
    }

    /// The first part whose media type starts with `media_type` (`text/html`),
    /// decoded as [`Mail::body_text`] is.
    pub fn body_part(&self, media_type: &str) -> Option<String> {
        let data = mime::lf(&self.data);
        let (head, body) = mime::split(&data);
        mime::find_part(
            &mime::headers(&head),
            &body,
            &media_type.to_ascii_lowercase(),
            0,
        )
        .map(mime::trim_breaks)
    }
}

struct State {
    options: SmtpOptions,
    mails: Recorder<Mail>,
    faults: Mutex<VecDeque<(u32, SmtpFault)>>,
    refused: AtomicU64,
    auth_failures: AtomicU64,
}

impl State {
    /// Takes one use of the first armed fault for `stage`.
    fn take_fault(&self, stage: SmtpStage) -> Option<SmtpFault> {
        let mut faults = lock(&self.faults);
        let index = faults.iter().position(|(_, f)| f.stage == stage)?;
        let (count, fault) = faults.get_mut(index)?;
        *count -= 1;
        let fault = fault.clone();
        if *count == 0 {
            faults.remove(index);
        }
        self.refused.fetch_add(1, Ordering::Relaxed);
        Some(fault)
    }
}

/// A running SMTP sink. Stops, its connections with it, when dropped.
pub struct SmtpSink {
    state: Arc<State>,
    addr: SocketAddr,
    ca_pem: Option<String>,
    task: JoinHandle<()>,
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        // The accept loop owns the connections' JoinSet: aborting it ends them too.
        self.task.abort();
    }
}

impl SmtpSink {
    pub async fn start(options: SmtpOptions) -> Result<Self, String> {
        let (acceptor, ca_pem) = match options.tls {
            SmtpTls::None => (None, None),
            SmtpTls::StartTls | SmtpTls::Implicit => {
                let identity = Identity::generate()?;
                let acceptor = TlsAcceptor::from(identity.server_config()?);
                (Some(acceptor), Some(identity.cert_pem.clone()))
            }
        };
        let bind = SocketAddr::from(([127, 0, 0, 1], options.port));
        let listener = TcpListener::bind(bind)
            .await
            .map_err(|e| format!("cannot listen on {bind}: {e}"))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("cannot read the SMTP sink's address: {e}"))?;
        let state = Arc::new(State {
            faults: Mutex::new(
                options
                    .fail_next
                    .iter()
                    .filter(|(count, _)| *count > 0)
                    .cloned()
                    .collect(),
            ),
            options,
            mails: Recorder::default(),
            refused: AtomicU64::new(0),
            auth_failures: AtomicU64::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&state), acceptor));
        Ok(Self {
            state,
            addr,
            ca_pem,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The certificate a client must trust (PEM; self-signed, for `127.0.0.1` and
    /// `localhost`), when TLS is on.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// The messages accepted so far, in order.
    pub fn messages(&self) -> Vec<Mail> {
        self.state.mails.all()
    }

    /// Waits until `count` messages were accepted or `timeout` passed; returns the
    /// messages either way (fewer than `count` on a timeout).
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> Vec<Mail> {
        self.state.mails.wait_for(count, timeout).await
    }

    /// Forgets the messages accepted so far.
    pub fn clear(&self) {
        self.state.mails.clear();
    }

    /// The next `count` messages reaching the fault's stage get its reply.
    pub fn fail_next(&self, count: u32, fault: SmtpFault) {
        if count > 0 {
            lock(&self.state.faults).push_back((count, fault));
        }
    }

    /// Messages refused by armed faults so far.
    pub fn refused(&self) -> u64 {
        self.state.refused.load(Ordering::Relaxed)
    }

    /// AUTH attempts refused with 535 so far.
    pub fn auth_failures(&self) -> u64 {
        self.state.auth_failures.load(Ordering::Relaxed)
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>, acceptor: Option<TlsAcceptor>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    connections.spawn(connection(Arc::clone(&state), tcp, acceptor.clone()));
                }
                Err(e) => tracing::debug!("SMTP sink: accept failed: {e}"),
            },
            // Reaps finished connections so that the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn connection(state: Arc<State>, tcp: TcpStream, acceptor: Option<TlsAcceptor>) {
    // Replies are whole lines written at once; waiting to coalesce them only delays.
    let _ = tcp.set_nodelay(true);
    let result = match (state.options.tls, acceptor) {
        (SmtpTls::Implicit, Some(acceptor)) => match acceptor.accept(tcp).await {
            Ok(tls) => converse(&state, tls, true, true).await.map(|_| ()),
            Err(e) => Err(e),
        },
        (_, acceptor) => match converse(&state, tcp, false, true).await {
            Ok(End::StartTls(tcp)) => match acceptor {
                Some(acceptor) => match acceptor.accept(tcp).await {
                    // No second greeting: the client sends EHLO again (RFC 3207 4.2).
                    Ok(tls) => converse(&state, tls, true, false).await.map(|_| ()),
                    Err(e) => Err(e),
                },
                None => Ok(()),
            },
            Ok(End::Closed) => Ok(()),
            Err(e) => Err(e),
        },
    };
    if let Err(e) = result {
        tracing::debug!("SMTP sink: connection ended: {e}");
    }
}

enum End<S> {
    Closed,
    /// The client asked for STARTTLS and got 220: upgrade this stream.
    StartTls(S),
}

/// What a connection knows about its client; all of it is forgotten after STARTTLS.
#[derive(Default)]
struct Session {
    helo: Option<String>,
    esmtp: bool,
    user: Option<String>,
    envelope: Option<Envelope>,
}

#[derive(Default)]
struct Envelope {
    from: String,
    to: Vec<String>,
    smtputf8: bool,
}

/// A command line (RFC 5321 4.5.3.1.4: 512 octets), but AUTH's may be longer
/// (RFC 4954 4: 12288).
const COMMAND_LINE: usize = 512;
const AUTH_LINE: usize = 12288;
const MAX_RECIPIENTS: usize = 100;
const MAX_ERRORS: u32 = 20;
/// RFC 5321 4.5.3.2.7: the server waits at least 5 minutes for a command.
const IDLE: Duration = Duration::from_secs(300);
const DOMAIN: &str = "127.0.0.1";

enum Line {
    Eof,
    Text(Vec<u8>),
    TooLong,
}

/// Reads a line up to `limit` octets, without its CRLF (or bare LF).
async fn read_line<R: AsyncBufRead + Unpin>(reader: &mut R, limit: usize) -> std::io::Result<Line> {
    let mut buf = Vec::new();
    let n = tokio::time::timeout(
        IDLE,
        (&mut *reader)
            .take(limit as u64)
            .read_until(b'\n', &mut buf),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "client idle"))??;
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        return Ok(Line::Text(buf));
    }
    if n < limit {
        // The end of the stream in the middle of a line.
        return Ok(Line::Eof);
    }
    // Over the limit: skip the rest of the line, then say so.
    loop {
        let mut rest = Vec::new();
        let m = (&mut *reader)
            .take(64 * 1024)
            .read_until(b'\n', &mut rest)
            .await?;
        if m == 0 {
            return Ok(Line::Eof);
        }
        if rest.last() == Some(&b'\n') {
            return Ok(Line::TooLong);
        }
    }
}

/// One write per reply: two small writes meet Nagle's algorithm and the client's
/// delayed ACK, a pause of tens of milliseconds each.
async fn send<W: AsyncWrite + Unpin>(writer: &mut W, reply: &str) -> std::io::Result<()> {
    writer.write_all(format!("{reply}\r\n").as_bytes()).await?;
    writer.flush().await
}

/// One SMTP conversation on `stream` (plain or TLS), until QUIT, the end of the
/// stream, or a STARTTLS that hands the stream back to be upgraded.
async fn converse<S: AsyncRead + AsyncWrite + Unpin>(
    state: &State,
    stream: S,
    tls: bool,
    greet: bool,
) -> std::io::Result<End<S>> {
    let mut io = BufReader::new(stream);
    if greet {
        send(
            &mut io,
            &format!("220 {DOMAIN} ESMTP simulators SMTP sink ready"),
        )
        .await?;
    }
    let mut session = Session::default();
    let mut errors = 0u32;
    loop {
        let line = match read_line(&mut io, AUTH_LINE).await? {
            Line::Eof => return Ok(End::Closed),
            Line::TooLong => {
                send(&mut io, "500 5.5.6 line too long").await?;
                continue;
            }
            Line::Text(line) => String::from_utf8_lossy(&line).into_owned(),
        };
        let (verb, arg) = match line.split_once(' ') {
            Some((verb, arg)) => (verb.to_ascii_uppercase(), arg.trim()),
            None => (line.to_ascii_uppercase(), ""),
        };
        if verb != "AUTH" && line.len() + 2 > COMMAND_LINE {
            send(&mut io, "500 5.5.6 line too long").await?;
            continue;
        }
        let reply = match verb.as_str() {
            "EHLO" | "HELO" if arg.is_empty() => "501 5.5.4 a domain or address is needed".into(),
            "EHLO" => {
                // A new EHLO resets the transaction (RFC 5321 4.1.4), not the AUTH.
                session.helo = Some(arg.to_owned());
                session.esmtp = true;
                session.envelope = None;
                ehlo_reply(state, tls, arg)
            }
            "HELO" => {
                session.helo = Some(arg.to_owned());
                session.esmtp = false;
                session.envelope = None;
                format!("250 {DOMAIN}")
            }
            "STARTTLS" => {
                if !arg.is_empty() {
                    "501 5.5.4 STARTTLS takes no argument".into()
                } else if state.options.tls != SmtpTls::StartTls {
                    "502 5.5.1 STARTTLS not offered".into()
                } else if tls {
                    "503 5.5.1 TLS already active".into()
                } else {
                    send(&mut io, "220 2.0.0 ready to start TLS").await?;
                    // Anything the client sent after STARTTLS in the clear is dropped
                    // with the buffer: answering it inside TLS is the STARTTLS command
                    // injection flaw (CVE-2011-0411).
                    return Ok(End::StartTls(io.into_inner()));
                }
            }
            "AUTH" => auth(state, &mut io, &mut session, tls, arg).await?,
            "MAIL" => mail(state, &mut session, arg),
            "RCPT" => rcpt(state, &mut session, arg),
            "DATA" if !arg.is_empty() => "501 5.5.4 DATA takes no argument".into(),
            "DATA" => match &session.envelope {
                None => "503 5.5.1 MAIL first".into(),
                Some(e) if e.to.is_empty() => "503 5.5.1 RCPT first".into(),
                Some(_) => {
                    send(&mut io, "354 end data with <CR><LF>.<CR><LF>").await?;
                    match data(state, &mut io, &mut session, tls).await? {
                        Some(reply) => reply,
                        None => return Ok(End::Closed),
                    }
                }
            },
            "RSET" if !arg.is_empty() => "501 5.5.4 RSET takes no argument".into(),
            "RSET" => {
                session.envelope = None;
                "250 2.0.0 OK".into()
            }
            "NOOP" => "250 2.0.0 OK".into(),
            "QUIT" => {
                send(&mut io, "221 2.0.0 bye").await?;
                return Ok(End::Closed);
            }
            // RFC 5321 3.5.3: a server that does not verify answers 252.
            "VRFY" => "252 2.1.5 cannot verify, will accept the message".into(),
            "EXPN" | "HELP" | "TURN" | "ETRN" | "BDAT" => {
                "502 5.5.1 command not implemented".into()
            }
            _ => "500 5.5.2 command not recognized".into(),
        };
        // Only command errors count (500-504), not refusals a test armed.
        if reply.starts_with("50") {
            errors += 1;
            if errors > MAX_ERRORS {
                send(&mut io, "421 4.7.0 too many errors, closing").await?;
                return Ok(End::Closed);
            }
        }
        send(&mut io, &reply).await?;
    }
}

fn ehlo_reply(state: &State, tls: bool, name: &str) -> String {
    let mut lines = vec![
        format!("{DOMAIN} greets {name}"),
        "8BITMIME".to_owned(),
        "SMTPUTF8".to_owned(),
        format!("SIZE {}", state.options.max_size),
        "ENHANCEDSTATUSCODES".to_owned(),
    ];
    if state.options.tls == SmtpTls::StartTls && !tls {
        lines.push("STARTTLS".to_owned());
    }
    if auth_offered(state, tls) {
        lines.push("AUTH PLAIN LOGIN".to_owned());
    }
    let last = lines.len() - 1;
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| format!("250{}{l}", if i == last { ' ' } else { '-' }))
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// AUTH is offered when an account is configured, and with STARTTLS only once the
/// connection is encrypted, as submission servers do: the password never goes in
/// the clear.
fn auth_offered(state: &State, tls: bool) -> bool {
    state.options.credentials.is_some() && (tls || state.options.tls != SmtpTls::StartTls)
}

async fn auth<S: AsyncRead + AsyncWrite + Unpin>(
    state: &State,
    io: &mut BufReader<S>,
    session: &mut Session,
    tls: bool,
    arg: &str,
) -> std::io::Result<String> {
    let Some((user, password)) = &state.options.credentials else {
        return Ok("502 5.5.1 AUTH not offered".into());
    };
    if !session.esmtp {
        return Ok("503 5.5.1 EHLO first".into());
    }
    if session.user.is_some() {
        return Ok("503 5.5.1 already authenticated".into());
    }
    if session.envelope.is_some() {
        return Ok("503 5.5.1 AUTH not permitted during a mail transaction".into());
    }
    if !auth_offered(state, tls) {
        return Ok("538 5.7.11 encryption required for requested authentication mechanism".into());
    }
    let (mechanism, initial) = match arg.split_once(' ') {
        Some((m, i)) => (m.to_ascii_uppercase(), Some(i.trim())),
        None => (arg.to_ascii_uppercase(), None),
    };
    let given = match mechanism.as_str() {
        "PLAIN" => {
            let response = match initial {
                Some(r) => Some(r.to_owned()),
                None => challenge(io, "").await?,
            };
            let Some(response) = response else {
                return Ok("501 5.0.0 authentication cancelled".into());
            };
            let Some(decoded) = decode_response(&response) else {
                return Ok("501 5.5.2 cannot decode the response".into());
            };
            // RFC 4616: [authzid] NUL authcid NUL passwd.
            let mut fields = decoded.split('\0');
            match (fields.next(), fields.next(), fields.next(), fields.next()) {
                (Some(authzid), Some(authcid), Some(passwd), None)
                    if authzid.is_empty() || authzid == authcid =>
                {
                    (authcid.to_owned(), passwd.to_owned())
                }
                (Some(_), Some(_), Some(_), None) => {
                    // Acting for another user is not something this account may do.
                    state.auth_failures.fetch_add(1, Ordering::Relaxed);
                    return Ok("535 5.7.8 authentication credentials invalid".into());
                }
                _ => return Ok("501 5.5.2 malformed PLAIN response".into()),
            }
        }
        "LOGIN" => {
            // base64 of "Username:" and "Password:", the prompts clients look for.
            let name = match initial {
                Some(r) => Some(r.to_owned()),
                None => challenge(io, "VXNlcm5hbWU6").await?,
            };
            let Some(name) = name else {
                return Ok("501 5.0.0 authentication cancelled".into());
            };
            let Some(pass) = challenge(io, "UGFzc3dvcmQ6").await? else {
                return Ok("501 5.0.0 authentication cancelled".into());
            };
            match (decode_response(&name), decode_response(&pass)) {
                (Some(n), Some(p)) => (n, p),
                _ => return Ok("501 5.5.2 cannot decode the response".into()),
            }
        }
        "" => return Ok("501 5.5.4 a mechanism is needed".into()),
        _ => return Ok("504 5.5.4 unrecognized authentication mechanism".into()),
    };
    if &given.0 == user && &given.1 == password {
        session.user = Some(given.0);
        Ok("235 2.7.0 authentication successful".into())
    } else {
        state.auth_failures.fetch_add(1, Ordering::Relaxed);
        Ok("535 5.7.8 authentication credentials invalid".into())
    }
}

/// Sends a 334 challenge and reads the answer; `None` when the client cancels (`*`)
/// or goes away.
async fn challenge<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut BufReader<S>,
    text: &str,
) -> std::io::Result<Option<String>> {
    send(io, &format!("334 {text}")).await?;
    match read_line(io, AUTH_LINE).await? {
        Line::Text(line) => {
            let line = String::from_utf8_lossy(&line).trim().to_owned();
            Ok((line != "*").then_some(line))
        }
        Line::Eof | Line::TooLong => Ok(None),
    }
}

/// A SASL response: base64, `=` for an empty one (RFC 4954 4).
fn decode_response(response: &str) -> Option<String> {
    if response == "=" {
        return Some(String::new());
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(response)
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// Splits `FROM:<path> params` (or `TO:`) into the address and the parameters.
fn parse_path<'a>(arg: &'a str, keyword: &str) -> Option<(String, Vec<&'a str>)> {
    let head = arg.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    // Some clients put a space after the colon; RFC 5321 has none, servers allow it.
    let rest = arg.get(keyword.len()..)?.trim_start();
    let rest = rest.strip_prefix('<')?;
    let end = rest.find('>')?;
    let mut address = &rest[..end];
    // An obsolete source route (`@a,@b:user@c`) is ignored (RFC 5321 4.1.1.3).
    if address.starts_with('@') {
        address = address.split_once(':').map_or("", |(_, a)| a);
    }
    let params = rest[end + 1..].split_whitespace().collect();
    Some((address.to_owned(), params))
}

fn mail(state: &State, session: &mut Session, arg: &str) -> String {
    if session.helo.is_none() {
        return "503 5.5.1 EHLO first".into();
    }
    if state.options.credentials.is_some() && session.user.is_none() {
        return "530 5.7.0 authentication required".into();
    }
    if session.envelope.is_some() {
        return "503 5.5.1 sender already given".into();
    }
    let Some((from, params)) = parse_path(arg, "FROM:") else {
        return "501 5.5.4 syntax: MAIL FROM:<address>".into();
    };
    let mut smtputf8 = false;
    for param in params {
        let (key, value) = param.split_once('=').unwrap_or((param, ""));
        match key.to_ascii_uppercase().as_str() {
            "SIZE" => match value.parse::<usize>() {
                Ok(size) if size > state.options.max_size => {
                    return "552 5.3.4 message size exceeds fixed maximum message size".into();
                }
                Ok(_) => {}
                Err(_) => return "501 5.5.4 bad SIZE value".into(),
            },
            "BODY"
                if value.eq_ignore_ascii_case("7BIT") || value.eq_ignore_ascii_case("8BITMIME") => {
            }
            "BODY" => return "501 5.5.4 bad BODY value".into(),
            "SMTPUTF8" if value.is_empty() => smtputf8 = true,
            // RFC 4954 5: the AUTH parameter of MAIL is accepted and ignored.
            "AUTH" => {}
            _ => return "555 5.5.4 unsupported MAIL parameter".into(),
        }
    }
    if !from.is_ascii() && !smtputf8 {
        return "553 5.6.7 a non-ASCII address needs SMTPUTF8".into();
    }
    if let Some(fault) = state.take_fault(SmtpStage::Mail) {
        return fault.reply;
    }
    session.envelope = Some(Envelope {
        from,
        to: Vec::new(),
        smtputf8,
    });
    "250 2.1.0 OK".into()
}

fn rcpt(state: &State, session: &mut Session, arg: &str) -> String {
    let Some(envelope) = session.envelope.as_mut() else {
        return "503 5.5.1 MAIL first".into();
    };
    let Some((to, params)) = parse_path(arg, "TO:") else {
        return "501 5.5.4 syntax: RCPT TO:<address>".into();
    };
    if to.is_empty() {
        return "501 5.1.3 a recipient is needed".into();
    }
    if !params.is_empty() {
        return "555 5.5.4 unsupported RCPT parameter".into();
    }
    if !to.is_ascii() && !envelope.smtputf8 {
        return "553 5.6.7 a non-ASCII address needs SMTPUTF8".into();
    }
    if envelope.to.len() >= MAX_RECIPIENTS {
        return "452 4.5.3 too many recipients".into();
    }
    if let Some(fault) = state.take_fault(SmtpStage::Rcpt) {
        return fault.reply;
    }
    envelope.to.push(to);
    "250 2.1.5 OK".into()
}

/// Reads the message up to the lone `.` line; returns the reply, or `None` when the
/// client went away in the middle.
async fn data<S: AsyncRead + AsyncWrite + Unpin>(
    state: &State,
    io: &mut BufReader<S>,
    session: &mut Session,
    tls: bool,
) -> std::io::Result<Option<String>> {
    let max = state.options.max_size;
    let mut data = Vec::new();
    let mut too_big = false;
    loop {
        let line = match read_line(io, max + 3).await? {
            Line::Eof => return Ok(None),
            Line::TooLong => {
                too_big = true;
                continue;
            }
            Line::Text(line) => line,
        };
        if line == b"." {
            break;
        }
        // RFC 5321 4.5.2: a line the client began with a dot got one more.
        let content = line.strip_prefix(b".").unwrap_or(&line);
        if data.len() + content.len() + 2 > max {
            too_big = true;
        } else if !too_big {
            data.extend_from_slice(content);
            data.extend_from_slice(b"\r\n");
        }
    }
    // Whatever the outcome, the transaction is over (RFC 5321 4.1.1.4).
    let Some(envelope) = session.envelope.take() else {
        return Ok(Some("503 5.5.1 MAIL first".into()));
    };
    if too_big {
        return Ok(Some(
            "552 5.3.4 message size exceeds fixed maximum message size".into(),
        ));
    }
    if let Some(fault) = state.take_fault(SmtpStage::Data) {
        return Ok(Some(fault.reply));
    }
    state.mails.push(Mail {
        from: envelope.from,
        to: envelope.to,
        data: String::from_utf8_lossy(&data).into_owned(),
        authenticated_as: session.user.clone(),
        tls,
        helo: session.helo.clone().unwrap_or_default(),
    });
    Ok(Some(format!("250 2.0.0 OK queued as {}", random_hex(8))))
}

/// Just enough MIME to read back what a client sent: headers, encoded words,
/// multipart bodies, quoted-printable and base64.
mod mime {
    use base64::Engine as _;

    /// CRLF to LF, so that the rest only deals with one line end.
    pub(super) fn lf(data: &str) -> String {
        data.replace("\r\n", "\n")
    }

    pub(super) fn trim_breaks(text: String) -> String {
        text.trim_end_matches('\n').to_owned()
    }

    /// The header block and the body, split at the first empty line.
    pub(super) fn split(entity: &str) -> (String, String) {
        if let Some(body) = entity.strip_prefix('\n') {
            return (String::new(), body.to_owned());
        }
        match entity.split_once("\n\n") {
            Some((head, body)) => (head.to_owned(), body.to_owned()),
            None => (entity.to_owned(), String::new()),
        }
    }

    /// Header fields, unfolded (RFC 5322 2.2.3: a line starting with white space
    /// continues the previous one).
    pub(super) fn headers(head: &str) -> Vec<(String, String)> {
        let mut fields: Vec<(String, String)> = Vec::new();
        for line in head.lines() {
            if line.starts_with([' ', '\t']) {
                if let Some((_, value)) = fields.last_mut() {
                    value.push_str(line);
                }
            } else if let Some((name, value)) = line.split_once(':') {
                fields.push((name.trim().to_owned(), value.to_owned()));
            }
        }
        fields
            .into_iter()
            .map(|(n, v)| (n, v.trim().to_owned()))
            .collect()
    }

    fn header<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
        fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `type/subtype; key=value; key="value"` → the lowercased type and the params.
    fn content_type(value: &str) -> (String, Vec<(String, String)>) {
        let mut pieces = value.split(';');
        let media = pieces.next().unwrap_or("").trim().to_ascii_lowercase();
        let params = pieces
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| {
                (
                    k.trim().to_ascii_lowercase(),
                    v.trim().trim_matches('"').to_owned(),
                )
            })
            .collect();
        (media, params)
    }

    /// The first part (depth first) whose media type starts with `want`, decoded.
    pub(super) fn find_part(
        fields: &[(String, String)],
        body: &str,
        want: &str,
        depth: usize,
    ) -> Option<String> {
        // RFC 2045 5.2: no Content-Type means text/plain.
        let (media, params) = content_type(header(fields, "Content-Type").unwrap_or("text/plain"));
        if media.starts_with("multipart/") {
            let boundary = params.iter().find(|(k, _)| k == "boundary")?.1.clone();
            if depth > 8 {
                return None;
            }
            return parts(body, &boundary).into_iter().find_map(|part| {
                let (head, body) = split(&part);
                find_part(&headers(&head), &body, want, depth + 1)
            });
        }
        if !media.starts_with(want) {
            return None;
        }
        let encoding = header(fields, "Content-Transfer-Encoding")
            .unwrap_or("7bit")
            .to_ascii_lowercase();
        let bytes = match encoding.as_str() {
            "quoted-printable" => quoted_printable(body),
            "base64" => {
                let compact: String = body.chars().filter(|c| !c.is_whitespace()).collect();
                base64::engine::general_purpose::STANDARD
                    .decode(compact)
                    .unwrap_or_else(|_| body.as_bytes().to_vec())
            }
            _ => body.as_bytes().to_vec(),
        };
        let charset = params
            .iter()
            .find(|(k, _)| k == "charset")
            .map(|(_, v)| v.to_ascii_lowercase());
        Some(lf(&charset_decode(&bytes, charset.as_deref())))
    }

    /// The parts of a multipart body (RFC 2046 5.1.1): between `--boundary` lines,
    /// until `--boundary--`; the line break before a delimiter belongs to it.
    fn parts(body: &str, boundary: &str) -> Vec<String> {
        let open = format!("--{boundary}");
        let close = format!("--{boundary}--");
        let mut parts = Vec::new();
        let mut current: Option<Vec<&str>> = None;
        for line in body.split('\n') {
            let line_trimmed = line.trim_end();
            if line_trimmed == close {
                if let Some(lines) = current.take() {
                    parts.push(lines.join("\n"));
                }
                break;
            }
            if line_trimmed == open {
                if let Some(lines) = current.take() {
                    parts.push(lines.join("\n"));
                }
                current = Some(Vec::new());
            } else if let Some(lines) = current.as_mut() {
                lines.push(line);
            }
        }
        if let Some(lines) = current {
            parts.push(lines.join("\n"));
        }
        parts
    }

    /// RFC 2045 6.7: `=XX` octets, `=` at a line end is a soft break.
    fn quoted_printable(body: &str) -> Vec<u8> {
        let bytes = body.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'=' if bytes.get(i + 1) == Some(&b'\n') => i += 2,
                b'=' => match bytes.get(i + 1..i + 3).and_then(hex_pair) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'=');
                        i += 1;
                    }
                },
                b => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        out
    }

    fn hex_pair(pair: &[u8]) -> Option<u8> {
        let s = std::str::from_utf8(pair).ok()?;
        u8::from_str_radix(s, 16).ok()
    }

    fn charset_decode(bytes: &[u8], charset: Option<&str>) -> String {
        match charset {
            Some("iso-8859-1" | "latin1" | "windows-1252") => {
                bytes.iter().map(|&b| char::from(b)).collect()
            }
            _ => String::from_utf8_lossy(bytes).into_owned(),
        }
    }

    /// RFC 2047 encoded words (`=?utf-8?b?...?=`, `=?utf-8?q?...?=`) decoded; the
    /// white space between two adjacent ones is dropped (6.2).
    pub(super) fn decode_words(value: &str) -> String {
        let mut out = String::new();
        let mut space = String::new();
        let mut after_word = false;
        let mut rest = value;
        while let Some(c) = rest.chars().next() {
            if c.is_whitespace() {
                space.push(c);
                rest = &rest[c.len_utf8()..];
                continue;
            }
            let token_end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            let token = &rest[..token_end];
            match encoded_word(token) {
                Some(decoded) => {
                    if !after_word {
                        out.push_str(&space);
                    }
                    out.push_str(&decoded);
                    after_word = true;
                }
                None => {
                    out.push_str(&space);
                    out.push_str(token);
                    after_word = false;
                }
            }
            space.clear();
            rest = &rest[token_end..];
        }
        out.push_str(&space);
        out
    }

    fn encoded_word(token: &str) -> Option<String> {
        let inner = token.strip_prefix("=?")?.strip_suffix("?=")?;
        let mut fields = inner.splitn(3, '?');
        let charset = fields.next()?.to_ascii_lowercase();
        // RFC 2231 5: a language may follow the charset (`utf-8*en`).
        let charset = charset.split('*').next().unwrap_or("").to_owned();
        let encoding = fields.next()?;
        let text = fields.next()?;
        let bytes = if encoding.eq_ignore_ascii_case("b") {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .ok()?
        } else if encoding.eq_ignore_ascii_case("q") {
            quoted_printable(&text.replace('_', " "))
        } else {
            return None;
        };
        Some(charset_decode(&bytes, Some(&charset)))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn encoded_words_are_decoded_and_joined() {
            assert_eq!(
                decode_words("=?utf-8?b?w6l0w6k=?= =?UTF-8?Q?_=C3=A0_Paris?= now"),
                "été à Paris now"
            );
            assert_eq!(decode_words("plain  text"), "plain  text");
        }

        #[test]
        fn quoted_printable_soft_breaks_and_octets() {
            assert_eq!(quoted_printable("a=3Db=\nc =C3=A9"), "a=bc é".as_bytes());
        }

        #[test]
        fn multipart_finds_the_text_part() {
            let body = "preamble\n--b1\nContent-Type: text/html\n\n<p>x</p>\n--b1\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\naGVsbG8K\n--b1--\n";
            let fields = vec![(
                "Content-Type".to_owned(),
                "multipart/alternative; boundary=\"b1\"".to_owned(),
            )];
            assert_eq!(
                find_part(&fields, body, "text/plain", 0).as_deref(),
                Some("hello\n")
            );
            assert_eq!(
                find_part(&fields, body, "text/html", 0).as_deref(),
                Some("<p>x</p>")
            );
        }
    }
}
