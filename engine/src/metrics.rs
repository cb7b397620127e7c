//! What an engine counts, for Prometheus (`GET /metrics` on the HTTP port). One set per
//! process: every engine counts what it did itself (the executions it started or ended, the
//! jobs it ran, the bytes it moved), so a sum over engines is the service's.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `sluice_executions_started_total` | counter | `pipeline` |
//! | `sluice_executions_finished_total` | counter | `pipeline`, `status` |
//! | `sluice_action_duration_seconds` | histogram | `plugin` (`component` for a file or digest) |
//! | `sluice_jobs_in_flight` | gauge | |
//! | `sluice_trigger_dead_letters_total` | counter | `pipeline` |
//! | `sluice_compile_cache_hits_total` / `_misses_total` | counter | |
//! | `sluice_artifact_bytes_stored_total` / `_fetched_total` | counter | (to and from the shared store) |
//! | `sluice_nats_reconnects_total` | counter | |
//! | `sluice_queue_waiting` | gauge | `queue` (`jobs`, `triggers`): messages not delivered yet |
//! | `sluice_queue_oldest_seconds` | gauge | `queue`: how long the oldest of them has waited |
//! | `sluice_actions_waiting` | gauge | actions waiting for an approval, an event or a timer |
//!
//! Each label takes at most `MAX_LABEL_VALUES` values (tenants name pipelines and plugins),
//! then `_other`. With authentication on, `/metrics` needs an operator's token.
//!
//! The last three are the service's, not one engine's (every engine reports the same queues
//! and records): read them with `max`, not `sum`. They are sampled when `/metrics` is read.
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::LazyLock;

/// A pipeline.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PipelineLabel {
    /// `<tenant>/<pipeline>`.
    pub pipeline: String,
}

/// A pipeline and how its execution ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FinishedLabel {
    /// `<tenant>/<pipeline>`.
    pub pipeline: String,
    /// `Succeeded`, `Failed`, `Stopped`, `Superseded`.
    pub status: String,
}

/// A work queue.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabel {
    /// `jobs` or `triggers`.
    pub queue: String,
}

/// A plugin (`uses:` as written for a built-in or marketplace plugin, `component` for a file
/// or a digest).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabel {
    /// The plugin.
    pub plugin: String,
}

type Durations = Family<PluginLabel, Histogram, fn() -> Histogram>;

/// The engine's metrics.
pub struct Metrics {
    registry: Registry,
    /// Executions this engine started.
    pub executions_started: Family<PipelineLabel, Counter>,
    /// Executions this engine saw end.
    pub executions_finished: Family<FinishedLabel, Counter>,
    /// How long action attempts ran on this engine.
    pub action_seconds: Durations,
    /// Jobs running on this engine now.
    pub jobs_in_flight: Gauge,
    /// Trigger events rejected into the dead letter.
    pub dead_letters: Family<PipelineLabel, Counter>,
    /// Components loaded from the compile cache.
    pub compile_hits: Counter,
    /// Components compiled.
    pub compile_misses: Counter,
    /// Bytes uploaded to the shared artifact store.
    pub artifact_bytes_stored: Counter,
    /// Bytes downloaded from the shared artifact store.
    pub artifact_bytes_fetched: Counter,
    /// Reconnections to NATS.
    pub nats_reconnects: Counter,
    /// Messages of each queue not delivered yet.
    pub queue_waiting: Family<QueueLabel, Gauge>,
    /// How long the oldest of them has waited, in seconds.
    pub queue_oldest_seconds: Family<QueueLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Actions waiting for an approval, an event or a timer.
    pub actions_waiting: Gauge,
}

fn durations() -> Histogram {
    // 100 µs to ~7 min.
    Histogram::new(exponential_buckets(0.0001, 4.0, 12))
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("sluice");
        let m = Metrics {
            executions_started: Family::default(),
            executions_finished: Family::default(),
            action_seconds: Family::new_with_constructor(durations as fn() -> Histogram),
            jobs_in_flight: Gauge::default(),
            dead_letters: Family::default(),
            compile_hits: sluice_runtime::compile_counters().hits.clone(),
            compile_misses: sluice_runtime::compile_counters().misses.clone(),
            artifact_bytes_stored: Counter::default(),
            artifact_bytes_fetched: Counter::default(),
            nats_reconnects: Counter::default(),
            queue_waiting: Family::default(),
            queue_oldest_seconds: Family::default(),
            actions_waiting: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "executions_started",
            "Executions this engine started (or resumed, by a retry)",
            m.executions_started.clone(),
        );
        registry.register(
            "executions_finished",
            "Executions that ended on this engine, by status",
            m.executions_finished.clone(),
        );
        registry.register(
            "action_duration_seconds",
            "How long action attempts ran on this engine, by plugin",
            m.action_seconds.clone(),
        );
        registry.register(
            "jobs_in_flight",
            "Jobs running on this engine",
            m.jobs_in_flight.clone(),
        );
        registry.register(
            "trigger_dead_letters",
            "Trigger events rejected into the dead letter",
            m.dead_letters.clone(),
        );
        registry.register(
            "compile_cache_hits",
            "Components loaded from the compile cache",
            m.compile_hits.clone(),
        );
        registry.register(
            "compile_cache_misses",
            "Components compiled",
            m.compile_misses.clone(),
        );
        registry.register(
            "artifact_bytes_stored",
            "Bytes uploaded to the shared artifact store",
            m.artifact_bytes_stored.clone(),
        );
        registry.register(
            "artifact_bytes_fetched",
            "Bytes downloaded from the shared artifact store",
            m.artifact_bytes_fetched.clone(),
        );
        registry.register(
            "nats_reconnects",
            "Reconnections to NATS",
            m.nats_reconnects.clone(),
        );
        registry.register(
            "queue_waiting",
            "Messages of a queue not delivered yet (the service's: read with max)",
            m.queue_waiting.clone(),
        );
        registry.register(
            "queue_oldest_seconds",
            "How long the oldest undelivered message of a queue has waited (the service's)",
            m.queue_oldest_seconds.clone(),
        );
        registry.register(
            "actions_waiting",
            "Actions waiting for an approval, an event or a timer (the service's)",
            m.actions_waiting.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The metrics in Prometheus' text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Count what an event says: executions started and ended.
    pub fn observe(&self, e: &crate::bus::Event) {
        use crate::bus::Kind;
        use crate::scheduler::Status;
        let pipeline = || PipelineLabel::of(&e.tenant, &e.pipeline).pipeline;
        match (e.kind, e.status) {
            (Kind::Pipeline, Status::InProgress) => {
                self.executions_started
                    .get_or_create(&PipelineLabel {
                        pipeline: pipeline(),
                    })
                    .inc();
            }
            (Kind::Pipeline, s) if s.is_terminal() => {
                self.executions_finished
                    .get_or_create(&FinishedLabel {
                        pipeline: pipeline(),
                        status: s.to_string(),
                    })
                    .inc();
            }
            _ => {}
        }
    }
}

/// Label values a family takes, at most: the pipelines and plugins are tenants' names, and a
/// label set once made is never dropped. Past it, new values count under `_other`.
pub const MAX_LABEL_VALUES: usize = 10_000;

/// `value`, or `_other` once `family` has taken [`MAX_LABEL_VALUES`] others.
fn bounded(family: &'static str, value: String) -> String {
    use std::collections::{HashMap, HashSet};
    static SEEN: LazyLock<std::sync::Mutex<HashMap<&'static str, HashSet<String>>>> =
        LazyLock::new(Default::default);
    let mut seen = SEEN.lock().unwrap();
    let values = seen.entry(family).or_default();
    if values.contains(&value) {
        return value;
    }
    if values.len() >= MAX_LABEL_VALUES {
        return "_other".into();
    }
    values.insert(value.clone());
    value
}

impl PipelineLabel {
    /// `<tenant>/<pipeline>`, bounded (see [`MAX_LABEL_VALUES`]).
    pub fn of(tenant: &str, pipeline: &str) -> Self {
        PipelineLabel {
            pipeline: bounded("pipeline", format!("{tenant}/{pipeline}")),
        }
    }
}

impl PluginLabel {
    /// A plugin as `uses:` names it: a built-in or marketplace plugin by its name; a file or a
    /// digest as `component` (a path says more than a metric should, and each is one more
    /// series); bounded (see [`MAX_LABEL_VALUES`]).
    pub fn of(uses: &str) -> Self {
        let named = !uses.starts_with("blake3:")
            && !uses.ends_with(".wasm")
            && !uses.starts_with('.')
            && !uses.starts_with('/');
        PluginLabel {
            plugin: match named {
                true => bounded("plugin", uses.to_string()),
                false => "component".into(),
            },
        }
    }
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_name_plugins_not_files_and_take_a_bounded_number_of_values() {
        assert_eq!(PluginLabel::of("noop@1").plugin, "noop@1");
        assert_eq!(PluginLabel::of("acme/lint@2").plugin, "acme/lint@2");
        for file in [
            "./plugins/x.wasm",
            "/home/ann/x.wasm",
            "../x.wasm",
            "blake3:00ff",
        ] {
            assert_eq!(PluginLabel::of(file).plugin, "component", "{file}");
        }
        let values: Vec<String> = (0..MAX_LABEL_VALUES + 2)
            .map(|i| bounded("a family of this test", format!("v{i}")))
            .collect();
        assert_eq!(
            values[MAX_LABEL_VALUES - 1],
            format!("v{}", MAX_LABEL_VALUES - 1)
        );
        assert_eq!(values[MAX_LABEL_VALUES], "_other");
        assert_eq!(
            bounded("a family of this test", "v0".into()),
            "v0",
            "known values stay"
        );
    }

    #[test]
    fn the_text_format_names_every_metric_with_its_labels() {
        let m = Metrics::new();
        m.executions_started
            .get_or_create(&PipelineLabel {
                pipeline: "default/web".into(),
            })
            .inc();
        m.action_seconds
            .get_or_create(&PluginLabel {
                plugin: "noop@1".into(),
            })
            .observe(0.002);
        m.compile_hits.inc();
        let text = m.encode();
        assert!(
            text.contains("sluice_executions_started_total{pipeline=\"default/web\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("sluice_action_duration_seconds_count{plugin=\"noop@1\"} 1"),
            "{text}"
        );
        assert!(text.contains("sluice_compile_cache_hits_total 1"), "{text}");
        assert!(
            text.contains("# TYPE sluice_jobs_in_flight gauge"),
            "{text}"
        );
    }
}
