//! `tendctl login` and `tendctl logout`.

use std::io::{BufRead, IsTerminal, Write};

use chrono::Utc;
use serde_json::json;

use crate::Ctx;
use crate::cli::LoginArgs;
use crate::client::Client;
use crate::config::Credentials;
use crate::exit::{Exit, Failure};
use crate::output;

pub(super) async fn login(ctx: &Ctx, args: LoginArgs) -> Result<Exit, Failure> {
    let server = ctx.login_server()?;
    let tty = std::io::stdin().is_terminal();
    let username = match args.username {
        Some(u) => u,
        None if tty && !args.password_stdin => prompt_line("Username: ")?,
        None => {
            return Err(Failure::Usage(
                "--username is required when the password comes from stdin".into(),
            ));
        }
    };
    let password = if tty && !args.password_stdin {
        rpassword::prompt_password("Password: ")
            .map_err(|e| Failure::local("reading the password", e))?
    } else {
        read_stdin_line()?
    };
    if password.is_empty() {
        return Err(Failure::Usage("the password is empty".into()));
    }

    // No token: logging in is how one is had.
    let client = Client::new(server.clone(), None)?;
    let answer = client
        .post(
            "/auth/login",
            &json!({ "username": username, "password": password }),
        )
        .await?;
    let (Some(token), Some(expires_in)) = (
        answer["access_token"].as_str(),
        answer["expires_in"].as_i64(),
    ) else {
        return Err(Failure::Unreachable(format!(
            "{server} answered the login without access_token and expires_in"
        )));
    };
    let creds = Credentials {
        server: server.clone(),
        access_token: token.to_owned(),
        expires_at: Utc::now() + chrono::Duration::seconds(expires_in),
    };
    ctx.store.save(&creds)?;
    if ctx.json {
        output::json(&answer);
    } else {
        output::out(&format!(
            "Logged in to {server} as {}; the session lasts until {}.\n",
            output::sanitize_line(&username),
            creds
                .expires_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ));
    }
    Ok(Exit::Ok)
}

pub(super) fn logout(ctx: &Ctx) -> Result<Exit, Failure> {
    let removed = ctx.store.remove()?;
    if ctx.json {
        output::json(&json!({ "logged_out": removed }));
    } else if removed {
        output::out(&format!(
            "Logged out: deleted {}.\n",
            ctx.store.path().display()
        ));
    } else {
        output::out("Not logged in: nothing to delete.\n");
    }
    Ok(Exit::Ok)
}

/// Asks on stderr (stdout may be captured) and reads one line of stdin.
pub(super) fn prompt_line(prompt: &str) -> Result<String, Failure> {
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    read_stdin_line()
}

/// The first line of stdin without its line ending; every other byte,
/// spaces included, belongs to the value.
pub(super) fn read_stdin_line() -> Result<String, Failure> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| Failure::local("reading stdin", e))?;
    Ok(trim_line_end(&line).to_owned())
}

fn trim_line_end(s: &str) -> &str {
    let s = s.strip_suffix('\n').unwrap_or(s);
    s.strip_suffix('\r').unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_line_ending_is_taken_off_a_password() {
        assert_eq!(trim_line_end("pa ss \n"), "pa ss ");
        assert_eq!(trim_line_end("pass\r\n"), "pass");
        assert_eq!(trim_line_end("pass"), "pass");
    }
}
