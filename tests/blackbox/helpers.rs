//! Starting the coordinator as a child process and talking to it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub const SECRET: &str = "IsWishesWereHorsesWedAllBeEatingSteak!";

/// Path of a binary built by `cargo test --workspace` (it sits beside this test's `deps/` dir).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build it first (`cargo build -p {name}`), or run `cargo test --workspace`",
        path.display()
    );
    path
}

pub fn coordinator() -> Command {
    let mut command = Command::new(binary("mosaic-coordinator"));
    // Only what each test sets reaches the child: no stray MOSAIC_* from the caller's shell.
    command.env_clear();
    if let Ok(path) = std::env::var("PATH") {
        command.env("PATH", path);
    }
    command
}

/// A free loopback port (bound, then released for the child to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

/// A coordinator running as a child process with its own data directory.
pub struct Running {
    pub child: Child,
    pub port: u16,
    pub data: tempfile::TempDir,
    pub client: reqwest::Client,
}

impl Running {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts `serve` on a free port with a fresh store; `extra` adds environment variables.
    pub fn start_with(extra: &[(&str, &str)]) -> Self {
        let data = tempfile::tempdir().expect("tempdir");
        Self::start_in(data, extra)
    }

    /// Starts on an existing data directory (to restart after a crash).
    pub fn start_in(data: tempfile::TempDir, extra: &[(&str, &str)]) -> Self {
        Self::spawn(data, None, extra)
    }

    /// Starts with `--config FILE` (usually a file inside `data`, so a restart finds it again).
    pub fn start_configured(
        data: tempfile::TempDir,
        config: &Path,
        extra: &[(&str, &str)],
    ) -> Self {
        Self::spawn(data, Some(config), extra)
    }

    fn spawn(data: tempfile::TempDir, config: Option<&Path>, extra: &[(&str, &str)]) -> Self {
        let port = free_port();
        let mut command = coordinator();
        command.arg("serve");
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        command
            .current_dir(data.path())
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("GITEA_WEBHOOK_SECRET", SECRET)
            .env(
                "MOSAIC_DATABASE_URL",
                format!("sqlite://{}", data.path().join("mosaic.db").display()),
            )
            .env("LOG_LEVEL", "debug")
            .env("MOSAIC_LOG__FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(data.path().join("coordinator.log")).expect("log file"),
            ));
        for (key, value) in extra {
            command.env(key, value);
        }
        let child = command.spawn().expect("start mosaic-coordinator");
        let running = Self {
            child,
            port,
            data,
            client: reqwest::Client::new(),
        };
        running.wait_until_healthy();
        running
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// `GET path` as JSON (whatever the status).
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        self.client
            .get(self.url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// `GET path` as text (whatever the status), e.g. `/metrics`.
    pub async fn get_text(&self, path: &str) -> String {
        self.client
            .get(self.url(path))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.path().join("coordinator.log")).unwrap_or_default()
    }

    fn wait_until_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = self.url("/health");
        while Instant::now() < deadline {
            if http_status(&url).is_ok_and(|status| status == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("coordinator did not become healthy; log:\n{}", self.log());
    }

    pub fn signal(&self, signal: Signal) {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("pid fits"));
        kill(pid, signal).expect("send signal");
    }

    /// Waits for the process to end, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "coordinator did not exit; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process hard and hands back its data directory for a restart.
    #[allow(dead_code)] // used by the crash tests
    pub fn crash(mut self) -> tempfile::TempDir {
        self.signal(Signal::SIGKILL);
        let _ = self.wait_exit(Duration::from_secs(10));
        std::mem::replace(&mut self.data, tempfile::tempdir().expect("tempdir"))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs the binary to completion with the given arguments and environment.
pub fn run(args: &[&str], env: &[(&str, &str)], dir: &Path) -> Output {
    let mut command = coordinator();
    command.args(args).current_dir(dir);
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("run mosaic-coordinator")
}

/// Status code of a GET, over a plain TCP request so polling needs no async runtime.
pub fn http_status(url: &str) -> std::io::Result<u16> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
    let mut stream = std::net::TcpStream::connect(authority)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0_u8; 64];
    let read = stream.read(&mut head)?;
    let line = String::from_utf8_lossy(&head[..read]);
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP answer"))
}

/// `text` as a TOML basic string (JSON's string escapes are valid TOML).
pub fn toml_string(text: &str) -> String {
    serde_json::to_string(text).unwrap()
}
