//! The client SDK's error type.

use tonic::Code;

/// Why a client call did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The coordinator answered with an error status (or the call failed in transport).
    #[error("{} ({})", .0.message(), code_name(.0.code()))]
    Status(tonic::Status),
    /// No coordinator address was given.
    #[error("no coordinator address given")]
    NoAddress,
    /// A coordinator address is not a valid URL.
    #[error("invalid coordinator address {addr:?}: {reason}")]
    InvalidAddress {
        /// The address as given.
        addr: String,
        /// What was wrong with it.
        reason: String,
    },
    /// No coordinator could be reached.
    #[error("cannot connect to coordinator {addr}")]
    Connect {
        /// The last address tried.
        addr: String,
        /// The transport's reason.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A bearer token cannot be sent (the message does not repeat it).
    #[error("token: must be 1 to 1000 visible ASCII characters without spaces")]
    InvalidToken,
    /// A step's payload could not be encoded as JSON.
    #[error("payload: cannot encode json: {0}")]
    Json(serde_json::Error),
    /// The coordinator's answer holds something this SDK cannot read: a value it does not know
    /// (from a newer coordinator, such as a new transaction state) or a malformed one.
    #[error("unexpected answer from the coordinator: {0}")]
    Protocol(String),
    /// The TLS files could not be read or are not valid.
    #[error("tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

// Written by hand rather than with `#[from]`, which would also make these the error's `source`:
// the message already carries them, and error reports would print them twice.
impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        ClientError::Status(status)
    }
}

impl From<serde_json::Error> for ClientError {
    fn from(error: serde_json::Error) -> Self {
        ClientError::Json(error)
    }
}

impl ClientError {
    /// The gRPC code of the failure. Errors that never reached a coordinator get the code a
    /// server would have used: `UNAVAILABLE` for connection failures, `INVALID_ARGUMENT` for bad
    /// input, `INTERNAL` for an answer this SDK cannot read.
    pub fn code(&self) -> Code {
        match self {
            ClientError::Status(status) => status.code(),
            ClientError::Connect { .. } => Code::Unavailable,
            ClientError::Protocol(_) => Code::Internal,
            ClientError::NoAddress
            | ClientError::InvalidAddress { .. }
            | ClientError::InvalidToken
            | ClientError::Json(_)
            | ClientError::Tls(_) => Code::InvalidArgument,
        }
    }

    /// The failure's message without its code: the coordinator's status message, or this
    /// error's own description.
    pub fn message(&self) -> String {
        match self {
            ClientError::Status(status) => status.message().to_string(),
            other => other.to_string(),
        }
    }

    /// The coordinator's status, when it answered with one.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            ClientError::Status(status) => Some(status),
            _ => None,
        }
    }
}

/// The canonical name of a gRPC code (`NOT_FOUND`), as operators see it in other gRPC tools.
pub(crate) fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_errors_show_message_and_code() {
        let err = ClientError::from(tonic::Status::not_found("tx_id: no transaction 42"));
        assert_eq!(err.to_string(), "tx_id: no transaction 42 (NOT_FOUND)");
        assert_eq!(err.code(), Code::NotFound);
        assert_eq!(err.message(), "tx_id: no transaction 42");
        assert!(err.status().is_some());
        assert_eq!(ClientError::NoAddress.code(), Code::InvalidArgument);
    }
}
