//! The identity proof a workload sends: an STS `GetCallerIdentity` request it signed but
//! did not send, in Datadog's wire format
//! `Authorization: Delegated <b64 body>|<b64 headers JSON>|POST|<b64 url>`.
//! [`parse`] checks everything that can be checked without STS (size, encoding, host,
//! scheme, method, path, body, headers, SigV4 `Authorization` shape, scope, org header,
//! date window) and yields the exact request to forward: the signed headers plus `Host`,
//! nothing the client did not sign.

use std::collections::BTreeMap;

use base64::Engine;

/// Largest `Authorization` value accepted, checked before any decoding.
pub const MAX_PROOF_BYTES: usize = 8 * 1024;
/// The only body a proof may carry.
pub const EXPECTED_BODY: &str = "Action=GetCallerIdentity&Version=2011-06-15";
/// Org headers: Datadog's, and Pinpoint's own name for it.
pub const ORG_HEADERS: [&str; 2] = ["x-ddog-org-id", "x-pinpoint-org-id"];

/// The headers a proof may sign (and so have forwarded to STS): nothing that changes
/// framing or routing.
pub const SIGNABLE: &[&str] = &[
    "host",
    "x-amz-date",
    "x-amz-security-token",
    "x-amz-content-sha256",
    "content-type",
    "content-length",
    "x-ddog-org-id",
    "x-pinpoint-org-id",
];

/// Which partitions a deployment accepts proofs for (`aws` always).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Partitions {
    pub aws_cn: bool,
    pub aws_us_gov: bool,
}

/// Why a proof was refused: each maps to one reason code. Messages are caller-safe and
/// never echo the proof.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// `cloudauth.proof_malformed`
    #[error("{0}")]
    Malformed(String),
    /// `cloudauth.sts_host_not_allowed`
    #[error("{0}")]
    HostNotAllowed(String),
    /// `cloudauth.request_not_allowed`
    #[error("{0}")]
    RequestNotAllowed(String),
    /// `cloudauth.org_mismatch`
    #[error("{0}")]
    OrgMismatch(String),
    /// `cloudauth.proof_expired`
    #[error("{0}")]
    Expired(String),
}

fn malformed(s: impl Into<String>) -> ProofError {
    ProofError::Malformed(s.into())
}

fn not_allowed(s: impl Into<String>) -> ProofError {
    ProofError::RequestNotAllowed(s.into())
}

/// A proof that passed every local check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// `sts.amazonaws.com`, `sts.<region>.amazonaws.com`, ...
    pub host: String,
    /// The region the signature is scoped to (consistent with the host).
    pub region: String,
    pub partition: crate::arn::Partition,
    /// Headers to send, lower-case names, exactly the signed ones (with `host`).
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// The organization being logged into (from the signed org header).
    pub org_id: String,
    pub access_key_id: String,
    /// The signature (hex), the replay-cache key.
    pub signature: String,
    /// `X-Amz-Date` as Unix seconds.
    pub signed_at: i64,
}

/// Parses the value of an `Authorization: Delegated ...` header and checks it against the
/// organization in the URL or request (`expected_org`, if the endpoint names one), the
/// clock (`now` Unix seconds) and the accepted `window` in seconds.
pub fn parse(authorization: &str, partitions: Partitions, now: i64, window: i64) -> Result<Proof, ProofError> {
    if authorization.len() > MAX_PROOF_BYTES {
        return Err(malformed(format!("the proof is larger than {MAX_PROOF_BYTES} bytes")));
    }
    let rest = authorization
        .strip_prefix("Delegated ")
        .ok_or_else(|| malformed("the Authorization header must start with `Delegated `"))?;
    let parts: Vec<&str> = rest.split('|').collect();
    let [body_b64, headers_b64, method, url_b64] = parts[..] else {
        return Err(malformed(
            "the proof must have four `|`-separated parts: body, headers, method, url",
        ));
    };
    let decode = |what: &str, s: &str| -> Result<String, ProofError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|_| malformed(format!("the {what} part is not valid base64")))?;
        String::from_utf8(bytes).map_err(|_| malformed(format!("the {what} part is not UTF-8")))
    };
    let body = decode("body", body_b64)?;
    let headers_json = decode("headers", headers_b64)?;
    let url = decode("url", url_b64)?;

    if method != "POST" {
        return Err(not_allowed("only POST GetCallerIdentity requests are accepted"));
    }
    let host = check_url(&url)?;
    let (partition, host_region) = check_host(&host, partitions)?;
    if body != EXPECTED_BODY {
        return Err(not_allowed(format!("the body must be exactly `{EXPECTED_BODY}`")));
    }

    let HeaderEntries(raw) = serde_json::from_str(&headers_json)
        .map_err(|_| malformed("the headers part must be a JSON object of name -> [values]"))?;
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, values) in raw {
        if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(malformed("a header name is not a valid HTTP header name"));
        }
        let lower = name.to_ascii_lowercase();
        if headers.contains_key(&lower) {
            return Err(malformed(format!(
                "header `{lower}` appears twice (names are case-insensitive)"
            )));
        }
        let [value] = &values[..] else {
            return Err(malformed(format!("header `{lower}` must have exactly one value")));
        };
        if value.chars().any(|c| c.is_control()) {
            return Err(malformed(format!("header `{lower}` has control characters")));
        }
        headers.insert(lower, value.clone());
    }

    let auth = headers
        .get("authorization")
        .ok_or_else(|| malformed("the signed request has no Authorization header"))?;
    let sig = parse_sigv4(auth)?;
    if sig.service != "sts" || sig.terminator != "aws4_request" {
        return Err(not_allowed("the signature must be scoped to the `sts` service"));
    }
    if sig.region != host_region {
        return Err(not_allowed(format!(
            "the signature is scoped to region `{}` but the host is in `{host_region}`",
            sig.region
        )));
    }
    for required in ["host", "x-amz-date"] {
        if !sig.signed_headers.iter().any(|h| h == required) {
            return Err(not_allowed(format!("`{required}` must be a signed header")));
        }
    }
    let org_header = ORG_HEADERS
        .iter()
        .find(|h| sig.signed_headers.iter().any(|s| s == *h))
        .ok_or_else(|| ProofError::OrgMismatch("the organization header (x-ddog-org-id) must be signed".into()))?;
    let org_id = headers
        .get(*org_header)
        .cloned()
        .ok_or_else(|| ProofError::OrgMismatch("the signed organization header is missing".into()))?;

    // X-Amz-* beyond the known ones are refused, signed or not. Other unsigned headers
    // (clients send User-Agent) are dropped below: only signed headers are forwarded.
    for name in headers.keys() {
        if name.starts_with("x-amz-")
            && !matches!(
                name.as_str(),
                "x-amz-date" | "x-amz-security-token" | "x-amz-content-sha256"
            )
        {
            return Err(not_allowed(format!("header `{name}` is not allowed")));
        }
    }
    for signed in &sig.signed_headers {
        if !SIGNABLE.contains(&signed.as_str()) {
            return Err(not_allowed(format!("header `{signed}` may not be signed into a proof")));
        }
        if signed != "host" && !headers.contains_key(signed) {
            return Err(malformed(format!("signed header `{signed}` is missing")));
        }
    }
    if let Some(length) = headers.get("content-length") {
        if length.trim() != body.len().to_string() {
            return Err(not_allowed("Content-Length does not match the body"));
        }
    }
    if let Some(h) = headers.get("host") {
        if !h.eq_ignore_ascii_case(&host) {
            return Err(not_allowed("the Host header does not match the URL"));
        }
    }

    let date = headers
        .get("x-amz-date")
        .ok_or_else(|| malformed("X-Amz-Date is missing"))?;
    let signed_at = parse_amz_date(date).ok_or_else(|| malformed("X-Amz-Date is not YYYYMMDDTHHMMSSZ"))?;
    if !date.starts_with(&sig.date) {
        return Err(malformed("X-Amz-Date does not match the credential scope date"));
    }
    if signed_at > now + 60 {
        return Err(ProofError::Expired("the proof is dated in the future".into()));
    }
    if now - signed_at > window {
        return Err(ProofError::Expired(format!("the proof is older than {window} seconds")));
    }

    let mut out: Vec<(String, String)> = sig
        .signed_headers
        .iter()
        .filter(|h| h.as_str() != "host")
        .filter_map(|h| headers.get(h).map(|v| (h.clone(), v.clone())))
        .collect();
    out.push((String::from("host"), host.clone()));
    out.push((String::from("authorization"), auth.clone()));
    Ok(Proof {
        host,
        region: sig.region,
        partition,
        headers: out,
        body,
        org_id,
        access_key_id: sig.access_key_id,
        signature: sig.signature,
        signed_at,
    })
}

/// `https://<host>/` only: no port, userinfo, query or fragment, path `/`.
fn check_url(url: &str) -> Result<String, ProofError> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| not_allowed("the STS URL must use https"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if path != "/" {
        return Err(not_allowed("the STS URL must have path `/` and no query string"));
    }
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    {
        return Err(ProofError::HostNotAllowed("the STS URL must name a plain host".into()));
    }
    Ok(host.to_ascii_lowercase())
}

fn is_region(s: &str) -> bool {
    // e.g. us-east-1, eu-central-2, us-gov-west-1, cn-north-1, ap-southeast-4
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() >= 3
        && parts.len() <= 4
        && parts[..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && parts[parts.len() - 1].len() <= 2
        && parts[parts.len() - 1].bytes().all(|b| b.is_ascii_digit())
        && !parts[parts.len() - 1].is_empty()
}

/// The partition and signing region of an STS host, derived from rules: `sts.amazonaws.com`
/// (global, signed for us-east-1), `sts.<region>.amazonaws.com`, and, when enabled,
/// `sts.<cn-region>.amazonaws.com.cn` and `sts.<us-gov-region>.amazonaws.com`.
pub fn check_host(host: &str, partitions: Partitions) -> Result<(crate::arn::Partition, String), ProofError> {
    use crate::arn::Partition;
    let refuse = || ProofError::HostNotAllowed(format!("`{host}` is not an STS endpoint this gateway accepts"));
    if host == "sts.amazonaws.com" {
        return Ok((Partition::Aws, String::from("us-east-1")));
    }
    let rest = host.strip_prefix("sts.").ok_or_else(refuse)?;
    if let Some(region) = rest.strip_suffix(".amazonaws.com.cn") {
        if partitions.aws_cn && region.starts_with("cn-") && is_region(region) {
            return Ok((Partition::AwsCn, region.to_owned()));
        }
        return Err(refuse());
    }
    let region = rest.strip_suffix(".amazonaws.com").ok_or_else(refuse)?;
    if !is_region(region) || region.starts_with("cn-") {
        return Err(refuse());
    }
    if region.starts_with("us-gov-") {
        return if partitions.aws_us_gov {
            Ok((Partition::AwsUsGov, region.to_owned()))
        } else {
            Err(refuse())
        };
    }
    Ok((Partition::Aws, region.to_owned()))
}

struct SigV4 {
    access_key_id: String,
    date: String,
    region: String,
    service: String,
    terminator: String,
    signed_headers: Vec<String>,
    signature: String,
}

/// `AWS4-HMAC-SHA256 Credential=AKID/date/region/service/aws4_request, SignedHeaders=a;b, Signature=hex`
/// with exactly one of each component.
fn parse_sigv4(value: &str) -> Result<SigV4, ProofError> {
    let rest = value
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or_else(|| malformed("the signed request's Authorization must be AWS4-HMAC-SHA256"))?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let (key, val) = part
            .trim()
            .split_once('=')
            .ok_or_else(|| malformed("malformed SigV4 component"))?;
        let slot = match key {
            "Credential" => &mut credential,
            "SignedHeaders" => &mut signed,
            "Signature" => &mut signature,
            _ => return Err(malformed(format!("unexpected SigV4 component `{key}`"))),
        };
        if slot.replace(val).is_some() {
            return Err(malformed(format!("SigV4 component `{key}` appears twice")));
        }
    }
    let (Some(credential), Some(signed), Some(signature)) = (credential, signed, signature) else {
        return Err(malformed("SigV4 needs Credential, SignedHeaders and Signature"));
    };
    let scope: Vec<&str> = credential.split('/').collect();
    let [akid, date, region, service, terminator] = scope[..] else {
        return Err(malformed(
            "the SigV4 credential scope must be AKID/date/region/service/aws4_request",
        ));
    };
    if akid.is_empty() || !akid.bytes().all(|b| b.is_ascii_alphanumeric()) || date.len() != 8 {
        return Err(malformed("the SigV4 credential is malformed"));
    }
    if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(malformed("the SigV4 signature must be 64 hex digits"));
    }
    let signed_headers: Vec<String> = signed.split(';').map(str::to_owned).collect();
    if signed_headers
        .iter()
        .any(|h| h.is_empty() || h.to_ascii_lowercase() != *h)
    {
        return Err(malformed("SignedHeaders must be lower-case names separated by `;`"));
    }
    Ok(SigV4 {
        access_key_id: akid.to_owned(),
        date: date.to_owned(),
        region: region.to_owned(),
        service: service.to_owned(),
        terminator: terminator.to_owned(),
        signed_headers,
        signature: signature.to_ascii_lowercase(),
    })
}

/// `YYYYMMDDTHHMMSSZ` to Unix seconds.
fn parse_amz_date(s: &str) -> Option<i64> {
    if s.len() != 16 || !s.is_ascii() || s.as_bytes()[8] != b'T' || !s.ends_with('Z') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, se) = (
        num(0..4)?,
        num(4..6)?,
        num(6..8)?,
        num(9..11)?,
        num(11..13)?,
        num(13..15)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let days = pinpoint_core::time::days_from_civil(y, mo as u32, d as u32);
    Some(days * 86_400 + h * 3600 + mi * 60 + se)
}

/// The proof's headers object, entry by entry as written: a map type would keep only the
/// last of two identical names, and a name that appears twice must be refused, not guessed.
struct HeaderEntries(Vec<(String, Vec<String>)>);

impl<'de> serde::Deserialize<'de> for HeaderEntries {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> serde::de::Visitor<'de> for Entries {
            type Value = HeaderEntries;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object of header name -> [values]")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<HeaderEntries, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, Vec<String>>()? {
                    entries.push(entry);
                }
                Ok(HeaderEntries(entries))
            }
        }
        deserializer.deserialize_map(Entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORG: &str = "9a1f3c2e-1111-4222-8333-444455556666";
    const NOW: i64 = 1_795_000_000; // 2026-11-18T11:06:40Z
    const DATE: &str = "20261118T110600Z";

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn sigv4(region: &str, signed: &str) -> String {
        format!(
            "AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/20261118/{region}/sts/aws4_request, SignedHeaders={signed}, Signature={}",
            "a".repeat(64)
        )
    }

    fn proof_with(url: &str, body: &str, headers: serde_json::Value, method: &str) -> String {
        format!(
            "Delegated {}|{}|{method}|{}",
            b64(body),
            b64(&headers.to_string()),
            b64(url)
        )
    }

    fn headers(region: &str) -> serde_json::Value {
        serde_json::json!({
            "Authorization": [sigv4(region, "content-type;host;x-amz-date;x-ddog-org-id")],
            "Content-Type": ["application/x-www-form-urlencoded; charset=utf-8"],
            "Host": ["sts.amazonaws.com"],
            "X-Amz-Date": [DATE],
            "x-ddog-org-id": [ORG],
        })
    }

    fn good() -> String {
        proof_with(
            "https://sts.amazonaws.com/",
            EXPECTED_BODY,
            headers("us-east-1"),
            "POST",
        )
    }

    fn check(p: &str) -> Result<Proof, ProofError> {
        parse(p, Partitions::default(), NOW, 300)
    }

    #[test]
    fn a_well_formed_proof_is_rebuilt_from_signed_headers_only() {
        let p = check(&good()).unwrap();
        assert_eq!(p.org_id, ORG);
        assert_eq!((p.host.as_str(), p.region.as_str()), ("sts.amazonaws.com", "us-east-1"));
        assert_eq!(p.access_key_id, "AKIAEXAMPLE");
        let names: Vec<&str> = p.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["content-type", "x-amz-date", "x-ddog-org-id", "host", "authorization"]
        );
    }

    #[test]
    fn size_and_encoding() {
        let huge = format!("Delegated {}", "A".repeat(MAX_PROOF_BYTES));
        assert!(matches!(check(&huge), Err(ProofError::Malformed(_))));
        assert!(matches!(check("Bearer x"), Err(ProofError::Malformed(_))));
        assert!(matches!(check("Delegated a|b|POST"), Err(ProofError::Malformed(_))));
        assert!(matches!(
            check("Delegated !!|!!|POST|!!"),
            Err(ProofError::Malformed(_))
        ));
        let bad_json = format!(
            "Delegated {}|{}|POST|{}",
            b64(EXPECTED_BODY),
            b64("[1,2]"),
            b64("https://sts.amazonaws.com/")
        );
        assert!(matches!(check(&bad_json), Err(ProofError::Malformed(_))));
    }

    #[test]
    fn hosts_follow_partition_rules() {
        let p = Partitions::default();
        assert!(check_host("sts.eu-west-1.amazonaws.com", p).is_ok());
        assert!(check_host("sts.us-gov-west-1.amazonaws.com", p).is_err());
        assert!(check_host("sts.us-gov-west-1.amazonaws.com", Partitions { aws_us_gov: true, ..p }).is_ok());
        assert!(check_host("sts.cn-north-1.amazonaws.com.cn", p).is_err());
        assert!(check_host("sts.cn-north-1.amazonaws.com.cn", Partitions { aws_cn: true, ..p }).is_ok());
        for bad in [
            "evil.com",
            "sts.amazonaws.com.evil.com",
            "sts.evil.amazonaws.com",
            "sts..amazonaws.com",
            "iam.amazonaws.com",
        ] {
            assert!(check_host(bad, p).is_err(), "{bad}");
        }
        let evil = proof_with(
            "https://sts.amazonaws.com.evil.com/",
            EXPECTED_BODY,
            headers("us-east-1"),
            "POST",
        );
        assert!(matches!(check(&evil), Err(ProofError::HostNotAllowed(_))));
        let port = proof_with(
            "https://sts.amazonaws.com:8443/",
            EXPECTED_BODY,
            headers("us-east-1"),
            "POST",
        );
        assert!(matches!(check(&port), Err(ProofError::HostNotAllowed(_))));
    }

    #[test]
    fn scheme_method_path_body() {
        for (url, body, method) in [
            ("http://sts.amazonaws.com/", EXPECTED_BODY, "POST"),
            (
                "https://sts.amazonaws.com/?Action=GetCallerIdentity",
                EXPECTED_BODY,
                "POST",
            ),
            ("https://sts.amazonaws.com/x", EXPECTED_BODY, "POST"),
            ("https://sts.amazonaws.com/", EXPECTED_BODY, "GET"),
            (
                "https://sts.amazonaws.com/",
                "Action=AssumeRole&Version=2011-06-15",
                "POST",
            ),
            (
                "https://sts.amazonaws.com/",
                "Action=GetCallerIdentity&Version=2011-06-15&x=1",
                "POST",
            ),
        ] {
            let p = proof_with(url, body, headers("us-east-1"), method);
            assert!(
                matches!(check(&p), Err(ProofError::RequestNotAllowed(_))),
                "{url} {body} {method}"
            );
        }
    }

    #[test]
    fn headers_are_strict() {
        // The same name twice, exactly: JSON allows it, a map would keep the last.
        let h = headers("us-east-1").to_string();
        let doubled = h.replacen('{', "{\"X-Amz-Date\":[\"20000101T000000Z\"],", 1);
        let proof = format!(
            "Delegated {}|{}|POST|{}",
            b64(EXPECTED_BODY),
            b64(&doubled),
            b64("https://sts.amazonaws.com/")
        );
        assert!(
            matches!(check(&proof), Err(ProofError::Malformed(ref m)) if m.contains("twice")),
            "exact duplicate: {:?}",
            check(&proof)
        );
        let mut h = headers("us-east-1");
        h["host"] = serde_json::json!(["sts.amazonaws.com"]);
        assert!(
            matches!(
                check(&proof_with("https://sts.amazonaws.com/", EXPECTED_BODY, h, "POST")),
                Err(ProofError::Malformed(_))
            ),
            "case-variant duplicate"
        );
        let mut h = headers("us-east-1");
        h["X-Amz-Date"] = serde_json::json!([DATE, DATE]);
        assert!(matches!(
            check(&proof_with("https://sts.amazonaws.com/", EXPECTED_BODY, h, "POST")),
            Err(ProofError::Malformed(_))
        ));
        let mut h = headers("us-east-1");
        h["X-Forwarded-For"] = serde_json::json!(["1.2.3.4"]);
        h["User-Agent"] = serde_json::json!(["datadog-api-client"]);
        // Unsigned headers are never forwarded (clients send User-Agent unsigned).
        let p = check(&proof_with("https://sts.amazonaws.com/", EXPECTED_BODY, h, "POST")).unwrap();
        assert!(p
            .headers
            .iter()
            .all(|(n, _)| n != "x-forwarded-for" && n != "user-agent"));
        let mut h = headers("us-east-1");
        h["X-Amz-Target"] = serde_json::json!(["x"]);
        assert!(
            matches!(
                check(&proof_with("https://sts.amazonaws.com/", EXPECTED_BODY, h, "POST")),
                Err(ProofError::RequestNotAllowed(_))
            ),
            "unsigned unexpected x-amz header"
        );
        let mut h = headers("us-east-1");
        h["X-Amz-Target"] = serde_json::json!(["x"]);
        h["Authorization"] = serde_json::json!([sigv4(
            "us-east-1",
            "content-type;host;x-amz-date;x-amz-target;x-ddog-org-id"
        )]);
        assert!(
            matches!(
                check(&proof_with("https://sts.amazonaws.com/", EXPECTED_BODY, h, "POST")),
                Err(ProofError::RequestNotAllowed(_))
            ),
            "unexpected x-amz header"
        );
    }

    #[test]
    fn sigv4_authorization_is_parsed_strictly() {
        let cases = [
            format!("AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/20261118/us-east-1/sts/aws4_request, Credential=AKIAEXAMPLE/20261118/us-east-1/sts/aws4_request, SignedHeaders=host;x-amz-date;x-ddog-org-id, Signature={}", "a".repeat(64)),
            format!("AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/20261118/us-east-1/sts/aws4_request, Signature={}", "a".repeat(64)),
            String::from("AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/20261118/us-east-1/sts/aws4_request, SignedHeaders=host;x-amz-date;x-ddog-org-id, Signature=zz"),
            format!("AWS-HMAC-SHA1 Credential=AKIAEXAMPLE/20261118/us-east-1/sts/aws4_request, SignedHeaders=host, Signature={}", "a".repeat(64)),
        ];
        for auth in cases {
            let mut h = headers("us-east-1");
            h["Authorization"] = serde_json::json!([auth]);
            assert!(matches!(
                check(&proof_with("https://sts.amazonaws.com/", EXPECTED_BODY, h, "POST")),
                Err(ProofError::Malformed(_))
            ));
        }
        // Scope: wrong service, region inconsistent with the host.
        let mut h = headers("us-east-1");
        h["Authorization"] = serde_json::json!([
            sigv4("us-east-1", "content-type;host;x-amz-date;x-ddog-org-id").replace("/sts/", "/iam/")
        ]);
        assert!(matches!(
            check(&proof_with("https://sts.amazonaws.com/", EXPECTED_BODY, h, "POST")),
            Err(ProofError::RequestNotAllowed(_))
        ));
        let p = proof_with(
            "https://sts.amazonaws.com/",
            EXPECTED_BODY,
            headers("eu-west-1"),
            "POST",
        );
        assert!(matches!(check(&p), Err(ProofError::RequestNotAllowed(_))));
    }

    #[test]
    fn org_header_must_be_signed() {
        let mut h = headers("us-east-1");
        h["Authorization"] = serde_json::json!([sigv4("us-east-1", "content-type;host;x-amz-date")]);
        h.as_object_mut().unwrap().remove("x-ddog-org-id");
        assert!(matches!(
            check(&proof_with("https://sts.amazonaws.com/", EXPECTED_BODY, h, "POST")),
            Err(ProofError::OrgMismatch(_))
        ));
        let mut h = headers("us-east-1");
        h.as_object_mut().unwrap().remove("x-ddog-org-id");
        h["x-pinpoint-org-id"] = serde_json::json!([ORG]);
        h["Authorization"] = serde_json::json!([sigv4("us-east-1", "content-type;host;x-amz-date;x-pinpoint-org-id")]);
        assert_eq!(
            check(&proof_with("https://sts.amazonaws.com/", EXPECTED_BODY, h, "POST"))
                .unwrap()
                .org_id,
            ORG
        );
    }

    #[test]
    fn hostile_inputs_never_panic_and_are_refused() {
        let mut h = headers("us-east-1");
        h["X-Amz-Date"] = serde_json::json!(["20261118\u{e9}00000Z"]);
        assert!(check(&proof_with("https://sts.amazonaws.com/", EXPECTED_BODY, h, "POST")).is_err());
        let crlf = proof_with("https://x\r\nFake: y/", EXPECTED_BODY, headers("us-east-1"), "POST");
        match check(&crlf) {
            Err(ProofError::HostNotAllowed(m)) => assert!(!m.contains('\n')),
            other => panic!("{other:?}"),
        }
        let mut h = headers("us-east-1");
        h["Bad Name"] = serde_json::json!(["x"]);
        let bad_name = proof_with("https://sts.amazonaws.com/", EXPECTED_BODY, h, "POST");
        assert!(matches!(check(&bad_name), Err(ProofError::Malformed(_))));
        // Framing headers may not be signed in; Content-Length must match the body.
        let mut h = headers("us-east-1");
        h["Transfer-Encoding"] = serde_json::json!(["chunked"]);
        h["Authorization"] = serde_json::json!([sigv4(
            "us-east-1",
            "content-type;host;transfer-encoding;x-amz-date;x-ddog-org-id"
        )]);
        let framing = proof_with("https://sts.amazonaws.com/", EXPECTED_BODY, h, "POST");
        assert!(matches!(check(&framing), Err(ProofError::RequestNotAllowed(_))));
        let mut h = headers("us-east-1");
        h["Content-Length"] = serde_json::json!(["0"]);
        h["Authorization"] = serde_json::json!([sigv4(
            "us-east-1",
            "content-length;content-type;host;x-amz-date;x-ddog-org-id"
        )]);
        let short = proof_with("https://sts.amazonaws.com/", EXPECTED_BODY, h, "POST");
        assert!(matches!(check(&short), Err(ProofError::RequestNotAllowed(_))));
    }

    #[test]
    fn date_window() {
        assert!(check(&good()).is_ok());
        assert!(matches!(
            parse(&good(), Partitions::default(), NOW + 301, 300),
            Err(ProofError::Expired(_))
        ));
        assert!(
            matches!(
                parse(&good(), Partitions::default(), NOW - 3600, 300),
                Err(ProofError::Expired(_))
            ),
            "future"
        );
        assert_eq!(parse_amz_date(DATE), Some(NOW - 40));
    }
}
