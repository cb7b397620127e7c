//! `approval@1`: a manual approval gate. The first run returns `pending` (wake on approval);
//! the engine records decisions (checking who may decide) and runs it again with every
//! decision so far as the wake payload. One rejection fails it; `min_approvals` approvals
//! pass it. The engine fails it with `timeout` when no decision comes in time.
use serde::Deserialize;
use sluice_sdk::WakeOn;
use sluice_sdk::prelude::*;

struct Approval;

#[derive(Deserialize)]
struct Decision {
    approved: bool,
    by: String,
    #[serde(default)]
    summary: Option<String>,
}

#[derive(Deserialize)]
struct Payload {
    decisions: Vec<Decision>,
}

impl Action for Approval {
    fn describe() -> Description {
        Description::new("approval", env!("CARGO_PKG_VERSION"), Category::Approval)
            .summary("Waits for people to approve before the pipeline goes on")
            .required("approvers", "who may decide: identities, comma-separated (`*`: anyone but whoever started the execution)")
            .optional("min_approvals", "approvals needed (default 1)")
            .optional("custom_data", "text shown to approvers (may use #{...})")
            .optional("external_link", "a link for approvers, e.g. the release notes")
            .optional("timeout", "how long to wait, 5m to 60d (default 7d); then the action fails with `timeout`")
            .typed("min_approvals", ConfigType::Integer)
    }

    fn run(ctx: &Context, config: &Config) -> Result<Outcome, ActionError> {
        let needed: usize = config.parse_or("min_approvals", 1)?;
        if needed == 0 {
            return Err(ActionError::Config(
                "`min_approvals` must be at least 1".into(),
            ));
        }
        let approvers = config.require("approvers")?;
        let decisions = match &ctx.wake_payload {
            None => Vec::new(),
            Some(p) => {
                serde_json::from_str::<Payload>(p)
                    .map_err(|e| ActionError::Failed(format!("unreadable decisions: {e}")))?
                    .decisions
            }
        };
        if let Some(no) = decisions.iter().find(|d| !d.approved) {
            return Err(ActionError::Failed(format!(
                "rejected by {}{}",
                no.by,
                no.summary
                    .as_ref()
                    .map(|s| format!(": {s}"))
                    .unwrap_or_default()
            )));
        }
        let yes: Vec<&Decision> = decisions.iter().filter(|d| d.approved).collect();
        if yes.len() >= needed {
            let by = yes
                .iter()
                .map(|d| d.by.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            let summaries = yes
                .iter()
                .filter_map(|d| d.summary.as_deref())
                .collect::<Vec<_>>()
                .join("; ");
            log::info(&format!("approved by {by}"));
            return Ok(Outcome::success()
                .var("ApprovedBy", &by)
                .var("ApprovalSummary", &summaries)
                .summary(format!("approved by {by}")));
        }
        let so_far = if yes.is_empty() {
            String::new()
        } else {
            format!(
                ", approved so far by {}",
                yes.iter()
                    .map(|d| d.by.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let mut pending =
            Outcome::pending("awaiting-decisions", WakeOn::Approval).summary(format!(
                "waiting for {} of {needed} approvals from {approvers}{so_far}",
                yes.len()
            ));
        if let Outcome::Pending(p) = &mut pending {
            p.percent_complete = Some((yes.len() * 100 / needed) as u8);
        }
        Ok(pending)
    }
}

export_action!(Approval);
