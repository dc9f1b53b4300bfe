//! HTTPS on the event address with a pair made by `tls init`, renewal without a
//! restart (SIGHUP, or the files changing), a broken pair at start, the service
//! manager's notifications and `check-config`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::helpers::{answer, run_host, PluginsDir, TestHost};

/// The files of one `tls init`.
struct Pair {
    dir: PathBuf,
}

impl Pair {
    fn cert(&self) -> PathBuf {
        self.dir.join("tls").join("server.crt")
    }
    fn key(&self) -> PathBuf {
        self.dir.join("tls").join("server.key")
    }
    fn ca(&self) -> PathBuf {
        self.dir.join("tls").join("ca.crt")
    }
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("MWE_EVENT_TLS_CERT", path_text(&self.cert())),
            ("MWE_EVENT_TLS_KEY", path_text(&self.key())),
        ]
    }
    /// The server's own certificate: the first of the chain file.
    fn leaf(&self) -> Vec<u8> {
        first_certificate(&self.cert())
    }
}

fn path_text(path: &Path) -> String {
    path.to_str().expect("a UTF-8 path").to_owned()
}

/// `tls init` in `dir` (as its data folder); it must succeed.
fn tls_init(dir: &Path, force: bool) -> Pair {
    let out = crate::helpers::tls_init(dir, if force { &["--force"] } else { &[] });
    assert!(
        out.status.success(),
        "tls init: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Pair {
        dir: dir.to_owned(),
    }
}

fn first_certificate(path: &Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(path).expect("read the certificate");
    rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
        .next()
        .expect("a certificate")
        .expect("PEM")
        .as_ref()
        .to_vec()
}

/// A client that trusts only `ca` (and so fails on any other certificate).
fn client_trusting(ca: &Path) -> reqwest::Client {
    let pem = std::fs::read(ca).expect("read the CA");
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).expect("CA")])
        .build()
        .expect("client")
}

/// The certificate a new TLS connection to `addr` is shown (verified against `ca`).
async fn served_certificate(addr: &str, ca: &Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).expect("read the CA");
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.expect("PEM")).expect("a CA");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let stream = connector.connect(name, tcp).await.expect("handshake");
    let (_, connection) = stream.get_ref();
    connection
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("a certificate")
        .as_ref()
        .to_vec()
}

fn event_form(lsid: &str) -> Vec<(&'static str, String)> {
    vec![
        ("event", "support_conference_end".into()),
        ("version", "3".into()),
        ("timestamp", "1700000000".into()),
        ("lsid", lsid.into()),
    ]
}

/// `host:port` of the event address.
fn event_authority(host: &TestHost) -> String {
    host.events
        .strip_prefix("https://")
        .expect("the event address serves HTTPS")
        .to_owned()
}

fn start_https(pair: &Pair) -> TestHost {
    let env = pair.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut host = TestHost::start_with_env(&PluginsDir::new(), &env);
    host.http = client_trusting(&pair.ca());
    host
}

/// Sends `signal` to the host.
fn signal(host: &TestHost, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &host.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// Waits until new connections are shown `expected`, or fails after a generous
/// deadline (a bound on a hang, not a timing goal).
async fn wait_for_certificate(host: &TestHost, pair: &Pair, expected: &[u8], why: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while served_certificate(&event_authority(host), &pair.ca()).await != expected {
        assert!(
            Instant::now() < deadline,
            "{why}: new connections still get the old certificate; log:\n{}",
            host.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_for_log(host: &TestHost, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !host.log().contains(text) {
        assert!(
            Instant::now() < deadline,
            "the log never said {text:?}:\n{}",
            host.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_event_address_serves_https_with_a_pair_made_by_tls_init() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pair = tls_init(dir.path(), false);
    let host = start_https(&pair);
    assert!(host.events.starts_with("https://"), "{}", host.events);

    let form = event_form("over-https");
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, _) = host.post_event(None, &form).await;
    assert_eq!(status, 200, "a client trusting the CA is answered");
    let (status, ready) = answer(
        host.http
            .get(format!("{}/readyz", host.events))
            .send()
            .await,
    )
    .await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(
        served_certificate(&event_authority(&host), &pair.ca()).await,
        pair.leaf()
    );

    // Plain HTTP to the HTTPS port is not served.
    let plain = reqwest::Client::new()
        .post(format!("http://{}/ERSPost", event_authority(&host)))
        .form(&form)
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP got an answer: {plain:?}");
    // Nor is a client that does not trust the engine's CA.
    let untrusting = reqwest::Client::builder()
        .tls_certs_only([])
        .build()
        .expect("client")
        .post(format!("{}/ERSPost", host.events))
        .form(&form)
        .send()
        .await;
    assert!(untrusting.is_err(), "{untrusting:?}");
    // The admin address stays plain HTTP, as set.
    assert!(host.admin.starts_with("http://"), "{}", host.admin);
    let stored = host.events("lsid=over-https").await;
    assert_eq!(stored.len(), 1, "{stored:?}");
}

#[tokio::test]
async fn a_renewed_pair_is_served_after_sighup_and_events_in_flight_are_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pair = tls_init(dir.path(), false);
    let host = start_https(&pair);
    let pid = host.pid();
    let old = pair.leaf();
    assert_eq!(
        served_certificate(&event_authority(&host), &pair.ca()).await,
        old
    );

    // A kept-alive connection opened before the renewal.
    let form = event_form("before-renewal");
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(host.post_event(None, &form).await.0, 200);

    // Renewed on disk (the CA is kept), then SIGHUP, with an event sent meanwhile.
    tls_init(dir.path(), true);
    let new = pair.leaf();
    assert_ne!(new, old, "tls init --force made a new certificate");
    let during = event_form("during-reload");
    let during: Vec<(&str, String)> = during.into_iter().collect();
    let sender = {
        let client = host.http.clone();
        let url = format!("{}/ERSPost", host.events);
        tokio::spawn(async move { client.post(url).form(&during).send().await })
    };
    signal(&host, "-HUP");
    let sent = sender.await.expect("task").expect("the event is answered");
    assert_eq!(sent.status().as_u16(), 200);
    wait_for_certificate(&host, &pair, &new, "after SIGHUP").await;

    assert_eq!(host.pid(), pid);
    let alive = std::process::Command::new("kill")
        .args(["-0", &pid.to_string()])
        .status()
        .expect("kill -0");
    assert!(alive.success(), "the same process serves on");
    for lsid in ["before-renewal", "during-reload"] {
        let stored = host.events(&format!("lsid={lsid}")).await;
        assert_eq!(stored.len(), 1, "{lsid}: {stored:?}");
    }
}

#[tokio::test]
async fn a_pair_replaced_by_a_rename_is_picked_up_without_a_signal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pair = tls_init(dir.path(), false);
    let host = start_https(&pair);
    // A renewal made elsewhere, then moved into place (key first), as certbot does.
    let other = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(other.path().join("tls")).expect("mkdir");
    for file in ["ca.crt", "ca.key"] {
        std::fs::copy(
            pair.dir.join("tls").join(file),
            other.path().join("tls").join(file),
        )
        .expect("copy the CA");
    }
    let renewed = tls_init(other.path(), true);
    let staged = pair.dir.join("tls").join("renewed");
    std::fs::create_dir_all(&staged).expect("mkdir");
    std::fs::copy(renewed.key(), staged.join("server.key")).expect("copy");
    std::fs::copy(renewed.cert(), staged.join("server.crt")).expect("copy");
    std::fs::rename(staged.join("server.key"), pair.key()).expect("rename");
    std::fs::rename(staged.join("server.crt"), pair.cert()).expect("rename");
    wait_for_certificate(&host, &pair, &renewed.leaf(), "after the files changed").await;
}

#[tokio::test]
async fn a_reload_that_fails_keeps_the_pair_in_force() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pair = tls_init(dir.path(), false);
    let host = start_https(&pair);
    let old = pair.leaf();
    // A half-written certificate file.
    let pem = std::fs::read_to_string(pair.cert()).expect("read");
    std::fs::write(pair.cert(), &pem[..pem.len() / 3]).expect("write");
    signal(&host, "-HUP");
    // The watcher may see the change first; the signal's own reload is the one waited for.
    wait_for_log(
        &host,
        "SIGHUP: TLS certificate not reloaded, the previous one stays in use",
    )
    .await;
    assert_eq!(
        served_certificate(&event_authority(&host), &pair.ca()).await,
        old
    );
    let form = event_form("after-failed-reload");
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(host.post_event(None, &form).await.0, 200);
    // The rest of the write arrives: taken at the change.
    std::fs::write(pair.cert(), &pem).expect("write");
    wait_for_log(&host, "the files changed: TLS certificate reloaded").await;
    assert_eq!(
        served_certificate(&event_authority(&host), &pair.ca()).await,
        old
    );
}

/// `serve` with the event pair `cert`/`key`: it must stop at once.
fn serve_with_pair(cert: &Path, key: &Path) -> std::process::Output {
    let data = tempfile::tempdir().expect("tempdir");
    let plugins = PluginsDir::new();
    run_host(&[
        "--data-dir",
        data.path().to_str().expect("utf-8"),
        "--plugins-dir",
        plugins.path().to_str().expect("utf-8"),
        "--admin-listen",
        "127.0.0.1:0",
        "--event-listen",
        "127.0.0.1:0",
        "--event-tls-cert",
        cert.to_str().expect("utf-8"),
        "--event-tls-key",
        key.to_str().expect("utf-8"),
        "serve",
    ])
}

#[test]
fn a_broken_certificate_at_start_stops_with_a_message_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pair = tls_init(dir.path(), false);
    let broken = dir.path().join("broken.crt");
    std::fs::write(&broken, "this is not a certificate\n").expect("write");
    let out = serve_with_pair(&broken, &pair.key());
    assert_ne!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "the TLS certificate file {} holds no PEM certificate",
            broken.display()
        )),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "nothing was served");

    // A key that belongs to another certificate.
    let other_dir = tempfile::tempdir().expect("tempdir");
    let other = tls_init(other_dir.path(), false);
    let out = serve_with_pair(&pair.cert(), &other.key());
    assert_ne!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "the key in {} does not match the certificate in {}",
            other.key().display(),
            pair.cert().display()
        )),
        "{stderr}"
    );

    let missing = dir.path().join("missing.key");
    let out = serve_with_pair(&pair.cert(), &missing);
    assert_ne!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "cannot read the TLS key file {}",
            missing.display()
        )),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_service_manager_is_told_ready_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().expect("tempdir");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let host = TestHost::start_with_env(
        &PluginsDir::new(),
        &[("NOTIFY_SOCKET", socket_path.to_str().expect("utf-8"))],
    );
    let receive = |socket: &UnixDatagram| {
        let mut buffer = [0u8; 512];
        let n = socket.recv(&mut buffer).expect("a notification");
        String::from_utf8_lossy(&buffer[..n]).into_owned()
    };
    assert_eq!(receive(&socket), "READY=1");
    let (status, _) = host.get("/healthz").await;
    assert_eq!(status, 200, "ready means both addresses answer");

    signal(&host, "-HUP");
    let reloading = receive(&socket);
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    assert_eq!(receive(&socket), "READY=1", "the reload is over");

    signal(&host, "-TERM");
    assert_eq!(receive(&socket), "STOPPING=1");
}

#[test]
fn check_config_passes_a_good_setup_and_names_each_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pair = tls_init(dir.path(), false);
    let plugins = PluginsDir::new();
    plugins.add("filesink", "file_sink_plugin");
    let config = dir.path().join("engine.toml");
    std::fs::write(
        &config,
        format!(
            "plugins_dir = {:?}\ndata_dir = \"data\"\nevent_tls_cert = {:?}\nevent_tls_key = {:?}\n",
            path_text(plugins.path()),
            path_text(&pair.cert()),
            path_text(&pair.key())
        ),
    )
    .expect("write");
    let config_text = path_text(&config);
    let out = run_host(&["check-config", "--config", &config_text]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "event address 0.0.0.0:8180: HTTPS, certificate {}",
            pair.cert().display()
        )),
        "{stdout}"
    );
    assert!(stdout.contains("localhost, 127.0.0.1"), "{stdout}");
    assert!(
        stdout.contains("admin address 127.0.0.1:53231: plain HTTP"),
        "{stdout}"
    );
    assert!(stdout.contains("1 loaded, 0 failed"), "{stdout}");
    assert!(stdout.ends_with("the configuration is good\n"), "{stdout}");

    // A broken plugin and an unreadable key: exit 1, each named.
    plugins.write("broken", "libbroken.so", "not a library");
    let missing = dir.path().join("gone.key");
    let out = run_host(&[
        "check-config",
        "--config",
        &config_text,
        "--event-tls-key",
        &path_text(&missing),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "FAILED  event address 0.0.0.0:8180: cannot read the TLS key file {}",
            missing.display()
        )),
        "{stdout}"
    );
    assert!(stdout.contains("FAILED  broken"), "{stdout}");
    assert!(
        stdout.ends_with("the configuration has problems\n"),
        "{stdout}"
    );

    // Settings that cannot be read at all.
    std::fs::write(&config, "event_tls_cert = 3\n").expect("write");
    let out = run_host(&["check-config", "--config", &config_text]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.starts_with(&format!(
            "FAILED  settings: the settings file {config_text} is not valid at line 1"
        )),
        "{stdout}"
    );
}
