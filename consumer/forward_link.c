/*
 * forward_link.c - the forward applier's link in the store (forward.h):
 * each step's write of the link in one transaction, re-read inside it so
 * that what the reverse publisher wrote meanwhile is kept; the seqs a
 * sender can have used, checked against the link; the highest target id
 * of each client's links, which bounds the search after an interrupted
 * create.
 */
#include "forward.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "applier.h"
#include "clock.h"
#include "forward_int.h"
#include "fp.h"
#include "linkset.h"
#include "log.h"
#include "store_journal.h"

/* ---- seqs --------------------------------------------------------------- */

int forward_seq_jump(struct forward_slot *s, const struct store_link *link)
{
    char why[APPLIER_REASON_MAX];
    if (!applier_seq_impossible(s->msg.seq, link->found ? link->last_seq : 0, s->msg.task, why,
                                sizeof(why)))
        return 0;
    fwd_slot_fail(s, RT_REJECT, FORWARD_DEAD_SEQ, "%s", why);
    return 1;
}

int forward_seq_invalid(struct forward *f, struct forward_slot *s)
{
    struct store_link link;
    char why[APPLIER_REASON_MAX];
    /* Above what any sender can use: refused before the store is asked
     * (last = seq: no jump to measure yet). */
    if (applier_seq_impossible(s->msg.seq, s->msg.seq, s->msg.task, why, sizeof(why))) {
        fwd_slot_fail(s, RT_REJECT, FORWARD_DEAD_SEQ, "%s", why);
        return 1;
    }
    if (applier_troubled(f->ap) ||
        store_link_get(f->st, s->client->id, s->msg.task, &link) != RT_OK)
        return 0;
    return forward_seq_jump(s, &link);
}

/* ---- the highest target id of a client --------------------------------- */

/* The index of client c in the configuration. */
static size_t forward_client_index(const struct forward *f, const struct config_server_client *c)
{
    return (size_t)(c - f->cfg->server.clients);
}

void forward_seen_dst(struct forward *f, const struct config_server_client *c, int64_t dst)
{
    size_t i = forward_client_index(f, c);
    if (dst > f->max_dst[i])
        f->max_dst[i] = dst;
}

/* The highest target task id of client c's links: read from the store the
 * first time (one pass over the links), then kept by forward_seen_dst. */
static rt_status forward_max_dst(struct forward *f, const struct config_server_client *c,
                                 int64_t *out)
{
    size_t i = forward_client_index(f, c);
    if (!f->max_known[i]) {
        struct store_link *batch = malloc(FORWARD_SCAN_BATCH * sizeof(*batch));
        int64_t after = INT64_MIN;
        size_t n;
        if (!batch)
            return RT_RETRY;
        do {
            rt_status st = store_link_list(f->st, c->id, after, FORWARD_SCAN_BATCH, batch, &n);
            if (st != RT_OK) {
                free(batch);
                return st;
            }
            for (size_t k = 0; k < n; k++) {
                forward_seen_dst(f, c, batch[k].dst_task);
                after = batch[k].src_task;
            }
        } while (n == FORWARD_SCAN_BATCH);
        free(batch);
        f->max_known[i] = 1;
    }
    *out = f->max_dst[i];
    return RT_OK;
}

/* ---- writes ------------------------------------------------------------- */

/* The row of an applied message, written in the transaction of its link:
 * what the target task took (s->commit_what says how it was applied). */
static void fwd_slot_journal_applied(const struct forward_slot *s)
{
    const struct forward_plan *p = &s->plan;
    const char *what = s->commit_what ? s->commit_what : "";
    const char *stale = p->stale ? "; the target's newer status is kept" : "";
    const char *restart = strstr(what, "restart") ? " (its edit landed before a restart)" : "";

    char fields[64] = "";

    if (strcmp(what, "created") == 0) {
        fwd_slot_journal(s, JOURNAL_APPLIED, "created%s", stale);
        return;
    }
    if (forward_plan_empty(p)) {
        fwd_slot_journal(s, JOURNAL_APPLIED, "unchanged%s%s", restart, stale);
        return;
    }
    snprintf(fields, sizeof(fields), "%s%s%s%s%s", p->name ? ", name" : "", p->type ? ", type" : "",
             p->deadline ? ", deadline" : "", p->status ? ", status" : "",
             p->block ? ", note" : "");
    fwd_slot_journal(s, JOURNAL_APPLIED, "changed %s%s%s", fields[0] ? fields + 2 : "nothing",
                     restart, stale);
}

/* The link as it stands in the open transaction, or a new one for the
 * slot's task. */
static rt_status fwd_link_read(const struct forward_slot *s, struct store_link *cur)
{
    rt_status st = store_link_get(s->f->st, s->client->id, s->msg.task, cur);
    if (st != RT_OK)
        return st;
    if (!cur->found) {
        memset(cur, 0, sizeof(*cur));
        forward_copy(cur->client, sizeof(cur->client), s->client->id);
        cur->src_task = s->msg.task;
    }
    return RT_OK;
}

/* FWD_LINK_INTENT: a create is about to be made, above target id after. */
static void fwd_link_set_intent(struct store_link *cur, int64_t after)
{
    if (cur->dst_task) {
        /* A new target task: what the reverse side knew of the old one
         * is void, but rev_seq must keep growing. */
        cur->rev_fp[0] = '\0';
        cur->notes_sent = 0;
    }
    cur->dst_task = 0;
    cur->last_seq = 0;
    cur->applied[0] = '\0';
    /* Two short integers: they always fit. */
    fp_set_put_int(cur->applied, sizeof(cur->applied), LINKSET_LINK_CREATING, 1);
    fp_set_put_int(cur->applied, sizeof(cur->applied), LINKSET_LINK_AFTER, after);
}

/* FWD_LINK_NO_CREATE: the create under way surely made nothing. */
static void fwd_link_set_no_create(struct store_link *cur)
{
    if (cur->dst_task != 0)
        return; /* not an intent (cannot happen: only the create path calls this) */
    cur->applied[0] = '\0';
    fp_set_put_int(cur->applied, sizeof(cur->applied), LINKSET_LINK_CREATING, 0);
}

/* FWD_LINK_PENDING: the intent of the note edit that writes s->pend_note.
 * It goes on the set this plan was made against: the one stored, or,
 * after an earlier intent was found to have landed, the set after that
 * edit. What the reverse publisher wrote meanwhile (status, state) stays
 * at the top level. */
static void fwd_link_set_pending(const struct forward_slot *s, struct store_link *cur)
{
    char base[STORE_APPLIED_MAX + 1], set[STORE_APPLIED_MAX + 1];

    if (linkset_pend_base(cur->applied, s->landed, base, sizeof(base)) < 0)
        forward_copy(base, sizeof(base), cur->applied);
    /* The sets are a few fixed keys, far below the cap; should one not
     * fit, the edit goes ahead unprotected rather than never. */
    if (linkset_pend_put(base, s->plan.applied, s->msg.seq, s->pend_note, set, sizeof(set)) < 0)
        log_warning("no room for the intent of the note edit of task %" PRId64
                    " of client \"%s\": a crash before its commit would append it twice",
                    s->msg.task, s->client->id);
    forward_copy(cur->applied, sizeof(cur->applied), set);
}

/* FWD_LINK_APPLIED: the message is applied on s->link.dst_task. */
static void fwd_link_set_applied(const struct forward_slot *s, struct store_link *cur)
{
    char applied[STORE_APPLIED_MAX + 1];

    linkset_applied_merge(cur->applied, s->plan.applied, s->plan.status,
                          cur->dst_task == s->link.dst_task, applied, sizeof(applied));
    cur->dst_task = s->link.dst_task;
    cur->last_seq = s->commit_seq > s->msg.seq ? s->commit_seq : s->msg.seq;
    forward_copy(cur->applied, sizeof(cur->applied), applied);
}

/* Changes the link cur as what says; after is the bound of an intent. */
static void fwd_link_change(const struct forward_slot *s, struct store_link *cur,
                            enum fwd_link_write what, int64_t after)
{
    switch (what) {
    case FWD_LINK_INTENT: fwd_link_set_intent(cur, after); break;
    case FWD_LINK_NO_CREATE: fwd_link_set_no_create(cur); break;
    case FWD_LINK_ADOPT:
        cur->dst_task = s->link.dst_task;
        forward_copy(cur->applied, sizeof(cur->applied), s->link.applied);
        break;
    case FWD_LINK_PENDING: fwd_link_set_pending(s, cur); break;
    case FWD_LINK_APPLIED: fwd_link_set_applied(s, cur); break;
    }
}

/* Inside the transaction: the link, and for an applied message the time
 * of the last apply and its row in the journal. */
static rt_status fwd_link_put(const struct forward_slot *s, const struct store_link *cur,
                              enum fwd_link_write what, int64_t now)
{
    struct store *st = s->f->st;
    rt_status r;

    if ((r = store_link_put(st, cur)) != RT_OK)
        return r;
    if (what != FWD_LINK_APPLIED)
        return RT_OK;
    if ((r = store_meta_set_i64(st, FORWARD_META_LAST_APPLY, now)) != RT_OK)
        return r;
    fwd_slot_journal_applied(s);
    return RT_OK;
}

rt_status fwd_link_write(struct forward_slot *s, enum fwd_link_write what)
{
    struct forward *f = s->f;
    struct store_link cur;
    int64_t now = clock_wall_ms();
    int64_t after = 0;
    rt_status st;

    /* Task ids grow: whatever the create makes is above every target id
     * known now, which bounds the search after an interrupted one. */
    if (what == FWD_LINK_INTENT && (st = forward_max_dst(f, s->client, &after)) != RT_OK)
        return st;
    if ((st = store_begin(f->st)) != RT_OK)
        return st;
    if ((st = fwd_link_read(s, &cur)) != RT_OK)
        goto rollback;
    fwd_link_change(s, &cur, what, after);
    cur.updated_ms = now;
    if ((st = fwd_link_put(s, &cur, what, now)) != RT_OK)
        goto rollback;
    /* An intent is what a redelivery after a crash looks for before it
     * creates or appends again: it is on disk before the call it guards.
     * The rest rides the loop pass's one sync (store.h), before the ack. */
    if (what == FWD_LINK_INTENT || what == FWD_LINK_PENDING)
        st = store_commit_durable(f->st);
    else
        st = store_commit(f->st);
    if (st != RT_OK)
        return st;
    s->link = cur;
    if (what == FWD_LINK_APPLIED)
        f->stats.last_apply_ms = now;
    return RT_OK;
rollback:
    store_rollback(f->st);
    return st;
}
