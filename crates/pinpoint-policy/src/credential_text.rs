//! Finding Pinpoint's own credentials in text a client controls, so they are never sent
//! upstream or written down: the gateway's header cleaning and URL check, the request ids
//! it keeps, the API's stored fields, the WAF's part names and every recorded decision
//! ([`withheld`]) ask [`carries_pinpoint_credential`].
//!
//! What counts: a key (`pp_<16 hex>` with any separator or none, in any case, or its id
//! and secret without the prefix, `<id>:<secret>` included), or a JWT whose header names
//! a Pinpoint signing key; raw, quoted, after any scheme or separator, in a list; and
//! inside the wrappings clients apply, in any order and nested up to
//! [`MAX_WRAPPING_LAYERS`] deep: percent-encoding, JSON escapes, quoted-printable, HTML
//! character references, base64 (either alphabet, read from any of a word's first four
//! characters, as a `Basic` pair carries it, or wrapped in lines as encoders write it),
//! hex (with `:`, `-`, spaces, `0x` or `\x` between bytes, or none) and bytes written as
//! decimal numbers (`112,112,95,...`).
//!
//! How: each layer looks for the credential itself, then undoes the text escapes together
//! (one layer), and decodes each base64 word, hex and decimal sequence; what those decode
//! to is searched further only when it is text, as every wrapping of a credential is (bytes
//! read from the wrong place are noise). A search does at most `WORK_PER_BYTE` times its
//! input's length in work; text that would need more counts as carrying a credential.
//! Ordinary values need a few times their length (`ordinary_values_are_searched_within_the_budget`,
//! with the values an outside test once saw refused in `testdata/ordinary-values`).
//!
//! Not recognised: a credential cut into pieces (across headers, cookies or segments), the
//! secret or the id alone, or put in other encodings on purpose (base32, UTF-16, octal,
//! base64 cut at arbitrary points).

/// What Pinpoint recognises as its own: the id of a key in its directory, the `kid` of
/// one of its signing keys. Only these are removed from headers: a value merely shaped
/// like a key is the client's (`app_5f3a9c1e2b4d6e8f` in a cookie name, say).
#[derive(Clone, Copy)]
pub struct OwnCredentials<'a> {
    pub key_id: &'a (dyn Fn(&str) -> bool + Sync),
    pub kid: &'a (dyn Fn(&str) -> bool + Sync),
}

/// Credential-shaped text, whoever issued it: any key id shape (`pp_<16 hex>`, whether or
/// not such a key exists) and any JWT whose header names a signing key. For text that is
/// stored or shown back (API fields, request ids, decisions), where no credential belongs.
pub const ANY_CREDENTIAL: OwnCredentials<'static> = OwnCredentials {
    key_id: &|_| true,
    kid: &|_| true,
};

/// The shortest text that can hold a credential: a key id with its prefix (`pp_` and 16
/// hex digits); a JWT, or anything wrapped, is longer. Shorter text (most paths, hosts and
/// header values) is not looked into: checking every path segment, query field and Host
/// this way cost 3,500 instructions a request on the bare route otherwise.
pub const MIN_CREDENTIAL_BYTES: usize = 3 + pinpoint_core::keys::ID_LEN;

/// How many wrappings, one inside another, the search undoes (percent-encoding four times
/// over base64 is five).
pub const MAX_WRAPPING_LAYERS: usize = 5;

/// The work one search may do, in bytes looked at over all the layers it undoes, per byte
/// of its input (plus [`WORK_ALLOWANCE`]). Ordinary values take a few times their length;
/// text built so that every reading of it decodes to more encoded text could take far
/// more, and is treated as carrying a credential: what cannot be searched is not sent on.
const WORK_PER_BYTE: usize = 48;
const WORK_ALLOWANCE: usize = 16 * 1024;

/// Whether `bytes` hold a Pinpoint credential anywhere, in the wrappings clients apply
/// (see the module's documentation); `true` also for text too costly to search.
pub fn carries_pinpoint_credential(bytes: &[u8], ours: OwnCredentials<'_>) -> bool {
    if bytes.len() < MIN_CREDENTIAL_BYTES {
        return false;
    }
    let mut budget = bytes.len().saturating_mul(WORK_PER_BYTE).saturating_add(WORK_ALLOWANCE);
    search(bytes, ours, MAX_WRAPPING_LAYERS, &mut budget)
}

/// Whether a header's name holds a Pinpoint credential. Names arrive in lower case, which
/// destroys a key's secret and a token as they are, so only encodings that survive it can
/// carry one: hex and decimal digits. A name with too few digits for either (every
/// ordinary name: `upgrade-insecure-requests` is a base64 word, and decoding it four ways
/// cost about 8,000 instructions a browser request, bench/instructions.sh, route
/// `headers`) is not searched.
pub fn carries_in_header_name(name: &str, ours: OwnCredentials<'_>) -> bool {
    let digits = |hex: bool| {
        name.bytes()
            .filter(|&b| b.is_ascii_digit() || (hex && (b'a'..=b'f').contains(&b)))
            .count()
    };
    (digits(true) >= 2 * MIN_CREDENTIAL_BYTES || digits(false) >= MIN_CREDENTIAL_BYTES)
        && carries_pinpoint_credential(name.as_bytes(), ours)
}

/// `text` with every whitespace-separated word that carries anything credential-shaped
/// ([`ANY_CREDENTIAL`]) replaced by [`WITHHELD`] (punctuation around the word kept), or
/// all of it replaced when a credential spans words; `None` when nothing is withheld.
/// For text about to be written down or shown.
pub fn withheld(text: &str) -> Option<String> {
    if !carries_pinpoint_credential(text.as_bytes(), ANY_CREDENTIAL) {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        let word_end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let (word, after) = rest.split_at(word_end);
        let core = word.trim_matches(|c: char| "\"'()[]{}<>,;:.".contains(c));
        if !core.is_empty() && carries_pinpoint_credential(core.as_bytes(), ANY_CREDENTIAL) {
            let at = word.find(core).unwrap_or(0);
            out.push_str(&word[..at]);
            out.push_str(WITHHELD);
            out.push_str(&word[at + core.len()..]);
        } else {
            out.push_str(word);
        }
        let space_end = after.find(|c: char| !c.is_whitespace()).unwrap_or(after.len());
        out.push_str(&after[..space_end]);
        rest = &after[space_end..];
    }
    if carries_pinpoint_credential(out.as_bytes(), ANY_CREDENTIAL) {
        return Some(String::from(WITHHELD_ALL));
    }
    Some(out)
}

/// What [`withheld`] puts in place of a word that carried a credential.
pub const WITHHELD: &str = "(withheld: credential)";
const WITHHELD_ALL: &str = "(withheld: the text carried a credential)";

/// One layer of the search: the text as it is, then each wrapping undone once and searched
/// again, while `layers` and the work `budget` last.
fn search(bytes: &[u8], ours: OwnCredentials<'_>, layers: usize, budget: &mut usize) -> bool {
    if bytes.len() < MIN_CREDENTIAL_BYTES {
        return false;
    }
    let Some(left) = budget.checked_sub(bytes.len()) else {
        return true;
    };
    *budget = left;
    let seen = Seen::of(bytes);
    if seen.base64url_run && direct(bytes, ours) {
        return true;
    }
    if layers == 0 {
        return false;
    }
    let deeper = |decoded: &[u8], budget: &mut usize| search(decoded, ours, layers - 1, budget);
    // What base64, hex or decimal numbers decode to is searched further only when it is
    // text (UTF-8 without control characters), as every wrapping of a credential is; bytes
    // read from the wrong place (a misaligned base64 word, a UUID's digits) are binary
    // noise, looked at for the credential itself and not decoded again. Decoding the noise
    // too multiplied the work on ordinary values (a query of 30 UUIDs joined by `%2C`, a
    // client certificate) past the budget, and they were refused.
    let deeper_if_text = |decoded: &[u8], budget: &mut usize| match is_text(decoded) {
        true => deeper(decoded, budget),
        false => search(decoded, ours, 0, budget),
    };
    // The escapes that leave text text (percent, JSON, quoted-printable, HTML references)
    // are undone together, in that order, as one layer: a wrapping nested in another is
    // undone by the next layer. (Trying each alone, as a branch of its own, searched an
    // ordinary value again for every order the escapes could be undone in: a cookie with
    // `%2C` and `=6e` in it took thirty times its length.)
    if seen.percent || seen.backslash || seen.equals || seen.ampersand {
        let mut text = std::borrow::Cow::Borrowed(bytes);
        if seen.percent {
            text = std::borrow::Cow::Owned(pinpoint_core::hex::escapes_decoded(&text, b'%'));
        }
        if seen.backslash {
            if let Some(decoded) = pinpoint_core::json::unescaped(&String::from_utf8_lossy(&text)) {
                text = std::borrow::Cow::Owned(decoded.into_bytes());
            }
        }
        if seen.equals {
            if let Some(decoded) = quoted_printable_decoded(&text) {
                text = std::borrow::Cow::Owned(decoded);
            }
        }
        if seen.ampersand {
            if let Some(decoded) = entities_decoded(&text) {
                text = std::borrow::Cow::Owned(decoded);
            }
        }
        if *text != *bytes && deeper(&text, budget) {
            return true;
        }
    }
    if seen.base64url_run {
        // Shorter words decode to at most 14 bytes: too few for a key id (`pp_` and 16
        // hex digits) or a JWT header naming a `kid`, so they are not decoded at all.
        for word in base64_words(bytes)
            .into_iter()
            .filter(|word| word.len() >= MIN_WRAPPED_CREDENTIAL)
        {
            // A word may start with characters that are not the encoding's (`a` glued to
            // its front): read from each of the first four.
            for skip in 0..4 {
                if word.len() - skip >= MIN_WRAPPED_CREDENTIAL && deeper_if_text(&base64_decoded(&word[skip..]), budget)
                {
                    return true;
                }
            }
        }
    }
    if seen.hex_digits >= 2 * MIN_CREDENTIAL_BYTES {
        for decoded in hex_sequences(bytes) {
            if deeper_if_text(&decoded, budget) {
                return true;
            }
        }
    }
    if seen.decimal_digits >= MIN_CREDENTIAL_BYTES {
        for decoded in decimal_sequences(bytes) {
            if deeper_if_text(&decoded, budget) {
                return true;
            }
        }
    }
    false
}

/// Whether decoded bytes are text: UTF-8 with no control characters but tab and line
/// breaks.
fn is_text(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok()
        && !bytes
            .iter()
            .any(|&b| (b < 0x20 && !matches!(b, b'\t' | b'\r' | b'\n')) || b == 0x7f)
}

/// The credential itself in `bytes`, unwrapped: each of the three needs a run of at least
/// 16 bytes of `[A-Za-z0-9_-]` (a key id's hex digits, or a JWT header, which names its
/// `alg` and a `kid`).
fn direct(bytes: &[u8], ours: OwnCredentials<'_>) -> bool {
    holds_key_id(bytes, ours.key_id)
        || holds_unprefixed_key(bytes, ours.key_id)
        || jwt_kids(bytes).any(|kid| (ours.kid)(&kid))
}

/// What a look over some text found, which decides what the search tries on it.
struct Seen {
    /// 16 base64url bytes in a row, which a credential and a base64 word both need.
    base64url_run: bool,
    percent: bool,
    backslash: bool,
    /// `=` before two hex digits: quoted-printable.
    equals: bool,
    /// `&` before `#`, or before a later `;`: an HTML character reference.
    ampersand: bool,
    hex_digits: usize,
    decimal_digits: usize,
}

impl Seen {
    /// One pass with one table lookup a byte: every header value and every recorded
    /// decision's texts pass here, and most hold none of it (separate passes and `memchr`
    /// calls for each cost about 1,100 instructions more a request on the chain route, and
    /// 3,000 more on the `headers` one; bench/instructions.sh).
    fn of(bytes: &[u8]) -> Seen {
        let (mut run, mut long_run, mut classes, mut hex_digits, mut decimal_digits) = (0, false, 0, 0, 0);
        for &b in bytes {
            let class = BYTE_CLASS[usize::from(b)];
            classes |= class;
            hex_digits += usize::from(class & HEX != 0);
            decimal_digits += usize::from(class & DECIMAL != 0);
            run = if class & BASE64URL != 0 { run + 1 } else { 0 };
            long_run |= run >= pinpoint_core::keys::ID_LEN;
        }
        let equals = classes & EQUALS != 0
            && memchr::memchr_iter(b'=', bytes).any(|at| {
                bytes.get(at + 1).is_some_and(u8::is_ascii_hexdigit)
                    && bytes.get(at + 2).is_some_and(u8::is_ascii_hexdigit)
            });
        let ampersand = classes & AMPERSAND != 0
            && memchr::memchr_iter(b'&', bytes)
                .any(|at| bytes.get(at + 1) == Some(&b'#') || memchr::memchr(b';', &bytes[at..]).is_some());
        Seen {
            base64url_run: long_run,
            percent: classes & PERCENT != 0,
            backslash: classes & BACKSLASH != 0,
            equals,
            ampersand,
            hex_digits,
            decimal_digits,
        }
    }
}

const BASE64: u8 = 1;
const BASE64URL: u8 = 2;
const HEX: u8 = 4;
const DECIMAL: u8 = 8;
const PERCENT: u8 = 16;
const BACKSLASH: u8 = 32;
const EQUALS: u8 = 64;
const AMPERSAND: u8 = 128;

/// Per byte: in base64's either alphabet (`[A-Za-z0-9+/_-]`), in base64url's
/// (`[A-Za-z0-9_-]`: a key's secret, a JWT's segments), a hex digit, a decimal digit, or
/// one of the bytes that start an escape (`%`, `\\`, `=`, `&`).
const BYTE_CLASS: [u8; 256] = {
    let mut table = [0; 256];
    let mut b = 0;
    while b < 256 {
        let byte = b as u8;
        let alnum = byte.is_ascii_alphanumeric();
        if alnum || matches!(byte, b'+' | b'/' | b'-' | b'_') {
            table[b] |= BASE64;
        }
        if alnum || matches!(byte, b'-' | b'_') {
            table[b] |= BASE64URL;
        }
        if byte.is_ascii_hexdigit() {
            table[b] |= HEX;
        }
        if byte.is_ascii_digit() {
            table[b] |= DECIMAL;
        }
        table[b] |= match byte {
            b'%' => PERCENT,
            b'\\' => BACKSLASH,
            b'=' => EQUALS,
            b'&' => AMPERSAND,
            _ => 0,
        };
        b += 1;
    }
    table
};

fn is_base64url(b: u8) -> bool {
    BYTE_CLASS[usize::from(b)] & BASE64URL != 0
}

/// The shortest base64 word that can decode to a credential: 15 bytes or more take at
/// least 20 characters.
const MIN_WRAPPED_CREDENTIAL: usize = 20;

/// A base64 word decoded, in either alphabet (mixed, too), without padding, whatever its
/// trailing bits; a last lone character is ignored.
fn base64_decoded(word: &[u8]) -> Vec<u8> {
    let sextet = |b: u8| match b {
        b'A'..=b'Z' => b - b'A',
        b'a'..=b'z' => b - b'a' + 26,
        b'0'..=b'9' => b - b'0' + 52,
        b'+' | b'-' => 62,
        _ => 63,
    };
    let mut out = Vec::with_capacity(word.len() / 4 * 3 + 2);
    for chunk in word.chunks(4) {
        let s: [u8; 4] = std::array::from_fn(|i| chunk.get(i).map_or(0, |b| sextet(*b)));
        let bytes = [s[0] << 2 | s[1] >> 4, s[1] << 4 | s[2] >> 2, s[2] << 6 | s[3]];
        out.extend_from_slice(&bytes[..chunk.len().saturating_sub(1)]);
    }
    out
}

/// The most bytes between two lines of wrapped base64 (a line break and an indent).
const MAX_LINE_BREAK: usize = 8;

/// The base64 words of `bytes` (runs of either alphabet), and, where lines of base64 were
/// wrapped (as `base64`, MIME and PEM encoders do: lines of a multiple of four characters,
/// at least 16, joined by line breaks, spaces, tabs, commas or semicolons), the lines
/// joined again.
fn base64_words(bytes: &[u8]) -> Vec<std::borrow::Cow<'_, [u8]>> {
    use std::borrow::Cow;
    let is_base64 = |b: &u8| BYTE_CLASS[usize::from(*b)] & BASE64 != 0;
    // Only words long enough to decode to a credential are kept (most text has none, and
    // then nothing is allocated).
    let mut words: Vec<Cow<'_, [u8]>> = Vec::new();
    let mut joined: Vec<u8> = Vec::new();
    let mut lines = 0;
    let mut at = 0;
    while at < bytes.len() {
        let Some(start) = bytes[at..].iter().position(is_base64).map(|n| at + n) else {
            break;
        };
        let end = bytes[start..]
            .iter()
            .position(|b| !is_base64(b))
            .map_or(bytes.len(), |n| start + n);
        let word = &bytes[start..end];
        if word.len() >= MIN_WRAPPED_CREDENTIAL {
            words.push(Cow::Borrowed(word));
        }
        let gap = bytes[end..]
            .iter()
            .take_while(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b',' | b';'))
            .count();
        let wraps = word.len() >= pinpoint_core::keys::ID_LEN
            && word.len() % 4 == 0
            && (1..=MAX_LINE_BREAK).contains(&gap)
            && bytes.get(end + gap).is_some_and(is_base64);
        if lines > 0 || wraps {
            joined.extend_from_slice(word);
            lines += 1;
        }
        if !wraps {
            if lines > 1 {
                words.push(Cow::Owned(std::mem::take(&mut joined)));
            }
            joined.clear();
            lines = 0;
        }
        at = end;
    }
    words
}

/// Quoted-printable (`=5F` for `_`, soft line breaks `=` at a line's end) decoded, when
/// any escape is there.
fn quoted_printable_decoded(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut joined = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    while let Some(at) = memchr::memchr(b'=', rest) {
        let soft_break = [&b"=\r\n"[..], b"=\n"].into_iter().find(|b| rest[at..].starts_with(b));
        let end = at + soft_break.map_or(1, <[u8]>::len);
        joined.extend_from_slice(&rest[..at + usize::from(soft_break.is_none())]);
        rest = &rest[end..];
    }
    joined.extend_from_slice(rest);
    let decoded = pinpoint_core::hex::escapes_decoded(&joined, b'=');
    (decoded != bytes).then_some(decoded)
}

/// HTML character references decoded (`&#95;`, `&#x5f;`, and the named ones for the
/// characters a credential holds or is wrapped in: `&lowbar;`, `&period;`, ...), when any
/// is there.
fn entities_decoded(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut changed = false;
    let mut at = 0;
    while at < bytes.len() {
        let reference = (bytes[at] == b'&').then(|| reference_at(&bytes[at + 1..])).flatten();
        match reference {
            Some((c, len)) => {
                let mut utf8 = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
                (at, changed) = (at + len, true);
            }
            None => {
                out.push(bytes[at]);
                at += 1;
            }
        }
    }
    changed.then_some(out)
}

/// The character a reference after its `&` names and the bytes it takes with the `&`:
/// numeric ones end at their last digit, `;` or not (as HTML reads `&#95d`), named ones at
/// their `;`.
fn reference_at(rest: &[u8]) -> Option<(char, usize)> {
    const NAMED: [(&[u8], u8); 12] = [
        (b"lowbar", b'_'),
        (b"UnderBar", b'_'),
        (b"period", b'.'),
        (b"colon", b':'),
        (b"equals", b'='),
        (b"hyphen", b'-'),
        (b"dash", b'-'),
        (b"plus", b'+'),
        (b"sol", b'/'),
        (b"amp", b'&'),
        (b"quot", b'"'),
        (b"apos", b'\''),
    ];
    let (code, len) = match rest {
        [b'#', b'x' | b'X', digits @ ..] => {
            let n = digits.iter().take(8).take_while(|b| b.is_ascii_hexdigit()).count();
            (
                u32::from_str_radix(std::str::from_utf8(&digits[..n]).ok()?, 16).ok()?,
                2 + n,
            )
        }
        [b'#', digits @ ..] => {
            let n = digits.iter().take(8).take_while(|b| b.is_ascii_digit()).count();
            (std::str::from_utf8(&digits[..n]).ok()?.parse::<u32>().ok()?, 1 + n)
        }
        _ => {
            let len = rest.iter().take(10).position(|b| *b == b';')?;
            let (_, c) = NAMED.iter().find(|(name, _)| *name == &rest[..len])?;
            (u32::from(*c), len)
        }
    };
    // The `;` that ends it, if there is one, goes with it.
    let len = len + usize::from(rest.get(len) == Some(&b';'));
    Some((char::from_u32(code)?, len + 1))
}

/// The most bytes between two numbers of one decimal sequence (`", "`).
const MAX_DECIMAL_GAP: usize = 4;

/// Sequences of at least 19 decimal numbers from 0 to 255 with up to [`MAX_DECIMAL_GAP`]
/// other bytes between them (`112,112,95,...`, `[112, 112, ...]`, `"112","112"`: bytes as
/// JSON and many languages print them), as the bytes they number.
fn decimal_sequences(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut found = Vec::new();
    let mut numbers: Vec<u8> = Vec::new();
    let mut flush = |numbers: &mut Vec<u8>| {
        if numbers.len() >= MIN_CREDENTIAL_BYTES {
            found.push(std::mem::take(numbers));
        }
        numbers.clear();
    };
    let mut at = 0;
    while at < bytes.len() {
        let digits = bytes[at..].iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            let gap = bytes[at..].iter().take_while(|b| !b.is_ascii_digit()).count();
            if gap > MAX_DECIMAL_GAP {
                flush(&mut numbers);
            }
            at += gap;
            continue;
        }
        let number = std::str::from_utf8(&bytes[at..at + digits])
            .ok()
            .and_then(|d| d.parse::<u8>().ok())
            .filter(|_| digits <= 3);
        match number {
            Some(n) => numbers.push(n),
            None => flush(&mut numbers),
        }
        at += digits;
    }
    flush(&mut numbers);
    found
}

/// The most bytes between two hex pairs that still join them into one sequence (`, 0x`).
const MAX_HEX_GAP: usize = 4;

/// Sequences of hex digits long enough to spell a credential (`pp_` and a key id: 19
/// bytes, 38 digits), decoded from their first digit and from their second: digits in a
/// run, or pairs with up to [`MAX_HEX_GAP`] other bytes between them (`70:70:5f`,
/// `0x70 0x70`, `\x70\x70`; a `0x` before digits counts as a gap).
fn hex_sequences(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut found = Vec::new();
    let mut digits: Vec<u8> = Vec::new();
    let mut flush = |digits: &mut Vec<u8>| {
        if digits.len() >= 2 * MIN_CREDENTIAL_BYTES {
            for from in [&digits[..], &digits[1..]] {
                let value = |b: u8| pinpoint_core::hex::digit_value(b).unwrap_or(0);
                found.push(from.chunks_exact(2).map(|p| value(p[0]) << 4 | value(p[1])).collect());
            }
        }
        digits.clear();
    };
    let (mut gap, mut at) = (0, 0);
    while at < bytes.len() {
        let b = bytes[at];
        // `0x` starts a byte after a gap, or after whole bytes (`0x700x70`).
        let starts_byte = digits.len() % 2 == 0 || at == 0 || !bytes[at - 1].is_ascii_hexdigit();
        if b == b'0'
            && starts_byte
            && matches!(bytes.get(at + 1), Some(b'x' | b'X'))
            && bytes.get(at + 2).is_some_and(u8::is_ascii_hexdigit)
        {
            gap += 2;
            at += 2;
            continue;
        }
        if b.is_ascii_hexdigit() {
            if gap > MAX_HEX_GAP {
                flush(&mut digits);
            }
            gap = 0;
            digits.push(b);
        } else {
            gap += 1;
        }
        at += 1;
    }
    flush(&mut digits);
    found
}

/// Whether `bytes` hold a key without its `pp_`: the 16 hex digits of a key Pinpoint
/// knows, one separator, and a secret's 43 characters.
fn holds_unprefixed_key(bytes: &[u8], is_key_id: &dyn Fn(&str) -> bool) -> bool {
    const ID: usize = pinpoint_core::keys::ID_LEN;
    const SECRET: usize = pinpoint_core::keys::SECRET_LEN;
    if bytes.len() < ID + 1 + SECRET {
        return false;
    }
    // The separator is `_` as issued, or any other byte that is not a letter or digit
    // (`<id>:<secret>`, as a Basic pair of user and password would carry them).
    (ID..bytes.len() - SECRET)
        .filter(|&at| !bytes[at].is_ascii_alphanumeric())
        .any(|at| {
            bytes[at - ID..at].iter().all(u8::is_ascii_hexdigit)
                && bytes
                    .get(at + 1..at + 1 + SECRET)
                    .is_some_and(|s| s.iter().all(|b| is_base64url(*b)))
                && is_key_id(&String::from_utf8_lossy(&bytes[at - ID..at]).to_ascii_lowercase())
        })
}

/// Whether `bytes` hold `pp`, one separator or none, and the 16 hex digits of a key
/// Pinpoint knows.
fn holds_key_id(bytes: &[u8], is_key_id: &dyn Fn(&str) -> bool) -> bool {
    const ID: usize = pinpoint_core::keys::ID_LEN;
    let id_at = |at: usize| {
        bytes.get(at..at + ID).is_some_and(|id| {
            id.iter().all(u8::is_ascii_hexdigit) && is_key_id(&String::from_utf8_lossy(id).to_ascii_lowercase())
        })
    };
    // `pp`, a separator or none (`pp92a7…`), the id.
    memchr::memchr2_iter(b'p', b'P', bytes).any(|at| {
        matches!(bytes.get(at + 1), Some(b'p' | b'P'))
            && (id_at(at + 2) || bytes.get(at + 2).is_some_and(|b| !b.is_ascii_alphanumeric()) && id_at(at + 3))
    })
}

/// The `kid`s of every JWT header (`eyJ...`, base64url JSON) in `bytes`.
fn jwt_kids(bytes: &[u8]) -> impl Iterator<Item = String> + '_ {
    // (`memmem::find_iter` builds a searcher per call: 250 instructions for a 20-byte text,
    // the key label every chain decision records; bench/instructions.sh.)
    memchr::memchr_iter(b'e', bytes)
        .filter(move |&i| bytes[i..].starts_with(b"eyJ"))
        .filter_map(move |i| {
            let end = bytes[i..]
                .iter()
                .position(|b| !is_base64url(*b))
                .map_or(bytes.len(), |n| i + n);
            let header: serde_json::Value = serde_json::from_slice(&base64_decoded(&bytes[i..end])).ok()?;
            header.get("kid")?.as_str().map(str::to_owned)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: OwnCredentials<'static> = OwnCredentials {
        key_id: &|id| id == "0123456789abcdef",
        kid: &|kid| kid == "k1",
    };

    fn base64(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b: [u8; 3] = std::array::from_fn(|i| chunk.get(i).copied().unwrap_or(0));
            let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
            for i in 0..=chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        while out.len() % 4 != 0 {
            out.push('=');
        }
        out
    }

    /// `text` cut into lines of `width`, joined by `newline`.
    fn wrap(text: &str, width: usize, newline: &str) -> String {
        text.as_bytes()
            .chunks(width)
            .map(|line| String::from_utf8_lossy(line).into_owned())
            .collect::<Vec<_>>()
            .join(newline)
    }

    fn hex(text: &str) -> String {
        pinpoint_core::hex::lower(text.as_bytes())
    }

    fn percent(text: &str) -> String {
        text.bytes().map(|b| format!("%{b:02X}")).collect()
    }

    #[test]
    fn a_pinpoint_credential_is_found_in_any_wrapping() {
        let key = "pp_0123456789abcdef_secretsecretsecretsecretsecretsecretsecr";
        let jwt = "eyJhbGciOiJFZERTQSIsImtpZCI6ImsxIn0.eyJzdWIiOiJ4In0.sig";
        // A key as issued: its secret is 43 characters.
        let issued = format!("pp_0123456789abcdef_{}", "s".repeat(43));
        let basic = |pair: &str| format!("Basic {}", base64(pair.as_bytes()));
        let wrapped = [
            format!("Bearer {key}"),
            format!("Bearer\t{key}"),
            format!("Bearer \"{key}\""),
            format!("x, Bearer {key}"),
            format!("Bearer={key}"),
            format!("token={key}"),
            format!("PP_{}", &key[3..]),
            basic(&format!("{key}:")),
            basic(&format!("user:{key}")),
            format!("bearer {jwt}"),
            format!("{jwt},{jwt}"),
            format!("\"{jwt}\""),
            basic(&format!("x:{jwt}")),
            format!("Bearer {jwt}."),
            format!("x.{jwt}"),
            format!("pp-{}", &key[3..]),
            format!("api_key={key}"),
            hex(key),
            format!("a{}", hex(key)),
            key.replace('_', "%5F"),
            key.replace('_', "\\u005f"),
            format!("x:0123456789abcdef_{}", "s".repeat(43)),
            // The id as a Basic user and the secret as its password, or the pair as it is.
            basic(&issued[3..].replacen('_', ":", 1)),
            issued[3..].replacen('_', ":", 1),
            // No separators at all.
            issued.replace('_', ""),
            // Escapes in layers: percent-encoded twice, JSON inside percent, JSON twice.
            key.replace('_', "%255F"),
            key.bytes().map(|b| format!("%25{b:02X}")).collect(),
            key.replace('_', "%5Cu005f"),
            key.replace('_', "\\\\u005f"),
            // Wrappings inside wrappings, in any order.
            base64(base64(key.as_bytes()).as_bytes()),
            base64(base64(base64(jwt.as_bytes()).as_bytes()).as_bytes()),
            base64(hex(key).as_bytes()),
            hex(&base64(key.as_bytes())),
            hex(&hex(key)),
            base64(percent(key).as_bytes()),
            basic(&format!("u:{}", percent(key))),
            base64(key.replace('_', "\\u005f").as_bytes()),
            percent(&base64(base64(key.as_bytes()).as_bytes())),
            base64(format!("Bearer {}", base64(key.as_bytes())).as_bytes()),
            percent(&percent(&percent(&percent(&base64(key.as_bytes()))))),
            // Base64 with characters glued to its front.
            format!("a{}", base64(key.as_bytes())),
            format!("abc{}", base64(jwt.as_bytes()).replace('+', "-").replace('/', "_")),
            // Hex with separators between its bytes.
            key.bytes().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":"),
            key.bytes().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" "),
            key.bytes().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join("-"),
            key.bytes().map(|b| format!("0x{b:02x}")).collect::<Vec<_>>().join(", "),
            key.bytes().map(|b| format!("\\x{b:02x}")).collect(),
            key.bytes().map(|b| format!("0x{b:02x}")).collect(),
            key.bytes().map(|b| format!("0X{b:02X}")).collect(),
            // Base64 wrapped in lines, as encoders write it.
            wrap(&base64(jwt.as_bytes()), 76, "\n"),
            wrap(&base64(jwt.as_bytes()), 20, "\r\n"),
            wrap(&base64(key.as_bytes()), 20, " "),
            wrap(&base64(jwt.as_bytes()), 40, ", "),
            percent(&wrap(&base64(jwt.as_bytes()), 64, "\n")),
            // Quoted-printable, HTML character references, bytes as decimal numbers.
            key.replace('_', "=5F"),
            format!("=?UTF-8?Q?{}?=", key.replace('_', "=5F")),
            key.replace('_', "&#95;"),
            format!("pp_0123456789abcdef&#95{}", &key[20..]),
            format!(
                "\"{}\"",
                key.bytes().map(|b| b.to_string()).collect::<Vec<_>>().join("\",\"")
            ),
            wrap(&base64(format!("user:{key}").as_bytes()), 20, "    "),
            wrap(&base64(jwt.as_bytes()), 64, "\n    "),
            wrap(&base64(key.as_bytes()), 20, "; "),
            key.replace('_', "&lowbar;"),
            key.bytes().map(|b| format!("&#{b};")).collect(),
            key.bytes().map(|b| b.to_string()).collect::<Vec<_>>().join(","),
            format!(
                "[{}]",
                key.bytes().map(|b| b.to_string()).collect::<Vec<_>>().join(", ")
            ),
        ];
        for value in &wrapped {
            assert!(carries_pinpoint_credential(value.as_bytes(), OURS), "{value}");
        }
        for other in [
            "Bearer upstream-own-token",
            "Basic dXNlcjpwYXNz",
            "eyJhbGciOiJIUzI1NiJ9.e30.x",
            "eyJhbGciOiJFZERTQSIsImtpZCI6ImsyIn0.e30.x",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0",
            "sha256=9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "session=ab12cd34; theme=dark; ids=1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21",
            "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8 &amp; &#169;",
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, \
             Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7",
        ] {
            assert!(!carries_pinpoint_credential(other.as_bytes(), OURS), "{other}");
        }
        // Another key's id, wrapped: not Pinpoint's.
        let theirs = key.replace("0123456789abcdef", "fedcba9876543210");
        assert!(!carries_pinpoint_credential(
            base64(base64(theirs.as_bytes()).as_bytes()).as_bytes(),
            OURS
        ));
        assert!(carries_pinpoint_credential(theirs.as_bytes(), ANY_CREDENTIAL));
        // Header names, in lower case: hex and decimal digits survive it.
        assert!(carries_in_header_name(&format!("x-{}", hex(key)), OURS));
        let decimal: String = key.bytes().map(|b| b.to_string()).collect::<Vec<_>>().join("-");
        assert!(carries_in_header_name(&decimal, OURS));
        assert!(!carries_in_header_name("upgrade-insecure-requests", OURS));
    }

    #[test]
    fn text_too_costly_to_search_counts_as_carrying_one() {
        // Ordinary long values are searched within the budget.
        let long = base64(&(0..=255u8).cycle().take(48 * 1024).collect::<Vec<u8>>());
        assert!(!carries_pinpoint_credential(long.as_bytes(), OURS));
        let mut nested = String::from("x");
        for _ in 0..3 {
            nested = base64(nested.repeat(16).as_bytes());
        }
        assert!(!carries_pinpoint_credential(nested.as_bytes(), OURS));
        // Where the budget ends, the search stops and answers that it may carry one.
        let mut budget = nested.len() * 2;
        assert!(search(nested.as_bytes(), OURS, MAX_WRAPPING_LAYERS, &mut budget));
    }

    /// Work a search did, per byte of its input.
    fn work_per_byte(value: &[u8]) -> f64 {
        let mut budget = usize::MAX;
        let found = search(value, OURS, MAX_WRAPPING_LAYERS, &mut budget);
        assert!(!found, "{}", String::from_utf8_lossy(value));
        (usize::MAX - budget) as f64 / value.len() as f64
    }

    /// Ordinary values that an outside test found refused or removed when the search
    /// decoded binary noise again (testdata/ordinary-values: UUID and id lists, client
    /// certificates, SAML, wrapped base64), and 16 KiB of random values of each kind: none
    /// carries a credential, and each is searched well within the budget.
    #[test]
    fn ordinary_values_are_searched_within_the_budget() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/ordinary-values");
        let mut values: Vec<Vec<u8>> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
            .collect();
        assert!(values.len() >= 9);
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut random = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect()
        };
        let uuid = |bytes: &[u8]| {
            let h = hex(&String::from_utf8_lossy(bytes));
            format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
        };
        let raw = random(12 * 1024);
        values.push(base64(&raw).into_bytes());
        values.push(base64(&raw).replace('+', "-").replace('/', "_").into_bytes());
        for (width, newline) in [(76, "\r\n"), (76, " "), (64, ","), (40, "\t"), (20, ", ")] {
            values.push(wrap(&base64(&raw), width, newline).into_bytes());
        }
        values.push(pinpoint_core::hex::lower(&raw[..8 * 1024]).into_bytes());
        values.push(
            raw[..4096]
                .iter()
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
                .join(",")
                .into_bytes(),
        );
        let uuids: Vec<String> = (0..400).map(|_| uuid(&random(16))).collect();
        values.push(uuids.join("%2C").into_bytes());
        values.push(uuids.join(",").into_bytes());
        values.push(uuids.join("%20").into_bytes());
        for value in &values {
            let work = work_per_byte(value);
            assert!(
                work < (WORK_PER_BYTE / 2) as f64,
                "{work:.1} per byte: {}",
                String::from_utf8_lossy(&value[..80])
            );
        }
    }

    #[test]
    fn withheld_replaces_only_the_words_that_carry_a_credential() {
        let key = "pp_0123456789abcdef_secretsecretsecretsecretsecretsecretsecr";
        assert_eq!(withheld("Origin \"https://example.com\""), None);
        assert_eq!(
            withheld(&format!("csrf: Origin \"https://{key}.example\" (Sec-Fetch-Site none)")).as_deref(),
            Some("csrf: Origin \"(withheld: credential)\" (Sec-Fetch-Site none)")
        );
        assert_eq!(
            withheld(&format!("at body:/{key}: \"<scri\"")).as_deref(),
            Some("at (withheld: credential): \"<scri\"")
        );
        // Cut across words: all of it.
        assert_eq!(withheld("key pp 0123456789abcdef").as_deref(), Some(WITHHELD_ALL));
    }
}
