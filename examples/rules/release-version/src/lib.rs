//! An example custom rule: passes when `version` (usually `#{Build.Version}`) is a release
//! version `MAJOR.MINOR.PATCH`; a pre-release (`1.4.0-rc.1`) passes only with
//! `allow_prerelease: "true"`. Use it to keep release candidates out of production:
//!
//! ```yaml
//! before_entry:
//!   result: FAIL
//!   rules:
//!     - rule: ./release_version.wasm
//!       with: { version: "#{Build.Version}" }
//! ```
// The bindings wit-bindgen generates for the rule world take many arguments.
#![allow(clippy::too_many_arguments)]
wit_bindgen::generate!({ path: "../../../wit", world: "sluice:action/rule@0.1.0" });

use sluice::action::log::{Level, log};

struct ReleaseVersion;

fn numbers(core: &str) -> bool {
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
}

impl Guest for ReleaseVersion {
    fn check(ctx: CheckContext, config: Vec<(String, String)>) -> Result<(), String> {
        let get = |k: &str| {
            config
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        let version = get("version").ok_or("release-version needs `with: { version: ... }`")?;
        let allow_pre = get("allow_prerelease") == Some("true");
        log(
            Level::Info,
            &format!(
                "checking version {version:?} for {} of {}",
                ctx.stage, ctx.pipeline
            ),
            &[],
        );
        let (core, pre) = match version.split_once('-') {
            Some((core, pre)) => (core, Some(pre)),
            None => (version, None),
        };
        if !numbers(core) {
            return Err(format!("{version:?} is not a MAJOR.MINOR.PATCH version"));
        }
        match pre {
            Some(p) if !allow_pre => Err(format!("{version} is a pre-release ({p})")),
            _ => Ok(()),
        }
    }
}

export!(ReleaseVersion);
