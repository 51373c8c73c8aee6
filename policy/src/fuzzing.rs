//! Differential check used by the fuzz target (`fuzz/`), the property tests and a
//! unit test over the fuzz seed corpus: arbitrary bytes are decoded into policies,
//! destinations and connections; the policies are compiled and every connection is
//! evaluated both by the compiled form and by the [`crate::reference`](mod@crate::reference) evaluator.
//!
//! [`run`] never panics on any input unless the two evaluators disagree, which is a
//! bug in this crate.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::compile::compile;
use crate::conn::{Conn, Peer, Target};
use crate::model::{
    Action, Authorization, Clause, Match, Rule, Scope, ServiceAccountMatch, StringMatch,
};
use crate::reference::{self, Verdict};

/// A decoded case: policies, destinations and connections.
#[derive(Debug, Clone, Default)]
pub struct Case {
    /// The snapshot's policies.
    pub policies: Vec<Authorization>,
    /// Destinations: namespace and referenced policy keys.
    pub targets: Vec<(String, Vec<String>)>,
    /// Connections.
    pub conns: Vec<CaseConn>,
}

/// A connection with an owned identity.
#[derive(Debug, Clone)]
pub struct CaseConn {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Destination port.
    pub port: u16,
    /// SPIFFE identity; `None` for plaintext. Unparseable identities count as none.
    pub identity: Option<String>,
}

/// Reads bytes as choices; an exhausted input reads as zeros.
struct Bytes<'a> {
    data: &'a [u8],
}

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            usize::from(self.byte()) % n
        }
    }

    fn pick<'p, T>(&mut self, pool: &'p [T]) -> &'p T {
        let i = self.below(pool.len());
        &pool[i.min(pool.len() - 1)]
    }

    fn chance(&mut self, in_256: u8) -> bool {
        self.byte() < in_256
    }
}

const NAMESPACES: &[&str] = &["a", "b", "", "istio-system", "a/b"];
const NAMES: &[&str] = &["p", "q", "r"];
const TRUST_DOMAINS: &[&str] = &["td", "cluster.local"];
const ACCOUNTS: &[&str] = &["x", "y", "default"];
const STRINGS: &[&str] = &[
    "a",
    "b",
    "",
    "td",
    "x",
    "td/ns/a/sa/x",
    "cluster.local/ns/b/sa/y",
    "td/ns/",
    "/sa/x",
    "/sa/",
    "spiffe://td/ns/a/sa/x",
    "é",
];
const ADDRS: &[&str] = &[
    "10.0.0.1",
    "10.0.0.2",
    "10.0.1.7",
    "192.168.0.1",
    "0.0.0.0",
    "255.255.255.255",
    "::1",
    "fd00::1",
    "fd00::8000",
    "::ffff:10.0.0.1",
];
const PORTS: &[u16] = &[80, 443, 8080, 0, 65535, 15008];

fn addr(b: &mut Bytes<'_>) -> IpAddr {
    b.pick(ADDRS)
        .parse()
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

fn cidr(b: &mut Bytes<'_>) -> IpNet {
    let ip = addr(b);
    let max = if ip.is_ipv4() { 32 } else { 128 };
    // Mostly host routes and a few wide ones, so ranges both hit and miss.
    let len = match b.below(4) {
        0 => max,
        1 => max - 8,
        _ => b.below(usize::from(max) + 1) as u8,
    };
    IpNet::new(ip, len).unwrap_or_else(|_| IpNet::from(ip))
}

fn string(b: &mut Bytes<'_>) -> String {
    if b.chance(16) {
        let n = b.below(6);
        let raw: Vec<u8> = (0..n).map(|_| b.byte()).collect();
        String::from_utf8_lossy(&raw).into_owned()
    } else {
        (*b.pick(STRINGS)).to_owned()
    }
}

fn string_match(b: &mut Bytes<'_>) -> StringMatch {
    match b.below(4) {
        0 => StringMatch::Exact(string(b)),
        1 => StringMatch::Prefix(string(b)),
        2 => StringMatch::Suffix(string(b)),
        _ => StringMatch::Presence,
    }
}

fn list<T>(b: &mut Bytes<'_>, max: usize, mut item: impl FnMut(&mut Bytes<'_>) -> T) -> Vec<T> {
    // Fields are absent most of the time, as in real policies.
    if !b.chance(64) {
        return Vec::new();
    }
    let n = 1 + b.below(max);
    (0..n).map(|_| item(b)).collect()
}

fn service_account(b: &mut Bytes<'_>) -> ServiceAccountMatch {
    ServiceAccountMatch {
        namespace: (*b.pick(NAMESPACES)).to_owned(),
        service_account: (*b.pick(ACCOUNTS)).to_owned(),
    }
}

fn port(b: &mut Bytes<'_>) -> u16 {
    if b.chance(32) {
        u16::from_le_bytes([b.byte(), b.byte()])
    } else {
        *b.pick(PORTS)
    }
}

fn a_match(b: &mut Bytes<'_>) -> Match {
    Match {
        namespaces: list(b, 3, string_match),
        not_namespaces: list(b, 3, string_match),
        service_accounts: list(b, 3, service_account),
        not_service_accounts: list(b, 3, service_account),
        principals: list(b, 3, string_match),
        not_principals: list(b, 3, string_match),
        source_ips: list(b, 3, cidr),
        not_source_ips: list(b, 3, cidr),
        destination_ips: list(b, 3, cidr),
        not_destination_ips: list(b, 3, cidr),
        destination_ports: list(b, 3, port),
        not_destination_ports: list(b, 3, port),
    }
}

fn policy(b: &mut Bytes<'_>) -> Authorization {
    let name = (*b.pick(NAMES)).to_owned();
    let namespace = (*b.pick(NAMESPACES)).to_owned();
    let scope = *b.pick(&[Scope::Global, Scope::Namespace, Scope::WorkloadSelector]);
    let dry_run = b.chance(40);
    if b.chance(12) {
        let mut p = Authorization::invalid(name, namespace, scope, "fuzz: invalid");
        p.dry_run = dry_run;
        return p;
    }
    let rules = (0..b.below(4))
        .map(|_| Rule {
            clauses: (0..b.below(3))
                .map(|_| Clause {
                    matches: (0..b.below(3)).map(|_| a_match(b)).collect(),
                })
                .collect(),
        })
        .collect();
    Authorization {
        name,
        namespace,
        scope,
        action: *b.pick(&[Action::Allow, Action::Deny]),
        rules,
        dry_run,
        invalid: None,
    }
}

fn identity(b: &mut Bytes<'_>) -> Option<String> {
    match b.below(8) {
        0 | 1 => None,
        2 => Some(string(b)),
        _ => Some(format!(
            "spiffe://{}/ns/{}/sa/{}",
            b.pick(TRUST_DOMAINS),
            b.pick(&NAMESPACES[..2]),
            b.pick(ACCOUNTS)
        )),
    }
}

/// Decodes arbitrary bytes into a case.
pub fn decode(data: &[u8]) -> Case {
    let mut b = Bytes { data };
    let policies = (0..b.below(7)).map(|_| policy(&mut b)).collect();
    let targets = (0..1 + b.below(3))
        .map(|_| {
            let ns = (*b.pick(NAMESPACES)).to_owned();
            let keys = (0..b.below(3))
                .map(|_| format!("{}/{}", b.pick(NAMESPACES), b.pick(NAMES)))
                .collect();
            (ns, keys)
        })
        .collect();
    let conns = (0..1 + b.below(6))
        .map(|_| CaseConn {
            src: addr(&mut b),
            dst: addr(&mut b),
            port: port(&mut b),
            identity: identity(&mut b),
        })
        .collect();
    Case {
        policies,
        targets,
        conns,
    }
}

/// Compiles and evaluates `case`, panicking if the compiled and reference
/// evaluators disagree. Returns the number of evaluations compared.
pub fn check(case: &Case) -> usize {
    let compiled = compile(&case.policies);
    let mut n = 0;
    for (ns, keys) in &case.targets {
        let target = Target {
            namespace: ns.as_str(),
            policies: keys.as_slice(),
        };
        let resolved = compiled.resolve(&target);
        for c in &case.conns {
            let peer = c.identity.as_deref().and_then(|i| Peer::parse(i).ok());
            let conn = Conn {
                src_ip: c.src,
                dst_ip: c.dst,
                dst_port: c.port,
                peer,
            };
            let fast = Verdict::of(&compiled.evaluate(&resolved, &conn), &compiled);
            let slow = reference::evaluate(&case.policies, &target, &conn);
            assert_eq!(
                fast, slow,
                "compiled and reference disagree\npolicies: {:#?}\ntarget: {target:?}\nconn: {conn:?}",
                case.policies
            );
            n += 1;
        }
    }
    n
}

/// The fuzz entry point: decode, compile, evaluate, compare.
pub fn run(data: &[u8]) -> usize {
    check(&decode(data))
}
