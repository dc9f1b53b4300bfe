//! `middleware-engine config export` and `config import FILE`: the configurations
//! as one JSON document, through the running engine's admin API (so an import is
//! checked and applied as an edit on the page is).

use std::path::Path;
use std::process::ExitCode;

use serde_json::Value;

use crate::backfill_cli::{AdminClient, CliError};
use crate::settings::HostSettings;

fn block_on<T>(f: impl std::future::Future<Output = Result<T, CliError>>) -> Result<T, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Engine(format!("cannot start the async runtime: {e}")))?
        .block_on(f)
}

fn finish(result: Result<(), CliError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("middleware-engine: {}", e.message());
            e.exit_code()
        }
    }
}

/// Writes the export to `out` (or standard output).
pub fn export(settings: &HostSettings, sealed: bool, out: Option<&Path>) -> ExitCode {
    finish(block_on(async {
        let client = AdminClient::new(settings)?;
        let path = if sealed {
            "/api/configurations/export?secrets=sealed"
        } else {
            "/api/configurations/export"
        };
        let document = client.get(path).await?;
        let text = serde_json::to_string_pretty(&document)
            .map_err(|e| CliError::Engine(format!("the engine's answer cannot be written: {e}")))?;
        match out {
            Some(file) => {
                write_private(file, &text).map_err(|e| {
                    CliError::Input(format!("cannot write {}: {e}", file.display()))
                })?;
                let count = document["configurations"].as_array().map_or(0, Vec::len);
                eprintln!("{count} configurations written to {}", file.display());
            }
            None => println!("{text}"),
        }
        Ok(())
    }))
}

/// An export may hold sealed secrets: owner-only, as the key file is.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())?;
    file.write_all(b"\n")
}

/// Sends `file` to the engine and prints what became of each configuration. Exits 1
/// when one was invalid, 0 otherwise (secrets still to be given are listed).
pub fn import(settings: &HostSettings, file: &Path) -> ExitCode {
    let mut invalid = false;
    let result = block_on(async {
        let text = std::fs::read_to_string(file)
            .map_err(|e| CliError::Input(format!("cannot read {}: {e}", file.display())))?;
        let document: Value = serde_json::from_str(&text)
            .map_err(|e| CliError::Input(format!("{} is not JSON: {e}", file.display())))?;
        let client = AdminClient::new(settings)?;
        let report = client.post("/api/configurations/import", &document).await?;
        for entry in report["configurations"].as_array().into_iter().flatten() {
            let (plugin, name, result) = (
                entry["plugin"].as_str().unwrap_or_default(),
                entry["name"].as_str().unwrap_or_default(),
                entry["result"].as_str().unwrap_or_default(),
            );
            let mut line = format!("{result:>9}  {plugin} / {name}");
            let secrets: Vec<&str> = entry["secrets_to_give"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            if !secrets.is_empty() {
                line.push_str(&format!("  (secrets to give: {})", secrets.join(", ")));
            }
            if result == "invalid" {
                invalid = true;
                line.push_str(&format!("  {}", entry["errors"]));
            }
            println!("{line}");
        }
        Ok(())
    });
    match result {
        Ok(()) if invalid => ExitCode::FAILURE,
        other => finish(other),
    }
}
