/*
 * forward_recover.c - an interrupted create (forward.h, "Interrupted
 * creates"): the link is written with dst_task 0 before the create call,
 * holding the highest target id known for the client then. A delivery
 * that finds such a link lists the department and views only the unlinked
 * tasks above that id (task ids grow), looking for the origin block; the
 * task found is adopted, and none found is created. A create whose
 * failure proves that nothing was made marks the link so, and the next
 * delivery creates at once: in normal operation nothing searches.
 */
#include "forward.h"

#include <inttypes.h>
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

/* 1 when the failed create's answer proves that no task was made. An
 * error document is BILLmanager refusing the call (its transaction rolled
 * back). HTTP 503 and 429 are a server or proxy turning the request away
 * before the application ran it. Everything else may come after the task
 * was made: a timeout or a reset (curl's "transport" does not say whether
 * the request was sent), another 5xx (a proxy's 502/504 once the backend
 * had it, a 500 from a crash after the insert), an unreadable or too
 * large answer; then the search is the only way to know. */
int forward_create_not_made(const struct billmgr_reply *r)
{
    if (r->status == RT_REJECT)
        return strcmp(r->err_type, "toolarge") != 0;
    return strcmp(r->err_type, "http") == 0 && (r->http_code == 503 || r->http_code == 429);
}

/* A create surely made no task (it never left, or the answer proves it was
 * not done): the link's intent says so, and the next delivery creates at
 * once instead of searching the department. Failing to record that only
 * costs that search. */
void fwd_slot_no_create(struct forward_slot *s)
{
    if (fwd_link_write(s, FWD_LINK_NO_CREATE) != RT_OK)
        log_warning("cannot record that the create of task %" PRId64 " of client \"%s\" made "
                    "nothing (its next delivery searches the department): %s",
                    s->msg.task, s->client->id, store_strerror(s->f->st));
}

/* ---- the search ---------------------------------------------------------- */

void fwd_recover_begin(struct forward_slot *s)
{
    /* dst_task 0: a create was started and never committed; it may have
     * made the task. Only a task made after the intent can be it, and its
     * id is above every id known then: listing the department costs its
     * pages, but only those rows are viewed. */
    s->after = fp_set_get_int(s->link.applied, LINKSET_LINK_AFTER, 0);
    s->page = 1;
    s->seen = 0;
    s->list_done = 0;
    fwd_slot_list_page(s);
}

void fwd_slot_list_page(struct forward_slot *s)
{
    const struct config_billmgr_api *api = s->f->api;
    struct billmgr_params p;
    int ok = 1;

    billmgr_params_init(&p);
    ok &= billmgr_params_add(&p, "filter", "on") == 0;
    ok &= billmgr_params_addf(&p, api->field_department, "%ld", s->client->department) == 0;
    ok &= billmgr_params_addf(&p, "p_cnt", "%d", api->page_size) == 0;
    ok &= billmgr_params_addf(&p, "p_num", "%ld", s->page) == 0;
    fwd_slot_call(s, FS_RECOVER_LIST, api->func_task, &p, ok);
}

/* Views the next unlinked task of the page, lists the next page, or, when
 * the department is done, creates the task. */
static void fwd_recover_next(struct forward_slot *s)
{
    if (s->icand < s->ncand) {
        fwd_slot_view(s, FS_RECOVER_VIEW, s->cand[s->icand++]);
        return;
    }
    if (!s->list_done) {
        s->page++;
        fwd_slot_list_page(s);
        return;
    }
    log_info("no target task found for the interrupted create of task %" PRId64 " of client "
             "\"%s\", creating it",
             s->msg.task, s->client->id);
    fwd_slot_create(s);
}

/* Keeps the ids of a page's rows that no link of this client points to. */
static void fwd_recover_list_read(struct forward_slot *s, json_t *doc)
{
    json_t *elems = json_object_get(doc, "elem");
    size_t rows = json_is_array(elems) ? json_array_size(elems) : json_is_object(elems) ? 1 : 0;
    long total;
    int have_total = billmgr_long(doc, "p_elems", &total) == 0;

    free(s->cand);
    s->cand = rows ? calloc(rows, sizeof(*s->cand)) : NULL;
    s->ncand = s->icand = 0;
    if (rows && !s->cand) {
        fwd_slot_fail(s, RT_RETRY, FORWARD_DEAD_NONE, "out of memory listing the department");
        return;
    }
    for (size_t i = 0; i < rows; i++) {
        json_t *e = json_is_array(elems) ? json_array_get(elems, i) : elems;
        struct store_link other;
        const char *text;
        long id;
        /* A row that cannot be read may be the task the create made: a
         * search that skipped it would make the task a second time. */
        int got = billmgr_text_field(e, "id", &text);
        if (got <= 0 || billmgr_long(e, "id", &id) < 0 || id <= 0) {
            fwd_slot_fail(s, RT_RETRY, FORWARD_DEAD_NONE,
                          "api: the list of department %ld has a row %s", s->client->department,
                          got < 0    ? "whose id is not text"
                          : got == 0 ? "without an id"
                                     : "whose id is not a task id");
            return;
        }
        if (id <= s->after)
            continue;
        rt_status st = store_link_by_dst(s->f->st, s->client->id, id, &other);
        if (st != RT_OK) {
            fwd_slot_store_failed(s, st, FR_LIST); /* the same page again */
            return;
        }
        if (!other.found)
            s->cand[s->ncand++] = id;
    }
    s->seen += (long)rows;
    s->list_done =
        rows == 0 || (have_total ? s->seen >= total : rows < (size_t)s->f->api->page_size);
    if (!s->list_done && s->seen >= FORWARD_RECOVER_MAX_ROWS) {
        log_warning("department %ld passed %ld rows while looking for task %" PRId64
                    " of client \"%s\"; creating it",
                    s->client->department, FORWARD_RECOVER_MAX_ROWS, s->msg.task, s->client->id);
        s->list_done = 1;
    }
    fwd_recover_next(s);
}

/* A candidate viewed: it is ours when its note holds our origin block. A
 * view that cannot tell (not the candidate's, or fields that are not
 * text) is retried: taken as "not ours", it would make the task again. */
static void fwd_recover_view_read(struct forward_slot *s, json_t *doc)
{
    const struct config_billmgr_api *api = s->f->api;
    enum { V_NOTE, V_NAME, V_TYPE, V_DEADLINE, V_STATUS, V_N };
    const char *const fields[V_N] = {api->field_note, api->field_name, api->field_type,
                                     api->field_deadline, api->field_status};
    const char *v[V_N] = {NULL};
    int64_t id = s->cand[s->icand - 1];
    long status = 0;
    char why[128];

    if (applier_view_read(doc, id, fields, v, V_N, why, sizeof(why)) < 0) {
        fwd_slot_fail(s, RT_RETRY, FORWARD_DEAD_NONE,
                      "api: the view of task %" PRId64 " of department %ld %s", id,
                      s->client->department, why);
        return;
    }
    if (!notes_has_origin(v[V_NOTE], s->origin)) {
        fwd_recover_next(s);
        return;
    }
    billmgr_long(doc, api->field_status, &status);
    s->link.dst_task = id;
    forward_seen_dst(s->f, s->client, s->link.dst_task);
    if (forward_adopt_applied(v[V_NAME], v[V_TYPE], v[V_DEADLINE], status, v[V_NOTE], s->origin,
                              &s->msg, s->link.applied, sizeof(s->link.applied)) < 0)
        s->link.applied[0] = '\0'; /* cannot happen with the fixed keys: resend all */
    fwd_slot_adopt(s);
}

void fwd_slot_adopt(struct forward_slot *s)
{
    rt_status st = fwd_link_write(s, FWD_LINK_ADOPT);
    if (st != RT_OK) {
        fwd_slot_store_failed(s, st, FR_ADOPT);
        return;
    }
    s->f->stats.adopted++;
    fwd_slot_journal(s, JOURNAL_APPLIED, "adopted: the task an interrupted create made");
    log_info("found target task %" PRId64 " of the interrupted create of task %" PRId64
             " of client \"%s\"",
             s->link.dst_task, s->msg.task, s->client->id);
    fwd_slot_update(s);
}

void fwd_recover_listed(struct forward_slot *s, const struct billmgr_reply *r)
{
    if (r->status != RT_OK) {
        fwd_slot_api_failed(s, "listing the department", r);
        return;
    }
    fwd_recover_list_read(s, r->doc);
}

void fwd_recover_viewed(struct forward_slot *s, const struct billmgr_reply *r)
{
    if (forward_missed_what(s->f, r) == FORWARD_MISSED_TASK) { /* deleted: not ours anyway */
        fwd_recover_next(s);
        return;
    }
    if (r->status != RT_OK) {
        fwd_slot_api_failed(s, "viewing a task of the department", r);
        return;
    }
    fwd_recover_view_read(s, r->doc);
}
