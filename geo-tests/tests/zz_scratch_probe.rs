use meridian_client::Consistency;
use meridian_geo_tests::region::{Region, RegionSpec};
use rand::Rng;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe() {
    let tmp = tempfile::tempdir().unwrap();
    let tmp_path = tmp.keep();
    println!("dir {}", tmp_path.display());
    let dir = tmp_path.join("region");
    let mut region = Region::init(&dir, &RegionSpec::default()).await.unwrap();
    region.start_all().await.unwrap();
    region.wait_all_alive(Duration::from_secs(60)).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut ws = vec![];
    for w in 0..6 {
        let mut clients = vec![];
        for i in 1..=5 {
            clients.push(region.client(i).await.unwrap());
        }
        let stop = stop.clone();
        ws.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let (c, k) = {
                    let mut r = rand::rng();
                    (r.random_range(0..5), r.random_range(0..20))
                };
                let _ = clients[c]
                    .set(format!("t/k{k}"))
                    .consistency(Consistency::LocalQuorum)
                    .add([format!("w{w}-{n}")])
                    .await;
                n += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    region.kill9(2).await.unwrap();
    tokio::time::sleep(Duration::from_secs(8)).await;
    region.restart(2).await.unwrap();
    let restarted = std::time::Instant::now();
    region.wait_all_alive(Duration::from_secs(60)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    stop.store(true, Ordering::Relaxed);
    for w in ws {
        w.await.unwrap();
    }
    println!("load stopped");
    let pid = region.pid(2).unwrap();
    std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    let termed = restarted.elapsed();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let alive = std::process::Command::new("kill").args(["-0", &pid.to_string()]).status().unwrap().success();
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| s.contains(") Z ")).unwrap_or(true);
        if !alive || zombie {
            println!("n2 exited {:?} after restart (SIGTERM at {termed:?})", restarted.elapsed());
            break;
        }
        if restarted.elapsed() > Duration::from_secs(90) {
            println!("n2 still alive 90 s after restart");
            break;
        }
    }
    let stopped = region.stop_all().await;
    for s in stopped {
        println!("{} {} forced={} ", s.name, s.status, s.forced);
    }
}
