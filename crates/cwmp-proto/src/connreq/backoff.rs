//! Pure timing policies for the agent: the CWMP session retry wait
//! (TR-069 §3.2.1.1), the XMPP reconnect wait (TR-181 `XMPP.Connection.{i}.
//! ServerRetry*`), a token-bucket rate limiter shared by all connection-request
//! mechanisms, and the latch that coalesces connection requests arriving
//! during a session into exactly one follow-up session. Time and randomness
//! are always passed in.

use std::time::{Duration, Instant};

/// Upper bound for any computed wait (about 136 years); keeps extreme
/// multipliers from overflowing.
pub const MAX_WAIT: Duration = Duration::from_secs(u32::MAX as u64);

/// Retry counts above this use the same range (TR-069: "10 and subsequent").
pub const CWMP_RETRY_CAP: u32 = 10;

const MAX_WAIT_MS: u128 = MAX_WAIT.as_millis();

/// `m_ms · (k/1000)^exp` in milliseconds, saturating at [`MAX_WAIT`].
fn scaled_ms(m_s: u32, k_permille: u32, exp: u32) -> u128 {
    let k = u128::from(k_permille.max(1000));
    let mut v = u128::from(m_s) * 1000;
    for _ in 0..exp {
        v = v * k / 1000;
        if v >= MAX_WAIT_MS {
            return MAX_WAIT_MS;
        }
    }
    v
}

/// Maps `rand` uniformly onto `[lo, hi]` milliseconds (both ends reachable).
fn pick(lo_ms: u128, hi_ms: u128, rand: u32) -> Duration {
    let span = hi_ms.saturating_sub(lo_ms);
    let ms = lo_ms + span * u128::from(rand) / u128::from(u32::MAX);
    Duration::from_millis(ms.min(MAX_WAIT_MS) as u64)
}

/// The wait range for CWMP session retry `retry_count` (1 = first retry after
/// a failed session): `[m·(k/1000)^(n-1), m·(k/1000)^n]` with `n` capped at
/// [`CWMP_RETRY_CAP`]. `min_wait_s` is `CWMPRetryMinimumWaitInterval` (m,
/// default 5), `multiplier_permille` is `CWMPRetryIntervalMultiplier` (k,
/// default 2000; values below 1000 are treated as 1000). A `retry_count` of 0
/// is treated as 1.
pub fn cwmp_retry_range(
    retry_count: u32,
    min_wait_s: u32,
    multiplier_permille: u32,
) -> (Duration, Duration) {
    let n = retry_count.clamp(1, CWMP_RETRY_CAP);
    let lo = scaled_ms(min_wait_s, multiplier_permille, n - 1);
    let hi = scaled_ms(min_wait_s, multiplier_permille, n);
    (
        Duration::from_millis(lo as u64),
        Duration::from_millis(hi as u64),
    )
}

/// The CWMP session retry wait: uniform in [`cwmp_retry_range`], chosen by
/// `rand` (a uniformly random `u32` from the caller; 0 gives the minimum,
/// `u32::MAX` the maximum). Millisecond resolution.
pub fn cwmp_retry_wait(
    retry_count: u32,
    min_wait_s: u32,
    multiplier_permille: u32,
    rand: u32,
) -> Duration {
    let (lo, hi) = cwmp_retry_range(retry_count, min_wait_s, multiplier_permille);
    pick(lo.as_millis(), hi.as_millis(), rand)
}

/// Upper bound of the XMPP reconnect wait for attempt `attempt` (1 = first
/// reconnection): `ServerRetryInitialInterval · (ServerRetryIntervalMultiplier/1000)^(n-1)`.
pub fn xmpp_reconnect_bound(attempt: u32, initial_s: u32, multiplier_permille: u32) -> Duration {
    let n = attempt.max(1);
    Duration::from_millis(scaled_ms(initial_s, multiplier_permille, n - 1) as u64)
}

/// The XMPP reconnect wait for attempt `attempt` (1 = first reconnection):
/// uniform in `[0, initial·(mult/1000)^(n-1)]`; if that value exceeds
/// `max_s` (`ServerRetryMaxInterval`), `max_s` is used, as TR-181 words it.
/// Defaults: initial 60, multiplier 2000, max 30720.
pub fn xmpp_reconnect_wait(
    attempt: u32,
    initial_s: u32,
    multiplier_permille: u32,
    max_s: u32,
    rand: u32,
) -> Duration {
    let hi = xmpp_reconnect_bound(attempt, initial_s, multiplier_permille);
    let w = pick(0, hi.as_millis(), rand);
    w.min(Duration::from_secs(u64::from(max_s)))
}

/// A token bucket: up to `capacity` requests in a burst, refilled at
/// `refill_per_sec` tokens per second. Starts full. Shared by the HTTP, UDP
/// and XMPP connection-request paths (HTTP answers 503 when it refuses, UDP
/// drops silently, XMPP answers `service-unavailable`).
#[derive(Clone, Debug)]
pub struct RateLimiter {
    capacity: f64,
    refill_per_sec: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl RateLimiter {
    /// A bucket of `capacity` tokens refilled at `refill_per_sec`.
    pub fn new(capacity: u32, refill_per_sec: f64) -> Self {
        let capacity = f64::from(capacity);
        // NaN and non-positive rates mean "never refill"; +inf means "always full".
        let refill = if refill_per_sec > 0.0 {
            refill_per_sec
        } else {
            0.0
        };
        RateLimiter {
            capacity,
            refill_per_sec: refill,
            tokens: capacity,
            last: None,
        }
    }

    /// At most `count` requests per `period` (e.g. icwmp's 50 per 5 s,
    /// catawampus's 1 per 2 s).
    pub fn per_period(count: u32, period: Duration) -> Self {
        let secs = period.as_secs_f64();
        let rate = if secs > 0.0 {
            f64::from(count) / secs
        } else {
            f64::INFINITY
        };
        Self::new(count, rate)
    }

    /// The bucket size.
    pub fn capacity(&self) -> u32 {
        self.capacity as u32
    }

    /// The refill rate in tokens per second.
    pub fn refill_per_sec(&self) -> f64 {
        self.refill_per_sec
    }

    fn refill(&mut self, now: Instant) {
        if let Some(last) = self.last {
            // `now` earlier than `last` (caller-supplied) adds nothing.
            let dt = now.saturating_duration_since(last).as_secs_f64();
            if dt > 0.0 {
                self.tokens = (self.tokens + dt * self.refill_per_sec).min(self.capacity);
            }
        }
        if self.last.is_none_or(|l| now > l) {
            self.last = Some(now);
        }
    }

    /// Takes one token if available.
    pub fn try_acquire(&mut self, now: Instant) -> bool {
        self.refill(now);
        // A small epsilon absorbs floating-point error in the refill.
        if self.tokens >= 1.0 - 1e-9 {
            self.tokens = (self.tokens - 1.0).max(0.0);
            true
        } else {
            false
        }
    }

    /// When the next token is available (None: never, the bucket does not refill); the time of
    /// the last use when one is available already.
    pub fn next_token_at(&self) -> Option<Instant> {
        let last = self.last?;
        if self.tokens >= 1.0 - 1e-9 {
            return Some(last);
        }
        if self.refill_per_sec <= 0.0 {
            return None;
        }
        let secs = ((1.0 - self.tokens) / self.refill_per_sec).min(86_400.0);
        Some(last + Duration::from_secs_f64(secs))
    }

    /// Tokens currently available (after refilling up to `now`).
    pub fn available(&mut self, now: Instant) -> u32 {
        self.refill(now);
        (self.tokens + 1e-9).floor() as u32
    }
}

/// Coalesces connection requests (TR-069 §3.2.2, SPEC-NOTES rules H8/H9):
/// the session in progress is never aborted, and however many requests
/// arrive before or during a session, exactly one session follows.
///
/// Usage: the CR listeners call [`request`](Self::request) (and answer the
/// ACS at once); the session task calls [`session_started`](Self::session_started)
/// when it begins a session (its result says whether to include
/// `6 CONNECTION REQUEST`) and [`session_ended`](Self::session_ended) when
/// the session and its deferred changes are done (its result says whether to
/// start another session right away).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Coalescer {
    in_session: bool,
    pending: bool,
}

impl Coalescer {
    /// An idle latch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a connection request. Returns `true` when this request created
    /// the pending flag and no session is running, i.e. the caller should
    /// wake the session task; `false` when it merged into an already pending
    /// request or will be served after the running session.
    pub fn request(&mut self) -> bool {
        let wake = !self.pending && !self.in_session;
        self.pending = true;
        wake
    }

    /// A session begins. Returns `true` if it serves the pending connection
    /// request(s) (include `6 CONNECTION REQUEST`); clears the pending flag.
    pub fn session_started(&mut self) -> bool {
        self.in_session = true;
        std::mem::take(&mut self.pending)
    }

    /// The session has ended (successfully or not). Returns `true` when
    /// connection requests arrived during it and exactly one more session
    /// must run now; the flag stays pending until that session starts.
    pub fn session_ended(&mut self) -> bool {
        self.in_session = false;
        self.pending
    }

    /// Whether a connection request is waiting for a session.
    pub fn is_pending(&self) -> bool {
        self.pending
    }

    /// Whether a session is running (for the option of answering 503 instead).
    pub fn in_session(&self) -> bool {
        self.in_session
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: u64) -> Duration {
        Duration::from_secs(x)
    }

    #[test]
    fn cwmp_table_defaults() {
        // SPEC-NOTES e.8 table, m=5 k=2000.
        let table: [(u32, u64, u64); 10] = [
            (1, 5, 10),
            (2, 10, 20),
            (3, 20, 40),
            (4, 40, 80),
            (5, 80, 160),
            (6, 160, 320),
            (7, 320, 640),
            (8, 640, 1280),
            (9, 1280, 2560),
            (10, 2560, 5120),
        ];
        for (n, lo, hi) in table {
            assert_eq!(cwmp_retry_range(n, 5, 2000), (s(lo), s(hi)), "n={n}");
            assert_eq!(cwmp_retry_wait(n, 5, 2000, 0), s(lo), "n={n} min");
            assert_eq!(cwmp_retry_wait(n, 5, 2000, u32::MAX), s(hi), "n={n} max");
            let mid = cwmp_retry_wait(n, 5, 2000, u32::MAX / 2);
            assert!(mid > s(lo) && mid < s(hi));
        }
    }

    #[test]
    fn cwmp_cap_and_edge_inputs() {
        for n in [10, 11, 50, u32::MAX] {
            assert_eq!(cwmp_retry_range(n, 5, 2000), (s(2560), s(5120)));
        }
        assert_eq!(cwmp_retry_range(0, 5, 2000), cwmp_retry_range(1, 5, 2000));
        // Multiplier 1000: constant [m, m].
        assert_eq!(cwmp_retry_range(7, 30, 1000), (s(30), s(30)));
        // Non-integer multiplier 1500: 10 · 1.5^2 = 22.5 s.
        assert_eq!(
            cwmp_retry_range(3, 10, 1500),
            (Duration::from_millis(22_500), Duration::from_millis(33_750))
        );
        // Extreme parameters saturate instead of overflowing.
        let (lo, hi) = cwmp_retry_range(10, 65_535, 65_535);
        assert_eq!((lo, hi), (MAX_WAIT, MAX_WAIT));
        assert_eq!(cwmp_retry_wait(10, 65_535, 65_535, 12345), MAX_WAIT);
        // Below-range multiplier treated as 1000.
        assert_eq!(cwmp_retry_range(4, 5, 0), (s(5), s(5)));
    }

    #[test]
    fn cwmp_bounds_are_monotonic_and_contain_every_draw() {
        let mut x: u32 = 0x1234_5678;
        for (m, k) in [(5, 2000), (1, 1000), (7, 1234), (300, 3000), (65_535, 1001)] {
            let mut prev = (Duration::ZERO, Duration::ZERO);
            for n in 1..=12 {
                let (lo, hi) = cwmp_retry_range(n, m, k);
                assert!(lo <= hi);
                assert!(lo >= prev.0 && hi >= prev.1);
                if n > 1 && n <= CWMP_RETRY_CAP {
                    // Consecutive ranges touch: hi(n-1) == lo(n).
                    assert_eq!(prev.1, lo);
                }
                for _ in 0..50 {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    let w = cwmp_retry_wait(n, m, k, x);
                    assert!(w >= lo && w <= hi);
                }
                prev = (lo, hi);
            }
        }
    }

    #[test]
    fn xmpp_defaults() {
        // Max waits 1, 2, 4, ..., 512 minutes for attempts 1..=10, then capped.
        for n in 1..=10u32 {
            let bound = xmpp_reconnect_bound(n, 60, 2000);
            assert_eq!(bound, s(60 << (n - 1)));
            assert_eq!(xmpp_reconnect_wait(n, 60, 2000, 30_720, u32::MAX), bound);
            assert_eq!(xmpp_reconnect_wait(n, 60, 2000, 30_720, 0), Duration::ZERO);
        }
        assert_eq!(xmpp_reconnect_bound(11, 60, 2000), s(61_440));
        assert_eq!(
            xmpp_reconnect_wait(11, 60, 2000, 30_720, u32::MAX),
            s(30_720)
        );
        let quarter = xmpp_reconnect_wait(11, 60, 2000, 30_720, u32::MAX / 4);
        assert!(s(15_360) - quarter <= Duration::from_millis(1));
        // The bound saturates at MAX_WAIT (u32::MAX s), so rand=7 maps to 7 s.
        assert_eq!(xmpp_reconnect_wait(500, 60, 2000, 30_720, 7), s(7));
        assert_eq!(
            xmpp_reconnect_wait(500, 60, 2000, 30_720, u32::MAX),
            s(30_720)
        );
        assert_eq!(xmpp_reconnect_wait(0, 60, 2000, 30_720, u32::MAX), s(60));
    }

    #[test]
    fn rate_limiter_burst_and_refill() {
        let t0 = Instant::now();
        // icwmp: 50 CRs per 5 s.
        let mut r = RateLimiter::per_period(50, s(5));
        for _ in 0..50 {
            assert!(r.try_acquire(t0));
        }
        assert!(!r.try_acquire(t0));
        // 10 tokens per second.
        assert!(!r.try_acquire(t0 + Duration::from_millis(50)));
        assert!(r.try_acquire(t0 + Duration::from_millis(100)));
        assert!(!r.try_acquire(t0 + Duration::from_millis(100)));
        assert_eq!(r.available(t0 + s(1)), 9);
        // Refill never exceeds capacity.
        assert_eq!(r.available(t0 + s(3600)), 50);
        // catawampus: 1 per 2 s.
        let mut c = RateLimiter::per_period(1, s(2));
        assert!(c.try_acquire(t0));
        assert!(!c.try_acquire(t0 + s(1)));
        assert!(c.try_acquire(t0 + s(2)));
        // Time going backwards adds nothing and does not panic.
        assert!(!c.try_acquire(t0));
        assert!(!c.try_acquire(t0 + s(3)));
        assert!(c.try_acquire(t0 + s(4)));
    }

    #[test]
    fn rate_limiter_degenerate() {
        let t0 = Instant::now();
        let mut z = RateLimiter::new(0, 10.0);
        assert!(!z.try_acquire(t0 + s(10)));
        let mut never = RateLimiter::new(2, f64::NAN);
        assert!(never.try_acquire(t0) && never.try_acquire(t0));
        assert!(!never.try_acquire(t0 + s(1000)));
        let mut inf = RateLimiter::per_period(3, Duration::ZERO);
        for i in 0..10 {
            assert!(inf.try_acquire(t0 + Duration::from_nanos(i + 1)));
        }
    }

    #[test]
    fn coalescer_h8_h9() {
        let mut c = Coalescer::new();
        // H9: several CRs before the session starts → one wake-up, one session.
        assert!(c.request());
        assert!(!c.request());
        assert!(!c.request());
        assert!(c.session_started()); // carries 6 CONNECTION REQUEST
        assert!(!c.is_pending());
        // H8(b): CRs during the session are not lost and do not abort it…
        assert!(!c.request());
        assert!(!c.request());
        assert!(c.in_session());
        // …and yield exactly one follow-up session.
        assert!(c.session_ended());
        assert!(c.session_started());
        assert!(!c.session_ended());
        // Idle again.
        assert!(!c.is_pending() && !c.in_session());
    }

    #[test]
    fn coalescer_non_cr_sessions() {
        let mut c = Coalescer::new();
        // A periodic session with no CR pending.
        assert!(!c.session_started());
        assert!(!c.session_ended());
        // A CR during a periodic session → one follow-up with the CR event.
        c.session_started();
        assert!(!c.request());
        assert!(c.session_ended());
        // The CR may be picked up by whatever session starts next.
        assert!(c.session_started());
        assert!(!c.session_ended());
        // A failed session still ends; pending CRs survive it.
        assert!(c.request());
        assert!(c.session_started());
        assert!(!c.request());
        assert!(c.session_ended());
        assert!(c.is_pending());
    }
}
