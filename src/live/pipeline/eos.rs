//! The exactly-once side of the pipeline (`kafka.exactly_once`): each
//! batch's output in a transaction with its input offsets, and on
//! assignment the recovery of what committed transactions hold and the
//! state lacks (see `live::txn` for the argument).

use tracing::{info, warn};

use crate::engine::SourceOffset;
use crate::live::txn::{batch_starts, canonical_order, txn_offsets};
use crate::state::store::open_gate;

use super::{
    apply_batch, send_all, BatchSource, Clock, InputMessage, LiveError, Output, Pipeline, Produced,
};

impl<S: BatchSource, O: Output, C: Clock> Pipeline<S, O, C> {
    /// Before a batch is processed: takes in the group's positions of newly
    /// assigned partitions; while a gap is being collected the batch goes to
    /// it (`None`). Otherwise the batch to process, in canonical order.
    pub(super) fn recover(
        &mut self,
        batch: Vec<InputMessage>,
    ) -> Result<Option<Vec<InputMessage>>, LiveError> {
        let positions = self.source.take_group_positions();
        if !positions.is_empty() {
            for p in self.recovery.note(positions, &self.offsets) {
                warn!(
                    topic = %p.topic,
                    partition = p.partition,
                    committed = p.committed,
                    "the state trails the group's transactions by more than one batch (a new or \
                     restored state): re-applying up to the committed offset, output muted"
                );
            }
            if !self.recovery.collecting() {
                self.finish_recovery()?;
            }
        }
        if !self.recovery.collecting() {
            let mut batch = batch;
            canonical_order(&mut batch);
            return Ok(Some(batch));
        }
        // What is read while recovering counts as input for the idle advance.
        self.idle.input_at(self.clock.mono());
        self.recovery.take(batch)?;
        if self.recovery.ready(self.config.kafka.batch_max_messages) {
            let chunk = self.recovery.drain();
            self.reapply(&chunk)?;
        }
        if !self.recovery.collecting() {
            self.finish_recovery()?;
        }
        Ok(None)
    }

    /// Applies messages whose output committed transactions already hold:
    /// the output is dropped, the state committed.
    fn reapply(&mut self, chunk: &[InputMessage]) -> Result<(), LiveError> {
        let max_bytes = self.config.input.max_message_bytes;
        let applied = apply_batch(&mut self.engine, &self.offsets, chunk, max_bytes)?;
        if let (true, Some(m)) = (applied.applied_any, self.engine.max_event_ts()) {
            self.idle.applied(m, self.clock.wall_ms());
        }
        self.commit(&applied.next, open_gate())?;
        let out = &applied.produced;
        info!(
            messages = chunk.len(),
            triggers = out.trigger_count(),
            conversions = out.conversions.len(),
            dead_letters = out.dead_letters.len(),
            "re-applied input whose output a committed transaction holds, output muted"
        );
        self.observe();
        Ok(())
    }

    /// Every gap re-applied: the idle advance a committed transaction
    /// recorded (muted), then the partitions read past their gap are read
    /// again.
    fn finish_recovery(&mut self) -> Result<(), LiveError> {
        let finish = self.recovery.finish();
        if let Some(w) = finish.watermark {
            if self.engine.watermark().is_none_or(|current| current < w) {
                let mut muted = Produced::default();
                self.engine.advance_watermark(w, &mut muted)?;
                self.commit(&[], open_gate())?;
                info!(
                    watermark = w,
                    triggers = muted.triggers.len(),
                    "re-applied the idle advance a committed transaction recorded, output muted"
                );
            }
        }
        if !finish.rewind.is_empty() {
            self.source.rewind(&finish.rewind)?;
        }
        self.observe();
        Ok(())
    }

    /// The output and `next` (with their records) in one transaction.
    pub(super) fn deliver_txn(
        &mut self,
        out: &Produced,
        next: &[SourceOffset],
        batch: &[InputMessage],
    ) -> Result<(), LiveError> {
        if next.is_empty() && out.is_empty() {
            return Ok(());
        }
        let starts = batch_starts(batch, &self.offsets);
        let offsets = txn_offsets(next, &starts, self.engine.watermark());
        self.output.begin()?;
        if let Err(e) = send_all(&mut self.output, &self.config.topics, out) {
            self.output.abort_txn();
            return Err(e);
        }
        let group = self.source.group_metadata();
        self.output.commit_txn(&offsets, group.as_ref())?;
        self.crash.after_txn();
        Ok(())
    }

    /// Exactly-once: the stored positions of the assigned partitions, which
    /// an idle advance's transaction records its watermark on.
    pub(super) fn idle_carriers(&self) -> Vec<SourceOffset> {
        if !self.eos {
            return Vec::new();
        }
        let assigned = self.source.assignment();
        self.offsets
            .of(assigned.iter().map(|(t, p)| (t.as_str(), *p)))
    }
}

/// A hook for the end-to-end fault tests: `PRETEXT_CRASH_AFTER_TXN=N`
/// aborts the process right after its N-th committed transaction, before
/// the state commit: the crash point the recovery exists for, which a kill
/// from outside seldom hits (it lasts an fsync). Unset, it does nothing.
pub(super) struct CrashPoint {
    after: Option<u64>,
    committed: u64,
}

impl CrashPoint {
    pub(super) fn from_env() -> CrashPoint {
        CrashPoint {
            after: std::env::var("PRETEXT_CRASH_AFTER_TXN")
                .ok()
                .and_then(|v| v.parse().ok()),
            committed: 0,
        }
    }

    fn after_txn(&mut self) {
        self.committed += 1;
        if self.after == Some(self.committed) {
            warn!(
                transactions = self.committed,
                "PRETEXT_CRASH_AFTER_TXN: aborting between the transaction and the state commit"
            );
            std::process::abort();
        }
    }
}
