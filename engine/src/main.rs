//! The `zpath` node daemon.

use std::collections::BTreeMap;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use zpath_engine::Daemon;

use cli::{Args, LogFormat};

mod cli;
mod ztunnel_env;

/// The command line, with ztunnel's name of each setting beside ours in `--help`.
fn command() -> clap::Command {
    let mut cmd = Args::command();
    for (id, name) in ztunnel_env::NAMES {
        cmd = cmd.mut_arg(*id, |a| {
            let also = format!("[ztunnel env: {name}]");
            let help = a.get_help().map(|h| format!("{h} {also}"));
            let long = a.get_long_help().map(|h| format!("{h}\n{also}"));
            let a = a.help(help.unwrap_or(also));
            match long {
                Some(l) => a.long_help(l),
                None => a,
            }
        });
    }
    cmd
}

/// The arguments: flags and `ZPATH_*` variables, then ztunnel's environment. Returns
/// what ztunnel's environment asked for that zpath does not do, to log.
fn arguments() -> Result<(Args, Vec<String>), String> {
    let matches = command().get_matches();
    let mut args = Args::from_arg_matches(&matches).map_err(|e| e.to_string())?;
    let vars: BTreeMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let notices = ztunnel_env::apply(&mut args, &matches, &vars)?;
    Ok((args, notices))
}

/// Logs to stderr with `filter` (`info` if it does not parse), in `format`; the filter
/// stays changeable at run time through the admin endpoint's `/logging`.
fn init_logging(filter: &str, format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{fmt, reload, EnvFilter};
    let initial = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let start = initial.to_string();
    let (filter, handle) = reload::Layer::new(initial);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Plain => registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .init(),
        LogFormat::Json => registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .init(),
    }
    let reader = handle.clone();
    zpath_engine::logging::install(zpath_engine::logging::LogControl {
        current: Box::new(move || {
            reader
                .with_current(|f| f.to_string())
                .unwrap_or_else(|e| format!("unknown ({e})"))
        }),
        set: Box::new(move |level| {
            let f = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
            handle.reload(f).map_err(|e| e.to_string())
        }),
        initial: start,
    });
}

fn main() -> ExitCode {
    let (args, notices) = match arguments() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("zpath: error: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(
        &cli::log_filter(&args.log, args.access_log),
        args.log_format,
    );
    for notice in &notices {
        tracing::warn!("{notice}");
    }
    let cfg = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("zpath: error: {e}");
            return ExitCode::from(2);
        }
    };
    if cfg.no_control_plane {
        tracing::warn!("--no-control-plane: running on an empty configuration; every outbound connection is passthrough and no workload is served here");
    }
    let daemon = match Daemon::start(cfg) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("zpath: error: {e}");
            return ExitCode::from(2);
        }
    };
    match daemon.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zpath: error: {e}");
            ExitCode::FAILURE
        }
    }
}
