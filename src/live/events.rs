//! Operational events of live mode, one type each, the way vector's
//! `internal_events` are: `emit()` logs the event and counts it, so a log
//! line and its metric never drift apart, and each is written in one place.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tracing::{error, info, warn};

use crate::decode::Reason;
use crate::metrics::{KafkaErrorKind, Metrics};

/// A consumer error librdkafka recovers from (it retries, reconnects,
/// rejoins): counted, and logged at most once per kind per
/// `LOG_EVERY`, with how many were not logged.
pub struct ConsumerError<'a> {
    pub kind: KafkaErrorKind,
    pub error: &'a KafkaError,
}

/// The shortest time between two logged errors of one kind.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

impl ConsumerError<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        metrics.kafka_error(self.kind);
        if let Some(unlogged) = metrics.may_log(self.kind, LOG_EVERY) {
            warn!(
                kind = self.kind.as_str(),
                error = %self.error,
                unlogged,
                "consumer error (librdkafka retries)"
            );
        }
    }
}

/// A consumer error no retry will cure: the process stops (exit 1).
pub struct ConsumerFatal<'a> {
    pub kind: KafkaErrorKind,
    pub error: &'a KafkaError,
    pub fix: &'a str,
}

impl ConsumerFatal<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        metrics.kafka_error(self.kind);
        error!(kind = self.kind.as_str(), error = %self.error, fix = self.fix, "fatal consumer error");
    }
}

/// Committing offsets to Kafka failed (they are for monitoring only: the
/// offsets that count are in the state).
pub struct CommitFailed<'a> {
    pub error: &'a KafkaError,
}

impl CommitFailed<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        metrics.kafka_error(KafkaErrorKind::Commit);
        if let Some(unlogged) = metrics.may_log(KafkaErrorKind::Commit, LOG_EVERY) {
            warn!(error = %self.error, unlogged, "failed to commit offsets to kafka");
        }
    }
}

/// Produced messages were not acknowledged: the batch is not committed.
pub struct DeliveryFailed<'a> {
    pub topic: &'a str,
    pub error: &'a KafkaError,
}

impl DeliveryFailed<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        metrics.produce_errors.inc();
        metrics.kafka_error(KafkaErrorKind::Delivery);
        if let Some(unlogged) = metrics.may_log(KafkaErrorKind::Delivery, LOG_EVERY) {
            warn!(topic = self.topic, error = %self.error, unlogged, "delivery failed");
        }
    }
}

/// Partitions assigned to or revoked from this instance.
pub struct Rebalance {
    pub assigned: bool,
    pub partitions: usize,
    pub cooperative: bool,
}

impl Rebalance {
    pub fn emit(&self, metrics: &Metrics) {
        metrics.rebalance(self.assigned);
        let (partitions, cooperative) = (self.partitions, self.cooperative);
        if self.assigned {
            info!(partitions, cooperative, "partitions assigned");
        } else {
            info!(partitions, cooperative, "partitions revoked");
        }
    }
}

/// An input message rejected: it goes to the dead-letter topic.
pub struct DeadLettered<'a> {
    pub reason: Reason,
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

impl DeadLettered<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        metrics.reject(self.reason);
        metrics.dead_letters.inc();
        tracing::debug!(
            reason = self.reason.as_str(),
            topic = self.topic,
            partition = self.partition,
            offset = self.offset,
            "dead-lettered"
        );
    }
}

/// A message below the position stored with the state: applied by an
/// earlier run, so skipped. Only after an offset reset (a recreated topic).
pub struct SkippedBelowPosition<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

impl SkippedBelowPosition<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        metrics.skipped_below_position.inc();
        warn!(
            topic = self.topic,
            partition = self.partition,
            offset = self.offset,
            "skipping a message below the position stored with the state"
        );
    }
}

/// A run of messages of one partition below the position stored with the
/// state, skipped in one batch (scaled out, a partition read again after
/// a move or a crash): counted each, logged once.
pub struct SkippedRun<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub first: i64,
    pub count: u64,
}

impl SkippedRun<'_> {
    pub fn emit(&self, metrics: &Metrics) {
        metrics.skipped_below_position.inc_by(self.count);
        warn!(
            topic = self.topic,
            partition = self.partition,
            first = self.first,
            count = self.count,
            "skipping messages below the position stored with the state"
        );
    }
}

/// What a consumer error is, and for a fatal one what to fix.
pub fn classify(e: &KafkaError) -> (KafkaErrorKind, Option<&'static str>) {
    use RDKafkaErrorCode as C;
    if let KafkaError::MessageConsumptionFatal(_) = e {
        return (
            KafkaErrorKind::Fatal,
            Some("librdkafka cannot go on with this client; read the error, fix the setting it names and restart"),
        );
    }
    let Some(code) = e.rdkafka_error_code() else {
        return (KafkaErrorKind::Other, None);
    };
    match code {
        C::Authentication | C::SaslAuthenticationFailed => (
            KafkaErrorKind::Auth,
            Some("authentication failed: check the credentials and mechanism under kafka.client (sasl.username, sasl.password, sasl.mechanism, security.protocol)"),
        ),
        C::TopicAuthorizationFailed | C::GroupAuthorizationFailed | C::ClusterAuthorizationFailed => (
            KafkaErrorKind::Auth,
            Some("not authorized: grant this principal read on topics.inputs and on the group kafka.group_id"),
        ),
        C::UnknownTopicOrPartition | C::UnknownTopic => (KafkaErrorKind::UnknownTopic, None),
        C::BrokerTransportFailure | C::Resolve | C::SSL => (KafkaErrorKind::Transport, None),
        C::AllBrokersDown => (KafkaErrorKind::AllBrokersDown, None),
        C::OperationTimedOut | C::RequestTimedOut | C::MessageTimedOut | C::TimedOutQueue => {
            (KafkaErrorKind::Timeout, None)
        }
        C::Fatal => (
            KafkaErrorKind::Fatal,
            Some("librdkafka cannot go on with this client; read the error, fix the setting it names and restart"),
        ),
        _ => (KafkaErrorKind::Other, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified() {
        let fatal = KafkaError::MessageConsumptionFatal(RDKafkaErrorCode::InvalidArgument);
        assert!(matches!(classify(&fatal), (KafkaErrorKind::Fatal, Some(_))));
        let auth = KafkaError::MessageConsumption(RDKafkaErrorCode::SaslAuthenticationFailed);
        let (kind, fix) = classify(&auth);
        assert_eq!(kind, KafkaErrorKind::Auth);
        assert!(fix.is_some_and(|f| f.contains("sasl.password")));
        let down = KafkaError::MessageConsumption(RDKafkaErrorCode::AllBrokersDown);
        assert_eq!(classify(&down), (KafkaErrorKind::AllBrokersDown, None));
        let gone = KafkaError::MessageConsumption(RDKafkaErrorCode::UnknownTopicOrPartition);
        assert_eq!(classify(&gone), (KafkaErrorKind::UnknownTopic, None));
        let other = KafkaError::MessageConsumption(RDKafkaErrorCode::Conflict);
        assert_eq!(classify(&other), (KafkaErrorKind::Other, None));
    }

    #[test]
    fn transient_errors_are_counted_and_logged_rate_limited() {
        let m = Metrics::new().unwrap();
        let e = KafkaError::MessageConsumption(RDKafkaErrorCode::BrokerTransportFailure);
        for _ in 0..5 {
            ConsumerError {
                kind: KafkaErrorKind::Transport,
                error: &e,
            }
            .emit(&m);
        }
        assert!(m
            .render()
            .contains("pretext_kafka_errors_total{kind=\"transport\"} 5"));
        // The five came within LOG_EVERY: only the first was logged, and the
        // next one allowed reports the four in between.
        assert_eq!(m.may_log(KafkaErrorKind::Transport, LOG_EVERY), None);
        assert_eq!(
            m.may_log(KafkaErrorKind::Transport, Duration::ZERO),
            Some(5)
        );
    }

    #[test]
    fn a_failed_delivery_counts_as_a_produce_error_and_a_kafka_error() {
        let m = Metrics::new().unwrap();
        let e = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        DeliveryFailed {
            topic: "pretext.triggers",
            error: &e,
        }
        .emit(&m);
        let text = m.render();
        assert!(text.contains("pretext_produce_errors_total 1"), "{text}");
        assert!(
            text.contains("pretext_kafka_errors_total{kind=\"delivery\"} 1"),
            "{text}"
        );
    }
}
