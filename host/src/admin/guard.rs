//! Protection of the admin address: the Host check (DNS rebinding), the Origin check
//! (cross-site requests), the admin token, and JSON-only bodies.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::settings::SecretString;

/// What the guard checks requests against.
pub struct Guard {
    hostnames: Vec<String>,
    token: Option<SecretString>,
}

impl Guard {
    pub fn new(
        listen: SocketAddr,
        extra_hostnames: &[String],
        token: Option<SecretString>,
    ) -> Self {
        let mut hostnames: Vec<String> =
            ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec();
        if !listen.ip().is_unspecified() {
            hostnames.push(listen.ip().to_string());
        }
        hostnames.extend(extra_hostnames.iter().cloned());
        Self { hostnames, token }
    }

    fn host_allowed(&self, host_port: &str) -> bool {
        let host = strip_port(host_port).to_ascii_lowercase();
        self.hostnames.contains(&host)
    }

    fn check(&self, method: &Method, path: &str, headers: &HeaderMap) -> Result<(), ApiError> {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if !self.host_allowed(host) {
            return Err(ApiError::Forbidden(format!(
                "the Host {host:?} is not a name of this admin address; add it to admin_hostnames"
            )));
        }
        let changes_state = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
        if changes_state {
            if let Some(origin) = headers.get(header::ORIGIN) {
                let origin = origin.to_str().unwrap_or("");
                let origin_host = origin
                    .strip_prefix("http://")
                    .or_else(|| origin.strip_prefix("https://"))
                    .unwrap_or("");
                if origin_host.is_empty() || !self.host_allowed(origin_host) {
                    return Err(ApiError::Forbidden(format!(
                        "cross-site request refused (Origin {origin:?})"
                    )));
                }
            }
            let has_body = headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v != "0")
                || headers.contains_key(header::TRANSFER_ENCODING);
            let is_json = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| {
                    v.split(';')
                        .next()
                        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
                });
            if has_body && !is_json {
                return Err(ApiError::UnsupportedMediaType);
            }
        }
        if let Some(token) = &self.token {
            if path.starts_with("/api/") || path == "/metrics" {
                let given = headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .unwrap_or("");
                if !constant_time_eq(given.as_bytes(), token.expose().as_bytes()) {
                    return Err(ApiError::Unauthorized);
                }
            }
        }
        Ok(())
    }
}

pub async fn guard(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    match guard.check(request.method(), request.uri().path(), request.headers()) {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    }
}

/// Compares secrets without leaking where they differ through timing.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(k.clone(), HeaderValue::from_str(v).expect("header"));
        }
        h
    }

    fn guard(token: Option<&str>) -> Guard {
        Guard::new(
            "127.0.0.1:53231".parse().expect("addr"),
            &["engine.corp.example".to_owned()],
            token.map(|t| SecretString::new(t.to_owned())),
        )
    }

    #[test]
    fn host_names_are_checked_with_or_without_port() {
        let g = guard(None);
        for ok in [
            "localhost:53231",
            "127.0.0.1",
            "[::1]:53231",
            "ENGINE.corp.example",
        ] {
            assert!(
                g.check(&Method::GET, "/", &headers(&[(header::HOST, ok)]))
                    .is_ok(),
                "{ok}"
            );
        }
        let err = g
            .check(
                &Method::GET,
                "/api/plugins",
                &headers(&[(header::HOST, "evil.example:53231")]),
            )
            .expect_err("rebinding");
        assert!(matches!(err, ApiError::Forbidden(_)));
    }

    #[test]
    fn cross_site_writes_and_non_json_bodies_are_refused() {
        let g = guard(None);
        let cross = headers(&[
            (header::HOST, "localhost:53231"),
            (header::ORIGIN, "https://evil.example"),
        ]);
        assert!(matches!(
            g.check(&Method::POST, "/api/configurations", &cross),
            Err(ApiError::Forbidden(_))
        ));
        assert!(
            g.check(&Method::GET, "/api/configurations", &cross).is_ok(),
            "reads carry no state change"
        );
        let form = headers(&[
            (header::HOST, "localhost"),
            (header::CONTENT_TYPE, "application/x-www-form-urlencoded"),
            (header::CONTENT_LENGTH, "3"),
        ]);
        assert!(matches!(
            g.check(&Method::POST, "/api/configurations", &form),
            Err(ApiError::UnsupportedMediaType)
        ));
        let same = headers(&[
            (header::HOST, "localhost:53231"),
            (header::ORIGIN, "http://localhost:53231"),
            (header::CONTENT_TYPE, "application/json; charset=utf-8"),
            (header::CONTENT_LENGTH, "2"),
        ]);
        assert!(g.check(&Method::POST, "/api/configurations", &same).is_ok());
    }

    #[test]
    fn the_token_guards_the_api_but_not_the_page_shell() {
        let g = guard(Some("0123456789abcdef"));
        let none = headers(&[(header::HOST, "localhost")]);
        assert!(matches!(
            g.check(&Method::GET, "/api/plugins", &none),
            Err(ApiError::Unauthorized)
        ));
        assert!(g.check(&Method::GET, "/", &none).is_ok());
        let wrong = headers(&[
            (header::HOST, "localhost"),
            (header::AUTHORIZATION, "Bearer 0123456789abcdeX"),
        ]);
        assert!(matches!(
            g.check(&Method::GET, "/api/plugins", &wrong),
            Err(ApiError::Unauthorized)
        ));
        let right = headers(&[
            (header::HOST, "localhost"),
            (header::AUTHORIZATION, "Bearer 0123456789abcdef"),
        ]);
        assert!(g.check(&Method::GET, "/api/plugins", &right).is_ok());
    }
}
