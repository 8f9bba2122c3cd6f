/*
 * it_dlq.c - dead letters and resync end to end (issue 5, item 3).
 *
 * A real RabbitMQ node (scripts/test's private node), two BILLmanager
 * emulators and two remotetaskd processes (tests/integration/
 * harness_daemon.h). The target's API user is first denied task.edit, so
 * the server's forward applier dead-letters the client's task with an
 * "access" reason; the cause is then fixed (the emulator's admin /seed
 * gives the right back) and `remotetaskctl --command dlq replay --id X`
 * sends the letter again: the task must be applied exactly once (counted
 * by the origin block the applier writes into the target's note). Around
 * that: `dlq list` shows the letter with its reason before and not after,
 * `dlq purge` removes only this configuration's letters (another client's
 * letter stays in the shared queue), and `resync --elid N` republishes a
 * task (a new seq reaches the server) while applying nothing new.
 *
 * broker_get() itself is checked first on a connection of the test's own.
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
#include "fp.h"
#include "harness.h"
#include "harness_daemon.h"
#include "harness_rabbit.h"
#include "harness_sim.h"
#include "notes.h"
#include "store.h"

/* Generous for a loaded 2-core machine with ASan; every wait ends as soon
 * as its condition holds. */
#define DEADLINE_MS 60000

static struct harness_scenario *current;

static int teardown(void **state)
{
    harness_scenario_free(current);
    current = NULL;
    return 0;
}

#define EXPECT(s, cond, ...)                                                                       \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            if (s)                                                                                 \
                harness_scenario_print_logs(s);                                                    \
            fail_msg(__VA_ARGS__);                                                                 \
        }                                                                                          \
    } while (0)

/* ---- a broker connection of the test's own ------------------------------ */

struct tconn {
    struct broker *b;
    int acked, failed;
};

static void tconn_confirm(void *arg, uint64_t tag, enum broker_fate fate)
{
    struct tconn *t = arg;
    if (fate == BROKER_ACKED)
        t->acked++;
    else
        t->failed++;
}

static void tconn_delivery(void *arg, const struct broker_delivery *d)
{
}

static void tconn_open(struct tconn *t, const char *user, const char *pass)
{
    struct broker_opts o;
    char err[512];
    memset(t, 0, sizeof(*t));
    harness_rabbit_opts(&o, user, pass);
    o.on_confirm = tconn_confirm;
    o.on_delivery = tconn_delivery;
    o.cb_arg = t;
    t->b = broker_new(&o, err, sizeof(err));
    if (!t->b)
        fail_msg("broker_new: %s", err);
    if (broker_connect(t->b) != RT_OK)
        fail_msg("broker_connect as %s: %s", user, broker_strerror(t->b));
}

/* Publishes and waits for the broker's ack. */
static void tconn_publish(struct tconn *t, const char *exchange, const char *key, const char *id,
                          const struct broker_header *h, size_t nh, const char *body)
{
    struct broker_props p;
    memset(&p, 0, sizeof(p));
    p.message_id = id;
    p.headers = h;
    p.n_headers = nh;
    int before = t->acked + t->failed;
    if (broker_publish(t->b, exchange, key, &p, body, strlen(body), NULL) != RT_OK)
        fail_msg("publishing %s: %s", id, broker_strerror(t->b));
    long long deadline = harness_now_ms() + 10000;
    while (t->acked + t->failed == before) {
        if (harness_now_ms() > deadline)
            fail_msg("no confirm for %s", id);
        struct pollfd pfd = {.fd = broker_fd(t->b), .events = POLLIN};
        if (!broker_wants_read_now(t->b))
            poll(&pfd, 1, 100);
        if (broker_process(t->b) != RT_OK)
            fail_msg("connection lost publishing %s: %s", id, broker_strerror(t->b));
    }
    if (t->failed)
        fail_msg("the broker did not take %s", id);
}

/* ---- 1. broker_get ------------------------------------------------------ */

static void test_broker_get(void **state)
{
    char user[64], client[64], id[128], queue[BROKER_NAME_MAX];
    const char *pass = "itdlq-get-password";
    struct tconn t;
    struct broker_delivery *d = NULL;
    uint32_t remaining = 99;

    harness_rabbit_unique(user, sizeof(user), "itdlq-get");
    harness_rabbit_unique(client, sizeof(client), "itdlqget");
    harness_rabbit_adduser(user, pass);
    tconn_open(&t, user, pass);
    const char *clients[] = {client};
    assert_int_equal(broker_declare(t.b, clients, 1), RT_OK);

    /* An empty queue: OK and no message. */
    assert_int_equal(broker_queue_name(queue, sizeof(queue), BROKER_FORWARD, client), 0);
    assert_int_equal(broker_get(t.b, queue, &d, &remaining), RT_OK);
    assert_null(d);
    assert_int_equal(remaining, 0);

    /* A message comes back whole: properties, headers, body. */
    snprintf(id, sizeof(id), "%s:get:1", client);
    struct broker_header h[] = {
        {"x-rt-reason", BROKER_HEADER_STR, "a reason", 0},
        {"x-rt-task", BROKER_HEADER_INT, NULL, 4242},
    };
    tconn_publish(&t, BROKER_EXCHANGE_FORWARD, client, id, h, 2, "body bytes");
    tconn_publish(&t, BROKER_EXCHANGE_FORWARD, client, "second", NULL, 0, "2");
    assert_int_equal(broker_get(t.b, queue, &d, &remaining), RT_OK);
    assert_non_null(d);
    assert_int_equal(remaining, 1);
    assert_string_equal(d->message_id, id);
    assert_string_equal(d->user_id, user);
    assert_string_equal(d->queue, queue);
    assert_string_equal(d->exchange, BROKER_EXCHANGE_FORWARD);
    assert_string_equal(d->routing_key, client);
    assert_string_equal(d->content_type, BROKER_CONTENT_TYPE);
    assert_true(d->timestamp > 0);
    assert_int_equal(d->len, strlen("body bytes"));
    assert_memory_equal(d->body, "body bytes", d->len);
    assert_string_equal(broker_delivery_header_str(d, "x-rt-reason"), "a reason");
    int64_t task = 0;
    assert_int_equal(broker_delivery_header_int(d, "x-rt-task", &task), 0);
    assert_int_equal(task, 4242);
    uint64_t first_tag = d->delivery_tag;
    broker_delivery_free(d);

    /* Unacked, it stays away; requeued, it is read again. */
    assert_int_equal(broker_get(t.b, queue, &d, NULL), RT_OK);
    assert_non_null(d);
    assert_string_equal(d->message_id, "second");
    assert_int_equal(broker_ack(t.b, d->delivery_tag), RT_OK);
    broker_delivery_free(d);
    assert_int_equal(broker_get(t.b, queue, &d, NULL), RT_OK);
    assert_null(d);
    assert_int_equal(broker_reject(t.b, first_tag, 1), RT_OK);
    assert_int_equal(broker_get(t.b, queue, &d, NULL), RT_OK);
    assert_non_null(d);
    assert_string_equal(d->message_id, id);
    assert_true(d->redelivered);
    assert_int_equal(broker_ack(t.b, d->delivery_tag), RT_OK);
    broker_delivery_free(d);

    /* A queue that does not exist: REJECT, and the connection must be
     * made again. */
    assert_int_equal(broker_get(t.b, "remotetask.no-such-queue", &d, NULL), RT_REJECT);
    assert_null(d);
    assert_non_null(strstr(broker_strerror(t.b), "no-such-queue"));
    assert_false(broker_connected(t.b));
    assert_int_equal(broker_connect(t.b), RT_OK);
    broker_free(t.b);

    /* Clean up the client's queues as the harness does for scenarios. */
    harness_rabbit_delete_queue(queue);
    assert_int_equal(broker_queue_name(queue, sizeof(queue), BROKER_REVERSE, client), 0);
    harness_rabbit_delete_queue(queue);
    for (int dir = BROKER_FORWARD; dir <= BROKER_REVERSE; dir++)
        for (unsigned tier = 0; tier < BROKER_RETRY_TIERS; tier++) {
            assert_int_equal(
                broker_retry_queue_name(queue, sizeof(queue), (enum broker_dir)dir, client, tier),
                0);
            harness_rabbit_delete_queue(queue);
        }
    harness_rabbit_delete_user(user);
}

/* ---- 2. dlq list / replay / purge, resync ------------------------------ */

/* `dlq list --json` as parsed JSON (an array; new reference). */
static json_t *dlq_list(struct harness_scenario *s, const char *conf)
{
    char *out;
    int rc = harness_ctl_list(conf, &out, "--command", "dlq", "list", "--json", (const char *)NULL);
    json_error_t jerr;
    json_t *arr = json_loads(out, 0, &jerr);
    EXPECT(s, rc == 0 && json_is_array(arr), "dlq list --json exited %d with:\n%s", rc, out);
    free(out);
    return arr;
}

static json_t *letter_by_id(json_t *arr, const char *id)
{
    size_t i;
    json_t *o;
    json_array_foreach(arr, i, o)
    {
        const char *v = json_string_value(json_object_get(o, "id"));
        if (v && strcmp(v, id) == 0)
            return o;
    }
    return NULL;
}

static json_t *letter_by_task(json_t *arr, long long task)
{
    size_t i;
    json_t *o;
    json_array_foreach(arr, i, o)
    {
        if (json_integer_value(json_object_get(o, "task")) == task)
            return o;
    }
    return NULL;
}

/* Target tasks whose note names (client, task) as their origin. */
struct origin_wait {
    const char *client;
    long long task;
    size_t count;
};

static int origin_count(json_t *tasks, void *arg)
{
    struct origin_wait *w = arg;
    char origin[NOTES_ORIGIN_MAX + 1];
    size_t i;
    json_t *t;
    notes_origin_forward(origin, sizeof(origin), w->client, w->task);
    w->count = 0;
    json_array_foreach(tasks, i, t)
    {
        const char *note = json_string_value(json_object_get(t, "note"));
        if (note && notes_has_origin(note, origin))
            w->count++;
    }
    return w->count >= 1;
}

static size_t target_copies(struct harness_scenario *s, long long task, long long timeout_ms)
{
    struct origin_wait w = {.client = s->client_id, .task = task};
    json_decref(harness_wait_tasks(s->dst, s->dst_dept, origin_count, &w, timeout_ms, NULL));
    return w.count;
}

static void wait_forward_drained(struct harness_scenario *s)
{
    char name[BROKER_NAME_MAX];
    struct harness_queue q;
    long long deadline = harness_now_ms() + DEADLINE_MS;
    assert_int_equal(broker_queue_name(name, sizeof(name), BROKER_FORWARD, s->client_id), 0);
    for (;;) {
        EXPECT(s, harness_rabbit_queue(name, &q), "the queue %s does not exist", name);
        if (q.messages == 0)
            return;
        EXPECT(s, harness_now_ms() < deadline, "%s still holds %ld messages", name, q.messages);
        poll(NULL, 0, 100);
    }
}

static struct store *open_store(const char *dir)
{
    char err[512];
    struct store *st = store_open(dir, err, sizeof(err));
    if (!st)
        fail_msg("store_open(%s): %s", dir, err);
    return st;
}

static void sim_seed_user(struct harness_sim *sim, int deny_edit)
{
    json_t *seed = json_pack("{s:[{s:s,s:s,s:[]}]}", "users", "login", HARNESS_SIM_LOGIN,
                             "password", HARNESS_SIM_PASSWORD, "deny");
    assert_non_null(seed);
    if (deny_edit)
        json_array_append_new(
            json_object_get(json_array_get(json_object_get(seed, "users"), 0), "deny"),
            json_string("task.edit"));
    char *body = json_dumps(seed, JSON_COMPACT);
    json_decref(seed);
    assert_non_null(body);
    json_decref(harness_sim_admin_ok(sim, "POST", "/seed", body));
    free(body);
}

static void test_dlq_and_resync(void **state)
{
    struct harness_scenario_opts o = {.poll_interval = 5, .other_client = 1};
    struct harness_scenario *s = harness_scenario_new("itdlq", &o, &current);
    char *out = NULL, elid[32], dst_elid[32], forged_id[128], purge_id[128], fq[BROKER_NAME_MAX];
    char dead_x[BROKER_NAME_MAX];
    int rc;

    /* The cause: the target's API user may not call task.edit. */
    sim_seed_user(s->dst, 1);
    harness_daemon_start(s->server);
    harness_daemon_start(s->client);

    /* Bad command lines: exit 2. */
    rc = harness_ctl_list(s->client_conf, &out, "--command", "dlq", (const char *)NULL);
    EXPECT(s, rc == 2, "dlq without an action exited %d: %s", rc, out);
    free(out);
    rc = harness_ctl_list(s->client_conf, &out, "--command", "dlq", "replay", (const char *)NULL);
    EXPECT(s, rc == 2, "dlq replay without --id/--all exited %d: %s", rc, out);
    free(out);
    rc = harness_ctl_list(s->client_conf, &out, "--command", "resync", (const char *)NULL);
    EXPECT(s, rc == 2, "resync without --elid/--all exited %d: %s", rc, out);
    free(out);

    /* A task of the client goes forward and dies on the target. */
    json_t *fields = json_pack("{s:i,s:s,s:s,s:s}", "department", (int)s->src_dept, "name",
                               "dead then replayed", "type", "manual", "note", "first words");
    char *body = json_dumps(fields, JSON_COMPACT);
    json_decref(fields);
    json_t *r = harness_sim_admin_ok(s->src, "POST", "/tasks", body);
    free(body);
    long long task = json_integer_value(json_object_get(r, "id"));
    json_decref(r);
    assert_true(task > 0);
    snprintf(elid, sizeof(elid), "%lld", task);
    rc = harness_ctl_list(s->client_conf, &out, "--command", "taskevent", "--elid", elid,
                          (const char *)NULL);
    EXPECT(s, rc == 0, "taskevent exited %d: %s", rc, out);
    free(out);

    /* Task messages the server could not apply are the server's letters:
     * they wait in remotetask.dead.C.forward, which its dlq commands read. */
    json_t *arr = NULL, *letter = NULL;
    long long deadline = harness_now_ms() + DEADLINE_MS;
    for (;;) {
        json_decref(arr);
        arr = dlq_list(s, s->server_conf);
        if ((letter = letter_by_task(arr, task)) != NULL)
            break;
        EXPECT(s, harness_now_ms() < deadline, "task %lld never became a dead letter", task);
        poll(NULL, 0, 250);
    }
    char dead_id[256];
    snprintf(dead_id, sizeof(dead_id), "%s", json_string_value(json_object_get(letter, "id")));
    const char *reason = json_string_value(json_object_get(letter, "reason"));
    printf("dead letter %s: client %s task %lld direction %s attempts %lld time %s reason \"%s\" "
           "written by %s\n",
           dead_id, json_string_value(json_object_get(letter, "client")), task,
           json_string_value(json_object_get(letter, "direction")),
           json_integer_value(json_object_get(letter, "attempts")),
           json_string_value(json_object_get(letter, "time")), reason,
           json_string_value(json_object_get(letter, "written_by")));
    EXPECT(s, strcmp(json_string_value(json_object_get(letter, "client")), s->client_id) == 0,
           "the letter's client is wrong");
    EXPECT(s, strcmp(json_string_value(json_object_get(letter, "direction")), "forward") == 0,
           "the letter's direction is wrong");
    EXPECT(s, reason && strstr(reason, "access"), "the reason \"%s\" does not say access",
           reason ? reason : "");
    EXPECT(s, strcmp(json_string_value(json_object_get(letter, "kind")), "api") == 0,
           "the letter's kind is not api");
    EXPECT(s, json_is_true(json_object_get(letter, "trusted")),
           "the server's own letter is untrusted");
    EXPECT(s, json_string_value(json_object_get(letter, "time"))[0] == '2',
           "the letter has no time");
    json_decref(arr);
    arr = NULL;
    EXPECT(s, target_copies(s, task, 0) == 0, "the dead task was applied anyway");

    /* The table too; and the client's configuration reads only its own
     * reverse letters: none. */
    rc = harness_ctl_list(s->server_conf, &out, "--command", "dlq", "list", (const char *)NULL);
    EXPECT(s, rc == 0 && strstr(out, dead_id) && strstr(out, "REASON"),
           "dlq list exited %d with:\n%s", rc, out);
    printf("dlq list:\n%s", out);
    free(out);
    arr = dlq_list(s, s->client_conf);
    EXPECT(s, json_array_size(arr) == 0, "the client's configuration lists %zu forward letters",
           json_array_size(arr));
    json_decref(arr);

    /* Two letters planted in this client's forward dead-letter queue: one
     * by the client's own user (garbage: its own message, which the broker
     * vouches for), one forged by another client's user, claiming to come
     * from this client (x-rt-* headers anyone can write). */
    struct tconn t, f;
    tconn_open(&t, s->client_user, s->amqp_password);
    tconn_open(&f, s->other_user, s->amqp_password);
    assert_int_equal(broker_dead_exchange(dead_x, sizeof(dead_x), s->client_id), 0);
    snprintf(forged_id, sizeof(forged_id), "%s:%lld:999", s->client_id, task);
    snprintf(purge_id, sizeof(purge_id), "%s:777:1", s->client_id);
    snprintf(fq, sizeof(fq), "remotetask.forward.%s", s->client_id);
    struct broker_header fh[] = {
        {"x-rt-reason", BROKER_HEADER_STR, "forged", 0},
        {"x-rt-client", BROKER_HEADER_STR, s->client_id, 0},
        {"x-rt-queue", BROKER_HEADER_STR, fq, 0},
        {"x-rt-user", BROKER_HEADER_STR, s->client_user, 0},
        {"x-rt-message-id", BROKER_HEADER_STR, forged_id, 0},
    };
    tconn_publish(&f, dead_x, "forward", forged_id, fh, 5, "forged body");
    tconn_publish(&t, dead_x, "forward", purge_id, NULL, 0, "\xc1");
    arr = dlq_list(s, s->server_conf);
    letter = letter_by_id(arr, purge_id);
    EXPECT(s, letter && json_is_true(json_object_get(letter, "trusted")),
           "the client's own letter is not listed as trusted");
    letter = letter_by_id(arr, forged_id);
    EXPECT(s, letter && json_is_false(json_object_get(letter, "trusted")),
           "the forged letter is not listed as untrusted");
    printf("forged letter: reason \"%s\"\n",
           letter ? json_string_value(json_object_get(letter, "reason")) : "(none)");
    json_decref(arr);

    /* Unknown id: exit 1, nothing replayed. The forged one: never replayed. */
    rc = harness_ctl_list(s->server_conf, &out, "--command", "dlq", "replay", "--id", "no-such-id",
                          (const char *)NULL);
    EXPECT(s, rc == 1, "replay of an unknown id exited %d: %s", rc, out);
    free(out);
    rc = harness_ctl_list(s->server_conf, &out, "--command", "dlq", "replay", "--id", forged_id,
                          (const char *)NULL);
    printf("dlq replay --id %s (forged): exit %d: %s", forged_id, rc, out);
    EXPECT(s, rc == 1 && strstr(out, "replayed 0") && strstr(out, "not replayed"),
           "the forged letter's replay exited %d: %s", rc, out);
    free(out);
    arr = dlq_list(s, s->server_conf);
    EXPECT(s, letter_by_id(arr, forged_id), "the forged letter vanished when refused");
    json_decref(arr);

    /* Fix the cause, replay from the server side: the copy goes through
     * the client's retry exchange with x-rt-user from what the broker
     * vouched for, and the forward applier takes it. */
    sim_seed_user(s->dst, 0);
    long writes_before = harness_sim_count(s->dst, "func=task.edit&write=1");
    rc = harness_ctl_list(s->server_conf, &out, "--command", "dlq", "replay", "--id", dead_id,
                          (const char *)NULL);
    printf("dlq replay --id %s: exit %d: %s", dead_id, rc, out);
    EXPECT(s, rc == 0 && strstr(out, "replayed 1"), "replay exited %d: %s", rc, out);
    free(out);
    EXPECT(s, target_copies(s, task, DEADLINE_MS) == 1, "the replayed task is not on the target");
    wait_forward_drained(s);
    size_t copies = target_copies(s, task, 0);
    printf("replayed task %lld: %zu cop%s on the target\n", task, copies,
           copies == 1 ? "y" : "ies");
    EXPECT(s, copies == 1, "the replayed task is %zu times on the target", copies);
    EXPECT(s, harness_sim_count(s->dst, "func=task.edit&write=1") == writes_before + 1,
           "the replay made %ld writes, not one",
           harness_sim_count(s->dst, "func=task.edit&write=1") - writes_before);
    arr = dlq_list(s, s->server_conf);
    EXPECT(s, !letter_by_id(arr, dead_id), "%s is still listed after its replay", dead_id);
    EXPECT(s, letter_by_id(arr, purge_id), "%s vanished", purge_id);
    json_decref(arr);

    /* The forged letter goes with purge --id. */
    rc = harness_ctl_list(s->server_conf, &out, "--command", "dlq", "purge", "--id", forged_id,
                          "--yes", (const char *)NULL);
    EXPECT(s, rc == 0 && strstr(out, "purged 1"), "purge --id exited %d: %s", rc, out);
    free(out);

    /* replay --all takes what the queue held when it started: the garbage
     * letter goes forward once, dies again as undecodable, and is not
     * replayed a second time by the same run. */
    rc = harness_ctl_list(s->server_conf, &out, "--command", "dlq", "replay", "--all",
                          (const char *)NULL);
    printf("dlq replay --all: exit %d: %s", rc, out);
    EXPECT(s, rc == 0 && strstr(out, "replayed 1"), "replay --all exited %d: %s", rc, out);
    free(out);
    deadline = harness_now_ms() + DEADLINE_MS;
    for (;;) {
        arr = dlq_list(s, s->server_conf);
        letter = letter_by_id(arr, purge_id);
        reason = letter ? json_string_value(json_object_get(letter, "reason")) : NULL;
        int again = reason && strstr(reason, "undecodable");
        json_decref(arr);
        if (again)
            break;
        EXPECT(s, harness_now_ms() < deadline, "the replayed garbage did not die again");
        poll(NULL, 0, 250);
    }
    EXPECT(s, target_copies(s, task, 0) == 1, "replay --all made a second target task");

    /* Purge: without --yes it only tells; with it, the letters go. */
    rc = harness_ctl_list(s->server_conf, &out, "--command", "dlq", "purge", (const char *)NULL);
    EXPECT(s, rc == 2 && strstr(out, purge_id) && strstr(out, "--yes"),
           "purge without --yes exited %d: %s", rc, out);
    free(out);
    arr = dlq_list(s, s->server_conf);
    EXPECT(s, letter_by_id(arr, purge_id), "purge without --yes removed %s", purge_id);
    json_decref(arr);
    rc = harness_ctl_list(s->server_conf, &out, "--command", "dlq", "purge", "--yes",
                          (const char *)NULL);
    printf("dlq purge --yes: exit %d: %s", rc, out);
    EXPECT(s, rc == 0 && strstr(out, "purged 1"), "purge --yes exited %d: %s", rc, out);
    free(out);
    arr = dlq_list(s, s->server_conf);
    EXPECT(s, json_array_size(arr) == 0, "%zu letters of this client are left after purge",
           json_array_size(arr));
    json_decref(arr);
    broker_free(t.b);
    broker_free(f.b);

    /* resync on the client: the task goes out again with a new seq, and
     * the server applies nothing (nothing changed). */
    struct store *cst = open_store(s->client_state);
    struct store_fwd fw;
    assert_int_equal(store_fwd_get(cst, s->client_id, task, &fw), RT_OK);
    uint64_t old_seq = fw.seq;
    writes_before = harness_sim_count(s->dst, "func=task.edit&write=1");
    rc = harness_ctl_list(s->client_conf, &out, "--command", "resync", "--elid", elid,
                          (const char *)NULL);
    printf("resync --elid %s (client): exit %d: %s", elid, rc, out);
    EXPECT(s, rc == 0 && strstr(out, "forgot what was sent"), "resync exited %d: %s", rc, out);
    free(out);
    deadline = harness_now_ms() + DEADLINE_MS;
    for (;;) {
        assert_int_equal(store_fwd_get(cst, s->client_id, task, &fw), RT_OK);
        if (fw.seq > old_seq && fw.fp_seq == fw.seq && fw.fp[0])
            break;
        EXPECT(s, harness_now_ms() < deadline, "task %lld was not published again (seq %llu)", task,
               (unsigned long long)fw.seq);
        poll(NULL, 0, 100);
    }
    /* resync --all: every known task of the client goes out again. */
    old_seq = fw.seq;
    rc = harness_ctl_list(s->client_conf, &out, "--command", "resync", "--all", (const char *)NULL);
    printf("resync --all (client): exit %d: %s", rc, out);
    EXPECT(s, rc == 0 && strstr(out, "for 1 task") && strstr(out, "recorded 1 event"),
           "resync --all exited %d: %s", rc, out);
    free(out);
    deadline = harness_now_ms() + DEADLINE_MS;
    for (;;) {
        assert_int_equal(store_fwd_get(cst, s->client_id, task, &fw), RT_OK);
        if (fw.seq > old_seq && fw.fp_seq == fw.seq && fw.fp[0])
            break;
        EXPECT(s, harness_now_ms() < deadline, "resync --all did not publish task %lld", task);
        poll(NULL, 0, 100);
    }
    store_free(cst);
    struct store *sst = open_store(s->server_state);
    struct store_link link;
    deadline = harness_now_ms() + DEADLINE_MS;
    for (;;) {
        assert_int_equal(store_link_get(sst, s->client_id, task, &link), RT_OK);
        if (link.found && link.last_seq >= fw.seq)
            break;
        EXPECT(s, harness_now_ms() < deadline, "the server did not take seq %llu of task %lld",
               (unsigned long long)fw.seq, task);
        poll(NULL, 0, 100);
    }
    wait_forward_drained(s);
    printf("resync: seq %llu -> %llu, applied by the server, %ld writes on the target\n",
           (unsigned long long)old_seq, (unsigned long long)fw.seq,
           harness_sim_count(s->dst, "func=task.edit&write=1") - writes_before);
    EXPECT(s, harness_sim_count(s->dst, "func=task.edit&write=1") == writes_before,
           "resync of an unchanged task wrote to the target");
    EXPECT(s, target_copies(s, task, 0) == 1, "resync made a second target task");

    /* resync on the server, by the TARGET id: the state published for the
     * link is forgotten (or already published again, by a daemon that runs
     * a cycle on request). */
    assert_true(link.dst_task > 0);
    snprintf(dst_elid, sizeof(dst_elid), "%lld", (long long)link.dst_task);
    link.rev_fp[0] = '\0';
    snprintf(link.rev_fp, sizeof(link.rev_fp), "list-fp");
    assert_int_equal(fp_set_put(link.applied, sizeof(link.applied), "state", "5eed"), 0);
    assert_int_equal(store_link_put(sst, &link), RT_OK);
    uint64_t old_rev = link.rev_seq;
    rc = harness_ctl_list(s->server_conf, &out, "--command", "resync", "--elid", dst_elid,
                          (const char *)NULL);
    printf("resync --elid %s (server): exit %d: %s", dst_elid, rc, out);
    EXPECT(s, rc == 0 && strstr(out, "forgot the state"), "server resync exited %d: %s", rc, out);
    free(out);
    assert_int_equal(store_link_get(sst, s->client_id, task, &link), RT_OK);
    char st_fp[64];
    int has_state = fp_set_get(link.applied, "state", st_fp, sizeof(st_fp)) == 0;
    EXPECT(s, (link.rev_fp[0] == '\0' && !has_state) || link.rev_seq > old_rev,
           "server resync left rev_fp \"%s\" and applied \"%s\"", link.rev_fp, link.applied);
    EXPECT(s, fp_set_get(link.applied, "name", st_fp, sizeof(st_fp)) == 0,
           "server resync lost the forward keys of applied: \"%s\"", link.applied);
    store_free(sst);
    rc = harness_ctl_list(s->server_conf, &out, "--command", "resync", "--elid", "999999",
                          (const char *)NULL);
    EXPECT(s, rc == 1 && strstr(out, "not linked"), "resync of an unlinked task exited %d: %s", rc,
           out);
    free(out);

    harness_scenario_stop(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_broker_get),
        cmocka_unit_test_teardown(test_dlq_and_resync, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
