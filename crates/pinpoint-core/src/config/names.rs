//! Owns the shapes of names that several sections share: methods, ids, permissions,
//! organization ids and path prefixes, so every section accepts exactly the same forms.

use serde::Deserialize;
use toml::Spanned;

use super::diagnostics::Diagnostics;

/// A method named in config: any case (matching is on the upper-case form, the only one
/// the proxy lets through), a token of letters, digits, `-` and `_`.
pub fn parse_method(name: &str) -> Result<http::Method, String> {
    if name.is_empty()
        || name.len() > 32
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!("`{name}` is not an HTTP method (a token such as GET or POST)"));
    }
    http::Method::from_bytes(name.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("`{name}` is not an HTTP method"))
}

/// Whether a method list names `method`, where naming GET also names HEAD: the one rule
/// for route method lists, policy rules and deny rules (a HEAD is a GET without its body).
pub fn method_listed(list: &[http::Method], method: &http::Method) -> bool {
    list.contains(method) || (*method == http::Method::HEAD && list.contains(&http::Method::GET))
}

/// A method list as written (`["get", "POST"]`): each method parsed, repeats dropped;
/// mistakes are reported at the method at fault.
pub(crate) fn read_methods(list: &Option<Vec<Spanned<String>>>, d: &mut Diagnostics) -> Option<Vec<http::Method>> {
    let list = list.as_ref()?;
    let mut out = Vec::new();
    for m in list {
        match parse_method(m.get_ref()) {
            Ok(method) if !out.contains(&method) => out.push(method),
            Ok(_) => {}
            Err(e) => d.error(Some(m.span()), e),
        }
    }
    Some(out)
}

/// Serde reader for method lists in sections read without spans (`[[authz.deny]]`).
pub(crate) fn de_methods<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<http::Method>>, D::Error> {
    let names: Option<Vec<String>> = Option::deserialize(d)?;
    names
        .map(|names| {
            names
                .iter()
                .map(|n| parse_method(n).map_err(serde::de::Error::custom))
                .collect()
        })
        .transpose()
}

/// Whether `s` is a permission name like `orders:write`.
pub fn is_permission(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':' | b'.' | b'*'))
}

/// Whether `s` is a UUID in its hyphenated form.
pub fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// Whether `s` may name a route, upstream or rule: letters, digits, `-` and `_`.
pub(crate) fn is_identifier(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A path prefix as routes and rules match it: canonical, without a trailing slash.
pub(crate) fn validate_prefix(p: &str) -> Result<String, String> {
    if !p.starts_with('/') {
        return Err(format!("path_prefix `{p}` must start with `/`"));
    }
    if p.contains(['?', '#', ' ']) {
        return Err(format!(
            "path_prefix `{p}` must be a plain path (no `?`, `#` or spaces)"
        ));
    }
    match crate::canonical::canonical_path(p) {
        Ok(canonical) if canonical == p => {}
        Ok(canonical) => {
            return Err(format!(
                "path_prefix `{p}` is not in canonical form; write `{canonical}` (requests are matched after canonicalisation)"
            ))
        }
        Err(refusal) => return Err(format!("path_prefix `{p}`: {}", refusal.detail)),
    }
    // `/orders/` and `/orders` mean the same prefix.
    let trimmed = p.trim_end_matches('/');
    Ok(if trimmed.is_empty() {
        String::from("/")
    } else {
        trimmed.to_owned()
    })
}

/// Whether `origin` is written as browsers send `Origin`: `scheme://host[:port]`, nothing
/// after (an origin with a path or a trailing slash would never match).
pub(crate) fn is_origin(origin: &str) -> bool {
    let Some(rest) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return false;
    };
    !rest.is_empty() && !rest.contains(['/', '?', '#', ' ', '@'])
}
