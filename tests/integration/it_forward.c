/*
 * it_forward.c - the forward path end to end (issue 3, item 5).
 *
 * Each test builds a scenario (tests/integration/harness_daemon.h): a real
 * RabbitMQ node (scripts/test's private node), two BILLmanager emulators
 * (the source and the target), and two remotetaskd processes (the client
 * role on the source, the server role on the target). Tasks are created on
 * the source, events are recorded (remotetaskctl taskevent as a process, or
 * store_outbox_add directly for bulk scenarios, which is what taskevent
 * does), something breaks (the broker, the target API, a daemon), and the
 * test waits until every source task is on the target.
 *
 * Every test prints one line
 *     <scenario>: sent=N applied=N lost=N duplicated=N
 * computed by matching source tasks to target tasks through the origin
 * block in the target's note ("from client C, task T", common/notes.h):
 * lost = source tasks with no target task, duplicated = target tasks beyond
 * one per source task. Each asserts lost == 0 and duplicated == 0, and that
 * every target task holds the final fields the test gave its source task,
 * and ends "settled": the client's outbox empty, the forward queue empty,
 * no dead letter of the scenario's client.
 *
 * The scenarios: create/change/close field by field (UTF-8, & = + %,
 * newlines; an unchanged event or message writes nothing); dead letters
 * (wrong AMQP user, another client's department, garbage); a create
 * interrupted between the API call and the commit; the client daemon
 * stopped while events are recorded; the server daemon SIGKILLed six times
 * during 500 tasks; the target API down for 30 s, then 20% of calls
 * answered 503; 1,000 tasks while the broker is SIGKILLed twice.
 *
 * RT_IT_FILTER=<cmocka pattern> runs some of them; RT_KEEP_TMP=1 keeps
 * every scenario's directory (a failed test keeps its own anyway).
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

#include "broker.h"
#include "buf.h"
#include "codec.h"
#include "harness.h"
#include "harness_daemon.h"
#include "harness_flow.h"
#include "harness_rabbit.h"
#include "harness_sim.h"
#include "notes.h"
#include "store.h"

/* Deadlines for "everything arrived": generous for a loaded 2-core machine
 * with ASan, never reached when the code works (the waits end as soon as
 * the condition holds). */
#define APPLY_DEADLINE_MS 60000
#define SHORT_DEADLINE_MS 30000

/* The scenario of the running test, freed by the teardown even when the
 * test failed half-way. */
static struct harness_scenario *current;
/* Set while the test has the broker killed: a test that fails then must
 * not leave the node down for the tests after it. */
static int broker_down;
/* Set by a test that reached its end. */
static int passed;

static int teardown(void **state)
{
    /* A test that got to its end freed nothing yet and set passed; one
     * that failed keeps its files for the post-mortem. */
    if (current && !passed)
        current->keep = 1;
    passed = 0;
    harness_scenario_free(current);
    current = NULL;
    if (broker_down) {
        broker_down = 0;
        harness_rabbit_restart();
    }
    return 0;
}

static void broker_kill(void)
{
    broker_down = 1;
    harness_rabbit_kill();
}

static void broker_restart(void)
{
    harness_rabbit_restart();
    broker_down = 0;
}

/* Fails the test after printing both daemons' logs. */
#define EXPECT(s, cond, ...)                                                                       \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            harness_scenario_print_logs(s);                                                        \
            fail_msg(__VA_ARGS__);                                                                 \
        }                                                                                          \
    } while (0)

#define EXPECT_STR(s, got, want)                                                                   \
    EXPECT(s, strcmp((got), (want)) == 0, "%s is \"%s\", expected \"%s\"", #got, (got), (want))
#define EXPECT_INT(s, got, want)                                                                   \
    EXPECT(s, (long long)(got) == (long long)(want), "%s is %lld, expected %lld", #got,            \
           (long long)(got), (long long)(want))

/* ---- JSON helpers ------------------------------------------------------ */

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

/* Creates a task on an emulator directly (admin POST /tasks); returns its
 * id. fields is stolen. */
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

/* Changes a task as an operator would (admin POST /tasks/ID); fields is
 * stolen. */
static void sim_change(struct harness_sim *sim, long long id, json_t *fields)
{
    char path[64];
    char *body = json_dumps(fields, JSON_COMPACT);
    json_decref(fields);
    assert_non_null(body);
    snprintf(path, sizeof(path), "/tasks/%lld", id);
    json_decref(harness_sim_admin_ok(sim, "POST", path, body));
    free(body);
}

/* Creates count tasks in one transaction; returns the first id (they are
 * contiguous). fields is stolen and gets "department" and "count". */
static long long sim_bulk(struct harness_sim *sim, long dept, int count, const char *prefix,
                          json_t *fields)
{
    json_object_set_new(fields, "department", json_integer(dept));
    json_object_set_new(fields, "count", json_integer(count));
    json_object_set_new(fields, "name_prefix", json_string(prefix));
    char *body = json_dumps(fields, JSON_COMPACT);
    json_decref(fields);
    assert_non_null(body);
    json_t *r = harness_sim_admin_ok(sim, "POST", "/tasks/bulk", body);
    free(body);
    long long first = jint(r, "first_id"), last = jint(r, "last_id");
    json_decref(r);
    assert_int_equal(last - first + 1, count);
    return first;
}

/* ---- matching source tasks to target tasks ------------------------------ */

/* The counting lives in tests/integration/harness_flow.c, shared with the
 * fault suite. */

/* Runs remotetaskctl taskevent for task id (with --elid, or through
 * PARAM_elid as BILLmanager's handler does) and asserts it exits 0. */
static void ctl_taskevent(struct harness_scenario *s, long long id, int via_env)
{
    char elid[32];
    char *out = NULL;
    snprintf(elid, sizeof(elid), "%lld", id);
    const char *with_arg[] = {"--command", "taskevent", "--elid", elid, NULL};
    const char *with_env[] = {"--command", "taskevent", NULL};
    long long t0 = harness_now_ms();
    int rc =
        harness_ctl(s->client_conf, via_env ? with_env : with_arg, via_env ? elid : NULL, &out);
    long long took = harness_now_ms() - t0;
    if (rc != 0)
        fprintf(stderr, "remotetaskctl taskevent %s said:\n%s\n", elid, out ? out : "");
    free(out);
    EXPECT(s, rc == 0, "remotetaskctl taskevent --elid %s exited %d", elid, rc);
    printf("taskevent %s%s: exit 0 in %lld ms\n", elid, via_env ? " (PARAM_elid)" : "", took);
}

/* Waits until the client's outbox is empty. */
static void wait_outbox_empty(struct harness_scenario *s, long long timeout_ms)
{
    long long deadline = harness_now_ms() + timeout_ms;
    uint64_t n;
    while ((n = harness_outbox_backlog(s->client_state)) != 0) {
        EXPECT(s, harness_now_ms() < deadline, "the client's outbox still holds %llu rows",
               (unsigned long long)n);
        poll(NULL, 0, 100);
    }
}

/* Waits until the scenario's forward queue holds no message, ready or
 * unacknowledged: the server has committed all it received. */
static void wait_queue_drained(struct harness_scenario *s, long long timeout_ms)
{
    char name[BROKER_NAME_MAX];
    struct harness_queue q;
    long long deadline = harness_now_ms() + timeout_ms;
    assert_int_equal(broker_queue_name(name, sizeof(name), BROKER_FORWARD, s->client_id), 0);
    for (;;) {
        EXPECT(s, harness_rabbit_queue(name, &q), "the queue %s does not exist", name);
        if (q.messages == 0)
            return;
        EXPECT(s, harness_now_ms() < deadline, "the queue %s still holds %ld messages", name,
               q.messages);
        poll(NULL, 0, 200);
    }
}

static void start_both(struct harness_scenario *s)
{
    harness_daemon_start(s->server);
    harness_daemon_start(s->client);
}

/* ---- our own AMQP connections: publishing, reading dead letters ---- */

#define DEAD_MAX 8

struct amqp_test {
    int acked, failed;       /* confirms received */
    const char *const *want; /* message ids looked for in dead letters */
    size_t n_want;
    int found[DEAD_MAX]; /* how many copies of each arrived */
    char reason[DEAD_MAX][512];
    char queue[DEAD_MAX][256]; /* x-rt-queue */
    uint64_t ack_tags[64];
    size_t n_ack;
    const char *client;   /* count the dead letters of this client */
    size_t seen;          /* dead-letter deliveries seen */
    size_t client_dead;   /* of them, for client */
    char first_dead[512]; /* the reason of the first of them */
};

static void amqp_test_confirm(void *arg, uint64_t tag, enum broker_fate fate)
{
    struct amqp_test *t = arg;
    if (fate == BROKER_ACKED)
        t->acked++;
    else
        t->failed++;
}

static void amqp_test_delivery(void *arg, const struct broker_delivery *d)
{
    struct amqp_test *t = arg;
    t->seen++;
    if (t->client) {
        const char *who = broker_delivery_header_str(d, "x-rt-client");
        /* Every letter of the client's own dead-letter queue is its. */
        if (strcmp(d->routing_key, "forward") == 0 || (who && strcmp(who, t->client) == 0)) {
            const char *reason = broker_delivery_header_str(d, "x-rt-reason");
            if (!t->client_dead++)
                snprintf(t->first_dead, sizeof(t->first_dead), "%s: %s", d->message_id,
                         reason ? reason : "(no x-rt-reason)");
        }
    }
    /* Only our messages are taken; others stay unacknowledged and go back
     * to the queue when the connection closes. */
    for (size_t i = 0; i < t->n_want; i++) {
        if (strcmp(d->message_id, t->want[i]) != 0)
            continue;
        const char *reason = broker_delivery_header_str(d, "x-rt-reason");
        const char *queue = broker_delivery_header_str(d, "x-rt-queue");
        snprintf(t->reason[i], sizeof(t->reason[i]), "%s", reason ? reason : "");
        snprintf(t->queue[i], sizeof(t->queue[i]), "%s", queue ? queue : "");
        if (t->n_ack < sizeof(t->ack_tags) / sizeof(t->ack_tags[0]))
            t->ack_tags[t->n_ack++] = d->delivery_tag;
        t->found[i]++;
    }
}

/* A connection to the node as user, with the scenario's topology
 * declared (idempotent: the daemons declare the same). */
static struct broker *amqp_test_open(struct harness_scenario *s, const char *user, int prefetch,
                                     struct amqp_test *t)
{
    struct broker_opts opts;
    char err[512];
    harness_rabbit_opts(&opts, user, s->amqp_password);
    opts.prefetch = prefetch;
    opts.on_confirm = amqp_test_confirm;
    opts.on_delivery = amqp_test_delivery;
    opts.cb_arg = t;
    struct broker *b = broker_new(&opts, err, sizeof(err));
    EXPECT(s, b, "broker_new: %s", err);
    EXPECT(s, broker_connect(b) == RT_OK, "cannot connect as %s: %s", user, broker_strerror(b));
    const char *clients[] = {s->client_id};
    EXPECT(s, broker_declare(b, clients, 1) == RT_OK, "broker_declare: %s", broker_strerror(b));
    return b;
}

/* Reads frames until done(t) or the deadline. */
static void amqp_test_pump(struct harness_scenario *s, struct broker *b, struct amqp_test *t,
                           int (*done)(const struct amqp_test *), long long timeout_ms)
{
    long long deadline = harness_now_ms() + timeout_ms;
    while (!done(t)) {
        EXPECT(s, harness_now_ms() < deadline, "no answer from the broker within %lld ms",
               timeout_ms);
        if (!broker_wants_read_now(b)) {
            struct pollfd p = {.fd = broker_fd(b), .events = POLLIN};
            poll(&p, 1, 100);
        }
        EXPECT(s, broker_process(b) == RT_OK, "broker connection lost: %s", broker_strerror(b));
    }
}

static int amqp_test_confirmed(const struct amqp_test *t)
{
    return t->acked + t->failed > 0;
}

static int amqp_test_all_found(const struct amqp_test *t)
{
    for (size_t i = 0; i < t->n_want; i++)
        if (!t->found[i])
            return 0;
    return 1;
}

/* Publishes body to the scenario's forward queue as AMQP user (the broker
 * sets user_id to that login) and waits for the broker's ack. */
static void publish_as(struct harness_scenario *s, const char *user, const char *mid,
                       const void *body, size_t len)
{
    struct amqp_test t = {0};
    uint64_t tag;
    struct broker *b = amqp_test_open(s, user, 1, &t);
    struct broker_props props = {.message_id = mid};
    EXPECT(s,
           broker_publish(b, BROKER_EXCHANGE_FORWARD, s->client_id, &props, body, len, &tag) ==
               RT_OK,
           "broker_publish: %s", broker_strerror(b));
    amqp_test_pump(s, b, &t, amqp_test_confirmed, SHORT_DEADLINE_MS);
    broker_free(b);
    EXPECT(s, t.acked == 1, "the broker did not take message %s", mid);
}

/* The scenario client's forward dead-letter queue. */
static const char *dead_queue(struct harness_scenario *s, char *buf, size_t len)
{
    assert_int_equal(broker_dead_queue_name(buf, len, BROKER_FORWARD, s->client_id), 0);
    return buf;
}

/* Finds the messages ids[0..n) in the client's forward dead-letter queue
 * (consuming it as the server's user), acks them, and fills reasons and
 * queues. */
static void read_dead(struct harness_scenario *s, const char *const *ids, size_t n,
                      struct amqp_test *t)
{
    char dq[BROKER_NAME_MAX];
    memset(t, 0, sizeof(*t));
    t->want = ids;
    t->n_want = n;
    /* Unlimited prefetch: messages before ours must not hide them. */
    struct broker *b = amqp_test_open(s, s->server_user, 0, t);
    EXPECT(s, broker_consume(b, dead_queue(s, dq, sizeof(dq))) == RT_OK, "cannot consume %s: %s",
           dq, broker_strerror(b));
    amqp_test_pump(s, b, t, amqp_test_all_found, SHORT_DEADLINE_MS);
    for (size_t i = 0; i < t->n_ack; i++)
        EXPECT(s, broker_ack(b, t->ack_tags[i]) == RT_OK, "broker_ack: %s", broker_strerror(b));
    broker_free(b);
}

static size_t dead_expected;

static int amqp_test_seen_all(const struct amqp_test *t)
{
    return t->seen >= dead_expected;
}

/* The end of a scenario: the client's outbox is empty, the forward queue
 * holds nothing (every delivery acked), and the client's forward
 * dead-letter queue holds no message (all of it is read, and given back). */
static void expect_settled(struct harness_scenario *s, const char *scenario)
{
    struct harness_queue q;
    struct amqp_test t = {0};
    char dq[BROKER_NAME_MAX];
    wait_outbox_empty(s, SHORT_DEADLINE_MS);
    wait_queue_drained(s, SHORT_DEADLINE_MS);
    dead_queue(s, dq, sizeof(dq));
    EXPECT(s, harness_rabbit_queue(dq, &q), "%s does not exist", dq);
    if (q.messages > 0) {
        dead_expected = (size_t)q.messages;
        t.client = s->client_id;
        struct broker *b = amqp_test_open(s, s->server_user, 0, &t);
        EXPECT(s, broker_consume(b, dq) == RT_OK, "cannot consume %s: %s", dq,
               broker_strerror(b));
        amqp_test_pump(s, b, &t, amqp_test_seen_all, SHORT_DEADLINE_MS);
        broker_free(b);
    }
    printf("%s: settled: outbox empty, forward queue empty, %zu dead letters of this client "
           "(of %ld in %s)\n",
           scenario, t.client_dead, q.messages, dq);
    EXPECT(s, t.client_dead == 0, "%s: %zu messages went to %s (first: %s)", scenario,
           t.client_dead, dq, t.first_dead);
}

static void encode_task(struct harness_scenario *s, struct buf *out, const char *client,
                        long long task, uint64_t seq, long dept, const char *name)
{
    char err[256];
    struct codec_msg m;
    codec_msg_init(&m, CODEC_TASK);
    m.client = (char *)client;
    m.task = task;
    m.seq = seq;
    m.ts = 1;
    m.fwd.department = dept;
    m.fwd.name = (char *)name;
    m.fwd.type = "manual";
    m.fwd.note = "forged";
    m.fwd.deadline = "";
    m.fwd.item = "";
    m.fwd.account = "";
    m.fwd.status = 0;
    EXPECT(s, codec_encode(&m, out, err, sizeof(err)) == 0, "codec_encode: %s", err);
}

/* ---- 1. create, change, close, field by field ---------------------------- */

#define FLOW_NAME_A  "Ünïcode & = + % задача\nsecond line ✓"
#define FLOW_NOTE_A  "First: a & b = c + d % e\nВторая строка: 100% ✓\n\tindented"
#define FLOW_ADDED_A "Added later: x=1&y=2+3 %20\nЁжик 🦔"

/* The target task made for source task id, or fails. */
static json_t *target_of(struct harness_scenario *s, json_t *dst, long long id)
{
    size_t i;
    json_t *t, *found = NULL;
    json_array_foreach(dst, i, t)
    {
        if (harness_flow_note_origin(jstr(t, "note"), s->client_id) == id) {
            EXPECT(s, !found, "source task %lld has two target tasks", id);
            found = t;
        }
    }
    EXPECT(s, found, "source task %lld has no target task", id);
    return found;
}

struct note_wait {
    struct harness_scenario *s;
    long long id;
    const char *name;
    long long status;
    const char *note; /* NULL: not checked */
};

static int note_done(json_t *dst, void *arg)
{
    struct note_wait *w = arg;
    size_t i;
    json_t *t;
    json_array_foreach(dst, i, t)
    {
        if (harness_flow_note_origin(jstr(t, "note"), w->s->client_id) != w->id)
            continue;
        return strcmp(jstr(t, "name"), w->name) == 0 && jint(t, "status") == w->status &&
               (!w->note || strcmp(jstr(t, "note"), w->note) == 0);
    }
    return 0;
}

static void wait_task_state(struct harness_scenario *s, long long id, const char *name,
                            long long status, const char *note)
{
    struct note_wait w = {.s = s, .id = id, .name = name, .status = status, .note = note};
    int met = 0;
    json_t *dst = harness_wait_tasks(s->dst, s->dst_dept, note_done, &w, SHORT_DEADLINE_MS, &met);
    if (!met) {
        char *text = json_dumps(dst, JSON_INDENT(1));
        fprintf(stderr, "target tasks:\n%s\nexpected name \"%s\" status %lld note \"%s\"\n",
                text ? text : "", name, status, note ? note : "(any)");
        free(text);
    }
    json_decref(dst);
    EXPECT(s, met, "the target task of source task %lld did not reach its expected state", id);
}

/* Waits until the daemon's status says every commit of its store is on
 * disk (store.unsynced 0). Commits nobody waits for (the relay's
 * confirmations, the journal's flushes) are synced by the daemon's
 * trailing sync within DAEMON_SYNC_TRAIL_MS (1 s) of an idle pass;
 * without it they would stay unsynced until the next event. */
#define SYNCED_DEADLINE_MS 10000
#define SYNCED_POLL_MS     100

static void expect_store_synced(struct harness_scenario *s, struct harness_daemon *d,
                                const char *who)
{
    long long deadline = harness_now_ms() + SYNCED_DEADLINE_MS, unsynced = -1;
    for (;;) {
        struct harness_status st;
        harness_daemon_status(d, &st);
        json_t *u = json_object_get(json_object_get(st.doc, "store"), "unsynced");
        EXPECT(s, json_is_integer(u), "the %s's status has no store.unsynced:\n%s", who,
               st.output);
        unsynced = json_integer_value(u);
        harness_status_release(&st);
        if (unsynced == 0 || harness_now_ms() > deadline)
            break;
        (void)poll(NULL, 0, SYNCED_POLL_MS);
    }
    EXPECT(s, unsynced == 0, "the %s still has %lld commits not on disk after %d ms idle", who,
           unsynced, SYNCED_DEADLINE_MS);
}

static void test_flows(void **state)
{
    struct harness_scenario_opts o = {.poll_interval = 3600};
    struct harness_scenario *s = harness_scenario_new("itf-flows", &o, &current);
    char origin[NOTES_ORIGIN_MAX + 1];
    start_both(s);

    /* Created after the daemons started, with a reconciliation an hour
     * away: only the events deliver them. */
    long long a =
        sim_create(s->src, json_pack("{s:i,s:s,s:s,s:s,s:s,s:i}", "department", (int)s->src_dept,
                                     "name", FLOW_NAME_A, "type", "manual", "note", FLOW_NOTE_A,
                                     "deadline", "2031-02-03 04:05:06", "status", 0));
    long long b = sim_create(s->src, json_pack("{s:i,s:s,s:s,s:s,s:i}", "department",
                                               (int)s->src_dept, "name", "plain = 1 + 1 & 100%",
                                               "type", "setup", "deadline", "", "status", 1));
    long long c = sim_create(s->src, json_pack("{s:i,s:s,s:s,s:s,s:s,s:i}", "department",
                                               (int)s->src_dept, "name", "about a service", "type",
                                               "manual", "note", "see the service", "item", "42",
                                               "client", HARNESS_SIM_ACCOUNT_A));
    ctl_taskevent(s, a, 0);
    ctl_taskevent(s, b, 1);
    ctl_taskevent(s, c, 0);
    harness_flow_expect_all_applied(s, "flows-create", SHORT_DEADLINE_MS);
    expect_store_synced(s, s->client, "client");
    expect_store_synced(s, s->server, "server");

    /* Field by field, the note exactly as the design makes it. */
    json_t *src = harness_sim_tasks(s->src, s->src_dept);
    json_t *dst = harness_sim_tasks(s->dst, s->dst_dept);
    json_t *ta = target_of(s, dst, a), *tb = target_of(s, dst, b), *tc = target_of(s, dst, c);
    EXPECT_STR(s, jstr(ta, "name"), FLOW_NAME_A);
    EXPECT_STR(s, jstr(ta, "type"), "manual");
    EXPECT_STR(s, jstr(ta, "deadline"), "2031-02-03 04:05:06");
    EXPECT_INT(s, jint(ta, "status"), 0);
    EXPECT_INT(s, jint(ta, "department"), s->dst_dept);
    notes_origin_forward(origin, sizeof(origin), s->client_id, a);
    char *want_a = notes_append("", origin, FLOW_NOTE_A);
    assert_non_null(want_a);
    EXPECT_STR(s, jstr(ta, "note"), want_a);
    EXPECT_STR(s, jstr(tb, "name"), "plain = 1 + 1 & 100%");
    EXPECT_STR(s, jstr(tb, "type"), "setup");
    EXPECT_STR(s, jstr(tb, "deadline"), "");
    EXPECT_INT(s, jint(tb, "status"), 1);
    notes_origin_forward(origin, sizeof(origin), s->client_id, b);
    char *want_b = notes_append("", origin, "");
    assert_non_null(want_b);
    EXPECT_STR(s, jstr(tb, "note"), want_b);
    free(want_b);
    /* The service and the account the task concerns travel in the note. */
    EXPECT(s, strstr(jstr(tc, "note"), "service #42"), "the note of the service task lacks %s",
           "service #42");
    EXPECT(s, strstr(jstr(tc, "note"), "client #5"), "the note of the service task lacks %s",
           "client #5");
    EXPECT(s, strstr(jstr(tc, "note"), "see the service"), "the note of the service task lacks %s",
           "see the service");
    char *target_note_a = strdup(jstr(ta, "note"));
    assert_non_null(target_note_a);
    json_decref(src);
    json_decref(dst);

    /* Change: name, deadline, status, and a note appended to on the source
     * shows as a new block on the target. */
    const char *name2 = "renamed & = + % — переименовано\nline";
    sim_change(s->src, a,
               json_pack("{s:s,s:s,s:i,s:s}", "name", name2, "deadline", "2032-12-31 23:59:59",
                         "status", 1, "note", FLOW_NOTE_A "\n" FLOW_ADDED_A));
    ctl_taskevent(s, a, 0);
    notes_origin_forward(origin, sizeof(origin), s->client_id, a);
    char *want_a2 = notes_append(target_note_a, origin, FLOW_ADDED_A);
    assert_non_null(want_a2);
    wait_task_state(s, a, name2, 1, want_a2);
    dst = harness_sim_tasks(s->dst, s->dst_dept);
    ta = target_of(s, dst, a);
    EXPECT_STR(s, jstr(ta, "deadline"), "2032-12-31 23:59:59");
    json_decref(dst);

    /* Close. */
    sim_change(s->src, b, json_pack("{s:i}", "status", 2));
    ctl_taskevent(s, b, 1);
    wait_task_state(s, b, "plain = 1 + 1 & 100%", 2, NULL);
    harness_flow_expect_all_applied(s, "flows-change-close", SHORT_DEADLINE_MS);

    /* An unchanged task's event makes no write on the target: the relay
     * views it, finds the fields it last sent, and publishes nothing. */
    long long writes = harness_sim_count(s->dst, "func=task.edit&write=1");
    long long views = harness_sim_count(s->src, "func=task.edit&write=0");
    json_t *before = harness_sim_tasks(s->dst, s->dst_dept);
    ctl_taskevent(s, a, 0);
    ctl_taskevent(s, b, 0);
    wait_outbox_empty(s, SHORT_DEADLINE_MS);
    EXPECT(s, harness_sim_count(s->src, "func=task.edit&write=0") >= views + 2,
           "the relay did not view the tasks of the re-sent events");
    wait_queue_drained(s, SHORT_DEADLINE_MS);
    EXPECT(s, harness_sim_count(s->dst, "func=task.edit&write=1") == writes,
           "an unchanged re-sent event made %lld API writes on the target",
           harness_sim_count(s->dst, "func=task.edit&write=1") - writes);

    /* And a message whose fields were already applied, sent again with a
     * new seq (as after a lost confirm), makes no API write either. The
     * seq is allocated in the client's store, as the relay would. */
    src = harness_sim_tasks(s->src, s->src_dept);
    json_t *sa = task_by_id(src, a);
    assert_non_null(sa);
    char err[512];
    struct store *st = store_open(s->client_state, err, sizeof(err));
    assert_non_null(st);
    uint64_t seq = 0;
    assert_int_equal(store_fwd_next_seq(st, s->client_id, a, &seq), RT_OK);
    store_free(st);
    struct codec_msg m;
    codec_msg_init(&m, CODEC_TASK);
    m.client = s->client_id;
    m.task = a;
    m.seq = seq;
    m.ts = 1;
    m.fwd.department = s->dst_dept;
    m.fwd.name = (char *)jstr(sa, "name");
    m.fwd.type = (char *)jstr(sa, "type");
    m.fwd.note = (char *)jstr(sa, "note");
    m.fwd.deadline = (char *)jstr(sa, "deadline");
    m.fwd.item = "";
    m.fwd.account = "";
    m.fwd.status = (int)jint(sa, "status");
    struct buf body;
    buf_init(&body, CODEC_MAX_BODY);
    assert_int_equal(codec_encode(&m, &body, err, sizeof(err)), 0);
    json_decref(src);
    char mid[128];
    snprintf(mid, sizeof(mid), "%s:%lld:%llu", s->client_id, a, (unsigned long long)seq);
    publish_as(s, s->client_user, mid, body.data, body.len);
    buf_release(&body);
    wait_queue_drained(s, SHORT_DEADLINE_MS);
    EXPECT(s, harness_daemon_log_count(s->server, mid) > 0,
           "the server's log does not mention message %s", mid);
    EXPECT(s, harness_sim_count(s->dst, "func=task.edit&write=1") == writes,
           "an unchanged message made %lld API writes on the target",
           harness_sim_count(s->dst, "func=task.edit&write=1") - writes);
    json_t *after = harness_sim_tasks(s->dst, s->dst_dept);
    EXPECT(s, json_equal(before, after), "the target tasks changed after unchanged events");
    json_decref(before);
    json_decref(after);
    printf("flows-unchanged: target API writes %lld before and after\n", writes);

    free(want_a);
    free(want_a2);
    free(target_note_a);
    expect_settled(s, "flows");
    harness_scenario_stop(s);
    passed = 1;
}

/* ---- 2. 1,000 tasks while the broker is killed twice -------------------- */

static json_t *bulk_fields(const char *note)
{
    json_t *f = json_pack("{s:s,s:s,s:s}", "type", "manual", "note", note, "deadline",
                          "2030-01-01 00:00:00");
    assert_non_null(f);
    return f;
}

static void test_broker_kills(void **state)
{
    struct harness_scenario_opts o = {.poll_interval = 5, .max_inflight = 8};
    struct harness_scenario *s = harness_scenario_new("itf-broker", &o, &current);
    /* A little latency on the target keeps work in flight when the broker
     * dies. */
    json_decref(harness_sim_admin_ok(s->dst, "POST", "/faults", "{\"latency_ms\":[5,30]}"));
    start_both(s);

    long long first =
        sim_bulk(s->src, s->src_dept, 1000, "bk-", bulk_fields("bulk note & = + %\nline 2"));
    harness_record_events(s->client_state, s->client_id, first, first + 399);
    harness_daemon_wake(s->client, 0);
    harness_flow_wait_target_count(s, 50, APPLY_DEADLINE_MS);

    size_t before = harness_flow_target_count(s);
    broker_kill();
    printf("broker-kills: broker killed (1) with %zu tasks on the target\n", before);
    /* Events recorded while the broker is dead, and changes on top. */
    harness_record_events(s->client_state, s->client_id, first + 400, first + 999);
    int64_t changed[100];
    for (int i = 0; i < 100; i++) {
        char name[64];
        changed[i] = first + i * 10;
        snprintf(name, sizeof(name), "bk-changed-%lld", (long long)changed[i]);
        sim_change(s->src, changed[i], json_pack("{s:s,s:i}", "name", name, "status", 1));
    }
    harness_record_event_list(s->client_state, s->client_id, changed, 100);
    broker_restart();
    printf("broker-kills: broker restarted (1)\n");

    /* The second kill once the flow has moved on again. */
    size_t next = before + 50 < 1000 ? before + 50 : 1000;
    harness_flow_wait_target_count(s, next, APPLY_DEADLINE_MS);
    before = harness_flow_target_count(s);
    broker_kill();
    printf("broker-kills: broker killed (2) with %zu tasks on the target\n", before);
    int64_t moved[143];
    for (int i = 0; i < 143; i++) {
        moved[i] = first + i * 7;
        sim_change(s->src, moved[i], json_pack("{s:s}", "deadline", "2031-06-07 08:09:10"));
    }
    harness_record_event_list(s->client_state, s->client_id, moved, 143);
    broker_restart();
    printf("broker-kills: broker restarted (2)\n");

    size_t sent = harness_flow_expect_all_applied(s, "broker-kills", APPLY_DEADLINE_MS);
    assert_int_equal(sent, 1000);
    EXPECT(s, harness_daemon_running(s->client), "the client daemon died");
    EXPECT(s, harness_daemon_running(s->server), "the server daemon died");
    expect_settled(s, "broker-kills");
    harness_scenario_stop(s);
    passed = 1;
}

/* ---- 3. the target API down for 30 s; 20% of calls answered 503 ------- */

#define OUTAGE_MS 30000

static void test_api_outage(void **state)
{
    struct harness_scenario_opts o = {.poll_interval = 5};
    struct harness_scenario *s = harness_scenario_new("itf-outage", &o, &current);
    start_both(s);

    json_decref(harness_sim_admin_ok(s->dst, "POST", "/down", NULL));
    long long down_at = harness_now_ms();
    long long first = sim_bulk(s->src, s->src_dept, 40, "out-", bulk_fields("during the outage"));
    harness_record_events(s->client_state, s->client_id, first, first + 39);
    harness_daemon_wake(s->client, 0);
    /* The outage itself lasts its 30 s; this is the scenario, not a wait
     * for a condition. */
    long long left = down_at + OUTAGE_MS - harness_now_ms();
    if (left > 0)
        poll(NULL, 0, (int)left);
    EXPECT(s, harness_flow_target_count(s) == 0,
           "tasks were applied while the target API was down");
    json_decref(harness_sim_admin_ok(s->dst, "POST", "/up", NULL));
    printf("api-down-30s: target API up again after %lld ms\n", harness_now_ms() - down_at);
    harness_flow_expect_all_applied(s, "api-down-30s", APPLY_DEADLINE_MS);

    /* 20% of calls answered 503 while 100 new tasks are tried and retried.
     * The faults last until the target answered at least 10 calls with 503
     * and 120 calls in all (every task tried once, the failed ones retried
     * from the 1 s delay tier), then stop: with faults that never stop, a
     * task that fails four times in a row waits in the 2 min and then the
     * 10 min delay tier, which no test budget holds (each retried create
     * makes two calls, the recovery listing and the create, so a retry
     * fails 36% of the time). What is proven is the same: every call
     * answered 503 is retried and applied, nothing twice. */
    long long calls0 = harness_sim_count(s->dst, "");
    long long faulted0 = harness_sim_count(s->dst, "outcome=http503");
    json_decref(harness_sim_admin_ok(s->dst, "POST", "/faults",
                                     "{\"error_rate\":0.2,\"error_status\":503}"));
    first = sim_bulk(s->src, s->src_dept, 100, "err-", bulk_fields("with 20% errors"));
    harness_record_events(s->client_state, s->client_id, first, first + 99);
    harness_daemon_wake(s->client, 0);
    long long on_at = harness_now_ms(), deadline = on_at + SHORT_DEADLINE_MS, n503, calls;
    for (;;) {
        n503 = harness_sim_count(s->dst, "outcome=http503") - faulted0;
        calls = harness_sim_count(s->dst, "") - calls0;
        /* 4 s at most once enough 503s were served, so that no retry comes
         * back from the 5 s tier into the faults: none reaches 30 s. */
        if (n503 >= 10 && (calls >= 120 || harness_now_ms() - on_at >= 4000))
            break;
        EXPECT(s, harness_now_ms() < deadline,
               "with 20%% errors the target got %lld calls (%lld answered 503) in %d ms", calls,
               n503, SHORT_DEADLINE_MS);
        poll(NULL, 0, 100);
    }
    json_decref(harness_sim_admin_ok(s->dst, "POST", "/faults/reset", NULL));
    printf("api-503-20pct: %lld of %lld calls answered 503 while the faults were on\n", n503,
           calls);
    harness_flow_expect_all_applied(s, "api-503-20pct", APPLY_DEADLINE_MS);
    expect_settled(s, "api-outage");
    harness_scenario_stop(s);
    passed = 1;
}

/* ---- 4. the server daemon killed again and again during 500 tasks ---- */

static void test_server_kills(void **state)
{
    struct harness_scenario_opts o = {.poll_interval = 5, .max_inflight = 4};
    struct harness_scenario *s = harness_scenario_new("itf-srvkill", &o, &current);
    /* Latency on the target keeps creates in flight when the server dies,
     * so that some die between the API call and the commit. */
    json_decref(harness_sim_admin_ok(s->dst, "POST", "/faults", "{\"latency_ms\":[30,90]}"));
    start_both(s);

    long long first = sim_bulk(s->src, s->src_dept, 500, "sk-", bulk_fields("server kills"));
    harness_record_events(s->client_state, s->client_id, first, first + 499);
    harness_daemon_wake(s->client, 0);
    for (int k = 1; k <= 6; k++) {
        /* 1 to 2 s between kills: the pace of the scenario. */
        poll(NULL, 0, 1000 + (k * 337) % 1000);
        size_t n = harness_flow_target_count(s);
        EXPECT(s, harness_daemon_running(s->server), "the server daemon died by itself");
        harness_daemon_kill(s->server);
        printf("server-kills: SIGKILL %d with %zu tasks on the target\n", k, n);
        harness_daemon_start(s->server);
    }
    size_t sent = harness_flow_expect_all_applied(s, "server-kills", APPLY_DEADLINE_MS);
    assert_int_equal(sent, 500);
    /* How many kills landed between a create and its commit (the task was
     * then found by its origin block instead of being created again):
     * timing decides, so it is reported, not asserted. */
    printf("server-kills: %zu interrupted creates found again, %zu created again\n",
           harness_daemon_log_count(s->server, "of the interrupted create of task"),
           harness_daemon_log_count(s->server, "no target task found for the interrupted"));
    expect_settled(s, "server-kills");
    harness_scenario_stop(s);
    passed = 1;
}

/* ---- 5. the client daemon stopped while events are recorded ------------ */

static void test_client_stop(void **state)
{
    struct harness_scenario_opts o = {.poll_interval = 3600};
    struct harness_scenario *s = harness_scenario_new("itf-clistop", &o, &current);
    start_both(s);

    long long first = sim_bulk(s->src, s->src_dept, 20, "cs-", bulk_fields("client stop"));
    for (int i = 0; i < 3; i++)
        ctl_taskevent(s, first + i, i == 1);
    harness_record_events(s->client_state, s->client_id, first + 3, first + 19);
    harness_daemon_wake(s->client, 0);
    harness_flow_expect_all_applied(s, "client-stop-before", SHORT_DEADLINE_MS);

    /* SIGTERM while the relay works on 200 fresh events. */
    long long second = sim_bulk(s->src, s->src_dept, 200, "cs2-", bulk_fields("in flight"));
    harness_record_events(s->client_state, s->client_id, second, second + 199);
    harness_daemon_wake(s->client, 0);
    harness_flow_wait_target_count(s, 30, SHORT_DEADLINE_MS);
    harness_daemon_stop(s->client);
    printf("client-stop: client stopped with %zu tasks on the target\n",
           harness_flow_target_count(s));
    EXPECT(s, harness_daemon_wake(s->client, 0) == RT_RETRY,
           "the control socket still answers after the client stopped");

    /* Events while it is down: remotetaskctl must record them and exit 0. */
    for (int i = 0; i < 10; i++) {
        char name[64];
        snprintf(name, sizeof(name), "cs-changed-%d", i);
        sim_change(s->src, first + i, json_pack("{s:s,s:i}", "name", name, "status", 2));
    }
    for (int i = 0; i < 5; i++)
        ctl_taskevent(s, first + i, i % 2);
    harness_record_events(s->client_state, s->client_id, first + 5, first + 9);
    long long third = sim_bulk(s->src, s->src_dept, 30, "cs3-", bulk_fields("while down"));
    harness_record_events(s->client_state, s->client_id, third, third + 29);
    EXPECT(s, harness_outbox_backlog(s->client_state) >= 35,
           "the outbox holds %llu rows, not the events recorded while the client was down",
           (unsigned long long)harness_outbox_backlog(s->client_state));

    harness_daemon_start(s->client);
    size_t sent = harness_flow_expect_all_applied(s, "client-stop", APPLY_DEADLINE_MS);
    assert_int_equal(sent, 250);
    wait_outbox_empty(s, SHORT_DEADLINE_MS);
    expect_settled(s, "client-stop");
    harness_scenario_stop(s);
    passed = 1;
}

/* ---- 6. dead letters: wrong user, another client's department, garbage -- */

static void test_dead_letters(void **state)
{
    struct harness_scenario_opts o = {.poll_interval = 5, .other_client = 1};
    struct harness_scenario *s = harness_scenario_new("itf-dead", &o, &current);
    char id_user[128], id_dept[128], id_garbage[128];
    struct buf body;
    start_both(s);

    snprintf(id_user, sizeof(id_user), "%s:900001:1:wrong-user", s->client_id);
    snprintf(id_dept, sizeof(id_dept), "%s:900002:1:wrong-department", s->client_id);
    snprintf(id_garbage, sizeof(id_garbage), "%s:garbage", s->client_id);

    /* Another client's AMQP user sends a task in this client's name. */
    buf_init(&body, CODEC_MAX_BODY);
    encode_task(s, &body, s->client_id, 900001, 1, s->dst_dept, "forged by another user");
    publish_as(s, s->other_user, id_user, body.data, body.len);
    buf_release(&body);
    /* This client's own user aims at the other client's department. */
    buf_init(&body, CODEC_MAX_BODY);
    encode_task(s, &body, s->client_id, 900002, 1, HARNESS_SIM_DEPT_A,
                "into another client's department");
    publish_as(s, s->client_user, id_dept, body.data, body.len);
    buf_release(&body);
    /* Bytes that are not a message at all. */
    static const char garbage[] = "\xc1\xc1 this is not msgpack \xff";
    publish_as(s, s->client_user, id_garbage, garbage, sizeof(garbage) - 1);

    /* The flow goes on: a real task after them is applied. */
    long long v =
        sim_create(s->src, json_pack("{s:i,s:s,s:s,s:s}", "department", (int)s->src_dept, "name",
                                     "after the bad ones", "type", "manual", "note", "valid"));
    ctl_taskevent(s, v, 0);

    const char *ids[] = {id_user, id_dept, id_garbage};
    struct amqp_test t;
    read_dead(s, ids, 3, &t);
    for (size_t i = 0; i < 3; i++)
        printf("dead-letters: %s -> x-rt-reason \"%s\" x-rt-queue \"%s\" (%d cop%s)\n", ids[i],
               t.reason[i], t.queue[i], t.found[i], t.found[i] == 1 ? "y" : "ies");
    EXPECT(s, strstr(t.reason[0], "user"), "reason for the wrong user: \"%s\"", t.reason[0]);
    EXPECT(s, strstr(t.reason[1], "department"), "reason for the wrong department: \"%s\"",
           t.reason[1]);
    EXPECT(s, strstr(t.reason[2], "undecodable"), "reason for the garbage: \"%s\"", t.reason[2]);
    for (size_t i = 0; i < 3; i++)
        EXPECT(s, t.found[i] == 1, "%s was dead-lettered %d times", ids[i], t.found[i]);

    /* Nothing of them was applied: only the valid task is on the target,
     * and the other client's department is empty. */
    harness_flow_expect_all_applied(s, "dead-letters", SHORT_DEADLINE_MS);
    json_t *other = harness_sim_tasks(s->dst, HARNESS_SIM_DEPT_A);
    EXPECT(s, json_array_size(other) == 0, "%zu tasks landed in the other client's department",
           json_array_size(other));
    json_decref(other);
    EXPECT(s, harness_sim_count(s->dst, "func=task.edit&write=1") == 1,
           "the target got %ld writes, not the one of the valid task",
           harness_sim_count(s->dst, "func=task.edit&write=1"));
    harness_scenario_stop(s);
    passed = 1;
}

/* ---- 7. a create interrupted between the API call and the commit -------- */

/* How many times needle occurs in hay. */
static size_t count_occurrences(const char *hay, const char *needle)
{
    size_t n = 0;
    for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle))
        n++;
    return n;
}

static void test_interrupted_create(void **state)
{
    struct harness_scenario *s = harness_scenario_new("itf-adopt", NULL, &current);
    char origin[NOTES_ORIGIN_MAX + 1], err[512];
    start_both(s);

    /* The state a crash leaves when it strikes after the target created the
     * task and before the server committed the link: the intent (a link
     * with dst_task 0) in the server's store, and the task on the target
     * with the origin block in its note. The server is stopped meanwhile;
     * its store is the daemon's own file. */
    harness_daemon_stop(s->server);
    long long src_id =
        sim_create(s->src, json_pack("{s:i,s:s,s:s,s:s,s:s}", "department", (int)s->src_dept,
                                     "name", "interrupted & = + %", "type", "manual", "note",
                                     "made once", "deadline", "2033-03-03 03:03:03"));
    notes_origin_forward(origin, sizeof(origin), s->client_id, src_id);
    char *note = notes_append("", origin, "made once");
    assert_non_null(note);
    /* The task as the interrupted create made it, from an older message:
     * the source's name changed since, so the target shows the new name
     * only once the server has adopted the task and updated it. */
    long long made =
        sim_create(s->dst, json_pack("{s:i,s:s,s:s,s:s,s:s}", "department", (int)s->dst_dept,
                                     "name", "interrupted (old name)", "type", "manual", "note",
                                     note, "deadline", "2033-03-03 03:03:03"));
    free(note);
    sim_change(s->src, src_id, json_pack("{s:s}", "name", "interrupted & = + % (renamed)"));
    /* A task target staff made in the department: viewed, never adopted. */
    long long staff =
        sim_create(s->dst, json_pack("{s:i,s:s,s:s}", "department", (int)s->dst_dept, "name",
                                     "made by staff", "note", "nothing to do with the bridge"));
    struct store *st = store_open(s->server_state, err, sizeof(err));
    EXPECT(s, st, "cannot open the server's store: %s", err);
    struct store_link link = {0};
    snprintf(link.client, sizeof(link.client), "%s", s->client_id);
    link.src_task = src_id;
    EXPECT(s, store_link_put(st, &link) == RT_OK, "store_link_put: %s", store_strerror(st));
    store_free(st);

    long long creates = harness_sim_count(s->dst, "func=task.edit&write=1");
    ctl_taskevent(s, src_id, 0);
    harness_daemon_start(s->server);

    /* The server must find the task it made, not make a second one. */
    struct harness_flow_wait w = {.client = s->client_id};
    w.src = harness_sim_tasks(s->src, s->src_dept);
    int met = 0;
    json_t *dst =
        harness_wait_tasks(s->dst, s->dst_dept, harness_flow_done, &w, SHORT_DEADLINE_MS, &met);
    printf("interrupted-create: sent=%zu applied=%zu lost=%zu duplicated=%zu\n", w.count.sent,
           w.count.applied, w.count.lost, w.count.duplicated);
    json_t *t = target_of(s, dst, src_id);
    long long got = jint(t, "id");
    size_t blocks = count_occurrences(jstr(t, "note"), "made once");
    printf("interrupted-create: target task %lld (made before the crash: %lld), \"made once\" "
           "%zu time(s) in its note, %lld API writes\n",
           got, made, blocks, harness_sim_count(s->dst, "func=task.edit&write=1") - creates);
    EXPECT(s, met, "the interrupted create was not completed");
    EXPECT(s, w.count.duplicated == 0, "the interrupted create made a second task");
    EXPECT_INT(s, got, made);
    EXPECT_INT(s, json_array_size(dst), 2);
    EXPECT(s,
           task_by_id(dst, staff) &&
               !harness_flow_note_origin(jstr(task_by_id(dst, staff), "note"), s->client_id),
           "the staff's task was changed");
    EXPECT(s, harness_daemon_log_count(s->server, "of the interrupted create of task") > 0,
           "the server's log does not say it found the interrupted create");
    json_decref(dst);
    json_decref(w.src);
    expect_settled(s, "interrupted-create");
    harness_scenario_stop(s);
    passed = 1;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_flows, teardown),
        cmocka_unit_test_teardown(test_dead_letters, teardown),
        cmocka_unit_test_teardown(test_interrupted_create, teardown),
        cmocka_unit_test_teardown(test_client_stop, teardown),
        cmocka_unit_test_teardown(test_server_kills, teardown),
        cmocka_unit_test_teardown(test_api_outage, teardown),
        cmocka_unit_test_teardown(test_broker_kills, teardown),
    };
    /* The daemons' output goes to their logs; ours is line-buffered so the
     * report lines interleave with cmocka's in order. */
    setvbuf(stdout, NULL, _IOLBF, 0);
    /* RT_IT_FILTER=test_flows (a cmocka pattern) runs some of them, for a
     * developer's run; scripts/test runs them all. */
    const char *filter = getenv("RT_IT_FILTER");
    if (filter && *filter)
        cmocka_set_test_filter(filter);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
