//! `tendctl users list|update|remove`: an admin's view of the tenant's
//! users.

use std::io::IsTerminal;

use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::session::{prompt_line, read_stdin_line};
use super::{list, print_list};
use crate::Ctx;
use crate::cli::UsersCmd;
use crate::exit::{Exit, Failure};
use crate::output::{self, Table, cell};

pub(super) async fn run(ctx: &Ctx, cmd: UsersCmd) -> Result<Exit, Failure> {
    match cmd {
        UsersCmd::List { page } => {
            let answer = list(&ctx.client()?, "/users", Vec::new(), &page).await?;
            print_list(ctx, &answer, table, "tendctl users list");
            Ok(Exit::Ok)
        }
        UsersCmd::Update {
            id,
            role,
            disable,
            enable,
            password_stdin,
        } => {
            let mut change = Map::new();
            if let Some(r) = role {
                change.insert("role".into(), r.into());
            }
            if disable || enable {
                change.insert("disabled".into(), disable.into());
            }
            if password_stdin {
                let password = read_stdin_line()?;
                if password.is_empty() {
                    return Err(Failure::Usage("the password is empty".into()));
                }
                change.insert("password".into(), password.into());
            }
            if change.is_empty() {
                return Err(Failure::Usage(
                    "nothing to change: give --role, --disable, --enable or --password-stdin"
                        .into(),
                ));
            }
            let user = ctx
                .client()?
                .patch(&format!("/users/{id}"), &Value::Object(change))
                .await?;
            if ctx.json {
                output::json(&user);
            } else {
                output::out(&table(std::slice::from_ref(&user)));
                eprintln!("Changed; the user's sessions have ended.");
            }
            Ok(Exit::Ok)
        }
        UsersCmd::Remove { id, yes } => remove(ctx, id, yes).await,
    }
}

async fn remove(ctx: &Ctx, id: Uuid, yes: bool) -> Result<Exit, Failure> {
    if !yes && !std::io::stdin().is_terminal() {
        return Err(Failure::Usage(
            "refusing to remove a user without --yes: stdin is not a terminal to confirm on".into(),
        ));
    }
    if !yes {
        let answer = prompt_line(&format!(
            "Remove user {id}? Their sessions end at once. [y/N] "
        ))?;
        if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
            return Err(Failure::Usage(
                "not confirmed: the user was not removed".into(),
            ));
        }
    }
    ctx.client()?.delete(&format!("/users/{id}")).await?;
    if ctx.json {
        output::json(&json!({ "id": id, "removed": true }));
    } else {
        output::out(&format!("Removed user {id}.\n"));
    }
    Ok(Exit::Ok)
}

fn table(items: &[Value]) -> String {
    let mut t = Table::new(&["ID", "USERNAME", "ROLE", "DISABLED", "CREATED"]);
    for u in items {
        t.row(vec![
            cell(&u["id"]),
            cell(&u["username"]),
            cell(&u["role"]),
            cell(&u["disabled"]),
            cell(&u["created_at"]),
        ]);
    }
    t.render()
}
