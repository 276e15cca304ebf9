//! Interoperability with automerge's own JavaScript library (`@automerge/automerge` 3, pinned in
//! `node/tests/interop/package.json`, installed by `scripts/install-deps.sh --interop`): a document
//! written with `meridian doc-put` is read by an automerge 3 app, which finds its strings to be
//! editable text (not immutable scalars), edits them, and hands its changes back through
//! `meridian doc-apply`; Meridian then reads the app's edits. Real `meridian` process, real Node.js.

mod process;

use process::cli_ok as ok;

use std::path::{Path, PathBuf};

/// The JavaScript side, with its automerge installed; a clear failure (never a skip) without it.
fn interop_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
    assert!(
        dir.join("node_modules/@automerge/automerge").is_dir(),
        "@automerge/automerge is not installed in {}: run scripts/install-deps.sh --interop (make test does)",
        dir.display()
    );
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_automerge_js_app_edits_the_text_meridian_wrote() {
    let js = interop_dir();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let node = process::spawn_node(&data).await;
    let (ep, data) = (node.client_addr.as_str(), data.as_path());
    ok(ep, data, &["doc-put", "app/note", r#"{"title": "hello", "tags": ["red"]}"#]);
    let from_meridian = dir.path().join("from-meridian.bin");
    ok(ep, data, &["doc-changes", "app/note", "--out", from_meridian.to_str().unwrap()]);

    let from_js = dir.path().join("from-js.bin");
    let out = std::process::Command::new("node")
        .arg(js.join("edit.mjs"))
        .arg(&from_meridian)
        .arg(&from_js)
        .current_dir(&js)
        .output()
        .expect("run node (scripts/install-deps.sh --interop installs it)");
    assert!(
        out.status.success(),
        "the automerge JS app refused the document: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hello, world");

    ok(ep, data, &["doc-apply", "app/note", from_js.to_str().unwrap()]);
    let read: serde_json::Value = serde_json::from_str(&ok(ep, data, &["get", "app/note"])).unwrap();
    assert_eq!(read["value"]["doc"], serde_json::json!({"title": "hello, world", "tags": ["red", "blue"]}), "{read}");
}
