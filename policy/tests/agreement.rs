//! The compiled evaluator agrees with the reference evaluator on random policy sets,
//! destinations and connections (decoded from random bytes by
//! `zpath_policy::fuzzing`, which also drives the fuzz target).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};

/// Cases in the default run; each case checks several (destination, connection)
/// pairs, so evaluations compared are a multiple of this.
const CASES: u32 = 100_000;

proptest! {
    #![proptest_config(Config {
        cases: CASES,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..Config::default()
    })]

    #[test]
    fn compiled_agrees_with_reference(data in proptest::collection::vec(any::<u8>(), 0..384)) {
        let evaluated = zpath_policy::fuzzing::run(&data);
        prop_assert!(evaluated >= 1);
    }
}

/// The generator must produce interesting cases, or agreement means little: over a
/// fixed sample, every kind of outcome must occur.
#[test]
fn generated_cases_cover_every_outcome() {
    use zpath_policy::reference::{self, VerdictDecision as V};
    use zpath_policy::{Conn, Peer, Target};

    let mut seen = [0usize; 6];
    let mut dry = 0;
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..4000 {
        let data: Vec<u8> = (0..256)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                (rng >> 24) as u8
            })
            .collect();
        let case = zpath_policy::fuzzing::decode(&data);
        for (ns, keys) in &case.targets {
            let target = Target {
                namespace: ns.as_str(),
                policies: keys.as_slice(),
            };
            for c in &case.conns {
                let conn = Conn {
                    src_ip: c.src,
                    dst_ip: c.dst,
                    dst_port: c.port,
                    peer: c.identity.as_deref().and_then(|i| Peer::parse(i).ok()),
                };
                let v = reference::evaluate(&case.policies, &target, &conn);
                let slot = match v.decision {
                    V::Allow { by: None, .. } => 0,
                    V::Allow { by: Some(_), .. } => 1,
                    V::MissingPolicy(_) => 2,
                    V::InvalidPolicy(_) => 3,
                    V::ExplicitDeny(..) => 4,
                    V::NotAllowed => 5,
                    V::StaleTarget => unreachable!("the reference has no snapshots"),
                };
                seen[slot] += 1;
                dry += usize::from(v.dry_run.is_some());
            }
        }
    }
    assert!(seen.iter().all(|&n| n >= 50), "outcome histogram {seen:?}");
    assert!(dry >= 50, "dry-run reports {dry}");
}
