//! The data contract's rules: which sessions are imported, how times are written,
//! and how a session report becomes a `bt_session` row.

use chrono::TimeZone;
use chrono_tz::Tz;
use serde_json::{json, Map, Value};

use crate::appliance::xml::{SessionReport, SurveyLine};
use crate::schema;

/// How date-times are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Times {
    /// `YYYY-MM-DDTHH:MM:SSZ`.
    Utc,
    /// The wall-clock time in this zone, without offset.
    Local(Tz),
}

impl Times {
    pub fn format(&self, unix: i64) -> Option<String> {
        let utc = chrono::Utc.timestamp_opt(unix, 0).single()?;
        Some(match self {
            Self::Utc => utc.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            Self::Local(zone) => utc
                .with_timezone(zone)
                .format("%Y-%m-%dT%H:%M:%S")
                .to_string(),
        })
    }
}

/// The server's own zone, for local times when none is configured.
pub fn server_zone() -> Tz {
    iana_time_zone::get_timezone()
        .ok()
        .and_then(|name| name.parse().ok())
        .unwrap_or(Tz::UTC)
}

/// "Update ... with all BeyondTrust sessions" and the allowed prefixes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportRules {
    pub all_sessions: bool,
    /// Empty: any prefix.
    pub prefixes: Vec<String>,
}

/// What to do with a session before looking for its case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Import; link to the case with this ticket number if one exists.
    ImportLinking(Option<String>),
    /// Import only if a case with this ticket number exists.
    RequireCase(String),
    /// Do not import, for this reason.
    Skip(String),
}

impl ImportRules {
    pub fn gate(&self, external_key: Option<&str>) -> Gate {
        let key = external_key.map(str::trim).filter(|k| !k.is_empty());
        if self.all_sessions {
            return Gate::ImportLinking(key.map(str::to_owned));
        }
        let Some(key) = key else {
            return Gate::Skip(
                "the session has no external key, and only sessions of existing cases are imported"
                    .into(),
            );
        };
        if !self.prefixes.is_empty() {
            let lower = key.to_lowercase();
            if !self
                .prefixes
                .iter()
                .any(|p| lower.starts_with(&p.to_lowercase()))
            {
                return Gate::Skip(format!(
                    "the external key {key:?} starts with none of the allowed prefixes ({})",
                    self.prefixes.join(", ")
                ));
            }
        }
        Gate::RequireCase(key.to_owned())
    }
}

fn hms_seconds(text: &str) -> Option<i64> {
    let parts: Vec<i64> = text
        .split(':')
        .map(|p| p.trim().parse().ok())
        .collect::<Option<_>>()?;
    match parts.as_slice() {
        [h, m, s] => Some(h * 3600 + m * 60 + s),
        _ => None,
    }
}

/// `text` cut to the column's maximum length (in characters), if it has one.
pub fn truncate(text: &str, column: &str) -> String {
    match schema::table().max_length(column) {
        Some(max) if text.chars().count() > max => text.chars().take(max).collect(),
        _ => text.to_owned(),
    }
}

fn one_line(text: &str) -> String {
    text.trim().replace("\r\n", "\n").replace('\n', "\\n")
}

/// One line per event: time, event type, who, to whom, body or data.
pub fn transcript(report: &SessionReport, times: Times) -> String {
    report
        .events
        .iter()
        .map(|e| {
            let time = e
                .timestamp
                .and_then(|t| times.format(t))
                .unwrap_or_default();
            let mut line = format!("{time} {}", e.event_type);
            let who = |p: &crate::appliance::xml::Party| match &p.kind {
                Some(kind) if !p.name.is_empty() => format!("{} ({kind})", p.name),
                Some(kind) => kind.clone(),
                None => p.name.clone(),
            };
            if let Some(by) = &e.performed_by {
                line.push_str(&format!(" | by: {}", who(by)));
            }
            if let Some(to) = &e.destination {
                line.push_str(&format!(" | to: {}", who(to)));
            }
            if let Some(body) = &e.body {
                line.push_str(&format!(" | {}", one_line(body)));
            } else if !e.data.is_empty() {
                let data: Vec<String> = e.data.iter().map(|(k, v)| format!("{k}={v}")).collect();
                line.push_str(&format!(" | {}", data.join(", ")));
            }
            line
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The survey column's text: one line per question, `label: answer`.
pub fn survey_text(lines: &[SurveyLine]) -> String {
    lines
        .iter()
        .map(|l| format!("{}: {}", one_line(&l.label), one_line(&l.answer)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The note a transcript too long for its column overflows into.
pub const OVERFLOW_NOTE_SUBJECT: &str = "BeyondTrust session transcript (full)";

/// The transcript column's value and, when it does not fit, the whole text for a note.
pub fn transcript_column(full: &str) -> (String, Option<String>) {
    let max = schema::table()
        .max_length("bt_transcript")
        .unwrap_or(usize::MAX);
    if full.chars().count() <= max {
        return (full.to_owned(), None);
    }
    let marker = format!("\n[… the transcript continues in the note \"{OVERFLOW_NOTE_SUBJECT}\" attached to this session]");
    let keep = max.saturating_sub(marker.chars().count());
    let head: String = full.chars().take(keep).collect();
    (format!("{head}{marker}"), Some(full.to_owned()))
}

/// The columns a session report fills (the key and the case link excluded).
pub fn session_columns(
    report: &SessionReport,
    times: Times,
) -> (Map<String, Value>, Option<String>) {
    let mut row = Map::new();
    let mut put = |column: &str, value: Value| {
        row.insert(column.to_owned(), value);
    };
    let text = |column: &str, value: &str| json!(truncate(value, column));
    let start = report.start_time.and_then(|t| times.format(t));
    let title = format!(
        "{} {}",
        report
            .external_key
            .as_deref()
            .unwrap_or("BeyondTrust session"),
        start.clone().unwrap_or_default()
    );
    put("bt_name", text("bt_name", title.trim()));
    if let Some(lseq) = report.lseq {
        put("bt_lseq", json!(lseq));
    }
    if let Some(t) = &report.session_type {
        put("bt_sessiontype", text("bt_sessiontype", t));
    }
    if let Some(k) = &report.external_key {
        put("bt_externalkey", text("bt_externalkey", k));
    }
    if let Some(s) = &report.public_site {
        put("bt_publicsite", text("bt_publicsite", s));
    }
    if let Some(s) = start {
        put("bt_starttime", json!(s));
    }
    if let Some(e) = report.end_time.and_then(|t| times.format(t)) {
        put("bt_endtime", json!(e));
    }
    let duration = match (report.start_time, report.end_time) {
        (Some(s), Some(e)) if e >= s => Some(e - s),
        _ => report.duration.as_deref().and_then(hms_seconds),
    };
    if let Some(d) = duration {
        put("bt_durationseconds", json!(d));
    }
    let primary_rep = report
        .reps
        .iter()
        .find(|r| r.primary || (r.gsnumber.is_some() && r.gsnumber == report.primary_rep_gsnumber))
        .and_then(|r| r.display_name.clone())
        .or_else(|| report.primary_rep.clone());
    if let Some(r) = primary_rep {
        put("bt_primaryrep", text("bt_primaryrep", &r));
    }
    if !report.reps.is_empty() {
        let lines: Vec<String> = report
            .reps
            .iter()
            .map(|r| match (&r.display_name, &r.username) {
                (Some(d), Some(u)) => format!("{d} ({u})"),
                (Some(d), None) => d.clone(),
                (None, Some(u)) => u.clone(),
                (None, None) => String::new(),
            })
            .collect();
        put(
            "bt_representatives",
            text("bt_representatives", &lines.join("\n")),
        );
    }
    if let Some(c) = &report.primary_customer {
        put("bt_primarycustomer", text("bt_primarycustomer", c));
    }
    let customer = report
        .customers
        .iter()
        .find(|c| {
            c.primary || (c.gsnumber.is_some() && c.gsnumber == report.primary_customer_gsnumber)
        })
        .or_else(|| report.customers.first());
    if let Some(c) = customer {
        for (column, value) in [
            ("bt_customerhostname", &c.hostname),
            ("bt_customeros", &c.os),
            ("bt_customerpublicip", &c.public_ip),
            ("bt_customerprivateip", &c.private_ip),
        ] {
            if let Some(v) = value {
                put(column, text(column, v));
            }
        }
    }
    put(
        "bt_filetransfercount",
        json!(report.file_transfer_count.unwrap_or(0)),
    );
    if let Some(u) = &report.chat_view_url {
        put("bt_chatviewurl", text("bt_chatviewurl", u));
    }
    if let Some(u) = &report.chat_download_url {
        put("bt_chatdownloadurl", text("bt_chatdownloadurl", u));
    }
    let (column, overflow) = transcript_column(&transcript(report, times));
    put("bt_transcript", json!(column));
    (row, overflow)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::appliance::xml;

    const REPORT: &str = r#"<session_list xmlns="http://www.beyondtrust.com/sra/namespaces/API/reporting">
      <session lsid="c4f0"><session_type>support</session_type><lseq>42</lseq>
        <start_time timestamp="1764230400">2025-11-27T08:00:00+00:00</start_time>
        <end_time timestamp="1764231302">2025-11-27T08:15:02+00:00</end_time><duration>00:15:02</duration>
        <public_site id="1">Default</public_site><external_key>CAS-01234-X1Y2Z3</external_key>
        <session_chat_view_url>https://s/x?a=1&amp;view=1</session_chat_view_url>
        <file_transfer_count></file_transfer_count>
        <primary_customer gsnumber="3">Ana Müller</primary_customer><primary_rep gsnumber="2" id="7">Sam Rep</primary_rep>
        <customer_list><customer gsnumber="3"><username>Ana Müller</username><public_ip>203.0.113.5:51234</public_ip>
          <private_ip>10.0.0.8</private_ip><hostname>ANA-LAPTOP</hostname><os>Windows 11 Pro</os><primary_cust>1</primary_cust></customer></customer_list>
        <rep_list><representative gsnumber="2" id="7"><username>srep</username><display_name>Sam Rep</display_name><primary_rep>1</primary_rep></representative>
          <representative gsnumber="5" id="9"><username>jdoe</username><display_name>Jo Doe</display_name></representative></rep_list>
        <session_details>
          <event timestamp="1764230460" event_type="Chat Message"><performed_by type="representative" gsnumber="2">Sam Rep</performed_by>
            <destination type="customer" gsnumber="3">Ana Müller</destination><body>Hello,
how can I help?</body></event>
          <event timestamp="1764230470" event_type="Conference Owner Changed"><destination type="representative" gsnumber="2">Sam Rep</destination>
            <data><value name="owner" value="Sam Rep"/></data></event>
        </session_details></session></session_list>"#;

    fn report() -> SessionReport {
        xml::sessions(REPORT).expect("parses").remove(0)
    }

    #[test]
    fn a_report_becomes_the_contracts_columns() {
        let (row, overflow) = session_columns(&report(), Times::Utc);
        assert_eq!(overflow, None);
        let get = |k: &str| row.get(k).cloned().unwrap_or(Value::Null);
        assert_eq!(
            get("bt_name"),
            json!("CAS-01234-X1Y2Z3 2025-11-27T08:00:00Z")
        );
        assert_eq!(get("bt_lseq"), json!(42));
        assert_eq!(get("bt_starttime"), json!("2025-11-27T08:00:00Z"));
        assert_eq!(get("bt_endtime"), json!("2025-11-27T08:15:02Z"));
        assert_eq!(get("bt_durationseconds"), json!(902));
        assert_eq!(get("bt_primaryrep"), json!("Sam Rep"));
        assert_eq!(
            get("bt_representatives"),
            json!("Sam Rep (srep)\nJo Doe (jdoe)")
        );
        assert_eq!(get("bt_primarycustomer"), json!("Ana Müller"));
        assert_eq!(get("bt_customerhostname"), json!("ANA-LAPTOP"));
        assert_eq!(get("bt_customerpublicip"), json!("203.0.113.5:51234"));
        assert_eq!(get("bt_filetransfercount"), json!(0), "empty means 0");
        assert_eq!(get("bt_chatviewurl"), json!("https://s/x?a=1&view=1"));
        assert_eq!(
            get("bt_transcript"),
            json!("2025-11-27T08:01:00Z Chat Message | by: Sam Rep (representative) | to: Ana Müller (customer) | Hello,\\nhow can I help?\n2025-11-27T08:01:10Z Conference Owner Changed | to: Sam Rep (representative) | owner=Sam Rep")
        );
        assert!(!row.contains_key("bt_lsid"), "the key is never in the body");
    }

    #[test]
    fn local_times_follow_the_zone_across_daylight_saving() {
        let berlin: Tz = "Europe/Berlin".parse().expect("zone");
        let local = Times::Local(berlin);
        // 2025-03-30 00:30 UTC is 01:30 CET; 01:30 UTC is 03:30 CEST (clocks went forward).
        assert_eq!(
            local.format(1_743_294_600).as_deref(),
            Some("2025-03-30T01:30:00")
        );
        assert_eq!(
            local.format(1_743_298_200).as_deref(),
            Some("2025-03-30T03:30:00")
        );
        // 2025-10-26 00:30 UTC is 02:30 CEST; 01:30 UTC is 02:30 CET (the hour repeats).
        assert_eq!(
            local.format(1_761_438_600).as_deref(),
            Some("2025-10-26T02:30:00")
        );
        assert_eq!(
            local.format(1_761_442_200).as_deref(),
            Some("2025-10-26T02:30:00")
        );
        assert_eq!(
            Times::Utc.format(1_761_442_200).as_deref(),
            Some("2025-10-26T01:30:00Z")
        );
    }

    #[test]
    fn import_rules_follow_the_seed() {
        let off = ImportRules {
            all_sessions: false,
            prefixes: vec!["CAS".into(), "inc".into()],
        };
        assert_eq!(
            off.gate(Some(" cas-1 ")),
            Gate::RequireCase("cas-1".into()),
            "prefixes compare case-insensitively"
        );
        assert_eq!(off.gate(Some("INC-9")), Gate::RequireCase("INC-9".into()));
        assert!(
            matches!(off.gate(Some("XYZ-1")), Gate::Skip(r) if r.contains("none of the allowed prefixes (CAS, inc)"))
        );
        assert!(matches!(off.gate(None), Gate::Skip(_)));
        assert!(matches!(off.gate(Some("  ")), Gate::Skip(_)));
        let any = ImportRules {
            all_sessions: false,
            prefixes: vec![],
        };
        assert_eq!(any.gate(Some("XYZ-1")), Gate::RequireCase("XYZ-1".into()));
        let all = ImportRules {
            all_sessions: true,
            prefixes: vec!["CAS".into()],
        };
        assert_eq!(
            all.gate(Some("XYZ-1")),
            Gate::ImportLinking(Some("XYZ-1".into())),
            "prefixes are ignored"
        );
        assert_eq!(all.gate(None), Gate::ImportLinking(None));
    }

    #[test]
    fn a_transcript_over_the_column_limit_overflows_into_a_note() {
        let long = "x".repeat(1_048_577);
        let (column, overflow) = transcript_column(&long);
        assert_eq!(column.chars().count(), 1_048_576);
        assert!(column.ends_with(&format!(
            "continues in the note \"{OVERFLOW_NOTE_SUBJECT}\" attached to this session]"
        )));
        assert_eq!(overflow.as_deref(), Some(long.as_str()));
    }

    #[test]
    fn long_texts_are_cut_to_their_column() {
        let mut r = report();
        r.external_key = Some("K".repeat(2000));
        let (row, _) = session_columns(&r, Times::Utc);
        assert_eq!(
            row["bt_externalkey"].as_str().map(|s| s.chars().count()),
            Some(1024)
        );
        assert_eq!(
            row["bt_name"].as_str().map(|s| s.chars().count()),
            Some(200)
        );
    }

    #[test]
    fn surveys_are_label_colon_answer_lines() {
        let lines = vec![
            SurveyLine {
                label: "How satisfied?".into(),
                answer: "5".into(),
            },
            SurveyLine {
                label: "Comments".into(),
                answer: "Great\nthanks".into(),
            },
        ];
        assert_eq!(
            survey_text(&lines),
            "How satisfied?: 5\nComments: Great\\nthanks"
        );
    }
}
