//! The Kafka side of output: an idempotent producer for triggers and dead
//! letters, bounded in flight, flushed (every message acknowledged) before
//! the batch's offsets are stored.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;
use tracing::warn;

use crate::config::Config;
use crate::metrics::Metrics;

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
        if let Err((e, _)) = result {
            self.failed.fetch_add(1, Ordering::AcqRel);
            self.metrics.produce_errors.inc();
            warn!(error = %e, "message delivery failed");
        }
    }
}

pub struct Sink {
    producer: BaseProducer<SinkContext>,
}

impl Sink {
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Result<Sink, LiveError> {
        let mut cc = ClientConfig::new();
        for (k, v) in &config.kafka.client {
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
        Ok(Sink { producer })
    }

    /// Queues one message; when the in-flight bound is reached, serves
    /// delivery reports until there is room.
    pub fn send(&self, topic: &str, key: Option<&[u8]>, payload: &[u8]) -> Result<(), LiveError> {
        loop {
            let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).payload(payload);
            if let Some(k) = key {
                record = record.key(k);
            }
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
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
    pub fn flush(&self) -> Result<(), LiveError> {
        // Not `BaseProducer::flush`: between its checks it polls for up to
        // 100 ms, and its last poll often waits that long after the last
        // acknowledgement (a tenth of a second per batch, measured). Short
        // polls serve the delivery reports as they come.
        let deadline = Instant::now() + FLUSH_TIMEOUT;
        while self.producer.in_flight_count() > 0 {
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
