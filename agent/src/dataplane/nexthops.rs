//! Which of its site's gateways a member sends each remote prefix through (pure state
//! machine fed with answers and time; `member_watch` is its IO shell).
//!
//! A member has no tunnels: its routes to other sites go to a gateway of its own site on
//! the site network. The map lists every gateway of the site ([`LocalGateway`]); the member
//! asks each of them every probe interval which of its routes' prefixes it can carry now
//! (a carry query, see `paths::carry`). A gateway says it carries a prefix while it has a
//! path up to one of the prefix's carriers with a WireGuard session agreed since that path
//! came up, the rule by which it announces the prefix over BGP. Each route then goes to
//! every gateway that carries its prefix, among those of the best priority (a multipath
//! route: the kernel spreads flows over them by its hash, one flow to one gateway while the
//! set does not change), so:
//!
//! - a gateway whose tunnels to a site fail stops getting that site's flows at the next
//!   answer after it noticed (its own probes, see `paths::select`);
//! - a gateway that dies stops getting any after [`DOWN_AFTER`] queries in a row go
//!   unanswered: the first is lost at its interval, the next ones are sent a quarter
//!   interval apart ("suspect"), each lost after twice the round trip plus 50 ms;
//! - standby gateways get flows only while no active one carries the prefix;
//! - while no gateway answers at all (a coordinator that lists none, gateways of an agent
//!   version before carry queries, or all of them dead), a route goes where the map says
//!   (`RouteView::via_address`): the behaviour before this module. While some answer but
//!   none carries a prefix, it goes to every answering gateway of the best priority
//!   (nothing better is known; their unreachable routes refuse what they cannot carry).

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;

/// Queries lost in a row after which a gateway counts as dead.
pub const DOWN_AFTER: u32 = 3;
/// The longest a query waits for its answer.
pub const MAX_WAIT: Duration = Duration::from_secs(1);
/// Added to twice the smoothed round trip for a query's deadline.
const SLACK: Duration = Duration::from_millis(50);

/// A gateway of the site as the watch knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateway {
    pub id: String,
    /// WireGuard public key (the carry key derives from it).
    pub key: [u8; 32],
    pub address: SocketAddr,
    pub priority: u8,
}

/// A query to send now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask {
    /// Index into the gateways given to [`Watch::set`].
    pub gateway: usize,
    pub address: SocketAddr,
    pub seq: u64,
    pub prefixes: Vec<IpNetwork>,
}

#[derive(Debug, Clone)]
struct InFlight {
    seq: u64,
    sent: Instant,
    deadline: Instant,
    chunk: Range<usize>,
}

#[derive(Debug, Clone)]
struct State {
    gateway: Gateway,
    next: Instant,
    in_flight: VecDeque<InFlight>,
    lost_in_row: u32,
    srtt: Option<Duration>,
    /// Answered since it was last declared dead.
    alive: bool,
    /// Per prefix, from the latest answer covering it.
    carries: Vec<bool>,
}

/// The member's view of its site's gateways.
#[derive(Debug)]
pub struct Watch {
    interval: Duration,
    gateways: Vec<State>,
    prefixes: Vec<IpNetwork>,
    chunks: Vec<Range<usize>>,
    next_seq: u64,
}

impl Watch {
    /// Asking every `interval` (the agent's probe interval).
    pub fn new(interval: Duration) -> Watch {
        Watch {
            interval: interval.max(Duration::from_millis(10)),
            gateways: Vec::new(),
            prefixes: Vec::new(),
            chunks: Vec::new(),
            next_seq: 1,
        }
    }

    /// The gateways and the routes' prefixes from a map. A gateway still listed keeps its
    /// state (by id and key) when the prefixes did not change; others start unknown and
    /// are asked at once.
    pub fn set(&mut self, gateways: Vec<Gateway>, mut prefixes: Vec<IpNetwork>, now: Instant) {
        prefixes.sort();
        prefixes.dedup();
        let same_prefixes = prefixes == self.prefixes;
        let mut old = std::mem::take(&mut self.gateways);
        self.gateways = gateways
            .into_iter()
            .map(|g| {
                let kept = old
                    .iter()
                    .position(|s| s.gateway.id == g.id && s.gateway.key == g.key)
                    .map(|i| old.swap_remove(i));
                match kept {
                    Some(mut s) => {
                        if !same_prefixes {
                            s.carries = vec![false; prefixes.len()];
                            s.in_flight.clear();
                            s.next = now;
                        }
                        s.gateway = g;
                        s
                    }
                    None => State {
                        gateway: g,
                        next: now,
                        in_flight: VecDeque::new(),
                        lost_in_row: 0,
                        srtt: None,
                        alive: false,
                        carries: vec![false; prefixes.len()],
                    },
                }
            })
            .collect();
        self.chunks = crate::paths::carry::chunks(&prefixes);
        self.prefixes = prefixes;
    }

    /// Expires unanswered queries and returns the queries due now.
    pub fn poll(&mut self, now: Instant) -> Vec<Ask> {
        let mut out = Vec::new();
        if self.prefixes.is_empty() {
            return out;
        }
        for (i, s) in self.gateways.iter_mut().enumerate() {
            while s.in_flight.front().is_some_and(|q| q.deadline <= now) {
                s.in_flight.pop_front();
                s.lost_in_row += 1;
                if s.lost_in_row == 1 {
                    // Suspect: ask again soon rather than at the next interval.
                    s.next = s.next.min(now + self.interval / 4);
                }
                if s.lost_in_row >= DOWN_AFTER && s.alive {
                    s.alive = false;
                    tracing::info!(gateway = %s.gateway.id, lost = s.lost_in_row, "gateway stopped answering carry queries; routes move to the others");
                }
            }
            if s.next > now {
                continue;
            }
            let wait = s
                .srtt
                .map(|r| (r * 2 + SLACK).min(MAX_WAIT))
                .unwrap_or(MAX_WAIT);
            for chunk in &self.chunks {
                let seq = self.next_seq;
                self.next_seq += 1;
                s.in_flight.push_back(InFlight {
                    seq,
                    sent: now,
                    deadline: now + wait,
                    chunk: chunk.clone(),
                });
                out.push(Ask {
                    gateway: i,
                    address: s.gateway.address,
                    seq,
                    prefixes: self.prefixes[chunk.clone()].to_vec(),
                });
            }
            let step = if s.lost_in_row > 0 {
                self.interval / 4
            } else {
                self.interval
            };
            s.next = now + step;
        }
        out
    }

    /// When [`Watch::poll`] next has something to do.
    pub fn next_wakeup(&self) -> Option<Instant> {
        if self.prefixes.is_empty() {
            return None;
        }
        self.gateways
            .iter()
            .flat_map(|s| std::iter::once(s.next).chain(s.in_flight.front().map(|q| q.deadline)))
            .min()
    }

    /// An authenticated answer from gateway `gateway` (index) to query `seq`. Answers to
    /// no query in flight (late, duplicated, replayed) and of the wrong size change nothing
    /// and return false.
    pub fn on_answer(&mut self, gateway: usize, seq: u64, carries: &[bool], now: Instant) -> bool {
        let Some(s) = self.gateways.get_mut(gateway) else {
            return false;
        };
        let Some(pos) = s.in_flight.iter().position(|q| q.seq == seq) else {
            return false;
        };
        if carries.len() != s.in_flight[pos].chunk.len() {
            return false;
        }
        let q = s.in_flight.remove(pos).unwrap_or_else(|| unreachable!());
        let rtt = now.saturating_duration_since(q.sent);
        s.srtt = Some(match s.srtt {
            Some(old) => (old * 7 + rtt) / 8,
            None => rtt,
        });
        // Earlier queries still in flight were overtaken: lost for the count, not waited on.
        s.lost_in_row = 0;
        if !s.alive {
            tracing::info!(gateway = %s.gateway.id, "gateway answers carry queries");
        }
        s.alive = true;
        s.carries[q.chunk].copy_from_slice(carries);
        true
    }

    /// Per prefix, the addresses of the gateways to route it through (see the module
    /// documentation); a prefix no gateway answers for has an empty list.
    pub fn next_hops(&self) -> BTreeMap<IpNetwork, Vec<IpAddr>> {
        self.prefixes
            .iter()
            .enumerate()
            .map(|(i, prefix)| {
                let alive = || self.gateways.iter().filter(|s| s.alive);
                let carrying: Vec<&State> = alive().filter(|s| s.carries[i]).collect();
                let pool: Vec<&State> = if carrying.is_empty() {
                    alive().collect()
                } else {
                    carrying
                };
                let best = pool.iter().map(|s| s.gateway.priority).min();
                let mut hops: Vec<IpAddr> = pool
                    .iter()
                    .filter(|s| Some(s.gateway.priority) == best)
                    .map(|s| s.gateway.address.ip())
                    .collect();
                hops.sort();
                hops.dedup();
                (*prefix, hops)
            })
            .collect()
    }

    /// Every gateway: whether it answers and how many of the routes go through it (given
    /// `hops`, from [`Watch::next_hops`]), for the metrics.
    pub fn report(&self, hops: &BTreeMap<IpNetwork, Vec<IpAddr>>) -> Vec<GatewayReport> {
        self.gateways
            .iter()
            .map(|s| GatewayReport {
                id: s.gateway.id.clone(),
                answering: s.alive,
                routes: hops
                    .values()
                    .filter(|h| h.contains(&s.gateway.address.ip()))
                    .count(),
            })
            .collect()
    }
}

/// One of the site's gateways as a member sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayReport {
    /// `site/node`.
    pub id: String,
    /// It answers carry queries.
    pub answering: bool,
    /// The member's routes that go through it now.
    pub routes: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    fn gw(n: u8, priority: u8) -> Gateway {
        Gateway {
            id: format!("a/gw{n}"),
            key: [n; 32],
            address: SocketAddr::from(([10, 10, 0, n], 51820)),
            priority,
        }
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 10, 0, n])
    }

    /// A simulated site: gateways answer (after `rtt`) with what `carry(gateway, prefix)`
    /// says, unless `dead(gateway)`.
    struct Site {
        watch: Watch,
        now: Instant,
        rtt: Duration,
        /// Answers on their way back (a gateway that dies later still sent them).
        pending: Vec<(Instant, Ask)>,
    }

    impl Site {
        fn new(gateways: Vec<Gateway>, prefixes: &[&str]) -> Site {
            let now = Instant::now();
            let mut watch = Watch::new(Duration::from_millis(200));
            watch.set(gateways, prefixes.iter().map(|p| net(p)).collect(), now);
            Site {
                watch,
                now,
                rtt: MS,
                pending: Vec::new(),
            }
        }

        /// Runs for `span` in 1 ms steps.
        fn run(
            &mut self,
            span: Duration,
            dead: impl Fn(usize) -> bool,
            carry: impl Fn(usize, IpNetwork) -> bool,
        ) {
            let end = self.now + span;
            while self.now < end {
                for ask in self.watch.poll(self.now) {
                    if !dead(ask.gateway) {
                        self.pending.push((self.now + self.rtt, ask));
                    }
                }
                let (ready, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
                    .into_iter()
                    .partition(|(at, _)| *at <= self.now);
                self.pending = later;
                for (_, ask) in ready {
                    let bits: Vec<bool> = ask
                        .prefixes
                        .iter()
                        .map(|p| carry(ask.gateway, *p))
                        .collect();
                    self.watch.on_answer(ask.gateway, ask.seq, &bits, self.now);
                }
                self.now += MS;
            }
        }

        fn hops(&self, prefix: &str) -> Vec<IpAddr> {
            self.watch.next_hops()[&net(prefix)].clone()
        }
    }

    #[test]
    fn flows_spread_over_every_gateway_that_carries_the_prefix() {
        let mut site = Site::new(vec![gw(1, 0), gw(2, 0)], &["10.20.0.0/16", "10.30.0.0/16"]);
        // Before any answer: nothing known, the map's gateway is used.
        assert!(site.hops("10.20.0.0/16").is_empty());
        site.run(Duration::from_millis(50), |_| false, |_, _| true);
        assert_eq!(site.hops("10.20.0.0/16"), vec![ip(1), ip(2)]);
        // Gateway 2 loses its tunnels to 10.30/16 only: that prefix leaves it at the next
        // answer, the other stays spread.
        site.run(
            Duration::from_millis(250),
            |_| false,
            |g, p| !(g == 1 && p == net("10.30.0.0/16")),
        );
        assert_eq!(site.hops("10.30.0.0/16"), vec![ip(1)]);
        assert_eq!(site.hops("10.20.0.0/16"), vec![ip(1), ip(2)]);
    }

    #[test]
    fn a_dead_gateway_is_dropped_within_half_a_second_and_returns_when_it_answers() {
        let mut site = Site::new(vec![gw(1, 0), gw(2, 0)], &["10.20.0.0/16"]);
        site.run(Duration::from_secs(1), |_| false, |_, _| true);
        assert_eq!(site.hops("10.20.0.0/16"), vec![ip(1), ip(2)]);
        // Gateway 1 dies at an arbitrary moment: gone from the route within 200 ms (the
        // interval) + 52 ms wait + 3 x 50 ms suspect spacing, whatever the phase.
        for phase in [0u64, 37, 120, 199] {
            site.run(Duration::from_millis(phase), |_| false, |_, _| true);
            let died = site.now;
            let mut gone = None;
            for _ in 0..1000 {
                site.run(MS, |g| g == 0, |_, _| true);
                if site.hops("10.20.0.0/16") == vec![ip(2)] {
                    gone = Some(site.now - died);
                    break;
                }
            }
            let gone = gone.expect("the dead gateway was never dropped");
            assert!(gone <= Duration::from_millis(450), "dropped after {gone:?}");
            // Back: at its next answer.
            site.run(Duration::from_millis(250), |_| false, |_, _| true);
            assert_eq!(site.hops("10.20.0.0/16"), vec![ip(1), ip(2)]);
        }
    }

    #[test]
    fn one_lost_answer_does_not_drop_a_gateway() {
        let mut site = Site::new(vec![gw(1, 0), gw(2, 0)], &["10.20.0.0/16"]);
        site.run(Duration::from_secs(1), |_| false, |_, _| true);
        // Gateway 1 misses one query (a lost datagram), then answers again.
        site.run(Duration::from_millis(210), |g| g == 0, |_, _| true);
        site.run(Duration::from_millis(300), |_| false, |_, _| true);
        assert_eq!(site.hops("10.20.0.0/16"), vec![ip(1), ip(2)]);
        let hops = site.watch.next_hops();
        assert_eq!(
            site.watch.report(&hops),
            vec![
                GatewayReport {
                    id: "a/gw1".into(),
                    answering: true,
                    routes: 1
                },
                GatewayReport {
                    id: "a/gw2".into(),
                    answering: true,
                    routes: 1
                },
            ]
        );
    }

    #[test]
    fn standby_gateways_carry_only_while_no_active_one_does() {
        let mut site = Site::new(vec![gw(1, 0), gw(2, 1)], &["10.20.0.0/16"]);
        site.run(Duration::from_millis(500), |_| false, |_, _| true);
        assert_eq!(site.hops("10.20.0.0/16"), vec![ip(1)]);
        // The active gateway loses its tunnel (answers, carries nothing): the standby.
        site.run(Duration::from_millis(300), |_| false, |g, _| g == 1);
        assert_eq!(site.hops("10.20.0.0/16"), vec![ip(2)]);
        // Neither carries it: every answering gateway of the best priority.
        site.run(Duration::from_millis(300), |_| false, |_, _| false);
        assert_eq!(site.hops("10.20.0.0/16"), vec![ip(1)]);
        // None answers: nothing known, the map's gateway.
        site.run(Duration::from_millis(800), |_| true, |_, _| true);
        assert!(site.hops("10.20.0.0/16").is_empty());
    }

    #[test]
    fn late_replayed_and_foreign_answers_change_nothing() {
        let mut site = Site::new(vec![gw(1, 0)], &["10.20.0.0/16"]);
        let asks = site.watch.poll(site.now);
        assert_eq!(asks.len(), 1);
        let seq = asks[0].seq;
        // Wrong gateway index, wrong seq, wrong length.
        assert!(!site.watch.on_answer(5, seq, &[true], site.now));
        assert!(!site.watch.on_answer(0, seq + 100, &[true], site.now));
        assert!(!site.watch.on_answer(0, seq, &[true, true], site.now));
        assert!(site.hops("10.20.0.0/16").is_empty());
        assert!(site.watch.on_answer(0, seq, &[true], site.now + MS));
        // The same answer again (a replay): refused.
        assert!(!site.watch.on_answer(0, seq, &[true], site.now + MS));
        assert_eq!(site.hops("10.20.0.0/16"), vec![ip(1)]);
    }

    #[test]
    fn a_new_map_keeps_what_is_known_of_unchanged_gateways() {
        let mut site = Site::new(vec![gw(1, 0), gw(2, 0)], &["10.20.0.0/16"]);
        site.run(Duration::from_millis(50), |_| false, |_, _| true);
        let now = site.now;
        // Gateway 3 joins; 1 and 2 keep their state, 3 is unknown until it answers.
        site.watch.set(
            vec![gw(1, 0), gw(2, 0), gw(3, 0)],
            vec![net("10.20.0.0/16")],
            now,
        );
        assert_eq!(site.hops("10.20.0.0/16"), vec![ip(1), ip(2)]);
        site.run(Duration::from_millis(20), |_| false, |_, _| true);
        assert_eq!(site.hops("10.20.0.0/16"), vec![ip(1), ip(2), ip(3)]);
        // Gateway 2 rotated its key: unknown again until it answers under the new one.
        let mut rotated = gw(2, 0);
        rotated.key = [9; 32];
        let now = site.now;
        site.watch.set(
            vec![gw(1, 0), rotated, gw(3, 0)],
            vec![net("10.20.0.0/16")],
            now,
        );
        assert_eq!(site.hops("10.20.0.0/16"), vec![ip(1), ip(3)]);
    }
}
