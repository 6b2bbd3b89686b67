//! Presence in Redis: who heartbeated when, and what they reported. The
//! sync servers write it in batches; the monitor reads it to mark devices
//! online and offline.
//!
//! Nothing here is the record: losing Redis loses no command, and presence
//! comes back with the next heartbeats. Every key starts with the instance
//! prefix, so installations and test runs can share one Redis.

use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use uuid::Uuid;

use crate::tls::RedisTls;

pub use redis::RedisError;

/// How long `/readyz` waits for Redis: a PING takes well under a
/// millisecond, and readiness probes time out after a few seconds.
pub const PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// The longest wait between two attempts to reconnect to Redis.
const RECONNECT_MAX_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Clone)]
pub struct Live {
    conn: ConnectionManager,
    presence: String,
    reported: String,
    epoch: String,
}

/// One device's latest heartbeat as read back by the monitor.
#[derive(Debug, Clone)]
pub struct Beat {
    pub device_id: Uuid,
    pub at_ms: i64,
    pub reported: Option<String>,
}

impl Live {
    /// Connects, over TLS for a `rediss://` URL, retrying for about 30
    /// seconds before giving up ([`crate::retry::at_startup`]).
    pub async fn connect(url: &str, tls: &RedisTls, instance: &str) -> anyhow::Result<Live> {
        use anyhow::Context;
        let client = tls.client(url).context("TEND_REDIS_URL")?;
        // Reconnect attempts at most a second apart: the default backoff
        // doubles up to 3.2 s, so a Redis back after a few seconds could go
        // unnoticed by one service for seconds after another saw it.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(std::time::Duration::from_secs(5)))
            .set_response_timeout(Some(std::time::Duration::from_secs(5)))
            .set_max_delay(RECONNECT_MAX_DELAY);
        let conn = crate::retry::at_startup("Redis", crate::config::REDIS_URL, || async {
            // One connection alone first: the manager retries a failing
            // connection six times by itself, which would hide for ten
            // seconds a certificate that will never verify.
            client
                .get_multiplexed_async_connection_with_config(
                    &redis::AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(std::time::Duration::from_secs(5)))
                        .set_response_timeout(Some(std::time::Duration::from_secs(5))),
                )
                .await?;
            client
                .get_connection_manager_with_config(config.clone())
                .await
        })
        .await?;
        Ok(Live {
            conn,
            presence: format!("{instance}:presence"),
            reported: format!("{instance}:reported"),
            epoch: format!("{instance}:presence:epoch"),
        })
    }

    /// Records a batch of heartbeats (device, time in ms, what it
    /// reported) in one round trip: the sync servers buffer heartbeats and
    /// write them together, so the heartbeat itself waits on nothing.
    ///
    /// `after_outage` is the time (ms) at which a writer that failed to
    /// write earlier beats writes again: heartbeats it heard during the
    /// outage may be missing, so the presence epoch moves to that time in
    /// the same transaction, and no monitor counts silence until one
    /// offline window after it. Without it, a monitor that reconnected
    /// before this writer would count the outage as the devices' silence.
    pub async fn record_beats(
        &self,
        beats: &[(Uuid, i64, &str)],
        after_outage: Option<i64>,
    ) -> Result<(), RedisError> {
        if beats.is_empty() && after_outage.is_none() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        if let Some(now_ms) = after_outage {
            pipe.atomic().set(&self.epoch, now_ms).ignore();
        }
        // ZADD and HSET take many members each; chunks keep every command
        // a bounded size for Redis to parse.
        for chunk in beats.chunks(1000) {
            let scored: Vec<(i64, String)> = chunk
                .iter()
                .map(|(id, at, _)| (*at, id.to_string()))
                .collect();
            let fields: Vec<(String, &str)> = chunk
                .iter()
                .map(|(id, _, reported)| (id.to_string(), *reported))
                .collect();
            pipe.zadd_multiple(&self.presence, &scored)
                .ignore()
                .hset_multiple(&self.reported, &fields)
                .ignore();
        }
        pipe.query_async::<()>(&mut self.conn.clone()).await
    }

    /// Heartbeats newer than `since_ms`, oldest first, at most `limit`.
    pub async fn beats_since(&self, since_ms: i64, limit: isize) -> Result<Vec<Beat>, RedisError> {
        let scored = self.scored_between(since_ms, i64::MAX, limit).await?;
        if scored.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = scored.iter().map(|(id, _)| id.to_string()).collect();
        let reported: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(&self.reported)
            .arg(&ids)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(scored
            .into_iter()
            .zip(reported)
            .map(|((device_id, at_ms), reported)| Beat {
                device_id,
                at_ms,
                reported,
            })
            .collect())
    }

    /// Devices whose latest heartbeat is scored above `after_ms` and at
    /// most `upto_ms`, oldest first, at most `limit`: with `upto_ms` an
    /// offline cutoff, the devices that fell silent since `after_ms`.
    pub async fn scored_between(
        &self,
        after_ms: i64,
        upto_ms: i64,
        limit: isize,
    ) -> Result<Vec<(Uuid, i64)>, RedisError> {
        let upto = if upto_ms == i64::MAX {
            "+inf".to_owned()
        } else {
            upto_ms.to_string()
        };
        let scored: Vec<(String, i64)> = self
            .conn
            .clone()
            .zrangebyscore_limit_withscores(&self.presence, format!("({after_ms}"), upto, 0, limit)
            .await?;
        Ok(scored
            .into_iter()
            .filter_map(|(id, at_ms)| Some((id.parse().ok()?, at_ms)))
            .collect())
    }

    /// The latest heartbeat of each of `ids`, in order: when (ms) and what
    /// the device reported; `None` for a device Redis has not heard (or
    /// lost with a flush). One round trip.
    pub async fn latest(&self, ids: &[Uuid]) -> Result<Vec<Option<Beat>>, RedisError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        let (scores, reported): (Vec<Option<f64>>, Vec<Option<String>>) = redis::pipe()
            .cmd("ZMSCORE")
            .arg(&self.presence)
            .arg(&keys)
            .cmd("HMGET")
            .arg(&self.reported)
            .arg(&keys)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(ids
            .iter()
            .zip(scores.into_iter().zip(reported))
            .map(|(id, (score, reported))| {
                // Scores are whole milliseconds, exact in an f64 until
                // the year 287396.
                score.map(|at| Beat {
                    device_id: *id,
                    at_ms: at as i64,
                    reported,
                })
            })
            .collect())
    }

    /// The score (ms of the latest heartbeat) of each of `ids`, in order;
    /// `None` for a device Redis has not heard.
    pub async fn scores(&self, ids: &[Uuid]) -> Result<Vec<Option<i64>>, RedisError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        let scores: Vec<Option<f64>> = redis::cmd("ZMSCORE")
            .arg(&self.presence)
            .arg(&keys)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(scores.into_iter().map(|s| s.map(|at| at as i64)).collect())
    }

    /// Since when the presence set is complete, in ms: the time a monitor
    /// first found it without this marker. Redis that was flushed or
    /// restarted without persistence lost the marker with the heartbeats,
    /// so the first monitor to look sets it to `now_ms`, and every monitor
    /// then knows that silence before that time proves nothing.
    pub async fn presence_epoch(&self, now_ms: i64) -> Result<i64, RedisError> {
        let (epoch,): (i64,) = redis::pipe()
            .cmd("SET")
            .arg(&self.epoch)
            .arg(now_ms)
            .arg("NX")
            .ignore()
            .get(&self.epoch)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(epoch)
    }

    /// Moves the presence epoch to `now_ms`: a monitor saw Redis fail, so
    /// heartbeats may be missing from before now, and every monitor should
    /// know it, not only the one that saw the failure. (A sync server that
    /// saw it moves the epoch in [`Live::record_beats`].)
    pub async fn restart_presence_epoch(&self, now_ms: i64) -> Result<(), RedisError> {
        self.conn.clone().set(&self.epoch, now_ms).await
    }

    /// Drops everything kept about a device (it was decommissioned).
    pub async fn forget(&self, device: Uuid) -> Result<(), RedisError> {
        let id = device.to_string();
        redis::pipe()
            .zrem(&self.presence, &id)
            .ignore()
            .hdel(&self.reported, &id)
            .ignore()
            .query_async::<()>(&mut self.conn.clone())
            .await
    }

    /// Answers whether Redis answers within [`PING_TIMEOUT`]; used by
    /// `/readyz`, which must answer within its probe's timeout even when
    /// Redis does not.
    pub async fn ping(&self) -> Result<(), RedisError> {
        let mut conn = self.conn.clone();
        let ping = redis::cmd("PING");
        match tokio::time::timeout(PING_TIMEOUT, ping.query_async::<String>(&mut conn)).await {
            Ok(answer) => answer.map(drop),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {} ms", PING_TIMEOUT.as_millis()),
            )
            .into()),
        }
    }
}
