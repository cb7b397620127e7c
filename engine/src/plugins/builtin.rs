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

/// The component bytes of the built-in whose digest is `digest` (to load it again after the
/// runtime dropped it from memory).
pub fn by_digest(digest: &crate::artifacts::Digest) -> Option<&'static [u8]> {
    use std::collections::HashMap;
    use std::sync::OnceLock;
    static BY_DIGEST: OnceLock<HashMap<crate::artifacts::Digest, &'static [u8]>> = OnceLock::new();
    BY_DIGEST
        .get_or_init(|| {
            BUILTINS
                .iter()
                .map(|(_, _, bytes)| (crate::artifacts::Digest::of(bytes), *bytes))
                .collect()
        })
        .get(digest)
        .copied()
}
