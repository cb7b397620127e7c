//! Who is asking. One function, so that the coming authentication replaces it in one place.

/// The caller's identity: `--as NAME` when given, else [`current`].
pub fn resolve(as_flag: Option<&str>) -> String {
    match as_flag {
        Some(name) if !name.trim().is_empty() => name.trim().to_string(),
        _ => current(),
    }
}

/// The caller's identity: `SLUICE_USER`, else the login name, else `unknown`.
pub fn current() -> String {
    for var in ["SLUICE_USER", "USER", "LOGNAME"] {
        if let Ok(v) = std::env::var(var)
            && !v.trim().is_empty()
        {
            return v;
        }
    }
    "unknown".to_string()
}
