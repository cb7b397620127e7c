//! Bounds every request is checked against, on the client before sending and on the server on
//! receipt.
use crate::error::ApiError;

/// The longest tenant, id or name a request may carry. Execution ids are 26-byte ULIDs and
/// names at most 100 bytes (`STAGE/ACTION` 201); they end up in NATS subjects and KV keys,
/// and a subject longer than the server's control line (4 KiB by default) makes the server
/// drop the engine's connection.
pub const MAX_ID_LEN: usize = 256;

/// The most rows a listing returns, whatever limit it asks for.
pub const MAX_LIST: usize = 1000;

/// The largest component a request may carry (decoded).
pub const MAX_UPLOAD: usize = 64 << 20;

/// The largest part of an upload (`upload.part`): its base64 and the request around it stay
/// under NATS's default message size (1 MiB).
pub const MAX_PART: usize = 512 << 10;

/// The most parts an upload joins: [`MAX_UPLOAD`] in parts of [`MAX_PART`].
pub const MAX_PARTS: usize = MAX_UPLOAD / MAX_PART;

/// A tenant, id or name longer than [`MAX_ID_LEN`].
#[derive(Debug, thiserror::Error)]
#[error("{what} is {len} bytes long; at most {MAX_ID_LEN} are accepted")]
pub struct TooLong {
    /// Which field.
    pub what: &'static str,
    /// Its length in bytes.
    pub len: usize,
}

impl From<TooLong> for ApiError {
    fn from(e: TooLong) -> Self {
        ApiError::invalid(e.to_string())
    }
}

/// Refuse a tenant, id or name longer than [`MAX_ID_LEN`].
pub fn check_len(what: &'static str, value: &str) -> Result<(), TooLong> {
    if value.len() > MAX_ID_LEN {
        return Err(TooLong {
            what,
            len: value.len(),
        });
    }
    Ok(())
}

/// A tenant as subjects and keys take it: one token of letters, digits, `-`, `_` and inner
/// `.`, not starting with `_` (the engine's own keys do).
pub fn check_tenant(tenant: &str) -> Result<(), ApiError> {
    check_len("the tenant", tenant)?;
    let token = !tenant.is_empty()
        && !tenant.starts_with(['.', '_'])
        && !tenant.ends_with('.')
        && !tenant.contains("..")
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !token {
        return Err(ApiError::invalid(format!("invalid tenant `{tenant}`")));
    }
    Ok(())
}

/// Decode a component sent in a request, refusing more than [`MAX_UPLOAD`] bytes before
/// decoding anything.
pub fn decode_upload(what: &str, base64: &str) -> Result<Vec<u8>, ApiError> {
    decode_at_most(what, base64, MAX_UPLOAD)
}

/// Decode base64 sent in a request, refusing more than `max` bytes before decoding.
pub fn decode_at_most(what: &str, base64: &str, max: usize) -> Result<Vec<u8>, ApiError> {
    use base64::Engine as _;
    let padding = base64.bytes().rev().take(2).filter(|b| *b == b'=').count();
    if (base64.len() / 4 * 3).saturating_sub(padding) > max {
        let size = match max >= 1 << 20 {
            true => format!("{} MiB", max >> 20),
            false => format!("{} KiB", max >> 10),
        };
        return Err(ApiError::invalid(format!("{what} is larger than {size}")));
    }
    base64::engine::general_purpose::STANDARD
        .decode(base64)
        .map_err(|e| ApiError::invalid(format!("{what} is not base64: {e}")))
}

/// Encode a component for a request.
pub fn encode_upload(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_are_single_tokens() {
        for good in ["default", "acme", "a-b_c", "team.one"] {
            assert!(check_tenant(good).is_ok(), "{good}");
        }
        for bad in ["", "a/b", "_engine", ".x", "x.", "a..b", "a b", "a*", "a>"] {
            assert!(check_tenant(bad).is_err(), "{bad}");
        }
        assert!(check_tenant(&"a".repeat(MAX_ID_LEN + 1)).is_err());
    }

    #[test]
    fn uploads_are_bounded_before_decoding() {
        assert_eq!(decode_upload("f", &encode_upload(b"abc")).unwrap(), b"abc");
        let huge = "A".repeat((MAX_UPLOAD / 3 + 1) * 4);
        assert!(
            decode_upload("f", &huge)
                .unwrap_err()
                .message
                .contains("larger")
        );
        assert_eq!(
            decode_upload("f", "!!").unwrap_err().code,
            crate::Code::Invalid
        );
    }
}
