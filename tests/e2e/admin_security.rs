//! The admin address's protections, through the real host process.

use crate::helpers::{answer, host_binary, PluginsDir, TestHost};

const TOKEN: &str = "correct-horse-battery-staple";

#[tokio::test]
async fn a_forged_host_header_is_refused() {
    let host = TestHost::start(&PluginsDir::new());
    let (status, body) = answer(
        host.http
            .get(host.url("/api/plugins"))
            .header("host", "attacker.example")
            .send()
            .await,
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(body["error"], "the Host \"attacker.example\" is not a name of this admin address; add it to admin_hostnames");
    let (status, _) = host.get("/api/plugins").await;
    assert_eq!(status, 200, "the real address works");
}

#[tokio::test]
async fn a_cross_site_write_is_refused() {
    let host = TestHost::start(&PluginsDir::new());
    let (status, body) = answer(
        host.http
            .post(host.url("/api/configurations"))
            .header("origin", "https://attacker.example")
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        body["error"].as_str(),
        Some(
            format!(
                "cross-site request refused (Origin \"https://attacker.example\"): only the admin page at {} may change state",
                host.admin.replace("127.0.0.1", "localhost")
            )
            .as_str()
        )
    );
}

#[tokio::test]
async fn with_a_token_every_api_request_needs_it() {
    let host = TestHost::start_with_env(&PluginsDir::new(), &[("MWE_ADMIN_TOKEN", TOKEN)]);
    let (status, body) = host.get("/api/plugins").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (
            401,
            Some("an admin token is required: send the header Authorization: Bearer <token>")
        )
    );
    let (status, _) = answer(
        host.http
            .get(host.url("/api/plugins"))
            .bearer_auth("wrong-token-wrong-token")
            .send()
            .await,
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = answer(
        host.http
            .get(host.url("/api/plugins"))
            .bearer_auth(TOKEN)
            .send()
            .await,
    )
    .await;
    assert_eq!(status, 200);
    assert!(!host.log().contains(TOKEN), "the token is not logged");
}

#[test]
fn a_non_loopback_admin_address_without_a_token_is_refused_at_start() {
    let data = tempfile::tempdir().expect("tempdir");
    let output = std::process::Command::new(host_binary())
        .args(["serve", "--admin-listen", "0.0.0.0:0", "--plugins-dir"])
        .arg(data.path())
        .arg("--data-dir")
        .arg(data.path())
        .env_remove("MWE_ADMIN_TOKEN")
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr).trim(),
        "middleware-engine: the admin address 0.0.0.0:0 is reachable from other machines: set an admin token (MWE_ADMIN_TOKEN or admin_token, at least 16 characters), or listen on 127.0.0.1"
    );
}

#[tokio::test]
async fn the_page_is_served_with_a_strict_policy() {
    let host = TestHost::start(&PluginsDir::new());
    let response = host.http.get(host.url("/")).send().await.expect("page");
    assert_eq!(response.status().as_u16(), 200);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    assert_eq!(header("content-type"), "text/html; charset=utf-8");
    assert!(header("content-security-policy").contains("frame-ancestors 'none'"));
    assert_eq!(header("x-content-type-options"), "nosniff");
    let script = host
        .http
        .get(host.url("/assets/app.js"))
        .send()
        .await
        .expect("script");
    assert_eq!(
        script
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/javascript; charset=utf-8")
    );
    let (status, body) = host.get("/healthz").await;
    assert_eq!((status, body), (200, serde_json::json!("ok")));
}

#[tokio::test]
async fn a_sender_too_slow_with_its_headers_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = TestHost::start(&PluginsDir::new());
    for base in [host.events.clone(), host.admin.clone()] {
        let addr = base.trim_start_matches("http://").to_owned();
        let mut slow = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        slow.write_all(b"POST /ERSPost HTTP/1.1\r\nHost: localhost\r\n")
            .await
            .expect("write");
        // The headers never end; the engine closes the connection after its header timeout (10 s).
        let mut buf = [0u8; 256];
        let closed =
            tokio::time::timeout(std::time::Duration::from_secs(30), slow.read(&mut buf)).await;
        assert!(
            matches!(closed, Ok(Ok(_)) | Ok(Err(_))),
            "{addr}: still open after 30 s"
        );
    }
    let (status, _) = host.get("/healthz").await;
    assert_eq!(status, 200, "other clients are served meanwhile");
}
