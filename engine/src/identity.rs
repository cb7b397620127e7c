//! Who is asking. One function, so that the coming authentication replaces it in one place.

/// The caller's identity: `--as NAME` when given, else [`current`].
pub fn resolve(as_flag: Option<&str>) -> String {
    match as_flag {
        Some(name) if !name.trim().is_empty() => name.trim().to_string(),
        _ => current(),
    }
}

/// The caller's identity: `SLUICE_USER`, else `USER`/`LOGNAME`, else the system's name for
/// this process's user (an empty `$USER` in a container or cron job), else `unknown`.
pub fn current() -> String {
    for var in ["SLUICE_USER", "USER", "LOGNAME"] {
        if let Ok(v) = std::env::var(var)
            && !v.trim().is_empty()
        {
            return v;
        }
    }
    system_user().unwrap_or_else(|| "unknown".to_string())
}

/// The name of this process's user in the system's user database.
fn system_user() -> Option<String> {
    let uid = rustix::process::getuid().as_raw().to_string();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        (fields.nth(1)? == uid && !name.is_empty()).then(|| name.to_string())
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_system_names_the_user_when_the_environment_does_not() {
        // Whoever runs the tests is in the user database (root in CI).
        let name = super::system_user().expect("a user name for this uid");
        assert!(!name.is_empty() && !name.contains(':'));
    }
}
