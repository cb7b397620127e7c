//! Posts `body` to `url` as JSON, like a chat webhook or an API that takes its token in the
//! document: the body holds `#{secrets.…}` placeholders, which the host replaces on the way
//! out (the plugin declares `secrets_in_body`, and never holds a value).
use sluice_sdk::prelude::*;

struct Poster;

impl Action for Poster {
    fn describe() -> Description {
        Description::new("poster", "1.0.0", Category::Deploy)
            .summary("Test plugin: POSTs `body` to `url`")
            .required("url", "where to post")
            .required("body", "the JSON document")
            .needs(Capability::Http)
            .secrets_in_body()
            .side_effects()
    }

    fn run(_ctx: &Context, config: &Config) -> Result<Outcome, ActionError> {
        let body = config.require("body")?;
        log::info(&format!("posting {body}"));
        let response = sluice_sdk::http::request(
            "POST",
            config.require("url")?,
            &[("content-type", "application/json")],
            body.as_bytes(),
        )
        .map_err(ActionError::Failed)?;
        if response.status >= 300 {
            return Err(ActionError::Failed(format!(
                "the server answered {}",
                response.status
            )));
        }
        Ok(Outcome::success().var("Status", response.status))
    }
}

export_action!(Poster);
