//! TR-181 `Device.BulkData.` over HTTP as the engine runs it (the encoders: `crate::bulkdata`).
//!
//! * **Profiles** are read from the store whenever it changed (every persisted change marks
//!   them stale): an ACS or control-socket change, an AddObject/DeleteObject, the factory
//!   `[parameters]` at start. A profile runs while `BulkData.Enable`, its `Enable` and the
//!   integrator's `[bulkdata] enable` are all true.
//! * **Reporting intervals** end `ReportingInterval` seconds apart (never less than
//!   `MinReportingInterval`); with a `TimeReference` (and a set clock) they end at
//!   `TimeReference + k·ReportingInterval`. Enabling a profile or changing either parameter
//!   starts a new interval at once. The timer is part of the engine's loop (also while a
//!   session runs).
//! * **A report** is built at the end of each interval from the agent's current values, the
//!   way a GetParameterValues answer is: the system mirror is synced for the referenced
//!   subtrees, provider-backed values are fetched by a task of the engine (a provider that
//!   fails leaves its values out of this report), then the values are read from the store
//!   into a bounded collector (`[bulkdata] max_parameter_references` values and
//!   `max_report_bytes` bytes; what does not fit is left out and logged). Partial paths and
//!   `*` wildcards are expanded; a reference that names nothing is left out of the report
//!   and logged once (TR-181: not an error). Hidden values (passwords) read as empty.
//! * **Delivery**: one HTTP request per attempt (`HTTP.Method` POST or PUT, Basic or Digest
//!   from `Username`/`Password`, `Content-Encoding: gzip` with `Compression = GZIP`,
//!   `BBF-Report-Format`, `Date` with `UseDateHeader`, the `RequestURIParameter` values as the
//!   query), bounded by `[bulkdata] timeout` as a whole; any 2xx answer is success.
//!   A failed attempt is retried with `RetryEnable`, after the TR-069 session-retry wait
//!   computed from `RetryMinimumWaitInterval` and `RetryIntervalMultiplier` (the first wait is
//!   random in `[m, m·k/1000]`), until the interval ends. A report still undelivered at the end
//!   of its interval (or at once without `RetryEnable`) becomes a *retained failed report*:
//!   at most `NumberOfRetainedFailedReports` per profile (-1: no count limit) and
//!   `[bulkdata] max_retained_bytes` for all profiles together, the oldest dropped first. They
//!   go out, oldest first, in the body of the next report (JSON: elements of the `Report`
//!   array; CSV: rows), and are forgotten once it is delivered. An attempt still running when
//!   its interval ends is abandoned (counted as failed). A change of the profile's encoding
//!   deletes its retained reports (TR-181: EncodingType).
//! * **PersistAcrossReboot**: the retained reports (and the undelivered current one) of such
//!   profiles are written to `<state_dir>/bulkdata` (JSON, replaced atomically) when they
//!   change, and taken back at start; the others are kept in memory only.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::AbortHandle;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::bulkdata::{self as bd, CollectionTime, Collector, Encoded, Encoding, Format, Stamp};
use crate::model::Fault;

use super::{Done, Engine, Fetched, fetch};

const ROOT: &str = "Device.BulkData.";
const PROFILES: &str = "Device.BulkData.Profile.";
/// Bytes of a collector's answer read at most (the rest is dropped with the connection).
const MAX_ANSWER: usize = 64 * 1024;
/// Unknown references remembered for the "logged once" rule.
const MAX_WARNED: usize = 1024;

/// A bulk-data task of the engine ended.
pub enum BulkDone {
    /// Provider values for a report arrived.
    Fetched {
        instance: u32,
        generation: u64,
        results: Fetched,
    },
    /// An attempt to deliver ended: the HTTP status, or why there was none.
    Sent {
        instance: u32,
        generation: u64,
        result: Result<u16, String>,
    },
}

/// A profile's settings as read from the store.
#[derive(Debug, Clone, PartialEq)]
struct Profile {
    interval: u32,
    time_ref: Option<i64>,
    encoding: Encoding,
    retain: i64,
    /// (Name, Reference) of each `Parameter.{i}`.
    refs: Vec<(String, String)>,
    url: String,
    username: String,
    password: String,
    gzip: bool,
    put: bool,
    date: bool,
    retry: bool,
    retry_min: u32,
    retry_mult: u32,
    persist: bool,
    /// (Name, Reference) of each `HTTP.RequestURIParameter.{i}`.
    uri_params: Vec<(String, String)>,
}

/// A running profile.
struct Run {
    p: Profile,
    /// The end of the current reporting interval.
    due: Instant,
    /// Failed reports, oldest first.
    retained: VecDeque<Encoded>,
    /// The report of the last interval while it is not delivered.
    current: Option<Encoded>,
    /// Its query parameters.
    query: Vec<(String, String)>,
    /// Failed attempts of `current`.
    retries: u32,
    retry_at: Option<Instant>,
    /// The generation of the fetch or attempt in flight, and how to abandon an attempt.
    busy: Option<(u64, Option<AbortHandle>)>,
    /// The paths (and the index of their reference) of the report being collected.
    collecting: Vec<(String, usize)>,
}

impl Run {
    fn retained_bytes(&self) -> usize {
        self.retained.iter().map(Encoded::size).sum()
    }
}

/// Retained reports of one profile as saved for PersistAcrossReboot.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Saved {
    format: String,
    reports: Vec<Encoded>,
}

#[derive(Default)]
pub(crate) struct BulkData {
    runs: BTreeMap<u32, Run>,
    /// The store changed since the profiles were last read.
    dirty: bool,
    generation: u64,
    warned: BTreeSet<String>,
    /// Retained reports read at start, taken by their profile at the first sync.
    saved: BTreeMap<u32, Saved>,
    /// Something saved is on disk (an empty set is written once).
    saved_on_disk: bool,
    sent_ok: u64,
    sent_failed: u64,
    dropped_reports: u64,
}

fn truthy(v: &str) -> bool {
    v == "true" || v == "1"
}

/// `Device.BulkData.Profile.3.HTTP.URL` → (3, "HTTP.URL").
fn split(name: &str) -> Option<(u32, &str)> {
    let rest = name.strip_prefix(PROFILES)?;
    let (n, param) = rest.split_once('.')?;
    Some((n.parse().ok()?, param))
}

fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn uptime_ms() -> i64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map(|s| (s * 1000.0) as i64)
        .unwrap_or(0)
}

impl Engine {
    fn bd_get(&self, path: &str) -> String {
        self.store.secret(path).unwrap_or("").to_string()
    }

    /// At start: the device's limits from the configuration, the saved retained reports.
    pub(crate) fn bulk_init(&mut self) {
        let c = &self.cfg.bulkdata;
        let limits = [
            (
                "Device.BulkData.MinReportingInterval",
                c.min_reporting_interval.to_string(),
            ),
            (
                "Device.BulkData.MaxNumberOfProfiles",
                c.max_profiles.min(i32::MAX as u32).to_string(),
            ),
            (
                "Device.BulkData.MaxNumberOfParameterReferences",
                c.max_parameter_references.min(i32::MAX as u32).to_string(),
            ),
        ];
        let mut names = Vec::new();
        for (p, v) in limits {
            if self.store.secret(p).is_some_and(|cur| cur != v) {
                let _ = self.store.set_internal(p, &v);
                names.push(p.to_string());
            }
        }
        self.store.clear_changes(&names);
        let path = self.cfg.agent.state_dir.join("bulkdata");
        if let Ok(text) = read_bounded(&path, 2 * c.max_retained_bytes + 65536) {
            match serde_json::from_slice::<BTreeMap<u32, Saved>>(&text) {
                Ok(s) => {
                    self.bulk.saved_on_disk = !s.is_empty();
                    self.bulk.saved = s;
                }
                Err(e) => tracing::warn!("{}: unusable ({e}); ignored", path.display()),
            }
        }
        self.bulk.dirty = true;
    }

    /// The store changed (called from [`Engine::persist`]): profiles are read again.
    pub(crate) fn bulk_changed(&mut self) {
        self.bulk.dirty = true;
    }

    /// Why a write to a bulk-data parameter is refused, if it is.
    pub(crate) fn bulk_write_refused(&self, name: &str, value: &str) -> Option<Fault> {
        if !name.starts_with(ROOT) {
            return None;
        }
        let enabling = (name == "Device.BulkData.Enable"
            || split(name).is_some_and(|(_, p)| p == "Enable"))
            && truthy(value);
        if enabling && !self.cfg.bulkdata.enable {
            return Some(Fault::new(
                9001,
                "bulk data collection is disabled on this device",
            ));
        }
        let (_, param) = split(name)?;
        let bad = |why: String| Some(Fault::new(9007, format!("{name}: {why}")));
        if param == "ReportingInterval" {
            let min = self.cfg.bulkdata.min_reporting_interval;
            if value.parse::<u32>().is_ok_and(|v| v < min) {
                return bad(format!("below MinReportingInterval ({min} s)"));
            }
        } else if param.starts_with("Parameter.") && param.ends_with(".Reference") {
            if !bd::reference_ok(value) {
                return bad(format!("{value:?} is not a parameter or object path"));
            }
        } else if param.starts_with("HTTP.RequestURIParameter.") && param.ends_with(".Reference") {
            if !bd::reference_ok(value) || value.ends_with('.') || value.contains('*') {
                return bad(format!("{value:?} is not a parameter path"));
            }
        } else if param == "HTTP.URL"
            && !value.is_empty()
            && !crate::net::files::supported_scheme(value)
        {
            return bad("the collector URL must be http:// or https://".into());
        }
        None
    }

    /// Refuses a `Profile.{i}` row beyond `MaxNumberOfProfiles` (9004).
    pub(crate) fn bulk_add_refused(&self, table: &str) -> Option<Fault> {
        if table != PROFILES {
            return None;
        }
        let max = self.cfg.bulkdata.max_profiles as usize;
        (self.store.instance_numbers(PROFILES).len() > max).then(|| {
            Fault::new(
                9004,
                format!("at most {max} bulk data profiles (MaxNumberOfProfiles)"),
            )
        })
    }

    /// After every change: re-reads the profiles when the store changed.
    pub(crate) fn bulk_after_change(&mut self, now: Instant) {
        if self.bulk.dirty {
            self.bulk_sync(now);
        }
    }

    /// When [`Self::bulk_tick`] has something to do.
    pub(crate) fn bulk_next_wakeup(&self) -> Option<Instant> {
        if self.bulk.dirty {
            return Some(Instant::now());
        }
        self.bulk
            .runs
            .values()
            .flat_map(|r| {
                let due = Some(r.due);
                let retry = r.retry_at.filter(|_| r.busy.is_none());
                [due, retry]
            })
            .flatten()
            .min()
    }

    /// Ends the intervals that are due and starts the retries that are.
    pub(crate) fn bulk_tick(&mut self, now: Instant) {
        self.bulk_after_change(now);
        let ids: Vec<u32> = self.bulk.runs.keys().copied().collect();
        for id in ids {
            let Some(r) = self.bulk.runs.get_mut(&id) else {
                continue;
            };
            if r.due <= now {
                self.bulk_interval_end(id, now);
            } else if r.busy.is_none() && r.retry_at.is_some_and(|t| t <= now) {
                r.retry_at = None;
                self.bulk_send(id);
            }
        }
    }

    fn read_profile(&self, n: u32) -> Option<Profile> {
        let base = format!("{PROFILES}{n}.");
        let g = |rel: &str| self.bd_get(&format!("{base}{rel}"));
        if !truthy(&g("Enable")) {
            return None;
        }
        let json = g("EncodingType") != "CSV";
        let encoding = if json {
            let format = if g("JSONEncoding.ReportFormat") == "NameValuePair" {
                Format::JsonNameValuePair
            } else {
                Format::JsonObjectHierarchy
            };
            Encoding::json(format, Stamp::parse(&g("JSONEncoding.ReportTimestamp")))
        } else {
            Encoding {
                format: if g("CSVEncoding.ReportFormat") == "ParameterPerRow" {
                    Format::CsvParameterPerRow
                } else {
                    Format::CsvParameterPerColumn
                },
                stamp: Stamp::parse(&g("CSVEncoding.RowTimestamp")),
                field_sep: g("CSVEncoding.FieldSeparator"),
                row_sep: g("CSVEncoding.RowSeparator"),
                escape: g("CSVEncoding.EscapeCharacter"),
            }
        };
        let pairs = |table: &str| -> Vec<(String, String)> {
            self.store
                .instance_numbers(&format!("{base}{table}"))
                .into_iter()
                .map(|i| {
                    (
                        g(&format!("{table}{i}.Name")),
                        g(&format!("{table}{i}.Reference")),
                    )
                })
                .collect()
        };
        let time_ref =
            crate::util::time::parse_datetime(&g("TimeReference")).filter(|t| *t > -62_135_596_800);
        Some(Profile {
            interval: g("ReportingInterval")
                .parse::<u32>()
                .unwrap_or(86400)
                .max(self.cfg.bulkdata.min_reporting_interval)
                .max(1),
            time_ref,
            encoding,
            retain: g("NumberOfRetainedFailedReports").parse().unwrap_or(0),
            refs: pairs("Parameter."),
            url: g("HTTP.URL"),
            username: g("HTTP.Username"),
            password: g("HTTP.Password"),
            gzip: g("HTTP.Compression") == "GZIP",
            put: g("HTTP.Method") == "PUT",
            date: truthy(&g("HTTP.UseDateHeader")),
            retry: truthy(&g("HTTP.RetryEnable")),
            retry_min: g("HTTP.RetryMinimumWaitInterval").parse().unwrap_or(5),
            retry_mult: g("HTTP.RetryIntervalMultiplier").parse().unwrap_or(2000),
            persist: truthy(&g("HTTP.PersistAcrossReboot")),
            uri_params: pairs("HTTP.RequestURIParameter."),
        })
    }

    /// The end of the first reporting interval of a profile enabled (or changed) now.
    fn first_due(p: &Profile, now: Instant) -> Instant {
        let ms = match p.time_ref {
            Some(t) if crate::util::time::clock_synchronised(now_unix_ms() / 1000) => {
                bd::ms_to_aligned_end(now_unix_ms(), t, p.interval)
            }
            _ => u64::from(p.interval) * 1000,
        };
        now + Duration::from_millis(ms)
    }

    /// The end of the interval after the one that ended at `due`.
    fn next_due(p: &Profile, due: Instant, now: Instant) -> Instant {
        let period = Duration::from_secs(u64::from(p.interval));
        let mut next = due + period;
        if let Some(t) = p.time_ref
            && crate::util::time::clock_synchronised(now_unix_ms() / 1000)
        {
            // Follow the wall clock (it may have been set or stepped since).
            let left = Duration::from_millis(bd::ms_to_aligned_end(now_unix_ms(), t, p.interval));
            next = now
                + if left < period / 2 {
                    left + period
                } else {
                    left
                };
        }
        while next <= now {
            next += period;
        }
        next
    }

    /// Reads the profiles again and starts, stops or resets their runs.
    fn bulk_sync(&mut self, now: Instant) {
        self.bulk.dirty = false;
        let global = self.cfg.bulkdata.enable && truthy(&self.bd_get("Device.BulkData.Enable"));
        let status = if global { "Enabled" } else { "Disabled" };
        if self.store.secret("Device.BulkData.Status") != Some(status) {
            let _ = self.store.set_internal("Device.BulkData.Status", status);
        }
        let mut wanted = BTreeMap::new();
        if global {
            for n in self.store.instance_numbers(PROFILES) {
                if let Some(p) = self.read_profile(n) {
                    wanted.insert(n, p);
                }
            }
        }
        let mut save = false;
        let gone: Vec<u32> = self
            .bulk
            .runs
            .keys()
            .filter(|n| !wanted.contains_key(n))
            .copied()
            .collect();
        for n in gone {
            if let Some(r) = self.bulk.runs.remove(&n) {
                if let Some((_, Some(h))) = r.busy {
                    h.abort();
                }
                tracing::info!("bulk data profile {n} stopped");
                save |= r.p.persist;
            }
        }
        for (n, p) in wanted {
            match self.bulk.runs.get_mut(&n) {
                Some(r) if r.p == p => {}
                Some(r) => {
                    if r.p.interval != p.interval || r.p.time_ref != p.time_ref {
                        r.due = Self::first_due(&p, now);
                    }
                    if r.p.encoding != p.encoding {
                        r.retained.clear();
                        r.current = None;
                        r.retry_at = None;
                    }
                    save |= r.p.persist || p.persist;
                    r.p = p;
                }
                None => {
                    let mut retained = VecDeque::new();
                    if let Some(s) = self.bulk.saved.remove(&n)
                        && p.persist
                        && s.format == p.encoding.format.token()
                    {
                        retained.extend(s.reports);
                    }
                    tracing::info!(
                        "bulk data profile {n} started: every {} s to {:?}, {} retained",
                        p.interval,
                        p.url,
                        retained.len()
                    );
                    self.bulk.runs.insert(
                        n,
                        Run {
                            due: Self::first_due(&p, now),
                            p,
                            retained,
                            current: None,
                            query: Vec::new(),
                            retries: 0,
                            retry_at: None,
                            busy: None,
                            collecting: Vec::new(),
                        },
                    );
                }
            }
        }
        if !self.bulk.saved.is_empty() {
            // Saved reports no profile took (deleted, disabled, another encoding).
            self.bulk.saved.clear();
            save = true;
        }
        self.bulk_trim();
        if save {
            self.bulk_save();
        }
    }

    /// A reporting interval ended: the undelivered report is retained and a new one built.
    fn bulk_interval_end(&mut self, n: u32, now: Instant) {
        let Some(r) = self.bulk.runs.get_mut(&n) else {
            return;
        };
        if let Some((_, h)) = r.busy.take() {
            if let Some(h) = h {
                h.abort();
                tracing::warn!("bulk data profile {n}: attempt abandoned at the interval's end");
            }
            r.collecting.clear();
        }
        r.retries = 0;
        r.retry_at = None;
        r.due = Self::next_due(&r.p, r.due, now);
        if let Some(cur) = r.current.take() {
            self.bulk_retain(n, cur);
        }
        self.bulk_collect(n);
    }

    /// Keeps a failed report (within the profile's count and the total byte bound).
    fn bulk_retain(&mut self, n: u32, report: Encoded) {
        let Some(r) = self.bulk.runs.get_mut(&n) else {
            return;
        };
        if r.p.retain == 0 {
            self.bulk.dropped_reports += 1;
            return;
        }
        r.retained.push_back(report);
        if r.p.retain > 0 {
            while r.retained.len() as i64 > r.p.retain {
                r.retained.pop_front();
                self.bulk.dropped_reports += 1;
            }
        }
        self.bulk_trim();
        self.bulk_save();
    }

    /// Drops the oldest retained reports while all of them exceed `max_retained_bytes`.
    fn bulk_trim(&mut self) {
        let max = self.cfg.bulkdata.max_retained_bytes;
        loop {
            let total: usize = self.bulk.runs.values().map(Run::retained_bytes).sum();
            if total <= max {
                return;
            }
            let Some(r) = self
                .bulk
                .runs
                .values_mut()
                .max_by_key(|r| r.retained_bytes())
            else {
                return;
            };
            r.retained.pop_front();
            self.bulk.dropped_reports += 1;
        }
    }

    /// Starts collecting a report: the paths its references name, the provider reads.
    fn bulk_collect(&mut self, n: u32) {
        let Some(r) = self.bulk.runs.get(&n) else {
            return;
        };
        let refs = r.p.refs.clone();
        let prefixes: Vec<&str> = refs
            .iter()
            .filter(|(_, rf)| !rf.is_empty())
            .map(|(_, rf)| rf.split('*').next().unwrap_or(rf))
            .collect();
        self.system_sync_for(prefixes.iter().copied());
        let max = self.cfg.bulkdata.max_parameter_references as usize;
        let mut paths: Vec<(String, usize)> = Vec::new();
        for (i, (_, rf)) in refs.iter().enumerate() {
            if rf.is_empty() {
                continue;
            }
            let found = if rf.contains('*') {
                self.store.expand_pattern(rf)
            } else {
                self.store.expand(rf).unwrap_or_default()
            };
            if found.is_empty() {
                self.bulk_warn_once(
                    format!("{n} {rf}"),
                    format_args!("bulk data profile {n}: {rf} names no parameter; left out"),
                );
            }
            for p in found {
                if paths.len() >= max {
                    break;
                }
                paths.push((p, i));
            }
        }
        self.bulk.generation += 1;
        let generation = self.bulk.generation;
        let names: Vec<String> = paths.iter().map(|(p, _)| p.clone()).collect();
        let reads = self.external_reads(&names);
        let Some(r) = self.bulk.runs.get_mut(&n) else {
            return;
        };
        r.collecting = paths;
        r.busy = Some((generation, None));
        match reads {
            Some(reads) => self.tasks.push(Box::pin(async move {
                Done::Bulk(BulkDone::Fetched {
                    instance: n,
                    generation,
                    results: fetch(reads).await,
                })
            })),
            None => self.bulk_build(n, &HashSet::new()),
        }
    }

    fn bulk_warn_once(&mut self, key: String, msg: std::fmt::Arguments<'_>) {
        if self.bulk.warned.len() >= MAX_WARNED {
            self.bulk.warned.clear();
        }
        if self.bulk.warned.insert(key) {
            tracing::warn!("{msg}");
        }
    }

    /// A task of the bulk-data runs ended.
    pub(crate) fn bulk_done(&mut self, d: BulkDone) {
        match d {
            BulkDone::Fetched {
                instance,
                generation,
                results,
            } => {
                let current = matches!(self.bulk.runs.get(&instance),
                    Some(r) if matches!(r.busy, Some((g, None)) if g == generation));
                if !current {
                    return;
                }
                let mut skip = HashSet::new();
                for (i, asked, res) in results {
                    match res {
                        Ok(vals) => {
                            for (k, v) in vals {
                                if asked.contains(&k)
                                    && let Err(f) = self.store.update_cached(&k, &v)
                                {
                                    tracing::warn!("provider value for {k} refused: {f}");
                                }
                            }
                        }
                        Err(e) => {
                            tracing::warn!(
                                provider = i,
                                "bulk data profile {instance}: provider values left out: {e}"
                            );
                            skip.extend(asked);
                        }
                    }
                }
                self.bulk_build(instance, &skip);
            }
            BulkDone::Sent {
                instance,
                generation,
                result,
            } => self.bulk_sent(instance, generation, result),
        }
    }

    /// Reads the values into a bounded report and sends it.
    fn bulk_build(&mut self, n: u32, skip: &HashSet<String>) {
        let Some(r) = self.bulk.runs.get_mut(&n) else {
            return;
        };
        let paths = std::mem::take(&mut r.collecting);
        let refs = r.p.refs.clone();
        let encoding = r.p.encoding.clone();
        let uri = r.p.uri_params.clone();
        let (max_refs, max_bytes) = (
            self.cfg.bulkdata.max_parameter_references,
            self.cfg.bulkdata.max_report_bytes,
        );
        let mut col = Collector::new(max_refs as usize, max_bytes);
        for (path, i) in &paths {
            if skip.contains(path) {
                continue;
            }
            let (name, rf) = &refs[*i];
            let reported = bd::reported_name(name, rf, path);
            let _ = self.store.for_each_value_ref(&[path.as_str()], |_, v, t| {
                col.push(&reported, v, t);
            });
        }
        if col.dropped > 0 {
            self.bulk_warn_once(
                format!("{n} dropped"),
                format_args!(
                    "bulk data profile {n}: {} values left out of the report \
                     (max_report_bytes {} / max_parameter_references {})",
                    col.dropped, max_bytes, max_refs
                ),
            );
        }
        let ms = now_unix_ms();
        let t = CollectionTime {
            unix_ms: ms,
            synchronised: crate::util::time::clock_synchronised(ms / 1000),
            uptime_ms: uptime_ms(),
        };
        let report = bd::encode(&encoding, &t, &col);
        drop(col);
        let mut query = Vec::new();
        for (name, rf) in uri {
            if rf.is_empty() {
                continue;
            }
            match self.store.get(&rf) {
                Some(v) => query.push((if name.is_empty() { rf } else { name }, v)),
                None => self.bulk_warn_once(
                    format!("{n} uri {rf}"),
                    format_args!("bulk data profile {n}: RequestURIParameter {rf} unknown"),
                ),
            }
        }
        let Some(r) = self.bulk.runs.get_mut(&n) else {
            return;
        };
        tracing::debug!(
            "bulk data profile {n}: report of {} bytes, {} retained",
            report.size(),
            r.retained.len()
        );
        r.busy = None;
        r.current = Some(report);
        r.query = query;
        self.bulk_send(n);
    }

    /// Starts one attempt to deliver the retained reports and the current one.
    fn bulk_send(&mut self, n: u32) {
        let tls = self.tls_settings();
        let timeout = Duration::from_secs(self.cfg.bulkdata.timeout.max(1));
        self.bulk.generation += 1;
        let generation = self.bulk.generation;
        let Some(r) = self.bulk.runs.get_mut(&n) else {
            return;
        };
        let Some(cur) = &r.current else {
            return;
        };
        let p = &r.p;
        let format = p.encoding.format;
        let text = bd::assemble(format, r.retained.iter().chain(std::iter::once(cur)));
        let body = if p.gzip {
            bd::gzip(text.as_bytes())
        } else {
            text.into_bytes()
        };
        use hyper::header::{self, HeaderName};
        let mut headers: Vec<(HeaderName, String)> = vec![
            (header::CONTENT_TYPE, format.content_type().into()),
            (
                HeaderName::from_static("bbf-report-format"),
                format.token().into(),
            ),
        ];
        if p.gzip {
            headers.push((header::CONTENT_ENCODING, "gzip".into()));
        }
        if p.date {
            headers.push((header::DATE, bd::http_date(now_unix_ms() / 1000)));
        }
        let target = crate::net::files::Target {
            url: bd::url_with_query(&p.url, &r.query),
            username: p.username.clone(),
            password: p.password.clone(),
            tls,
            idle_timeout: timeout,
        };
        let method = if p.put {
            hyper::Method::PUT
        } else {
            hyper::Method::POST
        };
        let empty_url = p.url.is_empty();
        let attempt = async move {
            if empty_url {
                return Err("HTTP.URL is empty".to_string());
            }
            let send = crate::net::files::send_report(
                &target,
                method,
                &headers,
                bytes::Bytes::from(body),
                MAX_ANSWER,
            );
            match tokio::time::timeout(timeout, send).await {
                Ok(Ok(status)) => Ok(status),
                Ok(Err(f)) => Err(f.msg),
                Err(_) => Err(format!("no answer within {} s", timeout.as_secs())),
            }
        };
        let (fut, handle) = futures::future::abortable(attempt);
        r.busy = Some((generation, Some(handle)));
        self.tasks.push(Box::pin(async move {
            Done::Bulk(BulkDone::Sent {
                instance: n,
                generation,
                result: fut.await.unwrap_or_else(|_| Err("abandoned".into())),
            })
        }));
    }

    fn bulk_sent(&mut self, n: u32, generation: u64, result: Result<u16, String>) {
        let now = Instant::now();
        let Some(r) = self.bulk.runs.get_mut(&n) else {
            return;
        };
        if !matches!(r.busy, Some((g, _)) if g == generation) {
            return;
        }
        r.busy = None;
        let why = match result {
            Ok(s) if (200..300).contains(&s) => {
                tracing::info!(
                    "bulk data profile {n}: report delivered ({} retained with it), {s}",
                    r.retained.len()
                );
                let had = !r.retained.is_empty();
                r.retained.clear();
                r.current = None;
                r.retries = 0;
                r.retry_at = None;
                self.bulk.sent_ok += 1;
                if had && r.p.persist {
                    self.bulk_save();
                }
                return;
            }
            Ok(s) => format!("the collector answered {s}"),
            Err(e) => e,
        };
        self.bulk.sent_failed += 1;
        tracing::warn!("bulk data profile {n}: report not delivered: {why}");
        if r.p.retry {
            r.retries += 1;
            let wait = cwmp_proto::connreq::backoff::cwmp_retry_wait(
                r.retries,
                r.p.retry_min,
                r.p.retry_mult,
                crate::util::codec::random_u32(),
            );
            if now + wait < r.due {
                tracing::info!(
                    "bulk data profile {n}: retry {} in {} ms",
                    r.retries,
                    wait.as_millis()
                );
                r.retry_at = Some(now + wait);
            }
            if r.p.persist {
                self.bulk_save();
            }
        } else if let Some(cur) = r.current.take() {
            self.bulk_retain(n, cur);
        }
    }

    /// Writes the retained reports of the PersistAcrossReboot profiles.
    fn bulk_save(&mut self) {
        let mut out: BTreeMap<u32, Saved> = BTreeMap::new();
        for (n, r) in &self.bulk.runs {
            if !r.p.persist {
                continue;
            }
            let reports: Vec<Encoded> = r.retained.iter().chain(&r.current).cloned().collect();
            if !reports.is_empty() {
                out.insert(
                    *n,
                    Saved {
                        format: r.p.encoding.format.token().into(),
                        reports,
                    },
                );
            }
        }
        if out.is_empty() && !self.bulk.saved_on_disk {
            return;
        }
        let path = self.cfg.agent.state_dir.join("bulkdata");
        let text = serde_json::to_vec(&out).unwrap_or_default();
        match crate::util::fsutil::write_atomic(&path, &[&text], false) {
            Ok(()) => self.bulk.saved_on_disk = !out.is_empty(),
            Err(e) => tracing::error!("cannot save {}: {e}", path.display()),
        }
    }

    /// `ctl status` figures.
    pub(crate) fn bulk_status(&self) -> Value {
        json!({
            "profiles": self.bulk.runs.len(),
            "delivered": self.bulk.sent_ok,
            "failed_attempts": self.bulk.sent_failed,
            "dropped_reports": self.bulk.dropped_reports,
            "retained": self.bulk.runs.iter().map(|(n, r)| (n.to_string(), json!(r.retained.len()))).collect::<serde_json::Map<_, _>>(),
            "retained_bytes": self.bulk.runs.values().map(Run::retained_bytes).sum::<usize>(),
        })
    }
}

fn read_bounded(path: &std::path::Path, max: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(path)?;
    let mut v = Vec::new();
    f.take(max as u64 + 1).read_to_end(&mut v)?;
    if v.len() > max {
        return Err(std::io::Error::other("too large"));
    }
    Ok(v)
}
