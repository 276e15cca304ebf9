//! Two regions that each grow one set to the key cap while cut off from each other: their merge is
//! about twice the cap. It must stay readable in both regions (eventual and global quorum reads,
//! which ship the other region's whole state), lose no acknowledged member, refuse further growth
//! with a clear `too_large`, and accept writes that shrink it and a delete.
//!
//! Negative control (run by hand when this was written): with client responses capped at
//! `limits.max_frame_bytes` as before (`LimitsConfig::max_response_bytes` returning it), the reads of
//! the merged set fail with `too_large` and this test fails at "a read of the merged set".

use meridian_client::{Client, Consistency, ErrorCode};
use meridian_server::certs::generate_ca;
use meridian_server::config::Config;
use meridian_server::serve::start;
use meridian_wan::probe::NodeHttp;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

mod common;
use common::{connect, free_udp_addr, region_config_in, restart, shutdown, wait_for_region};

const REGIONS: [&str; 2] = ["us-east", "eu-west"];
/// Requests are capped at 64 KiB; a write may leave a key with at most 40 KiB, so the merge of two
/// regions' growth (about 80 KiB) is larger than any request frame.
const MAX_FRAME: usize = 64 << 10;
const MAX_KEY: usize = 40 << 10;
const SET: &str = "grow/s";

fn node_config(dir: &std::path::Path, region: &str, listen: SocketAddr, seeds: &[SocketAddr]) -> Config {
    let mut config =
        region_config_in(dir, region, &format!("{region}-n1"), &format!("{region}-a"), listen, seeds, &dir.join("ca"));
    config.peer.rf = 1;
    config.limits.max_frame_bytes = MAX_FRAME;
    config.limits.max_value_bytes = 8 << 10;
    config.limits.max_key_bytes = MAX_KEY;
    config.limits.max_merged_key_bytes = 4 * MAX_KEY;
    config.validate().expect("the test config is valid");
    config
}

/// Adds 1 KiB members named `{prefix}-{i}` until the node refuses one; returns those it took and
/// the refusal.
async fn grow_until_refused(client: &Client, prefix: &str) -> (BTreeSet<Vec<u8>>, meridian_client::Error) {
    let mut added = BTreeSet::new();
    loop {
        let member: Vec<u8> =
            format!("{prefix}-{:03}-", added.len()).into_bytes().into_iter().chain([b'm'; 1024]).collect();
        match client.set(SET).add([member.clone()]).await {
            Ok(()) => {
                added.insert(member);
            }
            Err(e) => return (added, e),
        }
        assert!(added.len() < 100, "the set grew past the key cap");
    }
}

async fn members(client: &Client, consistency: Consistency) -> Result<BTreeSet<Vec<u8>>, meridian_client::Error> {
    Ok(client.set(SET).consistency(consistency).members().await?.into_iter().collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_growth_of_one_set_in_two_regions_stays_readable() {
    let dir = tempfile::tempdir().unwrap();
    generate_ca("test").unwrap().write(&dir.path().join("ca"), false).unwrap();
    let addrs: Vec<SocketAddr> = REGIONS.iter().map(|_| free_udp_addr()).collect();
    let configs: Vec<Config> =
        REGIONS.iter().zip(&addrs).map(|(region, addr)| node_config(dir.path(), region, *addr, &addrs)).collect();

    // The regions meet once (each remembers the other), then are cut off by turns: eu-west is
    // down while us-east alone grows the set to the cap.
    let us_node = start(configs[0].clone()).await.unwrap();
    let eu_node = start(configs[1].clone()).await.unwrap();
    let us = connect(&us_node).await;
    let eu = connect(&eu_node).await;
    wait_for_region(&us, 1).await;
    // eu-west must have merged (and so persisted) us-east's membership record to serve alone later.
    wait_for_region(&eu, 1).await;
    eu.close().await;
    eu_node.shutdown().await;
    let (from_us, refused) = grow_until_refused(&us, "us").await;
    assert_eq!(refused.code(), Some(ErrorCode::TooLarge), "{refused:?}");
    assert!(refused.to_string().contains("max_key_bytes"), "{refused}");
    assert!(from_us.len() >= 20, "only {} members fit", from_us.len());
    us.close().await;
    us_node.shutdown().await;

    // eu-west alone, never having seen them, grows it to the cap too.
    let eu_node = restart(&configs[1]).await;
    let eu = connect(&eu_node).await;
    let (from_eu, refused) = grow_until_refused(&eu, "eu").await;
    assert_eq!(refused.code(), Some(ErrorCode::TooLarge), "{refused:?}");
    assert!(from_eu.len() >= 20, "only {} members fit", from_eu.len());

    // The regions meet again: both converge on every acknowledged member.
    let us_node = restart(&configs[0]).await;
    let us = connect(&us_node).await;
    wait_for_region(&us, 1).await;
    wait_for_region(&eu, 1).await;
    let all: BTreeSet<Vec<u8>> = from_us.union(&from_eu).cloned().collect();
    for (region, c) in [("us-east", &us), ("eu-west", &eu)] {
        let converged = async {
            loop {
                match members(c, Consistency::Eventual).await {
                    Ok(seen) if seen == all => return,
                    Ok(seen) => assert!(seen.is_subset(&all), "{region} holds a member nobody added"),
                    Err(e) => panic!("a read of the merged set in {region}: {e}"),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), converged)
            .await
            .unwrap_or_else(|_| panic!("{region} did not converge on the {} members within 60 s", all.len()));
    }
    // A global quorum read carries the other region's whole (merged) state across.
    for (region, c) in [("us-east", &us), ("eu-west", &eu)] {
        let seen = members(c, Consistency::Quorum).await.unwrap_or_else(|e| panic!("quorum read in {region}: {e}"));
        assert_eq!(seen, all, "quorum read in {region}");
    }

    // The node that merged the other region's growth counts the key it took past the cap.
    // Plain HTTP: authentication is off in this loopback-only test.
    let (_, metrics) = NodeHttp::plain().get(us_node.http_addr, "/metrics").await.unwrap();
    assert!(metrics.contains(r#"meridian_keys_over_cap_total{cap="max_key_bytes"}"#), "{metrics}");

    // Further growth is refused everywhere; shrinking is not, and replicates.
    for c in [&us, &eu] {
        let err = c.set(SET).add([b"one more".to_vec()]).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::TooLarge), "{err:?}");
        assert!(!err.is_retryable());
    }
    let gone: Vec<Vec<u8>> = from_us.iter().take(3).cloned().collect();
    us.set(SET).remove(gone.clone()).await.unwrap();
    let shrunk: BTreeSet<Vec<u8>> = all.iter().filter(|m| !gone.contains(m)).cloned().collect();
    let replicated = async {
        while members(&eu, Consistency::Eventual).await.unwrap() != shrunk {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), replicated).await.expect("the removal reached eu-west");
    assert!(eu.delete(SET).await.unwrap());
    assert!(members(&eu, Consistency::Quorum).await.unwrap().is_empty());

    us.close().await;
    eu.close().await;
    for node in [us_node, eu_node] {
        shutdown(node).await;
    }
}
