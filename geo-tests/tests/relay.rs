//! The WAN-emulating UDP relay: echo, delay, FIFO under jitter, seeded loss, partitions, and
//! real QUIC through it. Assertions are on counts, orderings and lower bounds of time only.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use meridian_geo_tests::relay::{Direction, Impairment, Relay, RelayHandle, Wan};
use tokio::net::UdpSocket;
use tokio::time::{sleep, timeout, Instant};

/// Generous bound for anything that should happen "soon".
const PATIENCE: Duration = Duration::from_secs(2);

/// A UDP echo server; counts the datagrams it received.
struct Echo {
    addr: SocketAddr,
    received: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Echo {
    async fn start() -> Echo {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let received = Arc::new(AtomicU64::new(0));
        let counter = received.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_535];
            loop {
                let Ok((len, from)) = socket.recv_from(&mut buf).await else { continue };
                counter.fetch_add(1, Ordering::SeqCst);
                let _ = socket.send_to(&buf[..len], from).await;
            }
        });
        Echo { addr, received, task }
    }

    fn received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn client(relay: &Relay) -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(relay.local_addr()).await.unwrap();
    socket
}

async fn recv_u32(socket: &UdpSocket, within: Duration) -> Option<u32> {
    let mut buf = [0u8; 64];
    match timeout(within, socket.recv(&mut buf)).await {
        Ok(Ok(4)) => Some(u32::from_be_bytes(buf[..4].try_into().unwrap())),
        Ok(other) => panic!("unexpected receive: {other:?}"),
        Err(_) => None,
    }
}

/// Polls `done` every millisecond until it holds; panics after [`PATIENCE`].
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(1)).await;
    }
}

/// Sends `0..count` in windows of `window` datagrams, waiting after each window until the relay
/// has taken them all in (so no socket buffer on the way overflows).
async fn send_paced(socket: &UdpSocket, relay: &RelayHandle, count: u32, window: u32) {
    let start = relay.stats().forward.received;
    for i in 0..count {
        socket.send(&i.to_be_bytes()).await.unwrap();
        if (i + 1) % window == 0 || i + 1 == count {
            let sent = u64::from(i + 1);
            wait_until("the relay to receive a window", || relay.stats().forward.received - start >= sent).await;
        }
    }
}

#[tokio::test]
async fn echo_through_relay_in_order() {
    let echo = Echo::start().await;
    let relay = Relay::start_seeded(echo.addr, 1).unwrap();
    let socket = client(&relay).await;
    let mut got = Vec::new();
    for window in 0..10u32 {
        for i in window * 20..(window + 1) * 20 {
            socket.send(&i.to_be_bytes()).await.unwrap();
        }
        for _ in 0..20 {
            got.push(recv_u32(&socket, PATIENCE).await.expect("an echo"));
        }
    }
    assert_eq!(got, (0..200).collect::<Vec<_>>());
    let stats = relay.stats();
    assert_eq!(stats.clients, 1);
    assert_eq!((stats.forward.forwarded, stats.backward.forwarded), (200, 200));
    assert_eq!(stats.forward.dropped() + stats.backward.dropped(), 0);
    assert_eq!(echo.received(), 200);
}

#[tokio::test]
async fn two_clients_get_their_own_replies() {
    let echo = Echo::start().await;
    let relay = Relay::start_seeded(echo.addr, 2).unwrap();
    let (a, b) = (client(&relay).await, client(&relay).await);
    for i in 0..10u32 {
        a.send(&i.to_be_bytes()).await.unwrap();
        b.send(&(1000 + i).to_be_bytes()).await.unwrap();
        assert_eq!(recv_u32(&a, PATIENCE).await, Some(i));
        assert_eq!(recv_u32(&b, PATIENCE).await, Some(1000 + i));
    }
    assert_eq!(relay.stats().clients, 2);
}

#[tokio::test]
async fn delay_adds_to_round_trip() {
    let echo = Echo::start().await;
    let relay = Relay::start_seeded(echo.addr, 3).unwrap();
    relay.set(Impairment::delay(Duration::from_millis(30)));
    let socket = client(&relay).await;
    for i in 0..3u32 {
        let sent = Instant::now();
        socket.send(&i.to_be_bytes()).await.unwrap();
        assert_eq!(recv_u32(&socket, PATIENCE).await, Some(i));
        let rtt = sent.elapsed();
        assert!(rtt >= Duration::from_millis(60), "round trip {rtt:?} under 2 x 30 ms");
    }
    // Only the forward direction delayed: still at least 30 ms.
    relay.set_backward(Impairment::default());
    let sent = Instant::now();
    socket.send(&7u32.to_be_bytes()).await.unwrap();
    assert_eq!(recv_u32(&socket, PATIENCE).await, Some(7));
    assert!(sent.elapsed() >= Duration::from_millis(30));
}

/// `Relay::bind` listens on the address it is given (a planned link port), and a delay set right
/// away applies to both directions from the first datagram.
#[tokio::test]
async fn bind_listens_on_the_given_address() {
    let echo = Echo::start().await;
    let taken = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let err = Relay::bind(taken.local_addr().unwrap(), echo.addr, 1).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    let addr = taken.local_addr().unwrap();
    drop(taken);

    let relay = Relay::bind(addr, echo.addr, 5).unwrap();
    relay.set(Impairment::delay(Duration::from_millis(20)).with_jitter(Duration::from_millis(1)));
    assert_eq!((relay.local_addr(), relay.upstream(), relay.seed()), (addr, echo.addr, 5));
    let socket = client(&relay).await;
    let sent = Instant::now();
    socket.send(&9u32.to_be_bytes()).await.unwrap();
    assert_eq!(recv_u32(&socket, PATIENCE).await, Some(9));
    assert!(sent.elapsed() >= Duration::from_millis(38), "round trip {:?} under 2 x (20 - 1) ms", sent.elapsed());
    assert_eq!(relay.impairment(Direction::Backward).delay, Duration::from_millis(20));
}

#[tokio::test]
async fn jitter_keeps_fifo_unless_reorder_allowed() {
    let echo = Echo::start().await;
    let relay = Relay::start_seeded(echo.addr, 4).unwrap();
    let jittery =
        Impairment { delay: Duration::from_millis(5), jitter: Duration::from_millis(4), ..Default::default() };
    relay.set(jittery);
    let socket = client(&relay).await;

    let mut got = Vec::new();
    for window in 0..8u32 {
        for i in window * 25..(window + 1) * 25 {
            socket.send(&i.to_be_bytes()).await.unwrap();
        }
        for _ in 0..25 {
            got.push(recv_u32(&socket, PATIENCE).await.expect("an echo"));
        }
    }
    assert_eq!(got, (0..200).collect::<Vec<_>>(), "jitter reordered datagrams");

    // Control: the same jitter with reordering allowed does reorder some of them.
    relay.set(Impairment { reorder: true, ..jittery });
    let mut got = Vec::new();
    for window in 0..8u32 {
        for i in window * 25..(window + 1) * 25 {
            socket.send(&i.to_be_bytes()).await.unwrap();
        }
        for _ in 0..25 {
            got.push(recv_u32(&socket, PATIENCE).await.expect("an echo"));
        }
    }
    let inversions = got.windows(2).filter(|w| w[0] > w[1]).count();
    assert!(inversions > 0, "reorder allowed but 200 jittered datagrams arrived in order");
    got.sort_unstable();
    assert_eq!(got, (0..200).collect::<Vec<_>>());
}

/// Sends 1000 datagrams through a relay with 50% forward loss; returns how many reached the
/// echo server, after checking the relay's counters account for the rest.
async fn lossy_run(seed: u64) -> u64 {
    let echo = Echo::start().await;
    let relay = Relay::start_seeded(echo.addr, seed).unwrap();
    assert_eq!(relay.seed(), seed);
    relay.set_forward(Impairment { loss: 0.5, ..Default::default() });
    let socket = client(&relay).await;
    send_paced(&socket, &relay, 1000, 50).await;
    wait_until("the forward queue to drain", || relay.stats().forward.queued == 0).await;
    let stats = relay.stats().forward;
    assert_eq!(stats.received, 1000);
    assert_eq!(stats.forwarded + stats.dropped_loss, 1000, "{stats:?}");
    assert_eq!(stats.dropped_blocked + stats.dropped_overflow + stats.send_errors, 0);
    wait_until("the echo server to see every forwarded datagram", || echo.received() == stats.forwarded).await;
    echo.received()
}

#[tokio::test]
async fn seeded_loss_drops_about_half() {
    let arrived = lossy_run(42).await;
    assert!((300..=700).contains(&arrived), "{arrived} of 1000 arrived at 50% loss");
    // Same seed, same arrival order: the same datagrams are lost.
    assert_eq!(lossy_run(42).await, arrived);
}

#[tokio::test]
async fn partition_and_heal() {
    let echo = Echo::start().await;
    let relay = Relay::start_seeded(echo.addr, 5).unwrap();
    let socket = client(&relay).await;

    relay.block();
    for i in 0..20u32 {
        socket.send(&i.to_be_bytes()).await.unwrap();
    }
    wait_until("blocked drops", || relay.stats().forward.dropped_blocked == 20).await;
    assert_eq!(recv_u32(&socket, Duration::from_millis(100)).await, None);
    assert_eq!(echo.received(), 0);
    assert_eq!(relay.stats().forward.forwarded, 0);

    relay.heal();
    assert!(!relay.impairment(Direction::Forward).blocked);
    socket.send(&100u32.to_be_bytes()).await.unwrap();
    assert_eq!(recv_u32(&socket, PATIENCE).await, Some(100));
    assert_eq!(echo.received(), 1);
}

#[tokio::test]
async fn one_way_partitions() {
    let echo = Echo::start().await;
    let relay = Relay::start_seeded(echo.addr, 6).unwrap();
    let socket = client(&relay).await;

    // Forward blocked, backward open: the echo server hears nothing.
    relay.block_direction(Direction::Forward);
    for i in 0..10u32 {
        socket.send(&i.to_be_bytes()).await.unwrap();
    }
    wait_until("forward blocked drops", || relay.stats().forward.dropped_blocked == 10).await;
    assert_eq!(echo.received(), 0);
    assert_eq!(recv_u32(&socket, Duration::from_millis(50)).await, None);
    relay.heal();

    // Backward blocked, forward open: the echo server hears everything, the client nothing.
    relay.block_direction(Direction::Backward);
    for i in 0..10u32 {
        socket.send(&i.to_be_bytes()).await.unwrap();
    }
    wait_until("backward blocked drops", || relay.stats().backward.dropped_blocked == 10).await;
    assert_eq!(echo.received(), 10);
    assert_eq!(recv_u32(&socket, Duration::from_millis(50)).await, None);
    let stats = relay.stats();
    assert_eq!((stats.forward.forwarded, stats.backward.forwarded), (10, 0));

    relay.heal();
    socket.send(&99u32.to_be_bytes()).await.unwrap();
    assert_eq!(recv_u32(&socket, PATIENCE).await, Some(99));
}

#[tokio::test]
async fn stop_stops_forwarding() {
    let echo = Echo::start().await;
    let relay = Relay::start_seeded(echo.addr, 7).unwrap();
    let handle = relay.handle();
    let socket = client(&relay).await;
    socket.send(&1u32.to_be_bytes()).await.unwrap();
    assert_eq!(recv_u32(&socket, PATIENCE).await, Some(1));
    drop(relay);
    sleep(Duration::from_millis(20)).await;
    // The relay's port is closed: the send is refused (ICMP) or the datagram vanishes.
    let _ = socket.send(&2u32.to_be_bytes()).await;
    let mut buf = [0u8; 64];
    match timeout(Duration::from_millis(100), socket.recv(&mut buf)).await {
        Err(_) => {}
        Ok(Err(e)) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused),
        Ok(Ok(len)) => panic!("a {len}-byte reply through a stopped relay"),
    }
    assert_eq!(handle.stats().forward.received, 1);
}

#[tokio::test]
async fn wan_routes_and_partitions_pairs() {
    let (eu, us) = (Echo::start().await, Echo::start().await);
    let latency = |from: &str, to: &str| match (from, to) {
        ("eu", "us") => Duration::from_millis(20),
        _ => Duration::from_millis(10),
    };
    let wan = Wan::start(&[("eu", eu.addr), ("us", us.addr)], latency, 9).unwrap();
    assert!(wan.addr("eu", "eu").is_none());
    let to_us = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    to_us.connect(wan.addr("eu", "us").unwrap()).await.unwrap();
    let sent = Instant::now();
    to_us.send(&5u32.to_be_bytes()).await.unwrap();
    assert_eq!(recv_u32(&to_us, PATIENCE).await, Some(5));
    assert!(sent.elapsed() >= Duration::from_millis(30));
    assert_eq!((us.received(), eu.received()), (1, 0));

    wan.partition("us", "eu");
    to_us.send(&6u32.to_be_bytes()).await.unwrap();
    assert_eq!(recv_u32(&to_us, Duration::from_millis(100)).await, None);
    wan.heal();
    to_us.send(&7u32.to_be_bytes()).await.unwrap();
    assert_eq!(recv_u32(&to_us, PATIENCE).await, Some(7));
}

#[tokio::test]
async fn quic_request_through_delayed_relay() {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert: CertificateDer<'static> = ck.cert.der().clone();
    let key = PrivateKeyDer::from(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    server_tls.alpn_protocols = vec![b"relay-test".to_vec()];
    let server_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(server_tls).unwrap();
    let server_config = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
    let server = quinn::Endpoint::server(server_config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let server_addr = server.local_addr().unwrap();
    let accept = server.clone();
    let server_task = tokio::spawn(async move {
        let connection = accept.accept().await.expect("an incoming connection").await.expect("a handshake");
        let (mut send, mut recv) = connection.accept_bi().await.unwrap();
        let request = recv.read_to_end(1024).await.unwrap();
        let mut reply = b"pong:".to_vec();
        reply.extend_from_slice(&request);
        send.write_all(&reply).await.unwrap();
        send.finish().unwrap();
        connection.closed().await;
    });

    let relay = Relay::start_seeded(server_addr, 8).unwrap();
    relay.set(Impairment::delay(Duration::from_millis(20)));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let mut client_tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client_tls.alpn_protocols = vec![b"relay-test".to_vec()];
    let client_crypto = quinn::crypto::rustls::QuicClientConfig::try_from(client_tls).unwrap();
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    client.set_default_client_config(quinn::ClientConfig::new(Arc::new(client_crypto)));

    let exchange = async {
        let started = Instant::now();
        let connection = client.connect(relay.local_addr(), "localhost").unwrap().await.unwrap();
        let handshake = started.elapsed();
        let (mut send, mut recv) = connection.open_bi().await.unwrap();
        send.write_all(b"ping").await.unwrap();
        send.finish().unwrap();
        let reply = recv.read_to_end(1024).await.unwrap();
        connection.close(0u32.into(), b"done");
        (handshake, reply)
    };
    let (handshake, reply) = timeout(Duration::from_secs(4), exchange).await.expect("QUIC exchange in time");
    assert_eq!(reply, b"pong:ping");
    assert!(handshake >= Duration::from_millis(40), "handshake {handshake:?} under one 40 ms round trip");
    let stats = relay.stats();
    assert_eq!(stats.clients, 1);
    assert!(stats.forward.forwarded > 0 && stats.backward.forwarded > 0, "{stats:?}");
    client.wait_idle().await;
    let _ = timeout(PATIENCE, server_task).await;
}
