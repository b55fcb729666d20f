//! What happened in a run, hashed as it goes (FNV-1a, 64 bits): two runs of one seed must
//! give the same hash. The lines themselves are kept only when asked (`--trace`).

#[derive(Debug, Clone)]
pub struct Trace {
    hash: u64,
    lines: Option<Vec<String>>,
    count: u64,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

impl Trace {
    pub fn new(keep: bool) -> Trace {
        Trace {
            hash: FNV_OFFSET,
            lines: keep.then(Vec::new),
            count: 0,
        }
    }

    pub fn record(&mut self, line: String) {
        self.hash = fnv(self.hash, line.as_bytes());
        self.hash = fnv(self.hash, b"\n");
        self.count += 1;
        if let Some(lines) = &mut self.lines {
            lines.push(line);
        }
    }

    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// How many lines were recorded.
    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn lines(&self) -> &[String] {
        self.lines.as_deref().unwrap_or(&[])
    }
}

/// FNV-1a of `bytes`, continuing from `hash`.
pub fn fnv(mut hash: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_follows_every_line_in_order() {
        let run = |lines: &[&str]| {
            let mut t = Trace::new(false);
            for l in lines {
                t.record(l.to_string());
            }
            t.hash()
        };
        assert_eq!(run(&["a", "b"]), run(&["a", "b"]));
        assert_ne!(run(&["a", "b"]), run(&["b", "a"]));
        assert_ne!(run(&["ab"]), run(&["a", "b"]));
        // The published FNV-1a test vector.
        assert_eq!(fnv(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
