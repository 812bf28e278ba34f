//! XMPP connection requests (TR-069 Annex K): log in as the ACS's JID with the agent's own
//! client (STARTTLS, the certificate checked against a CA file or the Mozilla roots, SASL) and
//! send `connectionRequest` IQs to the CPE's JID (its ConnReqJabberID).

use std::path::Path;
use std::time::{Duration, Instant};

pub use cwmpd::connreq::xmpp::Jid;
use cwmpd::connreq::xmpp::wire;
use cwmpd::connreq::xmpp::{self, ConnectParams, Target};

/// How the CPE answered one connection-request IQ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// An IQ result: the CPE accepted the request and opens a session.
    Result,
    /// An IQ error with its defined condition (`not-authorized`, `service-unavailable`, …).
    Error(String),
    /// No answer within the timeout.
    Timeout,
    /// The stream ended (why); the client cannot send more.
    Closed(String),
}

/// An ACS's logged-in XMPP client.
pub struct AcsClient {
    conn: xmpp::Connection,
    /// The full JID the server bound.
    pub jid: String,
    /// The stream is TLS-protected.
    pub tls: bool,
    /// The SASL mechanism used.
    pub mechanism: String,
}

/// Checks the arguments of [`AcsClient::login`] without connecting: `jid` (the ACS's JID, with
/// or without resource), `server` (`HOST:PORT`), `ca` (PEM file; `None`: the Mozilla roots).
pub fn connect_params(
    jid: &str,
    password: &str,
    server: &str,
    ca: Option<&Path>,
) -> Result<ConnectParams, String> {
    let jid = Jid::new(jid).map_err(|e| format!("--jid: {e}"))?;
    let (host, port) = server
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.trim_matches(['[', ']']).to_string(), p.parse().ok()?)))
        .ok_or_else(|| format!("--server {server:?}: HOST:PORT expected"))?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = xmpp::tls_config(ca)?;
    Ok(ConnectParams {
        jid: jid.to_bare(),
        password: password.to_string(),
        resource: jid.resource().map(|r| r.to_string()),
        target: Target::Host(host, port),
        require_tls: true,
        tls,
        keepalive: Duration::from_secs(300),
    })
}

impl AcsClient {
    /// Connects and logs in (TLS required), within the agent's connect timeout.
    pub async fn login(params: &ConnectParams) -> Result<AcsClient, String> {
        let conn = tokio::time::timeout(xmpp::CONNECT_TIMEOUT, xmpp::connect(params))
            .await
            .map_err(|_| "login timed out".to_string())?
            .map_err(|e| e.to_string())?;
        Ok(AcsClient {
            jid: conn.jid.to_string(),
            tls: conn.tls,
            mechanism: conn.mechanism.clone(),
            conn,
        })
    }

    /// Sends one connectionRequest IQ to `to` with the CPE's ConnectionRequestUsername /
    /// Password and waits up to `timeout` for its answer. Returns the answer and the round-trip
    /// time; an error only when the IQ could not be sent.
    pub async fn connection_request(
        &mut self,
        to: &Jid,
        user: &str,
        pass: &str,
        timeout: Duration,
    ) -> Result<(Answer, Duration), String> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("cr-{}-{n}", std::process::id());
        let to = to.to_string();
        let iq = wire::iq_request(
            "get",
            &id,
            Some(&to),
            xmpp::connection_request_element(user, pass),
        );
        let t = Instant::now();
        self.conn
            .send(&iq)
            .await
            .map_err(|e| format!("send: {e}"))?;
        let answer = tokio::time::timeout(timeout, async {
            loop {
                match self.conn.recv().await {
                    xmpp::Received::Stanza(st)
                        if st.is("iq", wire::NS_CLIENT) && st.attr("id") == Some(id.as_str()) =>
                    {
                        match st.attr("type") {
                            Some("result") => return Answer::Result,
                            Some("error") => {
                                let cond =
                                    wire::error_condition(&st).unwrap_or("undefined-condition");
                                return Answer::Error(cond.to_string());
                            }
                            _ => {}
                        }
                    }
                    xmpp::Received::Closed(why) => return Answer::Closed(why),
                    _ => {}
                }
            }
        })
        .await
        .unwrap_or(Answer::Timeout);
        Ok((answer, t.elapsed()))
    }

    /// Closes the stream politely (bounded).
    pub async fn close(self) {
        self.conn.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_params_from_arguments() {
        let p = connect_params("ACS@D.test/r1", "pw", "[::1]:5222", None).unwrap();
        assert_eq!(p.jid.to_string(), "acs@d.test");
        assert_eq!(p.resource.as_deref(), Some("r1"));
        assert_eq!(p.target, Target::Host("::1".into(), 5222));
        assert!(p.require_tls);
        assert!(connect_params("@@", "pw", "h:1", None).is_err());
        assert!(connect_params("a@d", "pw", "h", None).is_err());
    }
}
