//! Workload uids as persistent-map keys.
//!
//! Uids share long prefixes (`cluster//v1/Pod/namespace/...`), so ordering maps by
//! the string alone makes every B-tree step a long `memcmp`. [`Uid`] orders by a hash
//! of the string first and by the string only on a tie: lookups compare integers.
//! The order is arbitrary but fixed within a process (the hash is seeded once per
//! process), so every snapshot agrees on it, while uids chosen by a tenant (pod
//! names) cannot be crafted to land on chosen hashes.

use std::cmp::Ordering;
use std::hash::{Hash, Hasher};

use equivalent::{Comparable, Equivalent};
use serde::Serialize;

use crate::model::Strng;

/// An owned uid key.
#[derive(Debug, Clone)]
pub struct Uid {
    hash: u64,
    uid: Strng,
}

/// A borrowed uid, to look up a [`Uid`] key without allocating.
#[derive(Debug, Clone, Copy)]
pub struct UidRef<'a> {
    hash: u64,
    uid: &'a str,
}

/// A fast string hash (multiply-xorshift over 8-byte words), seeded once per process.
/// Collisions never change a result; in the by-uid index they cost a probe step each,
/// which is why the seed keeps them out of a tenant's control.
pub(crate) fn uid_hash(s: &str) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mix = |h: u64, w: u64| {
        let h = (h ^ w).wrapping_mul(K);
        h ^ (h >> 29)
    };
    let mut h = process_seed() ^ 0x243f_6a88_85a3_08d3 ^ s.len() as u64;
    let mut words = s.as_bytes().chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        h = mix(h, u64::from_le_bytes(b));
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut b = [0u8; 8];
        b[..rest.len()].copy_from_slice(rest);
        h = mix(h, u64::from_le_bytes(b));
    }
    h
}

impl Uid {
    /// The key of `uid`.
    pub fn new(uid: Strng) -> Self {
        Uid {
            hash: uid_hash(&uid),
            uid,
        }
    }

    /// The uid.
    pub fn as_str(&self) -> &str {
        &self.uid
    }

    /// The shared uid string.
    pub fn strng(&self) -> &Strng {
        &self.uid
    }
}

impl<'a> UidRef<'a> {
    /// The lookup key of `uid`.
    pub fn new(uid: &'a str) -> Self {
        UidRef {
            hash: uid_hash(uid),
            uid,
        }
    }
}

impl PartialEq for Uid {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.uid == other.uid
    }
}

impl Eq for Uid {}

impl Ord for Uid {
    fn cmp(&self, other: &Self) -> Ordering {
        self.hash
            .cmp(&other.hash)
            .then_with(|| self.uid.cmp(&other.uid))
    }
}

impl PartialOrd for Uid {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Hash for Uid {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl Serialize for Uid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.uid)
    }
}

impl std::fmt::Display for Uid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.uid)
    }
}

impl Equivalent<Uid> for UidRef<'_> {
    fn equivalent(&self, key: &Uid) -> bool {
        self.hash == key.hash && self.uid == &*key.uid
    }
}

impl Comparable<Uid> for UidRef<'_> {
    fn compare(&self, key: &Uid) -> Ordering {
        self.hash
            .cmp(&key.hash)
            .then_with(|| self.uid.cmp(&key.uid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn borrowed_and_owned_keys_agree() {
        let names = [
            "",
            "a",
            "abcdefgh",
            "abcdefghi",
            "cluster//v1/Pod/ns/name-1",
        ];
        let mut keys: Vec<Uid> = names.iter().map(|n| Uid::new((*n).into())).collect();
        keys.sort();
        for k in &keys {
            let r = UidRef::new(k.as_str());
            assert!(r.equivalent(k));
            for other in &keys {
                assert_eq!(r.compare(other), k.cmp(other));
            }
        }
    }

    #[test]
    fn the_hash_is_fixed_and_covers_every_byte() {
        assert_eq!(uid_hash("abcdefghi"), uid_hash("abcdefghi"));
        assert_ne!(uid_hash("abcdefghi"), uid_hash("abcdefghj"));
        assert_ne!(uid_hash("abcdefgh"), uid_hash("abcdefgh\0"));
    }
}

/// An IP address as a map key. `IpAddr`'s own ordering compares byte arrays with
/// `memcmp`; this one compares integers, with the same size (24 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct IpKey {
    v6: bool,
    hi: u64,
    lo: u64,
}

impl From<std::net::IpAddr> for IpKey {
    fn from(ip: std::net::IpAddr) -> Self {
        match ip {
            std::net::IpAddr::V4(v4) => IpKey {
                v6: false,
                hi: 0,
                lo: u64::from(v4.to_bits()),
            },
            std::net::IpAddr::V6(v6) => {
                let bits = v6.to_bits();
                IpKey {
                    v6: true,
                    hi: (bits >> 64) as u64,
                    lo: bits as u64,
                }
            }
        }
    }
}

#[cfg(test)]
mod ip_tests {
    use super::IpKey;

    #[test]
    fn families_never_collide_and_order_is_numeric() {
        let v4: IpKey = "0.0.0.1".parse::<std::net::IpAddr>().unwrap().into();
        let v6: IpKey = "::1".parse::<std::net::IpAddr>().unwrap().into();
        assert_ne!(v4, v6);
        let a: IpKey = "10.0.0.2".parse::<std::net::IpAddr>().unwrap().into();
        let b: IpKey = "10.0.0.10".parse::<std::net::IpAddr>().unwrap().into();
        assert!(a < b);
        let c: IpKey = "fe80::2".parse::<std::net::IpAddr>().unwrap().into();
        let d: IpKey = "fe80::1:0".parse::<std::net::IpAddr>().unwrap().into();
        assert!(c < d);
    }
}

/// A fast hasher for the control plane's short-lived tables (the builder's working
/// sets, the xDS interner): multiply-xorshift over 8-byte words, seeded once per
/// process so that keys chosen by a tenant (namespace or service names) cannot be
/// crafted to collide everywhere.
#[derive(Debug, Clone, Copy)]
pub struct FastState {
    seed: u64,
}

/// A random number chosen once per process: the seed of [`uid_hash`] and [`FastState`].
fn process_seed() -> u64 {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SEED.get_or_init(|| {
        use std::hash::BuildHasher;
        std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64)
    })
}

impl Default for FastState {
    fn default() -> Self {
        FastState {
            seed: process_seed(),
        }
    }
}

impl std::hash::BuildHasher for FastState {
    type Hasher = FastHasher;

    fn build_hasher(&self) -> FastHasher {
        FastHasher { h: self.seed }
    }
}

/// The hasher of [`FastState`].
#[derive(Debug, Clone, Copy)]
pub struct FastHasher {
    h: u64,
}

impl FastHasher {
    #[inline]
    fn mix(&mut self, w: u64) {
        let h = (self.h ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.h = h ^ (h >> 29);
    }
}

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            self.mix(u64::from_le_bytes(b));
        }
        let rest = words.remainder();
        let mut b = [0u8; 8];
        b[..rest.len()].copy_from_slice(rest);
        // The length byte keeps "ab" + "" apart from "a" + "b".
        self.mix(u64::from_le_bytes(b) ^ ((rest.len() as u64 + 1) << 59));
    }

    fn write_u8(&mut self, i: u8) {
        self.mix(u64::from(i) | 1 << 63);
    }

    fn write_u32(&mut self, i: u32) {
        self.mix(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.mix(i);
    }

    fn write_usize(&mut self, i: usize) {
        self.mix(i as u64);
    }

    fn finish(&self) -> u64 {
        let h = self.h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^ (h >> 32)
    }
}

/// A `HashMap` with [`FastState`].
pub type FastMap<K, V> = std::collections::HashMap<K, V, FastState>;
/// A `HashSet` with [`FastState`].
pub type FastSet<T> = std::collections::HashSet<T, FastState>;

#[cfg(test)]
mod fast_tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn equal_values_hash_equal_and_neighbours_differ() {
        let s = FastState::default();
        assert_eq!(
            s.hash_one("svc-1/ns"),
            FastState::default().hash_one("svc-1/ns")
        );
        assert_ne!(s.hash_one("svc-1/ns"), s.hash_one("svc-2/ns"));
        assert_ne!(s.hash_one(("ab", "")), s.hash_one(("a", "b")));
        assert_ne!(s.hash_one("abcdefgh"), s.hash_one("abcdefgh\0"));
        let set: FastSet<String> = (0..1000).map(|i| format!("ns-{i}")).collect();
        assert_eq!(set.len(), 1000);
        assert!(set.contains("ns-999"));
    }
}
