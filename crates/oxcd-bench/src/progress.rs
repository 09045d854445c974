//! The progress line: about once a second, a `\r`-updated line on stderr, and the shared
//! rate cap of all clients.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A running progress line; `stop` ends it and moves to a fresh line.
pub struct Progress {
    task: JoinHandle<()>,
    printed: Arc<AtomicBool>,
}

impl Progress {
    /// Prints `line()` every second (the first after one second).
    pub fn start(mut line: impl FnMut() -> String + Send + 'static) -> Progress {
        let printed = Arc::new(AtomicBool::new(false));
        let flag = printed.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r{}\x1b[K", line());
                let _ = err.flush();
                flag.store(true, Ordering::Relaxed);
            }
        });
        Progress { task, printed }
    }

    pub fn stop(self) {
        self.task.abort();
        if self.printed.load(Ordering::Relaxed) {
            eprintln!();
        }
    }
}

/// Spaces request starts `1/rate` seconds apart across all clients.
pub struct Limiter {
    interval: Duration,
    next: Mutex<Option<Instant>>,
}

impl Limiter {
    pub fn new(rate: f64) -> Limiter {
        Limiter {
            interval: Duration::from_secs_f64(1.0 / rate),
            next: Mutex::new(None),
        }
    }

    /// Waits for the next free slot.
    pub async fn wait(&self) {
        let at = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let at = next.map_or(now, |n| n.max(now));
            *next = Some(at + self.interval);
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn limiter_spaces_requests() {
        let l = Limiter::new(200.0);
        let t0 = Instant::now();
        for _ in 0..11 {
            l.wait().await;
        }
        let e = t0.elapsed();
        assert!(e >= Duration::from_millis(50), "{e:?}");
        assert!(e < Duration::from_secs(2), "{e:?}");
    }
}
