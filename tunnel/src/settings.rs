//! HTTP/2 settings for HBONE connections: sized so one stream carries bulk traffic
//! at full speed, and bounded so a hostile peer cannot make us hold unbounded state.

/// HTTP/2 limits and windows of every HBONE connection, client and server side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H2Settings {
    /// Receive window of one stream (bytes we buffer per stream at most).
    pub stream_window: u32,
    /// Receive window of the whole connection.
    pub connection_window: u32,
    /// Largest DATA frame we accept (and the peer may send).
    pub max_frame_size: u32,
    /// Streams a peer may open concurrently on one connection we serve.
    pub max_concurrent_streams: u32,
    /// Largest decoded header list we accept (bounds CONTINUATION sequences).
    pub max_header_list_size: u32,
    /// Bytes one stream may queue for sending before it waits for the socket.
    pub max_send_buffer: usize,
    /// Streams reset by the peer before we accepted them that we remember at most
    /// (rapid-reset protection: more is a connection error).
    pub max_pending_accept_reset_streams: usize,
    /// Streams we reset because of the peer's protocol errors that we tolerate
    /// before ending the connection.
    pub max_local_error_reset_streams: usize,
    /// Recently reset streams we keep to tell late frames from protocol errors.
    pub max_concurrent_reset_streams: usize,
}

impl Default for H2Settings {
    fn default() -> Self {
        Self {
            stream_window: 16 << 20,
            connection_window: 32 << 20,
            max_frame_size: 1 << 20,
            max_concurrent_streams: 200,
            max_header_list_size: 64 << 10,
            max_send_buffer: 4 << 20,
            max_pending_accept_reset_streams: 100,
            max_local_error_reset_streams: 1024,
            max_concurrent_reset_streams: 50,
        }
    }
}

/// Why a setting is out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("HTTP/2 setting {setting} is invalid: {message}")]
pub struct InvalidSetting {
    /// The setting's name.
    pub setting: &'static str,
    /// What is wrong with it.
    pub message: String,
}

impl H2Settings {
    /// Checks every value is within what HTTP/2 (RFC 9113) allows.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let bad = |setting, message: &str| {
            Err(InvalidSetting {
                setting,
                message: message.to_owned(),
            })
        };
        const MAX_WINDOW: u32 = (1 << 31) - 1;
        if !(65_535..=MAX_WINDOW).contains(&self.stream_window) {
            return bad("stream window", "must be between 65535 and 2^31-1 bytes");
        }
        if !(65_535..=MAX_WINDOW).contains(&self.connection_window) {
            return bad(
                "connection window",
                "must be between 65535 and 2^31-1 bytes",
            );
        }
        if !(16_384..=16_777_215).contains(&self.max_frame_size) {
            return bad("max frame size", "must be between 16384 and 16777215 bytes");
        }
        if self.max_concurrent_streams == 0 {
            return bad("max concurrent streams", "must be at least 1");
        }
        if self.max_header_list_size < 1024 {
            return bad("max header list size", "must be at least 1024 bytes");
        }
        if self.max_send_buffer < 16_384 {
            return bad("max send buffer", "must be at least 16384 bytes");
        }
        Ok(())
    }

    /// The most memory one connection can make us buffer for received data.
    pub fn receive_memory_per_connection(&self) -> usize {
        self.connection_window as usize
    }

    /// An HTTP/2 client builder with these settings.
    pub fn client(&self) -> h2::client::Builder {
        let mut b = h2::client::Builder::new();
        b.initial_window_size(self.stream_window)
            .initial_connection_window_size(self.connection_window)
            .max_frame_size(self.max_frame_size)
            .max_header_list_size(self.max_header_list_size)
            .max_send_buffer_size(self.max_send_buffer)
            .max_concurrent_reset_streams(self.max_concurrent_reset_streams)
            .max_pending_accept_reset_streams(self.max_pending_accept_reset_streams)
            .max_local_error_reset_streams(Some(self.max_local_error_reset_streams))
            .enable_push(false);
        b
    }

    /// An HTTP/2 server builder with these settings.
    pub fn server(&self) -> h2::server::Builder {
        let mut b = h2::server::Builder::new();
        b.initial_window_size(self.stream_window)
            .initial_connection_window_size(self.connection_window)
            .max_frame_size(self.max_frame_size)
            .max_concurrent_streams(self.max_concurrent_streams)
            .max_header_list_size(self.max_header_list_size)
            .max_send_buffer_size(self.max_send_buffer)
            .max_concurrent_reset_streams(self.max_concurrent_reset_streams)
            .max_pending_accept_reset_streams(self.max_pending_accept_reset_streams)
            .max_local_error_reset_streams(Some(self.max_local_error_reset_streams));
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(H2Settings::default().validate(), Ok(()));
    }

    #[test]
    fn out_of_range_values_are_named() {
        let s = H2Settings {
            max_frame_size: 1000,
            ..H2Settings::default()
        };
        assert_eq!(s.validate().unwrap_err().setting, "max frame size");
        let s = H2Settings {
            stream_window: u32::MAX,
            ..H2Settings::default()
        };
        assert_eq!(s.validate().unwrap_err().setting, "stream window");
    }
}
