//! Workload certificates: the control thread keeps one per identity this node serves,
//! issued by the built-in CA (a root kept in the state directory, or given by flag), and
//! renews each at half its lifetime. The set is published to the shards wait-free, as
//! snapshots are: a shard loads it once per new tunnel; live connections keep the
//! configuration they started with, so rotation never drops one.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::{info, warn};
use zpath_control::Snapshot;
use zpath_crypto::{CertifiedTls, Identity, LocalCa, WorkloadCertificate};

/// The certificates of the identities this node serves, immutable once published.
#[derive(Debug, Default)]
pub struct CertStore {
    by_identity: HashMap<Identity, Arc<CertifiedTls>>,
}

impl CertStore {
    /// The certificate (with its TLS configurations) for `identity`, if we serve it.
    pub fn get(&self, identity: &Identity) -> Option<&Arc<CertifiedTls>> {
        self.by_identity.get(identity)
    }

    /// Every identity served, with its certificate.
    pub fn iter(&self) -> impl Iterator<Item = (&Identity, &Arc<CertifiedTls>)> {
        self.by_identity.iter()
    }

    /// How many identities have a certificate.
    pub fn len(&self) -> usize {
        self.by_identity.len()
    }
}

/// The current certificate set, written by the control thread, read by shards.
pub type CertCell = zpath_control::published::Published<CertStore>;

/// The identity of a workload, if its fields form a valid SPIFFE identity.
pub fn workload_identity(wl: &zpath_control::model::Workload) -> Option<Identity> {
    Identity::new(&wl.trust_domain, &wl.namespace, &wl.service_account).ok()
}

/// Where workload certificates come from.
#[derive(Debug)]
pub enum Issuer {
    /// The built-in CA: issued on the control thread, synchronously.
    Local(Box<LocalCa>),
    /// The Istio CA (`CreateCertificate`): fetched in background tasks, with retries
    /// while the current certificate is still valid.
    Remote(Arc<zpath_control::ca_client::CaClient>),
}

/// A fetched certificate (or why it could not be fetched), for [`CertManager::install`].
pub type Fetched = (Identity, Result<WorkloadCertificate, String>);

/// Keeps the certificate set in step with the workloads this node serves.
#[derive(Debug)]
pub struct CertManager {
    issuer: Option<Issuer>,
    lifetime: Duration,
    cell: Arc<CertCell>,
    generation: u64,
    current: HashMap<Identity, Arc<CertifiedTls>>,
    renew_at: HashMap<Identity, SystemTime>,
    issued: Arc<AtomicU64>,
    in_flight: HashSet<Identity>,
    /// Identities of the workloads known at start still waiting for a certificate;
    /// `None` until the first configuration was seen with an issuer.
    startup: Option<HashSet<Identity>>,
    ready: Arc<AtomicBool>,
    fetched_tx: tokio::sync::mpsc::UnboundedSender<Fetched>,
    fetched_rx: Option<tokio::sync::mpsc::UnboundedReceiver<Fetched>>,
}

impl CertManager {
    /// A manager getting certificates valid for `lifetime` from `issuer` (`None`: set
    /// later with [`CertManager::set_issuer`]; nothing is issued until then).
    pub fn new(issuer: Option<Issuer>, lifetime: Duration, cell: Arc<CertCell>) -> Self {
        let (fetched_tx, fetched_rx) = tokio::sync::mpsc::unbounded_channel();
        Self {
            issuer,
            lifetime,
            cell,
            generation: 0,
            current: HashMap::new(),
            renew_at: HashMap::new(),
            issued: Arc::default(),
            in_flight: HashSet::new(),
            startup: None,
            ready: Arc::default(),
            fetched_tx,
            fetched_rx: Some(fetched_rx),
        }
    }

    /// Sets where certificates come from.
    pub fn set_issuer(&mut self, issuer: Issuer) {
        self.issuer = Some(issuer);
    }

    /// The receiver of background fetches (remote CA); hand what it yields to
    /// [`CertManager::install`]. Taken once.
    pub fn take_fetched(&mut self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Fetched>> {
        self.fetched_rx.take()
    }

    /// Counter of certificates issued so far (first issues and renewals).
    pub fn issued(&self) -> Arc<AtomicU64> {
        self.issued.clone()
    }

    /// True once every workload known at start has its certificate (readiness waits
    /// for it, so that the first connections do not find none).
    pub fn ready(&self) -> Arc<AtomicBool> {
        self.ready.clone()
    }

    /// Increases with every published set.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The cell the certificates are published in.
    pub fn cell(&self) -> Arc<CertCell> {
        self.cell.clone()
    }

    /// Issues a certificate for every served identity that has none or is due for
    /// renewal at `now`, forgets identities no longer served, and publishes the set if
    /// it changed. Returns how many certificates were issued.
    pub fn sync(&mut self, snapshot: &Snapshot, now: SystemTime) -> usize {
        let mut wanted: Vec<Identity> = Vec::new();
        // Only the workloads this node serves: not a walk over the whole mesh.
        for wl in snapshot.local_workloads() {
            match workload_identity(wl) {
                Some(id) => wanted.push(id),
                None => {
                    warn!(workload = %wl.uid, "workload has no valid SPIFFE identity; no certificate issued")
                }
            }
        }
        if self.startup.is_none() && self.issuer.is_some() && snapshot.generation > 0 {
            self.startup = Some(wanted.iter().cloned().collect());
        }
        if let Some(startup) = &mut self.startup {
            // A workload removed before its certificate came is no longer awaited.
            startup.retain(|id| wanted.contains(id));
        }
        let mut changed = false;
        let before = self.current.len();
        self.current.retain(|id, _| wanted.contains(id));
        self.renew_at.retain(|id, _| wanted.contains(id));
        changed |= self.current.len() != before;
        let mut issued = 0;
        for id in wanted {
            // Renewed at half the lifetime counted from the issue (the certificate's
            // notBefore is set a little earlier to absorb clock skew).
            let due = self.renew_at.get(&id).is_none_or(|at| *at <= now);
            if !due || self.in_flight.contains(&id) {
                continue;
            }
            match &self.issuer {
                None => {}
                Some(Issuer::Local(ca)) => {
                    match ca.issue(&id, self.lifetime) {
                        Ok(cert) => {
                            if self.insert(id, cert, now + self.lifetime / 2) {
                                issued += 1;
                                changed = true;
                            }
                        }
                        // The previous certificate (if any) keeps serving until it expires.
                        Err(e) => warn!(identity = %id, "cannot issue a workload certificate: {e}"),
                    }
                }
                Some(Issuer::Remote(client)) => {
                    let client = client.clone();
                    let tx = self.fetched_tx.clone();
                    let serving_until = self.current.get(&id).map(|c| c.certificate().not_after());
                    self.in_flight.insert(id.clone());
                    tokio::spawn(async move {
                        let result = client
                            .fetch_with_retry(&id, serving_until)
                            .await
                            .map_err(|e| e.to_string());
                        let _ = tx.send((id, result));
                    });
                }
            }
        }
        self.issued.fetch_add(issued as u64, Ordering::Relaxed);
        if changed {
            self.publish();
        }
        self.update_ready();
        issued
    }

    /// Marks readiness once no workload known at start waits for its certificate.
    fn update_ready(&mut self) {
        let Some(startup) = &mut self.startup else {
            return;
        };
        startup.retain(|id| !self.current.contains_key(id));
        if startup.is_empty() && !self.ready.load(Ordering::Relaxed) {
            info!("every workload known at start has its certificate");
            self.ready.store(true, Ordering::Relaxed);
        }
    }

    /// Takes in a certificate fetched from the remote CA (or logs why it failed; the
    /// current one, if any, keeps serving and the fetch is retried in a few seconds).
    pub fn install(&mut self, (id, result): Fetched, now: SystemTime) {
        self.in_flight.remove(&id);
        match result {
            Ok(cert) => {
                let renew = cert.refresh_at();
                if self.insert(id, cert, renew) {
                    self.issued.fetch_add(1, Ordering::Relaxed);
                    self.publish();
                    self.update_ready();
                }
            }
            Err(e) => {
                warn!(identity = %id, "cannot get a workload certificate from the CA: {e}");
                self.renew_at.insert(id, now + Duration::from_secs(5));
            }
        }
    }

    /// Stores a certificate for `id` (renewed at `renew`); false if it is unusable.
    fn insert(&mut self, id: Identity, cert: WorkloadCertificate, renew: SystemTime) -> bool {
        match CertifiedTls::new(Arc::new(cert)) {
            Ok(c) => {
                info!(identity = %id, lifetime = ?self.lifetime, "installed workload certificate");
                self.renew_at.insert(id.clone(), renew);
                self.current.insert(id, Arc::new(c));
                true
            }
            Err(e) => {
                warn!(identity = %id, "workload certificate unusable: {e}");
                false
            }
        }
    }

    fn publish(&mut self) {
        self.generation += 1;
        self.cell.publish(CertStore {
            by_identity: self.current.clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(yaml: &str, generation: u64) -> Snapshot {
        let config = zpath_control::LocalConfig::parse(yaml).unwrap();
        Snapshot::from_local(&config, "node-a", generation)
    }

    const TWO_LOCAL: &str = "workloads:
- name: a
  namespace: default
  serviceAccount: a
  workloadIps: [\"10.0.0.1\"]
  node: node-a
- name: b
  namespace: default
  serviceAccount: b
  workloadIps: [\"10.0.0.2\"]
  node: node-a
";

    #[test]
    fn ready_only_once_the_workloads_known_at_start_have_certificates() {
        let cell = Arc::new(CertCell::default());
        let mut m = CertManager::new(None, Duration::from_secs(3600), cell);
        let ready = m.ready();
        let now = SystemTime::now();
        // No issuer yet (a remote CA is set up later): nothing issued, not ready.
        m.sync(&snapshot(TWO_LOCAL, 1), now);
        assert!(!ready.load(Ordering::Relaxed));
        m.set_issuer(Issuer::Local(Box::new(LocalCa::generate().unwrap())));
        assert_eq!(m.sync(&snapshot(TWO_LOCAL, 1), now), 2);
        assert!(ready.load(Ordering::Relaxed));
    }

    #[test]
    fn a_remote_certificate_that_fails_keeps_readiness_false_until_one_arrives() {
        let cell = Arc::new(CertCell::default());
        let mut m = CertManager::new(None, Duration::from_secs(3600), cell.clone());
        let ready = m.ready();
        let ca = LocalCa::generate().unwrap();
        // Stands in for the remote CA: the identities are wanted, answers come later.
        m.startup = Some(
            ["a", "b"]
                .map(|sa| Identity::new("cluster.local", "default", sa).unwrap())
                .into(),
        );
        let a = Identity::new("cluster.local", "default", "a").unwrap();
        let b = Identity::new("cluster.local", "default", "b").unwrap();
        let now = SystemTime::now();
        m.install((a.clone(), Err("CA down".into())), now);
        assert!(!ready.load(Ordering::Relaxed));
        m.install(
            (
                a.clone(),
                Ok(ca.issue(&a, Duration::from_secs(3600)).unwrap()),
            ),
            now,
        );
        assert!(!ready.load(Ordering::Relaxed), "b still waits");
        m.install(
            (
                b.clone(),
                Ok(ca.issue(&b, Duration::from_secs(3600)).unwrap()),
            ),
            now,
        );
        assert!(ready.load(Ordering::Relaxed));
        assert_eq!(cell.load().len(), 2);
    }

    #[test]
    fn a_workload_removed_before_its_certificate_is_no_longer_awaited() {
        let cell = Arc::new(CertCell::default());
        let mut m = CertManager::new(None, Duration::from_secs(3600), cell);
        let ready = m.ready();
        m.startup = Some([Identity::new("cluster.local", "default", "gone").unwrap()].into());
        m.set_issuer(Issuer::Local(Box::new(LocalCa::generate().unwrap())));
        m.sync(&snapshot(TWO_LOCAL, 2), SystemTime::now());
        assert!(ready.load(Ordering::Relaxed));
    }
}
