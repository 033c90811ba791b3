//! Request ids: Pinpoint generates one for every request (it keys the decision); a
//! client's well-formed `X-Request-Id` is kept beside it as the client's own id.

/// The header carrying the request id: Pinpoint's own on responses and upstream requests,
/// the client's own on requests.
pub const HEADER: &str = "x-request-id";
/// The header that echoes the client's own request id (on responses and upstream requests).
pub const CLIENT_HEADER: &str = "x-client-request-id";

/// Whether a client-supplied request id is safe to keep: 1 to 128 characters of
/// `A-Z a-z 0-9 - _ . : @`.
pub fn is_well_formed(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@'))
}

/// Formats a request id: 32 lower-case hex digits, the first 12 the Unix time in
/// milliseconds and the other 20 random (like UUIDv7). Ids made close in time sort close
/// together, so the store's request-id index grows at its end instead of at random pages.
pub fn format(unix_ms: u64, random: u128) -> String {
    // The low 6 bytes of the time and the low 10 of the random number, big-endian, as hex:
    // `format!("{:012x}{:020x}")` without the formatting machinery (1,400 instructions a
    // request through `format!`).
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&unix_ms.to_be_bytes()[2..]);
    bytes[6..].copy_from_slice(&random.to_be_bytes()[6..]);
    crate::hex::lower(&bytes)
}

/// Whether `id` is one Pinpoint generated (see [`format`]) within `window_ms` before
/// `now_ms` (or up to a second after, for clock steps).
pub fn made_within(id: &str, now_ms: i64, window_ms: i64) -> bool {
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return false;
    }
    let Ok(made) = i64::from_str_radix(&id[..12], 16) else {
        return false;
    };
    let now = now_ms & 0xffff_ffff_ffff;
    (now - window_ms..=now + 1000).contains(&made)
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
        let a = super::format(1_795_000_000_000, u128::MAX);
        let b = super::format(1_795_000_000_001, 0);
        assert_eq!((a.len(), b.len()), (32, 32));
        assert!(a < b, "ids sort by time");
        for (ms, random) in [
            (0, 0),
            (1_795_000_000_000, u128::MAX),
            (u64::MAX, 0x1234_5678_9abc_def0_1122_3344_5566_7788),
        ] {
            let expected = format!("{:012x}{:020x}", ms & 0xffff_ffff_ffff, random & ((1u128 << 80) - 1));
            assert_eq!(super::format(ms, random), expected);
        }
        assert!(super::made_within(&b, 1_795_000_010_000, 30_000));
        assert!(!super::made_within(&b, 1_795_000_100_000, 30_000));
        assert!(!super::made_within("demo-403", 1_795_000_010_000, 30_000));
    }
}
