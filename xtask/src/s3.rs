//! A throwaway S3-compatible server on loopback for the test suite.
//!
//! The server is [`s3s-fs`](https://crates.io/crates/s3s-fs) (a bucket is a directory under
//! its root). [`install`] builds it once from crates.io into the project-local tools
//! directory (`.tools/`, gitignored); later runs find the binary there. [`TestS3::start`]
//! runs it on `127.0.0.1` at a port the kernel picks (read back from its log), with static
//! credentials and a fresh temporary root holding the [`BUCKET`]. Stopping it, explicitly or
//! when the value is dropped (a failed run, a panic), kills the server and deletes the root.

use std::{
    fs::{self, File},
    io::{BufRead, BufReader, Write},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context, Result};

use crate::{cargo, describe};

/// The s3s-fs release the tests run against.
pub const VERSION: &str = "0.14.1";
/// Environment variable through which the tests receive the endpoint URL.
pub const ENDPOINT_VAR: &str = "STARKEEP_TEST_S3_ENDPOINT";
/// Environment variable through which the tests receive the bucket name.
pub const BUCKET_VAR: &str = "STARKEEP_TEST_S3_BUCKET";
/// Environment variable through which the tests receive the access key id.
pub const ACCESS_KEY_VAR: &str = "STARKEEP_TEST_S3_ACCESS_KEY";
/// Environment variable through which the tests receive the secret key.
pub const SECRET_KEY_VAR: &str = "STARKEEP_TEST_S3_SECRET_KEY";
/// The bucket created for the tests.
pub const BUCKET: &str = "starkeep-test";

const ACCESS_KEY: &str = "starkeep-test-access";
const SECRET_KEY: &str = "starkeep-test-secret";
/// How long the server may take to start listening.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The line s3s-fs logs once it listens, followed by its address.
const READY_LINE: &str = "server is running at ";

/// The project-local tools directory (`<workspace>/.tools`, gitignored).
pub fn tools_dir(workspace: &Path) -> PathBuf {
    workspace.join(".tools")
}

/// Where [`install`] puts the server binary.
pub fn binary(workspace: &Path) -> PathBuf {
    tools_dir(workspace).join("bin").join("s3s-fs")
}

/// Installs s3s-fs [`VERSION`] into the tools directory unless that version is already there,
/// and returns the binary.
pub fn install(workspace: &Path) -> Result<PathBuf> {
    let bin = binary(workspace);
    if installed_version(&bin).is_some_and(|v| v.contains(VERSION)) {
        return Ok(bin);
    }
    let root = tools_dir(workspace);
    eprintln!(
        "xtask: installing s3s-fs {VERSION} into {} (once; it takes a few minutes)",
        root.display()
    );
    let mut cmd = cargo();
    cmd.args(["install", "s3s-fs", "--version", VERSION, "--locked"])
        .args(["--features", "binary", "--root"])
        .arg(&root)
        // Build in cargo's own throwaway directory, never in the workspace's target
        // directory (whose lock the test build needs next).
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {}", describe(&cmd)))?;
    if !status.success() {
        bail!("{} failed ({status})", describe(&cmd));
    }
    if installed_version(&bin).is_none() {
        bail!("{} did not produce {}", describe(&cmd), bin.display());
    }
    Ok(bin)
}

fn installed_version(bin: &Path) -> Option<String> {
    let out = Command::new(bin).arg("--version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A running throwaway server; stopped and its root deleted on [`stop`](Self::stop) or drop.
#[derive(Debug)]
pub struct TestS3 {
    server: Option<Child>,
    endpoint: String,
    log: PathBuf,
    // Declared last so that it is removed after `drop` has stopped the server.
    scratch: ScratchDir,
}

impl TestS3 {
    /// Starts `binary` on a loopback port with a fresh root holding [`BUCKET`].
    pub fn start(binary: &Path) -> Result<Self> {
        let scratch = ScratchDir::create()?;
        let root = scratch.path.join("root");
        fs::create_dir_all(root.join(BUCKET))
            .with_context(|| format!("cannot create the bucket under {}", root.display()))?;
        let log = scratch.path.join("s3s-fs.log");
        let log_file =
            File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;

        let mut cmd = Command::new(binary);
        cmd.args(["--host", "127.0.0.1", "--port", "0"])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(&root)
            // The address is only logged at level info; no colours in a pipe anyway.
            .env("RUST_LOG", "s3s_fs=info,warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file.try_clone()?)
            // Its own process group: a Ctrl-C at the terminal reaches the tests, not the
            // server, which we stop ourselves afterwards.
            .process_group(0);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut s3 = TestS3 {
            server: Some(child),
            endpoint: String::new(),
            log,
            scratch,
        };

        // Read the log until the address shows, then keep copying it to the log file (the
        // server would block on a full pipe otherwise).
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut log_file = log_file;
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(log_file, "{line}");
                if let Some(at) = line.find(READY_LINE) {
                    let address = line[at + READY_LINE.len()..].trim().to_string();
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(address);
                    }
                }
            }
        });
        match rx.recv_timeout(READY_TIMEOUT) {
            Ok(endpoint) if endpoint.starts_with("http://127.0.0.1:") => {
                s3.endpoint = endpoint;
                Ok(s3)
            }
            Ok(other) => bail!("s3s-fs listens at an unexpected address {other:?}"),
            Err(_) => {
                let status = s3.server.as_mut().and_then(|c| c.try_wait().ok().flatten());
                bail!(
                    "s3s-fs did not report its address within {READY_TIMEOUT:?} (exit status: \
                     {status:?}); its log:\n{}",
                    fs::read_to_string(&s3.log).unwrap_or_default()
                )
            }
        }
    }

    /// The endpoint URL, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The server's temporary directory (its root and its log), deleted when it stops.
    pub fn dir(&self) -> &Path {
        &self.scratch.path
    }

    /// The variables the tests read, with their values.
    pub fn env(&self) -> [(&'static str, String); 4] {
        [
            (ENDPOINT_VAR, self.endpoint.clone()),
            (BUCKET_VAR, BUCKET.to_string()),
            (ACCESS_KEY_VAR, ACCESS_KEY.to_string()),
            (SECRET_KEY_VAR, SECRET_KEY.to_string()),
        ]
    }

    /// Stops the server and deletes its root.
    pub fn stop(mut self) -> Result<()> {
        self.shutdown()
    }

    /// Kills the server (it keeps nothing worth a graceful shutdown) and reaps it.
    fn shutdown(&mut self) -> Result<()> {
        let Some(mut server) = self.server.take() else {
            return Ok(());
        };
        if server.try_wait()?.is_none() {
            server.kill().context("cannot stop s3s-fs")?;
        }
        server.wait().context("cannot reap s3s-fs")?;
        Ok(())
    }
}

impl Drop for TestS3 {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            eprintln!("xtask: warning: stopping s3s-fs: {e:#}");
        }
    }
}

/// A fresh private directory, removed with everything in it on drop.
#[derive(Debug)]
struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    fn create() -> Result<Self> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        let path = std::env::temp_dir().join(format!(
            "starkeep-xtask-s3-{}-{nanos:09}",
            std::process::id()
        ));
        fs::create_dir(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(ScratchDir { path })
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.path) {
            eprintln!("xtask: warning: cannot remove {}: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        net::TcpStream,
    };

    use super::*;

    /// The whole lifecycle: a server that answers S3 requests for the bucket, then nothing
    /// left behind once the guard is dropped (the path a failed or interrupted run takes).
    #[test]
    fn starts_serves_and_cleans_up_when_dropped() {
        let bin = binary(&crate::workspace_root());
        if installed_version(&bin).is_none() {
            assert!(
                !crate::in_ci(),
                "s3s-fs missing from {} in CI (`cargo xtask test` installs it)",
                bin.display()
            );
            eprintln!("skipped: no s3s-fs in {}", bin.display());
            return;
        }
        let s3 = TestS3::start(&bin).unwrap();
        let port: u16 = s3
            .endpoint()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("endpoint ends with a port");
        // An unsigned request is refused with an S3 error: the server is up and speaks S3.
        let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            conn,
            "GET /{BUCKET}/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 "), "{answer}");
        assert!(answer.contains("<Code>"), "an S3 error body: {answer}");

        let dir = s3.dir().to_path_buf();
        drop(s3);
        assert!(!dir.exists(), "{} was left behind", dir.display());
        assert!(
            TcpStream::connect(("127.0.0.1", port)).is_err(),
            "something still listens on {port}"
        );
    }
}
