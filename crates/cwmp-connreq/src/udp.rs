//! TR-111 UDP connection requests (TR-069 Annex G) sent from a socket of this host. Behind a
//! port-restricted NAT only the STUN server the CPE keeps its binding with gets through: send
//! through its API then ([`crate::stunsrv::request_cr`]).

use std::net::SocketAddr;

use cwmp_proto::connreq::udpcr;
use cwmp_proto::util::codec::{random_bytes, to_hex};

/// What [`send`] sent.
#[derive(Debug, Clone)]
pub struct Sent {
    /// The message's `id`.
    pub id: u64,
    /// Datagram size.
    pub bytes: usize,
    pub to: SocketAddr,
    /// The local address it was sent from.
    pub from: String,
}

/// Sends `copies` identical signed UDP connection requests to `to` (`HOST:PORT`, the CPE's
/// UDPConnectionRequestAddress) from `from` (default: an ephemeral port), signed with the CPE's
/// ConnectionRequestUsername / Password.
pub async fn send(
    to: &str,
    from: Option<&str>,
    user: &str,
    pass: &str,
    copies: u32,
) -> Result<Sent, String> {
    let dest: SocketAddr = tokio::net::lookup_host(to)
        .await
        .map_err(|e| format!("{to}: {e}"))?
        .find(|a| a.is_ipv4())
        .ok_or_else(|| format!("{to}: no IPv4 address"))?;
    let bind = from.unwrap_or("0.0.0.0:0");
    let sock = tokio::net::UdpSocket::bind(bind)
        .await
        .map_err(|e| format!("bind {bind}: {e}"))?;
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let r = random_bytes::<12>();
    let id = u64::from(u32::from_be_bytes([r[0], r[1], r[2], r[3]]));
    let cn = to_hex(&r[4..]);
    let authority = if to.contains(':') {
        to.to_string()
    } else {
        udpcr::authority(dest)
    };
    let d = udpcr::build_udp_cr(&authority, ts, id, user, &cn, pass);
    for _ in 0..copies {
        sock.send_to(&d, dest)
            .await
            .map_err(|e| format!("send to {dest}: {e}"))?;
    }
    Ok(Sent {
        id,
        bytes: d.len(),
        to: dest,
        from: sock.local_addr().map(|a| a.to_string()).unwrap_or_default(),
    })
}
