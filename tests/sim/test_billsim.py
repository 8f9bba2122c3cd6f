#!/usr/bin/env python3
"""Self-test of the BILLmanager emulator (tests/sim/billsim.py).

Starts billsim.py as a subprocess on free ports with a temporary database,
waits for its ready file (with a deadline), and drives both the API and the
admin API over HTTP with urllib. Run from the repository root:

    python3 -m unittest tests/sim/test_billsim.py -v
    python3 tests/sim/test_billsim.py
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Optional

SIM = Path(__file__).resolve().parent / "billsim.py"
LOGIN = "remotetask"
# Every character the contract says a password may hold, ':' included, so
# that authinfo's split at the first ':' is exercised on every call.
PASSWORD = "Pa:ss&w=rd+1% ünï"
READY_DEADLINE_S = 20.0
# A self-signed certificate for 127.0.0.1 and localhost, valid 2000..2100,
# and its key: test fixtures only, they protect nothing.
TLS_CERT = """\
-----BEGIN CERTIFICATE-----
MIIBejCCASCgAwIBAgIBATAKBggqhkjOPQQDAjAXMRUwEwYDVQQDDAxiaWxsc2lt
IHRlc3QwIBcNMDAwMTAxMDAwMDAwWhgPMjEwMDAxMDEwMDAwMDBaMBcxFTATBgNV
BAMMDGJpbGxzaW0gdGVzdDBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABNOdrYm5
ytUCyNOKwd8Y8dMP5oQSY1kgO/+FQCQ7xjFsJcGob/IubK8bIxD8NdH0JHFF1Hig
QzqvNbh8NQ8AMySjWzBZMBoGA1UdEQQTMBGHBH8AAAGCCWxvY2FsaG9zdDAPBgNV
HRMBAf8EBTADAQH/MAsGA1UdDwQEAwIChDAdBgNVHQ4EFgQUwjlMC+24D8d5wzAU
LJ1QuHddsYMwCgYIKoZIzj0EAwIDSAAwRQIhAJac8T7BCwFyjMxJFfdk56p/4n7L
vZAhhb8jJuaqr3rdAiA+7tS/JwcGib5o7lpdPwsJQaNpHy+N1Iv56QbMQAqMXg==
-----END CERTIFICATE-----
"""
TLS_KEY = """\
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgw7BhzMJCEQ1P+fr3
aDXsCXMZ9vuy8kO6rYKZ7PkS+pqhRANCAATTna2JucrVAsjTisHfGPHTD+aEEmNZ
IDv/hUAkO8YxbCXBqG/yLmyvGyMQ/DXR9CRxRdR4oEM6rzW4fDUPADMk
-----END PRIVATE KEY-----
"""


def wait_for(cond: Any, deadline_s: float, what: str) -> Any:
    """Polls cond() until it returns a true value or the deadline passes."""
    end = time.monotonic() + deadline_s
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline_s}s waiting for {what}")
        time.sleep(0.02)


class Sim:
    """One billsim.py process."""

    def __init__(self, workdir: str, name: str, args: list[str], db: Optional[str] = None) -> None:
        self.workdir = workdir
        self.db = db or os.path.join(workdir, name + ".sqlite")
        self.ready = os.path.join(workdir, name + ".ready")
        self.log = os.path.join(workdir, name + ".log")
        self.args = args
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.info: dict[str, Any] = {}

    def start(self) -> "Sim":
        if os.path.exists(self.ready):
            os.unlink(self.ready)
        self.proc = subprocess.Popen(
            [sys.executable, str(SIM), "--db", self.db, "--ready-file", self.ready,
             "--log-file", self.log] + self.args,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

        def ready() -> Optional[dict[str, Any]]:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError("billsim exited with %s: %s" % (
                    self.proc.returncode, self.proc.stderr.read().decode() if self.proc.stderr else ""))
            if not os.path.exists(self.ready):
                return None
            with open(self.ready, encoding="utf-8") as f:
                return json.load(f)

        self.info = wait_for(ready, READY_DEADLINE_S, "the ready file")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=15)
        if self.proc.stderr:
            self.proc.stderr.close()
        return rc

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.info['port']}"

    def request(self, params: dict[str, str], method: str = "POST", path: str = "/billmgr",
                timeout: float = 10.0, creds: bool = True) -> tuple[int, bytes]:
        p = {"out": "json", **params}
        if creds and "auth" not in p and "authinfo" not in p and p.get("func") != "auth":
            p["authinfo"] = f"{LOGIN}:{PASSWORD}"
        form = urllib.parse.urlencode(p)
        if method == "GET":
            req = urllib.request.Request(f"{self.base}{path}?{form}")
        else:
            req = urllib.request.Request(f"{self.base}{path}", data=form.encode("ascii"),
                                         method="POST")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            body = e.read()
            e.close()
            return e.code, body

    def api(self, params: dict[str, str], **kw: Any) -> dict[str, Any]:
        """The `doc` of an API answer, which must be HTTP 200 JSON."""
        status, body = self.request(params, **kw)
        if status != 200:
            raise AssertionError(f"HTTP {status}: {body[:200]!r}")
        return json.loads(body.decode("utf-8"))["doc"]

    def admin(self, method: str, path: str, body: Any = None, raw: Optional[bytes] = None,
              timeout: float = 30.0) -> tuple[int, Any]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        if method == "POST" and data is None:
            data = b""
        req = urllib.request.Request(f"http://127.0.0.1:{self.info['admin_port']}{path}",
                                     data=data, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            answer = json.loads(e.read())
            e.close()
            return e.code, answer

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = self.admin(method, path, body)
        if status != 200:
            raise AssertionError(f"admin {method} {path}: HTTP {status} {answer}")
        return answer


def vm_hwm_kb(pid: int) -> int:
    """The peak resident set size of process pid, in kB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


def error_of(doc: dict[str, Any]) -> tuple[str, str]:
    err = doc.get("error")
    if err is None:
        raise AssertionError(f"expected an error, got {doc}")
    assert "$" in err["msg"]
    return err["$type"], err.get("$object", "")


def values(elem: dict[str, Any]) -> dict[str, str]:
    return {k: v["$"] for k, v in elem.items()}


SEED = {
    "users": [{"login": LOGIN, "password": PASSWORD},
              {"login": "readonly", "password": "ro-pass", "deny": ["task.delete", "task.edit"]}],
    "departments": [{"id": 3, "name": "Upstream"}, {"id": 4, "name": "Other"},
                    {"id": 6, "name": "Paging"}, {"id": 7, "name": "Empty"}],
    "staff": [{"id": 1, "name": "alice", "realname": "Alice A."}, {"id": 2, "name": "bob"}],
    "accounts": [{"id": 5, "name": "acme"}],
}


class ApiTest(unittest.TestCase):
    """The API and the admin API against one emulator."""

    tmp: tempfile.TemporaryDirectory[str]
    sim: Sim

    @classmethod
    def setUpClass(cls) -> None:
        cls.tmp = tempfile.TemporaryDirectory(prefix="billsim-test-")
        seed = os.path.join(cls.tmp.name, "seed.json")
        with open(seed, "w", encoding="utf-8") as f:
            json.dump(SEED, f)
        cls.sim = Sim(cls.tmp.name, "api", ["--seed", seed, "--account", "8:globex"]).start()

    @classmethod
    def tearDownClass(cls) -> None:
        rc = cls.sim.stop()
        cls.tmp.cleanup()
        assert rc == 0, f"billsim exited with {rc}"

    def tearDown(self) -> None:
        self.sim.ok("POST", "/faults/reset")
        self.sim.ok("POST", "/up")

    def create(self, **fields: str) -> int:
        doc = self.sim.api({"func": "task.edit", "sok": "ok", **fields})
        self.assertIn("ok", doc, doc)
        return int(doc["id"]["$"])

    def view(self, tid: int) -> dict[str, str]:
        return values(self.sim.api({"func": "task.edit", "elid": str(tid)}))

    # -- task.edit -------------------------------------------------------

    def test_create_view_change(self) -> None:
        tid = self.create(department="3", name="Set up server", type="postopen", note="first",
                          item="42", client="5", performer="1", status="1",
                          deadline="2030-01-02 03:04:05")
        task = self.view(tid)
        self.assertEqual(task["id"], str(tid))
        self.assertEqual(task["elid"], str(tid))
        for key, want in (("department", "3"), ("name", "Set up server"), ("type", "postopen"),
                          ("note", "first"), ("item", "42"), ("client", "5"),
                          ("performer", "1"), ("status", "1"),
                          ("deadline", "2030-01-02 03:04:05")):
            self.assertEqual(task[key], want, key)
        self.assertRegex(task["opendate"], r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")
        self.assertRegex(task["updated"], r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")

        # A change touches only the fields sent; performer "" means none.
        doc = self.sim.api({"func": "task.edit", "sok": "ok", "elid": str(tid),
                            "status": "2", "performer": "", "deadline": ""})
        self.assertIn("ok", doc)
        task = self.view(tid)
        self.assertEqual(task["status"], "2")
        self.assertNotIn("performer", task)
        self.assertNotIn("deadline", task)
        self.assertEqual(task["name"], "Set up server")
        self.assertEqual(task["note"], "first")
        self.assertEqual(task["client"], "5")

    def test_updated_changes_through_api_and_admin(self) -> None:
        tid = self.create(department="3", name="u")
        self.sim.ok("POST", f"/tasks/{tid}", {"updated": "2000-01-01 00:00:00"})
        self.sim.api({"func": "task.edit", "sok": "ok", "elid": str(tid), "note": "n"})
        self.assertNotEqual(self.view(tid)["updated"], "2000-01-01 00:00:00")
        self.sim.ok("POST", f"/tasks/{tid}", {"updated": "2000-01-01 00:00:00"})
        self.sim.ok("POST", f"/tasks/{tid}", {"status": 1})
        self.assertNotEqual(self.sim.ok("GET", f"/tasks/{tid}")["updated"], "2000-01-01 00:00:00")

    def test_ids_are_monotonic(self) -> None:
        a = self.create(department="3", name="a")
        self.sim.api({"func": "task.delete", "elid": str(a)})
        b = self.create(department="3", name="b")
        self.assertGreater(b, a)

    def test_new_task_form(self) -> None:
        doc = self.sim.api({"func": "task.edit"})
        self.assertNotIn("error", doc)
        self.assertNotIn("ok", doc)

    def test_validation(self) -> None:
        tid = self.create(department="3", name="valid")
        cases = [
            ({"sok": "ok", "name": "x"}, ("value", "department")),
            ({"sok": "ok", "department": "", "name": "x"}, ("value", "department")),
            ({"sok": "ok", "department": "99", "name": "x"}, ("value", "department")),
            ({"sok": "ok", "department": "abc", "name": "x"}, ("value", "department")),
            ({"sok": "ok", "department": "3", "name": "x", "client": "99"}, ("value", "client")),
            ({"sok": "ok", "department": "3", "name": "x", "performer": "99"}, ("value", "performer")),
            ({"sok": "ok", "department": "3"}, ("value", "name")),
            ({"sok": "ok", "department": "3", "name": ""}, ("value", "name")),
            ({"sok": "ok", "department": "3", "name": "x", "status": "3"}, ("value", "status")),
            ({"sok": "ok", "department": "3", "name": "x", "status": "-1"}, ("value", "status")),
            ({"sok": "ok", "department": "3", "name": "x", "status": ""}, ("value", "status")),
            ({"sok": "ok", "department": "3", "name": "x", "deadline": "2030-01-02"}, ("value", "deadline")),
            ({"sok": "ok", "department": "3", "name": "x", "deadline": "2030-13-02 00:00:00"},
             ("value", "deadline")),
            ({"sok": "ok", "elid": "999999", "name": "x"}, ("missed", "elid")),
            ({"sok": "ok", "elid": "nope", "name": "x"}, ("missed", "elid")),
            ({"sok": "ok", "elid": str(tid), "status": "7"}, ("value", "status")),
            ({"sok": "ok", "elid": str(tid), "department": "99"}, ("value", "department")),
            ({"sok": "ok", "elid": str(tid), "performer": "x"}, ("value", "performer")),
            ({"elid": "999999"}, ("missed", "elid")),
        ]
        before = self.sim.ok("GET", "/tasks")["tasks"]
        for params, want in cases:
            with self.subTest(params=params):
                status, body = self.sim.request({"func": "task.edit", **params})
                self.assertEqual(status, 200)
                self.assertEqual(error_of(json.loads(body)["doc"]), want)
        self.assertEqual(self.sim.ok("GET", "/tasks")["tasks"], before, "a refused call changed state")

    # -- task.delete -----------------------------------------------------

    def test_delete(self) -> None:
        a = self.create(department="4", name="a")
        b = self.create(department="4", name="b")
        c = self.create(department="4", name="c")
        # All or nothing: one unknown id deletes none.
        self.assertEqual(error_of(self.sim.api({"func": "task.delete", "elid": f"{a}, 999999"})),
                         ("missed", "elid"))
        self.assertEqual(self.sim.admin("GET", f"/tasks/{a}")[0], 200)
        self.assertEqual(error_of(self.sim.api({"func": "task.delete", "elid": ""})),
                         ("missed", "elid"))
        self.assertIn("ok", self.sim.api({"func": "task.delete", "elid": f"{a}, {b}"}))
        self.assertEqual(self.sim.admin("GET", f"/tasks/{a}")[0], 404)
        self.assertEqual(self.sim.admin("GET", f"/tasks/{b}")[0], 404)
        self.assertEqual(self.sim.admin("GET", f"/tasks/{c}")[0], 200)

    # -- lists -----------------------------------------------------------

    def test_task_list_display_names_and_filters(self) -> None:
        t1 = self.create(department="3", name="listed", client="5", performer="2", status="1")
        t2 = self.create(department="4", name="elsewhere")
        doc = self.sim.api({"func": "task", "filter": "on", "department": "3", "p_cnt": "100000"})
        rows = {int(e["id"]["$"]): values(e) for e in doc["elem"]}
        self.assertIn(t1, rows)
        self.assertNotIn(t2, rows)
        self.assertEqual(int(doc["p_elems"]["$"]), len(rows))
        row = rows[t1]
        self.assertEqual(row["department"], "Upstream")
        self.assertEqual(row["client"], "acme")
        self.assertEqual(row["performer"], "bob")
        self.assertEqual(row["status"], "1")
        self.assertEqual(row["name"], "listed")
        for key in ("opendate", "updated"):
            self.assertIn(key, row)
        for key in ("deadline", "itemstatus", "pricelist", "runningoperation", "note"):
            self.assertNotIn(key, row)
        ids = [int(e["id"]["$"]) for e in doc["elem"]]
        self.assertEqual(ids, sorted(ids))

        doc = self.sim.api({"func": "task", "filter": "on", "department": "3", "status": "1",
                            "performer": "2", "name": "isted"})
        self.assertIn(t1, [int(e["id"]["$"]) for e in doc["elem"]])
        self.assertTrue(all(e["status"]["$"] == "1" for e in doc["elem"]))
        self.assertEqual(error_of(self.sim.api({"func": "task", "filter": "on", "department": "x"})),
                         ("value", "department"))

    def test_empty_list_has_no_elem(self) -> None:
        doc = self.sim.api({"func": "task", "filter": "on", "department": "7"})
        self.assertNotIn("elem", doc)
        self.assertEqual(doc["p_elems"]["$"], "0")
        self.assertEqual(doc["p_num"]["$"], "1")

    def test_paging(self) -> None:
        bulk = self.sim.ok("POST", "/tasks/bulk", {"department": 6, "count": 2500,
                                                   "name_prefix": "t", "note": "bulk"})
        self.assertEqual(bulk["last_id"] - bulk["first_id"], 2499)
        seen: list[int] = []
        for page in (1, 2, 3):
            doc = self.sim.api({"func": "task", "filter": "on", "department": "6",
                                "p_num": str(page)})
            self.assertEqual(doc["p_elems"]["$"], "2500")
            self.assertEqual(doc["p_cnt"]["$"], "1000")
            self.assertEqual(doc["p_num"]["$"], str(page))
            self.assertEqual(len(doc["elem"]), 1000 if page < 3 else 500)
            seen += [int(e["id"]["$"]) for e in doc["elem"]]
        self.assertEqual(seen, list(range(bulk["first_id"], bulk["last_id"] + 1)))
        doc = self.sim.api({"func": "task", "filter": "on", "department": "6", "p_num": "4"})
        self.assertNotIn("elem", doc)
        doc = self.sim.api({"func": "task", "filter": "on", "department": "6",
                            "p_cnt": "700", "p_num": "4"})
        self.assertEqual(len(doc["elem"]), 400)
        self.assertEqual(doc["elem"][0]["name"]["$"], "t2101")
        self.assertEqual(error_of(self.sim.api({"func": "task", "p_cnt": "0"})), ("value", "p_cnt"))
        self.assertEqual(error_of(self.sim.api({"func": "task", "p_num": "x"})), ("value", "p_num"))
        raw = self.sim.ok("GET", "/tasks?department=6")["tasks"]
        self.assertEqual(len(raw), 2500)
        self.assertEqual(raw[0]["note"], "bulk")

    def test_department(self) -> None:
        doc = self.sim.api({"func": "department"})
        rows = {e["id"]["$"]: values(e) for e in doc["elem"]}
        self.assertEqual(rows["3"]["locale_name"], "Upstream")
        self.assertIn("orderpriority", rows["3"])
        self.assertIn("status", rows["3"])
        doc = self.sim.api({"func": "department.edit", "sok": "ok", "name": "Created dept"})
        self.assertIn("ok", doc)
        did = doc["id"]["$"]
        doc = self.sim.api({"func": "department"})
        self.assertIn(did, [e["id"]["$"] for e in doc["elem"]])
        view = values(self.sim.api({"func": "department.edit", "elid": did}))
        self.assertEqual(view["name"], "Created dept")
        self.assertEqual(error_of(self.sim.api({"func": "department.edit", "sok": "ok",
                                                "name": "Created dept"})), ("exists", "name"))
        self.assertEqual(error_of(self.sim.api({"func": "department.edit", "sok": "ok", "name": ""})),
                         ("value", "name"))
        # The new department takes tasks.
        self.create(department=did, name="in new dept")

    def test_user_and_account(self) -> None:
        users = {e["id"]["$"]: values(e) for e in self.sim.api({"func": "user"})["elem"]}
        self.assertEqual(users["1"], {"id": "1", "name": "alice", "realname": "Alice A."})
        self.assertEqual(users["2"], {"id": "2", "name": "bob"})
        accounts = {e["id"]["$"]: values(e) for e in self.sim.api({"func": "account"})["elem"]}
        self.assertEqual(accounts["5"], {"id": "5", "name": "acme"})
        self.assertEqual(accounts["8"], {"id": "8", "name": "globex"})

    def test_unknown_func(self) -> None:
        self.assertEqual(error_of(self.sim.api({"func": "no.such.func"})), ("missed", "func"))
        self.assertEqual(error_of(self.sim.api({})), ("missed", "func"))

    # -- authentication --------------------------------------------------

    def test_auth_errors(self) -> None:
        for params in ({"func": "task"},
                       {"func": "task", "authinfo": f"{LOGIN}:wrong"},
                       {"func": "task", "authinfo": f"{LOGIN}:{PASSWORD.split(':')[0]}"},
                       {"func": "task", "authinfo": "nobody:x"},
                       {"func": "task", "authinfo": LOGIN},
                       {"func": "task", "auth": "0123456789abcdef"},
                       {"func": "auth", "username": LOGIN, "password": "wrong"},
                       {"func": "no.such.func"}):
            with self.subTest(params=params):
                status, body = self.sim.request(params, creds=False)
                self.assertEqual(status, 200)
                self.assertEqual(error_of(json.loads(body)["doc"])[0], "auth")

    def test_session(self) -> None:
        doc = self.sim.api({"func": "auth", "username": LOGIN, "password": PASSWORD})
        sid = doc["auth"]["$id"]
        self.assertGreaterEqual(len(sid), 16)
        doc2 = self.sim.api({"func": "auth", "username": LOGIN, "password": PASSWORD})
        self.assertNotEqual(sid, doc2["auth"]["$id"])
        self.assertIn("p_elems", self.sim.api({"func": "department", "auth": sid}))
        self.sim.ok("POST", "/sessions/expire")
        self.assertEqual(error_of(self.sim.api({"func": "department", "auth": sid})), ("auth", "session"))

    def test_access(self) -> None:
        creds = {"authinfo": "readonly:ro-pass"}
        self.assertIn("p_elems", self.sim.api({"func": "task", **creds}))
        self.assertEqual(error_of(self.sim.api({"func": "task.edit", "sok": "ok", "department": "3",
                                                "name": "x", **creds})), ("access", "task.edit"))

    # -- encoding and transport ------------------------------------------

    def test_round_trip_special_characters(self) -> None:
        name = "a & b = c + d % e ü 日本"
        note = "line one\nline two & = + %\r\nthird\ttab \"quoted\" <xml> 100%"
        for method in ("GET", "POST"):
            for path in ("/billmgr", "/manager/billmgr"):
                with self.subTest(method=method, path=path):
                    doc = self.sim.api({"func": "task.edit", "sok": "ok", "department": "3",
                                        "name": name, "note": note}, method=method, path=path)
                    tid = doc["id"]["$"]
                    view = self.sim.api({"func": "task.edit", "elid": tid}, method=method, path=path)
                    self.assertEqual(view["name"]["$"], name)
                    self.assertEqual(view["note"]["$"], note)
                    self.assertEqual(self.sim.ok("GET", f"/tasks/{tid}")["note"], note)

    def test_body_wins_over_query(self) -> None:
        form = urllib.parse.urlencode({"out": "json", "func": "task.edit", "sok": "ok",
                                       "department": "3", "name": "from body",
                                       "authinfo": f"{LOGIN}:{PASSWORD}"})
        req = urllib.request.Request(f"{self.sim.base}/billmgr?name=from+query&func=user",
                                     data=form.encode(), method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            tid = json.loads(r.read())["doc"]["id"]["$"]
        self.assertEqual(self.view(int(tid))["name"], "from body")

    def test_unknown_path(self) -> None:
        status, _ = self.sim.request({"func": "task"}, path="/other")
        self.assertEqual(status, 404)

    def test_xml_output(self) -> None:
        status, body = self.sim.request({"func": "account", "out": "xml"})
        self.assertEqual(status, 200)
        text = body.decode("utf-8")
        self.assertIn("<doc", text)
        self.assertIn("<name>acme</name>", text)

    def test_keep_alive(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.sim.info["port"], timeout=10)
        try:
            form = urllib.parse.urlencode({"out": "json", "func": "department",
                                           "authinfo": f"{LOGIN}:{PASSWORD}"})
            peers = set()
            for _ in range(3):
                conn.request("POST", "/billmgr", body=form,
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
                r = conn.getresponse()
                self.assertEqual(r.status, 200)
                self.assertEqual(int(r.getheader("Content-Length")), len(r.read()))
                assert conn.sock is not None
                peers.add(conn.sock.getsockname())
            self.assertEqual(len(peers), 1, "the connection was not reused")
        finally:
            conn.close()

    def test_concurrent_creates(self) -> None:
        ids: list[int] = []
        errors: list[BaseException] = []
        lock = threading.Lock()

        def worker(n: int) -> None:
            try:
                for i in range(8):
                    tid = self.create(department="4", name=f"c{n}-{i}")
                    with lock:
                        ids.append(tid)
            except BaseException as e:  # reported below, in the test's thread
                with lock:
                    errors.append(e)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(errors, [])
        self.assertEqual(len(ids), 128)
        self.assertEqual(len(set(ids)), 128)

    def test_body_cap(self) -> None:
        with socket.create_connection(("127.0.0.1", self.sim.info["port"]), timeout=10) as s:
            s.sendall(b"POST /billmgr HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Type: application/x-www-form-urlencoded\r\n"
                      b"Content-Length: 9000000\r\n\r\n")
            reply = s.recv(4096)
        self.assertTrue(reply.startswith(b"HTTP/1.1 413"), reply[:80])

    def test_bad_form_encoding(self) -> None:
        status, _ = self.sim.request({"func": "task", "name": "x"}, method="GET",
                                     path="/billmgr?name=%FF%FE")
        self.assertEqual(status, 400)

    # -- call log --------------------------------------------------------

    def test_call_log(self) -> None:
        self.sim.ok("POST", "/calls/reset")
        self.assertEqual(self.sim.ok("GET", "/calls/count")["count"], 0)
        last = self.sim.ok("GET", "/calls")["calls"]
        since = last[-1]["n"] if last else 0
        sid = self.sim.api({"func": "auth", "username": LOGIN, "password": PASSWORD})["auth"]["$id"]
        self.sim.api({"func": "department", "auth": sid})
        self.create(department="3", name="logged")
        self.sim.api({"func": "task", "authinfo": f"{LOGIN}:wrong-{PASSWORD}"}, creds=False)
        calls = self.sim.ok("GET", f"/calls?since={since}")["calls"]
        self.assertEqual([c["func"] for c in calls], ["auth", "department", "task.edit", "task"])
        self.assertEqual([c["outcome"] for c in calls], ["ok", "ok", "ok", "auth"])
        self.assertEqual([c["write"] for c in calls], [False, False, True, False])
        self.assertEqual(calls[0]["params"]["password"], "***")
        self.assertEqual(calls[0]["params"]["username"], LOGIN)
        self.assertEqual(calls[1]["params"]["auth"], "***")
        self.assertEqual(calls[2]["params"]["authinfo"], f"{LOGIN}:***")
        self.assertEqual(calls[2]["params"]["name"], "logged")
        ns = [c["n"] for c in calls]
        self.assertEqual(ns, sorted(ns))
        self.assertEqual(self.sim.ok("GET", "/calls/count?func=task.edit&write=1")["count"], 1)
        self.assertEqual(self.sim.ok("GET", "/calls/count?outcome=auth")["count"], 1)
        self.assertEqual(self.sim.ok("GET", "/calls/count")["count"], 4)

        _, raw_calls = self.sim.admin("GET", "/calls")
        dump = json.dumps(raw_calls, ensure_ascii=False)
        with open(self.sim.log, encoding="utf-8") as f:
            log = f.read()
        for secret in (PASSWORD, sid, "Pa:ss", urllib.parse.quote_plus(PASSWORD)):
            self.assertNotIn(secret, dump)
            self.assertNotIn(secret, log)
        self.assertIn("func=task.edit", log)

    # -- faults ----------------------------------------------------------

    def test_error_rate(self) -> None:
        self.sim.ok("POST", "/faults", {"error_rate": 1.0, "error_status": 503})
        status, body = self.sim.request({"func": "task"})
        self.assertEqual(status, 503)
        with self.assertRaises(ValueError):
            json.loads(body)
        status, _ = self.sim.request({"func": "task.edit", "sok": "ok", "department": "3", "name": "x"})
        self.assertEqual(status, 503)
        calls = self.sim.ok("GET", "/calls")["calls"]
        self.assertEqual(calls[-1]["outcome"], "http503")
        self.assertTrue(calls[-1]["write"])
        self.assertEqual(self.sim.ok("GET", "/health")["ok"], True)
        self.sim.ok("POST", "/faults/reset")
        self.assertIn("p_elems", self.sim.api({"func": "task", "p_cnt": "1"}))

    def test_error_next_and_funcs(self) -> None:
        self.sim.ok("POST", "/faults", {"error_next": 1, "error_status": 500, "funcs": ["task.edit"]})
        self.assertIn("p_elems", self.sim.api({"func": "department"}))
        status, _ = self.sim.request({"func": "task.edit", "sok": "ok", "department": "3", "name": "x"})
        self.assertEqual(status, 500)
        self.create(department="3", name="second try works")

    def test_hang(self) -> None:
        self.sim.ok("POST", "/faults", {"hang_rate": 1.0, "hang_s": 60})
        with self.assertRaises((socket.timeout, TimeoutError, urllib.error.URLError)) as ctx:
            self.sim.request({"func": "task"}, timeout=0.5)
        if isinstance(ctx.exception, urllib.error.URLError):
            self.assertIsInstance(ctx.exception.reason, (socket.timeout, TimeoutError))
        self.assertEqual(self.sim.ok("GET", "/calls")["calls"][-1]["outcome"], "hang")

        # A hanging request does not hold up the others.
        result: dict[str, BaseException] = {}

        def hang() -> None:
            try:
                self.sim.request({"func": "task"}, timeout=30)
            except BaseException as e:
                result["error"] = e

        t = threading.Thread(target=hang)
        t.start()
        wait_for(lambda: self.sim.ok("GET", "/calls")["calls"][-1]["outcome"] == "hang", 10,
                 "the request to hang")
        self.sim.ok("POST", "/faults/reset")
        self.assertIn("p_elems", self.sim.api({"func": "department"}))
        self.assertTrue(t.is_alive())
        # Taking the listener down cuts the hanging connection as well.
        self.sim.ok("POST", "/down")
        t.join(15)
        self.assertFalse(t.is_alive())
        self.assertIn("error", result)

    def test_latency(self) -> None:
        self.sim.ok("POST", "/faults", {"latency_ms": [300, 400]})
        started = time.monotonic()
        self.sim.api({"func": "department"})
        # A lower bound only: the injected delay must be there; how fast the
        # rest is does not matter.
        self.assertGreaterEqual(time.monotonic() - started, 0.3)
        self.sim.ok("POST", "/faults", {"latency_ms": 250})
        started = time.monotonic()
        self.sim.api({"func": "department"})
        self.assertGreaterEqual(time.monotonic() - started, 0.25)

    # -- bad answers (HTTP 200, a body no API would send) ------------------

    def raw(self, params: dict[str, str]) -> http.client.HTTPResponse:
        """A POST to the API whose answer is left unread: the caller reads
        it as it likes and closes the returned response's connection."""
        p = {"out": "json", "authinfo": f"{LOGIN}:{PASSWORD}", **params}
        conn = http.client.HTTPConnection("127.0.0.1", self.sim.info["port"], timeout=10)
        conn.request("POST", "/billmgr", body=urllib.parse.urlencode(p),
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        resp = conn.getresponse()
        self.addCleanup(conn.close)
        return resp

    def last_outcome(self) -> str:
        return str(self.sim.ok("GET", "/calls")["calls"][-1]["outcome"])

    def task_count(self) -> int:
        return len(self.sim.ok("GET", "/tasks?department=3")["tasks"])

    def test_bad_invalid_json(self) -> None:
        tid = self.create(department="3", name="cut short", note="n" * 300)
        healthy = self.sim.request({"func": "task.edit", "elid": str(tid)})[1]
        self.sim.ok("POST", "/faults", {"bad_answer": "invalid_json"})
        status, body = self.sim.request({"func": "task.edit", "elid": str(tid)})
        self.assertEqual(status, 200)
        with self.assertRaises(ValueError):
            json.loads(body)
        # The start of the real answer, cut.
        self.assertTrue(0 < len(body) < len(healthy) and healthy.startswith(body))
        self.assertEqual(self.last_outcome(), "invalid_json")
        # The API ran the call: a create under a bad answer is made.
        before = self.task_count()
        self.sim.request({"func": "task.edit", "sok": "ok", "department": "3", "name": "made"})
        self.assertEqual(self.task_count(), before + 1)
        # The explicit off; the other faults stay.
        self.sim.ok("POST", "/faults", {"latency_ms": 1})
        faults = self.sim.ok("POST", "/faults/bad/off")["faults"]
        self.assertEqual(faults["bad_answer"], "")
        self.assertEqual(faults["latency_ms"], [1.0, 1.0])
        self.assertEqual(self.sim.request({"func": "task.edit", "elid": str(tid)})[1], healthy)

    def test_bad_wrong_shape(self) -> None:
        tid = self.create(department="3", name="Shape 7", note="typed", status="1")
        self.sim.ok("POST", "/faults", {"bad_answer": "wrong_shape", "bad_funcs": ["task.edit"]})
        seen = {}
        for _ in range(6):  # the variants take turns
            status, body = self.sim.request({"func": "task.edit", "elid": str(tid)})
            self.assertEqual(status, 200)
            seen[len(seen)] = json.loads(body)
            # Functions not listed in bad_funcs answer normally.
            self.assertIn("p_elems", self.sim.api({"func": "department"}))
        self.assertEqual(seen[0], {"doc": []})
        self.assertEqual(seen[1], [1, 2])
        self.assertEqual(seen[2], {"doc": {"elem": "x"}})
        self.assertEqual(seen[3], {"doc": {"error": "x"}})
        numbers, arrays = seen[4]["doc"], seen[5]["doc"]
        self.assertEqual(numbers["id"], tid)
        self.assertEqual(numbers["status"], 1)
        self.assertEqual(numbers["name"], len("Shape 7"))
        self.assertEqual(arrays["name"], [{"$": "Shape 7"}])
        self.assertEqual(arrays["note"], [{"$": "typed"}])
        calls = self.sim.ok("GET", "/calls/count?func=task.edit&outcome=wrong_shape")
        self.assertEqual(calls["count"], 6)
        # A chosen variant stays; a list's rows are retyped too.
        self.sim.ok("POST", "/faults", {"bad_variant": "fields_arrays", "bad_funcs": []})
        for _ in range(2):
            doc = self.sim.api({"func": "task", "p_cnt": "2"})
            self.assertIsInstance(doc["elem"][0]["id"], list)
            self.assertIsInstance(doc["p_elems"], list)

    def test_bad_html_login(self) -> None:
        self.sim.ok("POST", "/faults", {"bad_answer": "html_login"})
        before = self.task_count()
        resp = self.raw({"func": "task.edit", "sok": "ok", "department": "3", "name": "walled"})
        body = resp.read()
        self.assertEqual(resp.status, 200)
        self.assertTrue(resp.getheader("Content-Type", "").startswith("text/html"))
        self.assertIn(b"<title>BILLmanager", body)
        self.assertIn(b'type="password"', body)
        self.assertNotIn(PASSWORD.encode(), body)
        # A login wall stops the call before the API: nothing was made.
        self.assertEqual(self.task_count(), before)
        self.assertEqual(self.last_outcome(), "html_login")
        self.assertTrue(self.sim.ok("GET", "/calls")["calls"][-1]["write"])

    def test_bad_huge(self) -> None:
        # With a Content-Length: the client may give up on the header alone.
        self.sim.ok("POST", "/faults", {"bad_answer": "huge"})
        resp = self.raw({"func": "task"})
        self.assertEqual(resp.status, 200)
        self.assertEqual(resp.getheader("Content-Length"), str(100 * 1024 * 1024))
        self.assertTrue(resp.read(64 * 1024).startswith(b'{"doc": {"elem": [{"id": {"$": "1"}'))
        resp.close()
        self.assertEqual(self.last_outcome(), "huge")
        # Chunked, read to the end: 100 MiB arrive, and the emulator's memory
        # does not grow by anything near that (it generates as it sends).
        pid = self.sim.info["pid"]
        hwm_before = vm_hwm_kb(pid)
        self.sim.ok("POST", "/faults", {"huge_chunked": True})
        resp = self.raw({"func": "task"})
        self.assertEqual(resp.getheader("Transfer-Encoding"), "chunked")
        total = 0
        while True:
            chunk = resp.read(1 << 20)
            if not chunk:
                break
            total += len(chunk)
        self.assertEqual(total, 100 * 1024 * 1024)
        grown_kb = vm_hwm_kb(pid) - hwm_before
        self.assertLess(grown_kb, 32 * 1024, f"the emulator's peak RSS grew by {grown_kb} kB")
        # Small enough to read whole, the padding ends as valid JSON.
        self.sim.ok("POST", "/faults", {"huge_bytes": 1000, "huge_chunked": False})
        status, body = self.sim.request({"func": "task"})
        self.assertEqual((status, len(body)), (200, 1000))
        self.assertEqual(json.loads(body)["doc"]["elem"][0]["id"], {"$": "1"})

    def test_bad_trickle(self) -> None:
        healthy = self.sim.request({"func": "no.such.func"})[1]
        self.sim.ok("POST", "/faults", {"bad_answer": "trickle", "bad_rate": 0.0, "bad_next": 1,
                                        "trickle_interval_s": 0.05})
        resp = self.raw({"func": "task"})
        self.assertEqual(resp.status, 200)
        length = int(resp.getheader("Content-Length", "0"))
        self.assertGreater(length, 10)
        first = resp.read(3)
        self.assertEqual(first, b'{"d')
        self.assertEqual(self.last_outcome(), "trickle")
        # A trickle holds only its own thread: the next request (bad_next
        # was 1) is answered at once and whole.
        self.assertIn("p_elems", self.sim.api({"func": "department"}))
        resp.close()  # the client gives up; the emulator's next write fails
        # Read to the end at a faster pace, it is the real answer.
        self.sim.ok("POST", "/faults", {"bad_next": 1, "trickle_interval_s": 0.001})
        resp = self.raw({"func": "no.such.func"})
        self.assertEqual(resp.read(), healthy)
        # trickle_s ends a trickle that nobody gives up on.
        self.sim.ok("POST", "/faults", {"bad_next": 1, "trickle_interval_s": 0.01,
                                        "trickle_s": 0.1})
        resp = self.raw({"func": "task"})
        with self.assertRaises(http.client.IncompleteRead):
            resp.read()

    def test_bad_reset(self) -> None:
        healthy = self.sim.request({"func": "department"})[1]
        self.sim.ok("POST", "/faults", {"bad_answer": "reset", "reset_after": 10})
        resp = self.raw({"func": "department"})
        self.assertEqual(resp.status, 200)
        self.assertEqual(resp.getheader("Content-Length"), str(len(healthy)))
        self.assertEqual(resp.read(10), healthy[:10])
        with self.assertRaises((ConnectionResetError, http.client.IncompleteRead)):
            resp.read()
        self.assertEqual(self.last_outcome(), "reset")
        # The default: half of the body.
        self.sim.ok("POST", "/faults", {"reset_after": -1})
        resp = self.raw({"func": "department"})
        self.assertEqual(resp.read(len(healthy) // 2), healthy[:len(healthy) // 2])
        with self.assertRaises((ConnectionResetError, http.client.IncompleteRead)):
            resp.read()
        # /faults/reset ends bad answers too.
        self.sim.ok("POST", "/faults/reset")
        self.assertEqual(self.sim.request({"func": "department"})[1], healthy)

    def test_bad_rate_and_validation(self) -> None:
        self.sim.ok("POST", "/faults", {"bad_answer": "invalid_json", "bad_rate": 0.0})
        self.assertIn("p_elems", self.sim.api({"func": "department"}))
        self.sim.ok("POST", "/faults", {"bad_rate": 1.0})
        with self.assertRaises(ValueError):
            self.sim.api({"func": "department"})
        # "off" (or null, or "") switches them off as /faults/bad/off does.
        self.sim.ok("POST", "/faults", {"bad_answer": "off"})
        self.assertIn("p_elems", self.sim.api({"func": "department"}))
        for body in ({"bad_answer": "bogus"}, {"bad_rate": 2}, {"bad_variant": "nope"},
                     {"huge_bytes": 0}, {"huge_chunked": 1}, {"trickle_interval_s": 0},
                     {"reset_after": -2}, {"bad_funcs": "task"}):
            with self.subTest(body=body):
                self.assertEqual(self.sim.admin("POST", "/faults", body)[0], 400)

    def test_faults_validation(self) -> None:
        for body in ({"error_rate": 2}, {"latency_ms": [5, 1]}, {"latency_ms": "x"},
                     {"error_status": 99}, {"bogus": 1}, [1]):
            with self.subTest(body=body):
                self.assertEqual(self.sim.admin("POST", "/faults", body)[0], 400)
        self.assertEqual(self.sim.admin("POST", "/faults", raw=b"{not json")[0], 400)
        self.assertEqual(self.sim.ok("GET", "/faults")["faults"]["error_rate"], 0.0)

    def test_down_up(self) -> None:
        self.assertIn("p_elems", self.sim.api({"func": "department"}))
        self.assertTrue(self.sim.ok("POST", "/down")["changed"])
        self.assertFalse(self.sim.ok("POST", "/down")["changed"])
        with self.assertRaises(urllib.error.URLError) as ctx:
            self.sim.request({"func": "department"}, timeout=5)
        self.assertIsInstance(ctx.exception.reason, ConnectionRefusedError)
        self.assertEqual(self.sim.ok("GET", "/health")["main_up"], False)
        self.assertTrue(self.sim.ok("POST", "/up")["changed"])
        self.assertFalse(self.sim.ok("POST", "/up")["changed"])
        self.assertIn("p_elems", self.sim.api({"func": "department"}))

    # -- admin API -------------------------------------------------------

    def test_admin_tasks(self) -> None:
        tid = self.sim.ok("POST", "/tasks", {"department": 4, "name": "direct", "note": "n",
                                             "performer": 1, "status": 1})["id"]
        task = self.sim.ok("GET", f"/tasks/{tid}")
        self.assertEqual((task["id"], task["department"], task["performer"], task["client"],
                          task["status"], task["name"]), (tid, 4, 1, None, 1, "direct"))
        before = self.sim.ok("GET", "/calls/count")["count"]
        changed = self.sim.ok("POST", f"/tasks/{tid}", {"status": 2, "note": "n\nmore",
                                                        "performer": None})
        self.assertEqual((changed["status"], changed["note"], changed["performer"]),
                         (2, "n\nmore", None))
        self.assertEqual(self.sim.ok("GET", "/calls/count")["count"], before,
                         "admin edits must not reach the call log")
        view = self.view(tid)
        self.assertEqual((view["status"], view["note"]), ("2", "n\nmore"))
        self.assertIn(tid, [t["id"] for t in self.sim.ok("GET", "/tasks?department=4")["tasks"]])
        self.assertNotIn(tid, [t["id"] for t in self.sim.ok("GET", "/tasks?department=3")["tasks"]])
        self.assertEqual(self.sim.admin("DELETE", f"/tasks/{tid}")[0], 200)
        self.assertEqual(self.sim.admin("GET", f"/tasks/{tid}")[0], 404)

    def test_admin_errors(self) -> None:
        self.assertEqual(self.sim.admin("POST", "/tasks", raw=b"{bad")[0], 400)
        self.assertEqual(self.sim.admin("POST", "/tasks", {"name": "no department"})[0], 400)
        self.assertEqual(self.sim.admin("POST", "/tasks", {"department": 3, "bogus": 1})[0], 400)
        self.assertEqual(self.sim.admin("POST", "/tasks/999999", {"name": "x"})[0], 404)
        self.assertEqual(self.sim.admin("POST", "/tasks/bulk", {"department": 3, "count": 0})[0], 400)
        self.assertEqual(self.sim.admin("POST", "/seed", {"users": [{"login": "x"}]})[0], 400)
        self.assertEqual(self.sim.admin("GET", "/nowhere")[0], 404)
        self.assertEqual(self.sim.admin("GET", "/down")[0], 405)
        status, answer = self.sim.admin("POST", "/seed", raw=b"[")
        self.assertEqual(status, 400)
        self.assertIn("error", answer)

    def test_admin_seed(self) -> None:
        seed = {"users": [{"login": "late", "password": "late-pw"}],
                "departments": [{"id": 40, "name": "Seeded"}],
                "staff": [{"id": 41, "name": "carol"}], "accounts": [{"id": 42, "name": "initech"}]}
        self.sim.ok("POST", "/seed", seed)
        self.sim.ok("POST", "/seed", seed)
        self.assertIn("p_elems", self.sim.api({"func": "user", "authinfo": "late:late-pw"}))
        depts = [e["id"]["$"] for e in self.sim.api({"func": "department"})["elem"]]
        self.assertEqual(depts.count("40"), 1)
        self.create(department="40", name="x", performer="41", client="42")


class LifecycleTest(unittest.TestCase):
    """Start, stop and restart."""

    def setUp(self) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="billsim-life-")
        self.addCleanup(self.tmp.cleanup)
        self.sims: list[Sim] = []

    def tearDown(self) -> None:
        for sim in self.sims:
            if sim.proc is not None and sim.proc.poll() is None:
                sim.stop(signal.SIGKILL)

    def start(self, name: str, args: list[str], db: Optional[str] = None) -> Sim:
        sim = Sim(self.tmp.name, name, args, db)
        self.sims.append(sim)
        return sim.start()

    def test_restart_keeps_state(self) -> None:
        args = ["--user", f"{LOGIN}:{PASSWORD}", "--department", "3:Upstream",
                "--staff", "1:alice", "--account", "5:acme"]
        first = self.start("a", args)
        tid = int(first.api({"func": "task.edit", "sok": "ok", "department": "3",
                             "name": "survives", "note": "x\ny"})["id"]["$"])
        sid = first.api({"func": "auth", "username": LOGIN, "password": PASSWORD})["auth"]["$id"]
        calls = first.ok("GET", "/calls/count")["count"]
        self.assertEqual(first.stop(), 0)
        self.assertFalse(os.path.exists(first.ready), "the ready file outlived the process")
        with self.assertRaises(urllib.error.URLError):
            first.request({"func": "task"}, timeout=5)

        second = self.start("b", args, db=first.db)
        view = second.api({"func": "task.edit", "elid": str(tid), "auth": sid})
        self.assertEqual((view["name"]["$"], view["note"]["$"]), ("survives", "x\ny"))
        self.assertEqual(second.ok("GET", "/calls/count")["count"], calls + 1)
        later = int(second.api({"func": "task.edit", "sok": "ok", "department": "3",
                                "name": "later"})["id"]["$"])
        self.assertGreater(later, tid)
        # Seeding again with the same flags changed nothing.
        self.assertEqual(len(second.api({"func": "department"})["elem"]), 1)
        self.assertEqual(len(second.api({"func": "user"})["elem"]), 1)
        self.assertEqual(second.stop(signal.SIGINT), 0)

    def test_session_ttl(self) -> None:
        sim = self.start("ttl", ["--user", f"{LOGIN}:{PASSWORD}", "--session-ttl", "1"])
        sid = sim.api({"func": "auth", "username": LOGIN, "password": PASSWORD})["auth"]["$id"]
        self.assertIn("p_elems", sim.api({"func": "department", "auth": sid}))
        # The input under test is idle time itself: there is no condition to
        # wait for, since any request on the session would keep it alive.
        time.sleep(1.3)
        self.assertEqual(error_of(sim.api({"func": "department", "auth": sid})), ("auth", "session"))
        self.assertEqual(sim.stop(), 0)

    def test_page_size_flag(self) -> None:
        sim = self.start("pages", ["--user", f"{LOGIN}:{PASSWORD}", "--department", "3:D",
                                   "--page-size", "10"])
        sim.ok("POST", "/tasks/bulk", {"department": 3, "count": 25})
        doc = sim.api({"func": "task"})
        self.assertEqual((len(doc["elem"]), doc["p_cnt"]["$"], doc["p_elems"]["$"]), (10, "10", "25"))
        self.assertEqual(doc["elem"][0]["name"]["$"], "task-1")
        self.assertEqual(sim.stop(), 0)

    def test_tls(self) -> None:
        cert = os.path.join(self.tmp.name, "cert.pem")
        key = os.path.join(self.tmp.name, "key.pem")
        for path, pem in ((cert, TLS_CERT), (key, TLS_KEY)):
            with open(path, "w", encoding="ascii") as f:
                f.write(pem)
        sim = self.start("tls", ["--user", f"{LOGIN}:{PASSWORD}", "--department", "3:D",
                                 "--tls-cert", cert, "--tls-key", key])
        self.assertTrue(sim.info["url"].startswith("https://127.0.0.1:"), sim.info["url"])
        # A plain-HTTP client gets no answer, and the listener survives it.
        with self.assertRaises((http.client.HTTPException, OSError)):
            sim.request({"func": "department"}, timeout=5)
        ctx = ssl.create_default_context(cafile=cert)
        form = urllib.parse.urlencode({"out": "json", "func": "department",
                                       "authinfo": f"{LOGIN}:{PASSWORD}"}).encode()
        with urllib.request.urlopen(urllib.request.Request(sim.info["url"], data=form),
                                    timeout=10, context=ctx) as r:
            doc = json.loads(r.read())["doc"]
        self.assertEqual(doc["elem"][0]["locale_name"]["$"], "D")
        self.assertEqual(sim.stop(), 0)

    def test_bad_seed_exits(self) -> None:
        seed = os.path.join(self.tmp.name, "bad.json")
        with open(seed, "w", encoding="utf-8") as f:
            f.write('{"users": [{"login": "u", "password": "secret-in-seed"}], "departments": 3}')
        proc = subprocess.run([sys.executable, str(SIM), "--db", os.path.join(self.tmp.name, "x.db"),
                               "--seed", seed], capture_output=True, timeout=30)
        self.assertEqual(proc.returncode, 2)
        self.assertIn(b"departments must be a list", proc.stderr)
        self.assertNotIn(b"secret-in-seed", proc.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
