//! A stage partition's part of a batch: one record of its repartition
//! topic applied to its engine, what it sends the other stage produced to
//! that stage's topic, a record it cannot read dead-lettered.

use crate::decode::{decode, Reason};
use crate::engine::wire::{CustomerRecord, Forget, RecordKind};
use crate::engine::EngineError;

use super::super::pipeline::{dead_letter, DeadLetterOut, Produced};
use super::super::topology::{Stage, Topology};
use super::super::LiveError;
use super::group::Polled;
use super::producer::ScaledProducer;
use super::tasks::Task;

/// A stage partition's view of the batch: where its records to the other
/// stage and its triggers go.
pub(super) struct StageOut<'a> {
    pub producer: &'a mut ScaledProducer,
    pub topology: &'a Topology,
    pub produced: &'a mut Produced,
}

impl StageOut<'_> {
    /// Applies one record to `task`; returns whether an event was applied
    /// (for the idle advance). A record the stage cannot read goes to the
    /// dead letters, with what locates it.
    pub fn apply(
        &mut self,
        task: &mut Task,
        m: &Polled,
        max_bytes: usize,
    ) -> Result<bool, StageError> {
        match (task.stage, m.kind) {
            (stage, Some(RecordKind::Event)) => {
                let event = match decode(&m.payload, max_bytes) {
                    Ok(event) => event,
                    Err(r) => return Ok(self.reject(m, r.reason, &r.error)),
                };
                self.settle(task)?;
                if stage == Stage::Identity {
                    let (_, records) = task.engine.apply_at_identity(&event)?;
                    for r in records {
                        self.send(Stage::Customer, r.key(), &r.to_json(), RecordKind::Resolved)?;
                    }
                } else {
                    let (_, forgets) = task.engine.apply_at_customer(&event, self.produced)?;
                    for f in forgets {
                        self.send(Stage::Identity, f.key(), &f.to_json(), RecordKind::Forget)?;
                    }
                }
                Ok(true)
            }
            (Stage::Customer, Some(RecordKind::Resolved)) => {
                let record = match CustomerRecord::from_json(&m.payload) {
                    Ok(r) => r,
                    Err(e) => return Ok(self.reject(m, Reason::InvalidJson, &e.to_string())),
                };
                if task.unsettled.as_deref() != Some(record.origin.event_id.as_str()) {
                    self.settle(task)?;
                }
                task.engine.apply_resolved(&record, self.produced)?;
                task.unsettled = Some(record.origin.event_id);
                Ok(true)
            }
            (Stage::Identity, Some(RecordKind::Forget)) => {
                match Forget::from_json(&m.payload) {
                    Ok(f) => task.engine.apply_forget(&f)?,
                    Err(e) => return Ok(self.reject(m, Reason::InvalidJson, &e.to_string())),
                }
                Ok(false)
            }
            (stage, kind) => {
                let error = format!(
                    "a record of kind {:?} on the {} stage's topic (header pretext.record)",
                    kind.map(RecordKind::as_str),
                    stage.name()
                );
                Ok(self.reject(m, Reason::UnknownType, &error))
            }
        }
    }

    /// Fires what the records applied before made due.
    fn settle(&mut self, task: &mut Task) -> Result<(), StageError> {
        if task.unsettled.take().is_some() {
            task.engine.settle(self.produced)?;
        }
        Ok(())
    }

    fn send(
        &mut self,
        stage: Stage,
        key: &str,
        json: &[u8],
        kind: RecordKind,
    ) -> Result<(), StageError> {
        let topic = self.topology.repartition_topic(stage);
        let p = self.topology.partition_of(key);
        self.producer
            .send(topic, Some(p), Some(key.as_bytes()), Some(json), Some(kind))
            .map_err(StageError::Live)
    }

    fn reject(&mut self, m: &Polled, reason: Reason, error: &str) -> bool {
        self.produced
            .dead_letters
            .push(dead_letter_out(m, reason, error));
        false
    }
}

pub(super) enum StageError {
    Engine(EngineError),
    Live(LiveError),
}

impl From<EngineError> for StageError {
    fn from(e: EngineError) -> StageError {
        StageError::Engine(e)
    }
}

pub(super) fn at_message(m: &Polled, e: StageError) -> LiveError {
    match e {
        StageError::Engine(source) => LiveError::Apply {
            topic: m.topic.clone(),
            partition: m.partition,
            offset: m.offset,
            source,
        },
        StageError::Live(e) => e,
    }
}

pub(super) fn dead_letter_out(m: &Polled, reason: Reason, error: &str) -> DeadLetterOut {
    DeadLetterOut {
        key: m.key.clone(),
        json: dead_letter(&m.topic, m.partition, m.offset, &m.payload, reason, error),
        reason,
        topic: m.topic.clone(),
        partition: m.partition,
        offset: m.offset,
    }
}
