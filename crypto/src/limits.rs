//! Sizes of TLS 1.3 records, shared by the record layer, the handshake driver,
//! the session buffers and the error messages; they depend on nothing.

/// Largest TLS 1.3 record on the wire: 5-byte header, 2^14 bytes of
/// plaintext and at most 256 bytes of expansion.
pub const MAX_RECORD_LEN: usize = 5 + 16 * 1024 + 256;

/// Largest plaintext carried by one record (records of 16 KiB).
pub const MAX_PLAINTEXT_LEN: usize = 16 * 1024;
