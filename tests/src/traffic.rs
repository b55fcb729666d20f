//! Traffic between workloads in test namespaces: iperf3 transfers, DF pings, and a sampler
//! of the bytes an interface receives (to measure how long a transfer stalls).

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::netns::{enter, Netns};

/// What a completed iperf3 transfer reported (the sender's figures).
#[derive(Debug, Clone, Copy)]
pub struct Transfer {
    pub secs: f64,
    pub bytes: f64,
    /// The connection's MSS (`TCP_MAXSEG`: the segment payload, less TCP options).
    pub mss: u64,
}

impl Transfer {
    pub fn mbit_s(&self) -> f64 {
        self.bytes * 8.0 / self.secs / 1e6
    }
}

/// A 30 MB TCP transfer from `from` to `to_addr` in `to` (iperf3, its server started in
/// `to`), given up after `limit` seconds; the reason (with iperf3's output) when it did not
/// complete. Printed as `what`.
pub fn transfer(
    from: &Netns,
    to: &Netns,
    to_addr: &str,
    what: &str,
    limit: u32,
) -> Result<Transfer, String> {
    let port = crate::procs::free_tcp_port().to_string();
    let mut server = Command::new("ip")
        .args(["netns", "exec", &to.name, "iperf3", "-s", "-1", "-p", &port])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 must be installed");
    std::thread::sleep(Duration::from_millis(300));
    let limit = limit.to_string();
    let out = from.exec(&[
        "timeout", &limit, "iperf3", "-c", to_addr, "-p", &port, "-n", "30M", "-J",
    ]);
    let _ = server.kill();
    let _ = server.wait();
    let text = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    // The sender's figures: iperf3's server stops counting when the client says it is done,
    // which can be before it has read the last bytes; a clean exit means every byte was
    // sent and the test ended normally.
    let sent = &json["end"]["sum_sent"];
    let t = Transfer {
        secs: sent["seconds"].as_f64().unwrap_or(0.0),
        bytes: sent["bytes"].as_f64().unwrap_or(0.0),
        mss: json["start"]["tcp_mss_default"].as_u64().unwrap_or(0),
    };
    if !(out.status.success() && t.bytes >= 30.0 * 1024.0 * 1024.0) {
        return Err(format!(
            "{what}: 30 MB transfer did not complete in {limit} s ({} bytes in {} s, status {:?})\n{text}\n{}",
            t.bytes,
            t.secs,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    println!(
        "{what}: 30 MB in {:.2} s ({:.0} Mbit/s, MSS {})",
        t.secs,
        t.mbit_s(),
        t.mss
    );
    Ok(t)
}

/// One DF ping of `size` payload bytes from `ns` to `to` (IPv4 or IPv6 by the address):
/// whether it was answered, and ping's output (which names the MTU of a "fragmentation
/// needed" / "packet too big" error, or of a local "message too long").
pub fn df_ping(ns: &Netns, to: &str, size: u32) -> (bool, String) {
    let size = size.to_string();
    let out = ns.exec(&["ping", "-c", "1", "-W", "2", "-M", "do", "-s", &size, to]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Whether ping's output reports an MTU of `mtu` (`mtu = N` for IPv4 errors, `mtu=N` for
/// IPv6 and local ones).
pub fn reports_mtu(text: &str, mtu: u32) -> bool {
    text.contains(&format!("mtu = {mtu}")) || text.contains(&format!("mtu={mtu}"))
}

/// Samples the received-bytes counter of `dev` in a namespace every `every`, on a thread of
/// its own, until stopped (or `max` samples).
pub struct RxSampler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<(Duration, u64)>>>,
    pub started: Instant,
}

impl RxSampler {
    pub fn start(ns: &Netns, dev: &str, every: Duration, max: usize) -> RxSampler {
        let path = ns.path();
        let dev = format!("{dev}:");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let started = Instant::now();
        let thread = std::thread::spawn(move || {
            enter(&path);
            let mut samples = Vec::new();
            while samples.len() < max && !flag.load(Ordering::Relaxed) {
                // This thread's namespace's counters (`/proc/self/net` is the process's).
                let text = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap_or_default();
                let rx = text
                    .lines()
                    .find_map(|l| l.trim_start().strip_prefix(dev.as_str()))
                    .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
                    .unwrap_or(0);
                samples.push((started.elapsed(), rx));
                std::thread::sleep(every);
            }
            samples
        });
        RxSampler {
            stop,
            thread: Some(thread),
            started,
        }
    }

    /// Stops sampling; the samples: (time since the start, bytes received so far).
    pub fn finish(mut self) -> Vec<(Duration, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for RxSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The longest time between two samples in which fewer than `quiet` bytes arrived, after
/// `from` (and where it began): a transfer's longest stall.
pub fn longest_stall(
    samples: &[(Duration, u64)],
    from: Duration,
    quiet: u64,
) -> (Duration, Duration) {
    let mut best = (Duration::ZERO, from);
    let mut start: Option<Duration> = None;
    for w in samples.windows(2) {
        let ((t0, b0), (t1, b1)) = (w[0], w[1]);
        if t1 < from {
            continue;
        }
        if b1.saturating_sub(b0) < quiet {
            let s = *start.get_or_insert(t0);
            if t1 - s > best.0 {
                best = (t1 - s, s);
            }
        } else {
            start = None;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_quiet_run_is_found() {
        let ms = Duration::from_millis;
        let s: Vec<(Duration, u64)> = [0, 100, 200, 200, 201, 200, 500, 500, 900]
            .iter()
            .scan(0u64, |acc, d| {
                *acc += d;
                Some(*acc)
            })
            .enumerate()
            .map(|(i, b)| (ms(50 * i as u64), b))
            .collect();
        // Deltas: 100 200 200 201 200 500 500 900 at 100: none quiet.
        assert_eq!(longest_stall(&s, ms(0), 100).0, ms(0));
        // Below 250: samples 0..=5 (deltas 100..200) are quiet: 250 ms from 0.
        assert_eq!(longest_stall(&s, ms(0), 250), (ms(250), ms(0)));
    }
}
