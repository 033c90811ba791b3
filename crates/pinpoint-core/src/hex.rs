//! Lower-case hex, the one way ids, fingerprints and digests are written as text.

/// `bytes` as lower-case hex, two digits a byte. Written out rather than with
/// `format!("{b:02x}")` per byte (trace ids are written on every request: about 1,500
/// instructions a request more, bench/instructions.sh, bare route), and into a buffer of
/// their exact size.
pub fn lower(bytes: &[u8]) -> String {
    let mut digits = vec![0u8; bytes.len() * 2];
    for (pair, b) in digits.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0xf)];
    }
    // Hex digits are ASCII.
    String::from_utf8(digits).unwrap_or_default()
}

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// The value of one hex digit, in either case.
pub fn digit_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The bytes `bytes` stand for with every well-formed `<marker>XX` escape decoded (others
/// kept as written): percent-encoding with `%`, quoted-printable's with `=`.
pub fn escapes_decoded(bytes: &[u8], marker: u8) -> Vec<u8> {
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    // Whole runs up to each marker are copied at once; digits are read only after one.
    while let Some(at) = rest.iter().position(|&b| b == marker) {
        decoded.extend_from_slice(&rest[..at]);
        let digit = |n: usize| rest.get(at + n).copied().and_then(digit_value);
        match (digit(1), digit(2)) {
            (Some(hi), Some(lo)) => {
                decoded.push(hi << 4 | lo);
                rest = &rest[at + 3..];
            }
            _ => {
                decoded.push(marker);
                rest = &rest[at + 1..];
            }
        }
    }
    decoded.extend_from_slice(rest);
    decoded
}

/// Appends `bytes` to `out` as lower-case hex, two digits a byte (for a few bytes at the
/// end of a buffer; [`lower`] writes many faster: through this, trace and request ids cost
/// 290 instructions a request more, bench/instructions.sh).
pub fn push_lower(out: &mut Vec<u8>, bytes: &[u8]) {
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0xf)]);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_are_decoded_by_their_marker_and_pushed_digits_match() {
        assert_eq!(super::escapes_decoded(b"a%5Fb%zz%4", b'%'), b"a_b%zz%4");
        assert_eq!(super::escapes_decoded(b"a=5fb%5F", b'='), b"a_b%5F");
        let mut out = b"x-".to_vec();
        super::push_lower(&mut out, &[0x0f, 0xa5]);
        assert_eq!(out, b"x-0fa5");
    }

    #[test]
    fn two_lower_case_digits_a_byte() {
        assert_eq!(super::lower(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(super::lower(&[]), "");
    }
}
