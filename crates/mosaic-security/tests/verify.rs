#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Signature verification against real Gitea captures, GitHub's published vector, and
//! hostile inputs.

use std::path::PathBuf;

use http::{HeaderMap, HeaderName, HeaderValue};
use mosaic_security::{Secret, VerifyError, WebhookVerifier, sign_hex};
use proptest::prelude::*;

const FIXTURE_SECRET: &str = "IsWishesWereHorsesWedAllBeEatingSteak!";

/// (file, X-Gitea-Signature) from the fixtures' README.
const FIXTURES: [(&str, &str); 5] = [
    (
        "issues-event.json",
        "98c44fd0ae42ca4208eac6f81e59b436837740abc8693bf828366b32d33b1cbc",
    ),
    (
        "issue-assign-event.json",
        "7d2adaf2fb3dc3769294c737ff48da003b7c3660b4f917b85c2c25dabd34a13c",
    ),
    (
        "issue-label-event.json",
        "3611415860ed5904c87dd589a7c5fa7e87d2a72b0b2a92ea149ba9691ba8c785",
    ),
    (
        "issue-milestone-event.json",
        "4b782b02035ca264c8e7782b8f2eb9d64e4a61344a1bc3a08fa85d7eed1e77b5",
    ),
    (
        "issue-comment-event.json",
        "690180a8c853460cba88f9b09911a531d449e9f63ed6b1ff0a0def3b972ca744",
    ),
];

fn fixture(name: &str) -> Vec<u8> {
    let dir = std::env::var_os("MOSAIC_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures"));
    std::fs::read(dir.join("gitea").join(name)).unwrap()
}

fn verifier(secrets: &[&str]) -> WebhookVerifier {
    WebhookVerifier::new(secrets.iter().map(|s| Secret::new(*s)).collect()).unwrap()
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

fn form_body(json: &[u8]) -> Vec<u8> {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", std::str::from_utf8(json).unwrap())
        .finish()
        .into_bytes()
}

#[test]
fn every_fixture_verifies_under_every_header_name() {
    let verifier = verifier(&[FIXTURE_SECRET]);
    for (file, signature) in FIXTURES {
        let body = fixture(file);
        assert_eq!(sign_hex(&Secret::new(FIXTURE_SECRET), &body), signature);
        let hub = format!("sha256={signature}");
        for (header, value) in [
            ("X-Gitea-Signature", signature),
            ("X-Forgejo-Signature", signature),
            ("X-Gogs-Signature", signature),
            ("X-Hub-Signature-256", hub.as_str()),
        ] {
            let verified = verifier
                .verify(&headers(&[(header, value)]), &body)
                .unwrap_or_else(|e| panic!("{file} via {header}: {e}"));
            assert_eq!(verified.json.as_ref(), body.as_slice());
            assert_eq!(verified.header, header.to_ascii_lowercase());
        }
    }
}

#[test]
fn full_gitea_header_set_verifies() {
    let verifier = verifier(&[FIXTURE_SECRET]);
    let (file, signature) = FIXTURES[1];
    let hub = format!("sha256={signature}");
    let all = headers(&[
        ("Content-Type", "application/json"),
        ("X-Gitea-Event", "issues"),
        ("X-Gitea-Signature", signature),
        ("X-Gogs-Signature", signature),
        (
            "X-Hub-Signature",
            "sha1=0000000000000000000000000000000000000000",
        ),
        ("X-Hub-Signature-256", &hub),
    ]);
    let verified = verifier.verify(&all, &fixture(file)).unwrap();
    assert_eq!(verified.header, "x-gitea-signature");
}

#[test]
fn github_published_vector() {
    let verifier = verifier(&["It's a Secret to Everybody"]);
    let map = headers(&[(
        "X-Hub-Signature-256",
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
    )]);
    let verified = verifier.verify(&map, b"Hello, World!").unwrap();
    assert_eq!(verified.header, "x-hub-signature-256");
    assert_eq!(verified.json.as_ref(), b"Hello, World!");
}

#[test]
fn form_deliveries_verify_over_the_decoded_payload() {
    let verifier = verifier(&[FIXTURE_SECRET]);
    for (file, signature) in FIXTURES {
        let json = fixture(file);
        let body = form_body(&json);
        for content_type in [
            "application/x-www-form-urlencoded",
            "Application/X-WWW-Form-Urlencoded; charset=utf-8",
        ] {
            let map = headers(&[
                ("Content-Type", content_type),
                ("X-Gitea-Signature", signature),
            ]);
            let verified = verifier.verify(&map, &body).unwrap();
            assert_eq!(verified.json.as_ref(), json.as_slice(), "{file}");
        }
        // The form bytes themselves are not what Gitea signs.
        let as_json = headers(&[
            ("Content-Type", "application/json"),
            ("X-Gitea-Signature", signature),
        ]);
        assert_eq!(verifier.verify(&as_json, &body), Err(VerifyError::Mismatch));
    }
}

#[test]
fn form_without_payload_field_is_bad_form() {
    let verifier = verifier(&[FIXTURE_SECRET]);
    let map = headers(&[
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("X-Gitea-Signature", FIXTURES[0].1),
    ]);
    assert_eq!(
        verifier.verify(&map, b"other=1&x=2"),
        Err(VerifyError::BadForm)
    );
}

#[test]
fn rotation_accepts_any_configured_secret() {
    let (file, signature) = FIXTURES[0];
    let body = fixture(file);
    let map = headers(&[("X-Gitea-Signature", signature)]);
    for secrets in [
        vec!["new-secret", FIXTURE_SECRET],
        vec![FIXTURE_SECRET, "new-secret"],
    ] {
        assert!(verifier(&secrets).verify(&map, &body).is_ok());
    }
    assert_eq!(
        verifier(&["new-secret", "older"]).verify(&map, &body),
        Err(VerifyError::Mismatch)
    );
}

#[test]
fn bad_signatures_are_refused_with_the_right_reason() {
    let verifier = verifier(&[FIXTURE_SECRET]);
    let (file, signature) = FIXTURES[0];
    let body = fixture(file);
    let other_body_signature = FIXTURES[1].1;
    let upper = signature.to_ascii_uppercase();
    let truncated = &signature[..62];
    let non_hex = format!("{}zz", &signature[..62]);
    let hub_upper = format!("SHA256={upper}");
    let hub_without_prefix = signature.to_owned();
    let wrong_secret = sign_hex(&Secret::new("wrong"), &body);

    let check = |pairs: &[(&str, &str)], expect: Result<(), VerifyError>| {
        let got = verifier.verify(&headers(pairs), &body).map(|_| ());
        assert_eq!(got, expect, "headers {pairs:?}");
    };
    let malformed = |header: &'static str, expected: &'static str| {
        Err(VerifyError::MalformedSignature { header, expected })
    };

    check(&[("X-Gitea-Signature", &upper)], Ok(()));
    check(&[("X-Hub-Signature-256", &hub_upper)], Ok(()));
    check(&[], Err(VerifyError::MissingSignature));
    check(
        &[("X-Gitea-Signature", "")],
        Err(VerifyError::MissingSignature),
    );
    check(
        &[("X-Gitea-Signature", ""), ("X-Hub-Signature-256", "")],
        Err(VerifyError::MissingSignature),
    );
    check(
        &[("X-Gitea-Signature", truncated)],
        malformed("x-gitea-signature", "64 hex digits"),
    );
    check(
        &[("X-Gogs-Signature", &non_hex)],
        malformed("x-gogs-signature", "64 hex digits"),
    );
    check(
        &[("X-Hub-Signature-256", &hub_without_prefix)],
        malformed("x-hub-signature-256", "`sha256=` followed by 64 hex digits"),
    );
    check(
        &[("X-Gitea-Signature", other_body_signature)],
        Err(VerifyError::Mismatch),
    );
    check(
        &[("X-Gitea-Signature", &wrong_secret)],
        Err(VerifyError::Mismatch),
    );
    // A malformed header next to a well-formed wrong one reports the mismatch.
    check(
        &[
            ("X-Gitea-Signature", truncated),
            ("X-Gogs-Signature", other_body_signature),
        ],
        Err(VerifyError::Mismatch),
    );
    // Any header that verifies is enough.
    check(
        &[
            ("X-Gitea-Signature", truncated),
            ("X-Gogs-Signature", signature),
        ],
        Ok(()),
    );
}

#[test]
fn errors_never_reveal_the_secret() {
    let verifier = verifier(&[FIXTURE_SECRET]);
    let body = fixture(FIXTURES[0].0);
    for map in [
        headers(&[]),
        headers(&[("X-Gitea-Signature", "abc")]),
        headers(&[("X-Gitea-Signature", FIXTURES[1].1)]),
    ] {
        let error = verifier.verify(&map, &body).unwrap_err();
        assert!(!error.to_string().contains(FIXTURE_SECRET));
    }
    assert!(!format!("{verifier:?}").contains(FIXTURE_SECRET));
}

#[test]
fn configuration_needs_non_empty_secrets() {
    use mosaic_security::VerifierConfigError;
    assert_eq!(
        WebhookVerifier::new(vec![]).unwrap_err(),
        VerifierConfigError::NoSecrets
    );
    assert_eq!(
        WebhookVerifier::new(vec![Secret::new("a"), Secret::new("")]).unwrap_err(),
        VerifierConfigError::EmptySecret { position: 2 }
    );
}

fn header_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9a-fA-F]{0,70}",
        "sha256=[0-9a-fA-F]{60,68}",
        "[ -~]{0,80}",
    ]
}

proptest! {
    #[test]
    fn arbitrary_input_never_panics_and_never_verifies_without_the_mac(
        body in proptest::collection::vec(any::<u8>(), 0..512),
        values in proptest::collection::vec(header_value(), 4),
        form in any::<bool>(),
    ) {
        let verifier = verifier(&[FIXTURE_SECRET, "second"]);
        let mut map = HeaderMap::new();
        if form {
            map.insert("content-type", HeaderValue::from_static("application/x-www-form-urlencoded"));
        }
        for (name, value) in ["x-gitea-signature", "x-forgejo-signature", "x-gogs-signature", "x-hub-signature-256"].iter().zip(&values) {
            if let Ok(value) = HeaderValue::from_str(value) {
                map.insert(*name, value);
            }
        }
        prop_assert!(verifier.verify(&map, &body).is_err());
    }

    #[test]
    fn a_correct_mac_over_arbitrary_bytes_verifies(
        body in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let verifier = verifier(&["rotated", FIXTURE_SECRET]);
        let signature = sign_hex(&Secret::new(FIXTURE_SECRET), &body);
        let map = headers(&[("X-Gogs-Signature", &signature)]);
        let verified = verifier.verify(&map, &body).unwrap();
        prop_assert_eq!(verified.json.as_ref(), body.as_slice());
    }
}

#[test]
fn a_repeated_signature_header_is_refused_even_when_one_value_matches() {
    let verifier = verifier(&[FIXTURE_SECRET]);
    let (file, signature) = FIXTURES[0];
    let body = fixture(file);
    let wrong = sign_hex(&Secret::new("guess"), &body);
    let hub = format!("sha256={signature}");
    let repeated = |header: &'static str| Err(VerifyError::RepeatedSignature { header });

    // A second value, right or wrong and in either order, makes the header ambiguous.
    for pair in [
        [&wrong, signature],
        [signature, &wrong],
        [signature, signature],
    ] {
        let map = headers(&[
            ("X-Gitea-Signature", pair[0]),
            ("X-Gitea-Signature", pair[1]),
        ]);
        assert_eq!(
            verifier.verify(&map, &body).map(|_| ()),
            repeated("x-gitea-signature")
        );
    }
    // Also when another header alone would have verified.
    let map = headers(&[
        ("X-Gitea-Signature", signature),
        ("X-Hub-Signature-256", &hub),
        ("X-Hub-Signature-256", &hub),
    ]);
    assert_eq!(
        verifier.verify(&map, &body).map(|_| ()),
        repeated("x-hub-signature-256")
    );
    let message = VerifyError::RepeatedSignature {
        header: "x-gitea-signature",
    }
    .to_string();
    assert!(message.contains("more than once"), "{message}");

    // One value per name, several names (what Gitea sends) still verifies.
    let map = headers(&[
        ("X-Gitea-Signature", signature),
        ("X-Gogs-Signature", signature),
        ("X-Hub-Signature-256", &hub),
    ]);
    assert!(verifier.verify(&map, &body).is_ok());
}
