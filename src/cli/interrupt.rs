//! SIGINT and SIGTERM: live mode shuts down on the first; a replay stops
//! at its next chunk of input, so that its temporary state is removed and
//! its outputs are closed, instead of dying where it stands.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::oneshot;

/// Resolves on the first SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// A thread that raises `flag` on the first SIGINT or SIGTERM; dropping
/// the guard stops the thread and waits for it.
pub struct Interrupts {
    flag: Arc<AtomicBool>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Interrupts {
    pub fn watch() -> std::io::Result<Interrupts> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let flag = Arc::new(AtomicBool::new(false));
        let (stop, stopped) = oneshot::channel::<()>();
        let raised = Arc::clone(&flag);
        let thread = std::thread::Builder::new()
            .name("pretext-signal".into())
            .spawn(move || {
                runtime.block_on(async {
                    tokio::select! {
                        () = shutdown_signal() => raised.store(true, Ordering::Relaxed),
                        _ = stopped => {},
                    }
                });
            })?;
        Ok(Interrupts {
            flag,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The flag a signal raises.
    pub fn flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.flag)
    }
}

impl Drop for Interrupts {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
