//! The underlay as the kernel sees it: the WireGuard socket (dual-stack, "don't fragment"),
//! the MTU toward a path's address (the ceiling of its path MTU search), and the one
//! spelling of addresses: IPv4 peers reach a dual-stack socket as IPv4-mapped IPv6
//! addresses, which [`canonical`] turns back into IPv4 (as maps and candidates spell them)
//! and [`for_socket`] maps again for sending.
//!
//! The agent's only `unsafe`: two socket options that neither std nor socket2 expose
//! (`getsockopt(IP_MTU / IPV6_MTU)`, `setsockopt` of an int), each a plain libc call on a
//! socket this module owns or borrows, with pointers to locals.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, SockRef, Socket, Type};

use super::routes::FWMARK;

/// The WireGuard socket: IPv6 and IPv4 on one port (`[::]:port`, not IPv6-only), or IPv4
/// only where the host has no IPv6.
pub fn bind_dual_stack(port: u16) -> io::Result<std::net::UdpSocket> {
    let v6 = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)).and_then(|s| {
        s.set_only_v6(false)?;
        s.bind(&SocketAddr::from(([0u16; 8], port)).into())?;
        Ok(s)
    });
    match v6 {
        Ok(s) => Ok(s.into()),
        Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
            tracing::info!("no IPv6 on this host; the WireGuard socket is IPv4 only");
            std::net::UdpSocket::bind(("0.0.0.0", port))
        }
        Err(e) => Err(e),
    }
}

/// `addr` as maps spell it: an IPv4-mapped IPv6 address (an IPv4 peer seen through the
/// dual-stack socket) as IPv4.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// `to` as a socket of family `v6` takes it: IPv4 mapped into IPv6 for a dual-stack one.
pub fn for_socket(to: SocketAddr, v6: bool) -> SocketAddr {
    match to {
        SocketAddr::V4(v4) if v6 => SocketAddr::from((v4.ip().to_ipv6_mapped(), v4.port())),
        _ => to,
    }
}

/// The MTU the kernel would use toward `to` from the WireGuard socket: its route's MTU, or
/// its interface's, or a path MTU the kernel learned (the socket is marked like the
/// WireGuard socket, so the route is the underlay's, not the TUN's). `None` if there is no
/// route.
pub fn mtu_toward(to: SocketAddr) -> Option<u16> {
    MtuLookup::default().toward(to)
}

/// Asks the kernel for the MTU toward many addresses ([`mtu_toward`]) with one marked UDP
/// socket per address family, connected to each address in turn: two syscalls per address
/// rather than five (the shell asks for every path of every peer each second).
#[derive(Default)]
pub struct MtuLookup {
    v4: Option<Socket>,
    v6: Option<Socket>,
}

impl MtuLookup {
    /// The MTU toward `to`, `None` if there is no route.
    pub fn toward(&mut self, to: SocketAddr) -> Option<u16> {
        let slot = if to.is_ipv4() {
            &mut self.v4
        } else {
            &mut self.v6
        };
        if slot.is_none() {
            let socket =
                Socket::new(Domain::for_address(to), Type::DGRAM, Some(Protocol::UDP)).ok()?;
            // Without CAP_NET_ADMIN the mark is refused; the route is then the unmarked one.
            let _ = socket.set_mark(FWMARK);
            *slot = Some(socket);
        }
        let socket = slot.as_ref()?;
        // Connecting again replaces the association and the route; a failed connect
        // leaves none behind.
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
    fn ipv4_peers_are_spelled_as_ipv4_and_mapped_only_for_a_dual_stack_socket() {
        let v4: SocketAddr = "192.0.2.1:51820".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:51820".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:51820".parse().unwrap();
        assert_eq!(canonical(mapped), v4);
        assert_eq!(canonical(v4), v4);
        assert_eq!(canonical(v6), v6);
        assert_eq!(for_socket(v4, true), mapped);
        assert_eq!(for_socket(v4, false), v4);
        assert_eq!(for_socket(v6, true), v6);
    }

    #[test]
    fn one_lookup_serves_many_addresses_and_survives_one_without_a_route() {
        let mut lookup = MtuLookup::default();
        let lo = lookup.toward("127.0.0.1:9".parse().unwrap());
        assert!(lo.is_some_and(|m| m >= 1500), "{lo:?}");
        // Unroutable everywhere (0.0.0.0/8 as a destination is refused by connect).
        assert_eq!(lookup.toward("0.0.0.1:9".parse().unwrap()), None);
        // The same socket, connected again elsewhere, still answers.
        assert_eq!(lookup.toward("127.0.0.2:10".parse().unwrap()), lo);
        assert_eq!(lookup.toward("127.0.0.1:9".parse().unwrap()), lo);
    }

    #[test]
    fn the_mtu_toward_loopback_is_the_loopback_mtu() {
        // Loopback exists in every namespace, with the kernel's default MTU of 65536.
        let mtu = mtu_toward("127.0.0.1:9".parse().unwrap());
        assert!(mtu.is_some_and(|m| m >= 1500), "{mtu:?}");
    }
}
