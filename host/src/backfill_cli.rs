//! `middleware-engine backfill`: starts a backfill through the running engine's admin
//! API and follows it to its end. The engine does the work; this only asks and watches,
//! so the backfill goes on if the command is stopped.

use std::io::{IsTerminal, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::admin::error::chain;
use crate::settings::HostSettings;

/// How often the backfill is looked at.
const POLL_EVERY: Duration = Duration::from_millis(500);
/// How long the engine may not answer (a restart) before the command gives up.
const PATIENCE: Duration = Duration::from_secs(60);

/// Why the command stopped before the backfill ended.
#[derive(Debug)]
pub enum CliError {
    /// Something the user gave must change (exit 2).
    Input(String),
    /// The engine could not be reached or refused (exit 1).
    Engine(String),
}

impl CliError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Self::Input(_) => ExitCode::from(2),
            Self::Engine(_) => ExitCode::FAILURE,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Self::Input(m) | Self::Engine(m) => m,
        }
    }
}

/// A backfill as `GET /api/backfills/{id}` answers it (the fields shown here).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Progress {
    pub state: String,
    pub since: i64,
    pub until: i64,
    pub found: i64,
    pub imported: i64,
    pub skipped: i64,
    pub failed: i64,
    pub already_imported: i64,
    pub queued: i64,
    pub listed: f64,
    pub eta_seconds: Option<u64>,
    pub error: Option<String>,
}

impl Progress {
    fn processed(&self) -> i64 {
        self.imported + self.skipped + self.failed + self.already_imported
    }

    /// The counts, as one line: what the command prints when they change.
    pub fn counts(&self) -> String {
        let mut line = String::new();
        if self.state == "running" && self.listed < 1.0 {
            line.push_str(&format!("listing {:.0}%, ", self.listed * 100.0));
        }
        line.push_str(&format!(
            "found {}, imported {}, already imported {}, skipped {}, failed {}",
            self.found, self.imported, self.already_imported, self.skipped, self.failed
        ));
        if self.queued > 0 {
            line.push_str(&format!(", queued {}", self.queued));
        }
        line
    }

    fn eta(&self) -> String {
        match self.eta_seconds {
            Some(s) if s > 0 && self.state == "running" => {
                format!(", about {} left", duration_text(s))
            }
            _ => String::new(),
        }
    }
}

/// `3 h 2 min`, `4 min 10 s`, `12 s`.
pub fn duration_text(seconds: u64) -> String {
    let (h, m, s) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    if h > 0 {
        format!("{h} h {m} min")
    } else if m > 0 {
        format!("{m} min {s} s")
    } else {
        format!("{s} s")
    }
}

fn utc(seconds: i64) -> String {
    chrono::DateTime::from_timestamp(seconds, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| seconds.to_string())
}

/// Where to reach the admin API from this machine: the base URL, and the address a
/// certificate's host name in it stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub base: String,
    pub resolve: Option<(String, SocketAddr)>,
}

/// The names a certificate covers.
#[derive(Debug, Clone, Default)]
pub struct CertNames {
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
}

/// The admin address as seen from this machine: an unspecified address (`0.0.0.0`,
/// `[::]`) is reached on loopback. Over HTTPS the URL names the host by a name its
/// certificate covers (and the guard accepts: `localhost`, then `admin_hostnames`),
/// resolved to that address, since a certificate rarely covers 127.0.0.1.
pub fn target(listen: SocketAddr, tls: Option<&CertNames>, hostnames: &[String]) -> Target {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let addr = SocketAddr::new(ip, listen.port());
    let Some(names) = tls else {
        return Target {
            base: format!("http://{addr}/"),
            resolve: None,
        };
    };
    let by_ip = Target {
        base: format!("https://{addr}/"),
        resolve: None,
    };
    if names.ips.contains(&ip) {
        return by_ip;
    }
    let plain: Vec<&String> = names.dns.iter().filter(|n| !n.contains('*')).collect();
    let chosen = plain
        .iter()
        .find(|n| n.eq_ignore_ascii_case("localhost"))
        .or_else(|| {
            plain
                .iter()
                .find(|n| hostnames.iter().any(|h| h.eq_ignore_ascii_case(n)))
        })
        .or_else(|| plain.first());
    match chosen {
        Some(name) => Target {
            base: format!("https://{name}:{}/", addr.port()),
            resolve: Some(((*name).clone(), addr)),
        },
        // Tried anyway: the TLS error then says what the certificate lacks.
        None => by_ip,
    }
}

/// The certificates of the admin address' chain file (trusted besides the system's
/// roots), and the names its first one covers.
fn read_chain(path: &std::path::Path) -> Result<(Vec<reqwest::Certificate>, CertNames), CliError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let what = || format!("the admin address' certificate chain {}", path.display());
    let pem = std::fs::read(path)
        .map_err(|e| CliError::Engine(format!("cannot read {}: {e}", what())))?;
    let ders = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CliError::Engine(format!("{} is not valid PEM: {e}", what())))?;
    let mut names = CertNames::default();
    if let Some(leaf) = ders.first() {
        if let Ok((_, parsed)) = x509_parser::parse_x509_certificate(leaf.as_ref()) {
            if let Ok(Some(san)) = parsed.subject_alternative_name() {
                for name in &san.value.general_names {
                    match name {
                        x509_parser::extensions::GeneralName::DNSName(dns) => {
                            names.dns.push((*dns).to_owned())
                        }
                        x509_parser::extensions::GeneralName::IPAddress(ip) => {
                            if let Ok(b) = <[u8; 4]>::try_from(*ip) {
                                names.ips.push(IpAddr::from(b));
                            } else if let Ok(b) = <[u8; 16]>::try_from(*ip) {
                                names.ips.push(IpAddr::from(b));
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    let certs = ders
        .iter()
        .map(|d| reqwest::Certificate::from_der(d.as_ref()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            CliError::Engine(format!(
                "{} holds a certificate that cannot be used: {e}",
                what()
            ))
        })?;
    Ok((certs, names))
}

/// A client of the running engine's admin API.
pub struct AdminClient {
    http: reqwest::Client,
    base: String,
}

impl AdminClient {
    pub fn new(settings: &HostSettings) -> Result<Self, CliError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("middleware-engine-cli/", env!("CARGO_PKG_VERSION")));
        let names = match &settings.admin_tls {
            Some(files) => {
                let (certs, names) = read_chain(&files.cert)?;
                builder = builder.tls_certs_merge(certs);
                Some(names)
            }
            None => None,
        };
        let target = target(
            settings.admin_listen,
            names.as_ref(),
            &settings.admin_hostnames,
        );
        if let Some((name, addr)) = &target.resolve {
            builder = builder.resolve(name, *addr);
        }
        if let Some(token) = &settings.admin_token {
            let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                .map_err(|_| CliError::Input("admin_token cannot be sent in a header".into()))?;
            value.set_sensitive(true);
            builder = builder.default_headers(HeaderMap::from_iter([(AUTHORIZATION, value)]));
        }
        let http = builder
            .build()
            .map_err(|e| CliError::Engine(format!("cannot set up HTTPS: {}", chain(&e))))?;
        Ok(Self {
            http,
            base: target.base,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn unreachable(&self, e: &reqwest::Error) -> CliError {
        // Its own text repeats the URL; the causes say what went wrong.
        let why = std::error::Error::source(e).map_or_else(|| e.to_string(), chain);
        CliError::Engine(format!(
            "cannot reach the engine's admin API at {} (is the service running?): {why}",
            self.base
        ))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base.trim_end_matches('/'))
    }

    async fn call(&self, request: reqwest::RequestBuilder) -> Result<Value, CliError> {
        let response = request.send().await.map_err(|e| self.unreachable(&e))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        let error = body["error"]
            .as_str()
            .map_or_else(|| status.to_string(), str::to_owned);
        Err(match status.as_u16() {
            401 => CliError::Engine(format!(
                "the engine refused: {error} (the command sends admin_token from the settings: give it the engine's token)"
            )),
            404 | 409 | 422 => CliError::Input(format!("the engine refused: {error}")),
            _ => CliError::Engine(format!("the engine refused ({status}): {error}")),
        })
    }

    pub async fn get(&self, path: &str) -> Result<Value, CliError> {
        self.call(self.http.get(self.url(path))).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, CliError> {
        self.call(self.http.post(self.url(path)).json(body)).await
    }
}

/// The id of the one configuration named `name`.
pub fn find_configuration(all: &Value, name: &str) -> Result<i64, CliError> {
    let all = all.as_array().map(Vec::as_slice).unwrap_or_default();
    let named: Vec<&Value> = all.iter().filter(|c| c["name"] == name).collect();
    match named.as_slice() {
        [one] => one["id"].as_i64().ok_or_else(|| {
            CliError::Engine("the engine answered a configuration without an id".into())
        }),
        [] => {
            let names: Vec<String> = all
                .iter()
                .filter_map(|c| c["name"].as_str())
                .map(|n| format!("{n:?}"))
                .collect();
            Err(CliError::Input(if names.is_empty() {
                format!("no configuration is named {name:?}: the engine has none")
            } else {
                format!(
                    "no configuration is named {name:?}; there are {}",
                    names.join(", ")
                )
            }))
        }
        many => {
            let which: Vec<String> = many
                .iter()
                .map(|c| {
                    format!(
                        "id {} of plugin {}",
                        c["id"],
                        c["plugin"].as_str().unwrap_or("?")
                    )
                })
                .collect();
            Err(CliError::Input(format!(
                "several configurations are named {name:?} ({}); rename one",
                which.join(", ")
            )))
        }
    }
}

/// Draws the progress: a bar on a terminal, else one line per change of the counts.
enum Display {
    Bar(indicatif::ProgressBar),
    Lines { last: String },
}

impl Display {
    fn new() -> Self {
        if !std::io::stdout().is_terminal() {
            return Self::Lines {
                last: String::new(),
            };
        }
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(1),
            indicatif::ProgressDrawTarget::stdout(),
        );
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} {msg}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.enable_steady_tick(Duration::from_millis(200));
        Self::Bar(bar)
    }

    fn show(&mut self, p: &Progress) {
        match self {
            Self::Bar(bar) => {
                bar.set_length(p.found.max(1) as u64);
                bar.set_position(p.processed().max(0) as u64);
                bar.set_message(format!("{}{}", p.counts(), p.eta()));
            }
            Self::Lines { last } => {
                let counts = p.counts();
                if *last != counts {
                    println!("{counts}{}", p.eta());
                    *last = counts;
                }
            }
        }
    }

    fn finish(self) {
        if let Self::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

/// Starts the backfill and follows it.
async fn backfill(
    client: &AdminClient,
    configuration: &str,
    since: i64,
    until: Option<i64>,
) -> Result<Progress, CliError> {
    let id = find_configuration(&client.get("/api/configurations").await?, configuration)?;
    let mut body = json!({ "since": since });
    if let Some(until) = until {
        body["until"] = json!(until);
    }
    let started = client
        .post(&format!("/api/configurations/{id}/backfill"), &body)
        .await?;
    let backfill = started["id"].as_i64().ok_or_else(|| {
        CliError::Engine(format!("the engine answered no backfill id: {started}"))
    })?;
    let path = format!("/api/backfills/{backfill}");
    let mut display: Option<Display> = None;
    let mut answered_at = Instant::now();
    loop {
        let progress = match client.get(&path).await {
            Ok(body) => serde_json::from_value::<Progress>(body).map_err(|e| {
                CliError::Engine(format!(
                    "the engine answered a backfill this command cannot read: {e}"
                ))
            })?,
            // A restart of the engine: the backfill goes on after it.
            Err(CliError::Engine(_)) if answered_at.elapsed() < PATIENCE => {
                tokio::time::sleep(POLL_EVERY).await;
                continue;
            }
            Err(CliError::Engine(e)) => {
                let after = "goes on in the engine: follow it on the admin page";
                return Err(CliError::Engine(format!(
                    "{e}\nThe backfill {backfill} {after}."
                )));
            }
            Err(e) => return Err(e),
        };
        answered_at = Instant::now();
        let shown = display.get_or_insert_with(|| {
            println!(
                "backfill {backfill} of {configuration:?}: sessions ended from {} until {}",
                utc(progress.since),
                utc(progress.until)
            );
            println!("(stopping this command leaves it running; cancel it on the admin page)");
            Display::new()
        });
        shown.show(&progress);
        if progress.state != "running" {
            if let Some(shown) = display.take() {
                shown.finish();
            }
            return Ok(progress);
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// `middleware-engine backfill "<configuration>" --since DATE [--until DATE]`.
pub fn run(
    settings: &HostSettings,
    configuration: &str,
    since: i64,
    until: Option<i64>,
) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("middleware-engine: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        let client = AdminClient::new(settings)?;
        backfill(&client, configuration, since, until).await
    });
    let progress = match outcome {
        Ok(progress) => progress,
        Err(e) => {
            eprintln!("middleware-engine: {}", e.message());
            return e.exit_code();
        }
    };
    // The final counts, on a terminal too (the bar is gone).
    println!("{}: {}", progress.state, progress.counts());
    let _ = std::io::stdout().flush();
    match progress.state.as_str() {
        "done" => ExitCode::SUCCESS,
        state => {
            let why = progress.error.as_deref().unwrap_or("no reason given");
            eprintln!("middleware-engine: the backfill {state}: {why}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn an_unspecified_address_is_reached_on_loopback() {
        let t = target(addr("0.0.0.0:53231"), None, &[]);
        assert_eq!(t.base, "http://127.0.0.1:53231/");
        assert_eq!(
            target(addr("[::]:53231"), None, &[]).base,
            "http://[::1]:53231/"
        );
        assert_eq!(
            target(addr("10.1.2.3:8443"), None, &[]).base,
            "http://10.1.2.3:8443/"
        );
    }

    #[test]
    fn https_names_the_host_by_a_name_of_its_certificate() {
        let names = |dns: &[&str], ips: &[&str]| CertNames {
            dns: dns.iter().map(|d| (*d).to_owned()).collect(),
            ips: ips.iter().map(|i| i.parse().expect("ip")).collect(),
        };
        let listen = addr("0.0.0.0:53231");
        let by_ip = target(
            listen,
            Some(&names(&["mwe.example.com"], &["127.0.0.1"])),
            &[],
        );
        assert_eq!(by_ip.base, "https://127.0.0.1:53231/");
        assert_eq!(by_ip.resolve, None);
        let hostnames = ["mwe.example.com".to_owned()];
        let by_name = target(
            listen,
            Some(&names(
                &["*.example.com", "other.example.com", "MWE.example.com"],
                &[],
            )),
            &hostnames,
        );
        assert_eq!(by_name.base, "https://MWE.example.com:53231/");
        assert_eq!(
            by_name.resolve,
            Some(("MWE.example.com".to_owned(), addr("127.0.0.1:53231")))
        );
        let localhost = target(
            listen,
            Some(&names(&["mwe.example.com", "localhost"], &[])),
            &hostnames,
        );
        assert_eq!(localhost.base, "https://localhost:53231/");
        let nothing = target(listen, Some(&names(&["*.example.com"], &[])), &[]);
        assert_eq!(nothing.base, "https://127.0.0.1:53231/");
    }

    #[test]
    fn the_configuration_is_found_by_its_exact_name() {
        let all = json!([
            {"id": 1, "name": "Prod", "plugin": "dynamics365"},
            {"id": 2, "name": "prod", "plugin": "dynamics365"},
            {"id": 3, "name": "Staging", "plugin": "file-sink"},
            {"id": 4, "name": "Staging", "plugin": "dynamics365"},
        ]);
        assert!(matches!(find_configuration(&all, "Prod"), Ok(1)));
        match find_configuration(&all, "Test") {
            Err(CliError::Input(e)) => {
                assert_eq!(
                    e,
                    r#"no configuration is named "Test"; there are "Prod", "prod", "Staging", "Staging""#
                )
            }
            other => panic!("{other:?}"),
        }
        match find_configuration(&all, "Staging") {
            Err(CliError::Input(e)) => assert_eq!(
                e,
                r#"several configurations are named "Staging" (id 3 of plugin file-sink, id 4 of plugin dynamics365); rename one"#
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_progress_line_has_the_counts_and_the_listing_while_it_lists() {
        let mut p = Progress {
            state: "running".into(),
            found: 120,
            imported: 80,
            already_imported: 20,
            queued: 20,
            listed: 0.4,
            eta_seconds: Some(65),
            ..Progress::default()
        };
        assert_eq!(
            format!("{}{}", p.counts(), p.eta()),
            "listing 40%, found 120, imported 80, already imported 20, skipped 0, failed 0, queued 20, about 1 min 5 s left"
        );
        p.state = "done".into();
        p.listed = 1.0;
        p.queued = 0;
        assert_eq!(
            format!("{}{}", p.counts(), p.eta()),
            "found 120, imported 80, already imported 20, skipped 0, failed 0"
        );
        assert_eq!(duration_text(3 * 3600 + 125), "3 h 2 min");
        assert_eq!(duration_text(9), "9 s");
    }
}
