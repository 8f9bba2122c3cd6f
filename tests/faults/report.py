#!/usr/bin/env python3
"""report.py - docs/RELIABILITY.md from the fault suite's results.

  report.py RESULTS_JSONL OUT_MD [--soak SOAK_JSON] [--suite-seconds S]

RESULTS_JSONL holds one JSON object per line, appended by fault_report()
(tests/faults/faults.c) when a case ends; a case run more than once counts
with its last line. SOAK_JSON, when given and present, is the soak run's
result that bench/ writes (case 12; its format is in tests/faults/README.md);
without it the soak section says it has not been run. --suite-seconds is
the wall time of the suite as scripts/test measured it.

The Markdown names every case once, in the issue's order: its line
("fault NAME: sent=N applied=N lost=N duplicated=N recovered_in=S"), what
was checked and whether it held, what the daemons logged and what
`remotetaskctl --command status` showed during the fault. Exit status 0
when the report was written, whatever the cases say; 2 on bad usage or
input.
"""
import json
import os
import platform
import subprocess
import sys
import time

# The cases (issue 9), so that the matrix shows what is not there yet.
CASES = [
    (1, "Blackholed broker (frozen 30 s)"),
    (2, "Memory alarm on the broker"),
    (3, "Queue deleted under the consumer"),
    (4, "Client daemon killed with SIGKILL mid-publish"),
    (5, "Duplicated, replayed and reordered messages"),
    (6, "Hostile or broken BILLmanager answers"),
    (7, "Disk full; the store locked by another process"),
    (8, "Invalid configuration on SIGHUP"),
    (9, "TLS faults on both legs"),
    (10, "A dead-lettered task message"),
    (11, "Control socket and metrics endpoint"),
    (13, "A retry copy the broker confirmed and then lost"),
]

SOAK_MARK = "<!-- soak: the section below is written from the soak result of bench/ -->"


def read_results(path):
    by_case = {}
    if not os.path.exists(path):
        return by_case
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                o = json.loads(line)
            except ValueError as e:
                sys.stderr.write("report.py: %s:%d: not JSON: %s\n" % (path, n, e))
                sys.exit(2)
            if not isinstance(o, dict) or "case" not in o or "number" not in o:
                sys.stderr.write("report.py: %s:%d: not a case result\n" % (path, n))
                sys.exit(2)
            by_case[o["number"]] = o
    return by_case


def md_escape(text):
    return str(text).replace("|", "\\|").replace("\n", " ")


def code(text):
    text = str(text)
    tick = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return "%s%s%s%s%s" % (tick, pad, text, pad, tick)


def fmt_s(v):
    return "—" if v is None else "%.1f" % v


def git(*args):
    try:
        out = subprocess.run(["git"] + list(args), capture_output=True, text=True, timeout=10,
                             cwd=os.path.dirname(os.path.abspath(__file__)))
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def machine():
    lines = ["- CPUs (nproc): %d" % (os.cpu_count() or 0),
             "- kernel: %s %s" % (platform.system(), platform.release())]
    rev = git("rev-parse", "--short", "HEAD")
    if rev:
        dirty = git("status", "--porcelain", "--untracked-files=no")
        lines.append("- source: %s%s" % (rev, " (with uncommitted changes)" if dirty else ""))
    return lines


def matrix(results, suite_s):
    out = ["| # | fault | sent | applied | lost | duplicated | recovered in (s) | run (s) | result |",
           "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    total = 0.0
    for number, title in CASES:
        r = results.get(number)
        if not r:
            out.append("| %d | %s | | | | | | | not in this run |" % (number, title))
            continue
        total += r.get("run_s") or 0
        if r.get("unfinished"):
            verdict = "**FAILED**: did not reach its report"
        elif r.get("passed"):
            verdict = "passed"
        elif r.get("failures"):
            verdict = "**FAILED** (%d checks)" % len(r["failures"])
        else:
            verdict = "**FAILED**"
        out.append("| %d | %s (`%s`) | %d | %d | %d | %d | %s | %s | %s |" % (
            number, md_escape(r.get("title") or title), r["case"], r["sent"], r["applied"],
            r["lost"], r["duplicated"], fmt_s(r.get("recovered_in")), fmt_s(r.get("run_s")),
            verdict))
    out.append("")
    done = [r for r in results.values() if r.get("run_s") is not None and r.get("finished")]
    line = "Sum of the cases' run times: %.0f s" % total
    if done:
        span = max(r["finished"] for r in done) - min(r["finished"] - r["run_s"] for r in done)
        line += "; from the start of the first to the end of the last: %.0f s" % span
    out.append(line + ".")
    if suite_s is not None:
        out.append("The ctest run of scripts/test that held them (with the other tests of its "
                   "labels, the cases one at a time beside the integration tests) took %.0f s."
                   % suite_s)
    return out


def case_section(r):
    out = ["### %d. %s" % (r["number"], md_escape(r.get("title", r["case"]))), "",
           "```", r["line"], "```", ""]
    if r.get("unfinished"):
        out.append("**Did not finish**: the case failed before it could report (a harness "
                   "failure or a crash of the test; ctest's output says which).")
        out.append("")
        return out
    out.append("Ran %s s; %s." % (fmt_s(r.get("run_s")),
                                  "passed" if r.get("passed") else "**failed**"))
    out.append("")
    failures = r.get("failures") or []
    if failures:
        out.append("What failed:")
        out.append("")
        for f in failures:
            out.append("- ✗ %s" % md_escape(f))
        out.append("")
    notes = r.get("notes") or []
    if notes:
        out.append("Figures and observations:")
        out.append("")
        for n in notes:
            out.append("- %s" % md_escape(n))
        out.append("")
    checks = [c for c in r.get("checks") or [] if c.get("ok")]
    if checks:
        out.append("<details><summary>What was checked and held (%d checks)</summary>" % len(checks))
        out.append("")
        for c in checks:
            out.append("- ✓ %s" % md_escape(c["what"]))
        out.append("")
        out.append("</details>")
        out.append("")
    logged = r.get("logged") or []
    if logged:
        out.append("What the daemons logged during the fault (the first line of each kind, and how "
                   "many such lines):")
        out.append("")
        out.append("| daemon | lines | line |")
        out.append("| --- | ---: | --- |")
        for l in logged:
            out.append("| %s | %d | %s |" % (l["daemon"], l.get("count", 1), code(md_escape(l["line"]))))
        out.append("")
    status = r.get("status") or []
    if status:
        out.append("What `remotetaskctl --command status --json` showed:")
        out.append("")
        out.append("| daemon | when | exit | took (ms) | RSS (kB) | fds | members |")
        out.append("| --- | --- | ---: | ---: | ---: | ---: | --- |")
        for s in status:
            proc = s.get("proc") or {}
            members = s.get("members") or {}
            shown = json.dumps(members, ensure_ascii=False, separators=(",", ":")) if members else ""
            if not members and s.get("output"):
                shown = "printed: " + s["output"]
            if len(shown) > 700:
                shown = shown[:700] + "…"
            out.append("| %s | %s | %s | %s | %s | %s | %s |" % (
                s["daemon"], md_escape(s.get("when", "")), s.get("exit", ""), s.get("took_ms", ""),
                proc.get("rss_kb", ""), proc.get("fds", ""), code(md_escape(shown)) if shown else ""))
        out.append("")
    return out


def soak_section(path):
    out = [SOAK_MARK, "", "## Soak (case 12)", ""]
    if not path or not os.path.exists(path):
        out.append("Not run yet. bench/ writes its result as one JSON document (the format is in "
                   "`tests/faults/README.md`); scripts/test reads it from `bench/soak.json` when "
                   "that file exists.")
        return out
    with open(path, encoding="utf-8") as f:
        s = json.load(f)
    # "reverse", the faults' timings, the load averages and "failures" are
    # optional: bench/soak writes them, the format's required keys are above.
    rev = s.get("reverse")
    out.append("```")
    out.append("soak: sent=%d applied=%d lost=%d duplicated=%d" % (
        s["sent"], s["applied"], s["lost"], s["duplicated"]))
    if rev:
        out.append("soak reverse: changes=%d applied=%d lost=%d duplicated=%d" % (
            rev["changes"], rev["applied"], rev["lost"], rev["duplicated"]))
    out.append("```")
    out.append("")
    out.append("%d s at %s tasks/s both ways; faults injected: %s." % (
        s["duration_s"], s["rate_per_s"],
        ", ".join("%s at %d s" % (x["case"], x["t_s"]) for x in s.get("faults", [])) or "none"))
    out.append("")
    if rev:
        out.append("Forward: *sent* source tasks, counted as in the cases above. Reverse: each "
                   "change made on the target (status, performer and a line of note) found "
                   "on the source by its line: *applied* once, *lost* never, *duplicated* "
                   "beyond once.")
        out.append("")
    timed = [x for x in s.get("faults", []) if "started_s" in x]
    if timed:
        out.append("| fault | started (s) | ended (s) | steady backlog | peak backlog | back to steady after the end (s) |")
        out.append("| --- | ---: | ---: | ---: | ---: | ---: |")
        for x in timed:
            out.append("| %s | %s | %s | %s | %s | %s |" % (
                x["case"], fmt_s(x.get("started_s")), fmt_s(x.get("ended_s")),
                x.get("steady_backlog", ""), x.get("peak_backlog", ""),
                fmt_s(x.get("recovered_in_s"))))
        out.append("")
    if s.get("loadavg_start"):
        out.append("Load average (1, 5, 15 min): %s at the start, %s at the end." % (
            s["loadavg_start"], s.get("loadavg_end", "?")))
        out.append("")
    out.append("| daemon | RSS after 5 min (kB) | RSS at the end (kB) | difference (kB) | fds after 5 min | fds at the end |")
    out.append("| --- | ---: | ---: | ---: | ---: | ---: |")
    ok = s["lost"] == 0 and s["duplicated"] == 0
    if rev:
        ok = ok and rev["lost"] == 0 and rev["duplicated"] == 0
    for name in ("client", "server"):
        d = s["daemons"][name]
        out.append("| %s | %d | %d | %+d | %d | %d |" % (
            name, d["rss_kb_5min"], d["rss_kb_end"], d["rss_kb_end"] - d["rss_kb_5min"],
            d["fds_5min"], d["fds_end"]))
        ok = ok and abs(d["rss_kb_end"] - d["rss_kb_5min"]) <= 1024 and d["fds_end"] <= d["fds_5min"]
    out.append("")
    out.append("Required: lost 0, duplicated 0, each daemon's RSS at the end within 1 MB of its "
               "value after 5 minutes, no fd growth: %s." % ("met" if ok else "**not met**"))
    if s.get("failures"):
        out.append("")
        out.append("What the soak found wrong:")
        out.append("")
        for f in s["failures"]:
            out.append("- ✗ %s" % md_escape(f))
    return out


def isolation_section():
    """The isolation guarantees (issue 13) and their tests: a fixed text,
    tests/faults/isolation.md, kept beside the suite."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "isolation.md")
    with open(path, encoding="utf-8") as f:
        return f.read().rstrip("\n").split("\n")


def report(results_path, out_md, soak_path, suite_s):
    results = read_results(results_path)
    md = ["# Reliability", "",
          "Written by the fault suite (`tests/faults/`, issue 9) through `tests/faults/report.py`; "
          "do not edit by hand: `scripts/test` writes it to `.run/test/RELIABILITY.md` on every "
          "run, and here with `RT_UPDATE_DOCS=1`.", "",
          "Each case runs both daemons (`remotetaskd`, client and server role) as processes "
          "against a RabbitMQ node of the suite's own and two emulated BILLmanagers, injects one "
          "fault while tasks flow, and counts by the origin block in each target task's note: "
          "*sent* = source tasks, *applied* = source tasks with a target task, *lost* = those "
          "without, *duplicated* = target tasks beyond one per source task. *Recovered in* is "
          "the time from the end of the fault until everything sent was applied. A case fails "
          "when anything was lost or duplicated or one of its checks failed; the daemons are "
          "the Debug build with AddressSanitizer and UndefinedBehaviorSanitizer, as in "
          "`scripts/test`.", "",
          "## Run", ""]
    md += machine()
    md += ["- written: %s" % time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "",
           "```", "scripts/test faults               # the suite alone (RT_UPDATE_DOCS=1 writes this file)",
           "scripts/test                      # everything, the suite included", "```", "",
           "## The matrix", ""]
    md += matrix(results, suite_s)
    md += ["", "## The cases", ""]
    for number, title in CASES:
        r = results.get(number)
        if r:
            md += case_section(r)
        else:
            md += ["### %d. %s" % (number, title), "", "Not in this run.", ""]
    md += soak_section(soak_path)
    md += [""] + isolation_section()
    with open(out_md, "w", encoding="utf-8") as f:
        f.write("\n".join(md).rstrip("\n") + "\n")
    for number, _ in CASES:
        r = results.get(number)
        if r:
            print(r["line"])


def main(argv):
    args = argv[1:]
    soak = None
    suite_s = None
    while len(args) > 2:
        if args[-2] == "--soak":
            soak = args[-1]
        elif args[-2] == "--suite-seconds":
            suite_s = float(args[-1])
        else:
            break
        args = args[:-2]
    if len(args) != 2:
        sys.stderr.write(__doc__)
        return 2
    report(args[0], args[1], soak, suite_s)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
