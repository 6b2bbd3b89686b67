//! NUL characters in what crosses the device boundary: one rule, for the
//! agent that sends and the server that stores. And control characters in
//! text logs: one rule, for the agent and the services that write them.
//!
//! The services store reports and inventory in PostgreSQL `jsonb`, which
//! refuses the `\u0000` escape: one NUL in an action's output or in a log
//! line (a log file pre-allocated and cut short by a power loss is full of
//! them) would make the whole report fail. NUL becomes U+FFFD, the mark a
//! lossy UTF-8 conversion leaves for bytes it cannot show, so a reader
//! sees that something was there rather than text silently joined up.

use std::borrow::Cow;
use std::fmt;

use serde_json::{Map, Value};

use crate::device::Report;

/// What a NUL is replaced with.
pub const NUL_REPLACEMENT: &str = "\u{FFFD}";

/// `text` with every NUL replaced; borrowed when there is none.
pub fn replace_nul_str(text: &str) -> Cow<'_, str> {
    if text.contains('\0') {
        Cow::Owned(text.replace('\0', NUL_REPLACEMENT))
    } else {
        Cow::Borrowed(text)
    }
}

/// Replaces every NUL of `text` in place; no allocation when there is none.
pub fn replace_nul_string(text: &mut String) {
    if let Cow::Owned(clean) = replace_nul_str(text) {
        *text = clean;
    }
}

/// Replaces NUL in every string of `value`, object keys included.
pub fn replace_nul(value: &mut Value) {
    match value {
        Value::String(s) => replace_nul_string(s),
        Value::Array(items) => items.iter_mut().for_each(replace_nul),
        Value::Object(map) => {
            if map.keys().any(|k| k.contains('\0')) {
                let old = std::mem::take(map);
                *map = old
                    .into_iter()
                    .map(|(k, v)| (replace_nul_str(&k).into_owned(), v))
                    .collect::<Map<String, Value>>();
            }
            map.values_mut().for_each(replace_nul);
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Whether any string of `value`, object keys included, holds a NUL.
pub fn has_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

impl Report {
    /// Whether the output, error or detail holds a NUL.
    pub fn has_nul(&self) -> bool {
        let text_has_nul = |s: &Option<String>| s.as_deref().is_some_and(|s| s.contains('\0'));
        text_has_nul(&self.output)
            || text_has_nul(&self.error)
            || self.detail.as_ref().is_some_and(has_nul)
    }

    /// Replaces NUL in the output, the error and the detail.
    pub fn replace_nul(&mut self) {
        for s in [&mut self.output, &mut self.error].into_iter().flatten() {
            replace_nul_string(s);
        }
        if let Some(detail) = self.detail.as_mut() {
            replace_nul(detail);
        }
    }
}

/// A [`fmt::Write`] that hands text on to the writer it wraps with every
/// control character escaped. Text logs write their field values (the
/// message included) through it, so that a value that came from outside (a
/// login name, a device's error, a path) can neither start a line of its
/// own, which would forge a log line, nor send a terminal an escape
/// sequence. JSON logs need no such thing: JSON escapes them already.
///
/// Escaped: the C0 controls, DEL and the C1 controls (`\n`, `\r`, `\t`,
/// then `\x1b` and the like, C1 as `\u{9b}`), and the Unicode line and
/// paragraph separators and bidirectional overrides, which some viewers
/// also take as line breaks or use to show a line in another order than it
/// was written.
pub struct EscapeControls<W>(pub W);

/// Whether `c` is written escaped by [`EscapeControls`].
pub fn is_log_control(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

impl<W: fmt::Write> fmt::Write for EscapeControls<W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Clean runs are handed on whole; only the controls are rewritten.
        let mut clean_from = 0;
        for (i, c) in s.char_indices().filter(|&(_, c)| is_log_control(c)) {
            self.0.write_str(&s[clean_from..i])?;
            match c {
                '\n' => self.0.write_str("\\n")?,
                '\r' => self.0.write_str("\\r")?,
                '\t' => self.0.write_str("\\t")?,
                c if c.is_ascii() => write!(self.0, "\\x{:02x}", u32::from(c))?,
                c => write!(self.0, "\\u{{{:x}}}", u32::from(c))?,
            }
            clean_from = i + c.len_utf8();
        }
        self.0.write_str(&s[clean_from..])
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::command::ReportStatus;

    #[test]
    fn nul_is_replaced_in_keys_and_values_and_nothing_else_changes() {
        let mut v = json!({ "a\0b": ["x\0", { "k": "v\0v" }], "n": 1, "t": true });
        assert!(has_nul(&v));
        replace_nul(&mut v);
        assert_eq!(
            v,
            json!({ "a\u{FFFD}b": ["x\u{FFFD}", { "k": "v\u{FFFD}v" }], "n": 1, "t": true })
        );
        assert!(!has_nul(&v));
        let body = serde_json::to_string(&v).unwrap();
        assert!(!body.contains("\\u0000"), "{body}");
    }

    #[test]
    fn clean_text_is_not_copied() {
        assert!(matches!(replace_nul_str("fine"), Cow::Borrowed(_)));
        assert_eq!(replace_nul_str("a\0\0b"), "a\u{FFFD}\u{FFFD}b");
        let mut s = String::from("\0end");
        replace_nul_string(&mut s);
        assert_eq!(s, format!("{NUL_REPLACEMENT}end"));
    }

    #[test]
    fn a_reports_output_error_and_detail_are_cleaned() {
        let mut report = Report {
            status: ReportStatus::Failed,
            output: Some("a\0b".into()),
            error: Some("\0".into()),
            detail: Some(json!({"stderr": "x\0", "k\0": [1, "\0"], "n": 3})),
        };
        assert!(report.has_nul());
        report.replace_nul();
        assert!(!report.has_nul());
        assert_eq!(report.output.as_deref(), Some("a\u{FFFD}b"));
        assert_eq!(report.error.as_deref(), Some("\u{FFFD}"));
        assert_eq!(
            report.detail,
            Some(json!({"stderr": "x\u{FFFD}", "k\u{FFFD}": [1, "\u{FFFD}"], "n": 3}))
        );
        assert!(!Report::status(ReportStatus::Succeeded).has_nul());
    }

    fn escaped(text: &str) -> String {
        let mut out = EscapeControls(String::new());
        fmt::Write::write_str(&mut out, text).unwrap();
        out.0
    }

    #[test]
    fn control_characters_are_escaped_and_other_text_is_kept() {
        assert_eq!(
            escaped("user\nINFO forged\r\x1b[31mred\x07\t\x7f"),
            "user\\nINFO forged\\r\\x1b[31mred\\x07\\t\\x7f"
        );
        // C1 CSI, a line separator and a right-to-left override.
        assert_eq!(
            escaped("a\u{9b}2Jb\u{2028}c\u{202e}d"),
            "a\\u{9b}2Jb\\u{2028}c\\u{202e}d"
        );
        let plain = "héllo wörld, \u{1F600} \\n \"quoted\"";
        assert_eq!(escaped(plain), plain);
        assert_eq!(escaped(""), "");
        assert_eq!(escaped("\n"), "\\n");
    }
}
