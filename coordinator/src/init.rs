//! `strait-coordinator init`: a new mesh's state directory with its CA, certificates and a
//! commented config file.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ipnetwork::IpNetwork;
use strait_pki::ca::{BuiltinCa, Validity, DEFAULT_SERVICE_LIFETIME};
use strait_pki::identity::Label;
use strait_pki::material::write_new_file;
use strait_pki::{Identity, Role};

use crate::config::{
    DEFAULT_LISTEN, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
    DEFAULT_OVERLAY_CIDR,
};

/// Lifetime of the operator certificate `init` writes.
pub const OPERATOR_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);

/// A site given on the command line as `name:cloud:region:prefix[,prefix...]`.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteSpec {
    pub name: String,
    pub cloud: String,
    pub region: String,
    pub prefixes: Vec<IpNetwork>,
}

impl std::str::FromStr for SiteSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.splitn(4, ':').collect();
        let [name, cloud, region, prefixes] = parts.as_slice() else {
            return Err(format!(
                "site {s:?} must be name:cloud:region:prefix[,prefix...], e.g. aws-use1:aws:us-east-1:10.10.0.0/16"
            ));
        };
        Label::parse("site name", name).map_err(|e| e.to_string())?;
        let prefixes = prefixes
            .split(',')
            .filter(|p| !p.is_empty())
            .map(|p| {
                p.parse::<IpNetwork>()
                    .map_err(|e| format!("site {name}: prefix {p:?}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(SiteSpec {
            name: name.to_string(),
            cloud: cloud.to_string(),
            region: region.to_string(),
            prefixes,
        })
    }
}

pub struct InitOptions {
    pub state_dir: PathBuf,
    pub mesh: String,
    pub listen: String,
    pub name: String,
    pub operator: String,
    pub sites: Vec<SiteSpec>,
    /// `global-cidr`: where sites whose address space overlaps get global prefixes.
    pub global_cidr: Option<IpNetwork>,
}

/// Paths inside a coordinator state directory.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn new(root: &Path) -> Layout {
        Layout {
            root: root.to_path_buf(),
        }
    }
    pub fn tls(&self) -> PathBuf {
        self.root.join("tls")
    }
    pub fn operator(&self) -> PathBuf {
        self.root.join("operator")
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("coordinator.toml")
    }
    pub fn database(&self) -> PathBuf {
        self.root.join("strait.db")
    }
    /// The secret behind the QUIC endpoint's stateless resets and connection IDs (kept
    /// across restarts, so a restarted coordinator can reset its previous run's connections).
    pub fn quic_secret(&self) -> PathBuf {
        self.root.join("quic.key")
    }
}

fn private_dir(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("setting mode 0700 on {}", path.display()))
}

/// Creates the state directory. Everything is checked before anything is written (the
/// config `serve` would load included), and the directory is built under a temporary name
/// beside it, then renamed into place: a refused or interrupted `init` leaves nothing
/// behind, so a corrected run starts afresh. Refuses an existing CA or a non-empty
/// directory.
pub fn init(opts: &InitOptions) -> Result<Layout> {
    Label::parse("mesh", &opts.mesh).context("--mesh")?;
    Label::parse("coordinator name", &opts.name).context("--name")?;
    Label::parse("operator name", &opts.operator).context("--operator")?;
    let layout = Layout::new(&opts.state_dir);
    let text = config_text(opts);
    let config: crate::config::Config =
        toml::from_str(&text).context("the configuration init would write (--listen, --site)")?;
    config
        .validate()
        .context("the configuration init would write (--listen, --site); nothing was written")?;
    check_empty(&layout.root)?;
    let parent = match layout.root.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(".strait-init-")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a temporary directory in {}", parent.display()))?;
    write_state(&Layout::new(staging.path()), opts, &text)?;
    commit(staging, &layout.root)?;
    Ok(layout)
}

/// Refuses a state directory that holds anything (an existing CA above all).
fn check_empty(root: &Path) -> Result<()> {
    if root.join("ca.key").exists() {
        bail!(
            "{} already holds a mesh CA; refusing to overwrite it (choose another --state-dir)",
            root.display()
        );
    }
    match std::fs::read_dir(root) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "{} is not empty; init writes a new state directory (choose another --state-dir, or empty it)",
                    root.display()
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("reading {}", root.display())),
    }
}

/// The CA, the coordinator's and operator's certificates and the config, in `layout`.
fn write_state(layout: &Layout, opts: &InitOptions, config_text: &str) -> Result<()> {
    private_dir(&layout.root)?;
    let ca = BuiltinCa::generate(&opts.mesh)?;
    ca.save(&layout.root)?;

    let coordinator = Identity::service(&opts.mesh, &opts.name, Role::Coordinator)?;
    private_dir(&layout.tls())?;
    ca.issue(
        &coordinator,
        Validity::for_lifetime(DEFAULT_SERVICE_LIFETIME),
    )?
    .save(&layout.tls())?;

    let operator = Identity::operator(&opts.mesh, &opts.operator, strait_pki::OperatorRole::Admin)?;
    private_dir(&layout.operator())?;
    ca.issue(&operator, Validity::for_lifetime(OPERATOR_LIFETIME))?
        .save(&layout.operator())?;

    write_new_file(&layout.config(), config_text.as_bytes(), 0o600)?;
    Ok(())
}

/// Moves the finished `staging` directory to `root`: one rename (onto a missing or empty
/// directory). Where `root` cannot be replaced (a mount point), its entries are moved one
/// by one, the config last, and taken back if one fails.
fn commit(staging: tempfile::TempDir, root: &Path) -> Result<()> {
    if std::fs::rename(staging.path(), root).is_ok() {
        // The directory is now `root`; nothing is left to delete.
        let _ = staging.keep();
        return Ok(());
    }
    private_dir(root)?;
    let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(staging.path())
        .with_context(|| format!("reading {}", staging.path().display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()?;
    names.sort_by_key(|n| n == "coordinator.toml");
    let mut moved = Vec::new();
    for name in names {
        let (from, to) = (staging.path().join(&name), root.join(&name));
        if let Err(e) = std::fs::rename(&from, &to) {
            for done in moved.iter().rev() {
                let _ = std::fs::rename(root.join(done), staging.path().join(done));
            }
            return Err(e).with_context(|| {
                format!(
                    "moving {} to {}; nothing was kept",
                    from.display(),
                    to.display()
                )
            });
        }
        moved.push(name);
    }
    Ok(())
}

fn config_text(opts: &InitOptions) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Strait coordinator configuration (written by `strait-coordinator init`)."
    );
    let _ = writeln!(
        s,
        "# Keys are kebab-case; see README.md for the full reference.\n"
    );
    let _ = writeln!(
        s,
        "# The mesh name; it appears in every certificate and cannot change."
    );
    let _ = writeln!(s, "mesh = {:?}\n", opts.mesh);
    let _ = writeln!(
        s,
        "# UDP address of the QUIC listener (default {DEFAULT_LISTEN})."
    );
    let _ = writeln!(s, "listen = {:?}\n", opts.listen);
    let _ = writeln!(
        s,
        "# Holds the store (strait.db), the CA key (ca.key, 0600) and certificates."
    );
    let _ = writeln!(
        s,
        "state-dir = {:?}\n",
        opts.state_dir.display().to_string()
    );
    let _ = writeln!(
        s,
        "# Overlay addresses are allocated from this CIDR (default: CGNAT space)."
    );
    let _ = writeln!(s, "overlay-cidr = {DEFAULT_OVERLAY_CIDR:?}\n");
    if let Some(cidr) = opts.global_cidr {
        let _ = writeln!(
            s,
            "# Sites whose address space overlaps another's get global prefixes from here."
        );
        let _ = writeln!(s, "global-cidr = {:?}\n", cidr.to_string());
    }
    let _ = writeln!(
        s,
        "# A node without a heartbeat for this long is shown offline (it stays in maps)."
    );
    let _ = writeln!(s, "heartbeat-timeout = \"15s\"\n");
    let _ = writeln!(
        s,
        "# The registry is in state-dir (SQLite) for one coordinator. For several coordinators"
    );
    let _ = writeln!(
        s,
        "# sharing one PostgreSQL or CockroachDB database (HA), see README.md, \"Coordinator HA\":"
    );
    let _ = writeln!(
        s,
        "# [store]\n# kind = \"postgres\"\n# url-file = \"/etc/strait/db-url\"  # postgres://user:password@host:5432/db?sslmode=require, mode 0600\n"
    );
    let _ = writeln!(
        s,
        "# Connection limits (defaults shown). Agents behind one NAT address share the limit per"
    );
    let _ = writeln!(
        s,
        "# address: raise it above the largest such group (README.md, \"Configuration reference\")."
    );
    let _ = writeln!(
        s,
        "# [limits]\n# max-connections = {DEFAULT_MAX_CONNECTIONS}\n# max-connections-per-address = {DEFAULT_MAX_CONNECTIONS_PER_ADDRESS}\n# anonymous-lifetime = \"10s\"\n"
    );
    let _ = writeln!(s, "[pki]");
    let _ = writeln!(
        s,
        "# \"builtin\": the mesh CA in state-dir signs agent CSRs at enrollment."
    );
    let _ = writeln!(s, "mode = \"builtin\"");
    let _ = writeln!(s, "agent-cert-lifetime = \"24h\"");
    let _ = writeln!(
        s,
        "# The coordinator's own certificate (built-in CA), renewed at about 2/3 of it."
    );
    let _ = writeln!(s, "coordinator-cert-lifetime = \"720h\"\n");
    let _ = writeln!(
        s,
        "# One [[sites]] per VPC/network. Nodes may only advertise prefixes inside their"
    );
    let _ = writeln!(
        s,
        "# site's `prefixes`; sites may overlap only with global addresses (`global-cidr`,"
    );
    let _ = writeln!(
        s,
        "# or `global-prefixes` per site: README.md). `full-mesh = true` peers every node"
    );
    let _ = writeln!(
        s,
        "# of the site with every remote node instead of only gateways."
    );
    if opts.sites.is_empty() {
        let _ = writeln!(s, "#\n# [[sites]]\n# name = \"aws-use1\"\n# cloud = \"aws\"\n# region = \"us-east-1\"\n# prefixes = [\"10.10.0.0/16\"]\n# full-mesh = false");
    }
    for site in &opts.sites {
        let prefixes: Vec<String> = site
            .prefixes
            .iter()
            .map(|p| format!("{:?}", p.to_string()))
            .collect();
        let _ = writeln!(s, "\n[[sites]]");
        let _ = writeln!(s, "name = {:?}", site.name);
        let _ = writeln!(s, "cloud = {:?}", site.cloud);
        let _ = writeln!(s, "region = {:?}", site.region);
        let _ = writeln!(s, "prefixes = [{}]", prefixes.join(", "));
        let _ = writeln!(s, "full-mesh = false");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_a_loadable_config_and_private_keys() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let opts = InitOptions {
            state_dir: dir.path().join("state"),
            mesh: "prod".into(),
            listen: "127.0.0.1:7443".into(),
            name: "primary".into(),
            operator: "admin".into(),
            sites: vec!["aws-use1:aws:us-east-1:10.10.0.0/16,10.11.0.0/16"
                .parse()
                .unwrap()],
            global_cidr: None,
        };
        let layout = init(&opts).unwrap();
        let config = crate::config::Config::load(&layout.config()).unwrap();
        assert_eq!(config.sites[0].prefixes.len(), 2);
        for key in [
            layout.root.join("ca.key"),
            layout.tls().join("key.pem"),
            layout.operator().join("key.pem"),
        ] {
            let mode = std::fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", key.display());
        }
        let op = strait_pki::CertBundle::load(&layout.operator()).unwrap();
        assert_eq!(op.identity.role(), Role::Operator);
        assert!(init(&opts)
            .unwrap_err()
            .to_string()
            .contains("refusing to overwrite"));
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, vec!["state"], "init left a temporary directory");
    }

    #[test]
    fn a_refused_init_writes_nothing_and_a_corrected_one_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = InitOptions {
            state_dir: dir.path().join("state"),
            mesh: "prod".into(),
            listen: "127.0.0.1:7443".into(),
            name: "primary".into(),
            operator: "admin".into(),
            sites: vec![
                "aws-use1:aws:us-east-1:10.10.0.0/16".parse().unwrap(),
                "gcp-usc1:gcp:us-central1:10.10.128.0/17".parse().unwrap(),
            ],
            global_cidr: None,
        };
        let err = format!("{:#}", init(&opts).unwrap_err());
        assert!(
            err.contains("nothing was written") && err.contains("overlap"),
            "{err}"
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "init left files"
        );
        // Overlapping sites are fine with a `global-cidr` (both get global prefixes).
        opts.global_cidr = Some("10.128.0.0/12".parse().unwrap());
        let layout = init(&opts).unwrap();
        let config = crate::config::Config::load(&layout.config()).unwrap();
        let globals = crate::globals::Globals::of(&config);
        assert_eq!(
            globals.pairs("gcp-usc1")[0].global.to_string(),
            "10.129.0.0/17"
        );
        std::fs::remove_dir_all(&layout.root).unwrap();
        opts.global_cidr = None;
        opts.sites[1] = "gcp-usc1:gcp:us-central1:10.20.0.0/16".parse().unwrap();
        init(&opts).unwrap();
        // An existing empty directory (say, a volume mounted there) is filled.
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        opts.state_dir = empty.clone();
        init(&opts).unwrap();
        assert!(empty.join("ca.key").exists() && empty.join("coordinator.toml").exists());
        // A directory holding something else is refused, untouched.
        let used = dir.path().join("used");
        std::fs::create_dir(&used).unwrap();
        std::fs::write(used.join("notes"), "x").unwrap();
        opts.state_dir = used.clone();
        assert!(init(&opts)
            .unwrap_err()
            .to_string()
            .contains("is not empty"));
        assert_eq!(std::fs::read_dir(&used).unwrap().count(), 1);
    }

    #[test]
    fn site_specs_are_validated() {
        assert!("a:b:c".parse::<SiteSpec>().is_err());
        assert!("Bad:aws:r:10.0.0.0/8".parse::<SiteSpec>().is_err());
        assert!("a:aws:r:10.0.0.0/33".parse::<SiteSpec>().is_err());
    }
}
