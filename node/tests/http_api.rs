//! The HTTP/JSON API through the axum router (no sockets): every operation of `docs/api.md` with its
//! documented JSON shapes, JSON errors with the documented statuses, idempotency keys, causal tokens,
//! pagination, byte values, the operations endpoints and readiness during shutdown.

mod common;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use base64::Engine as _;
use http_body_util::BodyExt as _;
use meridian_client::proto::CausalToken;
use meridian_crdt::{NodeId, VersionVector};
use meridian_server::api::Node;
use meridian_server::config::Config;
use serde_json::{json, Value as Json};
use tower::ServiceExt as _;

use common::{bounded, memory_node};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A node core over the in-memory engine and its router.
struct Api {
    node: Arc<Node>,
    app: Router,
    _dir: tempfile::TempDir,
}

struct Answer {
    status: StatusCode,
    content_type: Option<String>,
    text: String,
}

impl Answer {
    fn json(&self) -> Json {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {:?} {}", self.status, self.text))
    }

    /// Asserts a JSON error with the documented shape and returns its message.
    fn error(&self, status: StatusCode, code: &str, retryable: bool) -> String {
        assert_eq!(self.status, status, "{}", self.text);
        assert_eq!(self.content_type.as_deref(), Some("application/json"), "{}", self.text);
        let body = self.json();
        assert_eq!(body["error"]["code"], code, "{body}");
        assert_eq!(body["error"]["retryable"], retryable, "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_else(|| panic!("no message: {body}"));
        assert!(!message.is_empty());
        message.to_string()
    }

    fn ok(&self) -> Json {
        assert_eq!(self.status, StatusCode::OK, "{}", self.text);
        self.json()
    }
}

impl Api {
    fn new(configure: impl FnOnce(&mut Config)) -> Api {
        let dir = tempfile::tempdir().unwrap();
        let mut config = common::config(dir.path());
        configure(&mut config);
        config.validate().expect("the test config is valid");
        let node = memory_node(config);
        let app = meridian_server::api::http::router(node.clone());
        Api { node, app, _dir: dir }
    }

    async fn send(&self, method: &str, uri: &str, headers: &[(&str, &str)], body: impl Into<Body>) -> Answer {
        let mut request = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(body.into()).unwrap();
        let response = bounded(&format!("{method} {uri}"), self.app.clone().oneshot(request)).await.unwrap();
        let status = response.status();
        let content_type =
            response.headers().get("content-type").map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string());
        let bytes = bounded("read the body", response.into_body().collect()).await.unwrap().to_bytes();
        Answer { status, content_type, text: String::from_utf8_lossy(&bytes).into_owned() }
    }

    async fn get(&self, uri: &str) -> Answer {
        self.send("GET", uri, &[], Body::empty()).await
    }

    async fn post(&self, uri: &str, body: Json) -> Answer {
        self.send("POST", uri, &[], body.to_string()).await
    }

    async fn delete(&self, uri: &str) -> Answer {
        self.send("DELETE", uri, &[], Body::empty()).await
    }
}

fn token_of(body: &Json) -> CausalToken {
    let text = body["token"].as_str().unwrap_or_else(|| panic!("no token in {body}"));
    assert!(text.starts_with("mt1."), "{text}");
    text.parse().unwrap()
}

/// An object's field names, sorted (whatever serde_json's map order).
fn fields(body: &Json) -> Vec<String> {
    let mut names: Vec<String> =
        body.as_object().unwrap_or_else(|| panic!("not an object: {body}")).keys().cloned().collect();
    names.sort();
    names
}

fn assert_write_ok(answer: &Answer) -> Json {
    let body = answer.ok();
    assert_eq!(body["ok"], true, "{body}");
    token_of(&body);
    body
}

/// A read's `value`, after checking the documented envelope.
async fn value_of(api: &Api, key: &str, crdt_type: &str) -> Json {
    let body = api.get(&format!("/v1/kv/{key}")).await.ok();
    assert_eq!(body["key"], key, "{body}");
    assert_eq!(body["type"], crdt_type, "{body}");
    token_of(&body);
    assert_eq!(fields(&body), ["key", "token", "type", "value"], "{body}");
    body["value"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scalar_ops_have_the_documented_shapes() {
    let api = Api::new(|_| {});
    // counter: incr/decr, `by` defaults to 1; the write reply carries the value.
    let body = assert_write_ok(&api.post("/v1/kv/shop/visits", json!({"op": "incr", "by": 5})).await);
    assert_eq!(fields(&body), ["ok", "token", "value"], "{body}");
    assert_eq!(body["value"], 5);
    assert_eq!(assert_write_ok(&api.post("/v1/kv/shop/visits", json!({"op": "incr"})).await)["value"], 6);
    assert_eq!(assert_write_ok(&api.post("/v1/kv/shop/visits", json!({"op": "decr", "by": 2})).await)["value"], 4);
    assert_eq!(assert_write_ok(&api.post("/v1/kv/shop/visits", json!({"op": "decr"})).await)["value"], 3);
    assert_eq!(value_of(&api, "shop/visits", "counter").await, json!(3));

    // register
    let body = assert_write_ok(&api.post("/v1/kv/shop/motd", json!({"op": "set", "value": "hello"})).await);
    assert_eq!(fields(&body), ["ok", "token"], "{body}"); // no value for non-counters
    assert_eq!(value_of(&api, "shop/motd", "register").await, json!("hello"));

    // mvregister: siblings from two writes carrying the same read context, resolved by a third.
    assert_write_ok(&api.post("/v1/kv/shop/draft", json!({"op": "mvset", "value": "v1"})).await);
    let read = value_of(&api, "shop/draft", "mvregister").await;
    assert_eq!(read["values"], json!(["v1"]));
    let context = read["context"].as_str().unwrap().to_string();
    for value in ["alice", "bob"] {
        let body = json!({"op": "mvset", "value": value, "context": context});
        assert_write_ok(&api.post("/v1/kv/shop/draft", body).await);
    }
    let siblings = value_of(&api, "shop/draft", "mvregister").await;
    let mut values: Vec<String> =
        siblings["values"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    values.sort();
    assert_eq!(values, ["alice", "bob"]);
    let body = json!({"op": "mvset", "value": "merged", "context": siblings["context"]});
    assert_write_ok(&api.post("/v1/kv/shop/draft", body).await);
    assert_eq!(value_of(&api, "shop/draft", "mvregister").await["values"], json!(["merged"]));
    // Without a context: replaces every sibling the node holds.
    let body = json!({"op": "mvset", "value": "late", "context": context});
    assert_write_ok(&api.post("/v1/kv/shop/draft", body).await);
    assert_eq!(value_of(&api, "shop/draft", "mvregister").await["values"].as_array().unwrap().len(), 2);
    assert_write_ok(&api.post("/v1/kv/shop/draft", json!({"op": "mvset", "value": "only"})).await);
    assert_eq!(value_of(&api, "shop/draft", "mvregister").await["values"], json!(["only"]));

    // set: members in byte order.
    assert_write_ok(&api.post("/v1/kv/shop/tags", json!({"op": "sadd", "members": ["red", "green", "blue"]})).await);
    assert_write_ok(&api.post("/v1/kv/shop/tags", json!({"op": "srem", "members": ["green"]})).await);
    assert_eq!(value_of(&api, "shop/tags", "set").await, json!(["blue", "red"]));
    // `type=` accepts the key's own type.
    assert_eq!(api.get("/v1/kv/shop/tags?type=set").await.ok()["value"], json!(["blue", "red"]));
    // Parts of a set: count, membership, pages with their cursor (docs/api.md).
    assert_eq!(api.get("/v1/kv/shop/tags?part=count").await.ok()["count"], json!(2));
    let contains = api.get("/v1/kv/shop/tags?part=contains&member=red").await.ok();
    assert_eq!((contains["member"].clone(), contains["contains"].clone()), (json!("red"), json!(true)));
    assert_eq!(api.get("/v1/kv/shop/tags?part=contains&member=green").await.ok()["contains"], json!(false));
    let first = api.get("/v1/kv/shop/tags?part=page&limit=1").await.ok();
    assert_eq!((first["members"].clone(), first["next"].clone()), (json!(["blue"]), json!("blue")));
    let last = api.get("/v1/kv/shop/tags?part=page&limit=1&after=blue").await.ok();
    assert_eq!((last["members"].clone(), last["next"].clone()), (json!(["red"]), json!(null)));
    api.get("/v1/kv/shop/tags?part=contains").await.error(StatusCode::BAD_REQUEST, "bad_request", false);
    api.get("/v1/kv/shop/tags?part=size").await.error(StatusCode::BAD_REQUEST, "bad_request", false);
    api.get("/v1/kv/shop/visits?part=count").await.error(StatusCode::CONFLICT, "wrong_type", false);
    // A member that is not UTF-8: its cursor comes as base64 and goes back as `after_base64`.
    let binary = json!({"op": "sadd", "members": [{"base64": "/w=="}, "zz"]});
    assert_write_ok(&api.post("/v1/kv/shop/bin", binary).await);
    let first = api.get("/v1/kv/shop/bin?part=page&limit=1").await.ok();
    assert_eq!((first["members"].clone(), first["next"].clone()), (json!(["zz"]), json!("zz")));
    let second = api.get("/v1/kv/shop/bin?part=page&limit=1&after=zz").await.ok();
    assert_eq!((second["members"].clone(), second["next"].clone()), (json!([{"base64": "/w=="}]), json!(null)));
    let from_binary = api.get("/v1/kv/shop/bin?part=page&after_base64=AA==").await.ok();
    assert_eq!(from_binary["members"], json!(["zz", {"base64": "/w=="}]));
    api.get("/v1/kv/shop/bin?part=page&after=a&after_base64=AA==").await.error(
        StatusCode::BAD_REQUEST,
        "bad_request",
        false,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_and_doc_ops_have_the_documented_shapes() {
    let api = Api::new(|_| {});
    let update = |field: &str, update: Json| json!({"op": "map_update", "field": field, "update": update});
    assert_write_ok(&api.post("/v1/kv/shop/user:1", update("name", json!({"op": "set", "value": "Ada"}))).await);
    // The doc's example: a nested counter write answers {"ok", "token"} only.
    let body = api.post("/v1/kv/shop/user:1", update("logins", json!({"op": "incr", "by": 1}))).await.ok();
    assert_eq!(fields(&body), ["ok", "token"], "{body}");
    assert_write_ok(&api.post("/v1/kv/shop/user:1", update("logins", json!({"op": "incr", "by": 2}))).await);
    assert_write_ok(
        &api.post("/v1/kv/shop/user:1", update("roles", json!({"op": "sadd", "members": ["admin"]}))).await,
    );
    let nested = update("city", json!({"op": "set", "value": "London"}));
    assert_write_ok(&api.post("/v1/kv/shop/user:1", update("address", nested)).await);
    assert_write_ok(&api.post("/v1/kv/shop/user:1", update("nick", json!({"op": "mvset", "value": "ada"}))).await);
    assert_write_ok(&api.post("/v1/kv/shop/user:1", update("gone", json!({"op": "set", "value": "x"}))).await);
    assert_write_ok(&api.post("/v1/kv/shop/user:1", json!({"op": "map_remove", "field": "gone"})).await);
    let value = value_of(&api, "shop/user:1", "map").await;
    assert_eq!(value["name"], json!({"type": "register", "value": "Ada"}));
    assert_eq!(value["logins"], json!({"type": "counter", "value": 3}));
    assert_eq!(value["roles"], json!({"type": "set", "value": ["admin"]}));
    assert_eq!(value["address"], json!({"type": "map", "value": {"city": {"type": "register", "value": "London"}}}));
    assert_eq!(value["nick"]["type"], "mvregister");
    assert_eq!(value["nick"]["value"]["values"], json!(["ada"]));
    assert!(value.get("gone").is_none(), "{value}");
    // Parts of a map (`type=map`): count, one field, pages of fields with their cursor.
    let part = |query: &str| format!("/v1/kv/shop/user:1?type=map&{query}");
    assert_eq!(api.get(&part("part=count")).await.ok()["count"], json!(5), "a removed field is not counted");
    let field = api.get(&part("part=field&field=logins")).await.ok();
    assert_eq!(
        (field["field"].clone(), field["type"].clone(), field["value"].clone()),
        (json!("logins"), json!("counter"), json!(3))
    );
    let missing = api.get(&part("part=field&field=gone")).await.ok();
    assert_eq!((missing["type"].clone(), missing["value"].clone()), (json!(null), json!(null)));
    let first = api.get(&part("part=page&limit=2")).await.ok();
    let address =
        json!({"field": "address", "type": "map", "value": {"city": {"type": "register", "value": "London"}}});
    assert_eq!(first["fields"], json!([address]), "two records read: address, and the removed gone");
    assert_eq!(first["next"], json!("gone"), "the page read past the removed field");
    let rest = api.get(&part("part=page&limit=10&after=gone")).await.ok();
    let names: Vec<&str> = rest["fields"].as_array().unwrap().iter().map(|f| f["field"].as_str().unwrap()).collect();
    assert_eq!((names, rest["next"].clone()), (vec!["logins", "name", "nick", "roles"], json!(null)));
    api.get(&part("part=field")).await.error(StatusCode::BAD_REQUEST, "bad_request", false);
    api.get(&part("part=contains")).await.error(StatusCode::BAD_REQUEST, "bad_request", false);
    api.get(&part("part=page&after_base64=AA==")).await.error(StatusCode::BAD_REQUEST, "bad_request", false);
    api.get("/v1/kv/shop/user:1?type=counter&part=count").await.error(StatusCode::BAD_REQUEST, "bad_request", false);
    api.get("/v1/kv/shop/user:1?part=count").await.error(StatusCode::CONFLICT, "wrong_type", false);
    // Nested doc ops are refused.
    let doc = update("page", json!({"op": "doc_put", "json": {"a": 1}}));
    api.post("/v1/kv/shop/user:1", doc).await.error(StatusCode::BAD_REQUEST, "bad_request", false);

    // doc: put root fields, read {"doc", "heads"}, sync with changes_since, apply elsewhere.
    let page = json!({"op": "doc_put", "json": {"title": "Home", "tags": ["a"]}});
    assert_write_ok(&api.post("/v1/kv/shop/page", page).await);
    let first = value_of(&api, "shop/page", "doc").await;
    assert_eq!(first["doc"], json!({"title": "Home", "tags": ["a"]}));
    let first_heads = first["heads"].as_array().unwrap().clone();
    assert_eq!(first_heads.len(), 1);
    assert_write_ok(&api.post("/v1/kv/shop/page", json!({"op": "doc_put", "json": {"n": 2}})).await);
    let now = value_of(&api, "shop/page", "doc").await;
    assert_eq!(now["doc"], json!({"title": "Home", "tags": ["a"], "n": 2}));
    assert_ne!(now["heads"], json!(first_heads));

    let all = api.get("/v1/kv/shop/page?changes_since=").await.ok();
    assert_eq!(all["heads"], now["heads"]);
    token_of(&all);
    let changes = all["changes"].as_array().unwrap().clone();
    assert_eq!(changes.len(), 2);
    let since = format!("/v1/kv/shop/page?changes_since={}", first_heads[0].as_str().unwrap());
    let newer = api.get(&since).await.ok();
    assert_eq!(newer["changes"].as_array().unwrap().len(), 1);
    assert!(changes.contains(&newer["changes"][0]));
    for change in &changes {
        B64.decode(change.as_str().unwrap()).expect("changes are standard base64");
    }
    assert_write_ok(&api.post("/v1/kv/shop/copy", json!({"op": "doc_apply", "changes": changes})).await);
    let copy = value_of(&api, "shop/copy", "doc").await;
    assert_eq!(copy, now);
    // changes_since on a missing key: nothing; on a key of another type: 409; on a bad head: 400.
    let missing = api.get("/v1/kv/shop/nope?changes_since=").await.ok();
    assert_eq!((missing["changes"].clone(), missing["heads"].clone()), (json!([]), json!([])));
    api.get("/v1/kv/shop/user:1?changes_since=").await.error(StatusCode::CONFLICT, "wrong_type", false);
    api.get("/v1/kv/shop/page?changes_since=zz").await.error(StatusCode::BAD_REQUEST, "bad_request", false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_not_found_and_wrong_type() {
    let api = Api::new(|_| {});
    assert_write_ok(&api.post("/v1/kv/shop/visits", json!({"op": "incr", "by": 5})).await);
    // The doc's wrong-type example, verbatim.
    let answer = api.post("/v1/kv/shop/visits", json!({"op": "sadd", "members": ["x"]})).await;
    let message = answer.error(StatusCode::CONFLICT, "wrong_type", false);
    assert_eq!(message, "wrong type: the key holds a counter, the operation is for a set");
    api.get("/v1/kv/shop/visits?type=set").await.error(StatusCode::CONFLICT, "wrong_type", false);
    assert_eq!(value_of(&api, "shop/visits", "counter").await, json!(5));

    // 404 not_found, JSON.
    let answer = api.get("/v1/kv/shop/missing").await;
    let message = answer.error(StatusCode::NOT_FOUND, "not_found", false);
    assert!(message.contains("shop/missing"), "{message}");

    // DELETE: {"ok", "existed", "token"}.
    let body = api.delete("/v1/kv/shop/visits").await.ok();
    assert_eq!(body["ok"], true);
    assert_eq!(body["existed"], true);
    token_of(&body);
    assert_eq!(api.delete("/v1/kv/shop/visits").await.ok()["existed"], false);
    assert_eq!(api.delete("/v1/kv/shop/never").await.ok()["existed"], false);
    api.get("/v1/kv/shop/visits").await.error(StatusCode::NOT_FOUND, "not_found", false);
    // Re-created after the delete, it starts empty.
    assert_eq!(assert_write_ok(&api.post("/v1/kv/shop/visits", json!({"op": "incr"})).await)["value"], 1);

    // Keys may contain '/' and percent-encoded characters.
    assert_write_ok(&api.post("/v1/kv/shop/a/b%20c", json!({"op": "set", "value": "deep"})).await);
    let body = api.get("/v1/kv/shop/a/b%20c").await.ok();
    assert_eq!((body["key"].clone(), body["value"].clone()), (json!("shop/a/b c"), json!("deep")));
    let listed = api.get("/v1/keys/shop?prefix=a/").await.ok();
    assert_eq!(listed["keys"], json!([{"key": "a/b c", "type": "register"}]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_json_400s() {
    let api = Api::new(|_| {});
    let bad = |answer: Answer| answer.error(StatusCode::BAD_REQUEST, "bad_request", false);
    let post = |uri: &'static str, body: &'static str| api.send("POST", uri, &[], body);

    assert!(bad(post("/v1/kv/a/k", "{not json").await).contains("JSON"));
    assert!(bad(post("/v1/kv/a/k", "").await).contains("JSON"));
    assert!(bad(post("/v1/kv/a/k", r#"{"op":"frobnicate"}"#).await).contains("frobnicate"));
    assert!(bad(post("/v1/kv/a/k", r#"{"by":1}"#).await).contains("op"));
    assert!(bad(post("/v1/kv/a/k", r#"[1,2]"#).await).contains("op"));
    bad(post("/v1/kv/a/k", r#"{"op":"incr","by":"five"}"#).await);
    bad(post("/v1/kv/a/k", r#"{"op":"incr","by":1.5}"#).await);
    bad(post("/v1/kv/a/k", r#"{"op":"decr","by":-9223372036854775808}"#).await);
    bad(post("/v1/kv/a/k", r#"{"op":"set"}"#).await);
    bad(post("/v1/kv/a/k", r#"{"op":"set","value":5}"#).await);
    bad(post("/v1/kv/a/k", r#"{"op":"set","value":{"base64":"!!"}}"#).await);
    bad(post("/v1/kv/a/k", r#"{"op":"set","value":{"base64":"AA==","x":1}}"#).await);
    bad(post("/v1/kv/a/k", r#"{"op":"sadd","members":"x"}"#).await);
    bad(post("/v1/kv/a/k", r#"{"op":"mvset","value":"v","context":"%%%"}"#).await);
    bad(post("/v1/kv/a/k", r#"{"op":"mvset","value":"v","context":7}"#).await);
    bad(post("/v1/kv/a/k", r#"{"op":"map_update","field":"f"}"#).await);
    bad(post("/v1/kv/a/k", r#"{"op":"map_remove","field":3}"#).await);
    assert!(bad(post("/v1/kv/a/k", r#"{"op":"doc_put","json":[1]}"#).await).contains("object"));
    bad(post("/v1/kv/a/k", r#"{"op":"doc_apply","changes":"x"}"#).await);
    bad(post("/v1/kv/a/k", r#"{"op":"doc_apply","changes":["not base64!"]}"#).await);
    bad(post("/v1/kv/a/k", r#"{"op":"doc_apply","changes":["AAECAw=="]}"#).await); // base64 of garbage
    let deep = (0..12)
        .fold(json!({"op": "incr"}), |inner, i| json!({"op": "map_update", "field": format!("f{i}"), "update": inner}));
    assert!(bad(api.post("/v1/kv/a/k", deep).await).contains("nest"));
    // None of those wrote anything.
    api.get("/v1/kv/a/k").await.error(StatusCode::NOT_FOUND, "not_found", false);

    // Unknown consistency, bad token header, bad type, bad keys, bad listing arguments.
    assert!(bad(api.get("/v1/kv/a/k?consistency=strong").await).contains("strong"));
    bad(api.send("POST", "/v1/kv/a/k?consistency=STRONG", &[], r#"{"op":"incr"}"#).await);
    bad(api.send("GET", "/v1/kv/a/k", &[("x-meridian-token", "mt1.zz")], Body::empty()).await);
    bad(api.send("GET", "/v1/kv/a/k", &[("x-meridian-token", "garbage")], Body::empty()).await);
    let post_token = api.send("POST", "/v1/kv/a/k", &[("x-meridian-token", "nope")], r#"{"op":"incr"}"#).await;
    assert!(bad(post_token).contains("token"));
    assert!(bad(api.get("/v1/kv/a/k?type=widget").await).contains("widget"));
    assert!(bad(api.get("/v1/kv/a/bad%0Akey").await).contains("control"));
    bad(api.send("POST", "/v1/kv/a/bad%01key", &[], r#"{"op":"incr"}"#).await);
    bad(api.delete("/v1/kv/a/bad%0Akey").await);
    bad(api.get("/v1/keys/a?limit=ten").await);
    bad(api.get("/v1/keys/a?consistency=strong").await);
    bad(api.get("/v1/keys/a%01b").await);
    bad(api.send("POST", "/v1/kv/a/k", &[("idempotency-key", "")], r#"{"op":"incr"}"#).await);
    let long = "k".repeat(129);
    bad(api.send("POST", "/v1/kv/a/k", &[("idempotency-key", long.as_str())], r#"{"op":"incr"}"#).await);
    // Query values of the wrong type, non-UTF-8 paths, unknown endpoints: still JSON errors.
    bad(api.get("/v1/kv/a/k?timeout_ms=soon").await);
    bad(api.get("/v1/kv/a/%FF").await);
    bad(api.get("/v1/nothing/here").await);
    bad(api.get("/").await);
    bad(api.get("/v1/keys/a?timeout_ms=soon").await);
    bad(api.get("/v1/keys/%FF").await);
    // A method the endpoint does not serve: 405, still with a JSON error.
    let put = api.send("PUT", "/v1/kv/a/k", &[], r#"{"op":"incr"}"#).await;
    assert!(put.error(StatusCode::METHOD_NOT_ALLOWED, "bad_request", false).contains("method"));
    api.send("POST", "/v1/status", &[], "{}").await.error(StatusCode::METHOD_NOT_ALLOWED, "bad_request", false);
    api.get("/v1/kv/a/k").await.error(StatusCode::NOT_FOUND, "not_found", false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_and_values_are_413_too_large() {
    let api = Api::new(|c| {
        c.limits.max_frame_bytes = 8 << 10;
        c.limits.max_value_bytes = 2 << 10;
        c.limits.max_key_bytes = 6 << 10;
    });
    // A body over max_frame_bytes is refused before parsing.
    let huge = json!({"op": "set", "value": "x".repeat(9 << 10)});
    let message = api.post("/v1/kv/big/k", huge).await.error(StatusCode::PAYLOAD_TOO_LARGE, "too_large", false);
    assert!(message.contains("limit"), "{message}");
    // A body within it carrying a value over max_value_bytes is refused by the node.
    let value = json!({"op": "set", "value": "x".repeat(3 << 10)});
    let message = api.post("/v1/kv/big/k", value).await.error(StatusCode::PAYLOAD_TOO_LARGE, "too_large", false);
    assert!(message.contains("max_value_bytes"), "{message}");
    let members = json!({"op": "sadd", "members": ["a".repeat(1100), "b".repeat(1100)]});
    api.post("/v1/kv/big/s", members).await.error(StatusCode::PAYLOAD_TOO_LARGE, "too_large", false);
    api.get("/v1/kv/big/k").await.error(StatusCode::NOT_FOUND, "not_found", false);
    api.get("/v1/kv/big/s").await.error(StatusCode::NOT_FOUND, "not_found", false);
    // A key that would outgrow max_key_bytes.
    let mut refused = None;
    for i in 0..10 {
        let answer =
            api.post("/v1/kv/big/grow", json!({"op": "sadd", "members": [format!("{i}{}", "m".repeat(1500))]})).await;
        if answer.status != StatusCode::OK {
            refused = Some((i, answer));
            break;
        }
    }
    let (i, answer) = refused.expect("the set never hit the key size limit");
    answer.error(StatusCode::PAYLOAD_TOO_LARGE, "too_large", false);
    assert!(i >= 1);
    assert_eq!(value_of(&api, "big/grow", "set").await.as_array().unwrap().len(), i);
    // At the limit is fine.
    assert_write_ok(&api.post("/v1/kv/big/k", json!({"op": "set", "value": "x".repeat(2 << 10)})).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_applies_a_retried_write_once() {
    let api = Api::new(|_| {});
    let api = &api;
    let incr = |key: &'static str| async move {
        api.send("POST", "/v1/kv/shop/orders", &[("idempotency-key", key)], r#"{"op":"incr","by":3}"#).await
    };
    let first = incr("order-1234").await.ok();
    let retry = incr("order-1234").await.ok();
    assert_eq!(first, retry, "a retry gets the first reply");
    assert_eq!(first["value"], 3);
    assert_eq!(value_of(api, "shop/orders", "counter").await, json!(3));
    assert_eq!(incr("order-1235").await.ok()["value"], 6);
    // The same idempotency key on another kv key is refused.
    let other = api.send("POST", "/v1/kv/shop/other", &[("idempotency-key", "order-1234")], r#"{"op":"incr"}"#).await;
    other.error(StatusCode::BAD_REQUEST, "bad_request", false);
    // The doc's sadd example.
    let sadd = || {
        api.send(
            "POST",
            "/v1/kv/shop/orderset",
            &[("idempotency-key", "order-9")],
            r#"{"op":"sadd","members":["1234"]}"#,
        )
    };
    let body = sadd().await.ok();
    assert_eq!(fields(&body), ["ok", "token"]);
    assert_eq!(sadd().await.ok(), body);
    // Deletes take the header too.
    let del = || api.send("DELETE", "/v1/kv/shop/orders", &[("idempotency-key", "del-1")], Body::empty());
    let d1 = del().await.ok();
    assert_eq!(d1["existed"], true);
    assert_eq!(del().await.ok(), d1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_round_trip_through_the_header() {
    let api = Api::new(|c| c.limits.causal_wait_ms = 200);
    let id = api.node.id();
    let written = api.post("/v1/kv/s/n", json!({"op": "incr"})).await.ok();
    let token = token_of(&written);
    assert!(token.0.get(id) >= 1);
    let header = [("x-meridian-token", written["token"].as_str().unwrap())];
    let read = api.send("GET", "/v1/kv/s/n?consistency=causal", &header, Body::empty()).await.ok();
    assert_eq!(read["value"], 1);
    assert!(token_of(&read).covers(&token));
    let write2 = api.send("POST", "/v1/kv/s/n?consistency=causal", &header, r#"{"op":"incr"}"#).await.ok();
    let token2 = token_of(&write2);
    assert!(token2.covers(&token) && token2 != token);
    for level in ["eventual", "causal", "local_quorum", "quorum"] {
        let read = api.get(&format!("/v1/kv/s/n?consistency={level}&timeout_ms=1000")).await.ok();
        assert_eq!(read["value"], 2, "{level}");
        let write = api.post(&format!("/v1/kv/s/{level}?consistency={level}"), json!({"op": "incr"})).await.ok();
        assert_eq!(write["value"], 1, "{level}");
    }

    // A token naming another origin, on a node that runs alone (a token from another cluster):
    // causal reads are refused at once (400; waiting cannot help) ...
    let unseen = CausalToken([(NodeId(id.0 ^ 0x5555), 5)].into_iter().collect::<VersionVector>()).to_string();
    let header = [("x-meridian-token", unseen.as_str())];
    let answer = api.send("GET", "/v1/kv/s/n?consistency=causal", &header, Body::empty()).await;
    answer.error(StatusCode::BAD_REQUEST, "bad_request", false);
    // ... eventual ones are served and carry the session's token forward.
    let read = api.send("GET", "/v1/kv/s/n?consistency=eventual", &header, Body::empty()).await.ok();
    assert_eq!(read["value"], 2);
    assert_eq!(token_of(&read).0.get(NodeId(id.0 ^ 0x5555)), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_paginate_through_next() {
    let api = Api::new(|_| {});
    for name in ["u1", "u2", "u3", "u4", "u5"] {
        assert_write_ok(&api.post(&format!("/v1/kv/ls/{name}"), json!({"op": "incr"})).await);
    }
    assert_write_ok(&api.post("/v1/kv/ls/v1", json!({"op": "sadd", "members": ["x"]})).await);
    assert_write_ok(&api.post("/v1/kv/lsx/u0", json!({"op": "incr"})).await);
    assert_eq!(api.delete("/v1/kv/ls/u2").await.ok()["existed"], true);

    let mut seen = Vec::new();
    let mut uri = "/v1/keys/ls?prefix=u&limit=2".to_string();
    for _ in 0..10 {
        let page = api.get(&uri).await.ok();
        token_of(&page);
        let keys = page["keys"].as_array().unwrap();
        assert!(keys.len() <= 2, "{page}");
        seen.extend(keys.iter().cloned());
        match &page["next"] {
            Json::Null => break,
            Json::String(next) => uri = format!("/v1/keys/ls?prefix=u&limit=2&after={next}"),
            other => panic!("next is {other}"),
        }
    }
    let expected: Vec<Json> = ["u1", "u3", "u4", "u5"].iter().map(|k| json!({"key": k, "type": "counter"})).collect();
    assert_eq!(seen, expected);
    let all = api.get("/v1/keys/ls").await.ok();
    assert_eq!(all["next"], Json::Null);
    let names: Vec<&str> = all["keys"].as_array().unwrap().iter().map(|k| k["key"].as_str().unwrap()).collect();
    assert_eq!(names, ["u1", "u3", "u4", "u5", "v1"]);
    assert_eq!(all["keys"][4], json!({"key": "v1", "type": "set"}));
    let after = api.get("/v1/keys/ls?after=u4&timeout_ms=1000").await.ok();
    assert_eq!(after["keys"].as_array().unwrap().len(), 2);
    assert_eq!(api.get("/v1/keys/ls?limit=0").await.ok()["keys"].as_array().unwrap().len(), 1);

    // Deleted keys are skipped: a page may be empty while `next` is set; following it finds the rest.
    for i in 0..12 {
        assert_write_ok(&api.post(&format!("/v1/kv/gone/k{i:02}"), json!({"op": "incr"})).await);
        assert_eq!(api.delete(&format!("/v1/kv/gone/k{i:02}")).await.ok()["existed"], true);
    }
    assert_write_ok(&api.post("/v1/kv/gone/zz", json!({"op": "incr"})).await);
    let first = api.get("/v1/keys/gone?limit=1").await.ok();
    assert_eq!(first["keys"], json!([]), "{first}");
    assert!(first["next"].is_string(), "{first}");
    let mut found = Vec::new();
    let mut next = first["next"].as_str().unwrap().to_string();
    for _ in 0..10 {
        let page = api.get(&format!("/v1/keys/gone?limit=1&after={next}")).await.ok();
        found.extend(page["keys"].as_array().unwrap().iter().map(|k| k["key"].as_str().unwrap().to_string()));
        match page["next"].as_str() {
            Some(cursor) => next = cursor.to_string(),
            None => break,
        }
    }
    assert_eq!(found, ["zz"]);

    let empty = api.get("/v1/keys/empty").await.ok();
    assert_eq!((empty["keys"].clone(), empty["next"].clone()), (json!([]), Json::Null));
    assert_eq!(fields(&empty), ["keys", "next", "token"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_values_round_trip_as_base64() {
    let api = Api::new(|_| {});
    let raw = [0u8, 0xff, 0xfe, b'a'];
    let encoded = B64.encode(raw);
    assert_write_ok(&api.post("/v1/kv/b/reg", json!({"op": "set", "value": {"base64": encoded}})).await);
    assert_eq!(value_of(&api, "b/reg", "register").await, json!({"base64": encoded}));
    // Base64 of UTF-8 text comes back as a plain string.
    let text = B64.encode("héllo");
    assert_write_ok(&api.post("/v1/kv/b/text", json!({"op": "set", "value": {"base64": text}})).await);
    assert_eq!(value_of(&api, "b/text", "register").await, json!("héllo"));

    let members = json!({"op": "sadd", "members": ["plain", {"base64": encoded}, {"base64": B64.encode([0xc3u8])}]});
    assert_write_ok(&api.post("/v1/kv/b/set", members).await);
    let value = value_of(&api, "b/set", "set").await;
    assert_eq!(value, json!([{"base64": encoded}, "plain", {"base64": "ww=="}]));
    assert_write_ok(&api.post("/v1/kv/b/set", json!({"op": "srem", "members": [{"base64": encoded}]})).await);
    assert_eq!(value_of(&api, "b/set", "set").await, json!(["plain", {"base64": "ww=="}]));

    assert_write_ok(&api.post("/v1/kv/b/mv", json!({"op": "mvset", "value": {"base64": encoded}})).await);
    assert_eq!(value_of(&api, "b/mv", "mvregister").await["values"], json!([{"base64": encoded}]));
    let field = json!({"op": "map_update", "field": "bin", "update": {"op": "set", "value": {"base64": encoded}}});
    assert_write_ok(&api.post("/v1/kv/b/map", field).await);
    assert_eq!(value_of(&api, "b/map", "map").await["bin"], json!({"type": "register", "value": {"base64": encoded}}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_endpoints() {
    let api = Api::new(|_| {});
    // Make sure the process-wide recorder exists before counting requests.
    meridian_server::metrics_export::prometheus();

    let live = api.get("/livez").await;
    assert_eq!((live.status, live.text.as_str()), (StatusCode::OK, "ok"));
    assert_eq!(api.get("/readyz").await.status, StatusCode::OK);

    assert_write_ok(&api.post("/v1/kv/ops/n", json!({"op": "incr"})).await);
    api.post("/v1/kv/ops/n", json!({"op": "set", "value": "x"})).await.error(StatusCode::CONFLICT, "wrong_type", false);
    let replay = || api.send("POST", "/v1/kv/ops/n", &[("idempotency-key", "ops-1")], r#"{"op":"incr"}"#);
    replay().await.ok();
    replay().await.ok();

    let metrics = api.get("/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    for needle in [
        "meridian_requests_total{",
        "op=\"write\"",
        "result=\"ok\"",
        "result=\"wrong_type\"",
        "meridian_request_duration_seconds",
        "meridian_keys_estimate",
        "meridian_log_position",
        "meridian_idempotent_replays_total",
    ] {
        assert!(metrics.text.contains(needle), "/metrics lacks {needle}:\n{}", metrics.text);
    }

    let status = api.get("/v1/status").await.ok();
    let mut expected = [
        "census",
        "client_connections",
        "durability",
        "keys_estimate",
        "log_entries",
        "name",
        "node_id",
        "region",
        "storage",
        "uptime_s",
        "version",
        "version_vector",
        "zone",
    ];
    expected.sort();
    assert_eq!(fields(&status), expected, "{status}");
    assert_eq!(status["node_id"], api.node.id().to_string());
    assert_eq!(status["name"], "meridian-1");
    assert_eq!(status["region"], "local");
    assert_eq!(status["zone"], "local-a");
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["log_entries"], 2);
    assert!(status["version_vector"][api.node.id().to_string()].as_u64().unwrap() > 1_700_000_000_000 << 16);
    assert!(status["uptime_s"].is_u64() && status["keys_estimate"].is_u64());
    assert_eq!(status["client_connections"], 0);
    assert!(status["durability"].is_string());

    // Shutting down: not ready, still live, requests refused as retryable 503s.
    api.node.begin_shutdown();
    let ready = api.get("/readyz").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(api.get("/livez").await.status, StatusCode::OK);
    api.get("/v1/kv/ops/n").await.error(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", true);
    api.post("/v1/kv/ops/n", json!({"op": "incr"})).await.error(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", true);
}

/// `POST /v1/pipeline`: one result per operation, in order, each shaped as its single request's
/// body; idempotency keys per operation; a malformed element refuses the whole request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_over_http() {
    let api = Api::new(|_| {});
    let ops = json!({"ops": [
        {"op": "incr", "key": "pipe/n", "by": 2, "idempotency_key": "first"},
        {"op": "set", "key": "pipe/r", "value": "hello"},
        {"op": "get", "key": "pipe/r", "type": "register"},
        {"op": "sadd", "key": "pipe/n", "members": ["x"]},
        {"op": "del", "key": "pipe/r"},
        {"op": "get", "key": "pipe/r"},
        {"op": "incr", "key": "pipe/n"},
    ]});
    let body = api.post("/v1/pipeline", ops.clone()).await.ok();
    assert_eq!(fields(&body), ["results", "token"], "{body}");
    token_of(&body);
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 7, "{body}");
    assert_eq!(results[0], json!({"ok": true, "value": 2}));
    assert_eq!(results[1], json!({"ok": true}));
    assert_eq!(results[2], json!({"key": "pipe/r", "type": "register", "value": "hello"}));
    assert_eq!(results[3]["error"]["code"], "wrong_type", "{body}");
    assert_eq!(results[4], json!({"ok": true, "existed": true}));
    assert_eq!(results[5]["error"]["code"], "not_found", "{body}");
    assert_eq!(results[6], json!({"ok": true, "value": 3}), "one key's operations run in order");

    // The first increment's idempotency key: sent again, it answers as before and adds nothing.
    let again = api.post("/v1/pipeline", json!({"ops": [ops["ops"][0].clone()]})).await.ok();
    assert_eq!(again["results"][0], json!({"ok": true, "value": 2}), "{again}");
    assert_eq!(value_of(&api, "pipe/n", "counter").await, json!(3));

    // Refused whole, naming the element; nothing ran.
    for (ops, says) in [
        (json!({"ops": [{"op": "incr", "key": "pipe/z"}, {"op": "incr"}]}), "operation 1"),
        (json!({"ops": [{"op": "incr", "key": "pipe/z"}, {"op": "bogus", "key": "pipe/z"}]}), "operation 1"),
        (json!({"ops": [{"op": "incr", "key": "pipe/z"}, {"op": "get", "key": "pipe/z", "type": 3}]}), "operation 1"),
        (json!({"ops": [{"op": "incr", "key": "pipe/z", "idempotency_key": ""}]}), "operation 0"),
        (json!({"ops": "incr"}), "\"ops\" array"),
    ] {
        let message = api.post("/v1/pipeline", ops).await.error(StatusCode::BAD_REQUEST, "bad_request", false);
        assert!(message.contains(says), "{message}");
    }
    assert_eq!(api.get("/v1/kv/pipe/z").await.status, StatusCode::NOT_FOUND);
    let max = api.node.config().limits.max_pipeline_ops as usize;
    let long: Vec<Json> = (0..=max).map(|_| json!({"op": "incr", "key": "pipe/z"})).collect();
    api.post("/v1/pipeline", json!({ "ops": long })).await.error(StatusCode::PAYLOAD_TOO_LARGE, "too_large", false);
    assert_eq!(api.send("GET", "/v1/pipeline", &[], Body::empty()).await.status, StatusCode::METHOD_NOT_ALLOWED);
}
