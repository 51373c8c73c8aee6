//! `zpath-perf`: load generator and comparison harness.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

use zpath_perf::compare::{run_compare, CompareConfig, LoadSettings, Scenario};
use zpath_perf::generators::{
    open_idle, run_bulk, run_crr, run_rr, BulkParams, CrrParams, Dialer, IdleParams,
    LatencySummary, RrParams,
};
use zpath_perf::report::{self, JsonReport};
use zpath_perf::server::Server;
use zpath_perf::target::TargetSpec;
use zpath_perf::{binaries, cleanup, sys};

#[derive(Parser)]
#[command(
    name = "zpath-perf",
    about = "Measure zpath against direct and any baseline proxy"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the sink/echo load server (prints `listening ADDR` once bound).
    Serve {
        /// Address to listen on (port 0 picks one).
        #[arg(long, default_value = "0.0.0.0:5201")]
        listen: SocketAddr,
    },
    /// Run one scenario against a running `zpath-perf serve` (directly or via SOCKS5).
    Run {
        /// bulk, rr, crr or idle.
        scenario: String,
        /// The load server.
        #[arg(long)]
        server: SocketAddr,
        /// Go through this SOCKS5 proxy.
        #[arg(long)]
        socks5: Option<SocketAddr>,
        /// Seconds to run (idle: seconds to hold).
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Run every scenario for every target, interleaved, and write a report.
    Compare(CompareArgs),
    /// A minimal reference relay (SOCKS5 and captured outbound) for testing the harness.
    Relay {
        /// SOCKS5 entry address.
        #[arg(long)]
        socks5: Option<SocketAddr>,
        /// Captured outbound address (iptables REDIRECT target).
        #[arg(long)]
        outbound: Option<SocketAddr>,
        /// Readiness address (HTTP 200 to any request).
        #[arg(long)]
        readiness: Option<SocketAddr>,
        /// SO_MARK on upstream sockets (0: none; non-zero needs CAP_NET_ADMIN).
        #[arg(long, default_value_t = 0)]
        mark: u32,
    },
}

#[derive(Args, Clone)]
struct LoadArgs {
    /// bulk: parallel flows.
    #[arg(long, default_value_t = 1)]
    flows: usize,
    /// rr: persistent connections.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// rr/crr: request size in bytes.
    #[arg(long, default_value_t = 1)]
    request_size: u32,
    /// rr/crr: response size in bytes.
    #[arg(long, default_value_t = 1)]
    response_size: u32,
    /// rr: total requests per second (fixed rate, latency corrected for coordinated
    /// omission); closed-loop when absent.
    #[arg(long)]
    rate: Option<f64>,
    /// crr: concurrent clients.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// idle: connections to hold.
    #[arg(long, default_value_t = 1000)]
    idle_connections: usize,
}

#[derive(Args)]
struct CompareArgs {
    /// Comma-separated targets: direct, zpath, zpath-hbone, ztunnel, relay, or paths to
    /// target files.
    #[arg(long, default_value = "direct,zpath", value_delimiter = ',')]
    targets: Vec<String>,
    /// Comma-separated scenarios.
    #[arg(long, default_value = "bulk,rr,crr,idle", value_delimiter = ',')]
    scenarios: Vec<String>,
    /// Seconds per sample.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Samples per scenario and target.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Output directory (results.json, SCENARIO.svg, proxy logs, perf.data).
    #[arg(long, default_value = "zpath-perf-out")]
    out: PathBuf,
    /// Use the loopback topology (SOCKS5 entry) even as root.
    #[arg(long)]
    loopback: bool,
    /// Run this target's proxies under `perf record -e cpu-clock -g`.
    #[arg(long)]
    perf_record: Option<String>,
    /// The zpath binary for the built-in zpath targets (relative to the current
    /// directory); default: the `zpath` beside this `zpath-perf`, if there is one.
    #[arg(long, env = "ZPATH_BIN")]
    zpath_bin: Option<PathBuf>,
    #[command(flatten)]
    load: LoadArgs,
}

fn main() -> anyhow::Result<()> {
    cleanup::install_signal_handler();
    let result = run(Cli::parse());
    if result.is_err() && cleanup::stopping() {
        // The signal thread is removing what the run created and exits with 130.
        loop {
            std::thread::park();
        }
    }
    result
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Serve { listen } => serve(listen),
        Cmd::Run {
            scenario,
            server,
            socks5,
            duration,
            load,
        } => run_one(&scenario, server, socks5, secs(duration)?, &load),
        Cmd::Compare(args) => compare(args),
        Cmd::Relay {
            socks5,
            outbound,
            readiness,
            mark,
        } => Ok(zpath_perf::relay::run(&zpath_perf::relay::RelayConfig {
            socks5,
            outbound,
            readiness,
            mark,
        })?),
    }
}

/// The 1, 5 and 15 minute load averages (other work on the machine skews figures).
fn loadavg() -> Vec<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .filter_map(|v| v.parse().ok())
        .collect()
}

fn secs(s: f64) -> anyhow::Result<Duration> {
    if !(s.is_finite() && s > 0.0) {
        bail!("--duration must be a positive number of seconds");
    }
    Ok(Duration::from_secs_f64(s))
}

fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let server = Server::bind(listen)?;
    println!("listening {}", server.local_addr()?);
    server.run();
    Ok(())
}

fn run_one(
    scenario: &str,
    server: SocketAddr,
    socks5: Option<SocketAddr>,
    duration: Duration,
    l: &LoadArgs,
) -> anyhow::Result<()> {
    let dialer = match socks5 {
        Some(p) => Dialer::socks5(server, p),
        None => Dialer::direct(server),
    };
    let r = match Scenario::parse(scenario)? {
        Scenario::Bulk => run_bulk(
            &dialer,
            &BulkParams {
                flows: l.flows,
                duration,
                ..BulkParams::default()
            },
        )?,
        Scenario::Rr => run_rr(
            &dialer,
            &RrParams {
                connections: l.connections,
                request_size: l.request_size,
                response_size: l.response_size,
                duration,
                rate: l.rate,
                max_requests_per_conn: None,
            },
        )?,
        Scenario::Crr => run_crr(
            &dialer,
            &CrrParams {
                concurrency: l.concurrency,
                request_size: l.request_size,
                response_size: l.response_size,
                duration,
                max_conns_per_client: None,
            },
        )?,
        Scenario::Idle => {
            let held = open_idle(
                &dialer,
                &IdleParams {
                    connections: l.idle_connections,
                    openers: 4,
                },
            )?;
            eprintln!("holding {} connections for {:?}", held.len(), duration);
            std::thread::sleep(duration);
            held.result.clone()
        }
    };
    println!(
        "elapsed {:.2} s, sent {} B, received {} B, {:.3} Gbit/s, {} requests ({:.0}/s), {} connections ({:.0}/s), {} errors",
        r.elapsed.as_secs_f64(),
        r.bytes_sent,
        r.bytes_received,
        r.gbit_per_sec(),
        r.requests,
        r.per_sec(r.requests),
        r.connections,
        r.per_sec(r.connections),
        r.errors
    );
    if let Some(h) = &r.latency {
        let l = LatencySummary::of(h);
        println!(
            "latency µs: p50 {:.1} p90 {:.1} p99 {:.1} p99.9 {:.1} max {:.1}",
            l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us
        );
    }
    if let Some(e) = &r.first_error {
        println!("first error: {e}");
    }
    Ok(())
}

fn compare(a: CompareArgs) -> anyhow::Result<()> {
    let targets = a
        .targets
        .iter()
        .map(|t| TargetSpec::resolve(t.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    let scenarios = a
        .scenarios
        .iter()
        .map(|s| Scenario::parse(s.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    let loopback = a.loopback || !sys::is_root();
    if !a.loopback && loopback {
        eprintln!("zpath-perf: not root, using the loopback topology (SOCKS5 entry)");
    }
    for t in &targets {
        if let Some(why) = &t.experimental {
            eprintln!("zpath-perf: target {} is experimental: {why}", t.name);
        }
    }
    let self_exe = std::env::current_exe().context("locating the zpath-perf binary")?;
    let cwd = std::env::current_dir().context("reading the current directory")?;
    let zpath_bin = binaries::resolve_zpath_bin(a.zpath_bin.as_deref(), &cwd, &self_exe)?;
    let ztunnel_bin = if targets.iter().any(|t| t.uses("${ztunnel_bin}")) {
        Some(binaries::find_ztunnel_here()?)
    } else {
        None
    };
    let cfg = CompareConfig {
        targets,
        scenarios,
        duration: secs(a.duration)?,
        repeats: a.repeats,
        out: a.out.clone(),
        loopback,
        perf_record: a.perf_record.clone(),
        self_exe,
        zpath_bin,
        ztunnel_bin,
        load: LoadSettings {
            bulk_flows: a.load.flows,
            rr_connections: a.load.connections,
            request_size: a.load.request_size,
            response_size: a.load.response_size,
            rr_rate: a.load.rate,
            crr_concurrency: a.load.concurrency,
            idle_connections: a.load.idle_connections,
        },
        progress: true,
    };
    let load_before = loadavg();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if load_before.first().is_some_and(|l| *l > cores as f64) {
        eprintln!(
            "zpath-perf: load average {:.1} exceeds {cores} cores: figures will be noisy, ratios less so",
            load_before[0]
        );
    }
    let samples = run_compare(&cfg)?;
    let summaries = report::summarise(&samples);
    let run = serde_json::json!({
        "command": std::env::args().collect::<Vec<_>>(),
        "topology": if loopback { "loopback" } else { "netns" },
        "duration_s": a.duration,
        "repeats": a.repeats,
        "targets": cfg.targets.iter().map(|t| serde_json::json!({
            "name": t.name, "description": t.description, "experimental": t.experimental,
        })).collect::<Vec<_>>(),
        "zpath_bin": cfg.zpath_bin,
        "ztunnel_bin": cfg.ztunnel_bin,
        "load": cfg.load,
        "perf_record": a.perf_record,
        "cores": cores,
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
    });
    let rep = JsonReport {
        run,
        samples,
        summaries,
    };
    let written = report::write_all(&a.out, &rep)?;
    println!("{}", report::table(&rep.summaries));
    for p in written {
        println!("wrote {}", p.display());
    }
    if let Some(t) = &a.perf_record {
        println!(
            "profiles: {}/runs/{t}-*/*/perf.data (perf report -i FILE)",
            a.out.display()
        );
    }
    Ok(())
}
