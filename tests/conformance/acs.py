"""A scriptable TR-069 ACS written with the Python standard library only.

It shares nothing with the agent's SOAP code: messages are parsed with ElementTree by namespace
URI, and the ACS's own requests are written by hand, as XML text, in each test. The ACS

* accepts the CPE's HTTP POSTs on keep-alive connections (one thread per connection), with an
  optional HTTP Basic or Digest challenge, sets a session cookie and records whether the CPE
  returns it;
* decodes gzip/deflate request bodies, and answers gzip-compressed when the session's plan asks;
* answers the Inform with an InformResponse (MaxEnvelopes 1) in the cwmp namespace the CPE used
  (or the one the plan chooses), optionally with HoldRequests, or with an HTTP error status;
* answers the CPE's own requests (TransferComplete, GetRPCMethods, ...) on its own;
* otherwise sends the session's script of requests, one per HTTP response, and ends the session
  with an empty 204 when the script is done;
* records every CPE message (raw and decoded body, headers, connection, parsed envelope) and
  every envelope it sent, per session;
* serves files by GET (for Download).

A session starts with each Inform; later messages belong to the session of their connection (or
of their cookie).
"""

import base64
import gzip
import hashlib
import http.server
import os
import re
import socket
import socketserver
import threading
import time
import xml.etree.ElementTree as ET
import zlib

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP_ENC = "http://schemas.xmlsoap.org/soap/encoding/"
XSD = "http://www.w3.org/2001/XMLSchema"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
CWMP = {
    "1-0": "urn:dslforum-org:cwmp-1-0",
    "1-1": "urn:dslforum-org:cwmp-1-1",
    "1-2": "urn:dslforum-org:cwmp-1-2",
    # Not schema namespaces (1.3 and 1.4 extend cwmp-1-2), but some agents emit them.
    "1-3": "urn:dslforum-org:cwmp-1-3",
    "1-4": "urn:dslforum-org:cwmp-1-4",
}
CWMP_URIS = {uri: v for v, uri in CWMP.items()}

# Requests a CPE may send to the ACS, and the ACS's answer body (cwmp: prefix bound per session).
CPE_REQUESTS = {
    "TransferComplete": "<cwmp:TransferCompleteResponse/>",
    "AutonomousTransferComplete": "<cwmp:AutonomousTransferCompleteResponse/>",
    "GetRPCMethods": (
        '<cwmp:GetRPCMethodsResponse><MethodList soap-enc:arrayType="xsd:string[4]">'
        "<string>Inform</string><string>GetRPCMethods</string><string>TransferComplete</string>"
        "<string>AutonomousTransferComplete</string></MethodList></cwmp:GetRPCMethodsResponse>"
    ),
    "Kicked": None,
    "RequestDownload": None,
    "DUStateChangeComplete": None,
    "AutonomousDUStateChangeComplete": None,
}


def local(tag):
    """Local name of an ElementTree tag ('{ns}name' -> 'name')."""
    return tag.rsplit("}", 1)[-1]


def nsuri(tag):
    return tag[1:].split("}", 1)[0] if tag.startswith("{") else ""


def text_of(elem, name, default=None):
    """Text of the unqualified child `name` of `elem` ('' for an empty element)."""
    if elem is None:
        return default
    c = elem.find(name)
    if c is None:
        return default
    return c.text or ""


def xml_escape(s):
    return (
        str(s)
        .replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
    )


def envelope(ns_uri, body, id=None, hold=None, headers=""):
    """A SOAP envelope as the ACS writes it: prefixes soap-env, soap-enc, xsd, xsi, cwmp."""
    hdr = ""
    if id is not None:
        hdr += f'<cwmp:ID soap-env:mustUnderstand="1">{xml_escape(id)}</cwmp:ID>'
    if hold is not None:
        hdr += (
            '<cwmp:HoldRequests soap-env:mustUnderstand="1">'
            f'{"true" if hold else "false"}</cwmp:HoldRequests>'
        )
    hdr += headers
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<soap-env:Envelope xmlns:soap-env="{SOAP_ENV}" xmlns:soap-enc="{SOAP_ENC}" '
        f'xmlns:xsd="{XSD}" xmlns:xsi="{XSI}" xmlns:cwmp="{ns_uri}">'
        + (f"<soap-env:Header>{hdr}</soap-env:Header>" if hdr else "")
        + f"<soap-env:Body>{body}</soap-env:Body></soap-env:Envelope>"
    )


class Req:
    """One ACS request of a script.

    body: the RPC element as XML text, with the prefix `cwmp:` for the session's namespace
    (plus soap-env/soap-enc/xsd/xsi), e.g. '<cwmp:GetRPCMethods/>'.
    id: the cwmp:ID header (default: a unique one); None-able with id=False (no ID header).
    hold: HoldRequests header value (None: no header).
    headers: extra header elements, as XML text.
    envelope: a complete envelope text instead of body/id/hold/headers (sent as is).
    ns: namespace version for this request ('1-0', ...); default: the session's.
    valid: False when the request is deliberately not schema-valid (skips the ACS self-check).
    """

    def __init__(self, body="", id=None, hold=None, headers="", envelope=None, ns=None,
                 valid=True):
        self.body = body
        self.id = id
        self.hold = hold
        self.headers = headers
        self.envelope = envelope
        self.ns = ns
        self.valid = valid


class End:
    """Ends the session early (an empty HTTP response) with `status` (204 or 200)."""

    def __init__(self, status=204):
        self.status = status


class Plan:
    """What the ACS does in one session.

    script: list of Req, str (a body for Req), End, or callables f(session) returning one of
        those or None (skipped); consumed in order, one per empty POST / CPE response.
    inform_status: HTTP status for the Inform (not 200: the session fails, empty body).
    hold: HoldRequests header of the InformResponse (None: absent).
    ns: the cwmp namespace version to answer in ('1-0'...); default: the one the CPE used.
    gzip: True: compress every ACS body; 'mirror': compress when the CPE's request was
        compressed; False: never.
    end_status: 204 (default) or 200 (empty body) to end the session.
    inform_headers: extra XML header elements of the InformResponse.
    on_inform: a callable f(session) run when the Inform arrived, before it is answered
        (while the CPE waits for the InformResponse).
    cpe_request_answers: {method: body} overriding the ACS's answer to a CPE request
        (None: fault 8000).
    """

    def __init__(self, script=(), inform_status=200, hold=None, ns=None, gzip=False,
                 end_status=204, inform_headers="", cpe_request_answers=None, on_inform=None):
        self.script = list(script)
        self.inform_status = inform_status
        self.hold = hold
        self.ns = ns
        self.gzip = gzip
        self.end_status = end_status
        self.inform_headers = inform_headers
        self.cpe_request_answers = dict(cpe_request_answers or {})
        self.on_inform = on_inform


class Fault:
    """A SOAP fault sent by the CPE (soap-env:Fault with detail/cwmp:Fault)."""

    def __init__(self, elem, cwmp_uri):
        self.faultcode = text_of(elem, "faultcode")
        self.faultstring = text_of(elem, "faultstring")
        detail = elem.find("detail")
        self.detail = detail
        cf = None
        if detail is not None:
            for c in detail:
                if local(c.tag) == "Fault":
                    cf = c
                    break
        self.cwmp_fault = cf
        self.cwmp_ns = nsuri(cf.tag) if cf is not None else None
        code = text_of(cf, "FaultCode")
        self.code = int(code) if code and code.strip().isdigit() else None
        self.string = text_of(cf, "FaultString")
        self.spv_faults = []
        if cf is not None:
            for s in cf.findall("SetParameterValuesFault"):
                c = text_of(s, "FaultCode")
                self.spv_faults.append(
                    (text_of(s, "ParameterName"), int(c) if c and c.isdigit() else c,
                     text_of(s, "FaultString")))

    def __repr__(self):
        return (f"Fault({self.faultcode!r}, {self.code}, {self.string!r}, "
                f"spv={self.spv_faults})")


class Message:
    """One HTTP POST of the CPE, decoded and parsed."""

    def __init__(self, seq, conn, headers, raw, body):
        self.seq = seq
        self.conn = conn
        self.time = time.monotonic()
        self.headers = headers  # lower-case names
        self.raw = raw
        self.body = body
        self.encoding = headers.get("content-encoding")
        self.text = body.decode("utf-8", "replace")
        self.root = None
        self.parse_error = None
        self.cwmp_ns = None
        self.id = None
        self.id_must_understand = None
        self.header_elems = []
        self.method = ""
        self.elem = None
        self.fault = None
        self.answer_to = None  # the ACS envelope record this message answers
        self.reply = None  # what the ACS sent back: dict(status, body, ...)
        self.session = None
        if body.strip():
            self._parse()

    @property
    def empty(self):
        return not self.body.strip()

    def _parse(self):
        try:
            self.root = ET.fromstring(self.body)
        except ET.ParseError as e:
            self.parse_error = str(e)
            return
        if self.root.tag != f"{{{SOAP_ENV}}}Envelope":
            self.parse_error = f"root element is {self.root.tag}"
            return
        hdr = self.root.find(f"{{{SOAP_ENV}}}Header")
        if hdr is not None:
            for h in hdr:
                self.header_elems.append(h)
                if local(h.tag) == "ID" and nsuri(h.tag) in CWMP_URIS:
                    self.id = h.text or ""
                    self.id_must_understand = h.get(f"{{{SOAP_ENV}}}mustUnderstand")
                    self.cwmp_ns = nsuri(h.tag)
        body = self.root.find(f"{{{SOAP_ENV}}}Body")
        if body is None or len(body) == 0:
            self.parse_error = "no Body child"
            return
        self.elem = body[0]
        if self.elem.tag == f"{{{SOAP_ENV}}}Fault":
            self.method = "Fault"
            self.fault = Fault(self.elem, self.cwmp_ns)
            if self.cwmp_ns is None:
                self.cwmp_ns = self.fault.cwmp_ns
        else:
            self.method = local(self.elem.tag)
            ns = nsuri(self.elem.tag)
            if ns in CWMP_URIS:
                self.cwmp_ns = ns

    @property
    def is_request(self):
        return self.method in CPE_REQUESTS or self.method == "Inform"

    @property
    def is_response(self):
        return self.method.endswith("Response") or self.method == "Fault"

    # --- helpers on the body element -------------------------------------------------------
    def child(self, name, default=None):
        return text_of(self.elem, name, default)

    def param_values(self):
        """GetParameterValuesResponse: {name: (value, xsi:type)} in order."""
        out = {}
        pl = self.elem.find("ParameterList") if self.elem is not None else None
        for p in pl if pl is not None else []:
            v = p.find("Value")
            out[text_of(p, "Name")] = (
                (v.text or "") if v is not None else None,
                v.get(f"{{{XSI}}}type") if v is not None else None,
            )
        return out

    def param_names(self):
        """GetParameterNamesResponse: {name: writable-text} in order."""
        out = {}
        pl = self.elem.find("ParameterList") if self.elem is not None else None
        for p in pl if pl is not None else []:
            out[text_of(p, "Name")] = text_of(p, "Writable")
        return out

    def param_attributes(self):
        """GetParameterAttributesResponse: {name: (notification, [access list])}."""
        out = {}
        pl = self.elem.find("ParameterList") if self.elem is not None else None
        for p in pl if pl is not None else []:
            al = p.find("AccessList")
            out[text_of(p, "Name")] = (
                text_of(p, "Notification"),
                [s.text or "" for s in al] if al is not None else [],
            )
        return out

    def methods(self):
        ml = self.elem.find("MethodList") if self.elem is not None else None
        return [s.text or "" for s in ml] if ml is not None else []

    def __repr__(self):
        return f"<{self.method or 'empty POST'} id={self.id!r} conn={self.conn}>"


class Inform:
    """The parsed Inform of a session."""

    def __init__(self, msg):
        e = msg.elem
        d = e.find("DeviceId")
        self.device_id = {k: text_of(d, k) for k in
                          ("Manufacturer", "OUI", "ProductClass", "SerialNumber")}
        self.events = []
        ev = e.find("Event")
        for s in ev if ev is not None else []:
            self.events.append((text_of(s, "EventCode"), text_of(s, "CommandKey")))
        self.event_array_type = ev.get(f"{{{SOAP_ENC}}}arrayType") if ev is not None else None
        self.max_envelopes = text_of(e, "MaxEnvelopes")
        self.current_time = text_of(e, "CurrentTime")
        self.retry_count = text_of(e, "RetryCount")
        self.params = {}
        self.param_types = {}
        pl = e.find("ParameterList")
        self.param_array_type = pl.get(f"{{{SOAP_ENC}}}arrayType") if pl is not None else None
        self.param_order = []
        for p in pl if pl is not None else []:
            n = text_of(p, "Name")
            v = p.find("Value")
            self.params[n] = (v.text or "") if v is not None else None
            self.param_types[n] = v.get(f"{{{XSI}}}type") if v is not None else None
            self.param_order.append(n)

    @property
    def event_codes(self):
        return [c for c, _ in self.events]


class Session:
    """One CWMP session as the ACS saw it."""

    def __init__(self, index, plan):
        self.index = index
        self.plan = plan
        self.messages = []
        self.sent = []  # ACS envelopes: dict(status, body, id, req, valid, ns, gzip)
        self.inform = None
        self.inform_msg = None
        self.ns = None  # namespace URI the ACS speaks in this session
        self.cookie = "s%d-%s" % (index, os.urandom(6).hex())
        self.conns = set()
        self.open_conns = set()
        self.script_pos = 0
        self.outstanding = None
        self.hold = False  # HoldRequests true in the last ACS envelope
        self.done = False  # the ACS sent its final empty response (or failed the session)
        self.failed = False
        self.aborted = False  # the CPE closed the connection before the ACS ended the session
        self.errors = []
        self.started = time.monotonic()
        self.ended_at = None

    @property
    def complete(self):
        """The ACS ended the session (or failed it), or the CPE closed every connection of it
        (then `aborted` is set), and no connection of it is open."""
        return bool(self.conns) and not self.open_conns

    @property
    def events(self):
        return self.inform.events if self.inform else []

    @property
    def event_codes(self):
        return self.inform.event_codes if self.inform else []

    def has_event(self, code, key=None):
        return any(c == code and (key is None or k == key) for c, k in self.events)

    def after_inform(self):
        """The CPE's messages after the Inform."""
        return [m for m in self.messages if m is not self.inform_msg]

    def responses(self):
        """The CPE's answers to ACS requests (responses and faults), in order."""
        return [m for m in self.messages if m.answer_to is not None]

    def by_method(self, method):
        return [m for m in self.messages if m.method == method]

    def __repr__(self):
        return (f"<Session {self.index} events={self.event_codes} "
                f"msgs={self.messages} done={self.done} failed={self.failed}>")


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, acs):
        self.acs = acs
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60
    server_version = "conformance-acs/1"
    sys_version = ""

    def log_message(self, fmt, *args):  # quiet; the ACS records what matters
        pass

    def setup(self):
        super().setup()
        acs = self.server.acs
        with acs.cond:
            acs.conn_seq += 1
            self.conn_id = acs.conn_seq
            acs.conn_socks[self.conn_id] = self.connection
        self.session = None
        self.authorized = False
        self.digest_nonce = None

    def finish(self):
        try:
            super().finish()
        finally:
            acs = self.server.acs
            with acs.cond:
                acs.conn_socks.pop(self.conn_id, None)
                for s in acs.sessions:
                    if self.conn_id in s.open_conns:
                        s.open_conns.discard(self.conn_id)
                        if not s.open_conns and not s.done:
                            s.aborted = True
                            s.errors.append("the CPE closed the connection before the ACS "
                                            "ended the session")
                acs.closed_conns.add(self.conn_id)
                acs.cond.notify_all()

    # --- bodies ----------------------------------------------------------------------------
    def _read_body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            data = b""
            while True:
                line = self.rfile.readline(1024)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline(8)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def _send(self, status, body=b"", headers=(), compress=False):
        if compress and body:
            body = gzip.compress(body)
            headers = list(headers) + [("Content-Encoding", "gzip")]
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        if status != 204:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and status != 204:
            self.wfile.write(body)
        self.wfile.flush()

    # --- authentication ----------------------------------------------------------------------
    def _check_auth(self):
        acs = self.server.acs
        if acs.auth is None or self.authorized:
            return True
        kind, user, pw = acs.auth
        h = self.headers.get("Authorization") or ""
        ok = False
        if kind == "basic" and h.lower().startswith("basic "):
            try:
                ok = base64.b64decode(h[6:].strip()).decode() == f"{user}:{pw}"
            except Exception:
                ok = False
        elif kind == "digest" and h.lower().startswith("digest ") and self.digest_nonce:
            p = parse_auth_params(h[7:])
            ha1 = md5hex(f"{user}:{acs.realm}:{pw}")
            ha2 = md5hex(f"POST:{p.get('uri', '')}")
            if p.get("qop"):
                want = md5hex(f"{ha1}:{p.get('nonce')}:{p.get('nc')}:{p.get('cnonce')}:"
                              f"{p.get('qop')}:{ha2}")
            else:
                want = md5hex(f"{ha1}:{p.get('nonce')}:{ha2}")
            ok = (p.get("username") == user and p.get("nonce") == self.digest_nonce
                  and (p.get("response") or "").lower() == want)
        if ok:
            self.authorized = True
            acs.auth_ok += 1
            return True
        acs.auth_challenges += 1
        if kind == "basic":
            chal = f'Basic realm="{acs.realm}"'
        else:
            self.digest_nonce = os.urandom(16).hex()
            chal = (f'Digest realm="{acs.realm}", qop="auth", nonce="{self.digest_nonce}", '
                    f'algorithm=MD5')
        self._send(401, b"", [("WWW-Authenticate", chal)])
        return False

    # --- GET: files ---------------------------------------------------------------------------
    def do_GET(self):
        acs = self.server.acs
        path = self.path.split("?", 1)[0]
        with acs.cond:
            f = acs.files.get(path)
            acs.file_requests.append(path)
        if f is None:
            self._send(404)
        else:
            self._send(200, f, [("Content-Type", "application/octet-stream")])

    # --- POST: CWMP ----------------------------------------------------------------------------
    def do_POST(self):
        acs = self.server.acs
        raw = self._read_body()
        if not self._check_auth():
            return
        enc = (self.headers.get("Content-Encoding") or "").lower().strip()
        try:
            if enc in ("gzip", "x-gzip"):
                body = gzip.decompress(raw)
            elif enc == "deflate":
                try:
                    body = zlib.decompress(raw)
                except zlib.error:
                    body = zlib.decompress(raw, -15)
            elif enc in ("", "identity"):
                body = raw
            else:
                self._send(415)
                return
        except Exception:
            self._send(400)
            return
        hdrs = {k.lower(): v for k, v in self.headers.items()}
        with acs.cond:
            acs.msg_seq += 1
            msg = Message(acs.msg_seq, self.conn_id, hdrs, raw, body)
            status, out, extra, compress = acs._answer(self, msg)
            acs.cond.notify_all()
        self._send(status, out, extra, compress)
        if status >= 400 and status != 401:
            self.close_connection = True


def md5hex(s):
    return hashlib.md5(s.encode()).hexdigest()


_AUTH_RE = re.compile(r'\s*([a-zA-Z0-9_-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,]*)\s*,?')


def parse_auth_params(s):
    """key=value pairs of an Authorization / WWW-Authenticate header (quotes removed)."""
    out = {}
    for k, v in _AUTH_RE.findall(s):
        v = v.strip()
        if v.startswith('"') and v.endswith('"'):
            v = re.sub(r"\\(.)", r"\1", v[1:-1])
        out[k.lower()] = v
    return out


class Acs:
    """The ACS. Start with Acs(); stop with close() (idempotent)."""

    def __init__(self, auth=None, realm="conformance-acs"):
        """auth: None, ('basic', user, password) or ('digest', user, password)."""
        self.auth = auth
        self.realm = realm
        self.auth_ok = 0
        self.auth_challenges = 0
        self.cond = threading.Condition()
        self.sessions = []
        self.orphans = []  # messages outside any session
        self.plans = []
        self.default_plan = Plan
        self.files = {}
        self.file_requests = []
        self.conn_seq = 0
        self.msg_seq = 0
        self.conn_socks = {}
        self.closed_conns = set()
        self._server = _Server(self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        self._closed = False

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/acs"

    def file_url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self):
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()
        self._server.server_close()
        with self.cond:
            socks = list(self.conn_socks.values())
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(5)

    # --- scripting ------------------------------------------------------------------------------
    def plan(self, *plans):
        """Queues plans for the next sessions, in order (a list/tuple of scripts is a Plan)."""
        with self.cond:
            for p in plans:
                self.plans.append(p if isinstance(p, Plan) else Plan(script=p))

    # --- waiting (bounded) ----------------------------------------------------------------------
    def wait_for(self, pred, timeout=20.0, what="condition"):
        """Waits until pred() (called under the lock) is true; returns its value or raises."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                v = pred()
                if v:
                    return v
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"ACS: timed out after {timeout:.0f} s waiting for {what}; "
                                       f"sessions: {self.sessions}")
                self.cond.wait(min(left, 0.5))

    def wait_sessions(self, n, timeout=20.0):
        """Waits until at least n sessions exist and the first n are complete; returns them."""
        return self.wait_for(
            lambda: len(self.sessions) >= n and all(s.complete for s in self.sessions[:n])
            and list(self.sessions[:n]),
            timeout, f"{n} complete session(s)")

    def wait_session(self, pred, start=0, timeout=20.0, what="a matching session"):
        """Waits for a complete session (index >= start) with pred(session); returns it."""
        def find():
            for s in self.sessions[start:]:
                if s.complete and pred(s):
                    return s
            return None
        return self.wait_for(find, timeout, what)

    def wait_idle(self, timeout=20.0):
        """Waits until every session so far is complete."""
        self.wait_for(lambda: all(s.complete for s in self.sessions), timeout, "idle ACS")
        return list(self.sessions)

    def snapshot(self):
        with self.cond:
            return list(self.sessions)

    def all_messages(self):
        with self.cond:
            return [m for s in self.sessions for m in s.messages] + list(self.orphans)

    # --- the protocol (called with the lock held) -------------------------------------------------
    def _session_for(self, handler, msg):
        if handler.session is not None:
            return handler.session
        cookie = msg.headers.get("cookie") or ""
        for s in reversed(self.sessions):
            if s.cookie in cookie:
                return s
        return None

    def _answer(self, handler, msg):
        """Returns (status, body bytes, extra headers, compress) for one CPE message."""
        if msg.method == "Inform":
            for s in self.sessions:
                if not s.done:
                    s.done = True
                    s.errors.append("superseded by a new Inform")
            plan = self.plans.pop(0) if self.plans else self.default_plan()
            s = Session(len(self.sessions), plan)
            self.sessions.append(s)
            handler.session = s
            s.conns.add(handler.conn_id)
            s.open_conns.add(handler.conn_id)
            s.messages.append(msg)
            msg.session = s
            s.inform_msg = msg
            try:
                s.inform = Inform(msg)
            except Exception as e:  # malformed Inform: recorded, the test will see it
                s.errors.append(f"cannot parse Inform: {e!r}")
            s.ns = CWMP[plan.ns] if plan.ns else (msg.cwmp_ns or CWMP["1-2"])
            if plan.on_inform is not None:
                plan.on_inform(s)
            if plan.inform_status != 200:
                s.done = True
                s.failed = True
                s.ended_at = time.monotonic()
                msg.reply = {"status": plan.inform_status}
                return plan.inform_status, b"", [("Connection", "close")], False
            body = ("<cwmp:InformResponse><MaxEnvelopes>1</MaxEnvelopes>"
                    "</cwmp:InformResponse>")
            env = envelope(s.ns, body, id=msg.id, hold=plan.hold, headers=plan.inform_headers)
            s.hold = bool(plan.hold)
            return self._reply(s, msg, env, "InformResponse", True,
                               [("Set-Cookie", f"cwmpsession={s.cookie}; Path=/")])

        s = self._session_for(handler, msg)
        if s is None:
            self.orphans.append(msg)
            msg.reply = {"status": 400}
            return 400, b"", [("Connection", "close")], False
        if handler.conn_id not in s.conns:
            s.conns.add(handler.conn_id)
            s.open_conns.add(handler.conn_id)
            handler.session = s
        s.messages.append(msg)
        msg.session = s
        if msg.parse_error:
            s.errors.append(f"message {msg.seq}: {msg.parse_error}")
            s.done = True
            s.failed = True
            msg.reply = {"status": 400}
            return 400, b"", [("Connection", "close")], False

        if msg.method in CPE_REQUESTS:
            if s.hold:
                s.errors.append(f"CPE sent {msg.method} while HoldRequests was true")
            if s.outstanding is not None:
                s.errors.append(f"CPE sent {msg.method} while an ACS request was outstanding")
            if s.done:
                s.done = False  # the CPE goes on after our empty response: the session too
            answer = s.plan.cpe_request_answers.get(msg.method, CPE_REQUESTS[msg.method])
            if answer is None:
                body = ('<soap-env:Fault><faultcode>Server</faultcode><faultstring>ACS fault'
                        '</faultstring><detail><cwmp:Fault><FaultCode>8000</FaultCode>'
                        '<FaultString>Method not supported</FaultString></cwmp:Fault></detail>'
                        '</soap-env:Fault>')
            else:
                body = answer
            env = envelope(s.ns, body, id=msg.id)
            s.hold = False
            return self._reply(s, msg, env, local_name_of(body), True, [])

        # An empty POST, or the CPE's answer to our request: the next request of the script.
        if not msg.empty:
            if s.outstanding is None:
                s.errors.append(f"unexpected {msg.method} (no ACS request outstanding)")
            else:
                msg.answer_to = s.outstanding
                s.outstanding = None
        elif s.outstanding is not None:
            s.errors.append("empty POST while an ACS request was outstanding")
            s.outstanding = None
        if s.done:
            s.errors.append(f"CPE sent {msg!r} after the session's end")
        while s.script_pos < len(s.plan.script):
            item = s.plan.script[s.script_pos]
            s.script_pos += 1
            if callable(item) and not isinstance(item, (Req, End)):
                item = item(s)
            if item is None:
                continue
            if isinstance(item, End):
                return self._end(s, msg, item.status)
            if isinstance(item, str):
                item = Req(item)
            ns = CWMP[item.ns] if item.ns else s.ns
            rid = item.id if item.id is not None else f"acs-{s.index}-{len(s.sent)}"
            if item.envelope is not None:
                env = item.envelope
            else:
                env = envelope(ns, item.body, id=None if rid is False else rid,
                               hold=item.hold, headers=item.headers)
            s.hold = bool(item.hold)
            rec = self._reply(s, msg, env, local_name_of(item.body or ""), item.valid, [],
                              req=item, rid=None if rid is False else rid)
            s.outstanding = s.sent[-1]
            return rec
        return self._end(s, msg, s.plan.end_status)

    def _end(self, s, msg, status):
        s.done = True
        s.hold = False
        s.ended_at = time.monotonic()
        msg.reply = {"status": status}
        s.sent.append({"status": status, "body": "", "method": "", "valid": True})
        return status, b"", [], False

    def _reply(self, s, msg, env, method, valid, extra, req=None, rid=None):
        compress = s.plan.gzip is True or (s.plan.gzip == "mirror" and msg.encoding == "gzip")
        rec = {"status": 200, "body": env, "method": method, "valid": valid, "req": req,
               "id": rid if req is not None else msg.id, "gzip": compress}
        s.sent.append(rec)
        msg.reply = rec
        hdrs = [("Content-Type", 'text/xml; charset="utf-8"')] + list(extra)
        return 200, env.encode("utf-8"), hdrs, compress


def local_name_of(xml_text):
    m = re.match(r"\s*<(?:[A-Za-z_][\w.-]*:)?([A-Za-z_][\w.-]*)", xml_text or "")
    return m.group(1) if m else ""
