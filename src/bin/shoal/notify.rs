//! systemd readiness notification (`sd_notify`, `Type=notify` in `docs/deploy/shoal.service`):
//! `READY=1` once `shoal up` serves, `STOPPING=1` when it begins to drain.
//!
//! Each is one datagram to the Unix socket named by `$NOTIFY_SOCKET` (a path, or `@name` in the
//! abstract namespace). Without the variable (not started by systemd as `Type=notify`) they do
//! nothing; a failure to send is logged, never fatal: the service runs either way.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;

/// Tells systemd the service is up (after the listeners are bound and the shards registered).
pub fn ready() {
    send("READY=1");
}

/// Tells systemd the service is shutting down (when the drain begins).
pub fn stopping() {
    send("STOPPING=1");
}

fn send(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = notify(&socket, state) {
        tracing::warn!(error = %e, state, "cannot notify systemd");
    }
}

/// Sends `state` (`KEY=VALUE` lines) to the notification socket `socket`.
fn notify(socket: &OsStr, state: &str) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    match socket.as_bytes().strip_prefix(b"@") {
        Some(name) => abstract_send(&sock, name, state),
        None => sock.send_to(state.as_bytes(), Path::new(socket)).map(drop),
    }
}

#[cfg(target_os = "linux")]
fn abstract_send(sock: &UnixDatagram, name: &[u8], state: &str) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    sock.send_to_addr(state.as_bytes(), &addr).map(drop)
}

#[cfg(not(target_os = "linux"))]
fn abstract_send(_: &UnixDatagram, _: &[u8], _: &str) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "abstract socket names are Linux only",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_arrives_as_one_datagram_at_a_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        notify(path.as_os_str(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn an_at_sign_names_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("shoal-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        notify(OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn a_missing_socket_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        assert!(notify(dir.path().join("none").as_os_str(), "READY=1").is_err());
    }
}
