//! The crate's error type.

/// Errors from building policy inputs. Evaluation itself never fails: anything it
/// cannot decide is a deny with a reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// An address range that is neither `address/length` nor a bare address.
    #[error("invalid address range `{text}`: write an address and prefix length such as 10.0.0.0/8 or fd00::/8")]
    BadCidr {
        /// The offending text.
        text: String,
    },
    /// A peer identity that is not `spiffe://TD/ns/NS/sa/SA` (or `TD/ns/NS/sa/SA`).
    #[error("invalid peer identity `{text}`: expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>")]
    BadIdentity {
        /// The offending text.
        text: String,
    },
}
