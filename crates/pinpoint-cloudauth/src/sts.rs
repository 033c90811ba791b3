//! STS's answer to a forwarded `GetCallerIdentity`: status, content type and a strict
//! parse of exactly `GetCallerIdentityResponse/GetCallerIdentityResult` with non-empty
//! `Arn`, `UserId` and `Account`, then the consistency checks between them (ARN account =
//! `Account`, ARN partition = the host's, assumed-role `UserId` = `AROA...:<session>`).
//! Identity comes only from here, never from anything the client sent.

use quick_xml::events::Event;
use quick_xml::Reader;

use crate::arn::{Identity, IdentityKind, Partition};

/// Largest STS response body read.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024;

/// The verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerIdentity {
    pub identity: Identity,
    /// The raw ARN as STS returned it. Its session part is caller-chosen: show
    /// [`CallerIdentity::identity`] (sanitised) instead, in logs and anywhere else.
    pub arn: String,
    /// `AIDA...` (user) or `AROA...:<session>` (role session).
    pub user_id: String,
    /// The role's or user's unique id (the part before `:`), for binding mappings.
    pub unique_id: String,
    pub account: String,
    /// STS's request id, for audit.
    pub request_id: Option<String>,
}

/// How STS answered, when it did not confirm an identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StsError {
    /// STS refused the signature (a 403 `SignatureDoesNotMatch`, `InvalidClientTokenId`, ...).
    #[error("STS rejected the signature: {0}")]
    SignatureRejected(String),
    /// STS throttled (HTTP 429, or `Throttling`).
    #[error("STS is throttling")]
    Throttled,
    /// STS failed (5xx) or answered something that is not a valid identity.
    #[error("STS answered unexpectedly: {0}")]
    Unavailable(String),
    /// The identity is well-formed but not one Pinpoint accepts.
    #[error("{0}")]
    IdentityRefused(String),
}

/// Interprets STS's response.
pub fn interpret(
    status: u16,
    content_type: Option<&str>,
    body: &[u8],
    host_partition: Partition,
) -> Result<CallerIdentity, StsError> {
    if body.len() > MAX_RESPONSE_BYTES {
        return Err(StsError::Unavailable("response too large".into()));
    }
    let text = std::str::from_utf8(body).map_err(|_| StsError::Unavailable("response is not UTF-8".into()))?;
    match status {
        200 => {}
        429 => return Err(StsError::Throttled),
        400 | 403 => {
            let code = error_code(text).unwrap_or_else(|| String::from("unknown"));
            return Err(match code.as_str() {
                "Throttling" | "ThrottlingException" | "RequestLimitExceeded" => StsError::Throttled,
                _ => StsError::SignatureRejected(code),
            });
        }
        s => return Err(StsError::Unavailable(format!("HTTP {s}"))),
    }
    let xml = content_type
        .map(|c| c.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .is_some_and(|c| c == "text/xml" || c == "application/xml");
    if !xml {
        return Err(StsError::Unavailable("unexpected content type".into()));
    }
    let fields = parse_identity_xml(text).map_err(StsError::Unavailable)?;
    let identity = Identity::parse(&fields.arn).map_err(|e| StsError::IdentityRefused(e.to_string()))?;
    if identity.account != fields.account {
        return Err(StsError::Unavailable("the ARN's account differs from Account".into()));
    }
    if identity.partition != host_partition {
        return Err(StsError::Unavailable(
            "the ARN's partition differs from the STS host's".into(),
        ));
    }
    let unique_id = match &identity.kind {
        IdentityKind::AssumedRole { .. } => {
            let (role_id, session) = fields
                .user_id
                .split_once(':')
                .ok_or_else(|| StsError::Unavailable("an assumed role's UserId must be AROA...:<session>".into()))?;
            if !role_id.starts_with("AROA") || session.is_empty() {
                return Err(StsError::Unavailable(
                    "an assumed role's UserId must be AROA...:<session>".into(),
                ));
            }
            if identity.session() != Some(crate::arn::sanitize_session(session).as_str()) {
                return Err(StsError::Unavailable(
                    "the UserId's session differs from the ARN's".into(),
                ));
            }
            role_id.to_owned()
        }
        IdentityKind::User { .. } => fields.user_id.clone(),
    };
    Ok(CallerIdentity {
        identity,
        arn: fields.arn,
        user_id: fields.user_id,
        unique_id,
        account: fields.account,
        request_id: fields.request_id,
    })
}

struct Fields {
    arn: String,
    user_id: String,
    account: String,
    request_id: Option<String>,
}

/// Exactly `GetCallerIdentityResponse > GetCallerIdentityResult > {Arn, UserId, Account}`
/// (and optional `ResponseMetadata > RequestId`); no DOCTYPE, no unknown elements, no
/// repeated fields.
fn parse_identity_xml(text: &str) -> Result<Fields, String> {
    let mut reader = Reader::from_str(text);
    reader.config_mut().trim_text(true);
    let mut path: Vec<String> = Vec::new();
    let (mut arn, mut user_id, mut account, mut request_id) = (None, None, None, None);
    loop {
        match reader.read_event().map_err(|e| format!("invalid XML: {e}"))? {
            Event::Start(e) => {
                let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                path.push(name);
                let allowed = matches!(
                    path.iter().map(String::as_str).collect::<Vec<_>>()[..],
                    ["GetCallerIdentityResponse"]
                        | ["GetCallerIdentityResponse", "GetCallerIdentityResult"]
                        | [
                            "GetCallerIdentityResponse",
                            "GetCallerIdentityResult",
                            "Arn" | "UserId" | "Account"
                        ]
                        | ["GetCallerIdentityResponse", "ResponseMetadata"]
                        | ["GetCallerIdentityResponse", "ResponseMetadata", "RequestId"]
                );
                if !allowed {
                    return Err(format!("unexpected element {}", path.join("/")));
                }
            }
            Event::End(_) => {
                path.pop();
            }
            Event::Text(t) => {
                let value = t.decode().map_err(|e| format!("invalid text: {e}"))?.into_owned();
                let slot = match path.last().map(String::as_str) {
                    Some("Arn") => &mut arn,
                    Some("UserId") => &mut user_id,
                    Some("Account") => &mut account,
                    Some("RequestId") => &mut request_id,
                    _ => return Err("unexpected text".into()),
                };
                if slot.replace(value).is_some() {
                    return Err("a field appears twice".into());
                }
            }
            Event::DocType(_) => return Err("DOCTYPE is not allowed".into()),
            Event::Empty(e) => {
                return Err(format!(
                    "unexpected empty element {}",
                    String::from_utf8_lossy(e.local_name().as_ref())
                ))
            }
            Event::Decl(_) | Event::Comment(_) => {}
            Event::Eof => break,
            _ => return Err("unexpected XML content".into()),
        }
    }
    match (arn, user_id, account) {
        (Some(arn), Some(user_id), Some(account)) if !arn.is_empty() && !user_id.is_empty() && !account.is_empty() => {
            Ok(Fields {
                arn,
                user_id,
                account,
                request_id,
            })
        }
        _ => Err("Arn, UserId and Account must all be present and non-empty".into()),
    }
}

fn error_code(text: &str) -> Option<String> {
    let start = text.find("<Code>")? + "<Code>".len();
    let end = text[start..].find("</Code>")? + start;
    let code = &text[start..end];
    code.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.')
        .then(|| code.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(arn: &str, user_id: &str, account: &str) -> String {
        format!(
            r#"<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <GetCallerIdentityResult>
    <Arn>{arn}</Arn>
    <UserId>{user_id}</UserId>
    <Account>{account}</Account>
  </GetCallerIdentityResult>
  <ResponseMetadata>
    <RequestId>01234567-89ab-cdef-0123-456789abcdef</RequestId>
  </ResponseMetadata>
</GetCallerIdentityResponse>"#
        )
    }

    const XML: Option<&str> = Some("text/xml");

    #[test]
    fn accepts_a_role_session_and_keeps_the_role_id() {
        let b = body(
            "arn:aws:sts::123456789012:assumed-role/Agent/i-1",
            "AROAEXAMPLE123:i-1",
            "123456789012",
        );
        let c = interpret(200, XML, b.as_bytes(), Partition::Aws).unwrap();
        assert_eq!(c.unique_id, "AROAEXAMPLE123");
        assert_eq!(c.identity.session(), Some("i-1"));
        assert_eq!(c.request_id.as_deref(), Some("01234567-89ab-cdef-0123-456789abcdef"));
    }

    #[test]
    fn refuses_inconsistent_or_strange_answers() {
        let wrong_account = body("arn:aws:sts::123456789012:assumed-role/A/s", "AROAX:s", "210987654321");
        assert!(interpret(200, XML, wrong_account.as_bytes(), Partition::Aws).is_err());
        let wrong_partition = body(
            "arn:aws-cn:sts::123456789012:assumed-role/A/s",
            "AROAX:s",
            "123456789012",
        );
        assert!(interpret(200, XML, wrong_partition.as_bytes(), Partition::Aws).is_err());
        let other_session = body("arn:aws:sts::123456789012:assumed-role/A/s", "AROAX:t", "123456789012");
        assert!(
            matches!(
                interpret(200, XML, other_session.as_bytes(), Partition::Aws),
                Err(StsError::Unavailable(_))
            ),
            "UserId session must be the ARN's"
        );
        let bad_user_id = body("arn:aws:sts::123456789012:assumed-role/A/s", "AIDAX", "123456789012");
        assert!(interpret(200, XML, bad_user_id.as_bytes(), Partition::Aws).is_err());
        let root = body("arn:aws:iam::123456789012:root", "123456789012", "123456789012");
        assert!(matches!(
            interpret(200, XML, root.as_bytes(), Partition::Aws),
            Err(StsError::IdentityRefused(_))
        ));
        let empty = body("", "AIDAX", "123456789012");
        assert!(interpret(200, XML, empty.as_bytes(), Partition::Aws).is_err());
        let ok = body("arn:aws:iam::123456789012:user/alice", "AIDAX", "123456789012");
        assert!(interpret(200, Some("application/json"), ok.as_bytes(), Partition::Aws).is_err());
        let extra = ok.replace("<Account>", "<Extra>x</Extra><Account>");
        assert!(interpret(200, XML, extra.as_bytes(), Partition::Aws).is_err());
        let twice = ok.replace("<Account>", "<Arn>arn:aws:iam::123456789012:user/bob</Arn><Account>");
        assert!(interpret(200, XML, twice.as_bytes(), Partition::Aws).is_err());
        let doctype = format!("<!DOCTYPE x [<!ENTITY a \"b\">]>{ok}");
        assert!(interpret(200, XML, doctype.as_bytes(), Partition::Aws).is_err());
        assert!(interpret(200, XML, &vec![b' '; MAX_RESPONSE_BYTES + 1], Partition::Aws).is_err());
        assert!(interpret(200, XML, ok.as_bytes(), Partition::Aws).is_ok());
    }

    #[test]
    fn maps_sts_errors() {
        let denied =
            r#"<ErrorResponse><Error><Code>SignatureDoesNotMatch</Code><Message>x</Message></Error></ErrorResponse>"#;
        assert_eq!(
            interpret(403, XML, denied.as_bytes(), Partition::Aws),
            Err(StsError::SignatureRejected("SignatureDoesNotMatch".into()))
        );
        let throttled = denied.replace("SignatureDoesNotMatch", "Throttling");
        assert_eq!(
            interpret(400, XML, throttled.as_bytes(), Partition::Aws),
            Err(StsError::Throttled)
        );
        assert_eq!(interpret(429, None, b"", Partition::Aws), Err(StsError::Throttled));
        assert!(matches!(
            interpret(503, None, b"", Partition::Aws),
            Err(StsError::Unavailable(_))
        ));
    }
}
