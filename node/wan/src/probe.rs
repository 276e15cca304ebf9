//! The readiness probe of a local node: `GET /readyz` over raw TCP, with no HTTP client library.
//!
//! The node crate's supervisor (`meridian region start`, `meridian demo`, `meridian bench-geo`) polls
//! it until every node is ready; the geo-tests' multi-region harness polls it after starting or
//! restarting a node.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Whether `GET /readyz` answers 200 (bounded to one second).
pub async fn probe_ready(http: SocketAddr) -> bool {
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(http).await?;
        let request = format!("GET /readyz HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await?;
        Ok::<bool, std::io::Error>(head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200"))
    };
    matches!(tokio::time::timeout(Duration::from_secs(1), probe).await, Ok(Ok(true)))
}
