//! The first-party plugins embedded in the binary at build time (see `build.rs`).
include!(concat!(env!("OUT_DIR"), "/builtin_plugins.rs"));

/// The component bytes of built-in `name@major`, if there is one.
pub fn find(name: &str, major: u32) -> Option<&'static [u8]> {
    BUILTINS
        .iter()
        .find(|(n, m, _)| *n == name && *m == major)
        .map(|(_, _, bytes)| *bytes)
}

/// `name@major` of every built-in plugin.
pub fn names() -> Vec<String> {
    BUILTINS
        .iter()
        .map(|(n, m, _)| format!("{n}@{m}"))
        .collect()
}
