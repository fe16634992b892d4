//! The serial console log of each VMI, kept on its node and rotated by size.
//!
//! QEMU writes everything the guest prints on its serial port to
//! `RUN_DIR/UID/serial.log` itself (`logfile=...,logappend=on` on the
//! console's socket chardev), whether or not a console is connected. It
//! opens that file `O_APPEND`, so every write lands at the file's end
//! whatever its size is: the agent rotates it by *copy and truncate*
//! without QEMU noticing.
//!
//! ```text
//!   serial.log      the current generation, QEMU appends to it
//!   serial.log.1    the previous one        ◀── copy of serial.log, then serial.log truncated to 0
//!   serial.log.2    older                   ◀── serial.log.1 renamed
//!   ...             up to Policy::keep      (the oldest is dropped)
//! ```
//!
//! Rotation runs in a task of the VMI's runner ([`spawn_rotation`]),
//! checking the size every [`CHECK_EVERY`]; an agent that restarts and
//! re-adopts the VM starts it again. Bytes the guest writes between the
//! copy and the truncation are lost (they are at most what QEMU writes in
//! the few microseconds between them; `logrotate`'s copytruncate has the
//! same window). The log lives as long as the VMI: it is kept when the
//! VMI ends (to read why it stopped) and removed with the VMI's runtime
//! directory when the VMI is deleted or moves to another node.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sheaf_qemu::machine;

/// How often the runner looks at the log's size.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Default size at which the log is rotated.
pub const DEFAULT_MAX_BYTES: u64 = 1024 * 1024;
/// Default number of rotated generations kept besides the current one.
pub const DEFAULT_KEEP: u32 = 3;
/// The smallest rotation size accepted.
pub const MIN_MAX_BYTES: u64 = 4096;

/// When the serial log is rotated and how much of it is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Rotate once the current generation holds this many bytes.
    pub max_bytes: u64,
    /// Rotated generations kept (`serial.log.1` .. `serial.log.KEEP`);
    /// 0 truncates the log without keeping a copy.
    pub keep: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy { max_bytes: DEFAULT_MAX_BYTES, keep: DEFAULT_KEEP }
    }
}

/// Generation `n` of the serial log in a VMI's runtime directory: 0 is the
/// current one, QEMU's.
pub fn generation(dir: &Path, n: u32) -> PathBuf {
    let current = machine::serial_log(dir);
    if n == 0 {
        return current;
    }
    let mut name = current.into_os_string();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// The generations present in `dir`, newest (the current one) first.
pub fn generations(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if generation(dir, 0).is_file() {
        out.push(generation(dir, 0));
    }
    // Generations are numbered without gaps; a gap ends the list.
    for n in 1..=1000 {
        let p = generation(dir, n);
        if !p.is_file() {
            break;
        }
        out.push(p);
    }
    out
}

/// Whether `path` is one of the serial log's generations (by name).
pub fn is_log_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else { return false };
    let base = machine::serial_log(Path::new("")).display().to_string();
    name == base || name.strip_prefix(&base).and_then(|r| r.strip_prefix('.')).is_some_and(|n| n.parse::<u32>().is_ok())
}

/// Rotates the log in `dir` if its current generation has reached
/// `policy.max_bytes`; returns whether it did.
pub fn rotate_if_needed(dir: &Path, policy: Policy) -> io::Result<bool> {
    let current = generation(dir, 0);
    let size = match std::fs::metadata(&current) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if size < policy.max_bytes {
        return Ok(false);
    }
    rotate(dir, policy)?;
    Ok(true)
}

/// Shifts the rotated generations up by one, copies the current one to
/// `.1` and truncates it.
fn rotate(dir: &Path, policy: Policy) -> io::Result<()> {
    let current = generation(dir, 0);
    if policy.keep == 0 {
        return OpenOptions::new().write(true).open(&current)?.set_len(0);
    }
    // Drop the oldest, shift the others: .k-1 → .k, ..., .1 → .2.
    let _ = std::fs::remove_file(generation(dir, policy.keep));
    for n in (1..policy.keep).rev() {
        let from = generation(dir, n);
        if from.exists() {
            std::fs::rename(&from, generation(dir, n + 1))?;
        }
    }
    // Copy to a temporary name first so that `.1` is never half written.
    let tmp = dir.join(".serial.log.rotating");
    let mut src = File::open(&current)?;
    let mut dst = File::create(&tmp)?;
    let mut copied = io::copy(&mut src, &mut dst)?;
    let f = OpenOptions::new().write(true).open(&current)?;
    // What QEMU appended during the copy, then the truncation at once.
    src.seek(SeekFrom::Start(copied))?;
    let mut tail = Vec::new();
    src.read_to_end(&mut tail)?;
    f.set_len(0)?;
    copied += tail.len() as u64;
    dst.write_all(&tail)?;
    dst.flush()?;
    drop(dst);
    std::fs::rename(&tmp, generation(dir, 1))?;
    tracing::debug!(dir = %dir.display(), bytes = copied, "serial log rotated");
    Ok(())
}

/// Rotates the log of the VMI in `dir` every [`CHECK_EVERY`] until the
/// returned task is aborted (the runner does when it ends).
pub fn spawn_rotation(dir: PathBuf, policy: Policy) -> RotationTask {
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut warned = false;
        loop {
            tick.tick().await;
            let d = dir.clone();
            match tokio::task::spawn_blocking(move || rotate_if_needed(&d, policy)).await {
                Ok(Err(e)) if !warned => {
                    warned = true;
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot rotate the serial console log");
                }
                Ok(Ok(true)) => warned = false,
                _ => {}
            }
        }
    });
    RotationTask(task)
}

/// The rotation task of one VMI; stops when dropped.
pub struct RotationTask(tokio::task::JoinHandle<()>);

impl Drop for RotationTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Removes everything in a VMI's runtime directory except its serial log
/// generations and `vmi.json` (which tells the agent whose they are).
pub fn keep_only_logs(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if is_log_file(&p) || p.file_name().is_some_and(|n| n == "vmi.json") {
            continue;
        }
        let r = if p.is_dir() && !p.is_symlink() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
        if let Err(e) = r {
            tracing::debug!(path = %p.display(), error = %e, "cannot remove");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(p: &Path, data: &[u8]) {
        std::fs::write(p, data).expect("write");
    }

    fn read(p: &Path) -> Vec<u8> {
        std::fs::read(p).unwrap_or_default()
    }

    #[test]
    fn rotates_at_the_size_and_keeps_generations() {
        let d = tempfile::tempdir().expect("tempdir");
        let dir = d.path();
        let policy = Policy { max_bytes: 10, keep: 2 };
        assert!(!rotate_if_needed(dir, policy).expect("no log"), "nothing to rotate without a log");
        write(&generation(dir, 0), b"123456789");
        assert!(!rotate_if_needed(dir, policy).expect("small"));
        write(&generation(dir, 0), b"first-gen!");
        assert!(rotate_if_needed(dir, policy).expect("rotate"));
        assert_eq!(read(&generation(dir, 0)), b"");
        assert_eq!(read(&generation(dir, 1)), b"first-gen!");
        write(&generation(dir, 0), b"second-gen");
        assert!(rotate_if_needed(dir, policy).expect("rotate"));
        write(&generation(dir, 0), b"third-gen!!");
        assert!(rotate_if_needed(dir, policy).expect("rotate"));
        // Two kept: the first one is gone.
        assert_eq!(read(&generation(dir, 1)), b"third-gen!!");
        assert_eq!(read(&generation(dir, 2)), b"second-gen");
        assert!(!generation(dir, 3).exists());
        let gens = generations(dir);
        assert_eq!(gens, vec![generation(dir, 0), generation(dir, 1), generation(dir, 2)]);
        assert!(!dir.join(".serial.log.rotating").exists());
    }

    #[test]
    fn keep_zero_only_truncates() {
        let d = tempfile::tempdir().expect("tempdir");
        write(&generation(d.path(), 0), b"0123456789abc");
        assert!(rotate_if_needed(d.path(), Policy { max_bytes: 10, keep: 0 }).expect("rotate"));
        assert_eq!(read(&generation(d.path(), 0)), b"");
        assert_eq!(generations(d.path()).len(), 1);
    }

    /// The writer keeps its O_APPEND descriptor (as QEMU does): after the
    /// truncation its writes start at offset 0 again, with no hole.
    #[test]
    fn an_append_writer_goes_on_at_the_start_after_truncation() {
        let d = tempfile::tempdir().expect("tempdir");
        let dir = d.path();
        let mut w = OpenOptions::new().create(true).append(true).open(generation(dir, 0)).expect("open");
        w.write_all(b"before rotation\n").expect("write");
        assert!(rotate_if_needed(dir, Policy { max_bytes: 8, keep: 1 }).expect("rotate"));
        w.write_all(b"after\n").expect("write");
        assert_eq!(read(&generation(dir, 0)), b"after\n");
        assert_eq!(read(&generation(dir, 1)), b"before rotation\n");
    }

    #[test]
    fn log_files_are_told_apart_and_kept() {
        assert!(is_log_file(Path::new("/r/u/serial.log")));
        assert!(is_log_file(Path::new("/r/u/serial.log.3")));
        assert!(!is_log_file(Path::new("/r/u/serial.log.x")));
        assert!(!is_log_file(Path::new("/r/u/serial.sock")));
        assert!(!is_log_file(Path::new("/r/u/qemu.log")));
        let d = tempfile::tempdir().expect("tempdir");
        for f in ["serial.log", "serial.log.1", "vmi.json", "qemu.pid", "serial.sock"] {
            write(&d.path().join(f), b"x");
        }
        std::fs::create_dir(d.path().join("seed")).expect("mkdir");
        keep_only_logs(d.path());
        let mut left: Vec<String> = std::fs::read_dir(d.path())
            .expect("read")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        left.sort();
        assert_eq!(left, ["serial.log", "serial.log.1", "vmi.json"]);
    }
}
