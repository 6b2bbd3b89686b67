//! `log_query`: the lines of one log source that fall in a time range and
//! match a pattern, read on the device and sent back in the report.
//!
//! A query names a source (a key of `[log_sources]`, or `operations` for
//! the agent's own operation log), never a path. The source's rotated
//! files are read oldest first, then the live file, as a stream: memory is
//! bounded by the output caps and one 64 KiB line, whatever the size of the
//! logs.
//!
//! Lines are grouped into records. A line that starts with a timestamp
//! (see [`timestamp`]) starts a record; the lines after it without one (a
//! stack trace, a multi-line message) belong to it. The time range is
//! judged on the record's timestamp and the pattern on all its lines, and a
//! record is returned whole or not at all. Lines before the first
//! timestamp of a file belong to no dated record: they are returned only
//! when the query has no time range.
//!
//! The output keeps the newest lines: at most `max_lines` lines and
//! `[log_query] max_output_bytes` bytes. `detail.matched` counts every line
//! the filters selected, `returned` those in the output, and `truncated`
//! says that older ones were left out.

mod files;
mod reader;
pub mod timestamp;

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use regex::bytes::Regex;
use serde_json::{Value, json};
use tend_proto::command::ReportStatus;
use tend_proto::device::Report;
use tend_proto::params::{self, ParamsError};
use tend_proto::text::replace_nul_string;
use tokio_util::sync::CancellationToken;

use self::files::LogFile;
use self::reader::LineReader;
use self::timestamp::{Parser, Stamp};

pub use self::files::{MAX_ROTATIONS, OPERATIONS};
pub use self::reader::MAX_LINE_BYTES;
pub use self::timestamp::NaiveZone;

/// The default of `[log_query] max_output_bytes`: large enough for the
/// default `max_lines` of ordinary lines, small enough for one report.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 1024 * 1024;
/// Ends a line that was longer than [`MAX_LINE_BYTES`] and was cut.
pub const CUT_MARK: &str = "…[truncated]";

/// What queries may read, and how: built from the agent's configuration,
/// so this module never sees the rest of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `[log_sources]`: the only files a query may read, by name.
    pub sources: BTreeMap<String, PathBuf>,
    /// The agent's operation log: what the source [`OPERATIONS`] reads.
    pub operations_log: PathBuf,
    /// `[log_query]`.
    pub options: Options,
}

/// `[log_query]` in the agent's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// The zone of timestamps written without an offset.
    pub naive_timezone: NaiveZone,
    /// The byte cap of one query's output.
    pub max_output_bytes: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            naive_timezone: NaiveZone::Utc,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
        }
    }
}

/// Why a query has no answer.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The query cannot be answered as asked (unknown source, a link, bad
    /// params): reported `rejected`.
    #[error("{0}")]
    Rejected(String),
    /// A file could not be read: reported `failed` with the OS error.
    #[error("cannot read {}: {error}", path.display())]
    Unreadable { path: PathBuf, error: io::Error },
    #[error("the query did not finish within the instruction's timeout ({} s)", .0.as_secs())]
    TimedOut(Duration),
    /// The agent is shutting down; the query is decided at the next start.
    #[error("the agent is stopping")]
    Cancelled,
}

impl QueryError {
    pub fn unreadable(path: &Path, error: io::Error) -> QueryError {
        QueryError::Unreadable {
            path: path.to_owned(),
            error,
        }
    }
}

/// When a running query must give up: at the instruction's timeout, or
/// when the agent stops.
#[derive(Debug, Clone, Default)]
pub struct Stop {
    deadline: Option<(Instant, Duration)>,
    cancel: Option<CancellationToken>,
}

impl Stop {
    /// Never stops (benchmarks, tests).
    pub fn never() -> Stop {
        Stop::default()
    }

    pub fn new(timeout: Duration, cancel: CancellationToken) -> Stop {
        Stop {
            deadline: Some((Instant::now() + timeout, timeout)),
            cancel: Some(cancel),
        }
    }

    fn check(&self) -> Result<(), QueryError> {
        if self.cancel.as_ref().is_some_and(|c| c.is_cancelled()) {
            return Err(QueryError::Cancelled);
        }
        match self.deadline {
            Some((at, timeout)) if Instant::now() >= at => Err(QueryError::TimedOut(timeout)),
            _ => Ok(()),
        }
    }
}

/// A query's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The returned lines, oldest first, each ending in `\n`.
    pub output: String,
    /// Lines selected by the filters (whole records).
    pub matched: u64,
    /// Lines in `output`.
    pub returned: u64,
    /// Older selected lines were left out to respect the caps.
    pub truncated: bool,
    /// The names of the files read, in the order read.
    pub files: Vec<String>,
}

impl Answer {
    /// The report's `detail`.
    pub fn detail(&self) -> Value {
        json!({
            "matched": self.matched,
            "returned": self.returned,
            "truncated": self.truncated,
            "bytes": self.output.len(),
            "files": self.files,
        })
    }
}

/// Runs the query in `params` (the instruction's params) against the
/// sources of `settings`. Blocking: it reads files.
pub fn run(params: &Value, settings: &Settings, stop: &Stop) -> Result<Answer, QueryError> {
    run_at(params, settings, Utc::now(), stop)
}

fn run_at(
    params: &Value,
    settings: &Settings,
    now: DateTime<Utc>,
    stop: &Stop,
) -> Result<Answer, QueryError> {
    let query = Query::from_params(params)?;
    let path = files::resolve(&query.source, settings)?;
    search(&path, &query, &settings.options, now, stop)
}

/// The report for a query's result.
pub fn report(result: Result<Answer, QueryError>) -> Report {
    match result {
        Ok(answer) => Report {
            status: ReportStatus::Succeeded,
            detail: Some(answer.detail()),
            output: Some(answer.output),
            error: None,
        },
        Err(e) => Report {
            status: match e {
                QueryError::Rejected(_) => ReportStatus::Rejected,
                _ => ReportStatus::Failed,
            },
            output: None,
            error: Some(e.to_string()),
            detail: None,
        },
    }
}

/// A validated query. The platform checks the same rules, with
/// [`params::parse`], when the command is created; checking again here
/// means a bad or forged instruction is refused with a reason instead of
/// misbehaving.
#[derive(Debug)]
struct Query {
    source: String,
    since: Option<Stamp>,
    until: Option<Stamp>,
    pattern: Option<Regex>,
    max_lines: usize,
}

impl Query {
    fn from_params(params: &Value) -> Result<Query, QueryError> {
        let rejected =
            |why: ParamsError| QueryError::Rejected(format!("invalid log_query params: {why}"));
        let params = params::parse_log_query(params).map_err(rejected)?;
        let pattern = params
            .pattern
            .as_deref()
            .map(params::compile_pattern)
            .transpose()
            .map_err(rejected)?;
        Ok(Query {
            since: params.since.as_ref().map(Stamp::of),
            until: params.until.as_ref().map(Stamp::of),
            pattern,
            max_lines: params.max_lines_or_default() as usize,
            source: params.source,
        })
    }

    fn in_range(&self, at: Stamp) -> bool {
        self.since.is_none_or(|since| at >= since) && self.until.is_none_or(|until| at <= until)
    }

    fn timed(&self) -> bool {
        self.since.is_some() || self.until.is_some()
    }
}

/// Reads the files of the source at `path` and collects the answer.
fn search(
    path: &Path,
    query: &Query,
    options: &Options,
    now: DateTime<Utc>,
    stop: &Stop,
) -> Result<Answer, QueryError> {
    let files = files::discover(path, query.since)?;
    let mut parser = Parser::new(options.naive_timezone, now);
    let mut collector = Collector::new(query.max_lines, options.max_output_bytes);
    let mut names = Vec::with_capacity(files.len());
    for file in &files {
        stop.check()?;
        let input = files::open(file)?;
        scan(input, file, query, &mut parser, &mut collector, stop)?;
        names.push(file.name());
    }
    Ok(collector.finish(names))
}

/// How often (in lines) a scan looks at the clock and the shutdown token:
/// rarely enough to cost nothing, often enough to stop within milliseconds.
const CHECK_EVERY: u32 = 4096;

fn scan(
    input: impl Read,
    file: &LogFile,
    query: &Query,
    parser: &mut Parser,
    collector: &mut Collector,
    stop: &Stop,
) -> Result<(), QueryError> {
    let has_pattern = query.pattern.is_some();
    // The lines before the first timestamp: a record without a time.
    collector.begin_record(!query.timed(), has_pattern);
    let mut lines = LineReader::new(input);
    let mut count: u32 = 0;
    loop {
        let line = match lines.next_line() {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(e) => return Err(QueryError::unreadable(&file.path, e)),
        };
        count = count.wrapping_add(1);
        if count.is_multiple_of(CHECK_EVERY) {
            stop.check()?;
        }
        if let Some(at) = parser.parse(line.bytes) {
            collector.end_record();
            collector.begin_record(query.in_range(at), has_pattern);
        }
        collector.line(line.bytes, line.cut, query.pattern.as_ref());
    }
    // A record never continues into the next file.
    collector.end_record();
    Ok(())
}

/// What to do with the lines of the current record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Outside the time range: ignored without running the pattern.
    Skip,
    /// Selected: every line goes to the output.
    Take,
    /// In range, but no line has matched the pattern yet: lines are held
    /// until one does (then the record is taken) or the record ends.
    Hold,
}

/// Collects the newest selected lines.
struct Collector {
    mode: Mode,
    held: Ring,
    out: Ring,
    matched: u64,
    max_bytes: usize,
}

impl Collector {
    fn new(max_lines: usize, max_bytes: usize) -> Collector {
        Collector {
            mode: Mode::Skip,
            // Held lines that would not fit the output could never be
            // returned, so the same caps bound the hold.
            held: Ring::new(max_lines, max_bytes),
            out: Ring::new(max_lines, max_bytes),
            matched: 0,
            max_bytes,
        }
    }

    fn begin_record(&mut self, in_range: bool, has_pattern: bool) {
        self.mode = match (in_range, has_pattern) {
            (false, _) => Mode::Skip,
            (true, false) => Mode::Take,
            (true, true) => Mode::Hold,
        };
    }

    fn end_record(&mut self) {
        self.held.clear();
        self.mode = Mode::Skip;
    }

    fn line(&mut self, line: &[u8], cut: bool, pattern: Option<&Regex>) {
        match self.mode {
            Mode::Skip => {}
            Mode::Take => {
                self.matched += 1;
                self.out.push(line, cut);
            }
            Mode::Hold => {
                if pattern.is_none_or(|p| p.is_match(line)) {
                    self.matched += self.held.len() as u64 + self.held.dropped + 1;
                    for (bytes, cut) in self.held.lines.drain(..) {
                        self.out.push_owned(bytes, cut);
                    }
                    self.held.clear();
                    self.out.push(line, cut);
                    self.mode = Mode::Take;
                } else {
                    self.held.push(line, cut);
                }
            }
        }
    }

    /// The output text, held to the byte cap exactly. The ring measured
    /// raw bytes; a lossy conversion turns each invalid byte into a 3-byte
    /// U+FFFD, so the newest lines are converted first until the cap.
    fn finish(self, files: Vec<String>) -> Answer {
        let mut kept: Vec<String> = Vec::new();
        let mut bytes = 0;
        for (line, cut) in self.out.lines.iter().rev() {
            let mut text = text_of(line);
            if *cut {
                text.push_str(CUT_MARK);
            }
            text.push('\n');
            if bytes + text.len() > self.max_bytes {
                break;
            }
            bytes += text.len();
            kept.push(text);
        }
        let mut output = String::with_capacity(bytes);
        for text in kept.iter().rev() {
            output.push_str(text);
        }
        let returned = kept.len() as u64;
        Answer {
            output,
            matched: self.matched,
            returned,
            truncated: returned < self.matched,
            files,
        }
    }
}

/// A line as text: invalid UTF-8 and NUL (which PostgreSQL's jsonb
/// refuses) become U+FFFD.
fn text_of(line: &[u8]) -> String {
    let mut text = String::from_utf8_lossy(line).into_owned();
    replace_nul_string(&mut text);
    text
}

/// The newest lines pushed, within a line and a byte cap.
struct Ring {
    lines: VecDeque<(Vec<u8>, bool)>,
    bytes: usize,
    /// Lines pushed out at the front since the last `clear`.
    dropped: u64,
    max_lines: usize,
    max_bytes: usize,
    /// Buffers of lines that left, reused so that a scan does not allocate
    /// per line.
    spare: Vec<Vec<u8>>,
}

/// Spare buffers kept, and the largest kept: enough to recycle ordinary
/// lines, without hoarding the memory of a few huge ones.
const SPARE_BUFFERS: usize = 64;
const SPARE_CAPACITY: usize = 4096;

impl Ring {
    fn new(max_lines: usize, max_bytes: usize) -> Ring {
        Ring {
            lines: VecDeque::new(),
            bytes: 0,
            dropped: 0,
            max_lines,
            max_bytes,
            spare: Vec::new(),
        }
    }

    fn len(&self) -> usize {
        self.lines.len()
    }

    fn push(&mut self, line: &[u8], cut: bool) {
        let mut buffer = self.spare.pop().unwrap_or_default();
        buffer.clear();
        buffer.extend_from_slice(line);
        self.push_owned(buffer, cut);
    }

    fn push_owned(&mut self, line: Vec<u8>, cut: bool) {
        self.bytes += cost(&line, cut);
        self.lines.push_back((line, cut));
        while self.lines.len() > self.max_lines || self.bytes > self.max_bytes {
            let Some((old, old_cut)) = self.lines.pop_front() else {
                break;
            };
            self.bytes -= cost(&old, old_cut);
            self.dropped += 1;
            self.recycle(old);
        }
    }

    fn clear(&mut self) {
        while let Some((line, _)) = self.lines.pop_front() {
            self.recycle(line);
        }
        self.bytes = 0;
        self.dropped = 0;
    }

    fn recycle(&mut self, buffer: Vec<u8>) {
        if self.spare.len() < SPARE_BUFFERS && buffer.capacity() <= SPARE_CAPACITY {
            self.spare.push(buffer);
        }
    }
}

/// A line's size in the output, before the lossy conversion.
fn cost(line: &[u8], cut: bool) -> usize {
    line.len() + 1 + if cut { CUT_MARK.len() } else { 0 }
}

#[cfg(test)]
mod tests;
