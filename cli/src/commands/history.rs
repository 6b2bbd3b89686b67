//! `tendctl commands list|show|cancel|bulk`: a device's commands and their
//! ends, and one command for many devices.

use super::{list, print_command, print_list, show_or_follow};
use crate::Ctx;
use crate::cli::CommandsCmd;
use crate::exit::{Exit, Failure};
use crate::output;

pub(super) async fn run(ctx: &Ctx, cmd: CommandsCmd) -> Result<Exit, Failure> {
    let client = ctx.client()?;
    match cmd {
        CommandsCmd::List { device_id, page } => {
            let path = format!("/devices/{device_id}/commands");
            let answer = list(&client, &path, Vec::new(), &page).await?;
            let again = format!("tendctl commands list {device_id}");
            print_list(ctx, &answer, output::commands, &again);
            Ok(Exit::Ok)
        }
        CommandsCmd::Show { id, wait } => {
            let command = client.get(&format!("/commands/{id}"), &[]).await?;
            show_or_follow(ctx, &client, command, &wait).await
        }
        CommandsCmd::Cancel { id } => {
            let command = client
                .post(&format!("/commands/{id}/cancel"), &serde_json::json!({}))
                .await?;
            print_command(ctx, &command);
            Ok(Exit::Ok)
        }
        CommandsCmd::Bulk(a) => super::batches::create(ctx, &client, a).await,
    }
}
