//! Threads a request waits on ask the scheduler to run them sooner.
//!
//! The storage writer's thread asks for a little more of the CPU than the rest of the
//! service ([`Raised`]). The writer is the one serial stage every request passes: at one
//! reading of each of 1,000 streams a request on SQLite it was "90 % busy" while on the CPU
//! only 0.35 of a core, waiting 0.50 of a core's time in the run queue behind the runtime's
//! and the inference threads (docs/PERFORMANCE.md, "The storage writer first in the run
//! queue"). Linux keeps a nice value per thread; lowering one needs `CAP_SYS_NICE` or a
//! `RLIMIT_NICE` that allows it (docker-compose.yml sets one), and where neither is given the
//! writer runs at the service's priority as before.
//!
//! The writer's and the inference threads also ask for short slices ([`ShortSlices`]).
//! Linux's EEVDF scheduler (6.6 on) gives each thread a deadline a slice after it becomes
//! eligible, and a thread woken with an earlier deadline than the running one's takes its
//! core; one that asks for a shorter slice (which 6.12 on grants, any thread may ask) gets
//! earlier deadlines, so it runs soon after it wakes rather than after a runtime thread's
//! slice. Its share of the CPU is the nice value's and does not change. At one reading of
//! each of 1,000 streams a request on PostgreSQL the inference threads waited 1.5 ms for a
//! core each time they woke, 0.7 ms with 0.1 ms slices (docs/PERFORMANCE.md, "Short slices
//! for the threads a request waits on"). Earlier kernels accept the request and keep their
//! own slices.
use std::io;
use std::time::Duration;

/// The slice the writer's and the inference threads ask for: the shortest EEVDF grants.
pub(crate) const SHORT_SLICE: Duration = Duration::from_micros(100);

/// A thread's nice value lowered for as long as this lives, restored when it is dropped (the
/// writer runs on a thread of tokio's blocking pool, which goes back to the pool).
#[derive(Debug)]
pub(crate) struct Raised {
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    previous: i32,
}

impl Raised {
    /// Lowers the calling thread's nice value by `by` (clamped at -20, the highest priority).
    /// Threads it starts afterwards (SQLite's worker of a connection it opens) inherit it.
    #[cfg(target_os = "linux")]
    pub(crate) fn raise(by: i32) -> io::Result<Raised> {
        let previous = nice()?;
        set_nice((previous - by).max(-20))?;
        Ok(Raised { previous })
    }

    #[cfg(not(target_os = "linux"))]
    pub(crate) fn raise(_by: i32) -> io::Result<Raised> {
        Err(io::Error::new(io::ErrorKind::Unsupported, "per-thread priorities are Linux's"))
    }

    /// The nice value the thread had and gets back.
    #[cfg(test)]
    fn previous(&self) -> i32 {
        self.previous
    }
}

impl Drop for Raised {
    fn drop(&mut self) {
        // Raising a nice value (lowering the priority) is always allowed.
        #[cfg(target_os = "linux")]
        if let Err(e) = set_nice(self.previous) {
            tracing::warn!(error = %e, "a thread's priority could not be restored");
        }
    }
}

/// The calling thread run in slices of a length it asked for, for as long as this lives, and
/// in the kernel's default slices again once it is dropped (the writer runs on a thread of
/// tokio's blocking pool, which goes back to the pool). Threads the thread starts meanwhile
/// (SQLite's worker of a connection it opens) inherit the slice.
#[derive(Debug)]
pub(crate) struct ShortSlices(());

impl ShortSlices {
    /// Asks for `slice` (the kernel clamps it to 0.1–100 ms), keeping the thread's policy
    /// (`SCHED_OTHER`, the service's) and nice value.
    pub(crate) fn ask(slice: Duration) -> io::Result<ShortSlices> {
        set_slice(slice)?;
        Ok(ShortSlices(()))
    }
}

impl Drop for ShortSlices {
    fn drop(&mut self) {
        if let Err(e) = set_slice(Duration::ZERO) {
            tracing::warn!(error = %e, "a thread's scheduling slice could not be restored");
        }
    }
}

/// Sets the calling thread's slice; zero is the kernel's default.
#[cfg(target_os = "linux")]
fn set_slice(slice: Duration) -> io::Result<()> {
    let mut attr = sched_attr();
    attr.sched_policy = libc::SCHED_OTHER as u32;
    attr.sched_nice = nice()?;
    attr.sched_runtime = u64::try_from(slice.as_nanos()).unwrap_or(u64::MAX);
    // SAFETY: `attr` is a valid `sched_attr` of the size it gives; the kernel only reads it,
    // and changes only the calling thread (id 0).
    match unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const libc::sched_attr, 0u32) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

#[cfg(not(target_os = "linux"))]
fn set_slice(_slice: Duration) -> io::Result<()> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "per-thread slices are Linux's"))
}

/// A zeroed `sched_attr` that gives its own size.
#[cfg(target_os = "linux")]
fn sched_attr() -> libc::sched_attr {
    // SAFETY: `sched_attr` is plain integers, for which zero is a valid value.
    let mut attr: libc::sched_attr = unsafe { std::mem::zeroed() };
    attr.size = std::mem::size_of::<libc::sched_attr>() as u32;
    attr
}

/// The calling thread's id, which `getpriority`/`setpriority` take for the thread alone.
#[cfg(target_os = "linux")]
fn tid() -> libc::id_t {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::gettid() as libc::id_t }
}

/// The calling thread's nice value.
#[cfg(target_os = "linux")]
fn nice() -> io::Result<i32> {
    nice_of(tid())
}

/// The nice value of the thread `tid`.
#[cfg(target_os = "linux")]
fn nice_of(tid: libc::id_t) -> io::Result<i32> {
    // -1 is a valid nice value as well as the error return: errno tells them apart.
    // SAFETY: errno is thread-local; getpriority only reads the scheduler's value.
    let value = unsafe {
        *libc::__errno_location() = 0;
        libc::getpriority(libc::PRIO_PROCESS, tid)
    };
    match io::Error::last_os_error() {
        e if value == -1 && e.raw_os_error().is_some_and(|code| code != 0) => Err(e),
        _ => Ok(value),
    }
}

#[cfg(target_os = "linux")]
fn set_nice(value: i32) -> io::Result<()> {
    // SAFETY: setpriority changes only the calling thread's nice value.
    match unsafe { libc::setpriority(libc::PRIO_PROCESS, tid(), value) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// Where the process may raise a thread's priority (root, `CAP_SYS_NICE`, a
    /// `RLIMIT_NICE`), the thread runs at the lower nice value until the guard is dropped and
    /// at its own after; where it may not, nothing changes and the refusal is an error.
    #[test]
    fn a_raised_priority_holds_for_the_guards_life_and_only_on_its_thread() {
        let (here, here_before) = (tid(), nice().expect("reads the nice value"));
        std::thread::spawn(move || {
            let before = nice().expect("reads the nice value");
            match Raised::raise(5) {
                Ok(raised) => {
                    assert_eq!(raised.previous(), before);
                    assert_eq!(nice_of(here).expect("reads"), here_before, "the thread that started it is as it was");
                    assert_eq!(nice().expect("reads"), (before - 5).max(-20), "raised");
                    let other = std::thread::spawn(|| nice().expect("reads"));
                    assert_eq!(other.join().expect("joins"), (before - 5).max(-20), "a thread started now inherits it");
                    drop(raised);
                    assert_eq!(nice().expect("reads"), before, "restored");
                }
                Err(e) => {
                    eprintln!(
                        "NOTE: this process may not raise a thread's priority ({e}); checked that nothing changed"
                    );
                    assert!(matches!(e.kind(), io::ErrorKind::PermissionDenied), "{e}");
                    assert_eq!(nice().expect("reads"), before);
                }
            }
        })
        .join()
        .expect("the test thread ends");
    }

    /// The calling thread's slice as the kernel reports it: 0 where it reports none for
    /// `SCHED_OTHER` (before 6.12).
    fn slice() -> u64 {
        let mut attr = sched_attr();
        // SAFETY: the kernel writes at most `size` bytes into `attr`, of the calling thread.
        let rc =
            unsafe { libc::syscall(libc::SYS_sched_getattr, 0, &mut attr as *mut libc::sched_attr, attr.size, 0u32) };
        assert_eq!(rc, 0, "sched_getattr: {}", io::Error::last_os_error());
        attr.sched_runtime
    }

    /// A thread that asks for short slices has them where the kernel reports slices (6.12
    /// on) until the guard is dropped, keeps its nice value, raised or not, and its policy;
    /// threads it starts meanwhile inherit them; the test's own thread is untouched.
    #[test]
    fn short_slices_hold_for_the_guards_life_and_keep_the_nice_value() {
        let default = slice();
        std::thread::spawn(move || {
            let raised = Raised::raise(5).ok();
            let before = nice().expect("reads the nice value");
            let slices = ShortSlices::ask(SHORT_SLICE).expect("any thread may ask for its slice");
            assert_eq!(nice().expect("reads"), before, "the nice value is kept");
            // SAFETY: sched_getscheduler only reads the calling thread's policy.
            assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_OTHER);
            let started = std::thread::spawn(slice).join().expect("joins");
            let asked = slice();
            drop(slices);
            assert_eq!(nice().expect("reads"), before, "the nice value is kept when the slice is restored");
            if default == 0 {
                eprintln!(
                    "NOTE: this kernel reports no slice for SCHED_OTHER (before 6.12): checked the nice value and policy only"
                );
                return;
            }
            assert_eq!(asked, SHORT_SLICE.as_nanos() as u64, "the asking thread's slice");
            assert_eq!(started, asked, "a thread started meanwhile");
            assert_eq!(slice(), default, "the default again");
            drop(raised);
        })
        .join()
        .expect("the test thread ends");
        assert_eq!(slice(), default, "other threads keep theirs");
    }
}
