//! Batched UDP I/O for the STUN server's hot path: up to [`BATCH`] datagrams read with one
//! `recvmmsg` and the answers written with one `sendmmsg` (Linux), so that a keep-alive costs a
//! fraction of a system call each way. Elsewhere, one datagram per call (`recvfrom` /
//! `sendto`). Called from inside `tokio::net::UdpSocket::try_io`, non-blocking.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

use tokio::net::UdpSocket;

/// Datagrams per system call.
pub const BATCH: usize = 32;
/// Largest datagram read whole (longer ones are cut, and then refused by the parser).
const SLOT: usize = 2048;

/// The receive side: [`BATCH`] buffers and their senders.
pub struct RecvBatch {
    bufs: Vec<[u8; SLOT]>,
    lens: [usize; BATCH],
    froms: [SocketAddr; BATCH],
}

/// Answers waiting to be sent, bounded by one batch of requests. Their buffers are kept and
/// reused (no allocation per answer once warm).
#[derive(Default)]
pub struct SendQueue {
    out: Vec<(Vec<u8>, SocketAddr)>,
    /// Answers queued: `out[..len]`; `out[len..]` are spare buffers.
    len: usize,
    sent: usize,
}

fn to_socketaddr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a = unsafe { &*(ss as *const libc::sockaddr_storage as *const libc::sockaddr_in) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a = unsafe { &*(ss as *const libc::sockaddr_storage as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn from_socketaddr(a: SocketAddr, ss: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match a {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr.
            let s = unsafe { &mut *(ss as *mut libc::sockaddr_storage as *mut libc::sockaddr_in) };
            s.sin_family = libc::AF_INET as libc::sa_family_t;
            s.sin_port = v4.port().to_be();
            s.sin_addr = libc::in_addr {
                s_addr: u32::from(*v4.ip()).to_be(),
            };
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(v6) => {
            // SAFETY: as above.
            let s = unsafe { &mut *(ss as *mut libc::sockaddr_storage as *mut libc::sockaddr_in6) };
            s.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            s.sin6_port = v6.port().to_be();
            s.sin6_flowinfo = v6.flowinfo();
            s.sin6_addr = libc::in6_addr {
                s6_addr: v6.ip().octets(),
            };
            s.sin6_scope_id = v6.scope_id();
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// Asks for socket buffers of `bytes` each way (the kernel caps them at `net.core.rmem_max` /
/// `wmem_max`): a burst of keep-alives larger than the default receive buffer (about 300
/// datagrams) would otherwise be dropped before the server reads it. Best effort.
pub fn set_buffers(sock: &UdpSocket, bytes: usize) {
    let v = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    for opt in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        // SAFETY: a valid descriptor and a c_int option value of the size given.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

impl Default for RecvBatch {
    fn default() -> Self {
        RecvBatch {
            bufs: vec![[0u8; SLOT]; BATCH],
            lens: [0; BATCH],
            froms: [SocketAddr::from(([0, 0, 0, 0], 0)); BATCH],
        }
    }
}

impl RecvBatch {
    /// Datagram `i` of the last [`RecvBatch::recv`] (empty when its sender's family is
    /// unknown).
    pub fn get(&self, i: usize) -> (&[u8], SocketAddr) {
        (&self.bufs[i][..self.lens[i]], self.froms[i])
    }

    /// Reads what is queued, at most [`BATCH`]; `WouldBlock` when nothing is.
    #[cfg(target_os = "linux")]
    pub fn recv(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        // SAFETY: zeroed sockaddr_storage / iovec / mmsghdr are valid values; every pointer
        // set below points into `self` or these locals, which outlive the call.
        let mut addrs: [libc::sockaddr_storage; BATCH] = unsafe { std::mem::zeroed() };
        let mut iov: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        let mut hdr: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for i in 0..BATCH {
            iov[i].iov_base = self.bufs[i].as_mut_ptr().cast();
            iov[i].iov_len = SLOT;
            hdr[i].msg_hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
            hdr[i].msg_hdr.msg_namelen =
                std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdr[i].msg_hdr.msg_iov = &mut iov[i];
            hdr[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: `hdr` holds BATCH initialised headers.
        let n = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                hdr.as_mut_ptr(),
                BATCH as _,
                libc::MSG_DONTWAIT as _,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for i in 0..n {
            match to_socketaddr(&addrs[i]) {
                Some(a) => {
                    self.lens[i] = (hdr[i].msg_len as usize).min(SLOT);
                    self.froms[i] = a;
                }
                None => self.lens[i] = 0,
            }
        }
        Ok(n)
    }

    #[cfg(not(target_os = "linux"))]
    pub fn recv(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        // SAFETY: as for recvmmsg, one datagram.
        let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let n = unsafe {
            libc::recvfrom(
                sock.as_raw_fd(),
                self.bufs[0].as_mut_ptr().cast(),
                SLOT,
                libc::MSG_DONTWAIT,
                (&mut ss as *mut libc::sockaddr_storage).cast(),
                &mut len,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        match to_socketaddr(&ss) {
            Some(a) => {
                self.lens[0] = (n as usize).min(SLOT);
                self.froms[0] = a;
            }
            None => self.lens[0] = 0,
        }
        Ok(1)
    }
}

impl SendQueue {
    /// The buffer of the next answer (empty): write it, then [`SendQueue::commit`] it, or
    /// leave it for the next one.
    pub fn slot(&mut self) -> &mut Vec<u8> {
        if self.len == self.out.len() {
            self.out
                .push((Vec::with_capacity(128), SocketAddr::from(([0, 0, 0, 0], 0))));
        }
        let b = &mut self.out[self.len].0;
        b.clear();
        b
    }

    /// Queues what [`SendQueue::slot`] holds, for `to`.
    pub fn commit(&mut self, to: SocketAddr) {
        if self.len < self.out.len() {
            self.out[self.len].1 = to;
            self.len += 1;
        }
    }

    /// Whether answers wait.
    pub fn pending(&self) -> bool {
        self.sent < self.len
    }

    /// Drops the next answer (it cannot be sent).
    pub fn skip_one(&mut self) {
        self.sent += 1;
        self.tidy();
    }

    fn tidy(&mut self) {
        if self.sent >= self.len {
            self.len = 0;
            self.sent = 0;
        }
    }

    /// Sends what waits, as much as the socket takes; `WouldBlock` when it takes nothing.
    #[cfg(target_os = "linux")]
    pub fn send(&mut self, sock: &UdpSocket) -> io::Result<()> {
        while self.pending() {
            let chunk = &self.out[self.sent..self.len.min(self.sent + BATCH)];
            // SAFETY: as in `RecvBatch::recv`; the iovecs point into `self.out`, which is not
            // touched during the call (the kernel only reads them).
            let mut addrs: [libc::sockaddr_storage; BATCH] = unsafe { std::mem::zeroed() };
            let mut iov: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
            let mut hdr: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
            for (i, (bytes, to)) in chunk.iter().enumerate() {
                iov[i].iov_base = bytes.as_ptr() as *mut libc::c_void;
                iov[i].iov_len = bytes.len();
                hdr[i].msg_hdr.msg_namelen = from_socketaddr(*to, &mut addrs[i]);
                hdr[i].msg_hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
                hdr[i].msg_hdr.msg_iov = &mut iov[i];
                hdr[i].msg_hdr.msg_iovlen = 1;
            }
            // SAFETY: `hdr` holds `chunk.len()` initialised headers.
            let n = unsafe {
                libc::sendmmsg(
                    sock.as_raw_fd(),
                    hdr.as_mut_ptr(),
                    chunk.len() as _,
                    libc::MSG_DONTWAIT as _,
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            self.sent += n as usize;
            self.tidy();
        }
        Ok(())
    }

    #[cfg(not(target_os = "linux"))]
    pub fn send(&mut self, sock: &UdpSocket) -> io::Result<()> {
        while self.pending() {
            let (bytes, to) = &self.out[self.sent];
            let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            let len = from_socketaddr(*to, &mut ss);
            // SAFETY: `ss` holds a valid address of `len` bytes.
            let n = unsafe {
                libc::sendto(
                    sock.as_raw_fd(),
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    libc::MSG_DONTWAIT,
                    (&ss as *const libc::sockaddr_storage).cast(),
                    len,
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            self.sent += 1;
            self.tidy();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_through_sockaddr_storage() {
        for a in ["10.1.2.3:3478", "[2001:db8::7]:9"] {
            let a: SocketAddr = a.parse().unwrap();
            // SAFETY: zeroed storage is valid.
            let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            from_socketaddr(a, &mut ss);
            assert_eq!(to_socketaddr(&ss), Some(a));
        }
    }
}
