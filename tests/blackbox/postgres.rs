//! The coordinator on PostgreSQL (`MOSAIC_DATABASE_URL=postgres://…`): a delivery acknowledged
//! is on the database and survives a restart; the password is never shown.
//!
//! Needs the test database of `.ci/run` (`MOSAIC_TEST_POSTGRES_URL`, default
//! `postgres://mosaic:mosaic@127.0.0.1:5432/mosaic_test`). Without it the test says how to start
//! it and passes, except under `CI=true`, where it fails.

use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};

use crate::helpers::{Running, SECRET, run};

const FIXTURE: &[u8] = include_bytes!("../fixtures/gitea/issue-assign-event.json");

fn database_url() -> String {
    std::env::var("MOSAIC_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://mosaic:mosaic@127.0.0.1:5432/mosaic_test".to_owned())
}

/// Whether PostgreSQL answers on the test URL's host and port.
fn reachable(url: &str) -> bool {
    let Some(after_at) = url.split('@').nth(1) else {
        return false;
    };
    let host_port = after_at.split('/').next().unwrap_or_default();
    std::net::TcpStream::connect_timeout(
        &match host_port.parse() {
            Ok(address) => address,
            Err(_) => return false,
        },
        Duration::from_secs(2),
    )
    .is_ok()
}

fn skip_without_postgres(url: &str) -> bool {
    if reachable(url) {
        return false;
    }
    let how = "PostgreSQL is not reachable: start it as .ci/run does (pg_ctlcluster 15 main start, role and database mosaic/mosaic_test)";
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{how}");
    eprintln!("skipped: {how}");
    true
}

/// Drops the test's schema at the end (best effort, with the psql client PostgreSQL ships).
struct DropSchema {
    url: String,
    schema: String,
}

impl Drop for DropSchema {
    fn drop(&mut self) {
        let _ = std::process::Command::new("psql")
            .arg(&self.url)
            .arg("-qc")
            .arg(format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

fn sign(body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

async fn delivery_rows(app: &Running) -> serde_json::Value {
    app.get_json("/api/v1/deliveries").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_recorded_on_postgres_and_survive_a_restart() {
    let url = database_url();
    if skip_without_postgres(&url) {
        return;
    }
    // A schema of its own: tests run in parallel on one database.
    let schema = format!("blackbox_{}", uuid::Uuid::new_v4().simple());
    let _drop = DropSchema {
        url: url.clone(),
        schema: schema.clone(),
    };
    let env = [
        ("MOSAIC_DATABASE_URL", url.clone()),
        ("MOSAIC_STORE__SCHEMA", schema.clone()),
    ];
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    // check-config shows the URL without its password.
    let dir = tempfile::tempdir().unwrap();
    let mut shown_env = env_refs.clone();
    shown_env.push(("GITEA_WEBHOOK_SECRET", SECRET));
    let output = run(&["check-config"], &shown_env, dir.path());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("postgres://mosaic:[redacted]@"), "{stdout}");
    assert!(!stdout.contains("mosaic:mosaic@"), "{stdout}");

    let owned: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    let start = move |data: Option<tempfile::TempDir>| {
        let owned = owned.clone();
        move || {
            let refs: Vec<(&str, &str)> = owned
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            match data {
                Some(data) => Running::start_in(data, &refs),
                None => Running::start_with(&refs),
            }
        }
    };
    let app = tokio::task::spawn_blocking(start(None)).await.unwrap();
    deliver(&app, "pg-1").await;
    let rows = delivery_rows(&app).await;
    assert_eq!(rows["deliveries"][0]["delivery_id"], "pg-1", "{rows}");
    let health = app.get_json("/health").await;
    assert_eq!(health["components"]["store"]["status"], "up", "{health}");

    // Killed hard and restarted on the same database: the delivery is there, and a repeat is a
    // duplicate.
    let data = app.crash();
    let app = tokio::task::spawn_blocking(start(Some(data)))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let rows = loop {
        let rows = delivery_rows(&app).await;
        if rows["deliveries"][0]["delivery_id"] == "pg-1" || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(rows["deliveries"][0]["delivery_id"], "pg-1", "{rows}");
    let answer = deliver(&app, "pg-1").await;
    assert_eq!(answer["status"], "duplicate", "{answer}");
}

/// Sends the fixture delivery under `id`; the coordinator's answer.
async fn deliver(app: &Running, id: &str) -> serde_json::Value {
    let response = app
        .client
        .post(app.url("/webhook/gitea"))
        .header("content-type", "application/json")
        .header("x-gitea-event", "issues")
        .header("x-gitea-event-type", "issue_assign")
        .header("x-gitea-delivery", id)
        .header("x-gitea-signature", sign(FIXTURE))
        .body(FIXTURE.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "delivery {id}");
    response.json().await.unwrap()
}

/// Waits until `app` says `detail` for its leadership.
async fn wait_leadership(app: &Running, detail: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let health = app.get_json("/health").await;
        let said = health["components"]["leadership"]["detail"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if said.starts_with(detail) || Instant::now() > deadline {
            return health;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `app`'s /health says `starts` of the coordinators alive, with the one on
/// `leader_port` leading; what it says then.
async fn wait_peers(app: &Running, starts: &str, leader_port: u16) -> String {
    let leader = format!(":{leader_port} (leader)");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let health = app.get_json("/health").await;
        let said = health["components"]["peers"]["detail"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let says = said.starts_with(starts) && said.contains(&leader);
        if says || Instant::now() > deadline {
            assert!(says, "{health}");
            return said;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the delivery's row says `processed` (read through `app`'s API).
async fn wait_processed(app: &Running, id: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let rows = delivery_rows(app).await;
        let processed = rows["deliveries"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|row| row["delivery_id"] == id && row["status"] == "processed");
        if processed || Instant::now() > deadline {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two coordinators on one database: one leads (decides), the other stands by and only records;
/// a delivery to the standby is handled by the leader; the leader SIGKILLed, the standby leads
/// within seconds; its hold on the database ended (`pg_terminate_backend`), it stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_two_coordinators_leads_and_the_other_takes_over_when_it_dies() {
    let url = database_url();
    if skip_without_postgres(&url) {
        return;
    }
    let schema = format!("blackbox_{}", uuid::Uuid::new_v4().simple());
    let _drop = DropSchema {
        url: url.clone(),
        schema: schema.clone(),
    };
    let env = vec![
        ("MOSAIC_DATABASE_URL".to_owned(), url.clone()),
        ("MOSAIC_STORE__SCHEMA".to_owned(), schema.clone()),
        ("MOSAIC_INBOX__IDLE_POLL_MS".to_owned(), "100".to_owned()),
    ];
    let start = move || {
        let env = env.clone();
        move || {
            let refs: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            Running::start_with(&refs)
        }
    };
    let first = tokio::task::spawn_blocking(start()).await.unwrap();
    let health_first = wait_leadership(&first, "leader").await;
    assert_eq!(
        health_first["components"]["leadership"]["detail"], "leader",
        "{health_first}"
    );
    let second = tokio::task::spawn_blocking(start()).await.unwrap();
    let health_second = wait_leadership(&second, "standby").await;
    assert!(
        health_second["components"]["leadership"]["detail"]
            .as_str()
            .unwrap_or_default()
            .starts_with("standby"),
        "{health_second}"
    );
    // A standby is healthy: it records what it is sent.
    assert_eq!(health_second["status"], "healthy", "{health_second}");
    // Each knows both are alive, and which one leads.
    let peers = wait_peers(&second, "2 alive", first.port).await;
    assert!(
        !peers.contains(&format!(":{} (leader)", second.port)),
        "{peers}"
    );
    // /metrics is refreshed every 5 s.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let metrics = second.get_text("/metrics").await;
        if metrics
            .lines()
            .any(|line| line == "mosaic_coordinators_alive 2")
        {
            break;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Sent to the standby, handled by the leader.
    deliver(&second, "ha-1").await;
    let rows = wait_processed(&second, "ha-1").await;
    assert!(rows.to_string().contains("processed"), "{rows}");
    // The standby answers the API from the shared store too.
    let rotations = second.get_json("/api/v1/rotations").await;
    assert!(rotations["rotations"].is_array(), "{rotations}");
    let event: serde_json::Value = serde_json::from_slice(FIXTURE).unwrap();
    let path = format!(
        "/api/v1/issues/{}/{}",
        event["repository"]["full_name"].as_str().unwrap(),
        event["issue"]["number"]
    );
    let issue = second.client.get(second.url(&path)).send().await.unwrap();
    assert_eq!(issue.status(), 200, "GET {path}");
    let issue: serde_json::Value = issue.json().await.unwrap();
    assert!(
        issue["snapshot"].is_object() || issue["detail"].is_object(),
        "{issue}"
    );

    // The leader dies: the standby leads within a few seconds and handles the next delivery.
    let killed = Instant::now();
    let _ = first.crash();
    let taken = wait_leadership(&second, "leader").await;
    assert_eq!(
        taken["components"]["leadership"]["detail"], "leader",
        "{taken}"
    );
    let failover = killed.elapsed();
    assert!(failover < Duration::from_secs(10), "took {failover:?}");
    // The dead one stops being counted once its last beat is older than 5 s.
    wait_peers(&second, "1 alive", second.port).await;
    // docs/BENCHMARKS.md quotes this line.
    eprintln!("failover: leader SIGKILL to the standby leading in {failover:?}");
    deliver(&second, "ha-2").await;
    let rows = wait_processed(&second, "ha-2").await;
    assert!(
        rows["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|row| row["delivery_id"] == "ha-2" && row["status"] == "processed"),
        "{rows}"
    );

    // The database ends the leader's hold: it stops deciding and exits with an error.
    let terminated = std::process::Command::new("psql")
        .arg(&url)
        .arg("-qAtc")
        .arg(format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'mosaic leader {schema}'"
        ))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&terminated.stdout).trim(),
        "1",
        "{}",
        String::from_utf8_lossy(&terminated.stderr)
    );
    let mut second = second;
    let (status, second) = tokio::task::spawn_blocking(move || {
        let status = second.wait_exit(Duration::from_secs(15));
        (status, second)
    })
    .await
    .unwrap();
    assert!(!status.success(), "{status:?}");
    assert!(
        second.log().contains("leadership is lost"),
        "{}",
        second.log()
    );
}

/// One query's rows as `psql -At` prints them (`|` between columns), in `schema`.
fn sql(url: &str, schema: &str, query: &str) -> String {
    let output = std::process::Command::new("psql")
        .arg(url)
        .arg("-qAtc")
        .arg(format!("SET search_path = {schema}; {query}"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{query}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Waits until `query` prints something other than nothing (15 s at most).
async fn sql_until(url: &str, schema: &str, query: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = sql(url, schema, query);
        if !rows.is_empty() {
            return rows;
        }
        assert!(Instant::now() < deadline, "nothing came of: {query}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Coordinators to be started on one fresh schema, with a mock Gitea holding the repository
/// `<owner>/app` they work on; every agent profile runs the sample agent for `steps` steps of
/// 100 ms, reporting its use as it goes. The schema is dropped with it.
struct SharedSchema {
    url: String,
    schema: String,
    gitea: mosaic_gitea::mock::MockGitea,
    repo: mosaic_domain::RepoName,
    config: String,
    env: Vec<(String, String)>,
    _drop: DropSchema,
}

impl SharedSchema {
    /// `None` when there is no PostgreSQL (the test says so and passes).
    async fn new(owner: &str, steps: u32, lease_ms: &str) -> Option<Self> {
        use mosaic_gitea::mock::MockGitea;

        let url = database_url();
        if skip_without_postgres(&url) {
            return None;
        }
        let schema = format!("blackbox_{}", uuid::Uuid::new_v4().simple());
        let _drop = DropSchema {
            url: url.clone(),
            schema: schema.clone(),
        };
        let (gitea, gitea_url) = MockGitea::start().await.unwrap();
        let repo: mosaic_domain::RepoName = format!("{owner}/app").parse().unwrap();
        gitea.create_repo(&repo);
        // Reconciliation looks at an empty repository of its own: only deliveries count.
        gitea.create_repo(&format!("{owner}/elsewhere").parse().unwrap());
        let program = crate::helpers::binary("mosaic-coordinator");
        let mut config = format!(
            "[gitea]\nurl = {}\ntoken = {}\nreconcile_interval_secs = 3600\nrepositories = [\"{owner}/elsewhere\"]\n\n\
             [inbox]\nidle_poll_ms = 100\n\n[engine]\ndispatch_poll_ms = 100\n\n\
             [engine.monitor]\npoll_interval_ms = 200\n\n[runner]\nwork_root = \"work\"\nkill_grace_secs = 1\n",
            crate::helpers::toml_string(gitea_url.as_str()),
            crate::helpers::toml_string(MockGitea::BOT_TOKEN),
        );
        for name in ["opus", "sonnet", "haiku", "glm", "minimax"] {
            config.push_str(&format!(
                "\n[runner.agents.{name}]\nprogram = {}\nargs = [\"sample-agent\", \"--steps\", \"{steps}\", \"--tokens-per-step\", \"10\", \"--start-tokens\", \"5000\", \"--step-delay-ms\", \"100\"]\ninput = \"json_lines\"\n",
                crate::helpers::toml_string(&program.display().to_string()),
            ));
        }
        let env = vec![
            ("MOSAIC_DATABASE_URL".to_owned(), url.clone()),
            ("MOSAIC_STORE__SCHEMA".to_owned(), schema.clone()),
            (
                "MOSAIC_STORE__LEADER_LEASE_MS".to_owned(),
                lease_ms.to_owned(),
            ),
        ];
        Some(Self {
            url,
            schema,
            gitea,
            repo,
            config,
            env,
            _drop,
        })
    }

    /// Starts one more coordinator on the schema (in a data folder of its own).
    async fn start(&self) -> Running {
        let (config, env) = (self.config.clone(), self.env.clone());
        tokio::task::spawn_blocking(move || {
            let data = tempfile::tempdir().unwrap();
            let path = data.path().join("mosaic.toml");
            std::fs::write(&path, config).unwrap();
            let refs: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            Running::start_configured(data, &path, &refs)
        })
        .await
        .unwrap()
    }

    /// A new issue of the repository, assigned to the bot, small and easy.
    fn issue(&self, title: &str) -> mosaic_domain::IssueRef {
        self.gitea.create_issue(
            &self.repo,
            mosaic_gitea::mock::NewIssue::titled(title)
                .body(
                    "## Context Estimate\n- Total estimated: 20,000 tokens\n\n## Difficulty\nlow\n",
                )
                .by("alice")
                .assigned_to(mosaic_gitea::mock::MockGitea::BOT_LOGIN),
        )
    }

    /// Sends the issue's signed "assigned" delivery to `to` under `id`; it must be accepted.
    async fn assign(&self, to: &Running, issue: &mosaic_domain::IssueRef, id: &str) {
        let body = serde_json::to_vec(&self.gitea.issue_event(issue, "assigned", "alice").unwrap())
            .unwrap();
        let response = to
            .client
            .post(to.url("/webhook/gitea"))
            .header("content-type", "application/json")
            .header("x-gitea-event", "issues")
            .header("x-gitea-event-type", "issue_assign")
            .header("x-gitea-delivery", id)
            .header("x-gitea-signature", sign(&body))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "delivery {id}");
    }

    async fn sql_until(&self, query: &str) -> String {
        sql_until(&self.url, &self.schema, query).await
    }
}

/// Two coordinators on one schema with a mock Gitea, every agent profile the sample agent
/// working slowly (about 30 s); an issue assigned and the leader's own worker running its agent,
/// then a standby started. `None` when there is no PostgreSQL (the test says so and passes).
struct LeaderRunningAnAgent {
    url: String,
    schema: String,
    first: Running,
    second: Running,
    /// The leader's session: its id, its agent's process id and its epoch.
    session: String,
    pid: i32,
    epoch: i64,
    // Kept until the end of the test: the schema outlives both coordinators.
    _shared: SharedSchema,
}

async fn leader_running_an_agent(lease_ms: &str) -> Option<LeaderRunningAnAgent> {
    let shared = SharedSchema::new("ha", 300, lease_ms).await?;
    let first = shared.start().await;
    assert_eq!(
        wait_leadership(&first, "leader").await["components"]["leadership"]["detail"],
        "leader"
    );

    // Assigned while the leader is the only coordinator: its own worker claims the session and
    // runs the agent (with a standby already there, either could).
    let issue = shared.issue("Add caching");
    shared.assign(&first, &issue, "pause-1").await;
    let open = "SELECT id || '|' || pid || '|' || epoch FROM sessions WHERE ended_at IS NULL AND pid IS NOT NULL";
    let first_session = shared.sql_until(open).await;
    let second = shared.start().await;
    wait_leadership(&second, "standby").await;
    let mut parts = first_session.split('|');
    let (session, pid, epoch): (String, i32, i64) = (
        parts.next().unwrap().to_owned(),
        parts.next().unwrap().parse().unwrap(),
        parts.next().unwrap().parse().unwrap(),
    );
    assert!(crate::agent_processes::is_running(pid));
    Some(LeaderRunningAnAgent {
        url: shared.url.clone(),
        schema: shared.schema.clone(),
        first,
        second,
        session,
        pid,
        epoch,
        _shared: shared,
    })
}

/// Fencing against a paused leader: the leader is SIGSTOPped while its agent works; after the
/// lease the standby leads, ends the paused leader's session and runs the issue again; the
/// paused leader, continued, writes nothing and stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_paused_past_its_lease_writes_nothing_when_it_continues() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    let Some(pair) = leader_running_an_agent("2000").await else {
        return;
    };
    // Moved out of `pair`, which keeps the mock Gitea and the schema until after they drop.
    let LeaderRunningAnAgent {
        url,
        schema,
        first,
        second,
        session,
        pid,
        epoch,
        ..
    } = pair;

    // Paused past the lease: the standby leads in a newer epoch.
    let paused = Instant::now();
    kill(Pid::from_raw(first.child.id() as i32), Signal::SIGSTOP).unwrap();
    let taken = wait_leadership(&second, "leader").await;
    assert_eq!(
        taken["components"]["leadership"]["detail"], "leader",
        "{taken}"
    );
    let took = paused.elapsed();
    // The lease runs from the paused leader's last check (each second), not from the pause.
    assert!(
        took >= Duration::from_millis(900),
        "led after {took:?}, within the lease"
    );
    eprintln!("failover: leader SIGSTOP to the standby leading in {took:?}");
    // The new leader ends the paused leader's session and its agent, and runs the issue again.
    let ended = sql_until(
        &url,
        &schema,
        &format!("SELECT outcome FROM sessions WHERE id = '{session}' AND ended_at IS NOT NULL"),
    )
    .await;
    let rerun = sql_until(
        &url,
        &schema,
        &format!("SELECT epoch FROM sessions WHERE ended_at IS NULL AND id <> '{session}'"),
    )
    .await;
    assert_eq!(rerun, (epoch + 1).to_string(), "run again in the new epoch");
    let deadline = Instant::now() + Duration::from_secs(10);
    while crate::agent_processes::is_running(pid) {
        assert!(
            Instant::now() < deadline,
            "the paused leader's agent {pid} still runs"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let written = |table: &str| {
        sql(
            &url,
            &schema,
            &format!("SELECT count(*) FROM {table} WHERE epoch = {epoch}"),
        )
    };
    let before = (
        written("issue_transitions"),
        written("outbox"),
        written("sessions"),
    );

    // Continued: it writes nothing in its old epoch and stops.
    kill(Pid::from_raw(first.child.id() as i32), Signal::SIGCONT).unwrap();
    let mut first = first;
    let (status, first) = tokio::task::spawn_blocking(move || {
        let status = first.wait_exit(Duration::from_secs(15));
        (status, first)
    })
    .await
    .unwrap();
    assert!(!status.success(), "{status:?}");
    assert!(
        first.log().contains("leadership is lost"),
        "{}",
        first.log()
    );
    assert_eq!(
        (
            written("issue_transitions"),
            written("outbox"),
            written("sessions")
        ),
        before,
        "rows written in the paused leader's epoch after it continued"
    );
    assert_eq!(
        sql(
            &url,
            &schema,
            &format!("SELECT outcome FROM sessions WHERE id = '{session}'")
        ),
        ended,
        "the paused leader changed its old session's record"
    );
    // The new leader still leads and its session runs on.
    assert_eq!(
        second.get_json("/health").await["components"]["leadership"]["detail"],
        "leader"
    );
}

/// Failover to the next dispatch: the leader is SIGKILLed while its agent works; the standby
/// leads, ends the dead leader's orphaned session and its agent, and dispatches the issue again.
/// Measured: from the SIGKILL to the new leader's session for the issue being open in the
/// database (docs/BENCHMARKS.md quotes the `failover to dispatch` line).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_while_its_agent_works_is_followed_by_the_next_dispatch_within_seconds() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    // The default lease: a killed leader's connection closes at once, so the lease plays no part.
    let Some(pair) = leader_running_an_agent("5000").await else {
        return;
    };
    // Moved out of `pair`, which keeps the mock Gitea and the schema until after they drop.
    let LeaderRunningAnAgent {
        url,
        schema,
        first,
        second,
        session,
        pid,
        epoch,
        ..
    } = pair;

    // The standby answers the queue and the sessions from the shared store, saying it does.
    let queue = second.get_json("/api/v1/queue").await;
    assert_eq!(queue["queue"][0]["state"], "in_progress", "{queue}");
    assert_eq!(queue["total"], 1, "{queue}");
    assert!(queue["partial"].is_string(), "{queue}");
    // What only the leader knows is left out, not made up.
    assert!(queue["queue"][0].get("blockers").is_none(), "{queue}");
    let sessions = second.get_json("/api/v1/sessions").await;
    assert_eq!(sessions["sessions"][0]["session_id"], session, "{sessions}");
    assert_eq!(sessions["sessions"][0]["process_id"], pid, "{sessions}");
    assert!(sessions["partial"].is_string(), "{sessions}");
    assert!(
        sessions["sessions"][0].get("compactions").is_none(),
        "{sessions}"
    );

    let killed_at = std::time::SystemTime::now();
    let killed = Instant::now();
    let _ = first.crash();
    // Polled often (each poll is a psql run of a few ms): the figure is this poll's resolution
    // coarser than the truth; the session's own start time below is exact to the clock.
    let next = format!(
        "SELECT id || '|' || epoch || '|' || extract(epoch FROM started_at) FROM sessions \
         WHERE ended_at IS NULL AND id <> '{session}'"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let rerun = loop {
        let rows = sql(&url, &schema, &next);
        if !rows.is_empty() {
            break rows;
        }
        assert!(
            Instant::now() < deadline,
            "no new session 30 s after the leader's SIGKILL"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let seen = killed.elapsed();
    let mut parts = rerun.split('|');
    let (rerun_session, rerun_epoch, started): (String, i64, f64) = (
        parts.next().unwrap().to_owned(),
        parts.next().unwrap().parse().unwrap(),
        parts.next().unwrap().parse().unwrap(),
    );
    let since_kill = started
        - killed_at
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
    eprintln!(
        "failover to dispatch: {seen:?} from the leader's SIGKILL to the new leader's session seen open \
         ({since_kill:.3} s to its recorded start)"
    );
    assert!(seen < Duration::from_secs(15), "took {seen:?}");
    assert_eq!(
        rerun_epoch,
        epoch + 1,
        "dispatched in the new leader's epoch"
    );

    // The dead leader's session is ended and its agent is gone (before the issue ran again).
    let ended = sql(
        &url,
        &schema,
        &format!("SELECT ended_at IS NOT NULL FROM sessions WHERE id = '{session}'"),
    );
    assert_eq!(ended, "t", "the dead leader's session is still open");
    assert!(
        !crate::agent_processes::is_running(pid),
        "the dead leader's agent {pid} still runs"
    );
    assert_eq!(
        second.get_json("/health").await["components"]["leadership"]["detail"],
        "leader"
    );

    // Ends the new session's agent with the test (it would work on for half a minute).
    let agent = sql_until(
        &url,
        &schema,
        &format!("SELECT pid FROM sessions WHERE id = '{rerun_session}' AND pid IS NOT NULL"),
    )
    .await;
    // Claimed by the new leader's worker and its agent started (its pid recorded).
    eprintln!(
        "failover to a running agent: {:?} from the leader's SIGKILL",
        killed.elapsed()
    );
    drop(second);
    if let Ok(agent) = agent.parse::<i32>() {
        // Its own process group, led by the agent.
        let _ = kill(Pid::from_raw(-agent), Signal::SIGKILL);
    }
}

/// Three coordinators on one database (issue "PostgreSQL and several coordinators"): deliveries
/// spread over them, the leader SIGKILLed mid-stream. Every acknowledged delivery is handled
/// once, another coordinator leads within the lease plus one renewal, every issue ends done with
/// one finished comment, and at no moment does an issue have two open sessions in the database
/// or two sessions' agent processes alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_coordinators_lose_their_leader_mid_stream_and_handle_every_delivery_once() {
    let Some(shared) = SharedSchema::new("trio", 10, "2000").await else {
        return;
    };
    let (url, schema, gitea, repo) = (
        shared.url.as_str(),
        shared.schema.as_str(),
        &shared.gitea,
        &shared.repo,
    );
    let leader = shared.start().await;
    wait_leadership(&leader, "leader").await;
    let mut standbys = Vec::new();
    for _ in 0..2 {
        let standby = shared.start().await;
        wait_leadership(&standby, "standby").await;
        standbys.push(standby);
    }

    // Watch the invariant all along: in the processes and in the database.
    let processes = crate::agent_processes::Sampler::start(&repo.to_string());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let database = {
        let (url, schema, stop) = (
            url.to_owned(),
            schema.to_owned(),
            std::sync::Arc::clone(&stop),
        );
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let twice = sql(
                    &url,
                    &schema,
                    "SELECT repository || '#' || number FROM sessions WHERE ended_at IS NULL \
                     GROUP BY repository, number HAVING count(*) > 1",
                );
                if !twice.is_empty() {
                    seen.push(twice);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            seen
        })
    };

    // Nine issues assigned, the deliveries spread over the three; the leader dies after four.
    let issues: Vec<_> = (0..9).map(|n| shared.issue(&format!("Task {n}"))).collect();
    let mut leader = Some(leader);
    let mut acknowledged = Vec::new();
    let mut killed_at = None;
    for (n, issue) in issues.iter().enumerate() {
        if n == 4 {
            let _ = leader.take().unwrap().crash();
            killed_at = Some(Instant::now());
        }
        let alive: Vec<&Running> = leader.iter().chain(standbys.iter()).collect();
        let id = format!("trio-{n}");
        shared.assign(alive[n % alive.len()], issue, &id).await;
        acknowledged.push(id);
        tokio::time::sleep(Duration::from_millis(150)).await;
    }

    // Another leads within the lease plus one renewal (a killed client's lock goes at once).
    let deadline = Instant::now() + Duration::from_secs(10);
    let new_leader = loop {
        let mut leading = None;
        for (i, standby) in standbys.iter().enumerate() {
            let health = standby.get_json("/health").await;
            if health["components"]["leadership"]["detail"] == "leader" {
                leading = Some(i);
            }
        }
        if let Some(i) = leading {
            break i;
        }
        assert!(Instant::now() < deadline, "nobody took over");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let took = killed_at.unwrap().elapsed();
    assert!(took < Duration::from_secs(4), "led after {took:?}");
    eprintln!("three coordinators: leader SIGKILL to a new leader in {took:?}");

    // Every issue ends done, each with its one finished comment.
    let done = "SELECT count(*) FROM issues WHERE state IN ('completed', 'no_changes') \
                HAVING count(*) = 9";
    let deadline = Instant::now() + Duration::from_secs(60);
    while sql(url, schema, done).is_empty() {
        assert!(
            Instant::now() < deadline,
            "not all done: {}",
            sql(
                url,
                schema,
                "SELECT number, state FROM issues ORDER BY number"
            )
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let finished = |issue| {
        gitea
            .comments(issue)
            .iter()
            .filter(|c| {
                c.body.contains(" finished this issue") || c.body.contains("without a change")
            })
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while issues.iter().any(|issue| finished(issue) == 0) {
        assert!(Instant::now() < deadline, "finished comments missing");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let anything still queued arrive: a second comment would show now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for issue in &issues {
        assert_eq!(finished(issue), 1, "{issue}: {:#?}", gitea.comments(issue));
    }
    // Each acknowledged delivery: one row, handled.
    for id in &acknowledged {
        assert_eq!(
            sql(
                url,
                schema,
                &format!("SELECT status FROM inbox WHERE delivery_id = '{id}'")
            ),
            "processed",
            "{id}"
        );
    }
    // The leader died with sessions running: they were ended as interrupted and run again.
    let outcomes = sql(
        url,
        schema,
        "SELECT outcome || ':' || count(*) FROM sessions GROUP BY outcome ORDER BY outcome",
    );
    eprintln!("three coordinators: sessions by outcome: {outcomes:?}");
    assert!(outcomes.contains("interrupted:"), "{outcomes}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let twice = database.join().unwrap();
    assert!(
        twice.is_empty(),
        "two open sessions of one issue: {twice:?}"
    );
    assert!(
        processes.violations().is_empty(),
        "{:#?}",
        processes.violations()
    );
    assert_eq!(
        standbys[new_leader].get_json("/health").await["components"]["leadership"]["detail"],
        "leader"
    );
}

/// Agent capacity beyond one machine: three coordinators on one database, each with
/// `max_concurrent_agents = 2`, run six issues at once — two sessions claimed by each, six
/// agents' processes alive together — and every issue ends done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_coordinators_with_two_agents_each_run_six_issues_at_once() {
    // Sessions of about 15 s: long enough for all six to overlap, and for a standby's
    // /metrics (refreshed every 5 s) to show them.
    let Some(mut shared) = SharedSchema::new("capacity", 150, "5000").await else {
        return;
    };
    shared.config = shared
        .config
        .replace("[engine]\n", "[engine]\nmax_concurrent_agents = 2\n");
    let leader = shared.start().await;
    wait_leadership(&leader, "leader").await;
    let mut coordinators = vec![leader];
    for _ in 0..2 {
        let standby = shared.start().await;
        wait_leadership(&standby, "standby").await;
        coordinators.push(standby);
    }
    // The leader counts the capacity its peers say they have (and /health says it).
    let peers = wait_peers(&coordinators[0], "3 alive", coordinators[0].port).await;
    assert!(peers.ends_with("; 6 agent sessions at once"), "{peers}");
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Watches that no issue has two sessions' agents at once (and ends them all if the test fails).
    let sampler = crate::agent_processes::Sampler::start(&shared.repo.to_string());
    let issues: Vec<_> = (0..6).map(|n| shared.issue(&format!("Job {n}"))).collect();
    let assigned = Instant::now();
    for (n, issue) in issues.iter().enumerate() {
        shared
            .assign(&coordinators[n % 3], issue, &format!("capacity-{n}"))
            .await;
    }

    // Sampled until six run at once, in the database and in the processes.
    let repo = shared.repo.to_string();
    let open_claims = "SELECT claimant_id || ' ' || count(*) FROM session_requests \
                       WHERE ended_at IS NULL AND cancelled_at IS NULL AND claimant_id IS NOT NULL \
                       GROUP BY claimant_id ORDER BY claimant_id";
    let deadline = Instant::now() + Duration::from_secs(30);
    let processes = loop {
        let open: usize = sql(
            &shared.url,
            &shared.schema,
            "SELECT count(*) FROM sessions WHERE ended_at IS NULL",
        )
        .parse()
        .unwrap();
        let processes = crate::agent_processes::live_sessions(&repo);
        if open == 6 && processes.len() == 6 {
            break processes;
        }
        assert!(
            Instant::now() < deadline,
            "never six at once: {open} open sessions, {} agents alive, claims {:?}",
            processes.len(),
            sql(&shared.url, &shared.schema, open_claims)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Each agent's process starts after its claim committed.
    let claims = sql(&shared.url, &shared.schema, open_claims);
    eprintln!(
        "capacity: six sessions at once {:?} after the first assignment, claims per coordinator: {claims:?}",
        assigned.elapsed()
    );
    let per_claimant: Vec<&str> = claims
        .lines()
        .map(|line| line.rsplit(' ').next().unwrap())
        .collect();
    assert_eq!(per_claimant, ["2", "2", "2"], "{claims}");
    // The agents' processes are the sessions the database lists as open.
    let open_ids: std::collections::BTreeSet<String> = sql(
        &shared.url,
        &shared.schema,
        "SELECT id FROM sessions WHERE ended_at IS NULL",
    )
    .lines()
    .map(str::to_owned)
    .collect();
    assert_eq!(open_ids, processes);
    // Any coordinator's /metrics shows the whole system: a standby reads it from the store.
    let standby = &coordinators[2];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = standby.get_text("/metrics").await;
        let running: u64 = metrics
            .lines()
            .filter(|line| line.starts_with("mosaic_running_sessions{"))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        if metrics.contains("mosaic_queue_depth{state=\"in_progress\"} 6") && running == 6 {
            break;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let done = "SELECT count(*) FROM issues WHERE state IN ('completed', 'no_changes') \
                HAVING count(*) = 6";
    let deadline = Instant::now() + Duration::from_secs(60);
    while sql(&shared.url, &shared.schema, done).is_empty() {
        assert!(
            Instant::now() < deadline,
            "not all done: {}",
            sql(
                &shared.url,
                &shared.schema,
                "SELECT number, state FROM issues ORDER BY number"
            )
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Each coordinator ran two of them, and every session ended as it should.
    let outcomes = sql(
        &shared.url,
        &shared.schema,
        "SELECT outcome || ':' || count(*) FROM sessions GROUP BY outcome",
    );
    assert_eq!(outcomes, "succeeded:6");
    assert!(
        sampler.violations().is_empty(),
        "{:#?}",
        sampler.violations()
    );
    // What the claimants' reports cost the store (docs/BENCHMARKS.md): row updates of the
    // requests per second of session (PostgreSQL's statistics, flushed about every second).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let updates: f64 = sql(
        &shared.url,
        &shared.schema,
        &format!(
            "SELECT n_tup_upd FROM pg_stat_user_tables WHERE schemaname = '{}' AND relname = 'session_requests'",
            shared.schema
        ),
    )
    .parse()
    .unwrap_or(0.0);
    let session_seconds: f64 = sql(
        &shared.url,
        &shared.schema,
        "SELECT sum(extract(epoch FROM ended_at - started_at)) FROM sessions",
    )
    .parse()
    .unwrap_or(1.0);
    eprintln!(
        "capacity: {updates} report writes over {session_seconds:.1} session-seconds: {:.1} per session per second",
        updates / session_seconds.max(1.0)
    );
}

/// The sample agent's subject for its mid-way commit (`--checkpoint-at-step`).
const CHECKPOINT_SUBJECT: &str = "Sample agent: checkpoint";

/// Coordinators on one schema working on a real repository: `<owner>/app` is a bare repository
/// served over git's smart HTTP, named by the mock Gitea as its `clone_url`. Each coordinator
/// runs one agent at a time in worktrees of its own data folder; every agent works `steps`
/// steps of 100 ms, commits `CHECKPOINT.md` at step 5 (unless the worktree already has it)
/// and, on success, writes `NOTES.md` and commits it.
struct SharedRepository {
    shared: SharedSchema,
    remote: std::path::PathBuf,
    _git: mosaic_testkit::GitHttpServer,
    _projects: tempfile::TempDir,
}

impl SharedRepository {
    async fn new(owner: &str, steps: u32, lease_ms: &str) -> Option<Self> {
        let mut shared = SharedSchema::new(owner, steps, lease_ms).await?;
        let projects = tempfile::tempdir().unwrap();
        let remote =
            mosaic_testkit::repo::create_bare_repository(projects.path(), owner, "app", "main")
                .unwrap();
        // Every update of a branch is kept: what each push did can be read afterwards.
        mosaic_testkit::repo::git(&remote, &["config", "core.logAllRefUpdates", "always"]).unwrap();
        let git = mosaic_testkit::GitHttpServer::start(
            projects.path(),
            mosaic_gitea::mock::MockGitea::BOT_TOKEN,
        )
        .await
        .unwrap();
        shared
            .gitea
            .set_clone_url(&shared.repo, &git.clone_url(owner, "app"));
        let agent_args = "\"--step-delay-ms\", \"100\"]";
        assert!(shared.config.contains(agent_args), "{}", shared.config);
        shared.config = shared
            .config
            .replace(
                agent_args,
                "\"--step-delay-ms\", \"100\", \"--checkpoint-at-step\", \"5\", \
                 \"--write-file\", \"NOTES.md\", \"--commit\"]",
            )
            .replace("[engine]\n", "[engine]\nmax_concurrent_agents = 1\n");
        // Relative to the coordinator's working directory, its own data folder.
        shared
            .config
            .push_str("\n[workspace]\nroot = \"workspaces\"\nmin_free_bytes = 1024\n");
        Some(Self {
            shared,
            remote,
            _git: git,
            _projects: projects,
        })
    }

    /// The remote's branch of `issue` (`mosaic/<number>-…`) and its commit, once pushed.
    fn branch(&self, issue: &mosaic_domain::IssueRef) -> Option<(String, String)> {
        let prefix = format!("mosaic/{}-", issue.number);
        mosaic_testkit::repo::git(
            &self.remote,
            &[
                "for-each-ref",
                "--format=%(refname:lstrip=2) %(objectname)",
                "refs/heads/mosaic/",
            ],
        )
        .unwrap()
        .lines()
        .filter_map(|line| line.split_once(' '))
        .find(|(name, _)| name.starts_with(&prefix))
        .map(|(name, id)| (name.to_owned(), id.to_owned()))
    }

    /// `git args` in the bare repository (its output, trimmed).
    fn git(&self, args: &[&str]) -> String {
        mosaic_testkit::repo::git(&self.remote, args)
            .unwrap()
            .trim()
            .to_owned()
    }

    /// The commits `branch` has pointed to on the remote, oldest first.
    fn branch_history(&self, branch: &str) -> Vec<String> {
        let mut history: Vec<String> = self
            .git(&[
                "reflog",
                "show",
                "--format=%H",
                &format!("refs/heads/{branch}"),
            ])
            .lines()
            .map(str::to_owned)
            .collect();
        history.reverse();
        history
    }

    fn is_ancestor(&self, ancestor: &str, of: &str) -> bool {
        mosaic_testkit::repo::git(&self.remote, &["merge-base", "--is-ancestor", ancestor, of])
            .is_ok()
    }

    /// Waits until `issue` is in `state` (60 s at most).
    async fn wait_state(&self, issue: &mosaic_domain::IssueRef, state: &str) {
        let query = format!(
            "SELECT state FROM issues WHERE repository = '{}' AND number = {}",
            issue.repo, issue.number
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let now = sql(&self.shared.url, &self.shared.schema, &query);
            if now == state {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{issue} is {now:?}, not {state}; sessions: {}",
                sql(
                    &self.shared.url,
                    &self.shared.schema,
                    "SELECT id, outcome, detail FROM sessions ORDER BY started_at"
                )
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The id and the claimant's name of the next session requested for `issue` besides
    /// `except`, once claimed.
    async fn claimed(&self, issue: &mosaic_domain::IssueRef, except: &[&str]) -> (String, String) {
        let except: Vec<String> = except.iter().map(|id| format!("'{id}'")).collect();
        let query = format!(
            "SELECT session_id || ' ' || claimant_name FROM session_requests \
             WHERE repository = '{}' AND number = {} AND claimant_id IS NOT NULL \
             AND session_id NOT IN ({}) ORDER BY request_seq LIMIT 1",
            issue.repo,
            issue.number,
            if except.is_empty() {
                "''".to_owned()
            } else {
                except.join(", ")
            }
        );
        let row = self.shared.sql_until(&query).await;
        let (id, claimant) = row.split_once(' ').unwrap();
        (id.to_owned(), claimant.to_owned())
    }
}

/// The last lines of `app`'s log.
fn tail(app: &Running) -> String {
    let log = app.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|line| {
            !line.contains("\"level\":\"DEBUG\"") && !line.contains("\"level\":\"TRACE\"")
        })
        .collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// The worktree of the issue's session claimed by the coordinator `app` (claimed sessions work
/// in worktrees of their own, under `<workspace.root>/claimed`).
fn worktree_of(app: &Running, issue: &mosaic_domain::IssueRef) -> std::path::PathBuf {
    app.data
        .path()
        .join("workspaces/claimed/worktrees")
        .join(issue.repo.owner())
        .join(issue.repo.name())
        .join(format!("issue-{}", issue.number))
}

/// Waits until the issue's worktree on `app` has a commit with `subject` (20 s at most); its id.
async fn wait_commit(app: &Running, issue: &mosaic_domain::IssueRef, subject: &str) -> String {
    let worktree = worktree_of(app, issue);
    let worktree = worktree.as_path();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log =
            mosaic_testkit::repo::git(worktree, &["log", "--format=%H %s"]).unwrap_or_default();
        if let Some((id, _)) = log
            .lines()
            .filter_map(|line| line.split_once(' '))
            .find(|(_, said)| *said == subject)
        {
            return id.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no commit `{subject}` in {}: {log}\n{}",
            worktree.display(),
            tail(app)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Three coordinators; the leader busy with another issue (its one agent taken), so the issue
/// under test is claimed by one of the two standbys.
struct ClaimedByAStandby {
    /// The leader first.
    coordinators: Vec<Running>,
    /// What keeps the leader busy.
    filler: mosaic_domain::IssueRef,
    issue: mosaic_domain::IssueRef,
    /// The issue's first session.
    session: String,
    /// Its claimant, among `coordinators`.
    claimant: usize,
}

async fn issue_claimed_by_a_standby(repository: &SharedRepository) -> ClaimedByAStandby {
    let shared = &repository.shared;
    let leader = shared.start().await;
    wait_leadership(&leader, "leader").await;
    // Only the leader runs: its worker claims this one and has no room left.
    let filler = shared.issue("Keep the leader busy");
    shared.assign(&leader, &filler, "move-filler").await;
    let (_, filler_claimant) = repository.claimed(&filler, &[]).await;
    assert!(
        filler_claimant.ends_with(&format!(":{}", leader.port)),
        "{filler_claimant}"
    );
    let mut coordinators = vec![leader];
    for _ in 0..2 {
        let standby = shared.start().await;
        wait_leadership(&standby, "standby").await;
        coordinators.push(standby);
    }
    // The leader counts the capacity its peers offer.
    wait_peers(&coordinators[0], "3 alive", coordinators[0].port).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let issue = shared.issue("Write the notes");
    shared.assign(&coordinators[0], &issue, "move-1").await;
    let (session, claimant) = repository.claimed(&issue, &[]).await;
    let index = coordinators
        .iter()
        .position(|app| claimant.ends_with(&format!(":{}", app.port)))
        .unwrap_or_else(|| panic!("claimed by {claimant}, none of the three"));
    assert_ne!(index, 0, "the busy leader claimed {session}");
    ClaimedByAStandby {
        coordinators,
        filler,
        issue,
        session,
        claimant: index,
    }
}

/// A moved issue continues on its pushed branch: the standby running the issue's session is
/// stopped (SIGTERM) after its agent committed a checkpoint; it pushes the branch and reports
/// the session interrupted. The other standby claims the issue again, prepares a fresh worktree
/// from the pushed branch and its agent finds the checkpoint there, so the pull request carries
/// the first session's commit with the second's on top — and nothing pushed by anyone (the
/// leader's own worktree of the issue was prepared before the first push) dropped it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_issue_clones_again_and_continues_on_its_pushed_branch() {
    // Sessions of 12 s: the leader's stays busy until the moved one runs elsewhere.
    let Some(repository) = SharedRepository::new("moved", 120, "2000").await else {
        return;
    };
    let ClaimedByAStandby {
        mut coordinators,
        filler,
        issue,
        session: first_session,
        claimant: first,
    } = issue_claimed_by_a_standby(&repository).await;

    // Its agent commits the checkpoint at step 5; then its coordinator is told to stop.
    let checkpoint = wait_commit(&coordinators[first], &issue, CHECKPOINT_SUBJECT).await;
    // The leader prepared a worktree of its own for the issue at dispatch: still at the base.
    let leader_tree = coordinators[0]
        .data
        .path()
        .join("workspaces/worktrees")
        .join(issue.repo.owner())
        .join(issue.repo.name())
        .join(format!("issue-{}", issue.number));
    let base = repository.git(&["rev-parse", "main"]);
    assert_eq!(
        mosaic_testkit::repo::git(&leader_tree, &["rev-parse", "HEAD"])
            .unwrap()
            .trim(),
        base
    );
    // No turn ended (the agent works in one go): nothing is pushed yet.
    assert!(
        repository.branch(&issue).is_none(),
        "pushed before any turn ended or the session stopped"
    );
    coordinators[first].signal(nix::sys::signal::Signal::SIGTERM);
    let mut stopped = coordinators.remove(first);
    let (status, stopped) = tokio::task::spawn_blocking(move || {
        let status = stopped.wait_exit(Duration::from_secs(30));
        (status, stopped)
    })
    .await
    .unwrap();
    assert!(status.success(), "{status:?}\n{}", tail(&stopped));
    // Left: the leader and the other standby.
    let other = &coordinators[1];

    // It pushed the checkpoint before it reported the session's end, as interrupted.
    let (branch, pushed) = repository
        .branch(&issue)
        .unwrap_or_else(|| panic!("nothing pushed on shutdown\n{}", tail(&stopped)));
    assert_eq!(pushed, checkpoint, "{}", tail(&stopped));
    let ended = repository
        .shared
        .sql_until(&format!(
            "SELECT outcome FROM sessions WHERE id = '{first_session}' AND ended_at IS NOT NULL"
        ))
        .await;
    assert_eq!(ended, "interrupted");
    // Its agent ended with it.
    let first_pid: i32 = sql(
        &repository.shared.url,
        &repository.shared.schema,
        &format!("SELECT pid FROM sessions WHERE id = '{first_session}'"),
    )
    .parse()
    .unwrap();
    assert!(
        !crate::agent_processes::is_running(first_pid),
        "the stopped coordinator's agent {first_pid} still runs"
    );

    // Claimed again by the other standby, which finishes it.
    let (second_session, second_claimant) = repository.claimed(&issue, &[&first_session]).await;
    assert!(
        second_claimant.ends_with(&format!(":{}", other.port)),
        "the second session {second_session} went to {second_claimant}"
    );
    repository.wait_state(&issue, "completed").await;

    // The pull request's branch: the checkpoint, the second session's work on top.
    let (_, head) = repository.branch(&issue).unwrap();
    let subjects: Vec<String> = repository
        .git(&["log", "--format=%s", &branch])
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        subjects,
        [
            "Sample agent: work on the issue",
            CHECKPOINT_SUBJECT,
            "Initial commit"
        ],
        "the second session did not start from the pushed checkpoint"
    );
    assert!(repository.is_ancestor(&checkpoint, &head));
    // The checkpoint is the first session's own (its agent wrote it; the second found it).
    assert_eq!(
        repository.git(&["show", &format!("{branch}:CHECKPOINT.md")]),
        format!("Checkpoint of sample-{first_pid} at step 5.")
    );
    assert!(
        repository
            .git(&["show", &format!("{branch}:NOTES.md")])
            .starts_with("Written by mosaic-sample-agent")
    );
    // Every push kept what the branch had: no push from a stale worktree dropped a commit.
    let history = repository.branch_history(&branch);
    assert_eq!(history.first(), Some(&checkpoint), "{history:?}");
    assert_eq!(history.last(), Some(&head), "{history:?}");
    for pair in history.windows(2) {
        assert!(
            repository.is_ancestor(&pair[0], &pair[1]),
            "{} replaced {} on the remote: {history:?}",
            pair[1],
            pair[0]
        );
    }

    // One pull request, from that branch, and the issue's one finished comment (Gitea is
    // written through the outbox, after the state).
    let finished = |issue: &mosaic_domain::IssueRef| {
        repository
            .shared
            .gitea
            .comments(issue)
            .iter()
            .filter(|c| c.body.contains(" finished this issue"))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while finished(&issue) == 0 {
        assert!(
            Instant::now() < deadline,
            "no finished comment: {:#?}",
            repository.shared.gitea.comments(&issue)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pulls = repository
        .shared
        .gitea
        .pull_requests(&repository.shared.repo);
    let ours: Vec<_> = pulls.iter().filter(|pr| pr.head.name == branch).collect();
    assert_eq!(ours.len(), 1, "{pulls:#?}");
    assert_eq!(finished(&issue), 1);
    // The interrupted session was no failed attempt: one attempt counted, two sessions.
    let (url, schema) = (&repository.shared.url, &repository.shared.schema);
    assert_one_attempt_of_two_sessions(url, schema, &issue, &first_session, &second_session);
    let comments = repository.shared.gitea.comments(&issue);
    assert!(
        !comments.iter().any(|c| c.body.contains("could not finish")),
        "{comments:#?}"
    );
    // The leader's other issue ends too (its agent is not left running).
    repository.wait_state(&filler, "completed").await;
    // The leader's own worktree of the issue, prepared from the base before anything was
    // pushed, took up the pushed work before publishing: it holds what was published.
    assert_eq!(
        mosaic_testkit::repo::git(&leader_tree, &["rev-parse", "HEAD"])
            .unwrap()
            .trim(),
        head
    );
}

/// A moved issue after a hard stop: the standby running the issue's session is SIGKILLed after
/// its agent committed a checkpoint, before anything was pushed. The leader finds it silent past
/// the lease and ends the session as interrupted (no failed attempt); the other standby runs the
/// issue from the base branch, and the issue completes there. What only the dead worktree held
/// is lost: the published branch is the second session's work alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_issue_whose_claimant_was_killed_runs_again_elsewhere_without_its_unpushed_work() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    let Some(repository) = SharedRepository::new("killed", 120, "2000").await else {
        return;
    };
    let ClaimedByAStandby {
        mut coordinators,
        filler,
        issue,
        session: first_session,
        claimant: first,
    } = issue_claimed_by_a_standby(&repository).await;
    let (url, schema) = (&repository.shared.url, &repository.shared.schema);

    let lost = wait_commit(&coordinators[first], &issue, CHECKPOINT_SUBJECT).await;
    let first_pid: i32 = repository
        .shared
        .sql_until(&format!(
            "SELECT pid FROM sessions WHERE id = '{first_session}' AND pid IS NOT NULL"
        ))
        .await
        .parse()
        .unwrap();
    let killed = coordinators.remove(first);
    let _ = tokio::task::spawn_blocking(move || killed.crash())
        .await
        .unwrap();
    // The dead coordinator's agent works on unseen; it is ended with the test (its own process
    // group, led by the agent).
    struct EndAgent(i32);
    impl Drop for EndAgent {
        fn drop(&mut self) {
            let _ = kill(Pid::from_raw(-self.0), Signal::SIGKILL);
        }
    }
    let _end_agent = EndAgent(first_pid);

    // Silent past the lease: ended as interrupted by the leader, and run by the other standby.
    let ended = repository
        .shared
        .sql_until(&format!(
            "SELECT outcome || ': ' || detail FROM sessions WHERE id = '{first_session}' \
             AND ended_at IS NOT NULL"
        ))
        .await;
    assert!(
        ended.starts_with("interrupted: ") && ended.contains("stopped answering"),
        "{ended}"
    );
    let (second_session, second_claimant) = repository.claimed(&issue, &[&first_session]).await;
    assert!(
        second_claimant.ends_with(&format!(":{}", coordinators[1].port)),
        "the second session {second_session} went to {second_claimant}"
    );
    repository.wait_state(&issue, "completed").await;

    // The published branch is the second session's work from the base: the dead worktree's
    // checkpoint never reached the remote.
    let (branch, _) = repository.branch(&issue).unwrap();
    assert_eq!(
        repository.git(&["log", "--format=%s", &branch]),
        format!("Sample agent: work on the issue\n{CHECKPOINT_SUBJECT}\nInitial commit")
    );
    assert!(
        mosaic_testkit::repo::git(&repository.remote, &["cat-file", "-e", &lost]).is_err(),
        "the unpushed checkpoint {lost} reached the remote"
    );
    let second_pid = sql(
        url,
        schema,
        &format!("SELECT pid FROM sessions WHERE id = '{second_session}'"),
    );
    assert_eq!(
        repository.git(&["show", &format!("{branch}:CHECKPOINT.md")]),
        format!("Checkpoint of sample-{second_pid} at step 5.")
    );
    let history = repository.branch_history(&branch);
    for pair in history.windows(2) {
        assert!(
            repository.is_ancestor(&pair[0], &pair[1]),
            "{} replaced {} on the remote: {history:?}",
            pair[1],
            pair[0]
        );
    }

    // Published once; the interrupted session was no failed attempt.
    let deadline = Instant::now() + Duration::from_secs(30);
    let finished = || {
        repository
            .shared
            .gitea
            .comments(&issue)
            .iter()
            .filter(|c| c.body.contains(" finished this issue"))
            .count()
    };
    while finished() == 0 {
        assert!(Instant::now() < deadline, "no finished comment");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pulls = repository
        .shared
        .gitea
        .pull_requests(&repository.shared.repo);
    assert_eq!(
        pulls.iter().filter(|pr| pr.head.name == branch).count(),
        1,
        "{pulls:#?}"
    );
    assert_one_attempt_of_two_sessions(url, schema, &issue, &first_session, &second_session);
    repository.wait_state(&filler, "completed").await;
}

/// The moved issue's interrupted session was no failed attempt: one attempt counted, the first
/// session interrupted and the second succeeded.
fn assert_one_attempt_of_two_sessions(
    url: &str,
    schema: &str,
    issue: &mosaic_domain::IssueRef,
    first_session: &str,
    second_session: &str,
) {
    let of_issue = format!(
        "repository = '{}' AND number = {}",
        issue.repo, issue.number
    );
    assert_eq!(
        sql(
            url,
            schema,
            &format!("SELECT attempts FROM issues WHERE {of_issue}")
        ),
        "1"
    );
    assert_eq!(
        sql(
            url,
            schema,
            &format!(
                "SELECT id || ' ' || outcome FROM sessions WHERE {of_issue} ORDER BY started_at"
            )
        ),
        format!("{first_session} interrupted\n{second_session} succeeded")
    );
}
