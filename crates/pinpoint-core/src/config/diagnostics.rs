//! Owns how config mistakes are found and reported: the parsed document whose items know
//! their place in the file, the list of errors a parse gathers (every mistake in a file,
//! not the first), and turning byte offsets into `file:line:column`.

use std::ops::Range;

use serde::de::{DeserializeOwned, IntoDeserializer};
use toml_edit::Item;

/// A refused config value: where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}:{line}:{column}: {message}")]
pub struct ConfigError {
    /// The file (or `<built-in demo>`).
    pub origin: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    pub message: String,
}

/// Every mistake found in one config file, in the order they appear in it. Displayed one
/// per line, each as `file:line:column: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    errors: Vec<ConfigError>,
}

impl ConfigErrors {
    /// The mistakes, first in the file first. Never empty.
    pub fn errors(&self) -> &[ConfigError] {
        &self.errors
    }

    /// The mistake that comes first in the file.
    pub fn first(&self) -> &ConfigError {
        // `Diagnostics::finish` builds a `ConfigErrors` only from a non-empty list.
        &self.errors[0]
    }
}

impl ConfigErrors {
    /// A file refused as a whole at byte `offset` of `source` (text that is not UTF-8, say).
    pub fn whole_file(source: &str, origin: &str, offset: usize, message: &str) -> ConfigErrors {
        ConfigErrors {
            errors: vec![locate(source, origin, offset, one_line(message))],
        }
    }
}

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, error) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Gathers the errors of one parse. Section readers report into it and go on, so one
/// parse reports every mistake.
pub(crate) struct Diagnostics<'s> {
    source: &'s str,
    origin: &'s str,
    errors: Vec<(usize, ConfigError)>,
}

impl<'s> Diagnostics<'s> {
    pub fn new(source: &'s str, origin: &'s str) -> Self {
        Diagnostics {
            source,
            origin,
            errors: Vec::new(),
        }
    }

    /// Records a mistake at `span` (the file's start when the value has no place, such as
    /// a missing section).
    pub fn error(&mut self, span: Option<Range<usize>>, message: impl Into<String>) {
        let offset = span.map_or(0, |s| s.start);
        let error = locate(self.source, self.origin, offset, one_line(&message.into()));
        self.errors.push((offset, error));
    }

    /// Reads `item` as a `T`, recording every value that cannot be read, each at its place:
    /// after a mistake the value at fault is set aside (a field, or one entry of a list)
    /// and the rest read again, so one mistake does not hide the next. Returns what could
    /// be read when only set-aside values were wrong (its checks still run, and find their
    /// own mistakes), or `None` when the item could not be read at all.
    pub fn read<T: DeserializeOwned>(&mut self, item: &Item) -> Option<T> {
        let mut current = item.clone();
        let mut last_error = None;
        // Each round sets one value aside; a table has far fewer than this.
        for _ in 0..256 {
            let e = match deserialize::<T>(&current) {
                Ok(value) => return Some(value),
                Err(e) => e,
            };
            let span = e.span().or_else(|| current.span());
            let message = e.message().trim().to_owned();
            if last_error.as_ref() == Some(&(span.clone(), message.clone())) {
                return None;
            }
            self.error(span.clone(), message.clone());
            last_error = Some((span.clone(), message));
            if !span.is_some_and(|at| set_aside(&mut current, at.start)) {
                return None;
            }
        }
        None
    }

    /// Reads a section that may be left out: its defaults when absent.
    pub fn read_or_default<T: DeserializeOwned + Default>(&mut self, item: &Item) -> Option<T> {
        if item.is_none() {
            Some(T::default())
        } else {
            self.read(item)
        }
    }

    /// How many mistakes were recorded so far (a reader compares before and after a part).
    pub fn error_count(&self) -> usize {
        self.errors.len()
    }

    /// Reads the `mode` of a section whose only other setting is its list `list_key` (whose
    /// entries the section reads one by one, so one bad entry does not hide the others).
    pub fn read_mode(&mut self, item: &Item, list_key: &str) -> crate::verdict::Mode {
        #[derive(serde::Deserialize, Default)]
        #[serde(deny_unknown_fields)]
        struct Head {
            #[serde(default)]
            mode: crate::verdict::Mode,
        }
        let mut head = item.clone();
        if let Some(table) = head.as_table_like_mut() {
            table.remove(list_key);
        }
        self.read_or_default::<Head>(&head).unwrap_or_default().mode
    }

    /// `Ok(value)` if nothing was wrong, else every error in file order.
    pub fn finish<T>(mut self, value: T) -> Result<T, ConfigErrors> {
        if self.errors.is_empty() {
            return Ok(value);
        }
        self.errors.sort_by_key(|(offset, _)| *offset);
        self.errors.dedup();
        Err(ConfigErrors {
            errors: self.errors.into_iter().map(|(_, e)| e).collect(),
        })
    }

    /// A refusal that ends the parse (the text is not TOML at all).
    pub fn fatal(source: &str, origin: &str, span: Option<Range<usize>>, message: &str) -> ConfigErrors {
        ConfigErrors::whole_file(source, origin, span.map_or(0, |s| s.start), message)
    }
}

/// Reads one part of the document as a `T`; errors keep the place of the value at fault.
fn deserialize<T: DeserializeOwned>(item: &Item) -> Result<T, toml_edit::de::Error> {
    match item {
        Item::Value(value) => T::deserialize(value.clone().into_deserializer()),
        Item::Table(table) => T::deserialize(toml_edit::DocumentMut::from(table.clone()).into_deserializer()),
        Item::ArrayOfTables(tables) => {
            T::deserialize(toml_edit::Value::Array(tables.clone().into_array()).into_deserializer())
        }
        Item::None => T::deserialize(toml_edit::DocumentMut::new().into_deserializer()),
    }
}

/// Removes from `item` (a table) the field whose key or value holds byte `at`, or, when
/// that value is a list, the one entry that holds it. False when nothing there holds it
/// (a missing field, a mistake in the table as a whole).
fn set_aside(item: &mut Item, at: usize) -> bool {
    let holds = |span: Option<std::ops::Range<usize>>| span.is_some_and(|s| s.contains(&at) || s.start == at);
    let Some(table) = item.as_table_like_mut() else {
        return false;
    };
    let key = table
        .iter()
        .find(|(key, value)| holds(value.span()) || holds(table.key(key).and_then(|k| k.span())))
        .map(|(key, _)| key.to_owned());
    let Some(key) = key else {
        return false;
    };
    if let Some(list) = table.get_mut(&key).and_then(|v| v.as_array_mut()) {
        if let Some(index) = (0..list.len()).find(|i| holds(list.get(*i).and_then(|v| v.span()))) {
            list.remove(index);
            return true;
        }
    }
    table.remove(&key);
    true
}

/// The place of the first of `items` that has one: the value at fault, else its table.
pub(crate) fn place(items: &[Option<&Item>]) -> Option<Range<usize>> {
    items.iter().flatten().find_map(|item| item.span())
}

/// The `index`th entry of an array (of tables or inline), for error places.
pub(crate) fn entry(item: &Item, index: usize) -> Option<&Item> {
    item.get(index)
}

/// A message on one line: parsers' multi-line messages joined with `; `.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

fn locate(source: &str, origin: &str, offset: usize, message: String) -> ConfigError {
    let offset = offset.min(source.len());
    let before = source.get(..offset).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before[line_start..].chars().count() + 1;
    ConfigError {
        origin: origin.to_owned(),
        line,
        column,
        message,
    }
}
