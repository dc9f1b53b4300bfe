//! A webhook sink: an HTTP(S) server on `127.0.0.1` that records every request to
//! any path (method, path, headers, body as text and as JSON) and answers 200, for
//! the engine's webhook alerts. Tests can script the next answers: a status such as
//! 500, 429 or 503 with `Retry-After` (RFC 9110 10.2.3), extra headers, a body, a
//! delay before answering.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Uri};
use axum::Router;

use crate::common::{lock, serve, Listen, Recorder, Served};
use crate::tls::Identity;

/// An answer to give to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// How long to wait before answering (the request is recorded on arrival).
    pub delay: Duration,
}

impl Default for WebhookReply {
    fn default() -> Self {
        Self::status(200)
    }
}

impl WebhookReply {
    /// That status, no body.
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: String::new(),
            delay: Duration::ZERO,
        }
    }

    /// That status (429 or 503) with `Retry-After: <seconds>`.
    pub fn retry_after(status: u16, seconds: u64) -> Self {
        Self::status(status).with_header("Retry-After", seconds.to_string())
    }

    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn with_body(mut self, body: impl Into<String>) -> Self {
        self.body = body.into();
        self
    }

    /// Answers after `delay` (e.g. longer than the client's timeout).
    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

#[derive(Debug, Clone, Default)]
pub struct WebhookOptions {
    /// Serve HTTPS with a certificate made at start ([`WebhookSink::ca_pem`]).
    pub tls: bool,
    /// 0: any free port.
    pub port: u16,
    /// Scripted from the start: the next `count` POSTs get the reply.
    pub replies: Vec<(u32, WebhookReply)>,
    /// The answer when nothing is scripted (default: 200, no body).
    pub default_reply: WebhookReply,
}

/// A request the sink received.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookRequest {
    pub method: String,
    pub path: String,
    /// The query string, without the `?`.
    pub query: Option<String>,
    /// In arrival order, names lowercased (HTTP/1 names are case-insensitive).
    pub headers: Vec<(String, String)>,
    /// The body as text (lossy for non-UTF-8).
    pub body: String,
    /// The body parsed as JSON, when it is JSON.
    pub json: Option<serde_json::Value>,
    /// The status the sink answered (or is about to, after a delay).
    pub status: u16,
}

impl WebhookRequest {
    /// The first header of that name (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Inner {
    requests: Recorder<WebhookRequest>,
    script: Mutex<VecDeque<(u32, WebhookReply)>>,
    default_reply: WebhookReply,
}

impl Inner {
    fn next_reply(&self) -> WebhookReply {
        let mut script = lock(&self.script);
        let Some((count, reply)) = script.front_mut() else {
            return self.default_reply.clone();
        };
        *count -= 1;
        let reply = reply.clone();
        if *count == 0 {
            script.pop_front();
        }
        reply
    }
}

/// A running webhook sink. Stops when dropped.
pub struct WebhookSink {
    inner: Arc<Inner>,
    server: Served,
    base_url: String,
    ca_pem: Option<String>,
}

impl WebhookSink {
    pub async fn start(options: WebhookOptions) -> Result<Self, String> {
        let inner = Arc::new(Inner {
            requests: Recorder::default(),
            script: Mutex::new(
                options
                    .replies
                    .iter()
                    .filter(|(count, _)| *count > 0)
                    .cloned()
                    .collect(),
            ),
            default_reply: options.default_reply.clone(),
        });
        let router = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&inner));
        let (server, ca_pem) = if options.tls {
            let identity = Identity::generate()?;
            let server = serve(router, options.port, Listen::TlsMemory(&identity)).await?;
            (server, Some(identity.cert_pem.clone()))
        } else {
            (serve(router, options.port, Listen::Plain).await?, None)
        };
        let scheme = if options.tls { "https" } else { "http" };
        Ok(Self {
            base_url: format!("{scheme}://127.0.0.1:{}", server.addr.port()),
            inner,
            server,
            ca_pem,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    pub fn port(&self) -> u16 {
        self.server.addr.port()
    }

    /// `http(s)://127.0.0.1:<port>`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The URL of `path` on the sink (`/hooks/alerts` → `http://127.0.0.1:<port>/hooks/alerts`).
    pub fn url(&self, path: &str) -> String {
        if path.starts_with('/') {
            format!("{}{path}", self.base_url)
        } else {
            format!("{}/{path}", self.base_url)
        }
    }

    /// The certificate a client must trust (PEM), when serving HTTPS.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<WebhookRequest> {
        self.inner.requests.all()
    }

    /// Waits until `count` requests arrived or `timeout` passed; returns the requests
    /// either way (fewer than `count` on a timeout).
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> Vec<WebhookRequest> {
        self.inner.requests.wait_for(count, timeout).await
    }

    pub fn clear(&self) {
        self.inner.requests.clear();
    }

    /// The next `count` POSTs get `reply` (after the replies already scripted).
    pub fn reply_next(&self, count: u32, reply: WebhookReply) {
        if count > 0 {
            lock(&self.inner.script).push_back((count, reply));
        }
    }
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    // Other methods are recorded too (a test sees a wrong one) but get 405, and do
    // not use up a scripted reply.
    let reply = if method == Method::POST {
        inner.next_reply()
    } else {
        WebhookReply::status(405).with_header("Allow", "POST")
    };
    let text = String::from_utf8_lossy(&body).into_owned();
    inner.requests.push(WebhookRequest {
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: uri.query().map(str::to_owned),
        headers: headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        json: serde_json::from_slice(&body).ok(),
        body: text,
        status: reply.status,
    });
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut response = Response::new(Body::from(reply.body));
    *response.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in &reply.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    response
}
