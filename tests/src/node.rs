//! A `zpath` daemon run as a real process, with its ports, config file and scrapes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The `zpath` binary, built once per test process.
pub fn zpath_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("ZPATH_BIN") {
            return PathBuf::from(p);
        }
        escargot::CargoBuild::new()
            .package("zpath-engine")
            .bin("zpath")
            .current_release()
            .run()
            .expect("build the zpath binary")
            .path()
            .to_path_buf()
    })
    .clone()
}

/// How to start a node.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Local config YAML written to the node's config file.
    pub config: String,
    /// Number of shards.
    pub shards: usize,
    /// Extra flags.
    pub args: Vec<String>,
    /// Run inside this network namespace (`ip netns exec`).
    pub netns: Option<String>,
    /// Address to bind data-path listeners on (admin endpoints stay on 127.0.0.1).
    pub bind_ip: String,
    /// The node's name (`--node-name`).
    pub node_name: String,
    /// HBONE port; `None`: a free one (HBONE between nodes needs 15008).
    pub hbone_port: Option<u16>,
    /// State directory; `None`: one inside the node's temporary directory.
    pub state_dir: Option<PathBuf>,
    /// Pass `--config` (false when the configuration comes from xDS).
    pub config_file: bool,
    /// A command (and its arguments) that runs zpath, e.g. `setpriv` to drop
    /// capabilities; empty: zpath itself.
    pub wrapper: Vec<String>,
    /// Start the process with this open-file limit, soft and hard (`ulimit -n`).
    pub open_files: Option<u64>,
    /// Extra environment variables (e.g. ztunnel's, as the Istio chart sets them).
    pub env: Vec<(String, String)>,
}

impl Default for NodeOptions {
    fn default() -> Self {
        Self {
            config: String::new(),
            shards: 2,
            args: Vec::new(),
            netns: None,
            bind_ip: "127.0.0.1".into(),
            node_name: "node-a".into(),
            hbone_port: None,
            state_dir: None,
            config_file: true,
            wrapper: Vec::new(),
            open_files: None,
            env: Vec::new(),
        }
    }
}

/// A running `zpath` process; killed when dropped.
pub struct Node {
    child: Option<Child>,
    /// SOCKS5 entry.
    pub socks5: SocketAddr,
    /// Captured outbound listener.
    pub outbound: SocketAddr,
    /// Captured inbound listener.
    pub inbound: SocketAddr,
    /// Admin (config dump).
    pub admin: SocketAddr,
    /// Metrics.
    pub metrics: SocketAddr,
    /// Readiness.
    pub readiness: SocketAddr,
    /// HBONE.
    pub hbone: SocketAddr,
    /// The config file (rewrite it to trigger a reload).
    pub config_path: PathBuf,
    netns: Option<String>,
    dir: tempfile::TempDir,
}

impl Node {
    /// Starts a node and waits until it is ready. Ports are picked free and released
    /// before zpath binds them, so a parallel test can take one in between: a node
    /// that could not bind its ports is started again on other ones (three tries).
    pub fn start(opts: NodeOptions) -> Node {
        for _ in 0..2 {
            let mut node = Self::spawn(opts.clone());
            match node.wait_ready_or_exit() {
                Ok(()) => return node,
                Err(log) if log.contains("cannot listen") || log.contains("overlaps") => continue,
                Err(log) => panic!("zpath exited during start-up: {log}"),
            }
        }
        let mut node = Self::spawn(opts);
        node.wait_ready();
        node
    }

    /// Waits for readiness; `Err(log)` if the process exited first.
    fn wait_ready_or_exit(&mut self) -> Result<(), String> {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = self.get(self.readiness, "/healthz/ready") {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(format!("({status}) {}", self.stderr()));
            }
            assert!(Instant::now() < until, "zpath did not become ready");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts a node without waiting for readiness.
    pub fn spawn(opts: NodeOptions) -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("config.yaml");
        std::fs::write(&config_path, &opts.config).expect("write config");
        let ip = &opts.bind_ip;
        let addr = |port: u16| -> SocketAddr { format!("{ip}:{port}").parse().expect("address") };
        // Seven distinct ports, held together while picked.
        let p = crate::free_ports(7);
        let (socks5, outbound, inbound) = (addr(p[0]), addr(p[1]), addr(p[2]));
        let lo = |port: u16| -> SocketAddr { SocketAddr::from(([127, 0, 0, 1], port)) };
        let (admin, metrics, readiness) = (lo(p[3]), lo(p[4]), lo(p[5]));
        let hbone = addr(opts.hbone_port.unwrap_or(p[6]));
        let mut line: Vec<std::ffi::OsString> = Vec::new();
        if let Some(ns) = &opts.netns {
            line.extend(["ip", "netns", "exec", ns].map(Into::into));
        }
        line.extend(opts.wrapper.iter().map(Into::into));
        line.push(zpath_bin().into());
        let mut cmd = Command::new(&line[0]);
        cmd.args(&line[1..]);
        if opts.config_file {
            cmd.arg("--config").arg(&config_path);
        }
        cmd.args(["--shards", &opts.shards.to_string()])
            .args(["--socks5-addr", &socks5.to_string()])
            .args(["--outbound-addr", &outbound.to_string()])
            .args(["--inbound-addr", &inbound.to_string()])
            .args(["--hbone-addr", &hbone.to_string()])
            .args(["--admin-addr", &admin.to_string()])
            .args(["--metrics-addr", &metrics.to_string()])
            .args(["--readiness-addr", &readiness.to_string()])
            .arg("--state-dir")
            .arg(
                opts.state_dir
                    .clone()
                    .unwrap_or_else(|| dir.path().join("state")),
            )
            .args(["--node-name", &opts.node_name])
            .args(["--log", "info"])
            .args(&opts.args)
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("zpath.log")).expect("log file"));
        if let Some(n) = opts.open_files {
            use std::os::unix::process::CommandExt;
            let lim = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            // SAFETY: runs in the forked child before exec; setrlimit only reads `lim`,
            // which was copied into the child, and is async-signal-safe.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().expect("start zpath");
        let netns = opts.netns.clone();
        Node {
            child: Some(child),
            socks5,
            outbound,
            inbound,
            admin,
            metrics,
            readiness,
            hbone,
            config_path,
            netns,
            dir,
        }
    }

    /// The process id (of `ip netns exec`'s child when in a namespace: the same process).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("node process").id()
    }

    /// The process's resident memory, in bytes (`VmRSS`).
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read the node's /proc status");
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc status");
        kib * 1024
    }

    /// The node's temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Waits (up to 30 s) for `GET /healthz/ready` to answer 200.
    pub fn wait_ready(&mut self) {
        if let Err(log) = self.wait_ready_or_exit() {
            panic!("zpath exited during start-up {log}");
        }
    }

    /// The Prometheus text.
    pub fn metrics_text(&self) -> String {
        self.get(self.metrics, "/stats/prometheus")
            .expect("scrape metrics")
            .1
    }

    /// The samples of the metric `name`, parsed.
    pub fn samples(&self, name: &str) -> Vec<crate::prometheus::Sample> {
        let mut all = crate::prometheus::parse(&self.metrics_text());
        all.retain(|s| s.name == name);
        all
    }

    /// The sum of every sample whose name and labels start with `prefix`.
    pub fn metric(&self, prefix: &str) -> u64 {
        sum_metric(&self.metrics_text(), prefix)
    }

    /// Waits (up to 10 s) until no connection is open on any shard; panics otherwise.
    pub fn assert_no_open_connections(&self) {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let open = self.metric("zpath_open_connections");
            if open == 0 {
                return;
            }
            assert!(
                Instant::now() < until,
                "{open} connections still open:\n{}",
                self.metrics_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The config dump JSON.
    pub fn config_dump(&self) -> serde_json::Value {
        let (code, body) = self.get(self.admin, "/config_dump").expect("config dump");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("config dump is JSON")
    }

    /// GET from one of the node's endpoints (from inside its namespace, if it has one).
    pub fn get(&self, addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
        match &self.netns {
            None => http_get(addr, path),
            Some(ns) => {
                let ns = crate::netns::Netns::existing(ns);
                let path = path.to_string();
                ns.enter(move || http_get(addr, &path))
            }
        }
    }

    /// Sends a signal to the process.
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) with the pid of our own child process.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// Waits for the process to exit (up to `limit`) and returns its status.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let until = Instant::now() + limit;
        let child = self.child.as_mut().expect("node process");
        loop {
            if let Some(s) = child.try_wait().expect("wait for zpath") {
                return s;
            }
            assert!(
                Instant::now() < until,
                "zpath did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Everything the process wrote to stderr so far (its log).
    pub fn stderr(&mut self) -> String {
        std::fs::read_to_string(self.dir.path().join("zpath.log")).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Sums the samples of `text` whose `name{labels}` starts with `prefix`.
pub fn sum_metric(text: &str, prefix: &str) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#') && l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<u64>().ok()))
        .sum()
}

/// POSTs an empty body to `http://addr/path`: the status and the body.
pub fn http_post(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    http(addr, path, |agent, url| agent.post(url).send_empty())
}

/// GET `path` from `addr`; returns the status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    http(addr, path, |agent, url| agent.get(url).call())
}

/// One request to `http://addr/path`, made by `send`, within 5 s.
fn http(
    addr: SocketAddr,
    path: &str,
    send: impl FnOnce(&ureq::Agent, String) -> Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<(u16, String), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = send(&agent, format!("http://{addr}{path}")).map_err(|e| e.to_string())?;
    let code = resp.status().as_u16();
    let body = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| e.to_string())?;
    Ok((code, body))
}
