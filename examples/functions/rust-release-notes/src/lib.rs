//! An example function for `invoke@1`: writes release notes for `version=…` from its
//! parameters into its output artifact. It shows the three replies: `steps=N` makes it continue
//! later N times (each call gets the token of the previous one), `fail` makes it fail.
wit_bindgen::generate!({ path: "../../../wit", world: "sluice:action/function@0.1.0" });

use sluice::action::function_types::Later;
use sluice::action::log::{Level, log};

struct ReleaseNotes;

fn param<'a>(params: &'a str, key: &str) -> Option<&'a str> {
    params
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

impl Guest for ReleaseNotes {
    fn handle(job: Job) -> Reply {
        if job.parameters.split_whitespace().any(|w| w == "fail") {
            return Reply::Failure(format!(
                "asked to fail by its parameters ({})",
                job.parameters
            ));
        }
        let steps: u32 = param(&job.parameters, "steps")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let done: u32 = job
            .continuation
            .as_deref()
            .and_then(|t| t.strip_prefix("step-"))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if done < steps {
            log(Level::Info, &format!("step {} of {steps}", done + 1), &[]);
            return Reply::ContinueLater(Later {
                token: format!("step-{}", done + 1),
                delay_ms: 50,
                summary: Some(format!("step {} of {steps}", done + 1)),
            });
        }
        let version = param(&job.parameters, "version").unwrap_or("unversioned");
        let notes = format!(
            "Release {version} of {} (execution {})\n",
            job.pipeline, job.execution_id
        );
        if let Some(out) = job.outputs.first()
            && let Err(e) = std::fs::write(format!("/out/{out}/NOTES.md"), &notes)
        {
            return Reply::Failure(format!("cannot write the notes: {e}"));
        }
        Reply::Success(vec![
            ("Notes".into(), notes.trim().to_string()),
            ("Calls".into(), (done + 1).to_string()),
        ])
    }
}

export!(ReleaseNotes);
