//! Threads inside a test's namespaces (a workload's servers), stopped and joined on drop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::netns::{enter, Netns};

/// Background threads sharing one stop flag: each runs until the flag is set, which
/// dropping the value does before joining them.
#[derive(Default)]
pub struct Background {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Background {
    pub fn new() -> Background {
        Background::default()
    }

    /// Runs `f` on a new thread inside `ns`; `f` polls the flag it is given (with a bounded
    /// wait between polls: a read timeout, a non-blocking accept) and returns once it is set.
    pub fn spawn_in(&mut self, ns: &Netns, f: impl FnOnce(&AtomicBool) + Send + 'static) {
        let path = ns.path();
        let stop = self.stop.clone();
        self.threads.push(std::thread::spawn(move || {
            enter(&path);
            f(&stop)
        }));
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
