#include "relay_int.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "codec.h"
#include "linkset.h"
#include "log.h"
#include "store_journal.h"

int64_t relay_backoff_ms(uint64_t attempts)
{
    int64_t d = RELAY_BACKOFF_BASE_MS;
    for (uint64_t i = 0; i < attempts && d < RELAY_BACKOFF_MAX_MS; i++)
        d *= 2;
    return d < RELAY_BACKOFF_MAX_MS ? d : RELAY_BACKOFF_MAX_MS;
}

/* ---- slots ----------------------------------------------------------- */

/* A row of the task's journey (store_journal.h), the client side's, at
 * ts_ms (0 = now). */
void relay_slot_journal(const struct relay_slot *s, int64_t ts_ms, const char *event, uint64_t seq,
                        const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    store_journal_vadd(s->r->st, ts_ms, STORE_SIDE_CLIENT, s->ev.client, s->ev.task, 0, event, seq,
                       fmt, ap);
    va_end(ap);
}

int relay_slot_busy(const struct relay *r, const char *client, int64_t task)
{
    for (size_t i = 0; i < r->nslots; i++) {
        const struct relay_slot *s = &r->slots[i];
        if (s->state != SLOT_FREE && s->ev.task == task && strcmp(s->ev.client, client) == 0)
            return 1;
    }
    return 0;
}

struct relay_slot *relay_slot_free_one(struct relay *r)
{
    for (size_t i = 0; i < r->nslots; i++)
        if (r->slots[i].state == SLOT_FREE)
            return &r->slots[i];
    return NULL;
}

/* Lets go of a row: it stays in the outbox as the store has it. */
void relay_slot_release(struct relay_slot *s)
{
    struct relay *r = s->r;
    if (s->state == SLOT_FREE)
        return;
    buf_release(&s->body);
    buf_init(&s->body, CODEC_MAX_BODY);
    s->state = SLOT_FREE;
    s->seq = 0;
    s->tag = 0;
    r->used--;
}

/* The row failed: it is not due again before delay_ms from now. */
void relay_slot_defer(struct relay_slot *s, int64_t delay_ms, const char *reason)
{
    struct relay *r = s->r;
    int64_t next = clock_wall_ms() + delay_ms;
    int64_t shown = delay_ms >= 10000 ? delay_ms / 1000 : delay_ms;
    const char *unit = delay_ms >= 10000 ? "s" : "ms";
    /* A failed view is the view's outcome; a failure later is the message's. */
    if (s->state == SLOT_VIEWING)
        relay_slot_journal(s, 0, JOURNAL_VIEWED, 0, "%s: %s; retried in %" PRId64 " %s",
                           r->cfg->billmanager.api.func_task_edit, reason, shown, unit);
    else
        relay_slot_journal(s, 0, JOURNAL_DEFERRED, s->seq, "%s; retried in %" PRId64 " %s", reason,
                           shown, unit);
    rt_status st = store_outbox_defer(r->st, s->ev.client, s->ev.task, next, reason);
    if (st != RT_OK)
        relay_store_failed(r, "cannot defer an event (its row stays due)");
    else
        r->stats.deferred++;
    relay_slot_release(s);
}

/* The row needs no message: it leaves the outbox unless a newer event
 * arrived meanwhile (then it is taken again and viewed again). */
void relay_slot_done(struct relay_slot *s)
{
    struct relay *r = s->r;
    if (store_outbox_done(r->st, s->ev.client, s->ev.task, s->ev.gen, NULL) != RT_OK)
        relay_store_failed(r, "cannot remove an event from the outbox (it is viewed again)");
    relay_slot_release(s);
}

/* Hands a READY slot to the broker. RT_RETRY keeps it READY for the next
 * tick or relay_on_connected; the view is not repeated. */
static void relay_slot_publish(struct relay_slot *s)
{
    struct relay *r = s->r;
    uint64_t tag = 0;

    if (s->state != SLOT_READY || r->draining)
        return;
    if (!broker_connected(r->br) || broker_blocked(r->br))
        return;
    /* A seq goes out only once its allocation is on disk: after a crash
     * the store must not hand the same seq to different fields, which the
     * server would drop as a duplicate. The pass's one sync releases it
     * (relay_synced). */
    if (!store_durable(r->st, s->mark)) {
        store_want_sync(r->st);
        return;
    }
    struct broker_props props = {
        .message_id = s->message_id,
        .timestamp = clock_wall_ms() / 1000,
        .user_id = NULL,
    };
    /* broker_publish may report LOST for earlier publishes from inside;
     * that confirm must not see this slot as one of them. */
    s->state = SLOT_PUBLISHING;
    rt_status st = broker_publish(r->br, BROKER_EXCHANGE_FORWARD, r->cfg->client.id, &props,
                                  s->body.data, s->body.len, &tag);
    if (st == RT_OK) {
        s->state = SLOT_PUBLISHED;
        s->tag = tag;
        r->stats.published++;
        relay_slot_journal(s, 0, JOURNAL_PUBLISHED, s->seq, "status %d", s->status);
        log_debug("published task %" PRId64 " (seq %" PRIu64 ", tag %" PRIu64 ")", s->ev.task,
                  s->seq, tag);
        return;
    }
    s->state = SLOT_READY;
    if (st == RT_RETRY) {
        log_debug("cannot publish task %" PRId64 " yet: %s", s->ev.task, broker_strerror(r->br));
        return;
    }
    char reason[STORE_ERROR_MAX];
    snprintf(reason, sizeof reason, "publish refused: %s", broker_strerror(r->br));
    log_error("cannot publish task %" PRId64 ": %s", s->ev.task, reason);
    relay_slot_defer(s, RELAY_REJECT_DELAY_MS, reason);
}

/* Inside the transaction of a confirmed message: when it is the newest
 * confirmed one of the task, its status becomes the status the client
 * knows the target has (key "status" of the task's rev set, the one the
 * reverse applier compares a state's status with, consumer/reverse.c).
 * The target takes this status when the server applies the message, so a
 * state still showing the older status is not a change made there. The
 * rest of the rev row (seq, notes, every other key, an intent) is kept. */
static rt_status relay_slot_record_status(struct relay_slot *s)
{
    struct relay *r = s->r;
    struct store_fwd fwd;
    struct store_rev rev;
    rt_status st;

    if ((st = store_fwd_get(r->st, s->ev.client, s->ev.task, &fwd)) != RT_OK)
        return st;
    if (fwd.fp_seq != s->seq)
        return RT_OK; /* a newer message was confirmed first: its status counts */
    if ((st = store_rev_get(r->st, s->ev.client, s->ev.task, &rev)) != RT_OK)
        return st;
    if (!rev.found)
        memset(&rev, 0, sizeof rev);
    /* A state applied after the task was read is newer than the message:
     * the server keeps the target's status over a message that had not
     * seen it (consumer/forward.c), so the status the client knows the
     * target has is the one that state recorded. */
    if (s->rev_seq && rev.seq > s->rev_seq)
        return RT_OK;
    /* The seq of the message that changed the status forwarded: a state
     * that had seen it tells what the target did with that status, and
     * one that had not is stale (consumer/reverse.c). A message that
     * forwards the status the target is known to have changes nothing
     * there, so the seq stays: a state of the task that misses only such
     * messages (one the server dead-lettered, say) is not held back. */
    int64_t known = fp_set_get_int(rev.applied, LINKSET_REV_STATUS, -1);
    if ((known != s->status || fp_set_get_int(rev.applied, LINKSET_REV_STATUS_SEQ, -1) < 0) &&
        fp_set_put_int(rev.applied, sizeof rev.applied, LINKSET_REV_STATUS_SEQ, (int64_t)s->seq) <
            0) {
        log_warning("no room to record the status forwarded for task %" PRId64, s->ev.task);
        return RT_OK;
    }
    if (fp_set_put_int(rev.applied, sizeof rev.applied, LINKSET_REV_STATUS, s->status) < 0) {
        /* The set is a few short keys, far below its cap. */
        log_warning("no room to record the status forwarded for task %" PRId64, s->ev.task);
        return RT_OK;
    }
    return store_rev_put(r->st, s->ev.client, s->ev.task, rev.seq, rev.notes_applied, rev.applied);
}

/* The rows of a confirmed message, in the caller's transaction:
 * fingerprint, updated value, the status the target is to have, the end
 * of the outbox row (*deleted: no newer event came meanwhile) and the
 * journal's row, which is there exactly when the confirmation is. */
static rt_status relay_slot_confirm_rows(struct relay_slot *s, int64_t now, bool *deleted)
{
    struct relay *r = s->r;
    *deleted = false;
    rt_status st = store_fwd_confirm(r->st, s->ev.client, s->ev.task, s->seq, s->fp, now);
    if (st == RT_OK)
        st = relay_slot_record_status(s);
    if (st == RT_OK)
        st = store_fwd_seen(r->st, s->ev.client, s->ev.task, s->updated);
    if (st == RT_OK)
        st = store_outbox_done(r->st, s->ev.client, s->ev.task, s->ev.gen, deleted);
    if (st == RT_OK)
        relay_slot_journal(s, 0, JOURNAL_CONFIRMED, s->seq, "%s",
                           *deleted ? "by the broker"
                                    : "by the broker; the task changed meanwhile");
    return st;
}

/* After the commit that recorded the confirmation. */
static void relay_slot_confirmed(struct relay_slot *s, int64_t now, bool deleted)
{
    struct relay *r = s->r;
    r->stats.confirmed++;
    r->stats.last_publish_ms = now;
    if (deleted)
        log_debug("forwarded task %" PRId64 " (seq %" PRIu64 ")", s->ev.task, s->seq);
    else
        log_debug("forwarded task %" PRId64 " (seq %" PRIu64 "); it changed meanwhile, "
                  "publishing again",
                  s->ev.task, s->seq);
    relay_slot_release(s);
}

/* Records a confirmed message in a transaction of its own, together or
 * not at all. On RT_RETRY the slot stays ACKED and relay_tick tries
 * again. */
void relay_slot_commit(struct relay_slot *s)
{
    struct relay *r = s->r;
    int64_t now = clock_wall_ms();
    bool deleted = false;

    rt_status st = store_begin(r->st);
    if (st == RT_OK)
        st = relay_slot_confirm_rows(s, now, &deleted);
    if (st == RT_OK)
        st = store_meta_set_i64(r->st, RELAY_META_LAST_PUBLISH, now);
    if (st == RT_OK)
        st = store_commit(r->st);
    if (st != RT_OK) {
        const char *why = store_strerror(r->st);
        if (st == RT_RETRY) {
            relay_store_failed(r, "cannot record a confirmed message (it is kept)");
        } else {
            /* The row stays in the outbox: it is viewed and published
             * again, which the server takes as a newer state of the same
             * fields. */
            log_error("cannot record the confirmed message of task %" PRId64 " (seq %" PRIu64
                      "): %s",
                      s->ev.task, s->seq, why);
        }
        store_rollback(r->st);
        if (st == RT_RETRY) {
            s->state = SLOT_ACKED;
            return;
        }
        relay_slot_release(s);
        return;
    }
    relay_store_ok(r);
    relay_slot_confirmed(s, now, deleted);
}

/* Records every message confirmed in this loop pass in one transaction:
 * the pages they share (the outbox, fwd, the journal) are written once,
 * where a commit per confirmation wrote them once each. Runs at the end
 * of the pass, before the store's sync (relay_pass_end). Should the batch
 * fail, each is committed on its own, so that one refused row holds back
 * no other. */
void relay_commit_confirmed(struct relay *r)
{
    size_t n = 0;
    int64_t now = clock_wall_ms();
    for (size_t i = 0; i < r->nslots; i++)
        n += r->slots[i].state == SLOT_CONFIRMED;
    if (n == 0)
        return;
    rt_status st = store_begin(r->st);
    for (size_t i = 0; i < r->nslots && st == RT_OK; i++) {
        struct relay_slot *s = &r->slots[i];
        if (s->state == SLOT_CONFIRMED)
            st = relay_slot_confirm_rows(s, now, &s->deleted);
    }
    if (st == RT_OK)
        st = store_meta_set_i64(r->st, RELAY_META_LAST_PUBLISH, now);
    if (st == RT_OK)
        st = store_commit(r->st);
    if (st != RT_OK)
        store_rollback(r->st);
    for (size_t i = 0; i < r->nslots; i++) {
        struct relay_slot *s = &r->slots[i];
        if (s->state != SLOT_CONFIRMED)
            continue;
        if (st == RT_OK)
            relay_slot_confirmed(s, now, s->deleted);
        else
            relay_slot_commit(s);
    }
    if (st == RT_OK)
        relay_store_ok(r);
}

/* The fields did not change since the last confirmed message: remember
 * the updated value (so reconciliation skips the task) and end the row. */
void relay_slot_unchanged(struct relay_slot *s, const char *updated)
{
    struct relay *r = s->r;
    rt_status st = store_begin(r->st);
    if (st == RT_OK)
        st = store_fwd_seen(r->st, s->ev.client, s->ev.task, updated);
    if (st == RT_OK)
        st = store_outbox_done(r->st, s->ev.client, s->ev.task, s->ev.gen, NULL);
    if (st == RT_OK) {
        relay_slot_journal(s, 0, JOURNAL_UNCHANGED, 0,
                           "the forward fields are as last confirmed: "
                           "nothing published");
        st = store_commit(r->st);
    }
    if (st != RT_OK) {
        relay_store_failed(r, "cannot record a task as unchanged (it is viewed again)");
        store_rollback(r->st);
    } else {
        relay_store_ok(r);
        r->stats.unchanged++;
        log_debug("task %" PRId64 " unchanged: nothing to forward", s->ev.task);
    }
    relay_slot_release(s);
}

/* The fields changed: allocate a seq, encode the message and publish it. */
void relay_slot_prepare(struct relay_slot *s, const struct relay_fields *f)
{
    struct relay *r = s->r;
    char err[256];
    struct codec_msg m;

    if (store_fwd_next_seq(r->st, s->ev.client, s->ev.task, &s->seq) != RT_OK) {
        relay_store_failed(r, "cannot allocate a sequence number (the event is viewed again)");
        relay_slot_release(s);
        return;
    }
    s->mark = store_mark(r->st);
    codec_msg_init(&m, CODEC_TASK);
    m.client = r->cfg->client.id;
    m.task = s->ev.task;
    m.seq = s->seq;
    /* ts is when the oldest of the coalesced events was recorded, so the
     * server can measure the whole way from the change to its apply,
     * outages and outbox waits included. */
    m.ts = s->ev.first_ms > 0 ? s->ev.first_ms : clock_wall_ms();
    m.fwd.department = f->department;
    m.fwd.name = f->name;
    m.fwd.type = f->type;
    m.fwd.note = f->note;
    m.fwd.deadline = f->deadline;
    m.fwd.item = f->item;
    m.fwd.account = f->account;
    m.fwd.status = f->status;
    m.fwd.rev_seq = s->rev_seq;
    s->status = f->status;
    buf_reset(&s->body);
    if (codec_encode(&m, &s->body, err, sizeof err) < 0) {
        /* The same fields will not encode later either; an operator must
         * fix the task, which records a new event and retries at once. */
        char reason[STORE_ERROR_MAX];
        snprintf(reason, sizeof reason, "cannot encode: %s", err);
        log_error("cannot forward task %" PRId64 ": %s", s->ev.task, reason);
        relay_slot_defer(s, RELAY_REJECT_DELAY_MS, reason);
        return;
    }
    snprintf(s->message_id, sizeof s->message_id, "%s:%" PRId64 ":%" PRIu64, s->ev.client,
             s->ev.task, s->seq);
    s->state = SLOT_READY;
    relay_slot_publish(s);
}

/* Takes one due row into a free slot and starts its view. Returns 0, or
 * -1 when the call could not be queued (the row stays due). */
int relay_slot_take(struct relay *r, struct relay_slot *s, const struct store_event *ev)
{
    struct billmgr_params p;

    s->r = r;
    s->ev = *ev;
    s->seq = 0;
    s->tag = 0;
    s->rev_seq = 0;
    s->state = SLOT_VIEWING;
    r->used++;
    /* Read before the view, never after: a state applied in between may
     * already be in what the view reads (then the message only looks
     * older than it is, and the server keeps the target's status, which
     * the source has too), but a state the view cannot have seen must not
     * be counted as seen, or the server would write the source's older
     * status over the target's change. */
    struct store_rev rev;
    if (store_rev_get(r->st, ev->client, ev->task, &rev) != RT_OK) {
        /* Not taken: a message saying "no state seen" could write the
         * source's status over a change made on the target. */
        relay_store_failed(r, "cannot read the state applied to a task (its event waits)");
        relay_slot_release(s);
        return -1;
    }
    s->rev_seq = rev.found ? rev.seq : 0;
    billmgr_params_init(&p);
    int bad = billmgr_params_addf(&p, "elid", "%" PRId64, ev->task);
    if (bad == 0)
        bad = billmgr_call(r->bm, r->cfg->billmanager.api.func_task_edit, &p, relay_view_done, s);
    billmgr_params_release(&p);
    if (bad < 0) {
        log_warning("cannot queue the view of task %" PRId64 ": the API queue is full", ev->task);
        relay_slot_release(s);
        return -1;
    }
    r->stats.taken++;
    /* Stamped with the newest event's time: when the change was recorded. */
    if (ev->events > 1)
        relay_slot_journal(s, ev->last_ms, JOURNAL_RECORDED, 0,
                           "%" PRIu64 " events over %" PRId64 " ms, taken for attempt %" PRIu64,
                           ev->events, ev->last_ms - ev->first_ms, ev->attempts + 1);
    else
        relay_slot_journal(s, ev->last_ms, JOURNAL_RECORDED, 0,
                           "1 event, taken for attempt %" PRIu64, ev->attempts + 1);
    return 0;
}

/* ---- publishing and confirmations ------------------------------------ */

void relay_publish_ready(struct relay *r)
{
    for (size_t i = 0; i < r->nslots; i++)
        if (r->slots[i].state == SLOT_READY)
            relay_slot_publish(&r->slots[i]);
}
