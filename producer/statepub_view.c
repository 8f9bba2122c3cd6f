#include "statepub_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "linkset.h"
#include "log.h"
#include "notes.h"
#include "taskview.h"

/* ---- the fingerprints and the state (pure) --------------------------- */

size_t statepub_utf8_cut(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n <= max)
        return n;
    /* Step back over continuation bytes (10xxxxxx) so that the cut falls
     * before the lead byte of the sequence it would split. */
    n = max;
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
        n--;
    return n;
}

void statepub_row_fp(const struct config *cfg, json_t *row, char out[FP_HEX_LEN + 1])
{
    const struct config_billmgr_api *api = &cfg->billmanager.api;
    struct fp h;
    fp_init(&h);
    fp_add_str(&h, billmgr_text(row, api->field_status));
    fp_add_str(&h, billmgr_text(row, api->field_performer));
    fp_add_str(&h, billmgr_text(row, api->field_updated));
    fp_hex(&h, out);
}

void statepub_state_release(struct statepub_state *s)
{
    if (!s)
        return;
    free(s->performer);
    free(s->native);
    memset(s, 0, sizeof *s);
}

int statepub_state_from_doc(const struct config *cfg, json_t *doc, const char *performer_name,
                            struct statepub_state *out, char *err, size_t errlen)
{
    const struct config_billmgr_api *api = &cfg->billmanager.api;
    long v;

    memset(out, 0, sizeof *out);
    if (errlen)
        err[0] = '\0';
    /* A field of the wrong type is not an empty one: published as such,
     * it would clear the note, status and performer the client shows. */
    const char *const fields[] = {api->field_status, api->field_performer, api->field_note};
    const char *text[3];
    for (size_t i = 0; i < 3; i++) {
        if (billmgr_text_field(doc, fields[i], &text[i]) < 0) {
            snprintf(err, errlen, "its %s is not text", fields[i]);
            return -1;
        }
    }
    const char *status = text[0];
    if (!status || !*status) {
        out->status = 0;
    } else if (billmgr_long(doc, api->field_status, &v) == 0 && v >= 0 && v <= 2) {
        out->status = (int)v;
    } else {
        snprintf(err, errlen, "its %s \"%.32s\" is not 0, 1 or 2", api->field_status, status);
        return -1;
    }
    const char *performer = text[1];
    if (!performer || !*performer) {
        out->performer_id = 0;
    } else if (billmgr_long(doc, api->field_performer, &v) == 0 && v >= 0) {
        out->performer_id = v;
    } else {
        snprintf(err, errlen, "its %s \"%.32s\" is not a staff id", api->field_performer,
                 performer);
        return -1;
    }

    const char *name = performer_name ? performer_name : "";
    out->performer = strndup(name, statepub_utf8_cut(name, CODEC_MAX_PERFORMER));
    const char *note = text[2];
    out->native = notes_native(note ? note : "");
    if (!out->performer || !out->native) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    out->native_len = strlen(out->native);
    size_t keep = statepub_utf8_cut(out->native, CODEC_MAX_NOTE_ENTRY);
    if (keep < out->native_len) {
        /* One notes entry holds at most CODEC_MAX_NOTE_ENTRY bytes. The
         * status and performer must still travel, so the note is cut
         * (and the caller says so in the log) rather than the task
         * never published again. */
        out->native[keep] = '\0';
        out->native_len = keep;
        out->cut = 1;
    }
    return 0;
}

void statepub_state_fp(const struct statepub_state *s, char out[FP_HEX_LEN + 1])
{
    struct fp h;
    fp_init(&h);
    fp_add_int(&h, s->status);
    fp_add_int(&h, s->performer_id);
    fp_add_str(&h, s->performer);
    fp_add_str(&h, s->native);
    fp_hex(&h, out);
}

int statepub_applied_update(const char *applied, const char *state_fp, int status, char *out,
                            size_t outlen)
{
    const char *was = applied ? applied : "";
    size_t n = strlen(was);
    if (outlen == 0)
        return -1;
    char *tmp = malloc(outlen);
    if (!tmp || n >= outlen) {
        free(tmp);
        if (out != was)
            snprintf(out, outlen, "%s", was);
        return -1;
    }
    memcpy(tmp, was, n + 1);
    int bad = fp_set_put(tmp, outlen, LINKSET_LINK_STATE, state_fp) < 0 ||
              fp_set_put_int(tmp, outlen, LINKSET_LINK_STATUS, status) < 0;
    if (bad) {
        if (out != was)
            memmove(out, was, n + 1);
    } else {
        memcpy(out, tmp, strlen(tmp) + 1);
    }
    free(tmp);
    return bad ? -1 : 0;
}

/* ---- the views ------------------------------------------------------- */

/* Records the list-level fingerprint of a task whose state is what was
 * last published, so that the next cycle skips it without a view. A
 * failure only costs that view again: logged, not a failure of the
 * cycle. */
static void sp_job_record_unchanged(struct sp_job *j)
{
    struct statepub *sp = j->c->sp;
    struct store_link cur;

    rt_status st = store_begin(sp->st);
    if (st == RT_OK)
        st = store_link_get(sp->st, j->c->cc->id, j->src_task, &cur);
    if (st == RT_OK && cur.found && cur.dst_task == j->dst_task) {
        snprintf(cur.rev_fp, sizeof cur.rev_fp, "%s", j->lf);
        st = store_link_put(sp->st, &cur);
    }
    if (st == RT_OK)
        st = store_commit(sp->st);
    if (st != RT_OK) {
        log_warning("cannot record task %" PRId64 " of client \"%s\" as unchanged: %s", j->dst_task,
                    j->c->cc->id, store_strerror(sp->st));
        store_rollback(sp->st);
    }
}

/* The view function does not exist on this BILLmanager: a configuration
 * error that fails the view. The cause is logged at error once, not once
 * per task every cycle: every view fails the same way until it is fixed. */
static void sp_view_no_function(struct sp_job *j, const struct billmgr_reply *rep)
{
    struct sp_client *c = j->c;
    struct statepub *sp = c->sp;
    const char *func = sp->cfg->billmanager.api.func_task_edit;

    if (!sp->func_missing)
        log_error("the function \"%s\" does not exist on this BILLmanager (it answers "
                  "missed, object \"%s\"): check billmanager.api.func_task_edit; no state "
                  "is published until it answers",
                  func, rep->err_object);
    else
        log_debug("cannot view task %" PRId64 " of client \"%s\": the function \"%s\" "
                  "does not exist",
                  j->dst_task, c->cc->id, func);
    sp->func_missing = 1;
    sp->stats.view_failed++;
    sp_job_finish(j, 0);
}

/* Deleted between the list and the view: there is no state to send, and
 * the next cycle will not list it. Not a failure of the cycle. */
static void sp_view_gone(struct sp_job *j)
{
    log_info("task %" PRId64 " of client \"%s\" (source task %" PRId64 ") is gone: no "
             "state to publish",
             j->dst_task, j->c->cc->id, j->src_task);
    sp_job_finish(j, 1);
}

/* Any other failed view fails the cycle, which is retried. */
static void sp_view_failed(struct sp_job *j, const struct billmgr_reply *rep)
{
    log_warning("cannot view task %" PRId64 " of client \"%s\" (source task %" PRId64 "): %s: %s",
                j->dst_task, j->c->cc->id, j->src_task, rep->err_type, rep->message);
    j->c->sp->stats.view_failed++;
    sp_job_finish(j, 0);
}

/* The state read from the view (its fingerprint in j->sf), against the
 * link read again: the forward applier may have written it since the list
 * (a new target task, or its own status). The same state as the one last
 * published only records the row's fingerprint; another is published. */
static void sp_view_state(struct sp_job *j, const struct statepub_state *s)
{
    struct sp_client *c = j->c;
    struct statepub *sp = c->sp;
    struct store_link link;
    char applied_state[FP_HEX_LEN + 1];

    if (store_link_get(sp->st, c->cc->id, j->src_task, &link) != RT_OK) {
        log_warning("cannot read the link of task %" PRId64 " of client \"%s\": %s", j->dst_task,
                    c->cc->id, store_strerror(sp->st));
        sp_job_finish(j, 0);
        return;
    }
    if (!link.found || link.dst_task != j->dst_task) {
        log_debug("task %" PRId64 " of client \"%s\" is no longer the target of source task "
                  "%" PRId64 ": nothing to publish",
                  j->dst_task, c->cc->id, j->src_task);
        sp_job_finish(j, 1);
        return;
    }
    if (fp_set_get(link.applied, LINKSET_LINK_STATE, applied_state, sizeof applied_state) == 0 &&
        strcmp(applied_state, j->sf) == 0 && !sp_fwd_moved(&link, j->fwd_seq)) {
        sp_job_record_unchanged(j);
        sp->stats.unchanged++;
        c->cyc_unchanged++;
        log_debug("task %" PRId64 " of client \"%s\" unchanged: nothing to publish", j->dst_task,
                  c->cc->id);
        sp_job_finish(j, 1);
        return;
    }
    sp_job_prepare(j, s);
}

/* A view that answered: the state, when it is the task's view and its
 * fields can be read; otherwise the view fails. */
static void sp_view_read(struct sp_job *j, json_t *doc)
{
    struct sp_client *c = j->c;
    struct statepub *sp = c->sp;
    struct statepub_state s;
    char err[256];

    if (billmgr_view_of(doc, j->dst_task, err, sizeof err) < 0) {
        log_warning("cannot view task %" PRId64 " of client \"%s\" (source task %" PRId64
                    "): the view %s",
                    j->dst_task, c->cc->id, j->src_task, err);
        sp->stats.view_failed++;
        sp_job_finish(j, 0);
        return;
    }
    sp->stats.views++;
    c->cyc_views++;
    if (statepub_state_from_doc(sp->cfg, doc, j->pname, &s, err, sizeof err) < 0) {
        log_warning("cannot publish the state of task %" PRId64 " of client \"%s\" (source "
                    "task %" PRId64 "): %s",
                    j->dst_task, c->cc->id, j->src_task, err);
        statepub_state_release(&s);
        sp->stats.publish_failed++;
        sp_job_finish(j, 0);
        return;
    }
    if (s.cut)
        log_warning("note of task %" PRId64 " of client \"%s\" (source task %" PRId64 ") is "
                    "longer than %u bytes: only the first %zu are published",
                    j->dst_task, c->cc->id, j->src_task, (unsigned)CODEC_MAX_NOTE_ENTRY,
                    s.native_len);
    statepub_state_fp(&s, j->sf);
    sp_view_state(j, &s);
    statepub_state_release(&s);
}

/* The answer of a task view (billmgr_done_fn; arg is the job). */
static void sp_view_done(void *arg, const struct billmgr_reply *rep)
{
    struct sp_job *j = arg;
    struct statepub *sp = j->c->sp;

    sp_list_unlink(j);
    if (sp->draining) {
        sp_job_finish(j, 0);
        return;
    }
    enum taskview_missed missed = taskview_missed(rep, sp->cfg->billmanager.api.func_task_edit);
    if (missed == TASKVIEW_MISSED_FUNC) {
        sp_view_no_function(j, rep);
    } else if (missed == TASKVIEW_MISSED_TASK) {
        sp_view_gone(j);
    } else if (rep->status != RT_OK) {
        sp_view_failed(j, rep);
    } else {
        sp->func_missing = 0;
        sp_view_read(j, rep->doc);
    }
    sp_pump(sp);
}

/* At most max_inflight views run. A cycle is background work and the
 * API's queue is first come, first served: beyond a floor of a quarter of
 * max_inflight (at least one), a view starts only while the API has room
 * for it and a reserve of a quarter of max_inflight besides, so that a
 * create or an edit of the forward applier finds a connection free rather
 * than waiting for a view's answer. Without the room the paced benchmark saw its apply stage
 * grow from 53 to 83 ms at p50 while a first cycle viewed 2,513 new links;
 * without the reserve, its p99 was 71-78 ms against 52 at p50 while a
 * cycle ran (a create queued behind 16 views waits up to one call). The
 * floor keeps a cycle going under a steady stream of applies; each answer
 * starts the next view. */
int statepub_view_may_start(size_t viewing, size_t max_views, size_t api_inflight, int api_room)
{
    size_t floor = max_views / 4 ? max_views / 4 : 1, reserve = max_views / 4;
    if (viewing >= max_views)
        return 0;
    return viewing < floor || (api_room && api_inflight + reserve < max_views);
}

/* Starts views while statepub_view_may_start() lets it, the clients
 * taking turns so that a large department does not hold up the others. */
void sp_views_start(struct statepub *sp)
{
    const char *func = sp->cfg->billmanager.api.func_task_edit;
    while (statepub_view_may_start(sp->viewing.n, sp->max_views, billmgr_inflight(sp->bm),
                                   billmgr_has_room(sp->bm))) {
        struct sp_client *c = NULL;
        for (size_t k = 0; k < sp->nclients; k++) {
            struct sp_client *x = &sp->clients[(sp->rr + k) % sp->nclients];
            if (x->waiting.n) {
                c = x;
                sp->rr = (sp->rr + k + 1) % sp->nclients;
                break;
            }
        }
        if (!c)
            return;
        struct sp_job *j = c->waiting.head;
        struct billmgr_params p;
        struct store_link link;
        /* The task messages the forward applier had applied before this
         * view: their edits are in what the view reads. Read now, not when
         * the answer comes, since an edit committed meanwhile may have
         * landed after the view read the task; on a store error the value
         * from the list, older and so never too new, stays. */
        if (store_link_get(sp->st, c->cc->id, j->src_task, &link) == RT_OK && link.found)
            j->fwd_seq = link.last_seq;
        billmgr_params_init(&p);
        int bad = billmgr_params_addf(&p, "elid", "%" PRId64, j->dst_task);
        if (bad == 0)
            bad = billmgr_call(sp->bm, func, &p, sp_view_done, j);
        billmgr_params_release(&p);
        if (bad < 0) {
            /* The job stays first in line for the next tick. */
            log_warning("cannot queue the view of task %" PRId64 " of client \"%s\": the API "
                        "queue is full",
                        j->dst_task, c->cc->id);
            return;
        }
        sp_list_unlink(j);
        j->state = JOB_VIEWING;
        sp_list_push_tail(&sp->viewing, j);
    }
}
