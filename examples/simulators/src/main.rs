//! `simulators`: starts the appliance and Entra ID + Dataverse simulators and prints
//! their URLs and credentials; runs until Ctrl-C.

use std::path::PathBuf;

use clap::Parser;
use simulators::appliance::{Appliance, ApplianceOptions};
use simulators::dataverse::{Dataverse, DataverseOptions};

/// Simulators of a BeyondTrust B Series appliance, Entra ID and Dataverse.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Folder for the test certificates
    #[arg(long, default_value = "target/simulators")]
    dir: PathBuf,
    /// Appliance port (0: any free port)
    #[arg(long, default_value_t = 0)]
    appliance_port: u16,
    /// Entra ID port
    #[arg(long, default_value_t = 0)]
    entra_port: u16,
    /// Dataverse port
    #[arg(long, default_value_t = 0)]
    dataverse_port: u16,
    /// Start Dataverse without the bt_session table
    #[arg(long)]
    unprovisioned: bool,
    /// Outbound event recipient URL(s) for the appliance
    #[arg(long)]
    recipient: Vec<String>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let args = Args::parse();
    let appliance = match Appliance::start(
        ApplianceOptions {
            port: args.appliance_port,
            ..Default::default()
        },
        &args.dir,
    )
    .await
    {
        Ok(a) => a,
        Err(e) => {
            eprintln!("simulators: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let dataverse_options = DataverseOptions {
        entra_port: args.entra_port,
        api_port: args.dataverse_port,
        provisioned: !args.unprovisioned,
        ..Default::default()
    };
    let dataverse = match Dataverse::start(dataverse_options, &args.dir).await {
        Ok(d) => d,
        Err(e) => {
            eprintln!("simulators: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    for url in &args.recipient {
        appliance.add_recipient(url);
    }
    println!("{}", simulators::summary(&appliance, &dataverse));
    let _ = tokio::signal::ctrl_c().await;
    std::process::ExitCode::SUCCESS
}
