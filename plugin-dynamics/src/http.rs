//! The HTTP clients' shared setup: TLS trust (extra roots from the configured PEM
//! file, or, when asked, no certificate checks), time limits, and reading answers
//! under a size cap.

use std::time::Duration;

use futures_util::{Stream, StreamExt};
use plugin_api::PluginError;

/// The most of a token answer (appliance OAuth, Entra ID) or an appliance command
/// answer read: real ones are a few KiB.
pub const SMALL_ANSWER_LIMIT: usize = 1 << 20;
/// The most of a Dataverse JSON answer read: table metadata with every attribute
/// expanded runs to hundreds of KiB; everything else the plugin asks for is small.
pub const JSON_ANSWER_LIMIT: usize = 8 << 20;
/// The most of a reporting answer read: reports carry whole chat transcripts, and a
/// poll's answer every session that ended since the cursor.
pub const REPORT_ANSWER_LIMIT: usize = 64 << 20;

/// A limit in MiB, for messages.
pub fn mib(limit: usize) -> usize {
    limit >> 20
}

/// What a configuration says about TLS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    pub allow_invalid_certificates: bool,
    /// PEM certificates read from `ca_certificate_file` when the configuration opened.
    pub extra_roots_pem: Option<Vec<u8>>,
}

/// The HTTPS setup a configuration asks for cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot read the CA certificate file {path}: {source}")]
    CaFile {
        path: String,
        source: std::io::Error,
    },
    #[error("the CA certificate file holds no usable PEM certificate: {0}")]
    CaCertificates(String),
    #[error("cannot set up HTTPS: {0}")]
    Https(String),
    #[error("cannot set up the Entra ID credential: {0}")]
    Credential(String),
}

impl From<SetupError> for PluginError {
    fn from(e: SetupError) -> Self {
        Self::from(&e)
    }
}

impl From<&SetupError> for PluginError {
    fn from(e: &SetupError) -> Self {
        PluginError::configuration(e.to_string())
    }
}

impl TlsSettings {
    /// Reads the CA file named in the settings (checked when the configuration was saved).
    pub fn load(
        allow_invalid_certificates: bool,
        ca_file: Option<&str>,
    ) -> Result<Self, SetupError> {
        let extra_roots_pem = match ca_file {
            None => None,
            Some(path) => Some(std::fs::read(path).map_err(|source| SetupError::CaFile {
                path: path.to_owned(),
                source,
            })?),
        };
        Ok(Self {
            allow_invalid_certificates,
            extra_roots_pem,
        })
    }
}

/// A client with the configuration's trust and the given time limits.
pub fn client(
    tls: &TlsSettings,
    timeout: Duration,
    close_connections: bool,
) -> Result<reqwest::Client, SetupError> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .timeout(timeout)
        .user_agent(concat!(
            "middleware-engine-dynamics365/",
            env!("CARGO_PKG_VERSION")
        ))
        .tls_danger_accept_invalid_certs(tls.allow_invalid_certificates);
    if close_connections {
        builder = builder.pool_max_idle_per_host(0);
    }
    if let Some(pem) = &tls.extra_roots_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| SetupError::CaCertificates(e.to_string()))?;
        builder = builder.tls_certs_merge(certs);
    }
    builder
        .build()
        .map_err(|e| SetupError::Https(e.to_string()))
}

/// rustls' own error inside `e`, looking through the `io::Error`s the connectors box
/// it in (one inside another).
fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(tls) = e.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    let inner = e.downcast_ref::<std::io::Error>()?.get_ref()?;
    rustls_error(inner)
}

/// Whether a TLS failure somewhere in the error's causes is about the peer's certificate.
fn is_certificate_error(e: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if matches!(
            rustls_error(s),
            Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented)
        ) {
            return true;
        }
        source = s.source();
    }
    false
}

/// Describes a transport error in an admin's terms, walking the error's causes.
pub fn describe(e: &reqwest::Error) -> String {
    let mut causes = Vec::new();
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        let text = s.to_string();
        // Causes often repeat their inner cause's text: say each once.
        if !causes.iter().any(|c: &String| c.contains(&text)) {
            causes.push(text);
        }
        source = s.source();
    }
    let all = causes.join(": ");
    if is_certificate_error(e) {
        format!("{all} (the server's certificate is not trusted: set the CA certificate file, or for testing only allow invalid certificates)")
    } else if e.is_timeout() {
        format!("no answer in time ({all})")
    } else if e.is_connect() {
        format!("cannot connect ({all})")
    } else {
        all
    }
}

/// The delay a `Retry-After` header asks for (seconds; the date form is not used by
/// these remotes).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// Reading an answer's body failed.
#[derive(Debug, thiserror::Error)]
pub enum BodyError<E> {
    /// The answer is (or says it is) longer than the limit; it was not read further.
    #[error("larger than {} MiB", mib(*limit))]
    TooLarge { limit: usize },
    #[error(transparent)]
    Stream(E),
}

/// Collects a body from its chunks, failing as soon as it would pass `limit` bytes
/// (or at once when the declared length already does), so a hostile or broken
/// remote cannot make the plugin buffer without bound.
pub async fn read_capped<S, B, E>(
    stream: S,
    declared_length: Option<u64>,
    limit: usize,
) -> Result<Vec<u8>, BodyError<E>>
where
    S: Stream<Item = Result<B, E>>,
    B: AsRef<[u8]>,
{
    if declared_length.is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge { limit });
    }
    let mut stream = std::pin::pin!(stream);
    let mut body = Vec::with_capacity(
        declared_length.map_or(0, |n| usize::try_from(n).unwrap_or(limit).min(limit)),
    );
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(BodyError::Stream)?;
        let chunk = chunk.as_ref();
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge { limit });
        }
        body.extend_from_slice(chunk);
    }
    Ok(body)
}

/// Reads a reqwest answer's body under `limit`.
pub async fn read_body(
    response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, BodyError<reqwest::Error>> {
    let declared = response.content_length();
    let chunks = futures_util::stream::unfold(Some(response), |response| async move {
        let mut response = response?;
        match response.chunk().await {
            Ok(Some(chunk)) => Some((Ok(chunk), Some(response))),
            Ok(None) => None,
            // One error ends the stream.
            Err(e) => Some((Err(e), None)),
        }
    });
    read_capped(chunks, declared, limit).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn chunks(sizes: &[usize]) -> impl Stream<Item = Result<Vec<u8>, std::io::Error>> {
        let items: Vec<Result<Vec<u8>, std::io::Error>> =
            sizes.iter().map(|n| Ok(vec![b'x'; *n])).collect();
        futures_util::stream::iter(items)
    }

    #[tokio::test]
    async fn a_body_within_the_limit_is_read_whole() {
        let body = read_capped(chunks(&[3, 4, 3]), None, 10)
            .await
            .expect("fits");
        assert_eq!(body.len(), 10);
    }

    #[tokio::test]
    async fn a_body_over_the_limit_stops_at_the_chunk_that_passes_it() {
        let polled = std::sync::atomic::AtomicUsize::new(0);
        let stream = chunks(&[6, 6, 6, 6]).inspect(|_| {
            polled.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
        let err = read_capped(stream, None, 10).await.expect_err("too large");
        assert!(matches!(err, BodyError::TooLarge { limit: 10 }));
        assert_eq!(
            polled.load(std::sync::atomic::Ordering::Relaxed),
            2,
            "nothing read past the limit"
        );
    }

    #[tokio::test]
    async fn a_declared_length_over_the_limit_fails_before_reading() {
        let err = read_capped(chunks(&[1]), Some(11), 10)
            .await
            .expect_err("too large");
        assert!(matches!(err, BodyError::TooLarge { limit: 10 }));
        assert_eq!(err.to_string(), "larger than 0 MiB");
        assert_eq!(
            BodyError::<std::io::Error>::TooLarge { limit: 16 << 20 }.to_string(),
            "larger than 16 MiB"
        );
    }

    #[tokio::test]
    async fn a_stream_error_is_passed_on() {
        let items: Vec<Result<Vec<u8>, std::io::Error>> =
            vec![Ok(b"ab".to_vec()), Err(std::io::Error::other("reset"))];
        let err = read_capped(futures_util::stream::iter(items), None, 10)
            .await
            .expect_err("broke off");
        assert!(matches!(err, BodyError::Stream(e) if e.to_string() == "reset"));
    }

    /// Serves one HTTP/1.1 answer with `body_len` bytes, chunked (no length up front).
    async fn serve_once(body_len: usize) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let mut request = [0u8; 1024];
            let _ = socket.read(&mut request).await;
            let _ = socket
                .write_all(
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
                )
                .await;
            let chunk = vec![b'x'; 64 * 1024];
            let mut left = body_len;
            while left > 0 {
                let n = left.min(chunk.len());
                let head = format!("{n:x}\r\n");
                if socket.write_all(head.as_bytes()).await.is_err()
                    || socket.write_all(&chunk[..n]).await.is_err()
                    || socket.write_all(b"\r\n").await.is_err()
                {
                    return;
                }
                left -= n;
            }
            let _ = socket.write_all(b"0\r\n\r\n").await;
        });
        addr
    }

    #[tokio::test]
    async fn an_untrusted_certificate_is_named_as_such() {
        let dir = tempfile::tempdir().expect("dir");
        let appliance = simulators::appliance::Appliance::start(Default::default(), dir.path())
            .await
            .expect("appliance");
        let e = reqwest::Client::new()
            .get(format!("https://{}/", appliance.host))
            .send()
            .await
            .expect_err("its certificate is not trusted");
        assert!(is_certificate_error(&e), "{e:?}");
        assert!(describe(&e).contains("the server's certificate is not trusted"));
        let refused = reqwest::Client::new()
            .get("https://127.0.0.1:9/")
            .send()
            .await
            .expect_err("nothing listens");
        assert!(!is_certificate_error(&refused));
        assert!(
            describe(&refused).starts_with("cannot connect"),
            "{}",
            describe(&refused)
        );
    }

    #[tokio::test]
    async fn a_real_answer_is_capped_while_it_streams() {
        let client = reqwest::Client::new();
        let small = serve_once(100 * 1024).await;
        let response = client
            .get(format!("http://{small}/"))
            .send()
            .await
            .expect("answer");
        let body = read_body(response, 1 << 20).await.expect("fits");
        assert_eq!(body.len(), 100 * 1024);

        let big = serve_once(3 << 20).await;
        let response = client
            .get(format!("http://{big}/"))
            .send()
            .await
            .expect("answer");
        assert!(matches!(
            read_body(response, 1 << 20).await,
            Err(BodyError::TooLarge { limit }) if limit == 1 << 20
        ));
    }
}
