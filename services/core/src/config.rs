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
use crate::token_key::{self, TokenKeySet, TokenKind};

pub const LISTEN: &str = "TEND_LISTEN";
pub const METRICS_LISTEN: &str = "TEND_METRICS_LISTEN";
pub const DATABASE_URL: &str = "TEND_DATABASE_URL";
pub const REDIS_URL: &str = "TEND_REDIS_URL";
pub const AMQP_URL: &str = "TEND_AMQP_URL";
pub const INSTANCE: &str = "TEND_INSTANCE";
/// The single token key of earlier releases: refused alone, ignored with a
/// warning beside the new keys.
pub const JWT_SECRET: &str = "TEND_JWT_SECRET";
pub const ADMIN_TOKEN_KEY: &str = "TEND_ADMIN_TOKEN_KEY";
pub const ADMIN_TOKEN_PREVIOUS_KEYS: &str = "TEND_ADMIN_TOKEN_PREVIOUS_KEYS";
pub const DEVICE_TOKEN_KEY: &str = "TEND_DEVICE_TOKEN_KEY";
pub const DEVICE_TOKEN_PREVIOUS_KEYS: &str = "TEND_DEVICE_TOKEN_PREVIOUS_KEYS";
pub const BOOTSTRAP_ADMIN: &str = "TEND_BOOTSTRAP_ADMIN";
pub const TRUSTED_PROXIES: &str = "TEND_TRUSTED_PROXIES";
pub const HEARTBEAT_S: &str = "TEND_HEARTBEAT_S";
pub const SWEEP_INTERVAL_MS: &str = "TEND_SWEEP_INTERVAL_MS";
pub const SHUTDOWN_GRACE_S: &str = "TEND_SHUTDOWN_GRACE_S";
pub const AUDIT_RETENTION_DAYS: &str = "TEND_AUDIT_RETENTION_DAYS";
pub const PRESENCE_REFRESH_S: &str = "TEND_PRESENCE_REFRESH_S";
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
    /// Where `/metrics` is served (`TEND_METRICS_LISTEN`), when set: a port
    /// of its own, which the network lets only the monitoring system reach.
    /// Each service has its own default ([`crate::service::Service`]).
    pub metrics_listen: Option<SocketAddr>,
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
    /// The admin token keys: read by tend-platform only.
    pub admin_token_keys: Option<TokenKeySet>,
    /// The device token keys: read by tend-sync only.
    pub device_token_keys: Option<TokenKeySet>,
    /// What the service should say at start about its environment (a
    /// variable it ignores), once logging is up.
    pub warnings: Vec<String>,
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
    /// The platform's instruction-signing key (`TEND_SIGNING_KEY_FILE`):
    /// required by tend-platform, which loads it
    /// ([`crate::signing::InstructionSigner::load`]); the other services
    /// never read it.
    pub signing_key_file: Option<std::path::PathBuf>,
    /// Proxies whose `X-Forwarded-For` names the client (login throttling
    /// and the audit log); none by default, so the peer is the client.
    pub trusted_proxies: Vec<crate::http::Cidr>,
    /// How long audit rows are kept (`TEND_AUDIT_RETENTION_DAYS`, default
    /// 365, at least 1); the monitor sweeps older ones.
    pub audit_retention_days: u32,
    /// How stale a device row's `last_seen_at` may grow while the device
    /// keeps heartbeating with nothing else changed
    /// (`TEND_PRESENCE_REFRESH_S`, default 3600; 0 writes every
    /// heartbeat). Redis holds the exact time, which the API shows. A
    /// steady fleet costs PostgreSQL about one row per device per period
    /// (each device refreshes after 3/4 to 4/4 of it): at the default 30 s
    /// heartbeat, under 0.01 rows per heartbeat.
    pub presence_refresh: Duration,
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
    /// Reads the process environment. `token` is the key the service signs
    /// and verifies tokens with, if any: it reads that one and no other.
    pub fn from_env(default_listen: &str, token: Option<TokenKind>) -> Result<Self, ConfigError> {
        Self::from_map(&std::env::vars().collect(), default_listen, token)
    }

    /// Reads settings from a map of variables (the environment, or a test's).
    pub fn from_map(
        vars: &HashMap<String, String>,
        default_listen: &str,
        token: Option<TokenKind>,
    ) -> Result<Self, ConfigError> {
        let get = |k: &str| vars.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());

        let listen = get(LISTEN)
            .unwrap_or(default_listen)
            .parse()
            .map_err(|_| invalid(LISTEN, "expected an address such as 0.0.0.0:8080"))?;
        let metrics_listen = get(METRICS_LISTEN)
            .map(|v| {
                v.parse().map_err(|_| {
                    invalid(METRICS_LISTEN, "expected an address such as 0.0.0.0:9080")
                })
            })
            .transpose()?;

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

        let mut warnings = Vec::new();
        let mut keys = |kind: TokenKind| -> Result<Option<TokenKeySet>, ConfigError> {
            if token != Some(kind) {
                for var in [kind.var(), kind.previous_var()] {
                    if get(var).is_some() {
                        warnings.push(format!(
                            "{var} is set but this service does not use it: only {} should hold the {} token key",
                            kind.holder(),
                            kind.as_str()
                        ));
                    }
                }
                return Ok(None);
            }
            let current = get(kind.var());
            if current.is_none() && get(JWT_SECRET).is_some() {
                return Err(invalid(
                    kind.var(),
                    format!(
                        "required, and {JWT_SECRET} is no longer read: each service now has a key of its own \
                         (see the README, \"Token keys\")"
                    ),
                ));
            }
            token_key::parse(kind, current, get(kind.previous_var()))
                .map(Some)
                .map_err(|(var, why)| invalid(var, why))
        };
        let admin_token_keys = keys(TokenKind::Admin)?;
        let device_token_keys = keys(TokenKind::Device)?;
        if get(JWT_SECRET).is_some() {
            warnings.push(format!(
                "{JWT_SECRET} is set but no longer read: {}; remove it",
                match token {
                    Some(kind) => format!("this service uses {}", kind.var()),
                    None => "this service uses no token key".to_owned(),
                }
            ));
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

        let trusted_proxies = get(TRUSTED_PROXIES)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .map(|c| {
                        c.parse()
                            .map_err(|why| invalid(TRUSTED_PROXIES, format!("{c:?}: {why}")))
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?
            .unwrap_or_default();

        let heartbeat_s = parse_u64(get(HEARTBEAT_S), HEARTBEAT_S, 30, 1, 3600)?;
        let sweep_ms = parse_u64(get(SWEEP_INTERVAL_MS), SWEEP_INTERVAL_MS, 5000, 50, 10_000)?;
        let grace_s = parse_u64(get(SHUTDOWN_GRACE_S), SHUTDOWN_GRACE_S, 20, 0, 3600)?;
        // A hundred years: beyond it, "keep forever" is what is meant.
        let audit_days = parse_u64(
            get(AUDIT_RETENTION_DAYS),
            AUDIT_RETENTION_DAYS,
            365,
            1,
            36_500,
        )?;

        let presence_refresh_s =
            parse_u64(get(PRESENCE_REFRESH_S), PRESENCE_REFRESH_S, 3600, 0, 86_400)?;

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
            metrics_listen,
            database_url,
            redis_url: Secret::new(redis_url),
            amqp_url: Secret::new(amqp_url),
            tls: StoreTls {
                postgres: postgres_tls,
                redis: redis_tls,
                amqp: amqp_tls,
            },
            instance,
            admin_token_keys,
            device_token_keys,
            warnings,
            bootstrap_admin,
            heartbeat: Duration::from_secs(heartbeat_s),
            sweep_interval: Duration::from_millis(sweep_ms),
            shutdown_grace: Duration::from_secs(grace_s),
            artifact_store,
            artifact_max_bytes,
            download_concurrency: downloads_max as usize,
            signing_key_file: get(crate::signing::SIGNING_KEY_FILE)
                .filter(|p| !p.trim().is_empty())
                .map(std::path::PathBuf::from),
            trusted_proxies,
            audit_retention_days: audit_days as u32,
            presence_refresh: Duration::from_secs(presence_refresh_s),
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

    const KEY: &str = "kq8ZtV3xN0pLw7Hc2Ys9RbF4mJd6Ge1A";
    const OLD_KEY: &str = "Wn5Tq0cYvX8pK3rLm6Bz1Hf9Dj2Ga7Es";

    #[test]
    fn defaults_apply_when_only_the_token_key_is_set() {
        let s = Settings::from_map(
            &vars(&[(ADMIN_TOKEN_KEY, KEY)]),
            "0.0.0.0:8080",
            Some(TokenKind::Admin),
        )
        .unwrap();
        assert_eq!(s.listen.port(), 8080);
        assert_eq!(s.metrics_listen, None);
        assert_eq!(s.instance, "tend");
        assert_eq!(s.heartbeat, Duration::from_secs(30));
        assert!(s.bootstrap_admin.is_none());
        assert_eq!(s.artifact_store, DEFAULT_ARTIFACT_STORE);
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        let keys = s.admin_token_keys.expect("the admin keys");
        assert_eq!(keys.current.expose(), KEY);
        assert!(keys.previous.is_empty());
        assert!(s.device_token_keys.is_none());
    }

    #[test]
    fn each_service_reads_its_own_key_and_no_other() {
        let both = vars(&[(ADMIN_TOKEN_KEY, KEY), (DEVICE_TOKEN_KEY, OLD_KEY)]);
        let platform = Settings::from_map(&both, "0.0.0.0:1", Some(TokenKind::Admin)).unwrap();
        assert!(platform.admin_token_keys.is_some() && platform.device_token_keys.is_none());
        assert!(
            platform
                .warnings
                .iter()
                .any(|w| w.contains(DEVICE_TOKEN_KEY)),
            "{:?}",
            platform.warnings
        );
        let sync = Settings::from_map(&both, "0.0.0.0:1", Some(TokenKind::Device)).unwrap();
        assert!(sync.device_token_keys.is_some() && sync.admin_token_keys.is_none());
        assert_eq!(sync.device_token_keys.unwrap().current.expose(), OLD_KEY);

        let monitor = Settings::from_map(&vars(&[]), "0.0.0.0:1", None).unwrap();
        assert!(monitor.admin_token_keys.is_none() && monitor.device_token_keys.is_none());
        assert!(monitor.warnings.is_empty());
    }

    #[test]
    fn a_missing_short_or_published_key_is_refused_by_name() {
        for kind in [TokenKind::Admin, TokenKind::Device] {
            let e = Settings::from_map(&vars(&[]), "0.0.0.0:1", Some(kind)).unwrap_err();
            assert_eq!(e.var, kind.var());
            let e = Settings::from_map(&vars(&[(kind.var(), "short")]), "0.0.0.0:1", Some(kind))
                .unwrap_err();
            assert_eq!(e.var, kind.var());
            let published = "replace-with-the-output-of-openssl-rand-base64-48";
            let e = Settings::from_map(&vars(&[(kind.var(), published)]), "0.0.0.0:1", Some(kind))
                .unwrap_err();
            assert_eq!(e.var, kind.var());
            let e = Settings::from_map(
                &vars(&[(kind.var(), KEY), (kind.previous_var(), "short")]),
                "0.0.0.0:1",
                Some(kind),
            )
            .unwrap_err();
            assert_eq!(e.var, kind.previous_var());
        }
    }

    #[test]
    fn the_jwt_secret_alone_is_refused_naming_the_new_key_and_ignored_beside_it() {
        let e = Settings::from_map(
            &vars(&[(JWT_SECRET, KEY)]),
            "0.0.0.0:1",
            Some(TokenKind::Device),
        )
        .unwrap_err();
        assert_eq!(e.var, DEVICE_TOKEN_KEY);
        let line = e.to_string();
        assert!(line.contains(JWT_SECRET) && !line.contains('\n'), "{line}");
        assert!(!line.contains(KEY), "{line}");

        let s = Settings::from_map(
            &vars(&[(JWT_SECRET, OLD_KEY), (ADMIN_TOKEN_KEY, KEY)]),
            "0.0.0.0:1",
            Some(TokenKind::Admin),
        )
        .unwrap();
        assert_eq!(s.admin_token_keys.unwrap().current.expose(), KEY);
        assert!(
            s.warnings.iter().any(|w| w.contains(JWT_SECRET)),
            "{:?}",
            s.warnings
        );

        // The monitor needs no key: the old one is only worth a warning.
        let s = Settings::from_map(&vars(&[(JWT_SECRET, KEY)]), "0.0.0.0:1", None).unwrap();
        assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
        assert!(!s.warnings[0].contains(KEY));
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (var, value) in [
            (LISTEN, "nowhere"),
            (METRICS_LISTEN, "9080"),
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
            let e = Settings::from_map(
                &vars(&[(ADMIN_TOKEN_KEY, KEY), (var, value)]),
                "0.0.0.0:1",
                Some(TokenKind::Admin),
            )
            .unwrap_err();
            assert_eq!(e.var, var, "{value}");
        }
    }

    #[test]
    fn the_database_url_keeps_its_password_and_loses_what_tls_took() {
        let s = Settings::from_map(
            &vars(&[
                (ADMIN_TOKEN_KEY, KEY),
                (
                    DATABASE_URL,
                    "postgres://u:pw@db/tend?sslmode=require&application_name=a",
                ),
            ]),
            "0.0.0.0:8080",
            Some(TokenKind::Admin),
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
            &vars(&[
                (ADMIN_TOKEN_KEY, KEY),
                (ADMIN_TOKEN_PREVIOUS_KEYS, OLD_KEY),
                (BOOTSTRAP_ADMIN, "root:hunter2hunter2"),
            ]),
            "0.0.0.0:8080",
            Some(TokenKind::Admin),
        )
        .unwrap();
        let shown = format!("{s:?}");
        assert!(
            !shown.contains(KEY) && !shown.contains(OLD_KEY) && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}
