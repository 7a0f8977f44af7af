//! Context estimates from an issue's components, when the issue gives no total.
//!
//! `(files × 7,000 + complexity + tests + docs) × 1.3`: the 1.3 leaves room for reading code
//! the issue does not name.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Tokens budgeted per file to modify.
pub const TOKENS_PER_FILE: u64 = 7_000;

/// A three-step level, used for implementation complexity and test requirements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Low,
    Medium,
    High,
}

/// How much documentation the issue asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DocLevel {
    None,
    Light,
    Medium,
    Heavy,
}

/// A level word that is not one the template allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("level `{word}` is not one of {expected}")]
pub struct UnknownLevel {
    pub word: String,
    pub expected: &'static str,
}

impl FromStr for Level {
    type Err = UnknownLevel;
    fn from_str(word: &str) -> Result<Self, Self::Err> {
        match word.trim().to_ascii_lowercase().as_str() {
            "low" | "easy" | "minimal" | "light" => Ok(Self::Low),
            "medium" | "moderate" => Ok(Self::Medium),
            "high" | "hard" | "heavy" | "extensive" => Ok(Self::High),
            _ => Err(UnknownLevel {
                word: word.to_owned(),
                expected: "low, medium, high",
            }),
        }
    }
}

impl FromStr for DocLevel {
    type Err = UnknownLevel;
    fn from_str(word: &str) -> Result<Self, Self::Err> {
        match word.trim().to_ascii_lowercase().as_str() {
            "none" | "no" | "n/a" => Ok(Self::None),
            "light" | "low" | "minimal" => Ok(Self::Light),
            "medium" | "moderate" => Ok(Self::Medium),
            "heavy" | "high" | "extensive" => Ok(Self::Heavy),
            _ => Err(UnknownLevel {
                word: word.to_owned(),
                expected: "none, light, medium, heavy",
            }),
        }
    }
}

impl Level {
    /// Tokens for implementation complexity at this level.
    pub fn complexity_tokens(self) -> u64 {
        match self {
            Self::Low => 10_000,
            Self::Medium => 20_000,
            Self::High => 30_000,
        }
    }

    /// Tokens for test requirements at this level.
    pub fn test_tokens(self) -> u64 {
        match self {
            Self::Low => 5_000,
            Self::Medium => 10_000,
            Self::High => 15_000,
        }
    }
}

impl DocLevel {
    pub fn tokens(self) -> u64 {
        match self {
            Self::None => 0,
            Self::Light => 2_000,
            Self::Medium => 3_000,
            Self::Heavy => 5_000,
        }
    }
}

/// The parts an estimate is built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EstimateComponents {
    pub files: u32,
    pub complexity: Level,
    pub tests: Level,
    pub docs: DocLevel,
}

impl EstimateComponents {
    /// `(files × 7,000 + complexity + tests + docs) × 1.3`, rounded to the nearest token.
    pub fn total_tokens(&self) -> u64 {
        let base = u64::from(self.files) * TOKENS_PER_FILE
            + self.complexity.complexity_tokens()
            + self.tests.test_tokens()
            + self.docs.tokens();
        // × 1.3 in integers (exact: no float rounding drift).
        (base * 13 + 5) / 10
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(files: u32, complexity: &str, tests: &str, docs: &str, expect: u64) {
        let components = EstimateComponents {
            files,
            complexity: complexity.parse().unwrap(),
            tests: tests.parse().unwrap(),
            docs: docs.parse().unwrap(),
        };
        assert_eq!(components.total_tokens(), expect, "{components:?}");
    }

    #[test]
    fn formula_matches_the_documented_examples() {
        check(1, "low", "low", "none", 28_600);
        check(3, "medium", "medium", "medium", 70_200);
        check(0, "low", "low", "none", 19_500);
        check(4, "low", "low", "light", 58_500);
        check(2, "high", "high", "heavy", 83_200);
    }

    #[test]
    fn unknown_levels_are_errors() {
        assert!("extreme".parse::<Level>().is_err());
        assert!("lots".parse::<DocLevel>().is_err());
    }
}
