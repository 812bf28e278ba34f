"""The ACS side of the connection-request mechanisms, written for the conformance suite with
the standard library only: HTTP GET with Digest (RFC 2617, computed here), the signed UDP
connection request of TR-069 Annex G, and (xmpp.py) the XMPP IQ of Annex K."""

import hashlib
import hmac
import http.client
import os
import socket
import time
import urllib.parse

from acs import parse_auth_params


def md5hex(s):
    return hashlib.md5(s.encode("utf-8")).hexdigest()


def digest_response(user, realm, password, method, uri, nonce, nc=None, cnonce=None, qop=None):
    """RFC 2617 §3.2.2.1 request-digest, MD5, qop 'auth' or none."""
    ha1 = md5hex(f"{user}:{realm}:{password}")
    ha2 = md5hex(f"{method}:{uri}")
    if qop:
        return md5hex(f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return md5hex(f"{ha1}:{nonce}:{ha2}")


def digest_header(challenge, user, password, method, uri, nc="00000001", cnonce=None):
    """The Authorization header answering a 'Digest ...' WWW-Authenticate value."""
    p = parse_auth_params(challenge.split(" ", 1)[1] if " " in challenge else "")
    realm, nonce = p.get("realm", ""), p.get("nonce", "")
    qops = [q.strip() for q in p.get("qop", "").split(",") if q.strip()]
    qop = "auth" if "auth" in qops else None
    cnonce = cnonce or os.urandom(8).hex()
    resp = digest_response(user, realm, password, method, uri, nonce, nc, cnonce, qop)
    parts = [f'username="{user}"', f'realm="{realm}"', f'nonce="{nonce}"', f'uri="{uri}"']
    if p.get("algorithm"):
        parts.append(f"algorithm={p['algorithm']}")
    if qop:
        parts += [f"qop={qop}", f"nc={nc}", f'cnonce="{cnonce}"']
    parts.append(f'response="{resp}"')
    if "opaque" in p:
        parts.append(f'opaque="{p["opaque"]}"')
    return "Digest " + ", ".join(parts)


class CrResult:
    def __init__(self):
        self.steps = []  # (status, headers dict, body bytes) per GET

    @property
    def status(self):
        return self.steps[-1][0] if self.steps else None

    @property
    def body(self):
        return self.steps[-1][2] if self.steps else None

    def __repr__(self):
        return f"CrResult({[(s, h.get('www-authenticate')) for s, h, _ in self.steps]})"


def http_cr(url, user=None, password=None, timeout=10):
    """An HTTP connection request (TR-069 §3.2.2): GET without credentials; when the answer
    is a 401 Digest challenge and credentials are given, GET again with Digest (on the same
    connection when the CPE keeps it open, else on a new one)."""
    u = urllib.parse.urlsplit(url)
    path = u.path or "/"
    if u.query:
        path += "?" + u.query
    res = CrResult()
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        hdrs = {k.lower(): v for k, v in r.getheaders()}
        res.steps.append((r.status, hdrs, r.read()))
        chal = hdrs.get("www-authenticate", "")
        if r.status != 401 or user is None or not chal.lower().startswith("digest"):
            return res
        auth = digest_header(chal, user, password, "GET", path)
        if r.will_close:
            conn.close()
            conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
        conn.request("GET", path, headers={"Authorization": auth})
        r = conn.getresponse()
        res.steps.append((r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()))
        return res
    finally:
        conn.close()


def udp_signature(ts, msg_id, user, cnonce, password):
    """TR-069 Annex G: sig = HMAC-SHA1(key = password, ts ‖ id ‖ un ‖ cn), hex."""
    text = f"{ts}{msg_id}{user}{cnonce}".encode("utf-8")
    return hmac.new(password.encode("utf-8"), text, hashlib.sha1).hexdigest()


def udp_cr_message(host, port, user, password, ts=None, msg_id=None, cnonce=None, sig=None):
    """The UDP connection request datagram of TR-069 Annex G (an HTTP GET in one datagram)."""
    ts = int(time.time()) if ts is None else ts
    msg_id = int.from_bytes(os.urandom(4), "big") if msg_id is None else msg_id
    cnonce = cnonce or os.urandom(8).hex()
    sig = sig or udp_signature(ts, msg_id, user, cnonce, password)
    q = f"ts={ts}&id={msg_id}&un={user}&cn={cnonce}&sig={sig}"
    return (f"GET http://{host}:{port}?{q} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n").encode()


def send_udp(addr, data, copies=3):
    """Sends `data` to addr (host, port) `copies` times back to back, from one socket."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(copies):
            s.sendto(data, addr)
