//! The baselines' QEMU command lines and seeds, and the comparison of
//! command lines.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _};

/// What the VM is made of; the same for Sheaf and the baselines.
pub struct Guest {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    pub memory_mib: u64,
    pub cores: u32,
}

/// The user data of every VM: a cloud-config whose `marker:` line the tiny
/// guest echoes on its console.
pub fn user_data(marker: &str) -> String {
    format!("#cloud-config\n# marker: {marker}\n")
}

/// A NoCloud seed as a person would build it: genisoimage with volume id
/// `cidata`, user-data and meta-data.
pub fn make_seed(dir: &Path, marker: &str, hostname: &str) -> anyhow::Result<PathBuf> {
    let src = dir.join("seed-src");
    std::fs::create_dir_all(&src)?;
    std::fs::write(src.join("user-data"), user_data(marker))?;
    std::fs::write(src.join("meta-data"), format!("instance-id: {marker}\nlocal-hostname: {hostname}\n"))?;
    let iso = dir.join("seed.iso");
    let out = Command::new("genisoimage")
        .args(["-quiet", "-output"])
        .arg(&iso)
        .args(["-volid", "cidata", "-joliet", "-rock"])
        .arg(src.join("user-data"))
        .arg(src.join("meta-data"))
        .stdin(Stdio::null())
        .output()
        .context("run genisoimage (apt-get install genisoimage)")?;
    if !out.status.success() {
        bail!("genisoimage failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(iso)
}

/// Bare QEMU by hand: the same machine type, accelerator, CPU, vCPUs,
/// memory, kernel, initramfs, kernel command line and seed (virtio) as the
/// Sheaf VM, the serial console into `DIR/serial.log`, nothing else.
/// `accel` and `cpu` are taken from Sheaf's command line so that both use
/// the same (TCG here, KVM on real hosts).
pub fn hand_argv(g: &Guest, dir: &Path, seed: &Path, accel: &str, cpu: &str) -> Vec<String> {
    let p = |p: &Path| p.display().to_string().replace(',', ",,");
    [
        "-name",
        "bare",
        "-nodefaults",
        "-no-user-config",
        "-machine",
        "q35,usb=off",
        "-accel",
        accel,
        "-cpu",
        cpu,
        "-smp",
        &g.cores.to_string(),
        "-m",
        &format!("{}M", g.memory_mib),
        "-kernel",
        &p(&g.kernel),
        "-initrd",
        &p(&g.initrd),
        "-append",
        &g.cmdline,
        "-drive",
        &format!("file={},format=raw,if=virtio,readonly=on", p(seed)),
        "-serial",
        &format!("file:{}", p(&dir.join("serial.log"))),
        "-display",
        "none",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The value of option `opt` in `argv` (first occurrence).
pub fn option<'a>(argv: &'a [String], opt: &str) -> Option<&'a str> {
    argv.iter().position(|a| a == opt).and_then(|i| argv.get(i + 1)).map(String::as_str)
}

/// Sheaf's QEMU command line (program name dropped) for a fresh
/// directory: every mention of the VMI's runtime directory becomes `dir`.
pub fn rehome(argv: &[String], from: &Path, to: &Path) -> Vec<String> {
    let (from, to) = (from.display().to_string(), to.display().to_string());
    argv.iter().map(|a| a.replace(&from, &to)).collect()
}

/// Copies the files Sheaf made for the VM (the seed image, …) but not its
/// logs, pidfile, sockets or the VMI itself, from `from` to `to`.
pub fn copy_vm_files(from: &Path, to: &Path) -> anyhow::Result<Vec<String>> {
    std::fs::create_dir_all(to)?;
    let mut copied = Vec::new();
    for e in std::fs::read_dir(from)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let skip = ["serial.log", "qemu.log", "qemu.pid", "vmi.json"].contains(&name.as_str());
        if skip || !e.file_type()?.is_file() {
            continue;
        }
        std::fs::copy(e.path(), to.join(&name)).with_context(|| format!("copy {}", e.path().display()))?;
        copied.push(name);
    }
    copied.sort();
    Ok(copied)
}

/// Options with their values (`-m 128M`), paths replaced by placeholders.
fn groups(argv: &[String], replace: &[(String, &str)]) -> Vec<String> {
    let norm = |s: &str| replace.iter().fold(s.to_string(), |acc, (from, to)| acc.replace(from.as_str(), to));
    let mut out = Vec::new();
    let mut i = 0;
    while i < argv.len() {
        let a = &argv[i];
        if a.starts_with('-') && argv.get(i + 1).is_some_and(|v| !v.starts_with('-')) {
            out.push(format!("{a} {}", norm(&argv[i + 1])));
            i += 2;
        } else {
            out.push(norm(a));
            i += 1;
        }
    }
    out
}

/// The options only in `a` and only in `b` (each path of `replace` shown
/// by its placeholder).
pub fn diff(a: &[String], b: &[String], replace: &[(String, &str)]) -> (Vec<String>, Vec<String>) {
    let (ga, gb) = (groups(a, replace), groups(b, replace));
    let only = |x: &[String], y: &[String]| {
        let mut y = y.to_vec();
        let mut out = Vec::new();
        for g in x {
            match y.iter().position(|h| h == g) {
                Some(i) => {
                    y.remove(i);
                }
                None => out.push(g.clone()),
            }
        }
        out
    };
    (only(&ga, &gb), only(&gb, &ga))
}

/// A shell-quoted command line, for the record.
pub fn shell(program: &str, argv: &[String]) -> String {
    let q = |s: &str| {
        if s.chars().all(|c| c.is_ascii_alphanumeric() || "-_=.,:/+".contains(c)) {
            s.to_string()
        } else {
            format!("'{}'", s.replace('\'', r"'\''"))
        }
    };
    std::iter::once(program.to_string()).chain(argv.iter().map(|a| q(a))).collect::<Vec<_>>().join(" ")
}
