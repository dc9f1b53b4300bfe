//! What the plugin does with each event and each poll: fetch the report, decide by
//! the import rules, find the case, upsert the row (and the overflow note).

use std::collections::BTreeMap;

use plugin_api::model::PolledEvent;
use plugin_api::{
    EndedSession, EndedSessions, EndedSessionsRequest, Event, Logger, Outcome, PollRequest,
    PollResult,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::appliance::xml::{SessionReport, SurveyLine};
use crate::appliance::{ApplianceClient, SurveyKind};
use crate::dynamics::{encode, id_from_entity_url, odata_string, Collection, DynamicsClient};
use crate::error::Error;
use crate::rules::{self, truncate, Gate, ImportRules, Times};
use crate::schema;
use crate::settings::{CUSTOMER_SURVEY, REP_SURVEY, SESSION_END};

/// Event fields a poll fills, so that handling a polled event needs no report call.
const FIELD_REPORT: &str = "session_report";
const FIELD_CUSTOMER_SURVEY: &str = "customer_survey";
const FIELD_REP_SURVEY: &str = "rep_survey";

/// Sessions ending up to this long before the cursor are asked for again (reports can
/// lag), and recognised by lsid so none is handed over twice.
const POLL_OVERLAP_SECONDS: i64 = 600;

pub struct Sync {
    pub appliance: ApplianceClient,
    pub dynamics: DynamicsClient,
    pub rules: ImportRules,
    pub times: Times,
    pub log: Logger,
}

/// The polling cursor.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Cursor {
    /// The latest end time handed over (Unix seconds).
    end_time: i64,
    /// Never look before this (the configuration's creation).
    floor: i64,
    /// Sessions already handed over that ended within the overlap, by end time.
    seen: BTreeMap<String, i64>,
}

/// A Case as the lookup reads it.
#[derive(Deserialize)]
pub(crate) struct Case {
    incidentid: String,
}

/// The written row's id, read back when Dataverse did not name it in `OData-EntityId`.
#[derive(Deserialize)]
struct SessionRowId {
    bt_sessionid: String,
}

fn survey_field(lines: &Option<Vec<SurveyLine>>) -> Option<String> {
    lines.as_ref().and_then(|l| serde_json::to_string(l).ok())
}

/// A case to link: its id and the ticket number it was found by.
pub(crate) type CaseRef = (String, String);

/// The session an event is about and which survey event it is (none: a session
/// end), or why it needs nothing done.
pub(crate) fn subject(event: &Event) -> Result<(&str, Option<SurveyKind>), Outcome> {
    let Some(lsid) = event.lsid.as_deref() else {
        return Err(Outcome::Skipped {
            reason: "the event names no session (lsid)".into(),
        });
    };
    let kind = match event.event_type.as_str() {
        SESSION_END => None,
        CUSTOMER_SURVEY => Some(SurveyKind::Customer),
        REP_SURVEY => Some(SurveyKind::Rep),
        other => {
            return Err(Outcome::Skipped {
                reason: format!("{other} is not an event this plugin handles"),
            })
        }
    };
    Ok((lsid, kind))
}

/// The report a poll put into the event, if it did.
pub(crate) fn polled_report(event: &Event) -> Option<SessionReport> {
    event
        .fields
        .get(FIELD_REPORT)
        .and_then(|r| serde_json::from_str(r).ok())
}

/// The survey lines a poll put into the event, if it did.
pub(crate) fn polled_survey(event: &Event, which: SurveyKind) -> Option<Vec<SurveyLine>> {
    let name = match which {
        SurveyKind::Customer => FIELD_CUSTOMER_SURVEY,
        SurveyKind::Rep => FIELD_REP_SURVEY,
    };
    event
        .fields
        .get(name)
        .and_then(|s| serde_json::from_str(s).ok())
}

pub(crate) fn no_report_yet(lsid: &str) -> Error {
    Error::NotYet(format!(
        "the appliance has no report for session {lsid} yet (reports can lag the end event)"
    ))
}

/// A session end waits until the report shows the session ended.
pub(crate) fn check_ended(
    report: &SessionReport,
    lsid: &str,
    kind: Option<SurveyKind>,
) -> Result<(), Error> {
    if report.end_time.is_none() && kind.is_none() {
        return Err(Error::NotYet(format!(
            "session {lsid} has not ended yet in the appliance's report"
        )));
    }
    Ok(())
}

/// Whether to read `which` survey for this event, and if so whether it must be there:
/// a survey event reads its survey; a session end reads those its report shows.
pub(crate) fn wants_survey(
    kind: Option<SurveyKind>,
    which: SurveyKind,
    report: &SessionReport,
) -> Option<bool> {
    let shown = match which {
        SurveyKind::Customer => !report.customer_survey.is_empty(),
        SurveyKind::Rep => !report.rep_survey.is_empty(),
    };
    (kind == Some(which) || (kind.is_none() && shown)).then_some(kind == Some(which))
}

/// The survey found for a session, or NotYet when the event is about it.
pub(crate) fn survey_found(
    found: Option<Vec<SurveyLine>>,
    lsid: &str,
    required: bool,
) -> Result<Option<Vec<SurveyLine>>, Error> {
    match found {
        None if required => Err(Error::NotYet(format!(
            "the appliance has no exit survey for session {lsid} yet"
        ))),
        found => Ok(found),
    }
}

/// What the import rules ask about the case, before any lookup.
pub(crate) enum CaseNeed {
    /// Import without a case.
    Unlinked,
    /// Import; link the case with this ticket number if there is one.
    Link(String),
    /// Import only if a case has this ticket number.
    Require(String),
    Skip(String),
}

impl CaseNeed {
    pub(crate) fn of(rules: &ImportRules, report: &SessionReport) -> Self {
        match rules.gate(report.external_key.as_deref()) {
            Gate::Skip(reason) => Self::Skip(reason),
            Gate::ImportLinking(None) => Self::Unlinked,
            Gate::ImportLinking(Some(key)) => Self::Link(key),
            Gate::RequireCase(key) => Self::Require(key),
        }
    }

    /// The ticket number to look up, if any.
    pub(crate) fn key(&self) -> Option<&str> {
        match self {
            Self::Link(key) | Self::Require(key) => Some(key),
            Self::Unlinked | Self::Skip(_) => None,
        }
    }

    /// The case to link once the lookup is done, or why the session is skipped.
    pub(crate) fn resolve(self, found: Option<CaseRef>) -> Result<Option<CaseRef>, Outcome> {
        match (self, found) {
            (Self::Skip(reason), _) => Err(Outcome::Skipped { reason }),
            (Self::Require(key), None) => Err(Outcome::Skipped {
                reason: format!(
                    "no Case has the ticket number {key:?} (the session's external key)"
                ),
            }),
            (Self::Unlinked, _) => Ok(None),
            (_, found) => Ok(found),
        }
    }
}

/// The case lookup by ticket number (at most two, to notice duplicates).
pub(crate) fn case_lookup_path(key: &str) -> String {
    let filter = format!("ticketnumber eq {}", odata_string(key));
    format!(
        "incidents?$select=incidentid,ticketnumber&$filter={}&$top=2",
        encode(&filter)
    )
}

/// Where a session's row is upserted: by its alternate key, the lsid.
pub(crate) fn row_path(lsid: &str) -> String {
    let table = schema::table();
    format!(
        "{}({}={})",
        table.entity_set,
        table.alternate_key.columns[0],
        encode(&odata_string(lsid))
    )
}

/// The row's columns (surveys and the case link included) and, when the transcript
/// does not fit its column, the whole transcript for a note.
pub(crate) fn session_row(
    report: &SessionReport,
    times: Times,
    case: Option<&CaseRef>,
    customer: Option<&[SurveyLine]>,
    rep: Option<&[SurveyLine]>,
) -> (Map<String, Value>, Option<String>) {
    let table = schema::table();
    let (mut row, overflow) = rules::session_columns(report, times);
    if let Some(lines) = customer {
        row.insert(
            "bt_customersurvey".into(),
            json!(truncate(&rules::survey_text(lines), "bt_customersurvey")),
        );
    }
    if let Some(lines) = rep {
        row.insert(
            "bt_repsurvey".into(),
            json!(truncate(&rules::survey_text(lines), "bt_repsurvey")),
        );
    }
    if let Some((id, _)) = case {
        let lookup = &table.lookups[0];
        row.insert(
            format!("{}@odata.bind", lookup.schema_name),
            json!(format!("/{}({id})", lookup.target_entity_set)),
        );
    }
    (row, overflow)
}

/// Where a session's transcript note is upserted: its id comes from the lsid, so a
/// replay updates the same note.
pub(crate) fn note_path(lsid: &str) -> String {
    format!("annotations({})", note_id(lsid))
}

/// The whole transcript as a text note on the row that `row` binds to (`/bt_sessions(<id>)`,
/// or `$<id>` inside a change set).
pub(crate) fn note_body(lsid: &str, row: &str, full: &str) -> Value {
    use base64::Engine as _;
    let table = schema::table();
    json!({
        "subject": rules::OVERFLOW_NOTE_SUBJECT,
        "notetext": format!("The transcript of BeyondTrust session {lsid} is longer than the Transcript column; it is attached whole."),
        "filename": format!("transcript-{lsid}.txt"),
        "mimetype": "text/plain",
        "documentbody": base64::engine::general_purpose::STANDARD.encode(full.as_bytes()),
        format!("objectid_{}@odata.bind", table.logical_name): row,
    })
}

/// What a written session's outcome says.
pub(crate) fn written_detail(lsid: &str, case: Option<&CaseRef>, overflow: bool) -> String {
    let mut detail = match case {
        Some((_, ticket)) => format!("session {lsid} written, linked to Case {ticket}"),
        None => format!("session {lsid} written (no Case linked)"),
    };
    if overflow {
        detail.push_str("; the full transcript is in a note");
    }
    detail
}

impl Sync {
    pub async fn handle(&self, event: &Event) -> Result<Outcome, Error> {
        let (lsid, kind) = match subject(event) {
            Ok(subject) => subject,
            Err(skip) => return Ok(skip),
        };
        let report = match polled_report(event) {
            Some(report) => report,
            None => self
                .appliance
                .session(lsid)
                .await?
                .ok_or_else(|| no_report_yet(lsid))?,
        };
        check_ended(&report, lsid, kind)?;
        let need = CaseNeed::of(&self.rules, &report);
        let found = match need.key() {
            Some(key) => self.find_case(key).await?,
            None => None,
        };
        let case = match need.resolve(found) {
            Ok(case) => case,
            Err(skip) => return Ok(skip),
        };
        let mut surveys = [None, None];
        for (slot, which) in surveys
            .iter_mut()
            .zip([SurveyKind::Customer, SurveyKind::Rep])
        {
            *slot = polled_survey(event, which);
            if slot.is_none() {
                if let Some(required) = wants_survey(kind, which, &report) {
                    *slot = self.survey(which, lsid, required).await?;
                }
            }
        }
        let [customer, rep] = surveys;
        let detail = self
            .upsert(&report, case.as_ref(), customer.as_deref(), rep.as_deref())
            .await?;
        Ok(Outcome::Done { detail })
    }

    async fn survey(
        &self,
        kind: SurveyKind,
        lsid: &str,
        required: bool,
    ) -> Result<Option<Vec<SurveyLine>>, Error> {
        let mut surveys = self.appliance.surveys(kind, &[lsid]).await?;
        let found = surveys
            .iter()
            .position(|(l, _)| l == lsid)
            .map(|i| surveys.swap_remove(i).1);
        survey_found(found, lsid, required)
    }

    /// The case (id, ticket number) whose ticket number is `key`, if any.
    async fn find_case(&self, key: &str) -> Result<Option<CaseRef>, Error> {
        let cases: Collection<Case> = self
            .dynamics
            .get_json(&case_lookup_path(key), "the case lookup")
            .await?;
        Ok(self.pick_case(key, cases.value))
    }

    /// The first case a lookup found, warning when the ticket number is not unique.
    pub(crate) fn pick_case(&self, key: &str, cases: Vec<Case>) -> Option<CaseRef> {
        if cases.len() > 1 {
            self.log.warn(&format!(
                "more than one Case has the ticket number {key:?}; linking the first"
            ));
        }
        cases
            .into_iter()
            .next()
            .map(|c| (c.incidentid, key.to_owned()))
    }

    async fn upsert(
        &self,
        report: &SessionReport,
        case: Option<&CaseRef>,
        customer: Option<&[SurveyLine]>,
        rep: Option<&[SurveyLine]>,
    ) -> Result<String, Error> {
        let (row, overflow) = session_row(report, self.times, case, customer, rep);
        let path = row_path(&report.lsid);
        let answer = self
            .dynamics
            .send(
                reqwest::Method::PATCH,
                &path,
                Some(&Value::Object(row)),
                "the session upsert",
            )
            .await?;
        if let Some(full) = &overflow {
            let row_id = match answer.entity_id.as_deref().and_then(id_from_entity_url) {
                Some(id) => id,
                None => self.row_id(&path).await?,
            };
            let row = format!("/{}({row_id})", schema::table().entity_set);
            self.dynamics
                .send(
                    reqwest::Method::PATCH,
                    &note_path(&report.lsid),
                    Some(&note_body(&report.lsid, &row, full)),
                    "the transcript note",
                )
                .await?;
        }
        let detail = written_detail(&report.lsid, case, overflow.is_some());
        self.log.info(&detail);
        Ok(detail)
    }

    async fn row_id(&self, path: &str) -> Result<String, Error> {
        let table = schema::table();
        let row: SessionRowId = self
            .dynamics
            .get_json(
                &format!("{path}?$select={}", table.primary_id),
                "reading the session row",
            )
            .await?;
        Ok(row.bt_sessionid)
    }

    /// The sessions that ended in the request's window, from one listing call. A
    /// listing names sessions but not their end times, so each is given the window's
    /// start as `ended_at`: the time it ended at the earliest. The exact time is in
    /// the report that handling the session reads.
    pub async fn ended_sessions(
        &self,
        request: &EndedSessionsRequest,
    ) -> Result<EndedSessions, Error> {
        let listed = self
            .appliance
            .ended_sessions(request.since, request.until)
            .await?;
        Ok(EndedSessions {
            sessions: listed
                .into_iter()
                .map(|s| EndedSession {
                    lsid: s.lsid,
                    ended_at: request.since,
                })
                .collect(),
        })
    }

    /// One time-range report call per poll: sessions that ended since the cursor.
    pub async fn poll(&self, request: &PollRequest) -> Result<PollResult, Error> {
        let mut cursor: Cursor = request
            .cursor
            .as_ref()
            .and_then(|c| serde_json::from_value(c.clone()).ok())
            .unwrap_or(Cursor {
                end_time: request.since,
                floor: request.since,
                seen: BTreeMap::new(),
            });
        let from = (cursor.end_time - POLL_OVERLAP_SECONDS).max(cursor.floor);
        let mut sessions: Vec<SessionReport> = self
            .appliance
            .sessions_ended_since(from)
            .await?
            .into_iter()
            .filter(|s| {
                s.end_time.is_some_and(|e| e >= cursor.floor) && !cursor.seen.contains_key(&s.lsid)
            })
            .collect();
        sessions.sort_by_key(|s| (s.end_time, s.lseq));
        // Survey labels for every session that has surveys: one call per kind.
        let mut labels: BTreeMap<(bool, String), Vec<SurveyLine>> = BTreeMap::new();
        for (rep, kind) in [(false, SurveyKind::Customer), (true, SurveyKind::Rep)] {
            let wanted: Vec<&str> = sessions
                .iter()
                .filter(|s| {
                    if rep {
                        !s.rep_survey.is_empty()
                    } else {
                        !s.customer_survey.is_empty()
                    }
                })
                .map(|s| s.lsid.as_str())
                .collect();
            if !wanted.is_empty() {
                for (lsid, lines) in self.appliance.surveys(kind, &wanted).await? {
                    labels.insert((rep, lsid), lines);
                }
            }
        }
        let mut events = Vec::new();
        for s in &sessions {
            let end = s.end_time.unwrap_or(cursor.end_time);
            let mut fields = BTreeMap::new();
            fields.insert(
                FIELD_REPORT.to_owned(),
                serde_json::to_string(s).unwrap_or_default(),
            );
            if let Some(f) = survey_field(&labels.get(&(false, s.lsid.clone())).cloned()) {
                fields.insert(FIELD_CUSTOMER_SURVEY.to_owned(), f);
            }
            if let Some(f) = survey_field(&labels.get(&(true, s.lsid.clone())).cloned()) {
                fields.insert(FIELD_REP_SURVEY.to_owned(), f);
            }
            if let Some(k) = &s.external_key {
                fields.insert("external_key".to_owned(), k.clone());
            }
            events.push(PolledEvent {
                event_type: SESSION_END.into(),
                timestamp: end,
                lsid: Some(s.lsid.clone()),
                fields,
            });
            cursor.seen.insert(s.lsid.clone(), end);
            cursor.end_time = cursor.end_time.max(end);
        }
        let keep_from = cursor.end_time - POLL_OVERLAP_SECONDS;
        cursor.seen.retain(|_, end| *end >= keep_from);
        if !events.is_empty() {
            self.log
                .info(&format!("poll found {} ended session(s)", events.len()));
        }
        Ok(PollResult {
            events,
            cursor: serde_json::to_value(&cursor).unwrap_or_default(),
        })
    }
}

/// A stable GUID for a session's transcript note (two FNV-1a hashes of the lsid).
pub fn note_id(lsid: &str) -> String {
    let fnv = |seed: u64| {
        lsid.bytes().fold(seed, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    let (a, b) = (fnv(0xcbf2_9ce4_8422_2325), fnv(0x84222325_cbf29ce4));
    let hex = format!("{a:016x}{b:016x}");
    format!(
        "{}-{}-5{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_row_id_is_read_by_the_definitions_primary_id() {
        assert_eq!(schema::table().primary_id, "bt_sessionid");
        let row: SessionRowId =
            serde_json::from_str(r#"{"@odata.etag":"W/1","bt_sessionid":"ab-12"}"#).expect("row");
        assert_eq!(row.bt_sessionid, "ab-12");
    }

    #[test]
    fn note_ids_are_stable_guids() {
        let id = note_id("c4f0a8d2e9b14c6f8a1d3e5b7c9f0a12");
        assert_eq!(id, note_id("c4f0a8d2e9b14c6f8a1d3e5b7c9f0a12"));
        assert_ne!(id, note_id("other"));
        assert_eq!(id.len(), 36);
        assert_eq!(id.matches('-').count(), 4);
    }
}
