#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The context monitor against in-memory sessions: compaction, rotation, failed spawns, polling,
//! outcomes, and a faulty session next to a healthy one.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use mosaic_context::{
    AgentRuntime, AgentSession, COMPACTION_PROMPT, COMPACTION_PROMPT_VERSION, CompactionRecord,
    ContextMonitor, ContextThresholds, ContextUsage, HandoverError, HandoverSource, KillReason,
    LiveSession, MockAgentRuntime, MonitorConfig, MonitorError, MonitorSink, RetryPolicy,
    RuntimeError, SessionError, SessionId, SessionOutcome, SessionRotation, SessionSnapshot,
    SessionTask, SinkError, TurnResult,
};
use mosaic_domain::{AgentProfile, Difficulty, IssueRef, RepoName};
use tokio::sync::watch;

/// How a fake session answers a compaction request.
#[derive(Debug, Clone, Copy)]
enum CompactBehaviour {
    ShrinkTo(u64),
    Fail,
    Panic,
}

#[derive(Debug)]
struct FakeSession {
    id: SessionId,
    issue: IssueRef,
    window: u64,
    state: watch::Sender<SessionSnapshot>,
    compact: Mutex<VecDeque<CompactBehaviour>>,
    compact_prompts: Mutex<Vec<String>>,
    /// Readings `usage()` hands out when polled (for sessions that push nothing).
    polled: Mutex<Option<u64>>,
    failing_usage: bool,
    closed_with: Mutex<Option<String>>,
}

impl FakeSession {
    fn new(issue: IssueRef, window: u64) -> Arc<Self> {
        let (state, _) = watch::channel(SessionSnapshot::new(Utc::now()));
        Arc::new(Self {
            id: SessionId::generate(),
            issue,
            window,
            state,
            compact: Mutex::new(VecDeque::new()),
            compact_prompts: Mutex::new(Vec::new()),
            polled: Mutex::new(None),
            failing_usage: false,
            closed_with: Mutex::new(None),
        })
    }

    fn failing(issue: IssueRef, window: u64) -> Arc<Self> {
        let (state, _) = watch::channel(SessionSnapshot::new(Utc::now()));
        Arc::new(Self {
            id: SessionId::generate(),
            issue,
            window,
            state,
            compact: Mutex::new(VecDeque::new()),
            compact_prompts: Mutex::new(Vec::new()),
            polled: Mutex::new(None),
            failing_usage: true,
            closed_with: Mutex::new(None),
        })
    }

    fn on_compact(&self, behaviour: CompactBehaviour) {
        self.compact.lock().unwrap().push_back(behaviour);
    }

    fn push(&self, used: u64) {
        let usage = ContextUsage::new(used, self.window).unwrap();
        self.state.send_modify(|snapshot| {
            snapshot.usage = Some(usage);
            snapshot.usage_seq += 1;
        });
    }

    fn finish(&self, outcome: SessionOutcome) {
        self.state
            .send_modify(|snapshot| snapshot.outcome = outcome);
    }
}

#[async_trait]
impl AgentSession for FakeSession {
    fn id(&self) -> &SessionId {
        &self.id
    }
    fn agent_type(&self) -> &str {
        "glm"
    }
    fn issue(&self) -> &IssueRef {
        &self.issue
    }
    fn process_id(&self) -> Option<u32> {
        None
    }
    async fn usage(&self) -> Result<Option<ContextUsage>, SessionError> {
        if self.failing_usage {
            return Err(SessionError::Io {
                session: self.id.clone(),
                message: "agent API unreachable".to_owned(),
            });
        }
        if let Some(used) = *self.polled.lock().unwrap() {
            return Ok(Some(ContextUsage::new(used, self.window)?));
        }
        Ok(self.state.borrow().usage)
    }
    async fn send(&self, _prompt: &str) -> Result<(), SessionError> {
        Ok(())
    }
    async fn compact(&self, instructions: &str) -> Result<ContextUsage, SessionError> {
        self.compact_prompts
            .lock()
            .unwrap()
            .push(instructions.to_owned());
        let behaviour = self.compact.lock().unwrap().pop_front();
        match behaviour {
            Some(CompactBehaviour::ShrinkTo(used)) => {
                self.push(used);
                Ok(ContextUsage::new(used, self.window)?)
            }
            Some(CompactBehaviour::Panic) => panic!("compaction blew up"),
            Some(CompactBehaviour::Fail) | None => Err(SessionError::CompactionTimeout {
                session: self.id.clone(),
                waited: Duration::from_secs(1),
            }),
        }
    }
    async fn close(&self, reason: &str) -> Result<SessionOutcome, SessionError> {
        *self.closed_with.lock().unwrap() = Some(reason.to_owned());
        if self.state.borrow().outcome.is_running() {
            self.finish(SessionOutcome::Killed {
                reason: KillReason::Closed {
                    reason: reason.to_owned(),
                },
            });
        }
        Ok(self.outcome())
    }
    fn outcome(&self) -> SessionOutcome {
        self.state.borrow().outcome.clone()
    }
    fn latest_summary(&self) -> Option<String> {
        Some(format!("progress of {}", self.id))
    }
    fn subscribe(&self) -> watch::Receiver<SessionSnapshot> {
        self.state.subscribe()
    }
}

/// Hands out prepared fake sessions, in order.
#[derive(Debug, Default)]
struct FakeRuntime {
    sessions: Mutex<VecDeque<Arc<FakeSession>>>,
    spawned_tasks: Mutex<Vec<SessionTask>>,
    can_compact: bool,
}

#[async_trait]
impl AgentRuntime for FakeRuntime {
    // Its sessions are made ahead, with ids of their own.
    async fn spawn_with_id(
        &self,
        _id: SessionId,
        profile: &AgentProfile,
        task: &SessionTask,
    ) -> Result<Arc<dyn AgentSession>, RuntimeError> {
        self.spawned_tasks.lock().unwrap().push(task.clone());
        let session =
            self.sessions
                .lock()
                .unwrap()
                .pop_front()
                .ok_or_else(|| RuntimeError::Spawn {
                    agent: profile.name.clone(),
                    message: "no more fake sessions".to_owned(),
                })?;
        Ok(session)
    }
    fn can_compact(&self, _profile: &AgentProfile) -> bool {
        self.can_compact
    }
}

#[derive(Debug, Default)]
struct RecordingSink {
    usages: Mutex<Vec<(SessionId, ContextUsage)>>,
    compactions: Mutex<Vec<CompactionRecord>>,
    rotations: Mutex<Vec<SessionRotation>>,
    outcomes: Mutex<Vec<(LiveSession, SessionOutcome)>>,
    refuse_first: AtomicU32,
    /// The sessions asked what next while waiting for input (each is sent a next turn).
    waits: Mutex<Vec<SessionId>>,
}

#[async_trait]
impl MonitorSink for RecordingSink {
    async fn on_usage(&self, session: &LiveSession, usage: &ContextUsage) -> Result<(), SinkError> {
        self.usages
            .lock()
            .unwrap()
            .push((session.session_id.clone(), *usage));
        Ok(())
    }
    async fn on_compaction(&self, record: &CompactionRecord) -> Result<(), SinkError> {
        self.compactions.lock().unwrap().push(record.clone());
        Ok(())
    }
    async fn on_rotation(&self, record: &SessionRotation) -> Result<(), SinkError> {
        // The store may be briefly unavailable: the monitor has to retry.
        if self
            .refuse_first
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(SinkError("database is locked".to_owned()));
        }
        self.rotations.lock().unwrap().push(record.clone());
        Ok(())
    }
    async fn on_outcome(
        &self,
        session: &LiveSession,
        outcome: &SessionOutcome,
    ) -> Result<(), SinkError> {
        self.outcomes
            .lock()
            .unwrap()
            .push((session.clone(), outcome.clone()));
        Ok(())
    }
    async fn on_waiting(
        &self,
        session: &LiveSession,
        _result: &TurnResult,
    ) -> Result<mosaic_context::NextTurn, SinkError> {
        self.waits.lock().unwrap().push(session.session_id.clone());
        Ok(mosaic_context::NextTurn::Continue("go on".to_owned()))
    }
}

#[derive(Debug, Default)]
struct RecordingHandover {
    asked: Mutex<Vec<(String, SessionTask)>>,
    requeued: Mutex<Vec<(SessionTask, String)>>,
    next_queued: Mutex<Option<SessionTask>>,
}

#[async_trait]
impl HandoverSource for RecordingHandover {
    async fn next_issue_for(
        &self,
        agent_type: &str,
        unfinished: &SessionTask,
    ) -> Result<Option<SessionTask>, HandoverError> {
        self.asked
            .lock()
            .unwrap()
            .push((agent_type.to_owned(), unfinished.clone()));
        let queued = self.next_queued.lock().unwrap().take();
        Ok(Some(queued.unwrap_or_else(|| unfinished.clone())))
    }
    async fn requeue(&self, task: &SessionTask, reason: &str) -> Result<(), HandoverError> {
        self.requeued
            .lock()
            .unwrap()
            .push((task.clone(), reason.to_owned()));
        Ok(())
    }
}

fn issue(number: u64) -> IssueRef {
    IssueRef::new(RepoName::new("mosaic", "coordinator").unwrap(), number)
}

fn task(number: u64) -> SessionTask {
    SessionTask {
        issue: issue(number),
        title: format!("Issue {number}"),
        body: "Do the thing.".to_owned(),
        repository: RepoName::new("mosaic", "coordinator").unwrap(),
        acceptance_criteria: vec!["it works".to_owned()],
        handover_summary: None,
        work_dir: None,
    }
}

fn profile() -> AgentProfile {
    AgentProfile {
        name: "glm".to_owned(),
        context_window: 1000,
        cost_input_per_mtok: 0.0,
        cost_output_per_mtok: 0.0,
        max_difficulty: Difficulty::High,
        self_hosted: true,
        enabled: true,
        compact_threshold: None,
        rotate_threshold: None,
    }
}

fn fast_config() -> MonitorConfig {
    let quick = RetryPolicy {
        attempts: 3,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(40),
    };
    MonitorConfig {
        poll_interval: Duration::from_millis(50),
        spawn_retry: quick,
        sink_retry: quick,
        poll_error_backoff: quick,
        ..MonitorConfig::default()
    }
}

struct Harness {
    monitor: ContextMonitor,
    runtime: Arc<FakeRuntime>,
    sink: Arc<RecordingSink>,
    handover: Arc<RecordingHandover>,
}

fn harness(runtime: FakeRuntime, config: MonitorConfig) -> Harness {
    let runtime = Arc::new(runtime);
    let sink = Arc::new(RecordingSink::default());
    let handover = Arc::new(RecordingHandover::default());
    let monitor = ContextMonitor::new(
        Arc::clone(&runtime) as Arc<dyn AgentRuntime>,
        Arc::clone(&sink) as Arc<dyn MonitorSink>,
        Arc::clone(&handover) as Arc<dyn HandoverSource>,
        config,
    );
    Harness {
        monitor,
        runtime,
        sink,
        handover,
    }
}

async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..200 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test]
async fn compacts_at_the_compact_threshold_and_keeps_the_session() {
    let h = harness(
        FakeRuntime {
            can_compact: true,
            ..FakeRuntime::default()
        },
        fast_config(),
    );
    let session = FakeSession::new(issue(1), 1000);
    session.on_compact(CompactBehaviour::ShrinkTo(300));
    h.monitor
        .watch(session.clone(), profile(), task(1))
        .unwrap();

    session.push(799); // 79.9 %: nothing happens
    eventually("first usage recorded", || {
        h.sink.usages.lock().unwrap().len() == 1
    })
    .await;
    session.push(800); // 80 %: compact
    eventually("compaction recorded", || {
        !h.sink.compactions.lock().unwrap().is_empty()
    })
    .await;

    let record = h.sink.compactions.lock().unwrap()[0].clone();
    assert_eq!(record.session_id, session.id);
    assert_eq!(record.issue, issue(1));
    assert_eq!(record.agent_type, "glm");
    assert_eq!(record.prompt_version, COMPACTION_PROMPT_VERSION);
    assert_eq!(record.result.before_tokens, 800);
    assert_eq!(record.result.after_tokens, 300);
    assert_eq!(record.result.freed_tokens, 500);
    assert!((record.result.freed_percent - 62.5).abs() < 1e-9);
    assert!(record.result.success);
    assert_eq!(record.error_message, None);
    assert_eq!(
        session.compact_prompts.lock().unwrap().as_slice(),
        [COMPACTION_PROMPT]
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(h.sink.rotations.lock().unwrap().is_empty());
    assert_eq!(session.closed_with.lock().unwrap().as_deref(), None);
    let live = h.monitor.live_sessions();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].usage.map(|u| u.used_tokens), Some(300));
}

#[tokio::test]
async fn rotates_at_the_rotate_threshold_with_a_complete_record() {
    let replacement = FakeSession::new(issue(2), 1000);
    let h = harness(
        FakeRuntime {
            sessions: Mutex::new(VecDeque::from([replacement.clone()])),
            can_compact: true,
            ..FakeRuntime::default()
        },
        fast_config(),
    );
    // The store refuses the first rotation record; the monitor must retry it.
    h.sink.refuse_first.store(1, Ordering::SeqCst);
    let session = FakeSession::new(issue(2), 1000);
    h.monitor
        .watch(session.clone(), profile(), task(2))
        .unwrap();
    let before = Utc::now();
    session.push(949); // 94.9 %: compaction (which fails here), so rotation anyway
    session.on_compact(CompactBehaviour::ShrinkTo(949));
    eventually("rotation recorded", || {
        !h.sink.rotations.lock().unwrap().is_empty()
    })
    .await;

    let rotation = h.sink.rotations.lock().unwrap()[0].clone();
    assert_eq!(rotation.old_session_id, session.id);
    assert_eq!(rotation.new_session_id, Some(replacement.id.clone()));
    assert_eq!(rotation.agent_type, "glm");
    assert_eq!(rotation.issue, issue(2));
    assert_eq!(rotation.next_issue, Some(issue(2)));
    assert_eq!(rotation.context_before_tokens, 949);
    assert!((rotation.context_before_percent - 94.9).abs() < 1e-9);
    assert!(rotation.success);
    assert_eq!(rotation.error_message, None);
    assert_eq!(rotation.attempt, 1);
    assert!(rotation.at >= before && rotation.at <= Utc::now());

    let compaction = h.sink.compactions.lock().unwrap()[0].clone();
    assert!(!compaction.result.success, "949 stays above the threshold");
    assert!(
        session
            .closed_with
            .lock()
            .unwrap()
            .as_deref()
            .unwrap()
            .starts_with("rotation: compaction left 949 tokens")
    );
    // Handover: the unfinished issue with the old session's latest summary.
    let spawned = h.runtime.spawned_tasks.lock().unwrap().clone();
    assert_eq!(spawned.len(), 1);
    assert_eq!(spawned[0].issue, issue(2));
    assert_eq!(
        spawned[0].handover_summary.as_deref(),
        Some(format!("progress of {}", session.id).as_str())
    );
    assert_eq!(h.handover.asked.lock().unwrap()[0].0, "glm");

    // The monitor now watches the replacement, and decides on its readings.
    let live = h.monitor.live_sessions();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].session_id, replacement.id);
    assert_eq!(live[0].rotations, 1);
    replacement.push(990);
    eventually("replacement rotated too (no more sessions)", || {
        h.sink.rotations.lock().unwrap().len() >= 2
    })
    .await;
}

#[tokio::test]
async fn rotates_instead_of_compacting_when_the_runtime_cannot_compact() {
    let replacement = FakeSession::new(issue(3), 1000);
    let h = harness(
        FakeRuntime {
            sessions: Mutex::new(VecDeque::from([replacement.clone()])),
            can_compact: false,
            ..FakeRuntime::default()
        },
        fast_config(),
    );
    let session = FakeSession::new(issue(3), 1000);
    h.monitor
        .watch(session.clone(), profile(), task(3))
        .unwrap();
    session.push(850);
    eventually("rotation recorded", || {
        !h.sink.rotations.lock().unwrap().is_empty()
    })
    .await;
    assert!(session.compact_prompts.lock().unwrap().is_empty());
    assert!(h.sink.compactions.lock().unwrap().is_empty());
    assert!(
        session
            .closed_with
            .lock()
            .unwrap()
            .as_deref()
            .unwrap()
            .contains("cannot compact")
    );
}

#[tokio::test]
async fn hands_over_the_next_queued_issue_when_the_engine_says_so() {
    let replacement = FakeSession::new(issue(5), 1000);
    let h = harness(
        FakeRuntime {
            sessions: Mutex::new(VecDeque::from([replacement.clone()])),
            ..FakeRuntime::default()
        },
        fast_config(),
    );
    *h.handover.next_queued.lock().unwrap() = Some(task(5));
    let session = FakeSession::new(issue(4), 1000);
    h.monitor
        .watch(session.clone(), profile(), task(4))
        .unwrap();
    session.push(1000);
    eventually("rotation recorded", || {
        !h.sink.rotations.lock().unwrap().is_empty()
    })
    .await;
    let rotation = h.sink.rotations.lock().unwrap()[0].clone();
    assert_eq!(rotation.issue, issue(4));
    assert_eq!(rotation.next_issue, Some(issue(5)));
    assert!((rotation.context_before_percent - 100.0).abs() < 1e-9);
    assert_eq!(h.runtime.spawned_tasks.lock().unwrap()[0].issue, issue(5));
}

#[tokio::test]
async fn a_failed_spawn_is_recorded_retried_and_the_issue_requeued() {
    let mut runtime = MockAgentRuntime::new();
    runtime.expect_can_compact().return_const(true);
    runtime.expect_spawn().times(3).returning(|profile, _| {
        Err(RuntimeError::Spawn {
            agent: profile.name.clone(),
            message: "No such file or directory".to_owned(),
        })
    });
    let sink = Arc::new(RecordingSink::default());
    let handover = Arc::new(RecordingHandover::default());
    let monitor = ContextMonitor::new(
        Arc::new(runtime),
        Arc::clone(&sink) as Arc<dyn MonitorSink>,
        Arc::clone(&handover) as Arc<dyn HandoverSource>,
        fast_config(),
    );
    let session = FakeSession::new(issue(6), 1000);
    monitor.watch(session.clone(), profile(), task(6)).unwrap();
    session.push(500);
    eventually("reading seen", || !sink.usages.lock().unwrap().is_empty()).await;

    let err = monitor.trigger_rotation(&session.id).await.unwrap_err();
    assert!(
        matches!(&err, MonitorError::RotationFailed { attempts: 3, last_error, .. } if last_error.contains("No such file")),
        "{err}"
    );
    let rotations = sink.rotations.lock().unwrap().clone();
    assert_eq!(rotations.len(), 3, "every failed attempt is recorded");
    for (n, rotation) in rotations.iter().enumerate() {
        assert!(!rotation.success);
        assert_eq!(rotation.attempt, u32::try_from(n + 1).unwrap());
        assert_eq!(rotation.new_session_id, None);
        assert_eq!(rotation.next_issue, Some(issue(6)));
        assert_eq!(rotation.context_before_tokens, 500);
        assert!(
            rotation
                .error_message
                .as_deref()
                .unwrap()
                .contains("could not start agent `glm`")
        );
    }
    let requeued = handover.requeued.lock().unwrap().clone();
    assert_eq!(requeued.len(), 1, "the issue goes back to the queue");
    assert_eq!(requeued[0].0.issue, issue(6));
    assert!(requeued[0].0.handover_summary.is_some());
    assert!(requeued[0].1.contains("No such file"));
    assert!(monitor.live_sessions().is_empty());
    assert!(session.closed_with.lock().unwrap().is_some());
}

#[tokio::test]
async fn polls_sessions_that_push_nothing() {
    let h = harness(
        FakeRuntime {
            can_compact: true,
            ..FakeRuntime::default()
        },
        fast_config(),
    );
    let session = FakeSession::new(issue(7), 1000);
    session.on_compact(CompactBehaviour::ShrinkTo(100));
    *session.polled.lock().unwrap() = Some(870);
    h.monitor
        .watch(session.clone(), profile(), task(7))
        .unwrap();
    eventually("compaction after a poll", || {
        !h.sink.compactions.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(
        h.sink.compactions.lock().unwrap()[0].result.before_tokens,
        870
    );
}

#[tokio::test]
async fn reports_outcomes_and_forgets_ended_sessions() {
    let h = harness(FakeRuntime::default(), fast_config());
    let session = FakeSession::new(issue(8), 1000);
    h.monitor
        .watch(session.clone(), profile(), task(8))
        .unwrap();
    session.finish(SessionOutcome::Succeeded {
        summary: "merged".to_owned(),
        tokens: 4200,
        cost_usd: Some(0.12),
    });
    eventually("outcome reported", || {
        !h.sink.outcomes.lock().unwrap().is_empty()
    })
    .await;
    let (live, outcome) = h.sink.outcomes.lock().unwrap()[0].clone();
    assert_eq!(live.session_id, session.id);
    assert!(matches!(
        outcome,
        SessionOutcome::Succeeded { tokens: 4200, .. }
    ));
    assert!(h.monitor.live_sessions().is_empty());

    // Closing through the monitor reports the outcome too.
    let other = FakeSession::new(issue(9), 1000);
    h.monitor.watch(other.clone(), profile(), task(9)).unwrap();
    let outcome = h.monitor.close(&other.id, "unassigned").await.unwrap();
    assert!(
        matches!(outcome, SessionOutcome::Killed { reason: KillReason::Closed { ref reason } } if reason == "unassigned")
    );
    eventually("close reported", || {
        h.sink.outcomes.lock().unwrap().len() == 2
    })
    .await;
    assert!(matches!(
        h.monitor.close(&other.id, "again").await,
        Err(MonitorError::UnknownSession(_))
    ));
}

#[tokio::test]
async fn one_bad_session_never_stops_the_others() {
    let h = harness(
        FakeRuntime {
            can_compact: true,
            ..FakeRuntime::default()
        },
        fast_config(),
    );
    let broken = FakeSession::failing(issue(10), 1000);
    let panicking = FakeSession::new(issue(11), 1000);
    panicking.on_compact(CompactBehaviour::Panic);
    panicking.on_compact(CompactBehaviour::ShrinkTo(100));
    let healthy = FakeSession::new(issue(12), 1000);
    healthy.on_compact(CompactBehaviour::ShrinkTo(200));
    for (session, number) in [(&broken, 10), (&panicking, 11), (&healthy, 12)] {
        h.monitor
            .watch(session.clone(), profile(), task(number))
            .unwrap();
    }
    panicking.push(900);
    tokio::time::sleep(Duration::from_millis(150)).await;
    healthy.push(820);
    eventually("healthy session compacted", || {
        h.sink
            .compactions
            .lock()
            .unwrap()
            .iter()
            .any(|c| c.session_id == healthy.id)
    })
    .await;
    // The panicking watcher was restarted and handles new readings again.
    panicking.push(910);
    eventually("panicking session compacted after restart", || {
        h.sink
            .compactions
            .lock()
            .unwrap()
            .iter()
            .any(|c| c.session_id == panicking.id && c.result.success)
    })
    .await;
    assert_eq!(h.monitor.live_sessions().len(), 3);
}

#[tokio::test]
async fn keeps_a_bounded_history() {
    let config = MonitorConfig {
        history_len: 3,
        ..fast_config()
    };
    let h = harness(FakeRuntime::default(), config);
    let session = FakeSession::new(issue(13), 1000);
    h.monitor
        .watch(session.clone(), profile(), task(13))
        .unwrap();
    for used in [100, 200, 300, 400, 500] {
        session.push(used);
        eventually("reading recorded", || {
            h.sink
                .usages
                .lock()
                .unwrap()
                .last()
                .map(|(_, u)| u.used_tokens)
                == Some(used)
        })
        .await;
    }
    let history = h.monitor.history(&session.id).unwrap();
    let used: Vec<u64> = history.iter().map(|r| r.usage.used_tokens).collect();
    assert_eq!(used, [300, 400, 500]);
}

#[tokio::test]
async fn rejects_profiles_with_bad_thresholds() {
    let h = harness(FakeRuntime::default(), fast_config());
    let bad = AgentProfile {
        compact_threshold: Some(0.97),
        ..profile()
    };
    let err = h
        .monitor
        .watch(FakeSession::new(issue(14), 1000), bad.clone(), task(14))
        .unwrap_err();
    assert!(err.to_string().contains("glm"), "{err}");
    let err = h.monitor.start(&bad, task(14)).await.unwrap_err();
    assert!(matches!(err, MonitorError::Policy(_)));
    let zero_window = AgentProfile {
        context_window: 0,
        ..profile()
    };
    let err = h.monitor.start(&zero_window, task(14)).await.unwrap_err();
    assert!(err.to_string().contains("window of 0"), "{err}");
    assert!(h.runtime.spawned_tasks.lock().unwrap().is_empty());
    // Per-profile thresholds are used: 0.6 compacts what the defaults would leave alone.
    let own = AgentProfile {
        compact_threshold: Some(0.6),
        rotate_threshold: Some(0.7),
        ..profile()
    };
    assert!(ContextThresholds::default().for_profile(&own).is_ok());
    let h = harness(
        FakeRuntime {
            can_compact: true,
            ..FakeRuntime::default()
        },
        fast_config(),
    );
    let session = FakeSession::new(issue(15), 1000);
    session.on_compact(CompactBehaviour::ShrinkTo(100));
    h.monitor.watch(session.clone(), own, task(15)).unwrap();
    session.push(650);
    eventually("compacted at 65 %", || {
        !h.sink.compactions.lock().unwrap().is_empty()
    })
    .await;
}

#[tokio::test]
async fn a_failed_compaction_is_recorded_and_rotates() {
    let replacement = FakeSession::new(issue(16), 1000);
    let h = harness(
        FakeRuntime {
            sessions: Mutex::new(VecDeque::from([replacement.clone()])),
            can_compact: true,
            ..FakeRuntime::default()
        },
        fast_config(),
    );
    let session = FakeSession::new(issue(16), 1000);
    session.on_compact(CompactBehaviour::Fail);
    h.monitor
        .watch(session.clone(), profile(), task(16))
        .unwrap();
    session.push(800);
    eventually("rotation recorded", || {
        !h.sink.rotations.lock().unwrap().is_empty()
    })
    .await;
    let compaction = h.sink.compactions.lock().unwrap()[0].clone();
    assert!(!compaction.result.success);
    assert_eq!(compaction.result.after_tokens, 800);
    assert_eq!(compaction.result.freed_tokens, 0);
    assert!(
        compaction
            .error_message
            .as_deref()
            .unwrap()
            .contains("compaction not confirmed")
    );
    assert_eq!(
        h.sink.rotations.lock().unwrap()[0].new_session_id,
        Some(replacement.id.clone())
    );
}

/// A session waiting for input after its turns is asked about once per turn count; the one
/// that replaces it after a rotation is asked too, though its turn count is the same.
#[tokio::test]
async fn every_session_waiting_for_input_is_answered_once_per_turn_rotated_ones_included() {
    let first = FakeSession::new(issue(1), 1000);
    let second = FakeSession::new(issue(1), 1000);
    let h = harness(
        FakeRuntime {
            sessions: Mutex::new(VecDeque::from([second.clone()])),
            ..FakeRuntime::default()
        },
        fast_config(),
    );
    h.monitor.watch(first.clone(), profile(), task(1)).unwrap();
    let waiting = |session: &FakeSession| {
        session.state.send_modify(|snapshot| {
            snapshot.turns = 1;
            snapshot.waiting = Some(TurnResult {
                success: true,
                summary: "done".to_owned(),
            });
        });
    };
    waiting(&first);
    eventually("the first session was asked", || {
        h.sink.waits.lock().unwrap().len() == 1
    })
    .await;
    // Asked once per turn count, not at every poll.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(h.sink.waits.lock().unwrap().len(), 1);

    h.monitor.trigger_rotation(&first.id).await.unwrap();
    waiting(&second);
    eventually("the replacement was asked too", || {
        h.sink.waits.lock().unwrap().len() == 2
    })
    .await;
    assert_eq!(
        *h.sink.waits.lock().unwrap(),
        vec![first.id.clone(), second.id.clone()]
    );
}
