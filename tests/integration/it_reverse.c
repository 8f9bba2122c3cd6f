/*
 * it_reverse.c - the reverse path end to end (issue 4, item 4).
 *
 * Each test builds a scenario (tests/integration/harness_daemon.h): the
 * private RabbitMQ node, two BILLmanager emulators (the source and the
 * target) and two remotetaskd processes. The server's sync_interval is set
 * to a few seconds (3600 where a test shows that checkevent does not wait
 * for it), the client maps the remote staff member 21 (bob) to its local
 * staff member 1 (alice) and checks the server's AMQP login. Tasks are
 * forwarded first (the forward path, tested by it_forward.c, makes the
 * links); then the test changes target tasks as staff would (admin POST
 * /tasks/ID) and waits until the source tasks show it, or changes source
 * tasks and waits for the target.
 *
 * Waits are conditions with deadlines, never fixed sleeps, except where a
 * test must show that nothing happens during a quiet period (no echo, no
 * second copy of a note): that period is then a number of sync and poll
 * intervals, which is what "nothing more will come" means for this design.
 */
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "billmgr.h"
#include "broker.h"
#include "buf.h"
#include "codec.h"
#include "config.h"
#include "config_opts.h"
#include "fp.h"
#include "harness.h"
#include "harness_daemon.h"
#include "harness_rabbit.h"
#include "harness_sim.h"
#include "notes.h"
#include "statepub.h"
#include "store.h"

/* Deadlines for "it arrived": generous for a loaded 2-core machine with
 * ASan; the waits end as soon as the condition holds. */
#define FORWARD_DEADLINE_MS 60000
#define LONG_DEADLINE_MS    90000

/* The remote staff member the client maps (bob, 21 -> alice, 1), and the
 * one it does not map (alice, 1 on the target). */
#define MAPPED_REMOTE   HARNESS_SIM_STAFF_B
#define MAPPED_LOCAL    HARNESS_SIM_STAFF_A
#define UNMAPPED_REMOTE HARNESS_SIM_STAFF_A
#define UNMAPPED_NAME   "alice"

static struct harness_scenario *current;

static int teardown(void **state)
{
    (void)state;
    harness_rabbit_ensure_up();
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

/* ---- JSON and emulator helpers --------------------------------------- */

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

/* A task's performer id, or -1 when it has none (null). */
static long long jperformer(const json_t *t)
{
    const json_t *v = json_object_get(t, "performer");
    if (!v || json_is_null(v))
        return -1;
    return jint(t, "performer");
}

static json_t *task_by_id(json_t *tasks, long long id)
{
    size_t i;
    json_t *t;
    json_array_foreach(tasks, i, t)
    {
        if (jint(t, "id") == id)
            return t;
    }
    return NULL;
}

static size_t count_occurrences(const char *hay, const char *needle)
{
    size_t n = 0, len = strlen(needle);
    for (const char *p = strstr(hay, needle); p; p = strstr(p + len, needle))
        n++;
    return n;
}

static long long sim_create(struct harness_sim *sim, json_t *fields)
{
    char *body = json_dumps(fields, JSON_COMPACT);
    json_decref(fields);
    assert_non_null(body);
    json_t *r = harness_sim_admin_ok(sim, "POST", "/tasks", body);
    free(body);
    long long id = jint(r, "id");
    json_decref(r);
    assert_true(id > 0);
    return id;
}

/* Changes a task as staff would (admin POST /tasks/ID); fields is stolen.
 * Returns the task as it is now (new reference). */
static json_t *sim_change(struct harness_sim *sim, long long id, json_t *fields)
{
    char path[64];
    char *body = json_dumps(fields, JSON_COMPACT);
    json_decref(fields);
    assert_non_null(body);
    snprintf(path, sizeof(path), "/tasks/%lld", id);
    json_t *t = harness_sim_admin_ok(sim, "POST", path, body);
    free(body);
    return t;
}

static json_t *sim_task(struct harness_sim *sim, long long id)
{
    char path[64];
    snprintf(path, sizeof(path), "/tasks/%lld", id);
    return harness_sim_admin_ok(sim, "GET", path, NULL);
}

/* Appends a line to a task's note as staff writing in the UI would: the
 * note becomes old + "\n" + text. */
static void sim_append_note(struct harness_sim *sim, long long id, const char *text)
{
    json_t *t = sim_task(sim, id);
    const char *old = jstr(t, "note");
    size_t n = strlen(old) + strlen(text) + 2;
    char *note = malloc(n);
    assert_non_null(note);
    snprintf(note, n, "%s%s%s", old, *old ? "\n" : "", text);
    json_decref(t);
    json_decref(sim_change(sim, id, json_pack("{s:s}", "note", note)));
    free(note);
}

/* The number of successful writes (task.edit with sok) to task id in the
 * emulator's call log after entry number since. */
static long writes_to(struct harness_sim *sim, long long since, long long id)
{
    char path[64];
    snprintf(path, sizeof(path), "/calls?since=%lld", since);
    json_t *r = harness_sim_admin_ok(sim, "GET", path, NULL);
    json_t *calls = json_object_get(r, "calls");
    long n = 0;
    size_t i;
    json_t *c;
    json_array_foreach(calls, i, c)
    {
        if (strcmp(jstr(c, "func"), "task.edit") != 0 || !json_is_true(json_object_get(c, "write")))
            continue;
        if (strcmp(jstr(c, "outcome"), "ok") != 0)
            continue;
        if (jint(json_object_get(c, "params"), "elid") == id)
            n++;
    }
    json_decref(r);
    return n;
}

/* The number of the newest entry of the emulator's call log (0 if none). */
static long long last_call(struct harness_sim *sim)
{
    json_t *r = harness_sim_admin_ok(sim, "GET", "/calls?since=0", NULL);
    json_t *calls = json_object_get(r, "calls");
    long long n = 0;
    size_t i;
    json_t *c;
    json_array_foreach(calls, i, c)
    {
        if (jint(c, "n") > n)
            n = jint(c, "n");
    }
    json_decref(r);
    return n;
}

/* ---- the scenario -------------------------------------------------------- */

/* A scenario whose server cycles every sync_interval seconds and whose
 * client maps bob (21) to alice (1); the harness's client checks the
 * server's login (server_user). */
static struct harness_scenario *rev_scenario(const char *tag, int sync_interval, int poll_interval)
{
    struct harness_scenario_opts o = {.poll_interval = poll_interval};
    struct harness_scenario *s = harness_scenario_new(tag, &o, &current);
    char repl[512];
    snprintf(repl, sizeof(repl), "sync_interval = %d;", sync_interval);
    harness_config_replace(s->server_conf, "sync_interval = 300;", repl);
    snprintf(repl, sizeof(repl),
             "  performers = ( { remote = %d; local = %d; } );\n"
             "  departments = (",
             MAPPED_REMOTE, MAPPED_LOCAL);
    harness_config_replace(s->client_conf, "  departments = (", repl);
    return s;
}

/* The source task a target note names as its origin for client, or 0. */
static long long note_origin(const char *note, const char *client)
{
    char prefix[160], origin[NOTES_ORIGIN_MAX + 1];
    snprintf(prefix, sizeof(prefix), "--- remotetask: from client %s, task ", client);
    const char *p = strstr(note, prefix);
    if (!p)
        return 0;
    long long task = strtoll(p + strlen(prefix), NULL, 10);
    notes_origin_forward(origin, sizeof(origin), client, task);
    return task > 0 && notes_has_origin(note, origin) ? task : 0;
}

struct link_wait {
    const char *client;
    const long long *src;
    long long *dst;
    size_t n;
};

static int links_done(json_t *dst, void *arg)
{
    struct link_wait *w = arg;
    size_t found = 0;
    for (size_t k = 0; k < w->n; k++) {
        w->dst[k] = 0;
        size_t i;
        json_t *t;
        json_array_foreach(dst, i, t)
        {
            if (note_origin(jstr(t, "note"), w->client) == w->src[k]) {
                w->dst[k] = jint(t, "id");
                found++;
                break;
            }
        }
    }
    return found == w->n;
}

/* Creates n tasks on the source (note "native <i>"), forwards them (events
 * recorded as taskevent does, the client woken) and waits until each has
 * its target task: src[i] -> dst[i]. */
static void link_tasks(struct harness_scenario *s, size_t n, long long *src, long long *dst)
{
    int64_t ids[16];
    assert_true(n <= 16);
    for (size_t i = 0; i < n; i++) {
        char name[64], note[64];
        snprintf(name, sizeof(name), "reverse task %zu", i);
        snprintf(note, sizeof(note), "native %zu", i);
        src[i] = sim_create(s->src, json_pack("{s:i,s:s,s:s,s:s}", "department", (int)s->src_dept,
                                              "name", name, "type", "manual", "note", note));
        ids[i] = src[i];
    }
    harness_record_event_list(s->client_state, s->client_id, ids, n);
    harness_daemon_wake(s->client, 0);
    struct link_wait w = {.client = s->client_id, .src = src, .dst = dst, .n = n};
    int met = 0;
    json_decref(harness_wait_tasks(s->dst, s->dst_dept, links_done, &w, FORWARD_DEADLINE_MS, &met));
    EXPECT(s, met, "the %zu source tasks were not forwarded within %d ms", n, FORWARD_DEADLINE_MS);
}

/* What a test expects of one task: status (-1 = any), performer (-2 =
 * any, -1 = none), a text its note holds (NULL = any) and one it must not
 * hold (NULL = none). */
struct want {
    long long id;
    int status;
    long long performer;
    const char *note_has;
    const char *note_lacks;
};

struct want_set {
    const struct want *w;
    size_t n;
    char why[512];
};

static int want_one(const struct want *w, json_t *tasks, char *why, size_t len)
{
    json_t *t = task_by_id(tasks, w->id);
    if (!t) {
        snprintf(why, len, "task %lld is gone", w->id);
        return 0;
    }
    if (w->status >= 0 && jint(t, "status") != w->status) {
        snprintf(why, len, "task %lld has status %lld, not %d", w->id, jint(t, "status"),
                 w->status);
        return 0;
    }
    if (w->performer != -2 && jperformer(t) != w->performer) {
        snprintf(why, len, "task %lld has performer %lld, not %lld (-1 = none)", w->id,
                 jperformer(t), w->performer);
        return 0;
    }
    if (w->note_has && !strstr(jstr(t, "note"), w->note_has)) {
        snprintf(why, len, "task %lld's note lacks \"%s\": \"%s\"", w->id, w->note_has,
                 jstr(t, "note"));
        return 0;
    }
    if (w->note_lacks && strstr(jstr(t, "note"), w->note_lacks)) {
        snprintf(why, len, "task %lld's note holds \"%s\": \"%s\"", w->id, w->note_lacks,
                 jstr(t, "note"));
        return 0;
    }
    return 1;
}

static int wants_done(json_t *tasks, void *arg)
{
    struct want_set *ws = arg;
    for (size_t i = 0; i < ws->n; i++)
        if (!want_one(&ws->w[i], tasks, ws->why, sizeof(ws->why)))
            return 0;
    return 1;
}

/* Waits until every task of w on sim (department dept) is as wanted;
 * returns how long it took, or fails the test with the first difference. */
static long long wait_wants(struct harness_scenario *s, struct harness_sim *sim, long dept,
                            const struct want *w, size_t n, long long timeout_ms, const char *what)
{
    struct want_set ws = {.w = w, .n = n};
    long long t0 = harness_now_ms();
    int met = 0;
    json_decref(harness_wait_tasks(sim, dept, wants_done, &ws, timeout_ms, &met));
    long long took = harness_now_ms() - t0;
    EXPECT(s, met, "%s: not there within %lld ms: %s", what, timeout_ms, ws.why);
    return took;
}

/* Waits until the forward and reverse queues of the scenario's client hold
 * no message, ready or unacknowledged. */
static void wait_queues_empty(struct harness_scenario *s, long long timeout_ms)
{
    char names[2][BROKER_NAME_MAX];
    broker_queue_name(names[0], sizeof(names[0]), BROKER_FORWARD, s->client_id);
    broker_queue_name(names[1], sizeof(names[1]), BROKER_REVERSE, s->client_id);
    long long deadline = harness_now_ms() + timeout_ms;
    for (int i = 0; i < 2; i++) {
        struct harness_queue q;
        for (;;) {
            EXPECT(s, harness_rabbit_queue(names[i], &q), "the queue %s does not exist", names[i]);
            if (q.messages == 0)
                break;
            EXPECT(s, harness_now_ms() < deadline, "the queue %s still holds %ld messages",
                   names[i], q.messages);
            poll(NULL, 0, 200);
        }
    }
}

/* A quiet period: nothing is done for ms milliseconds, so that whatever
 * the daemons would still do (a cycle, a reconciliation, a redelivery)
 * has the time to happen before the test counts. */
static void quiet(long long ms)
{
    long long end = harness_now_ms() + ms;
    long long left;
    while ((left = end - harness_now_ms()) > 0)
        poll(NULL, 0, (int)(left > 1000 ? 1000 : left));
}

static void start_both(struct harness_scenario *s)
{
    harness_daemon_start(s->server);
    harness_daemon_start(s->client);
}

/* ---- closed, in work, a new performer ------------------------------------ */

#define STATE_INTERVAL 3

static void test_state_back(void **state)
{
    (void)state;
    struct harness_scenario *s = rev_scenario("itr-state", STATE_INTERVAL, 5);
    start_both(s);
    long long src[4], dst[4];
    link_tasks(s, 4, src, dst);

    /* Staff on the target: close one, take one in work with a mapped
     * performer, give one an unmapped performer; the last one is left
     * alone and must stay as it is (no block, no change). */
    json_decref(sim_change(s->dst, dst[0], json_pack("{s:i}", "status", 2)));
    json_decref(sim_change(s->dst, dst[1],
                           json_pack("{s:i,s:i}", "status", 1, "performer", MAPPED_REMOTE)));
    json_decref(sim_change(s->dst, dst[2], json_pack("{s:i}", "performer", UNMAPPED_REMOTE)));
    long long changed_at = harness_now_ms();
    const struct want w[] = {
        {src[0], 2, -1, NULL, "Performer on the remote side"},
        {src[1], 1, MAPPED_LOCAL, NULL, "Performer on the remote side"},
        {src[2], 0, -1, "Performer on the remote side: " UNMAPPED_NAME, NULL},
        {src[3], 0, -1, "native 3", "--- remotetask:"},
    };
    long long deadline = 3LL * STATE_INTERVAL * 1000;
    wait_wants(s, s->src, s->src_dept, w, 4, deadline, "closed / in work / performer");
    long long took = harness_now_ms() - changed_at;
    printf("reverse state: closed, in work + mapped performer, unmapped performer on the source "
           "%lld ms after the change (sync_interval %d s)\n",
           took, STATE_INTERVAL);

    /* The unmapped performer is never guessed: the source task still has
     * no performer, and the line names the remote one exactly once. */
    json_t *t = sim_task(s->src, src[2]);
    EXPECT(s, jperformer(t) == -1, "source task %lld got performer %lld for an unmapped one",
           src[2], jperformer(t));
    EXPECT(s,
           count_occurrences(jstr(t, "note"), "Performer on the remote side: " UNMAPPED_NAME) == 1,
           "the performer line is not in source task %lld's note exactly once: \"%s\"", src[2],
           jstr(t, "note"));
    json_decref(t);

    /* The unmapped performer leaves: the source note says so; the mapped
     * one moves to the unmapped one: the local performer we set is taken
     * away (never replaced by a guess) and the name is written. */
    json_decref(sim_change(s->dst, dst[2], json_pack("{s:s}", "performer", "")));
    json_decref(sim_change(s->dst, dst[1], json_pack("{s:i}", "performer", UNMAPPED_REMOTE)));
    const struct want w2[] = {
        {src[2], 0, -1, "No performer on the remote side", NULL},
        {src[1], 1, -2, "Performer on the remote side: " UNMAPPED_NAME, NULL},
    };
    wait_wants(s, s->src, s->src_dept, w2, 2, deadline, "performer gone / changed");
    t = sim_task(s->src, src[1]);
    printf("reverse state: source task %lld performer after the remote one became unmapped: "
           "%lld (-1 = none)\n",
           src[1], jperformer(t));
    EXPECT(s, jperformer(t) == -1 || jperformer(t) == MAPPED_LOCAL,
           "source task %lld got performer %lld, a guess", src[1], jperformer(t));
    json_decref(t);
    harness_scenario_stop(s);
}

/* ---- no lost update while the client is down ----------------------------- */

/* Waits until the client's store records the confirmation of task
 * message seq (or a newer one) of source task task. */
static void wait_fwd_confirmed(struct harness_scenario *s, long long task, uint64_t seq)
{
    char err[512];
    long long deadline = harness_now_ms() + LONG_DEADLINE_MS;
    for (;;) {
        struct store_fwd fwd;
        struct store *st = store_open(s->client_state, err, sizeof(err));
        EXPECT(s, st, "cannot open the client's store: %s", err);
        rt_status rc = store_fwd_get(st, s->client_id, task, &fwd);
        store_free(st);
        if (rc == RT_OK && fwd.fp_seq >= seq)
            return;
        EXPECT(s, harness_now_ms() < deadline,
               "the client did not confirm task message %llu of task %lld within %d ms",
               (unsigned long long)seq, task, LONG_DEADLINE_MS);
        poll(NULL, 0, 200);
    }
}

static void state_confirm(void *arg, uint64_t tag, enum broker_fate fate)
{
    int *acked = arg;
    (void)tag;
    *acked = fate == BROKER_ACKED ? 1 : -1;
}

static void state_delivery(void *arg, const struct broker_delivery *d)
{
    (void)arg;
    (void)d;
}

/* Publishes a state of source task task to the client's reverse queue as
 * the server's AMQP user would, and waits for the broker's ack. */
static void publish_state(struct harness_scenario *s, long long task, uint64_t seq, int status,
                          uint64_t fwd_seq)
{
    struct broker_opts opts;
    struct codec_msg m;
    struct buf body;
    char err[512], mid[128];
    uint64_t tag;
    int acked = 0;

    codec_msg_init(&m, CODEC_STATE);
    m.client = s->client_id;
    m.task = task;
    m.seq = seq;
    m.ts = harness_now_ms();
    m.state.status = status;
    m.state.fwd_seq = fwd_seq;
    buf_init(&body, CODEC_MAX_BODY);
    EXPECT(s, codec_encode(&m, &body, err, sizeof(err)) == 0, "codec_encode: %s", err);
    harness_rabbit_opts(&opts, s->server_user, s->amqp_password);
    opts.on_confirm = state_confirm;
    opts.on_delivery = state_delivery;
    opts.cb_arg = &acked;
    struct broker *b = broker_new(&opts, err, sizeof(err));
    EXPECT(s, b, "broker_new: %s", err);
    EXPECT(s, broker_connect(b) == RT_OK, "cannot connect as %s: %s", s->server_user,
           broker_strerror(b));
    snprintf(mid, sizeof(mid), "%s:%lld:r%llu", s->client_id, task, (unsigned long long)seq);
    struct broker_props props = {.message_id = mid};
    EXPECT(s,
           broker_publish(b, BROKER_EXCHANGE_REVERSE, s->client_id, &props, body.data, body.len,
                          &tag) == RT_OK,
           "broker_publish: %s", broker_strerror(b));
    long long deadline = harness_now_ms() + LONG_DEADLINE_MS;
    while (!acked) {
        EXPECT(s, harness_now_ms() < deadline, "no confirm from the broker");
        if (!broker_wants_read_now(b)) {
            struct pollfd p = {.fd = broker_fd(b), .events = POLLIN};
            poll(&p, 1, 100);
        }
        EXPECT(s, broker_process(b) == RT_OK, "broker connection lost: %s", broker_strerror(b));
    }
    broker_free(b);
    buf_release(&body);
    EXPECT(s, acked == 1, "the broker did not take state %s", mid);
}

/* Waits until the client's queue of that kind holds no message, ready or
 * unacknowledged. */
static void wait_queue_empty(struct harness_scenario *s, enum broker_dir kind)
{
    char name[BROKER_NAME_MAX];
    broker_queue_name(name, sizeof(name), kind, s->client_id);
    long long deadline = harness_now_ms() + LONG_DEADLINE_MS;
    for (;;) {
        struct harness_queue q;
        EXPECT(s, harness_rabbit_queue(name, &q), "the queue %s does not exist", name);
        if (q.messages == 0)
            return;
        EXPECT(s, harness_now_ms() < deadline, "the queue %s still holds %ld messages", name,
               q.messages);
        poll(NULL, 0, 200);
    }
}

/* The operator closes source tasks while the client daemon is down (their
 * events recorded as taskevent does); meanwhile target staff give the
 * same tasks a performer, so the server publishes their state while they are
 * still open on the target, and close another task whose source is left
 * alone. When the client starts, it has both a stale state ("open", read
 * before the server applied the close) and its own close to forward: the
 * source must stay closed and the target become closed; the task closed
 * on the target closes on the source. */
static void test_client_down_close(void **state)
{
    (void)state;
    struct harness_scenario *s = rev_scenario("itr-down", STATE_INTERVAL, 5);
    start_both(s);
    long long src[4], dst[4];
    link_tasks(s, 4, src, dst);

    /* Every first state is applied before the client stops: checkevent
     * returns once the server's cycle was published and applied. */
    const char *const args[] = {"--command", "checkevent", "--timeout", "60", NULL};
    char *out = NULL;
    int rc = harness_ctl(s->client_conf, args, NULL, &out);
    EXPECT(s, rc == 0, "checkevent exited %d: %s", rc, out ? out : "(no output)");
    free(out);

    harness_daemon_stop(s->client);
    int64_t closed[2] = {src[0], src[1]};
    for (int i = 0; i < 2; i++)
        json_decref(sim_change(s->src, src[i], json_pack("{s:i}", "status", 2)));
    harness_record_event_list(s->client_state, s->client_id, closed, 2);
    /* A performer changes the list row (a note alone may leave `updated`
     * in the same second, which the cycle could not tell from before). */
    for (int i = 0; i < 2; i++)
        json_decref(sim_change(s->dst, dst[i], json_pack("{s:i}", "performer", UNMAPPED_REMOTE)));
    json_decref(sim_change(s->dst, dst[2], json_pack("{s:i}", "status", 2)));

    /* The server's cycle publishes the three states while the client is
     * down: they wait in its reverse queue. */
    char rq[BROKER_NAME_MAX];
    broker_queue_name(rq, sizeof(rq), BROKER_REVERSE, s->client_id);
    long long deadline = harness_now_ms() + LONG_DEADLINE_MS;
    for (;;) {
        struct harness_queue q;
        EXPECT(s, harness_rabbit_queue(rq, &q), "the queue %s does not exist", rq);
        if (q.messages >= 3)
            break;
        EXPECT(s, harness_now_ms() < deadline,
               "the server published %ld states of the 3 changed tasks within %d ms", q.messages,
               LONG_DEADLINE_MS);
        poll(NULL, 0, 200);
    }

    harness_daemon_start(s->client);
    /* The performer line on the source shows the stale states were
     * applied. */
    const struct want ws[] = {
        {src[0], 2, -2, "Performer on the remote side: " UNMAPPED_NAME, NULL},
        {src[1], 2, -2, "Performer on the remote side: " UNMAPPED_NAME, NULL},
        {src[2], 2, -2, NULL, "--- remotetask:"},
        {src[3], 0, -2, "native 3", "--- remotetask:"},
    };
    const struct want wt[] = {
        {dst[0], 2, -2, NULL, NULL},
        {dst[1], 2, -2, NULL, NULL},
        {dst[2], 2, -2, NULL, NULL},
        {dst[3], 0, -2, NULL, NULL},
    };
    wait_wants(s, s->src, s->src_dept, ws, 4, LONG_DEADLINE_MS, "the source after the restart");
    wait_wants(s, s->dst, s->dst_dept, wt, 4, LONG_DEADLINE_MS, "the target after the restart");

    /* And it stays so: a few cycles and reconciliations later, nothing was
     * undone on either side. */
    wait_queues_empty(s, LONG_DEADLINE_MS);
    quiet(3LL * STATE_INTERVAL * 1000);
    wait_wants(s, s->src, s->src_dept, ws, 4, 1, "the source, later");
    wait_wants(s, s->dst, s->dst_dept, wt, 4, 1, "the target, later");

    /* The other order, made certain: the relay has confirmed the close of
     * task 3 (the server is down, so it is not applied), and only then
     * arrives a state read before it: status 0, fwd_seq 1. */
    harness_daemon_stop(s->server);
    json_decref(sim_change(s->src, src[3], json_pack("{s:i}", "status", 2)));
    int64_t third = src[3];
    harness_record_event_list(s->client_state, s->client_id, &third, 1);
    harness_daemon_wake(s->client, 0);
    wait_fwd_confirmed(s, src[3], 2);
    publish_state(s, src[3], 1000000, 0, 1);
    wait_queue_empty(s, BROKER_REVERSE);
    const struct want w3[] = {{src[3], 2, -2, NULL, NULL}};
    wait_wants(s, s->src, s->src_dept, w3, 1, 1, "the source after a stale state");
    harness_daemon_start(s->server);
    const struct want wt3[] = {{dst[3], 2, -2, NULL, NULL}};
    wait_wants(s, s->dst, s->dst_dept, wt3, 1, LONG_DEADLINE_MS, "the target of task 3");
    wait_wants(s, s->src, s->src_dept, w3, 1, 1, "the source of task 3, at the end");
    harness_scenario_stop(s);
}

/* ---- checkevent ------------------------------------------------------------ */

static void wait_cycles(struct harness_scenario *s, size_t n, long long timeout_ms);

static void test_checkevent(void **state)
{
    (void)state;
    struct harness_scenario *s = rev_scenario("itr-check", 3600, 5);
    start_both(s);
    long long src[2], dst[2];
    link_tasks(s, 2, src, dst);
    /* The server's first cycle runs a second after its start
     * (STATEPUB_FIRST_CYCLE_DELAY_MS): the close must come after it, or
     * that cycle brings it, not checkevent. */
    wait_cycles(s, 1, LONG_DEADLINE_MS);
    json_decref(sim_change(s->dst, dst[0], json_pack("{s:i}", "status", 2)));

    /* The interval is an hour: only checkevent can bring the status now. */
    const char *const args[] = {"--command", "checkevent", "--timeout", "60", NULL};
    char *out = NULL;
    long long t0 = harness_now_ms();
    int rc = harness_ctl(s->client_conf, args, NULL, &out);
    long long took = harness_now_ms() - t0;
    printf("checkevent (%lld ms, exit %d): %s", took, rc, out ? out : "(no output)\n");
    EXPECT(s, rc == 0, "checkevent exited %d: %s", rc, out);
    long updated = -1, received = -1;
    const char *line = out ? strstr(out, "checkevent: ") : NULL;
    EXPECT(s,
           line && sscanf(line, "checkevent: %ld tasks updated (%ld states received)", &updated,
                          &received) == 2,
           "checkevent printed no \"checkevent: M tasks updated (N states received)\" line: %s",
           out);
    free(out);
    EXPECT(s, updated == 1, "checkevent says %ld tasks updated, expected 1 (one task was closed)",
           updated);
    EXPECT(s, received >= 1, "checkevent says %ld states received, expected at least 1", received);
    /* Right after it returned, without waiting: that is its point. */
    json_t *t = sim_task(s->src, src[0]);
    EXPECT(s, jint(t, "status") == 2, "source task %lld has status %lld right after checkevent",
           src[0], jint(t, "status"));
    json_decref(t);
    t = sim_task(s->src, src[1]);
    EXPECT(s, jint(t, "status") == 0, "source task %lld changed (status %lld) without a cause",
           src[1], jint(t, "status"));
    json_decref(t);

    /* The server side is down: no answer within --timeout. */
    harness_daemon_stop(s->server);
    const char *const args3[] = {"--command", "checkevent", "--timeout", "3", NULL};
    t0 = harness_now_ms();
    rc = harness_ctl(s->client_conf, args3, NULL, &out);
    took = harness_now_ms() - t0;
    printf("checkevent with the server stopped (%lld ms, exit %d): %s", took, rc,
           out ? out : "(no output)\n");
    EXPECT(s, rc != 0, "checkevent exited 0 with the server stopped: %s", out);
    EXPECT(s, out && strstr(out, "no answer from the server side within 3 s"),
           "checkevent did not say \"no answer from the server side within 3 s\": %s", out);
    EXPECT(s, took >= 3000, "checkevent gave up after %lld ms, before its --timeout of 3 s", took);
    free(out);

    /* The client daemon is down: not running, exit 1, at once. */
    harness_daemon_stop(s->client);
    rc = harness_ctl(s->client_conf, args3, NULL, &out);
    printf("checkevent with the client stopped (exit %d): %s", rc, out ? out : "(no output)\n");
    EXPECT(s, rc == 1, "checkevent exited %d with the client daemon stopped, expected 1: %s", rc,
           out);
    EXPECT(s, out && strstr(out, "not running"), "checkevent did not say \"not running\": %s", out);
    free(out);
    harness_scenario_stop(s);
}

/* ---- notes both ways, exactly once, across restarts ------------------------- */

#define NOTES_INTERVAL 2
#define NOTES_POLL     5

enum restart {
    R_NONE,
    R_TERM_SERVER,
    R_KILL_CLIENT,
    R_KILL_CLIENT_AFTER,
    R_KILL_SERVER_AFTER,
    R_TERM_BOTH,
    R_KILL_BOTH
};

static void restart_for(struct harness_scenario *s, enum restart r)
{
    switch (r) {
    case R_TERM_SERVER:
        harness_daemon_stop(s->server);
        harness_daemon_start(s->server);
        break;
    case R_KILL_CLIENT:
    case R_KILL_CLIENT_AFTER:
        harness_daemon_kill(s->client);
        harness_daemon_start(s->client);
        break;
    case R_KILL_SERVER_AFTER:
        harness_daemon_kill(s->server);
        harness_daemon_start(s->server);
        break;
    case R_TERM_BOTH:
        harness_daemon_stop(s->client);
        harness_daemon_stop(s->server);
        start_both(s);
        break;
    case R_KILL_BOTH:
        harness_daemon_kill(s->client);
        harness_daemon_kill(s->server);
        start_both(s);
        break;
    case R_NONE: break;
    }
}

static void test_notes_once(void **state)
{
    (void)state;
    struct harness_scenario *s = rev_scenario("itr-notes", NOTES_INTERVAL, NOTES_POLL);
    start_both(s);
    long long src, dst;
    link_tasks(s, 1, &src, &dst);

    /* Each round writes one line on one side and restarts daemons so that
     * the message is in flight, or just applied and not yet acked. */
    static const struct {
        int on_target;
        enum restart when_in_flight; /* right after the change */
        enum restart when_applied;   /* right after it arrived */
    } rounds[] = {
        {1, R_TERM_SERVER, R_NONE},       {0, R_KILL_CLIENT, R_NONE},
        {1, R_NONE, R_KILL_CLIENT_AFTER}, {0, R_NONE, R_KILL_SERVER_AFTER},
        {1, R_TERM_BOTH, R_NONE},         {0, R_KILL_BOTH, R_NONE},
        {1, R_KILL_BOTH, R_NONE},         {0, R_TERM_BOTH, R_KILL_CLIENT_AFTER},
    };
    const size_t nrounds = sizeof(rounds) / sizeof(rounds[0]);
    char texts[8][64];
    for (size_t i = 0; i < nrounds; i++) {
        snprintf(texts[i], sizeof(texts[i]), "%s note %zu: & = + %% \xd0\x96",
                 rounds[i].on_target ? "target" : "source", i);
        if (rounds[i].on_target) {
            sim_append_note(s->dst, dst, texts[i]);
        } else {
            sim_append_note(s->src, src, texts[i]);
            int64_t id = src;
            harness_record_event_list(s->client_state, s->client_id, &id, 1);
            harness_daemon_wake(s->client, 0);
        }
        restart_for(s, rounds[i].when_in_flight);
        const struct want w = {rounds[i].on_target ? src : dst, -1, -2, texts[i], NULL};
        long long took = wait_wants(s, rounds[i].on_target ? s->src : s->dst,
                                    rounds[i].on_target ? s->src_dept : s->dst_dept, &w, 1,
                                    LONG_DEADLINE_MS, texts[i]);
        printf("notes round %zu (%s -> %s): arrived in %lld ms\n", i,
               rounds[i].on_target ? "target" : "source", rounds[i].on_target ? "source" : "target",
               took);
        restart_for(s, rounds[i].when_applied);
    }

    /* Let every redelivery, reconciliation and cycle happen, then count. */
    wait_queues_empty(s, LONG_DEADLINE_MS);
    quiet(2LL * NOTES_INTERVAL * 1000 + NOTES_POLL * 1000);
    json_t *st = sim_task(s->src, src), *dt = sim_task(s->dst, dst);
    size_t bad = 0;
    for (size_t i = 0; i < nrounds; i++) {
        size_t on_src = count_occurrences(jstr(st, "note"), texts[i]);
        size_t on_dst = count_occurrences(jstr(dt, "note"), texts[i]);
        printf("notes: \"%s\": %zu time(s) on the source, %zu on the target\n", texts[i], on_src,
               on_dst);
        if (on_src != 1 || on_dst != 1)
            bad++;
    }
    if (bad)
        printf("source note:\n%s\ntarget note:\n%s\n", jstr(st, "note"), jstr(dt, "note"));
    json_decref(st);
    json_decref(dt);
    EXPECT(s, bad == 0, "%zu of %zu notes are not exactly once on each side", bad, nrounds);
    harness_scenario_stop(s);
}

/* ---- echo ---------------------------------------------------------------- */

#define ECHO_INTERVAL 2
#define ECHO_POLL     5
#define ECHO_ROUNDS   20

static void test_echo(void **state)
{
    (void)state;
    struct harness_scenario *s = rev_scenario("itr-echo", ECHO_INTERVAL, ECHO_POLL);
    start_both(s);
    long long src, dst;
    link_tasks(s, 1, &src, &dst);
    /* Let the first cycles and reconciliations after the link settle
     * before the rounds are counted. */
    wait_queues_empty(s, LONG_DEADLINE_MS);

    long w_src0 = harness_sim_count(s->src, "func=task.edit&write=1");
    long w_dst0 = harness_sim_count(s->dst, "func=task.edit&write=1");
    /* Kinds by round % 4: target status, source status, source note,
     * target note; the last round is a target note, so nothing the rounds
     * caused is still due when the quiet period starts. */
    int status = 0;
    size_t to_src = 0, to_dst = 0;
    long long t0 = harness_now_ms();
    for (int i = 0; i < ECHO_ROUNDS; i++) {
        char text[64];
        struct want w = {0, -1, -2, NULL, NULL};
        int kind = i % 4;
        if (kind == 0 || kind == 1) {
            status = (status + 1) % 3;
            json_decref(sim_change(kind == 0 ? s->dst : s->src, kind == 0 ? dst : src,
                                   json_pack("{s:i}", "status", status)));
            w.status = status;
        } else {
            snprintf(text, sizeof(text), "echo round %d", i);
            sim_append_note(kind == 3 ? s->dst : s->src, kind == 3 ? dst : src, text);
            w.note_has = text;
        }
        if (kind == 1 || kind == 2) {
            int64_t id = src;
            harness_record_event_list(s->client_state, s->client_id, &id, 1);
            harness_daemon_wake(s->client, 0);
        }
        int to_source = kind == 0 || kind == 3;
        w.id = to_source ? src : dst;
        if (to_source)
            to_src++;
        else
            to_dst++;
        wait_wants(s, to_source ? s->src : s->dst, to_source ? s->src_dept : s->dst_dept, &w, 1,
                   LONG_DEADLINE_MS, "echo round");
    }
    long w_src1 = harness_sim_count(s->src, "func=task.edit&write=1");
    long w_dst1 = harness_sim_count(s->dst, "func=task.edit&write=1");
    printf("echo: %d rounds in %lld ms\n", ECHO_ROUNDS, harness_now_ms() - t0);

    quiet(2LL * ECHO_INTERVAL * 1000 + 2LL * ECHO_POLL * 1000);
    long w_src2 = harness_sim_count(s->src, "func=task.edit&write=1");
    long w_dst2 = harness_sim_count(s->dst, "func=task.edit&write=1");
    printf("echo: writes during the rounds: source %ld for %zu real changes, target %ld for %zu "
           "real changes; during the quiet period: source %ld, target %ld\n",
           w_src1 - w_src0, to_src, w_dst1 - w_dst0, to_dst, w_src2 - w_src1, w_dst2 - w_dst1);
    EXPECT(s, w_src2 == w_src1 && w_dst2 == w_dst1,
           "tasks were written while nothing changed: %ld on the source, %ld on the target",
           w_src2 - w_src1, w_dst2 - w_dst1);
    EXPECT(s, (size_t)(w_src1 - w_src0) >= to_src && (size_t)(w_dst1 - w_dst0) >= to_dst,
           "fewer writes than real changes: the counts above are wrong");
    harness_scenario_stop(s);
}

/* ---- a broker restart and an outage of the client's BILLmanager -------------- */

#define OUTAGE_INTERVAL 2
#define OUTAGE_MS       10000

static void test_outages(void **state)
{
    (void)state;
    struct harness_scenario *s = rev_scenario("itr-outage", OUTAGE_INTERVAL, 5);
    start_both(s);
    long long src[2], dst[2];
    link_tasks(s, 2, src, dst);
    wait_queues_empty(s, LONG_DEADLINE_MS);

    /* The broker crashes right after the change: the state is published by
     * a cycle once it is back. */
    long long mark = last_call(s->src);
    json_decref(sim_change(s->dst, dst[0], json_pack("{s:i}", "status", 2)));
    harness_rabbit_kill();
    long long t0 = harness_now_ms();
    harness_rabbit_restart();
    const struct want w0 = {src[0], 2, -1, NULL, NULL};
    wait_wants(s, s->src, s->src_dept, &w0, 1, LONG_DEADLINE_MS, "state after a broker restart");
    printf("broker restart: the closed status arrived %lld ms after the kill\n",
           harness_now_ms() - t0);

    /* The client's BILLmanager is down for 10 s while the state is sent. */
    json_decref(harness_sim_admin_ok(s->src, "POST", "/down", NULL));
    long long down_at = harness_now_ms();
    json_decref(sim_change(s->dst, dst[1], json_pack("{s:i}", "status", 1)));
    sim_append_note(s->dst, dst[1], "written during the outage");
    quiet(OUTAGE_MS - (harness_now_ms() - down_at));
    json_decref(harness_sim_admin_ok(s->src, "POST", "/up", NULL));
    long long up_at = harness_now_ms();
    const struct want w1 = {src[1], 1, -1, "written during the outage", NULL};
    wait_wants(s, s->src, s->src_dept, &w1, 1, LONG_DEADLINE_MS, "state after the API outage");
    printf("api outage: the state arrived %lld ms after the source API came back\n",
           harness_now_ms() - up_at);

    /* Exactly once: let redeliveries and cycles run, then count. */
    wait_queues_empty(s, LONG_DEADLINE_MS);
    quiet(2LL * OUTAGE_INTERVAL * 1000);
    json_t *t0j = sim_task(s->src, src[0]), *t1j = sim_task(s->src, src[1]);
    size_t copies = count_occurrences(jstr(t1j, "note"), "written during the outage");
    long writes0 = writes_to(s->src, mark, src[0]), writes1 = writes_to(s->src, mark, src[1]);
    printf("outages: source task %lld written %ld time(s) (status %lld), source task %lld written "
           "%ld time(s), its note holds the outage text %zu time(s)\n",
           src[0], writes0, jint(t0j, "status"), src[1], writes1, copies);
    json_decref(t0j);
    json_decref(t1j);
    EXPECT(s, copies == 1, "the note written during the outage is on the source %zu times", copies);
    EXPECT(s, writes0 == 1, "source task %lld was written %ld times for one change", src[0],
           writes0);
    EXPECT(s, writes1 == 1, "source task %lld was written %ld times for one change", src[1],
           writes1);
    EXPECT(s, harness_daemon_running(s->client), "the client daemon died");
    EXPECT(s, harness_daemon_running(s->server), "the server daemon died");
    harness_scenario_stop(s);
}

/* ---- the API calls of one cycle over 10,000 linked tasks ------------------- */

#define BIG_LINKS   10000
#define BIG_CHANGED 100
#define PAGE_SIZE   200 /* the default billmanager.api.page_size */
/* Made-up source task ids: the client daemon never runs in this test. */
#define BIG_SRC_BASE 5000000
#define BIG_NOTE     "made for a link"

/* What the state publisher records for a linked task once it published
 * its state: the list row's fingerprint (rev_fp) and the state's (the
 * "state" key of applied, with "status"). */
struct big_state {
    char row_fp[FP_HEX_LEN + 1];
    char state_fp[FP_HEX_LEN + 1];
    int status;
    size_t native_len;
    int seen;
};

struct big_prefill {
    const struct config *cfg;
    long long first;
    struct big_state *st;
    size_t seen;
    char err[256];
};

/* One row of the target department's list, as the server daemon lists it:
 * its fingerprints as the publisher computes them. The state is that of a
 * bulk-created task (no performer, the bulk note) with the row's status,
 * which is what a view of it gives. */
static int big_prefill_row(void *arg, json_t *row)
{
    struct big_prefill *p = arg;
    const struct config_billmgr_api *api = &p->cfg->billmanager.api;
    struct statepub_state state;
    long id;

    if (billmgr_long(row, "id", &id) < 0 || id < p->first || id >= p->first + BIG_LINKS)
        return 0;
    struct big_state *b = &p->st[id - p->first];
    statepub_row_fp(p->cfg, row, b->row_fp);
    const char *status = billmgr_text(row, api->field_status);
    const char *performer = billmgr_text(row, api->field_performer);
    json_t *doc =
        json_pack("{s:{s:s},s:{s:s},s:{s:s}}", api->field_status, "$", status ? status : "0",
                  api->field_performer, "$", "", api->field_note, "$", BIG_NOTE);
    int rc = doc ? statepub_state_from_doc(p->cfg, doc, performer ? performer : "", &state, p->err,
                                           sizeof(p->err))
                 : -1;
    json_decref(doc);
    if (rc < 0)
        return 1; /* stops the list; the caller reports err */
    statepub_state_fp(&state, b->state_fp);
    b->status = state.status;
    b->native_len = state.native_len;
    statepub_state_release(&state);
    if (!b->seen)
        p->seen++;
    b->seen = 1;
    return 0;
}

/* Lists the target department through the API with the server's
 * configuration and fills st[0..BIG_LINKS) for tasks first.. */
static void big_prefill(struct harness_scenario *s, long long first, struct big_state *st)
{
    char err[512];
    struct config *cfg = config_load(s->server_conf, err, sizeof(err));
    EXPECT(s, cfg, "cannot load the server's configuration: %s", err);
    struct billmgr_opts o;
    config_opts_billmgr(cfg, &o);
    struct billmgr *bm = billmgr_new(&o, err, sizeof(err));
    EXPECT(s, bm, "billmgr_new: %s", err);
    struct billmgr_params filter;
    billmgr_params_init(&filter);
    assert_int_equal(billmgr_params_add(&filter, "filter", "on"), 0);
    assert_int_equal(
        billmgr_params_addf(&filter, cfg->billmanager.api.field_department, "%ld", s->dst_dept), 0);
    struct big_prefill p = {.cfg = cfg, .first = first, .st = st};
    struct billmgr_error berr;
    rt_status rc =
        billmgr_list_sync(bm, cfg->billmanager.api.func_task, &filter, big_prefill_row, &p, &berr);
    billmgr_params_release(&filter);
    billmgr_free(bm);
    config_free(cfg);
    EXPECT(s, rc == RT_OK, "listing the target department: %s: %s", berr.type, berr.message);
    EXPECT(s, !p.err[0], "a listed task's state: %s", p.err);
    EXPECT(s, p.seen == BIG_LINKS, "the list showed %zu of the %d tasks", p.seen, BIG_LINKS);
}

/* The views and states published a "state cycle ... done" line reports
 * (-1 each when the line says neither). */
static void cycle_counts(const char *line, long long *views, long long *published)
{
    *views = *published = -1;
    const char *p = strstr(line, " views, ");
    if (!p)
        return;
    const char *q = p;
    while (q > line && q[-1] >= '0' && q[-1] <= '9')
        q--;
    *views = strtoll(q, NULL, 10);
    *published = strtoll(p + strlen(" views, "), NULL, 10);
}

/* The number of "state cycle of client ... done" lines in the server's
 * log, and the last one in line (when not NULL). */
static size_t cycles_done(struct harness_scenario *s, char *line, size_t len)
{
    char needle[160];
    snprintf(needle, sizeof(needle), "state cycle of client \"%s\" done", s->client_id);
    size_t n = harness_daemon_log_count(s->server, needle);
    if (line && len) {
        line[0] = '\0';
        FILE *f = fopen(harness_daemon_log_path(s->server), "r");
        char buf[4096];
        while (f && fgets(buf, sizeof(buf), f))
            if (strstr(buf, needle))
                snprintf(line, len, "%s", strstr(buf, needle));
        line[strcspn(line, "\n")] = '\0';
        if (f)
            fclose(f);
    }
    return n;
}

static void wait_cycles(struct harness_scenario *s, size_t n, long long timeout_ms)
{
    long long deadline = harness_now_ms() + timeout_ms;
    while (cycles_done(s, NULL, 0) < n) {
        EXPECT(s, harness_daemon_running(s->server), "the server daemon died");
        EXPECT(s, harness_now_ms() < deadline, "state cycle %zu did not end within %lld ms", n,
               timeout_ms);
        poll(NULL, 0, 200);
    }
}

static void test_cycle_10k(void **state)
{
    (void)state;
    struct harness_scenario *s = rev_scenario("itr-10k", 3600, 5);
    char err[512];
    json_t *fields = json_pack("{s:i,s:i,s:s,s:s}", "department", (int)s->dst_dept, "count",
                               BIG_LINKS, "name_prefix", "linked-", "note", BIG_NOTE);
    char *body = json_dumps(fields, JSON_COMPACT);
    json_decref(fields);
    json_t *r = harness_sim_admin_ok(s->dst, "POST", "/tasks/bulk", body);
    free(body);
    long long first = jint(r, "first_id"), last = jint(r, "last_id");
    json_decref(r);
    EXPECT(s, last - first + 1 == BIG_LINKS, "bulk create gave %lld..%lld", first, last);

    /* The links, written while the server daemon is stopped, as the state
     * publisher leaves them once it published each task's state: a first
     * cycle over 10,000 new links (10,000 views) is not what is measured,
     * and would cost half a minute. */
    struct big_state *big = calloc(BIG_LINKS, sizeof(*big));
    assert_non_null(big);
    big_prefill(s, first, big);
    struct store *st = store_open(s->server_state, err, sizeof(err));
    EXPECT(s, st, "cannot open the server's store: %s", err);
    EXPECT(s, store_begin(st) == RT_OK, "store_begin: %s", store_strerror(st));
    for (long long i = 0; i < BIG_LINKS; i++) {
        struct store_link link = {0};
        snprintf(link.client, sizeof(link.client), "%s", s->client_id);
        link.src_task = BIG_SRC_BASE + i;
        link.dst_task = first + i;
        link.last_seq = 1;
        snprintf(link.rev_fp, sizeof(link.rev_fp), "%s", big[i].row_fp);
        link.notes_sent = big[i].native_len;
        int fits = statepub_applied_update("", big[i].state_fp, big[i].status, link.applied,
                                           sizeof(link.applied)) == 0;
        if (!fits || store_link_put(st, &link) != RT_OK) {
            snprintf(err, sizeof(err), "%s", fits ? store_strerror(st) : "applied set too long");
            store_rollback(st);
            store_free(st);
            free(big);
            fail_msg("store_link_put: %s", err);
        }
    }
    free(big);
    EXPECT(s, store_commit(st) == RT_OK, "store_commit: %s", store_strerror(st));
    store_free(st);

    /* The first cycle finds every link as the publisher left it: only the
     * list pages, no view, nothing published. */
    long long t0 = harness_now_ms();
    harness_daemon_start(s->server);
    wait_cycles(s, 1, 240000);
    char line[512];
    long long vw = -1, published = -1;
    cycles_done(s, line, sizeof(line));
    printf("first cycle over %d pre-filled links (%lld ms): %s\n", BIG_LINKS, harness_now_ms() - t0,
           line);
    harness_daemon_stop(s->server);
    cycle_counts(line, &vw, &published);
    EXPECT(s, vw == 0 && published == 0,
           "the first cycle over pre-filled links made %lld views and published %lld states, "
           "expected none: the pre-filled fingerprints are not the publisher's",
           vw, published);

    /* 1% changes; the next cycle (the one at start) is counted alone. */
    for (int i = 0; i < BIG_CHANGED; i++)
        json_decref(sim_change(s->dst, first + (long long)i * (BIG_LINKS / BIG_CHANGED),
                               json_pack("{s:i}", "status", 1 + i % 2)));
    json_decref(harness_sim_admin_ok(s->dst, "POST", "/calls/reset", NULL));
    size_t before = cycles_done(s, NULL, 0);
    harness_daemon_start(s->server);
    wait_cycles(s, before + 1, 120000);
    cycles_done(s, line, sizeof(line));
    harness_daemon_stop(s->server);
    long lists = harness_sim_count(s->dst, "func=task");
    long views = harness_sim_count(s->dst, "func=task.edit&write=0");
    long writes = harness_sim_count(s->dst, "func=task.edit&write=1");
    long all = harness_sim_count(s->dst, "");
    cycle_counts(line, &vw, &published);
    printf("reverse cycle over %d links: %ld list calls, %ld views, %lld published (%ld calls in "
           "all, %ld writes; server: %s)\n",
           BIG_LINKS, lists, views, published, all, writes, line);
    long want_lists = (BIG_LINKS + PAGE_SIZE - 1) / PAGE_SIZE;
    EXPECT(s, lists == want_lists, "%ld list calls, expected %ld (pages of %d)", lists, want_lists,
           PAGE_SIZE);
    EXPECT(s, views >= BIG_CHANGED && views <= BIG_CHANGED + BIG_CHANGED / 10,
           "%ld views for %d changed tasks, expected %d..%d", views, BIG_CHANGED, BIG_CHANGED,
           BIG_CHANGED + BIG_CHANGED / 10);
    EXPECT(s, published == BIG_CHANGED, "the cycle published %lld states, expected %d", published,
           BIG_CHANGED);
    EXPECT(s, vw == views, "the server counted %lld views, the emulator %ld", vw, views);
    EXPECT(s, writes == 0, "the cycle wrote %ld times to the target", writes);
    EXPECT(s, all == lists + views, "%ld calls beyond the list pages and the views",
           all - lists - views);
    harness_daemon_check_log(s->server);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_state_back, teardown),
        cmocka_unit_test_teardown(test_checkevent, teardown),
        cmocka_unit_test_teardown(test_client_down_close, teardown),
        cmocka_unit_test_teardown(test_notes_once, teardown),
        cmocka_unit_test_teardown(test_echo, teardown),
        cmocka_unit_test_teardown(test_outages, teardown),
        cmocka_unit_test_teardown(test_cycle_10k, teardown),
    };
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *filter = getenv("RT_IT_FILTER");
    if (filter && *filter)
        cmocka_set_test_filter(filter);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
