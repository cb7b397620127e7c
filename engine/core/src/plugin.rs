//! What a plugin says about itself (the WIT `description` record, host side) and what a
//! resolved `uses:` reference records. Loading and running plugins is the engine's.
use serde::{Deserialize, Serialize};

/// What a plugin says about itself (the WIT `description` record, host side).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Description {
    /// Name used in `uses: NAME@MAJOR`.
    pub name: String,
    /// Semantic version.
    pub version: String,
    /// source, build, test, deploy, approval, invoke or other.
    pub category: String,
    /// One line.
    pub summary: String,
    /// Accepted configuration keys.
    pub config: Vec<ConfigKey>,
    /// Capabilities it needs.
    pub capabilities: Vec<Capability>,
    /// Whether running it changes the world outside its outputs.
    pub side_effects: bool,
}

/// One accepted configuration key.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConfigKey {
    /// The key.
    pub name: String,
    /// Whether it must be set.
    pub required: bool,
    /// For humans.
    pub description: String,
    /// Documented default.
    pub default_value: Option<String>,
    /// Its type, when the plugin says (`typed-action`); any text otherwise.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub ty: Option<ConfigType>,
}

/// The type of a configuration value, checked at validation for values without references.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ConfigType {
    /// Any text.
    Text,
    /// A whole number.
    Integer,
    /// `true` or `false`.
    Boolean,
    /// `30s`, `5m`, `1h 30m`.
    Duration,
    /// `64MiB`.
    Size,
    /// One of these words.
    OneOf(Vec<String>),
    /// An absolute URL.
    Url,
}

impl ConfigType {
    /// What a value of this type looks like, for messages and `plugin describe`.
    pub fn expected(&self) -> String {
        match self {
            ConfigType::Text => "text".into(),
            ConfigType::Integer => "a whole number, e.g. 5".into(),
            ConfigType::Boolean => "true or false".into(),
            ConfigType::Duration => "a duration, e.g. 30s, 5m, 1h".into(),
            ConfigType::Size => "a size, e.g. 64MiB".into(),
            ConfigType::OneOf(words) => format!("one of {}", words.join(", ")),
            ConfigType::Url => "an absolute URL, e.g. https://example.com/hook".into(),
        }
    }

    /// Whether `value` is one.
    pub fn check(&self, value: &str) -> Result<(), String> {
        let v = value.trim();
        let ok = match self {
            ConfigType::Text => true,
            ConfigType::Integer => v.parse::<i64>().is_ok(),
            ConfigType::Boolean => v == "true" || v == "false",
            ConfigType::Duration => crate::model::units::parse_duration(v).is_ok(),
            ConfigType::Size => crate::model::units::parse_size(v).is_ok(),
            ConfigType::OneOf(words) => words.iter().any(|w| w == v),
            ConfigType::Url => is_absolute_url(v),
        };
        if ok {
            Ok(())
        } else {
            Err(format!("expects {}, got {value:?}", self.expected()))
        }
    }
}

/// `scheme://host…` with a scheme of letters, digits, `+.-` and a non-empty rest without
/// whitespace.
fn is_absolute_url(v: &str) -> bool {
    let Some((scheme, rest)) = v.split_once("://") else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
        && !rest.is_empty()
        && !rest.starts_with('/')
        && !v.chars().any(char::is_whitespace)
}

/// A capability a plugin declares it needs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Capability {
    /// Run this host program.
    Process(String),
    /// Outgoing HTTP.
    Http,
    /// Read the directory named by this config key (granted implicitly).
    ReadConfigPath(String),
    /// Write the directory named by this config key (must be granted rw).
    WriteConfigPath(String),
    /// Publish to NATS subjects (granted in `capabilities.nats`).
    Nats,
    /// Hold the values of the secrets its action lists (`reveal`); the action's `secrets:`
    /// list is the grant.
    Secrets,
    /// Have the host put its action's secrets in place of their placeholders in the bodies of
    /// requests to granted origins (not only in the headers); the plugin holds no value.
    SecretsInBody,
}

impl std::fmt::Display for Capability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Capability::Process(p) => write!(f, "process: {p}"),
            Capability::Http => write!(f, "http"),
            Capability::Nats => write!(f, "nats"),
            Capability::ReadConfigPath(k) => write!(f, "reads the directory in `{k}`"),
            Capability::WriteConfigPath(k) => write!(
                f,
                "writes the directory in `{k}` (grant it under dirs as rw)"
            ),
            Capability::Secrets => write!(
                f,
                "secrets: holds the values of the secrets its action lists"
            ),
            Capability::SecretsInBody => write!(
                f,
                "secrets-in-body: the host puts its action's secrets into request bodies to granted origins"
            ),
        }
    }
}

/// A resolved plugin: its reference, content digest and description.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plugin {
    /// The `uses:` string it was resolved from.
    pub reference: String,
    /// `blake3:<hex>` of the component bytes; recorded in every execution.
    pub digest: String,
    /// What it says about itself.
    pub description: Description,
}

/// Whether `bytes` start with the binary WebAssembly magic.
pub fn is_binary_wasm(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\0asm")
}

#[cfg(test)]
mod tests {
    use super::ConfigType::*;

    #[test]
    fn typed_values_are_checked_and_the_message_says_what_was_expected() {
        assert!(Integer.check("5").is_ok() && Integer.check(" -3 ").is_ok());
        let e = Integer.check("five").unwrap_err();
        assert!(
            e.contains("a whole number") && e.contains("\"five\""),
            "{e}"
        );
        assert!(Boolean.check("true").is_ok() && Boolean.check("yes").is_err());
        assert!(Duration.check("1h 30m").is_ok() && Duration.check("soon").is_err());
        assert!(Size.check("64MiB").is_ok() && Size.check("big").is_err());
        let words = OneOf(vec!["PUT".into(), "POST".into()]);
        assert!(words.check("POST").is_ok());
        assert!(words.check("GET").unwrap_err().contains("one of PUT, POST"));
        for good in ["https://example.com/hook", "nats://h:4222", "file://x"] {
            assert!(Url.check(good).is_ok(), "{good}");
        }
        for bad in [
            "example.com",
            "https://",
            "https:///path",
            "1http://x",
            "https://a b",
        ] {
            assert!(Url.check(bad).is_err(), "{bad}");
        }
        assert!(Text.check("anything at all").is_ok());
    }
}
