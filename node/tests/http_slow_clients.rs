//! Slow HTTP clients (slowloris) cannot hold the node: thousands of connections that trickle a
//! header never finish it, and a real client is still served at once; the node closes the slow ones
//! after `limits.http_header_timeout_ms`; past `limits.max_http_connections` new connections are
//! closed, not queued.

mod common;

use std::time::{Duration, Instant};

use common::{config, shutdown, start_memory};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Slow clients opened; each holds a socket on both ends of loopback.
const SLOW_CLIENTS: usize = 3_000;

/// Raises this process's open-file limit to what the test needs (both ends of every connection live
/// here), within the hard limit.
fn raise_fd_limit(needed: u64) -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        if limit.rlim_cur < needed {
            limit.rlim_cur = needed.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        }
    }
    limit.rlim_cur
}

async fn get_livez(addr: std::net::SocketAddr) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(format!("GET /livez HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_slow_http_clients_do_not_starve_a_real_one() {
    let limit = raise_fd_limit(2 * SLOW_CLIENTS as u64 + 512);
    let slow = SLOW_CLIENTS.min((limit.saturating_sub(512) / 2) as usize);
    assert!(slow >= 1_000, "the open-file limit ({limit}) leaves room for only {slow} slow clients");
    let dir = tempfile::tempdir().unwrap();
    let mut settings = config(dir.path());
    settings.limits.http_header_timeout_ms = 1_500;
    settings.limits.max_http_connections = slow + 64;
    let running = start_memory(settings).await;
    let addr = running.http_addr;

    // Slow clients: each sends half a request header and then nothing.
    let mut held = Vec::with_capacity(slow);
    for _ in 0..slow {
        let mut stream = TcpStream::connect(addr).await.expect("connect a slow client");
        stream.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
        held.push(stream);
    }

    // A real client is served at once.
    let started = Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(5), get_livez(addr)).await.expect("served").unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(started.elapsed() < Duration::from_secs(2), "served in {:?}", started.elapsed());

    // The node closes the slow ones once their header time is up (a 408, or just the close).
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let mut closed = 0;
    for stream in &mut held {
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(20), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => closed += 1,
            Ok(Ok(_)) => {
                // The timeout's answer; the close follows.
                closed += 1;
            }
            Err(_) => {}
        }
    }
    assert!(closed >= slow * 99 / 100, "only {closed} of {slow} slow clients were closed by the header timeout");

    // Past the connection cap, new connections are closed at once rather than queued.
    drop(held);
    let running_cap = {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path());
        config.limits.max_http_connections = 4;
        (start_memory(config).await, dir)
    };
    let capped = running_cap.0.http_addr;
    let mut four = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(capped).await.unwrap();
        stream.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        four.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = tokio::time::timeout(Duration::from_secs(2), get_livez(capped)).await.expect("answered at once");
    assert!(refused.map_or(true, |r| r.is_empty()), "the fifth connection was closed without an answer");
    drop(four);
    shutdown(running_cap.0).await;
    shutdown(running).await;
}
