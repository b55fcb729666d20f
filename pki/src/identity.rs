//! Mesh identities and the naming scheme that binds them to certificates.
//!
//! Every certificate in a Strait mesh names exactly one identity in a DNS SAN:
//!
//! | role        | DNS SAN                                              | SPIFFE URI SAN                          |
//! |-------------|------------------------------------------------------|-----------------------------------------|
//! | gateway     | `<node>.<site>.gateways.<mesh>.strait.internal`      | `spiffe://<mesh>/site/<site>/gateway/<node>` |
//! | member      | `<node>.<site>.members.<mesh>.strait.internal`       | `spiffe://<mesh>/site/<site>/member/<node>`  |
//! | coordinator | `<name>.coordinators.<mesh>.strait.internal`         | `spiffe://<mesh>/coordinator/<name>`    |
//! | operator    | `<name>.<role>.operators.<mesh>.strait.internal`   | `spiffe://<mesh>/operator/<role>/<name>` |
//!
//! An operator's `<role>` is `viewer`, `operator` or `admin` (see [`OperatorRole`]). An operator
//! name without it (`<name>.operators.<mesh>...`, as meshes made before roles existed have)
//! has the admin role. A Vault PKI role per operator role restricts who gets which, with
//! `allowed_domains = "<role>.operators.<mesh>.strait.internal"`.
//!
//! The DNS SAN is authoritative: Vault-compatible servers may drop URI SANs. When a SPIFFE URI
//! is present it must name the same identity, or the certificate is refused. A Vault PKI role
//! for gateways therefore uses `allowed_domains = "gateways.<mesh>.strait.internal"` with
//! `allow_subdomains = true` (or one role per site: `<site>.gateways.<mesh>.strait.internal`).

use std::fmt;

use serde::{Deserialize, Serialize};
use x509_parser::extensions::GeneralName;

/// The DNS suffix under which every mesh lives (`.internal` is reserved for private use).
pub const DOMAIN_SUFFIX: &str = "strait.internal";

pub use strait_proto::{OperatorRole, Role};

/// Why a name or certificate does not carry a valid mesh identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("invalid {field} {value:?}: {reason}; use 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'")]
    InvalidLabel {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("role {role} {needs} a site")]
    SiteMismatch { role: Role, needs: &'static str },
    #[error("{name:?} is not a Strait identity name: expected <node>.<site>.<gateways|members>.<mesh>.{DOMAIN_SUFFIX} or <name>.<coordinators|operators>.<mesh>.{DOMAIN_SUFFIX}")]
    NotAnIdentityName { name: String },
    #[error("{uri:?} is not a Strait SPIFFE id: expected spiffe://<mesh>/site/<site>/<gateway|member>/<node> or spiffe://<mesh>/<coordinator|operator>/<name>")]
    NotASpiffeId { uri: String },
    #[error("certificate could not be parsed as X.509: {0}")]
    NotACertificate(String),
    #[error("certificate carries no Strait identity: no DNS SAN ends in .{DOMAIN_SUFFIX}")]
    NoIdentity,
    #[error("certificate names more than one Strait identity ({0}); a certificate must name exactly one")]
    Ambiguous(String),
    #[error("certificate's SPIFFE URI names {uri} but its DNS SAN names {dns}; the CA issued an inconsistent certificate")]
    SpiffeMismatch { dns: String, uri: String },
}

/// An RFC 1123 DNS label: 1-63 characters of `a-z`, `0-9` and `-`, not starting or ending
/// with `-`. Upper case is refused rather than folded so that one identity has one spelling.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Label(String);

impl Label {
    /// Validates `value` as the label named `field` (the field appears in the error).
    pub fn parse(field: &'static str, value: &str) -> Result<Label, IdentityError> {
        let bad = |reason| IdentityError::InvalidLabel {
            field,
            value: value.to_string(),
            reason,
        };
        if value.is_empty() {
            return Err(bad("it is empty"));
        }
        if value.len() > 63 {
            return Err(bad("it is longer than 63 characters"));
        }
        if !value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(bad("it contains a character other than a-z, 0-9 and '-'"));
        }
        if value.starts_with('-') || value.ends_with('-') {
            return Err(bad("it starts or ends with '-'"));
        }
        Ok(Label(value.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Label {
    type Error = IdentityError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Label::parse("name", &value)
    }
}

impl From<Label> for String {
    fn from(l: Label) -> String {
        l.0
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// Who a certificate holder is: mesh, site (for gateways and members), name and role.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Identity {
    mesh: Label,
    site: Option<Label>,
    name: Label,
    role: Role,
    /// An operator's role, when its name carries one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    operator_role: Option<OperatorRole>,
}

impl Identity {
    /// A gateway or member node of `site`.
    pub fn node(mesh: &str, site: &str, name: &str, role: Role) -> Result<Identity, IdentityError> {
        if !role.has_site() {
            return Err(IdentityError::SiteMismatch {
                role,
                needs: "cannot have",
            });
        }
        Ok(Identity {
            mesh: Label::parse("mesh", mesh)?,
            site: Some(Label::parse("site", site)?),
            name: Label::parse("node name", name)?,
            role,
            operator_role: None,
        })
    }

    /// A coordinator or operator (no site).
    pub fn service(mesh: &str, name: &str, role: Role) -> Result<Identity, IdentityError> {
        if role.has_site() {
            return Err(IdentityError::SiteMismatch {
                role,
                needs: "needs",
            });
        }
        Ok(Identity {
            mesh: Label::parse("mesh", mesh)?,
            site: None,
            name: Label::parse("name", name)?,
            role,
            operator_role: None,
        })
    }

    /// An operator with role `access` (its certificate name carries it).
    pub fn operator(
        mesh: &str,
        name: &str,
        access: OperatorRole,
    ) -> Result<Identity, IdentityError> {
        let mut id = Identity::service(mesh, name, Role::Operator)?;
        id.operator_role = Some(access);
        Ok(id)
    }

    /// What an operator may do: the role its name carries, admin for a name without one
    /// (made before operator roles existed). `None` for every other role.
    pub fn operator_role(&self) -> Option<OperatorRole> {
        (self.role == Role::Operator).then(|| self.operator_role.unwrap_or(OperatorRole::Admin))
    }

    pub fn mesh(&self) -> &str {
        self.mesh.as_str()
    }

    pub fn site(&self) -> Option<&str> {
        self.site.as_ref().map(Label::as_str)
    }

    pub fn name(&self) -> &str {
        self.name.as_str()
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// The authoritative DNS SAN for this identity.
    pub fn dns_name(&self) -> String {
        match &self.site {
            Some(site) => format!(
                "{}.{}.{}.{}",
                self.name,
                site,
                self.role.group_label(),
                mesh_domain(self.mesh.as_str())
            ),
            None => match self.operator_role {
                Some(access) => format!(
                    "{}.{access}.{}.{}",
                    self.name,
                    self.role.group_label(),
                    mesh_domain(self.mesh.as_str())
                ),
                None => format!(
                    "{}.{}.{}",
                    self.name,
                    self.role.group_label(),
                    mesh_domain(self.mesh.as_str())
                ),
            },
        }
    }

    /// The SPIFFE id placed in a URI SAN where the CA supports it.
    pub fn spiffe_id(&self) -> String {
        match &self.site {
            Some(site) => format!(
                "spiffe://{}/site/{}/{}/{}",
                self.mesh, site, self.role, self.name
            ),
            None => match self.operator_role {
                Some(access) => format!(
                    "spiffe://{}/{}/{access}/{}",
                    self.mesh, self.role, self.name
                ),
                None => format!("spiffe://{}/{}/{}", self.mesh, self.role, self.name),
            },
        }
    }

    /// Parses an identity DNS name (see the module docs for the scheme).
    pub fn from_dns_name(name: &str) -> Result<Identity, IdentityError> {
        let not_ours = || IdentityError::NotAnIdentityName {
            name: name.to_string(),
        };
        let suffix = format!(".{DOMAIN_SUFFIX}");
        let head = name.strip_suffix(&suffix).ok_or_else(not_ours)?;
        let labels: Vec<&str> = head.split('.').collect();
        match labels.as_slice() {
            [name, access, "operators", mesh] => {
                let access: OperatorRole = access.parse().map_err(|_| not_ours())?;
                Identity::operator(mesh, name, access)
            }
            [node, site, group, mesh] => {
                let role = Role::from_group_label(group)
                    .filter(|r| r.has_site())
                    .ok_or_else(not_ours)?;
                Identity::node(mesh, site, node, role)
            }
            [svc, group, mesh] => {
                let role = Role::from_group_label(group)
                    .filter(|r| !r.has_site())
                    .ok_or_else(not_ours)?;
                Identity::service(mesh, svc, role)
            }
            _ => Err(not_ours()),
        }
    }

    /// Parses a Strait SPIFFE id.
    pub fn from_spiffe_id(uri: &str) -> Result<Identity, IdentityError> {
        let not_ours = || IdentityError::NotASpiffeId {
            uri: uri.to_string(),
        };
        let rest = uri.strip_prefix("spiffe://").ok_or_else(not_ours)?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [mesh, "operator", access, name] => {
                let access: OperatorRole = access.parse().map_err(|_| not_ours())?;
                Identity::operator(mesh, name, access)
            }
            [mesh, "site", site, role, node] => {
                let role: Role = role.parse().map_err(|_| not_ours())?;
                if !role.has_site() {
                    return Err(not_ours());
                }
                Identity::node(mesh, site, node, role)
            }
            [mesh, role, name] => {
                let role: Role = role.parse().map_err(|_| not_ours())?;
                if role.has_site() {
                    return Err(not_ours());
                }
                Identity::service(mesh, name, role)
            }
            _ => Err(not_ours()),
        }
    }

    /// Extracts the identity from a DER certificate. Exactly one DNS SAN under
    /// `.strait.internal` must exist; a SPIFFE URI SAN, if present, must agree with it.
    pub fn from_certificate(der: &[u8]) -> Result<Identity, IdentityError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| IdentityError::NotACertificate(e.to_string()))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| IdentityError::NotACertificate(e.to_string()))?;
        let mut dns_names: Vec<&str> = Vec::new();
        let mut spiffe_ids: Vec<&str> = Vec::new();
        if let Some(san) = san {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(n)
                        if n.ends_with(&format!(".{DOMAIN_SUFFIX}")) && !dns_names.contains(n) =>
                    {
                        dns_names.push(n)
                    }
                    GeneralName::URI(u)
                        if u.starts_with("spiffe://") && !spiffe_ids.contains(u) =>
                    {
                        spiffe_ids.push(u)
                    }
                    _ => {}
                }
            }
        }
        let dns = match dns_names.as_slice() {
            [] => return Err(IdentityError::NoIdentity),
            [one] => *one,
            many => return Err(IdentityError::Ambiguous(many.join(", "))),
        };
        let identity = Identity::from_dns_name(dns)?;
        for uri in spiffe_ids {
            let from_uri = Identity::from_spiffe_id(uri)?;
            if from_uri != identity {
                return Err(IdentityError::SpiffeMismatch {
                    dns: dns.to_string(),
                    uri: uri.to_string(),
                });
            }
        }
        Ok(identity)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.site {
            Some(site) => write!(
                f,
                "{} {} in site {} of mesh {}",
                self.role, self.name, site, self.mesh
            ),
            None => match self.operator_role {
                Some(access) => write!(
                    f,
                    "{} {} ({access}) of mesh {}",
                    self.role, self.name, self.mesh
                ),
                None => write!(f, "{} {} of mesh {}", self.role, self.name, self.mesh),
            },
        }
    }
}

/// The DNS domain of a mesh: `<mesh>.strait.internal`.
pub fn mesh_domain(mesh: &str) -> String {
    format!("{mesh}.{DOMAIN_SUFFIX}")
}

/// The domain a Vault PKI role's `allowed_domains` must contain (with `allow_subdomains`)
/// to issue certificates of `role` in `mesh`.
pub fn vault_allowed_domain(mesh: &str, role: Role) -> String {
    format!("{}.{}", role.group_label(), mesh_domain(mesh))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_round_trip() {
        let id = Identity::node("prod", "aws-use1", "gw-1", Role::Gateway).unwrap();
        assert_eq!(id.dns_name(), "gw-1.aws-use1.gateways.prod.strait.internal");
        assert_eq!(id.spiffe_id(), "spiffe://prod/site/aws-use1/gateway/gw-1");
        assert_eq!(Identity::from_dns_name(&id.dns_name()).unwrap(), id);
        assert_eq!(Identity::from_spiffe_id(&id.spiffe_id()).unwrap(), id);
        assert_eq!(id.to_string(), "gateway gw-1 in site aws-use1 of mesh prod");
    }

    #[test]
    fn service_names_round_trip() {
        for role in [Role::Coordinator, Role::Operator] {
            let id = Identity::service("prod", "c1", role).unwrap();
            assert_eq!(Identity::from_dns_name(&id.dns_name()).unwrap(), id);
            assert_eq!(Identity::from_spiffe_id(&id.spiffe_id()).unwrap(), id);
            assert_eq!(id.site(), None);
        }
        assert_eq!(
            Identity::service("prod", "c1", Role::Coordinator)
                .unwrap()
                .dns_name(),
            "c1.coordinators.prod.strait.internal"
        );
    }

    #[test]
    fn operator_roles_are_in_the_name() {
        for access in OperatorRole::ALL {
            let id = Identity::operator("prod", "alice", access).unwrap();
            assert_eq!(
                id.dns_name(),
                format!("alice.{access}.operators.prod.strait.internal")
            );
            assert_eq!(
                id.spiffe_id(),
                format!("spiffe://prod/operator/{access}/alice")
            );
            assert_eq!(Identity::from_dns_name(&id.dns_name()).unwrap(), id);
            assert_eq!(Identity::from_spiffe_id(&id.spiffe_id()).unwrap(), id);
            assert_eq!(id.operator_role(), Some(access));
        }
        // A name from before operator roles is an admin's; other roles have none.
        let legacy = Identity::from_dns_name("ops.operators.prod.strait.internal").unwrap();
        assert_eq!(legacy.operator_role(), Some(OperatorRole::Admin));
        let gw = Identity::node("prod", "s", "gw", Role::Gateway).unwrap();
        assert_eq!(gw.operator_role(), None);
        for bad in [
            "alice.root.operators.prod.strait.internal",
            "alice.viewer.coordinators.prod.strait.internal",
        ] {
            assert!(Identity::from_dns_name(bad).is_err(), "{bad} accepted");
        }
        assert!(Identity::from_spiffe_id("spiffe://prod/operator/root/alice").is_err());
        assert!(Identity::from_spiffe_id("spiffe://prod/coordinator/admin/c").is_err());
    }

    #[test]
    fn site_is_required_exactly_for_nodes() {
        assert!(matches!(
            Identity::node("prod", "a", "n", Role::Operator),
            Err(IdentityError::SiteMismatch { .. })
        ));
        assert!(matches!(
            Identity::service("prod", "n", Role::Member),
            Err(IdentityError::SiteMismatch { .. })
        ));
    }

    #[test]
    fn hostile_labels_are_refused_naming_the_field() {
        let cases: &[(&str, &str, &str, &str)] = &[
            ("", "site", "n", "mesh"),
            ("prod", "", "n", "site"),
            ("prod", "s", "", "node name"),
            ("prod", "s", "-n", "node name"),
            ("prod", "s", "n-", "node name"),
            ("prod", "S", "n", "site"),
            ("prod", "s", "n.evil", "node name"),
            ("prod", "s", "n\u{0}", "node name"),
            ("prod", "s", "nö", "node name"),
            ("pr od", "s", "n", "mesh"),
            ("prod", "s/../x", "n", "site"),
        ];
        for (mesh, site, node, field) in cases {
            match Identity::node(mesh, site, node, Role::Member) {
                Err(IdentityError::InvalidLabel { field: f, .. }) => {
                    assert_eq!(f, *field, "{mesh:?} {site:?} {node:?}")
                }
                other => panic!("{mesh:?} {site:?} {node:?}: expected InvalidLabel, got {other:?}"),
            }
        }
        let long = "a".repeat(64);
        assert!(Identity::node("prod", "s", &long, Role::Member).is_err());
        assert!(Identity::node("prod", "s", &"a".repeat(63), Role::Member).is_ok());
        let err = Identity::node("prod", "s", "Bad", Role::Member).unwrap_err();
        assert!(err.to_string().contains("node name"), "{err}");
    }

    #[test]
    fn foreign_names_are_refused() {
        for name in [
            "gw.site.gateways.prod.example.com",
            "gw.site.gateways.prod.strait.internal.evil.com",
            "x.gw.site.gateways.prod.strait.internal",
            "gw.site.coordinators.prod.strait.internal",
            "c1.gateways.prod.strait.internal",
            "gw.site.admins.prod.strait.internal",
            "strait.internal",
            ".strait.internal",
            "gw..gateways.prod.strait.internal",
        ] {
            assert!(Identity::from_dns_name(name).is_err(), "{name} accepted");
        }
        for uri in [
            "spiffe://prod/site/s/coordinator/c",
            "spiffe://prod/gateway/g",
            "spiffe://prod/site/s/gateway/g/extra",
            "https://prod/site/s/gateway/g",
            "spiffe://prod/site/s/root/g",
        ] {
            assert!(Identity::from_spiffe_id(uri).is_err(), "{uri} accepted");
        }
    }

    #[test]
    fn roles_parse_and_print() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
        }
        assert!("admin".parse::<Role>().is_err());
        assert_eq!(
            vault_allowed_domain("prod", Role::Gateway),
            "gateways.prod.strait.internal"
        );
    }
}
