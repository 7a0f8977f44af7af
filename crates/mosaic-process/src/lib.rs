//! Running one child process within bounds: its own process group, an environment built by the
//! caller (nothing inherited), a working directory, a deadline, capped stdout and stderr, and
//! the whole group killed when the child is done, past its deadline, or abandoned.
//!
//! The group kill is what keeps helpers from outliving their command: whatever the child starts
//! stays in its process group unless it leaves on purpose (`setsid`, a daemon), and the group is
//! killed (SIGKILL) after the leader exits, at the deadline, and when the future running it is
//! dropped. A process that leaves the group is beyond this crate; the sandbox around the
//! coordinator bounds it.

mod capture;

use std::ffi::OsString;
use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::Command;

pub use capture::{Captured, Keep, OutputLimit};

/// After the leader exits (or is killed) and its group is killed, how long the pipes may take to
/// close. They close at once unless a process that left the group still holds them; its output is
/// then abandoned rather than waited for.
const DRAIN_GRACE: Duration = Duration::from_secs(1);

/// One child to run: program, arguments, working directory, its whole environment and its
/// bounds. stdin is always empty (`/dev/null`).
#[derive(Clone)]
pub struct ChildSpec {
    pub program: OsString,
    pub args: Vec<OsString>,
    pub dir: PathBuf,
    /// The child's whole environment; nothing of the caller's own is inherited.
    pub env: Vec<(OsString, OsString)>,
    pub timeout: Duration,
    pub stdout: OutputLimit,
    pub stderr: OutputLimit,
}

impl fmt::Debug for ChildSpec {
    /// Environment values are left out: they may hold a token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let env_names: Vec<_> = self.env.iter().map(|(name, _)| name).collect();
        f.debug_struct("ChildSpec")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("dir", &self.dir)
            .field("env_names", &env_names)
            .field("timeout", &self.timeout)
            .field("stdout", &self.stdout)
            .field("stderr", &self.stderr)
            .finish()
    }
}

impl ChildSpec {
    /// A spec with no arguments, an empty environment and 64 KiB of each stream (the tail).
    pub fn new(program: impl Into<OsString>, dir: impl Into<PathBuf>, timeout: Duration) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            dir: dir.into(),
            env: Vec::new(),
            timeout,
            stdout: OutputLimit::tail(64 * 1024),
            stderr: OutputLimit::tail(64 * 1024),
        }
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, name: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    pub fn output_limits(mut self, stdout: OutputLimit, stderr: OutputLimit) -> Self {
        self.stdout = stdout;
        self.stderr = stderr;
        self
    }

    /// The command, ready to spawn: cleared and rebuilt environment, null stdin, piped output,
    /// its own process group, killed if dropped.
    pub fn command(&self) -> Command {
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .current_dir(&self.dir)
            .env_clear()
            .envs(self.env.iter().map(|(name, value)| (name, value)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        command
    }
}

/// How the child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Exited {
        code: i32,
    },
    /// Killed by a signal it was not sent by us.
    Signalled {
        signal: i32,
    },
    /// Still running at its deadline; it and its group were killed.
    TimedOut,
}

impl Ending {
    pub fn success(self) -> bool {
        self == Self::Exited { code: 0 }
    }

    /// The exit code, if it exited.
    pub fn code(self) -> Option<i32> {
        match self {
            Self::Exited { code } => Some(code),
            Self::Signalled { .. } | Self::TimedOut => None,
        }
    }
}

impl fmt::Display for Ending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exited { code } => write!(f, "exit code {code}"),
            Self::Signalled { signal } => write!(f, "killed by signal {signal}"),
            Self::TimedOut => f.write_str("timed out"),
        }
    }
}

/// A child that ran (to its end or to its deadline).
#[derive(Debug, Clone)]
pub struct Finished {
    pub ending: Ending,
    pub stdout: Captured,
    pub stderr: Captured,
    pub elapsed: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The program could not be started (missing, not executable, bad working directory).
    #[error("could not start `{program}`: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// Waiting for the started child failed (it was killed with its group).
    #[error("could not wait for `{program}`: {source}")]
    Wait {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

/// Runs the child to its end or its deadline. Any exit status is a result, not an error; the
/// group is killed in every case, and also if this future is dropped before it finishes.
pub async fn run(spec: &ChildSpec) -> Result<Finished, ProcessError> {
    let program = || spec.program.to_string_lossy().into_owned();
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + spec.timeout;
    let mut child = spec
        .command()
        .spawn()
        .map_err(|source| ProcessError::Spawn {
            program: program(),
            source,
        })?;
    let mut group = GroupGuard(
        child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw),
    );
    let stdout_pipe = child.stdout.take();
    let stderr_pipe = child.stderr.take();
    let mut stdout = Captured::new(spec.stdout);
    let mut stderr = Captured::new(spec.stderr);
    let waited = {
        let reading = async {
            tokio::join!(stdout.fill(stdout_pipe), stderr.fill(stderr_pipe));
        };
        tokio::pin!(reading);
        let mut read_to_end = false;
        let waited = loop {
            tokio::select! {
                // `Child::wait` is cancel-safe, so a new call each round loses nothing.
                status = child.wait() => break Some(status),
                () = &mut reading, if !read_to_end => read_to_end = true,
                () = tokio::time::sleep_until(deadline) => break None,
            }
        };
        // Whatever the leader left running in its group ends with it.
        group.kill();
        if waited.is_none() {
            // Reaps the leader too.
            let _ = child.kill().await;
        }
        if !read_to_end {
            let _ = tokio::time::timeout(DRAIN_GRACE, &mut reading).await;
        }
        waited
    };
    stdout.compact();
    stderr.compact();
    let ending = match waited {
        None => Ending::TimedOut,
        Some(Err(source)) => {
            return Err(ProcessError::Wait {
                program: program(),
                source,
            });
        }
        Some(Ok(status)) => match (status.code(), status.signal()) {
            (Some(code), _) => Ending::Exited { code },
            (None, Some(signal)) => Ending::Signalled { signal },
            // Neither code nor signal does not happen on Unix; treated as a failure.
            (None, None) => Ending::Exited { code: -1 },
        },
    };
    Ok(Finished {
        ending,
        stdout,
        stderr,
        elapsed: started.elapsed(),
    })
}

/// Kills a child's process group: on [`GroupGuard::kill`], or when dropped first (the caller's
/// future was cancelled mid-command).
struct GroupGuard(Option<Pid>);

impl GroupGuard {
    fn kill(&mut self) {
        if let Some(group) = self.0.take() {
            // ESRCH (the group is already gone) is the normal case after a clean exit.
            let _ = killpg(group, Signal::SIGKILL);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}
