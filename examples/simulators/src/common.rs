//! Pieces the simulators use: serving (TLS or plain), fault injection, call counts,
//! random tokens, and what a sink received.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Response, StatusCode};
use axum::Router;
use serde::{Deserialize, Serialize};

/// A fault to inject into the next matching calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// Answer this HTTP status (e.g. 500, 503) with the service's error body.
    Status { status: u16 },
    /// Wait this long before answering normally.
    Slow { millis: u64 },
    /// Send the headers, then break the connection instead of a body.
    Reset,
    /// Answer 200 with an `<error>` body (appliance) or the service's error body.
    Error { message: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FaultRule {
    #[serde(flatten)]
    pub fault: Fault,
    /// How many calls it applies to.
    #[serde(default = "one")]
    pub count: u32,
    /// Only calls to this endpoint (see the call counts' keys); any when absent.
    #[serde(default)]
    pub endpoint: Option<String>,
}

fn one() -> u32 {
    1
}

/// Armed faults and call counts per endpoint.
#[derive(Default)]
pub struct Monitor {
    faults: Mutex<VecDeque<FaultRule>>,
    counts: Mutex<BTreeMap<String, u64>>,
}

impl Monitor {
    pub fn arm(&self, rule: FaultRule) {
        if rule.count > 0 {
            lock(&self.faults).push_back(rule);
        }
    }

    pub fn clear_faults(&self) {
        lock(&self.faults).clear();
    }

    /// Counts a call to `endpoint` and takes the first armed fault that matches it.
    pub fn call(&self, endpoint: &str) -> Option<Fault> {
        self.tally(endpoint);
        self.take_fault(endpoint)
    }

    /// Counts a call to `endpoint` without looking for a fault.
    pub fn tally(&self, endpoint: &str) {
        *lock(&self.counts).entry(endpoint.to_owned()).or_default() += 1;
    }

    /// Takes the first armed fault that matches `endpoint`, without counting a call.
    pub fn take_fault(&self, endpoint: &str) -> Option<Fault> {
        let mut faults = lock(&self.faults);
        let index = faults
            .iter()
            .position(|r| r.endpoint.as_deref().is_none_or(|e| e == endpoint))?;
        let rule = faults.get_mut(index)?;
        rule.count -= 1;
        let fault = rule.fault.clone();
        if rule.count == 0 {
            faults.remove(index);
        }
        Some(fault)
    }

    pub fn counts(&self) -> BTreeMap<String, u64> {
        lock(&self.counts).clone()
    }

    pub fn count(&self, endpoint: &str) -> u64 {
        lock(&self.counts).get(endpoint).copied().unwrap_or(0)
    }

    pub fn reset_counts(&self) {
        lock(&self.counts).clear();
    }
}

/// What a sink received, in order, and a way to wait for it without polling: the
/// count is published on a watch channel after each entry.
pub struct Recorder<T> {
    items: Mutex<Vec<T>>,
    count: tokio::sync::watch::Sender<usize>,
}

impl<T: Clone> Default for Recorder<T> {
    fn default() -> Self {
        Self {
            items: Mutex::new(Vec::new()),
            count: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl<T: Clone> Recorder<T> {
    pub fn push(&self, item: T) {
        let mut items = lock(&self.items);
        items.push(item);
        // Published under the lock: two pushes cannot publish their counts out of order.
        self.count.send_replace(items.len());
    }

    pub fn all(&self) -> Vec<T> {
        lock(&self.items).clone()
    }

    pub fn clear(&self) {
        let mut items = lock(&self.items);
        items.clear();
        self.count.send_replace(0);
    }

    /// Waits until at least `count` entries arrived or `timeout` passed; returns all
    /// the entries either way (fewer than `count` when it timed out).
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> Vec<T> {
        let mut seen = self.count.subscribe();
        let _ = tokio::time::timeout(timeout, seen.wait_for(|n| *n >= count)).await;
        self.all()
    }
}

/// Locks a mutex, recovering from poisoning (a panicked test must not wedge the simulator).
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A response whose connection breaks after the headers.
pub fn broken_response() -> Response<Body> {
    let stream = futures_util::stream::once(async {
        Err::<axum::body::Bytes, std::io::Error>(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "simulated connection reset",
        ))
    });
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = StatusCode::OK;
    response
}

pub async fn slow(millis: u64) {
    tokio::time::sleep(Duration::from_millis(millis)).await;
}

/// Random hex, for tokens and ids.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    if getrandom::fill(&mut buf).is_err() {
        // Only for a simulator: fall back to the clock.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        return format!("{nanos:0width$x}", width = bytes * 2);
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A random GUID in Dataverse's form.
pub fn random_guid() -> String {
    let h = random_hex(16);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// How a simulator is served.
pub enum Listen<'a> {
    Tls(&'a crate::tls::TestCertificate),
    /// HTTPS with a certificate kept in memory.
    TlsMemory(&'a crate::tls::Identity),
    Plain,
}

/// A running server; stops when dropped.
pub struct Served {
    pub addr: SocketAddr,
    handle: axum_server::Handle<SocketAddr>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

/// Serves `router` on `127.0.0.1:port` (0: a free port).
pub async fn serve(router: Router, port: u16, listen: Listen<'_>) -> Result<Served, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let handle = axum_server::Handle::new();
    let service = router.into_make_service_with_connect_info::<SocketAddr>();
    let tls = match listen {
        Listen::Tls(cert) => Some(cert.rustls_config().await?),
        Listen::TlsMemory(identity) => Some(identity.rustls_config().await?),
        Listen::Plain => None,
    };
    match tls {
        Some(config) => {
            let server = axum_server::bind_rustls(addr, config).handle(handle.clone());
            tokio::spawn(async move {
                if let Err(e) = server.serve(service).await {
                    tracing::error!("simulator server failed: {e}");
                }
            });
        }
        None => {
            let server = axum_server::bind(addr).handle(handle.clone());
            tokio::spawn(async move {
                if let Err(e) = server.serve(service).await {
                    tracing::error!("simulator server failed: {e}");
                }
            });
        }
    }
    let addr = handle
        .listening()
        .await
        .ok_or_else(|| format!("cannot listen on {addr}"))?;
    Ok(Served { addr, handle })
}
