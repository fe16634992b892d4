//! The client against sheaf-blk's own vhost-user-blk server over an
//! in-memory device, in this process: verify, short timed workloads on two
//! queues, and a failing device whose error status stops the run.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sheaf_bench_vhost_user::{run, verify, Rw, Target, Workload};
use sheaf_blk::nbd::{Device, MemoryDevice};
use sheaf_blk::vhost_user::{Options, VhostUserBlk};

const MIB: usize = 1 << 20;

/// Serves `dev` on a socket in `dir` until the process ends.
fn serve(dir: &Path, dev: Arc<dyn Device>, rt: &tokio::runtime::Runtime) -> PathBuf {
    let path = dir.join("vu.sock");
    let opts = Options { num_queues: 2, ..Options::default() };
    let server = VhostUserBlk::new(dev, opts, rt.handle().clone()).expect("server");
    let listener = VhostUserBlk::bind(&path).expect("bind");
    std::thread::spawn(move || server.serve(listener));
    path
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

#[test]
fn verify_and_workloads_on_two_queues() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let mem = Arc::new(MemoryDevice::new(8 * MIB));
    let socket = serve(dir.path(), mem.clone(), &rt);
    let target = Target { socket, queues: 2, event_idx: true };

    let v = verify(&target, 4096, 8, Some(4 << 20)).expect("verify");
    assert_eq!((v.blocks, v.bytes), (1024, 4 << 20));
    assert!(v.flushed);
    // The pattern is on the device, and nothing past --size was touched.
    let c = mem.contents();
    assert!(c[..4 << 20].chunks(4096).all(|b| b.iter().any(|x| *x != 0)));
    assert!(c[4 << 20..].iter().all(|x| *x == 0));

    // 128K requests, without event index, one queue: verify again (a new
    // pattern), over the whole disk.
    let one = Target { queues: 1, event_idx: false, ..target.clone() };
    let v = verify(&one, 128 << 10, 4, None).expect("verify 128k");
    assert_eq!(v.blocks, 64);

    for (rw, bs, depth) in
        [(Rw::RandRead, 4096, 16), (Rw::RandWrite, 4096, 3), (Rw::Read, 128 << 10, 4), (Rw::Write, 128 << 10, 2)]
    {
        let w = Workload {
            rw,
            bs,
            iodepth: depth,
            runtime: Duration::from_millis(300),
            ramp: Duration::from_millis(50),
            size: Some(2 << 20),
        };
        let r = run(&target, &w).unwrap_or_else(|e| panic!("{rw:?}: {e:#}"));
        eprintln!("{rw:?} bs {bs} qd {depth}: {}", r.line());
        assert!(r.ios > 10, "{rw:?}: {}", r.line());
        assert_eq!(r.bytes, r.ios * u64::from(bs));
        assert!(r.lat_us() > 0.0 && r.iops() > 0.0, "{}", r.line());
    }

    // Too many queues, a disk smaller than --size: refused up front.
    let e = run(
        &Target { queues: 3, ..target.clone() },
        &Workload {
            rw: Rw::RandRead,
            bs: 4096,
            iodepth: 3,
            runtime: Duration::from_millis(100),
            ramp: Duration::ZERO,
            size: None,
        },
    )
    .expect_err("3 queues of 2");
    assert!(format!("{e:#}").contains("backend offers 2"), "{e:#}");
    let e = verify(&target, 4096, 2, Some(16 << 20)).expect_err("larger than the disk");
    assert!(format!("{e:#}").contains("larger than the disk"), "{e:#}");
}

/// A device whose writes fail.
struct Failing(MemoryDevice);

#[async_trait::async_trait]
impl Device for Failing {
    fn size(&self) -> u64 {
        self.0.size()
    }
    async fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>, (u32, String)> {
        self.0.read(offset, len).await
    }
    async fn write(&self, _offset: u64, _data: Vec<u8>) -> Result<(), (u32, String)> {
        Err((5, "injected".into()))
    }
    async fn write_zeroes(&self, _offset: u64, _len: u32) -> Result<(), (u32, String)> {
        Err((5, "injected".into()))
    }
    async fn flush(&self) -> Result<(), (u32, String)> {
        Ok(())
    }
}

#[test]
fn an_error_status_stops_the_run() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = serve(dir.path(), Arc::new(Failing(MemoryDevice::new(MIB))), &rt);
    let target = Target { socket, queues: 1, event_idx: true };
    let w = Workload {
        rw: Rw::RandWrite,
        bs: 4096,
        iodepth: 4,
        runtime: Duration::from_secs(10),
        ramp: Duration::ZERO,
        size: None,
    };
    let start = std::time::Instant::now();
    let e = run(&target, &w).expect_err("writes fail");
    let msg = format!("{e:#}");
    assert!(msg.contains("write of 4096 bytes at offset") && msg.contains("VIRTIO_BLK_S_IOERR"), "{msg}");
    assert!(start.elapsed() < Duration::from_secs(5), "the run stops at the first error");
    // Reads still work on the next connection.
    let r = run(&target, &Workload { rw: Rw::RandRead, runtime: Duration::from_millis(100), ..w }).expect("reads");
    assert!(r.ios > 0);
}

/// A device that flips a bit of what it reads at one offset.
struct Corrupting(MemoryDevice, u64);

#[async_trait::async_trait]
impl Device for Corrupting {
    fn size(&self) -> u64 {
        self.0.size()
    }
    async fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>, (u32, String)> {
        let mut d = self.0.read(offset, len).await?;
        if (offset..offset + u64::from(len)).contains(&self.1) {
            d[(self.1 - offset) as usize] ^= 0x10;
        }
        Ok(d)
    }
    async fn write(&self, offset: u64, data: Vec<u8>) -> Result<(), (u32, String)> {
        self.0.write(offset, data).await
    }
    async fn write_zeroes(&self, offset: u64, len: u32) -> Result<(), (u32, String)> {
        self.0.write_zeroes(offset, len).await
    }
    async fn flush(&self) -> Result<(), (u32, String)> {
        Ok(())
    }
}

#[test]
fn verify_finds_a_flipped_bit() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = serve(dir.path(), Arc::new(Corrupting(MemoryDevice::new(MIB), 300_001)), &rt);
    let target = Target { socket, queues: 2, event_idx: true };
    let e = verify(&target, 4096, 4, None).expect_err("a flipped bit");
    assert!(format!("{e:#}").contains("data differs from what was written, first at byte 300001"), "{e:#}");
}
