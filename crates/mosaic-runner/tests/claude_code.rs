#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]
//! `protocol = "claude_code"` sessions with the REAL Claude Code CLI against the scripted
//! Messages API stand-in: compaction through `/compact`, rotation at a turn boundary, the spend
//! the CLI reports, and a failing model API.
//!
//! The CLI is taken from `$MOSAIC_CLAUDE_BIN`, else `<repo>/.cache/agents/node_modules/.bin/claude`.
//! Without it the tests return after one line saying how to install it, except under `CI=true`,
//! where they fail.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use mosaic_claude_standin::{
    Block, MessagesStandin, Reply, Script, StandinHandle, Step, Usage, claude_stream_json_args,
};
use mosaic_context::{
    AgentSession, AgentSpend, COMPACTION_PROMPT, CompactionRecord, ContextMonitor, ContextUsage,
    HandoverError, HandoverSource, LiveSession, MonitorConfig, MonitorSink, SessionOutcome,
    SessionRotation, SessionSnapshot, SessionTask, SinkError,
};
use mosaic_domain::{AgentProfile, Difficulty, IssueRef, RepoName};
use mosaic_runner::{
    AgentCommand, AgentProtocol, InputMode, ProcessRuntime, ProcessSession, RunnerConfig,
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(120);

fn claude_bin() -> Option<PathBuf> {
    mosaic_claude_standin::claude_cli()
}

fn profile(self_hosted: bool) -> AgentProfile {
    AgentProfile {
        name: "claude".to_owned(),
        context_window: 200_000,
        cost_input_per_mtok: 3.0,
        cost_output_per_mtok: 15.0,
        max_difficulty: Difficulty::High,
        self_hosted,
        enabled: true,
        compact_threshold: None,
        rotate_threshold: None,
    }
}

fn task() -> SessionTask {
    let repo = RepoName::new("mosaic", "coordinator").unwrap();
    SessionTask {
        issue: IssueRef::new(repo.clone(), 42),
        title: "Implement the parser".to_owned(),
        body: "Write it.".to_owned(),
        repository: repo,
        acceptance_criteria: Vec::new(),
        handover_summary: None,
        work_dir: None,
    }
}

/// A runtime whose agent `claude` is the real CLI, as the ready profile of docs/AGENTS.md
/// configures it, pointed at the stand-in with a HOME of its own.
struct Setup {
    runtime: ProcessRuntime,
    _dir: tempfile::TempDir,
}

fn setup(
    bin: &Path,
    standin: &StandinHandle,
    finish_on_result: bool,
    extra_env: &[(&str, &str)],
) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let mut env: BTreeMap<String, String> = [
        ("HOME", home.display().to_string()),
        ("ANTHROPIC_BASE_URL", standin.base_url()),
        ("ANTHROPIC_API_KEY", "sk-ant-standin-dummy".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for (name, value) in extra_env {
        env.insert((*name).to_owned(), (*value).to_owned());
    }
    let mut config = RunnerConfig::new(dir.path().join("work"));
    config.kill_grace_secs = Duration::from_secs(5);
    config.compact_timeout_secs = WAIT;
    config.rotate_wait_secs = WAIT;
    config.agents.insert(
        "claude".to_owned(),
        AgentCommand {
            program: bin.display().to_string(),
            args: claude_stream_json_args(&[
                "--permission-mode",
                "acceptEdits",
                "--allowedTools",
                "Bash(sleep:*)",
                "Bash(touch:*)",
            ]),
            env,
            pass_env: Vec::new(),
            input: InputMode::JsonLines,
            can_compact: true,
            protocol: AgentProtocol::ClaudeCode,
            finish_on_result,
            stall_timeout_secs: Some(WAIT),
            time_limit_secs: Some(Duration::from_secs(600)),
        },
    );
    Setup {
        runtime: ProcessRuntime::new(config).unwrap(),
        _dir: dir,
    }
}

fn usage(input: u64, cache_creation: u64, cache_read: u64, output: u64) -> Usage {
    Usage {
        input_tokens: input,
        cache_creation_input_tokens: cache_creation,
        cache_read_input_tokens: cache_read,
        output_tokens: output,
    }
}

/// What the CLI reports for these answers: their tokens summed, at Sonnet 4.5 list prices
/// ($3 input, $3.75 cache write, $0.30 cache read, $15 output per million; measured to 1e-9).
fn spend_of(answers: &[Usage]) -> AgentSpend {
    let mut spend = AgentSpend::default();
    for answer in answers {
        spend.input_tokens += answer.input_tokens;
        spend.output_tokens += answer.output_tokens;
        spend.cache_read_tokens += answer.cache_read_input_tokens;
        spend.cache_creation_tokens += answer.cache_creation_input_tokens;
    }
    #[allow(clippy::cast_precision_loss)]
    let per_million = |tokens: u64, price: f64| tokens as f64 * price / 1_000_000.0;
    spend.cost_usd = per_million(spend.input_tokens, 3.0)
        + per_million(spend.cache_creation_tokens, 3.75)
        + per_million(spend.cache_read_tokens, 0.30)
        + per_million(spend.output_tokens, 15.0);
    spend
}

fn assert_spend(actual: AgentSpend, expected: AgentSpend) {
    assert_eq!(
        (
            actual.input_tokens,
            actual.output_tokens,
            actual.cache_read_tokens,
            actual.cache_creation_tokens
        ),
        (
            expected.input_tokens,
            expected.output_tokens,
            expected.cache_read_tokens,
            expected.cache_creation_tokens
        ),
        "{actual:?} vs {expected:?}"
    );
    assert!(
        (actual.cost_usd - expected.cost_usd).abs() < 1e-9,
        "{actual:?} vs {expected:?}"
    );
}

/// Waits until the session's state satisfies `ready`.
async fn wait_for(
    session: &ProcessSession,
    what: &str,
    ready: impl Fn(&SessionSnapshot) -> bool,
) -> SessionSnapshot {
    let mut updates = session.subscribe();
    let found = tokio::time::timeout(WAIT, async {
        loop {
            let snapshot = updates.borrow_and_update().clone();
            if ready(&snapshot) {
                return snapshot;
            }
            updates.changed().await.unwrap();
        }
    })
    .await;
    found.unwrap_or_else(|_| {
        panic!(
            "{what}: not within {WAIT:?}; state: {:?}",
            session.subscribe().borrow()
        )
    })
}

#[tokio::test]
async fn past_80_percent_slash_compact_frees_the_context_and_the_session_goes_on() {
    let Some(bin) = claude_bin() else { return };
    let first = usage(2_000, 8_000, 160_000, 300); // 170k of 200k: 85%
    let second = usage(1_500, 500, 3_000, 200);
    let standin = MessagesStandin::start(Script::new(vec![
        Step::Reply(Reply::text("Parser implemented.", first)),
        Step::Reply(Reply::text("Tests written.", second)),
    ]))
    .await
    .unwrap();
    let setup = setup(&bin, &standin, false, &[]);
    let session = setup
        .runtime
        .spawn_process(&profile(false), &task())
        .await
        .unwrap();

    let after_first = wait_for(&session, "first turn", |s| s.turns >= 1).await;
    let before = after_first.usage.unwrap();
    assert_eq!(before.used_tokens, 170_000);
    assert!(before.fraction() >= 0.8, "{before:?}");
    assert!(
        after_first.outcome.is_running(),
        "a result ends a turn, not the session"
    );
    assert_spend(after_first.spend, spend_of(&[first]));

    let after = session.compact(COMPACTION_PROMPT).await.unwrap();
    assert!(after.used_tokens < before.used_tokens / 10, "{after:?}");
    // The window the CLI reported (modelUsage.<model>.contextWindow).
    assert_eq!(after.window, 200_000);
    let compaction_requests: Vec<_> = standin
        .requests()
        .into_iter()
        .filter(|request| request.is_compaction())
        .collect();
    assert_eq!(compaction_requests.len(), 1, "{compaction_requests:?}");
    assert!(
        compaction_requests[0]
            .last_user_text
            .contains("Replace the conversation so far with a concise summary"),
        "{}",
        compaction_requests[0].last_user_text
    );
    let compacted = wait_for(&session, "the /compact turn", |s| s.turns >= 2).await;
    assert_eq!(compacted.compactions, 1);
    assert!(compacted.outcome.is_running());

    session.send("Now write the tests.").await.unwrap();
    wait_for(&session, "third turn", |s| s.turns >= 3).await;
    let outcome = tokio::time::timeout(WAIT, session.finish())
        .await
        .unwrap()
        .unwrap();
    let final_state = session.subscribe().borrow().clone();
    let expected = spend_of(&[first, Script::new(vec![]).compaction.usage, second]);
    assert_spend(final_state.spend, expected);
    let SessionOutcome::Succeeded {
        summary,
        tokens,
        cost_usd,
    } = outcome
    else {
        panic!("{outcome:?}");
    };
    assert_eq!(summary, "Tests written.");
    assert_eq!(tokens, expected.total_tokens());
    assert!((cost_usd.unwrap() - expected.cost_usd).abs() < 1e-9);
    assert_eq!(standin.steps_used(), 2);
}

#[tokio::test]
async fn rotation_past_95_percent_waits_for_the_turns_result() {
    let Some(bin) = claude_bin() else { return };
    // 172k: 95.6% of a profile window of 180k. Not 96% of the CLI's 200k: with automatic
    // compaction off, 2.1.328 refuses any further call at 192k (`blocking_limit`, measured here),
    // so a Claude Code profile must rotate below that (see docs/AGENTS.md).
    let calling = usage(2_000, 10_000, 160_000, 400);
    let answering = usage(1_000, 1_000, 171_000, 100);
    let standin = MessagesStandin::start(Script::new(vec![
        Step::Reply(Reply::tool_calls(
            vec![
                Block::text("Running the slow step."),
                Block::tool_use(
                    "Bash",
                    json!({"command": "sleep 3 && touch slept.txt", "description": "Slow step"}),
                ),
            ],
            calling,
        )),
        Step::Reply(Reply::text("Slow step done.", answering)),
    ]))
    .await
    .unwrap();
    let setup = setup(&bin, &standin, true, &[]);
    let narrow = AgentProfile {
        context_window: 180_000,
        ..profile(false)
    };
    let session = setup.runtime.spawn_process(&narrow, &task()).await.unwrap();
    let reading = wait_for(&session, "a reading past 95%", |s| {
        s.usage.is_some_and(|usage| usage.fraction() >= 0.95)
    })
    .await;
    assert_eq!(reading.turns, 0, "the turn is still under way");

    let asked = Instant::now();
    let outcome = session
        .close_after_turn("rotation: context at 95.6%")
        .await
        .unwrap();
    let waited = asked.elapsed();
    // The tool ran to its end and the model answered once more before the session ended.
    assert!(
        session.work_dir().join("slept.txt").exists(),
        "the Bash step was cut off"
    );
    assert!(waited >= Duration::from_secs(1), "{waited:?}");
    assert_eq!(
        outcome,
        SessionOutcome::Succeeded {
            summary: "Slow step done.".to_owned(),
            tokens: spend_of(&[calling, answering]).total_tokens(),
            cost_usd: Some(spend_of(&[calling, answering]).cost_usd),
        }
    );
    let state = session.subscribe().borrow().clone();
    assert_eq!(state.turns, 1);
    assert_spend(state.spend, spend_of(&[calling, answering]));
    assert_eq!(standin.steps_used(), 2);
}

#[tokio::test]
async fn a_failing_model_api_fails_the_session_with_its_spend() {
    let Some(bin) = claude_bin() else { return };
    let first = usage(3_000, 2_000, 10_000, 250);
    let standin = MessagesStandin::start(Script::new(vec![
        Step::Reply(Reply::text("Started.", first)),
        Step::outage(),
        Step::outage(),
        Step::outage(),
        Step::outage(),
    ]))
    .await
    .unwrap();
    let setup = setup(&bin, &standin, true, &[("CLAUDE_CODE_MAX_RETRIES", "1")]);
    let session = setup
        .runtime
        .spawn_process(&profile(false), &task())
        .await
        .unwrap();
    let mut updates = session.subscribe();
    // Sent at once, so finish_on_result closes stdin only after both turns have their result.
    session.send("Continue.").await.unwrap();
    let retrying = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(retry) = updates.borrow_and_update().api_retry.clone() {
                return retry;
            }
            updates.changed().await.unwrap();
        }
    })
    .await
    .expect("no api_retry shown in the session state");
    assert_eq!(retrying.error_status, Some(500));
    assert_eq!(retrying.max_retries, Some(1));

    let outcome = tokio::time::timeout(WAIT, mosaic_context::wait_for_outcome(&session))
        .await
        .unwrap();
    let SessionOutcome::Failed { reason } = &outcome else {
        panic!("{outcome:?}");
    };
    assert!(reason.contains("API Error: 500"), "{reason}");
    assert!(reason.contains("terminal_reason: api_error"), "{reason}");
    let state = session.subscribe().borrow().clone();
    assert_eq!(state.turns, 2);
    assert_eq!(state.api_retry, None, "the result ends the retrying");
    assert_spend(state.spend, spend_of(&[first]));
    assert!(state.spend.cost_usd > 0.0);
}

#[tokio::test]
async fn a_self_hosted_profile_costs_nothing_whatever_the_cli_reports() {
    let Some(bin) = claude_bin() else { return };
    let only = usage(5_000, 0, 0, 500);
    let standin =
        MessagesStandin::start(Script::new(vec![Step::Reply(Reply::text("Done.", only))]))
            .await
            .unwrap();
    let setup = setup(&bin, &standin, true, &[]);
    let session = setup
        .runtime
        .spawn_process(&profile(true), &task())
        .await
        .unwrap();
    let outcome = tokio::time::timeout(WAIT, mosaic_context::wait_for_outcome(&session))
        .await
        .unwrap();
    let expected = AgentSpend {
        cost_usd: 0.0,
        ..spend_of(&[only])
    };
    assert_eq!(
        outcome,
        SessionOutcome::Succeeded {
            summary: "Done.".to_owned(),
            tokens: expected.total_tokens(),
            cost_usd: Some(0.0),
        }
    );
    assert_spend(session.subscribe().borrow().spend, expected);
}

/// Records what the monitor reports; hands over nothing, so a rotation ends the chain.
#[derive(Debug, Default)]
struct Records {
    rotations: Mutex<Vec<SessionRotation>>,
}

#[async_trait]
impl MonitorSink for Records {
    async fn on_usage(&self, _: &LiveSession, _: &ContextUsage) -> Result<(), SinkError> {
        Ok(())
    }
    async fn on_compaction(&self, _: &CompactionRecord) -> Result<(), SinkError> {
        Ok(())
    }
    async fn on_rotation(&self, record: &SessionRotation) -> Result<(), SinkError> {
        self.rotations.lock().unwrap().push(record.clone());
        Ok(())
    }
    async fn on_outcome(&self, _: &LiveSession, _: &SessionOutcome) -> Result<(), SinkError> {
        Ok(())
    }
}

#[async_trait]
impl HandoverSource for Records {
    async fn next_issue_for(
        &self,
        _agent: &str,
        _unfinished: &SessionTask,
    ) -> Result<Option<SessionTask>, HandoverError> {
        Ok(None)
    }
    async fn requeue(&self, _task: &SessionTask, _reason: &str) -> Result<(), HandoverError> {
        Ok(())
    }
}

#[tokio::test]
async fn the_monitor_rotates_at_the_turn_boundary_and_records_the_old_sessions_spend() {
    let Some(bin) = claude_bin() else { return };
    let calling = usage(2_000, 10_000, 160_000, 400); // 172k of a 180k profile window: 95.6%
    let answering = usage(1_000, 1_000, 171_000, 100);
    let standin = MessagesStandin::start(Script::new(vec![
        Step::Reply(Reply::tool_calls(
            vec![Block::tool_use(
                "Bash",
                json!({"command": "sleep 2 && touch slept.txt", "description": "Slow step"}),
            )],
            calling,
        )),
        Step::Reply(Reply::text("Slow step done.", answering)),
    ]))
    .await
    .unwrap();
    let setup = setup(&bin, &standin, true, &[]);
    let records = Arc::new(Records::default());
    let monitor = ContextMonitor::new(
        Arc::new(setup.runtime.clone()),
        Arc::clone(&records) as Arc<dyn MonitorSink>,
        Arc::clone(&records) as Arc<dyn HandoverSource>,
        MonitorConfig {
            poll_interval: Duration::from_millis(200),
            ..MonitorConfig::default()
        },
    );
    let narrow = AgentProfile {
        context_window: 180_000,
        ..profile(false)
    };
    let session = monitor.start(&narrow, task()).await.unwrap();
    let rotation = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(rotation) = records.rotations.lock().unwrap().first().cloned() {
                return rotation;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("no rotation recorded");
    assert!(rotation.success, "{rotation:?}");
    assert_eq!(rotation.new_session_id, None, "nothing was handed over");
    assert_eq!(rotation.context_before_tokens, 172_000);
    // Closed after the turn's result: the tool ran and the model answered once more.
    let state = session.subscribe().borrow().clone();
    assert_eq!(state.turns, 1, "{state:?}");
    assert!(
        setup
            .runtime
            .work_dir_for(&task().issue)
            .unwrap()
            .join("slept.txt")
            .exists(),
        "the Bash step was cut off"
    );
    assert_spend(rotation.old_spend, spend_of(&[calling, answering]));
    assert_eq!(standin.steps_used(), 2);
}

#[tokio::test]
async fn a_compaction_asked_for_mid_turn_runs_after_the_turn() {
    let Some(bin) = claude_bin() else { return };
    let calling = usage(2_000, 8_000, 160_000, 300); // 170k of 200k: 85%
    let answering = usage(1_000, 1_000, 169_000, 100);
    let standin = MessagesStandin::start(Script::new(vec![
        Step::Reply(Reply::tool_calls(
            vec![Block::tool_use(
                "Bash",
                json!({"command": "sleep 2 && touch slept.txt", "description": "Slow step"}),
            )],
            calling,
        )),
        Step::Reply(Reply::text("Slow step done.", answering)),
    ]))
    .await
    .unwrap();
    let setup = setup(&bin, &standin, true, &[]);
    let session = setup
        .runtime
        .spawn_process(&profile(false), &task())
        .await
        .unwrap();
    let reading = wait_for(&session, "a reading past 80%", |s| {
        s.usage.is_some_and(|usage| usage.fraction() >= 0.8)
    })
    .await;
    assert_eq!(reading.turns, 0, "the turn is still under way");
    let after = session.compact(COMPACTION_PROMPT).await.unwrap();
    assert!(after.used_tokens < 20_000, "{after:?}");
    let outcome = tokio::time::timeout(WAIT, mosaic_context::wait_for_outcome(&session))
        .await
        .unwrap();
    // The turn's own result stays the session's result; the /compact turn does not replace it.
    assert!(
        matches!(&outcome, SessionOutcome::Succeeded { summary, .. } if summary == "Slow step done."),
        "{outcome:?}"
    );
    let state = session.subscribe().borrow().clone();
    assert_eq!((state.turns, state.compactions), (2, 1), "{state:?}");
    assert!(session.work_dir().join("slept.txt").exists());
    let main_calls: Vec<_> = standin
        .requests()
        .into_iter()
        .filter(|request| request.is_main() || request.is_compaction())
        .map(|request| request.kind)
        .collect();
    assert_eq!(
        main_calls,
        [
            mosaic_claude_standin::RequestKind::Step(0),
            mosaic_claude_standin::RequestKind::Step(1),
            mosaic_claude_standin::RequestKind::Compaction
        ]
    );
}
