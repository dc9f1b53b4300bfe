//! The systemd notification protocol (sd_notify): tells a `Type=notify` service
//! manager when the engine is ready, reloading and stopping. Without `NOTIFY_SOCKET`
//! (not started by systemd) each call does nothing.

/// Both addresses listen: the service is up.
pub fn ready() {
    send("READY=1");
}

/// Draining after SIGTERM.
pub fn stopping() {
    send("STOPPING=1");
}

/// A reload (SIGHUP) begins; [`ready`] ends it. systemd wants the monotonic clock's
/// time with it.
pub fn reloading() {
    send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
}

#[cfg(unix)]
fn monotonic_usec() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the struct we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) } != 0 {
        return 0;
    }
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000
        + u64::try_from(now.tv_nsec).unwrap_or(0) / 1_000
}

#[cfg(not(unix))]
fn monotonic_usec() -> u64 {
    0
}

#[cfg(target_os = "linux")]
fn send(state: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
    // "@name" is an abstract socket; anything else a path.
    let address = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name),
        None => SocketAddr::from_pathname(&path),
    };
    let sent = address.and_then(|address| {
        let socket = UnixDatagram::unbound()?;
        socket.send_to_addr(state.as_bytes(), &address)
    });
    if let Err(e) = sent {
        tracing::warn!("cannot tell the service manager {state:?}: {e}");
    }
}

#[cfg(not(target_os = "linux"))]
fn send(_state: &str) {}
