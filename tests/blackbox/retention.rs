//! Retention as an operator sees it: what is kept, at /api/v1/retention and in /metrics.

use std::time::Duration;

use crate::helpers::Running;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_kept_shows_in_the_api_and_the_metrics() {
    let app = Running::start_with(&[("MOSAIC_RETENTION__SESSION_LOGS_DAYS", "7")]);
    let mut body = serde_json::Value::Null;
    for _ in 0..50 {
        body = app
            .client
            .get(app.url("/api/v1/retention"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if !body["last_run_at"].is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !body["last_run_at"].is_null(),
        "the first run is at start: {body}"
    );
    assert_eq!(body["keep_delivery_bodies_days"], 30, "{body}");
    assert_eq!(body["keep_session_logs_days"], 7, "{body}");
    assert_eq!(body["delivery_bodies"]["count"], 0, "{body}");
    assert!(body["last_error"].is_null(), "{body}");
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for family in [
        "mosaic_retained_delivery_bodies ",
        "mosaic_retained_delivery_body_bytes ",
        "mosaic_retained_session_log_bytes ",
        "mosaic_removed_delivery_bodies_total ",
    ] {
        assert!(metrics.contains(family), "{family} missing:\n{metrics}");
    }
}
