//! Where each key of the file is, so that every problem names its key and line, and so that one bad value does
//! not hide the next: serde stops at the first error, so the key at fault is blanked out of a copy of the text
//! (spaces, keeping every offset and line) and the rest is read again.
//!
//! Keys are named the way issues name them: `listener[0].header_read_timeout`, `upstream[1].pool.max_idle`,
//! `upstream[0].endpoints[2].weight`.

use std::ops::Range;
use toml_edit::{ImDocument, InlineTable, Item, Table, Value};

/// One `key = value` of the file.
#[derive(Debug, Clone)]
pub struct KeyEntry {
    /// The key as issues name it.
    pub path: String,
    /// From the key's first byte to the value's last.
    pub span: Range<usize>,
    /// Inside an inline table (`{ … }`), whose separating comma goes with it when it is blanked.
    pub inline: bool,
}

/// Every key of a file, and every `[table]` header.
#[derive(Debug, Default)]
pub struct KeyIndex {
    keys: Vec<KeyEntry>,
    tables: Vec<(String, Range<usize>)>,
}

impl KeyIndex {
    /// Indexes text that is valid TOML; `None` for a syntax error (serde reports those itself).
    pub fn parse(text: &str) -> Option<KeyIndex> {
        let doc = ImDocument::parse(text).ok()?;
        let mut index = KeyIndex::default();
        index.table(doc.as_table(), "");
        Some(index)
    }

    /// The innermost key whose `key = value` covers `offset`.
    pub fn key_at(&self, offset: usize) -> Option<&KeyEntry> {
        self.keys.iter().filter(|k| k.span.contains(&offset)).min_by_key(|k| k.span.len())
    }

    /// The name of what is at `offset`: its key, else the table whose header it is in.
    pub fn name_at(&self, offset: usize) -> Option<String> {
        if let Some(key) = self.key_at(offset) {
            return Some(key.path.clone());
        }
        self.tables.iter().filter(|(_, span)| span.contains(&offset)).map(|(path, _)| path.clone()).next()
    }

    /// Where `path` (a key or a table) starts.
    pub fn offset_of(&self, path: &str) -> Option<usize> {
        self.keys
            .iter()
            .find(|k| k.path == path)
            .map(|k| k.span.start)
            .or_else(|| self.tables.iter().find(|(p, _)| p == path).map(|(_, span)| span.start))
    }

    fn table(&mut self, table: &Table, prefix: &str) {
        for (name, _) in table.iter() {
            let Some((key, item)) = table.get_key_value(name) else { continue };
            let path = join(prefix, name);
            match item {
                Item::Value(value) => self.value(key.span(), value, &path, false),
                Item::Table(inner) => {
                    if let Some(span) = inner.span() {
                        self.tables.push((path.clone(), span));
                    }
                    self.table(inner, &path);
                }
                Item::ArrayOfTables(array) => {
                    for (i, inner) in array.iter().enumerate() {
                        let path = format!("{path}[{i}]");
                        if let Some(span) = inner.span() {
                            self.tables.push((path.clone(), span));
                        }
                        self.table(inner, &path);
                    }
                }
                Item::None => {}
            }
        }
    }

    fn value(&mut self, key_span: Option<Range<usize>>, value: &Value, path: &str, inline: bool) {
        if let (Some(key), Some(value)) = (key_span, value.span()) {
            self.keys.push(KeyEntry { path: path.to_string(), span: key.start..value.end, inline });
        }
        match value {
            Value::InlineTable(table) => self.inline_table(table, path),
            Value::Array(array) => {
                for (i, element) in array.iter().enumerate() {
                    let path = format!("{path}[{i}]");
                    if let Value::InlineTable(table) = element {
                        self.inline_table(table, &path);
                    } else if let Some(span) = element.span() {
                        // An element is named, but blanking it would leave a stray comma: the whole array goes.
                        self.tables.push((path, span));
                    }
                }
            }
            _ => {}
        }
    }

    fn inline_table(&mut self, table: &InlineTable, prefix: &str) {
        for (name, _) in table.iter() {
            if let Some((key, Item::Value(value))) = table.get_key_value(name) {
                self.value(key.span(), value, &join(prefix, name), true);
            }
        }
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Replaces `entry` in `text` with spaces (and, inside an inline table, the comma that separates it), so the
/// text still parses, and every other key keeps its offset and line.
pub fn blank(text: &mut String, entry: &KeyEntry) {
    let mut range = entry.span.clone();
    if entry.inline {
        let bytes = text.as_bytes();
        let after = bytes[range.end..].iter().position(|b| !b.is_ascii_whitespace()).map(|i| range.end + i);
        match after {
            Some(i) if bytes[i] == b',' => range.end = i + 1,
            _ => {
                let before = bytes[..range.start].iter().rposition(|b| !b.is_ascii_whitespace());
                if let Some(i) = before.filter(|i| bytes[*i] == b',') {
                    range.start = i;
                }
            }
        }
    }
    let Some(slice) = text.get(range.clone()) else { return };
    let spaces: String = slice.chars().map(|c| if c == '\n' { '\n' } else { ' ' }).collect();
    text.replace_range(range, &spaces);
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "[admin]\nlisten = \"x\"\n\n[[listener]]\nname = \"a\"\n\n[[listener]]\nname = \"b\"\ntls = { cert = \"c.pem\", key = \"k.pem\" }\n\n[[upstream]]\nendpoints = [{ address = \"1\", weight = 0 }]\n";

    #[test]
    fn names_keys_like_issues_do() -> Result<(), String> {
        let index = KeyIndex::parse(TEXT).ok_or("parses")?;
        let at = |needle: &str| TEXT.find(needle).unwrap_or(0);
        assert_eq!(index.name_at(at("\"b\"")).as_deref(), Some("listener[1].name"));
        assert_eq!(index.name_at(at("\"k.pem\"")).as_deref(), Some("listener[1].tls.key"));
        assert_eq!(index.name_at(at("weight")).as_deref(), Some("upstream[0].endpoints[0].weight"));
        assert!(index.offset_of("listener[1].tls.cert").is_some());
        Ok(())
    }

    #[test]
    fn blanking_keeps_lines_and_parses() -> Result<(), String> {
        let index = KeyIndex::parse(TEXT).ok_or("parses")?;
        let key = index.key_at(TEXT.find("\"c.pem\"").unwrap_or(0)).ok_or("found")?.clone();
        let mut text = TEXT.to_string();
        blank(&mut text, &key);
        assert_eq!(text.len(), TEXT.len());
        assert_eq!(text.lines().count(), TEXT.lines().count());
        let again = KeyIndex::parse(&text).ok_or("still parses")?;
        assert!(again.offset_of("listener[1].tls.cert").is_none());
        assert!(again.offset_of("listener[1].tls.key").is_some());
        Ok(())
    }
}
