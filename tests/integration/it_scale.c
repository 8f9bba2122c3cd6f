/*
 * it_scale.c - one server side, 200 clients (issue 10, item 4).
 *
 * A real RabbitMQ node (scripts/test's private node), one target
 * BILLmanager emulator seeded with 200 departments, and one remotetaskd
 * process in the server role configured with 200 clients, each with its
 * own AMQP user and department: 200 x 14 queues of topology v2, declared
 * first by the test as the server's user (then again by the daemon when
 * it connects, which is quick for queues that exist: see the test). The
 * clients are played by the test (harness_clients.h): each publishes real
 * task messages as its own user and reads its own reverse queue as its own
 * user, as a client daemon would. Every API call is answered after 3 ms; max_inflight is 8,
 * prefetch 64, sync_interval a day (the cycles run when asked).
 *
 * 1. Every client publishes 3 tasks: all 600 are applied, each once and
 *    into its own client's department (the origin block of the target's
 *    note names client and source task).
 * 2. The reverse cycle over all clients: the daemon's resync command
 *    (what remotetaskctl resync sends once it has forgotten the published
 *    states; here nothing is forgotten) starts a state cycle of every
 *    client. The first cycle after the links publishes one state per
 *    linked task, each client reading exactly its own 3; then the target
 *    status of task 1 of every 10th client is changed, and the next cycle
 *    publishes exactly those 20 states (status 2) and nothing else.
 * 3. Fairness: client 0 publishes a backlog of 300 tasks; once the server
 *    has made 16 of its creates (its hands are full of the backlog), 20
 *    other clients publish one task each, every API call now taking
 *    20 ms. At most 2 x max_inflight = 16 of the backlog's creates may be
 *    logged by the emulator after the server took a small client's
 *    delivery (the forward applier's debug line "message <id>: seq ...",
 *    the server runs at debug level; both clocks are this host's wall
 *    clock) and before that delivery's create. Why that bound: when the
 *    small task arrives at most max_inflight calls are in flight, which
 *    may all be the backlog's; then round robin starts at most one backlog
 *    delivery per round of the clients with deliveries waiting, and the
 *    small task waits at most one round; of the calls started after it a
 *    few may finish first (at most max_inflight - 1 started, at most one
 *    per round the backlog's). That is max_inflight + 2 or so; 16 leaves
 *    room for the jitter of a loaded machine. An applier that started
 *    deliveries in the order they arrived would have the up to 64 backlog
 *    deliveries in its hands (prefetch) before the small one: up to 64
 *    backlog creates, 4 times the bound. Counted from the small client's
 *    publish instead, the broker's delivery and the loop turn in which
 *    the server reads it come on top (a turn that completes calls starts
 *    up to max_inflight more before the socket is read again): that
 *    figure is printed, not bounded. The backlog must still have 100
 *    or more creates to go after the last small task's create (else the
 *    run would show nothing). Then every client's tasks are counted again.
 *
 * It prints
 *   scale: clients=200 sent=N applied=N lost=0 duplicated=0 misplaced=0 ...
 * Times are printed, never asserted (speed belongs to bench/, whose
 * "scale" case measures 2, 50 and 200 clients).
 */
#include <ftw.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <jansson.h>

#include "codec.h"
#include "ctlproto.h"
#include "harness.h"
#include "harness_clients.h"
#include "harness_daemon.h"
#include "harness_rabbit.h"
#include "harness_sim.h"
#include "log.h"

#define SCALE_CLIENTS   200
#define SCALE_TASKS     3 /* per client, source tasks 1..3 */
#define SCALE_DEPT      1000
#define SCALE_INFLIGHT  8
#define SCALE_PREFETCH  64
#define SCALE_LATENCY   3   /* ms, every API call */
#define FAIR_BACKLOG    300 /* client 0's source tasks 101..400 */
#define FAIR_FIRST      101
#define FAIR_SMALL      20 /* clients 5, 15, ..., 195: one task each, source task 1001 */
#define FAIR_SMALL_TASK 1001
#define FAIR_LATENCY    20 /* ms, every API call during phase 2 */
#define FAIR_BOUND      (2 * SCALE_INFLIGHT)
#define FAIR_LEFT_MIN   100
#define REV_EVERY       10 /* clients 0, 10, ...: task 1's target closed */
#define MAX_TASK        FAIR_SMALL_TASK
/* Generous for a loaded 2-core machine with ASan; every wait ends as soon
 * as its condition holds. */
#define DEADLINE_MS 180000
#define POLL_MS     100

static struct harness_clients *clients;
static struct harness_sim *sim;
static struct harness_daemon *server;
static char *dir;
static int keep;

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    const char *keep_env = getenv("RT_KEEP_TMP");
    int kept = keep || (keep_env && *keep_env);
    harness_daemon_free(server);
    server = NULL;
    if (kept && !(keep_env && *keep_env)) {
        /* harness_sim_free keeps its directory only for RT_KEEP_TMP. */
        setenv("RT_KEEP_TMP", "1", 1);
        harness_sim_free(sim);
        unsetenv("RT_KEEP_TMP");
    } else {
        harness_sim_free(sim);
    }
    sim = NULL;
    harness_clients_free(clients);
    clients = NULL;
    if (dir && kept)
        fprintf(stderr, "it_scale: kept %s (server log, configuration, store)\n", dir);
    else if (dir)
        nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(dir);
    dir = NULL;
    keep = 0;
    return 0;
}

#define EXPECT(cond, ...)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            if (server)                                                                            \
                harness_daemon_print_log(server, 0);                                               \
            keep = 1;                                                                              \
            fail_msg(__VA_ARGS__);                                                                 \
        }                                                                                          \
    } while (0)

/* The small clients of phase 2, spread over the round robin's order. */
static size_t small_client(size_t k)
{
    return 5 + 10 * k;
}

static int is_small(size_t i)
{
    return i >= 5 && i % 10 == 5 && (i - 5) / 10 < FAIR_SMALL;
}

/* What each client should have on the target after phase 2. */
static size_t expected(size_t i)
{
    return SCALE_TASKS + (i == 0 ? FAIR_BACKLOG : 0) + (is_small(i) ? 1 : 0);
}

/* ---- the emulator's call log ---------------------------------------- */

/* A create of the forward applier: task.edit with sok=ok, no elid. */
static int is_create(json_t *call)
{
    json_t *p = json_object_get(call, "params");
    const char *elid = json_string_value(json_object_get(p, "elid"));
    const char *func = json_string_value(json_object_get(call, "func"));
    const char *outcome = json_string_value(json_object_get(call, "outcome"));
    return func && strcmp(func, "task.edit") == 0 && json_is_true(json_object_get(call, "write")) &&
           outcome && strcmp(outcome, "ok") == 0 && (!elid || !*elid);
}

/* The client whose department a call's params name, or -1. */
static long call_client(json_t *call)
{
    json_t *p = json_object_get(call, "params");
    const char *d = json_string_value(json_object_get(p, "department"));
    long dept = d ? atol(d) : 0;
    if (dept < SCALE_DEPT || dept >= SCALE_DEPT + SCALE_CLIENTS)
        return -1;
    return dept - SCALE_DEPT;
}

static void wait_calls(const char *query, long want)
{
    long long deadline = harness_now_ms() + DEADLINE_MS;
    long n;
    while ((n = harness_sim_count(sim, query)) < want) {
        EXPECT(harness_now_ms() < deadline, "only %ld of %ld calls (%s) within %d ms", n, want,
               query, DEADLINE_MS);
        poll(NULL, 0, POLL_MS);
    }
}

/* ---- the server's state cycles -------------------------------------- */

struct cycles {
    size_t clients_done; /* clients with a "done" line since the mark */
    size_t lines;        /* "done" lines since the mark */
    unsigned long views; /* summed over the lines */
    unsigned long published;
    unsigned long unchanged;
};

/* Reads the server's log since mark: which clients finished a state cycle
 * and what the cycles did. */
static void read_cycles(size_t mark, struct cycles *c)
{
    static const char needle[] = "state cycle of client \"";
    char *log = harness_daemon_log_since(server, mark, (size_t)16 * 1024 * 1024);
    unsigned char *done = calloc(SCALE_CLIENTS, 1);
    if (!done)
        fail_msg("out of memory");
    memset(c, 0, sizeof(*c));
    for (char *p = strstr(log, needle); p; p = strstr(p + 1, needle)) {
        char *id = p + sizeof(needle) - 1;
        char *q = strchr(id, '"');
        if (!q)
            break;
        long ms, rows;
        unsigned long views, published, unchanged;
        if (sscanf(q, "\" done in %ld ms: %ld rows, %lu views, %lu states published, %lu unchanged",
                   &ms, &rows, &views, &published, &unchanged) != 5)
            continue;
        c->lines++;
        c->views += views;
        c->published += published;
        c->unchanged += unchanged;
        for (size_t i = 0; i < SCALE_CLIENTS; i++) {
            if ((size_t)(q - id) == strlen(clients->c[i].id) &&
                strncmp(id, clients->c[i].id, (size_t)(q - id)) == 0) {
                if (!done[i]++)
                    c->clients_done++;
                break;
            }
        }
    }
    free(done);
    free(log);
}

static void wait_cycles(size_t mark, struct cycles *c)
{
    long long deadline = harness_now_ms() + DEADLINE_MS;
    for (;;) {
        read_cycles(mark, c);
        if (c->clients_done == SCALE_CLIENTS)
            return;
        EXPECT(harness_now_ms() < deadline, "%zu of %d clients finished a state cycle within %d ms",
               c->clients_done, SCALE_CLIENTS, DEADLINE_MS);
        poll(NULL, 0, POLL_MS);
    }
}

/* The daemon's resync command: a state cycle of every client now. */
static void kick_cycles(const char *socket)
{
    char err[CTLPROTO_ERR_MAX];
    json_t *resp = NULL, *req = json_pack("{s:s}", "cmd", "resync");
    rt_status st = ctlproto_request(socket, req, &resp, 10000, err, sizeof(err));
    json_decref(req);
    int ok = st == RT_OK && json_is_true(json_object_get(resp, "ok"));
    json_decref(resp);
    EXPECT(ok, "the server refused {\"cmd\":\"resync\"}: %s", st == RT_OK ? "not ok" : err);
}

/* The states each client read from its reverse queue. */
struct states {
    size_t total;
    size_t per_client[SCALE_CLIENTS];
    size_t task1_closed[SCALE_CLIENTS]; /* states of source task 1 with status 2 */
    size_t wrong;                       /* a state of a task the client never sent */
};

static void on_state(void *arg, size_t i, const struct codec_msg *m)
{
    struct states *s = arg;
    if (m->kind != CODEC_STATE)
        return;
    s->total++;
    s->per_client[i]++;
    long long t = m->task;
    int known = (t >= 1 && t <= SCALE_TASKS) ||
                (i == 0 && t >= FAIR_FIRST && t < FAIR_FIRST + FAIR_BACKLOG) ||
                (is_small(i) && t == FAIR_SMALL_TASK);
    if (!known)
        s->wrong++;
    if (t == 1 && m->state.status == 2)
        s->task1_closed[i]++;
}

static void drain_all(struct states *s)
{
    memset(s, 0, sizeof(*s));
    for (size_t i = 0; i < SCALE_CLIENTS; i++)
        harness_clients_drain_reverse(clients, i, on_state, s);
}

/* ---- the phases ---------------------------------------------------------- */

struct totals {
    size_t sent, applied, lost, dup, misplaced;
};

/* Counts what the target holds for every client against want(i) into *t;
 * fails the test, naming the phase, unless each client has exactly its
 * tasks, each once, in its own department. */
static void expect_applied(const char *phase, size_t (*want)(size_t), struct totals *t)
{
    struct harness_clients_count *cnt = calloc(SCALE_CLIENTS, sizeof(*cnt));
    assert_non_null(cnt);
    size_t sent = 0, applied = 0, lost = 0, dup = 0, misplaced = 0, short_clients = 0;
    size_t foreign = harness_clients_count(clients, sim, MAX_TASK, cnt);
    for (size_t i = 0; i < SCALE_CLIENTS; i++) {
        size_t w = want(i);
        sent += w;
        applied += cnt[i].applied;
        lost += cnt[i].applied < w ? w - cnt[i].applied : 0;
        dup += cnt[i].duplicated;
        misplaced += cnt[i].misplaced;
        short_clients += cnt[i].applied != w;
    }
    free(cnt);
    printf("%s: sent=%zu applied=%zu lost=%zu duplicated=%zu misplaced=%zu foreign=%zu, "
           "clients without exactly their tasks: %zu\n",
           phase, sent, applied, lost, dup, misplaced, foreign, short_clients);
    EXPECT(applied == sent && lost == 0 && dup == 0 && misplaced == 0 && foreign == 0 &&
               short_clients == 0,
           "%s: sent %zu, applied %zu, lost %zu, duplicated %zu, misplaced %zu, foreign %zu, "
           "%zu clients without exactly their tasks",
           phase, sent, applied, lost, dup, misplaced, foreign, short_clients);
    *t = (struct totals){sent, applied, lost, dup, misplaced};
}

static size_t phase1_want(size_t i)
{
    (void)i;
    return SCALE_TASKS;
}

/* 1. Every client publishes its tasks as its own user. */
static void phase_apply(void)
{
    long long t0 = harness_now_ms();
    harness_clients_publish_all(clients, 1, SCALE_TASKS, "scale task ");
    long long published_ms = harness_now_ms() - t0;
    wait_calls("func=task.edit&write=1&outcome=ok", SCALE_CLIENTS * SCALE_TASKS);
    printf("apply: %d clients x %d tasks published (a connection of each client's own user) "
           "in %lld ms, applied %lld ms after the first publish\n",
           SCALE_CLIENTS, SCALE_TASKS, published_ms, harness_now_ms() - t0);
    struct totals t;
    expect_applied("apply", phase1_want, &t);
}

/* 2. The reverse cycle over every client: every linked task once, then
 * only the changed ones. Returns the states of the first cycle in
 * *first, of the changed tasks in *closed_out. */
static void phase_reverse(const char *sock, size_t *first, size_t *closed_out, size_t *changed_out)
{
    struct states *st = calloc(1, sizeof(*st));
    assert_non_null(st);
    struct cycles cyc;
    size_t linked = (size_t)SCALE_CLIENTS * SCALE_TASKS;
    size_t mark = harness_daemon_log_mark(server);
    long long t0 = harness_now_ms();
    kick_cycles(sock);
    wait_cycles(mark, &cyc);
    long long first_ms = harness_now_ms() - t0;
    drain_all(st);
    size_t uneven = 0;
    for (size_t i = 0; i < SCALE_CLIENTS; i++)
        uneven += st->per_client[i] != SCALE_TASKS;
    printf("reverse: a cycle over %d clients' %zu new links: every client done %lld ms after "
           "the request: %lu views, %lu states published; read back by the clients: %zu "
           "states, %zu clients without one per task, %zu of unknown tasks\n",
           SCALE_CLIENTS, linked, first_ms, cyc.views, cyc.published, st->total, uneven, st->wrong);
    EXPECT(st->total == linked && cyc.published == linked && uneven == 0 && st->wrong == 0,
           "the first cycle after the links published %lu states and the clients read %zu, "
           "not one per linked task (%zu); %zu clients without one per task, %zu unknown",
           cyc.published, st->total, linked, uneven, st->wrong);
    *first = st->total;

    json_t *all = harness_sim_admin_ok(sim, "GET", "/tasks", NULL);
    size_t changed = 0;
    for (size_t i = 0; i < SCALE_CLIENTS; i += REV_EVERY) {
        long long dst = harness_clients_target(clients, i, json_object_get(all, "tasks"), 1);
        EXPECT(dst > 0, "client %s's task 1 has no target task", clients->c[i].id);
        char path[64];
        snprintf(path, sizeof(path), "/tasks/%lld", dst);
        json_decref(harness_sim_admin_ok(sim, "POST", path, "{\"status\": 2}"));
        changed++;
    }
    json_decref(all);
    mark = harness_daemon_log_mark(server);
    t0 = harness_now_ms();
    kick_cycles(sock);
    wait_cycles(mark, &cyc);
    long long second_ms = harness_now_ms() - t0;
    drain_all(st);
    size_t closed = 0, stray = 0;
    for (size_t i = 0; i < SCALE_CLIENTS; i++) {
        if (i % REV_EVERY == 0)
            closed += st->task1_closed[i] == 1 && st->per_client[i] == 1;
        else
            stray += st->per_client[i];
    }
    printf("reverse: %zu target tasks closed, then a cycle over %d clients: every client done "
           "%lld ms after the request: %lu views, %lu states published, %lu unchanged; read "
           "back: %zu states, %zu of them the closed tasks' status 2, %zu of other clients\n",
           changed, SCALE_CLIENTS, second_ms, cyc.views, cyc.published, cyc.unchanged, st->total,
           closed, stray);
    EXPECT(closed == changed && stray == 0 && st->total == changed && cyc.published == changed,
           "the cycle after %zu changes published %lu states; the clients read %zu (%zu of the "
           "changed tasks, %zu of others)",
           changed, cyc.published, st->total, closed, stray);
    *closed_out = closed;
    *changed_out = changed;
    free(st);
}

/* The wall-clock time in ms of a log line of the daemon
 * ("2026-01-02T03:04:05.678Z ..."), or -1. */
static long long line_ms(const char *line)
{
    struct tm tm;
    int ms = 0;
    memset(&tm, 0, sizeof(tm));
    if (sscanf(line, "%4d-%2d-%2dT%2d:%2d:%2d.%3dZ", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
               &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &ms) != 7)
        return -1;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return (long long)timegm(&tm) * 1000 + ms;
}

/* When the server took client i's delivery of source task task: the time
 * of its debug line "message <id>:<task>:1: seq 1 of task <task> of client
 * ..." in the log since mark, or -1. */
static long long received_ms(size_t mark, size_t i, long long task)
{
    char needle[160];
    snprintf(needle, sizeof(needle), "message %s:%lld:1: seq 1 of task %lld of client",
             clients->c[i].id, task, task);
    char *log = harness_daemon_log_since(server, mark, (size_t)64 * 1024 * 1024);
    char *at = strstr(log, needle);
    long long ms = -1;
    if (at) {
        while (at > log && at[-1] != '\n')
            at--;
        ms = line_ms(at);
    }
    free(log);
    return ms;
}

/* 3. A backlog of one client against one task of each of 20 others.
 * Returns the most backlog creates that completed between the server's
 * taking a small client's delivery and that delivery's create. */
static long phase_fair(void)
{
    char faults[128];
    snprintf(faults, sizeof(faults), "{\"latency_ms\": %d}", FAIR_LATENCY);
    json_decref(harness_sim_admin_ok(sim, "POST", "/faults", faults));
    /* Connected beforehand: a small client's publish is then one round
     * trip, not a handshake. */
    for (size_t k = 0; k < FAIR_SMALL; k++)
        harness_clients_connect(clients, small_client(k));
    json_decref(harness_sim_admin_ok(sim, "POST", "/calls/reset", NULL));
    size_t mark = harness_daemon_log_mark(server);
    harness_clients_publish(clients, 0, FAIR_FIRST, FAIR_BACKLOG, "backlog task ");
    /* The server's hands full of the backlog: max_inflight in flight and
     * the rest of prefetch waiting. */
    wait_calls("func=task.edit&write=1&outcome=ok", FAIR_BOUND);
    long marks[FAIR_SMALL];
    for (size_t k = 0; k < FAIR_SMALL; k++) {
        /* Every call logged from here on came after this client's task
         * was in its queue. */
        marks[k] = harness_sim_count(sim, "");
        harness_clients_publish(clients, small_client(k), FAIR_SMALL_TASK, 1, "small task ");
    }
    wait_calls("func=task.edit&write=1&outcome=ok", FAIR_BACKLOG + FAIR_SMALL);

    json_t *r = harness_sim_admin_ok(sim, "GET", "/calls?since=0", NULL);
    json_t *calls = json_object_get(r, "calls");
    EXPECT(json_is_array(calls), "the emulator's /calls gave no calls array");
    /* backlog_before[j]: the backlog's creates among the first j entries
     * of the log, which is in the order of n; backlog_ms: when each of
     * them was logged (after the task was stored). */
    size_t ncalls = json_array_size(calls);
    long *backlog_before = calloc(ncalls + 1, sizeof(long));
    long long *backlog_ms = calloc(ncalls + 1, sizeof(long long));
    assert_non_null(backlog_before);
    assert_non_null(backlog_ms);
    size_t nbacklog = 0;
    long small_at[FAIR_SMALL];
    for (size_t k = 0; k < FAIR_SMALL; k++)
        small_at[k] = -1;
    long long prev_n = -1;
    for (size_t j = 0; j < ncalls; j++) {
        json_t *call = json_array_get(calls, j);
        long long n = json_integer_value(json_object_get(call, "n"));
        EXPECT(n > prev_n, "the call log is not in the order of n at entry %zu", j);
        prev_n = n;
        long c = is_create(call) ? call_client(call) : -1;
        backlog_before[j + 1] = backlog_before[j] + (c == 0);
        if (c == 0)
            backlog_ms[nbacklog++] =
                (long long)(json_real_value(json_object_get(call, "ts")) * 1000.0);
        for (size_t k = 0; c > 0 && k < FAIR_SMALL; k++)
            if ((size_t)c == small_client(k) && small_at[k] < 0)
                small_at[k] = (long)j;
    }
    long worst = 0, worst_published = 0, last_at = 0;
    size_t worst_k = 0;
    for (size_t k = 0; k < FAIR_SMALL; k++) {
        const char *id = clients->c[small_client(k)].id;
        EXPECT(small_at[k] >= 0, "the create of client %s's task is not in the call log", id);
        EXPECT(marks[k] <= small_at[k], "client %s's task was created before it was published", id);
        long long got = received_ms(mark, small_client(k), FAIR_SMALL_TASK);
        EXPECT(got > 0, "the server's log does not say when it took client %s's task %d", id,
               FAIR_SMALL_TASK);
        /* The backlog's creates logged before this client's create and
         * after the server took its delivery. */
        long after_taken = 0;
        for (long b = 0; b < backlog_before[small_at[k]]; b++)
            after_taken += backlog_ms[b] > got;
        long after_published = backlog_before[small_at[k]] - backlog_before[marks[k]];
        if (after_taken > worst) {
            worst = after_taken;
            worst_k = k;
        }
        if (after_published > worst_published)
            worst_published = after_published;
        if (small_at[k] > last_at)
            last_at = small_at[k];
        printf("fair: client %s (number %zu in the round robin): published after %ld backlog "
               "creates; %ld more came between its publish and its create, %ld between the "
               "server's taking it and its create\n",
               id, small_client(k), backlog_before[marks[k]], after_published, after_taken);
    }
    long left = FAIR_BACKLOG - backlog_before[last_at];
    json_decref(r);
    free(backlog_before);
    free(backlog_ms);
    printf("fair: backlog of %d, %d small clients, max_inflight %d, prefetch %d, %d ms per call: "
           "at most %ld backlog creates between the server's taking a small client's task and "
           "its create (client %s; bound %d), at most %ld from its publish (the broker's "
           "delivery and the server's loop turn included), %ld backlog creates still to go "
           "after the last small one\n",
           FAIR_BACKLOG, FAIR_SMALL, SCALE_INFLIGHT, SCALE_PREFETCH, FAIR_LATENCY, worst,
           clients->c[small_client(worst_k)].id, FAIR_BOUND, worst_published, left);
    EXPECT(worst <= FAIR_BOUND,
           "client %s's task waited behind %ld of client %s's backlog creates after the server "
           "took it: more than 2 x max_inflight = %d (the applier does not take turns between "
           "clients)",
           clients->c[small_client(worst_k)].id, worst, clients->c[0].id, FAIR_BOUND);
    EXPECT(left >= FAIR_LEFT_MIN,
           "the backlog had only %ld creates to go after the last small client's create: it "
           "was nearly done before the small clients published, so this run shows nothing",
           left);
    return worst;
}

/* ---- the test ------------------------------------------------------------ */

static void test_two_hundred_clients(void **state)
{
    (void)state;
    long long t_start = harness_now_ms();
    dir = harness_tmpdir("itscale");
    clients = harness_clients_new("itsc", SCALE_CLIENTS, SCALE_DEPT, &clients);
    char *seed = harness_clients_seed(clients);
    sim = harness_sim_start(seed, NULL);
    free(seed);
    char faults[128];
    snprintf(faults, sizeof(faults), "{\"latency_ms\": %d}", SCALE_LATENCY);
    json_decref(harness_sim_admin_ok(sim, "POST", "/faults", faults));

    char conf[1024], state_dir[1024], sock[1024], log[1024];
    snprintf(conf, sizeof(conf), "%s/server.conf", dir);
    snprintf(state_dir, sizeof(state_dir), "%s/state", dir);
    snprintf(sock, sizeof(sock), "%s/server.sock", dir);
    snprintf(log, sizeof(log), "%s/server.log", dir);
    struct harness_clients_server o = {
        .path = conf,
        .dir = dir,
        .state_dir = state_dir,
        .socket = sock,
        .url = harness_sim_url(sim),
        .max_inflight = SCALE_INFLIGHT,
        .prefetch = SCALE_PREFETCH,
        .sync_interval = 86400,
        /* The forward applier logs when it takes a delivery at debug level:
         * phase 3 measures from there. */
        .log_level = "debug",
    };
    harness_clients_server_conf(clients, &o);
    /* The topology first, as the server daemon does on every connect. A
     * daemon's loop waits for its whole declare (one RPC per queue,
     * exchange and binding: tens of seconds for 200 clients' new queues on
     * a loaded node), during which its control socket cannot answer the
     * harness's ping; declaring what exists is much faster. */
    long long declare_ms = harness_clients_declare(clients);
    server = harness_daemon_new("server", conf, sock, log);
    size_t mark = harness_daemon_log_mark(server);
    long long t0 = harness_now_ms();
    harness_daemon_start(server);
    struct cycles cyc;
    wait_cycles(mark, &cyc);
    printf("scale: %d clients: users and emulator ready in %lld ms, %d queues declared in %lld "
           "ms; the server declared them again and finished a state cycle of every client %lld "
           "ms after it started\n",
           SCALE_CLIENTS, t0 - t_start - declare_ms, SCALE_CLIENTS * 14, declare_ms,
           harness_now_ms() - t0);

    size_t first_states, closed, changed;
    struct totals t;
    phase_apply();
    phase_reverse(sock, &first_states, &closed, &changed);
    long worst = phase_fair();
    expect_applied("scale", expected, &t);

    struct harness_proc pr;
    int have_proc = harness_daemon_proc(server, &pr) == 0;
    harness_daemon_stop(server);
    harness_daemon_check_log(server);
    printf("scale: clients=%d sent=%zu applied=%zu lost=%zu duplicated=%zu misplaced=%zu "
           "fair_max_backlog_calls=%ld bound=%d states_first=%zu states_changed=%zu/%zu "
           "server_hwm_kb=%ld took_s=%lld\n",
           SCALE_CLIENTS, t.sent, t.applied, t.lost, t.dup, t.misplaced, worst, FAIR_BOUND,
           first_states, closed, changed, have_proc ? pr.hwm_kb : -1L,
           (harness_now_ms() - t_start) / 1000);
}

int main(void)
{
    /* The clients' connections would log a line each. */
    log_init("it_scale", LOG_LEVEL_WARNING, 0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_two_hundred_clients, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
