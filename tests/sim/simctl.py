#!/usr/bin/env python3
"""simctl - a small command line for the emulator's admin API.

Used by scripts/demo to play the staff of each BILLmanager, and handy when
looking at a test run by hand. Standard library only.

    simctl.py ADMIN create --department 3 --name NAME [--note TEXT] [--type T]
    simctl.py ADMIN set ID [--status N] [--performer ID] [--append-note TEXT]
    simctl.py ADMIN show --department 12        # a table of the tasks
    simctl.py ADMIN get ID FIELD                # one field of one task
    simctl.py ADMIN first --department 12       # the lowest task id there
    simctl.py ADMIN wait --department 12 --count N [--field F (--value V | --contains S)]
                         [--timeout S]
    simctl.py ADMIN bad MODE [--rate R] [--next N] [--funcs F,G] [--variant V]
                                                # bad answers (README.md), MODE "off" ends them

ADMIN is the emulator's admin URL, e.g. http://127.0.0.1:40001.
"""
import argparse
import json
import sys
import time
import urllib.request


def call(admin, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(admin + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read() or b"{}")


def tasks(admin, department):
    return call(admin, "GET", f"/tasks?department={department}")["tasks"]


def first_line(text):
    lines = (text or "").splitlines()
    return (lines[0][:48] + " …") if len(lines) > 1 else (lines[0][:50] if lines else "")


def main(argv):
    ap = argparse.ArgumentParser(prog="simctl.py")
    ap.add_argument("admin")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("create")
    c.add_argument("--department", type=int, required=True)
    c.add_argument("--name", required=True)
    c.add_argument("--note", default="")
    c.add_argument("--type", default="postopen")
    s = sub.add_parser("set")
    s.add_argument("id", type=int)
    s.add_argument("--status", type=int)
    s.add_argument("--performer", type=int)
    s.add_argument("--append-note")
    sh = sub.add_parser("show")
    sh.add_argument("--department", type=int, required=True)
    f = sub.add_parser("first")
    f.add_argument("--department", type=int, required=True)
    g = sub.add_parser("get")
    g.add_argument("id", type=int)
    g.add_argument("field")
    w = sub.add_parser("wait")
    w.add_argument("--department", type=int, required=True)
    w.add_argument("--count", type=int, required=True)
    w.add_argument("--field")
    w.add_argument("--value")
    w.add_argument("--contains")
    w.add_argument("--timeout", type=float, default=60)
    b = sub.add_parser("bad")
    b.add_argument("mode", choices=["invalid_json", "wrong_shape", "html_login", "huge",
                                    "trickle", "reset", "off"])
    b.add_argument("--rate", type=float)
    b.add_argument("--next", type=int)
    b.add_argument("--funcs", help="comma-separated function names; \"\" for all")
    b.add_argument("--variant", help="a wrong_shape variant; \"\" to take turns")
    a = ap.parse_args(argv)

    if a.cmd == "create":
        r = call(a.admin, "POST", "/tasks", {"department": a.department, "name": a.name,
                                              "note": a.note, "type": a.type})
        print(r["id"])
    elif a.cmd == "set":
        body = {}
        if a.status is not None:
            body["status"] = a.status
        if a.performer is not None:
            body["performer"] = a.performer
        if a.append_note is not None:
            note = call(a.admin, "GET", f"/tasks/{a.id}").get("note") or ""
            body["note"] = (note + "\n" if note else "") + a.append_note
        call(a.admin, "POST", f"/tasks/{a.id}", body)
    elif a.cmd == "show":
        print(f"{'id':>5}  {'status':<6}  {'performer':<9}  {'name':<28}  note (first line)")
        for t in tasks(a.admin, a.department):
            print(f"{t['id']:>5}  {t['status']:<6}  {str(t.get('performer') or '-'):<9}  "
                  f"{t['name'][:28]:<28}  {first_line(t.get('note'))}")
    elif a.cmd == "first":
        ts = tasks(a.admin, a.department)
        if not ts:
            return 1
        print(min(t["id"] for t in ts))
    elif a.cmd == "bad":
        if a.mode == "off":
            faults = call(a.admin, "POST", "/faults/bad/off", {})["faults"]
        else:
            body = {"bad_answer": a.mode}
            if a.rate is not None:
                body["bad_rate"] = a.rate
            if a.next is not None:
                body["bad_next"] = a.next
            if a.funcs is not None:
                body["bad_funcs"] = [f for f in a.funcs.split(",") if f]
            if a.variant is not None:
                body["bad_variant"] = a.variant
            faults = call(a.admin, "POST", "/faults", body)["faults"]
        print(json.dumps({k: v for k, v in faults.items() if k.startswith("bad_")}))
    elif a.cmd == "get":
        print(call(a.admin, "GET", f"/tasks/{a.id}").get(a.field))
    elif a.cmd == "wait":
        deadline = time.monotonic() + a.timeout
        while True:
            ts = tasks(a.admin, a.department)
            if a.field and a.contains is not None:
                ts = [t for t in ts if a.contains in str(t.get(a.field) or "")]
            elif a.field:
                ts = [t for t in ts if str(t.get(a.field)) == a.value]
            if len(ts) >= a.count:
                return 0
            if time.monotonic() > deadline:
                print(f"simctl: only {len(ts)} of {a.count} tasks after {a.timeout:.0f}s",
                      file=sys.stderr)
                return 1
            time.sleep(0.2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
