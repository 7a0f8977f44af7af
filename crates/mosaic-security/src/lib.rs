//! Credentials and webhook authenticity.
//!
//! [`Secret`] holds a credential so that it cannot be printed or serialised by accident.
//! [`WebhookVerifier`] checks a delivery's HMAC-SHA256 signature over the exact raw body
//! before anything else looks at it (docs/DESIGN.md, invariant 2: verified before parsed).
//! [`Redactor`] cleans text from agents before it leaves (invariant 9: text that leaves is redacted).

mod redact;
mod secret;
mod webhook;

pub use redact::{REDACTION, Redactor, clip};

pub use secret::Secret;
pub use webhook::{
    SIGNATURE_HEADERS, VerifiedBody, VerifierConfigError, VerifyError, WebhookVerifier, sign_hex,
};
