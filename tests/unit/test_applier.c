/* Unit tests of consumer/applier: the delivery slots both appliers share.
 *
 * Unit test programs link rtconfig and rtcommon only, so the applier's
 * files (applier*.c) are compiled into this program, which reaches its
 * broker table (struct applier_io, applier_int.h): the tests put a
 * stand-in there that records every ack, reject and publish, and an owner
 * that records the order in which slots are started and ends them when a
 * test says so.
 *
 * What they show: who a sender is (x-rt-user counts only on our own
 * login), x-rt-attempts bounded before it is incremented (UBSan watches),
 * a slot for every delivery and never a requeue for want of one, turns
 * taken across clients with at most max_running in the owner's hands, a
 * refused copy published again rather than requeued, and a local step
 * deferred without an ack or a copy while the other slots wait. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "../../consumer/applier.c"
#include "../../consumer/applier_ack.c"
#include "../../consumer/applier_copy.c"
#include "../../consumer/applier_order.c"
#include "../../consumer/applier_view.c"
#include "../../consumer/applier_watch.c"

/* ---- the broker stand-in -------------------------------------------- */

#define FAKE_MAX 512

struct fake_pub {
    uint64_t tag;
    char exchange[BROKER_NAME_MAX];
    char key[BROKER_NAME_MAX];
    char user[APPLIER_SHORT_MAX];
    int64_t attempts;
};

static struct {
    int connected;
    int blocked;
    uint64_t next_tag;
    size_t nack, nreject, npub;
    uint64_t acked[FAKE_MAX];
    uint64_t rejected[FAKE_MAX];
    int requeued[FAKE_MAX];
    struct fake_pub pub[FAKE_MAX];
} fk;

static rt_status fk_ack(struct broker *b, uint64_t tag)
{
    (void)b;
    assert_true(fk.nack < FAKE_MAX);
    fk.acked[fk.nack++] = tag;
    return RT_OK;
}

static rt_status fk_reject(struct broker *b, uint64_t tag, int requeue)
{
    (void)b;
    assert_true(fk.nreject < FAKE_MAX);
    fk.requeued[fk.nreject] = requeue;
    fk.rejected[fk.nreject++] = tag;
    return RT_OK;
}

static rt_status fk_publish(struct broker *b, const char *exchange, const char *key,
                            const struct broker_props *props, const void *body, size_t len,
                            uint64_t *tag)
{
    (void)b;
    (void)body;
    (void)len;
    if (!fk.connected || fk.blocked)
        return RT_RETRY;
    assert_true(fk.npub < FAKE_MAX);
    struct fake_pub *p = &fk.pub[fk.npub++];
    memset(p, 0, sizeof(*p));
    snprintf(p->exchange, sizeof(p->exchange), "%s", exchange);
    snprintf(p->key, sizeof(p->key), "%s", key);
    p->attempts = -1;
    for (size_t i = 0; i < props->n_headers; i++) {
        const struct broker_header *h = &props->headers[i];
        if (strcmp(h->key, "x-rt-attempts") == 0)
            p->attempts = h->num;
        else if (strcmp(h->key, "x-rt-user") == 0)
            snprintf(p->user, sizeof(p->user), "%s", h->str);
    }
    p->tag = *tag = ++fk.next_tag;
    return RT_OK;
}

static int fk_connected(const struct broker *b)
{
    (void)b;
    return fk.connected;
}

static int fk_blocked(const struct broker *b)
{
    (void)b;
    return fk.blocked;
}

static const char *fk_strerror(const struct broker *b)
{
    (void)b;
    return "the stand-in says no";
}

static const struct applier_io fake_io = {
    .ack = fk_ack,
    .reject = fk_reject,
    .publish = fk_publish,
    .connected = fk_connected,
    .blocked = fk_blocked,
    .strerror = fk_strerror,
};

/* ---- the owner stand-in --------------------------------------------- */

struct owner {
    size_t nstarted;
    struct applier_slot *started[FAKE_MAX];
    uint64_t started_tag[FAKE_MAX];
    char started_client[FAKE_MAX][APPLIER_SHORT_MAX];
    int defer_start;  /* the next start defers its slot */
    int defer_resume; /* a resume defers again instead of acking */
    size_t nresumed;
    size_t nreleased;
    char unserved[APPLIER_SHORT_MAX]; /* a client the owner no longer serves */
};

static struct owner own;

static void own_start(void *o, struct applier_slot *s)
{
    (void)o;
    assert_true(own.nstarted < FAKE_MAX);
    own.started[own.nstarted] = s;
    own.started_tag[own.nstarted] = s->tag;
    snprintf(own.started_client[own.nstarted], sizeof(own.started_client[0]), "%s", s->client);
    own.nstarted++;
    if (own.defer_start) {
        own.defer_start = 0;
        applier_defer(s, "store: remotetask.db is locked by another process");
    }
}

static void own_resume(void *o, struct applier_slot *s)
{
    (void)o;
    own.nresumed++;
    if (own.defer_resume)
        applier_defer(s, "store: remotetask.db is locked by another process");
    else
        applier_ack(s);
}

static void own_released(void *o)
{
    (void)o;
    own.nreleased++;
}

static int own_serves(void *o, const char *client)
{
    (void)o;
    return strcmp(client, own.unserved) != 0;
}

static const struct applier_ops own_ops = {
    .start = own_start,
    .resume = own_resume,
    .clear = NULL,
    .dead = NULL,
    .released = own_released,
    .serves = own_serves,
};

static struct applier *new_applier(size_t max_slots, size_t max_running)
{
    memset(&fk, 0, sizeof(fk));
    memset(&own, 0, sizeof(own));
    fk.connected = 1;
    struct applier *a =
        applier_new(NULL, BROKER_FORWARD, max_slots, max_running, 16, &own_ops, &own);
    assert_non_null(a);
    a->io = &fake_io;
    return a;
}

/* Hands a delivery to the applier as an owner would: take, set the
 * client, schedule. Returns the tag. */
static uint64_t deliver_h(struct applier *a, const char *client, int64_t task, uint64_t seq,
                          const char *user_id, const struct broker_header *h, size_t nh)
{
    static uint64_t tag;
    struct broker_delivery d;
    memset(&d, 0, sizeof(d));
    d.delivery_tag = ++tag;
    d.queue = "remotetask.forward.x";
    d.message_id = "m";
    d.user_id = user_id;
    d.body = "b";
    d.len = 1;
    d.headers = h;
    d.n_headers = nh;
    struct applier_slot *s = applier_take(a, &d, "upstream");
    assert_non_null(s);
    snprintf(s->client, sizeof(s->client), "%s", client);
    applier_schedule(s, task, seq);
    return d.delivery_tag;
}

static uint64_t deliver(struct applier *a, const char *client, int64_t task, uint64_t seq)
{
    return deliver_h(a, client, task, seq, "reseller", NULL, 0);
}

static int acked(uint64_t tag)
{
    for (size_t i = 0; i < fk.nack; i++)
        if (fk.acked[i] == tag)
            return 1;
    return 0;
}

/* The first started slot that is still in the owner's hands. */
static struct applier_slot *first_running(struct applier *a)
{
    for (size_t i = 0; i < own.nstarted; i++) {
        struct applier_slot *s = own.started[i];
        if (s->phase == APPLIER_BUSY && s->running && s->tag == own.started_tag[i])
            return s;
    }
    (void)a;
    return NULL;
}

/* ---- the tests ------------------------------------------------------- */

/* RabbitMQ checks user_id: only this process can publish with its own
 * login, so x-rt-user is read only on a message carrying it. A message of
 * another user claiming our login in x-rt-user is that other user's. */
static void sender_is_the_header_only_on_our_own_login(void **state)
{
    (void)state;
    assert_string_equal(applier_sender("upstream", "upstream", "reseller-a"), "reseller-a");
    assert_string_equal(applier_sender("reseller-b", "upstream", "upstream"), "reseller-b");
    assert_string_equal(applier_sender("reseller-b", "upstream", "reseller-a"), "reseller-b");
    assert_string_equal(applier_sender(NULL, "upstream", "upstream"), "");
    assert_string_equal(applier_sender("upstream", "", "reseller-a"), "upstream");

    struct applier *a = new_applier(4, 4);
    struct broker_header h[] = {{"x-rt-user", BROKER_HEADER_STR, "upstream", 0}};
    deliver_h(a, "7", 1, 1, "reseller-b", h, 1);
    assert_int_equal(own.nstarted, 1);
    assert_string_equal(own.started[0]->user, "reseller-b");
    /* Its retry copy names the real sender, not the forged one. */
    applier_fail(own.started[0], RT_RETRY, 0, "none", "api: down");
    assert_int_equal(fk.npub, 1);
    assert_string_equal(fk.pub[0].user, "reseller-b");
    applier_free(a);
}

/* x-rt-attempts comes from whoever published: INT64_MAX must not overflow
 * when the retry copy counts one more (UBSan halts on that), and nonsense
 * is bounded. */
static void attempts_of_the_sender_are_bounded(void **state)
{
    (void)state;
    struct applier *a = new_applier(4, 4);
    struct broker_header h[] = {{"x-rt-attempts", BROKER_HEADER_INT, NULL, INT64_MAX}};
    deliver_h(a, "7", 1, 1, "reseller", h, 1);
    struct applier_slot *s = own.started[0];
    assert_int_equal(s->attempts, APPLIER_ATTEMPTS_MAX);
    applier_fail(s, RT_RETRY, 0, "none", "api: down");
    assert_int_equal(fk.npub, 1);
    assert_int_equal(fk.pub[0].attempts, APPLIER_ATTEMPTS_MAX + 1);
    /* The last tier: "forward.<longest delay>". */
    char key[BROKER_NAME_MAX];
    assert_int_equal(broker_retry_key(key, sizeof(key), BROKER_FORWARD, 1000), 0);
    assert_string_equal(fk.pub[0].key, key);
    assert_string_equal(fk.pub[0].exchange, "remotetask.retry.7");

    h[0].num = INT64_MIN;
    deliver_h(a, "7", 2, 1, "reseller", h, 1);
    assert_int_equal(own.started[1]->attempts, 0);
    h[0].num = 3;
    deliver_h(a, "7", 3, 1, "reseller", h, 1);
    assert_int_equal(own.started[2]->attempts, 3);
    applier_free(a);
}

/* basic.qos is per consumer: prefetch for each queue consumed, plus what
 * an earlier connection still has in the owner's hands. And when more
 * come than that, none is given back: a requeue comes straight back. */
static void every_delivery_gets_a_slot(void **state)
{
    (void)state;
    assert_int_equal(applier_slots_for(20, 3, 4), 64);
    assert_int_equal(applier_slots_for(64, 1, 16), 80);
    assert_int_equal(applier_slots_for(0, 0, 0), 2);

    struct applier *a = new_applier(applier_slots_for(2, 3, 1), 1);
    const char *clients[] = {"a", "b", "c"};
    for (int round = 0; round < 3; round++)
        for (int c = 0; c < 3; c++)
            deliver(a, clients[c], 100 * c + round, 1);
    struct applier_stats st;
    applier_stats(a, &st);
    assert_int_equal(fk.nreject, 0);
    assert_int_equal(st.requeued, 0);
    assert_int_equal(st.deliveries, 9);
    assert_int_equal(st.busy, 9);
    assert_int_equal(st.slots, 9);
    assert_int_equal(st.running, 1);
    applier_free(a);
}

/* At most max_running in the owner's hands; the others start round robin
 * across clients: a client with fifty queued tasks delays another client's
 * one task by at most one round. */
static void clients_take_turns(void **state)
{
    (void)state;
    const size_t max_running = 2;
    struct applier *a = new_applier(applier_slots_for(64, 3, (int)max_running), max_running);
    for (int64_t t = 1; t <= 50; t++)
        deliver(a, "a", t, 1);
    uint64_t b1 = deliver(a, "b", 1, 1);
    uint64_t c1 = deliver(a, "c", 1, 1);
    uint64_t b2 = deliver(a, "b", 2, 1);
    assert_int_equal(own.nstarted, max_running);

    /* End what runs, oldest first, until everything ran. */
    for (struct applier_slot *s; (s = first_running(a));)
        applier_ack(s);
    assert_int_equal(own.nstarted, 53);
    assert_int_equal(fk.nack, 53);
    size_t first_b = 0, first_c = 0, second_b = 0;
    for (size_t i = 0; i < own.nstarted; i++) {
        if (own.started_tag[i] == b1)
            first_b = i;
        if (own.started_tag[i] == c1)
            first_c = i;
        if (own.started_tag[i] == b2)
            second_b = i;
    }
    printf("start positions: b's first %zu, c's first %zu, b's second %zu (max_running %zu)\n",
           first_b, first_c, second_b, max_running);
    assert_true(first_b <= max_running + 2);
    assert_true(first_c <= max_running + 2);
    assert_true(second_b <= 2 * (max_running + 2));
    /* Within a client, oldest first. */
    assert_string_equal(own.started_client[0], "a");
    assert_int_equal(own.started_tag[0] + 1, own.started_tag[1]);
    applier_free(a);
}

/* Per task order holds with turns: one in hand per task (ready counts),
 * the newest waiting, older ones dropped as duplicates. */
static void one_per_task_in_hand(void **state)
{
    (void)state;
    struct applier *a = new_applier(16, 1);
    uint64_t other = deliver(a, "a", 9, 1); /* takes the one place */
    uint64_t s5 = deliver(a, "a", 1, 5);    /* ready */
    uint64_t s3 = deliver(a, "a", 1, 3);    /* older than the one in hand */
    uint64_t s7 = deliver(a, "a", 1, 7);    /* waits */
    uint64_t s6 = deliver(a, "a", 1, 6);    /* older than the one waiting */
    assert_true(acked(s3));
    assert_true(acked(s6));
    assert_int_equal(own.nstarted, 1);
    applier_ack(first_running(a));
    assert_true(acked(other));
    assert_int_equal(own.nstarted, 2);
    assert_int_equal(own.started_tag[1], s5);
    applier_ack(first_running(a));
    assert_int_equal(own.started_tag[2], s7);
    applier_ack(first_running(a));
    struct applier_stats st;
    applier_stats(a, &st);
    assert_int_equal(st.duplicates, 1);
    assert_int_equal(st.superseded, 1);
    assert_int_equal(st.busy, 0);
    assert_int_equal(fk.nreject, 0);
    applier_free(a);
}

/* A copy the broker nacks or returns keeps its slot and goes again after
 * a backoff: the delivery is never requeued for it. */
static void refused_copy_is_published_again(void **state)
{
    (void)state;
    struct applier *a = new_applier(8, 4);
    int64_t now = clock_mono_ms();
    uint64_t t1 = deliver(a, "7", 1, 1);
    uint64_t t2 = deliver(a, "7", 2, 1);
    applier_fail(own.started[0], RT_RETRY, 0, "none", "api: down");
    applier_fail(own.started[1], RT_REJECT, 4, "api", "api: value");
    assert_int_equal(fk.npub, 2);
    assert_string_equal(fk.pub[1].exchange, "remotetask.dead.7");
    assert_string_equal(fk.pub[1].key, "forward");
    assert_int_equal(applier_on_confirm(a, fk.pub[0].tag, BROKER_NACKED), 1);
    assert_int_equal(applier_on_confirm(a, fk.pub[1].tag, BROKER_RETURNED), 1);
    assert_int_equal(fk.nreject, 0);
    assert_int_equal(fk.nack, 0);

    /* Not before the backoff; then once each. */
    int64_t next = applier_tick(a, now);
    assert_int_equal(fk.npub, 2);
    assert_true(next > now && next <= now + APPLIER_REPUBLISH_MIN_MS + 1000);
    applier_tick(a, now + APPLIER_REPUBLISH_MIN_MS + 1000);
    assert_int_equal(fk.npub, 4);
    applier_on_confirm(a, fk.pub[2].tag, BROKER_ACKED);
    applier_on_confirm(a, fk.pub[3].tag, BROKER_ACKED);
    assert_true(acked(t1));
    assert_true(acked(t2));
    struct applier_stats st;
    applier_stats(a, &st);
    assert_int_equal(st.requeued, 0);
    assert_int_equal(st.republished, 2);
    assert_int_equal(st.retried, 1);
    assert_int_equal(st.dead, 1);
    assert_int_equal(st.busy, 0);

    /* A copy lost with the connection: the broker redelivers, nothing
     * else is said to it. */
    deliver(a, "7", 3, 1);
    applier_fail(own.started[2], RT_RETRY, 0, "none", "api: down");
    applier_on_confirm(a, fk.pub[4].tag, BROKER_LOST);
    assert_int_equal(fk.nack, 2);
    assert_int_equal(fk.nreject, 0);
    applier_stats(a, &st);
    assert_int_equal(st.busy, 0);
    applier_free(a);
}

/* A local step that fails for now: the delivery stays in its slot, neither
 * acked nor copied, the other slots wait, one try per tick, and it is
 * acked once the step works. */
static void deferred_step_keeps_its_delivery(void **state)
{
    (void)state;
    struct applier *a = new_applier(16, 4);
    int64_t now = clock_mono_ms();
    own.defer_start = 1;
    uint64_t t1 = deliver(a, "a", 1, 1);
    uint64_t t2 = deliver(a, "a", 2, 1);
    uint64_t t3 = deliver(a, "b", 1, 1);
    assert_int_equal(own.nstarted, 1); /* the others wait for the trouble to pass */
    assert_true(applier_troubled(a));
    assert_int_equal(fk.nack + fk.nreject + fk.npub, 0);
    assert_false(applier_idle(a));

    int64_t next = applier_tick(a, now);
    assert_int_equal(own.nresumed, 0);
    assert_true(next > now && next <= now + APPLIER_DEFER_MIN_MS + 100);
    own.defer_resume = 1;
    applier_tick(a, now + 10000);
    assert_int_equal(own.nresumed, 1);
    assert_int_equal(own.nstarted, 1);
    assert_int_equal(fk.nack + fk.nreject + fk.npub, 0);

    own.defer_resume = 0;
    applier_tick(a, now + 20000);
    assert_int_equal(own.nresumed, 2);
    assert_true(acked(t1));
    assert_false(applier_troubled(a));
    assert_int_equal(own.nstarted, 3);
    assert_int_equal(own.started_tag[1], t3); /* b's turn after a's */
    assert_int_equal(own.started_tag[2], t2);
    assert_int_equal(fk.npub + fk.nreject, 0);
    struct applier_stats st;
    applier_stats(a, &st);
    assert_int_equal(st.deferred, 2);
    applier_free(a);
}

/* A reconnect forgets what is only waiting: deferred and ready slots are
 * left to the broker (which redelivers them), never acked. */
static void reconnect_and_drain_let_waiting_slots_go(void **state)
{
    (void)state;
    struct applier *a = new_applier(16, 1);
    own.defer_start = 1;
    uint64_t t1 = deliver(a, "a", 1, 1);
    deliver(a, "a", 2, 1);
    applier_on_connected(a);
    struct applier_stats st;
    applier_stats(a, &st);
    assert_int_equal(st.busy, 0);
    assert_int_equal(st.running, 0);
    assert_false(acked(t1));
    assert_int_equal(fk.nack + fk.nreject + fk.npub, 0);

    /* Ready ones are let go at a drain; the one in the owner's hands
     * runs to its end. */
    deliver(a, "a", 3, 1);
    deliver(a, "a", 4, 1);
    assert_int_equal(own.nstarted, 2);
    applier_drain(a);
    applier_stats(a, &st);
    assert_int_equal(st.busy, 1);
    assert_false(applier_idle(a));
    applier_ack(own.started[1]);
    assert_true(applier_idle(a));
    assert_int_equal(fk.nack, 1);
    applier_free(a);
}

/* A store of its own for the watch's tests, in a fresh directory. */
static struct store *watch_store(char *dir, size_t len)
{
    char err[512];
    snprintf(dir, len, "/tmp/rt-test-applier-XXXXXX");
    assert_non_null(mkdtemp(dir));
    struct store *st = store_open(dir, err, sizeof(err));
    if (!st)
        fail_msg("store_open: %s", err);
    return st;
}

static void watch_store_free(struct store *st, const char *dir)
{
    char path[600];
    store_free(st);
    const char *files[] = {"remotetask.db", "remotetask.db-wal", "remotetask.db-shm"};
    for (size_t i = 0; i < 3; i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, files[i]);
        unlink(path);
    }
    rmdir(dir);
}

static uint64_t watched_rows(struct store *st)
{
    uint64_t n = 0;
    assert_int_equal(store_retry_count(st, BROKER_FORWARD, &n), RT_OK);
    return n;
}

/* A confirmed retry copy is watched before its delivery is acked; the
 * copy coming back (its seq) ends the watch; a copy that never comes back
 * is sent again, once per grace, straight to the main queue (the retry
 * exchange, the direction's own key) with its attempts and sender; a
 * newer message of the task ends the watch of an older copy; nothing is
 * sent while the connection is down. */
static void lost_retry_copies_are_sent_again(void **state)
{
    (void)state;
    char dir[64];
    struct store *st = watch_store(dir, sizeof(dir));
    struct applier *a = new_applier(8, 8);
    assert_int_equal(applier_set_store(a, st), RT_OK);

    uint64_t t1 = deliver(a, "7", 1, 5);
    applier_fail(own.started[0], RT_RETRY, 0, "none", "api: HTTP status 503");
    assert_int_equal(fk.npub, 1);
    assert_int_equal(watched_rows(st), 0);
    assert_true(applier_on_confirm(a, fk.pub[0].tag, BROKER_ACKED));
    assert_true(acked(t1));
    assert_int_equal(watched_rows(st), 1);

    /* Not due yet: nothing is sent. */
    applier_tick(a, 1000);
    assert_int_equal(fk.npub, 1);

    /* Due (as if the copy had been lost a grace ago), but the connection
     * is down: nothing; up again, after the look's interval: sent again. */
    assert_int_equal(store_retry_push(st, BROKER_FORWARD, "7", 1, 5, 0), RT_OK);
    fk.connected = 0;
    applier_tick(a, 1000 + APPLIER_WATCH_CHECK_MS);
    assert_int_equal(fk.npub, 1);
    fk.connected = 1;
    applier_tick(a, 1000 + 2 * APPLIER_WATCH_CHECK_MS);
    assert_int_equal(fk.npub, 2);
    assert_string_equal(fk.pub[1].exchange, "remotetask.retry.7");
    assert_string_equal(fk.pub[1].key, "forward");
    assert_int_equal(fk.pub[1].attempts, 1);
    assert_string_equal(fk.pub[1].user, "reseller");
    struct applier_stats stats;
    applier_stats(a, &stats);
    assert_int_equal(stats.resent, 1);
    /* Watched still, due a grace later: the next looks send nothing. */
    assert_int_equal(watched_rows(st), 1);
    applier_tick(a, 1000 + 3 * APPLIER_WATCH_CHECK_MS);
    assert_int_equal(fk.npub, 2);

    /* The copy comes back (seq 5): the watch ends. */
    uint64_t t2 = deliver(a, "7", 1, 5);
    assert_int_equal(watched_rows(st), 0);
    applier_ack(own.started[1]);
    assert_true(acked(t2));

    /* A copy of seq 6 is watched; seq 7 of the task ends it too. */
    deliver(a, "7", 1, 6);
    applier_fail(own.started[2], RT_RETRY, 0, "none", "api: HTTP status 503");
    assert_true(applier_on_confirm(a, fk.pub[2].tag, BROKER_ACKED));
    assert_int_equal(watched_rows(st), 1);
    /* The applier's count is a hint (a put that replaced a row counts
     * one more): each look takes the store's. */
    a->watched = 5;
    applier_tick(a, 1000 + 4 * APPLIER_WATCH_CHECK_MS);
    assert_int_equal(a->watched, 1);
    assert_int_equal(fk.npub, 3);
    deliver(a, "7", 1, 7);
    assert_int_equal(watched_rows(st), 0);
    assert_int_equal(a->watched, 0);
    applier_ack(own.started[3]);

    /* A lost copy of a client the daemon no longer serves (removed from
     * its configuration) is kept, not sent to a queue nobody reads, and
     * looked at again a day later; served again, it is sent. */
    deliver(a, "7", 2, 3);
    applier_fail(own.started[4], RT_RETRY, 0, "none", "api: HTTP status 503");
    assert_true(applier_on_confirm(a, fk.pub[3].tag, BROKER_ACKED));
    assert_int_equal(fk.npub, 4);
    assert_int_equal(store_retry_push(st, BROKER_FORWARD, "7", 2, 3, 0), RT_OK);
    snprintf(own.unserved, sizeof(own.unserved), "7");
    applier_tick(a, 1000 + 5 * APPLIER_WATCH_CHECK_MS);
    assert_int_equal(fk.npub, 4);
    assert_int_equal(watched_rows(st), 1);
    struct store_retry due[2];
    size_t n = 0;
    int64_t wall = clock_wall_ms();
    assert_int_equal(store_retry_due(st, BROKER_FORWARD, wall + 3600 * 1000LL, 2, due, &n), RT_OK);
    assert_int_equal(n, 0);
    assert_int_equal(store_retry_due(st, BROKER_FORWARD, wall + 25 * 3600 * 1000LL, 2, due, &n),
                     RT_OK);
    assert_int_equal(n, 1);
    store_retry_release(due, n);
    applier_stats(a, &stats);
    assert_int_equal(stats.resent, 1);
    own.unserved[0] = '\0';
    assert_int_equal(store_retry_push(st, BROKER_FORWARD, "7", 2, 3, 0), RT_OK);
    applier_tick(a, 1000 + 6 * APPLIER_WATCH_CHECK_MS);
    assert_int_equal(fk.npub, 5);
    assert_int_equal(fk.pub[4].attempts, 1);

    applier_free(a);
    watch_store_free(st, dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(sender_is_the_header_only_on_our_own_login),
        cmocka_unit_test(lost_retry_copies_are_sent_again),
        cmocka_unit_test(attempts_of_the_sender_are_bounded),
        cmocka_unit_test(every_delivery_gets_a_slot),
        cmocka_unit_test(clients_take_turns),
        cmocka_unit_test(one_per_task_in_hand),
        cmocka_unit_test(refused_copy_is_published_again),
        cmocka_unit_test(deferred_step_keeps_its_delivery),
        cmocka_unit_test(reconnect_and_drain_let_waiting_slots_go),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
