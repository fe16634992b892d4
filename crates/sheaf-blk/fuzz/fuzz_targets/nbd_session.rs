//! Feeds arbitrary client bytes to the NBD server (handshake, options,
//! requests) over an in-memory pipe; the server must neither panic nor
//! hang nor touch bytes outside the export.
#![no_main]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use sheaf_blk::nbd::{self, Device};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SIZE: u64 = 1 << 16;

struct Mem(Mutex<Vec<u8>>);

#[async_trait::async_trait]
impl Device for Mem {
    fn size(&self) -> u64 {
        SIZE
    }
    async fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>, (u32, String)> {
        let d = self.0.lock().unwrap();
        Ok(d[offset as usize..offset as usize + len as usize].to_vec())
    }
    async fn write(&self, offset: u64, data: Vec<u8>) -> Result<(), (u32, String)> {
        let mut d = self.0.lock().unwrap();
        d[offset as usize..offset as usize + data.len()].copy_from_slice(&data);
        Ok(())
    }
    async fn write_zeroes(&self, offset: u64, len: u32) -> Result<(), (u32, String)> {
        let mut d = self.0.lock().unwrap();
        d[offset as usize..offset as usize + len as usize].fill(0);
        Ok(())
    }
    async fn flush(&self) -> Result<(), (u32, String)> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() >= 28 {
        let mut h = [0u8; 28];
        h.copy_from_slice(&data[..28]);
        let _ = nbd::parse_command(&h);
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let dev = Arc::new(Mem(Mutex::new(vec![0u8; SIZE as usize])));
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
        assert_eq!(dev.0.lock().unwrap().len(), SIZE as usize);
    });
});
