#include "applier.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fp.h"
#include "log.h"
#include "store.h"
#include "store_journal.h"

/* The broker calls the applier makes, in one table: applier_new() sets the
 * broker's own, and a unit test that compiles this file in
 * (tests/unit/test_applier.c) puts a stand-in there to see every ack,
 * reject and publish. */
struct applier_io {
    rt_status (*ack)(struct broker *b, uint64_t tag);
    rt_status (*reject)(struct broker *b, uint64_t tag, int requeue);
    rt_status (*publish)(struct broker *b, const char *exchange, const char *key,
                         const struct broker_props *props, const void *body, size_t len,
                         uint64_t *tag);
    int (*connected)(const struct broker *b);
    int (*blocked)(const struct broker *b);
    const char *(*strerror)(const struct broker *b);
};

static const struct applier_io applier_broker_io = {
    .ack = broker_ack,
    .reject = broker_reject,
    .publish = broker_publish,
    .connected = broker_connected,
    .blocked = broker_blocked,
    .strerror = broker_strerror,
};

/* An ack that waits for the store's sync (applier_set_store). */
struct applier_held {
    uint64_t tag;
    uint64_t epoch; /* the connection it belongs to */
    uint64_t mark;  /* the store's last commit when it was asked for */
};

struct applier {
    struct broker *br;
    struct store *st; /* NULL: acks go out at once */
    struct applier_held *held;
    size_t n_held, held_cap;
    const struct applier_io *io;
    enum broker_dir dir;
    const struct applier_ops *ops;
    void *owner;
    size_t priv_size;
    struct applier_slot **slots;
    size_t nslots;
    size_t cap;       /* room in slots */
    size_t max_slots; /* what the owner sized for (applier_slots_for) */
    size_t max_running;
    size_t running; /* slots in the owner's hands */
    uint64_t epoch;
    uint64_t taken;
    int draining;
    int grown; /* more deliveries than max_slots came (logged once) */
    int pumping;
    int repump;
    char rr_client[APPLIER_SHORT_MAX];    /* the client whose slot started last */
    char trouble[APPLIER_REASON_MAX];     /* the deferred cause last logged, "" when none */
    uint64_t defers;                      /* applier_defer() calls, to see a resume work */
    char pub_trouble[APPLIER_REASON_MAX]; /* the refused copies' cause last logged */
    /* Backoffs run on the clock the ticks are given: between ticks it is
     * tick_now plus the monotonic time since. */
    int64_t tick_now;
    int64_t tick_mono;
    struct applier_stats stats;
};

static void applier_pump(struct applier *a);

static void applier_journal(const struct applier_slot *s, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Tells the owner's journal what happened to the slot's task; a delivery
 * whose task is not known (undecodable) has no journal to go to. */
static void applier_journal(const struct applier_slot *s, const char *event, const char *fmt, ...)
{
    const struct applier *a = s->a;
    char detail[APPLIER_REASON_MAX + 64];
    va_list ap;

    if (!a->ops->journal || s->task == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    a->ops->journal(a->owner, s, event, detail);
}

static void applier_copy(char *dst, size_t size, const char *src)
{
    snprintf(dst, size, "%s", src ? src : "");
}

static int64_t applier_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Now on the clock of the ticks. */
static int64_t applier_clock_ms(const struct applier *a)
{
    return a->tick_now + (applier_mono_ms() - a->tick_mono);
}

/* The next step of a capped doubling backoff: min the first time. */
static int64_t applier_backoff(int64_t prev, int64_t min, int64_t max)
{
    if (prev <= 0)
        return min;
    return prev >= max / 2 ? max : prev * 2;
}

size_t applier_slots_for(int prefetch, size_t queues, int max_running)
{
    size_t per = prefetch > 0 ? (size_t)prefetch : 1;
    size_t n = per * (queues ? queues : 1) + (max_running > 0 ? (size_t)max_running : 1);
    return n ? n : 1;
}

const char *applier_sender(const char *user_id, const char *own_user, const char *relayed_user)
{
    user_id = user_id ? user_id : "";
    if (own_user && *own_user && strcmp(user_id, own_user) == 0 && relayed_user)
        return relayed_user;
    return user_id;
}

int applier_stale(const struct applier_slot *s)
{
    return s->epoch != s->a->epoch;
}

int applier_troubled(const struct applier *a)
{
    return a && a->trouble[0] != '\0';
}

/* A local step worked after applier_defer() had logged a cause. */
static void applier_recovered(struct applier *a)
{
    if (!a->trouble[0])
        return;
    log_info("applying works again after: %s", a->trouble);
    a->trouble[0] = '\0';
}

void applier_release(struct applier_slot *s)
{
    struct applier *a = s->a;
    struct applier_slot *next = s->next;
    void *priv = s->priv;
    int was_running = s->running;

    if (s->prev && s->prev->next == s)
        s->prev->next = NULL;
    if (a->ops->clear)
        a->ops->clear(a->owner, s);
    free(s->body);
    memset(s, 0, sizeof(*s));
    memset(priv, 0, a->priv_size);
    s->a = a;
    s->priv = priv;
    s->phase = APPLIER_FREE;
    if (a->stats.busy)
        a->stats.busy--;
    if (was_running && a->running)
        a->running--;
    if (next) {
        next->prev = NULL;
        if (a->draining || applier_stale(next))
            applier_release(next);
        else
            next->phase = APPLIER_READY;
    }
    if (a->ops->released)
        a->ops->released(a->owner);
    applier_pump(a);
}

/* Keeps s's ack until the store's next sync. Without memory for it the
 * delivery stays unacknowledged: the broker gives it again after a
 * reconnection, and its seq, by then applied, makes it a duplicate. */
static void applier_hold_ack(struct applier *a, const struct applier_slot *s)
{
    if (a->n_held == a->held_cap) {
        size_t cap = a->held_cap ? a->held_cap * 2 : 64;
        struct applier_held *h = realloc(a->held, cap * sizeof(*h));
        if (!h) {
            log_warning("no memory to hold the ack of task %" PRId64 " of client \"%s\" (it "
                        "will be redelivered)",
                        s->task, s->client);
            return;
        }
        a->held = h;
        a->held_cap = cap;
    }
    a->held[a->n_held++] = (struct applier_held){s->tag, a->epoch, store_mark(a->st)};
    store_want_sync(a->st);
}

/* The store synced: the acks that waited for it go out, in the order they
 * were asked for; those of an earlier connection are dropped (the broker
 * has given their deliveries back). */
static void applier_synced(void *arg)
{
    struct applier *a = arg;
    size_t keep = 0;
    for (size_t i = 0; i < a->n_held; i++) {
        struct applier_held h = a->held[i];
        if (h.epoch != a->epoch)
            continue;
        if (!store_durable(a->st, h.mark)) {
            a->held[keep++] = h;
            continue;
        }
        if (a->io->ack(a->br, h.tag) != RT_OK)
            log_warning("ack failed (the delivery will be redelivered): %s",
                        a->io->strerror(a->br));
    }
    a->n_held = keep;
}

rt_status applier_set_store(struct applier *a, struct store *st)
{
    rt_status r = store_listen(st, applier_synced, a);
    if (r == RT_OK)
        a->st = st;
    return r;
}

void applier_ack(struct applier_slot *s)
{
    struct applier *a = s->a;
    /* A slot whose step was deferred got past it: the trouble is over. */
    if (s->running && s->defer_ms)
        applier_recovered(a);
    if (!applier_stale(s)) {
        /* Whatever the owner committed for this delivery is in the store's
         * last commit or an earlier one: the ack waits until that is on
         * disk (store.h, group commits). */
        if (a->st && !store_durable(a->st, store_mark(a->st)))
            applier_hold_ack(a, s);
        else if (a->io->ack(a->br, s->tag) != RT_OK)
            log_warning("ack failed for task %" PRId64 " of client \"%s\" (it will be "
                        "redelivered): %s",
                        s->task, s->client, a->io->strerror(a->br));
    }
    applier_release(s);
}

void applier_requeue(struct applier_slot *s)
{
    struct applier *a = s->a;
    if (!applier_stale(s)) {
        a->stats.requeued++;
        if (a->io->reject(a->br, s->tag, 1) != RT_OK)
            log_warning("requeue failed for a message of queue \"%s\": %s", s->queue,
                        a->io->strerror(a->br));
    }
    applier_release(s);
}

void applier_discard(struct applier_slot *s)
{
    struct applier *a = s->a;
    if (!applier_stale(s) && a->io->reject(a->br, s->tag, 0) != RT_OK)
        log_warning("reject failed for a message of queue \"%s\": %s", s->queue,
                    a->io->strerror(a->br));
    applier_release(s);
}

/* Writes the exchange and the routing key of the slot's copy; key is ""
 * when the client cannot name one. */
static void applier_copy_route(const struct applier_slot *s, char *exchange, size_t elen, char *key,
                               size_t klen)
{
    int dead = s->phase == APPLIER_DEAD_PUBLISH;
    /* Each client has its own retry and dead-letter exchanges, so that a
     * copy can only ever reach that client's queues. */
    exchange[0] = key[0] = '\0';
    if (dead) {
        if (broker_dead_exchange(exchange, elen, s->client) == 0)
            applier_copy(key, klen, broker_dir_name(s->a->dir));
    } else if (broker_retry_exchange(exchange, elen, s->client) < 0 ||
               broker_retry_key(key, klen, s->a->dir, (unsigned)(s->attempts + 1)) < 0) {
        key[0] = '\0';
    }
}

/* The copy of s was refused (nack, return, or a publish the broker module
 * turned down): it keeps its slot and goes again after a backoff. The
 * cause is logged once, until a copy is taken again. */
static void applier_refused(struct applier_slot *s, const char *why)
{
    struct applier *a = s->a;
    char exchange[BROKER_NAME_MAX], key[BROKER_NAME_MAX], cause[APPLIER_REASON_MAX];
    int retry = s->phase == APPLIER_RETRY_PUBLISH;

    applier_copy_route(s, exchange, sizeof(exchange), key, sizeof(key));
    s->pub_sent = 0;
    s->pub_delay =
        applier_backoff(s->pub_delay, APPLIER_REPUBLISH_MIN_MS, APPLIER_REPUBLISH_MAX_MS);
    s->pub_at = applier_clock_ms(a) + s->pub_delay;
    snprintf(cause, sizeof(cause), "%s copies to \"%s\": %s", retry ? "retry" : "dead-letter",
             exchange, why);
    if (strcmp(cause, a->pub_trouble) != 0) {
        log_warning("the %s copy of task %" PRId64 " of client \"%s\" was not taken (%s): the "
                    "message stays unacknowledged and its copy is published again, every %d s "
                    "at most, until the broker takes it",
                    retry ? "retry" : "dead-letter", s->task, s->client, cause,
                    APPLIER_REPUBLISH_MAX_MS / 1000);
        applier_copy(a->pub_trouble, sizeof(a->pub_trouble), cause);
    } else {
        log_debug("the %s copy of task %" PRId64 " of client \"%s\" was not taken again (%s): "
                  "next try in %" PRId64 " ms",
                  retry ? "retry" : "dead-letter", s->task, s->client, cause, s->pub_delay);
    }
}

/* Publishes the retry or dead-letter copy of the slot's delivery. */
static void applier_publish(struct applier_slot *s)
{
    struct applier *a = s->a;
    struct broker_header h[8];
    struct broker_props props;
    char key[BROKER_NAME_MAX], mid[APPLIER_SHORT_MAX + 48], exchange[BROKER_NAME_MAX];
    size_t n = 0;
    int dead = s->phase == APPLIER_DEAD_PUBLISH;

    memset(&props, 0, sizeof(props));
    memset(h, 0, sizeof(h));
    applier_copy_route(s, exchange, sizeof(exchange), key, sizeof(key));
    if (dead) {
        h[n++] = (struct broker_header){"x-rt-reason", BROKER_HEADER_STR, s->reason, 0};
        h[n++] = (struct broker_header){"x-rt-kind", BROKER_HEADER_STR,
                                        s->dead_kind_name ? s->dead_kind_name : "", 0};
        h[n++] = (struct broker_header){"x-rt-client", BROKER_HEADER_STR, s->client, 0};
        h[n++] = (struct broker_header){"x-rt-task", BROKER_HEADER_INT, NULL, s->task};
        h[n++] = (struct broker_header){"x-rt-queue", BROKER_HEADER_STR, s->queue, 0};
        h[n++] = (struct broker_header){"x-rt-attempts", BROKER_HEADER_INT, NULL, s->attempts};
        h[n++] = (struct broker_header){"x-rt-message-id", BROKER_HEADER_STR, s->message_id, 0};
        h[n++] = (struct broker_header){"x-rt-user", BROKER_HEADER_STR, s->user, 0};
    } else {
        h[n++] = (struct broker_header){"x-rt-attempts", BROKER_HEADER_INT, NULL, s->attempts + 1};
        h[n++] = (struct broker_header){"x-rt-error", BROKER_HEADER_STR, s->reason, 0};
        h[n++] = (struct broker_header){"x-rt-user", BROKER_HEADER_STR, s->user, 0};
    }
    if (s->message_id[0])
        applier_copy(mid, sizeof(mid), s->message_id);
    else
        snprintf(mid, sizeof(mid), "%s:%" PRIu64 ":%" PRIu64, s->queue, s->epoch, s->tag);
    props.message_id = mid;
    props.headers = h;
    props.n_headers = n;

    rt_status st = key[0]
                       ? a->io->publish(a->br, exchange, key, &props, s->body, s->len, &s->pub_tag)
                       : RT_REJECT;
    if (st == RT_OK) {
        s->pub_sent = 1;
        if (s->pub_delay)
            a->stats.republished++;
        return;
    }
    if (st == RT_RETRY && !a->io->connected(a->br)) {
        /* The connection is gone with the delivery: the broker redelivers. */
        log_debug("publish to \"%s\" failed for a message of queue \"%s\", left to redelivery: %s",
                  exchange, s->queue, a->io->strerror(a->br));
        applier_release(s);
        return;
    }
    if (st == RT_RETRY)
        return; /* blocked or too many unconfirmed: applier_tick tries again */
    /* Invalid for the broker module (which only a bug can cause): the
     * message is neither requeued nor lost; its copy is tried again. */
    log_error("cannot publish to \"%s\" a message of queue \"%s\": %s", exchange, s->queue,
              key[0] ? a->io->strerror(a->br) : "no routing key for its client");
    applier_refused(s, key[0] ? "refused by the broker module" : "no routing key");
}

/* Gives back the slot's place among the max_running. */
static void applier_stop_running(struct applier_slot *s)
{
    if (!s->running)
        return;
    s->running = 0;
    if (s->a->running)
        s->a->running--;
}

void applier_fail(struct applier_slot *s, rt_status status, int kind, const char *kind_name,
                  const char *fmt, ...)
{
    struct applier *a = s->a;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->reason, sizeof(s->reason), fmt, ap);
    va_end(ap);

    if (applier_stale(s)) {
        log_debug("failure of task %" PRId64 " of client \"%s\" after a reconnect (the message is "
                  "redelivered): %s",
                  s->task, s->client, s->reason);
        applier_release(s);
        return;
    }
    applier_stop_running(s);
    s->deferred = 0;
    s->pub_sent = 0;
    s->pub_at = 0;
    s->pub_delay = 0;
    if (status == RT_RETRY) {
        log_warning("apply failed for task %" PRId64 " of client \"%s\", retried (attempt %" PRId64
                    "): %s",
                    s->task, s->client, s->attempts + 1, s->reason);
        s->phase = APPLIER_RETRY_PUBLISH;
    } else {
        log_error("message %s of queue \"%s\" (task %" PRId64 " of client \"%s\") goes to "
                  "%s.%s.%s: %s",
                  s->message_id[0] ? s->message_id : "without id", s->queue, s->task, s->client,
                  BROKER_DEAD_PREFIX, s->client, broker_dir_name(a->dir), s->reason);
        s->dead_kind = kind;
        s->dead_kind_name = kind_name;
        s->phase = APPLIER_DEAD_PUBLISH;
    }
    applier_publish(s); /* s may be gone after this */
    applier_pump(a);
}

void applier_defer(struct applier_slot *s, const char *fmt, ...)
{
    struct applier *a = s->a;
    char cause[APPLIER_REASON_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cause, sizeof(cause), fmt, ap);
    va_end(ap);

    a->defers++;
    a->stats.deferred++;
    if (applier_stale(s) || a->draining) {
        log_debug("task %" PRId64 " of client \"%s\" cannot go on (%s): left to the broker, "
                  "which delivers it again",
                  s->task, s->client, cause);
        applier_release(s);
        return;
    }
    s->deferred = 1;
    if (!s->defer_ms)
        applier_journal(s, JOURNAL_HELD, "%s", cause);
    s->defer_ms = applier_backoff(s->defer_ms, APPLIER_DEFER_MIN_MS, APPLIER_DEFER_MAX_MS);
    s->resume_at = applier_clock_ms(a) + s->defer_ms;
    if (strcmp(cause, a->trouble) != 0) {
        log_warning("cannot apply task %" PRId64 " of client \"%s\" for now: %s; its delivery "
                    "stays unacknowledged and is tried again (every %d s at most), and no "
                    "other starts until then",
                    s->task, s->client, cause, APPLIER_DEFER_MAX_MS / 1000);
        applier_copy(a->trouble, sizeof(a->trouble), cause);
    } else {
        log_debug("task %" PRId64 " of client \"%s\" still waits: %s; next try in %" PRId64 " ms",
                  s->task, s->client, cause, s->defer_ms);
    }
}

/* 1 when a slot is deferred: new slots then wait too, so that only one
 * step at a time meets the trouble. */
static int applier_gated(const struct applier *a)
{
    if (!a->trouble[0])
        return 0;
    for (size_t i = 0; i < a->nslots; i++)
        if (a->slots[i]->phase == APPLIER_BUSY && a->slots[i]->deferred)
            return 1;
    return 0;
}

/* 1 when slot s goes before slot best of the same rank: the smaller client
 * id, then the older delivery. */
static int applier_before(const struct applier_slot *s, const struct applier_slot *best)
{
    int c = strcmp(s->client, best->client);
    return c < 0 || (c == 0 && s->order < best->order);
}

/* The READY slot whose turn it is: the oldest of the next client after the
 * one started last (in the order of client ids, wrapping around). */
static struct applier_slot *applier_next_ready(struct applier *a)
{
    struct applier_slot *after = NULL, *first = NULL;
    for (size_t i = 0; i < a->nslots; i++) {
        struct applier_slot *s = a->slots[i];
        if (s->phase != APPLIER_READY || applier_stale(s))
            continue; /* one of an old connection is about to be let go */
        if (strcmp(s->client, a->rr_client) > 0 && (!after || applier_before(s, after)))
            after = s;
        if (!first || applier_before(s, first))
            first = s;
    }
    return after ? after : first;
}

/* Starts READY slots while fewer than max_running are in the owner's
 * hands. Re-entered from a start (which may end its slot at once), it only
 * asks the running loop to look again. */
static void applier_pump(struct applier *a)
{
    if (a->pumping) {
        a->repump = 1;
        return;
    }
    a->pumping = 1;
    do {
        a->repump = 0;
        while (!a->draining && a->running < a->max_running && !applier_gated(a)) {
            struct applier_slot *s = applier_next_ready(a);
            if (!s)
                break;
            applier_copy(a->rr_client, sizeof(a->rr_client), s->client);
            s->phase = APPLIER_BUSY;
            s->running = 1;
            a->running++;
            a->ops->start(a->owner, s);
        }
    } while (a->repump);
    a->pumping = 0;
}

static struct applier_slot *applier_slot_get(struct applier *a)
{
    for (size_t i = 0; i < a->nslots; i++)
        if (a->slots[i]->phase == APPLIER_FREE)
            return a->slots[i];
    if (a->nslots == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 1;
        struct applier_slot **grown = realloc(a->slots, cap * sizeof(*grown));
        if (!grown)
            return NULL;
        a->slots = grown;
        a->cap = cap;
    }
    if (a->nslots >= a->max_slots && !a->grown) {
        /* Only a broker that sends more than prefetch per consumer, or a
         * bug in the sizing, gets here: a delivery is never given back for
         * want of a slot, so the applier grows. */
        log_warning("more than %zu deliveries in hand at once (prefetch x queues + max_inflight): "
                    "taking more slots",
                    a->max_slots);
        a->grown = 1;
    }
    struct applier_slot *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->priv = calloc(1, a->priv_size ? a->priv_size : 1);
    if (!s->priv) {
        free(s);
        return NULL;
    }
    s->a = a;
    a->slots[a->nslots++] = s;
    a->stats.slots = a->nslots;
    return s;
}

struct applier_slot *applier_take(struct applier *a, const struct broker_delivery *d,
                                  const char *own_user)
{
    int64_t attempts = 0;

    if (a->draining) {
        log_debug("delivery %" PRIu64 " of queue \"%s\" left to the broker: draining",
                  d->delivery_tag, d->queue ? d->queue : "");
        return NULL;
    }
    struct applier_slot *s = applier_slot_get(a);
    if (!s) {
        log_warning("out of memory for a message of queue \"%s\" (%zu slots): requeued",
                    d->queue ? d->queue : "", a->nslots);
        a->stats.requeued++;
        a->io->reject(a->br, d->delivery_tag, 1);
        return NULL;
    }
    a->stats.deliveries++;
    if (d->redelivered)
        a->stats.redelivered++;
    a->stats.busy++;
    s->phase = APPLIER_BUSY;
    s->epoch = a->epoch;
    s->order = ++a->taken;
    s->tag = d->delivery_tag;
    applier_copy(s->queue, sizeof(s->queue), d->queue);
    applier_copy(s->message_id, sizeof(s->message_id), d->message_id);
    /* Whoever published the message wrote this header: bounded here, so
     * that attempts + 1 can never overflow. */
    if (broker_delivery_header_int(d, "x-rt-attempts", &attempts) == 0)
        s->attempts = attempts < 0                      ? 0
                      : attempts > APPLIER_ATTEMPTS_MAX ? APPLIER_ATTEMPTS_MAX
                                                        : attempts;
    applier_copy(s->user, sizeof(s->user),
                 applier_sender(d->user_id, own_user, broker_delivery_header_str(d, "x-rt-user")));
    int64_t replayed = 0;
    s->replayed = broker_delivery_header_int(d, "x-rt-replayed", &replayed) == 0 && replayed;
    s->too_big = d->too_big;
    if (!d->too_big && d->len) {
        s->body = malloc(d->len);
        if (!s->body) {
            log_warning("out of memory for a message of queue \"%s\": requeued", s->queue);
            applier_requeue(s);
            return NULL;
        }
        memcpy(s->body, d->body, d->len);
        s->len = d->len;
    } else {
        s->len = d->len; /* the announced length, for the reason of a dead letter */
    }
    return s;
}

/* The slot in hand for the task of s (ready, busy or publishing), not
 * counting waiting ones. */
static struct applier_slot *applier_active(struct applier *a, const struct applier_slot *s)
{
    for (size_t i = 0; i < a->nslots; i++) {
        struct applier_slot *o = a->slots[i];
        if (o != s && o->phase != APPLIER_FREE && o->phase != APPLIER_WAITING && o->keyed &&
            o->task == s->task && strcmp(o->client, s->client) == 0)
            return o;
    }
    return NULL;
}

void applier_schedule(struct applier_slot *s, int64_t task, uint64_t seq)
{
    struct applier *a = s->a;

    s->keyed = 1;
    s->task = task;
    s->seq = seq;
    if (s->replayed)
        applier_journal(s, JOURNAL_REPLAYED, "from the dead-letter queue");
    struct applier_slot *act = applier_active(a, s);
    if (!act) {
        s->phase = APPLIER_READY;
        applier_pump(a);
        return;
    }
    /* One in hand from an old connection will not ack: this one waits for
     * it whatever its seq, or it could be acked while that one is lost. */
    if (!applier_stale(act) && s->seq < act->seq) {
        a->stats.duplicates++;
        log_debug("dropped seq %" PRIu64 " of task %" PRId64 " of client \"%s\": seq %" PRIu64
                  " is in hand",
                  s->seq, s->task, s->client, act->seq);
        applier_journal(s, JOURNAL_DROPPED, "duplicate: seq %" PRIu64 " is in hand", act->seq);
        applier_ack(s);
        return;
    }
    struct applier_slot *w = act->next;
    if (w) {
        /* Keep the newer of the two waiting; on a tie the newer delivery. */
        struct applier_slot *drop = w->seq > s->seq ? s : w;
        if (drop == w) {
            act->next = NULL;
            w->prev = NULL;
        }
        a->stats.superseded++;
        log_debug("dropped seq %" PRIu64 " of task %" PRId64 " of client \"%s\": superseded",
                  drop->seq, drop->task, drop->client);
        applier_journal(drop, JOURNAL_DROPPED, "superseded by seq %" PRIu64,
                        drop == s ? w->seq : s->seq);
        applier_ack(drop);
        if (drop == s)
            return;
    }
    s->phase = APPLIER_WAITING;
    s->prev = act;
    act->next = s;
}

int applier_on_confirm(struct applier *a, uint64_t tag, enum broker_fate fate)
{
    if (!a)
        return 0;
    for (size_t i = 0; i < a->nslots; i++) {
        struct applier_slot *s = a->slots[i];
        if ((s->phase != APPLIER_RETRY_PUBLISH && s->phase != APPLIER_DEAD_PUBLISH) ||
            !s->pub_sent || s->pub_tag != tag)
            continue;
        int retry = s->phase == APPLIER_RETRY_PUBLISH;
        switch (fate) {
        case BROKER_ACKED:
            if (retry) {
                a->stats.retried++;
                applier_journal(s, JOURNAL_RETRIED, "attempt %" PRId64 ": %s", s->attempts + 1,
                                s->reason);
            } else {
                a->stats.dead++;
                applier_journal(s, JOURNAL_DEAD, "%s", s->reason);
                if (a->ops->dead)
                    a->ops->dead(a->owner, s);
            }
            if (a->pub_trouble[0]) {
                log_info("the broker takes copies again (after: %s)", a->pub_trouble);
                a->pub_trouble[0] = '\0';
            }
            applier_ack(s);
            break;
        case BROKER_NACKED:
        case BROKER_RETURNED:
            /* Never a requeue: it would come straight back, and count
             * toward a quorum queue's delivery limit. */
            applier_refused(s, fate == BROKER_NACKED ? "refused by the broker (nack)"
                                                     : "returned as unroutable");
            break;
        case BROKER_LOST:
            /* The connection went with the delivery: the broker redelivers. */
            applier_release(s);
            break;
        }
        return 1;
    }
    return 0;
}

void applier_on_connected(struct applier *a)
{
    if (!a)
        return;
    a->epoch++;
    /* Deliveries of the old connection that are not in an API call are
     * forgotten; those in a call finish it, without acking. */
    for (size_t i = 0; i < a->nslots; i++) {
        struct applier_slot *s = a->slots[i];
        if (s->phase == APPLIER_WAITING || s->phase == APPLIER_READY ||
            s->phase == APPLIER_RETRY_PUBLISH || s->phase == APPLIER_DEAD_PUBLISH ||
            (s->phase == APPLIER_BUSY && s->deferred))
            applier_release(s);
    }
}

/* The deferred slot to resume at now_ms: the one due first, or NULL. */
static struct applier_slot *applier_due_deferred(const struct applier *a, int64_t now_ms)
{
    struct applier_slot *best = NULL;
    for (size_t i = 0; i < a->nslots; i++) {
        struct applier_slot *s = a->slots[i];
        if (s->phase != APPLIER_BUSY || !s->deferred || s->resume_at > now_ms)
            continue;
        if (!best || s->resume_at < best->resume_at ||
            (s->resume_at == best->resume_at && s->order < best->order))
            best = s;
    }
    return best;
}

int64_t applier_tick(struct applier *a, int64_t now_ms)
{
    int64_t next = now_ms + 1000;

    a->tick_now = now_ms;
    a->tick_mono = applier_mono_ms();
    /* Deferred steps, one at a time while their cause persists: a store
     * that waits out its busy timeout on each call would stall the loop
     * once per slot. */
    for (struct applier_slot *s; !a->draining && (s = applier_due_deferred(a, now_ms));) {
        uint64_t before = a->defers;
        s->deferred = 0;
        if (a->ops->resume)
            a->ops->resume(a->owner, s);
        else
            applier_release(s);
        if (a->defers != before)
            break;
        applier_recovered(a);
    }
    for (size_t i = 0; i < a->nslots; i++) {
        struct applier_slot *s = a->slots[i];
        if ((s->phase != APPLIER_RETRY_PUBLISH && s->phase != APPLIER_DEAD_PUBLISH) || s->pub_sent)
            continue;
        if (a->draining) {
            applier_release(s); /* not sent yet: the broker gives it back at close */
            continue;
        }
        if (now_ms >= s->pub_at && a->io->connected(a->br) && !a->io->blocked(a->br))
            applier_publish(s);
        if ((s->phase == APPLIER_RETRY_PUBLISH || s->phase == APPLIER_DEAD_PUBLISH) &&
            !s->pub_sent) {
            int64_t at = s->pub_at > now_ms + 250 ? s->pub_at : now_ms + 250;
            if (at < next)
                next = at;
        }
    }
    applier_pump(a);
    for (size_t i = 0; i < a->nslots; i++) {
        const struct applier_slot *s = a->slots[i];
        if (s->phase == APPLIER_BUSY && s->deferred && s->resume_at < next)
            next = s->resume_at > now_ms ? s->resume_at : now_ms;
    }
    return next;
}

void applier_drain(struct applier *a)
{
    if (!a)
        return;
    a->draining = 1;
    for (size_t i = 0; i < a->nslots; i++) {
        struct applier_slot *s = a->slots[i];
        if (s->phase == APPLIER_WAITING || s->phase == APPLIER_READY ||
            (s->phase == APPLIER_BUSY && s->deferred) ||
            ((s->phase == APPLIER_RETRY_PUBLISH || s->phase == APPLIER_DEAD_PUBLISH) &&
             !s->pub_sent))
            applier_release(s);
    }
}

int applier_draining(const struct applier *a)
{
    return a && a->draining;
}

int applier_idle(const struct applier *a)
{
    if (!a)
        return 1;
    for (size_t i = 0; i < a->nslots; i++) {
        const struct applier_slot *s = a->slots[i];
        if (s->phase != APPLIER_FREE && s->phase != APPLIER_WAITING && s->phase != APPLIER_READY)
            return 0;
    }
    return 1;
}

size_t applier_count(const struct applier *a)
{
    return a ? a->nslots : 0;
}

struct applier_slot *applier_slot_at(const struct applier *a, size_t i)
{
    return a && i < a->nslots ? a->slots[i] : NULL;
}

void applier_stats(const struct applier *a, struct applier_stats *out)
{
    memset(out, 0, sizeof(*out));
    if (!a)
        return;
    *out = a->stats;
    out->running = a->running;
    out->slots = a->nslots;
}

struct applier *applier_new(struct broker *br, enum broker_dir dir, size_t max_slots,
                            size_t max_running, size_t priv_size, const struct applier_ops *ops,
                            void *owner)
{
    struct applier *a;

    if (!ops || !ops->start || max_slots == 0 || max_running == 0)
        return NULL;
    a = calloc(1, sizeof(*a));
    if (!a)
        return NULL;
    a->br = br;
    a->io = &applier_broker_io;
    a->dir = dir;
    a->ops = ops;
    a->owner = owner;
    a->priv_size = priv_size;
    a->max_slots = max_slots;
    a->max_running = max_running;
    a->cap = max_slots;
    a->tick_now = a->tick_mono = applier_mono_ms();
    a->slots = calloc(max_slots, sizeof(*a->slots));
    if (!a->slots) {
        free(a);
        return NULL;
    }
    return a;
}

void applier_free(struct applier *a)
{
    if (!a)
        return;
    if (a->st)
        store_unlisten(a->st, applier_synced, a);
    free(a->held);
    for (size_t i = 0; i < a->nslots; i++) {
        struct applier_slot *s = a->slots[i];
        if (s->phase != APPLIER_FREE && a->ops->clear)
            a->ops->clear(a->owner, s);
        free(s->body);
        free(s->priv);
        free(s);
    }
    free(a->slots);
    free(a);
}

/* ---- crash-safe note appends ------------------------------------------ */

/* 1 for a key that belongs to an intent. */
static int applier_pend_key(const char *key)
{
    return strcmp(key, APPLIER_PEND_SEQ) == 0 || strcmp(key, APPLIER_PEND_LEN) == 0 ||
           strcmp(key, APPLIER_PEND_FP) == 0 ||
           strncmp(key, APPLIER_PEND_PREFIX, strlen(APPLIER_PEND_PREFIX)) == 0;
}

/* Reads the "k=v" item of an fp set at p into key and value (both
 * STORE_APPLIED_MAX + 1 bytes; a set is never longer) and returns where
 * the next one starts, or NULL at the end. A malformed item (no '=')
 * comes back with an empty key, for the caller to skip. */
static const char *applier_set_item(const char *p, char *key, char *value)
{
    while (*p == ';')
        p++;
    if (!*p)
        return NULL;
    size_t n = strcspn(p, ";");
    const char *eq = memchr(p, '=', n);
    key[0] = value[0] = '\0';
    if (eq && n <= STORE_APPLIED_MAX) {
        snprintf(key, STORE_APPLIED_MAX + 1, "%.*s", (int)(eq - p), p);
        snprintf(value, STORE_APPLIED_MAX + 1, "%.*s", (int)(n - (size_t)(eq - p) - 1), eq + 1);
    }
    return p + n;
}

int applier_pend_present(const char *applied)
{
    char v[32];
    return applied && fp_set_get(applied, APPLIER_PEND_LEN, v, sizeof(v)) == 0;
}

/* applier_pend_strip into a buffer that may not alias applied. */
static int applier_strip_into(const char *applied, char *out, size_t outlen)
{
    char key[STORE_APPLIED_MAX + 1], value[STORE_APPLIED_MAX + 1];

    if (!outlen)
        return -1;
    out[0] = '\0';
    for (const char *p = applied ? applied : ""; (p = applier_set_item(p, key, value));) {
        if (!key[0] || applier_pend_key(key))
            continue;
        if (fp_set_put(out, outlen, key, value) < 0) {
            out[0] = '\0';
            return -1;
        }
    }
    return 0;
}

int applier_pend_strip(const char *applied, char *out, size_t outlen)
{
    char *tmp = malloc(outlen ? outlen : 1);
    int rc = -1;
    if (tmp && applier_strip_into(applied, tmp, outlen) == 0) {
        memcpy(out, tmp, strlen(tmp) + 1);
        rc = 0;
    } else if (outlen) {
        out[0] = '\0';
    }
    free(tmp);
    return rc;
}

int applier_pend_put(const char *applied, const char *after, uint64_t seq, const char *note,
                     char *out, size_t outlen)
{
    char key[STORE_APPLIED_MAX + 1], value[STORE_APPLIED_MAX + 1];
    char was[STORE_APPLIED_MAX + 1], pkey[STORE_APPLIED_MAX + 8], fp[FP_HEX_LEN + 1];
    size_t len = note ? strlen(note) : 0;
    char *tmp = malloc(outlen ? outlen : 1);
    int rc = -1;

    applied = applied ? applied : "";
    if (!tmp || applier_strip_into(applied, tmp, outlen) < 0)
        goto done;
    fp_of_mem(note ? note : "", len, fp);
    if (fp_set_put_int(tmp, outlen, APPLIER_PEND_SEQ, (int64_t)seq) < 0 ||
        fp_set_put_int(tmp, outlen, APPLIER_PEND_LEN, (int64_t)len) < 0 ||
        fp_set_put(tmp, outlen, APPLIER_PEND_FP, fp) < 0)
        goto done;
    /* Only what the edit changes: the set after it is the set before it
     * with these keys replaced, which keeps the intent short. */
    for (const char *p = after ? after : ""; (p = applier_set_item(p, key, value));) {
        if (!key[0] || applier_pend_key(key))
            continue;
        if (fp_set_get(applied, key, was, sizeof(was)) == 0 && strcmp(was, value) == 0)
            continue;
        snprintf(pkey, sizeof(pkey), "%s%s", APPLIER_PEND_PREFIX, key);
        if (fp_set_put(tmp, outlen, pkey, value) < 0)
            goto done;
    }
    if (strlen(tmp) > STORE_APPLIED_MAX)
        goto done;
    memcpy(out, tmp, strlen(tmp) + 1);
    rc = 0;
done:
    free(tmp);
    if (rc < 0)
        applier_pend_strip(applied, out, outlen);
    return rc;
}

int applier_pend_landed(const char *applied, const char *note, uint64_t *seq)
{
    char want[FP_HEX_LEN + 1], got[FP_HEX_LEN + 1];
    int64_t len;

    applied = applied ? applied : "";
    note = note ? note : "";
    if (seq) {
        int64_t v = fp_set_get_int(applied, APPLIER_PEND_SEQ, 0);
        *seq = v > 0 ? (uint64_t)v : 0;
    }
    /* The note written was the note as viewed then plus the block: if the
     * task's note starts with all of it, the edit landed. Staff writing
     * after it only add to the end. Anything else (the middle edited, the
     * note replaced) counts as not landed and the block is written again,
     * which is then the better outcome too: its text is not there. */
    len = fp_set_get_int(applied, APPLIER_PEND_LEN, -1);
    if (len <= 0 || fp_set_get(applied, APPLIER_PEND_FP, want, sizeof(want)) < 0 ||
        strlen(note) < (size_t)len)
        return 0;
    fp_of_mem(note, (size_t)len, got);
    return strcmp(got, want) == 0;
}

int applier_pend_base(const char *applied, int landed, char *out, size_t outlen)
{
    char key[STORE_APPLIED_MAX + 1], value[STORE_APPLIED_MAX + 1];
    size_t pl = strlen(APPLIER_PEND_PREFIX);
    char *tmp = malloc(outlen ? outlen : 1);

    applied = applied ? applied : "";
    if (!tmp || applier_strip_into(applied, tmp, outlen) < 0)
        goto fail;
    for (const char *p = applied; landed && (p = applier_set_item(p, key, value));) {
        if (strncmp(key, APPLIER_PEND_PREFIX, pl) != 0 || !key[pl])
            continue;
        if (fp_set_put(tmp, outlen, key + pl, value) < 0)
            goto fail;
    }
    memcpy(out, tmp, strlen(tmp) + 1);
    free(tmp);
    return 0;
fail:
    free(tmp);
    if (outlen)
        out[0] = '\0';
    return -1;
}
