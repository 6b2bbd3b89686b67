//! `[components.NAME]`, `[download]` and `update_check_s`: what the agent
//! may install, roll back and restore, and how it fetches the bytes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use serde::Deserialize;

/// The component name that stands for the agent itself; it has no table.
pub const AGENT: &str = "agent";

/// 1 MiB: a few requests for a typical application, and a lost segment on
/// a flaky link costs little.
pub const DEFAULT_SEGMENT_BYTES: u64 = 1024 * 1024;
/// Seed 004 fetches in 1 to 10 KB segments on poor links; below 1 KiB the
/// request overhead outweighs the data.
pub const MIN_SEGMENT_BYTES: u64 = 1024;
pub const MAX_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
pub const DEFAULT_UPDATE_CHECK_S: u64 = 3600;
pub const DEFAULT_HEALTH_TIMEOUT_S: u64 = 60;
/// How long a new agent binary has to prove itself (start, authenticate
/// and heartbeat) before the previous one is put back.
pub const DEFAULT_AGENT_PROOF_S: u64 = 120;

/// The software lifecycle settings, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub components: BTreeMap<String, Component>,
    pub segment_bytes: u64,
    /// 0: the agent never asks on its own.
    pub update_check: Option<Duration>,
    pub agent_proof: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            components: BTreeMap::new(),
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            update_check: Some(Duration::from_secs(DEFAULT_UPDATE_CHECK_S)),
            agent_proof: Duration::from_secs(DEFAULT_AGENT_PROOF_S),
        }
    }
}

/// How a component's new version is put in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A `.tar.gz` unpacked beside `path` and swapped in atomically.
    Dir { path: PathBuf },
    /// One file replaced atomically.
    File { path: PathBuf },
    /// Programs that install and roll back (an A/B image tool).
    Command {
        install: Vec<String>,
        rollback: Vec<String>,
        /// The install takes effect at the next boot (seed 003).
        reboot: bool,
    },
}

/// One `[components.NAME]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    pub name: String,
    pub kind: Kind,
    /// Where the installed version is read (first line). `dir`: defaults
    /// to `path/VERSION`; otherwise written by the agent after a commit.
    pub version_file: Option<PathBuf>,
    pub health_check: Option<Vec<String>>,
    pub health_timeout: Duration,
    pub before: Option<Vec<String>>,
    pub after: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDownload {
    segment_bytes: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawComponent {
    kind: String,
    path: Option<PathBuf>,
    version_file: Option<PathBuf>,
    install: Option<Vec<String>>,
    rollback: Option<Vec<String>>,
    reboot: Option<bool>,
    health_check: Option<Vec<String>>,
    health_timeout_s: Option<u64>,
    before: Option<Vec<String>>,
    after: Option<Vec<String>>,
}

impl Settings {
    pub(crate) fn parse(
        components: BTreeMap<String, RawComponent>,
        download: RawDownload,
        update_check_s: Option<u64>,
        agent_proof_s: Option<u64>,
    ) -> anyhow::Result<Settings> {
        let segment_bytes = download.segment_bytes.unwrap_or(DEFAULT_SEGMENT_BYTES);
        if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&segment_bytes) {
            bail!(
                "download.segment_bytes must be between {MIN_SEGMENT_BYTES} and {MAX_SEGMENT_BYTES}"
            );
        }
        let agent_proof_s = agent_proof_s.unwrap_or(DEFAULT_AGENT_PROOF_S);
        if !(10..=3600).contains(&agent_proof_s) {
            bail!("agent_proof_s must be between 10 and 3600");
        }
        let components = components
            .into_iter()
            .map(|(name, raw)| Ok((name.clone(), component(name, raw)?)))
            .collect::<anyhow::Result<_>>()?;
        Ok(Settings {
            components,
            segment_bytes,
            update_check: match update_check_s.unwrap_or(DEFAULT_UPDATE_CHECK_S) {
                0 => None,
                s => Some(Duration::from_secs(s)),
            },
            agent_proof: Duration::from_secs(agent_proof_s),
        })
    }
}

fn component(name: String, raw: RawComponent) -> anyhow::Result<Component> {
    let at = |key: &str| format!("components.{name}.{key}");
    if !tend_proto::params::is_component_name(&name) {
        bail!(
            "components: {name:?} is not a valid name (1 to 64 of letters, digits, '.', '_', '-')"
        );
    }
    if name == AGENT {
        bail!("components.agent: the agent upgrades itself and takes no table; pick another name");
    }
    let argv = |key: &str, value: Option<Vec<String>>| -> anyhow::Result<Option<Vec<String>>> {
        match value {
            Some(argv) if argv.first().is_none_or(|p| p.trim().is_empty()) => {
                bail!(
                    "{} must name a program to run (it is an empty argv)",
                    at(key)
                )
            }
            other => Ok(other),
        }
    };
    let absolute = |key: &str, path: Option<PathBuf>| -> anyhow::Result<Option<PathBuf>> {
        match path {
            Some(p) if !p.is_absolute() || p.parent().is_none() => {
                bail!("{}: {} must be an absolute path", at(key), p.display())
            }
            other => Ok(other),
        }
    };
    let path = absolute("path", raw.path)?;
    let version_file = absolute("version_file", raw.version_file)?;
    let install = argv("install", raw.install)?;
    let rollback = argv("rollback", raw.rollback)?;
    let only_for_command = |key: &str, set: bool| -> anyhow::Result<()> {
        if set {
            bail!("{} is for kind = \"command\" only", at(key));
        }
        Ok(())
    };
    let kind = match raw.kind.as_str() {
        "dir" | "file" => {
            only_for_command("install", install.is_some())?;
            only_for_command("rollback", rollback.is_some())?;
            only_for_command("reboot", raw.reboot.is_some())?;
            let Some(path) = path else {
                bail!("{} is required for kind = {:?}", at("path"), raw.kind);
            };
            if raw.kind == "dir" {
                Kind::Dir { path }
            } else {
                Kind::File { path }
            }
        }
        "command" => {
            let (Some(install), Some(rollback)) = (install, rollback) else {
                bail!(
                    "{} and {} are required for kind = \"command\"",
                    at("install"),
                    at("rollback")
                );
            };
            if !install.iter().any(|arg| arg.contains("{file}")) {
                bail!("{} must pass the download as {{file}}", at("install"));
            }
            if path.is_some() {
                bail!("{} is not used by kind = \"command\"", at("path"));
            }
            Kind::Command {
                install,
                rollback,
                reboot: raw.reboot.unwrap_or(false),
            }
        }
        other => bail!(
            "{}: {other:?} is not one of \"dir\", \"file\", \"command\"",
            at("kind")
        ),
    };
    let version_file = version_file.or_else(|| match &kind {
        Kind::Dir { path } => Some(path.join("VERSION")),
        _ => None,
    });
    let health_timeout_s = raw.health_timeout_s.unwrap_or(DEFAULT_HEALTH_TIMEOUT_S);
    if health_timeout_s == 0 {
        bail!("{} must be at least 1", at("health_timeout_s"));
    }
    Ok(Component {
        kind,
        version_file,
        health_check: argv("health_check", raw.health_check)?,
        health_timeout: Duration::from_secs(health_timeout_s),
        before: argv("before", raw.before)?,
        after: argv("after", raw.after)?,
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<Settings> {
        #[derive(Deserialize)]
        struct Raw {
            #[serde(default)]
            components: BTreeMap<String, RawComponent>,
            #[serde(default)]
            download: RawDownload,
            update_check_s: Option<u64>,
        }
        let raw: Raw = toml::from_str(text)?;
        Settings::parse(raw.components, raw.download, raw.update_check_s, None)
    }

    #[test]
    fn each_kind_reads_its_keys_and_the_defaults_are_documented() {
        let settings = parse(
            r#"
            [components.app]
            kind = "dir"
            path = "/opt/app"
            health_check = ["/opt/app/selftest"]
            [components.conf]
            kind = "file"
            path = "/etc/kiosk.conf"
            version_file = "/var/lib/kiosk/conf.version"
            [components.os]
            kind = "command"
            install = ["rauc", "install", "{file}"]
            rollback = ["rauc", "status", "mark-bad", "booted"]
            reboot = true
            health_timeout_s = 300
            "#,
        )
        .unwrap();
        let app = &settings.components["app"];
        assert_eq!(
            app.kind,
            Kind::Dir {
                path: "/opt/app".into()
            }
        );
        assert_eq!(
            app.version_file.as_deref(),
            Some("/opt/app/VERSION".as_ref())
        );
        assert_eq!(app.health_timeout, Duration::from_secs(60));
        assert!(matches!(
            settings.components["os"].kind,
            Kind::Command { reboot: true, .. }
        ));
        assert_eq!(settings.components["os"].version_file, None);
        assert_eq!(settings.segment_bytes, DEFAULT_SEGMENT_BYTES);
        assert_eq!(settings.update_check, Some(Duration::from_secs(3600)));
        let never = parse("update_check_s = 0\n[download]\nsegment_bytes = 1024\n").unwrap();
        assert_eq!((never.update_check, never.segment_bytes), (None, 1024));
    }

    #[test]
    fn tables_that_cannot_work_are_refused_naming_the_key() {
        for (text, expected) in [
            ("[components.a]\nkind = \"dir\"\n", "components.a.path"),
            (
                "[components.a]\nkind = \"tar\"\npath = \"/x\"\n",
                "components.a.kind",
            ),
            (
                "[components.a]\nkind = \"file\"\npath = \"x\"\n",
                "absolute",
            ),
            (
                "[components.agent]\nkind = \"file\"\npath = \"/x\"\n",
                "agent",
            ),
            (
                "[components.\"a/b\"]\nkind = \"file\"\npath = \"/x\"\n",
                "valid name",
            ),
            (
                "[components.a]\nkind = \"command\"\ninstall = [\"i\", \"{file}\"]\n",
                "rollback",
            ),
            (
                "[components.a]\nkind = \"command\"\ninstall = [\"i\"]\nrollback = [\"r\"]\n",
                "{file}",
            ),
            (
                "[components.a]\nkind = \"file\"\npath = \"/x\"\nreboot = true\n",
                "reboot",
            ),
            (
                "[components.a]\nkind = \"file\"\npath = \"/x\"\nbefore = []\n",
                "before",
            ),
            (
                "[components.a]\nkind = \"file\"\npath = \"/x\"\nhealth_timeout_s = 0\n",
                "health_timeout_s",
            ),
            ("[download]\nsegment_bytes = 10\n", "segment_bytes"),
        ] {
            let e = format!("{:#}", parse(text).unwrap_err());
            assert!(e.contains(expected), "{text}: {e}");
        }
    }
}
