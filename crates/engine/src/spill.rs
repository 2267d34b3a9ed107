//! Records past a memory budget, kept in a file mapped into memory.
//!
//! Why: a first sync holds every record it read until its last range is planned (the
//! hubs borrow their ids, and each range reads its contacts and their accounts again).
//! At ten million partners they are about 2.5 GB, half of what the run held once
//! matched. Written to an unnamed file as the listing comes, they are read through a
//! memory map: the pages a step touches come back from the system's page cache (or
//! the disk), and the run lets them go again between steps ([`HeldBytes::let_go`]), so
//! that what the process holds is the pages in use, not every record. The system
//! takes back cached pages under memory pressure; a heap copy it cannot.
//!
//! Why not read the records again from the connector by id: what a run plans from
//! must be what it read and hashed, and a record read again may have changed since.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;

use memmap2::{Mmap, MmapOptions};
use tandem_model::{HeldBytes, PackedRecords};

/// The heap bytes of a listing's records from which they go to the file: few enough
/// mappings (about 40 for ten million records), big enough writes.
pub(crate) const SPILL_CHUNK: usize = 64 << 20;

/// Where mapped segments start in the file: a multiple of the page size on every
/// system Tandem runs on.
const SEGMENT_ALIGN: u64 = 64 << 10;

/// An unnamed file in a folder, written once per segment and mapped.
///
/// Invariant: a segment is written before it is mapped and never written again; the
/// file has no name, so no other process opens it (it goes when the last mapping does,
/// a crash included).
#[derive(Debug)]
pub(crate) struct Spill {
    file: std::fs::File,
    len: u64,
}

/// One segment of the file, mapped: the buffers one call moved, back to back.
struct Segment(Mmap);

/// One buffer's bytes in a [`Segment`]. The segment's pages go with its first slice's
/// (the one at its start) `let_go`: the records let all their buffers go together,
/// and a segment of many small pages of a listing is advised once, not once per page.
struct Slice {
    segment: Arc<Segment>,
    range: std::ops::Range<usize>,
}

impl HeldBytes for Slice {
    fn bytes(&self) -> &[u8] {
        &self.segment.0[self.range.clone()]
    }

    #[cfg(unix)]
    fn let_go(&self) {
        if self.range.start != 0 {
            return;
        }
        // SAFETY: the map is of a file, shared and read-only: the pages it drops are
        // read again from the file when touched, with the same bytes (the segment is
        // never written again). Nothing borrowed from it changes.
        #[allow(unsafe_code)]
        let dropped = unsafe {
            self.segment
                .0
                .unchecked_advise(memmap2::UncheckedAdvice::DontNeed)
        };
        // A system that refuses the advice keeps the pages: more memory, same records.
        let _ = dropped;
    }

    /// Elsewhere the system keeps the pages until it needs the memory.
    #[cfg(not(unix))]
    fn let_go(&self) {}
}

impl Spill {
    /// An unnamed file in `folder`; a folder held in memory is said in the log.
    pub fn new(folder: &Path) -> std::io::Result<Spill> {
        let file = tempfile::tempfile_in(folder)?;
        if is_in_memory(folder) {
            tracing::warn!(
                folder = %folder.display(),
                "the records read past [sync] memory_budget go to a folder held in memory \
                 (tmpfs), so they stay in memory; set [sync] spill_folder to a folder on a disk"
            );
        }
        Ok(Spill { file, len: 0 })
    }

    /// `buffers` written to the file after what it holds, back to back as one
    /// segment, mapped once: a slice of it for each. One map per call, however many
    /// pages the buffers came in (a system allows a process some 65,000 maps).
    pub fn hold(&mut self, buffers: &[&[u8]]) -> std::io::Result<Vec<Arc<dyn HeldBytes>>> {
        let at = self.len.next_multiple_of(SEGMENT_ALIGN);
        let len: usize = buffers.iter().map(|b| b.len()).sum();
        self.file.seek(SeekFrom::Start(at))?;
        for bytes in buffers {
            self.file.write_all(bytes)?;
        }
        self.len = at + len as u64;
        // SAFETY: the segment was just written and is never written again; the file
        // has no name, so no other process changes it under the map (see `Spill`).
        #[allow(unsafe_code)]
        let map = unsafe { MmapOptions::new().offset(at).len(len).map(&self.file)? };
        // Planning reads the records out of file order (a contact's accounts, a
        // match): read ahead, each page touched brought 32 from the disk once the
        // system had dropped them (a first sync at 10M in 4 GiB read 137 GB).
        #[cfg(unix)]
        map.advise(memmap2::Advice::Random)?;
        let segment = Arc::new(Segment(map));
        let mut start = 0;
        let slices = buffers.iter().map(|bytes| {
            let range = start..start + bytes.len();
            start = range.end;
            let slice = Slice {
                segment: segment.clone(),
                range,
            };
            Arc::new(slice) as Arc<dyn HeldBytes>
        });
        Ok(slices.collect())
    }

    /// Moves the heap buffers of `records` into the file.
    pub fn take(&mut self, records: &mut PackedRecords) -> std::io::Result<()> {
        records.hold(|buffers| self.hold(buffers))
    }
}

/// Whether `folder` is on a file system held in memory (tmpfs, ramfs): a file there
/// takes memory as the heap would.
#[cfg(target_os = "linux")]
pub(crate) fn is_in_memory(folder: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    let Ok(path) = std::ffi::CString::new(folder.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `path` is a NUL-terminated string and `stat` a zeroed struct statfs
    // that the call fills; both outlive the call.
    #[allow(unsafe_code)]
    let kind = unsafe {
        let mut stat: libc::statfs = std::mem::zeroed();
        match libc::statfs(path.as_ptr(), &mut stat) {
            0 => stat.f_type as i64,
            _ => return false,
        }
    };
    kind == TMPFS_MAGIC || kind == RAMFS_MAGIC
}

/// Elsewhere the folder is taken as given.
#[cfg(not(target_os = "linux"))]
pub(crate) fn is_in_memory(_folder: &Path) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use tandem_model::{EntityKind, Fields, PackedRecord, Record};

    use super::*;

    #[test]
    fn records_moved_to_the_file_read_as_before_and_after_their_pages_go() {
        let folder = tempfile::tempdir().unwrap();
        let mut spill = Spill::new(folder.path()).unwrap();
        let record = |i: usize| {
            let fields = Fields::new().with("name", format!("Partner {i}"));
            Record::new(EntityKind::Customer, format!("K{i:06}"), fields)
        };
        let mut records = PackedRecords::new();
        let mut all = Vec::new();
        // Three calls, each of ten pages of a listing: a segment each.
        for part in 0..3 {
            for page in 0..10 {
                let mut packed = PackedRecords::new();
                for i in (part * 10 + page) * 100..(part * 10 + page + 1) * 100 {
                    packed.push(&record(i));
                    all.push(record(i));
                }
                records.append(packed);
            }
            spill.take(&mut records).unwrap();
            assert_eq!(records.growing_bytes(), 0);
        }
        records.push(&record(3000));
        all.push(record(3000));
        records.let_go_held();
        let read: Vec<Record> = records.iter().map(PackedRecord::unpack).collect();
        assert_eq!(read, all);
        // Segments start aligned, one after the other.
        assert!(spill.len > 2 * SEGMENT_ALIGN);
        // Nothing is left in the folder: the file has no name.
        assert_eq!(std::fs::read_dir(folder.path()).unwrap().count(), 0);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_folder_held_in_memory_is_told_from_one_on_a_disk() {
        // Every tmpfs the system mounts (/dev/shm, /run, ...); /proc is neither.
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        for line in mounts.lines() {
            let parts: Vec<&str> = line.split(' ').collect();
            if parts.get(2) == Some(&"tmpfs") && !parts[1].contains('\\') {
                assert!(is_in_memory(Path::new(parts[1])), "{line}");
            }
        }
        assert!(!is_in_memory(Path::new("/proc")));
        assert!(!is_in_memory(Path::new("/no/such/folder")));
    }
}
