//! `cwmpd`: the agent, and its local tools (check-config, dump-model, ctl, provider-check).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use cwmpd::config::Config;
use serde_json::{Value, json};

const DEFAULT_CONFIG: &str = "/etc/cwmpd/cwmpd.toml";

const USAGE: &str = "\
usage:
  cwmpd [run] [-c FILE]            run the agent (default config /etc/cwmpd/cwmpd.toml)
  cwmpd check-config FILE          validate a configuration and the data model it names
  cwmpd dump-model [-c FILE]       print the supported tree with types and access
  cwmpd ctl [-s SOCKET | -c FILE] OP [ARGS]
        get NAME...                values (a name ending in '.' is a subtree)
        set NAME=VALUE...          set values as the device (middleware) side
        add OBJECT.  |  delete OBJECT.N.
        names PATH [next]          parameter names (GetParameterNames)
        getattr NAME... | setattr NAME NOTIFICATION
        changes | poll | inform | status
  cwmpd provider-check [--prefix P] [--get PATH]... [--set PATH=VALUE]... [--timeout MS] -- CMD [ARGS]
                                   conformance test of a provider program (docs/PROVIDERS.md)
  cwmpd --version";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cwmpd: {e}");
            ExitCode::from(2)
        }
    }
}

fn take_opt(args: &mut Vec<String>, short: &str, long: &str) -> Result<Option<String>, String> {
    if let Some(i) = args.iter().position(|a| a == short || a == long) {
        if i + 1 >= args.len() {
            return Err(format!("{long} needs a value"));
        }
        let v = args.remove(i + 1);
        args.remove(i);
        return Ok(Some(v));
    }
    Ok(None)
}

fn run(mut args: Vec<String>) -> Result<ExitCode, String> {
    // Options after "--" belong to a command line (provider-check), not to cwmpd.
    let own = args.iter().position(|a| a == "--").unwrap_or(args.len());
    if args[..own].iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return Ok(ExitCode::SUCCESS);
    }
    if args[..own].iter().any(|a| a == "-V" || a == "--version") {
        println!("cwmpd {} ({})", env!("CARGO_PKG_VERSION"), built_features());
        return Ok(ExitCode::SUCCESS);
    }
    let cmd = if args.first().is_some_and(|a| !a.starts_with('-')) {
        args.remove(0)
    } else {
        "run".to_string()
    };
    if cmd != "run" {
        // Command-line tools end quietly when their output pipe closes (`| head`).
        // SAFETY: restoring the default disposition of SIGPIPE before any thread exists.
        unsafe {
            let _ = nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGPIPE,
                nix::sys::signal::SigHandler::SigDfl,
            );
        }
    }
    match cmd.as_str() {
        "run" => {
            let file =
                take_opt(&mut args, "-c", "--config")?.unwrap_or_else(|| DEFAULT_CONFIG.into());
            reject_extra(&args)?;
            run_agent(Path::new(&file))
        }
        "check-config" => {
            let file = match take_opt(&mut args, "-c", "--config")? {
                Some(f) => f,
                None if !args.is_empty() => args.remove(0),
                None => DEFAULT_CONFIG.to_string(),
            };
            reject_extra(&args)?;
            let cfg = Config::load(Path::new(&file)).map_err(|e| e.to_string())?;
            let store = cwmpd::engine::build_store(
                &cfg,
                Box::new(cwmpd::model::store::ProcfsLive::default()),
            )
            .map_err(|e| e.to_string())?;
            println!(
                "{file}: ok ({} parameters, {} objects defined; {} factory values)",
                store.schema().params.len(),
                store.schema().objects.len(),
                cfg.parameters.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        "dump-model" => {
            let dirs: Vec<PathBuf> = match take_opt(&mut args, "-c", "--config")? {
                Some(f) => {
                    Config::load(Path::new(&f))
                        .map_err(|e| e.to_string())?
                        .agent
                        .datamodel
                }
                None => match take_opt(&mut args, "-d", "--datamodel")? {
                    Some(d) => vec![PathBuf::from(d)],
                    None => {
                        Config::load(Path::new(DEFAULT_CONFIG))
                            .map_err(|e| e.to_string())?
                            .agent
                            .datamodel
                    }
                },
            };
            reject_extra(&args)?;
            let schema = cwmpd::model::Schema::load_dirs(&dirs).map_err(|e| e.to_string())?;
            dump_model(&schema);
            Ok(ExitCode::SUCCESS)
        }
        "ctl" => ctl(args),
        "provider-check" => provider_check(args),
        other => Err(format!("unknown command {other:?}\n{USAGE}")),
    }
}

/// `provider-check`: runs the conformance checks of cwmpd::provider::check and prints a report;
/// exit status 1 when a check failed.
fn provider_check(args: Vec<String>) -> Result<ExitCode, String> {
    use cwmpd::provider::check::{self, Verdict};
    let sep = args
        .iter()
        .position(|a| a == "--")
        .ok_or_else(|| format!("provider-check needs -- CMD [ARGS]\n{USAGE}"))?;
    let mut opts_args = args[..sep].to_vec();
    let argv = args[sep + 1..].to_vec();
    if argv.is_empty() {
        return Err(format!("provider-check needs a command after --\n{USAGE}"));
    }
    let prefix = take_opt(&mut opts_args, "-p", "--prefix")?.unwrap_or_else(|| "Device.".into());
    let mut opts = check::Options::new(argv, prefix);
    while let Some(g) = take_opt(&mut opts_args, "-g", "--get")? {
        opts.gets.push(g);
    }
    while let Some(s) = take_opt(&mut opts_args, "-s", "--set")? {
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| format!("--set takes PATH=VALUE, not {s:?}"))?;
        opts.sets.push((k.to_string(), v.to_string()));
    }
    if let Some(t) = take_opt(&mut opts_args, "-t", "--timeout")? {
        let ms: u64 = t
            .parse()
            .map_err(|_| format!("--timeout takes milliseconds, not {t:?}"))?;
        opts.timeout = std::time::Duration::from_millis(ms.max(1));
    }
    reject_extra(&opts_args)?;
    println!(
        "provider-check: {} (prefix {}, timeout {} ms)",
        opts.argv.join(" "),
        opts.prefix,
        opts.timeout.as_millis()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let summary = rt.block_on(check::run(&opts, &mut |o| {
        let v = match o.verdict {
            Verdict::Pass => "PASS",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
        };
        if o.check.chars().count() <= 34 {
            println!("{v}  {:<34} {}", o.check, o.detail);
        } else {
            println!("{v}  {}\n      {:<34} {}", o.check, "", o.detail);
        }
    }));
    let total = summary.passed + summary.warned + summary.failed;
    if summary.failed > 0 {
        println!(
            "RESULT: FAIL ({} of {total} checks failed, {} warnings)",
            summary.failed, summary.warned
        );
        Ok(ExitCode::from(1))
    } else {
        println!("RESULT: PASS ({total} checks, {} warnings)", summary.warned);
        Ok(ExitCode::SUCCESS)
    }
}

fn reject_extra(args: &[String]) -> Result<(), String> {
    if let Some(a) = args.first() {
        return Err(format!("unexpected argument {a:?}\n{USAGE}"));
    }
    Ok(())
}

fn dump_model(schema: &cwmpd::model::Schema) {
    use std::fmt::Write as _;
    use std::io::Write as _;
    let mut out = String::new();
    for o in &schema.objects {
        let kind = if o.multi {
            let max = o
                .max_entries
                .map(|m| m.to_string())
                .unwrap_or_else(|| "unbounded".into());
            format!(
                "object table [{}..{max}]{}",
                o.min_entries,
                if o.writable { " add/delete" } else { "" }
            )
        } else {
            "object".to_string()
        };
        let _ = writeln!(out, "{}  {kind}", o.path);
        for &p in &o.params {
            let p = &schema.params[p];
            let mut flags = Vec::new();
            if p.forced_inform {
                flags.push("forcedInform");
            }
            if p.syntax.hidden {
                flags.push("hidden");
            }
            match p.active_notify {
                cwmpd::model::schema::ActiveNotify::ForceEnabled => {
                    flags.push("activeNotify=forceEnabled")
                }
                cwmpd::model::schema::ActiveNotify::ForceDefaultEnabled => {
                    flags.push("activeNotify=forceDefaultEnabled")
                }
                cwmpd::model::schema::ActiveNotify::CanDeny => flags.push("activeNotify=canDeny"),
                _ => {}
            }
            let _ = writeln!(
                out,
                "{}  {} {}{}{}",
                p.path,
                p.syntax.describe(),
                p.access.name(),
                p.default
                    .as_ref()
                    .map(|d| format!(" default={d:?}"))
                    .unwrap_or_default(),
                if flags.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", flags.join(","))
                }
            );
        }
    }
    // A closed pipe (`| head`) is not an error worth a panic.
    let _ = std::io::stdout().write_all(out.as_bytes());
}

fn ctl(mut args: Vec<String>) -> Result<ExitCode, String> {
    let sock = match take_opt(&mut args, "-s", "--socket")? {
        Some(s) => PathBuf::from(s),
        None => {
            let f = take_opt(&mut args, "-c", "--config")?.unwrap_or_else(|| DEFAULT_CONFIG.into());
            Config::load(Path::new(&f))
                .map_err(|e| e.to_string())?
                .agent
                .control_socket
        }
    };
    if args.is_empty() {
        return Err(format!("ctl needs an operation\n{USAGE}"));
    }
    let op = args.remove(0);
    let req: Value = match op.as_str() {
        "get" => json!({"op": "get", "names": args}),
        "getattr" => json!({"op": "getattr", "names": args}),
        "set" => {
            let mut m = serde_json::Map::new();
            for a in &args {
                let (k, v) = a
                    .split_once('=')
                    .ok_or_else(|| format!("set takes NAME=VALUE, not {a:?}"))?;
                m.insert(k.to_string(), Value::String(v.to_string()));
            }
            json!({"op": "set", "values": m})
        }
        "add" | "delete" => json!({"op": op, "object": args.first().cloned().unwrap_or_default()}),
        "names" => json!({"op": "names", "path": args.first().cloned().unwrap_or_default(),
            "next_level": args.get(1).is_some_and(|a| a == "next" || a == "true")}),
        "setattr" => {
            let n: u64 = args
                .get(1)
                .and_then(|v| v.parse().ok())
                .ok_or("setattr NAME NOTIFICATION")?;
            json!({"op": "setattr", "name": args.first().cloned().unwrap_or_default(), "notification": n})
        }
        "du-install" => json!({"op": op, "file": args.first().cloned().unwrap_or_default(),
            "env": args.get(1).cloned().unwrap_or_default()}),
        "du-update" => json!({"op": op, "uuid": args.first().cloned().unwrap_or_default(),
            "file": args.get(1).cloned().unwrap_or_default()}),
        "du-uninstall" => json!({"op": op, "uuid": args.first().cloned().unwrap_or_default()}),
        "du-result" => json!({"op": op,
            "job": args.first().and_then(|j| j.parse::<u64>().ok()).ok_or("du-result JOB")?}),
        "changes" | "poll" | "inform" | "status" => json!({"op": op}),
        other => return Err(format!("unknown ctl operation {other:?}")),
    };
    let ans = cwmpd::ctl::request(&sock, &req).map_err(|e| format!("{}: {e}", sock.display()))?;
    print_answer(&op, &ans);
    Ok(if ans.get("ok") == Some(&Value::Bool(true)) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_answer(op: &str, ans: &Value) {
    if ans.get("ok") != Some(&Value::Bool(true)) {
        if let Some(f) = ans.get("fault") {
            eprintln!(
                "fault {}: {}",
                f["code"],
                f["message"].as_str().unwrap_or("")
            );
            if let Some(Value::Array(list)) = ans.get("faults") {
                for f in list {
                    eprintln!(
                        "  {} fault {}: {}",
                        f["name"].as_str().unwrap_or(""),
                        f["code"],
                        f["message"].as_str().unwrap_or("")
                    );
                }
            }
        } else {
            eprintln!(
                "error: {}",
                ans.get("error").and_then(Value::as_str).unwrap_or("failed")
            );
        }
        return;
    }
    match op {
        "get" => {
            for v in ans["values"].as_array().into_iter().flatten() {
                println!(
                    "{} = {}",
                    v["name"].as_str().unwrap_or(""),
                    v["value"].as_str().unwrap_or("")
                );
            }
        }
        "names" => {
            for v in ans["names"].as_array().into_iter().flatten() {
                println!(
                    "{} {}",
                    v["name"].as_str().unwrap_or(""),
                    if v["writable"] == Value::Bool(true) {
                        "W"
                    } else {
                        "R"
                    }
                );
            }
        }
        "add" => println!("{}", ans["instance"]),
        "changes" => {
            for v in ans["changes"].as_array().into_iter().flatten() {
                println!(
                    "{} = {}",
                    v["name"].as_str().unwrap_or(""),
                    v["value"].as_str().unwrap_or("")
                );
            }
        }
        "getattr" => {
            for v in ans["attributes"].as_array().into_iter().flatten() {
                println!(
                    "{} notification={}",
                    v["name"].as_str().unwrap_or(""),
                    v["notification"]
                );
            }
        }
        "set" | "delete" | "setattr" | "poll" => {}
        _ => println!("{ans}"),
    }
}

fn run_agent(file: &Path) -> Result<ExitCode, String> {
    let cfg = Config::load(file).map_err(|e| e.to_string())?;
    cwmpd::logging::init(&cfg.agent.log_level);
    cwmpd::agent::run(cfg, cwmpd::util::signals::wait_for_shutdown()).map_err(|e| e.to_string())?;
    Ok(ExitCode::SUCCESS)
}

/// The connection-request mechanisms and optional parts this binary was built with
/// (`--version`).
fn built_features() -> String {
    let mut v = vec!["http"];
    if cfg!(feature = "stun") {
        v.push("stun");
    }
    if cfg!(feature = "upnp") {
        v.push("upnp");
    }
    if cfg!(feature = "xmpp") {
        v.push("xmpp");
    }
    if cfg!(feature = "diagnostics") {
        v.push("diagnostics");
    }
    if cfg!(feature = "software-modules") {
        v.push("software-modules");
    }
    if cfg!(feature = "bulkdata") {
        v.push("bulkdata");
    }
    if cfg!(feature = "cwmp14") {
        v.push("cwmp14");
    }
    if cfg!(feature = "lightweight-notif") {
        v.push("lightweight-notif");
    }
    v.join(" ")
}
