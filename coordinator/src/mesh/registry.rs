//! Registry mutations: join tokens and enrollment, registration, liveness, key rotation
//! and revocation. Each takes `now` and returns the store operations of its change.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use ipnetwork::IpNetwork;
use strait_pki::token::{self, Grant, JoinToken, TokenError, TokenRecord};
use strait_pki::{Fingerprint, Identity, Role};
use strait_proto::msg::{PeerLink, Refusal, Registered, Registration};

use super::{CoreError, IssuedCert, Mesh, NodeKey, NodeRecord, Presence, Revocation, StoreOp};
use crate::{overlay, policy};

impl Mesh {
    // ---- tokens and enrollment ----

    /// Creates a join token for a declared site.
    pub fn create_token(
        &mut self,
        site: &str,
        role: Role,
        ttl: Duration,
        now: u64,
        ca: Fingerprint,
        random: [u8; 22],
    ) -> Result<(JoinToken, TokenRecord, Vec<StoreOp>), CoreError> {
        self.site_config(site)?;
        let (token, record) = token::create(site, role, ttl, now, ca, random)?;
        self.tokens.insert(record.clone());
        Ok((token, record.clone(), vec![StoreOp::PutToken(record)]))
    }

    /// Checks an enrollment of node `name` without consuming the token. A name belongs to
    /// one identity: it is refused while a node of another role is registered under it, or
    /// while a certificate for it is live (neither expired nor revoked), until `straitctl
    /// revoke`. A node whose certificates all expired may enroll again in its own role.
    pub fn check_enrollment(
        &self,
        token: &JoinToken,
        site: &str,
        name: &str,
        role: Role,
        now: u64,
    ) -> Result<Grant, CoreError> {
        self.site_config(site)?;
        let grant = self.tokens.check(token, site, role, now)?;
        if let Some(holder) = self.name_holder(site, name, role, now) {
            return Err(CoreError::NameTaken {
                node: format!("{site}/{name}"),
                holder,
            });
        }
        Ok(grant)
    }

    /// Who holds node name `site/name` against an enrollment as `role`, if anyone.
    pub(super) fn name_holder(
        &self,
        site: &str,
        name: &str,
        role: Role,
        now: u64,
    ) -> Option<String> {
        let live = |serial: &str, not_after: u64| not_after > now && !self.is_revoked(serial);
        if let Some(n) = self.nodes.get(&(site.to_string(), name.to_string())) {
            if n.role != role || live(&n.cert_serial, n.cert_not_after) {
                return Some(format!("the registered {} {}", n.role, n.id()));
            }
        }
        self.issued
            .values()
            .find(|c| c.site == site && c.name == name && live(&c.serial, c.not_after))
            .map(|c| {
                format!(
                    "the node enrolled with certificate serial {} (valid until {})",
                    c.serial,
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + Duration::from_secs(c.not_after)
                    )
                )
            })
    }

    /// Consumes the token and records the issued certificate.
    pub fn complete_enrollment(
        &mut self,
        token: &JoinToken,
        site: &str,
        role: Role,
        cert: IssuedCert,
        now: u64,
    ) -> Result<Vec<StoreOp>, CoreError> {
        self.check_enrollment(token, site, &cert.name, role, now)?;
        self.tokens.redeem(token, site, role, &cert.name, now)?;
        let record = self
            .tokens
            .get(token.id())
            .cloned()
            .ok_or_else(|| TokenError::Unknown {
                id: token.id().to_string(),
            })?;
        Ok(vec![StoreOp::PutToken(record), self.record_issued(cert)])
    }

    /// Records a certificate issued by renewal.
    pub fn record_issued(&mut self, cert: IssuedCert) -> StoreOp {
        self.issued.insert(cert.serial.clone(), cert.clone());
        StoreOp::PutIssued(cert)
    }

    pub fn is_revoked(&self, serial: &str) -> bool {
        self.revoked.contains_key(serial)
    }

    // ---- registration and liveness ----

    /// Registers (or re-registers) the node named by `identity`, connected with the
    /// certificate `cert_serial`. A revoked serial is refused: the transport checks it when
    /// a connection is accepted, but a revocation may come between that and the
    /// subscription (found by the mesh simulator).
    pub fn register(
        &mut self,
        identity: &Identity,
        reg: &Registration,
        cert_serial: &str,
        cert_not_after: u64,
        now: u64,
    ) -> Result<(Registered, Vec<StoreOp>), CoreError> {
        if self.is_revoked(cert_serial) {
            return Err(CoreError::Revoked {
                serial: cert_serial.to_string(),
            });
        }
        let site = identity
            .site()
            .ok_or_else(|| CoreError::NotANode(identity.to_string()))?
            .to_string();
        let site_cfg = self.site_config(&site)?.clone();
        check_wg_key(&reg.wg_public_key)?;
        let key: NodeKey = (site.clone(), identity.name().to_string());
        if let Some(existing) = self.nodes.get(&key) {
            check_same_role(existing, identity.role())?;
        }
        check_key_free(&self.keys_in_use(&key), &reg.wg_public_key)?;
        // Conflicts with other sites are judged on mesh addresses (global prefixes for
        // translated sites), so overlapping sites with global addresses do not clash.
        let claimed: Vec<policy::Claimed<'_>> = self
            .nodes
            .values()
            .filter(|n| n.site != site)
            .flat_map(|n| {
                n.accepted.iter().map(|p| policy::Claimed {
                    prefix: self.globals.to_mesh(&n.site, *p),
                    site: &n.site,
                    node: &n.name,
                })
            })
            .collect();
        let external: Vec<policy::External<'_>> = self
            .config
            .external_peers
            .iter()
            .flat_map(|e| {
                e.prefixes.iter().map(|p| policy::External {
                    prefix: *p,
                    site: &e.site,
                    node: &e.name,
                })
            })
            .collect();
        let sites: Vec<crate::config::SiteConfig> = self
            .config
            .sites
            .iter()
            .map(|s| crate::config::SiteConfig {
                prefixes: if s.name == site {
                    s.prefixes.clone()
                } else {
                    self.globals.mesh_prefixes(s)
                },
                ..s.clone()
            })
            .collect();
        let (accepted, refused) = policy::check(
            &site_cfg,
            &sites,
            &claimed,
            &external,
            self.config.overlay_cidr,
            &reg.prefixes,
            &|p| self.globals.to_mesh(&site, p),
        );
        let overlay_ip = match self.nodes.get(&key) {
            Some(existing) => existing.overlay_ip,
            None => {
                let IpNetwork::V4(cidr) = self.config.overlay_cidr else {
                    unreachable!("config validation refuses an IPv6 overlay")
                };
                let used: BTreeSet<Ipv4Addr> = self
                    .nodes
                    .values()
                    .map(|n| n.overlay_ip)
                    .chain(
                        self.config
                            .external_peers
                            .iter()
                            .filter_map(|e| e.overlay_ip),
                    )
                    .collect();
                overlay::allocate(cidr, &used).ok_or(CoreError::OverlayExhausted(cidr))?
            }
        };
        let record = NodeRecord {
            site: site.clone(),
            name: identity.name().to_string(),
            role: identity.role(),
            overlay_ip,
            wg_public_key: reg.wg_public_key.clone(),
            endpoints: reg.endpoints.clone(),
            advertised: reg.prefixes.clone(),
            accepted,
            refused: refused.clone(),
            route_conflicts: self
                .nodes
                .get(&key)
                .map(|n| n.route_conflicts.clone())
                .unwrap_or_default(),
            agent_version: reg.agent_version.clone(),
            last_seen: now,
            online: true,
            cert_serial: cert_serial.to_string(),
            cert_not_after,
            map_version: self.nodes.get(&key).map(|n| n.map_version).unwrap_or(0),
            // A rotation in progress is announced again on the new session (an agent
            // that restarted has dropped the key it announced).
            next_wg_public_key: None,
            priority: reg.priority,
            links: Vec::new(),
            bgp: None,
            throughput: self
                .nodes
                .get(&key)
                .map(|n| n.throughput.clone())
                .unwrap_or_default(),
        };
        let mut ops = vec![StoreOp::PutNode(record.clone())];
        self.nodes.insert(key, record);
        self.bump(&mut ops);
        Ok((
            Registered {
                overlay_ip,
                refused,
            },
            ops,
        ))
    }

    /// The WireGuard public keys held by every registered node but `except` and by every
    /// external peer, each with its holder's id (`site/node`, `external/<name>`). A
    /// revoked node leaves the registry, so its key is free again.
    pub fn keys_in_use(&self, except: &NodeKey) -> BTreeMap<&str, String> {
        // A key a node announced for its next rotation is taken too.
        let nodes = self
            .nodes
            .values()
            .filter(|n| &n.key() != except)
            .flat_map(|n| {
                let current = Some(n.wg_public_key.as_str()).filter(|k| !k.is_empty());
                current
                    .into_iter()
                    .chain(n.next_wg_public_key.as_deref())
                    .map(|k| (k, n.id()))
            });
        let external = self.config.external_peers.iter().map(|e| {
            (
                e.public_key.as_str(),
                format!("{}/{}", crate::config::EXTERNAL_SITE, e.name),
            )
        });
        nodes.chain(external).collect()
    }

    /// A heartbeat from a connected node.
    pub fn heartbeat(&mut self, key: &NodeKey, map_version: u64, now: u64) -> Vec<StoreOp> {
        let mut ops = Vec::new();
        let Some(node) = self.nodes.get_mut(key) else {
            return ops;
        };
        node.last_seen = now;
        node.map_version = map_version;
        if !node.online {
            node.online = true;
            ops.push(StoreOp::PutNode(node.clone()));
            self.bump(&mut ops);
        }
        ops
    }

    /// Liveness other coordinators recorded (see [`Presence`]): moves `last_seen` and the
    /// acknowledged map version forward. In memory only; no map change.
    pub fn observe(&mut self, seen: &[Presence]) {
        for p in seen {
            if let Some(node) = self.nodes.get_mut(&(p.site.clone(), p.name.clone())) {
                node.last_seen = node.last_seen.max(p.last_seen);
                node.map_version = node.map_version.max(p.map_version);
            }
        }
    }

    /// Keeps what `old` (the registry this one replaces after a reload from a shared store)
    /// knew but never stored: link reports, throughput, and the latest heartbeats.
    pub fn carry_live(&mut self, old: &Mesh) {
        for (key, node) in self.nodes.iter_mut() {
            if let Some(o) = old.nodes.get(key) {
                node.links = o.links.clone();
                node.bgp = o.bgp.clone();
                node.throughput = o.throughput.clone();
                node.last_seen = node.last_seen.max(o.last_seen);
                node.map_version = node.map_version.max(o.map_version);
            }
        }
        self.carry_access(old);
    }

    /// Route conflicts a node's data plane reported.
    pub fn report_conflicts(&mut self, key: &NodeKey, conflicts: Vec<Refusal>) -> Vec<StoreOp> {
        match self.nodes.get_mut(key) {
            Some(node) if node.route_conflicts != conflicts => {
                node.route_conflicts = conflicts;
                vec![StoreOp::PutNode(node.clone())]
            }
            _ => Vec::new(),
        }
    }

    /// Key rotation, step 1: `key` announced `next` as its next WireGuard key. It goes into
    /// every peer's map, so peers accept handshakes from it before the node switches.
    pub fn announce_key(&mut self, key: &NodeKey, next: &str) -> Result<Vec<StoreOp>, CoreError> {
        check_wg_key(next)?;
        check_key_free(&self.keys_in_use(key), next)?;
        let Some(node) = self.nodes.get_mut(key) else {
            return Err(CoreError::NoSuchNode(format!("{}/{}", key.0, key.1)));
        };
        if node.wg_public_key == next || node.next_wg_public_key.as_deref() == Some(next) {
            return Ok(Vec::new());
        }
        node.next_wg_public_key = Some(next.to_string());
        let mut ops = vec![StoreOp::PutNode(node.clone())];
        self.bump(&mut ops);
        Ok(ops)
    }

    /// Key rotation, step 2: `key` now uses `wg_key`, which it announced before. A key
    /// that was not announced is refused (peers would not know it).
    pub fn key_in_use(&mut self, key: &NodeKey, wg_key: &str) -> Result<Vec<StoreOp>, CoreError> {
        let Some(node) = self.nodes.get_mut(key) else {
            return Err(CoreError::NoSuchNode(format!("{}/{}", key.0, key.1)));
        };
        if node.wg_public_key == wg_key {
            return Ok(Vec::new());
        }
        if node.next_wg_public_key.as_deref() != Some(wg_key) {
            return Err(CoreError::BadPublicKey(format!(
                "{wg_key} (not the key {} announced)",
                node.id()
            )));
        }
        node.wg_public_key = wg_key.to_string();
        node.next_wg_public_key = None;
        let mut ops = vec![StoreOp::PutNode(node.clone())];
        self.bump(&mut ops);
        Ok(ops)
    }

    /// The agent's view of its tunnels. Live figures only: kept in memory, never stored,
    /// and no map changes.
    pub fn report_links(
        &mut self,
        key: &NodeKey,
        peers: Vec<PeerLink>,
        bgp: Option<strait_proto::msg::BgpReport>,
    ) {
        if let Some(node) = self.nodes.get_mut(key) {
            node.links = peers;
            node.bgp = bgp;
        }
    }

    /// A throughput measured from `a` to `b` (live, not persisted).
    pub fn record_throughput(&mut self, a: &NodeKey, b_id: &str, mbps: f64, at: u64) {
        if let Some(node) = self.nodes.get_mut(a) {
            node.throughput.insert(b_id.to_string(), (mbps, at));
        }
    }

    /// Marks nodes without a recent heartbeat offline (they stay in the maps, flagged).
    pub fn tick(&mut self, now: u64) -> Vec<StoreOp> {
        let timeout = self.config.heartbeat_timeout.as_secs();
        let mut ops = Vec::new();
        let mut changed = false;
        for node in self.nodes.values_mut() {
            if node.online && now.saturating_sub(node.last_seen) > timeout {
                node.online = false;
                ops.push(StoreOp::PutNode(node.clone()));
                changed = true;
            }
        }
        if changed {
            self.bump(&mut ops);
        }
        ops
    }

    // ---- revocation ----

    /// Resolves `site/name` or a unique `name`.
    pub fn resolve(&self, node: &str) -> Result<NodeKey, CoreError> {
        if let Some((site, name)) = node.split_once('/') {
            let key = (site.to_string(), name.to_string());
            return if self.nodes.contains_key(&key)
                || self
                    .issued
                    .values()
                    .any(|c| c.site == site && c.name == name)
            {
                Ok(key)
            } else {
                Err(CoreError::NoSuchNode(node.to_string()))
            };
        }
        let mut sites: BTreeSet<&str> = self
            .nodes
            .values()
            .filter(|n| n.name == node)
            .map(|n| n.site.as_str())
            .collect();
        sites.extend(
            self.issued
                .values()
                .filter(|c| c.name == node)
                .map(|c| c.site.as_str()),
        );
        match sites.len() {
            0 => Err(CoreError::NoSuchNode(node.to_string())),
            1 => Ok((
                sites.into_iter().next().unwrap_or_default().to_string(),
                node.to_string(),
            )),
            _ => Err(CoreError::AmbiguousNode {
                name: node.to_string(),
                sites: sites.into_iter().collect::<Vec<_>>().join(", "),
            }),
        }
    }

    /// Revokes every known certificate of the node and removes it from the registry.
    /// Returns the revoked serials.
    pub fn revoke(&mut self, key: &NodeKey, now: u64) -> (Vec<String>, Vec<StoreOp>) {
        let mut ops = Vec::new();
        let mut serials: BTreeMap<String, u64> = self
            .issued
            .values()
            .filter(|c| c.site == key.0 && c.name == key.1 && c.not_after > now)
            .map(|c| (c.serial.clone(), c.not_after))
            .collect();
        if let Some(node) = self.nodes.remove(key) {
            if !node.cert_serial.is_empty() {
                serials.insert(node.cert_serial.clone(), node.cert_not_after);
            }
            ops.push(StoreOp::DeleteNode {
                site: key.0.clone(),
                name: key.1.clone(),
            });
        }
        for (serial, not_after) in &serials {
            let r = Revocation {
                serial: serial.clone(),
                site: key.0.clone(),
                name: key.1.clone(),
                revoked_at: now,
                not_after: *not_after,
            };
            self.revoked.insert(serial.clone(), r.clone());
            ops.push(StoreOp::PutRevocation(r));
        }
        self.bump(&mut ops);
        (serials.into_keys().collect(), ops)
    }
}

/// Whether a registration as `role` comes from the identity that holds `existing`'s name:
/// a member certificate naming a gateway (or the reverse) never takes its place.
fn check_same_role(existing: &NodeRecord, role: Role) -> Result<(), CoreError> {
    if existing.role == role {
        return Ok(());
    }
    Err(CoreError::NameTaken {
        node: existing.id(),
        holder: format!(
            "the registered {} {} (this certificate names a {role})",
            existing.role,
            existing.id()
        ),
    })
}

/// Refuses `wanted` if it is among `in_use` (see [`Mesh::keys_in_use`]): the agents'
/// engines key peers by public key, so a node announcing another's key would take over its
/// tunnel.
pub fn check_key_free(in_use: &BTreeMap<&str, String>, wanted: &str) -> Result<(), CoreError> {
    match in_use.get(wanted) {
        Some(owner) => Err(CoreError::KeyInUse {
            key: wanted.to_string(),
            owner: owner.clone(),
        }),
        None => Ok(()),
    }
}

fn check_wg_key(key: &str) -> Result<(), CoreError> {
    use base64::Engine;
    match base64::engine::general_purpose::STANDARD.decode(key) {
        Ok(bytes) if bytes.len() == 32 => Ok(()),
        _ => Err(CoreError::BadPublicKey(key.chars().take(60).collect())),
    }
}
