//! The log filter, readable and changeable at run time through the admin endpoint's
//! `/logging` (as ztunnel's). The binary installs the control once logging is set up.

use std::sync::OnceLock;

/// Replaces the log filter, or says why it cannot.
pub type SetFilter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Reads and replaces the process's log filter.
pub struct LogControl {
    /// The filter now.
    pub current: Box<dyn Fn() -> String + Send + Sync>,
    /// Replaces the filter (tracing `EnvFilter` syntax); an error leaves it as it was.
    pub set: SetFilter,
    /// The filter the process started with (`/logging?reset`).
    pub initial: String,
}

impl std::fmt::Debug for LogControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogControl")
            .field("initial", &self.initial)
            .finish_non_exhaustive()
    }
}

static CONTROL: OnceLock<LogControl> = OnceLock::new();

/// Installs the process's log control; a second call is ignored.
pub fn install(control: LogControl) {
    let _ = CONTROL.set(control);
}

/// The installed log control, if the binary installed one.
pub(crate) fn control() -> Option<&'static LogControl> {
    CONTROL.get()
}

/// Whether `level` is a filter ztunnel's `/logging` accepts: comma-separated levels
/// (`off`, `error`, `warn`, `info`, `debug`, `trace`) or `target=level` clauses.
pub(crate) fn valid_level(level: &str) -> bool {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    !level.is_empty()
        && level.split(',').all(|clause| match clause.split_once('=') {
            None => LEVELS.contains(&clause),
            Some((target, lvl)) => {
                !target.is_empty()
                    && target
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
                    && LEVELS.contains(&lvl)
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_target_clauses_are_valid_and_nothing_else() {
        assert!(valid_level("debug"));
        assert!(valid_level("info,zpath_engine::shard=trace"));
        assert!(!valid_level(""));
        assert!(!valid_level("loud"));
        assert!(!valid_level("zpath_engine"));
        assert!(!valid_level("a b=info"));
        assert!(!valid_level("x=verbose"));
    }
}
