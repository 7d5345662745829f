//! UDP sockets with raised buffers (the 208 KiB default drops Initials under bursts).

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};

/// Binds a UDP socket at `addr` with send and receive buffers of (at least asking for) `buffer`
/// bytes. The kernel may cap the size; that is not an error.
pub fn bind_udp(addr: SocketAddr, buffer: usize) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Dual-stack where the address is unspecified; harmless otherwise.
        let _ = socket.set_only_v6(false);
    }
    let _ = socket.set_recv_buffer_size(buffer);
    let _ = socket.set_send_buffer_size(buffer);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// A quinn server endpoint on its own socket (see [`bind_udp`]); returns it with its bound
/// address (the port is chosen by the kernel when `addr` has port 0).
pub fn server_endpoint(
    addr: SocketAddr,
    buffer: usize,
    endpoint_config: quinn::EndpointConfig,
    server_config: quinn::ServerConfig,
) -> std::io::Result<(quinn::Endpoint, SocketAddr)> {
    screened_server_endpoint(addr, buffer, endpoint_config, server_config, None)
}

/// [`server_endpoint`] whose received datagrams pass `screen` (counted, never changed).
pub fn screened_server_endpoint(
    addr: SocketAddr,
    buffer: usize,
    endpoint_config: quinn::EndpointConfig,
    server_config: quinn::ServerConfig,
    screen: Option<Screen>,
) -> std::io::Result<(quinn::Endpoint, SocketAddr)> {
    use quinn::Runtime;
    let runtime = Arc::new(quinn::TokioRuntime);
    let socket = runtime.wrap_udp_socket(bind_udp(addr, buffer)?)?;
    let socket: Arc<dyn quinn::AsyncUdpSocket> = match screen {
        Some(screen) => Arc::new(Screened {
            inner: socket,
            screen,
        }),
        None => socket,
    };
    let endpoint = quinn::Endpoint::new_with_abstract_socket(
        endpoint_config,
        Some(server_config),
        socket,
        runtime,
    )?;
    let local = endpoint.local_addr()?;
    Ok((endpoint, local))
}

/// Accepts an incoming connection with its own `config` and returns it before the handshake
/// completes when the client sent 0-RTT data, so the server can answer in 0.5-RTT; otherwise
/// after the handshake.
/// Also returns, for a connection handed over before its handshake completed, the future that
/// resolves when it completes (or the connection dies).
pub async fn accept_early_with(
    incoming: quinn::Incoming,
    config: Arc<quinn::ServerConfig>,
) -> Result<(quinn::Connection, Option<quinn::ZeroRttAccepted>), quinn::ConnectionError> {
    match incoming.accept_with(config)?.into_0rtt() {
        Ok((conn, accepted)) => Ok((conn, Some(accepted))),
        Err(connecting) => Ok((connecting.await?, None)),
    }
}

/// [`accept_early_with`] the endpoint's default configuration.
pub async fn accept_early(
    incoming: quinn::Incoming,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    early(incoming.accept()?).await
}

async fn early(connecting: quinn::Connecting) -> Result<quinn::Connection, quinn::ConnectionError> {
    match connecting.into_0rtt() {
        Ok((conn, _)) => Ok(conn),
        Err(connecting) => connecting.await,
    }
}

/// Counts the datagrams quinn would drop unread because their header does not parse: a long
/// header cut before its connection IDs end, a CID length over 20, a short header shorter
/// than this endpoint's CIDs, an empty datagram. quinn drops them itself; this only counts.
#[derive(Debug, Clone)]
pub struct Screen {
    /// The length of this endpoint's CIDs (what a short header carries).
    pub cid_len: usize,
    pub malformed: Arc<std::sync::atomic::AtomicU64>,
}

impl Screen {
    /// Whether `d`'s header cannot be parsed (RFC 9000 §17: invariant fields only).
    pub fn malformed(&self, d: &[u8]) -> bool {
        let Some(&first) = d.first() else {
            return true;
        };
        if first & 0x80 == 0 {
            return d.len() < 1 + self.cid_len;
        }
        // Long header: flags, version (4), DCID length, DCID, SCID length, SCID.
        let Some(&dcid) = d.get(5) else {
            return true;
        };
        let dcid = usize::from(dcid);
        let Some(&scid) = d.get(6 + dcid) else {
            return true;
        };
        let scid = usize::from(scid);
        dcid > 20 || scid > 20 || d.len() < 7 + dcid + scid
    }
}

/// A socket whose received datagrams pass a [`Screen`] before quinn reads them.
#[derive(Debug)]
struct Screened {
    inner: Arc<dyn quinn::AsyncUdpSocket>,
    screen: Screen,
}

impl quinn::AsyncUdpSocket for Screened {
    fn create_io_poller(self: Arc<Self>) -> std::pin::Pin<Box<dyn quinn::UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &quinn::udp::Transmit) -> std::io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut std::task::Context,
        bufs: &mut [std::io::IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = self.inner.poll_recv(cx, bufs, meta);
        if let std::task::Poll::Ready(Ok(n)) = &polled {
            let mut bad = 0;
            for (buf, m) in bufs.iter().zip(meta.iter()).take(*n) {
                let stride = m.stride.max(1);
                for d in buf[..m.len.min(buf.len())].chunks(stride) {
                    bad += u64::from(self.screen.malformed(d));
                }
            }
            if bad > 0 {
                self.screen
                    .malformed
                    .fetch_add(bad, std::sync::atomic::Ordering::Relaxed);
            }
        }
        polled
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_screen_counts_headers_quinn_cannot_parse() {
        let s = Screen {
            cid_len: 8,
            malformed: Arc::default(),
        };
        // A long header cut after its DCID length, one whose CIDs are too long, an empty
        // datagram, a short header shorter than a CID.
        for bad in [
            &[0xc0, 0, 0, 0, 1, 20][..],
            &[0xc0, 0, 0, 0, 1, 21, 0],
            &[],
            &[0x40, 1, 2, 3],
        ] {
            assert!(s.malformed(bad), "{bad:?}");
        }
        let mut initial = vec![0xc0, 0, 0, 0, 1, 8];
        initial.extend_from_slice(&[7; 8]);
        initial.push(4);
        initial.extend_from_slice(&[9; 4]);
        assert!(!s.malformed(&initial));
        assert!(s.malformed(&initial[..initial.len() - 1]), "SCID cut short");
        assert!(!s.malformed(&[0x40; 9]), "a short header with a whole CID");
    }
}
