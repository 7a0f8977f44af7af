//! The 50% rule and cost-optimised assignment.
//!
//! An agent qualifies for an issue when it is enabled, handles the issue's difficulty and the
//! estimate is at most half its context window (the other half is room to work). Among the
//! qualified agents the recommended one wins when the policy honours it, otherwise the
//! cheapest by input cost, self-hosted first on ties, then configuration order.

use std::cmp::Ordering;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::agent::{AgentProfile, AgentProfiles};
use crate::metadata::{Difficulty, IssueMetadata};

/// Whether an issue of `estimate` tokens fits an agent with a `window`-token context:
/// at most 50% of the window (exactly 50% fits).
pub fn fits_fifty_percent_rule(estimate: u64, window: u64) -> bool {
    // Compare doubled values in u128 so huge configured windows cannot overflow.
    u128::from(estimate) * 2 <= u128::from(window)
}

/// How assignment treats an issue's recommended agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AssignmentPolicy {
    /// Follow a qualified recommendation instead of picking the cheapest agent.
    pub honor_recommendation: bool,
}

impl Default for AssignmentPolicy {
    fn default() -> Self {
        Self {
            honor_recommendation: true,
        }
    }
}

/// Why the chosen agent was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AssignmentReason {
    /// The issue recommended it and it qualifies.
    Recommended,
    /// The cheapest qualified agent.
    Cheapest,
}

/// Why a recommended agent was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// `assignment.honor_recommendation` is off.
    PolicyIgnoresRecommendations,
    /// No configured agent has that name.
    UnknownAgent,
    Disabled,
    /// The agent does not handle the issue's difficulty.
    TooDifficult,
    /// The estimate exceeds 50% of the agent's window.
    TooLarge,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PolicyIgnoresRecommendations => "recommendations are not honoured",
            Self::UnknownAgent => "no such agent is configured",
            Self::Disabled => "the agent is disabled",
            Self::TooDifficult => "the agent does not handle this difficulty",
            Self::TooLarge => "the estimate exceeds the agent's 50% limit",
        }
    }
}

/// A recommendation that was not followed, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedRecommendation {
    pub agent: String,
    pub reason: SkipReason,
}

/// The agent chosen for an issue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub agent: String,
    pub reason: AssignmentReason,
    /// The largest estimate the chosen agent accepts (50% of its window).
    pub max_allowed_tokens: u64,
    /// Set when the issue recommended an agent that was not chosen.
    pub skipped_recommendation: Option<SkippedRecommendation>,
}

/// No enabled agent can take the issue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Rejection {
    /// Agents handle the difficulty, but the estimate exceeds 50% of every one's window.
    /// Names the closest candidate: the largest window, then the cheapest.
    #[error(
        "Issue context estimate ({estimate} tokens) exceeds 50% rule for {agent} agent. Maximum allowed: {max_allowed} tokens (50% of {context_window} context limit). Split the issue into smaller issues of at most {max_allowed} tokens each."
    )]
    ExceedsFiftyPercentRule {
        estimate: u64,
        agent: String,
        max_allowed: u64,
        context_window: u64,
    },
    /// No enabled agent handles the difficulty.
    #[error(
        "No enabled agent handles {difficulty} difficulty issues (the most capable enabled agent, {best_agent}, handles up to {best_difficulty}). Enable an agent for {difficulty} issues, or split the issue into simpler ones."
    )]
    NoCapableAgent {
        difficulty: Difficulty,
        best_agent: String,
        best_difficulty: Difficulty,
    },
}

/// Cost order: input cost, then self-hosted first; configuration order is applied by the
/// callers iterating in that order and keeping the first minimum.
fn cheaper(a: &AgentProfile, b: &AgentProfile) -> Ordering {
    a.cost_input_per_mtok
        .total_cmp(&b.cost_input_per_mtok)
        .then_with(|| b.self_hosted.cmp(&a.self_hosted))
}

/// The first minimum under `order` (so configuration order breaks remaining ties).
fn first_min<'a>(
    agents: impl Iterator<Item = &'a AgentProfile>,
    mut order: impl FnMut(&AgentProfile, &AgentProfile) -> Ordering,
) -> Option<&'a AgentProfile> {
    agents.fold(None, |best, candidate| match best {
        Some(best) if order(candidate, best) != Ordering::Less => Some(best),
        _ => Some(candidate),
    })
}

/// Chooses an agent for an issue, or says why none can take it.
pub fn assign(
    meta: &IssueMetadata,
    agents: &AgentProfiles,
    policy: &AssignmentPolicy,
) -> Result<Assignment, Rejection> {
    let estimate = meta.estimated_context;
    let capable = || agents.enabled().filter(|a| a.handles(meta.difficulty));
    let qualified = || capable().filter(|a| fits_fifty_percent_rule(estimate, a.context_window));

    let recommendation = meta.recommended_agent.as_deref().map(|name| {
        let verdict = match agents.get(name) {
            _ if !policy.honor_recommendation => Err(SkipReason::PolicyIgnoresRecommendations),
            None => Err(SkipReason::UnknownAgent),
            Some(agent) if !agent.enabled => Err(SkipReason::Disabled),
            Some(agent) if !agent.handles(meta.difficulty) => Err(SkipReason::TooDifficult),
            Some(agent) if !fits_fifty_percent_rule(estimate, agent.context_window) => {
                Err(SkipReason::TooLarge)
            }
            Some(agent) => Ok(agent),
        };
        (name, verdict)
    });

    if let Some((_, Ok(agent))) = recommendation {
        return Ok(Assignment {
            agent: agent.name.clone(),
            reason: AssignmentReason::Recommended,
            max_allowed_tokens: agent.max_allowed_tokens(),
            skipped_recommendation: None,
        });
    }
    let skipped_recommendation = recommendation.and_then(|(name, verdict)| {
        verdict.err().map(|reason| SkippedRecommendation {
            agent: name.to_owned(),
            reason,
        })
    });

    if let Some(agent) = first_min(qualified(), cheaper) {
        return Ok(Assignment {
            agent: agent.name.clone(),
            reason: AssignmentReason::Cheapest,
            max_allowed_tokens: agent.max_allowed_tokens(),
            skipped_recommendation,
        });
    }

    // Nobody qualifies: explain with the closest candidate.
    let closest = first_min(capable(), |a, b| {
        b.context_window
            .cmp(&a.context_window)
            .then_with(|| cheaper(a, b))
    });
    if let Some(agent) = closest {
        return Err(Rejection::ExceedsFiftyPercentRule {
            estimate,
            agent: agent.name.clone(),
            max_allowed: agent.max_allowed_tokens(),
            context_window: agent.context_window,
        });
    }
    let most_capable = first_min(agents.enabled(), |a, b| {
        b.max_difficulty.cmp(&a.max_difficulty)
    });
    match most_capable {
        Some(agent) => Err(Rejection::NoCapableAgent {
            difficulty: meta.difficulty,
            best_agent: agent.name.clone(),
            best_difficulty: agent.max_difficulty,
        }),
        // Unreachable for validated profiles (one is always enabled), but still an answer.
        None => Err(Rejection::NoCapableAgent {
            difficulty: meta.difficulty,
            best_agent: "none".to_owned(),
            best_difficulty: Difficulty::Low,
        }),
    }
}

impl fmt::Display for AssignmentReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Recommended => "recommended",
            Self::Cheapest => "cheapest",
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::metadata::MetadataSource;

    fn meta(estimate: u64, difficulty: Difficulty, recommended: Option<&str>) -> IssueMetadata {
        IssueMetadata {
            estimated_context: estimate,
            difficulty,
            recommended_agent: recommended.map(str::to_owned),
            blocks: vec![],
            blocked_by: vec![],
            source: MetadataSource::Template,
            confidence: 1.0,
        }
    }

    fn check(estimate: u64, difficulty: &str, recommended: Option<&str>, expect: &str) {
        let agents = AgentProfiles::defaults();
        let meta = meta(estimate, difficulty.parse().unwrap(), recommended);
        let got = match assign(&meta, &agents, &AssignmentPolicy::default()) {
            Ok(assignment) => assignment.agent,
            Err(rejection) => format!("rejected: {rejection}"),
        };
        assert!(
            got == expect || (expect.starts_with("rejected") && got.starts_with(expect)),
            "{estimate} {difficulty} {recommended:?}: got {got:?}, expected {expect:?}"
        );
    }

    #[test]
    fn documented_table() {
        // glm and minimax tie (free, self-hosted): configuration order picks glm.
        check(10_000, "low", None, "glm");
        check(40_000, "medium", None, "glm");
        check(64_000, "medium", None, "glm");
        check(70_000, "medium", None, "sonnet");
        check(80_000, "high", None, "opus");
        check(100_000, "medium", None, "sonnet");
        check(100_001, "high", None, "rejected");
        check(70_000, "low", None, "haiku");
        check(30_000, "hard", Some("haiku"), "opus");
        check(120_000, "hard", Some("haiku"), "rejected");
        check(80_000, "high", Some("haiku"), "opus");
        check(10_000, "low", Some("opus"), "opus");
        check(10_000, "low", Some("OPUS"), "opus");
        check(10_000, "low", Some("gpt-9"), "glm");
    }

    #[test]
    fn recommended_haiku_for_a_hard_issue_is_not_haiku() {
        let agents = AgentProfiles::defaults();
        let got = assign(
            &meta(30_000, Difficulty::High, Some("haiku")),
            &agents,
            &AssignmentPolicy::default(),
        )
        .unwrap();
        assert_eq!(got.agent, "opus");
        assert_eq!(got.reason, AssignmentReason::Cheapest);
        assert_eq!(
            got.skipped_recommendation,
            Some(SkippedRecommendation {
                agent: "haiku".into(),
                reason: SkipReason::TooDifficult
            })
        );
    }

    #[test]
    fn policy_can_ignore_recommendations() {
        let agents = AgentProfiles::defaults();
        let policy = AssignmentPolicy {
            honor_recommendation: false,
        };
        let got = assign(
            &meta(10_000, Difficulty::Low, Some("opus")),
            &agents,
            &policy,
        )
        .unwrap();
        assert_eq!(got.agent, "glm");
        assert_eq!(
            got.skipped_recommendation.map(|s| s.reason),
            Some(SkipReason::PolicyIgnoresRecommendations)
        );
        let got = assign(
            &meta(10_000, Difficulty::Low, Some("opus")),
            &agents,
            &AssignmentPolicy::default(),
        )
        .unwrap();
        assert_eq!(
            (got.reason, got.max_allowed_tokens),
            (AssignmentReason::Recommended, 100_000)
        );
    }

    #[test]
    fn rejection_messages() {
        let agents = AgentProfiles::defaults();
        let rejected = |estimate, difficulty| {
            assign(
                &meta(estimate, difficulty, None),
                &agents,
                &AssignmentPolicy::default(),
            )
            .unwrap_err()
            .to_string()
        };
        assert_eq!(
            rejected(120_000, Difficulty::Medium),
            "Issue context estimate (120000 tokens) exceeds 50% rule for sonnet agent. \
             Maximum allowed: 100000 tokens (50% of 200000 context limit). \
             Split the issue into smaller issues of at most 100000 tokens each."
        );
        assert!(rejected(100_001, Difficulty::High).contains("for opus agent"));

        let only_low = AgentProfiles::new(
            AgentProfiles::defaults()
                .iter()
                .cloned()
                .map(|mut agent| {
                    agent.enabled = agent.max_difficulty == Difficulty::Low;
                    agent
                })
                .collect(),
        )
        .unwrap();
        let message = assign(
            &meta(1_000, Difficulty::Medium, None),
            &only_low,
            &AssignmentPolicy::default(),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            message,
            "No enabled agent handles medium difficulty issues (the most capable enabled agent, \
             haiku, handles up to low). Enable an agent for medium issues, or split the issue \
             into simpler ones."
        );
    }

    #[test]
    fn fifty_percent_rule_edges() {
        assert!(fits_fifty_percent_rule(100_000, 200_000));
        assert!(!fits_fifty_percent_rule(100_001, 200_000));
        assert!(fits_fifty_percent_rule(2, 5));
        assert!(!fits_fifty_percent_rule(3, 5));
        assert!(fits_fifty_percent_rule(0, 0));
        assert!(!fits_fifty_percent_rule(u64::MAX, u64::MAX));
        assert!(fits_fifty_percent_rule(u64::MAX / 2, u64::MAX));
    }

    fn arbitrary_profiles() -> impl Strategy<Value = AgentProfiles> {
        let profile = (
            1u64..400_000,
            prop_oneof![Just(0.0), Just(0.8), Just(3.0), 0.0f64..20.0],
            0usize..3,
            any::<bool>(),
            prop::bool::weighted(0.8),
        );
        prop::collection::vec(profile, 1..7).prop_filter_map("needs an enabled profile", |rows| {
            let profiles = rows
                .into_iter()
                .enumerate()
                .map(
                    |(i, (window, cost, level, self_hosted, enabled))| AgentProfile {
                        name: format!("agent{i}"),
                        context_window: window,
                        cost_input_per_mtok: cost,
                        cost_output_per_mtok: cost * 5.0,
                        max_difficulty: [Difficulty::Low, Difficulty::Medium, Difficulty::High]
                            [level],
                        self_hosted,
                        enabled,
                        compact_threshold: None,
                        rotate_threshold: None,
                    },
                )
                .collect();
            AgentProfiles::new(profiles).ok()
        })
    }

    proptest! {
        #[test]
        fn cheapest_assignment_is_capable_fitting_and_minimal(
            agents in arbitrary_profiles(),
            estimate in 1u64..250_000,
            level in 0usize..3,
        ) {
            let difficulty = [Difficulty::Low, Difficulty::Medium, Difficulty::High][level];
            let meta = meta(estimate, difficulty, None);
            let qualified: Vec<(usize, &AgentProfile)> = agents
                .iter()
                .enumerate()
                .filter(|(_, a)| a.enabled && a.max_difficulty >= difficulty
                    && estimate * 2 <= a.context_window)
                .collect();
            match assign(&meta, &agents, &AssignmentPolicy::default()) {
                Ok(assignment) => {
                    let chosen = agents.get(&assignment.agent).unwrap();
                    let index = agents.position(&assignment.agent).unwrap();
                    prop_assert!(chosen.enabled);
                    prop_assert!(chosen.max_difficulty >= difficulty);
                    prop_assert!(estimate * 2 <= chosen.context_window);
                    prop_assert_eq!(assignment.reason, AssignmentReason::Cheapest);
                    for (other_index, other) in &qualified {
                        let key = |a: &AgentProfile| (a.cost_input_per_mtok, !a.self_hosted);
                        let (mine, theirs) = (key(chosen), key(other));
                        prop_assert!(
                            mine < theirs || (mine == theirs && index <= *other_index),
                            "{} chosen over cheaper {}", chosen.name, other.name
                        );
                    }
                }
                Err(rejection) => {
                    prop_assert!(qualified.is_empty(), "rejected although {:?} qualify: {}",
                        qualified.iter().map(|(_, a)| &a.name).collect::<Vec<_>>(), rejection);
                }
            }
        }

        #[test]
        fn a_qualified_recommendation_is_followed(
            agents in arbitrary_profiles(),
            estimate in 1u64..250_000,
            level in 0usize..3,
            pick in 0usize..7,
        ) {
            let difficulty = [Difficulty::Low, Difficulty::Medium, Difficulty::High][level];
            let Some(recommended) = agents.iter().nth(pick % agents.len()) else {
                return Ok(());
            };
            let meta = meta(estimate, difficulty, Some(&recommended.name));
            let qualifies = recommended.enabled && recommended.handles(difficulty)
                && fits_fifty_percent_rule(estimate, recommended.context_window);
            let result = assign(&meta, &agents, &AssignmentPolicy::default());
            if qualifies {
                let assignment = result.unwrap();
                prop_assert_eq!(&assignment.agent, &recommended.name);
                prop_assert_eq!(assignment.reason, AssignmentReason::Recommended);
            } else if let Ok(assignment) = result {
                prop_assert_ne!(&assignment.agent, &recommended.name);
                prop_assert!(assignment.skipped_recommendation.is_some());
            }
        }
    }
}
