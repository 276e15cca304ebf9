//! The README's five-minute tour, run as written against a real `meridian` process: every CLI
//! command of the tour, checking what it prints.

mod process;

use process::{cli as meridian, cli_ok as ok};

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_tour_works_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A census pass every 200 ms (default: a minute), so `status` shows the delete below.
    let census = [("MERIDIAN_STORAGE__CENSUS_INTERVAL_MS".to_string(), "200".to_string())];
    let node = process::spawn_node_with(&data, &census).await;
    let (ep, data) = (node.client_addr.as_str(), data.as_path());
    let status = ok(ep, data, &["status"]);
    assert!(status.contains("durability  fsync"), "{status}");
    assert!(status.contains("storage     ") && status.contains("\nelements "), "{status}");
    assert!(status.starts_with("OK: ") && status.contains("runs alone"), "the health line comes first: {status}");
    let status = json(&ok(ep, data, &["status", "--json", "--check"]));
    assert_eq!(status["health"]["state"], "ok", "{status}");
    assert_eq!(status["node"]["durability"], "fsync", "{status}");
    assert!(status["cluster"].is_null(), "{status}");
    // Storage per space, as on disk (the node runs on RocksDB): every space, the WAL, the directory.
    let spaces: Vec<&str> =
        status["storage"]["spaces"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(spaces, ["data", "log", "meta", "idempotency", "hints", "elements", "partition_index"], "{status}");
    assert_eq!(status["storage"]["format_version"], 3, "{status}");
    assert!(status["storage"]["dir_bytes"].as_u64().unwrap() > 0, "{status}");

    assert_eq!(ok(ep, data, &["incr", "shop/visits"]).trim(), "1");
    assert_eq!(ok(ep, data, &["incr", "shop/visits", "41"]).trim(), "42");
    assert_eq!(ok(ep, data, &["decr", "shop/visits", "2"]).trim(), "40");
    ok(ep, data, &["put", "shop/motd", "hello, world"]);
    let motd = json(&ok(ep, data, &["get", "shop/motd"]));
    assert_eq!(motd, serde_json::json!({"type": "register", "value": "hello, world"}));

    ok(ep, data, &["sadd", "shop/tags", "red", "green", "blue"]);
    ok(ep, data, &["srem", "shop/tags", "green"]);
    assert_eq!(ok(ep, data, &["smembers", "shop/tags"]), "blue\nred\n");
    assert_eq!(ok(ep, data, &["sismember", "shop/tags", "red"]).trim(), "true");
    assert_eq!(ok(ep, data, &["scard", "shop/tags"]).trim(), "2");
    assert!(!meridian(ep, data, &["sismember", "shop/tags", "green"]).status.success());

    ok(ep, data, &["hset", "shop/user:1", "name", "Ada"]);
    ok(ep, data, &["hincr", "shop/user:1", "logins", "3"]);
    let user = json(&ok(ep, data, &["get", "shop/user:1"]));
    assert_eq!(user["value"]["name"], serde_json::json!({"type": "register", "value": "Ada"}));
    assert_eq!(user["value"]["logins"], serde_json::json!({"type": "counter", "value": 3}));
    assert_eq!(
        json(&ok(ep, data, &["hget", "shop/user:1", "logins"])),
        serde_json::json!({"type": "counter", "value": 3})
    );
    assert_eq!(ok(ep, data, &["hlen", "shop/user:1"]).trim(), "2");
    assert_eq!(ok(ep, data, &["hgetall", "shop/user:1"]), "logins\t3\nname\t\"Ada\"\n");
    ok(ep, data, &["hdel", "shop/user:1", "logins"]);
    assert!(json(&ok(ep, data, &["get", "shop/user:1"]))["value"].get("logins").is_none());
    assert!(!meridian(ep, data, &["hget", "shop/user:1", "logins"]).status.success());
    assert_eq!(ok(ep, data, &["hlen", "shop/user:1"]).trim(), "1");

    ok(ep, data, &["mvput", "shop/draft", "v1"]);
    let draft = json(&ok(ep, data, &["get", "shop/draft"]));
    assert_eq!(draft["value"]["values"], serde_json::json!(["v1"]));
    let context = draft["value"]["context"].as_str().unwrap().to_string();
    ok(ep, data, &["mvput", "shop/draft", "v2", "--context", &context]);
    assert_eq!(json(&ok(ep, data, &["get", "shop/draft"]))["value"]["values"], serde_json::json!(["v2"]));

    ok(ep, data, &["doc-put", "shop/page", r#"{"title": "Home", "blocks": ["intro"]}"#]);
    let page = json(&ok(ep, data, &["get", "shop/page"]));
    assert_eq!(page["value"]["doc"], serde_json::json!({"title": "Home", "blocks": ["intro"]}));
    let changes = dir.path().join("page.changes");
    ok(ep, data, &["doc-changes", "shop/page", "--out", changes.to_str().unwrap()]);
    assert_eq!(ok(ep, data, &["doc-apply", "shop/copy", changes.to_str().unwrap()]).trim(), "applied 1 changes");
    assert_eq!(json(&ok(ep, data, &["get", "shop/copy"]))["value"]["doc"], page["value"]["doc"]);

    let wrong = meridian(ep, data, &["put", "shop/visits", "oops"]);
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("wrong type"), "{wrong:?}");
    assert_eq!(json(&ok(ep, data, &["get", "shop/visits"]))["value"], 40, "the wrong-type write changed nothing");

    let keys = ok(ep, data, &["keys", "shop"]);
    for expected in
        ["copy\tdoc", "draft\tmvregister", "motd\tregister", "page\tdoc", "tags\tset", "user:1\tmap", "visits\tcounter"]
    {
        assert!(keys.contains(expected), "{expected:?} missing from {keys}");
    }
    assert_eq!(ok(ep, data, &["del", "shop/motd"]).trim(), "deleted");
    assert!(!meridian(ep, data, &["get", "shop/motd"]).status.success(), "a deleted key is not found");

    let out = meridian(ep, data, &["--consistency", "causal", "--show-token", "get", "shop/visits"]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let token = stderr.lines().find_map(|l| l.strip_prefix("token: ")).expect("token printed").to_string();
    let resumed = meridian(ep, data, &["--token", &token, "--consistency", "causal", "get", "shop/visits"]);
    assert!(resumed.status.success());
    assert!(!meridian(ep, data, &["--consistency", "strong", "get", "shop/visits"]).status.success());

    // `status` shows what the data census counted: the deleted key is a tombstone pending.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let census = loop {
        let status = json(&ok(ep, data, &["status", "--json"]));
        if status["census"]["deleted_keys"].as_u64().is_some_and(|n| n >= 1) {
            break status["census"].clone();
        }
        assert!(std::time::Instant::now() < deadline, "no census counted the delete in 20 s: {status}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(census["deleted_keys"], 1, "{census}");
    assert!(census["live_keys"].as_u64().unwrap() >= 6, "{census}");
    assert_eq!(census["unreadable"], 0, "{census}");
    assert_eq!(census["removed_fields"], 1, "the hdel above: {census}");
    let status = ok(ep, data, &["status"]);
    assert!(status.contains("tombstones pending: 1 deleted keys"), "{status}");
}
