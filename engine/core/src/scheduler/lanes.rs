//! Stage lanes: which executions of one pipeline may be inside each stage, and in what order
//! the others enter. This is where CodePipeline's execution modes and disabled transitions
//! live: a pure function over one pipeline's lane record, stored by the service next to the
//! executions and changed with compare-and-swap like them.
//!
//! - `superseded` (default): one execution inside a stage; at most one waits before it, and a
//!   newer arrival replaces the one waiting (which ends `Superseded`).
//! - `queued`: one execution inside a stage; the others wait first in, first out.
//! - `parallel`: no stage lock; only a disabled transition holds executions back (and only
//!   those waiting are recorded).
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::Timestamp;

/// `execution_mode:` of a pipeline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Newer executions replace older ones waiting between stages.
    #[default]
    Superseded,
    /// Executions enter each stage in arrival order.
    Queued,
    /// Executions run independently.
    Parallel,
}

impl Mode {
    /// The words a pipeline file uses.
    pub const NAMES: &'static [&'static str] = &["superseded", "queued", "parallel"];

    /// Parse `superseded|queued|parallel`.
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "superseded" => Some(Mode::Superseded),
            "queued" => Some(Mode::Queued),
            "parallel" => Some(Mode::Parallel),
            _ => None,
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Superseded => "superseded",
            Mode::Queued => "queued",
            Mode::Parallel => "parallel",
        })
    }
}

/// A disabled transition into a stage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disabled {
    /// Why, as the operator said.
    pub reason: String,
    /// Who disabled it.
    pub by: String,
    /// When.
    pub at: Timestamp,
}

/// One stage's lane.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lane {
    /// Executions inside the stage (at most one unless the mode is `parallel`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inside: Vec<String>,
    /// Executions waiting to enter, oldest arrival first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting: Vec<String>,
    /// Set while the transition into the stage is disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<Disabled>,
}

/// Every lane of one pipeline, by stage name (names survive new pipeline versions).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lanes {
    /// The mode of the execution that arrived last (a new pipeline version may change it).
    #[serde(default)]
    pub mode: Mode,
    /// Stage name → lane.
    #[serde(default)]
    pub stages: BTreeMap<String, Lane>,
}

/// A change to the lanes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LaneOp {
    /// An execution wants to enter `stage`.
    Arrive {
        /// Execution id (a ULID: ids sort by start time).
        execution: String,
        /// Stage name.
        stage: String,
        /// The execution's mode.
        mode: Mode,
    },
    /// An execution left `stage` (or stopped waiting for it).
    Leave {
        /// Execution id.
        execution: String,
        /// Stage name.
        stage: String,
    },
    /// Disable the transition into `stage`.
    Disable {
        /// Stage name.
        stage: String,
        /// Record of who and why.
        disabled: Disabled,
    },
    /// Enable the transition into `stage` again.
    Enable {
        /// Stage name.
        stage: String,
    },
}

/// What a lane change means for executions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// The execution may enter the stage now.
    Admit {
        /// Execution id.
        execution: String,
        /// Stage name.
        stage: String,
    },
    /// The execution waited before the stage and a newer one replaced it.
    Supersede {
        /// Execution id.
        execution: String,
        /// Stage name.
        stage: String,
        /// The newer execution.
        by: String,
    },
}

/// Apply one change: the pure function `(lanes, op) -> (lanes, effects)`. Repeating an op
/// is harmless: an arrival already inside is admitted again and one waiting keeps waiting; a
/// leave of one absent changes nothing.
pub fn step(lanes: &mut Lanes, op: &LaneOp) -> Vec<Effect> {
    let mut effects = Vec::new();
    let stage = match op {
        LaneOp::Arrive {
            execution,
            stage,
            mode,
        } => {
            lanes.mode = *mode;
            let lane = lanes.stages.entry(stage.clone()).or_default();
            if lane.inside.contains(execution) {
                // Already let in (the arrival is repeated, e.g. its write was retried): it still is.
                effects.push(Effect::Admit {
                    execution: execution.clone(),
                    stage: stage.clone(),
                });
            } else if !lane.waiting.contains(execution) {
                if lanes.mode == Mode::Superseded {
                    // At most one waits: the newer of the two (by id, i.e. start time) stays.
                    if let Some(older) = lane.waiting.first().cloned() {
                        if older < *execution {
                            lane.waiting.clear();
                            lane.waiting.push(execution.clone());
                            effects.push(Effect::Supersede {
                                execution: older,
                                stage: stage.clone(),
                                by: execution.clone(),
                            });
                        } else {
                            effects.push(Effect::Supersede {
                                execution: execution.clone(),
                                stage: stage.clone(),
                                by: older,
                            });
                        }
                    } else {
                        lane.waiting.push(execution.clone());
                    }
                } else {
                    lane.waiting.push(execution.clone());
                }
            }
            stage
        }
        LaneOp::Leave { execution, stage } => {
            if let Some(lane) = lanes.stages.get_mut(stage) {
                lane.inside.retain(|e| e != execution);
                lane.waiting.retain(|e| e != execution);
            }
            stage
        }
        LaneOp::Disable { stage, disabled } => {
            lanes.stages.entry(stage.clone()).or_default().disabled = Some(disabled.clone());
            stage
        }
        LaneOp::Enable { stage } => {
            if let Some(lane) = lanes.stages.get_mut(stage) {
                lane.disabled = None;
            }
            stage
        }
    };
    admit(lanes, stage, &mut effects);
    if lanes
        .stages
        .get(stage)
        .is_some_and(|l| *l == Lane::default())
    {
        lanes.stages.remove(stage); // keep the record small: an idle lane is no lane
    }
    effects
}

/// Let waiting executions into `stage` while the mode and the transition allow. In `parallel`
/// mode nobody is recorded as inside (there is no lock to hold), so an execution passing an
/// enabled transition changes nothing: no write, no contention between executions.
fn admit(lanes: &mut Lanes, stage: &str, effects: &mut Vec<Effect>) {
    let parallel = lanes.mode == Mode::Parallel;
    let Some(lane) = lanes.stages.get_mut(stage) else {
        return;
    };
    while lane.disabled.is_none()
        && !lane.waiting.is_empty()
        && (parallel || lane.inside.is_empty())
    {
        let execution = lane.waiting.remove(0);
        if !parallel {
            lane.inside.push(execution.clone());
        }
        effects.push(Effect::Admit {
            execution,
            stage: stage.to_string(),
        });
    }
}
