//! Repository-qualified issue identities.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Why a repository name or issue reference could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssueRefError {
    #[error("repository name `{0}` is not of the form owner/name")]
    BadRepository(String),
    #[error("issue reference `{0}` is not of the form #N or owner/name#N")]
    BadReference(String),
    #[error("issue number in `{0}` must be a positive integer")]
    BadNumber(String),
}

/// `owner/name` of a repository, validated: both parts non-empty, made of
/// ASCII letters, digits, `-`, `_` and `.`, and not `.` or `..`.
///
/// The text is shared (`Arc<str>`): issue references are cloned into graph, queue and
/// records by the hundred thousand, and a clone costs a reference count, not two strings.
#[derive(Clone, Serialize)]
#[serde(into = "String")]
pub struct RepoName {
    /// `owner/name`.
    full: Arc<str>,
    /// Where the `/` is.
    slash: usize,
}

fn valid_segment(segment: &str) -> bool {
    !segment.is_empty()
        && segment.len() <= 100
        && segment != "."
        && segment != ".."
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl RepoName {
    /// Builds a repository name from its two parts, validating both.
    pub fn new(owner: &str, name: &str) -> Result<Self, IssueRefError> {
        if valid_segment(owner) && valid_segment(name) {
            Ok(Self {
                full: Arc::from(format!("{owner}/{name}")),
                slash: owner.len(),
            })
        } else {
            Err(IssueRefError::BadRepository(format!("{owner}/{name}")))
        }
    }

    pub fn owner(&self) -> &str {
        &self.full[..self.slash]
    }

    pub fn name(&self) -> &str {
        &self.full[self.slash + 1..]
    }

    /// `owner/name`, without allocating.
    pub fn as_str(&self) -> &str {
        &self.full
    }
}

impl PartialEq for RepoName {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.full, &other.full) || self.full == other.full
    }
}

impl Eq for RepoName {}

impl std::hash::Hash for RepoName {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // The full name determines both parts (the owner holds no `/`), as equality does.
        self.full.hash(state);
    }
}

impl PartialOrd for RepoName {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for RepoName {
    /// By owner, then name.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.owner()
            .cmp(other.owner())
            .then_with(|| self.name().cmp(other.name()))
    }
}

impl fmt::Debug for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RepoName")
            .field("owner", &self.owner())
            .field("name", &self.name())
            .finish()
    }
}

impl FromStr for RepoName {
    type Err = IssueRefError;

    fn from_str(full_name: &str) -> Result<Self, Self::Err> {
        match full_name.split_once('/') {
            Some((owner, name)) if valid_segment(owner) && valid_segment(name) => Ok(Self {
                full: Arc::from(full_name),
                slash: owner.len(),
            }),
            _ => Err(IssueRefError::BadRepository(full_name.to_owned())),
        }
    }
}

impl TryFrom<String> for RepoName {
    type Error = IssueRefError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<RepoName> for String {
    fn from(value: RepoName) -> Self {
        value.to_string()
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

/// One issue, qualified by its repository: `owner/name#12`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(into = "String")]
pub struct IssueRef {
    pub repo: RepoName,
    pub number: u64,
}

impl IssueRef {
    pub fn new(repo: RepoName, number: u64) -> Self {
        Self { repo, number }
    }

    /// Reads `#12` (relative to `base`) or `owner/name#12`.
    pub fn parse_relative(text: &str, base: &RepoName) -> Result<Self, IssueRefError> {
        let text = text.trim();
        let (repo_part, number_part) = text
            .split_once('#')
            .ok_or_else(|| IssueRefError::BadReference(text.to_owned()))?;
        let repo = if repo_part.is_empty() {
            base.clone()
        } else {
            repo_part
                .parse()
                .map_err(|_| IssueRefError::BadReference(text.to_owned()))?
        };
        let number = parse_issue_number(number_part)
            .ok_or_else(|| IssueRefError::BadNumber(text.to_owned()))?;
        Ok(Self { repo, number })
    }

    /// How this reference reads from inside `base`: `#12` there, `owner/name#12` elsewhere.
    pub fn display_from(&self, base: &RepoName) -> String {
        if &self.repo == base {
            format!("#{}", self.number)
        } else {
            self.to_string()
        }
    }
}

/// The largest issue number there can be: Gitea numbers issues with a signed 64-bit integer
/// (and stores keep them as one), so a larger number names no issue.
pub const MAX_ISSUE_NUMBER: u64 = i64::MAX.unsigned_abs();

fn parse_issue_number(digits: &str) -> Option<u64> {
    if digits.is_empty() || digits.len() > 18 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|n| *n > 0)
}

impl FromStr for IssueRef {
    type Err = IssueRefError;

    /// Reads the absolute form `owner/name#12`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (repo_part, number_part) = text
            .trim()
            .split_once('#')
            .ok_or_else(|| IssueRefError::BadReference(text.to_owned()))?;
        let repo = repo_part
            .parse()
            .map_err(|_| IssueRefError::BadReference(text.to_owned()))?;
        let number = parse_issue_number(number_part)
            .ok_or_else(|| IssueRefError::BadNumber(text.to_owned()))?;
        Ok(Self { repo, number })
    }
}

impl TryFrom<String> for IssueRef {
    type Error = IssueRefError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<IssueRef> for String {
    fn from(value: IssueRef) -> Self {
        value.to_string()
    }
}

impl fmt::Display for IssueRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.repo, self.number)
    }
}

/// Deserialises any `FromStr` type from a string, borrowed when the format allows (stored
/// metadata holds many references; no intermediate `String` per reference).
struct FromText<T>(std::marker::PhantomData<T>);

impl<T> serde::de::Visitor<'_> for FromText<T>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<T, E> {
        text.parse().map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for RepoName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(FromText(std::marker::PhantomData))
    }
}

impl<'de> Deserialize<'de> for IssueRef {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(FromText(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(s: &str) -> RepoName {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_prints_references() {
        let base = repo("mosaic/coordinator");
        let check = |input: &str, expect: Option<&str>| {
            let got = IssueRef::parse_relative(input, &base)
                .ok()
                .map(|r| r.to_string());
            assert_eq!(got.as_deref(), expect, "input {input:?}");
        };
        check("#12", Some("mosaic/coordinator#12"));
        check(" #7 ", Some("mosaic/coordinator#7"));
        check("mosaic/infra#7", Some("mosaic/infra#7"));
        check("#0", None);
        check("#", None);
        check("#-1", None);
        check("12", None);
        check("a/b/c#1", None);
        check("../x#1", None);
        check("#99999999999999999999", None);
    }

    #[test]
    fn repo_names_reject_path_tricks() {
        for bad in ["", "a", "/a", "a/", "a/..", "./b", "a b/c", "a/b/c"] {
            assert!(bad.parse::<RepoName>().is_err(), "{bad:?}");
        }
        assert_eq!(repo("go-gitea/gitea.io").name(), "gitea.io");
    }

    #[test]
    fn shared_names_compare_by_owner_then_name() {
        use std::hash::BuildHasher;
        let a = repo("a/x");
        let same = RepoName::new("a", "x").unwrap();
        assert_eq!((a.owner(), a.name(), a.as_str()), ("a", "x", "a/x"));
        assert_eq!(a, same);
        assert_eq!(a, a.clone());
        let hasher = std::collections::hash_map::RandomState::new();
        assert_eq!(hasher.hash_one(&a), hasher.hash_one(&same));
        // By parts, not by text: `-` sorts before `/`, yet owner `a` comes before `a-b`.
        let mut names = [repo("a-b/x"), repo("a/y"), repo("a/x"), repo("b/a")];
        names.sort();
        let names: Vec<String> = names.iter().map(ToString::to_string).collect();
        assert_eq!(names, ["a/x", "a/y", "a-b/x", "b/a"]);
        assert_eq!(format!("{a:?}"), r#"RepoName { owner: "a", name: "x" }"#);
    }

    #[test]
    fn serde_uses_the_display_form() {
        let r: IssueRef = "o/r#3".parse().unwrap();
        assert_eq!(serde_json::to_string(&r).unwrap(), "\"o/r#3\"");
        let back: IssueRef = serde_json::from_str("\"o/r#3\"").unwrap();
        assert_eq!(back, r);
        assert!(serde_json::from_str::<IssueRef>("\"o/r#x\"").is_err());
    }
}
