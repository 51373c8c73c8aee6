//! ztunnel's environment, honoured by the `zpath` binary under ztunnel's names and with
//! ztunnel's defaults, so that the Istio chart's DaemonSet runs zpath unchanged.
//!
//! Precedence, highest first: a flag, its `ZPATH_*` variable, ztunnel's variable,
//! ztunnel's default where zpath has taken it over, zpath's default. Values are parsed
//! as ztunnel parses them (a bare number of seconds is a duration, booleans are
//! `true`/`false`), and a value that does not parse stops the start, as in ztunnel. A
//! ztunnel setting zpath does not implement is reported once at start, never ignored
//! in silence.
//!
//! The configuration source follows ztunnel only when no zpath flag names one
//! (`--config`, `--xds-address`, `--no-control-plane`): then `LOCAL_XDS_PATH` is the
//! local config file, else `XDS_ADDRESS` (default: istiod in a cluster, localhost
//! outside one) with certificates from `CA_ADDRESS` (same default) unless a mesh root
//! is given (`--ca-cert`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::ArgMatches;

use crate::cli::{duration, Args, LogFormat};

/// ztunnel's name for each flag that has one, shown in `--help` beside our own.
pub(crate) const NAMES: &[(&str, &str)] = &[
    ("config", "LOCAL_XDS_PATH"),
    ("xds_address", "XDS_ADDRESS"),
    ("xds_root_cert", "XDS_ROOT_CA"),
    ("xds_server_name", "ALT_XDS_HOSTNAME"),
    ("ca_address", "CA_ADDRESS"),
    ("ca_root_cert", "CA_ROOT_CA"),
    ("ca_server_name", "ALT_CA_HOSTNAME"),
    ("ca_token_file", "AUTH_TOKEN"),
    ("cert_lifetime", "SECRET_TTL"),
    ("shards", "ZTUNNEL_WORKER_THREADS"),
    (
        "drain_deadline",
        "CONNECTION_TERMINATION_DEADLINE, else from TERMINATION_GRACE_PERIOD_SECONDS",
    ),
    ("packet_mark", "PACKET_MARK"),
    ("keepalive_time", "KEEPALIVE_TIME"),
    ("keepalive_interval", "KEEPALIVE_INTERVAL"),
    ("keepalive_retries", "KEEPALIVE_RETRIES"),
    ("pool_max_streams", "POOL_MAX_STREAMS_PER_CONNECTION"),
    ("pool_idle_timeout", "POOL_UNUSED_RELEASE_TIMEOUT"),
    ("h2_stream_window", "HTTP2_STREAM_WINDOW_SIZE"),
    ("h2_connection_window", "HTTP2_CONNECTION_WINDOW_SIZE"),
    ("h2_max_frame_size", "HTTP2_FRAME_SIZE"),
    ("log", "RUST_LOG"),
    ("log_format", "LOG_FORMAT"),
];

/// ztunnel settings zpath does not implement, with the value that matches what zpath
/// does anyway (`None`: any value is reported).
const NOT_IMPLEMENTED: &[(&str, Option<&str>, &str)] = &[
    ("PROXY_MODE", None, "in-pod mode (ZDS) is not implemented yet; zpath serves the workloads whose addresses are on this host"),
    ("PROXY_WORKLOAD_INFO", None, "dedicated mode is not implemented"),
    ("INPOD_UDS", None, "in-pod mode (ZDS) is not implemented yet"),
    ("INPOD_PORT_REUSE", None, "in-pod mode (ZDS) is not implemented yet"),
    ("NETWORK", Some(""), "multi-network meshes are not implemented yet; every address is on this node's network"),
    ("TRUST_DOMAIN", None, "zpath has no identity of its own; workload identities come from the configuration"),
    ("CLUSTER_DOMAIN", Some("cluster.local"), "zpath has no DNS proxy yet"),
    ("ISTIO_META_DNS_CAPTURE", Some("false"), "zpath has no DNS proxy yet"),
    ("LOCAL_XDS", None, "inline local configuration is not supported; write it to a file for LOCAL_XDS_PATH"),
    ("XDS_ON_DEMAND", Some("false"), "on-demand xDS is not implemented"),
    ("FAKE_CA", Some("false"), "there is no fake CA; the built-in CA is used when no CA address is given"),
    ("ENABLE_ORIG_SRC", None, "connections to local workloads are made from zpath's own address"),
    ("USER_TIMEOUT_ENABLED", Some("false"), "TCP_USER_TIMEOUT is not set"),
    ("PROXY_CONFIG", None, "ProxyConfig is not read; use the matching environment variables"),
    ("CRL_PATH", None, "certificate revocation lists are not checked"),
    ("ENABLE_PROXY", Some("true"), "the proxy always runs"),
    ("PREFERED_SERVICE_NAMESPACE", None, "zpath has no DNS proxy yet"),
    ("LOCALHOST_APP_TUNNEL", None, "application tunnels are not implemented"),
    ("ENABLE_RESPONSE_BAGGAGE", None, "response baggage is not sent, and request baggage labels a source unknown by address whatever its value"),
    ("IPV6_ENABLED", Some("true"), "zpath listens on [::] (dual stack) unless an address is given"),
    ("AUTHZ_POLICY_INFO_LOGGING", None, "policy decisions are counted; denials are logged, rate-limited"),
];

/// ztunnel's default xDS and CA address in a cluster.
pub(crate) const ISTIOD: &str = "https://istiod.istio-system.svc:15012";
/// ztunnel's default xDS and CA address outside a cluster.
const LOCAL_ISTIOD: &str = "https://localhost:15012";
/// ztunnel's default root certificate of istiod (the chart mounts it there).
const ROOT_CA: &str = "./var/run/secrets/istio/root-cert.pem";
/// ztunnel's default service account token (the chart mounts it there).
const TOKEN: &str = "./var/run/secrets/tokens/istio-token";

/// Reads ztunnel's environment (`vars`, the process's variables) into `args` wherever
/// neither a flag nor a `ZPATH_*` variable set the value (`matches` says which did).
/// Returns what to report once logging runs: settings zpath does not implement, and
/// values it set aside.
pub(crate) fn apply(
    args: &mut Args,
    matches: &ArgMatches,
    vars: &BTreeMap<String, String>,
) -> Result<Vec<String>, String> {
    let mut notices = Vec::new();
    let var = |name: &str| vars.get(name).cloned();
    let given = |id: &str| {
        matches!(
            matches.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
    };
    macro_rules! take {
        ($field:ident, $name:literal, $parse:expr) => {
            if !given(stringify!($field)) {
                if let Some(v) = var($name) {
                    args.$field = $parse(&v).map_err(|e| format!("{}={v:?}: {e}", $name))?;
                }
            }
        };
    }
    take!(packet_mark, "PACKET_MARK", number::<u32>);
    take!(keepalive_time, "KEEPALIVE_TIME", duration);
    take!(keepalive_interval, "KEEPALIVE_INTERVAL", duration);
    take!(keepalive_retries, "KEEPALIVE_RETRIES", number::<u32>);
    take!(
        pool_max_streams,
        "POOL_MAX_STREAMS_PER_CONNECTION",
        number::<u32>
    );
    take!(pool_idle_timeout, "POOL_UNUSED_RELEASE_TIMEOUT", duration);
    take!(h2_stream_window, "HTTP2_STREAM_WINDOW_SIZE", number::<u32>);
    take!(
        h2_connection_window,
        "HTTP2_CONNECTION_WINDOW_SIZE",
        number::<u32>
    );
    take!(h2_max_frame_size, "HTTP2_FRAME_SIZE", number::<u32>);
    take!(cert_lifetime, "SECRET_TTL", duration);
    take!(log, "RUST_LOG", |v: &str| Ok::<_, String>(v.to_string()));
    take!(log_format, "LOG_FORMAT", |v: &str| Ok::<_, String>(
        LogFormat::from_ztunnel(v)
    ));
    if let Some(v) = var("KEEPALIVE_ENABLED").filter(|_| !given("keepalive_time")) {
        if !boolean(&v).map_err(|e| format!("KEEPALIVE_ENABLED={v:?}: {e}"))? {
            args.keepalive_time = Duration::ZERO;
        }
    }
    if !given("cores") && !given("shards") {
        let allowed = zpath_engine::sys::allowed_cpus().len();
        if let Some(n) = shards(&var, allowed)? {
            if n > allowed {
                notices.push(format!(
                    "{n} worker threads asked for, {allowed} CPUs allowed: one shard per allowed CPU (--shards with --unpinned runs more)"
                ));
            }
            args.shards = Some(n.min(allowed));
        }
    }
    if !given("drain_deadline") {
        if let Some(d) = termination_deadline(&var)? {
            args.drain_deadline = d;
        }
    }
    sources(args, &given, &var, &mut notices)?;
    prefixed(args, vars, &mut notices)?;
    // ztunnel: ISTIO_META_CLUSTER_ID wins over CLUSTER_ID; the flag over both, in the
    // node metadata too.
    if matches.value_source("cluster_id") == Some(ValueSource::CommandLine) {
        args.node_metadata.remove("CLUSTER_ID");
    } else if let Some(id) = var("ISTIO_META_CLUSTER_ID") {
        args.cluster_id = id;
    }
    for (name, matching, why) in NOT_IMPLEMENTED {
        if let Some(v) = var(name) {
            if Some(v.as_str()) != *matching {
                notices.push(format!("{name}={v:?} is not honoured: {why}"));
            }
        }
    }
    Ok(notices)
}

/// The configuration source, its TLS roots and the token, as ztunnel picks them when no
/// zpath flag named a source.
fn sources(
    args: &mut Args,
    given: &dyn Fn(&str) -> bool,
    var: &dyn Fn(&str) -> Option<String>,
    notices: &mut Vec<String>,
) -> Result<(), String> {
    let ours = given("config") || given("xds_address") || given("no_control_plane");
    if ours {
        for name in ["LOCAL_XDS_PATH", "XDS_ADDRESS", "CA_ADDRESS"] {
            if let Some(v) = var(name) {
                notices.push(format!(
                    "{name}={v:?} is set aside: the configuration source is given by zpath's own flags"
                ));
            }
        }
    } else {
        ztunnel_source(args, given, var)?;
    }
    if !given("xds_root_cert") {
        args.xds_root_cert =
            root_file(var("XDS_ROOT_CA"), "XDS_ROOT_CA")?.or(args.xds_root_cert.take());
    }
    if !given("ca_root_cert") {
        args.ca_root_cert =
            root_file(var("CA_ROOT_CA"), "CA_ROOT_CA")?.or(args.ca_root_cert.take());
    }
    if !given("ca_token_file") {
        match var("AUTH_TOKEN") {
            Some(p) if Path::new(&p).is_file() => args.ca_token_file = Some(PathBuf::from(p)),
            Some(_) => return Err(
                "AUTH_TOKEN names no file: a token given inline is not supported, give its file"
                    .into(),
            ),
            None if Path::new(TOKEN).is_file() => args.ca_token_file = Some(PathBuf::from(TOKEN)),
            None => {}
        }
    }
    if !given("xds_server_name") {
        args.xds_server_name = var("ALT_XDS_HOSTNAME").or(args.xds_server_name.take());
    }
    if !given("ca_server_name") {
        args.ca_server_name = var("ALT_CA_HOSTNAME").or(args.ca_server_name.take());
    }
    Ok(())
}

/// The source as ztunnel picks it: `LOCAL_XDS_PATH`, else xDS at `XDS_ADDRESS` (or
/// ztunnel's default); certificates from `CA_ADDRESS` (with xDS: or ztunnel's default)
/// unless a mesh root is given. SOCKS5 stays off unless `UNSTABLE_ENABLE_SOCKS5=true`,
/// as in ztunnel: it lets any local process speak as a local workload.
fn ztunnel_source(
    args: &mut Args,
    given: &dyn Fn(&str) -> bool,
    var: &dyn Fn(&str) -> Option<String>,
) -> Result<(), String> {
    let default = match var("KUBERNETES_SERVICE_HOST") {
        Some(_) => ISTIOD,
        None => LOCAL_ISTIOD,
    };
    if let Some(path) = var("LOCAL_XDS_PATH").filter(|p| !p.is_empty()) {
        if var("XDS_ADDRESS").is_some_and(|a| !a.is_empty()) {
            return Err(
                "LOCAL_XDS_PATH and XDS_ADDRESS are both set: zpath takes its configuration \
                 from one source (a local file or istiod), it does not merge them"
                    .into(),
            );
        }
        args.config = Some(PathBuf::from(path));
    } else {
        match var("XDS_ADDRESS") {
            // ztunnel: an empty address means no xDS; with nothing else, that is no
            // configuration, which zpath refuses (--no-control-plane asks for it).
            Some(a) if a.is_empty() => {}
            Some(a) => args.xds_address = Some(with_scheme(&a)),
            None => args.xds_address = Some(default.to_string()),
        }
    }
    let local_root = given("ca_cert") || given("ca_key");
    if !given("ca_address") && !local_root {
        match var("CA_ADDRESS") {
            // ztunnel refuses to run without a CA; so does zpath when it takes its
            // workloads from istiod (a root of its own would be trusted by no peer).
            Some(a) if a.is_empty() && args.xds_address.is_some() => {
                return Err(
                    "CA_ADDRESS is empty: workloads from istiod need certificates from the \
                     Istio CA (or give the mesh root with --ca-cert and --ca-key)"
                        .into(),
                )
            }
            Some(a) if a.is_empty() => {}
            Some(a) => args.ca_address = Some(with_scheme(&a)),
            None if args.xds_address.is_some() => args.ca_address = Some(default.to_string()),
            None => {}
        }
    }
    if !given("socks5_addr") {
        let on = match var("UNSTABLE_ENABLE_SOCKS5") {
            Some(v) => boolean(&v).map_err(|e| format!("UNSTABLE_ENABLE_SOCKS5={v:?}: {e}"))?,
            None => false,
        };
        args.socks5_addr = Some(zpath_engine::EngineConfig::default_socks5_addr(!on));
    }
    Ok(())
}

/// Node metadata (`ISTIO_META_*`, `ISTIO_METAJSON_*`) and extra gRPC metadata
/// (`XDS_HEADER_*`, `CA_HEADER_*`), prefixes stripped.
fn prefixed(
    args: &mut Args,
    vars: &BTreeMap<String, String>,
    notices: &mut Vec<String>,
) -> Result<(), String> {
    for (name, value) in vars {
        if let Some(key) = name.strip_prefix("ISTIO_METAJSON_") {
            // As ztunnel: a value that is not JSON is reported and left out.
            match serde_json::from_str(value) {
                Ok(json) => {
                    args.node_json_metadata.insert(key.to_string(), json);
                }
                Err(e) => notices.push(format!(
                    "{name} is left out of the node metadata: not JSON ({e})"
                )),
            }
        } else if let Some(key) = name.strip_prefix("ISTIO_META_") {
            args.node_metadata.insert(key.to_string(), value.clone());
        } else if let Some(key) = name.strip_prefix("XDS_HEADER_") {
            args.xds_headers.push(header(name, key, value)?);
        } else if let Some(key) = name.strip_prefix("CA_HEADER_") {
            args.ca_headers.push(header(name, key, value)?);
        }
    }
    Ok(())
}

/// A gRPC metadata entry from the variable `name`: checked at start, as ztunnel does, so
/// a bad one stops the start instead of failing every request.
fn header(name: &str, key: &str, value: &str) -> Result<(String, String), String> {
    http::HeaderName::from_bytes(key.to_ascii_lowercase().as_bytes())
        .map_err(|_| format!("{name}: {key:?} is not a gRPC metadata key"))?;
    if !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(format!("{name}: the value is not printable ASCII"));
    }
    Ok((key.to_string(), value.to_string()))
}

/// A root certificate file from ztunnel's `XDS_ROOT_CA`/`CA_ROOT_CA` (default: the
/// chart's mount, when it exists). ztunnel also takes `SYSTEM` (the OS trust store) or
/// inline PEM; zpath takes a file only and says so.
fn root_file(value: Option<String>, name: &str) -> Result<Option<PathBuf>, String> {
    match value {
        Some(p) if Path::new(&p).is_file() => Ok(Some(PathBuf::from(p))),
        Some(p) => Err(format!(
            "{name}={p:?} names no file: zpath verifies istiod against a root certificate file (not SYSTEM or inline PEM)"
        )),
        None if Path::new(ROOT_CA).is_file() => Ok(Some(PathBuf::from(ROOT_CA))),
        None => Ok(None),
    }
}

/// ztunnel adds `https://` to an address without a scheme.
fn with_scheme(address: &str) -> String {
    if address.contains("://") {
        address.to_string()
    } else {
        format!("https://{address}")
    }
}

/// ztunnel's drain deadline: `CONNECTION_TERMINATION_DEADLINE`, else derived from
/// `TERMINATION_GRACE_PERIOD_SECONDS` (the pod's grace period, less 5 s past 10 s,
/// else less 1 s, at least 1 s), else none.
fn termination_deadline(var: &dyn Fn(&str) -> Option<String>) -> Result<Option<Duration>, String> {
    if let Some(v) = var("CONNECTION_TERMINATION_DEADLINE") {
        return duration(&v)
            .map(Some)
            .map_err(|e| format!("CONNECTION_TERMINATION_DEADLINE={v:?}: {e}"));
    }
    let Some(v) = var("TERMINATION_GRACE_PERIOD_SECONDS") else {
        return Ok(None);
    };
    let secs: u64 =
        number(&v).map_err(|e| format!("TERMINATION_GRACE_PERIOD_SECONDS={v:?}: {e}"))?;
    let less = if secs > 10 { 5 } else { 1 };
    Ok(Some(Duration::from_secs(secs.saturating_sub(less).max(1))))
}

/// The shard count ztunnel's variables ask for, if any: `ZTUNNEL_WORKER_THREADS` (of
/// `ZTUNNEL_CPU_LIMIT` CPUs when set, else of the `allowed` ones), else the pod's CPU
/// limit `ZTUNNEL_RESOURCE_CPU_LIMIT` (a Kubernetes quantity, rounded up). With neither,
/// zpath keeps one shard per allowed CPU.
fn shards(var: &dyn Fn(&str) -> Option<String>, allowed: usize) -> Result<Option<usize>, String> {
    let cpus = match var("ZTUNNEL_CPU_LIMIT") {
        Some(v) => number::<usize>(&v).map_err(|e| format!("ZTUNNEL_CPU_LIMIT={v:?}: {e}"))?,
        None => allowed,
    };
    if let Some(v) = var("ZTUNNEL_WORKER_THREADS") {
        return worker_threads(&v, cpus)
            .map(Some)
            .map_err(|e| format!("ZTUNNEL_WORKER_THREADS={v:?}: {e}"));
    }
    match var("ZTUNNEL_RESOURCE_CPU_LIMIT") {
        Some(v) => cpu_quantity(&v)
            .map(|n| Some(n.max(1)))
            .map_err(|e| format!("ZTUNNEL_RESOURCE_CPU_LIMIT={v:?}: {e}")),
        None => Ok(None),
    }
}

/// A Kubernetes CPU quantity (`2`, `1.5`, `500m`), rounded up to whole CPUs.
fn cpu_quantity(v: &str) -> Result<usize, String> {
    let millis: f64 = match v.strip_suffix('m') {
        Some(m) => m
            .parse()
            .map_err(|_| "not a CPU quantity like 2, 1.5 or 500m")?,
        None => {
            let cpus: f64 = v
                .parse()
                .map_err(|_| "not a CPU quantity like 2, 1.5 or 500m")?;
            cpus * 1000.0
        }
    };
    if !(millis.is_finite() && millis > 0.0 && millis < 1e9) {
        return Err("not a CPU quantity like 2, 1.5 or 500m".into());
    }
    Ok((millis / 1000.0).ceil() as usize)
}

/// `ZTUNNEL_WORKER_THREADS`: a count, `0` for every CPU, or a percentage of the CPUs
/// (rounded up), at least 1.
fn worker_threads(v: &str, cpus: usize) -> Result<usize, String> {
    if let Some(pct) = v.strip_suffix('%') {
        let pct: f64 = pct.parse().map_err(|_| "not a percentage like 50%")?;
        if !(pct > 0.0 && pct <= 100.0) {
            return Err("a percentage must be more than 0 and at most 100".into());
        }
        return Ok(((cpus as f64 * pct / 100.0).ceil() as usize).max(1));
    }
    match number::<usize>(v)? {
        0 => Ok(cpus.max(1)),
        n => Ok(n),
    }
}

/// A number, as Rust parses it.
fn number<T: std::str::FromStr>(v: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    v.parse().map_err(|e: T::Err| e.to_string())
}

/// ztunnel's booleans: exactly `true` or `false`.
fn boolean(v: &str) -> Result<bool, String> {
    match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("must be true or false".into()),
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, FromArgMatches};

    use super::*;

    /// Parses `flags` and applies the environment `vars` (nothing else is set).
    fn run(flags: &[&str], vars: &[(&str, &str)]) -> Result<(Args, Vec<String>), String> {
        let vars: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let cmd = Args::command();
        let m = cmd
            .try_get_matches_from(std::iter::once("zpath").chain(flags.iter().copied()))
            .map_err(|e| e.to_string())?;
        let mut args = Args::from_arg_matches(&m).map_err(|e| e.to_string())?;
        let notices = apply(&mut args, &m, &vars)?;
        Ok((args, notices))
    }

    #[test]
    fn with_nothing_set_zpath_dials_istiod_as_ztunnel_does() {
        let (a, _) = run(&[], &[("KUBERNETES_SERVICE_HOST", "10.96.0.1")]).unwrap();
        assert_eq!(a.xds_address.as_deref(), Some(ISTIOD));
        assert_eq!(a.ca_address.as_deref(), Some(ISTIOD));
        let (a, _) = run(&[], &[]).unwrap();
        assert_eq!(a.xds_address.as_deref(), Some(LOCAL_ISTIOD));
    }

    #[test]
    fn ztunnel_addresses_get_a_scheme_and_an_empty_one_means_none() {
        let (a, _) = run(
            &[],
            &[
                ("XDS_ADDRESS", "istiod.x:15012"),
                ("CA_ADDRESS", "ca.x:15012"),
            ],
        )
        .unwrap();
        assert_eq!(a.xds_address.as_deref(), Some("https://istiod.x:15012"));
        assert_eq!(a.ca_address.as_deref(), Some("https://ca.x:15012"));
        let (a, _) = run(&[], &[("XDS_ADDRESS", "")]).unwrap();
        assert_eq!((a.xds_address, a.ca_address), (None, None));
    }

    #[test]
    fn workloads_from_istiod_need_the_istio_ca() {
        let e = run(
            &[],
            &[("XDS_ADDRESS", "https://i:15012"), ("CA_ADDRESS", "")],
        )
        .unwrap_err();
        assert!(e.contains("CA_ADDRESS"), "{e}");
        // A local file keeps the built-in CA unless CA_ADDRESS names one.
        let (a, _) = run(&[], &[("LOCAL_XDS_PATH", "/l.yaml")]).unwrap();
        assert_eq!(a.ca_address, None);
        let (a, _) = run(
            &[],
            &[("LOCAL_XDS_PATH", "/l.yaml"), ("CA_ADDRESS", "ca:15012")],
        )
        .unwrap();
        assert_eq!(a.ca_address.as_deref(), Some("https://ca:15012"));
    }

    #[test]
    fn socks5_is_off_as_in_ztunnel_unless_asked_for() {
        let (a, _) = run(&[], &[("LOCAL_XDS_PATH", "/l.yaml")]).unwrap();
        assert_eq!(a.socks5_addr, Some(None));
        let (a, _) = run(
            &[],
            &[
                ("LOCAL_XDS_PATH", "/l.yaml"),
                ("UNSTABLE_ENABLE_SOCKS5", "true"),
            ],
        )
        .unwrap();
        assert_eq!(
            a.socks5_addr,
            Some(Some("127.0.0.1:15080".parse().unwrap()))
        );
        // zpath's own source flags keep zpath's default (on with a local file).
        let (a, _) = run(&["--config", "x.yaml"], &[]).unwrap();
        assert_eq!(a.socks5_addr, None);
    }

    #[test]
    fn a_zpath_source_flag_sets_ztunnel_sources_aside_and_says_so() {
        let (a, notices) = run(
            &["--config", "x.yaml"],
            &[("XDS_ADDRESS", "https://i:15012")],
        )
        .unwrap();
        assert_eq!(a.xds_address, None);
        assert_eq!(a.config.as_deref(), Some(Path::new("x.yaml")));
        assert!(
            notices.iter().any(|n| n.contains("XDS_ADDRESS")),
            "{notices:?}"
        );
    }

    #[test]
    fn local_xds_path_is_the_config_file_and_cannot_be_merged_with_xds() {
        let (a, _) = run(&[], &[("LOCAL_XDS_PATH", "/etc/local.yaml")]).unwrap();
        assert_eq!(a.config.as_deref(), Some(Path::new("/etc/local.yaml")));
        assert_eq!(a.xds_address, None);
        let both = run(
            &[],
            &[
                ("LOCAL_XDS_PATH", "/l.yaml"),
                ("XDS_ADDRESS", "https://i:1"),
            ],
        );
        assert!(both.unwrap_err().contains("does not merge"));
    }

    #[test]
    fn a_mesh_root_keeps_the_built_in_ca() {
        let (a, _) = run(&["--ca-cert", "c.pem", "--ca-key", "k.pem"], &[]).unwrap();
        assert!(a.xds_address.is_some());
        assert_eq!(a.ca_address, None);
    }

    #[test]
    fn flags_win_over_ztunnel_variables() {
        let (a, _) = run(&["--packet-mark", "7"], &[("PACKET_MARK", "9")]).unwrap();
        assert_eq!(a.packet_mark, 7);
        let (a, _) = run(&[], &[("PACKET_MARK", "9")]).unwrap();
        assert_eq!(a.packet_mark, 9);
    }

    #[test]
    fn values_parse_as_ztunnel_parses_them() {
        let (a, _) = run(
            &[],
            &[
                ("KEEPALIVE_TIME", "30"),
                ("POOL_UNUSED_RELEASE_TIMEOUT", "2m"),
                ("SECRET_TTL", "12h"),
                ("LOG_FORMAT", "json"),
                ("RUST_LOG", "debug"),
                ("ZTUNNEL_WORKER_THREADS", "1"),
            ],
        )
        .unwrap();
        assert_eq!(a.keepalive_time, Duration::from_secs(30));
        assert_eq!(a.pool_idle_timeout, Duration::from_secs(120));
        assert_eq!(a.cert_lifetime, Duration::from_secs(12 * 3600));
        assert_eq!(a.log_format, LogFormat::Json);
        assert_eq!(a.log, "debug");
        assert_eq!(a.shards, Some(1));
        // More than the allowed CPUs: one shard per allowed CPU, and said so.
        let (a, notices) = run(&[], &[("ZTUNNEL_WORKER_THREADS", "4096")]).unwrap();
        assert_eq!(a.shards, Some(zpath_engine::sys::allowed_cpus().len()));
        assert!(
            notices.iter().any(|n| n.contains("4096 worker threads")),
            "{notices:?}"
        );
        let (a, _) = run(&[], &[("KEEPALIVE_ENABLED", "false")]).unwrap();
        assert!(a.keepalive_time.is_zero());
        for (k, v) in [
            ("PACKET_MARK", "x"),
            ("KEEPALIVE_ENABLED", "yes"),
            ("SECRET_TTL", "soon"),
            ("TERMINATION_GRACE_PERIOD_SECONDS", "30s"),
            ("ZTUNNEL_WORKER_THREADS", "150%"),
        ] {
            let e = run(&[], &[(k, v)]).unwrap_err();
            assert!(e.contains(k), "{e}");
        }
    }

    #[test]
    fn the_drain_deadline_follows_the_pod_grace_period() {
        let d = |vars: &[(&str, &str)]| run(&[], vars).unwrap().0.drain_deadline;
        assert_eq!(
            d(&[("TERMINATION_GRACE_PERIOD_SECONDS", "30")]),
            Duration::from_secs(25)
        );
        assert_eq!(
            d(&[("TERMINATION_GRACE_PERIOD_SECONDS", "5")]),
            Duration::from_secs(4)
        );
        assert_eq!(
            d(&[("TERMINATION_GRACE_PERIOD_SECONDS", "0")]),
            Duration::from_secs(1)
        );
        assert_eq!(
            d(&[
                ("TERMINATION_GRACE_PERIOD_SECONDS", "30"),
                ("CONNECTION_TERMINATION_DEADLINE", "7s")
            ]),
            Duration::from_secs(7)
        );
    }

    #[test]
    fn worker_threads_take_counts_zero_and_percentages() {
        assert_eq!(worker_threads("2", 8), Ok(2));
        assert_eq!(worker_threads("0", 8), Ok(8));
        assert_eq!(worker_threads("25%", 8), Ok(2));
        assert_eq!(worker_threads("10%", 2), Ok(1));
        assert_eq!(worker_threads("12.5%", 16), Ok(2));
        assert!(worker_threads("0%", 8).is_err());
    }

    #[test]
    fn cpu_limits_set_the_shard_count_as_in_ztunnel() {
        let get = |vars: &[(&str, &str)]| {
            let m: BTreeMap<String, String> = vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            shards(&|k| m.get(k).cloned(), 8)
        };
        assert_eq!(get(&[]), Ok(None));
        assert_eq!(get(&[("ZTUNNEL_RESOURCE_CPU_LIMIT", "1500m")]), Ok(Some(2)));
        assert_eq!(get(&[("ZTUNNEL_RESOURCE_CPU_LIMIT", "3")]), Ok(Some(3)));
        assert_eq!(
            get(&[
                ("ZTUNNEL_CPU_LIMIT", "4"),
                ("ZTUNNEL_WORKER_THREADS", "50%")
            ]),
            Ok(Some(2))
        );
        assert!(get(&[("ZTUNNEL_RESOURCE_CPU_LIMIT", "lots")]).is_err());
        assert_eq!(cpu_quantity("100m"), Ok(1));
    }

    #[test]
    fn istio_meta_cluster_id_wins_over_cluster_id_unless_the_flag_is_given() {
        let (a, _) = run(&[], &[("ISTIO_META_CLUSTER_ID", "east")]).unwrap();
        assert_eq!(a.cluster_id, "east");
        let (a, _) = run(
            &["--cluster-id", "west"],
            &[("ISTIO_META_CLUSTER_ID", "east")],
        )
        .unwrap();
        assert_eq!(a.cluster_id, "west");
        assert!(
            !a.node_metadata.contains_key("CLUSTER_ID"),
            "one cluster id everywhere"
        );
    }

    #[test]
    fn settings_zpath_does_not_implement_are_reported_unless_they_match() {
        let (_, notices) = run(
            &["--config", "x.yaml"],
            &[
                ("PROXY_MODE", "shared"),
                ("IPV6_ENABLED", "true"),
                ("NETWORK", "net-a"),
            ],
        )
        .unwrap();
        assert!(
            notices.iter().any(|n| n.starts_with("PROXY_MODE")),
            "{notices:?}"
        );
        assert!(
            notices.iter().any(|n| n.starts_with("NETWORK")),
            "{notices:?}"
        );
        assert!(
            !notices.iter().any(|n| n.starts_with("IPV6_ENABLED")),
            "{notices:?}"
        );
    }

    #[test]
    fn istio_meta_becomes_node_metadata_and_headers_pass_through() {
        let (a, _) = run(
            &[],
            &[
                ("ISTIO_META_MESH_ID", "mesh1"),
                ("ISTIO_METAJSON_LABELS", r#"{"app":"z"}"#),
                ("XDS_HEADER_X_TENANT", "t1"),
                ("CA_HEADER_X_TENANT", "t2"),
            ],
        )
        .unwrap();
        assert_eq!(
            a.node_metadata.get("MESH_ID").map(String::as_str),
            Some("mesh1")
        );
        assert_eq!(a.node_json_metadata["LABELS"]["app"], "z");
        assert_eq!(
            a.xds_headers,
            vec![("X_TENANT".to_string(), "t1".to_string())]
        );
        assert_eq!(
            a.ca_headers,
            vec![("X_TENANT".to_string(), "t2".to_string())]
        );
        // As ztunnel: bad JSON is reported and left out; a bad header stops the start.
        let (a, notices) = run(&[], &[("ISTIO_METAJSON_X", "{")]).unwrap();
        assert!(a.node_json_metadata.is_empty());
        assert!(
            notices.iter().any(|n| n.starts_with("ISTIO_METAJSON_X")),
            "{notices:?}"
        );
        assert!(run(&[], &[("XDS_HEADER_BAD KEY", "v")]).is_err());
        assert!(run(&[], &[("CA_HEADER_X", "line\nbreak")]).is_err());
    }

    #[test]
    fn an_inline_token_or_root_is_refused() {
        let e = run(&[], &[("AUTH_TOKEN", "eyJhbGciOi")]).unwrap_err();
        assert!(e.contains("AUTH_TOKEN"), "{e}");
        let e = run(&[], &[("XDS_ROOT_CA", "SYSTEM")]).unwrap_err();
        assert!(e.contains("XDS_ROOT_CA"), "{e}");
    }
}
