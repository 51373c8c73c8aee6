//! Targets as data: how to start a proxy on each node, read from TOML.
//!
//! Strings in a target file may use placeholders, written `${...}` so that YAML and
//! JSON braces in config templates need no escaping:
//!
//! | placeholder | value |
//! |---|---|
//! | `${node_ip}` | this node's address |
//! | `${client_ip}`, `${server_ip}` | the two nodes' addresses |
//! | `${app_port}` | the load server's port on the server node |
//! | `${node_name}` | `client-node` or `server-node` |
//! | `${node_cpus}` | this node's share of the harness's CPUs, comma-separated: the client node the first half, the server node the rest (both the same CPU on a one-CPU machine) |
//! | `${dir}` | a fresh directory for this proxy run (state, certificates) |
//! | `${file:NAME}` | the path of the rendered `[[NODE.files]]` entry NAME |
//! | `${port:NAME}` | port NAME from `[NODE.ports]` in netns mode; a free port in loopback mode |
//! | `${zpath_bin}` | the zpath binary (`--zpath-bin` or `ZPATH_BIN`, else the `zpath` beside `zpath-perf`), absolute |
//! | `${ztunnel_bin}` | the ztunnel binary (`ZTUNNEL_BIN`, else `../shared/ztunnel/ztunnel`), absolute |
//! | `${zpath_perf_bin}` | this harness's own binary (for the built-in `relay`) |
//! | `${env:VAR}` | the harness's environment variable VAR |

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cleanup::{self, Registration, Resource};
use crate::topology::Node;
use crate::{sys, Error, Result};

/// A proxy (or none) to measure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    /// Name used in `--targets`, reports and charts.
    pub name: String,
    /// One line for the report.
    #[serde(default)]
    pub description: String,
    /// Topologies the target can run in: `netns`, `loopback` (default: both).
    #[serde(default = "all_modes")]
    pub modes: Vec<String>,
    /// Set when the target may not work yet, with the reason (shown in the report).
    #[serde(default)]
    pub experimental: Option<String>,
    /// The proxy on the client node, if any.
    #[serde(default)]
    pub client: Option<NodeSpec>,
    /// The proxy on the server node, if any.
    #[serde(default)]
    pub server: Option<NodeSpec>,
}

fn all_modes() -> Vec<String> {
    vec!["netns".into(), "loopback".into()]
}

/// How to start a proxy on one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// The program.
    pub command: String,
    /// Arguments in every mode.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra arguments in netns mode.
    #[serde(default)]
    pub netns_args: Vec<String>,
    /// Extra arguments in loopback mode.
    #[serde(default)]
    pub loopback_args: Vec<String>,
    /// Environment variables (added to the harness's environment).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Named ports for `${port:NAME}`, with their netns-mode numbers.
    #[serde(default)]
    pub ports: BTreeMap<String, u16>,
    /// Files rendered into the run directory before start.
    #[serde(default)]
    pub files: Vec<FileSpec>,
    /// HTTP URL (polled from inside the node) that answers 200 when ready.
    #[serde(default)]
    pub ready_url: Option<String>,
    /// Prometheus text endpoint (polled from inside the node) read after each sample;
    /// the `istio_tcp_*` counters land in the report.
    #[serde(default)]
    pub metrics_url: Option<String>,
    /// Seconds to wait for readiness (default 20).
    #[serde(default = "default_ready_timeout")]
    pub ready_timeout_secs: u64,
    /// The SO_MARK on the proxy's own upstream sockets, excluded from capture (0: none).
    #[serde(default)]
    pub mark: u32,
    /// Client node, netns mode: the port captured outbound traffic is redirected to.
    #[serde(default)]
    pub outbound_port: Option<String>,
    /// Client node, loopback mode: the SOCKS5 entry address (`127.0.0.1:${port:socks5}`).
    #[serde(default)]
    pub socks5: Option<String>,
}

fn default_ready_timeout() -> u64 {
    20
}

/// A file rendered from a template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// File name inside the run directory.
    pub name: String,
    /// Template text.
    pub content: String,
}

const BUILTIN_ZPATH: &str = include_str!("../targets/zpath.toml");
const BUILTIN_ZPATH_HBONE: &str = include_str!("../targets/zpath-hbone.toml");
const BUILTIN_RELAY: &str = include_str!("../targets/relay.toml");
const BUILTIN_ZTUNNEL: &str = include_str!("../targets/ztunnel.example.toml");

/// Names of the built-in targets.
pub const BUILTIN: [&str; 5] = ["direct", "zpath", "zpath-hbone", "relay", "ztunnel"];

impl TargetSpec {
    /// The `direct` target: no proxy.
    pub fn direct() -> TargetSpec {
        TargetSpec {
            name: "direct".into(),
            description: "no proxy: the client connects straight to the server".into(),
            modes: all_modes(),
            experimental: None,
            client: None,
            server: None,
        }
    }

    /// Parses a target file's text.
    pub fn parse(text: &str, origin: &str) -> Result<TargetSpec> {
        let spec: TargetSpec = toml::from_str(text).map_err(|e| Error::Target {
            target: origin.into(),
            reason: e.to_string(),
        })?;
        spec.validate()?;
        Ok(spec)
    }

    /// Resolves a `--targets` entry: a built-in name or a path to a TOML file.
    pub fn resolve(name_or_path: &str) -> Result<TargetSpec> {
        match name_or_path {
            "direct" => Ok(TargetSpec::direct()),
            "zpath" => TargetSpec::parse(BUILTIN_ZPATH, "built-in zpath"),
            "zpath-hbone" => TargetSpec::parse(BUILTIN_ZPATH_HBONE, "built-in zpath-hbone"),
            "relay" => TargetSpec::parse(BUILTIN_RELAY, "built-in relay"),
            "ztunnel" => TargetSpec::parse(BUILTIN_ZTUNNEL, "built-in ztunnel"),
            path => {
                let text = fs::read_to_string(path).map_err(|e| Error::Target {
                    target: path.into(),
                    reason: format!(
                        "not a built-in target ({}) and not a readable file: {e}",
                        BUILTIN.join(", ")
                    ),
                })?;
                TargetSpec::parse(&text, path)
            }
        }
    }

    /// Checks names, modes and that the client node says how traffic enters it.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| Error::Target {
            target: self.name.clone(),
            reason,
        };
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(bad(
                "name must be non-empty ASCII letters, digits, - _ .".into()
            ));
        }
        if let Some(m) = self
            .modes
            .iter()
            .find(|m| *m != "netns" && *m != "loopback")
        {
            return Err(bad(format!("unknown mode {m:?} (netns, loopback)")));
        }
        if let Some(c) = &self.client {
            if self.supports("netns") && c.outbound_port.is_none() {
                return Err(bad("client.outbound_port is needed in netns mode".into()));
            }
            if self.supports("loopback") && c.socks5.is_none() {
                return Err(bad("client.socks5 is needed in loopback mode".into()));
            }
        }
        Ok(())
    }

    /// Whether the target can run in `mode`.
    pub fn supports(&self, mode: &str) -> bool {
        self.modes.iter().any(|m| m == mode)
    }

    /// Whether any node's command, arguments or environment names `placeholder` (e.g.
    /// `${ztunnel_bin}`), so a missing binary is reported before anything starts.
    pub fn uses(&self, placeholder: &str) -> bool {
        [&self.client, &self.server].into_iter().flatten().any(|n| {
            std::iter::once(&n.command)
                .chain(&n.args)
                .chain(&n.netns_args)
                .chain(&n.loopback_args)
                .chain(n.env.values())
                .any(|s| s.contains(placeholder))
        })
    }
}

/// Values for placeholders.
#[derive(Debug, Clone)]
pub struct RenderContext {
    /// This node.
    pub node: Node,
    /// The client node's address.
    pub client_ip: String,
    /// The server node's address.
    pub server_ip: String,
    /// The load server's port.
    pub app_port: u16,
    /// The run directory.
    pub dir: PathBuf,
    /// The zpath binary, if known.
    pub zpath_bin: Option<PathBuf>,
    /// The ztunnel binary, if found.
    pub ztunnel_bin: Option<PathBuf>,
    /// The zpath-perf binary.
    pub zpath_perf_bin: PathBuf,
    /// Resolved `${port:NAME}` values.
    pub ports: BTreeMap<String, u16>,
    /// Rendered files by name.
    pub files: BTreeMap<String, PathBuf>,
}

impl RenderContext {
    /// Replaces every `${...}` placeholder in `template`.
    pub fn render(&self, template: &str) -> Result<String> {
        let mut out = String::with_capacity(template.len());
        let mut rest = template;
        while let Some(i) = rest.find("${") {
            out.push_str(&rest[..i]);
            let after = &rest[i + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| self.unknown(template, "unclosed ${"))?;
            out.push_str(&self.value(&after[..end], template)?);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    fn value(&self, key: &str, template: &str) -> Result<String> {
        let v = match key.split_once(':') {
            Some(("port", name)) => self.ports.get(name).map(u16::to_string),
            Some(("file", name)) => self.files.get(name).map(|p| p.display().to_string()),
            Some(("env", var)) => std::env::var(var).ok(),
            _ => match key {
                "node_ip" => Some(self.node.ip.to_string()),
                "client_ip" => Some(self.client_ip.clone()),
                "server_ip" => Some(self.server_ip.clone()),
                "app_port" => Some(self.app_port.to_string()),
                "node_name" => Some(format!("{}-node", self.node.role)),
                "node_cpus" => Some(node_cpus(self.node.role, &crate::sys::cpus())),
                "dir" => Some(self.dir.display().to_string()),
                "zpath_perf_bin" => Some(self.zpath_perf_bin.display().to_string()),
                "zpath_bin" => {
                    let bin = self.zpath_bin.as_ref().ok_or_else(|| Error::Usage(
                        "the zpath binary is not known: build it with `cargo build --release -p zpath-engine` and pass --zpath-bin PATH or set ZPATH_BIN".into(),
                    ))?;
                    Some(bin.display().to_string())
                }
                "ztunnel_bin" => {
                    let bin = self.ztunnel_bin.as_ref().ok_or_else(|| Error::Usage(
                        "the ztunnel binary is not known: set ZTUNNEL_BIN to a ztunnel built with `--features testing`, or put it at ../shared/ztunnel/ztunnel beside the repository".into(),
                    ))?;
                    Some(bin.display().to_string())
                }
                _ => None,
            },
        };
        v.ok_or_else(|| self.unknown(template, &format!("unknown placeholder ${{{key}}}")))
    }

    fn unknown(&self, template: &str, what: &str) -> Error {
        Error::Usage(format!("{what} in {template:?}"))
    }
}

/// The CPUs of `role`'s node out of `cpus`, for `--cores`: two nodes on one machine each
/// get CPUs of their own, as two machines would, so neither node's shard queues behind
/// the other's on a shared CPU.
fn node_cpus(role: &str, cpus: &[usize]) -> String {
    let half = (cpus.len() / 2).max(1);
    let mine = match role {
        "client" => &cpus[..half.min(cpus.len())],
        _ if cpus.len() > 1 => &cpus[half..],
        _ => cpus,
    };
    let list: Vec<String> = mine.iter().map(usize::to_string).collect();
    list.join(",")
}

/// Picks a free loopback port (bound and released; another process could take it, which
/// then shows as a proxy start failure).
fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| Error::io("picking a free port", e))?;
    Ok(l.local_addr()
        .map_err(|e| Error::io("picking a free port", e))?
        .port())
}

/// A running proxy; dropping it stops it (SIGTERM, then SIGKILL).
#[derive(Debug)]
pub struct RunningProxy {
    /// `target/node`.
    pub name: String,
    child: Child,
    /// The proxy's own pid (the child, or the child's child under `perf record`).
    pub pid: u32,
    /// Its log (stdout and stderr).
    pub log: PathBuf,
    /// Where captured traffic goes (client node, netns mode).
    pub outbound_port: Option<u16>,
    /// Its SOCKS5 entry (client node, loopback mode).
    pub socks5: Option<SocketAddr>,
    /// Its upstream mark.
    pub mark: u32,
    /// Its rendered metrics URL.
    pub metrics_url: Option<String>,
    /// The node it runs on.
    pub node: Node,
    _reg: Registration,
    _proxy_reg: Option<Registration>,
}

/// Options for [`launch`].
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    /// `netns` or `loopback`.
    pub mode: &'static str,
    /// Wrap the proxy in `perf record`, writing this file.
    pub perf_data: Option<PathBuf>,
}

/// Renders a node's files and arguments and starts its proxy, then waits until ready.
pub fn launch(
    target: &str,
    spec: &NodeSpec,
    ctx: &mut RenderContext,
    opts: &LaunchOptions,
) -> Result<RunningProxy> {
    prepare_run_dir(spec, ctx, opts.mode)?;
    let parse_err = |what: &str, s: &str| Error::Target {
        target: target.into(),
        reason: format!("{what} {s:?} does not render to a valid value"),
    };
    let render_opt = |t: &Option<String>| t.as_deref().map(|t| ctx.render(t)).transpose();
    let outbound_port = match render_opt(&spec.outbound_port)? {
        Some(s) => Some(s.parse().map_err(|_| parse_err("outbound_port", &s))?),
        None => None,
    };
    let socks5 = match render_opt(&spec.socks5)? {
        Some(s) => Some(s.parse().map_err(|_| parse_err("socks5", &s))?),
        None => None,
    };
    let metrics_url = render_opt(&spec.metrics_url)?;
    let (mut cmd, command_line) = build_command(spec, ctx, opts)?;
    let log = ctx.dir.join("proxy.log");
    let out =
        fs::File::create(&log).map_err(|e| Error::io(format!("creating {}", log.display()), e))?;
    let err = out
        .try_clone()
        .map_err(|e| Error::io("duplicating the log file", e))?;
    cmd.current_dir(&ctx.dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    ctx.node.prepare(&mut cmd)?;
    let (child, reg) = cleanup::create(|| {
        let child = cmd.spawn().map_err(|e| Error::Command {
            command: command_line,
            reason: format!("{e}: is the command path right?"),
        })?;
        let pid = child.id();
        Ok((child, Resource::Process(pid)))
    })?;
    let pid = child.id();
    let mut proxy = RunningProxy {
        name: format!("{target}/{}", ctx.node.role),
        child,
        pid,
        log,
        outbound_port,
        socks5,
        mark: spec.mark,
        metrics_url,
        node: ctx.node.clone(),
        _reg: reg,
        _proxy_reg: None,
    };
    if opts.perf_data.is_some() {
        // The proxy is perf's child: signal and sample it, and kill it too on Ctrl-C.
        if let Some(inner) = wait_for_child_pid(pid) {
            let ((), r) = cleanup::create(|| Ok(((), Resource::Process(inner))))?;
            proxy.pid = inner;
            proxy._proxy_reg = Some(r);
        }
    }
    proxy.wait_ready(spec, ctx)?;
    Ok(proxy)
}

/// Creates the run directory, resolves `${port:NAME}` and renders the files.
fn prepare_run_dir(spec: &NodeSpec, ctx: &mut RenderContext, mode: &str) -> Result<()> {
    fs::create_dir_all(&ctx.dir)
        .map_err(|e| Error::io(format!("creating {}", ctx.dir.display()), e))?;
    for (name, port) in &spec.ports {
        let p = if mode == "loopback" {
            free_port()?
        } else {
            *port
        };
        ctx.ports.insert(name.clone(), p);
    }
    // Register every path first, so files may name each other.
    for f in &spec.files {
        ctx.files.insert(f.name.clone(), ctx.dir.join(&f.name));
    }
    for f in &spec.files {
        let text = ctx.render(&f.content)?;
        let path = ctx.dir.join(&f.name);
        fs::write(&path, text).map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    }
    Ok(())
}

/// The command (wrapped in `perf record` when asked) and its printable form.
fn build_command(
    spec: &NodeSpec,
    ctx: &RenderContext,
    opts: &LaunchOptions,
) -> Result<(Command, String)> {
    let extra = if opts.mode == "loopback" {
        &spec.loopback_args
    } else {
        &spec.netns_args
    };
    let args = spec
        .args
        .iter()
        .chain(extra)
        .map(|a| ctx.render(a))
        .collect::<Result<Vec<_>>>()?;
    let program = ctx.render(&spec.command)?;
    let mut cmd = match &opts.perf_data {
        Some(data) => {
            let mut c = Command::new("perf");
            c.args(["record", "-e", "cpu-clock", "-g", "-o"])
                .arg(data)
                .arg("--")
                .arg(&program);
            c
        }
        None => Command::new(&program),
    };
    cmd.args(&args);
    for (k, v) in &spec.env {
        cmd.env(k, ctx.render(v)?);
    }
    Ok((cmd, format!("{program} {}", args.join(" "))))
}

/// Under `perf record`, the proxy is perf's child: find it.
fn wait_for_child_pid(parent: u32) -> Option<u32> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let children = fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")).ok()?;
        if let Some(pid) = children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
        {
            return Some(pid);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

impl RunningProxy {
    fn wait_ready(&mut self, spec: &NodeSpec, ctx: &RenderContext) -> Result<()> {
        let secs = spec.ready_timeout_secs;
        let url = match &spec.ready_url {
            Some(u) => ctx.render(u)?,
            None => String::new(),
        };
        let not_ready = |reason: String, log: &Path| Error::NotReady {
            name: self.name.clone(),
            secs,
            url: url.clone(),
            reason,
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut last;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(not_ready(
                    format!("the process exited ({status})"),
                    &self.log,
                ));
            }
            if url.is_empty() {
                // No readiness URL: give the process a moment and trust it.
                std::thread::sleep(Duration::from_millis(300));
                return match self.child.try_wait() {
                    Ok(Some(status)) => Err(not_ready(
                        format!("the process exited ({status})"),
                        &self.log,
                    )),
                    _ => Ok(()),
                };
            }
            let u = url.clone();
            match ctx.node.run(move || http_status(&u)) {
                Ok(200) => return Ok(()),
                Ok(code) => last = format!("HTTP {code}"),
                Err(e) => last = e.to_string(),
            }
            if Instant::now() >= deadline {
                return Err(not_ready(last, &self.log));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Reads the proxy's Prometheus counters whose names start with `prefix`, summed over
    /// label sets; empty when it has no metrics URL.
    pub fn counters(&self, prefix: &str) -> Result<BTreeMap<String, f64>> {
        let Some(url) = self.metrics_url.clone() else {
            return Ok(BTreeMap::new());
        };
        let (code, body) = self.node.run(move || http_get(&url))?;
        if code != 200 {
            return Err(Error::Protocol(format!("metrics answered HTTP {code}")));
        }
        Ok(parse_counters(&body, prefix))
    }

    /// Stops the proxy: SIGTERM to the proxy, up to 10 s to exit, then SIGKILL. Returns
    /// whether it exited by itself after SIGTERM.
    pub fn stop(mut self) -> bool {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> bool {
        sys::kill(self.pid, sys::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "zpath-perf: {} did not exit within 10 s of SIGTERM; killing it (log: {})",
            self.name,
            self.log.display()
        );
        sys::kill(self.pid, sys::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop_inner();
        }
    }
}

/// Sums Prometheus text samples by metric name, for names starting with `prefix`.
pub fn parse_counters(text: &str, prefix: &str) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || !line.starts_with(prefix) {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let value = line
            .rsplit_once('}')
            .map_or(line[name_end..].trim(), |(_, v)| v.trim())
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok());
        if let Some(v) = value {
            *m.entry(line[..name_end].to_string()).or_insert(0.0) += v;
        }
    }
    m
}

/// GET `url` (`http://IP:PORT/PATH`) and return the status code.
pub fn http_status(url: &str) -> Result<u16> {
    http_request(url, false).map(|(code, _)| code)
}

/// GET `url` and return the status code and the body.
pub fn http_get(url: &str) -> Result<(u16, String)> {
    http_request(url, true)
}

fn http_request(url: &str, body: bool) -> Result<(u16, String)> {
    let bad = || Error::Usage(format!("readiness URL {url:?} is not http://IP:PORT/PATH"));
    let rest = url.strip_prefix("http://").ok_or_else(bad)?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr: SocketAddr = hostport.parse().map_err(|_| bad())?;
    let io = |e| Error::io(format!("GET {url}"), e);
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map_err(io)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(io)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n"
    )
    .map_err(io)?;
    let mut raw = Vec::new();
    if body {
        s.read_to_end(&mut raw).map_err(io)?;
    } else {
        raw.resize(12, 0);
        s.read_exact(&mut raw).map_err(io)?;
    }
    let text = String::from_utf8_lossy(&raw);
    let code = text
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| Error::Protocol(format!("not an HTTP answer from {url}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn ctx() -> RenderContext {
        RenderContext {
            node: Node {
                role: "client",
                netns: None,
                ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            },
            client_ip: "10.0.0.1".into(),
            server_ip: "10.0.0.2".into(),
            app_port: 5201,
            dir: PathBuf::from("/tmp/x"),
            zpath_bin: None,
            ztunnel_bin: None,
            zpath_perf_bin: PathBuf::from("/bin/zpath-perf"),
            ports: BTreeMap::from([("outbound".to_string(), 15001)]),
            files: BTreeMap::from([("a.yaml".to_string(), PathBuf::from("/tmp/x/a.yaml"))]),
        }
    }

    #[test]
    fn placeholders_render_and_yaml_braces_pass_through() {
        let c = ctx();
        let out = c
            .render("${node_name} ${node_ip}:${port:outbound} -> ${server_ip}:${app_port} ${file:a.yaml} {80: 8080}")
            .unwrap();
        assert_eq!(
            out,
            "client-node 10.0.0.1:15001 -> 10.0.0.2:5201 /tmp/x/a.yaml {80: 8080}"
        );
    }

    #[test]
    fn nodes_get_cpus_of_their_own() {
        assert_eq!(node_cpus("client", &[0, 1]), "0");
        assert_eq!(node_cpus("server", &[0, 1]), "1");
        assert_eq!(node_cpus("client", &[2, 3, 5]), "2");
        assert_eq!(node_cpus("server", &[2, 3, 5]), "3,5");
        assert_eq!(node_cpus("client", &[4]), "4");
        assert_eq!(node_cpus("server", &[4]), "4");
        let rendered = ctx().render("${node_cpus}").unwrap();
        assert!(!rendered.is_empty(), "{rendered}");
    }

    #[test]
    fn unknown_or_unclosed_placeholder_is_an_error() {
        let c = ctx();
        assert!(c.render("${nope}").is_err());
        assert!(c.render("${port:missing}").is_err());
        assert!(c.render("${node_ip").is_err());
        let e = c.render("${zpath_bin}").unwrap_err().to_string();
        assert!(e.contains("ZPATH_BIN"), "{e}");
    }

    #[test]
    fn builtin_targets_parse_and_validate() {
        for name in BUILTIN {
            let t = TargetSpec::resolve(name).unwrap();
            assert_eq!(t.name, name);
        }
        assert!(TargetSpec::resolve("zpath-hbone")
            .unwrap()
            .experimental
            .is_none());
        assert!(!TargetSpec::resolve("zpath-hbone")
            .unwrap()
            .supports("loopback"));
    }

    /// ztunnel's `LocalConfig` (src/xds.rs), as far as the target uses it: unknown
    /// fields are refused as ztunnel refuses them, and what ztunnel needs in practice is
    /// required (`uid`, each workload's `services`).
    #[derive(Debug, serde::Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct ZtunnelLocalConfig {
        #[serde(default)]
        workloads: Vec<ZtunnelWorkload>,
        #[serde(default)]
        policies: Vec<serde_yaml::Value>,
        #[serde(default)]
        services: Vec<serde_yaml::Value>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct ZtunnelWorkload {
        uid: String,
        name: String,
        namespace: String,
        service_account: String,
        workload_ips: Vec<std::net::IpAddr>,
        protocol: String,
        node: String,
        services: BTreeMap<String, BTreeMap<u16, u16>>,
    }

    #[test]
    fn ztunnel_target_renders_a_local_config_ztunnel_accepts() {
        let t = TargetSpec::resolve("ztunnel").unwrap();
        assert!(!t.supports("loopback"));
        assert!(t.uses("${ztunnel_bin}"));
        let dir = tempfile::tempdir().unwrap();
        for (role, spec, ip) in [
            ("client", t.client.as_ref().unwrap(), "10.0.0.1"),
            ("server", t.server.as_ref().unwrap(), "10.0.0.2"),
        ] {
            let mut c = ctx();
            c.node.role = role;
            c.node.ip = ip.parse().unwrap();
            c.client_ip = "10.0.0.1".into();
            c.server_ip = "10.0.0.2".into();
            c.dir = dir.path().join(role);
            c.ztunnel_bin = Some(PathBuf::from("/opt/ztunnel"));
            c.files.clear();
            prepare_run_dir(spec, &mut c, "netns").unwrap();
            let env: BTreeMap<&str, String> = spec
                .env
                .iter()
                .map(|(k, v)| (k.as_str(), c.render(v).unwrap()))
                .collect();
            let yaml = fs::read_to_string(&env["LOCAL_XDS_PATH"]).unwrap();
            let cfg: ZtunnelLocalConfig = serde_yaml::from_str(&yaml).unwrap();
            assert!(cfg.policies.is_empty() && cfg.services.is_empty());
            assert_eq!(cfg.workloads.len(), 2);
            let mut uids: Vec<&str> = cfg.workloads.iter().map(|w| w.uid.as_str()).collect();
            uids.dedup();
            assert_eq!(uids.len(), 2, "workload uids must differ: {uids:?}");
            for w in &cfg.workloads {
                assert!(!w.uid.is_empty() && w.services.is_empty(), "{w:?}");
                assert_eq!(w.protocol, "HBONE");
            }
            // PROXY_WORKLOAD_INFO names the workload on this node, at this node's address.
            let mine = cfg
                .workloads
                .iter()
                .find(|w| w.node == env["NODE_NAME"])
                .unwrap();
            assert_eq!(
                env["PROXY_WORKLOAD_INFO"],
                format!("{}/{}/{}", mine.namespace, mine.name, mine.service_account)
            );
            assert_eq!(mine.workload_ips, vec![c.node.ip]);
            assert_eq!(env["FAKE_CA"], "true");
            assert_eq!(env["ZTUNNEL_WORKER_THREADS"], "1");
            let args: Vec<String> = spec.args.iter().map(|a| c.render(a).unwrap()).collect();
            assert_eq!(spec.command, "taskset");
            assert_eq!(args[0], "-c");
            assert_eq!(args[2], "/opt/ztunnel");
        }
    }

    #[test]
    fn ztunnel_target_without_a_binary_says_how_to_get_one() {
        let t = TargetSpec::resolve("ztunnel").unwrap();
        let spec = t.client.unwrap();
        let e = ctx().render(&spec.args[2]).unwrap_err().to_string();
        assert!(e.contains("ZTUNNEL_BIN"), "{e}");
    }

    #[test]
    fn target_without_capture_port_is_rejected() {
        let text = "name = \"x\"\n[client]\ncommand = \"true\"\nsocks5 = \"127.0.0.1:1\"\n";
        let e = TargetSpec::parse(text, "x").unwrap_err().to_string();
        assert!(e.contains("outbound_port"), "{e}");
    }

    #[test]
    fn unknown_field_is_rejected() {
        assert!(TargetSpec::parse("name = \"x\"\nbogus = 1\n", "x").is_err());
    }

    #[test]
    fn prometheus_counters_are_summed_over_labels() {
        let text = "# TYPE istio_tcp_sent_bytes_total counter\n\
                    istio_tcp_sent_bytes_total{a=\"x\",b=\"y z\"} 100\n\
                    istio_tcp_sent_bytes_total{a=\"w\"} 23 1700000000\n\
                    istio_tcp_connections_opened_total 4\n\
                    other_total 9\n";
        let m = parse_counters(text, "istio_tcp_");
        assert_eq!(m.get("istio_tcp_sent_bytes_total"), Some(&123.0));
        assert_eq!(m.get("istio_tcp_connections_opened_total"), Some(&4.0));
        assert!(!m.contains_key("other_total"));
    }

    #[test]
    fn proxy_started_from_a_thread_with_blocked_signals_still_obeys_sigterm() {
        // The binary blocks its stop signals in every thread; children must not inherit that.
        let dir = tempfile::tempdir().unwrap();
        let handle = std::thread::spawn(move || {
            sys::block_stop_signals();
            let spec = NodeSpec {
                command: "sleep".into(),
                args: vec!["30".into()],
                netns_args: vec![],
                loopback_args: vec![],
                env: BTreeMap::new(),
                ports: BTreeMap::new(),
                files: vec![],
                ready_url: None,
                metrics_url: None,
                ready_timeout_secs: 5,
                mark: 0,
                outbound_port: None,
                socks5: None,
            };
            let mut c = ctx();
            c.dir = dir.path().to_path_buf();
            let opts = LaunchOptions {
                mode: "loopback",
                perf_data: None,
            };
            let p = launch("t", &spec, &mut c, &opts).unwrap();
            p.stop()
        });
        assert!(
            handle.join().unwrap(),
            "SIGTERM was ignored: the signal mask leaked"
        );
    }

    #[test]
    fn http_status_reads_the_code() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut b = [0u8; 256];
            let _ = s.read(&mut b).unwrap();
            s.write_all(b"HTTP/1.1 503 Service Unavailable\r\n\r\n")
                .unwrap();
        });
        assert_eq!(
            http_status(&format!("http://{addr}/healthz/ready")).unwrap(),
            503
        );
    }
}
