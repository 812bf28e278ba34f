//! A network-namespace rig for tests that need real routing and NAT: namespaces joined by veth
//! pairs, nftables rules on a gateway. Everything is removed on drop, processes by PID.
//! Needs root, `ip` and `nft`; [`Rig::available`] says why not when they are missing.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};

/// Why the rig cannot run here, or None when it can.
pub fn unavailable() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("not root".into());
    }
    missing(&[("ip", "-V"), ("nft", "-V")])
}

/// The first of `tools` (program, a harmless argument) that cannot be run, as a reason.
pub fn missing(tools: &[(&str, &str)]) -> Option<String> {
    tools.iter().find_map(|(tool, arg)| {
        let ok = Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        (!ok).then(|| format!("{tool} is not installed"))
    })
}

/// Runs a shell command line; panics with its output when it fails.
pub fn sh(cmd: &str) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub struct Rig {
    /// Namespace names, unique per test process and rig.
    pub ns: Vec<String>,
    children: Vec<Child>,
}

impl Rig {
    /// Creates namespaces named `<tag><pid>-<name>` for each name.
    pub fn new(tag: &str, names: &[&str]) -> Rig {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = std::process::id();
        let mut rig = Rig {
            ns: Vec::new(),
            children: Vec::new(),
        };
        for name in names {
            let full = format!("{tag}{pid}x{n}-{name}");
            let _ = Command::new("ip").args(["netns", "del", &full]).status();
            sh(&format!("ip netns add {full}"));
            sh(&format!("ip -n {full} link set lo up"));
            rig.ns.push(full);
        }
        rig
    }

    /// The full namespace name of `name`.
    pub fn name(&self, name: &str) -> String {
        self.ns
            .iter()
            .find(|n| n.ends_with(&format!("-{name}")))
            .cloned()
            .unwrap_or_else(|| panic!("no namespace {name}"))
    }

    /// Joins namespaces `a` and `b` with a veth pair, addressing each end (CIDR).
    pub fn link(&self, a: &str, a_addr: &str, b: &str, b_addr: &str) {
        let (na, nb) = (self.name(a), self.name(b));
        // Interface names are per namespace; keep them short and fixed.
        let ia = format!("v-{b}");
        let ib = format!("v-{a}");
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let k = format!(
            "{}x{}",
            std::process::id() % 100_000,
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        sh(&format!("ip link add ta{k} type veth peer name tb{k}"));
        sh(&format!("ip link set ta{k} netns {na} name {ia}"));
        sh(&format!("ip link set tb{k} netns {nb} name {ib}"));
        sh(&format!("ip -n {na} addr add {a_addr} dev {ia}"));
        sh(&format!("ip -n {nb} addr add {b_addr} dev {ib}"));
        sh(&format!("ip -n {na} link set {ia} up"));
        sh(&format!("ip -n {nb} link set {ib} up"));
    }

    /// Runs `cmd` inside namespace `name`.
    pub fn exec(&self, name: &str, cmd: &str) {
        sh(&format!("ip netns exec {} {cmd}", self.name(name)));
    }

    /// A command prefix that runs a program inside namespace `name`.
    pub fn command(&self, name: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name(name), program]);
        c
    }

    /// Keeps a started process so it is killed (by PID) when the rig goes.
    pub fn own(&mut self, child: Child) {
        self.children.push(child);
    }

    /// Makes `gw` a NAT gateway: forwarding on, masquerade of traffic leaving by `wan_if`,
    /// and the given extra nftables lines (e.g. a DNAT port forward) in the nat prerouting chain.
    pub fn nat_gateway(&self, gw: &str, wan_if: &str, prerouting: &[String]) {
        let g = self.name(gw);
        sh(&format!(
            "ip netns exec {g} sysctl -qw net.ipv4.ip_forward=1"
        ));
        let rules = format!(
            "table ip nat {{\n chain prerouting {{ type nat hook prerouting priority -100; {}\n }}\n chain postrouting {{ type nat hook postrouting priority 100; oifname \"{wan_if}\" masquerade\n }}\n}}\ntable ip filter {{\n chain forward {{ type filter hook forward priority 0; policy drop;\n  ct state established,related accept\n  iifname != \"{wan_if}\" accept\n  ct status dnat accept\n }}\n}}\n",
            prerouting.join("; ")
        );
        let path = std::env::temp_dir().join(format!("{g}.nft"));
        std::fs::write(&path, rules).unwrap();
        sh(&format!("ip netns exec {g} nft -f {}", path.display()));
        let _ = std::fs::remove_file(path);
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}
