//! Agent profiles: what each kind of agent can take on and what it costs.

use serde::{Deserialize, Serialize};

use crate::metadata::Difficulty;

/// One kind of agent the coordinator may assign work to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentProfile {
    /// Unique name, e.g. `sonnet`; what issues and labels refer to.
    pub name: String,
    /// Context window in tokens; > 0.
    pub context_window: u64,
    /// US dollars per million input tokens; >= 0.
    pub cost_input_per_mtok: f64,
    /// US dollars per million output tokens; >= 0.
    pub cost_output_per_mtok: f64,
    /// The hardest issues this agent handles.
    pub max_difficulty: Difficulty,
    /// Runs on our own hardware (preferred when costs tie).
    pub self_hosted: bool,
    pub enabled: bool,
    /// Fraction of the window at which a session is compacted; the global default when `None`.
    pub compact_threshold: Option<f64>,
    /// Fraction of the window at which a session is rotated; the global default when `None`.
    pub rotate_threshold: Option<f64>,
}

/// Longest agent name accepted; names end up in labels and comments.
const MAX_AGENT_NAME_LEN: usize = 64;

/// When a session is compacted and when it is rotated, as fractions of the context window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    pub compact: f64,
    pub rotate: f64,
}

/// Thresholds outside `0 < compact < rotate <= 1`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "thresholds must satisfy 0 < compact < rotate <= 1 (got compact {compact}, rotate {rotate})"
)]
pub struct ThresholdError {
    pub compact: f64,
    pub rotate: f64,
}

impl Thresholds {
    pub const DEFAULT_COMPACT: f64 = 0.80;
    pub const DEFAULT_ROTATE: f64 = 0.95;

    /// Validated thresholds: `0 < compact < rotate <= 1` (NaN fails every comparison).
    pub fn new(compact: f64, rotate: f64) -> Result<Self, ThresholdError> {
        if compact > 0.0 && compact < rotate && rotate <= 1.0 {
            Ok(Self { compact, rotate })
        } else {
            Err(ThresholdError { compact, rotate })
        }
    }
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            compact: Self::DEFAULT_COMPACT,
            rotate: Self::DEFAULT_ROTATE,
        }
    }
}

impl AgentProfile {
    /// The thresholds in force for this agent: its own where set, `global` otherwise.
    /// Valid whenever the profile was accepted by [`AgentProfiles::with_global_thresholds`]
    /// with the same `global`; [`Self::effective_thresholds`] checks it explicitly.
    pub fn thresholds(&self, global: Thresholds) -> Thresholds {
        Thresholds {
            compact: self.compact_threshold.unwrap_or(global.compact),
            rotate: self.rotate_threshold.unwrap_or(global.rotate),
        }
    }

    /// [`Self::thresholds`], validated.
    pub fn effective_thresholds(&self, global: Thresholds) -> Result<Thresholds, ThresholdError> {
        let merged = self.thresholds(global);
        Thresholds::new(merged.compact, merged.rotate)
    }

    /// Largest estimate this agent takes under the 50% rule (half its window, rounded down).
    pub fn max_allowed_tokens(&self) -> u64 {
        self.context_window / 2
    }

    /// Whether this agent handles issues of `difficulty`.
    pub fn handles(&self, difficulty: Difficulty) -> bool {
        difficulty <= self.max_difficulty
    }
}

/// A configuration error in the agent profiles.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProfileError {
    #[error(
        "agent name `{0}` is invalid: use 1 to 64 ASCII letters, digits, `-`, `_` or `.`, starting with a letter or digit"
    )]
    InvalidName(String),
    #[error("agent `{0}` is configured more than once (names are compared case-insensitively)")]
    DuplicateName(String),
    #[error("agent `{0}` has a context window of 0 tokens; it must be positive")]
    ZeroWindow(String),
    #[error("agent `{name}` has an invalid {field} cost ({value}); it must be a number >= 0")]
    InvalidCost {
        name: String,
        field: &'static str,
        value: f64,
    },
    #[error("agent `{name}`: {source}")]
    InvalidThresholds {
        name: String,
        #[source]
        source: ThresholdError,
    },
    #[error("no agent profile is enabled; enable at least one")]
    NoEnabledProfile,
}

fn valid_agent_name(name: &str) -> bool {
    name.len() <= MAX_AGENT_NAME_LEN
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The configured agents, validated, in configuration order (which breaks cost ties).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct AgentProfiles {
    profiles: Vec<AgentProfile>,
}

impl AgentProfiles {
    /// Validates `profiles` against the default global thresholds.
    pub fn new(profiles: Vec<AgentProfile>) -> Result<Self, ProfileError> {
        Self::with_global_thresholds(profiles, Thresholds::default())
    }

    /// Validates `profiles`; each profile's thresholds, merged with `global`, must satisfy
    /// `0 < compact < rotate <= 1`.
    pub fn with_global_thresholds(
        profiles: Vec<AgentProfile>,
        global: Thresholds,
    ) -> Result<Self, ProfileError> {
        for (index, profile) in profiles.iter().enumerate() {
            let name = &profile.name;
            if !valid_agent_name(name) {
                return Err(ProfileError::InvalidName(name.clone()));
            }
            if profiles[..index]
                .iter()
                .any(|earlier| earlier.name.eq_ignore_ascii_case(name))
            {
                return Err(ProfileError::DuplicateName(name.clone()));
            }
            if profile.context_window == 0 {
                return Err(ProfileError::ZeroWindow(name.clone()));
            }
            for (field, value) in [
                ("input", profile.cost_input_per_mtok),
                ("output", profile.cost_output_per_mtok),
            ] {
                // NaN and infinity are not prices; -0.0 is zero.
                if !value.is_finite() || value < 0.0 {
                    return Err(ProfileError::InvalidCost {
                        name: name.clone(),
                        field,
                        value,
                    });
                }
            }
            profile.effective_thresholds(global).map_err(|source| {
                ProfileError::InvalidThresholds {
                    name: name.clone(),
                    source,
                }
            })?;
        }
        if !profiles.iter().any(|profile| profile.enabled) {
            return Err(ProfileError::NoEnabledProfile);
        }
        Ok(Self { profiles })
    }

    /// The built-in profiles used when none are configured.
    pub fn defaults() -> Self {
        let profile = |name: &str,
                       context_window: u64,
                       cost_input_per_mtok: f64,
                       cost_output_per_mtok: f64,
                       max_difficulty: Difficulty,
                       self_hosted: bool| AgentProfile {
            name: name.to_owned(),
            context_window,
            cost_input_per_mtok,
            cost_output_per_mtok,
            max_difficulty,
            self_hosted,
            enabled: true,
            compact_threshold: None,
            rotate_threshold: None,
        };
        Self {
            profiles: vec![
                profile("opus", 200_000, 15.0, 75.0, Difficulty::High, false),
                profile("sonnet", 200_000, 3.0, 15.0, Difficulty::Medium, false),
                profile("haiku", 200_000, 0.8, 4.0, Difficulty::Low, false),
                profile("glm", 128_000, 0.0, 0.0, Difficulty::Medium, true),
                profile("minimax", 128_000, 0.0, 0.0, Difficulty::Low, true),
            ],
        }
    }

    /// The profile called `name` (ASCII case-insensitive), enabled or not.
    pub fn get(&self, name: &str) -> Option<&AgentProfile> {
        self.profiles
            .iter()
            .find(|profile| profile.name.eq_ignore_ascii_case(name))
    }

    /// Every profile, in configuration order.
    pub fn iter(&self) -> impl Iterator<Item = &AgentProfile> {
        self.profiles.iter()
    }

    /// Enabled profiles, in configuration order.
    pub fn enabled(&self) -> impl Iterator<Item = &AgentProfile> {
        self.profiles.iter().filter(|profile| profile.enabled)
    }

    /// Every profile's name, in configuration order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.profiles.iter().map(|profile| profile.name.as_str())
    }

    /// Position in the configuration (the final tie-breaker); `None` for unknown names.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.profiles
            .iter()
            .position(|profile| profile.name.eq_ignore_ascii_case(name))
    }

    pub fn len(&self) -> usize {
        self.profiles.len()
    }

    /// Always false for a validated collection (one profile is enabled); kept for symmetry.
    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty()
    }
}

impl<'de> Deserialize<'de> for AgentProfiles {
    /// Deserialising validates, so an invalid configuration never becomes a value.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let profiles = Vec::<AgentProfile>::deserialize(deserializer)?;
        Self::new(profiles).map_err(serde::de::Error::custom)
    }
}

impl<'a> IntoIterator for &'a AgentProfiles {
    type Item = &'a AgentProfile;
    type IntoIter = std::slice::Iter<'a, AgentProfile>;
    fn into_iter(self) -> Self::IntoIter {
        self.profiles.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str) -> AgentProfile {
        AgentProfile {
            name: name.to_owned(),
            context_window: 100_000,
            cost_input_per_mtok: 1.0,
            cost_output_per_mtok: 2.0,
            max_difficulty: Difficulty::Medium,
            self_hosted: false,
            enabled: true,
            compact_threshold: None,
            rotate_threshold: None,
        }
    }

    fn check(profiles: Vec<AgentProfile>, expect: Result<(), &str>) {
        let got = AgentProfiles::new(profiles)
            .map(|_| ())
            .map_err(|e| e.to_string());
        match (&got, expect) {
            (Ok(()), Ok(())) => {}
            (Err(message), Err(fragment)) => {
                assert!(message.contains(fragment), "{message:?} lacks {fragment:?}")
            }
            _ => panic!("got {got:?}, expected {expect:?}"),
        }
    }

    #[test]
    fn validation_rejects_bad_profiles() {
        let with = |edit: fn(&mut AgentProfile)| {
            let mut profile = sample("a");
            edit(&mut profile);
            vec![profile]
        };
        check(vec![sample("a"), sample("b")], Ok(()));
        check(vec![], Err("no agent profile is enabled"));
        check(
            with(|p| p.enabled = false),
            Err("no agent profile is enabled"),
        );
        check(with(|p| p.context_window = 0), Err("context window of 0"));
        check(
            with(|p| p.cost_input_per_mtok = -1.0),
            Err("invalid input cost"),
        );
        check(
            with(|p| p.cost_output_per_mtok = f64::NAN),
            Err("invalid output cost"),
        );
        check(
            with(|p| p.cost_input_per_mtok = f64::INFINITY),
            Err("invalid input cost"),
        );
        check(
            with(|p| p.name = String::new()),
            Err("agent name `` is invalid"),
        );
        check(with(|p| p.name = "-x".into()), Err("is invalid"));
        check(with(|p| p.name = "a b".into()), Err("is invalid"));
        check(with(|p| p.name = "x".repeat(65)), Err("is invalid"));
        check(with(|p| p.name = "glm-4.6_fast".into()), Ok(()));
        check(
            vec![sample("a"), sample("A")],
            Err("`A` is configured more than once"),
        );
        check(
            with(|p| p.compact_threshold = Some(0.96)),
            Err("compact 0.96, rotate 0.95"),
        );
        check(
            with(|p| p.rotate_threshold = Some(1.01)),
            Err("0 < compact < rotate <= 1"),
        );
        check(
            with(|p| p.compact_threshold = Some(0.0)),
            Err("0 < compact"),
        );
        check(
            with(|p| p.compact_threshold = Some(f64::NAN)),
            Err("0 < compact"),
        );
        check(
            with(|p| {
                p.compact_threshold = Some(0.5);
                p.rotate_threshold = Some(1.0);
            }),
            Ok(()),
        );
    }

    #[test]
    fn thresholds_merge_per_field() {
        let global = Thresholds::new(0.7, 0.9).unwrap();
        let mut profile = sample("a");
        assert_eq!(profile.thresholds(global), global);
        profile.rotate_threshold = Some(0.99);
        assert_eq!(
            profile.thresholds(global),
            Thresholds::new(0.7, 0.99).unwrap()
        );
        assert_eq!(Thresholds::default(), Thresholds::new(0.80, 0.95).unwrap());
        assert!(Thresholds::new(0.95, 0.95).is_err());
        profile.compact_threshold = Some(0.92);
        assert!(profile.effective_thresholds(global).is_ok());
        assert!(
            AgentProfiles::with_global_thresholds(
                vec![profile],
                Thresholds::new(0.5, 0.6).unwrap()
            )
            .is_ok()
        );
    }

    #[test]
    fn defaults_match_the_documented_table() {
        let defaults = AgentProfiles::defaults();
        assert_eq!(
            AgentProfiles::new(defaults.iter().cloned().collect()).unwrap(),
            defaults
        );
        assert_eq!(
            defaults.names().collect::<Vec<_>>(),
            ["opus", "sonnet", "haiku", "glm", "minimax"]
        );
        let row = |name: &str| {
            let p = defaults.get(name).unwrap();
            (
                p.context_window,
                p.cost_input_per_mtok,
                p.cost_output_per_mtok,
                p.max_difficulty,
                p.self_hosted,
            )
        };
        assert_eq!(row("opus"), (200_000, 15.0, 75.0, Difficulty::High, false));
        assert_eq!(
            row("sonnet"),
            (200_000, 3.0, 15.0, Difficulty::Medium, false)
        );
        assert_eq!(row("haiku"), (200_000, 0.8, 4.0, Difficulty::Low, false));
        assert_eq!(row("GLM"), (128_000, 0.0, 0.0, Difficulty::Medium, true));
        assert_eq!(row("minimax"), (128_000, 0.0, 0.0, Difficulty::Low, true));
        assert_eq!(defaults.enabled().count(), 5);
        assert_eq!(defaults.position("haiku"), Some(2));
        assert!(defaults.get("gpt").is_none());
    }

    #[test]
    fn deserialising_validates() {
        let json = r#"[{"name":"a","context_window":0,"cost_input_per_mtok":1.0,
            "cost_output_per_mtok":1.0,"max_difficulty":"low","self_hosted":false,
            "enabled":true,"compact_threshold":null,"rotate_threshold":null}]"#;
        let err = serde_json::from_str::<AgentProfiles>(json).unwrap_err();
        assert!(err.to_string().contains("context window of 0"), "{err}");
        let round = serde_json::to_string(&AgentProfiles::defaults()).unwrap();
        assert_eq!(
            serde_json::from_str::<AgentProfiles>(&round).unwrap(),
            AgentProfiles::defaults()
        );
    }
}
