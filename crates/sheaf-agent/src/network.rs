//! The management network (KubeVirt's `pod` network with `masquerade`
//! binding): one Linux bridge per node with the gateway address of a
//! subnet, a persistent tap per VM NIC on it, addresses handed out by
//! dnsmasq from static MAC → IP leases, and an nftables table of Sheaf's
//! own that masquerades traffic leaving the node and limits what reaches a
//! guest to its `interfaces[].ports` when it lists any.
//!
//! State lives in files, so an agent restart finds it: each NIC's
//! allocation in `RUN_ROOT/<vmi uid>/nic-<i>.json`, dnsmasq's pidfile,
//! configuration (with the static leases, see [`crate::dnsmasq`]) and lease
//! files in `net-<bridge>/` beside `RUN_ROOT`. The configuration and the
//! nftables table are regenerated from the NIC files after every change.
//! Nothing outside the bridge, its taps, the table and dnsmasq is touched
//! (besides enabling IPv4 forwarding, which NAT needs).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{0}")]
    Config(String),
    #[error("{what}: {detail}")]
    Command { what: String, detail: String },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("no free address left in {0}")]
    Exhausted(String),
}

pub use sheaf_types::network::Subnet;

/// Addresses handed to guests: after the gateway, before broadcast.
fn guest_hosts(s: &Subnet) -> impl Iterator<Item = Ipv4Addr> + '_ {
    (2..s.size() - 1).map(|n| s.host(n))
}

/// A port a NIC lets in (`interfaces[].ports`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    pub protocol: String,
    pub port: u16,
}

/// One NIC's allocation, `nic-<i>.json` in the VMI's runtime directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    pub name: String,
    pub mac: String,
    pub ip: Ipv4Addr,
    pub tap: String,
    pub hostname: String,
    #[serde(default)]
    pub ports: Vec<Port>,
}

/// The tap of NIC `index` of VMI `uid`: at most 15 characters, stable.
pub fn tap_name(uid: &str, index: usize) -> String {
    let hex: String = uid.chars().filter(|c| c.is_ascii_hexdigit()).take(9).collect();
    format!("sh{hex}n{index}")
}

/// Runs a host command (`ip`, `nft`); its stderr is the error's detail.
pub(crate) fn run(what: &str, cmd: &mut Command) -> Result<String, NetError> {
    let out = cmd.output().map_err(|e| NetError::Command { what: what.into(), detail: e.to_string() })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    } else {
        Err(NetError::Command { what: what.into(), detail: String::from_utf8_lossy(&out.stderr).trim().to_string() })
    }
}

pub(crate) fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// The node's management network.
pub struct Management {
    pub bridge: String,
    pub subnet: Subnet,
    run_root: PathBuf,
    state: PathBuf,
    lock: Mutex<()>,
    /// Subnets of VM networks: guests here are never forwarded into them.
    blocked: Mutex<Vec<Subnet>>,
}

impl Management {
    pub fn new(bridge: &str, subnet: Subnet, run_root: &Path) -> Result<Management, NetError> {
        if bridge.is_empty() || bridge.len() > 15 || !bridge.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(NetError::Config(format!("bridge name {bridge:?} must be 1-15 letters, digits or '-'")));
        }
        Ok(Management {
            bridge: bridge.to_string(),
            subnet,
            run_root: run_root.to_path_buf(),
            state: run_root.parent().unwrap_or(run_root).join(format!("net-{bridge}")),
            lock: Mutex::new(()),
            blocked: Mutex::new(Vec::new()),
        })
    }

    fn table(&self) -> String {
        format!("sheaf-{}", self.bridge)
    }

    /// Creates the bridge, its address, forwarding, the nftables table and
    /// dnsmasq if missing; idempotent.
    pub fn ensure(&self) -> Result<(), NetError> {
        let _g = self.lock.lock().map_err(|_| NetError::Config("network state poisoned".into()))?;
        std::fs::create_dir_all(&self.state)
            .map_err(|e| NetError::Io { what: format!("creating {}", self.state.display()), source: e })?;
        if !link_exists(&self.bridge) {
            run("creating the bridge", Command::new("ip").args(["link", "add", &self.bridge, "type", "bridge"]))?;
        }
        let cidr = format!("{}/{}", self.subnet.gateway(), self.subnet.prefix);
        let addrs = run(
            "reading the bridge's addresses",
            Command::new("ip").args(["-4", "-o", "addr", "show", "dev", &self.bridge]),
        )?;
        if !addrs.contains(&format!(" {cidr} ")) {
            run("addressing the bridge", Command::new("ip").args(["addr", "add", &cidr, "dev", &self.bridge]))?;
        }
        run("bringing the bridge up", Command::new("ip").args(["link", "set", &self.bridge, "up"]))?;
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .map_err(|e| NetError::Io { what: "enabling IPv4 forwarding".into(), source: e })?;
        self.sync_locked()
    }

    /// dnsmasq's options for the bridge (its static leases come from the
    /// NIC files: [`crate::dnsmasq`]).
    fn dnsmasq_options(&self) -> Vec<String> {
        let s = &self.subnet;
        let gw = s.gateway();
        vec![
            format!("interface={}", self.bridge),
            "bind-interfaces".into(),
            "except-interface=lo".into(),
            format!("listen-address={gw}"),
            format!("dhcp-range={},{},{},12h", s.host(2), s.host(s.size() - 2), s.netmask()),
            format!("dhcp-leasefile={}", self.state.join("leases").display()),
            format!("dhcp-option=option:router,{gw}"),
            format!("dhcp-option=option:dns-server,{gw}"),
            "dhcp-authoritative".into(),
            format!("log-facility={}", self.state.join("dnsmasq.log").display()),
        ]
    }

    /// Every NIC file of every VMI on this node.
    fn nics(&self) -> Vec<(PathBuf, Nic)> {
        let mut out = Vec::new();
        let Ok(dirs) = std::fs::read_dir(&self.run_root) else { return out };
        for d in dirs.flatten() {
            let Ok(files) = std::fs::read_dir(d.path()) else { continue };
            for f in files.flatten() {
                let name = f.file_name().to_string_lossy().to_string();
                if name.starts_with("nic-") && name.ends_with(".json") {
                    if let Ok(nic) = std::fs::read(f.path())
                        .map_err(|_| ())
                        .and_then(|b| serde_json::from_slice::<Nic>(&b).map_err(|_| ()))
                    {
                        out.push((f.path(), nic));
                    }
                }
            }
        }
        out
    }

    /// Sets the VM networks' subnets that the management network must not
    /// reach through the node (its NAT and forwarding), and reloads the
    /// rules when they changed.
    pub fn set_blocked(&self, mut subnets: Vec<Subnet>) -> Result<(), NetError> {
        subnets.sort_by_key(|s| (u32::from(s.network), s.prefix));
        subnets.dedup();
        {
            let mut b = self.blocked.lock().map_err(|_| NetError::Config("network state poisoned".into()))?;
            if *b == subnets {
                return Ok(());
            }
            *b = subnets;
        }
        let _g = self.lock.lock().map_err(|_| NetError::Config("network state poisoned".into()))?;
        self.sync_locked()
    }

    /// The dnsmasq hosts file and the nftables ruleset for `nics`.
    pub fn render(&self, nics: &[Nic]) -> (String, String) {
        let mut hosts = String::new();
        for n in nics {
            hosts.push_str(&format!("{},{},{}\n", n.mac, n.ip, n.hostname));
        }
        let t = self.table();
        let br = &self.bridge;
        let mut filter = String::new();
        for n in nics.iter().filter(|n| !n.ports.is_empty()) {
            for p in &n.ports {
                filter.push_str(&format!("    ip daddr {} {} dport {} accept\n", n.ip, p.protocol, p.port));
            }
            filter.push_str(&format!("    ip daddr {} ct state new drop\n", n.ip));
        }
        let mut isolate = String::new();
        for b in self.blocked.lock().map(|b| b.clone()).unwrap_or_default() {
            isolate.push_str(&format!("    iifname \"{br}\" ip daddr {b} drop\n"));
        }
        let ruleset = format!(
            "table ip {t}\ndelete table ip {t}\ntable ip {t} {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    ip saddr {sub} oifname != \"{br}\" masquerade\n  }}\n  chain to_guests {{\n{filter}  }}\n  chain forward {{\n    type filter hook forward priority filter; policy accept;\n{isolate}    oifname \"{br}\" jump to_guests\n  }}\n  chain output {{\n    type filter hook output priority filter; policy accept;\n    oifname \"{br}\" jump to_guests\n  }}\n}}\n",
            sub = self.subnet,
        );
        (hosts, ruleset)
    }

    fn sync_locked(&self) -> Result<(), NetError> {
        let nics: Vec<Nic> = self.nics().into_iter().map(|(_, n)| n).collect();
        let (hosts, ruleset) = self.render(&nics);
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| NetError::Command { what: "running nft".into(), detail: e.to_string() })?;
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write as _;
            let _ = stdin.write_all(ruleset.as_bytes());
        }
        let out = child
            .wait_with_output()
            .map_err(|e| NetError::Command { what: "running nft".into(), detail: e.to_string() })?;
        if !out.status.success() {
            return Err(NetError::Command {
                what: "loading the nftables rules".into(),
                detail: String::from_utf8_lossy(&out.stderr).trim().into(),
            });
        }
        let hosts: Vec<String> = hosts.lines().map(str::to_string).collect();
        crate::dnsmasq::ensure(&self.state, None, &self.dnsmasq_options(), &hosts)
            .map_err(|detail| NetError::Command { what: "running the management network's DHCP server".into(), detail })
    }

    /// Allocates NIC `index` of a VMI (or returns its allocation from an
    /// earlier start), creates its tap on the bridge, and updates DHCP and
    /// the rules. The address `nic` comes with (the one the guest had on
    /// another node, before a migration) is kept if this subnet has it
    /// free; otherwise the first free one is taken.
    pub fn attach(&self, vmi_dir: &Path, uid: &str, index: usize, mut nic: Nic) -> Result<Nic, NetError> {
        let _g = self.lock.lock().map_err(|_| NetError::Config("network state poisoned".into()))?;
        let file = vmi_dir.join(format!("nic-{index}.json"));
        if let Some(existing) = std::fs::read(&file).ok().and_then(|b| serde_json::from_slice::<Nic>(&b).ok()) {
            nic = existing;
        } else {
            let used: Vec<Ipv4Addr> = self.nics().into_iter().map(|(_, n)| n.ip).collect();
            let had = nic.ip;
            nic.ip = guest_hosts(&self.subnet)
                .find(|a| *a == had && !used.contains(a))
                .or_else(|| guest_hosts(&self.subnet).find(|a| !used.contains(a)))
                .ok_or_else(|| NetError::Exhausted(self.subnet.to_string()))?;
            nic.tap = tap_name(uid, index);
            std::fs::write(&file, serde_json::to_vec(&nic).unwrap_or_default())
                .map_err(|e| NetError::Io { what: format!("writing {}", file.display()), source: e })?;
        }
        if !link_exists(&nic.tap) {
            run("creating the tap", Command::new("ip").args(["tuntap", "add", "dev", &nic.tap, "mode", "tap"]))?;
        }
        run("attaching the tap", Command::new("ip").args(["link", "set", &nic.tap, "master", &self.bridge, "up"]))?;
        self.sync_locked()?;
        Ok(nic)
    }

    /// The NICs recorded for a VMI.
    pub fn nics_of(vmi_dir: &Path) -> Vec<Nic> {
        let mut out: Vec<(usize, Nic)> = std::fs::read_dir(vmi_dir)
            .map(|d| {
                d.flatten()
                    .filter_map(|f| {
                        let name = f.file_name().to_string_lossy().to_string();
                        let i: usize = name.strip_prefix("nic-")?.strip_suffix(".json")?.parse().ok()?;
                        Some((i, serde_json::from_slice(&std::fs::read(f.path()).ok()?).ok()?))
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by_key(|(i, _)| *i);
        out.into_iter().map(|(_, n)| n).collect()
    }

    /// Removes a VMI's taps and NIC files and updates DHCP and the rules.
    pub fn detach(&self, vmi_dir: &Path) {
        let Ok(_g) = self.lock.lock() else { return };
        let nics = Self::nics_of(vmi_dir);
        // The DHCP entries and filter rules go first, the taps last: once a
        // VM's tap is gone nothing of it is left on the network.
        if let Ok(d) = std::fs::read_dir(vmi_dir) {
            for f in d.flatten() {
                if f.file_name().to_string_lossy().starts_with("nic-") {
                    let _ = std::fs::remove_file(f.path());
                }
            }
        }
        if let Err(e) = self.sync_locked() {
            tracing::warn!(error = %e, "cannot update the management network after a VM left");
        }
        for nic in nics {
            if link_exists(&nic.tap) {
                let _ = run("deleting the tap", Command::new("ip").args(["link", "del", &nic.tap]));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_parse_and_validate() {
        let s: Subnet = "10.53.0.0/20".parse().expect("valid");
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 53, 0, 1));
        assert_eq!(s.netmask(), Ipv4Addr::new(255, 255, 240, 0));
        assert_eq!(guest_hosts(&s).next(), Some(Ipv4Addr::new(10, 53, 0, 2)));
        assert_eq!(guest_hosts(&s).last(), Some(Ipv4Addr::new(10, 53, 15, 254)));
        for bad in ["10.53.0.1/20", "10.53.0.0", "10.53.0.0/31", "x/24", "10.53.0.0/abc"] {
            assert!(bad.parse::<Subnet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn tap_names_fit_and_are_stable() {
        let t = tap_name("0b5e4d8c-1234-4c3b-9f00-aaaaaaaaaaaa", 3);
        assert!(t.len() <= 15, "{t}");
        assert_eq!(t, tap_name("0b5e4d8c-1234-4c3b-9f00-aaaaaaaaaaaa", 3));
        assert_ne!(t, tap_name("0b5e4d8c-1234-4c3b-9f00-aaaaaaaaaaaa", 2));
    }

    #[test]
    fn renders_hosts_and_rules() {
        let m = Management::new("sheaf-br0", "10.53.0.0/24".parse().expect("subnet"), Path::new("/nonexistent"))
            .expect("m");
        let nics = vec![
            Nic {
                name: "default".into(),
                mac: "52:54:00:00:00:01".into(),
                ip: Ipv4Addr::new(10, 53, 0, 2),
                tap: "t1".into(),
                hostname: "web".into(),
                ports: vec![Port { protocol: "tcp".into(), port: 22 }],
            },
            Nic {
                name: "default".into(),
                mac: "52:54:00:00:00:02".into(),
                ip: Ipv4Addr::new(10, 53, 0, 3),
                tap: "t2".into(),
                hostname: "db".into(),
                ports: vec![],
            },
        ];
        let (hosts, rules) = m.render(&nics);
        assert_eq!(hosts, "52:54:00:00:00:01,10.53.0.2,web\n52:54:00:00:00:02,10.53.0.3,db\n");
        assert!(rules.contains("ip saddr 10.53.0.0/24 oifname != \"sheaf-br0\" masquerade"), "{rules}");
        assert!(rules.contains("ip daddr 10.53.0.2 tcp dport 22 accept"), "{rules}");
        assert!(rules.contains("ip daddr 10.53.0.2 ct state new drop"), "{rules}");
        assert!(!rules.contains("10.53.0.3 ct state"), "a NIC without ports lets everything in: {rules}");
        assert!(
            Management::new("a-name-that-is-far-too-long", "10.0.0.0/24".parse().expect("s"), Path::new("/")).is_err()
        );
    }
}
