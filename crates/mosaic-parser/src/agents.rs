//! The agent names configuration defines: the only names a parser may ever output.

use std::collections::BTreeMap;

/// Configured agent names, looked up case-insensitively and always returned in their configured
/// spelling, so `GLM` in an issue resolves to the configured `glm` and `root-shell` to nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KnownAgents {
    by_lowercase: BTreeMap<String, String>,
}

impl KnownAgents {
    pub fn new<I, S>(names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let by_lowercase = names
            .into_iter()
            .map(Into::into)
            .map(|name| (name.trim().to_lowercase(), name))
            .filter(|(key, _)| !key.is_empty())
            .collect();
        Self { by_lowercase }
    }

    /// The configured spelling of `candidate`, or `None` when no such agent is configured.
    pub fn resolve(&self, candidate: &str) -> Option<String> {
        self.by_lowercase
            .get(&candidate.trim().to_lowercase())
            .cloned()
    }

    /// Configured names in a stable (sorted) order, e.g. for the schema's enum.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_lowercase.values().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.by_lowercase.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_only_configured_names_in_their_configured_spelling() {
        let agents = KnownAgents::new(["opus", "glm"]);
        assert_eq!(agents.resolve("GLM").as_deref(), Some("glm"));
        assert_eq!(agents.resolve(" opus ").as_deref(), Some("opus"));
        assert_eq!(agents.resolve("root-shell"), None);
        assert_eq!(agents.resolve(""), None);
        assert_eq!(agents.names().collect::<Vec<_>>(), ["glm", "opus"]);
    }
}
