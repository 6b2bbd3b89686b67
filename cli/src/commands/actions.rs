//! `tendctl reboot|shutdown|logs|upgrade|restore`: queue a command for a
//! device, and with `--wait` follow it to its end.

use std::io::IsTerminal;

use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::{print_command, show_or_follow};
use crate::Ctx;
use crate::cli::{ActionArgs, LogsArgs, QueueArgs, RestoreArgs, UpgradeArgs, WaitArgs};
use crate::client::Client;
use crate::exit::{Exit, Failure};
use crate::output;
use crate::wait::{self, Followed};

pub(super) async fn action(ctx: &Ctx, kind: &str, a: ActionArgs) -> Result<Exit, Failure> {
    queue_and_show(ctx, a.device_id, kind, Map::new(), &a.queue, &a.wait).await
}

/// An `upgrade`: the platform resolves the artifact and refuses one the
/// device may not take (not ready, another device type, denylisted).
pub(super) async fn upgrade(ctx: &Ctx, a: UpgradeArgs) -> Result<Exit, Failure> {
    let mut params = Map::new();
    params.insert("artifact_id".into(), a.artifact.to_string().into());
    queue_and_show(ctx, a.device_id, "upgrade", params, &a.queue, &a.wait).await
}

pub(super) async fn restore(ctx: &Ctx, a: RestoreArgs) -> Result<Exit, Failure> {
    let params = restore_params(a.component, a.source, a.version)?;
    queue_and_show(ctx, a.device_id, "restore", params, &a.queue, &a.wait).await
}

/// `{component, source?, version?}`; the source left out is the server's
/// default (the backup), which holds one version and so takes none.
fn restore_params(
    component: String,
    source: Option<String>,
    version: Option<String>,
) -> Result<Map<String, Value>, Failure> {
    if version.is_some() && matches!(source.as_deref(), None | Some("backup")) {
        return Err(Failure::Usage(
            "--version needs --source cloud or peer: the backup holds one version".into(),
        ));
    }
    let mut params = Map::new();
    params.insert("component".into(), component.into());
    if let Some(s) = source {
        params.insert("source".into(), s.into());
    }
    if let Some(v) = version {
        params.insert("version".into(), v.into());
    }
    Ok(params)
}

async fn queue_and_show(
    ctx: &Ctx,
    device: Uuid,
    kind: &str,
    params: Map<String, Value>,
    q: &QueueArgs,
    w: &WaitArgs,
) -> Result<Exit, Failure> {
    let client = ctx.client()?;
    let command = queue(&client, device, kind, params, q).await?;
    hint(ctx, &command, w);
    show_or_follow(ctx, &client, command, w).await
}

pub(super) async fn logs(ctx: &Ctx, a: LogsArgs) -> Result<Exit, Failure> {
    let mut params = Map::new();
    params.insert("source".into(), a.source.into());
    for (k, v) in [
        ("since", a.since),
        ("until", a.until),
        ("pattern", a.pattern),
    ] {
        if let Some(v) = v {
            params.insert(k.into(), v.into());
        }
    }
    if let Some(n) = a.max_lines {
        params.insert("max_lines".into(), n.into());
    }
    let client = ctx.client()?;
    let command = queue(&client, a.device_id, "log_query", params, &a.queue).await?;
    hint(ctx, &command, &a.wait);
    if !a.wait.wait || ctx.json {
        return show_or_follow(ctx, &client, command, &a.wait).await;
    }
    // People asked for the lines: print those, not the command, when it
    // worked.
    match wait::follow(&client, command, a.wait.wait_timeout).await? {
        Followed::Ended(c, Exit::Ok) => {
            print_log_result(&c["result"]);
            Ok(Exit::Ok)
        }
        Followed::Ended(c, exit) => {
            print_command(ctx, &c);
            Ok(exit)
        }
        Followed::GaveUp(c) => {
            print_command(ctx, &c);
            Err(wait::gave_up(&c, a.wait.wait_timeout))
        }
    }
}

async fn queue(
    client: &Client,
    device: Uuid,
    kind: &str,
    params: Map<String, Value>,
    q: &QueueArgs,
) -> Result<Value, Failure> {
    let mut body = json!({ "kind": kind, "params": params });
    if let Some(t) = q.timeout {
        body["timeout_s"] = t.into();
    }
    if let Some(e) = q.expires_in {
        body["expires_in_s"] = e.into();
    }
    // A key of tendctl's own unless given: its retries then queue the
    // command once.
    let key = q
        .idempotency_key
        .clone()
        .unwrap_or_else(|| format!("tendctl-{}", Uuid::new_v4()));
    client
        .post_idempotent(&format!("/devices/{device}/commands"), &body, &key)
        .await
}

/// Without `--wait`, how to follow the command later (on stderr, so a
/// script reading stdout is not bothered).
fn hint(ctx: &Ctx, command: &Value, wait: &WaitArgs) {
    if !wait.wait && !ctx.json {
        eprintln!(
            "Queued. Follow it with: tendctl commands show {} --wait",
            output::cell(&command["id"])
        );
    }
}

/// The matching lines on stdout as the device sent them, so they can be
/// piped on (escaped only when a terminal shows them); the counts on stderr.
fn print_log_result(result: &Value) {
    let text = result["output"].as_str().unwrap_or_default();
    let text = if std::io::stdout().is_terminal() {
        output::sanitize_text(text)
    } else {
        text.to_owned()
    };
    output::out(&text);
    if !text.is_empty() && !text.ends_with('\n') {
        output::out("\n");
    }
    if let Some(summary) = log_summary(&result["detail"]) {
        eprintln!("{summary}");
    }
}

/// `matched 12, returned 10, truncated` from the result's `detail`.
fn log_summary(detail: &Value) -> Option<String> {
    let matched = detail["matched"].as_u64()?;
    let returned = detail["returned"].as_u64()?;
    let mut s = format!("matched {matched}, returned {returned}");
    if detail["truncated"].as_bool() == Some(true) {
        s.push_str(", truncated");
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restore_names_a_version_only_from_the_cloud_or_a_peer() {
        let p = |s: Option<&str>, v: Option<&str>| {
            restore_params("app".into(), s.map(Into::into), v.map(Into::into))
        };
        assert_eq!(
            Value::Object(p(None, None).unwrap()),
            json!({ "component": "app" })
        );
        assert_eq!(
            Value::Object(p(Some("cloud"), Some("1.2.3")).unwrap()),
            json!({ "component": "app", "source": "cloud", "version": "1.2.3" })
        );
        assert!(p(Some("peer"), None).is_ok());
        for source in [None, Some("backup")] {
            let e = p(source, Some("1.2.3")).unwrap_err();
            assert_eq!(e.exit(), Exit::Usage, "{source:?}");
        }
    }

    #[test]
    fn the_log_summary_says_when_lines_were_left_out() {
        let d = json!({"matched": 12, "returned": 10, "truncated": true});
        assert_eq!(
            log_summary(&d).as_deref(),
            Some("matched 12, returned 10, truncated")
        );
        let d = json!({"matched": 3, "returned": 3, "truncated": false});
        assert_eq!(log_summary(&d).as_deref(), Some("matched 3, returned 3"));
        assert_eq!(log_summary(&Value::Null), None);
    }
}
