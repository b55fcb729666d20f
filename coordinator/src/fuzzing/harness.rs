//! The `messages` harness: a coordinator's core driven by fuzzed operations, with a store
//! and a session per node kept as the server keeps them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use strait_pki::{Fingerprint, Identity, Role};
use strait_proto::map::NetworkMap;
use strait_proto::msg::Registration;

use super::{wg_key, Reader, NAMES, SERIALS, SITES};
use crate::config::Config;
use crate::mesh::{CoreError, IssuedCert, Mesh, NodeKey, NodeView, Persisted, StoreOp, Views};

/// What a session holds for one node: the view it last sent from, and the agent's map.
pub(super) struct Session {
    pub(super) view: NodeView,
    pub(super) map: NetworkMap,
}

pub(super) struct Harness {
    pub(super) config: Arc<Config>,
    pub(super) mesh: Mesh,
    /// What the store ops wrote.
    pub(super) store: Persisted,
    pub(super) sessions: BTreeMap<NodeKey, Session>,
    pub(super) version: u64,
    /// The views at the last check.
    pub(super) views: Arc<Views>,
    pub(super) now: u64,
}

impl Harness {
    pub(super) fn new(config: Arc<Config>) -> Harness {
        Harness {
            mesh: Mesh::new(config.clone(), Persisted::default()),
            config,
            store: Persisted::default(),
            sessions: BTreeMap::new(),
            version: 0,
            views: Arc::new(Views::default()),
            now: 1_000,
        }
    }

    pub(super) fn persist(&mut self, ops: &[StoreOp]) {
        let p = &mut self.store;
        for op in ops {
            match op {
                StoreOp::PutNode(n) => {
                    p.nodes.retain(|x| x.key() != n.key());
                    p.nodes.push(n.clone());
                }
                StoreOp::DeleteNode { site, name } => {
                    p.nodes.retain(|x| x.site != *site || x.name != *name)
                }
                StoreOp::PutToken(t) => {
                    p.tokens.retain(|x| x.id != t.id);
                    p.tokens.push(t.clone());
                }
                StoreOp::PutRevocation(r) => p.revocations.push(r.clone()),
                StoreOp::PutIssued(c) => p.issued.push(c.clone()),
                StoreOp::SetVersion(v) => p.version = *v,
            }
        }
    }

    /// A refusal leaves everything as it was.
    pub(super) fn refused(&self, e: &CoreError, version: u64) {
        assert!(!e.to_string().trim().is_empty(), "an empty error message");
        let _ = e.code();
        assert_eq!(
            self.mesh.version(),
            version,
            "a refused operation moved the version"
        );
    }

    pub(super) fn register(&mut self, id: &Identity, reg: &Registration, serial: &str, now: u64) {
        let version = self.mesh.version();
        match self
            .mesh
            .register(id, reg, serial, now.saturating_add(86_400), now)
        {
            Ok((registered, ops)) => {
                self.persist(&ops);
                let key = (
                    id.site().unwrap_or_default().to_string(),
                    id.name().to_string(),
                );
                let node = self.mesh.node(&key).expect("a registered node is missing");
                assert_eq!(node.role, id.role(), "a name changed hands between roles");
                assert_eq!(node.overlay_ip, registered.overlay_ip);
                assert_eq!(node.refused, registered.refused);
                assert!(node.online);
                assert!(
                    node.accepted.len() + node.refused.len() <= reg.prefixes.len(),
                    "more prefixes accepted and refused than advertised"
                );
            }
            Err(e) => self.refused(&e, version),
        }
    }

    pub(super) fn step(&mut self, r: &mut Reader<'_>) {
        let version = self.mesh.version();
        match r.u8() % 13 {
            0 => {
                let (site, name) = r.key();
                let role = r.pick(&[Role::Gateway, Role::Member, Role::Gateway, Role::Operator]);
                let id = if role.has_site() {
                    Identity::node(&self.config.mesh, &site, &name, role)
                } else {
                    Identity::service(&self.config.mesh, &name, role)
                }
                .expect("constant labels");
                let reg = r.registration();
                let serial = r.pick(&SERIALS);
                self.register(&id, &reg, serial, self.now);
            }
            1 => {
                let key = r.key();
                let map_version = r.u64();
                let known = self.mesh.node(&key).is_some();
                let ops = self.mesh.heartbeat(&key, map_version, self.now);
                self.persist(&ops);
                if let Some(n) = self.mesh.node(&key) {
                    assert!(n.online && n.last_seen == self.now && n.map_version == map_version);
                } else {
                    assert!(!known && ops.is_empty(), "a heartbeat of no node wrote");
                }
            }
            2 => {
                let key = r.key();
                let links = (0..r.u8() % 3).map(|_| r.link()).collect::<Vec<_>>();
                self.mesh.report_links(&key, links, None);
                assert_eq!(
                    self.mesh.version(),
                    version,
                    "a link report moved the version"
                );
            }
            3 => {
                let key = r.key();
                let conflicts = (0..r.u8() % 3).map(|_| r.refusal()).collect::<Vec<_>>();
                let ops = self.mesh.report_conflicts(&key, conflicts.clone());
                self.persist(&ops);
                if let Some(n) = self.mesh.node(&key) {
                    assert_eq!(n.route_conflicts, conflicts);
                }
            }
            4 => {
                let name = r.node_name();
                match self.mesh.resolve(&name) {
                    Ok(key) => {
                        let (serials, ops) = self.mesh.revoke(&key, self.now);
                        self.persist(&ops);
                        for s in &serials {
                            assert!(self.mesh.is_revoked(s), "{s} revoked but not refused");
                        }
                        assert!(self.mesh.node(&key).is_none(), "a revoked node stays");
                        assert!(
                            self.mesh.map_for(&key).is_none(),
                            "a revoked node has a map"
                        );
                    }
                    Err(e) => self.refused(&e, version),
                }
            }
            5 => {
                let ops = self.mesh.tick(self.now);
                self.persist(&ops);
                let timeout = self.config.heartbeat_timeout.as_secs();
                for n in self.mesh.nodes() {
                    assert!(
                        !n.online || self.now.saturating_sub(n.last_seen) <= timeout,
                        "{}/{} stays online, silent since {}",
                        n.site,
                        n.name,
                        n.last_seen
                    );
                }
            }
            6 => {
                let (site, name) = r.key();
                let cert = IssuedCert {
                    serial: r.pick(&SERIALS).into(),
                    site,
                    name,
                    not_after: self.now.saturating_add(u64::from(r.u16())),
                };
                let op = self.mesh.record_issued(cert);
                self.persist(&[op]);
            }
            7 => self.token(r),
            8 => {
                let key = r.key();
                let (site, name) = r.key();
                let mbps = f64::from_bits(r.u64());
                self.mesh
                    .record_throughput(&key, &format!("{site}/{name}"), mbps, self.now);
            }
            9 => {
                // The coordinator restarts: what the store holds is all it knows.
                self.mesh = Mesh::new(self.config.clone(), self.store.clone());
            }
            10 => {
                let (from, to) = (r.node_name(), r.node_name());
                match self.mesh.probe_pair(&from, &to) {
                    Ok(pair) => {
                        for key in [&pair.a, &pair.b] {
                            let n = self.mesh.node(key).expect("a probe pair of no node");
                            assert!(n.online, "a probe pair with an offline node");
                        }
                        assert_ne!(pair.a.0, pair.b.0, "a probe pair within one site");
                    }
                    Err(e) => self.refused(&e, version),
                }
            }
            11 => {
                // Key rotation: announce a next key, or put one in use.
                let key = r.key();
                let wg = wg_key(r.u8());
                let announce = r.u8() % 2 == 0;
                let result = if announce {
                    self.mesh.announce_key(&key, &wg)
                } else {
                    self.mesh.key_in_use(&key, &wg)
                };
                match result {
                    Ok(ops) => {
                        self.persist(&ops);
                        let n = self.mesh.node(&key).expect("a key for no node");
                        // In use: the node's key (a pending announcement of another key
                        // stays when the key said to be in use already was the node's).
                        let now_held = n.wg_public_key == wg
                            || (announce && n.next_wg_public_key.as_deref() == Some(wg.as_str()));
                        assert_ne!(
                            n.next_wg_public_key.as_deref(),
                            Some(n.wg_public_key.as_str()),
                            "{key:?} announced the key it uses"
                        );
                        assert!(now_held, "a key rotation step left {key:?} without {wg}");
                    }
                    Err(e) => self.refused(&e, version),
                }
            }
            _ => {
                let b = r.u8();
                self.now = match b {
                    0..=199 => self.now.saturating_add(u64::from(b)),
                    200..=254 => self.now.saturating_sub(u64::from(b - 199) * 10),
                    255 => u64::MAX - u64::from(r.u8()),
                };
            }
        }
    }

    pub(super) fn token(&mut self, r: &mut Reader<'_>) {
        let site = r.pick(&SITES);
        let role = r.pick(&[Role::Gateway, Role::Member, Role::Operator]);
        let ttl = Duration::from_secs(u64::from(r.u16()));
        let random = [r.u8(); 22];
        let version = self.mesh.version();
        let ca = Fingerprint([9; 32]);
        let token = match self
            .mesh
            .create_token(site, role, ttl, self.now, ca, random)
        {
            Ok((token, record, ops)) => {
                assert_eq!(token.id(), record.id);
                self.persist(&ops);
                token
            }
            Err(e) => return self.refused(&e, version),
        };
        let (site, role) = if r.u8() & 1 == 0 {
            (site, role)
        } else {
            (r.pick(&SITES), r.pick(&[Role::Gateway, Role::Member]))
        };
        let at = self.now.saturating_add(u64::from(r.u16()));
        let name = r.pick(&NAMES);
        let checked = self.mesh.check_enrollment(&token, site, name, role, at);
        let cert = IssuedCert {
            serial: r.pick(&SERIALS).into(),
            site: site.into(),
            name: name.into(),
            not_after: at.saturating_add(3600),
        };
        match self
            .mesh
            .complete_enrollment(&token, site, role, cert.clone(), at)
        {
            Ok(ops) => {
                assert!(
                    checked.is_ok(),
                    "enrolled after a refused check: {checked:?}"
                );
                self.persist(&ops);
                let again = self.mesh.complete_enrollment(&token, site, role, cert, at);
                assert!(again.is_err(), "a token used twice");
            }
            Err(e) => {
                assert!(
                    checked.is_err(),
                    "a check passed but enrollment failed: {e}"
                );
                self.refused(&e, version);
            }
        }
    }
}
