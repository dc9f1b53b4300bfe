//! The configuration test: one check per piece an admin can fix, each with a short
//! time limit so the test answers within seconds even when a host does not.

use std::time::Duration;

use plugin_api::TestReport;
use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::appliance::ApplianceClient;
use crate::dynamics::DynamicsClient;
use crate::schema;
use crate::settings::Config;

/// WhoAmI's answer (other ids ignored).
#[derive(Deserialize)]
struct WhoAmI {
    #[serde(rename = "UserId")]
    user_id: Option<String>,
}

/// Each check's time limit.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn run(config: &Config) -> TestReport {
    let mut report = TestReport::default();
    let appliance = ApplianceClient::new(config.appliance.clone(), CHECK_TIMEOUT);
    let dynamics = DynamicsClient::new(config.dynamics.clone(), CHECK_TIMEOUT);

    match &appliance {
        Err(e) => report.push("B Series appliance reachable", Err(e.to_string())),
        Ok(client) => {
            let host = &config.appliance.host;
            let reachable = client.reach().await;
            let ok = reachable.is_ok();
            report.push(
                "B Series appliance reachable",
                reachable
                    .map(|_| format!("{host} answers over HTTPS with a trusted certificate"))
                    .map_err(|e| format!("{host}: {e}")),
            );
            if ok {
                let token = client.token().await;
                let have_token = token.is_ok();
                report.push(
                    "B Series OAuth",
                    token
                        .map(|_| "the API account's client ID and secret were accepted".into())
                        .map_err(|e| e.to_string()),
                );
                if have_token {
                    report.push(
                        "B Series reporting permission",
                        match client.reporting_permission().await {
                            Ok(true) => Ok("the API account may read support session reports".into()),
                            Ok(false) => Err("the API account lacks \"Allow Access to Support Session Reports and Recordings\" (/login > Management > API Configuration)".into()),
                            Err(e) => Err(e.to_string()),
                        },
                    );
                }
            }
        }
    }

    match &dynamics {
        Err(e) => report.push("Entra ID token", Err(e.to_string())),
        Ok(client) => {
            let token = client.token().await;
            let have_token = token.is_ok();
            report.push(
                "Entra ID token",
                token
                    .map(|_| "the app registration's credentials were accepted".into())
                    .map_err(|e| e.to_string()),
            );
            if have_token {
                let who = client.get_json::<WhoAmI>("WhoAmI", "WhoAmI").await;
                let reachable = who.is_ok();
                report.push(
                    "Dataverse reachable (WhoAmI)",
                    who.map(|w| {
                        format!(
                            "{} answers; application user {}",
                            client.url(),
                            w.user_id.as_deref().unwrap_or("?")
                        )
                    })
                    .map_err(|e| e.to_string()),
                );
                if reachable {
                    report.push("BeyondTrust Session table", table_check(client).await);
                    report.push(
                        "Case read permission",
                        client
                            .get_json::<IgnoredAny>(
                                "incidents?$select=incidentid&$top=1",
                                "reading cases",
                            )
                            .await
                            .map(|_| "the application user may read Cases".into())
                            .map_err(|e| e.to_string()),
                    );
                }
            }
        }
    }
    report
}

async fn table_check(client: &DynamicsClient) -> Result<String, String> {
    let table = schema::table();
    let meta = crate::provision::read_table(client, table)
        .await
        .map_err(|e| e.to_string())?;
    crate::provision::compare(table, meta.as_ref()).summary()
}
