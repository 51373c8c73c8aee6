//! The destination side of HBONE: an HTTP/2 server over an accepted TLS stream.
//!
//! The caller drives [`h2::server::Connection::accept`] and answers each request with
//! [`answer`]: a 200 keeps the stream open for the relay; any other status ends it.

use futures_io::{AsyncBufRead, AsyncWrite};
use h2::server::{Connection, SendResponse};
use h2::SendStream;
use http::StatusCode;

use crate::connect::response;
use crate::io::H2Io;
use crate::payload::Payload;
use crate::settings::H2Settings;

/// A server connection over a stream `S`.
pub type ServerConnection<S> = Connection<H2Io<S>, Payload>;

/// Runs the HTTP/2 server handshake over `io` with `settings`.
pub async fn accept<S>(io: S, settings: &H2Settings) -> Result<ServerConnection<S>, h2::Error>
where
    S: AsyncBufRead + AsyncWrite + Unpin,
{
    settings.server().handshake(H2Io::new(io)).await
}

/// Answers a request with `status`. A 200 returns the stream to relay on; any other
/// status ends the stream (END_STREAM on the response headers).
pub fn answer(
    respond: &mut SendResponse<Payload>,
    status: StatusCode,
) -> Result<Option<SendStream<Payload>>, h2::Error> {
    let ok = status == StatusCode::OK;
    let stream = respond.send_response(response(status), !ok)?;
    Ok(ok.then_some(stream))
}
