//! What the engine last handed to the IO shell (the peers up, their packet limits), so
//! that a timer pass can tell whether anything changed without allocating or sorting: the
//! shell publishes only on a change. With 200 peers, building and sorting both lists every
//! 20 ms pass was a measurable part of a gateway's idle CPU (BENCHMARKS.md, "Many peers").

/// A list of (key, value), sorted by key, as last published.
#[derive(Debug)]
pub(super) struct Published<K, V> {
    items: Vec<(K, V)>,
}

impl<K, V> Default for Published<K, V> {
    /// Nothing published yet: an empty list (what the shell's channels start with).
    fn default() -> Self {
        Published { items: Vec::new() }
    }
}

impl<K: Ord + Copy, V: PartialEq + Copy> Published<K, V> {
    /// Whether `current` (each key at most once, in any order) is the published list.
    fn holds(&self, current: impl Iterator<Item = (K, V)>) -> bool {
        let mut n = 0;
        for (key, value) in current {
            n += 1;
            match self.items.binary_search_by(|(k, _)| k.cmp(&key)) {
                Ok(i) if self.items[i].1 == value => {}
                _ => return false,
            }
        }
        // Every current entry is published, and there are as many: the same set.
        n == self.items.len()
    }

    /// `current` (each key at most once, in any order), sorted by key, if it is not what
    /// was last published; it is then the published list.
    pub(super) fn update(
        &mut self,
        current: impl Iterator<Item = (K, V)> + Clone,
    ) -> Option<&[(K, V)]> {
        if self.holds(current.clone()) {
            return None;
        }
        self.items.clear();
        self.items.extend(current);
        self.items.sort_unstable_by_key(|(k, _)| *k);
        Some(&self.items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(
        p: &mut Published<u8, Option<u16>>,
        items: &[(u8, Option<u16>)],
    ) -> Option<Vec<(u8, Option<u16>)>> {
        p.update(items.iter().copied()).map(<[_]>::to_vec)
    }

    #[test]
    fn only_a_change_is_published_whatever_the_order() {
        let mut p = Published::default();
        // Nothing up yet is what the shell starts with: no change.
        assert_eq!(update(&mut p, &[]), None);
        assert_eq!(
            update(&mut p, &[(3, None), (1, Some(1420))]),
            Some(vec![(1, Some(1420)), (3, None)])
        );
        assert_eq!(update(&mut p, &[(3, None), (1, Some(1420))]), None);
        assert_eq!(update(&mut p, &[(1, Some(1420)), (3, None)]), None, "order");
        // A value changes.
        assert_eq!(
            update(&mut p, &[(1, Some(1380)), (3, None)]),
            Some(vec![(1, Some(1380)), (3, None)])
        );
        // One is added, one goes, one replaces another.
        assert_eq!(
            update(&mut p, &[(1, Some(1380)), (3, None), (2, None)]),
            Some(vec![(1, Some(1380)), (2, None), (3, None)])
        );
        assert_eq!(
            update(&mut p, &[(1, Some(1380)), (3, None)]),
            Some(vec![(1, Some(1380)), (3, None)])
        );
        assert_eq!(
            update(&mut p, &[(1, Some(1380)), (4, None)]),
            Some(vec![(1, Some(1380)), (4, None)])
        );
        // All go.
        assert_eq!(update(&mut p, &[]), Some(vec![]));
        assert_eq!(update(&mut p, &[]), None);
    }
}
