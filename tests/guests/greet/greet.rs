// The `greet` test plugin, built in two versions (greet-v1, greet-v2) that differ in their
// version and in one declared capability, so the marketplace tests can publish, install and
// upgrade a real component. Each version's crate sets VERSION and HTTP before including this.
use sluice_sdk::prelude::*;

struct Greet;

impl Action for Greet {
    fn describe() -> Description {
        let d = Description::new("greet", VERSION, Category::Build)
            .summary("Greets whoever `name` says (a marketplace test plugin)")
            .optional_default("name", "who to greet", "world");
        if HTTP { d.needs(Capability::Http) } else { d }
    }

    fn run(_ctx: &Context, config: &Config) -> Result<Outcome, ActionError> {
        let name = config.get("name").unwrap_or("world");
        log::info(&format!("greet {VERSION}: hello, {name}"));
        Ok(Outcome::success().var("Greeting", format!("hello, {name} (greet {VERSION})")))
    }
}

export_action!(Greet);
