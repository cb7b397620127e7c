//! `noop@1`: succeeds at once. A placeholder action, and the benchmark's unit of work.
use sluice_sdk::prelude::*;

struct Noop;

impl Action for Noop {
    fn describe() -> Description {
        Description::new("noop", env!("CARGO_PKG_VERSION"), Category::Other)
            .summary("Does nothing, successfully")
    }
    fn run(_ctx: &Context, _config: &Config) -> Result<Outcome, ActionError> {
        Ok(Outcome::success())
    }
}

export_action!(Noop);
