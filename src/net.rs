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
    let socket = bind_udp(addr, buffer)?;
    let endpoint = quinn::Endpoint::new(
        endpoint_config,
        Some(server_config),
        socket,
        Arc::new(quinn::TokioRuntime),
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
