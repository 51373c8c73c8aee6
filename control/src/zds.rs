//! ZDS, the protocol istio-cni uses to hand the node proxy each ambient pod's network
//! namespace, without I/O: what a received packet means ([`decode`]), what to send
//! ([`hello`], [`ack`]), and which pods to start and stop as the CNI's requests arrive
//! ([`Pods`]). The socket itself (a unix `SOCK_SEQPACKET`, one message per packet, the
//! namespace descriptor in `SCM_RIGHTS`) belongs to the caller.
//!
//! Bad input fails closed: a request that does not decode, arrives truncated, or
//! carries the wrong number of descriptors is an error (the caller answers it with an
//! error `Ack` and closes every descriptor that came with it); nothing is started.

use std::collections::{HashMap, HashSet};

use prost::Message;

use crate::proto::istio::workload::zds as wire;
use wire::workload_request::Payload;

/// The largest request zpath reads: an `AddWorkload` is a uid and three names, a few
/// hundred bytes; a packet longer than the read buffer arrives truncated and is refused.
pub const MAX_REQUEST: usize = 4096;

/// Who a pod is, as the CNI names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    /// Pod name.
    pub name: String,
    /// Pod namespace.
    pub namespace: String,
    /// Its service account.
    pub service_account: String,
}

/// One request of the CNI, with the descriptor it carried (`F`: an owned fd).
#[derive(Debug, PartialEq, Eq)]
pub enum Request<F> {
    /// Serve this pod: its uid, who it is, and its network namespace.
    Add {
        /// The pod's uid (the workload uid's Kubernetes part).
        uid: String,
        /// Its name, namespace and service account.
        info: PodInfo,
        /// Its network namespace.
        netns: F,
    },
    /// Keep serving this pod (sent instead of `Add` while the CNI replays its pods to a
    /// proxy that may still have it); only before the snapshot ends.
    Keep {
        /// The pod's uid.
        uid: String,
    },
    /// Stop serving this pod.
    Del {
        /// The pod's uid.
        uid: String,
    },
    /// Every pod the CNI knows has been sent.
    SnapshotSent,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZdsError {
    /// The packet was longer than the read buffer, or its control data was cut.
    #[error("truncated ZDS message")]
    Truncated,
    /// The bytes are not a `WorkloadRequest`.
    #[error("malformed ZDS request: {0}")]
    Malformed(String),
    /// A request with no payload (or one this version does not know).
    #[error("ZDS request without a known payload")]
    NoPayload,
    /// An `add` whose uid is empty.
    #[error("ZDS add without a uid")]
    NoUid,
    /// An `add` without `workload_info`.
    #[error("ZDS add of {0} without workload_info")]
    NoWorkloadInfo(String),
    /// An `add` that did not carry exactly one descriptor, or another request that
    /// carried any.
    #[error("ZDS {request} with {fds} descriptors (expected {expected})")]
    Descriptors {
        /// Which request.
        request: &'static str,
        /// How many came.
        fds: usize,
        /// How many it needs.
        expected: usize,
    },
    /// A request out of order (a `keep` or a second `snapshot_sent` after the snapshot).
    #[error("ZDS protocol error: {0}")]
    Protocol(&'static str),
}

/// Reads one received packet: its bytes, the descriptors that came with it, and
/// whether the kernel cut the packet or its control data (`MSG_TRUNC`/`MSG_CTRUNC`).
/// On error the descriptors are dropped (closed) here.
pub fn decode<F>(bytes: &[u8], mut fds: Vec<F>, truncated: bool) -> Result<Request<F>, ZdsError> {
    if truncated {
        return Err(ZdsError::Truncated);
    }
    let request =
        wire::WorkloadRequest::decode(bytes).map_err(|e| ZdsError::Malformed(e.to_string()))?;
    let descriptors = |request: &'static str, fds: usize, expected: usize| {
        Err(ZdsError::Descriptors {
            request,
            fds,
            expected,
        })
    };
    let (name, request) = match request.payload.ok_or(ZdsError::NoPayload)? {
        Payload::Add(add) => {
            let count = fds.len();
            let netns = match (fds.pop(), fds.is_empty()) {
                (Some(fd), true) => fd,
                _ => return descriptors("add", count, 1),
            };
            if add.uid.is_empty() {
                return Err(ZdsError::NoUid);
            }
            let info = add
                .workload_info
                .ok_or_else(|| ZdsError::NoWorkloadInfo(add.uid.clone()))?;
            let info = PodInfo {
                name: info.name,
                namespace: info.namespace,
                service_account: info.service_account,
            };
            return Ok(Request::Add {
                uid: add.uid,
                info,
                netns,
            });
        }
        Payload::Keep(k) => ("keep", Request::Keep { uid: k.uid }),
        Payload::Del(d) => ("del", Request::Del { uid: d.uid }),
        Payload::SnapshotSent(_) => ("snapshot_sent", Request::SnapshotSent),
    };
    if !fds.is_empty() {
        return descriptors(name, fds.len(), 0);
    }
    Ok(request)
}

/// The first packet the proxy sends: `ZdsHello { version: V1 }`.
pub fn hello() -> Vec<u8> {
    wire::ZdsHello {
        version: wire::Version::V1 as i32,
    }
    .encode_to_vec()
}

/// The answer to one request: an empty `Ack` when it was carried out, else the error.
pub fn ack(outcome: Result<(), &str>) -> Vec<u8> {
    wire::WorkloadResponse {
        payload: Some(wire::workload_response::Payload::Ack(wire::Ack {
            error: outcome.err().unwrap_or_default().to_string(),
        })),
    }
    .encode_to_vec()
}

/// What the caller must do for a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Change<F> {
    /// Nothing (a pod already served, a keep, a del before the snapshot ends).
    None,
    /// Start serving this pod (open its listeners), then [`Pods::started`] it.
    Start {
        /// The pod's uid.
        uid: String,
        /// Who it is.
        info: PodInfo,
        /// Its network namespace.
        netns: F,
    },
    /// Stop serving these pods (drain their connections, close their listeners).
    Stop(Vec<(String, PodSlot)>),
}

/// Where a served pod is in the caller's own records (an index, a key).
pub type PodSlot = u64;

/// The pods the proxy serves, and the state of the CNI's snapshot. One per ZDS
/// session; call [`Pods::connected`] on every (re)connection.
#[derive(Debug, Default)]
pub struct Pods {
    served: HashMap<String, PodSlot>,
    /// Pods named by the current connection before its snapshot ended.
    named: HashSet<String>,
    snapshot_done: bool,
}

impl Pods {
    /// A new connection: the CNI replays its pods; those it does not name before
    /// `snapshot_sent` are stopped then.
    pub fn connected(&mut self) {
        self.named.clear();
        self.snapshot_done = false;
    }

    /// Whether the current connection's snapshot has ended (the proxy is ready).
    pub fn snapshot_done(&self) -> bool {
        self.snapshot_done
    }

    /// How many pods are served.
    pub fn len(&self) -> usize {
        self.served.len()
    }

    /// Whether no pod is served.
    pub fn is_empty(&self) -> bool {
        self.served.is_empty()
    }

    /// Whether the pod `uid` is served.
    pub fn serves(&self, uid: &str) -> bool {
        self.served.contains_key(uid)
    }

    /// Records that the pod `uid` of a [`Change::Start`] is now served, at `slot`.
    pub fn started(&mut self, uid: String, slot: PodSlot) {
        self.served.insert(uid, slot);
    }

    /// What `request` asks of the caller. An error is answered with an error `Ack`
    /// and changes nothing.
    pub fn handle<F>(&mut self, request: Request<F>) -> Result<Change<F>, ZdsError> {
        match request {
            Request::Add { uid, info, netns } => {
                if !self.snapshot_done {
                    self.named.insert(uid.clone());
                }
                if self.served.contains_key(&uid) {
                    // Already served (a replay after a reconnect): nothing to do; the
                    // new descriptor is closed with the request.
                    return Ok(Change::None);
                }
                Ok(Change::Start { uid, info, netns })
            }
            Request::Keep { uid } => {
                if self.snapshot_done {
                    return Err(ZdsError::Protocol("keep after the snapshot ended"));
                }
                self.named.insert(uid);
                Ok(Change::None)
            }
            Request::Del { uid } => {
                if !self.snapshot_done {
                    // Not named: the snapshot's end stops it.
                    self.named.remove(&uid);
                    return Ok(Change::None);
                }
                Ok(match self.served.remove_entry(&uid) {
                    Some(gone) => Change::Stop(vec![gone]),
                    None => Change::None,
                })
            }
            Request::SnapshotSent => {
                if self.snapshot_done {
                    return Err(ZdsError::Protocol("a second snapshot_sent"));
                }
                self.snapshot_done = true;
                let named = std::mem::take(&mut self.named);
                let (kept, gone): (HashMap<_, _>, HashMap<_, _>) = std::mem::take(&mut self.served)
                    .into_iter()
                    .partition(|(uid, _)| named.contains(uid));
                self.served = kept;
                Ok(Change::Stop(gone.into_iter().collect()))
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn info() -> wire::WorkloadInfo {
        wire::WorkloadInfo {
            name: "web-0".into(),
            namespace: "shop".into(),
            service_account: "web".into(),
        }
    }

    fn add(uid: &str) -> Vec<u8> {
        wire::WorkloadRequest {
            payload: Some(Payload::Add(wire::AddWorkload {
                uid: uid.into(),
                workload_info: Some(info()),
            })),
        }
        .encode_to_vec()
    }

    fn request(payload: Payload) -> Vec<u8> {
        wire::WorkloadRequest {
            payload: Some(payload),
        }
        .encode_to_vec()
    }

    fn del(uid: &str) -> Vec<u8> {
        request(Payload::Del(wire::DelWorkload { uid: uid.into() }))
    }

    fn keep(uid: &str) -> Vec<u8> {
        request(Payload::Keep(wire::KeepWorkload { uid: uid.into() }))
    }

    fn snapshot_sent() -> Vec<u8> {
        request(Payload::SnapshotSent(wire::SnapshotSent {}))
    }

    /// Feeds `bytes` (with one descriptor, `fd`, for an add) to `pods`; a start is
    /// recorded at slot `fd`.
    fn feed(pods: &mut Pods, bytes: &[u8], fd: Option<u64>) -> Result<Change<u64>, ZdsError> {
        let change = pods.handle(decode(bytes, fd.into_iter().collect(), false)?)?;
        if let Change::Start { uid, netns, .. } = &change {
            pods.started(uid.clone(), *netns);
        }
        Ok(change)
    }

    #[test]
    fn an_add_carries_its_pod_and_one_descriptor() {
        let got = decode(&add("uid-1"), vec![7], false).unwrap();
        assert_eq!(
            got,
            Request::Add {
                uid: "uid-1".into(),
                info: PodInfo {
                    name: "web-0".into(),
                    namespace: "shop".into(),
                    service_account: "web".into()
                },
                netns: 7
            }
        );
    }

    #[test]
    fn wrong_descriptors_truncation_and_garbage_are_refused() {
        let refused =
            |bytes: &[u8], fds: Vec<u8>, truncated| decode(bytes, fds, truncated).unwrap_err();
        assert!(matches!(
            refused(&add("u"), vec![], false),
            ZdsError::Descriptors { fds: 0, .. }
        ));
        assert!(matches!(
            refused(&add("u"), vec![1, 2], false),
            ZdsError::Descriptors { fds: 2, .. }
        ));
        assert!(matches!(
            refused(&del("u"), vec![1], false),
            ZdsError::Descriptors { expected: 0, .. }
        ));
        assert_eq!(refused(&add("u"), vec![1], true), ZdsError::Truncated);
        assert_eq!(refused(&add(""), vec![1], false), ZdsError::NoUid);
        assert!(matches!(
            refused(&[0xff, 0xff], vec![], false),
            ZdsError::Malformed(_)
        ));
        assert_eq!(refused(&[], vec![], false), ZdsError::NoPayload);
        let no_info = request(Payload::Add(wire::AddWorkload {
            uid: "u".into(),
            workload_info: None,
        }));
        assert_eq!(
            refused(&no_info, vec![1], false),
            ZdsError::NoWorkloadInfo("u".into())
        );
    }

    #[test]
    fn hello_and_acks_are_istios_messages() {
        let h = wire::ZdsHello::decode(&hello()[..]).unwrap();
        assert_eq!(h.version, wire::Version::V1 as i32);
        let ok = wire::WorkloadResponse::decode(&ack(Ok(()))[..]).unwrap();
        let failed = wire::WorkloadResponse::decode(&ack(Err("no netns"))[..]).unwrap();
        let error = |r: wire::WorkloadResponse| match r.payload {
            Some(wire::workload_response::Payload::Ack(a)) => a.error,
            None => panic!("no ack"),
        };
        assert_eq!(error(ok), "");
        assert_eq!(error(failed), "no netns");
    }

    #[test]
    fn pods_not_named_again_before_the_snapshot_ends_are_stopped() {
        let mut pods = Pods::default();
        pods.connected();
        assert!(matches!(
            feed(&mut pods, &add("a"), Some(1)),
            Ok(Change::Start { .. })
        ));
        assert!(matches!(
            feed(&mut pods, &add("b"), Some(2)),
            Ok(Change::Start { .. })
        ));
        assert!(matches!(
            feed(&mut pods, &add("c"), Some(3)),
            Ok(Change::Start { .. })
        ));
        assert_eq!(
            feed(&mut pods, &snapshot_sent(), None),
            Ok(Change::Stop(vec![]))
        );
        assert!(pods.snapshot_done());
        // The CNI restarts: it replays a (add), b (keep); c is gone.
        pods.connected();
        assert!(!pods.snapshot_done());
        assert_eq!(feed(&mut pods, &add("a"), Some(4)), Ok(Change::None));
        assert_eq!(feed(&mut pods, &keep("b"), None), Ok(Change::None));
        assert_eq!(
            feed(&mut pods, &snapshot_sent(), None),
            Ok(Change::Stop(vec![("c".into(), 3)]))
        );
        assert_eq!(pods.len(), 2);
        assert!(pods.serves("a") && pods.serves("b") && !pods.serves("c"));
    }

    #[test]
    fn del_stops_after_the_snapshot_and_unnames_before_it() {
        let mut pods = Pods::default();
        pods.connected();
        feed(&mut pods, &add("a"), Some(1)).unwrap();
        feed(&mut pods, &add("b"), Some(2)).unwrap();
        // Before the snapshot ends, a del leaves the pod to the snapshot's end.
        assert_eq!(feed(&mut pods, &del("b"), None), Ok(Change::None));
        assert_eq!(
            feed(&mut pods, &snapshot_sent(), None),
            Ok(Change::Stop(vec![("b".into(), 2)]))
        );
        assert_eq!(
            feed(&mut pods, &del("a"), None),
            Ok(Change::Stop(vec![("a".into(), 1)]))
        );
        assert_eq!(feed(&mut pods, &del("unknown"), None), Ok(Change::None));
        assert!(pods.is_empty());
    }

    #[test]
    fn out_of_order_requests_are_protocol_errors() {
        let mut pods = Pods::default();
        pods.connected();
        feed(&mut pods, &snapshot_sent(), None).unwrap();
        assert!(matches!(
            feed(&mut pods, &snapshot_sent(), None),
            Err(ZdsError::Protocol(_))
        ));
        assert!(matches!(
            feed(&mut pods, &keep("a"), None),
            Err(ZdsError::Protocol(_))
        ));
    }

    #[test]
    fn a_start_that_failed_is_not_served_and_is_asked_again() {
        let mut pods = Pods::default();
        pods.connected();
        let change = pods
            .handle(decode(&add("a"), vec![1u64], false).unwrap())
            .unwrap();
        assert!(matches!(change, Change::Start { .. }));
        // The caller could not open its listeners: it answers an error, records nothing.
        assert!(!pods.serves("a"));
        assert!(matches!(
            feed(&mut pods, &add("a"), Some(2)),
            Ok(Change::Start { .. })
        ));
    }
}
