//! The underlay as the kernel sees it: the MTU toward a path's address (the ceiling of its
//! path MTU search), and the WireGuard socket's "don't fragment" setting.
//!
//! The agent's only `unsafe`: two socket options that neither std nor socket2 expose
//! (`getsockopt(IP_MTU / IPV6_MTU)`, `setsockopt` of an int), each a plain libc call on a
//! socket this module owns or borrows, with pointers to locals.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, SockRef, Socket, Type};

use super::routes::FWMARK;

/// The MTU the kernel would use toward `to` from the WireGuard socket: its route's MTU, or
/// its interface's, or a path MTU the kernel learned (the socket is marked like the
/// WireGuard socket, so the route is the underlay's, not the TUN's). `None` if there is no
/// route.
pub fn mtu_toward(to: SocketAddr) -> Option<u16> {
    let socket = Socket::new(Domain::for_address(to), Type::DGRAM, Some(Protocol::UDP)).ok()?;
    // Without CAP_NET_ADMIN the mark is refused; the route is then the unmarked one.
    let _ = socket.set_mark(FWMARK);
    socket.connect(&to.into()).ok()?;
    let (level, name) = if to.is_ipv4() {
        (libc::IPPROTO_IP, libc::IP_MTU)
    } else {
        (libc::IPPROTO_IPV6, libc::IPV6_MTU)
    };
    let mut mtu: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `mtu` and `len` are valid for writes of the sizes given.
    #[allow(unsafe_code)]
    let r = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&mut mtu as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (r == 0 && mtu > 0).then(|| mtu.min(i32::from(u16::MAX)) as u16)
}

/// Sets "don't fragment" on the WireGuard socket, whatever the kernel learned about path
/// MTUs from ICMP (`IP_PMTUDISC_PROBE`, and for IPv6 `IPV6_DONTFRAG` too): a datagram
/// either crosses whole or is lost, which is what size probes measure. (quinn-udp sets the
/// same; set here so the guarantee does not rest on another crate's defaults.)
pub fn set_dont_fragment(socket: &std::net::UdpSocket) -> io::Result<()> {
    let sock = SockRef::from(socket);
    let v6 = socket.local_addr()?.is_ipv6();
    setsockopt(
        &sock,
        libc::IPPROTO_IP,
        libc::IP_MTU_DISCOVER,
        libc::IP_PMTUDISC_PROBE,
    )
    .or_else(|e| if v6 { Ok(()) } else { Err(e) })?;
    if v6 {
        setsockopt(
            &sock,
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_PROBE,
        )?;
        setsockopt(&sock, libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG, 1)?;
    }
    Ok(())
}

fn setsockopt(
    sock: &SockRef<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `value` is a valid c_int for the duration of the call.
    #[allow(unsafe_code)]
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mtu_toward_loopback_is_the_loopback_mtu() {
        // Loopback exists in every namespace, with the kernel's default MTU of 65536.
        let mtu = mtu_toward("127.0.0.1:9".parse().unwrap());
        assert!(mtu.is_some_and(|m| m >= 1500), "{mtu:?}");
    }
}
