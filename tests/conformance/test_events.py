"""TR-069 §3.7.1.5, Table 7 event codes: when each event is raised, its multiplicity, its
retention across failed sessions and restarts, and notifications (A.3.2.4), against the real
agent."""

import unittest

from acs import Plan
from connreq import http_cr
from harness import CR_PASS, CR_USER, ConformanceTest, wait_until

MS = "Device.ManagementServer."
HOST = "Device.DeviceInfo.HostName"
NTP = "Device.Time.NTPServer1"


def spa(name, notification):
    return ('<cwmp:SetParameterAttributes><ParameterList soap-enc:arrayType='
            '"cwmp:SetParameterAttributesStruct[1]"><SetParameterAttributesStruct>'
            f"<Name>{name}</Name><NotificationChange>true</NotificationChange>"
            f"<Notification>{notification}</Notification>"
            "<AccessListChange>false</AccessListChange>"
            '<AccessList soap-enc:arrayType="xsd:string[0]"></AccessList>'
            "</SetParameterAttributesStruct></ParameterList></cwmp:SetParameterAttributes>")


def schedule_inform(delay, key):
    return (f"<cwmp:ScheduleInform><DelaySeconds>{delay}</DelaySeconds>"
            f"<CommandKey>{key}</CommandKey></cwmp:ScheduleInform>")


class RetentionTest(ConformanceTest):

    def test_bootstrap_is_kept_until_delivered(self):
        """TR-069 §3.7.1.5 (0 BOOTSTRAP): a BOOTSTRAP whose session failed is retried, also
        after a restart, until an InformResponse acknowledges it; never again afterwards."""
        self.make_acs()
        self.acs.plan(Plan(inform_status=500))
        a = self.make_agent()
        s0 = self.acs.wait_sessions(1)[0]
        self.assertTrue(s0.failed)
        self.assertIn("0 BOOTSTRAP", s0.event_codes)
        a.restart()
        s1 = self.acs.wait_sessions(2)[1]
        self.assertEqual(sorted(s1.event_codes), ["0 BOOTSTRAP", "1 BOOT"])
        a.restart()
        s2 = self.acs.wait_sessions(3)[2]
        self.assertEqual(s2.event_codes, ["1 BOOT"])

    def test_connection_request_event_is_not_retried(self):
        """TR-069 §3.7.1.5 and §3.2.1.1 (6 CONNECTION REQUEST): the event of a connection
        request whose session fails is discarded: the retry carries the other undelivered
        events (BOOTSTRAP, BOOT) but not "6 CONNECTION REQUEST"."""
        self.make_acs()
        self.acs.plan(Plan(inform_status=500), Plan(inform_status=500), Plan())
        a = self.make_agent(params={MS + "CWMPRetryMinimumWaitInterval": 1,
                                    MS + "CWMPRetryIntervalMultiplier": 2000})
        self.acs.wait_sessions(1)
        r = http_cr(a.connection_request_url(), CR_USER, CR_PASS)
        self.assertIn(r.status, (200, 204), r)
        with_cr = self.acs.wait_session(lambda s: s.has_event("6 CONNECTION REQUEST"), 1)
        self.assertTrue(with_cr.failed, "self-check: the ACS failed the CR session")
        later = self.acs.wait_session(lambda s: not s.failed, with_cr.index + 1, timeout=30)
        self.assertEqual(later.index, with_cr.index + 1, self.acs.snapshot())
        self.assertNotIn("6 CONNECTION REQUEST", later.event_codes)
        self.assertIn("0 BOOTSTRAP", later.event_codes)
        self.assertIn("1 BOOT", later.event_codes)

    def test_method_events_are_retried_and_kept_across_a_restart(self):
        """TR-069 §3.7.1.5 (M ScheduleInform): the "M ScheduleInform" event (with its
        CommandKey) of a failed session is not lost: after a restart the first Inform carries
        it with "1 BOOT"."""
        a, _ = self.boot(Plan([schedule_inform(1, "keep-me")]))
        self.acs.plan(Plan(inform_status=500))
        failed = self.acs.wait_session(lambda s: s.has_event("M ScheduleInform"), 1)
        self.assertTrue(failed.failed)
        a.restart()
        s = self.acs.wait_session(lambda x: x.has_event("1 BOOT"), failed.index + 1)
        self.assertIn(("M ScheduleInform", "keep-me"), s.events)

    def test_transfer_complete_is_retried_after_a_failed_session(self):
        """TR-069 §3.7.1.5 (7 TRANSFER COMPLETE, M Download) and A.3.3.2: when the session
        reporting a finished Download fails, the retry again carries "7 TRANSFER COMPLETE" and
        "M Download" and the CPE calls TransferComplete in it."""
        self.make_acs()
        data = b"retry me\n" * 30
        self.acs.files["/f/r.cfg"] = data
        self.acs.plan(Plan([
            "<cwmp:Download><CommandKey>dl-retry</CommandKey>"
            "<FileType>3 Vendor Configuration File</FileType>"
            f"<URL>{self.acs.file_url('/f/r.cfg')}</URL><Username></Username>"
            f"<Password></Password><FileSize>{len(data)}</FileSize>"
            "<TargetFileName>r.cfg</TargetFileName><DelaySeconds>0</DelaySeconds>"
            "<SuccessURL></SuccessURL><FailureURL></FailureURL></cwmp:Download>"]),
            Plan(inform_status=500))
        self.make_agent(params={MS + "CWMPRetryMinimumWaitInterval": 1})
        first = self.acs.wait_session(lambda s: s.has_event("7 TRANSFER COMPLETE"), 1)
        self.assertTrue(first.failed)
        again = self.acs.wait_session(lambda s: s.has_event("7 TRANSFER COMPLETE"),
                                      first.index + 1)
        self.assertIn(("M Download", "dl-retry"), again.events)
        tcs = again.by_method("TransferComplete")
        self.assertEqual([t.child("CommandKey") for t in tcs], ["dl-retry"])


class TriggerTest(ConformanceTest):

    def test_periodic_inform(self):
        """TR-069 §3.7.1.5 (2 PERIODIC) and TR-181 PeriodicInform*: with PeriodicInformEnable
        true the CPE opens a session with "2 PERIODIC" every PeriodicInformInterval seconds."""
        self.make_acs()
        self.make_agent(params={MS + "PeriodicInformEnable": True,
                                MS + "PeriodicInformInterval": 2})
        p1 = self.acs.wait_session(lambda s: s.has_event("2 PERIODIC"), 0)
        p2 = self.acs.wait_session(lambda s: s.has_event("2 PERIODIC"), p1.index + 1)
        gap = p2.inform_msg.time - p1.inform_msg.time
        self.assertTrue(1.5 <= gap <= 2.8, f"{gap:.2f} s between periodic informs")

    def test_schedule_inform_events_are_single_and_multiple(self):
        """TR-069 §3.7.1.5, Table 7: "3 SCHEDULED" is a single event (at most one per Inform),
        "M ScheduleInform" a multiple one (one per ScheduleInform, each with its CommandKey):
        two ScheduleInforms are both reported, each Inform with at most one "3 SCHEDULED"."""
        _, _ = self.boot(Plan([schedule_inform(1, "si-a"), schedule_inform(1, "si-b")]))

        def both():
            ss = [s for s in self.acs.snapshot()[1:] if s.complete]
            keys = [k for s in ss for c, k in s.events if c == "M ScheduleInform"]
            return ss if sorted(keys) == ["si-a", "si-b"] else None
        ss = wait_until(both, what="both M ScheduleInform events")
        for s in ss:
            if s.has_event("M ScheduleInform"):
                self.assertEqual(s.event_codes.count("3 SCHEDULED"), 1, s.events)


class NotificationTest(ConformanceTest):

    def test_active_notification_opens_a_session(self):
        """TR-069 A.3.2.4 (Notification 2) and §3.7.1.5 (4 VALUE CHANGE): a device-side change
        of a parameter with active notification makes the CPE open a session whose Inform has
        "4 VALUE CHANGE" and the new value in its ParameterList."""
        a, _ = self.boot(Plan([spa(HOST, 2)]))
        self.assertTrue(a.set(HOST, "box-active")["ok"])
        s = self.acs.wait_session(lambda x: x.has_event("4 VALUE CHANGE"), 1)
        self.assertEqual(s.inform.params.get(HOST), "box-active")
        self.assertEqual(s.event_codes.count("4 VALUE CHANGE"), 1)

    def test_passive_notification_waits_for_the_next_session(self):
        """TR-069 A.3.2.4 (Notification 1): a device-side change of a parameter with passive
        notification opens no session of its own; the next session (here one opened by a
        connection request) carries "4 VALUE CHANGE" and the new value."""
        a, _ = self.boot(Plan([spa(NTP, 1)]))
        self.assertTrue(a.set(NTP, "ntp.conformance.test")["ok"])
        s = self.cr_session(a, start=1)
        self.assertEqual(s.index, 1, f"a session before the CR one: {self.acs.snapshot()}")
        self.assertIn("4 VALUE CHANGE", s.event_codes)
        self.assertEqual(s.inform.params.get(NTP), "ntp.conformance.test")

    def test_value_change_is_one_event_for_several_changes(self):
        """TR-069 §3.7.1.5, Table 7 (4 VALUE CHANGE is single): several changed parameters,
        passive and active, are reported in one Inform with one "4 VALUE CHANGE"."""
        a, _ = self.boot(Plan([spa(NTP, 1), spa(HOST, 2)]))
        self.assertTrue(a.set(NTP, "ntp-2.conformance.test")["ok"])
        self.assertTrue(a.set(HOST, "box-2")["ok"])
        s = self.acs.wait_session(lambda x: x.has_event("4 VALUE CHANGE"), 1)
        self.assertEqual(s.event_codes.count("4 VALUE CHANGE"), 1, s.events)
        self.assertEqual(s.inform.params.get(NTP), "ntp-2.conformance.test")
        self.assertEqual(s.inform.params.get(HOST), "box-2")

    def test_forced_active_notification(self):
        """TR-181 activeNotify forceEnabled (DeviceInfo.ProvisioningCode) with TR-069 A.3.2.4:
        a device-side change opens a session with "4 VALUE CHANGE" without any
        SetParameterAttributes."""
        a, _ = self.boot()
        self.assertTrue(a.set("Device.DeviceInfo.ProvisioningCode", "PC-LOCAL")["ok"])
        s = self.acs.wait_session(lambda x: x.has_event("4 VALUE CHANGE"), 1)
        self.assertEqual(s.inform.params.get("Device.DeviceInfo.ProvisioningCode"), "PC-LOCAL")

    def test_changes_made_by_the_acs_are_not_notified(self):
        """TR-069 A.3.2.4 (KNOWN DEFECT): changes the ACS itself makes (SetParameterValues,
        AddObject) are not notified back: neither the ParameterKey they set nor the
        *NumberOfEntries that AddObject changes nor the set parameter come back as
        "4 VALUE CHANGE", even with notification on."""
        n_entries = "Device.XMPP.ConnectionNumberOfEntries"
        a, _ = self.boot(Plan([spa(n_entries, 2), spa(HOST, 2), spa(MS + "ParameterKey", 1)]))
        changed = self.run_session(
            a,
            '<cwmp:SetParameterValues><ParameterList soap-enc:arrayType='
            '"cwmp:ParameterValueStruct[1]"><ParameterValueStruct>'
            f'<Name>{HOST}</Name><Value xsi:type="xsd:string">acs-set</Value>'
            "</ParameterValueStruct></ParameterList><ParameterKey>pk-vc-1</ParameterKey>"
            "</cwmp:SetParameterValues>",
            "<cwmp:AddObject><ObjectName>Device.XMPP.Connection.</ObjectName>"
            "<ParameterKey>pk-vc-2</ParameterKey></cwmp:AddObject>")
        self.assertEqual([m.method for m in changed.responses()],
                         ["SetParameterValuesResponse", "AddObjectResponse"])
        n = changed.index + 1  # the next session must be the one the CR below opens
        s = self.cr_session(a, start=n)
        self.assertEqual(s.index, n, f"a session of its own after the ACS's changes: "
                                     f"{self.acs.snapshot()[n:]}")
        self.assertNotIn("4 VALUE CHANGE", s.event_codes)
        self.assertNotIn(HOST, s.inform.params)
        self.assertNotIn(n_entries, s.inform.params)
        self.assertEqual(s.inform.params.get(MS + "ParameterKey"), "pk-vc-2")


if __name__ == "__main__":
    unittest.main()
