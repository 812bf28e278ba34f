"""Validation of CWMP envelopes against the BBF schemas with xmllint, offline.

Each message is checked against the schema of the cwmp namespace it uses, through the strict
drivers in tests/schema (a Header or Body element the schema does not declare fails, where the
lax stand-in used by the Rust tests would skip it):

    urn:dslforum-org:cwmp-1-0  ->  cwmp-envelope-1-0.xsd       (BBF cwmp-1-0.xsd)
    urn:dslforum-org:cwmp-1-1  ->  cwmp-envelope-1-1.xsd       (BBF cwmp-1-1.xsd)
    urn:dslforum-org:cwmp-1-2  ->  cwmp-envelope-1-4.xsd       (BBF cwmp-1-4.xsd, with 1-3, 1-2)
                               and cwmp-envelope-1-2-only.xsd  (BBF cwmp-1-2.xsd alone), unless
                                   the message carries a CWMP 1.3/1.4 header (SessionTimeout,
                                   SupportedCWMPVersions, UseCWMPVersion)

Any other namespace (cwmp-1-3/1-4 are in no schema) is an error.
"""

import os
import pathlib
import re
import shutil
import subprocess
import tempfile

from acs import CWMP, local

SCHEMA_DIR = pathlib.Path(__file__).resolve().parents[1] / "schema"
CATALOG = SCHEMA_DIR / "catalog.xml"
V13_HEADERS = {"SessionTimeout", "SupportedCWMPVersions", "UseCWMPVersion"}


def xmllint():
    return shutil.which("xmllint")


def drivers_for(cwmp_ns, header_names=()):
    """The driver schema files for a message in namespace `cwmp_ns` (None: no schema)."""
    if cwmp_ns == CWMP["1-0"]:
        return ["cwmp-envelope-1-0.xsd"]
    if cwmp_ns == CWMP["1-1"]:
        return ["cwmp-envelope-1-1.xsd"]
    if cwmp_ns == CWMP["1-2"]:
        if V13_HEADERS & set(header_names):
            return ["cwmp-envelope-1-4.xsd"]
        return ["cwmp-envelope-1-4.xsd", "cwmp-envelope-1-2-only.xsd"]
    return None


def validate(docs):
    """docs: list of (label, xml bytes, cwmp namespace URI, header local names).

    Returns a list of (label, driver, error text) for every failure (empty: all valid).
    xmllint runs once per driver with all its files.
    """
    failures = []
    by_driver = {}
    with tempfile.TemporaryDirectory(prefix="cwmp-xsd-") as tmp:
        for i, (label, data, ns, headers) in enumerate(docs):
            drivers = drivers_for(ns, headers)
            if drivers is None:
                failures.append((label, "-", f"cwmp namespace {ns!r} has no BBF schema"))
                continue
            path = os.path.join(tmp, f"m{i:04d}.xml")
            with open(path, "wb") as f:
                f.write(data)
            for d in drivers:
                by_driver.setdefault(d, []).append((label, path))
        for driver, files in by_driver.items():
            env = dict(os.environ, XML_CATALOG_FILES=str(CATALOG))
            out = subprocess.run(
                [xmllint(), "--nonet", "--noout", "--schema", str(SCHEMA_DIR / driver)]
                + [p for _, p in files],
                env=env, capture_output=True, text=True, timeout=120)
            err = out.stderr
            for label, path in files:
                if f"{path} validates" in err:
                    continue
                lines = [ln.replace(path, "msg") for ln in err.splitlines()
                         if ln.startswith(path + ":")]
                failures.append((label, driver, "; ".join(lines) or err.strip()[-500:]))
    return failures


def message_docs(sessions, orphans=()):
    """The CPE's non-empty messages of `sessions` as validate() input."""
    docs = []
    for s in sessions:
        for m in s.messages:
            if m.empty:
                continue
            label = f"session {s.index} message {m.seq} ({m.method or 'unparsed'})"
            docs.append((label, m.body, m.cwmp_ns, [local(h.tag) for h in m.header_elems]))
    for m in orphans:
        if not m.empty:
            docs.append((f"message {m.seq} outside a session ({m.method})", m.body, m.cwmp_ns,
                         [local(h.tag) for h in m.header_elems]))
    return docs


_NS_RE = re.compile(rb'xmlns:cwmp="([^"]+)"')


def acs_docs(sessions):
    """The ACS's own envelopes that the tests wrote to be valid (self-check of the tests)."""
    docs = []
    for s in sessions:
        for rec in s.sent:
            if not rec.get("valid") or not rec.get("body"):
                continue
            data = rec["body"].encode("utf-8")
            m = _NS_RE.search(data)
            hdrs = re.findall(r"<cwmp:(\w+)", rec["body"].split("<soap-env:Body>")[0])
            docs.append((f"ACS envelope {rec.get('method')} of session {s.index}", data,
                         m.group(1).decode() if m else None, hdrs))
    return docs
