//! What one filter evaluation (one hook, one resource) may spend: steps, time,
//! memory and native stack, and a flag that cancels it.
//!
//! jaq clones the evaluation context on every filter call, tail calls
//! included, and the context holds our [`Data`]: cloning it is one step. The
//! natives that loop without calling a filter (see [`super::natives`]) charge a
//! step per value they produce. Every step also checks the native stack depth
//! and the memory the evaluation holds (see [`super::alloc`]); every
//! [`CHECK_EVERY`] steps, the clock and the cancellation flag.
//!
//! Going over the budget unwinds out of jaq with a [`Stop`] payload
//! ([`std::panic::resume_unwind`], which prints nothing), caught in
//! [`super::Filter::matches_with`]. jaq holds no state beyond the evaluation's
//! own values, so nothing is left half-done.

#[cfg(panic = "abort")]
compile_error!("filters are stopped by unwinding: build with panic = \"unwind\"");

use super::alloc::Accounting;
use jaq_core::data::{DataT, HasLut};
use jaq_json::Val;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Steps (filter calls, values produced by looping natives) per evaluation.
pub const STEPS: u64 = 1_000_000;
/// Wall-clock time per evaluation.
pub const TIME: Duration = Duration::from_millis(100);
/// Bytes an evaluation may hold allocated at once.
pub const MEMORY: usize = 64 << 20;
/// Bytes of native stack jaq's own recursion (`def f: 1 + f; f`) may use
/// below the frame that starts the evaluation. Evaluations run on a far
/// larger stack (see `stack.rs`): the rest is for jaq's unmetered recursion
/// on deep values (dropping, comparing, printing them).
pub const STACK: usize = 1 << 20;

/// How often (in steps) the clock and the cancellation flag are read.
const CHECK_EVERY: u64 = 1024;

/// The limits of one evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub steps: u64,
    pub time: Duration,
    pub memory: usize,
    pub stack: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            steps: STEPS,
            time: TIME,
            memory: MEMORY,
            stack: STACK,
        }
    }
}

/// The limit an evaluation went over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Exceeded {
    #[error("more than {0} steps")]
    Steps(u64),
    #[error("took longer than {}ms", .0.as_millis())]
    Time(Duration),
    #[error("used more than {} MiB", .0 >> 20)]
    Memory(usize),
    #[error("recursed too deeply")]
    Depth,
}

/// Why an evaluation stopped early: the payload of the unwind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    Exceeded(Exceeded),
    Cancelled,
}

/// The running account of one evaluation. Lives on the evaluating thread's
/// stack; jaq reaches it through [`Data`].
pub(crate) struct Budget<'a> {
    limits: Limits,
    steps: Cell<u64>,
    next_check: Cell<u64>,
    deadline: Instant,
    /// Address of a local in the frame that started the evaluation.
    stack_base: usize,
    cancel: &'a AtomicBool,
}

#[inline(always)]
fn stack_address() -> usize {
    let marker = 0u8;
    std::hint::black_box(&marker) as *const u8 as usize
}

impl<'a> Budget<'a> {
    pub(crate) fn new(limits: Limits, cancel: &'a AtomicBool) -> Budget<'a> {
        Budget {
            limits,
            steps: Cell::new(0),
            next_check: Cell::new(0),
            deadline: Instant::now() + limits.time,
            stack_base: stack_address(),
            cancel,
        }
    }

    /// Spends `n` steps; unwinds with a [`Stop`] when something ran out.
    #[inline]
    pub(crate) fn charge(&self, n: u64) {
        if self.stack_base.abs_diff(stack_address()) > self.limits.stack {
            self.stop(Stop::Exceeded(Exceeded::Depth));
        }
        if Accounting::peak() > self.limits.memory {
            self.stop(Stop::Exceeded(Exceeded::Memory(self.limits.memory)));
        }
        let steps = self.steps.get().saturating_add(n);
        self.steps.set(steps);
        if steps >= self.next_check.get() {
            self.check(steps);
        }
    }

    #[cold]
    fn check(&self, steps: u64) {
        if steps > self.limits.steps {
            self.stop(Stop::Exceeded(Exceeded::Steps(self.limits.steps)));
        }
        if self.cancel.load(Ordering::Relaxed) {
            self.stop(Stop::Cancelled);
        }
        if Instant::now() > self.deadline {
            self.stop(Stop::Exceeded(Exceeded::Time(self.limits.time)));
        }
        let next = steps.saturating_add(CHECK_EVERY);
        // Land exactly on the step limit, so it is never overshot.
        self.next_check.set(if steps < self.limits.steps {
            next.min(self.limits.steps.saturating_add(1))
        } else {
            next
        });
    }

    #[cold]
    #[inline(never)]
    fn stop(&self, why: Stop) {
        // A step taken while already unwinding (a drop that runs a filter)
        // must not start a second unwind: that would abort the process.
        if std::thread::panicking() {
            return;
        }
        std::panic::resume_unwind(Box::new(why));
    }
}

/// The jaq data kind of fhir-bridge's filters: JSON values, and a context that
/// charges the evaluation's [`Budget`] each time jaq clones it.
pub struct Fueled;

pub(crate) type Lut = jaq_core::Lut<Fueled>;

impl DataT for Fueled {
    type V<'a> = Val;
    type Data<'a> = Data<'a>;
}

/// What jaq carries in every context: the program and the budget.
pub struct Data<'a> {
    lut: &'a Lut,
    budget: &'a Budget<'a>,
}

impl<'a> Data<'a> {
    pub(crate) fn new(lut: &'a Lut, budget: &'a Budget<'a>) -> Data<'a> {
        Data { lut, budget }
    }

    pub(crate) fn budget(&self) -> &'a Budget<'a> {
        self.budget
    }
}

impl Clone for Data<'_> {
    #[inline]
    fn clone(&self) -> Self {
        self.budget.charge(1);
        Data {
            lut: self.lut,
            budget: self.budget,
        }
    }
}

impl<'a> HasLut<'a, Fueled> for Data<'a> {
    fn lut(&self) -> &'a Lut {
        self.lut
    }
}
