//! Which admin tokens still stand: each user's token generation, held in
//! memory by every replica.
//!
//! A change of a user (role, password, disabled) or its removal bumps its
//! generation in PostgreSQL. Each replica polls every half second for the
//! users changed since its last poll, so a token of an older generation,
//! or of a disabled or removed user, is refused everywhere within 2
//! seconds without a query per request. The replica that made a change
//! applies it at once.
//!
//! The map holds every present user of the installation and the users
//! removed within a token's lifetime (plus a minute of clock slack):
//! present users must be known to accept their tokens at all, and a user
//! removed longer ago has no token left that has not expired. A few dozen
//! bytes per user: a hundred thousand users take a few megabytes. A user
//! the map does not know yet (created on another replica since the last
//! poll) is read once from PostgreSQL and then kept.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tend_core::auth::ADMIN_TOKEN_TTL;
use tend_core::db::users::{self, TokenState};
use tend_core::db::{self, Pool};
use tend_core::retry::{Outage, sleep_unless_cancelled};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How often the map is re-read from PostgreSQL. A quarter of the 2-second
/// promise, so a missed poll or two still keeps it.
const POLL: Duration = Duration::from_millis(500);

/// How far back each poll reads again: `changed_at` is the changing
/// transaction's start, and one that started earlier may commit later.
const OVERLAP: chrono::Duration = chrono::Duration::seconds(60);

/// Whether a token's user and generation still stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Valid,
    /// Disabled, removed, or changed since the token was issued.
    Ended,
    /// Not in the map: ask PostgreSQL ([`Sessions::learn`]).
    Unknown,
}

#[derive(Default)]
pub struct Sessions {
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    users: HashMap<Uuid, TokenState>,
    /// The newest `changed_at` read: the next poll asks for what came after.
    seen_up_to: Option<DateTime<Utc>>,
}

impl Inner {
    /// Keeps the newer of what is held and what was read: a poll that
    /// began before a local change must not undo it.
    fn merge(&mut self, s: TokenState) {
        match self.users.get(&s.id) {
            Some(held) if held.generation > s.generation => {}
            _ => {
                self.users.insert(s.id, s);
            }
        }
    }

    fn prune(&mut self) {
        let old = horizon();
        self.users.retain(|_, s| !s.removed || s.changed_at > old);
    }
}

/// Users removed before this have no unexpired token left.
fn horizon() -> DateTime<Utc> {
    let ttl = chrono::Duration::from_std(ADMIN_TOKEN_TTL).unwrap_or(chrono::Duration::hours(1));
    Utc::now() - ttl - chrono::Duration::minutes(1)
}

impl Sessions {
    /// Whether a token of `user` issued at `generation` still stands.
    pub fn check(&self, user: Uuid, generation: i64) -> Verdict {
        let Ok(inner) = self.inner.read() else {
            return Verdict::Ended;
        };
        match inner.users.get(&user) {
            None => Verdict::Unknown,
            Some(s) if s.removed || s.disabled || generation < s.generation => Verdict::Ended,
            Some(_) => Verdict::Valid,
        }
    }

    /// Applies a change this replica made, before any poll reads it.
    pub fn note(&self, state: TokenState) {
        if let Ok(mut i) = self.inner.write() {
            i.merge(state);
        }
    }

    /// Reads one user the map does not know; an id that never was a user's
    /// is kept as removed, so it is not asked about again.
    pub async fn learn(&self, pool: &Pool, user: Uuid) -> db::Result<()> {
        let client = pool.get().await?;
        let state = users::token_state_of(&client, user)
            .await?
            .unwrap_or(TokenState {
                id: user,
                generation: i64::MAX,
                disabled: true,
                removed: true,
                changed_at: Utc::now(),
            });
        self.note(state);
        Ok(())
    }

    /// Reads the users changed since the last poll (all of them the first
    /// time), and forgets those removed long enough ago.
    pub async fn refresh(&self, pool: &Pool) -> db::Result<()> {
        let since = self.inner.read().ok().and_then(|i| i.seen_up_to);
        let client = pool.get().await?;
        let fresh = users::changed_since(&client, since.map(|s| s - OVERLAP), horizon()).await?;
        if let Ok(mut i) = self.inner.write() {
            for s in fresh {
                i.seen_up_to = Some(i.seen_up_to.map_or(s.changed_at, |t| t.max(s.changed_at)));
                i.merge(s);
            }
            if i.seen_up_to.is_none() {
                // Nobody yet: from now on.
                i.seen_up_to = Some(Utc::now() - OVERLAP);
            }
            i.prune();
        }
        Ok(())
    }

    /// How many users the map holds (a gauge).
    pub fn count(&self) -> usize {
        self.inner.read().map(|i| i.users.len()).unwrap_or(0)
    }
}

/// Polls PostgreSQL until cancelled.
pub async fn keep_fresh(state: crate::state::Shared, stop: CancellationToken) {
    let outage = Outage::new("user session refresh");
    loop {
        // Bounded, so that a stalled database delays the next poll by
        // seconds, not until it answers.
        match db::bounded(state.sessions.refresh(&state.pool)).await {
            Ok(()) => outage.recovered(),
            Err(e) => outage.failed(&e),
        };
        metrics::gauge!("tend_platform_session_users").set(state.sessions.count() as f64);
        if !sleep_unless_cancelled(POLL, &stop).await {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(id: Uuid, generation: i64, disabled: bool, removed: bool) -> TokenState {
        TokenState {
            id,
            generation,
            disabled,
            removed,
            changed_at: Utc::now(),
        }
    }

    #[test]
    fn a_token_stands_only_for_a_present_enabled_user_of_its_generation_or_newer() {
        let s = Sessions::default();
        let u = Uuid::new_v4();
        assert_eq!(s.check(u, 0), Verdict::Unknown);
        s.note(state(u, 3, false, false));
        assert_eq!(s.check(u, 3), Verdict::Valid);
        assert_eq!(
            s.check(u, 4),
            Verdict::Valid,
            "issued after a change not polled yet"
        );
        assert_eq!(s.check(u, 2), Verdict::Ended);
        s.note(state(u, 4, true, false));
        assert_eq!(s.check(u, 4), Verdict::Ended);
        s.note(state(u, 5, false, true));
        assert_eq!(s.check(u, 5), Verdict::Ended);
    }

    #[test]
    fn an_older_read_never_undoes_a_newer_change() {
        let s = Sessions::default();
        let u = Uuid::new_v4();
        s.note(state(u, 2, false, true));
        s.note(state(u, 1, false, false));
        assert_eq!(s.check(u, 1), Verdict::Ended);
    }

    #[test]
    fn removed_users_are_forgotten_once_their_tokens_have_expired() {
        let s = Sessions::default();
        let (gone, kept, present) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let mut old = state(gone, 1, false, true);
        old.changed_at = horizon() - chrono::Duration::seconds(1);
        s.note(old);
        s.note(state(kept, 1, false, true));
        let mut long_ago = state(present, 1, false, false);
        long_ago.changed_at = horizon() - chrono::Duration::days(30);
        s.note(long_ago);
        s.inner.write().unwrap().prune();
        assert_eq!(s.check(gone, 1), Verdict::Unknown);
        assert_eq!(s.check(kept, 1), Verdict::Ended);
        assert_eq!(s.check(present, 1), Verdict::Valid);
        assert_eq!(s.count(), 2);
    }
}
