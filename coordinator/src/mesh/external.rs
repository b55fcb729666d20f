//! External peers: plain WireGuard devices without an agent, configured on the coordinator.
//! Gateways of the other sites peer with them; operators get their wg-quick configuration.

use std::sync::Arc;

use ipnetwork::{IpNetwork, Ipv4Network};
use strait_proto::map::{PeerKind, PeerView};
use strait_proto::msg::{Endpoint, EndpointKind};

use super::{CoreError, Mesh};

impl Mesh {
    /// A wg-quick style configuration for the external peer `name`: its interface (with a
    /// placeholder for the private key Strait never knows) and one `[Peer]` per gateway of
    /// the other sites.
    pub fn external_peer_config(&self, name: &str) -> Result<String, CoreError> {
        use std::fmt::Write as _;
        let ext = self
            .config
            .external_peers
            .iter()
            .find(|e| e.name == name)
            .ok_or_else(|| CoreError::NoSuchNode(format!("external/{name}")))?;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# WireGuard configuration for external peer {name} (site {}) of Strait mesh {}.",
            ext.site, self.config.mesh
        );
        let _ = writeln!(
            s,
            "# Strait never knows this device's private key: generate it on the device"
        );
        let _ = writeln!(
            s,
            "# (`wg genkey`), put it below, and give its public key to the coordinator config."
        );
        let _ = writeln!(s, "[Interface]");
        let _ = writeln!(s, "PrivateKey = <this device's private key>");
        if let Some(ep) = ext.endpoint {
            let _ = writeln!(s, "ListenPort = {}", ep.port());
        }
        if let Some(ip) = ext.overlay_ip {
            let _ = writeln!(s, "Address = {ip}/32");
        }
        for p in self
            .views
            .peers
            .iter()
            .filter(|p| p.kind == PeerKind::Agent && p.site != ext.site)
        {
            let _ = writeln!(
                s,
                "\n# {} {}",
                p.role.map(|r| r.as_str()).unwrap_or("node"),
                p.id
            );
            let _ = writeln!(s, "[Peer]");
            let _ = writeln!(s, "PublicKey = {}", p.wg_public_key);
            if let Some(ep) = p
                .endpoints
                .iter()
                .filter(|e| e.kind != EndpointKind::Private)
                .min_by_key(|e| (e.kind != EndpointKind::Interconnect, e.cost.unwrap_or(0)))
            {
                let _ = writeln!(s, "Endpoint = {}", ep.address);
            }
            let allowed: Vec<String> = p.allowed_ips.iter().map(|a| a.to_string()).collect();
            let _ = writeln!(s, "AllowedIPs = {}", allowed.join(", "));
            let _ = writeln!(s, "PersistentKeepalive = 25");
        }
        Ok(s)
    }

    /// The external peers as every tunnel node of another site sees them.
    pub(super) fn external_peer_views(&self) -> impl Iterator<Item = Arc<PeerView>> + '_ {
        self.config.external_peers.iter().map(|ext| {
            let mut allowed: Vec<IpNetwork> = ext
                .overlay_ip
                .and_then(|ip| Ipv4Network::new(ip, 32).ok())
                .map(IpNetwork::V4)
                .into_iter()
                .collect();
            allowed.extend(ext.prefixes.iter().copied());
            Arc::new(PeerView {
                id: format!("{}/{}", crate::config::EXTERNAL_SITE, ext.name),
                site: ext.site.clone(),
                name: ext.name.clone(),
                kind: PeerKind::External,
                role: None,
                wg_public_key: ext.public_key.clone(),
                next_wg_public_key: None,
                endpoints: ext
                    .endpoint
                    .map(|address| Endpoint {
                        address,
                        kind: EndpointKind::Public,
                        cost: None,
                    })
                    .into_iter()
                    .collect(),
                allowed_ips: allowed,
                overlay_ip: ext.overlay_ip,
                online: true,
                priority: 0,
            })
        })
    }
}
