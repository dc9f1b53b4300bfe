//! Sessions as the simulated appliance keeps them, and how a test describes one.

use serde::{Deserialize, Serialize};

fn support() -> String {
    "support".into()
}

fn default_site() -> String {
    "Default".into()
}

fn default_reps() -> Vec<RepSpec> {
    vec![RepSpec::default()]
}

/// A session to create; every field has a sensible default.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionSpec {
    /// Generated when absent.
    #[serde(default)]
    pub lsid: Option<String>,
    /// The external key (a CRM ticket number), if any.
    #[serde(default)]
    pub external_key: Option<String>,
    #[serde(default = "support")]
    pub session_type: String,
    #[serde(default = "default_site")]
    pub public_site: String,
    /// Unix seconds; now when absent.
    #[serde(default)]
    pub start_time: Option<i64>,
    #[serde(default)]
    pub customer: CustomerSpec,
    #[serde(default = "default_reps")]
    pub reps: Vec<RepSpec>,
    #[serde(default)]
    pub chat: Vec<ChatLine>,
    #[serde(default)]
    pub file_transfer_count: u32,
    /// The session's report appears this long after it ends (reports lag events).
    #[serde(default)]
    pub report_delay_seconds: f64,
}

impl Default for SessionSpec {
    fn default() -> Self {
        Self {
            lsid: None,
            external_key: None,
            session_type: support(),
            public_site: default_site(),
            start_time: None,
            customer: CustomerSpec::default(),
            reps: default_reps(),
            chat: Vec::new(),
            file_transfer_count: 0,
            report_delay_seconds: 0.0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CustomerSpec {
    pub name: String,
    #[serde(default)]
    pub company: Option<String>,
    #[serde(default)]
    pub issue: Option<String>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub os: Option<String>,
    #[serde(default)]
    pub public_ip: Option<String>,
    #[serde(default)]
    pub private_ip: Option<String>,
}

impl Default for CustomerSpec {
    fn default() -> Self {
        Self {
            name: "Ana Müller".into(),
            company: Some("Contoso".into()),
            issue: Some("Printer".into()),
            hostname: Some("ANA-LAPTOP".into()),
            os: Some("Windows 11 Pro".into()),
            public_ip: Some("203.0.113.5:51234".into()),
            private_ip: Some("10.0.0.8".into()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RepSpec {
    pub username: String,
    pub display_name: String,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub os: Option<String>,
    #[serde(default)]
    pub public_ip: Option<String>,
    #[serde(default)]
    pub private_ip: Option<String>,
}

impl Default for RepSpec {
    fn default() -> Self {
        Self {
            username: "srep".into(),
            display_name: "Sam Rep".into(),
            hostname: Some("REP-01".into()),
            os: Some("Windows 11".into()),
            public_ip: Some("198.51.100.9".into()),
            private_ip: Some("10.1.1.4".into()),
        }
    }
}

/// One chat message, `offset_seconds` after the session started.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatLine {
    /// `rep` or `customer`.
    pub from: String,
    pub text: String,
    #[serde(default)]
    pub offset_seconds: i64,
}

/// One answered survey question.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SurveyAnswer {
    /// The question's name, e.g. `rating`.
    pub name: String,
    /// The question's label, as the survey shows it.
    pub label: String,
    pub answer: String,
}

/// A session the appliance knows.
#[derive(Debug, Clone, Serialize)]
pub struct Session {
    pub lsid: String,
    pub lseq: u64,
    pub spec: SessionSpec,
    pub start_time: i64,
    pub end_time: Option<i64>,
    /// Unix milliseconds from which the session is in the reports.
    pub report_visible_from_ms: Option<i64>,
    pub customer_survey: Option<Vec<SurveyAnswer>>,
    pub rep_survey: Option<Vec<SurveyAnswer>>,
}

impl Session {
    pub fn in_reports(&self, now_ms: i64) -> bool {
        match self.end_time {
            None => true,
            Some(_) => self
                .report_visible_from_ms
                .is_none_or(|from| now_ms >= from),
        }
    }
}
