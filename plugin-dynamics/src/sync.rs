//! What the plugin does with each event and each poll: fetch the report, decide by
//! the import rules, find the case, upsert the row (and the overflow note).

use std::collections::BTreeMap;

use plugin_api::model::PolledEvent;
use plugin_api::{Event, Logger, Outcome, PollRequest, PollResult};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

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
struct Case {
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

impl Sync {
    pub async fn handle(&self, event: &Event) -> Result<Outcome, Error> {
        let Some(lsid) = event.lsid.as_deref() else {
            return Ok(Outcome::Skipped {
                reason: "the event names no session (lsid)".into(),
            });
        };
        let kind = match event.event_type.as_str() {
            SESSION_END => None,
            CUSTOMER_SURVEY => Some(SurveyKind::Customer),
            REP_SURVEY => Some(SurveyKind::Rep),
            other => {
                return Ok(Outcome::Skipped {
                    reason: format!("{other} is not an event this plugin handles"),
                })
            }
        };
        let polled: Option<SessionReport> = event
            .fields
            .get(FIELD_REPORT)
            .and_then(|r| serde_json::from_str(r).ok());
        let report = match polled {
            Some(report) => report,
            None => self.appliance.session(lsid).await?.ok_or_else(|| {
                Error::NotYet(format!("the appliance has no report for session {lsid} yet (reports can lag the end event)"))
            })?,
        };
        if report.end_time.is_none() && kind.is_none() {
            return Err(Error::NotYet(format!(
                "session {lsid} has not ended yet in the appliance's report"
            )));
        }
        let case = match self.rules.gate(report.external_key.as_deref()) {
            Gate::Skip(reason) => return Ok(Outcome::Skipped { reason }),
            Gate::ImportLinking(key) => match key {
                Some(key) => self.find_case(&key).await?,
                None => None,
            },
            Gate::RequireCase(key) => match self.find_case(&key).await? {
                Some(case) => Some(case),
                None => {
                    return Ok(Outcome::Skipped {
                        reason: format!(
                            "no Case has the ticket number {key:?} (the session's external key)"
                        ),
                    })
                }
            },
        };
        let from_field = |name: &str| -> Option<Vec<SurveyLine>> {
            event
                .fields
                .get(name)
                .and_then(|s| serde_json::from_str(s).ok())
        };
        let mut customer = from_field(FIELD_CUSTOMER_SURVEY);
        let mut rep = from_field(FIELD_REP_SURVEY);
        // A survey event reads its survey; a session end reads those its report shows.
        if customer.is_none()
            && (kind == Some(SurveyKind::Customer)
                || (kind.is_none() && !report.customer_survey.is_empty()))
        {
            customer = self
                .survey(
                    SurveyKind::Customer,
                    lsid,
                    kind == Some(SurveyKind::Customer),
                )
                .await?;
        }
        if rep.is_none()
            && (kind == Some(SurveyKind::Rep) || (kind.is_none() && !report.rep_survey.is_empty()))
        {
            rep = self
                .survey(SurveyKind::Rep, lsid, kind == Some(SurveyKind::Rep))
                .await?;
        }
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
        match surveys.iter().position(|(l, _)| l == lsid) {
            Some(i) => Ok(Some(surveys.swap_remove(i).1)),
            None if required => Err(Error::NotYet(format!(
                "the appliance has no exit survey for session {lsid} yet"
            ))),
            None => Ok(None),
        }
    }

    /// The case (id, ticket number) whose ticket number is `key`, if any.
    async fn find_case(&self, key: &str) -> Result<Option<(String, String)>, Error> {
        let filter = format!("ticketnumber eq {}", odata_string(key));
        let path = format!(
            "incidents?$select=incidentid,ticketnumber&$filter={}&$top=2",
            encode(&filter)
        );
        let cases: Collection<Case> = self.dynamics.get_json(&path, "the case lookup").await?;
        if cases.value.len() > 1 {
            self.log.warn(&format!(
                "more than one Case has the ticket number {key:?}; linking the first"
            ));
        }
        Ok(cases
            .value
            .into_iter()
            .next()
            .map(|c| (c.incidentid, key.to_owned())))
    }

    async fn upsert(
        &self,
        report: &SessionReport,
        case: Option<&(String, String)>,
        customer: Option<&[SurveyLine]>,
        rep: Option<&[SurveyLine]>,
    ) -> Result<String, Error> {
        let table = schema::table();
        let (mut row, overflow) = rules::session_columns(report, self.times);
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
        let key = odata_string(&report.lsid);
        let path = format!(
            "{}({}={})",
            table.entity_set,
            table.alternate_key.columns[0],
            encode(&key)
        );
        let answer = self
            .dynamics
            .send(
                reqwest::Method::PATCH,
                &path,
                Some(&Value::Object(row)),
                "the session upsert",
            )
            .await?;
        let mut detail = match case {
            Some((_, ticket)) => {
                format!("session {} written, linked to Case {ticket}", report.lsid)
            }
            None => format!("session {} written (no Case linked)", report.lsid),
        };
        if let Some(full) = overflow {
            let row_id = match answer.entity_id.as_deref().and_then(id_from_entity_url) {
                Some(id) => id,
                None => self.row_id(&path).await?,
            };
            self.overflow_note(&report.lsid, &row_id, &full).await?;
            detail.push_str("; the full transcript is in a note");
        }
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

    /// The whole transcript as a text note on the row; its id comes from the lsid, so
    /// a replay updates the same note.
    async fn overflow_note(&self, lsid: &str, row_id: &str, full: &str) -> Result<(), Error> {
        use base64::Engine as _;
        let table = schema::table();
        let note = json!({
            "subject": rules::OVERFLOW_NOTE_SUBJECT,
            "notetext": format!("The transcript of BeyondTrust session {lsid} is longer than the Transcript column; it is attached whole."),
            "filename": format!("transcript-{lsid}.txt"),
            "mimetype": "text/plain",
            "documentbody": base64::engine::general_purpose::STANDARD.encode(full.as_bytes()),
            format!("objectid_{}@odata.bind", table.logical_name): format!("/{}({row_id})", table.entity_set),
        });
        self.dynamics
            .send(
                reqwest::Method::PATCH,
                &format!("annotations({})", note_id(lsid)),
                Some(&note),
                "the transcript note",
            )
            .await?;
        Ok(())
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
