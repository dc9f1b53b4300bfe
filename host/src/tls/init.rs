//! `middleware-engine tls init`: a private CA and a server certificate it signs.
//!
//! Appliances posting outbound events to an on-premises engine over HTTPS trust the
//! engine's certificate through a CA root uploaded to them ("Use a CA Certificate").
//! This makes that CA and a server pair under `<data>/tls/`; `--force` replaces the
//! server pair and keeps a CA that is still good, so appliances keep trusting.

use std::fmt;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, SanType,
    PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use crate::settings::HostSettings;

pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const SERVER_CERT: &str = "server.crt";
pub const SERVER_KEY: &str = "server.key";

const DAY: u64 = 24 * 60 * 60;
/// Clocks of the appliance and the engine's host may differ a little.
const BACKDATE: u64 = 5 * 60;
const CA_VALIDITY: u64 = 3652 * DAY;
/// The longest validity Apple platforms accept for a TLS server certificate.
const SERVER_VALIDITY: u64 = 825 * DAY;

const FOLDER_MODE: u32 = 0o700;
const KEY_MODE: u32 = 0o600;
const CERT_MODE: u32 = 0o644;

/// What went wrong; each message names the file or argument and what to do.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(
        "no name to put in the certificate: pass --hostname NAME (the DNS name appliances \
         reach the engine by) and/or --ip ADDR, each as often as needed"
    )]
    NoNames,
    #[error("--hostname {name:?} {fault}")]
    BadHostname { name: String, fault: HostnameFault },
    #[error(
        "{} already exists: pass --force to replace the server certificate (a CA that is \
         still good is kept)",
        .0.display()
    )]
    Exists(PathBuf),
    #[error(
        "the data folder {} is not valid UTF-8, which the settings file cannot hold: use \
         another data folder",
        .0.display()
    )]
    NotUtf8(PathBuf),
    #[error("cannot create the folder {}: {source} (check its parent's owner and permissions)", path.display())]
    CreateFolder {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {}: {source} (run as the data folder's owner or as root)", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {}: {source} (run as the data folder's owner or as root)", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot give {} to the data folder's owner (uid {uid}, gid {gid}): {source}", path.display())]
    Chown {
        path: PathBuf,
        uid: u32,
        gid: u32,
        source: std::io::Error,
    },
    #[error("the system clock is before 1970: set the clock and run again")]
    Clock,
    #[error("making the certificate failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("the new server certificate does not verify against its CA: {0}")]
    Verify(String),
}

impl InitError {
    /// 2 for arguments to fix (as for other usage errors), 1 otherwise.
    fn exit_code(&self) -> ExitCode {
        match self {
            InitError::NoNames | InitError::BadHostname { .. } => ExitCode::from(2),
            _ => ExitCode::FAILURE,
        }
    }
}

/// Why a `--hostname` is not a DNS name a certificate can hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostnameFault {
    Empty,
    Url,
    Path,
    Port,
    IpAddress,
    TooLong,
    EmptyLabel,
    LabelTooLong,
    NotAscii,
    BadCharacter(char),
    HyphenAtEdge,
    Wildcard,
    Numeric,
}

impl fmt::Display for HostnameFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Self::Empty => "is empty: give a DNS name such as engine.example.com".to_owned(),
            Self::Url => "is a URL: give the host name only, such as engine.example.com".to_owned(),
            Self::Path => "holds a path: give the host name only".to_owned(),
            Self::Port => {
                "holds a port: give the host name only (a certificate does not name ports)"
                    .to_owned()
            }
            Self::IpAddress => "is an IP address: pass it with --ip".to_owned(),
            Self::TooLong => "is longer than 253 characters".to_owned(),
            Self::EmptyLabel => {
                "has an empty label (two dots in a row, or a leading dot)".to_owned()
            }
            Self::LabelTooLong => "has a label longer than 63 characters".to_owned(),
            Self::NotAscii => "is not ASCII: give its punycode form (xn--...)".to_owned(),
            Self::BadCharacter(c) => {
                format!("holds {c:?}: a DNS name has letters, digits, hyphens and dots only")
            }
            Self::HyphenAtEdge => "has a label starting or ending with a hyphen".to_owned(),
            Self::Wildcard => {
                "has a misplaced '*': a wildcard is the whole first label of a name with at \
                 least two more, as in *.example.com"
                    .to_owned()
            }
            Self::Numeric => "ends in a numeric label, so it is not a DNS name".to_owned(),
        };
        f.write_str(&text)
    }
}

/// Checks a `--hostname` and returns it in the form the certificate holds (lower case,
/// without a trailing dot).
pub fn validate_hostname(name: &str) -> Result<String, HostnameFault> {
    if name.is_empty() {
        return Err(HostnameFault::Empty);
    }
    if name.contains("://") {
        return Err(HostnameFault::Url);
    }
    if name.contains('/') {
        return Err(HostnameFault::Path);
    }
    if name.parse::<IpAddr>().is_ok()
        || name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .is_some_and(|n| n.parse::<IpAddr>().is_ok())
    {
        return Err(HostnameFault::IpAddress);
    }
    if name.contains(':') {
        return Err(HostnameFault::Port);
    }
    if !name.is_ascii() {
        return Err(HostnameFault::NotAscii);
    }
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    if name.len() > 253 {
        return Err(HostnameFault::TooLong);
    }
    let labels: Vec<&str> = name.split('.').collect();
    for (i, label) in labels.iter().enumerate() {
        if label.is_empty() {
            return Err(HostnameFault::EmptyLabel);
        }
        if *label == "*" {
            if i == 0 && labels.len() >= 3 {
                continue;
            }
            return Err(HostnameFault::Wildcard);
        }
        if label.len() > 63 {
            return Err(HostnameFault::LabelTooLong);
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(if c == '*' {
                HostnameFault::Wildcard
            } else {
                HostnameFault::BadCharacter(c)
            });
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(HostnameFault::HyphenAtEdge);
        }
    }
    if labels
        .last()
        .is_some_and(|l| l.chars().all(|c| c.is_ascii_digit()))
    {
        return Err(HostnameFault::Numeric);
    }
    Ok(name)
}

/// The names the server certificate is for, checked and without repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
}

impl Names {
    pub fn new(hostnames: &[String], ips: &[IpAddr]) -> Result<Self, InitError> {
        if hostnames.is_empty() && ips.is_empty() {
            return Err(InitError::NoNames);
        }
        let mut dns = Vec::new();
        for name in hostnames {
            let checked = validate_hostname(name).map_err(|fault| InitError::BadHostname {
                name: name.clone(),
                fault,
            })?;
            if !dns.contains(&checked) {
                dns.push(checked);
            }
        }
        let mut unique = Vec::new();
        for ip in ips {
            if !unique.contains(ip) {
                unique.push(*ip);
            }
        }
        Ok(Self { dns, ips: unique })
    }

    /// The certificate's common name: the first name given.
    fn first(&self) -> String {
        match (self.dns.first(), self.ips.first()) {
            (Some(name), _) => name.clone(),
            (None, Some(ip)) => ip.to_string(),
            (None, None) => String::new(),
        }
    }

    /// A name an appliance's URL can hold: a wildcard only when nothing else is given.
    fn url_host(&self) -> String {
        if let Some(name) = self.dns.iter().find(|n| !n.starts_with("*.")) {
            return name.clone();
        }
        if let Some(ip) = self.ips.first() {
            return match ip {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(v6) => format!("[{v6}]"),
            };
        }
        self.first().replacen('*', "<name>", 1)
    }

    /// A name to check the new certificate against, as a client would.
    fn check_name(&self) -> String {
        if let Some(name) = self.dns.iter().find(|n| !n.starts_with("*.")) {
            return name.clone();
        }
        if let Some(ip) = self.ips.first() {
            return ip.to_string();
        }
        self.first().replacen('*', "check", 1)
    }

    fn list(&self) -> String {
        self.dns
            .iter()
            .cloned()
            .chain(self.ips.iter().map(IpAddr::to_string))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What happened to the CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaOutcome {
    Created,
    Kept,
    /// A new CA replaced one that could not be kept, for this reason.
    Replaced(String),
}

/// What `init` did, for the printed instructions.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub tls_dir: PathBuf,
    pub ca: CaOutcome,
    pub ca_not_after: i64,
    pub server_not_after: i64,
    /// The server pair replaced an earlier one.
    pub server_replaced: bool,
    pub names: Names,
    /// The user and group the files were given to (the data folder's owner).
    pub owner: Option<(u32, u32)>,
}

impl Outcome {
    pub fn file(&self, name: &str) -> PathBuf {
        self.tls_dir.join(name)
    }

    /// The text printed after a successful run.
    pub fn render(&self, event_port: u16) -> String {
        let ca_crt = self.file(CA_CERT);
        let ca_until = date(self.ca_not_after);
        let mut out = String::new();
        match &self.ca {
            CaOutcome::Created => out.push_str(&format!(
                "Created {} (private CA, valid until {ca_until})\n",
                ca_crt.display()
            )),
            CaOutcome::Kept => out.push_str(&format!(
                "Kept {} (private CA, valid until {ca_until}): appliances that trust it \
                 keep trusting the new certificate\n",
                ca_crt.display()
            )),
            CaOutcome::Replaced(reason) => out.push_str(&format!(
                "Replaced {} with a new private CA (valid until {ca_until}) because {reason}: \
                 upload the new CA to every appliance again\n",
                ca_crt.display()
            )),
        }
        out.push_str(&format!(
            "{} {} and {} for {} (valid until {})\n",
            if self.server_replaced {
                "Replaced"
            } else {
                "Created"
            },
            self.file(SERVER_CERT).display(),
            SERVER_KEY,
            self.names.list(),
            date(self.server_not_after)
        ));
        if let Some((uid, gid)) = self.owner {
            out.push_str(&format!(
                "Gave {} and its files to uid {uid}, gid {gid} (the data folder's owner), so \
                 the engine's service can read its key\n",
                self.tls_dir.display()
            ));
        }
        out.push_str(&format!(
            "\nAdd to the settings file (engine.toml):\n  event_tls_cert = {}\n  event_tls_key = {}\n\
             (admin_tls_cert / admin_tls_key take the same pair for the admin page.)\n\
             Then restart the engine, or send SIGHUP if it already serves HTTPS.\n",
            toml_path(&self.file(SERVER_CERT)),
            toml_path(&self.file(SERVER_KEY)),
        ));
        out.push_str(&format!(
            "\nOn the appliance (/login > Management > Outbound Events > HTTP Recipients): set \
             the URL to https://{}:{event_port}/ERSPost?appliance=<Appliance Id>, check \"Use a \
             CA Certificate\" and upload {}.\n\
             BeyondTrust Cloud sends events only to https on port 443: set event_listen = \
             \"0.0.0.0:443\" and leave the port out of the URL.\n",
            self.names.url_host(),
            ca_crt.display()
        ));
        out
    }
}

fn toml_path(path: &Path) -> String {
    toml::Value::String(path.to_string_lossy().into_owned()).to_string()
}

fn date(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| unix.to_string())
}

/// The command: writes the pair under `<data>/tls/` and prints the settings to add.
pub fn cli(settings: &HostSettings, hostnames: &[String], ips: &[IpAddr], force: bool) -> ExitCode {
    let result = Names::new(hostnames, ips).and_then(|names| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| InitError::Clock)?
            .as_secs();
        init(&settings.data_dir, &names, force, now)
    });
    match result {
        Ok(outcome) => {
            print!("{}", outcome.render(settings.event_listen.port()));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("middleware-engine: {e}");
            e.exit_code()
        }
    }
}

/// Makes the files under `<data_dir>/tls/` at `now` (Unix seconds).
pub fn init(data_dir: &Path, names: &Names, force: bool, now: u64) -> Result<Outcome, InitError> {
    create_folder(data_dir)?;
    let data_dir = std::fs::canonicalize(data_dir).map_err(|source| InitError::Read {
        path: data_dir.to_owned(),
        source,
    })?;
    if data_dir.to_str().is_none() {
        return Err(InitError::NotUtf8(data_dir));
    }
    let tls_dir = data_dir.join("tls");
    let file = |name: &str| tls_dir.join(name);

    if !force {
        let earlier = [CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY]
            .iter()
            .map(|n| file(n))
            .find(|p| p.symlink_metadata().is_ok());
        if let Some(path) = earlier {
            return Err(InitError::Exists(path));
        }
    }
    let server_replaced =
        file(SERVER_CERT).symlink_metadata().is_ok() || file(SERVER_KEY).symlink_metadata().is_ok();

    let server_not_before = now.saturating_sub(BACKDATE);
    let server_not_after = server_not_before + SERVER_VALIDITY;

    // A CA kept only when it signs a server certificate that verifies against it.
    let (kept, replaced_reason) = if force {
        match load_ca(&file(CA_CERT), &file(CA_KEY), now, server_not_after)? {
            LoadedCa::Usable(ca) => {
                let server = make_server(names, &ca.issuer, server_not_before, server_not_after)?;
                match verify(&server.cert_der, &ca.der, names, now) {
                    Ok(()) => (Some((ca, server)), None),
                    Err(e) => (
                        None,
                        Some(format!("it does not verify what it signs ({e})")),
                    ),
                }
            }
            LoadedCa::Unusable(reason) => (None, Some(reason)),
            LoadedCa::Missing => (None, None),
        }
    } else {
        (None, None)
    };

    create_folder(&tls_dir)?;
    tighten(&tls_dir, FOLDER_MODE)?;
    let owner = data_owner(&data_dir)?;
    if let Some((uid, gid)) = owner {
        chown(&tls_dir, uid, gid)?;
    }

    let (ca_outcome, ca_not_after, ca_der, server) = match kept {
        Some((ca, server)) => {
            // Left as they are, but with the modes and owner a fresh run gives them.
            tighten(&file(CA_KEY), KEY_MODE)?;
            if let Some((uid, gid)) = owner {
                chown(&file(CA_KEY), uid, gid)?;
                chown(&file(CA_CERT), uid, gid)?;
            }
            (CaOutcome::Kept, ca.not_after, ca.der, server)
        }
        None => {
            let ca_not_after = (now + CA_VALIDITY) as i64;
            let ca = make_ca(names, server_not_before, now + CA_VALIDITY)?;
            let server = make_server(names, &ca, server_not_before, server_not_after)?;
            verify(&server.cert_der, ca.der(), names, now).map_err(InitError::Verify)?;
            write_atomic(
                &file(CA_KEY),
                ca.key().serialize_pem().as_bytes(),
                KEY_MODE,
                owner,
            )?;
            write_atomic(&file(CA_CERT), ca.pem().as_bytes(), CERT_MODE, owner)?;
            let outcome = match replaced_reason {
                Some(reason) => CaOutcome::Replaced(reason),
                None => CaOutcome::Created,
            };
            (outcome, ca_not_after, ca.der().clone(), server)
        }
    };

    // Key before certificate: a watching engine keeps its old pair until both match.
    write_atomic(
        &file(SERVER_KEY),
        server.key_pem.as_bytes(),
        KEY_MODE,
        owner,
    )?;
    let chain = format!(
        "{}{}",
        pem("CERTIFICATE", &server.cert_der),
        pem("CERTIFICATE", &ca_der)
    );
    write_atomic(&file(SERVER_CERT), chain.as_bytes(), CERT_MODE, owner)?;

    Ok(Outcome {
        tls_dir,
        ca: ca_outcome,
        ca_not_after,
        server_not_after: server_not_after as i64,
        server_replaced,
        names: names.clone(),
        owner,
    })
}

struct LoadedIssuer {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
    not_after: i64,
}

enum LoadedCa {
    Missing,
    Unusable(String),
    Usable(Box<LoadedIssuer>),
}

/// Reads the CA of an earlier run. Files that cannot be read are an error (replacing
/// a CA by mistake means uploading again); files that are not a usable CA are a reason.
fn load_ca(
    cert_path: &Path,
    key_path: &Path,
    now: u64,
    needed_until: u64,
) -> Result<LoadedCa, InitError> {
    let read = |path: &Path| match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(InitError::Read {
            path: path.to_owned(),
            source,
        }),
    };
    let (cert_pem, key_pem) = match (read(cert_path)?, read(key_path)?) {
        (None, None) => return Ok(LoadedCa::Missing),
        (Some(c), Some(k)) => (c, k),
        (None, Some(_)) => return Ok(LoadedCa::Unusable(format!("{CA_CERT} was missing"))),
        (Some(_), None) => return Ok(LoadedCa::Unusable(format!("{CA_KEY} was missing"))),
    };
    let unusable = |why: &str| Ok(LoadedCa::Unusable(why.to_owned()));
    let Ok(der) = CertificateDer::from_pem_slice(&cert_pem) else {
        return unusable(&format!("{CA_CERT} holds no PEM certificate"));
    };
    let Ok((_, x509)) = x509_parser::parse_x509_certificate(&der) else {
        return unusable(&format!("{CA_CERT} is not a readable certificate"));
    };
    if !x509.is_ca() {
        return unusable(&format!("{CA_CERT} is not a CA certificate"));
    }
    let not_after = x509.validity().not_after.timestamp();
    if x509.validity().not_before.timestamp() > now as i64 || not_after < now as i64 {
        return unusable(&format!("{CA_CERT} is not valid now"));
    }
    if not_after < needed_until as i64 {
        return unusable(&format!(
            "{CA_CERT} expires on {}, before the new server certificate would",
            date(not_after)
        ));
    }
    let Ok(key_text) = std::str::from_utf8(&key_pem) else {
        return unusable(&format!("{CA_KEY} is not a PEM private key"));
    };
    // The error is not shown: it is about the key's contents.
    let Ok(key) = KeyPair::from_pem(key_text) else {
        return unusable(&format!(
            "{CA_KEY} is not a PEM private key this engine can use"
        ));
    };
    use rcgen::PublicKeyData;
    if key.subject_public_key_info() != x509.public_key().raw {
        return unusable(&format!("{CA_KEY} does not belong to {CA_CERT}"));
    }
    let Some(subject) = distinguished_name(x509.subject()) else {
        return unusable(&format!(
            "{CA_CERT}'s subject cannot be copied into a new certificate"
        ));
    };
    let key_id = x509
        .iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(id) => {
                Some(id.0.to_vec())
            }
            _ => None,
        });
    // Issuer::from_ca_cert_pem needs rcgen's x509-parser feature; these are its parts.
    let mut params = CertificateParams::default();
    params.distinguished_name = subject;
    if let Some(id) = key_id {
        params.key_identifier_method = KeyIdMethod::PreSpecified(id);
    }
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let der = CertificateDer::from(der.to_vec());
    Ok(LoadedCa::Usable(Box::new(LoadedIssuer {
        issuer: Issuer::new(params, key),
        der,
        not_after,
    })))
}

/// The subject as rcgen writes it; `None` for forms it cannot write back the same.
fn distinguished_name(name: &x509_parser::x509::X509Name<'_>) -> Option<DistinguishedName> {
    use x509_parser::der_parser::asn1_rs::Tag;
    let mut dn = DistinguishedName::new();
    for rdn in name.iter() {
        let mut attrs = rdn.iter();
        let attr = attrs.next()?;
        if attrs.next().is_some() {
            return None;
        }
        let oid: Vec<u64> = attr.attr_type().iter()?.collect();
        let ty = DnType::from_oid(&oid);
        if dn.get(&ty).is_some() {
            return None;
        }
        let text = std::str::from_utf8(attr.attr_value().data).ok()?;
        let value = match attr.attr_value().header.tag() {
            Tag::Utf8String => DnValue::Utf8String(text.to_owned()),
            Tag::PrintableString => DnValue::PrintableString(text.try_into().ok()?),
            Tag::Ia5String => DnValue::Ia5String(text.try_into().ok()?),
            _ => return None,
        };
        dn.push(ty, value);
    }
    Some(dn)
}

/// Unix seconds as the time type rcgen's parameters use.
macro_rules! at {
    ($secs:expr) => {
        rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs($secs)
    };
}

fn make_ca(
    names: &Names,
    not_before: u64,
    not_after: u64,
) -> Result<CertifiedIssuer<'static, KeyPair>, InitError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        format!("Middleware Engine private CA ({})", names.first()),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = at!(not_before);
    params.not_after = at!(not_after);
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    Ok(CertifiedIssuer::self_signed(params, key)?)
}

struct Server {
    cert_der: CertificateDer<'static>,
    key_pem: String,
}

fn make_server(
    names: &Names,
    issuer: &Issuer<'_, KeyPair>,
    not_before: u64,
    not_after: u64,
) -> Result<Server, InitError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, names.first());
    params.distinguished_name = dn;
    params.subject_alt_names = names
        .dns
        .iter()
        .map(|n| Ok(SanType::DnsName(n.as_str().try_into()?)))
        .chain(names.ips.iter().map(|ip| Ok(SanType::IpAddress(*ip))))
        .collect::<Result<_, rcgen::Error>>()?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = at!(not_before);
    params.not_after = at!(not_after);
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let cert = params.signed_by(&key, issuer)?;
    Ok(Server {
        cert_der: cert.der().clone(),
        key_pem: key.serialize_pem(),
    })
}

/// Checks the server certificate as a TLS client trusting only the CA would.
fn verify(
    server: &CertificateDer<'_>,
    ca: &CertificateDer<'_>,
    names: &Names,
    now: u64,
) -> Result<(), String> {
    use rustls::client::danger::ServerCertVerifier;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(ca.clone().into_owned())
        .map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(names.check_name()).map_err(|e| e.to_string())?;
    verifier
        .verify_server_cert(
            server,
            &[],
            &name,
            &[],
            UnixTime::since_unix_epoch(Duration::from_secs(now)),
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let text = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in text.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Whose the files should be: when root makes them in a data folder owned by another
/// user (the service's), that user's, or the service could not read its key.
pub fn owner_to_give(euid: u32, data_uid: u32, data_gid: u32) -> Option<(u32, u32)> {
    (euid == 0 && data_uid != 0).then_some((data_uid, data_gid))
}

#[cfg(unix)]
fn data_owner(data_dir: &Path) -> Result<Option<(u32, u32)>, InitError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(data_dir).map_err(|source| InitError::Read {
        path: data_dir.to_owned(),
        source,
    })?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    Ok(owner_to_give(euid, meta.uid(), meta.gid()))
}

#[cfg(not(unix))]
fn data_owner(_data_dir: &Path) -> Result<Option<(u32, u32)>, InitError> {
    Ok(None)
}

#[cfg(unix)]
fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), InitError> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|source| InitError::Chown {
        path: path.to_owned(),
        uid,
        gid,
        source,
    })
}

#[cfg(not(unix))]
fn chown(_path: &Path, _uid: u32, _gid: u32) -> Result<(), InitError> {
    Ok(())
}

/// Creates the folder (0700) if missing.
fn create_folder(path: &Path) -> Result<(), InitError> {
    let fail = |source| InitError::CreateFolder {
        path: path.to_owned(),
        source,
    };
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(FOLDER_MODE);
    }
    builder.create(path).map_err(fail)
}

/// Sets `mode` when the current permissions are looser.
#[cfg(unix)]
fn tighten(path: &Path, mode: u32) -> Result<(), InitError> {
    use std::os::unix::fs::PermissionsExt;
    let fail = |source| InitError::Write {
        path: path.to_owned(),
        source,
    };
    let current = std::fs::metadata(path).map_err(fail)?.permissions().mode() & 0o777;
    if current & !mode != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(fail)?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn tighten(_path: &Path, _mode: u32) -> Result<(), InitError> {
    Ok(())
}

/// Writes through a temporary file in the same folder, with its final mode and owner,
/// renamed over `path`: a watching engine never reads half a file.
fn write_atomic(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<(), InitError> {
    let fail = |source| InitError::Write {
        path: path.to_owned(),
        source,
    };
    let folder = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = folder.join(format!(".{name}.{}.tmp", std::process::id()));
    match std::fs::remove_file(&temp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(fail(e)),
        _ => {}
    }
    let result = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(mode);
        }
        let mut file = options.open(&temp)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            // The umask may have cleared bits a certificate needs (0644).
            file.set_permissions(std::fs::Permissions::from_mode(mode))?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
            }
        }
        #[cfg(not(unix))]
        let _ = (mode, owner);
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&temp, path)?;
        #[cfg(unix)]
        std::fs::File::open(folder)?.sync_all()?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result.map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn names(dns: &[&str], ips: &[&str]) -> Names {
        Names::new(
            &dns.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            &ips.iter()
                .map(|s| s.parse().expect("ip"))
                .collect::<Vec<_>>(),
        )
        .expect("names")
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs()
    }

    fn read(dir: &Path, name: &str) -> Vec<u8> {
        std::fs::read(dir.join("tls").join(name)).expect("read")
    }

    fn certs(pem: &[u8]) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .expect("pem")
    }

    /// Verifies server.crt's leaf against ca.crt for `name`.
    fn verifies(dir: &Path, name: &str) -> Result<(), String> {
        let chain = certs(&read(dir, SERVER_CERT));
        let ca = certs(&read(dir, CA_CERT));
        use rustls::client::danger::ServerCertVerifier;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca[0].clone()).expect("root");
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        )
        .build()
        .expect("verifier");
        let server_name = ServerName::try_from(name.to_owned()).expect("name");
        verifier
            .verify_server_cert(&chain[0], &chain[1..], &server_name, &[], UnixTime::now())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_server_certificate_verifies_against_the_ca_for_every_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let n = names(
            &["engine.example.com", "*.apps.example.com"],
            &["10.0.0.5", "::1"],
        );
        let outcome = init(dir.path(), &n, false, now()).expect("init");
        assert_eq!(outcome.ca, CaOutcome::Created);
        for name in [
            "engine.example.com",
            "x.apps.example.com",
            "10.0.0.5",
            "::1",
        ] {
            verifies(dir.path(), name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert!(verifies(dir.path(), "other.example.com").is_err());

        let chain = certs(&read(dir.path(), SERVER_CERT));
        assert_eq!(
            chain.len(),
            2,
            "server.crt holds the server and the CA certificate"
        );
        assert_eq!(chain[1], certs(&read(dir.path(), CA_CERT))[0]);
        let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).expect("x509");
        let san = leaf
            .subject_alternative_name()
            .expect("san")
            .expect("san present");
        use x509_parser::extensions::GeneralName;
        let (mut dns, mut ips) = (Vec::new(), Vec::new());
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => dns.push(d.to_string()),
                GeneralName::IPAddress(b) => ips.push(b.to_vec()),
                other => panic!("unexpected SAN {other:?}"),
            }
        }
        assert_eq!(dns, ["engine.example.com", "*.apps.example.com"]);
        let loopback6 = "::1".parse::<std::net::Ipv6Addr>().expect("ip").octets();
        assert_eq!(ips, [vec![10, 0, 0, 5], loopback6.to_vec()]);
        assert!(!leaf.is_ca());
        let cn = leaf.subject().iter_common_name().next().expect("cn");
        assert_eq!(cn.as_str().expect("cn text"), "engine.example.com");
        let days = (leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp())
            / DAY as i64;
        assert_eq!(days, 825);

        let (_, ca) = x509_parser::parse_x509_certificate(&chain[1]).expect("x509");
        assert!(ca.is_ca());
        let ca_cn = ca.subject().iter_common_name().next().expect("cn");
        assert_eq!(
            ca_cn.as_str().expect("cn text"),
            "Middleware Engine private CA (engine.example.com)"
        );
        // Both keys are PKCS#8.
        for key in [CA_KEY, SERVER_KEY] {
            let text = String::from_utf8(read(dir.path(), key)).expect("utf8");
            assert!(text.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
        }
    }

    #[test]
    fn the_engine_loads_the_pair() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outcome = init(
            dir.path(),
            &names(&["localhost"], &["127.0.0.1"]),
            false,
            now(),
        )
        .expect("init");
        let files = crate::settings::TlsFiles {
            cert: outcome.file(SERVER_CERT),
            key: outcome.file(SERVER_KEY),
        };
        let summary = crate::tls::check(&files).expect("loads");
        assert!(summary.contains("localhost, 127.0.0.1"), "{summary}");
    }

    #[cfg(unix)]
    #[test]
    fn modes_are_owner_only_for_keys_and_the_folder() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        init(dir.path(), &names(&["localhost"], &[]), false, now()).expect("init");
        let mode = |p: PathBuf| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        let tls = dir.path().join("tls");
        assert_eq!(mode(tls.clone()), 0o700);
        assert_eq!(mode(tls.join(CA_KEY)), 0o600);
        assert_eq!(mode(tls.join(SERVER_KEY)), 0o600);
        assert_eq!(mode(tls.join(CA_CERT)), 0o644);
        assert_eq!(mode(tls.join(SERVER_CERT)), 0o644);
        // No temporary file is left behind.
        let entries = std::fs::read_dir(&tls).expect("list").count();
        assert_eq!(entries, 4);
    }

    #[test]
    fn an_earlier_run_is_not_overwritten_without_force() {
        let dir = tempfile::tempdir().expect("tempdir");
        let n = names(&["localhost"], &[]);
        init(dir.path(), &n, false, now()).expect("init");
        let before = read(dir.path(), SERVER_KEY);
        let err = init(dir.path(), &n, false, now()).expect_err("refused");
        assert!(matches!(err, InitError::Exists(_)), "{err}");
        assert!(err.to_string().contains("ca.crt"), "{err}");
        assert!(err.to_string().contains("--force"), "{err}");
        assert_eq!(read(dir.path(), SERVER_KEY), before);

        // Any one of the four files is enough to refuse.
        let other = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(other.path().join("tls")).expect("mkdir");
        std::fs::write(other.path().join("tls").join(SERVER_KEY), "x").expect("write");
        let err = init(other.path(), &n, false, now()).expect_err("refused");
        assert!(err.to_string().contains("server.key"), "{err}");
    }

    #[test]
    fn force_keeps_a_good_ca_and_replaces_the_server_pair() {
        let dir = tempfile::tempdir().expect("tempdir");
        let n = names(&["engine.example.com"], &["10.0.0.5"]);
        init(dir.path(), &n, false, now()).expect("init");
        let ca_before = read(dir.path(), CA_CERT);
        let ca_key_before = read(dir.path(), CA_KEY);
        let server_before = read(dir.path(), SERVER_CERT);
        let key_before = read(dir.path(), SERVER_KEY);

        let more = names(&["engine.example.com", "mwe.example.com"], &["10.0.0.5"]);
        let outcome = init(dir.path(), &more, true, now()).expect("force");
        assert_eq!(outcome.ca, CaOutcome::Kept);
        assert!(outcome.server_replaced);
        assert_eq!(read(dir.path(), CA_CERT), ca_before);
        assert_eq!(read(dir.path(), CA_KEY), ca_key_before);
        assert_ne!(read(dir.path(), SERVER_CERT), server_before);
        assert_ne!(read(dir.path(), SERVER_KEY), key_before);
        verifies(dir.path(), "mwe.example.com").expect("chains to the same CA");
        assert!(outcome.render(8180).contains("Kept "));
    }

    #[test]
    fn force_makes_a_new_ca_when_the_old_one_is_not_usable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let n = names(&["localhost"], &[]);
        init(dir.path(), &n, false, now()).expect("init");
        let ca_before = read(dir.path(), CA_CERT);

        // A CA key that does not belong to the CA.
        let other = tempfile::tempdir().expect("tempdir");
        init(other.path(), &n, false, now()).expect("init");
        std::fs::write(
            dir.path().join("tls").join(CA_KEY),
            read(other.path(), CA_KEY),
        )
        .expect("write");
        let outcome = init(dir.path(), &n, true, now()).expect("force");
        match &outcome.ca {
            CaOutcome::Replaced(reason) => assert!(reason.contains("does not belong"), "{reason}"),
            other => panic!("{other:?}"),
        }
        assert!(outcome.render(8180).contains("upload the new CA"));
        assert_ne!(read(dir.path(), CA_CERT), ca_before);
        verifies(dir.path(), "localhost").expect("chains to the new CA");

        // A CA that ends before the new server certificate would.
        let later = now() + 3000 * DAY;
        let outcome = init(dir.path(), &n, true, later).expect("force");
        match &outcome.ca {
            CaOutcome::Replaced(reason) => assert!(reason.contains("expires"), "{reason}"),
            other => panic!("{other:?}"),
        }

        // Without a CA at all.
        let bare = tempfile::tempdir().expect("tempdir");
        let outcome = init(bare.path(), &n, true, NOW).expect("force");
        assert_eq!(outcome.ca, CaOutcome::Created);
        assert!(!outcome.server_replaced);
    }

    #[test]
    fn names_are_required() {
        let err = Names::new(&[], &[]).expect_err("refused");
        assert!(err.to_string().contains("--hostname"), "{err}");
        assert!(err.to_string().contains("--ip"), "{err}");
    }

    #[test]
    fn bad_hostnames_are_refused_by_name() {
        for (bad, fault) in [
            ("https://engine.example.com", HostnameFault::Url),
            ("engine.example.com/ERSPost", HostnameFault::Path),
            ("engine.example.com:8180", HostnameFault::Port),
            ("10.0.0.5", HostnameFault::IpAddress),
            ("[::1]", HostnameFault::IpAddress),
            ("", HostnameFault::Empty),
            ("a..b", HostnameFault::EmptyLabel),
            ("-a.example.com", HostnameFault::HyphenAtEdge),
            ("a_b.example.com", HostnameFault::BadCharacter('_')),
            ("engine example.com", HostnameFault::BadCharacter(' ')),
            ("*.com", HostnameFault::Wildcard),
            ("a.*.example.com", HostnameFault::Wildcard),
            ("a*.example.com", HostnameFault::Wildcard),
            ("bücher.example", HostnameFault::NotAscii),
            ("1.2.3.4.5", HostnameFault::Numeric),
        ] {
            assert_eq!(validate_hostname(bad), Err(fault), "{bad:?}");
        }
        let long = format!("{}.example.com", "a".repeat(64));
        assert_eq!(validate_hostname(&long), Err(HostnameFault::LabelTooLong));

        let err = Names::new(
            &["ok.example.com".into(), "https://x.example.com".into()],
            &[],
        )
        .expect_err("refused");
        assert!(err.to_string().contains("https://x.example.com"), "{err}");
        assert!(err.to_string().contains("host name only"), "{err}");
    }

    #[test]
    fn good_hostnames_are_kept_in_certificate_form() {
        assert_eq!(validate_hostname("localhost").as_deref(), Ok("localhost"));
        assert_eq!(
            validate_hostname("Engine.Example.COM.").as_deref(),
            Ok("engine.example.com")
        );
        assert_eq!(
            validate_hostname("*.example.com").as_deref(),
            Ok("*.example.com")
        );
        assert_eq!(
            validate_hostname("xn--bcher-kva.example").as_deref(),
            Ok("xn--bcher-kva.example")
        );
        let n = names(
            &["a.example.com", "A.example.com"],
            &["10.0.0.5", "10.0.0.5"],
        );
        assert_eq!(n.dns, vec!["a.example.com"]);
        assert_eq!(n.ips.len(), 1);
    }

    #[test]
    fn files_go_to_the_data_folders_owner_only_when_root_makes_them() {
        assert_eq!(owner_to_give(0, 998, 997), Some((998, 997)));
        assert_eq!(owner_to_give(0, 0, 0), None);
        assert_eq!(owner_to_give(998, 998, 997), None);
        assert_eq!(owner_to_give(1000, 998, 997), None);
    }

    /// Runs only as root, as the tests do in CI.
    #[cfg(unix)]
    #[test]
    fn as_root_the_files_go_to_the_data_folders_owner() {
        use std::os::unix::fs::MetadataExt;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::chown(dir.path(), Some(65534), Some(65533)).expect("chown");
        let outcome = init(dir.path(), &names(&["localhost"], &[]), false, now()).expect("init");
        assert_eq!(outcome.owner, Some((65534, 65533)));
        let tls = dir.path().join("tls");
        for path in [
            tls.clone(),
            tls.join(CA_CERT),
            tls.join(CA_KEY),
            tls.join(SERVER_CERT),
            tls.join(SERVER_KEY),
        ] {
            let meta = std::fs::metadata(&path).expect("meta");
            assert_eq!(
                (meta.uid(), meta.gid()),
                (65534, 65533),
                "{}",
                path.display()
            );
        }
        assert!(outcome.render(8180).contains("uid 65534, gid 65533"));
    }

    #[test]
    fn the_printed_text_names_the_files_and_quotes_paths_for_toml() {
        let outcome = Outcome {
            tls_dir: PathBuf::from("/var/lib/mwe \"x\"/tls"),
            ca: CaOutcome::Created,
            ca_not_after: NOW as i64,
            server_not_after: NOW as i64,
            server_replaced: false,
            names: names(&["engine.example.com"], &["10.0.0.5"]),
            owner: Some((998, 997)),
        };
        let text = outcome.render(8443);
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with("event_tls_cert"))
            .expect("cert line");
        let parsed: toml::Table = toml::from_str(line.trim()).expect("valid TOML");
        assert_eq!(
            parsed["event_tls_cert"].as_str(),
            Some("/var/lib/mwe \"x\"/tls/server.crt")
        );
        assert!(text.contains("https://engine.example.com:8443/ERSPost?appliance=<Appliance Id>"));
        assert!(text.contains("upload /var/lib/mwe \"x\"/tls/ca.crt"));
        assert!(text.contains("for engine.example.com, 10.0.0.5"));
        assert!(text.contains("uid 998, gid 997"));
        assert!(text.contains("only to https on port 443: set event_listen = \"0.0.0.0:443\""));

        let v6 = Outcome {
            names: names(&[], &["fd00::5"]),
            owner: None,
            ..outcome
        };
        assert!(v6.render(8180).contains("https://[fd00::5]:8180/"));
    }
}
