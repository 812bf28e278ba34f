"""TR-069 Annex G (with TR-111): the UDP connection request. The signed datagram is built by
this suite (connreq.py): GET with ts, id, un, cn and sig = HMAC-SHA1(ConnectionRequestPassword,
ts ‖ id ‖ un ‖ cn), sent to the agent's UDP connection-request address on loopback."""

import os
import time
import unittest

from connreq import send_udp, udp_cr_message, udp_signature
from harness import CR_PASS, CR_USER, ConformanceTest, wait_until

MS = "Device.ManagementServer."


class SignatureVectorTest(unittest.TestCase):

    def test_signature_implementation_against_the_vectors(self):
        """TR-069 Annex G (test tooling self-check): the suite's sig computation gives the
        SPEC-NOTES §c.2 vectors, the second with a raw %XX username."""
        self.assertEqual(udp_signature(1700000000, 12345, "user", "abcdef0123456789", "pass"),
                         "9b8c2959b14919dc1a9443c410c386cfc62275a8")
        self.assertEqual(udp_signature(1700000001, 4294967295,
                                       "00236a-SR552n-SR552NA084%2D0003269",
                                       "0123456789abcdef", "s3cret"),
                         "24cf2ed6f91d500e8bad8ed43684ce6bdc9e9c90")
        msg = udp_cr_message("127.0.0.1", 7547, "user", "pass", 1700000000, 12345,
                             "abcdef0123456789")
        self.assertEqual(msg, b"GET http://127.0.0.1:7547?ts=1700000000&id=12345&un=user"
                              b"&cn=abcdef0123456789&sig=9b8c2959b14919dc1a9443c410c386cfc62275a8"
                              b" HTTP/1.1\r\nHost: 127.0.0.1:7547\r\n\r\n")


class UdpConnectionRequestTest(ConformanceTest):

    def _cr(self, a, **kw):
        kw.setdefault("msg_id", int.from_bytes(os.urandom(4), "big"))
        return udp_cr_message("127.0.0.1", a.udp_port, kw.pop("user", CR_USER),
                              kw.pop("password", CR_PASS), **kw)

    def _session_after(self, start):
        return self.acs.wait_session(lambda s: s.has_event("6 CONNECTION REQUEST"), start)

    def test_udp_connection_request_address(self):
        """TR-181 ManagementServer.UDPConnectionRequestAddress (Annex G): with STUN disabled it
        is the local host:port the CPE receives UDP connection requests on."""
        a, _ = self.boot()
        addr = wait_until(lambda: a.get(MS + "UDPConnectionRequestAddress"),
                          what="UDPConnectionRequestAddress")
        self.assertEqual(addr, f"127.0.0.1:{a.udp_port}")

    def test_signed_request_starts_one_session(self):
        """TR-069 Annex G: a valid signed UDP connection request, sent three times as an ACS
        does, starts a session with "6 CONNECTION REQUEST"; the copies (same id) are accepted
        once (control-socket count, after a later request as a fence)."""
        a, _ = self.boot()
        before = a.cr_count()
        send_udp(("127.0.0.1", a.udp_port), self._cr(a), copies=3)
        s = self._session_after(1)
        self.assertIn(("6 CONNECTION REQUEST", ""), s.events)
        self.acs.wait_idle()
        send_udp(("127.0.0.1", a.udp_port), self._cr(a, ts=int(time.time()) + 1), copies=1)
        self._session_after(s.index + 1)
        self.assertEqual(a.cr_count(), before + 2)

    def test_invalid_requests_are_ignored(self):
        """TR-069 Annex G: a UDP connection request with a wrong signature, a wrong username,
        a missing field, or that replays an accepted one (same ts and id) is silently ignored;
        only the valid ones are accepted (control-socket count, with a valid request after the
        invalid ones as a fence)."""
        a, _ = self.boot()
        dest = ("127.0.0.1", a.udp_port)
        before = a.cr_count()
        ts = int(time.time())
        first = self._cr(a, ts=ts)
        send_udp(dest, first, copies=1)
        s = self._session_after(1)
        self.acs.wait_idle()
        send_udp(dest, first, copies=1)  # replay
        send_udp(dest, self._cr(a, ts=ts + 1, password="not-the-password"), copies=1)
        send_udp(dest, self._cr(a, ts=ts + 1, user="intruder"), copies=1)
        no_sig = self._cr(a, ts=ts + 1).split(b"&sig=")[0] + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        send_udp(dest, no_sig, copies=1)
        send_udp(dest, b"not an http request at all", copies=1)
        send_udp(dest, self._cr(a, ts=ts + 2), copies=1)  # the fence
        s2 = self._session_after(s.index + 1)
        self.assertEqual(s2.index, s.index + 1)
        self.acs.wait_idle()
        self.assertEqual(a.cr_count(), before + 2, "only the two valid requests accepted")

    def test_request_older_than_the_last_accepted_is_ignored(self):
        """TR-069 Annex G (replay protection; SPEC-NOTES §c.3): a request whose ts is older
        than that of the last accepted request is ignored, even with a new id."""
        a, _ = self.boot()
        dest = ("127.0.0.1", a.udp_port)
        before = a.cr_count()
        ts = int(time.time())
        send_udp(dest, self._cr(a, ts=ts), copies=1)
        s = self._session_after(1)
        self.acs.wait_idle()
        send_udp(dest, self._cr(a, ts=ts - 30), copies=1)
        send_udp(dest, self._cr(a, ts=ts + 1), copies=1)  # the fence
        self._session_after(s.index + 1)
        self.acs.wait_idle()
        self.assertEqual(a.cr_count(), before + 2)


if __name__ == "__main__":
    unittest.main()
