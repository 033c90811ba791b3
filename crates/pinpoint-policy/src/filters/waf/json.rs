//! The WAF's JSON reader: one strict pass over a body (RFC 8259) that hands every object
//! key and every string value that is not a single word to the caller with its JSON
//! pointer, bounds nesting and the number of values, and refuses a key named twice in one
//! object (parsers keep the first or the last, so the WAF and the upstream could read
//! different values). It builds no tree and copies only strings that hold escapes.
//!
//! It reads in two stages, as simdjson does ("Parsing Gigabytes of JSON per Second",
//! Langdale and Lemire, 2019):
//! - [`Scanner`] classifies the body 64 bytes at a time ([`classify`]: AVX2 or SSE2
//!   compares on x86-64) into bit masks and from them finds, for the whole block at once,
//!   which bytes are inside strings (a prefix XOR of the unescaped quotes) and so where the
//!   *events* are: every `{ } [ ] : ,` outside strings, every unescaped quote, the first
//!   byte of every number or literal, and any control character inside a string (an
//!   error). It hands over a block's events as one bit a byte, and flags each closing
//!   quote whose string holds a byte that is not a word character, so whether a string is
//!   one word needs no second look at its bytes.
//! - [`read`] walks the events with an explicit stack: a state machine that checks the
//!   grammar, counts values, bounds depth, checks keys for duplicates (by a hash of each
//!   key first), and calls the visitor only for keys and strings that are not one word of
//!   `[A-Za-z0-9_]` (no WAF rule matches a single word; see `builtin::Shape`).
//!
//! Written for the WAF rather than using serde_json because the body phase's cost is
//! mostly reading the body. Measured with `examples/json_read.rs` under callgrind, whole
//! reads of 1 KiB bodies, against the recursive-descent reader this replaced (strings
//! scanned sixteen bytes at a time with SSE2): bench/instructions.sh's order (keys, short
//! strings, numbers) 18,450 to 14,230; one long string 4,110 to 3,970; prose 4,390 to
//! 4,670; an array of 250 numbers 31,040 to 31,010 (serde_json, a visitor without a tree,
//! took about 25,000 on the first). A property test checks it accepts and reports what
//! serde_json does.

use std::borrow::Cow;
use std::collections::HashSet;

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

#[cold]
#[inline(never)]
fn syntax(at: usize, expected: &'static str) -> JsonError {
    JsonError::Syntax { at, expected }
}

/// What the reader hands over: each key and each string value that is not one word of
/// `[A-Za-z0-9_]` (a string written with escapes may be handed over even when it decodes
/// to one), with where it is. For a key, `at` names the key's value.
pub trait JsonVisitor {
    fn key(&mut self, at: &JsonPath<'_, '_>, key: &str);
    fn string(&mut self, at: &JsonPath<'_, '_>, value: &str);
}

/// Where a value is, spelled as a JSON pointer only when asked: most values never need
/// their name (building every pointer cost more than reading the values).
pub struct JsonPath<'r, 'b> {
    frames: &'r [Frame],
    keys: &'r Keys<'b>,
}

impl JsonPath<'_, '_> {
    /// The JSON pointer (RFC 6901): `/items/0/note`.
    pub fn pointer(&self) -> String {
        let mut pointer = String::new();
        for frame in self.frames {
            pointer.push('/');
            match frame.object {
                false => pointer.push_str(itoa::Buffer::new().format(frame.index)),
                true => {
                    let key = self.keys.text(frame.key);
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

/// An open array or object, and where in it the reader is: the element's index, or the
/// current member's key (an index into [`Keys`]).
#[derive(Clone, Copy)]
struct Frame {
    object: bool,
    /// This object's keys start here in [`Keys::entries`].
    keys_from: usize,
    /// Past [`MANY_KEYS`] keys, this object checks for duplicates in a set (the last one
    /// of [`Keys::sets`]).
    in_set: bool,
    index: usize,
    key: usize,
}

/// Past this many keys in one object, a set finds one named twice (a linear search
/// would be quadratic).
const MANY_KEYS: usize = 32;

/// The keys of every open object, innermost last, so each object can check its own for
/// one named twice.
struct Keys<'b> {
    text: &'b str,
    entries: Vec<Key>,
    /// The keys that held escapes, decoded ([`Key::decoded`] points here).
    decoded: Vec<String>,
    sets: Vec<HashSet<Box<str>>>,
}

#[derive(Clone, Copy)]
struct Key {
    hash: u64,
    start: usize,
    end: usize,
    /// Index into [`Keys::decoded`], or `usize::MAX` for a key read as written.
    decoded: usize,
}

impl Keys<'_> {
    fn text(&self, index: usize) -> &str {
        let key = &self.entries[index];
        match key.decoded {
            usize::MAX => &self.text[key.start..key.end],
            decoded => &self.decoded[decoded],
        }
    }
}

/// A cheap hash of a key (its length and its first and last eight bytes): most keys of
/// one object differ in it, so the duplicate check compares texts only when hashes meet.
#[inline]
fn key_hash(key: &[u8]) -> u64 {
    let head = match key.first_chunk::<8>() {
        Some(head) => u64::from_le_bytes(*head),
        None => key.iter().rev().fold(0u64, |h, &b| (h << 8) | u64::from(b)),
    };
    let tail = key.last_chunk::<8>().map_or(0, |tail| u64::from_le_bytes(*tail));
    head ^ tail.rotate_left(29) ^ (key.len() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// What the next event may be.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A value (the document's, a member's after its `:`, an element after a `,`).
    Value,
    /// A value or `]` (just after `[`).
    ValueOrEnd,
    /// A key or `}` (just after `{`).
    KeyOrEnd,
    /// A key (after a `,` in an object).
    Key,
    /// The closing quote of a key, or of a string value.
    KeyEnd,
    StringEnd,
    Colon,
    /// `,` or the end of the innermost array or object.
    CommaOrEnd,
    /// Nothing: the document's value is complete.
    Nothing,
}

/// Reads `body` as one JSON value, calling `visitor` for every key and string that is not
/// one word.
pub fn read(body: &[u8], max_depth: usize, max_values: usize, visitor: &mut impl JsonVisitor) -> Result<(), JsonError> {
    read_events(body, max_depth, max_values, visitor)
}

/// [`read`], compiled once here (not in each caller's crate) so its helpers inline.
fn read_events(
    body: &[u8],
    max_depth: usize,
    max_values: usize,
    visitor: &mut dyn JsonVisitor,
) -> Result<(), JsonError> {
    // JSON is UTF-8 throughout: checked once for the whole body, so strings are slices of
    // it (checking each string apart cost 4,000 instructions on a 1 KiB body).
    let text = std::str::from_utf8(body).map_err(|e| syntax(e.valid_up_to(), "UTF-8 text"))?;
    let mut scanner = Scanner::new(body);
    // Room for most bodies' nesting and keys without growing.
    let mut frames: Vec<Frame> = Vec::with_capacity(8);
    let mut keys = Keys {
        text,
        entries: Vec::with_capacity(16),
        decoded: Vec::new(),
        sets: Vec::new(),
    };
    let mut values = 0usize;
    let mut expect = Expect::Value;
    // Where the string being read opened.
    let mut open = 0usize;
    // What follows a complete value: the end of the document, or a `,` or the container's end.
    let after_value = |frames: &[Frame]| match frames.is_empty() {
        true => Expect::Nothing,
        false => Expect::CommaOrEnd,
    };
    let mut block = 0;
    while block < body.len() {
        let (mut events, flagged) = scanner.block(block);
        while events != 0 {
            let mut bit = events.trailing_zeros();
            events &= events - 1;
            let mut at = block + bit as usize;
            let mut byte = body[at];
            // An opening quote: its string's end is the next event, most often in this
            // block; taken at once rather than through the dispatch (about 700
            // instructions a 1 KiB body).
            if byte == b'"'
                && matches!(
                    expect,
                    Expect::Value | Expect::ValueOrEnd | Expect::Key | Expect::KeyOrEnd
                )
            {
                if expect == Expect::Value || expect == Expect::ValueOrEnd {
                    values += 1;
                    if values > max_values {
                        return Err(JsonError::TooMany);
                    }
                    expect = Expect::StringEnd;
                } else {
                    expect = Expect::KeyEnd;
                }
                open = at;
                if events == 0 {
                    continue;
                }
                bit = events.trailing_zeros();
                events &= events - 1;
                at = block + bit as usize;
                byte = body[at];
            }
            match expect {
                Expect::StringEnd | Expect::KeyEnd => {
                    if byte != b'"' {
                        return Err(syntax(at, "no control character in a string"));
                    }
                    let word = (flagged >> bit) & 1 == 0 && at > open + 1;
                    if expect == Expect::StringEnd {
                        if !word {
                            hand_over_string(&frames, &keys, open + 1, at, visitor)?;
                        }
                        expect = after_value(&frames);
                        continue;
                    }
                    match (word, frames.last_mut()) {
                        (true, Some(frame)) if !frame.in_set => {
                            add_word_key(frame, &mut keys, open + 1, at)?;
                        }
                        _ => add_key(&mut frames, &mut keys, open + 1, at, word, visitor)?,
                    }
                    expect = Expect::Colon;
                    // The `:` that follows, most often the next event of this block, taken at
                    // once (340 instructions a 1 KiB body; the same for the `,` after a
                    // value, inlined where values end, cost 650 more).
                    if events != 0 && body[block + events.trailing_zeros() as usize] == b':' {
                        events &= events - 1;
                        expect = Expect::Value;
                    }
                }
                Expect::Nothing => return Err(syntax(at, "the end of the body")),
                Expect::Colon => match byte {
                    b':' => expect = Expect::Value,
                    _ => return Err(syntax(at, "`:`")),
                },
                Expect::CommaOrEnd => {
                    let Some(frame) = frames.last_mut() else {
                        return Err(syntax(at, "the end of the body"));
                    };
                    match (byte, frame.object) {
                        (b',', false) => {
                            frame.index += 1;
                            expect = Expect::Value;
                        }
                        (b',', true) => expect = Expect::Key,
                        (b']', false) | (b'}', true) => {
                            close(&mut frames, &mut keys);
                            expect = after_value(&frames);
                        }
                        (_, false) => return Err(syntax(at, "`,` or `]`")),
                        (_, true) => return Err(syntax(at, "`,` or `}`")),
                    }
                }
                Expect::KeyOrEnd | Expect::Key => {
                    if byte == b'}' && expect == Expect::KeyOrEnd {
                        close(&mut frames, &mut keys);
                        expect = after_value(&frames);
                        continue;
                    }
                    return Err(syntax(at, "a key"));
                }
                Expect::Value | Expect::ValueOrEnd => {
                    if byte == b']' && expect == Expect::ValueOrEnd {
                        close(&mut frames, &mut keys);
                        expect = after_value(&frames);
                        continue;
                    }
                    values += 1;
                    if values > max_values {
                        return Err(JsonError::TooMany);
                    }
                    match byte {
                        b'{' | b'[' => {
                            if frames.len() >= max_depth {
                                return Err(JsonError::TooDeep);
                            }
                            frames.push(Frame {
                                object: byte == b'{',
                                keys_from: keys.entries.len(),
                                in_set: false,
                                index: 0,
                                key: 0,
                            });
                            expect = match byte {
                                b'{' => Expect::KeyOrEnd,
                                _ => Expect::ValueOrEnd,
                            };
                        }
                        _ => {
                            let end = scalar_end(body, at)?;
                            // A scalar must end where its run of bytes does (`truex`, `1.5.2`).
                            if body.get(end).is_some_and(|&b| !ends_scalar(b)) {
                                return Err(syntax(end, expected(after_value(&frames), &frames)));
                            }
                            expect = after_value(&frames);
                        }
                    }
                }
            }
        }
        block += 64;
    }
    match expect {
        Expect::Nothing => Ok(()),
        open => Err(syntax(body.len(), expected(open, &frames))),
    }
}

/// What the reader wanted when it found something else (or the end).
fn expected(expect: Expect, frames: &[Frame]) -> &'static str {
    match expect {
        Expect::Value | Expect::ValueOrEnd => "a value",
        Expect::KeyOrEnd | Expect::Key => "a key",
        Expect::KeyEnd | Expect::StringEnd => "the end of the string",
        Expect::Colon => "`:`",
        Expect::CommaOrEnd => match frames.last().is_some_and(|f| f.object) {
            true => "`,` or `}`",
            false => "`,` or `]`",
        },
        Expect::Nothing => "the end of the body",
    }
}

/// Closes the innermost array or object, dropping its keys.
#[inline]
fn close(frames: &mut Vec<Frame>, keys: &mut Keys<'_>) {
    if let Some(frame) = frames.pop() {
        if frame.object {
            keys.entries.truncate(frame.keys_from);
            if frame.in_set {
                keys.sets.pop();
            }
        }
    }
}

/// [`add_key`] for the common case, in the reader's loop: a key that is one word (no
/// escapes, nothing to hand over) in an object with few keys.
#[inline(always)]
fn add_word_key(frame: &mut Frame, keys: &mut Keys<'_>, start: usize, end: usize) -> Result<(), JsonError> {
    let text = &keys.text.as_bytes()[start..end];
    let hash = key_hash(text);
    let from = frame.keys_from;
    if keys.entries[from..]
        .iter()
        .enumerate()
        .any(|(i, key)| key.hash == hash && keys.text(from + i).as_bytes() == text)
    {
        return Err(JsonError::DuplicateKey);
    }
    keys.entries.push(Key {
        hash,
        start,
        end,
        decoded: usize::MAX,
    });
    frame.key = keys.entries.len() - 1;
    if frame.key - from >= MANY_KEYS {
        let set = (from..keys.entries.len()).map(|i| Box::from(keys.text(i))).collect();
        keys.sets.push(set);
        frame.in_set = true;
    }
    Ok(())
}

/// A string value that is not one word (written at `start..end`), to the visitor. Out of
/// the reader's loop, as [`add_key`] is: with both inlined, the loop's variables no longer
/// fit in registers (15,360 instructions for bench/instructions.sh's body, 14,580 with
/// only [`add_word_key`] inlined; the array of 250 numbers 32,600 and 31,010).
#[inline(never)]
fn hand_over_string(
    frames: &[Frame],
    keys: &Keys<'_>,
    start: usize,
    end: usize,
    visitor: &mut dyn JsonVisitor,
) -> Result<(), JsonError> {
    let value = string_text(keys.text, start, end)?;
    visitor.string(&JsonPath { frames, keys }, &value);
    Ok(())
}

/// Adds a key (written at `start..end`) to the innermost object's, or refuses it when the
/// object already has it; hands it to the visitor when it is not one word.
#[inline(never)]
fn add_key(
    frames: &mut [Frame],
    keys: &mut Keys<'_>,
    start: usize,
    end: usize,
    word: bool,
    visitor: &mut dyn JsonVisitor,
) -> Result<(), JsonError> {
    let decoded = match word {
        true => None,
        false => match string_text(keys.text, start, end)? {
            Cow::Borrowed(_) => None,
            Cow::Owned(decoded) => Some(decoded),
        },
    };
    let Some(frame) = frames.last_mut() else {
        return Err(syntax(start, "a value"));
    };
    let text = decoded.as_deref().unwrap_or(&keys.text[start..end]);
    let hash = key_hash(text.as_bytes());
    let again = match frame.in_set {
        true => keys.sets.last_mut().is_some_and(|set| !set.insert(Box::from(text))),
        false => keys.entries[frame.keys_from..]
            .iter()
            .enumerate()
            .any(|(i, key)| key.hash == hash && keys.text(frame.keys_from + i) == text),
    };
    if again {
        return Err(JsonError::DuplicateKey);
    }
    let decoded = match decoded {
        None => usize::MAX,
        Some(text) => {
            keys.decoded.push(text);
            keys.decoded.len() - 1
        }
    };
    keys.entries.push(Key {
        hash,
        start,
        end,
        decoded,
    });
    let index = keys.entries.len() - 1;
    if !frame.in_set && index - frame.keys_from >= MANY_KEYS {
        let set = (frame.keys_from..keys.entries.len())
            .map(|i| Box::from(keys.text(i)))
            .collect();
        keys.sets.push(set);
        frame.in_set = true;
    }
    frame.key = index;
    if !word {
        visitor.key(&JsonPath { frames, keys }, keys.text(index));
    }
    Ok(())
}

/// A byte that may follow a number or literal: whitespace, a structural character or a
/// quote (which the grammar then refuses where it does not belong).
#[inline]
fn ends_scalar(byte: u8) -> bool {
    matches!(
        byte,
        b' ' | b'\t' | b'\n' | b'\r' | b'{' | b'}' | b'[' | b']' | b':' | b',' | b'"'
    )
}

/// Where the number or literal starting at `at` ends, or why it is neither.
#[inline]
fn scalar_end(bytes: &[u8], at: usize) -> Result<usize, JsonError> {
    let literal = |word: &'static [u8]| match bytes[at..].starts_with(word) {
        true => Ok(at + word.len()),
        false => Err(syntax(at, "true, false or null")),
    };
    match bytes[at] {
        b't' => literal(b"true"),
        b'f' => literal(b"false"),
        b'n' => literal(b"null"),
        b'-' | b'0'..=b'9' => number_end(bytes, at),
        _ => Err(syntax(at, "a value")),
    }
}

/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
fn number_end(bytes: &[u8], mut at: usize) -> Result<usize, JsonError> {
    let peek = |at: usize| bytes.get(at).copied();
    let digits = |mut at: usize| {
        while let Some(b'0'..=b'9') = peek(at) {
            at += 1;
        }
        at
    };
    if peek(at) == Some(b'-') {
        at += 1;
    }
    at = match peek(at) {
        Some(b'0') => at + 1,
        Some(b'1'..=b'9') => digits(at),
        _ => return Err(syntax(at, "a digit")),
    };
    if peek(at) == Some(b'.') {
        at += 1;
        if !matches!(peek(at), Some(b'0'..=b'9')) {
            return Err(syntax(at, "a digit after the decimal point"));
        }
        at = digits(at);
    }
    if let Some(b'e' | b'E') = peek(at) {
        at += 1;
        if let Some(b'+' | b'-') = peek(at) {
            at += 1;
        }
        if !matches!(peek(at), Some(b'0'..=b'9')) {
            return Err(syntax(at, "a digit in the exponent"));
        }
        at = digits(at);
    }
    Ok(at)
}

/// A string's text (written at `start..end`, inside its quotes): borrowed from the body
/// when it has no escapes, unescaped into a new one otherwise.
fn string_text(text: &str, start: usize, end: usize) -> Result<Cow<'_, str>, JsonError> {
    let written = &text[start..end];
    let Some(first) = memchr::memchr(b'\\', written.as_bytes()) else {
        return Ok(Cow::Borrowed(written));
    };
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(written.len());
    out.push_str(&written[..first]);
    let mut at = start + first;
    while at < end {
        let run = memchr::memchr(b'\\', &bytes[at..end]).map_or(end, |i| at + i);
        out.push_str(&text[at..run]);
        if run == end {
            break;
        }
        at = run + 1;
        let c = match bytes.get(at) {
            Some(b'"') => '"',
            Some(b'\\') => '\\',
            Some(b'/') => '/',
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => {
                let (c, next) = unicode_escape(bytes, at + 1, end)?;
                out.push(c);
                at = next;
                continue;
            }
            _ => return Err(syntax(at, "an escape")),
        };
        out.push(c);
        at += 1;
    }
    Ok(Cow::Owned(out))
}

/// The character of a `\u` escape whose four hex digits start at `at` (and of the low
/// surrogate's after it, when the first is a high one), and where the escape ends; a lone
/// surrogate is refused (as serde_json refuses it).
fn unicode_escape(bytes: &[u8], at: usize, end: usize) -> Result<(char, usize), JsonError> {
    let hex4 = |at: usize| -> Result<u32, JsonError> {
        let digits = bytes
            .get(at..at + 4)
            .filter(|_| at + 4 <= end)
            .ok_or_else(|| syntax(at, "four hex digits"))?;
        digits.iter().try_fold(0u32, |unit, &d| {
            let v = pinpoint_core::hex::digit_value(d).ok_or_else(|| syntax(at, "four hex digits"))?;
            Ok(unit * 16 + u32::from(v))
        })
    };
    let unit = hex4(at)?;
    match unit {
        0xD800..=0xDBFF => {
            if !bytes[at + 4..end].starts_with(b"\\u") {
                return Err(syntax(at + 4, "a low surrogate after a high one"));
            }
            let low = hex4(at + 6)?;
            if !(0xDC00..=0xDFFF).contains(&low) {
                return Err(syntax(at + 6, "a low surrogate after a high one"));
            }
            let code = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00);
            let c = char::from_u32(code).ok_or_else(|| syntax(at, "a character"))?;
            Ok((c, at + 10))
        }
        0xDC00..=0xDFFF => Err(syntax(at, "a high surrogate before a low one")),
        _ => Ok((char::from_u32(unit).ok_or_else(|| syntax(at, "a character"))?, at + 4)),
    }
}

/// Finds the events of a body a block at a time ([`Scanner::block`]), carrying what one
/// block leaves open into the next.
struct Scanner<'b> {
    bytes: &'b [u8],
    /// At the last block's end: inside a string (all ones or zero); its last byte an
    /// unescaped backslash; its last byte part of a number or literal (1 or 0); inside a
    /// string that already holds a byte that is not a word character.
    in_string: u64,
    escape: bool,
    scalar: u64,
    not_word: bool,
    avx2: bool,
}

impl<'b> Scanner<'b> {
    fn new(bytes: &'b [u8]) -> Self {
        Scanner {
            bytes,
            in_string: 0,
            escape: false,
            scalar: 0,
            not_word: false,
            avx2: has_avx2(),
        }
    }

    /// The events of the block at `start` (the one after the last asked for), one bit a
    /// byte, and which of them are closing quotes of strings that hold a byte that is not
    /// a word character. Kept out of the reader's loop (inlined, its registers spilled
    /// on every event) and returned in two registers.
    #[inline(never)]
    fn block(&mut self, start: usize) -> (u64, u64) {
        let rest = &self.bytes[start..];
        let masks = match rest.first_chunk::<64>() {
            Some(block) => classify(block, self.avx2),
            None => {
                // The last, short block, padded with spaces (which are no event).
                let mut block = [b' '; 64];
                block[..rest.len()].copy_from_slice(rest);
                classify(&block, self.avx2)
            }
        };
        // A block wholly inside one string (long text): its only events are control
        // characters (about 40 instructions fewer of 175 a block).
        if self.in_string != 0 && masks.quote | masks.backslash == 0 && !self.escape {
            self.not_word |= masks.word != u64::MAX;
            self.scalar = 0;
            return (masks.control, 0);
        }
        let escaped = match masks.backslash {
            0 => std::mem::take(&mut self.escape) as u64,
            backslash => escaped_bytes(backslash, &mut self.escape),
        };
        let quote = masks.quote & !escaped;
        // Inside a string: from an opening quote through the byte before its closing one.
        let in_string = prefix_xor(quote) ^ self.in_string;
        self.in_string = ((in_string as i64) >> 63) as u64;
        // Bytes of numbers and literals: anything outside strings that is not whitespace
        // or structural (what is not valid there fails when it is read).
        let scalar = !(masks.op | masks.whitespace | quote | in_string);
        let scalar_starts = scalar & !((scalar << 1) | self.scalar);
        self.scalar = scalar >> 63;
        let events = (masks.op & !in_string) | quote | (masks.control & in_string) | scalar_starts;
        // A string's content is a run of ones just below its closing quote; adding its
        // bytes that are not word characters to it carries a one into the closing quote
        // exactly when there is one (a string still open carries out of the block).
        let content = in_string & !quote;
        let (sum, out_a) = content.overflowing_add(!masks.word & content);
        let (sum, out_b) = sum.overflowing_add(u64::from(self.not_word));
        self.not_word = out_a | out_b;
        (events, sum & quote & !in_string)
    }
}

/// Each bit set with all the bits below it XORed in: 1 from an opening quote up to (not
/// including) the closing one.
#[inline]
fn prefix_xor(mut bits: u64) -> u64 {
    bits ^= bits << 1;
    bits ^= bits << 2;
    bits ^= bits << 4;
    bits ^= bits << 8;
    bits ^= bits << 16;
    bits ^= bits << 32;
    bits
}

/// The bytes a backslash escapes (the one after each backslash that is not itself
/// escaped); `carry`: the previous block ended in such a backslash (in), this one does
/// (out). Backslashes are rare, so one step per backslash.
fn escaped_bytes(mut backslash: u64, carry: &mut bool) -> u64 {
    let mut escaped = u64::from(std::mem::take(carry));
    backslash &= !escaped;
    while backslash != 0 {
        let at = backslash.trailing_zeros();
        if at == 63 {
            *carry = true;
            break;
        }
        escaped |= 2 << at;
        backslash &= !(3 << at);
    }
    escaped
}

/// A block's bytes by class, one bit per byte (bit i for byte i).
#[derive(Debug, PartialEq, Eq)]
struct Masks {
    quote: u64,
    backslash: u64,
    /// `{ } [ ] : ,`
    op: u64,
    /// Space, tab, line feed, carriage return.
    whitespace: u64,
    /// Below 0x20.
    control: u64,
    /// `[A-Za-z0-9_]`
    word: u64,
}

/// [`Masks`] of a block: 32 bytes at a time with AVX2 where the CPU has it (asked once per
/// body: `avx2`), else sixteen at a time with SSE2 (part of every x86-64 CPU); a byte at a
/// time on other architectures. Measured with `examples/json_read.rs` under callgrind on
/// bench/instructions.sh's 1 KiB body (sixteen blocks): SSE2 about 350 instructions a block
/// (its two-operand forms copy registers, and six classes spill), AVX2 about 100.
#[inline]
fn classify(block: &[u8; 64], avx2: bool) -> Masks {
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    let masks = match avx2 {
        // SAFETY: only when the CPU has AVX2 ([`has_avx2`]).
        true => unsafe { classify_avx2(block) },
        // SAFETY: SSE2 is part of x86-64: every x86-64 CPU has it. Rust asks for `unsafe`
        // all the same for a `#[target_feature]` function called from one without.
        false => unsafe { classify_sse2(block) },
    };
    #[cfg(not(target_arch = "x86_64"))]
    let masks = {
        let _ = avx2;
        classify_bytes(block)
    };
    masks
}

/// Whether this CPU has AVX2 (std caches the answer).
fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx2");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// [`classify`] a byte at a time (the reference the SSE2 version is tested against).
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
fn classify_bytes(block: &[u8; 64]) -> Masks {
    let mut masks = Masks {
        quote: 0,
        backslash: 0,
        op: 0,
        whitespace: 0,
        control: 0,
        word: 0,
    };
    for (i, &b) in block.iter().enumerate() {
        let bit = 1u64 << i;
        let set = |mask: &mut u64, yes: bool| *mask |= if yes { bit } else { 0 };
        set(&mut masks.quote, b == b'"');
        set(&mut masks.backslash, b == b'\\');
        set(&mut masks.op, matches!(b, b'{' | b'}' | b'[' | b']' | b':' | b','));
        set(&mut masks.whitespace, matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
        set(&mut masks.control, b < 0x20);
        set(&mut masks.word, b.is_ascii_alphanumeric() || b == b'_');
    }
    masks
}

/// The body of [`classify_sse2`] and [`classify_avx2`], one class test for both widths:
/// per lane group, one compare per class (two for a range) and `movemask` for the lanes
/// that matched.
#[cfg(target_arch = "x86_64")]
macro_rules! classify_lanes {
    ($block:ident, $lanes:literal, $vector:ty, $lane_bits:ty, $load:ident, $set1:ident, $cmpeq:ident,
     $cmpgt:ident, $or:ident, $add:ident, $min:ident, $movemask:ident) => {{
        use std::arch::x86_64::*;
        let splat = |b: u8| $set1(b as i8);
        let eq = |v: $vector, b: u8| $cmpeq(v, splat(b));
        let or = |a: $vector, b: $vector| $or(a, b);
        // Lanes from `low` to `high`: shifted so `low` is i8::MIN, then one signed compare.
        let within = |v: $vector, low: u8, high: u8| {
            $cmpgt(
                splat(0x80u8.wrapping_add(high - low + 1)),
                $add(v, splat(0x80u8.wrapping_sub(low))),
            )
        };
        let mut masks = [0u64; 6];
        for (group, chunk) in $block.chunks_exact($lanes).enumerate() {
            // SAFETY: `chunk` is one vector long; `loadu` reads it without alignment.
            let x = unsafe { $load(chunk.as_ptr().cast::<$vector>()) };
            // `[` and `]` are `{` and `}` without bit 5.
            let folded = or(x, splat(0x20));
            let found = [
                eq(x, b'"'),
                eq(x, b'\\'),
                or(or(eq(folded, b'{'), eq(folded, b'}')), or(eq(x, b':'), eq(x, b','))),
                or(or(eq(x, b' '), eq(x, b'\t')), or(eq(x, b'\n'), eq(x, b'\r'))),
                $cmpeq($min(x, splat(0x1F)), x),
                or(or(within(folded, b'a', b'z'), within(x, b'0', b'9')), eq(x, b'_')),
            ];
            for (mask, lanes) in masks.iter_mut().zip(found) {
                *mask |= u64::from($movemask(lanes) as $lane_bits) << ($lanes * group);
            }
        }
        let [quote, backslash, op, whitespace, control, word] = masks;
        Masks {
            quote,
            backslash,
            op,
            whitespace,
            control,
            word,
        }
    }};
}

/// [`classify`] with SSE2, sixteen lanes at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
#[allow(unsafe_code)]
fn classify_sse2(block: &[u8; 64]) -> Masks {
    classify_lanes!(
        block,
        16,
        __m128i,
        u16,
        _mm_loadu_si128,
        _mm_set1_epi8,
        _mm_cmpeq_epi8,
        _mm_cmpgt_epi8,
        _mm_or_si128,
        _mm_add_epi8,
        _mm_min_epu8,
        _mm_movemask_epi8
    )
}

/// [`classify`] with AVX2: 32 lanes at a time, in three-operand form.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(unsafe_code)]
fn classify_avx2(block: &[u8; 64]) -> Masks {
    classify_lanes!(
        block,
        32,
        __m256i,
        u32,
        _mm256_loadu_si256,
        _mm256_set1_epi8,
        _mm256_cmpeq_epi8,
        _mm256_cmpgt_epi8,
        _mm256_or_si256,
        _mm256_add_epi8,
        _mm256_min_epu8,
        _mm256_movemask_epi8
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Default)]
    struct Collect(Vec<(String, String)>);
    impl JsonVisitor for Collect {
        fn key(&mut self, at: &JsonPath<'_, '_>, key: &str) {
            self.0.push((format!("key {}", at.pointer()), key.to_owned()));
        }
        fn string(&mut self, at: &JsonPath<'_, '_>, value: &str) {
            self.0.push((format!("str {}", at.pointer()), value.to_owned()));
        }
    }

    /// Whether a string is one word (the reader hands over every string but words; it may
    /// hand over a word written with escapes).
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
                // Everything handed over is what serde_json read, and what was not handed
                // over is a word.
                let mut theirs = view;
                for entry in &ours.0 {
                    let at = theirs.iter().position(|e| e == entry);
                    let at = at.unwrap_or_else(|| panic!("{entry:?} in {}", String::from_utf8_lossy(text)));
                    theirs.swap_remove(at);
                }
                for (at, left) in theirs {
                    assert!(
                        is_word(&left),
                        "{at} {left:?} not handed over in {}",
                        String::from_utf8_lossy(text)
                    );
                }
            }
            // A key named twice is refused where it is found, before a later syntax error.
            (Err(JsonError::DuplicateKey), _) => {}
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
    fn blocks_are_classified_as_byte_by_byte() {
        let mut block = [b'a'; 64];
        for b in 0..=255u8 {
            for at in 0..64 {
                block[at] = b;
                assert_eq!(classify(&block, false), classify_bytes(&block), "{b} at {at}");
                if has_avx2() {
                    assert_eq!(classify(&block, true), classify_bytes(&block), "{b} at {at}");
                }
                block[at] = [b'a', b'"', b' ', b'0'][at % 4];
            }
        }
    }

    #[test]
    fn escapes_are_found_across_blocks() {
        // A byte is escaped when an odd run of backslashes ends just before it.
        let naive = |bytes: &[u8]| {
            let mut escaped = vec![false; bytes.len()];
            let mut i = 0;
            while i < bytes.len() {
                if bytes[i] == b'\\' && i + 1 < bytes.len() {
                    escaped[i + 1] = true;
                    i += 2;
                } else {
                    i += 1;
                }
            }
            escaped
        };
        for run in 1..6 {
            for start in 55..70 {
                let mut bytes = vec![b'x'; 192];
                bytes[start..start + run].fill(b'\\');
                let mut carry = false;
                let mut ours = Vec::new();
                for block in bytes.chunks_exact(64) {
                    let backslash = classify_bytes(block.try_into().unwrap()).backslash;
                    let escaped = escaped_bytes(backslash, &mut carry);
                    ours.extend((0..64).map(|i| escaped & (1 << i) != 0));
                }
                assert_eq!(ours, naive(&bytes), "run {run} at {start}");
            }
        }
    }

    #[test]
    fn strings_across_blocks_are_handed_over_unless_words() {
        for len in [0, 1, 15, 16, 63, 64, 65, 130] {
            for offset in [0, 1, 30, 62, 63] {
                for odd in (0..len).step_by(7).map(Some).chain([None]) {
                    let mut value: Vec<u8> = (0..len).map(|i| b"ab_Z09"[i % 6]).collect();
                    if let Some(at) = odd {
                        value[at] = [b' ', b'-', 0xC3, b'\\'][at % 4];
                        if value[at] == 0xC3 {
                            value.insert(at + 1, 0xA9);
                        }
                        if value[at] == b'\\' {
                            value.insert(at + 1, b'n');
                        }
                    }
                    let doc = [
                        b"[".as_slice(),
                        &vec![b' '; offset],
                        b"\"",
                        &value,
                        b"\",{\"",
                        &value,
                        b"\":\"w\"}]",
                    ]
                    .concat();
                    agrees(&doc);
                    let mut seen = Collect::default();
                    assert_eq!(read(&doc, 10, 100, &mut seen), Ok(()));
                    let handed = match (odd, len) {
                        (None, 1..) => 0,
                        _ => 2,
                    };
                    assert_eq!(seen.0.len(), handed, "{}", String::from_utf8_lossy(&doc));
                }
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
        // Past 32 keys (checked in a set): nested and sibling objects keep their own keys.
        let keys: String = (0..40).map(|i| format!("\"k{i}\":{{\"k{i}\":1}},")).collect();
        let doc = format!("[{{{keys}\"z\":1}},{{{keys}\"z\":1}}]");
        assert_eq!(read(doc.as_bytes(), 10, 1000, &mut c), Ok(()));
        let doc = format!("{{{keys}\"k3\\u0030\":1,\"k30\":2}}");
        assert_eq!(read(doc.as_bytes(), 10, 1000, &mut c), Err(JsonError::DuplicateKey));
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

    /// Documents whose strings are long (across blocks) and full of escapes and quotes.
    fn long_strings() -> impl Strategy<Value = serde_json::Value> {
        let text = "[a-z_ \\\\\"/\\n\u{e9}\u{1F600}]{0,150}";
        let leaf = text.prop_map(serde_json::Value::String);
        leaf.prop_recursive(3, 24, 4, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                prop::collection::btree_map(text, inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn long_strings_read_as_serde_json_reads_them(value in long_strings(), flip in 0usize..4096, byte in any::<u8>()) {
            let text = serde_json::to_vec(&value).unwrap();
            agrees(&text);
            let mut changed = text.clone();
            let i = flip % changed.len();
            changed[i] = byte;
            agrees(&changed);
        }

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
