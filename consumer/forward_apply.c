/*
 * forward_apply.c - the forward applier's apply state machine (forward.h):
 *
 *   LINK_LOOKUP -> (RECOVER_LIST -> RECOVER_VIEW)* -> CREATE | VIEW_TARGET -> EDIT
 *               -> COMMIT -> ACK
 *
 * The link decides the path: a message already applied is dropped, a
 * linked target task is updated (its note viewed first when a block is
 * appended, an interrupted note edit resolved against what the note
 * holds), an interrupted create is searched for (forward_recover.c), and
 * otherwise the target task is created once the intent of the create is
 * on disk. Every API answer comes back to forward_on_reply(), which hands
 * it to the step its slot waits in; every step ends the slot or waits for
 * an answer.
 */
#include "forward.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "applier.h"
#include "forward_int.h"
#include "fp.h"
#include "linkset.h"
#include "log.h"
#include "notes.h"
#include "store_journal.h"

static void forward_on_reply(void *arg, const struct billmgr_reply *r);

/* ---- the slot's endings ------------------------------------------------ */

void fwd_slot_journal(const struct forward_slot *s, const char *event, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    store_journal_vadd(s->f->st, 0, STORE_SIDE_SERVER, s->client->id, s->msg.task, s->link.dst_task,
                       event, s->msg.seq, fmt, ap);
    va_end(ap);
}

/* Acks the delivery and frees the slot (applier_ack); what this file
 * keeps in it is freed by forward_slot_clear. */
static void fwd_slot_ack(struct forward_slot *s)
{
    applier_ack(s->as);
}

void fwd_slot_fail(struct forward_slot *s, rt_status status, enum forward_dead_kind kind,
                   const char *fmt, ...)
{
    char reason[FORWARD_REASON_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof(reason), fmt, ap);
    va_end(ap);
    applier_fail(s->as, status, (int)kind, forward_dead_kind_name(kind), "%s", reason);
}

/* A store step failed. For now (busy, locked, full, an I/O error): the
 * delivery waits in its slot, unacknowledged, and the step runs again
 * (applier_defer); a retry copy would only move a local problem into the
 * broker. For good (a corrupt row): a retry copy, as for any failure. */
void fwd_slot_store_failed(struct forward_slot *s, rt_status st, enum forward_resume resume)
{
    if (st == RT_RETRY) {
        /* The cause without the statement: one condition, one warning. */
        log_debug("task %" PRId64 " of client \"%s\" waits for the store: %s", s->msg.task,
                  s->client->id, store_strerror(s->f->st));
        s->resume = resume;
        applier_defer(s->as, "store: %s", store_strcause(s->f->st));
        return;
    }
    fwd_slot_fail(s, RT_RETRY, FORWARD_DEAD_NONE, "store: %s", store_strerror(s->f->st));
}

void fwd_slot_commit(struct forward_slot *s, uint64_t *counter, const char *what)
{
    s->state = FS_COMMIT;
    s->commit_what = what; /* for the journal's row, and a resumed commit */
    rt_status st = fwd_link_write(s, FWD_LINK_APPLIED);
    if (st != RT_OK) {
        /* The target has the change: only the commit is tried again, and
         * the delivery stays unacknowledged until it is durable. */
        s->commit_counter = counter;
        s->commit_what = what;
        fwd_slot_store_failed(s, st, FR_COMMIT);
        return;
    }
    (*counter)++;
    log_debug("%s task %" PRId64 " of client \"%s\" (seq %" PRIu64 ") on target task %" PRId64,
              what, s->msg.task, s->client->id, s->msg.seq, s->link.dst_task);
    if (s->f->applied_hook)
        s->f->applied_hook(s->f->applied_arg, s->client->id, s->msg.task, s->msg.ts,
                           s->f->stats.last_apply_ms);
    fwd_slot_ack(s);
}

/* ---- API calls ---------------------------------------------------------- */

void fwd_slot_call(struct forward_slot *s, enum forward_state state, const char *func,
                   struct billmgr_params *p, int params_ok)
{
    s->state = state;
    if (!params_ok) {
        billmgr_params_release(p);
        if (state == FS_CREATE)
            fwd_slot_no_create(s);
        fwd_slot_fail(s, RT_REJECT, FORWARD_DEAD_API,
                      "api: cannot build the call of \"%s\" (a value over %zu bytes)", func,
                      (size_t)BILLMGR_MAX_VALUE);
        return;
    }
    int rc = billmgr_call(s->f->bm, func, p, forward_on_reply, s);
    billmgr_params_release(p);
    if (rc < 0) {
        if (state == FS_CREATE)
            fwd_slot_no_create(s);
        fwd_slot_fail(s, RT_RETRY, FORWARD_DEAD_NONE, "api: cannot queue the call of \"%s\"", func);
    }
}

enum forward_missed forward_missed_what(const struct forward *f, const struct billmgr_reply *r)
{
    const char *o = r->err_object;
    if (r->status != RT_REJECT || strcmp(r->err_type, "missed") != 0)
        return FORWARD_MISSED_NO;
    if (strcmp(o, "elid") == 0 || strcmp(o, "task") == 0)
        return FORWARD_MISSED_TASK;
    if (strcmp(o, "func") == 0 || strcmp(o, f->api->func_task_edit) == 0 ||
        strcmp(o, f->api->func_task) == 0)
        return FORWARD_MISSED_FUNC;
    return FORWARD_MISSED_OTHER;
}

/* The outcome of a failed API call: a retry, or a dead letter whose
 * reason names the call and the API's error. A missed error that does not
 * name the task is retried: a missing function until an operator fixes
 * the configuration (logged at error once, not once per message), any
 * other until the API says what it means. */
void fwd_slot_api_failed(struct forward_slot *s, const char *what, const struct billmgr_reply *r)
{
    struct forward *f = s->f;
    int listing = s->state == FS_RECOVER_LIST;
    const char *func = listing ? f->api->func_task : f->api->func_task_edit;

    switch (forward_missed_what(f, r)) {
    case FORWARD_MISSED_FUNC:
        if (!f->func_missing)
            log_error("the function \"%s\" does not exist on this BILLmanager (it answers missed, "
                      "object \"%s\"): check billmanager.api.%s; task messages are retried "
                      "until it answers",
                      func, r->err_object, listing ? "func_task" : "func_task_edit");
        f->func_missing = 1;
        fwd_slot_fail(s, RT_RETRY, FORWARD_DEAD_NONE,
                      "api: %s: the function \"%s\" does not exist on this BILLmanager (missed, "
                      "object \"%s\")",
                      what, func, r->err_object);
        return;
    case FORWARD_MISSED_OTHER:
        fwd_slot_fail(s, RT_RETRY, FORWARD_DEAD_NONE,
                      "api: %s: missed, object \"%s\", which is not the task%s%s", what,
                      r->err_object, *r->message ? ": " : "", r->message);
        return;
    default: break;
    }
    fwd_slot_fail(s, r->status == RT_RETRY ? RT_RETRY : RT_REJECT, FORWARD_DEAD_API,
                  "api: %s: %s%s%s%s%s%s", what, r->err_type, *r->err_object ? " (" : "",
                  r->err_object, *r->err_object ? ")" : "", *r->message ? ": " : "", r->message);
}

/* ---- create ------------------------------------------------------------ */

void fwd_slot_create_intent(struct forward_slot *s)
{
    rt_status st = fwd_link_write(s, FWD_LINK_INTENT);
    if (st != RT_OK) {
        fwd_slot_store_failed(s, st, FR_RECREATE);
        return;
    }
    fwd_slot_create(s);
}

static void fwd_slot_recreate(struct forward_slot *s)
{
    log_warning("target task %" PRId64 " of task %" PRId64 " of client \"%s\" is gone, creating "
                "it again",
                s->link.dst_task, s->msg.task, s->client->id);
    fwd_slot_create_intent(s);
}

void fwd_slot_create(struct forward_slot *s)
{
    const struct config_billmgr_api *api = s->f->api;
    struct billmgr_params p;
    char *note;
    int ok = 1;

    forward_plan_release(&s->plan);
    if (forward_plan_make(&s->msg, "", api->task_type[0] != '\0', &s->plan) < 0) {
        fwd_slot_fail(s, RT_RETRY, FORWARD_DEAD_NONE, "out of memory planning the create");
        return;
    }
    /* The block is there even with no text: its header marks the task as
     * made for (client, task), which a redelivered create looks for. */
    note = notes_append("", s->origin, s->plan.block ? s->plan.block : "");
    if (!note) {
        fwd_slot_fail(s, RT_RETRY, FORWARD_DEAD_NONE, "out of memory building the note");
        return;
    }
    const char *type = api->task_type[0] ? api->task_type : s->msg.fwd.type;
    billmgr_params_init(&p);
    ok &= billmgr_params_add(&p, "sok", "ok") == 0;
    ok &= billmgr_params_addf(&p, api->field_department, "%ld", s->client->department) == 0;
    ok &= billmgr_params_add(&p, api->field_name, s->msg.fwd.name ? s->msg.fwd.name : "") == 0;
    if (type && *type)
        ok &= billmgr_params_add(&p, api->field_type, type) == 0;
    ok &= billmgr_params_add(&p, api->field_note, note) == 0;
    if (s->msg.fwd.deadline && *s->msg.fwd.deadline)
        ok &= billmgr_params_add(&p, api->field_deadline, s->msg.fwd.deadline) == 0;
    if (s->msg.fwd.status != 0)
        ok &= billmgr_params_addf(&p, api->field_status, "%d", s->msg.fwd.status) == 0;
    free(note);
    fwd_slot_call(s, FS_CREATE, api->func_task_edit, &p, ok);
}

/* ---- update ------------------------------------------------------------ */

/* Changes the target: the fields the plan marks, and note when not NULL. */
static void fwd_slot_edit(struct forward_slot *s, const char *note)
{
    const struct config_billmgr_api *api = s->f->api;
    const struct codec_task *t = &s->msg.fwd;
    struct billmgr_params p;
    int ok = 1;

    billmgr_params_init(&p);
    ok &= billmgr_params_add(&p, "sok", "ok") == 0;
    ok &= billmgr_params_addf(&p, "elid", "%" PRId64, s->link.dst_task) == 0;
    if (s->plan.name)
        ok &= billmgr_params_add(&p, api->field_name, t->name ? t->name : "") == 0;
    if (s->plan.type)
        ok &= billmgr_params_add(&p, api->field_type, t->type ? t->type : "") == 0;
    if (s->plan.deadline)
        ok &= billmgr_params_add(&p, api->field_deadline, t->deadline ? t->deadline : "") == 0;
    if (s->plan.status)
        ok &= billmgr_params_addf(&p, api->field_status, "%d", t->status) == 0;
    if (note)
        ok &= billmgr_params_add(&p, api->field_note, note) == 0;
    fwd_slot_call(s, FS_EDIT, api->func_task_edit, &p, ok);
}

void fwd_slot_view(struct forward_slot *s, enum forward_state state, int64_t elid)
{
    struct billmgr_params p;
    billmgr_params_init(&p);
    int ok = billmgr_params_addf(&p, "elid", "%" PRId64, elid) == 0;
    fwd_slot_call(s, state, s->f->api->func_task_edit, &p, ok);
}

/* Logs a message whose status lost to a newer change on the target
 * (forward_plan_status): an operator reading the log sees why the source's
 * status did not reach the target. */
static void fwd_slot_log_stale(const struct forward_slot *s)
{
    if (s->plan.stale)
        log_info("task message seq %" PRIu64 " of task %" PRId64 " of client \"%s\" was read "
                 "before the client applied state %" PRId64 " (it had seen %" PRIu64 "): the "
                 "target's status is kept",
                 s->msg.seq, s->msg.task, s->client->id,
                 fp_set_get_int(s->link.applied, LINKSET_LINK_REV_PUB, 0), s->msg.fwd.rev_seq);
}

void fwd_slot_update(struct forward_slot *s)
{
    if (linkset_pend_present(s->link.applied)) {
        /* A note edit was under way when the daemon stopped: the target
         * tells whether it landed, and the plan is made against that. */
        s->pending = 1;
        fwd_slot_view(s, FS_VIEW_TARGET, s->link.dst_task);
        return;
    }
    forward_plan_release(&s->plan);
    if (forward_plan_make(&s->msg, s->link.applied, s->f->api->task_type[0] != '\0', &s->plan) <
        0) {
        fwd_slot_fail(s, RT_RETRY, FORWARD_DEAD_NONE, "out of memory planning the update");
        return;
    }
    fwd_slot_log_stale(s);
    if (forward_plan_empty(&s->plan)) {
        fwd_slot_commit(s, &s->f->stats.unchanged, "nothing to change for");
        return;
    }
    if (s->plan.block) /* a note is appended to what the target holds now */
        fwd_slot_view(s, FS_VIEW_TARGET, s->link.dst_task);
    else
        fwd_slot_edit(s, NULL);
}

/* The intent of an earlier note edit found in the link (slot_update), and
 * the target's note as it is now: which set to plan against, and the plan.
 *
 * The intent was written for seq P. The message in hand has seq M > the
 * link's last_seq; usually M == P (the same message redelivered), but a
 * newer one may come first, or an older one from a retry queue. When the
 * note shows P's edit landed, P is applied in full (one call wrote all its
 * fields and the note): the base is the set after it. M == P then plans
 * nothing (committed without a call); M > P plans only what M adds to P,
 * so P's block is never written again; M < P is older than what the
 * target holds: nothing is sent and the link records P as applied (P's
 * redelivery is then dropped as a duplicate). When it did not land, the
 * base is the set before P, and M is applied as if P never ran (for
 * M >= P that writes P's text too, once). Returns 0 when s->plan is made,
 * -1 when the slot failed. */
static int fwd_slot_plan_resolved(struct forward_slot *s, const char *note)
{
    char base[STORE_APPLIED_MAX + 1];
    uint64_t pseq = 0;

    s->pending = 0;
    s->landed = linkset_pend_landed(s->link.applied, note, &pseq);
    if (linkset_pend_base(s->link.applied, s->landed, base, sizeof(base)) < 0) {
        fwd_slot_fail(s, RT_RETRY, FORWARD_DEAD_NONE, "the applied set of the link is unreadable");
        return -1;
    }
    log_info("the note edit of seq %" PRIu64 " of task %" PRId64 " of client \"%s\" was "
             "interrupted and %s; applying seq %" PRIu64,
             pseq, s->msg.task, s->client->id, s->landed ? "had landed" : "had not landed",
             s->msg.seq);
    forward_plan_release(&s->plan);
    if (s->landed && pseq > s->msg.seq) {
        s->commit_seq = pseq;
        forward_copy(s->plan.applied, sizeof(s->plan.applied), base);
        return 0;
    }
    if (forward_plan_make(&s->msg, base, s->f->api->task_type[0] != '\0', &s->plan) < 0) {
        fwd_slot_fail(s, RT_RETRY, FORWARD_DEAD_NONE, "out of memory planning the update");
        return -1;
    }
    fwd_slot_log_stale(s);
    return 0;
}

/* The target viewed (its note as it is now): resolve an interrupted edit,
 * then append the block, committing the intent of that edit first. */
static void fwd_slot_target_viewed(struct forward_slot *s, const char *current)
{
    struct forward *f = s->f;

    if (s->pending) {
        if (fwd_slot_plan_resolved(s, current) < 0)
            return;
        if (forward_plan_empty(&s->plan)) {
            fwd_slot_commit(s, s->landed ? &f->stats.updated : &f->stats.unchanged,
                            s->landed ? "updated (before a restart)" : "nothing to change for");
            return;
        }
        if (!s->plan.block) {
            fwd_slot_edit(s, NULL);
            return;
        }
    }
    char *note = notes_append(current, s->origin, s->plan.block);
    if (!note) {
        fwd_slot_fail(s, RT_RETRY, FORWARD_DEAD_NONE, "out of memory building the note");
        return;
    }
    free(s->note);
    s->note = note;
    fwd_slot_pend_edit(s);
}

void fwd_slot_pend_edit(struct forward_slot *s)
{
    s->pend_note = s->note;
    rt_status st = fwd_link_write(s, FWD_LINK_PENDING);
    s->pend_note = NULL;
    if (st != RT_OK) {
        fwd_slot_store_failed(s, st, FR_PENDING);
        return;
    }
    fwd_slot_edit(s, s->note); /* the note stays the slot's until it is cleared */
}

/* ---- API answers -------------------------------------------------------- */

/* FS_CREATE answered: the new task's id is the link's target. */
static void fwd_slot_created(struct forward_slot *s, const struct billmgr_reply *r)
{
    struct forward *f = s->f;
    long id;

    if (r->status != RT_OK) {
        if (forward_create_not_made(r))
            fwd_slot_no_create(s);
        fwd_slot_api_failed(s, "creating the task", r);
        return;
    }
    if (billmgr_long(r->doc, "id", &id) < 0 || id <= 0) {
        /* It may exist: the retry looks for it by its origin block. */
        const char *text;
        int got = billmgr_text_field(r->doc, "id", &text);
        fwd_slot_fail(s, RT_RETRY, FORWARD_DEAD_NONE, "api: the create answered without an id%s",
                      got < 0    ? " (its id is not text)"
                      : got == 0 ? ""
                                 : " (its id is not a task id)");
        return;
    }
    s->link.dst_task = id;
    forward_seen_dst(f, s->client, id);
    log_info("created target task %ld for task %" PRId64 " of client \"%s\"", id, s->msg.task,
             s->client->id);
    fwd_slot_commit(s, &f->stats.created, "created");
}

/* FS_VIEW_TARGET answered: the target's note as it is now. */
static void fwd_slot_target_answered(struct forward_slot *s, const struct billmgr_reply *r)
{
    char why[128];

    if (forward_missed_what(s->f, r) == FORWARD_MISSED_TASK) {
        fwd_slot_recreate(s);
        return;
    }
    if (r->status != RT_OK) {
        fwd_slot_api_failed(s, "viewing the target task", r);
        return;
    }
    /* An unreadable note read as empty would be overwritten with the
     * new block alone, and what target staff wrote with it. */
    const char *const field[1] = {s->f->api->field_note};
    const char *note = NULL;
    if (applier_view_read(r->doc, s->link.dst_task, field, &note, 1, why, sizeof(why)) < 0) {
        fwd_slot_fail(s, RT_RETRY, FORWARD_DEAD_NONE, "api: the view of target task %" PRId64 " %s",
                      s->link.dst_task, why);
        return;
    }
    fwd_slot_target_viewed(s, note);
}

/* FS_EDIT answered: the target has the change. */
static void fwd_slot_edited(struct forward_slot *s, const struct billmgr_reply *r)
{
    if (forward_missed_what(s->f, r) == FORWARD_MISSED_TASK) {
        fwd_slot_recreate(s);
        return;
    }
    if (r->status != RT_OK) {
        fwd_slot_api_failed(s, "changing the target task", r);
        return;
    }
    fwd_slot_commit(s, &s->f->stats.updated, "updated");
}

/* Every API answer of a slot: to the step it waits in. */
static void forward_on_reply(void *arg, const struct billmgr_reply *r)
{
    struct forward_slot *s = arg;

    if (r->status == RT_OK)
        s->f->func_missing = 0;
    switch (s->state) {
    case FS_RECOVER_LIST: fwd_recover_listed(s, r); return;
    case FS_RECOVER_VIEW: fwd_recover_viewed(s, r); return;
    case FS_CREATE: fwd_slot_created(s, r); return;
    case FS_VIEW_TARGET: fwd_slot_target_answered(s, r); return;
    case FS_EDIT: fwd_slot_edited(s, r); return;
    default:
        /* Not waiting for a call: cannot happen, every call has one state. */
        log_error("API answer for task %" PRId64 " of client \"%s\" in an unexpected state %d",
                  s->msg.task, s->client ? s->client->id : "", (int)s->state);
        return;
    }
}

/* ---- the start ---------------------------------------------------------- */

void fwd_slot_start(struct forward_slot *s)
{
    struct forward *f = s->f;

    s->state = FS_LINK_LOOKUP;
    rt_status st = store_link_get(f->st, s->client->id, s->msg.task, &s->link);
    if (st != RT_OK) {
        fwd_slot_store_failed(s, st, FR_START);
        return;
    }
    if (forward_seq_jump(s, &s->link))
        return;
    if (s->link.found && s->link.dst_task > 0 && s->link.last_seq >= s->msg.seq) {
        f->applied_dups++;
        log_debug("dropped seq %" PRIu64 " of task %" PRId64 " of client \"%s\": seq %" PRIu64
                  " is applied",
                  s->msg.seq, s->msg.task, s->client->id, s->link.last_seq);
        fwd_slot_journal(s, JOURNAL_DROPPED, "duplicate: seq %" PRIu64 " is applied",
                         s->link.last_seq);
        fwd_slot_ack(s);
        return;
    }
    if (s->link.found && s->link.dst_task > 0) {
        forward_seen_dst(f, s->client, s->link.dst_task);
        fwd_slot_update(s);
        return;
    }
    if (s->link.found && fp_set_get_int(s->link.applied, LINKSET_LINK_CREATING, 1) != 0) {
        fwd_recover_begin(s);
        return;
    }
    if ((st = fwd_link_write(s, FWD_LINK_INTENT)) != RT_OK) {
        fwd_slot_store_failed(s, st, FR_START);
        return;
    }
    fwd_slot_create(s);
}
