#!/usr/bin/env python3
"""test_dashboard_check.py - unit tests of the dashboard check
(tests/dist/promql.py), without a daemon: the scrape is a fixed text in the
exposition format remotetaskd writes, the dashboards are built here or are
the shipped one with one query changed. The check must pass a good
dashboard and fail, naming what is wrong, on a panel naming a metric that
does not exist, a misspelt name, a label the family does not carry, a query
that does not parse, a variable query naming an unknown metric, a
selector that picks names by regex, and a panel that does not use the
datasource variable. Needs promtool (Debian's prometheus package).

    test_dashboard_check.py [--promtool PATH]
"""

import copy
import json
import os
import shutil
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import promql  # noqa: E402

SOURCE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROMTOOL = "/usr/bin/promtool"

# A scrape as remotetaskd renders it: HELP and TYPE for every family, a
# labelled family without series yet (api_call_duration), a histogram.
SCRAPE = """# HELP remotetask_applied_total Messages applied.
# TYPE remotetask_applied_total counter
remotetask_applied_total{direction="forward",outcome="created"} 3
remotetask_applied_total{direction="reverse",outcome="updated"} 1
# HELP remotetask_outbox_backlog Outbox rows waiting to be published.
# TYPE remotetask_outbox_backlog gauge
remotetask_outbox_backlog 0
# HELP remotetask_links Links.
# TYPE remotetask_links gauge
remotetask_links 12
# HELP remotetask_api_call_duration_seconds Time of an API call.
# TYPE remotetask_api_call_duration_seconds histogram
# HELP remotetask_forward_latency_seconds Forward latency.
# TYPE remotetask_forward_latency_seconds histogram
remotetask_forward_latency_seconds_bucket{le="1"} 2
remotetask_forward_latency_seconds_bucket{le="+Inf"} 3
remotetask_forward_latency_seconds_sum 4.5
remotetask_forward_latency_seconds_count 3
# HELP remotetask_up Up.
# TYPE remotetask_up gauge
remotetask_up 1
"""

DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = '{job=~"$job",instance=~"$instance"}'


def panel(pid, title, *exprs, ds=DS):
    return {"type": "timeseries", "title": title, "id": pid, "datasource": ds,
            "gridPos": {"h": 8, "w": 12, "x": 0, "y": pid},
            "targets": [{"refId": chr(65 + i), "datasource": ds, "expr": e}
                        for i, e in enumerate(exprs)]}


def good_dashboard():
    rows = ["Flow", "Backlog and latency", "Errors and dead letters", "API", "Broker"]
    exprs = [
        'sum by (instance, direction, outcome) (rate(remotetask_applied_total%s[$__rate_interval]))'
        % SEL,
        'histogram_quantile(0.99, sum by (instance, le) '
        '(rate(remotetask_forward_latency_seconds_bucket%s[$__rate_interval])))' % SEL,
        # A metric name in a string or as a label name is not a selector.
        'label_replace(remotetask_links%s, "remotetask_not_a_metric", "$1", "instance", "(.*)")'
        % SEL,
        'rate(remotetask_api_call_duration_seconds_sum%s[5m]) / '
        'rate(remotetask_api_call_duration_seconds_count%s[5m])' % (SEL, SEL),
        'remotetask_up%s == 0 or up%s == 0' % (SEL, SEL),
    ]
    panels, pid = [], 1
    for title, expr in zip(rows, exprs):
        panels.append({"type": "row", "title": title, "id": pid, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": pid}, "panels": []})
        panels.append(panel(pid + 1, title + " panel", expr))
        pid += 2
    return {
        "title": "test", "uid": "test", "panels": panels,
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus"},
            {"name": "job", "type": "query", "datasource": DS,
             "query": {"query": "label_values(remotetask_up, job)", "refId": "job"}},
            {"name": "instance", "type": "query", "datasource": DS,
             "query": {"query": 'label_values(remotetask_up{job=~"$job"}, instance)',
                       "refId": "instance"}},
        ]},
    }


class DashboardCheck(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not os.access(PROMTOOL, os.X_OK):
            raise AssertionError("%s is missing: install Debian's prometheus package" % PROMTOOL)
        cls.families = promql.scrape_families(SCRAPE)
        cls.tmp = promql.scratch_dir("dashboard-check.")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def check(self, dashboard):
        errors, _ = promql.check_dashboard(dashboard, self.families, PROMTOOL, self.tmp)
        return errors

    def assert_one_error(self, dashboard, *needles):
        errors = self.check(dashboard)
        self.assertEqual(len(errors), 1, "wanted one error, got %r" % errors)
        for n in needles:
            self.assertIn(n, errors[0])

    def test_scrape_families(self):
        f = self.families
        self.assertEqual(f["remotetask_applied_total"], {"direction", "outcome"})
        # A histogram family without series yet: its names, labels unknown.
        self.assertIsNone(f["remotetask_api_call_duration_seconds_bucket"])
        self.assertIn("remotetask_api_call_duration_seconds_count", f)
        self.assertNotIn("remotetask_api_call_duration_seconds", f)
        self.assertEqual(f["remotetask_forward_latency_seconds_bucket"], {"le"})

    def test_good_dashboard_passes(self):
        self.assertEqual(self.check(good_dashboard()), [])

    def test_panel_naming_a_metric_that_does_not_exist_fails(self):
        d = good_dashboard()
        d["panels"].append(panel(100, "Tasks lost",
                                 "rate(remotetask_tasks_lost_total%s[5m])" % SEL))
        self.assert_one_error(d, "remotetask_tasks_lost_total", "'Tasks lost'",
                              "not exported")

    def test_misspelt_metric_fails(self):
        d = good_dashboard()
        d["panels"][1]["targets"][0]["expr"] = "remotetask_applied%s" % SEL
        self.assert_one_error(d, "remotetask_applied ", "not exported")

    def test_histogram_base_name_is_not_a_series(self):
        d = good_dashboard()
        d["panels"][1]["targets"][0]["expr"] = "remotetask_forward_latency_seconds%s" % SEL
        self.assert_one_error(d, "remotetask_forward_latency_seconds ")

    def test_label_the_family_does_not_carry_fails(self):
        d = good_dashboard()
        d["panels"][1]["targets"][0]["expr"] = \
            'remotetask_applied_total{job=~"$job",instance=~"$instance",dir="forward"}'
        self.assert_one_error(d, "no label 'dir'")

    def test_query_that_does_not_parse_fails(self):
        d = good_dashboard()
        d["panels"][1]["targets"][0]["expr"] = "rate(remotetask_applied_total%s[5m]" % SEL
        errors = self.check(d)
        self.assertTrue(any("remotetask_applied_total" in e and "parse" in e for e in errors),
                        errors)

    def test_variable_query_naming_an_unknown_metric_fails(self):
        d = good_dashboard()
        d["templating"]["list"][2]["query"]["query"] = "label_values(remotetask_upp, instance)"
        self.assert_one_error(d, "variable 'instance'", "remotetask_upp")

    def test_regex_on_names_fails(self):
        d = good_dashboard()
        d["panels"][1]["targets"][0]["expr"] = \
            '{__name__=~"remotetask_.+",job=~"$job",instance=~"$instance"}'
        self.assert_one_error(d, "regex")

    def test_panel_without_the_datasource_variable_fails(self):
        d = good_dashboard()
        p = d["panels"][1]
        p["datasource"] = {"type": "prometheus", "uid": "P1809F7CD0C75ACF3"}
        self.assert_one_error(d, "does not use the datasource variable")

    def test_selector_without_instance_filter_fails(self):
        d = good_dashboard()
        d["panels"][1]["targets"][0]["expr"] = 'remotetask_links{job=~"$job"}'
        self.assert_one_error(d, "not filtered by $instance")

    def test_missing_row_fails(self):
        d = good_dashboard()
        del d["panels"][8:10]  # the API row and its panel
        self.assert_one_error(d, "rows are")

    def test_shipped_dashboard_with_one_query_renamed_fails(self):
        with open(os.path.join(SOURCE, "dist/grafana/remotetask.json")) as f:
            shipped = json.load(f)
        d = copy.deepcopy(shipped)
        target = next(t for p in d["panels"] for t in p.get("targets", [])
                      if "remotetask_outbox_backlog" in t["expr"])
        target["expr"] = target["expr"].replace("remotetask_outbox_backlog",
                                                "remotetask_outbox_backlog_total")
        errors, _ = promql.check_dashboard(d, self.families, PROMTOOL, self.tmp)
        self.assertTrue(any("remotetask_outbox_backlog_total" in e for e in errors), errors)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--promtool":
        PROMTOOL = sys.argv[2]
        del sys.argv[1:3]
    unittest.main(verbosity=2)
