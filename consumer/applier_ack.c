/*
 * applier_ack.c - the end of a delivery toward the broker (applier.h):
 * the ack, which waits for the store's sync when the daemon commits in
 * groups (applier_set_store; store.h, group commits), the requeue and the
 * discard. An ack always follows the durable commit of the delivery's
 * effect: what the owner committed is in the store's last commit or an
 * earlier one, so the ack waits until that one is on disk.
 */
#include "applier.h"

#include <inttypes.h>
#include <stdlib.h>

#include "applier_int.h"
#include "log.h"
#include "store.h"

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
    if (r == RT_OK) {
        a->st = st;
        applier_watch_open(a);
    }
    return r;
}

void applier_held_free(struct applier *a)
{
    if (a->st)
        store_unlisten(a->st, applier_synced, a);
    free(a->held);
    a->held = NULL;
    a->n_held = a->held_cap = 0;
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
