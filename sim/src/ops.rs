//! The operations of a scenario, generated from its seed: what operators, machines and the
//! network do to the mesh. Nodes are named by a number taken modulo the nodes enrolled and
//! not revoked at the time (in enrollment order), so any subset of a scenario's steps still
//! runs (which is how a failure is shrunk).

use std::fmt;
use std::time::Duration;

use crate::rng::Rng;

/// A node's role, as the simulator enrolls it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gateway,
    Member,
}

/// One operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// An operator creates a join token and a new node enrolls with it, then runs. Its
    /// `prefixes` are indices into [`crate::world::PREFIX_CHOICES`] of its site.
    Enroll {
        site: usize,
        kind: Kind,
        prefixes: Vec<usize>,
    },
    /// The node's agent crashes and starts again: it keeps its certificate, WireGuard key
    /// and saved map, nothing else.
    Restart {
        node: usize,
    },
    /// The node's agent crashes and stays down until `Start`.
    Stop {
        node: usize,
    },
    Start {
        node: usize,
    },
    /// The path between the node and the coordinator breaks (both ways) until `Heal`.
    Partition {
        node: usize,
    },
    Heal {
        node: usize,
    },
    /// `straitctl revoke` of the node.
    Revoke {
        node: usize,
    },
    /// `straitctl rotate-key` of the node.
    RotateKey {
        node: usize,
    },
    /// The node's configured prefixes change (its agent restarts with them).
    SetPrefixes {
        node: usize,
        prefixes: Vec<usize>,
    },
    /// The coordinator crashes and comes back from its store after `down`.
    CoordinatorRestart {
        down: Duration,
    },
    /// Nothing: time passes.
    Wait,
    /// Every partition heals and nothing else happens until every node's map converges
    /// (bounded: [`crate::props::CONVERGENCE_BOUND`]).
    Quiet,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Enroll {
                site,
                kind,
                prefixes,
            } => write!(f, "enroll {kind:?} in site #{site} prefixes {prefixes:?}"),
            Op::Restart { node } => write!(f, "restart node #{node}"),
            Op::Stop { node } => write!(f, "stop node #{node}"),
            Op::Start { node } => write!(f, "start node #{node}"),
            Op::Partition { node } => write!(f, "partition node #{node}"),
            Op::Heal { node } => write!(f, "heal node #{node}"),
            Op::Revoke { node } => write!(f, "revoke node #{node}"),
            Op::RotateKey { node } => write!(f, "rotate-key node #{node}"),
            Op::SetPrefixes { node, prefixes } => {
                write!(f, "set prefixes of node #{node} to {prefixes:?}")
            }
            Op::CoordinatorRestart { down } => {
                write!(f, "restart the coordinator (down {} ms)", down.as_millis())
            }
            Op::Wait => write!(f, "wait"),
            Op::Quiet => write!(f, "quiet until converged"),
        }
    }
}

/// An operation and how long the mesh runs after it before the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub op: Op,
    pub after: Duration,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}, then {} ms", self.op, self.after.as_millis())
    }
}

/// How a scenario is generated.
#[derive(Debug, Clone)]
pub struct Shape {
    pub steps: usize,
    /// Most nodes enrolled and not revoked (the first three are gateways, one per site).
    pub max_nodes: usize,
    pub sites: usize,
    /// A `Quiet` step every this many steps (and one at the end).
    pub quiet_every: usize,
}

/// The steps of the scenario of `seed`.
pub fn generate(seed: u64, shape: &Shape) -> Vec<Step> {
    let mut rng = Rng::new(seed).fork(0x0905);
    let mut out = Vec::with_capacity(shape.steps + 8);
    let mut enrolled = 0usize;
    // A revoked node is replaced by a new one: about `max_nodes` stay live.
    let mut revoked = 0usize;
    let prefixes = |rng: &mut Rng| -> Vec<usize> {
        let n = rng.below(3) as usize;
        (0..n)
            .map(|_| rng.below(crate::world::PREFIX_CHOICES as u64) as usize)
            .collect()
    };
    for site in 0..shape.sites {
        out.push(Step {
            op: Op::Enroll {
                site,
                kind: Kind::Gateway,
                prefixes: vec![0],
            },
            after: rng.millis(0, 2_000),
        });
        enrolled += 1;
    }
    while out.len() + 1 < shape.steps {
        let node = rng.below(64) as usize;
        let roll = rng.below(100);
        let op = match roll {
            0..=11 if enrolled < shape.max_nodes + revoked => {
                enrolled += 1;
                let kind = if rng.chance(0.4) {
                    Kind::Gateway
                } else {
                    Kind::Member
                };
                Op::Enroll {
                    site: rng.below(shape.sites as u64) as usize,
                    kind,
                    prefixes: if kind == Kind::Gateway {
                        prefixes(&mut rng)
                    } else {
                        Vec::new()
                    },
                }
            }
            0..=19 => Op::Restart { node },
            20..=25 => Op::Stop { node },
            26..=33 => Op::Start { node },
            34..=43 => Op::Partition { node },
            44..=55 => Op::Heal { node },
            56..=58 => {
                revoked += 1;
                Op::Revoke { node }
            }
            59..=65 => Op::RotateKey { node },
            66..=70 => Op::SetPrefixes {
                node,
                prefixes: prefixes(&mut rng),
            },
            71..=73 => Op::CoordinatorRestart {
                down: rng.millis(0, 20_000),
            },
            _ => Op::Wait,
        };
        // Time passes: mostly a little, sometimes long enough for timeouts.
        let after = if rng.chance(if op == Op::Wait { 0.15 } else { 0.1 }) {
            rng.millis(5_000, 45_000)
        } else {
            rng.millis(0, 3_000)
        };
        out.push(Step { op, after });
        if shape.quiet_every > 0 && out.len() % shape.quiet_every == 0 {
            out.push(Step {
                op: Op::Quiet,
                after: Duration::ZERO,
            });
        }
    }
    out.push(Step {
        op: Op::Quiet,
        after: Duration::ZERO,
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_one_scenario_ending_quiet() {
        let shape = Shape {
            steps: 300,
            max_nodes: 10,
            sites: 3,
            quiet_every: 100,
        };
        let a = generate(7, &shape);
        assert_eq!(a, generate(7, &shape));
        assert_ne!(a, generate(8, &shape));
        assert_eq!(a.last().map(|s| &s.op), Some(&Op::Quiet));
        assert!(a.len() >= 299 && a.len() <= 305, "{}", a.len());
        let enrolls = a
            .iter()
            .filter(|s| matches!(s.op, Op::Enroll { .. }))
            .count();
        let revokes = a
            .iter()
            .filter(|s| matches!(s.op, Op::Revoke { .. }))
            .count();
        assert!((3..=10 + revokes).contains(&enrolls), "{enrolls}");
        assert!(a.iter().filter(|s| s.op == Op::Quiet).count() >= 3);
    }
}
