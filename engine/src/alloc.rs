//! Tuning the process's memory allocator when it is mimalloc (the `sluice` binary installs it as
//! the global allocator; an embedder that does not gets harmless calls). An action's run allocates and frees a few hundred
//! small objects (WASI context, store, strings of the job and its events); glibc's malloc spent
//! a quarter of the engine's per-action time on them (consolidating its fast bins on every
//! larger request), mimalloc's thread-local free lists a fraction of that (see BENCHMARKS.md).
use libmimalloc_sys as mi;

/// `mi_option_purge_delay` (not among the crate's constants): how long freed memory stays
/// committed in case it is reused soon.
const PURGE_DELAY: mi::mi_option_t = 15;

/// For a long-running service: give freed memory back to the operating system at once. A
/// service holds thousands of waiting executions and should cost their records, not the peak
/// of starting them; a local run prefers the speed of reusing memory still committed.
#[allow(unsafe_code)]
pub fn return_freed_memory_promptly() {
    // SAFETY: options are plain integers that mimalloc reads when it purges.
    unsafe { mi::mi_option_set(PURGE_DELAY, 0) }
}

/// Return what the allocator holds but nothing uses, now (after a burst of work).
#[allow(unsafe_code)]
pub fn release_free_memory() {
    // SAFETY: mi_collect only frees memory that no live object uses.
    unsafe { mi::mi_collect(true) }
}
