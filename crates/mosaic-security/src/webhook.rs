//! HMAC-SHA256 verification of webhook deliveries.

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http::HeaderMap;
use http::header::CONTENT_TYPE;
use sha2::Sha256;

use crate::secret::Secret;

type HmacSha256 = Hmac<Sha256>;

/// Length of an HMAC-SHA256 tag in bytes.
const TAG_LEN: usize = 32;

/// Prefix GitHub-style `X-Hub-Signature-256` values carry before the hex digest.
const HUB_PREFIX: &str = "sha256=";

/// The signature headers accepted, in the order they are consulted.
/// Gitea sends several of them at once with the same value.
pub const SIGNATURE_HEADERS: [&str; 4] = [
    "x-gitea-signature",
    "x-forgejo-signature",
    "x-gogs-signature",
    "x-hub-signature-256",
];

/// A verifier could not be built from the configured secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifierConfigError {
    #[error("no webhook secret configured: at least one is required to verify deliveries")]
    NoSecrets,
    #[error("webhook secret number {position} is empty; remove it or give it a value")]
    EmptySecret { position: usize },
}

/// Why a delivery was refused. None of the messages contain a secret or a body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error(
        "missing signature: none of X-Gitea-Signature, X-Forgejo-Signature, X-Gogs-Signature or X-Hub-Signature-256 has a value"
    )]
    MissingSignature,
    #[error("malformed signature in {header}: expected {expected}")]
    MalformedSignature {
        header: &'static str,
        expected: &'static str,
    },
    #[error("signature does not match the body for any configured secret")]
    Mismatch,
    #[error("form-encoded delivery has no `payload` field")]
    BadForm,
    /// One signature header name came more than once: which value was meant is ambiguous, and
    /// trying each would let a sender add guesses, so the delivery is refused.
    #[error("signature header {header} appears more than once: send exactly one value")]
    RepeatedSignature { header: &'static str },
}

/// A body whose signature held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedBody {
    /// The JSON bytes the signature covers: the raw body, or for a form delivery the decoded
    /// `payload` field.
    pub json: Bytes,
    /// The header whose signature matched (lower case, one of [`SIGNATURE_HEADERS`]).
    pub header: &'static str,
}

/// Verifies deliveries against one or more secrets (several during a rotation).
#[derive(Debug, Clone)]
pub struct WebhookVerifier {
    secrets: Vec<Secret>,
}

impl WebhookVerifier {
    /// Every secret must be non-empty: an empty key would make any sender able to sign.
    pub fn new(secrets: Vec<Secret>) -> Result<Self, VerifierConfigError> {
        if secrets.is_empty() {
            return Err(VerifierConfigError::NoSecrets);
        }
        if let Some(index) = secrets.iter().position(Secret::is_empty) {
            return Err(VerifierConfigError::EmptySecret {
                position: index + 1,
            });
        }
        Ok(Self { secrets })
    }

    /// Checks the delivery's signature and returns the bytes it covers.
    ///
    /// Any non-empty signature header that matches under any configured secret is enough;
    /// an empty header counts as missing (Gitea sends one when its webhook has no secret).
    /// Each header name may carry one value only ([`VerifyError::RepeatedSignature`]).
    pub fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<VerifiedBody, VerifyError> {
        if let Some(&header) = SIGNATURE_HEADERS
            .iter()
            .find(|&&name| headers.get_all(name).iter().nth(1).is_some())
        {
            return Err(VerifyError::RepeatedSignature { header });
        }
        let candidates = signature_candidates(headers);
        if candidates.is_empty() {
            return Err(VerifyError::MissingSignature);
        }
        // Gitea signs the inner JSON of a form delivery, not the form itself.
        let signed: Bytes = if is_form(headers) {
            form_payload(body).ok_or(VerifyError::BadForm)?
        } else {
            Bytes::copy_from_slice(body)
        };

        let mut first_malformed = None;
        let mut any_well_formed = false;
        for (header, value) in candidates {
            match decode_signature(header, value) {
                Ok(tag) => {
                    any_well_formed = true;
                    if self.matches(&signed, &tag) {
                        return Ok(VerifiedBody {
                            json: signed,
                            header,
                        });
                    }
                }
                Err(malformed) => {
                    first_malformed.get_or_insert(malformed);
                }
            }
        }
        // A well-formed signature that did not match is the more useful fact to report.
        Err(match first_malformed {
            Some(malformed) if !any_well_formed => malformed,
            _ => VerifyError::Mismatch,
        })
    }

    fn matches(&self, signed: &[u8], tag: &[u8; TAG_LEN]) -> bool {
        self.secrets
            .iter()
            .any(|secret| mac_for(secret, signed).is_some_and(|mac| mac.verify_slice(tag).is_ok()))
    }
}

/// Lower-case hex HMAC-SHA256 of `body` under `secret`, as Gitea sends it in
/// `X-Gitea-Signature`. Used by tools and tests that send signed deliveries.
pub fn sign_hex(secret: &Secret, body: &[u8]) -> String {
    mac_for(secret, body)
        .map(|mac| hex::encode(mac.finalize().into_bytes()))
        .unwrap_or_default()
}

fn mac_for(secret: &Secret, message: &[u8]) -> Option<HmacSha256> {
    // HMAC accepts keys of any length, so this never fails in practice.
    let mut mac = HmacSha256::new_from_slice(secret.expose_secret().as_bytes()).ok()?;
    mac.update(message);
    Some(mac)
}

/// The non-empty value of each signature header, in [`SIGNATURE_HEADERS`] order (each name
/// holds at most one value: `verify` refuses repeats first).
fn signature_candidates(headers: &HeaderMap) -> Vec<(&'static str, &[u8])> {
    SIGNATURE_HEADERS
        .iter()
        .filter_map(|&name| {
            headers
                .get(name)
                .map(|value| (name, value.as_bytes().trim_ascii()))
        })
        .filter(|(_, value)| !value.is_empty())
        .collect()
}

fn decode_signature(header: &'static str, value: &[u8]) -> Result<[u8; TAG_LEN], VerifyError> {
    let (hex_digits, expected) = if header == "x-hub-signature-256" {
        let prefix = HUB_PREFIX.as_bytes();
        let has_prefix =
            value.len() >= prefix.len() && value[..prefix.len()].eq_ignore_ascii_case(prefix);
        if !has_prefix {
            return Err(VerifyError::MalformedSignature {
                header,
                expected: "`sha256=` followed by 64 hex digits",
            });
        }
        (
            &value[prefix.len()..],
            "`sha256=` followed by 64 hex digits",
        )
    } else {
        (value, "64 hex digits")
    };
    let mut tag = [0_u8; TAG_LEN];
    // hex accepts upper and lower case digits; a wrong length or a non-hex digit is an error.
    hex::decode_to_slice(hex_digits, &mut tag)
        .map_err(|_| VerifyError::MalformedSignature { header, expected })?;
    Ok(tag)
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| {
            media
                .trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// The decoded `payload` field of a form body, as bytes.
fn form_payload(body: &[u8]) -> Option<Bytes> {
    form_urlencoded::parse(body)
        .find(|(key, _)| key == "payload")
        .map(|(_, value)| Bytes::from(value.into_owned().into_bytes()))
}
