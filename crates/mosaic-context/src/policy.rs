//! The pure part: context usage, thresholds and the per-reading decision.

use mosaic_domain::AgentProfile;
use serde::{Deserialize, Serialize};

/// Default fraction of the window at which a session is compacted.
pub const DEFAULT_COMPACT_THRESHOLD: f64 = 0.80;
/// Default fraction of the window at which a session is rotated.
pub const DEFAULT_ROTATE_THRESHOLD: f64 = 0.95;

/// A threshold pair or usage reading that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "context thresholds must satisfy 0 < compact < rotate <= 1, got compact {compact} and rotate {rotate}"
    )]
    BadThresholds { compact: f64, rotate: f64 },
    #[error(
        "agent profile `{profile}` has invalid context thresholds: compact {compact}, rotate {rotate} (need 0 < compact < rotate <= 1)"
    )]
    BadProfileThresholds {
        profile: String,
        compact: f64,
        rotate: f64,
    },
    #[error("a context window of 0 tokens is a configuration error")]
    ZeroWindow,
}

/// When to compact and when to rotate, as fractions of the context window.
/// Only constructible valid: `0 < compact < rotate <= 1`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ContextThresholds {
    compact: f64,
    rotate: f64,
}

impl ContextThresholds {
    pub fn new(compact: f64, rotate: f64) -> Result<Self, PolicyError> {
        // NaN fails every comparison, so it is rejected here as well.
        if compact > 0.0 && compact < rotate && rotate <= 1.0 {
            Ok(Self { compact, rotate })
        } else {
            Err(PolicyError::BadThresholds { compact, rotate })
        }
    }

    pub fn compact(&self) -> f64 {
        self.compact
    }

    pub fn rotate(&self) -> f64 {
        self.rotate
    }

    /// The thresholds for one agent profile: its own values where it sets them, these elsewhere.
    /// The combination is validated again, because a profile may set only one of the two.
    pub fn for_profile(&self, profile: &AgentProfile) -> Result<Self, PolicyError> {
        let compact = profile.compact_threshold.unwrap_or(self.compact);
        let rotate = profile.rotate_threshold.unwrap_or(self.rotate);
        Self::new(compact, rotate).map_err(|_| PolicyError::BadProfileThresholds {
            profile: profile.name.clone(),
            compact,
            rotate,
        })
    }
}

impl Default for ContextThresholds {
    fn default() -> Self {
        Self {
            compact: DEFAULT_COMPACT_THRESHOLD,
            rotate: DEFAULT_ROTATE_THRESHOLD,
        }
    }
}

#[derive(Deserialize)]
struct RawThresholds {
    #[serde(default = "default_compact")]
    compact: f64,
    #[serde(default = "default_rotate")]
    rotate: f64,
}

fn default_compact() -> f64 {
    DEFAULT_COMPACT_THRESHOLD
}

fn default_rotate() -> f64 {
    DEFAULT_ROTATE_THRESHOLD
}

impl<'de> Deserialize<'de> for ContextThresholds {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = RawThresholds::deserialize(deserializer)?;
        Self::new(raw.compact, raw.rotate).map_err(serde::de::Error::custom)
    }
}

/// How full a session's context window is.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ContextUsage {
    pub used_tokens: u64,
    /// Window size in tokens; never 0.
    pub window: u64,
    /// `used_tokens / window * 100`, for display; decisions use [`ContextUsage::fraction`].
    pub percent: f64,
}

impl ContextUsage {
    pub fn new(used_tokens: u64, window: u64) -> Result<Self, PolicyError> {
        if window == 0 {
            return Err(PolicyError::ZeroWindow);
        }
        Ok(Self {
            used_tokens,
            window,
            percent: fraction(used_tokens, window) * 100.0,
        })
    }

    /// `used_tokens / window`; may exceed 1 when an agent overshoots its window.
    pub fn fraction(&self) -> f64 {
        fraction(self.used_tokens, self.window.max(1))
    }
}

#[allow(clippy::cast_precision_loss)] // token counts stay far below 2^52
fn fraction(used_tokens: u64, window: u64) -> f64 {
    // One correctly rounded division: exactly 80 of 100 yields the same double as the literal 0.80,
    // so a reading that sits on a threshold compares as reaching it.
    used_tokens as f64 / window as f64
}

/// What to do about one usage reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Continue,
    Compact,
    Rotate,
}

/// Continue below the compact threshold, compact from it up to the rotate threshold, rotate at
/// the rotate threshold and above.
pub fn decide(usage: &ContextUsage, thresholds: &ContextThresholds) -> Decision {
    let fraction = usage.fraction();
    if fraction >= thresholds.rotate {
        Decision::Rotate
    } else if fraction >= thresholds.compact {
        Decision::Compact
    } else {
        Decision::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mosaic_domain::Difficulty;
    use proptest::prelude::*;

    fn profile(compact: Option<f64>, rotate: Option<f64>) -> AgentProfile {
        AgentProfile {
            name: "glm".to_owned(),
            context_window: 1000,
            cost_input_per_mtok: 0.0,
            cost_output_per_mtok: 0.0,
            max_difficulty: Difficulty::High,
            self_hosted: true,
            enabled: true,
            compact_threshold: compact,
            rotate_threshold: rotate,
        }
    }

    #[test]
    fn decides_at_the_boundaries() {
        let defaults = ContextThresholds::default();
        let check = |used: u64, window: u64, expect: Decision| {
            let usage = ContextUsage::new(used, window).unwrap();
            assert_eq!(decide(&usage, &defaults), expect, "{used}/{window}");
        };
        check(0, 1000, Decision::Continue);
        check(799, 1000, Decision::Continue); // 79.9 %
        check(800, 1000, Decision::Compact); // 80 %
        check(949, 1000, Decision::Compact); // 94.9 %
        check(950, 1000, Decision::Rotate); // 95 %
        check(1000, 1000, Decision::Rotate); // 100 %
        check(1500, 1000, Decision::Rotate); // overshoot
        check(159_800, 200_000, Decision::Continue); // 79.9 % of a real window
        check(160_000, 200_000, Decision::Compact);
        check(189_800, 200_000, Decision::Compact);
        check(190_000, 200_000, Decision::Rotate);
    }

    #[test]
    fn percent_is_for_display() {
        let usage = ContextUsage::new(799, 1000).unwrap();
        assert!((usage.percent - 79.9).abs() < 1e-9);
        assert_eq!(ContextUsage::new(1, 0), Err(PolicyError::ZeroWindow));
    }

    #[test]
    fn rejects_bad_thresholds() {
        let check = |compact: f64, rotate: f64, ok: bool| {
            assert_eq!(
                ContextThresholds::new(compact, rotate).is_ok(),
                ok,
                "{compact} {rotate}"
            );
        };
        check(0.8, 0.95, true);
        check(0.5, 1.0, true);
        check(0.0, 0.95, false);
        check(-0.1, 0.95, false);
        check(0.95, 0.95, false);
        check(0.96, 0.95, false);
        check(0.8, 1.01, false);
        check(f64::NAN, 0.95, false);
        check(0.8, f64::NAN, false);
        check(f64::INFINITY, 0.95, false);
    }

    #[test]
    fn per_profile_thresholds_override_the_defaults() {
        let defaults = ContextThresholds::default();
        let own = defaults
            .for_profile(&profile(Some(0.6), Some(0.7)))
            .unwrap();
        assert_eq!((own.compact(), own.rotate()), (0.6, 0.7));
        let usage = ContextUsage::new(650, 1000).unwrap();
        assert_eq!(decide(&usage, &own), Decision::Compact);
        assert_eq!(decide(&usage, &defaults), Decision::Continue);

        let partial = defaults.for_profile(&profile(None, Some(0.9))).unwrap();
        assert_eq!((partial.compact(), partial.rotate()), (0.8, 0.9));
        // A profile that sets only compact above the global rotate is a configuration error.
        let err = defaults
            .for_profile(&profile(Some(0.97), None))
            .unwrap_err();
        assert!(matches!(err, PolicyError::BadProfileThresholds { .. }));
        assert!(err.to_string().contains("glm"));
    }

    #[test]
    fn deserializes_validated() {
        let ok: ContextThresholds = serde_json::from_str(r#"{"compact":0.7}"#).unwrap();
        assert_eq!((ok.compact(), ok.rotate()), (0.7, 0.95));
        let bad = serde_json::from_str::<ContextThresholds>(r#"{"compact":0.99,"rotate":0.9}"#);
        assert!(
            bad.unwrap_err()
                .to_string()
                .contains("0 < compact < rotate <= 1")
        );
    }

    proptest! {
        #[test]
        fn decision_is_monotonic_in_usage(used in 0u64..2_000, extra in 0u64..2_000, window in 1u64..5_000) {
            let thresholds = ContextThresholds::default();
            let rank = |d: Decision| match d { Decision::Continue => 0, Decision::Compact => 1, Decision::Rotate => 2 };
            let low = decide(&ContextUsage::new(used, window).unwrap(), &thresholds);
            let high = decide(&ContextUsage::new(used + extra, window).unwrap(), &thresholds);
            prop_assert!(rank(low) <= rank(high));
        }
    }
}
