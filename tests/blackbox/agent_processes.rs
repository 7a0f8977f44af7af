//! Agent processes as the coordinator starts and ends them, seen from outside through `/proc`:
//! the environment an agent receives is built (none of the coordinator's secrets in it), a
//! coordinator secret listed for an agent is refused at start (exit 78), and after a SIGKILL of
//! the coordinator the restart ends every process of the old sessions (script agents included:
//! their `argv[0]` is the interpreter) before the issues run again, so no issue ever has two
//! live sessions.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use mosaic_domain::{IssueRef, IssueState, RepoName};
use mosaic_gitea::mock::{MockGitea, NewIssue};
use mosaic_store::{SessionOutcome, SessionRecord, Store, StoreConfig};
use mosaic_store_sqlite::SqliteStore;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::helpers::{Running, SECRET, binary, free_port, run, toml_string};

const STEP: Duration = Duration::from_secs(30);
const HUMAN: &str = "alice";
/// Secrets the coordinator is started with besides the webhook secret and the bot token.
const API_TOKEN: &str = "api-token-of-the-coordinator-4711";
const ANTHROPIC_KEY: &str = "sk-ant-coordinators-own-parser-key-0815";

/// One `[runner.agents.<name>]` section, as TOML lines.
struct AgentSection {
    name: &'static str,
    lines: String,
}

fn config_toml(gitea_url: &str, work_root: &Path, agents: &[AgentSection]) -> String {
    let mut text = format!(
        "[gitea]\nurl = {}\ntoken = {}\nreconcile_interval_secs = 3600\nrepositories = [\"procs/elsewhere\"]\n\n\
         [parser]\nprovider = \"anthropic\"\nbase_url = \"http://127.0.0.1:9/\"\nmax_attempts = 1\ntimeout_ms = 2000\n\n\
         [inbox]\nidle_poll_ms = 100\n\n\
         [engine]\ndispatch_poll_ms = 100\n\n\
         [engine.monitor]\npoll_interval_ms = 200\n\n\
         [runner]\nwork_root = {}\nkill_grace_secs = 2\n",
        toml_string(gitea_url),
        toml_string(MockGitea::BOT_TOKEN),
        toml_string(&work_root.display().to_string()),
    );
    for agent in agents {
        text.push_str(&format!(
            "\n[runner.agents.{}]\n{}\n",
            agent.name, agent.lines
        ));
    }
    text
}

/// The coordinator's environment beyond what `Running` sets: more of its own secrets, and
/// variables an agent may or may not be given.
fn coordinator_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("GITEA_BOT_TOKEN", MockGitea::BOT_TOKEN),
        ("MOSAIC_API_TOKEN", API_TOKEN),
        ("ANTHROPIC_API_KEY", ANTHROPIC_KEY),
        ("HOME", "/nonexistent-home-of-the-coordinator"),
        ("AGENT_OWN_KEY", "the-agents-own-key-1234"),
        ("UNRELATED_SETTING", "not-for-agents"),
    ]
}

fn issue_body(agent: &str) -> String {
    format!(
        "## Context Estimate\n- Total estimated: 20,000 tokens\n- Recommended agent: {agent}\n\n\
         ## Difficulty\nlow\n\n## Dependencies\nNone\n"
    )
}

/// A coordinator with its mock Gitea, one repository of the test's own.
struct Scenario {
    gitea: MockGitea,
    repo: RepoName,
    app: Running,
    store: Arc<dyn Store>,
    config: std::path::PathBuf,
    deliveries: u32,
}

impl Scenario {
    async fn start(repo: &str, agents: impl FnOnce(&Path) -> Vec<AgentSection>) -> Self {
        let (gitea, url) = MockGitea::start().await.unwrap();
        let repo: RepoName = repo.parse().unwrap();
        gitea.create_repo(&repo);
        gitea.create_repo(&"procs/elsewhere".parse().unwrap());
        let data = tempfile::tempdir().unwrap();
        let config = data.path().join("mosaic-procs.toml");
        let agents = agents(data.path());
        let text = config_toml(url.as_str(), &data.path().join("work"), &agents);
        std::fs::write(&config, text).unwrap();
        let app = launch(data, config.clone()).await;
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(&StoreConfig::sqlite(app.data.path().join("mosaic.db"))).unwrap(),
        );
        Self {
            gitea,
            repo,
            app,
            store,
            config,
            deliveries: 0,
        }
    }

    async fn crash_and_restart(self) -> Self {
        let Self {
            gitea,
            repo,
            app,
            store,
            config,
            deliveries,
        } = self;
        let data = tokio::task::spawn_blocking(move || app.crash())
            .await
            .unwrap();
        let app = launch(data, config.clone()).await;
        Self {
            gitea,
            repo,
            app,
            store,
            config,
            deliveries,
        }
    }

    fn issue(&self, title: &str, agent: &str) -> IssueRef {
        self.gitea.create_issue(
            &self.repo,
            NewIssue::titled(title)
                .body(&issue_body(agent))
                .by(HUMAN)
                .assigned_to(MockGitea::BOT_LOGIN),
        )
    }

    async fn assign(&mut self, issue: &IssueRef) {
        self.deliveries += 1;
        let body =
            serde_json::to_vec(&self.gitea.issue_event(issue, "assigned", HUMAN).unwrap()).unwrap();
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(&body);
        let response = self
            .app
            .client
            .post(self.app.url("/webhook/gitea"))
            .header("content-type", "application/json")
            .header("x-gitea-event", "issues")
            .header("x-gitea-event-type", "issue_assign")
            .header(
                "x-gitea-delivery",
                format!("procs-{}-{}", uuid::Uuid::new_v4(), self.deliveries),
            )
            .header(
                "x-gitea-signature",
                hex::encode(mac.finalize().into_bytes()),
            )
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "delivery for {issue} refused");
    }

    async fn sessions(&self, issue: &IssueRef) -> Vec<SessionRecord> {
        self.store.sessions_for_issue(issue).await.unwrap()
    }

    async fn state(&self, issue: &IssueRef) -> Option<IssueState> {
        self.store
            .get_issue(issue)
            .await
            .unwrap()
            .map(|record| record.state)
    }

    async fn wait_for_state(&self, issue: &IssueRef, wanted: IssueState) {
        let deadline = Instant::now() + STEP;
        let mut last = None;
        while Instant::now() < deadline {
            last = self.state(issue).await;
            if last == Some(wanted) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.fail(&format!("{issue} did not reach {wanted:?} (last {last:?})"));
    }

    fn fail(&self, message: &str) -> ! {
        let log = self.app.log();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!("{message}\ncoordinator log (tail):\n{}", tail.join("\n"));
    }
}

async fn launch(data: tempfile::TempDir, config: std::path::PathBuf) -> Running {
    tokio::task::spawn_blocking(move || {
        Running::start_configured(data, &config, &coordinator_env())
    })
    .await
    .unwrap()
}

fn write_script(dir: &Path, name: &str, text: &str) -> String {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

// ---- the environment ----

/// An agent that dumps its environment sees none of the coordinator's secrets: only the base
/// set, what its profile forwards (`pass_env`) or sets (`env`), and the session variables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_dumps_its_environment_sees_none_of_the_coordinators_secrets() {
    let dumps = tempfile::tempdir().unwrap();
    let dump = dumps.path().join("agent.env");
    let dump_for_agent = dump.clone();
    let mut s = Scenario::start("procs-env/app", move |dir| {
        let script = write_script(
            dir,
            "dump-env.sh",
            "#!/bin/sh\ncat > /dev/null\nenv > \"$DUMP_TO\"\n\
             echo '{\"type\":\"done\",\"status\":\"success\",\"summary\":\"dumped\"}'\n",
        );
        vec![AgentSection {
            name: "haiku",
            lines: format!(
                "program = {}\ninput = \"text\"\npass_env = [\"AGENT_OWN_KEY\"]\nenv = {{ DUMP_TO = {}, PROFILE_SETTING = \"from-the-profile\" }}",
                toml_string(&script),
                toml_string(&dump_for_agent.display().to_string()),
            ),
        }]
    })
    .await;
    let issue = s.issue("Dump the environment", "haiku");
    s.assign(&issue).await;
    s.wait_for_state(&issue, IssueState::Completed).await;

    let text = std::fs::read_to_string(&dump).unwrap();
    let vars: BTreeMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
    for secret in [SECRET, MockGitea::BOT_TOKEN, API_TOKEN, ANTHROPIC_KEY] {
        assert!(
            !text.contains(secret),
            "the agent saw a coordinator secret:\n{text}"
        );
    }
    for name in [
        "GITEA_WEBHOOK_SECRET",
        "GITEA_BOT_TOKEN",
        "MOSAIC_API_TOKEN",
        "ANTHROPIC_API_KEY",
        "MOSAIC_DATABASE_URL",
        "MOSAIC_LOG__FORMAT",
        "UNRELATED_SETTING",
        "PORT",
    ] {
        assert!(
            !vars.contains_key(name),
            "{name} reached the agent:\n{text}"
        );
    }
    let session = s.sessions(&issue).await.pop().unwrap();
    assert_eq!(vars.get("MOSAIC_SESSION_ID"), Some(&session.id.as_str()));
    assert_eq!(
        vars.get("MOSAIC_ISSUE").copied(),
        Some(issue.to_string().as_str())
    );
    assert_eq!(vars.get("MOSAIC_AGENT"), Some(&"haiku"));
    assert_eq!(vars.get("AGENT_OWN_KEY"), Some(&"the-agents-own-key-1234"));
    assert_eq!(vars.get("PROFILE_SETTING"), Some(&"from-the-profile"));
    assert_eq!(
        vars.get("HOME"),
        Some(&"/nonexistent-home-of-the-coordinator")
    );
    assert!(vars.contains_key("PATH"));
    let base = [
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "LANG",
        "LANGUAGE",
        "LC_ALL",
        "LC_CTYPE",
        "LC_MESSAGES",
        "TERM",
        "TMPDIR",
        "TZ",
    ];
    let configured = [
        "AGENT_OWN_KEY",
        "DUMP_TO",
        "PROFILE_SETTING",
        "MOSAIC_SESSION_ID",
        "MOSAIC_ISSUE",
        "MOSAIC_AGENT",
    ];
    // What `sh` adds by itself.
    let shell = ["PWD", "SHLVL", "_", "OLDPWD"];
    let unexpected: Vec<&&str> = vars
        .keys()
        .filter(|name| !base.contains(name) && !configured.contains(name) && !shell.contains(name))
        .collect();
    assert!(
        unexpected.is_empty(),
        "inherited from the coordinator: {unexpected:?}"
    );
}

/// A coordinator credential listed for an agent stops the start with exit 78, naming the key.
#[test]
fn a_coordinator_secret_listed_for_an_agent_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let secret_in_env = format!("env = {{ HOOK = {} }}", toml_string(SECRET));
    let cases = [
        (
            "pass_env = [\"GITEA_BOT_TOKEN\"]",
            &[
                "runner.agents.haiku.pass_env",
                "`GITEA_BOT_TOKEN`",
                "gitea.token",
            ][..],
        ),
        (
            "pass_env = [\"ANTHROPIC_API_KEY\"]",
            &[
                "runner.agents.haiku.pass_env",
                "`ANTHROPIC_API_KEY`",
                "parser.api_key",
            ][..],
        ),
        (
            "pass_env = [\"COPY_OF_THE_API_TOKEN\"]",
            &["`COPY_OF_THE_API_TOKEN`", "api.token"][..],
        ),
        (
            "pass_env = [\"MOSAIC_DATABASE_URL\"]",
            &["`MOSAIC_DATABASE_URL`"][..],
        ),
        (
            secret_in_env.as_str(),
            &["runner.agents.haiku.env: `HOOK`", "webhook.secrets"][..],
        ),
    ];
    for (line, expected) in cases {
        let config = dir.path().join("refused.toml");
        std::fs::write(
            &config,
            format!(
                "[gitea]\nurl = \"http://127.0.0.1:9/\"\n\n[runner]\nwork_root = {}\n\n[runner.agents.haiku]\nprogram = \"/bin/true\"\n{line}\n",
                toml_string(&dir.path().join("work").display().to_string())
            ),
        )
        .unwrap();
        let db = format!("sqlite://{}", dir.path().join("mosaic.db").display());
        let port = free_port().to_string();
        let output = run(
            &["serve", "--config", &config.display().to_string()],
            &[
                ("GITEA_WEBHOOK_SECRET", SECRET),
                ("GITEA_BOT_TOKEN", MockGitea::BOT_TOKEN),
                ("MOSAIC_API_TOKEN", API_TOKEN),
                ("COPY_OF_THE_API_TOKEN", API_TOKEN),
                ("ANTHROPIC_API_KEY", ANTHROPIC_KEY),
                ("MOSAIC_DATABASE_URL", &db),
                ("PORT", &port),
            ],
            dir.path(),
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(78), "{line}: {stderr}");
        for text in expected {
            assert!(stderr.contains(text), "{line}: expected {text} in {stderr}");
        }
        for secret in [SECRET, MockGitea::BOT_TOKEN, API_TOKEN, ANTHROPIC_KEY] {
            assert!(!stderr.contains(secret), "{line}: secret printed: {stderr}");
        }
    }
}

// ---- processes across a SIGKILL of the coordinator ----

/// A running process that carries session markers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct MarkedProcess {
    pid: i32,
    issue: String,
    session: String,
}

pub(crate) fn is_running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| !matches!(state, "Z" | "X" | "x"))
    })
}

/// Running processes whose `MOSAIC_ISSUE` is an issue of `repo`.
fn marked_processes(repo: &str) -> Vec<MarkedProcess> {
    let prefix = format!("{repo}#");
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let mut issue = None;
        let mut session = None;
        for var in environ.split(|b| *b == 0) {
            let var = String::from_utf8_lossy(var);
            if let Some(value) = var.strip_prefix("MOSAIC_ISSUE=") {
                issue = Some(value.to_owned());
            } else if let Some(value) = var.strip_prefix("MOSAIC_SESSION_ID=") {
                session = Some(value.to_owned());
            }
        }
        if let (Some(issue), Some(session)) = (issue, session)
            && issue.starts_with(&prefix)
            && is_running(pid)
        {
            found.push(MarkedProcess {
                pid,
                issue,
                session,
            });
        }
    }
    found
}

/// The sessions of `repo`'s issues with an agent process alive now.
pub(crate) fn live_sessions(repo: &str) -> BTreeSet<String> {
    marked_processes(repo)
        .into_iter()
        .map(|process| process.session)
        .collect()
}

/// Samples `/proc` in a loop while the test runs and records every moment at which one issue
/// had live processes of two sessions.
pub(crate) struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    violations: Arc<Mutex<Vec<String>>>,
    samples: Arc<Mutex<u64>>,
    seen: Arc<Mutex<BTreeSet<MarkedProcess>>>,
    repo: String,
}

impl Sampler {
    pub(crate) fn start(repo: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let violations = Arc::new(Mutex::new(Vec::new()));
        let samples = Arc::new(Mutex::new(0));
        let seen = Arc::new(Mutex::new(BTreeSet::new()));
        let thread = {
            let (stop, violations, samples, seen) = (
                Arc::clone(&stop),
                Arc::clone(&violations),
                Arc::clone(&samples),
                Arc::clone(&seen),
            );
            let repo = repo.to_owned();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let processes = marked_processes(&repo);
                    let mut by_issue: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
                    for process in &processes {
                        by_issue
                            .entry(&process.issue)
                            .or_default()
                            .insert(&process.session);
                    }
                    for (issue, sessions) in by_issue.iter().filter(|(_, s)| s.len() > 1) {
                        // One pass over /proc is not one instant: count it only if processes of
                        // two sessions are still running now.
                        let live: BTreeSet<&str> = processes
                            .iter()
                            .filter(|p| p.issue == *issue && is_running(p.pid))
                            .map(|p| p.session.as_str())
                            .collect();
                        if live.len() > 1 {
                            violations.lock().unwrap().push(format!(
                                "{issue}: sessions {sessions:?} live at once: {:?}",
                                processes
                                    .iter()
                                    .filter(|p| p.issue == *issue)
                                    .collect::<Vec<_>>()
                            ));
                        }
                    }
                    seen.lock().unwrap().extend(processes);
                    *samples.lock().unwrap() += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        Self {
            stop,
            thread: Some(thread),
            violations,
            samples,
            seen,
            repo: repo.to_owned(),
        }
    }

    pub(crate) fn violations(&self) -> Vec<String> {
        self.violations.lock().unwrap().clone()
    }

    fn seen_sessions(&self, issue: &IssueRef) -> BTreeSet<String> {
        let issue = issue.to_string();
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p.issue == issue)
            .map(|p| p.session.clone())
            .collect()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // A failed test must not leave agents (and their `sleep 300` children) running.
        for process in marked_processes(&self.repo) {
            let _ = kill(Pid::from_raw(process.pid), Signal::SIGKILL);
        }
    }
}

/// The three kinds of agent: a binary (the sample agent, with a child in its group), a shell
/// wrapper with a child, and a Python script with one child in its group and one that left it
/// (`start_new_session`). Each runs about 5 s and then reports success.
fn three_agents(dir: &Path) -> Vec<AgentSection> {
    let wrapper = write_script(
        dir,
        "wrapper-agent.sh",
        "#!/bin/sh\n\
         cat > /dev/null\n\
         sleep 300 &\n\
         i=0\n\
         while [ $i -lt 50 ]; do\n\
           echo '{\"type\":\"usage\",\"context_tokens\":5000}'\n\
           sleep 0.1\n\
           i=$((i+1))\n\
         done\n\
         echo '{\"type\":\"done\",\"status\":\"success\",\"summary\":\"wrapper done\"}'\n",
    );
    let python = write_script(
        dir,
        "python-agent.py",
        "#!/usr/bin/env python3\n\
         import json, subprocess, sys, time\n\
         sys.stdin.read()\n\
         subprocess.Popen(['sleep', '300'])\n\
         subprocess.Popen(['sleep', '300'], start_new_session=True)\n\
         for step in range(50):\n\
         \x20   print(json.dumps({'type': 'usage', 'context_tokens': 5000 + step}), flush=True)\n\
         \x20   time.sleep(0.1)\n\
         print(json.dumps({'type': 'done', 'status': 'success', 'summary': 'python done'}), flush=True)\n",
    );
    let coordinator = binary("mosaic-coordinator").display().to_string();
    vec![
        AgentSection {
            name: "glm",
            lines: format!(
                "program = {}\nargs = [\"sample-agent\", \"--protocol\", \"json-lines\", \"--steps\", \"50\", \"--tokens-per-step\", \"10\", \"--start-tokens\", \"5000\", \"--step-delay-ms\", \"100\", \"--spawn-child\"]\ninput = \"json_lines\"",
                toml_string(&coordinator)
            ),
        },
        AgentSection {
            name: "sonnet",
            lines: format!("program = {}\ninput = \"text\"", toml_string(&wrapper)),
        },
        AgentSection {
            name: "haiku",
            lines: format!("program = {}\ninput = \"text\"", toml_string(&python)),
        },
    ]
}

/// Invariant at every sampled moment, across a SIGKILL of the coordinator and its restart: no
/// issue has live processes of two sessions, for a binary agent, a shell wrapper and a Python
/// script agent; the restart ends all processes of the old sessions (children, and a child
/// that left the process group) before the issues run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_sigkill_no_issue_ever_has_two_live_agents() {
    let repo = "procs-kill/app";
    let sampler = Sampler::start(repo);
    let mut s = Scenario::start(repo, three_agents).await;
    let issues = [
        (s.issue("Binary agent", "glm"), 2),
        (s.issue("Shell wrapper", "sonnet"), 2),
        (s.issue("Python script", "haiku"), 3),
    ];
    for (issue, _) in &issues {
        s.assign(issue).await;
    }
    // Every agent runs with its children before the crash.
    let deadline = Instant::now() + STEP;
    let mut first = BTreeMap::new();
    loop {
        let processes = marked_processes(repo);
        let ready = issues.iter().all(|(issue, children)| {
            processes
                .iter()
                .filter(|p| p.issue == issue.to_string())
                .count()
                >= *children
        });
        if ready {
            for (issue, _) in &issues {
                let mine: Vec<MarkedProcess> = processes
                    .iter()
                    .filter(|p| p.issue == issue.to_string())
                    .cloned()
                    .collect();
                first.insert(issue.clone(), mine);
            }
            break;
        }
        if Instant::now() > deadline {
            s.fail(&format!(
                "not every agent started its children: {processes:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let s = s.crash_and_restart().await;
    // Each issue runs again; by then none of the old processes may run.
    for (issue, _) in &issues {
        let old_session = first[issue][0].session.clone();
        let deadline = Instant::now() + STEP;
        let new_session = loop {
            let sessions = s.sessions(issue).await;
            if let Some(new) = sessions.iter().find(|session| session.id != old_session) {
                break new.id.clone();
            }
            if Instant::now() > deadline {
                s.fail(&format!("{issue} was not dispatched again: {sessions:?}"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let survivors: Vec<&MarkedProcess> = first[issue]
            .iter()
            .filter(|p| is_running(p.pid))
            .filter(|p| {
                // Still the old session's process (not a reused pid).
                marked_processes(repo).contains(p)
            })
            .collect();
        assert!(
            survivors.is_empty(),
            "{issue}: processes of the killed coordinator's session {old_session} still run while session {new_session} does: {survivors:?}"
        );
    }
    for (issue, _) in &issues {
        s.wait_for_state(issue, IssueState::Completed).await;
    }
    for (issue, _) in &issues {
        let sessions = s.sessions(issue).await;
        assert_eq!(sessions.len(), 2, "{issue}: {sessions:?}");
        assert_eq!(sessions[0].outcome, Some(SessionOutcome::Interrupted));
        assert_eq!(sessions[1].outcome, Some(SessionOutcome::Succeeded));
        // The sampler saw both sessions, so it could have caught an overlap.
        assert_eq!(
            sampler.seen_sessions(issue),
            sessions.iter().map(|s| s.id.clone()).collect(),
            "{issue}"
        );
    }
    // The ended sessions left nothing behind, the Python agent's `setsid` child included.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !marked_processes(repo).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = marked_processes(repo);
    assert!(
        left.is_empty(),
        "processes left after the sessions ended: {left:?}"
    );
    assert!(*sampler.samples.lock().unwrap() > 20, "the sampler ran");
    let violations = sampler.violations();
    assert!(violations.is_empty(), "{violations:#?}");
}
