"""CWMP version negotiation (TR-069 Amendment 6 §3.7.4 [section per CDRouter's notes; wording
unverified here], BBF cwmp-1-4.xsd headers SupportedCWMPVersions / UseCWMPVersion).

What is checked from the wire, against ACSs speaking 1.0, 1.1, 1.2 and 1.4:

* the first Inform to an ACS goes in urn:dslforum-org:cwmp-1-2 (the namespace of 1.4, the
  highest version) with SupportedCWMPVersions, mustUnderstand="0", listing 1.0 ... 1.4;
* the ACS's choice (UseCWMPVersion, else the namespace of its InformResponse) is followed for
  the rest of the session, also for a request the ACS sends in another namespace;
* an ACS that chose 1.0 or 1.1 gets that version's Inform from then on, across a restart, until
  ManagementServer.URL changes;
* an UseCWMPVersion naming no CWMP version fails the session (the CPE sends nothing more in it)
  and the retry offers 1.4 again.

Every CPE message is validated by the harness against the schema of its namespace (schema.py).
"""

import unittest

from acs import CWMP, SOAP_ENV, Plan, Req
from harness import ConformanceTest, WAIT, gpv, wait_until

OFFER = ["1.0", "1.1", "1.2", "1.3", "1.4"]
GPV_SERIAL = ('<cwmp:GetParameterValues><ParameterNames soap-enc:arrayType="xsd:string[1]">'
              '<string>Device.DeviceInfo.SerialNumber</string></ParameterNames>'
              '</cwmp:GetParameterValues>')
GPV_BAD = ('<cwmp:GetParameterValues><ParameterNames soap-enc:arrayType="xsd:string[1]">'
           '<string>Device.NoSuchObject.</string></ParameterNames></cwmp:GetParameterValues>')
CANCEL = "<cwmp:CancelTransfer><CommandKey>none</CommandKey></cwmp:CancelTransfer>"


def use_version(v):
    return f'<cwmp:UseCWMPVersion soap-env:mustUnderstand="1">{v}</cwmp:UseCWMPVersion>'


def header(msg, name):
    for h in msg.header_elems:
        if h.tag.endswith("}" + name):
            return h
    return None


class VersionTest(ConformanceTest):

    def assertOffers14(self, s):
        inf = s.inform_msg
        self.assertEqual(inf.cwmp_ns, CWMP["1-2"], "the Inform offers 1.4 in cwmp-1-2")
        h = header(inf, "SupportedCWMPVersions")
        self.assertIsNotNone(h, f"no SupportedCWMPVersions: {inf.text[:800]}")
        self.assertEqual(h.tag, "{%s}SupportedCWMPVersions" % CWMP["1-2"])
        self.assertEqual(h.get(f"{{{SOAP_ENV}}}mustUnderstand"), "0")
        self.assertEqual([v.strip() for v in (h.text or "").split(",")], OFFER)

    def assertOffersOnly(self, s, ns):
        self.assertEqual(s.inform_msg.cwmp_ns, CWMP[ns])
        self.assertIsNone(header(s.inform_msg, "SupportedCWMPVersions"))

    def assertAllIn(self, s, ns):
        for m in s.after_inform():
            if not m.empty:
                self.assertEqual(m.cwmp_ns, CWMP[ns], f"{m} in {m.cwmp_ns}")

    def test_first_inform_offers_every_version_and_1_4_acs_is_followed(self):
        """cwmp-1-4.xsd: the Inform carries SupportedCWMPVersions (mustUnderstand 0); a 1.4
        ACS names its choice with UseCWMPVersion (mustUnderstand 1); the session goes on in
        cwmp-1-2 with the 1.2 methods served."""
        _, s = self.boot(Plan([GPV_SERIAL, CANCEL, GPV_BAD], inform_headers=use_version("1.4")))
        self.assertOffers14(s)
        self.assertAllIn(s, "1-2")
        rs = s.responses()
        self.assertEqual(rs[0].method, "GetParameterValuesResponse")
        self.assertNotEqual(rs[1].fault and rs[1].fault.code, 9000, "CancelTransfer is 1.2's")
        self.assertFault(rs[2], 9005)

    def check_older_acs(self, ns):
        """An ACS that answers in cwmp-1-0 / cwmp-1-1 (no UseCWMPVersion, which those schemas
        lack) gets that namespace and that version's methods: CancelTransfer (1.2) is 9000."""
        _, s = self.boot(Plan([GPV_SERIAL, Req(CANCEL, valid=False), GPV_BAD], ns=ns))
        self.assertOffers14(s)
        self.assertAllIn(s, ns)
        rs = s.responses()
        self.assertEqual(rs[0].method, "GetParameterValuesResponse")
        self.assertFault(rs[1], 9000)
        self.assertFault(rs[2], 9005)

    def test_acs_answering_in_1_0(self):
        """cwmp-1-0.xsd: a 1.0 ACS is answered in cwmp-1-0 with 1.0's methods."""
        self.check_older_acs("1-0")

    def test_acs_answering_in_1_1(self):
        """cwmp-1-1.xsd: a 1.1 ACS is answered in cwmp-1-1 with 1.1's methods."""
        self.check_older_acs("1-1")

    def test_acs_answering_in_1_2_without_use_cwmp_version(self):
        """A 1.2 ACS (cwmp-1-2, no UseCWMPVersion): the session is 1.2, every later message
        valid against cwmp-1-2.xsd alone (schema.py checks both 1-2 and 1-4)."""
        _, s = self.boot(Plan([GPV_SERIAL, CANCEL]))
        self.assertOffers14(s)
        self.assertAllIn(s, "1-2")
        self.assertEqual(s.responses()[0].method, "GetParameterValuesResponse")

    def test_request_in_another_namespace_is_read_in_the_sessions_version(self):
        """After a 1.0 InformResponse, a request written in cwmp-1-2 is answered in cwmp-1-0;
        a 1.2-only method in it gets 9000."""
        _, s = self.boot(Plan([Req(GPV_SERIAL, ns="1-2"), Req(CANCEL, ns="1-2")], ns="1-0"))
        self.assertAllIn(s, "1-0")
        rs = s.responses()
        self.assertEqual(rs[0].method, "GetParameterValuesResponse")
        self.assertFault(rs[1], 9000)

    def test_1_0_choice_is_remembered_until_the_url_changes(self):
        """Once a 1.0 ACS answered, its next Informs are cwmp-1-0 without
        SupportedCWMPVersions, also after a restart; a new ManagementServer.URL starts over
        with the 1.4 offer."""
        a, s = self.boot(Plan(ns="1-0"))
        self.assertOffers14(s)
        s = self.run_session(a, plan=Plan([GPV_SERIAL], ns="1-0"))
        self.assertOffersOnly(s, "1-0")
        self.settle(a)
        self.acs.plan(Plan(ns="1-0"))
        a.restart()
        s = self.acs.wait_sessions(3)[2]
        self.assertOffersOnly(s, "1-0")
        self.settle(a)
        self.acs.plan(Plan(inform_headers=use_version("1.4")))
        a.set("Device.ManagementServer.URL", self.acs.url + "other")
        s = self.acs.wait_session(lambda s: s.has_event("0 BOOTSTRAP"), 3, WAIT,
                                  "the BOOTSTRAP session to the new URL")
        self.assertOffers14(s)

    def test_use_cwmp_version_naming_no_version_fails_the_session(self):
        """UseCWMPVersion is mustUnderstand: a value naming no CWMP version cannot be
        followed. The CPE sends nothing more in that session, keeps running, and its retry
        offers 1.4 again."""
        self.make_acs()
        self.acs.plan(Plan([GPV_SERIAL], inform_headers=use_version("7.3")),
                      Plan(inform_headers=use_version("1.4")))
        a = self.make_agent()
        s = self.acs.wait_sessions(2, timeout=WAIT + 15)
        self.assertEqual([m.method for m in s[0].messages], ["Inform"],
                         "nothing after the refused InformResponse")
        self.assertOffers14(s[1])
        self.assertTrue(a.running)
        # Both sessions carried the BOOTSTRAP: the first was not delivered.
        self.assertTrue(s[1].has_event("0 BOOTSTRAP"))
        wait_until(lambda: s[1].complete, what="the retry session ended")


IP = "Device.ManagementServer.InformParameter."


def add_object(name, key):
    return (f"<cwmp:AddObject><ObjectName>{name}</ObjectName>"
            f"<ParameterKey>{key}</ParameterKey></cwmp:AddObject>")


def gpn(path, next_level):
    return (f"<cwmp:GetParameterNames><ParameterPath>{path}</ParameterPath>"
            f"<NextLevel>{'true' if next_level else 'false'}</NextLevel>"
            "</cwmp:GetParameterNames>")


def gpa(*names):
    return (f'<cwmp:GetParameterAttributes><ParameterNames soap-enc:arrayType='
            f'"xsd:string[{len(names)}]">' + "".join(f"<string>{n}</string>" for n in names)
            + "</ParameterNames></cwmp:GetParameterAttributes>")


WILDCARD_SCRIPT = [
    add_object(IP, "w1"), add_object(IP, "w2"),
    gpv(IP + "*.Enable"),
    gpn(IP + "*.", True),
    gpa(IP + "*.ParameterName"),
    gpv("Device.DeviceInfo.*.Manufacturer"),
    gpv(IP + "1*.Enable"),
    gpv("Device.ManagementServer.InstanceWildcardsSupported"),
]


class InstanceWildcardTest(ConformanceTest):
    """Instance wildcards (TR-069 Amendment 6, CWMP 1.4; TR-181
    ManagementServer.InstanceWildcardsSupported): `*` in place of an instance number in
    GetParameterValues / GetParameterNames / GetParameterAttributes."""

    def instances(self, s):
        return [int(m.child("InstanceNumber")) for m in s.responses()
                if m.method == "AddObjectResponse"]

    def test_wildcards_in_a_1_4_session(self):
        """In a 1.4 session every existing instance is named, in order; `*` in place of
        something other than an instance number (or part of a segment) is 9005; the CPE says
        InstanceWildcardsSupported = true."""
        _, s = self.boot(Plan(WILDCARD_SCRIPT, inform_headers=use_version("1.4")))
        rs = s.responses()
        n = self.instances(s)
        self.assertEqual(len(n), 2, rs)
        self.assertEqual(list(rs[2].param_values()), [f"{IP}{i}.Enable" for i in n])
        names = rs[3].param_names()
        for i in n:
            self.assertIn(f"{IP}{i}.ParameterName", names)
        self.assertTrue(all(k[len(IP):].count(".") == 1 and not k.endswith(".")
                            for k in names), names)
        self.assertEqual(list(rs[4].param_attributes()), [f"{IP}{i}.ParameterName" for i in n])
        self.assertFault(rs[5], 9005)
        self.assertFault(rs[6], 9005)
        self.assertEqual(rs[7].param_values()[
            "Device.ManagementServer.InstanceWildcardsSupported"][0], "true")

    def check_refused(self, plan):
        _, s = self.boot(plan)
        rs = s.responses()
        self.assertEqual(len(self.instances(s)), 2, rs)
        for r in rs[2:7]:
            self.assertFault(r, 9005)

    def test_no_wildcards_in_a_1_2_session(self):
        """A 1.2 ACS (no UseCWMPVersion): a wildcard is an invalid parameter name (9005)."""
        self.check_refused(Plan(WILDCARD_SCRIPT))

    def test_no_wildcards_in_a_1_0_session(self):
        """A 1.0 ACS: a wildcard is 9005, in cwmp-1-0."""
        self.check_refused(Plan(WILDCARD_SCRIPT, ns="1-0"))


def spv(name, value, xsd_type="string"):
    return ('<cwmp:SetParameterValues><ParameterList soap-enc:arrayType='
            '"cwmp:ParameterValueStruct[1]"><ParameterValueStruct>'
            f'<Name>{name}</Name><Value xsi:type="xsd:{xsd_type}">{value}</Value>'
            '</ParameterValueStruct></ParameterList><ParameterKey></ParameterKey>'
            '</cwmp:SetParameterValues>')


class AliasTest(ConformanceTest):
    """Alias-based addressing (TR-069 Amendment 4 §3.6.1, CWMP 1.3; TR-181
    AliasBasedAddressing, InstanceMode, AutoCreateInstances; TR-106 Alias rules)."""

    def test_aliases_in_a_1_4_session(self):
        """AddObject of Table.[alias]. names the instance; [alias] addresses it; a new
        instance the ACS did not name gets a cpe- Alias; a duplicate or malformed Alias is 9007;
        with InstanceMode InstanceAlias the returned names carry [alias]; an unknown alias
        without AutoCreateInstances is 9005; with it the instance is created."""
        _, s = self.boot(Plan([
            add_object(IP + "[news].", "a1"),
            add_object(IP, "a2"),
            gpv(IP + "[news].Alias"),
            spv(IP + "[news].Alias", "x.y"),
            add_object(IP + "[news].", "a3"),
            spv(IP + "[late].Enable", "true", "boolean"),
            spv("Device.ManagementServer.AutoCreateInstances", "true", "boolean"),
            spv(IP + "[late].Enable", "true", "boolean"),
            spv("Device.ManagementServer.InstanceMode", "InstanceAlias"),
            gpn(IP, True),
            gpv(IP + "[late].Enable"),
        ], inform_headers=use_version("1.4")))
        rs = s.responses()
        self.assertEqual(rs[0].method, "AddObjectResponse", rs[0].text[:600])
        self.assertEqual(rs[1].method, "AddObjectResponse")
        n2 = int(rs[1].child("InstanceNumber"))
        self.assertEqual(rs[2].param_values()[f"{IP}{int(rs[0].child('InstanceNumber'))}.Alias"][0],
                         "news")
        self.assertFault(rs[3], 9003, spv=[(IP + "[news].Alias", 9007)])
        self.assertFault(rs[4], 9007)
        self.assertFault(rs[5], 9003, spv=[(IP + "[late].Enable", 9005)])
        self.assertEqual(rs[7].method, "SetParameterValuesResponse")
        names = list(rs[9].param_names())
        for a in ("news", f"cpe-{n2}", "late"):
            self.assertIn(f"{IP}[{a}].", names)
        self.assertEqual(list(rs[10].param_values()), [IP + "[late].Enable"])

    def test_no_aliases_in_a_1_2_session(self):
        """A 1.2 ACS: a path with [alias] names nothing (9005)."""
        _, s = self.boot(Plan([add_object(IP, "a1"), gpv(IP + "[cpe-1].Enable")]))
        self.assertFault(s.responses()[1], 9005)


if __name__ == "__main__":
    unittest.main()
