//! Idempotency markers: a comment the coordinator posts carries `<!-- mosaic:KEY -->`, invisible
//! in Gitea's rendering, so that after an uncertain outcome (timeout, crash) the outbox worker can
//! find the comment it may already have posted instead of posting it twice.

use std::fmt;

/// Why a string cannot be an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MarkerError {
    #[error("idempotency key is empty")]
    Empty,
    #[error("idempotency key is {0} bytes long; at most {MAX_KEY_BYTES} are allowed")]
    TooLong(usize),
    #[error(
        "idempotency key `{0}` contains a character other than ASCII letters, digits, `-`, `_`, `.`, `:` and `/`"
    )]
    BadCharacter(String),
}

const MAX_KEY_BYTES: usize = 200;

/// A validated idempotency key: restricted characters so that it can never close the HTML
/// comment it lives in or be confused with a longer key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn new(key: &str) -> Result<Self, MarkerError> {
        if key.is_empty() {
            return Err(MarkerError::Empty);
        }
        if key.len() > MAX_KEY_BYTES {
            return Err(MarkerError::TooLong(key.len()));
        }
        if !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/'))
        {
            return Err(MarkerError::BadCharacter(key.to_owned()));
        }
        Ok(Self(key.to_owned()))
    }

    /// A fresh key nobody can guess (`c-` and 128 random bits in hex), for a comment that must
    /// be posted exactly once: stored with the write before it is posted, so a retry finds it,
    /// while nobody else can predict it and pre-empt the comment by posting its marker first.
    pub fn random() -> Self {
        Self(format!("c-{:032x}", rand::random::<u128>()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `<!-- mosaic:KEY -->`.
    pub fn marker(&self) -> String {
        format!("<!-- mosaic:{} -->", self.0)
    }

    /// The comment body with the marker appended on its own line.
    pub fn mark(&self, body: &str) -> String {
        format!("{}\n\n{}", body.trim_end(), self.marker())
    }

    /// Whether a comment body carries exactly this key (not merely a key starting with it).
    pub fn is_in(&self, body: &str) -> bool {
        body.contains(&self.marker())
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Every key marked in a comment body, in order of appearance.
pub fn markers_in(body: &str) -> Vec<IdempotencyKey> {
    const OPEN: &str = "<!-- mosaic:";
    const CLOSE: &str = " -->";
    let mut keys = Vec::new();
    let mut rest = body;
    while let Some(start) = rest.find(OPEN) {
        let after_open = &rest[start + OPEN.len()..];
        let Some(end) = after_open.find(CLOSE) else {
            break;
        };
        if let Ok(key) = IdempotencyKey::new(&after_open[..end]) {
            keys.push(key);
        }
        rest = &after_open[end + CLOSE.len()..];
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_validated() {
        let check = |input: &str, expect: Result<(), MarkerError>| {
            assert_eq!(IdempotencyKey::new(input).map(|_| ()), expect, "{input:?}");
        };
        check("outbox:42", Ok(()));
        check("o/r#1", Err(MarkerError::BadCharacter("o/r#1".into())));
        check("a -->b", Err(MarkerError::BadCharacter("a -->b".into())));
        check("", Err(MarkerError::Empty));
        check(&"k".repeat(201), Err(MarkerError::TooLong(201)));
    }

    #[test]
    fn random_keys_are_valid_and_differ_per_write() {
        let keys: std::collections::BTreeSet<IdempotencyKey> =
            (0..100).map(|_| IdempotencyKey::random()).collect();
        assert_eq!(keys.len(), 100);
        for key in &keys {
            assert_eq!(IdempotencyKey::new(key.as_str()).as_ref(), Ok(key));
            assert_eq!(key.as_str().len(), 34, "{key}");
        }
    }

    #[test]
    fn marks_and_finds_exact_keys() {
        let key = IdempotencyKey::new("outbox:4").unwrap();
        let body = key.mark("Queued for glm\n");
        assert_eq!(body, "Queued for glm\n\n<!-- mosaic:outbox:4 -->");
        assert!(key.is_in(&body));
        let longer = IdempotencyKey::new("outbox:42").unwrap();
        assert!(!key.is_in(&longer.mark("x")), "a prefix must not match");
        assert_eq!(markers_in(&body), vec![key]);
        assert_eq!(
            markers_in("<!-- mosaic:a --> text <!-- mosaic:b c --> <!-- mosaic:d -->"),
            vec![
                IdempotencyKey::new("a").unwrap(),
                IdempotencyKey::new("d").unwrap()
            ]
        );
        assert!(markers_in("<!-- mosaic:unterminated").is_empty());
    }
}
