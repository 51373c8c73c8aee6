//! `compare`: every scenario for every target, interleaved (A B C A B C …) with repeats,
//! in one topology, with the proxies' CPU and memory sampled while the load runs.
//!
//! Each sample starts the target's proxies afresh (so fixed ports never clash and memory
//! starts from the same point), installs the capture rules, checks the path with a few
//! requests, runs the scenario while sampling `/proc`, then stops everything again.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cleanup::{self, Registration, Resource};
use crate::generators::{
    open_idle, run_bulk, run_crr, run_rr, BulkParams, CrrParams, Dialer, IdleParams,
    LatencySummary, LoadResult, RrParams,
};
use crate::procstat::{ProcUsage, Sampler};
use crate::syscalls::{SyscallCounter, SyscallCounts};
use crate::target::{launch, LaunchOptions, RenderContext, RunningProxy, TargetSpec};
use crate::topology::{NetnsPair, Node, Redirect, Topology};
use crate::{sys, Error, Result};

/// A load scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Parallel bulk flows: Gbit/s.
    Bulk,
    /// Request/response on persistent connections: requests/s and latency.
    Rr,
    /// Connect, request/response, close: connections/s and latency.
    Crr,
    /// Idle connections held: proxy memory per connection.
    Idle,
}

impl Scenario {
    /// Parses a scenario name.
    pub fn parse(s: &str) -> Result<Scenario> {
        match s {
            "bulk" => Ok(Scenario::Bulk),
            "rr" => Ok(Scenario::Rr),
            "crr" => Ok(Scenario::Crr),
            "idle" => Ok(Scenario::Idle),
            other => Err(Error::Usage(format!(
                "unknown scenario {other:?} (bulk, rr, crr, idle)"
            ))),
        }
    }

    /// The scenario's name.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Bulk => "bulk",
            Scenario::Rr => "rr",
            Scenario::Crr => "crr",
            Scenario::Idle => "idle",
        }
    }

    /// The unit of the scenario's headline value.
    pub fn unit(self) -> &'static str {
        match self {
            Scenario::Bulk => "Gbit/s",
            Scenario::Rr => "req/s",
            Scenario::Crr => "conn/s",
            Scenario::Idle => "conns held",
        }
    }
}

/// Load shape of each scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadSettings {
    /// `bulk` flows.
    pub bulk_flows: usize,
    /// `rr` connections.
    pub rr_connections: usize,
    /// `rr`/`crr` request size, bytes.
    pub request_size: u32,
    /// `rr`/`crr` response size, bytes.
    pub response_size: u32,
    /// `rr` total rate (requests/s); `None` is closed-loop.
    pub rr_rate: Option<f64>,
    /// `crr` concurrent clients.
    pub crr_concurrency: usize,
    /// `idle` connections.
    pub idle_connections: usize,
}

impl Default for LoadSettings {
    fn default() -> Self {
        LoadSettings {
            bulk_flows: 1,
            rr_connections: 1,
            request_size: 1,
            response_size: 1,
            rr_rate: None,
            crr_concurrency: 1,
            idle_connections: 1000,
        }
    }
}

/// Everything `compare` needs.
#[derive(Debug, Clone)]
pub struct CompareConfig {
    /// Targets in run order.
    pub targets: Vec<TargetSpec>,
    /// Scenarios in run order.
    pub scenarios: Vec<Scenario>,
    /// Duration of each sample.
    pub duration: Duration,
    /// Samples per (scenario, target).
    pub repeats: usize,
    /// Output directory.
    pub out: PathBuf,
    /// Use the loopback topology even as root.
    pub loopback: bool,
    /// Run this target's proxies under `perf record`.
    pub perf_record: Option<String>,
    /// The `zpath-perf` binary (for `serve` and the built-in `relay`).
    pub self_exe: PathBuf,
    /// The zpath binary for `${zpath_bin}` (absolute: targets start in their own
    /// directories; see [`crate::binaries::resolve_zpath_bin`]).
    pub zpath_bin: Option<PathBuf>,
    /// The ztunnel binary for `${ztunnel_bin}` (absolute; see
    /// [`crate::binaries::find_ztunnel`]).
    pub ztunnel_bin: Option<PathBuf>,
    /// Load shapes.
    pub load: LoadSettings,
    /// Print progress to stderr.
    pub progress: bool,
}

/// One measurement of one target in one scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Target name.
    pub target: String,
    /// Scenario.
    pub scenario: Scenario,
    /// Repeat index, from 0.
    pub repeat: usize,
    /// The headline value (see [`Scenario::unit`]); 0 when the sample failed.
    pub value: f64,
    /// Measured wall time, seconds.
    pub elapsed_s: f64,
    /// Payload bytes sent by the client.
    pub bytes_sent: u64,
    /// Payload bytes received (for `bulk`, confirmed by the sink).
    pub bytes_received: u64,
    /// Completed exchanges.
    pub requests: u64,
    /// Connections used.
    pub connections: u64,
    /// Failed connections or exchanges.
    pub errors: u64,
    /// Latency percentiles (`rr`, `crr`).
    pub latency: Option<LatencySummary>,
    /// What the target's proxies used (all nodes together; empty for `direct`).
    pub proxy: ProcUsage,
    /// Proxy CPU seconds per GB of payload relayed (`bulk`).
    pub cpu_s_per_gb: Option<f64>,
    /// Proxy CPU milliseconds per 1,000 exchanges (`rr`, `crr`).
    pub cpu_ms_per_1k_req: Option<f64>,
    /// Proxy RSS growth per idle connection, KiB.
    pub rss_kib_per_conn: Option<f64>,
    /// System calls the proxies made while the load ran (every thread, all nodes), see
    /// [`crate::syscalls`].
    #[serde(default)]
    pub proxy_syscalls: Option<SyscallCounts>,
    /// Why `proxy_syscalls` is missing from a proxied sample.
    #[serde(default)]
    pub syscalls_unavailable: Option<String>,
    /// Proxy system calls per exchange (`rr`, `crr`).
    #[serde(default)]
    pub syscalls_per_req: Option<f64>,
    /// Proxy `io_uring_enter` calls per exchange (`rr`, `crr`).
    #[serde(default)]
    pub io_uring_enter_per_req: Option<f64>,
    /// The proxies' `istio_tcp_*` counters after the sample (summed over nodes and
    /// labels), for targets with a metrics URL.
    #[serde(default)]
    pub proxy_counters: std::collections::BTreeMap<String, f64>,
    /// The same counters per node (`client`, `server`): on the server node of a tunnel
    /// target they show that traffic arrived through the tunnel, the only way in there.
    #[serde(default)]
    pub proxy_counters_by_node:
        std::collections::BTreeMap<String, std::collections::BTreeMap<String, f64>>,
    /// Why the sample failed, if it did.
    pub error: Option<String>,
}

impl Sample {
    /// An empty (not yet measured) sample.
    pub fn new(target: &str, scenario: Scenario, repeat: usize) -> Sample {
        Sample {
            target: target.into(),
            scenario,
            repeat,
            value: 0.0,
            elapsed_s: 0.0,
            bytes_sent: 0,
            bytes_received: 0,
            requests: 0,
            connections: 0,
            errors: 0,
            latency: None,
            proxy: ProcUsage::default(),
            cpu_s_per_gb: None,
            cpu_ms_per_1k_req: None,
            rss_kib_per_conn: None,
            proxy_syscalls: None,
            syscalls_unavailable: None,
            syscalls_per_req: None,
            io_uring_enter_per_req: None,
            proxy_counters: Default::default(),
            proxy_counters_by_node: Default::default(),
            error: None,
        }
    }
}

/// A few exchanges before measuring: a broken path fails here with a clear error, not
/// mid-run.
fn check_path(client: &Node, dialer: &Dialer) -> Result<()> {
    let probe = RrParams {
        duration: Duration::from_secs(5),
        max_requests_per_conn: Some(10),
        ..RrParams::default()
    };
    let r = client.run(|| run_rr(dialer, &probe))?;
    match r.first_error {
        Some(e) if r.requests < 10 => Err(Error::Protocol(format!("path check failed: {e}"))),
        _ => Ok(()),
    }
}

/// The load server, started once per run on the server node.
struct AppServer {
    child: Child,
    addr: SocketAddr,
    _reg: Registration,
}

impl AppServer {
    fn start(exe: &std::path::Path, node: &Node) -> Result<AppServer> {
        let mut cmd = Command::new(exe);
        cmd.args([
            "serve",
            "--listen",
            &SocketAddr::new(node.ip, 0).to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        node.prepare(&mut cmd)?;
        let cmdline = format!("{} serve", exe.display());
        let (mut child, reg) = cleanup::create(|| {
            let child = cmd.spawn().map_err(|e| Error::Command {
                command: cmdline.clone(),
                reason: e.to_string(),
            })?;
            let pid = child.id();
            Ok((child, Resource::Process(pid)))
        })?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = BufReader::new(out).read_line(&mut line);
        }
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|a| a.parse().ok());
        match addr {
            Some(addr) => Ok(AppServer {
                child,
                addr,
                _reg: reg,
            }),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                Err(Error::Command {
                    command: cmdline,
                    reason: format!("did not report its address (got {line:?})"),
                })
            }
        }
    }
}

impl Drop for AppServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the comparison and returns every sample (also on partial failure of samples;
/// an error here means the run itself could not proceed).
pub fn run_compare(cfg: &CompareConfig) -> Result<Vec<Sample>> {
    validate(cfg)?;
    std::fs::create_dir_all(&cfg.out)
        .map_err(|e| Error::io(format!("creating {}", cfg.out.display()), e))?;
    let topo = if cfg.loopback {
        Topology::loopback()
    } else {
        Topology::Netns(NetnsPair::create()?)
    };
    for t in &cfg.targets {
        if !t.supports(topo.mode()) {
            return Err(Error::Usage(format!(
                "target {} does not run in {} mode (it supports {:?})",
                t.name,
                topo.mode(),
                t.modes
            )));
        }
    }
    let server = AppServer::start(&cfg.self_exe, topo.server())?;
    let total = cfg.scenarios.len() * cfg.repeats * cfg.targets.len();
    let mut samples = Vec::with_capacity(total);
    let mut run_no = 0usize;
    for &scenario in &cfg.scenarios {
        for repeat in 0..cfg.repeats {
            for target in &cfg.targets {
                run_no += 1;
                let s = run_sample(cfg, &topo, server.addr, target, scenario, repeat)?;
                if cfg.progress {
                    progress(run_no, total, &s);
                }
                samples.push(s);
            }
        }
    }
    drop(server);
    drop(topo);
    Ok(samples)
}

fn validate(cfg: &CompareConfig) -> Result<()> {
    if cfg.targets.is_empty() || cfg.scenarios.is_empty() || cfg.repeats == 0 {
        return Err(Error::Usage(
            "need at least one target, scenario and repeat".into(),
        ));
    }
    if cfg.duration.is_zero() {
        return Err(Error::Usage("duration must be positive".into()));
    }
    for t in &cfg.targets {
        if t.uses("${zpath_bin}") && cfg.zpath_bin.is_none() {
            return Err(Error::Usage(format!(
                "target {} needs the zpath binary: build it with `cargo build --release -p \
                 zpath-engine` and pass --zpath-bin PATH or set ZPATH_BIN",
                t.name
            )));
        }
        if t.uses("${ztunnel_bin}") && cfg.ztunnel_bin.is_none() {
            // Say where it was looked for.
            crate::binaries::find_ztunnel_here()?;
        }
    }
    if let Some(p) = &cfg.perf_record {
        if !cfg.targets.iter().any(|t| &t.name == p) {
            return Err(Error::Usage(format!(
                "--perf-record {p}: not among --targets"
            )));
        }
        let found = Command::new("perf")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Err(Error::MissingTool {
                tool: "perf".into(),
                install: "apt-get install linux-perf (Debian) or linux-tools-$(uname -r) (Ubuntu)"
                    .into(),
            });
        }
    }
    Ok(())
}

fn progress(n: usize, total: usize, s: &Sample) {
    let what = match &s.error {
        Some(e) => format!("FAILED: {e}"),
        None => {
            let lat = s
                .latency
                .map(|l| format!(", p50 {:.0} µs p99 {:.0} µs", l.p50_us, l.p99_us))
                .unwrap_or_default();
            let sys = match (s.syscalls_per_req, &s.syscalls_unavailable) {
                (Some(n), _) => format!(", {n:.1} proxy syscalls/req"),
                (None, Some(why)) => format!(", syscalls not counted: {why}"),
                (None, None) => String::new(),
            };
            format!(
                "{:.2} {}{lat}, proxy cpu {:.2} s{sys}",
                s.value,
                s.scenario.unit(),
                s.proxy.cpu_s
            )
        }
    };
    eprintln!(
        "[{n}/{total}] {} {} #{}: {what}",
        s.scenario.name(),
        s.target,
        s.repeat + 1
    );
}

/// The proxies and rules of one sample; dropping stops and removes them.
struct Deployed {
    proxies: Vec<RunningProxy>,
    _redirect: Option<Redirect>,
    dialer: Dialer,
}

fn deploy(
    cfg: &CompareConfig,
    topo: &Topology,
    app: SocketAddr,
    target: &TargetSpec,
    scenario: Scenario,
    repeat: usize,
) -> Result<Deployed> {
    let mut proxies = Vec::new();
    let run_dir = cfg.out.join("runs").join(format!(
        "{}-{}-{}",
        target.name,
        scenario.name(),
        repeat + 1
    ));
    // The server node first, so the client node's proxy finds it ready.
    for (node, spec) in [
        (topo.server(), &target.server),
        (topo.client(), &target.client),
    ] {
        let Some(spec) = spec else { continue };
        let dir = run_dir.join(node.role);
        let perf_data = (cfg.perf_record.as_deref() == Some(target.name.as_str()))
            .then(|| dir.join("perf.data"));
        let mut ctx = RenderContext {
            node: node.clone(),
            client_ip: topo.client().ip.to_string(),
            server_ip: topo.server().ip.to_string(),
            app_port: app.port(),
            dir,
            zpath_bin: cfg.zpath_bin.clone(),
            ztunnel_bin: cfg.ztunnel_bin.clone(),
            zpath_perf_bin: cfg.self_exe.clone(),
            ports: Default::default(),
            files: Default::default(),
        };
        let opts = LaunchOptions {
            mode: topo.mode(),
            perf_data,
        };
        proxies.push(launch(&target.name, spec, &mut ctx, &opts)?);
    }
    let client_proxy = target.client.as_ref().and(proxies.last());
    let mut redirect = None;
    let mut dialer = Dialer::direct(app);
    match (topo, client_proxy) {
        (Topology::Netns(pair), Some(p)) => {
            let port = p.outbound_port.ok_or_else(|| Error::Target {
                target: target.name.clone(),
                reason: "client.outbound_port is needed in netns mode".into(),
            })?;
            redirect = Some(pair.redirect_outbound(port, p.mark)?);
        }
        (Topology::Loopback { .. }, Some(p)) => {
            let socks = p.socks5.ok_or_else(|| Error::Target {
                target: target.name.clone(),
                reason: "client.socks5 is needed in loopback mode".into(),
            })?;
            dialer = Dialer::socks5(app, socks);
        }
        (_, None) => {}
    }
    Ok(Deployed {
        proxies,
        _redirect: redirect,
        dialer,
    })
}

fn run_sample(
    cfg: &CompareConfig,
    topo: &Topology,
    app: SocketAddr,
    target: &TargetSpec,
    scenario: Scenario,
    repeat: usize,
) -> Result<Sample> {
    let mut sample = Sample::new(&target.name, scenario, repeat);
    let deployed = match deploy(cfg, topo, app, target, scenario, repeat) {
        Ok(d) => d,
        // A usage error (e.g. unknown zpath binary) will not get better on the next sample.
        Err(e @ (Error::Usage(_) | Error::Interrupted)) => return Err(e),
        Err(e) => {
            sample.error = Some(format!("starting the target: {e}"));
            return Ok(sample);
        }
    };
    let dialer = deployed.dialer;
    if let Err(e) = check_path(topo.client(), &dialer) {
        sample.error = Some(e.to_string());
        return Ok(sample);
    }
    let roots: Vec<u32> = deployed.proxies.iter().map(|p| p.pid).collect();
    let outcome = topo
        .client()
        .run(|| measure(cfg, scenario, &dialer, roots.clone()));
    for p in &deployed.proxies {
        match p.counters("istio_tcp_") {
            Ok(c) => {
                for (k, v) in &c {
                    *sample.proxy_counters.entry(k.clone()).or_insert(0.0) += v;
                }
                sample
                    .proxy_counters_by_node
                    .insert(p.node.role.to_string(), c);
            }
            Err(e) => eprintln!("zpath-perf: {}: reading metrics: {e}", p.name),
        }
    }
    for p in deployed.proxies {
        let _ = p.stop();
    }
    match outcome {
        Ok(m) => fill(&mut sample, scenario, m),
        Err(e) => sample.error = Some(e.to_string()),
    }
    Ok(sample)
}

/// What a measured scenario produced.
struct Measured {
    /// The load result.
    result: LoadResult,
    /// The proxies' CPU and memory.
    usage: ProcUsage,
    /// For `idle`, the proxies' RSS (KiB) before opening and while holding the
    /// connections.
    idle_rss: Option<(u64, u64)>,
    /// The proxies' system calls, or why they could not be counted; `None` without
    /// proxies.
    syscalls: Option<Result<SyscallCounts, String>>,
}

/// Runs the scenario with the sampler around it; for `idle`, also the RSS reading taken
/// while the connections are held.
fn measure(
    cfg: &CompareConfig,
    scenario: Scenario,
    dialer: &Dialer,
    roots: Vec<u32>,
) -> Result<Measured> {
    let l = &cfg.load;
    let counter = (!roots.is_empty()).then(|| SyscallCounter::start(&roots));
    let sampler = Sampler::start(roots, Duration::from_millis(100));
    let mut idle_rss = None;
    let result = match scenario {
        Scenario::Bulk => run_bulk(
            dialer,
            &BulkParams {
                flows: l.bulk_flows,
                duration: cfg.duration,
                ..BulkParams::default()
            },
        ),
        Scenario::Rr => run_rr(
            dialer,
            &RrParams {
                connections: l.rr_connections,
                request_size: l.request_size,
                response_size: l.response_size,
                duration: cfg.duration,
                rate: l.rr_rate,
                max_requests_per_conn: None,
            },
        ),
        Scenario::Crr => run_crr(
            dialer,
            &CrrParams {
                concurrency: l.crr_concurrency,
                request_size: l.request_size,
                response_size: l.response_size,
                duration: cfg.duration,
                max_conns_per_client: None,
            },
        ),
        Scenario::Idle => {
            let before = sampler.read_now().rss_kib;
            let held = open_idle(
                dialer,
                &IdleParams {
                    connections: l.idle_connections,
                    openers: 4,
                },
            );
            held.map(|held| {
                std::thread::sleep(cfg.duration);
                // Read while the connections are still held, after the proxies settled.
                idle_rss = Some((before, sampler.read_now().rss_kib));
                held.result.clone()
            })
        }
    };
    let syscalls = counter.map(|c| c.and_then(SyscallCounter::finish));
    let usage = sampler.finish();
    Ok(Measured {
        result: result?,
        usage,
        idle_rss,
        syscalls,
    })
}

fn fill(s: &mut Sample, scenario: Scenario, m: Measured) {
    let Measured {
        result: r,
        usage,
        idle_rss,
        syscalls,
    } = m;
    s.elapsed_s = r.elapsed.as_secs_f64();
    s.bytes_sent = r.bytes_sent;
    s.bytes_received = r.bytes_received;
    s.requests = r.requests;
    s.connections = r.connections;
    s.errors = r.errors;
    s.latency = r.latency.as_ref().map(LatencySummary::of);
    s.value = match scenario {
        Scenario::Bulk => r.gbit_per_sec(),
        Scenario::Rr => r.per_sec(r.requests),
        Scenario::Crr => r.per_sec(r.connections),
        Scenario::Idle => r.connections as f64,
    };
    let has_proxy = !usage.readings.is_empty();
    if has_proxy {
        // Per GB for bulk (the sink confirmed every byte); per request where requests
        // dominate the cost.
        if scenario == Scenario::Bulk && r.bytes_received > 0 {
            s.cpu_s_per_gb = Some(usage.cpu_s / (r.bytes_received as f64 / 1e9));
        }
        if r.requests > 0 && matches!(scenario, Scenario::Rr | Scenario::Crr) {
            s.cpu_ms_per_1k_req = Some(usage.cpu_s * 1000.0 / (r.requests as f64 / 1000.0));
        }
        if let (Some((before, during)), true) = (idle_rss, r.connections > 0) {
            s.rss_kib_per_conn = Some(during.saturating_sub(before) as f64 / r.connections as f64);
        }
    }
    match syscalls {
        Some(Ok(c)) => {
            if r.requests > 0 && matches!(scenario, Scenario::Rr | Scenario::Crr) {
                let per_req = |n: u64| n as f64 / r.requests as f64;
                s.syscalls_per_req = Some(per_req(c.total));
                s.io_uring_enter_per_req = c.io_uring_enter.map(per_req);
            }
            s.proxy_syscalls = Some(c);
        }
        Some(Err(why)) => s.syscalls_unavailable = Some(why),
        None => {}
    }
    s.proxy = usage;
    if s.value <= 0.0 {
        s.error = Some(
            r.first_error
                .clone()
                .unwrap_or_else(|| "no load completed".into()),
        );
    }
}

/// Whether the process may build namespaces (root), to pick the default topology.
pub fn can_use_netns() -> bool {
    sys::is_root()
}
