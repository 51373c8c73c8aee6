//! A policy's rules compiled into a flat decision program.
//!
//! Every field test of every match becomes one [`Op`] with two forward jumps: where
//! to go when the test holds and when it does not. Following them walks exactly the
//! short-circuit evaluation of "rules ORed, clauses ANDed, matches ORed, fields
//! ANDed", without nested loops. Jumps only go forward, so a run ends after at most
//! one step per op, and ends on "rule r matched" or "no rule matched".

use crate::conn::Conn;
use crate::index::{Addr, IpSet, PortSet, SaSet, StrSet};
use crate::model::{Match, Rule, StringMatch};

/// A jump target with this bit set is terminal: "rule (target & !ACCEPT) matched",
/// or, for [`REJECT`], "no rule matched".
const ACCEPT: u32 = 1 << 31;
const REJECT: u32 = u32::MAX;

/// The connection's fields in the form tests look up.
pub(crate) struct View<'c> {
    pub(crate) src: Addr,
    pub(crate) dst: Addr,
    pub(crate) port: u16,
    /// Without a peer identity the namespace is the empty string (as ztunnel).
    pub(crate) namespace: &'c str,
    /// `""` without a peer identity (a real principal is never empty).
    pub(crate) principal: &'c str,
    pub(crate) service_account: Option<(&'c str, &'c str)>,
}

impl<'c> View<'c> {
    #[inline]
    fn string(&self, field: StrField) -> &'c str {
        match field {
            StrField::Namespace => self.namespace,
            StrField::Principal => self.principal,
        }
    }

    pub(crate) fn new(conn: &Conn<'c>) -> Self {
        View {
            src: Addr::from(conn.src_ip),
            dst: Addr::from(conn.dst_ip),
            port: conn.dst_port,
            namespace: conn.peer.map_or("", |p| p.namespace()),
            principal: conn.peer.map_or("", |p| p.principal()),
            service_account: conn.peer.map(|p| (p.namespace(), p.service_account())),
        }
    }
}

/// Up to this many exact values are compared one by one rather than hashed.
const EXACTS: usize = 8;

/// Which string of the connection a string test reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StrField {
    Namespace,
    Principal,
}

/// The lookup one field test performs; string tests are specialised for the
/// common single-value shapes so a test is one dispatch.
#[derive(Debug)]
enum FieldTest {
    Port(u16),
    Ports(PortSet),
    DstIp(IpSet),
    SrcIp(IpSet),
    ServiceAccount(SaSet),
    Presence(StrField),
    Exact(StrField, Box<str>),
    Exacts(StrField, Box<[Box<str>]>),
    Prefix(StrField, Box<str>),
    Suffix(StrField, Box<str>),
    Set(StrField, Box<StrSet>),
    /// A string test no connection satisfies (e.g. only an empty exact principal).
    Never,
}

impl FieldTest {
    /// A string test. For principals the view holds `""` when there is no peer,
    /// and a real principal is never empty, so patterns that would match `""` are
    /// rewritten to not match an absent principal: an empty prefix or suffix
    /// becomes presence, an empty exact value is dropped.
    fn strings(field: StrField, values: &[StringMatch]) -> Self {
        let principal = field == StrField::Principal;
        let fixed: Vec<StringMatch> = values
            .iter()
            .filter_map(|m| match m {
                StringMatch::Exact(v) if principal && v.is_empty() => None,
                StringMatch::Prefix(v) | StringMatch::Suffix(v) if principal && v.is_empty() => {
                    Some(StringMatch::Presence)
                }
                other => Some(other.clone()),
            })
            .collect();
        match fixed.as_slice() {
            [] => FieldTest::Never,
            [StringMatch::Presence] => FieldTest::Presence(field),
            [StringMatch::Exact(v)] => FieldTest::Exact(field, v.as_str().into()),
            [StringMatch::Prefix(v)] => FieldTest::Prefix(field, v.as_str().into()),
            [StringMatch::Suffix(v)] => FieldTest::Suffix(field, v.as_str().into()),
            all if all.len() <= EXACTS
                && all.iter().all(|m| matches!(m, StringMatch::Exact(_))) =>
            {
                FieldTest::Exacts(
                    field,
                    all.iter()
                        .filter_map(|m| match m {
                            StringMatch::Exact(v) => Some(v.as_str().into()),
                            _ => None,
                        })
                        .collect(),
                )
            }
            all => FieldTest::Set(field, Box::new(StrSet::new(all))),
        }
    }

    #[inline]
    fn hit(&self, v: &View<'_>) -> bool {
        match self {
            FieldTest::Port(p) => *p == v.port,
            FieldTest::Ports(s) => s.contains(v.port),
            FieldTest::DstIp(s) => s.contains(v.dst),
            FieldTest::SrcIp(s) => s.contains(v.src),
            FieldTest::ServiceAccount(s) => {
                v.service_account.is_some_and(|(ns, sa)| s.contains(ns, sa))
            }
            FieldTest::Presence(f) => !v.string(*f).is_empty(),
            FieldTest::Exact(f, e) => **e == *v.string(*f),
            FieldTest::Exacts(f, es) => {
                let s = v.string(*f);
                es.iter().any(|e| **e == *s)
            }
            FieldTest::Prefix(f, p) => v.string(*f).starts_with(&**p),
            FieldTest::Suffix(f, x) => v.string(*f).ends_with(&**x),
            FieldTest::Set(f, set) => set.contains(v.string(*f)),
            FieldTest::Never => false,
        }
    }
}

/// One field test and its two jumps (a negated test has them swapped).
#[derive(Debug)]
struct Op {
    test: FieldTest,
    yes: u32,
    no: u32,
}

/// A policy's rules as a decision program.
#[derive(Debug)]
pub(crate) struct Program {
    /// When every rule requires one of a few destination ports, the union of those
    /// ports: a connection to any other port skips the program entirely.
    ports: Option<Box<[u16]>>,
    entry: u32,
    ops: Box<[Op]>,
}

/// Above this many ports a policy gets no port gate (the gate must stay cheaper
/// than the program it guards).
const GATE_PORTS: usize = 8;

/// The ports a rule can match at most: taken from a clause all of whose matches
/// list destination ports. `None` when the rule is not limited to a few ports.
fn rule_ports(rule: &Rule) -> Option<Vec<u16>> {
    rule.clauses.iter().find_map(|c| {
        let mut ports = Vec::new();
        let mut live = c.matches.iter().filter(|m| !m.is_empty()).peekable();
        live.peek()?;
        for m in live {
            if m.destination_ports.is_empty() {
                return None;
            }
            ports.extend_from_slice(&m.destination_ports);
        }
        Some(ports)
    })
}

/// The port gate of a whole policy (see [`Program::ports`]).
fn gate(rules: &[Rule]) -> Option<Box<[u16]>> {
    let mut all = Vec::new();
    for rule in rules {
        all.extend(rule_ports(rule)?);
        if all.len() > 4 * GATE_PORTS {
            return None;
        }
    }
    all.sort_unstable();
    all.dedup();
    (all.len() <= GATE_PORTS).then(|| all.into_boxed_slice())
}

impl Program {
    /// The index of the first rule that matches.
    #[inline]
    pub(crate) fn first_match(&self, v: &View<'_>) -> Option<u32> {
        if let Some(ports) = &self.ports {
            if !ports.contains(&v.port) {
                return None;
            }
        }
        let mut pc = self.entry;
        loop {
            if pc & ACCEPT != 0 {
                return (pc != REJECT).then_some(pc & !ACCEPT);
            }
            let op = self.ops.get(pc as usize)?;
            pc = if op.test.hit(v) { op.yes } else { op.no };
        }
    }

    /// Compiles rules (in order; the reported rule index is the position in
    /// `rules`). Built back to front so every jump target exists when it is used.
    pub(crate) fn new(rules: &[Rule]) -> Self {
        let mut b = Builder { ops: Vec::new() };
        let mut next_rule = REJECT;
        for (r, rule) in rules.iter().enumerate().rev() {
            let accept = ACCEPT | (r as u32 & !ACCEPT);
            next_rule = b.rule(rule, accept, next_rule);
        }
        let mut program = b.finish(next_rule);
        program.ports = gate(rules);
        program
    }
}

struct Builder {
    ops: Vec<Op>,
}

impl Builder {
    /// Emits a rule; returns its entry. `fail` is where to go if it does not match.
    fn rule(&mut self, rule: &Rule, accept: u32, fail: u32) -> u32 {
        // A clause with no matches always holds; a clause whose matches are all
        // empty never holds (empty matches are ignored), so neither does the rule.
        if rule
            .clauses
            .iter()
            .any(|c| !c.matches.is_empty() && c.matches.iter().all(Match::is_empty))
        {
            return fail;
        }
        let mut next_clause = accept;
        for clause in rule.clauses.iter().rev() {
            if clause.matches.is_empty() {
                continue;
            }
            let mut next_match = fail;
            for m in clause.matches.iter().rev().filter(|m| !m.is_empty()) {
                next_match = self.a_match(m, next_clause, next_match);
            }
            next_clause = next_match;
        }
        next_clause
    }

    /// Emits a match's tests (cheapest first); returns its entry.
    fn a_match(&mut self, m: &Match, holds: u32, fails: u32) -> u32 {
        let mut tests: Vec<(FieldTest, bool)> = Vec::new();
        let ports = |p: &[u16]| match p {
            [one] => FieldTest::Port(*one),
            many => FieldTest::Ports(PortSet::new(many)),
        };
        let mut add = |values_present: bool, negated: bool, make: &dyn Fn() -> FieldTest| {
            if values_present {
                tests.push((make(), negated));
            }
        };
        add(!m.destination_ports.is_empty(), false, &|| {
            ports(&m.destination_ports)
        });
        add(!m.not_destination_ports.is_empty(), true, &|| {
            ports(&m.not_destination_ports)
        });
        add(!m.destination_ips.is_empty(), false, &|| {
            FieldTest::DstIp(IpSet::new(&m.destination_ips))
        });
        add(!m.not_destination_ips.is_empty(), true, &|| {
            FieldTest::DstIp(IpSet::new(&m.not_destination_ips))
        });
        add(!m.source_ips.is_empty(), false, &|| {
            FieldTest::SrcIp(IpSet::new(&m.source_ips))
        });
        add(!m.not_source_ips.is_empty(), true, &|| {
            FieldTest::SrcIp(IpSet::new(&m.not_source_ips))
        });
        add(!m.service_accounts.is_empty(), false, &|| {
            FieldTest::ServiceAccount(SaSet::new(&m.service_accounts))
        });
        add(!m.not_service_accounts.is_empty(), true, &|| {
            FieldTest::ServiceAccount(SaSet::new(&m.not_service_accounts))
        });
        add(!m.namespaces.is_empty(), false, &|| {
            FieldTest::strings(StrField::Namespace, &m.namespaces)
        });
        add(!m.not_namespaces.is_empty(), true, &|| {
            FieldTest::strings(StrField::Namespace, &m.not_namespaces)
        });
        add(!m.principals.is_empty(), false, &|| {
            FieldTest::strings(StrField::Principal, &m.principals)
        });
        add(!m.not_principals.is_empty(), true, &|| {
            FieldTest::strings(StrField::Principal, &m.not_principals)
        });
        let mut next = holds;
        for (test, negated) in tests.into_iter().rev() {
            let (yes, no) = if negated {
                (fails, next)
            } else {
                (next, fails)
            };
            next = self.push(Op { test, yes, no });
        }
        next
    }

    fn push(&mut self, op: Op) -> u32 {
        self.ops.push(op);
        (self.ops.len() - 1) as u32
    }

    /// Reverses the ops into execution order (every jump becomes forward).
    fn finish(mut self, entry: u32) -> Program {
        let last = self.ops.len() as u32;
        let flip = |t: u32| if t & ACCEPT != 0 { t } else { last - 1 - t };
        self.ops.reverse();
        for op in &mut self.ops {
            op.yes = flip(op.yes);
            op.no = flip(op.no);
        }
        Program {
            ports: None,
            entry: flip(entry),
            ops: self.ops.into_boxed_slice(),
        }
    }
}
