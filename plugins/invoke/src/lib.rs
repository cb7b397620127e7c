//! `invoke@1`: calls a function (a component of the `function` world) with a job document,
//! like CodePipeline's Lambda invoke. The engine runs the function itself — in the same
//! sandbox an action gets — so this component only describes the action's configuration.
use sluice_sdk::prelude::*;

struct Invoke;

impl Action for Invoke {
    fn describe() -> Description {
        Description::new("invoke", env!("CARGO_PKG_VERSION"), Category::Invoke)
            .summary("Calls a function with the pipeline's context; it may continue later with a token")
            .required("function", "a function registered with `sluice function put NAME FILE.wasm`, or a .wasm file relative to the pipeline")
            .optional("parameters", "free-form text handed to the function (like UserParameters)")
    }
    fn run(_ctx: &Context, _config: &Config) -> Result<Outcome, ActionError> {
        Err(ActionError::Config("invoke@1 is run by the engine, which calls the function; this component only describes it".into()))
    }
}

export_action!(Invoke);
