//! Credentials and webhook authenticity.
//!
//! [`Secret`] holds a credential so that it cannot be printed or serialised by accident.
//! [`WebhookVerifier`] checks a delivery's HMAC-SHA256 signature over the exact raw body
//! before anything else looks at it (DESIGN.md, invariant 2: verified before parsed).

mod secret;
mod webhook;

pub use secret::Secret;
pub use webhook::{
    SIGNATURE_HEADERS, VerifiedBody, VerifierConfigError, VerifyError, WebhookVerifier, sign_hex,
};
