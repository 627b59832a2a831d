//! Lower CPU priority for background threads of the pipeline.
//!
//! On a machine with few cores, work the engine does not wait for yet
//! (polling the next batch) competes with work it does (decoding this
//! one). The first runs at a lower priority, as RocksDB runs its
//! compactions: it still gets any core left idle.

/// The nice value background threads get (0 is the default; Linux keeps
/// one per thread).
const BACKGROUND_NICE: i32 = 10;

/// Lowers the calling thread's priority to `BACKGROUND_NICE`, never
/// raises it; best effort (a failure leaves it as it was).
pub fn lower_this_thread() {
    #[cfg(target_os = "linux")]
    {
        use std::ffi::{c_int, c_uint};
        extern "C" {
            fn gettid() -> c_int;
            fn getpriority(which: c_int, who: c_uint) -> c_int;
            fn setpriority(which: c_int, who: c_uint, prio: c_int) -> c_int;
        }
        const PRIO_PROCESS: c_int = 0;
        // SAFETY: glibc calls with plain integer arguments on this
        // thread's own id.
        unsafe {
            let tid = gettid() as c_uint;
            if getpriority(PRIO_PROCESS, tid) < BACKGROUND_NICE {
                let _ = setpriority(PRIO_PROCESS, tid, BACKGROUND_NICE);
            }
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    /// The nice value of the calling thread, from /proc (field 19 of its
    /// stat line, after the command name in parentheses).
    fn own_nice() -> i32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        after_name.split(' ').nth(16).unwrap().parse().unwrap()
    }

    #[test]
    fn only_the_calling_thread_is_lowered() {
        let before = own_nice();
        let lowered = std::thread::spawn(|| {
            super::lower_this_thread();
            own_nice()
        })
        .join()
        .unwrap();
        assert_eq!(lowered, before.max(super::BACKGROUND_NICE));
        assert_eq!(own_nice(), before);
    }
}
