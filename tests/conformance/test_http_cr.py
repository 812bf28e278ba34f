"""TR-069 §3.2.2: the HTTP connection request, authenticated with HTTP Digest (RFC 2617)
computed by this suite's own code (connreq.py), against the real agent."""

import unittest
import urllib.parse

from acs import Plan, parse_auth_params
from connreq import digest_response, http_cr
from harness import CR_PASS, CR_USER, ConformanceTest


class DigestVectorTest(unittest.TestCase):

    def test_digest_implementation_against_rfc2617(self):
        """RFC 2617 §3.5 (test tooling self-check): the suite's Digest computation gives the
        RFC's published response, with and without qop (SPEC-NOTES §a.2 vectors)."""
        self.assertEqual(digest_response(
            "Mufasa", "testrealm@host.com", "Circle Of Life", "GET", "/dir/index.html",
            "dcd98b7102dd2f0e8b11d0f600bfb0c093", "00000001", "0a4f113b", "auth"),
            "6629fae49393a05397450978507c4ef1")
        self.assertEqual(digest_response(
            "00D09E-GW1-SN0001", "cpe@example", "s3cret", "GET", "/cr-7f3a9c",
            "5f1c0a9e7d3b2c1a0f9e8d7c6b5a4938"), "2e7c8cea4812138a55ade16656a7f47c")


class HttpConnectionRequestTest(ConformanceTest):

    def test_connection_request_url_form(self):
        """TR-069 §3.2.2 and TR-181 ConnectionRequestURL: an http:// URL naming the listener's
        address and port, with a path (SHOULD be random: at least 8 characters here)."""
        a, s = self.boot()
        url = s.inform.params["Device.ManagementServer.ConnectionRequestURL"]
        u = urllib.parse.urlsplit(url)
        self.assertEqual(u.scheme, "http")
        self.assertEqual((u.hostname, u.port), ("127.0.0.1", a.http_port))
        self.assertGreaterEqual(len(u.path.strip("/")), 8, url)

    def test_unauthenticated_or_wrong_credentials_get_a_digest_challenge_and_no_session(self):
        """TR-069 §3.2.2: a connection request without credentials, or with a wrong password,
        gets 401 with a Digest challenge (RFC 2617: realm, nonce, qop auth) and is not
        accepted; a correct one is (the agent's count of accepted requests, through its
        control socket, grows by one only)."""
        a, _ = self.boot()
        before = a.cr_count()
        url = a.connection_request_url()
        r = http_cr(url)
        self.assertEqual(r.status, 401, r)
        chal = r.steps[0][1].get("www-authenticate", "")
        self.assertTrue(chal.lower().startswith("digest "), chal)
        p = parse_auth_params(chal[7:])
        self.assertTrue(p.get("realm") is not None and p.get("nonce"), chal)
        self.assertIn("auth", [q.strip() for q in p.get("qop", "").split(",")], chal)
        bad = http_cr(url, CR_USER, "wrong-password")
        self.assertEqual([st for st, _, _ in bad.steps], [401, 401], bad)
        bad_user = http_cr(url, "someone-else", CR_PASS)
        self.assertEqual(bad_user.status, 401, bad_user)
        s = self.cr_session(a)
        self.assertEqual(a.cr_count(), before + 1)
        self.assertEqual(s.index, 1)

    def test_good_digest_starts_a_session_with_connection_request(self):
        """TR-069 §3.2.2: a Digest-authenticated GET to ConnectionRequestURL is answered 200
        or 204 with an empty body, and the CPE opens a session whose Inform carries
        "6 CONNECTION REQUEST" with an empty CommandKey."""
        a, _ = self.boot()
        r = http_cr(a.connection_request_url(), CR_USER, CR_PASS)
        self.assertIn(r.status, (200, 204), r)
        self.assertEqual(r.body, b"")
        s = self.acs.wait_session(lambda x: x.has_event("6 CONNECTION REQUEST"), 1)
        self.assertEqual(s.index, 1)
        self.assertIn(("6 CONNECTION REQUEST", ""), s.events)
        self.assertNotIn("1 BOOT", s.event_codes)

    def test_requests_while_a_session_is_being_set_up_give_one_follow_up(self):
        """TR-069 §3.2.2: connection requests that arrive while a session is being set up (the
        Inform sent, the InformResponse not yet received) do not abort it; they are refused
        with 503 or answered, after it, by exactly one session with one
        "6 CONNECTION REQUEST" (a single event)."""
        a, _ = self.boot()
        url = a.connection_request_url()
        answers = []

        def send_crs(session):
            for _ in range(3):
                answers.append(http_cr(url, CR_USER, CR_PASS).status)
        s = self.run_session(a, plan=Plan(["<cwmp:GetRPCMethods/>"], on_inform=send_crs))
        self.assertEqual([m.method for m in s.responses()], ["GetRPCMethodsResponse"],
                         "the session being set up went on")
        for st in answers:
            self.assertIn(st, (200, 204, 503))
        if all(st == 503 for st in answers):
            return
        f = self.acs.wait_session(lambda x: x.has_event("6 CONNECTION REQUEST"), s.index + 1)
        self.assertEqual(f.index, s.index + 1)
        self.assertEqual(f.event_codes.count("6 CONNECTION REQUEST"), 1, f.events)
        self.assertEqual(len(self.settle(a)), s.index + 2, "exactly one follow-up session")

    def test_requests_during_a_session_give_exactly_one_follow_up(self):
        """TR-069 §3.2.2: connection requests that arrive while a session is in progress do
        not abort it; they are either refused with 503 or, once it has ended, answered by
        exactly one new session with "6 CONNECTION REQUEST"."""
        a, _ = self.boot()
        url = a.connection_request_url()
        answers = []

        def send_crs(session):
            # Runs in the ACS while the CPE waits for our next request: mid-session.
            for _ in range(2):
                answers.append(http_cr(url, CR_USER, CR_PASS).status)
            return ('<cwmp:GetParameterValues><ParameterNames soap-enc:arrayType='
                    '"xsd:string[1]"><string>Device.DeviceInfo.UpTime</string>'
                    '</ParameterNames></cwmp:GetParameterValues>')
        s = self.run_session(a, send_crs)
        self.assertEqual([m.method for m in s.responses()], ["GetParameterValuesResponse"],
                         "the session in progress went on")
        for st in answers:
            self.assertIn(st, (200, 204, 503))
        if all(st == 503 for st in answers):
            return
        f = self.acs.wait_session(lambda x: x.has_event("6 CONNECTION REQUEST"), s.index + 1)
        self.assertEqual(f.index, s.index + 1)
        self.assertEqual(len(self.settle(a)), s.index + 2, "exactly one follow-up session")


if __name__ == "__main__":
    unittest.main()
