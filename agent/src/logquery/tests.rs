//! The query end to end, on real files in a temporary directory.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::process::Command;

use flate2::Compression;
use flate2::write::GzEncoder;
use tempfile::TempDir;

use super::*;
use crate::oplog::{OpLog, Operation};

/// "Now" for every query here: syslog years are inferred from it.
const NOW: &str = "2026-11-21T12:00:00Z";

const APP: &str = "\
preamble line without a time
2026-11-21T10:00:00Z INFO boot
2026-11-21T10:00:01Z ERROR db timeout
java.io.IOException: timeout
\tat Db.query(Db.java:10)
2026-11-21T10:00:02Z INFO request ok
2026-11-21T10:00:03Z WARN slow request
Caused by: ERROR deep inside
2026-11-21T10:00:04Z INFO done
";

/// A device's log directory and the query settings pointing at it.
struct Logs {
    dir: TempDir,
    settings: Settings,
}

impl Logs {
    fn new() -> Logs {
        Logs::with_options(Options::default())
    }

    /// `options`: the `[log_query]` table.
    fn with_options(options: Options) -> Logs {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("state");
        fs::create_dir_all(&state_dir).unwrap();
        let mut sources: BTreeMap<String, PathBuf> = [
            ("app", "app.log"),
            ("link", "link.log"),
            ("dir", "adir"),
            ("fifo", "fifo.log"),
            ("locked", "locked.log"),
        ]
        .into_iter()
        .map(|(name, file)| (name.to_owned(), dir.path().join(file)))
        .collect();
        sources.insert("mem".into(), PathBuf::from("/proc/self/mem"));
        let settings = Settings {
            sources,
            operations_log: state_dir.join(crate::oplog::FILE_NAME),
            options,
        };
        Logs { dir, settings }
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, content: impl AsRef<[u8]>) {
        fs::write(self.path(name), content).unwrap();
    }

    fn write_gz(&self, name: &str, members: &[&str]) {
        let mut file = File::create(self.path(name)).unwrap();
        for member in members {
            let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
            encoder.write_all(member.as_bytes()).unwrap();
            file.write_all(&encoder.finish().unwrap()).unwrap();
        }
    }

    fn set_mtime(&self, name: &str, rfc3339: &str) {
        let time: std::time::SystemTime = DateTime::parse_from_rfc3339(rfc3339).unwrap().into();
        File::options()
            .write(true)
            .open(self.path(name))
            .unwrap()
            .set_modified(time)
            .unwrap();
    }

    fn query(&self, params: Value) -> Result<Answer, QueryError> {
        let now = DateTime::parse_from_rfc3339(NOW).unwrap().to_utc();
        run_at(&params, &self.settings, now, &Stop::never())
    }

    fn answer(&self, params: Value) -> Answer {
        self.query(params.clone())
            .unwrap_or_else(|e| panic!("{params}: {e}"))
    }

    fn rejection(&self, params: Value) -> String {
        match self.query(params.clone()) {
            Err(QueryError::Rejected(why)) => why,
            other => panic!("{params}: expected a rejection, got {other:?}"),
        }
    }
}

fn lines(answer: &Answer) -> Vec<&str> {
    answer.output.lines().collect()
}

#[test]
fn without_filters_every_line_comes_back_oldest_first_with_its_counts() {
    let logs = Logs::new();
    logs.write("app.log", APP);
    let answer = logs.answer(json!({"source": "app"}));
    assert_eq!(answer.output, APP);
    assert_eq!(
        answer.detail(),
        json!({
            "matched": 9,
            "returned": 9,
            "truncated": false,
            "bytes": APP.len(),
            "files": ["app.log"],
        })
    );
    let report = report(Ok(answer));
    assert_eq!(report.status, ReportStatus::Succeeded);
    assert_eq!(report.output.as_deref(), Some(APP));
}

#[test]
fn since_and_until_are_inclusive_and_continuation_lines_follow_their_record() {
    let logs = Logs::new();
    logs.write("app.log", APP);
    let answer = logs.answer(json!({
        "source": "app",
        "since": "2026-11-21T10:00:01Z",
        "until": "2026-11-21T11:00:03+01:00",
    }));
    assert_eq!(
        lines(&answer),
        [
            "2026-11-21T10:00:01Z ERROR db timeout",
            "java.io.IOException: timeout",
            "\tat Db.query(Db.java:10)",
            "2026-11-21T10:00:02Z INFO request ok",
            "2026-11-21T10:00:03Z WARN slow request",
            "Caused by: ERROR deep inside",
        ]
    );
    assert_eq!((answer.matched, answer.returned), (6, 6));

    let only_since = logs.answer(json!({"source": "app", "since": "2026-11-21T10:00:04Z"}));
    assert_eq!(lines(&only_since), ["2026-11-21T10:00:04Z INFO done"]);
    let only_until = logs.answer(json!({"source": "app", "until": "2026-11-21T10:00:00Z"}));
    assert_eq!(
        lines(&only_until),
        ["2026-11-21T10:00:00Z INFO boot"],
        "the lines before the first timestamp have no time: a range excludes them"
    );
}

#[test]
fn a_pattern_selects_whole_records_even_when_only_a_continuation_line_matches() {
    let logs = Logs::new();
    logs.write("app.log", APP);
    let answer = logs.answer(json!({"source": "app", "pattern": "IOException"}));
    assert_eq!(
        lines(&answer),
        [
            "2026-11-21T10:00:01Z ERROR db timeout",
            "java.io.IOException: timeout",
            "\tat Db.query(Db.java:10)",
        ]
    );
    let answer = logs.answer(json!({"source": "app", "pattern": "ERROR"}));
    assert_eq!(answer.matched, 5);
    assert_eq!(
        lines(&answer)[3..],
        [
            "2026-11-21T10:00:03Z WARN slow request",
            "Caused by: ERROR deep inside"
        ]
    );

    let preamble = logs.answer(json!({"source": "app", "pattern": "^preamble"}));
    assert_eq!(lines(&preamble), ["preamble line without a time"]);
    let nothing = logs.answer(json!({"source": "app", "pattern": "no such text"}));
    assert_eq!(
        (nothing.output.as_str(), nothing.matched, nothing.truncated),
        ("", 0, false)
    );
}

#[test]
fn time_range_and_pattern_combine() {
    let logs = Logs::new();
    logs.write("app.log", APP);
    let answer = logs.answer(json!({
        "source": "app",
        "since": "2026-11-21T10:00:02Z",
        "pattern": "ERROR",
    }));
    assert_eq!(
        lines(&answer),
        [
            "2026-11-21T10:00:03Z WARN slow request",
            "Caused by: ERROR deep inside"
        ]
    );
    let answer = logs.answer(json!({
        "source": "app",
        "until": "2026-11-21T10:00:03Z",
        "pattern": "INFO",
        "max_lines": 1,
    }));
    assert_eq!(lines(&answer), ["2026-11-21T10:00:02Z INFO request ok"]);
    assert_eq!(
        (answer.matched, answer.returned, answer.truncated),
        (2, 1, true)
    );
}

fn numbered(count: usize) -> String {
    (0..count)
        .map(|i| format!("2026-11-21T10:{:02}:{:02}Z line {i}\n", i / 60 % 60, i % 60))
        .collect()
}

#[test]
fn max_lines_keeps_the_newest_lines() {
    let logs = Logs::new();
    logs.write("app.log", numbered(100));
    let answer = logs.answer(json!({"source": "app", "max_lines": 10}));
    assert_eq!(
        lines(&answer).first(),
        Some(&"2026-11-21T10:01:30Z line 90")
    );
    assert_eq!(lines(&answer).last(), Some(&"2026-11-21T10:01:39Z line 99"));
    assert_eq!(
        (answer.matched, answer.returned, answer.truncated),
        (100, 10, true)
    );

    // The platform refuses 0, and so does the device: one rule.
    let why = logs.rejection(json!({"source": "app", "max_lines": 0}));
    assert!(
        why.contains("max_lines must be a whole number from 1 to 10000"),
        "{why}"
    );

    let default = logs.answer(json!({"source": "app"}));
    assert_eq!((default.returned, default.truncated), (100, false));
    logs.write("app.log", numbered(1500));
    let default = logs.answer(json!({"source": "app"}));
    assert_eq!(default.returned, params::LOG_QUERY_DEFAULT_MAX_LINES);
}

#[test]
fn the_byte_cap_keeps_the_newest_lines_and_holds_after_the_lossy_conversion() {
    let logs = Logs::with_options(Options {
        max_output_bytes: 4096,
        ..Options::default()
    });
    let log = numbered(1000);
    logs.write("app.log", &log);
    let answer = logs.answer(json!({"source": "app"}));
    assert!(answer.output.len() <= 4096 && answer.output.len() > 4000);
    assert!(log.ends_with(&answer.output), "a suffix of the log");
    assert_eq!(answer.returned as usize, lines(&answer).len());
    assert!(answer.truncated && answer.matched == 1000);
    assert_eq!(answer.detail()["bytes"], answer.output.len());

    // Each invalid byte becomes a 3-byte U+FFFD: the cap still holds.
    let mut garbled = Vec::new();
    for i in 0..100 {
        garbled.extend_from_slice(format!("2026-11-21T10:00:{:02}Z ", i % 60).as_bytes());
        garbled.extend_from_slice(&[0xff; 100]);
        garbled.push(b'\n');
    }
    logs.write("app.log", &garbled);
    let answer = logs.answer(json!({"source": "app"}));
    assert!(answer.output.len() <= 4096, "{}", answer.output.len());
    assert_eq!(answer.returned, 12, "12 lines of 322 bytes fit in 4096");
    assert!(answer.truncated);
}

#[test]
fn rotated_and_compressed_files_are_read_oldest_first_up_to_the_first_gap() {
    let logs = Logs::new();
    logs.write_gz(
        "app.log.3.gz",
        &[
            "2026-11-21T07:00:00Z three-a\n",
            "2026-11-21T07:00:01Z three-b\n",
        ],
    );
    logs.write_gz("app.log.2.gz", &["2026-11-21T08:00:00Z two\n"]);
    logs.write("app.log.1", "2026-11-21T09:00:00Z one\n");
    logs.write("app.log", "2026-11-21T10:00:00Z live\n");
    logs.write(
        "app.log.5",
        "2026-11-21T05:00:00Z after a gap: not part of the set\n",
    );
    let answer = logs.answer(json!({"source": "app"}));
    assert_eq!(
        lines(&answer),
        [
            "2026-11-21T07:00:00Z three-a",
            "2026-11-21T07:00:01Z three-b",
            "2026-11-21T08:00:00Z two",
            "2026-11-21T09:00:00Z one",
            "2026-11-21T10:00:00Z live",
        ]
    );
    assert_eq!(
        answer.files,
        ["app.log.3.gz", "app.log.2.gz", "app.log.1", "app.log"]
    );

    // Just rotated, the live file not created yet: the others still count.
    fs::remove_file(logs.path("app.log")).unwrap();
    let answer = logs.answer(json!({"source": "app", "pattern": "one|two"}));
    assert_eq!(answer.files, ["app.log.3.gz", "app.log.2.gz", "app.log.1"]);
    assert_eq!(answer.returned, 2);
}

#[test]
fn a_rotated_file_last_written_before_since_is_skipped() {
    let logs = Logs::new();
    logs.write_gz("app.log.2.gz", &["2026-11-20T08:00:00Z old\n"]);
    logs.set_mtime("app.log.2.gz", "2026-11-20T08:00:01Z");
    logs.write("app.log.1", "2026-11-21T09:00:00Z recent\n");
    logs.set_mtime("app.log.1", "2026-11-21T09:00:01Z");
    logs.write("app.log", "2026-11-21T10:00:00Z live\n");

    let answer = logs.answer(json!({"source": "app", "since": "2026-11-21T00:00:00Z"}));
    assert_eq!(answer.files, ["app.log.1", "app.log"]);
    assert_eq!(answer.returned, 2);
    let all = logs.answer(json!({"source": "app"}));
    assert_eq!(all.files, ["app.log.2.gz", "app.log.1", "app.log"]);
}

#[test]
fn a_plain_rotated_file_wins_over_its_half_written_compressed_twin() {
    let logs = Logs::new();
    logs.write("app.log.1", "2026-11-21T09:00:00Z one\n");
    logs.write("app.log.1.gz", b"\x1f\x8b truncated gzip");
    let answer = logs.answer(json!({"source": "app"}));
    assert_eq!(answer.files, ["app.log.1"]);
}

#[test]
fn a_corrupt_compressed_file_fails_the_query_naming_the_file() {
    let logs = Logs::new();
    logs.write("app.log.1.gz", b"\x1f\x8b\x08\x00 not really gzip");
    let e = logs.query(json!({"source": "app"})).unwrap_err();
    assert!(matches!(e, QueryError::Unreadable { .. }), "{e}");
    assert!(e.to_string().contains("app.log.1.gz"), "{e}");
    assert_eq!(report(Err(e)).status, ReportStatus::Failed);
}

#[test]
fn source_names_that_look_like_paths_are_rejected() {
    let logs = Logs::new();
    for name in [
        "../etc/shadow",
        "/etc/shadow",
        "..",
        "app/../app",
        "a/b",
        "",
        "..app",
    ] {
        // Refused by the params check, the platform's own rule (which
        // lets `..app` through as a name), and by the lookup itself, so
        // that no future change to either makes one a path.
        let why = logs.rejection(json!({"source": name}));
        assert!(
            why.contains("source must") || why.contains("not a log source name"),
            "{name:?}: {why}"
        );
        let Err(QueryError::Rejected(why)) = files::resolve(name, &logs.settings) else {
            panic!("{name:?} resolved");
        };
        assert!(why.contains("not a log source name"), "{name:?}: {why}");
    }
    let report = report(logs.query(json!({"source": "../etc/shadow"})));
    assert_eq!(report.status, ReportStatus::Rejected);
    assert!(report.error.unwrap().contains("not a path"));
    let Err(QueryError::Rejected(why)) = files::resolve("../etc/shadow", &logs.settings) else {
        panic!("a path resolved");
    };
    assert!(why.contains("`/` or `..`"));
}

#[test]
fn an_unknown_source_is_rejected_naming_the_known_ones() {
    let logs = Logs::new();
    let why = logs.rejection(json!({"source": "kernel"}));
    assert!(
        why.contains("unknown log source \"kernel\"")
            && why.contains("app")
            && why.contains("operations"),
        "{why}"
    );
}

#[test]
fn a_configured_symlink_is_refused_and_so_is_a_symlinked_rotated_file() {
    let logs = Logs::new();
    logs.write("app.log", APP);
    symlink(logs.path("app.log"), logs.path("link.log")).unwrap();
    let why = logs.rejection(json!({"source": "link"}));
    assert!(why.contains("symbolic link"), "{why}");

    symlink("/etc/passwd", logs.path("app.log.1")).unwrap();
    let why = logs.rejection(json!({"source": "app"}));
    assert!(why.contains("app.log.1 is a symbolic link"), "{why}");

    // Swapped in between the check and the open: O_NOFOLLOW refuses it.
    let swapped = LogFile {
        path: logs.path("link.log"),
        gzip: false,
    };
    let Err(QueryError::Rejected(why)) = files::open(&swapped) else {
        panic!("a link was opened");
    };
    assert!(why.contains("symbolic link"), "{why}");
}

#[test]
fn a_hard_linked_log_or_rotated_file_is_refused() {
    let logs = Logs::new();
    logs.write("app.log", APP);
    logs.write("secret", "not a log\n");
    std::fs::hard_link(logs.path("secret"), logs.path("app.log.1")).unwrap();
    let why = logs.rejection(json!({"source": "app"}));
    assert!(why.contains("app.log.1 has 2 names"), "{why}");

    std::fs::remove_file(logs.path("app.log.1")).unwrap();
    std::fs::hard_link(logs.path("app.log"), logs.path("copy")).unwrap();
    let why = logs.rejection(json!({"source": "app"}));
    assert!(why.contains("app.log has 2 names"), "{why}");
}

#[test]
fn a_directory_or_a_fifo_is_refused_without_hanging() {
    let logs = Logs::new();
    fs::create_dir(logs.path("adir")).unwrap();
    let why = logs.rejection(json!({"source": "dir"}));
    assert!(why.contains("is a directory"), "{why}");

    let made = Command::new("mkfifo")
        .arg(logs.path("fifo.log"))
        .status()
        .unwrap();
    assert!(made.success());
    let why = logs.rejection(json!({"source": "fifo"}));
    assert!(why.contains("not a regular file"), "{why}");
    // Opened directly (as if swapped in after the check): no writer, yet
    // O_NONBLOCK returns at once and fstat refuses it.
    let fifo = LogFile {
        path: logs.path("fifo.log"),
        gzip: false,
    };
    assert!(matches!(files::open(&fifo), Err(QueryError::Rejected(_))));
}

#[test]
fn an_unreadable_file_fails_with_the_os_error() {
    let logs = Logs::new();
    // Reading /proc/self/mem at offset 0 fails with EIO even for root, for
    // whom permission bits are no obstacle.
    let e = logs.query(json!({"source": "mem"})).unwrap_err();
    assert!(matches!(e, QueryError::Unreadable { .. }), "{e}");
    let report = report(Err(e));
    assert_eq!(report.status, ReportStatus::Failed);
    let error = report.error.unwrap();
    assert!(
        error.starts_with("cannot read /proc/self/mem: ") && error.contains("os error"),
        "{error}"
    );

    logs.write("locked.log", APP);
    fs::set_permissions(logs.path("locked.log"), fs::Permissions::from_mode(0o000)).unwrap();
    let privileged = File::open(logs.path("locked.log")).is_ok();
    if !privileged {
        let e = logs.query(json!({"source": "locked"})).unwrap_err();
        assert!(e.to_string().contains("Permission denied"), "{e}");
    }
    // What an unprivileged agent meets, mapped the same way.
    let denied = QueryError::unreadable(
        &logs.path("locked.log"),
        io::Error::from_raw_os_error(libc::EACCES),
    );
    let report = super::report(Err(denied));
    assert_eq!(report.status, ReportStatus::Failed);
    assert!(
        report
            .error
            .unwrap()
            .ends_with("locked.log: Permission denied (os error 13)")
    );
}

#[test]
fn a_source_whose_file_does_not_exist_yet_gives_an_empty_result() {
    let logs = Logs::new();
    let answer = logs.answer(json!({"source": "app", "pattern": "x"}));
    assert_eq!(
        answer.detail(),
        json!({"matched": 0, "returned": 0, "truncated": false, "bytes": 0, "files": []})
    );
    assert_eq!(report(Ok(answer)).status, ReportStatus::Succeeded);
}

#[test]
fn non_utf8_bytes_and_nul_never_break_the_query() {
    let logs = Logs::new();
    logs.write(
        "app.log",
        b"2026-11-21T10:00:00Z caf\xe9 latin-1\n\xff\xfe binary continuation\n\
          2026-11-21T10:00:01Z nul\x00inside\n2026-11-21T10:00:02Z \xc3\x28 bad utf-8\n",
    );
    let answer = logs.answer(json!({"source": "app", "pattern": "caf"}));
    assert_eq!(
        answer.output,
        "2026-11-21T10:00:00Z caf\u{FFFD} latin-1\n\u{FFFD}\u{FFFD} binary continuation\n"
    );
    let answer = logs.answer(json!({"source": "app", "pattern": "nul"}));
    assert_eq!(answer.output, "2026-11-21T10:00:01Z nul\u{FFFD}inside\n");
    let answer = logs.answer(json!({"source": "app", "pattern": "(?-u:\\xc3)"}));
    assert_eq!(answer.output, "2026-11-21T10:00:02Z \u{FFFD}( bad utf-8\n");
    assert_eq!(logs.answer(json!({"source": "app"})).matched, 4);
}

#[test]
fn syslog_lines_without_a_year_are_filtered_by_time() {
    let logs = Logs::new();
    logs.write(
        "app.log",
        "Dec 31 23:00:00 kiosk app[7]: last year\n\
         Nov 21 09:00:00 kiosk app[7]: morning\n\
         Nov 21 11:00:00 kiosk app[7]: late morning\n \
          continued\n",
    );
    let answer = logs.answer(json!({"source": "app", "since": "2026-11-21T10:00:00Z"}));
    assert_eq!(
        lines(&answer),
        ["Nov 21 11:00:00 kiosk app[7]: late morning", " continued"]
    );
    let answer = logs.answer(json!({"source": "app", "until": "2026-01-01T00:00:00Z"}));
    assert_eq!(lines(&answer), ["Dec 31 23:00:00 kiosk app[7]: last year"]);
}

#[test]
fn times_without_an_offset_are_read_in_the_configured_zone() {
    let log = "2026-11-21 11:30:00 naive\n2026-11-21T11:30:00+02:00 explicit\n";
    let since = json!({"source": "app", "since": "2026-11-21T10:00:00Z"});

    let utc = Logs::new();
    utc.write("app.log", log);
    assert_eq!(
        lines(&utc.answer(since.clone())),
        ["2026-11-21 11:30:00 naive"]
    );

    let plus_two = Logs::with_options(Options {
        naive_timezone: "+02:00".parse().unwrap(),
        ..Options::default()
    });
    plus_two.write("app.log", log);
    assert_eq!(
        plus_two.answer(since.clone()).matched,
        0,
        "both are 09:30 UTC"
    );

    let local = Logs::with_options(Options {
        naive_timezone: "local".parse().unwrap(),
        ..Options::default()
    });
    local.write("app.log", log);
    let naive =
        chrono::NaiveDateTime::parse_from_str("2026-11-21 11:30:00", "%Y-%m-%d %H:%M:%S").unwrap();
    let local_is_after = chrono::TimeZone::from_local_datetime(&chrono::Local, &naive)
        .earliest()
        .unwrap()
        .to_utc()
        >= DateTime::parse_from_rfc3339("2026-11-21T10:00:00Z").unwrap();
    assert_eq!(local.answer(since).matched, u64::from(local_is_after));
}

#[test]
fn the_operations_source_reads_the_agent_log_and_its_rotations() {
    let logs = Logs::new();
    let oplog = OpLog::new(
        &logs.state_dir(),
        crate::oplog::Settings {
            max_bytes: 4096,
            keep: 3,
        },
    );
    let params = json!({});
    // In the past, so the rotated files' mtimes (now) are after `since`.
    let start = DateTime::parse_from_rfc3339("2025-11-21T10:00:00Z")
        .unwrap()
        .to_utc();
    for i in 0..200 {
        oplog
            .append(&Operation {
                at: start + chrono::TimeDelta::minutes(i),
                instruction_id: uuid::Uuid::new_v4(),
                kind: if i % 2 == 0 { "reboot" } else { "log_query" },
                params: &params,
                outcome: "succeeded",
                duration_ms: Some(5),
                error: None,
                step: None,
                detail: None,
            })
            .unwrap();
    }
    let answer = logs.answer(json!({
        "source": "operations",
        "since": "2025-11-21T13:10:00Z",
        "pattern": "\"kind\":\"reboot\"",
    }));
    assert_eq!(answer.returned, 5, "13:10, 13:12, 13:14, 13:16, 13:18");
    assert!(lines(&answer)[0].starts_with(r#"{"at":"2025-11-21T13:10:00Z""#));
    assert_eq!(
        answer.files.last().map(String::as_str),
        Some("operations.log")
    );

    let everything = logs.answer(json!({"source": "operations", "max_lines": 10000}));
    assert_eq!(
        everything.files,
        [
            "operations.log.3",
            "operations.log.2",
            "operations.log.1",
            "operations.log"
        ]
    );
    let first: Value = serde_json::from_str(lines(&everything)[0]).unwrap();
    let last: Value = serde_json::from_str(lines(&everything).last().unwrap()).unwrap();
    assert!(first["at"].as_str() < last["at"].as_str(), "oldest first");
    assert_eq!(last["at"], "2025-11-21T13:19:00Z");
    assert!(everything.matched < 200, "the oldest were rotated away");
}

#[test]
fn an_over_long_line_is_cut_and_marked_and_the_next_line_is_intact() {
    let logs = Logs::new();
    let mut log = String::from("2026-11-21T10:00:00Z ");
    log.push_str(&"x".repeat(100_000));
    log.push_str("\n2026-11-21T10:00:01Z next\n");
    logs.write("app.log", &log);
    let answer = logs.answer(json!({"source": "app"}));
    let lines = lines(&answer);
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0].len(), MAX_LINE_BYTES + CUT_MARK.len());
    assert!(lines[0].ends_with("xxx…[truncated]"));
    assert_eq!(lines[1], "2026-11-21T10:00:01Z next");
}

#[test]
fn invalid_params_are_rejected_with_the_reason() {
    let logs = Logs::new();
    for (params, expected) in [
        (json!(null), "invalid log_query params"),
        (json!({}), "log_query needs a source"),
        (
            json!({"source": "app", "lines": 5}),
            "log_query has no param \"lines\"",
        ),
        (
            json!({"source": "app", "pattern": "("}),
            "pattern does not compile",
        ),
        (
            json!({"source": "app", "since": "yesterday"}),
            "since is not an RFC 3339 time",
        ),
        (
            json!({"source": "app", "until": "2026-11-21 10:00:00"}),
            "until",
        ),
        (
            json!({"source": "app", "since": "2026-11-21T11:00:00Z", "until": "2026-11-21T10:00:00Z"}),
            "since must not be after until",
        ),
        (
            json!({"source": "app", "max_lines": 10001}),
            "from 1 to 10000",
        ),
        (
            json!({"source": "app", "max_lines": -1}),
            "invalid log_query params",
        ),
    ] {
        let why = logs.rejection(params.clone());
        assert!(why.contains(expected), "{params}: {why}");
        assert!(!why.contains('\n'), "one line: {why}");
    }
}

#[test]
fn a_cancelled_or_timed_out_query_stops() {
    let logs = Logs::new();
    logs.write("app.log", APP);
    let params = json!({"source": "app"});
    let cancel = CancellationToken::new();
    cancel.cancel();
    let cancelled = run(
        &params,
        &logs.settings,
        &Stop::new(Duration::from_secs(60), cancel),
    );
    assert!(matches!(cancelled, Err(QueryError::Cancelled)));
    let late = run(
        &params,
        &logs.settings,
        &Stop::new(Duration::ZERO, CancellationToken::new()),
    );
    let Err(e) = late else {
        panic!("a query past its deadline finished");
    };
    assert!(e.to_string().contains("timeout (0 s)"), "{e}");
    assert_eq!(report(Err(e)).status, ReportStatus::Failed);
}
