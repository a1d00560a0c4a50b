//! What a handler can report, and how each answer travels back to the coordinator.

use tonic::Status;

use super::Reply;
use crate::proto::{BranchReply, Outcome};

/// Why a handler did not succeed. The variant decides what the coordinator does next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// A business failure (out of stock, card declined): answered as `OUTCOME_FAILED`, so the
    /// saga compensates or the two-phase commit votes no. Never retried.
    #[error("failed: {0}")]
    Failed(String),
    /// A passing problem (database busy, dependency down): answered as gRPC `UNAVAILABLE`, so the
    /// coordinator retries with backoff within the step's budget.
    #[error("transient: {0}")]
    Transient(String),
    /// The call can never succeed as sent (malformed payload, unknown account): answered as gRPC
    /// `FAILED_PRECONDITION`, which the coordinator does not retry.
    #[error("permanent: {0}")]
    Permanent(String),
}

impl HandlerError {
    /// A business failure; see [`HandlerError::Failed`].
    pub fn failed(message: impl Into<String>) -> Self {
        HandlerError::Failed(message.into())
    }

    /// A retriable failure; see [`HandlerError::Transient`].
    pub fn transient(message: impl Into<String>) -> Self {
        HandlerError::Transient(message.into())
    }

    /// A failure that retrying cannot fix; see [`HandlerError::Permanent`].
    pub fn permanent(message: impl Into<String>) -> Self {
        HandlerError::Permanent(message.into())
    }
}

/// The single place where a handler's result becomes the wire answer. The coordinator classifies
/// gRPC codes (docs/ARCHITECTURE.md §4.3), so keeping this mapping in one function keeps both sides in step.
pub(crate) fn to_wire(result: Result<Reply, HandlerError>) -> Result<BranchReply, Status> {
    match result {
        Ok(reply) => Ok(BranchReply {
            outcome: Outcome::Ok as i32,
            output: reply.output,
            message: reply.message,
        }),
        Err(HandlerError::Failed(message)) => Ok(BranchReply {
            outcome: Outcome::Failed as i32,
            output: Vec::new(),
            message,
        }),
        Err(HandlerError::Transient(message)) => Err(Status::unavailable(message)),
        Err(HandlerError::Permanent(message)) => Err(Status::failed_precondition(message)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn ok_carries_output_and_message() {
        let reply = to_wire(Ok(Reply::output(b"x".to_vec()).with_message("done"))).unwrap();
        assert_eq!(reply.outcome(), Outcome::Ok);
        assert_eq!(reply.output, b"x");
        assert_eq!(reply.message, "done");
    }

    #[test]
    fn failed_is_a_failed_outcome_not_a_status() {
        let reply = to_wire(Err(HandlerError::failed("out of stock"))).unwrap();
        assert_eq!(reply.outcome(), Outcome::Failed);
        assert_eq!(reply.message, "out of stock");
        assert!(reply.output.is_empty());
    }

    #[test]
    fn transient_is_unavailable() {
        let status = to_wire(Err(HandlerError::transient("db busy"))).unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "db busy");
    }

    #[test]
    fn permanent_is_failed_precondition() {
        let status = to_wire(Err(HandlerError::permanent("no such account"))).unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(status.message(), "no such account");
    }
}
