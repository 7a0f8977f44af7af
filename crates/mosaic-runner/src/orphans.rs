//! Ending agent processes left behind by a coordinator that died (SIGKILL, power loss of the
//! parent only, OOM kill): each session runs in its own process group, which survives its
//! parent, so a restart must end it before the issue runs again (invariant 6: a restart finds no
//! orphan).
//!
//! A recorded process id may have been reused by the time of the restart, so a group is only
//! signalled when everything still matches: the process leads its own group (as every session
//! does), its program is the one configured for the session's agent, and it started when the
//! session did.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::config::RunnerConfig;

/// A session the store still lists as running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedSession {
    pub session_id: String,
    pub agent: String,
    pub pid: u32,
    pub started_at: DateTime<Utc>,
}

/// What was done about one recorded session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReapOutcome {
    /// No process with that id any more: nothing to do.
    Gone,
    /// The id now belongs to something else (reused): left alone.
    NotOurs(String),
    /// The session's process group was ended.
    Ended,
    /// The group was found but could not be signalled.
    Failed(String),
}

/// How far a recorded start time may be from the process's own (clock ticks, scheduling).
const START_SLACK_SECS: i64 = 30;

/// The process's group and start time, from `/proc/<pid>/stat`.
struct ProcStat {
    pgrp: i32,
    started_at: Option<DateTime<Utc>>,
}

fn proc_stat(proc_root: &Path, pid: u32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    // `pid (comm) state ppid pgrp …`: comm may hold spaces and parentheses, so split after the
    // last `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] = state (field 3), [1] = ppid, [2] = pgrp, [19] = starttime (field 22).
    let pgrp = fields.get(2)?.parse().ok()?;
    let started_at = fields
        .get(19)
        .and_then(|ticks| ticks.parse::<u64>().ok())
        .and_then(|ticks| start_time(proc_root, ticks));
    Some(ProcStat { pgrp, started_at })
}

/// Boot time plus the start offset; `None` when either cannot be read.
fn start_time(proc_root: &Path, ticks: u64) -> Option<DateTime<Utc>> {
    let stat = std::fs::read_to_string(proc_root.join("stat")).ok()?;
    let boot: i64 = stat
        .lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|hz| *hz > 0)?;
    let offset = i64::try_from(ticks).ok()? / per_second;
    DateTime::from_timestamp(boot + offset, 0)
}

/// The program a process runs (`argv[0]`), from `/proc/<pid>/cmdline`.
fn program(proc_root: &Path, pid: u32) -> Option<String> {
    let cmdline = std::fs::read(proc_root.join(pid.to_string()).join("cmdline")).ok()?;
    let first = cmdline.split(|b| *b == 0).next()?;
    Some(String::from_utf8_lossy(first).into_owned())
}

fn same_program(running: &str, configured: &str) -> bool {
    if running == configured {
        return true;
    }
    // A configured bare name (`claude`) runs under its resolved path, or the reverse.
    let name = |p: &str| Path::new(p).file_name().map(|n| n.to_os_string());
    name(running).is_some() && name(running) == name(configured)
}

/// Ends the process groups of `sessions` that are still running, after checking each is really
/// the session's. Waits up to `config.kill_grace_secs` between SIGTERM and SIGKILL.
pub async fn reap(
    config: &RunnerConfig,
    sessions: &[RecordedSession],
) -> Vec<(String, ReapOutcome)> {
    reap_in(Path::new("/proc"), config, sessions).await
}

async fn reap_in(
    proc_root: &Path,
    config: &RunnerConfig,
    sessions: &[RecordedSession],
) -> Vec<(String, ReapOutcome)> {
    let mut outcomes = Vec::with_capacity(sessions.len());
    let mut signalled = Vec::new();
    for session in sessions {
        let outcome = match check(proc_root, config, session) {
            Err(outcome) => outcome,
            Ok(pgid) => match killpg(pgid, Signal::SIGTERM) {
                Ok(()) => {
                    signalled.push(pgid);
                    ReapOutcome::Ended
                }
                Err(nix::errno::Errno::ESRCH) => ReapOutcome::Gone,
                Err(err) => ReapOutcome::Failed(err.to_string()),
            },
        };
        match &outcome {
            ReapOutcome::Ended => tracing::warn!(
                session = %session.session_id,
                pid = session.pid,
                "ended the agent process group a previous coordinator left running"
            ),
            ReapOutcome::NotOurs(why) => tracing::info!(
                session = %session.session_id,
                pid = session.pid,
                why = %why,
                "recorded process id belongs to another process now; left alone"
            ),
            ReapOutcome::Failed(err) => tracing::error!(
                session = %session.session_id,
                pid = session.pid,
                error = %err,
                "could not end a left-over agent process group"
            ),
            ReapOutcome::Gone => {}
        }
        outcomes.push((session.session_id.clone(), outcome));
    }
    if !signalled.is_empty() {
        let deadline = tokio::time::Instant::now() + config.kill_grace_secs;
        while tokio::time::Instant::now() < deadline
            && signalled.iter().any(|pgid| killpg(*pgid, None).is_ok())
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for pgid in signalled {
            // Whatever ignored SIGTERM (or is still stopping) ends now.
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
    outcomes
}

/// The group to signal, or why not.
fn check(
    proc_root: &Path,
    config: &RunnerConfig,
    session: &RecordedSession,
) -> Result<Pid, ReapOutcome> {
    let Some(stat) = proc_stat(proc_root, session.pid) else {
        return Err(ReapOutcome::Gone);
    };
    let pid = i32::try_from(session.pid).map_err(|_| ReapOutcome::Gone)?;
    if stat.pgrp != pid {
        return Err(ReapOutcome::NotOurs(
            "it does not lead its own process group".to_owned(),
        ));
    }
    let Some(command) = config.agents.get(&session.agent) else {
        return Err(ReapOutcome::NotOurs(format!(
            "agent `{}` has no command configured any more",
            session.agent
        )));
    };
    let running = program(proc_root, session.pid).unwrap_or_default();
    if !same_program(&running, &command.program) {
        return Err(ReapOutcome::NotOurs(format!(
            "it runs `{running}`, not `{}`",
            command.program
        )));
    }
    if let Some(started) = stat.started_at {
        let apart = (started - session.started_at).num_seconds().abs();
        if apart > START_SLACK_SECS {
            return Err(ReapOutcome::NotOurs(format!(
                "it started {apart} s away from the session"
            )));
        }
    }
    Ok(Pid::from_raw(pid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AgentCommand;
    use std::os::unix::process::CommandExt as _;

    fn config(program: &str) -> RunnerConfig {
        let mut config = RunnerConfig::new(std::env::temp_dir());
        config.kill_grace_secs = Duration::from_secs(2);
        config.agents.insert(
            "sh-agent".to_owned(),
            AgentCommand {
                program: program.to_owned(),
                args: vec![],
                env: Default::default(),
                input: crate::config::InputMode::Text,
                can_compact: false,
                stall_timeout_secs: None,
                time_limit_secs: None,
            },
        );
        config
    }

    fn alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            !stat[stat.rfind(')').unwrap() + 1..]
                .trim_start()
                .starts_with('Z')
        })
    }

    #[tokio::test]
    async fn an_orphaned_group_is_ended_with_its_children() {
        // A leader in its own group with a child, like an agent that started a tool.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 300 & wait"])
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id();
        std::thread::sleep(Duration::from_millis(100));
        let session = RecordedSession {
            session_id: "s1".into(),
            agent: "sh-agent".into(),
            pid,
            started_at: Utc::now(),
        };
        let outcomes = reap(&config("sh"), std::slice::from_ref(&session)).await;
        assert_eq!(outcomes, vec![("s1".to_owned(), ReapOutcome::Ended)]);
        let _ = child.wait();
        assert!(!alive(pid));
        let group = i32::try_from(pid).unwrap();
        assert!(
            killpg(Pid::from_raw(group), None).is_err(),
            "no member of the group is left"
        );
    }

    #[tokio::test]
    async fn a_reused_or_foreign_pid_is_left_alone() {
        let mut child = std::process::Command::new("sleep")
            .arg("300")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id();
        std::thread::sleep(Duration::from_millis(50));
        let session = |agent: &str, started_at| RecordedSession {
            session_id: "s2".into(),
            agent: agent.into(),
            pid,
            started_at,
        };
        // Another program than the agent's.
        let outcomes = reap(
            &config("/usr/bin/claude"),
            &[session("sh-agent", Utc::now())],
        )
        .await;
        assert!(
            matches!(outcomes[0].1, ReapOutcome::NotOurs(_)),
            "{outcomes:?}"
        );
        // The right program, but started long before the session.
        let outcomes = reap(
            &config("sleep"),
            &[session("sh-agent", Utc::now() + chrono::Duration::hours(2))],
        )
        .await;
        assert!(
            matches!(outcomes[0].1, ReapOutcome::NotOurs(_)),
            "{outcomes:?}"
        );
        // An agent no longer configured.
        let outcomes = reap(&config("sleep"), &[session("gone-agent", Utc::now())]).await;
        assert!(
            matches!(outcomes[0].1, ReapOutcome::NotOurs(_)),
            "{outcomes:?}"
        );
        assert!(alive(pid), "nothing was signalled");
        child.kill().unwrap();
        let _ = child.wait();
    }

    #[tokio::test]
    async fn a_process_that_is_gone_needs_nothing() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let outcomes = reap(
            &config("true"),
            &[RecordedSession {
                session_id: "s3".into(),
                agent: "sh-agent".into(),
                pid,
                started_at: Utc::now(),
            }],
        )
        .await;
        assert_eq!(outcomes[0].1, ReapOutcome::Gone);
    }

    #[test]
    fn program_names_match_by_path_or_file_name() {
        assert!(same_program("/usr/bin/claude", "claude"));
        assert!(same_program("claude", "/usr/local/bin/claude"));
        assert!(same_program("/x/agent", "/x/agent"));
        assert!(!same_program("/usr/bin/sleep", "claude"));
        assert!(!same_program("", "claude"));
    }
}
