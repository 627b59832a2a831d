//! Named scoped threads. A thread spawned without a name takes its
//! parent's, so `top -H`, `perf` and /proc/PID/task could not tell the
//! engine's thread from the ones that decode, encode or poll for it.

use std::thread::{Scope, ScopedJoinHandle};

/// As `Scope::spawn`, the thread named `name` (at most 15 bytes show on
/// Linux). Like `Scope::spawn`, panics when the OS cannot make a thread.
pub fn spawn_named<'scope, 'env, F, T>(
    scope: &'scope Scope<'scope, 'env>,
    name: &str,
    f: F,
) -> ScopedJoinHandle<'scope, T>
where
    F: FnOnce() -> T + Send + 'scope,
    T: Send + 'scope,
{
    std::thread::Builder::new()
        .name(name.into())
        .spawn_scoped(scope, f)
        .unwrap_or_else(|e| panic!("cannot start thread {name}: {e}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_thread_has_its_name() {
        let name = std::thread::scope(|s| {
            super::spawn_named(s, "pretext-test", || {
                std::thread::current().name().map(str::to_string)
            })
            .join()
            .unwrap()
        });
        assert_eq!(name.as_deref(), Some("pretext-test"));
    }
}
