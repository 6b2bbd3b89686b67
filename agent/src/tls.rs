//! How the agent trusts the server it talks to: `https://` with the
//! system's roots, plus a private CA from `ca_file` when one is set, and a
//! loud warning when `server_url` is plain `http://` to another machine.
//!
//! The sync server is the agent's whole source of work: whoever can answer
//! in its place (anyone on the path of a plain-HTTP connection) can make
//! the device reboot, shut down or send its logs. Plain HTTP stays allowed
//! for loopback (a test stack, a local relay that does TLS itself) and for
//! a lab, but never silently.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// `ca_file`: the certificates of a private CA, in PEM, trusted for every
/// connection to the sync server and for artifact downloads, in addition
/// to the system's roots.
#[derive(Clone)]
pub struct CaFile {
    pub path: PathBuf,
    pub certificates: Vec<reqwest::Certificate>,
}

impl CaFile {
    /// Reads the PEM bundle at `path`; a file that holds no certificate is
    /// refused, so a wrong path or a key file is found at start.
    pub fn load(path: &Path) -> anyhow::Result<CaFile> {
        let pem = std::fs::read(path)
            .with_context(|| format!("cannot read ca_file {}", path.display()))?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            anyhow::anyhow!(
                "ca_file {} is not a PEM certificate bundle: {}",
                path.display(),
                crate::client::chain(&e)
            )
        })?;
        if certificates.is_empty() {
            bail!(
                "ca_file {} holds no certificate (expected one or more -----BEGIN CERTIFICATE----- blocks)",
                path.display()
            );
        }
        Ok(CaFile {
            path: path.to_owned(),
            certificates,
        })
    }
}

impl fmt::Debug for CaFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaFile")
            .field("path", &self.path)
            .field("certificates", &self.certificates.len())
            .finish()
    }
}

/// The warning to log at every start when `server_url` sends the device's
/// secret, its token and its instructions in clear text over a network:
/// plain `http://` to a host that is not loopback.
pub fn plain_http_warning(server_url: &str) -> Option<String> {
    let url = reqwest::Url::parse(server_url).ok()?;
    if url.scheme() != "http" || is_loopback(&url) {
        return None;
    }
    Some(format!(
        "server_url {server_url} is plain http:// to another machine: the device secret, its \
         token and every instruction cross the network unencrypted and unauthenticated, so \
         anyone on the path can read them or answer in the server's place. Use https:// \
         (with ca_file for a private CA)"
    ))
}

fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    // An IPv6 host keeps its brackets in a URL.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => {
            let name = host.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_warned_about_unless_it_stays_on_the_machine() {
        for quiet in [
            "https://sync.example.com",
            "https://10.0.0.5:8081",
            "http://127.0.0.1:8081",
            "http://127.8.9.10",
            "http://[::1]:8081",
            "http://localhost:8081",
            "http://LOCALHOST.",
            "http://sync.localhost",
        ] {
            assert_eq!(plain_http_warning(quiet), None, "{quiet}");
        }
        for loud in [
            "http://sync.example.com",
            "http://10.0.0.5:8081",
            "http://[2001:db8::1]",
            "http://localhost.example.com",
            "http://0.0.0.0:8081",
        ] {
            let warning = plain_http_warning(loud).unwrap_or_else(|| panic!("{loud}: no warning"));
            assert!(
                warning.contains(loud) && warning.contains("https://"),
                "{warning}"
            );
        }
    }

    /// A self-signed CA certificate made for these tests (its key was
    /// thrown away: nothing can be signed with it).
    const TEST_CA: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIBjTCCATOgAwIBAgIUejRokx0HeSYk1GikXx88keUj8ywwCgYIKoZIzj0EAwIw\n\
HDEaMBgGA1UEAwwRdGVuZCB1bml0LXRlc3QgQ0EwHhcNMjYxMjA3MTczOTU2WhcN\n\
MzYxMjA0MTczOTU2WjAcMRowGAYDVQQDDBF0ZW5kIHVuaXQtdGVzdCBDQTBZMBMG\n\
ByqGSM49AgEGCCqGSM49AwEHA0IABM1w2SPO16LNmayy6VLc1EopVjSJalB9Ug88\n\
Ua+EnGOXR3E5RquuSwQ5F0DnsNLWIKKkxwUHzoNmDDqYbM17Gq+jUzBRMB0GA1Ud\n\
DgQWBBQAzfziFUwtdkncKL6rU73paEFbTDAfBgNVHSMEGDAWgBQAzfziFUwtdknc\n\
KL6rU73paEFbTDAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gAMEUCIQDy\n\
9gWB5wexrk4Peq/4ejH2l+lbEBGlwYL6KHadYpyHtwIgHR79z6CX8ER8s+DvoEvT\n\
egyzlPUEsPZHEqucTxE//sc=\n\
-----END CERTIFICATE-----\n\
";

    #[test]
    fn a_ca_file_is_read_at_start_and_given_to_the_http_client() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ca.pem");
        std::fs::write(&file, format!("{TEST_CA}{TEST_CA}")).unwrap();
        let config = crate::Config::from_toml_str(&format!(
            "server_url = \"https://sync.example.com\"\nca_file = {:?}\n\
             device_id = \"{}\"\ndevice_secret = \"s\"\naccept_unsigned = true\n",
            file.display().to_string(),
            uuid::Uuid::new_v4()
        ))
        .unwrap();
        let ca = config.ca_file.as_ref().expect("ca_file");
        assert_eq!(ca.certificates.len(), 2);
        assert!(format!("{config:?}").contains("ca.pem"));
        crate::client::Client::new(&config).expect("a client that trusts the CA");
    }

    #[test]
    fn a_ca_file_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = format!("{:#}", CaFile::load(&missing).unwrap_err());
        assert!(
            e.contains("cannot read ca_file") && e.contains("missing.pem"),
            "{e}"
        );

        let key = dir.path().join("key.pem");
        std::fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let e = format!("{:#}", CaFile::load(&key).unwrap_err());
        assert!(e.contains("holds no certificate"), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }
}
