//! Keeps NUL characters out of everything the agent sends.
//!
//! The server stores reports and inventory in PostgreSQL `jsonb`, which
//! refuses the `\u0000` escape: one NUL byte in an action's output or in a
//! log line (a log file pre-allocated and cut short by a power loss is full
//! of them) would make the server refuse, or fail on, the whole report. The
//! server strips them too; doing it here as well means an older or stricter
//! server never sees one. NUL becomes U+FFFD, the same mark a lossy UTF-8
//! conversion leaves for bytes it cannot show, so a reader sees that
//! something was there.

use std::borrow::Cow;

use serde_json::{Map, Value};
use tend_proto::device::Report;

const REPLACEMENT: &str = "\u{FFFD}";

/// `text` with every NUL replaced; borrowed when there is none.
pub fn text(text: &str) -> Cow<'_, str> {
    if text.contains('\0') {
        Cow::Owned(text.replace('\0', REPLACEMENT))
    } else {
        Cow::Borrowed(text)
    }
}

/// Replaces NUL in every string of `value`, object keys included.
pub fn value(value: &mut Value) {
    match value {
        Value::String(s) => {
            if let Cow::Owned(clean) = text(s) {
                *s = clean;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(self::value),
        Value::Object(map) => {
            if map.keys().any(|k| k.contains('\0')) {
                let old = std::mem::take(map);
                *map = old
                    .into_iter()
                    .map(|(k, v)| (text(&k).into_owned(), v))
                    .collect::<Map<String, Value>>();
            }
            map.values_mut().for_each(self::value);
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// `report` without NUL in its output, error or detail; borrowed (no copy
/// of a possibly large output) when it is already clean.
pub fn report(report: &Report) -> Cow<'_, Report> {
    let has_nul = |s: &Option<String>| s.as_deref().is_some_and(|s| s.contains('\0'));
    let detail_has_nul = report.detail.as_ref().is_some_and(value_has_nul);
    if !has_nul(&report.output) && !has_nul(&report.error) && !detail_has_nul {
        return Cow::Borrowed(report);
    }
    let mut clean = report.clone();
    for s in [&mut clean.output, &mut clean.error].into_iter().flatten() {
        if let Cow::Owned(replaced) = text(s) {
            *s = replaced;
        }
    }
    if let Some(detail) = clean.detail.as_mut() {
        value(detail);
    }
    Cow::Owned(clean)
}

fn value_has_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(value_has_nul),
        Value::Object(map) => map
            .iter()
            .any(|(k, v)| k.contains('\0') || value_has_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use tend_proto::command::ReportStatus;

    use super::*;

    #[test]
    fn nul_is_replaced_in_output_error_and_detail_and_nothing_else_changes() {
        let report = Report {
            status: ReportStatus::Failed,
            output: Some("a\0b".into()),
            error: Some("\0".into()),
            detail: Some(json!({"stderr": "x\0", "k\0": [1, "\0"], "n": 3})),
        };
        let clean = self::report(&report).into_owned();
        assert_eq!(clean.output.as_deref(), Some("a\u{FFFD}b"));
        assert_eq!(clean.error.as_deref(), Some("\u{FFFD}"));
        assert_eq!(
            clean.detail,
            Some(json!({"stderr": "x\u{FFFD}", "k\u{FFFD}": [1, "\u{FFFD}"], "n": 3}))
        );
        let body = serde_json::to_string(&clean).unwrap();
        assert!(!body.contains("\\u0000"), "{body}");
    }

    #[test]
    fn a_clean_report_is_not_copied() {
        let report = Report {
            status: ReportStatus::Succeeded,
            output: Some("fine".into()),
            error: None,
            detail: Some(json!({"matched": 1})),
        };
        assert!(matches!(self::report(&report), Cow::Borrowed(_)));
        assert!(matches!(text("fine"), Cow::Borrowed(_)));
    }
}
