//! The Kafka side of output: an idempotent producer for triggers and dead
//! letters, bounded in flight, flushed (every message acknowledged) before
//! the batch's offsets are stored.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;

use crate::config::Config;
use crate::metrics::Metrics;

use super::events::DeliveryFailed;
use super::pipeline::{Output, Stop};
use super::LiveError;

/// How long a batch's output may take to be acknowledged.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(120);
/// The longest a flush waits for a delivery report before checking again.
const FLUSH_POLL: Duration = Duration::from_millis(2);

pub struct SinkContext {
    failed: AtomicU64,
    metrics: Arc<Metrics>,
}

impl ClientContext for SinkContext {
    /// The consumer reports lag; the producer's statistics (enabled when
    /// `statistics.interval.ms` is passed through) are not logged.
    fn stats(&self, _: rdkafka::statistics::Statistics) {}
}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, m)) = result {
            self.failed.fetch_add(1, Ordering::AcqRel);
            DeliveryFailed {
                topic: m.topic(),
                error,
            }
            .emit(&self.metrics);
        }
    }
}

/// The Kafka producer as the pipeline's `Output`.
pub struct Sink {
    producer: BaseProducer<SinkContext>,
    /// Waiting for room or acknowledgements ends when the stop is
    /// abandoned (the shutdown deadline passed).
    stop: Arc<Stop>,
}

impl Sink {
    pub fn new(config: &Config, metrics: Arc<Metrics>, stop: Arc<Stop>) -> Result<Sink, LiveError> {
        let mut cc = ClientConfig::new();
        for (k, v) in config.kafka.producer_settings() {
            cc.set(k, v);
        }
        cc.set("bootstrap.servers", &config.kafka.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "queue.buffering.max.messages",
                config.kafka.producer_max_in_flight.to_string(),
            );
        let context = SinkContext {
            failed: AtomicU64::new(0),
            metrics,
        };
        let producer = cc
            .create_with_context(context)
            .map_err(|source| LiveError::Kafka {
                what: "create the producer",
                source,
            })?;
        Ok(Sink { producer, stop })
    }
}

impl Output for Sink {
    /// Queues one message; when the in-flight bound is reached, serves
    /// delivery reports until there is room (or the stop is abandoned).
    fn send(&mut self, topic: &str, key: Option<&[u8]>, payload: &[u8]) -> Result<(), LiveError> {
        loop {
            let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).payload(payload);
            if let Some(k) = key {
                record = record.key(k);
            }
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    if self.stop.is_abandoned() {
                        return Err(LiveError::Abandoned);
                    }
                    self.producer.poll(Duration::from_millis(50));
                }
                Err((source, _)) => {
                    return Err(LiveError::Produce {
                        topic: topic.to_string(),
                        source,
                    })
                }
            }
        }
    }

    /// Waits until every queued message is acknowledged; an error if any
    /// failed, so the batch's offsets are not stored and it is read again.
    fn flush(&mut self) -> Result<(), LiveError> {
        // Not `BaseProducer::flush`: between its checks it polls for up to
        // 100 ms, and its last poll often waits that long after the last
        // acknowledgement (a tenth of a second per batch, measured). Short
        // polls serve the delivery reports as they come.
        let deadline = Instant::now() + FLUSH_TIMEOUT;
        while self.producer.in_flight_count() > 0 {
            if self.stop.is_abandoned() {
                return Err(LiveError::Abandoned);
            }
            if Instant::now() >= deadline {
                return Err(LiveError::Kafka {
                    what: "flush the producer",
                    source: KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut),
                });
            }
            self.producer.poll(FLUSH_POLL);
        }
        match self.producer.context().failed.swap(0, Ordering::AcqRel) {
            0 => Ok(()),
            n => Err(LiveError::Delivery { failed: n }),
        }
    }
}
