//! Small helpers shared by every layer.

pub use cwmp_proto::util::{codec, time};

pub mod fsutil;
pub mod signals;

/// Gives freed heap memory back to the system (glibc keeps it otherwise): called after start-up
/// and after sessions, whose peaks (a 10,000-parameter answer) are short.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory held by the allocator.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

/// Rate limit for a repeated log line: at most one line per `every`, the next one telling how
/// many were suppressed meanwhile (a misbehaving peer must not fill the log).
#[derive(Debug)]
pub struct LogLimit {
    every: std::time::Duration,
    last: Option<std::time::Instant>,
    suppressed: u64,
}

impl LogLimit {
    pub fn new(every: std::time::Duration) -> LogLimit {
        LogLimit {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// Some(n) when a line may be written now (n: lines suppressed since the last one);
    /// None when this one is to be suppressed.
    pub fn check(&mut self, now: std::time::Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.duration_since(t) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LogLimit;
    use std::time::{Duration, Instant};

    #[test]
    fn log_limit_lets_one_line_through_per_period() {
        let mut l = LogLimit::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(l.check(t0), Some(0));
        for i in 1..=1000 {
            assert_eq!(l.check(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(l.check(t0 + Duration::from_secs(10)), Some(1000));
        assert_eq!(l.check(t0 + Duration::from_secs(11)), None);
    }
}
