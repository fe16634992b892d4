//! `sheaf-bench-vhost-user`: drives a vhost-user-blk backend from the host
//! the way QEMU and a guest's virtio-blk driver would, and prints one line
//! of results in bench/storage.sh's units:
//! `iops=… mbps=… lat_us=… ios=… seconds=…` (mbps is MiB/s, as fio's
//! bw / 1024 there; lat_us the mean latency, submission to completion).
//! `--verify` writes a pattern, flushes, reads it back and compares.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use sheaf_bench_vhost_user::{parse_seconds, parse_size, Device, Rw, Target, Workload};

#[derive(Parser, Debug)]
#[command(
    name = "sheaf-bench-vhost-user",
    about = "fio-like workloads against a vhost-user-blk socket (sheaf blk engine --vhost-user), from the host."
)]
struct Args {
    /// The vhost-user-blk socket.
    #[arg(long)]
    socket: PathBuf,
    /// randread, randwrite, read or write.
    #[arg(long, default_value = "randread", conflicts_with = "verify")]
    rw: Rw,
    /// Bytes per request: 4k, 128k, … (a multiple of 512).
    #[arg(long, default_value = "4k", value_parser = parse_bs)]
    bs: u32,
    /// Requests kept in flight, spread over the queues.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
    iodepth: u32,
    /// Seconds measured.
    #[arg(long, default_value = "10", value_parser = parse_seconds)]
    runtime: Duration,
    /// Seconds run before measuring (fio's ramp_time).
    #[arg(long, default_value = "0", value_parser = parse_seconds)]
    ramp: Duration,
    /// Queues to use (at most what the backend offers).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    queues: u16,
    /// The part of the disk used, from offset 0 (K/M/G binary, like fio);
    /// the whole disk by default.
    #[arg(long, value_parser = parse_size)]
    size: Option<u64>,
    /// Do not negotiate VIRTIO_RING_F_EVENT_IDX (a kick per submission
    /// batch and an interrupt per completion).
    #[arg(long)]
    no_event_idx: bool,
    /// Write a pattern over --size, flush, read it back and compare; exits
    /// non-zero on any difference.
    #[arg(long)]
    verify: bool,
    /// Print what was negotiated (to stderr).
    #[arg(long, short)]
    verbose: bool,
}

fn parse_bs(s: &str) -> Result<u32, String> {
    let v = parse_size(s)?;
    match u32::try_from(v) {
        Ok(v) if v > 0 && v.is_multiple_of(512) && v <= 32 << 20 => Ok(v),
        _ => Err(format!("{s:?}: a request size is a multiple of 512 up to 32M")),
    }
}

fn main() -> std::process::ExitCode {
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sheaf-bench-vhost-user: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(a: Args) -> anyhow::Result<()> {
    let target = Target { socket: a.socket.clone(), queues: a.queues, event_idx: !a.no_event_idx };
    let iodepth = a.iodepth as usize;
    let dev = Device::connect(&target, iodepth, a.bs)?;
    if a.verbose {
        eprintln!("{}", dev.describe(&a.socket));
    }
    if a.verify {
        let v = sheaf_bench_vhost_user::verify_on(dev, a.size)?;
        println!(
            "verify ok: wrote, {}read back and compared {} bytes ({} requests of {} bytes, iodepth {iodepth}, {} queue(s)); write {:.1} MiB/s, read {:.1} MiB/s",
            if v.flushed { "flushed, " } else { "" },
            v.bytes,
            v.blocks,
            a.bs,
            a.queues,
            v.write.mbps(),
            v.read.mbps()
        );
        return Ok(());
    }
    let w = Workload { rw: a.rw, bs: a.bs, iodepth, runtime: a.runtime, ramp: a.ramp, size: a.size };
    let r = sheaf_bench_vhost_user::run_on(dev, &w)?;
    println!("{}", r.line());
    Ok(())
}
