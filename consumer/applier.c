/*
 * applier.c - the object and its slots (applier.h): lifecycle, taking a
 * delivery into a slot and releasing it, a new connection, draining, the
 * tick that drives the other files (applier_int.h), the counters.
 */
#include "applier.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "applier_int.h"
#include "clock.h"
#include "log.h"
#include "store.h"

static const struct applier_io applier_broker_io = {
    .ack = broker_ack,
    .reject = broker_reject,
    .publish = broker_publish,
    .connected = broker_connected,
    .blocked = broker_blocked,
    .strerror = broker_strerror,
};

void applier_journal(const struct applier_slot *s, const char *event, const char *fmt, ...)
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

void applier_text_copy(char *dst, size_t size, const char *src)
{
    snprintf(dst, size, "%s", src ? src : "");
}

int64_t applier_clock_ms(const struct applier *a)
{
    return a->tick_now + (clock_mono_ms() - a->tick_mono);
}

int64_t applier_backoff(int64_t prev, int64_t min, int64_t max)
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

/* A free slot, or a new one (NULL when memory ran out). */
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

/* Copies into slot s what it keeps of delivery d but its body: the queue,
 * the message id, the tag, x-rt-attempts (bounded), the sender, whether
 * it was replayed. */
static void applier_take_props(struct applier_slot *s, const struct broker_delivery *d,
                               const char *own_user)
{
    int64_t attempts = 0, replayed = 0;

    s->tag = d->delivery_tag;
    applier_text_copy(s->queue, sizeof(s->queue), d->queue);
    applier_text_copy(s->message_id, sizeof(s->message_id), d->message_id);
    /* Whoever published the message wrote this header: bounded here, so
     * that attempts + 1 can never overflow. */
    if (broker_delivery_header_int(d, "x-rt-attempts", &attempts) == 0)
        s->attempts = attempts < 0                      ? 0
                      : attempts > APPLIER_ATTEMPTS_MAX ? APPLIER_ATTEMPTS_MAX
                                                        : attempts;
    applier_text_copy(
        s->user, sizeof(s->user),
        applier_sender(d->user_id, own_user, broker_delivery_header_str(d, "x-rt-user")));
    s->replayed = broker_delivery_header_int(d, "x-rt-replayed", &replayed) == 0 && replayed;
    s->too_big = d->too_big;
}

struct applier_slot *applier_take(struct applier *a, const struct broker_delivery *d,
                                  const char *own_user)
{
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
    applier_take_props(s, d, own_user);
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

int64_t applier_tick(struct applier *a, int64_t now_ms)
{
    int64_t next = now_ms + 1000;

    a->tick_now = now_ms;
    a->tick_mono = clock_mono_ms();
    applier_resume_due(a, now_ms);
    next = applier_copies_due(a, now_ms, next);
    next = applier_watch_due(a, now_ms, next);
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
    a->tick_now = a->tick_mono = clock_mono_ms();
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
    applier_held_free(a);
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

int applier_seq_impossible(uint64_t seq, uint64_t last, int64_t task, char *why, size_t whylen)
{
    if (seq > APPLIER_SEQ_MAX) {
        snprintf(why, whylen,
                 "seq %" PRIu64 " of task %" PRId64 " is above %" PRIu64
                 ", more than a sender can have used: forged or corrupt",
                 seq, task, APPLIER_SEQ_MAX);
        return 1;
    }
    if (seq <= last || seq - last <= APPLIER_SEQ_MAX_JUMP)
        return 0;
    snprintf(why, whylen,
             "seq %" PRIu64 " of task %" PRId64 " is %" PRIu64 " past seq %" PRIu64
             ", the last applied, more than the %" PRIu64
             " a sender can have used: forged or corrupt",
             seq, task, seq - last, last, APPLIER_SEQ_MAX_JUMP);
    return 1;
}
