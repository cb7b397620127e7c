//! Tokens: `slu_<id>_<secret>`. The id finds the stored record; only a blake3 hash of the
//! secret is stored, compared in constant time. A token is shown once, when it is made.
use sluice_api::tenancy::TokenInfo;

/// What the store keeps of a token.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct StoredToken {
    /// The public record.
    pub info: TokenInfo,
    /// blake3 of the secret, hex.
    pub hash: String,
}

/// Where a token's record lives (the pipelines bucket, under `_auth/`: no tenant starts
/// with `_`).
pub fn key(id: &str) -> String {
    format!("_auth/tokens/{id}")
}

/// Where a token's name points to its id (one name per tenant; `_operator` for operators).
pub fn name_key(tenant: Option<&str>, name: &str) -> String {
    format!("_auth/names/{}/{name}", tenant.unwrap_or("_operator"))
}

/// A new token: (the token to hand out, its id, the hash to keep).
pub fn mint() -> (String, String, String) {
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    getrandom::fill(&mut id).expect("the system's random source");
    getrandom::fill(&mut secret).expect("the system's random source");
    let id = hex(&id);
    let secret = hex(&secret);
    let hash = blake3::hash(secret.as_bytes()).to_hex().to_string();
    (format!("slu_{id}_{secret}"), id, hash)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The id and secret of a well-formed token.
pub fn parse(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix("slu_")?;
    let (id, secret) = rest.split_once('_')?;
    let hexy = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hexy(id, 16) && hexy(secret, 64)).then_some((id, secret))
}

/// Whether `secret` is the one whose hash was kept (constant time: blake3's hashes compare so).
pub fn matches(secret: &str, hash: &str) -> bool {
    match blake3::Hash::from_hex(hash) {
        Ok(kept) => blake3::hash(secret.as_bytes()) == kept,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_token_parses_and_matches_only_its_own_hash() {
        let (token, id, hash) = mint();
        let (pid, secret) = parse(&token).unwrap();
        assert_eq!(pid, id);
        assert!(matches(secret, &hash));
        let (_, _, other) = mint();
        assert!(!matches(secret, &other));
        for bad in [
            "",
            "slu_",
            "slu_x_y",
            "bearer",
            &token[..token.len() - 1],
            &token.replace("slu_", "sl_"),
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }
}
