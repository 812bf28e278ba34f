//! UDP echo: UDPEchoDiagnostics and ServerSelection over UDP Echo, as the client of TR-143
//! Appendix A.1's UDP Echo Plus. A plain RFC 862 echo server works too: it sends our own
//! fields back (TestRespSN and the time stamps then read 0).
//!
//! One datagram at a time: each waits for its answer (or Timeout), the next leaves
//! InterTransmissionTime after the previous one was sent. A datagram shorter than the 20-byte
//! Echo Plus header is not sent: DataBlockSize below 20 sends 20 bytes.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

use super::{Ctx, Kind, Outcome, fail, micros, spread};
use crate::util::time::UNKNOWN_TIME;

/// Bytes of the Echo Plus header.
pub(super) const HEADER: usize = 20;

/// The UDP Echo Plus fields (TR-143 A.1.4), big-endian at the start of the datagram.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct EchoPlus {
    pub gen_sn: u32,
    pub resp_sn: u32,
    pub recv_ts: u32,
    pub reply_ts: u32,
    pub failures: u32,
}

impl EchoPlus {
    /// A request: TestGenSN, the server's fields zero, zero padding up to `size`.
    pub(super) fn request(gen_sn: u32, size: usize) -> Vec<u8> {
        let mut p = vec![0; size.max(HEADER)];
        p[..4].copy_from_slice(&gen_sn.to_be_bytes());
        p
    }

    pub(super) fn parse(p: &[u8]) -> Option<EchoPlus> {
        let f = |i: usize| {
            Some(u32::from_be_bytes(
                p.get(i * 4..i * 4 + 4)?.try_into().ok()?,
            ))
        };
        Some(EchoPlus {
            gen_sn: f(0)?,
            resp_sn: f(1)?,
            recv_ts: f(2)?,
            reply_ts: f(3)?,
            failures: f(4)?,
        })
    }
}

/// One datagram of the test.
pub(super) struct Pkt {
    pub sn: u32,
    pub sent: Instant,
    pub got: Option<(Instant, EchoPlus)>,
}

impl Pkt {
    pub(super) fn rtt(&self) -> Option<u64> {
        self.got.map(|(t, _)| micros(t - self.sent))
    }
}

/// `n` datagrams to `dst`. Fails only when no socket can be set up: an unreachable target is
/// unanswered datagrams.
pub(super) async fn echo(
    cx: &Ctx<'_>,
    dst: SocketAddr,
    n: u32,
    timeout: Duration,
    size: usize,
    gap: Duration,
) -> io::Result<Vec<Pkt>> {
    let any: SocketAddr = if dst.is_ipv6() {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(any).await?;
    super::tune(&sock, dst.is_ipv6(), cx.dev, cx.dscp(), 0)?;
    let connected = sock.connect(dst).await;
    if let Err(e) = &connected {
        tracing::debug!("UDP echo to {dst}: {e}");
    }
    let mut buf = [0u8; 2048];
    let mut out = Vec::new();
    for sn in 1..=n {
        let sent = Instant::now();
        let mut got = None;
        if connected.is_ok() && sock.send(&EchoPlus::request(sn, size)).await.is_ok() {
            let answer = async {
                loop {
                    // An error here is an ICMP Port Unreachable (ECONNREFUSED) or worse: lost.
                    let len = sock.recv(&mut buf).await.ok()?;
                    let p = &buf[..len];
                    if p.get(..4) == Some(&sn.to_be_bytes()[..]) {
                        let e = EchoPlus::parse(p).unwrap_or(EchoPlus {
                            gen_sn: sn,
                            ..EchoPlus::default()
                        });
                        return Some((Instant::now(), e));
                    }
                }
            };
            got = tokio::time::timeout(timeout, answer).await.ok().flatten();
        }
        out.push(Pkt { sn, sent, got });
        if sn < n {
            tokio::time::sleep_until((sent + gap).into()).await;
        }
    }
    Ok(out)
}

pub(super) async fn echo_test(cx: &Ctx<'_>) -> Outcome {
    let k = Kind::UDPEcho;
    let host = cx.inp.str("Host");
    let port = cx.inp.num("Port", 7, 1, 65535) as u16;
    let Some(dst) = cx.resolve(host, port).await else {
        return fail(k, "Error_CannotResolveHostName", format!("{host:?}"));
    };
    let n = cx.repetitions(1);
    let size = cx.inp.num("DataBlockSize", 24, 1, 65535) as usize;
    let gap = Duration::from_millis(cx.inp.num("InterTransmissionTime", 1000, 1, 65535).into());
    let pkts = match echo(cx, dst, n, cx.inp.ms("Timeout", 1000), size, gap).await {
        Ok(p) => p,
        Err(e) => return fail(k, "Error_Internal", e),
    };
    let rtts: Vec<u64> = pkts.iter().filter_map(Pkt::rtt).collect();
    let (lo, avg, hi) = spread(&rtts);
    let mut o = Outcome::new(k, "Complete");
    o.set("IPAddressUsed", dst.ip());
    o.set("SuccessCount", rtts.len());
    o.set("FailureCount", pkts.len() - rtts.len());
    o.set("AverageResponseTime", avg);
    o.set("MinimumResponseTime", lo);
    o.set("MaximumResponseTime", hi);
    if cx.inp.flag("EnableIndividualPacketResults") {
        let row = |p: &Pkt| {
            let e = p.got.map(|g| g.1).unwrap_or_default();
            vec![
                ("PacketSuccess", p.got.is_some().to_string()),
                ("PacketSendTime", cx.clock.dt(p.sent)),
                (
                    "PacketReceiveTime",
                    p.got
                        .map_or(UNKNOWN_TIME.to_string(), |(t, _)| cx.clock.dt(t)),
                ),
                ("TestGenSN", p.sn.to_string()),
                ("TestRespSN", e.resp_sn.to_string()),
                ("TestRespRcvTimeStamp", e.recv_ts.to_string()),
                ("TestRespReplyTimeStamp", e.reply_ts.to_string()),
                ("TestRespReplyFailureCount", e.failures.to_string()),
            ]
        };
        o.table(pkts.iter().map(row).collect());
    }
    o
}
