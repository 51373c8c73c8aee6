//! How a connection that did not complete is described: the counted reason and the
//! message for the (rate-limited) log line.

use crate::stats::FailReason;

/// Why a connection did not complete normally.
#[derive(Debug)]
pub(crate) struct Failure {
    /// The counted reason.
    pub(crate) reason: FailReason,
    /// What happened, for the log.
    pub(crate) message: String,
}

/// A [`Failure`] for `reason`, described by `message`.
pub(crate) fn fail(reason: FailReason, message: impl Into<String>) -> Failure {
    Failure {
        reason,
        message: message.into(),
    }
}
