//! `cwmp-connreq`: sends connection requests to a CPE as an ACS does (for tests and field
//! checks), and runs a TR-111 STUN server. The work is done by the `cwmp_connreq` library; this
//! is its command line.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use cwmp_connreq::xmpp::{AcsClient, Answer, Jid};
use cwmp_connreq::{http, stunsrv, udp, xmpp};

const USAGE: &str = "\
usage:
  cwmp-connreq http URL --user U --password P [--count N] [--timeout SECS]
        GET URL, answer the Digest challenge on the same connection, GET again;
        prints the final status and the time from the first byte sent to the answer.
        Exit 0 when every request got 200 or 204, 1 otherwise.
  cwmp-connreq udp HOST:PORT --user U --password P [--copies N] [--from ADDR] [--via API-ADDR]
        sends one TR-111 UDP connection request (N identical copies, default 3) to the CPE's
        UDPConnectionRequestAddress: from an ephemeral socket (or --from ADDR), or with --via
        through a `stun-server` API, which sends it from its STUN socket (needed behind a
        port-restricted NAT; HOST:PORT may then also be `last` or a binding key).
        Prints the time taken. Exit 0 when sent.
  cwmp-connreq stun-server --listen ADDR [--api ADDR] [--user U --password P] [--max-seconds S]
                           [--quiet] [--redis redis://[:PASSWORD@]HOST:PORT --instance-id NAME
                           [--binding-ttl SECS]]
        a TR-111-aware STUN server (RFC 3489 and RFC 5389 Binding; with --user, short-term
        credentials: 401 first, then USERNAME + MESSAGE-INTEGRITY keyed with the password, either
        layout; --user '*': any USERNAME with that password, each CPE keyed by its own). Records each CPE's binding (by USERNAME, else by source address), logs
        CONNECTION-REQUEST-BINDING / BINDING-CHANGE on stdout, honours RESPONSE-ADDRESS only for
        the requester's own IP. The loopback HTTP API (--api) serves
          GET  /bindings                                   -> JSON
          POST /cr?to=IP:PORT|last|KEY&user=U&password=P[&copies=N]
               -> sends the UDP connection request from the STUN socket, JSON answer
        --quiet: no log line for a keep-alive that changes nothing.
        Cluster mode (--redis): N instances behind one name share a binding registry on Redis
        (per CPE key: public address, owning instance, last seen; TTL --binding-ttl, default
        45 s: a little above the CPEs' keep-alive period). POST /cr for a key at any instance
        is sent by the owner (routed over Redis pub/sub); the JSON `result` is sent (200),
        unknown_cpe (404), stale_binding (410), bad_request (400), busy or
        registry_unavailable (503). While Redis is down, an instance still sends the CR for a
        CPE it holds a fresh binding for (via local, registry unavailable).
        GET /cpe?key=KEY shows the registry record.
  cwmp-connreq xmpp --jid ACS-JID --password P --server HOST:PORT --to CPE-JID
                    --user U --cr-password P2 [--ca FILE] [--count N] [--timeout SECS]
        logs in as ACS-JID (STARTTLS, certificate checked against --ca or the Mozilla roots,
        SASL), sends N connectionRequest IQs (TR-069 Annex K) to CPE-JID one after the other
        and prints each answer (result, or the error condition) with its round-trip time.
        Exit 0 when every request got a result, 1 otherwise.";

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return if args.is_empty() {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        };
    }
    let cmd = args.remove(0);
    let r = match cmd.as_str() {
        "http" => http_cmd(args),
        "udp" => udp_cmd(args),
        "stun-server" => stun_server_cmd(args),
        "xmpp" => xmpp_cmd(args),
        other => Err(format!("unknown command {other:?}\n{USAGE}")),
    };
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("cwmp-connreq: {e}");
            ExitCode::from(2)
        }
    }
}

fn take_opt(args: &mut Vec<String>, long: &str) -> Result<Option<String>, String> {
    if let Some(i) = args.iter().position(|a| a == long) {
        if i + 1 >= args.len() {
            return Err(format!("{long} needs a value"));
        }
        let v = args.remove(i + 1);
        args.remove(i);
        return Ok(Some(v));
    }
    Ok(None)
}

fn take_flag(args: &mut Vec<String>, long: &str) -> bool {
    match args.iter().position(|a| a == long) {
        Some(i) => {
            args.remove(i);
            true
        }
        None => false,
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn http_cmd(mut args: Vec<String>) -> Result<bool, String> {
    let user = take_opt(&mut args, "--user")?.ok_or("--user is required")?;
    let pass = take_opt(&mut args, "--password")?.ok_or("--password is required")?;
    let count: u32 = match take_opt(&mut args, "--count")? {
        Some(c) => c.parse().map_err(|_| format!("bad --count {c:?}"))?,
        None => 1,
    };
    let timeout = match take_opt(&mut args, "--timeout")? {
        Some(t) => Duration::from_secs_f64(t.parse().map_err(|_| format!("bad --timeout {t:?}"))?),
        None => Duration::from_secs(10),
    };
    if args.len() != 1 {
        return Err(format!("http takes one URL\n{USAGE}"));
    }
    let target = http::parse_url(&args[0])?;
    runtime()?.block_on(async {
        let mut all_ok = true;
        for _ in 0..count {
            match tokio::time::timeout(timeout, http::request(&target, &user, &pass)).await {
                Ok(Ok(a)) => {
                    all_ok &= a.accepted();
                    println!("{} {} in {:.1} ms", a.status, a.reason, ms(a.took));
                }
                Ok(Err(e)) => {
                    all_ok = false;
                    println!("error: {e}");
                }
                Err(_) => {
                    all_ok = false;
                    println!("error: no answer within {} s", timeout.as_secs_f64());
                }
            }
        }
        Ok(all_ok)
    })
}

fn udp_cmd(mut args: Vec<String>) -> Result<bool, String> {
    let user = take_opt(&mut args, "--user")?.ok_or("--user is required")?;
    let pass = take_opt(&mut args, "--password")?.ok_or("--password is required")?;
    let copies: u32 = match take_opt(&mut args, "--copies")? {
        Some(c) => c.parse().map_err(|_| format!("bad --copies {c:?}"))?,
        None => 3,
    };
    let via = take_opt(&mut args, "--via")?;
    let from = take_opt(&mut args, "--from")?;
    if args.len() != 1 {
        return Err(format!("udp takes one HOST:PORT\n{USAGE}"));
    }
    let to = args.remove(0);
    runtime()?.block_on(async {
        let t0 = Instant::now();
        if let Some(api) = via {
            let a = stunsrv::request_cr(&api, &to, &user, &pass, copies).await?;
            println!("{} in {:.1} ms", a.body, ms(t0.elapsed()));
            return Ok(a.ok);
        }
        let s = udp::send(&to, from.as_deref(), &user, &pass, copies).await?;
        println!(
            "sent {copies} copies (id={}, {} bytes) to {} from {} in {:.1} ms",
            s.id,
            s.bytes,
            s.to,
            s.from,
            ms(t0.elapsed())
        );
        Ok(true)
    })
}

fn stun_server_cmd(mut args: Vec<String>) -> Result<bool, String> {
    let listen: SocketAddr = take_opt(&mut args, "--listen")?
        .ok_or("--listen is required")?
        .parse()
        .map_err(|e| format!("--listen: {e}"))?;
    let api: Option<SocketAddr> = match take_opt(&mut args, "--api")? {
        Some(a) => Some(a.parse().map_err(|e| format!("--api: {e}"))?),
        None => None,
    };
    if api.is_some_and(|a| !a.ip().is_loopback()) {
        return Err("--api must be a loopback address".into());
    }
    let user = take_opt(&mut args, "--user")?;
    let pass = take_opt(&mut args, "--password")?;
    let credentials = match (user, pass) {
        (Some(u), Some(p)) if !u.is_empty() => Some((u, p)),
        (None, None) => None,
        _ => return Err("--user and --password go together".into()),
    };
    let max_s: Option<f64> = match take_opt(&mut args, "--max-seconds")? {
        Some(v) => Some(v.parse().map_err(|_| format!("bad --max-seconds {v:?}"))?),
        None => None,
    };
    let quiet = take_flag(&mut args, "--quiet");
    let redis = take_opt(&mut args, "--redis")?;
    let instance = take_opt(&mut args, "--instance-id")?;
    let ttl = take_opt(&mut args, "--binding-ttl")?;
    if let Some(a) = args.first() {
        return Err(format!("unexpected argument {a:?}"));
    }
    let cluster = match (redis, instance) {
        (Some(r), Some(id)) => {
            if !stunsrv::valid_instance_id(&id) {
                return Err(format!(
                    "--instance-id {id:?}: want 1-64 of A-Z a-z 0-9 . _ -"
                ));
            }
            let ttl: u64 = match ttl {
                Some(t) => t
                    .parse()
                    .ok()
                    .filter(|t| (1..=86_400).contains(t))
                    .ok_or_else(|| format!("--binding-ttl {t:?}: want 1..86400 seconds"))?,
                None => 45,
            };
            Some(stunsrv::Cluster {
                redis: cwmp_connreq::resp::parse_url(&r)?,
                instance: id,
                ttl: Duration::from_secs(ttl),
            })
        }
        (None, None) if ttl.is_none() => None,
        _ => return Err("--redis and --instance-id go together (--binding-ttl with them)".into()),
    };
    let opts = stunsrv::Options {
        api,
        credentials,
        cluster,
        quiet,
        ..stunsrv::Options::new(listen)
    };
    stunsrv::run(opts, async move {
        match max_s {
            Some(s) => tokio::time::sleep(Duration::from_secs_f64(s)).await,
            None => std::future::pending().await,
        }
    })?;
    Ok(true)
}

fn xmpp_cmd(mut args: Vec<String>) -> Result<bool, String> {
    let need = |a: &mut Vec<String>, k: &str| -> Result<String, String> {
        take_opt(a, k)?.ok_or_else(|| format!("{k} is required"))
    };
    let jid = need(&mut args, "--jid")?;
    let password = need(&mut args, "--password")?;
    let server = need(&mut args, "--server")?;
    let to = need(&mut args, "--to")?;
    let user = need(&mut args, "--user")?;
    let cr_password = need(&mut args, "--cr-password")?;
    let ca = take_opt(&mut args, "--ca")?;
    let count: u32 = match take_opt(&mut args, "--count")? {
        Some(c) => c.parse().map_err(|_| format!("bad --count {c:?}"))?,
        None => 1,
    };
    let timeout = match take_opt(&mut args, "--timeout")? {
        Some(t) => Duration::from_secs_f64(t.parse().map_err(|_| format!("bad --timeout {t:?}"))?),
        None => Duration::from_secs(5),
    };
    if let Some(a) = args.first() {
        return Err(format!("unexpected argument {a:?}"));
    }
    let to = Jid::new(&to).map_err(|e| format!("--to: {e}"))?;
    let params = xmpp::connect_params(
        &jid,
        &password,
        &server,
        ca.as_deref().map(std::path::Path::new),
    )?;
    runtime()?.block_on(async move {
        let t0 = Instant::now();
        let mut c = AcsClient::login(&params).await?;
        eprintln!(
            "logged in as {} (TLS {}, SASL {}) in {:.1} ms",
            c.jid,
            c.tls,
            c.mechanism,
            ms(t0.elapsed())
        );
        let mut all_ok = true;
        let mut rtts = Vec::new();
        for _ in 0..count {
            let (answer, rtt) = c
                .connection_request(&to, &user, &cr_password, timeout)
                .await?;
            let rtt = ms(rtt);
            match answer {
                Answer::Result => {
                    println!("result rtt={rtt:.3}ms");
                    rtts.push(rtt);
                }
                Answer::Error(cond) => {
                    println!("error {cond} rtt={rtt:.3}ms");
                    all_ok = false;
                }
                Answer::Closed(why) => {
                    println!("closed: {why}");
                    return Ok(false);
                }
                Answer::Timeout => {
                    println!("timeout after {:.1} s", timeout.as_secs_f64());
                    all_ok = false;
                }
            }
        }
        if rtts.len() > 1 {
            rtts.sort_by(f64::total_cmp);
            println!(
                "results={} median={:.3}ms min={:.3}ms max={:.3}ms",
                rtts.len(),
                rtts[rtts.len() / 2],
                rtts[0],
                rtts[rtts.len() - 1]
            );
        }
        c.close().await;
        Ok(all_ok)
    })
}
