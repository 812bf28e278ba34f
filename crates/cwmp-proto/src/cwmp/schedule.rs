//! When to open a CWMP session, as a state machine without IO: the event queue (TR-069
//! §3.7.1.5), boot / periodic / scheduled / connection-request / value-change triggers, the
//! retry wait after a failed session (§3.2.1.1), sessions held while a reboot is awaited, and
//! the agent's floor under active-notification sessions.
//!
//! Time is an argument (`now` monotonic, `wall` Unix seconds); the driver asks
//! [`Scheduler::poll_timeout`] when to call [`Scheduler::handle_timeout`] and
//! [`Scheduler::session_due`] whether to start a session. Settings come in as
//! [`SessionParams`], read from the data model by the driver.

use std::time::{Duration, Instant};

use super::events::{Event, EventCode, EventQueue};
use crate::connreq::backoff::{RateLimiter, cwmp_retry_wait};

/// Active-notification sessions the agent's floor allows at once …
pub const NOTIFY_BURST: u32 = 4;
/// … then one per this period, whatever DefaultActiveNotificationThrottle says.
pub const NOTIFY_PERIOD: Duration = Duration::from_secs(10);

/// Distinct events kept aside during one session.
const MAX_DEFERRED: usize = 64;

/// The ManagementServer settings the schedule depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionParams {
    /// EnableCWMP.
    pub enabled: bool,
    /// ManagementServer.URL is set.
    pub has_url: bool,
    pub periodic_enable: bool,
    /// PeriodicInformInterval, seconds (≥ 1).
    pub periodic_interval: u32,
    /// PeriodicInformTime as Unix seconds (None: Unknown Time).
    pub periodic_time: Option<i64>,
    /// CWMPRetryMinimumWaitInterval, seconds.
    pub retry_minimum: u32,
    /// CWMPRetryIntervalMultiplier, per mille.
    pub retry_multiplier: u32,
    /// DefaultActiveNotificationThrottle, seconds.
    pub notification_throttle: u32,
}

impl Default for SessionParams {
    fn default() -> Self {
        SessionParams {
            enabled: true,
            has_url: true,
            periodic_enable: false,
            periodic_interval: 86400,
            periodic_time: None,
            retry_minimum: 5,
            retry_multiplier: 2000,
            notification_throttle: 0,
        }
    }
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The ACS ended it cleanly.
    Ok,
    /// No session was possible (no URL, CWMP disabled): nothing to retry.
    Skipped,
    /// It failed: retried after the TR-069 wait.
    Failed,
}

/// The session schedule.
#[derive(Debug)]
pub struct Scheduler {
    /// Undelivered events, in arrival order.
    pub queue: EventQueue,
    /// Failed sessions in a row (the Inform's RetryCount).
    pub retry_count: u32,
    pub sessions_ok: u64,
    pub sessions_failed: u64,
    next_session: Option<Instant>,
    next_periodic: Option<Instant>,
    /// The (enable, interval, time) the periodic timer was computed from.
    periodic_key: Option<(bool, u32, Option<i64>)>,
    /// ScheduleInform timers: (when, CommandKey).
    scheduled: Vec<(Instant, String)>,
    /// No session before this: a reboot or factory-reset command was started.
    hold_until: Option<Instant>,
    in_session: bool,
    /// Events raised during a session: queued after it (one follow-up session).
    deferred: Vec<(EventCode, String)>,
    last_session_end: Option<Instant>,
    /// The store's active-change generation a session was last asked for.
    active_seen: u64,
    notify_bucket: RateLimiter,
}

impl Default for Scheduler {
    fn default() -> Self {
        Scheduler {
            queue: EventQueue::default(),
            retry_count: 0,
            sessions_ok: 0,
            sessions_failed: 0,
            next_session: None,
            next_periodic: None,
            periodic_key: None,
            scheduled: Vec::new(),
            hold_until: None,
            in_session: false,
            deferred: Vec::new(),
            last_session_end: None,
            active_seen: 0,
            notify_bucket: RateLimiter::new(NOTIFY_BURST, 1.0 / NOTIFY_PERIOD.as_secs_f64()),
        }
    }
}

impl Scheduler {
    /// Start-up: the persisted queue, `0 BOOTSTRAP` when the ACS is new, `1 BOOT`, and a
    /// session at once.
    pub fn boot(&mut self, now: Instant, restored: Option<EventQueue>, bootstrap: bool) {
        if let Some(q) = restored {
            self.queue = q;
        }
        if bootstrap && !self.queue.contains(&EventCode::Bootstrap) {
            self.queue.push(EventCode::Bootstrap, "");
        }
        self.queue.push(EventCode::Boot, "");
        self.next_session = Some(now);
    }

    /// A session is running.
    pub fn in_session(&self) -> bool {
        self.in_session
    }

    /// Asks for a session at `now` (a due transfer's report, a new ACS).
    pub fn request_session(&mut self, now: Instant) {
        self.next_session = Some(match self.next_session {
            Some(t) if t < now => t,
            _ => now,
        });
    }

    /// An event that asks for a session now (kept aside while a session runs).
    pub fn event(&mut self, code: EventCode, command_key: &str, now: Instant) {
        if self.in_session {
            // Kept aside for the follow-up session; repeats of one event merge (a flood of
            // `ctl inform` during a long session cannot grow this).
            let known = self
                .deferred
                .iter()
                .any(|(c, k)| *c == code && (k == command_key || !c.is_multiple()));
            if !known && self.deferred.len() < MAX_DEFERRED {
                self.deferred.push((code, command_key.into()));
            }
            return;
        }
        self.queue.push(code, command_key);
        self.next_session = Some(now);
    }

    /// An authenticated connection request (however many arrive during a session: one
    /// follow-up session).
    pub fn connection_request(&mut self, now: Instant) {
        self.event(EventCode::ConnectionRequest, "", now);
    }

    /// The store's active-notification state: a *new* change (generation) asks for a
    /// session, after DefaultActiveNotificationThrottle and within the agent's floor; an
    /// undelivered old one waits for the retry.
    pub fn active_change(
        &mut self,
        generation: u64,
        pending: bool,
        p: &SessionParams,
        now: Instant,
    ) -> bool {
        if generation == self.active_seen || !pending || !p.enabled || !p.has_url {
            return false;
        }
        self.active_seen = generation;
        let throttle = Duration::from_secs(p.notification_throttle as u64);
        let mut at = match self.last_session_end {
            Some(end) if end + throttle > now => end + throttle,
            _ => now,
        };
        let mut deferred = false;
        if !self.notify_bucket.try_acquire(at) {
            // Over the floor: the change waits (it is not lost) for the next token, which it
            // takes now; changes meanwhile join that session.
            at += NOTIFY_PERIOD;
            let _ = self.notify_bucket.try_acquire(at);
            deferred = true;
        }
        self.request_session(at);
        deferred
    }

    /// Recomputes the periodic timer when its settings changed. Informs happen at
    /// PeriodicInformTime + k·interval (the time only sets the phase); Unknown Time → from now.
    pub fn set_params(&mut self, p: &SessionParams, now: Instant, wall: i64) {
        let key = (
            p.periodic_enable,
            p.periodic_interval.max(1),
            p.periodic_time,
        );
        if self.periodic_key == Some(key) && self.next_periodic.is_some() {
            return;
        }
        self.periodic_key = Some(key);
        if !p.periodic_enable {
            self.next_periodic = None;
            return;
        }
        let interval = key.1 as i64;
        let delay = match p.periodic_time {
            Some(t) if t > 0 => {
                let d = (t - wall).rem_euclid(interval);
                if d == 0 { interval } else { d }
            }
            _ => interval,
        };
        self.next_periodic = Some(now + Duration::from_secs(delay as u64));
    }

    /// A ScheduleInform timer.
    pub fn schedule_inform(&mut self, at: Instant, command_key: &str) {
        self.scheduled.push((at, command_key.to_string()));
    }

    /// The ScheduleInform timers (to persist them).
    pub fn scheduled(&self) -> &[(Instant, String)] {
        &self.scheduled
    }

    /// Forgets the timers (factory reset).
    pub fn clear_scheduled(&mut self) {
        self.scheduled.clear();
    }

    /// No session before `until` (a reboot command started); None releases.
    pub fn hold(&mut self, until: Option<Instant>) {
        self.hold_until = until;
    }

    pub fn held(&self) -> bool {
        self.hold_until.is_some()
    }

    /// Fires the periodic and ScheduleInform timers that are due; true when events were
    /// added (the driver persists them).
    pub fn handle_timeout(&mut self, now: Instant, p: &SessionParams, wall: i64) -> bool {
        let mut added = false;
        if self.next_periodic.is_some_and(|t| t <= now) {
            self.queue.push(EventCode::Periodic, "");
            self.next_periodic = None;
            self.periodic_key = None;
            self.set_params(p, now, wall);
            self.next_session = Some(now);
            added = true;
        }
        let due: Vec<String> = self
            .scheduled
            .iter()
            .filter(|(w, _)| *w <= now)
            .map(|(_, k)| k.clone())
            .collect();
        if !due.is_empty() {
            self.scheduled.retain(|(w, _)| *w > now);
            for k in due {
                self.queue.push(EventCode::Scheduled, "");
                self.queue.push(EventCode::MScheduleInform, &k);
            }
            self.next_session = Some(now);
            added = true;
        }
        added
    }

    /// The hold ended without the box going down: true once, when it is released now.
    pub fn hold_expired(&mut self, now: Instant) -> bool {
        match self.hold_until {
            Some(h) if h <= now => {
                self.hold_until = None;
                true
            }
            _ => false,
        }
    }

    /// Whether a session should start now (and marks it started).
    pub fn session_due(&mut self, now: Instant) -> bool {
        if self.hold_until.is_some_and(|h| h > now) {
            return false;
        }
        if self.next_session.is_some_and(|t| t <= now) {
            self.next_session = None;
            self.in_session = true;
            return true;
        }
        false
    }

    /// The Inform was answered: these events are delivered; the retry count restarts.
    pub fn delivered(&mut self, sent: &[Event]) {
        self.queue.delivered(sent);
        self.retry_count = 0;
    }

    /// The session ended at `end`; `random` drives the retry wait's randomisation. Returns
    /// the retry wait after a failure.
    pub fn session_ended(
        &mut self,
        outcome: Outcome,
        p: &SessionParams,
        end: Instant,
        random: u32,
    ) -> Option<Duration> {
        self.in_session = false;
        self.last_session_end = Some(end);
        let deferred = std::mem::take(&mut self.deferred);
        if !deferred.is_empty() {
            for (c, k) in deferred {
                self.queue.push(c, &k);
            }
            self.request_session(end);
        }
        match outcome {
            Outcome::Ok => {
                self.sessions_ok += 1;
                if !self.queue.is_empty() {
                    self.request_session(end);
                }
                None
            }
            Outcome::Skipped => {
                self.queue.session_failed();
                None
            }
            Outcome::Failed => {
                self.sessions_failed += 1;
                self.queue.session_failed();
                self.retry_count = self.retry_count.saturating_add(1);
                let wait = cwmp_retry_wait(
                    self.retry_count,
                    p.retry_minimum,
                    p.retry_multiplier,
                    random,
                );
                self.next_session = Some(end + wait);
                Some(wait)
            }
        }
    }

    /// When the driver must call [`Self::handle_timeout`] / [`Self::session_due`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        // While a reboot is awaited, a due session waits for the end of the grace period.
        let session = match (self.next_session, self.hold_until) {
            (Some(s), Some(h)) => Some(s.max(h)),
            (s, _) => s,
        };
        [session, self.next_periodic]
            .into_iter()
            .flatten()
            .chain(self.scheduled.iter().map(|(w, _)| *w))
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(s: &Scheduler) -> Vec<&str> {
        s.queue.events.iter().map(|e| e.code.as_str()).collect()
    }

    /// Runs one session that delivers its Inform and ends as `outcome`.
    fn run(s: &mut Scheduler, now: Instant, outcome: Outcome) -> Option<Duration> {
        assert!(s.session_due(now), "a session is due");
        let sent = s.queue.events.clone();
        if outcome == Outcome::Ok {
            s.delivered(&sent);
        }
        s.session_ended(outcome, &SessionParams::default(), now, 0)
    }

    /// §3.7.1.5: BOOTSTRAP + BOOT at first start, one session, nothing left afterwards.
    #[test]
    fn boot_session_then_idle() {
        let t0 = Instant::now();
        let mut s = Scheduler::default();
        s.boot(t0, None, true);
        assert_eq!(codes(&s), ["0 BOOTSTRAP", "1 BOOT"]);
        assert_eq!(s.poll_timeout(), Some(t0));
        run(&mut s, t0, Outcome::Ok);
        assert!(s.queue.is_empty());
        assert_eq!(s.poll_timeout(), None);
    }

    /// §3.2.1.1: failed sessions are retried after the randomised, growing TR-069 wait;
    /// CONNECTION REQUEST is dropped on failure, BOOT kept; RetryCount counts.
    #[test]
    fn failed_sessions_retry_with_the_tr069_wait() {
        let t0 = Instant::now();
        let mut s = Scheduler::default();
        s.boot(t0, None, false);
        s.connection_request(t0);
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..3 {
            let w = run(&mut s, now, Outcome::Failed).unwrap();
            assert_eq!(s.poll_timeout(), Some(now + w));
            assert!(!s.session_due(now + w - Duration::from_millis(1)));
            now += w;
            waits.push(w);
        }
        assert_eq!(s.retry_count, 3);
        assert_eq!(codes(&s), ["1 BOOT"], "CR not retried, BOOT kept");
        // m = 5 s, k = 2: [5, 10), [10, 20), [20, 40) at random 0.
        assert_eq!(
            waits,
            [
                Duration::from_secs(5),
                Duration::from_secs(10),
                Duration::from_secs(20)
            ]
        );
        run(&mut s, now, Outcome::Ok);
        assert_eq!(s.retry_count, 0);
    }

    /// Connection requests during a session give exactly one follow-up session.
    #[test]
    fn requests_during_a_session_give_one_follow_up() {
        let t0 = Instant::now();
        let mut s = Scheduler::default();
        s.boot(t0, None, false);
        assert!(s.session_due(t0));
        for _ in 0..100 {
            s.connection_request(t0);
        }
        let sent = s.queue.events.clone();
        s.delivered(&sent);
        s.session_ended(Outcome::Ok, &SessionParams::default(), t0, 0);
        assert_eq!(codes(&s), ["6 CONNECTION REQUEST"]);
        assert!(s.session_due(t0));
        assert!(!s.session_due(t0));
    }

    /// Periodic informs keep their phase (PeriodicInformTime + k·interval).
    #[test]
    fn periodic_informs_follow_the_phase() {
        let t0 = Instant::now();
        let mut s = Scheduler::default();
        let p = SessionParams {
            periodic_enable: true,
            periodic_interval: 300,
            periodic_time: Some(1_000_000_000 + 120),
            ..SessionParams::default()
        };
        let wall = 1_000_000_000 + 300 * 7;
        s.set_params(&p, t0, wall);
        let first = t0 + Duration::from_secs(120);
        assert_eq!(s.poll_timeout(), Some(first));
        assert!(!s.handle_timeout(first - Duration::from_millis(1), &p, wall));
        assert!(s.handle_timeout(first, &p, wall + 120));
        assert_eq!(codes(&s), ["2 PERIODIC"]);
        assert_eq!(
            s.next_periodic,
            Some(first + Duration::from_secs(300)),
            "next on the phase"
        );
    }

    /// A.3.2.9: ScheduleInform → `3 SCHEDULED` + `M ScheduleInform` (one per call).
    #[test]
    fn schedule_inform_fires_with_its_command_key() {
        let t0 = Instant::now();
        let mut s = Scheduler::default();
        let p = SessionParams::default();
        s.schedule_inform(t0 + Duration::from_secs(5), "a");
        s.schedule_inform(t0 + Duration::from_secs(5), "b");
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(5)));
        assert!(s.handle_timeout(t0 + Duration::from_secs(5), &p, 0));
        assert_eq!(
            codes(&s),
            ["3 SCHEDULED", "M ScheduleInform", "M ScheduleInform"]
        );
        assert!(s.scheduled().is_empty());
    }

    /// No session while a reboot is awaited; after the grace period it resumes.
    #[test]
    fn hold_blocks_sessions_until_released() {
        let t0 = Instant::now();
        let mut s = Scheduler::default();
        s.hold(Some(t0 + Duration::from_secs(300)));
        s.event(EventCode::MReboot, "k", t0);
        assert!(!s.session_due(t0 + Duration::from_secs(299)));
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(300)));
        assert!(s.hold_expired(t0 + Duration::from_secs(300)));
        assert!(s.session_due(t0 + Duration::from_secs(300)));
    }

    /// The agent's floor: a flapping active value starts a burst of 4 sessions, then one per
    /// 10 s, whatever DefaultActiveNotificationThrottle (0) says.
    #[test]
    fn active_notifications_have_a_floor() {
        let t0 = Instant::now();
        let mut s = Scheduler::default();
        let p = SessionParams::default();
        let mut starts = Vec::new();
        let mut now = t0;
        let mut generation = 0;
        while now < t0 + Duration::from_secs(60) {
            generation += 1;
            s.active_change(generation, true, &p, now);
            if s.session_due(now) {
                starts.push(now);
                s.session_ended(Outcome::Ok, &p, now, 0);
            }
            now += Duration::from_millis(100);
        }
        // 4 at once, then one per 10 s over the minute.
        assert!(starts.len() <= 4 + 6, "{} sessions", starts.len());
        assert!(starts.len() >= 4 + 5, "{} sessions", starts.len());
        // DefaultActiveNotificationThrottle adds its own wait after each session.
        let mut s = Scheduler::default();
        let p = SessionParams {
            notification_throttle: 30,
            ..SessionParams::default()
        };
        s.session_ended(Outcome::Ok, &p, t0, 0);
        s.active_change(1, true, &p, t0);
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(30)));
    }

    /// No URL or CWMP disabled: nothing retried, no active-change session.
    #[test]
    fn skipped_sessions_are_not_retried() {
        let t0 = Instant::now();
        let mut s = Scheduler::default();
        s.boot(t0, None, false);
        s.connection_request(t0);
        assert!(s.session_due(t0));
        assert_eq!(
            s.session_ended(Outcome::Skipped, &SessionParams::default(), t0, 0),
            None
        );
        assert_eq!(codes(&s), ["1 BOOT"]);
        let p = SessionParams {
            has_url: false,
            ..SessionParams::default()
        };
        assert!(!s.active_change(1, true, &p, t0));
        assert_eq!(s.poll_timeout(), None);
    }
}
