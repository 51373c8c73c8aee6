//! How a connection that did not complete is described: the counted reason and the
//! message for the (rate-limited) log line.

use std::io;

use crate::stats::{response_flag, FailReason};
use crate::traffic::ResponseFlag;

/// Why a connection did not complete normally.
#[derive(Debug)]
pub(crate) struct Failure {
    /// The counted reason.
    pub(crate) reason: FailReason,
    /// What happened, for the log.
    pub(crate) message: String,
    /// A peer closed abruptly while relaying (a reset, a broken pipe, an early end):
    /// counted as `reset`, but an ordinary close in Istio's telemetry, as in ztunnel.
    peer_closed: bool,
}

/// A [`Failure`] for `reason`, described by `message`.
pub(crate) fn fail(reason: FailReason, message: impl Into<String>) -> Failure {
    Failure {
        reason,
        message: message.into(),
        peer_closed: false,
    }
}

/// A relay that ended on an I/O error of `kind` (counted as `reset`): a reset, a
/// broken pipe, an unexpected end or a socket no longer connected is the peer closing,
/// which ztunnel's telemetry does not count as a failure.
pub(crate) fn relay_failed(kind: io::ErrorKind, message: impl Into<String>) -> Failure {
    use io::ErrorKind::*;
    Failure {
        peer_closed: matches!(
            kind,
            ConnectionReset | BrokenPipe | UnexpectedEof | NotConnected
        ),
        ..fail(FailReason::Reset, message)
    }
}

impl Failure {
    /// Its `response_flags` in Istio's telemetry.
    pub(crate) fn response_flag(&self) -> ResponseFlag {
        if self.peer_closed {
            return ResponseFlag::None;
        }
        response_flag(Some(self.reason))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_closing_while_relaying_is_no_failure_to_istio_but_other_errors_are() {
        use io::ErrorKind::*;
        for kind in [ConnectionReset, BrokenPipe, UnexpectedEof, NotConnected] {
            let f = relay_failed(kind, "x");
            assert_eq!(f.response_flag(), ResponseFlag::None, "{kind:?}");
            assert_eq!(f.reason, FailReason::Reset);
        }
        for kind in [TimedOut, HostUnreachable, Other] {
            let f = relay_failed(kind, "x");
            assert_eq!(f.response_flag(), ResponseFlag::Connect, "{kind:?}");
        }
        assert_eq!(
            fail(FailReason::Denied, "x").response_flag(),
            ResponseFlag::Deny
        );
    }
}
