//! `notify-nats@1`: publish `message` (its `#{...}` references already resolved by the engine)
//! to `subject` — for chat bridges and anything else that listens on NATS. The subject must be
//! granted in `capabilities.nats`.
use sluice_sdk::prelude::*;

struct NotifyNats;

impl Action for NotifyNats {
    fn describe() -> Description {
        Description::new("notify-nats", env!("CARGO_PKG_VERSION"), Category::Other)
            .summary("Publishes a message (with #{...} references) to a NATS subject")
            .required(
                "subject",
                "where to publish; must be granted in capabilities.nats",
            )
            .required("message", "the message; may use #{...} references")
            .optional(
                "server",
                "nats:// URL (default: the service's NATS, or SLUICE_NATS_URL)",
            )
            .typed("server", ConfigType::Url)
            .needs(Capability::Nats)
            .side_effects()
    }

    fn run(_ctx: &Context, config: &Config) -> Result<Outcome, ActionError> {
        let subject = config.require("subject")?;
        let message = config.require("message")?;
        sluice_sdk::messaging::publish(subject, message.as_bytes(), config.get("server")).map_err(
            |e| {
                if e.contains("denied") || e.contains("no NATS server") {
                    ActionError::Config(e)
                } else {
                    ActionError::Retryable(e)
                }
            },
        )?;
        log::info(&format!("published {} bytes to {subject}", message.len()));
        Ok(Outcome::success()
            .var("Subject", subject)
            .var("Bytes", message.len())
            .summary(format!("published to {subject}")))
    }
}

export_action!(NotifyNats);
