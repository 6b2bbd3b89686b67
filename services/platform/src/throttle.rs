//! Login throttling: growing delays, then a temporary lockout, per
//! username and per client address, shared by every platform replica
//! through Redis.
//!
//! - After [`USERNAME`]`.free` failed logins for one username (known or
//!   not: an unknown name is throttled exactly like a known one, so a 429
//!   tells nothing about which names exist), every further failure locks
//!   the name for 1 s, 2 s, 4 s … up to 15 minutes. A client address gets
//!   a higher allowance ([`ADDRESS`]): several people may share one NAT.
//!   Failures are forgotten 15 minutes after the last one; a successful
//!   login clears its username's.
//! - A throttled attempt is answered 429 with `Retry-After` before any
//!   password work, so it costs no argon2 time, and it is not counted as a
//!   failure (a locked name does not lock itself for longer).
//! - Each address may have at most [`HASHING_PER_ADDRESS`] password checks
//!   queued or running at once: one address cannot fill the hashing queue
//!   in front of everyone else's logins.
//! - Redis holds the shared counts; every replica also keeps its own in a
//!   size-bounded local table ([`LOCAL_MAX`]). The decision takes the
//!   stricter of the two, so while Redis is down (or not yet reached)
//!   logins go on, throttled by what this replica saw. A Redis call that
//!   fails marks Redis down for [`REDIS_BACKOFF`], so an outage costs a
//!   login no more than one short timeout.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use redis::aio::ConnectionManager;
use sha2::{Digest, Sha256};
use tend_core::retry::Outage;
use tend_core::tls::RedisTls;

/// How often failures are allowed before delays start, and the longest
/// delay (the lockout).
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub free: u32,
    pub max_lock_ms: i64,
}

/// A username: 5 free failures, as OWASP's authentication guidance and
/// most identity providers suggest for interactive logins; then 1 s
/// doubling to a 15-minute lockout (Keycloak's brute-force detection caps
/// its wait at 15 minutes too). A script guessing one admin's password
/// gets about a hundred guesses an hour.
pub const USERNAME: Rule = Rule {
    free: 5,
    max_lock_ms: 15 * 60 * 1000,
};

/// A client address: 20 free failures (an office behind one NAT, a CI job
/// with a stale password), then the same growth and cap.
pub const ADDRESS: Rule = Rule {
    free: 20,
    max_lock_ms: 15 * 60 * 1000,
};

/// Failures are forgotten this long after the last one.
pub const WINDOW_MS: i64 = 15 * 60 * 1000;

/// Password checks one address may have queued or running at once. Two
/// hashing threads per core serve everyone; four checks in flight is more
/// than a person or a script logging in needs.
pub const HASHING_PER_ADDRESS: u32 = 4;

/// Entries of the local table: at about 100 bytes each, under 2 MB.
pub const LOCAL_MAX: usize = 16_384;

/// How long a Redis call may take before the login goes on without it;
/// an answer takes well under a millisecond on a healthy network.
const REDIS_TIMEOUT: Duration = Duration::from_millis(250);

/// After a failed Redis call, the local table alone decides this long.
const REDIS_BACKOFF_MS: i64 = 2_000;

/// Records one failure for each key (`KEYS[i]` with `ARGV[2i+1]` free
/// failures and `ARGV[2i+2]` the longest lock) and answers the lock each
/// got (ms; 0: none yet). `ARGV[1]`: now (ms), `ARGV[2]`: the window.
const FAILED: &str = r"
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local locks = {}
for i, key in ipairs(KEYS) do
  local free = tonumber(ARGV[1 + 2 * i])
  local cap = tonumber(ARGV[2 + 2 * i])
  local n = redis.call('HINCRBY', key, 'n', 1)
  local lock = 0
  if n > free then
    lock = math.min(1000 * 2 ^ math.min(n - free - 1, 30), cap)
    redis.call('HSET', key, 'until', now + lock)
  end
  redis.call('PEXPIRE', key, math.max(window, lock))
  locks[i] = lock
end
return locks
";

/// The lock that follows a failure count under a rule, in ms.
pub fn lock_after(failures: u32, rule: Rule) -> i64 {
    if failures <= rule.free {
        return 0;
    }
    let doublings = (failures - rule.free - 1).min(30);
    (1000i64 << doublings).min(rule.max_lock_ms)
}

/// Why an attempt was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttled {
    Username,
    Address,
}

impl Throttled {
    pub fn as_str(self) -> &'static str {
        match self {
            Throttled::Username => "username",
            Throttled::Address => "address",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Count {
    failures: u32,
    until_ms: i64,
    expires_ms: i64,
}

pub struct LoginThrottle {
    prefix: String,
    redis: OnceLock<ConnectionManager>,
    redis_down_until_ms: AtomicI64,
    outage: Outage,
    local: Mutex<HashMap<String, Count>>,
    hashing: Mutex<HashMap<Option<IpAddr>, u32>>,
}

/// A password check's place in its address's share; gives it back on drop.
pub struct HashingSlot<'a> {
    throttle: &'a LoginThrottle,
    address: Option<IpAddr>,
}

impl Drop for HashingSlot<'_> {
    fn drop(&mut self) {
        let mut m = lock(&self.throttle.hashing);
        if let Some(n) = m.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.address);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding it leaves counts, not broken invariants.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl LoginThrottle {
    /// A throttle keyed under `{instance}:login:`, with no Redis yet.
    pub fn new(instance: &str) -> LoginThrottle {
        LoginThrottle {
            prefix: format!("{instance}:login:"),
            redis: OnceLock::new(),
            redis_down_until_ms: AtomicI64::new(0),
            outage: Outage::new("login throttle in Redis"),
            local: Mutex::new(HashMap::new()),
            hashing: Mutex::new(HashMap::new()),
        }
    }

    /// Connects to Redis, retrying every few seconds until it answers or
    /// `stop` is cancelled. Logins do not wait for it: until then, the
    /// local table throttles alone.
    pub async fn connect(
        &self,
        url: &str,
        tls: &RedisTls,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let client = match tls.client(url) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("TEND_REDIS_URL: {e}: login throttling stays local");
                return;
            }
        };
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1);
        loop {
            match client
                .get_connection_manager_with_config(config.clone())
                .await
            {
                Ok(conn) => {
                    let _ = self.redis.set(conn);
                    tracing::info!("login throttling shared through Redis");
                    return;
                }
                Err(e) => {
                    self.outage
                        .failed(format_args!("{e}; throttling logins locally"));
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(3)) => {}
            }
        }
    }

    fn user_key(&self, username: &str) -> String {
        // Hashed: the key's length does not depend on what a client typed.
        let digest = Sha256::digest(username.as_bytes());
        let mut key = format!("{}user:", self.prefix);
        for b in &digest[..16] {
            key.push_str(&format!("{b:02x}"));
        }
        key
    }

    fn address_key(&self, address: Option<IpAddr>) -> String {
        match address {
            Some(a) => format!("{}addr:{a}", self.prefix),
            None => format!("{}addr:unknown", self.prefix),
        }
    }

    fn redis(&self, now: i64) -> Option<ConnectionManager> {
        if self.redis_down_until_ms.load(Ordering::Relaxed) > now {
            return None;
        }
        self.redis.get().cloned()
    }

    fn redis_failed(&self, now: i64, e: impl std::fmt::Display) {
        metrics::counter!("tend_backing_store_errors_total", "store" => "redis").increment(1);
        self.redis_down_until_ms
            .store(now + REDIS_BACKOFF_MS, Ordering::Relaxed);
        self.outage
            .failed(format_args!("{e}; throttling logins locally"));
    }

    async fn redis_call<T: redis::FromRedisValue>(
        &self,
        now: i64,
        call: impl AsyncFnOnce(&mut ConnectionManager) -> redis::RedisResult<T>,
    ) -> Option<T> {
        let mut conn = self.redis(now)?;
        match tokio::time::timeout(REDIS_TIMEOUT, call(&mut conn)).await {
            Ok(Ok(v)) => {
                self.outage.recovered();
                Some(v)
            }
            Ok(Err(e)) => {
                self.redis_failed(now, e);
                None
            }
            Err(_) => {
                self.redis_failed(now, format_args!("no answer within {REDIS_TIMEOUT:?}"));
                None
            }
        }
    }

    /// Refuses an attempt while its username (first) or its address is
    /// locked: the seconds to wait. Checked before any password work.
    pub async fn check(&self, username: &str, address: Option<IpAddr>) -> Option<(Throttled, u32)> {
        let now = now_ms();
        let keys = [self.user_key(username), self.address_key(address)];
        let mut until = {
            let local = lock(&self.local);
            keys.each_ref().map(|k| {
                local
                    .get(k)
                    .filter(|c| c.expires_ms > now)
                    .map_or(0, |c| c.until_ms)
            })
        };
        let shared: Option<Vec<Option<i64>>> = self
            .redis_call(now, async |c| {
                let mut pipe = redis::pipe();
                for k in &keys {
                    pipe.hget(k, "until");
                }
                pipe.query_async(c).await
            })
            .await;
        if let Some(shared) = shared {
            for (u, s) in until.iter_mut().zip(shared) {
                *u = (*u).max(s.unwrap_or(0));
            }
        }
        let wait = |until: i64| u32::try_from((until - now + 999) / 1000).unwrap_or(u32::MAX);
        if until[0] > now {
            Some((Throttled::Username, wait(until[0])))
        } else if until[1] > now {
            Some((Throttled::Address, wait(until[1])))
        } else {
            None
        }
    }

    /// Takes a place among `address`'s password checks, or `None` when it
    /// already has [`HASHING_PER_ADDRESS`] of them queued or running.
    pub fn hashing_slot(&self, address: Option<IpAddr>) -> Option<HashingSlot<'_>> {
        let mut m = lock(&self.hashing);
        let n = m.entry(address).or_insert(0);
        if *n >= HASHING_PER_ADDRESS {
            return None;
        }
        *n += 1;
        Some(HashingSlot {
            throttle: self,
            address,
        })
    }

    /// Counts a failed login against its username and its address.
    pub async fn failed(&self, username: &str, address: Option<IpAddr>) {
        let now = now_ms();
        let keys = [
            (self.user_key(username), USERNAME),
            (self.address_key(address), ADDRESS),
        ];
        let shared: Option<Vec<i64>> = self
            .redis_call(now, async |c| {
                static SCRIPT: std::sync::LazyLock<redis::Script> =
                    std::sync::LazyLock::new(|| redis::Script::new(FAILED));
                let mut script = SCRIPT.prepare_invoke();
                script.arg(now).arg(WINDOW_MS);
                for (k, rule) in &keys {
                    script.key(k).arg(rule.free).arg(rule.max_lock_ms);
                }
                script.invoke_async(c).await
            })
            .await;
        let mut local = lock(&self.local);
        for (i, (key, rule)) in keys.into_iter().enumerate() {
            let entry = local.get(&key).copied().filter(|c| c.expires_ms > now);
            let failures = entry.map_or(0, |c| c.failures) + 1;
            let lock_ms = lock_after(failures, rule);
            let shared_lock = shared.as_ref().and_then(|s| s.get(i).copied()).unwrap_or(0);
            let until_ms = if lock_ms.max(shared_lock) > 0 {
                now + lock_ms.max(shared_lock)
            } else {
                entry.map_or(0, |c| c.until_ms)
            };
            let count = Count {
                failures,
                until_ms,
                expires_ms: now + WINDOW_MS.max(lock_ms),
            };
            if !local.contains_key(&key) && local.len() >= LOCAL_MAX {
                evict(&mut local, now);
            }
            local.insert(key, count);
        }
    }

    /// A successful login clears its username's failures (not its
    /// address's: one right password does not vouch for the others).
    pub async fn succeeded(&self, username: &str) {
        let now = now_ms();
        let key = self.user_key(username);
        lock(&self.local).remove(&key);
        let _: Option<()> = self
            .redis_call(now, async |c| {
                redis::cmd("DEL").arg(&key).query_async(c).await
            })
            .await;
    }
}

/// Makes room in a full local table: drops what expired, and if nothing
/// did, the entries closest to expiring (a flood of new names then costs
/// the oldest counts, never unbounded memory).
fn evict(local: &mut HashMap<String, Count>, now: i64) {
    local.retain(|_, c| c.expires_ms > now);
    if local.len() < LOCAL_MAX {
        return;
    }
    let mut expiries: Vec<i64> = local.values().map(|c| c.expires_ms).collect();
    let cut = expiries.len() / 8;
    let (_, nth, _) = expiries.select_nth_unstable(cut);
    let nth = *nth;
    local.retain(|_, c| c.expires_ms > nth);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_start_after_the_free_failures_and_double_to_the_lockout() {
        assert_eq!(lock_after(5, USERNAME), 0);
        assert_eq!(lock_after(6, USERNAME), 1_000);
        assert_eq!(lock_after(7, USERNAME), 2_000);
        assert_eq!(lock_after(10, USERNAME), 16_000);
        assert_eq!(lock_after(16, USERNAME), 15 * 60 * 1000);
        assert_eq!(lock_after(10_000, USERNAME), 15 * 60 * 1000);
        assert_eq!(lock_after(20, ADDRESS), 0);
        assert_eq!(lock_after(21, ADDRESS), 1_000);
    }

    #[tokio::test]
    async fn without_redis_the_local_table_throttles_and_stays_bounded() {
        let t = LoginThrottle::new("test");
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..USERNAME.free {
            assert_eq!(t.check("alice", Some(a)).await, None);
            t.failed("alice", Some(a)).await;
        }
        assert_eq!(t.check("alice", Some(a)).await, None);
        t.failed("alice", Some(a)).await;
        assert_eq!(
            t.check("alice", Some(a)).await,
            Some((Throttled::Username, 1))
        );
        t.succeeded("alice").await;
        assert_eq!(t.check("alice", Some(a)).await, None);

        for i in 0..(LOCAL_MAX + 100) {
            t.failed(&format!("user{i}"), Some(a)).await;
        }
        assert!(lock(&t.local).len() <= LOCAL_MAX);
        assert_eq!(
            t.check("bob", Some(a)).await.map(|t| t.0),
            Some(Throttled::Address)
        );
    }

    #[test]
    fn an_address_has_a_bounded_share_of_the_hashing_queue() {
        let t = LoginThrottle::new("test");
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let held: Vec<_> = (0..HASHING_PER_ADDRESS)
            .map(|_| t.hashing_slot(Some(a)).unwrap())
            .collect();
        assert!(t.hashing_slot(Some(a)).is_none());
        assert!(t.hashing_slot(Some(b)).is_some());
        drop(held);
        assert!(t.hashing_slot(Some(a)).is_some());
        assert!(lock(&t.hashing).is_empty());
    }
}
