//! The subjects the service's messages travel on: work queues and the bus address messages by
//! subject, the same on the embedded edges and on NATS (where they are real subjects; see
//! `sluice_nats` for the whole layout). Every subject starts with `sluice.<tenant>`.

/// Subject a trigger event for `pipeline` is published to.
pub fn trigger_subject(tenant: &str, pipeline: &str) -> String {
    format!("sluice.{tenant}.trigger.{pipeline}")
}

/// Subject of the job queue.
pub fn jobs_subject(tenant: &str) -> String {
    format!("sluice.{tenant}.jobs")
}

/// Subject of a control verb.
pub fn api_subject(tenant: &str, verb: &str) -> String {
    format!("sluice.{tenant}.api.{verb}")
}

/// Subject of rejected trigger events.
pub fn dead_letter_subject(tenant: &str, pipeline: &str) -> String {
    format!("sluice.{tenant}.deadletter.{pipeline}")
}

/// Subject of state-change events.
pub fn event_subject(tenant: &str, kind: &str, pipeline: &str) -> String {
    format!("sluice.{tenant}.events.{kind}.{pipeline}")
}
