//! Two ranks on two "machines": network namespaces joined by a veth pair, each rank with its own
//! address and no loopback in common, as two hosts on one network. The ranks must find each
//! other through MASTER_ADDR alone: Gloo listens on this machine's address on the route to the
//! master (dist/src/interface.rs), not on what the hostname resolves to (127.0.0.1 on many
//! machines, this one included, which a peer on another host cannot reach). A second pair of
//! ranks names the interface with GLOO_SOCKET_IFNAME, as PyTorch's users do. Needs root and
//! iproute2's `ip` (the test machines run as root).
mod common;

use std::process::Command;
use std::time::Duration;

use common::{rank_env, spawn, CHECK};

const LIMIT: Duration = Duration::from_secs(120);

fn ip(args: &[&str]) {
    let status = Command::new("ip")
        .args(args)
        .status()
        .expect("run ip (iproute2)");
    assert!(status.success(), "ip {}: {status}", args.join(" "));
}

/// Two namespaces, `a` and `b`, joined by veth interfaces `va`/`vb` (names unique to this
/// process) with addresses `subnet.1` and `subnet.2`; deleted on drop.
struct TwoHosts {
    names: [String; 2],
    devices: [String; 2],
    addresses: [String; 2],
}

impl TwoHosts {
    fn new(tag: &str) -> TwoHosts {
        let id = std::process::id() % 10_000;
        let names = ["a", "b"].map(|h| format!("albef-{tag}-{h}-{id}"));
        let devices = ["a", "b"].map(|h| format!("v{tag}{h}{id}"));
        let subnet = format!("10.{}.{}", 100 + id % 100, id / 100 % 250);
        let addresses = ["1", "2"].map(|h| format!("{subnet}.{h}"));
        let hosts = TwoHosts {
            names,
            devices,
            addresses,
        };
        for name in &hosts.names {
            ip(&["netns", "add", name]);
        }
        let [da, db] = &hosts.devices;
        ip(&["link", "add", da, "type", "veth", "peer", "name", db]);
        for i in 0..2 {
            let (ns, dev) = (&hosts.names[i], &hosts.devices[i]);
            ip(&["link", "set", dev, "netns", ns]);
            let cidr = format!("{}/24", hosts.addresses[i]);
            ip(&["-n", ns, "addr", "add", &cidr, "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        hosts
    }

    /// Runs a two-rank `albef-dist-check`, rank r in namespace r, meeting at rank 0's address,
    /// with GLOO_SOCKET_IFNAME naming its interface when `ifname`; returns each rank's exit
    /// status and stderr.
    fn run_world(&self, ifname: bool) -> Vec<(bool, String)> {
        let mut ranks: Vec<_> = (0..2)
            .map(|r| {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", &self.names[r], CHECK, "--timeout-s", "20"]);
                if ifname {
                    command.env("GLOO_SOCKET_IFNAME", &self.devices[r]);
                }
                spawn(rank_env(&mut command, r, 2, &self.addresses[0], 29400))
            })
            .collect();
        ranks
            .iter_mut()
            .map(|rank| {
                let (status, stderr) = rank.wait(LIMIT);
                (status.success(), stderr)
            })
            .collect()
    }
}

impl Drop for TwoHosts {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

#[test]
fn ranks_on_two_hosts_meet_through_the_master_address() {
    let hosts = TwoHosts::new("r");
    for (rank, (ok, stderr)) in hosts.run_world(false).into_iter().enumerate() {
        assert!(ok, "rank {rank}: {stderr}");
    }
}

#[test]
fn gloo_socket_ifname_names_the_interface() {
    let hosts = TwoHosts::new("i");
    for (rank, (ok, stderr)) in hosts.run_world(true).into_iter().enumerate() {
        assert!(ok, "rank {rank}: {stderr}");
    }
}
