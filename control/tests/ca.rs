//! The CA client against an in-process Istio CA over real loopback gRPC.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use support::ca_server::{unused_addr, Mode, TestCa, TestRoot};
use zpath_control::ca_client::{refresh_at, CaClient, CaClientConfig, CaError};
use zpath_control::xds::BackoffConfig;
use zpath_crypto::Identity;

const ID: &str = "spiffe://cluster.local/ns/default/sa/echo";

fn id() -> Identity {
    ID.parse().unwrap()
}

struct Setup {
    root: Arc<TestRoot>,
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        Setup {
            root: Arc::new(TestRoot::new("test mesh root")),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn config(&self, url: String) -> CaClientConfig {
        let roots = self.root.write(self.dir.path(), "root.pem");
        let token = self.dir.path().join("token");
        if !token.exists() {
            std::fs::write(&token, "ca-token").unwrap();
        }
        let mut c = CaClientConfig::new(url, roots);
        c.token_file = Some(token);
        c.headers = vec![("ClusterID".into(), "Kubernetes".into())];
        c.cert_lifetime = Duration::from_secs(3600);
        c.backoff = BackoffConfig {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(50),
        };
        c.request_timeout = Duration::from_secs(5);
        c
    }
}

#[tokio::test]
async fn csr_is_answered_with_a_chain_that_verifies() {
    let s = Setup::new();
    let ca = TestCa::start(s.root.clone()).await;
    let client = CaClient::new(s.config(ca.url())).unwrap();
    let cert = client.fetch(&id()).await.unwrap();

    assert_eq!(cert.identity(), &id());
    assert_eq!(
        cert.chain().len(),
        1,
        "the root copy the CA appends is dropped"
    );
    assert!(!cert.private_key_der().is_empty());
    let lifetime = cert.not_after().duration_since(cert.not_before()).unwrap();
    assert_eq!(
        lifetime,
        Duration::from_secs(3600 + 60),
        "CA backdates by 60 s"
    );
    assert_eq!(
        cert.refresh_at(),
        refresh_at(cert.not_before(), cert.not_after())
    );
    assert!(!cert.is_expired_at(SystemTime::now()));

    let seen = ca.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].authorization.as_deref(), Some("Bearer ca-token"));
    assert_eq!(seen[0].validity_duration, 3600);
    assert_eq!(seen[0].impersonated.as_deref(), Some(ID));
    assert_eq!(seen[0].san, vec![ID.to_string()]);
    ca.stop().await;
}

#[tokio::test]
async fn token_is_reread_for_every_request() {
    let s = Setup::new();
    let ca = TestCa::start(s.root.clone()).await;
    let client = CaClient::new(s.config(ca.url())).unwrap();
    client.fetch(&id()).await.unwrap();
    std::fs::write(s.dir.path().join("token"), "rotated-token\n").unwrap();
    client.fetch(&id()).await.unwrap();
    let seen = ca.seen();
    assert_eq!(
        seen[1].authorization.as_deref(),
        Some("Bearer rotated-token")
    );
    ca.stop().await;
}

#[tokio::test]
async fn refused_csr_is_a_clear_error() {
    let s = Setup::new();
    let ca = TestCa::start(s.root.clone()).await;
    ca.state.lock().unwrap().mode = Mode::Refuse;
    let client = CaClient::new(s.config(ca.url())).unwrap();
    let err = client.fetch(&id()).await.unwrap_err();
    match &err {
        CaError::Refused {
            identity,
            code,
            message,
        } => {
            assert_eq!(identity, ID);
            assert_eq!(*code, tonic::Code::PermissionDenied);
            assert_eq!(message, "identity not allowed for this token");
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("CA refused the certificate for spiffe://cluster.local/ns/default/sa/echo"),
        "{text}"
    );
    assert!(text.contains("--ca-token-file"), "{text}");
    ca.stop().await;
}

#[tokio::test]
async fn chain_from_an_untrusted_root_is_rejected() {
    let s = Setup::new();
    let ca = TestCa::start(s.root.clone()).await;
    ca.state.lock().unwrap().wrong_root = Some(Arc::new(TestRoot::new("rogue root")));
    let client = CaClient::new(s.config(ca.url())).unwrap();
    let err = client.fetch(&id()).await.unwrap_err();
    assert!(
        matches!(&err, CaError::InvalidChain { reason, .. } if reason.contains("rejected")),
        "{err}"
    );
    ca.stop().await;
}

#[tokio::test]
async fn certificate_for_another_identity_is_rejected() {
    let s = Setup::new();
    let ca = TestCa::start(s.root.clone()).await;
    ca.state.lock().unwrap().mode =
        Mode::SignAs("spiffe://cluster.local/ns/default/sa/other".into());
    let client = CaClient::new(s.config(ca.url())).unwrap();
    let err = client.fetch(&id()).await.unwrap_err();
    assert!(
        matches!(&err, CaError::InvalidChain { reason, .. } if reason.contains("sa/other")),
        "{err}"
    );
    ca.stop().await;
}

#[tokio::test]
async fn ca_failures_are_retried_while_the_current_certificate_is_valid() {
    let s = Setup::new();
    let ca = TestCa::start(s.root.clone()).await;
    let client = CaClient::new(s.config(ca.url())).unwrap();
    let current = client.fetch(&id()).await.unwrap();

    ca.state.lock().unwrap().fail_next = 5;
    let renewed = client
        .fetch_with_retry(&id(), Some(current.not_after()))
        .await
        .unwrap();
    assert_eq!(ca.seen().len(), 1 + 6, "five failures then a success");
    assert_ne!(renewed.chain()[0], current.chain()[0]);
    ca.stop().await;
}

#[tokio::test]
async fn without_a_valid_certificate_retries_are_bounded() {
    let s = Setup::new();
    let ca = TestCa::start(s.root.clone()).await;
    ca.state.lock().unwrap().fail_next = 100;
    let mut cfg = s.config(ca.url());
    cfg.attempts_without_certificate = 3;
    let client = CaClient::new(cfg).unwrap();
    let expired_at = SystemTime::UNIX_EPOCH + Duration::from_secs(1);
    let err = client
        .fetch_with_retry(&id(), Some(expired_at))
        .await
        .unwrap_err();
    assert!(matches!(err, CaError::Unavailable { .. }), "{err}");
    assert_eq!(ca.seen().len(), 3);
    ca.stop().await;
}

#[tokio::test]
async fn ca_outage_then_recovery() {
    let s = Setup::new();
    let addr = unused_addr().await;
    let client = CaClient::new(s.config(format!("http://{addr}"))).unwrap();

    let err = client.fetch(&id()).await.unwrap_err();
    assert!(matches!(err, CaError::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains("--ca-address"), "{err}");

    let ca = TestCa::start_on(s.root.clone(), addr).await;
    let cert = client.fetch_with_retry(&id(), None).await.unwrap();
    assert_eq!(cert.identity(), &id());
    assert!(!ca.seen().is_empty());
    ca.stop().await;

    // Down again: the valid certificate keeps being used while retries go on; the
    // CA comes back and the retry loop returns a fresh one.
    let err = client.fetch(&id()).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    let identity = id();
    let retry = client.fetch_with_retry(&identity, Some(cert.not_after()));
    let restart = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        TestCa::start_on(s.root.clone(), addr).await
    };
    let (renewed, ca) = tokio::join!(retry, restart);
    let renewed = renewed.unwrap();
    assert_ne!(renewed.chain()[0], cert.chain()[0]);
    ca.stop().await;
}

#[tokio::test]
async fn concurrent_fetches_are_limited() {
    let s = Setup::new();
    let ca = TestCa::start(s.root.clone()).await;
    ca.state.lock().unwrap().delay = Duration::from_millis(30);
    let mut cfg = s.config(ca.url());
    cfg.max_concurrent_fetches = 2;
    let client = CaClient::new(cfg).unwrap();
    let ids: Vec<Identity> = (0..8)
        .map(|i| {
            format!("spiffe://cluster.local/ns/default/sa/sa{i}")
                .parse()
                .unwrap()
        })
        .collect();
    let results = futures_join_all(ids.iter().map(|id| client.fetch(id))).await;
    assert!(results.iter().all(Result::is_ok));
    let max = ca.max_in_flight.load(Ordering::SeqCst);
    assert!((1..=2).contains(&max), "max in flight {max}");
    assert_eq!(ca.seen().len(), 8);
    ca.stop().await;
}

/// Polls all futures concurrently on this task.
async fn futures_join_all<F: std::future::Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futs {
        set.push(Box::pin(f));
    }
    let mut out: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|o| o.unwrap()).collect()
}
