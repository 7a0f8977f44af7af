//! Ending agent processes left behind by a coordinator that died (SIGKILL, power loss of the
//! parent only, OOM kill): each session runs in its own process group, which survives its
//! parent, so a restart must end it before the issue runs again (invariant 6: a restart finds no
//! orphan).
//!
//! A session's processes are recognised by what the coordinator recorded when it started them,
//! never by the program they run (`argv[0]` of a script agent is its interpreter: `python3`,
//! `/bin/sh`, `node`):
//! - the session marker: every process of a session inherits `MOSAIC_SESSION_ID=<session id>`
//!   in its environment, readable in `/proc/<pid>/environ`;
//! - the process group: the leader's pid is the group id, and the leader's start time in
//!   `/proc/<pid>/stat` matches the recorded start (this decides only when the environment
//!   cannot be read).
//!
//! A recorded pid may have been reused by the time of the restart; a process without the
//! session's marker is then left alone. When the leader is gone, the rest of its group is still
//! ended if a member carries the marker (the group id cannot be reused while the group exists).
//!
//! Descendants that left the group (`setsid`, a daemonising tool) are found by a scan of `/proc`
//! for the marker, not by making the coordinator a child subreaper (`PR_SET_CHILD_SUBREAPER`):
//! a subreaper dies with the coordinator, so after the SIGKILL this module exists for, the
//! orphans belong to init and parentage identifies nothing; and a subreaper must reap every
//! adopted orphan with `waitpid(-1)`, which would take the exit statuses tokio's `Child` handles
//! wait for. The marker survives `setsid` and double forks; only a process that clears its own
//! environment (`env -i`) and leaves the group (or outlives every marked member of it) escapes.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use crate::config::{RunnerConfig, SESSION_ID_VAR};

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
    /// No process of the session any more: nothing to do.
    Gone,
    /// The id now belongs to something else (reused): left alone.
    NotOurs(String),
    /// The session's processes were ended.
    Ended,
    /// The processes were found but could not be signalled.
    Failed(String),
}

/// How far a recorded start time may be from the process's own (clock ticks, scheduling).
const START_SLACK_SECS: i64 = 30;
/// How often `/proc` is read again while waiting for processes to end.
const POLL: Duration = Duration::from_millis(50);
/// How long, after SIGKILL, processes may take to disappear (and forks caught in the act to be
/// found and killed too).
const KILL_SETTLE: Duration = Duration::from_secs(5);

/// What the session marker in a process's environment says.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Marker {
    /// The environment could not be read (another user's process).
    Unreadable,
    Absent,
    Session(String),
}

/// One running (not zombie) process, as `/proc` shows it.
#[derive(Debug, Clone)]
struct ProcessEntry {
    pid: i32,
    pgrp: i32,
    started_at: Option<DateTime<Utc>>,
    marker: Marker,
}

impl ProcessEntry {
    fn carries(&self, session_id: &str) -> bool {
        matches!(&self.marker, Marker::Session(id) if id == session_id)
    }
}

/// Boot time and clock ticks per second, to turn a start offset into a time.
#[derive(Debug, Clone, Copy)]
struct Clock {
    boot: i64,
    ticks_per_second: i64,
}

fn clock(proc_root: &Path) -> Option<Clock> {
    let stat = std::fs::read_to_string(proc_root.join("stat")).ok()?;
    let boot = stat
        .lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let ticks_per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|hz| *hz > 0)?;
    Some(Clock {
        boot,
        ticks_per_second,
    })
}

/// Every running process with its group, start time and session marker.
fn scan(proc_root: &Path) -> Vec<ProcessEntry> {
    let clock = clock(proc_root);
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            process_entry(&entry.path(), pid, clock)
        })
        .collect()
}

fn process_entry(dir: &Path, pid: i32, clock: Option<Clock>) -> Option<ProcessEntry> {
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    // `pid (comm) state ppid pgrp …`: comm may hold spaces and parentheses, so split after the
    // last `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] = state (field 3), [2] = pgrp (field 5), [19] = starttime (field 22).
    if matches!(fields.first(), Some(&("Z" | "X" | "x"))) {
        // Already dead, waiting to be reaped: nothing left to end.
        return None;
    }
    let pgrp = fields.get(2)?.parse().ok()?;
    let started_at = clock.and_then(|clock| {
        let ticks: i64 = fields.get(19)?.parse().ok()?;
        DateTime::from_timestamp(clock.boot + ticks / clock.ticks_per_second, 0)
    });
    let marker = match std::fs::read(dir.join("environ")) {
        Ok(environ) => session_marker(&environ),
        Err(_) => Marker::Unreadable,
    };
    Some(ProcessEntry {
        pid,
        pgrp,
        started_at,
        marker,
    })
}

/// The session marker in a NUL-separated environment block.
fn session_marker(environ: &[u8]) -> Marker {
    let prefix = format!("{SESSION_ID_VAR}=");
    environ
        .split(|byte| *byte == 0)
        .find_map(|entry| entry.strip_prefix(prefix.as_bytes()))
        .map_or(Marker::Absent, |id| {
            Marker::Session(String::from_utf8_lossy(id).into_owned())
        })
}

/// The processes to signal for one session: whole groups, and single processes outside them.
#[derive(Debug, Default, Clone)]
struct Targets {
    groups: BTreeSet<i32>,
    pids: BTreeSet<i32>,
}

impl Targets {
    fn is_empty(&self) -> bool {
        self.groups.is_empty() && self.pids.is_empty()
    }

    /// Whether any process of the session still runs.
    fn any_alive(&self, session_id: &str, entries: &[ProcessEntry]) -> bool {
        entries.iter().any(|entry| self.covers(session_id, entry))
    }

    fn covers(&self, session_id: &str, entry: &ProcessEntry) -> bool {
        entry.carries(session_id)
            || self.groups.contains(&entry.pgrp)
            || self.pids.contains(&entry.pid)
    }

    /// Adds marked processes that appeared since (a fork caught between scan and signal).
    fn add_marked(&mut self, session_id: &str, entries: &[ProcessEntry]) {
        for entry in entries.iter().filter(|entry| entry.carries(session_id)) {
            if entry.pid == entry.pgrp {
                self.groups.insert(entry.pgrp);
            } else if !self.groups.contains(&entry.pgrp) {
                self.pids.insert(entry.pid);
            }
        }
    }

    /// Sends `signal` to every target; the first error other than "already gone".
    fn signal(&self, signal: Signal) -> Result<(), nix::errno::Errno> {
        let mut first_error = Ok(());
        let sent = self
            .groups
            .iter()
            .map(|pgid| killpg(Pid::from_raw(*pgid), signal))
            .chain(
                self.pids
                    .iter()
                    .map(|pid| kill(Pid::from_raw(*pid), signal)),
            );
        for result in sent {
            if let Err(err) = result
                && err != nix::errno::Errno::ESRCH
                && first_error.is_ok()
            {
                first_error = Err(err);
            }
        }
        first_error
    }
}

/// What belongs to `session`, or why nothing does.
fn targets_of(entries: &[ProcessEntry], session: &RecordedSession) -> Result<Targets, ReapOutcome> {
    let id = session.session_id.as_str();
    let group = i32::try_from(session.pid).map_err(|_| ReapOutcome::Gone)?;
    let leader = entries.iter().find(|entry| entry.pid == group);
    let leader_verdict = leader.map(|leader| leader_is_ours(leader, session));
    let mut targets = Targets::default();
    let group_is_ours = matches!(leader_verdict, Some(Ok(())))
        // The leader is gone (or its pid reused) but members of its group carry the marker: the
        // group id stays taken while the group exists, so this is the session's group.
        || entries
            .iter()
            .any(|entry| entry.pgrp == group && entry.carries(id));
    if group_is_ours {
        targets.groups.insert(group);
    }
    targets.add_marked(id, entries);
    if targets.is_empty() {
        return Err(match leader_verdict {
            Some(Err(why)) => ReapOutcome::NotOurs(why),
            _ => ReapOutcome::Gone,
        });
    }
    Ok(targets)
}

/// Whether the process at the recorded pid is the session's leader, or why not.
fn leader_is_ours(leader: &ProcessEntry, session: &RecordedSession) -> Result<(), String> {
    if i64::from(leader.pgrp) != i64::from(session.pid) {
        return Err("it does not lead its own process group".to_owned());
    }
    match &leader.marker {
        Marker::Session(id) if *id == session.session_id => Ok(()),
        Marker::Session(other) => Err(format!("it belongs to session {other}")),
        Marker::Absent => Err("its environment carries no session marker".to_owned()),
        // Only the start time is left to tell.
        Marker::Unreadable => match leader.started_at {
            Some(started) => {
                let apart = (started - session.started_at).num_seconds().abs();
                if apart > START_SLACK_SECS {
                    Err(format!("it started {apart} s away from the session"))
                } else {
                    Ok(())
                }
            }
            None => Err("neither its environment nor its start time can be read".to_owned()),
        },
    }
}

/// SIGKILLs every running process that carries `session_id`'s marker (each with its group when
/// it leads one); returns how many were found. The end of a session uses it for descendants
/// that left the session's process group.
pub fn kill_marked(proc_root: &Path, session_id: &str) -> usize {
    let entries = scan(proc_root);
    let mut targets = Targets::default();
    targets.add_marked(session_id, &entries);
    let found = entries
        .iter()
        .filter(|entry| entry.carries(session_id))
        .count();
    if let Err(err) = targets.signal(Signal::SIGKILL) {
        tracing::warn!(session = session_id, error = %err, "could not end a process of the session");
    }
    found
}

/// Ends the processes of `sessions` that are still running, after checking each is really the
/// session's. Waits up to `config.kill_grace_secs` between SIGTERM and SIGKILL, and returns once
/// none of them runs any more (or the wait after SIGKILL ran out, which is logged).
pub async fn reap(
    config: &RunnerConfig,
    sessions: &[RecordedSession],
) -> Vec<(String, ReapOutcome)> {
    reap_in(Path::new("/proc"), config.kill_grace_secs, sessions).await
}

async fn reap_in(
    proc_root: &Path,
    grace: Duration,
    sessions: &[RecordedSession],
) -> Vec<(String, ReapOutcome)> {
    let entries = scan(proc_root);
    let mut outcomes = Vec::with_capacity(sessions.len());
    let mut signalled: Vec<(String, Targets)> = Vec::new();
    for session in sessions {
        let outcome = match targets_of(&entries, session) {
            Err(outcome) => outcome,
            Ok(targets) => match targets.signal(Signal::SIGTERM) {
                Ok(()) => {
                    signalled.push((session.session_id.clone(), targets));
                    ReapOutcome::Ended
                }
                Err(err) => ReapOutcome::Failed(err.to_string()),
            },
        };
        match &outcome {
            ReapOutcome::Ended => tracing::warn!(
                session = %session.session_id,
                pid = session.pid,
                "ending the agent processes a previous coordinator left running"
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
    if signalled.is_empty() {
        return outcomes;
    }
    let any_alive = |signalled: &[(String, Targets)], entries: &[ProcessEntry]| {
        signalled
            .iter()
            .any(|(id, targets)| targets.any_alive(id, entries))
    };
    let deadline = tokio::time::Instant::now() + grace;
    while tokio::time::Instant::now() < deadline && any_alive(&signalled, &scan(proc_root)) {
        tokio::time::sleep(POLL).await;
    }
    // Whatever ignored SIGTERM, is still stopping, or was forked meanwhile ends now; repeated
    // until /proc shows none of it.
    let deadline = tokio::time::Instant::now() + KILL_SETTLE;
    loop {
        let entries = scan(proc_root);
        if !any_alive(&signalled, &entries) {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::error!("agent processes of a previous coordinator survived SIGKILL");
            break;
        }
        for (id, targets) in &mut signalled {
            targets.add_marked(id, &entries);
            if let Err(err) = targets.signal(Signal::SIGKILL) {
                tracing::error!(session = %id, error = %err, "could not kill a left-over agent process");
            }
        }
        tokio::time::sleep(POLL).await;
    }
    outcomes
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt as _;

    fn config() -> RunnerConfig {
        let mut config = RunnerConfig::new(std::env::temp_dir());
        config.kill_grace_secs = Duration::from_secs(2);
        config
    }

    fn alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            !stat[stat.rfind(')').unwrap() + 1..]
                .trim_start()
                .starts_with('Z')
        })
    }

    /// Running processes carrying `session_id`'s marker.
    fn marked(session_id: &str) -> Vec<i32> {
        scan(Path::new("/proc"))
            .into_iter()
            .filter(|entry| entry.carries(session_id))
            .map(|entry| entry.pid)
            .collect()
    }

    /// Running (not zombie) members of group `pgid`.
    fn live_in_group(pgid: u32) -> Vec<i32> {
        scan(Path::new("/proc"))
            .into_iter()
            .filter(|entry| i64::from(entry.pgrp) == i64::from(pgid))
            .map(|entry| entry.pid)
            .collect()
    }

    fn unique_id(name: &str) -> String {
        format!(
            "test-{name}-{}-{}",
            std::process::id(),
            Utc::now().timestamp_nanos_opt().unwrap_or(0)
        )
    }

    /// A session leader in its own group, like the runner starts one: `script` under `sh`, with
    /// the session marker in its environment. `sh` is not the configured program of any agent:
    /// the program name plays no part.
    fn start_session(session_id: &str, script: &str) -> std::process::Child {
        std::process::Command::new("sh")
            .args(["-c", script])
            .env(SESSION_ID_VAR, session_id)
            .process_group(0)
            .spawn()
            .unwrap()
    }

    fn recorded(session_id: &str, pid: u32) -> RecordedSession {
        RecordedSession {
            session_id: session_id.to_owned(),
            agent: "python-agent".into(),
            pid,
            started_at: Utc::now(),
        }
    }

    fn wait_for_marked(session_id: &str, count: usize) {
        for _ in 0..100 {
            if marked(session_id).len() >= count {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "expected {count} processes of {session_id}, found {:?}",
            marked(session_id)
        );
    }

    #[tokio::test]
    async fn an_orphaned_group_is_ended_with_its_children() {
        let id = unique_id("group");
        let mut child = start_session(&id, "sleep 300 & wait");
        wait_for_marked(&id, 2);
        let pid = child.id();
        let outcomes = reap(&config(), &[recorded(&id, pid)]).await;
        assert_eq!(outcomes, vec![(id.clone(), ReapOutcome::Ended)]);
        let _ = child.wait();
        assert!(!alive(pid));
        assert!(marked(&id).is_empty(), "{:?}", marked(&id));
        assert!(
            live_in_group(pid).is_empty(),
            "no member of the group is left"
        );
    }

    #[tokio::test]
    async fn the_group_is_ended_when_its_leader_is_already_gone() {
        let id = unique_id("leaderless");
        // The leader starts two long children in its group and exits, as a wrapper whose
        // children survived a restart.
        let mut child = start_session(&id, "sleep 300 & sleep 300 & exit 0");
        let pid = child.id();
        child.wait().unwrap();
        wait_for_marked(&id, 2);
        let outcomes = reap(&config(), &[recorded(&id, pid)]).await;
        assert_eq!(outcomes, vec![(id.clone(), ReapOutcome::Ended)]);
        assert!(marked(&id).is_empty(), "{:?}", marked(&id));
        assert!(
            live_in_group(pid).is_empty(),
            "no member of the group is left"
        );
    }

    #[tokio::test]
    async fn descendants_that_left_the_group_are_found_by_their_marker() {
        let id = unique_id("setsid");
        // One child leaves the group and the session (`setsid`), one ignores SIGTERM.
        let mut child = start_session(
            &id,
            "setsid sleep 300 & sh -c 'trap \"\" TERM; while :; do sleep 1; done' & wait",
        );
        wait_for_marked(&id, 3);
        let pid = child.id();
        let outcomes = reap(&config(), &[recorded(&id, pid)]).await;
        assert_eq!(outcomes, vec![(id.clone(), ReapOutcome::Ended)]);
        let _ = child.wait();
        assert!(marked(&id).is_empty(), "{:?}", marked(&id));
    }

    #[test]
    fn the_end_of_a_session_kills_its_marked_processes() {
        let id = unique_id("end");
        let mut child = start_session(&id, "setsid sleep 300 & wait");
        wait_for_marked(&id, 2);
        assert_eq!(kill_marked(Path::new("/proc"), &id), 2);
        let _ = child.wait();
        for _ in 0..100 {
            if marked(&id).is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("still running: {:?}", marked(&id));
    }

    #[tokio::test]
    async fn a_reused_or_foreign_pid_is_left_alone() {
        // A process in its own group without any marker: the recorded pid was reused.
        let mut foreign = std::process::Command::new("sleep")
            .arg("300")
            .env_remove(SESSION_ID_VAR)
            .process_group(0)
            .spawn()
            .unwrap();
        // A process of another session.
        let other_id = unique_id("other");
        let mut other = start_session(&other_id, "sleep 300");
        std::thread::sleep(Duration::from_millis(50));
        let mine = unique_id("mine");
        let outcomes = reap(
            &config(),
            &[recorded(&mine, foreign.id()), recorded(&mine, other.id())],
        )
        .await;
        assert!(
            matches!(&outcomes[0].1, ReapOutcome::NotOurs(why) if why.contains("no session marker")),
            "{outcomes:?}"
        );
        assert!(
            matches!(&outcomes[1].1, ReapOutcome::NotOurs(why) if why.contains(&other_id)),
            "{outcomes:?}"
        );
        assert!(
            alive(foreign.id()) && alive(other.id()),
            "nothing was signalled"
        );
        for child in [&mut foreign, &mut other] {
            child.kill().unwrap();
            let _ = child.wait();
        }
    }

    #[tokio::test]
    async fn a_process_that_is_gone_needs_nothing() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let outcomes = reap(&config(), &[recorded("s3", pid)]).await;
        assert_eq!(outcomes[0].1, ReapOutcome::Gone);
    }

    #[test]
    fn an_unreadable_environment_falls_back_to_the_start_time() {
        let session = recorded("s4", 4242);
        let leader = |marker, started_at| ProcessEntry {
            pid: 4242,
            pgrp: 4242,
            started_at: Some(started_at),
            marker,
        };
        assert!(leader_is_ours(&leader(Marker::Unreadable, session.started_at), &session).is_ok());
        let long_before = session.started_at - chrono::Duration::hours(2);
        assert!(leader_is_ours(&leader(Marker::Unreadable, long_before), &session).is_err());
        // A readable marker decides, whatever the time.
        assert!(
            leader_is_ours(&leader(Marker::Session("s4".into()), long_before), &session).is_ok()
        );
        assert!(leader_is_ours(&leader(Marker::Absent, session.started_at), &session).is_err());
        let member = ProcessEntry {
            pgrp: 1,
            ..leader(Marker::Session("s4".into()), session.started_at)
        };
        assert!(
            leader_is_ours(&member, &session).is_err(),
            "not a group leader"
        );
    }

    #[test]
    fn reads_the_marker_from_an_environment_block() {
        assert_eq!(
            session_marker(b"PATH=/bin\0MOSAIC_SESSION_ID=abc-1\0X=MOSAIC_SESSION_ID=no\0"),
            Marker::Session("abc-1".into())
        );
        assert_eq!(
            session_marker(b"PATH=/bin\0XMOSAIC_SESSION_ID=no\0"),
            Marker::Absent
        );
        assert_eq!(session_marker(b""), Marker::Absent);
    }
}
