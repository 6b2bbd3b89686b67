//! Presence, moved from Redis to PostgreSQL.
//!
//! The sync servers record each heartbeat in a Redis sorted set (device id
//! scored by the time of its latest heartbeat, in ms) and keep what the
//! device reported beside it; heartbeats never touch PostgreSQL. Each sweep,
//! the monitor reads the heartbeats that arrived since its last scan and
//! writes onto the device rows what an admin would query: a device coming
//! online, a changed report or component version, and `last_seen_at` once
//! per `TEND_PRESENCE_REFRESH_S` (the API reads the exact time from Redis).
//! A steady fleet so costs PostgreSQL one row per device per refresh
//! period, not one per heartbeat.
//!
//! Then it marks offline the devices silent for three heartbeat intervals.
//! The sorted set names them without reading the fleet: the devices whose
//! latest heartbeat is scored between the previous sweep's cutoff and this
//! one's fell silent in between. Where that frontier cannot be trusted
//! (this replica's first sweep, or a presence set that began after the
//! frontier because Redis lost its data), every online device is checked
//! against Redis once instead.
//!
//! One replica per tick does this, under a transaction-scoped advisory lock;
//! each replica keeps its own scan cursor, so a replica that takes over
//! reads some heartbeats again, which changes nothing, and misses none.
//!
//! Silence counts only while Redis can be trusted to hold the heartbeats.
//! Nobody is marked offline while Redis fails, nor during one offline
//! window after it failed ([`OfflineGate`]), nor during one offline window
//! after the presence data began: Redis keeps a marker beside the
//! heartbeats ([`Live::presence_epoch`]), which a flush or a restart
//! without persistence loses with them. The marker also carries a failure
//! one replica saw to the others ([`Live::restart_presence_epoch`]), so a
//! replica that takes the lock after an outage it did not see waits too,
//! and a sync server that could not write heartbeats moves it when it
//! writes them again ([`Live::record_beats`]): a monitor that reconnected
//! first then still waits one window for that server's devices.

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use chrono::{DateTime, Utc};
use tend_core::db::devices::{self, Seen};
use tend_core::db::{GenericClient, Pool};
use tend_core::live::{Beat, Live};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use tend_core::retry::{Outage, ticker};

/// Heartbeats per Redis read, and so per `UPDATE`: a few hundred kilobytes,
/// which keeps both round trips short even for a large fleet.
const SCAN_LIMIT: isize = 5000;

/// Online devices per page when every one is checked against Redis: one
/// query and one `ZMSCORE` of that many ids each.
const RECONCILE_PAGE: i64 = 10_000;

/// How far before its own start a scan leaves the next one to read again.
/// A sync server stamps a heartbeat with its own clock and writes it a
/// moment later, so a heartbeat can land below a time a scan already
/// covered; reading the last two seconds again catches it (and clock skew
/// between servers up to that much), and `record_seen` ignores what it
/// already has.
const SCAN_OVERLAP_MS: i64 = 2000;

/// How many heartbeat intervals of silence make a device offline: one lost
/// heartbeat or a slow network is not an outage, three in a row are.
const MISSED_BEATS: u32 = 3;

/// Moves presence from Redis to PostgreSQL and detects silent devices.
pub(crate) struct Presence {
    pool: Pool,
    live: Live,
    /// Silence after which a device is offline: [`MISSED_BEATS`] heartbeats.
    offline_after: Duration,
    /// Score after which the next scan starts (exclusive).
    since_ms: i64,
    /// The cutoff of the last sweep that marked silent devices: every
    /// device silent since then was marked. `None` until this replica has
    /// checked every online device once.
    silent_until_ms: Option<i64>,
    /// How stale a device row's `last_seen_at` may grow.
    refresh: Duration,
    gate: OfflineGate,
    /// Set when a scan failed; cleared once the presence epoch was moved
    /// to the recovery, telling every replica.
    epoch_stale: bool,
    redis: Outage,
    step: Outage,
}

/// What one scan of the presence set achieved.
struct Scan {
    /// Every heartbeat scored up to here was read; `i64::MAX` once the
    /// scan reached the end of the set.
    covered_ms: i64,
    /// Device rows written.
    recorded: u64,
    /// Heartbeats read from Redis.
    read: u64,
    /// False when Redis failed during the scan: the picture is incomplete.
    complete: bool,
}

impl Presence {
    /// The first scan reaches back one offline window: older heartbeats
    /// could not keep a device online anyway.
    pub(crate) fn new(pool: Pool, live: Live, heartbeat: Duration, refresh: Duration) -> Self {
        let offline_after = heartbeat * MISSED_BEATS;
        Presence {
            pool,
            live,
            offline_after,
            since_ms: Utc::now().timestamp_millis() - duration_ms(offline_after),
            silent_until_ms: None,
            refresh,
            gate: OfflineGate::default(),
            epoch_stale: false,
            redis: Outage::new("presence scan (Redis)"),
            step: Outage::new("presence sweep"),
        }
    }

    /// Runs a presence step every `interval` until `token` is cancelled; a
    /// step under way then is finished first.
    pub(crate) async fn run(mut self, interval: Duration, token: CancellationToken) {
        let mut tick = ticker(interval);
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tick.tick() => {}
            }
            match self.sweep().await {
                Ok(()) => self.step.recovered(),
                Err(e) => self.step.failed(&e),
            };
        }
    }

    /// One presence step: record new heartbeats, then mark silent devices
    /// offline. Does nothing while another replica holds the presence lock.
    async fn sweep(&mut self) -> anyhow::Result<()> {
        let mut client = self.pool.get().await.context("presence: PostgreSQL pool")?;
        let tx = client.transaction().await.context("presence: BEGIN")?;
        if !devices::try_lock_presence(&tx)
            .await
            .context("presence: taking the advisory lock")?
        {
            tracing::debug!("another monitor replica records presence this tick");
            return Ok(());
        }

        let step_started = Instant::now();
        // One cutoff for both steps: a heartbeat older than it cannot keep a
        // device online, so the scan does not even read it (re-reading it
        // would flip an offline device back to online for a moment).
        let started_ms = Utc::now().timestamp_millis();
        let cutoff_ms = started_ms - duration_ms(self.offline_after);
        let from_ms = self.since_ms.max(cutoff_ms);
        let scan = self.scan(&tx, from_ms).await?;
        let epoch = if scan.complete {
            self.presence_epoch(started_ms).await
        } else {
            None
        };
        let now = Instant::now();
        if epoch.is_some() {
            self.redis.recovered();
        } else {
            self.gate.hold(now, self.offline_after);
            self.epoch_stale = true;
        }
        // Without a complete scan, silence may only mean that Redis lost
        // the heartbeats: nobody is marked offline for that.
        let offline = match epoch {
            Some(epoch_ms)
                if epoch_allows(epoch_ms, started_ms, self.offline_after)
                    && self.gate.allows(now) =>
            {
                self.mark_silent(&tx, epoch_ms, cutoff_ms).await?
            }
            _ => None,
        };
        tx.commit().await.context("presence: COMMIT")?;
        let offline = match offline {
            Some(marked) => {
                // Only once committed: a marking rolled back is done again.
                self.silent_until_ms = Some(cutoff_ms);
                marked
            }
            None => Vec::new(),
        };

        self.since_ms = next_start(from_ms, scan.covered_ms, started_ms);
        if scan.read > 0 {
            tracing::debug!(
                read = scan.read,
                written = scan.recorded,
                "read {} heartbeats, wrote {} device rows",
                scan.read,
                scan.recorded
            );
        }
        metrics::counter!("tend_devices_went_offline_total").increment(offline.len() as u64);
        metrics::counter!("tend_presence_rows_written_total").increment(scan.recorded);
        metrics::counter!("tend_presence_heartbeats_read_total").increment(scan.read);
        metrics::histogram!("tend_presence_step_seconds")
            .record(step_started.elapsed().as_secs_f64());
        for id in offline {
            tracing::info!(device.id = %id, "device {id} went offline");
        }
        Ok(())
    }

    /// Since when the presence set has held every heartbeat, as far as
    /// its epoch marker tells; `None` when Redis failed to say. After a
    /// failure this replica saw, the epoch moves to now first, so that
    /// every replica waits.
    async fn presence_epoch(&mut self, now_ms: i64) -> Option<i64> {
        let epoch = if self.epoch_stale {
            // Redis answers again: the window starts now, not when this
            // sweep started (a sweep can wait on a reconnecting Redis for
            // the whole outage), and this replica's gate holds from now too.
            let recovered_ms = Utc::now().timestamp_millis();
            self.gate.hold(Instant::now(), self.offline_after);
            self.live
                .restart_presence_epoch(recovered_ms)
                .await
                .map(|()| recovered_ms)
        } else {
            self.live.presence_epoch(now_ms).await
        };
        match epoch {
            Ok(epoch_ms) => {
                if !self.epoch_stale && epoch_ms == now_ms {
                    tracing::info!(
                        "Redis holds no presence epoch (new, flushed or restarted): \
                         no device is marked offline for one offline window"
                    );
                }
                self.epoch_stale = false;
                Some(epoch_ms)
            }
            Err(e) => {
                self.redis.failed(
                    anyhow!(e).context("reading the presence epoch; offline detection paused"),
                );
                None
            }
        }
    }

    /// Marks offline, in `tx`, the online devices silent since before
    /// `cutoff_ms`: those whose latest heartbeat fell since the previous
    /// marking, as the presence set orders them, or every online device
    /// checked against Redis when this replica has no such frontier or
    /// the presence set (begun at `epoch_ms`) is younger than it. `None`
    /// when Redis failed meanwhile: nothing is known, and offline
    /// detection waits a window.
    async fn mark_silent(
        &mut self,
        tx: &impl GenericClient,
        epoch_ms: i64,
        cutoff_ms: i64,
    ) -> anyhow::Result<Option<Vec<Uuid>>> {
        let cutoff = ms_to_utc(cutoff_ms).context("presence: the clock is out of range")?;
        let marked = match self.silent_until_ms {
            Some(after_ms) if after_ms >= epoch_ms => {
                self.mark_fallen_silent(tx, after_ms, cutoff_ms, cutoff)
                    .await?
            }
            _ => self.mark_every_silent(tx, cutoff_ms, cutoff).await?,
        };
        if marked.is_none() {
            self.gate.hold(Instant::now(), self.offline_after);
            self.epoch_stale = true;
        }
        Ok(marked)
    }

    /// The devices whose latest heartbeat is scored in (`after_ms`,
    /// `cutoff_ms`]: read from the presence set in pages.
    async fn mark_fallen_silent(
        &mut self,
        tx: &impl GenericClient,
        after_ms: i64,
        cutoff_ms: i64,
        cutoff: DateTime<Utc>,
    ) -> anyhow::Result<Option<Vec<Uuid>>> {
        let mut marked = Vec::new();
        let mut from = after_ms;
        loop {
            let silent = match self.live.scored_between(from, cutoff_ms, SCAN_LIMIT).await {
                Ok(silent) => silent,
                Err(e) => {
                    self.redis.failed(
                        anyhow!(e).context("reading silent devices; offline detection paused"),
                    );
                    return Ok(None);
                }
            };
            let at_ms: Vec<i64> = silent.iter().map(|(_, at)| *at).collect();
            let silent: Vec<(Uuid, Option<DateTime<Utc>>)> = silent
                .into_iter()
                .map(|(id, at)| (id, ms_to_utc(at)))
                .collect();
            marked.extend(
                devices::mark_offline(tx, &silent, cutoff)
                    .await
                    .context("presence: marking silent devices offline")?,
            );
            match advance(&at_ms, SCAN_LIMIT.unsigned_abs()) {
                Next::Done => return Ok(Some(marked)),
                Next::More(next) | Next::SkipTie(next) => from = next,
            }
        }
    }

    /// Every online device whose row was not refreshed since `cutoff`,
    /// checked against the presence set: silent unless Redis heard it
    /// since. Costs a read of those rows and of their scores, so it runs
    /// only when the frontier cannot be trusted.
    async fn mark_every_silent(
        &mut self,
        tx: &impl GenericClient,
        cutoff_ms: i64,
        cutoff: DateTime<Utc>,
    ) -> anyhow::Result<Option<Vec<Uuid>>> {
        let started = Instant::now();
        let mut marked = Vec::new();
        let mut checked = 0;
        let mut after = Uuid::nil();
        loop {
            let rows = devices::online_seen_before(tx, cutoff, after, RECONCILE_PAGE)
                .await
                .context("presence: reading online devices")?;
            let Some(&(last, _)) = rows.last() else { break };
            after = last;
            checked += rows.len();
            let ids: Vec<Uuid> = rows.iter().map(|(id, _)| *id).collect();
            let scores = match self.live.scores(&ids).await {
                Ok(scores) => scores,
                Err(e) => {
                    self.redis
                        .failed(anyhow!(e).context("reading heartbeats; offline detection paused"));
                    return Ok(None);
                }
            };
            let silent: Vec<(Uuid, Option<DateTime<Utc>>)> = rows
                .iter()
                .zip(scores)
                .filter(|(_, score)| score.is_none_or(|at| at <= cutoff_ms))
                .map(|((id, seen), score)| (*id, score.and_then(ms_to_utc).or(*seen)))
                .collect();
            marked.extend(
                devices::mark_offline(tx, &silent, cutoff)
                    .await
                    .context("presence: marking silent devices offline")?,
            );
            if rows.len() < RECONCILE_PAGE.unsigned_abs() as usize {
                break;
            }
        }
        tracing::info!(
            checked,
            offline = marked.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "checked {checked} online devices against Redis"
        );
        Ok(Some(marked))
    }

    /// Reads every heartbeat scored after `from_ms` and records it in `tx`.
    async fn scan(&mut self, tx: &impl GenericClient, from_ms: i64) -> anyhow::Result<Scan> {
        let mut since = from_ms;
        let (mut recorded, mut read) = (0, 0);
        loop {
            let beats = match self.live.beats_since(since, SCAN_LIMIT).await {
                Ok(beats) => beats,
                Err(e) => {
                    self.redis
                        .failed(anyhow!(e).context("reading heartbeats; offline detection paused"));
                    return Ok(Scan {
                        covered_ms: since,
                        recorded,
                        read,
                        complete: false,
                    });
                }
            };
            read += beats.len() as u64;
            let seen: Vec<Seen> = beats.iter().filter_map(to_seen).collect();
            recorded += devices::record_seen(tx, &seen, self.refresh)
                .await
                .context("presence: recording heartbeats")?;
            let at_ms: Vec<i64> = beats.iter().map(|b| b.at_ms).collect();
            match advance(&at_ms, SCAN_LIMIT.unsigned_abs()) {
                Next::Done => {
                    return Ok(Scan {
                        covered_ms: i64::MAX,
                        recorded,
                        read,
                        complete: true,
                    });
                }
                Next::More(from) => since = from,
                Next::SkipTie(from) => {
                    tracing::warn!(
                        at_ms = from,
                        "more than {SCAN_LIMIT} heartbeats share one millisecond; \
                         the rest are recorded at their next heartbeat"
                    );
                    since = from;
                }
            }
        }
    }
}

/// What to do after one read of the presence set, which returns scores
/// strictly above the cursor, oldest first, at most `limit`.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// The read was short: the set is read to its end.
    Done,
    /// The read was full: read again after this score. It is one below the
    /// last score read, because more heartbeats may share that score.
    More(i64),
    /// The read was full of a single score; the set cannot be paged within
    /// one score, so the scan moves past it.
    SkipTie(i64),
}

fn advance(at_ms: &[i64], limit: usize) -> Next {
    match (at_ms.first(), at_ms.last()) {
        (Some(&first), Some(&last)) if at_ms.len() >= limit => {
            if first < last {
                Next::More(last - 1)
            } else {
                Next::SkipTie(last)
            }
        }
        _ => Next::Done,
    }
}

/// Where the next sweep's scan starts: everything up to `covered_ms` was
/// read, and only heartbeats stamped less than [`SCAN_OVERLAP_MS`] before
/// the scan started can still arrive late; the lower of the two, never
/// further back than this scan's start.
fn next_start(from_ms: i64, covered_ms: i64, started_ms: i64) -> i64 {
    from_ms.max(covered_ms.min(started_ms - SCAN_OVERLAP_MS))
}

/// A heartbeat as the device row records it; `None` for a time out of
/// range. What the device reported is kept only if it is a JSON value
/// other than `null`; otherwise the row keeps what it had.
fn to_seen(beat: &Beat) -> Option<Seen> {
    Some(Seen {
        device_id: beat.device_id,
        at: ms_to_utc(beat.at_ms)?,
        reported: beat
            .reported
            .as_deref()
            // jsonb refuses the NUL character; one such value would fail
            // the whole batch, so it is dropped (the sync server strips
            // NULs already: this is the second line of defence).
            .filter(|s| !s.contains("\\u0000"))
            .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
            .filter(|v| !v.is_null()),
    })
}

fn ms_to_utc(ms: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Whether silence may count, given the presence epoch: only once the
/// presence set has held heartbeats for a whole offline window.
fn epoch_allows(epoch_ms: i64, now_ms: i64, window: Duration) -> bool {
    now_ms >= epoch_ms.saturating_add(duration_ms(window))
}

/// Holds offline detection back after Redis failed. Heartbeats sent during
/// the outage may not have been recorded, so devices get one full offline
/// window of working Redis to be heard again before their silence counts.
/// This gate knows the failures this replica saw; the presence epoch
/// carries them to the other replicas.
#[derive(Debug, Default)]
struct OfflineGate {
    hold_until: Option<Instant>,
}

impl OfflineGate {
    /// Redis failed at `now`.
    fn hold(&mut self, now: Instant, window: Duration) {
        self.hold_until = Some(now + window);
    }

    fn allows(&self, now: Instant) -> bool {
        self.hold_until.is_none_or(|until| now >= until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_read_ends_the_scan() {
        assert_eq!(advance(&[], 3), Next::Done);
        assert_eq!(advance(&[5, 6], 3), Next::Done);
    }

    #[test]
    fn a_full_read_continues_just_below_its_last_score_so_ties_are_not_lost() {
        assert_eq!(advance(&[5, 6, 9], 3), Next::More(8));
        assert_eq!(advance(&[5, 9, 9], 3), Next::More(8));
    }

    #[test]
    fn a_full_read_of_one_millisecond_moves_past_it_instead_of_looping() {
        assert_eq!(advance(&[7, 7, 7], 3), Next::SkipTie(7));
    }

    #[test]
    fn after_a_full_scan_the_next_one_reaches_back_two_seconds_before_this_one() {
        assert_eq!(next_start(1_000, i64::MAX, 10_000), 8_000);
    }

    #[test]
    fn after_a_broken_scan_the_next_one_resumes_where_reading_stopped() {
        assert_eq!(next_start(1_000, 4_000, 10_000), 4_000);
    }

    #[test]
    fn the_scan_start_never_moves_back() {
        assert_eq!(next_start(9_000, i64::MAX, 10_000), 9_000);
        assert_eq!(next_start(9_000, 1_000, 10_000), 9_000);
    }

    #[test]
    fn milliseconds_become_utc_times_and_absurd_ones_are_dropped() {
        let t = ms_to_utc(1_700_000_000_123).unwrap();
        assert_eq!(t.to_rfc3339(), "2023-11-14T22:13:20.123+00:00");
        assert_eq!(t.timestamp_millis(), 1_700_000_000_123);
        assert!(ms_to_utc(i64::MAX).is_none());
    }

    #[test]
    fn a_heartbeat_keeps_its_report_only_when_it_is_json() {
        let id = Uuid::new_v4();
        let beat = |reported: Option<&str>| Beat {
            device_id: id,
            at_ms: 1_000,
            reported: reported.map(str::to_owned),
        };
        let seen = to_seen(&beat(Some(r#"{"agent_version":"1.2.3"}"#))).unwrap();
        assert_eq!(seen.device_id, id);
        assert_eq!(seen.at.timestamp_millis(), 1_000);
        assert_eq!(seen.reported.unwrap()["agent_version"], "1.2.3");
        assert!(to_seen(&beat(Some("not json"))).unwrap().reported.is_none());
        assert!(to_seen(&beat(Some("null"))).unwrap().reported.is_none());
        assert!(to_seen(&beat(None)).unwrap().reported.is_none());
    }

    #[test]
    fn after_a_redis_failure_offline_detection_waits_one_window() {
        let mut gate = OfflineGate::default();
        let t0 = Instant::now();
        assert!(gate.allows(t0));
        gate.hold(t0, Duration::from_secs(90));
        assert!(!gate.allows(t0 + Duration::from_secs(89)));
        assert!(gate.allows(t0 + Duration::from_secs(90)));
    }

    #[test]
    fn silence_counts_only_one_window_after_the_presence_epoch() {
        let window = Duration::from_secs(90);
        assert!(!epoch_allows(1_000, 1_000, window), "just flushed");
        assert!(!epoch_allows(1_000, 90_999, window));
        assert!(epoch_allows(1_000, 91_000, window));
        assert!(epoch_allows(i64::MIN, 0, window), "an old epoch");
        assert!(!epoch_allows(i64::MAX, 0, window), "no overflow");
    }
}
