use std::time::{Duration, Instant};
use meridian_client::Consistency;
use meridian_geo_tests::region::{Region, RegionSpec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("region");
    let mut region = Region::init(&dir, &RegionSpec::default()).await.unwrap();
    region.start_all().await.unwrap();
    region.wait_all_alive(Duration::from_secs(60)).await.unwrap();
    let keys: Vec<String> = (0..20).map(|k| format!("t/k{k}")).collect();
    let placements = region.placements(&keys).await.unwrap();
    println!("{placements:?}");
    let mut clients = vec![];
    for i in 1..=5 { clients.push(region.client(i).await.unwrap()); }
    let t0 = Instant::now();
    let sweep = |label: String, clients: Vec<meridian_client::Client>, keys: Vec<String>| async move {
        let mut bad = vec![];
        for (i, c) in clients.iter().enumerate() {
            if i == 1 && label.contains("down") { continue; }
            for k in &keys {
                let s = Instant::now();
                let r = c.set(k.as_str()).consistency(Consistency::LocalQuorum).add(["x"]).await;
                let ms = s.elapsed().as_millis();
                if r.is_err() || ms > 500 { bad.push(format!("n{} {k} {ms}ms {:?}", i+1, r.err().map(|e| e.to_string()))); }
            }
        }
        println!("{label}: {} slow/failed: {:#?}", bad.len(), bad);
    };
    sweep("before".into(), clients.clone(), keys.clone()).await;
    region.kill9(2).await.unwrap();
    println!("killed n2 at {:?}", t0.elapsed());
    tokio::time::sleep(Duration::from_secs(1)).await;
    sweep("down 1s".into(), clients.clone(), keys.clone()).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    sweep("down 6s".into(), clients.clone(), keys.clone()).await;
    region.restart(2).await.unwrap();
    println!("restarted n2 at {:?}", t0.elapsed());
    for round in 0..4 {
        sweep(format!("after restart round {round} at {:?}", t0.elapsed()), clients.clone(), keys.clone()).await;
    }
    region.wait_all_alive(Duration::from_secs(60)).await.unwrap();
    for round in 0..2 {
        sweep(format!("after alive round {round} at {:?}", t0.elapsed()), clients.clone(), keys.clone()).await;
    }
    for i in 1..=5 { let r = region.cluster_status(i).await.unwrap(); println!("n{i}: {:?}", r.members.iter().map(|m| (m.name.clone(), m.liveness.clone(), m.hints_queued)).collect::<Vec<_>>()); }
    let t = Instant::now();
    let stopped = region.stop_all().await;
    for s in stopped { println!("{} {} forced={} ", s.name, s.status, s.forced); }
    println!("stop took {:?}", t.elapsed());
    println!("log n2:\n{}", std::fs::read_to_string(dir.join("n2/node.log")).unwrap());
}
