//! `command@1`: run a shell command with `sh -c` in the action's workspace on the host.
//!
//! The host runs the program (the `process` capability, granted as `process: [sh]`), with the
//! workspace (`in/<name>`, `out/<name>`, `scratch/`) as working directory and a cleared
//! environment. `KEY=VALUE` lines written to `$SLUICE_OUTPUT` become output variables.
use sluice_sdk::prelude::*;

struct CommandAction;

/// Where the host points `$SLUICE_OUTPUT`, as the guest sees it.
const OUTPUT_FILE: &str = "/scratch/.sluice-output.env";

impl Action for CommandAction {
    fn describe() -> Description {
        Description::new("command", env!("CARGO_PKG_VERSION"), Category::Build)
            .summary("Runs a shell command in the action's workspace (in/, out/, scratch/)")
            .required("run", "shell command, run with `sh -c`; KEY=VALUE lines appended to $SLUICE_OUTPUT become output variables")
            .needs(Capability::Process("sh".into()))
            // A host program can change anything it is granted: never run it twice by mistake.
            .side_effects()
    }

    fn run(_ctx: &Context, config: &Config) -> Result<Outcome, ActionError> {
        let script = config.require("run")?;
        let status = process::run("sh", &["-c", script]).map_err(ActionError::Config)?;
        match status.code {
            Some(0) => {}
            Some(code) => {
                return Err(ActionError::Failed(format!(
                    "command exited with code {code}\n{}",
                    status.output_tail
                )));
            }
            None => {
                return Err(ActionError::Failed(format!(
                    "command was killed by a signal\n{}",
                    status.output_tail
                )));
            }
        }
        let vars = match std::fs::read_to_string(OUTPUT_FILE) {
            Ok(text) => sluice_sdk::parse_output_vars(&text)
                .map_err(|e| ActionError::Failed(format!("$SLUICE_OUTPUT: {e}")))?,
            Err(_) => Vec::new(),
        };
        let mut outcome = Outcome::success();
        for (k, v) in vars {
            outcome = outcome.var(k, v);
        }
        Ok(outcome)
    }
}

export_action!(CommandAction);
