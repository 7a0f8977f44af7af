//! The `[gitea]` section of the coordinator's configuration.

use std::collections::BTreeMap;
use std::time::Duration;

use mosaic_domain::RepoName;
use mosaic_security::Secret;
use serde::Deserialize;
use url::Url;

/// How the coordinator reaches Gitea and acts there.
#[derive(Debug, Clone, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GiteaConfig {
    /// Gitea's base URL, e.g. `https://git.example.com` (env GITEA_URL); `/api/v1` is appended.
    /// Credentials in it are refused (they would be printed and sent as Basic auth); it
    /// serialises without them in any case.
    #[serde(serialize_with = "url_without_credentials")]
    pub url: Url,
    /// The bot's access token (env GITEA_BOT_TOKEN). Unset: events are recorded, nothing is
    /// written to Gitea.
    #[serde(default)]
    pub token: Option<Secret>,
    /// The login the token must belong to (env GITEA_BOT_USERNAME); checked at start.
    #[serde(default)]
    pub bot_username: Option<String>,
    /// Whose assignments the coordinator acts on; defaults to the bot's own login.
    #[serde(default)]
    pub assignee: Option<String>,
    #[serde(default = "defaults::connect_timeout_secs")]
    pub connect_timeout_secs: u64,
    #[serde(default = "defaults::request_timeout_secs")]
    pub request_timeout_secs: u64,
    /// Limit for one read (GET). Reads sit on the delivery path and fall back (to the issue's
    /// own metadata, then reconciliation), so they give up sooner than writes.
    #[serde(default = "defaults::read_timeout_secs")]
    pub read_timeout_secs: u64,
    #[serde(default = "defaults::reconcile_interval_secs")]
    pub reconcile_interval_secs: u64,
    /// Upper bound on Gitea requests per second during reconciliation.
    #[serde(default = "defaults::reconcile_max_requests_per_sec")]
    pub reconcile_max_requests_per_sec: u32,
    /// Repositories to reconcile and to check for a webhook; empty: reconciliation searches
    /// every repository the bot can see.
    #[serde(default)]
    pub repositories: Vec<RepoName>,
    /// Colour (`#rrggbb`) for labels the coordinator creates, by label name.
    #[serde(default)]
    pub label_colours: BTreeMap<String, String>,
    /// Colour for a created label not named in `label_colours`.
    #[serde(default = "defaults::label_colour")]
    pub default_label_colour: String,
}

mod defaults {
    pub(super) fn connect_timeout_secs() -> u64 {
        5
    }
    pub(super) fn request_timeout_secs() -> u64 {
        30
    }
    pub(super) fn read_timeout_secs() -> u64 {
        5
    }
    pub(super) fn reconcile_interval_secs() -> u64 {
        300
    }
    pub(super) fn reconcile_max_requests_per_sec() -> u32 {
        5
    }
    pub(super) fn label_colour() -> String {
        "#1d76db".to_owned()
    }
}

/// `url` as it may be shown: user name and password replaced.
pub fn shown_url(url: &Url) -> String {
    if url.username().is_empty() && url.password().is_none() {
        return url.to_string();
    }
    let mut shown = url.clone();
    // Setting credentials fails only for URLs that cannot have them, which then have none.
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    let text = shown.to_string();
    match text.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://[redacted]@{rest}"),
        None => text,
    }
}

fn url_without_credentials<S: serde::Serializer>(
    url: &Url,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&shown_url(url))
}

/// One problem with the `[gitea]` section, naming its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("gitea.{key}: {problem}")]
pub struct ConfigError {
    pub key: String,
    pub problem: String,
}

impl GiteaConfig {
    /// A configuration with every default, for programmatic use (tests, the demo).
    pub fn new(url: Url, token: Option<Secret>) -> Self {
        Self {
            url,
            token,
            bot_username: None,
            assignee: None,
            connect_timeout_secs: defaults::connect_timeout_secs(),
            request_timeout_secs: defaults::request_timeout_secs(),
            read_timeout_secs: defaults::read_timeout_secs(),
            reconcile_interval_secs: defaults::reconcile_interval_secs(),
            reconcile_max_requests_per_sec: defaults::reconcile_max_requests_per_sec(),
            repositories: Vec::new(),
            label_colours: BTreeMap::new(),
            default_label_colour: defaults::label_colour(),
        }
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    pub fn read_timeout(&self) -> Duration {
        Duration::from_secs(self.read_timeout_secs)
    }

    pub fn reconcile_interval(&self) -> Duration {
        Duration::from_secs(self.reconcile_interval_secs)
    }

    /// The colour for a label the coordinator creates, normalised to `#rrggbb`.
    pub fn label_colour(&self, name: &str) -> String {
        let colour = self
            .label_colours
            .get(name)
            .unwrap_or(&self.default_label_colour);
        normalise_colour(colour).unwrap_or_else(defaults::label_colour)
    }

    /// Every problem at once, so a user fixes the file in one go.
    pub fn validate(&self) -> Result<(), Vec<ConfigError>> {
        let mut problems = Vec::new();
        let mut problem = |key: &str, text: String| {
            problems.push(ConfigError {
                key: key.to_owned(),
                problem: text,
            });
        };
        let shown = shown_url(&self.url);
        if !matches!(self.url.scheme(), "http" | "https") {
            problem(
                "url",
                format!("`{shown}` must be an http:// or https:// URL"),
            );
        }
        if self.url.cannot_be_a_base() || self.url.host().is_none() {
            problem("url", format!("`{shown}` has no host"));
        }
        if !self.url.username().is_empty() || self.url.password().is_some() {
            problem(
                "url",
                format!(
                    "`{shown}` must not carry a user name or password; give the bot's access token in GITEA_BOT_TOKEN (gitea.token) instead"
                ),
            );
        }
        if self.url.query().is_some() || self.url.fragment().is_some() {
            problem(
                "url",
                format!("`{shown}` must not carry a query or fragment"),
            );
        }
        if let Some(token) = &self.token
            && !valid_token(token.expose_secret())
        {
            problem(
                "token",
                "must be non-empty printable ASCII without spaces".to_owned(),
            );
        }
        for (key, login) in [
            ("bot_username", &self.bot_username),
            ("assignee", &self.assignee),
        ] {
            if let Some(login) = login
                && !valid_login(login)
            {
                problem(
                    key,
                    format!(
                        "`{login}` is not a Gitea login (letters, digits, `-`, `_`, `.`; at most 40)"
                    ),
                );
            }
        }
        for (key, value) in [
            ("connect_timeout_secs", self.connect_timeout_secs),
            ("request_timeout_secs", self.request_timeout_secs),
            ("read_timeout_secs", self.read_timeout_secs),
            ("reconcile_interval_secs", self.reconcile_interval_secs),
        ] {
            if value == 0 {
                problem(key, "must be at least 1".to_owned());
            }
        }
        if self.reconcile_max_requests_per_sec == 0 {
            problem(
                "reconcile_max_requests_per_sec",
                "must be at least 1".to_owned(),
            );
        }
        if normalise_colour(&self.default_label_colour).is_none() {
            problem(
                "default_label_colour",
                format!(
                    "`{}` is not a colour of the form #rrggbb",
                    self.default_label_colour
                ),
            );
        }
        for (name, colour) in &self.label_colours {
            if normalise_colour(colour).is_none() {
                problem(
                    &format!("label_colours.{name}"),
                    format!("`{colour}` is not a colour of the form #rrggbb"),
                );
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

/// `#rrggbb` or `rrggbb` → `#rrggbb` (lower case); anything else → `None`.
pub fn normalise_colour(colour: &str) -> Option<String> {
    let hex = colour.strip_prefix('#').unwrap_or(colour);
    (hex.len() == 6 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| format!("#{}", hex.to_ascii_lowercase()))
}

fn valid_token(token: &str) -> bool {
    !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic())
}

/// Gitea's rule for user names, loosely: what it accepts always passes.
pub(crate) fn valid_login(login: &str) -> bool {
    !login.is_empty()
        && login.len() <= 40
        && login
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<GiteaConfig, String> {
        toml::from_str(toml_text).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_apply_and_a_full_section_parses() {
        let config = parse(r#"url = "https://git.example""#).unwrap();
        assert!(config.token.is_none());
        assert_eq!(config.reconcile_interval(), Duration::from_secs(300));
        assert_eq!(config.label_colour("mosaic:queued"), "#1d76db");
        assert_eq!(config.validate(), Ok(()));

        let config = parse(
            r#"
            url = "https://git.example/gitea/"
            token = "abc123"
            bot_username = "mosaic-bot"
            assignee = "team-bot"
            connect_timeout_secs = 2
            request_timeout_secs = 10
            reconcile_interval_secs = 60
            reconcile_max_requests_per_sec = 2
            repositories = ["mosaic/coordinator", "mosaic/infra"]
            label_colours = { "mosaic:failed" = "D93F0B" }
            "#,
        )
        .unwrap();
        assert_eq!(config.token.as_ref().unwrap().expose_secret(), "abc123");
        assert!(
            !format!("{config:?}").contains("abc123"),
            "token leaked into Debug"
        );
        assert_eq!(config.repositories.len(), 2);
        assert_eq!(config.label_colour("mosaic:failed"), "#d93f0b");
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn bad_values_are_named() {
        assert!(
            parse(
                r#"url = "https://x"
            repositories = ["no-slash"]"#
            )
            .unwrap_err()
            .contains("no-slash")
        );
        assert!(
            parse(
                r#"url = "https://x"
            tokn = "typo""#
            )
            .unwrap_err()
            .contains("tokn")
        );

        let config = parse(
            r##"
            url = "ftp://git.example"
            token = "has space"
            bot_username = "not a login"
            request_timeout_secs = 0
            reconcile_max_requests_per_sec = 0
            default_label_colour = "red"
            label_colours = { "mosaic:done" = "#12345" }
            "##,
        )
        .unwrap();
        let keys: Vec<String> = config
            .validate()
            .unwrap_err()
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(
            keys,
            [
                "url",
                "token",
                "bot_username",
                "request_timeout_secs",
                "reconcile_max_requests_per_sec",
                "default_label_colour",
                "label_colours.mosaic:done"
            ]
        );
    }

    #[test]
    fn credentials_in_the_url_are_refused_and_never_shown() {
        let config = parse(r#"url = "http://bot:hunter2secret@git.example/""#).unwrap();
        let problems = config.validate().unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        let text = problems[0].to_string();
        assert!(text.starts_with("gitea.url:"), "{text}");
        assert!(text.contains("GITEA_BOT_TOKEN"), "{text}");
        assert!(
            !text.contains("hunter2secret") && !text.contains("bot:"),
            "{text}"
        );
        let shown = serde_json::to_string(&config).unwrap();
        assert!(!shown.contains("hunter2secret"), "{shown}");
        assert!(shown.contains("http://[redacted]@git.example/"), "{shown}");
        // A user name alone is refused too (Gitea would ask for a password).
        let config = parse(r#"url = "https://someone@git.example""#).unwrap();
        assert!(config.validate().is_err());
        assert_eq!(shown_url(&config.url), "https://[redacted]@git.example/");
    }

    #[test]
    fn colours_normalise() {
        let check = |input: &str, expect: Option<&str>| {
            assert_eq!(normalise_colour(input).as_deref(), expect, "{input:?}");
        };
        check("#1D76DB", Some("#1d76db"));
        check("1d76db", Some("#1d76db"));
        check("#1d76d", None);
        check("#gggggg", None);
        check("", None);
    }
}
