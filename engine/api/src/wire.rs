//! How a reply travels (socket and NATS alike): `{"ok": …}` or `{"error": {"code",
//! "message", "problems"?}}`.
use crate::error::{ApiError, Code};
use serde_json::{Value, json};

/// The wire form of a reply.
pub fn encode(reply: Result<Value, ApiError>) -> Value {
    match reply {
        Ok(v) => json!({ "ok": v }),
        Err(e) => json!({ "error": e }),
    }
}

/// A reply as received: the `ok` value or the refusal.
pub fn decode(mut reply: Value) -> Result<Value, ApiError> {
    if let Some(ok) = reply.get_mut("ok") {
        return Ok(ok.take());
    }
    match reply.get_mut("error").map(Value::take) {
        Some(error) => Err(serde_json::from_value(error)
            .unwrap_or_else(|e| ApiError::new(Code::Internal, format!("malformed error: {e}")))),
        None => Err(ApiError::internal(
            "malformed reply: neither `ok` nor `error`",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_round_trip_with_their_code() {
        assert_eq!(decode(encode(Ok(json!(3)))).unwrap(), json!(3));
        let e = ApiError::not_found("no execution `x`");
        assert_eq!(decode(encode(Err(e.clone()))).unwrap_err(), e);
        let wire = encode(Err(ApiError::conflict("done")));
        assert_eq!(wire["error"]["code"], "conflict");
        assert_eq!(decode(json!({})).unwrap_err().code, Code::Internal);
    }
}
