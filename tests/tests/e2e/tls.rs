//! TLS to the stores: tend-sync against PostgreSQL, Redis and RabbitMQ
//! servers of the test's own that speak TLS only, with a CA made for the
//! test (`tend_tests::tls`).

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tend_tests::tls::{Certs, Lone, TlsPostgres, TlsRabbit, TlsRedis, start_to_exit};

/// The environment of a tend-sync of the test's own: `stores` (URLs and
/// CA files), and what every service needs besides.
fn sync_env(dir: &Path, stores: &[(&str, String)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
        ("TEND_DEVICE_TOKEN_KEY".into(), tend_tests::new_token_key()),
        ("TEND_METRICS_LISTEN".into(), "127.0.0.1:0".into()),
        (
            "TEND_INSTANCE".into(),
            format!("tls-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
        ),
        (
            "TEND_ARTIFACT_STORE".into(),
            format!("file://{}", dir.join("artifacts").display()),
        ),
        ("TEND_SHUTDOWN_GRACE_S".into(), "1".into()),
        (
            "TEND_LOG".into(),
            std::env::var("TEST_LOG").unwrap_or_else(|_| "info".into()),
        ),
    ];
    env.extend(stores.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
    env
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

#[tokio::test]
async fn sync_reaches_postgres_redis_and_rabbitmq_over_verified_tls_and_refuses_a_foreign_ca() {
    let dir = tempfile::Builder::new()
        .prefix("tend-tls-")
        .tempdir()
        .unwrap();
    let certs = Certs::make(&dir.path().join("certs"));
    // A CA that signed nothing the servers hold.
    let foreign = Certs::make(&dir.path().join("foreign"));
    let (pg, redis, rabbit) = tokio::join!(
        TlsPostgres::start(dir.path().join("pg"), Some(&certs)),
        TlsRedis::start(dir.path().join("redis"), &certs),
        TlsRabbit::start(dir.path().join("rabbit"), &certs),
    );
    // `localhost` for PostgreSQL and `127.0.0.1` for the others: the host
    // name and the IP address of the certificate are both checked.
    let stores = |pg_ca: &Path, redis_ca: &Path, amqp_ca: &Path| {
        vec![
            (
                "TEND_DATABASE_URL",
                pg.url("localhost", "?sslmode=verify-full"),
            ),
            ("TEND_DATABASE_CA_FILE", path(pg_ca)),
            (
                "TEND_REDIS_URL",
                format!("rediss://127.0.0.1:{}/0", redis.port),
            ),
            ("TEND_REDIS_CA_FILE", path(redis_ca)),
            (
                "TEND_AMQP_URL",
                format!("amqps://guest:guest@127.0.0.1:{}/%2f", rabbit.port),
            ),
            ("TEND_AMQP_CA_FILE", path(amqp_ca)),
        ]
    };

    // Each store in turn with a CA that did not sign its certificate: the
    // service stops at start, naming the store, without retrying for the
    // half minute a store out of reach gets.
    for (n, (var, what)) in [
        ("TEND_DATABASE_URL", "PostgreSQL"),
        ("TEND_REDIS_URL", "Redis"),
        ("TEND_AMQP_URL", "RabbitMQ"),
    ]
    .into_iter()
    .enumerate()
    {
        let ca = |i: usize| if i == n { &foreign.ca } else { &certs.ca };
        let env = sync_env(dir.path(), &stores(ca(0), ca(1), ca(2)));
        let log = dir.path().join(format!("refused-{n}.log"));
        let (code, out, took) =
            start_to_exit("tend-sync", &env, &log, Duration::from_secs(30)).await;
        assert_eq!(code, Some(1), "{what} with a foreign CA:\n{out}");
        assert!(
            out.contains(&format!("error: cannot reach {what} ({var})"))
                && out.contains("invalid peer certificate: UnknownIssuer"),
            "{what} with a foreign CA:\n{out}"
        );
        assert!(took < Duration::from_secs(15), "{what}: {took:?}\n{out}");
    }

    let env = sync_env(dir.path(), &stores(&certs.ca, &certs.ca, &certs.ca));
    let sync = Lone::start("tend-sync", &env, dir.path().join("tend-sync.log")).await;
    let http = reqwest::Client::new();
    let ready = tend_tests::eventually(
        Duration::from_secs(30),
        "tend-sync to be ready with Redis and RabbitMQ up",
        || {
            let (http, url) = (http.clone(), format!("{}/readyz", sync.url()));
            async move {
                let v: Value = http.get(url).send().await.ok()?.json().await.ok()?;
                let checks = &v["checks"];
                (v["ready"] == true && checks["redis"] == "ok" && checks["rabbitmq"] == "ok")
                    .then_some(v)
            }
        },
    )
    .await;
    assert_eq!(ready["checks"]["postgres"], "ok", "{ready}");
    let log = sync.log_text();
    assert!(
        log.contains(&format!(
            "PostgreSQL over TLS, verified against {} (sslmode=verify-full)",
            certs.ca.display()
        )) && !log.contains("guest:guest"),
        "{log}"
    );

    // PostgreSQL: every connection of tend-sync is encrypted (pg_hba.conf
    // would refuse a plain one anyway).
    let admin = pg.admin().await;
    let rows = admin
        .query(
            "SELECT s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(!rows.is_empty(), "tend-sync holds no PostgreSQL connection");
    assert!(
        rows.iter().all(|r| r.get::<_, bool>(0)),
        "a connection without TLS"
    );

    // Redis: the server has no plain port, and tend-sync is connected.
    assert_eq!(
        redis.cli(&["CONFIG", "GET", "port"]).lines().nth(1),
        Some("0")
    );
    let clients = redis.cli(&["CLIENT", "LIST"]);
    assert!(clients.lines().count() >= 2, "{clients}");

    // RabbitMQ: the TLS listener is the only AMQP one, and tend-sync's
    // connection went through it.
    let listeners = rabbit.tool("rabbitmq-diagnostics", &["listeners"]).await;
    assert!(listeners.contains("amqp/ssl"), "{listeners}");
    assert!(
        !listeners.contains("protocol: amqp,"),
        "a plain AMQP listener: {listeners}"
    );
    let connections = rabbit
        .tool(
            "rabbitmqctl",
            &[
                "list_connections",
                "--no-table-headers",
                "ssl",
                "ssl_protocol",
            ],
        )
        .await;
    let rows: Vec<&str> = connections
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(
        !rows.is_empty() && rows.iter().all(|l| l.starts_with("true")),
        "{connections}"
    );
}

#[tokio::test]
async fn sslmode_require_refuses_a_postgres_without_tls_instead_of_falling_back() {
    let dir = tempfile::Builder::new()
        .prefix("tend-tls-")
        .tempdir()
        .unwrap();
    let plain = TlsPostgres::start(dir.path().join("pg"), None).await;
    // The stores after PostgreSQL are never reached.
    let stores = [
        (
            "TEND_DATABASE_URL",
            plain.url("127.0.0.1", "?sslmode=require"),
        ),
        ("TEND_REDIS_URL", "redis://127.0.0.1:1".to_owned()),
        (
            "TEND_AMQP_URL",
            "amqp://guest:guest@127.0.0.1:1/%2f".to_owned(),
        ),
    ];
    let (code, out, took) = start_to_exit(
        "tend-sync",
        &sync_env(dir.path(), &stores),
        &dir.path().join("tend-sync.log"),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("error: cannot reach PostgreSQL (TEND_DATABASE_URL)")
            && out.contains("server does not support TLS"),
        "{out}"
    );
    assert!(took < Duration::from_secs(15), "{took:?}\n{out}");
}

#[tokio::test]
async fn an_unreadable_ca_file_stops_the_service_with_its_variable() {
    let dir = tempfile::Builder::new()
        .prefix("tend-tls-")
        .tempdir()
        .unwrap();
    let missing = dir.path().join("missing.pem");
    let env = sync_env(
        dir.path(),
        &[
            (
                "TEND_AMQP_URL",
                "amqps://guest:guest@127.0.0.1:1/%2f".to_owned(),
            ),
            ("TEND_AMQP_CA_FILE", path(&missing)),
        ],
    );
    let log = dir.path().join("tend-sync.log");
    let (code, out, _) = start_to_exit("tend-sync", &env, &log, Duration::from_secs(10)).await;
    assert_eq!(code, Some(2), "{out}");
    let reason = format!(
        "error: TEND_AMQP_CA_FILE: cannot read {}: No such file or directory (os error 2)",
        missing.display()
    );
    assert!(out.lines().any(|l| l == reason), "{out}");
}
