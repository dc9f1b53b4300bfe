//! Many events at once (a backfill, a reconciliation, a poll that found many): the
//! same rules as one event, with the calls made for the whole batch. Reports and
//! surveys come `lsids=a,b,c` at a time, the case lookups in one Dataverse `$batch`,
//! and the writes in `$batch`es of a few sessions, one change set per session (its
//! row and its transcript note succeed or fail together), so that a session that
//! fails fails alone, with Dataverse's error.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use plugin_api::{ErrorKind, Event, Outcome, PluginError};
use serde_json::Value;

use crate::appliance::xml::{SessionReport, SurveyLine};
use crate::appliance::{ApplianceError, SurveyKind};
use crate::dynamics::batch::{BatchRequest, Operation};
use crate::dynamics::{Collection, DataverseError, DynamicsError};
use crate::error::Error;
use crate::sync::{
    case_lookup_path, check_ended, no_report_yet, note_body, note_path, polled_report,
    polled_survey, row_path, session_row, subject, survey_found, wants_survey, written_detail,
    Case, CaseNeed, CaseRef, Sync,
};

/// Sessions per `SupportSession` call: reports carry whole transcripts, so a call
/// stays well under the answer cap; a call too large anyway is split in two.
pub const REPORTS_PER_CALL: usize = 25;
/// Sessions per exit survey call (survey answers are small).
pub const SURVEYS_PER_CALL: usize = 50;
/// Case lookups per `$batch` (reads; one request against the limits either way).
pub const LOOKUPS_PER_BATCH: usize = 50;
/// Sessions per `$batch` of writes, sent one after another: Microsoft advises small
/// batches (about ten operations).
pub const SESSIONS_PER_BATCH: usize = 10;

/// An error shared by the events one failed call served.
pub type Shared = Arc<Error>;

/// One event's result.
pub type Verdict = Result<Outcome, Shared>;

/// An event on its way through the batch.
struct Pending<'a> {
    index: usize,
    lsid: &'a str,
    kind: Option<SurveyKind>,
    report: Option<SessionReport>,
    need: Option<CaseNeed>,
    case: Option<CaseRef>,
    surveys: [Option<Vec<SurveyLine>>; 2],
}

const SURVEY_KINDS: [SurveyKind; 2] = [SurveyKind::Customer, SurveyKind::Rep];

/// Whether a failed call says nothing else will work either (throttled, refused,
/// misconfigured): the calls still to make for the batch are not made.
fn stops_the_rest(e: &Error) -> bool {
    matches!(
        PluginError::from(e).kind,
        ErrorKind::Throttled | ErrorKind::Configuration
    )
}

/// Each distinct value once, in first-seen order.
fn distinct<'a>(values: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for v in values {
        if !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

impl Sync {
    /// One result per event, in the events' order.
    pub async fn handle_batch(&self, events: &[Event]) -> Vec<Verdict> {
        let mut results: Vec<Option<Verdict>> = vec![None; events.len()];
        let mut pending = Vec::new();
        for (index, event) in events.iter().enumerate() {
            match subject(event) {
                Err(skip) => results[index] = Some(Ok(skip)),
                Ok((lsid, kind)) => pending.push(Pending {
                    index,
                    lsid,
                    kind,
                    report: polled_report(event),
                    need: None,
                    case: None,
                    surveys: SURVEY_KINDS.map(|which| polled_survey(event, which)),
                }),
            }
        }
        let mut settle = |p: &Pending<'_>, verdict: Verdict| results[p.index] = Some(verdict);

        // The reports not already in the events.
        let wanted = distinct(
            pending
                .iter()
                .filter(|p| p.report.is_none())
                .map(|p| p.lsid),
        );
        let (reports, failed) = self.reports(&wanted).await;
        pending.retain_mut(|p| {
            if p.report.is_none() {
                if let Some(e) = failed.get(p.lsid) {
                    settle(p, Err(Arc::clone(e)));
                    return false;
                }
                p.report = reports.get(p.lsid).cloned();
            }
            let checked = match &p.report {
                None => Err(no_report_yet(p.lsid)),
                Some(report) => check_ended(report, p.lsid, p.kind),
            };
            match checked {
                Ok(()) => true,
                Err(e) => {
                    settle(p, Err(Arc::new(e)));
                    false
                }
            }
        });

        // The import rules, then every case lookup they ask for at once.
        for p in &mut pending {
            if let Some(report) = &p.report {
                p.need = Some(CaseNeed::of(&self.rules, report));
            }
        }
        let keys = distinct(
            pending
                .iter()
                .filter_map(|p| p.need.as_ref().and_then(CaseNeed::key)),
        );
        let found = self.find_cases(&keys).await;
        pending.retain_mut(|p| {
            let Some(need) = p.need.take() else {
                return false;
            };
            let looked_up = match need.key().map(|k| found.get(k)) {
                None => None,
                Some(Some(Ok(case))) => case.clone(),
                Some(Some(Err(e))) => {
                    settle(p, Err(Arc::clone(e)));
                    return false;
                }
                Some(None) => {
                    settle(
                        p,
                        Err(Arc::new(Error::NotYet(
                            "the case lookup was not made".into(),
                        ))),
                    );
                    return false;
                }
            };
            match need.resolve(looked_up) {
                Ok(case) => {
                    p.case = case;
                    true
                }
                Err(skip) => {
                    settle(p, Ok(skip));
                    false
                }
            }
        });

        // The surveys the sessions need, one call per kind (and chunk).
        for (slot, which) in SURVEY_KINDS.into_iter().enumerate() {
            let needing = |p: &Pending<'_>| {
                if p.surveys[slot].is_some() {
                    return None;
                }
                p.report
                    .as_ref()
                    .and_then(|r| wants_survey(p.kind, which, r))
            };
            let wanted = distinct(
                pending
                    .iter()
                    .filter(|p| needing(p).is_some())
                    .map(|p| p.lsid),
            );
            if wanted.is_empty() {
                continue;
            }
            let (surveys, failed) = self.surveys_of(which, &wanted).await;
            pending.retain_mut(|p| {
                let Some(required) = needing(p) else {
                    return true;
                };
                if let Some(e) = failed.get(p.lsid) {
                    settle(p, Err(Arc::clone(e)));
                    return false;
                }
                match survey_found(surveys.get(p.lsid).cloned(), p.lsid, required) {
                    Ok(lines) => {
                        p.surveys[slot] = lines;
                        true
                    }
                    Err(e) => {
                        settle(p, Err(Arc::new(e)));
                        false
                    }
                }
            });
        }

        // The writes.
        let ready: Vec<(&Pending<'_>, &SessionReport)> = pending
            .iter()
            .filter_map(|p| p.report.as_ref().map(|r| (p, r)))
            .collect();
        // After a batch refused as a whole for a reason that holds for the next ones
        // too (credentials, throttling), those are not sent.
        let mut stopped: Option<Shared> = None;
        for chunk in ready.chunks(SESSIONS_PER_BATCH) {
            let verdicts = match &stopped {
                Some(e) => Err(Arc::clone(e)),
                None => self.write(chunk).await,
            };
            let verdicts = verdicts.unwrap_or_else(|e| {
                if stops_the_rest(&e) {
                    stopped = Some(Arc::clone(&e));
                }
                chunk.iter().map(|_| Err(Arc::clone(&e))).collect()
            });
            for ((p, _), verdict) in chunk.iter().zip(verdicts) {
                settle(p, verdict);
            }
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(Arc::new(Error::NotYet(
                        "the event was not handled in its batch".into(),
                    )))
                })
            })
            .collect()
    }

    /// Reports by lsid, `REPORTS_PER_CALL` at a time, and the error of each lsid
    /// whose call failed.
    async fn reports(
        &self,
        lsids: &[&str],
    ) -> (HashMap<String, SessionReport>, HashMap<String, Shared>) {
        let mut found = HashMap::new();
        let mut failed = HashMap::new();
        let mut queue: VecDeque<&[&str]> = lsids.chunks(REPORTS_PER_CALL).collect();
        while let Some(chunk) = queue.pop_front() {
            match self.appliance.sessions(chunk).await {
                Ok(reports) => {
                    for r in reports
                        .into_iter()
                        .filter(|r| chunk.contains(&r.lsid.as_str()))
                    {
                        found.insert(r.lsid.clone(), r);
                    }
                }
                Err(ApplianceError::TooLarge { .. }) if chunk.len() > 1 => {
                    let (a, b) = chunk.split_at(chunk.len() / 2);
                    queue.push_front(b);
                    queue.push_front(a);
                }
                Err(e) => {
                    let e: Shared = Arc::new(e.into());
                    let rest: Vec<&[&str]> = if stops_the_rest(&e) {
                        queue.drain(..).collect()
                    } else {
                        Vec::new()
                    };
                    for lsid in chunk.iter().chain(rest.into_iter().flatten()) {
                        failed.insert((*lsid).to_owned(), Arc::clone(&e));
                    }
                }
            }
        }
        (found, failed)
    }

    /// Survey lines by lsid, `SURVEYS_PER_CALL` at a time, and the error of each
    /// lsid whose call failed.
    async fn surveys_of(
        &self,
        which: SurveyKind,
        lsids: &[&str],
    ) -> (HashMap<String, Vec<SurveyLine>>, HashMap<String, Shared>) {
        let mut found = HashMap::new();
        let mut failed = HashMap::new();
        let mut chunks = lsids.chunks(SURVEYS_PER_CALL);
        while let Some(chunk) = chunks.next() {
            match self.appliance.surveys(which, chunk).await {
                Ok(surveys) => {
                    for (lsid, lines) in surveys {
                        if chunk.contains(&lsid.as_str()) {
                            found.entry(lsid).or_insert(lines);
                        }
                    }
                }
                Err(e) => {
                    let e: Shared = Arc::new(e.into());
                    let rest: Vec<&[&str]> = if stops_the_rest(&e) {
                        chunks.by_ref().collect()
                    } else {
                        Vec::new()
                    };
                    for lsid in chunk.iter().chain(rest.into_iter().flatten()) {
                        failed.insert((*lsid).to_owned(), Arc::clone(&e));
                    }
                }
            }
        }
        (found, failed)
    }

    /// The case of each ticket number, by the single path's own query, as GETs in
    /// one `$batch` per `LOOKUPS_PER_BATCH` numbers.
    async fn find_cases(&self, keys: &[&str]) -> HashMap<String, Result<Option<CaseRef>, Shared>> {
        let mut found = HashMap::new();
        for chunk in keys.chunks(LOOKUPS_PER_BATCH) {
            let mut request = BatchRequest::default();
            for key in chunk {
                request.push(Operation::get(case_lookup_path(key)));
            }
            let answers = match self
                .dynamics
                .batch(&request, "a batch of case lookups")
                .await
            {
                Ok(answers) => answers,
                Err(e) => {
                    let e: Shared = Arc::new(e.into());
                    for key in chunk {
                        found.insert((*key).to_owned(), Err(Arc::clone(&e)));
                    }
                    continue;
                }
            };
            for (k, key) in chunk.iter().enumerate() {
                let what = "the case lookup";
                let case = match answers.get(k) {
                    None => Err(unanswered(what)),
                    Some(answer) => match answer.failure() {
                        Some(failed) => Err(answered(what, failed)),
                        None => answer
                            .responses()
                            .first()
                            .ok_or_else(|| unanswered(what))
                            .and_then(|r| {
                                serde_json::from_slice::<Collection<Case>>(&r.body).map_err(|e| {
                                    DynamicsError::Unexpected {
                                        what: what.to_owned(),
                                        detail: e.to_string(),
                                    }
                                })
                            })
                            .map(|cases| self.pick_case(key, cases.value)),
                    },
                };
                found.insert(
                    (*key).to_owned(),
                    case.map_err(|e| Arc::new(Error::from(e))),
                );
            }
        }
        found
    }

    /// Writes a few sessions in one `$batch`, a change set each: the row, and the
    /// transcript note bound to it by its Content-ID. An error: the whole batch failed.
    async fn write(
        &self,
        chunk: &[(&Pending<'_>, &SessionReport)],
    ) -> Result<Vec<Verdict>, Shared> {
        let mut request = BatchRequest::default();
        let mut notes = Vec::with_capacity(chunk.len());
        // Content-IDs unique in the batch: session k's row is 2k+1, its note 2k+2.
        for (k, (p, report)) in chunk.iter().enumerate() {
            let [customer, rep] = &p.surveys;
            let (row, overflow) = session_row(
                report,
                self.times,
                p.case.as_ref(),
                customer.as_deref(),
                rep.as_deref(),
            );
            let row_id = 2 * k + 1;
            let mut ops = vec![Operation::patch(
                row_path(&report.lsid),
                &Value::Object(row),
                row_id,
            )];
            let note_id = overflow.map(|full| {
                let body = note_body(&report.lsid, &format!("${row_id}"), &full);
                ops.push(Operation::patch(note_path(&report.lsid), &body, row_id + 1));
                (row_id + 1).to_string()
            });
            notes.push(note_id);
            request.push_change_set(ops);
        }
        let answers = self
            .dynamics
            .batch(&request, "a batch of session upserts")
            .await
            .map_err(|e| Arc::new(Error::from(e)))?;
        let verdicts: Vec<Verdict> = chunk
            .iter()
            .zip(&notes)
            .enumerate()
            .map(|(k, ((p, report), note))| {
                let answer = answers
                    .get(k)
                    .ok_or_else(|| Arc::new(Error::from(unanswered("the session upsert"))))?;
                if let Some(failed) = answer.failure() {
                    let what = if failed.content_id.is_some() && failed.content_id == *note {
                        "the transcript note"
                    } else {
                        "the session upsert"
                    };
                    return Err(Arc::new(Error::from(answered(what, failed))));
                }
                Ok(Outcome::Done {
                    detail: written_detail(&report.lsid, p.case.as_ref(), note.is_some()),
                })
            })
            .collect();
        let failures = verdicts.iter().filter(|v| v.is_err()).count();
        self.log.info(&format!(
            "a batch wrote {} session(s){}",
            verdicts.len() - failures,
            if failures > 0 {
                format!("; {failures} failed")
            } else {
                String::new()
            }
        ));
        Ok(verdicts)
    }
}

/// A failed request inside a batch, as Dataverse answered it.
fn answered(what: &str, failed: &crate::dynamics::batch::Response) -> DynamicsError {
    DynamicsError::Answered {
        what: what.to_owned(),
        error: DataverseError::from_answer(failed.status, &failed.body, failed.retry_after()),
    }
}

fn unanswered(what: &str) -> DynamicsError {
    DynamicsError::Unexpected {
        what: what.to_owned(),
        detail: "the batch's answer has no part for it".into(),
    }
}
