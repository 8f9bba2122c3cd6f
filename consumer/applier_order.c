/*
 * applier_order.c - the order slots start in (applier.h): per task order
 * (only the newest message of a task waits behind the one in hand, an
 * older seq is acked and dropped), fairness (at most max_running slots in
 * the owner's hands, the others started round robin across clients,
 * oldest first within a client) and local trouble (applier_defer: a
 * deferred slot holds every new start, and only one deferred slot is
 * tried per tick while its cause persists).
 */
#include "applier.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "applier_int.h"
#include "log.h"
#include "store_journal.h"

/* ---- per task order --------------------------------------------------- */

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
    applier_watch_clear(s);
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

/* ---- fairness --------------------------------------------------------- */

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
void applier_pump(struct applier *a)
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
            applier_text_copy(a->rr_client, sizeof(a->rr_client), s->client);
            s->phase = APPLIER_BUSY;
            s->running = 1;
            a->running++;
            a->ops->start(a->owner, s);
        }
    } while (a->repump);
    a->pumping = 0;
}

/* ---- local trouble ---------------------------------------------------- */

int applier_troubled(const struct applier *a)
{
    return a && a->trouble[0] != '\0';
}

/* A local step worked after applier_defer() had logged a cause. */
void applier_recovered(struct applier *a)
{
    if (!a->trouble[0])
        return;
    log_info("applying works again after: %s", a->trouble);
    a->trouble[0] = '\0';
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
        applier_text_copy(a->trouble, sizeof(a->trouble), cause);
    } else {
        log_debug("task %" PRId64 " of client \"%s\" still waits: %s; next try in %" PRId64 " ms",
                  s->task, s->client, cause, s->defer_ms);
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

void applier_resume_due(struct applier *a, int64_t now_ms)
{
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
}
