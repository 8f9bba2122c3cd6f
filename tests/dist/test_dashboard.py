#!/usr/bin/env python3
"""test_dashboard.py - dist/grafana/remotetask.json against a live daemon.

    test_dashboard.py --remotetaskd PATH --source DIR [--promtool PATH]

Starts an emulated BILLmanager and a remotetaskd with both roles and a
metrics listener (no broker: every family is registered at start), scrapes
its /metrics, and checks the shipped dashboard with promql.check_dashboard:
  - its structure: a datasource variable used by every panel and query, an
    instance variable every selector filters on, the rows flow, backlog and
    latency, errors and dead letters, API, broker, each with panels;
  - every query (panel targets and variable queries, Grafana's variables
    replaced) parsed by promtool;
  - every metric name a query selects is in the live scrape (or is a series
    Prometheus makes itself, such as up), and every label a selector
    matches on is carried by that family's scraped series.
Then it shows that the check is not blind: the same dashboard with one
more panel naming a metric the daemon does not export must fail, naming
that metric (tests/dist/test_dashboard_check.py does the same and more
without a daemon). Exits 1 on any failure.
"""

import argparse
import copy
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import promql  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--remotetaskd", required=True)
    ap.add_argument("--source", required=True)
    ap.add_argument("--promtool", default="/usr/bin/promtool")
    args = ap.parse_args()
    if not os.access(args.promtool, os.X_OK):
        print("FAIL %s is missing: install Debian's prometheus package" % args.promtool)
        return 1
    path = os.path.join(args.source, "dist/grafana/remotetask.json")
    with open(path) as f:
        dashboard = json.load(f)

    tmp = promql.scratch_dir("dashboard.")
    failed = False
    try:
        with promql.LiveDaemon(args.remotetaskd, args.source, tmp) as d:
            scrape = d.scrape()
        families = promql.scrape_families(scrape)
        exported = sorted(n for n in families if n.startswith("remotetask_"))
        errors, n = promql.check_dashboard(dashboard, families, args.promtool, tmp)
        used = set()
        for _, _, expr in promql.grafana_expressions(dashboard)[0]:
            used.update(name for name, _ in promql.metric_refs(expr))
        if errors:
            failed = True
            print("FAIL dist/grafana/remotetask.json:")
            for e in errors:
                print("    " + e)
        else:
            print("ok the dashboard's %d queries parse and name %d metrics, all of them among "
                  "the %d remotetask sample names a live remotetaskd exports"
                  % (n, len(used), len(exported)))
        unused = sorted(set(exported) - used - {
            # A histogram's count and sum: its buckets are what the panels read.
            "remotetask_forward_latency_seconds_count", "remotetask_forward_latency_seconds_sum"})
        if unused:
            print("# exported and on no panel: %s" % ", ".join(unused))

        # The check is not blind: a panel naming a metric that does not exist.
        bad = copy.deepcopy(dashboard)
        ghost = "remotetask_tasks_lost_total"
        bad["panels"].append({
            "type": "timeseries", "title": "Tasks lost", "id": 9999,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"h": 8, "w": 12, "x": 0, "y": 999},
            "targets": [{"refId": "A", "datasource": {"type": "prometheus", "uid": "${datasource}"},
                         "expr": 'rate(%s{job=~"$job",instance=~"$instance"}[$__rate_interval])'
                                 % ghost}]})
        bad_errors, _ = promql.check_dashboard(bad, families, args.promtool, tmp)
        named = [e for e in bad_errors if ghost in e and "'Tasks lost'" in e]
        if len(bad_errors) == 1 and named:
            print("ok a panel naming %s fails the check: %s" % (ghost, named[0]))
        else:
            failed = True
            print("FAIL a panel naming %s should fail the check with one error naming it; "
                  "got %r" % (ghost, bad_errors))
    finally:
        if not failed and not os.environ.get("RT_KEEP_TMP"):
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print("# scratch directory kept: %s" % tmp)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
