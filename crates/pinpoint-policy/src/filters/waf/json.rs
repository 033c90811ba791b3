//! The WAF's JSON reader: one strict pass over a body (RFC 8259) that hands every object
//! key and every string value to the caller with its JSON pointer, bounds nesting and the
//! number of values, and refuses a key named twice in one object (parsers keep the first
//! or the last, so the WAF and the upstream could read different values). It builds no
//! tree and copies only strings that hold escapes.
//!
//! Written for the WAF rather than using serde_json because the body phase's cost is
//! mostly reading the body: on bench/instructions.sh's 1 KiB JSON POST, serde_json (a
//! visitor, no tree) took about 25,000 instructions and this reader about 8,000 (see
//! bench/README.md). A property test checks it accepts and reports exactly what
//! serde_json does.

use std::borrow::Cow;

/// Why a body was not read to its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonError {
    /// Not JSON: what was expected, at which byte.
    Syntax { at: usize, expected: &'static str },
    /// Nested deeper than allowed.
    TooDeep,
    /// More values than allowed.
    TooMany,
    /// An object names a key twice.
    DuplicateKey,
}

/// What the reader hands over: each key (`key` is the key itself; `at` names its value)
/// and each string value, with where it is. `word`: the text is one word of
/// `[A-Za-z0-9_]` (found while reading it, so a visitor that has nothing to do with words
/// need not scan them again).
pub trait JsonVisitor {
    fn key(&mut self, at: &JsonPath<'_, '_>, key: &str, word: bool);
    fn string(&mut self, at: &JsonPath<'_, '_>, value: &str, word: bool);
}

/// Where a value is, spelled as a JSON pointer only when asked: most values never need
/// their name (building every pointer cost more than reading the values).
pub struct JsonPath<'r, 'b> {
    steps: &'r [Step],
    keys: &'r [Cow<'b, str>],
}

impl JsonPath<'_, '_> {
    /// The JSON pointer (RFC 6901): `/items/0/note`.
    pub fn pointer(&self) -> String {
        let mut pointer = String::new();
        for step in self.steps {
            pointer.push('/');
            match step {
                Step::Index(i) => pointer.push_str(itoa::Buffer::new().format(*i)),
                Step::Key(k) => {
                    let key = &self.keys[*k];
                    match key.contains(['~', '/']) {
                        true => pointer.push_str(&key.replace('~', "~0").replace('/', "~1")),
                        false => pointer.push_str(key),
                    }
                }
            }
        }
        pointer
    }
}

/// One step down: into an array's element, or an object's member (its key's place on the
/// reader's key stack).
#[derive(Clone, Copy)]
enum Step {
    Index(usize),
    Key(usize),
}

/// Reads `body` as one JSON value, calling `visitor` for every key and string.
pub fn read(body: &[u8], max_depth: usize, max_values: usize, visitor: &mut impl JsonVisitor) -> Result<(), JsonError> {
    // JSON is UTF-8 throughout: checked once for the whole body, so strings are slices of
    // it (checking each string apart cost 4,000 instructions on a 1 KiB body).
    let text = std::str::from_utf8(body).map_err(|e| JsonError::Syntax {
        at: e.valid_up_to(),
        expected: "UTF-8 text",
    })?;
    let mut reader = Reader {
        text,
        bytes: body,
        at: 0,
        values: 0,
        max_depth,
        max_values,
        steps: Vec::new(),
        keys: Vec::new(),
    };
    reader.skip_whitespace();
    reader.value(0, visitor)?;
    reader.skip_whitespace();
    match reader.at == body.len() {
        true => Ok(()),
        false => Err(reader.syntax("the end of the body")),
    }
}

struct Reader<'b> {
    text: &'b str,
    bytes: &'b [u8],
    at: usize,
    values: usize,
    max_depth: usize,
    max_values: usize,
    /// The path to the value being read.
    steps: Vec<Step>,
    /// The keys of every object being read, innermost last: each object checks its own
    /// (from where it started) for one named twice, and drops them when it ends.
    keys: Vec<Cow<'b, str>>,
}

impl<'b> Reader<'b> {
    fn syntax(&self, expected: &'static str) -> JsonError {
        JsonError::Syntax { at: self.at, expected }
    }

    fn path(&self) -> JsonPath<'_, 'b> {
        JsonPath {
            steps: &self.steps,
            keys: &self.keys,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    fn expect(&mut self, byte: u8, expected: &'static str) -> Result<(), JsonError> {
        match self.peek() == Some(byte) {
            true => {
                self.at += 1;
                Ok(())
            }
            false => Err(self.syntax(expected)),
        }
    }

    fn count(&mut self) -> Result<(), JsonError> {
        self.values += 1;
        match self.values > self.max_values {
            true => Err(JsonError::TooMany),
            false => Ok(()),
        }
    }

    fn value(&mut self, depth: usize, visitor: &mut impl JsonVisitor) -> Result<(), JsonError> {
        self.count()?;
        match self.peek() {
            Some(b'{') => self.object(depth + 1, visitor),
            Some(b'[') => self.array(depth + 1, visitor),
            Some(b'"') => {
                let (value, word) = self.string()?;
                visitor.string(&self.path(), &value, word);
                Ok(())
            }
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(self.syntax("a value")),
        }
    }

    fn literal(&mut self, word: &'static [u8]) -> Result<(), JsonError> {
        match self.bytes[self.at..].starts_with(word) {
            true => {
                self.at += word.len();
                Ok(())
            }
            false => Err(self.syntax("true, false or null")),
        }
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    fn number(&mut self) -> Result<(), JsonError> {
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek() {
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.syntax("a digit")),
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.syntax("a digit after the decimal point"));
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.syntax("a digit in the exponent"));
            }
            self.digits();
        }
        Ok(())
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.at += 1;
        }
    }

    fn enter(&self, depth: usize) -> Result<(), JsonError> {
        match depth > self.max_depth {
            true => Err(JsonError::TooDeep),
            false => Ok(()),
        }
    }

    fn array(&mut self, depth: usize, visitor: &mut impl JsonVisitor) -> Result<(), JsonError> {
        self.enter(depth)?;
        self.at += 1; // [
        self.skip_whitespace();
        if self.peek() == Some(b']') {
            self.at += 1;
            return Ok(());
        }
        let mut index = 0usize;
        loop {
            self.steps.push(Step::Index(index));
            self.value(depth, visitor)?;
            self.steps.pop();
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => {
                    self.at += 1;
                    self.skip_whitespace();
                    index += 1;
                }
                Some(b']') => {
                    self.at += 1;
                    return Ok(());
                }
                _ => return Err(self.syntax("`,` or `]`")),
            }
        }
    }

    fn object(&mut self, depth: usize, visitor: &mut impl JsonVisitor) -> Result<(), JsonError> {
        self.enter(depth)?;
        self.at += 1; // {
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Ok(());
        }
        let base = self.keys.len();
        // Past 32 keys, a set finds one named twice (a linear search would be quadratic).
        let mut many: Option<std::collections::HashSet<Cow<'b, str>>> = None;
        loop {
            if self.peek() != Some(b'"') {
                return Err(self.syntax("a key"));
            }
            let (key, word) = self.string()?;
            let again = match &mut many {
                Some(set) => !set.insert(key.clone()),
                // Length and last byte first: most keys differ there, without a call.
                None => self.keys[base..]
                    .iter()
                    .any(|k| k.len() == key.len() && k.as_bytes().last() == key.as_bytes().last() && *k == key),
            };
            if again {
                return Err(JsonError::DuplicateKey);
            }
            self.skip_whitespace();
            self.expect(b':', "`:`")?;
            self.skip_whitespace();
            self.keys.push(key);
            let index = self.keys.len() - 1;
            if many.is_none() && index - base >= 32 {
                many = Some(self.keys[base..].iter().cloned().collect());
            }
            self.steps.push(Step::Key(index));
            visitor.key(&self.path(), &self.keys[index], word);
            self.value(depth, visitor)?;
            self.steps.pop();
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => {
                    self.at += 1;
                    self.skip_whitespace();
                }
                Some(b'}') => {
                    self.at += 1;
                    self.keys.truncate(base);
                    return Ok(());
                }
                _ => return Err(self.syntax("`,` or `}`")),
            }
        }
    }

    /// A string (the reader is at its opening quote), and whether it is one word:
    /// borrowed from the body when it has no escapes, unescaped into a new one otherwise.
    fn string(&mut self) -> Result<(Cow<'b, str>, bool), JsonError> {
        self.at += 1; // "
        let start = self.at;
        let (end, word) = plain_run(self.bytes, start);
        self.at = end;
        if self.peek().is_some_and(|b| b < 0x20) {
            return Err(self.syntax("no control character in a string"));
        }
        let plain = &self.text[start..end];
        match self.peek() {
            Some(b'"') => {
                self.at += 1;
                Ok((Cow::Borrowed(plain), word))
            }
            Some(_) => {
                let mut owned = String::with_capacity(plain.len() + 16);
                owned.push_str(plain);
                self.escaped(&mut owned)?;
                Ok((Cow::Owned(owned), false))
            }
            None => Err(self.syntax("the end of the string")),
        }
    }

    /// The rest of a string with escapes, into `out`, through its closing quote.
    fn escaped(&mut self, out: &mut String) -> Result<(), JsonError> {
        loop {
            let start = self.at;
            while let Some(&b) = self.bytes.get(self.at) {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.at += 1;
            }
            out.push_str(&self.text[start..self.at]);
            match self.peek() {
                Some(b'"') => {
                    self.at += 1;
                    return Ok(());
                }
                Some(b'\\') => {
                    self.at += 1;
                    let c = match self.peek() {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => {
                            self.at += 1;
                            let c = self.unicode_escape()?;
                            out.push(c);
                            continue;
                        }
                        _ => return Err(self.syntax("an escape")),
                    };
                    self.at += 1;
                    out.push(c);
                }
                Some(_) => return Err(self.syntax("no control character in a string")),
                None => return Err(self.syntax("the end of the string")),
            }
        }
    }

    /// The four hex digits of a `\u` escape (after `\u`), and a low surrogate's when the
    /// first is a high one; a lone surrogate is refused (as serde_json refuses it).
    fn unicode_escape(&mut self) -> Result<char, JsonError> {
        let unit = self.hex4()?;
        match unit {
            0xD800..=0xDBFF => {
                if !self.bytes[self.at..].starts_with(b"\\u") {
                    return Err(self.syntax("a low surrogate after a high one"));
                }
                self.at += 2;
                let low = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&low) {
                    return Err(self.syntax("a low surrogate after a high one"));
                }
                let code = 0x10000 + ((u32::from(unit) - 0xD800) << 10) + (u32::from(low) - 0xDC00);
                char::from_u32(code).ok_or_else(|| self.syntax("a character"))
            }
            0xDC00..=0xDFFF => Err(self.syntax("a high surrogate before a low one")),
            _ => char::from_u32(u32::from(unit)).ok_or_else(|| self.syntax("a character")),
        }
    }

    fn hex4(&mut self) -> Result<u16, JsonError> {
        let digits = self
            .bytes
            .get(self.at..self.at + 4)
            .ok_or_else(|| self.syntax("four hex digits"))?;
        let mut unit = 0u16;
        for &d in digits {
            let v = (d as char).to_digit(16).ok_or_else(|| self.syntax("four hex digits"))?;
            unit = unit * 16 + v as u16;
        }
        self.at += 4;
        Ok(unit)
    }
}

/// Where the plain run of a string that starts at `start` ends (at the first quote,
/// backslash or control character; the body's end when there is none), and whether the
/// run is one word of `[A-Za-z0-9_]`: sixteen bytes at a time with SSE2 compares on
/// x86-64 ([`sse2_run`]), then eight at a time in a `u64` (SWAR, "Bit Twiddling Hacks"'
/// `haszero`, `hasless` and `hasbetween`; the lowest byte each finds is exact, and the
/// word test is exact per byte), then byte by byte.
/// Measured with `crates/pinpoint-policy/examples/json_read.rs` under callgrind on
/// bench/instructions.sh's 1 KiB JSON POST, the whole read: SWAR alone 22,600
/// instructions; 24,750 finding the end first and classifying the run after; 27,900 with
/// memchr for the end and a byte loop for the word; 23,100 with a sixteen-lane loop the
/// compiler vectorizes (it builds the masks without `pmovmskb`); 18,450 with the SSE2
/// sixteen-byte steps first.
fn plain_run(bytes: &[u8], start: usize) -> (usize, bool) {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    const LOW7: u64 = 0x7F7F_7F7F_7F7F_7F7F;
    // High bit set in each byte b with m < b < n (exact per byte; m, n at most 128).
    let between = |x: u64, m: u64, n: u64| {
        (ONES * (127 + n)).wrapping_sub(x & LOW7) & !x & ((x & LOW7) + ONES * (127 - m)) & HIGH
    };
    // High bit set in the lowest zero byte (and maybe in bytes above it).
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `sse2_run` needs SSE2, which is part of x86-64 (in every x86-64 CPU, and
    // enabled in every x86-64 build); Rust asks for `unsafe` all the same, as it does for
    // any function with `#[target_feature]` called from one without. Its body is safe code.
    #[allow(unsafe_code)]
    let (mut at, mut word) = match unsafe { sse2_run(bytes, start) } {
        Run::Ended(end, word) => return (end, word),
        Run::Continues(at, word) => (at, word),
    };
    #[cfg(not(target_arch = "x86_64"))]
    let (mut at, mut word) = (start, true);
    while let Some(chunk) = bytes.get(at..).and_then(|rest| rest.first_chunk::<8>()) {
        let x = u64::from_le_bytes(*chunk);
        let ends = zero(x ^ (ONES * u64::from(b'"')))
            | zero(x ^ (ONES * u64::from(b'\\')))
            | (x.wrapping_sub(ONES * 0x20) & !x & HIGH);
        let letters = between(x | (ONES * 0x20), 0x60, 0x7B);
        let not_word = !(letters | between(x, 0x2F, 0x3A) | between(x, 0x5E, 0x60)) & HIGH;
        if ends != 0 {
            let len = (ends.trailing_zeros() / 8) as usize;
            // The bytes before the end: the low `len` bytes.
            let before = (1u64 << (8 * len)).wrapping_sub(1);
            word &= not_word & before == 0 && at + len > start;
            return (at + len, word);
        }
        word &= not_word == 0;
        at += 8;
    }
    for (i, &b) in bytes[at..].iter().enumerate() {
        if b == b'"' || b == b'\\' || b < 0x20 {
            return (at + i, word && at + i > start);
        }
        word &= b.is_ascii_alphanumeric() || b == b'_';
    }
    (bytes.len(), word && bytes.len() > start)
}

/// How far sixteen-byte steps got: the run's end and whether it is a word, or where fewer
/// than sixteen bytes are left (and whether the run so far is all word bytes).
#[cfg(target_arch = "x86_64")]
enum Run {
    Ended(usize, bool),
    Continues(usize, bool),
}

/// [`plain_run`]'s sixteen-byte steps: one compare per class of byte (`"`, `\`, control,
/// letter, digit, `_`) over sixteen lanes, and `pmovmskb` for the lanes that matched.
/// SSE2 is part of x86-64, so these intrinsics need no runtime check.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
fn sse2_run(bytes: &[u8], start: usize) -> Run {
    use std::arch::x86_64::{
        __m128i, _mm_and_si128, _mm_cmpeq_epi8, _mm_max_epu8, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8, _mm_set_epi64x,
    };
    let splat = |b: u8| _mm_set1_epi8(b as i8);
    // Lanes of `v` from `low` to `high` (unsigned).
    let within = |v: __m128i, low: u8, high: u8| {
        _mm_and_si128(
            _mm_cmpeq_epi8(_mm_max_epu8(v, splat(low)), v),
            _mm_cmpeq_epi8(_mm_min_epu8(v, splat(high)), v),
        )
    };
    let mut at = start;
    let mut word = true;
    while let Some(chunk) = bytes.get(at..).and_then(|rest| rest.first_chunk::<16>()) {
        let (low, high) = chunk.split_at(8);
        let half = |h: &[u8]| h.first_chunk::<8>().map_or(0, |h| i64::from_le_bytes(*h));
        let x = _mm_set_epi64x(half(high), half(low));
        let ends = _mm_or_si128(
            _mm_or_si128(_mm_cmpeq_epi8(x, splat(b'"')), _mm_cmpeq_epi8(x, splat(b'\\'))),
            _mm_cmpeq_epi8(_mm_min_epu8(x, splat(0x1F)), x),
        );
        let words = _mm_or_si128(
            _mm_or_si128(within(_mm_or_si128(x, splat(0x20)), b'a', b'z'), within(x, b'0', b'9')),
            _mm_cmpeq_epi8(x, splat(b'_')),
        );
        let (ends, words) = (_mm_movemask_epi8(ends) as u32, _mm_movemask_epi8(words) as u32);
        if ends != 0 {
            let len = ends.trailing_zeros();
            let before = (1u32 << len) - 1;
            return Run::Ended(
                at + len as usize,
                word && words & before == before && at + len as usize > start,
            );
        }
        word &= words == 0xFFFF;
        at += 16;
    }
    Run::Continues(at, word)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Default)]
    struct Collect(Vec<(String, String)>);
    impl JsonVisitor for Collect {
        fn key(&mut self, at: &JsonPath<'_, '_>, key: &str, word: bool) {
            assert!(!word || is_word(key), "{key}");
            self.0.push((format!("key {}", at.pointer()), key.to_owned()));
        }
        fn string(&mut self, at: &JsonPath<'_, '_>, value: &str, word: bool) {
            assert!(!word || is_word(value), "{value}");
            self.0.push((format!("str {}", at.pointer()), value.to_owned()));
        }
    }

    /// Whether a string is one word (the reader may call a word with escapes not one:
    /// it does not look again; it never calls anything else one).
    fn is_word(text: &str) -> bool {
        !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    }

    /// What serde_json reads: the same keys and strings with the same pointers.
    fn serde_view(value: &serde_json::Value, pointer: &mut String, out: &mut Vec<(String, String)>) {
        match value {
            serde_json::Value::String(s) => out.push((format!("str {pointer}"), s.clone())),
            serde_json::Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let len = pointer.len();
                    pointer.push_str(&format!("/{i}"));
                    serde_view(item, pointer, out);
                    pointer.truncate(len);
                }
            }
            serde_json::Value::Object(fields) => {
                for (key, item) in fields {
                    let len = pointer.len();
                    pointer.push('/');
                    pointer.push_str(&key.replace('~', "~0").replace('/', "~1"));
                    out.push((format!("key {pointer}"), key.clone()));
                    serde_view(item, pointer, out);
                    pointer.truncate(len);
                }
            }
            _ => {}
        }
    }

    fn agrees(text: &[u8]) {
        let mut ours = Collect::default();
        let read = read(text, 100, 1_000_000, &mut ours);
        let theirs = serde_json::from_slice::<serde_json::Value>(text);
        match (&read, &theirs) {
            (Ok(()), Ok(value)) => {
                let mut view = Vec::new();
                serde_view(value, &mut String::new(), &mut view);
                let (mut a, mut b) = (ours.0.clone(), view);
                a.sort();
                b.sort();
                assert_eq!(a, b, "{}", String::from_utf8_lossy(text));
            }
            (Err(JsonError::DuplicateKey), Ok(_)) => {}
            (Err(JsonError::Syntax { .. }), Err(_)) => {}
            // serde_json also refuses numbers beyond f64; the WAF has no reason to.
            (Ok(()), Err(e)) if e.to_string().contains("number out of range") => {}
            _ => panic!(
                "{:?} vs {:?} on {:?}",
                read,
                theirs.map(|_| ()),
                String::from_utf8_lossy(text)
            ),
        }
    }

    #[test]
    fn reads_what_serde_json_reads() {
        for text in [
            r#"{"a":[1,-2.5e+3,true,false,null,"x\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00"],"b~/c":{"":"v"}}"#,
            r#"  [ ]  "#,
            r#""just a string""#,
            "0",
            "-0.0E-1",
            r#"{"a":1,}"#,
            r#"[1,]"#,
            "01",
            "1.",
            "-",
            r#"{"a" 1}"#,
            r#""\ud800""#,
            r#""\udc00x""#,
            r#""\u12""#,
            "\"tab\tinside\"",
            "[1] x",
            "nul",
            "\"\u{0}\"",
            r#"{"k":"v","k":"w"}"#,
            "\"caf\u{e9}\"",
        ] {
            agrees(text.as_bytes());
        }
        agrees(b"\"\xff\"");
        agrees(b"{\"\xc3\xa9\":1}");
    }

    #[test]
    fn plain_runs_end_and_are_classified_as_byte_by_byte() {
        let slow = |bytes: &[u8], start: usize| {
            let end = bytes[start..]
                .iter()
                .position(|b| *b == b'"' || *b == b'\\' || *b < 0x20)
                .map_or(bytes.len(), |i| start + i);
            let run = &bytes[start..end];
            (
                end,
                !run.is_empty() && run.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_'),
            )
        };
        let mut samples: Vec<Vec<u8>> = vec![Vec::new()];
        for b in 0..=255u8 {
            samples.push(vec![b]);
            samples.push([b"abcdefgh".as_slice(), &[b], b"ijklmnop"].concat());
            samples.push([b"Az09_zZa", &[b; 8][..]].concat());
            samples.push([&[b; 3][..], b"\"xyz", &[b; 9][..]].concat());
            // Past sixteen- and eight-byte steps, at every place.
            for at in 0..40 {
                let mut long = vec![b'a'; 40];
                long[at] = b;
                samples.push(long);
            }
            for end in [b'"', b'\\', b'\n', 0] {
                samples.push([b"abc".as_slice(), &[b], &[end], b"_0123456789"].concat());
                samples.push([b"\xc3\xa9_word__".as_slice(), &[b], &[end, b'a']].concat());
            }
        }
        for bytes in samples {
            for start in 0..=bytes.len() {
                assert_eq!(plain_run(&bytes, start), slow(&bytes, start), "{bytes:?} from {start}");
            }
        }
    }

    #[test]
    fn bounds_depth_values_and_duplicates() {
        let mut c = Collect::default();
        assert_eq!(read(b"[[[1]]]", 2, 100, &mut c), Err(JsonError::TooDeep));
        assert_eq!(read(b"[[[1]]]", 3, 100, &mut c), Ok(()));
        assert_eq!(read(b"[1,2,3]", 10, 3, &mut c), Err(JsonError::TooMany));
        let many: String = (0..40).map(|i| format!("\"k{i}\":1,")).collect::<String>() + "\"k39\":2";
        assert_eq!(
            read(format!("{{{many}}}").as_bytes(), 10, 1000, &mut c),
            Err(JsonError::DuplicateKey)
        );
        assert_eq!(read(br#"{"a":{"x":1},"b":{"x":1}}"#, 10, 100, &mut c), Ok(()));
        // The same key spelled with an escape is the same key.
        assert_eq!(
            read(br#"{"q":1,"\u0071":2}"#, 10, 100, &mut c),
            Err(JsonError::DuplicateKey)
        );
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(serde_json::Value::from),
            (-1e6f64..1e6).prop_map(serde_json::Value::from),
            "\\PC{0,12}".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
                prop::collection::btree_map("\\PC{0,6}", inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn generated_documents_and_their_mutations_read_as_serde_json_reads_them(
            value in json_value(),
            cut in 0usize..64,
            flip in 0usize..64,
            byte in any::<u8>(),
        ) {
            let text = serde_json::to_vec(&value).unwrap();
            agrees(&text);
            let pretty = serde_json::to_vec_pretty(&value).unwrap();
            agrees(&pretty);
            // Damaged copies: cut short, one byte changed.
            agrees(&text[..text.len().saturating_sub(cut % (text.len() + 1))]);
            let mut changed = text.clone();
            let i = flip % changed.len();
            changed[i] = byte;
            agrees(&changed);
        }
    }
}
