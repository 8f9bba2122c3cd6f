/*
 * reverse.c - the client's reverse applier as a component (reverse.h): its
 * lifecycle, deliveries taken into the applier's slots and checked, the
 * broker's events, the applier's callbacks and the counters. Applying a
 * state is reverse_apply.c's (reverse_int.h says which file owns what).
 */
#include "reverse.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "applier.h"
#include "log.h"
#include "reverse_int.h"
#include "store_journal.h"

const char *reverse_dead_kind_name(enum reverse_dead_kind kind)
{
    switch (kind) {
    case REVERSE_DEAD_NONE: return "none";
    case REVERSE_DEAD_UNDECODABLE: return "undecodable";
    case REVERSE_DEAD_UNAUTHORIZED: return "unauthorized";
    case REVERSE_DEAD_UNKNOWN_TASK: return "unknown_task";
    case REVERSE_DEAD_API: return "api";
    case REVERSE_DEAD_SEQ: return "seq";
    }
    return "none";
}

/* ---- the component ----------------------------------------------------- */

void reverse_on_delivery(struct reverse *r, const struct broker_delivery *d)
{
    char err[REVERSE_REASON_MAX];

    struct applier_slot *as = applier_take(r->ap, d, r->cfg->amqp.user);
    if (!as)
        return; /* left to the broker or requeued */
    struct reverse_slot *s = as->priv;
    s->r = r;
    s->as = as;
    s->step = RS_LOOKUP;
    if (strcmp(as->queue, r->queue) != 0) {
        /* Not the queue this applier consumes: a bridge bug, and
         * requeueing would loop. */
        log_error("message from unexpected queue \"%s\" rejected", as->queue);
        applier_discard(as);
        return;
    }
    snprintf(as->client, sizeof(as->client), "%s", r->cfg->client.id);
    if (as->too_big) {
        rev_slot_fail(s, RT_REJECT, REVERSE_DEAD_UNDECODABLE,
                      "undecodable: body of %zu bytes is over the cap", as->len);
        return;
    }
    if (codec_decode(as->body, as->len, &s->msg, err, sizeof(err)) != RT_OK) {
        rev_slot_fail(s, RT_REJECT, REVERSE_DEAD_UNDECODABLE, "undecodable: %s", err);
        return;
    }
    as->task = s->msg.task;
    enum reverse_dead_kind kind =
        reverse_check(r->cfg, as->queue, d->user_id, r->cfg->amqp.user,
                      broker_delivery_header_str(d, "x-rt-user"), &s->msg, err, sizeof(err));
    if (kind != REVERSE_DEAD_NONE) {
        rev_slot_fail(s, RT_REJECT, kind, "%s", err);
        return;
    }
    if (s->msg.kind == CODEC_SYNC_DONE) {
        log_debug("message %s: sync_done \"%s\"", as->message_id[0] ? as->message_id : "without id",
                  s->msg.sync.id);
        s->step = RS_SYNC_WAIT;
        reverse_sync_check(r);
        return;
    }
    const struct codec_state *cs = &s->msg.state;
    char perf[128] = "no performer";
    if (cs->performer_id)
        snprintf(perf, sizeof(perf), "performer %" PRId64 "%s%s%s", cs->performer_id,
                 cs->performer && *cs->performer ? " (\"" : "", cs->performer ? cs->performer : "",
                 cs->performer && *cs->performer ? "\")" : "");
    rev_slot_journal(
        s, JOURNAL_STATE, "status %d, %s, %zu note%s, after task message %" PRIu64 "%s", cs->status,
        perf, cs->nnotes, cs->nnotes == 1 ? "" : "s", cs->fwd_seq, as->attempts ? ", a retry" : "");
    if (reverse_seq_invalid(r, s))
        return;
    log_debug("message %s: state seq %" PRIu64 " of task %" PRId64,
              as->message_id[0] ? as->message_id : "without id", s->msg.seq, s->msg.task);
    applier_schedule(as, s->msg.task, s->msg.seq);
}

void reverse_on_confirm(struct reverse *r, uint64_t tag, enum broker_fate fate)
{
    if (r)
        applier_on_confirm(r->ap, tag, fate);
}

void reverse_on_connected(struct reverse *r)
{
    if (!r)
        return;
    applier_on_connected(r->ap);
    reverse_sync_check(r);
    if (applier_draining(r->ap))
        return;
    if (broker_consume(r->br, r->queue) != RT_OK) {
        log_error("cannot consume queue \"%s\": %s", r->queue, broker_strerror(r->br));
        return; /* the connection is closed: the bridge reconnects */
    }
    log_info("consuming queue \"%s\"", r->queue);
}

int64_t reverse_tick(struct reverse *r, int64_t now_ms)
{
    reverse_sync_check(r);
    return applier_tick(r->ap, now_ms);
}

void reverse_drain(struct reverse *r)
{
    if (!r)
        return;
    applier_drain(r->ap);
    reverse_sync_check(r);
}

int reverse_idle(const struct reverse *r)
{
    return !r || applier_idle(r->ap);
}

void reverse_stats(const struct reverse *r, struct reverse_stats *out)
{
    memset(out, 0, sizeof(*out));
    if (!r)
        return;
    *out = r->stats;
    applier_stats(r->ap, &out->applier);
    out->applier.duplicates += r->applied_dups;
}

/* ---- the applier's callbacks ------------------------------------------- */

/* applier callbacks: the slot's turn, what to free, a dead letter's kind,
 * a slot freed (which may be what a sync_done waits for). */
static void reverse_slot_start(void *owner, struct applier_slot *as)
{
    (void)owner;
    rev_slot_start(as->priv);
}

/* A slot whose store step failed for now: that step again. */
static void reverse_slot_resume(void *owner, struct applier_slot *as)
{
    struct reverse_slot *s = as->priv;
    (void)owner;
    switch (s->resume) {
    case RR_START: rev_slot_start(s); return;
    case RR_PENDING: rev_slot_pend_edit(s); return;
    case RR_COMMIT: rev_slot_commit(s, s->commit_changed); return;
    }
}

static void reverse_slot_clear(void *owner, struct applier_slot *as)
{
    struct reverse_slot *s = as->priv;
    (void)owner;
    codec_msg_release(&s->msg);
    reverse_plan_release(&s->plan);
    free(s->note);
}

static void reverse_slot_dead(void *owner, const struct applier_slot *as)
{
    struct reverse *r = owner;
    switch ((enum reverse_dead_kind)as->dead_kind) {
    case REVERSE_DEAD_UNDECODABLE: r->stats.dead_undecodable++; break;
    case REVERSE_DEAD_UNAUTHORIZED: r->stats.dead_unauthorized++; break;
    case REVERSE_DEAD_UNKNOWN_TASK: r->stats.dead_unknown_task++; break;
    case REVERSE_DEAD_SEQ: r->stats.dead_seq++; break;
    default: r->stats.dead_api++; break;
    }
}

static void reverse_slot_released(void *owner)
{
    reverse_sync_check(owner);
}

/* What the applier tells of a delivery, into the task's journal. */
static void reverse_slot_journal(void *owner, const struct applier_slot *as, const char *event,
                                 const char *detail)
{
    struct reverse *r = owner;
    const struct reverse_slot *s = as->priv;
    store_journal_add(r->st, 0, STORE_SIDE_CLIENT, r->cfg->client.id, as->task, 0, event,
                      s->msg.seq, "%s", detail);
}

/* The client side reads its own client id's reverse queue only. */
static int reverse_serves(void *owner, const char *client)
{
    const struct reverse *r = owner;
    return r->cfg->client.id && strcmp(client, r->cfg->client.id) == 0;
}

static const struct applier_ops reverse_ops = {
    .start = reverse_slot_start,
    .resume = reverse_slot_resume,
    .clear = reverse_slot_clear,
    .dead = reverse_slot_dead,
    .released = reverse_slot_released,
    .journal = reverse_slot_journal,
    .serves = reverse_serves,
};

/* ---- lifecycle ---------------------------------------------------------- */

struct reverse *reverse_new(const struct config *cfg, struct store *st, struct billmgr *bm,
                            struct broker *br, char *err, size_t errlen)
{
    struct reverse *r;

    if (!cfg || !st || !bm || !br) {
        snprintf(err, errlen, "reverse applier: missing config, store, billmgr or broker");
        return NULL;
    }
    if (!cfg->client.enabled || !cfg->client.id || !*cfg->client.id) {
        snprintf(err, errlen, "reverse applier: the configuration has no client section");
        return NULL;
    }
    r = calloc(1, sizeof(*r));
    if (!r) {
        snprintf(err, errlen, "reverse applier: out of memory");
        return NULL;
    }
    r->cfg = cfg;
    r->st = st;
    r->bm = bm;
    r->br = br;
    r->api = &cfg->billmanager.api;
    if (broker_queue_name(r->queue, sizeof(r->queue), BROKER_REVERSE, cfg->client.id) < 0) {
        snprintf(err, errlen, "reverse applier: client id \"%s\" cannot name a queue",
                 cfg->client.id);
        reverse_free(r);
        return NULL;
    }
    /* One queue consumed: prefetch deliveries, plus the slots of an
     * earlier connection still in an API call (at most max_inflight). */
    int inflight = cfg->billmanager.max_inflight > 0 ? cfg->billmanager.max_inflight : 1;
    size_t max_slots = applier_slots_for(cfg->amqp.prefetch, 1, inflight);
    r->ap = applier_new(br, BROKER_REVERSE, max_slots, (size_t)inflight,
                        sizeof(struct reverse_slot), &reverse_ops, r);
    if (!r->ap || applier_set_store(r->ap, st) != RT_OK) {
        snprintf(err, errlen, "reverse applier: out of memory");
        reverse_free(r);
        return NULL;
    }
    return r;
}

void reverse_free(struct reverse *r)
{
    if (!r)
        return;
    applier_free(r->ap);
    free(r);
}
