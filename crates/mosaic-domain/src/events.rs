//! Typed Gitea webhook payloads and event classification.
//!
//! Only what the coordinator reads is modelled; unknown fields are ignored so newer Gitea
//! (or Forgejo) versions keep parsing. Gitea sends `null` for empty lists and strings in
//! several places (`assignees`, `body`, `labels`); those read as empty values.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::issue::{IssueRef, IssueRefError, MAX_ISSUE_NUMBER, RepoName};

/// Longest event name kept in [`EventKind::Other`]; header values are attacker-sized.
const MAX_EVENT_NAME_LEN: usize = 64;

/// Longest reason text a [`PayloadError`] carries.
const MAX_REASON_LEN: usize = 200;

/// The finer kind of an issue event (`X-Gitea-Event-Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IssueEventType {
    /// Opened, edited, closed, reopened, deleted, synchronized.
    Issues,
    /// Assigned, unassigned.
    Assign,
    /// Label updated or cleared.
    Label,
    /// Milestoned, demilestoned.
    Milestone,
}

impl IssueEventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Issues => "issues",
            Self::Assign => "issue_assign",
            Self::Label => "issue_label",
            Self::Milestone => "issue_milestone",
        }
    }
}

/// What a delivery is about, from its event headers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// An issue event; the body is an [`IssuePayload`].
    Issue(IssueEventType),
    /// A comment on an issue (not a pull request); the body is an [`IssueCommentPayload`].
    IssueComment,
    /// Anything else (push, pull requests, releases, …): recorded, never acted on.
    /// Holds the lower-cased event name (the fine one when given), at most 64 bytes.
    Other(String),
}

impl EventKind {
    /// Classifies a delivery from `X-Gitea-Event` (`event`, coarse) and `X-Gitea-Event-Type`
    /// (`event_type`, fine). Real Gitea sends `issues` in the coarse header for assignment,
    /// label and milestone changes and `issue_comment` for comments on pull requests too, so
    /// the fine header decides when present. Older servers put the fine name in the coarse
    /// header; that is accepted as well. Never fails: unknown names are [`EventKind::Other`].
    pub fn classify(event: &str, event_type: Option<&str>) -> Self {
        let coarse = normalise(event);
        let fine = event_type.map(normalise).filter(|t| !t.is_empty());
        let is_pull_request = |name: &str| name.starts_with("pull_request");

        match (coarse.as_str(), fine.as_deref()) {
            (_, Some(fine)) if is_pull_request(fine) => Self::Other(fine.to_owned()),
            ("issues", Some(fine)) => {
                Self::Issue(issue_event_type(fine).unwrap_or(IssueEventType::Issues))
            }
            ("issues", None) => Self::Issue(IssueEventType::Issues),
            ("issue_comment", _) => Self::IssueComment,
            (coarse, _) => match issue_event_type(coarse) {
                Some(fine) => Self::Issue(fine),
                None => Self::Other(coarse.to_owned()),
            },
        }
    }

    /// Whether the coordinator acts on deliveries of this kind.
    pub fn is_actionable(&self) -> bool {
        !matches!(self, Self::Other(_))
    }

    /// A short name for logs and the inbox.
    pub fn name(&self) -> &str {
        match self {
            Self::Issue(fine) => fine.as_str(),
            Self::IssueComment => "issue_comment",
            Self::Other(name) => name,
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn normalise(name: &str) -> String {
    let mut name = name.trim().to_ascii_lowercase();
    if name.len() > MAX_EVENT_NAME_LEN {
        let mut cut = MAX_EVENT_NAME_LEN;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name.truncate(cut);
    }
    name
}

fn issue_event_type(name: &str) -> Option<IssueEventType> {
    match name {
        "issues" => Some(IssueEventType::Issues),
        "issue_assign" => Some(IssueEventType::Assign),
        "issue_label" => Some(IssueEventType::Label),
        "issue_milestone" => Some(IssueEventType::Milestone),
        _ => None,
    }
}

/// Declares a string-valued action enum whose unknown values are kept, never rejected.
macro_rules! open_action_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum $name {
            $($variant,)+
            /// An action this version does not know; kept verbatim.
            Unknown(String),
        }

        impl $name {
            /// Reads an action name; never fails.
            pub fn parse(text: &str) -> Self {
                match text {
                    $($text => Self::$variant,)+
                    other => Self::Unknown(other.to_owned()),
                }
            }

            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $text,)+
                    Self::Unknown(other) => other,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                Ok(Self::parse(&text))
            }
        }
    };
}

open_action_enum!(
    /// What happened to an issue.
    IssueAction {
        Opened => "opened",
        Edited => "edited",
        Closed => "closed",
        Reopened => "reopened",
        Assigned => "assigned",
        Unassigned => "unassigned",
        LabelUpdated => "label_updated",
        LabelCleared => "label_cleared",
        Milestoned => "milestoned",
        Demilestoned => "demilestoned",
        Synchronized => "synchronized",
        Deleted => "deleted",
    }
);

open_action_enum!(
    /// What happened to a comment.
    CommentAction {
        Created => "created",
        Edited => "edited",
        Deleted => "deleted",
    }
);

/// `null` reads as the type's empty value (Gitea sends `"assignees": null`).
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// An issue number is read only if it can name an issue (1..=[`MAX_ISSUE_NUMBER`]), so a
/// larger one is a payload error, not a failure further on (in the store).
fn issue_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let number = u64::deserialize(deserializer)?;
    if (1..=MAX_ISSUE_NUMBER).contains(&number) {
        Ok(number)
    } else {
        Err(serde::de::Error::custom(format!(
            "issue number must be a positive integer up to {MAX_ISSUE_NUMBER}"
        )))
    }
}

/// A Gitea account. The ghost user of deleted accounts has id `-1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: i64,
    pub login: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub full_name: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub email: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub username: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Label {
    pub id: i64,
    pub name: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub color: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub description: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub url: String,
    /// Scoped labels (newer Gitea): at most one label of the scope applies.
    #[serde(default, deserialize_with = "null_as_default")]
    pub exclusive: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Milestone {
    pub id: i64,
    pub title: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub description: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub state: String,
    #[serde(default)]
    pub due_on: Option<DateTime<Utc>>,
    #[serde(default)]
    pub closed_at: Option<DateTime<Utc>>,
}

/// Open or closed, as the tracker reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrackerState {
    Open,
    Closed,
}

impl TrackerState {
    pub fn is_open(self) -> bool {
        self == Self::Open
    }
}

/// Present on issues that are pull requests.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PullRequestMeta {
    #[serde(default, deserialize_with = "null_as_default")]
    pub merged: bool,
}

/// The short repository block inside an issue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssueRepository {
    pub id: i64,
    pub name: String,
    pub owner: String,
    pub full_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issue {
    pub id: i64,
    #[serde(deserialize_with = "issue_number")]
    pub number: u64,
    pub title: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub body: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub labels: Vec<Label>,
    pub user: User,
    #[serde(default)]
    pub assignee: Option<User>,
    /// Empty when nobody is assigned (Gitea sends `null`).
    #[serde(default, deserialize_with = "null_as_default")]
    pub assignees: Vec<User>,
    pub state: TrackerState,
    #[serde(default)]
    pub milestone: Option<Milestone>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default)]
    pub closed_at: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub html_url: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub url: String,
    #[serde(default)]
    pub pull_request: Option<PullRequestMeta>,
    /// How many comments the issue has (Gitea sends it; older trackers may not).
    #[serde(default)]
    pub comments: Option<u64>,
    #[serde(default)]
    pub repository: Option<IssueRepository>,
}

impl Issue {
    /// Names of the issue's labels, in the tracker's order.
    pub fn label_names(&self) -> impl Iterator<Item = &str> {
        self.labels.iter().map(|label| label.name.as_str())
    }

    /// Logins of everyone assigned (`assignees`, falling back to the single `assignee`).
    pub fn assignee_logins(&self) -> Vec<&str> {
        if self.assignees.is_empty() {
            self.assignee
                .iter()
                .map(|user| user.login.as_str())
                .collect()
        } else {
            self.assignees
                .iter()
                .map(|user| user.login.as_str())
                .collect()
        }
    }

    pub fn is_pull_request(&self) -> bool {
        self.pull_request.is_some()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repository {
    pub id: i64,
    pub name: String,
    pub full_name: String,
    pub owner: User,
    #[serde(default, deserialize_with = "null_as_default")]
    pub html_url: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub private: bool,
    #[serde(default, deserialize_with = "null_as_default")]
    pub default_branch: String,
}

impl Repository {
    /// The validated `owner/name`.
    pub fn repo_name(&self) -> Result<RepoName, IssueRefError> {
        self.full_name.parse()
    }
}

/// The previous value of an edited field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangedFrom {
    #[serde(default, deserialize_with = "null_as_default")]
    pub from: String,
}

/// What an `edited` action changed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Changes {
    #[serde(default)]
    pub title: Option<ChangedFrom>,
    #[serde(default)]
    pub body: Option<ChangedFrom>,
    #[serde(default, rename = "ref")]
    pub git_ref: Option<ChangedFrom>,
}

/// Body of an `issues` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuePayload {
    pub action: IssueAction,
    /// The issue number; some senders omit it, so `issue.number` is authoritative.
    #[serde(default)]
    pub number: Option<u64>,
    pub issue: Issue,
    pub repository: Repository,
    #[serde(default)]
    pub sender: Option<User>,
    #[serde(default)]
    pub changes: Option<Changes>,
}

impl IssuePayload {
    pub fn repo_name(&self) -> Result<RepoName, IssueRefError> {
        self.repository.repo_name()
    }

    pub fn issue_ref(&self) -> Result<IssueRef, IssueRefError> {
        issue_ref(&self.repository, &self.issue)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Comment {
    pub id: i64,
    #[serde(default, deserialize_with = "null_as_default")]
    pub body: String,
    pub user: User,
    #[serde(default, deserialize_with = "null_as_default")]
    pub html_url: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub issue_url: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Body of an `issue_comment` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssueCommentPayload {
    pub action: CommentAction,
    pub issue: Issue,
    pub comment: Comment,
    pub repository: Repository,
    #[serde(default)]
    pub sender: Option<User>,
    #[serde(default)]
    pub changes: Option<Changes>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub is_pull: bool,
}

impl IssueCommentPayload {
    pub fn repo_name(&self) -> Result<RepoName, IssueRefError> {
        self.repository.repo_name()
    }

    pub fn issue_ref(&self) -> Result<IssueRef, IssueRefError> {
        issue_ref(&self.repository, &self.issue)
    }
}

fn issue_ref(repository: &Repository, issue: &Issue) -> Result<IssueRef, IssueRefError> {
    let repo = repository.repo_name()?;
    if issue.number == 0 {
        return Err(IssueRefError::BadNumber(format!("{repo}#0")));
    }
    Ok(IssueRef::new(repo, issue.number))
}

/// A parsed delivery the coordinator acts on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "payload", rename_all = "snake_case")]
pub enum WebhookPayload {
    Issue(IssuePayload),
    IssueComment(IssueCommentPayload),
}

impl WebhookPayload {
    pub fn repository(&self) -> &Repository {
        match self {
            Self::Issue(payload) => &payload.repository,
            Self::IssueComment(payload) => &payload.repository,
        }
    }

    pub fn issue(&self) -> &Issue {
        match self {
            Self::Issue(payload) => &payload.issue,
            Self::IssueComment(payload) => &payload.issue,
        }
    }

    pub fn repo_name(&self) -> Result<RepoName, IssueRefError> {
        self.repository().repo_name()
    }

    pub fn issue_ref(&self) -> Result<IssueRef, IssueRefError> {
        issue_ref(self.repository(), self.issue())
    }
}

/// A body that is not a valid payload for its event. The reason is short and never quotes
/// the body's string values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct PayloadError {
    reason: String,
}

impl PayloadError {
    fn new(reason: impl Into<String>) -> Self {
        let mut reason = reason.into();
        if reason.len() > MAX_REASON_LEN {
            let mut cut = MAX_REASON_LEN;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
            reason.push('…');
        }
        Self { reason }
    }

    pub fn reason(&self) -> &str {
        &self.reason
    }

    fn from_json(err: &serde_json::Error) -> Self {
        use serde_json::error::Category;
        let (line, column) = (err.line(), err.column());
        match err.classify() {
            Category::Eof => Self::new(format!(
                "truncated JSON (ends early at line {line} column {column})"
            )),
            Category::Syntax | Category::Io => {
                // Syntax messages name the problem, not the input ("expected value",
                // "recursion limit exceeded"), so they are safe to show.
                Self::new(format!("malformed JSON: {err}"))
            }
            Category::Data => Self::new(redact_quoted(&err.to_string())),
        }
    }
}

/// Replaces `"…"` spans (echoed string values) and the value of `unknown variant `…``
/// with `…`; backticked field names and expected values stay.
fn redact_quoted(message: &str) -> String {
    const UNKNOWN_VARIANT: &str = "unknown variant `";
    if let Some(rest) = message.strip_prefix(UNKNOWN_VARIANT) {
        // serde writes the received value first, then "`, expected …".
        return match rest.rfind("`, expected") {
            Some(end) => format!("{UNKNOWN_VARIANT}…{}", &rest[end..]),
            None => format!("{UNKNOWN_VARIANT}…`"),
        };
    }
    let mut out = String::with_capacity(message.len());
    let mut inside = false;
    let mut escaped = false;
    for ch in message.chars() {
        if inside {
            if escaped {
                escaped = false;
            } else if ch == '\\' {
                escaped = true;
            } else if ch == '"' {
                inside = false;
                out.push_str("…\"");
            }
        } else {
            out.push(ch);
            if ch == '"' {
                inside = true;
            }
        }
    }
    if inside {
        out.push_str("…\"");
    }
    out
}

/// Parses a verified body as the payload its event kind announces, and checks that it names
/// a valid repository and issue number (so everything downstream can key on them).
pub fn parse_payload(kind: &EventKind, body: &[u8]) -> Result<WebhookPayload, PayloadError> {
    // Checked once here, so the parser need not check every string again (a tenth of its time).
    let body = std::str::from_utf8(body).map_err(|err| {
        PayloadError::new(format!(
            "body is not valid UTF-8 (at byte {})",
            err.valid_up_to()
        ))
    })?;
    let payload = match kind {
        EventKind::Issue(_) => serde_json::from_str::<IssuePayload>(body)
            .map(WebhookPayload::Issue)
            .map_err(|err| PayloadError::from_json(&err))?,
        EventKind::IssueComment => serde_json::from_str::<IssueCommentPayload>(body)
            .map(WebhookPayload::IssueComment)
            .map_err(|err| PayloadError::from_json(&err))?,
        EventKind::Other(name) => {
            return Err(PayloadError::new(format!(
                "event `{name}` is not one the coordinator reads"
            )));
        }
    };
    payload.issue_ref().map_err(|err| {
        PayloadError::new(match err {
            IssueRefError::BadNumber(_) => "issue number must be a positive integer".to_owned(),
            _ => "repository full_name is not a valid owner/name".to_owned(),
        })
    })?;
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISSUES: &[u8] = include_bytes!("../../../tests/fixtures/gitea/issues-event.json");
    const ASSIGN: &[u8] = include_bytes!("../../../tests/fixtures/gitea/issue-assign-event.json");
    const LABEL: &[u8] = include_bytes!("../../../tests/fixtures/gitea/issue-label-event.json");
    const MILESTONE: &[u8] =
        include_bytes!("../../../tests/fixtures/gitea/issue-milestone-event.json");
    const COMMENT: &[u8] = include_bytes!("../../../tests/fixtures/gitea/issue-comment-event.json");

    fn issue_payload(kind: &EventKind, body: &[u8]) -> IssuePayload {
        match parse_payload(kind, body).unwrap() {
            WebhookPayload::Issue(payload) => payload,
            other => panic!("expected an issue payload, got {other:?}"),
        }
    }

    #[test]
    fn classifies_headers() {
        let check = |event: &str, event_type: Option<&str>, expect: EventKind| {
            assert_eq!(
                EventKind::classify(event, event_type),
                expect,
                "{event:?} / {event_type:?}"
            );
        };
        use IssueEventType as T;
        check("issues", Some("issues"), EventKind::Issue(T::Issues));
        check("issues", None, EventKind::Issue(T::Issues));
        check("issues", Some(""), EventKind::Issue(T::Issues));
        check("issues", Some("issue_assign"), EventKind::Issue(T::Assign));
        check("issues", Some("issue_label"), EventKind::Issue(T::Label));
        check(
            "issues",
            Some("issue_milestone"),
            EventKind::Issue(T::Milestone),
        );
        check(" Issues ", Some("ISSUE_LABEL"), EventKind::Issue(T::Label));
        // Older servers: the fine name in the coarse header.
        check("issue_assign", None, EventKind::Issue(T::Assign));
        check(
            "issue_comment",
            Some("issue_comment"),
            EventKind::IssueComment,
        );
        check("issue_comment", None, EventKind::IssueComment);
        check(
            "issue_comment",
            Some("pull_request_comment"),
            EventKind::Other("pull_request_comment".into()),
        );
        check(
            "pull_request",
            Some("pull_request"),
            EventKind::Other("pull_request".into()),
        );
        check(
            "issues",
            Some("pull_request_assign"),
            EventKind::Other("pull_request_assign".into()),
        );
        check("push", Some("push"), EventKind::Other("push".into()));
        check("", None, EventKind::Other(String::new()));
        let long = "x".repeat(10_000);
        match EventKind::classify(&long, None) {
            EventKind::Other(name) => assert_eq!(name.len(), MAX_EVENT_NAME_LEN),
            other => panic!("{other:?}"),
        }
        assert!(!EventKind::classify("push", None).is_actionable());
        assert!(EventKind::classify("issues", None).is_actionable());
    }

    #[test]
    fn all_fixtures_parse() {
        let kind = |event_type| EventKind::classify("issues", Some(event_type));

        let opened = issue_payload(&kind("issues"), ISSUES);
        assert_eq!(opened.action, IssueAction::Opened);
        assert_eq!(opened.number, Some(1));
        assert_eq!(opened.issue.number, 1);
        assert_eq!(opened.issue.state, TrackerState::Open);
        assert!(
            opened.issue.assignees.is_empty(),
            "null assignees read as empty"
        );
        assert!(opened.issue.assignee.is_none());
        assert_eq!(opened.repository.full_name, "example/example");
        assert_eq!(opened.repository.owner.login, "example");
        assert_eq!(opened.sender.as_ref().map(|u| u.id), Some(1));
        assert_eq!(opened.issue_ref().unwrap().to_string(), "example/example#1");
        assert_eq!(
            opened.issue.created_at.to_rfc3339(),
            "2022-03-09T07:19:00+00:00"
        );

        let assigned = issue_payload(&kind("issue_assign"), ASSIGN);
        assert_eq!(assigned.action, IssueAction::Assigned);
        assert_eq!(assigned.issue.assignee_logins(), vec!["example"]);

        let labelled = issue_payload(&kind("issue_label"), LABEL);
        assert_eq!(labelled.action, IssueAction::LabelUpdated);
        assert_eq!(labelled.issue.labels.len(), 1);
        let label = &labelled.issue.labels[0];
        assert_eq!(
            (label.id, label.name.as_str(), label.color.as_str()),
            (1, "bug", "ee0701")
        );
        assert_eq!(label.description, "Something is not working");

        let milestoned = issue_payload(&kind("issue_milestone"), MILESTONE);
        assert_eq!(milestoned.action, IssueAction::Milestoned);
        assert_eq!(
            milestoned
                .issue
                .milestone
                .as_ref()
                .map(|m| m.title.as_str()),
            Some("example")
        );

        match parse_payload(&EventKind::IssueComment, COMMENT).unwrap() {
            WebhookPayload::IssueComment(payload) => {
                assert_eq!(payload.action, CommentAction::Created);
                assert_eq!(payload.comment.id, 2);
                assert_eq!(payload.comment.body, "example");
                assert_eq!(payload.comment.user.login, "example");
                assert!(!payload.is_pull);
                assert_eq!(
                    payload.issue_ref().unwrap().to_string(),
                    "example/example#1"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn actions_round_trip_and_unknown_ones_are_kept() {
        for name in [
            "opened",
            "edited",
            "closed",
            "reopened",
            "assigned",
            "unassigned",
            "label_updated",
            "label_cleared",
            "milestoned",
            "demilestoned",
            "synchronized",
            "deleted",
        ] {
            let action = IssueAction::parse(name);
            assert!(!matches!(action, IssueAction::Unknown(_)), "{name}");
            assert_eq!(action.to_string(), name);
        }
        for name in ["created", "edited", "deleted"] {
            assert_eq!(CommentAction::parse(name).as_str(), name);
        }

        let body = String::from_utf8(ISSUES.to_vec()).unwrap().replacen(
            "\"opened\"",
            "\"transferred\"",
            1,
        );
        let payload = issue_payload(&EventKind::Issue(IssueEventType::Issues), body.as_bytes());
        assert_eq!(payload.action, IssueAction::Unknown("transferred".into()));
        assert_eq!(
            serde_json::to_value(&payload.action).unwrap(),
            serde_json::json!("transferred")
        );
    }

    #[test]
    fn nulls_and_unknown_fields_are_tolerated() {
        let mut value: serde_json::Value = serde_json::from_slice(LABEL).unwrap();
        value["issue"]["body"] = serde_json::Value::Null;
        value["issue"]["labels"] = serde_json::Value::Null;
        value["issue"]["brand_new_field"] = serde_json::json!({"nested": [1, 2, 3]});
        value["issue"]["labels"] = serde_json::json!([{
            "id": 7, "name": "priority:high", "color": null, "description": null,
            "url": "", "exclusive": true, "is_archived": false
        }]);
        value["changes"] = serde_json::json!({"body": {"from": "old text"}});
        let body = serde_json::to_vec(&value).unwrap();
        let payload = issue_payload(&EventKind::Issue(IssueEventType::Label), &body);
        assert_eq!(payload.issue.body, "");
        assert_eq!(
            payload.issue.label_names().collect::<Vec<_>>(),
            ["priority:high"]
        );
        assert!(payload.issue.labels[0].exclusive);
        assert_eq!(
            payload
                .changes
                .and_then(|c| c.body)
                .map(|b| b.from)
                .as_deref(),
            Some("old text")
        );
    }

    #[test]
    fn bad_bodies_are_errors_with_short_reasons() {
        let kind = EventKind::Issue(IssueEventType::Issues);
        let reason = |body: &[u8]| parse_payload(&kind, body).unwrap_err().reason().to_owned();

        assert!(reason(b"[1, 2, 3]").contains("invalid type"));
        assert!(reason(b"{\"action\": \"opened\"").contains("truncated"));
        assert!(reason(b"{\"action\": opened}").starts_with("malformed JSON"));
        assert!(reason(b"").contains("truncated"));
        assert_eq!(
            reason(b"{\"action\": \"\xff\xfe\"}"),
            "body is not valid UTF-8 (at byte 12)"
        );
        assert!(reason(b"{}").contains("missing field `action`"));

        // Values from the body are never echoed back.
        let secretive = String::from_utf8(ISSUES.to_vec()).unwrap().replacen(
            "\"state\": \"open\"",
            "\"state\": \"TOP-SECRET-VALUE\"",
            1,
        );
        let shown = reason(secretive.as_bytes());
        assert!(!shown.contains("TOP-SECRET"), "{shown}");
        assert!(shown.contains("unknown variant"), "{shown}");

        // Invalid repository names and issue numbers are refused at parse time.
        let bad_repo = String::from_utf8(ISSUES.to_vec())
            .unwrap()
            .replace("\"example/example\"", "\"../etc\"");
        assert!(reason(bad_repo.as_bytes()).contains("owner/name"));
        let mut zero: serde_json::Value = serde_json::from_slice(ISSUES).unwrap();
        zero["issue"]["number"] = serde_json::json!(0);
        assert!(reason(&serde_json::to_vec(&zero).unwrap()).contains("positive"));
        // Beyond a signed 64-bit integer no issue can exist: refused here, not by the store.
        for too_large in [MAX_ISSUE_NUMBER + 1, u64::MAX] {
            let mut huge: serde_json::Value = serde_json::from_slice(ISSUES).unwrap();
            huge["issue"]["number"] = serde_json::json!(too_large);
            let shown = reason(&serde_json::to_vec(&huge).unwrap());
            assert!(shown.contains("issue number must be"), "{shown}");
        }
        let mut largest: serde_json::Value = serde_json::from_slice(ISSUES).unwrap();
        largest["issue"]["number"] = serde_json::json!(MAX_ISSUE_NUMBER);
        let kind = EventKind::Issue(IssueEventType::Issues);
        assert!(parse_payload(&kind, &serde_json::to_vec(&largest).unwrap()).is_ok());

        assert!(
            parse_payload(&EventKind::Other("push".into()), ISSUES)
                .unwrap_err()
                .reason()
                .contains("push")
        );
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let kind = EventKind::Issue(IssueEventType::Issues);
        let depth = 200_000;
        let top_level = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        assert!(parse_payload(&kind, top_level.as_bytes()).is_err());

        let err = parse_payload(&kind, top_level.as_bytes()).unwrap_err();
        assert!(err.reason().contains("invalid type"), "{err}");
        let in_a_field = format!(
            "{{\"action\": \"opened\", \"issue\": {}{}}}",
            "[".repeat(depth),
            "]".repeat(depth)
        );
        assert!(parse_payload(&kind, in_a_field.as_bytes()).is_err());

        // serde_json skips unknown fields without recursing, so deep nesting there is harmless.
        let text = String::from_utf8(ISSUES.to_vec()).unwrap();
        let ignored = text.replacen(
            "{",
            &format!("{{\"unknown\": {}{},", "[".repeat(depth), "]".repeat(depth)),
            1,
        );
        assert_eq!(
            issue_payload(&kind, ignored.as_bytes()).action,
            IssueAction::Opened
        );
    }

    #[test]
    fn redaction_keeps_structure() {
        assert_eq!(
            redact_quoted(r#"invalid type: string "a\"b", expected u64"#),
            "invalid type: string \"…\", expected u64"
        );
        assert_eq!(redact_quoted("missing field `x`"), "missing field `x`");
        assert_eq!(redact_quoted("open \"quote"), "open \"…\"");
        assert_eq!(
            redact_quoted("unknown variant `x`, y`, expected `open` or `closed`"),
            "unknown variant `…`, expected `open` or `closed`"
        );
    }

    #[test]
    fn long_reasons_are_cut() {
        let err = PayloadError::new("é".repeat(500));
        assert!(err.reason().len() <= MAX_REASON_LEN + '…'.len_utf8());
    }
}
