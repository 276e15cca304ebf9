//! Honest failures: a node whose storage fails mid-write (an injected fsync error) tells that
//! write it may have been applied (retryable, same idempotency id), takes no more writes, turns
//! `/readyz` to 503 with the reason and says so on `/metrics` — and keeps answering reads.

mod common;

use std::sync::Arc;

use common::{bounded, config, connect, shutdown};
use meridian_client::ErrorCode;
use meridian_server::storage::faulty::FaultyEngine;
use meridian_server::storage::MemoryEngine;
use tower::ServiceExt as _;

async fn get(node: &Arc<meridian_server::api::Node>, uri: &str) -> (u16, String) {
    let request = axum::http::Request::get(uri).body(axum::body::Body::empty()).unwrap();
    let response = meridian_server::api::http::router(node.clone()).oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let body = http_body_util::BodyExt::collect(response.into_body()).await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_fences_writes_and_turns_the_node_unready() {
    let tmp = tempfile::tempdir().unwrap();
    let faulty = Arc::new(FaultyEngine::new(Arc::new(MemoryEngine::new())));
    let running =
        bounded("start", meridian_server::serve::start_with_engine(config(tmp.path()), faulty.clone())).await.unwrap();
    let client = connect(&running).await;
    client.register("app/before").set("kept").await.unwrap();
    assert_eq!(get(&running.node, "/readyz").await.0, 200);
    assert_eq!(client.readiness().await.unwrap(), None);

    faulty.fail_writes(true);
    let failed = client.register("app/during").set("maybe").await.unwrap_err();
    assert_eq!(failed.code(), Some(ErrorCode::ShuttingDown), "{failed}");
    assert!(failed.is_retryable(), "a write that may have been applied is retried with its idempotency id");
    assert!(failed.to_string().contains("may have been applied"), "{failed}");

    // The disk comes back, the node does not trust it: no write reaches it until a restart.
    faulty.fail_writes(false);
    let writes_before = faulty.writes();
    let refused = client.counter("app/hits").incr(1).await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::ShuttingDown), "{refused}");
    assert!(refused.to_string().contains("stopped taking writes"), "{refused}");
    assert_eq!(faulty.writes(), writes_before, "a fenced node writes nothing");

    let (status, body) = get(&running.node, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("storage failed") && body.contains("fsync failed"), "{body}");
    // The native protocol says the same (what `meridian status` shows in its health line).
    let reason = client.readiness().await.unwrap().expect("the node says it is not ready");
    assert!(reason.contains("storage failed"), "{reason}");
    let (_, metrics) = get(&running.node, "/metrics").await;
    assert!(metrics.lines().any(|l| l == "meridian_storage_failed 1"), "{metrics}");
    // Reads still answer.
    assert_eq!(client.register("app/before").get_string().await.unwrap().as_deref(), Some("kept"));
    client.close().await;
    shutdown(running).await;
}
