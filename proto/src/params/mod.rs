//! The params of each command kind, and the one function that checks them.
//!
//! The platform checks a command's params when it is created, so a mistake
//! is answered at once with a 422 instead of being discovered on the
//! device; the agent checks them again before acting, so a forged or
//! corrupted instruction is refused with a reason instead of misbehaving.
//! Both call [`parse`]: one set of rules and one wording, on both sides of
//! the device boundary.
//!
//! The messages are written for the admin who sent the command; the e2e
//! tests assert on some of them, so change them with care.

use std::fmt;

use chrono::{DateTime, Utc};
use regex::bytes::{Regex, RegexBuilder};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::command::CommandKind;

mod software;

pub use self::software::{
    ArtifactRef, RestoreParams, RestoreSource, UpgradeParams, is_component_name,
};

/// The most lines one log query may ask for.
pub const LOG_QUERY_MAX_LINES: u64 = 10_000;
/// `max_lines` when a log query does not say.
pub const LOG_QUERY_DEFAULT_MAX_LINES: u64 = 1_000;
/// The longest pattern accepted, in bytes; longer ones are more likely
/// mistakes than queries, and the device compiles them.
pub const LOG_QUERY_MAX_PATTERN_BYTES: usize = 1024;
/// The longest source name, in bytes.
pub const LOG_QUERY_MAX_SOURCE_BYTES: usize = 64;
/// The memory a compiled pattern may take (1 MiB). The regex crate matches
/// in linear time, so no pattern can make a query hang; this bounds what
/// compiling a pathological one may cost the device.
const PATTERN_SIZE_LIMIT: usize = 1 << 20;

/// The keys of `log_query` params, in the order the messages list them.
const LOG_QUERY_KEYS: [&str; 5] = ["source", "since", "until", "pattern", "max_lines"];

/// A command's params, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandParams {
    Reboot,
    Shutdown,
    LogQuery(LogQueryParams),
    Upgrade(UpgradeParams),
    Restore(RestoreParams),
}

impl CommandParams {
    pub fn kind(&self) -> CommandKind {
        match self {
            CommandParams::Reboot => CommandKind::Reboot,
            CommandParams::Shutdown => CommandKind::Shutdown,
            CommandParams::LogQuery(_) => CommandKind::LogQuery,
            CommandParams::Upgrade(_) => CommandKind::Upgrade,
            CommandParams::Restore(_) => CommandKind::Restore,
        }
    }
}

/// `log_query` params: `{source, since?, until?, pattern?, max_lines?}`.
///
/// A value of this type has passed [`parse`]'s checks: deserializing one
/// runs them too, so there is no way to hold an unchecked query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LogQueryParams {
    /// The log source to read: a name from the agent's `[log_sources]`, or
    /// `operations` for the agent's own operation log. Never a path: 1 to
    /// 64 of ASCII letters, digits, `.`, `_` and `-`, and not `.` or `..`.
    #[cfg_attr(
        feature = "openapi",
        schema(
            min_length = 1,
            max_length = 64,
            pattern = r"^[A-Za-z0-9._-]{1,64}$",
            example = "app"
        )
    )]
    pub source: String,
    /// Only records written at or after this time (RFC 3339, inclusive).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
    /// Only records written at or before this time (RFC 3339, inclusive);
    /// not before `since`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    /// A regular expression (Rust `regex` syntax, at most 1024 bytes); a
    /// record is returned when one of its lines matches.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_length = 1024, example = "ERROR|WARN"))]
    pub pattern: Option<String>,
    /// At most this many lines are returned, the newest: 1 to 10000,
    /// 1000 when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 10000))]
    pub max_lines: Option<u64>,
}

impl LogQueryParams {
    /// `max_lines`, or its default when absent.
    pub fn max_lines_or_default(&self) -> u64 {
        self.max_lines.unwrap_or(LOG_QUERY_DEFAULT_MAX_LINES)
    }
}

/// Deserializing checks what [`parse`] checks, with the same messages.
impl<'de> Deserialize<'de> for LogQueryParams {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        parse_log_query(&value).map_err(serde::de::Error::custom)
    }
}

/// Why params were refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamsError {
    /// The params do not fit the kind; the message says what is wrong.
    Invalid(String),
}

impl ParamsError {
    fn invalid(message: impl Into<String>) -> ParamsError {
        ParamsError::Invalid(message.into())
    }
}

impl fmt::Display for ParamsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamsError::Invalid(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for ParamsError {}

/// Checks the params of a command of `kind`.
///
/// Refused: params of `reboot` and `shutdown` other than `{}`; for
/// `log_query`, params that are not an object, an unknown key, a source
/// name that is a path, a time that is not strictly RFC 3339, `since`
/// after `until`, a pattern too long or that does not compile, `max_lines`
/// that is not a whole number from 1 to 10000; for `upgrade` and
/// `restore`, what [`UpgradeParams`] and [`RestoreParams`] do not describe.
/// A `null` optional key is absent.
pub fn parse(kind: CommandKind, params: &Value) -> Result<CommandParams, ParamsError> {
    match kind {
        CommandKind::Reboot | CommandKind::Shutdown => match params {
            Value::Object(m) if m.is_empty() => Ok(match kind {
                CommandKind::Reboot => CommandParams::Reboot,
                _ => CommandParams::Shutdown,
            }),
            _ => Err(ParamsError::invalid(format!(
                "{kind} takes no params: send {{}}"
            ))),
        },
        CommandKind::LogQuery => parse_log_query(params).map(CommandParams::LogQuery),
        CommandKind::Upgrade => software::parse_upgrade(params).map(CommandParams::Upgrade),
        CommandKind::Restore => software::parse_restore(params).map(CommandParams::Restore),
    }
}

/// Whether `name` can name a log source: 1 to 64 of ASCII letters,
/// digits, `.`, `_` and `-`, and not `.` or `..`. A source is a name from
/// the agent's `[log_sources]`, never a path.
pub fn is_source_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= LOG_QUERY_MAX_SOURCE_BYTES
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Compiles a log query's pattern with the limits [`parse`] checks it
/// against, so that a pattern accepted by the platform compiles on the
/// device. The error is one line.
pub fn compile_pattern(pattern: &str) -> Result<Regex, ParamsError> {
    if pattern.len() > LOG_QUERY_MAX_PATTERN_BYTES {
        return Err(ParamsError::invalid(format!(
            "pattern is longer than {LOG_QUERY_MAX_PATTERN_BYTES} bytes"
        )));
    }
    RegexBuilder::new(pattern)
        .size_limit(PATTERN_SIZE_LIMIT)
        .build()
        .map_err(|e| {
            // The regex crate's message spans several lines, pointing at
            // the error under a copy of the pattern.
            let why = e
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            ParamsError::invalid(format!("pattern does not compile: {why}"))
        })
}

/// Checks `log_query` params: what [`parse`] does for that kind, for a
/// caller that knows the kind already (the agent's query).
pub fn parse_log_query(params: &Value) -> Result<LogQueryParams, ParamsError> {
    let Value::Object(p) = params else {
        return Err(ParamsError::invalid("log_query params must be an object"));
    };
    if let Some(key) = p.keys().find(|k| !LOG_QUERY_KEYS.contains(&k.as_str())) {
        return Err(ParamsError::invalid(format!(
            "log_query has no param {key:?}: use {}",
            LOG_QUERY_KEYS.join(", ")
        )));
    }
    let source = p
        .get("source")
        .and_then(Value::as_str)
        .ok_or_else(|| ParamsError::invalid("log_query needs a source (a string)"))?;
    if !is_source_name(source) {
        return Err(ParamsError::invalid(
            "source must name a log source (1 to 64 of letters, digits, '.', '_', '-'), not a path",
        ));
    }
    let since = time(p, "since")?;
    let until = time(p, "until")?;
    if let (Some(since), Some(until)) = (since, until)
        && since > until
    {
        return Err(ParamsError::invalid("since must not be after until"));
    }
    let pattern = match present(p, "pattern") {
        None => None,
        Some(Value::String(pattern)) => {
            compile_pattern(pattern)?;
            Some(pattern.clone())
        }
        Some(_) => return Err(ParamsError::invalid("pattern must be a string")),
    };
    let max_lines = match present(p, "max_lines") {
        None => None,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=LOG_QUERY_MAX_LINES).contains(&n) => Some(n),
            _ => {
                return Err(ParamsError::invalid(format!(
                    "max_lines must be a whole number from 1 to {LOG_QUERY_MAX_LINES}"
                )));
            }
        },
    };
    Ok(LogQueryParams {
        source: source.to_owned(),
        since,
        until,
        pattern,
        max_lines,
    })
}

/// The value of `key`, `null` counting as absent.
fn present<'a>(p: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    p.get(key).filter(|v| !v.is_null())
}

/// An RFC 3339 time, with its offset. Strictly RFC 3339: chrono's
/// `FromStr` is more lenient than what the contract promises to accept.
fn time(p: &Map<String, Value>, key: &str) -> Result<Option<DateTime<Utc>>, ParamsError> {
    match present(p, key) {
        None => Ok(None),
        Some(Value::String(s)) => DateTime::parse_from_rfc3339(s)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|e| ParamsError::invalid(format!("{key} is not an RFC 3339 time: {e}"))),
        Some(_) => Err(ParamsError::invalid(format!(
            "{key} must be an RFC 3339 string"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// What the platform sends: a kind name and its params.
    fn check(kind: &str, params: &Value) -> Result<CommandParams, ParamsError> {
        let kind = kind
            .parse::<CommandKind>()
            .map_err(|e| ParamsError::invalid(e.to_string()))?;
        parse(kind, params)
    }

    fn refusal(kind: &str, params: Value) -> String {
        match check(kind, &params) {
            Err(e) => e.to_string(),
            Ok(p) => panic!("{kind} {params}: accepted as {p:?}"),
        }
    }

    #[test]
    fn only_reboot_and_shutdown_with_empty_params_are_accepted() {
        assert!(check("reboot", &json!({})).is_ok());
        assert!(check("shutdown", &json!({})).is_ok());
        assert!(check("reboot", &json!({"force": true})).is_err());
        assert!(check("reboot", &json!([])).is_err());
        assert!(check("upgrade", &json!({})).is_err());
        assert!(check("rm -rf", &json!({})).is_err());
    }

    #[test]
    fn log_queries_are_checked_when_queued() {
        let ok = |p: Value| check("log_query", &p).is_ok();
        assert!(ok(json!({ "source": "app" })));
        assert!(ok(
            json!({ "source": "operations", "since": "2026-11-21T10:00:00Z",
            "until": "2026-11-21T11:00:00+01:00", "pattern": "ERROR|WARN", "max_lines": 10000 })
        ));
        assert!(ok(
            json!({ "source": "app", "since": "2026-11-21T10:00:00Z",
            "until": "2026-11-21T10:00:00Z" })
        ));
        assert!(!ok(json!({})));
        assert!(!ok(json!({ "source": "../etc/shadow" })));
        assert!(!ok(json!({ "source": "/var/log/syslog" })));
        assert!(!ok(json!({ "source": ".." })));
        assert!(!ok(json!({ "source": 5 })));
        assert!(!ok(json!({ "source": "app", "since": "yesterday" })));
        assert!(!ok(
            json!({ "source": "app", "since": "2026-11-21T11:00:00Z",
            "until": "2026-11-21T10:00:00Z" })
        ));
        assert!(!ok(json!({ "source": "app", "pattern": "(unclosed" })));
        assert!(!ok(json!({ "source": "app", "max_lines": 0 })));
        assert!(!ok(json!({ "source": "app", "max_lines": 10001 })));
        assert!(!ok(json!({ "source": "app", "max_lines": 2.5 })));
        assert!(!ok(json!({ "source": "app", "tail": true })));
    }

    #[test]
    fn each_refusal_says_what_is_wrong_in_one_line() {
        for (kind, params, expected) in [
            (
                "reboot",
                json!({"now": true}),
                "reboot takes no params: send {}",
            ),
            ("shutdown", json!(null), "shutdown takes no params: send {}"),
            (
                "upgrade",
                json!({}),
                "invalid upgrade params: missing field `artifact_id`",
            ),
            (
                "restore",
                json!({}),
                "invalid restore params: missing field `component`",
            ),
            (
                "log_query",
                json!(null),
                "log_query params must be an object",
            ),
            (
                "log_query",
                json!({"source": "app", "lines": 5}),
                "log_query has no param \"lines\": use source, since, until, pattern, max_lines",
            ),
            (
                "log_query",
                json!({}),
                "log_query needs a source (a string)",
            ),
            (
                "log_query",
                json!({"source": null}),
                "log_query needs a source (a string)",
            ),
            (
                "log_query",
                json!({"source": "a/b"}),
                "source must name a log source (1 to 64 of letters, digits, '.', '_', '-'), not a path",
            ),
            (
                "log_query",
                json!({"source": "app", "since": "yesterday"}),
                "since is not an RFC 3339 time: ",
            ),
            (
                "log_query",
                json!({"source": "app", "until": "2026-11-21T10:00Z"}),
                "until is not an RFC 3339 time: ",
            ),
            (
                "log_query",
                json!({"source": "app", "until": 5}),
                "until must be an RFC 3339 string",
            ),
            (
                "log_query",
                json!({"source": "app", "since": "2026-11-21T11:00:00Z", "until": "2026-11-21T10:00:00Z"}),
                "since must not be after until",
            ),
            (
                "log_query",
                json!({"source": "app", "pattern": "x".repeat(1025)}),
                "pattern is longer than 1024 bytes",
            ),
            (
                "log_query",
                json!({"source": "app", "pattern": "("}),
                "pattern does not compile: regex parse error: ",
            ),
            (
                "log_query",
                json!({"source": "app", "pattern": 5}),
                "pattern must be a string",
            ),
            (
                "log_query",
                json!({"source": "app", "max_lines": "5"}),
                "max_lines must be a whole number from 1 to 10000",
            ),
            (
                "log_query",
                json!({"source": "app", "max_lines": -1}),
                "max_lines must be a whole number from 1 to 10000",
            ),
        ] {
            let why = refusal(kind, params.clone());
            assert!(why.starts_with(expected), "{kind} {params}: {why}");
            assert!(!why.contains('\n'), "one line: {why}");
        }
    }

    #[test]
    fn source_names_are_names_never_paths() {
        for name in [
            "app",
            "operations",
            "kiosk.web_1-b",
            "..app",
            "a".repeat(64).as_str(),
        ] {
            assert!(is_source_name(name), "{name:?}");
        }
        for name in [
            "",
            ".",
            "..",
            "a/b",
            "/etc/shadow",
            "a b",
            "é",
            "a\0",
            "a".repeat(65).as_str(),
        ] {
            assert!(!is_source_name(name), "{name:?}");
        }
    }

    #[test]
    fn a_checked_query_carries_its_values_and_null_means_absent() {
        let Ok(CommandParams::LogQuery(query)) = check(
            "log_query",
            &json!({ "source": "app", "since": "2026-11-21T11:00:00+01:00",
                     "until": null, "pattern": "ERROR", "max_lines": 5 }),
        ) else {
            panic!("refused");
        };
        assert_eq!(
            query,
            LogQueryParams {
                source: "app".into(),
                since: Some("2026-11-21T10:00:00Z".parse().unwrap()),
                until: None,
                pattern: Some("ERROR".into()),
                max_lines: Some(5),
            }
        );
        assert_eq!(query.max_lines_or_default(), 5);
        let bare = LogQueryParams {
            max_lines: None,
            ..query.clone()
        };
        assert_eq!(bare.max_lines_or_default(), LOG_QUERY_DEFAULT_MAX_LINES);
        assert_eq!(
            serde_json::to_value(&query).unwrap(),
            json!({ "source": "app", "since": "2026-11-21T10:00:00Z",
                    "pattern": "ERROR", "max_lines": 5 })
        );
    }

    #[test]
    fn deserializing_runs_the_same_checks() {
        let query: LogQueryParams =
            serde_json::from_value(json!({ "source": "app", "max_lines": 3 })).unwrap();
        assert_eq!(query.max_lines, Some(3));
        let e =
            serde_json::from_value::<LogQueryParams>(json!({ "source": "app", "max_lines": 0 }))
                .unwrap_err();
        assert!(
            e.to_string().contains("max_lines must be a whole number"),
            "{e}"
        );
    }

    #[cfg(feature = "openapi")]
    #[test]
    fn the_openapi_schema_describes_what_is_checked() {
        use utoipa::PartialSchema;
        let schema = serde_json::to_value(LogQueryParams::schema()).unwrap();
        assert_eq!(schema["required"], json!(["source"]), "{schema}");
        assert_eq!(schema["additionalProperties"], json!(false), "{schema}");
        let properties = &schema["properties"];
        assert_eq!(properties["source"]["maxLength"], 64, "{schema}");
        assert_eq!(properties["since"]["format"], "date-time", "{schema}");
        assert_eq!(properties["max_lines"]["minimum"], 1, "{schema}");
        assert_eq!(properties["max_lines"]["maximum"], 10000, "{schema}");
        assert!(
            properties["pattern"]["description"]
                .as_str()
                .is_some_and(|d| d.contains("regular expression")),
            "{schema}"
        );
    }

    #[test]
    fn a_pattern_accepted_here_compiles_on_the_device() {
        let regex = compile_pattern("ERROR|WARN").unwrap();
        assert!(regex.is_match(b"2026-11-21T10:00:00Z WARN slow"));
        assert!(compile_pattern("(").is_err());
    }
}
