//! Dispatch: ready issues go to new sessions in queue order while capacity is left.

use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;
use mosaic_context::SessionTask;
use mosaic_domain::{AgentProfile, IssueRef, IssueState};
use mosaic_store::{NewSession, SessionEnd, SessionOutcome};
use tokio_util::sync::CancellationToken;

use crate::effects::GiteaWrite;
use crate::report::{
    MAX_REASON_CHARS, MAX_SUMMARY_CHARS, Status, agent_text, failed_comment, finished_comment,
    no_changes_comment,
};

use super::attempt::{GateFailure, Publication, pull_request_body, with_gate_report};
use super::work::{Core, Running, Work};
use super::{Engine, EngineError, Inner};

/// How a session (or an attempt to start one) ended, as far as the issue is concerned.
#[derive(Debug, Clone)]
pub(crate) enum Conclusion {
    Succeeded {
        summary: String,
        tokens: u64,
        cost_usd: f64,
        /// What publishing the workspace led to (decided before the locks are taken).
        publication: Publication,
    },
    Failed {
        reason: String,
    },
    /// Required quality gates still failed after the last continuation: failed for good.
    GatesFailed(Box<GateFailure>),
    /// The coordinator stopped (or crashed) while the session ran: not the agent's fault, so the
    /// attempt does not count.
    Interrupted,
}

/// An issue moved to `in_progress` whose session is to be started.
#[derive(Debug)]
pub(crate) struct Claim {
    pub issue: IssueRef,
    pub profile: AgentProfile,
    pub task: SessionTask,
}

impl Engine {
    /// Dispatches until `cancel` fires: at start, on every change, and every
    /// `dispatch_poll_ms`. On cancellation every session is closed and its issue requeued as
    /// interrupted (it runs again after the restart).
    pub async fn run(&self, cancel: CancellationToken) {
        let idle = Duration::from_millis(self.inner.config.dispatch_poll_ms.max(10));
        loop {
            let notified = self.inner.wake.notified();
            self.inner.dispatch_ready().await;
            tokio::select! {
                () = cancel.cancelled() => break,
                () = notified => {}
                () = tokio::time::sleep(idle) => {}
            }
        }
        self.shutdown().await;
    }

    /// Starts what can be started now; returns how many sessions were started.
    pub async fn dispatch_once(&self) -> usize {
        self.inner.dispatch_ready().await
    }

    /// Stops dispatching and closes every session; their issues go back to the queue.
    pub async fn shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        self.inner
            .monitor
            .close_all("the coordinator is shutting down")
            .await;
    }
}

/// Acceptance criteria: checklist items under a heading that names them.
pub(crate) fn acceptance_criteria(body: &str) -> Vec<String> {
    let mut inside = false;
    let mut criteria = Vec::new();
    for line in body.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') {
            inside = trimmed.to_ascii_lowercase().contains("acceptance");
            continue;
        }
        if inside {
            let item = trimmed
                .strip_prefix("- [ ]")
                .or_else(|| trimmed.strip_prefix("- [x]"))
                .or_else(|| trimmed.strip_prefix("- "))
                .or_else(|| trimmed.strip_prefix("* "));
            if let Some(item) = item.map(str::trim).filter(|item| !item.is_empty()) {
                criteria.push(item.to_owned());
            }
        }
    }
    criteria
}

impl Inner {
    pub(crate) async fn dispatch_ready(&self) -> usize {
        let mut started = 0;
        if !self.disk_allows_dispatch().await {
            return 0;
        }
        while !self.shutting_down.load(Ordering::SeqCst) {
            let claim = match self.claim_next(None).await {
                Ok(Some(claim)) => claim,
                Ok(None) => break,
                Err(err) => {
                    tracing::error!(error = %err, "could not dispatch; will try again");
                    break;
                }
            };
            if self.launch(claim).await {
                started += 1;
            }
        }
        started
    }

    /// Moves the first startable ready issue (of `agent`, when given) to `in_progress`,
    /// committing the state, its status comment and label first.
    pub(crate) async fn claim_next(
        &self,
        agent: Option<&str>,
    ) -> Result<Option<Claim>, EngineError> {
        let mut core = self.core.lock().await;
        let total = u32::try_from(core.running.len()).unwrap_or(u32::MAX);
        let capacity = self.capacity.load(Ordering::SeqCst);
        // A rotation hands its slot over, so it is not limited by capacity.
        if agent.is_none() && total >= capacity {
            return Ok(None);
        }
        let mut chosen = None;
        for issue in core.queue.ready_in_order() {
            let Some(name) = core.queue.get(&issue).and_then(|entry| entry.agent.clone()) else {
                continue;
            };
            if let Some(wanted) = agent {
                if !name.eq_ignore_ascii_case(wanted) {
                    continue;
                }
            } else if core.running_for(&name) >= self.config.limit_for(&name, capacity) {
                continue;
            }
            match self.profiles.get(&name).filter(|profile| profile.enabled) {
                Some(profile) => {
                    chosen = Some((issue, profile.clone()));
                    break;
                }
                None => {
                    tracing::warn!(%issue, agent = %name, "assigned agent is no longer configured or enabled; issue waits")
                }
            }
        }
        let Some((issue, profile)) = chosen else {
            return Ok(None);
        };
        let token = uuid::Uuid::now_v7();
        let mut work = Work::new(&core, "dispatch".to_owned(), format!("x{token}"));
        work.step(&core, &issue, IssueState::InProgress)?;
        work.update(&core, &issue, |record| {
            record.attempts = record.attempts.saturating_add(1)
        });
        let attempt = work
            .record(&core, &issue)
            .map_or(1, |record| record.attempts);
        work.announce(
            &core,
            &issue,
            &self.config.labels,
            &Status::InProgress {
                agent: &profile.name,
                attempt,
            },
        );
        self.store.commit_transitions(work.batches()).await?;
        work.install(&mut core);
        core.running.insert(
            issue.clone(),
            Running {
                session_id: None,
                agent: profile.name.clone(),
                started_at: Utc::now(),
            },
        );
        drop(core);
        tracing::info!(%issue, agent = %profile.name, attempt, "dispatching");
        let mut task = self.task_for(&issue, None).await;
        // Every session of the issue (retries and rotations included) works in this worktree.
        match self.prepare_workspace(&issue, &task.title).await {
            Ok(workspace) => task.work_dir = workspace.map(|workspace| workspace.path),
            Err(reason) => {
                tracing::error!(%issue, %reason, "no workspace; the attempt fails");
                let _gate = self.gate.lock().await;
                let mut core = self.core.lock().await;
                self.conclude_now(&mut core, &issue, Conclusion::Failed { reason }, None)
                    .await;
                return Ok(None);
            }
        }
        Ok(Some(Claim {
            issue,
            profile,
            task,
        }))
    }

    /// The task text of an issue, from its latest snapshot.
    pub(crate) async fn task_for(&self, issue: &IssueRef, handover: Option<String>) -> SessionTask {
        let snapshot = match self.store.get_issue_snapshot(issue).await {
            Ok(snapshot) => snapshot,
            Err(err) => {
                tracing::warn!(%issue, error = %err, "issue snapshot unavailable; starting with the reference only");
                None
            }
        };
        let (title, body) = snapshot.map_or_else(
            || (format!("Issue {issue}"), String::new()),
            |snapshot| (snapshot.title, snapshot.body),
        );
        SessionTask {
            issue: issue.clone(),
            acceptance_criteria: acceptance_criteria(&body),
            title,
            body,
            repository: issue.repo.clone(),
            handover_summary: handover,
            work_dir: self
                .known_workspace(issue)
                .map(|known| known.workspace.path),
        }
    }

    /// Starts the session of a claimed issue and records it; returns whether one runs.
    pub(crate) async fn launch(&self, claim: Claim) -> bool {
        let Claim {
            issue,
            profile,
            task,
        } = claim;
        let gate = self.gate.lock().await;
        let mut closing = Vec::new();
        let started = match self.monitor.start(&profile, task).await {
            Ok(session) => {
                let id = session.id().to_string();
                let mut core = self.core.lock().await;
                let mut work = Work::new(&core, format!("session:{id} started"), format!("s{id}"));
                work.start_session(
                    &core,
                    &issue,
                    NewSession {
                        id: id.clone(),
                        agent: profile.name.clone(),
                        issue: issue.clone(),
                        pid: session.process_id(),
                        started_at: Utc::now(),
                    },
                );
                match self.store.commit_transitions(work.batches()).await {
                    Ok(()) => {
                        work.install(&mut core);
                        if let Some(running) = core.running.get_mut(&issue) {
                            running.session_id = Some(id.clone());
                        }
                        if core.queue.state(&issue) != Some(IssueState::InProgress) {
                            // Cancelled or closed while the session was starting.
                            closing.push((
                                id,
                                "the issue left the queue while its session started".to_owned(),
                            ));
                        }
                        true
                    }
                    Err(err) => {
                        tracing::error!(%issue, session = %id, error = %err, "could not record the new session; closing it and requeueing the issue");
                        closing.push((id, "the session could not be recorded".to_owned()));
                        self.conclude_now(&mut core, &issue, Conclusion::Interrupted, None)
                            .await;
                        false
                    }
                }
            }
            Err(err) => {
                tracing::error!(%issue, agent = %profile.name, error = %err, "could not start a session");
                let mut core = self.core.lock().await;
                self.conclude_now(
                    &mut core,
                    &issue,
                    Conclusion::Failed {
                        reason: format!("the session could not start: {err}"),
                    },
                    None,
                )
                .await;
                false
            }
        };
        drop(gate);
        self.close_sessions(closing).await;
        started
    }

    /// Concludes an issue's attempt in its own transaction (spawn failures, recovery).
    pub(crate) async fn conclude_now(
        &self,
        core: &mut Core,
        issue: &IssueRef,
        conclusion: Conclusion,
        end: Option<SessionEnd>,
    ) {
        let key = format!("c{}", uuid::Uuid::now_v7());
        let mut work = Work::new(core, format!("attempt of {issue} ended"), key);
        if let Some(end) = end {
            work.end_session(core, issue, end);
        }
        let result = if core.queue.state(issue) == Some(IssueState::InProgress) {
            self.conclude(core, &mut work, issue, &conclusion, "attempt")
        } else {
            Ok(())
        };
        if let Err(err) = result {
            tracing::error!(%issue, error = %err, "could not conclude the attempt");
            return;
        }
        match self.store.commit_transitions(work.batches()).await {
            Ok(()) => {
                work.install(core);
                core.running.remove(issue);
                self.wake.notify_one();
            }
            Err(err) => {
                tracing::error!(%issue, error = %err, "could not record the end of the attempt; recovery will requeue it")
            }
        }
    }

    /// The issue's next state after its attempt ended (it must be `in_progress`).
    pub(crate) fn conclude(
        &self,
        core: &Core,
        work: &mut Work,
        issue: &IssueRef,
        conclusion: &Conclusion,
        tag: &str,
    ) -> Result<(), EngineError> {
        let labels = &self.config.labels;
        let record = work
            .record(core, issue)
            .ok_or_else(|| EngineError::NotFound(issue.clone()))?;
        let agent = record.assigned_agent.clone().unwrap_or_default();
        match conclusion {
            Conclusion::Succeeded {
                summary,
                tokens,
                cost_usd,
                publication,
            } => {
                let summary = &agent_text(&self.redactor, summary, MAX_SUMMARY_CHARS);
                let total = record.input_tokens.saturating_add(record.output_tokens);
                let cost = record.cost_usd;
                if let Publication::NoChanges { branch } = publication {
                    work.step(core, issue, IssueState::NoChanges)?;
                    work.announce(
                        core,
                        issue,
                        labels,
                        &Status::NoChanges {
                            agent: &agent,
                            branch,
                        },
                    );
                    work.write(
                        core,
                        issue,
                        &format!("{tag}-no-changes"),
                        GiteaWrite::comment(no_changes_comment(&agent, branch, summary)),
                    );
                    return Ok(());
                }
                work.step(core, issue, IssueState::Completed)?;
                match publication {
                    Publication::Pushed(pushed) => {
                        // Written before the status and the comment: the outbox delivers an
                        // issue's writes in order, so the status can link the open pull request.
                        pushed.write_pull_request(
                            work,
                            core,
                            issue,
                            tag,
                            pushed.title.clone(),
                            pull_request_body(issue, summary, pushed, total, cost),
                        );
                        work.announce(
                            core,
                            issue,
                            labels,
                            &Status::Published {
                                agent: &agent,
                                summary,
                                tokens: total,
                                cost_usd: cost,
                                branch: &pushed.branch,
                                base: &pushed.base,
                                gates: pushed.gates.as_deref(),
                            },
                        );
                    }
                    _ => work.announce(
                        core,
                        issue,
                        labels,
                        &Status::Done {
                            agent: &agent,
                            summary,
                            tokens: total,
                            cost_usd: cost,
                        },
                    ),
                }
                work.write(
                    core,
                    issue,
                    &format!("{tag}-done"),
                    GiteaWrite::comment(with_gate_report(
                        finished_comment(&agent, *tokens, *cost_usd, summary),
                        publication,
                    )),
                );
                if self.config.close_on_success {
                    work.write(core, issue, &format!("{tag}-close"), GiteaWrite::CloseIssue);
                }
                // Dependents wait for the blocker to be closed in the tracker (a person reviews
                // and closes done work); when the coordinator closes it itself, done is closed.
                if self.completion_closes() {
                    let change = work.graph.set_open(issue, false)?;
                    self.follow(core, work, &change, Some(issue))?;
                }
            }
            Conclusion::Failed { reason } => {
                let reason = &agent_text(&self.redactor, reason, MAX_REASON_CHARS);
                if record.attempts >= self.config.max_attempts {
                    work.step(core, issue, IssueState::Failed)?;
                    let attempts = record.attempts;
                    work.announce(
                        core,
                        issue,
                        labels,
                        &Status::Failed {
                            agent: &agent,
                            attempts,
                            reason,
                            gates: None,
                        },
                    );
                    work.write(
                        core,
                        issue,
                        &format!("{tag}-failed"),
                        GiteaWrite::comment(failed_comment(&agent, attempts, reason)),
                    );
                } else {
                    tracing::info!(%issue, %reason, attempts = record.attempts, "attempt failed; retrying");
                    work.step(core, issue, IssueState::Pending)?;
                    work.settle(core, issue)?;
                    work.announce_waiting(core, issue, labels);
                }
            }
            Conclusion::GatesFailed(failure) => {
                self.conclude_gates_failed(core, work, issue, failure, tag)?;
            }
            Conclusion::Interrupted => {
                work.step(core, issue, IssueState::Pending)?;
                work.update(core, issue, |record| {
                    record.attempts = record.attempts.saturating_sub(1)
                });
                work.settle(core, issue)?;
                work.announce_waiting(core, issue, labels);
            }
        }
        Ok(())
    }
}

/// The store's form of a session's end, with what the agent last reported it spent.
pub(crate) fn session_end_spent(
    session_id: &str,
    outcome: SessionOutcome,
    detail: Option<String>,
    spend: &mosaic_context::AgentSpend,
) -> SessionEnd {
    SessionEnd {
        session_id: session_id.to_owned(),
        ended_at: Utc::now(),
        outcome,
        detail,
        input_tokens: spend.input_tokens,
        output_tokens: spend.output_tokens,
        cache_read_tokens: spend.cache_read_tokens,
        cache_creation_tokens: spend.cache_creation_tokens,
        cost_usd: spend.cost_usd,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acceptance_criteria_are_read_from_their_section() {
        let body =
            "Intro\n## Acceptance Criteria\n- [ ] first\n- [x] second\n\n## Notes\n- not one";
        assert_eq!(acceptance_criteria(body), vec!["first", "second"]);
        assert!(acceptance_criteria("no sections").is_empty());
    }
}
