//! Workspace settings (the `[workspace]` section).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::branch::is_valid_ref_name;

/// A setting the workspaces cannot work with; the message names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("workspace.{key}: {problem}")]
pub struct WorkspaceConfigError {
    pub key: &'static str,
    pub problem: String,
}

fn problem(key: &'static str, problem: impl Into<String>) -> WorkspaceConfigError {
    WorkspaceConfigError {
        key,
        problem: problem.into(),
    }
}

/// Where mirrors and worktrees live, how branches are named, and how long git may take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkspaceConfig {
    /// Directory that holds the mirrors, the worktrees and git's home; created when missing.
    /// Nothing outside it is ever deleted.
    pub root: PathBuf,
    /// Prefix of every branch the coordinator creates and the only branches it pushes:
    /// `<prefix><number>-<slug>`.
    pub branch_prefix: String,
    /// Branch new worktrees start from; the repository's default branch when unset.
    pub base_branch: Option<String>,
    /// A workspace is not prepared when less than this many bytes are free under the root.
    pub min_free_bytes: u64,
    /// The git executable: a name looked up in `PATH`, or a path.
    pub git_program: PathBuf,
    /// Longest a clone, fetch or push may take, in seconds (the child is killed after).
    pub network_timeout_secs: u64,
    /// Longest any other git command may take, in seconds.
    pub command_timeout_secs: u64,
    /// Author and committer of the commits the coordinator makes itself.
    pub committer_name: String,
    pub committer_email: String,
}

impl Default for WorkspaceConfig {
    fn default() -> Self {
        Self {
            root: PathBuf::from("data/workspaces"),
            branch_prefix: "mosaic/".to_owned(),
            base_branch: None,
            min_free_bytes: 1024 * 1024 * 1024,
            git_program: PathBuf::from("git"),
            network_timeout_secs: 600,
            command_timeout_secs: 120,
            committer_name: "Mosaic Coordinator".to_owned(),
            committer_email: "mosaic-coordinator@localhost".to_owned(),
        }
    }
}

impl WorkspaceConfig {
    /// Every problem a start-up would otherwise meet later, named by its key.
    pub fn validate(&self) -> Result<(), WorkspaceConfigError> {
        if self.root.as_os_str().is_empty() {
            return Err(problem("root", "must name a directory"));
        }
        if self.root.parent().is_none() {
            return Err(problem(
                "root",
                "must not be the file system root (workspaces under it are deleted)",
            ));
        }
        let prefix = &self.branch_prefix;
        if prefix.is_empty() {
            // Without a prefix every branch of the repository would count as the bot's own.
            return Err(problem("branch_prefix", "must not be empty"));
        }
        if !is_valid_ref_name(&format!("refs/heads/{prefix}1-x")) || prefix.starts_with('-') {
            return Err(problem(
                "branch_prefix",
                format!("`{prefix}` does not make valid branch names (git check-ref-format)"),
            ));
        }
        if let Some(base) = &self.base_branch
            && (base.is_empty() || !is_valid_ref_name(&format!("refs/heads/{base}")))
        {
            return Err(problem(
                "base_branch",
                format!("`{base}` is not a valid branch name"),
            ));
        }
        if self.git_program.as_os_str().is_empty() {
            return Err(problem("git_program", "must name the git executable"));
        }
        for (key, value) in [
            ("network_timeout_secs", self.network_timeout_secs),
            ("command_timeout_secs", self.command_timeout_secs),
        ] {
            if value == 0 {
                return Err(problem(key, "must be greater than zero"));
            }
        }
        for (key, value) in [
            ("committer_name", &self.committer_name),
            ("committer_email", &self.committer_email),
        ] {
            let value = value.trim();
            if value.is_empty() || value.contains(['<', '>', '\n']) {
                return Err(problem(
                    key,
                    "must be non-empty, without `<`, `>` or line breaks",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_read_from_toml() {
        WorkspaceConfig::default().validate().unwrap();
        let config: WorkspaceConfig =
            toml::from_str("root = \"/srv/ws\"\nbase_branch = \"develop\"\nmin_free_bytes = 5")
                .unwrap();
        assert_eq!(config.branch_prefix, "mosaic/");
        assert_eq!(config.base_branch.as_deref(), Some("develop"));
        assert_eq!(config.git_program, PathBuf::from("git"));
        config.validate().unwrap();
        let err = toml::from_str::<WorkspaceConfig>("rooot = \"/x\"").unwrap_err();
        assert!(err.to_string().contains("rooot"), "{err}");
    }

    #[test]
    fn errors_name_the_key() {
        let check = |config: WorkspaceConfig, key: &str| {
            let err = config.validate().unwrap_err();
            assert_eq!(err.key, key);
            assert!(
                err.to_string().starts_with(&format!("workspace.{key}:")),
                "{err}"
            );
        };
        let base = WorkspaceConfig::default;
        check(
            WorkspaceConfig {
                root: PathBuf::new(),
                ..base()
            },
            "root",
        );
        check(
            WorkspaceConfig {
                root: PathBuf::from("/"),
                ..base()
            },
            "root",
        );
        for prefix in [
            "",
            "bad..prefix/",
            "x.lock/",
            "-x/",
            "has space/",
            ".hidden/",
        ] {
            check(
                WorkspaceConfig {
                    branch_prefix: prefix.to_owned(),
                    ..base()
                },
                "branch_prefix",
            );
        }
        check(
            WorkspaceConfig {
                base_branch: Some("ma~in".to_owned()),
                ..base()
            },
            "base_branch",
        );
        check(
            WorkspaceConfig {
                git_program: PathBuf::new(),
                ..base()
            },
            "git_program",
        );
        check(
            WorkspaceConfig {
                network_timeout_secs: 0,
                ..base()
            },
            "network_timeout_secs",
        );
        check(
            WorkspaceConfig {
                command_timeout_secs: 0,
                ..base()
            },
            "command_timeout_secs",
        );
        check(
            WorkspaceConfig {
                committer_email: "a<b".to_owned(),
                ..base()
            },
            "committer_email",
        );
        // A prefix without a slash is fine: `bot-12-title`.
        WorkspaceConfig {
            branch_prefix: "bot-".to_owned(),
            ..base()
        }
        .validate()
        .unwrap();
    }
}
