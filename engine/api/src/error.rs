//! The one error type of the API: a stable code a program can act on, a message a person can.
use serde::{Deserialize, Serialize};
use std::fmt;

/// What kind of refusal. The codes are a contract (HTTP maps each to one status).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    /// The named thing does not exist (for this tenant).
    NotFound,
    /// The request is malformed or names something invalid (a pipeline with problems: see
    /// [`ApiError::problems`]).
    Invalid,
    /// The request conflicts with the current state (stopping a finished execution, …).
    Conflict,
    /// The principal lacks the role the verb needs.
    Forbidden,
    /// No valid credentials.
    Unauthenticated,
    /// A tenant's quota would be exceeded.
    QuotaExceeded,
    /// A store or the bus is not reachable now; the same request may succeed later.
    Unavailable,
    /// A bug or an unexpected failure on the server.
    Internal,
}

impl Code {
    /// The code as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::NotFound => "not_found",
            Code::Invalid => "invalid",
            Code::Conflict => "conflict",
            Code::Forbidden => "forbidden",
            Code::Unauthenticated => "unauthenticated",
            Code::QuotaExceeded => "quota_exceeded",
            Code::Unavailable => "unavailable",
            Code::Internal => "internal",
        }
    }

    /// The HTTP status that fits.
    pub fn http_status(self) -> u16 {
        match self {
            Code::NotFound => 404,
            Code::Invalid => 422,
            Code::Conflict => 409,
            Code::Forbidden => 403,
            Code::Unauthenticated => 401,
            Code::QuotaExceeded => 429,
            Code::Unavailable => 503,
            Code::Internal => 500,
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One problem in a pipeline file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// The file as the client named it.
    pub file: String,
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// A refused or failed request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub struct ApiError {
    /// What kind.
    pub code: Code,
    /// Why, in words a user can act on.
    pub message: String,
    /// For an invalid pipeline: every problem, by position.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<Problem>,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl ApiError {
    /// An error with `code`.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            problems: Vec::new(),
        }
    }

    /// [`Code::NotFound`].
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }

    /// [`Code::Invalid`].
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::Invalid, message)
    }

    /// [`Code::Conflict`].
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(Code::Conflict, message)
    }

    /// [`Code::Forbidden`].
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(Code::Forbidden, message)
    }

    /// [`Code::Unavailable`].
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(Code::Unavailable, message)
    }

    /// [`Code::Internal`]: for errors the caller cannot act on (a store failing, …).
    pub fn internal(error: impl fmt::Display) -> Self {
        Self::new(Code::Internal, error.to_string())
    }

    /// An invalid pipeline, with its problems.
    pub fn invalid_pipeline(problems: Vec<Problem>) -> Self {
        ApiError {
            code: Code::Invalid,
            message: "the pipeline is not valid".into(),
            problems,
        }
    }

    /// The problems as `FILE:LINE:COL: message` lines.
    pub fn problem_lines(&self) -> String {
        self.problems
            .iter()
            .map(Problem::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl From<sluice_core::model::Diagnostics> for ApiError {
    fn from(d: sluice_core::model::Diagnostics) -> Self {
        ApiError::invalid_pipeline(
            d.items
                .iter()
                .map(|i| Problem {
                    file: d.file.clone(),
                    line: i.loc.line,
                    column: i.loc.col,
                    message: i.message.clone(),
                })
                .collect(),
        )
    }
}
