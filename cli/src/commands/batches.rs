//! `tendctl commands bulk` and `tendctl batches show`: one command for
//! every device a selector matches, and where the batch's commands are.

use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::Ctx;
use crate::cli::{BatchesCmd, BulkArgs};
use crate::client::Client;
use crate::exit::{Exit, Failure};
use crate::output;

pub(super) async fn run(ctx: &Ctx, cmd: BatchesCmd) -> Result<Exit, Failure> {
    let client = ctx.client()?;
    match cmd {
        BatchesCmd::Show { id } => {
            let batch = client.get(&format!("/command-batches/{id}"), &[]).await?;
            if ctx.json {
                output::json(&batch);
            } else {
                output::out(&output::block(&[
                    ("id", output::cell(&batch["id"])),
                    ("created_at", output::cell(&batch["created_at"])),
                    ("matched", output::cell(&batch["matched"])),
                    ("by_status", counts(&batch["by_status"])),
                ]));
            }
            Ok(Exit::Ok)
        }
    }
}

pub(super) async fn create(ctx: &Ctx, client: &Client, a: BulkArgs) -> Result<Exit, Failure> {
    let body = request(&a);
    // A key of tendctl's own unless given: its retries then make one batch.
    let key = a
        .queue
        .idempotency_key
        .clone()
        .unwrap_or_else(|| format!("tendctl-{}", Uuid::new_v4()));
    let answer = client
        .post_idempotent("/commands/bulk", &body, &key)
        .await?;
    if ctx.json {
        output::json(&answer);
        return Ok(Exit::Ok);
    }
    output::out(&output::block(&[
        ("batch_id", output::cell(&answer["batch_id"])),
        ("matched", output::cell(&answer["matched"])),
        ("queued", output::cell(&answer["queued"])),
        ("skipped", counts(&answer["skipped"])),
    ]));
    eprintln!(
        "Follow it with: tendctl batches show {}",
        output::cell(&answer["batch_id"])
    );
    Ok(Exit::Ok)
}

/// The request body: the selector holds only the conditions given (the
/// server refuses an empty one).
fn request(a: &BulkArgs) -> Value {
    let mut selector = Map::new();
    if let Some(t) = &a.device_type {
        selector.insert("device_type".into(), t.clone().into());
    }
    if !a.labels.is_empty() {
        let labels: Map<String, Value> = a
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into()))
            .collect();
        selector.insert("labels".into(), labels.into());
    }
    if let Some(s) = &a.status {
        selector.insert("status".into(), s.clone().into());
    }
    if let Some(c) = &a.component {
        selector.insert("component".into(), c.clone().into());
    }
    if !a.devices.is_empty() {
        selector.insert("device_ids".into(), json!(a.devices));
    }
    let mut command = json!({ "kind": a.kind, "params": a.params.clone().unwrap_or(json!({})) });
    if let Some(t) = a.queue.timeout {
        command["timeout_s"] = t.into();
    }
    if let Some(e) = a.queue.expires_in {
        command["expires_in_s"] = e.into();
    }
    json!({ "selector": selector, "command": command })
}

/// `{reason: count}` as `reason 3, other 1`, `-` when empty.
fn counts(v: &Value) -> String {
    match v.as_object() {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(k, n)| format!("{} {}", output::sanitize_line(k), output::cell(n)))
            .collect::<Vec<_>>()
            .join(", "),
        _ => "-".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Cmd, CommandsCmd};

    fn bulk(args: &[&str]) -> BulkArgs {
        let cli =
            Cli::try_parse_from([&["tendctl", "commands", "bulk"], args].concat()).expect("parses");
        match cli.command {
            Cmd::Commands(CommandsCmd::Bulk(a)) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_selector_holds_exactly_the_conditions_given() {
        let id = Uuid::new_v4().to_string();
        let a = bulk(&[
            "--device-type",
            "kiosk",
            "--label",
            "site:north",
            "--label",
            "floor:2",
            "--status",
            "online",
            "--component",
            "app:1.2.0",
            "--device",
            &id,
            "--kind",
            "upgrade",
            "--params",
            r#"{"artifact_id": "x"}"#,
            "--timeout",
            "5m",
        ]);
        assert_eq!(
            request(&a),
            json!({
                "selector": {
                    "device_type": "kiosk", "labels": {"site": "north", "floor": "2"},
                    "status": "online", "component": "app:1.2.0", "device_ids": [id],
                },
                "command": {"kind": "upgrade", "params": {"artifact_id": "x"}, "timeout_s": 300},
            })
        );
        let a = bulk(&["--type", "kiosk", "--kind", "reboot"]);
        assert_eq!(
            request(&a),
            json!({"selector": {"device_type": "kiosk"}, "command": {"kind": "reboot", "params": {}}})
        );
    }

    #[test]
    fn params_must_be_a_json_object() {
        for bad in ["[]", "nope", "3"] {
            let args = [
                "tendctl", "commands", "bulk", "--type", "k", "--kind", "reboot", "--params", bad,
            ];
            assert!(Cli::try_parse_from(args).is_err(), "{bad}");
        }
    }

    #[test]
    fn counts_read_as_reasons() {
        assert_eq!(
            counts(&json!({"denylisted": 2, "device_type": 1})),
            "denylisted 2, device_type 1"
        );
        assert_eq!(counts(&json!({})), "-");
    }
}
