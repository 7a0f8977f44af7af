//! A credential that never shows up in logs, debug output or serialised data.

use std::fmt;

use serde::{Deserialize, Deserializer};

/// A secret string (webhook secret, API token, API key).
///
/// `Debug` and `Display` print `[redacted]`. There is deliberately no `Serialize`
/// implementation, so a secret can never be written out with the rest of a configuration.
/// The value is reachable only through [`Secret::expose_secret`], which makes every use
/// visible in review.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value itself. Call only where the value is needed (signing, a request header).
    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_its_value() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret}"), "[redacted]");
        assert_eq!(format!("{secret:?}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(secret.clone())), "Some([redacted])");
        assert_eq!(secret.expose_secret(), "hunter2");
    }

    #[test]
    fn deserialises_from_a_plain_string() {
        #[derive(Debug, Deserialize)]
        struct Config {
            token: Secret,
        }
        let config: Config = serde_json::from_str(r#"{"token":"abc"}"#).unwrap();
        assert_eq!(config.token.expose_secret(), "abc");
        assert!(!format!("{config:?}").contains("abc"));
        assert!(serde_json::from_str::<Config>(r#"{"token":5}"#).is_err());
    }
}
