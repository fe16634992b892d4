//! The dnsmasq processes that serve DHCP on the management network and on
//! VM networks: one per network, configured by one file,
//! `DIR/dnsmasq.conf`, that holds every option and every static lease.
//!
//! dnsmasq reads its configuration as root, before it drops to its own
//! user, but re-reads host files (`--dhcp-hostsfile`, on SIGHUP) as that
//! user: under a directory only root may enter (a data directory is 0700)
//! the re-read fails and guests silently get no address. So the leases are
//! in the configuration itself, and a changed configuration restarts the
//! server (it starts in milliseconds; clients retry, and the lease file
//! keeps what was handed out).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn conf_file(dir: &Path) -> PathBuf {
    dir.join("dnsmasq.conf")
}

fn pid_file(dir: &Path) -> PathBuf {
    dir.join("dnsmasq.pid")
}

/// The pid of the dnsmasq serving `dir`, if it runs.
pub fn pid(dir: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file(dir)).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    String::from_utf8_lossy(&cmdline).contains(&conf_file(dir).display().to_string()).then_some(pid)
}

/// Whether process `pid` has let go of its sockets: gone, or a zombie.
/// (Its command line empties earlier, when its memory is released, while
/// it still holds its files.)
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| matches!(state, 'Z' | 'X')),
    }
}

/// Stops the dnsmasq of `dir` and waits until it has exited (up to 2 s,
/// then it is killed and waited for again), so that its sockets are free
/// for the next one.
pub fn stop(dir: &Path) {
    let Some(p) = pid(dir) else { return };
    for signal in ["-TERM", "-KILL"] {
        let _ = Command::new("kill").args([signal, &p.to_string()]).status();
        for _ in 0..40 {
            if exited(p) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The configuration file's text: `options` (dnsmasq long options without
/// the leading `--`), the pid file, and one `dhcp-host` line per lease.
pub fn render(dir: &Path, options: &[String], hosts: &[String]) -> String {
    let mut text = format!("pid-file={}\n", pid_file(dir).display());
    for o in options {
        text.push_str(o);
        text.push('\n');
    }
    for h in hosts {
        text.push_str("dhcp-host=");
        text.push_str(h);
        text.push('\n');
    }
    text
}

/// Makes the dnsmasq of `dir` run with this configuration, in network
/// namespace `netns` (None: the agent's own): started when it is not
/// running, restarted when the configuration changed, left alone otherwise.
pub fn ensure(dir: &Path, netns: Option<&str>, options: &[String], hosts: &[String]) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let text = render(dir, options, hosts);
    let conf = conf_file(dir);
    let same = std::fs::read_to_string(&conf).ok().as_deref() == Some(text.as_str());
    if same && pid(dir).is_some() {
        return Ok(());
    }
    stop(dir);
    std::fs::write(&conf, &text).map_err(|e| format!("writing {}: {e}", conf.display()))?;
    let conf_arg = format!("--conf-file={}", conf.display());
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "dnsmasq", &conf_arg]);
            c
        }
        None => {
            let mut c = Command::new("dnsmasq");
            c.arg(&conf_arg);
            c
        }
    };
    let out = cmd.output().map_err(|e| format!("starting dnsmasq: {e}"))?;
    if !out.status.success() {
        return Err(format!("dnsmasq refused to start: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_has_exited_once_it_is_gone_or_a_zombie() {
        let mut child = Command::new("sleep").arg("30").spawn().expect("sleep starts");
        assert!(!exited(child.id()));
        child.kill().expect("sleep is killed");
        // Not reaped yet: a zombie, which holds no files any more.
        for _ in 0..100 {
            if exited(child.id()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(exited(child.id()));
        child.wait().expect("sleep is reaped");
        assert!(exited(child.id()));
    }

    #[test]
    fn one_file_holds_options_and_leases() {
        let dir = Path::new("/run/x");
        let text = render(
            dir,
            &["interface=br0".into(), "dhcp-range=10.0.0.0,static,255.255.255.0,300s".into()],
            &["02:00:00:00:00:01,10.0.0.10".into()],
        );
        assert_eq!(
            text,
            "pid-file=/run/x/dnsmasq.pid\ninterface=br0\ndhcp-range=10.0.0.0,static,255.255.255.0,300s\n\
             dhcp-host=02:00:00:00:00:01,10.0.0.10\n"
        );
    }
}
