//! The command line: every subcommand, flag and value parser.
//!
//! Values are checked here, where clap can answer with its usage error
//! (exit 2), rather than sent to the API to be refused (exit 3).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use uuid::Uuid;

/// Shown by `--help` (not `-h`): what scripts need to know.
const AFTER_LONG_HELP: &str = "\
Exit codes:
  0  done; with --wait, the command succeeded
  1  the command ended unsuccessfully (failed, rejected, timed_out, expired,
     cancelled), or tendctl failed on this machine (its credentials file)
  2  usage error, or a confirmation that was not given
  3  the API refused the request (HTTP 4xx), not being logged in included
  4  the server cannot be reached, or it answered HTTP 5xx
  5  --wait gave up before the command ended (see --wait-timeout)

Environment:
  TENDCTL_SERVER      the platform's URL, like --server
  TENDCTL_TOKEN       an access token to use instead of the saved login
  TENDCTL_CONFIG_DIR  where credentials.json is kept
                      (default $XDG_CONFIG_HOME/tend, else ~/.config/tend)

With --json every command prints one JSON document on stdout: the API's
answer as it came (a list followed with --all is one list), and messages go
to stderr.";

/// tend's admin command-line client.
#[derive(Debug, Parser)]
#[command(
    name = "tendctl",
    version,
    about = "Manage a tend device fleet: devices, remote commands and their results, software artifacts",
    after_long_help = AFTER_LONG_HELP,
    propagate_version = true
)]
pub struct Cli {
    /// The platform's URL [default: the saved login's server, else
    /// http://127.0.0.1:8080]
    #[arg(long, global = true, env = "TENDCTL_SERVER", value_name = "URL")]
    pub server: Option<String>,

    /// Print the API's JSON, one document per command, instead of tables
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Log in and keep the session (1 hour) in the config directory
    ///
    /// With --json the API's answer is printed as it came, the access token
    /// included (for scripts that call the API themselves).
    Login(LoginArgs),
    /// Forget the saved session
    ///
    /// The token itself stays valid on the server until it expires.
    Logout,
    /// Register, list, show and decommission devices; accept or reject
    /// the devices that enrolled themselves
    #[command(subcommand)]
    Devices(DevicesCmd),
    /// List, change and remove users of your tenant (admins)
    ///
    /// A changed, disabled or removed user's sessions end on every server
    /// within 2 seconds.
    #[command(subcommand)]
    Users(UsersCmd),
    /// Create, list and revoke enrolment tokens, with which a device's
    /// agent enrols itself (its `enrolment_token`)
    #[command(subcommand, name = "enrolment-tokens")]
    EnrolmentTokens(EnrolmentTokensCmd),
    /// Queue a reboot of a device
    Reboot(ActionArgs),
    /// Queue a shutdown of a device
    Shutdown(ActionArgs),
    /// Query a log on a device (a log_query command)
    ///
    /// With --wait the matching lines are printed on stdout, oldest first,
    /// and how many matched on stderr.
    Logs(LogsArgs),
    /// List, show, follow and cancel commands
    #[command(subcommand)]
    Commands(CommandsCmd),
    /// Follow command batches (`tendctl commands bulk`)
    #[command(subcommand)]
    Batches(BatchesCmd),
    /// Upload, list, release and delete software artifacts, and keep their
    /// denylists
    #[command(subcommand)]
    Artifacts(ArtifactsCmd),
    /// Queue an upgrade of a device to an artifact (an upgrade command)
    ///
    /// The artifact must be uploaded, made for the device's type, and the
    /// device not on its denylist; the platform checks when it queues.
    Upgrade(UpgradeArgs),
    /// Queue a restore of a component to a known-good version (a restore
    /// command)
    // `--version` names the version to restore, so this subcommand has no
    // version flag of its own.
    #[command(disable_version_flag = true)]
    Restore(RestoreArgs),
    /// Read the tenant's audit log, newest first (admins only)
    ///
    /// Who did what to which object, from which address and when. Filters:
    /// --actor (a user id or username), --action (exact, such as
    /// device.create, or every action of a type with a trailing dot:
    /// device.), --target (an object's id), --since (inclusive) and --until
    /// (exclusive), RFC 3339 times.
    Audit(AuditArgs),
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Asked for when stdin is a terminal
    #[arg(long, short)]
    pub username: Option<String>,
    /// Read the password from the first line of stdin, even on a terminal
    /// (without this flag a terminal is asked without echo, and a pipe is
    /// read anyway)
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(Debug, Subcommand)]
pub enum DevicesCmd {
    /// List devices, newest first
    List(DeviceListArgs),
    /// Show a device and what its agent last reported
    Show { id: Uuid },
    /// Register a device; prints its secret, shown this once
    Create {
        name: String,
        /// What kind of device it is (kiosk, camera-v2): letters, digits, '.', '_', '-'
        #[arg(long = "type", value_name = "TYPE")]
        device_type: String,
        /// A label, repeatable
        #[arg(long = "label", value_name = "KEY:VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
    },
    /// Decommission a device: its credentials stop working at once
    Decommission {
        id: Uuid,
        /// Do not ask for confirmation (required when stdin is not a terminal)
        #[arg(long, short)]
        yes: bool,
    },
    /// List the devices that enrolled themselves and wait for an admin
    Pending(PageArgs),
    /// Accept a pending device: its agent connects at its next try
    Accept { id: Uuid },
    /// Reject a device for good: it never connects again
    Reject { id: Uuid },
}

#[derive(Debug, Subcommand)]
pub enum EnrolmentTokensCmd {
    /// Create a token; prints it, shown this once
    Create {
        /// Only devices of this type may enrol with it
        #[arg(long = "type", value_name = "TYPE")]
        device_type: Option<String>,
        /// A label given to every device it enrols, repeatable
        #[arg(long = "label", value_name = "KEY:VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// How many devices it may enrol (default: any number until it expires)
        #[arg(long)]
        uses: Option<u32>,
        /// Seconds until it expires (default: one day)
        #[arg(long, value_name = "SECONDS")]
        expires_in: Option<u64>,
        /// Accept its devices at once instead of leaving them pending
        #[arg(long)]
        auto_accept: bool,
    },
    /// List tokens, newest first (never the tokens themselves)
    List(PageArgs),
    /// Revoke a token: it enrols no device from now on
    Revoke { id: Uuid },
}

#[derive(Debug, Subcommand)]
pub enum UsersCmd {
    /// List the tenant's users, newest first
    List {
        #[command(flatten)]
        page: PageArgs,
    },
    /// Change a user's role, disable or enable it, or set its password
    ///
    /// The password is read from the first line of stdin (12 to 1024
    /// characters, not a common one).
    Update {
        id: Uuid,
        #[arg(long, value_parser = ["admin", "operator", "viewer"])]
        role: Option<String>,
        /// The user can no longer log in; its sessions end
        #[arg(long, conflicts_with = "enable")]
        disable: bool,
        /// Undo --disable
        #[arg(long)]
        enable: bool,
        /// Set a new password, read from the first line of stdin
        #[arg(long)]
        password_stdin: bool,
    },
    /// Remove a user; its sessions end at once
    Remove {
        id: Uuid,
        /// Do not ask for confirmation (required when stdin is not a terminal)
        #[arg(long, short)]
        yes: bool,
    },
}

#[derive(Debug, Args)]
pub struct DeviceListArgs {
    /// Only devices in this state
    #[arg(long, value_parser = ["online", "offline", "unknown"])]
    pub status: Option<String>,
    /// Only devices admitted so (enrolled devices wait pending for an admin)
    #[arg(long, value_parser = ["pending", "accepted", "rejected"])]
    pub admission: Option<String>,
    /// Only devices of this type
    #[arg(long = "type", value_name = "TYPE")]
    pub device_type: Option<String>,
    /// Only devices with this label, repeatable (all must match)
    #[arg(long = "label", value_name = "KEY:VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    #[command(flatten)]
    pub page: PageArgs,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// A user id, or a username as it was when they acted
    #[arg(long)]
    pub actor: Option<String>,
    /// An action (device.create), or a type's actions (device.)
    #[arg(long)]
    pub action: Option<String>,
    /// The id of the object acted on
    #[arg(long)]
    pub target: Option<String>,
    /// Rows at or after this RFC 3339 time
    #[arg(long)]
    pub since: Option<String>,
    /// Rows before this RFC 3339 time
    #[arg(long)]
    pub until: Option<String>,
    #[command(flatten)]
    pub page: PageArgs,
}

#[derive(Debug, Args)]
pub struct PageArgs {
    /// Items per page (the server's default is 50)
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=500))]
    pub limit: Option<u16>,
    /// Start at this page (a previous page's next_cursor)
    #[arg(long)]
    pub cursor: Option<String>,
    /// Follow next_cursor to the last page
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Subcommand)]
pub enum CommandsCmd {
    /// List a device's commands, newest first
    List {
        device_id: Uuid,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Show a command, or follow it to its end with --wait
    Show {
        id: Uuid,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Cancel a command that is still queued
    Cancel { id: Uuid },
    /// Queue one command for every device a selector matches (a batch)
    ///
    /// Every condition given must hold, and at least one is required, so
    /// that a mistyped command never reaches the whole fleet. Prints the
    /// batch id and how many devices were matched, queued and skipped (by
    /// reason); follow it with `tendctl batches show`.
    Bulk(BulkArgs),
}

#[derive(Debug, Subcommand)]
pub enum BatchesCmd {
    /// Show a command batch: its commands counted by status
    Show { id: Uuid },
}

#[derive(Debug, Args)]
pub struct BulkArgs {
    /// Devices of this type
    #[arg(long = "device-type", visible_alias = "type", value_name = "TYPE")]
    pub device_type: Option<String>,
    /// Devices with this label, repeatable (all must match)
    #[arg(long = "label", value_name = "KEY:VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Devices in this state
    #[arg(long, value_parser = ["online", "offline", "unknown"])]
    pub status: Option<String>,
    /// Devices running this version of this component
    #[arg(long, value_name = "NAME:VERSION")]
    pub component: Option<String>,
    /// This device, repeatable (other tenants' and unknown ids are never
    /// selected)
    #[arg(long = "device", value_name = "ID")]
    pub devices: Vec<Uuid>,
    /// reboot, shutdown, log_query, upgrade or restore
    #[arg(long)]
    pub kind: String,
    /// The kind's params as a JSON object, like '{"artifact_id": "…"}'
    #[arg(long, value_name = "JSON", value_parser = parse_json_object)]
    pub params: Option<serde_json::Value>,
    #[command(flatten)]
    pub queue: QueueArgs,
}

/// A JSON object (a command's params).
pub fn parse_json_object(s: &str) -> Result<serde_json::Value, String> {
    match serde_json::from_str::<serde_json::Value>(s) {
        Ok(v) if v.is_object() => Ok(v),
        Ok(_) => Err("expected a JSON object, like '{}'".to_owned()),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

#[derive(Debug, Subcommand)]
pub enum ArtifactsCmd {
    /// Upload a file as a new artifact and print it
    ///
    /// The file is read twice and never held in memory: once to declare its
    /// size and SHA-256, so the platform keeps nothing that differs, then
    /// to stream it. Progress goes to stderr.
    // `--version` is the artifact's, so no version flag here.
    #[command(disable_version_flag = true)]
    Upload(UploadArgs),
    /// List artifacts, newest first
    List(ArtifactListArgs),
    /// Show an artifact
    Show { id: Uuid },
    /// Release an artifact: update checks offer it to devices of its types
    /// that run an older version
    Release { id: Uuid },
    /// Withdraw an artifact: update checks no longer offer it
    Unrelease { id: Uuid },
    /// Delete an artifact and its bytes (refused while an open command
    /// uses it)
    Delete { id: Uuid },
    /// The devices an artifact is never offered or sent to
    #[command(subcommand)]
    Denylist(DenylistCmd),
}

#[derive(Debug, Args)]
pub struct UploadArgs {
    /// The artifact's bytes; its name becomes the artifact's filename
    pub file: PathBuf,
    /// The component it installs, as the agent's [components.NAME]
    #[arg(long, value_name = "NAME", value_parser = parse_component)]
    pub component: String,
    /// The version it installs
    #[arg(long, value_parser = parse_version)]
    pub version: String,
    /// A device type it may be installed on, repeatable
    #[arg(long = "device-type", value_name = "TYPE", required = true)]
    pub device_types: Vec<String>,
    /// Release it once uploaded
    #[arg(long)]
    pub release: bool,
}

#[derive(Debug, Args)]
pub struct ArtifactListArgs {
    /// Only artifacts of this component
    #[arg(long, value_name = "NAME")]
    pub component: Option<String>,
    /// Only artifacts made for this device type
    #[arg(long, value_name = "TYPE")]
    pub device_type: Option<String>,
    #[command(flatten)]
    pub page: PageArgs,
}

#[derive(Debug, Subcommand)]
pub enum DenylistCmd {
    /// Deny an artifact to a device: never offered, and an upgrade to it is
    /// refused
    Add {
        artifact_id: Uuid,
        device_id: Uuid,
        /// Why, for the next admin (at most 1000 characters)
        #[arg(long)]
        reason: Option<String>,
    },
    /// Allow an artifact to a device again
    Remove { artifact_id: Uuid, device_id: Uuid },
    /// List an artifact's denylist, newest first
    List {
        artifact_id: Uuid,
        #[command(flatten)]
        page: PageArgs,
    },
}

#[derive(Debug, Args)]
pub struct UpgradeArgs {
    pub device_id: Uuid,
    /// The artifact to install on its component
    #[arg(long, value_name = "ID")]
    pub artifact: Uuid,
    #[command(flatten)]
    pub queue: QueueArgs,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    pub device_id: Uuid,
    /// The component to put back, as the agent's [components.NAME]
    #[arg(long, value_name = "NAME", value_parser = parse_component)]
    pub component: String,
    /// Where the known-good version comes from: the agent's local backup of
    /// the previous version, the platform's artifact, or a healthy device of
    /// the same type on the device's LAN [server default: backup]
    #[arg(long, value_parser = ["backup", "cloud", "peer"])]
    pub source: Option<String>,
    /// The version to restore (cloud, peer); for cloud without it, the last
    /// version the device ran healthy
    #[arg(long, value_parser = parse_version)]
    pub version: Option<String>,
    #[command(flatten)]
    pub queue: QueueArgs,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Args)]
pub struct ActionArgs {
    pub device_id: Uuid,
    #[command(flatten)]
    pub queue: QueueArgs,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    pub device_id: Uuid,
    /// A log source of the agent's config, or `operations` for the agent's
    /// own operation log
    #[arg(long)]
    pub source: String,
    /// Lines from this time on (RFC 3339, inclusive)
    #[arg(long, value_name = "RFC3339", value_parser = parse_time)]
    pub since: Option<String>,
    /// Lines up to this time (RFC 3339, inclusive)
    #[arg(long, value_name = "RFC3339", value_parser = parse_time)]
    pub until: Option<String>,
    /// Only lines matching this regular expression
    #[arg(long, value_name = "RE")]
    pub pattern: Option<String>,
    /// At most this many lines (the newest)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_lines: Option<u32>,
    #[command(flatten)]
    pub queue: QueueArgs,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// How long a queued command may take; the server's defaults otherwise.
#[derive(Debug, Args)]
pub struct QueueArgs {
    /// Time the device has to start and to finish (seconds, or 90s, 10m,
    /// 2h; server default 10m)
    #[arg(long, value_name = "S", value_parser = parse_seconds)]
    pub timeout: Option<u64>,
    /// Time the command may wait for its device (server default 7d)
    #[arg(long, value_name = "S", value_parser = parse_seconds)]
    pub expires_in: Option<u64>,
    /// Send this Idempotency-Key: running tendctl again with the same key
    /// and command within 24 hours answers the same command instead of
    /// queueing another. Without it, tendctl makes a key of its own for
    /// its retries after a lost answer.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Follow the command to its end; the exit code tells how it ended
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this long (exit 5)
    #[arg(long, value_name = "S", default_value = "15m", value_parser = parse_duration, requires = "wait")]
    pub wait_timeout: Duration,
}

/// `key:value`, split at the first colon (values may hold colons).
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once(':') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err("expected KEY:VALUE, like site:north".to_owned()),
    }
}

/// Whole seconds: `90`, `90s`, `10m`, `2h` or `7d`; at least one.
pub fn parse_seconds(s: &str) -> Result<u64, String> {
    let err = || format!("expected a whole number of seconds, or one with s, m, h or d: {s:?}");
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = digits.parse().map_err(|_| err())?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(err()),
    };
    match n.checked_mul(scale) {
        Some(0) => Err("must be at least one second".to_owned()),
        Some(v) => Ok(v),
        None => Err(err()),
    }
}

/// A component name, as the agent's config can hold it.
pub fn parse_component(s: &str) -> Result<String, String> {
    if tend_proto::params::is_component_name(s) {
        Ok(s.to_owned())
    } else {
        Err("expected 1 to 64 of letters, digits, '.', '_' and '-', like app".to_owned())
    }
}

/// A version tend accepts (it names files and headers, so no spaces).
pub fn parse_version(s: &str) -> Result<String, String> {
    if tend_proto::version::is_valid(s) {
        Ok(s.to_owned())
    } else {
        Err(
            "expected 1 to 64 of letters, digits, '.', '_', '+', '~' and '-', like 1.4.2"
                .to_owned(),
        )
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    parse_seconds(s).map(Duration::from_secs)
}

/// An RFC 3339 time, kept as typed: the agent compares it, tendctl only
/// catches typos early.
pub fn parse_time(s: &str) -> Result<String, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|_| s.to_owned())
        .map_err(|e| format!("expected an RFC 3339 time like 2030-01-31T08:00:00Z: {e}"))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn labels_split_at_the_first_colon() {
        assert_eq!(
            parse_label("site:north"),
            Ok(("site".into(), "north".into()))
        );
        assert_eq!(
            parse_label("url:http://x:1"),
            Ok(("url".into(), "http://x:1".into()))
        );
        assert_eq!(parse_label("empty:"), Ok(("empty".into(), String::new())));
        assert!(parse_label("site=north").is_err());
        assert!(parse_label(":north").is_err());
    }

    #[test]
    fn seconds_take_an_optional_unit() {
        assert_eq!(parse_seconds("90"), Ok(90));
        assert_eq!(parse_seconds("90s"), Ok(90));
        assert_eq!(parse_seconds("15m"), Ok(900));
        assert_eq!(parse_seconds("2h"), Ok(7200));
        assert_eq!(parse_seconds("7d"), Ok(604_800));
        for bad in [
            "0",
            "",
            "m",
            "-5",
            "1.5",
            "5 m",
            "5w",
            "99999999999999999999d",
        ] {
            assert!(parse_seconds(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn times_must_be_rfc3339() {
        assert!(parse_time("2030-01-31T08:00:00Z").is_ok());
        assert!(parse_time("2030-01-31T08:00:00+02:00").is_ok());
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn usage_errors_and_wait_flags_parse_as_documented() {
        let id = Uuid::new_v4().to_string();
        let parse = |args: &[&str]| Cli::try_parse_from([&["tendctl"], args].concat());
        assert!(parse(&["reboot", "not-a-uuid"]).is_err());
        assert!(
            parse(&["reboot", &id, "--wait-timeout", "5"]).is_err(),
            "needs --wait"
        );
        assert!(parse(&["logs", &id]).is_err(), "--source is required");
        assert!(
            parse(&["devices", "create", "k"]).is_err(),
            "--type is required"
        );
        let cli = parse(&["--json", "reboot", &id, "--wait", "--wait-timeout", "1m"]).unwrap();
        let Cmd::Reboot(a) = cli.command else {
            panic!("a reboot")
        };
        assert!(cli.json && a.wait.wait);
        assert_eq!(a.wait.wait_timeout, Duration::from_secs(60));
        let cli = parse(&["commands", "show", &id, "--json"]).unwrap();
        assert!(cli.json, "global flags work after the subcommand");
    }

    #[test]
    fn components_and_versions_are_checked_before_they_are_sent() {
        assert_eq!(parse_component("app"), Ok("app".into()));
        assert_eq!(parse_version("1.4.2+b7~rc1"), Ok("1.4.2+b7~rc1".into()));
        for bad in ["", "..", "a/b", "app config"] {
            assert!(parse_component(bad).is_err(), "{bad:?}");
        }
        for bad in ["", "1 2", "1/2", &"9".repeat(65)] {
            assert!(parse_version(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_upload_needs_a_file_a_component_a_version_and_device_types() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["tendctl", "artifacts"], args].concat());
        let base = [
            "upload",
            "app.tar.gz",
            "--component",
            "app",
            "--version",
            "1.4.2",
        ];
        assert!(parse(&base).is_err(), "--device-type is required");
        assert!(
            parse(&[
                "upload",
                "--component",
                "app",
                "--version",
                "1",
                "--device-type",
                "k"
            ])
            .is_err()
        );
        assert!(parse(&[&base[..], &["--device-type", "k", "--version", "1 2"]].concat()).is_err());
        let cli = parse(
            &[
                &base[..],
                &[
                    "--device-type",
                    "kiosk",
                    "--device-type",
                    "camera-v2",
                    "--release",
                    "--json",
                ],
            ]
            .concat(),
        )
        .unwrap();
        let Cmd::Artifacts(ArtifactsCmd::Upload(a)) = cli.command else {
            panic!("an upload")
        };
        assert_eq!(a.file, PathBuf::from("app.tar.gz"));
        assert_eq!((a.component.as_str(), a.version.as_str()), ("app", "1.4.2"));
        assert_eq!(a.device_types, ["kiosk", "camera-v2"]);
        assert!(a.release && cli.json);
        let a = match parse(&[&base[..], &["--device-type", "k"]].concat())
            .unwrap()
            .command
        {
            Cmd::Artifacts(ArtifactsCmd::Upload(a)) => a,
            other => panic!("{other:?}"),
        };
        assert!(!a.release, "not released unless asked");
    }

    #[test]
    fn artifact_and_denylist_subcommands_take_ids() {
        let (a, d) = (Uuid::new_v4(), Uuid::new_v4());
        let (a_s, d_s) = (a.to_string(), d.to_string());
        let parse = |args: &[&str]| Cli::try_parse_from([&["tendctl", "artifacts"], args].concat());
        for sub in ["show", "release", "unrelease", "delete"] {
            assert!(parse(&[sub, &a_s]).is_ok(), "{sub}");
            assert!(parse(&[sub, "1.4.2"]).is_err(), "{sub} takes an id");
        }
        let cli = parse(&[
            "list",
            "--component",
            "app",
            "--device-type",
            "kiosk",
            "--all",
        ])
        .unwrap();
        let Cmd::Artifacts(ArtifactsCmd::List(l)) = cli.command else {
            panic!("a list")
        };
        assert_eq!(l.component.as_deref(), Some("app"));
        assert_eq!(l.device_type.as_deref(), Some("kiosk"));
        assert!(l.page.all);
        let cli = parse(&["denylist", "add", &a_s, &d_s, "--reason", "screen flickers"]).unwrap();
        let Cmd::Artifacts(ArtifactsCmd::Denylist(DenylistCmd::Add {
            artifact_id,
            device_id,
            reason,
        })) = cli.command
        else {
            panic!("a denylist add")
        };
        assert_eq!((artifact_id, device_id), (a, d));
        assert_eq!(reason.as_deref(), Some("screen flickers"));
        assert!(
            parse(&["denylist", "remove", &a_s]).is_err(),
            "needs the device"
        );
        assert!(parse(&["denylist", "list", &a_s]).is_ok());
    }

    #[test]
    fn upgrade_and_restore_queue_like_reboot() {
        let (dev, art) = (Uuid::new_v4().to_string(), Uuid::new_v4());
        let parse = |args: &[&str]| Cli::try_parse_from([&["tendctl"], args].concat());
        assert!(parse(&["upgrade", &dev]).is_err(), "--artifact is required");
        assert!(parse(&["upgrade", &dev, "--artifact", "app-1.4.2"]).is_err());
        let cli = parse(&[
            "upgrade",
            &dev,
            "--artifact",
            &art.to_string(),
            "--wait",
            "--wait-timeout",
            "30m",
            "--timeout",
            "20m",
        ])
        .unwrap();
        let Cmd::Upgrade(u) = cli.command else {
            panic!("an upgrade")
        };
        assert_eq!(u.artifact, art);
        assert!(u.wait.wait);
        assert_eq!(u.wait.wait_timeout, Duration::from_secs(1800));
        assert_eq!(u.queue.timeout, Some(1200));

        assert!(
            parse(&["restore", &dev]).is_err(),
            "--component is required"
        );
        assert!(parse(&["restore", &dev, "--component", "app", "--source", "usb"]).is_err());
        assert!(
            parse(&[
                "restore",
                &dev,
                "--component",
                "app",
                "--wait-timeout",
                "1m"
            ])
            .is_err()
        );
        let cli = parse(&[
            "restore",
            &dev,
            "--component",
            "app",
            "--source",
            "cloud",
            "--version",
            "1.2.3",
            "--wait",
        ])
        .unwrap();
        let Cmd::Restore(r) = cli.command else {
            panic!("a restore")
        };
        assert_eq!(r.component, "app");
        assert_eq!(r.source.as_deref(), Some("cloud"));
        assert_eq!(r.version.as_deref(), Some("1.2.3"));
        assert!(r.wait.wait);
        let Cmd::Restore(r) = parse(&["restore", &dev, "--component", "app"])
            .unwrap()
            .command
        else {
            panic!("a restore")
        };
        assert_eq!(r.source, None, "the server's default source");
    }
}
