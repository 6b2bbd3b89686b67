//! Login under attack: throttling per username and per address, shared by
//! replicas through Redis and local when Redis is down; a real user's
//! login during a flood; the platform's memory after a thousand
//! concurrent failed logins; the same answers for known and unknown names.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tend_tests::{ADMIN_PASSWORD, ADMIN_USER, Options, Service, Stack};

const PROXIES: &str = "TEND_TRUSTED_PROXIES";

/// One login attempt at `base` (a platform's URL), from `from` when given
/// (`X-Forwarded-For`; believed only with `TEND_TRUSTED_PROXIES`): status,
/// `Retry-After`, body.
async fn attempt(
    http: &reqwest::Client,
    base: &str,
    username: &str,
    password: &str,
    from: Option<&str>,
) -> (u16, Option<u64>, Value) {
    let mut req = http
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({ "username": username, "password": password }));
    if let Some(from) = from {
        req = req.header("x-forwarded-for", from);
    }
    let r = req.send().await.expect("login request");
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    (status, retry, r.json().await.unwrap_or(Value::Null))
}

/// A stack whose platform believes `X-Forwarded-For` from the test.
async fn stack_behind_proxy(options: Options) -> Stack {
    let mut stack = Stack::start_with(options).await;
    stack.set_env(Service::Platform, PROXIES, Some("127.0.0.1/32"));
    stack.terminate(Service::Platform);
    stack.spawn(Service::Platform).await;
    stack
}

async fn audit_count(stack: &Stack, action: &str) -> i64 {
    stack
        .sql()
        .await
        .query_one(
            "SELECT count(*) FROM audit_log WHERE action = $1",
            &[&action],
        )
        .await
        .expect("audit count")
        .get(0)
}

#[tokio::test]
async fn a_username_is_throttled_after_five_failures_alike_known_or_not_and_the_lock_lifts() {
    let stack = Stack::start().await;
    let base = stack.url(Service::Platform);
    let http = &stack.http;

    // The same sequence for a known and an unknown name: five free
    // failures, the sixth locks for a second, the seventh is refused.
    let mut answers = Vec::new();
    for name in [ADMIN_USER, "nobody-at-all"] {
        let mut seen = Vec::new();
        for _ in 0..6 {
            let (status, _, body) = attempt(http, &base, name, "wrong-password", None).await;
            seen.push((status, body));
        }
        let (status, retry, body) = attempt(http, &base, name, "wrong-password", None).await;
        assert_eq!(status, 429, "the seventh failure for {name}: {body}");
        assert_eq!(retry, Some(1), "Retry-After for {name}");
        seen.push((status, body));
        answers.push(seen);
    }
    assert!(
        answers[0][..6].iter().all(|(s, _)| *s == 401),
        "{answers:?}"
    );
    assert_eq!(
        answers[0], answers[1],
        "a known and an unknown name are answered alike"
    );

    // A locked name is refused even with the right password, then the lock
    // lifts, and the success clears the name's failures.
    let (status, _, _) = attempt(http, &base, ADMIN_USER, ADMIN_PASSWORD, None).await;
    assert_eq!(status, 429);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _, body) = attempt(http, &base, ADMIN_USER, ADMIN_PASSWORD, None).await;
    assert_eq!(status, 200, "after the lock: {body}");
    for _ in 0..5 {
        let (status, _, _) = attempt(http, &base, ADMIN_USER, "wrong-password", None).await;
        assert_eq!(status, 401, "failures were cleared by the success");
    }

    // Audit: each failure of the known user (6 + 5) once, the login once,
    // nothing for the unknown name or for a refused attempt.
    tend_tests::eventually(
        Duration::from_secs(5),
        "the failed logins' rows",
        || async { (audit_count(&stack, "auth.login_failed").await == 11).then_some(()) },
    )
    .await;
    assert_eq!(audit_count(&stack, "auth.login").await, 1);
    let row = stack
        .sql()
        .await
        .query_one(
            "SELECT actor_username, target_type, summary FROM audit_log
             WHERE action = 'auth.login_failed' LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<String>>(0).as_deref(), Some(ADMIN_USER));
    assert_eq!(row.get::<_, String>(1), "user");
    assert_eq!(row.get::<_, Value>(2), json!({ "username": ADMIN_USER }));
}

#[tokio::test]
async fn an_address_and_a_username_are_throttled_on_every_replica_through_redis() {
    let mut stack = stack_behind_proxy(Options::default()).await;
    let first = stack.url(Service::Platform);
    let second = stack.spawn_replica(Service::Platform).await;
    let http = &stack.http;
    let from = Some("198.51.100.7");

    // 20 failures from one address, each for another name, on the first
    // replica; the 21st locks the address, and the second refuses it.
    for i in 0..21 {
        let (status, _, body) = attempt(http, &first, &format!("user{i}"), "x", from).await;
        assert_eq!(status, 401, "failure {i}: {body}");
    }
    let (status, retry, body) = attempt(http, &second, "someone-else", "x", from).await;
    assert_eq!(status, 429, "the address on the second replica: {body}");
    assert_eq!(retry, Some(1));
    // Another address is not concerned.
    let (status, _, _) = attempt(http, &second, "someone-else", "x", Some("198.51.100.8")).await;
    assert_eq!(status, 401);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _, _) = attempt(http, &second, "someone-else", "x", from).await;
    assert_eq!(status, 401, "the address's lock lifted");

    // A username's failures from many addresses, shared the same way.
    for i in 0..6 {
        let addr = format!("203.0.113.{i}");
        let (status, _, _) = attempt(http, &first, "carol", "x", Some(&addr)).await;
        assert_eq!(status, 401);
    }
    let (status, retry, _) = attempt(http, &second, "carol", "x", Some("203.0.113.99")).await;
    assert_eq!(
        (status, retry),
        (429, Some(1)),
        "the name on the second replica"
    );
}

#[tokio::test]
async fn logins_are_served_and_throttled_locally_while_redis_is_down() {
    let mut stack = Stack::start_with(Options {
        faults: true,
        ..Options::default()
    })
    .await;
    stack.faults.as_mut().expect("faults").redis_server.stop();
    let base = stack.url(Service::Platform);
    let http = &stack.http;

    for i in 0..6 {
        let t = Instant::now();
        let (status, _, _) = attempt(http, &base, "dave", "x", None).await;
        assert_eq!(status, 401, "failure {i}");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }
    let (status, retry, _) = attempt(http, &base, "dave", "x", None).await;
    assert_eq!((status, retry), (429, Some(1)), "throttled without Redis");
    let (status, _, body) = attempt(http, &base, ADMIN_USER, ADMIN_PASSWORD, None).await;
    assert_eq!(status, 200, "a real login without Redis: {body}");

    // Redis back: the platform shares its counts again.
    stack.faults.as_mut().unwrap().redis_server.restart().await;
    let redis = redis::Client::open(stack.faults.as_ref().unwrap().redis_server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let pattern = format!("{}:login:user:*", stack.instance);
    tend_tests::eventually(Duration::from_secs(20), "counts in Redis again", || {
        let (http, base, pattern) = (&stack.http, &base, &pattern);
        let mut redis = redis.clone();
        async move {
            attempt(http, base, "erin", "x", None).await;
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(pattern)
                .query_async(&mut redis)
                .await
                .ok()?;
            (!keys.is_empty()).then_some(())
        }
    })
    .await;
}

/// The median time of `n` logins of the admin, one after the other.
async fn admin_login_ms(stack: &Stack, n: usize) -> Vec<f64> {
    let base = stack.url(Service::Platform);
    let mut times = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let (status, _, body) = attempt(&stack.http, &base, ADMIN_USER, ADMIN_PASSWORD, None).await;
        assert_eq!(status, 200, "{body}");
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    times
}

#[tokio::test]
async fn a_real_user_logs_in_during_a_flood_of_guesses_in_under_a_second_more() {
    let stack = stack_behind_proxy(Options::default()).await;
    let base = stack.url(Service::Platform);
    let quiet = admin_login_ms(&stack, 5).await;

    // 200 guesses from one address, 50 at a time, at many names.
    let flood = {
        let http = stack.http.clone();
        let base = base.clone();
        tokio::spawn(async move {
            let mut statuses = std::collections::BTreeMap::new();
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..200 {
                if tasks.len() >= 50 {
                    let s: u16 = tasks.join_next().await.unwrap().unwrap();
                    *statuses.entry(s).or_insert(0) += 1;
                }
                let (http, base) = (http.clone(), base.clone());
                tasks.spawn(async move {
                    let name = format!("guess{}", i % 40);
                    attempt(&http, &base, &name, "letmein", Some("192.0.2.66"))
                        .await
                        .0
                });
            }
            while let Some(s) = tasks.join_next().await {
                *statuses.entry(s.unwrap()).or_insert(0) += 1;
            }
            statuses
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let during = admin_login_ms(&stack, 5).await;
    let statuses = flood.await.unwrap();
    let (q, d) = (quiet[2], during[4]);
    println!("login ms without flood {quiet:?}; during {during:?}; flood answers {statuses:?}");
    assert!(
        d < q + 1000.0,
        "slowest login during the flood {d:.0} ms vs median {q:.0} ms without"
    );
    assert!(statuses.get(&429).copied().unwrap_or(0) > 0, "{statuses:?}");
    assert!(!statuses.contains_key(&500), "{statuses:?}");
}

/// The platform's resident memory, in MB.
fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb / 1024.0
}

#[tokio::test]
async fn a_thousand_concurrent_failed_logins_leave_the_platform_s_memory_where_it_was() {
    let stack = stack_behind_proxy(Options::default()).await;
    let base = stack.url(Service::Platform);
    let pid = stack.pid(Service::Platform, 0).expect("the platform runs");
    // Warm-up: the hashing threads, the pools and the caches.
    admin_login_ms(&stack, 3).await;
    for i in 0..8 {
        attempt(
            &stack.http,
            &base,
            "warm",
            "x",
            Some(&format!("10.9.0.{i}")),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_mb(pid);

    // A connection per attempt: a kept-alive one the platform closes while
    // idle between rounds would fail the next request for the client's
    // reasons, not the platform's.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("HTTP client");
    let mut rounds = Vec::new();
    for round in 0..3 {
        // 1,000 at once, from 500 addresses, each at a name of its own:
        // none is throttled, and each that gets a hashing thread within
        // the platform's wait (5 s) runs argon2; the others are 503.
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..1000 {
            let (http, base) = (http.clone(), base.clone());
            tasks.spawn(async move {
                let from = format!("10.{round}.{}.{}", i % 500 / 250, i % 250);
                attempt(&http, &base, &format!("r{round}-user{i}"), "x", Some(&from))
                    .await
                    .0
            });
        }
        let mut statuses = std::collections::BTreeMap::new();
        while let Some(s) = tasks.join_next().await {
            *statuses.entry(s.unwrap()).or_insert(0) += 1;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = rss_mb(pid);
        println!("round {round}: RSS {before:.0} MB -> {after:.0} MB; answers {statuses:?}");
        let hashed = statuses.get(&401).copied().unwrap_or(0);
        assert!(hashed >= 30, "too few real password checks: {statuses:?}");
        assert!(!statuses.contains_key(&500), "{statuses:?}");
        rounds.push(after);
    }
    for (round, after) in rounds.iter().enumerate() {
        assert!(
            after - before < 100.0,
            "round {round}: resident memory grew from {before:.0} MB to {after:.0} MB"
        );
    }
    // And the platform still logs a real user in.
    admin_login_ms(&stack, 1).await;
}
