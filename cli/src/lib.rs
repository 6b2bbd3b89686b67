//! tendctl, the admin command-line client of tend.
//!
//! It speaks only the admin API over HTTP (`/api/v1`, see the contract),
//! so it works against any installation an admin can reach. People get
//! aligned tables; scripts get `--json` (the API's answer, one document per
//! invocation) and exit codes they can branch on:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done; with `--wait`, the command succeeded |
//! | 1 | the command ended unsuccessfully (`failed`, `rejected`, `timed_out`, `expired`, `cancelled`), or tendctl failed on this machine |
//! | 2 | usage error (clap's), or a confirmation that was not given |
//! | 3 | the API refused the request (HTTP 4xx), not being logged in included |
//! | 4 | the server cannot be reached, or it answered HTTP 5xx |
//! | 5 | `--wait` gave up before the command ended |
//!
//! Modules: [`cli`] (the command line), [`client`] (HTTP and problem
//! answers), [`config`] (the saved session), [`output`] (tables),
//! [`wait`] (following a command), [`progress`] (of an upload),
//! `commands` (one module per group of subcommands), [`exit`] (the codes
//! above).

pub mod cli;
pub mod client;
mod commands;
pub mod config;
pub mod exit;
pub mod output;
pub mod progress;
pub mod wait;

use chrono::Utc;

use crate::cli::Cli;
use crate::client::{Client, normalize_server};
use crate::config::Store;
use crate::exit::{Exit, Failure, NOT_LOGGED_IN};

/// Where tendctl looks when neither `--server` nor a saved login says:
/// the platform's default listen port on this machine.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";
/// A token to use instead of the saved one (CI, service accounts).
pub const TOKEN_VAR: &str = "TENDCTL_TOKEN";

/// Runs one invocation; `var` reads the environment. Failures are printed
/// as `tendctl: …` on stderr and become their exit code.
pub async fn run(cli: Cli, var: impl Fn(&str) -> Option<String>) -> Exit {
    let result = async {
        let ctx = Ctx {
            json: cli.json,
            server: cli.server,
            token: var(TOKEN_VAR).filter(|t| !t.is_empty()),
            store: Store::new(config::config_dir(&var)?),
        };
        commands::dispatch(&ctx, cli.command).await
    }
    .await;
    match result {
        Ok(exit) => exit,
        Err(f) => {
            eprintln!("tendctl: {f}");
            f.exit()
        }
    }
}

/// What every subcommand needs: output mode, server and session.
pub(crate) struct Ctx {
    pub json: bool,
    /// `--server` or `TENDCTL_SERVER`, as typed.
    server: Option<String>,
    /// `TENDCTL_TOKEN`.
    token: Option<String>,
    pub store: Store,
}

impl Ctx {
    /// The server to log in to: as given, else the one of the saved
    /// login (a re-login after expiry needs no flags), else the default.
    pub fn login_server(&self) -> Result<String, Failure> {
        match &self.server {
            Some(s) => normalize_server(s),
            None => match self.store.load()? {
                Some(c) => normalize_server(&c.server),
                None => Ok(DEFAULT_SERVER.to_owned()),
            },
        }
    }

    /// A client with a token: `TENDCTL_TOKEN`, else the saved session,
    /// which is only ever sent to the server that issued it.
    pub fn client(&self) -> Result<Client, Failure> {
        let given = self.server.as_deref().map(normalize_server).transpose()?;
        if let (Some(server), Some(token)) = (&given, &self.token) {
            return Client::new(server.clone(), Some(token.clone()));
        }
        let saved = self.store.load()?;
        let server = match (given, &saved) {
            (Some(s), _) => s,
            (None, Some(c)) => normalize_server(&c.server)?,
            (None, None) => DEFAULT_SERVER.to_owned(),
        };
        if let Some(token) = &self.token {
            return Client::new(server, Some(token.clone()));
        }
        match saved {
            Some(c) if c.server != server => Err(Failure::NotLoggedIn(format!(
                "not logged in to {server} (the saved session is for {}): run tendctl login --server {server}",
                c.server
            ))),
            Some(c) if c.expires_at > Utc::now() => Client::new(server, Some(c.access_token)),
            _ => Err(Failure::NotLoggedIn(NOT_LOGGED_IN.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Credentials;

    fn ctx(dir: &std::path::Path, server: Option<&str>, token: Option<&str>) -> Ctx {
        Ctx {
            json: false,
            server: server.map(str::to_owned),
            token: token.map(str::to_owned),
            store: Store::new(dir.to_owned()),
        }
    }

    fn save(dir: &std::path::Path, server: &str, hours: i64) {
        Store::new(dir.to_owned())
            .save(&Credentials {
                server: server.into(),
                access_token: "t".into(),
                expires_at: Utc::now() + chrono::Duration::hours(hours),
            })
            .unwrap();
    }

    #[test]
    fn without_a_session_or_token_the_user_is_told_to_log_in() {
        let tmp = tempfile::tempdir().unwrap();
        let e = ctx(tmp.path(), None, None).client().err().unwrap();
        assert_eq!(e.to_string(), NOT_LOGGED_IN);
        assert_eq!(e.exit(), Exit::Refused);
    }

    #[test]
    fn an_expired_session_is_not_sent() {
        let tmp = tempfile::tempdir().unwrap();
        save(tmp.path(), "http://a:1", -1);
        let e = ctx(tmp.path(), None, None).client().err().unwrap();
        assert_eq!(e.to_string(), NOT_LOGGED_IN);
    }

    #[test]
    fn a_saved_token_goes_only_to_its_own_server() {
        let tmp = tempfile::tempdir().unwrap();
        save(tmp.path(), "http://a:1", 1);
        let c = ctx(tmp.path(), None, None).client().unwrap();
        assert_eq!(c.server(), "http://a:1", "the saved server is the default");
        assert!(ctx(tmp.path(), Some("http://a:1/"), None).client().is_ok());
        let e = ctx(tmp.path(), Some("http://b:2"), None)
            .client()
            .err()
            .unwrap();
        assert!(e.to_string().contains("not logged in to http://b:2"), "{e}");
        // An explicit token may go anywhere it is told to.
        assert!(
            ctx(tmp.path(), Some("http://b:2"), Some("x"))
                .client()
                .is_ok()
        );
    }
}
