//! The plugin's own error: the remotes' typed errors, carried as they are through
//! every internal call and turned into the kit's `PluginError` (kind, message,
//! retry-after) only where a `Plugin` method returns.

use plugin_api::PluginError;

use crate::appliance::ApplianceError;
use crate::dynamics::DynamicsError;
use crate::http::SetupError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error(transparent)]
    Appliance(#[from] ApplianceError),
    #[error(transparent)]
    Dynamics(#[from] DynamicsError),
    /// What a remote will have later (a report lagging its end event, a row being
    /// written): worth another attempt.
    #[error("{0}")]
    NotYet(String),
    /// The table definition shipped with the plugin cannot be used.
    #[error("{0}")]
    Definition(String),
}

impl From<Error> for PluginError {
    fn from(e: Error) -> Self {
        Self::from(&e)
    }
}

/// By reference too: in a batch one failed call is the error of every event it served.
impl From<&Error> for PluginError {
    fn from(e: &Error) -> Self {
        match e {
            Error::Setup(e) => e.into(),
            Error::Appliance(e) => e.into(),
            Error::Dynamics(e) => e.into(),
            Error::NotYet(m) => PluginError::retryable(m.clone()),
            Error::Definition(m) => PluginError::permanent(m.clone()),
        }
    }
}
