//! Regions as the client sees them: a named group of endpoints, and the order to try them in.
//!
//! Every region accepts every request (the cluster is leaderless), so region routing is purely a
//! latency and availability choice: requests go to the *current* region, nearest first, and move to
//! the next one in preference order when the current one cannot be reached (the rules are in
//! [`crate::transport`]'s module docs and on [`ClientBuilder::region`](crate::ClientBuilder::region)).

use std::time::Duration;

/// The name of the region formed by the endpoints given with plain
/// [`ClientBuilder::endpoint`](crate::ClientBuilder::endpoint) calls.
///
/// ```no_run
/// # async fn example() -> Result<(), meridian_client::Error> {
/// let client = meridian_client::Client::builder()
///     .endpoint("127.0.0.1:7400")
///     .ca_cert_file("node.crt")
///     .connect()
///     .await?;
/// assert_eq!(client.current_region(), meridian_client::DEFAULT_REGION);
/// # Ok(()) }
/// ```
pub const DEFAULT_REGION: &str = "default";

/// How long a client that failed over away from its preferred region waits before it tries the
/// preferred region(s) again, unless [`ClientBuilder::failback_interval`](crate::ClientBuilder::failback_interval)
/// says otherwise (10 s).
///
/// ```no_run
/// assert_eq!(meridian_client::DEFAULT_FAILBACK_INTERVAL.as_secs(), 10);
/// ```
pub const DEFAULT_FAILBACK_INTERVAL: Duration = Duration::from_secs(10);

/// One region of a [`Client`](crate::Client), as listed by [`Client::regions`](crate::Client::regions)
/// in preference order.
///
/// ```no_run
/// # async fn example(client: meridian_client::Client) {
/// for region in client.regions() {
///     match region.rtt {
///         Some(rtt) => println!("{} ({} nodes): {} ms", region.name, region.endpoints.len(), rtt.as_millis()),
///         None => println!("{}: not measured", region.name),
///     }
/// }
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionInfo {
    /// The region's name, as given to [`ClientBuilder::region`](crate::ClientBuilder::region)
    /// ([`DEFAULT_REGION`] for plain endpoints).
    pub name: String,
    /// The region's node addresses, in the order given.
    pub endpoints: Vec<String>,
    /// The QUIC handshake time measured to the region's fastest node when the client connected, if
    /// it was measured (only without [`ClientBuilder::prefer_region`](crate::ClientBuilder::prefer_region),
    /// with more than one region) and the region answered in time.
    pub rtt: Option<Duration>,
}

/// A region declared to the builder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RegionConfig {
    pub(crate) name: String,
    pub(crate) endpoints: Vec<String>,
}

/// A region's place in the preference order: its index among the declared regions, and its
/// measured handshake time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ranked {
    pub(crate) region: usize,
    pub(crate) rtt: Option<Duration>,
}

/// The preference order of `count` declared regions: the preferred one (if any) first, then the
/// measured ones by handshake time (ties in declaration order), then the unmeasured ones in
/// declaration order.
pub(crate) fn rank(count: usize, preferred: Option<usize>, rtts: &[Option<Duration>]) -> Vec<Ranked> {
    let mut order: Vec<Ranked> =
        (0..count).map(|region| Ranked { region, rtt: rtts.get(region).copied().flatten() }).collect();
    // Stable: equal keys keep declaration order.
    order.sort_by_key(|r| (Some(r.region) != preferred, r.rtt.is_none(), r.rtt));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn regions(order: &[Ranked]) -> Vec<usize> {
        order.iter().map(|r| r.region).collect()
    }

    #[test]
    fn preferred_first_then_by_rtt_then_unmeasured() {
        assert_eq!(regions(&rank(3, None, &[])), [0, 1, 2]);
        assert_eq!(regions(&rank(3, Some(2), &[])), [2, 0, 1]);
        let rtts = [Some(30 * MS), None, Some(10 * MS), Some(30 * MS)];
        assert_eq!(regions(&rank(4, None, &rtts)), [2, 0, 3, 1]);
        assert_eq!(regions(&rank(4, Some(1), &rtts)), [1, 2, 0, 3]);
        let order = rank(4, None, &rtts);
        assert_eq!(order[0], Ranked { region: 2, rtt: Some(10 * MS) });
        assert_eq!(order[3], Ranked { region: 1, rtt: None });
    }
}
