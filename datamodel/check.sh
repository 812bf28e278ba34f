#!/usr/bin/env bash
# Self-check for the data-model files in this directory.
#
#   datamodel/check.sh [FILE.xml ...]
#
# Without arguments it checks datamodel/*.xml (in load order) followed by
# datamodel/examples/*.xml. Steps:
#   1. xmllint --noout: every file is well-formed XML            (required)
#   2. xmllint --schema cwmp-datamodel-1-14.xsd                   (when it compiles)
#      libxml2 cannot compile this XSD 1.1 schema (it exits 5), so the step
#      reports "skipped" instead of failing.
#   3. XSD 1.1 validation with the Python "xmlschema" package     (when installed:
#      pip install xmlschema)
#   4. cwmpd subset rules (python3, standard library only): allowed elements and
#      attribute values, parents declared before children, numEntriesParameter /
#      enableParameter targets, no redefinition across files, defaults valid for
#      their syntax, vendor prefixes. Files are checked together, in the order
#      given, the way the agent loads them.
#
# BBF_DIR points at the Broadband Forum files (default: ../../shared/bbf
# relative to this script, i.e. shared/ next to the repository).
# Exit status: 0 when every step that ran passed, 1 otherwise.

set -u
here="$(cd "$(dirname "$0")" && pwd)"
BBF_DIR="${BBF_DIR:-$here/../../shared/bbf}"
xsd="$BBF_DIR/cwmp-datamodel-1-14.xsd"
report_xsd="$BBF_DIR/cwmp-datamodel-report-1-0.xsd"

if [ "$#" -gt 0 ]; then
    files=("$@")
else
    files=()
    for f in "$here"/*.xml "$here"/examples/*.xml; do
        [ -e "$f" ] && files+=("$f")
    done
fi
if [ "${#files[@]}" -eq 0 ]; then
    echo "check.sh: no files to check" >&2
    exit 1
fi

fail=0

# 1. well-formedness
if command -v xmllint >/dev/null 2>&1; then
    for f in "${files[@]}"; do
        if xmllint --noout --nonet "$f"; then
            echo "well-formed: ${f#"$here"/}"
        else
            echo "NOT WELL-FORMED: $f"
            fail=1
        fi
    done
else
    echo "xmllint not found (apt-get install -y libxml2-utils): well-formedness step skipped"
    fail=1
fi

# 2. xmllint schema validation, if libxml2 can compile the schema at all
if command -v xmllint >/dev/null 2>&1 && [ -f "$xsd" ]; then
    export XML_CATALOG_FILES="$BBF_DIR/offline/catalog.xml"
    xmllint --nonet --noout --schema "$xsd" "${files[0]}" >/dev/null 2>&1
    rc=$?
    if [ "$rc" -eq 5 ] || [ "$rc" -eq 4 ]; then
        echo "xmllint schema validation: skipped (libxml2 cannot compile the XSD 1.1 schema $(basename "$xsd"))"
    else
        for f in "${files[@]}"; do
            if xmllint --nonet --noout --schema "$xsd" "$f"; then :; else fail=1; fi
        done
    fi
    unset XML_CATALOG_FILES
elif [ ! -f "$xsd" ]; then
    echo "schema $xsd not found: schema steps skipped (set BBF_DIR)"
fi

if ! command -v python3 >/dev/null 2>&1; then
    echo "python3 not found: XSD 1.1 and subset checks skipped"
    exit "$fail"
fi

# 3. XSD 1.1 validation (optional dependency)
if [ -f "$xsd" ] && python3 -c 'import xmlschema' >/dev/null 2>&1; then
    python3 - "$xsd" "$report_xsd" "${files[@]}" <<'PY' || fail=1
import sys, xmlschema
xsd, report, files = sys.argv[1], sys.argv[2], sys.argv[3:]
schema = xmlschema.XMLSchema11(
    xsd,
    locations=[("urn:broadband-forum-org:cwmp:datamodel-report-1-0", report)],
    allow="local", defuse="never")
bad = 0
for f in files:
    try:
        errors = list(schema.iter_errors(f))
    except Exception as e:  # not well-formed: already reported by step 1
        bad = 1
        print("XSD 1.1 INVALID: %s (%s)" % (f, e))
        continue
    if errors:
        bad = 1
        print("XSD 1.1 INVALID: %s" % f)
        for e in errors[:10]:
            print("    %s at %s" % (e.reason, e.path))
    else:
        print("XSD 1.1 valid: %s" % f.rsplit("/datamodel/", 1)[-1])
sys.exit(bad)
PY
else
    echo "XSD 1.1 validation: skipped (python3 module xmlschema not installed)"
fi

# 4. subset rules
python3 - "${files[@]}" <<'PY' || fail=1
import re, sys
import xml.etree.ElementTree as ET

NS = "urn:broadband-forum-org:cwmp:datamodel-1-14"
TYPES = {"string", "int", "unsignedInt", "long", "unsignedLong", "boolean",
         "dateTime", "base64", "hexBinary", "decimal"}
INT_LIMITS = {"int": (-2**31, 2**31 - 1), "unsignedInt": (0, 2**32 - 1),
              "long": (-2**63, 2**63 - 1), "unsignedLong": (0, 2**64 - 1)}
FACETS = {"string": {"size", "enumeration", "pattern"},
          "base64": {"size"}, "hexBinary": {"size"},
          "int": {"range"}, "unsignedInt": {"range"}, "long": {"range"},
          "unsignedLong": {"range"}, "decimal": {"range"},
          "boolean": set(), "dateTime": set()}
ACCESS_P = {"readOnly", "readWrite", "writeOnceReadOnly"}
NOTIFY = {"normal", "forceEnabled", "forceDefaultEnabled", "canDeny"}
SEG = r"[A-Za-z_][A-Za-z0-9_-]*"
OBJ_RE = re.compile(r"^Device\.(%s\.(\{i\}\.)?)*$" % SEG)
PARAM_RE = re.compile(r"^%s$" % SEG)
# TR-106 3.3: X_<OUI>_ (6 upper-case hex digits) or X_<DOMAIN>_ (upper case,
# dots written as hyphens), e.g. X_00D09E_Foo, X_EXAMPLE-COM_Foo
VENDOR_RE = re.compile(r"^X_([0-9A-F]{6}|[0-9A-Z][0-9A-Z-]*)_[A-Za-z0-9]")
DATETIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)?$")

errors = []
objects = {}        # path -> {"params": {name: syntax-info}, "file": f}
order = []

def err(f, msg):
    errors.append("%s: %s" % (f, msg))

def parent_of(path):
    # "Device.A.{i}.B." -> "Device.A.{i}."; "Device.A.{i}." -> "Device."
    body = path[:-1]
    if body.endswith(".{i}"):
        body = body[:-4]
    cut = body.rfind(".")
    return None if cut < 0 else body[:cut + 1]

def check_value(f, where, syn, value):
    if syn["list"] is not None:
        lst = syn["list"]
        if lst.get("maxLength") is not None and len(value) > lst["maxLength"]:
            err(f, "%s: default longer than the list maxLength" % where)
        items = [] if value == "" else [v.strip() for v in value.split(",")]
        if lst.get("maxItems") is not None and len(items) > lst["maxItems"]:
            err(f, "%s: default has too many items" % where)
        if lst.get("minItems") is not None and len(items) < lst["minItems"]:
            err(f, "%s: default has too few items" % where)
    else:
        items = [value]
    for v in items:
        t = syn["type"]
        if t == "boolean":
            if v not in ("true", "false", "1", "0"):
                err(f, "%s: default %r is not a boolean" % (where, v))
        elif t in INT_LIMITS:
            if not re.fullmatch(r"[+-]?\d+", v):
                err(f, "%s: default %r is not an integer" % (where, v)); continue
            n = int(v); lo, hi = INT_LIMITS[t]
            if not lo <= n <= hi:
                err(f, "%s: default %r outside the %s type" % (where, v, t))
            if syn["ranges"] and not any(
                    (r[0] is None or n >= r[0]) and (r[1] is None or n <= r[1])
                    and (not r[2] or (n - (r[0] or 0)) % r[2] == 0)
                    for r in syn["ranges"]):
                err(f, "%s: default %r outside the range facets" % (where, v))
        elif t == "dateTime":
            if not DATETIME_RE.match(v):
                err(f, "%s: default %r is not a dateTime" % (where, v))
        elif t == "string":
            if syn["maxLength"] is not None and len(v) > syn["maxLength"]:
                err(f, "%s: default %r longer than maxLength" % (where, v))
            if syn["minLength"] is not None and len(v) < syn["minLength"]:
                err(f, "%s: default %r shorter than minLength" % (where, v))
            if syn["enums"] and v not in syn["enums"]:
                err(f, "%s: default %r not in the enumeration" % (where, v))
            if syn["patterns"] and not any(re.fullmatch(p, v) for p in syn["patterns"]):
                err(f, "%s: default %r matches no pattern" % (where, v))

def num(f, where, s, allow_unbounded=False):
    if s is None:
        return None
    if allow_unbounded and s == "unbounded":
        return float("inf")
    if not re.fullmatch(r"\d+", s):
        err(f, "%s: %r is not a non-negative number" % (where, s)); return None
    return int(s)

def parse_syntax(f, where, sx):
    syn = {"list": None, "type": None, "minLength": None, "maxLength": None,
           "ranges": [], "enums": [], "patterns": [], "default": None}
    for a in sx.attrib:
        if a not in ("hidden", "secured"):
            err(f, "%s: unknown syntax attribute %s" % (where, a))
    kids = [c for c in sx if isinstance(c.tag, str)]
    i = 0
    if i < len(kids) and kids[i].tag == "list":
        l = kids[i]; i += 1
        syn["list"] = {"minItems": num(f, where, l.get("minItems")),
                       "maxItems": num(f, where, l.get("maxItems"))}
        for c in l:
            if c.tag != "size":
                err(f, "%s: unexpected <%s> in <list>" % (where, c.tag))
            else:
                syn["list"]["maxLength"] = num(f, where, c.get("maxLength"))
    if i >= len(kids) or kids[i].tag not in TYPES:
        err(f, "%s: syntax needs exactly one base type element" % where)
        return syn
    t = kids[i]; i += 1
    syn["type"] = t.tag
    for c in t:
        if c.tag not in FACETS[t.tag]:
            err(f, "%s: facet <%s> not allowed in <%s>" % (where, c.tag, t.tag)); continue
        if c.tag == "size":
            syn["minLength"] = num(f, where, c.get("minLength"))
            syn["maxLength"] = num(f, where, c.get("maxLength"))
        elif c.tag == "range":
            lo, hi, st = (c.get(k) for k in ("minInclusive", "maxInclusive", "step"))
            try:
                syn["ranges"].append((None if lo is None else int(lo),
                                      None if hi is None else int(hi),
                                      None if st is None else int(st)))
            except ValueError:
                err(f, "%s: non-integer range bound" % where)
        elif c.tag == "enumeration":
            syn["enums"].append(c.get("value"))
        elif c.tag == "pattern":
            try:
                re.compile(c.get("value"))
                syn["patterns"].append(c.get("value"))
            except re.error:
                err(f, "%s: bad pattern %r" % (where, c.get("value")))
    if i < len(kids) and kids[i].tag == "default":
        d = kids[i]; i += 1
        if d.get("type") not in ("object", "factory"):
            err(f, "%s: default type must be object or factory" % where)
        if d.get("value") is None:
            err(f, "%s: default without value" % where)
        else:
            syn["default"] = d.get("value")
            check_value(f, where, syn, d.get("value"))
    for c in kids[i:]:
        err(f, "%s: unexpected <%s> in <syntax>" % (where, c.tag))
    return syn

def vendor_check(f, path, local):
    for seg in local.replace("{i}", "").split("."):
        if seg.startswith("X_") and not VENDOR_RE.match(seg):
            err(f, "%s: vendor name %r needs X_<OUI>_ or X_<DOMAIN>_" % (path, seg))

def add_param(short, path, entry, p):
    name = p.get("name", "")
    where = path + name
    if p.get("base") is not None:
        err(short, "%s%s: parameters cannot be amended with base=" % (path, p.get("base")))
        return 0
    if not PARAM_RE.match(name):
        err(short, "bad parameter name %r in %s" % (name, path)); return 0
    vendor_check(short, where, name)
    if name in entry["params"]:
        err(short, "%s is already declared" % where); return 0
    if p.get("access") not in ACCESS_P:
        err(short, "%s: bad access %r" % (where, p.get("access")))
    if p.get("activeNotify", "normal") not in NOTIFY:
        err(short, "%s: bad activeNotify" % where)
    if p.get("forcedInform", "false") not in ("true", "false"):
        err(short, "%s: bad forcedInform" % where)
    sxs = [c for c in p if c.tag == "syntax"]
    if len(sxs) != 1:
        err(short, "%s: needs one <syntax>" % where); return 0
    syn = parse_syntax(short, where, sxs[0])
    syn["access"] = p.get("access")
    entry["params"][name] = syn
    return 1

counts = []
for f in sys.argv[1:]:
    short = f.rsplit("/datamodel/", 1)[-1]
    try:
        root = ET.parse(f).getroot()
    except ET.ParseError as e:
        err(short, "not well-formed: %s" % e); continue
    if root.tag != "{%s}document" % NS:
        err(short, "root element must be dm:document in namespace %s" % NS); continue
    nobj = npar = 0
    for model in root:
        if not isinstance(model.tag, str) or model.tag == "description":
            continue
        if model.tag != "model":
            err(short, "unexpected top-level <%s>" % model.tag); continue
        for o in model:
            if not isinstance(o.tag, str) or o.tag == "description":
                continue
            if o.tag != "object":
                err(short, "unexpected <%s> in <model>" % o.tag); continue
            if o.get("base") is not None:
                # <object base="PATH">: add parameters to an object declared
                # by an earlier file; every parameter in it must be new.
                path = o.get("base")
                if path not in objects:
                    err(short, "base object %s is not declared by an earlier file" % path)
                    continue
                if o.get("name") is not None:
                    err(short, "%s: object has both name and base" % path)
                entry = objects[path]
                for p in o:
                    if not isinstance(p.tag, str) or p.tag in ("description", "uniqueKey"):
                        continue
                    if p.tag != "parameter":
                        err(short, "%s: unexpected <%s>" % (path, p.tag)); continue
                    npar += add_param(short, path, entry, p)
                continue
            path = o.get("name", "")
            if not OBJ_RE.match(path) or len(path) > 256:
                err(short, "bad object name %r" % path); continue
            vendor_check(short, path, path)
            if path in objects:
                err(short, "%s redefines an object from %s (use <object base=...> to add parameters)"
                    % (path, objects[path]["file"]))
                continue
            par = parent_of(path)
            if par is not None and par not in objects:
                err(short, "%s: parent %s is not declared before it" % (path, par))
            table = path.endswith(".{i}.")
            acc = o.get("access")
            if acc not in ("readOnly", "readWrite"):
                err(short, "%s: access must be readOnly or readWrite" % path)
            if acc == "readWrite" and not table:
                err(short, "%s: only tables ({i}) can be readWrite" % path)
            mn = num(short, path, o.get("minEntries"))
            mx = num(short, path, o.get("maxEntries"), allow_unbounded=True)
            if mn is None or mx is None:
                err(short, "%s: minEntries and maxEntries are required" % path)
            elif mn > mx:
                err(short, "%s: minEntries > maxEntries" % path)
            elif not table and mx != 1:
                err(short, "%s: an object without {i} has maxEntries 1" % path)
            nep = o.get("numEntriesParameter")
            if nep is not None:
                if not table:
                    err(short, "%s: numEntriesParameter on a non-table" % path)
                pp = objects.get(par, {}).get("params", {}).get(nep)
                if pp is None:
                    err(short, "%s: numEntriesParameter %s not declared in %s" % (path, nep, par))
                elif pp["type"] != "unsignedInt" or pp["access"] != "readOnly" or pp["list"]:
                    err(short, "%s: %s%s must be unsignedInt readOnly" % (path, par, nep))
            elif table and (mx is None or mx > 1):
                err(short, "%s: table without numEntriesParameter" % path)
            entry = {"params": {}, "file": short}
            nobj += 1
            for p in o:
                if not isinstance(p.tag, str) or p.tag in ("description", "uniqueKey"):
                    continue
                if p.tag != "parameter":
                    err(short, "%s: unexpected <%s>" % (path, p.tag)); continue
                npar += add_param(short, path, entry, p)
            ep = o.get("enableParameter")
            if ep is not None:
                s = entry["params"].get(ep)
                if s is None or s["type"] != "boolean":
                    err(short, "%s: enableParameter %s is not a boolean parameter of the object" % (path, ep))
            objects[path] = entry
            order.append(path)
    counts.append((short, nobj, npar))

for short, nobj, npar in counts:
    print("subset: %-30s %3d objects %4d parameters" % (short, nobj, npar))
print("subset: total %d objects, %d parameters" % (
    sum(c[1] for c in counts), sum(c[2] for c in counts)))
for e in errors:
    print("SUBSET ERROR: " + e)
sys.exit(1 if errors else 0)
PY

if [ "$fail" -eq 0 ]; then
    echo "check.sh: all checks passed"
else
    echo "check.sh: FAILED"
fi
exit "$fail"
