"""TR-069 Annex A.3 (baseline RPCs) and A.4 (optional RPCs the agent offers): each method on its
success path and with its faults (A.5), against the real agent. Every ACS request is written
out as the XML that goes on the wire."""

import unittest

from acs import Plan, Req
from harness import SERIAL, ConformanceTest, gpv, wait_until

# An InformResponse header that makes the session CWMP 1.4 (cwmp-1-4.xsd).
USE_1_4 = '<cwmp:UseCWMPVersion soap-env:mustUnderstand="1">1.4</cwmp:UseCWMPVersion>'

MS = "Device.ManagementServer."
REQUIRED_METHODS = ["GetRPCMethods", "GetParameterNames", "GetParameterValues",
                    "SetParameterValues", "GetParameterAttributes", "SetParameterAttributes",
                    "AddObject", "DeleteObject", "Reboot", "Download"]
LONG_KEY = "k" * 33  # one more than the schema's 32 (ParameterKeyType, CommandKeyType)


def value(session, name):
    """The value of `name` in the session's last GetParameterValuesResponse that has it."""
    for m in reversed(session.responses()):
        if m.method == "GetParameterValuesResponse":
            vals = m.param_values()
            if name in vals:
                return vals[name][0]
    raise AssertionError(f"{name} not read in {session}")


class GetRPCMethodsTest(ConformanceTest):

    def test_get_rpc_methods_lists_every_required_method(self):
        """TR-069 A.3.1.1 GetRPCMethods: the MethodList names every method the CPE supports,
        at least all the required CPE methods of Annex A.3 (Table: GetRPCMethods,
        Get/SetParameterValues, GetParameterNames, Get/SetParameterAttributes, Add/DeleteObject,
        Reboot, Download), each once."""
        _, s = self.boot(Plan(["<cwmp:GetRPCMethods/>"]))
        m = s.responses()[0]
        self.assertEqual(m.method, "GetRPCMethodsResponse")
        methods = m.methods()
        for name in REQUIRED_METHODS:
            self.assertIn(name, methods)
        self.assertEqual(len(methods), len(set(methods)), methods)
        self.assertEqual(m.elem.find("MethodList").get(
            "{http://schemas.xmlsoap.org/soap/encoding/}arrayType"), f"xsd:string[{len(methods)}]")

    def test_unknown_method_gives_9000(self):
        """TR-069 A.5 fault 9000 (Method not supported) and §3.7.1.2: a method the CPE does not
        implement, an invented one or an optional one it does not offer (SetVouchers,
        GetOptions), is answered with fault 9000 and the session goes on."""
        _, s = self.boot(Plan([
            Req("<cwmp:X_CONFORMANCE_NoSuchMethod><Arg>1</Arg></cwmp:X_CONFORMANCE_NoSuchMethod>",
                valid=False),
            '<cwmp:SetVouchers><VoucherList soap-enc:arrayType="xsd:base64[1]">'
            "<base64>AAECAw==</base64></VoucherList></cwmp:SetVouchers>",
            "<cwmp:GetOptions><OptionName></OptionName></cwmp:GetOptions>",
            "<cwmp:GetRPCMethods/>",
        ]))
        rs = s.responses()
        self.assertEqual(len(rs), 4, s.messages)
        methods = rs[3].methods()
        for r, name in zip(rs[:3], ["X_CONFORMANCE_NoSuchMethod", "SetVouchers", "GetOptions"]):
            if name in methods:
                continue  # offered: not a 9000 case
            self.assertFault(r, 9000)
            self.assertEqual(r.fault.faultcode.rpartition(":")[2], "Server", r.fault)
        self.assertEqual(rs[3].method, "GetRPCMethodsResponse")


class GetParameterNamesTest(ConformanceTest):

    def test_next_level_true_lists_only_the_children(self):
        """TR-069 A.3.2.3 GetParameterNames, NextLevel true on a partial path: the immediate
        child parameters and objects (objects end with '.'), not the object itself nor deeper
        items; Writable tells whether each is writable."""
        _, s = self.boot(Plan([
            "<cwmp:GetParameterNames><ParameterPath>Device.ManagementServer.</ParameterPath>"
            "<NextLevel>true</NextLevel></cwmp:GetParameterNames>"]))
        names = s.responses()[0].param_names()
        self.assertIn(MS + "URL", names)
        self.assertIn(MS + "InformParameter.", names)
        self.assertNotIn(MS, names)
        for n in names:
            self.assertTrue(n.startswith(MS))
            rest = n[len(MS):]
            self.assertNotIn(".", rest.rstrip("."), f"{n} is not an immediate child")
        self.assertIn(names[MS + "URL"], ("true", "1"))
        self.assertIn(names[MS + "ParameterKey"], ("false", "0"))
        self.assertIn(names[MS + "InformParameter."], ("true", "1"),
                      "a writable table: AddObject allowed")

    def test_next_level_false_lists_the_whole_subtree_and_the_object(self):
        """TR-069 A.3.2.3 GetParameterNames, NextLevel false on a partial path: the object
        itself and every parameter and object below it, at all levels (instances included)."""
        _, s = self.boot(Plan([
            "<cwmp:GetParameterNames><ParameterPath>Device.XMPP.</ParameterPath>"
            "<NextLevel>false</NextLevel></cwmp:GetParameterNames>"]),
            params={"Device.XMPP.Connection.1.Domain": "conformance.test",
                    "Device.XMPP.Connection.1.Server.1.Port": 5222})
        names = s.responses()[0].param_names()
        for n in ["Device.XMPP.", "Device.XMPP.ConnectionNumberOfEntries",
                  "Device.XMPP.Connection.", "Device.XMPP.Connection.1.",
                  "Device.XMPP.Connection.1.Domain", "Device.XMPP.Connection.1.Server.1.Port",
                  "Device.XMPP.Connection.1.Stats.ReceivedMessages"]:
            self.assertIn(n, names)
        self.assertTrue(all(n.startswith("Device.XMPP.") for n in names))

    def test_parameter_path_forms(self):
        """TR-069 A.3.2.3 GetParameterNames: a full parameter path with NextLevel false gives
        that one parameter; with NextLevel true fault 9003; an empty path with NextLevel true
        gives the root object "Device."; an unknown path gives fault 9005."""
        gpn = ("<cwmp:GetParameterNames><ParameterPath>{}</ParameterPath>"
               "<NextLevel>{}</NextLevel></cwmp:GetParameterNames>")
        _, s = self.boot(Plan([
            gpn.format("Device.DeviceInfo.SerialNumber", "false"),
            gpn.format("Device.DeviceInfo.SerialNumber", "true"),
            gpn.format("", "true"),
            gpn.format("Device.NoSuchObject.", "false"),
            gpn.format("Device.DeviceInfo.NoSuchParameter", "false"),
        ]))
        rs = s.responses()
        self.assertEqual(list(rs[0].param_names()), ["Device.DeviceInfo.SerialNumber"])
        self.assertIn(rs[0].param_names()["Device.DeviceInfo.SerialNumber"], ("false", "0"))
        self.assertFault(rs[1], 9003)
        self.assertEqual(list(rs[2].param_names()), ["Device."])
        self.assertFault(rs[3], 9005)
        self.assertFault(rs[4], 9005)


class GetParameterValuesTest(ConformanceTest):

    def test_partial_path_gives_every_parameter_below(self):
        """TR-069 A.3.2.2 GetParameterValues with a partial path: the values of every
        parameter below the object (parameters only, full names), each with its xsi:type."""
        _, s = self.boot(Plan([
            '<cwmp:GetParameterValues><ParameterNames soap-enc:arrayType="xsd:string[1]">'
            "<string>Device.DeviceInfo.</string></ParameterNames></cwmp:GetParameterValues>"]))
        vals = s.responses()[0].param_values()
        self.assertEqual(vals["Device.DeviceInfo.SerialNumber"], (SERIAL, "xsd:string"))
        self.assertEqual(vals["Device.DeviceInfo.ManufacturerOUI"][0], "00D09E")
        self.assertEqual(vals["Device.DeviceInfo.UpTime"][1], "xsd:unsignedInt")
        self.assertIn("Device.DeviceInfo.MemoryStatus.Total", vals)
        for n, (v, t) in vals.items():
            self.assertTrue(n.startswith("Device.DeviceInfo.") and not n.endswith("."), n)
            self.assertTrue(t and t.startswith("xsd:"), f"{n} xsi:type {t!r}")

    def test_several_names_and_hidden_values(self):
        """TR-069 A.3.2.2: several names in one request are all answered; a password
        (TR-181 hidden/secured, e.g. ConnectionRequestPassword) reads back as an empty
        string."""
        _, s = self.boot(Plan([
            '<cwmp:GetParameterValues><ParameterNames soap-enc:arrayType="xsd:string[3]">'
            "<string>Device.DeviceInfo.SerialNumber</string>"
            "<string>Device.ManagementServer.ConnectionRequestPassword</string>"
            "<string>Device.ManagementServer.PeriodicInformEnable</string>"
            "</ParameterNames></cwmp:GetParameterValues>"]))
        vals = s.responses()[0].param_values()
        self.assertEqual(vals[MS + "ConnectionRequestPassword"][0], "")
        self.assertEqual(vals["Device.DeviceInfo.SerialNumber"][0], SERIAL)
        self.assertEqual(vals[MS + "PeriodicInformEnable"], ("false", "xsd:boolean"))

    def test_invalid_name_gives_9005(self):
        """TR-069 A.3.2.2 and A.5: an unknown parameter name (alone, or among valid ones), or
        an unknown partial path, gives fault 9005."""
        _, s = self.boot(Plan([
            gpv("Device.DeviceInfo.NoSuchParameter"),
            gpv("Device.DeviceInfo.SerialNumber", "Device.NoSuchObject."),
            gpv("Device.ManagementServer.URL."),
        ]))
        for r in s.responses():
            self.assertFault(r, 9005)


class SetParameterValuesTest(ConformanceTest):

    def test_success_applies_the_values_and_the_parameter_key(self):
        """TR-069 A.3.2.1 SetParameterValues: on success Status is 0 (applied) or 1
        (committed, applied later), the new values read back, and
        ManagementServer.ParameterKey takes the request's ParameterKey (also in the next
        Inform)."""
        a, s = self.boot(Plan([
            '<cwmp:SetParameterValues><ParameterList soap-enc:arrayType='
            '"cwmp:ParameterValueStruct[3]">'
            "<ParameterValueStruct><Name>Device.ManagementServer.PeriodicInformInterval</Name>"
            '<Value xsi:type="xsd:unsignedInt">1200</Value></ParameterValueStruct>'
            "<ParameterValueStruct><Name>Device.DeviceInfo.ProvisioningCode</Name>"
            '<Value xsi:type="xsd:string">PC-&amp;-1</Value></ParameterValueStruct>'
            "<ParameterValueStruct><Name>Device.ManagementServer.PeriodicInformTime</Name>"
            '<Value xsi:type="xsd:dateTime">2030-01-02T03:04:05Z</Value></ParameterValueStruct>'
            "</ParameterList><ParameterKey>pk-success</ParameterKey></cwmp:SetParameterValues>",
            gpv(MS + "PeriodicInformInterval", "Device.DeviceInfo.ProvisioningCode",
                MS + "ParameterKey", MS + "PeriodicInformTime"),
        ]))
        rs = s.responses()
        self.assertEqual(rs[0].method, "SetParameterValuesResponse", rs[0].text[:800])
        self.assertIn(rs[0].child("Status"), ("0", "1"))
        vals = rs[1].param_values()
        self.assertEqual(vals[MS + "PeriodicInformInterval"][0], "1200")
        self.assertEqual(vals["Device.DeviceInfo.ProvisioningCode"][0], "PC-&-1")
        self.assertEqual(vals[MS + "ParameterKey"][0], "pk-success")
        self.assertEqual(vals[MS + "PeriodicInformTime"][0], "2030-01-02T03:04:05Z")
        s2 = self.cr_session(a)
        self.assertEqual(s2.inform.params[MS + "ParameterKey"], "pk-success")

    def test_one_bad_value_fails_the_whole_request(self):
        """TR-069 A.3.2.1 (atomic SetParameterValues) and A.5: one invalid value (out of range)
        among valid ones: fault 9003 with a SetParameterValuesFault 9007 for that parameter
        only; no value is applied and ParameterKey keeps its value."""
        _, s = self.boot(Plan([
            '<cwmp:SetParameterValues><ParameterList soap-enc:arrayType='
            '"cwmp:ParameterValueStruct[1]"><ParameterValueStruct>'
            "<Name>Device.DeviceInfo.ProvisioningCode</Name>"
            '<Value xsi:type="xsd:string">before</Value></ParameterValueStruct></ParameterList>'
            "<ParameterKey>pk-before</ParameterKey></cwmp:SetParameterValues>",
            '<cwmp:SetParameterValues><ParameterList soap-enc:arrayType='
            '"cwmp:ParameterValueStruct[3]">'
            "<ParameterValueStruct><Name>Device.DeviceInfo.ProvisioningCode</Name>"
            '<Value xsi:type="xsd:string">after</Value></ParameterValueStruct>'
            "<ParameterValueStruct><Name>Device.ManagementServer.PeriodicInformInterval</Name>"
            '<Value xsi:type="xsd:unsignedInt">777</Value></ParameterValueStruct>'
            "<ParameterValueStruct>"
            "<Name>Device.ManagementServer.CWMPRetryIntervalMultiplier</Name>"
            '<Value xsi:type="xsd:unsignedInt">5</Value></ParameterValueStruct>'
            "</ParameterList><ParameterKey>pk-after</ParameterKey></cwmp:SetParameterValues>",
            gpv("Device.DeviceInfo.ProvisioningCode", MS + "PeriodicInformInterval",
                MS + "CWMPRetryIntervalMultiplier", MS + "ParameterKey"),
        ]))
        rs = s.responses()
        self.assertEqual(rs[0].method, "SetParameterValuesResponse")
        self.assertFault(rs[1], 9003, spv=[(MS + "CWMPRetryIntervalMultiplier", 9007)])
        vals = rs[2].param_values()
        self.assertEqual(vals["Device.DeviceInfo.ProvisioningCode"][0], "before")
        self.assertNotEqual(vals[MS + "PeriodicInformInterval"][0], "777")
        self.assertNotEqual(vals[MS + "CWMPRetryIntervalMultiplier"][0], "5")
        self.assertEqual(vals[MS + "ParameterKey"][0], "pk-before")

    def test_read_only_unknown_and_wrong_type_faults(self):
        """TR-069 A.3.2.1 and A.5: SetParameterValues faults with 9003 and one
        SetParameterValuesFault per failing parameter: 9008 for a read-only parameter, 9005
        for an unknown name, 9006 for a value whose xsi:type is not the parameter's type
        (xsd:boolean for an unsignedInt); nothing is applied."""
        _, s = self.boot(Plan([
            '<cwmp:SetParameterValues><ParameterList soap-enc:arrayType='
            '"cwmp:ParameterValueStruct[1]"><ParameterValueStruct>'
            "<Name>Device.DeviceInfo.Manufacturer</Name>"
            '<Value xsi:type="xsd:string">Other Co</Value></ParameterValueStruct></ParameterList>'
            "<ParameterKey>pk-ro</ParameterKey></cwmp:SetParameterValues>",
            '<cwmp:SetParameterValues><ParameterList soap-enc:arrayType='
            '"cwmp:ParameterValueStruct[1]"><ParameterValueStruct>'
            "<Name>Device.DeviceInfo.NoSuchParameter</Name>"
            '<Value xsi:type="xsd:string">x</Value></ParameterValueStruct></ParameterList>'
            "<ParameterKey>pk-unknown</ParameterKey></cwmp:SetParameterValues>",
            '<cwmp:SetParameterValues><ParameterList soap-enc:arrayType='
            '"cwmp:ParameterValueStruct[2]">'
            "<ParameterValueStruct><Name>Device.ManagementServer.PeriodicInformInterval</Name>"
            '<Value xsi:type="xsd:boolean">true</Value></ParameterValueStruct>'
            "<ParameterValueStruct><Name>Device.DeviceInfo.ProvisioningCode</Name>"
            '<Value xsi:type="xsd:string">typed</Value></ParameterValueStruct>'
            "</ParameterList><ParameterKey>pk-type</ParameterKey></cwmp:SetParameterValues>",
            gpv("Device.DeviceInfo.Manufacturer", "Device.DeviceInfo.ProvisioningCode",
                MS + "ParameterKey"),
        ]))
        rs = s.responses()
        self.assertFault(rs[0], 9003, spv=[("Device.DeviceInfo.Manufacturer", 9008)])
        self.assertFault(rs[1], 9003, spv=[("Device.DeviceInfo.NoSuchParameter", 9005)])
        self.assertFault(rs[2], 9003, spv=[(MS + "PeriodicInformInterval", 9006)])
        vals = rs[3].param_values()
        self.assertEqual(vals["Device.DeviceInfo.Manufacturer"][0], "Conformance Co")
        self.assertEqual(vals["Device.DeviceInfo.ProvisioningCode"][0], "")
        self.assertEqual(vals[MS + "ParameterKey"][0], "")

    def test_boolean_values_in_any_case_are_accepted(self):
        """TR-069 A.3.2.1 with TR-106 boolean (KNOWN DEFECT): SetParameterValues accepts the
        boolean values "TRUE" and "False" as true and false, and they read back in canonical
        form. A leniency for ACSes that send them: XML Schema's xs:boolean (which an
        xsi:type="xsd:boolean" Value is validated as) allows only true/false/1/0."""
        _, s = self.boot(Plan([
            Req('<cwmp:SetParameterValues><ParameterList soap-enc:arrayType='
                '"cwmp:ParameterValueStruct[2]">'
                "<ParameterValueStruct><Name>Device.ManagementServer.PeriodicInformEnable</Name>"
                '<Value xsi:type="xsd:boolean">TRUE</Value></ParameterValueStruct>'
                "<ParameterValueStruct><Name>Device.ManagementServer.UpgradesManaged</Name>"
                '<Value xsi:type="xsd:boolean">False</Value></ParameterValueStruct>'
                "</ParameterList><ParameterKey>pk-bool</ParameterKey></cwmp:SetParameterValues>",
                valid=False),  # xs:boolean's lexical space is true/false/1/0 only
            gpv(MS + "PeriodicInformEnable", MS + "UpgradesManaged"),
            '<cwmp:SetParameterValues><ParameterList soap-enc:arrayType='
            '"cwmp:ParameterValueStruct[1]">'
            "<ParameterValueStruct><Name>Device.ManagementServer.PeriodicInformEnable</Name>"
            '<Value xsi:type="xsd:boolean">false</Value></ParameterValueStruct>'
            "</ParameterList><ParameterKey>pk-bool-2</ParameterKey></cwmp:SetParameterValues>",
        ]), params={MS + "UpgradesManaged": True, MS + "PeriodicInformInterval": 3600})
        rs = s.responses()
        self.assertEqual(rs[0].method, "SetParameterValuesResponse", rs[0].text[:800])
        vals = rs[1].param_values()
        self.assertEqual(vals[MS + "PeriodicInformEnable"][0], "true")
        self.assertEqual(vals[MS + "UpgradesManaged"][0], "false")

    def test_parameter_key_longer_than_32_characters_is_refused(self):
        """TR-069 A.3.2.1 (ParameterKey string(32)) and A.5 (KNOWN DEFECT): a
        SetParameterValues whose ParameterKey has 33 characters gets fault 9003 and applies
        nothing."""
        _, s = self.boot(Plan([
            Req('<cwmp:SetParameterValues><ParameterList soap-enc:arrayType='
                '"cwmp:ParameterValueStruct[1]"><ParameterValueStruct>'
                "<Name>Device.DeviceInfo.ProvisioningCode</Name>"
                '<Value xsi:type="xsd:string">long-key</Value></ParameterValueStruct>'
                f"</ParameterList><ParameterKey>{LONG_KEY}</ParameterKey>"
                "</cwmp:SetParameterValues>", valid=False),
            gpv("Device.DeviceInfo.ProvisioningCode", MS + "ParameterKey"),
        ]))
        rs = s.responses()
        self.assertFault(rs[0], 9003)
        vals = rs[1].param_values()
        self.assertEqual(vals["Device.DeviceInfo.ProvisioningCode"][0], "")
        self.assertEqual(vals[MS + "ParameterKey"][0], "")


def add_object(name, key):
    return (f"<cwmp:AddObject><ObjectName>{name}</ObjectName>"
            f"<ParameterKey>{key}</ParameterKey></cwmp:AddObject>")


def delete_object(name, key):
    return (f"<cwmp:DeleteObject><ObjectName>{name}</ObjectName>"
            f"<ParameterKey>{key}</ParameterKey></cwmp:DeleteObject>")


class ObjectTest(ConformanceTest):

    def test_add_and_delete_object_never_reuse_instance_numbers(self):
        """TR-069 A.3.2.6 AddObject and A.3.2.7 DeleteObject: AddObject returns a new
        InstanceNumber (>= 1) and Status 0/1, the instance appears, ParameterKey is updated;
        DeleteObject removes it; an instance number is never reused, neither after a delete
        nor after a restart."""
        conn = "Device.XMPP.Connection."

        def delete_first(s):
            n = s.responses()[0].child("InstanceNumber")
            return delete_object(f"{conn}{n}.", "pk-del")

        a, s = self.boot(Plan([
            add_object(conn, "pk-add-1"),
            gpv(MS + "ParameterKey", "Device.XMPP.ConnectionNumberOfEntries"),
            delete_first,
            gpv(MS + "ParameterKey", "Device.XMPP.ConnectionNumberOfEntries"),
            add_object(conn, "pk-add-2"),
            "<cwmp:GetParameterNames><ParameterPath>Device.XMPP.Connection.</ParameterPath>"
            "<NextLevel>true</NextLevel></cwmp:GetParameterNames>",
        ]))
        rs = s.responses()
        self.assertEqual(rs[0].method, "AddObjectResponse", rs[0].text[:600])
        n1 = int(rs[0].child("InstanceNumber"))
        self.assertGreaterEqual(n1, 1)
        self.assertIn(rs[0].child("Status"), ("0", "1"))
        self.assertEqual(rs[1].param_values()[MS + "ParameterKey"][0], "pk-add-1")
        self.assertEqual(rs[1].param_values()["Device.XMPP.ConnectionNumberOfEntries"][0], "1")
        self.assertEqual(rs[2].method, "DeleteObjectResponse", rs[2].text[:600])
        self.assertIn(rs[2].child("Status"), ("0", "1"))
        self.assertEqual(rs[3].param_values()[MS + "ParameterKey"][0], "pk-del")
        self.assertEqual(rs[3].param_values()["Device.XMPP.ConnectionNumberOfEntries"][0], "0")
        n2 = int(rs[4].child("InstanceNumber"))
        self.assertGreater(n2, n1, "an instance number is not reused after a delete")
        self.assertEqual(list(rs[5].param_names()), [f"{conn}{n2}."])
        a.restart()
        self.acs.wait_sessions(2)
        s3 = self.run_session(a, add_object(conn, "pk-add-3"))
        n3 = int(s3.responses()[0].child("InstanceNumber"))
        self.assertGreater(n3, n2, "nor after a restart")

    def test_object_faults(self):
        """TR-069 A.3.2.6/A.3.2.7 and A.5: AddObject on an unknown object or on an object that
        is not a writable table, and DeleteObject of an instance that does not exist, are
        faults (9005 for a name that names nothing; 9005 or 9003 for a non-table); ParameterKey
        is unchanged after each."""
        _, s = self.boot(Plan([
            add_object("Device.NoSuchTable.", "pk-f1"),
            add_object("Device.DeviceInfo.", "pk-f2"),
            delete_object("Device.XMPP.Connection.77.", "pk-f3"),
            gpv(MS + "ParameterKey"),
        ]))
        rs = s.responses()
        self.assertFault(rs[0], 9005)
        self.assertEqual(rs[1].method, "Fault")
        self.assertIn(rs[1].fault.code, (9003, 9005), rs[1].fault)
        self.assertFault(rs[2], 9005)
        self.assertEqual(rs[3].param_values()[MS + "ParameterKey"][0], "")

    def test_parameter_key_longer_than_32_characters_is_refused(self):
        """TR-069 A.3.2.6/A.3.2.7 (ParameterKey string(32)) and A.5 (KNOWN DEFECT): AddObject
        and DeleteObject with a 33-character ParameterKey get fault 9003 and change nothing."""
        _, s = self.boot(Plan([
            Req(add_object("Device.XMPP.Connection.", LONG_KEY), valid=False),
            Req(delete_object("Device.XMPP.Connection.1.", LONG_KEY), valid=False),
            gpv("Device.XMPP.ConnectionNumberOfEntries", MS + "ParameterKey"),
        ]), params={"Device.XMPP.Connection.1.Domain": "conformance.test"})
        rs = s.responses()
        self.assertFault(rs[0], 9003)
        self.assertFault(rs[1], 9003)
        vals = rs[2].param_values()
        self.assertEqual(vals["Device.XMPP.ConnectionNumberOfEntries"][0], "1")
        self.assertEqual(vals[MS + "ParameterKey"][0], "")


def spa(name, notification=None, access_list=None):
    nc = "true" if notification is not None else "false"
    ac = "true" if access_list is not None else "false"
    al = "".join(f"<string>{x}</string>" for x in (access_list or []))
    return ('<cwmp:SetParameterAttributes><ParameterList soap-enc:arrayType='
            '"cwmp:SetParameterAttributesStruct[1]"><SetParameterAttributesStruct>'
            f"<Name>{name}</Name><NotificationChange>{nc}</NotificationChange>"
            f"<Notification>{notification if notification is not None else 0}</Notification>"
            f"<AccessListChange>{ac}</AccessListChange>"
            f'<AccessList soap-enc:arrayType="xsd:string[{len(access_list or [])}]">{al}'
            "</AccessList></SetParameterAttributesStruct></ParameterList>"
            "</cwmp:SetParameterAttributes>")


def gpa(*names):
    return (f'<cwmp:GetParameterAttributes><ParameterNames soap-enc:arrayType='
            f'"xsd:string[{len(names)}]">'
            + "".join(f"<string>{n}</string>" for n in names)
            + "</ParameterNames></cwmp:GetParameterAttributes>")


class AttributesTest(ConformanceTest):

    def test_set_and_get_parameter_attributes(self):
        """TR-069 A.3.2.4 SetParameterAttributes and A.3.2.5 GetParameterAttributes: a
        Notification set with NotificationChange true, and an AccessList set with
        AccessListChange true, read back; with NotificationChange false the Notification
        argument is ignored; a partial path in GetParameterAttributes covers every parameter
        below it."""
        host = "Device.DeviceInfo.HostName"
        ntp = "Device.Time.NTPServer1"
        _, s = self.boot(Plan([
            spa(host, notification=2),
            spa(ntp, notification=1, access_list=["Subscriber"]),
            '<cwmp:SetParameterAttributes><ParameterList soap-enc:arrayType='
            '"cwmp:SetParameterAttributesStruct[1]"><SetParameterAttributesStruct>'
            f"<Name>{host}</Name><NotificationChange>false</NotificationChange>"
            "<Notification>0</Notification><AccessListChange>false</AccessListChange>"
            '<AccessList soap-enc:arrayType="xsd:string[0]"></AccessList>'
            "</SetParameterAttributesStruct></ParameterList></cwmp:SetParameterAttributes>",
            gpa(host, ntp),
            gpa("Device.Time."),
        ]))
        rs = s.responses()
        self.assertEqual([r.method for r in rs[:3]], ["SetParameterAttributesResponse"] * 3,
                         rs[0].text[:600])
        attrs = rs[3].param_attributes()
        self.assertEqual(attrs[host], ("2", []))
        self.assertEqual(attrs[ntp], ("1", ["Subscriber"]))
        sub = rs[4].param_attributes()
        self.assertIn(ntp, sub)
        self.assertIn("Device.Time.LocalTimeZone", sub)
        self.assertTrue(all(n.startswith("Device.Time.") and not n.endswith(".") for n in sub))

    def test_attribute_faults(self):
        """TR-069 A.3.2.4/A.3.2.5 and A.5: an unknown name gives 9005; switching off the
        notification of a parameter whose active notification is forced (SoftwareVersion,
        forceEnabled) gives 9009."""
        _, s = self.boot(Plan([
            spa("Device.DeviceInfo.NoSuchParameter", notification=1),
            gpa("Device.DeviceInfo.NoSuchParameter"),
            spa("Device.DeviceInfo.SoftwareVersion", notification=0),
            gpa("Device.DeviceInfo.SoftwareVersion"),
        ]))
        rs = s.responses()
        self.assertFault(rs[0], 9005)
        self.assertFault(rs[1], 9005)
        self.assertFault(rs[2], 9009)
        self.assertEqual(rs[3].param_attributes()["Device.DeviceInfo.SoftwareVersion"][0], "2")

    def test_lightweight_notification_values_are_accepted_in_cwmp_1_4(self):
        """TR-069 A.3.2.4 with cwmp-1-4.xsd ParameterAttributeNotificationValueType (0-6; 3-6
        are the UDP Lightweight Notifications of Annex M, which the agent offers: TR-181
        LightweightNotificationProtocolsSupported = UDP): in a session the ACS made CWMP 1.4
        (UseCWMPVersion 1.4) SetParameterAttributes with Notification 3, 4, 5 or 6
        succeeds and GetParameterAttributes reads each back; 7 is outside the schema's range
        and gets fault 9003 leaving the attribute unchanged."""
        host = "Device.DeviceInfo.HostName"
        plan = []
        for n in (3, 4, 5, 6):
            plan += [spa(host, notification=n), gpa(host)]
        plan += [Req(spa(host, notification=7), valid=False), gpa(host)]
        a, s = self.boot(Plan(plan, inform_headers=USE_1_4))
        rs = s.responses()
        for i, n in enumerate((3, 4, 5, 6)):
            self.assertEqual(rs[2 * i].method, "SetParameterAttributesResponse", rs[2 * i])
            self.assertEqual(rs[2 * i + 1].param_attributes()[host][0], str(n))
        self.assertFault(rs[8], 9003)
        self.assertEqual(rs[9].param_attributes()[host][0], "6")

    def test_lightweight_notification_values_are_refused_in_cwmp_1_0(self):
        """TR-069 A.3.2.4 with cwmp-1-0.xsd, whose Notification is 0-2 (lightweight
        notifications came with CWMP 1.4): when the ACS speaks urn:dslforum-org:cwmp-1-0,
        SetParameterAttributes with Notification 3-6 gets fault 9003 and leaves the
        attribute unchanged."""
        host = "Device.DeviceInfo.HostName"
        _, s = self.boot(Plan([Req(spa(host, notification=n), valid=False) for n in (3, 4, 5, 6)]
                              + [gpa(host)], ns="1-0"))
        rs = s.responses()
        for r in rs[:4]:
            self.assertFault(r, 9003)
        self.assertEqual(rs[4].param_attributes()[host][0], "0")

    def test_lightweight_notification_values_are_refused_in_cwmp_1_2(self):
        """cwmp-1-2.xsd (and cwmp-1-3.xsd) list Notification 3-6 as "Reserved for future use":
        an ACS answering in cwmp-1-2 without UseCWMPVersion is a CWMP 1.2 ACS, and
        SetParameterAttributes with 3-6 gets fault 9003, leaving the attribute unchanged."""
        host = "Device.DeviceInfo.HostName"
        _, s = self.boot(Plan([Req(spa(host, notification=n), valid=False) for n in (3, 4, 5, 6)]
                              + [gpa(host)]))
        rs = s.responses()
        for r in rs[:4]:
            self.assertFault(r, 9003)
        self.assertEqual(rs[4].param_attributes()[host][0], "0")


class RebootTest(ConformanceTest):

    def test_reboot_reports_m_reboot_with_boot_after_the_restart(self):
        """TR-069 A.3.2.9 Reboot and §3.7.1.5 (KNOWN DEFECT): RebootResponse, then the reboot
        (the configured command, after the session); "M Reboot" with the Reboot's CommandKey is
        delivered together with "1 BOOT" in the first Inform after the restart, never in a
        session before it."""
        a, s = self.boot(Plan(["<cwmp:Reboot><CommandKey>rb-42</CommandKey></cwmp:Reboot>"]))
        self.assertEqual(s.responses()[0].method, "RebootResponse")
        wait_until(lambda: a.reboot_marker.exists(), what="the reboot command")
        a.stop()  # the box goes down
        before = self.acs.snapshot()[1:]
        self.assertFalse([x for x in before if x.has_event("M Reboot")],
                         f"M Reboot delivered before the reboot: {before}")
        n = len(self.acs.snapshot())
        a.start()
        s2 = self.acs.wait_session(lambda x: True, n)
        self.assertIn("1 BOOT", s2.event_codes)
        self.assertIn(("M Reboot", "rb-42"), s2.events)

    def test_reboot_command_key_longer_than_32_characters_is_refused(self):
        """TR-069 A.3.2.9 (CommandKey string(32)) and A.5 (KNOWN DEFECT): a Reboot with a
        33-character CommandKey gets fault 9003 and no reboot follows."""
        a, s = self.boot(Plan([Req(f"<cwmp:Reboot><CommandKey>{LONG_KEY}</CommandKey>"
                                   "</cwmp:Reboot>", valid=False)]))
        self.assertFault(s.responses()[0], 9003)
        self.cr_session(a)  # a session after it: a scheduled reboot would have run by now
        self.assertFalse(a.reboot_marker.exists(), "the refused Reboot was carried out")


class FactoryResetTest(ConformanceTest):

    def test_factory_reset_restores_factory_values_and_bootstraps(self):
        """TR-069 A.4.1.6 FactoryReset and §3.7.1.5 (KNOWN DEFECT for the URL): after a
        FactoryReset the device is back to its factory values and its next Inform carries
        "0 BOOTSTRAP" with a non-empty ConnectionRequestURL."""
        a, s = self.boot(Plan([
            '<cwmp:SetParameterValues><ParameterList soap-enc:arrayType='
            '"cwmp:ParameterValueStruct[1]"><ParameterValueStruct>'
            "<Name>Device.DeviceInfo.ProvisioningCode</Name>"
            '<Value xsi:type="xsd:string">provisioned</Value></ParameterValueStruct>'
            "</ParameterList><ParameterKey>pk-fr</ParameterKey></cwmp:SetParameterValues>",
            "<cwmp:FactoryReset/>",
        ]))
        rs = s.responses()
        self.assertEqual([r.method for r in rs],
                         ["SetParameterValuesResponse", "FactoryResetResponse"])
        wait_until(lambda: a.factory_marker.exists(), what="the factory-reset command")
        self.acs.plan(Plan([gpv("Device.DeviceInfo.ProvisioningCode", MS + "ParameterKey")]))

        def bootstrap():
            return next((x for x in self.acs.snapshot()[1:]
                         if x.has_event("0 BOOTSTRAP") and x.complete), None)
        if bootstrap() is None:
            a.stop()  # the box reboots after its factory reset
            if bootstrap() is None:
                a.start()
        s2 = wait_until(bootstrap, what="the BOOTSTRAP session after the factory reset")
        self.assertTrue(s2.inform.params.get(MS + "ConnectionRequestURL"),
                        f"ConnectionRequestURL empty in the BOOTSTRAP Inform: {s2.inform.params}")
        self.assertEqual(s2.inform.params.get(MS + "ParameterKey"), "")
        vals = s2.responses()[0].param_values()
        self.assertEqual(vals["Device.DeviceInfo.ProvisioningCode"][0], "")


class ScheduleInformTest(ConformanceTest):

    def test_schedule_inform_gives_scheduled_and_m_scheduleinform(self):
        """TR-069 A.4.1.2 ScheduleInform and §3.7.1.5: after DelaySeconds the CPE opens a
        session whose Inform carries "3 SCHEDULED" and "M ScheduleInform" with the request's
        CommandKey."""
        a, s = self.boot(Plan(["<cwmp:ScheduleInform><DelaySeconds>1</DelaySeconds>"
                               "<CommandKey>sched-7</CommandKey></cwmp:ScheduleInform>"]))
        self.assertEqual(s.responses()[0].method, "ScheduleInformResponse")
        t0 = s.responses()[0].time
        s2 = self.acs.wait_session(lambda x: x.has_event("M ScheduleInform"), 1)
        self.assertIn("3 SCHEDULED", s2.event_codes)
        self.assertIn(("M ScheduleInform", "sched-7"), s2.events)
        self.assertGreaterEqual(s2.inform_msg.time - t0, 0.9)

    def test_command_keys_longer_than_32_characters_are_refused(self):
        """TR-069 A.4.1.2 ScheduleInform and A.3.2.8 Download (CommandKey string(32)) and A.5
        (KNOWN DEFECT): a 33-character CommandKey gets fault 9003."""
        _, s = self.boot(Plan([
            Req("<cwmp:ScheduleInform><DelaySeconds>1</DelaySeconds>"
                f"<CommandKey>{LONG_KEY}</CommandKey></cwmp:ScheduleInform>", valid=False),
            Req(f"<cwmp:Download><CommandKey>{LONG_KEY}</CommandKey>"
                "<FileType>3 Vendor Configuration File</FileType>"
                "<URL>http://127.0.0.1:9/cfg.xml</URL><Username></Username><Password></Password>"
                "<FileSize>10</FileSize><TargetFileName>cfg.xml</TargetFileName>"
                "<DelaySeconds>0</DelaySeconds><SuccessURL></SuccessURL><FailureURL></FailureURL>"
                "</cwmp:Download>", valid=False),
            "<cwmp:GetAllQueuedTransfers/>",
        ]))
        rs = s.responses()
        self.assertFault(rs[0], 9003)
        self.assertFault(rs[1], 9003)
        self.assertEqual(rs[2].elem.find("TransferList").findall("AllQueuedTransferStruct"), [],
                         "the refused Download is not queued")


class DownloadTest(ConformanceTest):

    def test_download_is_reported_by_transfer_complete(self):
        """TR-069 A.3.2.8 Download, A.3.3.2 TransferComplete and §3.7.1.5: DownloadResponse
        Status 1 (not yet done); the file is fetched and installed after the session; then a
        session with "7 TRANSFER COMPLETE" and "M Download" (CommandKey) in which the CPE calls
        TransferComplete with that CommandKey, FaultCode 0 and its start/complete times."""
        self.make_acs()
        data = b"<config>download test</config>\n" * 10
        self.acs.files["/files/dl.cfg"] = data
        self.acs.plan(Plan([
            "<cwmp:Download><CommandKey>dl-1</CommandKey>"
            "<FileType>3 Vendor Configuration File</FileType>"
            f"<URL>{self.acs.file_url('/files/dl.cfg')}</URL>"
            "<Username></Username><Password></Password>"
            f"<FileSize>{len(data)}</FileSize><TargetFileName>dl.cfg</TargetFileName>"
            "<DelaySeconds>0</DelaySeconds><SuccessURL></SuccessURL><FailureURL></FailureURL>"
            "</cwmp:Download>"]))
        a = self.make_agent()
        s = self.acs.wait_sessions(1)[0]
        r = s.responses()[0]
        self.assertEqual(r.method, "DownloadResponse", r.text[:600])
        self.assertIn(r.child("Status"), ("0", "1"))
        s2 = self.acs.wait_session(lambda x: x.has_event("7 TRANSFER COMPLETE"), 1)
        self.assertIn(("M Download", "dl-1"), s2.events)
        tcs = s2.by_method("TransferComplete")
        self.assertEqual(len(tcs), 1, s2.messages)
        tc = tcs[0]
        self.assertEqual(tc.child("CommandKey"), "dl-1")
        self.assertEqual(tc.elem.find("FaultStruct").findtext("FaultCode"), "0")
        self.assertNotEqual(tc.child("CompleteTime"), "0001-01-01T00:00:00Z")
        self.assertLess(s2.messages.index(tc), [m.method for m in s2.messages].index(""),
                        "TransferComplete before the empty POST")
        self.assertEqual(a.installed.read_bytes(), data)


if __name__ == "__main__":
    unittest.main()
