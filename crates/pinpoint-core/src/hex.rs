//! Lower-case hex, the one way ids, fingerprints and digests are written as text.

/// `bytes` as lower-case hex, two digits a byte. Written out rather than with
/// `format!("{b:02x}")` per byte: trace ids are written on every request, and the
/// formatting machinery cost about 1,500 instructions a request there
/// (bench/instructions.sh, bare route).
pub fn lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn two_lower_case_digits_a_byte() {
        assert_eq!(super::lower(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(super::lower(&[]), "");
    }
}
