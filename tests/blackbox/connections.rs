//! Connection exhaustion: more idle clients than the process has file descriptors must not make
//! the webhook or `/health` unreachable. The coordinator runs under `ulimit -n 1024` and 1,100
//! idle TCP connections are opened before a signed delivery and a health check. Also: which
//! clients count as loopback when listening on `::`.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use nix::sys::resource::{Resource, getrlimit, setrlimit};

use crate::helpers::{SECRET, binary, free_port, http_status};

const FIXTURE: &[u8] = include_bytes!("../fixtures/gitea/issue-assign-event.json");

/// More connections than the coordinator's descriptor limit below.
const IDLE_CLIENTS: usize = 1_100;

/// The coordinator under `ulimit -n 1024`, killed when dropped.
struct Limited {
    child: Child,
    port: u16,
    data: tempfile::TempDir,
}

impl Limited {
    fn start(extra: &[(&str, &str)]) -> Self {
        let data = tempfile::tempdir().unwrap();
        let port = free_port();
        // `unsafe_code` is forbidden, so the limit is set by a shell that then becomes the
        // coordinator (`exec`), not in a pre_exec hook.
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg("ulimit -n 1024 && exec \"$0\" \"$@\"")
            .arg(binary("mosaic-coordinator"))
            .arg("serve")
            .env_clear()
            .current_dir(data.path())
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("GITEA_WEBHOOK_SECRET", SECRET)
            .env(
                "MOSAIC_DATABASE_URL",
                format!("sqlite://{}", data.path().join("mosaic.db").display()),
            )
            .env("LOG_LEVEL", "info")
            .env("MOSAIC_LOG__FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(data.path().join("coordinator.log")).unwrap(),
            ));
        for (key, value) in extra {
            command.env(key, value);
        }
        let child = command.spawn().expect("start mosaic-coordinator under sh");
        let limited = Self { child, port, data };
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = limited.url("/health");
        while !http_status(&url).is_ok_and(|status| status == 200) {
            assert!(
                Instant::now() < deadline,
                "coordinator did not become healthy; log:\n{}",
                limited.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        limited
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.data.path().join("coordinator.log")).unwrap_or_default()
    }

    /// The descriptor limit the running coordinator really has.
    fn open_files_limit(&self) -> String {
        let limits = std::fs::read_to_string(
            Path::new("/proc")
                .join(self.child.id().to_string())
                .join("limits"),
        )
        .unwrap_or_default();
        limits
            .lines()
            .find(|line| line.starts_with("Max open files"))
            .unwrap_or("")
            .to_owned()
    }
}

impl Drop for Limited {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// This test process holds every idle connection, so it needs more descriptors than they are.
fn raise_own_open_files_limit() {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let wanted = 4_096.min(hard);
    if soft < wanted {
        setrlimit(Resource::RLIMIT_NOFILE, wanted, hard).unwrap();
    }
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    assert!(
        soft > IDLE_CLIENTS as u64 + 200,
        "the test needs more than {IDLE_CLIENTS} descriptors; the hard limit is {hard}"
    );
}

fn open_idle_connections(port: u16) -> Vec<TcpStream> {
    (0..IDLE_CLIENTS)
        .filter_map(|_| {
            TcpStream::connect_timeout(
                &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                Duration::from_secs(5),
            )
            .ok()
        })
        .collect()
}

fn sign(body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// A signed delivery and a health check, each on a new connection, answered within seconds.
async fn webhook_and_health_answer(app: &Limited) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let started = Instant::now();
    let response = client
        .post(app.url("/webhook/gitea"))
        .header("content-type", "application/json")
        .header("x-gitea-event", "issues")
        .header("x-gitea-event-type", "issue_assign")
        .header("x-gitea-delivery", "under-siege-1")
        .header("x-gitea-signature", sign(FIXTURE))
        .body(FIXTURE.to_vec())
        .send()
        .await
        .unwrap_or_else(|err| panic!("webhook unreachable: {err}; log:\n{}", tail(&app.log())));
    assert_eq!(response.status(), 200, "log:\n{}", tail(&app.log()));
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], "accepted", "{body}");
    let webhook_took = started.elapsed();

    let started = Instant::now();
    let response = client
        .get(app.url("/health"))
        .send()
        .await
        .unwrap_or_else(|err| panic!("/health unreachable: {err}; log:\n{}", tail(&app.log())));
    assert_eq!(response.status(), 200);
    let health_took = started.elapsed();
    eprintln!("webhook answered in {webhook_took:?}, /health in {health_took:?}");
    assert!(webhook_took < Duration::from_secs(5), "{webhook_took:?}");
    assert!(health_took < Duration::from_secs(5), "{health_took:?}");
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_beyond_the_descriptor_limit_do_not_lock_out_the_webhook_or_health() {
    raise_own_open_files_limit();
    let app = Limited::start(&[]);
    assert!(
        app.open_files_limit().contains("1024"),
        "{}",
        app.open_files_limit()
    );
    let port = app.port;
    let idle = tokio::task::spawn_blocking(move || open_idle_connections(port))
        .await
        .unwrap();
    assert!(idle.len() > 1_000, "opened {}", idle.len());

    webhook_and_health_answer(&app).await;
    let log = app.log();
    let cap_lines = log.matches("connection limit reached").count();
    assert!(
        (1..=3).contains(&cap_lines),
        "the limit is logged once per burst, not once per connection ({cap_lines} lines)"
    );
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_cap_above_the_descriptor_limit_accept_errors_free_idle_connections() {
    raise_own_open_files_limit();
    // The cap is never reached: the process runs out of descriptors first (EMFILE).
    let app = Limited::start(&[("MOSAIC_SERVER__MAX_CONNECTIONS", "5000")]);
    let port = app.port;
    let idle = tokio::task::spawn_blocking(move || open_idle_connections(port))
        .await
        .unwrap();
    assert!(idle.len() > 1_000, "opened {}", idle.len());

    webhook_and_health_answer(&app).await;
    let log = app.log();
    assert!(
        log.contains("cannot accept connections; backing off"),
        "log:\n{}",
        tail(&log)
    );
    assert!(
        log.matches("backing off").count() <= 3,
        "accept errors are logged once per burst"
    );
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_an_ipv6_socket_an_ipv4_loopback_client_is_loopback_and_exposure_is_warned() {
    // `::` takes IPv4 clients too; they appear as `::ffff:127.0.0.1`.
    let app = Limited::start(&[("HOST", "::")]);
    let response = reqwest::get(app.url("/api/v1/deliveries")).await.unwrap();
    assert_eq!(response.status(), 200, "log:\n{}", tail(&app.log()));
    let log = app.log();
    assert!(
        log.contains("listening beyond loopback without MOSAIC_API_TOKEN"),
        "log:\n{}",
        tail(&log)
    );

    let quiet = Limited::start(&[]);
    assert!(!quiet.log().contains("without MOSAIC_API_TOKEN"));
}
