//! TLS to PostgreSQL, Redis and RabbitMQ, with rustls.
//!
//! What each store's URL asks for, and the CA file that may go with it:
//!
//! - PostgreSQL: libpq's `sslmode` in `TEND_DATABASE_URL` (table below) and
//!   the CA in `sslrootcert=/path` or `TEND_DATABASE_CA_FILE`;
//! - Redis: `rediss://` in `TEND_REDIS_URL`, the CA in `TEND_REDIS_CA_FILE`;
//! - RabbitMQ: `amqps://` in `TEND_AMQP_URL`, the CA in `TEND_AMQP_CA_FILE`.
//!
//! | `sslmode` | TLS | certificate chain | host name |
//! |---|---|---|---|
//! | `disable` | never | | |
//! | `prefer` (the default without a CA) | when the server offers it | not checked | not checked |
//! | `require` | always | checked against the CA file if one is given | not checked |
//! | `verify-ca` | always | checked | not checked |
//! | `verify-full` (the default with a CA) | always | checked | checked |
//!
//! These are libpq's meanings, so a URL behaves as it does with `psql`.
//! `require` without a CA file encrypts but cannot tell the server from a
//! machine in the middle, and says so in the log at start; production
//! wants `verify-full`. `sslrootcert=system` names the system's CAs, as in
//! libpq 16, and then only `verify-ca` and `verify-full` are accepted.
//!
//! A CA file is a PEM file of one or more certificates. It replaces the
//! system's CAs for its store rather than adding to them: a store on a
//! private CA is trusted through that CA alone. Without one, the system's
//! CAs are used (`/etc/ssl/certs`, found by rustls-native-certs). Redis and
//! RabbitMQ always check the chain and the host name: a `rediss://…#insecure`
//! URL, which would turn both checks off, is refused.
//!
//! Every mistake here is a configuration error that names its variable
//! (an unreadable CA file, a CA file for a store that does not use TLS, an
//! unknown `sslmode`), so the service exits at start with one line. A
//! handshake that fails at connection time (a certificate that does not
//! verify, a server without TLS when TLS is required) will fail the same
//! way on every attempt: [`is_handshake_refusal`] lets the startup retries
//! give up at once, with rustls' reason.
//!
//! rustls runs on aws-lc-rs, the one crypto provider of the workspace
//! (jsonwebtoken and object_store use it too). The configurations built
//! here name it explicitly, and [`install_default_provider`] makes it the
//! process default for the libraries that ask rustls for the default
//! (the redis crate).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, aws_lc_rs};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::config::{
    AMQP_CA_FILE, AMQP_URL, ConfigError, DATABASE_CA_FILE, DATABASE_URL, REDIS_CA_FILE, REDIS_URL,
    invalid,
};

/// The crypto provider of every TLS connection tend makes.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(aws_lc_rs::default_provider())
}

/// Makes aws-lc-rs the process's default rustls provider, for libraries
/// that build their own rustls configuration (the redis crate). Harmless
/// when already done.
pub fn install_default_provider() {
    // An error means a provider is installed already: the process's first
    // call won, and with one provider compiled in, it is this one.
    let _ = aws_lc_rs::default_provider().install_default();
}

/// The TLS settings of the three stores, checked at startup.
#[derive(Debug, Clone)]
pub struct StoreTls {
    pub postgres: PostgresTls,
    pub redis: RedisTls,
    pub amqp: AmqpTls,
}

impl StoreTls {
    /// One line for the startup log: how each store is reached, without
    /// any part of the URLs.
    pub fn summary(&self) -> String {
        format!(
            "PostgreSQL {}; Redis {}; RabbitMQ {}",
            self.postgres.describe(),
            self.redis.trust.describe(),
            self.amqp.trust.describe()
        )
    }
}

/// A CA file, read and parsed at startup.
#[derive(Clone)]
pub struct CaFile {
    path: PathBuf,
    /// The file as read, for the redis crate, which takes PEM bytes.
    pem: Arc<[u8]>,
    certs: Vec<CertificateDer<'static>>,
}

impl fmt::Debug for CaFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaFile")
            .field("path", &self.path)
            .field("certificates", &self.certs.len())
            .finish()
    }
}

impl CaFile {
    /// Reads the PEM certificates of `path`; `var` names where the path
    /// came from, for the error.
    pub fn load(var: &'static str, path: &str) -> Result<CaFile, ConfigError> {
        let path = PathBuf::from(path);
        let pem = std::fs::read(&path)
            .map_err(|e| invalid(var, format!("cannot read {}: {e}", path.display())))?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(var, format!("{} is not valid PEM: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(invalid(
                var,
                format!(
                    "{} holds no certificate (expected PEM \"BEGIN CERTIFICATE\" blocks)",
                    path.display()
                ),
            ));
        }
        let file = CaFile {
            path,
            pem: pem.into(),
            certs,
        };
        // Parsed now, so that a certificate rustls cannot use as a trust
        // anchor stops the service at start rather than at each connection.
        file.root_store(var)?;
        Ok(file)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn root_store(&self, var: &'static str) -> Result<RootCertStore, ConfigError> {
        let mut store = RootCertStore::empty();
        for (n, cert) in self.certs.iter().enumerate() {
            store.add(cert.clone()).map_err(|e| {
                invalid(
                    var,
                    format!(
                        "certificate {} of {} is not a usable CA certificate: {e}",
                        n + 1,
                        self.path.display()
                    ),
                )
            })?;
        }
        Ok(store)
    }
}

/// Whom a store's certificate must chain to.
#[derive(Debug, Clone)]
pub enum Trust {
    /// No TLS at all.
    Plain,
    /// TLS whose certificate is not checked (`sslmode=prefer`, or
    /// `require` without a CA).
    Unverified,
    /// The CAs of a CA file.
    File(CaFile),
    /// The system's CAs.
    System,
}

impl Trust {
    fn describe(&self) -> String {
        match self {
            Trust::Plain => "without TLS".to_owned(),
            Trust::Unverified => "over TLS, certificate not verified".to_owned(),
            Trust::File(ca) => format!("over TLS, verified against {}", ca.path.display()),
            Trust::System => "over TLS, verified against the system's CAs".to_owned(),
        }
    }

    /// The roots to verify against, or `None` for [`Trust::Unverified`]
    /// (and [`Trust::Plain`], which builds no configuration).
    fn roots(&self, ca_var: &'static str, why: &str) -> Result<Option<RootCertStore>, ConfigError> {
        match self {
            Trust::Plain | Trust::Unverified => Ok(None),
            Trust::File(ca) => ca.root_store(ca_var).map(Some),
            Trust::System => system_roots(ca_var, why).map(Some),
        }
    }
}

/// The system's CAs, or an error naming `ca_var` when there are none.
fn system_roots(ca_var: &'static str, why: &str) -> Result<RootCertStore, ConfigError> {
    let found = rustls_native_certs::load_native_certs();
    let mut store = RootCertStore::empty();
    store.add_parsable_certificates(found.certs);
    if store.is_empty() {
        let detail = found
            .errors
            .first()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        return Err(invalid(
            ca_var,
            format!(
                "{why} needs CA certificates and this system has none{detail}: \
                 install ca-certificates or name a CA file here"
            ),
        ));
    }
    Ok(store)
}

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Chain and host name: the usual TLS client.
    Full,
    /// The chain only (`verify-ca`, `require` with a CA).
    ChainOnly,
    /// Nothing: encryption against passive listeners only.
    Nothing,
}

fn client_config(roots: Option<RootCertStore>, check: Check) -> Result<ClientConfig, String> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let config = match (roots, check) {
        (Some(roots), Check::Full) => builder.with_root_certificates(roots),
        (Some(roots), Check::ChainOnly) => {
            let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| e.to_string())?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly(inner)))
        }
        (None, _) | (_, Check::Nothing) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoCheck(provider))),
    };
    Ok(config.with_no_client_auth())
}

/// libpq's `verify-ca`: the chain must lead to a trusted CA, whatever
/// name the certificate carries. webpki checks the chain before the name,
/// so a name mismatch means the chain passed.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// libpq's `prefer` and `require` without a CA: any certificate is taken.
/// The handshake signature is still checked, so the session key is the
/// one of whoever holds the certificate's key; who that is, nothing says.
#[derive(Debug)]
struct NoCheck(Arc<CryptoProvider>);

impl ServerCertVerifier for NoCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

// ---------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------

/// libpq's `sslmode` values that tend accepts (all but `allow`, which
/// tries plaintext first and which tokio-postgres cannot do).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(v: &str) -> Result<SslMode, ConfigError> {
        Ok(match v {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(invalid(
                    DATABASE_URL,
                    format!(
                        "sslmode={other:?} is not supported: use disable, prefer, require, \
                         verify-ca or verify-full"
                    ),
                ));
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// What tokio-postgres is told: it knows only whether TLS is off,
    /// optional or required; the certificate checks are the connector's.
    fn wire(self) -> tokio_postgres::config::SslMode {
        match self {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        }
    }
}

/// TLS to PostgreSQL: the mode, and the rustls connector of every
/// connection (the pool's and the monitor's LISTEN connection).
#[derive(Clone)]
pub struct PostgresTls {
    mode: SslMode,
    trust: Trust,
    connector: Option<tokio_postgres_rustls::MakeRustlsConnect>,
}

impl fmt::Debug for PostgresTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresTls")
            .field("mode", &self.mode)
            .field("trust", &self.trust)
            .finish()
    }
}

impl PostgresTls {
    /// Reads `sslmode` and `sslrootcert` out of `url` (tokio-postgres knows
    /// neither `verify-*` nor `sslrootcert`) and the CA file named by
    /// `TEND_DATABASE_CA_FILE` (`ca_file`). Answers the URL without those
    /// two parameters, for tokio-postgres, and the TLS settings.
    pub fn from_url(
        url: &str,
        ca_file: Option<&str>,
    ) -> Result<(String, PostgresTls), ConfigError> {
        let (rest, params) = take_params(url, &["sslmode", "sslrootcert"])?;
        let mut mode = None;
        let mut rootcert = None;
        for (key, value) in params {
            match key.as_str() {
                "sslmode" => mode = Some(SslMode::parse(&value)?),
                _ => rootcert = Some(value),
            }
        }
        let trust = match (rootcert.as_deref(), ca_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    DATABASE_CA_FILE,
                    "TEND_DATABASE_URL names a CA too (sslrootcert): name it in one place",
                ));
            }
            (Some("system"), None) => Trust::System,
            (Some(path), None) => Trust::File(CaFile::load(DATABASE_URL, path)?),
            (None, Some(path)) => Trust::File(CaFile::load(DATABASE_CA_FILE, path)?),
            (None, None) => Trust::Unverified,
        };
        let ca_given = !matches!(trust, Trust::Unverified);
        // A CA without a mode means the CA is meant to be used.
        let mode = mode.unwrap_or(if ca_given {
            SslMode::VerifyFull
        } else {
            SslMode::Prefer
        });
        if matches!(trust, Trust::System) && mode < SslMode::VerifyCa {
            return Err(invalid(
                DATABASE_URL,
                format!(
                    "sslrootcert=system needs sslmode=verify-ca or verify-full, not {}",
                    mode.as_str()
                ),
            ));
        }
        if ca_given && mode < SslMode::Require {
            let var = if rootcert.is_some() {
                DATABASE_URL
            } else {
                DATABASE_CA_FILE
            };
            return Err(invalid(
                var,
                format!(
                    "a CA is given but sslmode={} never checks certificates: use \
                     sslmode=verify-full (or leave sslmode out)",
                    mode.as_str()
                ),
            ));
        }
        let (trust, check) = match mode {
            SslMode::Disable => (Trust::Plain, Check::Nothing),
            SslMode::Prefer => (Trust::Unverified, Check::Nothing),
            SslMode::Require if !ca_given => (Trust::Unverified, Check::Nothing),
            SslMode::Require | SslMode::VerifyCa if matches!(trust, Trust::Unverified) => {
                (Trust::System, Check::ChainOnly)
            }
            SslMode::Require | SslMode::VerifyCa => (trust, Check::ChainOnly),
            SslMode::VerifyFull if matches!(trust, Trust::Unverified) => {
                (Trust::System, Check::Full)
            }
            SslMode::VerifyFull => (trust, Check::Full),
        };
        let connector = match trust {
            Trust::Plain => None,
            _ => {
                let why = format!("sslmode={}", mode.as_str());
                let roots = trust.roots(DATABASE_CA_FILE, &why)?;
                let config = client_config(roots, check)
                    .map_err(|e| invalid(DATABASE_URL, format!("TLS settings: {e}")))?;
                Some(tokio_postgres_rustls::MakeRustlsConnect::new(config))
            }
        };
        Ok((
            rest,
            PostgresTls {
                mode,
                trust,
                connector,
            },
        ))
    }

    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// True when the connection is encrypted but the server unauthenticated
    /// although TLS is required: worth a warning at start.
    pub fn required_but_unverified(&self) -> bool {
        self.mode == SslMode::Require && matches!(self.trust, Trust::Unverified)
    }

    fn describe(&self) -> String {
        format!("{} (sslmode={})", self.trust.describe(), self.mode.as_str())
    }

    /// Sets the mode tokio-postgres must enforce on `config`: TLS off,
    /// optional (`prefer`), or required, never a silent fallback.
    pub fn apply(&self, config: &mut tokio_postgres::Config) {
        config.ssl_mode(self.mode.wire());
    }

    /// Connects one connection outside the pool (the monitor's LISTEN
    /// connection) and spawns nothing: the caller drives the connection.
    pub async fn connect(
        &self,
        config: &tokio_postgres::Config,
    ) -> Result<(tokio_postgres::Client, Box<dyn PgConnection + Send + Unpin>), tokio_postgres::Error>
    {
        match &self.connector {
            None => {
                let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
                Ok((client, Box::new(conn)))
            }
            Some(tls) => {
                let (client, conn) = config.connect(tls.clone()).await?;
                Ok((client, Box::new(conn)))
            }
        }
    }

    /// A deadpool manager for `config` with this TLS.
    pub fn manager(
        &self,
        config: tokio_postgres::Config,
        manager: deadpool_postgres::ManagerConfig,
    ) -> deadpool_postgres::Manager {
        match &self.connector {
            None => deadpool_postgres::Manager::from_config(config, tokio_postgres::NoTls, manager),
            Some(tls) => deadpool_postgres::Manager::from_config(config, tls.clone(), manager),
        }
    }
}

/// A connection made by [`PostgresTls::connect`], plain or TLS: what a
/// caller that drives it by hand needs.
pub trait PgConnection {
    fn poll_message(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<tokio_postgres::AsyncMessage, tokio_postgres::Error>>>;
}

impl<S, T> PgConnection for tokio_postgres::Connection<S, T>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    fn poll_message(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<tokio_postgres::AsyncMessage, tokio_postgres::Error>>> {
        tokio_postgres::Connection::poll_message(self, cx)
    }
}

/// Takes the parameters named in `keys` out of a PostgreSQL connection
/// string, in URL form (`postgres://…?sslmode=…`) or key/value form
/// (`host=… sslmode=…`); answers the string without them (for
/// tokio-postgres) and their decoded values, in order.
fn take_params(url: &str, keys: &[&str]) -> Result<(String, Vec<(String, String)>), ConfigError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return Ok((url.to_owned(), Vec::new()));
        };
        let mut kept = Vec::new();
        let mut taken = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode(k)?;
            if keys.contains(&key.as_str()) {
                taken.push((key, percent_decode(v)?));
            } else {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        Ok((rest, taken))
    } else {
        let pairs = key_values(url)?;
        let mut rest = Vec::new();
        let mut taken = Vec::new();
        for (k, v) in pairs {
            if keys.contains(&k.as_str()) {
                taken.push((k, v));
            } else {
                let quoted = v.replace('\\', "\\\\").replace('\'', "\\'");
                rest.push(format!("{k}='{quoted}'"));
            }
        }
        Ok((rest.join(" "), taken))
    }
}

/// `%XX` escapes of a URL component, decoded (no `+` for space: libpq and
/// tokio-postgres do not take it either).
fn percent_decode(s: &str) -> Result<String, ConfigError> {
    let bad = || invalid(DATABASE_URL, "a query parameter has an invalid %-escape");
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or_else(bad)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// The pairs of a key/value connection string (`key=value key='a b'`), as
/// libpq reads them: spaces around `=`, values in single quotes, and
/// backslash escapes.
fn key_values(s: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let bad = |why: &str| invalid(DATABASE_URL, format!("not a PostgreSQL URL: {why}"));
    let mut chars = s.chars().peekable();
    let mut pairs = Vec::new();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(bad(&format!("expected `=` after {key:?}")));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => return Err(bad("unterminated quoted value")),
                    Some('\'') => break,
                    Some('\\') => value.push(chars.next().ok_or_else(|| bad("trailing `\\`"))?),
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.push(chars.next().ok_or_else(|| bad("trailing `\\`"))?);
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

// ---------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------

/// TLS to Redis: `rediss://` and its CA file.
#[derive(Debug, Clone)]
pub struct RedisTls {
    trust: Trust,
}

impl RedisTls {
    /// Checks `url`'s scheme against the CA file named by
    /// `TEND_REDIS_CA_FILE` (`ca_file`).
    pub fn from_url(url: &str, ca_file: Option<&str>) -> Result<RedisTls, ConfigError> {
        let tls = url.starts_with("rediss://");
        if tls && url.contains('#') {
            return Err(invalid(
                REDIS_URL,
                "a `#` fragment such as #insecure would turn off certificate checks, which \
                 tend does not do: name the server's CA in TEND_REDIS_CA_FILE instead",
            ));
        }
        let trust = match (tls, ca_file) {
            (false, Some(_)) => {
                return Err(invalid(
                    REDIS_CA_FILE,
                    "set, but TEND_REDIS_URL is not a rediss:// URL: use rediss:// for TLS",
                ));
            }
            (false, None) => Trust::Plain,
            (true, Some(path)) => Trust::File(CaFile::load(REDIS_CA_FILE, path)?),
            (true, None) => {
                // The redis crate loads the system's CAs itself at each
                // connection; checked here so that a system without any
                // stops the service at start.
                system_roots(REDIS_CA_FILE, "rediss://")?;
                Trust::System
            }
        };
        Ok(RedisTls { trust })
    }

    /// The client for `url` with this TLS.
    pub fn client(&self, url: &str) -> redis::RedisResult<redis::Client> {
        match &self.trust {
            Trust::File(ca) => {
                install_default_provider();
                redis::Client::build_with_tls(
                    url,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(ca.pem.to_vec()),
                    },
                )
            }
            Trust::System => {
                install_default_provider();
                redis::Client::open(url)
            }
            Trust::Plain | Trust::Unverified => redis::Client::open(url),
        }
    }
}

// ---------------------------------------------------------------------------
// RabbitMQ
// ---------------------------------------------------------------------------

/// TLS to RabbitMQ: `amqps://` and its CA file.
#[derive(Clone)]
pub struct AmqpTls {
    trust: Trust,
    config: Option<Arc<ClientConfig>>,
}

impl fmt::Debug for AmqpTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpTls")
            .field("trust", &self.trust)
            .finish()
    }
}

impl AmqpTls {
    /// Checks `url`'s scheme against the CA file named by
    /// `TEND_AMQP_CA_FILE` (`ca_file`) and builds the rustls configuration.
    pub fn from_url(url: &str, ca_file: Option<&str>) -> Result<AmqpTls, ConfigError> {
        let tls = url.starts_with("amqps://");
        let trust = match (tls, ca_file) {
            (false, Some(_)) => {
                return Err(invalid(
                    AMQP_CA_FILE,
                    "set, but TEND_AMQP_URL is not an amqps:// URL: use amqps:// for TLS",
                ));
            }
            (false, None) => Trust::Plain,
            (true, Some(path)) => Trust::File(CaFile::load(AMQP_CA_FILE, path)?),
            (true, None) => Trust::System,
        };
        let config = match trust {
            Trust::Plain => None,
            _ => {
                let roots = trust.roots(AMQP_CA_FILE, "amqps://")?;
                let config = client_config(roots, Check::Full)
                    .map_err(|e| invalid(AMQP_URL, format!("TLS settings: {e}")))?;
                Some(Arc::new(config))
            }
        };
        Ok(AmqpTls { trust, config })
    }

    /// The rustls configuration of an `amqps://` URL; `None` for `amqp://`.
    pub fn client_config(&self) -> Option<Arc<ClientConfig>> {
        self.config.clone()
    }
}

/// True when `e` (or its cause) is a TLS handshake that failed for a reason
/// that the next attempt will meet too: a certificate that does not
/// verify, a server that does not speak TLS where TLS is required. The
/// startup retries stop at once on these.
pub fn is_handshake_refusal(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        if cause.is::<rustls::Error>() {
            return true;
        }
        // The redis crate keeps its cause in an `Arc`, which is what the
        // chain then holds.
        let shared = cause
            .downcast_ref::<Arc<dyn std::error::Error + Send + Sync>>()
            .map(|e| &**e);
        if shared.is_some_and(|e| e.is::<rustls::Error>()) {
            return true;
        }
        let io = cause
            .downcast_ref::<std::io::Error>()
            .or_else(|| shared.and_then(|e| e.downcast_ref::<std::io::Error>()));
        if io
            .and_then(std::io::Error::get_ref)
            .is_some_and(|inner| inner.is::<rustls::Error>())
        {
            return true;
        }
        // tokio-postgres's answer to a server that declines TLS, whose
        // type is private.
        cause.to_string() == "server does not support TLS"
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A self-signed CA certificate (its key thrown away), as a file.
    pub(crate) fn ca_file() -> tempfile::NamedTempFile {
        const PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBjzCCATWgAwIBAgIUeO4heq7764gHhsZVoAIQEdYHHPowCgYIKoZIzj0EAwIw
HDEaMBgGA1UEAwwRdGVuZCB1bml0LXRlc3QgQ0EwIBcNMjYxMjA3MTcxNjQ2WhgP
MjEyNjExMTMxNzE2NDZaMBwxGjAYBgNVBAMMEXRlbmQgdW5pdC10ZXN0IENBMFkw
EwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEiD7llOElnME9G/sD4PITqfNGxcZAc1nc
Jdpzml45DVjqr7GF0lm5r/HY4bNFyHbZWxKWrL5wdJ/qrigSWajhMKNTMFEwHQYD
VR0OBBYEFCSlU0bOwTdFUgmayrTRotpS5XgsMB8GA1UdIwQYMBaAFCSlU0bOwTdF
UgmayrTRotpS5XgsMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDSAAwRQIh
ALkbUFaM77NotvNcOFqF781bfblAGp+Dz0dkM9HjMiHkAiB7/esixD0Ce2C4UAbv
cg1qQ/9n7JZqu/YSF7nw+/+vQg==
-----END CERTIFICATE-----
";
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, PEM.as_bytes()).unwrap();
        f
    }

    fn pg(url: &str, ca: Option<&str>) -> Result<PostgresTls, ConfigError> {
        PostgresTls::from_url(url, ca).map(|(_, tls)| tls)
    }

    #[test]
    fn sslmode_defaults_to_prefer_without_a_ca_and_to_verify_full_with_one() {
        let tls = pg("postgres://h/db", None).unwrap();
        assert_eq!(tls.mode(), SslMode::Prefer);
        assert!(matches!(tls.trust, Trust::Unverified));
        let ca = ca_file();
        let tls = pg("postgres://h/db", ca.path().to_str()).unwrap();
        assert_eq!(tls.mode(), SslMode::VerifyFull);
        assert!(matches!(tls.trust, Trust::File(_)));
        let url = format!("postgres://h/db?sslrootcert={}", ca.path().display());
        assert_eq!(pg(&url, None).unwrap().mode(), SslMode::VerifyFull);
    }

    #[test]
    fn require_verifies_the_chain_only_when_a_ca_is_given() {
        let tls = pg("postgres://h/db?sslmode=require", None).unwrap();
        assert!(tls.required_but_unverified());
        let ca = ca_file();
        let tls = pg("postgres://h/db?sslmode=require", ca.path().to_str()).unwrap();
        assert!(!tls.required_but_unverified());
        assert!(matches!(tls.trust, Trust::File(_)));
        assert!(
            pg("postgres://h/db?sslmode=disable", None)
                .unwrap()
                .connector
                .is_none()
        );
    }

    #[test]
    fn contradictory_or_broken_postgres_tls_settings_name_their_variable() {
        let ca = ca_file();
        let ca = ca.path().to_str().unwrap();
        let rootcert = format!("postgres://h/db?sslrootcert={ca}");
        for (url, file, var, says) in [
            (
                "postgres://h/db?sslmode=allow",
                None,
                DATABASE_URL,
                "not supported",
            ),
            (
                "postgres://h/db",
                Some("/nonexistent/ca.pem"),
                DATABASE_CA_FILE,
                "cannot read",
            ),
            (
                "postgres://h/db?sslmode=prefer",
                Some(ca),
                DATABASE_CA_FILE,
                "never checks",
            ),
            (
                "postgres://h/db?sslmode=disable",
                Some(ca),
                DATABASE_CA_FILE,
                "never checks",
            ),
            (
                "postgres://h/db?sslmode=require&sslrootcert=system",
                None,
                DATABASE_URL,
                "verify-ca",
            ),
            (&rootcert, Some(ca), DATABASE_CA_FILE, "one place"),
            (
                "postgres://h/db?sslrootcert=/nonexistent",
                None,
                DATABASE_URL,
                "cannot read",
            ),
        ] {
            let e = pg(url, file).unwrap_err();
            assert_eq!(e.var, var, "{url} {file:?}: {e}");
            assert!(e.reason.contains(says), "{url} {file:?}: {e}");
        }
    }

    #[test]
    fn a_ca_file_without_a_certificate_is_refused() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, b"not a certificate\n").unwrap();
        let e = CaFile::load(AMQP_CA_FILE, f.path().to_str().unwrap()).unwrap_err();
        assert_eq!(e.var, AMQP_CA_FILE);
        assert!(e.reason.contains("no certificate"), "{e}");
    }

    #[test]
    fn redis_and_amqp_refuse_a_ca_without_tls_and_redis_refuses_insecure() {
        let ca = ca_file();
        let ca = ca.path().to_str();
        let e = RedisTls::from_url("redis://h:6379", ca).unwrap_err();
        assert_eq!(e.var, REDIS_CA_FILE);
        let e = RedisTls::from_url("rediss://h:6379/#insecure", ca).unwrap_err();
        assert_eq!(e.var, REDIS_URL);
        assert!(e.reason.contains("insecure"), "{e}");
        assert!(RedisTls::from_url("rediss://h:6379/0", ca).is_ok());
        assert!(RedisTls::from_url("redis://h:6379/0", None).is_ok());
        let e = AmqpTls::from_url("amqp://h/%2f", ca).unwrap_err();
        assert_eq!(e.var, AMQP_CA_FILE);
        let tls = AmqpTls::from_url("amqps://h/%2f", ca).unwrap();
        assert!(tls.client_config().is_some());
        assert!(
            AmqpTls::from_url("amqp://h/%2f", None)
                .unwrap()
                .client_config()
                .is_none()
        );
    }

    #[test]
    fn a_certificate_refusal_is_told_apart_from_a_network_failure() {
        let refused = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        assert!(is_handshake_refusal(
            &anyhow::Error::new(refused).context("connecting")
        ));
        let refused = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        assert!(is_handshake_refusal(&anyhow::Error::new(
            redis::RedisError::from(refused)
        )));
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(!is_handshake_refusal(&anyhow::Error::new(reset)));
    }

    #[test]
    fn url_parameters_for_tls_are_taken_out_and_the_rest_kept() {
        let (rest, taken) = take_params(
            "postgres://u:p@db:5432/tend?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem",
            &["sslmode", "sslrootcert"],
        )
        .unwrap();
        assert_eq!(rest, "postgres://u:p@db:5432/tend?application_name=x");
        assert_eq!(
            taken,
            [
                ("sslmode".to_owned(), "verify-full".to_owned()),
                ("sslrootcert".to_owned(), "/etc/ca.pem".to_owned())
            ]
        );
        let (rest, _) = take_params("postgres://db/tend?sslmode=require", &["sslmode"]).unwrap();
        assert_eq!(rest, "postgres://db/tend");
    }

    #[test]
    fn key_value_strings_are_read_as_libpq_reads_them() {
        let (rest, taken) = take_params(
            r"host=db  dbname = tend password='it\'s' sslmode=verify-ca options='-c a=b'",
            &["sslmode"],
        )
        .unwrap();
        assert_eq!(
            rest,
            r"host='db' dbname='tend' password='it\'s' options='-c a=b'"
        );
        assert_eq!(taken, [("sslmode".to_owned(), "verify-ca".to_owned())]);
        let parsed: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(parsed.get_password(), Some(&b"it's"[..]));
        assert_eq!(parsed.get_options(), Some("-c a=b"));
        for broken in ["host", "host='db", "host=db\\"] {
            let e = take_params(broken, &["sslmode"]).unwrap_err();
            assert_eq!(e.var, DATABASE_URL, "{broken}");
        }
    }
}
