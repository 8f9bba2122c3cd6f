#include "faults.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <curl/curl.h>

#include "buf.h"
#include "harness.h"
#include "harness_rabbit.h"
#include "harness_sim.h"
#include "log.h"
#include "rmq.h"

#define FAULTS_MAX_SCENARIOS 4
#define FAULTS_MAX_CLEANUPS  16
#define FAULTS_MAX_TAPS      8
#define FAULTS_MAX_MARKS     (2 * FAULTS_MAX_SCENARIOS)
/* The env file of a node is a dozen short lines. */
#define FAULTS_ENV_LINE_MAX 4096
/* What one case reads back of a daemon's log: a debug log of a minute of
 * 1,000 tasks is a few MiB. */
#define FAULTS_LOG_WINDOW ((size_t)64 * 1024 * 1024)
/* remotetaskctl's output kept when it printed no JSON. */
#define FAULTS_OUTPUT_KEEP 400
#define FAULTS_CONFIRM_MS  30000
/* remotetaskctl status, as harness_ctl allows any command. */
#define FAULTS_STATUS_MS 30000
/* An integrity check of a small store, or a checkpoint. */
#define FAULTS_SQLITE_MS 60000
/* A scrape of /metrics is a few KiB. */
#define FAULTS_SCRAPE_MAX ((size_t)4 * 1024 * 1024)

/* What the running case made and must undo; faults_teardown empties it. */
static struct {
    struct harness_scenario *scenarios[FAULTS_MAX_SCENARIOS];
    size_t n_scenarios;
    struct {
        void (*fn)(void *arg);
        void *arg;
    } cleanups[FAULTS_MAX_CLEANUPS];
    size_t n_cleanups;
    char taps[FAULTS_MAX_TAPS][BROKER_NAME_MAX];
    size_t n_taps;
    int passed; /* set by a fault_report that found nothing wrong */
    /* The records of a case begun and not reported yet (the fault_result
     * itself lives on the case's stack, gone when the case failed). */
    json_t *running[4];
} faults;

/* ---- the node, scenarios and clean-up ------------------------------ */

void faults_use_node(void)
{
    const char *path = getenv("RT_FAULTS_NODE_ENV");
    if (!path || !*path)
        fail_msg("RT_FAULTS_NODE_ENV is not set: the fault suite runs under scripts/test, which "
                 "starts a RabbitMQ node of its own for it (tests/harness/rabbitnode start DIR) "
                 "and sets RT_FAULTS_NODE_ENV=DIR/env");
    FILE *f = fopen(path, "re");
    if (!f)
        fail_msg("cannot read the fault suite's node file %s (RT_FAULTS_NODE_ENV): %s", path,
                 strerror(errno));
    char line[FAULTS_ENV_LINE_MAX];
    int n = 0;
    while (fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\r\n")] = '\0';
        char *eq = strchr(line, '=');
        if (line[0] == '#' || !eq || eq == line)
            continue;
        *eq = '\0';
        if (setenv(line, eq + 1, 1) != 0) {
            fclose(f);
            fail_msg("cannot set %s from %s", line, path);
        }
        n++;
    }
    fclose(f);
    if (!getenv("RT_AMQP_PORT") || !getenv("RT_RABBIT_DIR"))
        fail_msg("%s (RT_FAULTS_NODE_ENV) does not name a node: no RT_AMQP_PORT or RT_RABBIT_DIR "
                 "among its %d settings",
                 path, n);
}

int faults_group_setup(void **state)
{
    (void)state;
    setvbuf(stdout, NULL, _IOLBF, 0);
    /* The test's own broker connections would log every connect. */
    log_init("fault suite", LOG_LEVEL_WARNING, 0);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    faults_use_node();
    return 0;
}

struct harness_scenario *faults_scenario(const char *tag, const struct harness_scenario_opts *opts)
{
    struct harness_scenario_opts o = {0};
    if (opts)
        o = *opts;
    if (!o.heartbeat)
        o.heartbeat = 5;
    if (!o.poll_interval)
        o.poll_interval = 5;
    if (faults.n_scenarios == FAULTS_MAX_SCENARIOS)
        fail_msg("a case may make at most %d scenarios", FAULTS_MAX_SCENARIOS);
    struct harness_scenario **slot = &faults.scenarios[faults.n_scenarios++];
    return harness_scenario_new(tag, &o, slot);
}

void faults_on_teardown(void (*fn)(void *arg), void *arg)
{
    if (faults.n_cleanups == FAULTS_MAX_CLEANUPS)
        fail_msg("a case may register at most %d clean-ups", FAULTS_MAX_CLEANUPS);
    faults.cleanups[faults.n_cleanups].fn = fn;
    faults.cleanups[faults.n_cleanups].arg = arg;
    faults.n_cleanups++;
}

int faults_teardown(void **state)
{
    (void)state;
    while (faults.n_cleanups) {
        faults.n_cleanups--;
        faults.cleanups[faults.n_cleanups].fn(faults.cleanups[faults.n_cleanups].arg);
    }
    /* A case that failed while the node was frozen or killed must not
     * leave it so for the next case. */
    harness_rabbit_ensure_up();
    while (faults.n_taps)
        harness_rabbit_delete_queue(faults.taps[--faults.n_taps]);
    for (size_t i = 0; i < faults.n_scenarios; i++) {
        if (faults.scenarios[i] && !faults.passed)
            faults.scenarios[i]->keep = 1;
        harness_scenario_free(faults.scenarios[i]);
        faults.scenarios[i] = NULL;
    }
    faults.n_scenarios = 0;
    faults.passed = 0;
    /* A case that failed before its report still holds its records. */
    for (size_t i = 0; i < 4; i++) {
        json_decref(faults.running[i]);
        faults.running[i] = NULL;
    }
    return 0;
}

void faults_start_both(struct harness_scenario *s)
{
    harness_daemon_start(s->server);
    harness_daemon_start(s->client);
}

/* ---- the source side ------------------------------------------------- */

static long long jint(const json_t *o, const char *key)
{
    const json_t *v = json_object_get(o, key);
    if (json_is_integer(v))
        return json_integer_value(v);
    if (json_is_string(v))
        return strtoll(json_string_value(v), NULL, 10);
    return 0;
}

static const char *jstr(const json_t *o, const char *key)
{
    const char *v = json_string_value(json_object_get(o, key));
    return v ? v : "";
}

long long faults_bulk(struct harness_scenario *s, int count, const char *prefix)
{
    json_t *f = json_pack("{s:i,s:i,s:s,s:s,s:s,s:s}", "department", (int)s->src_dept, "count",
                          count, "name_prefix", prefix, "type", "manual", "note",
                          "fault suite & = + %\nsecond line", "deadline", "2030-01-01 00:00:00");
    char *body = f ? json_dumps(f, JSON_COMPACT) : NULL;
    json_decref(f);
    if (!body)
        fail_msg("out of memory");
    json_t *r = harness_sim_admin_ok(s->src, "POST", "/tasks/bulk", body);
    free(body);
    long long first = jint(r, "first_id"), last = jint(r, "last_id");
    json_decref(r);
    if (last - first + 1 != count)
        fail_msg("the source emulator made %lld tasks, not %d", last - first + 1, count);
    return first;
}

long long faults_bulk_send(struct harness_scenario *s, int count, const char *prefix)
{
    long long first = faults_bulk(s, count, prefix);
    harness_record_events(s->client_state, s->client_id, first, first + count - 1);
    harness_daemon_wake(s->client, 0);
    return first;
}

void faults_sim_change(struct harness_sim *sim, long long id, json_t *fields)
{
    char path[64];
    char *body = fields ? json_dumps(fields, JSON_COMPACT) : NULL;
    json_decref(fields);
    if (!body)
        fail_msg("out of memory");
    snprintf(path, sizeof(path), "/tasks/%lld", id);
    json_decref(harness_sim_admin_ok(sim, "POST", path, body));
    free(body);
}

json_t *faults_sim_task(struct harness_sim *sim, long long id)
{
    char path[64];
    snprintf(path, sizeof(path), "/tasks/%lld", id);
    return harness_sim_admin_ok(sim, "GET", path, NULL);
}

long faults_sim_writes(struct harness_sim *sim, long long since, long long elid)
{
    char path[64];
    snprintf(path, sizeof(path), "/calls?since=%lld", since);
    json_t *r = harness_sim_admin_ok(sim, "GET", path, NULL);
    long n = 0;
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(r, "calls"), i, c)
    {
        if (strcmp(jstr(c, "func"), "task.edit") != 0 || !json_is_true(json_object_get(c, "write")))
            continue;
        if (strcmp(jstr(c, "outcome"), "ok") != 0)
            continue;
        if (elid >= 0 && jint(json_object_get(c, "params"), "elid") != elid)
            continue;
        n++;
    }
    json_decref(r);
    return n;
}

long long faults_sim_last_call(struct harness_sim *sim)
{
    json_t *r = harness_sim_admin_ok(sim, "GET", "/calls?since=0", NULL);
    long long n = 0;
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(r, "calls"), i, c)
    {
        if (jint(c, "n") > n)
            n = jint(c, "n");
    }
    json_decref(r);
    return n;
}

json_t *faults_target_of(struct harness_scenario *s, long long src)
{
    json_t *dst = harness_sim_tasks(s->dst, s->dst_dept), *found = NULL;
    size_t i;
    json_t *t;
    json_array_foreach(dst, i, t)
    {
        if (harness_flow_note_origin(jstr(t, "note"), s->client_id) == src) {
            found = json_incref(t);
            break;
        }
    }
    json_decref(dst);
    return found;
}

struct sources_wait {
    const char *client;
    long long first;
    int count;
};

static int sources_done(json_t *dst, void *arg)
{
    struct sources_wait *w = arg;
    int n = 0;
    size_t i;
    json_t *t;
    json_array_foreach(dst, i, t)
    {
        long long src = harness_flow_note_origin(jstr(t, "note"), w->client);
        if (src >= w->first && src < w->first + w->count)
            n++;
    }
    return n >= w->count;
}

int faults_wait_sources(struct harness_scenario *s, long long first, int count,
                        long long timeout_ms)
{
    struct sources_wait w = {.client = s->client_id, .first = first, .count = count};
    int met = 0;
    json_decref(harness_wait_tasks(s->dst, s->dst_dept, sources_done, &w, timeout_ms, &met));
    return met;
}

int faults_wait_outbox_empty(struct harness_scenario *s, long long timeout_ms)
{
    long long deadline = harness_now_ms() + timeout_ms;
    while (harness_outbox_backlog(s->client_state) != 0) {
        if (harness_now_ms() >= deadline)
            return 0;
        poll(NULL, 0, 100);
    }
    return 1;
}

int faults_ctl(const char *config, const char *const *args, char **out)
{
    char *text = NULL;
    int rc = harness_ctl(config, args, NULL, &text);
    if (!text && !(text = strdup("")))
        fail_msg("out of memory");
    size_t n = strlen(text);
    while (n && (text[n - 1] == '\n' || text[n - 1] == ' ' || text[n - 1] == '\r'))
        text[--n] = '\0';
    *out = text;
    return rc;
}

/* ---- the stores -------------------------------------------------------- */

char *faults_store_path(char *buf, size_t len, const char *state_dir)
{
    snprintf(buf, len, "%s/remotetask.db", state_dir);
    return buf;
}

int faults_sqlite(const char *db, const char *sql, char *out, size_t len)
{
    int outp[2];
    if (pipe2(outp, O_CLOEXEC) != 0)
        fail_msg("pipe: %s", strerror(errno));
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        fail_msg("fork: %s", strerror(errno));
    if (pid == 0) {
        dup2(outp[1], STDOUT_FILENO);
        dup2(outp[1], STDERR_FILENO);
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull >= 0)
            dup2(devnull, STDIN_FILENO);
        /* The daemons write the store meanwhile: wait for their locks as
         * they wait for each other's. */
        execlp("sqlite3", "sqlite3", "-batch", "-cmd", ".timeout 10000", db, sql, (char *)NULL);
        fprintf(stderr, "cannot run sqlite3: %s\n", strerror(errno));
        _exit(127);
    }
    close(outp[1]);
    size_t got = 0;
    long long deadline = harness_now_ms() + FAULTS_SQLITE_MS;
    for (;;) {
        long long left = deadline - harness_now_ms();
        struct pollfd p = {.fd = outp[0], .events = POLLIN};
        if (left <= 0 || poll(&p, 1, (int)left) <= 0) {
            kill(pid, SIGKILL);
            break;
        }
        char chunk[1024];
        ssize_t n = read(outp[0], chunk, sizeof(chunk));
        if (n <= 0)
            break;
        size_t keep = got + (size_t)n < len ? (size_t)n : len - 1 - got;
        memcpy(out + got, chunk, keep);
        got += keep;
    }
    close(outp[0]);
    out[got] = '\0';
    while (got && (out[got - 1] == '\n' || out[got - 1] == ' '))
        out[--got] = '\0';
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (harness_now_ms() >= deadline)
        fail_msg("sqlite3 on %s did not end within %d ms", db, FAULTS_SQLITE_MS);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 127)
        fail_msg("cannot run sqlite3 (Debian's sqlite3 package): %s", out);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int faults_store_ok(const char *state_dir, char *out, size_t len)
{
    char db[PATH_MAX];
    faults_store_path(db, sizeof(db), state_dir);
    int rc = faults_sqlite(db, "PRAGMA integrity_check;", out, len);
    return rc == 0 && strcmp(out, "ok") == 0;
}

/* ---- metrics ------------------------------------------------------------ */

int faults_enable_metrics(const char *config)
{
    char text[128];
    int port = harness_free_port();
    snprintf(text, sizeof(text), "metrics: { listen = \"127.0.0.1:%d\"; };\n", port);
    harness_config_append(config, text);
    return port;
}

static size_t faults_scrape_write(char *ptr, size_t size, size_t nmemb, void *arg)
{
    return buf_append(arg, ptr, size * nmemb) < 0 ? 0 : size * nmemb;
}

char *faults_scrape(int port)
{
    char url[128];
    struct buf b;
    long code = 0;
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/metrics", port);
    buf_init(&b, FAULTS_SCRAPE_MAX);
    CURL *c = curl_easy_init();
    if (!c)
        fail_msg("out of memory");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, faults_scrape_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 10L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_PROXY, "");
    CURLcode rc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    curl_easy_cleanup(c);
    if (rc != CURLE_OK || code != 200 || buf_append(&b, "", 0) < 0) {
        buf_release(&b);
        return NULL;
    }
    return buf_steal(&b);
}

double faults_metric(const char *text, const char *name, const char *const *want)
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

/* ---- the broker, seen from the test ---------------------------------- */

char *faults_dead_queue(char *buf, size_t len, enum broker_dir dir, const char *client)
{
    if (broker_dead_queue_name(buf, len, dir, client) != 0)
        fail_msg("client id \"%s\" cannot name a dead-letter queue", client);
    return buf;
}

struct faults_amqp {
    struct broker *b;
    struct harness_scenario *s;
    int acked, failed;
};

static void faults_amqp_confirm(void *arg, uint64_t tag, enum broker_fate fate)
{
    struct faults_amqp *a = arg;
    (void)tag;
    if (fate == BROKER_ACKED)
        a->acked++;
    else
        a->failed++;
}

static void faults_amqp_delivery(void *arg, const struct broker_delivery *d)
{
    /* Nothing is consumed: queues are read with basic.get. */
    (void)arg;
    (void)d;
}

struct faults_amqp *faults_amqp_open(struct harness_scenario *s, const char *user)
{
    struct broker_opts o;
    char err[512];
    struct faults_amqp *a = calloc(1, sizeof(*a));
    if (!a)
        fail_msg("out of memory");
    a->s = s;
    harness_rabbit_opts(&o, user, s->amqp_password);
    o.on_confirm = faults_amqp_confirm;
    o.on_delivery = faults_amqp_delivery;
    o.cb_arg = a;
    o.connection_name = "remotetask fault suite";
    a->b = broker_new(&o, err, sizeof(err));
    if (!a->b)
        fail_msg("broker_new: %s", err);
    if (broker_connect(a->b) != RT_OK)
        fail_msg("cannot connect to the node as %s: %s", user, broker_strerror(a->b));
    const char *clients[] = {s->client_id};
    if (broker_declare(a->b, clients, 1) != RT_OK)
        fail_msg("broker_declare as %s: %s", user, broker_strerror(a->b));
    return a;
}

void faults_amqp_publish(struct faults_amqp *a, const char *exchange, const char *key,
                         const char *mid, int64_t timestamp, const void *body, size_t len)
{
    struct broker_props p = {.message_id = mid, .timestamp = timestamp};
    int before = a->acked + a->failed;
    if (broker_publish(a->b, exchange, key, &p, body, len, NULL) != RT_OK)
        fail_msg("publishing %s: %s", mid, broker_strerror(a->b));
    long long deadline = harness_now_ms() + FAULTS_CONFIRM_MS;
    while (a->acked + a->failed == before) {
        if (harness_now_ms() > deadline)
            fail_msg("no confirm from the broker for %s within %d ms", mid, FAULTS_CONFIRM_MS);
        if (!broker_wants_read_now(a->b)) {
            struct pollfd pfd = {.fd = broker_fd(a->b), .events = POLLIN};
            poll(&pfd, 1, 100);
        }
        if (broker_process(a->b) != RT_OK)
            fail_msg("connection lost publishing %s: %s", mid, broker_strerror(a->b));
    }
    if (a->failed)
        fail_msg("the broker did not take %s", mid);
}

struct broker_delivery **faults_amqp_drain(struct faults_amqp *a, const char *queue, size_t max,
                                           size_t *n)
{
    struct broker_delivery **out = calloc(max ? max : 1, sizeof(*out));
    if (!out)
        fail_msg("out of memory");
    *n = 0;
    while (*n < max) {
        struct broker_delivery *d = NULL;
        if (broker_get(a->b, queue, &d, NULL) != RT_OK)
            fail_msg("reading %s: %s", queue, broker_strerror(a->b));
        if (!d)
            break;
        if (broker_ack(a->b, d->delivery_tag) != RT_OK)
            fail_msg("acking a message of %s: %s", queue, broker_strerror(a->b));
        out[(*n)++] = d;
    }
    return out;
}

void faults_amqp_close(struct faults_amqp *a)
{
    if (!a)
        return;
    broker_free(a->b);
    free(a);
}

int faults_queue_depth(struct harness_scenario *s, const char *user, const char *queue,
                       uint32_t *ready, uint32_t *consumers)
{
    struct faults_amqp *a = faults_amqp_open(s, user);
    rt_status st = broker_queue_depth(a->b, queue, ready, consumers);
    char why[512];
    snprintf(why, sizeof(why), "%s", broker_strerror(a->b));
    faults_amqp_close(a);
    if (st == RT_REJECT)
        return 0;
    if (st != RT_OK)
        fail_msg("cannot ask the node about %s: %s", queue, why);
    return 1;
}

int faults_wait_queue_empty(const char *queue, long long timeout_ms)
{
    long long deadline = harness_now_ms() + timeout_ms;
    struct harness_queue q;
    for (;;) {
        if (!harness_rabbit_queue(queue, &q) || q.messages == 0)
            return 1;
        if (harness_now_ms() >= deadline)
            return 0;
        poll(NULL, 0, 200);
    }
}

/* One plain AMQP connection for what broker.h does not do (a queue of the
 * test's own, its binding): the declares run as the scenario's server
 * user, who has every permission on the node. */
static void faults_tap_declare(struct harness_scenario *s, const char *name, const char *exchange,
                               const char *key)
{
    amqp_connection_state_t conn = amqp_new_connection();
    if (!conn)
        fail_msg("out of memory");
    amqp_socket_t *sock = amqp_tcp_socket_new(conn);
    struct timeval tv = {.tv_sec = 5};
    const char *why = NULL;
    if (!sock || amqp_socket_open_noblock(sock, "127.0.0.1", atoi(harness_env("RT_AMQP_PORT")),
                                          &tv) != AMQP_STATUS_OK) {
        why = "cannot connect";
        goto destroy;
    }
    amqp_rpc_reply_t r = amqp_login(conn, "/", 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, s->server_user,
                                    s->amqp_password);
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        why = "login refused";
        goto destroy;
    }
    if (!amqp_channel_open(conn, 1) ||
        amqp_get_rpc_reply(conn).reply_type != AMQP_RESPONSE_NORMAL) {
        why = "cannot open a channel";
        goto close_conn;
    }
    amqp_queue_declare(conn, 1, amqp_cstring_bytes(name), 0, 0, 0, 0, amqp_empty_table);
    if (amqp_get_rpc_reply(conn).reply_type != AMQP_RESPONSE_NORMAL) {
        why = "queue.declare refused";
        goto close_conn;
    }
    amqp_queue_bind(conn, 1, amqp_cstring_bytes(name), amqp_cstring_bytes(exchange),
                    amqp_cstring_bytes(key), amqp_empty_table);
    if (amqp_get_rpc_reply(conn).reply_type != AMQP_RESPONSE_NORMAL) {
        why = "queue.bind refused";
        goto close_conn;
    }
    amqp_channel_close(conn, 1, AMQP_REPLY_SUCCESS);
close_conn:
    amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
destroy:
    amqp_destroy_connection(conn);
    if (why)
        fail_msg("tap %s on %s with key %s: %s", name, exchange, key, why);
}

void faults_tap_open(struct harness_scenario *s, const char *name, const char *exchange,
                     const char *key)
{
    if (faults.n_taps == FAULTS_MAX_TAPS)
        fail_msg("a case may open at most %d taps", FAULTS_MAX_TAPS);
    /* Registered first: a declare that half-worked is deleted too. */
    snprintf(faults.taps[faults.n_taps++], BROKER_NAME_MAX, "%s", name);
    faults_tap_declare(s, name, exchange, key);
}

void faults_tap_close(struct harness_scenario *s, const char *name)
{
    (void)s;
    harness_rabbit_delete_queue(name);
    for (size_t i = 0; i < faults.n_taps; i++) {
        if (strcmp(faults.taps[i], name) == 0) {
            memmove(faults.taps[i], faults.taps[faults.n_taps - 1], BROKER_NAME_MAX);
            faults.n_taps--;
            break;
        }
    }
}

/* ---- a case's result -------------------------------------------------- */

static int faults_append(json_t *o, char *path, size_t len);

/* The log marks taken at fault_start, per daemon. */
static struct {
    const struct harness_daemon *d;
    size_t mark;
} marks[FAULTS_MAX_MARKS];
static size_t n_marks;

static json_t *faults_new_array(void)
{
    json_t *a = json_array();
    if (!a)
        fail_msg("out of memory");
    return a;
}

void fault_begin(struct fault_result *r, struct harness_scenario *s, const char *name, int number,
                 const char *title)
{
    memset(r, 0, sizeof(*r));
    snprintf(r->name, sizeof(r->name), "%s", name);
    snprintf(r->title, sizeof(r->title), "%s", title);
    r->number = number;
    r->s = s;
    r->recovered_in = -1;
    r->begun_ms = harness_now_ms();
    r->logged = faults_new_array();
    r->status = faults_new_array();
    r->notes = faults_new_array();
    r->checks = faults_new_array();
    n_marks = 0;
    faults.running[0] = r->logged;
    faults.running[1] = r->status;
    faults.running[2] = r->notes;
    faults.running[3] = r->checks;
    /* A case that dies before its report (a harness failure, a crash)
     * still shows in the report: its last line says it did not finish. */
    char path[PATH_MAX], line[256];
    snprintf(line, sizeof(line), "fault %s: did not finish", r->name);
    json_t *o = json_pack("{s:s,s:i,s:s,s:s,s:i,s:i,s:i,s:i,s:n,s:b,s:b,s:I}", "case", r->name,
                          "number", r->number, "title", r->title, "line", line, "sent", 0,
                          "applied", 0, "lost", 0, "duplicated", 0, "recovered_in", "passed", 0,
                          "unfinished", 1, "finished", (json_int_t)time(NULL));
    if (!o)
        fail_msg("out of memory");
    if (!faults_append(o, path, sizeof(path)))
        fail_msg("cannot append to %s: %s", path, strerror(errno));
}

void fault_start(struct fault_result *r)
{
    n_marks = 0;
    for (size_t i = 0; i < faults.n_scenarios; i++) {
        struct harness_scenario *s = faults.scenarios[i];
        if (!s)
            continue;
        const struct harness_daemon *ds[] = {s->client, s->server};
        for (size_t k = 0; k < 2 && n_marks < FAULTS_MAX_MARKS; k++) {
            marks[n_marks].d = ds[k];
            marks[n_marks].mark = harness_daemon_log_mark(ds[k]);
            n_marks++;
        }
    }
    r->mark_client = harness_daemon_log_mark(r->s->client);
    r->mark_server = harness_daemon_log_mark(r->s->server);
    r->fault_start_ms = harness_now_ms();
    printf("fault %s: fault injected\n", r->name);
}

void fault_end(struct fault_result *r)
{
    r->fault_end_ms = harness_now_ms();
    printf("fault %s: fault over after %.1f s\n", r->name,
           (double)(r->fault_end_ms - r->fault_start_ms) / 1000.0);
}

static void faults_append_string(json_t *array, const char *text)
{
    if (json_array_append_new(array, json_string(text)) != 0)
        fail_msg("out of memory");
}

int fault_check(struct fault_result *r, int ok, const char *fmt, ...)
{
    char text[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    json_t *c = json_pack("{s:s,s:b}", "what", text, "ok", ok != 0);
    if (!c || json_array_append_new(r->checks, c) != 0)
        fail_msg("out of memory");
    if (!ok) {
        r->failed++;
        fprintf(stderr, "fault %s: CHECK FAILED: %s\n", r->name, text);
    } else {
        printf("fault %s: ok: %s\n", r->name, text);
    }
    return ok;
}

void fault_note(struct fault_result *r, const char *fmt, ...)
{
    char text[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    faults_append_string(r->notes, text);
    printf("fault %s: %s\n", r->name, text);
}

static size_t faults_mark_of(const struct harness_daemon *d)
{
    for (size_t i = 0; i < n_marks; i++)
        if (marks[i].d == d)
            return marks[i].mark;
    return 0;
}

/* Replaces every occurrence of secret in line with "***". The secrets of
 * the suite are longer than the mask, so the line only shrinks. */
static void faults_mask(char *line, const char *secret)
{
    size_t n = strlen(secret);
    char *at;
    if (n < 3)
        return;
    while ((at = strstr(line, secret)) != NULL) {
        memcpy(at, "***", 3);
        memmove(at + 3, at + n, strlen(at + n) + 1);
    }
}

/* A log line as the report shows it: without its time stamp (which says
 * nothing across runs), secrets masked, cut to FAULT_QUOTE_MAX. */
static void faults_clean_line(char *out, size_t len, const char *line, size_t n)
{
    /* "2025-01-31T12:00:00.000Z ident level: text" */
    if (n > 25 && line[4] == '-' && line[10] == 'T' && line[23] == 'Z' && line[24] == ' ') {
        line += 25;
        n -= 25;
    }
    if (n >= len)
        n = len - 1;
    memcpy(out, line, n);
    out[n] = '\0';
    faults_mask(out, HARNESS_SIM_PASSWORD);
    for (size_t i = 0; i < faults.n_scenarios; i++)
        if (faults.scenarios[i])
            faults_mask(out, faults.scenarios[i]->amqp_password);
}

size_t fault_quote(struct fault_result *r, const char *who, const struct harness_daemon *d,
                   const char *const *needles)
{
    char *text = harness_daemon_log_since(d, faults_mark_of(d), FAULTS_LOG_WINDOW);
    size_t first_count = 0;
    for (size_t k = 0; needles && needles[k]; k++) {
        const char *first = NULL;
        size_t first_len = 0, count = 0;
        for (const char *line = text; *line;) {
            const char *nl = strchr(line, '\n');
            size_t len = nl ? (size_t)(nl - line) : strlen(line);
            /* The needle must lie within this line. */
            const char *hit = strstr(line, needles[k]);
            if (hit && hit + strlen(needles[k]) <= line + len) {
                if (!count++) {
                    first = line;
                    first_len = len;
                }
            }
            line += len + (nl != NULL);
        }
        if (k == 0)
            first_count = count;
        if (!first)
            continue;
        char quoted[FAULT_QUOTE_MAX];
        faults_clean_line(quoted, sizeof(quoted), first, first_len);
        json_t *o =
            json_pack("{s:s,s:s,s:I}", "daemon", who, "line", quoted, "count", (json_int_t)count);
        if (!o || json_array_append_new(r->logged, o) != 0)
            fail_msg("out of memory");
        printf("fault %s: the %s logged (%zu such lines): %s\n", r->name, who, count, quoted);
    }
    free(text);
    return first_count;
}

size_t fault_expect_log(struct fault_result *r, const char *who, const struct harness_daemon *d,
                        const char *needle, const char *what)
{
    const char *needles[] = {needle, NULL};
    size_t n = fault_quote(r, who, d, needles);
    fault_check(r, n > 0, "the %s logged %s (\"%s\")", who, what, needle);
    return n;
}

json_t *faults_json_path(json_t *doc, const char *path)
{
    char key[256];
    json_t *at = doc;
    while (at && *path) {
        size_t n = strcspn(path, ".");
        if (n >= sizeof(key))
            return NULL;
        memcpy(key, path, n);
        key[n] = '\0';
        at = json_object_get(at, key);
        path += n + (path[n] == '.');
    }
    return at;
}

json_t *fault_status(struct fault_result *r, const char *who, const struct harness_daemon *d,
                     const char *when, const char *const *members)
{
    return fault_status_within(r, who, d, when, members, FAULTS_STATUS_MS);
}

json_t *fault_status_within(struct fault_result *r, const char *who, const struct harness_daemon *d,
                            const char *when, const char *const *members, long long timeout_ms)
{
    struct harness_status st;
    struct harness_proc p;
    int have_proc = harness_daemon_proc(d, &p) == 0;
    harness_daemon_status_within(d, &st, timeout_ms);
    if (st.exit_code == -1) {
        /* What it printed before it was killed is kept below. */
        char killed[FAULTS_OUTPUT_KEEP];
        snprintf(killed, sizeof(killed), "no answer within %lld ms (killed)%s%.300s", timeout_ms,
                 st.output[0] ? "; it had printed: " : "", st.output);
        free(st.output);
        if (!(st.output = strdup(killed)))
            fail_msg("out of memory");
    }
    json_t *m = json_object();
    if (!m)
        fail_msg("out of memory");
    for (size_t i = 0; st.doc && members && members[i]; i++) {
        json_t *v = faults_json_path(st.doc, members[i]);
        json_object_set_new(m, members[i], v ? json_deep_copy(v) : json_null());
    }
    json_t *o = json_pack("{s:s,s:s,s:I,s:i,s:o}", "daemon", who, "when", when, "took_ms",
                          (json_int_t)st.took_ms, "exit", st.exit_code, "members", m);
    if (!o)
        fail_msg("out of memory");
    if (!st.doc) {
        char out[FAULTS_OUTPUT_KEEP];
        faults_clean_line(out, sizeof(out), st.output, strlen(st.output));
        json_object_set_new(o, "output", json_string(out));
    }
    if (have_proc)
        json_object_set_new(o, "proc",
                            json_pack("{s:I,s:I,s:I}", "rss_kb", (json_int_t)p.rss_kb, "hwm_kb",
                                      (json_int_t)p.hwm_kb, "fds", (json_int_t)p.fds));
    if (json_array_append_new(r->status, o) != 0)
        fail_msg("out of memory");
    char *text = json_dumps(m, JSON_COMPACT);
    printf("fault %s: status of the %s %s (exit %d, %lld ms): %s\n", r->name, who, when,
           st.exit_code, st.took_ms, text ? text : "?");
    free(text);
    json_t *doc = st.doc ? json_incref(st.doc) : NULL;
    harness_status_release(&st);
    return doc;
}

static void fault_take_count(struct fault_result *r, const struct harness_flow_count *c)
{
    r->sent = c->sent;
    r->applied = c->applied;
    r->lost = c->lost;
    r->duplicated = c->duplicated;
    if (c->stale)
        fault_note(r, "%zu target tasks do not hold their source's fields (first: %s)", c->stale,
                   c->first_stale);
    if (c->foreign)
        fault_note(r, "%zu target tasks carry no origin of this client", c->foreign);
}

void fault_count(struct fault_result *r)
{
    struct harness_flow_count c;
    json_t *src = harness_sim_tasks(r->s->src, r->s->src_dept);
    json_t *dst = harness_sim_tasks(r->s->dst, r->s->dst_dept);
    harness_flow_count(r->s->client_id, src, dst, &c);
    json_decref(src);
    json_decref(dst);
    fault_take_count(r, &c);
}

int fault_wait_recovered(struct fault_result *r, long long timeout_ms)
{
    struct harness_flow_count c;
    int met = harness_flow_wait_all(r->s, timeout_ms, &c);
    long long end = r->fault_end_ms ? r->fault_end_ms : r->fault_start_ms;
    if (met && end)
        r->recovered_in = (double)(harness_now_ms() - end) / 1000.0;
    fault_take_count(r, &c);
    if (!met)
        fault_note(r, "not everything arrived within %lld ms: %zu lost, first %lld, %zu stale",
                   timeout_ms, c.lost, c.first_lost, c.stale);
    return met;
}

void fault_check_running(struct fault_result *r, struct harness_scenario *s)
{
    fault_check(r, harness_daemon_running(s->client), "the client daemon runs");
    fault_check(r, harness_daemon_running(s->server), "the server daemon runs");
}

/* What the sanitizers write when they find something (scripts/test makes
 * them abort on the first). */
static const char *const faults_sanitizer_reports[] = {
    "ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
    "runtime error:", "SUMMARY: UndefinedBehaviorSanitizer", NULL};

void fault_stop_both(struct fault_result *r, struct harness_scenario *s)
{
    struct harness_daemon *ds[] = {s->client, s->server};
    const char *names[] = {"client", "server"};
    for (size_t i = 0; i < 2; i++) {
        char why[512] = "";
        int ok = harness_daemon_try_stop(ds[i], why, sizeof(why)) == 0;
        fault_check(r, ok, "the %s daemon exits with status 0 on SIGTERM%s%s", names[i],
                    ok ? "" : ": ", why);
        size_t reports = 0;
        for (size_t k = 0; faults_sanitizer_reports[k]; k++)
            reports += harness_daemon_log_count(ds[i], faults_sanitizer_reports[k]);
        fault_check(r, reports == 0, "the %s daemon's log holds no sanitizer report (%zu found)",
                    names[i], reports);
    }
}

/* Where the JSON lines go: RT_FAULTS_OUT, or faults.jsonl next to the
 * running program (in the build tree). */
static void faults_out_path(char *out, size_t len)
{
    const char *env = getenv("RT_FAULTS_OUT");
    if (env && *env) {
        snprintf(out, len, "%s", env);
        return;
    }
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n <= 0)
        fail_msg("cannot read /proc/self/exe: %s", strerror(errno));
    self[n] = '\0';
    snprintf(out, len, "%s/faults.jsonl", dirname(self));
}

/* Appends o (taken) as one line to the results file, whose path goes to
 * path; 1 when it was written. */
static int faults_append(json_t *o, char *path, size_t len)
{
    char *text = json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII);
    json_decref(o);
    if (!text)
        fail_msg("out of memory");
    faults_out_path(path, len);
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    size_t n = strlen(text);
    /* One write of the whole line: appends from one case never
     * interleave with another's. */
    text[n] = '\n';
    int written = fd >= 0 && write(fd, text, n + 1) == (ssize_t)(n + 1);
    if (fd >= 0)
        close(fd);
    free(text);
    return written;
}

static void faults_release(struct fault_result *r)
{
    memset(faults.running, 0, sizeof(faults.running));
    json_decref(r->logged);
    json_decref(r->status);
    json_decref(r->notes);
    json_decref(r->checks);
    r->logged = r->status = r->notes = r->checks = NULL;
}

void fault_report(struct fault_result *r)
{
    char line[512], path[PATH_MAX], recovered[32];
    if (r->recovered_in >= 0)
        snprintf(recovered, sizeof(recovered), "%.1f", r->recovered_in);
    else
        snprintf(recovered, sizeof(recovered), "none");
    snprintf(line, sizeof(line),
             "fault %s: sent=%zu applied=%zu lost=%zu duplicated=%zu recovered_in=%s", r->name,
             r->sent, r->applied, r->lost, r->duplicated, recovered);
    int ok = r->lost == 0 && r->duplicated == 0 && r->failed == 0 && r->recovered_in >= 0;
    double run_s = (double)(harness_now_ms() - r->begun_ms) / 1000.0;

    json_t *failures = faults_new_array();
    size_t i;
    json_t *c;
    json_array_foreach(r->checks, i, c)
    {
        if (!json_is_true(json_object_get(c, "ok")))
            faults_append_string(failures, jstr(c, "what"));
    }
    json_t *o =
        json_pack("{s:s,s:i,s:s,s:s,s:I,s:I,s:I,s:I,s:o,s:b,s:f,s:I,s:O,s:O,s:O,s:O,s:o}", "case",
                  r->name, "number", r->number, "title", r->title, "line", line, "sent",
                  (json_int_t)r->sent, "applied", (json_int_t)r->applied, "lost",
                  (json_int_t)r->lost, "duplicated", (json_int_t)r->duplicated, "recovered_in",
                  r->recovered_in >= 0 ? json_real(r->recovered_in) : json_null(), "passed", ok,
                  "run_s", run_s, "finished", (json_int_t)time(NULL), "logged", r->logged, "status",
                  r->status, "notes", r->notes, "checks", r->checks, "failures", failures);
    if (!o)
        fail_msg("out of memory");
    int written = faults_append(o, path, sizeof(path));

    printf("%s\n", line);
    printf("fault %s: ran %.1f s; %zu checks failed\n", r->name, run_s, r->failed);
    fflush(stdout);
    size_t failed = r->failed;
    faults_release(r);
    if (!written)
        fail_msg("cannot append the result of fault %s to %s: %s", r->name, path, strerror(errno));
    if (!ok) {
        harness_scenario_print_logs(r->s);
        fail_msg("fault %s: lost=%zu duplicated=%zu recovered_in=%s, %zu checks failed (above)",
                 r->name, r->lost, r->duplicated, recovered, failed);
    }
    faults.passed = 1;
}
