//! What the context monitor reports goes into the store and the queue.

use std::sync::Weak;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use mosaic_context::{
    CompactionRecord, ContextUsage, HandoverError, HandoverSource, LiveSession, MonitorSink,
    SessionOutcome, SessionRotation, SessionTask, SinkError,
};
use mosaic_domain::IssueState;
use mosaic_store::{NewSession, RotationRecord, SessionOutcome as StoredOutcome};

use crate::report::{MAX_SUMMARY_CHARS, agent_text};

use super::dispatch::{Conclusion, session_end_spent};
use super::work::{Running, Work};
use super::{EngineError, Inner};

/// The engine as the monitor sees it; weak, so the monitor does not keep the engine alive.
#[derive(Debug)]
pub(crate) struct EngineSink {
    inner: Weak<Inner>,
}

impl EngineSink {
    pub fn new(inner: Weak<Inner>) -> Self {
        Self { inner }
    }
}

fn sink_error(err: EngineError) -> SinkError {
    SinkError(err.to_string())
}

#[async_trait]
impl MonitorSink for EngineSink {
    async fn on_usage(
        &self,
        session: &LiveSession,
        _usage: &ContextUsage,
    ) -> Result<(), SinkError> {
        // Usage is read live from the monitor for the API and metrics. The spend so far is
        // stored whenever it changed, so a crash loses none of it.
        let Some(inner) = self.inner.upgrade() else {
            return Ok(());
        };
        inner.store_live_spend(session).await;
        Ok(())
    }

    async fn on_waiting(
        &self,
        session: &LiveSession,
        result: &mosaic_context::TurnResult,
    ) -> Result<mosaic_context::NextTurn, SinkError> {
        let Some(inner) = self.inner.upgrade() else {
            return Ok(mosaic_context::NextTurn::Finish);
        };
        Ok(inner.next_turn(&session.issue, result).await)
    }

    async fn on_compaction(&self, record: &CompactionRecord) -> Result<(), SinkError> {
        let Some(inner) = self.inner.upgrade() else {
            return Ok(());
        };
        let stored = mosaic_store::CompactionRecord {
            session_id: record.session_id.to_string(),
            issue: record.issue.clone(),
            before_tokens: record.result.before_tokens,
            after_tokens: record.result.after_tokens,
            freed_tokens: record.result.freed_tokens,
            freed_percent: record.result.freed_percent,
            success: record.result.success,
            at: record.at,
        };
        inner
            .store
            .record_compaction(stored)
            .await
            .map_err(|err| SinkError(err.to_string()))?;
        inner.compactions.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn on_rotation(&self, record: &SessionRotation) -> Result<(), SinkError> {
        let Some(inner) = self.inner.upgrade() else {
            return Ok(());
        };
        inner.session_rotated(record).await.map_err(sink_error)
    }

    async fn on_outcome(
        &self,
        session: &LiveSession,
        outcome: &SessionOutcome,
    ) -> Result<(), SinkError> {
        let Some(inner) = self.inner.upgrade() else {
            return Ok(());
        };
        inner
            .session_ended(session, outcome)
            .await
            .map_err(sink_error)
    }
}

#[async_trait]
impl HandoverSource for EngineSink {
    async fn next_issue_for(
        &self,
        agent_type: &str,
        unfinished: &SessionTask,
    ) -> Result<Option<SessionTask>, HandoverError> {
        let Some(inner) = self.inner.upgrade() else {
            return Ok(None);
        };
        let continues = {
            let core = inner.core.lock().await;
            core.queue.state(&unfinished.issue) == Some(IssueState::InProgress)
        };
        if continues {
            return Ok(Some(inner.with_workspace_state(unfinished.clone()).await));
        }
        let claim = inner
            .claim_next(Some(agent_type))
            .await
            .map_err(|err| HandoverError(err.to_string()))?;
        Ok(claim.map(|claim| claim.task))
    }

    async fn requeue(&self, task: &SessionTask, reason: &str) -> Result<(), HandoverError> {
        let Some(inner) = self.inner.upgrade() else {
            return Ok(());
        };
        let _gate = inner.gate.lock().await;
        let mut core = inner.core.lock().await;
        inner
            .conclude_now(
                &mut core,
                &task.issue,
                Conclusion::Failed {
                    reason: reason.to_owned(),
                },
                None,
            )
            .await;
        Ok(())
    }
}

impl Inner {
    /// Stores a running session's spend when it changed since it was last stored.
    async fn store_live_spend(&self, session: &LiveSession) {
        let id = session.session_id.to_string();
        let spend = session.spend;
        {
            let mut stored = self
                .stored_spend
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if stored.get(&id) == Some(&spend) {
                return;
            }
            stored.insert(id.clone(), spend);
        }
        let figures = mosaic_store::SessionSpend {
            input_tokens: spend.input_tokens,
            output_tokens: spend.output_tokens,
            cache_read_tokens: spend.cache_read_tokens,
            cache_creation_tokens: spend.cache_creation_tokens,
            cost_usd: spend.cost_usd,
        };
        if let Err(err) = self.store.record_session_spend(&id, figures).await {
            // Tried again at the next reading.
            self.stored_spend
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&id);
            tracing::warn!(session = %id, error = %err, "the session's spend so far could not be stored");
        }
    }

    /// The task for the issue's next session, its hand-over extended by the workspace's state
    /// (branch, commits since the base, uncommitted files, diffstat), after the gates' rejection
    /// when the rotated session was a continuation: a fresh session continues from the
    /// repository even when the agent said nothing before it was rotated.
    async fn with_workspace_state(&self, mut task: SessionTask) -> SessionTask {
        let (Some(parts), Some(known)) = (&self.workspaces, self.known_workspace(&task.issue))
        else {
            return task;
        };
        // A continuation's rejection comes first, whatever the agent summarised since.
        if let Some(rejection) = &known.continuation {
            task.handover_summary = Some(match task.handover_summary.take() {
                Some(summary) if summary.contains(rejection.as_str()) => summary,
                Some(summary) => format!("{rejection}\n\n{summary}"),
                None => rejection.clone(),
            });
        }
        if let Err(reason) = parts.take_up_pushed_work(&known.workspace).await {
            tracing::warn!(issue = %task.issue, %reason, "the hand-over describes the worktree as it was");
        }
        match parts.workspaces.state(&known.workspace).await {
            Ok(state) => {
                let workspace = mosaic_workspace::handover_text(&state);
                task.handover_summary = Some(match task.handover_summary.take() {
                    Some(summary) => format!("{summary}\n\n{workspace}"),
                    None => workspace,
                });
            }
            Err(err) => {
                tracing::warn!(issue = %task.issue, error = %err, "workspace state unavailable for the hand-over")
            }
        }
        task
    }

    async fn session_ended(
        &self,
        live: &LiveSession,
        outcome: &SessionOutcome,
    ) -> Result<(), EngineError> {
        let (stored, detail) = match outcome {
            SessionOutcome::Running => return Ok(()),
            SessionOutcome::Succeeded { summary, .. } => {
                (StoredOutcome::Succeeded, Some(summary.clone()))
            }
            SessionOutcome::Failed { reason } => (StoredOutcome::Failed, Some(reason.clone())),
            SessionOutcome::Killed {
                reason: reason @ mosaic_context::KillReason::Interrupted { .. },
            } => (StoredOutcome::Interrupted, Some(reason.to_string())),
            SessionOutcome::Killed { reason } => (StoredOutcome::Killed, Some(reason.to_string())),
        };
        // What the agent last reported, whatever ended the session. A runtime that reports no
        // breakdown leaves only the success's total, kept as input tokens.
        let spend = match outcome {
            SessionOutcome::Succeeded {
                tokens, cost_usd, ..
            } if live.spend == mosaic_context::AgentSpend::default() => {
                mosaic_context::AgentSpend {
                    input_tokens: *tokens,
                    cost_usd: cost_usd.unwrap_or(0.0),
                    ..live.spend
                }
            }
            _ => live.spend,
        };
        let tokens = spend.total_tokens();
        let cost_usd = spend.cost_usd;
        // The stored reason is shown by the API and may become a comment: redacted like one.
        let detail = detail.map(|text| agent_text(&self.redactor, &text, MAX_SUMMARY_CHARS));
        let shutting_down = self.shutting_down.load(Ordering::SeqCst);
        let stored = if shutting_down && stored != StoredOutcome::Succeeded {
            StoredOutcome::Interrupted
        } else {
            stored
        };
        let session_id = live.session_id.to_string();
        self.stored_spend
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&session_id);
        let issue = &live.issue;
        let gate = self.gate.lock().await;
        let mut core = self.core.lock().await;
        let registered = core
            .running
            .get(issue)
            .is_some_and(|running| running.session_id.as_deref() == Some(session_id.as_str()));
        if !registered {
            // A session the store never recorded (its record failed) or already ended.
            tracing::debug!(%issue, session = %session_id, "outcome of an unregistered session ignored");
            return Ok(());
        }
        let mut work = Work::new(
            &core,
            format!("session:{session_id} {}", stored.as_str()),
            format!("s{session_id}"),
        );
        work.end_session(
            &core,
            issue,
            session_end_spent(&session_id, stored, detail.clone(), &spend),
        );
        // An issue's totals are the sum of its sessions'.
        work.update(&core, issue, |record| {
            record.input_tokens = record.input_tokens.saturating_add(spend.input_tokens);
            record.output_tokens = record.output_tokens.saturating_add(spend.output_tokens);
            record.cost_usd += cost_usd;
        });
        let in_progress = core.queue.state(issue) == Some(IssueState::InProgress);
        if in_progress && stored == StoredOutcome::Succeeded && self.workspaces.is_some() {
            // Stage "publishing": the succeeded session is stored with the issue still in
            // progress and its slot kept; recovery resumes here, without the agent.
            self.store.commit_transitions(work.batches()).await?;
            work.install(&mut core);
            if let Some(running) = core.running.get_mut(issue) {
                running.session_id = None;
            }
            drop(core);
            drop(gate);
            tracing::info!(%issue, session = %session_id, "agent succeeded; publishing");
            let summary = detail.unwrap_or_default();
            return self
                .publish_and_conclude(issue, summary, tokens, cost_usd)
                .await;
        }
        if in_progress {
            let conclusion = match (stored, outcome) {
                (StoredOutcome::Succeeded, SessionOutcome::Succeeded { summary, .. }) => {
                    Conclusion::Succeeded {
                        summary: summary.clone(),
                        tokens,
                        cost_usd,
                        publication: super::attempt::Publication::Unpublished,
                    }
                }
                (StoredOutcome::Interrupted, _) => Conclusion::Interrupted,
                _ => Conclusion::Failed {
                    reason: detail.unwrap_or_else(|| "the session ended".to_owned()),
                },
            };
            self.conclude(&core, &mut work, issue, &conclusion, "outcome")?;
        }
        self.store.commit_transitions(work.batches()).await?;
        work.install(&mut core);
        core.running.remove(issue);
        tracing::info!(%issue, session = %session_id, outcome = stored.as_str(), "session ended");
        drop(core);
        self.wake.notify_one();
        Ok(())
    }

    async fn session_rotated(&self, rotation: &SessionRotation) -> Result<(), EngineError> {
        let old_id = rotation.old_session_id.to_string();
        self.store
            .record_rotation(RotationRecord {
                old_session_id: old_id.clone(),
                new_session_id: rotation.new_session_id.as_ref().map(ToString::to_string),
                agent_type: rotation.agent_type.clone(),
                issue: rotation.issue.clone(),
                next_issue: rotation.next_issue.clone(),
                context_before_tokens: rotation.context_before_tokens,
                context_before_percent: rotation.context_before_percent,
                success: rotation.success,
                error_message: rotation.error_message.clone(),
                at: rotation.at,
            })
            .await?;
        if rotation.success && rotation.new_session_id.is_some() {
            self.rotations.fetch_add(1, Ordering::Relaxed);
        }
        let issue = &rotation.issue;
        let _gate = self.gate.lock().await;
        let mut core = self.core.lock().await;
        let old_registered = core
            .running
            .get(issue)
            .is_some_and(|running| running.session_id.as_deref() == Some(old_id.as_str()));
        let mut work = Work::new(
            &core,
            format!("session:{old_id} rotated"),
            format!("r{old_id}-{}", rotation.attempt),
        );
        if old_registered {
            let detail = format!(
                "rotated at {:.1}% context ({} tokens)",
                rotation.context_before_percent, rotation.context_before_tokens
            );
            work.end_session(
                &core,
                issue,
                session_end_spent(
                    &old_id,
                    StoredOutcome::Rotated,
                    Some(detail),
                    &rotation.old_spend,
                ),
            );
            let spend = rotation.old_spend;
            work.update(&core, issue, |record| {
                record.input_tokens = record.input_tokens.saturating_add(spend.input_tokens);
                record.output_tokens = record.output_tokens.saturating_add(spend.output_tokens);
                record.cost_usd += spend.cost_usd;
            });
        }
        let next = rotation.next_issue.clone().unwrap_or_else(|| issue.clone());
        let new_session = rotation.new_session_id.as_ref().map(|new_id| NewSession {
            id: new_id.to_string(),
            agent: rotation.agent_type.clone(),
            issue: next.clone(),
            pid: self
                .monitor
                .session_for_issue(&next)
                .filter(|session| session.id() == new_id)
                .and_then(|session| session.process_id()),
            started_at: rotation.at,
        });
        if let Some(session) = new_session.clone() {
            work.start_session(&core, &next, session);
        }
        if work.is_empty() {
            return Ok(());
        }
        self.store.commit_transitions(work.batches()).await?;
        work.install(&mut core);
        if old_registered
            && (next != *issue || rotation.new_session_id.is_none() && rotation.success)
        {
            core.running.remove(issue);
        } else if old_registered && let Some(running) = core.running.get_mut(issue) {
            running.session_id = None;
        }
        if let Some(session) = new_session {
            core.running.insert(
                next,
                Running {
                    session_id: Some(session.id),
                    agent: session.agent,
                    started_at: session.started_at,
                },
            );
        }
        Ok(())
    }
}
