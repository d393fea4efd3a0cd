//! Listening sockets. Every shard binds every configured address with
//! SO_REUSEPORT so the kernel spreads accepts over the shards.

use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddr;

fn socket_for(addr: &SocketAddr) -> io::Result<Socket> {
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_port(true)?;
    s.set_reuse_address(true)?;
    s.set_cloexec(true)?;
    Ok(s)
}

/// A bound, listening socket with the configured backlog (glommio's own
/// `bind` hard-codes 1024).
pub fn listen(addr: SocketAddr, backlog: u32) -> io::Result<Socket> {
    let s = socket_for(&addr)?;
    s.bind(&addr.into())?;
    s.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(s)
}

/// Resolves a port of 0 to one free port every shard can then bind: the
/// returned socket is bound (not listening) and keeps the port reserved
/// until it is dropped, after all shards have bound.
pub fn reserve(addr: SocketAddr) -> io::Result<(Option<Socket>, SocketAddr)> {
    if addr.port() != 0 {
        return Ok((None, addr));
    }
    let s = socket_for(&addr)?;
    s.bind(&addr.into())?;
    let bound = s
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("not an inet address"))?;
    Ok((Some(s), bound))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_port_can_be_bound_by_every_shard() {
        let (guard, addr) = reserve("127.0.0.1:0".parse().unwrap()).unwrap();
        assert!(guard.is_some());
        assert_ne!(addr.port(), 0);
        let a = listen(addr, 16).unwrap();
        let b = listen(addr, 16).unwrap();
        assert_eq!(a.local_addr().unwrap().as_socket().unwrap(), addr);
        assert_eq!(b.local_addr().unwrap().as_socket().unwrap(), addr);
        std::net::TcpStream::connect(addr).unwrap();
    }
}
