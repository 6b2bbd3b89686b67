//! The subcommands, one module per group, and what they share: paging
//! through lists and ending a `--wait`.

mod actions;
mod artifacts;
mod audit;
mod batches;
mod devices;
mod enrolment;
mod history;
mod session;
mod users;

use serde_json::{Value, json};

use crate::Ctx;
use crate::cli::{Cmd, PageArgs, WaitArgs};
use crate::client::Client;
use crate::exit::{Exit, Failure};
use crate::output;
use crate::wait::{self, Followed};

pub(crate) async fn dispatch(ctx: &Ctx, cmd: Cmd) -> Result<Exit, Failure> {
    match cmd {
        Cmd::Login(a) => session::login(ctx, a).await,
        Cmd::Logout => session::logout(ctx),
        Cmd::Devices(c) => devices::run(ctx, c).await,
        Cmd::Users(c) => users::run(ctx, c).await,
        Cmd::EnrolmentTokens(c) => enrolment::run(ctx, c).await,
        Cmd::Reboot(a) => actions::action(ctx, "reboot", a).await,
        Cmd::Shutdown(a) => actions::action(ctx, "shutdown", a).await,
        Cmd::Logs(a) => actions::logs(ctx, a).await,
        Cmd::Commands(c) => history::run(ctx, c).await,
        Cmd::Batches(c) => batches::run(ctx, c).await,
        Cmd::Artifacts(c) => artifacts::run(ctx, c).await,
        Cmd::Upgrade(a) => actions::upgrade(ctx, a).await,
        Cmd::Restore(a) => actions::restore(ctx, a).await,
        Cmd::Audit(a) => audit::run(ctx, a).await,
    }
}

/// One page of a list, or with `--all` every page from the first (or the
/// given cursor) joined into one list of the same shape.
async fn list(
    client: &Client,
    path: &str,
    mut query: Vec<(&'static str, String)>,
    page: &PageArgs,
) -> Result<Value, Failure> {
    if let Some(l) = page.limit {
        query.push(("limit", l.to_string()));
    }
    let mut cursor = page.cursor.clone();
    let mut items = Vec::new();
    loop {
        let mut q = query.clone();
        if let Some(c) = &cursor {
            q.push(("cursor", c.clone()));
        }
        let mut answer = client.get(path, &q).await?;
        if !page.all {
            return Ok(answer);
        }
        if let Some(Value::Array(page_items)) = answer.get_mut("items").map(Value::take) {
            items.extend(page_items);
        }
        let next = answer["next_cursor"].as_str().map(str::to_owned);
        // A server that hands back the same cursor would loop forever.
        if next.is_some() && next == cursor {
            return Err(Failure::Unreachable(format!(
                "{} repeated the cursor {}: stopping",
                client.server(),
                next.unwrap_or_default()
            )));
        }
        match next {
            Some(n) => cursor = Some(n),
            None => return Ok(json!({ "items": items, "next_cursor": null })),
        }
    }
}

/// Prints a list and, without `--all`, where the next page starts.
fn print_list(ctx: &Ctx, answer: &Value, table: fn(&[Value]) -> String, again: &str) {
    if ctx.json {
        output::json(answer);
        return;
    }
    let items = answer["items"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    output::out(&table(items));
    if let Some(next) = answer["next_cursor"].as_str() {
        eprintln!("more: {again} --cursor {next}  (or --all)");
    }
}

/// Prints a command and, with `--wait`, follows it first; the exit code
/// says how it ended.
async fn show_or_follow(
    ctx: &Ctx,
    client: &Client,
    command: Value,
    wait: &WaitArgs,
) -> Result<Exit, Failure> {
    if !wait.wait {
        print_command(ctx, &command);
        return Ok(Exit::Ok);
    }
    match wait::follow(client, command, wait.wait_timeout).await? {
        Followed::Ended(c, exit) => {
            print_command(ctx, &c);
            Ok(exit)
        }
        Followed::GaveUp(c) => {
            print_command(ctx, &c);
            Err(wait::gave_up(&c, wait.wait_timeout))
        }
    }
}

fn print_command(ctx: &Ctx, command: &Value) {
    if ctx.json {
        output::json(command);
    } else {
        output::out(&output::command(command));
    }
}
