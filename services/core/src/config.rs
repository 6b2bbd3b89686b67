//! Service settings: defaults in code, then `TEND_…` environment variables.
//!
//! Settings are parsed from a map so that tests build them without touching
//! the process environment. Every value is validated here, at startup, with a
//! message that names the variable.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use crate::tls::{AmqpTls, PostgresTls, RedisTls, StoreTls};

pub const LISTEN: &str = "TEND_LISTEN";
pub const DATABASE_URL: &str = "TEND_DATABASE_URL";
pub const REDIS_URL: &str = "TEND_REDIS_URL";
pub const AMQP_URL: &str = "TEND_AMQP_URL";
pub const INSTANCE: &str = "TEND_INSTANCE";
pub const JWT_SECRET: &str = "TEND_JWT_SECRET";
pub const BOOTSTRAP_ADMIN: &str = "TEND_BOOTSTRAP_ADMIN";
pub const HEARTBEAT_S: &str = "TEND_HEARTBEAT_S";
pub const SWEEP_INTERVAL_MS: &str = "TEND_SWEEP_INTERVAL_MS";
pub const SHUTDOWN_GRACE_S: &str = "TEND_SHUTDOWN_GRACE_S";
pub const ARTIFACT_STORE: &str = "TEND_ARTIFACT_STORE";
pub const ARTIFACT_MAX_BYTES: &str = "TEND_ARTIFACT_MAX_BYTES";
pub const DOWNLOADS_MAX: &str = "TEND_DOWNLOADS_MAX";
/// CA files (PEM) for TLS to the stores: see [`crate::tls`].
pub const DATABASE_CA_FILE: &str = "TEND_DATABASE_CA_FILE";
pub const REDIS_CA_FILE: &str = "TEND_REDIS_CA_FILE";
pub const AMQP_CA_FILE: &str = "TEND_AMQP_CA_FILE";

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/tend";
/// Where artifact bytes live by default: the directory the Debian package
/// and the Kubernetes volume provide.
pub const DEFAULT_ARTIFACT_STORE: &str = "file:///var/lib/tend/artifacts";

/// A secret that never shows up in `Debug` output or logs.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The bootstrap admin named by `TEND_BOOTSTRAP_ADMIN=username:password`.
#[derive(Debug, Clone)]
pub struct BootstrapAdmin {
    pub username: String,
    pub password: Secret,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    /// `TEND_DATABASE_URL` without its `sslmode` and `sslrootcert`, which
    /// are in [`Settings::tls`].
    pub database_url: Secret,
    pub redis_url: Secret,
    pub amqp_url: Secret,
    /// TLS to PostgreSQL, Redis and RabbitMQ: what the URLs and the CA
    /// files say, checked and loaded.
    pub tls: StoreTls,
    /// Prefix of every AMQP name and Redis key of this installation.
    pub instance: String,
    pub jwt_secret: Secret,
    pub bootstrap_admin: Option<BootstrapAdmin>,
    /// The interval the sync server tells devices; the monitor derives its
    /// offline and re-announcement thresholds from it.
    pub heartbeat: Duration,
    /// How often the monitor runs its sweeps. The design asks for at least
    /// every 10 seconds; tests shorten it.
    pub sweep_interval: Duration,
    /// How long SIGTERM waits for in-flight work. Kubernetes sends SIGKILL
    /// after `terminationGracePeriodSeconds` (30 s by default), so stay below.
    pub shutdown_grace: Duration,
    /// Where artifact bytes live: `file:///dir` or `s3://bucket[/prefix]`
    /// (checked here, opened by [`crate::store::ArtifactStore::open`]).
    /// Platform and sync must name the same store.
    pub artifact_store: String,
    /// The largest artifact the platform takes (`TEND_ARTIFACT_MAX_BYTES`,
    /// default 8 GiB: an OS image with room to spare).
    pub artifact_max_bytes: u64,
    /// Artifact downloads one sync replica serves at once
    /// (`TEND_DOWNLOADS_MAX`, default 1024); more are answered 503 with
    /// `Retry-After`, never queued.
    pub download_concurrency: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("{var}: {reason}")]
pub struct ConfigError {
    pub var: &'static str,
    pub reason: String,
}

pub(crate) fn invalid(var: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        reason: reason.into(),
    }
}

impl Settings {
    /// Reads the process environment.
    pub fn from_env(default_listen: &str) -> Result<Self, ConfigError> {
        Self::from_map(&std::env::vars().collect(), default_listen)
    }

    /// Reads settings from a map of variables (the environment, or a test's).
    pub fn from_map(
        vars: &HashMap<String, String>,
        default_listen: &str,
    ) -> Result<Self, ConfigError> {
        let get = |k: &str| vars.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());

        let listen = get(LISTEN)
            .unwrap_or(default_listen)
            .parse()
            .map_err(|_| invalid(LISTEN, "expected an address such as 0.0.0.0:8080"))?;

        let (database_url, postgres_tls) = database(vars)?;

        let redis_url = get(REDIS_URL)
            .unwrap_or("redis://127.0.0.1:6379")
            .to_owned();
        let redis_tls = RedisTls::from_url(&redis_url, get(REDIS_CA_FILE))?;
        redis_tls
            .client(&redis_url)
            .map_err(|e| invalid(REDIS_URL, format!("not a Redis URL: {e}")))?;

        let amqp_url = get(AMQP_URL)
            .unwrap_or("amqp://guest:guest@127.0.0.1:5672/%2f")
            .to_owned();
        if !(amqp_url.starts_with("amqp://") || amqp_url.starts_with("amqps://")) {
            return Err(invalid(AMQP_URL, "expected an amqp:// or amqps:// URL"));
        }
        let amqp_tls = AmqpTls::from_url(&amqp_url, get(AMQP_CA_FILE))?;

        let instance = get(INSTANCE).unwrap_or("tend").to_owned();
        if instance.len() > 64
            || !instance
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(invalid(
                INSTANCE,
                "use at most 64 characters among letters, digits, '-', '_' and '.'",
            ));
        }

        let jwt_secret = get(JWT_SECRET).ok_or_else(|| {
            invalid(
                JWT_SECRET,
                "required: the HMAC key for admin and device tokens",
            )
        })?;
        // HS256 keys shorter than the hash output weaken the MAC.
        if jwt_secret.len() < 32 {
            return Err(invalid(JWT_SECRET, "must be at least 32 characters long"));
        }

        let bootstrap_admin = match get(BOOTSTRAP_ADMIN) {
            None => None,
            Some(v) => {
                let (user, pass) = v
                    .split_once(':')
                    .filter(|(u, p)| !u.is_empty() && !p.is_empty())
                    .ok_or_else(|| invalid(BOOTSTRAP_ADMIN, "expected username:password"))?;
                Some(BootstrapAdmin {
                    username: user.to_owned(),
                    password: Secret::new(pass),
                })
            }
        };

        let heartbeat_s = parse_u64(get(HEARTBEAT_S), HEARTBEAT_S, 30, 1, 3600)?;
        let sweep_ms = parse_u64(get(SWEEP_INTERVAL_MS), SWEEP_INTERVAL_MS, 5000, 50, 10_000)?;
        let grace_s = parse_u64(get(SHUTDOWN_GRACE_S), SHUTDOWN_GRACE_S, 20, 0, 3600)?;

        let artifact_store = get(ARTIFACT_STORE)
            .unwrap_or(DEFAULT_ARTIFACT_STORE)
            .to_owned();
        crate::store::validate_url(&artifact_store).map_err(|why| invalid(ARTIFACT_STORE, why))?;
        let artifact_max_bytes = parse_u64(
            get(ARTIFACT_MAX_BYTES),
            ARTIFACT_MAX_BYTES,
            8 << 30,
            1,
            1 << 40,
        )?;
        let downloads_max = parse_u64(get(DOWNLOADS_MAX), DOWNLOADS_MAX, 1024, 1, 1_000_000)?;

        Ok(Settings {
            listen,
            database_url,
            redis_url: Secret::new(redis_url),
            amqp_url: Secret::new(amqp_url),
            tls: StoreTls {
                postgres: postgres_tls,
                redis: redis_tls,
                amqp: amqp_tls,
            },
            instance,
            jwt_secret: Secret::new(jwt_secret),
            bootstrap_admin,
            heartbeat: Duration::from_secs(heartbeat_s),
            sweep_interval: Duration::from_millis(sweep_ms),
            shutdown_grace: Duration::from_secs(grace_s),
            artifact_store,
            artifact_max_bytes,
            download_concurrency: downloads_max as usize,
        })
    }
}

/// PostgreSQL as `TEND_DATABASE_URL` and `TEND_DATABASE_CA_FILE` name it:
/// the URL for tokio-postgres, and its TLS. All that `tend-platform
/// migrate` needs.
pub fn database(vars: &HashMap<String, String>) -> Result<(Secret, PostgresTls), ConfigError> {
    let get = |k: &str| vars.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    let url = get(DATABASE_URL).unwrap_or(DEFAULT_DATABASE_URL);
    let (url, tls) = PostgresTls::from_url(url, get(DATABASE_CA_FILE))?;
    url.parse::<tokio_postgres::Config>()
        .map_err(|e| invalid(DATABASE_URL, format!("not a PostgreSQL URL: {e}")))?;
    Ok((Secret::new(url), tls))
}

fn parse_u64(
    v: Option<&str>,
    var: &'static str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ConfigError> {
    let Some(v) = v else { return Ok(default) };
    match v.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(invalid(
            var,
            format!("expected a whole number from {min} to {max}, got {v:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn defaults_apply_when_only_the_jwt_secret_is_set() {
        let s = Settings::from_map(&vars(&[(JWT_SECRET, KEY)]), "0.0.0.0:8080").unwrap();
        assert_eq!(s.listen.port(), 8080);
        assert_eq!(s.instance, "tend");
        assert_eq!(s.heartbeat, Duration::from_secs(30));
        assert!(s.bootstrap_admin.is_none());
        assert_eq!(s.artifact_store, DEFAULT_ARTIFACT_STORE);
    }

    #[test]
    fn a_missing_or_short_jwt_secret_is_refused_by_name() {
        let e = Settings::from_map(&vars(&[]), "0.0.0.0:8080").unwrap_err();
        assert_eq!(e.var, JWT_SECRET);
        let e = Settings::from_map(&vars(&[(JWT_SECRET, "short")]), "0.0.0.0:8080").unwrap_err();
        assert_eq!(e.var, JWT_SECRET);
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (var, value) in [
            (LISTEN, "nowhere"),
            (HEARTBEAT_S, "0"),
            (HEARTBEAT_S, "ten"),
            (INSTANCE, "a b"),
            (BOOTSTRAP_ADMIN, "nocolon"),
            (AMQP_URL, "http://x"),
            (ARTIFACT_STORE, "http://x"),
            (ARTIFACT_STORE, "file://relative/dir"),
            (ARTIFACT_STORE, "s3:///prefix"),
            (DATABASE_URL, "postgres://h/db?sslmode=verify-everything"),
            (DATABASE_CA_FILE, "/nonexistent/ca.pem"),
            (REDIS_URL, "rediss://h:6379/#insecure"),
            (REDIS_CA_FILE, "/nonexistent/ca.pem"),
            (AMQP_CA_FILE, "/nonexistent/ca.pem"),
        ] {
            let e = Settings::from_map(&vars(&[(JWT_SECRET, KEY), (var, value)]), "0.0.0.0:1")
                .unwrap_err();
            assert_eq!(e.var, var, "{value}");
        }
    }

    #[test]
    fn the_database_url_keeps_its_password_and_loses_what_tls_took() {
        let s = Settings::from_map(
            &vars(&[
                (JWT_SECRET, KEY),
                (
                    DATABASE_URL,
                    "postgres://u:pw@db/tend?sslmode=require&application_name=a",
                ),
            ]),
            "0.0.0.0:8080",
        )
        .unwrap();
        assert_eq!(
            s.database_url.expose(),
            "postgres://u:pw@db/tend?application_name=a"
        );
        assert_eq!(s.tls.postgres.mode(), crate::tls::SslMode::Require);
        assert!(!s.tls.summary().contains("pw"), "{}", s.tls.summary());
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let s = Settings::from_map(
            &vars(&[(JWT_SECRET, KEY), (BOOTSTRAP_ADMIN, "root:hunter2hunter2")]),
            "0.0.0.0:8080",
        )
        .unwrap();
        let shown = format!("{s:?}");
        assert!(
            !shown.contains(KEY) && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}
