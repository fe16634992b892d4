//! The NBD server against hostile clients: thousands of random and
//! mutated byte streams (valid handshakes and requests with bytes flipped,
//! truncated or appended) must never panic, hang, or write outside the
//! export; a well-behaved session through the same harness works.
//! (`crates/sheaf-blk/fuzz` has the libFuzzer target for longer runs.)

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sheaf_blk::nbd::{self, Device, MemoryDevice};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SIZE: u64 = 1 << 20;

fn opt(code: u32, data: &[u8]) -> Vec<u8> {
    let mut b = 0x4948_4156_454f_5054u64.to_be_bytes().to_vec();
    b.extend_from_slice(&code.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    b
}

fn cmd(kind: u16, flags: u16, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
    let mut b = 0x2560_9513u32.to_be_bytes().to_vec();
    b.extend_from_slice(&flags.to_be_bytes());
    b.extend_from_slice(&kind.to_be_bytes());
    b.extend_from_slice(&cookie.to_be_bytes());
    b.extend_from_slice(&offset.to_be_bytes());
    b.extend_from_slice(&len.to_be_bytes());
    b
}

/// A plausible client stream: flags, options, GO, then requests.
fn session(rng: &mut StdRng) -> Vec<u8> {
    let mut s = 3u32.to_be_bytes().to_vec(); // FIXED_NEWSTYLE | NO_ZEROES
    s.extend(opt(8, &[])); // structured replies
    s.extend(opt(3, &[])); // list
    let mut go = 0u32.to_be_bytes().to_vec();
    go.extend_from_slice(&0u16.to_be_bytes());
    s.extend(opt(7, &go));
    for i in 0..rng.random_range(1..20) {
        let kind = rng.random_range(0..9u16);
        let offset = rng.random_range(0..SIZE + 8192);
        let len = rng.random_range(0..16384u32);
        s.extend(cmd(kind, rng.random_range(0..4), i, offset, len));
        if kind == 1 {
            s.extend(std::iter::repeat_n(0xab, len as usize));
        }
    }
    s
}

fn mutate(rng: &mut StdRng, mut s: Vec<u8>) -> Vec<u8> {
    match rng.random_range(0..4) {
        0 => {
            for _ in 0..rng.random_range(1..8) {
                let i = rng.random_range(0..s.len());
                s[i] = rng.random();
            }
        }
        1 => s.truncate(rng.random_range(0..s.len())),
        2 => s.extend((0..rng.random_range(1..256)).map(|_| rng.random::<u8>())),
        _ => s = (0..rng.random_range(0..512)).map(|_| rng.random::<u8>()).collect(),
    }
    s
}

#[tokio::test]
async fn hostile_clients_never_crash_the_server() {
    let mut rng = StdRng::seed_from_u64(0x5eaf);
    for _ in 0..3000 {
        let dev = Arc::new(MemoryDevice::new(SIZE as usize));
        let input = {
            let s = session(&mut rng);
            mutate(&mut rng, s)
        };
        let (client, server) = tokio::io::duplex(1 << 20);
        let srv = tokio::spawn(nbd::serve(server, "vol", dev.clone() as Arc<dyn Device>));
        let (mut rd, mut wr) = tokio::io::split(client);
        let drain = tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = rd.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        });
        let _ = wr.write_all(&input).await;
        let _ = wr.shutdown().await;
        drop(wr);
        let done = tokio::time::timeout(Duration::from_secs(5), srv).await;
        assert!(done.is_ok(), "the server hung on input {input:02x?}");
        assert!(done.expect("finished").is_ok(), "the server panicked on input {input:02x?}");
        drain.abort();
        assert_eq!(dev.contents().len(), SIZE as usize);
    }
}

#[tokio::test]
async fn a_well_behaved_session_works() {
    tokio::time::timeout(Duration::from_secs(20), session_works()).await.expect("the session did not hang");
}

async fn session_works() {
    let dev = Arc::new(MemoryDevice::new(SIZE as usize));
    let (client, server) = tokio::io::duplex(1 << 20);
    tokio::spawn(nbd::serve(server, "vol", dev.clone() as Arc<dyn Device>));
    let (mut rd, mut wr) = tokio::io::split(client);
    let mut hello = [0u8; 18];
    rd.read_exact(&mut hello).await.expect("hello");
    assert_eq!(&hello[..8], b"NBDMAGIC");
    wr.write_all(&3u32.to_be_bytes()).await.expect("flags");
    let mut go = 3u32.to_be_bytes().to_vec();
    go.extend_from_slice(b"vol");
    go.extend_from_slice(&0u16.to_be_bytes());
    wr.write_all(&opt(7, &go)).await.expect("go");
    // INFO export, INFO block size, ACK: each a 20-byte header + data.
    for want_len in [12usize, 14, 0] {
        let mut h = [0u8; 20];
        rd.read_exact(&mut h).await.expect("reply");
        let len = u32::from_be_bytes([h[16], h[17], h[18], h[19]]) as usize;
        assert_eq!(len, want_len);
        let mut d = vec![0u8; len];
        rd.read_exact(&mut d).await.expect("reply data");
        if want_len == 12 {
            assert_eq!(u64::from_be_bytes(d[2..10].try_into().expect("8")), SIZE);
        }
    }
    let mut w = cmd(1, 1, 7, 4096, 4);
    w.extend_from_slice(b"abcd");
    wr.write_all(&w).await.expect("write");
    let mut reply = [0u8; 16];
    rd.read_exact(&mut reply).await.expect("write reply");
    assert_eq!(&reply[4..8], &[0, 0, 0, 0], "no error");
    wr.write_all(&cmd(0, 0, 8, 4096, 4)).await.expect("read");
    // Simple replies (structured ones were not asked for): 16-byte header.
    let mut reply = [0u8; 16];
    rd.read_exact(&mut reply).await.expect("read reply");
    assert_eq!(&reply[4..8], &[0, 0, 0, 0]);
    assert_eq!(u64::from_be_bytes(reply[8..16].try_into().expect("8")), 8);
    let mut data = [0u8; 4];
    rd.read_exact(&mut data).await.expect("data");
    assert_eq!(&data, b"abcd");
    // Beyond the end: EINVAL, nothing written.
    wr.write_all(&cmd(6, 0, 9, SIZE - 2, 4)).await.expect("zeroes");
    let mut reply = [0u8; 16];
    rd.read_exact(&mut reply).await.expect("reply");
    assert_eq!(u32::from_be_bytes(reply[4..8].try_into().expect("4")), 22);
}
