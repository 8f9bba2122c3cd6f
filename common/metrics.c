#include "metrics.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One combination of label values and its numbers. A counter or gauge
 * keeps its value in value; a histogram keeps its sum there, its count in
 * count and, per bucket, the observations that fell in that bucket and in
 * no lower one (made cumulative when rendered, so that an observation
 * costs one increment). */
struct metrics_series {
    char *values[METRICS_MAX_LABELS];
    double value;
    uint64_t count;
    uint64_t *buckets; /* METRICS_BUCKETS + 1 (the last is +Inf); histograms only */
};

struct metrics_family {
    char *name;
    char *help;
    enum metrics_type type;
    size_t nlabels;
    char *labels[METRICS_MAX_LABELS];
    struct metrics_series *series;
    size_t nseries;
    size_t capseries;
};

struct metrics {
    struct metrics_family fam[METRICS_MAX_FAMILIES];
    size_t nfam;
    size_t nseries; /* all families together */
    uint64_t refused;
};

static const double metrics_bounds[METRICS_BUCKETS] = METRICS_BUCKET_BOUNDS;

/* ---- checks ---------------------------------------------------------- */

/* 1 when s is well-formed UTF-8 (no overlong forms, no surrogates, nothing
 * past U+10FFFF): Prometheus requires it of label values and help texts,
 * and a scrape with a broken byte would be rejected as a whole. */
static int metrics_utf8_ok(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        unsigned c = *p;
        size_t n;
        unsigned cp, min;
        if (c < 0x80) {
            p++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            n = 1, cp = c & 0x1F, min = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            n = 2, cp = c & 0x0F, min = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            n = 3, cp = c & 0x07, min = 0x10000;
        } else {
            return 0;
        }
        for (size_t i = 1; i <= n; i++) {
            if ((p[i] & 0xC0) != 0x80)
                return 0;
            cp = (cp << 6) | (p[i] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        p += n + 1;
    }
    return 1;
}

/* A metric name ([a-zA-Z_:][a-zA-Z0-9_:]*) or, with colon_ok 0, a label
 * name ([a-zA-Z_][a-zA-Z0-9_]*), of n bytes. */
static int metrics_name_ok(const char *s, size_t n, int colon_ok)
{
    if (n == 0 || n > METRICS_NAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
                 (colon_ok && c == ':') || (i > 0 && c >= '0' && c <= '9');
        if (!ok)
            return 0;
    }
    return 1;
}

/* ---- families -------------------------------------------------------- */

static struct metrics_family *metrics_find(const struct metrics *m, const char *name)
{
    for (size_t i = 0; i < m->nfam; i++)
        if (strcmp(m->fam[i].name, name) == 0)
            return (struct metrics_family *)&m->fam[i];
    return NULL;
}

static void metrics_series_release(struct metrics_series *s)
{
    for (size_t i = 0; i < METRICS_MAX_LABELS; i++)
        free(s->values[i]);
    free(s->buckets);
    memset(s, 0, sizeof(*s));
}

static void metrics_family_release(struct metrics_family *f)
{
    for (size_t i = 0; i < f->nseries; i++)
        metrics_series_release(&f->series[i]);
    free(f->series);
    for (size_t i = 0; i < f->nlabels; i++)
        free(f->labels[i]);
    free(f->name);
    free(f->help);
    memset(f, 0, sizeof(*f));
}

/* Appends a series with the given label values (copied) and no
 * observations. Returns it, or NULL when a cap is reached or memory ran
 * out (nothing changed then). */
static struct metrics_series *metrics_series_add(struct metrics *m, struct metrics_family *f,
                                                 const char *const *values)
{
    if (m->nseries >= METRICS_MAX_SERIES || f->nseries >= METRICS_MAX_SERIES_PER_FAMILY)
        return NULL;
    if (f->nseries == f->capseries) {
        size_t cap = f->capseries ? f->capseries * 2 : 8;
        if (cap > METRICS_MAX_SERIES_PER_FAMILY)
            cap = METRICS_MAX_SERIES_PER_FAMILY;
        struct metrics_series *v = realloc(f->series, cap * sizeof(*v));
        if (!v)
            return NULL;
        f->series = v;
        f->capseries = cap;
    }
    struct metrics_series s;
    memset(&s, 0, sizeof(s));
    for (size_t i = 0; i < f->nlabels; i++) {
        s.values[i] = strdup(values[i]);
        if (!s.values[i])
            goto fail_values;
    }
    if (f->type == METRICS_HISTOGRAM) {
        s.buckets = calloc(METRICS_BUCKETS + 1, sizeof(*s.buckets));
        if (!s.buckets)
            goto fail_values;
    }
    f->series[f->nseries] = s;
    m->nseries++;
    return &f->series[f->nseries++];

fail_values:
    metrics_series_release(&s);
    return NULL;
}

struct metrics *metrics_new(void)
{
    return calloc(1, sizeof(struct metrics));
}

void metrics_free(struct metrics *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->nfam; i++)
        metrics_family_release(&m->fam[i]);
    free(m);
}

/* Splits "a,b,c" into out[] (copies). Returns the count, or -1 when a
 * name is invalid, repeated, reserved, there are too many or memory ran
 * out (nothing is left allocated then). */
static int metrics_parse_labels(const char *labels, enum metrics_type type,
                                char *out[METRICS_MAX_LABELS])
{
    size_t n = 0;
    const char *p = labels;
    if (!labels || !*labels)
        return 0;
    for (;;) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (n == METRICS_MAX_LABELS || !metrics_name_ok(p, len, 0) ||
            (len >= 2 && p[0] == '_' && p[1] == '_') ||
            (type == METRICS_HISTOGRAM && len == 2 && memcmp(p, "le", 2) == 0))
            goto fail_names;
        for (size_t i = 0; i < n; i++)
            if (strlen(out[i]) == len && memcmp(out[i], p, len) == 0)
                goto fail_names;
        out[n] = strndup(p, len);
        if (!out[n])
            goto fail_names;
        n++;
        if (!end)
            break;
        p = end + 1;
    }
    return (int)n;

fail_names:
    for (size_t i = 0; i < n; i++) {
        free(out[i]);
        out[i] = NULL;
    }
    return -1;
}

int metrics_describe(struct metrics *m, const char *name, enum metrics_type type, const char *help,
                     const char *labels)
{
    char *lv[METRICS_MAX_LABELS] = {NULL};
    int nl;

    if (!name || !metrics_name_ok(name, strlen(name), 1) || !help ||
        strlen(help) > METRICS_HELP_MAX || !metrics_utf8_ok(help) ||
        (type != METRICS_COUNTER && type != METRICS_GAUGE && type != METRICS_HISTOGRAM))
        return -1;
    nl = metrics_parse_labels(labels, type, lv);
    if (nl < 0)
        return -1;

    struct metrics_family *old = metrics_find(m, name);
    if (old) {
        int same = old->type == type && old->nlabels == (size_t)nl;
        for (size_t i = 0; same && i < (size_t)nl; i++)
            same = strcmp(old->labels[i], lv[i]) == 0;
        for (size_t i = 0; i < (size_t)nl; i++)
            free(lv[i]);
        return same ? 0 : -1;
    }
    if (m->nfam == METRICS_MAX_FAMILIES)
        goto fail_labels;

    struct metrics_family *f = &m->fam[m->nfam];
    memset(f, 0, sizeof(*f));
    f->type = type;
    f->nlabels = (size_t)nl;
    memcpy(f->labels, lv, sizeof(lv));
    f->name = strdup(name);
    f->help = strdup(help);
    if (!f->name || !f->help)
        goto fail_family;
    /* A family without labels has exactly one series; creating it now
     * makes it visible (at 0) from the first scrape, which is what a
     * "rate() over a counter that appears later" alert needs. */
    if (nl == 0 && !metrics_series_add(m, f, NULL))
        goto fail_family;
    m->nfam++;
    return 0;

fail_family:
    metrics_family_release(f);
    return -1;
fail_labels:
    for (size_t i = 0; i < (size_t)nl; i++)
        free(lv[i]);
    return -1;
}

/* ---- observations ---------------------------------------------------- */

/* Finds (or creates) the series of family name and type for the label
 * values in ap (ended by NULL). Returns NULL, counting a refusal where the
 * header says so, when anything is wrong. */
static struct metrics_series *metrics_lookup(struct metrics *m, const char *name,
                                             enum metrics_type type, va_list ap)
{
    const char *values[METRICS_MAX_LABELS + 1];
    size_t n = 0;
    const char *v;

    struct metrics_family *f = metrics_find(m, name);
    if (!f || f->type != type)
        return NULL;
    /* Read at most one more than a family can have: enough to tell a
     * wrong count without walking far past a forgotten sentinel. */
    while (n <= METRICS_MAX_LABELS && (v = va_arg(ap, const char *)) != NULL)
        values[n++] = v;
    if (n != f->nlabels)
        goto refuse;
    for (size_t i = 0; i < n; i++)
        if (strlen(values[i]) > METRICS_LABEL_VALUE_MAX || !metrics_utf8_ok(values[i]))
            goto refuse;

    for (size_t i = 0; i < f->nseries; i++) {
        struct metrics_series *s = &f->series[i];
        size_t j = 0;
        while (j < n && strcmp(s->values[j], values[j]) == 0)
            j++;
        if (j == n)
            return s;
    }
    struct metrics_series *s = metrics_series_add(m, f, values);
    if (!s)
        goto refuse;
    return s;

refuse:
    m->refused++;
    return NULL;
}

int metrics_counter_add(struct metrics *m, const char *name, double v, ...)
{
    if (!isfinite(v) || v < 0)
        return -1;
    va_list ap;
    va_start(ap, v);
    struct metrics_series *s = metrics_lookup(m, name, METRICS_COUNTER, ap);
    va_end(ap);
    if (!s)
        return -1;
    s->value += v;
    return 0;
}

int metrics_counter_set(struct metrics *m, const char *name, double v, ...)
{
    if (!isfinite(v) || v < 0)
        return -1;
    va_list ap;
    va_start(ap, v);
    struct metrics_series *s = metrics_lookup(m, name, METRICS_COUNTER, ap);
    va_end(ap);
    if (!s)
        return -1;
    s->value = v;
    return 0;
}

int metrics_gauge_set(struct metrics *m, const char *name, double v, ...)
{
    va_list ap;
    va_start(ap, v);
    struct metrics_series *s = metrics_lookup(m, name, METRICS_GAUGE, ap);
    va_end(ap);
    if (!s)
        return -1;
    s->value = v;
    return 0;
}

int metrics_gauge_add(struct metrics *m, const char *name, double v, ...)
{
    va_list ap;
    va_start(ap, v);
    struct metrics_series *s = metrics_lookup(m, name, METRICS_GAUGE, ap);
    va_end(ap);
    if (!s)
        return -1;
    s->value += v;
    return 0;
}

int metrics_histogram_observe(struct metrics *m, const char *name, double v, ...)
{
    if (isnan(v))
        return -1;
    va_list ap;
    va_start(ap, v);
    struct metrics_series *s = metrics_lookup(m, name, METRICS_HISTOGRAM, ap);
    va_end(ap);
    if (!s)
        return -1;
    size_t b = 0;
    while (b < METRICS_BUCKETS && v > metrics_bounds[b])
        b++;
    s->buckets[b]++;
    s->count++;
    s->value += v;
    return 0;
}

int metrics_reset(struct metrics *m, const char *name)
{
    struct metrics_family *f = metrics_find(m, name);
    if (!f)
        return -1;
    if (f->nlabels == 0) {
        struct metrics_series *s = &f->series[0];
        s->value = 0;
        s->count = 0;
        if (s->buckets)
            memset(s->buckets, 0, (METRICS_BUCKETS + 1) * sizeof(*s->buckets));
        return 0;
    }
    for (size_t i = 0; i < f->nseries; i++)
        metrics_series_release(&f->series[i]);
    m->nseries -= f->nseries;
    f->nseries = 0;
    return 0;
}

uint64_t metrics_refused(const struct metrics *m)
{
    return m->refused;
}

size_t metrics_series(const struct metrics *m)
{
    return m->nseries;
}

/* ---- the families of remotetask ---------------------------------------- */

static const struct {
    const char *name;
    enum metrics_type type;
    const char *labels;
    const char *help;
} metrics_remotetask[] = {
    {METRICS_EVENTS_RECORDED, METRICS_COUNTER, NULL,
     "Task events taken from the outbox (recorded by taskevent or by reconciliation)."},
    {METRICS_MESSAGES_PUBLISHED, METRICS_COUNTER, "kind",
     "Messages handed to the broker, by kind."},
    {METRICS_MESSAGES_CONFIRMED, METRICS_COUNTER, "kind",
     "Messages acknowledged by the broker and committed, by kind."},
    {METRICS_APPLIED, METRICS_COUNTER, "direction,outcome",
     "Messages applied through the BILLmanager API, by direction and outcome."},
    {METRICS_RETRIED, METRICS_COUNTER, "direction",
     "Deliveries sent to a retry delay queue after a transient failure."},
    {METRICS_RETRY_RESENT, METRICS_COUNTER, "direction",
     "Retry copies the broker confirmed but never brought back from their delay queue, sent "
     "again to the main queue."},
    {METRICS_DEAD_LETTERED, METRICS_COUNTER, "direction,reason",
     "Deliveries sent to the dead-letter queue, by reason."},
    {METRICS_BROKER_RECONNECTS, METRICS_COUNTER, NULL,
     "AMQP connections established after the first one."},
    {METRICS_API_CALLS, METRICS_COUNTER, "func,outcome",
     "Completed BILLmanager API calls, by function and outcome."},
    {METRICS_QUEUE_READY, METRICS_GAUGE, "queue",
     "Messages ready in each queue, as the broker last reported."},
    {METRICS_QUEUE_CONSUMERS, METRICS_GAUGE, "queue",
     "Consumers of each queue, as the broker last reported."},
    {METRICS_OUTBOX_BACKLOG, METRICS_GAUGE, NULL, "Outbox rows waiting to be published."},
    {METRICS_OUTBOX_OLDEST_AGE, METRICS_GAUGE, NULL,
     "Age of the oldest waiting outbox event in seconds, 0 when empty."},
    {METRICS_INFLIGHT, METRICS_GAUGE, "what",
     "Work in progress: API calls, unconfirmed publishes, held deliveries."},
    {METRICS_LINKS, METRICS_GAUGE, NULL, "Source task to target task links in the store."},
    {METRICS_UP, METRICS_GAUGE, NULL, "1 while the daemon runs with its broker connected."},
    {METRICS_BROKER_STATE, METRICS_GAUGE, "state",
     "1 for the broker connection's state (connected, blocked, unreachable, refused, "
     "connecting, reconnecting), 0 for the others."},
    {METRICS_BROKER_NODE, METRICS_GAUGE, "node",
     "1 for the broker node (host:port) the daemon is connected to, or was last."},
    {METRICS_API_UP, METRICS_GAUGE, NULL,
     "1 when the last BILLmanager API call got an answer from the API (success or an API "
     "error), 0 when it failed in transport (refused, timeout, HTTP error, not JSON); NaN "
     "before the first call."},
    {METRICS_REVERSE_CYCLE_LAST, METRICS_GAUGE, NULL,
     "Server role: when the last state cycle over every client ended, in seconds since the "
     "epoch (the daemon's start until one has)."},
    {METRICS_REVERSE_CYCLE_DURATION, METRICS_GAUGE, NULL,
     "Server role: how long the last state cycle over every client took, in seconds."},
    {METRICS_CONTROL_REFUSED, METRICS_COUNTER, NULL,
     "Connections to the control socket refused: a uid other than root and the daemon's."},
    {METRICS_STORE_COMMITS, METRICS_COUNTER, NULL, "Commits of the daemon's store (SQLite)."},
    {METRICS_STORE_SYNCS, METRICS_COUNTER, NULL,
     "Syncs (fsyncs) of the store's files: commits are grouped, one sync per loop pass whose "
     "acks or publishes wait for one, commits nobody waits for within a second, plus two per "
     "checkpoint."},
    {METRICS_SYNC_INTERVAL, METRICS_GAUGE, NULL,
     "Server role: server.sync_interval in seconds (0 without the server role)."},
    {METRICS_API_CALL_DURATION, METRICS_HISTOGRAM, "func",
     "Time from queuing a BILLmanager API call to its completion, in seconds."},
    {METRICS_FORWARD_LATENCY, METRICS_HISTOGRAM, NULL,
     "Time from a task event being recorded to its apply on the target, in seconds."},
};

int metrics_describe_remotetask(struct metrics *m)
{
    for (size_t i = 0; i < sizeof(metrics_remotetask) / sizeof(metrics_remotetask[0]); i++)
        if (metrics_describe(m, metrics_remotetask[i].name, metrics_remotetask[i].type,
                             metrics_remotetask[i].help, metrics_remotetask[i].labels) < 0)
            return -1;
    return 0;
}

/* ---- rendering ------------------------------------------------------- */

/* Writes v as the text format reads it (Go's ParseFloat): the shortest of
 * %.15g and %.17g that reads back exactly, so that 0.1 stays "0.1" and
 * integers below 2^53 print without an exponent up to 15 digits. */
static void metrics_format_value(char *dst, size_t n, double v)
{
    if (isnan(v)) {
        snprintf(dst, n, "NaN");
        return;
    }
    if (isinf(v)) {
        snprintf(dst, n, v > 0 ? "+Inf" : "-Inf");
        return;
    }
    snprintf(dst, n, "%.15g", v);
    if (strtod(dst, NULL) != v)
        snprintf(dst, n, "%.17g", v);
}

/* Appends s with the escapes of the text format: \\ and \n always, \" in
 * label values (quote 1). */
static int metrics_escape(struct buf *out, const char *s, int quote)
{
    const char *run = s;
    for (const char *p = s;; p++) {
        const char *esc = NULL;
        if (*p == '\\')
            esc = "\\\\";
        else if (*p == '\n')
            esc = "\\n";
        else if (quote && *p == '"')
            esc = "\\\"";
        else if (*p != '\0')
            continue;
        if (buf_append(out, run, (size_t)(p - run)) < 0)
            return -1;
        if (!esc)
            return 0;
        if (buf_append_str(out, esc) < 0)
            return -1;
        run = p + 1;
    }
}

/* Appends NAME SUFFIX{labels[,le="LE"]} VALUE and a newline. */
static int metrics_line(struct buf *out, const struct metrics_family *f,
                        const struct metrics_series *s, const char *suffix, const char *le,
                        const char *value)
{
    if (buf_append_str(out, f->name) < 0 || buf_append_str(out, suffix) < 0)
        return -1;
    if (f->nlabels || le) {
        if (buf_append_str(out, "{") < 0)
            return -1;
        for (size_t i = 0; i < f->nlabels; i++) {
            if (buf_printf(out, "%s%s=\"", i ? "," : "", f->labels[i]) < 0 ||
                metrics_escape(out, s->values[i], 1) < 0 || buf_append_str(out, "\"") < 0)
                return -1;
        }
        if (le && buf_printf(out, "%sle=\"%s\"", f->nlabels ? "," : "", le) < 0)
            return -1;
        if (buf_append_str(out, "}") < 0)
            return -1;
    }
    return buf_printf(out, " %s\n", value);
}

static int metrics_render_histogram(struct buf *out, const struct metrics_family *f,
                                    const struct metrics_series *s)
{
    char le[32], val[32];
    uint64_t cum = 0;
    for (size_t b = 0; b <= METRICS_BUCKETS; b++) {
        cum += s->buckets[b];
        if (b < METRICS_BUCKETS)
            metrics_format_value(le, sizeof(le), metrics_bounds[b]);
        else
            snprintf(le, sizeof(le), "+Inf");
        snprintf(val, sizeof(val), "%llu", (unsigned long long)cum);
        if (metrics_line(out, f, s, "_bucket", le, val) < 0)
            return -1;
    }
    metrics_format_value(val, sizeof(val), s->value);
    if (metrics_line(out, f, s, "_sum", NULL, val) < 0)
        return -1;
    snprintf(val, sizeof(val), "%llu", (unsigned long long)s->count);
    return metrics_line(out, f, s, "_count", NULL, val);
}

int metrics_render(const struct metrics *m, struct buf *out)
{
    static const char *const type_names[] = {"counter", "gauge", "histogram"};
    char val[32];

    for (size_t i = 0; i < m->nfam; i++) {
        const struct metrics_family *f = &m->fam[i];
        if (buf_printf(out, "# HELP %s ", f->name) < 0 || metrics_escape(out, f->help, 0) < 0 ||
            buf_printf(out, "\n# TYPE %s %s\n", f->name, type_names[f->type]) < 0)
            return -1;
        for (size_t j = 0; j < f->nseries; j++) {
            const struct metrics_series *s = &f->series[j];
            if (f->type == METRICS_HISTOGRAM) {
                if (metrics_render_histogram(out, f, s) < 0)
                    return -1;
                continue;
            }
            metrics_format_value(val, sizeof(val), s->value);
            if (metrics_line(out, f, s, "", NULL, val) < 0)
                return -1;
        }
    }
    return 0;
}
