#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Black box: real child processes (the sample agent, `sh`) under the process runtime and the
//! context monitor. The sample agent binary is built with `cargo build -p mosaic-sample-agent`
//! (the same cargo and target directory as this test) and located through cargo's JSON output;
//! `MOSAIC_SAMPLE_AGENT=/path/to/binary` skips the build.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use mosaic_context::{
    AgentRuntime, AgentSession, CompactionRecord, ContextMonitor, ContextUsage, HandoverError,
    HandoverSource, KillReason, LiveSession, MonitorConfig, MonitorSink, RetryPolicy, RuntimeError,
    SessionOutcome, SessionRotation, SessionTask, SinkError, wait_for_outcome,
};
use mosaic_domain::{AgentProfile, Difficulty, IssueRef, RepoName};
use mosaic_runner::{AgentCommand, InputMode, ProcessRuntime, RunnerConfig};

fn sample_agent() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        if let Some(path) = std::env::var_os("MOSAIC_SAMPLE_AGENT") {
            return PathBuf::from(path);
        }
        let output = std::process::Command::new(env!("CARGO"))
            .args([
                "build",
                "--quiet",
                "-p",
                "mosaic-sample-agent",
                "--message-format=json",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("run cargo build -p mosaic-sample-agent");
        assert!(
            output.status.success(),
            "building the sample agent failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|message| message["target"]["name"] == "mosaic-sample-agent")
            .find_map(|message| message["executable"].as_str().map(PathBuf::from))
            .expect("cargo reported the sample agent's executable")
    })
    .clone()
}

/// Processes of a group that are still alive (zombies waiting for a reaper do not count).
fn live_in_group(pgid: u32) -> Vec<u32> {
    let mut alive = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the parenthesised command name: state, ppid, pgrp, ...
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() > 2 && fields[2] == pgid.to_string() && fields[0] != "Z" && fields[0] != "X"
        {
            alive.push(pid);
        }
    }
    alive
}

async fn assert_group_gone(pgid: u32) {
    for _ in 0..100 {
        if live_in_group(pgid).is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "processes of group {pgid} still alive: {:?}",
        live_in_group(pgid)
    );
}

fn issue(number: u64) -> IssueRef {
    IssueRef::new(RepoName::new("mosaic", "coordinator").unwrap(), number)
}

fn task(number: u64) -> SessionTask {
    SessionTask {
        issue: issue(number),
        title: format!("Sample issue {number}"),
        body: "Make the sample agent work.".to_owned(),
        repository: RepoName::new("mosaic", "coordinator").unwrap(),
        acceptance_criteria: vec!["the result line says so".to_owned()],
        handover_summary: None,
        work_dir: None,
    }
}

fn profile(name: &str) -> AgentProfile {
    AgentProfile {
        name: name.to_owned(),
        context_window: 100_000,
        cost_input_per_mtok: 3.0,
        cost_output_per_mtok: 15.0,
        max_difficulty: Difficulty::High,
        self_hosted: true,
        enabled: true,
        compact_threshold: None,
        rotate_threshold: None,
    }
}

fn sample_command(args: &[&str]) -> AgentCommand {
    AgentCommand {
        program: sample_agent().display().to_string(),
        args: args.iter().map(|arg| (*arg).to_owned()).collect(),
        env: Default::default(),
        pass_env: Vec::new(),
        input: InputMode::JsonLines,
        can_compact: true,
        protocol: mosaic_runner::AgentProtocol::JsonLines,
        finish_on_result: true,
        stall_timeout_secs: None,
        time_limit_secs: None,
    }
}

struct Setup {
    runtime: ProcessRuntime,
    _root: tempfile::TempDir,
}

fn runtime(agents: Vec<(&str, AgentCommand)>, tweak: impl FnOnce(&mut RunnerConfig)) -> Setup {
    let root = tempfile::tempdir().unwrap();
    let mut config = RunnerConfig::new(root.path().join("work"));
    config.kill_grace_secs = Duration::from_millis(500);
    config.compact_timeout_secs = Duration::from_secs(10);
    config.agents = agents
        .into_iter()
        .map(|(name, command)| (name.to_owned(), command))
        .collect();
    tweak(&mut config);
    Setup {
        runtime: ProcessRuntime::new(config).unwrap(),
        _root: root,
    }
}

#[derive(Debug, Default)]
struct Store {
    usages: Mutex<Vec<ContextUsage>>,
    compactions: Mutex<Vec<CompactionRecord>>,
    rotations: Mutex<Vec<SessionRotation>>,
    outcomes: Mutex<Vec<(LiveSession, SessionOutcome)>>,
    handovers: Mutex<Vec<SessionTask>>,
}

#[async_trait]
impl MonitorSink for Store {
    async fn on_usage(&self, _: &LiveSession, usage: &ContextUsage) -> Result<(), SinkError> {
        self.usages.lock().unwrap().push(*usage);
        Ok(())
    }
    async fn on_compaction(&self, record: &CompactionRecord) -> Result<(), SinkError> {
        self.compactions.lock().unwrap().push(record.clone());
        Ok(())
    }
    async fn on_rotation(&self, record: &SessionRotation) -> Result<(), SinkError> {
        self.rotations.lock().unwrap().push(record.clone());
        Ok(())
    }
    async fn on_outcome(
        &self,
        live: &LiveSession,
        outcome: &SessionOutcome,
    ) -> Result<(), SinkError> {
        self.outcomes
            .lock()
            .unwrap()
            .push((live.clone(), outcome.clone()));
        Ok(())
    }
}

#[async_trait]
impl HandoverSource for Store {
    async fn next_issue_for(
        &self,
        _agent: &str,
        unfinished: &SessionTask,
    ) -> Result<Option<SessionTask>, HandoverError> {
        self.handovers.lock().unwrap().push(unfinished.clone());
        Ok(Some(unfinished.clone()))
    }
    async fn requeue(&self, _task: &SessionTask, _reason: &str) -> Result<(), HandoverError> {
        Ok(())
    }
}

fn monitor(runtime: ProcessRuntime, store: &Arc<Store>) -> ContextMonitor {
    let quick = RetryPolicy {
        attempts: 2,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(100),
    };
    ContextMonitor::new(
        Arc::new(runtime),
        Arc::clone(store) as Arc<dyn MonitorSink>,
        Arc::clone(store) as Arc<dyn HandoverSource>,
        MonitorConfig {
            poll_interval: Duration::from_millis(200),
            spawn_retry: quick,
            sink_retry: quick,
            ..MonitorConfig::default()
        },
    )
}

async fn wait_until(what: &str, seconds: u64, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn past_80_percent_the_sample_agent_is_compacted_and_finishes() {
    let setup = runtime(
        vec![(
            "sample",
            sample_command(&[
                "--steps",
                "12",
                "--start-tokens",
                "10000",
                "--tokens-per-step",
                "10000",
                "--step-delay-ms",
                "60",
                "--compact-keep",
                "0.25",
            ]),
        )],
        |_| {},
    );
    let store = Arc::new(Store::default());
    let monitor = monitor(setup.runtime.clone(), &store);
    let session = monitor.start(&profile("sample"), task(21)).await.unwrap();
    let pid = session.process_id().unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(20), wait_for_outcome(session.as_ref()))
        .await
        .unwrap();
    let SessionOutcome::Succeeded {
        summary,
        tokens,
        cost_usd,
    } = outcome
    else {
        panic!("expected success, got {outcome:?}");
    };
    assert_eq!(summary, "Completed 12 steps.");
    assert!(tokens > 0);
    // The profile is self-hosted: $0 whatever the agent reports (it reports a price).
    assert_eq!(cost_usd, Some(0.0));
    let spend = session.subscribe().borrow().spend;
    assert_eq!(spend.total_tokens(), tokens, "{spend:?}");
    assert!(spend.output_tokens > 0, "{spend:?}");
    assert_eq!(spend.cost_usd, 0.0);

    wait_until("outcome recorded", 5, || {
        !store.outcomes.lock().unwrap().is_empty()
    })
    .await;
    let compactions = store.compactions.lock().unwrap().clone();
    assert_eq!(compactions.len(), 1, "{compactions:?}");
    let result = compactions[0].result;
    assert!(result.success, "{result:?}");
    assert!(result.before_tokens >= 80_000);
    assert!(result.after_tokens < 80_000 / 2);
    assert!(store.rotations.lock().unwrap().is_empty());
    assert_eq!(session.subscribe().borrow().compactions, 1);
    let max_seen = store
        .usages
        .lock()
        .unwrap()
        .iter()
        .map(|u| u.used_tokens)
        .max()
        .unwrap();
    assert!(
        max_seen < 95_000,
        "never reached the rotate threshold: {max_seen}"
    );
    assert_group_gone(pid).await;
}

#[tokio::test]
async fn past_95_percent_the_session_is_rotated_and_the_issue_handed_over() {
    let setup = runtime(
        vec![(
            "sample",
            sample_command(&[
                "--steps",
                "8",
                "--start-tokens",
                "10000",
                "--tokens-per-step",
                "5000",
                "--burst-at-step",
                "3",
                "--burst-tokens",
                "72000",
                "--step-delay-ms",
                "80",
                "--spawn-child",
            ]),
        )],
        |_| {},
    );
    let store = Arc::new(Store::default());
    let monitor = monitor(setup.runtime.clone(), &store);
    let first = monitor.start(&profile("sample"), task(22)).await.unwrap();
    let old_pid = first.process_id().unwrap();

    wait_until("rotation recorded", 15, || {
        !store.rotations.lock().unwrap().is_empty()
    })
    .await;
    let rotation = store.rotations.lock().unwrap()[0].clone();
    assert!(rotation.success, "{rotation:?}");
    assert_eq!(rotation.old_session_id, *first.id());
    assert_eq!(rotation.agent_type, "sample");
    assert_eq!(rotation.issue, issue(22));
    assert_eq!(rotation.next_issue, Some(issue(22)));
    assert_eq!(rotation.context_before_tokens, 97_000);
    assert!((rotation.context_before_percent - 97.0).abs() < 1e-9);
    assert_eq!(rotation.error_message, None);
    let new_id = rotation.new_session_id.clone().unwrap();
    assert_ne!(new_id, *first.id());

    // The old session's whole process group (agent and its child) is gone.
    assert!(matches!(
        first.outcome(),
        SessionOutcome::Killed { reason: KillReason::Closed { ref reason } } if reason.starts_with("rotation: context at 97.0%")
    ));
    assert_group_gone(old_pid).await;

    // The handover carried the old session's progress; the new session resumed from it.
    let handed = store.handovers.lock().unwrap()[0].clone();
    assert!(
        handed
            .handover_summary
            .as_deref()
            .unwrap()
            .contains("progress: step 3/8"),
        "{handed:?}"
    );
    let second = monitor.session_for_issue(&issue(22)).unwrap();
    assert_eq!(*second.id(), new_id);
    let new_pid = second.process_id().unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(20), wait_for_outcome(second.as_ref()))
        .await
        .unwrap();
    assert!(
        matches!(&outcome, SessionOutcome::Succeeded { summary, .. } if summary == "Completed 8 steps (resumed after step 3)."),
        "{outcome:?}"
    );
    wait_until("outcome recorded", 5, || {
        !store.outcomes.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(store.outcomes.lock().unwrap()[0].0.session_id, new_id);
    assert_eq!(store.rotations.lock().unwrap().len(), 1);
    assert_group_gone(new_pid).await;
}

#[tokio::test]
async fn a_stalled_agent_loses_its_whole_process_group() {
    let mut command = sample_command(&[
        "--steps",
        "50",
        "--hang-at-step",
        "2",
        "--step-delay-ms",
        "50",
        "--ignore-sigterm",
        "--spawn-child",
    ]);
    command.stall_timeout_secs = Some(Duration::from_millis(800));
    let setup = runtime(vec![("sample", command)], |_| {});
    let session = setup
        .runtime
        .spawn(&profile("sample"), &task(23))
        .await
        .unwrap();
    let pid = session.process_id().unwrap();
    let started = std::time::Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(10), wait_for_outcome(session.as_ref()))
        .await
        .unwrap();
    assert!(
        matches!(
            outcome,
            SessionOutcome::Killed {
                reason: KillReason::Stalled { .. }
            }
        ),
        "{outcome:?}"
    );
    // It ignores SIGTERM, so only the SIGKILL after the grace period ended it.
    assert!(started.elapsed() >= Duration::from_millis(800 + 500));
    assert_group_gone(pid).await;
}

#[tokio::test]
async fn the_time_limit_kills_the_process_group() {
    let setup = runtime(
        vec![(
            "sample",
            sample_command(&["--steps", "1000", "--step-delay-ms", "50", "--spawn-child"]),
        )],
        |config| config.time_limit_secs = Duration::from_millis(1200),
    );
    let session = setup
        .runtime
        .spawn(&profile("sample"), &task(24))
        .await
        .unwrap();
    let pid = session.process_id().unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(10), wait_for_outcome(session.as_ref()))
        .await
        .unwrap();
    assert!(
        matches!(
            outcome,
            SessionOutcome::Killed {
                reason: KillReason::TimeLimit { .. }
            }
        ),
        "{outcome:?}"
    );
    assert_group_gone(pid).await;
}

#[tokio::test]
async fn close_ends_a_running_session_and_its_children() {
    let setup = runtime(
        vec![(
            "sample",
            sample_command(&["--steps", "1000", "--step-delay-ms", "50", "--spawn-child"]),
        )],
        |_| {},
    );
    let session = setup
        .runtime
        .spawn(&profile("sample"), &task(25))
        .await
        .unwrap();
    let pid = session.process_id().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(live_in_group(pid).len() >= 2, "agent and child are running");
    let outcome = session.close("unassigned").await.unwrap();
    assert!(matches!(
        outcome,
        SessionOutcome::Killed { reason: KillReason::Closed { ref reason } } if reason == "unassigned"
    ));
    assert_group_gone(pid).await;
    // Closing again just reports the outcome.
    assert_eq!(session.close("again").await.unwrap(), outcome);
    assert!(session.send("more work").await.is_err());
}

#[tokio::test]
async fn failures_and_exit_codes_map_to_outcomes() {
    let setup = runtime(
        vec![
            (
                "failing",
                sample_command(&["--steps", "2", "--step-delay-ms", "10", "--fail"]),
            ),
            (
                "crashing",
                AgentCommand {
                    program: "sh".to_owned(),
                    args: vec!["-c".to_owned(), "echo oops >&2; exit 3".to_owned()],
                    input: InputMode::Text,
                    can_compact: false,
                    protocol: mosaic_runner::AgentProtocol::JsonLines,
                    finish_on_result: true,
                    ..sample_command(&[])
                },
            ),
            (
                "missing",
                AgentCommand {
                    program: "/nonexistent/agent".to_owned(),
                    ..sample_command(&[])
                },
            ),
        ],
        |_| {},
    );
    let failing = setup
        .runtime
        .spawn(&profile("failing"), &task(26))
        .await
        .unwrap();
    let outcome = wait_for_outcome(failing.as_ref()).await;
    assert!(
        matches!(&outcome, SessionOutcome::Failed { reason } if reason.contains("agent reported an error: Failed on request")),
        "{outcome:?}"
    );
    let crashing = setup
        .runtime
        .spawn(&profile("crashing"), &task(27))
        .await
        .unwrap();
    let outcome = wait_for_outcome(crashing.as_ref()).await;
    assert_eq!(
        outcome,
        SessionOutcome::Failed {
            reason: "exited with status 3; stderr: oops".to_owned()
        }
    );
    let err = setup
        .runtime
        .spawn(&profile("missing"), &task(28))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RuntimeError::Spawn { ref agent, .. } if agent == "missing"),
        "{err}"
    );
    let err = setup
        .runtime
        .spawn(&profile("unknown"), &task(28))
        .await
        .unwrap_err();
    assert_eq!(err, RuntimeError::UnknownAgent("unknown".to_owned()));
    let zero_window = AgentProfile {
        context_window: 0,
        ..profile("failing")
    };
    let err = setup
        .runtime
        .spawn(&zero_window, &task(28))
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::Config { .. }), "{err}");
}

#[tokio::test]
async fn speaks_the_generic_protocol_and_logs_what_it_does_not_understand() {
    let script = r#"read -r prompt_first_line
echo "prompt: $prompt_first_line" >&2
echo "hello from a plain CLI"
echo '{"type":"usage","context_tokens":1200,"context_window":8000}'
echo '{"type":"message","text":"wrote the patch"}'
echo '{"type":"done","status":"success","summary":"patched","tokens":3400}'
"#;
    let setup = runtime(
        vec![(
            "generic",
            AgentCommand {
                program: "sh".to_owned(),
                args: vec!["-c".to_owned(), script.to_owned()],
                input: InputMode::Text,
                can_compact: false,
                protocol: mosaic_runner::AgentProtocol::JsonLines,
                finish_on_result: true,
                ..sample_command(&[])
            },
        )],
        |_| {},
    );
    let session = setup
        .runtime
        .spawn_process(&profile("generic"), &task(29))
        .await
        .unwrap();
    assert!(session.work_dir().ends_with("mosaic/coordinator/issue-29"));
    assert!(session.work_dir().starts_with(setup.runtime.work_root()));
    let outcome = wait_for_outcome(&session).await;
    assert_eq!(
        outcome,
        SessionOutcome::Succeeded {
            summary: "patched".to_owned(),
            tokens: 3400,
            cost_usd: None
        }
    );
    let usage = session.usage().await.unwrap().unwrap();
    assert_eq!((usage.used_tokens, usage.window), (1200, 8000));
    assert_eq!(session.latest_summary().as_deref(), Some("wrote the patch"));
    assert!(!setup.runtime.can_compact(&profile("generic")));
    assert!(matches!(
        session.compact("please").await,
        Err(mosaic_context::SessionError::Unsupported { .. })
    ));
    let log = std::fs::read_to_string(session.log_path()).unwrap();
    assert!(log.contains("[stdout] hello from a plain CLI"), "{log}");
    assert!(
        log.contains("[stderr] prompt: You are working on issue mosaic/coordinator#29"),
        "{log}"
    );
    assert!(
        !log.contains("\"type\":\"usage\""),
        "known lines stay out of the log"
    );
}

/// The agent's environment is built: the base set, `pass_env`, the profile's `env` and the
/// session variables; nothing else of the coordinator's (here: this test's) environment.
#[tokio::test]
async fn an_agent_sees_only_the_environment_built_for_it() {
    // Cargo sets CARGO_MANIFEST_DIR for this test process: it stands for a coordinator secret.
    let inherited = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    let script = r#"env > "$DUMP"; echo '{"type":"done","status":"success","summary":"dumped"}'"#;
    let dumps = tempfile::tempdir().unwrap();
    let command = |dump: &str, pass_env: &[&str]| AgentCommand {
        program: "sh".to_owned(),
        args: vec!["-c".to_owned(), script.to_owned()],
        env: [
            (
                "DUMP".to_owned(),
                dumps.path().join(dump).display().to_string(),
            ),
            ("AGENT_SETTING".to_owned(), "from-the-profile".to_owned()),
        ]
        .into(),
        pass_env: pass_env.iter().map(|name| (*name).to_owned()).collect(),
        input: InputMode::Text,
        can_compact: false,
        protocol: mosaic_runner::AgentProtocol::JsonLines,
        finish_on_result: true,
        ..sample_command(&[])
    };
    let setup = runtime(
        vec![
            ("plain", command("plain.env", &[])),
            (
                "forwarding",
                command(
                    "forwarding.env",
                    &["CARGO_MANIFEST_DIR", "NOT_SET_ANYWHERE_X"],
                ),
            ),
        ],
        |_| {},
    );
    let mut dumped = Vec::new();
    for (agent, number) in [("plain", 41), ("forwarding", 42)] {
        let session = setup
            .runtime
            .spawn(&profile(agent), &task(number))
            .await
            .unwrap();
        let outcome = wait_for_outcome(session.as_ref()).await;
        assert!(
            matches!(outcome, SessionOutcome::Succeeded { .. }),
            "{outcome:?}"
        );
        let text = std::fs::read_to_string(dumps.path().join(format!("{agent}.env"))).unwrap();
        let vars: std::collections::BTreeMap<String, String> = text
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect();
        assert_eq!(vars["MOSAIC_SESSION_ID"], session.id().as_str());
        assert_eq!(vars["MOSAIC_ISSUE"], format!("mosaic/coordinator#{number}"));
        assert_eq!(vars["MOSAIC_AGENT"], agent);
        assert_eq!(vars["AGENT_SETTING"], "from-the-profile");
        assert_eq!(vars.get("PATH"), std::env::var("PATH").ok().as_ref());
        dumped.push(vars);
    }
    let allowed = |name: &str| {
        mosaic_runner::config::BASE_ENV.contains(&name)
            || ["MOSAIC_SESSION_ID", "MOSAIC_ISSUE", "MOSAIC_AGENT", "DUMP", "AGENT_SETTING"]
                .contains(&name)
            // Set by sh itself.
            || ["PWD", "SHLVL", "_", "OLDPWD"].contains(&name)
    };
    let unexpected: Vec<&String> = dumped[0].keys().filter(|name| !allowed(name)).collect();
    assert!(unexpected.is_empty(), "inherited: {unexpected:?}");
    assert!(!dumped[0].values().any(|value| *value == inherited));
    assert_eq!(dumped[1].get("CARGO_MANIFEST_DIR"), Some(&inherited));
    assert!(!dumped[1].contains_key("NOT_SET_ANYWHERE_X"));
}

/// stderr reaches the session log and the failure reason only redacted and without escapes.
#[tokio::test]
async fn agent_stderr_is_redacted_in_the_log_and_the_failure_reason() {
    let script = r#"printf '\033[31mpush failed\033[0m with token gitea-bot-token-0123456\n' >&2
printf 'webhook secret: whsec-topsecret-42\033]0;title\007\n' >&2
exit 4"#;
    let setup = runtime(
        vec![(
            "leaky",
            AgentCommand {
                program: "sh".to_owned(),
                args: vec!["-c".to_owned(), script.to_owned()],
                input: InputMode::Text,
                can_compact: false,
                protocol: mosaic_runner::AgentProtocol::JsonLines,
                finish_on_result: true,
                ..sample_command(&[])
            },
        )],
        |_| {},
    );
    let secrets = [
        mosaic_security::Secret::new("gitea-bot-token-0123456"),
        mosaic_security::Secret::new("whsec-topsecret-42"),
    ];
    let runtime = setup
        .runtime
        .clone()
        .with_redactor(mosaic_security::Redactor::new(&secrets));
    let session = runtime
        .spawn_process(&profile("leaky"), &task(43))
        .await
        .unwrap();
    let outcome = wait_for_outcome(&session).await;
    let SessionOutcome::Failed { reason } = &outcome else {
        panic!("{outcome:?}");
    };
    let log = std::fs::read_to_string(session.log_path()).unwrap();
    for text in [reason.as_str(), log.as_str()] {
        assert!(!text.contains("gitea-bot-token-0123456"), "{text}");
        assert!(!text.contains("whsec-topsecret-42"), "{text}");
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}'),
            "{text:?}"
        );
    }
    assert_eq!(
        reason,
        "exited with status 4; stderr: push failed with token [redacted] | webhook secret: [redacted]"
    );
    assert!(
        log.contains("[stderr] push failed with token [redacted]\n"),
        "{log}"
    );
}
