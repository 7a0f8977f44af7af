//! Running git: a clean environment, the bot token in that environment only, a time limit,
//! bounded output, and stderr redacted before it reaches an error.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mosaic_process::{ChildSpec, Ending, OutputLimit, ProcessError};
use mosaic_security::{Redactor, Secret, clip};
use mosaic_workspace::{WorkspaceConfig, WorkspaceError};

/// Most stdout kept from one git command (status and diffstat of a huge change stay bounded).
const MAX_STDOUT_BYTES: usize = 4 * 1024 * 1024;
/// Most stderr kept.
const MAX_STDERR_BYTES: usize = 64 * 1024;
/// Most characters of stderr put into an error.
const MAX_ERROR_CHARS: usize = 2_000;

/// Environment variables passed through to git when set: proxies are the operator's network
/// set-up, not configuration a user's dotfiles could inject.
const PASSED_THROUGH: &[&str] = &[
    "PATH",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
];

/// Configuration given to every git child through `GIT_CONFIG_KEY_n`/`GIT_CONFIG_VALUE_n`,
/// which outranks every configuration file. The worktree belongs to an untrusted agent that
/// can write the repository's configuration; these keep it from running code in, or taking
/// credentials from, the coordinator's git commands.
const FORCED_CONFIG: &[(&str, &str)] = &[
    // An empty value clears every credential helper configured anywhere.
    ("credential.helper", ""),
    ("core.hooksPath", "/dev/null"),
    ("core.fsmonitor", "false"),
    ("core.sshCommand", "false"),
    ("commit.gpgSign", "false"),
    ("http.sslVerify", "true"),
    // The token header must not follow a redirect to another host.
    ("http.followRedirects", "false"),
];

/// Whether a command talks to the remote (and so carries the token and the longer time limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reach {
    Local,
    /// Talks to the server, with the token (for URLs under the call's scope only).
    Remote,
}

/// One git invocation.
#[derive(Debug)]
pub(crate) struct GitCall<'a> {
    pub operation: &'static str,
    pub dir: &'a Path,
    pub args: Vec<OsString>,
    /// `Some(scope)`: a network operation authenticated for URLs under `scope`.
    pub credential_scope: Option<&'a str>,
    /// The repository a network operation is for, as errors name it.
    pub repo: &'a str,
}

impl<'a> GitCall<'a> {
    pub fn local(operation: &'static str, dir: &'a Path, args: &[&str]) -> Self {
        Self {
            operation,
            dir,
            args: args.iter().map(OsString::from).collect(),
            credential_scope: None,
            repo: "",
        }
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn remote(mut self, scope: &'a str, repo: &'a str) -> Self {
        self.credential_scope = Some(scope);
        self.repo = repo;
        self
    }

    fn reach(&self) -> Reach {
        if self.credential_scope.is_some() {
            Reach::Remote
        } else {
            Reach::Local
        }
    }
}

/// What a finished git command printed.
#[derive(Debug)]
pub(crate) struct GitOutput {
    pub code: Option<i32>,
    pub stdout: String,
    /// Redacted and bounded.
    pub stderr: String,
}

/// Runs git for the adapter.
pub(crate) struct Git {
    program: PathBuf,
    home: PathBuf,
    token: Secret,
    redactor: Redactor,
    committer_name: String,
    committer_email: String,
    network_timeout: Duration,
    command_timeout: Duration,
}

impl std::fmt::Debug for Git {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Git")
            .field("program", &self.program)
            .field("home", &self.home)
            .finish_non_exhaustive()
    }
}

impl Git {
    pub fn new(config: &WorkspaceConfig, home: PathBuf, token: Secret) -> Self {
        Self {
            program: config.git_program.clone(),
            home,
            redactor: Redactor::new([&token]),
            token,
            committer_name: config.committer_name.trim().to_owned(),
            committer_email: config.committer_email.trim().to_owned(),
            network_timeout: Duration::from_secs(config.network_timeout_secs),
            command_timeout: Duration::from_secs(config.command_timeout_secs),
        }
    }

    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// The child's whole environment: nothing inherited but [`PASSED_THROUGH`].
    pub fn environment(&self, call: &GitCall<'_>) -> Vec<(OsString, OsString)> {
        let mut env: Vec<(OsString, OsString)> = PASSED_THROUGH
            .iter()
            .filter_map(|name| std::env::var_os(name).map(|value| (OsString::from(name), value)))
            .collect();
        let mut set = |name: &str, value: &str| env.push((name.into(), value.into()));
        set("LANG", "C");
        set("LC_ALL", "C");
        set("GIT_CONFIG_NOSYSTEM", "1");
        set("GIT_TERMINAL_PROMPT", "0");
        // Set but empty: git then asks no askpass program, not even one named in a repository's
        // configuration (`core.askPass`).
        set("GIT_ASKPASS", "");
        set("SSH_ASKPASS", "");
        set("GIT_AUTHOR_NAME", &self.committer_name);
        set("GIT_AUTHOR_EMAIL", &self.committer_email);
        set("GIT_COMMITTER_NAME", &self.committer_name);
        set("GIT_COMMITTER_EMAIL", &self.committer_email);
        let mut config: Vec<(String, String)> = FORCED_CONFIG
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect();
        if let Some(scope) = call.credential_scope {
            config.push((
                format!("http.{scope}.extraHeader"),
                format!("Authorization: token {}", self.token.expose_secret()),
            ));
        }
        env.push(("GIT_CONFIG_COUNT".into(), config.len().to_string().into()));
        for (index, (key, value)) in config.into_iter().enumerate() {
            env.push((format!("GIT_CONFIG_KEY_{index}").into(), key.into()));
            env.push((format!("GIT_CONFIG_VALUE_{index}").into(), value.into()));
        }
        let mut env_home = |name: &str, value: PathBuf| env.push((name.into(), value.into()));
        // A home of the coordinator's own: no user's ~/.gitconfig applies.
        env_home("HOME", self.home.clone());
        env_home("XDG_CONFIG_HOME", self.home.join(".config"));
        env
    }

    /// The child to run: argv, working directory, environment and bounds (the token never in
    /// argv).
    pub fn spec(&self, call: &GitCall<'_>) -> ChildSpec {
        ChildSpec {
            program: self.program.clone().into_os_string(),
            args: call.args.clone(),
            dir: call.dir.to_path_buf(),
            env: self.environment(call),
            timeout: self.timeout(call),
            stdout: OutputLimit::head(MAX_STDOUT_BYTES),
            stderr: OutputLimit::head(MAX_STDERR_BYTES),
        }
    }

    /// The command, ready to spawn (its own process group, so a timeout ends the helpers git
    /// starts too).
    #[cfg(test)]
    pub fn command(&self, call: &GitCall<'_>) -> tokio::process::Command {
        self.spec(call).command()
    }

    fn timeout(&self, call: &GitCall<'_>) -> Duration {
        match call.reach() {
            Reach::Remote => self.network_timeout,
            Reach::Local => self.command_timeout,
        }
    }

    /// Runs the call; any exit status is returned (for commands whose status is an answer).
    pub async fn output(&self, call: &GitCall<'_>) -> Result<GitOutput, WorkspaceError> {
        let spec = self.spec(call);
        let finished = mosaic_process::run(&spec)
            .await
            .map_err(|err| WorkspaceError::Spawn {
                program: self.program.display().to_string(),
                message: match &err {
                    ProcessError::Spawn { source, .. } => source.to_string(),
                    ProcessError::Wait { .. } => err.to_string(),
                },
            })?;
        let code = match finished.ending {
            Ending::TimedOut => {
                return Err(WorkspaceError::Timeout {
                    operation: call.operation,
                    seconds: spec.timeout.as_secs(),
                });
            }
            Ending::Exited { code } => Some(code),
            Ending::Signalled { .. } => None,
        };
        let stderr = clip(
            self.redactor
                .redact(finished.stderr.text_lossy().trim())
                .as_str(),
            MAX_ERROR_CHARS,
        );
        Ok(GitOutput {
            code,
            stdout: finished.stdout.text_lossy(),
            stderr,
        })
    }

    /// Runs the call and requires success; returns stdout.
    pub async fn run(&self, call: &GitCall<'_>) -> Result<String, WorkspaceError> {
        let output = self.output(call).await?;
        if output.code == Some(0) {
            Ok(output.stdout)
        } else {
            Err(self.failure(call, &output))
        }
    }

    /// The error for a failed call: a refused credential is told apart from other failures.
    pub fn failure(&self, call: &GitCall<'_>, output: &GitOutput) -> WorkspaceError {
        if call.reach() == Reach::Remote && looks_unauthorized(&output.stderr) {
            return WorkspaceError::Unauthorized {
                operation: call.operation,
                repo: call.repo.to_owned(),
                detail: output.stderr.clone(),
            };
        }
        WorkspaceError::Git {
            operation: call.operation,
            status: output.code.map_or_else(
                || "killed by a signal".to_owned(),
                |code| format!("exit code {code}"),
            ),
            stderr: output.stderr.clone(),
        }
    }
}

/// git's wording when the server answered 401/403 and no prompt may ask for another password.
fn looks_unauthorized(stderr: &str) -> bool {
    let lower = stderr.to_ascii_lowercase();
    [
        "authentication failed",
        "could not read username",
        "could not read password",
        "terminal prompts disabled",
        "the requested url returned error: 401",
        "the requested url returned error: 403",
    ]
    .iter()
    .any(|needle| lower.contains(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "gitea-bot-token-0123456789";

    fn git() -> Git {
        Git::new(
            &WorkspaceConfig::default(),
            PathBuf::from("/srv/ws/home"),
            Secret::new(TOKEN),
        )
    }

    fn env_of(command: &tokio::process::Command) -> Vec<(String, Option<String>)> {
        command
            .as_std()
            .get_envs()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.map(|v| v.to_string_lossy().into_owned()),
                )
            })
            .collect()
    }

    #[test]
    fn the_token_is_only_in_the_environment_scoped_to_the_server() {
        let git = git();
        let dir = PathBuf::from("/tmp");
        let call = GitCall::local("fetch", &dir, &["fetch", "--prune"])
            .arg("https://gitea.example/o/r.git")
            .remote("https://gitea.example/o/r.git", "o/r");
        let command = git.command(&call);
        let argv: Vec<String> = command
            .as_std()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(argv.iter().all(|a| !a.contains(TOKEN)), "{argv:?}");
        assert_eq!(command.as_std().get_program(), "git");
        let env = env_of(&command);
        let holding: Vec<&String> = env
            .iter()
            .filter(|(_, v)| v.as_deref().is_some_and(|v| v.contains(TOKEN)))
            .map(|(k, _)| k)
            .collect();
        assert_eq!(holding.len(), 1, "{holding:?}");
        let index = holding[0].strip_prefix("GIT_CONFIG_VALUE_").unwrap();
        let key = env
            .iter()
            .find(|(k, _)| *k == format!("GIT_CONFIG_KEY_{index}"))
            .and_then(|(_, v)| v.clone())
            .unwrap();
        assert_eq!(key, "http.https://gitea.example/o/r.git.extraHeader");
        let get = |name: &str| {
            env.iter()
                .find(|(k, _)| k == name)
                .and_then(|(_, v)| v.clone())
        };
        assert_eq!(get("GIT_TERMINAL_PROMPT").as_deref(), Some("0"));
        assert_eq!(get("GIT_CONFIG_NOSYSTEM").as_deref(), Some("1"));
        assert_eq!(get("HOME").as_deref(), Some("/srv/ws/home"));
        assert_eq!(get("LANG").as_deref(), Some("C"));
        assert_eq!(get("GIT_ASKPASS").as_deref(), Some(""));
        // Nothing else of the coordinator's own environment.
        for (name, _) in &env {
            assert!(
                !name.starts_with("CARGO") && name != "USER" && name != "SSH_AUTH_SOCK",
                "{name} leaked"
            );
        }
    }

    #[test]
    fn local_commands_carry_no_token() {
        let git = git();
        let dir = PathBuf::from("/tmp");
        let command = git.command(&GitCall::local("status", &dir, &["status"]));
        assert!(
            env_of(&command)
                .iter()
                .all(|(_, v)| !v.as_deref().is_some_and(|v| v.contains(TOKEN)))
        );
    }

    #[test]
    fn recognises_refused_credentials() {
        assert!(looks_unauthorized(
            "fatal: could not read Username for 'http://127.0.0.1:1': terminal prompts disabled"
        ));
        assert!(looks_unauthorized(
            "fatal: Authentication failed for 'https://x/'"
        ));
        assert!(!looks_unauthorized(
            "fatal: repository 'https://x/' not found"
        ));
    }

    #[tokio::test]
    async fn a_command_past_its_time_limit_is_stopped_with_its_group() {
        let config = WorkspaceConfig {
            git_program: PathBuf::from("sh"),
            command_timeout_secs: 1,
            ..WorkspaceConfig::default()
        };
        let git = Git::new(&config, PathBuf::from("/tmp"), Secret::new(TOKEN));
        let dir = tempfile::tempdir().unwrap();
        let started = std::time::Instant::now();
        let err = git.run(&sleeping_call(dir.path())).await.unwrap_err();
        assert!(
            matches!(err, WorkspaceError::Timeout { seconds: 1, .. }),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_helper_ends(dir.path());
    }

    #[tokio::test]
    async fn a_cancelled_call_ends_its_process_group() {
        let config = WorkspaceConfig {
            git_program: PathBuf::from("sh"),
            ..WorkspaceConfig::default()
        };
        let git = Git::new(&config, PathBuf::from("/tmp"), Secret::new(TOKEN));
        let dir = tempfile::tempdir().unwrap();
        let call = sleeping_call(dir.path());
        let cancelled = tokio::time::timeout(Duration::from_millis(500), git.run(&call)).await;
        assert!(cancelled.is_err());
        assert_helper_ends(dir.path());
    }

    /// `sh` that starts a background helper (its pid in `helper.pid`) and sleeps.
    fn sleeping_call(dir: &Path) -> GitCall<'_> {
        let script = format!(
            "sleep 30 & echo $! > '{}'; sleep 30",
            dir.join("helper.pid").display()
        );
        GitCall::local("sleep", dir, &["-c"]).arg(script)
    }

    /// The background helper is gone (or a zombie waiting to be reaped) within two seconds.
    fn assert_helper_ends(dir: &Path) {
        let mut pid = String::new();
        for _ in 0..100 {
            pid = std::fs::read_to_string(dir.join("helper.pid")).unwrap_or_default();
            if !pid.trim().is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let stat = PathBuf::from(format!("/proc/{}/stat", pid.trim()));
        let running = || {
            std::fs::read_to_string(&stat).is_ok_and(|text| {
                text.rsplit(')')
                    .next()
                    .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
            })
        };
        for _ in 0..100 {
            if !running() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("helper {} outlived its git call", pid.trim());
    }

    #[tokio::test]
    async fn stderr_is_redacted_before_it_reaches_an_error() {
        let config = WorkspaceConfig {
            git_program: PathBuf::from("sh"),
            ..WorkspaceConfig::default()
        };
        let git = Git::new(&config, PathBuf::from("/tmp"), Secret::new(TOKEN));
        let dir = PathBuf::from("/tmp");
        let script = format!("echo \"fatal: bad header {TOKEN}\" >&2; exit 3");
        let err = git
            .run(&GitCall::local("fetch", &dir, &["-c", &script]))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(!text.contains(TOKEN), "{text}");
        assert!(
            text.contains("exit code 3") && text.contains("[redacted]"),
            "{text}"
        );
    }
}
