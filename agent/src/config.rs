//! The agent's configuration file (TOML), as fixed by CONTRACT.md.
//!
//! Parsing and validation happen together so that a bad file stops the agent
//! at startup with one line saying what is wrong, instead of failing later
//! on the device where nobody reads the logs.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use serde::Deserialize;
use uuid::Uuid;

use crate::logquery::{self, NaiveZone};
use crate::oplog;
use crate::peer;
use crate::software;
use crate::trust::Trust;

/// Everything the agent needs to know, validated.
#[derive(Clone)]
pub struct Config {
    /// The file this was read from; a new agent binary is tried with it
    /// before it replaces the running one.
    pub path: Option<PathBuf>,
    /// Base URL of `tend-sync`, without a trailing slash.
    pub server_url: String,
    /// `ca_file`: a private CA trusted beside the system's roots.
    pub ca_file: Option<crate::tls::CaFile>,
    /// Nil until [`crate::identity::establish`] gives an enrolling device
    /// its identity (stored, or enrolled for).
    pub device_id: Uuid,
    /// Resolved from `device_secret_file` when that key is used.
    pub device_secret: String,
    /// `enrolment_token` (or `enrolment_token_file`), `device_type`,
    /// `device_name` and `[device_labels]`: how a device without
    /// `device_id` gets its identity. `None` when the file holds one.
    pub enrolment: Option<Enrolment>,
    /// Holds the journal, the operation log and the actions' output files.
    pub state_dir: PathBuf,
    /// Read once at startup; a changed value proves that a reboot happened.
    pub boot_id_file: PathBuf,
    pub actions: Actions,
    /// Upper bound on one HTTP exchange with the server, so a half-open
    /// connection cannot stall the heartbeat loop.
    pub request_timeout_s: u64,
    /// Ask the server to hold each heartbeat until work arrives (for up to
    /// one interval), so a command reaches the device at once instead of
    /// at the next heartbeat, for the same number of requests.
    pub long_poll: bool,
    /// What `log_query` may read: `[log_sources]` (a missing file is not an
    /// error, because logs often appear after the agent starts) and the
    /// operation log; and `[log_query]`, how timestamps are read and how
    /// much one query returns.
    pub log_query: logquery::Settings,
    /// `[operations_log]`: when `operations.log` is rotated and how many
    /// old files are kept.
    pub operations_log: oplog::Settings,
    /// `[components.NAME]`, `[download]`, `update_check_s`: the software
    /// the agent installs, rolls back and restores.
    pub software: software::Settings,
    /// `[peer]`: LAN peer recovery (seed 000), serving this device's
    /// images to peers of its type and fetching from them.
    pub peer: peer::PeerSettings,
    /// `signing_keys` and `accept_unsigned`: which instructions run.
    pub trust: Trust,
}

/// How the agent enrols when the file gives it no identity.
#[derive(Clone)]
pub struct Enrolment {
    token: EnrolmentToken,
    pub device_type: String,
    /// `device_name`, else the host name; the server names the device when
    /// neither is usable.
    pub name: Option<String>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone)]
enum EnrolmentToken {
    Inline(String),
    /// Read when enrolling, not at start: once enrolled, the agent needs
    /// it no more, and an operator may delete it.
    File(PathBuf),
}

impl Enrolment {
    /// The token, read from its file if it has one.
    pub fn token(&self) -> anyhow::Result<String> {
        let token = match &self.token {
            EnrolmentToken::Inline(token) => token.clone(),
            EnrolmentToken::File(file) => std::fs::read_to_string(file)
                .with_context(|| format!("cannot read enrolment_token_file {}", file.display()))?
                .trim()
                .to_owned(),
        };
        if token.is_empty() {
            bail!("the enrolment token is empty");
        }
        Ok(token)
    }
}

/// The token stays out of logs and panic messages.
impl fmt::Debug for Enrolment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Enrolment")
            .field("token", &"<redacted>")
            .field("device_type", &self.device_type)
            .field("name", &self.name)
            .field("labels", &self.labels)
            .finish()
    }
}

/// The argv that performs each action.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Actions {
    #[serde(default = "default_reboot")]
    pub reboot: Vec<String>,
    #[serde(default = "default_shutdown")]
    pub shutdown: Vec<String>,
}

impl Default for Actions {
    fn default() -> Self {
        Actions {
            reboot: default_reboot(),
            shutdown: default_shutdown(),
        }
    }
}

fn default_reboot() -> Vec<String> {
    vec!["systemctl".into(), "reboot".into()]
}

fn default_shutdown() -> Vec<String> {
    vec!["systemctl".into(), "poweroff".into()]
}

pub const DEFAULT_STATE_DIR: &str = "/var/lib/tend-agent";
pub const DEFAULT_BOOT_ID_FILE: &str = "/proc/sys/kernel/random/boot_id";
/// Long enough for a slow cellular link, short enough that a dead
/// connection is noticed within one heartbeat interval.
pub const DEFAULT_REQUEST_TIMEOUT_S: u64 = 30;

/// The file as written; unknown keys are refused so that a typo in a key
/// name is reported instead of silently falling back to a default.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server_url: String,
    ca_file: Option<PathBuf>,
    device_id: Option<String>,
    device_secret: Option<String>,
    device_secret_file: Option<PathBuf>,
    enrolment_token: Option<String>,
    enrolment_token_file: Option<PathBuf>,
    device_type: Option<String>,
    device_name: Option<String>,
    #[serde(default)]
    device_labels: BTreeMap<String, String>,
    state_dir: Option<PathBuf>,
    boot_id_file: Option<PathBuf>,
    #[serde(default)]
    actions: Actions,
    #[serde(default)]
    log_sources: BTreeMap<String, PathBuf>,
    request_timeout_s: Option<u64>,
    long_poll: Option<bool>,
    #[serde(default)]
    log_query: RawLogQuery,
    #[serde(default)]
    operations_log: RawOperationsLog,
    #[serde(default)]
    components: BTreeMap<String, software::settings::RawComponent>,
    #[serde(default)]
    download: software::settings::RawDownload,
    update_check_s: Option<u64>,
    agent_proof_s: Option<u64>,
    #[serde(default)]
    peer: peer::settings::RawPeer,
    #[serde(default)]
    signing_keys: Vec<String>,
    #[serde(default)]
    accept_unsigned: bool,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLogQuery {
    naive_timezone: Option<String>,
    max_output_bytes: Option<usize>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOperationsLog {
    max_bytes: Option<u64>,
    keep: Option<u32>,
}

/// Bounds of `log_query.max_output_bytes`: below a few KiB a query returns
/// next to nothing; above 16 MiB the report would outgrow what a server is
/// sensibly configured to accept in one body.
const MAX_OUTPUT_BYTES_RANGE: std::ops::RangeInclusive<usize> = 4096..=16 * 1024 * 1024;

impl Config {
    /// Reads and validates the configuration file at `path`.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let mut config = Config::from_toml_str(&text)
            .with_context(|| format!("config file {}", path.display()))?;
        config.path = Some(std::path::absolute(path).unwrap_or_else(|_| path.to_owned()));
        Ok(config)
    }

    /// Parses and validates a configuration. A relative
    /// `device_secret_file` is relative to the working directory.
    pub fn from_toml_str(text: &str) -> anyhow::Result<Config> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| one_line(text, &e))?;

        let server_url = validate_url(&raw.server_url)?;
        let ca_file = raw
            .ca_file
            .as_deref()
            .map(crate::tls::CaFile::load)
            .transpose()?;
        let enrolment = enrolment(
            raw.enrolment_token,
            raw.enrolment_token_file,
            raw.device_type,
            raw.device_name,
            raw.device_labels,
        )?;
        let (device_id, device_secret, enrolment) = match raw.device_id {
            Some(device_id) => {
                let device_id = Uuid::parse_str(device_id.trim())
                    .map_err(|e| anyhow!("device_id {device_id:?} is not a UUID: {e}"))?;
                let device_secret = match (raw.device_secret, raw.device_secret_file) {
                    (Some(_), Some(_)) => {
                        bail!("set device_secret or device_secret_file, not both")
                    }
                    (None, None) => {
                        bail!("missing device secret: set device_secret or device_secret_file")
                    }
                    (Some(secret), None) => secret,
                    (None, Some(file)) => std::fs::read_to_string(&file)
                        .with_context(|| {
                            format!("cannot read device_secret_file {}", file.display())
                        })?
                        .trim()
                        .to_owned(),
                };
                if device_secret.trim().is_empty() {
                    bail!("the device secret is empty");
                }
                // The file's identity wins: there is nothing to enrol for.
                (device_id, device_secret, None)
            }
            None => {
                if raw.device_secret.is_some() || raw.device_secret_file.is_some() {
                    bail!("a device secret without device_id: set both, or neither to enrol");
                }
                let Some(enrolment) = enrolment else {
                    bail!(
                        "missing device_id: set device_id and device_secret, or \
                         enrolment_token and device_type to enrol"
                    );
                };
                (Uuid::nil(), String::new(), Some(enrolment))
            }
        };
        for (name, argv) in [
            ("reboot", &raw.actions.reboot),
            ("shutdown", &raw.actions.shutdown),
        ] {
            if argv.first().is_none_or(|program| program.trim().is_empty()) {
                bail!("actions.{name} must name a program to run (it is an empty argv)");
            }
        }
        let request_timeout_s = raw.request_timeout_s.unwrap_or(DEFAULT_REQUEST_TIMEOUT_S);
        if request_timeout_s == 0 {
            bail!("request_timeout_s must be at least 1");
        }
        let state_dir = raw
            .state_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        if state_dir.as_os_str().is_empty() {
            bail!("state_dir is empty");
        }
        for (name, path) in &raw.log_sources {
            // Names are what a query sends, and a query names only what
            // the protocol allows: any other key could never be used.
            if !tend_proto::params::is_source_name(name) {
                bail!(
                    "log_sources: {name:?} is not a valid name (1 to 64 of letters, digits, \
                     '.', '_', '-'; no `/` or `..`)"
                );
            }
            if name == logquery::OPERATIONS {
                bail!(
                    "log_sources: {name:?} is reserved for the agent's own operation log; pick another name"
                );
            }
            if !path.is_absolute() {
                bail!(
                    "log_sources.{name}: {} must be an absolute path",
                    path.display()
                );
            }
        }
        let options = logquery::Options {
            naive_timezone: match raw.log_query.naive_timezone {
                Some(zone) => zone
                    .parse::<NaiveZone>()
                    .map_err(|e| anyhow!("log_query.naive_timezone: {e}"))?,
                None => NaiveZone::Utc,
            },
            max_output_bytes: raw
                .log_query
                .max_output_bytes
                .unwrap_or(logquery::DEFAULT_MAX_OUTPUT_BYTES),
        };
        if !MAX_OUTPUT_BYTES_RANGE.contains(&options.max_output_bytes) {
            bail!(
                "log_query.max_output_bytes must be between {} and {}",
                MAX_OUTPUT_BYTES_RANGE.start(),
                MAX_OUTPUT_BYTES_RANGE.end()
            );
        }
        let operations_log = oplog::Settings {
            max_bytes: raw
                .operations_log
                .max_bytes
                .unwrap_or(oplog::DEFAULT_MAX_BYTES),
            keep: raw.operations_log.keep.unwrap_or(oplog::DEFAULT_KEEP),
        };
        if operations_log.max_bytes < oplog::MIN_MAX_BYTES {
            bail!(
                "operations_log.max_bytes must be at least {}",
                oplog::MIN_MAX_BYTES
            );
        }
        // Older files than a query reads would be kept for nobody.
        if operations_log.keep > logquery::MAX_ROTATIONS {
            bail!(
                "operations_log.keep must be at most {}",
                logquery::MAX_ROTATIONS
            );
        }
        let log_query = logquery::Settings {
            sources: raw.log_sources,
            operations_log: state_dir.join(oplog::FILE_NAME),
            options,
        };

        let software = software::Settings::parse(
            raw.components,
            raw.download,
            raw.update_check_s,
            raw.agent_proof_s,
        )?;
        let peer = peer::PeerSettings::parse(raw.peer)?;
        let trust = Trust::new(&raw.signing_keys, raw.accept_unsigned)?;

        Ok(Config {
            path: None,
            server_url,
            ca_file,
            device_id,
            device_secret,
            enrolment,
            state_dir,
            boot_id_file: raw
                .boot_id_file
                .unwrap_or_else(|| PathBuf::from(DEFAULT_BOOT_ID_FILE)),
            actions: raw.actions,
            request_timeout_s,
            long_poll: raw.long_poll.unwrap_or(true),
            log_query,
            operations_log,
            software,
            peer,
            trust,
        })
    }
}

/// The secret stays out of logs and panic messages.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("server_url", &self.server_url)
            .field("ca_file", &self.ca_file)
            .field("device_id", &self.device_id)
            .field("device_secret", &"<redacted>")
            .field("enrolment", &self.enrolment)
            .field("state_dir", &self.state_dir)
            .field("boot_id_file", &self.boot_id_file)
            .field("actions", &self.actions)
            .field("request_timeout_s", &self.request_timeout_s)
            .field("long_poll", &self.long_poll)
            .field("log_query", &self.log_query)
            .field("operations_log", &self.operations_log)
            .field("software", &self.software)
            .field("peer", &self.peer)
            .field("trust", &self.trust)
            .finish()
    }
}

/// The enrolment keys, checked; `None` without a token.
fn enrolment(
    token: Option<String>,
    token_file: Option<PathBuf>,
    device_type: Option<String>,
    name: Option<String>,
    labels: BTreeMap<String, String>,
) -> anyhow::Result<Option<Enrolment>> {
    let token = match (token, token_file) {
        (Some(_), Some(_)) => bail!("set enrolment_token or enrolment_token_file, not both"),
        (None, None) => return Ok(None),
        (Some(token), None) if token.trim().is_empty() => bail!("enrolment_token is empty"),
        (Some(token), None) => EnrolmentToken::Inline(token.trim().to_owned()),
        (None, Some(file)) => EnrolmentToken::File(file),
    };
    let Some(device_type) = device_type else {
        bail!("enrolling needs device_type: the type this device enrols as");
    };
    if !tend_proto::device::is_device_type(&device_type) {
        bail!("device_type {device_type:?} must be 1 to 64 of letters, digits, '.', '_' and '-'");
    }
    if let Some(why) = tend_proto::device::labels_problem(&labels) {
        bail!("device_labels: {why}");
    }
    let usable = |n: &String| {
        let n = n.trim();
        !n.is_empty() && n.chars().count() <= 200 && !n.chars().any(char::is_control)
    };
    if let Some(name) = &name
        && !usable(name)
    {
        bail!("device_name must be 1 to 200 printable characters");
    }
    let name = name.or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(usable)
    });
    Ok(Some(Enrolment {
        token,
        device_type,
        name,
        labels,
    }))
}

fn validate_url(raw: &str) -> anyhow::Result<String> {
    let url = reqwest::Url::parse(raw.trim())
        .map_err(|e| anyhow!("server_url {raw:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        bail!("server_url {raw:?} must be an http:// or https:// URL with a host");
    }
    if url.query().is_some() || url.fragment().is_some() {
        bail!("server_url {raw:?} must not have a query or fragment");
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// toml's own message spans several lines with a source excerpt; the
/// contract asks for one line.
fn one_line(text: &str, e: &toml::de::Error) -> anyhow::Error {
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            anyhow!("line {line}: {}", e.message().trim())
        }
        None => anyhow!("{}", e.message().trim()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "6f1c1a52-8d7e-4f2b-9a51-2f6e8c1d0b11";

    fn minimal() -> String {
        format!(
            "server_url = \"http://127.0.0.1:8081/\"\ndevice_id = \"{ID}\"\ndevice_secret = \"s3cret\"\n\
             accept_unsigned = true\n"
        )
    }

    fn error_of(text: &str) -> String {
        let e = Config::from_toml_str(text).unwrap_err();
        let message = format!("{e:#}");
        assert!(!message.contains('\n'), "not one line: {message}");
        message
    }

    #[test]
    fn a_minimal_file_gets_the_documented_defaults() {
        let config = Config::from_toml_str(&minimal()).unwrap();
        assert_eq!(config.server_url, "http://127.0.0.1:8081");
        assert_eq!(config.device_id.to_string(), ID);
        assert_eq!(config.device_secret, "s3cret");
        assert_eq!(config.state_dir, Path::new(DEFAULT_STATE_DIR));
        assert_eq!(config.boot_id_file, Path::new(DEFAULT_BOOT_ID_FILE));
        assert_eq!(config.actions.reboot, ["systemctl", "reboot"]);
        assert_eq!(config.actions.shutdown, ["systemctl", "poweroff"]);
        assert!(config.log_query.sources.is_empty());
        assert_eq!(config.request_timeout_s, DEFAULT_REQUEST_TIMEOUT_S);
        assert_eq!(
            config.log_query.operations_log,
            Path::new(DEFAULT_STATE_DIR).join("operations.log")
        );
        assert_eq!(config.log_query.options, logquery::Options::default());
        assert_eq!(config.log_query.options.naive_timezone, NaiveZone::Utc);
        assert_eq!(config.log_query.options.max_output_bytes, 1024 * 1024);
        assert_eq!(config.operations_log, oplog::Settings::default());
        assert_eq!(config.operations_log.max_bytes, 10 * 1024 * 1024);
        assert_eq!(config.operations_log.keep, 5);
    }

    #[test]
    fn log_query_and_operations_log_settings_are_read_and_checked() {
        let config = Config::from_toml_str(&format!(
            "{}[log_query]\nnaive_timezone = \"local\"\nmax_output_bytes = 65536\n\
             [operations_log]\nmax_bytes = 100000\nkeep = 0\n",
            minimal()
        ))
        .unwrap();
        assert_eq!(config.log_query.options.naive_timezone, NaiveZone::Local);
        assert_eq!(config.log_query.options.max_output_bytes, 65536);
        assert_eq!(config.operations_log.max_bytes, 100_000);
        assert_eq!(config.operations_log.keep, 0);

        for (rest, expected) in [
            (
                "[log_query]\nnaive_timezone = \"Europe/Paris\"\n",
                "naive_timezone",
            ),
            ("[log_query]\nmax_output_bytes = 10\n", "max_output_bytes"),
            ("[log_query]\nmax_lines = 10\n", "max_lines"),
            (
                "[operations_log]\nmax_bytes = 10\n",
                "operations_log.max_bytes",
            ),
            ("[operations_log]\nkeep = 1000\n", "operations_log.keep"),
            ("[log_sources]\noperations = \"/var/log/x\"\n", "reserved"),
            (
                "[log_sources]\n\"a/b\" = \"/var/log/x\"\n",
                "not a valid name",
            ),
            (
                "[log_sources]\n\"..\" = \"/var/log/x\"\n",
                "not a valid name",
            ),
            ("[log_sources]\napp = \"relative.log\"\n", "absolute"),
        ] {
            let e = error_of(&format!("{}{rest}", minimal()));
            assert!(e.contains(expected), "{rest}: {e}");
        }
    }

    #[test]
    fn the_contract_example_parses_with_all_its_tables() {
        let text = format!(
            "{}state_dir = \"/tmp/tend\"\nboot_id_file = \"/tmp/boot\"\n\
             [actions]\nreboot = [\"sudo\", \"reboot\"]\nshutdown = [\"sh\", \"-c\", \"poweroff\"]\n\
             [log_sources]\napp = \"/var/log/kiosk/does-not-exist-yet.log\"\n",
            minimal()
        );
        let config = Config::from_toml_str(&text).unwrap();
        assert_eq!(config.actions.reboot, ["sudo", "reboot"]);
        assert_eq!(config.actions.shutdown, ["sh", "-c", "poweroff"]);
        assert_eq!(
            config.log_query.sources["app"],
            Path::new("/var/log/kiosk/does-not-exist-yet.log")
        );
        assert_eq!(config.boot_id_file, Path::new("/tmp/boot"));
    }

    #[test]
    fn the_secret_can_come_from_a_file_and_is_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "from-file\n").unwrap();
        let text = format!(
            "server_url = \"https://sync.example\"\ndevice_id = \"{ID}\"\ndevice_secret_file = {:?}\n\
             accept_unsigned = true\n",
            file.display().to_string()
        );
        let config = Config::from_toml_str(&text).unwrap();
        assert_eq!(config.device_secret, "from-file");
        assert!(!format!("{config:?}").contains("from-file"));
    }

    #[test]
    fn bad_values_are_refused_with_one_line_saying_which() {
        let base =
            |url: &str, rest: &str| format!("server_url = \"{url}\"\ndevice_id = \"{ID}\"\n{rest}");
        let e = error_of(&base("not a url", "device_secret = \"x\"\n"));
        assert!(e.contains("server_url"), "{e}");
        let e = error_of(&base("ftp://host", "device_secret = \"x\"\n"));
        assert!(e.contains("http"), "{e}");
        let e = error_of(&base("http://h", ""));
        assert!(e.contains("missing device secret"), "{e}");
        let e = error_of(&base(
            "http://h",
            "device_secret = \"x\"\ndevice_secret_file = \"/x\"\n",
        ));
        assert!(e.contains("not both"), "{e}");
        let e = error_of(&base("http://h", "device_secret = \"  \"\n"));
        assert!(e.contains("empty"), "{e}");
        let e = error_of(&base(
            "http://h",
            "device_secret_file = \"/nonexistent/s\"\n",
        ));
        assert!(e.contains("device_secret_file"), "{e}");
        let e = error_of(&base(
            "http://h",
            "device_secret = \"x\"\n[actions]\nreboot = []\n",
        ));
        assert!(e.contains("actions.reboot"), "{e}");
        let e = error_of(&base(
            "http://h",
            "device_secret = \"x\"\nrequest_timeout_s = 0\n",
        ));
        assert!(e.contains("request_timeout_s"), "{e}");
        let e =
            error_of("server_url = \"http://h\"\ndevice_id = \"nope\"\ndevice_secret = \"x\"\n");
        assert!(e.contains("device_id"), "{e}");
    }

    #[test]
    fn syntax_errors_and_unknown_keys_name_their_line() {
        let e = error_of(&format!("{}heartbeat = 5\n", minimal()));
        assert!(e.starts_with("line 5:") && e.contains("heartbeat"), "{e}");
        let e = error_of("server_url = \n");
        assert!(e.starts_with("line 1:"), "{e}");
    }

    #[test]
    fn a_file_without_device_id_enrols_with_its_token_and_type() {
        let base = "server_url = \"http://127.0.0.1:8081\"\naccept_unsigned = true\n";
        let config = Config::from_toml_str(&format!(
            "{base}enrolment_token = \"tend_enrol_abc\"\ndevice_type = \"kiosk\"\n\
             device_name = \"gate 7\"\n[device_labels]\nsite = \"north\"\n"
        ))
        .unwrap();
        assert!(config.device_id.is_nil());
        let enrolment = config.enrolment.as_ref().expect("enrols");
        assert_eq!(enrolment.token().unwrap(), "tend_enrol_abc");
        assert_eq!(enrolment.device_type, "kiosk");
        assert_eq!(enrolment.name.as_deref(), Some("gate 7"));
        assert_eq!(enrolment.labels["site"], "north");
        assert!(!format!("{config:?}").contains("tend_enrol_abc"));

        // The file's identity wins over a token.
        let config = Config::from_toml_str(&format!(
            "{}enrolment_token = \"tend_enrol_abc\"\ndevice_type = \"kiosk\"\n",
            minimal()
        ))
        .unwrap();
        assert!(config.enrolment.is_none());
        assert_eq!(config.device_id.to_string(), ID);

        for (rest, expected) in [
            ("", "enrolment_token and device_type"),
            (
                "enrolment_token = \"tend_enrol_abc\"\n",
                "needs device_type",
            ),
            (
                "enrolment_token = \"t\"\ndevice_type = \"a b\"\n",
                "device_type",
            ),
            ("device_secret = \"s\"\n", "without device_id"),
            (
                "enrolment_token = \"t\"\nenrolment_token_file = \"/x\"\ndevice_type = \"k\"\n",
                "not both",
            ),
        ] {
            let e = error_of(&format!("{base}{rest}"));
            assert!(e.contains(expected), "{rest:?}: {e}");
        }
    }

    #[test]
    fn the_example_file_shipped_with_the_agent_is_valid_and_shows_the_defaults() {
        let shipped = include_str!("../tend-agent.example.toml");
        // As shipped, it names no signing key: the agent does not start
        // until the platform's key is there.
        let e = error_of(shipped);
        assert!(e.contains("signing_keys is missing"), "{e}");
        let example = Config::from_toml_str(&format!("accept_unsigned = true\n{shipped}")).unwrap();
        let defaults = Config::from_toml_str(&minimal()).unwrap();
        assert_eq!(example.state_dir, defaults.state_dir);
        assert_eq!(example.boot_id_file, defaults.boot_id_file);
        assert_eq!(example.actions, defaults.actions);
        assert_eq!(example.request_timeout_s, defaults.request_timeout_s);
        assert_eq!(example.log_query, defaults.log_query);
        assert_eq!(example.operations_log, defaults.operations_log);
        assert_eq!(example.software, defaults.software);
        assert_eq!(example.peer, defaults.peer);
    }

    #[test]
    fn the_peer_table_is_read_with_its_defaults_and_bounds() {
        let defaults = Config::from_toml_str(&minimal()).unwrap().peer;
        assert!(!defaults.serve);
        assert_eq!(defaults.listen, "0.0.0.0:7717".parse().unwrap());
        assert!(defaults.peers.is_empty());
        assert_eq!(
            defaults.search_timeout,
            std::time::Duration::from_millis(2000)
        );
        assert_eq!(
            defaults.connect_timeout,
            std::time::Duration::from_millis(3000)
        );
        assert_eq!(defaults.max_transfers, 4);

        let peer = Config::from_toml_str(&format!(
            "{}[peer]\nserve = true\nlisten = \"192.168.1.10:7800\"\n\
             peers = [\"192.168.1.20:7717\", \"10.0.0.5:7800\"]\n\
             search_timeout_ms = 500\nconnect_timeout_ms = 1500\nmax_transfers = 2\n",
            minimal()
        ))
        .unwrap()
        .peer;
        assert!(peer.serve);
        assert_eq!(peer.listen, "192.168.1.10:7800".parse().unwrap());
        assert_eq!(peer.discovery_port(), 7800);
        assert_eq!(
            peer.peers,
            [
                "192.168.1.20:7717".parse().unwrap(),
                "10.0.0.5:7800".parse().unwrap()
            ]
        );
        assert_eq!(peer.search_timeout, std::time::Duration::from_millis(500));
        assert_eq!(peer.connect_timeout, std::time::Duration::from_millis(1500));
        assert_eq!(peer.max_transfers, 2);

        for (rest, expected) in [
            ("listen = \"7717\"\n", "peer.listen"),
            ("listen = \"[::]:7717\"\n", "IPv4"),
            ("peers = [\"camera-2\"]\n", "peer.peers"),
            ("peers = [\"0.0.0.0:7717\"]\n", "peer.peers"),
            ("search_timeout_ms = 10\n", "peer.search_timeout_ms"),
            ("connect_timeout_ms = 600000\n", "peer.connect_timeout_ms"),
            ("max_transfers = 0\n", "peer.max_transfers"),
            ("serve = \"yes\"\n", "invalid type"),
            ("port = 7717\n", "port"),
        ] {
            let e = error_of(&format!("{}[peer]\n{rest}", minimal()));
            assert!(e.contains(expected), "{rest}: {e}");
        }
    }

    #[test]
    fn load_names_the_file_it_could_not_read() {
        let e = Config::load(Path::new("/nonexistent/agent.toml")).unwrap_err();
        assert!(format!("{e:#}").contains("/nonexistent/agent.toml"));
    }
}
