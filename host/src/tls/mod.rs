//! HTTPS on the engine's addresses: loading a certificate chain and its key from PEM
//! files, and reloading them without a restart ([`init`] makes a pair).
//!
//! Each HTTPS address has one [`Certificate`]: the pair in force, swapped whole when a
//! reload succeeds. A handshake reads it once, so connections and events in flight keep
//! the pair they started with, and new connections get the new one. A reload that
//! fails (a half-written file, a key of another certificate) keeps the old pair.

pub mod init;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::settings::TlsFiles;

/// Larger than any real chain or key; a bigger file is not one.
const MAX_PEM_BYTES: u64 = 1024 * 1024;
/// How often the files' metadata is compared, to notice a renewal.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Why a certificate and key pair cannot be used. Each message names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS {what} file {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the TLS {what} file {path} is larger than {MAX_PEM_BYTES} bytes: it is not a PEM {what}"
    )]
    TooLarge { what: &'static str, path: PathBuf },
    #[error("the TLS certificate file {path} holds no PEM certificate (a block starting -----BEGIN CERTIFICATE-----)")]
    NoCertificate { path: PathBuf },
    #[error("the TLS {what} file {path} is not valid PEM: {message}")]
    BadPem {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("the TLS key file {path} holds no private key (a PEM block starting -----BEGIN PRIVATE KEY----- (PKCS#8), -----BEGIN RSA PRIVATE KEY----- (PKCS#1) or -----BEGIN EC PRIVATE KEY----- (SEC1))")]
    NoKey { path: PathBuf },
    #[error("the TLS key file {path} holds a key that cannot be used: {message}")]
    BadKey { path: PathBuf, message: String },
    #[error("the TLS certificate file {path} holds a certificate that cannot be read: {message}")]
    BadCertificate { path: PathBuf, message: String },
    #[error("the certificate in {path} expired on {not_after}: renew it (or run `middleware-engine tls init --force`)")]
    Expired { path: PathBuf, not_after: String },
    #[error("the certificate in {path} is not valid before {not_before}: check the clock, or the certificate's dates")]
    NotYetValid { path: PathBuf, not_before: String },
    #[error("the key in {key} does not match the certificate in {cert}: give the key the certificate was issued for (the first certificate of the file is the server's)")]
    Mismatch { cert: PathBuf, key: PathBuf },
}

/// A pair read and checked: the chain (server's certificate first) and its key.
fn load_pair(files: &TlsFiles) -> Result<Arc<CertifiedKey>, TlsError> {
    let cert_pem = read_pem(&files.cert, "certificate")?;
    let key_pem = read_pem(&files.key, "key")?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(e, &files.cert, "certificate"))?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError::NoCertificate {
            path: files.cert.clone(),
        });
    };
    check_validity(leaf, &files.cert, SystemTime::now())?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoKey {
            path: files.key.clone(),
        },
        other => pem_error(other, &files.key, "key"),
    })?;
    let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key).map_err(|e| {
        TlsError::BadKey {
            path: files.key.clone(),
            message: e.to_string(),
        }
    })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(TlsError::Mismatch {
                cert: files.cert.clone(),
                key: files.key.clone(),
            })
        }
        Err(other) => {
            return Err(TlsError::BadCertificate {
                path: files.cert.clone(),
                message: other.to_string(),
            })
        }
    }
    Ok(Arc::new(certified))
}

/// For `check-config`: the pair loads; what it covers and until when.
pub fn check(files: &TlsFiles) -> Result<String, TlsError> {
    let pair = load_pair(files)?;
    let leaf = pair
        .end_entity_cert()
        .map_err(|e| TlsError::BadCertificate {
            path: files.cert.clone(),
            message: e.to_string(),
        })?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| {
        TlsError::BadCertificate {
            path: files.cert.clone(),
            message: e.to_string(),
        }
    })?;
    let names: Vec<String> = parsed
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .map(|name| match name {
                    x509_parser::extensions::GeneralName::DNSName(dns) => (*dns).to_owned(),
                    x509_parser::extensions::GeneralName::IPAddress(ip) => match ip.len() {
                        4 => <[u8; 4]>::try_from(*ip)
                            .map_or_else(|_| "?".into(), |b| std::net::IpAddr::from(b).to_string()),
                        16 => <[u8; 16]>::try_from(*ip)
                            .map_or_else(|_| "?".into(), |b| std::net::IpAddr::from(b).to_string()),
                        _ => "?".into(),
                    },
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(format!(
        "certificate {} for {} valid until {}",
        files.cert.display(),
        if names.is_empty() {
            "no names".to_owned()
        } else {
            names.join(", ")
        },
        parsed.validity().not_after
    ))
}

fn read_pem(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    use std::io::Read;
    let read_error = |source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(TlsError::TooLarge {
            what,
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

fn pem_error(error: pem::Error, path: &Path, what: &'static str) -> TlsError {
    match error {
        pem::Error::NoItemsFound if what == "certificate" => TlsError::NoCertificate {
            path: path.to_owned(),
        },
        other => TlsError::BadPem {
            what,
            path: path.to_owned(),
            message: other.to_string(),
        },
    }
}

/// Refuses a certificate outside its validity at `now`.
fn check_validity(leaf: &CertificateDer<'_>, path: &Path, now: SystemTime) -> Result<(), TlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| {
        TlsError::BadCertificate {
            path: path.to_owned(),
            message: e.to_string(),
        }
    })?;
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let validity = parsed.validity();
    if now > validity.not_after.timestamp() {
        return Err(TlsError::Expired {
            path: path.to_owned(),
            not_after: validity.not_after.to_string(),
        });
    }
    if now < validity.not_before.timestamp() {
        return Err(TlsError::NotYetValid {
            path: path.to_owned(),
            not_before: validity.not_before.to_string(),
        });
    }
    Ok(())
}

/// One address' pair in force; what its TLS handshakes present.
#[derive(Debug)]
pub struct Certificate {
    /// "event address" or "admin address", for the logs.
    what: &'static str,
    files: TlsFiles,
    current: RwLock<Arc<CertifiedKey>>,
}

impl Certificate {
    /// Reads the pair; an error here stops the start.
    pub fn load(what: &'static str, files: &TlsFiles) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(Self {
            what,
            files: files.clone(),
            current: RwLock::new(load_pair(files)?),
        }))
    }

    /// Reads the pair again; on success new connections get it, on failure the old
    /// pair stays and the error says why.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = load_pair(&self.files)?;
        match self.current.write() {
            Ok(mut current) => *current = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        Ok(())
    }

    /// The acceptor for this address: TLS 1.2 and 1.3, HTTP/1.1.
    pub fn acceptor(self: &Arc<Self>) -> Result<tokio_rustls::TlsAcceptor, rustls::Error> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }

    /// Which address this is.
    pub fn what(&self) -> &'static str {
        self.what
    }

    fn stamp(&self) -> Stamp {
        Stamp::of(&self.files)
    }
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(match self.current.read() {
            Ok(current) => Arc::clone(&current),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        })
    }
}

/// What is compared to notice a change of either file: written in place (size, time)
/// or replaced by a rename (another inode). Links are followed, as cert-manager swaps
/// a link to a new folder.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(Vec<Option<Identity>>);

/// Device, inode, length, modification time, change time (ns) of one file.
type Identity = (u64, u64, u64, Option<SystemTime>, i64);

impl Stamp {
    fn of(files: &TlsFiles) -> Self {
        Self(
            [&files.cert, &files.key]
                .iter()
                .map(|path| {
                    let meta = std::fs::metadata(path).ok()?;
                    Some(file_identity(&meta))
                })
                .collect(),
        )
    }
}

#[cfg(unix)]
fn file_identity(meta: &std::fs::Metadata) -> Identity {
    use std::os::unix::fs::MetadataExt;
    (
        meta.dev(),
        meta.ino(),
        meta.len(),
        meta.modified().ok(),
        meta.ctime_nsec() + meta.ctime() * 1_000_000_000,
    )
}

#[cfg(not(unix))]
fn file_identity(meta: &std::fs::Metadata) -> Identity {
    (0, 0, meta.len(), meta.modified().ok(), 0)
}

/// Reloads every HTTPS address' pair on SIGHUP and when its files change, until the
/// returned task is aborted. Always listens for SIGHUP, so that the signal never ends
/// the engine (its default action), even with no HTTPS address.
pub fn watch(certificates: Vec<Arc<Certificate>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(signal) => Some(signal),
            Err(e) => {
                tracing::error!("cannot listen for SIGHUP: {e}");
                None
            }
        };
        let mut stamps: Vec<Stamp> = certificates.iter().map(|c| c.stamp()).collect();
        let mut tick = tokio::time::interval(WATCH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            #[cfg(unix)]
            let signalled = async {
                match hangup.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let signalled = std::future::pending::<Option<()>>();
            tokio::select! {
                _ = signalled => {
                    crate::notify::reloading();
                    if certificates.is_empty() {
                        tracing::info!("SIGHUP: no HTTPS address, nothing to reload");
                    }
                    for (certificate, stamp) in certificates.iter().zip(stamps.iter_mut()) {
                        *stamp = certificate.stamp();
                        reload_logged(certificate, "SIGHUP");
                    }
                    crate::notify::ready();
                }
                _ = tick.tick() => {
                    for (certificate, stamp) in certificates.iter().zip(stamps.iter_mut()) {
                        let now = certificate.stamp();
                        // Tried once per change: a failed reload waits for the next
                        // change (the rest of a write) or a signal.
                        if now != *stamp {
                            *stamp = now;
                            reload_logged(certificate, "the files changed");
                        }
                    }
                }
            }
        }
    })
}

fn reload_logged(certificate: &Certificate, why: &str) {
    let cert = certificate.files.cert.display();
    match certificate.reload() {
        Ok(()) => tracing::info!(
            address = certificate.what, %cert, "{why}: TLS certificate reloaded; new connections get it"
        ),
        Err(e) => tracing::error!(
            address = certificate.what, %cert, "{why}: TLS certificate not reloaded, the previous one stays in use: {e}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed pair for localhost valid from `from` to `until` (years).
    fn pair(dir: &Path, name: &str, from: i32, until: i32) -> TlsFiles {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        params.not_before = rcgen::date_time_ymd(from, 1, 1);
        params.not_after = rcgen::date_time_ymd(until, 1, 1);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        let files = TlsFiles {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        };
        std::fs::write(&files.cert, cert.pem()).expect("write");
        std::fs::write(&files.key, key.serialize_pem()).expect("write");
        files
    }

    fn served(certificate: &Certificate) -> Vec<u8> {
        let current = certificate.current.read().expect("lock");
        current.cert[0].as_ref().to_vec()
    }

    fn first_der(path: &Path) -> Vec<u8> {
        let pem = std::fs::read(path).expect("read");
        CertificateDer::pem_slice_iter(&pem)
            .next()
            .expect("one")
            .expect("pem")
            .as_ref()
            .to_vec()
    }

    #[test]
    fn a_good_pair_loads_and_each_fault_names_its_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = pair(dir.path(), "good", 2000, 4000);
        let certificate = Certificate::load("event address", &good).expect("loads");
        assert_eq!(served(&certificate), first_der(&good.cert));

        let other = pair(dir.path(), "other", 2000, 4000);
        let mixed = TlsFiles {
            cert: good.cert.clone(),
            key: other.key.clone(),
        };
        let error = load_pair(&mixed).expect_err("mismatch").to_string();
        assert!(
            error.starts_with(&format!(
                "the key in {} does not match the certificate in {}",
                other.key.display(),
                good.cert.display()
            )),
            "{error}"
        );

        let expired = pair(dir.path(), "expired", 2000, 2001);
        let error = load_pair(&expired).expect_err("expired").to_string();
        assert!(
            error.starts_with(&format!(
                "the certificate in {} expired on",
                expired.cert.display()
            )),
            "{error}"
        );
        let early = pair(dir.path(), "early", 4000, 4001);
        let error = load_pair(&early).expect_err("not yet valid").to_string();
        assert!(error.contains("is not valid before"), "{error}");

        let text = dir.path().join("notes.txt");
        std::fs::write(&text, "not a certificate\n").expect("write");
        let as_cert = TlsFiles {
            cert: text.clone(),
            key: good.key.clone(),
        };
        assert!(
            matches!(load_pair(&as_cert), Err(TlsError::NoCertificate { path }) if path == text)
        );
        let as_key = TlsFiles {
            cert: good.cert.clone(),
            key: text.clone(),
        };
        assert!(matches!(load_pair(&as_key), Err(TlsError::NoKey { path }) if path == text));
        // The certificate given as the key: a PEM file, but no key in it.
        let cert_as_key = TlsFiles {
            cert: good.cert.clone(),
            key: good.cert.clone(),
        };
        assert!(matches!(
            load_pair(&cert_as_key),
            Err(TlsError::NoKey { .. })
        ));

        let missing = TlsFiles {
            cert: dir.path().join("gone.crt"),
            key: good.key.clone(),
        };
        let error = load_pair(&missing).expect_err("missing").to_string();
        assert!(
            error.starts_with(&format!(
                "cannot read the TLS certificate file {}",
                dir.path().join("gone.crt").display()
            )),
            "{error}"
        );
        // A half-written certificate: the PEM block is cut.
        let pem = std::fs::read_to_string(&good.cert).expect("read");
        let cut = dir.path().join("cut.crt");
        std::fs::write(&cut, &pem[..pem.len() / 2]).expect("write");
        let half = TlsFiles {
            cert: cut,
            key: good.key.clone(),
        };
        assert!(load_pair(&half).is_err());
    }

    #[test]
    fn a_failed_reload_keeps_the_pair_in_force_and_a_good_one_replaces_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = pair(dir.path(), "server", 2000, 4000);
        let certificate = Certificate::load("event address", &files).expect("loads");
        let before = served(&certificate);
        let stamp = certificate.stamp();

        // A new certificate written before its key: they do not match yet.
        let next = pair(dir.path(), "next", 2000, 4000);
        std::fs::copy(&next.cert, &files.cert).expect("copy");
        assert!(matches!(
            certificate.reload(),
            Err(TlsError::Mismatch { .. })
        ));
        assert_eq!(served(&certificate), before, "the old pair stays");
        assert_ne!(certificate.stamp(), stamp, "the change is seen");

        // Its key arrives by a rename, as certbot and cert-manager do.
        let staged = dir.path().join("server.key.new");
        std::fs::copy(&next.key, &staged).expect("copy");
        std::fs::rename(&staged, &files.key).expect("rename");
        certificate.reload().expect("reloads");
        assert_eq!(served(&certificate), first_der(&next.cert));
    }
}
