//! Assembles the engine from its parts ([`App::build`]: store, plugins, engine, both
//! addresses bound) apart from running it until shutdown ([`App::run_until`]), so that
//! tests can build it on port 0 and drive it in-process.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;

use crate::admin::AdminState;
use crate::configurations::{ConfigError, Configurations, Live};
use crate::engine::{Engine, Wakeup};
use crate::intake::Intake;
use crate::metrics::Metrics;
use crate::plugins::runner::CallLimits;
use crate::plugins::Registry;
use crate::readiness::Readiness;
use crate::secrets::{SecretBox, SecretsError};
use crate::serve::Limits;
use crate::settings::HostSettings;
use crate::store::{Store, StoreError};
use crate::tls::Certificate;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    #[error(transparent)]
    Configurations(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot set up TLS on the {what}: {source}")]
    TlsSetup {
        what: &'static str,
        source: rustls::Error,
    },
    #[error("the key file {key_file} does not open the secrets stored in {store}: every engine on one database needs a copy of the same key file (copy the first engine's, keep it owner-only, and point secret_key_file at it)")]
    WrongKey { key_file: PathBuf, store: String },
    #[error("cannot listen on {addr} for the {what}: {source}")]
    Listen {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Refuses to start with a key file that cannot open the stored secrets (another
/// engine's database, a key file not copied): better now than a failure per event.
async fn check_key(store: &Store, secrets: &SecretBox, key_file: &Path) -> Result<(), StartError> {
    let candidate = secrets.key_check()?;
    let (kept, sample) = store
        .call(move |conn| crate::store::cluster::key_check(conn, &candidate))
        .await?;
    let sample = sample.as_ref().map(|(l, v)| (l.as_str(), v.as_str()));
    if secrets.opens(&kept, sample) {
        Ok(())
    } else {
        Err(StartError::WrongKey {
            key_file: key_file.to_owned(),
            store: store.location().to_string(),
        })
    }
}

/// One bound address and what it serves.
struct Address {
    listener: TcpListener,
    router: Router,
    limits: Limits,
    /// Set when the address serves HTTPS.
    tls: Option<Arc<Certificate>>,
}

impl Address {
    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

/// The engine, built: plugins loaded, configurations open, the engine's loops
/// started, both addresses listening. Nothing is served until [`App::run_until`].
pub struct App {
    admin: Address,
    events: Address,
    admin_addr: SocketAddr,
    events_addr: SocketAddr,
    intake: Arc<Intake>,
    engine: Arc<Engine>,
    shutdown_grace: Duration,
}

impl App {
    pub async fn build(settings: &HostSettings) -> Result<Self, StartError> {
        // Certificates first: a wrong file stops the start before anything is opened.
        let admin_tls = tls_of("admin address", settings.admin_tls.as_ref())?;
        let event_tls = tls_of("event address", settings.event_tls.as_ref())?;
        let plugins_dir = settings.plugins_dir.clone();
        let registry = tokio::task::spawn_blocking(move || Registry::scan(&plugins_dir))
            .await
            .unwrap_or_default();
        if let Some(problem) = &registry.problem {
            tracing::warn!("{problem}; starting with no plugins");
        }
        let store = Store::open_async(&settings.store).await?;
        let secrets = SecretBox::open_or_create(&settings.secret_key_file)?;
        check_key(&store, &secrets, &settings.secret_key_file).await?;
        let limits = CallLimits {
            timeout: settings.plugin_call_timeout,
            concurrency: settings.plugin_concurrency,
        };
        let wakeup = Arc::new(Wakeup::default());
        let configurations = Arc::new(Configurations::new(
            store.clone(),
            secrets,
            Arc::new(registry),
            Live::new(limits),
            Arc::clone(&wakeup),
        ));
        configurations.start_all().await?;

        let metrics = Arc::new(Metrics::default());
        let engine = Engine::new(
            store.clone(),
            Arc::clone(&configurations),
            Arc::clone(&metrics),
            Arc::clone(&wakeup),
            settings,
        );
        engine.start().await?;
        let intake = Arc::new(Intake::new(
            store.clone(),
            Arc::clone(&configurations),
            Arc::clone(&metrics),
            settings,
            wakeup,
        ));

        let open_files = crate::serve::raise_open_files_limit();
        let (event_connections, admin_connections) = crate::serve::fit_connections(
            settings.event_max_connections,
            settings.admin_max_connections,
            open_files,
        );
        if (event_connections, admin_connections)
            != (
                settings.event_max_connections,
                settings.admin_max_connections,
            )
        {
            tracing::warn!(
                open_files = ?open_files,
                event_connections, admin_connections,
                "the open files limit is low: connection limits lowered to fit (raise LimitNOFILE)"
            );
        }
        let limits = |max_connections| Limits {
            max_connections,
            header_timeout: settings.client_header_timeout,
            body_timeout: settings.client_body_timeout,
        };

        let admin = bind("admin page", settings.admin_listen).await?;
        let events = bind("event address", settings.event_listen).await?;
        let admin_addr = admin.local_addr().unwrap_or(settings.admin_listen);
        let events_addr = events.local_addr().unwrap_or(settings.event_listen);
        tracing::info!(
            plugins = configurations.registry().loaded().count(),
            failed = configurations.registry().failed_count(),
            %admin_addr,
            %events_addr,
            "engine ready"
        );
        let readiness = Arc::new(Readiness {
            intake: Arc::clone(&intake),
            store: store.clone(),
        });
        let scheme = |tls: &Option<Arc<Certificate>>| if tls.is_some() { "https" } else { "http" };
        let admin_scheme = scheme(&admin_tls);
        let engine_name = settings.engine_name.clone().unwrap_or_else(|| {
            format!(
                "{}:{}",
                crate::engine::cluster::host_name(),
                events_addr.port()
            )
        });
        let admin_url = format!("{admin_scheme}://{admin_addr}/");
        let alerts = crate::alerts::Alerter::new(
            store.clone(),
            Arc::clone(&configurations),
            Arc::clone(&engine),
            engine_name.clone(),
            admin_url.clone(),
        );
        let admin_router = crate::admin::router(
            Arc::new(AdminState {
                configurations: Arc::clone(&configurations),
                store,
                engine: Arc::clone(&engine),
                metrics,
                history_slots: tokio::sync::Semaphore::new(1),
                readiness: Arc::clone(&readiness),
                alerts: Arc::clone(&alerts),
            }),
            settings,
            admin_addr,
            admin_scheme,
        );
        let event_router =
            crate::intake::router(Arc::clone(&intake), readiness, settings.client_body_timeout);
        engine
            .register(
                engine_name,
                admin_url,
                format!("{}://{events_addr}", scheme(&event_tls)),
            )
            .await?;
        alerts.start().await;
        Ok(Self {
            admin: Address {
                listener: admin,
                router: admin_router,
                limits: limits(admin_connections),
                tls: admin_tls,
            },
            events: Address {
                listener: events,
                router: event_router,
                limits: limits(event_connections),
                tls: event_tls,
            },
            admin_addr,
            events_addr,
            intake,
            engine,
            shutdown_grace: settings.shutdown_grace,
        })
    }

    /// The admin address as bound (its real port when port 0 was asked).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The event address as bound.
    pub fn events_addr(&self) -> SocketAddr {
        self.events_addr
    }

    /// The admin page's URL (`http://` or `https://`).
    pub fn admin_url(&self) -> String {
        format!("{}://{}/", self.admin.scheme(), self.admin_addr)
    }

    /// The event address' base URL, without a path.
    pub fn events_url(&self) -> String {
        format!("{}://{}", self.events.scheme(), self.events_addr)
    }

    /// Serves both addresses until `shutdown` resolves; then refuses new events (503,
    /// the appliance keeps them), lets plugin calls in flight finish within the grace
    /// period, and closes the servers.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let (closed_tx, closed_rx) = tokio::sync::watch::channel(false);
        let stopper = {
            let intake = Arc::clone(&self.intake);
            let engine = Arc::clone(&self.engine);
            let grace = self.shutdown_grace;
            tokio::spawn(async move {
                shutdown.await;
                crate::notify::stopping();
                tracing::info!("stopping: no new events taken; finishing the calls in flight");
                intake.stop_accepting();
                engine.drain(grace).await;
                engine.unregister().await;
                let _ = closed_tx.send(true);
            })
        };
        let closed = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|closed| *closed).await;
        };
        let (admin, events) = (self.admin, self.events);
        let certificates: Vec<Arc<Certificate>> =
            admin.tls.iter().chain(events.tls.iter()).cloned().collect();
        let watcher = crate::tls::watch(certificates);
        let acceptor = |address: &Address| {
            address
                .tls
                .as_ref()
                .map(|certificate| {
                    let what = certificate.what();
                    certificate
                        .acceptor()
                        .map_err(|source| StartError::TlsSetup { what, source })
                })
                .transpose()
        };
        let (admin_acceptor, events_acceptor) = match (acceptor(&admin), acceptor(&events)) {
            (Ok(a), Ok(e)) => (a, e),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!("{e}");
                return;
            }
        };
        crate::notify::ready();
        tokio::join!(
            crate::serve::serve(
                admin.listener,
                admin.router,
                admin.limits,
                admin_acceptor,
                closed(closed_rx.clone())
            ),
            crate::serve::serve(
                events.listener,
                events.router,
                events.limits,
                events_acceptor,
                closed(closed_rx)
            ),
        );
        stopper.abort();
        watcher.abort();
        tracing::info!("stopped");
    }
}

/// Runs the engine until Ctrl-C or SIGTERM.
pub async fn run(settings: HostSettings) -> Result<(), StartError> {
    let app = App::build(&settings).await?;
    announce(&format!("admin page: {}", app.admin_url()));
    announce(&format!(
        "event address: {}/ERSPost?appliance=<Appliance Id>",
        app.events_url()
    ));
    app.run_until(crate::shutdown_signal()).await;
    Ok(())
}

fn tls_of(
    what: &'static str,
    files: Option<&crate::settings::TlsFiles>,
) -> Result<Option<Arc<Certificate>>, StartError> {
    Ok(files.map(|f| Certificate::load(what, f)).transpose()?)
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen { what, addr, source })
}

/// One line on stdout for whoever started the engine (the demo, the tests).
fn announce(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
