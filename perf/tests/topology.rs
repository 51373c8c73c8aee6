//! The namespace topology (root only): it works while it exists, and leaves no namespace,
//! veth device or iptables rule behind.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::process::Command;

use zpath_perf::server::Server;
use zpath_perf::topology::{NetnsPair, CHAIN};

fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn root_or_skip() -> bool {
    if zpath_perf::sys::is_root() {
        true
    } else {
        eprintln!("skipping: network namespaces need root (run the tests as root)");
        false
    }
}

#[test]
fn netns_pair_connects_redirects_and_leaves_nothing_behind() {
    if !root_or_skip() {
        return;
    }
    let pair = NetnsPair::create().unwrap();
    let (cns, sns) = (
        pair.client.netns.clone().unwrap(),
        pair.server.netns.clone().unwrap(),
    );
    let (cv, sv) = pair.veth.clone();
    let netns = sh("ip", &["netns", "list"]);
    assert!(netns.contains(&cns) && netns.contains(&sns), "{netns}");
    assert!(sh("ip", &["-n", &cns, "-o", "link"]).contains(&cv));
    assert!(sh("ip", &["-n", &sns, "-o", "link"]).contains(&sv));
    // The veth pair never appears in the root namespace.
    assert!(!sh("ip", &["-o", "link"]).contains(&cv));

    // A server in the server namespace is reachable from the client namespace.
    let app = pair
        .server
        .run(|| Server::bind(std::net::SocketAddr::new(pair.server.ip, 0))?.spawn())
        .unwrap();
    let d = zpath_perf::generators::Dialer::direct(app);
    let r = pair
        .client
        .run(|| {
            zpath_perf::generators::run_crr(
                &d,
                &zpath_perf::generators::CrrParams {
                    max_conns_per_client: Some(5),
                    ..Default::default()
                },
            )
        })
        .unwrap();
    assert_eq!(r.connections, 5, "{:?}", r.first_error);

    {
        let _redirect = pair.redirect_outbound(15001, 1337).unwrap();
        let rules = sh(
            "ip",
            &["netns", "exec", &cns, "iptables", "-t", "nat", "-S"],
        );
        assert!(
            rules.contains(&format!("-A {CHAIN} -m mark --mark 0x539 -j RETURN")),
            "{rules}"
        );
        assert!(rules.contains("--to-ports 15001"), "{rules}");
    }
    let rules = sh(
        "ip",
        &["netns", "exec", &cns, "iptables", "-t", "nat", "-S"],
    );
    assert!(!rules.contains(CHAIN), "redirect left behind: {rules}");

    drop(pair);
    let netns = sh("ip", &["netns", "list"]);
    assert!(!netns.contains(&cns) && !netns.contains(&sns), "{netns}");
    // Other processes may change the root namespace meanwhile: look for ours only.
    let links = sh("ip", &["-o", "link"]);
    assert!(!links.contains(&cv) && !links.contains(&sv), "{links}");
    let rules = sh("iptables-save", &[]);
    assert!(!rules.contains(CHAIN), "{rules}");
    assert!(!std::path::Path::new(&format!("/run/netns/{cns}")).exists());
}

/// Pids of every descendant of `root`.
fn descendants(root: u32) -> Vec<u32> {
    let mut parent = std::collections::HashMap::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let rest = &stat[stat.rfind(')').unwrap() + 1..];
        let ppid: u32 = rest.split_whitespace().nth(1).unwrap().parse().unwrap();
        parent.insert(pid, ppid);
    }
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for (c, pp) in &parent {
            if *pp == p {
                out.push(*c);
                frontier.push(*c);
            }
        }
    }
    out
}

fn alive_as_harness(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("zpath-perf"))
        .unwrap_or(false)
}

#[test]
fn ctrl_c_during_compare_leaves_no_namespace_or_process() {
    if !root_or_skip() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_zpath-perf"))
        .args(["compare", "--targets", "direct,relay", "--scenarios", "rr"])
        .args(["--duration", "60", "--repeats", "1", "--out"])
        .arg(out.path())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let prefix = format!("zpperf-{:x}-", child.id() << 8);
    // Wait until the namespaces and the server exist (and a sample is under way).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut procs = Vec::new();
    while std::time::Instant::now() < deadline {
        procs = descendants(child.id());
        if sh("ip", &["netns", "list"]).contains(&prefix) && !procs.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(!procs.is_empty(), "the harness started nothing");
    std::thread::sleep(std::time::Duration::from_secs(2));
    procs = descendants(child.id());
    zpath_perf::sys::kill(child.id(), zpath_perf::sys::SIGINT);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(!sh("ip", &["netns", "list"]).contains(&prefix));
    // Killed children may take a moment to be reaped by init.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let left: Vec<u32> = procs.into_iter().filter(|p| alive_as_harness(*p)).collect();
    assert!(left.is_empty(), "processes left behind: {left:?}");
    // Proxies started after the signal (a sample cut short moves on to the next target)
    // run in the output directory: none may survive either.
    let in_out: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path().join("cwd")).ok())
        .map(|p| p.display().to_string())
        .filter(|p| p.starts_with(&out.path().display().to_string()))
        .collect();
    assert!(in_out.is_empty(), "processes left in {in_out:?}");
}
