use super::*;

fn t() -> CollectionTime {
    CollectionTime {
        unix_ms: 1_700_000_000_123,
        synchronised: true,
        uptime_ms: 5000,
    }
}

fn sample() -> Collector {
    let mut c = Collector::new(100, 1 << 20);
    c.push("Device.A.1.B", "42", "xsd:unsignedInt");
    c.push("Device.A.1.C", "x\"y", "xsd:string");
    c.push("Device.A.2.B", "7", "xsd:unsignedInt");
    c.push("Device.D", "true", "xsd:boolean");
    c.push("Device.E", "-3", "xsd:int");
    c.push("Device.F", "", "xsd:unsignedInt");
    c
}

fn parse(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

#[test]
fn json_name_value_pair() {
    let enc = Encoding::json(Format::JsonNameValuePair, Stamp::UnixEpoch);
    let r = encode(&enc, &t(), &sample());
    let v = parse(&assemble(enc.format, [&r]));
    let rep = &v["Report"][0];
    assert_eq!(rep["CollectionTime"], 1_700_000_000_123i64);
    assert_eq!(rep["Device.A.1.B"], 42);
    assert_eq!(rep["Device.A.1.C"], "x\"y");
    assert_eq!(rep["Device.D"], true);
    assert_eq!(rep["Device.E"], -3);
    // Not a number: a string, so the JSON stays valid.
    assert_eq!(rep["Device.F"], "");
    assert_eq!(rep.as_object().unwrap().len(), 7);
}

#[test]
fn json_object_hierarchy() {
    let enc = Encoding::json(Format::JsonObjectHierarchy, Stamp::Iso8601);
    let r = encode(&enc, &t(), &sample());
    let v = parse(&assemble(enc.format, [&r]));
    let rep = &v["Report"][0];
    assert_eq!(rep["CollectionTime"], "2023-11-14T22:13:20Z");
    assert_eq!(rep["Device"]["A"]["1"]["B"], 42);
    assert_eq!(rep["Device"]["A"]["1"]["C"], "x\"y");
    assert_eq!(rep["Device"]["A"]["2"]["B"], 7);
    assert_eq!(rep["Device"]["D"], true);
}

#[test]
fn object_hierarchy_conflict_keeps_the_value() {
    let mut c = Collector::new(10, 1 << 20);
    c.push("X.Y", "1", "xsd:string");
    c.push("X.Y.Z", "2", "xsd:string");
    let enc = Encoding::json(Format::JsonObjectHierarchy, Stamp::None);
    let v = parse(&assemble(enc.format, [&encode(&enc, &t(), &c)]));
    assert_eq!(v, serde_json::json!({"Report": [{"X": {"Y": "1"}}]}));
}

#[test]
fn retained_reports_come_first() {
    let enc = Encoding::json(Format::JsonNameValuePair, Stamp::None);
    let mut a = Collector::new(10, 1 << 20);
    a.push("Device.X", "1", "xsd:unsignedInt");
    let mut b = Collector::new(10, 1 << 20);
    b.push("Device.X", "2", "xsd:unsignedInt");
    let (ra, rb) = (encode(&enc, &t(), &a), encode(&enc, &t(), &b));
    let v = parse(&assemble(enc.format, [&ra, &rb]));
    assert_eq!(v["Report"][0]["Device.X"], 1);
    assert_eq!(v["Report"][1]["Device.X"], 2);
}

fn csv(format: Format, stamp: Stamp) -> Encoding {
    Encoding {
        format,
        stamp,
        field_sep: ",".into(),
        row_sep: "\r\n".into(),
        escape: "\"".into(),
    }
}

#[test]
fn csv_per_row() {
    let enc = csv(Format::CsvParameterPerRow, Stamp::UnixEpoch);
    let r = encode(&enc, &t(), &sample());
    let body = assemble(enc.format, [&r, &r]);
    let lines: Vec<&str> = body.split("\r\n").collect();
    assert_eq!(
        lines[0],
        "ReportTimestamp,ParameterName,ParameterValue,ParameterType"
    );
    assert_eq!(lines[1], "1700000000123,Device.A.1.B,42,unsignedInt");
    assert_eq!(lines[2], "1700000000123,Device.A.1.C,\"x\"\"y\",string");
    // The second report: rows only (same header).
    assert_eq!(lines.len(), 1 + 6 + 6 + 1);
    assert_eq!(lines[7], "1700000000123,Device.A.1.B,42,unsignedInt");
}

#[test]
fn csv_per_column() {
    let enc = Encoding {
        field_sep: ";".into(),
        row_sep: "\n".into(),
        ..csv(Format::CsvParameterPerColumn, Stamp::None)
    };
    let mut c = Collector::new(10, 1 << 20);
    c.push("Device.A", "a;b", "xsd:string");
    c.push("Device.B", "1", "xsd:unsignedInt");
    let r = encode(&enc, &t(), &c);
    let mut c2 = Collector::new(10, 1 << 20);
    c2.push("Device.A", "z", "xsd:string");
    let r2 = encode(&enc, &t(), &c2);
    assert_eq!(
        assemble(enc.format, [&r, &r]),
        "Device.A;Device.B\n\"a;b\";1\n\"a;b\";1\n"
    );
    // Other columns: a header of their own.
    assert_eq!(
        assemble(enc.format, [&r, &r2]),
        "Device.A;Device.B\n\"a;b\";1\nDevice.A\nz\n"
    );
}

#[test]
fn collector_bounds() {
    let mut c = Collector::new(2, 1 << 20);
    assert!(c.push("a", "1", "xsd:string"));
    assert!(!c.push("a", "2", "xsd:string"), "duplicate name");
    assert!(c.push("b", "1", "xsd:string"));
    assert!(!c.push("c", "1", "xsd:string"));
    assert_eq!((c.len(), c.dropped), (2, 1));
    let mut c = Collector::new(1000, 100);
    let mut n = 0;
    while c.push(&format!("Device.N{n}"), "0123456789", "xsd:string") {
        n += 1;
    }
    assert!((1..5).contains(&n), "{n}");
    let enc = Encoding::json(Format::JsonNameValuePair, Stamp::UnixEpoch);
    assert!(encode(&enc, &t(), &c).size() <= 100);
}

#[test]
fn names_for_partial_and_wildcard_references() {
    assert_eq!(reported_name("", "Device.A.", "Device.A.B"), "Device.A.B");
    assert_eq!(reported_name("X", "Device.A.B", "Device.A.B"), "X");
    assert_eq!(reported_name("X", "Device.A.", "Device.A.B"), "X.B");
    assert_eq!(
        reported_name(
            "IF",
            "Device.IP.Interface.*.Stats.BytesSent",
            "Device.IP.Interface.3.Stats.BytesSent"
        ),
        "IF.3.Stats.BytesSent"
    );
    assert_eq!(
        reported_name("IF", "Device.IP.Interface.*.", "Device.IP.Interface.3.Name"),
        "IF.3.Name"
    );
}

#[test]
fn references() {
    for ok in [
        "",
        "Device.",
        "Device.A.B",
        "Device.A.*.B",
        "Device.A.1.",
        "Device.X_00D09E_Foo.",
    ] {
        assert!(reference_ok(ok), "{ok}");
    }
    for bad in [
        "Foo.",
        "Device..A",
        "Device.A.*x.",
        "Device.A B",
        "Device.A.B..",
    ] {
        assert!(!reference_ok(bad), "{bad}");
    }
}

#[test]
fn aligned_interval_end() {
    // Intervals of 60 s ending at :00 of the reference; now = ref + 15.5 s → 44.5 s left.
    assert_eq!(ms_to_aligned_end(1_000_015_500, 1_000_000, 60), 44_500);
    // Exactly at an end: a whole interval.
    assert_eq!(ms_to_aligned_end(1_000_060_000, 1_000_000, 60), 60_000);
    // A reference in the future works the same.
    assert_eq!(ms_to_aligned_end(1_000_015_500, 1_000_600, 60), 44_500);
}

#[test]
fn query_and_date() {
    let u = url_with_query(
        "http://h/p?x=1",
        &[
            ("a b".into(), "1/2".into()),
            ("oui".into(), "00D09E".into()),
        ],
    );
    assert_eq!(u, "http://h/p?x=1&a%20b=1%2F2&oui=00D09E");
    assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
    assert_eq!(http_date(1_700_000_000), "Tue, 14 Nov 2023 22:13:20 GMT");
}

#[test]
fn gzip_round_trip() {
    use std::io::Read;
    let z = gzip(b"hello hello hello");
    let mut d = flate2::read::GzDecoder::new(&z[..]);
    let mut s = String::new();
    d.read_to_string(&mut s).unwrap();
    assert_eq!(s, "hello hello hello");
}
