/*
 * it_cluster.c - both daemons on a three-node RabbitMQ cluster with quorum
 * queues (issue 10, item 3).
 *
 * The cluster is the test's own (tests/integration/harness_cluster.h); the
 * scenario (harness_daemon.h) lists its three nodes in amqp.uri of both
 * daemons, with queue_type "quorum", heartbeat 5 s and a server whose
 * state cycle comes every 2 s.
 *
 * Failover: 1,000 source tasks are created and recorded in chunks while
 * the test changes each target task as staff would (closed, and a line
 * "[cluster change T]" appended to its note) as soon as it appears. Midway
 * the node holding the leader of the client's forward queue (where the
 * server, which declared it, is connected) is killed with SIGKILL while a
 * few hundred tasks are on their way and creates are in the target's API,
 * and started again; then the node of a daemon that has not lost its node
 * yet (else the server's) is stopped for STOP_S seconds and started. At the
 * end every source task must be on the target once with its fields
 * (harness_flow.h), and every change on its source task once, with the
 * status; the daemons' lines about the connections are quoted, and status
 * and /metrics show the reconnections and the node changing. Those lines
 * must name the node they are about, and no ack of a lost connection may
 * reach the next one (the broker refuses its unknown tag and closes the
 * channel, failing that attempt): checked last, so that a run prints
 * every figure first.
 *
 * Active and standby: a second server daemon on the same configuration
 * file stands by (an flock on the state_dir) while the first works: the
 * forward queue has one consumer, the broker one connection of the
 * server's user, the standby no socket at all and no apply. 200 more tasks
 * flow, slowed down on the target so that creates are in flight, and the
 * active server is killed with SIGKILL; the standby takes over, finds the
 * interrupted creates again by their origin marker and applies the rest:
 * nothing lost, nothing applied twice.
 *
 * Figures (failover, takeover) are measured from the daemons' log time
 * stamps and printed, never asserted. Every wait is a condition with a
 * deadline; the fixed periods are the stopped node's (the figure)
 * and two 2 s stretches in which tasks keep coming, load rather than
 * waits. Where the machine cannot start three nodes, RT_CLUSTER_SKIP=1
 * makes the program exit 77 with the reason (harness_cluster_start).
 */
#include <dirent.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <jansson.h>

#include "broker.h"
#include "buf.h"
#include "harness.h"
#include "harness_cluster.h"
#include "harness_daemon.h"
#include "harness_flow.h"
#include "harness_sim.h"
#include "log.h"
#include "notes.h"

#define N_NODES 3
/* Tasks of the failover part and of the standby part. */
#define N_TASKS   1000
#define N_STANDBY 200
/* How long the second node stays stopped: the figure. */
#define STOP_S          60
#define HEARTBEAT_S     5
#define SYNC_INTERVAL_S 2
/* Deadlines: generous for a loaded 2-core machine with ASan; every wait
 * ends as soon as its condition holds. */
#define FLOW_DEADLINE_MS    240000
#define CONNECT_DEADLINE_MS 60000
#define PUMP_INTERVAL_MS    400
/* Target changes made per look at the target, so that recording goes on
 * between them. */
#define CHANGES_PER_PUMP 150
#define METRICS_MAX      ((size_t)4 * 1024 * 1024)
#define QUOTE_MAX        12

static struct harness_scenario *current;
static struct harness_daemon *standby;

static void picture(struct harness_scenario *s);

/* On failure the message comes first, then what the broker and the
 * daemons say, then the logs: CI keeps the head and the tail of a long
 * output, and the logs fill the middle. */
#define EXPECT(s, cond, ...)                                                                       \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            printf("cluster: FAILED: ");                                                           \
            printf(__VA_ARGS__);                                                                   \
            printf("\n");                                                                          \
            picture(s);                                                                            \
            harness_scenario_print_logs(s);                                                        \
            if (standby)                                                                           \
                harness_daemon_print_log(standby, 0);                                              \
            fail_msg(__VA_ARGS__);                                                                 \
        }                                                                                          \
    } while (0)

/* ---- small helpers ----------------------------------------------------- */

static const char *jstr(const json_t *o, const char *key)
{
    const char *v = json_string_value(json_object_get(o, key));
    return v ? v : "";
}

static long long jint(const json_t *o, const char *key)
{
    const json_t *v = json_object_get(o, key);
    if (json_is_integer(v))
        return json_integer_value(v);
    if (json_is_string(v))
        return strtoll(json_string_value(v), NULL, 10);
    return 0;
}

static long long wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static size_t count_occurrences(const char *hay, const char *needle)
{
    size_t n = 0, len = strlen(needle);
    for (const char *p = strstr(hay, needle); p; p = strstr(p + len, needle))
        n++;
    return n;
}

/* The node (1..3) whose AMQP port a "host:port" names, 0 when none. */
static int node_of(const char *hostport)
{
    const char *colon = hostport ? strrchr(hostport, ':') : NULL;
    if (!colon)
        return 0;
    int port = atoi(colon + 1);
    for (int i = 1; i <= N_NODES; i++) {
        if (harness_cluster_amqp_port(i) == port)
            return i;
    }
    return 0;
}

/* ---- the daemons' logs -------------------------------------------------- */

/* The wall time of a log line ("2024-05-01T10:00:00.123Z remotetaskd ..."),
 * or -1 when the line does not start with one. */
static long long line_ms(const char *line)
{
    struct tm tm;
    int ms;
    memset(&tm, 0, sizeof(tm));
    if (sscanf(line, "%4d-%2d-%2dT%2d:%2d:%2d.%3dZ", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
               &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &ms) != 7)
        return -1;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return (long long)timegm(&tm) * 1000 + ms;
}

/* Calls fn(line, arg) for each whole line the daemon logged since mark,
 * until fn returns non-zero; returns that value (0 when none did). */
static int log_scan(const struct harness_daemon *d, size_t mark, int (*fn)(const char *, void *),
                    void *arg)
{
    FILE *f = fopen(harness_daemon_log_path(d), "re");
    if (!f)
        return 0;
    int r = 0;
    if (fseeko(f, (off_t)mark, SEEK_SET) == 0) {
        char *line = NULL;
        size_t cap = 0;
        ssize_t n;
        while (!r && (n = getline(&line, &cap, f)) > 0) {
            if (line[n - 1] != '\n')
                break; /* being written: for the next look */
            line[n - 1] = '\0';
            r = fn(line, arg);
        }
        free(line);
    }
    fclose(f);
    return r;
}

struct find {
    const char *needle[3]; /* any of them, NULL-terminated */
    char line[1024];
    long long at_ms;
};

static int find_cb(const char *line, void *arg)
{
    struct find *f = arg;
    for (int i = 0; i < 3 && f->needle[i]; i++) {
        if (strstr(line, f->needle[i])) {
            snprintf(f->line, sizeof(f->line), "%s", line);
            f->at_ms = line_ms(line);
            return 1;
        }
    }
    return 0;
}

/* The first line since mark holding needle (or needle2, may be NULL):
 * returns its wall time with the line in f, or -1. */
static long long log_find(const struct harness_daemon *d, size_t mark, const char *needle,
                          const char *needle2, struct find *f)
{
    memset(f, 0, sizeof(*f));
    f->needle[0] = needle;
    f->needle[1] = needle2;
    f->at_ms = -1;
    if (!log_scan(d, mark, find_cb, f))
        return -1;
    return f->at_ms;
}

/* As log_find, waiting up to timeout_ms for the line; fails the test when
 * it does not come. */
static long long log_wait(struct harness_scenario *s, const struct harness_daemon *d, size_t mark,
                          const char *needle, const char *needle2, struct find *f,
                          long long timeout_ms)
{
    long long deadline = harness_now_ms() + timeout_ms;
    for (;;) {
        long long at = log_find(d, mark, needle, needle2, f);
        if (at >= 0)
            return at;
        EXPECT(s, harness_now_ms() < deadline, "no line \"%s\" in %s within %lld ms", needle,
               harness_daemon_log_path(d), timeout_ms);
        poll(NULL, 0, 100);
    }
}

struct quote {
    const char *who;
    int printed;
};

static int quote_cb(const char *line, void *arg)
{
    struct quote *q = arg;
    if ((strstr(line, "lost the broker connection") || strstr(line, "connected to the broker") ||
         strstr(line, "connect to the broker") || strstr(line, "taking over") ||
         strstr(line, "standing by")) &&
        q->printed < QUOTE_MAX) {
        printf("cluster:   %s log: %s\n", q->who, line);
        q->printed++;
    }
    return 0;
}

/* Prints the daemon's lines about its broker connection since mark. */
static void quote_lines(const struct harness_daemon *d, const char *who, size_t mark)
{
    struct quote q = {.who = who};
    log_scan(d, mark, quote_cb, &q);
}

/* What the lines about a daemon's broker connection show. */
struct naming {
    char node[64];  /* "host:port" the daemon is on, from the last connected line */
    size_t checked; /* lines about the connection looked at */
    size_t wrong;   /* of those, lines whose URI is another node's */
    char first[1024];
    /* Acks or rejects the broker did not know: a delivery of an earlier
     * connection acknowledged on the new one, whose channel the broker
     * then closes (PRECONDITION_FAILED), failing that attempt. */
    size_t stale_acks;
    char first_stale[1024];
};

/* A line about the connection to node must name that node's URI
 * ("amqp://user@HOST:PORT/..."): config/config.h says a line about a
 * connection names the node in use, and an operator reading "lost the
 * connection to node 1" looks at the wrong machine. */
static void naming_check(struct naming *n, const char *line, const char *node)
{
    char uri_part[80];
    snprintf(uri_part, sizeof(uri_part), "@%s/", node);
    n->checked++;
    if (!strstr(line, uri_part) && !n->wrong++)
        snprintf(n->first, sizeof(n->first), "%s (the node was %s)", line, node);
}

static int naming_cb(const char *line, void *arg)
{
    struct naming *n = arg;
    const char *at = strstr(line, "(node ");
    /* The attempt's own line repeats the reason: one per refusal. */
    if (strstr(line, "unknown delivery tag") && !strstr(line, "cannot connect") && !n->stale_acks++)
        snprintf(n->first_stale, sizeof(n->first_stale), "%s", line);
    if (strstr(line, "lost the broker connection to ")) {
        naming_check(n, line, n->node);
    } else if (strstr(line, "connected to the broker at ") && at) {
        sscanf(at + strlen("(node "), "%63[^)]", n->node);
        naming_check(n, line, n->node);
    }
    return 0;
}

/* Checks the lines about the broker connection logged since mark, when
 * the daemon was on node (host:port). */
static void naming_scan(const struct harness_daemon *d, size_t mark, const char *node,
                        struct naming *n)
{
    memset(n, 0, sizeof(*n));
    snprintf(n->node, sizeof(n->node), "%s", node);
    log_scan(d, mark, naming_cb, n);
}

/* ---- status and metrics ------------------------------------------------ */

struct seen {
    int connected;
    long long reconnects; /* status broker.reconnects */
    char node[64];        /* status broker.node */
    double m_reconnects;  /* remotetask_broker_reconnects_total */
    char m_node[64];      /* the node label of remotetask_broker_node_info */
    long long resent;     /* status errors.resent, both directions: retry copies the
                             broker confirmed and lost, sent again */
};

static size_t curl_write(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    return buf_append(userdata, ptr, size * nmemb) < 0 ? 0 : size * nmemb;
}

/* GET http://127.0.0.1:port/metrics: the body (malloc'ed), or NULL. */
static char *scrape(int port)
{
    char url[64];
    struct buf b;
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/metrics", port);
    buf_init(&b, METRICS_MAX);
    CURL *e = curl_easy_init();
    if (!e)
        return NULL;
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_PROXY, "");
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 10000L);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, curl_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &b);
    long code = 0;
    CURLcode rc = curl_easy_perform(e);
    if (rc == CURLE_OK)
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &code);
    curl_easy_cleanup(e);
    if (rc != CURLE_OK || code != 200 || buf_append(&b, "", 0) < 0) {
        buf_release(&b);
        return NULL;
    }
    return buf_steal(&b);
}

/* What status --json and /metrics say about the daemon's broker. */
static void look(struct harness_scenario *s, const struct harness_daemon *d, int metrics_port,
                 struct seen *out)
{
    struct harness_status st;
    memset(out, 0, sizeof(*out));
    out->m_reconnects = -1;
    harness_daemon_status(d, &st);
    json_t *b = st.doc ? json_object_get(st.doc, "broker") : NULL;
    EXPECT(s, b, "status --json gave no broker object: %s", st.output);
    out->connected = json_is_true(json_object_get(b, "connected"));
    out->reconnects = jint(b, "reconnects");
    snprintf(out->node, sizeof(out->node), "%s", jstr(b, "node"));
    json_t *rs = json_object_get(json_object_get(st.doc, "errors"), "resent");
    out->resent = jint(rs, "forward") + jint(rs, "reverse");
    harness_status_release(&st);

    char *text = scrape(metrics_port);
    EXPECT(s, text, "no answer from /metrics on port %d", metrics_port);
    for (char *line = text; line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = '\0';
        const char *rn = "remotetask_broker_reconnects_total ";
        const char *ni = "remotetask_broker_node_info{node=\"";
        if (strncmp(line, rn, strlen(rn)) == 0)
            out->m_reconnects = strtod(line + strlen(rn), NULL);
        else if (strncmp(line, ni, strlen(ni)) == 0)
            sscanf(line + strlen(ni), "%63[^\"]", out->m_node);
        line = nl ? nl + 1 : NULL;
    }
    free(text);
}

/* Waits until the daemon says it is connected to the broker. */
static void wait_connected(struct harness_scenario *s, const struct harness_daemon *d, int port,
                           struct seen *out)
{
    long long deadline = harness_now_ms() + CONNECT_DEADLINE_MS;
    for (;;) {
        look(s, d, port, out);
        if (out->connected)
            return;
        EXPECT(s, harness_now_ms() < deadline, "%s is not connected to the broker after %d ms",
               harness_daemon_log_path(d), CONNECT_DEADLINE_MS);
        poll(NULL, 0, 200);
    }
}

/* ---- the broker, seen from rabbitmqctl ---------------------------------- */

/* A queue's messages (ready + unacknowledged) and consumers, exact
 * (rabbitmqctl list_queues through node i); 0 when the queue is missing. */
static int queue_figures(int i, const char *queue, long *messages, long *consumers)
{
    const char *args[] = {"-q",        "list_queues", "name", "messages",
                          "consumers", "--formatter", "json", NULL};
    char *out = harness_cluster_ctl(i, args);
    json_error_t e;
    json_t *qs = json_loads(out, 0, &e);
    if (!json_is_array(qs))
        fail_msg("list_queues is not a JSON array (%s): %.300s", e.text, out);
    free(out);
    int found = 0;
    size_t k;
    json_t *q;
    json_array_foreach(qs, k, q)
    {
        if (strcmp(jstr(q, "name"), queue) == 0) {
            *messages = (long)jint(q, "messages");
            *consumers = (long)jint(q, "consumers");
            found = 1;
        }
    }
    json_decref(qs);
    return found;
}

/* The broker's connections of user (rabbitmqctl list_connections through
 * node i): how many, with their names in names. */
static int user_connections(int i, const char *user, char *names, size_t len)
{
    const char *args[] = {"-q", "list_connections", "user", "name", "--formatter", "json", NULL};
    char *out = harness_cluster_ctl(i, args);
    json_error_t e;
    json_t *cs = json_loads(out, 0, &e);
    if (!json_is_array(cs))
        fail_msg("list_connections is not a JSON array (%s): %.300s", e.text, out);
    free(out);
    int n = 0;
    size_t k, used = 0;
    json_t *c;
    names[0] = '\0';
    json_array_foreach(cs, k, c)
    {
        if (strcmp(jstr(c, "user"), user) != 0)
            continue;
        n++;
        int w = snprintf(names + used, len - used, "%s\"%s\"", used ? ", " : "", jstr(c, "name"));
        if (w > 0 && (size_t)w < len - used)
            used += (size_t)w;
    }
    json_decref(cs);
    return n;
}

/* Prints the lines of a rabbitmqctl listing (JSON array of objects) that
 * mention the client, one object per line. */
static void picture_list(struct harness_scenario *s, int node, const char *what,
                         const char *const *args)
{
    char *out = harness_cluster_ctl_try(node, args);
    json_t *rows = out ? json_loads(out, 0, NULL) : NULL;
    free(out);
    size_t k;
    json_t *row;
    json_array_foreach(rows, k, row)
    {
        char *line = json_dumps(row, JSON_COMPACT);
        if (line && strstr(line, s->client_id))
            printf("cluster: %s (node %d): %s\n", what, node, line);
        free(line);
    }
    json_decref(rows);
}

/* What a failure needs to be understood without the logs: the client's
 * queues (depth, leader, members online) and their consumers as the broker
 * sees them, and both daemons' status. Never fails the test itself. */
static void picture(struct harness_scenario *s)
{
    int node = 0;
    for (int i = 1; i <= harness_cluster_nodes() && !node; i++)
        if (harness_cluster_node_up(i))
            node = i;
    if (node) {
        const char *queues[] = {
            "-q",        "list_queues", "name",   "messages_ready", "messages_unacknowledged",
            "consumers", "leader",      "online", "--formatter",    "json",
            NULL};
        const char *consumers[] = {
            "-q",           "list_consumers", "queue_name", "channel_pid",
            "consumer_tag", "prefetch_count", "active",     "activity_status",
            "--formatter",  "json",           NULL};
        picture_list(s, node, "queue", queues);
        picture_list(s, node, "consumer", consumers);
    } else {
        printf("cluster: no node is up to list the queues\n");
    }
    const struct harness_daemon *ds[] = {s->server, s->client, standby};
    const char *who[] = {"server", "client", "standby"};
    for (int i = 0; i < 3; i++) {
        if (!ds[i])
            continue;
        struct harness_status st = {0};
        harness_daemon_status_within(ds[i], &st, 10000);
        char *doc = st.doc ? json_dumps(st.doc, JSON_COMPACT) : NULL;
        printf("cluster: %s status (exit %d): %s\n", who[i], st.exit_code,
               doc         ? doc
               : st.output ? st.output
                           : "");
        free(doc);
        harness_status_release(&st);
    }
    fflush(stdout);
}

/* Waits until the client's forward and reverse queues hold nothing, ready
 * or unacknowledged. */
static void wait_queues_empty(struct harness_scenario *s, long long timeout_ms)
{
    char names[2][BROKER_NAME_MAX];
    broker_queue_name(names[0], sizeof(names[0]), BROKER_FORWARD, s->client_id);
    broker_queue_name(names[1], sizeof(names[1]), BROKER_REVERSE, s->client_id);
    long long deadline = harness_now_ms() + timeout_ms;
    for (int i = 0; i < 2; i++) {
        for (;;) {
            long messages = -1, consumers = 0;
            EXPECT(s, queue_figures(1, names[i], &messages, &consumers),
                   "the queue %s does not exist", names[i]);
            if (messages == 0)
                break;
            EXPECT(s, harness_now_ms() < deadline, "the queue %s still holds %ld messages",
                   names[i], messages);
            poll(NULL, 0, 250);
        }
    }
}

/* Sockets the process holds (entries of /proc/PID/fd that are sockets). */
static int proc_sockets(int pid)
{
    char path[64], link[128];
    snprintf(path, sizeof(path), "/proc/%d/fd", pid);
    DIR *dir = opendir(path);
    if (!dir)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(dir)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char fd[384];
        snprintf(fd, sizeof(fd), "%s/%s", path, e->d_name);
        ssize_t len = readlink(fd, link, sizeof(link) - 1);
        if (len > 0) {
            link[len] = '\0';
            n += strncmp(link, "socket:", 7) == 0;
        }
    }
    closedir(dir);
    return n;
}

/* ---- the flow of tasks ---------------------------------------------------- */

struct flow {
    struct harness_scenario *s;
    long long ids[N_TASKS + N_STANDBY]; /* source ids, in creation order */
    int created;                        /* tasks created and recorded */
    int change_upto;                    /* tasks [0, change_upto) get target changes */
    unsigned char changed[N_TASKS + N_STANDBY];
    int n_changed;
};

/* Creates source tasks created..upto-1 in the mapped department and
 * records their events (what remotetaskctl taskevent does), then wakes
 * the client. Only this test creates tasks there, so the reconciliation
 * never sees one before its event. */
static void flow_create(struct flow *f, int upto)
{
    struct harness_scenario *s = f->s;
    if (upto <= f->created)
        return;
    int count = upto - f->created;
    json_t *b = json_pack("{s:i,s:i,s:s,s:s,s:s,s:s}", "department", (int)s->src_dept, "count",
                          count, "name_prefix", "cluster task ", "type", "manual", "note",
                          "cluster & = + %\nsecond line", "deadline", "2030-01-01 00:00:00");
    char *body = b ? json_dumps(b, JSON_COMPACT) : NULL;
    json_decref(b);
    assert_non_null(body);
    json_t *r = harness_sim_admin_ok(s->src, "POST", "/tasks/bulk", body);
    free(body);
    long long first = jint(r, "first_id"), last = jint(r, "last_id");
    json_decref(r);
    EXPECT(s, last - first + 1 == count, "the source emulator made %lld tasks, not %d",
           last - first + 1, count);
    for (int k = 0; k < count; k++)
        f->ids[f->created + k] = first + k;
    harness_record_events(s->client_state, s->client_id, first, last);
    f->created = upto;
    harness_daemon_wake(s->client, 0);
}

/* The index of source task src among the test's, or -1. */
static int flow_index(const struct flow *f, long long src)
{
    /* Ids grow with each create. */
    int lo = 0, hi = f->created - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        if (f->ids[mid] == src)
            return mid;
        if (f->ids[mid] < src)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return -1;
}

/* The line a change of the target task of source task src appends. */
static void change_line(char *buf, size_t len, long long src)
{
    snprintf(buf, len, "[cluster change %lld]", src);
}

/* One look at the target: each task of [0, change_upto) that arrived and
 * was not changed yet is changed as staff would change it (closed, a line
 * appended to its note), at most CHANGES_PER_PUMP of them. The test is the
 * only writer of target notes once a task exists (the source's notes never
 * change), so reading the note and writing it back loses nothing. Returns
 * how many target tasks of the client there are. */
static size_t flow_change(struct flow *f)
{
    struct harness_scenario *s = f->s;
    json_t *dst = harness_sim_tasks(s->dst, s->dst_dept);
    size_t arrived = 0, i;
    int made = 0;
    json_t *t;
    json_array_foreach(dst, i, t)
    {
        long long src = harness_flow_note_origin(jstr(t, "note"), s->client_id);
        if (!src)
            continue;
        arrived++;
        int k = flow_index(f, src);
        if (k < 0 || k >= f->change_upto || f->changed[k] || made >= CHANGES_PER_PUMP)
            continue;
        char line[64], path[64];
        change_line(line, sizeof(line), src);
        const char *old = jstr(t, "note");
        size_t n = strlen(old) + strlen(line) + 2;
        char *note = malloc(n);
        assert_non_null(note);
        snprintf(note, n, "%s%s%s", old, *old && old[strlen(old) - 1] != '\n' ? "\n" : "", line);
        json_t *fields = json_pack("{s:i,s:s}", "status", 2, "note", note);
        free(note);
        char *body = fields ? json_dumps(fields, JSON_COMPACT) : NULL;
        json_decref(fields);
        assert_non_null(body);
        snprintf(path, sizeof(path), "/tasks/%lld", jint(t, "id"));
        json_decref(harness_sim_admin_ok(s->dst, "POST", path, body));
        free(body);
        f->changed[k] = 1;
        f->n_changed++;
        made++;
    }
    json_decref(dst);
    return arrived;
}

/* Changes what arrives for ms milliseconds while creating tasks up to
 * upto evenly over the period. */
static void flow_pump(struct flow *f, long long ms, int upto)
{
    long long t0 = harness_now_ms(), end = t0 + ms;
    int from = f->created;
    for (;;) {
        long long now = harness_now_ms();
        if (now >= end)
            break;
        int due = from + (int)((long long)(upto - from) * (now - t0) / ms);
        if (due >= f->created + 10 || (due > f->created && upto - due < 10))
            flow_create(f, due);
        flow_change(f);
        poll(NULL, 0, PUMP_INTERVAL_MS);
    }
    flow_create(f, upto);
}

/* Changes what arrives until the target holds at least n of the client's
 * tasks. */
static void flow_pump_until(struct flow *f, size_t n, long long timeout_ms)
{
    long long deadline = harness_now_ms() + timeout_ms;
    size_t arrived;
    while ((arrived = flow_change(f)) < n) {
        EXPECT(f->s, harness_now_ms() < deadline,
               "the target holds %zu of the client's tasks after %lld ms, not %zu", arrived,
               timeout_ms, n);
        poll(NULL, 0, PUMP_INTERVAL_MS);
    }
}

/* The source tasks of [from, to) with each note cut to its native text:
 * what the forward path carries (the reverse path's blocks on the source
 * never travel back). A new array. */
static json_t *forward_view(const struct flow *f, json_t *src, int from, int to)
{
    json_t *out = json_array();
    assert_non_null(out);
    size_t i;
    json_t *t;
    json_array_foreach(src, i, t)
    {
        int k = flow_index(f, jint(t, "id"));
        if (k < from || k >= to)
            continue;
        json_t *c = json_deep_copy(t);
        char *native = notes_native(jstr(t, "note"));
        assert_true(c && native);
        json_object_set_new(c, "note", json_string(native));
        free(native);
        json_array_append_new(out, c);
    }
    return out;
}

struct fwd_wait {
    const struct flow *f;
    int from, to;
    struct harness_flow_count c;
};

static int fwd_done(json_t *dst, void *arg)
{
    struct fwd_wait *w = arg;
    json_t *src = harness_sim_tasks(w->f->s->src, w->f->s->src_dept);
    json_t *view = forward_view(w->f, src, w->from, w->to);
    harness_flow_count(w->f->s->client_id, view, dst, &w->c);
    json_decref(view);
    json_decref(src);
    return w->c.lost == 0 && w->c.stale == 0;
}

/* Waits until every task of [from, to) is on the target with its fields;
 * fills *c with the count over [from, to) (foreign: target tasks of the
 * client's other ones, or none of ours). */
static void flow_wait_forward(struct flow *f, int from, int to, struct harness_flow_count *c)
{
    struct fwd_wait w = {.f = f, .from = from, .to = to};
    int met = 0;
    json_decref(
        harness_wait_tasks(f->s->dst, f->s->dst_dept, fwd_done, &w, FLOW_DEADLINE_MS, &met));
    *c = w.c;
    if (!met)
        fprintf(stderr, "cluster: first lost %lld, first stale %s\n", c->first_lost,
                c->first_stale);
    EXPECT(f->s, met, "tasks %d..%d: %zu lost, %zu stale on the target after %d ms", from, to - 1,
           c->lost, c->stale, FLOW_DEADLINE_MS);
}

struct rev_wait {
    const struct flow *f;
    int to;
    size_t seen, lost, duplicated, status_off;
    long long first_lost, first_dup;
};

/* Counts the changes of the target tasks of [0, to) on the source: each
 * one's line must be in its source task's note exactly once and the task
 * closed. */
static int rev_done(json_t *src, void *arg)
{
    struct rev_wait *w = arg;
    w->seen = w->lost = w->duplicated = w->status_off = 0;
    w->first_lost = w->first_dup = 0;
    size_t i;
    json_t *t;
    json_array_foreach(src, i, t)
    {
        int k = flow_index(w->f, jint(t, "id"));
        if (k < 0 || k >= w->to)
            continue;
        char line[64];
        change_line(line, sizeof(line), jint(t, "id"));
        size_t n = count_occurrences(jstr(t, "note"), line);
        if (n == 0) {
            if (!w->lost++)
                w->first_lost = jint(t, "id");
        } else {
            w->seen++;
            if (n > 1 && !w->duplicated++)
                w->first_dup = jint(t, "id");
        }
        if (jint(t, "status") != 2)
            w->status_off++;
    }
    return w->seen == (size_t)w->to && w->status_off == 0;
}

/* ---- the test ------------------------------------------------------------- */

static int group_setup(void **state)
{
    (void)state;
    harness_cluster_start(N_NODES);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    harness_cluster_stop();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    harness_daemon_free(standby);
    standby = NULL;
    /* The scenario's queues and users go through a node that runs. */
    harness_cluster_heal();
    harness_scenario_free(current);
    current = NULL;
    return 0;
}

static int metrics_port_of(const char *conf)
{
    char text[96];
    int port = harness_free_port();
    snprintf(text, sizeof(text), "metrics: { listen = \"127.0.0.1:%d\"; };\n", port);
    harness_config_append(conf, text);
    return port;
}

/* The node a daemon should be pushed off next: that of the first daemon
 * that has not reconnected yet, else the server's. */
static int second_node(const struct seen *server, const struct seen *client, int killed)
{
    int n = 0;
    if (client->reconnects == 0)
        n = node_of(client->node);
    else if (server->reconnects == 0)
        n = node_of(server->node);
    if (!n || n == killed)
        n = node_of(server->node);
    return n;
}

static void test_failover_and_standby(void **state)
{
    (void)state;
    long long test_t0 = harness_now_ms();
    struct harness_scenario_opts o = {.cluster = 1, .heartbeat = HEARTBEAT_S, .poll_interval = 5};
    struct harness_scenario *s = harness_scenario_new("itc", &o, &current);
    s->keep = 1; /* until the end of a successful run */
    harness_config_replace(s->server_conf, "queue_type = \"classic\";", "queue_type = \"quorum\";");
    harness_config_replace(s->client_conf, "queue_type = \"classic\";", "queue_type = \"quorum\";");
    char repl[64];
    snprintf(repl, sizeof(repl), "sync_interval = %d;", SYNC_INTERVAL_S);
    harness_config_replace(s->server_conf, "sync_interval = 300;", repl);
    int server_port = metrics_port_of(s->server_conf);
    int client_port = metrics_port_of(s->client_conf);
    char fwd_queue[BROKER_NAME_MAX];
    broker_queue_name(fwd_queue, sizeof(fwd_queue), BROKER_FORWARD, s->client_id);

    /* The server declares the client's topology before the client comes:
     * a quorum queue's leader starts on the node of the connection that
     * declared it, so the leaders live where the server is. */
    struct seen srv0, cli0;
    harness_daemon_start(s->server);
    wait_connected(s, s->server, server_port, &srv0);
    harness_daemon_start(s->client);
    wait_connected(s, s->client, client_port, &cli0);
    int leader = harness_cluster_wait_leader(fwd_queue, 0);
    printf("cluster: server on node %d (%s), client on node %d (%s); the leader of %s is on "
           "node %d\n",
           node_of(srv0.node), srv0.node, node_of(cli0.node), cli0.node, fwd_queue, leader);
    EXPECT(s,
           srv0.reconnects == 0 && cli0.reconnects == 0 && srv0.m_reconnects == 0 &&
               cli0.m_reconnects == 0,
           "reconnections before any fault: server %lld/%g, client %lld/%g", srv0.reconnects,
           srv0.m_reconnects, cli0.reconnects, cli0.m_reconnects);
    size_t server_mark = harness_daemon_log_mark(s->server);
    size_t client_mark = harness_daemon_log_mark(s->client);

    /* ---- 1. the leader's node killed, then a second node stopped ---- */
    static struct flow flow;
    struct flow *f = &flow;
    memset(f, 0, sizeof(*f));
    f->s = s;
    f->change_upto = N_TASKS;
    flow_create(f, 200);
    flow_pump_until(f, 100, FLOW_DEADLINE_MS);
    /* The kill comes with a few hundred tasks on their way, and with
     * creates in the target's API, as a BILLmanager that takes its time
     * has; a fifth of them answered 503, so that their messages wait in
     * the retry queues, whose leaders are on the node killed (issue 13,
     * item 4: the retry hop of quorum queues is at-least-once). */
    json_decref(harness_sim_admin_ok(s->dst, "POST", "/faults",
                                     "{\"latency_ms\":[100,400],\"funcs\":[\"task.edit\"],"
                                     "\"error_rate\":0.2,\"error_status\":503}"));
    flow_create(f, 400);

    struct seen srv1, cli1;
    look(s, s->server, server_port, &srv1);
    look(s, s->client, client_port, &cli1);
    int server_on_leader = node_of(srv1.node) == leader;
    int client_on_leader = node_of(cli1.node) == leader;
    size_t server_kill_mark = harness_daemon_log_mark(s->server);
    size_t client_kill_mark = harness_daemon_log_mark(s->client);
    long long t_kill = wall_ms();
    harness_cluster_kill(leader);
    printf("cluster: node %d (leader of %s) killed with SIGKILL; %zu of %d tasks on the "
           "target\n",
           leader, fwd_queue, flow_change(f), f->created);

    /* Failover: each daemon that was on the node connects to another. */
    double failover_s = -1;
    struct find fl;
    if (server_on_leader) {
        long long at = log_wait(s, s->server, server_kill_mark, "connected to the broker", NULL,
                                &fl, CONNECT_DEADLINE_MS);
        printf("cluster: server connected again %.3f s after the kill: %s\n",
               (double)(at - t_kill) / 1000.0, fl.line);
        failover_s = (double)(at - t_kill) / 1000.0;
    }
    if (client_on_leader) {
        long long at = log_wait(s, s->client, client_kill_mark, "connected to the broker", NULL,
                                &fl, CONNECT_DEADLINE_MS);
        printf("cluster: client connected again %.3f s after the kill: %s\n",
               (double)(at - t_kill) / 1000.0, fl.line);
        if ((double)(at - t_kill) / 1000.0 > failover_s)
            failover_s = (double)(at - t_kill) / 1000.0;
    }
    EXPECT(s, server_on_leader || client_on_leader,
           "neither daemon was on node %d, the leader's: the server declared the topology first "
           "from node %d",
           leader, node_of(srv1.node));
    int next_leader = harness_cluster_wait_leader(fwd_queue, leader);
    printf("cluster: the leader of %s moved to node %d\n", fwd_queue, next_leader);
    json_decref(harness_sim_admin_ok(s->dst, "POST", "/faults/reset", NULL));
    long refused = harness_sim_count(s->dst, "func=task.edit&outcome=http503");
    printf("cluster: %ld task.edit calls answered 503 around the kill: their messages went "
           "through the retry queues\n",
           refused);
    EXPECT(s, refused > 0, "no call was answered 503: nothing went through a retry queue");
    flow_pump(f, 2000, 450);

    long long t0 = harness_now_ms();
    harness_cluster_start_node(leader);
    printf("cluster: node %d back in the cluster after %lld ms; %zu of %d tasks on the target\n",
           leader, harness_now_ms() - t0, flow_change(f), f->created);
    flow_pump(f, 2000, 550);

    struct seen srv2, cli2;
    look(s, s->server, server_port, &srv2);
    look(s, s->client, client_port, &cli2);
    int stopped = second_node(&srv2, &cli2, leader);
    t0 = harness_now_ms();
    harness_cluster_stop_node(stopped);
    printf("cluster: node %d (server on node %d, client on node %d) stopped in %lld ms, for "
           "%d s\n",
           stopped, node_of(srv2.node), node_of(cli2.node), harness_now_ms() - t0, STOP_S);
    flow_pump(f, STOP_S * 1000LL, 900);
    t0 = harness_now_ms();
    harness_cluster_start_node(stopped);
    printf("cluster: node %d back in the cluster after %lld ms; %zu of %d tasks on the target\n",
           stopped, harness_now_ms() - t0, flow_change(f), f->created);
    flow_create(f, N_TASKS);

    /* Every change made, then everything counted once the queues are
     * empty: nothing is on its way that could still arrive twice. */
    long long deadline = harness_now_ms() + FLOW_DEADLINE_MS;
    while (f->n_changed < N_TASKS) {
        size_t arrived = flow_change(f);
        EXPECT(s, harness_now_ms() < deadline,
               "only %d of %d target tasks could be changed (%zu arrived) after %d ms",
               f->n_changed, N_TASKS, arrived, FLOW_DEADLINE_MS);
        if (f->n_changed < N_TASKS)
            poll(NULL, 0, PUMP_INTERVAL_MS);
    }
    struct harness_flow_count fc;
    flow_wait_forward(f, 0, N_TASKS, &fc);
    struct rev_wait rw = {.f = f, .to = N_TASKS};
    int met = 0;
    json_decref(harness_wait_tasks(s->src, s->src_dept, rev_done, &rw, FLOW_DEADLINE_MS, &met));
    EXPECT(s, met,
           "reverse: %zu of %d changes on the source, %zu not closed (first missing: task %lld)",
           rw.seen, N_TASKS, rw.status_off, rw.first_lost);
    wait_queues_empty(s, FLOW_DEADLINE_MS);
    flow_wait_forward(f, 0, N_TASKS, &fc);
    json_decref(harness_wait_tasks(s->src, s->src_dept, rev_done, &rw, FLOW_DEADLINE_MS, &met));

    struct seen srv3, cli3;
    look(s, s->server, server_port, &srv3);
    look(s, s->client, client_port, &cli3);
    printf("cluster: server: status broker.node %s -> %s, broker.reconnects %lld -> %lld; "
           "remotetask_broker_node_info{node=\"%s\"} -> {node=\"%s\"}, "
           "remotetask_broker_reconnects_total %g -> %g\n",
           srv0.node, srv3.node, srv0.reconnects, srv3.reconnects, srv0.m_node, srv3.m_node,
           srv0.m_reconnects, srv3.m_reconnects);
    printf("cluster: client: status broker.node %s -> %s, broker.reconnects %lld -> %lld; "
           "remotetask_broker_node_info{node=\"%s\"} -> {node=\"%s\"}, "
           "remotetask_broker_reconnects_total %g -> %g\n",
           cli0.node, cli3.node, cli0.reconnects, cli3.reconnects, cli0.m_node, cli3.m_node,
           cli0.m_reconnects, cli3.m_reconnects);
    quote_lines(s->server, "server", server_mark);
    quote_lines(s->client, "client", client_mark);
    struct naming server_naming, client_naming;
    naming_scan(s->server, server_mark, srv0.node, &server_naming);
    naming_scan(s->client, client_mark, cli0.node, &client_naming);
    size_t server_lost =
        harness_daemon_log_count_since(s->server, server_mark, "lost the broker connection");
    size_t client_lost =
        harness_daemon_log_count_since(s->client, client_mark, "lost the broker connection");
    printf("cluster: sent=%zu applied=%zu lost=%zu duplicated=%zu failover_s=%.3f\n", fc.sent,
           fc.applied, fc.lost, fc.duplicated, failover_s);
    printf("cluster: stale=%zu foreign=%zu; reverse: changed=%d seen=%zu lost=%zu "
           "duplicated=%zu not_closed=%zu\n",
           fc.stale, fc.foreign, f->n_changed, rw.seen, rw.lost, rw.duplicated, rw.status_off);
    /* Copies the broker confirmed into a delay queue and never brought
     * back: what lost tasks here before the appliers watched them. */
    printf("cluster: retry copies lost by the broker and sent again: server %lld, client %lld\n",
           srv3.resent, cli3.resent);
    EXPECT(s, fc.sent == N_TASKS && fc.applied == N_TASKS, "forward: sent %zu applied %zu", fc.sent,
           fc.applied);
    EXPECT(s, fc.lost == 0 && fc.duplicated == 0 && fc.stale == 0 && fc.foreign == 0,
           "forward: lost %zu duplicated %zu stale %zu foreign %zu", fc.lost, fc.duplicated,
           fc.stale, fc.foreign);
    EXPECT(s, rw.lost == 0 && rw.duplicated == 0 && rw.status_off == 0,
           "reverse: lost %zu (first task %lld) duplicated %zu (first task %lld) not closed %zu",
           rw.lost, rw.first_lost, rw.duplicated, rw.first_dup, rw.status_off);
    EXPECT(s, server_lost >= 1 && client_lost >= 1,
           "each daemon should have lost its node once at least: server %zu, client %zu",
           server_lost, client_lost);
    EXPECT(s, srv3.reconnects >= 1 && cli3.reconnects >= 1,
           "status broker.reconnects: server %lld, client %lld", srv3.reconnects, cli3.reconnects);
    EXPECT(s,
           srv3.m_reconnects == (double)srv3.reconnects &&
               cli3.m_reconnects == (double)cli3.reconnects,
           "remotetask_broker_reconnects_total (server %g, client %g) differs from status",
           srv3.m_reconnects, cli3.m_reconnects);
    EXPECT(s, strcmp(srv3.m_node, srv3.node) == 0 && strcmp(cli3.m_node, cli3.node) == 0,
           "remotetask_broker_node_info names another node than status");
    EXPECT(s, failover_s >= 0, "no failover measured");

    /* ---- 2. active and standby servers on one configuration ---- */
    char log[1024], sock[1024];
    snprintf(log, sizeof(log), "%s/server-standby.log", s->dir);
    snprintf(sock, sizeof(sock), "%s/server.sock", s->dir);
    standby = harness_daemon_new("standby", s->server_conf, sock, log);
    harness_daemon_start_standby(standby);
    struct find fs;
    log_find(standby, 0, "standing by", NULL, &fs);
    printf("cluster standby: %s\n", fs.line);
    long fwd_messages = -1, fwd_consumers = -1;
    EXPECT(s, queue_figures(1, fwd_queue, &fwd_messages, &fwd_consumers), "no queue %s", fwd_queue);
    char names[1024];
    int conns = user_connections(1, s->server_user, names, sizeof(names));
    int sockets = proc_sockets(harness_daemon_pid(standby));
    printf("cluster standby: %s has %ld consumer(s); the broker has %d connection(s) of \"%s\": "
           "%s; the standby (pid %d) holds %d socket(s)\n",
           fwd_queue, fwd_consumers, conns, s->server_user, names, harness_daemon_pid(standby),
           sockets);
    EXPECT(s, fwd_consumers == 1, "%s has %ld consumers with a standby, not 1", fwd_queue,
           fwd_consumers);
    EXPECT(s, conns == 1, "%d connections of the server's user with a standby, not 1", conns);
    EXPECT(s, sockets == 0, "the standby holds %d sockets", sockets);

    /* Creates slowed down on the target, so that some are in flight when
     * the active server dies. */
    json_decref(harness_sim_admin_ok(s->dst, "POST", "/faults",
                                     "{\"latency_ms\":[150,300],\"funcs\":[\"task.edit\"]}"));
    f->change_upto = N_TASKS; /* the standby's tasks stay as they are */
    flow_create(f, N_TASKS + N_STANDBY);
    flow_pump_until(f, N_TASKS + N_STANDBY / 4, FLOW_DEADLINE_MS);
    size_t standby_applies = harness_daemon_log_count(standby, "created target task");
    EXPECT(s, standby_applies == 0, "the standby applied %zu tasks while the active one lived",
           standby_applies);
    size_t standby_mark = harness_daemon_log_mark(standby);
    size_t before = flow_change(f);
    long long t_dead = wall_ms();
    harness_daemon_kill(s->server);
    struct find ft, fconn, fapply;
    long long at_take =
        log_wait(s, standby, standby_mark, "taking over", NULL, &ft, CONNECT_DEADLINE_MS);
    long long at_conn = log_wait(s, standby, standby_mark, "connected to the broker", NULL, &fconn,
                                 CONNECT_DEADLINE_MS);
    long long at_apply = log_wait(s, standby, standby_mark, "created target task",
                                  "found target task", &fapply, FLOW_DEADLINE_MS);
    printf("cluster standby: the active server killed with SIGKILL with %zu of %d tasks on the "
           "target\n",
           before, N_TASKS + N_STANDBY);
    printf("cluster standby:   %s\n", ft.line);
    printf("cluster standby:   %s\n", fconn.line);
    printf("cluster standby:   %s\n", fapply.line);
    struct harness_flow_count sc;
    flow_wait_forward(f, N_TASKS, N_TASKS + N_STANDBY, &sc);
    json_decref(harness_sim_admin_ok(s->dst, "POST", "/faults/reset", NULL));
    wait_queues_empty(s, FLOW_DEADLINE_MS);
    flow_wait_forward(f, N_TASKS, N_TASKS + N_STANDBY, &sc);
    struct harness_flow_count all;
    flow_wait_forward(f, 0, N_TASKS + N_STANDBY, &all);
    json_decref(harness_wait_tasks(s->src, s->src_dept, rev_done, &rw, FLOW_DEADLINE_MS, &met));
    size_t found =
        harness_daemon_log_count_since(standby, standby_mark, "of the interrupted create of task");
    size_t created_again = harness_daemon_log_count_since(
        standby, standby_mark, "no target task found for the interrupted create");
    double takeover_s = (double)(at_take - t_dead) / 1000.0;
    double connected_s = (double)(at_conn - t_dead) / 1000.0;
    double apply_s = (double)(at_apply - t_dead) / 1000.0;
    printf("cluster standby: sent=%d applied=%zu lost=%zu duplicated=%zu takeover_s=%.3f "
           "connected_s=%.3f first_apply_s=%.3f (2 heartbeats: %d s) interrupted_found=%zu "
           "interrupted_not_made=%zu\n",
           N_STANDBY, sc.applied, sc.lost, sc.duplicated, takeover_s, connected_s, apply_s,
           2 * HEARTBEAT_S, found, created_again);
    printf("cluster: all %d tasks: lost=%zu duplicated=%zu stale=%zu foreign=%zu; reverse "
           "still seen=%zu duplicated=%zu\n",
           N_TASKS + N_STANDBY, all.lost, all.duplicated, all.stale, all.foreign, rw.seen,
           rw.duplicated);
    EXPECT(s, sc.applied == N_STANDBY && sc.lost == 0 && sc.duplicated == 0 && sc.stale == 0,
           "standby: applied %zu lost %zu duplicated %zu stale %zu", sc.applied, sc.lost,
           sc.duplicated, sc.stale);
    EXPECT(s, all.lost == 0 && all.duplicated == 0 && all.stale == 0 && all.foreign == 0,
           "all tasks: lost %zu duplicated %zu stale %zu foreign %zu", all.lost, all.duplicated,
           all.stale, all.foreign);
    EXPECT(s, met && rw.duplicated == 0, "reverse after the takeover: seen %zu duplicated %zu",
           rw.seen, rw.duplicated);
    EXPECT(s, found >= 1,
           "the standby found no interrupted create again by its origin marker (%zu created "
           "after none was found)",
           created_again);

    harness_daemon_stop(s->client);
    harness_daemon_stop(standby);
    harness_daemon_check_log(s->client);
    harness_daemon_check_log(s->server);
    harness_daemon_check_log(standby);
    printf("cluster: the test took %lld s\n", (harness_now_ms() - test_t0) / 1000);

    /* Checked last, so that a run shows every figure first. */
    struct naming standby_naming;
    naming_scan(standby, 0, "", &standby_naming);
    printf("cluster: lines naming the node of the connection: server %zu of %zu wrong, client "
           "%zu of %zu wrong, standby %zu of %zu wrong\n",
           server_naming.wrong, server_naming.checked, client_naming.wrong, client_naming.checked,
           standby_naming.wrong, standby_naming.checked);
    printf("cluster: acks of an earlier connection refused by the broker (unknown delivery "
           "tag): server %zu, client %zu\n",
           server_naming.stale_acks, client_naming.stale_acks);
    if (server_naming.stale_acks || client_naming.stale_acks)
        fail_msg("a daemon acknowledged a delivery of its lost connection on the new one and the "
                 "broker closed the channel, failing that connection: %s",
                 server_naming.stale_acks ? server_naming.first_stale : client_naming.first_stale);
    if (server_naming.wrong || client_naming.wrong || standby_naming.wrong)
        fail_msg("a daemon's line about its broker connection names another node's URI than "
                 "the node it is about: %s",
                 server_naming.wrong   ? server_naming.first
                 : client_naming.wrong ? client_naming.first
                                       : standby_naming.first);
    s->keep = 0;
}

int main(void)
{
    log_init("it_cluster", LOG_LEVEL_WARNING, 0);
    /* The figures in order with the harness's lines on stderr. */
    setvbuf(stdout, NULL, _IOLBF, 0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_failover_and_standby, teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
