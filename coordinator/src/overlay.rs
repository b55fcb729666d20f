//! Overlay address allocation. Pure and deterministic: the lowest free host address.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

/// The lowest address of `cidr` (excluding network and broadcast) not in `used`.
pub fn allocate(cidr: Ipv4Network, used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let first = u32::from(cidr.network()).checked_add(1)?;
    let last = u32::from(cidr.broadcast()).checked_sub(1)?;
    (first..=last)
        .map(Ipv4Addr::from)
        .find(|ip| !used.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_lowest_free_and_runs_out() {
        let cidr: Ipv4Network = "100.64.0.0/30".parse().unwrap();
        let mut used = BTreeSet::new();
        let a = allocate(cidr, &used).unwrap();
        assert_eq!(a, Ipv4Addr::new(100, 64, 0, 1));
        used.insert(a);
        let b = allocate(cidr, &used).unwrap();
        assert_eq!(b, Ipv4Addr::new(100, 64, 0, 2));
        used.insert(b);
        assert_eq!(allocate(cidr, &used), None);
        used.remove(&a);
        assert_eq!(allocate(cidr, &used), Some(a));
    }
}
