/* Unit tests of common/metrics: the exact text of a small registry, label
 * and help escaping, cumulative histogram buckets, the caps on series, the
 * checks on names and values, and the billmgr observer feeding a registry
 * as the daemon wires it. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cmocka.h>

#include "billmgr.h"
#include "buf.h"
#include "metrics.h"

static char *render(const struct metrics *m)
{
    struct buf b;
    buf_init(&b, 1 << 24);
    assert_int_equal(metrics_render(m, &b), 0);
    char *s = buf_steal(&b);
    assert_non_null(s);
    return s;
}

static void render_expect(const struct metrics *m, const char *want)
{
    char *got = render(m);
    assert_string_equal(got, want);
    free(got);
}

static void small_registry_exact_text(void **state)
{
    (void)state;
    struct metrics *m = metrics_new();
    assert_non_null(m);
    assert_int_equal(metrics_describe(m, "rt_events_total", METRICS_COUNTER, "Events seen.", NULL),
                     0);
    assert_int_equal(
        metrics_describe(m, "rt_applied_total", METRICS_COUNTER, "Applied.", "direction,outcome"),
        0);
    assert_int_equal(metrics_describe(m, "rt_backlog", METRICS_GAUGE, "Backlog.", ""), 0);
    assert_int_equal(
        metrics_describe(m, "rt_call_seconds", METRICS_HISTOGRAM, "Call time.", "func"), 0);
    assert_int_equal(metrics_describe(m, "rt_empty", METRICS_GAUGE, "No series yet.", "queue"), 0);

    /* Before anything moves, the unlabelled families show 0. */
    render_expect(m, "# HELP rt_events_total Events seen.\n"
                     "# TYPE rt_events_total counter\n"
                     "rt_events_total 0\n"
                     "# HELP rt_applied_total Applied.\n"
                     "# TYPE rt_applied_total counter\n"
                     "# HELP rt_backlog Backlog.\n"
                     "# TYPE rt_backlog gauge\n"
                     "rt_backlog 0\n"
                     "# HELP rt_call_seconds Call time.\n"
                     "# TYPE rt_call_seconds histogram\n"
                     "# HELP rt_empty No series yet.\n"
                     "# TYPE rt_empty gauge\n");

    assert_int_equal(metrics_counter_add(m, "rt_events_total", 3, NULL), 0);
    assert_int_equal(metrics_counter_add(m, "rt_events_total", 1, NULL), 0);
    assert_int_equal(metrics_counter_add(m, "rt_applied_total", 1, "forward", "created", NULL), 0);
    assert_int_equal(metrics_counter_add(m, "rt_applied_total", 2, "reverse", "updated", NULL), 0);
    assert_int_equal(metrics_counter_add(m, "rt_applied_total", 1, "forward", "created", NULL), 0);
    assert_int_equal(metrics_gauge_set(m, "rt_backlog", 7, NULL), 0);
    assert_int_equal(metrics_gauge_add(m, "rt_backlog", -2.5, NULL), 0);
    assert_int_equal(metrics_histogram_observe(m, "rt_call_seconds", 0.5, "task.edit", NULL), 0);
    assert_int_equal(metrics_histogram_observe(m, "rt_call_seconds", 0.0625, "task.edit", NULL), 0);

    render_expect(m, "# HELP rt_events_total Events seen.\n"
                     "# TYPE rt_events_total counter\n"
                     "rt_events_total 4\n"
                     "# HELP rt_applied_total Applied.\n"
                     "# TYPE rt_applied_total counter\n"
                     "rt_applied_total{direction=\"forward\",outcome=\"created\"} 2\n"
                     "rt_applied_total{direction=\"reverse\",outcome=\"updated\"} 2\n"
                     "# HELP rt_backlog Backlog.\n"
                     "# TYPE rt_backlog gauge\n"
                     "rt_backlog 4.5\n"
                     "# HELP rt_call_seconds Call time.\n"
                     "# TYPE rt_call_seconds histogram\n"
                     "rt_call_seconds_bucket{func=\"task.edit\",le=\"0.005\"} 0\n"
                     "rt_call_seconds_bucket{func=\"task.edit\",le=\"0.01\"} 0\n"
                     "rt_call_seconds_bucket{func=\"task.edit\",le=\"0.025\"} 0\n"
                     "rt_call_seconds_bucket{func=\"task.edit\",le=\"0.05\"} 0\n"
                     "rt_call_seconds_bucket{func=\"task.edit\",le=\"0.1\"} 1\n"
                     "rt_call_seconds_bucket{func=\"task.edit\",le=\"0.25\"} 1\n"
                     "rt_call_seconds_bucket{func=\"task.edit\",le=\"0.5\"} 2\n"
                     "rt_call_seconds_bucket{func=\"task.edit\",le=\"1\"} 2\n"
                     "rt_call_seconds_bucket{func=\"task.edit\",le=\"2.5\"} 2\n"
                     "rt_call_seconds_bucket{func=\"task.edit\",le=\"5\"} 2\n"
                     "rt_call_seconds_bucket{func=\"task.edit\",le=\"10\"} 2\n"
                     "rt_call_seconds_bucket{func=\"task.edit\",le=\"30\"} 2\n"
                     "rt_call_seconds_bucket{func=\"task.edit\",le=\"60\"} 2\n"
                     "rt_call_seconds_bucket{func=\"task.edit\",le=\"+Inf\"} 2\n"
                     "rt_call_seconds_sum{func=\"task.edit\"} 0.5625\n"
                     "rt_call_seconds_count{func=\"task.edit\"} 2\n"
                     "# HELP rt_empty No series yet.\n"
                     "# TYPE rt_empty gauge\n");
    assert_int_equal(metrics_series(m), 5);
    assert_int_equal(metrics_refused(m), 0);
    metrics_free(m);
    metrics_free(NULL);
}

static void escaping_of_labels_and_help(void **state)
{
    (void)state;
    struct metrics *m = metrics_new();
    assert_non_null(m);
    assert_int_equal(metrics_describe(m, "rt_calls_total", METRICS_COUNTER,
                                      "Calls \"quoted\", back\\slash and\nnew line.", "func"),
                     0);
    assert_int_equal(metrics_counter_add(m, "rt_calls_total", 1, "a\"b\\c\nd", NULL), 0);
    assert_int_equal(metrics_counter_add(m, "rt_calls_total", 1, "задача €", NULL), 0);
    assert_int_equal(metrics_counter_add(m, "rt_calls_total", 1, "", NULL), 0);
    /* Help texts keep their quotes (only label values escape them). */
    render_expect(m, "# HELP rt_calls_total Calls \"quoted\", back\\\\slash and\\nnew line.\n"
                     "# TYPE rt_calls_total counter\n"
                     "rt_calls_total{func=\"a\\\"b\\\\c\\nd\"} 1\n"
                     "rt_calls_total{func=\"задача €\"} 1\n"
                     "rt_calls_total{func=\"\"} 1\n");
    metrics_free(m);
}

static void histogram_buckets_cumulative(void **state)
{
    (void)state;
    static const double bounds[METRICS_BUCKETS] = METRICS_BUCKET_BOUNDS;
    struct metrics *m = metrics_new();
    assert_non_null(m);
    assert_int_equal(metrics_describe(m, "rt_lat_seconds", METRICS_HISTOGRAM, "Latency.", NULL), 0);
    /* One observation exactly on each bound (le is "less or equal"), one
     * above the last bound, one negative. */
    double sum = 0;
    for (size_t i = 0; i < METRICS_BUCKETS; i++) {
        assert_int_equal(metrics_histogram_observe(m, "rt_lat_seconds", bounds[i], NULL), 0);
        sum += bounds[i];
    }
    assert_int_equal(metrics_histogram_observe(m, "rt_lat_seconds", 3600, NULL), 0);
    assert_int_equal(metrics_histogram_observe(m, "rt_lat_seconds", -1, NULL), 0);
    assert_int_equal(metrics_histogram_observe(m, "rt_lat_seconds", NAN, NULL), -1);
    sum += 3600 - 1;

    char *text = render(m);
    /* Bucket i holds the negative one plus the observations at bounds
     * 0..i: i + 2. */
    const char *p = text;
    for (size_t i = 0; i <= METRICS_BUCKETS; i++) {
        char le[32], want[96];
        if (i < METRICS_BUCKETS)
            snprintf(le, sizeof(le), "%g", bounds[i]);
        else
            snprintf(le, sizeof(le), "+Inf");
        unsigned long n = i < METRICS_BUCKETS ? (unsigned long)i + 2 : METRICS_BUCKETS + 2;
        snprintf(want, sizeof(want), "rt_lat_seconds_bucket{le=\"%s\"} %lu\n", le, n);
        const char *at = strstr(p, want);
        assert_non_null(at);
        p = at + strlen(want); /* and in increasing order */
    }
    char want[96];
    snprintf(want, sizeof(want), "rt_lat_seconds_count %d\n", METRICS_BUCKETS + 2);
    assert_non_null(strstr(text, want));
    const char *s = strstr(text, "rt_lat_seconds_sum ");
    assert_non_null(s);
    assert_true(fabs(strtod(s + strlen("rt_lat_seconds_sum "), NULL) - sum) < 1e-9);
    free(text);

    /* Reset: back to zero buckets. */
    assert_int_equal(metrics_reset(m, "rt_lat_seconds"), 0);
    text = render(m);
    assert_non_null(strstr(text, "rt_lat_seconds_bucket{le=\"+Inf\"} 0\n"));
    assert_non_null(strstr(text, "rt_lat_seconds_count 0\n"));
    free(text);
    metrics_free(m);
}

static void value_formats(void **state)
{
    (void)state;
    struct metrics *m = metrics_new();
    assert_non_null(m);
    assert_int_equal(metrics_describe(m, "rt_g", METRICS_GAUGE, "G.", "k"), 0);
    assert_int_equal(metrics_gauge_set(m, "rt_g", 0.1, "a", NULL), 0);
    assert_int_equal(metrics_gauge_set(m, "rt_g", 123456789012345.0, "b", NULL), 0);
    assert_int_equal(metrics_gauge_set(m, "rt_g", INFINITY, "c", NULL), 0);
    assert_int_equal(metrics_gauge_set(m, "rt_g", -INFINITY, "d", NULL), 0);
    assert_int_equal(metrics_gauge_set(m, "rt_g", NAN, "e", NULL), 0);
    assert_int_equal(metrics_gauge_set(m, "rt_g", 1.0 / 3.0, "f", NULL), 0);
    assert_int_equal(metrics_gauge_set(m, "rt_g", -2, "g", NULL), 0);
    render_expect(m, "# HELP rt_g G.\n"
                     "# TYPE rt_g gauge\n"
                     "rt_g{k=\"a\"} 0.1\n"
                     "rt_g{k=\"b\"} 123456789012345\n"
                     "rt_g{k=\"c\"} +Inf\n"
                     "rt_g{k=\"d\"} -Inf\n"
                     "rt_g{k=\"e\"} NaN\n"
                     "rt_g{k=\"f\"} 0.33333333333333331\n"
                     "rt_g{k=\"g\"} -2\n");
    metrics_free(m);
}

static void describe_checks(void **state)
{
    (void)state;
    struct metrics *m = metrics_new();
    assert_non_null(m);
    assert_int_equal(metrics_describe(m, "", METRICS_COUNTER, "h", NULL), -1);
    assert_int_equal(metrics_describe(m, NULL, METRICS_COUNTER, "h", NULL), -1);
    assert_int_equal(metrics_describe(m, "9lives", METRICS_COUNTER, "h", NULL), -1);
    assert_int_equal(metrics_describe(m, "has-dash", METRICS_COUNTER, "h", NULL), -1);
    assert_int_equal(metrics_describe(m, "ok:colon_total", METRICS_COUNTER, "h", NULL), 0);
    assert_int_equal(metrics_describe(m, "rt_x", METRICS_COUNTER, NULL, NULL), -1);
    assert_int_equal(metrics_describe(m, "rt_x", METRICS_COUNTER, "bad \xff utf8", NULL), -1);
    assert_int_equal(metrics_describe(m, "rt_x", METRICS_COUNTER, "h", "a,a"), -1);
    assert_int_equal(metrics_describe(m, "rt_x", METRICS_COUNTER, "h", "a,b,c,d"), -1);
    assert_int_equal(metrics_describe(m, "rt_x", METRICS_COUNTER, "h", "a,"), -1);
    assert_int_equal(metrics_describe(m, "rt_x", METRICS_COUNTER, "h", "__reserved"), -1);
    assert_int_equal(metrics_describe(m, "rt_x", METRICS_COUNTER, "h", "co:lon"), -1);
    assert_int_equal(metrics_describe(m, "rt_x", METRICS_HISTOGRAM, "h", "le"), -1);
    assert_int_equal(metrics_describe(m, "rt_x", (enum metrics_type)7, "h", NULL), -1);
    char longhelp[METRICS_HELP_MAX + 2];
    memset(longhelp, 'h', sizeof(longhelp) - 1);
    longhelp[sizeof(longhelp) - 1] = '\0';
    assert_int_equal(metrics_describe(m, "rt_x", METRICS_COUNTER, longhelp, NULL), -1);
    char longname[METRICS_NAME_MAX + 2];
    memset(longname, 'n', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    assert_int_equal(metrics_describe(m, longname, METRICS_COUNTER, "h", NULL), -1);
    /* Nothing of the refused ones was registered. */
    assert_int_equal(metrics_counter_add(m, "rt_x", 1, NULL), -1);

    assert_int_equal(metrics_describe(m, "rt_x", METRICS_COUNTER, "first", "a,b,c"), 0);
    assert_int_equal(metrics_describe(m, "rt_x", METRICS_COUNTER, "second", "a,b,c"), 0);
    assert_int_equal(metrics_describe(m, "rt_x", METRICS_GAUGE, "h", "a,b,c"), -1);
    assert_int_equal(metrics_describe(m, "rt_x", METRICS_COUNTER, "h", "a,b"), -1);
    assert_int_equal(metrics_describe(m, "rt_x", METRICS_COUNTER, "h", "a,c,b"), -1);
    char *text = render(m);
    assert_non_null(strstr(text, "# HELP rt_x first\n"));
    assert_null(strstr(text, "second"));
    free(text);

    /* The family table is bounded. */
    size_t have = 2;
    for (size_t i = have; i < METRICS_MAX_FAMILIES; i++) {
        char name[32];
        snprintf(name, sizeof(name), "rt_f%zu", i);
        assert_int_equal(metrics_describe(m, name, METRICS_GAUGE, "h", NULL), 0);
    }
    assert_int_equal(metrics_describe(m, "rt_one_too_many", METRICS_GAUGE, "h", NULL), -1);
    assert_int_equal(metrics_describe(m, "rt_x", METRICS_COUNTER, "h", "a,b,c"), 0);
    metrics_free(m);
}

static void observation_checks(void **state)
{
    (void)state;
    struct metrics *m = metrics_new();
    assert_non_null(m);
    assert_int_equal(metrics_describe(m, "rt_c_total", METRICS_COUNTER, "C.", "a,b"), 0);
    assert_int_equal(metrics_describe(m, "rt_g", METRICS_GAUGE, "G.", NULL), 0);

    assert_int_equal(metrics_counter_add(m, "rt_unknown_total", 1, "x", "y", NULL), -1);
    assert_int_equal(metrics_gauge_set(m, "rt_c_total", 1, "x", "y", NULL), -1);
    assert_int_equal(metrics_histogram_observe(m, "rt_g", 1, NULL), -1);
    assert_int_equal(metrics_counter_add(m, "rt_c_total", -1, "x", "y", NULL), -1);
    assert_int_equal(metrics_counter_add(m, "rt_c_total", NAN, "x", "y", NULL), -1);
    assert_int_equal(metrics_counter_add(m, "rt_c_total", INFINITY, "x", "y", NULL), -1);
    assert_int_equal(metrics_counter_set(m, "rt_c_total", -3, "x", "y", NULL), -1);
    assert_int_equal(metrics_refused(m), 0);

    /* Label values: count, length, encoding. Each of these is counted. */
    assert_int_equal(metrics_counter_add(m, "rt_c_total", 1, "x", NULL), -1);
    assert_int_equal(metrics_counter_add(m, "rt_c_total", 1, "x", "y", "z", NULL), -1);
    assert_int_equal(metrics_counter_add(m, "rt_c_total", 1, "x", "y", "z", "w", "v", NULL), -1);
    assert_int_equal(metrics_gauge_set(m, "rt_g", 1, "x", NULL), -1);
    char longv[METRICS_LABEL_VALUE_MAX + 2];
    memset(longv, 'v', sizeof(longv) - 1);
    longv[sizeof(longv) - 1] = '\0';
    assert_int_equal(metrics_counter_add(m, "rt_c_total", 1, longv, "y", NULL), -1);
    longv[METRICS_LABEL_VALUE_MAX] = '\0'; /* exactly the cap is fine */
    assert_int_equal(metrics_counter_add(m, "rt_c_total", 1, longv, "y", NULL), 0);
    assert_int_equal(metrics_counter_add(m, "rt_c_total", 1, "x", "\xc3", NULL), -1);
    assert_int_equal(metrics_counter_add(m, "rt_c_total", 1, "x", "\xc0\xaf", NULL), -1);
    assert_int_equal(metrics_counter_add(m, "rt_c_total", 1, "x", "\xed\xa0\x80", NULL), -1);
    assert_int_equal(metrics_counter_add(m, "rt_c_total", 1, "x", "\xf4\x90\x80\x80", NULL), -1);
    assert_int_equal(metrics_counter_add(m, "rt_c_total", 1, "x", "\xf0\x9f\x98\x80", NULL), 0);
    assert_int_equal(metrics_refused(m), 9);
    assert_int_equal(metrics_series(m), 3); /* rt_g, and two rt_c_total */

    /* counter_set overwrites; gauges keep negative values. */
    assert_int_equal(metrics_counter_set(m, "rt_c_total", 41, "s", "t", NULL), 0);
    assert_int_equal(metrics_counter_add(m, "rt_c_total", 1, "s", "t", NULL), 0);
    assert_int_equal(metrics_gauge_set(m, "rt_g", -5, NULL), 0);
    char *text = render(m);
    assert_non_null(strstr(text, "rt_c_total{a=\"s\",b=\"t\"} 42\n"));
    assert_non_null(strstr(text, "rt_g -5\n"));
    free(text);

    /* Reset drops the labelled series and zeroes the unlabelled one. */
    assert_int_equal(metrics_reset(m, "rt_c_total"), 0);
    assert_int_equal(metrics_reset(m, "rt_g"), 0);
    assert_int_equal(metrics_reset(m, "rt_nothing"), -1);
    assert_int_equal(metrics_series(m), 1);
    render_expect(m, "# HELP rt_c_total C.\n"
                     "# TYPE rt_c_total counter\n"
                     "# HELP rt_g G.\n"
                     "# TYPE rt_g gauge\n"
                     "rt_g 0\n");
    metrics_free(m);
}

static void series_caps(void **state)
{
    (void)state;
    struct metrics *m = metrics_new();
    assert_non_null(m);
    char v[32];
    size_t families = METRICS_MAX_SERIES / METRICS_MAX_SERIES_PER_FAMILY;

    /* One family fills up at its own cap, and a value seen before still
     * counts after that. */
    assert_int_equal(metrics_describe(m, "rt_f0_total", METRICS_COUNTER, "F.", "func"), 0);
    for (size_t i = 0; i < METRICS_MAX_SERIES_PER_FAMILY; i++) {
        snprintf(v, sizeof(v), "func%zu", i);
        assert_int_equal(metrics_counter_add(m, "rt_f0_total", 1, v, NULL), 0);
    }
    assert_int_equal(metrics_counter_add(m, "rt_f0_total", 1, "one.more", NULL), -1);
    assert_int_equal(metrics_counter_add(m, "rt_f0_total", 1, "func0", NULL), 0);
    assert_int_equal(metrics_refused(m), 1);

    /* The registry as a whole fills up at its cap. */
    for (size_t f = 1; f < families; f++) {
        char name[32];
        snprintf(name, sizeof(name), "rt_f%zu_total", f);
        assert_int_equal(metrics_describe(m, name, METRICS_COUNTER, "F.", "func"), 0);
        for (size_t i = 0; i < METRICS_MAX_SERIES_PER_FAMILY; i++) {
            snprintf(v, sizeof(v), "func%zu", i);
            assert_int_equal(metrics_counter_add(m, name, 1, v, NULL), 0);
        }
    }
    assert_int_equal(metrics_series(m), METRICS_MAX_SERIES);
    assert_int_equal(metrics_describe(m, "rt_more", METRICS_HISTOGRAM, "M.", "func"), 0);
    assert_int_equal(metrics_histogram_observe(m, "rt_more", 1, "x", NULL), -1);
    /* An unlabelled family needs a series of its own: refused when full. */
    assert_int_equal(metrics_describe(m, "rt_plain", METRICS_GAUGE, "P.", NULL), -1);
    assert_int_equal(metrics_refused(m), 2);

    /* Resetting a family gives its room back. */
    assert_int_equal(metrics_reset(m, "rt_f1_total"), 0);
    assert_int_equal(metrics_series(m), METRICS_MAX_SERIES - METRICS_MAX_SERIES_PER_FAMILY);
    assert_int_equal(metrics_histogram_observe(m, "rt_more", 1, "x", NULL), 0);
    assert_int_equal(metrics_describe(m, "rt_plain", METRICS_GAUGE, "P.", NULL), 0);

    /* The rendering of a full registry fits in a few MiB. */
    struct buf b;
    buf_init(&b, 4 << 20);
    assert_int_equal(metrics_render(m, &b), 0);
    assert_non_null(strstr(buf_cstr(&b), "rt_f0_total{func=\"func0\"} 2\n"));
    buf_release(&b);
    metrics_free(m);
}

static void render_respects_the_cap(void **state)
{
    (void)state;
    struct metrics *m = metrics_new();
    assert_non_null(m);
    assert_int_equal(metrics_describe_remotetask(m), 0);
    struct buf b;
    buf_init(&b, 100);
    assert_int_equal(metrics_render(m, &b), -1);
    assert_true(b.len <= 100);
    buf_release(&b);
    metrics_free(m);
}

static void remotetask_families(void **state)
{
    (void)state;
    static const char *const names[] = {
        METRICS_EVENTS_RECORDED,
        METRICS_MESSAGES_PUBLISHED,
        METRICS_MESSAGES_CONFIRMED,
        METRICS_APPLIED,
        METRICS_RETRIED,
        METRICS_DEAD_LETTERED,
        METRICS_BROKER_RECONNECTS,
        METRICS_API_CALLS,
        METRICS_QUEUE_READY,
        METRICS_QUEUE_CONSUMERS,
        METRICS_OUTBOX_BACKLOG,
        METRICS_OUTBOX_OLDEST_AGE,
        METRICS_INFLIGHT,
        METRICS_LINKS,
        METRICS_UP,
        METRICS_API_CALL_DURATION,
        METRICS_FORWARD_LATENCY,
    };
    struct metrics *m = metrics_new();
    assert_non_null(m);
    assert_int_equal(metrics_describe_remotetask(m), 0);
    /* Twice is harmless: the daemon may re-register after a reload. */
    assert_int_equal(metrics_describe_remotetask(m), 0);

    /* Each family with the labels the header promises. */
    assert_int_equal(metrics_counter_add(m, METRICS_EVENTS_RECORDED, 1, NULL), 0);
    assert_int_equal(metrics_counter_add(m, METRICS_MESSAGES_PUBLISHED, 1, "task", NULL), 0);
    assert_int_equal(metrics_counter_add(m, METRICS_MESSAGES_CONFIRMED, 1, "task", NULL), 0);
    assert_int_equal(metrics_counter_add(m, METRICS_APPLIED, 1, "forward", "created", NULL), 0);
    assert_int_equal(metrics_counter_add(m, METRICS_RETRIED, 1, "forward", NULL), 0);
    assert_int_equal(
        metrics_counter_add(m, METRICS_DEAD_LETTERED, 1, "forward", "undecodable", NULL), 0);
    assert_int_equal(metrics_counter_add(m, METRICS_BROKER_RECONNECTS, 1, NULL), 0);
    assert_int_equal(metrics_counter_add(m, METRICS_API_CALLS, 1, "task.edit", "ok", NULL), 0);
    assert_int_equal(metrics_gauge_set(m, METRICS_QUEUE_READY, 3, "remotetask.forward.7", NULL), 0);
    assert_int_equal(metrics_gauge_set(m, METRICS_QUEUE_CONSUMERS, 1, "remotetask.forward.7", NULL),
                     0);
    assert_int_equal(metrics_gauge_set(m, METRICS_OUTBOX_BACKLOG, 2, NULL), 0);
    assert_int_equal(metrics_gauge_set(m, METRICS_OUTBOX_OLDEST_AGE, 1.5, NULL), 0);
    assert_int_equal(metrics_gauge_set(m, METRICS_INFLIGHT, 4, "api_calls", NULL), 0);
    assert_int_equal(metrics_gauge_set(m, METRICS_LINKS, 10, NULL), 0);
    assert_int_equal(metrics_gauge_set(m, METRICS_UP, 1, NULL), 0);
    assert_int_equal(
        metrics_histogram_observe(m, METRICS_API_CALL_DURATION, 0.05, "task.edit", NULL), 0);
    assert_int_equal(metrics_histogram_observe(m, METRICS_FORWARD_LATENCY, 2, NULL), 0);
    assert_int_equal(metrics_refused(m), 0);

    char *text = render(m);
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        char want[160];
        assert_int_equal(strncmp(names[i], "remotetask_", 11), 0);
        snprintf(want, sizeof(want), "# HELP %s ", names[i]);
        assert_non_null(strstr(text, want));
        snprintf(want, sizeof(want), "# TYPE %s ", names[i]);
        assert_non_null(strstr(text, want));
    }
    assert_non_null(strstr(text, "# TYPE remotetask_api_call_duration_seconds histogram\n"));
    assert_non_null(strstr(text, "# TYPE remotetask_up gauge\n"));
    assert_non_null(strstr(text, "# TYPE remotetask_api_calls_total counter\n"));
    assert_non_null(strstr(text, "remotetask_forward_latency_seconds_bucket{le=\"2.5\"} 1\n"));
    assert_non_null(strstr(text, "remotetask_applied_total{direction=\"forward\","
                                 "outcome=\"created\"} 1\n"));
    free(text);
    metrics_free(m);
}

/* ---- the billmgr observer, wired to a registry as the daemon does ---- */

struct observed {
    struct metrics *m;
    int calls;
    int cb_calls;
    int cb_saw_observer; /* the observer ran before the call's callback */
    char func[64];
    rt_status status;
    char err_type[32];
    double seconds;
};

static void observe_call(void *arg, const char *func, rt_status status, const char *err_type,
                         double seconds)
{
    struct observed *o = arg;
    o->calls++;
    snprintf(o->func, sizeof(o->func), "%s", func);
    o->status = status;
    snprintf(o->err_type, sizeof(o->err_type), "%s", err_type);
    o->seconds = seconds;
    assert_int_equal(
        metrics_counter_add(o->m, METRICS_API_CALLS, 1, func, rt_status_name(status), NULL), 0);
    assert_int_equal(
        metrics_histogram_observe(o->m, METRICS_API_CALL_DURATION, seconds, func, NULL), 0);
}

static void observed_done(void *arg, const struct billmgr_reply *r)
{
    struct observed *o = arg;
    (void)r;
    o->cb_calls++;
    o->cb_saw_observer = o->calls == 1;
}

/* A loopback port nothing listens on: connections are refused at once. */
static int closed_port(void)
{
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    close(fd);
    return ntohs(sa.sin_port);
}

static void billmgr_observer_feeds_metrics(void **state)
{
    (void)state;
    char url[128], err[256];
    struct observed o;
    memset(&o, 0, sizeof(o));
    o.m = metrics_new();
    assert_non_null(o.m);
    assert_int_equal(metrics_describe_remotetask(o.m), 0);

    snprintf(url, sizeof(url), "http://127.0.0.1:%d/billmgr", closed_port());
    struct billmgr_opts bo;
    memset(&bo, 0, sizeof(bo));
    bo.url = url;
    bo.login = "remotetask";
    bo.password = "secret";
    bo.timeout_ms = 5000;
    bo.on_call = observe_call;
    bo.on_call_arg = &o;
    struct billmgr *bm = billmgr_new(&bo, err, sizeof(err));
    assert_non_null(bm);

    /* An asynchronous call, driven until its callback ran. */
    assert_int_equal(billmgr_call(bm, "task.edit", NULL, observed_done, &o), 0);
    while (o.cb_calls == 0) {
        struct pollfd fds[8];
        size_t n = billmgr_pollfds(bm, fds, 8);
        int t = billmgr_timeout_ms(bm);
        assert_true(poll(fds, n, t < 0 || t > 1000 ? 1000 : t) >= 0);
        billmgr_handle(bm, fds, n);
    }
    assert_int_equal(o.calls, 1);
    assert_int_equal(o.cb_calls, 1);
    assert_true(o.cb_saw_observer);
    assert_string_equal(o.func, "task.edit");
    assert_int_equal(o.status, RT_RETRY);
    assert_string_equal(o.err_type, "transport");
    assert_true(o.seconds >= 0);

    /* The synchronous helper goes through the same observer. */
    struct billmgr_error e;
    assert_int_equal(billmgr_call_sync(bm, "task", NULL, NULL, &e), RT_RETRY);
    assert_int_equal(o.calls, 2);
    assert_string_equal(o.func, "task");

    /* Calls cancelled by billmgr_free are not observed. */
    assert_int_equal(billmgr_call(bm, "task.delete", NULL, observed_done, &o), 0);
    billmgr_free(bm);
    assert_int_equal(o.calls, 2);

    char *text = render(o.m);
    assert_non_null(strstr(text, "remotetask_api_calls_total{func=\"task.edit\","
                                 "outcome=\"retry\"} 1\n"));
    assert_non_null(strstr(text, "remotetask_api_calls_total{func=\"task\","
                                 "outcome=\"retry\"} 1\n"));
    assert_non_null(
        strstr(text, "remotetask_api_call_duration_seconds_count{func=\"task.edit\"} 1\n"));
    assert_null(strstr(text, "task.delete"));
    free(text);
    metrics_free(o.m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(small_registry_exact_text),
        cmocka_unit_test(escaping_of_labels_and_help),
        cmocka_unit_test(histogram_buckets_cumulative),
        cmocka_unit_test(value_formats),
        cmocka_unit_test(describe_checks),
        cmocka_unit_test(observation_checks),
        cmocka_unit_test(series_caps),
        cmocka_unit_test(render_respects_the_cap),
        cmocka_unit_test(remotetask_families),
        cmocka_unit_test(billmgr_observer_feeds_metrics),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
