//! Partition tables: GPT (behind its protective MBR, 512-byte or 4 KiB
//! sectors, the backup header when the primary one is damaged), MBR
//! (primary partitions and the logical ones of an extended partition). A
//! disk with neither, or one that is an ISO 9660 image (hybrid ISOs carry
//! an MBR whose partitions overlap the ISO), is one "partition" covering
//! the disk, numbered 0.
//!
//! Partitions are numbered as Linux numbers them: a GPT entry by its slot
//! (from 1), MBR primaries 1–4, logical partitions from 5.

use super::image::{read_vec, ReadAt};
use super::FilesError;

/// Which table a partition came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Table {
    Gpt,
    Mbr,
    /// No table: the whole disk.
    None,
}

/// A partition as the table describes it (bytes, cut to the disk).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    pub index: u32,
    pub start: u64,
    pub size: u64,
    pub table: Table,
    /// The GPT type GUID, or the MBR type byte as `0x83`.
    pub type_id: String,
    /// The GPT partition name.
    pub name: Option<String>,
}

const SECTOR: u64 = 512;
/// GPT entries read at most (the usual table has 128).
const MAX_GPT_ENTRIES: u32 = 1024;
/// Logical partitions followed at most.
const MAX_LOGICAL: u32 = 128;

/// The partitions of `disk`.
pub fn read_table(disk: &dyn ReadAt) -> Result<Vec<Slot>, FilesError> {
    let whole = || vec![whole_disk(disk)];
    if disk.size() < SECTOR {
        return Ok(whole());
    }
    if super::iso::probe(disk)?.is_some() {
        return Ok(whole());
    }
    let mbr = read_vec(disk, 0, SECTOR as usize)?;
    let signed = mbr[510] == 0x55 && mbr[511] == 0xAA;
    if signed && mbr_entries(&mbr).iter().any(|e| e.kind == 0xEE) {
        for sector in [SECTOR, 4096] {
            if let Some(slots) = gpt(disk, sector)? {
                return Ok(slots);
            }
        }
    }
    // A file system's boot sector also ends in 55 AA: a disk that is a
    // bare FAT file system has no partition table.
    if !signed || super::fat::probe(disk)?.is_some() {
        return Ok(whole());
    }
    let slots = mbr_slots(disk, &mbr)?;
    Ok(if slots.is_empty() { whole() } else { slots })
}

fn whole_disk(disk: &dyn ReadAt) -> Slot {
    Slot { index: 0, start: 0, size: disk.size(), table: Table::None, type_id: String::new(), name: None }
}

/// The slot cut to the disk; None when it starts beyond it or is empty.
fn cut(disk: &dyn ReadAt, mut slot: Slot) -> Option<Slot> {
    if slot.start >= disk.size() || slot.size == 0 {
        return None;
    }
    slot.size = slot.size.min(disk.size() - slot.start);
    Some(slot)
}

struct MbrEntry {
    kind: u8,
    first: u64,
    count: u64,
}

fn mbr_entries(sector: &[u8]) -> Vec<MbrEntry> {
    (0..4)
        .map(|i| {
            let e = &sector[446 + 16 * i..446 + 16 * (i + 1)];
            MbrEntry { kind: e[4], first: u64::from(le32(e, 8)), count: u64::from(le32(e, 12)) }
        })
        .collect()
}

fn is_extended(kind: u8) -> bool {
    matches!(kind, 0x05 | 0x0F | 0x85)
}

fn mbr_slots(disk: &dyn ReadAt, mbr: &[u8]) -> Result<Vec<Slot>, FilesError> {
    let mut slots = Vec::new();
    let mut extended = None;
    for (i, e) in mbr_entries(mbr).into_iter().enumerate() {
        if e.kind == 0 || e.count == 0 {
            continue;
        }
        if is_extended(e.kind) {
            extended = Some(e.first);
        }
        let slot = Slot {
            index: i as u32 + 1,
            start: e.first * SECTOR,
            size: e.count * SECTOR,
            table: Table::Mbr,
            type_id: format!("0x{:02x}", e.kind),
            name: None,
        };
        if !is_extended(e.kind) {
            slots.extend(cut(disk, slot));
        }
    }
    // Logical partitions: a chain of EBRs, each relative to the
    // extended partition's start (the next link) or to its own (the data).
    if let Some(base) = extended {
        let mut ebr = base;
        for n in 0..MAX_LOGICAL {
            let Some(at) = ebr.checked_mul(SECTOR).filter(|a| a + SECTOR <= disk.size()) else { break };
            let sector = read_vec(disk, at, SECTOR as usize)?;
            if sector[510] != 0x55 || sector[511] != 0xAA {
                break;
            }
            let e = mbr_entries(&sector);
            if e[0].kind != 0 && e[0].count != 0 {
                let slot = Slot {
                    index: 5 + n,
                    start: (ebr + e[0].first) * SECTOR,
                    size: e[0].count * SECTOR,
                    table: Table::Mbr,
                    type_id: format!("0x{:02x}", e[0].kind),
                    name: None,
                };
                slots.extend(cut(disk, slot));
            }
            if !is_extended(e[1].kind) || e[1].first == 0 {
                break;
            }
            ebr = base + e[1].first;
        }
    }
    Ok(slots)
}

/// The GPT with `sector`-byte sectors, None if there is no valid one.
fn gpt(disk: &dyn ReadAt, sector: u64) -> Result<Option<Vec<Slot>>, FilesError> {
    let Some(last_lba) = (disk.size() / sector).checked_sub(1) else { return Ok(None) };
    for header_lba in [1, last_lba] {
        if (header_lba + 1) * sector > disk.size() {
            continue;
        }
        let h = read_vec(disk, header_lba * sector, sector.min(4096) as usize)?;
        if &h[..8] != b"EFI PART" {
            continue;
        }
        let header_size = le32(&h, 12) as usize;
        if !(92..=h.len()).contains(&header_size) {
            continue;
        }
        let mut copy = h[..header_size].to_vec();
        copy[16..20].fill(0);
        if crc32fast::hash(&copy) != le32(&h, 16) {
            continue;
        }
        let entries_lba = le64(&h, 72);
        let count = le32(&h, 80);
        let entry_size = le32(&h, 84);
        if count > MAX_GPT_ENTRIES || !(128..=1024).contains(&entry_size) || !entry_size.is_multiple_of(8) {
            continue;
        }
        let len = (count * entry_size) as usize;
        let Some(at) =
            entries_lba.checked_mul(sector).filter(|a| a.checked_add(len as u64).is_some_and(|e| e <= disk.size()))
        else {
            continue;
        };
        let table = read_vec(disk, at, len)?;
        if crc32fast::hash(&table) != le32(&h, 88) {
            continue;
        }
        let mut slots = Vec::new();
        for (i, e) in table.chunks_exact(entry_size as usize).enumerate() {
            if e[..16].iter().all(|b| *b == 0) {
                continue;
            }
            let (first, last) = (le64(e, 32), le64(e, 40));
            if last < first {
                continue;
            }
            let name: Vec<u16> = e[56..128].chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
            let name = String::from_utf16_lossy(&name).trim_end_matches('\0').to_string();
            let (Some(start), Some(size)) = (first.checked_mul(sector), (last - first + 1).checked_mul(sector)) else {
                continue;
            };
            let slot = Slot {
                index: i as u32 + 1,
                start,
                size,
                table: Table::Gpt,
                type_id: guid(&e[..16]),
                name: (!name.is_empty()).then_some(name),
            };
            slots.extend(cut(disk, slot));
        }
        return Ok(Some(slots));
    }
    Ok(None)
}

/// A GUID as text (its first three fields are little-endian).
fn guid(b: &[u8]) -> String {
    format!(
        "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{}",
        le32(b, 0),
        u16::from_le_bytes([b[4], b[5]]),
        u16::from_le_bytes([b[6], b[7]]),
        b[8],
        b[9],
        b[10..16].iter().map(|x| format!("{x:02X}")).collect::<String>()
    )
}

pub(crate) fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(crate) fn le64(b: &[u8], at: usize) -> u64 {
    u64::from(le32(b, at)) | (u64::from(le32(b, at + 4)) << 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mbr_disk(entries: &[(u8, u32, u32)], sectors: usize) -> Vec<u8> {
        let mut d = vec![0u8; sectors * 512];
        for (i, (kind, first, count)) in entries.iter().enumerate() {
            let e = &mut d[446 + 16 * i..446 + 16 * (i + 1)];
            e[4] = *kind;
            e[8..12].copy_from_slice(&first.to_le_bytes());
            e[12..16].copy_from_slice(&count.to_le_bytes());
        }
        d[510] = 0x55;
        d[511] = 0xAA;
        d
    }

    #[test]
    fn mbr_primaries_and_logicals() {
        let mut d = mbr_disk(&[(0x83, 2048, 100), (0x05, 4096, 2048), (0, 0, 0), (0x0c, 8192, 1 << 20)], 9000);
        // EBR at 4096: a logical at +63, and a link to the next EBR at +1024.
        let ebr = 4096 * 512;
        let e = &mut d[ebr + 446..ebr + 478];
        e[4] = 0x83;
        e[8..12].copy_from_slice(&63u32.to_le_bytes());
        e[12..16].copy_from_slice(&10u32.to_le_bytes());
        e[16 + 4] = 0x05;
        e[16 + 8..16 + 12].copy_from_slice(&1024u32.to_le_bytes());
        e[16 + 12..16 + 16].copy_from_slice(&100u32.to_le_bytes());
        d[ebr + 510] = 0x55;
        d[ebr + 511] = 0xAA;
        // The second EBR is blank: the chain ends.
        let slots = read_table(&d).expect("table");
        let got: Vec<(u32, u64, u64)> = slots.iter().map(|s| (s.index, s.start / 512, s.size / 512)).collect();
        assert_eq!(got, [(1, 2048, 100), (4, 8192, 9000 - 8192), (5, 4096 + 63, 10)]);
        assert_eq!(slots[0].type_id, "0x83");
    }

    #[test]
    fn a_looping_ebr_chain_ends() {
        // The extended partition starts at sector 1; its EBR links to
        // the EBR at +10, which links to itself.
        let mut d = mbr_disk(&[(0x05, 1, 100)], 200);
        for (at, next) in [(1usize, 10u32), (11, 10)] {
            let s = at * 512;
            let e = &mut d[s + 446..s + 478];
            e[4] = 0x83;
            e[8..12].copy_from_slice(&1u32.to_le_bytes());
            e[12..16].copy_from_slice(&1u32.to_le_bytes());
            e[16 + 4] = 0x05;
            e[16 + 8..16 + 12].copy_from_slice(&next.to_le_bytes());
            e[16 + 12..16 + 16].copy_from_slice(&1u32.to_le_bytes());
            d[s + 510] = 0x55;
            d[s + 511] = 0xAA;
        }
        assert_eq!(read_table(&d).expect("table").len(), MAX_LOGICAL as usize);
    }

    #[test]
    fn tiny_and_random_disks_do_not_panic() {
        let mut x = 0x5DEE_CE66_D1CE_4E5Du64;
        for size in [512usize, 1000, 4095, 5000, 70_000] {
            for round in 0..200 {
                let mut d: Vec<u8> = (0..size)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect();
                d[510] = 0x55;
                d[511] = 0xAA;
                if round % 2 == 0 {
                    d[446 + 4] = 0xEE;
                    if size >= 1024 {
                        d[512..520].copy_from_slice(b"EFI PART");
                    }
                }
                let slots = read_table(&d).expect("a table or none");
                assert!(slots.iter().all(|s| s.start + s.size <= size as u64));
            }
        }
    }

    #[test]
    fn no_table_is_the_whole_disk() {
        let d = vec![0u8; 4096];
        let slots = read_table(&d).expect("table");
        assert_eq!(slots, [whole_disk(&d)]);
    }

    #[test]
    fn a_gpt_with_a_bad_crc_is_not_read() {
        let mut d = mbr_disk(&[(0xEE, 1, 99)], 100);
        d[512..520].copy_from_slice(b"EFI PART");
        let slots = read_table(&d).expect("table");
        // Not a valid GPT: the MBR's protective entry is all there is.
        assert_eq!(slots.len(), 1);
        assert_eq!(slots[0].type_id, "0xee");
    }
}
