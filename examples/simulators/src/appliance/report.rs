//! The reporting API's XML, shaped like the appliance's (see the reference sample):
//! `session_list`, `session_summary_list`, `exit_survey_list`, `<error>`.

use std::fmt::Write;

use quick_xml::escape::escape;

use super::model::{Session, SurveyAnswer};

pub const NAMESPACE: &str = "http://www.beyondtrust.com/sra/namespaces/API/reporting";
/// What older (Bomgar-branded) appliances answer in.
pub const OLD_NAMESPACE: &str = "http://www.bomgar.com/namespaces/API/reporting";

fn iso(ts: i64) -> String {
    chrono::DateTime::from_timestamp(ts, 0)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S+00:00").to_string())
        .unwrap_or_default()
}

fn hms(seconds: i64) -> String {
    let s = seconds.max(0);
    format!("{:02}:{:02}:{:02}", s / 3600, s % 3600 / 60, s % 60)
}

/// `<name>text</name>`, or nothing when there is no text.
fn element(out: &mut String, name: &str, text: Option<&str>) {
    if let Some(t) = text {
        let _ = write!(out, "<{name}>{}</{name}>", escape(t));
    }
}

pub fn error(namespace: &str, message: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<error xmlns=\"{namespace}\">{}</error>\n",
        escape(message)
    )
}

/// The text a real appliance answers when nothing matches (with HTTP 200).
pub const NO_DATA: &str =
    "No Support report information matching your chosen criteria is available.";

const CUSTOMER_GS: u32 = 3;
const FIRST_REP_GS: u32 = 2;

fn rep_gs(index: usize) -> u32 {
    if index == 0 {
        FIRST_REP_GS
    } else {
        10 + index as u32
    }
}

pub fn session_list(namespace: &str, sessions: &[&Session], host: &str) -> String {
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<session_list xmlns=\"{namespace}\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">\n"
    );
    for s in sessions {
        session(&mut out, s, host);
    }
    out.push_str("</session_list>\n");
    out
}

fn session(out: &mut String, s: &Session, host: &str) {
    let spec = &s.spec;
    let _ = writeln!(out, "<session lsid=\"{}\">", escape(&s.lsid));
    element(out, "session_type", Some(&spec.session_type));
    let _ = write!(out, "<lseq>{}</lseq>", s.lseq);
    let _ = write!(
        out,
        "<start_time timestamp=\"{}\">{}</start_time>",
        s.start_time,
        iso(s.start_time)
    );
    if let Some(end) = s.end_time {
        let _ = write!(out, "<end_time timestamp=\"{end}\">{}</end_time>", iso(end));
        element(out, "duration", Some(&hms(end - s.start_time)));
    }
    let _ = write!(
        out,
        "<public_site id=\"1\">{}</public_site>",
        escape(&spec.public_site)
    );
    let _ = write!(
        out,
        "<external_key>{}</external_key>",
        escape(spec.external_key.as_deref().unwrap_or(""))
    );
    out.push_str("<custom_attributes></custom_attributes>");
    if s.end_time.is_some() {
        let link = format!(
            "https://{host}/session_download?lsid={}&dl_action=chat",
            s.lsid
        );
        let _ = write!(
            out,
            "<session_chat_view_url>{}</session_chat_view_url>",
            escape(format!("{link}&view=1").as_str())
        );
        let _ = write!(
            out,
            "<session_chat_download_url>{}</session_chat_download_url>",
            escape(&link)
        );
    }
    let _ = write!(
        out,
        "<file_transfer_count>{}</file_transfer_count>",
        spec.file_transfer_count
    );
    out.push_str("<file_move_count>0</file_move_count>");
    let customer = &spec.customer;
    let _ = write!(
        out,
        "<primary_customer gsnumber=\"{CUSTOMER_GS}\">{}</primary_customer>",
        escape(&customer.name)
    );
    if let Some(rep) = spec.reps.first() {
        let _ = write!(
            out,
            "<primary_rep gsnumber=\"{FIRST_REP_GS}\" id=\"7\">{}</primary_rep>",
            escape(&rep.display_name)
        );
    }
    let _ = write!(
        out,
        "\n<customer_list><customer gsnumber=\"{CUSTOMER_GS}\">"
    );
    element(out, "username", Some(&customer.name));
    element(out, "public_ip", customer.public_ip.as_deref());
    element(out, "private_ip", customer.private_ip.as_deref());
    element(out, "hostname", customer.hostname.as_deref());
    element(out, "os", customer.os.as_deref());
    out.push_str("<info>");
    element(out, "name", Some(&customer.name));
    element(out, "company", customer.company.as_deref());
    element(out, "issue", customer.issue.as_deref());
    out.push_str("</info><primary_cust>1</primary_cust></customer></customer_list>\n<rep_list>");
    let duration = s.end_time.unwrap_or(s.start_time) - s.start_time;
    for (i, rep) in spec.reps.iter().enumerate() {
        let _ = write!(
            out,
            "<representative gsnumber=\"{}\" id=\"{}\">",
            rep_gs(i),
            7 + i
        );
        element(out, "username", Some(&rep.username));
        element(out, "display_name", Some(&rep.display_name));
        element(out, "public_display_name", Some(&rep.display_name));
        element(out, "private_display_name", Some(&rep.display_name));
        element(out, "public_ip", rep.public_ip.as_deref());
        element(out, "private_ip", rep.private_ip.as_deref());
        element(out, "hostname", rep.hostname.as_deref());
        element(out, "os", rep.os.as_deref());
        let _ = write!(
            out,
            "<session_owner>{}</session_owner><primary_rep>{}</primary_rep><seconds_involved>{duration}</seconds_involved></representative>",
            u8::from(i == 0),
            u8::from(i == 0)
        );
    }
    out.push_str("</rep_list>\n<session_details>\n");
    let _ = writeln!(
        out,
        "<event timestamp=\"{}\" event_type=\"Session Start\"><performed_by type=\"system\" gsnumber=\"0\">Support Portal</performed_by></event>",
        s.start_time
    );
    let rep_name = spec
        .reps
        .first()
        .map(|r| r.display_name.as_str())
        .unwrap_or("Representative");
    if !spec.reps.is_empty() {
        let _ = writeln!(
            out,
            "<event timestamp=\"{}\" event_type=\"Conference Owner Changed\"><destination type=\"representative\" gsnumber=\"{FIRST_REP_GS}\">{}</destination><data><value name=\"owner\" value=\"{}\" /></data></event>",
            s.start_time,
            escape(rep_name),
            escape(rep_name)
        );
    }
    for line in &spec.chat {
        let (from_type, from_gs, from_name, to_type, to_gs, to_name) = if line.from == "customer" {
            (
                "customer",
                CUSTOMER_GS,
                customer.name.as_str(),
                "representative",
                FIRST_REP_GS,
                rep_name,
            )
        } else {
            (
                "representative",
                FIRST_REP_GS,
                rep_name,
                "customer",
                CUSTOMER_GS,
                customer.name.as_str(),
            )
        };
        let _ = writeln!(
            out,
            "<event timestamp=\"{}\" event_type=\"Chat Message\"><performed_by type=\"{from_type}\" gsnumber=\"{from_gs}\">{}</performed_by><destination type=\"{to_type}\" gsnumber=\"{to_gs}\">{}</destination><body>{}</body></event>",
            s.start_time + line.offset_seconds,
            escape(from_name),
            escape(to_name),
            escape(&line.text)
        );
    }
    if let Some(end) = s.end_time {
        let _ = writeln!(
            out,
            "<event timestamp=\"{end}\" event_type=\"Leave Conference\"><performed_by type=\"customer\" gsnumber=\"{CUSTOMER_GS}\">{}</performed_by></event>",
            escape(&customer.name)
        );
    }
    out.push_str("</session_details>\n");
    survey_values(
        out,
        "cust_survey_list",
        "cust_exit_survey",
        CUSTOMER_GS,
        s.customer_survey.as_deref(),
    );
    survey_values(
        out,
        "rep_survey_list",
        "rep_exit_survey",
        FIRST_REP_GS,
        s.rep_survey.as_deref(),
    );
    out.push_str("</session>\n");
}

fn survey_values(
    out: &mut String,
    list: &str,
    item: &str,
    gs: u32,
    answers: Option<&[SurveyAnswer]>,
) {
    match answers {
        None => {
            let _ = writeln!(out, "<{list}></{list}>");
        }
        Some(answers) => {
            let _ = write!(out, "<{list}><{item} gsnumber=\"{gs}\">");
            for a in answers {
                let _ = write!(
                    out,
                    "<value name=\"{}\" value=\"{}\" />",
                    escape(&a.name),
                    escape(&a.answer)
                );
            }
            let _ = writeln!(out, "</{item}></{list}>");
        }
    }
}

pub fn session_listing(namespace: &str, sessions: &[&Session]) -> String {
    let mut out = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<session_summary_list xmlns=\"{namespace}\">\n");
    for s in sessions {
        let _ = writeln!(
            out,
            "<session_summary lsid=\"{}\" external_key=\"{}\" has_recording=\"0\" />",
            escape(&s.lsid),
            escape(s.spec.external_key.as_deref().unwrap_or(""))
        );
    }
    out.push_str("</session_summary_list>\n");
    out
}

/// `exit_survey_list` for customer (`rep == false`) or representative surveys.
pub fn exit_surveys(namespace: &str, sessions: &[&Session], rep: bool) -> String {
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<exit_survey_list xmlns=\"{namespace}\">\n"
    );
    for s in sessions {
        let answers = if rep {
            &s.rep_survey
        } else {
            &s.customer_survey
        };
        let Some(answers) = answers else { continue };
        let submitted = s.end_time.unwrap_or(s.start_time);
        let _ = write!(
            out,
            "<exit_survey lsid=\"{}\" timestamp=\"{submitted}\">",
            escape(&s.lsid)
        );
        if rep {
            let name = s
                .spec
                .reps
                .first()
                .map(|r| r.display_name.as_str())
                .unwrap_or("");
            let _ = write!(out, "<submitted_by type=\"rep\" /><primary_rep gsnumber=\"{FIRST_REP_GS}\">{}</primary_rep>", escape(name));
        } else {
            let _ = write!(out, "<submitted_by type=\"customer\" /><primary_customer gsnumber=\"{CUSTOMER_GS}\">{}</primary_customer>", escape(&s.spec.customer.name));
        }
        out.push_str("<question_list>");
        for (i, a) in answers.iter().enumerate() {
            let _ = write!(
                out,
                "<question id=\"{}\" type=\"text\" label=\"{}\" name=\"{}\" report_header=\"{}\"><answer_list><answer>{}</answer></answer_list></question>",
                i + 1,
                escape(&a.label),
                escape(&a.name),
                escape(&a.label),
                escape(&a.answer)
            );
        }
        out.push_str("</question_list></exit_survey>\n");
    }
    out.push_str("</exit_survey_list>\n");
    out
}

/// `get_api_info`, in the command API's namespace.
pub fn api_info(reporting_allowed: bool) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<api_information xmlns=\"http://www.beyondtrust.com/sra/namespaces/API/command\"><api_version>1.24.1</api_version><timestamp>{}</timestamp><permissions><permission name=\"perm_command\">read_only</permission><permission name=\"perm_reporting_support\">{}</permission><permission name=\"perm_reporting_archive\">0</permission></permissions></api_information>\n",
        chrono::Utc::now().timestamp(),
        u8::from(reporting_allowed)
    )
}
