//! The native stack filter evaluations run on.
//!
//! jaq drops, compares and prints values recursively, in native code that no
//! budget check reaches, and a filter can build a value nested as deep as its
//! steps allow (`reduce range(300000) as $i (0; [.])`): dropping it takes
//! about 50 bytes of stack per level, printing it about 800. A thread's own
//! stack (2 to 8 MiB here) overflows, and an overflow aborts the process.
//!
//! So evaluations run on a [`SIZE`] stack: address space reserved once per
//! thread (`MAP_NORESERVE`, with a guard page), reused by every evaluation on
//! that thread, and switched to with `psm`. Pages an evaluation touched deep
//! down are given back after it (`MADV_DONTNEED`); the top [`KEEP`] stays.
//! Where the mapping cannot be had, evaluations run on the thread's own stack.

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

/// Usable size of the evaluation stack.
pub const SIZE: usize = 512 << 20;
/// The top of the stack, kept mapped between evaluations (ordinary ones use a
/// few dozen KiB); what lies below is released after each evaluation.
const KEEP: usize = 1 << 20;

thread_local! {
    static CACHED: Cell<Option<Mapping>> = const { Cell::new(None) };
    static ON_EVAL_STACK: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` on this thread's evaluation stack (in place when already on it).
pub fn with_eval_stack<R>(f: impl FnOnce() -> R) -> R {
    if ON_EVAL_STACK.with(Cell::get) {
        return f();
    }
    let Some(stack) = CACHED.with(Cell::take).or_else(Mapping::new) else {
        return f();
    };
    ON_EVAL_STACK.with(|on| on.set(true));
    let result = stack.run(|| catch_unwind(AssertUnwindSafe(f)));
    ON_EVAL_STACK.with(|on| on.set(false));
    stack.release_deep_pages();
    CACHED.with(|c| c.set(Some(stack)));
    result.unwrap_or_else(|panic| resume_unwind(panic))
}

/// An anonymous mapping: a guard page, then [`SIZE`] bytes of stack.
struct Mapping {
    start: *mut u8,
    len: usize,
    page: usize,
}

impl Mapping {
    fn new() -> Option<Mapping> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .ok()
            .filter(|p| p.is_power_of_two() && SIZE.is_multiple_of(*p))?;
        let len = SIZE + page;
        // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
        let start = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if start == libc::MAP_FAILED {
            return None;
        }
        let mapping = Mapping {
            start: start.cast(),
            len,
            page,
        };
        // The guard page at the low end (stacks grow down on every target
        // this runs on; psm takes the low address either way).
        // SAFETY: the first page of the mapping just created.
        if unsafe { libc::mprotect(start, page, libc::PROT_NONE) } != 0 {
            return None; // dropped: unmapped
        }
        Some(mapping)
    }

    fn base(&self) -> *mut u8 {
        // SAFETY: `page < len`, inside the mapping.
        unsafe { self.start.add(self.page) }
    }

    fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        psm::psm_stack_manipulation! {
            yes {
                // SAFETY: `base()..base() + SIZE` is writable memory of this
                // mapping, page-aligned, used by no one else (it is taken out
                // of the cache while in use), with a guard page below it;
                // `f` does not unwind (the caller catches every panic).
                unsafe { psm::on_stack(self.base(), SIZE, f) }
            }
            no {
                f()
            }
        }
    }

    /// Gives back the pages below the top [`KEEP`] bytes, if the last
    /// evaluation reached them. Rust touches every page a stack grows into
    /// (stack probes), so it did if the page just below [`KEEP`] is resident.
    fn release_deep_pages(&self) {
        let deep = SIZE - KEEP;
        let mut resident = [0u8; 1];
        // SAFETY: `deep - page .. deep` is a page inside the mapping, and
        // `resident` has room for the one page asked about.
        let touched = unsafe {
            libc::mincore(
                self.base().add(deep - self.page).cast(),
                self.page,
                resident.as_mut_ptr().cast(),
            )
        } != 0
            || resident[0] & 1 != 0;
        if touched {
            // SAFETY: a range inside the mapping; its contents are dead (no
            // evaluation is running on it).
            unsafe {
                libc::madvise(self.base().cast(), deep, libc::MADV_DONTNEED);
            }
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the whole mapping made in `new`, not in use.
        unsafe {
            libc::munmap(self.start.cast(), self.len);
        }
    }
}
