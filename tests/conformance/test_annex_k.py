"""TR-069 Annex K: the XMPP connection request, against the real agent and a real Prosody. The
ACS side is this suite's own XMPP client (xmpp.py: STARTTLS, SASL PLAIN, bind, the
connectionRequest IQ of cwmp-xmppConnReq-1-0). Needs prosody, prosodyctl and openssl: without
them the tests skip, or fail when CI=true."""

import shutil
import tempfile
import unittest

from harness import (CR_PASS, CR_USER, ConformanceTest, free_port, need, spawn, stop_process,
                     wait_until)
from xmpp import Prosody, XmppClient

DOMAIN = "cpe.test"
CPE_JID = f"cpe1@{DOMAIN}/cwmp"
CONN = "Device.XMPP.Connection.1."
MS = "Device.ManagementServer."


class XmppConnectionRequestTest(ConformanceTest):

    @classmethod
    def setUpClass(cls):
        for tool in ("prosody", "prosodyctl", "openssl"):
            need(tool)
        cls.pdir = tempfile.mkdtemp(prefix="cwc-xmpp-")
        cls.prosody = Prosody(cls.pdir, DOMAIN,
                              {"cpe1": "cpe1-pw", "acs": "acs-pw", "evil": "evil-pw"},
                              spawn, stop_process, free_port)
        try:
            cls.prosody.start()
        except BaseException:
            cls.prosody.stop()
            shutil.rmtree(cls.pdir, ignore_errors=True)
            raise

    @classmethod
    def tearDownClass(cls):
        cls.prosody.stop()
        shutil.rmtree(cls.pdir, ignore_errors=True)

    def start_agent(self):
        self.make_acs()
        p = self.prosody
        a = self.make_agent(params={
            MS + "ConnReqXMPPConnection": "Device.XMPP.Connection.1",
            MS + "ConnReqAllowedJabberIDs": f"acs@{DOMAIN}",
            CONN + "Enable": True,
            CONN + "Username": "cpe1",
            CONN + "Password": "cpe1-pw",
            CONN + "Domain": DOMAIN,
            CONN + "Resource": "cwmp",
            CONN + "UseTLS": True,
            CONN + "ServerConnectAlgorithm": "ServerTable",
            CONN + "ServerRetryInitialInterval": 1,
            CONN + "ServerRetryMaxInterval": 2,
            CONN + "Server.1.Enable": True,
            CONN + "Server.1.ServerAddress": "127.0.0.1",
            CONN + "Server.1.Port": p.port,
        }, sections={"xmpp": {"ca_file": str(p.ca)}})
        wait_until(lambda: a.get(CONN + "Status") == "Enabled",
                   what=f"the agent's XMPP connection (prosody log: {p.log()[-500:]})")
        return a

    def client(self, user="acs", pw="acs-pw"):
        c = XmppClient("127.0.0.1", self.prosody.port, DOMAIN, user, pw, str(self.prosody.ca),
                       resource="conformance")
        self.addCleanup(c.close)
        c.login()
        return c

    def test_connection_request_is_accepted_and_opens_a_session(self):
        """TR-069 Annex K: an XMPP connectionRequest IQ (type get) from an allowed ACS JID with
        the ConnectionRequestUsername/Password is answered with an empty IQ result, and the CPE
        opens a session with "6 CONNECTION REQUEST"; ConnReqJabberID (TR-181,
        forceDefaultEnabled) reports the CPE's full JID in an Inform."""
        a = self.start_agent()
        jid_session = self.acs.wait_session(
            lambda s: s.inform and s.inform.params.get(MS + "ConnReqJabberID") == CPE_JID, 0,
            what="an Inform reporting ConnReqJabberID")
        self.assertTrue(jid_session.has_event("4 VALUE CHANGE") or
                        jid_session.has_event("0 BOOTSTRAP"), jid_session.events)
        self.settle(a)
        n = len(self.acs.snapshot())
        c = self.client()
        typ, cond, el = c.connection_request(CPE_JID, CR_USER, CR_PASS)
        self.assertEqual((typ, cond), ("result", None))
        self.assertEqual(len(el), 0, "an empty IQ result")
        s = self.acs.wait_session(lambda x: x.has_event("6 CONNECTION REQUEST"), n)
        self.assertEqual(s.index, n)

    def test_wrong_credentials_are_refused_with_not_authorized(self):
        """TR-069 Annex K: a connectionRequest with a wrong password (or username) gets an IQ
        error with condition not-authorized and starts no session (the agent's accepted-request
        count, through its control socket, grows only with the correct request after it)."""
        a = self.start_agent()
        self.settle(a)
        before = a.cr_count()
        c = self.client()
        self.assertEqual(c.connection_request(CPE_JID, CR_USER, "wrong")[:2],
                         ("error", "not-authorized"))
        self.assertEqual(c.connection_request(CPE_JID, "wrong-user", CR_PASS)[:2],
                         ("error", "not-authorized"))
        n = len(self.acs.snapshot())
        self.assertEqual(c.connection_request(CPE_JID, CR_USER, CR_PASS)[0], "result")
        self.acs.wait_session(lambda x: x.has_event("6 CONNECTION REQUEST"), n)
        self.assertEqual(a.cr_count(), before + 1)

    def test_sender_not_in_allowed_jabber_ids_is_refused(self):
        """TR-069 Annex K with TR-181 ConnReqAllowedJabberIDs: a connectionRequest from a JID
        not in the list gets an IQ error and starts no session (count as above)."""
        a = self.start_agent()
        self.settle(a)
        before = a.cr_count()
        typ, cond, _ = self.client("evil", "evil-pw").connection_request(CPE_JID, CR_USER,
                                                                          CR_PASS)
        self.assertEqual(typ, "error", cond)
        n = len(self.acs.snapshot())
        self.assertEqual(self.client().connection_request(CPE_JID, CR_USER, CR_PASS)[0],
                         "result")
        self.acs.wait_session(lambda x: x.has_event("6 CONNECTION REQUEST"), n)
        self.assertEqual(a.cr_count(), before + 1)


if __name__ == "__main__":
    unittest.main()
