//! Publishing to NATS for guests (the `messaging` import), deny by default: only subjects
//! the action was granted (`capabilities.nats`, NATS wildcards allowed) may be used, and only
//! on the engine's own NATS or a server the pipeline granted (`capabilities.nats.server`): a
//! plugin must not carry messages to any server it names.
//! The grants are checked here; a [`Publisher`] (the NATS edges) carries what they allow.
use futures_util::future::BoxFuture;
use std::sync::{Arc, Mutex, OnceLock};

/// What carries a granted publish to a NATS server (the NATS edges implement it; the runtime
/// itself links no NATS client). It waits until the server has the message.
pub trait Publisher: Send + Sync {
    /// Publish `payload` on `subject` at the server `url`.
    fn publish(
        &self,
        url: &str,
        subject: &str,
        payload: Vec<u8>,
    ) -> BoxFuture<'static, Result<(), PublishError>>;
}

/// A publish that did not reach its server (the message says where and why).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PublishError(pub String);

/// Which servers a guest may reach, and what reaches them.
#[derive(Default)]
pub struct NatsAccess {
    /// Where `server: none` goes: the service's NATS, else `SLUICE_NATS_URL`.
    default_url: Mutex<Option<String>>,
    publisher: OnceLock<Arc<dyn Publisher>>,
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

    /// What publishes (set once; without one, every publish fails and says so).
    pub fn set_publisher(&self, publisher: Arc<dyn Publisher>) {
        let _ = self.publisher.set(publisher);
    }

    /// Publish and wait for the server to have it: on `server` if it is the engine's own or
    /// granted in `grants` (see [`grants`]), else on the engine's own.
    pub async fn publish(
        &self,
        grants: &[String],
        server: Option<&str>,
        subject: &str,
        payload: Vec<u8>,
    ) -> Result<(), String> {
        let own = self.default_url.lock().unwrap().clone();
        let url = match server {
            Some(s) => {
                let s = s.trim_end_matches('/');
                let granted = own.as_deref().map(|o| o.trim_end_matches('/')) == Some(s)
                    || server_grants(grants).any(|g| g.trim_end_matches('/') == s);
                if !granted {
                    return Err(Denied::Server(s.to_string()).to_string());
                }
                s.to_string()
            }
            None => own.ok_or("no NATS server: set `server`, or SLUICE_NATS_URL for the engine")?,
        };
        let publisher = self
            .publisher
            .get()
            .ok_or("this engine was built without NATS publishing")?;
        // The guest is told in words (the WIT contract's error is a string).
        publisher
            .publish(&url, subject, payload)
            .await
            .map_err(|e| e.to_string())
    }
}

pub use sluice_core::grants::nats::{subject_matches, valid_grant, valid_server};

/// A publish the action's grants do not allow.
#[derive(Debug, thiserror::Error)]
pub enum Denied {
    /// The subject is not granted.
    #[error("publishing to {0} denied: not granted (capabilities: {{ nats: [{0}] }})")]
    Subject(String),
    /// The server is neither the engine's own NATS nor granted.
    #[error(
        "publishing to NATS server {0} denied: only the engine's own NATS or a granted server (capabilities: {{ nats: {{ server: \"{0}\", subjects: [...] }} }})"
    )]
    Server(String),
}

/// How a server grant travels among a job's subject grants (a subject has no spaces).
const SERVER_GRANT: &str = "server ";

/// A job's NATS grants: the subject patterns and the servers besides the engine's own.
pub fn grants(subjects: &[String], servers: &[String]) -> Vec<String> {
    subjects
        .iter()
        .cloned()
        .chain(servers.iter().map(|s| format!("{SERVER_GRANT}{s}")))
        .collect()
}

fn server_grants(grants: &[String]) -> impl Iterator<Item = &str> {
    grants.iter().filter_map(|g| g.strip_prefix(SERVER_GRANT))
}

/// Check that `subject` is granted in `grants` (see [`grants`]).
pub fn subject_granted(grants: &[String], subject: &str) -> Result<(), Denied> {
    let granted = !subject.chars().any(char::is_whitespace)
        && grants
            .iter()
            .filter(|g| !g.starts_with(SERVER_GRANT))
            .any(|g| subject_matches(g, subject));
    if granted {
        Ok(())
    } else {
        Err(Denied::Subject(subject.to_string()))
    }
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

    #[tokio::test]
    async fn a_plugin_cannot_publish_to_an_ungranted_server() {
        let grants = grants(&["chat.>".into()], &["nats://granted.example:4222".into()]);
        let access = NatsAccess::default();
        access.set_default("nats://own.example:4222");
        // Refused before any connection is tried.
        let e = access
            .publish(
                &grants,
                Some("nats://evil.example:4222"),
                "chat.x",
                b"hi".to_vec(),
            )
            .await
            .unwrap_err();
        assert!(
            e.contains("NATS server nats://evil.example:4222 denied"),
            "{e}"
        );
        assert!(subject_granted(&grants, "chat.x").is_ok());
        assert!(subject_granted(&grants, "ops.x").is_err());
        // A server grant is no subject grant.
        assert!(subject_granted(&grants, "server nats://granted.example:4222").is_err());
        assert!(valid_server("nats://127.0.0.1:4222").is_ok());
        assert!(valid_server("http://x").is_err());
        assert!(valid_server("nats://").is_err());
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
