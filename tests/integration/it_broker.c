/*
 * it_broker.c - common/broker against the private RabbitMQ node.
 *
 * Every test uses its own client id (and so its own queues) and deletes
 * them at the end, so the tests neither see nor disturb each other.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <sys/socket.h>
#include <unistd.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "broker.h"
#include "harness.h"
#include "harness_rabbit.h"
#include "log.h"

#define MAX_TAGS 8192
#define MAX_RECS 256
#define WAIT_MS 30000

struct rec {
    uint64_t tag;
    int redelivered;
    char queue[256], exchange[256], key[256], message_id[256], user_id[256], content_type[64];
    int64_t timestamp;
    int has_attempts;
    int64_t attempts;
    char reason[128];
    size_t len;
    int too_big;
    char body[64];
};

struct ctx {
    struct broker *b;
    unsigned char fate[MAX_TAGS + 1]; /* fate + 1 per tag, 0 = none yet */
    size_t n_fates, n_acked, n_nacked, n_returned, n_lost, dup_fates;
    size_t n_recs;
    struct rec recs[MAX_RECS];
    int ack_on_delivery;
    size_t n_cancel;
    char cancelled[256];
};

static void on_confirm(void *arg, uint64_t tag, enum broker_fate fate)
{
    struct ctx *c = arg;
    if (tag == 0 || tag > MAX_TAGS)
        fail_msg("confirm for tag %llu out of the test's range", (unsigned long long)tag);
    if (c->fate[tag])
        c->dup_fates++;
    c->fate[tag] = (unsigned char)(fate + 1);
    c->n_fates++;
    switch (fate) {
    case BROKER_ACKED: c->n_acked++; break;
    case BROKER_NACKED: c->n_nacked++; break;
    case BROKER_RETURNED: c->n_returned++; break;
    case BROKER_LOST: c->n_lost++; break;
    }
}

static void on_delivery(void *arg, const struct broker_delivery *d)
{
    struct ctx *c = arg;
    if (c->n_recs < MAX_RECS) {
        struct rec *r = &c->recs[c->n_recs];
        memset(r, 0, sizeof(*r));
        r->tag = d->delivery_tag;
        r->redelivered = d->redelivered;
        snprintf(r->queue, sizeof(r->queue), "%s", d->queue);
        snprintf(r->exchange, sizeof(r->exchange), "%s", d->exchange);
        snprintf(r->key, sizeof(r->key), "%s", d->routing_key);
        snprintf(r->message_id, sizeof(r->message_id), "%s", d->message_id);
        snprintf(r->user_id, sizeof(r->user_id), "%s", d->user_id);
        snprintf(r->content_type, sizeof(r->content_type), "%s", d->content_type);
        r->timestamp = d->timestamp;
        r->has_attempts = broker_delivery_header_int(d, "x-rt-attempts", &r->attempts) == 0;
        const char *why = broker_delivery_header_str(d, "x-rt-reason");
        snprintf(r->reason, sizeof(r->reason), "%s", why ? why : "");
        r->len = d->len;
        r->too_big = d->too_big;
        if (d->body)
            snprintf(r->body, sizeof(r->body), "%.*s", (int)(d->len < 63 ? d->len : 63),
                     (const char *)d->body);
    }
    c->n_recs++;
    if (c->ack_on_delivery)
        assert_int_equal(broker_ack(c->b, d->delivery_tag), RT_OK);
}

static void on_cancel(void *arg, const char *queue)
{
    struct ctx *c = arg;
    c->n_cancel++;
    snprintf(c->cancelled, sizeof(c->cancelled), "%s", queue);
}

static void ctx_reset_fates(struct ctx *c)
{
    memset(c->fate, 0, sizeof(c->fate));
    c->n_fates = c->n_acked = c->n_nacked = c->n_returned = c->n_lost = c->dup_fates = 0;
}

static void with_callbacks(struct broker_opts *o, struct ctx *c)
{
    o->on_confirm = on_confirm;
    o->on_delivery = on_delivery;
    o->on_cancel = on_cancel;
    o->cb_arg = c;
}

/* A new broker for c, connected; fails the test otherwise. */
static void open_broker(struct ctx *c, struct broker_opts *o)
{
    char err[256];
    with_callbacks(o, c);
    c->b = broker_new(o, err, sizeof(err));
    if (!c->b)
        fail_msg("broker_new: %s", err);
    rt_status st = broker_connect(c->b);
    if (st != RT_OK)
        fail_msg("broker_connect: %s (%s)", broker_strerror(c->b), rt_status_name(st));
}

/* A new broker for c, not connected. */
static void open_broker_nowait(struct ctx *c, struct broker_opts *o)
{
    char err[256];
    with_callbacks(o, c);
    c->b = broker_new(o, err, sizeof(err));
    if (!c->b)
        fail_msg("broker_new: %s", err);
}

/* cmocka setup and teardown: a failing test longjmps out, so what it
 * holds is freed here, not at its end. */
static int ctx_setup(void **state)
{
    struct ctx *c = calloc(1, sizeof(*c));
    if (!c)
        return -1;
    *state = c;
    return 0;
}

static int ctx_teardown(void **state)
{
    struct ctx *c = *state;
    if (c) {
        broker_free(c->b);
        free(c);
    }
    *state = NULL;
    return 0;
}

/* Waits for input on the broker (or for what librabbitmq buffered). */
static void wait_io(struct broker *b, int max_ms)
{
    if (broker_wants_read_now(b))
        return;
    int t = broker_timeout_ms(b);
    if (t < 0 || t > max_ms)
        t = max_ms;
    struct pollfd p = {.fd = broker_fd(b), .events = POLLIN};
    if (p.fd >= 0)
        (void)poll(&p, 1, t);
}

/* Drives an attempt of broker_connect_async() to its end, as the daemon's
 * loop would, and returns its verdict (RT_OK: connected). *turns (may be
 * NULL) receives how many broker_process() calls returned while it ran:
 * more than one shows the attempt never held the loop. */
static rt_status pump_connect_turns(struct broker *b, size_t *turns)
{
    long long deadline = harness_now_ms() + WAIT_MS;
    size_t n = 0;
    rt_status st = RT_OK;
    while (broker_connecting(b)) {
        if (harness_now_ms() > deadline)
            fail_msg("a connection attempt is still running after %d ms", WAIT_MS);
        struct pollfd fds[BROKER_MAX_NODES];
        size_t nf = broker_pollfds(b, fds, BROKER_MAX_NODES);
        int t = broker_timeout_ms(b);
        (void)poll(fds, nf, t < 0 || t > 100 ? 100 : t);
        st = broker_process(b);
        n++;
    }
    if (turns)
        *turns = n;
    return broker_connected(b) ? RT_OK : st;
}

static rt_status pump_connect(struct broker *b)
{
    return pump_connect_turns(b, NULL);
}

typedef int (*cond_fn)(struct ctx *c, size_t n);

static int fates_at_least(struct ctx *c, size_t n)
{
    return c->n_fates >= n;
}

static int recs_at_least(struct ctx *c, size_t n)
{
    return c->n_recs >= n;
}

static int cancels_at_least(struct ctx *c, size_t n)
{
    return c->n_cancel >= n;
}

/* Runs the event loop until cond holds; fails on a lost connection or at
 * the deadline. */
static void pump_until(struct ctx *c, cond_fn cond, size_t n, const char *what)
{
    long long deadline = harness_now_ms() + WAIT_MS;
    while (!cond(c, n)) {
        if (harness_now_ms() > deadline)
            fail_msg("timed out waiting for %s", what);
        wait_io(c->b, 100);
        rt_status st = broker_process(c->b);
        if (st != RT_OK)
            fail_msg("broker_process while waiting for %s: %s", what, broker_strerror(c->b));
    }
}

/* Runs the event loop until broker_process reports the connection lost. */
static void pump_until_lost(struct ctx *c, const char *what)
{
    long long deadline = harness_now_ms() + WAIT_MS;
    for (;;) {
        if (harness_now_ms() > deadline)
            fail_msg("timed out waiting for %s", what);
        wait_io(c->b, 100);
        rt_status st = broker_process(c->b);
        if (st == RT_RETRY)
            return;
        assert_int_equal(st, RT_OK);
    }
}

static void drop_client(const char *client)
{
    char q[BROKER_NAME_MAX];
    for (int dir = BROKER_FORWARD; dir <= BROKER_REVERSE; dir++) {
        assert_int_equal(broker_queue_name(q, sizeof(q), (enum broker_dir)dir, client), 0);
        harness_rabbit_delete_queue(q);
        for (unsigned t = 0; t < BROKER_RETRY_TIERS; t++) {
            assert_int_equal(broker_retry_queue_name(q, sizeof(q), (enum broker_dir)dir, client, t), 0);
            harness_rabbit_delete_queue(q);
        }
        assert_int_equal(broker_dead_queue_name(q, sizeof(q), (enum broker_dir)dir, client), 0);
        harness_rabbit_delete_queue(q);
    }
}

static void declare_one(struct ctx *c, const char *client)
{
    const char *clients[] = {client};
    rt_status st = broker_declare(c->b, clients, 1);
    if (st != RT_OK)
        fail_msg("broker_declare: %s", broker_strerror(c->b));
}

static rt_status publish_one(struct ctx *c, const char *exchange, const char *key, const char *id,
                             const char *body, uint64_t *tag)
{
    struct broker_props p = {.message_id = id};
    return broker_publish(c->b, exchange, key, &p, body, strlen(body), tag);
}

static long queue_messages(const char *name)
{
    struct harness_queue q;
    if (!harness_rabbit_queue(name, &q))
        fail_msg("queue \"%s\" does not exist", name);
    return q.messages;
}

/* ---- tests ------------------------------------------------------------ */

/* The caps every queue carries (broker.h): a full queue refuses. */
static void check_caps(const struct harness_queue *hq)
{
    char v[32];
    snprintf(v, sizeof(v), "%d", BROKER_QUEUE_MAX_LENGTH);
    assert_string_equal(harness_queue_arg(hq, "x-max-length"), v);
    snprintf(v, sizeof(v), "%lld", BROKER_QUEUE_MAX_BYTES);
    assert_string_equal(harness_queue_arg(hq, "x-max-length-bytes"), v);
    assert_string_equal(harness_queue_arg(hq, "x-overflow"), "reject-publish");
}

static void check_topology(const char *client, const char *queue_type)
{
    char q[BROKER_NAME_MAX], key[BROKER_NAME_MAX], retry_x[BROKER_NAME_MAX], dead_x[BROKER_NAME_MAX];
    struct harness_queue hq;
    int quorum = strcmp(queue_type, "quorum") == 0;
    broker_retry_exchange(retry_x, sizeof(retry_x), client);
    broker_dead_exchange(dead_x, sizeof(dead_x), client);
    for (int dir = BROKER_FORWARD; dir <= BROKER_REVERSE; dir++) {
        const char *dn = broker_dir_name((enum broker_dir)dir);
        broker_queue_name(q, sizeof(q), (enum broker_dir)dir, client);
        if (!harness_rabbit_queue(q, &hq))
            fail_msg("queue \"%s\" was not declared", q);
        assert_string_equal(hq.type, queue_type);
        assert_string_equal(harness_queue_arg(&hq, "x-queue-type"), queue_type);
        assert_string_equal(harness_queue_arg(&hq, "x-single-active-consumer"), "true");
        assert_string_equal(harness_queue_arg(&hq, "x-dead-letter-exchange"), dead_x);
        assert_string_equal(harness_queue_arg(&hq, "x-dead-letter-routing-key"), dn);
        check_caps(&hq);
        if (quorum) {
            char limit[16];
            snprintf(limit, sizeof(limit), "%d", BROKER_DELIVERY_LIMIT);
            assert_string_equal(harness_queue_arg(&hq, "x-delivery-limit"), limit);
            assert_string_equal(harness_queue_arg(&hq, "x-dead-letter-strategy"), "at-least-once");
        }
        assert_true(harness_rabbit_has_binding(broker_exchange((enum broker_dir)dir), q, client));
        assert_true(harness_rabbit_has_binding(retry_x, q, dn));
        for (unsigned t = 0; t < BROKER_RETRY_TIERS; t++) {
            char ttl[32];
            broker_retry_queue_name(q, sizeof(q), (enum broker_dir)dir, client, t);
            if (!harness_rabbit_queue(q, &hq))
                fail_msg("delay queue \"%s\" was not declared", q);
            assert_string_equal(hq.type, queue_type);
            snprintf(ttl, sizeof(ttl), "%u", broker_retry_delay_ms(t));
            assert_string_equal(harness_queue_arg(&hq, "x-message-ttl"), ttl);
            assert_string_equal(harness_queue_arg(&hq, "x-dead-letter-exchange"), retry_x);
            assert_string_equal(harness_queue_arg(&hq, "x-dead-letter-routing-key"), dn);
            check_caps(&hq);
            if (quorum)
                assert_string_equal(harness_queue_arg(&hq, "x-dead-letter-strategy"),
                                    "at-least-once");
            broker_retry_key(key, sizeof(key), (enum broker_dir)dir, t + 1);
            assert_true(harness_rabbit_has_binding(retry_x, q, key));
        }
        broker_dead_queue_name(q, sizeof(q), (enum broker_dir)dir, client);
        if (!harness_rabbit_queue(q, &hq))
            fail_msg("dead-letter queue \"%s\" was not declared", q);
        assert_string_equal(hq.type, queue_type);
        check_caps(&hq);
        assert_true(harness_rabbit_has_binding(dead_x, q, dn));
    }
}

static void test_topology_idempotent(void **state)
{
    char client[64];
    harness_rabbit_unique(client, sizeof(client), "topo");
    struct ctx *c = *state;
    struct broker_opts o;
    harness_rabbit_opts(&o, "guest", "guest");
    open_broker(c, &o);
    declare_one(c, client);
    declare_one(c, client);
    check_topology(client, "classic");
    /* A client id that cannot be part of a name is refused up front. */
    const char *bad[] = {"no spaces"};
    assert_int_equal(broker_declare(c->b, bad, 1), RT_REJECT);
    assert_true(broker_connected(c->b));
    drop_client(client);
}

static void test_publish_pipelined_confirms(void **state)
{
    enum { N = 2000 };
    char client[64], q[BROKER_NAME_MAX];
    harness_rabbit_unique(client, sizeof(client), "pub");
    struct ctx *c = *state;
    struct broker_opts o;
    harness_rabbit_opts(&o, "guest", "guest");
    open_broker(c, &o);
    declare_one(c, client);

    size_t max_outstanding = 0;
    char body[512];
    memset(body, 'x', sizeof(body) - 1);
    body[sizeof(body) - 1] = '\0';
    for (int i = 0; i < N; i++) {
        char id[96];
        uint64_t tag = 0;
        snprintf(id, sizeof(id), "%s-%d", client, i);
        assert_int_equal(publish_one(c, BROKER_EXCHANGE_FORWARD, client, id, body, &tag), RT_OK);
        assert_int_equal(tag, (uint64_t)i + 1);
        if (broker_unconfirmed(c->b) > max_outstanding)
            max_outstanding = broker_unconfirmed(c->b);
        /* Read confirms as they come, as the daemon's loop would. */
        if (i % 64 == 63)
            assert_int_equal(broker_process(c->b), RT_OK);
    }
    pump_until(c, fates_at_least, N, "2000 confirms");
    assert_int_equal(c->n_acked, N);
    assert_int_equal(c->dup_fates, 0);
    assert_int_equal(broker_unconfirmed(c->b), 0);
    assert_true(max_outstanding > 1);
    broker_queue_name(q, sizeof(q), BROKER_FORWARD, client);
    assert_int_equal(queue_messages(q), N);
    uint32_t ready = 0, consumers = 7;
    assert_int_equal(broker_queue_depth(c->b, q, &ready, &consumers), RT_OK);
    assert_int_equal(ready, N);
    assert_int_equal(consumers, 0);
    drop_client(client);
}

static void test_unroutable_returned(void **state)
{
    char client[64], nobody[64];
    harness_rabbit_unique(client, sizeof(client), "ret");
    harness_rabbit_unique(nobody, sizeof(nobody), "nobody");
    struct ctx *c = *state;
    struct broker_opts o;
    harness_rabbit_opts(&o, "guest", "guest");
    open_broker(c, &o);
    declare_one(c, client);
    uint64_t t1, t2, t3;
    assert_int_equal(publish_one(c, BROKER_EXCHANGE_FORWARD, client, "r-1", "a", &t1), RT_OK);
    assert_int_equal(publish_one(c, BROKER_EXCHANGE_FORWARD, nobody, "r-2", "b", &t2), RT_OK);
    assert_int_equal(publish_one(c, BROKER_EXCHANGE_FORWARD, client, "r-3", "c", &t3), RT_OK);
    pump_until(c, fates_at_least, 3, "three confirms");
    assert_int_equal(c->fate[t1], BROKER_ACKED + 1);
    assert_int_equal(c->fate[t2], BROKER_RETURNED + 1);
    assert_int_equal(c->fate[t3], BROKER_ACKED + 1);
    assert_int_equal(c->n_returned, 1);
    assert_true(broker_connected(c->b));
    drop_client(client);
}

static void test_consume_manual_ack(void **state)
{
    enum { N = 20 };
    char client[64], q[BROKER_NAME_MAX], user[64];
    harness_rabbit_unique(client, sizeof(client), "con");
    harness_rabbit_unique(user, sizeof(user), "sender");
    harness_rabbit_adduser(user, "sender-pw");
    struct ctx *c = *state;
    struct broker_opts o;
    harness_rabbit_opts(&o, user, "sender-pw");
    open_broker(c, &o);
    declare_one(c, client);
    for (int i = 0; i < N; i++) {
        char id[96], body[32];
        snprintf(id, sizeof(id), "m-%d", i);
        snprintf(body, sizeof(body), "body %d", i);
        struct broker_header h[] = {
            {.key = "x-rt-attempts", .type = BROKER_HEADER_INT, .num = i},
            {.key = "x-rt-reason", .type = BROKER_HEADER_STR, .str = "testing"},
        };
        struct broker_props p = {.message_id = id, .timestamp = 1700000000 + i, .headers = h,
                                 .n_headers = 2};
        assert_int_equal(broker_publish(c->b, BROKER_EXCHANGE_FORWARD, client, &p, body,
                                        strlen(body), NULL),
                         RT_OK);
    }
    pump_until(c, fates_at_least, N, "confirms");
    assert_int_equal(c->n_acked, N);

    broker_queue_name(q, sizeof(q), BROKER_FORWARD, client);
    c->ack_on_delivery = 1;
    assert_int_equal(broker_consume(c->b, q), RT_OK);
    pump_until(c, recs_at_least, N, "deliveries");
    for (int i = 0; i < N; i++) {
        const struct rec *r = &c->recs[i];
        char id[96], body[32];
        snprintf(id, sizeof(id), "m-%d", i);
        snprintf(body, sizeof(body), "body %d", i);
        assert_string_equal(r->message_id, id);
        assert_string_equal(r->body, body);
        assert_string_equal(r->user_id, user);
        assert_string_equal(r->content_type, BROKER_CONTENT_TYPE);
        assert_string_equal(r->queue, q);
        assert_string_equal(r->exchange, BROKER_EXCHANGE_FORWARD);
        assert_string_equal(r->key, client);
        assert_int_equal(r->timestamp, 1700000000 + i);
        assert_true(r->has_attempts);
        assert_int_equal(r->attempts, i);
        assert_string_equal(r->reason, "testing");
        assert_int_equal(r->redelivered, 0);
        assert_false(r->too_big);
    }
    /* The acks went out; the broker counts the queue empty once it read
     * them, which a round trip on the same connection guarantees. */
    uint32_t ready = 99, consumers = 0;
    assert_int_equal(broker_queue_depth(c->b, q, &ready, &consumers), RT_OK);
    assert_int_equal(consumers, 1);
    broker_disconnect(c->b);
    assert_int_equal(queue_messages(q), 0);
    drop_client(client);
    harness_rabbit_delete_user(user);
}

static void test_redelivery(void **state)
{
    char client[64], q[BROKER_NAME_MAX];
    harness_rabbit_unique(client, sizeof(client), "redel");
    struct ctx *c = *state;
    struct broker_opts o;
    harness_rabbit_opts(&o, "guest", "guest");
    open_broker(c, &o);
    declare_one(c, client);
    broker_queue_name(q, sizeof(q), BROKER_FORWARD, client);
    assert_int_equal(publish_one(c, BROKER_EXCHANGE_FORWARD, client, "keep", "k", NULL), RT_OK);
    assert_int_equal(publish_one(c, BROKER_EXCHANGE_FORWARD, client, "drop", "d", NULL), RT_OK);
    pump_until(c, fates_at_least, 2, "confirms");

    assert_int_equal(broker_consume(c->b, q), RT_OK);
    pump_until(c, recs_at_least, 2, "two deliveries");
    assert_string_equal(c->recs[0].message_id, "keep");
    assert_string_equal(c->recs[1].message_id, "drop");
    /* Requeued: comes back at once, flagged. */
    assert_int_equal(broker_reject(c->b, c->recs[0].tag, 1), RT_OK);
    pump_until(c, recs_at_least, 3, "the requeued delivery");
    assert_string_equal(c->recs[2].message_id, "keep");
    assert_int_equal(c->recs[2].redelivered, 1);
    /* Dropped: gone for good. Left unacked: back after a reconnect. */
    assert_int_equal(broker_reject(c->b, c->recs[1].tag, 0), RT_OK);

    broker_disconnect(c->b);
    assert_false(broker_connected(c->b));
    assert_int_equal(broker_fd(c->b), -1);
    assert_int_equal(broker_connect(c->b), RT_OK);
    assert_int_equal(broker_consume(c->b, q), RT_OK);
    pump_until(c, recs_at_least, 4, "the redelivery after reconnect");
    assert_string_equal(c->recs[3].message_id, "keep");
    assert_int_equal(c->recs[3].redelivered, 1);
    /* An ack of the earlier connection's delivery (an apply that finished
     * after the reconnect) is dropped: sent on this connection its tag
     * would be unknown and the broker would close the channel. */
    assert_int_equal(broker_ack(c->b, c->recs[2].tag), RT_OK);
    assert_int_equal(broker_process(c->b), RT_OK);
    assert_true(broker_connected(c->b));
    assert_int_equal(broker_ack(c->b, c->recs[3].tag), RT_OK);
    uint32_t ready = 99;
    assert_int_equal(broker_queue_depth(c->b, q, &ready, NULL), RT_OK);
    broker_disconnect(c->b);
    assert_int_equal(queue_messages(q), 0);
    assert_int_equal(c->n_recs, 4);
    drop_client(client);
}

static void test_user_id_spoofing_refused(void **state)
{
    char client[64], user[64];
    harness_rabbit_unique(client, sizeof(client), "spoof");
    harness_rabbit_unique(user, sizeof(user), "mallory");
    harness_rabbit_adduser(user, "mallory-pw");
    struct ctx *c = *state;
    struct broker_opts o;
    harness_rabbit_opts(&o, user, "mallory-pw");
    open_broker(c, &o);
    declare_one(c, client);
    struct broker_props p = {.message_id = "spoofed", .user_id = "guest"};
    uint64_t tag = 0;
    assert_int_equal(broker_publish(c->b, BROKER_EXCHANGE_FORWARD, client, &p, "x", 1, &tag), RT_OK);
    pump_until_lost(c, "the broker to refuse a spoofed user_id");
    assert_false(broker_connected(c->b));
    assert_non_null(strstr(broker_strerror(c->b), "user_id"));
    assert_int_equal(c->fate[tag], BROKER_LOST + 1);
    assert_int_equal(broker_unconfirmed(c->b), 0);
    /* The connection can be made again. */
    assert_int_equal(broker_connect(c->b), RT_OK);
    char q[BROKER_NAME_MAX];
    broker_queue_name(q, sizeof(q), BROKER_FORWARD, client);
    assert_int_equal(queue_messages(q), 0);
    drop_client(client);
    harness_rabbit_delete_user(user);
}

static void test_wrong_password_rejected(void **state)
{
    char user[64];
    harness_rabbit_unique(user, sizeof(user), "alice");
    harness_rabbit_adduser(user, "right-password");
    struct ctx *c = *state;
    struct broker_opts o;
    char err[256];
    harness_rabbit_opts(&o, user, "Wr0ngSecret!");
    with_callbacks(&o, c);
    c->b = broker_new(&o, err, sizeof(err));
    assert_non_null(c->b);
    assert_int_equal(broker_connect(c->b), RT_REJECT);
    const char *why = broker_strerror(c->b);
    assert_non_null(strstr(why, user));
    assert_non_null(strstr(why, "login refused"));
    assert_null(strstr(why, "Wr0ngSecret!"));
    assert_false(broker_connected(c->b));
    harness_rabbit_delete_user(user);
}

/* A TCP listener that never accepts: the kernel completes the handshake
 * and the peer then says nothing, like a blackholed or frozen node. */
static int silent_listener(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(fd, 16), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    *port = ntohs(a.sin_port);
    return fd;
}

/* amqp.uri as a list: a node that refuses, a node that never answers, and
 * the live one. The attempt takes the live one without waiting for the
 * silent one, and the loop is never held; with only the dead ones it fails
 * with every node's reason, without blocking either. */
static void test_nodes_and_async_connect(void **state)
{
    struct ctx *c = *state;
    struct broker_opts o;
    char err[256];
    int silent_port, closed_port, silent = silent_listener(&silent_port);
    int closed = silent_listener(&closed_port);
    close(closed); /* nothing listens there any more: refused */
    harness_rabbit_opts(&o, "guest", "guest");
    o.connect_timeout_ms = 3000;
    struct broker_node nodes[] = {
        {"127.0.0.1", closed_port, 0},
        {"127.0.0.1", silent_port, 0},
        {"127.0.0.1", o.port, 0},
    };
    o.nodes = nodes;
    o.n_nodes = 3;
    with_callbacks(&o, c);
    c->b = broker_new(&o, err, sizeof(err));
    assert_non_null(c->b);
    long long t0 = harness_now_ms();
    broker_connect_async(c->b);
    assert_true(broker_connecting(c->b));
    assert_false(broker_connected(c->b));
    rt_status st = pump_connect(c->b);
    if (st != RT_OK)
        fail_msg("async connect: %s", broker_strerror(c->b));
    char live[64];
    snprintf(live, sizeof(live), "127.0.0.1:%d", o.port);
    printf("connected to %s in %lld ms (the silent node's probe waits %d ms)\n",
           broker_node(c->b), harness_now_ms() - t0, o.connect_timeout_ms);
    assert_string_equal(broker_node(c->b), live);
    broker_free(c->b);

    /* Only the refusing and the silent node. */
    o.n_nodes = 2;
    c->b = broker_new(&o, err, sizeof(err));
    assert_non_null(c->b);
    broker_connect_async(c->b);
    size_t turns = 0;
    st = pump_connect_turns(c->b, &turns);
    printf("no node: %s after %zu turns of the loop: %s\n", rt_status_name(st), turns,
           broker_strerror(c->b));
    assert_int_equal(st, RT_RETRY);
    assert_true(turns > 1);
    assert_non_null(strstr(broker_strerror(c->b), "no answer within 3000 ms"));
    assert_non_null(strstr(broker_strerror(c->b), "cannot connect"));
    assert_false(broker_connected(c->b));
    close(silent);
}

/* Queue depths asked without waiting: answered in order, a missing queue
 * included (which closes the query channel, opened again for the rest). */
struct depth_answers {
    size_t n;
    char queue[8][BROKER_NAME_MAX];
    int found[8];
    uint32_t ready[8];
};

static void on_depth(void *arg, const char *queue, int found, uint32_t ready, uint32_t consumers)
{
    struct depth_answers *a = arg;
    (void)consumers;
    if (a->n < 8) {
        snprintf(a->queue[a->n], sizeof(a->queue[0]), "%s", queue);
        a->found[a->n] = found;
        a->ready[a->n] = ready;
    }
    a->n++;
}

static void test_depth_ask(void **state)
{
    char client[64], fq[BROKER_NAME_MAX], rq[BROKER_NAME_MAX], err[256];
    harness_rabbit_unique(client, sizeof(client), "depth");
    struct ctx *c = *state;
    struct broker_opts o;
    struct depth_answers a = {0};
    harness_rabbit_opts(&o, "guest", "guest");
    open_broker(c, &o);
    declare_one(c, client);
    for (int i = 0; i < 3; i++) {
        char id[32];
        snprintf(id, sizeof(id), "d-%d", i);
        assert_int_equal(publish_one(c, BROKER_EXCHANGE_FORWARD, client, id, "x", NULL), RT_OK);
    }
    pump_until(c, fates_at_least, 3, "three confirms");
    broker_free(c->b);
    /* A broker of its own whose callback argument is the answers. */
    with_callbacks(&o, c);
    o.on_depth = on_depth;
    o.cb_arg = &a;
    o.on_confirm = NULL;
    c->b = broker_new(&o, err, sizeof(err));
    assert_non_null(c->b);
    assert_int_equal(broker_connect(c->b), RT_OK);
    broker_queue_name(fq, sizeof(fq), BROKER_FORWARD, client);
    broker_queue_name(rq, sizeof(rq), BROKER_REVERSE, client);
    assert_int_equal(broker_depth_ask(c->b, fq), RT_OK);
    assert_int_equal(broker_depth_ask(c->b, "no-such-queue-at-all"), RT_OK);
    assert_int_equal(broker_depth_ask(c->b, rq), RT_OK);
    assert_int_equal(broker_depth_ask(c->b, fq), RT_OK);
    assert_int_equal(broker_depth_pending(c->b), 4);
    long long deadline = harness_now_ms() + WAIT_MS;
    while (a.n < 4) {
        if (harness_now_ms() > deadline)
            fail_msg("only %zu of 4 depth answers came", a.n);
        wait_io(c->b, 100);
        assert_int_equal(broker_process(c->b), RT_OK);
    }
    assert_int_equal(a.n, 4);
    assert_int_equal(broker_depth_pending(c->b), 0);
    assert_string_equal(a.queue[0], fq);
    assert_int_equal(a.found[0], 1);
    assert_int_equal(a.ready[0], 3);
    assert_string_equal(a.queue[1], "no-such-queue-at-all");
    assert_int_equal(a.found[1], 0);
    assert_string_equal(a.queue[2], rq);
    assert_int_equal(a.found[2], 1);
    assert_int_equal(a.ready[2], 0);
    assert_string_equal(a.queue[3], fq);
    assert_int_equal(a.ready[3], 3);
    /* The connection itself never noticed. */
    assert_true(broker_connected(c->b));
    /* Questions out when the connection goes are answered "unknown". */
    assert_int_equal(broker_depth_ask(c->b, fq), RT_OK);
    broker_disconnect(c->b);
    assert_int_equal(a.n, 5);
    assert_int_equal(a.found[4], -1);
    drop_client(client);
}

/* A least-privilege user (no configure permission) cannot declare: the
 * topology another user declared is looked up instead; one nobody
 * declared is reported, naming what is missing. A queue declared with
 * other arguments names itself and how to migrate. */
static void test_least_privilege_and_precondition(void **state)
{
    char client[64], other[64], user[64], err[256];
    const char *pass = "lp-throwaway";
    harness_rabbit_unique(client, sizeof(client), "lp");
    harness_rabbit_unique(other, sizeof(other), "lpnone");
    harness_rabbit_unique(user, sizeof(user), "lpuser");
    struct ctx *c = *state;
    struct broker_opts o;
    harness_rabbit_opts(&o, "guest", "guest");
    open_broker(c, &o);
    declare_one(c, client);
    broker_free(c->b);
    c->b = NULL;

    harness_rabbit_adduser(user, pass);
    const char *perm[] = {"-q", "set_permissions", "-p", "/", user, "^$", ".*", ".*", NULL};
    free(harness_rabbit_ctl(perm));
    harness_rabbit_opts(&o, user, pass);
    open_broker(c, &o);
    const char *mine[] = {client};
    rt_status st = broker_declare(c->b, mine, 1);
    if (st != RT_OK)
        fail_msg("declare as a least-privilege user: %s", broker_strerror(c->b));
    const char *missing[] = {other};
    st = broker_declare(c->b, missing, 1);
    printf("least privilege, nothing declared: %s: %s\n", rt_status_name(st),
           broker_strerror(c->b));
    assert_int_equal(st, RT_RETRY);
    assert_non_null(strstr(broker_strerror(c->b), "does not exist"));
    assert_true(broker_connected(c->b));
    /* Still usable: the scratch channel was closed after the refusals. */
    assert_int_equal(broker_declare(c->b, mine, 1), RT_OK);
    broker_free(c->b);
    c->b = NULL;

    /* The same client's classic queues meet queue_type = "quorum". */
    harness_rabbit_opts(&o, "guest", "guest");
    o.queue_type = "quorum";
    with_callbacks(&o, c);
    c->b = broker_new(&o, err, sizeof(err));
    assert_non_null(c->b);
    assert_int_equal(broker_connect(c->b), RT_OK);
    st = broker_declare(c->b, mine, 1);
    printf("classic meets quorum: %s: %s\n", rt_status_name(st), broker_strerror(c->b));
    assert_int_equal(st, RT_REJECT);
    assert_non_null(strstr(broker_strerror(c->b), "delete_queue"));
    assert_non_null(strstr(broker_strerror(c->b), "quorum"));
    assert_true(broker_connected(c->b));
    harness_rabbit_delete_user(user);
    drop_client(client);
}

/* A frozen node never holds a write: once its socket stops taking bytes,
 * publishes say so (RT_RETRY) instead of blocking, and the missed
 * heartbeats end the connection. */
static void test_frozen_node_never_blocks(void **state)
{
    char client[64];
    static char big[256 * 1024];
    harness_rabbit_unique(client, sizeof(client), "frozen");
    struct ctx *c = *state;
    struct broker_opts o;
    harness_rabbit_opts(&o, "guest", "guest");
    o.heartbeat = 2;
    o.max_unconfirmed = MAX_TAGS - 1;
    open_broker(c, &o);
    declare_one(c, client);
    memset(big, 'b', sizeof(big) - 1);
    harness_rabbit_freeze();
    size_t sent = 0, refused = 0;
    rt_status st = RT_OK;
    long long deadline = harness_now_ms() + WAIT_MS;
    while (broker_connected(c->b)) {
        if (harness_now_ms() > deadline)
            fail_msg("still connected to a frozen node after %d ms", WAIT_MS);
        char id[32];
        snprintf(id, sizeof(id), "big-%zu", sent + refused);
        struct broker_props p = {.message_id = id};
        st = broker_publish(c->b, BROKER_EXCHANGE_FORWARD, client, &p, big, sizeof(big) - 1, NULL);
        if (st == RT_OK) {
            sent++;
        } else {
            refused++;
            assert_int_equal(st, RT_RETRY);
            if (broker_connected(c->b))
                assert_non_null(strstr(broker_strerror(c->b), "not reading"));
            wait_io(c->b, 50);
        }
        if (broker_process(c->b) != RT_OK)
            break;
    }
    printf("frozen node: %zu publishes of 256 KiB written, %zu refused without blocking, then: "
           "%s\n",
           sent, refused, broker_strerror(c->b));
    assert_true(refused > 0);
    assert_false(broker_connected(c->b));
    /* An attempt against the frozen node fails on its own deadline. */
    o.connect_timeout_ms = 2000;
    broker_free(c->b);
    open_broker_nowait(c, &o);
    broker_connect_async(c->b);
    size_t turns = 0;
    st = pump_connect_turns(c->b, &turns);
    printf("connecting to the frozen node: %s after %zu turns: %s\n", rt_status_name(st), turns,
           broker_strerror(c->b));
    assert_int_equal(st, RT_RETRY);
    assert_true(turns > 1);
    harness_rabbit_thaw();
    broker_connect_async(c->b);
    st = pump_connect(c->b);
    if (st != RT_OK)
        fail_msg("connecting to the thawed node: %s", broker_strerror(c->b));
    drop_client(client);
}

static void test_kill_and_restart(void **state)
{
    enum { BEFORE = 100, AFTER = 5 };
    char client[64], q[BROKER_NAME_MAX];
    harness_rabbit_unique(client, sizeof(client), "crash");
    broker_queue_name(q, sizeof(q), BROKER_FORWARD, client);
    struct ctx *c = *state;
    struct broker_opts o;
    harness_rabbit_opts(&o, "guest", "guest");
    o.heartbeat = 2;
    open_broker(c, &o);
    declare_one(c, client);
    for (int i = 0; i < BEFORE; i++) {
        char id[32];
        snprintf(id, sizeof(id), "before-%d", i);
        assert_int_equal(publish_one(c, BROKER_EXCHANGE_FORWARD, client, id, "persistent", NULL), RT_OK);
    }
    pump_until(c, fates_at_least, BEFORE, "confirms before the crash");
    assert_int_equal(c->n_acked, BEFORE);

    /* The node goes silent: its kernel still takes our bytes, nothing
     * answers. The publishes get tags, no confirm can come, and the
     * missed heartbeats must end the connection (not a hang). */
    long long frozen = harness_now_ms();
    harness_rabbit_freeze();
    for (int i = 0; i < AFTER; i++) {
        char id[32];
        snprintf(id, sizeof(id), "after-%d", i);
        assert_int_equal(publish_one(c, BROKER_EXCHANGE_FORWARD, client, id, "lost", NULL), RT_OK);
    }
    assert_int_equal(broker_unconfirmed(c->b), AFTER);
    pump_until_lost(c, "the heartbeat timeout on the frozen node");
    assert_false(broker_connected(c->b));
    /* Noticed within two heartbeats of the last frame (a loop woken by
     * broker_timeout_ms() is there at the deadline), plus the time the
     * freeze command itself took. */
    long long noticed = harness_now_ms() - frozen;
    printf("frozen node noticed %lld ms after the freeze began (heartbeat %d s)\n", noticed,
           o.heartbeat);
    assert_true(noticed <= 2LL * o.heartbeat * 1000 + 2500);
    assert_int_equal(c->n_lost, AFTER);
    assert_int_equal(c->n_fates, BEFORE + AFTER);
    assert_int_equal(c->dup_fates, 0);
    for (uint64_t t = BEFORE + 1; t <= BEFORE + AFTER; t++)
        assert_int_equal(c->fate[t], BROKER_LOST + 1);
    assert_int_equal(broker_unconfirmed(c->b), 0);
    harness_rabbit_kill();

    /* Down: refused at once, well within the connect timeout. */
    long long t0 = harness_now_ms();
    assert_int_equal(broker_connect(c->b), RT_RETRY);
    assert_true(harness_now_ms() - t0 < 3LL * o.connect_timeout_ms);
    assert_false(broker_connected(c->b));

    harness_rabbit_restart();
    ctx_reset_fates(c);
    /* Messages confirmed before the crash are on disk; the unconfirmed
     * ones never reached the frozen node's queue. */
    rt_status st = broker_connect(c->b);
    if (st != RT_OK)
        fail_msg("reconnect after restart: %s", broker_strerror(c->b));
    uint32_t ready = 0;
    assert_int_equal(broker_queue_depth(c->b, q, &ready, NULL), RT_OK);
    assert_int_equal(ready, BEFORE);
    assert_int_equal(queue_messages(q), BEFORE);
    /* And it works as before. */
    assert_int_equal(publish_one(c, BROKER_EXCHANGE_FORWARD, client, "again", "x", NULL), RT_OK);
    pump_until(c, fates_at_least, 1, "a confirm after the restart");
    assert_int_equal(c->n_acked, 1);
    drop_client(client);
}

static void tls_publish(struct ctx *c, const char *client)
{
    declare_one(c, client);
    uint64_t tag = 0;
    assert_int_equal(publish_one(c, BROKER_EXCHANGE_FORWARD, client, "tls-1", "over tls", &tag), RT_OK);
    pump_until(c, fates_at_least, 1, "a confirm over TLS");
    assert_int_equal(c->fate[tag], BROKER_ACKED + 1);
}

static void test_tls(void **state)
{
    char client[64];
    harness_rabbit_unique(client, sizeof(client), "tls");
    struct ctx *c = *state;
    struct broker_opts o;
    harness_rabbit_tls_opts(&o, "guest", "guest");
    open_broker(c, &o);
    tls_publish(c, client);
    broker_free(c->b);
    c->b = NULL;
    memset(c->fate, 0, sizeof(c->fate));
    c->n_fates = c->n_acked = 0;

    /* With a client certificate signed by the test CA. */
    static char cert[1024], key[1024];
    snprintf(cert, sizeof(cert), "%s", harness_rabbit_tls_file("client.pem"));
    snprintf(key, sizeof(key), "%s", harness_rabbit_tls_file("client.key"));
    harness_rabbit_tls_opts(&o, "guest", "guest");
    o.cert_file = cert;
    o.key_file = key;
    open_broker(c, &o);
    tls_publish(c, client);
    drop_client(client);
}

static void test_tls_wrong_ca_rejected(void **state)
{
    static char wrong[1024];
    snprintf(wrong, sizeof(wrong), "%s", harness_rabbit_tls_file("wrong-ca.pem"));
    struct ctx *c = *state;
    struct broker_opts o;
    char err[256];
    harness_rabbit_tls_opts(&o, "guest", "guest");
    o.ca_file = wrong;
    with_callbacks(&o, c);
    c->b = broker_new(&o, err, sizeof(err));
    assert_non_null(c->b);
    /* The server's certificate does not chain to the CA we trust: that is
     * a configuration problem, retrying cannot fix it: REJECT. */
    rt_status st = broker_connect(c->b);
    if (st != RT_REJECT)
        fail_msg("expected REJECT, got %s: %s", rt_status_name(st), broker_strerror(c->b));
    assert_false(broker_connected(c->b));
    /* The reason names the cause, not only "peer verification failed". */
    printf("wrong CA: %s\n", broker_strerror(c->b));
    assert_non_null(strstr(broker_strerror(c->b), "certificate verify failed"));
    /* The same through the probe of a non-blocking attempt. */
    broker_connect_async(c->b);
    st = pump_connect(c->b);
    assert_int_equal(st, RT_REJECT);
    assert_non_null(strstr(broker_strerror(c->b), "certificate verify failed"));
}

static void test_heartbeat_keeps_idle_connection(void **state)
{
    char client[64];
    harness_rabbit_unique(client, sizeof(client), "idle");
    struct ctx *c = *state;
    struct broker_opts o;
    harness_rabbit_opts(&o, "guest", "guest");
    o.heartbeat = 2;
    open_broker(c, &o);
    assert_int_equal(broker_timeout_ms(c->b), 1000);
    /* The point is the duration: 6 s idle, three heartbeat intervals; the
     * broker closes a connection that misses two. */
    long long end = harness_now_ms() + 6000;
    int64_t most_silent = 0;
    while (harness_now_ms() < end) {
        wait_io(c->b, 1000);
        rt_status st = broker_process(c->b);
        if (st != RT_OK)
            fail_msg("idle connection lost: %s", broker_strerror(c->b));
        if (broker_silent_ms(c->b) > most_silent)
            most_silent = broker_silent_ms(c->b);
    }
    /* The node's heartbeats are signs of life even though librabbitmq
     * swallows them: an idle connection never looks silent for a whole
     * heartbeat (status would call it unreachable). */
    printf("idle connection: silent at most %lld ms with a 2 s heartbeat\n",
           (long long)most_silent);
    assert_true(most_silent < 2000);
    assert_true(broker_connected(c->b));
    /* Still usable, not just believed up. */
    char q[BROKER_NAME_MAX];
    declare_one(c, client);
    broker_queue_name(q, sizeof(q), BROKER_FORWARD, client);
    assert_int_equal(broker_queue_depth(c->b, q, NULL, NULL), RT_OK);
    drop_client(client);
}

static void set_watermark(const char *value)
{
    const char *args[] = {"-q", "set_vm_memory_high_watermark", value, NULL};
    free(harness_rabbit_ctl(args));
}


static int crash_teardown(void **state)
{
    harness_rabbit_ensure_up();
    return ctx_teardown(state);
}

static int blocked_teardown(void **state)
{
    /* The value rabbitnode's configuration sets. */
    set_watermark("0.8");
    return ctx_teardown(state);
}

static void test_quorum(void **state)
{
    char client[64], q[BROKER_NAME_MAX];
    harness_rabbit_unique(client, sizeof(client), "quorum");
    struct ctx *c = *state;
    struct broker_opts o;
    harness_rabbit_opts(&o, "guest", "guest");
    o.queue_type = "quorum";
    open_broker(c, &o);
    declare_one(c, client);
    declare_one(c, client);
    /* Looking at every queue takes rabbitmqctl a while, longer than two
     * heartbeats of a connection nobody reads: a fresh one goes on. */
    broker_free(c->b);
    c->b = NULL;
    check_topology(client, "quorum");
    open_broker(c, &o);
    broker_queue_name(q, sizeof(q), BROKER_FORWARD, client);
    assert_int_equal(publish_one(c, BROKER_EXCHANGE_FORWARD, client, "q-1", "quorum body", NULL), RT_OK);
    pump_until(c, fates_at_least, 1, "a confirm from a quorum queue");
    assert_int_equal(c->n_acked, 1);
    c->ack_on_delivery = 1;
    assert_int_equal(broker_consume(c->b, q), RT_OK);
    pump_until(c, recs_at_least, 1, "a delivery from a quorum queue");
    assert_string_equal(c->recs[0].body, "quorum body");
    broker_disconnect(c->b);
    assert_int_equal(queue_messages(q), 0);
    drop_client(client);
}

static void test_missing_queue_and_cancel(void **state)
{
    char client[64], q[BROKER_NAME_MAX], missing[64];
    harness_rabbit_unique(client, sizeof(client), "cancel");
    harness_rabbit_unique(missing, sizeof(missing), "missing");
    struct ctx *c = *state;
    struct broker_opts o;
    harness_rabbit_opts(&o, "guest", "guest");
    open_broker(c, &o);
    declare_one(c, client);
    /* A passive declare of a missing queue costs a scratch channel only. */
    assert_int_equal(broker_queue_depth(c->b, missing, NULL, NULL), RT_REJECT);
    assert_non_null(strstr(broker_strerror(c->b), "404"));
    assert_true(broker_connected(c->b));
    uint64_t tag;
    assert_int_equal(publish_one(c, BROKER_EXCHANGE_FORWARD, client, "after-404", "x", &tag), RT_OK);
    pump_until(c, fates_at_least, 1, "a confirm after a refused passive declare");
    assert_int_equal(c->fate[tag], BROKER_ACKED + 1);

    /* The broker cancels a consumer whose queue is deleted. */
    broker_queue_name(q, sizeof(q), BROKER_REVERSE, client);
    assert_int_equal(broker_consume(c->b, q), RT_OK);
    harness_rabbit_delete_queue(q);
    pump_until(c, cancels_at_least, 1, "the consumer cancel notification");
    assert_string_equal(c->cancelled, q);
    assert_true(broker_connected(c->b));
    drop_client(client);
}

static void test_too_big_and_guards(void **state)
{
    char client[64], q[BROKER_NAME_MAX];
    harness_rabbit_unique(client, sizeof(client), "big");
    struct ctx *c = *state;
    struct broker_opts o;
    harness_rabbit_opts(&o, "guest", "guest");
    o.max_message = 1024;
    open_broker(c, &o);
    declare_one(c, client);
    size_t big = 300 * 1024; /* several frames of 128 KiB */
    char *body = malloc(big + 1);
    assert_non_null(body);
    memset(body, 'b', big);
    body[big] = '\0';
    assert_int_equal(publish_one(c, BROKER_EXCHANGE_FORWARD, client, "big", body, NULL), RT_OK);
    assert_int_equal(publish_one(c, BROKER_EXCHANGE_FORWARD, client, "small", "s", NULL), RT_OK);
    free(body);
    pump_until(c, fates_at_least, 2, "confirms");
    broker_queue_name(q, sizeof(q), BROKER_FORWARD, client);
    c->ack_on_delivery = 1;
    assert_int_equal(broker_consume(c->b, q), RT_OK);
    pump_until(c, recs_at_least, 2, "deliveries");
    assert_string_equal(c->recs[0].message_id, "big");
    assert_true(c->recs[0].too_big);
    assert_int_equal(c->recs[0].len, big);
    assert_string_equal(c->recs[1].message_id, "small");
    assert_false(c->recs[1].too_big);
    assert_string_equal(c->recs[1].body, "s");

    /* Invalid publishes are refused before anything is sent. */
    struct broker_props none = {.message_id = NULL};
    assert_int_equal(broker_publish(c->b, BROKER_EXCHANGE_FORWARD, client, &none, "x", 1, NULL),
                     RT_REJECT);
    assert_true(broker_connected(c->b));
    broker_disconnect(c->b);
    assert_int_equal(publish_one(c, BROKER_EXCHANGE_FORWARD, client, "down", "x", NULL), RT_RETRY);
    drop_client(client);
}

static int blocked_is(struct ctx *c, size_t want)
{
    return broker_blocked(c->b) == (int)want;
}


static void test_connection_blocked(void **state)
{
    char client[64];
    harness_rabbit_unique(client, sizeof(client), "blocked");
    struct ctx *c = *state;
    struct broker_opts o;
    harness_rabbit_opts(&o, "guest", "guest");
    open_broker(c, &o);
    declare_one(c, client);
    /* A memory watermark of 0 raises the alarm at once. RabbitMQ blocks a
     * connection, and says so, at its next publish: that one waits
     * unread (no confirm yet), later ones are refused here. */
    set_watermark("0");
    uint64_t first;
    assert_int_equal(publish_one(c, BROKER_EXCHANGE_FORWARD, client, "first", "x", &first), RT_OK);
    pump_until(c, blocked_is, 1, "connection.blocked");
    assert_int_equal(publish_one(c, BROKER_EXCHANGE_FORWARD, client, "blocked", "x", NULL), RT_RETRY);
    assert_non_null(strstr(broker_strerror(c->b), "blocked"));
    assert_int_equal(broker_unconfirmed(c->b), 1);
    set_watermark("0.8");
    pump_until(c, blocked_is, 0, "connection.unblocked");
    uint64_t tag;
    assert_int_equal(publish_one(c, BROKER_EXCHANGE_FORWARD, client, "unblocked", "x", &tag), RT_OK);
    pump_until(c, fates_at_least, 2, "confirms after unblocking");
    assert_int_equal(c->fate[first], BROKER_ACKED + 1);
    assert_int_equal(c->fate[tag], BROKER_ACKED + 1);
    drop_client(client);
}

int main(void)
{
    log_init("it_broker", LOG_LEVEL_WARNING, 0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_topology_idempotent, ctx_setup, ctx_teardown),
        cmocka_unit_test_setup_teardown(test_publish_pipelined_confirms, ctx_setup, ctx_teardown),
        cmocka_unit_test_setup_teardown(test_unroutable_returned, ctx_setup, ctx_teardown),
        cmocka_unit_test_setup_teardown(test_consume_manual_ack, ctx_setup, ctx_teardown),
        cmocka_unit_test_setup_teardown(test_redelivery, ctx_setup, ctx_teardown),
        cmocka_unit_test_setup_teardown(test_user_id_spoofing_refused, ctx_setup, ctx_teardown),
        cmocka_unit_test_setup_teardown(test_wrong_password_rejected, ctx_setup, ctx_teardown),
        cmocka_unit_test_setup_teardown(test_tls, ctx_setup, ctx_teardown),
        cmocka_unit_test_setup_teardown(test_tls_wrong_ca_rejected, ctx_setup, ctx_teardown),
        cmocka_unit_test_setup_teardown(test_heartbeat_keeps_idle_connection, ctx_setup, ctx_teardown),
        cmocka_unit_test_setup_teardown(test_quorum, ctx_setup, ctx_teardown),
        cmocka_unit_test_setup_teardown(test_missing_queue_and_cancel, ctx_setup, ctx_teardown),
        cmocka_unit_test_setup_teardown(test_too_big_and_guards, ctx_setup, ctx_teardown),
        cmocka_unit_test_setup_teardown(test_connection_blocked, ctx_setup, blocked_teardown),
        cmocka_unit_test_setup_teardown(test_nodes_and_async_connect, ctx_setup, ctx_teardown),
        cmocka_unit_test_setup_teardown(test_depth_ask, ctx_setup, ctx_teardown),
        cmocka_unit_test_setup_teardown(test_least_privilege_and_precondition, ctx_setup,
                                        ctx_teardown),
        cmocka_unit_test_setup_teardown(test_frozen_node_never_blocks, ctx_setup, crash_teardown),
        cmocka_unit_test_setup_teardown(test_kill_and_restart, ctx_setup, crash_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
