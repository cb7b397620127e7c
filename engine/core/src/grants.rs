//! Checking what a pipeline grants its actions, as written: HTTP origins and NATS subject
//! patterns. Enforcing the grants at run time is the runtime's.

/// `capabilities.http`: origins.
pub mod http {
    /// The origin of a URL as grants name it: lowercase scheme and host, the port only when it is
    /// not the scheme's default. `None` for anything that is not an absolute http(s) URL.
    pub fn origin(url: &str) -> Option<String> {
        let uri: http::Uri = url.parse().ok()?;
        origin_of(&uri)
    }

    /// [`origin`] of a parsed URI.
    pub fn origin_of(uri: &http::Uri) -> Option<String> {
        let scheme = uri.scheme_str()?.to_ascii_lowercase();
        let default = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return None,
        };
        let host = uri.host()?.to_ascii_lowercase();
        Some(match uri.port_u16() {
            Some(p) if p != default => format!("{scheme}://{host}:{p}"),
            _ => format!("{scheme}://{host}"),
        })
    }

    /// Check a grant as written in a pipeline: an origin, with no path, query or credentials.
    pub fn valid_grant(grant: &str) -> Result<String, String> {
        let normal = origin(grant.trim_end_matches('/')).ok_or_else(|| format!("{grant:?} is not an http(s) origin such as https://example.com or http://127.0.0.1:8080"))?;
        let uri: http::Uri = grant
            .trim_end_matches('/')
            .parse()
            .map_err(|e| format!("{grant:?}: {e}"))?;
        if uri
            .path_and_query()
            .is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty())
            || grant.contains('@')
        {
            return Err(format!(
                "{grant:?}: grant an origin (scheme://host[:port]), without a path or credentials"
            ));
        }
        Ok(normal)
    }
}

/// `capabilities.nats`: subject patterns.
pub mod nats {
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

    /// Check a server grant as written in a pipeline: a NATS URL.
    pub fn valid_server(url: &str) -> Result<(), String> {
        let rest = ["nats://", "tls://", "ws://", "wss://"]
            .iter()
            .find_map(|scheme| url.strip_prefix(scheme));
        match rest {
            Some(r) if !r.is_empty() && !url.chars().any(|c| c.is_whitespace() || c == ',') => {
                Ok(())
            }
            _ => Err(format!(
                "{url:?} is not a NATS server URL (nats://HOST:PORT, tls://, ws:// or wss://)"
            )),
        }
    }
}
