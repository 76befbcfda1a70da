//! Where this rank's Gloo listens: the address its peers connect to. PyTorch asks the machine's
//! hostname, which on many machines resolves to a loopback address (Debian's `127.0.1.1`, a
//! container's `127.0.0.1`), and then a rank on another machine cannot reach it. Here the address
//! is the one this machine uses on its route to the master, which every rank reaches by
//! definition, unless `GLOO_SOCKET_IFNAME` (PyTorch's own variable) names an interface.
use std::net::{IpAddr, ToSocketAddrs, UdpSocket};

use anyhow::{Context, Result};

/// The variable that names the network interface Gloo uses, as in PyTorch.
pub const GLOO_SOCKET_IFNAME: &str = "GLOO_SOCKET_IFNAME";

/// How Gloo picks its address.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum GlooDevice {
    /// An interface by name (`GLOO_SOCKET_IFNAME`): its first address.
    Interface(String),
    /// A host name or address literal to bind to.
    Host(String),
}

/// Gloo's device for ranks that meet at `master_addr:master_port`: the interface
/// `GLOO_SOCKET_IFNAME` names; loopback when the master is on loopback (one machine); else this
/// machine's address on the route to the master.
pub(crate) fn gloo_device(
    master_addr: &str,
    master_port: u16,
    ifname: Option<String>,
) -> Result<GlooDevice> {
    if let Some(name) = ifname.filter(|n| !n.is_empty()) {
        return Ok(GlooDevice::Interface(name));
    }
    let master = (master_addr, master_port)
        .to_socket_addrs()
        .with_context(|| format!("resolving MASTER_ADDR {master_addr:?}"))?
        .next()
        .with_context(|| format!("MASTER_ADDR {master_addr:?} resolves to no address"))?;
    if master.ip().is_loopback() {
        return Ok(GlooDevice::Host(loopback(master.ip())));
    }
    Ok(GlooDevice::Host(route_address(master)?.to_string()))
}

fn loopback(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(_) => "127.0.0.1",
        IpAddr::V6(_) => "::1",
    }
    .to_owned()
}

/// The local address of the route to `master`: a UDP socket connected there (no packet leaves;
/// connecting only picks the route).
fn route_address(master: std::net::SocketAddr) -> Result<IpAddr> {
    let any = if master.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let socket = UdpSocket::bind(any).context("opening a UDP socket to find the route")?;
    socket.connect(master).with_context(|| {
        format!("no route to the master {master}: set {GLOO_SOCKET_IFNAME} to the interface the ranks share")
    })?;
    Ok(socket.local_addr()?.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variable_wins_then_loopback_then_the_route() {
        let named = gloo_device("10.1.2.3", 29500, Some("eth7".into())).unwrap();
        assert_eq!(named, GlooDevice::Interface("eth7".into()));
        for master in ["127.0.0.1", "localhost", "127.0.1.1"] {
            let device = gloo_device(master, 29500, Some(String::new())).unwrap();
            assert!(matches!(device, GlooDevice::Host(h) if h == "127.0.0.1" || h == "::1"));
        }
        let err = gloo_device("no-such-host.invalid", 29500, None).unwrap_err();
        assert!(
            format!("{err:#}").contains("resolving MASTER_ADDR"),
            "{err:#}"
        );
    }
}
