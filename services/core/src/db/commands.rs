//! Commands and their lifecycle. Every state change is one statement or one
//! transaction, taken under the row's lock, so that a command is delivered
//! or cancelled/expired, never both, and concurrent reports resolve in one
//! order.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tend_proto::device::{Instruction, Report};
use tend_proto::event::Event;
use tend_proto::{CommandStatus, command::ReportStatus};
use tokio_postgres::Row;
use uuid::Uuid;

use super::page::{Cursor, Page};
use super::{DbError, GenericClient, Result, outbox};
use crate::signing::InstructionSigner;

#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub device_id: Uuid,
    pub kind: String,
    pub params: Value,
    pub status: CommandStatus,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub timeout_s: i32,
    pub expires_at: DateTime<Utc>,
    pub result: Option<Value>,
    /// The trace id of the request that queued it.
    pub trace_id: Option<String>,
    /// A number of its own, in the order commands were created: the
    /// action id hawkBit DDI clients know it by.
    pub seq: i64,
    /// The platform key that signed it, and its signature: `None` only
    /// while a command queued by tend-sync waits for the platform.
    pub key_id: Option<String>,
    pub signature: Option<String>,
}

const COLUMNS: &str = "id, tenant_id, device_id, kind, params, status, created_at, \
     delivered_at, started_at, finished_at, timeout_s, expires_at, result, trace_id, seq, \
     key_id, signature";
/// How many columns [`COLUMNS`] names: the index of a column selected after
/// them.
const COLUMN_COUNT: usize = 17;

fn from_row(r: &Row) -> Result<Command> {
    let status: String = r.get(5);
    Ok(Command {
        id: r.get(0),
        tenant_id: r.get(1),
        device_id: r.get(2),
        kind: r.get(3),
        params: r.get(4),
        status: status
            .parse()
            .map_err(|_| DbError::Corrupt(format!("command status {status:?}")))?,
        created_at: r.get(6),
        delivered_at: r.get(7),
        started_at: r.get(8),
        finished_at: r.get(9),
        timeout_s: r.get(10),
        expires_at: r.get(11),
        result: r.get(12),
        trace_id: r.get(13),
        seq: r.get(14),
        key_id: r.get(15),
        signature: r.get(16),
    })
}

impl Command {
    /// The command as its device receives it, signature included.
    pub fn instruction(&self) -> Instruction {
        Instruction {
            id: self.id,
            kind: self.kind.clone(),
            params: self.params.clone(),
            issued_at: self.created_at,
            expires_at: self.expires_at,
            timeout_s: self.timeout_s.max(0) as u32,
            trace_id: self.trace_id.clone(),
            key_id: self.key_id.clone(),
            signature: self.signature.clone(),
        }
    }
}

fn from_rows(rows: &[Row]) -> Result<Vec<Command>> {
    rows.iter().map(from_row).collect()
}

pub struct NewCommand<'a> {
    pub tenant_id: Uuid,
    pub device_id: Uuid,
    pub kind: &'a str,
    pub params: &'a Value,
    pub timeout_s: i32,
    pub expires_in_s: i32,
    pub created_by: Option<Uuid>,
    pub trace_id: Option<&'a str>,
    /// For `upgrade` and `restore`: the artifact it installs, if any, and
    /// the component it changes (one open command per component).
    pub artifact_id: Option<Uuid>,
    pub component: Option<&'a str>,
}

/// Queues a command signed by `signer`, and its `command.queued` event. Run
/// it in a transaction: the command, its signature and its announcement
/// commit together or not at all.
pub async fn create(
    c: &impl GenericClient,
    new: NewCommand<'_>,
    signer: &InstructionSigner,
) -> Result<Command> {
    let command = insert(c, new).await?;
    sign(c, command, signer).await
}

/// Queues a command without a signature, for tend-sync, which holds no
/// signing key: it is neither announced nor delivered until a platform
/// replica has checked and signed it ([`unsigned`], [`sign`]).
pub async fn create_unsigned(c: &impl GenericClient, new: NewCommand<'_>) -> Result<Command> {
    insert(c, new).await
}

/// Signs a queued command and announces it (`command.queued`).
pub async fn sign(
    c: &impl GenericClient,
    mut command: Command,
    signer: &InstructionSigner,
) -> Result<Command> {
    let signed = signer
        .sign(&command.instruction(), command.device_id)
        .map_err(|e| DbError::Corrupt(format!("command {}: {e}", command.id)))?;
    let stmt = c
        .prepare_cached("UPDATE commands SET key_id = $2, signature = $3 WHERE id = $1")
        .await?;
    c.execute(&stmt, &[&command.id, &signed.key_id, &signed.signature])
        .await?;
    command.key_id = Some(signed.key_id);
    command.signature = Some(signed.signature);
    outbox::insert(
        c,
        &Event::CommandQueued {
            command_id: command.id,
            device_id: command.device_id,
            tenant_id: command.tenant_id,
            trace_id: command.trace_id.clone(),
        },
    )
    .await?;
    Ok(command)
}

/// Queued commands nobody has signed yet, oldest first, locked until the
/// transaction ends (another replica skips them).
pub async fn unsigned(c: &impl GenericClient, limit: i64) -> Result<Vec<Command>> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM commands
             WHERE signature IS NULL AND status = 'queued'
             ORDER BY created_at LIMIT $1
             FOR UPDATE SKIP LOCKED"
        ))
        .await?;
    from_rows(&c.query(&stmt, &[&limit]).await?)
}

/// Ends a queued command the platform would not sign: `cancelled`, with
/// the reason as its result's error.
pub async fn refuse_unsigned(c: &impl GenericClient, id: Uuid, reason: &str) -> Result<()> {
    let stmt = c
        .prepare_cached(
            "UPDATE commands SET status = 'cancelled', finished_at = now(),
                    result = jsonb_build_object('error', $2::text)
             WHERE id = $1 AND status = 'queued' AND signature IS NULL",
        )
        .await?;
    c.execute(&stmt, &[&id, &reason]).await?;
    Ok(())
}

async fn insert(c: &impl GenericClient, new: NewCommand<'_>) -> Result<Command> {
    let stmt = c
        .prepare_cached(&format!(
            "INSERT INTO commands (id, tenant_id, device_id, kind, params, timeout_s, expires_at,
                                   created_by, trace_id, artifact_id, component)
             VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7), $8, $9, $10, $11)
             RETURNING {COLUMNS}"
        ))
        .await?;
    let id = Uuid::new_v4();
    let row = c
        .query_one(
            &stmt,
            &[
                &id,
                &new.tenant_id,
                &new.device_id,
                &new.kind,
                new.params,
                &new.timeout_s,
                &f64::from(new.expires_in_s),
                &new.created_by,
                &new.trace_id,
                &new.artifact_id,
                &new.component,
            ],
        )
        .await?;
    from_row(&row)
}

/// The components of the device that an open upgrade or restore is
/// changing (`commands_open_component_key` answers it).
pub async fn open_components(c: &impl GenericClient, device_id: Uuid) -> Result<Vec<String>> {
    let stmt = c
        .prepare_cached(
            "SELECT component FROM commands
             WHERE device_id = $1 AND component IS NOT NULL
               AND status IN ('queued', 'delivered', 'in_progress')",
        )
        .await?;
    Ok(c.query(&stmt, &[&device_id])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// The artifact of the last upgrade or restore of `component` that
/// succeeded on the device: the last version it ran healthy.
pub async fn last_good_artifact(
    c: &impl GenericClient,
    device_id: Uuid,
    component: &str,
) -> Result<Option<Uuid>> {
    let stmt = c
        .prepare_cached(
            "SELECT artifact_id FROM commands
             WHERE device_id = $1 AND component = $2 AND status = 'succeeded'
               AND artifact_id IS NOT NULL
             ORDER BY finished_at DESC LIMIT 1",
        )
        .await?;
    Ok(c.query_opt(&stmt, &[&device_id, &component])
        .await?
        .map(|r| r.get(0)))
}

pub async fn get(c: &impl GenericClient, tenant_id: Uuid, id: Uuid) -> Result<Option<Command>> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM commands WHERE id = $1 AND tenant_id = $2"
        ))
        .await?;
    c.query_opt(&stmt, &[&id, &tenant_id])
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// A device's commands, newest first.
pub async fn list_for_device(
    c: &impl GenericClient,
    tenant_id: Uuid,
    device_id: Uuid,
    after: Option<Cursor>,
    limit: i64,
) -> Result<Page<Command>> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM commands
             WHERE device_id = $1 AND tenant_id = $2
               AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4))
             ORDER BY created_at DESC, id DESC
             LIMIT $5"
        ))
        .await?;
    let rows = c
        .query(
            &stmt,
            &[
                &device_id,
                &tenant_id,
                &after.map(|a| a.created_at),
                &after.map(|a| a.id),
                &(limit + 1),
            ],
        )
        .await?;
    Ok(Page::from_rows(from_rows(&rows)?, limit, |c| Cursor {
        created_at: c.created_at,
        id: c.id,
    }))
}

/// Returned once per cancel request and matched at once, never stored: the
/// size of the `Cancelled` variant costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Cancel {
    Cancelled(Command),
    /// The command exists but has left `queued`.
    TooLate(CommandStatus),
    NotFound,
}

/// Cancels a queued command. The row lock orders this against delivery: if
/// a fetch took the command first, the update finds it no longer queued.
/// Run it in a transaction (it writes the `command.finished` event too).
pub async fn cancel(c: &impl GenericClient, tenant_id: Uuid, id: Uuid) -> Result<Cancel> {
    let stmt = c
        .prepare_cached(&format!(
            "UPDATE commands SET status = 'cancelled', finished_at = now()
             WHERE id = $1 AND tenant_id = $2 AND status = 'queued'
             RETURNING {COLUMNS}"
        ))
        .await?;
    if let Some(row) = c.query_opt(&stmt, &[&id, &tenant_id]).await? {
        let cmd = from_row(&row)?;
        outbox::insert(c, &finished_event(&cmd)).await?;
        return Ok(Cancel::Cancelled(cmd));
    }
    Ok(match get(c, tenant_id, id).await? {
        Some(cmd) => Cancel::TooLate(cmd.status),
        None => Cancel::NotFound,
    })
}

/// The outbox rows announcing `Event::CommandFinished` for every row of a
/// CTE named `done(id, device_id, tenant_id, status)`. The payload is the
/// serde form of the event, pinned by a test below.
const FINISHED_EVENTS: &str = "INSERT INTO outbox (topic, payload)
             SELECT 'command.finished', jsonb_build_object('type', 'command_finished',
                    'command_id', id, 'device_id', device_id, 'tenant_id', tenant_id, 'status', status)
             FROM done";

/// The outbox rows announcing `Event::CommandsQueued` for every row of a
/// CTE named `touched(device_id, tenant_id, batch_id)`: one event per
/// tenant, batch and `DEVICES_PER_EVENT` (10000, checked by a test below)
/// devices. A device with two commands may be named twice; marking it
/// twice costs nothing.
pub(super) const QUEUED_MANY_EVENTS: &str = "INSERT INTO outbox (topic, payload)
             SELECT 'commands.queued', jsonb_strip_nulls(jsonb_build_object(
                    'type', 'commands_queued', 'tenant_id', tenant_id, 'batch_id', batch_id,
                    'device_ids', jsonb_agg(device_id)))
             FROM (SELECT device_id, tenant_id, batch_id,
                          (row_number() OVER (PARTITION BY tenant_id, batch_id) - 1)
                              / 10000 AS part
                   FROM touched) numbered
             GROUP BY tenant_id, batch_id, part";

/// Cancels everything a device still had queued (it is going away).
pub async fn cancel_all_queued(c: &impl GenericClient, device_id: Uuid) -> Result<u64> {
    let stmt = c
        .prepare_cached(&format!(
            "WITH done AS (
                 UPDATE commands SET status = 'cancelled', finished_at = now()
                 WHERE device_id = $1 AND status = 'queued'
                 RETURNING id, device_id, tenant_id, status)
             {FINISHED_EVENTS}"
        ))
        .await?;
    Ok(c.execute(&stmt, &[&device_id]).await?)
}

/// The most instructions handed to a device in one fetch.
pub const FETCH_LIMIT: i64 = 50;

/// Hands a device its work: queued commands (not expired) become
/// `delivered`, and commands delivered before but not yet reported are
/// returned again (delivery is at-least-once; the agent's journal makes
/// execution at-most-once). Commands being cancelled right now are skipped.
pub async fn fetch_for_device(c: &impl GenericClient, device_id: Uuid) -> Result<Vec<Command>> {
    // One statement: the CTE's UPDATE and the outer SELECT see the same
    // snapshot, so a row just delivered is returned once, by the UPDATE.
    let stmt = c
        .prepare_cached(&format!(
            "WITH picked AS (
                 SELECT id FROM commands
                 WHERE device_id = $1 AND status = 'queued' AND expires_at > now()
                   AND signature IS NOT NULL
                 ORDER BY created_at
                 LIMIT $2
                 FOR UPDATE SKIP LOCKED),
             delivered AS (
                 UPDATE commands c SET status = 'delivered', delivered_at = now()
                 FROM picked WHERE c.id = picked.id
                 RETURNING c.*)
             SELECT {COLUMNS} FROM delivered
             UNION ALL
             SELECT {COLUMNS} FROM commands WHERE device_id = $1 AND status = 'delivered'
             ORDER BY created_at"
        ))
        .await?;
    from_rows(&c.query(&stmt, &[&device_id, &FETCH_LIMIT]).await?)
}

/// Whether a device has a command `queued` or `delivered`: the truth behind
/// the heartbeat's `pending` flag.
pub async fn has_open(c: &impl GenericClient, device_id: Uuid) -> Result<bool> {
    let stmt = c
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM commands
                            WHERE device_id = $1 AND status IN ('queued', 'delivered')
                              AND signature IS NOT NULL)",
        )
        .await?;
    Ok(c.query_one(&stmt, &[&device_id]).await?.get(0))
}

/// The devices that have a command `queued` or `delivered`: what a sync
/// replica must know as pending when it starts or missed events.
pub async fn devices_with_open_commands(c: &impl GenericClient) -> Result<Vec<Uuid>> {
    let stmt = c
        .prepare_cached(
            "SELECT DISTINCT device_id FROM commands
             WHERE status IN ('queued', 'delivered') AND signature IS NOT NULL",
        )
        .await?;
    Ok(c.query(&stmt, &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// What became of a device's report.
#[derive(Debug)]
pub enum ReportOutcome {
    /// The command moved (or, for a repeated `in_progress`, stayed).
    Applied(Command),
    /// The command had already ended exactly as reported: accepted again.
    Repeated(Command),
    /// The command had ended otherwise; a late report is kept for the
    /// record but changes nothing.
    Conflict(CommandStatus),
    /// No such command for this device.
    NotFound,
}

fn result_json(r: &Report) -> Value {
    json!({ "output": r.output, "error": r.error, "detail": r.detail })
}

/// Applies a device's report under the command's row lock. Run it in a
/// transaction: a final report writes the `command.finished` event.
pub async fn apply_report(
    c: &impl GenericClient,
    device_id: Uuid,
    id: Uuid,
    report: &Report,
) -> Result<ReportOutcome> {
    let lock = c
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM commands WHERE id = $1 AND device_id = $2 FOR UPDATE"
        ))
        .await?;
    let Some(row) = c.query_opt(&lock, &[&id, &device_id]).await? else {
        return Ok(ReportOutcome::NotFound);
    };
    let cmd = from_row(&row)?;
    let to = report.status.as_status();

    if cmd.status.accepts_reports() {
        let cmd = if report.status == ReportStatus::InProgress {
            // Each in_progress report with a detail (an upgrade's phase and
            // bytes) replaces the last one, so admins see where it is.
            let progress = report.detail.as_ref().map(|_| result_json(report));
            let stmt = c
                .prepare_cached(&format!(
                    "UPDATE commands SET status = 'in_progress',
                            started_at = COALESCE(started_at, now()),
                            result = COALESCE($2::jsonb, result)
                     WHERE id = $1 RETURNING {COLUMNS}"
                ))
                .await?;
            from_row(&c.query_one(&stmt, &[&id, &progress]).await?)?
        } else {
            let stmt = c
                .prepare_cached(&format!(
                    "UPDATE commands SET status = $2, result = $3, finished_at = now(),
                            started_at = COALESCE(started_at, now())
                     WHERE id = $1 RETURNING {COLUMNS}"
                ))
                .await?;
            let done = from_row(
                &c.query_one(&stmt, &[&id, &to.as_str(), &result_json(report)])
                    .await?,
            )?;
            outbox::insert(c, &finished_event(&done)).await?;
            if rolled_back(&done, report) {
                deny_rolled_back(c, &done, report).await?;
            }
            done
        };
        return Ok(ReportOutcome::Applied(cmd));
    }

    if cmd.status == to && cmd.result.as_ref() == Some(&result_json(report)) {
        return Ok(ReportOutcome::Repeated(cmd));
    }
    if cmd.status.is_terminal() {
        let stmt = c
            .prepare_cached(
                "UPDATE commands SET late_report = jsonb_build_object('at', now(), 'status', $2::text)
                                   || $3::jsonb
                 WHERE id = $1",
            )
            .await?;
        c.execute(&stmt, &[&id, &to.as_str(), &result_json(report)])
            .await?;
    }
    Ok(ReportOutcome::Conflict(cmd.status))
}

/// What became of a device's own recovery record.
#[derive(Debug)]
pub enum RecoveryOutcome {
    Recorded(Command),
    /// Already recorded for this device (a retry after a lost answer).
    Repeated(Command),
    /// The id belongs to another command.
    Taken,
    /// The device recorded its limit of recoveries in the last hour.
    Limited,
}

/// The oldest start a recovery record may claim: a device may have been
/// cut off for weeks, but not for longer than history is worth ordering by.
const RECOVERY_MAX_AGE_DAYS: i64 = 30;

/// Records a restore the device ran on its own as a finished `restore`
/// command of its history, with its `command.finished` event, unless the
/// device recorded `per_hour` of them in the last hour. `params` must
/// already be valid restore params and `report` final. Run it in a
/// transaction: the device's records are serialised by an advisory lock,
/// so concurrent posts cannot all pass the limit.
pub async fn record_recovery(
    c: &impl GenericClient,
    tenant_id: Uuid,
    device_id: Uuid,
    recovery: &tend_proto::device::Recovery,
    component: &str,
    per_hour: i64,
) -> Result<RecoveryOutcome> {
    let lock = c
        .prepare_cached("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 17))")
        .await?;
    c.execute(&lock, &[&device_id.to_string()]).await?;
    let existing = c
        .prepare_cached(&format!(
            "SELECT {COLUMNS}, device_id = $2 FROM commands WHERE id = $1"
        ))
        .await?;
    if let Some(row) = c.query_opt(&existing, &[&recovery.id, &device_id]).await? {
        let own: bool = row.get(COLUMN_COUNT);
        return Ok(if own {
            RecoveryOutcome::Repeated(from_row(&row)?)
        } else {
            RecoveryOutcome::Taken
        });
    }
    // Counted by when they were recorded (the server's clock), not by the
    // start the device claims; such a record is the only command delivered
    // when it was created.
    let recent = c
        .prepare_cached(
            "SELECT count(*) FROM commands
             WHERE device_id = $1 AND finished_at > now() - interval '1 hour'
               AND kind = 'restore' AND created_by IS NULL AND delivered_at = created_at",
        )
        .await?;
    let count: i64 = c.query_one(&recent, &[&device_id]).await?.get(0);
    if count >= per_hour {
        return Ok(RecoveryOutcome::Limited);
    }
    // The device's clock may be off: the history shows no start in the
    // future, and none older than RECOVERY_MAX_AGE_DAYS.
    let now = Utc::now();
    let started = recovery
        .started_at
        .clamp(now - chrono::TimeDelta::days(RECOVERY_MAX_AGE_DAYS), now);
    let stmt = c
        .prepare_cached(&format!(
            "INSERT INTO commands (id, tenant_id, device_id, kind, params, status, created_at,
                                   delivered_at, started_at, finished_at, timeout_s, expires_at,
                                   result, component)
             VALUES ($1, $2, $3, 'restore', $4, $5, $6, $6, $6, now(),
                     GREATEST(1, LEAST(2147483647, ceil(extract(epoch FROM now() - $6))))::int,
                     now(), $7, $8)
             ON CONFLICT (id) DO NOTHING
             RETURNING {COLUMNS}"
        ))
        .await?;
    let status = recovery.report.status.as_status();
    let inserted = c
        .query_opt(
            &stmt,
            &[
                &recovery.id,
                &tenant_id,
                &device_id,
                &recovery.params,
                &status.as_str(),
                &started,
                &result_json(&recovery.report),
                &component,
            ],
        )
        .await?;
    // Another device's command took the id in the meantime (only the
    // device's own records are serialised).
    let Some(row) = inserted else {
        return Ok(RecoveryOutcome::Taken);
    };
    let cmd = from_row(&row)?;
    outbox::insert(c, &finished_event(&cmd)).await?;
    Ok(RecoveryOutcome::Recorded(cmd))
}

/// Whether a final report says an upgrade failed and the device put the
/// previous version back (seed 004).
fn rolled_back(cmd: &Command, report: &Report) -> bool {
    cmd.kind == "upgrade"
        && cmd.status == CommandStatus::Failed
        && report
            .detail
            .as_ref()
            .and_then(|d| d.get("rolled_back"))
            .and_then(Value::as_bool)
            == Some(true)
}

/// Puts the device on the denylist of the artifact its upgrade rolled back
/// from, so no update check offers it the same broken version again.
async fn deny_rolled_back(c: &impl GenericClient, cmd: &Command, report: &Report) -> Result<()> {
    let why = report.error.as_deref().unwrap_or("no error given");
    let mut reason = format!("upgrade {} rolled back: {why}", cmd.id);
    if reason.chars().count() > 1000 {
        reason = reason.chars().take(999).chain(['…']).collect();
    }
    // Its audit row has no actor: tend did it, on the device's report.
    let stmt = c
        .prepare_cached(
            "WITH added AS (
                 INSERT INTO artifact_denylist (artifact_id, device_id, reason)
                 SELECT artifact_id, device_id, $2 FROM commands
                 WHERE id = $1 AND artifact_id IS NOT NULL
                 ON CONFLICT (artifact_id, device_id) DO NOTHING
                 RETURNING artifact_id, device_id)
             INSERT INTO audit_log (tenant_id, action, target_type, target_id, summary)
             SELECT $3, 'denylist.add', 'artifact', artifact_id::text,
                    jsonb_build_object('device_id', device_id, 'reason', $2::text,
                                       'automatic', true, 'command_id', $1::uuid)
             FROM added",
        )
        .await?;
    c.execute(&stmt, &[&cmd.id, &reason, &cmd.tenant_id])
        .await?;
    Ok(())
}

pub fn finished_event(cmd: &Command) -> Event {
    Event::CommandFinished {
        command_id: cmd.id,
        device_id: cmd.device_id,
        tenant_id: cmd.tenant_id,
        status: cmd.status,
    }
}

/// How many commands wait or run, by kind and status (the open states
/// only: they are few, and partial indexes cover them).
pub async fn open_counts(c: &impl GenericClient) -> Result<Vec<(String, String, i64)>> {
    let stmt = c
        .prepare_cached(
            "SELECT kind, status, count(*) FROM commands
             WHERE status IN ('queued', 'delivered', 'in_progress')
             GROUP BY kind, status",
        )
        .await?;
    Ok(c.query(&stmt, &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// The most rows one sweep statement touches, so a backlog is worked off in
/// bounded transactions rather than one huge one.
pub const SWEEP_BATCH: i64 = 1000;

/// Queued commands past `expires_at` become `expired`. Returns how many.
pub async fn expire_due(c: &impl GenericClient) -> Result<u64> {
    let stmt = c
        .prepare_cached(&format!(
            "WITH due AS (
                 SELECT id FROM commands
                 WHERE status = 'queued' AND expires_at <= now()
                 LIMIT $1 FOR UPDATE SKIP LOCKED),
             done AS (
                 UPDATE commands c SET status = 'expired', finished_at = now()
                 FROM due WHERE c.id = due.id
                 RETURNING c.id, c.device_id, c.tenant_id, c.status)
             {FINISHED_EVENTS}"
        ))
        .await?;
    Ok(c.execute(&stmt, &[&SWEEP_BATCH]).await?)
}

/// Delivered commands not started, and started commands not finished,
/// within `timeout_s` become `timed_out`. Returns how many.
pub async fn time_out_due(c: &impl GenericClient) -> Result<u64> {
    let stmt = c
        .prepare_cached(&format!(
            "WITH due AS (
                 SELECT id FROM commands
                 WHERE (status = 'delivered'
                        AND delivered_at + make_interval(secs => timeout_s) <= now())
                    OR (status = 'in_progress'
                        AND started_at + make_interval(secs => timeout_s) <= now())
                 LIMIT $1 FOR UPDATE SKIP LOCKED),
             done AS (
                 UPDATE commands c SET status = 'timed_out', finished_at = now()
                 FROM due WHERE c.id = due.id
                 RETURNING c.id, c.device_id, c.tenant_id, c.status)
             {FINISHED_EVENTS}"
        ))
        .await?;
    Ok(c.execute(&stmt, &[&SWEEP_BATCH]).await?)
}

/// Announces again the commands still waiting for their device after
/// `older_than_s` since their last announcement: a lost notification or a
/// flushed Redis then costs seconds, never a command. The announcements
/// are batched (`commands.queued`): a fleet that stays offline with a
/// batch's commands is re-announced in a few messages, not one per
/// command. Answers how many commands were announced.
pub async fn reannounce_due(c: &impl GenericClient, older_than_s: f64) -> Result<u64> {
    let stmt = c
        .prepare_cached(&format!(
            "WITH due AS (
                 SELECT id FROM commands
                 WHERE status IN ('queued', 'delivered') AND signature IS NOT NULL
                   AND announced_at <= now() - make_interval(secs => $1)
                   AND (status = 'delivered' OR expires_at > now())
                 ORDER BY announced_at
                 LIMIT $2 FOR UPDATE SKIP LOCKED),
             touched AS (
                 UPDATE commands c SET announced_at = now()
                 FROM due WHERE c.id = due.id
                 RETURNING c.device_id, c.tenant_id, c.batch_id),
             announced AS ({QUEUED_MANY_EVENTS})
             SELECT count(*) FROM touched"
        ))
        .await?;
    let row = c.query_one(&stmt, &[&older_than_s, &SWEEP_BATCH]).await?;
    Ok(row.get::<_, i64>(0).unsigned_abs())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SQL above writes event payloads by hand; they must stay what
    /// `Event`'s serde form is, or the sync servers would drop them.
    #[test]
    fn the_sql_event_payloads_match_the_wire_format() {
        let ids = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        for (event, sql) in [
            (
                Event::CommandFinished {
                    command_id: ids.0,
                    device_id: ids.1,
                    tenant_id: ids.2,
                    status: CommandStatus::Expired,
                },
                FINISHED_EVENTS,
            ),
            (
                Event::CommandsQueued {
                    tenant_id: ids.2,
                    batch_id: Some(ids.0),
                    device_ids: vec![ids.1],
                },
                QUEUED_MANY_EVENTS,
            ),
        ] {
            let v = serde_json::to_value(&event).unwrap();
            if let Event::CommandsQueued { .. } = event {
                let per_event = tend_proto::event::DEVICES_PER_EVENT.to_string();
                assert!(sql.contains(&format!("/ {per_event} AS part")), "{sql}");
            }
            assert!(sql.contains(&format!("'{}'", event.topic())));
            for (key, value) in v.as_object().unwrap() {
                assert!(
                    sql.contains(&format!("'{key}'")),
                    "{key} missing from {sql}"
                );
                if key == "type" {
                    assert!(sql.contains(&format!("'{}'", value.as_str().unwrap())));
                }
            }
        }
    }
}
