//! Storage processes for the `sheaf blk` tests: children killed on drop,
//! waiting for sockets, and QEMU's own NBD client (`qemu-io`) as the judge
//! of what a volume holds.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Child processes, killed and reaped when dropped.
pub struct Procs(pub Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits (up to 20 s) for `path` to appear, then a little more for its
/// server to listen.
pub fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        assert!(Instant::now() < deadline, "{} did not appear", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
}

/// Runs qemu-io commands against export `vol` on the NBD socket `nbd`;
/// returns (every command succeeded, output).
pub fn qemu_io<S: AsRef<str>>(nbd: &Path, cmds: &[S]) -> (bool, String) {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]);
    for cmd in cmds {
        c.args(["-c", cmd.as_ref()]);
    }
    c.arg(format!("nbd+unix:///vol?socket={}", nbd.display()));
    let out = c.output().expect("qemu-io (apt-get install qemu-utils)");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    // qemu-io exits 0 even when a command fails: every command must have
    // reported its success.
    let done = text.lines().filter(|l| l.starts_with("wrote ") || l.starts_with("read ")).count();
    (out.status.success() && done == cmds.len() && !text.contains("Pattern verification failed"), text)
}

/// How many lines of the log at `path` contain all of `needles`.
pub fn log_count(path: &Path, needles: &[&str]) -> usize {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    log.lines().filter(|l| needles.iter().all(|n| l.contains(n))).count()
}

/// Waits until `times` lines of the log contain all of `needles`.
pub fn log_has_n(path: &Path, needles: &[&str], times: usize, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if log_count(path, needles) >= times {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
