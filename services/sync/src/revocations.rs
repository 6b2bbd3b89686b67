//! The revocation list: devices decommissioned recently enough that a token
//! issued before may still be valid, and gateway tokens revoked as
//! recently (hawkBit DDI; their ids are UUIDs too, and never a device's).
//!
//! Revocation lives in PostgreSQL. Each replica keeps a copy in memory,
//! updated at once by the `device.decommissioned` event and, whatever
//! happens to RabbitMQ, by polling every half second, so a decommissioned
//! device is refused everywhere within 2 seconds without a query per
//! request. Entries older than a device token's lifetime (or a DDI
//! session's, the longer) are dropped: every token they could hold has
//! expired, and a new one needs the secret, which is checked against
//! PostgreSQL.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tend_core::auth::DEVICE_TOKEN_TTL;
use tend_core::db::{self, Pool, ddi, devices};
use tend_core::retry::{Outage, sleep_unless_cancelled};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How often the list is re-read from PostgreSQL. Half the 2-second promise,
/// so one missed poll still keeps it.
const POLL: Duration = Duration::from_millis(500);

/// How far back each poll reads again; longer than any decommission
/// transaction takes.
const OVERLAP: chrono::Duration = chrono::Duration::seconds(60);

#[derive(Default)]
pub struct Revocations {
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    revoked: HashMap<Uuid, DateTime<Utc>>,
    /// The newest decommission time read from PostgreSQL: the next poll
    /// asks only for what came after it.
    seen_up_to: Option<DateTime<Utc>>,
}

impl Inner {
    fn prune(&mut self) {
        let old = horizon();
        self.revoked.retain(|_, at| *at > old);
    }
}

fn horizon() -> DateTime<Utc> {
    // A DDI session is trusted as long as a device token, or longer.
    let longest = DEVICE_TOKEN_TTL.max(crate::ddi::SESSION_TTL);
    let ttl = chrono::Duration::from_std(longest).unwrap_or(chrono::Duration::hours(1));
    // A minute of slack for clock skew between replicas and the database.
    Utc::now() - ttl - chrono::Duration::minutes(1)
}

impl Revocations {
    pub fn is_revoked(&self, device: Uuid) -> bool {
        self.inner
            .read()
            .map(|i| i.revoked.contains_key(&device))
            .unwrap_or(true)
    }

    pub fn revoke(&self, device: Uuid, at: DateTime<Utc>) {
        if let Ok(mut i) = self.inner.write() {
            i.revoked.insert(device, at);
        }
    }

    /// Reads decommissions newer than the last seen, and forgets old ones.
    pub async fn refresh(&self, pool: &Pool) -> db::Result<()> {
        let since = self
            .inner
            .read()
            .ok()
            .and_then(|i| i.seen_up_to)
            .unwrap_or_else(horizon);
        let client = pool.get().await?;
        // `decommissioned_at` is the deciding transaction's start time, and
        // a transaction that started earlier may commit later: read a
        // minute back each time (re-inserting is harmless) so none is missed.
        let mut fresh = devices::decommissioned_since(&client, since - OVERLAP).await?;
        fresh.extend(ddi::gateway_tokens_revoked_since(&client, since - OVERLAP).await?);
        if let Ok(mut i) = self.inner.write() {
            for (id, at) in fresh {
                i.revoked.insert(id, at);
                i.seen_up_to = Some(i.seen_up_to.map_or(at, |s| s.max(at)));
            }
            if i.seen_up_to.is_none() {
                i.seen_up_to = Some(since);
            }
            i.prune();
        }
        Ok(())
    }

    /// How many devices the list holds (a gauge).
    pub fn count(&self) -> usize {
        self.inner.read().map(|i| i.revoked.len()).unwrap_or(0)
    }
}

/// Polls PostgreSQL until cancelled.
pub async fn keep_fresh(list: std::sync::Arc<Revocations>, pool: Pool, stop: CancellationToken) {
    let outage = Outage::new("revocation list refresh");
    while sleep_unless_cancelled(POLL, &stop).await {
        // Bounded, so that a stalled database delays the next poll by
        // seconds, not until it answers.
        match db::bounded(list.refresh(&pool)).await {
            Ok(()) => outage.recovered(),
            Err(e) => outage.failed(&e),
        };
        metrics::gauge!("tend_sync_revoked_devices").set(list.count() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revoked_device_is_refused_until_its_entry_ages_out() {
        let list = Revocations::default();
        let d = Uuid::new_v4();
        assert!(!list.is_revoked(d));
        list.revoke(d, Utc::now());
        assert!(list.is_revoked(d));

        let stale = Uuid::new_v4();
        list.revoke(stale, horizon() - chrono::Duration::seconds(1));
        list.inner.write().unwrap().prune();
        assert!(!list.is_revoked(stale));
        assert!(list.is_revoked(d));
    }
}
