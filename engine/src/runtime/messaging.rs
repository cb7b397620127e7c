//! Publishing to NATS for guests (the `messaging` import), deny by default: only subjects
//! the action was granted (`capabilities.nats`, NATS wildcards allowed) may be used.
//! Connections are opened on first use and shared by every call of the engine.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// How long connecting and publishing may take.
const NATS_TIMEOUT: Duration = Duration::from_secs(10);

/// The engine's NATS connections, by server URL.
#[derive(Default)]
pub struct NatsAccess {
    /// Where `server: none` goes: the service's NATS, else `SLUICE_NATS_URL`.
    default_url: Mutex<Option<String>>,
    clients: tokio::sync::Mutex<HashMap<String, async_nats::Client>>,
}

impl NatsAccess {
    /// Access with the default server from `SLUICE_NATS_URL`, if set.
    pub fn from_env() -> Self {
        NatsAccess {
            default_url: Mutex::new(
                std::env::var("SLUICE_NATS_URL")
                    .ok()
                    .filter(|u| !u.is_empty()),
            ),
            ..Default::default()
        }
    }

    /// Make `url` the default server (the service on NATS uses its own).
    pub fn set_default(&self, url: &str) {
        *self.default_url.lock().unwrap() = Some(url.to_string());
    }

    /// Publish and wait for the server to have it.
    pub async fn publish(
        &self,
        server: Option<&str>,
        subject: &str,
        payload: Vec<u8>,
    ) -> Result<(), String> {
        let url = match server {
            Some(s) => s.to_string(),
            None => self
                .default_url
                .lock()
                .unwrap()
                .clone()
                .ok_or("no NATS server: set `server`, or SLUICE_NATS_URL for the engine")?,
        };
        let client = {
            let mut clients = self.clients.lock().await;
            match clients.get(&url) {
                Some(c) => c.clone(),
                None => {
                    let c = tokio::time::timeout(NATS_TIMEOUT, async_nats::connect(url.as_str()))
                        .await
                        .map_err(|_| format!("connecting to {url} timed out"))?
                        .map_err(|e| format!("cannot connect to {url}: {e}"))?;
                    clients.insert(url.clone(), c.clone());
                    c
                }
            }
        };
        let sent = async {
            client
                .publish(subject.to_string(), payload.into())
                .await
                .map_err(|e| e.to_string())?;
            client.flush().await.map_err(|e| e.to_string())
        };
        tokio::time::timeout(NATS_TIMEOUT, sent)
            .await
            .map_err(|_| format!("publishing to {url} timed out"))?
            .map_err(|e| format!("publishing to {url}: {e}"))
    }
}

/// Whether `subject` matches the grant `pattern` (`*` one token, `>` the rest).
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let (mut p, mut s) = (pattern.split('.'), subject.split('.'));
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Check a grant as written in a pipeline: a subject pattern.
pub fn valid_grant(pattern: &str) -> Result<(), String> {
    let tokens: Vec<&str> = pattern.split('.').collect();
    if pattern.is_empty()
        || tokens
            .iter()
            .any(|t| t.is_empty() || t.chars().any(char::is_whitespace))
    {
        return Err(format!(
            "{pattern:?} is not a NATS subject (dot-separated tokens, no spaces)"
        ));
    }
    if tokens[..tokens.len() - 1].contains(&">") {
        return Err(format!("{pattern:?}: `>` may only be the last token"));
    }
    // Wildcards match whole tokens only, so the first token decides whether the pattern can
    // reach Sluice's own subjects, the system's `$…` ones (JetStream, KV) or reply inboxes:
    // `*` or `>` there matches them all.
    if matches!(tokens[0], ">" | "*" | "sluice" | "_INBOX") || tokens[0].starts_with('$') {
        return Err(format!(
            "{pattern:?}: grant subjects of your own, starting with a fixed token; nothing that can match Sluice's `sluice.>`, system `$…` or `_INBOX.>` subjects"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_and_grants() {
        assert!(subject_matches("chat.*.releases", "chat.ops.releases"));
        assert!(!subject_matches(
            "chat.*.releases",
            "chat.ops.team.releases"
        ));
        assert!(subject_matches("chat.>", "chat.ops.team"));
        assert!(!subject_matches("chat.>", "chat"));
        assert!(!subject_matches("chat.ops", "chat.ops.more"));
        assert!(valid_grant("chat.>").is_ok());
        assert!(valid_grant(">").is_err());
        assert!(valid_grant("sluice.default.api.stop").is_err());
        assert!(valid_grant("a..b").is_err());
    }

    #[test]
    fn grants_that_could_reach_sluice_system_or_inbox_subjects_are_refused() {
        for pattern in [
            "*.>",
            "*",
            "*.*.trigger.*",
            "*.default.api.stop",
            "sluice",
            "sluice.>",
            "$KV.sluice-executions.>",
            "$JS.API.>",
            "$SYS.>",
            "_INBOX.>",
            "_INBOX.abc",
        ] {
            assert!(valid_grant(pattern).is_err(), "{pattern} was accepted");
        }
        for pattern in ["chat.*", "chat.>", "acme.*.deploys", "chat.$x"] {
            assert!(valid_grant(pattern).is_ok(), "{pattern} was refused");
        }
    }
}
