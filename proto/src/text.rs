//! NUL characters in what crosses the device boundary: one rule, for the
//! agent that sends and the server that stores.
//!
//! The services store reports and inventory in PostgreSQL `jsonb`, which
//! refuses the `\u0000` escape: one NUL in an action's output or in a log
//! line (a log file pre-allocated and cut short by a power loss is full of
//! them) would make the whole report fail. NUL becomes U+FFFD, the mark a
//! lossy UTF-8 conversion leaves for bytes it cannot show, so a reader
//! sees that something was there rather than text silently joined up.

use std::borrow::Cow;

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
}
