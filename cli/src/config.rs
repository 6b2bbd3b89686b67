//! The saved session: `credentials.json` in the user's config directory.
//!
//! The file holds a bearer token, so it is written the way ssh and docker
//! keep theirs: a directory only the user can enter (0700), a file only the
//! user can read (0600), replaced atomically so a crash never leaves half a
//! token behind.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::exit::Failure;

/// Overrides the directory (tests, several installations side by side).
pub const CONFIG_DIR_VAR: &str = "TENDCTL_CONFIG_DIR";
const FILE: &str = "credentials.json";

/// What `tendctl login` saves.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// The server the token was issued by: it is only ever sent back there.
    pub server: String,
    pub access_token: String,
    /// When the token stops working, so an expired session is reported
    /// without a round trip.
    pub expires_at: DateTime<Utc>,
}

// By hand, so that a debug print never shows the token.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("server", &self.server)
            .field("access_token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// The directory of tendctl's files: `$TENDCTL_CONFIG_DIR`, else
/// `$XDG_CONFIG_HOME/tend`, else `~/.config/tend`. `var` reads the
/// environment (a map in tests).
pub fn config_dir(var: impl Fn(&str) -> Option<String>) -> Result<PathBuf, Failure> {
    // An empty variable counts as unset, as the XDG spec says.
    let var = |k: &str| var(k).filter(|v| !v.is_empty());
    if let Some(d) = var(CONFIG_DIR_VAR) {
        return Ok(PathBuf::from(d));
    }
    // The XDG spec ignores a relative XDG_CONFIG_HOME.
    if let Some(d) = var("XDG_CONFIG_HOME").filter(|d| Path::new(d).is_absolute()) {
        return Ok(Path::new(&d).join("tend"));
    }
    if let Some(home) = var("HOME") {
        return Ok(Path::new(&home).join(".config").join("tend"));
    }
    Err(Failure::Local(format!(
        "cannot find a config directory: set HOME, XDG_CONFIG_HOME or {CONFIG_DIR_VAR}"
    )))
}

/// The credentials file in one directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(dir: PathBuf) -> Store {
        Store { dir }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// The saved session, or `None` when there is none.
    pub fn load(&self) -> Result<Option<Credentials>, Failure> {
        let path = self.path();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Failure::local(format!("reading {}", path.display()), e)),
        };
        serde_json::from_str(&text).map(Some).map_err(|e| {
            Failure::Local(format!(
                "{} is damaged ({e}): run tendctl logout, then tendctl login",
                path.display()
            ))
        })
    }

    /// Writes the session: directory 0700 when tendctl creates it, file
    /// 0600, replaced in one rename.
    pub fn save(&self, creds: &Credentials) -> Result<(), Failure> {
        if !self.dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir)
                .map_err(|e| Failure::local(format!("creating {}", self.dir.display()), e))?;
        }
        let path = self.path();
        let tmp = self.dir.join(format!("{FILE}.tmp"));
        let write = || -> std::io::Result<()> {
            // A leftover from a crash may have other permissions: start afresh
            // so `mode` applies (it only does at creation).
            match fs::remove_file(&tmp) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(creds)?)?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        };
        write().map_err(|e| Failure::local(format!("writing {}", path.display()), e))
    }

    /// Deletes the session; `false` when there was none.
    pub fn remove(&self) -> Result<bool, Failure> {
        let path = self.path();
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Failure::local(format!("deleting {}", path.display()), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn creds() -> Credentials {
        Credentials {
            server: "http://127.0.0.1:8080".into(),
            access_token: "secret-token".into(),
            expires_at: "2030-01-01T00:00:00Z".parse().unwrap(),
        }
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_credentials_file_is_readable_by_its_owner_only() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path().join("nested").join("tend"));
        store.save(&creds()).unwrap();
        assert_eq!(mode(&tmp.path().join("nested").join("tend")), 0o700);
        assert_eq!(mode(&store.path()), 0o600);
    }

    #[test]
    fn a_leftover_temporary_file_does_not_widen_the_permissions() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path().to_owned());
        let stale = tmp.path().join("credentials.json.tmp");
        fs::write(&stale, "junk").unwrap();
        fs::set_permissions(&stale, fs::Permissions::from_mode(0o644)).unwrap();
        store.save(&creds()).unwrap();
        assert_eq!(mode(&store.path()), 0o600);
        assert!(!stale.exists());
    }

    #[test]
    fn a_saved_session_loads_back_and_logout_removes_it() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path().to_owned());
        assert_eq!(store.load().unwrap(), None);
        store.save(&creds()).unwrap();
        assert_eq!(store.load().unwrap(), Some(creds()));
        assert!(store.remove().unwrap());
        assert!(!store.remove().unwrap());
        assert_eq!(store.load().unwrap(), None);
    }

    #[test]
    fn a_damaged_file_says_how_to_recover() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::new(tmp.path().to_owned());
        fs::write(store.path(), "{").unwrap();
        let e = store.load().unwrap_err();
        assert!(e.to_string().contains("tendctl login"), "{e}");
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        assert!(!format!("{:?}", creds()).contains("secret-token"));
    }

    #[test]
    fn the_directory_follows_the_override_then_xdg_then_home() {
        let env = |pairs: &[(&str, &str)]| {
            let m: HashMap<String, String> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            config_dir(move |k| m.get(k).cloned())
        };
        let all = [
            ("TENDCTL_CONFIG_DIR", "/t"),
            ("XDG_CONFIG_HOME", "/x"),
            ("HOME", "/h"),
        ];
        assert_eq!(env(&all).unwrap(), PathBuf::from("/t"));
        assert_eq!(env(&all[1..]).unwrap(), PathBuf::from("/x/tend"));
        assert_eq!(env(&all[2..]).unwrap(), PathBuf::from("/h/.config/tend"));
        // Empty or relative values are ignored, as the XDG spec says.
        assert_eq!(
            env(&[
                ("TENDCTL_CONFIG_DIR", ""),
                ("XDG_CONFIG_HOME", "rel"),
                ("HOME", "/h")
            ])
            .unwrap(),
            PathBuf::from("/h/.config/tend")
        );
        assert!(env(&[]).is_err());
    }
}
