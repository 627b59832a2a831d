//! The outputs of a replay — triggers, holdout triggers, conversions — as
//! JSON Lines, serialised and written on a thread of their own.
//!
//! Building the JSON of a trigger costs about as much as deciding it; on
//! the engine thread, which bounds a replay, that was a large share of the
//! time. The engine hands each record over as it decides it, in batches;
//! one writer thread turns them into lines in the same order, so every file
//! is byte for byte what writing them inline gave.

use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::engine::TriggerSink;
use crate::trigger::{Conversion, Group, Trigger};

use super::ReplayError;

/// Records handed over at once: the channel costs nothing per record.
const BATCH: usize = 256;
/// Batches in flight at most, so a slow disk holds the engine back instead
/// of filling memory.
const BATCHES_AHEAD: usize = 64;

/// A writer that can move to the writer thread.
pub type Out = Box<dyn Write + Send>;

/// One JSON Lines output, or none (then records are only counted),
/// holding its first I/O error.
pub struct Lines {
    pub name: String,
    pub out: Option<Out>,
    error: Option<io::Error>,
}

impl Lines {
    pub fn new(name: String, out: Option<Out>) -> Lines {
        Lines {
            name,
            out,
            error: None,
        }
    }

    fn write(&mut self, mut line: String) {
        let (Some(out), None) = (&mut self.out, &self.error) else {
            return;
        };
        line.push('\n');
        if let Err(e) = out.write_all(line.as_bytes()) {
            self.error = Some(e);
        }
    }

    /// The first error, or the result of flushing.
    fn finish(&mut self) -> Result<(), ReplayError> {
        let flushed = match (self.error.take(), &mut self.out) {
            (Some(e), _) => Err(e),
            (None, Some(out)) => out.flush(),
            (None, None) => Ok(()),
        };
        flushed.map_err(|source| ReplayError::Output {
            path: self.name.clone(),
            source,
        })
    }
}

/// What the engine decided, in order.
enum Record {
    Trigger(Trigger),
    Conversion(Conversion),
}

/// The three outputs, owned by the writer thread.
pub struct Files {
    pub triggers: Lines,
    pub holdout: Lines,
    pub conversions: Lines,
}

impl Files {
    fn write(&mut self, record: Record) {
        match record {
            Record::Trigger(t) => {
                let lines = match t.group {
                    Group::Treated => &mut self.triggers,
                    Group::Holdout => &mut self.holdout,
                };
                lines.write(t.to_json());
            }
            Record::Conversion(c) => self.conversions.write(c.to_json()),
        }
    }

    fn failed(&self) -> bool {
        [&self.triggers, &self.holdout, &self.conversions]
            .iter()
            .any(|l| l.error.is_some())
    }

    fn finish(&mut self) -> Result<(), ReplayError> {
        self.triggers.finish()?;
        self.holdout.finish()?;
        self.conversions.finish()
    }
}

/// The engine's sink: records go to the writer thread.
pub struct ThreadedSink {
    pending: Vec<Record>,
    tx: Option<SyncSender<Vec<Record>>>,
    writer: Option<JoinHandle<Result<(), ReplayError>>>,
    failed: Arc<AtomicBool>,
    /// Which records anyone writes: the others are not sent at all.
    wanted: [bool; 3],
}

impl ThreadedSink {
    /// Starts the writer thread on `files`.
    pub fn start(mut files: Files) -> ThreadedSink {
        let wanted = [
            files.triggers.out.is_some(),
            files.holdout.out.is_some(),
            files.conversions.out.is_some(),
        ];
        let (tx, rx) = sync_channel::<Vec<Record>>(BATCHES_AHEAD);
        let failed = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&failed);
        let writer = std::thread::spawn(move || {
            for batch in rx {
                batch.into_iter().for_each(|r| files.write(r));
                if files.failed() {
                    flag.store(true, Ordering::Release);
                    break;
                }
            }
            files.finish()
        });
        ThreadedSink {
            pending: Vec::with_capacity(BATCH),
            tx: Some(tx),
            writer: Some(writer),
            failed,
            wanted,
        }
    }

    fn push(&mut self, record: Record) {
        self.pending.push(record);
        if self.pending.len() >= BATCH {
            self.send();
        }
    }

    fn send(&mut self) {
        let batch = std::mem::replace(&mut self.pending, Vec::with_capacity(BATCH));
        if let Some(tx) = &self.tx {
            // A writer that hung up has failed; `check` reports why.
            if tx.send(batch).is_err() {
                self.failed.store(true, Ordering::Release);
            }
        }
    }

    /// The first write error, once the writer has met one.
    pub fn check(&mut self) -> Result<(), ReplayError> {
        if self.failed.load(Ordering::Acquire) {
            return self.join();
        }
        Ok(())
    }

    /// Writes what is left, flushes every output and stops the writer.
    pub fn finish(mut self) -> Result<(), ReplayError> {
        self.send();
        self.join()
    }

    fn join(&mut self) -> Result<(), ReplayError> {
        self.tx = None;
        match self.writer.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            None => Ok(()),
        }
    }
}

impl TriggerSink for ThreadedSink {
    fn emit(&mut self, trigger: Trigger) {
        let i = match trigger.group {
            Group::Treated => 0,
            Group::Holdout => 1,
        };
        if self.wanted[i] {
            self.push(Record::Trigger(trigger));
        }
    }

    fn convert(&mut self, conversion: Conversion) {
        if self.wanted[2] {
            self.push(Record::Conversion(conversion));
        }
    }
}

impl Drop for ThreadedSink {
    fn drop(&mut self) {
        // An error path: stop the writer without waiting on a full channel.
        self.pending.clear();
        let _ = self.join();
    }
}

/// A file output, buffered.
pub fn create_file(path: &Path) -> Result<Out, ReplayError> {
    let file = std::fs::File::create(path).map_err(|source| ReplayError::Output {
        path: path.display().to_string(),
        source,
    })?;
    Ok(Box::new(io::BufWriter::with_capacity(1 << 20, file)))
}
