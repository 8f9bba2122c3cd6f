/*
 * reverse_sync.c - sync requests on the client side (reverse.h): the ids
 * the bridge registered before it published a sync request (checkevent),
 * the states applied with a change counted for each, and each sync_done
 * answered, with its hook and its ack, only once every delivery taken
 * before it has finished.
 */
#include "reverse.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "applier.h"
#include "log.h"
#include "reverse_int.h"

void reverse_set_sync_done_hook(struct reverse *r, reverse_sync_done_fn hook, void *arg)
{
    r->sync_hook = hook;
    r->sync_arg = arg;
}

void reverse_expect_sync(struct reverse *r, const char *id)
{
    if (!r || !id || !*id || strlen(id) > CODEC_MAX_ID)
        return;
    for (size_t i = 0; i < r->nexpected; i++) {
        if (strcmp(r->expected[i].id, id) == 0) {
            r->expected[i].applied = 0;
            return;
        }
    }
    if (r->nexpected == REVERSE_MAX_EXPECTED) {
        /* The oldest was surely given up by whoever waited for it. */
        memmove(&r->expected[0], &r->expected[1],
                (REVERSE_MAX_EXPECTED - 1) * sizeof(r->expected[0]));
        r->nexpected--;
    }
    snprintf(r->expected[r->nexpected].id, sizeof(r->expected[0].id), "%s", id);
    r->expected[r->nexpected].applied = 0;
    r->nexpected++;
}

void reverse_sync_count_applied(struct reverse *r)
{
    for (size_t i = 0; i < r->nexpected; i++)
        r->expected[i].applied++;
}

/* How many states were applied with a change for sync id, forgetting it. */
static uint64_t reverse_expected_take(struct reverse *r, const char *id)
{
    for (size_t i = 0; i < r->nexpected; i++) {
        if (strcmp(r->expected[i].id, id) != 0)
            continue;
        uint64_t n = r->expected[i].applied;
        memmove(&r->expected[i], &r->expected[i + 1],
                (r->nexpected - i - 1) * sizeof(r->expected[0]));
        r->nexpected--;
        return n;
    }
    return 0;
}

/* 1 when a delivery taken before the sync_done in as is still in hand. */
static int reverse_sync_blocked(const struct reverse *r, const struct applier_slot *as)
{
    size_t n = applier_count(r->ap);
    for (size_t i = 0; i < n; i++) {
        const struct applier_slot *o = applier_slot_at(r->ap, i);
        if (o != as && o->phase != APPLIER_FREE && o->order < as->order)
            return 1;
    }
    return 0;
}

/* A sync_done whose predecessors are done: the hook, then the ack. One of
 * an older connection is only released: its redelivery answers the sync. */
static void reverse_sync_finish(struct reverse *r, struct reverse_slot *s)
{
    struct applier_slot *as = s->as;
    if (applier_stale(as)) {
        applier_release(as);
        return;
    }
    uint64_t applied = reverse_expected_take(r, s->msg.sync.id);
    r->stats.syncs++;
    log_info("sync \"%s\" answered: %" PRIu64 " states published, %" PRIu64 " tasks updated",
             s->msg.sync.id, s->msg.sync.count, applied);
    if (r->sync_hook)
        r->sync_hook(r->sync_arg, s->msg.sync.id, s->msg.sync.count, applied);
    applier_ack(as);
}

void reverse_sync_check(struct reverse *r)
{
    if (r->checking) {
        r->recheck = 1;
        return;
    }
    r->checking = 1;
    do {
        r->recheck = 0;
        size_t n = applier_count(r->ap);
        for (size_t i = 0; i < n; i++) {
            struct applier_slot *as = applier_slot_at(r->ap, i);
            struct reverse_slot *s = as->priv;
            if (as->phase != APPLIER_BUSY || s->step != RS_SYNC_WAIT || reverse_sync_blocked(r, as))
                continue;
            reverse_sync_finish(r, s);
        }
    } while (r->recheck);
    r->checking = 0;
}
