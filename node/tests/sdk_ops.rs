//! Every SDK operation of every type against a real in-process node (RocksDB in a temp dir) over QUIC:
//! values, wrong-type refusals, per-request consistency, causal sessions, idempotent retries, deletes,
//! key listing and persistence across a restart.

mod common;

use std::collections::BTreeMap;

use common::{bounded, config, connect, shutdown, start_rocks};
use meridian_client::proto::{CausalToken, IdempotencyId, Key, Operation, ReplyBody, RequestV1};
use meridian_client::{Consistency, CrdtType, Error, ErrorCode, Mutation, Value};
use meridian_crdt::{NodeId, VersionVector};
use serde_json::json;

fn server_code(result: Result<impl std::fmt::Debug, Error>) -> ErrorCode {
    match result {
        Err(Error::Server { code, .. }) => code,
        other => panic!("expected a node error, got {other:?}"),
    }
}

fn bytes(items: &[&str]) -> Vec<Vec<u8>> {
    items.iter().map(|s| s.as_bytes().to_vec()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_register_and_set_operations() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_rocks(config(dir.path())).await;
    let client = connect(&running).await;
    bounded("scalar ops", async {
        // Counter: a missing counter reads 0; incr/decr return the value after the write.
        let visits = client.counter("shop/visits");
        assert_eq!(visits.get().await.unwrap(), 0);
        assert_eq!(visits.incr(1).await.unwrap(), 1);
        assert_eq!(visits.incr(41).await.unwrap(), 42);
        assert_eq!(visits.decr(50).await.unwrap(), -8);
        assert_eq!(visits.incr(-2).await.unwrap(), -10);
        assert_eq!(visits.get().await.unwrap(), -10);
        assert!(matches!(visits.decr(i64::MIN).await, Err(Error::InvalidArgument(_))));
        assert_eq!(visits.get().await.unwrap(), -10);

        // Register: last writer wins, binary values survive.
        let motd = client.register("shop/motd");
        assert_eq!(motd.get().await.unwrap(), None);
        motd.set("hello").await.unwrap();
        assert_eq!(motd.get_string().await.unwrap().as_deref(), Some("hello"));
        motd.set("hello, world").await.unwrap();
        assert_eq!(motd.get().await.unwrap(), Some(b"hello, world".to_vec()));
        let blob = client.register("shop/blob");
        blob.set(vec![0u8, 0xff, 0xfe, 7]).await.unwrap();
        assert_eq!(blob.get().await.unwrap(), Some(vec![0u8, 0xff, 0xfe, 7]));
        assert!(matches!(blob.get_string().await, Err(Error::InvalidArgument(_))));
        blob.set(Vec::<u8>::new()).await.unwrap();
        assert_eq!(blob.get().await.unwrap(), Some(Vec::new()));

        // Set: add/remove/members (byte order)/contains.
        let tags = client.set("shop/tags");
        assert!(tags.members().await.unwrap().is_empty());
        assert!(!tags.contains("red").await.unwrap());
        tags.add(["red", "green", "blue"]).await.unwrap();
        tags.remove(["green"]).await.unwrap();
        assert_eq!(tags.members().await.unwrap(), bytes(&["blue", "red"]));
        assert!(tags.contains("red").await.unwrap());
        assert!(!tags.contains("green").await.unwrap());
        tags.remove(["absent"]).await.unwrap(); // removing a non-member is a no-op
        tags.add(["green", "red"]).await.unwrap(); // re-adding is fine, duplicates collapse
        assert_eq!(tags.members().await.unwrap(), bytes(&["blue", "green", "red"]));
        tags.add(vec![vec![0u8, 200]]).await.unwrap();
        assert!(tags.contains([0u8, 200]).await.unwrap());

        // The untyped read sees the same values with their types.
        assert_eq!(client.get("shop/visits").await.unwrap(), Some(Value::Counter(-10)));
        assert_eq!(client.get("shop/motd").await.unwrap(), Some(Value::Register(Some(b"hello, world".to_vec()))));
        assert_eq!(client.get("shop/nothing").await.unwrap(), None);
    })
    .await;
    client.close().await;
    shutdown(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mvregister_keeps_concurrent_siblings_until_resolved() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_rocks(config(dir.path())).await;
    let client = connect(&running).await;
    bounded("mvregister", async {
        let draft = client.mvregister("docs/draft");
        let empty = draft.get().await.unwrap();
        assert!(empty.values.is_empty() && !empty.is_conflict());

        draft.set("v1").await.unwrap();
        let read = draft.get().await.unwrap();
        assert_eq!(read.values, bytes(&["v1"]));
        assert!(!read.is_conflict());

        // Two writers that both read `read` write concurrently: both values survive as siblings.
        draft.set_resolving("alice", &read.context).await.unwrap();
        draft.set_resolving("bob", &read.context).await.unwrap();
        let siblings = draft.get().await.unwrap();
        assert!(siblings.is_conflict(), "{siblings:?}");
        let mut values = siblings.values.clone();
        values.sort();
        assert_eq!(values, bytes(&["alice", "bob"]));

        // A write carrying the fresh context replaces both.
        draft.set_resolving("merged", &siblings.context).await.unwrap();
        let resolved = draft.get().await.unwrap();
        assert_eq!(resolved.values, bytes(&["merged"]));

        // A plain set replaces whatever the node holds, siblings included.
        draft.set_resolving("late", &siblings.context).await.unwrap();
        assert_eq!(draft.get().await.unwrap().values.len(), 2);
        draft.set("final").await.unwrap();
        assert_eq!(draft.get().await.unwrap().values, bytes(&["final"]));
    })
    .await;
    client.close().await;
    shutdown(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_fields_nest_and_remove() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_rocks(config(dir.path())).await;
    let client = connect(&running).await;
    bounded("map", async {
        let user = client.map("users/ada");
        assert!(user.get().await.unwrap().is_empty());
        user.set_field("name", "Ada").await.unwrap();
        user.set_field("nickname", "countess").await.unwrap();
        user.incr_field("logins", 2).await.unwrap();
        user.incr_field("logins", 1).await.unwrap();
        user.update("roles", Mutation::SetAdd { members: bytes(&["admin", "dev"]) }).await.unwrap();
        user.update("roles", Mutation::SetRemove { members: bytes(&["dev"]) }).await.unwrap();
        let city = Mutation::MapUpdate {
            field: "city".into(),
            mutation: Box::new(Mutation::RegisterSet { value: b"London".to_vec() }),
        };
        user.update("address", city).await.unwrap();
        user.remove("nickname").await.unwrap();
        user.remove("never-there").await.unwrap();

        let fields = user.get().await.unwrap();
        let expected = BTreeMap::from([
            ("name".to_string(), Value::Register(Some(b"Ada".to_vec()))),
            ("logins".to_string(), Value::Counter(3)),
            ("roles".to_string(), Value::Set(bytes(&["admin"]))),
            (
                "address".to_string(),
                Value::Map(BTreeMap::from([("city".to_string(), Value::Register(Some(b"London".to_vec())))])),
            ),
        ]);
        assert_eq!(fields, expected);

        // A field keeps its type: a counter op on the register field is refused, nothing changes.
        let code = server_code(user.incr_field("name", 1).await);
        assert_eq!(code, ErrorCode::WrongType);
        // A removed field comes back empty, and keeps the type its first write fixed.
        assert_eq!(server_code(user.incr_field("nickname", 5).await), ErrorCode::WrongType);
        user.set_field("nickname", "ada").await.unwrap();
        assert_eq!(user.get().await.unwrap().get("nickname"), Some(&Value::Register(Some(b"ada".to_vec()))));
        user.remove("nickname").await.unwrap();

        // A map field cannot hold a doc: refused locally by the SDK ...
        let doc = Mutation::DocPut { json: "{}".into() };
        assert!(matches!(user.update("page", doc.clone()).await, Err(Error::InvalidArgument(_))));
        // ... and by the node when the SDK is bypassed.
        let raw = RequestV1 {
            consistency: None,
            causal_token: None,
            timeout_ms: 0,
            op: Operation::Write {
                key: Key::new("users", "ada").unwrap(),
                mutation: Mutation::MapUpdate { field: "page".into(), mutation: Box::new(doc) },
                idempotency_id: None,
            },
        };
        assert_eq!(server_code(client.raw(raw).await), ErrorCode::BadRequest);
        assert!(!user.get().await.unwrap().contains_key("page"));
    })
    .await;
    client.close().await;
    shutdown(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doc_json_heads_and_change_sync() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_rocks(config(dir.path())).await;
    let client = connect(&running).await;
    bounded("doc", async {
        let page = client.doc("site/home");
        assert_eq!(page.get_json().await.unwrap(), serde_json::Value::Null);
        assert!(page.heads().await.unwrap().is_empty());
        assert_eq!(page.changes_since(&[]).await.unwrap(), (Vec::new(), Vec::new()));

        page.put_json(&json!({"title": "Home", "tags": ["a", "b"]})).await.unwrap();
        let first_heads = page.heads().await.unwrap();
        assert_eq!(first_heads.len(), 1);
        page.put_json(&json!({"n": 3, "title": "Start"})).await.unwrap();
        let heads = page.heads().await.unwrap();
        assert_eq!(heads.len(), 1);
        assert_ne!(heads, first_heads);
        assert_eq!(page.get_json().await.unwrap(), json!({"title": "Start", "tags": ["a", "b"], "n": 3}));

        // Only the newer change is missing for a peer holding the first heads.
        let (newer, now) = page.changes_since(&first_heads).await.unwrap();
        assert_eq!(newer.len(), 1);
        assert_eq!(now, heads);
        let (all, _) = page.changes_since(&[]).await.unwrap();
        assert_eq!(all.len(), 2);
        assert!(all.contains(&newer[0]));
        assert!(page.changes_since(&heads).await.unwrap().0.is_empty());

        // The changes reproduce the document on another key.
        let copy = client.doc("site/copy");
        copy.apply_changes(all.clone()).await.unwrap();
        assert_eq!(copy.get_json().await.unwrap(), page.get_json().await.unwrap());
        assert_eq!(copy.heads().await.unwrap(), heads);
        // Applying them again (duplicates) changes nothing.
        copy.apply_changes(all.clone()).await.unwrap();
        assert_eq!(copy.heads().await.unwrap(), heads);

        // Syncing in two steps: the first change, then what the copy lacks.
        let partial = client.doc("site/partial");
        let (first, _) = page.changes_since(&[]).await.unwrap();
        let oldest: Vec<Vec<u8>> = first.into_iter().filter(|c| *c != newer[0]).collect();
        partial.apply_changes(oldest).await.unwrap();
        assert_eq!(partial.get_json().await.unwrap(), json!({"title": "Home", "tags": ["a", "b"]}));
        assert_eq!(partial.heads().await.unwrap(), first_heads);
        partial.apply_changes(newer).await.unwrap();
        assert_eq!(partial.get_json().await.unwrap(), page.get_json().await.unwrap());

        // A head that is not a change hash is refused; a non-object put is refused locally.
        let bad = page.changes_since(&["not-a-hash".to_string()]).await;
        assert_eq!(server_code(bad), ErrorCode::BadRequest);
        assert!(matches!(page.put_json(&json!([1, 2])).await, Err(Error::InvalidArgument(_))));
    })
    .await;
    client.close().await;
    shutdown(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_and_recreate() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_rocks(config(dir.path())).await;
    let client = connect(&running).await;
    bounded("delete", async {
        client.counter("app/hits").incr(3).await.unwrap();
        assert!(client.delete("app/hits").await.unwrap());
        assert!(!client.delete("app/hits").await.unwrap());
        assert_eq!(client.get("app/hits").await.unwrap(), None);
        assert_eq!(client.counter("app/hits").get().await.unwrap(), 0);
        assert!(!client.delete("app/never").await.unwrap());

        // Re-created after the delete, a key starts empty.
        let set = client.set("app/tags");
        set.add(["a", "b"]).await.unwrap();
        assert!(client.delete("app/tags").await.unwrap());
        assert!(set.members().await.unwrap().is_empty());
        set.add(["c"]).await.unwrap();
        assert_eq!(set.members().await.unwrap(), bytes(&["c"]));
        assert_eq!(client.counter("app/hits").incr(1).await.unwrap(), 1);
        // A key's type is fixed by its first write, even across a delete.
        assert!(client.delete("app/hits").await.unwrap());
        assert_eq!(server_code(client.set("app/hits").add(["x"]).await), ErrorCode::WrongType);
        assert_eq!(client.get("app/hits").await.unwrap(), None);

        // Every type can be deleted and re-created empty.
        let reg = client.register("app/reg");
        reg.set("x").await.unwrap();
        assert!(client.delete("app/reg").await.unwrap());
        assert_eq!(reg.get().await.unwrap(), None);
        let mv = client.mvregister("app/mv");
        mv.set("x").await.unwrap();
        assert!(client.delete("app/mv").await.unwrap());
        assert!(mv.get().await.unwrap().values.is_empty());
        mv.set("y").await.unwrap();
        assert_eq!(mv.get().await.unwrap().values, bytes(&["y"]));
        let map = client.map("app/map");
        map.set_field("a", "1").await.unwrap();
        assert!(client.delete("app/map").await.unwrap());
        assert!(map.get().await.unwrap().is_empty());
        map.set_field("b", "2").await.unwrap();
        assert_eq!(map.get().await.unwrap().keys().collect::<Vec<_>>(), ["b"]);
        let doc = client.doc("app/doc");
        doc.put_json(&json!({"a": 1})).await.unwrap();
        assert!(client.delete("app/doc").await.unwrap());
        assert_eq!(doc.get_json().await.unwrap(), serde_json::Value::Null);
        doc.put_json(&json!({"b": 2})).await.unwrap();
        assert_eq!(doc.get_json().await.unwrap(), json!({"b": 2}));
    })
    .await;
    client.close().await;
    shutdown(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_type_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_rocks(config(dir.path())).await;
    let client = connect(&running).await;
    bounded("wrong type", async {
        let tags = client.set("shop/tags");
        tags.add(["x", "y"]).await.unwrap();
        let err = client.counter("shop/tags").incr(1).await.unwrap_err();
        assert!(
            matches!(&err, Error::Server { code: ErrorCode::WrongType, message } if message.contains("set")),
            "{err:?}"
        );
        assert!(!err.is_retryable());
        assert_eq!(err.code(), Some(ErrorCode::WrongType));
        // Typed reads of another type are refused too, and every other type's write.
        assert_eq!(server_code(client.counter("shop/tags").get().await), ErrorCode::WrongType);
        assert_eq!(server_code(client.register("shop/tags").set("v").await), ErrorCode::WrongType);
        assert_eq!(server_code(client.mvregister("shop/tags").set("v").await), ErrorCode::WrongType);
        assert_eq!(server_code(client.map("shop/tags").set_field("f", "v").await), ErrorCode::WrongType);
        assert_eq!(server_code(client.doc("shop/tags").put_json(&json!({"a": 1})).await), ErrorCode::WrongType);
        assert_eq!(server_code(client.doc("shop/tags").changes_since(&[]).await), ErrorCode::WrongType);
        assert_eq!(tags.members().await.unwrap(), bytes(&["x", "y"]));
        assert_eq!(client.get("shop/tags").await.unwrap(), Some(Value::Set(bytes(&["x", "y"]))));
    })
    .await;
    client.close().await;
    shutdown(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_listing_paginates_with_prefix_and_skips_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_rocks(config(dir.path())).await;
    let client = connect(&running).await;
    bounded("keys", async {
        for name in ["a1", "a2", "a3", "a4", "a5"] {
            client.counter(format!("ls/{name}")).incr(1).await.unwrap();
        }
        client.set("ls/a6").add(["m"]).await.unwrap();
        client.register("ls/b1").set("v").await.unwrap();
        client.register("other/a1").set("v").await.unwrap(); // another namespace
        client.register("lsx/a1").set("v").await.unwrap(); // a namespace sharing the prefix
        assert!(client.delete("ls/a3").await.unwrap());

        // Page by page, limit 2, following the cursor.
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let mut query = client.keys("ls").prefix("a").limit(2);
            if let Some(c) = &cursor {
                query = query.start_after(c.clone());
            }
            let page = query.page().await.unwrap();
            pages += 1;
            assert!(page.keys.len() <= 2, "{page:?}");
            seen.extend(page.keys.into_iter().map(|k| (k.name, k.crdt_type)));
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
            assert!(pages < 10, "the listing does not end");
        }
        assert!(pages >= 3, "5 keys at 2 per page take at least 3 pages, took {pages}");
        let expected = vec![
            ("a1".to_string(), CrdtType::Counter),
            ("a2".to_string(), CrdtType::Counter),
            ("a4".to_string(), CrdtType::Counter),
            ("a5".to_string(), CrdtType::Counter),
            ("a6".to_string(), CrdtType::Set),
        ];
        assert_eq!(seen, expected);

        // The SDK's cursor-following helper gives the same, and the whole namespace has b1 too.
        let all = client.keys("ls").prefix("a").limit(2).all_up_to(100).await.unwrap();
        assert_eq!(all.next, None);
        assert_eq!(all.keys.iter().map(|k| (k.name.clone(), k.crdt_type)).collect::<Vec<_>>(), expected);
        let names: Vec<String> =
            client.keys("ls").all_up_to(100).await.unwrap().keys.into_iter().map(|k| k.name).collect();
        assert_eq!(names, ["a1", "a2", "a4", "a5", "a6", "b1"]);
        // Bounded: stops with a cursor.
        let first_three = client.keys("ls").limit(2).all_up_to(3).await.unwrap();
        assert_eq!(first_three.keys.len(), 3);
        assert!(first_three.next.is_some());
        // Starting after a name (exclusive).
        let after = client.keys("ls").start_after("a4").page().await.unwrap();
        assert_eq!(after.keys.iter().map(|k| k.name.as_str()).collect::<Vec<_>>(), ["a5", "a6", "b1"]);
        assert_eq!(after.next, None);
        assert!(client.keys("empty").page().await.unwrap().keys.is_empty());

        // Many deleted keys before the only live one: still found by following cursors.
        for i in 0..40 {
            client.counter(format!("gone/k{i:02}")).incr(1).await.unwrap();
            client.delete(format!("gone/k{i:02}")).await.unwrap();
        }
        client.counter("gone/z").incr(1).await.unwrap();
        let live = client.keys("gone").limit(2).all_up_to(100).await.unwrap();
        assert_eq!(live.keys.iter().map(|k| k.name.as_str()).collect::<Vec<_>>(), ["z"]);
        assert_eq!(live.next, None);
    })
    .await;
    client.close().await;
    shutdown(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_describes_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_rocks(config(dir.path())).await;
    let client = connect(&running).await;
    bounded("status", async {
        client.counter("s/a").incr(1).await.unwrap();
        client.counter("s/b").incr(1).await.unwrap();
        let status = client.status().await.unwrap();
        assert_eq!(status.node_id, running.node.id());
        assert_eq!(status.name, "meridian-1");
        assert_eq!(status.region, "local");
        assert_eq!(status.zone, "local-a");
        assert_eq!(status.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(status.durability, "fsync");
        assert_eq!(status.log_entries, 2);
        // The frontier is an HLC (ms << 16): past both writes, i.e. at least this run's start time.
        assert!(status.version_vector.get(running.node.id()) > 1_700_000_000_000 << 16);
        assert!(status.client_connections >= 1, "{status:?}");
    })
    .await;
    client.close().await;
    shutdown(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_consistency_level_serves_writes_and_reads() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_rocks(config(dir.path())).await;
    let client = connect(&running).await;
    bounded("consistency", async {
        for (i, level) in Consistency::ALL.into_iter().enumerate() {
            let counter = client.counter("c/n").consistency(level);
            assert_eq!(counter.incr(1).await.unwrap(), i as i64 + 1, "{level}");
            assert_eq!(counter.get().await.unwrap(), i as i64 + 1, "{level}");
            let key = format!("c/{level}");
            client.set(&key).consistency(level).add([level.name()]).await.unwrap();
            assert_eq!(client.set(&key).consistency(level).members().await.unwrap(), bytes(&[level.name()]));
            assert!(client.keys("c").consistency(level).page().await.unwrap().keys.len() > i);
            // The same through a session at that level, which also carries its token.
            let session = client.session().with_consistency(level);
            session.register(key.replace("c/", "r/")).set(level.name()).await.unwrap();
            let read = session.register(key.replace("c/", "r/")).get_string().await.unwrap();
            assert_eq!(read.as_deref(), Some(level.name()));
        }
    })
    .await;
    client.close().await;
    shutdown(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_read_their_writes_and_resume_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_rocks(config(dir.path())).await;
    let client = connect(&running).await;
    let other = connect(&running).await;
    let id = running.node.id();
    bounded("sessions", async {
        let session = client.session();
        assert!(session.token().0.is_empty());
        assert_eq!(session.counter("sess/n").incr(1).await.unwrap(), 1);
        let t1 = session.token();
        assert!(t1.0.get(id) >= 1);
        session.set("sess/tags").add(["a"]).await.unwrap();
        let t2 = session.token();
        assert!(t2.covers(&t1) && t2 != t1, "the token grows: {t1:?} -> {t2:?}");
        assert_eq!(session.counter("sess/n").get().await.unwrap(), 1);
        assert!(session.set("sess/tags").contains("a").await.unwrap());
        assert!(session.token().covers(&t2));

        // Exported and resumed by another client, the session sees the writes.
        let exported = session.export_token();
        assert!(exported.starts_with("mt1."));
        let resumed = other.resume_session(&exported).unwrap();
        assert_eq!(resumed.token(), session.token());
        assert_eq!(resumed.counter("sess/n").get().await.unwrap(), 1);
        assert!(resumed.set("sess/tags").contains("a").await.unwrap());
        resumed.counter("sess/n").incr(1).await.unwrap();
        assert!(resumed.token().covers(&session.token()));
        assert!(resumed.token().0.get(id) > session.token().0.get(id));
        assert!(matches!(other.resume_session("not a token"), Err(Error::InvalidArgument(_))));
    })
    .await;
    client.close().await;
    other.close().await;
    shutdown(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_from_another_cluster_fails_causal_reads_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.limits.causal_wait_ms = 200;
    let running = start_rocks(cfg).await;
    let client = connect(&running).await;
    bounded("causal timeout", async {
        client.counter("ct/n").incr(1).await.unwrap();
        let mut unknown = NodeId(rand::random::<u64>() | 1);
        if unknown == running.node.id() {
            unknown = NodeId(unknown.0 ^ 2);
        }
        let token = CausalToken([(unknown, 5)].into_iter().collect::<VersionVector>());
        let session = client.resume_session(&token.to_string()).unwrap();

        // This node runs alone: no other origin can ever become known, so waiting cannot help.
        // (In a region, an origin not known yet is waited for, bounded: `causal_timeout`.)
        let err = session.counter("ct/n").get().await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{err:?}");
        assert!(!err.is_retryable());
        assert!(err.to_string().contains("runs alone"), "{err}");
        // Other causal reads are refused the same way ...
        assert_eq!(server_code(session.get("ct/n").await), ErrorCode::BadRequest);
        assert_eq!(server_code(session.doc("ct/doc").changes_since(&[]).await), ErrorCode::BadRequest);

        // ... while an eventual read with the same session succeeds at once, keeping the token.
        let eventual = session.clone().with_consistency(Consistency::Eventual);
        assert_eq!(eventual.counter("ct/n").get().await.unwrap(), 1);
        assert_eq!(eventual.token().0.get(unknown), 5);
        assert!(eventual.token().0.get(running.node.id()) >= 1);
    })
    .await;
    client.close().await;
    shutdown(running).await;
}

fn counter_write(key: &str, amount: i64, id: IdempotencyId) -> RequestV1 {
    RequestV1 {
        consistency: None,
        causal_token: None,
        timeout_ms: 0,
        op: Operation::Write {
            key: key.parse().unwrap(),
            mutation: Mutation::CounterAdd { amount },
            idempotency_id: Some(id),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_writes_apply_once() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_rocks(config(dir.path())).await;
    let client = connect(&running).await;
    bounded("idempotency", async {
        let id = IdempotencyId::random();
        let first = client.raw(counter_write("idem/n", 1, id)).await.unwrap();
        let second = client.raw(counter_write("idem/n", 1, id)).await.unwrap();
        assert_eq!(first, second);
        assert_eq!(first.body, ReplyBody::Written { counter: Some(1) });
        assert_eq!(client.counter("idem/n").get().await.unwrap(), 1);
        // The same id on another key is a client bug, refused; that key is not written.
        let err = client.raw(counter_write("idem/other", 1, id)).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{err:?}");
        // (Without naming the key the id was first used for: it may be another client's.)
        assert!(!err.to_string().contains("idem/n"), "{err}");
        assert_eq!(client.get("idem/other").await.unwrap(), None);
        // A fresh id applies again.
        let third = client.raw(counter_write("idem/n", 1, IdempotencyId::random())).await.unwrap();
        assert_eq!(third.body, ReplyBody::Written { counter: Some(2) });

        // Deletes are deduplicated too: a retried delete reports the first attempt's answer.
        let delete = |id| RequestV1 {
            consistency: None,
            causal_token: None,
            timeout_ms: 0,
            op: Operation::Delete { key: "idem/n".parse().unwrap(), idempotency_id: Some(id) },
        };
        let del_id = IdempotencyId::random();
        let d1 = client.raw(delete(del_id)).await.unwrap();
        let d2 = client.raw(delete(del_id)).await.unwrap();
        assert_eq!(d1.body, ReplyBody::Deleted { existed: true });
        assert_eq!(d1, d2);
    })
    .await;
    client.close().await;
    shutdown(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let running = start_rocks(cfg.clone()).await;
    let node_id = running.node.id();
    let client = connect(&running).await;
    let (heads, token_before) = bounded("write before restart", async {
        client.counter("p/n").incr(7).await.unwrap();
        client.register("p/r").set(vec![1u8, 2, 255]).await.unwrap();
        client.mvregister("p/mv").set("one").await.unwrap();
        client.set("p/s").add(["a", "b"]).await.unwrap();
        client.map("p/m").incr_field("f", 2).await.unwrap();
        client.doc("p/d").put_json(&json!({"k": "v"})).await.unwrap();
        client.counter("p/gone").incr(1).await.unwrap();
        client.delete("p/gone").await.unwrap();
        let session = client.session();
        session.counter("p/n").incr(1).await.unwrap();
        (client.doc("p/d").heads().await.unwrap(), session.token())
    })
    .await;
    client.close().await;
    shutdown(running).await;

    let running = start_rocks(cfg).await;
    assert_eq!(running.node.id(), node_id, "the node keeps its id");
    let client = connect(&running).await;
    bounded("read after restart", async {
        assert_eq!(client.counter("p/n").get().await.unwrap(), 8);
        assert_eq!(client.register("p/r").get().await.unwrap(), Some(vec![1u8, 2, 255]));
        assert_eq!(client.mvregister("p/mv").get().await.unwrap().values, bytes(&["one"]));
        assert_eq!(client.set("p/s").members().await.unwrap(), bytes(&["a", "b"]));
        assert_eq!(client.map("p/m").get().await.unwrap().get("f"), Some(&Value::Counter(2)));
        assert_eq!(client.doc("p/d").get_json().await.unwrap(), json!({"k": "v"}));
        assert_eq!(client.doc("p/d").heads().await.unwrap(), heads);
        assert_eq!(client.get("p/gone").await.unwrap(), None);
        let names: Vec<String> =
            client.keys("p").all_up_to(100).await.unwrap().keys.into_iter().map(|k| k.name).collect();
        assert_eq!(names, ["d", "m", "mv", "n", "r", "s"]);

        // The old session's token is served (the log position survived), and new writes continue it.
        let session = client.resume_session(&token_before.to_string()).unwrap();
        assert_eq!(session.counter("p/n").get().await.unwrap(), 8);
        session.counter("p/n").incr(1).await.unwrap();
        assert!(session.token().0.get(node_id) > token_before.0.get(node_id));
        let status = client.status().await.unwrap();
        assert_eq!(status.version_vector.get(node_id), session.token().0.get(node_id));
    })
    .await;
    client.close().await;
    shutdown(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_all_land_and_sessions_read_them() {
    const TASKS: usize = 4;
    const WRITES: usize = 25;
    let dir = tempfile::tempdir().unwrap();
    let running = start_rocks(config(dir.path())).await;
    let clients = [connect(&running).await, connect(&running).await];
    let node_id = running.node.id();
    bounded("concurrent writes", async {
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let client = clients[t % clients.len()].clone();
            tasks.push(tokio::spawn(async move {
                let session = client.session();
                let mut seen = Vec::new();
                for i in 0..WRITES {
                    // One hot key shared by every task, plus a key of this task's own.
                    let value = session.counter("hot/n").incr(1).await.unwrap();
                    seen.push(value);
                    session.set("hot/members").add([format!("{t}-{i}")]).await.unwrap();
                    session.counter(format!("own/{t}")).incr(1).await.unwrap();
                    // Read-your-writes: the session sees at least its own increment.
                    assert!(session.counter("hot/n").get().await.unwrap() >= value);
                    assert!(session.set("hot/members").contains(format!("{t}-{i}")).await.unwrap());
                }
                (seen, session.token())
            }));
        }
        let mut values = Vec::new();
        let mut tokens = Vec::new();
        for task in tasks {
            let (seen, token) = task.await.unwrap();
            values.extend(seen);
            tokens.push(token);
        }
        // Writes to one key are serialised: each increment saw a distinct value, 1..=N.
        values.sort_unstable();
        assert_eq!(values, (1..=(TASKS * WRITES) as i64).collect::<Vec<_>>());
        let client = &clients[0];
        assert_eq!(client.counter("hot/n").get().await.unwrap(), (TASKS * WRITES) as i64);
        assert_eq!(client.set("hot/members").members().await.unwrap().len(), TASKS * WRITES);
        for t in 0..TASKS {
            assert_eq!(client.counter(format!("own/{t}")).get().await.unwrap(), WRITES as i64);
        }
        // Every write got its own log position, and every session token is covered by the node's.
        let status = client.status().await.unwrap();
        assert_eq!(status.log_entries, (3 * TASKS * WRITES) as u64);
        let node_token = CausalToken(status.version_vector.clone());
        for token in &tokens {
            assert!(node_token.covers(token), "{token:?} vs {node_token:?}");
            assert!(token.0.get(node_id) > 0);
        }
    })
    .await;
    for client in &clients {
        client.close().await;
    }
    shutdown(running).await;
}

/// `Client::storage` (`meridian status`'s storage lines) reports what was written: the data space
/// holds it (memtable or table files), the WAL grew, and the directory holds at least the WAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_storage_report_shows_what_was_written() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_rocks(config(dir.path())).await;
    let client = connect(&running).await;
    bounded("storage report", async {
        let before = client.storage().await.unwrap();
        let names: Vec<&str> = before.spaces.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["data", "log", "meta", "idempotency", "hints", "elements", "partition_index"]);
        for i in 0..200 {
            client.register(format!("disk/k{i}").as_str()).set(vec![7u8; 1000]).await.unwrap();
        }
        client.set("disk/s").add(["a", "b"]).await.unwrap();
        let after = client.storage().await.unwrap();
        let space = |name: &str| after.spaces.iter().find(|s| s.name == name).unwrap().clone();
        let held = |s: &meridian_client::proto::SpaceReport| s.memtable_bytes + s.sst_bytes;
        assert!(held(&space("data")) >= 200 * 1000, "{after:?}");
        assert!(held(&space("log")) > 0 && held(&space("elements")) > 0, "{after:?}");
        assert!(space("data").keys_estimate >= 200, "{after:?}");
        assert!(after.wal_bytes > before.wal_bytes + 200 * 1000, "{after:?}");
        assert!(after.dir_bytes >= after.wal_bytes, "{after:?}");
        assert_eq!(after.format_version, 3);
    })
    .await;
    shutdown(running).await;
}

/// Every field of `map`, read in pages of at most `limit` (each checked to keep to it).
async fn walk_fields(map: &meridian_client::MapHandle, limit: u32) -> Vec<(String, Value)> {
    let (mut walked, mut after) = (Vec::new(), None);
    loop {
        let (page, next) = map.page(after, limit).await.unwrap();
        assert!(page.len() <= limit as usize, "a page keeps to its limit");
        walked.extend(page);
        match next {
            Some(cursor) => after = Some(cursor),
            None => return walked,
        }
    }
}

/// A map's part reads (fields, count, pages) answer what the whole map shows, through field
/// updates of several types, removals (whose records stay until collected: pages skip them), a
/// delete and a re-creation; a part read of another type is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_part_reads_agree_with_the_whole_map() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_rocks(config(dir.path())).await;
    let client = connect(&running).await;
    bounded("map part reads", async {
        let map = client.map("shop/profile");
        assert_eq!(map.len().await.unwrap(), 0, "a missing map counts 0");
        assert!(map.is_empty().await.unwrap());
        assert_eq!(map.page(None, 10).await.unwrap(), (Vec::new(), None));
        assert_eq!(map.get_field("f00000").await.unwrap(), None);
        for i in 0..600u32 {
            map.set_field(format!("f{i:05}"), format!("v{i}")).await.unwrap();
        }
        map.incr_field("visits", 3).await.unwrap();
        map.update("tags", Mutation::SetAdd { members: vec![b"a".to_vec()] }).await.unwrap();
        for i in (0..600u32).step_by(7) {
            map.remove(format!("f{i:05}")).await.unwrap();
        }
        let expected = map.get().await.unwrap();
        assert_eq!(expected.len(), 600 - 600usize.div_ceil(7) + 2);
        assert_eq!(map.len().await.unwrap(), expected.len() as u64, "removed fields are not counted");
        assert_eq!(
            map.get_fields(["f00001", "f00007", "visits", "tags", "nope"]).await.unwrap(),
            vec![
                Some(Value::Register(Some(b"v1".to_vec()))),
                None,
                Some(Value::Counter(3)),
                Some(Value::Set(vec![b"a".to_vec()])),
                None
            ]
        );
        // Pages of 50: every present field once, in name order; a page may be short (removed
        // fields are read and skipped) but never longer than asked.
        let walked = walk_fields(&map, 50).await;
        assert_eq!(walked, expected.clone().into_iter().collect::<Vec<_>>(), "the page walk");
        // A deleted map reads empty in every part; a re-created one starts empty.
        client.delete("shop/profile").await.unwrap();
        assert_eq!(map.len().await.unwrap(), 0);
        assert_eq!(map.get_field("f00001").await.unwrap(), None);
        assert_eq!(map.page(None, 10).await.unwrap(), (Vec::new(), None));
        map.set_field("fresh", "x").await.unwrap();
        assert_eq!(map.len().await.unwrap(), 1);
        // (The deleted fields' records stay, disabled, until collected: the walk reads past them.)
        assert_eq!(walk_fields(&map, 100).await, vec![("fresh".to_string(), Value::Register(Some(b"x".to_vec())))]);
        // Another type is refused, as a whole read of the wrong type is.
        client.counter("shop/n").incr(1).await.unwrap();
        assert_eq!(server_code(client.map("shop/n").len().await), ErrorCode::WrongType);
        for level in [Consistency::Eventual, Consistency::Causal, Consistency::LocalQuorum, Consistency::Quorum] {
            assert_eq!(client.map("shop/profile").consistency(level).len().await.unwrap(), 1, "{level:?}");
        }
    })
    .await;
    shutdown(running).await;
}

/// A set read in parts — membership, count, pages — agrees with the whole read through adds,
/// removes, a delete and a re-creation; a page walk returns every member once, in order; a part read
/// of another type is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_part_reads_agree_with_the_whole_set() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_rocks(config(dir.path())).await;
    let client = connect(&running).await;
    bounded("set part reads", async {
        let set = client.set("shop/big");
        assert_eq!(set.len().await.unwrap(), 0, "a missing set counts 0");
        assert!(set.is_empty().await.unwrap());
        assert_eq!(set.page(None, 10).await.unwrap(), (Vec::new(), None));
        let members: Vec<Vec<u8>> = (0..2_500u32).map(|i| format!("m{i:05}").into_bytes()).collect();
        for chunk in members.chunks(700) {
            set.add(chunk.to_vec()).await.unwrap();
        }
        set.remove([b"m00007".to_vec(), b"m02499".to_vec()]).await.unwrap();
        let mut expected: Vec<Vec<u8>> = members.clone();
        expected.retain(|m| m != b"m00007" && m != b"m02499");
        assert_eq!(set.len().await.unwrap(), expected.len() as u64);
        assert_eq!(set.members().await.unwrap(), expected, "the whole read");
        assert_eq!(
            set.contains_each([b"m00000".as_slice(), b"m00007", b"m02498", b"m02499", b"nope"]).await.unwrap(),
            vec![true, false, true, false, false]
        );
        // Pages of 333: every member once, in byte order, the cursor ending the walk.
        let (mut walked, mut after, mut pages) = (Vec::new(), None, 0);
        loop {
            let (page, next) = set.page(after, 333).await.unwrap();
            assert!(page.len() <= 333);
            walked.extend(page);
            pages += 1;
            match next {
                Some(cursor) => after = Some(cursor),
                None => break,
            }
        }
        assert_eq!(walked, expected, "the page walk");
        assert_eq!(pages, expected.len().div_ceil(333));
        let (tail, next) = set.page(Some(b"m02496".to_vec()), 10).await.unwrap();
        assert_eq!((tail, next), (vec![b"m02497".to_vec(), b"m02498".to_vec()], None));
        // A deleted set reads empty in every part; a re-created one starts empty.
        client.delete("shop/big").await.unwrap();
        assert_eq!(set.len().await.unwrap(), 0);
        assert!(!set.contains("m00000").await.unwrap());
        assert_eq!(set.page(None, 10).await.unwrap(), (Vec::new(), None));
        set.add(["fresh"]).await.unwrap();
        assert_eq!(set.len().await.unwrap(), 1);
        assert_eq!(set.members().await.unwrap(), bytes(&["fresh"]));
        // Another type is refused, as a whole read of the wrong type is.
        client.counter("shop/n").incr(1).await.unwrap();
        assert_eq!(server_code(client.set("shop/n").len().await), ErrorCode::WrongType);
        // Every level answers (the quorum levels from the whole set, on a node alone the same).
        for level in [Consistency::Eventual, Consistency::Causal, Consistency::LocalQuorum, Consistency::Quorum] {
            assert_eq!(client.set("shop/big").consistency(level).len().await.unwrap(), 1, "{level:?}");
        }
    })
    .await;
    shutdown(running).await;
}

/// A pipeline against a real node: answers in order, each key's operations in order, the session's
/// token covering them all, idempotent retries of the whole frame, and the refusals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_answer_in_order_and_retry_idempotently() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_rocks(config(dir.path())).await;
    let client = connect(&running).await;
    bounded("pipelines", async {
        let session = client.session();
        let mut pipeline = session.pipeline();
        for n in 0..50 {
            pipeline.set(format!("pipe/r{n}"), format!("v{n}")).incr("pipe/count", 1);
        }
        pipeline.sadd("pipe/tags", ["a", "b"]).get("pipe/tags").delete("pipe/r0").get("pipe/r0").get("pipe/r1");
        let answers = pipeline.run().await.unwrap();
        assert_eq!(answers.len(), 105);
        for n in 0..50 {
            assert_eq!(answers[2 * n], Ok(ReplyBody::Written { counter: None }));
            assert_eq!(answers[2 * n + 1], Ok(ReplyBody::Written { counter: Some(n as i64 + 1) }), "in order");
        }
        assert_eq!(answers[101], Ok(ReplyBody::Value(Some(Value::Set(bytes(&["a", "b"]))))));
        assert_eq!(answers[102], Ok(ReplyBody::Deleted { existed: true }));
        assert_eq!(answers[103], Ok(ReplyBody::Value(None)), "the read after the delete of its key");
        assert_eq!(answers[104], Ok(ReplyBody::Value(Some(Value::Register(Some(b"v1".to_vec()))))));
        // The session's token covers the pipeline's writes: a key's read answers with the
        // dependencies of its last write, which the token must already hold.
        for key in ["pipe/r49", "pipe/count", "pipe/tags"] {
            let read = RequestV1 {
                consistency: None,
                causal_token: None,
                timeout_ms: 0,
                op: Operation::Read { key: key.parse().unwrap(), expected: None },
            };
            let after = client.raw(read).await.unwrap().causal_token;
            assert!(!after.0.is_empty() && session.token().covers(&after), "{key}: {after:?} vs {:?}", session.token());
        }
        assert_eq!(session.counter("pipe/count").get().await.unwrap(), 50);

        // The same frame twice (a retry): every write applies once and answers as the first time.
        let id = |n| Some(IdempotencyId(n));
        let retried = |n: u128| RequestV1 {
            consistency: None,
            causal_token: None,
            timeout_ms: 0,
            op: Operation::Pipeline(vec![
                Operation::Write {
                    key: "pipe/once".parse().unwrap(),
                    mutation: Mutation::CounterAdd { amount: 5 },
                    idempotency_id: id(n),
                },
                Operation::Write {
                    key: "pipe/twice".parse().unwrap(),
                    mutation: Mutation::CounterAdd { amount: 7 },
                    idempotency_id: id(n + 1),
                },
            ]),
        };
        let first = client.raw(retried(1000)).await.unwrap();
        let second = client.raw(retried(1000)).await.unwrap();
        assert_eq!(first.body, second.body);
        assert_eq!(client.counter("pipe/once").get().await.unwrap(), 5);
        assert_eq!(client.counter("pipe/twice").get().await.unwrap(), 7);

        // Refused whole, nothing run: longer than limits.max_pipeline_ops, or an unkeyed operation.
        let max = running.node.config().limits.max_pipeline_ops as usize;
        let mut long = client.pipeline();
        for _ in 0..=max {
            long.incr("pipe/never", 1);
        }
        assert_eq!(long.run().await.unwrap_err().code(), Some(ErrorCode::TooLarge));
        let unkeyed = RequestV1 {
            consistency: None,
            causal_token: None,
            timeout_ms: 0,
            op: Operation::Pipeline(vec![
                Operation::Write {
                    key: "pipe/never".parse().unwrap(),
                    mutation: Mutation::CounterAdd { amount: 1 },
                    idempotency_id: None,
                },
                Operation::Status,
            ]),
        };
        let refused = client.raw(unkeyed).await.unwrap_err();
        assert_eq!(refused.code(), Some(ErrorCode::BadRequest), "{refused}");
        assert_eq!(client.get("pipe/never").await.unwrap(), None);
    })
    .await;
    client.close().await;
    shutdown(running).await;
}
