/*
 * it_ops.c - operating remotetask (issue 5, item 5): what `remotetaskctl
 * --command status` shows and what /metrics exposes, against the real
 * broker, two emulated BILLmanagers and two remotetaskd processes
 * (tests/integration/harness_daemon.h).
 *
 * - status: with the server daemon stopped, messages park in the client's
 *   forward queue; the depths and consumer counts that `status --json`
 *   reports must equal what rabbitmqctl reports for every queue it lists,
 *   the table must name the queues, and with the client daemon stopped too
 *   status must exit 1 saying "not running" and still show the outbox
 *   backlog it reads from the store.
 * - metrics: both daemons serve /metrics; forwarding N tasks must move the
 *   published and applied counters by exactly N and the API call counters,
 *   and every scrape must pass `promtool check metrics` (a missing promtool
 *   fails the test: it is part of the test environment).
 *
 * (A dead-lettered task replayed after its cause is fixed is tested in
 * it_dlq.c.)
 */
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <jansson.h>

#include "broker.h"
#include "buf.h"
#include "harness.h"
#include "harness_daemon.h"
#include "harness_rabbit.h"
#include "harness_sim.h"
#include "notes.h"

#define APPLY_DEADLINE_MS 60000
/* The daemon may serve queue depths from a cache it refreshes every few
 * seconds; status is asked again until it agrees or this passes. */
#define STATUS_DEADLINE_MS 30000
#define PROMTOOL           "/usr/bin/promtool"
#define SCRAPE_MAX         ((size_t)4 * 1024 * 1024)

static struct harness_scenario *current;

static int teardown(void **state)
{
    (void)state;
    harness_scenario_free(current);
    current = NULL;
    return 0;
}

#define EXPECT(s, cond, ...)                                                                       \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            harness_scenario_print_logs(s);                                                        \
            fail_msg(__VA_ARGS__);                                                                 \
        }                                                                                          \
    } while (0)

static long long jint(const json_t *o, const char *key)
{
    const json_t *v = json_object_get(o, key);
    if (json_is_integer(v))
        return json_integer_value(v);
    if (json_is_string(v))
        return strtoll(json_string_value(v), NULL, 10);
    return -1;
}

/* Creates n tasks on the source; returns the first id (contiguous). */
static long long sim_bulk(struct harness_sim *sim, long dept, int n, const char *prefix)
{
    json_t *f = json_pack("{s:i,s:i,s:s,s:s,s:s}", "department", (int)dept, "count", n,
                          "name_prefix", prefix, "type", "manual", "note", "ops test");
    char *body = json_dumps(f, JSON_COMPACT);
    json_decref(f);
    assert_non_null(body);
    json_t *r = harness_sim_admin_ok(sim, "POST", "/tasks/bulk", body);
    free(body);
    long long first = jint(r, "first_id"), last = jint(r, "last_id");
    json_decref(r);
    assert_int_equal(last - first + 1, n);
    return first;
}

static void wait_queue_ready(struct harness_scenario *s, const char *name, long want)
{
    struct harness_queue q;
    long long deadline = harness_now_ms() + APPLY_DEADLINE_MS;
    for (;;) {
        EXPECT(s, harness_rabbit_queue(name, &q), "the queue %s does not exist", name);
        if (q.messages == want)
            return;
        EXPECT(s, harness_now_ms() < deadline, "the queue %s holds %ld messages, not %ld", name,
               q.messages, want);
        poll(NULL, 0, 200);
    }
}

/* ---- status ---------------------------------------------------------------- */

/* The JSON document in remotetaskctl's output (it may follow other
 * lines), or NULL. */
static json_t *output_json(const char *out)
{
    const char *p = out ? strchr(out, '{') : NULL;
    if (!p)
        return NULL;
    json_error_t e;
    return json_loadb(p, strlen(p), JSON_DISABLE_EOF_CHECK, &e);
}

/* The queue entries of a status document: an array of objects with a
 * "name". */
static json_t *status_queues(json_t *doc)
{
    json_t *q = json_object_get(doc, "queues");
    return json_is_array(q) ? q : NULL;
}

static long long qfield(json_t *q, const char *a, const char *b)
{
    long long v = jint(q, a);
    return v >= 0 ? v : jint(q, b);
}

struct cmp_result {
    size_t compared;
    size_t differ;
    char why[1024];
};

/* Compares every queue of the status document with rabbitmqctl's view.
 * Queues not parked here hold no unacknowledged messages, so rabbitmqctl's
 * messages (ready + unacknowledged) is what status calls ready. */
static void compare_queues(json_t *queues, struct cmp_result *r)
{
    struct harness_queue *all = NULL;
    size_t n = harness_rabbit_list_queues(&all);
    size_t i;
    json_t *q;
    memset(r, 0, sizeof(*r));
    json_array_foreach(queues, i, q)
    {
        const char *name = json_string_value(json_object_get(q, "name"));
        if (!name)
            continue;
        const struct harness_queue *hq = NULL;
        for (size_t k = 0; k < n; k++)
            if (strcmp(all[k].name, name) == 0)
                hq = &all[k];
        long long ready = qfield(q, "ready", "messages_ready");
        long long unacked = qfield(q, "unacked", "messages_unacknowledged");
        long long consumers = jint(q, "consumers");
        r->compared++;
        long long rmq_msgs = hq ? hq->messages : -1, rmq_cons = hq ? hq->consumers : -1;
        int ok = hq && ready + (unacked > 0 ? unacked : 0) == rmq_msgs && consumers == rmq_cons;
        if (!ok && !r->differ)
            snprintf(r->why, sizeof(r->why),
                     "%s: status says ready %lld unacked %lld consumers %lld, rabbitmqctl "
                     "messages %lld consumers %lld",
                     name, ready, unacked, consumers, rmq_msgs, rmq_cons);
        if (!ok)
            r->differ++;
    }
    free(all);
}

static void test_status_depths(void **state)
{
    (void)state;
    struct harness_scenario_opts o = {.poll_interval = 3600};
    struct harness_scenario *s = harness_scenario_new("ito-status", &o, &current);
    char fwd[BROKER_NAME_MAX], rev[BROKER_NAME_MAX];
    broker_queue_name(fwd, sizeof(fwd), BROKER_FORWARD, s->client_id);
    broker_queue_name(rev, sizeof(rev), BROKER_REVERSE, s->client_id);

    /* The server daemon stays stopped: what the client publishes parks. */
    harness_daemon_start(s->client);
    const int parked = 7;
    long long first = sim_bulk(s->src, s->src_dept, parked, "parked-");
    harness_record_events(s->client_state, s->client_id, first, first + parked - 1);
    harness_daemon_wake(s->client, 0);
    wait_queue_ready(s, fwd, parked);
    /* Events the start-up reconciliation recorded for the same tasks are
     * settled too (viewed, found sent): the outbox is empty before the
     * backlog is counted below. */
    long long settle = harness_now_ms() + APPLY_DEADLINE_MS;
    uint64_t left;
    while ((left = harness_outbox_backlog(s->client_state)) != 0) {
        EXPECT(s, harness_now_ms() < settle, "the client's outbox still holds %llu events",
               (unsigned long long)left);
        poll(NULL, 0, 100);
    }

    const char *const json_args[] = {"--command", "status", "--json", NULL};
    long long deadline = harness_now_ms() + STATUS_DEADLINE_MS;
    struct cmp_result cmp;
    char *out = NULL;
    json_t *doc = NULL;
    for (;;) {
        int rc = harness_ctl(s->client_conf, json_args, NULL, &out);
        EXPECT(s, rc == 0, "status --json exited %d: %s", rc, out);
        doc = output_json(out);
        EXPECT(s, doc, "status --json printed no JSON document: %s", out);
        json_t *queues = status_queues(doc);
        EXPECT(s, queues, "status --json has no \"queues\" array: %s", out);
        compare_queues(queues, &cmp);
        int has_fwd = 0;
        size_t i;
        json_t *q;
        json_array_foreach(queues, i, q)
        {
            const char *name = json_string_value(json_object_get(q, "name"));
            if (name && strcmp(name, fwd) == 0)
                has_fwd = qfield(q, "ready", "messages_ready") == parked;
        }
        if (has_fwd && cmp.differ == 0)
            break;
        EXPECT(s, harness_now_ms() < deadline,
               "status never agreed with rabbitmqctl within %d ms (forward queue with %d "
               "ready: %s); first difference: %s; output: %s",
               STATUS_DEADLINE_MS, parked, has_fwd ? "yes" : "no", cmp.why, out);
        json_decref(doc);
        free(out);
        poll(NULL, 0, 500);
    }
    printf("status --json: %zu queues, each equal to rabbitmqctl's (forward queue %s: %d ready, "
           "0 consumers)\n",
           cmp.compared, fwd, parked);
    EXPECT(s, cmp.compared >= 2, "status lists %zu queues, expected the forward and reverse ones",
           cmp.compared);
    json_decref(doc);
    free(out);

    /* The table names the queues. */
    const char *const table_args[] = {"--command", "status", NULL};
    int rc = harness_ctl(s->client_conf, table_args, NULL, &out);
    printf("status:\n%s", out ? out : "");
    int names = out && strstr(out, fwd) && strstr(out, rev);
    free(out);
    EXPECT(s, rc == 0, "status exited %d", rc);
    EXPECT(s, names, "the status table does not name %s and %s", fwd, rev);

    /* The client daemon is down: status says so, exits 1, and still shows
     * what the store knows: the backlog of events recorded meanwhile. */
    harness_daemon_stop(s->client);
    const int backlog = 5;
    first = sim_bulk(s->src, s->src_dept, backlog, "while-down-");
    harness_record_events(s->client_state, s->client_id, first, first + backlog - 1);
    EXPECT(s, harness_outbox_backlog(s->client_state) == (uint64_t)backlog,
           "the outbox holds %llu events, expected %d",
           (unsigned long long)harness_outbox_backlog(s->client_state), backlog);
    rc = harness_ctl(s->client_conf, table_args, NULL, &out);
    printf("status with the daemon down (exit %d):\n%s", rc, out ? out : "");
    int says_down = out && strstr(out, "not running");
    char outbox_line[256] = "";
    const char *at = out ? strstr(out, "outbox") : NULL;
    if (at)
        snprintf(outbox_line, sizeof(outbox_line), "%.*s", (int)strcspn(at, "\n"), at);
    free(out);
    char num[32];
    snprintf(num, sizeof(num), " %d ", backlog);
    EXPECT(s, rc == 1, "status exited %d with the daemon down, expected 1", rc);
    EXPECT(s, says_down, "status does not say \"not running\"");
    EXPECT(s, strstr(outbox_line, num),
           "status with the daemon down does not show the backlog "
           "of %d on its outbox line (\"%s\")",
           backlog, outbox_line);

    rc = harness_ctl(s->client_conf, json_args, NULL, &out);
    doc = output_json(out);
    printf("status --json with the daemon down (exit %d): %s", rc, out ? out : "");
    free(out);
    long long json_backlog = jint(json_object_get(doc, "outbox"), "backlog");
    json_decref(doc);
    EXPECT(s, rc == 1, "status --json exited %d with the daemon down, expected 1", rc);
    EXPECT(s, json_backlog == backlog,
           "status --json with the daemon down says backlog %lld, "
           "expected %d",
           json_backlog, backlog);
    harness_scenario_stop(s);
}

/* ---- metrics --------------------------------------------------------------- */

static size_t scrape_write(char *ptr, size_t size, size_t nmemb, void *arg)
{
    struct buf *b = arg;
    return buf_append(b, ptr, size * nmemb) < 0 ? 0 : size * nmemb;
}

/* GET http://127.0.0.1:port/metrics; returns the body (malloc'ed). */
static char *scrape(struct harness_scenario *s, int port)
{
    char url[128];
    struct buf b;
    long code = 0;
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/metrics", port);
    buf_init(&b, SCRAPE_MAX);
    CURL *c = curl_easy_init();
    EXPECT(s, c, "curl_easy_init failed");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, scrape_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 10L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    CURLcode rc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    curl_easy_cleanup(c);
    EXPECT(s, rc == CURLE_OK, "GET %s: %s", url, curl_easy_strerror(rc));
    EXPECT(s, code == 200, "GET %s answered HTTP %ld", url, code);
    EXPECT(s, buf_append(&b, "", 0) == 0, "out of memory");
    return buf_steal(&b);
}

/* Runs promtool check metrics with text on its standard input; fails the
 * test when promtool is missing or finds a problem. */
static void promtool_check(struct harness_scenario *s, const char *text, const char *what)
{
    EXPECT(s, access(PROMTOOL, X_OK) == 0,
           "%s is missing: install Debian's prometheus package (the test environment needs it)",
           PROMTOOL);
    int in[2], out[2];
    EXPECT(s, pipe(in) == 0 && pipe(out) == 0, "pipe failed");
    fflush(NULL);
    pid_t pid = fork();
    EXPECT(s, pid >= 0, "fork failed");
    if (pid == 0) {
        dup2(in[0], STDIN_FILENO);
        dup2(out[1], STDOUT_FILENO);
        dup2(out[1], STDERR_FILENO);
        close(in[0]);
        close(in[1]);
        close(out[0]);
        close(out[1]);
        execl(PROMTOOL, PROMTOOL, "check", "metrics", (char *)NULL);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    /* The scrape is a few KiB: far below a pipe's buffer would matter only
     * for huge bodies, so write it all, then read the report. */
    size_t len = strlen(text), off = 0;
    while (off < len) {
        ssize_t w = write(in[1], text + off, len - off);
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    close(in[1]);
    char report[8192];
    size_t got = 0;
    ssize_t r;
    while (got < sizeof(report) - 1 &&
           (r = read(out[0], report + got, sizeof(report) - 1 - got)) > 0)
        got += (size_t)r;
    report[got] = '\0';
    close(out[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    EXPECT(s, WIFEXITED(status) && WEXITSTATUS(status) == 0 && got == 0,
           "promtool check metrics rejected the %s scrape (status %d): %s", what,
           WIFEXITED(status) ? WEXITSTATUS(status) : -1, report);
}

/* The sum of the samples of family name whose labels contain every
 * "k=\"v\"" of the NULL-terminated list want (NULL = all). -1 when no
 * sample of the family matched. */
static double metric_sum(const char *text, const char *name, const char *const *want)
{
    double sum = 0;
    int found = 0;
    size_t nlen = strlen(name);
    for (const char *line = text; line && *line;) {
        const char *nl = strchr(line, '\n');
        size_t len = nl ? (size_t)(nl - line) : strlen(line);
        if (len > nlen && strncmp(line, name, nlen) == 0 &&
            (line[nlen] == '{' || line[nlen] == ' ')) {
            char sample[2048];
            snprintf(sample, sizeof(sample), "%.*s", (int)(len < 2047 ? len : 2047), line);
            const char *end = strrchr(sample, ' ');
            int match = end != NULL;
            for (size_t i = 0; match && want && want[i]; i++) {
                const char *at = strstr(sample, want[i]);
                match = at && at < end;
            }
            if (match) {
                sum += strtod(end + 1, NULL);
                found = 1;
            }
        }
        line = nl ? nl + 1 : NULL;
    }
    return found ? sum : -1;
}

struct applied_wait {
    const char *client;
    size_t want;
};

static int applied_done(json_t *dst, void *arg)
{
    struct applied_wait *w = arg;
    char prefix[160];
    snprintf(prefix, sizeof(prefix), "--- remotetask: from client %s, task ", w->client);
    size_t n = 0, i;
    json_t *t;
    json_array_foreach(dst, i, t)
    {
        const char *note = json_string_value(json_object_get(t, "note"));
        if (note && strstr(note, prefix))
            n++;
    }
    return n >= w->want;
}

static void test_metrics(void **state)
{
    (void)state;
    struct harness_scenario_opts o = {.poll_interval = 3600};
    struct harness_scenario *s = harness_scenario_new("ito-metrics", &o, &current);
    int cport = harness_free_port(), sport = harness_free_port();
    while (sport == cport)
        sport = harness_free_port();
    char text[128];
    snprintf(text, sizeof(text), "metrics: { listen = \"127.0.0.1:%d\"; };\n", cport);
    harness_config_append(s->client_conf, text);
    snprintf(text, sizeof(text), "metrics: { listen = \"127.0.0.1:%d\"; };\n", sport);
    harness_config_append(s->server_conf, text);
    harness_daemon_start(s->server);
    harness_daemon_start(s->client);

    char *c0 = scrape(s, cport), *s0 = scrape(s, sport);
    promtool_check(s, c0, "client's first");
    promtool_check(s, s0, "server's first");

    const int n = 12;
    long long first = sim_bulk(s->src, s->src_dept, n, "metered-");
    harness_record_events(s->client_state, s->client_id, first, first + n - 1);
    harness_daemon_wake(s->client, 0);
    struct applied_wait w = {.client = s->client_id, .want = (size_t)n};
    int met = 0;
    json_decref(harness_wait_tasks(s->dst, s->dst_dept, applied_done, &w, APPLY_DEADLINE_MS, &met));
    EXPECT(s, met, "the %d tasks were not forwarded within %d ms", n, APPLY_DEADLINE_MS);

    /* The counters are read when scraped: the last commit may land a
     * moment after the target shows the task, so ask until they agree. */
    static const char *const created[] = {"direction=\"forward\"", "outcome=\"created\"", NULL};
    static const char *const task_kind[] = {"kind=\"task\"", NULL};
    char *c1 = NULL, *s1 = NULL;
    double pub0 = metric_sum(c0, "remotetask_messages_published_total", task_kind);
    double app0 = metric_sum(s0, "remotetask_applied_total", created);
    double pub1 = 0, app1 = 0;
    long long deadline = harness_now_ms() + 10000;
    for (;;) {
        free(c1);
        free(s1);
        c1 = scrape(s, cport);
        s1 = scrape(s, sport);
        pub1 = metric_sum(c1, "remotetask_messages_published_total", task_kind);
        app1 = metric_sum(s1, "remotetask_applied_total", created);
        if ((pub1 - (pub0 > 0 ? pub0 : 0) == n && app1 - (app0 > 0 ? app0 : 0) == n) ||
            harness_now_ms() > deadline)
            break;
        poll(NULL, 0, 200);
    }
    promtool_check(s, c1, "client's second");
    promtool_check(s, s1, "server's second");
    double capi0 = metric_sum(c0, "remotetask_api_calls_total", NULL);
    double capi1 = metric_sum(c1, "remotetask_api_calls_total", NULL);
    double sapi0 = metric_sum(s0, "remotetask_api_calls_total", NULL);
    double sapi1 = metric_sum(s1, "remotetask_api_calls_total", NULL);
    printf("metrics after forwarding %d tasks: published{kind=task} %.0f -> %.0f, "
           "applied{forward,created} %.0f -> %.0f, api calls client %.0f -> %.0f, server %.0f -> "
           "%.0f\n",
           n, pub0, pub1, app0, app1, capi0, capi1, sapi0, sapi1);
    if (pub0 < 0)
        pub0 = 0;
    if (app0 < 0)
        app0 = 0;
    if (capi0 < 0)
        capi0 = 0;
    if (sapi0 < 0)
        sapi0 = 0;
    EXPECT(s, pub1 - pub0 == n,
           "remotetask_messages_published_total{kind=\"task\"} grew by %.0f, "
           "expected %d",
           pub1 - pub0, n);
    EXPECT(s, app1 - app0 == n,
           "remotetask_applied_total{direction=\"forward\",outcome=\"created\"} "
           "grew by %.0f, expected %d",
           app1 - app0, n);
    /* At least a view per task on the client, a create per task on the
     * server. */
    EXPECT(s, capi1 - capi0 >= n, "the client's remotetask_api_calls_total grew by %.0f only",
           capi1 - capi0);
    EXPECT(s, sapi1 - sapi0 >= n, "the server's remotetask_api_calls_total grew by %.0f only",
           sapi1 - sapi0);
    EXPECT(s, metric_sum(s1, "remotetask_up", NULL) == 1, "remotetask_up is not 1");
    free(c0);
    free(s0);
    free(c1);
    free(s1);
    harness_scenario_stop(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_status_depths, teardown),
        cmocka_unit_test_teardown(test_metrics, teardown),
    };
    setvbuf(stdout, NULL, _IOLBF, 0);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const char *filter = getenv("RT_IT_FILTER");
    if (filter && *filter)
        cmocka_set_test_filter(filter);
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
