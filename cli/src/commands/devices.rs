//! `tendctl devices list|show|create|decommission|pending|accept|reject`.

use std::collections::BTreeMap;
use std::io::IsTerminal;

use serde_json::json;
use uuid::Uuid;

use super::session::prompt_line;
use super::{list, print_list};
use crate::Ctx;
use crate::cli::{DeviceListArgs, DevicesCmd};
use crate::exit::{Exit, Failure};
use crate::output;

pub(super) async fn run(ctx: &Ctx, cmd: DevicesCmd) -> Result<Exit, Failure> {
    match cmd {
        DevicesCmd::List(a) => list_devices(ctx, a).await,
        DevicesCmd::Show { id } => {
            let d = ctx.client()?.get(&format!("/devices/{id}"), &[]).await?;
            if ctx.json {
                output::json(&d);
            } else {
                output::out(&output::device(&d));
            }
            Ok(Exit::Ok)
        }
        DevicesCmd::Create {
            name,
            device_type,
            labels,
        } => create(ctx, name, device_type, labels).await,
        DevicesCmd::Decommission { id, yes } => decommission(ctx, id, yes).await,
        DevicesCmd::Pending(page) => {
            let query = vec![("admission", "pending".to_owned())];
            let answer = list(&ctx.client()?, "/devices", query, &page).await?;
            print_list(ctx, &answer, output::devices, "tendctl devices pending");
            Ok(Exit::Ok)
        }
        DevicesCmd::Accept { id } => admit(ctx, id, "accept").await,
        DevicesCmd::Reject { id } => admit(ctx, id, "reject").await,
    }
}

/// `POST /devices/{id}/accept` or `/reject`.
async fn admit(ctx: &Ctx, id: Uuid, verb: &str) -> Result<Exit, Failure> {
    let d = ctx
        .client()?
        .post(&format!("/devices/{id}/{verb}"), &json!({}))
        .await?;
    if ctx.json {
        output::json(&d);
    } else {
        output::out(&format!(
            "Device {} ({id}) is {}.\n",
            output::cell(&d["name"]),
            output::cell(&d["admission"])
        ));
    }
    Ok(Exit::Ok)
}

async fn list_devices(ctx: &Ctx, a: DeviceListArgs) -> Result<Exit, Failure> {
    let mut query = Vec::new();
    if let Some(s) = a.status {
        query.push(("status", s));
    }
    if let Some(t) = a.device_type {
        query.push(("device_type", t));
    }
    if let Some(a) = a.admission {
        query.push(("admission", a));
    }
    for (k, v) in a.labels {
        query.push(("label", format!("{k}:{v}")));
    }
    let answer = list(&ctx.client()?, "/devices", query, &a.page).await?;
    print_list(ctx, &answer, output::devices, "tendctl devices list");
    Ok(Exit::Ok)
}

async fn create(
    ctx: &Ctx,
    name: String,
    device_type: String,
    labels: Vec<(String, String)>,
) -> Result<Exit, Failure> {
    let labels = label_map(labels)?;
    let answer = ctx
        .client()?
        .post(
            "/devices",
            &json!({ "name": name, "device_type": device_type, "labels": labels }),
        )
        .await?;
    if ctx.json {
        output::json(&answer);
        return Ok(Exit::Ok);
    }
    let creds = &answer["credentials"];
    output::out(&format!(
        "{}\n\
         ┌─ device credentials: the secret is shown only this once ─\n\
         │ device_id      = \"{}\"\n\
         │ device_secret  = \"{}\"\n\
         └─ put both in the agent's config now; a lost secret means a new device\n",
        output::device(&answer),
        output::cell(&creds["device_id"]),
        output::cell(&creds["secret"]),
    ));
    Ok(Exit::Ok)
}

/// Labels as the API takes them; a key given twice is a mistake, not a
/// silent last-one-wins.
pub(super) fn label_map(
    labels: Vec<(String, String)>,
) -> Result<BTreeMap<String, String>, Failure> {
    let mut map = BTreeMap::new();
    for (k, v) in labels {
        if map.contains_key(&k) {
            return Err(Failure::Usage(format!("label {k:?} is given twice")));
        }
        map.insert(k, v);
    }
    Ok(map)
}

async fn decommission(ctx: &Ctx, id: Uuid, yes: bool) -> Result<Exit, Failure> {
    // Checked before anything else: a script without --yes learns of its
    // mistake the same way whatever the server would say.
    if !yes && !std::io::stdin().is_terminal() {
        return Err(Failure::Usage(
            "refusing to decommission without --yes: stdin is not a terminal to confirm on".into(),
        ));
    }
    let client = ctx.client()?;
    let path = format!("/devices/{id}");
    if !yes {
        // Fetched first so the question names the device, and an unknown id
        // fails before anyone is asked anything.
        let d = client.get(&path, &[]).await?;
        let answer = prompt_line(&format!(
            "Decommission device {} ({id})? Its credentials stop working at once \
             and its queued commands are cancelled. [y/N] ",
            output::cell(&d["name"])
        ))?;
        if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
            return Err(Failure::Usage(
                "not confirmed: the device was not decommissioned".into(),
            ));
        }
    }
    client.delete(&path).await?;
    if ctx.json {
        // The API answers 204 with no body; scripts still get one document.
        output::json(&json!({ "id": id, "decommissioned": true }));
    } else {
        output::out(&format!("Decommissioned device {id}.\n"));
    }
    Ok(Exit::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_key_given_twice_is_refused() {
        let l = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        let m = label_map(vec![l("site", "north"), l("floor", "2")]).unwrap();
        assert_eq!(m.len(), 2);
        let e = label_map(vec![l("site", "north"), l("site", "south")]).unwrap_err();
        assert_eq!(e.exit(), Exit::Usage);
    }
}
