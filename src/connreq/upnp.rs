//! UPnP IGD port forward for the HTTP connection-request listener: SSDP discovery of the
//! gateway, its WANIPConnection (or WANPPPConnection) control URL, GetExternalIPAddress and
//! AddPortMapping (renewed before the lease ends). Only used when `[connreq] upnp = true`.
//!
//! The result is the public base URL `http://EXTERNAL-IP:PORT/` the engine publishes in
//! ConnectionRequestURL.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

const SSDP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(239, 255, 255, 250), 1900);
const SERVICES: &[&str] = &[
    "urn:schemas-upnp-org:service:WANIPConnection:2",
    "urn:schemas-upnp-org:service:WANIPConnection:1",
    "urn:schemas-upnp-org:service:WANPPPConnection:1",
];
/// Lease asked for the mapping; renewed at half of it.
pub const LEASE: Duration = Duration::from_secs(3600);
const MAX_DOC: usize = 64 * 1024;

/// A gateway found by SSDP: where to send control requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gateway {
    pub control: SocketAddr,
    pub control_path: String,
    pub service: String,
    /// Our address on the gateway's side (the InternalClient of mappings).
    pub local_ip: Ipv4Addr,
}

/// Finds the gateway by SSDP M-SEARCH from `local` (0.0.0.0 for any interface).
pub async fn discover(timeout: Duration) -> Result<Gateway, String> {
    let sock = UdpSocket::bind("0.0.0.0:0")
        .await
        .map_err(|e| format!("SSDP socket: {e}"))?;
    let _ = sock.set_multicast_ttl_v4(2);
    let search = "M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: \"ssdp:discover\"\r\nMX: 2\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\r\n";
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; 2048];
    let mut sent = 0;
    loop {
        if sent < 3 {
            sock.send_to(search.as_bytes(), SSDP)
                .await
                .map_err(|e| format!("SSDP send: {e}"))?;
            sent += 1;
        }
        let wait = Duration::from_millis(700).min(deadline - tokio::time::Instant::now());
        match tokio::time::timeout(wait, sock.recv_from(&mut buf)).await {
            Ok(Ok((n, _from))) => {
                let text = String::from_utf8_lossy(&buf[..n]);
                if let Some(loc) = header(&text, "location") {
                    let (addr, path) = split_url(&loc)?;
                    let desc = http(addr, "GET", &path, None, &[]).await?;
                    let (service, control_path) = find_service(&desc)
                        .ok_or("the gateway offers no WANIPConnection service")?;
                    let local_ip = local_ipv4_towards(addr)?;
                    return Ok(Gateway {
                        control: addr,
                        control_path,
                        service,
                        local_ip,
                    });
                }
            }
            Ok(Err(e)) => return Err(format!("SSDP receive: {e}")),
            Err(_) => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return Err("no UPnP gateway answered".into());
        }
    }
}

impl Gateway {
    pub async fn external_ip(&self) -> Result<String, String> {
        let body = self.call("GetExternalIPAddress", "").await?;
        element_text(&body, "NewExternalIPAddress")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| "GetExternalIPAddress gave no address".into())
    }

    /// Maps TCP `external` on the gateway to `internal` on this host.
    pub async fn add_port_mapping(&self, external: u16, internal: u16) -> Result<(), String> {
        let args = format!(
            "<NewRemoteHost></NewRemoteHost><NewExternalPort>{external}</NewExternalPort><NewProtocol>TCP</NewProtocol><NewInternalPort>{internal}</NewInternalPort><NewInternalClient>{}</NewInternalClient><NewEnabled>1</NewEnabled><NewPortMappingDescription>cwmpd connection requests</NewPortMappingDescription><NewLeaseDuration>{}</NewLeaseDuration>",
            self.local_ip,
            LEASE.as_secs()
        );
        self.call("AddPortMapping", &args).await.map(|_| ())
    }

    /// Removes the mapping of `external` (graceful shutdown).
    pub async fn delete_port_mapping(&self, external: u16) -> Result<(), String> {
        let args = format!(
            "<NewRemoteHost></NewRemoteHost><NewExternalPort>{external}</NewExternalPort><NewProtocol>TCP</NewProtocol>"
        );
        self.call("DeletePortMapping", &args).await.map(|_| ())
    }

    async fn call(&self, action: &str, args: &str) -> Result<String, String> {
        let body = format!(
            "<?xml version=\"1.0\"?><s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\" s:encodingStyle=\"http://schemas.xmlsoap.org/soap/encoding/\"><s:Body><u:{action} xmlns:u=\"{svc}\">{args}</u:{action}></s:Body></s:Envelope>",
            svc = self.service
        );
        let soap_action = format!("\"{}#{action}\"", self.service);
        let resp = http(
            self.control,
            "POST",
            &self.control_path,
            Some(&soap_action),
            body.as_bytes(),
        )
        .await?;
        if resp.contains("Fault>") || resp.contains(":Fault") {
            let code = element_text(&resp, "errorCode").unwrap_or_default();
            let desc = element_text(&resp, "errorDescription").unwrap_or_default();
            return Err(format!("{action} refused: {code} {desc}"));
        }
        Ok(resp)
    }
}

/// Local IPv4 address used to reach `to` (a UDP connect sends nothing).
fn local_ipv4_towards(to: SocketAddr) -> Result<Ipv4Addr, String> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    s.connect(to).map_err(|e| e.to_string())?;
    match s.local_addr().map_err(|e| e.to_string())?.ip() {
        std::net::IpAddr::V4(ip) => Ok(ip),
        _ => Err("no IPv4 route to the gateway".into()),
    }
}

fn header(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// `http://host:port/path` → (address, path); IPv4 literals only (what gateways announce).
fn split_url(url: &str) -> Result<(SocketAddr, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("unsupported LOCATION {url}"))?;
    let (auth, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr: SocketAddr = if auth.contains(':') {
        auth.parse().map_err(|_| format!("bad address in {url}"))?
    } else {
        format!("{auth}:80")
            .parse()
            .map_err(|_| format!("bad address in {url}"))?
    };
    Ok((addr, path.to_string()))
}

/// The first known WAN connection service and its control URL path in a description.
fn find_service(desc: &str) -> Option<(String, String)> {
    for svc in SERVICES {
        let mut rest = desc;
        while let Some(i) = rest.find("<service>") {
            let block_end = rest[i..].find("</service>").map(|j| i + j)?;
            let block = &rest[i..block_end];
            if element_text(block, "serviceType").as_deref() == Some(*svc) {
                let ctl = element_text(block, "controlURL")?;
                let path = if let Some(r) = ctl.strip_prefix("http://") {
                    r.find('/')
                        .map(|k| r[k..].to_string())
                        .unwrap_or("/".into())
                } else if ctl.starts_with('/') {
                    ctl
                } else {
                    format!("/{ctl}")
                };
                return Some((svc.to_string(), path));
            }
            rest = &rest[block_end..];
        }
    }
    None
}

fn element_text(doc: &str, name: &str) -> Option<String> {
    // Tolerates a namespace prefix on the element.
    let mut from = 0;
    while let Some(i) = doc[from..].find(name) {
        let at = from + i;
        let open_start = doc[..at].rfind('<')?;
        let tag = &doc[open_start + 1..at];
        let after = &doc[at + name.len()..];
        if (tag.is_empty() || tag.ends_with(':')) && !tag.starts_with('/') {
            let gt = after.find('>')?;
            if after[..gt].ends_with('/') {
                return Some(String::new());
            }
            let content = &after[gt + 1..];
            let end = content.find("</")?;
            return Some(content[..end].trim().to_string());
        }
        from = at + name.len();
    }
    None
}

/// A small HTTP/1.1 request with `Connection: close`; returns the body.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    soap_action: Option<&str>,
    body: &[u8],
) -> Result<String, String> {
    let io = async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Some(a) = soap_action {
            req.push_str(&format!(
                "Content-Type: text/xml; charset=\"utf-8\"\r\nSOAPAction: {a}\r\n"
            ));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        s.write_all(body).await.map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        (&mut s)
            .take(MAX_DOC as u64)
            .read_to_end(&mut out)
            .await
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or("malformed HTTP answer from the gateway")?;
        let status = head.split_whitespace().nth(1).unwrap_or("");
        if status != "200" && !body.contains("Fault") {
            return Err(format!("gateway answered HTTP {status}"));
        }
        Ok(body.to_string())
    };
    tokio::time::timeout(Duration::from_secs(5), io)
        .await
        .map_err(|_| format!("{addr}: no answer"))?
}

/// Keeps a port mapping on the gateway for the HTTP CR listener's `internal` port, reporting
/// the public base URL to the engine; retries with back-off when no gateway answers. When
/// `shutdown` turns true, the mapping is removed from the gateway (bounded) and the task ends.
pub async fn keep_mapping(
    external: u16,
    internal: u16,
    engine: tokio::sync::mpsc::Sender<crate::command::Command>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_secs(10);
    let mut published = String::new();
    let mut gateway: Option<Gateway> = None;
    loop {
        let attempt = async {
            let gw = discover(Duration::from_secs(3)).await?;
            let ip = gw.external_ip().await?;
            gw.add_port_mapping(external, internal).await?;
            Ok::<_, String>((format!("http://{ip}:{external}/"), gw))
        };
        let result = tokio::select! {
            r = attempt => r,
            _ = shutdown.wait_for(|s| *s) => Err(String::new()),
        };
        if *shutdown.borrow() {
            if let Some(gw) = &gateway {
                match tokio::time::timeout(Duration::from_secs(2), gw.delete_port_mapping(external))
                    .await
                {
                    Ok(Ok(())) => tracing::info!("UPnP port mapping {external} removed"),
                    Ok(Err(e)) => tracing::warn!("UPnP port mapping not removed: {e}"),
                    Err(_) => tracing::warn!("UPnP port mapping not removed: no answer"),
                }
            }
            return;
        }
        match result.map(|(base, gw)| {
            gateway = Some(gw);
            base
        }) {
            Ok(base) => {
                if base != published {
                    tracing::info!("UPnP port mapping in place: {base} -> local port {internal}");
                    published = base.clone();
                    if engine
                        .send(crate::command::Command::UpnpMapping(base))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                backoff = Duration::from_secs(10);
                tokio::select! {
                    _ = tokio::time::sleep(LEASE / 2) => {}
                    _ = shutdown.wait_for(|s| *s) => {}
                }
            }
            Err(e) => {
                tracing::warn!("UPnP port mapping failed: {e}; next try in {backoff:?}");
                if !published.is_empty() {
                    published.clear();
                    let _ = engine
                        .send(crate::command::Command::UpnpMapping(String::new()))
                        .await;
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.wait_for(|s| *s) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(600));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn description_and_soap_parsing() {
        let desc = "<root><device><serviceList><service><serviceType>urn:schemas-upnp-org:service:Layer3Forwarding:1</serviceType><controlURL>/L3F</controlURL></service><service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType><controlURL>/ctl/IPConn</controlURL></service></serviceList></device></root>";
        assert_eq!(
            find_service(desc),
            Some((
                "urn:schemas-upnp-org:service:WANIPConnection:1".into(),
                "/ctl/IPConn".into()
            ))
        );
        let resp = "<s:Envelope><s:Body><u:GetExternalIPAddressResponse><NewExternalIPAddress>203.0.113.9</NewExternalIPAddress></u:GetExternalIPAddressResponse></s:Body></s:Envelope>";
        assert_eq!(
            element_text(resp, "NewExternalIPAddress").as_deref(),
            Some("203.0.113.9")
        );
        assert_eq!(
            header(
                "HTTP/1.1 200 OK\r\nLOCATION: http://192.0.2.1:5000/rootDesc.xml\r\n",
                "location"
            )
            .as_deref(),
            Some("http://192.0.2.1:5000/rootDesc.xml")
        );
        assert_eq!(
            split_url("http://192.0.2.1:5000/rootDesc.xml").unwrap(),
            ("192.0.2.1:5000".parse().unwrap(), "/rootDesc.xml".into())
        );
    }
}
