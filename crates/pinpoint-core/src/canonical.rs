//! The canonical request line: the one method and path every layer decides on, the
//! decision records, and the upstream receives. Built once at the edge, before routing.
//!
//! Pinpoint decides on exactly the request it forwards, and refuses what it cannot decide
//! on with certainty. So the path is brought to one spelling (unreserved characters
//! percent-decoded, other escapes in upper-case hex, raw non-ASCII bytes escaped, `.` and
//! `..` segments resolved as RFC 3986 §5.2.4 does, repeated slashes merged), and every
//! spelling that servers behind a gateway read in different ways is refused with its own
//! reason: encoded slashes and backslashes, raw backslashes, dot-segments made of escapes,
//! control characters, broken escapes, and paths that climb above the root. A method in
//! any case but upper is refused too: no legitimate client sends `post`.
//!
//! Path parameters (`;`, or its escape `%3B`) stay in the canonical path; whether a route
//! accepts them is the route layer's decision ([`has_path_parameters`]).

use std::borrow::Cow;

use crate::reason::Reason;
use crate::verdict::Denial;

/// Checks the method: a token (RFC 9110 `tchar`s) with no lower-case letter.
pub fn check_method(method: &str) -> Result<(), Denial> {
    if method.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(Denial::new(
            Reason::RequestMethodNotCanonical,
            "The request method must be written in upper case (GET, POST, ...).",
        )
        .note(format!("method as sent: {}", printable(method))));
    }
    if method == "CONNECT" {
        return Err(Denial::new(
            Reason::RequestConnectNotSupported,
            "Pinpoint opens no tunnels: CONNECT is not accepted.",
        ));
    }
    Ok(())
}

/// The canonical form of `raw` (the path of the request target, without its query), or
/// the refusal that says what was wrong with it. Borrows `raw` when it is already
/// canonical, which is the common case: then this is one scan and no allocation.
pub fn canonical_path(raw: &str) -> Result<Cow<'_, str>, Denial> {
    if !raw.starts_with('/') {
        return Err(refuse(
            Reason::RequestPathNotAbsolute,
            "The request target must be an absolute path starting with `/`.",
            raw,
        ));
    }
    if is_canonical(raw) {
        return Ok(Cow::Borrowed(raw));
    }
    // One output buffer; each segment is decoded onto its end and dropped again by
    // truncation when it is a dot-segment.
    let mut out = String::with_capacity(raw.len() + 8);
    // Where each kept segment's `/` stands in `out`, for `..` to go back to.
    let mut kept: Vec<usize> = Vec::new();
    // Whether the path ends in a slash: an empty last segment, or a dot-segment last.
    let mut trailing_slash = false;
    for raw_segment in raw[1..].split('/') {
        let start = out.len();
        out.push('/');
        let has_encoded_dot = decode_segment_onto(raw_segment, &mut out, raw)?;
        let segment = &out[start + 1..];
        // A dot-segment with parameters (`..;x`, `.%3B`) is a dot-segment to servers that
        // strip parameters first: refused on every route, whatever its parameter setting.
        let before_parameters = segment.split([';']).next().unwrap_or("");
        let before_parameters = before_parameters.split("%3B").next().unwrap_or("");
        if before_parameters.len() < segment.len() && matches!(before_parameters, "" | "." | "..") {
            return Err(refuse(
                Reason::RequestPathParameters,
                "The path has a segment that is only `;` parameters, or a `.` or `..` segment carrying them.",
                raw,
            ));
        }
        match segment {
            "" | "." | ".." if has_encoded_dot => {
                return Err(refuse(
                    Reason::RequestPathEncodedDotSegment,
                    "The path has a `.` or `..` segment written with percent-escapes.",
                    raw,
                ))
            }
            "" | "." => {
                out.truncate(start);
                trailing_slash = true;
            }
            ".." => {
                let Some(previous) = kept.pop() else {
                    return Err(refuse(
                        Reason::RequestPathAboveRoot,
                        "The path climbs above the root with `..`.",
                        raw,
                    ));
                };
                out.truncate(previous);
                trailing_slash = true;
            }
            _ => {
                kept.push(start);
                trailing_slash = false;
            }
        }
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    // Checked on the canonical form, so `%25%61d` (which canonicalises to `%25ad`) is
    // refused too and every canonical path is a fixed point.
    if out.match_indices("%25").any(|(at, _)| {
        let after = out.as_bytes();
        after.get(at + 3).and_then(hex).is_some() && after.get(at + 4).and_then(hex).is_some()
    }) {
        return Err(refuse(
            Reason::RequestPathDoubleEncoded,
            "The path has a percent-escape that is itself escaped (`%25` followed by hex digits).",
            raw,
        ));
    }
    if out.contains('%') {
        let decoded = percent_decode(&out);
        let Ok(text) = std::str::from_utf8(&decoded) else {
            return Err(refuse(
                Reason::RequestPathInvalidEncoding,
                "The path's percent-escapes do not decode to UTF-8 text.",
                raw,
            ));
        };
        if text.chars().any(reads_as_ascii) {
            return Err(refuse(
                Reason::RequestPathConfusable,
                "The path has a character that servers may read as a different ASCII character (a fullwidth form, a ligature, a dotless i, a long s, ...).",
                raw,
            ));
        }
    }
    Ok(Cow::Owned(out))
}

/// A host as routes match it: a name in lower case, an IPv6 address in its one text form
/// (`[0::1]` is `::1`), an IPv4 address only as four plain decimals. `None` for the other
/// spellings of an address that resolvers accept (`127.1`, `2130706433`, `0x7f.0.0.1`),
/// which a route's `host` would not recognise.
pub fn canonical_host(host: &str) -> Option<String> {
    if host.contains(':') {
        return host.parse::<std::net::Ipv6Addr>().ok().map(|ip| ip.to_string());
    }
    let numeric = host
        .bytes()
        .all(|b| b.is_ascii_hexdigit() || b == b'.' || b == b'x' || b == b'X');
    let last_label = host.rsplit('.').next().unwrap_or(host);
    if numeric && last_label.bytes().next().is_some_and(|b| b.is_ascii_digit()) {
        // Four decimals, 0 to 255, no leading zeros: checked in one pass over the bytes,
        // not by formatting the parsed address to compare (see `check_singletons` in the
        // gateway's edge for what the two cost), nor by splitting and parsing each octet
        // (about 400 instructions a request more, bench/instructions.sh).
        let (mut octets, mut value, mut digits, mut leading_zero) = (0, 0u16, 0, false);
        for b in host.bytes().chain(std::iter::once(b'.')) {
            match b {
                b'.' => {
                    if digits == 0 || value > 255 || (leading_zero && digits > 1) {
                        return None;
                    }
                    (octets, value, digits) = (octets + 1, 0, 0);
                }
                b'0'..=b'9' if digits < 3 => {
                    leading_zero = if digits == 0 { b == b'0' } else { leading_zero };
                    value = value * 10 + u16::from(b - b'0');
                    digits += 1;
                }
                _ => return None,
            }
        }
        return (octets == 4).then(|| host.to_owned());
    }
    Some(host.to_ascii_lowercase())
}

/// For a route whose upstream folds case (typically a Windows server), what in a canonical
/// path it could read as another ASCII path: characters whose case mapping is ASCII (`ı`,
/// `İ`, `ß`, `ẞ`), a combining mark right after an ASCII letter (`I` + U+0307 is `İ`), and
/// a segment ending in a dot or a space, which Windows drops (`admin.`, `admin%20`), and
/// the other spellings Windows and IIS read as another name: an NTFS stream
/// (`private::$DATA`), an 8.3 short name (`PRIVAT~1`) and an ASP.NET cookieless-session
/// segment (`(S(x))`), which ASP.NET removes. Ordinary words (`Straße`, `İstanbul`) are
/// fine on routes that do not fold case.
pub fn folding_confusable(path: &str) -> Option<&'static str> {
    let trailing = path
        .split('/')
        .any(|segment| !matches!(segment, "" | "." | "..") && (segment.ends_with('.') || segment.ends_with("%20")));
    if trailing {
        return Some("The path has a segment ending in a dot or a space, which this route's server drops.");
    }
    let windows_name = |segment: &str| {
        let decoded = percent_decode(segment);
        let short_name = decoded.windows(2).any(|w| w[0] == b'~' && w[1].is_ascii_digit());
        let cookieless = decoded.len() >= 5
            && decoded[0] == b'('
            && decoded[1].is_ascii_alphabetic()
            && decoded[2] == b'('
            && decoded.ends_with(b"))");
        // `name::$DATA` and `name:stream:$DATA` name a file's streams; a lone colon
        // (`x:batchGet`) is left to the server, which refuses or serves it as a name.
        let stream = decoded.windows(2).any(|w| w == b"::" || w == b":$");
        stream || short_name || cookieless
    };
    if path.split('/').any(windows_name) {
        return Some("The path has a segment this route's Windows server reads as another name (an NTFS stream `name::$DATA`, an 8.3 short name `NAME~1`, or a cookieless-session segment `(S(...))`).");
    }
    if !path.contains('%') {
        return None;
    }
    let decoded = percent_decode(path);
    let text = String::from_utf8_lossy(&decoded);
    let mut previous_ascii_letter = false;
    let folds = text.chars().any(|c| {
        let composes = previous_ascii_letter && ('\u{300}'..='\u{36f}').contains(&c);
        previous_ascii_letter = c.is_ascii_alphabetic();
        composes || matches!(c, '\u{130}' | '\u{131}' | '\u{df}' | '\u{1e9e}')
    });
    folds.then_some("The path has a character this route's case-folding server may read as ASCII (`ı`, `İ`, `ß`, a combining mark).")
}

/// Whether a canonical path carries path parameters (`;`, raw or escaped as `%3B`), which
/// some servers strip before routing and others do not.
pub fn has_path_parameters(path: &str) -> bool {
    path.contains(';') || path.contains("%3B")
}

/// The fast path: nothing to decode, resolve, merge or refuse.
fn is_canonical(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    let mut previous = 0u8;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'%' | b'\\' => return false,
            0..=0x20 | 0x7f..=0xff => return false,
            b'/' if previous == b'/' => return false,
            // `/;x`: a segment that is only parameters; `x./`: a trailing dot.
            b';' if previous == b'/' => return false,
            b'/' if previous == b'.' => return false,
            b'.' if previous == b'/' => {
                // `/.` starts a dot-segment when the segment is `.` or `..`, with or
                // without `;` parameters (`..;` is `..` to Tomcat and Spring).
                let rest = &bytes[i + 1..];
                let segment_end = rest.iter().position(|&c| c == b'/' || c == b';').unwrap_or(rest.len());
                if matches!(&rest[..segment_end], b"" | b".") {
                    return false;
                }
            }
            _ => {}
        }
        previous = b;
    }
    previous != b'.'
}

/// Decodes one segment onto `out`: unreserved escapes become their characters, other
/// escapes are written in upper-case hex, raw bytes outside ASCII are escaped. Returns
/// whether a `.` in it came from an escape.
fn decode_segment_onto(segment: &str, out: &mut String, whole: &str) -> Result<bool, Denial> {
    let bytes = segment.as_bytes();
    let mut encoded_dot = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let value = match (bytes.get(i + 1).and_then(hex), bytes.get(i + 2).and_then(hex)) {
                    (Some(hi), Some(lo)) => hi << 4 | lo,
                    _ => {
                        return Err(refuse(
                            Reason::RequestPathInvalidEncoding,
                            "The path has a `%` that is not followed by two hex digits.",
                            whole,
                        ))
                    }
                };
                i += 3;
                match value {
                    b'/' | b'\\' => {
                        return Err(refuse(
                            Reason::RequestPathEncodedSeparator,
                            "The path has an encoded slash or backslash (`%2F`, `%5C`).",
                            whole,
                        ))
                    }
                    b'?' | b'#' => {
                        return Err(refuse(
                            Reason::RequestPathEncodedDelimiter,
                            "The path has an encoded `?` or `#` (`%3F`, `%23`).",
                            whole,
                        ))
                    }
                    0..=0x1f | 0x7f => return Err(control(whole)),
                    _ if is_unreserved(value) => {
                        encoded_dot |= value == b'.';
                        out.push(char::from(value));
                    }
                    _ => push_escaped(out, value),
                }
                continue;
            }
            b'\\' => {
                return Err(refuse(
                    Reason::RequestPathBackslash,
                    "The path has a backslash; use `/` to separate segments.",
                    whole,
                ))
            }
            0..=0x1f | 0x7f => return Err(control(whole)),
            0x80..=0xff | b' ' => push_escaped(out, b),
            _ => out.push(char::from(b)),
        }
        i += 1;
    }
    Ok(encoded_dot)
}

/// Whether a character outside ASCII may be read as ASCII by an upstream that normalises
/// paths: its Unicode compatibility form (NFKC) is ASCII or holds ASCII (fullwidth forms,
/// ligatures, the long s, letterlike and number forms such as the Kelvin sign, circled and
/// mathematical letters, super- and subscripts, small and vertical forms, dot leaders,
/// fraction and division slashes), or it vanishes under NFKC case folding (soft hyphen,
/// zero-width and other default-ignorable characters). Refused on every route; what only
/// case folding turns into ASCII is [`folding_confusable`]'s, for case-folding routes. Such a path could reach a route its
/// spelling did not match, so it is refused rather than guessed at.
fn reads_as_ascii(c: char) -> bool {
    matches!(u32::from(c),
        0x00A0 | 0x00AA | 0x00AD | 0x00B2 | 0x00B3 | 0x00B9 | 0x00BA | 0x00BC..=0x00BE | 0x034F
        | 0x180E | 0x200B..=0x200F | 0x202A..=0x202F | 0x205F..=0x206F | 0xFE00..=0xFE0F | 0xFEFF
        | 0x0132 | 0x0133 | 0x013F | 0x0140 | 0x017F | 0x01C4..=0x01CC | 0x01F1..=0x01F3
        | 0x02B0..=0x02B8 | 0x02E0..=0x02E4 | 0x1D2C..=0x1D6A | 0x1E9A
        | 0x2000..=0x200A | 0x2024..=0x2026 | 0x2044 | 0x2070..=0x209C | 0x2100..=0x2189
        | 0x2215 | 0x2216 | 0x2460..=0x24FF | 0x2A74..=0x2A76
        | 0x3000 | 0xFB00..=0xFB06 | 0xFE10..=0xFE19 | 0xFE30..=0xFE4F | 0xFE50..=0xFE6B
        | 0xFF01..=0xFF5E | 0x1D400..=0x1D7FF | 0x1F100..=0x1F1FF)
}

/// Whether `text` holds `word`, ASCII case ignored: a plain scan, for short texts such as
/// a `Content-Type` (`str::contains` builds a two-way searcher first, 380-500 instructions
/// a call, which every JSON POST paid twice or more).
pub fn mentions(text: &[u8], word: &[u8]) -> bool {
    let Some(first) = word.first().map(u8::to_ascii_lowercase) else {
        return false;
    };
    let mut at = 0;
    while at + word.len() <= text.len() {
        if text[at].to_ascii_lowercase() == first && text[at..at + word.len()].eq_ignore_ascii_case(word) {
            return true;
        }
        at += 1;
    }
    false
}

/// The bytes `text` stands for, every well-formed `%XX` decoded (others kept as written).
pub fn percent_decode(text: &str) -> Vec<u8> {
    crate::hex::escapes_decoded(text.as_bytes(), b'%')
}

fn control(whole: &str) -> Denial {
    refuse(
        Reason::RequestPathControlCharacter,
        "The path has a NUL or another control character.",
        whole,
    )
}

fn refuse(reason: Reason, detail: &str, raw: &str) -> Denial {
    Denial::new(reason, detail).note(format!("path as sent: {}", printable(raw)))
}

/// `text` cut to 256 bytes with control characters shown as escapes, for operator notes.
fn printable(text: &str) -> String {
    let mut out: String = text.chars().take(256).flat_map(char::escape_debug).collect();
    if text.len() > 256 {
        out.push('…');
    }
    out
}

fn hex(b: &u8) -> Option<u8> {
    crate::hex::digit_value(*b)
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn push_escaped(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 15)]));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_finds_a_word_in_any_case_anywhere() {
        assert!(mentions(b"application/json", b"json"));
        assert!(mentions(b"Application/VND.API+JSON; charset=utf-8", b"json"));
        assert!(mentions(b"json", b"JSON"));
        assert!(mentions(b"multipart/form-data", b"multipart"));
        assert!(!mentions(b"application/jso", b"json"));
        assert!(!mentions(b"", b"json"));
        assert!(!mentions(b"json", b""));
        assert!(!mentions(b"text/plain", b"json"));
    }

    #[test]
    fn hosts_that_spell_an_address_must_spell_it_plainly() {
        for (host, canonical) in [
            ("127.0.0.1", Some("127.0.0.1")),
            ("0.0.0.0", Some("0.0.0.0")),
            ("255.255.255.255", Some("255.255.255.255")),
            ("API.Example.com", Some("api.example.com")),
            ("1.2.3.4.", Some("1.2.3.4.")),
            ("[::1]", None),
            ("::1", Some("::1")),
            ("256.1.1.1", None),
            ("01.2.3.4", None),
            ("1.2.3", None),
            ("1.2.3.4.5", None),
            ("1..2.3", None),
            ("1234.1.1.1", None),
            ("0x7f.0.0.1", None),
            ("127.1", None),
        ] {
            assert_eq!(canonical_host(host).as_deref(), canonical, "{host}");
        }
    }

    fn canon(raw: &str) -> Result<String, Reason> {
        canonical_path(raw).map(Cow::into_owned).map_err(|d| d.reason)
    }

    #[test]
    fn canonical_paths_are_borrowed_unchanged() {
        for p in [
            "/",
            "/orders",
            "/orders/1",
            "/a.b/c..d/.e/",
            "/a/b/",
            "/~x/-_.x",
            "/a;b=c",
        ] {
            assert!(matches!(canonical_path(p), Ok(Cow::Borrowed(_))), "{p}");
        }
    }

    #[test]
    fn paths_are_brought_to_one_spelling() {
        let cases = [
            ("//admin/users", "/admin/users"),
            ("/orders/../admin/users", "/admin/users"),
            ("/orders/./1", "/orders/1"),
            ("/orders/1/.", "/orders/1/"),
            ("/orders/1/..", "/orders/"),
            ("/a/b/../../", "/"),
            ("/%61dmin/users", "/admin/users"),
            ("/%7euser", "/~user"),
            ("/a%3ab", "/a%3Ab"),
            ("/caf\u{e9}", "/caf%C3%A9"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/a%20b", "/a%20b"),
            ("/a///b//", "/a/b/"),
            ("/..a/b..c", "/..a/b..c"),
        ];
        for (raw, want) in cases {
            assert_eq!(canon(raw).as_deref(), Ok(want), "{raw}");
            // Canonical forms are fixed points.
            assert_eq!(canon(want).as_deref(), Ok(want), "{want}");
        }
    }

    #[test]
    fn ambiguous_paths_are_refused_with_what_was_wrong() {
        let cases = [
            ("/admin%2fusers", Reason::RequestPathEncodedSeparator),
            ("/admin%2Fusers", Reason::RequestPathEncodedSeparator),
            ("/admin%5cusers", Reason::RequestPathEncodedSeparator),
            ("/admin/secret%3F.json", Reason::RequestPathEncodedDelimiter),
            ("/admin/secret%3f", Reason::RequestPathEncodedDelimiter),
            ("/admin/secret%23", Reason::RequestPathEncodedDelimiter),
            ("/admin\\users", Reason::RequestPathBackslash),
            ("/orders/%2e%2e/admin", Reason::RequestPathEncodedDotSegment),
            ("/orders/.%2E/admin", Reason::RequestPathEncodedDotSegment),
            ("/orders/%2e/admin", Reason::RequestPathEncodedDotSegment),
            ("/a%00b", Reason::RequestPathControlCharacter),
            ("/a%0ab", Reason::RequestPathControlCharacter),
            ("/a%7Fb", Reason::RequestPathControlCharacter),
            ("/a%zzb", Reason::RequestPathInvalidEncoding),
            ("/%c0%ae%c0%ae/admin", Reason::RequestPathInvalidEncoding),
            ("/a%e9b", Reason::RequestPathInvalidEncoding),
            ("/a%ff", Reason::RequestPathInvalidEncoding),
            ("/%252e%252e/admin", Reason::RequestPathDoubleEncoded),
            ("/a%252Fb", Reason::RequestPathDoubleEncoded),
            ("/params/..;/admin", Reason::RequestPathParameters),
            ("/params/.;x/admin", Reason::RequestPathParameters),
            ("/params/%2e%2e;/admin", Reason::RequestPathParameters),
            ("/params/..%3b/admin", Reason::RequestPathParameters),
            ("/%C5%BFhop", Reason::RequestPathConfusable),
            ("/%EF%BD%81dmin", Reason::RequestPathConfusable),
            ("/admin%EF%BC%8Fusers", Reason::RequestPathConfusable),
            ("/\u{212a}ey", Reason::RequestPathConfusable),
            ("/%EF%AC%81le", Reason::RequestPathConfusable),
            ("/params/;jsessionid=1/../admin", Reason::RequestPathParameters),
            ("/params/;/../admin", Reason::RequestPathParameters),
            ("/ad%C2%ADmin", Reason::RequestPathConfusable),
            ("/ad%E2%80%8Bmin", Reason::RequestPathConfusable),
            ("/a%4", Reason::RequestPathInvalidEncoding),
            ("/a%", Reason::RequestPathInvalidEncoding),
            ("/..", Reason::RequestPathAboveRoot),
            ("/a/../../b", Reason::RequestPathAboveRoot),
            ("*", Reason::RequestPathNotAbsolute),
            ("", Reason::RequestPathNotAbsolute),
        ];
        for (raw, want) in cases {
            assert_eq!(canon(raw), Err(want), "{raw}");
        }
    }

    #[test]
    fn methods_must_be_upper_case() {
        for ok in ["GET", "POST", "MKCOL", "M-SEARCH", "PROPFIND"] {
            assert!(check_method(ok).is_ok(), "{ok}");
        }
        for bad in ["post", "Get", "gET", "delete"] {
            assert_eq!(check_method(bad).unwrap_err().reason, Reason::RequestMethodNotCanonical);
        }
        assert_eq!(
            check_method("CONNECT").unwrap_err().reason,
            Reason::RequestConnectNotSupported
        );
    }

    /// What a permissive upstream serves for a path: every escape decoded, `\\` read as
    /// `/`, dot-segments resolved (never above the root), repeated slashes merged.
    fn served(path: &str) -> String {
        let decoded = percent_decode(path);
        let text = String::from_utf8_lossy(&decoded).replace('\\', "/");
        let mut segments: Vec<&str> = Vec::new();
        for segment in text.split('/') {
            match segment {
                "" | "." => {}
                ".." => {
                    segments.pop();
                }
                s => segments.push(s),
            }
        }
        format!("/{}", segments.join("/"))
    }

    /// Whether `prefix` covers `path` on segment boundaries.
    fn under(prefix: &str, path: &str) -> bool {
        path.strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }

    #[test]
    fn generated_paths_keep_their_meaning_and_match_what_upstreams_serve() {
        let pieces = [
            "/", "//", "/.", "/..", "/./", "/../", "admin", "Admin", "%61dmin", "%41", "users", "a", "%2e", "%2E",
            "%2e%2e", ".", "..", "%2f", "%2F", "%5c", "\\", ";x", "%3b", "%3B", "%20", "%00", "%0a", "%", "%z", "%4",
            "~", "%7e", "%7E", "\u{e9}", "%c3%a9", "-", "_", "%25", "%3a",
        ];
        let prefixes = ["/admin", "/admin/users", "/a", "/users", "/~", "/%C3%A9"];
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut accepted = 0;
        for case in 0..20_000 {
            let mut raw = String::from("/");
            for _ in 0..(1 + next() % 7) {
                raw.push_str(pieces[(next() % pieces.len() as u64) as usize]);
            }
            let Ok(canonical) = canonical_path(&raw) else { continue };
            accepted += 1;
            let c = canonical.as_ref();
            // One spelling: a fixed point, with nothing left to resolve or refuse.
            assert_eq!(
                canonical_path(c).map(Cow::into_owned).ok().as_deref(),
                Some(c),
                "case {case}: {raw}"
            );
            assert!(!c.contains("//") && !c.contains('\\'), "case {case}: {raw} -> {c}");
            assert!(c.split('/').all(|s| s != "." && s != ".."), "case {case}: {raw} -> {c}");
            // The upstream serves what the raw path meant, and what the gateway decided on.
            assert_eq!(served(c), served(&raw), "case {case}: {raw} -> {c}");
            for prefix in prefixes {
                assert_eq!(
                    under(prefix, c),
                    under(&served(prefix), &served(c)),
                    "case {case}: {raw} -> {c}: the route decision on `{prefix}` differs from what is served"
                );
            }
        }
        assert!(accepted > 2_000, "the generator reached the accepting path: {accepted}");
    }

    #[test]
    fn what_only_case_folding_servers_misread_is_found_for_them() {
        // Ordinary words pass where case is not folded.
        for ok in ["/de/stra%C3%9Fe", "/tr/%C4%B0stanbul", "/wiki/Washington,_D.C."] {
            assert!(canonical_path(ok).is_ok(), "{ok}");
        }
        for plain in ["/a.b/c", "/wiki/x%20y", "/%C3%A9t%C3%A9", "/~user/x:batchGet"] {
            assert_eq!(folding_confusable(plain), None, "{plain}");
        }
        for folding in [
            "/adm%C4%B1n",
            "/pa%C3%9F",
            "/PA%E1%BA%9E",
            "/I%CC%87x",
            "/admin./x",
            "/admin.",
            "/admin%20/x",
            "/wiki/Inc.",
            "/Files/private::$DATA",
            "/Files/private%3a%3a%24DATA",
            "/Files/private:s:$DATA",
            "/Files/PRIVAT~1",
            "/Files/(S(x))/private",
            "/Files/(A(x))/private",
        ] {
            let canonical = canonical_path(folding).unwrap();
            assert!(folding_confusable(&canonical).is_some(), "{folding}");
        }
    }

    #[test]
    fn path_parameters_are_found_raw_or_escaped() {
        assert!(has_path_parameters("/admin;x/users"));
        assert!(has_path_parameters("/admin%3Bx/users"));
        assert!(!has_path_parameters("/admin/users"));
    }
}
