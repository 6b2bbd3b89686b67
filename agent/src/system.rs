//! Facts about the machine the agent runs on: boot id, uptime, inventory.
//!
//! The boot id is the proof of a reboot (it changes at every boot and only
//! then); uptime and inventory are informational and degrade to "unknown"
//! rather than fail on a system that lacks the usual files.

use std::path::Path;

use anyhow::{Context, bail};
use serde_json::{Map, Value, json};
use tend_proto::text::replace_nul;

/// The version this agent reports in heartbeats and inventory.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Reads the current boot id; an unreadable or empty file is an error
/// because reboots could not be proven without it.
pub fn boot_id(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read boot id from {}", path.display()))?;
    let id = text.trim();
    if id.is_empty() {
        bail!("boot id file {} is empty", path.display());
    }
    Ok(id.to_owned())
}

/// Whole seconds since boot, from `/proc/uptime`.
pub fn uptime_s() -> Option<u64> {
    parse_uptime(&std::fs::read_to_string("/proc/uptime").ok()?)
}

fn parse_uptime(text: &str) -> Option<u64> {
    let seconds: f64 = text.split_whitespace().next()?.parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then_some(seconds as u64)
}

/// What admins see as the device's `reported` inventory. Read once at
/// startup: none of it changes while the agent runs, and the heartbeat
/// stays free of file reads beyond `/proc/uptime`.
pub fn inventory() -> Value {
    inventory_from(|path| std::fs::read_to_string(path).ok())
}

/// The inventory built from files read with `read` (a parameter so tests
/// can feed it what a real device might hold).
fn inventory_from(read: impl Fn(&str) -> Option<String>) -> Value {
    let read_trimmed = |path: &str| {
        let text = read(path)?;
        let text = text.trim();
        (!text.is_empty()).then(|| text.to_owned())
    };
    let mut inventory = Map::new();
    inventory.insert("agent_version".into(), json!(AGENT_VERSION));
    inventory.insert("os".into(), json!(std::env::consts::OS));
    inventory.insert("arch".into(), json!(std::env::consts::ARCH));
    if let Some(hostname) =
        read_trimmed("/proc/sys/kernel/hostname").or_else(|| read_trimmed("/etc/hostname"))
    {
        inventory.insert("hostname".into(), json!(hostname));
    }
    if let Some(kernel) = read_trimmed("/proc/sys/kernel/osrelease") {
        inventory.insert("kernel".into(), json!(kernel));
    }
    if let Some(name) = read("/etc/os-release").and_then(|text| os_pretty_name(&text)) {
        inventory.insert("os_release".into(), json!(name));
    }
    let mut inventory = Value::Object(inventory);
    // These files are taken as they are; a NUL in one must not make the
    // server refuse every heartbeat.
    replace_nul(&mut inventory);
    inventory
}

fn os_pretty_name(os_release: &str) -> Option<String> {
    os_release.lines().find_map(|line| {
        let value = line.strip_prefix("PRETTY_NAME=")?;
        Some(value.trim().trim_matches('"').to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_boot_id_is_trimmed_and_must_not_be_empty() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("boot_id");
        std::fs::write(&file, "abc-123\n").unwrap();
        assert_eq!(boot_id(&file).unwrap(), "abc-123");
        std::fs::write(&file, "\n").unwrap();
        assert!(boot_id(&file).is_err());
        assert!(boot_id(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn uptime_and_os_release_are_parsed() {
        assert_eq!(parse_uptime("12345.67 9999.00\n"), Some(12345));
        assert_eq!(parse_uptime("garbage"), None);
        assert_eq!(
            os_pretty_name("NAME=Debian\nPRETTY_NAME=\"Debian GNU/Linux 13\"\n").as_deref(),
            Some("Debian GNU/Linux 13")
        );
    }

    #[test]
    fn the_inventory_names_the_agent_version() {
        assert_eq!(inventory()["agent_version"], AGENT_VERSION);
    }

    #[test]
    fn nul_bytes_in_the_files_read_never_reach_the_inventory() {
        let inventory = inventory_from(|path| match path {
            "/proc/sys/kernel/hostname" => Some("kiosk\0-7\n".into()),
            "/etc/os-release" => Some("PRETTY_NAME=\"Kiosk\0OS\"\n".into()),
            _ => None,
        });
        assert_eq!(inventory["hostname"], "kiosk\u{FFFD}-7");
        assert_eq!(inventory["os_release"], "Kiosk\u{FFFD}OS");
        assert!(
            !serde_json::to_string(&inventory)
                .unwrap()
                .contains("\\u0000")
        );
    }
}
