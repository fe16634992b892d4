//! Feeds arbitrary client bytes to the NBD server (handshake, options,
//! requests) over an in-memory pipe; the server must neither panic nor
//! hang nor touch bytes outside the export.
#![no_main]

use std::sync::Arc;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use sheaf_blk::nbd::{self, Device, MemoryDevice};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SIZE: u64 = 1 << 16;

fuzz_target!(|data: &[u8]| {
    if data.len() >= 28 {
        let mut h = [0u8; 28];
        h.copy_from_slice(&data[..28]);
        let _ = nbd::parse_command(&h);
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let dev = Arc::new(MemoryDevice::new(SIZE as usize));
        let (client, server) = tokio::io::duplex(1 << 20);
        let srv = tokio::spawn(nbd::serve(server, "vol", dev.clone() as Arc<dyn Device>));
        let (mut rd, mut wr) = tokio::io::split(client);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = rd.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        });
        let _ = wr.write_all(data).await;
        let _ = wr.shutdown().await;
        drop(wr);
        tokio::time::timeout(Duration::from_secs(5), srv).await.expect("hang").expect("panic");
        assert_eq!(dev.contents().len(), SIZE as usize);
    });
});
