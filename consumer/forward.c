/*
 * forward.c - the server's forward applier as a component (forward.h):
 * its lifecycle, deliveries taken into the applier's slots and checked,
 * sync requests, the broker's events, the applier's callbacks and the
 * counters. Applying a task message is forward_apply.c's
 * (forward_int.h says which file owns what).
 */
#include "forward.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "applier.h"
#include "forward_int.h"
#include "log.h"
#include "notes.h"
#include "store_journal.h"

void forward_copy(char *dst, size_t size, const char *src)
{
    snprintf(dst, size, "%s", src ? src : "");
}

const char *forward_dead_kind_name(enum forward_dead_kind kind)
{
    switch (kind) {
    case FORWARD_DEAD_NONE: return "none";
    case FORWARD_DEAD_UNDECODABLE: return "undecodable";
    case FORWARD_DEAD_UNAUTHORIZED: return "unauthorized";
    case FORWARD_DEAD_DEPARTMENT: return "department";
    case FORWARD_DEAD_API: return "api";
    case FORWARD_DEAD_SEQ: return "seq";
    }
    return "none";
}

/* ---- deliveries --------------------------------------------------------- */

/* A valid sync request: handed to the hook (which only queues a cycle),
 * then acked. Without a hook nothing could answer it; the client's
 * checkevent then times out, which tells its operator more than a dead
 * letter would. */
static void forward_sync(struct forward *f, struct forward_slot *s)
{
    f->stats.syncs++;
    if (f->sync_hook) {
        log_info("sync request \"%s\" of client \"%s\" received", s->msg.sync.id, s->client->id);
        f->sync_hook(f->sync_arg, s->client->id, s->msg.sync.id);
    } else {
        log_warning("sync request \"%s\" of client \"%s\" ignored: nothing here publishes "
                    "task states",
                    s->msg.sync.id, s->client->id);
    }
    applier_ack(s->as);
}

void forward_on_delivery(struct forward *f, const struct broker_delivery *d)
{
    char err[FORWARD_REASON_MAX];

    struct applier_slot *as = applier_take(f->ap, d, f->cfg->amqp.user);
    if (!as)
        return; /* left to the broker or requeued */
    struct forward_slot *s = as->priv;
    s->f = f;
    s->as = as;
    s->state = FS_LINK_LOOKUP;
    s->client = forward_queue_client(f->cfg, as->queue);
    if (!s->client) {
        /* Not a queue this applier consumes: there is no client to route a
         * dead letter to, and requeueing would loop. */
        log_error("message from unexpected queue \"%s\" rejected", as->queue);
        applier_discard(as);
        return;
    }
    forward_copy(as->client, sizeof(as->client), s->client->id);
    if (as->too_big) {
        fwd_slot_fail(s, RT_REJECT, FORWARD_DEAD_UNDECODABLE,
                      "undecodable: body of %zu bytes is over the cap", as->len);
        return;
    }
    if (codec_decode(as->body, as->len, &s->msg, err, sizeof(err)) != RT_OK) {
        fwd_slot_fail(s, RT_REJECT, FORWARD_DEAD_UNDECODABLE, "undecodable: %s", err);
        return;
    }
    as->task = s->msg.task;
    const struct config_server_client *c;
    enum forward_dead_kind kind =
        forward_check(f->cfg, as->queue, d->user_id, f->cfg->amqp.user,
                      broker_delivery_header_str(d, "x-rt-user"), &s->msg, &c, err, sizeof(err));
    if (kind != FORWARD_DEAD_NONE) {
        fwd_slot_fail(s, RT_REJECT, kind, "%s", err);
        return;
    }
    if (s->msg.kind == CODEC_SYNC) {
        forward_sync(f, s);
        return;
    }
    if (as->attempts)
        fwd_slot_journal(s, JOURNAL_RECEIVED, "from \"%s\", attempt %" PRId64, as->user,
                         as->attempts + 1);
    else
        fwd_slot_journal(s, JOURNAL_RECEIVED, "from \"%s\"", as->user);
    if (s->msg.kind == CODEC_TASK && forward_seq_invalid(f, s))
        return;
    s->decoded = 1;
    notes_origin_forward(s->origin, sizeof(s->origin), s->client->id, s->msg.task);
    log_debug("message %s: seq %" PRIu64 " of task %" PRId64 " of client \"%s\"",
              as->message_id[0] ? as->message_id : "without id", s->msg.seq, s->msg.task,
              s->client->id);
    applier_schedule(as, s->msg.task, s->msg.seq);
}

void forward_on_confirm(struct forward *f, uint64_t tag, enum broker_fate fate)
{
    if (f)
        applier_on_confirm(f->ap, tag, fate);
}

void forward_on_connected(struct forward *f)
{
    if (!f)
        return;
    applier_on_connected(f->ap);
    if (applier_draining(f->ap))
        return;
    for (size_t i = 0; i < f->cfg->server.n_clients; i++) {
        char queue[BROKER_NAME_MAX];
        const char *id = f->cfg->server.clients[i].id;
        if (broker_queue_name(queue, sizeof(queue), BROKER_FORWARD, id) < 0) {
            log_error("client id \"%s\" cannot name a queue", id);
            continue;
        }
        rt_status st = broker_consume(f->br, queue);
        if (st != RT_OK) {
            log_error("cannot consume queue \"%s\": %s", queue, broker_strerror(f->br));
            return; /* the connection is closed: the bridge reconnects */
        }
        log_info("consuming queue \"%s\"", queue);
    }
}

int64_t forward_tick(struct forward *f, int64_t now_ms)
{
    return applier_tick(f->ap, now_ms);
}

void forward_drain(struct forward *f)
{
    if (f)
        applier_drain(f->ap);
}

int forward_idle(const struct forward *f)
{
    return !f || applier_idle(f->ap);
}

void forward_set_sync_hook(struct forward *f, forward_sync_fn hook, void *arg)
{
    f->sync_hook = hook;
    f->sync_arg = arg;
}

void forward_set_applied_hook(struct forward *f, forward_applied_fn hook, void *arg)
{
    f->applied_hook = hook;
    f->applied_arg = arg;
}

size_t forward_unacked(const struct forward *f, const char *queue)
{
    size_t n = 0;
    if (!f)
        return 0;
    for (size_t i = 0; i < applier_count(f->ap); i++) {
        const struct applier_slot *as = applier_slot_at(f->ap, i);
        if (as && as->phase != APPLIER_FREE && !applier_stale(as) && strcmp(as->queue, queue) == 0)
            n++;
    }
    return n;
}

void forward_stats(const struct forward *f, struct forward_stats *out)
{
    memset(out, 0, sizeof(*out));
    if (!f)
        return;
    *out = f->stats;
    applier_stats(f->ap, &out->applier);
    out->applier.duplicates += f->applied_dups;
}

/* ---- the applier's callbacks ------------------------------------------- */

/* applier callbacks: the slot's turn, what to free, a dead letter's kind. */
static void forward_slot_start(void *owner, struct applier_slot *as)
{
    (void)owner;
    fwd_slot_start(as->priv);
}

/* A slot whose store step failed for now: that step again. */
static void forward_slot_resume(void *owner, struct applier_slot *as)
{
    struct forward_slot *s = as->priv;
    (void)owner;
    switch (s->resume) {
    case FR_START: fwd_slot_start(s); return;
    case FR_PENDING: fwd_slot_pend_edit(s); return;
    case FR_ADOPT: fwd_slot_adopt(s); return;
    case FR_LIST: fwd_slot_list_page(s); return;
    case FR_RECREATE: fwd_slot_create_intent(s); return;
    case FR_COMMIT: fwd_slot_commit(s, s->commit_counter, s->commit_what); return;
    }
}

static void forward_slot_clear(void *owner, struct applier_slot *as)
{
    struct forward_slot *s = as->priv;
    (void)owner;
    codec_msg_release(&s->msg);
    forward_plan_release(&s->plan);
    free(s->cand);
    free(s->note);
}

static void forward_slot_dead(void *owner, const struct applier_slot *as)
{
    struct forward *f = owner;
    switch ((enum forward_dead_kind)as->dead_kind) {
    case FORWARD_DEAD_UNDECODABLE: f->stats.dead_undecodable++; break;
    case FORWARD_DEAD_UNAUTHORIZED: f->stats.dead_unauthorized++; break;
    case FORWARD_DEAD_DEPARTMENT: f->stats.dead_department++; break;
    case FORWARD_DEAD_SEQ: f->stats.dead_seq++; break;
    default: f->stats.dead_api++; break;
    }
}

/* What the applier tells of a delivery, into the task's journal. */
static void forward_slot_journal(void *owner, const struct applier_slot *as, const char *event,
                                 const char *detail)
{
    const struct forward_slot *s = as->priv;
    struct forward *f = owner;
    store_journal_add(f->st, 0, STORE_SIDE_SERVER, s->client ? s->client->id : as->client, as->task,
                      s->link.dst_task, event, s->msg.seq, "%s", detail);
}

/* The clients of server.clients, as the configuration has them now. */
static int forward_serves(void *owner, const char *client)
{
    const struct forward *f = owner;
    return config_server_client_find(f->cfg, client) != NULL;
}

static const struct applier_ops forward_ops = {
    .start = forward_slot_start,
    .resume = forward_slot_resume,
    .clear = forward_slot_clear,
    .dead = forward_slot_dead,
    .released = NULL,
    .journal = forward_slot_journal,
    .serves = forward_serves,
};

/* ---- lifecycle ---------------------------------------------------------- */

struct forward *forward_new(const struct config *cfg, struct store *st, struct billmgr *bm,
                            struct broker *br, char *err, size_t errlen)
{
    struct forward *f;

    if (!cfg || !st || !bm || !br) {
        snprintf(err, errlen, "forward applier: missing config, store, billmgr or broker");
        return NULL;
    }
    if (!cfg->server.enabled || cfg->server.n_clients == 0) {
        snprintf(err, errlen, "forward applier: the configuration has no server clients");
        return NULL;
    }
    f = calloc(1, sizeof(*f));
    if (!f)
        goto fail;
    f->cfg = cfg;
    f->st = st;
    f->bm = bm;
    f->br = br;
    f->api = &cfg->billmanager.api;
    f->max_dst = calloc(cfg->server.n_clients, sizeof(*f->max_dst));
    f->max_known = calloc(cfg->server.n_clients, sizeof(*f->max_known));
    if (!f->max_dst || !f->max_known)
        goto fail;
    /* basic.qos is per consumer: prefetch deliveries of each client's
     * queue, plus the slots of an earlier connection still in an API call
     * (at most max_inflight are). */
    int inflight = cfg->billmanager.max_inflight > 0 ? cfg->billmanager.max_inflight : 1;
    size_t max_slots = applier_slots_for(cfg->amqp.prefetch, cfg->server.n_clients, inflight);
    f->ap = applier_new(br, BROKER_FORWARD, max_slots, (size_t)inflight,
                        sizeof(struct forward_slot), &forward_ops, f);
    if (!f->ap || applier_set_store(f->ap, st) != RT_OK)
        goto fail;
    return f;
fail:
    snprintf(err, errlen, "forward applier: out of memory");
    forward_free(f);
    return NULL;
}

void forward_free(struct forward *f)
{
    if (!f)
        return;
    applier_free(f->ap);
    free(f->max_dst);
    free(f->max_known);
    free(f);
}
