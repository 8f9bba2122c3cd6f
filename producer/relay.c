#include "relay.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "buf.h"
#include "codec.h"
#include "log.h"
#include "notes.h"
#include "pager.h"
#include "store_journal.h"
#include "taskview.h"

/* Fields of the task view that BILLMANAGER-API.md marks [doc] rather than
 * [chosen], so they are not settings: the service and the customer. */
#define RELAY_FIELD_ITEM   "item"
#define RELAY_FIELD_CLIENT "client"
/* The meta key the status command reads. */
#define RELAY_META_LAST_PUBLISH "last_forward_publish_ms"
/* "<client>:<task>:<seq>": a client id and two 64-bit numbers. */
#define RELAY_MESSAGE_ID_MAX (STORE_CLIENT_MAX + 2 * 21 + 3)
/* A reconciliation stops paging a department past this many pages: a
 * server that ignores p_num would otherwise keep it paging forever. */
#define RELAY_RECONCILE_MAX_PAGES 100000L

enum slot_state {
    SLOT_FREE = 0,
    SLOT_VIEWING,    /* the func_task_edit view is in flight */
    SLOT_READY,      /* encoded, waiting for the broker to take it */
    SLOT_PUBLISHING, /* inside broker_publish (guards re-entrant confirms) */
    SLOT_PUBLISHED,  /* published, awaiting its confirm under tag */
    SLOT_CONFIRMED,  /* confirmed; its commit waits for the end of the loop pass */
    SLOT_ACKED,      /* confirmed; the store commit failed and is retried */
};

/* One row in progress. The slots are an array owned by the relay, so an
 * API call's callback argument (a slot) stays valid for as long as the
 * relay lives, and a call cancelled by billmgr_free() leaks nothing. */
struct relay_slot {
    struct relay *r;
    enum slot_state state;
    struct store_event ev;
    uint64_t seq;
    uint64_t mark; /* the store's commit that allocated seq (store_mark) */
    bool deleted;  /* SLOT_CONFIRMED, committed: its outbox row is gone */
    uint64_t tag;
    int status; /* the status the message carries */
    /* The last state the client had applied to the task before the view
     * was asked for (0 = none, or unknown): the message's "rev_seq". */
    uint64_t rev_seq;
    char fp[FP_HEX_LEN + 1];
    char updated[STORE_UPDATED_MAX + 1];
    char message_id[RELAY_MESSAGE_ID_MAX + 1];
    struct buf body;
};

struct relay {
    const struct config *cfg;
    struct store *st;
    struct billmgr *bm;
    struct broker *br;

    struct relay_slot *slots;
    size_t nslots;
    size_t used;             /* slots not FREE */
    struct store_event *due; /* scratch for store_outbox_due, nslots rows */

    int draining;
    int func_missing;     /* the view function was reported missing (logged once) */
    int in_pump;          /* relay_pump is on the stack: do not re-enter it */
    int woken;            /* scan the outbox at the next pump */
    int more_due;         /* the last scan filled its batch: more rows may be due */
    int64_t next_scan_ms; /* on the tick's clock */

    /* Schedules run on the clock the ticks are given (monotonic): between
     * ticks it is tick_now plus the monotonic time since. The wall clock
     * only stamps what is stored; wall_skew is how far it was ahead of the
     * monotonic clock at the last tick, so that a step back shows. */
    int64_t tick_now;
    int64_t tick_mono;
    int64_t wall_skew;
    int clock_known;      /* a tick has set wall_skew */
    int resched_pending;  /* rows still to move after a clock step */
    int64_t resched_back; /* by how much */

    /* The store failed for now: the cause last logged, and when store work
     * (scans, commits) is tried again. */
    char store_trouble[STORE_ERROR_MAX];
    int64_t store_retry_at;
    int64_t store_backoff;

    /* Reconciliation: one chain of page calls at a time. */
    int recon_running;
    int recon_pending; /* asked for again while running */
    size_t recon_dept; /* index into cfg->client.departments */
    struct pager recon;
    uint64_t recon_listed;
    uint64_t recon_added;
    int64_t next_recon_ms; /* monotonic; 0 = at the first tick */

    struct relay_stats stats;
};

static void relay_pump(struct relay *r, int64_t now_ms);

static int64_t relay_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The wall clock (ms since the epoch): for what is stored or sent. */
static int64_t relay_wall_ms(const struct relay *r)
{
    struct timespec ts;
    (void)r;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Now on the clock of the ticks, for schedules set between ticks. */
static int64_t relay_clock_ms(const struct relay *r)
{
    return r->tick_now + (relay_mono_ms() - r->tick_mono);
}

/* A store call failed (what: the sentence's subject): logged once per
 * cause, and store work pauses for a backoff, so that a store waiting out
 * its busy timeout on every call does not stall the loop. The work itself
 * is kept: rows stay in the outbox, confirmed messages wait ACKED. */
static void relay_store_failed(struct relay *r, const char *what)
{
    const char *why = store_strerror(r->st), *cause = store_strcause(r->st);
    r->store_backoff = r->store_backoff <= 0                              ? RELAY_STORE_RETRY_MIN_MS
                       : r->store_backoff >= RELAY_STORE_RETRY_MAX_MS / 2 ? RELAY_STORE_RETRY_MAX_MS
                                                                          : r->store_backoff * 2;
    r->store_retry_at = relay_clock_ms(r) + r->store_backoff;
    if (strcmp(cause, r->store_trouble) != 0) {
        log_warning("%s: %s; the work waits and is tried again (every %d s at most)", what, why,
                    RELAY_STORE_RETRY_MAX_MS / 1000);
        snprintf(r->store_trouble, sizeof r->store_trouble, "%s", cause);
    } else {
        log_debug("%s: %s", what, why);
    }
}

/* A write to the store worked (reads work while another process holds the
 * write lock, so only a write says the trouble is over). */
static void relay_store_ok(struct relay *r)
{
    r->store_backoff = 0;
    r->store_retry_at = 0;
    if (r->store_trouble[0]) {
        log_info("the store works again (after: %s)", r->store_trouble);
        r->store_trouble[0] = '\0';
    }
}

/* 1 while store work waits for its backoff. */
static int relay_store_paused(const struct relay *r, int64_t mono)
{
    return r->store_trouble[0] && mono < r->store_retry_at;
}

/* ---- pure helpers ---------------------------------------------------- */

int64_t relay_backoff_ms(uint64_t attempts)
{
    int64_t d = RELAY_BACKOFF_BASE_MS;
    for (uint64_t i = 0; i < attempts && d < RELAY_BACKOFF_MAX_MS; i++)
        d *= 2;
    return d < RELAY_BACKOFF_MAX_MS ? d : RELAY_BACKOFF_MAX_MS;
}

void relay_fields_release(struct relay_fields *f)
{
    if (!f)
        return;
    free(f->name);
    free(f->type);
    free(f->note);
    free(f->deadline);
    free(f->item);
    free(f->account);
    memset(f, 0, sizeof *f);
}

/* Reads obj.key as text into *text (NULL when absent). Returns 0, or -1
 * with out->unreadable set when it holds something else: read as "", a
 * name or a note would be cleared on the target. */
static int field_text(json_t *obj, const char *key, const char **text, struct relay_fields *out)
{
    if (billmgr_text_field(obj, key, text) >= 0)
        return 0;
    snprintf(out->unreadable, sizeof out->unreadable, "its field %s is not text", key);
    return -1;
}

/* "<prefix><s>" when s is set and not empty, else "". The receiving side
 * shows these as descriptions, so an unset reference must travel as ""
 * rather than as "service #". */
static char *describe(const char *s, const char *prefix)
{
    if (!s || !*s)
        return strdup("");
    size_t n = strlen(prefix) + strlen(s) + 1;
    char *out = malloc(n);
    if (out)
        snprintf(out, n, "%s%s", prefix, s);
    return out;
}

int relay_fields_from_doc(const struct config *cfg, json_t *doc, struct relay_fields *out)
{
    const struct config_billmgr_api *api = &cfg->billmanager.api;
    const char *dept, *status, *name, *type, *note, *deadline, *item, *client;
    long v;

    memset(out, 0, sizeof *out);
    /* Not forwarded: one that cannot be read only makes reconciliation
     * view the task again. */
    const char *updated = billmgr_text(doc, api->field_updated);
    if (updated && strlen(updated) <= STORE_UPDATED_MAX)
        snprintf(out->updated, sizeof out->updated, "%s", updated);

    /* Only a department that is there and is an id may say "not mapped",
     * which ends the event without a message. */
    if (field_text(doc, api->field_department, &dept, out) < 0)
        return RELAY_FIELDS_UNREADABLE;
    if (!dept || !*dept)
        return 0;
    if (billmgr_long(doc, api->field_department, &v) < 0) {
        snprintf(out->unreadable, sizeof out->unreadable,
                 "its field %s \"%.32s\" is not a department id", api->field_department, dept);
        return RELAY_FIELDS_UNREADABLE;
    }
    out->local_department = v;
    for (size_t i = 0; i < cfg->client.n_departments; i++) {
        if (cfg->client.departments[i].local == v) {
            out->department = cfg->client.departments[i].remote;
            break;
        }
    }
    if (out->department == 0)
        return 0;

    if (field_text(doc, api->field_status, &status, out) < 0 ||
        field_text(doc, api->field_name, &name, out) < 0 ||
        field_text(doc, api->field_type, &type, out) < 0 ||
        field_text(doc, api->field_note, &note, out) < 0 ||
        field_text(doc, api->field_deadline, &deadline, out) < 0 ||
        field_text(doc, RELAY_FIELD_ITEM, &item, out) < 0 ||
        field_text(doc, RELAY_FIELD_CLIENT, &client, out) < 0)
        return RELAY_FIELDS_UNREADABLE;
    if (!status || !*status)
        out->status = 0;
    else if (billmgr_long(doc, api->field_status, &v) == 0 && v >= 0 && v <= 2)
        out->status = (int)v;
    else
        out->status = -1;

    out->name = strdup(name ? name : "");
    out->type = strdup(type ? type : "");
    out->note = notes_native(note ? note : "");
    out->deadline = strdup(deadline ? deadline : "");
    out->item = describe(item, "service #");
    out->account = describe(client, "client #");
    if (!out->name || !out->type || !out->note || !out->deadline || !out->item || !out->account)
        return -1;
    return 1;
}

void relay_fields_fp(const struct relay_fields *f, char out[FP_HEX_LEN + 1])
{
    struct fp h;
    fp_init(&h);
    fp_add_int(&h, f->department);
    fp_add_str(&h, f->name);
    fp_add_str(&h, f->type);
    fp_add_str(&h, f->note);
    fp_add_str(&h, f->deadline);
    fp_add_str(&h, f->item);
    fp_add_str(&h, f->account);
    fp_add_int(&h, f->status);
    fp_hex(&h, out);
}

/* ---- slots ----------------------------------------------------------- */

static void slot_journal(const struct relay_slot *s, int64_t ts_ms, const char *event, uint64_t seq,
                         const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* A row of the task's journey (store_journal.h), the client side's, at
 * ts_ms (0 = now). */
static void slot_journal(const struct relay_slot *s, int64_t ts_ms, const char *event, uint64_t seq,
                         const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    store_journal_vadd(s->r->st, ts_ms, STORE_SIDE_CLIENT, s->ev.client, s->ev.task, 0, event, seq,
                       fmt, ap);
    va_end(ap);
}

static int slot_busy(const struct relay *r, const char *client, int64_t task)
{
    for (size_t i = 0; i < r->nslots; i++) {
        const struct relay_slot *s = &r->slots[i];
        if (s->state != SLOT_FREE && s->ev.task == task && strcmp(s->ev.client, client) == 0)
            return 1;
    }
    return 0;
}

static struct relay_slot *slot_free_one(struct relay *r)
{
    for (size_t i = 0; i < r->nslots; i++)
        if (r->slots[i].state == SLOT_FREE)
            return &r->slots[i];
    return NULL;
}

/* Lets go of a row: it stays in the outbox as the store has it. */
static void slot_release(struct relay_slot *s)
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
static void slot_defer(struct relay_slot *s, int64_t delay_ms, const char *reason)
{
    struct relay *r = s->r;
    int64_t next = relay_wall_ms(r) + delay_ms;
    int64_t shown = delay_ms >= 10000 ? delay_ms / 1000 : delay_ms;
    const char *unit = delay_ms >= 10000 ? "s" : "ms";
    /* A failed view is the view's outcome; a failure later is the message's. */
    if (s->state == SLOT_VIEWING)
        slot_journal(s, 0, JOURNAL_VIEWED, 0, "%s: %s; retried in %" PRId64 " %s",
                     r->cfg->billmanager.api.func_task_edit, reason, shown, unit);
    else
        slot_journal(s, 0, JOURNAL_DEFERRED, s->seq, "%s; retried in %" PRId64 " %s", reason, shown,
                     unit);
    rt_status st = store_outbox_defer(r->st, s->ev.client, s->ev.task, next, reason);
    if (st != RT_OK)
        relay_store_failed(r, "cannot defer an event (its row stays due)");
    else
        r->stats.deferred++;
    slot_release(s);
}

/* The row needs no message: it leaves the outbox unless a newer event
 * arrived meanwhile (then it is taken again and viewed again). */
static void slot_done(struct relay_slot *s)
{
    struct relay *r = s->r;
    if (store_outbox_done(r->st, s->ev.client, s->ev.task, s->ev.gen, NULL) != RT_OK)
        relay_store_failed(r, "cannot remove an event from the outbox (it is viewed again)");
    slot_release(s);
}

/* Hands a READY slot to the broker. RT_RETRY keeps it READY for the next
 * tick or relay_on_connected; the view is not repeated. */
static void slot_publish(struct relay_slot *s)
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
        .timestamp = relay_wall_ms(r) / 1000,
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
        slot_journal(s, 0, JOURNAL_PUBLISHED, s->seq, "status %d", s->status);
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
    slot_defer(s, RELAY_REJECT_DELAY_MS, reason);
}

/* Inside the transaction of a confirmed message: when it is the newest
 * confirmed one of the task, its status becomes the status the client
 * knows the target has (key "status" of the task's rev set, the one the
 * reverse applier compares a state's status with, consumer/reverse.c).
 * The target takes this status when the server applies the message, so a
 * state still showing the older status is not a change made there. The
 * rest of the rev row (seq, notes, every other key, an intent) is kept. */
static rt_status slot_record_status(struct relay_slot *s)
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
    int64_t known = fp_set_get_int(rev.applied, "status", -1);
    if ((known != s->status || fp_set_get_int(rev.applied, RELAY_KEY_STATUS_SEQ, -1) < 0) &&
        fp_set_put_int(rev.applied, sizeof rev.applied, RELAY_KEY_STATUS_SEQ, (int64_t)s->seq) <
            0) {
        log_warning("no room to record the status forwarded for task %" PRId64, s->ev.task);
        return RT_OK;
    }
    if (fp_set_put_int(rev.applied, sizeof rev.applied, "status", s->status) < 0) {
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
static rt_status slot_confirm_rows(struct relay_slot *s, int64_t now, bool *deleted)
{
    struct relay *r = s->r;
    *deleted = false;
    rt_status st = store_fwd_confirm(r->st, s->ev.client, s->ev.task, s->seq, s->fp, now);
    if (st == RT_OK)
        st = slot_record_status(s);
    if (st == RT_OK)
        st = store_fwd_seen(r->st, s->ev.client, s->ev.task, s->updated);
    if (st == RT_OK)
        st = store_outbox_done(r->st, s->ev.client, s->ev.task, s->ev.gen, deleted);
    if (st == RT_OK)
        slot_journal(s, 0, JOURNAL_CONFIRMED, s->seq, "%s",
                     *deleted ? "by the broker" : "by the broker; the task changed meanwhile");
    return st;
}

/* After the commit that recorded the confirmation. */
static void slot_confirmed(struct relay_slot *s, int64_t now, bool deleted)
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
    slot_release(s);
}

/* Records a confirmed message in a transaction of its own, together or
 * not at all. On RT_RETRY the slot stays ACKED and relay_tick tries
 * again. */
static void slot_commit(struct relay_slot *s)
{
    struct relay *r = s->r;
    int64_t now = relay_wall_ms(r);
    bool deleted = false;

    rt_status st = store_begin(r->st);
    if (st == RT_OK)
        st = slot_confirm_rows(s, now, &deleted);
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
        slot_release(s);
        return;
    }
    relay_store_ok(r);
    slot_confirmed(s, now, deleted);
}

/* Records every message confirmed in this loop pass in one transaction:
 * the pages they share (the outbox, fwd, the journal) are written once,
 * where a commit per confirmation wrote them once each. Runs at the end
 * of the pass, before the store's sync (relay_pass_end). Should the batch
 * fail, each is committed on its own, so that one refused row holds back
 * no other. */
static void relay_commit_confirmed(struct relay *r)
{
    size_t n = 0;
    int64_t now = relay_wall_ms(r);
    for (size_t i = 0; i < r->nslots; i++)
        n += r->slots[i].state == SLOT_CONFIRMED;
    if (n == 0)
        return;
    rt_status st = store_begin(r->st);
    for (size_t i = 0; i < r->nslots && st == RT_OK; i++) {
        struct relay_slot *s = &r->slots[i];
        if (s->state == SLOT_CONFIRMED)
            st = slot_confirm_rows(s, now, &s->deleted);
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
            slot_confirmed(s, now, s->deleted);
        else
            slot_commit(s);
    }
    if (st == RT_OK)
        relay_store_ok(r);
}

/* The fields did not change since the last confirmed message: remember
 * the updated value (so reconciliation skips the task) and end the row. */
static void slot_unchanged(struct relay_slot *s, const char *updated)
{
    struct relay *r = s->r;
    rt_status st = store_begin(r->st);
    if (st == RT_OK)
        st = store_fwd_seen(r->st, s->ev.client, s->ev.task, updated);
    if (st == RT_OK)
        st = store_outbox_done(r->st, s->ev.client, s->ev.task, s->ev.gen, NULL);
    if (st == RT_OK) {
        slot_journal(s, 0, JOURNAL_UNCHANGED, 0,
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
    slot_release(s);
}

/* The fields changed: allocate a seq, encode the message and publish it. */
static void slot_prepare(struct relay_slot *s, const struct relay_fields *f)
{
    struct relay *r = s->r;
    char err[256];
    struct codec_msg m;

    if (store_fwd_next_seq(r->st, s->ev.client, s->ev.task, &s->seq) != RT_OK) {
        relay_store_failed(r, "cannot allocate a sequence number (the event is viewed again)");
        slot_release(s);
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
    m.ts = s->ev.first_ms > 0 ? s->ev.first_ms : relay_wall_ms(r);
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
        slot_defer(s, RELAY_REJECT_DELAY_MS, reason);
        return;
    }
    snprintf(s->message_id, sizeof s->message_id, "%s:%" PRId64 ":%" PRIu64, s->ev.client,
             s->ev.task, s->seq);
    s->state = SLOT_READY;
    slot_publish(s);
}

/* The view of a task answered but cannot be read (why): the row is
 * deferred like any failure for now, never dropped nor sent with fields
 * read as empty. */
static void slot_unreadable(struct relay_slot *s, const char *why)
{
    char reason[STORE_ERROR_MAX];
    int64_t delay = relay_backoff_ms(s->ev.attempts);
    snprintf(reason, sizeof reason, "viewing the task failed: %s", why);
    log_warning("cannot view task %" PRId64 ", retrying in %" PRId64 " ms: %s", s->ev.task, delay,
                why);
    slot_defer(s, delay, reason);
}

/* The answer of a task view. */
static void view_done(void *arg, const struct billmgr_reply *rep)
{
    struct relay_slot *s = arg;
    struct relay *r = s->r;
    struct relay_fields f;
    struct store_fwd fwd;
    char reason[STORE_ERROR_MAX];
    char fp[FP_HEX_LEN + 1];

    if (s->state != SLOT_VIEWING)
        return;
    enum taskview_missed missed = taskview_missed(rep, r->cfg->billmanager.api.func_task_edit);
    if (missed == TASKVIEW_MISSED_TASK) {
        log_info("task %" PRId64 " is gone: nothing to forward", s->ev.task);
        slot_journal(s, 0, JOURNAL_VIEWED, 0, "%s: missed: the task is gone: nothing to forward",
                     r->cfg->billmanager.api.func_task_edit);
        r->stats.dropped++;
        slot_done(s);
        goto pump;
    }
    if (missed == TASKVIEW_MISSED_FUNC) {
        const char *func = r->cfg->billmanager.api.func_task_edit;
        snprintf(reason, sizeof reason,
                 "viewing the task failed: the function \"%s\" does not exist on this "
                 "BILLmanager (missed, object \"%s\")",
                 func, rep->err_object);
        /* One line for the cause, not one per task every 5 minutes: every
         * event fails the same way until the configuration is fixed. */
        if (!r->func_missing)
            log_error("the function \"%s\" does not exist on this BILLmanager (it answers "
                      "missed, object \"%s\"): check billmanager.api.func_task_edit; task "
                      "events stay in the outbox and are retried every %d s",
                      func, rep->err_object, RELAY_REJECT_DELAY_MS / 1000);
        else
            log_debug("cannot view task %" PRId64 ", retrying in %d s: %s", s->ev.task,
                      RELAY_REJECT_DELAY_MS / 1000, reason);
        r->func_missing = 1;
        slot_defer(s, RELAY_REJECT_DELAY_MS, reason);
        goto pump;
    }
    if (rep->status != RT_OK) {
        snprintf(reason, sizeof reason, "viewing the task failed: %s: %s", rep->err_type,
                 rep->message);
        if (rep->status == RT_RETRY) {
            int64_t delay = relay_backoff_ms(s->ev.attempts);
            log_warning("cannot view task %" PRId64 ", retrying in %" PRId64 " ms: %s: %s",
                        s->ev.task, delay, rep->err_type, rep->message);
            slot_defer(s, delay, reason);
        } else {
            /* access, auth, value...: a configuration problem an operator
             * fixes; the event waits for that rather than being lost. */
            log_error("cannot view task %" PRId64 ", retrying in %d s: %s: %s%s%s%s", s->ev.task,
                      RELAY_REJECT_DELAY_MS / 1000, rep->err_type, rep->message,
                      *rep->err_object ? " (object " : "", rep->err_object,
                      *rep->err_object ? ")" : "");
            slot_defer(s, RELAY_REJECT_DELAY_MS, reason);
        }
        goto pump;
    }

    r->func_missing = 0;
    char why[128];
    if (taskview_of(rep->doc, s->ev.task, why, sizeof why) < 0) {
        snprintf(reason, sizeof reason, "the view %s", why);
        slot_unreadable(s, reason);
        goto pump;
    }
    int got = relay_fields_from_doc(r->cfg, rep->doc, &f);
    if (got == RELAY_FIELDS_UNREADABLE) {
        slot_unreadable(s, f.unreadable);
        relay_fields_release(&f);
        goto pump;
    }
    if (got < 0) {
        log_warning("cannot read the view of task %" PRId64 ": out of memory", s->ev.task);
        relay_fields_release(&f);
        slot_release(s);
        goto pump;
    }
    if (got == 0) {
        log_debug("task %" PRId64 " is in department %" PRId64 ", which is not mapped: "
                  "nothing to forward",
                  s->ev.task, f.local_department);
        slot_journal(s, 0, JOURNAL_VIEWED, 0,
                     "%s: ok; department %" PRId64 " is not mapped: "
                     "nothing to forward",
                     r->cfg->billmanager.api.func_task_edit, f.local_department);
        r->stats.dropped++;
        relay_fields_release(&f);
        slot_done(s);
        goto pump;
    }
    relay_fields_fp(&f, fp);
    if (store_fwd_get(r->st, s->ev.client, s->ev.task, &fwd) != RT_OK) {
        relay_store_failed(r, "cannot read what was sent for a task (it is viewed again)");
        relay_fields_release(&f);
        slot_release(s);
        goto pump;
    }
    slot_journal(s, 0, JOURNAL_VIEWED, 0, "%s: ok", r->cfg->billmanager.api.func_task_edit);
    if (fwd.found && strcmp(fwd.fp, fp) == 0) {
        slot_unchanged(s, f.updated);
    } else if (r->draining) {
        /* No new publishes while draining: the row waits in the outbox. */
        slot_release(s);
    } else {
        memcpy(s->fp, fp, sizeof s->fp);
        snprintf(s->updated, sizeof s->updated, "%s", f.updated);
        slot_prepare(s, &f);
    }
    relay_fields_release(&f);
pump:
    relay_pump(r, relay_clock_ms(r));
}

/* Takes one due row into a free slot and starts its view. Returns 0, or
 * -1 when the call could not be queued (the row stays due). */
static int slot_take(struct relay *r, struct relay_slot *s, const struct store_event *ev)
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
        slot_release(s);
        return -1;
    }
    s->rev_seq = rev.found ? rev.seq : 0;
    billmgr_params_init(&p);
    int bad = billmgr_params_addf(&p, "elid", "%" PRId64, ev->task);
    if (bad == 0)
        bad = billmgr_call(r->bm, r->cfg->billmanager.api.func_task_edit, &p, view_done, s);
    billmgr_params_release(&p);
    if (bad < 0) {
        log_warning("cannot queue the view of task %" PRId64 ": the API queue is full", ev->task);
        slot_release(s);
        return -1;
    }
    r->stats.taken++;
    /* Stamped with the newest event's time: when the change was recorded. */
    if (ev->events > 1)
        slot_journal(s, ev->last_ms, JOURNAL_RECORDED, 0,
                     "%" PRIu64 " events over %" PRId64 " ms, taken for attempt %" PRIu64,
                     ev->events, ev->last_ms - ev->first_ms, ev->attempts + 1);
    else
        slot_journal(s, ev->last_ms, JOURNAL_RECORDED, 0, "1 event, taken for attempt %" PRIu64,
                     ev->attempts + 1);
    return 0;
}

/* ---- the outbox ------------------------------------------------------ */

/* Reads due rows and takes those not already in progress into free slots.
 * It asks for a whole window's worth: the rows in progress are due too and
 * come first (oldest first_ms), so asking only for the free slots could
 * return nothing but rows already taken. */
static void outbox_scan(struct relay *r, int64_t now_ms)
{
    size_t n = 0;

    r->woken = 0;
    r->next_scan_ms = now_ms + RELAY_SCAN_INTERVAL_MS;
    if (store_outbox_due(r->st, relay_wall_ms(r), r->nslots, r->due, &n) != RT_OK) {
        relay_store_failed(r, "cannot read the outbox");
        r->more_due = 0;
        return;
    }
    r->more_due = n == r->nslots;
    for (size_t i = 0; i < n && r->used < r->nslots; i++) {
        const struct store_event *ev = &r->due[i];
        if (slot_busy(r, ev->client, ev->task))
            continue;
        if (strcmp(ev->client, r->cfg->client.id) != 0) {
            /* Left from a configuration with another client id: the task
             * is still reconciled under the current id, so the old event
             * carries nothing that would be lost. */
            log_warning("event of task %" PRId64 " for client \"%s\", not this client \"%s\": "
                        "dropped",
                        ev->task, ev->client, r->cfg->client.id);
            if (store_outbox_done(r->st, ev->client, ev->task, ev->gen, NULL) == RT_OK)
                r->stats.dropped++;
            else
                relay_store_failed(r, "cannot drop an event of another client id");
            continue;
        }
        struct relay_slot *s = slot_free_one(r);
        if (!s || slot_take(r, s, ev) < 0)
            break;
    }
}

static void publish_ready(struct relay *r)
{
    for (size_t i = 0; i < r->nslots; i++)
        if (r->slots[i].state == SLOT_READY)
            slot_publish(&r->slots[i]);
}

/* The end of the loop pass, before the store's sync. */
static void relay_pass_end(void *arg)
{
    relay_commit_confirmed(arg);
}

/* The store synced the loop pass's commits: the seqs they allocated may
 * go out. */
static void relay_synced(void *arg)
{
    publish_ready(arg);
}

/* Moves work forward: publishes what waits for the broker and fills free
 * slots from the outbox. Scans when woken, once per scan interval, or
 * when the last scan was full and at least a quarter of the window is
 * free again (so that a long backlog is read in batches, not row by row).
 * Called from the tick and at the end of every callback; callbacks that
 * arrive while it runs (a LOST from inside broker_publish) only change
 * slot states. */
static void relay_pump(struct relay *r, int64_t now_ms)
{
    if (r->in_pump || r->draining)
        return;
    r->in_pump = 1;
    publish_ready(r);
    size_t free_slots = r->nslots - r->used;
    size_t batch = r->nslots / 4 ? r->nslots / 4 : 1;
    if (free_slots > 0 && !relay_store_paused(r, now_ms) &&
        (r->woken || now_ms >= r->next_scan_ms || (r->more_due && free_slots >= batch)))
        outbox_scan(r, now_ms);
    r->in_pump = 0;
}

/* ---- reconciliation -------------------------------------------------- */

/* 1 when a listed task needs an outbox event: nothing was recorded for it,
 * the list has no usable `updated` value, or it differs from the one
 * recorded when the task was last viewed. */
static int recon_needs_event(const struct store_fwd *fwd, const char *updated)
{
    if (!updated || !*updated || strlen(updated) > STORE_UPDATED_MAX)
        return 1;
    return !fwd->found || strcmp(fwd->updated, updated) != 0;
}

/* How a reconciliation ended. */
enum recon_end {
    RECON_DONE = 0, /* every department listed */
    RECON_FAILED,   /* an API or store error stopped it (logged) */
    RECON_STOPPED,  /* relay_drain stopped it */
};

static void relay_recon_run(struct relay *r);

static void relay_recon_finish(struct relay *r, enum recon_end how)
{
    int64_t now = relay_clock_ms(r);
    r->recon_running = 0;
    r->next_recon_ms = now + (int64_t)r->cfg->client.poll_interval * 1000;
    if (how == RECON_FAILED) {
        r->stats.reconcile_failed++;
    } else if (how == RECON_DONE) {
        r->stats.reconciliations++;
        log_info("reconciliation done: %" PRIu64 " tasks listed, %" PRIu64 " events recorded",
                 r->recon_listed, r->recon_added);
    }
    if (r->recon_pending && !r->draining) {
        r->recon_pending = 0;
        relay_recon_run(r);
    }
}

/* Asks for the current page of the department being listed. */
static void relay_recon_request(struct relay *r)
{
    if (pager_request(&r->recon, r->bm) < 0) {
        log_warning("reconciliation stopped: cannot queue the list of department %ld",
                    r->recon.department);
        relay_recon_finish(r, RECON_FAILED);
    }
}

/* Lists the configured department i from its first page, or ends the
 * reconciliation when every one was listed. */
static void relay_recon_department(struct relay *r, size_t i)
{
    r->recon_dept = i;
    if (i >= r->cfg->client.n_departments) {
        relay_recon_finish(r, RECON_DONE);
        return;
    }
    pager_start(&r->recon, r->cfg->client.departments[i].local);
    relay_recon_request(r);
}

/* A reconciliation from the first department on. */
static void relay_recon_run(struct relay *r)
{
    r->recon_running = 1;
    r->recon_listed = 0;
    r->recon_added = 0;
    relay_recon_department(r, 0);
}

/* What the rows of one page share: the time their events are recorded
 * at and how many were. */
struct recon_page {
    struct relay *r;
    int64_t now;
    uint64_t added;
};

/* One listed row (pager_row_fn), inside the page's transaction: an event
 * when the task needs one. -1 when the store failed. */
static int relay_recon_row(void *arg, json_t *row, long id)
{
    struct recon_page *pg = arg;
    struct relay *r = pg->r;
    const char *client = r->cfg->client.id;
    const char *col_updated = r->cfg->billmanager.api.field_updated;
    struct store_fwd fwd;

    if (store_fwd_get(r->st, client, id, &fwd) != RT_OK)
        return -1;
    const char *listed = billmgr_text(row, col_updated);
    if (!recon_needs_event(&fwd, listed))
        return 0;
    if (store_outbox_add(r->st, client, id, pg->now) != RT_OK)
        return -1;
    store_journal_add(r->st, pg->now, STORE_SIDE_CLIENT, client, id, 0, JOURNAL_RECONCILED, 0,
                      "the list's %s is \"%s\", \"%s\" when last seen", col_updated,
                      listed ? listed : "", fwd.found ? fwd.updated : "");
    pg->added++;
    return 0;
}

/* Records an event for every row of one page that needs it, in one
 * transaction (one disk sync per page, not per row). Returns the number
 * of rows on the page, or -1 when the store failed or a row's id cannot
 * be read (logged; nothing of the page is recorded): a row that cannot be
 * read may be a task whose event was missed, so the reconciliation fails
 * (and is due again) rather than skip it without a word. */
static long relay_recon_rows(struct relay *r, json_t *doc)
{
    struct recon_page pg = {.r = r, .now = relay_wall_ms(r), .added = 0};
    const char *bad = "";

    if (!pager_has_rows(doc))
        return 0;
    if (store_begin(r->st) != RT_OK)
        goto store_failed;
    long rows = pager_rows(doc, relay_recon_row, &pg, &bad);
    if (rows == PAGER_NOMEM || rows == PAGER_BAD_ROW) {
        if (rows == PAGER_NOMEM)
            log_warning("reconciliation stopped: out of memory");
        else
            log_warning("reconciliation stopped: the list of department %ld (page %ld) has a row "
                        "%s",
                        r->recon.department, r->recon.page, bad);
        store_rollback(r->st);
        return -1;
    }
    if (rows < 0)
        goto rollback_txn;
    if (store_commit(r->st) != RT_OK)
        goto store_failed;
    r->recon_added += pg.added;
    r->stats.reconcile_enqueued += pg.added;
    if (pg.added)
        r->woken = 1;
    return rows;

rollback_txn:
    store_rollback(r->st);
store_failed:
    relay_store_failed(r, "reconciliation stopped: cannot record events");
    return -1;
}

/* The answer of one page of a department's task list (pager_page_fn). */
static void relay_recon_page(void *arg, const struct billmgr_reply *rep)
{
    struct relay *r = arg;

    if (rep->status != RT_OK) {
        log_warning("reconciliation stopped: listing department %ld (page %ld) failed: %s: %s",
                    r->recon.department, r->recon.page, rep->err_type, rep->message);
        relay_recon_finish(r, RECON_FAILED);
        goto pump;
    }
    long rows = relay_recon_rows(r, rep->doc);
    if (rows < 0) {
        relay_recon_finish(r, RECON_FAILED);
        goto pump;
    }
    r->recon_listed += (uint64_t)rows;
    if (r->draining) {
        relay_recon_finish(r, RECON_STOPPED);
        goto pump;
    }
    switch (pager_next(&r->recon, rep->doc, rows)) {
    case PAGER_MORE: relay_recon_request(r); break;
    case PAGER_CAPPED:
        log_warning("reconciliation of department %ld stopped after %ld pages", r->recon.department,
                    r->recon.page);
        relay_recon_department(r, r->recon_dept + 1);
        break;
    case PAGER_LAST:
    default: relay_recon_department(r, r->recon_dept + 1); break;
    }
pump:
    relay_pump(r, relay_clock_ms(r));
}

static void relay_recon_start(struct relay *r)
{
    if (r->draining)
        return;
    if (r->recon_running) {
        r->recon_pending = 1;
        return;
    }
    r->recon_pending = 0;
    log_debug("reconciliation started over %zu departments", r->cfg->client.n_departments);
    relay_recon_run(r);
}

/* ---- the component --------------------------------------------------- */

struct relay *relay_new(const struct config *cfg, struct store *st, struct billmgr *bm,
                        struct broker *br, char *err, size_t errlen)
{
    struct relay *r;

    if (!cfg || !cfg->client.enabled || !cfg->client.id || !st || !bm || !br) {
        snprintf(err, errlen,
                 "the relay needs a client section, a store, an API client and "
                 "a broker");
        return NULL;
    }
    r = calloc(1, sizeof *r);
    if (!r)
        goto fail_alloc;
    r->cfg = cfg;
    r->st = st;
    r->bm = bm;
    r->br = br;
    int inflight = cfg->billmanager.max_inflight > 0 ? cfg->billmanager.max_inflight : 1;
    r->nslots = (size_t)inflight * RELAY_WINDOW_PER_INFLIGHT;
    r->slots = calloc(r->nslots, sizeof *r->slots);
    r->due = calloc(r->nslots, sizeof *r->due);
    if (!r->slots || !r->due)
        goto fail_alloc;
    for (size_t i = 0; i < r->nslots; i++) {
        r->slots[i].r = r;
        buf_init(&r->slots[i].body, CODEC_MAX_BODY);
    }
    bool found = false;
    if (store_meta_get_i64(st, RELAY_META_LAST_PUBLISH, &r->stats.last_publish_ms, &found) !=
        RT_OK) {
        log_warning("cannot read the time of the last forward publish: %s", store_strerror(st));
        r->stats.last_publish_ms = 0;
    }
    if (store_listen_before(st, relay_pass_end, r) != RT_OK ||
        store_listen(st, relay_synced, r) != RT_OK) {
        snprintf(err, errlen, "%s", store_strerror(st));
        relay_free(r);
        return NULL;
    }
    pager_init(&r->recon, &cfg->billmanager.api, cfg->billmanager.api.page_size,
               RELAY_RECONCILE_MAX_PAGES, relay_recon_page, r);
    r->woken = 1;
    /* Until the first tick gives its clock. */
    r->tick_mono = r->tick_now = relay_mono_ms();
    return r;

fail_alloc:
    relay_free(r);
    snprintf(err, errlen, "out of memory");
    return NULL;
}

void relay_free(struct relay *r)
{
    if (!r)
        return;
    store_unlisten(r->st, relay_pass_end, r);
    store_unlisten(r->st, relay_synced, r);
    for (size_t i = 0; r->slots && i < r->nslots; i++)
        buf_release(&r->slots[i].body);
    free(r->slots);
    free(r->due);
    free(r);
}

/* Follows the wall clock: its offset from the monotonic clock, and rows
 * of the outbox deferred by a clock that was ahead of it. At the first
 * tick, rows deferred further than the relay ever defers (written by a
 * clock that was ahead before a restart) become due; after a step back,
 * every deferred row moves back as far. */
static void relay_clock(struct relay *r, int64_t now_ms)
{
    int64_t mono = relay_mono_ms(), wall_ms = relay_wall_ms(r);
    int64_t skew = wall_ms - mono;
    r->tick_now = now_ms;
    r->tick_mono = mono;
    int first = !r->clock_known;
    if (!first && r->wall_skew - skew > RELAY_CLOCK_STEP_MS) {
        log_warning("the wall clock went back %" PRId64 " s: deferred events are moved back as "
                    "far",
                    (r->wall_skew - skew) / 1000);
        r->resched_back += r->wall_skew - skew;
        r->resched_pending = 1;
    }
    r->wall_skew = skew;
    r->clock_known = 1;
    if (first)
        r->resched_pending = 1;
    if (!r->resched_pending || relay_store_paused(r, now_ms))
        return;
    int64_t max =
        RELAY_BACKOFF_MAX_MS > RELAY_REJECT_DELAY_MS ? RELAY_BACKOFF_MAX_MS : RELAY_REJECT_DELAY_MS;
    uint64_t n = 0;
    if (store_outbox_reschedule(r->st, wall_ms, r->resched_back, max, &n) != RT_OK) {
        relay_store_failed(r, "cannot reschedule deferred events after a clock step");
        return;
    }
    if (n)
        log_info("%" PRIu64 " deferred outbox events rescheduled for the wall clock", n);
    r->resched_pending = 0;
    r->resched_back = 0;
}

int64_t relay_tick(struct relay *r, int64_t now_ms)
{
    relay_clock(r, now_ms);
    /* Confirmed messages whose commit the store refused; while it still
     * refuses, one try per backoff, not one per message. */
    for (size_t i = 0; i < r->nslots && !relay_store_paused(r, now_ms); i++)
        if (r->slots[i].state == SLOT_ACKED)
            slot_commit(&r->slots[i]);
    if (!r->draining && !r->recon_running && now_ms >= r->next_recon_ms)
        relay_recon_start(r);
    relay_pump(r, now_ms);

    int64_t next = now_ms + RELAY_SCAN_INTERVAL_MS;
    if (!r->draining && !r->recon_running && r->next_recon_ms < next)
        next = r->next_recon_ms > now_ms ? r->next_recon_ms : now_ms;
    if (r->store_trouble[0] && r->store_retry_at < next)
        next = r->store_retry_at > now_ms ? r->store_retry_at : now_ms;
    return next;
}

void relay_on_confirm(struct relay *r, uint64_t tag, enum broker_fate fate)
{
    struct relay_slot *s = NULL;
    char reason[STORE_ERROR_MAX];

    for (size_t i = 0; i < r->nslots; i++) {
        if (r->slots[i].state == SLOT_PUBLISHED && r->slots[i].tag == tag) {
            s = &r->slots[i];
            break;
        }
    }
    if (!s)
        return;
    s->tag = 0;
    switch (fate) {
    case BROKER_ACKED:
        /* A lazy store (the daemon's) records the pass's confirmations
         * together at its end; otherwise each at once. */
        if (store_lazy(r->st)) {
            s->state = SLOT_CONFIRMED;
            store_want_sync(r->st);
        } else {
            slot_commit(s);
        }
        break;
    case BROKER_NACKED:
    case BROKER_RETURNED: {
        int64_t delay = relay_backoff_ms(s->ev.attempts);
        if (fate == BROKER_NACKED)
            snprintf(reason, sizeof reason, "the broker refused the message (nack)");
        else
            snprintf(reason, sizeof reason,
                     "unroutable: no queue is bound to %s with routing key \"%s\"",
                     BROKER_EXCHANGE_FORWARD, r->cfg->client.id);
        log_warning("cannot forward task %" PRId64 " (seq %" PRIu64 "), retrying in %" PRId64
                    " ms: %s",
                    s->ev.task, s->seq, delay, reason);
        slot_defer(s, delay, reason);
        break;
    }
    case BROKER_LOST:
    default:
        /* Fate unknown: publish the same message again once connected.
         * If it did arrive, the server drops the copy by its seq. */
        log_debug("publish of task %" PRId64 " (seq %" PRIu64 ") lost with the connection",
                  s->ev.task, s->seq);
        s->state = SLOT_READY;
        if (r->draining)
            slot_release(s);
        break;
    }
    relay_pump(r, relay_clock_ms(r));
}

void relay_on_connected(struct relay *r)
{
    relay_pump(r, relay_clock_ms(r));
}

void relay_wake(struct relay *r, int reconcile)
{
    r->woken = 1;
    if (reconcile)
        relay_recon_start(r);
    relay_pump(r, relay_clock_ms(r));
}

void relay_drain(struct relay *r)
{
    r->draining = 1;
    r->recon_pending = 0;
    /* Messages waiting for the broker are not in flight: their rows stay
     * in the outbox and go out after the restart. */
    for (size_t i = 0; i < r->nslots; i++)
        if (r->slots[i].state == SLOT_READY)
            slot_release(&r->slots[i]);
}

int relay_idle(const struct relay *r)
{
    return r->used == 0 && !r->recon.call;
}

void relay_stats(const struct relay *r, struct relay_stats *out)
{
    *out = r->stats;
    out->in_progress = r->used;
    out->unconfirmed = 0;
    for (size_t i = 0; i < r->nslots; i++)
        if (r->slots[i].state == SLOT_PUBLISHED)
            out->unconfirmed++;
    out->reconciling = r->recon_running;
}
