//! Foundation behaviour seen from outside: the store through the real agent's control socket,
//! persistence across restarts and kills, providers, and configuration errors.

mod common;

use common::*;
use serde_json::json;

const MS: &str = "Device.ManagementServer.";

fn names(v: &serde_json::Value) -> Vec<String> {
    v["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn partial_path_get_and_gpn_levels() {
    let d = TempDir::new("gpn");
    let a = Agent::start(&write_config(
        d.path(),
        "[parameters]\n\"Device.XMPP.Connection.1.Username\" = \"stb1\"\n\"Device.XMPP.Connection.1.Server.1.Port\" = 5223\n",
    ));
    // Partial path: every parameter below, and only those.
    let v = a.ctl(json!({"op": "get", "names": [MS]}));
    let vals = v["values"].as_array().unwrap();
    assert!(vals.len() > 30, "{v}");
    assert!(
        vals.iter()
            .all(|e| e["name"].as_str().unwrap().starts_with(MS))
    );
    assert!(
        vals.iter()
            .any(|e| e["name"] == "Device.ManagementServer.URL")
    );
    assert_eq!(a.get("Device.XMPP.Connection.1.Server.1.Port"), "5223");
    // Unknown names fault 9005, with nothing returned.
    let v = a.ctl(json!({"op": "get", "names": [MS, "Device.NoSuch."]}));
    assert_eq!(v["fault"]["code"], 9005);

    // GPN on the root.
    let v = a.ctl(json!({"op": "names", "path": "", "next_level": true}));
    assert_eq!(names(&v), vec!["Device."]);
    let v = a.ctl(json!({"op": "names", "path": "Device.", "next_level": true}));
    let n = names(&v);
    assert!(n.contains(&"Device.ManagementServer.".to_string()));
    assert!(n.contains(&"Device.RootDataModelVersion".to_string()));
    assert!(
        !n.iter().any(|x| x.starts_with("Device.ManagementServer.U")),
        "{n:?}"
    );
    let all = names(&a.ctl(json!({"op": "names", "path": "", "next_level": false})));
    assert_eq!(all[0], "Device.");
    assert!(all.contains(&"Device.XMPP.Connection.1.Server.1.Port".to_string()));
    assert!(all.contains(&"Device.XMPP.Connection.".to_string()));

    // GPN on a subtree: NextLevel true lists the table's instances; false includes the object.
    let v = a.ctl(json!({"op": "names", "path": "Device.XMPP.Connection.", "next_level": true}));
    assert_eq!(names(&v), vec!["Device.XMPP.Connection.1."]);
    assert_eq!(
        v["names"][0]["writable"], true,
        "instances of a readWrite table are deletable"
    );
    let v = a.ctl(json!({"op": "names", "path": "Device.XMPP.Connection.1.", "next_level": false}));
    let n = names(&v);
    assert_eq!(n[0], "Device.XMPP.Connection.1.");
    assert!(n.contains(&"Device.XMPP.Connection.1.Stats.ReceivedMessages".to_string()));
    // A parameter path: NextLevel false returns it, true is invalid (9003).
    let v =
        a.ctl(json!({"op": "names", "path": "Device.ManagementServer.URL", "next_level": false}));
    assert_eq!(names(&v), vec!["Device.ManagementServer.URL"]);
    assert_eq!(v["names"][0]["writable"], true);
    let v =
        a.ctl(json!({"op": "names", "path": "Device.ManagementServer.URL", "next_level": true}));
    assert_eq!(v["fault"]["code"], 9003);
}

#[test]
fn multi_set_is_atomic_with_per_parameter_faults() {
    let d = TempDir::new("spv");
    let a = Agent::start(&write_config(d.path(), ""));
    let before = a.get("Device.ManagementServer.PeriodicInformInterval");
    let v = a.ctl(json!({"op": "set", "values": {
        "Device.ManagementServer.PeriodicInformInterval": "300",
        "Device.ManagementServer.PeriodicInformEnable": "maybe",
        "Device.ManagementServer.CWMPRetryIntervalMultiplier": "999",
        "Device.NoSuch.Param": "1",
    }}));
    assert_eq!(v["ok"], false);
    assert_eq!(v["fault"]["code"], 9003);
    let mut faults: Vec<(String, i64)> = v["faults"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["name"].as_str().unwrap().to_string(),
                f["code"].as_i64().unwrap(),
            )
        })
        .collect();
    faults.sort();
    assert_eq!(
        faults,
        vec![
            (
                "Device.ManagementServer.CWMPRetryIntervalMultiplier".into(),
                9007
            ),
            ("Device.ManagementServer.PeriodicInformEnable".into(), 9006),
            ("Device.NoSuch.Param".into(), 9005),
        ]
    );
    assert_eq!(
        a.get("Device.ManagementServer.PeriodicInformInterval"),
        before,
        "nothing applied"
    );
    // Booleans accept 1/0 and are stored canonically.
    let v = a.set("Device.ManagementServer.PeriodicInformEnable", "1");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(
        a.get("Device.ManagementServer.PeriodicInformEnable"),
        "true"
    );
}

#[test]
fn hidden_values_read_back_empty() {
    let d = TempDir::new("hidden");
    let a = Agent::start(&write_config(
        d.path(),
        "[parameters]\n\"Device.ManagementServer.ConnectionRequestPassword\" = \"s3cret\"\n",
    ));
    assert_eq!(
        a.get("Device.ManagementServer.ConnectionRequestPassword"),
        ""
    );
    a.set("Device.ManagementServer.Password", "acs-pass");
    assert_eq!(a.get("Device.ManagementServer.Password"), "");
    let all = a.ctl(json!({"op": "get", "names": [MS]})).to_string();
    assert!(!all.contains("s3cret") && !all.contains("acs-pass"));
    assert!(!a.log_text().contains("acs-pass"), "password in the log");
}

#[test]
fn add_delete_never_reuse_instance_numbers_across_restart() {
    let d = TempDir::new("inst");
    let cfg = write_config(d.path(), "");
    let a = Agent::start(&cfg);
    let t = "Device.XMPP.Connection.";
    let add = |a: &Agent| {
        a.ctl(json!({"op": "add", "object": t}))["instance"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(add(&a), 1);
    assert_eq!(add(&a), 2);
    assert_eq!(a.get("Device.XMPP.ConnectionNumberOfEntries"), "2");
    assert_eq!(
        a.ctl(json!({"op": "delete", "object": "Device.XMPP.Connection.2."}))["ok"],
        true
    );
    assert_eq!(a.get("Device.XMPP.ConnectionNumberOfEntries"), "1");
    let v = a.ctl(json!({"op": "delete", "object": "Device.XMPP.Connection.2."}));
    assert_eq!(v["fault"]["code"], 9005);
    a.set("Device.XMPP.Connection.1.Username", "kept");
    a.kill9();
    let a = Agent::start(&cfg);
    assert_eq!(add(&a), 3, "2 is not reused after a restart");
    assert_eq!(a.get("Device.XMPP.Connection.1.Username"), "kept");
    let v = a.ctl(json!({"op": "get", "names": ["Device.XMPP.Connection.2."]}));
    assert_eq!(v["fault"]["code"], 9005);
    // A nested table of a new instance starts empty, and counts.
    let v = a.ctl(json!({"op": "add", "object": "Device.XMPP.Connection.3.Server."}));
    assert_eq!(v["instance"], 1);
    assert_eq!(a.get("Device.XMPP.Connection.3.ServerNumberOfEntries"), "1");
}

#[test]
fn changes_are_reported_for_ctl_sets_and_provider_values() {
    let d = TempDir::new("notify");
    let values = d.path().join("device.json");
    let chan = "Device.Services.STBService.1.Components.FrontEnd.1.X_00D09E_CurrentChannel";
    std::fs::write(&values, json!({chan: "101"}).to_string()).unwrap();
    let prov = manifest().join("tests/fixtures/file_provider.py");
    let cfg = write_config(
        d.path(),
        &format!(
            "[[provider]]\nprefix = \"Device.Services.STBService.1.Components.FrontEnd.\"\ncommand = [\"python3\", \"{}\", \"{}\"]\n[parameters]\n\"{chan}\" = \"\"\n",
            prov.display(),
            values.display()
        ),
    );
    let a = Agent::start(&cfg);
    assert_eq!(a.get(chan), "101", "value comes from the provider");
    // Passive notification on the provider-backed channel, active on ProvisioningCode (forced).
    assert_eq!(
        a.ctl(json!({"op": "setattr", "name": chan, "notification": 1}))["ok"],
        true
    );
    let ch = a.ctl(json!({"op": "changes"}));
    assert_eq!(ch["changes"].as_array().unwrap().len(), 0, "{ch}");
    // The device changes channel behind the agent's back; a poll finds it.
    std::fs::write(&values, json!({chan: "205"}).to_string()).unwrap();
    a.ctl(json!({"op": "poll"}));
    let ch = a.ctl(json!({"op": "changes"}));
    assert_eq!(ch["changes"][0]["name"], chan, "{ch}");
    assert_eq!(ch["changes"][0]["value"], "205");
    assert_eq!(ch["active"], false, "passive only");
    // A value pushed through the control socket, with active notification.
    assert_eq!(
        a.set("Device.DeviceInfo.ProvisioningCode", "ABC")["ok"],
        true
    );
    let ch = a.ctl(json!({"op": "changes"}));
    assert_eq!(ch["active"], true, "{ch}");
    assert!(
        ch["changes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "Device.DeviceInfo.ProvisioningCode" && c["value"] == "ABC")
    );
    // A set of the provider-backed value goes through to the device.
    assert_eq!(a.set(chan, "300")["ok"], true);
    let dev: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&values).unwrap()).unwrap();
    assert_eq!(dev[chan], "300");
    // The device refuses: fault, and the cached value is unchanged.
    let v = a.set(chan, "refuse");
    assert_eq!(v["ok"], false);
    assert_eq!(a.get(chan), "300");
    // One provider process served everything: no fork per parameter.
    let log = std::fs::read_to_string(d.path().join("device.json.log")).unwrap();
    assert!(log.lines().count() >= 4);
    assert!(a.get("Device.DeviceInfo.UpTime").parse::<u64>().is_ok());
}

#[test]
fn kill9_while_sets_are_in_flight_keeps_an_acknowledged_state() {
    let d = TempDir::new("kill");
    let cfg = write_config(d.path(), "");
    let key = "Device.ManagementServer.PeriodicInformInterval";
    let mut kills = 0;
    let mut rounds_with_acks = 0;
    let mut seed: u64 = 0x9e3779b97f4a7c15;
    let mut a = Agent::start(&cfg);
    // The factory value is the first "acknowledged" state.
    let mut acked: u64 = a.get(key).parse().unwrap();
    for round in 0..200 {
        // Fire sets from another thread; kill at a pseudo-random moment.
        let sock = a.sock.clone();
        let start = acked + 1;
        let (first_tx, first_rx) = std::sync::mpsc::channel();
        let worker = std::thread::spawn(move || {
            let mut last_ok = None;
            let mut attempted = start;
            for v in start..start + 5000 {
                attempted = v;
                let r = ctl(&sock, &json!({"op": "set", "values": {key: v.to_string()}}));
                match r {
                    Ok(ans) if ans["ok"] == true => {
                        if last_ok.is_none() {
                            let _ = first_tx.send(());
                        }
                        last_ok = Some(v);
                    }
                    _ => break,
                }
            }
            (last_ok, attempted)
        });
        // Kill at a pseudo-random moment once sets are flowing (whatever the machine's load).
        let _ = first_rx.recv_timeout(std::time::Duration::from_secs(10));
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(std::time::Duration::from_micros(seed % 5_000));
        a.kill9();
        kills += 1;
        let (last_ok, attempted) = worker.join().unwrap();
        a = Agent::start(&cfg);
        let now: u64 = a.get(key).parse().unwrap();
        let floor = last_ok.unwrap_or(acked);
        assert!(
            now == floor || now == attempted || (now == acked && last_ok.is_none()),
            "round {round}: value {now}, last acknowledged {floor}, in flight {attempted}"
        );
        if last_ok.is_some() {
            rounds_with_acks += 1;
        }
        acked = now;
    }
    assert_eq!(kills, 200);
    assert!(
        rounds_with_acks > 100,
        "kills mostly landed with sets in flight: {rounds_with_acks}"
    );
    a.stop();
}

#[test]
fn truncated_state_falls_back_to_the_previous_copy() {
    let d = TempDir::new("trunc");
    let cfg = write_config(d.path(), "");
    let a = Agent::start(&cfg);
    a.set("Device.ManagementServer.Username", "first");
    a.set("Device.ManagementServer.Username", "second");
    a.stop();
    let st = d.path().join("state/state");
    let data = std::fs::read(&st).unwrap();
    std::fs::write(&st, &data[..data.len() / 2]).unwrap();
    let a = Agent::start(&cfg);
    assert_eq!(a.get("Device.ManagementServer.Username"), "first");
    let status = a.ctl(json!({"op": "status"}));
    let how = status["state_loaded"].as_str().unwrap_or("");
    assert!(
        how.starts_with("previous:") && how.contains("truncated"),
        "{status}"
    );
    // Both copies garbage: the factory state, and the status says so.
    a.stop();
    std::fs::write(&st, b"garbage").unwrap();
    std::fs::write(
        d.path().join("state/state.prev"),
        b"cwmpd-state 1 00 3\nabc",
    )
    .unwrap();
    let a = Agent::start(&cfg);
    assert_eq!(a.get("Device.ManagementServer.Username"), "");
    let status = a.ctl(json!({"op": "status"}));
    assert!(
        status["state_loaded"]
            .as_str()
            .unwrap_or("")
            .starts_with("factory:"),
        "{status}"
    );
    use std::os::unix::fs::PermissionsExt;
    a.set("Device.ManagementServer.Username", "x");
    let mode = std::fs::metadata(&st).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let dmode = std::fs::metadata(d.path().join("state"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dmode, 0o700);
    let smode = std::fs::metadata(d.path().join("ctl.sock"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(smode, 0o600);
}

/// `[system] log_files` lists the device's logs in `Device.DeviceInfo.VendorLogFile.{i}`; a
/// file keeps its instance while it stays listed, a new one never takes a removed one's number.
#[test]
fn vendor_log_files_follow_the_configuration_with_stable_instances() {
    let d = TempDir::new("logfiles");
    let cfg = |files: &str| {
        write_config(
            d.path(),
            &format!("[system]\nenable = false\nlog_files = [{files}]\n"),
        )
    };
    let vlf = "Device.DeviceInfo.VendorLogFile.";
    let a = Agent::start(&cfg(
        "{ name = \"/var/log/messages\", max_size = 65536, persistent = true }, \
         { name = \"/var/log/cwmpd.log\" }",
    ));
    assert_eq!(a.get("Device.DeviceInfo.VendorLogFileNumberOfEntries"), "2");
    assert_eq!(a.get(&format!("{vlf}1.Name")), "/var/log/messages");
    assert_eq!(a.get(&format!("{vlf}1.MaximumSize")), "65536");
    assert_eq!(a.get(&format!("{vlf}1.Persistent")), "true");
    assert_eq!(a.get(&format!("{vlf}2.Name")), "/var/log/cwmpd.log");
    assert_eq!(a.get(&format!("{vlf}2.MaximumSize")), "0");
    assert_eq!(a.get(&format!("{vlf}2.Alias")), "cpe--var-log-cwmpd-log");
    a.stop();
    let a = Agent::start(&cfg(
        "{ name = \"/var/log/cwmpd.log\" }, { name = \"/var/log/boot.log\" }",
    ));
    assert_eq!(a.get("Device.DeviceInfo.VendorLogFileNumberOfEntries"), "2");
    let v = a.ctl(json!({"op": "get", "names": [format!("{vlf}1.")]}));
    assert_eq!(v["fault"]["code"], 9005, "{v}");
    assert_eq!(a.get(&format!("{vlf}2.Name")), "/var/log/cwmpd.log");
    assert_eq!(a.get(&format!("{vlf}3.Name")), "/var/log/boot.log");
}

#[test]
fn bad_configurations_are_refused_with_file_line_and_path() {
    let d = TempDir::new("badcfg");
    let cases: &[(&str, &str, &str)] = &[
        ("[agent]\nbogus = 1\n", ":2:", "bogus"),
        (
            "[parameters]\n\"Device.ManagementServer.NoSuch\" = \"x\"\n",
            ":2:",
            "Device.ManagementServer.NoSuch is not a parameter",
        ),
        (
            "\n[parameters]\n\"Device.ManagementServer.PeriodicInformInterval\" = \"soon\"\n",
            ":3:",
            "not an integer",
        ),
        (
            "[parameters]\n\"Device.ManagementServer.PeriodicInformInterval\" = 0\n",
            ":2:",
            "range",
        ),
        (
            "[parameters]\n\"Device.ManagementServer.PeriodicInformEnable\" = [true]\n",
            ":2:",
            "string, number or boolean",
        ),
        ("[agent]\nlog_level = \"loud\"\n", ":", "log_level"),
        (
            "[[provider]]\nprefix = \"Device.Nope.\"\ncommand = [\"x\"]\n",
            ":",
            "not an object",
        ),
        ("[agent\n", ":1:", ""),
        (
            "[system]\nlog_files = [{ name = \"/var/log/a\" }, { name = \"/var/log/a\" }]\n",
            ":2:",
            "unique name",
        ),
    ];
    for (i, (extra, line, msg)) in cases.iter().enumerate() {
        let sub = d.path().join(format!("c{i}"));
        std::fs::create_dir_all(&sub).unwrap();
        let cfg = write_config(&sub, "");
        // Put the case first so line numbers are the case's own.
        let base = std::fs::read_to_string(&cfg).unwrap();
        let text = if extra.starts_with("[agent]") {
            extra.to_string()
        } else {
            format!("{extra}{}", base)
        };
        std::fs::write(&cfg, &text).unwrap();
        let (code, _out, err) = cwmpd(&["check-config", cfg.to_str().unwrap()]);
        assert_ne!(code, 0, "case {i} accepted: {text}");
        assert!(
            err.contains(cfg.to_str().unwrap()),
            "case {i}: no file name in {err}"
        );
        assert!(err.contains(line), "case {i}: no line {line} in {err}");
        assert!(err.contains(msg), "case {i}: {err}");
        // The agent refuses to start on the same file.
        let (code, _, err2) = cwmpd(&["run", "-c", cfg.to_str().unwrap()]);
        assert_eq!(code, 2, "case {i}: {err2}");
    }
    // The shipped example configuration is valid (with the data model of this tree).
    let shipped = std::fs::read_to_string(manifest().join("packaging/cwmpd.toml")).unwrap();
    let shipped = shipped.replace(
        "datamodel = [\"/usr/share/cwmpd/datamodel\", \"/etc/cwmpd/datamodel.d\"]",
        &format!("datamodel = [\"{}/datamodel\"]", manifest().display()),
    );
    let p = d.path().join("shipped.toml");
    std::fs::write(&p, shipped).unwrap();
    let (code, out, err) = cwmpd(&["check-config", p.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
}

/// `[agent] kernel_cmdline`: `cwmpd.*` words of a kernel command line are factory values
/// and local settings over the file's; an unusable word stops the agent with the word named.
#[test]
fn kernel_command_line_sets_factory_values_and_refuses_bad_words() {
    let d = TempDir::new("kcmdline");
    let cmdline = d.path().join("cmdline");
    let cfg = write_config(
        d.path(),
        &format!(
            "kernel_cmdline = \"{}\"\n[parameters]\n\"Device.ManagementServer.URL\" = \"http://file.invalid/\"\n",
            cmdline.display()
        ),
    );
    std::fs::write(
        &cmdline,
        "console=ttyAMA0 rdinit=/init cwmpd.acs=http://10.0.2.2:7557/acs \
         cwmpd.param.Device.ManagementServer.ConnectionRequestUsername=\"stb 1\" \
         cwmpd.param.Device.ManagementServer.PeriodicInformInterval=600 quiet\n",
    )
    .unwrap();
    let (code, out, err) = cwmpd(&["check-config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let a = Agent::start(&cfg);
    assert_eq!(
        a.get("Device.ManagementServer.URL"),
        "http://10.0.2.2:7557/acs"
    );
    assert_eq!(
        a.get("Device.ManagementServer.ConnectionRequestUsername"),
        "stb 1"
    );
    assert_eq!(
        a.get("Device.ManagementServer.PeriodicInformInterval"),
        "600"
    );
    a.stop();

    for (line, msg) in [
        ("cwmpd.acss=http://x/", "unknown key cwmpd.acss"),
        ("cwmpd.acs", "no value"),
        (
            "cwmpd.param.Device.Nope.X=1",
            "not a parameter of the data model",
        ),
        (
            "cwmpd.param.Device.ManagementServer.PeriodicInformInterval=soon",
            "not an integer",
        ),
        ("cwmpd.external_port=http", "not a port number"),
    ] {
        std::fs::write(&cmdline, format!("console=ttyS0 {line}\n")).unwrap();
        for args in [
            vec!["check-config", cfg.to_str().unwrap()],
            vec!["run", "-c", cfg.to_str().unwrap()],
        ] {
            let (code, _out, err) = cwmpd(&args);
            assert_eq!(code, 2, "{line}: {err}");
            assert!(err.contains(cmdline.to_str().unwrap()), "{line}: {err}");
            assert!(err.contains(msg), "{line}: {err}");
        }
    }
}

#[test]
fn vendor_file_grows_the_model_without_rebuild() {
    let d = TempDir::new("vendor");
    let vdir = d.path().join("vendor");
    std::fs::create_dir_all(&vdir).unwrap();
    std::fs::copy(
        manifest().join("datamodel/examples/x-vendor.xml"),
        vdir.join("x-vendor.xml"),
    )
    .unwrap();
    let cfg = d.path().join("cwmpd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[agent]\nstate_dir = \"{0}/state\"\ndatamodel = [\"{1}/datamodel\", \"{0}/vendor\"]\ncontrol_socket = \"{0}/ctl.sock\"\n",
            d.path().display(),
            manifest().display()
        ),
    )
    .unwrap();
    let (code, out, err) = cwmpd(&["dump-model", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Device.X_00D09E_"), "{out}");
    assert!(
        out.contains("Device.ManagementServer.URL  string(2048) readWrite"),
        "{out}"
    );
}
