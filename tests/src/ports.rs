//! Free loopback ports for the servers and clients a test starts.
//!
//! A port is found by binding port 0 and releasing it, so another process could take it before
//! our child binds it; that race is rare on a test machine. Within this process the same port is
//! never handed out twice, because tests running in parallel would otherwise collide when the
//! kernel reuses a just-released port.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::sync::{Mutex, PoisonError};

use anyhow::{bail, Context, Result};

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// Tries so many ports before giving up; each try is one bind.
const ATTEMPTS: usize = 200;

/// A TCP port on 127.0.0.1 that is free now and not yet handed out by this process.
pub fn free_port() -> Result<u16> {
    pick(false)
}

/// A port on 127.0.0.1 free for both TCP and UDP (for a DNS server, which listens on both).
pub fn free_tcp_udp_port() -> Result<u16> {
    pick(true)
}

fn pick(udp_too: bool) -> Result<u16> {
    for _ in 0..ATTEMPTS {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .context("cannot bind a TCP socket on 127.0.0.1")?;
        let port = listener
            .local_addr()
            .context("cannot read the address of a bound TCP socket")?
            .port();
        if udp_too && UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_err() {
            continue;
        }
        // Poisoning only means another test panicked while holding the lock; the set is fine.
        let mut guard = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
        if guard.get_or_insert_with(HashSet::new).insert(port) {
            return Ok(port);
        }
    }
    bail!("no free port on 127.0.0.1 after {ATTEMPTS} attempts")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_and_bindable() {
        let picked: Vec<u16> = (0..20).map(|_| free_port().expect("free port")).collect();
        let unique: HashSet<_> = picked.iter().collect();
        assert_eq!(unique.len(), picked.len(), "a port was handed out twice");
        // A picked port can be taken by another socket before we bind it (the race the module
        // doc describes: e.g. the ephemeral local port of a concurrent test's connection), so
        // require that most picks are bindable rather than every single one.
        let tcp_ok = (0..5)
            .filter(|_| {
                let p = free_port().expect("free port");
                TcpListener::bind((Ipv4Addr::LOCALHOST, p)).is_ok()
            })
            .count();
        assert!(
            tcp_ok >= 3,
            "only {tcp_ok}/5 picked TCP ports were bindable"
        );
        let udp_ok = (0..5)
            .filter(|_| {
                let p = free_tcp_udp_port().expect("free tcp+udp port");
                UdpSocket::bind((Ipv4Addr::LOCALHOST, p)).is_ok()
            })
            .count();
        assert!(
            udp_ok >= 3,
            "only {udp_ok}/5 picked UDP ports were bindable"
        );
    }
}
