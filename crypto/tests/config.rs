//! Configuration building and the per-shard client configuration cache.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use zpath_crypto::{ClientConfigCache, Error, LocalCa};

#[test]
fn cache_reuses_configs_and_follows_rotation() {
    let ca = LocalCa::generate().unwrap();
    let ours = certified(ca.issue(&id(CLIENT_ID), Duration::from_secs(600)).unwrap());
    let mut cache = ClientConfigCache::new(8);
    let a = cache.get(&ours, &[id(SERVER_ID)]).unwrap();
    let b = cache.get(&ours, &[id(SERVER_ID)]).unwrap();
    assert!(a.same_as(&b));
    let other = cache
        .get(&ours, &[id("spiffe://cluster.local/ns/x/sa/y")])
        .unwrap();
    assert!(!other.same_as(&a));
    assert_eq!(cache.len(), 2);

    // Rotation: a new certificate gives a new configuration for the same key.
    let rotated = certified(ca.issue(&id(CLIENT_ID), Duration::from_secs(600)).unwrap());
    let c = cache.get(&rotated, &[id(SERVER_ID)]).unwrap();
    assert!(!c.same_as(&a));
    assert_eq!(cache.len(), 2);
    assert!(cache.get(&rotated, &[id(SERVER_ID)]).unwrap().same_as(&c));
}

#[test]
fn cache_stays_bounded() {
    let ca = LocalCa::generate().unwrap();
    let ours = certified(ca.issue(&id(CLIENT_ID), Duration::from_secs(600)).unwrap());
    let mut cache = ClientConfigCache::new(4);
    for i in 0..20 {
        let peer = id(&format!("spiffe://cluster.local/ns/n{i}/sa/s"));
        cache.get(&ours, &[peer]).unwrap();
        assert!(cache.len() <= 4);
    }
    assert!(!cache.is_empty());
}

#[test]
fn client_config_needs_an_expected_identity() {
    let ca = LocalCa::generate().unwrap();
    let ours = certified(ca.issue(&id(CLIENT_ID), Duration::from_secs(600)).unwrap());
    let err = ours.client_config(&[]).unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
}

#[test]
fn server_config_is_shared_not_rebuilt() {
    let ca = LocalCa::generate().unwrap();
    let ours = certified(ca.issue(&id(SERVER_ID), Duration::from_secs(600)).unwrap());
    assert!(ours.server_config().same_as(&ours.server_config()));
}
