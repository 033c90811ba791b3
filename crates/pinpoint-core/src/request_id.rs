//! Request ids: a client's `X-Request-Id` is kept when well-formed, else one is generated.

/// The header carrying the request id, in both directions.
pub const HEADER: &str = "x-request-id";

/// Whether a client-supplied request id is safe to keep: 1 to 128 characters of
/// `A-Z a-z 0-9 - _ . : @`.
pub fn is_well_formed(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@'))
}

/// Formats 128 random bits as a request id (32 lower-case hex digits).
pub fn format(random: u128) -> String {
    format!("{random:032x}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn well_formed_ids() {
        assert!(super::is_well_formed("abc-123_x.y:z@w"));
        assert!(!super::is_well_formed(""));
        assert!(!super::is_well_formed("a b"));
        assert!(!super::is_well_formed("a\nb"));
        assert!(!super::is_well_formed(&"a".repeat(129)));
        assert_eq!(super::format(1).len(), 32);
    }
}
