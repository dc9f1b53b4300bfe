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
    /// The origins of the admin page itself (`http://localhost:53231`, ...): scheme,
    /// host and port, as a browser sends them in `Origin`.
    origins: Vec<String>,
    token: Option<SecretString>,
}

impl Guard {
    /// `bound` is the address the admin page listens on (its real port, also when
    /// port 0 was asked); `scheme` how it is served.
    pub fn new(
        bound: SocketAddr,
        scheme: &str,
        extra_hostnames: &[String],
        token: Option<SecretString>,
    ) -> Self {
        let mut hostnames: Vec<String> =
            ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec();
        if !bound.ip().is_unspecified() {
            hostnames.push(bound.ip().to_string());
        }
        hostnames.extend(extra_hostnames.iter().cloned());
        let default_port = match scheme {
            "https" => 443,
            _ => 80,
        };
        let mut origins = Vec::new();
        for host in &hostnames {
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host.clone()
            };
            origins.push(format!("{scheme}://{host}:{}", bound.port()));
            if bound.port() == default_port {
                origins.push(format!("{scheme}://{host}"));
            }
        }
        Self {
            hostnames,
            origins,
            token,
        }
    }

    fn host_allowed(&self, host_port: &str) -> bool {
        let host = strip_port(host_port).to_ascii_lowercase();
        self.hostnames.contains(&host)
    }

    fn token_given(&self, headers: &HeaderMap) -> bool {
        let Some(token) = &self.token else {
            return false;
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        constant_time_eq(given.as_bytes(), token.expose().as_bytes())
    }

    /// A request that changes state must come from the admin page itself (its
    /// `Origin` is exactly this address: scheme, host and port), or carry the admin
    /// token, or come from a client that is no browser (no `Origin` and no
    /// `Sec-Fetch-*` headers, as curl and scripts send). A body-less POST needs no
    /// CORS preflight, so without this any page on another port of the machine could
    /// disable or delete a configuration.
    fn check_origin(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        match headers.get(header::ORIGIN) {
            Some(origin) => {
                let origin = origin.to_str().unwrap_or("").to_ascii_lowercase();
                if self.origins.contains(&origin) {
                    return Ok(());
                }
                Err(ApiError::Forbidden(format!(
                    "cross-site request refused (Origin {origin:?}): only the admin page at {} may change state",
                    self.origins.first().map_or("", String::as_str)
                )))
            }
            None if self.token_given(headers) => Ok(()),
            None if headers.contains_key("sec-fetch-site") => Err(ApiError::Forbidden(
                "a browser request that changes state must carry Origin; use the admin page, or send the admin token".into(),
            )),
            None => Ok(()),
        }
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
            self.check_origin(headers)?;
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
        if self.token.is_some()
            && (path.starts_with("/api/") || path == "/metrics")
            && !self.token_given(headers)
        {
            return Err(ApiError::Unauthorized);
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

/// Compares secrets without leaking where they differ through timing (only whether
/// their lengths differ).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
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
            "http",
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

    #[test]
    fn the_origin_must_be_this_address_with_its_scheme_and_port() {
        let g = guard(None);
        let with_origin =
            |origin: &str| headers(&[(header::HOST, "localhost:53231"), (header::ORIGIN, origin)]);
        for ok in [
            "http://localhost:53231",
            "http://127.0.0.1:53231",
            "http://[::1]:53231",
            "http://ENGINE.corp.example:53231",
        ] {
            assert!(
                g.check(
                    &Method::POST,
                    "/api/configurations/1/disable",
                    &with_origin(ok)
                )
                .is_ok(),
                "{ok}"
            );
        }
        for refused in [
            "http://localhost:9999",
            "https://127.0.0.1:1",
            "https://localhost:53231",
            "http://localhost",
            "null",
            "",
        ] {
            assert!(
                matches!(
                    g.check(
                        &Method::POST,
                        "/api/configurations/1/copy",
                        &with_origin(refused)
                    ),
                    Err(ApiError::Forbidden(_))
                ),
                "{refused:?}"
            );
        }
    }

    #[test]
    fn without_origin_only_the_token_or_a_client_that_is_no_browser_may_change_state() {
        let browser = headers(&[
            (header::HOST, "localhost:53231"),
            (
                header::HeaderName::from_static("sec-fetch-site"),
                "cross-site",
            ),
        ]);
        assert!(matches!(
            guard(None).check(&Method::POST, "/api/configurations/1/disable", &browser),
            Err(ApiError::Forbidden(_))
        ));
        let curl = headers(&[(header::HOST, "localhost:53231")]);
        assert!(guard(None)
            .check(&Method::POST, "/api/configurations/1/disable", &curl)
            .is_ok());
        let token = "0123456789abcdef";
        let browser_with_token = headers(&[
            (header::HOST, "localhost:53231"),
            (
                header::HeaderName::from_static("sec-fetch-site"),
                "same-site",
            ),
            (header::AUTHORIZATION, "Bearer 0123456789abcdef"),
        ]);
        assert!(guard(Some(token))
            .check(
                &Method::POST,
                "/api/configurations/1/disable",
                &browser_with_token
            )
            .is_ok());
    }

    #[test]
    fn a_page_on_the_default_port_may_omit_it() {
        let g = Guard::new("0.0.0.0:443".parse().expect("addr"), "https", &[], None);
        let h = headers(&[
            (header::HOST, "localhost"),
            (header::ORIGIN, "https://localhost"),
        ]);
        assert!(g.check(&Method::POST, "/api/configurations", &h).is_ok());
    }
}
