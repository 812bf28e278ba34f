"""TR-069 §3.2.1 (session retry), §3.4 (HTTP), §3.5 (SOAP envelope, namespaces, headers) and
§3.7 (session, Inform, events, HoldRequests), against the real agent."""

import datetime
import re
import unittest

from acs import CWMP, SOAP_ENV, Plan, Req
from harness import (FORCED_INFORM, MANUFACTURER, OUI, PRODUCT_CLASS, SERIAL, ConformanceTest,
                     gpv, need_file)

GPV_SERIAL = ('<cwmp:GetParameterValues><ParameterNames soap-enc:arrayType="xsd:string[1]">'
              '<string>Device.DeviceInfo.SerialNumber</string></ParameterNames>'
              '</cwmp:GetParameterValues>')


def download(key, url, size, file_type="3 Vendor Configuration File"):
    return (f"<cwmp:Download><CommandKey>{key}</CommandKey><FileType>{file_type}</FileType>"
            f"<URL>{url}</URL><Username></Username><Password></Password>"
            f"<FileSize>{size}</FileSize><TargetFileName>cfg.xml</TargetFileName>"
            f"<DelaySeconds>0</DelaySeconds><SuccessURL></SuccessURL><FailureURL></FailureURL>"
            f"</cwmp:Download>")


class InformTest(ConformanceTest):

    def test_first_message_is_inform_with_device_id_and_id_header(self):
        """TR-069 §3.7.1.1 and A.3.3.1: a session opens with an Inform whose DeviceId carries
        the configured Manufacturer, OUI, ProductClass and SerialNumber, MaxEnvelopes 1 and
        RetryCount 0; the envelope has a cwmp:ID header with soap-env:mustUnderstand="1"
        (§3.5), and the POST is text/xml (§3.4)."""
        _, s = self.boot()
        m = s.messages[0]
        self.assertEqual(m.method, "Inform")
        self.assertEqual(m.cwmp_ns, CWMP["1-2"], "cwmpd speaks CWMP 1.2 (namespace cwmp-1-2)")
        self.assertTrue(m.id, "cwmp:ID header present and not empty")
        self.assertEqual(m.id_must_understand, "1")
        self.assertIn("text/xml", m.headers.get("content-type", ""))
        inf = s.inform
        self.assertEqual(inf.device_id, {"Manufacturer": MANUFACTURER, "OUI": OUI,
                                         "ProductClass": PRODUCT_CLASS, "SerialNumber": SERIAL})
        self.assertEqual(inf.max_envelopes, "1")
        self.assertEqual(inf.retry_count, "0")
        self.assertEqual(inf.event_array_type, f"cwmp:EventStruct[{len(inf.events)}]")

    def test_parameter_list_carries_the_forced_inform_parameters(self):
        """TR-069 A.3.3.1 and TR-181 forcedInform: every Inform's ParameterList holds the
        forced-inform parameters of Device:2 (RootDataModelVersion, HardwareVersion,
        SoftwareVersion, ProvisioningCode, ParameterKey, ConnectionRequestURL,
        AliasBasedAddressing), each Value with an xsi:type, and the arrayType count matches."""
        a, s = self.boot()
        inf = s.inform
        for name in FORCED_INFORM:
            self.assertIn(name, inf.params, f"{name} missing from {inf.param_order}")
            self.assertTrue(inf.param_types[name], f"{name} has no xsi:type")
        self.assertEqual(inf.params["Device.DeviceInfo.SoftwareVersion"], "1.2.3")
        self.assertEqual(inf.params["Device.DeviceInfo.HardwareVersion"], "HW-1")
        self.assertEqual(inf.param_types["Device.ManagementServer.AliasBasedAddressing"],
                         "xsd:boolean")
        self.assertRegex(inf.params["Device.ManagementServer.ConnectionRequestURL"],
                         r"^http://127\.0\.0\.1:%d/\S+" % a.http_port)
        self.assertEqual(inf.param_array_type,
                         f"cwmp:ParameterValueStruct[{len(inf.param_order)}]")
        # A later session (connection request) carries them again.
        s2 = self.cr_session(a)
        for name in FORCED_INFORM:
            self.assertIn(name, s2.inform.params)

    def test_bootstrap_and_boot_on_first_start_boot_only_after_restart(self):
        """TR-069 §3.7.1.5, Table 7: the first session ever carries "0 BOOTSTRAP" and
        "1 BOOT"; after a restart on the same state the Inform carries "1 BOOT" and no
        "0 BOOTSTRAP"."""
        a, s = self.boot()
        self.assertEqual(sorted(s.event_codes), ["0 BOOTSTRAP", "1 BOOT"])
        self.assertEqual(s.events, [(c, "") for c in s.event_codes], "empty CommandKeys")
        a.restart()
        s2 = self.acs.wait_sessions(2)[1]
        self.assertEqual(s2.event_codes, ["1 BOOT"])

    def test_current_time_is_the_clock(self):
        """TR-069 A.3.3.1 CurrentTime: with a set clock the Inform carries the current time
        with its UTC offset (here within a minute of the test's clock)."""
        _, s = self.boot()
        ct = s.inform.current_time
        self.assertRegex(ct, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")
        t = datetime.datetime.fromisoformat(ct.replace("Z", "+00:00"))
        now = datetime.datetime.now(datetime.timezone.utc)
        self.assertLess(abs((t - now).total_seconds()), 60, ct)

    def test_current_time_is_unknown_time_while_the_clock_is_not_set(self):
        """TR-069 A.3.3.1 CurrentTime with TR-106 Unknown Time (KNOWN DEFECT): while the clock
        is not synchronised - here it reads 1970, as on a box without RTC before NTP set it -
        the Inform carries "0001-01-01T00:00:00Z". Only the agent's clock is moved
        (libfaketime in LD_PRELOAD); the machine's clock is untouched."""
        lib = need_file("/usr/lib/*/faketime/libfaketime.so.1", "libfaketime")
        _, s = self.boot(env={"LD_PRELOAD": lib, "FAKETIME": "@1970-01-02 03:04:05",
                              "FAKETIME_DONT_FAKE_MONOTONIC": "1"})
        self.assertEqual(s.inform.current_time, "0001-01-01T00:00:00Z")


class SessionFlowTest(ConformanceTest):

    def test_empty_post_then_204_ends_the_session_on_one_connection(self):
        """TR-069 §3.7.1.4 and §3.4: with nothing to send after the InformResponse the CPE
        sends an empty POST; the ACS's empty 204 ends the session: the CPE sends nothing more
        and closes the connection. The session is one persistent TCP connection (§3.4)."""
        _, s = self.boot()
        self.assertEqual([m.method for m in s.messages], ["Inform", ""], s.messages)
        empty = s.messages[1]
        self.assertEqual(empty.raw, b"")
        self.assertIn(empty.headers.get("content-length", "0"), ("0",))
        self.assertEqual(len(s.conns), 1, "one TCP connection for the session")
        self.assertFalse(s.open_conns, "the CPE closed the connection after the 204")
        self.assertEqual(s.errors, [])

    def test_200_with_empty_body_also_ends_the_session(self):
        """TR-069 §3.7.1.4 and §3.4: an HTTP 200 with an empty body from the ACS ends the
        session like a 204; it is a success (the next Inform has RetryCount 0)."""
        self.make_acs()
        self.acs.plan(Plan([GPV_SERIAL], end_status=200))
        a = self.make_agent()
        s = self.acs.wait_sessions(1)[0]
        self.assertEqual([m.method for m in s.messages],
                         ["Inform", "", "GetParameterValuesResponse"])
        self.assertEqual(s.messages[-1].reply["status"], 200)
        s2 = self.cr_session(a)
        self.assertEqual(s2.inform.retry_count, "0")
        self.assertNotIn("0 BOOTSTRAP", s2.event_codes, "the boot session counted as delivered")

    def test_cookies_are_returned_for_the_session(self):
        """TR-069 §3.4 (cookies): the CPE returns the cookies the ACS sets (Set-Cookie on the
        InformResponse) on every later POST of the session."""
        _, s = self.boot(Plan([GPV_SERIAL, "<cwmp:GetRPCMethods/>"]))
        later = s.after_inform()
        self.assertEqual(len(later), 3)
        for m in later:
            self.assertIn(f"cwmpsession={s.cookie}", m.headers.get("cookie", ""), m)

    def test_cwmp_id_is_echoed_in_every_response(self):
        """TR-069 §3.5 (cwmp:ID header): the CPE's response to each ACS request, faults included,
        carries the ID of that request, whatever characters it holds."""
        ids = ["id-1", "rpc 2 <&> \"quoted\" 'x'", "3" * 40, "x-fault"]
        script = [
            Req("<cwmp:GetRPCMethods/>", id=ids[0]),
            Req(GPV_SERIAL, id=ids[1]),
            Req('<cwmp:GetParameterNames><ParameterPath>Device.DeviceInfo.</ParameterPath>'
                '<NextLevel>true</NextLevel></cwmp:GetParameterNames>', id=ids[2]),
            Req(gpv("Device.NoSuchObject."), id=ids[3]),
        ]
        _, s = self.boot(Plan(script))
        rs = s.responses()
        self.assertEqual([m.method for m in rs], ["GetRPCMethodsResponse",
                                                  "GetParameterValuesResponse",
                                                  "GetParameterNamesResponse", "Fault"])
        self.assertEqual([m.id for m in rs], ids)
        for m in rs:
            self.assertEqual(m.id_must_understand, "1", m)
        self.assertEqual(s.inform_msg.reply["id"], s.inform_msg.id,
                         "self-check: the ACS echoed the Inform's ID")


class RetryTest(ConformanceTest):

    def test_failed_sessions_are_retried_with_retry_count_and_the_tr069_wait(self):
        """TR-069 §3.2.1.1 and A.3.3.1 RetryCount: a session that fails (HTTP 500 to the
        Inform) is retried with its events; RetryCount counts the failed attempts (0, 1, 2)
        and goes back to 0 after a success; retry n waits within
        [m·(k/1000)^(n-1), m·(k/1000)^n] s (m = CWMPRetryMinimumWaitInterval = 1,
        k = CWMPRetryIntervalMultiplier = 2000)."""
        self.make_acs()
        self.acs.plan(Plan(inform_status=500), Plan(inform_status=500), Plan())
        a = self.make_agent(params={
            "Device.ManagementServer.CWMPRetryMinimumWaitInterval": 1,
            "Device.ManagementServer.CWMPRetryIntervalMultiplier": 2000})
        ss = self.acs.wait_sessions(3, timeout=30)
        self.assertEqual([s.inform.retry_count for s in ss], ["0", "1", "2"])
        for s in ss:
            self.assertEqual(sorted(s.event_codes), ["0 BOOTSTRAP", "1 BOOT"], s)
        t = [s.inform_msg.time for s in ss]
        self.assertTrue(1.0 - 0.05 <= t[1] - t[0] <= 2.0 + 0.5, f"first wait {t[1] - t[0]:.2f} s")
        self.assertTrue(2.0 - 0.05 <= t[2] - t[1] <= 4.0 + 0.5,
                        f"second wait {t[2] - t[1]:.2f} s")
        s4 = self.cr_session(a)
        self.assertEqual(s4.inform.retry_count, "0")
        self.assertNotIn("0 BOOTSTRAP", s4.event_codes)


class HoldRequestsTest(ConformanceTest):

    def _pending_transfer_complete(self, plan_for_tc_session):
        """Session 1: a Download; the agent fetches the file after it and opens a session
        with "7 TRANSFER COMPLETE", run with `plan_for_tc_session`. Returns that session."""
        self.make_acs()
        data = b"<config>conformance</config>\n" * 20
        self.acs.files["/files/cfg.xml"] = data
        self.acs.plan(Plan([download("dl-hold", self.acs.file_url("/files/cfg.xml"),
                                     len(data))]), plan_for_tc_session)
        a = self.make_agent()
        s1 = self.acs.wait_sessions(1)[0]
        self.assertEqual(s1.responses()[0].method, "DownloadResponse")
        s2 = self.acs.wait_session(lambda s: s.has_event("7 TRANSFER COMPLETE"), 1)
        return a, s2

    def _check(self, s):
        methods = [m.method for m in s.messages]
        self.assertEqual(methods[1], "", "after HoldRequests=true the CPE sends no request "
                                         f"in its next POST: {s.messages}")
        self.assertEqual([e for e in s.errors if "HoldRequests" in e], [])
        tcs = s.by_method("TransferComplete")
        self.assertEqual(len(tcs), 1, "the TransferComplete goes out in the same session "
                                      f"once the ACS stops holding: {s.messages}")
        self.assertGreater(s.messages.index(tcs[0]), methods.index("GetRPCMethodsResponse"))
        self.assertEqual(tcs[0].child("CommandKey"), "dl-hold")
        self.assertEqual(tcs[0].elem.find("FaultStruct").findtext("FaultCode"), "0")
        self.assertTrue(s.complete and not s.failed)

    def test_hold_requests_released_by_a_later_message_without_the_header(self):
        """TR-069 §3.5 HoldRequests, §3.7.1.4 (KNOWN DEFECT): with HoldRequests true on the
        InformResponse the CPE sends no request (an empty POST); a later ACS message without
        the header releases the hold, and the pending TransferComplete is sent in the same
        session."""
        _, s = self._pending_transfer_complete(
            Plan(["<cwmp:GetRPCMethods/>"], hold=True))
        self._check(s)

    def test_hold_requests_released_by_holdrequests_false(self):
        """TR-069 §3.5 HoldRequests, §3.7.1.4 (KNOWN DEFECT): as above, the hold released by a later
        request carrying HoldRequests false."""
        _, s = self._pending_transfer_complete(
            Plan([Req("<cwmp:GetRPCMethods/>", hold=False)], hold=True))
        self._check(s)


class EncodingAndHeadersTest(ConformanceTest):

    def test_gzip_compressed_acs_responses_are_decoded(self):
        """TR-069 §3.4 (HTTP compression) and TR-181 ManagementServer.HTTPCompression
        (KNOWN DEFECT): with
        HTTPCompression GZIP the CPE sends gzip bodies (Content-Encoding: gzip); ACS responses
        with Content-Encoding: gzip are decoded and the session succeeds."""
        self.make_acs()
        self.acs.plan(Plan([GPV_SERIAL, "<cwmp:GetRPCMethods/>"], gzip="mirror"))
        self.make_agent(params={"Device.ManagementServer.HTTPCompression": "GZIP"})
        s = self.acs.wait_session(lambda s: True, 0, timeout=20)
        self.assertEqual(s.inform_msg.encoding, "gzip", "the Inform is gzip-compressed")
        self.assertTrue(s.sent[0]["gzip"], "self-check: the InformResponse went out gzipped")
        self.assertFalse(s.failed)
        self.assertEqual([m.method for m in s.responses()],
                         ["GetParameterValuesResponse", "GetRPCMethodsResponse"],
                         f"the CPE decoded the gzip responses: {s.messages}, errors {s.errors}")
        self.assertEqual(s.responses()[0].param_values()["Device.DeviceInfo.SerialNumber"][0],
                         SERIAL)

    def test_unknown_mandatory_header_gives_a_mustunderstand_fault(self):
        """SOAP 1.1 §4.2.3 and §4.4.1, TR-069 §3.5 (KNOWN DEFECT): a header entry the CPE does
        not know, with soap-env:mustUnderstand="1", is answered with a SOAP fault whose
        faultcode is MustUnderstand (in the SOAP envelope namespace); the request is not
        carried out and the session goes on."""
        unknown = ('<x:Surprise xmlns:x="urn:example:conformance" '
                   'soap-env:mustUnderstand="1">1</x:Surprise>')
        _, s = self.boot(Plan([Req("<cwmp:GetRPCMethods/>", headers=unknown, valid=False),
                               GPV_SERIAL]))
        rs = s.responses()
        self.assertEqual(len(rs), 2, s.messages)
        self.assertEqual(rs[0].method, "Fault", rs[0].text[:600])
        prefix, _, name = rs[0].fault.faultcode.rpartition(":")
        self.assertEqual(name, "MustUnderstand", rs[0].fault)
        self.assertEqual(qname_namespace(rs[0].text, prefix), SOAP_ENV,
                         f"faultcode {rs[0].fault.faultcode!r} in the SOAP envelope namespace")
        self.assertEqual(rs[1].method, "GetParameterValuesResponse")

    def test_unknown_optional_header_is_ignored(self):
        """SOAP 1.1 §4.2.3: a header entry the CPE does not know with mustUnderstand="0" (or
        none) is ignored; the request is served."""
        unknown = ('<x:Optional xmlns:x="urn:example:conformance" '
                   'soap-env:mustUnderstand="0">1</x:Optional>')
        _, s = self.boot(Plan([Req("<cwmp:GetRPCMethods/>", headers=unknown, valid=False)]))
        self.assertEqual([m.method for m in s.responses()], ["GetRPCMethodsResponse"])

    def test_cpe_authenticates_to_the_acs_with_digest(self):
        """TR-069 §3.4.4: the CPE answers the ACS's HTTP Digest challenge with
        ManagementServer.Username/Password and the session proceeds on the same connection."""
        self.make_acs(auth=("digest", "cpe-user", "cpe pass:w0rd"))
        self.acs.plan(Plan([GPV_SERIAL]))
        self.make_agent(params={"Device.ManagementServer.Username": "cpe-user",
                                "Device.ManagementServer.Password": "cpe pass:w0rd"})
        s = self.acs.wait_sessions(1)[0]
        self.assertGreaterEqual(self.acs.auth_challenges, 1)
        self.assertEqual(self.acs.auth_ok, 1, "authenticated once, on one connection")
        self.assertEqual(len(s.conns), 1)
        self.assertEqual([m.method for m in s.messages],
                         ["Inform", "", "GetParameterValuesResponse"])


def qname_namespace(xml_text, prefix):
    """The namespace URI a prefix is bound to in the document (by its xmlns declaration)."""
    if not prefix:
        m = re.search(r'xmlns="([^"]*)"', xml_text)
    else:
        m = re.search(r'xmlns:%s="([^"]*)"' % re.escape(prefix), xml_text)
    return m.group(1) if m else None


SCHEDULE_DOWNLOAD = (
    "<cwmp:ScheduleDownload><CommandKey>sd-1</CommandKey>"
    "<FileType>3 Vendor Configuration File</FileType><URL>http://127.0.0.1:9/none</URL>"
    "<Username></Username><Password></Password><FileSize>10</FileSize>"
    "<TargetFileName>x.cfg</TargetFileName>"
    '<TimeWindowList soap-enc:arrayType="cwmp:TimeWindowStruct[1]"><TimeWindowStruct>'
    "<WindowStart>3600</WindowStart><WindowEnd>7200</WindowEnd>"
    "<WindowMode>1 At Any Time</WindowMode><UserMessage></UserMessage>"
    "<MaxRetries>0</MaxRetries></TimeWindowStruct></TimeWindowList></cwmp:ScheduleDownload>")


class NamespaceTest(ConformanceTest):

    def test_acs_speaking_cwmp_1_0(self):
        """TR-069 §3.5 (cwmp namespace / version) (KNOWN DEFECT): when the ACS answers the
        Inform in urn:dslforum-org:cwmp-1-0 the CPE uses that namespace for the rest of the
        session, every message valid against BBF cwmp-1-0.xsd, and methods that CWMP 1.0 does
        not have (ScheduleDownload of 1.2, GetAllQueuedTransfers of 1.1) get fault 9000."""
        _, s = self.boot(Plan([GPV_SERIAL, Req(SCHEDULE_DOWNLOAD, valid=False),
                               Req("<cwmp:GetAllQueuedTransfers/>", valid=False),
                               "<cwmp:GetRPCMethods/>"], ns="1-0"))
        rs = s.responses()
        self.assertEqual(len(rs), 4, s.messages)
        for m in s.after_inform():
            if not m.empty:
                self.assertEqual(m.cwmp_ns, CWMP["1-0"], f"{m} in {m.cwmp_ns}")
        self.assertEqual(rs[0].method, "GetParameterValuesResponse")
        self.assertFault(rs[1], 9000)
        self.assertFault(rs[2], 9000)
        self.assertEqual(rs[3].method, "GetRPCMethodsResponse")

    def test_acs_speaking_cwmp_1_1(self):
        """TR-069 §3.5 (cwmp namespace / version): with an ACS speaking urn:dslforum-org:cwmp-1-1 the
        CPE answers in cwmp-1-1 (valid against cwmp-1-1.xsd); GetAllQueuedTransfers (1.1) is
        served, ScheduleDownload (1.2) gets fault 9000."""
        _, s = self.boot(Plan(["<cwmp:GetAllQueuedTransfers/>",
                               Req(SCHEDULE_DOWNLOAD, valid=False), GPV_SERIAL], ns="1-1"))
        rs = s.responses()
        self.assertEqual(len(rs), 3, s.messages)
        for m in s.after_inform():
            if not m.empty:
                self.assertEqual(m.cwmp_ns, CWMP["1-1"], f"{m} in {m.cwmp_ns}")
        self.assertEqual(rs[0].method, "GetAllQueuedTransfersResponse")
        self.assertFault(rs[1], 9000)
        self.assertEqual(rs[2].method, "GetParameterValuesResponse")

    def test_cwmp_1_2_methods_are_served_in_cwmp_1_2(self):
        """TR-069 A.4 (positive control of the two tests above): in a cwmp-1-2 session
        ScheduleDownload and GetAllQueuedTransfers are served."""
        _, s = self.boot(Plan([SCHEDULE_DOWNLOAD, "<cwmp:GetAllQueuedTransfers/>"]))
        self.assertEqual([m.method for m in s.responses()],
                         ["ScheduleDownloadResponse", "GetAllQueuedTransfersResponse"])


if __name__ == "__main__":
    unittest.main()
