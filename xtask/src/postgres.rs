//! A throwaway PostgreSQL server on loopback for the test suite.
//!
//! [`TestPostgres::start`] creates a cluster in a fresh temporary directory (trust
//! authentication, durability off: it only lives for one test run), starts `postgres` on
//! `127.0.0.1` at a free port, waits until it accepts connections and creates the
//! [`DATABASE`]. Stopping it, explicitly or when the value is dropped (a failed run, a panic),
//! shuts the server down and deletes the directory.
//!
//! PostgreSQL refuses to run as root, so when we are root the server and `initdb` run as the
//! `postgres` system user and the directory is handed over to it.

use std::{
    fs::{self, File},
    net::TcpListener,
    os::unix::{
        fs::{chown, PermissionsExt},
        process::CommandExt,
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context, Result};

use crate::output;

/// Where Debian puts the PostgreSQL 15 server binaries.
pub const DEFAULT_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";
/// Environment variable overriding [`DEFAULT_BIN_DIR`].
pub const BIN_DIR_VAR: &str = "STARKEEP_PG_BIN";
/// Environment variable through which the tests receive the server's URL.
pub const URL_VAR: &str = "STARKEEP_TEST_POSTGRES_URL";
/// The database created for the tests.
pub const DATABASE: &str = "starkeep_test";

/// The binaries the server needs.
const BINARIES: &[&str] = &[
    "initdb",
    "postgres",
    "pg_ctl",
    "pg_isready",
    "createdb",
    "psql",
];
/// How long the server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Start attempts: another process may take the free port between our probe and the bind.
const START_ATTEMPTS: usize = 3;

/// The directory holding the server binaries: `$STARKEEP_PG_BIN` or [`DEFAULT_BIN_DIR`].
pub fn bin_dir() -> PathBuf {
    std::env::var_os(BIN_DIR_VAR).map_or_else(|| PathBuf::from(DEFAULT_BIN_DIR), PathBuf::from)
}

/// The binaries missing from `bin` (empty when the server can be started).
pub fn missing_binaries(bin: &Path) -> Vec<&'static str> {
    BINARIES
        .iter()
        .copied()
        .filter(|name| !bin.join(name).is_file())
        .collect()
}

/// A running throwaway server; stopped and deleted on [`stop`](Self::stop) or drop.
#[derive(Debug)]
pub struct TestPostgres {
    bin: PathBuf,
    owner: Option<SystemUser>,
    data: PathBuf,
    port: u16,
    server: Option<Child>,
    // Declared last so that it is removed after `drop` has stopped the server.
    scratch: ScratchDir,
}

impl TestPostgres {
    /// Creates a cluster, starts the server on a free loopback port and creates [`DATABASE`].
    pub fn start(bin: &Path) -> Result<Self> {
        let owner = SystemUser::for_server()?;
        let scratch = ScratchDir::create(owner)?;
        let mut pg = TestPostgres {
            bin: bin.to_path_buf(),
            owner,
            data: scratch.path.join("data"),
            port: 0,
            server: None,
            scratch,
        };
        output(pg.as_owner("initdb").args([
            "--pgdata".as_ref(),
            pg.data.as_os_str(),
            "--username=postgres".as_ref(),
            "--auth=trust".as_ref(),
            "--encoding=UTF8".as_ref(),
            "--no-locale".as_ref(),
            "--no-sync".as_ref(),
        ]))
        .context("initdb failed")?;

        let mut attempt = 1;
        loop {
            match pg.launch() {
                Ok(()) => break,
                Err(e) if attempt < START_ATTEMPTS && pg.server.is_none() => {
                    eprintln!("xtask: PostgreSQL did not start ({e:#}); retrying on another port");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
        output(pg.client("createdb").arg(DATABASE)).context("createdb failed")?;
        Ok(pg)
    }

    /// `postgres://postgres@127.0.0.1:PORT/starkeep_test` (trust authentication).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{DATABASE}", self.port)
    }

    /// The loopback port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server and deletes its directory, reporting a failed shutdown.
    pub fn stop(mut self) -> Result<()> {
        self.shutdown()
    }

    /// Starts the server on a fresh port and waits until it accepts connections. On an early
    /// exit (the port was taken), `self.server` is left empty so the caller may retry.
    fn launch(&mut self) -> Result<()> {
        self.port = free_port()?;
        let log_path = self
            .scratch
            .path
            .join(format!("postgres-{}.log", self.port));
        let log = File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        let mut cmd = self.as_owner("postgres");
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-c", "listen_addresses=127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.scratch.path.display()
            ))
            // A throwaway cluster: durability buys nothing and costs test time.
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=200"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: a Ctrl-C at the terminal reaches the tests, not the
            // server, which we stop ourselves afterwards.
            .process_group(0);
        let child = cmd.spawn().context("cannot start postgres")?;
        self.server = Some(child);

        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let server = self.server.as_mut().expect("server was just started");
            if let Some(status) = server.try_wait()? {
                self.server = None;
                bail!(
                    "postgres exited ({status}) before accepting connections; its log:\n{}",
                    fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            if self.client("pg_isready").arg("--quiet").status()?.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "postgres did not accept connections within {READY_TIMEOUT:?}; its log:\n{}",
                    fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            // Polling is the only readiness signal postgres offers without extra tooling.
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Fast shutdown (disconnects clients, no checkpoint wait), then reaps the process.
    fn shutdown(&mut self) -> Result<()> {
        let Some(mut server) = self.server.take() else {
            return Ok(());
        };
        if server.try_wait()?.is_some() {
            return Ok(());
        }
        let stopped = output(self.as_owner("pg_ctl").args([
            "stop".as_ref(),
            "--pgdata".as_ref(),
            self.data.as_os_str(),
            "--mode=fast".as_ref(),
            "--wait".as_ref(),
            "--timeout=30".as_ref(),
        ]));
        if stopped.is_err() {
            // Last resort; the server's own backends exit when the postmaster dies.
            let _ = server.kill();
        }
        server.wait().context("cannot reap postgres")?;
        stopped.map(drop).context("pg_ctl stop failed")
    }

    /// A server binary run as the cluster's owner, from the scratch directory.
    fn as_owner(&self, binary: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(binary));
        cmd.current_dir(&self.scratch.path);
        if let Some(user) = self.owner {
            cmd.uid(user.uid).gid(user.gid);
        }
        cmd
    }

    /// A client binary connecting over TCP as the `postgres` role.
    fn client(&self, binary: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(binary));
        cmd.args(["-h", "127.0.0.1", "-U", "postgres", "-p"])
            .arg(self.port.to_string());
        cmd
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            eprintln!("xtask: warning: stopping PostgreSQL: {e:#}");
        }
    }
}

/// The unprivileged user that owns the cluster when we run as root.
#[derive(Debug, Clone, Copy)]
struct SystemUser {
    uid: u32,
    gid: u32,
}

impl SystemUser {
    /// `None` when we are not root (the server then runs as us); else the `postgres` user.
    fn for_server() -> Result<Option<Self>> {
        let id = |args: &[&str]| -> Result<u32> {
            let text = output(Command::new("id").args(args))?;
            text.trim()
                .parse()
                .with_context(|| format!("unexpected `id` output {text:?}"))
        };
        if id(&["-u"])? != 0 {
            return Ok(None);
        }
        let user = SystemUser {
            uid: id(&["-u", "postgres"]).context("running as root needs a `postgres` user")?,
            gid: id(&["-g", "postgres"])?,
        };
        Ok(Some(user))
    }
}

/// A fresh private directory, removed with everything in it on drop.
#[derive(Debug)]
struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    fn create(owner: Option<SystemUser>) -> Result<Self> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        let path = std::env::temp_dir().join(format!(
            "starkeep-xtask-pg-{}-{nanos:09}",
            std::process::id()
        ));
        fs::create_dir(&path).with_context(|| format!("cannot create {}", path.display()))?;
        let dir = ScratchDir { path };
        fs::set_permissions(&dir.path, fs::Permissions::from_mode(0o700))?;
        if let Some(user) = owner {
            chown(&dir.path, Some(user.uid), Some(user.gid))
                .with_context(|| format!("cannot hand {} to postgres", dir.path.display()))?;
        }
        Ok(dir)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.path) {
            eprintln!("xtask: warning: cannot remove {}: {e}", self.path.display());
        }
    }
}

/// A loopback port that was free a moment ago (the listener is released at once).
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).context("cannot probe for a free port")?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole lifecycle: a server that takes queries, then nothing left behind once the
    /// guard is dropped (the path a failed or interrupted test run takes).
    #[test]
    fn starts_serves_and_cleans_up_when_dropped() {
        let bin = bin_dir();
        if !missing_binaries(&bin).is_empty() {
            assert!(
                !crate::in_ci(),
                "PostgreSQL binaries missing from {} in CI",
                bin.display()
            );
            eprintln!("skipped: no PostgreSQL binaries in {}", bin.display());
            return;
        }
        let pg = TestPostgres::start(&bin).unwrap();
        let answer = output(
            Command::new(bin.join("psql"))
                .args(["--no-psqlrc", "--tuples-only", "--no-align", "--command"])
                .arg("select current_database()")
                .arg(pg.url()),
        )
        .unwrap();
        assert_eq!(answer.trim(), DATABASE);
        let (dir, port) = (pg.scratch.path.clone(), pg.port());
        drop(pg);
        assert!(!dir.exists(), "{} was left behind", dir.display());
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "something still listens on {port}"
        );
    }
}
