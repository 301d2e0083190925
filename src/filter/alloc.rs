//! Allocation accounting for filter evaluations.
//!
//! The process's global allocator is [`System`] wrapped in a counter. While a
//! thread evaluates a filter (between [`Accounting::start`] and the guard's
//! drop), every byte it allocates or frees moves that thread's live count, and
//! the highest live count is kept. Other threads, and the same thread outside
//! an evaluation, pay one thread-local read per allocation and count nothing.
//!
//! The allocator never panics, never allocates and never blocks: it only
//! counts. Stopping an evaluation that went over its memory budget is done by
//! the budget ([`super::budget`]) at its next step, with an unwind.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The global allocator: [`System`], counting per thread while a filter runs.
pub struct CountingAlloc;

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

struct Account {
    active: Cell<bool>,
    /// Bytes allocated minus bytes freed since the evaluation started; freeing
    /// what was allocated before it (e.g. the input) can make it negative.
    live: Cell<isize>,
    peak: Cell<isize>,
}

thread_local! {
    // `const` and free of `Drop`: no lazy initialisation, no destructor
    // registration, so using it inside the allocator allocates nothing.
    static ACCOUNT: Account = const {
        Account {
            active: Cell::new(false),
            live: Cell::new(0),
            peak: Cell::new(0),
        }
    };
}

#[inline]
fn note(delta: isize) {
    // `try_with` never panics; a thread being torn down just counts nothing.
    let _ = ACCOUNT.try_with(|a| {
        if a.active.get() {
            let live = a.live.get().saturating_add(delta);
            a.live.set(live);
            if live > a.peak.get() {
                a.peak.set(live);
            }
        }
    });
}

fn signed(n: usize) -> isize {
    isize::try_from(n).unwrap_or(isize::MAX)
}

// SAFETY: every method forwards to `System` with the caller's arguments and
// returns its result unchanged; the bookkeeping touches only `Cell`s of a
// const-initialised thread-local and cannot panic or allocate.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is (see the impl's comment).
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            note(signed(layout.size()));
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            note(signed(layout.size()));
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) };
        note(-signed(layout.size()));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            note(signed(new_size).saturating_sub(signed(layout.size())));
        }
        p
    }
}

/// Turns counting on for this thread until the returned guard drops.
pub(crate) struct Accounting {
    was_active: bool,
    saved: (isize, isize),
}

impl Accounting {
    /// Starts counting from zero on the current thread.
    pub(crate) fn start() -> Accounting {
        ACCOUNT.with(|a| Accounting {
            was_active: a.active.replace(true),
            saved: (a.live.replace(0), a.peak.replace(0)),
        })
    }

    /// The most this evaluation has had allocated at once, in bytes.
    #[inline]
    pub(crate) fn peak() -> usize {
        ACCOUNT
            .try_with(|a| usize::try_from(a.peak.get()).unwrap_or(0))
            .unwrap_or(0)
    }
}

impl Drop for Accounting {
    fn drop(&mut self) {
        let _ = ACCOUNT.try_with(|a| {
            a.active.set(self.was_active);
            a.live.set(self.saved.0);
            a.peak.set(self.saved.1);
        });
    }
}
