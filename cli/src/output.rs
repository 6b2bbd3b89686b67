//! What tendctl prints: aligned tables and key/value blocks for people,
//! the API's JSON for scripts.
//!
//! Names, labels, errors and outputs come from admins and devices, and a
//! compromised device could send escape sequences aimed at an admin's
//! terminal: everything shown in a table or block goes through
//! [`sanitize_line`].

use std::io::Write;

use serde_json::Value;

/// Writes to stdout. A closed pipe (`tendctl devices list | head -1`) is
/// not an error worth a panic, which `println!` would give.
pub fn out(text: &str) {
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// One JSON document, as `--json` promises.
pub fn json(v: &Value) {
    let text = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    out(&format!("{text}\n"));
}

/// A value on one line, control characters (newlines included) escaped.
pub fn sanitize_line(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Multi-line text (a log excerpt) for a terminal: lines and tabs kept,
/// other control characters escaped.
pub fn sanitize_text(s: &str) -> String {
    s.split('\n')
        .map(|l| {
            l.split('\t')
                .map(sanitize_line)
                .collect::<Vec<_>>()
                .join("\t")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A JSON field for a cell: strings as they are, `null` as `-`.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => sanitize_line(s),
        other => sanitize_line(&other.to_string()),
    }
}

/// Columns aligned with two spaces between them; the last column is not
/// padded, so lines carry no trailing blanks.
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Table {
        Table {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.headers.len());
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let width = |s: &str| s.chars().count();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for r in &self.rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(width(c));
            }
        }
        let line = |cells: Vec<&str>| {
            let last = cells.len().saturating_sub(1);
            let mut s = String::new();
            for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
                s.push_str(c);
                if i < last {
                    s.push_str(&" ".repeat(w - width(c) + 2));
                }
            }
            s.push('\n');
            s
        };
        let mut text = line(self.headers.clone());
        for r in &self.rows {
            text.push_str(&line(r.iter().map(String::as_str).collect()));
        }
        text
    }
}

/// `KEY  value` lines with the values aligned; a value of several lines
/// continues under its first.
pub fn block(pairs: &[(&str, String)]) -> String {
    let w = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut text = String::new();
    for (k, v) in pairs {
        let mut lines = v.split('\n');
        text.push_str(&format!("{k:<w$}  {}\n", lines.next().unwrap_or("")));
        for l in lines {
            text.push_str(&format!("{:w$}  {l}\n", ""));
        }
    }
    text
}

/// Labels the way they are typed: `site:north,floor:2`.
fn labels(v: &Value) -> String {
    match v.as_object() {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| format!("{}:{}", sanitize_line(k), cell(v)))
            .collect::<Vec<_>>()
            .join(","),
        _ => "-".to_owned(),
    }
}

/// A small JSON value on one line, `-` when empty.
fn compact(v: &Value) -> String {
    match v {
        Value::Object(m) if m.is_empty() => "-".to_owned(),
        Value::String(_) | Value::Null => cell(v),
        other => sanitize_line(&other.to_string()),
    }
}

pub fn devices(items: &[Value]) -> String {
    let mut t = Table::new(&[
        "ID",
        "NAME",
        "TYPE",
        "STATUS",
        "ADMISSION",
        "LAST SEEN",
        "LABELS",
    ]);
    for d in items {
        t.row(vec![
            cell(&d["id"]),
            cell(&d["name"]),
            cell(&d["device_type"]),
            cell(&d["status"]),
            cell(&d["admission"]),
            cell(&d["last_seen_at"]),
            labels(&d["labels"]),
        ]);
    }
    t.render()
}

pub fn device(d: &Value) -> String {
    let mut pairs = vec![
        ("ID", cell(&d["id"])),
        ("NAME", cell(&d["name"])),
        ("TYPE", cell(&d["device_type"])),
        ("STATUS", cell(&d["status"])),
        ("ADMISSION", cell(&d["admission"])),
        ("LAST SEEN", cell(&d["last_seen_at"])),
        ("LABELS", labels(&d["labels"])),
        ("CREATED", cell(&d["created_at"])),
    ];
    let mut reported = Vec::new();
    flatten("", &d["reported"], 2, &mut reported);
    let reported = if reported.is_empty() {
        "-".to_owned()
    } else {
        reported.join("\n")
    };
    pairs.push(("REPORTED", reported));
    block(&pairs)
}

/// What an agent reported, one `key.sub: value` a line down to `depth`
/// levels (versions, uptime, `inventory.os`), so nothing runs off the
/// screen as one long JSON line.
fn flatten(prefix: &str, v: &Value, depth: usize, lines: &mut Vec<String>) {
    match v.as_object() {
        Some(m) if depth > 0 && !m.is_empty() => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    sanitize_line(k)
                } else {
                    format!("{prefix}.{}", sanitize_line(k))
                };
                flatten(&key, v, depth - 1, lines);
            }
        }
        _ if prefix.is_empty() => {}
        _ => lines.push(format!("{prefix}: {}", compact(v))),
    }
}

pub fn commands(items: &[Value]) -> String {
    let mut t = Table::new(&["ID", "KIND", "STATUS", "CREATED", "FINISHED"]);
    for c in items {
        t.row(vec![
            cell(&c["id"]),
            cell(&c["kind"]),
            cell(&c["status"]),
            cell(&c["created_at"]),
            cell(&c["finished_at"]),
        ]);
    }
    t.render()
}

pub fn audit(items: &[Value]) -> String {
    let mut t = Table::new(&["AT", "ACTOR", "ACTION", "TARGET", "ADDRESS", "SUMMARY"]);
    for r in items {
        t.row(vec![
            cell(&r["at"]),
            cell(&r["actor"]["username"]),
            cell(&r["action"]),
            format!(
                "{} {}",
                cell(&r["target"]["type"]),
                cell(&r["target"]["id"])
            ),
            cell(&r["address"]),
            compact(&r["summary"]),
        ]);
    }
    t.render()
}

/// A command's output in `show`: enough to see what happened; the rest is
/// one `--json` away (or `tendctl logs` for a log query).
const OUTPUT_LINES: usize = 20;

pub fn command(c: &Value) -> String {
    let mut pairs = vec![
        ("ID", cell(&c["id"])),
        ("DEVICE", cell(&c["device_id"])),
        ("KIND", cell(&c["kind"])),
        ("PARAMS", compact(&c["params"])),
        ("STATUS", cell(&c["status"])),
        ("CREATED", cell(&c["created_at"])),
        ("DELIVERED", cell(&c["delivered_at"])),
        ("STARTED", cell(&c["started_at"])),
        ("FINISHED", cell(&c["finished_at"])),
        (
            "TIMEOUT",
            c["timeout_s"]
                .as_i64()
                .map_or_else(|| "-".to_owned(), |s| format!("{s}s")),
        ),
        ("EXPIRES", cell(&c["expires_at"])),
    ];
    let r = &c["result"];
    if !r["error"].is_null() {
        pairs.push(("ERROR", cell(&r["error"])));
    }
    if !r["detail"].is_null() {
        pairs.push(("DETAIL", compact(&r["detail"])));
    }
    if let Some(o) = r["output"].as_str().filter(|o| !o.is_empty()) {
        let lines: Vec<&str> = o.trim_end_matches('\n').split('\n').collect();
        let mut shown: Vec<String> = lines
            .iter()
            .take(OUTPUT_LINES)
            .map(|l| sanitize_line(l))
            .collect();
        if lines.len() > OUTPUT_LINES {
            shown.push(format!(
                "… {} more lines (--json shows all)",
                lines.len() - OUTPUT_LINES
            ));
        }
        pairs.push(("OUTPUT", shown.join("\n")));
    }
    block(&pairs)
}

/// A size as people read it (`5.00 MiB`); the exact bytes are in `show`
/// and `--json`.
fn size(v: &Value) -> String {
    v.as_u64()
        .map_or_else(|| "-".to_owned(), |n| indicatif::HumanBytes(n).to_string())
}

/// A list of strings (device types) as typed: `kiosk,camera-v2`.
fn list(v: &Value) -> String {
    match v.as_array() {
        Some(a) if !a.is_empty() => a.iter().map(cell).collect::<Vec<_>>().join(","),
        _ => "-".to_owned(),
    }
}

fn yes_no(v: &Value) -> String {
    match v.as_bool() {
        Some(true) => "yes".to_owned(),
        Some(false) => "no".to_owned(),
        None => "-".to_owned(),
    }
}

pub fn artifacts(items: &[Value]) -> String {
    let mut t = Table::new(&[
        "ID",
        "COMPONENT",
        "VERSION",
        "DEVICE TYPES",
        "STATUS",
        "RELEASED",
        "SIZE",
        "CREATED",
    ]);
    for a in items {
        t.row(vec![
            cell(&a["id"]),
            cell(&a["component"]),
            cell(&a["version"]),
            list(&a["device_types"]),
            cell(&a["status"]),
            yes_no(&a["released"]),
            size(&a["size"]),
            cell(&a["created_at"]),
        ]);
    }
    t.render()
}

pub fn artifact(a: &Value) -> String {
    let bytes = match a["size"].as_u64() {
        Some(n) => format!("{n} ({})", size(&a["size"])),
        None => "-".to_owned(),
    };
    block(&[
        ("ID", cell(&a["id"])),
        ("COMPONENT", cell(&a["component"])),
        ("VERSION", cell(&a["version"])),
        ("DEVICE TYPES", list(&a["device_types"])),
        ("FILENAME", cell(&a["filename"])),
        ("STATUS", cell(&a["status"])),
        ("RELEASED", yes_no(&a["released"])),
        ("SIZE", bytes),
        ("SHA256", cell(&a["sha256"])),
        ("CREATED", cell(&a["created_at"])),
        ("CREATED BY", cell(&a["created_by"])),
    ])
}

/// Who put a device on a denylist: an admin's id, or tend itself after a
/// rollback (`created_by` null).
fn added_by(v: &Value) -> String {
    if v.is_null() {
        "tend (rollback)".to_owned()
    } else {
        cell(v)
    }
}

pub fn denylist(items: &[Value]) -> String {
    let mut t = Table::new(&["DEVICE", "ADDED", "ADDED BY", "REASON"]);
    for e in items {
        t.row(vec![
            cell(&e["device_id"]),
            cell(&e["created_at"]),
            added_by(&e["created_by"]),
            cell(&e["reason"]),
        ]);
    }
    t.render()
}

pub fn denylist_entry(e: &Value) -> String {
    block(&[
        ("DEVICE", cell(&e["device_id"])),
        ("REASON", cell(&e["reason"])),
        ("ADDED", cell(&e["created_at"])),
        ("ADDED BY", added_by(&e["created_by"])),
    ])
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn columns_are_aligned_to_their_widest_cell_without_trailing_blanks() {
        let mut t = Table::new(&["ID", "NAME", "STATUS"]);
        t.row(vec!["1".into(), "kiosk-north".into(), "online".into()]);
        t.row(vec!["22".into(), "é".into(), "-".into()]);
        assert_eq!(
            t.render(),
            "ID  NAME         STATUS\n\
             1   kiosk-north  online\n\
             22  é            -\n"
        );
    }

    #[test]
    fn an_empty_table_is_its_header() {
        assert_eq!(Table::new(&["ID", "KIND"]).render(), "ID  KIND\n");
    }

    #[test]
    fn devices_show_labels_as_typed_and_missing_times_as_dashes() {
        let d = json!({
            "id": "d1", "name": "kiosk", "device_type": "kiosk", "status": "unknown",
            "admission": "pending", "last_seen_at": null,
            "labels": {"site": "north", "floor": "2"},
        });
        let text = devices(&[d]);
        let row = text.lines().nth(1).unwrap();
        assert_eq!(
            row,
            "d1  kiosk  kiosk  unknown  pending    -          floor:2,site:north"
        );
    }

    #[test]
    fn what_the_agent_reported_is_shown_one_field_a_line() {
        let d = json!({"reported": {
            "agent_version": "0.1.0",
            "inventory": {"os": "linux", "disks": {"sda": 1}},
        }});
        let text = device(&d);
        assert!(
            text.contains(
                "REPORTED   agent_version: 0.1.0\n\
                 \x20          inventory.disks: {\"sda\":1}\n\
                 \x20          inventory.os: linux\n"
            ),
            "{text}"
        );
        assert!(device(&json!({"reported": {}})).contains("REPORTED   -\n"));
    }

    #[test]
    fn a_command_block_shows_the_result_and_bounds_the_output() {
        let output: String = (1..=25).map(|i| format!("line {i}\n")).collect();
        let c = json!({
            "id": "c1", "device_id": "d1", "kind": "shutdown", "params": {},
            "status": "failed", "created_at": "2030-01-01T00:00:00Z", "timeout_s": 600,
            "result": {"output": output, "error": "exit status 3", "detail": null},
        });
        let text = command(&c);
        assert!(text.contains("STATUS     failed\n"), "{text}");
        assert!(text.contains("PARAMS     -\n"), "{text}");
        assert!(text.contains("TIMEOUT    600s\n"), "{text}");
        assert!(text.contains("ERROR      exit status 3\n"), "{text}");
        assert!(
            text.contains("OUTPUT     line 1\n           line 2\n"),
            "{text}"
        );
        assert!(text.contains("… 5 more lines"), "{text}");
        assert!(!text.contains("line 21"), "{text}");
    }

    #[test]
    fn an_artifact_shows_its_size_both_ways_and_a_pending_one_dashes() {
        let a = json!({
            "id": "a1", "component": "app", "version": "1.4.2",
            "device_types": ["kiosk", "camera-v2"], "filename": "app.tar.gz",
            "size": 5_242_897, "sha256": "ab", "status": "ready", "released": true,
            "created_at": "2030-01-01T00:00:00Z", "created_by": "u1",
        });
        let text = artifact(&a);
        assert!(
            text.contains("SIZE          5242897 (5.00 MiB)\n"),
            "{text}"
        );
        assert!(text.contains("DEVICE TYPES  kiosk,camera-v2\n"), "{text}");
        assert!(text.contains("RELEASED      yes\n"), "{text}");
        let row = artifacts(&[a]);
        let row = row.lines().nth(1).unwrap();
        assert_eq!(
            row,
            "a1  app        1.4.2    kiosk,camera-v2  ready   yes       5.00 MiB  2030-01-01T00:00:00Z"
        );
        let pending = json!({"status": "pending_upload", "size": null, "sha256": null,
            "released": false, "device_types": ["kiosk"]});
        let text = artifact(&pending);
        assert!(text.contains("SIZE          -\n"), "{text}");
        assert!(text.contains("SHA256        -\n"), "{text}");
    }

    #[test]
    fn a_denylist_entry_added_after_a_rollback_says_so() {
        let e = json!({"device_id": "d1", "reason": "rolled back: health check failed",
            "created_at": "2030-01-01T00:00:00Z", "created_by": null});
        assert!(denylist_entry(&e).contains("ADDED BY  tend (rollback)\n"));
        let rows = denylist(&[e]);
        assert!(
            rows.lines()
                .nth(1)
                .unwrap()
                .ends_with("tend (rollback)  rolled back: health check failed"),
            "{rows}"
        );
    }

    #[test]
    fn escape_sequences_from_devices_are_shown_not_obeyed() {
        assert_eq!(sanitize_line("a\u{1b}[31mb\r"), "a\\u{1b}[31mb\\r");
        assert_eq!(
            sanitize_text("one\ttwo\nthree\u{7}"),
            "one\ttwo\nthree\\u{7}"
        );
        assert_eq!(cell(&json!("x\ny")), "x\\ny");
    }
}
