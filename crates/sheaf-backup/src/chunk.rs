//! How a chunk is stored: one byte naming the codec, then the chunk's
//! data in that codec. Its name is the SHA-256 of the uncompressed data,
//! so reading it back checks it.

use bytes::Bytes;

use crate::manifest::ChunkId;

/// The codecs of chunk objects.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub enum Compression {
    None,
    /// zstd at level 3 (the `zstd` tool's default).
    #[default]
    Zstd,
    Lz4,
}

impl Compression {
    /// From a BackupTarget's `spec.compression` (validated there).
    pub fn parse(s: Option<&str>) -> Result<Compression, String> {
        match s {
            None | Some("zstd") => Ok(Compression::Zstd),
            Some("lz4") => Ok(Compression::Lz4),
            Some("none") => Ok(Compression::None),
            Some(other) => Err(format!("unknown compression {other:?}: use zstd, lz4 or none")),
        }
    }

    fn tag(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Zstd => 1,
            Compression::Lz4 => 2,
        }
    }
}

/// zstd's level for chunks.
const ZSTD_LEVEL: i32 = 3;

/// A chunk as it goes to the target, and its id. Data that does not
/// shrink is stored as it is.
pub fn encode(data: &[u8], compression: Compression) -> (ChunkId, Bytes) {
    let id = ChunkId::of(data);
    let packed = match compression {
        Compression::None => None,
        Compression::Zstd => zstd::bulk::compress(data, ZSTD_LEVEL).ok(),
        Compression::Lz4 => Some(lz4_flex::compress_prepend_size(data)),
    };
    let (tag, body) = match packed {
        Some(p) if p.len() < data.len() => (compression.tag(), p),
        _ => (Compression::None.tag(), data.to_vec()),
    };
    let mut out = Vec::with_capacity(body.len() + 1);
    out.push(tag);
    out.extend_from_slice(&body);
    (id, Bytes::from(out))
}

/// The data of a chunk object, checked against `id`.
pub fn decode(object: &[u8], id: &ChunkId, max_len: usize) -> Result<Vec<u8>, String> {
    let Some((&tag, body)) = object.split_first() else {
        return Err("the chunk object is empty".into());
    };
    let data = match tag {
        0 => body.to_vec(),
        1 => zstd::bulk::decompress(body, max_len).map_err(|e| format!("cannot decompress (zstd): {e}"))?,
        2 => {
            let declared = body.get(..4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
            if declared.is_none_or(|n| n > max_len) {
                return Err("the lz4 chunk declares a size that is too large".into());
            }
            lz4_flex::decompress_size_prepended(body).map_err(|e| format!("cannot decompress (lz4): {e}"))?
        }
        t => return Err(format!("unknown codec {t}")),
    };
    let got = ChunkId::of(&data);
    if &got != id {
        return Err(format!("its data hashes to {got}"));
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_codec_round_trips_and_checks_the_hash() {
        let mut data = vec![0u8; 1 << 20];
        for (i, b) in data.iter_mut().enumerate().take(300_000) {
            *b = (i % 251) as u8;
        }
        for c in [Compression::None, Compression::Zstd, Compression::Lz4] {
            let (id, obj) = encode(&data, c);
            assert_eq!(id, ChunkId::of(&data));
            if c != Compression::None {
                assert!(obj.len() < data.len() / 2, "{c:?} compressed {} bytes", obj.len());
            }
            assert_eq!(decode(&obj, &id, 1 << 20).expect("decodes"), data);
            let mut bad = obj.to_vec();
            let last = bad.len() - 1;
            bad[last] ^= 1;
            assert!(decode(&bad, &id, 1 << 20).is_err(), "{c:?}: a flipped bit is noticed");
        }
    }

    #[test]
    fn incompressible_data_is_stored_plain() {
        let data: Vec<u8> = (0..65536u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let (id, obj) = encode(&data, Compression::Zstd);
        assert!(obj.len() <= data.len() + 1);
        assert_eq!(decode(&obj, &id, 65536).expect("decodes"), data);
    }

    #[test]
    fn hostile_objects_are_refused() {
        let id = ChunkId::of(b"x");
        assert!(decode(&[], &id, 10).is_err());
        assert!(decode(&[9, 1, 2], &id, 10).is_err());
        assert!(decode(&[2, 255, 255, 255, 127, 0], &id, 10).is_err());
    }
}
