//! A spinning thread team for one CPU engine step.
//!
//! A decode step of a small model is a few hundred parallel loops of a few microseconds each
//! (four products and the attention per layer). Through rayon each loop wakes the other workers,
//! which go back to sleep before the next loop: on 2 cores a fifth of the decode time went to
//! futex wake-ups and context switches (BENCHMARKS.md). For the length of one step, [`with_team`]
//! parks the other rayon workers in a spin loop instead, and [`par_for`] hands them each loop's
//! tasks through three atomics, as llama.cpp's thread pool does. Outside a step (or on a helper
//! thread) [`par_for`] is plain rayon.
//!
//! Which thread runs which task never changes a result: callers partition their output into
//! tasks that each write their own part.

use rayon::prelude::*;
use std::cell::Cell;
use std::hint::spin_loop;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering::SeqCst};

/// One loop: `f(0..total)`.
struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
    total: usize,
}

struct Team {
    /// The running [`Job`] (null between loops).
    job: AtomicPtr<()>,
    /// Next task index to take, tasks finished.
    next: AtomicUsize,
    done: AtomicUsize,
    /// Helpers that may hold a reference to `job`.
    busy: AtomicUsize,
    quit: AtomicBool,
}

thread_local! {
    /// The team whose leader is this thread (null elsewhere and inside a task).
    static LEADING: Cell<*const Team> = const { Cell::new(std::ptr::null()) };
}

impl Team {
    fn take_tasks(&self, job: &Job) {
        loop {
            let i = self.next.fetch_add(1, SeqCst);
            if i >= job.total {
                return;
            }
            (job.f)(i);
            self.done.fetch_add(1, SeqCst);
        }
    }

    /// A helper's life: take tasks of whatever loop is running until the leader says quit.
    fn help(&self) {
        while !self.quit.load(SeqCst) {
            if self.job.load(SeqCst).is_null() {
                spin_loop();
                continue;
            }
            // Announce, then look again: the leader clears `job` before it waits for `busy` to
            // drop to 0, so a job seen after the announcement is still alive.
            self.busy.fetch_add(1, SeqCst);
            let p = self.job.load(SeqCst) as *const Job;
            if !p.is_null() {
                // SAFETY: see above; the leader's `run` frame outlives every `busy` holder.
                self.take_tasks(unsafe { &*p });
            }
            self.busy.fetch_sub(1, SeqCst);
        }
    }

    /// Run one loop with the helpers (leader only).
    fn run(&self, total: usize, f: &(dyn Fn(usize) + Sync)) {
        self.next.store(0, SeqCst);
        self.done.store(0, SeqCst);
        let job = Job { f, total };
        self.job.store(&job as *const Job as *mut (), SeqCst);
        self.take_tasks(&job);
        while self.done.load(SeqCst) < total {
            spin_loop();
        }
        self.job.store(std::ptr::null_mut(), SeqCst);
        while self.busy.load(SeqCst) != 0 {
            spin_loop();
        }
    }
}

/// Sets `quit` when the leader leaves the step, also by a panic (the helpers then return and
/// the rayon scope can end).
struct QuitOnDrop<'a>(&'a Team);
impl Drop for QuitOnDrop<'_> {
    fn drop(&mut self) {
        LEADING.with(|c| c.set(std::ptr::null()));
        self.0.quit.store(true, SeqCst);
    }
}

/// Run `f` (one engine step) with the other rayon workers spinning as its team. Call it on a
/// rayon worker thread; elsewhere, with one thread, or inside another team, it just runs `f`.
pub fn with_team<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let threads = rayon::current_num_threads();
    if threads < 2 || rayon::current_thread_index().is_none() || !LEADING.with(|c| c.get()).is_null() {
        return f();
    }
    let team = Team { job: AtomicPtr::new(std::ptr::null_mut()), next: AtomicUsize::new(0), done: AtomicUsize::new(0), busy: AtomicUsize::new(0), quit: AtomicBool::new(false) };
    rayon::in_place_scope(|s| {
        for _ in 1..threads {
            s.spawn(|_| team.help());
        }
        let _quit = QuitOnDrop(&team);
        LEADING.with(|c| c.set(&team));
        f()
    })
}

/// `f(i)` for `i` in `0..total`, in parallel: through the step's team on its leader thread,
/// through rayon elsewhere.
pub fn par_for(total: usize, f: impl Fn(usize) + Sync) {
    if total <= 1 {
        (0..total).for_each(f);
        return;
    }
    let team = LEADING.with(|c| c.get());
    if team.is_null() {
        (0..total).into_par_iter().for_each(&f);
        return;
    }
    // Tasks run without a team (a nested par_for inside one goes to rayon, whose other workers
    // are busy in this team: it runs on the calling thread).
    LEADING.with(|c| c.set(std::ptr::null()));
    // SAFETY: `team` lives in `with_team`'s frame, which is below us on this thread's stack.
    unsafe { (*team).run(total, &f) };
    LEADING.with(|c| c.set(team));
}

/// A raw pointer tasks may share (each task touches its own disjoint part).
pub(crate) struct SendPtr<T>(pub(crate) *mut T);
impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SendPtr<T> {}
unsafe impl<T: Send> Send for SendPtr<T> {}
unsafe impl<T: Send> Sync for SendPtr<T> {}
impl<T> SendPtr<T> {
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}

/// `f(i, chunk)` for each `data.chunks_mut(size)` (the i-th), through [`par_for`].
pub fn par_chunks_mut<T: Send>(data: &mut [T], size: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    assert!(size > 0, "par_chunks_mut: chunk size 0");
    let (len, p) = (data.len(), SendPtr(data.as_mut_ptr()));
    par_for(len.div_ceil(size), |i| {
        let (s, e) = (i * size, ((i + 1) * size).min(len));
        // SAFETY: chunks are disjoint ranges of `data`, which outlives the loop.
        f(i, unsafe { std::slice::from_raw_parts_mut(p.get().add(s), e - s) })
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn every_task_runs_once_inside_and_outside_a_team() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        for inside in [false, true] {
            let hits: Vec<AtomicU64> = (0..1000).map(|_| AtomicU64::new(0)).collect();
            let body = || {
                for round in 0..200u64 {
                    let n = 1 + (round as usize * 37) % 1000;
                    par_for(n, |i| {
                        hits[i].fetch_add(1 + round, SeqCst);
                        // A nested loop inside a task still runs every index.
                        if i == 0 {
                            let inner = AtomicU64::new(0);
                            par_for(10, |j| {
                                inner.fetch_add(j as u64, SeqCst);
                            });
                            assert_eq!(inner.load(SeqCst), 45);
                        }
                    });
                }
            };
            pool.install(|| if inside { with_team(body) } else { body() });
            for (i, h) in hits.iter().enumerate() {
                let want: u64 = (0..200u64).filter(|&r| i < 1 + (r as usize * 37) % 1000).map(|r| 1 + r).sum();
                assert_eq!(h.load(SeqCst), want, "task {i} (inside a team: {inside})");
            }
        }
    }

    #[test]
    fn par_chunks_mut_covers_the_slice() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let mut v = vec![0usize; 1003];
        pool.install(|| with_team(|| par_chunks_mut(&mut v, 10, |i, c| c.iter_mut().enumerate().for_each(|(j, x)| *x = i * 10 + j))));
        assert!(v.iter().enumerate().all(|(i, &x)| x == i));
    }

    #[test]
    fn a_panicking_step_does_not_hang() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pool.install(|| with_team(|| panic!("step failed")))));
        assert!(r.is_err());
        // The pool still works.
        assert_eq!(pool.install(|| with_team(|| 7)), 7);
    }
}
