//! JSON text written by hand, for the two lines every request writes (the access log's
//! line and the decision record), where serde_json's general machinery was a sixth of a
//! proxied request's instructions. Everything else uses serde_json; what is written here is
//! byte-for-byte what serde_json writes (the tests compare). Also the lenient reading of
//! text that only looks like JSON ([`unescaped`]), which the WAF and the credential finder
//! share.

/// Appends `value` as a JSON string, escaped as serde_json escapes it: `"` and `\`, the
/// short forms `\b \f \n \r \t`, other control characters as `\u00xx`.
pub fn push_str(out: &mut String, value: &str) {
    out.reserve(value.len() + 2);
    out.push('"');
    let mut rest = value;
    while let Some(at) = first_to_escape(rest.as_bytes()) {
        out.push_str(&rest[..at]);
        let byte = rest.as_bytes()[at];
        match byte {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x08 => out.push_str("\\b"),
            0x0c => out.push_str("\\f"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.push_str("\\u00");
                out.push(HEX[usize::from(byte >> 4)] as char);
                out.push(HEX[usize::from(byte & 0xf)] as char);
            }
        }
        // The byte escaped is ASCII, so the next one starts a character.
        rest = &rest[at + 1..];
    }
    out.push_str(rest);
    out.push('"');
}

/// Where the first byte that JSON must escape (`"`, `\`, below 0x20) is, looking at eight
/// bytes at a time: a byte-by-byte scan made escaping most of the line's cost (224
/// instructions for a 20-byte field; 90 this way).
fn first_to_escape(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let chunks = bytes.chunks_exact(8);
    let tail = chunks.remainder();
    for (index, chunk) in chunks.enumerate() {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let word = u64::from_le_bytes(word);
        // A byte is flagged where it is zero after the XOR (a quote or a backslash) or
        // below 0x20; a borrow can flag a byte only above one that is truly flagged, so
        // the lowest flag is exact.
        let quote = word ^ (ONES * u64::from(b'"'));
        let backslash = word ^ (ONES * u64::from(b'\\'));
        let flags = ((quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash)
            | (word.wrapping_sub(ONES * 0x20) & !word))
            & HIGH;
        if flags != 0 {
            return Some(index * 8 + flags.trailing_zeros() as usize / 8);
        }
    }
    let start = bytes.len() - tail.len();
    tail.iter()
        .position(|&b| b < 0x20 || b == b'"' || b == b'\\')
        .map(|at| start + at)
}

/// `text` with its JSON string escapes (`\uXXXX`, surrogate pairs, `\n`, `\/`, ...)
/// decoded wherever they stand, for text that is not strict JSON (the WAF's reading of a
/// body that only looks like JSON, the credential finder's of a header); `None` when it
/// has none.
pub fn unescaped(text: &str) -> Option<String> {
    if !text.contains('\\') {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let hex4 = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>| -> Option<u16> {
        let digits: String = (0..4).map_while(|_| chars.next_if(char::is_ascii_hexdigit)).collect();
        (digits.len() == 4)
            .then(|| u16::from_str_radix(&digits, 16).ok())
            .flatten()
    };
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('u') => match hex4(&mut chars) {
                Some(high @ 0xD800..=0xDBFF) => {
                    let low = (chars.peek() == Some(&'\\'))
                        .then(|| {
                            let mut ahead = chars.clone();
                            ahead.next();
                            (ahead.next() == Some('u')).then(|| hex4(&mut ahead).map(|low| (low, ahead)))
                        })
                        .flatten()
                        .flatten();
                    match low {
                        Some((low @ 0xDC00..=0xDFFF, ahead)) => {
                            chars = ahead;
                            out.extend(
                                char::decode_utf16([high, low]).map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER)),
                            );
                        }
                        _ => out.push(char::REPLACEMENT_CHARACTER),
                    }
                }
                Some(unit) => out.push(char::from_u32(u32::from(unit)).unwrap_or(char::REPLACEMENT_CHARACTER)),
                None => out.push_str("\\u"),
            },
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('b') => out.push('\u{8}'),
            Some('f') => out.push('\u{c}'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_decoded_where_they_stand() {
        assert_eq!(
            unescaped(r#"{"a":NaN,"q":"\u003cx\u003e \ud83d\ude00\n"}"#).as_deref(),
            Some("{\"a\":NaN,\"q\":\"<x> \u{1f600}\n\"}")
        );
        assert_eq!(unescaped("pp\\u005fx").as_deref(), Some("pp_x"));
        assert_eq!(unescaped("plain"), None);
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let long = "a longer value, past eight bytes: \"quoted\", back\\slash, \u{1}, tab\tend";
        for value in [
            "plain",
            "quote \" and \\ slash",
            "line\nbreak\r\t",
            "\u{0}\u{1f}\u{8}\u{c}\u{7f}",
            "ünïcødé ✓",
            "",
            long,
        ] {
            let mut ours = String::new();
            push_str(&mut ours, value);
            assert_eq!(ours, serde_json::to_string(value).unwrap(), "{value:?}");
        }
    }

    #[test]
    fn every_ascii_character_at_every_place_in_a_word_is_escaped_right() {
        for byte in 0u8..0x80 {
            for place in 0..18 {
                let mut value = "x".repeat(17);
                value.insert(place, char::from(byte));
                let mut ours = String::new();
                push_str(&mut ours, &value);
                assert_eq!(ours, serde_json::to_string(&value).unwrap(), "{byte:#x} at {place}");
            }
        }
    }
}
