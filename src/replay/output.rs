//! Replay's outputs: triggers of either group and conversions, serialised
//! and written on a thread of their own, in the order the engine made
//! them. The engine thread is a replay's bound; the JSON of its output
//! need not be made there.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::engine::TriggerSink;
use crate::trigger::{Conversion, Group, Trigger};

use super::ReplayError;

/// One JSON Lines output, or none (then its records are only counted).
pub(super) struct Lines {
    pub(super) name: String,
    pub(super) out: Option<Box<dyn Write + Send>>,
}

impl Lines {
    fn write(&mut self, mut line: String) -> Result<(), ReplayError> {
        let Some(out) = &mut self.out else {
            return Ok(());
        };
        line.push('\n');
        out.write_all(line.as_bytes()).map_err(|e| self.error(e))
    }

    fn flush(&mut self) -> Result<(), ReplayError> {
        match &mut self.out {
            Some(out) => out.flush().map_err(|e| self.error(e)),
            None => Ok(()),
        }
    }

    fn error(&self, source: io::Error) -> ReplayError {
        ReplayError::Output {
            path: self.name.clone(),
            source,
        }
    }
}

/// Where each kind of record goes.
pub(super) struct Outputs {
    pub(super) triggers: Lines,
    pub(super) holdout: Lines,
    pub(super) conversions: Lines,
}

impl Outputs {
    fn write(&mut self, record: Record) -> Result<(), ReplayError> {
        match record {
            Record::Trigger(t) => match t.group {
                Group::Treated => self.triggers.write(t.to_json()),
                Group::Holdout => self.holdout.write(t.to_json()),
            },
            Record::Conversion(c) => self.conversions.write(c.to_json()),
        }
    }

    fn flush(&mut self) -> Result<(), ReplayError> {
        self.triggers.flush()?;
        self.holdout.flush()?;
        self.conversions.flush()
    }
}

enum Record {
    Trigger(Trigger),
    Conversion(Conversion),
}

/// Records handed to the writer at a time: the channel then costs nothing
/// per record.
const RECORDS_PER_SEND: usize = 256;
/// Handfuls that may wait for the writer, at most.
const SENDS_AHEAD: usize = 16;

/// The engine's sink in a replay: records gathered, handed to the writer
/// thread a handful at a time.
pub(super) struct WrittenSink {
    pending: Vec<Record>,
    /// Whether each output is written (holdout, conversions): records of
    /// one that is not are never sent.
    holdout: bool,
    conversions: bool,
    tx: Option<SyncSender<Vec<Record>>>,
    writer: Option<JoinHandle<Result<(), ReplayError>>>,
    /// Set by the writer when it stopped on an error.
    failed: Arc<AtomicBool>,
}

impl WrittenSink {
    /// Starts the writer thread, which owns `outputs` until `finish`.
    pub(super) fn start(mut outputs: Outputs) -> Result<WrittenSink, ReplayError> {
        let (tx, rx) = sync_channel::<Vec<Record>>(SENDS_AHEAD);
        let failed = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&failed);
        let (holdout, conversions) = (
            outputs.holdout.out.is_some(),
            outputs.conversions.out.is_some(),
        );
        let writer = std::thread::Builder::new()
            .name("pretext-output".into())
            .spawn(move || {
                let written = rx
                    .into_iter()
                    .flatten()
                    .try_for_each(|record| outputs.write(record))
                    .and_then(|()| outputs.flush());
                flag.store(written.is_err(), Ordering::Relaxed);
                written
            })
            .map_err(|source| ReplayError::Output {
                path: "output writer thread".into(),
                source,
            })?;
        Ok(WrittenSink {
            pending: Vec::with_capacity(RECORDS_PER_SEND),
            holdout,
            conversions,
            tx: Some(tx),
            writer: Some(writer),
            failed,
        })
    }

    fn push(&mut self, record: Record) {
        self.pending.push(record);
        if self.pending.len() >= RECORDS_PER_SEND {
            self.send();
        }
    }

    fn send(&mut self) {
        let records = std::mem::replace(&mut self.pending, Vec::with_capacity(RECORDS_PER_SEND));
        if let Some(tx) = &self.tx {
            // A writer that hung up failed: `check` reports why.
            let _ = tx.send(records);
        }
    }

    /// The writer's error, once it has stopped on one.
    pub(super) fn check(&mut self) -> Result<(), ReplayError> {
        if self.failed.load(Ordering::Relaxed) {
            return self.finish();
        }
        Ok(())
    }

    /// Hands over what is left, waits for every record to be written and
    /// flushed, and reports the first error.
    pub(super) fn finish(&mut self) -> Result<(), ReplayError> {
        if !self.pending.is_empty() {
            self.send();
        }
        self.tx = None;
        match self.writer.take().map(JoinHandle::join) {
            None => Ok(()),
            Some(Ok(written)) => written,
            Some(Err(panic)) => std::panic::resume_unwind(panic),
        }
    }
}

impl TriggerSink for WrittenSink {
    fn emit(&mut self, trigger: Trigger) {
        // The treated triggers' output always exists (stdout by default).
        if trigger.group == Group::Treated || self.holdout {
            self.push(Record::Trigger(trigger));
        }
    }

    fn convert(&mut self, conversion: Conversion) {
        if self.conversions {
            self.push(Record::Conversion(conversion));
        }
    }
}

impl Drop for WrittenSink {
    /// A replay that stopped on another error still ends its writer.
    fn drop(&mut self) {
        let _ = self.finish();
    }
}
