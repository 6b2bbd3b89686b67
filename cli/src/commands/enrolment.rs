//! `tendctl enrolment-tokens create|list|revoke`.

use serde_json::{Value, json};

use super::devices::label_map;
use super::{list, print_list};
use crate::Ctx;
use crate::cli::EnrolmentTokensCmd;
use crate::exit::{Exit, Failure};
use crate::output::{self, Table, cell};

pub(super) async fn run(ctx: &Ctx, cmd: EnrolmentTokensCmd) -> Result<Exit, Failure> {
    match cmd {
        EnrolmentTokensCmd::Create {
            device_type,
            labels,
            uses,
            expires_in,
            auto_accept,
        } => {
            let labels = label_map(labels)?;
            let mut body = json!({ "labels": labels, "auto_accept": auto_accept });
            if let Some(t) = device_type {
                body["device_type"] = json!(t);
            }
            if let Some(n) = uses {
                body["uses"] = json!(n);
            }
            if let Some(s) = expires_in {
                body["expires_in_s"] = json!(s);
            }
            let answer = ctx.client()?.post("/enrolment-tokens", &body).await?;
            if ctx.json {
                output::json(&answer);
            } else {
                output::out(&format!(
                    "{}\n\
                     ┌─ enrolment token: shown only this once ─\n\
                     │ enrolment_token = \"{}\"\n\
                     └─ put it in the agents' config (with device_type); revoke it when done\n",
                    tokens(std::slice::from_ref(&answer)),
                    cell(&answer["token"]),
                ));
            }
            Ok(Exit::Ok)
        }
        EnrolmentTokensCmd::List(page) => {
            let answer = list(&ctx.client()?, "/enrolment-tokens", Vec::new(), &page).await?;
            print_list(ctx, &answer, tokens, "tendctl enrolment-tokens list");
            Ok(Exit::Ok)
        }
        EnrolmentTokensCmd::Revoke { id } => {
            ctx.client()?
                .delete(&format!("/enrolment-tokens/{id}"))
                .await?;
            if ctx.json {
                output::json(&json!({ "id": id, "revoked": true }));
            } else {
                output::out(&format!("Revoked enrolment token {id}.\n"));
            }
            Ok(Exit::Ok)
        }
    }
}

fn tokens(items: &[Value]) -> String {
    let mut t = Table::new(&[
        "ID", "TYPE", "USED", "LEFT", "AUTO", "EXPIRES", "REVOKED", "LABELS",
    ]);
    for e in items {
        t.row(vec![
            cell(&e["id"]),
            cell(&e["device_type"]),
            cell(&e["used"]),
            cell(&e["uses_left"]),
            cell(&e["auto_accept"]),
            cell(&e["expires_at"]),
            cell(&e["revoked_at"]),
            cell(&e["labels"]),
        ]);
    }
    t.render()
}
