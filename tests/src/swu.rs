//! SWUpdate's hawkBit client (`suricatta`, Debian's `swupdate` package) as
//! a device that tend-sync manages over the DDI API, and the signed `.swu`
//! images it installs.
//!
//! An image is what a user of SWUpdate builds: a `sw-description`
//! (libconfig) naming one file, its CMS signature (`openssl cms`, as
//! Debian's swupdate is built with `CONFIG_SIGALG_CMS`), and the file,
//! packed by `cpio -H crc`. The file is installed to an absolute path the
//! test chooses, so a test sees an update land without a real disk.
//!
//! [`Suricatta`] runs the real `swupdate -u …` with all its state in a
//! directory of its own: `TMPDIR` places its control and progress sockets
//! and its scratch files there, so several run at once. The bootloader
//! interface stays Debian's default, `none`, which keeps the update state
//! in memory: after an install suricatta reports `proceeding` ("All Chunks
//! Installed.") and waits for a restart, and [`Suricatta::reboot`] is that
//! restart, telling it with `-c` what the new boot found.
//!
//! `swupdate`, `openssl` and `cpio` come from Debian; deploy/local/test.sh
//! installs them. A test fails when one is missing; it never skips.

use std::fs::File;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, bail, ensure};

use crate::tree::sha256;

/// The board and revision every test device claims (`-H`); images list
/// the revision in `hardware-compatibility`.
pub const BOARD: &str = "tend-test-board";
pub const REVISION: &str = "1.0";

/// How many swupdate processes this test process runs at once. Each binds
/// an abstract Unix socket `NotifyServer`, `NotifyServer1`, … and gives up
/// after the eleventh, which is per network namespace, not per `TMPDIR`:
/// a twelfth concurrent swupdate crashes. Eight leaves room for a test
/// run's other processes.
const MAX_RUNNING: usize = 8;

/// Panics, saying how to get them, unless `swupdate`, `openssl` and `cpio`
/// are installed. Checked once per test process.
pub fn require_tools() {
    static MISSING: OnceLock<Vec<&'static str>> = OnceLock::new();
    let missing = MISSING.get_or_init(|| {
        [
            ("swupdate", "--version"),
            ("openssl", "version"),
            ("cpio", "--version"),
        ]
        .into_iter()
        .filter(|(tool, arg)| {
            !Command::new(tool)
                .arg(arg)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(|(tool, _)| tool)
        .collect()
    });
    assert!(
        missing.is_empty(),
        "{} not installed: the SWUpdate tests run the real suricatta client and build signed \
         .swu images with openssl and cpio. deploy/local/test.sh installs them \
         (apt-get install swupdate openssl cpio).",
        missing.join(", ")
    );
}

/// A self-signed certificate and its private key, the pair an image is
/// signed with and a device verifies against (`swupdate -k cert.pem`).
#[derive(Debug, Clone)]
pub struct SigningKey {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl SigningKey {
    /// Makes `NAME-cert.pem` and `NAME-key.pem` in `dir`. P-256 keys:
    /// made at once, where RSA keys take a noticeable share of a second.
    pub fn generate(dir: &Path, name: &str) -> anyhow::Result<SigningKey> {
        require_tools();
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let key = SigningKey {
            cert: dir.join(format!("{name}-cert.pem")),
            key: dir.join(format!("{name}-key.pem")),
        };
        run(Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec"])
            .args(["-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
            .args(["-days", "3650", "-subj"])
            .arg(format!("/CN=tend test signer {name}"))
            .arg("-keyout")
            .arg(&key.key)
            .arg("-out")
            .arg(&key.cert))
        .context("while making a signing certificate")?;
        Ok(key)
    }

    /// The detached DER CMS signature of `content`, as SWUpdate's
    /// documentation signs `sw-description`.
    fn sign(&self, content: &Path, signature: &Path) -> anyhow::Result<()> {
        run(Command::new("openssl")
            .args(["cms", "-sign", "-in"])
            .arg(content)
            .arg("-out")
            .arg(signature)
            .arg("-signer")
            .arg(&self.cert)
            .arg("-inkey")
            .arg(&self.key)
            .args(["-outform", "DER", "-nosmimecap", "-binary"]))
        .context("while signing sw-description")
    }
}

/// How an image's `sw-description` is signed.
#[derive(Debug, Clone, Copy)]
pub enum Signature<'a> {
    /// By the image's signer: a device trusting it installs the image.
    Valid,
    /// By another key: the signature is sound but nobody trusts its signer.
    OtherKey(&'a SigningKey),
    /// By the image's signer, then `sw-description` was changed (its
    /// version), so the signature no longer matches.
    AlteredAfterSigning,
}

/// What an image installs: `payload` written to `target`.
#[derive(Debug, Clone)]
pub struct Image<'a> {
    pub signer: &'a SigningKey,
    pub signature: Signature<'a>,
    /// `software.version` in `sw-description`.
    pub version: &'a str,
    /// Where the payload goes: an absolute path, in the test's own
    /// directory; missing directories are created.
    pub target: &'a Path,
    pub payload: &'a [u8],
}

impl Image<'_> {
    /// Builds the image as `dir/NAME.swu` and returns its path. Every
    /// file of the build stays in `dir/NAME/`, for failure messages.
    pub fn build(&self, dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
        require_tools();
        ensure!(
            self.target.is_absolute(),
            "the payload's target must be an absolute path, not {}",
            self.target.display()
        );
        let work = dir.join(name);
        std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        std::fs::write(work.join("payload"), self.payload).context("writing the payload")?;

        let description = work.join("sw-description");
        let signature = work.join("sw-description.sig");
        std::fs::write(&description, self.description(self.version))
            .context("writing sw-description")?;
        match self.signature {
            Signature::Valid => self.signer.sign(&description, &signature)?,
            Signature::OtherKey(other) => other.sign(&description, &signature)?,
            Signature::AlteredAfterSigning => {
                self.signer.sign(&description, &signature)?;
                let altered = format!("{}-altered", self.version);
                std::fs::write(&description, self.description(&altered))
                    .context("altering sw-description")?;
            }
        }

        // SWUpdate reads the archive as a stream: sw-description and its
        // signature must come first, in this order.
        let swu = dir.join(format!("{name}.swu"));
        let out = File::create(&swu).with_context(|| format!("creating {}", swu.display()))?;
        let mut cpio = Command::new("cpio")
            .args(["-o", "-H", "crc", "--quiet"])
            .current_dir(&work)
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(Stdio::piped())
            .spawn()
            .context("starting cpio")?;
        cpio.stdin
            .take()
            .expect("cpio's stdin")
            .write_all(b"sw-description\nsw-description.sig\npayload\n")
            .context("giving cpio its file list")?;
        let done = cpio.wait_with_output().context("waiting for cpio")?;
        ensure!(
            done.status.success(),
            "cpio failed ({}): {}",
            done.status,
            String::from_utf8_lossy(&done.stderr)
        );
        Ok(swu)
    }

    /// `sw-description` in libconfig syntax, one `files` entry handled by
    /// SWUpdate's `rawfile` handler.
    fn description(&self, version: &str) -> String {
        format!(
            "software =\n{{\n\
             \tversion = \"{version}\";\n\
             \tdescription = \"tend test image\";\n\
             \thardware-compatibility: [ \"{REVISION}\" ];\n\
             \tfiles: (\n\
             \t\t{{\n\
             \t\t\tfilename = \"payload\";\n\
             \t\t\tpath = \"{path}\";\n\
             \t\t\tsha256 = \"{sha}\";\n\
             \t\t\tproperties: {{ create-destination = \"true\"; }};\n\
             \t\t}}\n\
             \t);\n\
             }}\n",
            path = self.target.display(),
            sha = sha256(self.payload),
        )
    }
}

/// What `swupdate -c` (check only, nothing installed) said of an image.
#[derive(Debug)]
pub struct Check {
    pub accepted: bool,
    pub output: String,
}

/// Checks `image` as a device trusting `cert` would, installing nothing.
/// swupdate's exit code is not the verdict: a successful check sometimes
/// exits 1, when a helper process's exit reaches its handler first. Its
/// own report is.
pub fn check(image: &Path, cert: &Path, dir: &Path) -> anyhow::Result<Check> {
    require_tools();
    let tmp = state_dir(dir)?;
    let _slot = Slot::take();
    let out = swupdate_command(&tmp)
        .arg("-c")
        .arg("-k")
        .arg(cert)
        .arg("-H")
        .arg(format!("{BOARD}:{REVISION}"))
        .arg("-i")
        .arg(image)
        .stdin(Stdio::null())
        .output()
        .context("running swupdate -c")?;
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let succeeded = output.contains("SWUPDATE successful");
    let failed = output.contains("SWUPDATE failed");
    let accepted = match (succeeded, failed) {
        (true, false) => true,
        (false, true) if !out.status.success() => false,
        _ => bail!(
            "swupdate -c gave no clear verdict on {} ({}):\n{output}",
            image.display(),
            out.status
        ),
    };
    Ok(Check { accepted, output })
}

/// How a device proves itself to tend-sync.
#[derive(Debug, Clone)]
pub enum Auth {
    /// `Authorization: TargetToken …`: the device's own secret.
    TargetToken(String),
    /// `Authorization: GatewayToken …`: the tenant's gateway token.
    GatewayToken(String),
}

/// Where a [`Suricatta`] polls and what it trusts.
#[derive(Debug, Clone)]
pub struct Device {
    /// tend-sync's base URL, `http://127.0.0.1:PORT`, without a trailing
    /// slash: suricatta appends `/{tenant}/controller/v1/{id}`.
    pub url: String,
    pub tenant: String,
    pub controller_id: String,
    pub auth: Auth,
    /// The certificate images must be signed with.
    pub cert: PathBuf,
    /// Attributes sent with `PUT …/configData` when the base poll links
    /// `configData` (the `identify` section of swupdate's configuration);
    /// none: suricatta never sends configData.
    pub identify: Vec<(String, String)>,
}

/// What a restart tells suricatta about the boot it follows (`-c`): with
/// the `none` bootloader nothing else survives a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boot {
    /// No update was pending: nothing to report.
    Plain,
    /// The new software runs and is good: suricatta reports the open
    /// action closed with success ("Update Installed.").
    Succeeded,
    /// The new software failed: closed with failure ("Update Failed.").
    Failed,
    /// Installed, not yet tested: `proceeding` ("Update Installed,
    /// Testing Pending."); suricatta then forgets it and installs the
    /// action again if the server still offers it.
    Testing,
}

impl Boot {
    fn confirm(self) -> Option<&'static str> {
        match self {
            Boot::Plain => None,
            Boot::Testing => Some("1"),
            Boot::Succeeded => Some("2"),
            Boot::Failed => Some("3"),
        }
    }
}

/// A running `swupdate -u`: suricatta polling tend-sync, with its state
/// in `dir`. Killed on drop, with its helper processes.
pub struct Suricatta {
    pub device: Device,
    pub dir: PathBuf,
    child: Option<Child>,
    slot: Option<Slot>,
}

impl Suricatta {
    /// Starts suricatta for `device` with its files in `dir` (created):
    /// `swupdate.cfg`, `tmp/` (`TMPDIR`) and `suricatta.log`, which
    /// collects its output over restarts.
    pub fn spawn(dir: &Path, device: Device) -> anyhow::Result<Suricatta> {
        require_tools();
        state_dir(dir)?;
        let mut suricatta = Suricatta {
            device,
            dir: dir.to_path_buf(),
            child: None,
            slot: None,
        };
        suricatta.start(Boot::Plain)?;
        Ok(suricatta)
    }

    fn start(&mut self, boot: Boot) -> anyhow::Result<()> {
        assert!(self.child.is_none(), "suricatta is already running");
        let config = self.dir.join("swupdate.cfg");
        std::fs::write(&config, config_file(&self.device.identify))
            .context("writing swupdate.cfg")?;
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .context("opening suricatta.log")?;

        // suricatta's own options, one string that swupdate splits at
        // spaces; none of these values may contain one.
        let d = &self.device;
        let (token_flag, token) = match &d.auth {
            Auth::TargetToken(t) => ("-k", t),
            Auth::GatewayToken(t) => ("-g", t),
        };
        for value in [&d.url, &d.tenant, &d.controller_id, token] {
            ensure!(
                !value.is_empty() && !value.contains(char::is_whitespace),
                "suricatta cannot take {value:?}: its options are split at whitespace"
            );
        }
        // -p 1: the first poll's delay, until the server's
        // config.polling.sleep replaces it. -w 1: retry a broken download
        // after 1 s, not 5. -m 1: retry the report after a restart every
        // second, not every 10. -s 10: give up connecting after 10 s.
        let mut options = format!(
            "-t {} -u {} -i {} {token_flag} {token} -p 1 -w 1 -m 1 -s 10",
            d.tenant, d.url, d.controller_id
        );
        if let Some(c) = boot.confirm() {
            options.push_str(&format!(" -c {c}"));
        }

        let slot = self.slot.take().unwrap_or_else(Slot::take);
        let child = swupdate_command(&self.dir.join("tmp"))
            .arg("-f")
            .arg(&config)
            .arg("-k")
            .arg(&d.cert)
            .arg("-H")
            .arg(format!("{BOARD}:{REVISION}"))
            .arg("-u")
            .arg(options)
            // Its own group, so that a kill reaches its helper processes.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("the log handle")?)
            .stderr(log)
            .spawn()
            .context("starting swupdate")?;
        self.child = Some(child);
        self.slot = Some(slot);
        Ok(())
    }

    /// A restart of the device: suricatta is killed and started again,
    /// told what the new boot found (see [`Boot`]).
    pub fn reboot(&mut self, boot: Boot) -> anyhow::Result<()> {
        self.kill_process();
        self.start(boot)
    }

    /// SIGKILL to suricatta and its helper processes, and wait.
    pub fn kill(&mut self) {
        self.kill_process();
        self.slot = None;
    }

    fn kill_process(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-KILL", "--"])
                .arg(format!("-{}", child.id()))
                .stderr(Stdio::null())
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The running swupdate's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether swupdate has ended on its own (bad options, a crash).
    pub fn has_exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| !matches!(c.try_wait(), Ok(None)))
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("suricatta.log")
    }

    /// Everything swupdate printed, over every start.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for Suricatta {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- suricatta {} log ----\n{}",
                self.device.controller_id,
                self.log()
            );
        }
        self.kill();
    }
}

/// Creates `dir/tmp`, swupdate's `TMPDIR`, and returns it. Its sockets
/// are made there, and a Unix socket's path holds at most 107 bytes.
fn state_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    let tmp = dir.join("tmp");
    let longest = tmp.join("sockinstctrl");
    ensure!(
        longest.as_os_str().len() <= 107,
        "{} is too long for a Unix socket's path: give swupdate a shorter directory",
        longest.display()
    );
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    Ok(tmp)
}

/// `swupdate` with its state in `tmp` and an environment that keeps it
/// from talking to anything but tend: no systemd sockets, no proxies
/// (libcurl would use one for 127.0.0.1).
fn swupdate_command(tmp: &Path) -> Command {
    let mut c = Command::new("swupdate");
    c.env("TMPDIR", tmp);
    for var in [
        "NOTIFY_SOCKET",
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        "JOURNAL_STREAM",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
    ] {
        c.env_remove(var);
    }
    c
}

/// swupdate's configuration file: verbose logs, and the attributes for
/// configData. swupdate refuses a file without `globals`. Everything else
/// is on the command line.
fn config_file(identify: &[(String, String)]) -> String {
    let mut text = String::from("globals :\n{\n\tverbose = true;\n};\n");
    if !identify.is_empty() {
        let entries: Vec<String> = identify
            .iter()
            .map(|(k, v)| format!("\t{{ name = {}; value = {}; }}", quote(k), quote(v)))
            .collect();
        text.push_str(&format!("identify : (\n{}\n);\n", entries.join(",\n")));
    }
    text
}

/// A libconfig string.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Runs `command` to completion; its output becomes the error.
fn run(command: &mut Command) -> anyhow::Result<()> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {command:?}"))?;
    ensure!(
        out.status.success(),
        "{command:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// One of [`MAX_RUNNING`] places for a swupdate process, held while it
/// runs and given back on drop.
struct Slot;

static RUNNING: Mutex<usize> = Mutex::new(0);
static FREED: Condvar = Condvar::new();

impl Slot {
    /// Waits for a place; panics after two minutes, which only a test that
    /// leaks suricattas reaches.
    fn take() -> Slot {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        let mut running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
        while *running >= MAX_RUNNING {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            assert!(
                !left.is_zero(),
                "{MAX_RUNNING} swupdate processes have been running for two minutes; \
                 more at once would exhaust its notifier sockets"
            );
            running = FREED
                .wait_timeout(running, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *running += 1;
        Slot
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
        *running -= 1;
        FREED.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;

    use super::*;

    fn image<'a>(key: &'a SigningKey, signature: Signature<'a>, target: &'a Path) -> Image<'a> {
        Image {
            signer: key,
            signature,
            version: "1.0.0",
            target,
            payload: b"tend test payload\n",
        }
    }

    #[test]
    fn swupdate_accepts_a_signed_image_and_refuses_a_bad_signature() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let key = SigningKey::generate(dir.path(), "good").expect("the signing key");
        let other = SigningKey::generate(dir.path(), "other").expect("another key");
        let target = dir.path().join("installed").join("payload");

        let good = image(&key, Signature::Valid, &target)
            .build(dir.path(), "good")
            .expect("the good image");
        let foreign = image(&key, Signature::OtherKey(&other), &target)
            .build(dir.path(), "foreign")
            .expect("the image signed by another key");
        let altered = image(&key, Signature::AlteredAfterSigning, &target)
            .build(dir.path(), "altered")
            .expect("the image altered after signing");

        let check_dir = dir.path().join("check");
        let verdict = check(&good, &key.cert, &check_dir).expect("checking the good image");
        assert!(verdict.accepted, "refused:\n{}", verdict.output);
        for bad in [&foreign, &altered] {
            let verdict = check(bad, &key.cert, &check_dir).expect("checking a bad image");
            assert!(
                !verdict.accepted,
                "{} accepted:\n{}",
                bad.display(),
                verdict.output
            );
        }
        assert!(!target.exists(), "a check installed the payload");
    }

    #[test]
    fn suricatta_polls_the_base_resource_with_its_target_token() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let key = SigningKey::generate(dir.path(), "device").expect("the signing key");
        let server = TcpListener::bind("127.0.0.1:0").expect("a listener");
        let url = format!("http://{}", server.local_addr().expect("its address"));

        let mut suricatta = Suricatta::spawn(
            &dir.path().join("device"),
            Device {
                url,
                tenant: "acme".into(),
                controller_id: "kiosk-7".into(),
                auth: Auth::TargetToken("s3cret".into()),
                cert: key.cert.clone(),
                identify: Vec::new(),
            },
        )
        .expect("starting suricatta");

        server
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let conn = loop {
            match server.accept() {
                Ok((conn, _)) => break conn,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(
                        std::time::Instant::now() < deadline && !suricatta.has_exited(),
                        "suricatta sent no request within 20 s:\n{}",
                        suricatta.log()
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("accepting suricatta's connection: {e}"),
            }
        };
        conn.set_nonblocking(false).expect("a blocking connection");
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("a read timeout");
        let head: Vec<String> = BufReader::new(conn)
            .lines()
            .map_while(Result::ok)
            .take_while(|l| !l.is_empty())
            .collect();
        assert_eq!(
            head.first().map(String::as_str),
            Some("GET /acme/controller/v1/kiosk-7 HTTP/1.1"),
            "{head:?}"
        );
        assert!(
            head.iter()
                .any(|l| l == "Authorization: TargetToken s3cret"),
            "{head:?}"
        );
        assert!(!suricatta.has_exited(), "{}", suricatta.log());
    }
}
