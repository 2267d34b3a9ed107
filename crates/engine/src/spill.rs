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
//! Within a step the pages go too: a thread beside the run lets every mapped segment's
//! pages go each [`LET_GO_EVERY`] ([`Trimmer`]). Matching and the creates read every
//! record in one step, and without it held up to 2.5 GB of mapped pages beside the
//! heap at ten million partners; now what is resident is what a step read in the
//! last hundredth of a second.
//!
//! Why not read the records again from the connector by id: what a run plans from
//! must be what it read and hashed, and a record read again may have changed since.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use memmap2::{Mmap, MmapOptions};
use tandem_model::{HeldBytes, PackedRecords};

/// The heap bytes of a listing's records from which they go to the file: few enough
/// mappings (about 40 for ten million records), big enough writes.
pub(crate) const SPILL_CHUNK: usize = 64 << 20;

/// Where mapped segments start in the file: a multiple of the page size on every
/// system Tandem runs on.
const SEGMENT_ALIGN: u64 = 64 << 10;

/// How often the [`Trimmer`] lets the mapped pages go. A step that reads a few bytes
/// of each record in order faults a page in a microsecond or so: planning the links
/// and creates at ten million partners held 400 MB between let-gos 100 ms apart. A
/// let-go of pages not mapped costs next to nothing.
pub(crate) const LET_GO_EVERY: Duration = Duration::from_millis(10);

/// An unnamed file in a folder, written once per segment and mapped.
///
/// Invariant: a segment is written before it is mapped and never written again; the
/// file has no name, so no other process opens it (it goes when the last mapping does,
/// a crash included).
#[derive(Debug)]
pub(crate) struct Spill {
    file: Arc<std::fs::File>,
    len: u64,
    mapped: Arc<Trimmer>,
}

/// One segment of the file, mapped: the buffers one call moved, back to back. It
/// keeps its spill's [`Trimmer`] alive, which lets its pages go.
struct Segment {
    map: Mmap,
    _trimmed_by: Arc<Trimmer>,
    /// The file and where in it the segment lies: its room is given back to the disk
    /// when the segment goes (records copied elsewhere, [`Spill::in_order`]).
    file: Arc<std::fs::File>,
    at: u64,
}

impl Drop for Segment {
    /// Nothing reads the segment again: its blocks and cached pages go.
    #[cfg(target_os = "linux")]
    fn drop(&mut self) {
        let (Ok(at), Ok(len)) = (i64::try_from(self.at), i64::try_from(self.map.len())) else {
            return;
        };
        // SAFETY: the descriptor is the spill's open file (held by `self.file`); the
        // call takes plain integers and changes no memory of this process.
        #[allow(unsafe_code)]
        let punched = unsafe {
            libc::fallocate(
                std::os::fd::AsRawFd::as_raw_fd(&*self.file),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                at,
                len,
            )
        };
        // A file system that cannot punch keeps the blocks until the file goes.
        let _ = punched;
    }

    /// Elsewhere the room goes with the file.
    #[cfg(not(target_os = "linux"))]
    fn drop(&mut self) {}
}

impl Segment {
    /// The pages go from this process's memory until touched again.
    #[cfg(unix)]
    fn let_go(&self) {
        // SAFETY: the map is of a file, shared and read-only: the pages it drops are
        // read again from the file when touched, with the same bytes (the segment is
        // never written again), by whichever thread touches them, at the same address.
        // Nothing borrowed from it changes.
        #[allow(unsafe_code)]
        let dropped = unsafe { (self.map).unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
        // A system that refuses the advice keeps the pages: more memory, same records.
        let _ = dropped;
    }

    /// Elsewhere the system keeps the pages until it needs the memory.
    #[cfg(not(unix))]
    fn let_go(&self) {}
}

/// One buffer's bytes in a [`Segment`]. The segment's pages go with its first slice's
/// (the one at its start) `let_go`: the records let all their buffers go together,
/// and a segment of many small pages of a listing is advised once, not once per page.
struct Slice {
    segment: Arc<Segment>,
    range: std::ops::Range<usize>,
}

impl HeldBytes for Slice {
    fn bytes(&self) -> &[u8] {
        &self.segment.map[self.range.clone()]
    }

    fn let_go(&self) {
        if self.range.start == 0 {
            self.segment.let_go();
        }
    }
}

/// The segments of one [`Spill`], let go every [`LET_GO_EVERY`] by a thread of their
/// own while any is mapped.
///
/// Invariant: the thread holds neither the trimmer nor a segment between its
/// let-gos (weak references only), so a segment is unmapped when its records are
/// dropped; the trimmer lives while its [`Spill`] or a segment does, and the thread
/// ends once the trimmer is gone.
#[derive(Debug, Default)]
struct Trimmer {
    segments: Mutex<Vec<Weak<Segment>>>,
    /// While above zero, no page is let go ([`Spill::in_order`]).
    kept: std::sync::atomic::AtomicUsize,
}

impl Trimmer {
    /// A trimmer whose thread runs while the spill or a segment holds it.
    fn start() -> Arc<Trimmer> {
        let trimmer = Arc::new(Trimmer::default());
        if cfg!(not(unix)) {
            // Nothing to let go there (`Segment::let_go`).
            return trimmer;
        }
        let watched = Arc::downgrade(&trimmer);
        let spawned = std::thread::Builder::new()
            .name("tandem-spill-pages".to_owned())
            .spawn(move || while Trimmer::let_go_once(&watched) {});
        if let Err(error) = spawned {
            // The records read the same; only their pages stay until the run lets go.
            tracing::warn!(%error, "the records' pages in the spill file are let go between steps only");
        }
        trimmer
    }

    fn add(&self, segment: &Arc<Segment>) {
        self.segments().push(Arc::downgrade(segment));
    }

    fn segments(&self) -> std::sync::MutexGuard<'_, Vec<Weak<Segment>>> {
        // The list is whole whatever panicked while it was held.
        self.segments.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits [`LET_GO_EVERY`], then lets the pages of every segment still mapped go;
    /// false once the trimmer is gone (its spill and every segment).
    fn let_go_once(watched: &Weak<Trimmer>) -> bool {
        std::thread::sleep(LET_GO_EVERY);
        let Some(trimmer) = watched.upgrade() else {
            return false;
        };
        if trimmer.kept.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            return true;
        }
        let live: Vec<Arc<Segment>> = {
            let mut segments = trimmer.segments();
            segments.retain(|s| s.strong_count() > 0);
            segments.iter().filter_map(Weak::upgrade).collect()
        };
        drop(trimmer);
        live.iter().for_each(|segment| segment.let_go());
        true
    }
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
        Ok(Spill {
            file: Arc::new(file),
            len: 0,
            mapped: Trimmer::start(),
        })
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
        let segment = Arc::new(Segment {
            map,
            _trimmed_by: self.mapped.clone(),
            file: self.file.clone(),
            at,
        });
        self.mapped.add(&segment);
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

    /// `records` copied into the file again in their order (id order, once sorted),
    /// a [`SPILL_CHUNK`] at a time, their old segments given back.
    ///
    /// Why: records go to the file in the order they lie in, a listing's: as it
    /// comes, or from the heap once everything is read. When it came in another
    /// order than its ids (a system that lists by name, or numbers its records apart
    /// from another's), matching and planning, which go in id order, read the file at
    /// random, and on Linux with large page-cache folios each such read maps up to
    /// 1 MiB: at ten million partners with the accounts' rows shuffled, up to 1 GB
    /// beside the heap. Copied in order, they read it front to back.
    ///
    /// Of records already in the file the copy reads it at random, once: call it
    /// under [`Spill::keep_pages`], with the sort before it, so that each part of the
    /// file is mapped once (the listing at most, before planning holds anything).
    /// The callers let the pages go after it, as after any move to the file.
    pub fn in_order(&mut self, records: &mut PackedRecords) -> std::io::Result<()> {
        records.repack_in_order(SPILL_CHUNK, |copy| self.take(copy))
    }

    /// No page of this file is let go while the answer is held: for a step that
    /// reads it at random once, where letting pages go would map them again and
    /// again.
    pub fn keep_pages(&self) -> KeptPages {
        use std::sync::atomic::Ordering;
        self.mapped.kept.fetch_add(1, Ordering::Relaxed);
        KeptPages(self.mapped.clone())
    }
}

/// Pages kept mapped while held ([`Spill::keep_pages`]).
pub(crate) struct KeptPages(Arc<Trimmer>);

impl Drop for KeptPages {
    fn drop(&mut self) {
        (self.0.kept).fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
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

    /// A listing that came in another order than its ids: sorted, it lies in the
    /// file in id order, reads as before, and its first copy's room is given back.
    #[test]
    fn records_listed_out_of_order_are_copied_into_the_file_in_id_order() {
        let folder = tempfile::tempdir().unwrap();
        let mut spill = Spill::new(folder.path()).unwrap();
        let record = |i: usize| {
            let fields = Fields::new().with("name", format!("Partner {i} {}", "x".repeat(400)));
            Record::new(EntityKind::Customer, format!("K{i:06}"), fields)
        };
        // Ids in a scrambled order, in three calls of a megabyte or so.
        let order: Vec<usize> = (0..6000).map(|i| (i * 3571) % 6000).collect();
        let mut records = PackedRecords::new();
        for part in order.chunks(2000) {
            part.iter().for_each(|&i| records.push(&record(i)));
            spill.take(&mut records).unwrap();
        }
        let listed = records.byte_len() as u64;
        let records = crate::Records::from_spilled(records, &mut spill).unwrap();
        let read: Vec<Record> = records.values().map(PackedRecord::unpack).collect();
        assert_eq!(read, (0..6000).map(record).collect::<Vec<_>>());
        assert_eq!(records.heap_bytes(), 0, "the copy went to the file");
        let at: Vec<usize> = records
            .values()
            .map(|r| std::ptr::from_ref(r).cast::<u8>() as usize)
            .collect();
        assert!(at.is_sorted(), "the records lie in the file in id order");
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::fs::MetadataExt;
            let on_disk = spill.file.metadata().unwrap().blocks() * 512;
            assert!(
                on_disk < listed + listed / 4,
                "{on_disk} bytes on the disk for {listed} bytes of records"
            );
        }
    }

    /// The KiB of the mapping holding `at` that this process has resident
    /// (`/proc/self/smaps`).
    #[cfg(target_os = "linux")]
    fn resident_kib(at: *const u8) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let at = at as usize;
        let mut lines = smaps.lines();
        while let Some(line) = lines.next() {
            let range = line.split(' ').next().unwrap_or_default();
            let Some((start, end)) = range.split_once('-') else {
                continue;
            };
            let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            ) else {
                continue;
            };
            if (start..end).contains(&at) {
                let rss = lines.find(|l| l.starts_with("Rss:")).unwrap();
                return rss.split_whitespace().nth(1).unwrap().parse().unwrap();
            }
        }
        panic!("no mapping holds {at:#x}");
    }

    /// Within a step, with nothing calling `let_go`: the pages a read touched go
    /// again, and the thread that lets them go ends with the spill and its records.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_pages_a_step_reads_go_while_it_runs_and_the_thread_with_the_records() {
        let folder = tempfile::tempdir().unwrap();
        let mut spill = Spill::new(folder.path()).unwrap();
        let bytes: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
        let held = spill.hold(&[&bytes]).unwrap();
        let read = held[0].bytes();
        let touch = || {
            let sum: u64 = read.iter().step_by(4096).map(|b| u64::from(*b)).sum();
            assert_eq!(
                std::hint::black_box(sum),
                bytes
                    .iter()
                    .step_by(4096)
                    .map(|b| u64::from(*b))
                    .sum::<u64>()
            );
        };
        // Resident once touched (a let-go may fall between the touch and the look).
        let seen = (0..20).any(|_| {
            touch();
            resident_kib(read.as_ptr()) >= 4 << 10
        });
        assert!(seen, "the pages touched were never resident");
        let gone = (0..400).any(|_| {
            std::thread::sleep(LET_GO_EVERY);
            resident_kib(read.as_ptr()) == 0
        });
        assert!(
            gone,
            "the pages stayed resident: {} KiB",
            resident_kib(read.as_ptr())
        );
        assert_eq!(read, &bytes[..]);
        let trimmer = Arc::downgrade(&spill.mapped);
        drop(spill);
        std::thread::sleep(LET_GO_EVERY * 3);
        assert!(
            trimmer.upgrade().is_some(),
            "the thread ended with records mapped"
        );
        drop(held);
        let ended = (0..400).any(|_| {
            std::thread::sleep(LET_GO_EVERY);
            trimmer.upgrade().is_none()
        });
        assert!(
            ended,
            "the thread goes on once the spill and its records are gone"
        );
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
