//! The appliance's outbound event, parsed once from its form body into a checked
//! [`IncomingEvent`].

use std::collections::BTreeMap;

use crate::settings::SecretString;

/// The form field carrying the shared event token; never stored.
pub const TOKEN_FIELD: &str = "outbound_event_token";
const MAX_FIELDS: usize = 500;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingEvent {
    pub appliance_id: String,
    pub event_type: String,
    pub timestamp: i64,
    pub lsid: Option<String>,
    /// Every form field but the token.
    pub fields: BTreeMap<String, String>,
    /// The token the sender gave, if any (redacted in Debug output).
    pub token: Option<SecretString>,
}

impl IncomingEvent {
    /// The same event delivered twice has the same key.
    pub fn dedup_key(&self) -> String {
        crate::store::events::dedup_key(
            crate::store::events::Source::Outbound,
            &self.appliance_id,
            &self.event_type,
            self.lsid.as_deref(),
            self.timestamp,
        )
    }
}

/// Parses and checks an event form. `appliance` is the `appliance` query parameter.
pub fn parse(appliance: Option<&str>, body: &[u8]) -> Result<IncomingEvent, String> {
    let appliance_id = match appliance.map(str::trim) {
        None | Some("") => "Default".to_owned(),
        Some(a) if a.chars().count() > 100 || a.chars().any(char::is_control) => {
            return Err("the appliance parameter must be at most 100 printable characters".into())
        }
        Some(a) => a.to_owned(),
    };
    if std::str::from_utf8(body).is_err() {
        return Err("the body is not UTF-8 text".into());
    }
    let mut fields = BTreeMap::new();
    for pair in body.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
        if fields.len() >= MAX_FIELDS {
            return Err(format!("more than {MAX_FIELDS} form fields"));
        }
        let (key, value) = match pair.iter().position(|b| *b == b'=') {
            Some(at) => (&pair[..at], &pair[at + 1..]),
            None => (pair, &b""[..]),
        };
        let key = decode(key).ok_or("a form field name is not UTF-8 text once decoded")?;
        let value = decode(value)
            .ok_or_else(|| format!("the form field {key:?} is not UTF-8 text once decoded"))?;
        fields.insert(key, value);
    }
    let token = fields.remove(TOKEN_FIELD).map(SecretString::new);

    let event_type = match fields.get("event").map(|e| e.trim()) {
        None | Some("") => return Err("the form field `event` is missing".into()),
        Some(e)
            if e.len() > 100
                || !e
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') =>
        {
            return Err(format!(
                "the form field `event` ({e:?}) is not an event name"
            ))
        }
        Some(e) => e.to_owned(),
    };
    match fields.get("version").map(|v| v.trim()) {
        None | Some("") => return Err("the form field `version` is missing".into()),
        Some(v) if v.len() > 20 || !v.chars().all(|c| c.is_ascii_digit() || c == '.') => {
            return Err(format!(
                "the form field `version` ({v:?}) is not a version number"
            ))
        }
        Some(_) => {}
    }
    let timestamp = match fields.get("timestamp").map(|t| t.trim()) {
        None | Some("") => return Err("the form field `timestamp` is missing".into()),
        Some(t) => t.parse::<i64>().ok().filter(|t| *t >= 0).ok_or_else(|| {
            format!("the form field `timestamp` ({t:?}) is not a Unix time in seconds")
        })?,
    };
    let lsid = match fields.get("lsid").map(|l| l.trim()) {
        None | Some("") if event_type.starts_with("support_conference_") => {
            return Err(format!(
                "the form field `lsid` is missing (every {event_type} event carries one)"
            ))
        }
        None | Some("") => None,
        Some(l) if l.len() > 128 || l.chars().any(|c| c.is_whitespace() || c.is_control()) => {
            return Err(format!("the form field `lsid` ({l:?}) is not a session id"))
        }
        Some(l) => Some(l.to_owned()),
    };
    Ok(IncomingEvent {
        appliance_id,
        event_type,
        timestamp,
        lsid,
        fields,
        token,
    })
}

/// Decodes one name or value of a form: `+` is a space, `%XY` a byte; a `%` not
/// followed by two hex digits stays as it is. Bytes that are not UTF-8 once decoded
/// are refused (raw ones are refused already), never replaced: a replaced character
/// would change a ticket number or a name without a word.
fn decode(raw: &[u8]) -> Option<String> {
    let hex = |b: u8| char::from(b).to_digit(16);
    let mut bytes = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => bytes.push(b' '),
            b'%' => match (
                raw.get(i + 1).and_then(|b| hex(*b)),
                raw.get(i + 2).and_then(|b| hex(*b)),
            ) {
                (Some(high), Some(low)) => {
                    // Two hex digits: at most 255.
                    bytes.push(u8::try_from(high * 16 + low).unwrap_or(b'?'));
                    i += 2;
                }
                _ => bytes.push(b'%'),
            },
            b => bytes.push(b),
        }
        i += 1;
    }
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const END: &[u8] = b"event=support_conference_end&version=3&timestamp=1764231302&lsid=c4f0a8d2e9b14c6f&external_key=CAS-01&appliance_id=abc&outbound_event_token=t0k";

    #[test]
    fn a_session_end_parses_and_the_token_is_kept_apart() {
        let e = parse(Some("West"), END).expect("valid");
        assert_eq!(e.appliance_id, "West");
        assert_eq!(e.event_type, "support_conference_end");
        assert_eq!(e.timestamp, 1_764_231_302);
        assert_eq!(e.lsid.as_deref(), Some("c4f0a8d2e9b14c6f"));
        assert_eq!(
            e.fields.get("external_key").map(String::as_str),
            Some("CAS-01")
        );
        assert_eq!(e.token.as_ref().map(SecretString::expose), Some("t0k"));
        assert!(!format!("{e:?}").contains("t0k"), "the token is redacted");
        assert!(!e.fields.contains_key(TOKEN_FIELD));
        assert_eq!(parse(None, END).expect("valid").appliance_id, "Default");
    }

    #[test]
    fn decoding_matches_the_form_encoding_of_any_text() {
        for text in ["Ana Müller & Co", "100% sure", "a=b&c", "%zz %4", "+ +", ""] {
            let encoded: String = form_urlencoded::byte_serialize(text.as_bytes()).collect();
            assert_eq!(
                decode(encoded.as_bytes()).as_deref(),
                Some(text),
                "{encoded}"
            );
        }
        assert_eq!(decode(b"100%").as_deref(), Some("100%"));
        assert_eq!(decode(b"%4g").as_deref(), Some("%4g"));
    }

    #[test]
    fn unicode_and_escapes_are_decoded() {
        let e = parse(None, "event=support_conference_end&version=3&timestamp=1&lsid=a&display_name=Ana+M%C3%BCller%20%26+Co".as_bytes()).expect("valid");
        assert_eq!(
            e.fields.get("display_name").map(String::as_str),
            Some("Ana Müller & Co")
        );
    }

    #[test]
    fn each_malformed_standard_field_has_its_reason() {
        let cases: [(&str, &str); 7] = [
            ("version=3&timestamp=1", "the form field `event` is missing"),
            (
                "event=Support Session End&version=3&timestamp=1",
                "the form field `event` (\"Support Session End\") is not an event name",
            ),
            (
                "event=support_conference_end&timestamp=1&lsid=a",
                "the form field `version` is missing",
            ),
            (
                "event=support_conference_end&version=3&lsid=a",
                "the form field `timestamp` is missing",
            ),
            (
                "event=support_conference_end&version=3&timestamp=yesterday&lsid=a",
                "the form field `timestamp` (\"yesterday\") is not a Unix time in seconds",
            ),
            (
                "event=support_conference_end&version=3&timestamp=1",
                "the form field `lsid` is missing (every support_conference_end event carries one)",
            ),
            (
                "event=support_conference_end&version=3&timestamp=1&lsid=a b",
                "the form field `lsid` (\"a b\") is not a session id",
            ),
        ];
        for (body, reason) in cases {
            assert_eq!(
                parse(None, body.as_bytes()),
                Err(reason.to_owned()),
                "{body}"
            );
        }
        assert_eq!(
            parse(None, b"\xff\xfe"),
            Err("the body is not UTF-8 text".to_owned())
        );
        assert_eq!(
            parse(
                None,
                b"event=support_conference_end&version=3&timestamp=1&lsid=a&external_key=CAS%FF01"
            ),
            Err("the form field \"external_key\" is not UTF-8 text once decoded".to_owned()),
            "percent-encoded bytes that are not UTF-8 are refused like raw ones"
        );
        assert_eq!(
            parse(
                None,
                b"event=support_conference_end&version=3&timestamp=1&lsid=a&%C3=x"
            ),
            Err("a form field name is not UTF-8 text once decoded".to_owned())
        );
    }

    #[test]
    fn the_dedup_key_names_appliance_event_session_and_time() {
        let a = parse(Some("West"), END).expect("valid");
        let b = parse(Some("East"), END).expect("valid");
        assert_ne!(a.dedup_key(), b.dedup_key());
        assert_eq!(
            a.dedup_key(),
            parse(Some("West"), END).expect("valid").dedup_key()
        );
    }
}

/// Fuzzing (`PROPTEST_CASES=100000 cargo test -p host fuzz` for a longer run): any
/// body and any appliance parameter give a verdict, never a panic.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_body_gets_a_verdict(body in proptest::collection::vec(any::<u8>(), 0..2048), appliance in proptest::option::of(".{0,120}")) {
            match super::parse(appliance.as_deref(), &body) {
                Ok(event) => prop_assert!(!event.event_type.is_empty()),
                Err(reason) => prop_assert!(!reason.is_empty()),
            }
        }

        #[test]
        fn forms_built_from_the_standard_fields_parse_or_say_why(
            event in "[a-z_]{0,40}|.{0,20}",
            version in "[0-9.]{0,5}|.{0,5}",
            timestamp in "-?[0-9]{0,12}|.{0,8}",
            lsid in proptest::option::of("[a-f0-9]{0,40}|.{0,10}"),
        ) {
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.append_pair("event", &event).append_pair("version", &version).append_pair("timestamp", &timestamp);
            if let Some(l) = &lsid {
                form.append_pair("lsid", l);
            }
            let body = form.finish();
            if let Err(reason) = super::parse(None, body.as_bytes()) {
                prop_assert!(reason.starts_with("the form field"), "{reason}");
            }
        }
    }
}
