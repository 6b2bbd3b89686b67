//! PostgreSQL, Redis and RabbitMQ servers of a test's own that speak TLS,
//! with a CA and a server certificate made for the test, and a tend
//! service started against them.
//!
//! Each server runs from the installed Debian packages, in the test's
//! temporary directory, on ports of its own ([`reserved_port`]), and stops
//! when dropped: the machine's shared servers, which other tests use at the
//! same time, are never touched. The certificates come from the `openssl`
//! command; the server certificate names `localhost` and `127.0.0.1`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::redis_server::reserved_port;
use crate::{bin, eventually};

/// Runs `cmd` to completion and panics with its output unless it succeeds.
fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {:?}: {e}", cmd.get_program()));
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The same, off the async runtime: initdb and the RabbitMQ tools take
/// seconds, and the servers of a test start side by side.
async fn run_blocking(mut cmd: Command, what: &'static str) -> String {
    tokio::task::spawn_blocking(move || run(&mut cmd, what))
        .await
        .expect("a blocking command")
}

/// A CA, and a server certificate it signed for `localhost` and
/// `127.0.0.1`, as PEM files.
#[derive(Debug, Clone)]
pub struct Certs {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Certs {
    /// Makes them in `dir` (created), with `openssl` (Debian package
    /// `openssl`). ECDSA P-256 keys: quick to make, and every one of the
    /// three servers and rustls take them.
    pub fn make(dir: &Path) -> Certs {
        std::fs::create_dir_all(dir).expect("the certificates' directory");
        let certs = Certs {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        };
        let ca_key = dir.join("ca.key");
        let csr = dir.join("server.csr");
        let ext = dir.join("server.ext");
        std::fs::write(
            &ext,
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n\
             basicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\n",
        )
        .expect("the extensions file");
        // Named after `dir`, so that two CAs of one test differ by name as
        // well as by key.
        let subject = format!(
            "/CN=tend test CA {}",
            dir.file_name().and_then(|n| n.to_str()).unwrap_or("")
        );
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        run(
            Command::new("openssl")
                .args(["req", "-x509"])
                .args(ec)
                .arg("-keyout")
                .arg(&ca_key)
                .arg("-out")
                .arg(&certs.ca)
                .args(["-days", "2", "-subj", &subject]),
            "openssl (the test CA; apt install openssl)",
        );
        run(
            Command::new("openssl")
                .arg("req")
                .args(ec)
                .arg("-keyout")
                .arg(&certs.key)
                .arg("-out")
                .arg(&csr)
                .args(["-subj", "/CN=localhost"]),
            "openssl (the server key)",
        );
        run(
            Command::new("openssl")
                .args(["x509", "-req", "-in"])
                .arg(&csr)
                .arg("-CA")
                .arg(&certs.ca)
                .arg("-CAkey")
                .arg(&ca_key)
                .args(["-CAcreateserial", "-days", "2", "-out"])
                .arg(&certs.cert)
                .arg("-extfile")
                .arg(&ext),
            "openssl (the server certificate)",
        );
        certs
    }
}

/// Whether this process runs as root: initdb refuses to, so PostgreSQL
/// then runs as the `postgres` user.
fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// `program` run as the `postgres` user when this process is root.
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

/// The newest installed PostgreSQL's server programs.
fn postgres_bin() -> PathBuf {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop()
        .map(|(_, bin)| bin)
        .expect("PostgreSQL's initdb and pg_ctl are required (apt install postgresql)")
}

/// A private PostgreSQL cluster: TCP on 127.0.0.1 (TLS only when made
/// with certificates, plain only without), and a Unix socket for the
/// test's own plain connections.
pub struct TlsPostgres {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
}

impl TlsPostgres {
    /// Creates the cluster in `dir` (initdb) and starts it. With `certs`,
    /// TCP clients must use TLS (`hostssl` in pg_hba.conf); without, the
    /// server has TLS off.
    pub async fn start(dir: PathBuf, certs: Option<&Certs>) -> TlsPostgres {
        std::fs::create_dir_all(&dir).expect("the cluster's directory");
        // The postgres user must reach its directory through the test's.
        if let Some(parent) = dir.parent() {
            std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o711))
                .expect("opening the test directory to the postgres user");
        }
        let pg = TlsPostgres {
            port: reserved_port(),
            dir,
            bin: postgres_bin(),
        };
        let data = pg.dir.join("data");
        let mut ssl = vec!["-c ssl=off".to_owned()];
        if let Some(certs) = certs {
            // The server reads its key as itself, and refuses a key that
            // others may read.
            std::fs::copy(&certs.cert, pg.dir.join("server.pem")).expect("copying the cert");
            std::fs::copy(&certs.key, pg.dir.join("server.key")).expect("copying the key");
            std::fs::set_permissions(
                pg.dir.join("server.key"),
                std::fs::Permissions::from_mode(0o600),
            )
            .expect("the key's mode");
            ssl = vec![
                "-c ssl=on".to_owned(),
                format!("-c ssl_cert_file={}", pg.dir.join("server.pem").display()),
                format!("-c ssl_key_file={}", pg.dir.join("server.key").display()),
            ];
        }
        if is_root() {
            run(
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(&pg.dir),
                "chown of the cluster's directory",
            );
        }
        let mut initdb = as_postgres(&pg.bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync"]);
        run_blocking(initdb, "initdb").await;
        let host = if certs.is_some() { "hostssl" } else { "host" };
        let hba = format!(
            "local all all trust\n{host} all all 127.0.0.1/32 trust\n{host} all all ::1/128 trust\n"
        );
        std::fs::write(data.join("pg_hba.conf"), hba).expect("pg_hba.conf");
        let options = format!(
            "-c port={} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} \
             -c fsync=off -c max_connections=40 {}",
            pg.port,
            pg.dir.display(),
            ssl.join(" ")
        );
        let mut start = as_postgres(&pg.bin.join("pg_ctl"));
        start
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(pg.dir.join("postgres.log"))
            .args(["-w", "-t", "30", "-o", &options, "start"]);
        run_blocking(start, "pg_ctl start").await;
        pg
    }

    /// The URL of database `postgres` at `host` (`localhost` or
    /// `127.0.0.1`), then `query` (`?sslmode=…`, or empty).
    pub fn url(&self, host: &str, query: &str) -> String {
        format!("postgres://postgres@{host}:{}/postgres{query}", self.port)
    }

    /// A plain connection of the test's own, over the Unix socket.
    pub async fn admin(&self) -> tokio_postgres::Client {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&self.dir)
            .port(self.port)
            .user("postgres")
            .dbname("postgres");
        let (client, conn) = config
            .connect(tokio_postgres::NoTls)
            .await
            .expect("the private PostgreSQL over its socket");
        tokio::spawn(conn);
        client
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A private redis-server with a TLS port and no plain one.
pub struct TlsRedis {
    pub port: u16,
    ca: PathBuf,
    child: Child,
}

impl TlsRedis {
    /// Starts it in `dir` and waits until it answers over TLS.
    pub async fn start(dir: PathBuf, certs: &Certs) -> TlsRedis {
        std::fs::create_dir_all(&dir).expect("the private Redis directory");
        let port = reserved_port();
        let log = std::fs::File::create(dir.join("redis.log")).expect("redis log");
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--protected-mode", "no"])
            .arg("--tls-cert-file")
            .arg(&certs.cert)
            .arg("--tls-key-file")
            .arg(&certs.key)
            .arg("--tls-ca-cert-file")
            .arg(&certs.ca)
            // Clients are not asked for certificates of their own.
            .args(["--tls-auth-clients", "no"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("redis-server is required (apt install redis-server): {e}"));
        let redis = TlsRedis {
            port,
            ca: certs.ca.clone(),
            child,
        };
        eventually(
            Duration::from_secs(20),
            "the private Redis to answer over TLS",
            || {
                let out = redis.cli(&["PING"]);
                async move { (out.trim() == "PONG").then_some(()) }
            },
        )
        .await;
        redis
    }

    /// `redis-cli --tls` with the test's CA: its output, empty on failure.
    pub fn cli(&self, args: &[&str]) -> String {
        Command::new("redis-cli")
            .args(["--tls", "--cacert"])
            .arg(&self.ca)
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// RabbitMQ's programs: the Debian package's real scripts, not the
/// /usr/sbin wrappers that switch to the `rabbitmq` user.
fn rabbitmq_program(name: &str) -> PathBuf {
    let debian = Path::new("/usr/lib/rabbitmq/bin").join(name);
    if debian.exists() {
        debian
    } else {
        PathBuf::from(name)
    }
}

/// A RabbitMQ node of the test's own with one listener, AMQP over TLS:
/// its own node name, Erlang port mapper, distribution port, data, logs,
/// configuration and (no) plugins, so nothing clashes with the machine's
/// node.
pub struct TlsRabbit {
    pub port: u16,
    node: String,
    /// The environment of the server and of its command-line tools.
    env: Vec<(String, String)>,
    epmd: Child,
    server: Child,
}

impl TlsRabbit {
    /// Starts it in `dir` and waits until it has booted.
    pub async fn start(dir: PathBuf, certs: &Certs) -> TlsRabbit {
        std::fs::create_dir_all(&dir).expect("the private RabbitMQ directory");
        let port = reserved_port();
        let epmd_port = reserved_port();
        let dist_port = reserved_port();
        let node = format!("tend-tls-{port}@localhost");
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!(
                "listeners.tcp = none\n\
                 listeners.ssl.default = 127.0.0.1:{port}\n\
                 ssl_options.cacertfile = {}\n\
                 ssl_options.certfile = {}\n\
                 ssl_options.keyfile = {}\n\
                 ssl_options.verify = verify_none\n\
                 ssl_options.fail_if_no_peer_cert = false\n",
                certs.ca.display(),
                certs.cert.display(),
                certs.key.display()
            ),
        )
        .expect("rabbitmq.conf");
        std::fs::write(dir.join("enabled_plugins"), "[].\n").expect("enabled_plugins");
        // Instead of /etc/rabbitmq/rabbitmq-env.conf, which names the
        // machine's node.
        std::fs::write(dir.join("rabbitmq-env.conf"), "").expect("rabbitmq-env.conf");
        let path = |name: &str| dir.join(name).display().to_string();
        let env: Vec<(String, String)> = [
            ("PATH", std::env::var("PATH").unwrap_or_default()),
            ("LC_ALL", "C.UTF-8".to_owned()),
            // The Erlang cookie is made in, and read from, $HOME.
            ("HOME", dir.display().to_string()),
            ("ERL_EPMD_PORT", epmd_port.to_string()),
            ("ERL_EPMD_ADDRESS", "127.0.0.1".to_owned()),
            ("RABBITMQ_CONF_ENV_FILE", path("rabbitmq-env.conf")),
            ("RABBITMQ_NODENAME", node.clone()),
            ("RABBITMQ_CONFIG_FILE", path("rabbitmq.conf")),
            ("RABBITMQ_ADVANCED_CONFIG_FILE", path("advanced.config")),
            ("RABBITMQ_ENABLED_PLUGINS_FILE", path("enabled_plugins")),
            ("RABBITMQ_MNESIA_BASE", path("mnesia")),
            ("RABBITMQ_LOG_BASE", path("log")),
            ("RABBITMQ_PID_FILE", path("rabbitmq.pid")),
            ("RABBITMQ_DIST_PORT", dist_port.to_string()),
            (
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}".to_owned(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        // A port mapper of the node's own, in the foreground, so that it
        // stops with the test.
        let epmd = Command::new("epmd")
            .args(["-port", &epmd_port.to_string(), "-address", "127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("epmd is required (apt install rabbitmq-server): {e}"));
        let log = std::fs::File::create(dir.join("rabbitmq-server.log")).expect("server log");
        let server = Command::new(rabbitmq_program("rabbitmq-server"))
            .env_clear()
            .envs(env.iter().cloned())
            .current_dir(&dir)
            // A process group of its own: the script, the Erlang VM and
            // its helpers stop together.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("rabbitmq-server is required (apt install rabbitmq-server): {e}")
            });
        let rabbit = TlsRabbit {
            port,
            node,
            env,
            epmd,
            server,
        };
        let started = Instant::now();
        loop {
            let mut wait = rabbit.command("rabbitmqctl");
            wait.args(["await_startup", "--timeout", "20"]);
            let booted = tokio::task::spawn_blocking(move || wait.output())
                .await
                .expect("rabbitmqctl")
                .is_ok_and(|o| o.status.success());
            if booted {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the private RabbitMQ did not boot within 60 s: see {}",
                dir.join("rabbitmq-server.log").display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        rabbit
    }

    /// One of RabbitMQ's command-line tools, aimed at this node.
    fn command(&self, tool: &str) -> Command {
        let mut cmd = Command::new(rabbitmq_program(tool));
        cmd.env_clear()
            .envs(self.env.iter().cloned())
            .args(["-q", "-n", &self.node])
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `tool args` against this node; its output.
    pub async fn tool(&self, tool: &str, args: &[&str]) -> String {
        let mut cmd = self.command(tool);
        cmd.args(args);
        run_blocking(cmd, "a RabbitMQ command-line tool").await
    }
}

impl Drop for TlsRabbit {
    fn drop(&mut self) {
        // SIGTERM to the node's process group: the VM stops within a few
        // seconds; SIGKILL if not.
        let group = format!("-{}", self.server.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut stopped = false;
        while !stopped && Instant::now() < deadline {
            stopped = matches!(self.server.try_wait(), Ok(Some(_)));
            std::thread::sleep(Duration::from_millis(100));
        }
        if !stopped {
            let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
            let _ = self.server.wait();
        }
        let _ = self.epmd.kill();
        let _ = self.epmd.wait();
    }
}

/// A tend service process started with an environment that is all the
/// test's (stores of its own), outside any [`crate::Stack`]; killed when
/// dropped.
pub struct Lone {
    child: Option<Child>,
    pub port: u16,
    pub log: PathBuf,
}

impl Lone {
    /// Starts `binary` (`tend-sync`…) with `env` plus `TEND_LISTEN` on a
    /// port of the kernel's, and waits until it logs its address.
    pub async fn start(binary: &str, env: &[(String, String)], log: PathBuf) -> Lone {
        let out = std::fs::File::create(&log).expect("the service's log");
        let child = Command::new(bin(binary))
            .env_clear()
            .envs(env.iter().cloned())
            .env("TEND_LISTEN", "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log handle"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        let mut lone = Lone {
            child: Some(child),
            port: 0,
            log,
        };
        let started = Instant::now();
        lone.port = loop {
            let text = lone.log_text();
            if let Some(port) = text.lines().find_map(|l| {
                let rest = l.split("listening on ").nth(1)?;
                let addr = rest.split_whitespace().next()?;
                addr.rsplit_once(':')?.1.parse::<u16>().ok()
            }) {
                break port;
            }
            if let Some(child) = lone.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("{binary} exited ({status}) before listening:\n{text}");
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{binary} did not log its address within 60 s:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        lone
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Lone {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts `binary` with `env`, expecting it to refuse to start: waits for
/// its exit (at most `timeout`, then kills it and panics with what it
/// wrote) and answers its exit code, what it wrote to `log`, and how long
/// it ran.
pub async fn start_to_exit(
    binary: &str,
    env: &[(String, String)],
    log: &Path,
    timeout: Duration,
) -> (Option<i32>, String, Duration) {
    let out = std::fs::File::create(log).expect("the service's log");
    let mut cmd = tokio::process::Command::new(bin(binary));
    cmd.env_clear()
        .envs(env.iter().cloned())
        .env("TEND_LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log handle"))
        .stderr(out)
        .kill_on_drop(true);
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
    let status = tokio::time::timeout(timeout, child.wait()).await;
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let Ok(status) = status else {
        panic!("{binary} was still running after {timeout:?}:\n{text}");
    };
    let status = status.expect("the service's exit");
    (status.code(), text, started.elapsed())
}
