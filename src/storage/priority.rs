//! The storage writer's thread asks the scheduler for a little more of the CPU than the rest
//! of the service. The writer is the one serial stage every request passes: at one reading
//! of each of 1,000 streams a request on SQLite it was "90 % busy" while on the CPU only 0.35
//! of a core, waiting 0.50 of a core's time in the run queue behind the runtime's and the
//! inference threads (docs/PERFORMANCE.md, "The storage writer first in the run queue").
//!
//! Linux keeps a nice value per thread; lowering one needs `CAP_SYS_NICE` or a `RLIMIT_NICE`
//! that allows it (docker-compose.yml sets one), and where neither is given the writer runs
//! at the service's priority as before.
use std::io;

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
}
