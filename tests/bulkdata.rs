//! TR-181 BulkData over HTTP (issue #18 part 5) against a real collector
//! (`tests/fixtures/bulk_collector.py`, Python's standard library, on loopback): the reports'
//! content against the model's values read through the control socket, JSON and CSV, gzip,
//! Basic and Digest, PUT, RequestURIParameter, partial, wildcard and unknown references,
//! retained reports across an outage (500, a hanging collector), retry spacing, the byte
//! bounds, PersistAcrossReboot across an agent restart.

// Without the feature only `bad_input_is_refused` runs (collection is refused with 9001).
#![cfg_attr(not(feature = "bulkdata"), allow(dead_code, unused_imports))]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// The collector process and its files.
struct Collector {
    _proc: Proc,
    port: u16,
    log: PathBuf,
    control: PathBuf,
}

impl Collector {
    fn start(dir: &Path) -> Collector {
        let portfile = dir.join("collector.port");
        let log = dir.join("collector.jsonl");
        let control = dir.join("collector.json");
        std::fs::write(&control, "{}").unwrap();
        let mut cmd = Command::new("python3");
        cmd.arg(manifest().join("tests/fixtures/bulk_collector.py"))
            .arg(&portfile)
            .arg(&log)
            .arg(&control);
        let proc = Proc::spawn(cmd, dir.join("collector.out"));
        assert!(
            wait_until(Duration::from_secs(10), || portfile.exists()),
            "collector did not start: {}",
            proc.text()
        );
        let port = std::fs::read_to_string(&portfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        Collector {
            _proc: proc,
            port,
            log,
            control,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// How the collector answers from now on.
    fn answer(&self, v: Value) {
        let tmp = self.control.with_extension("tmp");
        std::fs::write(&tmp, v.to_string()).unwrap();
        std::fs::rename(&tmp, &self.control).unwrap();
    }

    fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits for `n` requests to `path` and returns all requests to it.
    fn wait(&self, path: &str, n: usize) -> Vec<Value> {
        let mine = || -> Vec<Value> {
            self.records()
                .into_iter()
                .filter(|r| r["path"] == path)
                .collect()
        };
        let ok = wait_until(WAIT, || mine().len() >= n);
        let got = mine();
        assert!(ok, "{} of {n} requests to {path}: {got:?}", got.len());
        got
    }
}

fn config(dir: &Path, extra: &str) -> PathBuf {
    write_config(
        dir,
        &format!(
            "[bulkdata]\nmin_reporting_interval = 1\ntimeout = 2\n{extra}\n\
             [parameters]\n\"Device.BulkData.Enable\" = true\n"
        ),
    )
}

/// Adds a profile with these parameter references (Name, Reference) and settings (relative
/// to the profile), enabled; returns its instance number.
fn profile(a: &Agent, refs: &[(&str, &str)], settings: &[(&str, &str)]) -> u32 {
    let v = a.ctl(json!({"op": "add", "object": "Device.BulkData.Profile."}));
    assert_eq!(v["ok"], true, "{v}");
    let n = v["instance"].as_u64().unwrap() as u32;
    let base = format!("Device.BulkData.Profile.{n}.");
    let mut values = serde_json::Map::new();
    for (name, reference) in refs {
        let v = a.ctl(json!({"op": "add", "object": format!("{base}Parameter.")}));
        assert_eq!(v["ok"], true, "{v}");
        let i = v["instance"].as_u64().unwrap();
        values.insert(format!("{base}Parameter.{i}.Name"), json!(name));
        values.insert(format!("{base}Parameter.{i}.Reference"), json!(reference));
    }
    for (k, v) in settings {
        values.insert(format!("{base}{k}"), json!(v));
    }
    let v = a.ctl(json!({"op": "set", "values": values}));
    assert_eq!(v["ok"], true, "{v}");
    let v = a.set(&format!("{base}Enable"), "true");
    assert_eq!(v["ok"], true, "{v}");
    n
}

fn add_uri_param(a: &Agent, n: u32, name: &str, reference: &str) {
    let t = format!("Device.BulkData.Profile.{n}.HTTP.RequestURIParameter.");
    let v = a.ctl(json!({"op": "add", "object": t}));
    let i = v["instance"].as_u64().unwrap();
    let v = a.ctl(json!({"op": "set", "values": {
        format!("{t}{i}.Name"): name, format!("{t}{i}.Reference"): reference}}));
    assert_eq!(v["ok"], true, "{v}");
}

/// Every value under `path` as the control socket reads it.
fn model(a: &Agent, path: &str) -> BTreeMap<String, String> {
    let v = a.ctl(json!({"op": "get", "names": [path]}));
    assert_eq!(v["ok"], true, "{v}");
    v["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["value"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// A JSON report value as the model's text.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn norm(v: &str) -> String {
    match v {
        "1" => "true".into(),
        "0" => "false".into(),
        _ => v.to_string(),
    }
}

fn body_json(r: &Value) -> Value {
    serde_json::from_str(r["body"].as_str().unwrap())
        .unwrap_or_else(|e| panic!("report is not JSON ({e}): {}", r["body"]))
}

#[cfg(feature = "bulkdata")]
#[test]
fn json_reports_carry_the_models_values() {
    let dir = TempDir::new("bulk-json");
    let col = Collector::start(dir.path());
    let a = Agent::start(&config(dir.path(), ""));
    let refs = [
        ("", "Device.ManagementServer."),
        ("Maker", "Device.DeviceInfo.Manufacturer"),
        ("", "Device.BulkData.Profile.*.ReportingInterval"),
        ("Srv", "Device.BulkData.Profile.*.HTTP."),
        ("", "Device.NoSuchObject."),
        ("", "Device.BulkData.Profile.77.Name"),
    ];
    let nvp = profile(
        &a,
        &refs,
        &[
            ("ReportingInterval", "1"),
            ("JSONEncoding.ReportFormat", "NameValuePair"),
            ("HTTP.URL", &col.url("/nvp")),
            ("HTTP.Password", "s3cret-never-sent"),
        ],
    );
    let oh = profile(
        &a,
        &refs,
        &[
            ("ReportingInterval", "1"),
            ("JSONEncoding.ReportTimestamp", "ISO-8601"),
            ("HTTP.URL", &col.url("/oh")),
        ],
    );
    let nvp_reqs = col.wait("/nvp", 2);
    let oh_reqs = col.wait("/oh", 2);
    let ms = model(&a, "Device.ManagementServer.");
    let maker = a.get("Device.DeviceInfo.Manufacturer");

    // NameValuePair: one object per report, the full names (or Name + the rest).
    let r = &nvp_reqs[1];
    assert_eq!(r["method"], "POST");
    assert_eq!(r["status"], 200);
    assert_eq!(r["headers"]["bbf-report-format"], "NameValuePair");
    assert!(
        r["headers"]["content-type"]
            .as_str()
            .unwrap()
            .starts_with("application/json"),
        "{r}"
    );
    assert!(
        r["headers"]["date"].as_str().unwrap().ends_with(" GMT"),
        "{r}"
    );
    assert!(!r["body"].as_str().unwrap().contains("s3cret"));
    let b = body_json(r);
    let reports = b["Report"].as_array().unwrap();
    assert_eq!(reports.len(), 1, "{b}");
    let rep = reports[0].as_object().unwrap();
    assert!(rep["CollectionTime"].as_i64().unwrap() > 1_577_836_800_000);
    for (k, v) in &ms {
        assert_eq!(
            rep.get(k).map(text).map(|s| norm(&s)),
            Some(norm(v)),
            "{k} in {b}"
        );
    }
    assert_eq!(rep["Maker"], maker);
    for n in [nvp, oh] {
        assert_eq!(
            rep[&format!("Device.BulkData.Profile.{n}.ReportingInterval")],
            1
        );
        assert_eq!(rep[&format!("Srv.{n}.HTTP.Method")], "POST");
    }
    assert_eq!(rep[&format!("Srv.{nvp}.HTTP.Password")], "");
    // ManagementServer., CollectionTime, Maker, 2 intervals, 2 x HTTP.: nothing else (the
    // unknown references are left out).
    let http = model(&a, &format!("Device.BulkData.Profile.{nvp}.HTTP.")).len();
    assert_eq!(rep.len(), ms.len() + 2 + 2 + 2 * http, "{b}");
    assert!(
        a.log_text()
            .contains("Device.NoSuchObject. names no parameter")
    );

    // ObjectHierarchy: the same values as nested objects.
    let b = body_json(&oh_reqs[1]);
    assert_eq!(
        oh_reqs[1]["headers"]["bbf-report-format"],
        "ObjectHierarchy"
    );
    let rep = &b["Report"][0];
    assert!(
        rep["CollectionTime"].as_str().unwrap().ends_with('Z'),
        "{b}"
    );
    for (k, v) in &ms {
        let mut node = rep;
        for seg in k.split('.') {
            node = &node[seg];
        }
        assert_eq!(norm(&text(node)), norm(v), "{k} in {b}");
    }
    assert_eq!(rep["Maker"], maker);
    assert_eq!(
        rep["Device"]["BulkData"]["Profile"][oh.to_string()]["ReportingInterval"],
        1
    );
    assert_eq!(rep["Srv"][nvp.to_string()]["HTTP"]["UseDateHeader"], true);
    a.stop();
}

/// The rows of a CSV body (RFC 4180 quoting with `"`, rows ending in CR LF).
fn csv_rows(body: &str, sep: char) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut it = body.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            '"' if quoted && it.peek() == Some(&'"') => {
                field.push('"');
                it.next();
            }
            '"' => quoted = !quoted,
            c if c == sep && !quoted => row.push(std::mem::take(&mut field)),
            '\r' if !quoted && it.peek() == Some(&'\n') => {
                it.next();
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            c => field.push(c),
        }
    }
    assert!(
        field.is_empty() && row.is_empty(),
        "unterminated row in {body:?}"
    );
    rows
}

#[cfg(feature = "bulkdata")]
#[test]
fn csv_gzip_put_query_and_basic_auth() {
    let dir = TempDir::new("bulk-csv");
    let col = Collector::start(dir.path());
    col.answer(json!({"auth": "basic", "user": "box", "password": "pw1"}));
    let a = Agent::start(&config(dir.path(), ""));
    let n = profile(
        &a,
        &[("", "Device.ManagementServer.")],
        &[
            ("ReportingInterval", "1"),
            ("EncodingType", "CSV"),
            ("CSVEncoding.ReportFormat", "ParameterPerRow"),
            ("HTTP.Compression", "GZIP"),
            ("HTTP.Method", "PUT"),
            ("HTTP.UseDateHeader", "false"),
            ("HTTP.Username", "box"),
            ("HTTP.Password", "pw1"),
            ("HTTP.URL", &col.url("/csv?site=lab")),
        ],
    );
    add_uri_param(&a, n, "oui", "Device.DeviceInfo.ManufacturerOUI");
    add_uri_param(&a, n, "", "Device.DeviceInfo.SerialNumber");
    assert_eq!(
        a.get(&format!("Device.BulkData.Profile.{n}.HTTP.Password")),
        ""
    );
    let reqs = col.wait("/csv", 4);
    let ok: Vec<&Value> = reqs.iter().filter(|r| r["status"] == 200).collect();
    assert!(!ok.is_empty(), "{reqs:?}");
    // The first attempt of each report goes without credentials and is challenged.
    assert_eq!(reqs[0]["status"], 401);
    let r = ok[ok.len() - 1];
    assert_eq!(r["method"], "PUT");
    assert!(
        r["headers"]["authorization"]
            .as_str()
            .unwrap()
            .starts_with("Basic ")
    );
    assert_eq!(r["headers"]["content-encoding"], "gzip");
    assert_eq!(r["headers"]["bbf-report-format"], "ParameterPerRow");
    assert!(r["headers"].get("date").is_none(), "{r}");
    assert!(
        r["headers"]["content-type"]
            .as_str()
            .unwrap()
            .starts_with("text/csv")
    );
    assert_eq!(r["query"]["site"], json!(["lab"]));
    assert_eq!(
        r["query"]["oui"],
        json!([a.get("Device.DeviceInfo.ManufacturerOUI")])
    );
    assert_eq!(
        r["query"]["Device.DeviceInfo.SerialNumber"],
        json!([a.get("Device.DeviceInfo.SerialNumber")])
    );
    let body = r["body"].as_str().unwrap();
    // gzip on the wire: the decoded body is longer than what was sent.
    assert!(
        (r["size"].as_u64().unwrap() as usize) < body.len() + 20,
        "{r}"
    );
    let rows = csv_rows(body, ',');
    assert_eq!(
        rows[0],
        [
            "ReportTimestamp",
            "ParameterName",
            "ParameterValue",
            "ParameterType"
        ]
    );
    let want = model(&a, "Device.ManagementServer.");
    assert_eq!(rows.len(), 1 + want.len(), "{body}");
    for row in &rows[1..] {
        assert_eq!(row.len(), 4, "{row:?}");
        assert!(row[0].parse::<i64>().unwrap() > 1_577_836_800_000);
        assert_eq!(
            want.get(&row[1]).map(|v| norm(v)),
            Some(norm(&row[2])),
            "{row:?}"
        );
    }
    let types: BTreeMap<&str, &str> = rows[1..]
        .iter()
        .map(|r| (r[1].as_str(), r[3].as_str()))
        .collect();
    assert_eq!(
        types["Device.ManagementServer.PeriodicInformInterval"],
        "unsignedInt"
    );
    assert_eq!(types["Device.ManagementServer.URL"], "string");
    a.stop();
}

#[cfg(feature = "bulkdata")]
#[test]
fn csv_per_column_with_digest() {
    let dir = TempDir::new("bulk-csv2");
    let col = Collector::start(dir.path());
    col.answer(json!({"auth": "digest", "user": "box", "password": "pw2"}));
    let a = Agent::start(&config(dir.path(), ""));
    profile(
        &a,
        &[
            ("", "Device.ManagementServer.PeriodicInformInterval"),
            ("", "Device.ManagementServer.PeriodicInformEnable"),
            ("Id", "Device.DeviceInfo.ProductClass"),
        ],
        &[
            ("ReportingInterval", "1"),
            ("EncodingType", "CSV"),
            ("CSVEncoding.RowTimestamp", "None"),
            ("CSVEncoding.FieldSeparator", ";"),
            ("HTTP.Username", "box"),
            ("HTTP.Password", "pw2"),
            ("HTTP.URL", &col.url("/col")),
        ],
    );
    let reqs = col.wait("/col", 4);
    let r = reqs
        .iter()
        .rev()
        .find(|r| r["status"] == 200)
        .unwrap_or_else(|| panic!("no accepted report: {reqs:?}"));
    assert!(
        r["headers"]["authorization"]
            .as_str()
            .unwrap()
            .starts_with("Digest ")
    );
    assert_eq!(r["headers"]["bbf-report-format"], "ParameterPerColumn");
    let body = r["body"].as_str().unwrap();
    let rows = csv_rows(body, ';');
    assert_eq!(rows.len(), 2, "{body}");
    let names: Vec<&str> = rows[0].iter().map(String::as_str).collect();
    let values: Vec<&str> = rows[1].iter().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "Device.ManagementServer.PeriodicInformInterval",
            "Device.ManagementServer.PeriodicInformEnable",
            "Id"
        ]
    );
    assert_eq!(values[0], a.get(names[0]));
    assert_eq!(norm(values[1]), norm(&a.get(names[1])));
    assert_eq!(values[2], a.get("Device.DeviceInfo.ProductClass"));
    a.stop();
}

/// Collection times (ms) of the reports in one JSON body.
fn times(r: &Value) -> Vec<i64> {
    body_json(r)["Report"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["CollectionTime"].as_i64().unwrap())
        .collect()
}

#[cfg(feature = "bulkdata")]
#[test]
fn failed_reports_are_retained_bounded_and_sent_on_recovery() {
    let dir = TempDir::new("bulk-retain");
    let col = Collector::start(dir.path());
    col.answer(json!({"status": 500}));
    let a = Agent::start(&config(dir.path(), ""));
    profile(
        &a,
        &[("", "Device.DeviceInfo.Manufacturer")],
        &[
            ("ReportingInterval", "1"),
            ("JSONEncoding.ReportFormat", "NameValuePair"),
            ("NumberOfRetainedFailedReports", "2"),
            ("HTTP.URL", &col.url("/r")),
        ],
    );
    let failed = col.wait("/r", 5);
    // Each attempt carries the retained reports (at most 2) and the current one.
    let counts: Vec<usize> = failed.iter().map(|r| times(r).len()).collect();
    assert_eq!(&counts[..3], [1, 2, 3], "{counts:?}");
    assert!(counts.iter().all(|c| *c <= 3), "{counts:?}");
    let before = failed.len();
    col.answer(json!({}));
    let all = col.wait("/r", before + 2);
    let first_ok = all
        .iter()
        .position(|r| r["status"] == 200)
        .expect("a delivered report");
    let delivered = times(&all[first_ok]);
    assert_eq!(delivered.len(), 3, "retained + current: {delivered:?}");
    assert!(delivered.windows(2).all(|w| w[0] < w[1]), "oldest first");
    // The last failed body's newest two reports are the retained ones delivered now.
    let last_failed = times(&all[first_ok - 1]);
    assert_eq!(&delivered[..2], &last_failed[last_failed.len() - 2..]);
    let after = all
        .iter()
        .skip(first_ok + 1)
        .find(|r| r["status"] == 200)
        .map(times);
    if let Some(t) = after {
        assert_eq!(t.len(), 1, "retained reports forgotten once delivered");
    }
    let st = a.ctl(json!({"op": "status"}));
    assert!(st["bulkdata"]["delivered"].as_u64().unwrap() >= 1, "{st}");
    a.stop();
}

#[cfg(feature = "bulkdata")]
#[test]
fn retries_follow_the_configured_wait() {
    let dir = TempDir::new("bulk-retry");
    let col = Collector::start(dir.path());
    col.answer(json!({"status": 500}));
    let a = Agent::start(&config(dir.path(), ""));
    profile(
        &a,
        &[("", "Device.DeviceInfo.Manufacturer")],
        &[
            ("ReportingInterval", "8"),
            ("HTTP.RetryEnable", "true"),
            ("HTTP.RetryMinimumWaitInterval", "1"),
            ("HTTP.RetryIntervalMultiplier", "2000"),
            ("HTTP.URL", &col.url("/retry")),
        ],
    );
    let reqs = col.wait("/retry", 2);
    col.answer(json!({}));
    let reqs2 = col.wait("/retry", 3);
    assert_eq!(reqs[..2], reqs2[..2]);
    let t: Vec<f64> = reqs2.iter().map(|r| r["time"].as_f64().unwrap()).collect();
    // First retry after m..m·k/1000 = 1..2 s, the second after 2..4 s (lower bounds only).
    assert!(t[1] - t[0] >= 0.95, "{t:?}");
    assert!(t[2] - t[1] >= 1.95, "{t:?}");
    assert_eq!(reqs2[2]["status"], 200);
    // The same report, not a new one: one element, the same collection time.
    assert_eq!(times(&reqs2[2]), times(&reqs2[0]));
    a.stop();
}

#[cfg(feature = "bulkdata")]
#[test]
fn a_hanging_collector_costs_bounded_memory() {
    let dir = TempDir::new("bulk-hang");
    let col = Collector::start(dir.path());
    col.answer(json!({"hang": true}));
    let a = Agent::start(&config(
        dir.path(),
        "max_retained_bytes = 3000\nmax_report_bytes = 2000",
    ));
    profile(
        &a,
        &[("", "Device.ManagementServer.")],
        &[
            ("ReportingInterval", "1"),
            ("NumberOfRetainedFailedReports", "-1"),
            ("JSONEncoding.ReportFormat", "NameValuePair"),
            ("HTTP.URL", &col.url("/hang")),
        ],
    );
    let hung = col.wait("/hang", 4);
    // The agent keeps serving while attempts hang.
    assert_eq!(a.ctl(json!({"op": "status"}))["ok"], true);
    let st = a.ctl(json!({"op": "status"}));
    assert!(
        st["bulkdata"]["retained_bytes"].as_u64().unwrap() <= 3000,
        "{st}"
    );
    for r in &hung {
        assert!(r["body"].as_str().unwrap().len() <= 3000 + 2000 + 16, "{r}");
    }
    col.answer(json!({}));
    let n = hung.len();
    let all = col.wait("/hang", n + 1);
    let ok = loop {
        if let Some(r) = all.iter().skip(n - 1).find(|r| r["status"] == 200) {
            break r.clone();
        }
        let more = col.wait("/hang", col.records().len() + 1);
        if let Some(r) = more.iter().find(|r| r["status"] == 200) {
            break r.clone();
        }
    };
    let t = times(&ok);
    assert!(t.len() >= 2, "retained reports delivered: {t:?}");
    assert!(ok["body"].as_str().unwrap().len() <= 3000 + 2000 + 16);
    assert!(a.log_text().contains("values left out of the report"));
    a.stop();
}

#[cfg(feature = "bulkdata")]
#[test]
fn a_whole_device_profile_stays_under_the_bound() {
    let dir = TempDir::new("bulk-huge");
    let col = Collector::start(dir.path());
    let a = Agent::start(&config(dir.path(), "max_report_bytes = 8192"));
    for fmt in ["ObjectHierarchy", "NameValuePair"] {
        profile(
            &a,
            &[("", "Device.")],
            &[
                ("ReportingInterval", "1"),
                ("JSONEncoding.ReportFormat", fmt),
                ("HTTP.URL", &col.url(&format!("/{fmt}"))),
            ],
        );
    }
    let total = a.ctl(json!({"op": "status"}))["parameters"]
        .as_u64()
        .unwrap();
    for fmt in ["ObjectHierarchy", "NameValuePair"] {
        let r = &col.wait(&format!("/{fmt}"), 1)[0];
        let body = r["body"].as_str().unwrap();
        assert!(body.len() <= 8192 + 16, "{} bytes", body.len());
        assert!(body.len() > 1000, "{} bytes", body.len());
        let b = body_json(r);
        assert_eq!(b["Report"].as_array().unwrap().len(), 1);
        if fmt == "NameValuePair" {
            let n = b["Report"][0].as_object().unwrap().len() as u64;
            assert!(n > 50 && n < total, "{n} of {total}");
        }
    }
    assert!(a.log_text().contains("values left out of the report"));
    a.stop();
}

#[cfg(feature = "bulkdata")]
#[test]
fn retained_reports_survive_a_restart_with_persist_across_reboot() {
    let dir = TempDir::new("bulk-persist");
    let col = Collector::start(dir.path());
    col.answer(json!({"status": 503}));
    let cfg = config(dir.path(), "");
    let a = Agent::start(&cfg);
    profile(
        &a,
        &[("", "Device.DeviceInfo.Manufacturer")],
        &[
            ("ReportingInterval", "1"),
            ("NumberOfRetainedFailedReports", "5"),
            ("HTTP.PersistAcrossReboot", "true"),
            ("HTTP.URL", &col.url("/p")),
        ],
    );
    let failed = col.wait("/p", 3);
    a.kill9();
    let seen: Vec<i64> = failed.iter().flat_map(times).collect();
    let n = col.records().len();
    col.answer(json!({}));
    let a = Agent::start(&cfg);
    let all = col.wait("/p", n + 1);
    let ok = all
        .iter()
        .skip(n)
        .find(|r| r["status"] == 200)
        .expect("delivered after the restart");
    let t = times(ok);
    // At least the reports of the first two failed attempts come back.
    for want in &times(&failed[1]) {
        assert!(t.contains(want), "{want} not in {t:?} (seen {seen:?})");
    }
    a.stop();
}

#[test]
fn bad_input_is_refused() {
    let dir = TempDir::new("bulk-bad");
    let a = Agent::start(&config(dir.path(), "max_profiles = 2"));
    let add = || a.ctl(json!({"op": "add", "object": "Device.BulkData.Profile."}));
    let v = add();
    assert_eq!(v["ok"], true, "{v}");
    let n = v["instance"].as_u64().unwrap();
    let p = format!("Device.BulkData.Profile.{n}.");
    let v = a.ctl(json!({"op": "add", "object": format!("{p}Parameter.")}));
    let i = v["instance"].as_u64().unwrap();
    if cfg!(feature = "bulkdata") {
        assert_eq!(add()["ok"], true);
        let v = add();
        assert_eq!(v["fault"]["code"], 9004, "{v}");
        for (k, val) in [
            (format!("{p}Parameter.{i}.Reference"), "Device.A B"),
            (format!("{p}Parameter.{i}.Reference"), "Foo."),
            (format!("{p}HTTP.URL"), "ftp://x/"),
            (format!("{p}ReportingInterval"), "0"),
        ] {
            let v = a.set(&k, val);
            assert_eq!(v["ok"], false, "{k} = {val}: {v}");
        }
        assert_eq!(a.get("Device.BulkData.Status"), "Enabled");
        assert_eq!(a.get("Device.BulkData.MinReportingInterval"), "1");
        assert_eq!(a.get("Device.BulkData.MaxNumberOfProfiles"), "2");
    } else {
        let v = a.set(&format!("{p}Enable"), "true");
        assert_eq!(v["faults"][0]["code"], 9001, "{v}");
        assert_eq!(a.get("Device.BulkData.Status"), "Disabled");
    }
    a.stop();
}
