//! `cwmpd demo`: the agent on loopback with a built-in demo configuration, driven through its
//! control socket the way STB middleware would, printing what happens.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::engine::{Command, Engine};

/// Where the data-model files are: `CWMPD_DATAMODEL`, `./datamodel`, the source tree, or the
/// installed location.
pub fn datamodel_dir() -> PathBuf {
    if let Ok(d) = std::env::var("CWMPD_DATAMODEL") {
        return PathBuf::from(d);
    }
    for c in [
        PathBuf::from("datamodel"),
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/datamodel")),
    ] {
        if c.join("00-device.xml").exists() {
            return c.canonicalize().unwrap_or(c);
        }
    }
    PathBuf::from("/usr/share/cwmpd/datamodel")
}

fn demo_config(dir: &Path) -> String {
    format!(
        r#"[agent]
state_dir = "{d}/state"
datamodel = ["{m}"]
control_socket = "{d}/ctl.sock"
log_level = "warn"

[connreq]
http_listen = ["127.0.0.1:0"]

[parameters]
"Device.DeviceInfo.Manufacturer" = "Demo STB Co"
"Device.DeviceInfo.ManufacturerOUI" = "00D09E"
"Device.DeviceInfo.ModelName" = "STB-Demo"
"Device.DeviceInfo.ProductClass" = "STB"
"Device.DeviceInfo.SerialNumber" = "DEMO0001"
"Device.ManagementServer.ConnectionRequestUsername" = "acs"
"Device.ManagementServer.ConnectionRequestPassword" = "demo-secret"
"Device.Services.STBService.1.Enable" = true
"Device.Services.STBService.1.Components.FrontEnd.1.X_00D09E_CurrentChannel" = "101"
"#,
        d = dir.display(),
        m = datamodel_dir().display()
    )
}

async fn ask(sock: &Path, req: Value) -> Value {
    let Ok(s) = tokio::net::UnixStream::connect(sock).await else {
        return json!({"ok": false, "error": "cannot connect"});
    };
    let (r, mut w) = s.into_split();
    let mut line = req.to_string();
    line.push('\n');
    if w.write_all(line.as_bytes()).await.is_err() {
        return json!({"ok": false});
    }
    let mut ans = String::new();
    let _ = BufReader::new(r).read_line(&mut ans).await;
    serde_json::from_str(&ans).unwrap_or(json!({"ok": false}))
}

fn show(title: &str, req: &Value, ans: &Value) {
    println!("\n== {title}");
    println!("   ctl> {req}");
    let text = ans.to_string();
    if text.len() > 600 {
        println!("   <-   {}...", &text[..600]);
    } else {
        println!("   <-   {text}");
    }
}

pub fn run(_args: Vec<String>) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("cwmpd-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let cfg_path = dir.join("cwmpd.toml");
    std::fs::write(&cfg_path, demo_config(&dir)).map_err(|e| e.to_string())?;
    let cfg = Config::load(&cfg_path).map_err(|e| e.to_string())?;
    crate::logging::init(&cfg.agent.log_level);
    println!("cwmpd demo: agent state and config in {}", dir.display());
    println!("data model from {}", datamodel_dir().display());

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let local = tokio::task::LocalSet::new();
    let result = local.block_on(&rt, async {
        let mut engine = Engine::new(cfg.clone()).map_err(|e| e.to_string())?;
        engine.start_providers();
        let (tx, rx) = mpsc::channel::<Command>(64);
        let l = crate::ctl::bind(&cfg.agent.control_socket).map_err(|e| e.to_string())?;
        tokio::task::spawn_local(crate::ctl::serve(l, tx.clone()));
        let task = tokio::task::spawn_local(engine.run(rx));
        let sock = cfg.agent.control_socket.clone();
        let steps: Vec<(&str, Value)> = vec![
            ("what the box is (the DeviceId of every Inform)", json!({"op": "get", "names": ["Device.DeviceInfo.Manufacturer", "Device.DeviceInfo.ManufacturerOUI", "Device.DeviceInfo.ProductClass", "Device.DeviceInfo.SerialNumber", "Device.DeviceInfo.UpTime"]})),
            ("the top level of the tree (GetParameterNames NextLevel=true)", json!({"op": "names", "path": "Device.", "next_level": true})),
            ("passwords read back empty", json!({"op": "get", "names": ["Device.ManagementServer.ConnectionRequestPassword"]})),
            ("the ACS will want to hear about channel changes: passive notification", json!({"op": "setattr", "name": "Device.Services.STBService.1.Components.FrontEnd.1.X_00D09E_CurrentChannel", "notification": 1})),
            ("the middleware changes channel", json!({"op": "set", "values": {"Device.Services.STBService.1.Components.FrontEnd.1.X_00D09E_CurrentChannel": "205"}})),
            ("queued for the next Inform", json!({"op": "changes"})),
            ("a set that breaks the rules is refused whole", json!({"op": "set", "values": {"Device.ManagementServer.PeriodicInformInterval": "0", "Device.ManagementServer.PeriodicInformEnable": "true"}})),
            ("add an XMPP connection (AddObject)", json!({"op": "add", "object": "Device.XMPP.Connection."})),
            ("status", json!({"op": "status"})),
        ];
        for (title, req) in steps {
            let ans = ask(&sock, req.clone()).await;
            show(title, &req, &ans);
        }
        let _ = tx.send(Command::Shutdown).await;
        let _ = task.await;
        Ok::<_, String>(())
    });
    let state = dir.join("state/state");
    if let Ok(meta) = std::fs::metadata(&state) {
        println!(
            "\nstate persisted: {} ({} bytes, mode 0600)",
            state.display(),
            meta.len()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    result
}
