//! Settings of the HTTP server (the `[server]` section; `HOST` and `PORT` in the environment).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A TCP port that a server can listen on: 1..=65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Port(u16);

/// A port value that is not a number from 1 to 65535.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a TCP port: expected a whole number from 1 to 65535")]
pub struct PortError(pub String);

impl Port {
    pub const DEFAULT: Self = Self(8000);

    pub fn new(port: u16) -> Result<Self, PortError> {
        if port == 0 {
            Err(PortError(port.to_string()))
        } else {
            Ok(Self(port))
        }
    }

    pub fn get(self) -> u16 {
        self.0
    }
}

impl FromStr for Port {
    type Err = PortError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.trim()
            .parse::<u16>()
            .map_err(|_| PortError(text.to_owned()))
            .and_then(Self::new)
            .map_err(|_| PortError(text.to_owned()))
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for Port {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u16(self.0)
    }
}

impl<'de> Deserialize<'de> for Port {
    /// Accepts a number or a string (environment variables arrive as strings), and says what a
    /// port must be instead of serde's "expected u16".
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(i64),
            Text(String),
            Float(f64),
        }
        let text = match Raw::deserialize(deserializer)
            .map_err(|_| serde::de::Error::custom(PortError("(not a number)".to_owned())))?
        {
            Raw::Number(n) => n.to_string(),
            Raw::Text(t) => t,
            Raw::Float(f) => f.to_string(),
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The `[server]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address to listen on (`HOST`).
    pub host: IpAddr,
    /// Port to listen on (`PORT`).
    pub port: Port,
    /// Seconds in-flight requests get to finish after SIGTERM/SIGINT.
    pub shutdown_grace_secs: u64,
    /// Seconds one request may take before it is answered 408.
    pub request_timeout_secs: u64,
    /// Seconds a client has to send a request's head (from connecting, or from the first byte
    /// of a later request); a slower connection is closed.
    pub header_read_timeout_secs: u64,
    /// Seconds a connection may stay open with no request in flight.
    pub idle_timeout_secs: u64,
    /// Connections open at once. At the limit the connection idle the longest is closed to
    /// make room; keep it below the process's file descriptor limit (`ulimit -n`).
    pub max_connections: usize,
}

impl HttpConfig {
    /// Every timeout and the connection limit must be at least 1.
    pub fn validate(&self) -> Result<(), String> {
        for (key, value) in [
            ("server.shutdown_grace_secs", self.shutdown_grace_secs),
            ("server.request_timeout_secs", self.request_timeout_secs),
            (
                "server.header_read_timeout_secs",
                self.header_read_timeout_secs,
            ),
            ("server.idle_timeout_secs", self.idle_timeout_secs),
        ] {
            // A zero grace period is a valid choice (stop at once); a zero timeout is not.
            if value == 0 && key != "server.shutdown_grace_secs" {
                return Err(format!("`{key}`: must be at least 1 second"));
            }
        }
        if self.max_connections == 0 {
            return Err("`server.max_connections`: must be at least 1".to_owned());
        }
        Ok(())
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            host: IpAddr::from([0, 0, 0, 0]),
            port: Port::DEFAULT,
            shutdown_grace_secs: 10,
            request_timeout_secs: 30,
            header_read_timeout_secs: 10,
            idle_timeout_secs: 60,
            // Well below the usual 1024 descriptors, leaving room for the store and logs.
            max_connections: 512,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_checked() {
        let check = |input: &str, expect: Option<u16>| {
            assert_eq!(
                input.parse::<Port>().ok().map(Port::get),
                expect,
                "{input:?}"
            );
        };
        check("8000", Some(8000));
        check(" 1 ", Some(1));
        check("65535", Some(65535));
        check("0", None);
        check("65536", None);
        check("70000", None);
        check("abc", None);
        check("-1", None);
        check("", None);
    }

    #[test]
    fn connection_limits_must_be_positive() {
        assert!(HttpConfig::default().validate().is_ok());
        for (config, key) in [
            (
                HttpConfig {
                    header_read_timeout_secs: 0,
                    ..HttpConfig::default()
                },
                "server.header_read_timeout_secs",
            ),
            (
                HttpConfig {
                    idle_timeout_secs: 0,
                    ..HttpConfig::default()
                },
                "server.idle_timeout_secs",
            ),
            (
                HttpConfig {
                    max_connections: 0,
                    ..HttpConfig::default()
                },
                "server.max_connections",
            ),
        ] {
            let err = config.validate().unwrap_err();
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn ports_deserialize_from_numbers_and_strings() {
        let from = |json: &str| serde_json::from_str::<Port>(json).map(Port::get);
        assert_eq!(from("8080").unwrap(), 8080);
        assert_eq!(from("\"8080\"").unwrap(), 8080);
        let err = from("70000").unwrap_err().to_string();
        assert!(err.contains("from 1 to 65535"), "{err}");
        assert!(from("\"abc\"").is_err());
    }
}

/// The `[webhook]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// Every secret a delivery may be signed with (several while rotating). `GITEA_WEBHOOK_SECRET`
    /// adds one.
    pub secrets: Vec<mosaic_security::Secret>,
    /// Largest body accepted, in bytes; reading stops there.
    pub max_body_bytes: usize,
    /// The address Gitea delivers to (e.g. `https://mosaic.example.com/webhook/gitea`), used by
    /// `gitea install-webhook` and `gitea check` when no `--url` is given.
    pub public_url: Option<String>,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            secrets: Vec::new(),
            max_body_bytes: 1024 * 1024,
            public_url: None,
        }
    }
}

/// The `[api]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// `MOSAIC_API_TOKEN`: bearer token for `/api/*`; without it only loopback clients are served.
    pub token: Option<mosaic_security::Secret>,
}
