"""promql.py - what the tests of dist/prometheus and dist/grafana share.

- metric_refs(expr): the metric names and label matchers a PromQL
  expression selects, found by a small tokenizer (strings, comments,
  durations, label lists after by/without/on/ignoring/group_*, function
  and aggregation names are told apart from metric names).
- check_syntax(exprs, promtool): every expression parsed by Prometheus's
  own parser. promtool 2.42 has no "check expression" command, so each one
  becomes a recording rule of a throwaway rules file and `promtool check
  rules` parses it; a failure names the expression.
- grafana_expressions(dashboard): every PromQL expression of a dashboard
  (panel targets, nested panels of rows, templating queries), with Grafana's
  variables replaced by values PromQL accepts.
- rules_expressions(path): the alert and record expressions of a rules file
  shaped like dist/prometheus/remotetask.rules.yml (single-line or block
  scalar expr:), without a YAML library (python3-yaml is not among the
  packages scripts/lib.sh installs); anything else in an expr is an error.
- scrape_families(text): what a /metrics scrape exports: the families (from
  "# TYPE", so that a family without series yet counts), their sample
  names (a histogram's _bucket, _sum, _count) and the label names seen.
- check_refs(exprs, families): the names no family exports, and label
  names a family's series do not carry.
- check_dashboard(dashboard, families, promtool, tmpdir): all of it for a
  Grafana dashboard, with its structure (datasource and instance
  variables, one row per concern).
- LiveDaemon: an emulated BILLmanager and a remotetaskd serving /metrics
  (no broker: every family is registered at start whether the broker is
  there or not), for a scrape of the real thing.

Python standard library only.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

# ---- PromQL tokens ----------------------------------------------------------

AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile",
}
# Words that are never metric names where they stand: binary operators,
# modifiers and the label-list keywords.
KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "atan2",
}
LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
NUMBER_WORDS = {"inf", "nan"}

_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_NUMBER = re.compile(r"(0[xX][0-9a-fA-F]+|[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?)([a-zA-Z0-9]*)")


class PromQLError(ValueError):
    """An expression the tokenizer cannot read (an unterminated string)."""


def _tokens(expr):
    """Yields (kind, text) with kind ident, string, number, punct."""
    i, n = 0, len(expr)
    while i < n:
        c = expr[i]
        if c.isspace():
            i += 1
        elif c == "#":
            while i < n and expr[i] != "\n":
                i += 1
        elif c in "\"'`":
            j = i + 1
            while j < n and expr[j] != c:
                j += 2 if expr[j] == "\\" and c != "`" else 1
            if j >= n:
                raise PromQLError("unterminated string in %r" % expr)
            yield "string", expr[i + 1 : j]
            i = j + 1
        elif c.isdigit() or (c == "." and i + 1 < n and expr[i + 1].isdigit()):
            m = _NUMBER.match(expr, i)
            yield "number", m.group(0)
            i = m.end()
        elif _IDENT.match(expr, i):
            m = _IDENT.match(expr, i)
            yield "ident", m.group(0)
            i = m.end()
        else:
            yield "punct", c
            i += 1


def metric_refs(expr):
    """Returns a list of (metric name, [label names of its matchers]) for
    every vector selector of expr. A selector without a name gives
    ("{__name__=~...}", []) when it picks names by regex, which the caller
    reports: such a query cannot be checked against a scrape. Raises
    PromQLError on an unterminated string."""
    toks = list(_tokens(expr))
    refs = []
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1] if i + 1 < len(toks) else (None, None)
        if kind == "punct" and text == "[":
            # A range, a subquery's resolution: durations only.
            depth = 0
            while i < len(toks):
                if toks[i] == ("punct", "["):
                    depth += 1
                elif toks[i] == ("punct", "]"):
                    depth -= 1
                    if depth == 0:
                        break
                i += 1
            i += 1
            continue
        if kind == "ident" and text in LABEL_LIST_KEYWORDS and nxt == ("punct", "("):
            # by (a, b): label names, not metrics.
            while i < len(toks) and toks[i] != ("punct", ")"):
                i += 1
            i += 1
            continue
        if kind == "ident" and text == "offset":
            i += 2  # its duration
            continue
        if kind == "punct" and text == "{":
            # A selector without a name before it: {__name__="x", ...}.
            labels, name, i = _matchers(toks, i)
            if name is None:
                refs.append(("{__name__=~...}", labels))
            else:
                refs.append((name, [l for l in labels if l != "__name__"]))
            continue
        if kind == "ident":
            low = text.lower()
            is_call = nxt == ("punct", "(")
            if is_call or text in AGGREGATIONS or text in KEYWORDS or low in NUMBER_WORDS:
                i += 1
                continue
            if nxt == ("punct", "{"):
                labels, _, i = _matchers(toks, i + 1)
                refs.append((text, [l for l in labels if l != "__name__"]))
            else:
                refs.append((text, []))
                i += 1
            continue
        i += 1
    return refs


def _matchers(toks, i):
    """Reads {label op "value", ...} from toks[i] == "{". Returns (label
    names, the name an __name__= matcher gives or None, index after "}")."""
    labels, name = [], None
    i += 1
    while i < len(toks) and toks[i] != ("punct", "}"):
        kind, text = toks[i]
        if kind == "ident":
            labels.append(text)
            op = ""
            j = i + 1
            while j < len(toks) and toks[j][0] == "punct" and toks[j][1] in "=!~":
                op += toks[j][1]
                j += 1
            if text == "__name__" and op == "=" and j < len(toks) and toks[j][0] == "string":
                name = toks[j][1]
            i = j
            continue
        i += 1
    return labels, name, i + 1


# ---- syntax ----------------------------------------------------------------


def _rules_file_text(exprs):
    lines = ["groups:", "  - name: expressions_under_test", "    rules:"]
    for n, e in enumerate(exprs):
        lines.append("      - record: expression_under_test:%d" % n)
        # A JSON string is a valid YAML double-quoted scalar.
        lines.append("        expr: %s" % json.dumps(e))
    return "\n".join(lines) + "\n"


def check_syntax(exprs, promtool, tmpdir):
    """Parses every expression with promtool check rules. Returns a list of
    error strings, one per expression Prometheus refuses (its own words),
    [] when all parse."""
    if not exprs:
        return []
    path = os.path.join(tmpdir, "expressions.rules.yml")

    def run(batch):
        with open(path, "w") as f:
            f.write(_rules_file_text(batch))
        r = subprocess.run([promtool, "check", "rules", path], capture_output=True, text=True)
        return r.returncode, (r.stdout + r.stderr).strip()

    rc, out = run(exprs)
    if rc == 0:
        return []
    # Which one: promtool stops at the first bad rule, so try them alone.
    errors = []
    for e in exprs:
        rc1, out1 = run([e])
        if rc1 != 0:
            errors.append("%r: %s" % (e, " ".join(out1.split())))
    if not errors:
        errors.append("promtool check rules refused the batch but no expression alone: " + out)
    return errors


# ---- where expressions come from --------------------------------------------

# Grafana's built-in variables that stand for durations in a query.
_GRAFANA_DURATIONS = {"__interval": "1m", "__rate_interval": "1m", "__range": "1h"}
_GRAFANA_NUMBERS = {"__interval_ms": "60000", "__range_ms": "3600000", "__range_s": "3600"}
_VAR = re.compile(r"\$\{([A-Za-z0-9_]+)(?::[^}]*)?\}|\$([A-Za-z0-9_]+)|\[\[([A-Za-z0-9_]+)\]\]")


def substitute_grafana_variables(expr):
    """Replaces $var, ${var}, ${var:fmt} and [[var]]: the built-in
    durations by a duration, the other variables by "value" (they belong in
    a matcher's string; elsewhere "value" reads as a metric name, which the
    name check then refuses: a query must not build metric names from a
    variable)."""

    def repl(m):
        name = m.group(1) or m.group(2) or m.group(3)
        if name in _GRAFANA_DURATIONS:
            return _GRAFANA_DURATIONS[name]
        if name in _GRAFANA_NUMBERS:
            return _GRAFANA_NUMBERS[name]
        return "value"

    return _VAR.sub(repl, expr)


_LABEL_VALUES = re.compile(r"^\s*label_values\s*\((.*)\)\s*$", re.S)
_QUERY_RESULT = re.compile(r"^\s*query_result\s*\((.*)\)\s*$", re.S)


def templating_expression(query):
    """The PromQL inside a Grafana Prometheus variable query:
    label_values(EXPR, label) gives EXPR, label_values(label) none,
    query_result(EXPR) EXPR. Returns (expr or None, error or None)."""
    m = _LABEL_VALUES.match(query)
    if m:
        inner = m.group(1)
        if "," not in inner:
            return None, None
        return inner.rsplit(",", 1)[0].strip(), None
    m = _QUERY_RESULT.match(query)
    if m:
        return m.group(1).strip(), None
    return None, "variable query %r is neither label_values() nor query_result()" % query


def _panels(panels):
    for p in panels or []:
        yield p
        # A collapsed row keeps its panels inside it.
        yield from _panels(p.get("panels"))


def grafana_expressions(dashboard):
    """Returns ([(where, raw expression, expression with variables
    substituted)], [errors]) for every query of the dashboard: each panel's
    targets (rows' nested panels too) and each templating variable of type
    query."""
    out, errors = [], []
    for p in _panels(dashboard.get("panels")):
        for t in p.get("targets") or []:
            expr = t.get("expr")
            if expr is None:
                errors.append("panel %r target %s has no expr" % (p.get("title"), t.get("refId")))
                continue
            where = "panel %r target %s" % (p.get("title"), t.get("refId"))
            out.append((where, expr, substitute_grafana_variables(expr)))
    for v in (dashboard.get("templating") or {}).get("list") or []:
        if v.get("type") != "query":
            continue
        q = v.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        if not isinstance(q, str):
            errors.append("variable %r has no query string" % v.get("name"))
            continue
        expr, err = templating_expression(q)
        if err:
            errors.append("variable %r: %s" % (v.get("name"), err))
        if expr:
            out.append(("variable %r" % v.get("name"), expr, substitute_grafana_variables(expr)))
    return out, errors


_RULE_START = re.compile(r"^(\s*)- (alert|record):\s*(\S+)\s*$")
_EXPR_LINE = re.compile(r"^(\s*)expr:\s*(.*)$")


def rules_blocks(text):
    """Splits a rules file into its rules: a list of dicts with kind
    (alert/record), name, start and end line indexes (end exclusive), and
    expr. Only the shapes dist/prometheus uses are understood (expr: on one
    line, or "expr: >-" / "expr: |" followed by more indented lines); any
    other shape raises ValueError naming the rule."""
    lines = text.split("\n")
    starts = []
    for n, line in enumerate(lines):
        m = _RULE_START.match(line)
        if m:
            starts.append((n, len(m.group(1)), m.group(2), m.group(3)))
    rules = []
    for k, (n, indent, kind, name) in enumerate(starts):
        end = starts[k + 1][0] if k + 1 < len(starts) else len(lines)
        # The block ends earlier when a line comes back to the list's indent
        # or less (a new group).
        for j in range(n + 1, end):
            s = lines[j]
            if s.strip() and not s.strip().startswith("#") and len(s) - len(s.lstrip()) <= indent:
                end = j
                break
        expr = None
        for j in range(n + 1, end):
            m = _EXPR_LINE.match(lines[j])
            if not m:
                continue
            value = m.group(2).strip()
            if value in (">-", ">", "|", "|-"):
                base = len(m.group(1))
                body = []
                for s in lines[j + 1 : end]:
                    if s.strip() and len(s) - len(s.lstrip()) <= base:
                        break
                    body.append(s.strip())
                sep = "\n" if value.startswith("|") else " "
                expr = sep.join(x for x in body if x).strip()
            elif value and value[0] not in "'\"[{&*!|>%@`":
                expr = value
            else:
                raise ValueError("rule %s %s: an expr shape this reader does not know: %r"
                                 % (kind, name, value))
            break
        if expr is None:
            raise ValueError("rule %s %s has no expr" % (kind, name))
        rules.append({"kind": kind, "name": name, "start": n, "end": end, "expr": expr})
    return rules


def rules_expressions(path):
    with open(path) as f:
        return [("%s %s" % (r["kind"], r["name"]), r["expr"], r["expr"])
                for r in rules_blocks(f.read())]


# ---- what a scrape exports --------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s")
_LABEL_NAME = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="(?:[^"\\]|\\.)*"')
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"instance", "job"}


def scrape_families(text):
    """Returns {sample name: set of label names seen on it} for every name
    the scrape exports: each family of a "# TYPE" line (a histogram's
    NAME_bucket, NAME_sum, NAME_count; a summary's NAME, NAME_sum,
    NAME_count), and each sample line. A name whose family has no series
    yet maps to None (its labels are unknown). A bucket's "le" counts as a
    label of NAME_bucket."""
    names = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            parts = line.split()
            if len(parts) < 4:
                continue
            fam, typ = parts[2], parts[3]
            if typ == "histogram":
                for s in ("_bucket", "_sum", "_count"):
                    names.setdefault(fam + s, None)
            elif typ == "summary":
                for s in ("", "_sum", "_count"):
                    names.setdefault(fam + s, None)
            else:
                names.setdefault(fam, None)
            continue
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        seen = names.get(m.group(1)) or set()
        seen.update(_LABEL_NAME.findall(m.group(3) or ""))
        names[m.group(1)] = seen
    return names


def check_refs(exprs, families, allowed_missing=()):
    """exprs: [(where, raw, substituted)]. Returns (errors, missing) where
    missing is the set of names not exported that allowed_missing excused,
    and errors names each unknown metric, each label a known family's
    series never carry, each selector that picks names by regex, and each
    expression that selects no metric at all."""
    errors, excused = [], set()
    for where, raw, expr in exprs:
        try:
            refs = metric_refs(expr)
        except PromQLError as e:
            errors.append("%s: %s" % (where, e))
            continue
        if not refs:
            errors.append("%s: %r selects no metric" % (where, raw))
        for name, labels in refs:
            if name.startswith("{"):
                errors.append("%s: %r picks metric names by a regex; name them" % (where, raw))
                continue
            if name not in families:
                if name in allowed_missing:
                    excused.add(name)
                else:
                    errors.append("%s: metric %s is not exported by remotetaskd (query %r)"
                                  % (where, name, raw))
                continue
            seen = families[name]
            if seen is None:
                continue
            for label in labels:
                if label not in seen and label not in TARGET_LABELS:
                    errors.append("%s: metric %s has no label %r (it has %s; query %r)"
                                  % (where, name, label, sorted(seen) or "none", raw))
    return errors, excused


# ---- a dashboard ---------------------------------------------------------------

# Series Prometheus makes for every target, not the daemon: a query may name
# them besides what the scrape exports.
PROMETHEUS_SERIES = {"up": set(), "scrape_duration_seconds": set(),
                     "scrape_samples_scraped": set(), "scrape_series_added": set(),
                     "scrape_samples_post_metric_relabeling": set()}

# The rows a remotetask dashboard has, one per concern.
DASHBOARD_ROWS = ("flow", "backlog and latency", "errors and dead letters", "api", "broker")


def dashboard_structure_errors(dashboard):
    """What the dashboard must be besides its queries: a datasource
    variable (type datasource, Prometheus) that every panel and target uses,
    an instance variable every selector filters on, one row per concern
    with panels under it, unique panel ids."""
    errors = []
    variables = {v.get("name"): v for v in (dashboard.get("templating") or {}).get("list") or []}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        errors.append("no variable \"datasource\" of type datasource for Prometheus")
    inst = variables.get("instance")
    if not inst or inst.get("type") != "query":
        errors.append("no variable \"instance\" of type query")
    rows, ids, current = [], set(), None
    for p in _panels(dashboard.get("panels")):
        pid = p.get("id")
        if pid in ids:
            errors.append("panel id %r is used twice" % pid)
        ids.add(pid)
        if p.get("type") == "row":
            current = [str(p.get("title", "")).strip().lower(), 0]
            rows.append(current)
            continue
        title = p.get("title")
        if current is None:
            errors.append("panel %r stands above the first row" % title)
        else:
            current[1] += 1
        if (p.get("datasource") or {}).get("uid") != "${datasource}":
            errors.append("panel %r does not use the datasource variable" % title)
        targets = p.get("targets") or []
        if not targets:
            errors.append("panel %r has no query" % title)
        for t in targets:
            if (t.get("datasource") or {}).get("uid") != "${datasource}":
                errors.append("panel %r target %s does not use the datasource variable"
                              % (title, t.get("refId")))
            try:
                refs = metric_refs(substitute_grafana_variables(t.get("expr") or ""))
            except PromQLError as e:
                errors.append("panel %r target %s: %s" % (title, t.get("refId"), e))
                continue
            for name, labels in refs:
                if "instance" not in labels or "$instance" not in (t.get("expr") or ""):
                    errors.append("panel %r target %s: %s is not filtered by $instance"
                                  % (title, t.get("refId"), name))
    titles = [r[0] for r in rows]
    if tuple(titles) != DASHBOARD_ROWS:
        errors.append("rows are %s, wanted %s in that order" % (titles, list(DASHBOARD_ROWS)))
    for title, n in rows:
        if n == 0:
            errors.append("row %r has no panel" % title)
    return errors


def check_dashboard(dashboard, families, promtool, tmpdir):
    """Everything a dashboard must pass: its structure, the syntax of every
    query (promtool) and every metric and label name against families (from
    scrape_families of a live scrape). Returns (errors, number of
    queries)."""
    exprs, errors = grafana_expressions(dashboard)
    errors += dashboard_structure_errors(dashboard)
    errors += check_syntax([e[2] for e in exprs], promtool, tmpdir)
    known = dict(PROMETHEUS_SERIES)
    known.update(families)
    ref_errors, _ = check_refs(exprs, known)
    return errors + ref_errors, len(exprs)


# ---- a live daemon ------------------------------------------------------------


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _wait(cond, deadline_s, what):
    end = time.monotonic() + deadline_s
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > end:
            raise RuntimeError("%s did not happen within %d s" % (what, deadline_s))
        time.sleep(0.1)


class LiveDaemon:
    """An emulated BILLmanager and a remotetaskd with both roles and a
    metrics listener, in tmpdir. The broker address is a closed port: the
    daemon registers every family at start and serves them whether the
    broker is there or not, and the test needs no RabbitMQ node. Use as a
    context manager; stop() fails (raises) when the daemon does not exit
    with status 0 on SIGTERM (a sanitizer report makes it non-zero)."""

    def __init__(self, remotetaskd, source_dir, tmpdir):
        self.remotetaskd = remotetaskd
        self.source_dir = source_dir
        self.dir = tmpdir
        self.sim = self.daemon = None
        self.metrics_port = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop(check=exc[0] is None)

    def start(self):
        d = self.dir
        seed = os.path.join(d, "seed.json")
        with open(seed, "w") as f:
            json.dump({"users": [{"login": "remotetask", "password": "dashboard-test"}],
                       "departments": [{"id": 3, "name": "Upstream"},
                                       {"id": 12, "name": "Reseller A tasks"}]}, f)
        ready = os.path.join(d, "sim.ready.json")
        self.sim = subprocess.Popen(
            [sys.executable, os.path.join(self.source_dir, "tests/sim/billsim.py"),
             "--db", os.path.join(d, "sim.db"), "--seed", seed, "--ready-file", ready,
             "--log-file", os.path.join(d, "sim.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(lambda: os.path.exists(ready) and os.path.getsize(ready) > 0, 30,
              "the emulator's ready file")
        with open(ready) as f:
            api_port = json.load(f)["port"]
        for name, secret in (("amqp.password", "unused"), ("billmgr.password", "dashboard-test")):
            p = os.path.join(d, name)
            with open(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
                f.write(secret + "\n")
        # Nothing listens on a port that was free a moment ago.
        broker_port = free_port()
        self.metrics_port = free_port()
        conf = os.path.join(d, "daemon.conf")
        with open(conf, "w") as f:
            f.write("""instance = "dashboard-test";
state_dir = "%(d)s/state";
control_socket = "%(d)s/daemon.sock";
amqp: { uri = "amqp://rt@127.0.0.1:%(bp)d/%%2f"; password_file = "amqp.password"; };
billmanager: { url = "http://127.0.0.1:%(ap)d/billmgr"; login = "remotetask";
               password_file = "billmgr.password"; };
client: { id = "7"; server_user = "rt"; departments = ( { local = 3; remote = 12; } ); };
server: { clients = ( { id = "7"; amqp_user = "rt"; department = 12; } ); };
metrics: { listen = "127.0.0.1:%(mp)d"; };
""" % {"d": d, "bp": broker_port, "ap": api_port, "mp": self.metrics_port})
        self.log_path = os.path.join(d, "daemon.log")
        self.log = open(self.log_path, "ab")
        self.daemon = subprocess.Popen([self.remotetaskd, "-c", conf], stdout=self.log,
                                       stderr=self.log)

        def answers():
            if self.daemon.poll() is not None:
                raise RuntimeError("remotetaskd exited with status %s at start; its log:\n%s"
                                   % (self.daemon.returncode, self.log_tail()))
            try:
                return self.scrape()
            except OSError:
                return None

        _wait(answers, 30, "remotetaskd's /metrics answering")

    def scrape(self):
        url = "http://127.0.0.1:%d/metrics" % self.metrics_port
        with urllib.request.urlopen(url, timeout=10) as r:
            if r.status != 200:
                raise OSError("GET %s answered HTTP %d" % (url, r.status))
            return r.read(4 * 1024 * 1024).decode("utf-8")

    def log_tail(self, n=4000):
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self, check=True):
        problem = None
        if self.daemon is not None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                rc = self.daemon.wait(30)
                if rc != 0:
                    problem = "remotetaskd exited with status %d; its log:\n%s" % (
                        rc, self.log_tail())
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
                problem = "remotetaskd did not exit within 30 s of SIGTERM"
            self.log.close()
            self.daemon = None
        if self.sim is not None:
            self.sim.terminate()
            try:
                self.sim.wait(10)
            except subprocess.TimeoutExpired:
                self.sim.kill()
                self.sim.wait()
            self.sim = None
        if problem and check:
            raise RuntimeError(problem)


def scratch_dir(prefix):
    """A scratch directory under RT_TEST_TMP (scripts/test sets it) or /tmp."""
    base = os.environ.get("RT_TEST_TMP") or tempfile.gettempdir()
    os.makedirs(base, exist_ok=True)
    return tempfile.mkdtemp(prefix=prefix, dir=base)
