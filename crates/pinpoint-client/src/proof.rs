//! Signing an identity proof with `aws-sigv4`: an STS GetCallerIdentity request for the
//! global or a regional endpoint, with the organization header signed, encoded as
//! `Delegated <b64 body>|<b64 headers JSON>|POST|<b64 url>`.

use std::collections::BTreeMap;
use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign as sigv4_sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use base64::Engine;

use crate::ClientError;

/// The only body a proof carries.
pub const BODY: &str = "Action=GetCallerIdentity&Version=2011-06-15";

/// Signs a proof for `org_id`. `region: None` uses the global endpoint (signed for us-east-1).
pub fn sign(
    credentials: &Credentials,
    org_id: &str,
    region: Option<&str>,
    time: SystemTime,
) -> Result<String, ClientError> {
    let (host, region) = match region {
        Some(r) if r != "us-east-1" => (format!("sts.{r}.amazonaws.com"), r.to_owned()),
        _ => (String::from("sts.amazonaws.com"), String::from("us-east-1")),
    };
    let url = format!("https://{host}/");
    let identity = credentials.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&region)
        .name("sts")
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| ClientError::Sign(e.to_string()))?
        .into();
    let length = BODY.len().to_string();
    let base: [(&str, &str); 4] = [
        ("content-type", "application/x-www-form-urlencoded; charset=utf-8"),
        ("content-length", &length),
        ("host", &host),
        ("x-ddog-org-id", org_id),
    ];
    let signable = SignableRequest::new("POST", &url, base.iter().copied(), SignableBody::Bytes(BODY.as_bytes()))
        .map_err(|e| ClientError::Sign(e.to_string()))?;
    let (instructions, _) = sigv4_sign(signable, &params)
        .map_err(|e| ClientError::Sign(e.to_string()))?
        .into_parts();
    let mut request = http::Request::builder().method("POST").uri(&url);
    for (name, value) in base {
        request = request.header(name, value);
    }
    let mut request = request.body(()).map_err(|e| ClientError::Sign(e.to_string()))?;
    instructions.apply_to_request_http1x(&mut request);
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in request.headers() {
        let value = value.to_str().map_err(|e| ClientError::Sign(e.to_string()))?;
        headers
            .entry(name.as_str().to_owned())
            .or_default()
            .push(value.to_owned());
    }
    let headers = serde_json::to_string(&headers).map_err(|e| ClientError::Sign(e.to_string()))?;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    Ok(format!(
        "Delegated {}|{}|POST|{}",
        b64(BODY),
        b64(&headers),
        b64(&format!("https://{host}"))
    ))
}
