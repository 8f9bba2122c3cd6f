/*
 * reverse_apply.c - the reverse applier's apply steps (reverse.h):
 *
 *   REV lookup -> [VIEW T] -> [EDIT T] -> COMMIT rev -> ACK
 *
 * The lookup reads what was forwarded (a state only for a task this
 * client forwarded) and what was applied (an older seq is dropped, an
 * intent of an interrupted note edit is resolved once the task is
 * viewed); the plan (reverse_plan.c) says whether the task must be viewed
 * and what one edit writes; the commit writes the rev row and acks.
 */
#include "reverse.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "applier.h"
#include "clock.h"
#include "fp.h"
#include "linkset.h"
#include "log.h"
#include "notes.h"
#include "reverse_int.h"
#include "store_journal.h"

/* ---- the slot's endings ------------------------------------------------ */

void rev_slot_fail(struct reverse_slot *s, rt_status status, enum reverse_dead_kind kind,
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
static void rev_slot_store_failed(struct reverse_slot *s, rt_status st, enum reverse_resume resume)
{
    if (st == RT_RETRY) {
        /* The cause without the statement: one condition, one warning. */
        log_debug("task %" PRId64 " waits for the store: %s", s->msg.task,
                  store_strerror(s->r->st));
        s->resume = resume;
        applier_defer(s->as, "store: %s", store_strcause(s->r->st));
        return;
    }
    rev_slot_fail(s, RT_RETRY, REVERSE_DEAD_NONE, "store: %s", store_strerror(s->r->st));
}

/* 1 when the state's seq is further past the seq applied for its task
 * (rev, found or not) than a sender can have gone (APPLIER_SEQ_MAX_JUMP):
 * it is dead-lettered, and the slot is gone. */
static int reverse_seq_jump(struct reverse_slot *s, const struct store_rev *rev)
{
    char why[APPLIER_REASON_MAX];
    if (!applier_seq_impossible(s->msg.seq, rev->found ? rev->seq : 0, s->msg.task, why,
                                sizeof(why)))
        return 0;
    rev_slot_fail(s, RT_REJECT, REVERSE_DEAD_SEQ, "%s", why);
    return 1;
}

int reverse_seq_invalid(struct reverse *r, struct reverse_slot *s)
{
    struct store_rev rev;
    char why[APPLIER_REASON_MAX];
    /* Above what any sender can use: refused before the store is asked
     * (last = seq: no jump to measure yet). */
    if (applier_seq_impossible(s->msg.seq, s->msg.seq, s->msg.task, why, sizeof(why))) {
        rev_slot_fail(s, RT_REJECT, REVERSE_DEAD_SEQ, "%s", why);
        return 1;
    }
    if (applier_troubled(r->ap) ||
        store_rev_get(r->st, r->cfg->client.id, s->msg.task, &rev) != RT_OK)
        return 0;
    return reverse_seq_jump(s, &rev);
}

static void rev_slot_api_failed(struct reverse_slot *s, const char *what,
                                const struct billmgr_reply *r)
{
    rev_slot_fail(s, r->status == RT_RETRY ? RT_RETRY : RT_REJECT, REVERSE_DEAD_API,
                  "api: %s: %s%s%s%s%s%s", what, r->err_type, *r->err_object ? " (" : "",
                  r->err_object, *r->err_object ? ")" : "", *r->message ? ": " : "", r->message);
}

/* ---- the commit --------------------------------------------------------- */

/* Inside the commit's transaction: the set to write, the plan's, except
 * that when the relay confirmed a newer task message while this state was
 * being applied, the status it recorded stays (it is newer than what this
 * state knew: the target is about to take it). */
static rt_status rev_slot_commit_set(struct reverse_slot *s, char *set, size_t setlen)
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
    int64_t known = cur.found ? fp_set_get_int(cur.applied, LINKSET_REV_STATUS, -1) : -1;
    if (known >= 0 && fp_set_put_int(set, setlen, LINKSET_REV_STATUS, known) < 0)
        return RT_REJECT;
    int64_t sseq = cur.found ? fp_set_get_int(cur.applied, LINKSET_REV_STATUS_SEQ, -1) : -1;
    if (sseq >= 0 && fp_set_put_int(set, setlen, LINKSET_REV_STATUS_SEQ, sseq) < 0)
        return RT_REJECT;
    return RT_OK;
}

void rev_slot_journal(const struct reverse_slot *s, const char *event, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    store_journal_vadd(s->r->st, 0, STORE_SIDE_CLIENT, s->r->cfg->client.id, s->msg.task, 0, event,
                       s->msg.seq, fmt, ap);
    va_end(ap);
}

/* The row of what a state wrote on the source task, in the transaction
 * of its rev row. */
static void rev_slot_journal_written(const struct reverse_slot *s, int changed)
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
        rev_slot_journal(s, JOURNAL_WRITTEN, "nothing to change%s%s",
                         changed ? " (its edit landed before a restart)" : "", stale);
    else
        rev_slot_journal(s, JOURNAL_WRITTEN, "%s%s", what + 2, stale);
}

void rev_slot_commit(struct reverse_slot *s, int changed)
{
    struct reverse *r = s->r;
    const char *client = r->cfg->client.id;
    int64_t now = clock_wall_ms();
    rt_status st;

    s->step = RS_COMMIT;
    s->commit_changed = changed;
    if ((st = store_begin(r->st)) != RT_OK)
        goto failed;
    char set[STORE_APPLIED_MAX + 1];
    if ((st = rev_slot_commit_set(s, set, sizeof(set))) != RT_OK) {
        store_rollback(r->st);
        goto failed;
    }
    uint64_t seq = s->commit_seq > s->msg.seq ? s->commit_seq : s->msg.seq;
    if ((st = store_rev_put(r->st, client, s->msg.task, seq, s->plan.notes_len, set)) != RT_OK ||
        (st = store_meta_set_i64(r->st, REVERSE_META_LAST_APPLY, now)) != RT_OK) {
        store_rollback(r->st);
        goto failed;
    }
    rev_slot_journal_written(s, changed);
    if ((st = store_commit(r->st)) != RT_OK)
        goto failed;
    r->stats.last_apply_ms = now;
    if (changed) {
        r->stats.applied++;
        reverse_sync_count_applied(r);
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
    rev_slot_store_failed(s, st, RR_COMMIT);
}

/* ---- API calls ---------------------------------------------------------- */

static void reverse_on_reply(void *arg, const struct billmgr_reply *r);

/* Queues an API call for the slot, which then waits in step. params are
 * released. */
static void rev_slot_call(struct reverse_slot *s, enum reverse_step step, struct billmgr_params *p,
                          int params_ok)
{
    const char *func = s->r->api->func_task_edit;

    s->step = step;
    if (!params_ok) {
        billmgr_params_release(p);
        rev_slot_fail(s, RT_REJECT, REVERSE_DEAD_API,
                      "api: cannot build the call of \"%s\" (a value over %zu bytes)", func,
                      (size_t)BILLMGR_MAX_VALUE);
        return;
    }
    int rc = billmgr_call(s->r->bm, func, p, reverse_on_reply, s);
    billmgr_params_release(p);
    if (rc < 0)
        rev_slot_fail(s, RT_RETRY, REVERSE_DEAD_NONE, "api: cannot queue the call of \"%s\"", func);
}

static void rev_slot_view(struct reverse_slot *s)
{
    struct billmgr_params p;
    billmgr_params_init(&p);
    int ok = billmgr_params_addf(&p, "elid", "%" PRId64, s->msg.task) == 0;
    rev_slot_call(s, RS_VIEW, &p, ok);
}

/* One change of the source task: what the plan marks, and note when not
 * NULL. */
static void rev_slot_edit(struct reverse_slot *s, const char *note)
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
    rev_slot_call(s, RS_EDIT, &p, ok);
}

/* ---- a note edit -------------------------------------------------------- */

/* Commits the intent of the edit that writes note (applier.h) on the set
 * the plan was made against, keeping the row's seq and notes count: after
 * a crash the next state of the task sees whether that edit landed. */
static rt_status rev_slot_pend_write(struct reverse_slot *s, const char *note)
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
    if (linkset_pend_base(cur.applied, s->landed, base, sizeof(base)) < 0)
        snprintf(base, sizeof(base), "%s", cur.applied);
    /* The sets are a few fixed keys, far below the cap; should one not
     * fit, the edit goes ahead unprotected rather than never. */
    if (linkset_pend_put(base, s->plan.applied, s->msg.seq, note, set, sizeof(set)) < 0)
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
static int rev_slot_plan_resolved(struct reverse_slot *s, const char *note)
{
    char base[STORE_APPLIED_MAX + 1];
    uint64_t pseq = 0;

    s->pending = 0;
    s->landed = linkset_pend_landed(s->applied, note, &pseq);
    if (linkset_pend_base(s->applied, s->landed, base, sizeof(base)) < 0) {
        rev_slot_fail(s, RT_RETRY, REVERSE_DEAD_NONE, "the applied set of the task is unreadable");
        return -1;
    }
    log_info("the note edit of state seq %" PRIu64 " of task %" PRId64 " was interrupted and "
             "%s; applying seq %" PRIu64,
             pseq, s->msg.task, s->landed ? "had landed" : "had not landed", s->msg.seq);
    reverse_plan_release(&s->plan);
    if (s->landed && pseq > s->msg.seq) {
        s->commit_seq = pseq;
        snprintf(s->plan.applied, sizeof(s->plan.applied), "%s", base);
        int64_t len = fp_set_get_int(base, LINKSET_REV_NOTES_LEN, 0);
        s->plan.notes_len = len > 0 ? (size_t)len : 0;
        return 0;
    }
    if (reverse_plan_make(s->r->cfg, &s->msg, base, s->fwd_confirmed, &s->plan) < 0) {
        rev_slot_fail(s, RT_RETRY, REVERSE_DEAD_NONE, "out of memory planning the change");
        return -1;
    }
    return 0;
}

/* The source task as it is now: what the plan still has to change. A view
 * that cannot say (fields that are not text, or not the task's view) is
 * retried rather than read as an empty note, status or performer. */
static void rev_slot_viewed(struct reverse_slot *s, json_t *doc)
{
    const struct config_billmgr_api *api = s->r->api;
    const char *const fields[] = {api->field_note, api->field_status, api->field_performer};
    const char *v[3] = {NULL};
    long status = -1, performer = 0;
    char why[128];
    char *note;

    if (applier_view_read(doc, s->msg.task, fields, v, 3, why, sizeof(why)) < 0) {
        rev_slot_fail(s, RT_RETRY, REVERSE_DEAD_NONE, "api: the view of task %" PRId64 " %s",
                      s->msg.task, why);
        return;
    }
    const char *current = v[0];
    if (s->pending && rev_slot_plan_resolved(s, current) < 0)
        return;
    if (billmgr_long(doc, api->field_status, &status) < 0)
        status = -1;
    if (billmgr_long(doc, api->field_performer, &performer) < 0)
        performer = 0; /* empty: nobody */
    reverse_plan_verify(&s->plan, status, performer);
    if (reverse_plan_empty(&s->plan)) {
        /* After an edit that landed before a restart, the task did change. */
        rev_slot_commit(s, s->landed);
        return;
    }
    if (!s->plan.block) {
        rev_slot_edit(s, NULL);
        return;
    }
    note = notes_append(current, REVERSE_ORIGIN, s->plan.block);
    if (!note) {
        rev_slot_fail(s, RT_RETRY, REVERSE_DEAD_NONE, "out of memory building the note");
        return;
    }
    free(s->note);
    s->note = note;
    rev_slot_pend_edit(s);
}

void rev_slot_pend_edit(struct reverse_slot *s)
{
    rt_status st = rev_slot_pend_write(s, s->note);
    if (st != RT_OK) {
        rev_slot_store_failed(s, st, RR_PENDING);
        return;
    }
    rev_slot_edit(s, s->note); /* the note stays the slot's until it is cleared */
}

static void reverse_on_reply(void *arg, const struct billmgr_reply *r)
{
    struct reverse_slot *s = arg;

    switch (s->step) {
    case RS_VIEW:
        if (r->status != RT_OK) {
            rev_slot_api_failed(s, "viewing the task", r);
            return;
        }
        rev_slot_viewed(s, r->doc);
        return;
    case RS_EDIT:
        if (r->status != RT_OK) {
            rev_slot_api_failed(s, "changing the task", r);
            return;
        }
        rev_slot_commit(s, 1);
        return;
    default:
        /* Not waiting for a call: cannot happen, every call has one step. */
        log_error("API answer for task %" PRId64 " in an unexpected step %d", s->msg.task,
                  (int)s->step);
        return;
    }
}

/* ---- the start ---------------------------------------------------------- */

void rev_slot_start(struct reverse_slot *s)
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
        rev_slot_store_failed(s, st, RR_START);
        return;
    }
    if (reverse_seq_jump(s, &rev))
        return;
    if (!fwd.found || fwd.seq == 0) {
        rev_slot_fail(s, RT_REJECT, REVERSE_DEAD_UNKNOWN_TASK,
                      "task %" PRId64 " was never forwarded", s->msg.task);
        return;
    }
    s->fwd_confirmed = fwd.fp_seq;
    if (rev.found && rev.seq >= s->msg.seq) {
        r->applied_dups++;
        log_debug("dropped state seq %" PRIu64 " of task %" PRId64 ": seq %" PRIu64 " is applied",
                  s->msg.seq, s->msg.task, rev.seq);
        rev_slot_journal(s, JOURNAL_DROPPED, "duplicate: state seq %" PRIu64 " is applied",
                         rev.seq);
        applier_ack(s->as);
        return;
    }
    if (rev.found && linkset_pend_present(rev.applied)) {
        /* A note edit was under way when the daemon stopped: the task's
         * note tells whether it landed, and the plan is made against that
         * (slot_plan_resolved, once the task is viewed). */
        snprintf(s->applied, sizeof(s->applied), "%s", rev.applied);
        s->pending = 1;
        rev_slot_view(s);
        return;
    }
    if (reverse_plan_make(r->cfg, &s->msg, rev.found ? rev.applied : "", s->fwd_confirmed,
                          &s->plan) < 0) {
        rev_slot_fail(s, RT_RETRY, REVERSE_DEAD_NONE, "out of memory planning the change");
        return;
    }
    if (s->plan.stale)
        log_debug("state seq %" PRIu64 " of task %" PRId64 " was read before task message %" PRIu64
                  " was applied (it had seen %" PRIu64 "): its status is not applied",
                  s->msg.seq, s->msg.task, s->fwd_confirmed, s->msg.state.fwd_seq);
    if (reverse_plan_empty(&s->plan)) {
        rev_slot_commit(s, 0);
        return;
    }
    if (reverse_plan_needs_view(&s->plan))
        rev_slot_view(s);
    else
        rev_slot_edit(s, NULL);
}
