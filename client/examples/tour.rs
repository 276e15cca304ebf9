//! A tour of the SDK against a running node (`make run` in another terminal).
//!
//! ```sh
//! cargo run -p meridian-client --example tour -- [ENDPOINT] [CA_CERT]
//! ```
//! Defaults: `127.0.0.1:7400` and `./meridian-data/tls/node.crt` (the node's generated certificate).

use meridian_client::{Client, Consistency, Value};
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let endpoint = args.next().unwrap_or_else(|| "127.0.0.1:7400".into());
    let ca_cert = args.next().unwrap_or_else(|| "./meridian-data/tls/node.crt".into());

    let client =
        Client::builder().endpoint(endpoint).ca_cert_file(ca_cert).timeout(Duration::from_secs(2)).connect().await?;

    // Typed handles: each key holds one CRDT type.
    let visits = client.counter("tour/visits").incr(1).await?;
    println!("counter tour/visits = {visits}");

    client.register("tour/motd").set("hello from the SDK").await?;
    let motd = client.register("tour/motd").get().await?;
    println!("register tour/motd = {:?}", motd.map(|v| String::from_utf8_lossy(&v).into_owned()));

    client.set("tour/tags").add(["rust", "crdt", "quic"]).await?;
    client.set("tour/tags").remove(["quic"]).await?;
    let tags: Vec<String> = client
        .set("tour/tags")
        .members()
        .await?
        .into_iter()
        .map(|m| String::from_utf8_lossy(&m).into_owned())
        .collect();
    println!("set tour/tags = {tags:?}");

    client.map("tour/user:1").set_field("name", "Ada").await?;
    client.map("tour/user:1").incr_field("logins", 2).await?;
    println!("map tour/user:1 = {:?}", client.map("tour/user:1").get().await?);

    client.doc("tour/page").put_json(&serde_json::json!({"title": "Home", "blocks": ["intro"]})).await?;
    println!("doc tour/page = {}", client.doc("tour/page").get_json().await?);

    // A wrong-type operation is a typed, non-retryable error; nothing is overwritten.
    match client.set("tour/visits").add(["oops"]).await {
        Err(e) => println!("set op on a counter: {e} (retryable: {})", e.is_retryable()),
        Ok(()) => println!("unexpected: wrong-type write accepted"),
    }

    // A pipeline: many operations in one request, one answer each, in order.
    let mut pipeline = client.pipeline();
    for n in 0..10 {
        pipeline.set(format!("tour/item:{n}"), format!("item {n}"));
    }
    pipeline.incr("tour/visits", 1).get("tour/item:3");
    let answers = pipeline.run().await?;
    println!("pipeline of {} operations, last answer: {:?}", answers.len(), answers.last());

    // Per-request consistency, and a causal session whose token can move to another process.
    let session = client.session();
    session.counter("tour/visits").consistency(Consistency::Causal).incr(1).await?;
    let token = session.export_token();
    println!("session token: {token}");
    let resumed = client.resume_session(&token)?;
    if let Some(Value::Counter(n)) = resumed.get("tour/visits").await? {
        println!("resumed session reads tour/visits = {n} (includes its own write)");
    }
    Ok(())
}
