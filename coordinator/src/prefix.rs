//! Prefix arithmetic (pure), shared by the config's checks, the prefix policy and the
//! access policy.

use ipnetwork::IpNetwork;

/// Whether two prefixes share any address.
pub fn overlaps(a: IpNetwork, b: IpNetwork) -> bool {
    contains(a, b) || contains(b, a)
}

/// Whether `outer` contains all of `inner`.
pub fn contains(outer: IpNetwork, inner: IpNetwork) -> bool {
    outer.prefix() <= inner.prefix()
        && outer.contains(inner.network())
        && matches!(
            (outer, inner),
            (IpNetwork::V4(_), IpNetwork::V4(_)) | (IpNetwork::V6(_), IpNetwork::V6(_))
        )
}
