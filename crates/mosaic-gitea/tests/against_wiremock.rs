//! Wire-level behaviour against wiremock: headers, status mapping, timeouts, paging headers
//! exactly as a real Gitea (behind a proxy with a different ROOT_URL) would send them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use mosaic_domain::IssueRef;
use mosaic_gitea::{GiteaClient, GiteaConfig, GiteaError, IssueFilter, user_agent};
use mosaic_security::Secret;
use serde_json::json;
use url::Url;
use wiremock::matchers::{header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn client_for(server: &MockServer, sub_path: &str) -> GiteaClient {
    let url = Url::parse(&format!("{}{sub_path}", server.uri())).unwrap();
    let mut config = GiteaConfig::new(url, Some(Secret::new("t0ken")));
    config.request_timeout_secs = 1;
    config.read_timeout_secs = 1;
    config.connect_timeout_secs = 1;
    GiteaClient::new(&config).unwrap()
}

fn issue_json(number: u64) -> serde_json::Value {
    json!({
        "id": number * 100, "number": number, "title": format!("issue {number}"), "body": null,
        "user": {"id": 1, "login": "alice"}, "labels": null, "assignee": null, "assignees": null,
        "state": "open", "created_at": "2024-03-01T09:30:00+01:00",
        "updated_at": "2024-03-01T09:30:00+01:00", "closed_at": null,
        "repository": {"id": 7, "name": "r", "owner": "o", "full_name": "o/r"}
    })
}

fn issue_ref(number: u64) -> IssueRef {
    format!("o/r#{number}").parse().unwrap()
}

#[tokio::test]
async fn sends_token_user_agent_and_honours_a_sub_path() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/gitea/api/v1/repos/o/r/issues/3"))
        .and(header("authorization", "token t0ken"))
        .and(header("user-agent", user_agent().as_str()))
        .and(header("accept", "application/json"))
        .respond_with(ResponseTemplate::new(200).set_body_json(issue_json(3)))
        .expect(1)
        .mount(&server)
        .await;
    let issue = client_for(&server, "/gitea/")
        .get_issue(&issue_ref(3))
        .await
        .unwrap();
    assert_eq!(issue.title, "issue 3");
    assert_eq!(issue.body, "", "null body reads as empty");
    assert!(user_agent().starts_with("mosaic-coordinator/"));
}

#[tokio::test]
async fn every_error_status_has_its_variant() {
    let check = |status: u16, body: serde_json::Value, expect: fn(&GiteaError) -> bool| async move {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .respond_with(ResponseTemplate::new(status).set_body_json(body))
            .mount(&server)
            .await;
        let error = client_for(&server, "")
            .get_issue(&issue_ref(1))
            .await
            .unwrap_err();
        assert!(expect(&error), "{status}: {error:?}");
        assert_eq!(error.status(), Some(status));
        error
    };
    let message = json!({"message": "token is required", "url": "x"});
    let error = check(401, message.clone(), |e| {
        matches!(e, GiteaError::Unauthorized { .. })
    })
    .await;
    assert!(error.to_string().contains("token is required"), "{error}");
    check(403, message.clone(), |e| {
        matches!(e, GiteaError::Forbidden { .. })
    })
    .await;
    check(404, message.clone(), |e| {
        matches!(e, GiteaError::NotFound { .. })
    })
    .await;
    check(409, message.clone(), |e| {
        matches!(e, GiteaError::Unprocessable { status: 409, .. })
    })
    .await;
    let error = check(
        422,
        json!([{"fieldNames": ["Color"], "classification": "", "message": "Color is invalid"}]),
        |e| matches!(e, GiteaError::Unprocessable { status: 422, .. }),
    )
    .await;
    assert!(error.to_string().contains("Color is invalid"), "{error}");
    check(423, message.clone(), |e| {
        matches!(e, GiteaError::UnexpectedStatus { status: 423, .. })
    })
    .await;
    check(500, message.clone(), |e| {
        matches!(e, GiteaError::Server { status: 500, .. }) && e.is_retryable()
    })
    .await;
    check(503, message, |e| {
        matches!(e, GiteaError::Server { status: 503, .. }) && e.is_retryable()
    })
    .await;
}

#[tokio::test]
async fn rate_limits_carry_retry_after() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "7"))
        .mount(&server)
        .await;
    let error = client_for(&server, "")
        .get_issue(&issue_ref(1))
        .await
        .unwrap_err();
    match error {
        GiteaError::RateLimited { retry_after, .. } => {
            assert_eq!(retry_after, Some(Duration::from_secs(7)));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_proxy_error_page_becomes_a_short_message() {
    let server = MockServer::start().await;
    let page = format!("<html>{}</html>", "bad gateway ".repeat(100));
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(502).set_body_string(page))
        .mount(&server)
        .await;
    let error = client_for(&server, "")
        .get_issue(&issue_ref(1))
        .await
        .unwrap_err();
    assert!(error.is_retryable());
    assert!(error.to_string().len() < 400, "{error}");
}

#[tokio::test]
async fn undecodable_bodies_timeouts_and_refused_connections() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v1/repos/o/r/issues/1"))
        .respond_with(ResponseTemplate::new(200).set_body_string("<html>login</html>"))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v1/repos/o/r/issues/2"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(issue_json(2))
                .set_delay(Duration::from_secs(3)),
        )
        .mount(&server)
        .await;
    let client = client_for(&server, "");

    let error = client.get_issue(&issue_ref(1)).await.unwrap_err();
    assert!(matches!(error, GiteaError::Decode { .. }), "{error:?}");
    assert!(!error.is_retryable());

    let error = client.get_issue(&issue_ref(2)).await.unwrap_err();
    assert!(matches!(error, GiteaError::Timeout { .. }), "{error:?}");
    assert!(error.is_retryable());

    // A port nothing listens on any more.
    let closed_uri = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let config = GiteaConfig::new(Url::parse(&closed_uri).unwrap(), None);
    let error = GiteaClient::new(&config)
        .unwrap()
        .get_issue(&issue_ref(1))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            GiteaError::Transport { .. } | GiteaError::Timeout { .. }
        ),
        "{error:?}"
    );
    assert!(error.is_retryable());
}

#[tokio::test]
async fn paging_follows_link_page_numbers_on_our_own_base_url() {
    let server = MockServer::start().await;
    // Gitea builds Link from its ROOT_URL, which here names a host we cannot reach.
    let link = |page: u32| {
        format!(
            "<https://unreachable.invalid/api/v1/repos/o/r/issues?limit=50&page={page}&state=open&type=issues>; rel=\"next\""
        )
    };
    Mock::given(method("GET"))
        .and(path("/api/v1/repos/o/r/issues"))
        .and(query_param("page", "1"))
        .and(query_param("limit", "50"))
        .and(query_param("type", "issues"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!([issue_json(1), issue_json(2)]))
                .insert_header("link", link(2).as_str())
                .insert_header("x-total-count", "5"),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v1/repos/o/r/issues"))
        .and(query_param("page", "2"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!([issue_json(3), issue_json(4)]))
                .insert_header("link", link(3).as_str())
                .insert_header("x-total-count", "5"),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v1/repos/o/r/issues"))
        .and(query_param("page", "3"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!([issue_json(5)]))
                // A wrong `next` on the last page: X-Total-Count says we are done.
                .insert_header("link", link(4).as_str())
                .insert_header("x-total-count", "5"),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(query_param("page", "4"))
        .respond_with(ResponseTemplate::new(500))
        .expect(0)
        .mount(&server)
        .await;

    let issues = client_for(&server, "")
        .list_issues(&"o/r".parse().unwrap(), &IssueFilter::default())
        .await
        .unwrap();
    let numbers: Vec<u64> = issues.iter().map(|i| i.number).collect();
    assert_eq!(numbers, [1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn a_page_without_link_ends_the_listing() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v1/repos/o/r/issues/1/blocks"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([issue_json(2)])))
        .expect(1)
        .mount(&server)
        .await;
    let blocks = client_for(&server, "").blocks(&issue_ref(1)).await.unwrap();
    assert_eq!(blocks.len(), 1);
}

#[tokio::test]
async fn reads_give_up_at_the_read_timeout_not_the_write_timeout() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v1/repos/o/r/issues/2"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(issue_json(2))
                .set_delay(Duration::from_secs(3)),
        )
        .mount(&server)
        .await;
    let url = Url::parse(&server.uri()).unwrap();
    let mut config = GiteaConfig::new(url, Some(Secret::new("t0ken")));
    config.request_timeout_secs = 30;
    config.read_timeout_secs = 1;
    let client = GiteaClient::new(&config).unwrap();
    let error = client.get_issue(&issue_ref(2)).await.unwrap_err();
    assert!(matches!(error, GiteaError::Timeout { .. }), "{error:?}");
}
