//! Triggers made into JSON while their batch is still being applied.
//!
//! A batch's output is sent after the batch (the producer then sees whole
//! batches: BENCHMARKS.md, "Live mode"), on the pipeline thread, which is
//! live mode's critical path; making each trigger's JSON there took about
//! half of that step. The engine's sink hands triggers in chunks to an
//! encoding thread instead, as replay's output thread does, and what is
//! left after the batch is queuing ready bytes.

use std::sync::mpsc::{Receiver, Sender};

use crate::engine::TriggerSink;
use crate::trigger::{Conversion, Group, Trigger};

use super::Produced;

/// Triggers per chunk handed to the encoding thread: enough to make the
/// hand-over cheap, few enough that little is left after the batch.
const CHUNK: usize = 256;

/// A trigger ready to send: what chooses its topic, its key and its JSON.
pub struct EncodedTrigger {
    pub group: Group,
    pub crm_id: String,
    pub json: String,
}

impl EncodedTrigger {
    fn of(t: Trigger) -> EncodedTrigger {
        let json = t.to_json();
        EncodedTrigger {
            group: t.group,
            crm_id: t.crm_id,
            json,
        }
    }
}

/// The encoding thread's body: every chunk received, in order, until the
/// sink is dropped.
pub fn encode_all(chunks: Receiver<Vec<Trigger>>) -> Vec<EncodedTrigger> {
    let mut encoded = Vec::new();
    for chunk in chunks {
        encoded.extend(chunk.into_iter().map(EncodedTrigger::of));
    }
    encoded
}

/// The engine's sink during a batch: conversions and dead letters go to
/// `produced`; triggers to the encoding thread when there is one (else to
/// `produced` too).
pub struct BatchSink<'a> {
    pub produced: &'a mut Produced,
    encoder: Option<(Sender<Vec<Trigger>>, Vec<Trigger>)>,
}

impl<'a> BatchSink<'a> {
    pub fn new(produced: &'a mut Produced, encoder: Option<Sender<Vec<Trigger>>>) -> Self {
        BatchSink {
            produced,
            encoder: encoder.map(|to| (to, Vec::with_capacity(CHUNK))),
        }
    }

    /// Hands over the last chunk; the encoding thread ends once it is
    /// encoded.
    pub fn finish(self) {
        if let Some((to, chunk)) = self.encoder {
            if !chunk.is_empty() {
                // The encoding thread ended only if it panicked, which its
                // join reports.
                let _ = to.send(chunk);
            }
        }
    }
}

impl TriggerSink for BatchSink<'_> {
    fn emit(&mut self, trigger: Trigger) {
        let Some((to, chunk)) = &mut self.encoder else {
            self.produced.triggers.push(trigger);
            return;
        };
        chunk.push(trigger);
        if chunk.len() >= CHUNK {
            let full = std::mem::replace(chunk, Vec::with_capacity(CHUNK));
            let _ = to.send(full);
        }
    }

    fn convert(&mut self, conversion: Conversion) {
        self.produced.convert(conversion);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trigger::TriggerKind;

    fn trigger(n: u32) -> Trigger {
        Trigger {
            trigger_id: format!("{n:016x}"),
            kind: TriggerKind::ViewedNotBought,
            crm_id: format!("C{n}"),
            product_id: "P1".into(),
            category: None,
            intent_score: 1.5,
            view_count: n,
            last_viewed_at: Some(1_700_000_000_000),
            fired_at: 1_700_000_000_000,
            cookie_ids: vec!["k".into()],
            channels: vec!["email"],
            promotion: None,
            group: if n % 2 == 0 {
                Group::Treated
            } else {
                Group::Holdout
            },
        }
    }

    #[test]
    fn triggers_come_back_encoded_in_order_across_chunks() {
        let mut produced = Produced::default();
        let made: Vec<Trigger> = (0..(2 * CHUNK as u32 + 7)).map(trigger).collect();
        let encoded = std::thread::scope(|scope| {
            let (to, from) = std::sync::mpsc::channel();
            let mut sink = BatchSink::new(&mut produced, Some(to));
            let encoding = scope.spawn(move || encode_all(from));
            for t in made.iter().cloned() {
                sink.emit(t);
            }
            sink.finish();
            encoding.join().unwrap()
        });
        assert!(produced.triggers.is_empty());
        assert_eq!(encoded.len(), made.len());
        for (e, t) in encoded.iter().zip(&made) {
            assert_eq!(e.json, t.to_json());
            assert_eq!((e.group, &e.crm_id), (t.group, &t.crm_id));
        }
    }

    #[test]
    fn without_an_encoder_triggers_stay_with_the_batch() {
        let mut produced = Produced::default();
        let mut sink = BatchSink::new(&mut produced, None);
        sink.emit(trigger(1));
        sink.finish();
        assert_eq!(produced.triggers.len(), 1);
    }
}
