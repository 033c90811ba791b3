//! Lower-case hex, the one way ids, fingerprints and digests are written as text.

/// `bytes` as lower-case hex, two digits a byte. Written out rather than with
/// `format!("{b:02x}")` per byte (trace ids are written on every request: about 1,500
/// instructions a request more, bench/instructions.sh, bare route), and into a buffer of
/// their exact size.
pub fn lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut digits = vec![0u8; bytes.len() * 2];
    for (pair, b) in digits.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0xf)];
    }
    // Hex digits are ASCII.
    String::from_utf8(digits).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn two_lower_case_digits_a_byte() {
        assert_eq!(super::lower(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(super::lower(&[]), "");
    }
}
