//! Keeps NUL characters out of everything the agent sends.
//!
//! The server stores reports and inventory in PostgreSQL `jsonb`, which
//! refuses the `\u0000` escape: one NUL byte in an action's output or in a
//! log line would make the server refuse, or fail on, the whole report.
//! The server cleans them too; doing it here as well means an older or
//! stricter server never sees one. The rule itself (NUL becomes U+FFFD) is
//! `tend_proto::text`'s, shared with the server; what is the agent's is
//! not copying a report, whose output may be a megabyte, that is clean.

use std::borrow::Cow;

use tend_proto::device::Report;

/// `report` without NUL in its output, error or detail; borrowed (no copy
/// of a possibly large output) when it is already clean.
pub fn report(report: &Report) -> Cow<'_, Report> {
    if !report.has_nul() {
        return Cow::Borrowed(report);
    }
    let mut clean = report.clone();
    clean.replace_nul();
    Cow::Owned(clean)
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use tend_proto::command::ReportStatus;
    use tend_proto::text::replace_nul_str;

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
        assert!(matches!(replace_nul_str("fine"), Cow::Borrowed(_)));
    }
}
