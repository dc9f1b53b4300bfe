//! The reporting API's XML, read with quick-xml by local names whatever the
//! namespace (BeyondTrust's or the older Bomgar one), unknown elements ignored,
//! entities and unicode decoded. An `<error>` root becomes [`ReportError::Appliance`].

use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::{BytesRef, BytesStart, Event};
use quick_xml::{Reader, XmlVersion};
use serde::{Deserialize, Serialize};

/// A parsed XML element: local name, attributes, text, children.
#[derive(Debug, Clone, Default)]
pub struct Node {
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub text: String,
    pub children: Vec<Node>,
}

impl Node {
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn child(&self, name: &str) -> Option<&Node> {
        self.children.iter().find(|c| c.name == name)
    }

    pub fn children<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The trimmed text of a child, `None` when absent or empty.
    pub fn text_of(&self, name: &str) -> Option<String> {
        self.child(name)
            .map(|c| c.text.trim().to_owned())
            .filter(|t| !t.is_empty())
    }

    /// The `<value name=".." value=".."/>` children as pairs (survey answers, event data).
    fn name_values(&self) -> impl Iterator<Item = (String, String)> + '_ {
        self.children("value").filter_map(|v| {
            Some((
                v.attr("name")?.to_owned(),
                v.attr("value").unwrap_or("").to_owned(),
            ))
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// The appliance answered `<error>`.
    #[error("{0}")]
    Appliance(String),
    #[error("the appliance's answer is not readable XML: {0}")]
    Malformed(String),
}

fn local(name: &str) -> String {
    match name.rsplit_once(':') {
        Some((_, local)) => local.to_owned(),
        None => name.to_owned(),
    }
}

fn start(e: &BytesStart<'_>) -> Result<Node, ReportError> {
    let mut attrs = Vec::new();
    for a in e.attributes() {
        let a = a.map_err(|e| ReportError::Malformed(e.to_string()))?;
        if a.key.as_ref().starts_with("xmlns") {
            continue;
        }
        let value = a
            .normalized_value(XmlVersion::Implicit1_0)
            .map_err(|e| ReportError::Malformed(e.to_string()))?
            .into_owned();
        attrs.push((local(a.key.as_ref()), value));
    }
    Ok(Node {
        name: local(e.local_name().as_ref()),
        attrs,
        ..Node::default()
    })
}

/// The text a reference in character data stands for: a character reference or one
/// of XML's five predefined entities (the appliance declares no others).
fn reference(r: &BytesRef<'_>) -> Result<String, ReportError> {
    if let Some(c) = r
        .resolve_char_ref()
        .map_err(|e| ReportError::Malformed(e.to_string()))?
    {
        return Ok(c.to_string());
    }
    let name = r.xml10_content();
    resolve_predefined_entity(&name)
        .map(str::to_owned)
        .ok_or_else(|| ReportError::Malformed(format!("unknown entity &{name};")))
}

/// Parses a whole document into its root element.
pub fn parse(xml: &str) -> Result<Node, ReportError> {
    let mut reader = Reader::from_str(xml);
    let mut stack: Vec<Node> = Vec::new();
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) => stack.push(start(&e)?),
            Ok(Event::Empty(e)) => {
                let node = start(&e)?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(node),
                    None => return Ok(node),
                }
            }
            Ok(Event::End(_)) => {
                let node = stack
                    .pop()
                    .ok_or_else(|| ReportError::Malformed("unbalanced end tag".into()))?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(node),
                    None => return Ok(node),
                }
            }
            Ok(Event::Text(t)) => {
                if let Some(node) = stack.last_mut() {
                    node.text.push_str(&t.xml10_content());
                }
            }
            // Since quick-xml 0.38 references come apart from the text around them.
            Ok(Event::GeneralRef(r)) => {
                if let Some(node) = stack.last_mut() {
                    node.text.push_str(&reference(&r)?);
                }
            }
            Ok(Event::CData(t)) => {
                if let Some(node) = stack.last_mut() {
                    node.text.push_str(&t.xml10_content());
                }
            }
            Ok(Event::Eof) => {
                return Err(ReportError::Malformed(
                    "the document ended before its root element closed".into(),
                ))
            }
            Ok(_) => {}
            Err(e) => {
                return Err(ReportError::Malformed(format!(
                    "at byte {}: {e}",
                    reader.error_position()
                )))
            }
        }
    }
}

/// Parses an answer and turns an `<error>` root (or an `<error>` directly under the
/// root) into an error.
pub fn parse_answer(xml: &str) -> Result<Node, ReportError> {
    let root = parse(xml)?;
    if root.name == "error" {
        return Err(ReportError::Appliance(root.text.trim().to_owned()));
    }
    if let Some(error) = root.child("error") {
        return Err(ReportError::Appliance(error.text.trim().to_owned()));
    }
    Ok(root)
}

/// Texts appliances answer, in several languages, when a report matches nothing.
pub fn is_no_data(message: &str) -> bool {
    let m = message.to_lowercase();
    [
        "no support report information",
        "aucune information",
        "keine support",
        "no hay información",
    ]
    .iter()
    .any(|p| m.contains(p))
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    pub gsnumber: Option<String>,
    pub username: Option<String>,
    pub public_ip: Option<String>,
    pub private_ip: Option<String>,
    pub hostname: Option<String>,
    pub os: Option<String>,
    pub primary: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rep {
    pub gsnumber: Option<String>,
    pub username: Option<String>,
    pub display_name: Option<String>,
    pub primary: bool,
}

/// Someone named in a session event: a type (`representative`, `customer`,
/// `system`) and a name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Party {
    pub kind: Option<String>,
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEvent {
    pub timestamp: Option<i64>,
    pub event_type: String,
    pub performed_by: Option<Party>,
    pub destination: Option<Party>,
    pub body: Option<String>,
    pub data: Vec<(String, String)>,
}

/// One `<session>` of a `SupportSession` report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionReport {
    pub lsid: String,
    pub lseq: Option<i64>,
    pub session_type: Option<String>,
    pub start_time: Option<i64>,
    pub end_time: Option<i64>,
    pub duration: Option<String>,
    pub public_site: Option<String>,
    pub external_key: Option<String>,
    pub chat_view_url: Option<String>,
    pub chat_download_url: Option<String>,
    pub file_transfer_count: Option<i64>,
    pub primary_customer: Option<String>,
    pub primary_customer_gsnumber: Option<String>,
    pub primary_rep: Option<String>,
    pub primary_rep_gsnumber: Option<String>,
    pub customers: Vec<Customer>,
    pub reps: Vec<Rep>,
    pub events: Vec<SessionEvent>,
    /// `name = value` pairs of the customer exit survey, when the report has one.
    pub customer_survey: Vec<(String, String)>,
    pub rep_survey: Vec<(String, String)>,
}

fn timestamp(node: Option<&Node>) -> Option<i64> {
    node.and_then(|n| n.attr("timestamp"))
        .and_then(|t| t.trim().parse().ok())
}

fn party(node: Option<&Node>) -> Option<Party> {
    let n = node?;
    let name = n.text.trim().to_owned();
    (!name.is_empty() || n.attr("type").is_some()).then(|| Party {
        kind: n.attr("type").map(str::to_owned),
        name,
    })
}

fn survey(list: Option<&Node>) -> Vec<(String, String)> {
    list.into_iter()
        .flat_map(|l| l.children.iter())
        .flat_map(Node::name_values)
        .collect()
}

impl SessionReport {
    fn from_node(s: &Node) -> Self {
        let customers = s
            .child("customer_list")
            .into_iter()
            .flat_map(|l| l.children("customer"))
            .map(|c| Customer {
                gsnumber: c.attr("gsnumber").map(str::to_owned),
                username: c.text_of("username"),
                public_ip: c.text_of("public_ip"),
                private_ip: c.text_of("private_ip"),
                hostname: c.text_of("hostname"),
                os: c.text_of("os"),
                primary: c.text_of("primary_cust").as_deref() == Some("1"),
            })
            .collect();
        let reps = s
            .child("rep_list")
            .into_iter()
            .flat_map(|l| l.children("representative"))
            .map(|r| Rep {
                gsnumber: r.attr("gsnumber").map(str::to_owned),
                username: r.text_of("username"),
                display_name: r
                    .text_of("display_name")
                    .or_else(|| r.text_of("public_display_name")),
                primary: r.text_of("primary_rep").as_deref() == Some("1"),
            })
            .collect();
        let events = s
            .child("session_details")
            .into_iter()
            .flat_map(|d| d.children("event"))
            .map(|e| SessionEvent {
                timestamp: timestamp(Some(e)),
                event_type: e.attr("event_type").unwrap_or("").to_owned(),
                performed_by: party(e.child("performed_by")),
                destination: party(e.child("destination")),
                body: e
                    .child("body")
                    .map(|b| b.text.clone())
                    .filter(|b| !b.trim().is_empty()),
                data: e
                    .child("data")
                    .into_iter()
                    .flat_map(Node::name_values)
                    .collect(),
            })
            .collect();
        Self {
            lsid: s.attr("lsid").unwrap_or("").to_owned(),
            lseq: s.text_of("lseq").and_then(|t| t.parse().ok()),
            session_type: s.text_of("session_type"),
            start_time: timestamp(s.child("start_time")),
            end_time: timestamp(s.child("end_time")).filter(|t| *t > 0),
            duration: s.text_of("duration"),
            public_site: s.text_of("public_site"),
            external_key: s.text_of("external_key"),
            chat_view_url: s.text_of("session_chat_view_url"),
            chat_download_url: s.text_of("session_chat_download_url"),
            file_transfer_count: s
                .text_of("file_transfer_count")
                .and_then(|t| t.parse().ok()),
            primary_customer: s.text_of("primary_customer"),
            primary_customer_gsnumber: s
                .child("primary_customer")
                .and_then(|c| c.attr("gsnumber"))
                .map(str::to_owned),
            primary_rep: s.text_of("primary_rep"),
            primary_rep_gsnumber: s
                .child("primary_rep")
                .and_then(|c| c.attr("gsnumber"))
                .map(str::to_owned),
            customers,
            reps,
            events,
            customer_survey: survey(s.child("cust_survey_list")),
            rep_survey: survey(s.child("rep_survey_list")),
        }
    }
}

/// Reads a `SupportSession` answer.
pub fn sessions(xml: &str) -> Result<Vec<SessionReport>, ReportError> {
    let root = parse_answer(xml)?;
    if root.name != "session_list" {
        return Err(ReportError::Malformed(format!(
            "expected <session_list>, got <{}>",
            root.name
        )));
    }
    Ok(root
        .children("session")
        .map(SessionReport::from_node)
        .collect())
}

/// One `<session_summary>` of a `SupportSessionListing` answer. Real answers carry
/// the lsid, the external key and whether there is a recording: no start or end
/// time (see `tests/fixtures/support-session-listing-pra-cloud.xml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSummary {
    pub lsid: String,
    pub external_key: Option<String>,
}

/// Reads a `SupportSessionListing` answer strictly: the root must be
/// `<session_summary_list>` and each summary must name its session; a session
/// listed twice is kept once.
pub fn session_listing(xml: &str) -> Result<Vec<SessionSummary>, ReportError> {
    let root = parse_answer(xml)?;
    if root.name != "session_summary_list" {
        return Err(ReportError::Malformed(format!(
            "expected <session_summary_list>, got <{}>",
            root.name
        )));
    }
    let mut listed: Vec<SessionSummary> = Vec::new();
    for (i, s) in root.children("session_summary").enumerate() {
        let lsid = s.attr("lsid").map(str::trim).unwrap_or("");
        if lsid.is_empty() {
            return Err(ReportError::Malformed(format!(
                "session_summary {} has no lsid",
                i + 1
            )));
        }
        if listed.iter().any(|l| l.lsid == lsid) {
            continue;
        }
        listed.push(SessionSummary {
            lsid: lsid.to_owned(),
            external_key: s
                .attr("external_key")
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(str::to_owned),
        });
    }
    Ok(listed)
}

/// One answered question of an exit survey: its label and answer(s).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SurveyLine {
    pub label: String,
    pub answer: String,
}

/// Reads a `SupportCustExitSurvey` / `SupportRepExitSurvey` answer: lsid -> lines.
pub fn exit_surveys(xml: &str) -> Result<Vec<(String, Vec<SurveyLine>)>, ReportError> {
    let root = parse_answer(xml)?;
    if root.name != "exit_survey_list" {
        return Err(ReportError::Malformed(format!(
            "expected <exit_survey_list>, got <{}>",
            root.name
        )));
    }
    Ok(root
        .children("exit_survey")
        .map(|s| {
            let lines = s
                .child("question_list")
                .into_iter()
                .flat_map(|q| q.children("question"))
                .map(|q| {
                    // Label and name appear as attributes or as child elements.
                    let label = q
                        .attr("label")
                        .map(str::to_owned)
                        .or_else(|| q.text_of("label"))
                        .or_else(|| q.attr("report_header").map(str::to_owned))
                        .or_else(|| q.text_of("report_header"))
                        .or_else(|| q.attr("name").map(str::to_owned))
                        .or_else(|| q.text_of("name"))
                        .unwrap_or_default();
                    let answers: Vec<String> = q
                        .child("answer_list")
                        .or_else(|| s.child("answer_list"))
                        .into_iter()
                        .flat_map(|l| l.children("answer"))
                        .map(|a| a.text.trim().replace("\\n", "\n"))
                        .filter(|a| !a.is_empty())
                        .collect();
                    SurveyLine {
                        label,
                        answer: answers.join(", "),
                    }
                })
                .collect();
            (s.attr("lsid").unwrap_or("").to_owned(), lines)
        })
        .collect())
}

/// Whether `get_api_info` grants the support session report permission.
pub fn reporting_permission(xml: &str) -> Result<bool, ReportError> {
    let root = parse_answer(xml)?;
    let allowed = root
        .child("permissions")
        .into_iter()
        .flat_map(|p| p.children("permission"))
        .any(|p| {
            p.attr("name") == Some("perm_reporting_support")
                && matches!(p.text.trim(), "1" | "full_access")
        });
    Ok(allowed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REAL: &str = include_str!("../../tests/fixtures/support-session-pra-cloud.xml");

    #[test]
    fn a_real_answer_is_read_right() {
        let sessions = sessions(REAL).expect("parses");
        assert_eq!(sessions.len(), 1);
        let s = &sessions[0];
        assert_eq!(s.lsid, "e9e99aeb9ad54fb381634498502c5a1b");
        assert_eq!(
            (s.lseq, s.start_time, s.end_time),
            (Some(8), Some(1_733_239_565), Some(1_733_240_467))
        );
        assert_eq!(s.external_key, None, "an empty external key is none");
        assert_eq!(s.duration.as_deref(), Some("00:15:02"));
        assert_eq!(s.file_transfer_count, Some(2));
        assert!(
            s.chat_view_url
                .as_deref()
                .is_some_and(|u| u.ends_with("&dl_action=chat&view=1")),
            "entities decoded"
        );
        assert_eq!(s.primary_customer.as_deref(), Some("Sekoia.io integration"));
        assert_eq!(
            s.customers[0].public_ip.as_deref(),
            Some("4.231.237.19:61606")
        );
        assert_eq!(s.reps[0].display_name.as_deref(), Some("Admin"));
        assert_eq!(s.events.len(), 2);
        assert_eq!(s.events[0].event_type, "Session Start");
        assert_eq!(
            s.events[1].data,
            vec![("owner".to_owned(), "Pre-start Conference".to_owned())]
        );
    }

    #[test]
    fn namespaces_unknown_elements_and_unicode_do_not_matter() {
        let xml = r#"<?xml version="1.0"?><b:session_list xmlns:b="http://www.bomgar.com/namespaces/API/reporting"><b:session lsid="x"><b:new_thing><b:deep/></b:new_thing><b:external_key>CAS&#45;1 &amp; ü</b:external_key><b:session_details><b:event timestamp="5" event_type="Chat Message"><b:body><![CDATA[a < b]]></b:body></b:event></b:session_details></b:session></b:session_list>"#;
        let s = &sessions(xml).expect("parses")[0];
        assert_eq!(s.external_key.as_deref(), Some("CAS-1 & ü"));
        assert_eq!(s.events[0].body.as_deref(), Some("a < b"));
    }

    #[test]
    fn an_error_root_is_an_error_with_its_text() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?><error xmlns="http://www.beyondtrust.com/sra/namespaces/API/reporting">No Support report information matching your chosen criteria is available.</error>"#;
        let err = sessions(xml).expect_err("error root");
        assert!(matches!(&err, ReportError::Appliance(m) if is_no_data(m)));
        assert!(
            matches!(sessions("<session_list><error>Login failed</error></session_list>"), Err(ReportError::Appliance(m)) if m == "Login failed")
        );
        assert!(matches!(
            sessions("not xml <"),
            Err(ReportError::Malformed(_))
        ));
        assert!(matches!(
            sessions("<session_list><session>"),
            Err(ReportError::Malformed(_))
        ));
    }

    #[test]
    fn duplicate_attributes_and_unknown_entities_are_malformed() {
        assert!(matches!(
            sessions(r#"<session_list><session lsid="a" lsid="b"/></session_list>"#),
            Err(ReportError::Malformed(_))
        ));
        assert!(matches!(
            sessions("<session_list><session lsid=\"a\"><external_key>&nbsp;</external_key></session></session_list>"),
            Err(ReportError::Malformed(m)) if m.contains("&nbsp;")
        ));
        // Many distinct attributes on one element stay cheap (RUSTSEC-2026-0194).
        let attrs: String = (0..20_000).map(|i| format!(" a{i}=\"{i}\"")).collect();
        let xml = format!("<session_list><session lsid=\"x\"{attrs}/></session_list>");
        assert_eq!(sessions(&xml).expect("parses")[0].lsid, "x");
    }

    const REAL_LISTING: &str =
        include_str!("../../tests/fixtures/support-session-listing-pra-cloud.xml");

    #[test]
    fn a_real_listing_is_read_right() {
        let listed = session_listing(REAL_LISTING).expect("parses");
        assert_eq!(
            listed,
            vec![
                SessionSummary {
                    lsid: "e9e99aeb9ad54fb381634498502c5a1b".into(),
                    external_key: None
                },
                SessionSummary {
                    lsid: "219ca41dc71940a5a69687b49736d97b".into(),
                    external_key: None
                },
            ]
        );
    }

    #[test]
    fn listings_are_read_strictly() {
        let xml = r#"<b:session_summary_list xmlns:b="http://www.bomgar.com/namespaces/API/reporting"><b:session_summary lsid="a" external_key="CAS-1" has_recording="1"><b:new/></b:session_summary><b:session_summary lsid="a"/><b:other/><b:session_summary lsid=" b " external_key=""/></b:session_summary_list>"#;
        let listed = session_listing(xml).expect("parses");
        assert_eq!(
            listed,
            vec![
                SessionSummary {
                    lsid: "a".into(),
                    external_key: Some("CAS-1".into())
                },
                SessionSummary {
                    lsid: "b".into(),
                    external_key: None
                },
            ],
            "once each, unknown elements ignored"
        );
        assert_eq!(
            session_listing("<session_summary_list/>").expect("empty"),
            vec![]
        );
        assert!(matches!(
            session_listing(r#"<session_summary_list><session_summary has_recording="0"/></session_summary_list>"#),
            Err(ReportError::Malformed(m)) if m == "session_summary 1 has no lsid"
        ));
        assert!(matches!(
            session_listing("<session_list/>"),
            Err(ReportError::Malformed(m)) if m.contains("expected <session_summary_list>")
        ));
        assert!(matches!(
            session_listing("<error>Login failed</error>"),
            Err(ReportError::Appliance(m)) if m == "Login failed"
        ));
    }

    #[test]
    fn surveys_read_labels_from_attributes_or_children() {
        let xml = r#"<exit_survey_list xmlns="x"><exit_survey lsid="L"><question_list>
            <question id="1" label="How satisfied?" name="rating"><answer_list><answer>5</answer></answer_list></question>
            <question id="2"><label>Comments</label><answer_list><answer>Great\nthanks</answer></answer_list></question>
            </question_list></exit_survey></exit_survey_list>"#;
        let surveys = exit_surveys(xml).expect("parses");
        assert_eq!(surveys[0].0, "L");
        assert_eq!(
            surveys[0].1,
            vec![
                SurveyLine {
                    label: "How satisfied?".into(),
                    answer: "5".into()
                },
                SurveyLine {
                    label: "Comments".into(),
                    answer: "Great\nthanks".into()
                },
            ]
        );
    }
}

/// Fuzzing the report parser: arbitrary text and damaged real answers give an error
/// or sessions, never a panic or a hang.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    const REAL: &str = include_str!("../../tests/fixtures/support-session-pra-cloud.xml");

    proptest! {
        #[test]
        fn any_text_gets_a_verdict(text in ".{0,2000}") {
            let _ = sessions(&text);
            let _ = exit_surveys(&text);
            let _ = reporting_permission(&text);
            let _ = session_listing(&text);
        }

        #[test]
        fn a_damaged_real_answer_gets_a_verdict(cut in 0usize..REAL.len(), insert in ".{0,40}") {
            let mut damaged: String = REAL.chars().take(cut).collect();
            damaged.push_str(&insert);
            damaged.extend(REAL.chars().skip(cut));
            if let Ok(found) = sessions(&damaged) {
                prop_assert!(found.len() <= 2);
            }
        }
    }
}
