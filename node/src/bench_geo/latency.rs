//! Part 2: latency per consistency level, unloaded.
//!
//! In the first region, one sequential session per level (`eventual`, `causal`, `local_quorum`,
//! `quorum`, one level after the other so that none loads another): `--latency-ops` times a
//! register write then a read of the same key (16 keys per level). Then causal hand-offs: a causal
//! write in the first region, its session's token carried to a session in each other region, a
//! causal read there — the time from the write's acknowledgement until that read is served.

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use meridian_client::{Client, Consistency};
use tokio::time::Instant;

use super::{histogram, ms, record, GeoBenchArgs, GeoCluster};
use crate::local_region::say;

/// One operation's bound.
const OP_BOUND: Duration = Duration::from_secs(10);
/// The goal: quorum p50 within the round trip to the nearest majority plus this.
const GOAL_MARGIN_MS: f64 = 2.0;

struct LevelStats {
    writes: Histogram<u64>,
    reads: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
}

/// The causal hand-offs to one other region.
struct Handoffs {
    region: String,
    /// From the write's acknowledgement in the first region until the read here was served.
    served: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
}

pub(super) async fn run(args: &GeoBenchArgs, cluster: &GeoCluster) -> anyhow::Result<String> {
    let home = cluster.home().to_string();
    let client = cluster.client_to(0, 0).await?;
    let nearest = cluster
        .plan
        .regions
        .iter()
        .skip(1)
        .map(|r| (cluster.one_way_ms(&home, &r.name) * 2, r.name.clone()))
        .min()
        .expect("at least two regions");
    say!(
        "[latency] {} sequential writes and reads per level in {home}, then {} causal hand-offs to each other region",
        args.latency_ops,
        args.causal_probes
    );
    let run = std::process::id();
    let mut levels = Vec::new();
    for level in Consistency::ALL {
        levels.push((level, measure_level(args, &client, level, run).await));
    }

    // The emulator's own round trip: UDP echo through a relay set up like the links.
    let echo = udp_echo_rtt(Duration::from_millis(nearest.0 / 2), args.latency_ops).await?;

    // Causal hand-offs.
    let mut handoffs = Vec::new();
    for r in 1..cluster.plan.regions.len() {
        handoffs.push(causal_handoffs(args, cluster, &client, r, run).await?);
    }
    client.close().await;

    let (rtt, nearest_name) = nearest;
    let mut out = format!(
        "2. Latency per consistency level in {home}, one sequential session per level, unloaded ({} writes + {} reads each)\n",
        args.latency_ops, args.latency_ops
    );
    let _ = writeln!(
        out,
        "   baseline: emulated RTT to the nearest other region ({nearest_name}) = {rtt} ms; \
         quorum = {} of {} replicas (rf {} × {} regions)",
        (cluster.plan.rf * cluster.plan.regions.len()) / 2 + 1,
        cluster.plan.rf * cluster.plan.regions.len(),
        cluster.plan.rf,
        cluster.plan.regions.len()
    );
    write_level_header(&mut out, &echo, rtt);
    write_levels(&mut out, &levels, rtt);
    write_handoffs(&mut out, cluster, &home, &handoffs);
    Ok(out)
}

/// `--latency-ops` sequential register writes, each followed by a read of the same key (16 keys), in
/// one session at `level`.
async fn measure_level(args: &GeoBenchArgs, client: &Client, level: Consistency, run: u32) -> LevelStats {
    let session = client.session().with_consistency(level);
    let mut stats = LevelStats { writes: histogram(), reads: histogram(), errors: 0, first_error: None };
    for i in 0..args.latency_ops {
        let h = session.register(format!("bench/lat-{run}-{}-{}", level.name(), i % 16));
        let value = super::value(1, i, args.value_bytes);
        let started = Instant::now();
        match tokio::time::timeout(OP_BOUND, h.set(value)).await {
            Ok(Ok(())) => record(&mut stats.writes, started.elapsed()),
            Ok(Err(e)) => fail(&mut stats, e.to_string()),
            Err(_) => fail(&mut stats, "no answer within 10 s".into()),
        }
        let started = Instant::now();
        match tokio::time::timeout(OP_BOUND, h.get()).await {
            Ok(Ok(_)) => record(&mut stats.reads, started.elapsed()),
            Ok(Err(e)) => fail(&mut stats, e.to_string()),
            Err(_) => fail(&mut stats, "no answer within 10 s".into()),
        }
    }
    stats
}

/// `--causal-probes` causal writes through `client` (the first region), each one's session token
/// carried to a causal read in region `r`.
async fn causal_handoffs(
    args: &GeoBenchArgs,
    cluster: &GeoCluster,
    client: &Client,
    r: usize,
    run: u32,
) -> anyhow::Result<Handoffs> {
    let remote = cluster.client_to(r, 0).await?;
    let mut served = histogram();
    let mut errors = 0u64;
    let mut first_error = None;
    for i in 0..args.causal_probes {
        let writer = client.session().with_consistency(Consistency::Causal);
        let key = format!("bench/causal-{run}-{r}-{i}");
        let value = super::value(2, i, args.value_bytes);
        let written = tokio::time::timeout(OP_BOUND, writer.register(key.as_str()).set(value.clone())).await;
        let acked = Instant::now();
        if !matches!(written, Ok(Ok(()))) {
            errors += 1;
            first_error.get_or_insert_with(|| format!("write: {written:?}"));
            continue;
        }
        let reader = remote.session().with_consistency(Consistency::Causal);
        reader.merge_token(&writer.token());
        match tokio::time::timeout(OP_BOUND, reader.register(key.as_str()).get()).await {
            Ok(Ok(Some(v))) if v == value => record(&mut served, acked.elapsed()),
            other => {
                errors += 1;
                first_error.get_or_insert_with(|| format!("read: {:?}", other.map(|r| r.map(|v| v.map(|v| v.len())))));
            }
        }
        // Spread the probes a little: each starts from an idle link.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    remote.close().await;
    Ok(Handoffs { region: cluster.plan.regions[r].name.clone(), served, errors, first_error })
}

/// The header of the report's latency table, and its first row: the emulated link itself.
fn write_level_header(out: &mut String, echo: &Histogram<u64>, rtt: u64) {
    let echo_p50 = echo.value_at_quantile(0.5) as f64 / 1000.0;
    let _ = writeln!(
        out,
        "   {:<14}{:<7}{:>7}{:>9}{:>9}{:>9}{:>11}   GOAL quorum p50 ≤ RTT + {GOAL_MARGIN_MS} ms",
        "LEVEL", "OP", "COUNT", "P50 ms", "P99 ms", "MAX ms", "P50-RTT"
    );
    let _ = writeln!(
        out,
        "   {:<14}{:<7}{:>7}{:>9}{:>9}{:>9}{:>11.1}   (the emulated link itself: a UDP echo through a relay set \
         like the links, {} ms ± {} ms each way)",
        "udp echo",
        "rtt",
        echo.len(),
        ms(echo.value_at_quantile(0.5)),
        ms(echo.value_at_quantile(0.99)),
        ms(echo.max()),
        echo_p50 - rtt as f64,
        rtt / 2,
        crate::demo::LINK_JITTER.as_millis()
    );
}

/// The latency table's rows: writes and reads per level against the RTT (the goal is quorum's), then
/// each level's errors.
fn write_levels(out: &mut String, levels: &[(Consistency, LevelStats)], rtt: u64) {
    let mut errors = Vec::new();
    for (level, stats) in levels {
        for (op, h) in [("write", &stats.writes), ("read", &stats.reads)] {
            if h.is_empty() {
                let _ = writeln!(out, "   {:<14}{:<7}{:>7}", level.name(), op, 0);
                continue;
            }
            let p50 = h.value_at_quantile(0.5) as f64 / 1000.0;
            let over = p50 - rtt as f64;
            let goal = if *level == Consistency::Quorum {
                if over <= GOAL_MARGIN_MS {
                    "met"
                } else {
                    "MISSED"
                }
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "   {:<14}{:<7}{:>7}{:>9}{:>9}{:>9}{:>11.1}   {goal}",
                level.name(),
                op,
                h.len(),
                ms(h.value_at_quantile(0.5)),
                ms(h.value_at_quantile(0.99)),
                ms(h.max()),
                over
            );
        }
        if let Some(e) = &stats.first_error {
            errors.push(format!("   {}: {} failed, first: {e}", level.name(), stats.errors));
        }
    }
    for e in errors {
        *out += &e;
        out.push('\n');
    }
}

/// The report's table of causal hand-offs per other region, beside the one-way delay from `home`.
fn write_handoffs(out: &mut String, cluster: &GeoCluster, home: &str, handoffs: &[Handoffs]) {
    let _ = writeln!(
        out,
        "   causal hand-off: causal write in {home} (session token carried), causal read in another region; \
         time from the write's ack until the read is served (≈ replication lag + one local read):"
    );
    let _ = writeln!(
        out,
        "   {:<12}{:>7}{:>9}{:>9}{:>9}{:>10}{:>8}   NOTE",
        "TO", "COUNT", "P50 ms", "P99 ms", "MAX ms", "ONE-WAY", "ERRORS"
    );
    for Handoffs { region, served: h, errors, first_error } in handoffs {
        let (p50, p99, max) = if h.is_empty() {
            ("-".into(), "-".into(), "-".into())
        } else {
            (ms(h.value_at_quantile(0.5)), ms(h.value_at_quantile(0.99)), ms(h.max()))
        };
        let _ = writeln!(
            out,
            "   {:<12}{:>7}{:>9}{:>9}{:>9}{:>10}{:>8}   {}",
            region,
            h.len(),
            p50,
            p99,
            max,
            cluster.one_way_ms(home, region),
            errors,
            first_error.as_deref().unwrap_or("")
        );
    }
}

/// Round trips of `count` sequential 32-byte datagrams to a local UDP echo through a relay that
/// delays each direction by `one_way` ± the demo's jitter, as the links do.
async fn udp_echo_rtt(one_way: Duration, count: u64) -> anyhow::Result<Histogram<u64>> {
    let echo = tokio::net::UdpSocket::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
    let relay = meridian_wan::relay::Relay::start_seeded(echo.local_addr()?, 7)?;
    relay.set(meridian_wan::relay::Impairment::delay(one_way).with_jitter(crate::demo::LINK_JITTER));
    let echo_task = tokio::spawn(async move {
        let mut buf = [0u8; 64];
        while let Ok((len, from)) = echo.recv_from(&mut buf).await {
            let _ = echo.send_to(&buf[..len], from).await;
        }
    });
    let client = tokio::net::UdpSocket::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
    client.connect(relay.local_addr()).await?;
    let mut h = histogram();
    let mut buf = [0u8; 64];
    for i in 0..count.max(1) {
        let mut ping = [0u8; 32];
        ping[..8].copy_from_slice(&i.to_le_bytes());
        let started = Instant::now();
        client.send(&ping).await?;
        // Skip stale replies of earlier pings that timed out.
        let got = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                let len = client.recv(&mut buf).await?;
                if len >= 8 && buf[..8] == i.to_le_bytes() {
                    return std::io::Result::Ok(());
                }
            }
        })
        .await;
        if matches!(got, Ok(Ok(()))) {
            record(&mut h, started.elapsed());
        }
    }
    echo_task.abort();
    drop(relay);
    anyhow::ensure!(!h.is_empty(), "no UDP echo came back through the test relay");
    Ok(h)
}

fn fail(stats: &mut LevelStats, error: String) {
    stats.errors += 1;
    stats.first_error.get_or_insert(error);
}
