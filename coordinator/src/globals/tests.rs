use super::*;

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

fn config(extra: &str, sites: &str) -> Result<Config> {
    let c: Config = toml::from_str(&format!(
        "mesh = \"prod\"\nstate-dir = \"/tmp/x\"\n{extra}\n{sites}"
    ))?;
    c.validate()?;
    Ok(c)
}

const OVERLAPPING: &str = r#"
[[sites]]
name = "a"
prefixes = ["10.10.0.0/16"]
[[sites]]
name = "b"
prefixes = ["10.10.0.0/16"]
[[sites]]
name = "c"
prefixes = ["10.20.0.0/16"]
"#;

#[test]
fn overlapping_sites_without_global_addresses_are_refused_saying_what_to_add() {
    let err = format!("{:#}", config("", OVERLAPPING).unwrap_err());
    for needle in [
        "site a's prefix 10.10.0.0/16 overlaps site b's prefix 10.10.0.0/16",
        "only if one of them has global addresses",
        "add `global-prefixes`",
        "set `global-cidr`",
    ] {
        assert!(err.contains(needle), "{needle:?} not in {err}");
    }
}

#[test]
fn global_cidr_allocates_for_every_overlapping_site_in_order_and_not_others() {
    let c = config("global-cidr = \"10.128.0.0/12\"", OVERLAPPING).unwrap();
    let g = Globals::of(&c);
    assert_eq!(
        g.pairs("a"),
        [Translation {
            local: net("10.10.0.0/16"),
            global: net("10.128.0.0/16")
        }]
    );
    assert_eq!(g.pairs("b")[0].global, net("10.129.0.0/16"));
    assert!(!g.is_translated("c"));
    assert_eq!(g.mesh_prefixes(c.site("c").unwrap()), [net("10.20.0.0/16")]);
    assert_eq!(g.to_mesh("b", net("10.10.5.0/24")), net("10.129.5.0/24"));
    assert_eq!(g.to_mesh("c", net("10.20.5.0/24")), net("10.20.5.0/24"));
    // Appending a site keeps the others' allocation; the same config always gives the same.
    let more = format!("{OVERLAPPING}\n[[sites]]\nname = \"d\"\nprefixes = [\"10.10.0.0/24\"]");
    let c2 = config("global-cidr = \"10.128.0.0/12\"", &more).unwrap();
    let g2 = Globals::of(&c2);
    assert_eq!(g2.pairs("a"), g.pairs("a"));
    assert_eq!(g2.pairs("b"), g.pairs("b"));
    assert_eq!(g2.pairs("d")[0].global, net("10.130.0.0/24"));
    assert_eq!(Globals::of(&c2), g2);
}

#[test]
fn allocation_skips_declared_globals_and_stays_aligned() {
    let sites = r#"
[[sites]]
name = "a"
prefixes = ["10.10.0.0/16"]
global-prefixes = ["10.128.0.0/16"]
[[sites]]
name = "b"
prefixes = ["10.10.0.0/16", "192.168.0.0/24"]
[[sites]]
name = "d"
prefixes = ["192.168.0.0/24"]
"#;
    let c = config("global-cidr = \"10.128.0.0/12\"", sites).unwrap();
    let g = Globals::of(&c);
    assert_eq!(g.pairs("a")[0].global, net("10.128.0.0/16"));
    let b: Vec<IpNetwork> = g.pairs("b").iter().map(|t| t.global).collect();
    assert_eq!(b, [net("10.129.0.0/16"), net("10.130.0.0/24")]);
    assert_eq!(g.pairs("d")[0].global, net("10.130.1.0/24"));
    // The allocator alone: past what is taken, aligned, same family, bounded.
    let taken = [net("10.0.0.0/25"), net("10.0.1.0/24")];
    assert_eq!(
        allocate(net("10.0.0.0/16"), net("192.168.0.0/24"), &taken),
        Some(net("10.0.2.0/24"))
    );
    assert_eq!(
        allocate(net("10.0.0.0/23"), net("192.168.0.0/24"), &taken),
        None
    );
    assert_eq!(allocate(net("10.0.0.0/16"), net("fd00::/64"), &[]), None);
    assert_eq!(allocate(net("10.0.0.0/16"), net("10.0.0.0/8"), &[]), None);
    assert_eq!(
        allocate(net("fd99::/32"), net("fd00:a::/48"), &[net("fd99::/48")]),
        Some(net("fd99:0:1::/48"))
    );
}

#[test]
fn one_translated_site_is_enough_to_be_accepted() {
    let sites = OVERLAPPING.replacen(
        "prefixes = [\"10.10.0.0/16\"]",
        "prefixes = [\"10.10.0.0/16\"]\nglobal-prefixes = [\"172.16.0.0/16\"]",
        1,
    );
    let c = config("", &sites).unwrap();
    let g = Globals::of(&c);
    assert!(g.is_translated("a") && !g.is_translated("b"));
}

#[test]
fn bad_global_addresses_name_the_key_and_the_fix() {
    let with = |globals: &str| {
        OVERLAPPING.replacen(
            "prefixes = [\"10.10.0.0/16\"]",
            &format!("prefixes = [\"10.10.0.0/16\"]\nglobal-prefixes = {globals}"),
            1,
        )
    };
    let cases = [
        (config("", &with("[\"172.16.0.0/24\"]")), "same family and size (/16)"),
        (config("", &with("[\"fd00::/16\"]")), "same family and size"),
        (config("", &with("[\"172.16.0.1/16\"]")), "host bits"),
        (
            config("", &with("[\"172.16.0.0/16\", \"172.17.0.0/16\"]")),
            "2 global prefixes for 1 in `prefixes`",
        ),
        (config("", &with("[\"10.20.0.0/16\"]")), "overlaps site c's prefix 10.20.0.0/16"),
        (config("", &with("[\"100.64.0.0/16\"]")), "overlaps the overlay CIDR"),
        (
            config("global-cidr = \"10.0.0.0/8\"", OVERLAPPING),
            "key `global-cidr`: 10.0.0.0/8 overlaps site a's prefix",
        ),
        (
            config("global-cidr = \"10.128.0.0/17\"", OVERLAPPING),
            "no free /16 left",
        ),
        (config("global-cidr = \"10.128.0.1/12\"", OVERLAPPING), "not a network"),
        (
            config(
                "",
                &format!(
                    "{}\n[[sites]]\nname = \"d\"\nprefixes = [\"10.30.0.0/16\"]\nglobal-prefixes = [\"172.16.0.0/16\"]",
                    with("[\"172.16.0.0/16\"]")
                ),
            ),
            "sites[3].global-prefixes`: 172.16.0.0/16 overlaps site a's global prefix",
        ),
        (
            config(
                "",
                &format!(
                    "{}\n[[external-peers]]\nname = \"dc1\"\nsite = \"a\"\npublic-key = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"\nprefixes = [\"10.10.9.0/24\"]",
                    with("[\"172.16.0.0/16\"]")
                ),
            ),
            "external peer dc1, which cannot translate",
        ),
    ];
    for (result, needle) in cases {
        let err = format!("{:#}", result.unwrap_err());
        assert!(err.contains(needle), "{needle:?} not in: {err}");
    }
}

#[test]
fn resolve_names_the_site_by_global_or_by_every_real_owner() {
    let c = config("global-cidr = \"10.128.0.0/12\"", OVERLAPPING).unwrap();
    let g = Globals::of(&c);
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let by_global = g.resolve(&c.sites, ip("10.129.0.20"));
    assert_eq!(
        by_global,
        [Resolved {
            site: "b".into(),
            local: ip("10.10.0.20"),
            global: ip("10.129.0.20")
        }]
    );
    let by_real = g.resolve(&c.sites, ip("10.10.0.20"));
    let sites: Vec<(&str, IpAddr)> = by_real
        .iter()
        .map(|r| (r.site.as_str(), r.global))
        .collect();
    assert_eq!(sites, [("a", ip("10.128.0.20")), ("b", ip("10.129.0.20"))]);
    assert_eq!(
        g.resolve(&c.sites, ip("10.20.1.1")),
        [Resolved {
            site: "c".into(),
            local: ip("10.20.1.1"),
            global: ip("10.20.1.1")
        }]
    );
    assert!(g.resolve(&c.sites, ip("192.0.2.1")).is_empty());
}
