//! Per-field lookup structures used by compiled matches: merged sorted ranges for
//! address sets, small sorted lists or bitsets for ports, and for strings a hashed
//! exact set plus prefix/suffix sets probed by length.
//!
//! Small sets (the common case: one to a few values) are plain slices scanned
//! linearly, which beats hashing below a handful of entries.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::model::{ServiceAccountMatch, StringMatch};

/// Above this many entries a set switches from a linear scan to a hashed or
/// bitset form.
const SMALL: usize = 8;

/// Deterministic hasher: keys come from the control plane, lookups never insert, so
/// a fixed seed needs no randomness (and no system call) at start-up.
pub(crate) type Hasher = ahash::RandomState;

pub(crate) fn hasher() -> Hasher {
    ahash::RandomState::with_seeds(
        0x243f_6a88_85a3_08d3,
        0x1319_8a2e_0370_7344,
        0xa409_3822_299f_31d0,
        0x082e_fa98_ec4e_6c89,
    )
}

/// An address as a number, so range checks are integer compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Addr {
    V4(u32),
    V6(u128),
}

impl From<IpAddr> for Addr {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(a) => Addr::V4(u32::from(a)),
            IpAddr::V6(a) => Addr::V6(u128::from(a)),
        }
    }
}

/// A set of address ranges, merged and sorted per family.
#[derive(Debug)]
pub(crate) struct IpSet {
    v4: Box<[(u32, u32)]>,
    v6: Box<[(u128, u128)]>,
}

impl IpSet {
    pub(crate) fn new(nets: &[IpNet]) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for net in nets {
            match net {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
                IpNet::V6(n) => v6.push((u128::from(n.network()), u128::from(n.broadcast()))),
            }
        }
        IpSet {
            v4: merge(v4).into_boxed_slice(),
            v6: merge(v6).into_boxed_slice(),
        }
    }

    pub(crate) fn contains(&self, addr: Addr) -> bool {
        match addr {
            Addr::V4(a) => in_ranges(&self.v4, a),
            Addr::V6(a) => in_ranges(&self.v6, a),
        }
    }
}

/// Sorts inclusive ranges and merges overlapping or adjacent ones.
fn merge<T: Ord + Copy + Adjacent>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match out.last_mut() {
            Some(last) if lo <= last.1 || last.1.next_is(lo) => {
                if hi > last.1 {
                    last.1 = hi;
                }
            }
            _ => out.push((lo, hi)),
        }
    }
    out
}

/// Whether `next` directly follows `self` (for merging adjacent ranges).
trait Adjacent {
    fn next_is(self, next: Self) -> bool;
}

impl Adjacent for u32 {
    fn next_is(self, next: Self) -> bool {
        self.checked_add(1) == Some(next)
    }
}

impl Adjacent for u128 {
    fn next_is(self, next: Self) -> bool {
        self.checked_add(1) == Some(next)
    }
}

fn in_ranges<T: Ord + Copy>(ranges: &[(T, T)], x: T) -> bool {
    if ranges.len() <= SMALL {
        return ranges.iter().any(|&(lo, hi)| lo <= x && x <= hi);
    }
    // Ranges are disjoint and sorted: only the last range starting at or before `x`
    // can hold it.
    let i = ranges.partition_point(|&(lo, _)| lo <= x);
    i > 0 && ranges.get(i - 1).is_some_and(|&(_, hi)| x <= hi)
}

/// A set of ports.
#[derive(Debug)]
pub(crate) enum PortSet {
    Small(Box<[u16]>),
    /// One bit per port (8 KiB), for long port lists.
    Bits(Box<[u64]>),
}

impl PortSet {
    pub(crate) fn new(ports: &[u16]) -> Self {
        let mut p = ports.to_vec();
        p.sort_unstable();
        p.dedup();
        if p.len() <= SMALL {
            return PortSet::Small(p.into_boxed_slice());
        }
        let mut bits = vec![0u64; 1024];
        for port in p {
            if let Some(w) = bits.get_mut(usize::from(port >> 6)) {
                *w |= 1 << (port & 63);
            }
        }
        PortSet::Bits(bits.into_boxed_slice())
    }

    pub(crate) fn contains(&self, port: u16) -> bool {
        match self {
            PortSet::Small(p) => p.contains(&port),
            PortSet::Bits(b) => b
                .get(usize::from(port >> 6))
                .is_some_and(|w| w & (1 << (port & 63)) != 0),
        }
    }
}

/// Exact strings.
#[derive(Debug)]
enum ExactSet {
    Small(Box<[Box<str>]>),
    Hashed(HashSet<Box<str>, Hasher>),
}

impl ExactSet {
    fn new(mut values: Vec<Box<str>>) -> Self {
        values.sort_unstable();
        values.dedup();
        if values.len() <= SMALL {
            ExactSet::Small(values.into_boxed_slice())
        } else {
            let mut set = HashSet::with_capacity_and_hasher(values.len(), hasher());
            set.extend(values);
            ExactSet::Hashed(set)
        }
    }

    fn contains(&self, v: &str) -> bool {
        match self {
            ExactSet::Small(s) => s.iter().any(|e| &**e == v),
            ExactSet::Hashed(s) => s.contains(v),
        }
    }
}

/// Prefixes or suffixes, compared as bytes (equivalent to `str::starts_with` /
/// `ends_with` with a `&str` pattern).
#[derive(Debug)]
enum AffixSet {
    Small(Box<[Box<[u8]>]>),
    /// Probed once per distinct length: cost grows with the number of lengths, not
    /// the number of values.
    Hashed {
        lens: Box<[usize]>,
        set: HashSet<Box<[u8]>, Hasher>,
    },
}

impl AffixSet {
    fn new(mut values: Vec<Box<[u8]>>) -> Self {
        values.sort_unstable();
        values.dedup();
        if values.len() <= SMALL {
            return AffixSet::Small(values.into_boxed_slice());
        }
        let mut lens: Vec<usize> = values.iter().map(|v| v.len()).collect();
        lens.sort_unstable();
        lens.dedup();
        let mut set = HashSet::with_capacity_and_hasher(values.len(), hasher());
        set.extend(values);
        AffixSet::Hashed {
            lens: lens.into_boxed_slice(),
            set,
        }
    }

    fn has_prefix_of(&self, v: &[u8]) -> bool {
        match self {
            AffixSet::Small(s) => s.iter().any(|p| v.starts_with(p)),
            AffixSet::Hashed { lens, set } => lens
                .iter()
                .take_while(|&&l| l <= v.len())
                .any(|&l| v.get(..l).is_some_and(|head| set.contains(head))),
        }
    }

    fn has_suffix_of(&self, v: &[u8]) -> bool {
        match self {
            AffixSet::Small(s) => s.iter().any(|p| v.ends_with(p)),
            AffixSet::Hashed { lens, set } => lens
                .iter()
                .take_while(|&&l| l <= v.len())
                .any(|&l| v.get(v.len() - l..).is_some_and(|tail| set.contains(tail))),
        }
    }
}

/// A set of string matches (exact, prefix, suffix, presence).
#[derive(Debug)]
pub(crate) struct StrSet {
    exact: ExactSet,
    prefixes: AffixSet,
    suffixes: AffixSet,
    presence: bool,
}

impl StrSet {
    pub(crate) fn new(matches: &[StringMatch]) -> Self {
        let mut exact = Vec::new();
        let mut prefixes = Vec::new();
        let mut suffixes = Vec::new();
        let mut presence = false;
        for m in matches {
            match m {
                StringMatch::Exact(v) => exact.push(v.as_str().into()),
                StringMatch::Prefix(v) => prefixes.push(v.as_bytes().into()),
                StringMatch::Suffix(v) => suffixes.push(v.as_bytes().into()),
                StringMatch::Presence => presence = true,
            }
        }
        StrSet {
            exact: ExactSet::new(exact),
            prefixes: AffixSet::new(prefixes),
            suffixes: AffixSet::new(suffixes),
            presence,
        }
    }

    pub(crate) fn contains(&self, v: &str) -> bool {
        (self.presence && !v.is_empty())
            || self.exact.contains(v)
            || self.prefixes.has_prefix_of(v.as_bytes())
            || self.suffixes.has_suffix_of(v.as_bytes())
    }
}

/// A set of service accounts (namespace, name).
#[derive(Debug)]
pub(crate) enum SaSet {
    Small(Box<[(Box<str>, Box<str>)]>),
    /// Keyed by service account name, then the namespaces it is allowed in.
    Hashed(HashMap<Box<str>, Box<[Box<str>]>, Hasher>),
}

impl SaSet {
    pub(crate) fn new(matches: &[ServiceAccountMatch]) -> Self {
        let mut pairs: Vec<(Box<str>, Box<str>)> = matches
            .iter()
            .map(|m| {
                (
                    m.namespace.as_str().into(),
                    m.service_account.as_str().into(),
                )
            })
            .collect();
        pairs.sort_unstable();
        pairs.dedup();
        if pairs.len() <= SMALL {
            return SaSet::Small(pairs.into_boxed_slice());
        }
        let mut by_sa: HashMap<Box<str>, Vec<Box<str>>, Hasher> = HashMap::with_hasher(hasher());
        for (ns, sa) in pairs {
            by_sa.entry(sa).or_default().push(ns);
        }
        SaSet::Hashed(
            by_sa
                .into_iter()
                .map(|(sa, ns)| (sa, ns.into_boxed_slice()))
                .collect(),
        )
    }

    pub(crate) fn contains(&self, namespace: &str, service_account: &str) -> bool {
        match self {
            SaSet::Small(s) => s
                .iter()
                .any(|(ns, sa)| &**ns == namespace && &**sa == service_account),
            SaSet::Hashed(m) => m
                .get(service_account)
                .is_some_and(|nss| nss.iter().any(|ns| &**ns == namespace)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        crate::model::parse_cidr(s).unwrap()
    }

    fn addr(s: &str) -> Addr {
        Addr::from(s.parse::<IpAddr>().unwrap())
    }

    #[test]
    fn ip_set_merges_overlapping_and_adjacent_ranges() {
        let set = IpSet::new(&[net("10.0.0.0/25"), net("10.0.0.128/25"), net("10.0.0.5/32")]);
        assert_eq!(&*set.v4, &[(0x0a00_0000, 0x0a00_00ff)]);
        assert!(set.contains(addr("10.0.0.255")));
        assert!(!set.contains(addr("10.0.1.0")));
    }

    #[test]
    fn ip_set_large_uses_binary_search_correctly() {
        let nets: Vec<IpNet> = (0..50)
            .map(|i| net(&format!("10.{}.0.0/16", i * 2)))
            .collect();
        let set = IpSet::new(&nets);
        assert!(set.contains(addr("10.4.3.2")));
        assert!(!set.contains(addr("10.5.3.2")));
        assert!(!set.contains(addr("9.255.255.255")));
        assert!(set.contains(addr("10.98.255.255")));
        assert!(!set.contains(addr("10.99.0.0")));
        assert!(!set.contains(addr("::1")));
    }

    #[test]
    fn ip_set_host_bits_in_cidr_are_masked() {
        let set = IpSet::new(&[net("10.1.2.3/8")]);
        assert!(set.contains(addr("10.200.0.1")));
    }

    #[test]
    fn port_set_small_and_bitset_agree() {
        let few = PortSet::new(&[80, 443]);
        let many: Vec<u16> = (0..100).map(|i| i * 600).collect();
        let big = PortSet::new(&many);
        assert!(few.contains(443) && !few.contains(444));
        assert!(matches!(big, PortSet::Bits(_)));
        for p in [0u16, 600, 59400, 65535, 601] {
            assert_eq!(big.contains(p), many.contains(&p), "port {p}");
        }
    }

    #[test]
    fn str_set_large_prefix_and_suffix_probe_by_length() {
        let mut ms: Vec<StringMatch> = (0..20)
            .map(|i| StringMatch::Prefix(format!("p{i}-")))
            .collect();
        ms.extend((0..20).map(|i| StringMatch::Suffix(format!("-s{i}"))));
        ms.extend((0..20).map(|i| StringMatch::Exact(format!("e{i}"))));
        let set = StrSet::new(&ms);
        assert!(set.contains("p13-anything"));
        assert!(set.contains("anything-s19"));
        assert!(set.contains("e7"));
        assert!(!set.contains("e77"));
        assert!(!set.contains("p"));
        assert!(!set.contains(""));
    }

    #[test]
    fn str_set_empty_prefix_matches_empty_string_but_presence_does_not() {
        assert!(StrSet::new(&[StringMatch::Prefix(String::new())]).contains(""));
        assert!(!StrSet::new(&[StringMatch::Presence]).contains(""));
        assert!(StrSet::new(&[StringMatch::Presence]).contains("x"));
    }

    #[test]
    fn sa_set_large_matches_pairs_not_cross_products() {
        let ms: Vec<ServiceAccountMatch> = (0..20)
            .map(|i| ServiceAccountMatch {
                namespace: format!("ns{i}"),
                service_account: format!("sa{i}"),
            })
            .collect();
        let set = SaSet::new(&ms);
        assert!(set.contains("ns3", "sa3"));
        assert!(!set.contains("ns3", "sa4"));
    }
}
