//! A guest workload whose acknowledged writes can be counted: a loop in
//! the tiny guest's console shell writes an increasing counter to the
//! first sector of a disk with `conv=fsync` (the write is acknowledged
//! by the whole storage path before dd returns), and only then records the
//! number in `/tmp/acked`. After a migration or a failover, the disk must
//! hold at least the last acknowledged number.

use std::path::Path;
use std::time::Duration;

/// Types `command` once on the serial console of VMI `uid` under
/// `run_dir` and returns what the guest prints until `needle` appears.
pub fn type_once(run_dir: &Path, uid: &str, command: &str, needle: &str, timeout: Duration) -> String {
    super::nodes::serial_until(run_dir, uid, command, needle, timeout, None)
}

/// Waits until the guest's shell answers on its console.
pub fn wait_shell(run_dir: &Path, uid: &str) {
    super::nodes::serial_exec(run_dir, uid, "echo SHELL-$((40+2))", "SHELL-42", Duration::from_secs(120));
}

/// Starts the counter writer on `disk` (e.g. `/dev/vdb`) in the guest.
pub fn start(run_dir: &Path, uid: &str, disk: &str) {
    wait_shell(run_dir, uid);
    let cmd = format!(
        "rm -f /tmp/stop /tmp/acked; (i=0; while [ ! -e /tmp/stop ]; do i=$((i+1)); \
         echo $i | dd of={disk} bs=512 count=1 conv=fsync,sync 2>/dev/null && echo $i > /tmp/acked; done; \
         echo WRITER-DONE-$((1+1))) & echo WRITER-UP-$((2+2))"
    );
    type_once(run_dir, uid, &cmd, "WRITER-UP-4", Duration::from_secs(30));
}

fn number_after(text: &str, tag: &str) -> Option<u64> {
    let at = text.rfind(tag)? + tag.len();
    text[at..].chars().take_while(char::is_ascii_digit).collect::<String>().parse().ok()
}

/// The last number the writer had acknowledged, as the guest reports it.
pub fn acked(run_dir: &Path, uid: &str) -> u64 {
    let cmd = "echo ACKED-$(cat /tmp/acked 2>/dev/null || echo 0)-END$((1+1))";
    let out = type_once(run_dir, uid, cmd, "-END2", Duration::from_secs(30));
    number_after(&out, "ACKED-").unwrap_or_else(|| panic!("no acknowledged count in {out:?}"))
}

/// The number on `disk`, read past the guest's page cache.
pub fn on_disk(run_dir: &Path, uid: &str, disk: &str) -> u64 {
    let cmd = format!("echo DISK-$(dd if={disk} bs=512 count=1 iflag=direct 2>/dev/null | head -n 1)-END$((1+1))");
    let out = type_once(run_dir, uid, &cmd, "-END2", Duration::from_secs(30));
    number_after(&out, "DISK-").unwrap_or_else(|| panic!("no number on {disk} in {out:?}"))
}

/// Stops the writer; returns (last acknowledged, on disk).
pub fn stop(run_dir: &Path, uid: &str, disk: &str) -> (u64, u64) {
    type_once(run_dir, uid, "touch /tmp/stop", "WRITER-DONE-2", Duration::from_secs(30));
    (acked(run_dir, uid), on_disk(run_dir, uid, disk))
}
