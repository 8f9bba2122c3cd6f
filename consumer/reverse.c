#include "reverse.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "applier.h"
#include "fp.h"
#include "log.h"
#include "notes.h"
#include "store_journal.h"

#define REVERSE_REASON_MAX APPLIER_REASON_MAX
/* The store meta key of the last successful apply. */
#define REVERSE_META_LAST_APPLY "last_reverse_apply_ms"

/* Where a delivery is while the applier holds it (applier.h keeps the
 * phases around it: waiting, publishing a retry or dead-letter copy). */
enum reverse_step {
    RS_NONE = 0,
    RS_LOOKUP,    /* reading what was forwarded and applied (synchronous) */
    RS_VIEW,      /* viewing the source task for its note, status, performer */
    RS_EDIT,      /* func_task_edit sok=ok elid=T */
    RS_COMMIT,    /* writing the rev row (synchronous) */
    RS_SYNC_WAIT, /* a sync_done waiting for the deliveries taken before it */
};

/* What a slot does again when it resumes after applier_defer() (a store
 * step that failed for now). */
enum reverse_resume {
    RR_START = 0, /* the lookup and everything after it */
    RR_PENDING,   /* the intent of a note edit, then the edit (note) */
    RR_COMMIT,    /* the commit of an applied state (commit_changed) */
};

/* The key of the rev set under which the relay records the seq of the
 * confirmed task message that last changed the status forwarded
 * (producer/relay.c): a state that had seen it says what the target did
 * with that status (reverse_plan_status). */
#define REVERSE_KEY_STATUS_SEQ "sseq"

/* What the reverse applier keeps for one delivery: the priv area of its
 * applier slot, which holds the delivery itself. */
struct reverse_slot {
    struct reverse *r;
    struct applier_slot *as;
    enum reverse_step step;
    struct codec_msg msg;
    struct reverse_plan plan;
    /* The rev row holds the intent of an earlier note edit (applier.h):
     * the view of the task tells whether it landed. */
    int pending;
    int landed;             /* it did: plan against the set after it */
    uint64_t commit_seq;    /* seq to commit when above msg.seq (a newer state's
                               edit that landed) */
    uint64_t fwd_confirmed; /* the task's last confirmed forward seq when the plan was made */
    char applied[STORE_APPLIED_MAX + 1]; /* the rev row's set as read */
    char *note;                          /* the whole note of the pending edit (owned) */
    enum reverse_resume resume;
    int commit_changed; /* what a resumed commit counts */
};

/* A sync request registered by the bridge and not answered yet. */
struct reverse_expected {
    char id[CODEC_MAX_ID + 1];
    uint64_t applied; /* states applied with a change since it was registered */
};

struct reverse {
    const struct config *cfg;
    struct store *st;
    struct billmgr *bm;
    struct broker *br;
    const struct config_billmgr_api *api;
    char queue[BROKER_NAME_MAX]; /* remotetask.reverse.<client.id> */
    struct applier *ap;
    reverse_sync_done_fn sync_hook;
    void *sync_arg;
    struct reverse_expected expected[REVERSE_MAX_EXPECTED];
    size_t nexpected;
    int checking; /* reverse_sync_check() is running: a nested call only asks again */
    int recheck;
    struct reverse_stats stats; /* the counters this file keeps; the slots' are in ap */
};

static void slot_fail(struct reverse_slot *s, rt_status status, enum reverse_dead_kind kind,
                      const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void slot_pend_edit(struct reverse_slot *s);
static void slot_journal(const struct reverse_slot *s, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int64_t reverse_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

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

/* ---- pure helpers ------------------------------------------------------ */

enum reverse_dead_kind reverse_check(const struct config *cfg, const char *queue,
                                     const char *user_id, const char *own_user,
                                     const char *relayed_user, const struct codec_msg *m,
                                     char *reason, size_t reasonlen)
{
    char mine[BROKER_NAME_MAX];
    const char *id = cfg->client.id ? cfg->client.id : "";
    const char *server = cfg->client.server_user ? cfg->client.server_user : "";
    const char *sender = applier_sender(user_id, own_user, relayed_user);

    if (reasonlen)
        reason[0] = '\0';
    if (broker_queue_name(mine, sizeof(mine), BROKER_REVERSE, id) < 0 || !queue ||
        strcmp(queue, mine) != 0) {
        snprintf(reason, reasonlen, "queue \"%s\" is not the reverse queue of client %s",
                 queue ? queue : "", id);
        return REVERSE_DEAD_UNAUTHORIZED;
    }
    if (m->kind != CODEC_STATE && m->kind != CODEC_SYNC_DONE) {
        snprintf(reason, reasonlen, "unexpected kind \"%s\"", codec_kind_name(m->kind));
        return REVERSE_DEAD_UNDECODABLE;
    }
    if (!m->client || strcmp(m->client, id) != 0) {
        snprintf(reason, reasonlen, "client \"%s\" of the message is not this client (%s)",
                 m->client ? m->client : "", id);
        return REVERSE_DEAD_UNAUTHORIZED;
    }
    /* The configuration requires server_user; without one no sender is
     * trusted, rather than every one. */
    if (!*server || strcmp(sender, server) != 0) {
        snprintf(reason, reasonlen, "user_id \"%s\" is not the AMQP user of the server side",
                 sender);
        return REVERSE_DEAD_UNAUTHORIZED;
    }
    return REVERSE_DEAD_NONE;
}

long reverse_performer_local(const struct config *cfg, int64_t remote)
{
    if (remote <= 0)
        return 0;
    for (size_t i = 0; i < cfg->client.n_performers; i++)
        if (cfg->client.performers[i].remote == remote)
            return cfg->client.performers[i].local;
    return 0;
}

void reverse_plan_release(struct reverse_plan *plan)
{
    if (!plan)
        return;
    free(plan->block);
    memset(plan, 0, sizeof(*plan));
}

int reverse_plan_empty(const struct reverse_plan *plan)
{
    return !plan->status && !plan->performer && !plan->block;
}

int reverse_plan_needs_view(const struct reverse_plan *plan)
{
    /* A status is planned only against a known one (reverse_plan_status),
     * so only the performer of a first state needs the task as it is. */
    return plan->block || (plan->verify && plan->performer);
}

void reverse_plan_verify(struct reverse_plan *plan, long status, long performer)
{
    if (plan->status && status == plan->status_value)
        plan->status = 0;
    if (plan->performer && performer == plan->performer_local)
        plan->performer = 0;
    plan->verify = 0;
}

/* The remote native text: the state's notes joined (the server sends one
 * entry, the whole text), with any block removed again so that a forged
 * origin header never reaches the source note. NULL when memory ran out. */
static char *reverse_native(const struct codec_msg *m)
{
    struct buf joined;
    char *native;

    buf_init(&joined, (size_t)CODEC_MAX_NOTES * (CODEC_MAX_NOTE_ENTRY + 1));
    if (buf_append(&joined, "", 0) < 0)
        return NULL;
    for (size_t i = 0; i < m->state.nnotes; i++) {
        if ((i && buf_append_str(&joined, "\n") < 0) ||
            buf_append_str(&joined, m->state.notes[i] ? m->state.notes[i] : "") < 0) {
            buf_release(&joined);
            return NULL;
        }
    }
    native = notes_native(buf_cstr(&joined));
    buf_release(&joined);
    return native;
}

/* The performer part of a plan: what to send, and the line for the block
 * when the remote performer cannot be mapped (a malloc'd string, "" for
 * none; NULL when memory ran out). */
static char *reverse_plan_performer(const struct config *cfg, const struct codec_msg *m,
                                    const char *applied, struct reverse_plan *plan)
{
    char now[FP_HEX_LEN + 1], was[FP_HEX_LEN + 1];
    const char *name = m->state.performer ? m->state.performer : "";
    int64_t remote = m->state.performer_id;
    int64_t prev = fp_set_get_int(applied, "performer", 0);
    long set_by_us = (long)fp_set_get_int(applied, "plocal", 0);
    long local = reverse_performer_local(cfg, remote);
    char *line = NULL;

    fp_of_str(name, now);
    if (fp_set_get(applied, "pname", was, sizeof(was)) < 0)
        fp_of_str("", was); /* nothing applied yet: as if there was no performer */
    int changed = remote != prev || strcmp(now, was) != 0;

    if (!changed) {
        line = strdup("");
    } else if (local > 0) {
        /* A mapped staff member: set it, unless it is the one set already. */
        if (local != set_by_us || plan->verify) {
            plan->performer = 1;
            plan->performer_local = local;
        }
        set_by_us = local;
        line = strdup("");
    } else if (remote == 0) {
        if (set_by_us > 0) {
            /* We set the performer: the remote side has none now, nor do we. */
            plan->performer = 1;
            plan->performer_local = 0;
            set_by_us = 0;
            line = strdup("");
        } else {
            line = strdup(prev > 0 ? REVERSE_NO_PERFORMER_LINE : "");
        }
    } else {
        /* Never guess a local staff member: say who it is, in the note. */
        size_t n = strlen(REVERSE_PERFORMER_LINE) + strlen(name) + 32;
        line = malloc(n);
        if (line) {
            if (*name)
                snprintf(line, n, "%s%s", REVERSE_PERFORMER_LINE, name);
            else
                snprintf(line, n, "%sstaff member %" PRId64, REVERSE_PERFORMER_LINE, remote);
            for (char *p = line; *p; p++) /* it must stay one line */
                if (*p == '\n' || *p == '\r')
                    *p = ' ';
        }
    }
    if (fp_set_put_int(plan->applied, sizeof(plan->applied), "performer", remote) < 0 ||
        fp_set_put(plan->applied, sizeof(plan->applied), "pname", now) < 0 ||
        fp_set_put_int(plan->applied, sizeof(plan->applied), "plocal", set_by_us) < 0) {
        free(line);
        return NULL;
    }
    return line;
}

/* The status part of a plan: whether the state's status is a change made
 * on the target, and the status the client then knows the target has.
 *
 * Key "status" of the set is that known status: the status of the last
 * task message the relay had confirmed (producer/relay.c records it in the
 * same transaction) or of the last state applied here, whichever came
 * last. A state's status is a change made on the target only when
 *
 *  1. the server had applied the client's last confirmed task message that
 *     changed the status it forwarded (state fwd_seq >= the set's
 *     REVERSE_KEY_STATUS_SEQ, which the relay records; fwd_confirmed, the
 *     last confirmed message, for a row written before that key): an
 *     older state shows the target before the client's own status change
 *     reached it, and writing it back would undo that change on the source
 *     (an operator closes a task while the client is down; the first state
 *     after the restart still says "open"). A state that missed only
 *     messages that forwarded the same status (a rename, a line of note;
 *     one the server dead-lettered) cannot undo a status change of the
 *     source, so the target's own change goes through at once. fwd_seq 0
 *     comes from a server that does not say: only rule 2 can be applied
 *     then;
 *  2. it differs from the known status: the same status is the target
 *     merely holding what the client forwarded, or what was applied here.
 *
 * With no known status at all (a task forwarded before the relay recorded
 * it) the first state cannot tell an echo from a change: it is recorded as
 * the baseline and not written. A stale state records nothing: the known
 * status stays what the relay forwarded.
 *
 * Why this cannot ping-pong: each side writes only what the other side
 * changed. The client writes a status here only when it differs from what
 * it knows the target has, i.e. when target staff changed it, and records
 * it as known; the relay then forwards the source's status (now the same),
 * which the forward applier compares with the status statepub published
 * and does not write. The server publishes a state only when the target's
 * state fingerprint moved; the forward applier's own status write makes the
 * next state carry the status the client forwarded (and its fwd_seq), which
 * rule 2 finds equal to the known status. So a value crosses at most once
 * each way per change, and a stale copy is never applied: rule 1 drops it. */
static int reverse_plan_status(const struct codec_msg *m, const char *applied,
                               uint64_t fwd_confirmed, struct reverse_plan *plan)
{
    int64_t known = fp_set_get_int(applied, "status", -1);
    int64_t sseq = fp_set_get_int(applied, REVERSE_KEY_STATUS_SEQ, -1);
    uint64_t need = sseq >= 0 && (uint64_t)sseq <= fwd_confirmed ? (uint64_t)sseq : fwd_confirmed;
    int fresh = m->state.fwd_seq == 0 || m->state.fwd_seq >= need;
    int64_t record = known;

    plan->status_value = m->state.status;
    if (known < 0 || known > 2)
        known = -1;
    if (!fresh) {
        plan->stale = 1;
    } else if (known < 0) {
        record = m->state.status; /* the baseline */
    } else if (known != m->state.status) {
        plan->status = 1;
        record = m->state.status;
    }
    if (record >= 0 && record <= 2 &&
        fp_set_put_int(plan->applied, sizeof(plan->applied), "status", record) < 0)
        return -1;
    /* The relay's key stays as the relay wrote it. */
    if (sseq >= 0 &&
        fp_set_put_int(plan->applied, sizeof(plan->applied), REVERSE_KEY_STATUS_SEQ, sseq) < 0)
        return -1;
    return 0;
}

int reverse_plan_make(const struct config *cfg, const struct codec_msg *m, const char *applied,
                      uint64_t fwd_confirmed, struct reverse_plan *plan)
{
    char *native = NULL, *line = NULL;
    char fp[FP_HEX_LEN + 1], applied_fp[FP_HEX_LEN + 1];
    struct buf block;
    int edited;

    memset(plan, 0, sizeof(*plan));
    buf_init(&block,
             (size_t)CODEC_MAX_NOTES * (CODEC_MAX_NOTE_ENTRY + 1) + CODEC_MAX_PERFORMER + 64);
    applied = applied ? applied : "";

    /* The first state of the task: the performer part is compared with the
     * task as viewed ("pname" is written with every state applied; the
     * relay writes only "status"). */
    plan->verify = fp_set_get(applied, "pname", fp, sizeof(fp)) < 0;
    if (reverse_plan_status(m, applied, fwd_confirmed, plan) < 0)
        goto fail;

    if (!(line = reverse_plan_performer(cfg, m, applied, plan)))
        goto fail;

    if (!(native = reverse_native(m)))
        goto fail;
    size_t applied_len = (size_t)fp_set_get_int(applied, "notes_len", 0);
    fp_set_get(applied, "notes_fp", applied_fp, sizeof(applied_fp));
    size_t off = notes_new_part(native, applied_len, applied_fp, &edited);
    const char *text = native + off;
    plan->notes_len = strlen(native);
    fp_of_mem(native, plan->notes_len, fp);
    if (fp_set_put_int(plan->applied, sizeof(plan->applied), "notes_len",
                       (int64_t)plan->notes_len) < 0 ||
        fp_set_put(plan->applied, sizeof(plan->applied), "notes_fp", fp) < 0)
        goto fail;

    if (*line) {
        if (buf_printf(&block, "%s\n", line) < 0)
            goto fail;
        if (*text && buf_append_str(&block, "\n") < 0)
            goto fail;
    }
    if (*text && buf_append_str(&block, text) < 0)
        goto fail;
    if (block.len) {
        plan->block = buf_steal(&block);
        if (!plan->block)
            goto fail;
    }
    buf_release(&block);
    free(native);
    free(line);
    return 0;
fail:
    buf_release(&block);
    free(native);
    free(line);
    reverse_plan_release(plan);
    return -1;
}

/* ---- sync requests ----------------------------------------------------- */

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

/* Finishes every sync_done whose predecessors are done. Finishing one
 * frees a slot, which calls this again: the nested call only asks the
 * running one to look once more. */
static void reverse_sync_check(struct reverse *r)
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

/* ---- slots ------------------------------------------------------------- */

static void slot_fail(struct reverse_slot *s, rt_status status, enum reverse_dead_kind kind,
                      const char *fmt, ...)
{
    char reason[REVERSE_REASON_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof(reason), fmt, ap);
    va_end(ap);
    applier_fail(s->as, status, (int)kind, reverse_dead_kind_name(kind), "%s", reason);
}

/* A store step failed. For now (busy, locked, full, an I/O error): the
 * delivery waits in its slot, unacknowledged, and the step runs again
 * (applier_defer). For good (a corrupt row, a set that does not fit): a
 * retry copy, as for any failure. */
static void slot_store_failed(struct reverse_slot *s, rt_status st, enum reverse_resume resume)
{
    if (st == RT_RETRY) {
        /* The cause without the statement: one condition, one warning. */
        log_debug("task %" PRId64 " waits for the store: %s", s->msg.task,
                  store_strerror(s->r->st));
        s->resume = resume;
        applier_defer(s->as, "store: %s", store_strcause(s->r->st));
        return;
    }
    slot_fail(s, RT_RETRY, REVERSE_DEAD_NONE, "store: %s", store_strerror(s->r->st));
}

/* 1 when the state's seq is further past the seq applied for its task
 * (rev, found or not) than a sender can have gone (APPLIER_SEQ_MAX_JUMP):
 * it is dead-lettered, and the slot is gone. */
static int reverse_seq_jump(struct reverse_slot *s, const struct store_rev *rev)
{
    uint64_t last = rev->found ? rev->seq : 0;
    if (s->msg.seq <= last || s->msg.seq - last <= APPLIER_SEQ_MAX_JUMP)
        return 0;
    slot_fail(s, RT_REJECT, REVERSE_DEAD_SEQ,
              "seq %" PRIu64 " of task %" PRId64 " is %" PRIu64 " past seq %" PRIu64
              ", the last applied, more than the %" PRIu64 " a sender can have used: forged or "
              "corrupt",
              s->msg.seq, s->msg.task, s->msg.seq - last, last, APPLIER_SEQ_MAX_JUMP);
    return 1;
}

/* 1 when the seq of a state cannot be one its sender used (above
 * APPLIER_SEQ_MAX, or too far past the seq applied): checked before the
 * state takes its place in per task order; slot_start() checks again when
 * the store cannot be read now. */
static int reverse_seq_invalid(struct reverse *r, struct reverse_slot *s)
{
    struct store_rev rev;
    if (s->msg.seq > APPLIER_SEQ_MAX) {
        slot_fail(s, RT_REJECT, REVERSE_DEAD_SEQ,
                  "seq %" PRIu64 " of task %" PRId64 " is above %" PRIu64
                  ", more than a sender can have used: forged or corrupt",
                  s->msg.seq, s->msg.task, APPLIER_SEQ_MAX);
        return 1;
    }
    if (applier_troubled(r->ap) ||
        store_rev_get(r->st, r->cfg->client.id, s->msg.task, &rev) != RT_OK)
        return 0;
    return reverse_seq_jump(s, &rev);
}

static void slot_api_failed(struct reverse_slot *s, const char *what, const struct billmgr_reply *r)
{
    slot_fail(s, r->status == RT_RETRY ? RT_RETRY : RT_REJECT, REVERSE_DEAD_API,
              "api: %s: %s%s%s%s%s%s", what, r->err_type, *r->err_object ? " (" : "", r->err_object,
              *r->err_object ? ")" : "", *r->message ? ": " : "", r->message);
}

/* Inside the commit's transaction: the set to write, the plan's, except
 * that when the relay confirmed a newer task message while this state was
 * being applied, the status it recorded stays (it is newer than what this
 * state knew: the target is about to take it). */
static rt_status slot_commit_set(struct reverse_slot *s, char *set, size_t setlen)
{
    struct reverse *r = s->r;
    const char *client = r->cfg->client.id;
    struct store_fwd fwd;
    struct store_rev cur;
    rt_status st;

    snprintf(set, setlen, "%s", s->plan.applied);
    if ((st = store_fwd_get(r->st, client, s->msg.task, &fwd)) != RT_OK)
        return st;
    if (fwd.fp_seq == s->fwd_confirmed)
        return RT_OK;
    if ((st = store_rev_get(r->st, client, s->msg.task, &cur)) != RT_OK)
        return st;
    int64_t known = cur.found ? fp_set_get_int(cur.applied, "status", -1) : -1;
    if (known >= 0 && fp_set_put_int(set, setlen, "status", known) < 0)
        return RT_REJECT;
    int64_t sseq = cur.found ? fp_set_get_int(cur.applied, REVERSE_KEY_STATUS_SEQ, -1) : -1;
    if (sseq >= 0 && fp_set_put_int(set, setlen, REVERSE_KEY_STATUS_SEQ, sseq) < 0)
        return RT_REJECT;
    return RT_OK;
}

/* A row of the task's journey (store_journal.h): the client side's, for
 * the state in hand. */
static void slot_journal(const struct reverse_slot *s, const char *event, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    store_journal_vadd(s->r->st, 0, STORE_SIDE_CLIENT, s->r->cfg->client.id, s->msg.task, 0, event,
                       s->msg.seq, fmt, ap);
    va_end(ap);
}

/* The row of what a state wrote on the source task, in the transaction
 * of its rev row. */
static void slot_journal_written(const struct reverse_slot *s, int changed)
{
    const struct reverse_plan *p = &s->plan;
    char what[128] = "", perf[32] = "";
    const char *stale = p->stale ? "; its status is older than the last task message forwarded: "
                                   "not written"
                                 : "";

    if (p->performer && p->performer_local > 0)
        snprintf(perf, sizeof(perf), ", performer %ld", p->performer_local);
    else if (p->performer)
        snprintf(perf, sizeof(perf), ", performer none");
    if (p->status)
        snprintf(what, sizeof(what), ", status %d", p->status_value);
    snprintf(what + strlen(what), sizeof(what) - strlen(what), "%s%s", perf,
             p->block ? ", a note block appended" : "");
    if (!changed || !what[0])
        slot_journal(s, JOURNAL_WRITTEN, "nothing to change%s%s",
                     changed ? " (its edit landed before a restart)" : "", stale);
    else
        slot_journal(s, JOURNAL_WRITTEN, "%s%s", what + 2, stale);
}

/* The state is applied (or had nothing to change): the rev row and the
 * time of the last apply in one transaction, then the ack. */
static void slot_commit(struct reverse_slot *s, int changed)
{
    struct reverse *r = s->r;
    const char *client = r->cfg->client.id;
    int64_t now = reverse_now_ms();
    rt_status st;

    s->step = RS_COMMIT;
    s->commit_changed = changed;
    if ((st = store_begin(r->st)) != RT_OK)
        goto failed;
    char set[STORE_APPLIED_MAX + 1];
    if ((st = slot_commit_set(s, set, sizeof(set))) != RT_OK) {
        store_rollback(r->st);
        goto failed;
    }
    uint64_t seq = s->commit_seq > s->msg.seq ? s->commit_seq : s->msg.seq;
    if ((st = store_rev_put(r->st, client, s->msg.task, seq, s->plan.notes_len, set)) != RT_OK ||
        (st = store_meta_set_i64(r->st, REVERSE_META_LAST_APPLY, now)) != RT_OK) {
        store_rollback(r->st);
        goto failed;
    }
    slot_journal_written(s, changed);
    if ((st = store_commit(r->st)) != RT_OK)
        goto failed;
    r->stats.last_apply_ms = now;
    if (changed) {
        r->stats.applied++;
        for (size_t i = 0; i < r->nexpected; i++)
            r->expected[i].applied++;
        log_info("task %" PRId64 " updated from the remote side (seq %" PRIu64 "%s%s%s)",
                 s->msg.task, s->msg.seq, s->plan.status ? ", status" : "",
                 s->plan.performer ? ", performer" : "", s->plan.block ? ", note" : "");
    } else {
        r->stats.unchanged++;
        log_debug("nothing to change for task %" PRId64 " (seq %" PRIu64 ")", s->msg.task,
                  s->msg.seq);
    }
    applier_ack(s->as);
    return;
failed:
    /* The source has the change: only the commit is tried again, and the
     * delivery stays unacknowledged until it is durable. */
    slot_store_failed(s, st, RR_COMMIT);
}

static void reverse_on_reply(void *arg, const struct billmgr_reply *r);

/* Queues an API call for the slot, which then waits in step. params are
 * released. */
static void slot_call(struct reverse_slot *s, enum reverse_step step, struct billmgr_params *p,
                      int params_ok)
{
    const char *func = s->r->api->func_task_edit;

    s->step = step;
    if (!params_ok) {
        billmgr_params_release(p);
        slot_fail(s, RT_REJECT, REVERSE_DEAD_API,
                  "api: cannot build the call of \"%s\" (a value over %zu bytes)", func,
                  (size_t)BILLMGR_MAX_VALUE);
        return;
    }
    int rc = billmgr_call(s->r->bm, func, p, reverse_on_reply, s);
    billmgr_params_release(p);
    if (rc < 0)
        slot_fail(s, RT_RETRY, REVERSE_DEAD_NONE, "api: cannot queue the call of \"%s\"", func);
}

static void slot_view(struct reverse_slot *s)
{
    struct billmgr_params p;
    billmgr_params_init(&p);
    int ok = billmgr_params_addf(&p, "elid", "%" PRId64, s->msg.task) == 0;
    slot_call(s, RS_VIEW, &p, ok);
}

/* One change of the source task: what the plan marks, and note when not
 * NULL. */
static void slot_edit(struct reverse_slot *s, const char *note)
{
    const struct config_billmgr_api *api = s->r->api;
    struct billmgr_params p;
    int ok = 1;

    billmgr_params_init(&p);
    ok &= billmgr_params_add(&p, "sok", "ok") == 0;
    ok &= billmgr_params_addf(&p, "elid", "%" PRId64, s->msg.task) == 0;
    if (s->plan.status)
        ok &= billmgr_params_addf(&p, api->field_status, "%d", s->plan.status_value) == 0;
    if (s->plan.performer) {
        if (s->plan.performer_local > 0)
            ok &=
                billmgr_params_addf(&p, api->field_performer, "%ld", s->plan.performer_local) == 0;
        else
            ok &= billmgr_params_add(&p, api->field_performer, "") == 0;
    }
    if (note)
        ok &= billmgr_params_add(&p, api->field_note, note) == 0;
    slot_call(s, RS_EDIT, &p, ok);
}

/* Commits the intent of the edit that writes note (applier.h) on the set
 * the plan was made against, keeping the row's seq and notes count: after
 * a crash the next state of the task sees whether that edit landed. */
static rt_status slot_pend_write(struct reverse_slot *s, const char *note)
{
    struct reverse *r = s->r;
    const char *client = r->cfg->client.id;
    char base[STORE_APPLIED_MAX + 1], set[STORE_APPLIED_MAX + 1];
    struct store_rev cur;
    rt_status st;

    if ((st = store_begin(r->st)) != RT_OK)
        return st;
    if ((st = store_rev_get(r->st, client, s->msg.task, &cur)) != RT_OK)
        goto rollback;
    if (!cur.found)
        memset(&cur, 0, sizeof(cur));
    if (applier_pend_base(cur.applied, s->landed, base, sizeof(base)) < 0)
        snprintf(base, sizeof(base), "%s", cur.applied);
    /* The sets are a few fixed keys, far below the cap; should one not
     * fit, the edit goes ahead unprotected rather than never. */
    if (applier_pend_put(base, s->plan.applied, s->msg.seq, note, set, sizeof(set)) < 0)
        log_warning("no room for the intent of the note edit of task %" PRId64
                    ": a crash before its commit would append it twice",
                    s->msg.task);
    if ((st = store_rev_put(r->st, client, s->msg.task, cur.seq, cur.notes_applied, set)) != RT_OK)
        goto rollback;
    /* On disk before the edit it guards (store.h). */
    return store_commit_durable(r->st);
rollback:
    store_rollback(r->st);
    return st;
}

/* The intent of an earlier note edit found in the rev row, and the task's
 * note as it is now: which set to plan against, and the plan.
 *
 * The intent was written for seq P; the state in hand has seq M > the
 * row's seq. When the note shows P's edit landed, P is applied in full
 * (one call wrote its status, performer and note): the base is the set
 * after it, so M == P (the same state redelivered) plans nothing, M > P
 * plans only what M adds to P (P's block is never written again), and
 * M < P (an older state back from a retry queue) is older than what the
 * task holds: nothing is sent and the row records P (whose redelivery is
 * then a duplicate). When it did not land, the base is the set before P
 * and M is applied as if P never ran. Returns 0 when s->plan is made, -1
 * when the slot failed. */
static int slot_plan_resolved(struct reverse_slot *s, const char *note)
{
    char base[STORE_APPLIED_MAX + 1];
    uint64_t pseq = 0;

    s->pending = 0;
    s->landed = applier_pend_landed(s->applied, note, &pseq);
    if (applier_pend_base(s->applied, s->landed, base, sizeof(base)) < 0) {
        slot_fail(s, RT_RETRY, REVERSE_DEAD_NONE, "the applied set of the task is unreadable");
        return -1;
    }
    log_info("the note edit of state seq %" PRIu64 " of task %" PRId64 " was interrupted and "
             "%s; applying seq %" PRIu64,
             pseq, s->msg.task, s->landed ? "had landed" : "had not landed", s->msg.seq);
    reverse_plan_release(&s->plan);
    if (s->landed && pseq > s->msg.seq) {
        s->commit_seq = pseq;
        snprintf(s->plan.applied, sizeof(s->plan.applied), "%s", base);
        int64_t len = fp_set_get_int(base, "notes_len", 0);
        s->plan.notes_len = len > 0 ? (size_t)len : 0;
        return 0;
    }
    if (reverse_plan_make(s->r->cfg, &s->msg, base, s->fwd_confirmed, &s->plan) < 0) {
        slot_fail(s, RT_RETRY, REVERSE_DEAD_NONE, "out of memory planning the change");
        return -1;
    }
    return 0;
}

/* "a" or "an" before word. */
static const char *reverse_article(const char *word)
{
    return word[0] && strchr("aeiouAEIOU", word[0]) ? "an" : "a";
}

/* Reads the answer of the view of task elid: out[i] = the text of
 * fields[i], NULL when the API left it out (as it does a field without a
 * value). That is trusted only from the view of that very task: its
 * "elid" and "id", those it has and one at least, must be elid. Returns
 * 0, or -1 with why set ("names no task", "answers for task \"9\"",
 * "holds a note that is not text") when the answer is not that view or a
 * field holds something other than text: a note read as empty would be
 * overwritten with the new block alone. */
static int reverse_view_read(json_t *doc, int64_t elid, const char *const *fields, const char **out,
                             size_t n, char *why, size_t whylen)
{
    static const char *const ids[] = {"elid", "id"};
    int named = 0;

    for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++) {
        const char *t;
        int r = billmgr_text_field(doc, ids[i], &t);
        if (r < 0) {
            snprintf(why, whylen, "holds %s %s that is not text", reverse_article(ids[i]), ids[i]);
            return -1;
        }
        if (r == 0)
            continue;
        char *end;
        errno = 0;
        long long v = strtoll(t, &end, 10);
        if (errno || end == t || *end || v != elid) {
            snprintf(why, whylen, "answers for task \"%.32s\"", t);
            return -1;
        }
        named = 1;
    }
    if (!named) {
        snprintf(why, whylen, "names no task");
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        if (billmgr_text_field(doc, fields[i], &out[i]) < 0) {
            snprintf(why, whylen, "holds %s %s that is not text", reverse_article(fields[i]),
                     fields[i]);
            return -1;
        }
    }
    return 0;
}

/* The source task as it is now: what the plan still has to change. A view
 * that cannot say (fields that are not text, or not the task's view) is
 * retried rather than read as an empty note, status or performer. */
static void slot_viewed(struct reverse_slot *s, json_t *doc)
{
    const struct config_billmgr_api *api = s->r->api;
    const char *const fields[] = {api->field_note, api->field_status, api->field_performer};
    const char *v[3] = {NULL};
    long status = -1, performer = 0;
    char why[128];
    char *note;

    if (reverse_view_read(doc, s->msg.task, fields, v, 3, why, sizeof(why)) < 0) {
        slot_fail(s, RT_RETRY, REVERSE_DEAD_NONE, "api: the view of task %" PRId64 " %s",
                  s->msg.task, why);
        return;
    }
    const char *current = v[0];
    if (s->pending && slot_plan_resolved(s, current) < 0)
        return;
    if (billmgr_long(doc, api->field_status, &status) < 0)
        status = -1;
    if (billmgr_long(doc, api->field_performer, &performer) < 0)
        performer = 0; /* empty: nobody */
    reverse_plan_verify(&s->plan, status, performer);
    if (reverse_plan_empty(&s->plan)) {
        /* After an edit that landed before a restart, the task did change. */
        slot_commit(s, s->landed);
        return;
    }
    if (!s->plan.block) {
        slot_edit(s, NULL);
        return;
    }
    note = notes_append(current, REVERSE_ORIGIN, s->plan.block);
    if (!note) {
        slot_fail(s, RT_RETRY, REVERSE_DEAD_NONE, "out of memory building the note");
        return;
    }
    free(s->note);
    s->note = note;
    slot_pend_edit(s);
}

/* Commits the intent of the edit that writes s->note, then makes it. */
static void slot_pend_edit(struct reverse_slot *s)
{
    rt_status st = slot_pend_write(s, s->note);
    if (st != RT_OK) {
        slot_store_failed(s, st, RR_PENDING);
        return;
    }
    slot_edit(s, s->note); /* the note stays the slot's until it is cleared */
}

static void reverse_on_reply(void *arg, const struct billmgr_reply *r)
{
    struct reverse_slot *s = arg;

    switch (s->step) {
    case RS_VIEW:
        if (r->status != RT_OK) {
            slot_api_failed(s, "viewing the task", r);
            return;
        }
        slot_viewed(s, r->doc);
        return;
    case RS_EDIT:
        if (r->status != RT_OK) {
            slot_api_failed(s, "changing the task", r);
            return;
        }
        slot_commit(s, 1);
        return;
    default:
        /* Not waiting for a call: cannot happen, every call has one step. */
        log_error("API answer for task %" PRId64 " in an unexpected step %d", s->msg.task,
                  (int)s->step);
        return;
    }
}

/* The state's turn has come: is it new, and what does it change? */
static void slot_start(struct reverse_slot *s)
{
    struct reverse *r = s->r;
    const char *client = r->cfg->client.id;
    struct store_fwd fwd;
    struct store_rev rev;

    s->step = RS_LOOKUP;
    rt_status st = store_fwd_get(r->st, client, s->msg.task, &fwd);
    if (st == RT_OK)
        st = store_rev_get(r->st, client, s->msg.task, &rev);
    if (st != RT_OK) {
        slot_store_failed(s, st, RR_START);
        return;
    }
    if (reverse_seq_jump(s, &rev))
        return;
    if (!fwd.found || fwd.seq == 0) {
        slot_fail(s, RT_REJECT, REVERSE_DEAD_UNKNOWN_TASK, "task %" PRId64 " was never forwarded",
                  s->msg.task);
        return;
    }
    s->fwd_confirmed = fwd.fp_seq;
    if (rev.found && rev.seq >= s->msg.seq) {
        r->stats.duplicates++;
        log_debug("dropped state seq %" PRIu64 " of task %" PRId64 ": seq %" PRIu64 " is applied",
                  s->msg.seq, s->msg.task, rev.seq);
        slot_journal(s, JOURNAL_DROPPED, "duplicate: state seq %" PRIu64 " is applied", rev.seq);
        applier_ack(s->as);
        return;
    }
    if (rev.found && applier_pend_present(rev.applied)) {
        /* A note edit was under way when the daemon stopped: the task's
         * note tells whether it landed, and the plan is made against that
         * (slot_plan_resolved, once the task is viewed). */
        snprintf(s->applied, sizeof(s->applied), "%s", rev.applied);
        s->pending = 1;
        slot_view(s);
        return;
    }
    if (reverse_plan_make(r->cfg, &s->msg, rev.found ? rev.applied : "", s->fwd_confirmed,
                          &s->plan) < 0) {
        slot_fail(s, RT_RETRY, REVERSE_DEAD_NONE, "out of memory planning the change");
        return;
    }
    if (s->plan.stale)
        log_debug("state seq %" PRIu64 " of task %" PRId64 " was read before task message %" PRIu64
                  " was applied (it had seen %" PRIu64 "): its status is not applied",
                  s->msg.seq, s->msg.task, s->fwd_confirmed, s->msg.state.fwd_seq);
    if (reverse_plan_empty(&s->plan)) {
        slot_commit(s, 0);
        return;
    }
    if (reverse_plan_needs_view(&s->plan))
        slot_view(s);
    else
        slot_edit(s, NULL);
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
        slot_fail(s, RT_REJECT, REVERSE_DEAD_UNDECODABLE,
                  "undecodable: body of %zu bytes is over the cap", as->len);
        return;
    }
    if (codec_decode(as->body, as->len, &s->msg, err, sizeof(err)) != RT_OK) {
        slot_fail(s, RT_REJECT, REVERSE_DEAD_UNDECODABLE, "undecodable: %s", err);
        return;
    }
    as->task = s->msg.task;
    enum reverse_dead_kind kind =
        reverse_check(r->cfg, as->queue, d->user_id, r->cfg->amqp.user,
                      broker_delivery_header_str(d, "x-rt-user"), &s->msg, err, sizeof(err));
    if (kind != REVERSE_DEAD_NONE) {
        slot_fail(s, RT_REJECT, kind, "%s", err);
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
    slot_journal(s, JOURNAL_STATE, "status %d, %s, %zu note%s, after task message %" PRIu64 "%s",
                 cs->status, perf, cs->nnotes, cs->nnotes == 1 ? "" : "s", cs->fwd_seq,
                 as->attempts ? ", a retry" : "");
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
    struct applier_stats a;

    memset(out, 0, sizeof(*out));
    if (!r)
        return;
    *out = r->stats;
    applier_stats(r->ap, &a);
    out->deliveries = a.deliveries;
    out->duplicates += a.duplicates;
    out->superseded = a.superseded;
    out->retried = a.retried;
    out->dead = a.dead;
    out->requeued = a.requeued;
    out->redelivered = a.redelivered;
    out->deferred = a.deferred;
    out->republished = a.republished;
    out->busy = a.busy;
    out->running = a.running;
}

/* applier callbacks: the slot's turn, what to free, a dead letter's kind,
 * a slot freed (which may be what a sync_done waits for). */
static void reverse_slot_start(void *owner, struct applier_slot *as)
{
    (void)owner;
    slot_start(as->priv);
}

/* A slot whose store step failed for now: that step again. */
static void reverse_slot_resume(void *owner, struct applier_slot *as)
{
    struct reverse_slot *s = as->priv;
    (void)owner;
    switch (s->resume) {
    case RR_START: slot_start(s); return;
    case RR_PENDING: slot_pend_edit(s); return;
    case RR_COMMIT: slot_commit(s, s->commit_changed); return;
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

static const struct applier_ops reverse_ops = {
    .start = reverse_slot_start,
    .resume = reverse_slot_resume,
    .clear = reverse_slot_clear,
    .dead = reverse_slot_dead,
    .released = reverse_slot_released,
    .journal = reverse_slot_journal,
};

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
