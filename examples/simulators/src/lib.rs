//! Simulators of the external services the engine talks to, written from their
//! public documentation (not from this project's plugin code):
//!
//! - [`appliance`]: a BeyondTrust Remote Support B Series appliance: OAuth, the
//!   reporting and command APIs, outbound events, and a control API.
//! - [`dataverse`]: Entra ID's token endpoint and the Dataverse Web API, with
//!   service protection limits, and a control API.
//! - [`smtp`]: an SMTP sink (STARTTLS or implicit TLS, AUTH) that keeps the e-mail
//!   alerts it accepts, and refuses the next ones on demand.
//! - [`webhook`]: an HTTP(S) sink that records the webhook alerts posted to it, with
//!   scripted answers (500, 429 with `Retry-After`, a delay).
//!
//! They follow the documented protocols including their failures, and inject faults
//! on demand. Each runs in-process (tests); the appliance and Dataverse also from the
//! `simulators` command (demo).

pub mod appliance;
pub mod common;
pub mod dataverse;
pub mod smtp;
pub mod tls;
pub mod webhook;

/// A readable summary of both simulators' URLs and credentials.
pub fn summary(appliance: &appliance::Appliance, dataverse: &dataverse::Dataverse) -> String {
    format!(
        "BeyondTrust appliance simulator\n  host name:      {}\n  base URL:       {}\n  client id:      {}\n  client secret:  {}\n  certificate:    {}\n  control API:    {}/control/...\n\nEntra ID + Dataverse simulator\n  Dataverse URL:  {}\n  authority host: {}\n  tenant id:      {}\n  client id:      {}\n  client secret:  {}\n  certificate:    {}\n  control API:    {}/control/...",
        appliance.host,
        appliance.base_url,
        appliance.client_id,
        appliance.client_secret(),
        appliance.cert_path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "(plain HTTP)".into()),
        appliance.base_url,
        dataverse.url,
        dataverse.authority,
        dataverse.tenant_id,
        dataverse.client_id,
        dataverse.client_secret(),
        dataverse.cert_path.display(),
        dataverse.url,
    )
}
