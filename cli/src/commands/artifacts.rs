//! `tendctl artifacts upload|list|show|release|unrelease|delete|denylist`.

use std::path::Path;

use futures_util::StreamExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;
use uuid::Uuid;

use super::{list, print_list};
use crate::Ctx;
use crate::cli::{ArtifactListArgs, ArtifactsCmd, DenylistCmd, UploadArgs};
use crate::client::Client;
use crate::exit::{Exit, Failure};
use crate::output;
use crate::progress::Progress;

/// Bytes read from disk at a time, hashing and uploading: large enough
/// that system calls do not dominate, small enough to stay out of the way.
const CHUNK: usize = 256 * 1024;

pub(super) async fn run(ctx: &Ctx, cmd: ArtifactsCmd) -> Result<Exit, Failure> {
    match cmd {
        ArtifactsCmd::Upload(a) => upload(ctx, a).await,
        ArtifactsCmd::List(a) => list_artifacts(ctx, a).await,
        ArtifactsCmd::Show { id } => {
            let a = ctx.client()?.get(&format!("/artifacts/{id}"), &[]).await?;
            print_artifact(ctx, &a);
            Ok(Exit::Ok)
        }
        ArtifactsCmd::Release { id } => set_released(ctx, id, true).await,
        ArtifactsCmd::Unrelease { id } => set_released(ctx, id, false).await,
        ArtifactsCmd::Delete { id } => {
            ctx.client()?.delete(&format!("/artifacts/{id}")).await?;
            if ctx.json {
                // The API answers 204 with no body; scripts still get one document.
                output::json(&json!({ "id": id, "deleted": true }));
            } else {
                output::out(&format!("Deleted artifact {id} and its bytes.\n"));
            }
            Ok(Exit::Ok)
        }
        ArtifactsCmd::Denylist(c) => denylist(ctx, c).await,
    }
}

async fn list_artifacts(ctx: &Ctx, a: ArtifactListArgs) -> Result<Exit, Failure> {
    let mut query = Vec::new();
    if let Some(c) = a.component {
        query.push(("component", c));
    }
    if let Some(t) = a.device_type {
        query.push(("device_type", t));
    }
    let answer = list(&ctx.client()?, "/artifacts", query, &a.page).await?;
    print_list(ctx, &answer, output::artifacts, "tendctl artifacts list");
    Ok(Exit::Ok)
}

async fn set_released(ctx: &Ctx, id: Uuid, released: bool) -> Result<Exit, Failure> {
    let a = ctx
        .client()?
        .patch(
            &format!("/artifacts/{id}"),
            &json!({ "released": released }),
        )
        .await?;
    print_artifact(ctx, &a);
    Ok(Exit::Ok)
}

fn print_artifact(ctx: &Ctx, a: &Value) {
    if ctx.json {
        output::json(a);
    } else {
        output::out(&output::artifact(a));
    }
}

/// Creates the artifact with the file's size and SHA-256 declared, streams
/// the file, and releases it if asked. The platform refuses bytes that
/// differ from what was declared, so a file changed in between is caught
/// there, not shipped.
async fn upload(ctx: &Ctx, a: UploadArgs) -> Result<Exit, Failure> {
    let shown = a.file.display().to_string();
    let mut file = open(&a.file).await?;
    let size = file
        .metadata()
        .await
        .map_err(|e| Failure::local(format!("reading {shown}"), e))?
        .len();
    let name = a
        .file
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned);
    let label = output::sanitize_line(name.as_deref().unwrap_or(&shown));
    // Hashing is local and quick next to the upload; off a terminal only
    // the upload reports its progress.
    let sha256 = hash(
        &mut file,
        size,
        &shown,
        Progress::terminal_only(&format!("hashing {label}"), size),
    )
    .await?;

    let client = ctx.client()?;
    let mut new = json!({
        "component": a.component,
        "version": a.version,
        "device_types": a.device_types,
        "sha256": sha256,
        "size": size,
    });
    if let Some(n) = name {
        new["filename"] = n.into();
    }
    let created = client.post("/artifacts", &new).await?;
    let id = created["id"].as_str().unwrap_or_default().to_owned();

    file.rewind()
        .await
        .map_err(|e| Failure::local(format!("reading {shown}"), e))?;
    let progress = Progress::new(&format!("uploading {label}"), size);
    let mut uploaded = match send(&client, &id, file, size, progress).await {
        Ok(v) => v,
        Err(f) => {
            abandon(&client, &id).await;
            return Err(f);
        }
    };
    if a.release {
        uploaded = client
            .patch(&format!("/artifacts/{id}"), &json!({ "released": true }))
            .await
            .inspect_err(|_| {
                // The bytes are in; only the release is left to do.
                eprintln!(
                    "tendctl: artifact {id} is uploaded but not released; \
                     release it with: tendctl artifacts release {id}"
                );
            })?;
    }
    print_artifact(ctx, &uploaded);
    Ok(Exit::Ok)
}

async fn open(path: &Path) -> Result<tokio::fs::File, Failure> {
    let shown = path.display();
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| Failure::local(format!("opening {shown}"), e))?;
    let meta = file
        .metadata()
        .await
        .map_err(|e| Failure::local(format!("reading {shown}"), e))?;
    if !meta.is_file() {
        return Err(Failure::Usage(format!("{shown} is not a regular file")));
    }
    Ok(file)
}

/// The SHA-256 of the file's first `size` bytes, in lowercase hex, read
/// a chunk at a time.
async fn hash(
    file: &mut tokio::fs::File,
    size: u64,
    shown: &str,
    mut progress: Progress,
) -> Result<String, Failure> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0; CHUNK];
    let mut reader = file.take(size);
    loop {
        let n = reader
            .read(&mut buf)
            .await
            .map_err(|e| Failure::local(format!("reading {shown}"), e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        progress.advance(n as u64);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Streams the file's first `size` bytes (what was hashed, even if the
/// file has grown since) as the artifact's content.
async fn send(
    client: &Client,
    id: &str,
    file: tokio::fs::File,
    size: u64,
    mut progress: Progress,
) -> Result<Value, Failure> {
    let stream = ReaderStream::with_capacity(file.take(size), CHUNK).inspect(move |chunk| {
        if let Ok(bytes) = chunk {
            progress.advance(bytes.len() as u64);
        }
    });
    // The progress counts bytes handed to the connection; its bar is
    // cleared when the request is done with the stream.
    client
        .put_stream(
            &format!("/artifacts/{id}/content"),
            reqwest::Body::wrap_stream(stream),
            size,
        )
        .await
}

/// Deletes an artifact whose upload failed, so that a retry of the same
/// command leaves no `pending_upload` artifact behind; says so when that
/// fails too.
async fn abandon(client: &Client, id: &str) {
    if let Err(e) = client.delete(&format!("/artifacts/{id}")).await {
        eprintln!(
            "tendctl: artifact {id} was created but has no bytes ({e}); \
             delete it with: tendctl artifacts delete {id}"
        );
    }
}

async fn denylist(ctx: &Ctx, cmd: DenylistCmd) -> Result<Exit, Failure> {
    let client = ctx.client()?;
    match cmd {
        DenylistCmd::Add {
            artifact_id,
            device_id,
            reason,
        } => {
            let mut body = json!({});
            if let Some(r) = reason {
                body["reason"] = r.into();
            }
            let entry = client
                .put(
                    &format!("/artifacts/{artifact_id}/denylist/{device_id}"),
                    &body,
                )
                .await?;
            if ctx.json {
                output::json(&entry);
            } else {
                output::out(&output::denylist_entry(&entry));
            }
            Ok(Exit::Ok)
        }
        DenylistCmd::Remove {
            artifact_id,
            device_id,
        } => {
            client
                .delete(&format!("/artifacts/{artifact_id}/denylist/{device_id}"))
                .await?;
            if ctx.json {
                output::json(&json!({
                    "artifact_id": artifact_id, "device_id": device_id, "removed": true,
                }));
            } else {
                output::out(&format!(
                    "Removed device {device_id} from the denylist of artifact {artifact_id}.\n"
                ));
            }
            Ok(Exit::Ok)
        }
        DenylistCmd::List { artifact_id, page } => {
            let path = format!("/artifacts/{artifact_id}/denylist");
            let answer = list(&client, &path, Vec::new(), &page).await?;
            let again = format!("tendctl artifacts denylist list {artifact_id}");
            print_list(ctx, &answer, output::denylist, &again);
            Ok(Exit::Ok)
        }
    }
}
