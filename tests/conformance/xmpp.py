"""The ACS side of TR-069 Annex K with the standard library only: a minimal XMPP client
(RFC 6120: STARTTLS with the server certificate checked against a CA file, SASL PLAIN over TLS,
resource binding) that sends the connectionRequest IQ, and a throw-away Prosody server (own CA,
config, port and data; started and stopped by PID)."""

import base64
import os
import pathlib
import socket
import ssl
import subprocess
import time
import xml.etree.ElementTree as ET

from acs import xml_escape

STREAM_NS = "http://etherx.jabber.org/streams"
TLS_NS = "urn:ietf:params:xml:ns:xmpp-tls"
SASL_NS = "urn:ietf:params:xml:ns:xmpp-sasl"
BIND_NS = "urn:ietf:params:xml:ns:xmpp-bind"
STANZA_NS = "urn:ietf:params:xml:ns:xmpp-stanzas"
CONNREQ_NS = "urn:broadband-forum-org:cwmp:xmppConnReq-1-0"


class XmppError(Exception):
    pass


class XmppClient:
    """One client stream. Use: c = XmppClient(...); c.login(); c.connection_request(...)."""

    def __init__(self, host, port, domain, user, password, ca_file, resource="acs",
                 timeout=10.0):
        self.domain = domain
        self.user = user
        self.password = password
        self.resource = resource
        self.ca_file = ca_file
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.jid = None
        self._seq = 0

    # --- stream handling -------------------------------------------------------------------
    def _open_stream(self):
        self.parser = ET.XMLPullParser(events=("start", "end"))
        self.depth = 0
        self.pending = []
        self.sock.sendall(
            (f"<?xml version='1.0'?><stream:stream to='{self.domain}' version='1.0' "
             f"xmlns='jabber:client' xmlns:stream='{STREAM_NS}'>").encode())

    def _next(self):
        """The next complete top-level element of the stream (bounded by the timeout)."""
        deadline = time.monotonic() + self.timeout
        while not self.pending:
            if time.monotonic() > deadline:
                raise XmppError("timeout waiting for the server")
            data = self.sock.recv(65536)
            if not data:
                raise XmppError("stream closed by the server")
            self.parser.feed(data)
            for ev, el in self.parser.read_events():
                if ev == "start":
                    self.depth += 1
                else:
                    self.depth -= 1
                    if self.depth == 1:
                        self.pending.append(el)
        return self.pending.pop(0)

    def _expect(self, tag):
        el = self._next()
        if el.tag != tag:
            raise XmppError(f"expected {tag}, got {el.tag}: {ET.tostring(el)[:300]!r}")
        return el

    def login(self):
        self._open_stream()
        feats = self._expect(f"{{{STREAM_NS}}}features")
        if feats.find(f"{{{TLS_NS}}}starttls") is None:
            raise XmppError("server offers no STARTTLS")
        self.sock.sendall(f"<starttls xmlns='{TLS_NS}'/>".encode())
        self._expect(f"{{{TLS_NS}}}proceed")
        ctx = ssl.create_default_context(cafile=self.ca_file)
        self.sock = ctx.wrap_socket(self.sock, server_hostname=self.domain)
        self._open_stream()
        feats = self._expect(f"{{{STREAM_NS}}}features")
        mechs = [m.text for m in feats.iter(f"{{{SASL_NS}}}mechanism")]
        if "PLAIN" not in mechs:
            raise XmppError(f"no SASL PLAIN offered: {mechs}")
        token = base64.b64encode(f"\0{self.user}\0{self.password}".encode()).decode()
        self.sock.sendall(f"<auth xmlns='{SASL_NS}' mechanism='PLAIN'>{token}</auth>".encode())
        self._expect(f"{{{SASL_NS}}}success")
        self._open_stream()
        self._expect(f"{{{STREAM_NS}}}features")
        self.sock.sendall(
            (f"<iq type='set' id='bind1'><bind xmlns='{BIND_NS}'><resource>{self.resource}"
             f"</resource></bind></iq>").encode())
        res = self._iq_result("bind1")
        self.jid = res.findtext(f"{{{BIND_NS}}}bind/{{{BIND_NS}}}jid")
        return self.jid

    def _iq_result(self, iq_id):
        while True:
            el = self._next()
            if el.tag == "{jabber:client}iq" and el.get("id") == iq_id:
                if el.get("type") == "error":
                    raise XmppError(f"iq {iq_id} error: {ET.tostring(el)!r}")
                return el

    def connection_request(self, to, username, password):
        """Sends the Annex K connectionRequest IQ (type get); returns (type, error condition
        or None, the reply element)."""
        self._seq += 1
        iq_id = f"cr{self._seq}-{os.urandom(4).hex()}"
        self.sock.sendall(
            (f"<iq type='get' id='{iq_id}' to='{to}'><connectionRequest xmlns='{CONNREQ_NS}'>"
             f"<username>{xml_escape(username)}</username>"
             f"<password>{xml_escape(password)}</password></connectionRequest></iq>").encode())
        while True:
            el = self._next()
            if el.tag == "{jabber:client}iq" and el.get("id") == iq_id:
                cond = None
                err = el.find("{jabber:client}error")
                if err is not None:
                    for c in err:
                        if c.tag.startswith(f"{{{STANZA_NS}}}"):
                            cond = c.tag.split("}", 1)[1]
                            break
                return el.get("type"), cond, el

    def close(self):
        try:
            self.sock.sendall(b"</stream:stream>")
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass


class Prosody:
    """A Prosody server for domain `domain` on a free loopback port, in `workdir`."""

    def __init__(self, workdir, domain, users, spawn, stop_process, free_port):
        self.dir = pathlib.Path(workdir)
        self.domain = domain
        self._spawn = spawn
        self._stop = stop_process
        self.proc = None
        certs = self.dir / "certs"
        (self.dir / "data").mkdir(parents=True, exist_ok=True)
        certs.mkdir(parents=True, exist_ok=True)
        self._run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                   "ec_paramgen_curve:P-256", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
                   "-days", "2", "-subj", "/CN=conformance test CA",
                   "-addext", "basicConstraints=critical,CA:TRUE",
                   "-addext", "keyUsage=critical,keyCertSign,cRLSign"], certs)
        (certs / "ext.cnf").write_text(
            f"subjectAltName=DNS:{domain}\nextendedKeyUsage=serverAuth\n"
            "basicConstraints=CA:FALSE\n")
        self._run(["openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                   "-nodes", "-keyout", f"{domain}.key", "-out", "server.csr",
                   "-subj", f"/CN={domain}"], certs)
        self._run(["openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.crt",
                   "-CAkey", "ca.key", "-CAcreateserial", "-out", f"{domain}.crt",
                   "-days", "2", "-extfile", "ext.cnf"], certs)
        self.ca = certs / "ca.crt"
        self.port = free_port()
        root = os.geteuid() == 0
        d = self.dir
        self.cfg = d / "prosody.cfg.lua"
        self.cfg.write_text(f'''pidfile = "{d}/prosody.pid"
data_path = "{d}/data"
{"run_as_root = true" if root else ""}
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {self.port} }}
c2s_direct_tls_ports = {{ }}
s2s_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}
modules_enabled = {{ "roster", "saslauth", "tls", "disco", "ping", "posix" }}
modules_disabled = {{ "s2s" }}
c2s_require_encryption = true
authentication = "internal_hashed"
storage = "internal"
log = {{ info = "{d}/prosody.log" }}
certificates = "{d}/certs"
VirtualHost "{domain}"
  ssl = {{ certificate = "{d}/certs/{domain}.crt"; key = "{d}/certs/{domain}.key"; }}
''')
        for u, pw in users.items():
            self._run(["prosodyctl", "--config", str(self.cfg), "register", u, domain, pw],
                      self.dir)

    def _run(self, argv, cwd):
        out = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise AssertionError(f"{' '.join(argv)}: {out.stdout}{out.stderr}")

    def start(self):
        log = open(self.dir / "stdout.log", "ab")
        try:
            self.proc = self._spawn(["prosody", "--config", str(self.cfg), "-F"],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        finally:
            log.close()
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"prosody did not start: {self.log()}")
            time.sleep(0.02)

    def stop(self):
        if self.proc is not None:
            self._stop(self.proc)
            self.proc = None

    def log(self):
        out = ""
        for f in ("prosody.log", "stdout.log"):
            try:
                out += (self.dir / f).read_text(errors="replace")[-3000:]
            except OSError:
                pass
        return out
