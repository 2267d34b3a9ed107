//! The allocator of Tandem's binaries, shared by `tandem` and `tandem-bench` (which
//! includes this file) so that benchmark figures are the binary's.
//!
//! A run allocates and frees millions of small strings; mimalloc does that in about two
//! thirds of the time glibc's allocator takes. Plugins free their own buffers, so the
//! host's allocator is never asked to free theirs. Built without transparent huge pages
//! (`no_thp`): faulting memory in by 2 MiB pages cost more system time than it saved.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Keeps freed memory in the process for ten seconds instead of 10 ms before giving it
/// back to the OS. A sync frees the records it read (gigabytes at a million partners)
/// and then allocates as much again to apply the plan; pages given back must be faulted
/// in and zeroed again on their next use, which cost 7 % of an initial sync of 1M
/// partners (docs/BENCHMARKS.md). Memory nobody reuses still goes back, ten seconds
/// later.
///
/// `MIMALLOC_PURGE_DELAY` (milliseconds), when set, wins: mimalloc reads it itself.
pub fn keep_freed_memory() {
    set_purge_delay(10_000);
}

/// Keeps freed memory one second, for a run in ranges (`[sync] hubs_per_range`, or
/// `memory_budget` but for the making of its plan's head): memory kept ten seconds
/// counted in its peak (1,179 to 1,189 MiB instead of 965 to 968 for a first sync of
/// 1M in ranges of 100,000), but given back at mimalloc's own pace (10 ms) each range
/// faulted its pages in again: for a first sync of 1M within 1 GiB, 2.3M page faults
/// instead of 0.6M and 8.4 s of system time instead of 4.1, about 2 s of its 20
/// (docs/BENCHMARKS.md). `MIMALLOC_PURGE_DELAY`, when set, wins.
pub fn keep_freed_memory_briefly() {
    set_purge_delay(1_000);
}

/// A run with a memory budget at `step`: what was freed goes back to the OS now, so
/// that the step starts from what the run holds; the head of the plan is then made
/// giving freed memory back at mimalloc's own pace (10 ms), the ranges keeping it a
/// second ([`keep_freed_memory_briefly`]). At ten million partners with 4 GiB, the
/// head is the peak: memory kept a second while it was planned put the peak 40 to 76
/// MiB over the budget.
pub fn budget_step(step: tandem_engine::MemoryStep) {
    // SAFETY: `mi_collect` takes no pointer; it gives back what mimalloc holds unused.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
    match step {
        tandem_engine::MemoryStep::Planning => set_purge_delay(10),
        tandem_engine::MemoryStep::Ranges => keep_freed_memory_briefly(),
    }
}

/// How long mimalloc keeps freed memory, unless `MIMALLOC_PURGE_DELAY` says.
fn set_purge_delay(ms: std::ffi::c_long) {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // `mi_option_purge_delay` in mimalloc.h (option indexes are stable: retired
    // options keep their slot); libmimalloc-sys names no constant for it.
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: sets an integer option; mimalloc reads it atomically when it purges.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, ms);
    }
}
