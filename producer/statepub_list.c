#include "statepub_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "linkset.h"
#include "log.h"

/* 1 when the forward applier applied a task message the last state
 * published had not seen (fwd_seq is the link's last_seq now): that state
 * may have reached the client after the client confirmed the message, and
 * the client drops the status of such a state (consumer/reverse.c), so a
 * target status change would wait for the next one to reach the source.
 * The state is then published again, with the newer fwd_seq. A forward
 * apply that edited the target moved its `updated`, so the view was due
 * anyway and this costs a message; one that changed nothing costs a view
 * too. A link with no record of it (never published, or published by an
 * older version) says 0. */
int sp_fwd_moved(const struct store_link *link, uint64_t fwd_seq)
{
    int64_t pub_fwd = fp_set_get_int(link->applied, LINKSET_LINK_PUB_FWD, -1);
    return pub_fwd >= 0 && fwd_seq > (uint64_t)pub_fwd;
}
/* Takes one listed row (pager_row_fn) as a job when it is the target of
 * a link of the client and changed since the last cycle. Returns -1 when
 * the store or memory failed, or the performer cannot be read (logged):
 * a row that cannot be read may be a linked task whose state changed, so
 * the cycle fails (and is retried) rather than skip it. */
static int sp_page_row(void *arg, json_t *e, long id)
{
    struct sp_client *c = arg;
    struct statepub *sp = c->sp;
    const char *col_updated = sp->cfg->billmanager.api.field_updated;
    const char *col_performer = sp->cfg->billmanager.api.field_performer;
    struct store_link link;
    char lf[FP_HEX_LEN + 1];
    const char *pname;

    if (store_link_by_dst(sp->st, c->cc->id, id, &link) != RT_OK) {
        log_warning("cannot read the link of task %ld of client \"%s\": %s", id, c->cc->id,
                    store_strerror(sp->st));
        return -1;
    }
    if (!link.found)
        return 0;
    statepub_row_fp(sp->cfg, e, lf);
    const char *updated = billmgr_text(e, col_updated);
    int blind = !updated || !*updated;
    if (blind)
        c->cyc_blind = 1;
    else if (strcmp(lf, link.rev_fp) == 0 && !sp_fwd_moved(&link, link.last_seq))
        return 0;
    if (billmgr_text_field(e, col_performer, &pname) < 0) {
        log_warning("cannot list department %ld of client \"%s\" (page %ld): the %s of "
                    "task %ld is not text",
                    c->cc->department, c->cc->id, c->pager.page, col_performer, id);
        return -1;
    }
    struct sp_job *j = sp_job_new(c, JOB_STATE);
    if (j)
        j->pname = strdup(pname ? pname : "");
    if (!j || !j->pname) {
        sp_job_free(j);
        log_warning("cannot take task %ld of client \"%s\": out of memory", id, c->cc->id);
        return -1;
    }
    j->src_task = link.src_task;
    j->dst_task = id;
    j->fwd_seq = link.last_seq;
    memcpy(j->lf, lf, sizeof j->lf);
    j->state = JOB_WAITING;
    sp_list_push_tail(&c->waiting, j);
    c->jobs++;
    return 0;
}

/* Takes the changed rows of one page as jobs. Returns the number of rows
 * on the page, or -1 when a row cannot be read, or the store or memory
 * failed (logged). */
static long sp_page_rows(struct sp_client *c, json_t *doc)
{
    const char *bad = "";
    long rows = pager_rows(doc, sp_page_row, c, &bad);
    if (rows == PAGER_NOMEM)
        log_warning("cannot read the list of client \"%s\": out of memory", c->cc->id);
    else if (rows == PAGER_BAD_ROW)
        log_warning("cannot list department %ld of client \"%s\" (page %ld): it has a row %s",
                    c->cc->department, c->cc->id, c->pager.page, bad);
    return rows < 0 ? -1 : rows;
}

/* The list is over, or failed: the cycle ends once its jobs are done. */
static void sp_list_end(struct sp_client *c, int failed)
{
    c->listing = 0;
    if (failed)
        c->failed = 1;
    sp_cycle_maybe_end(c);
}

/* The answer of one page of a client's department (pager_page_fn). */
static void sp_page_done(void *arg, const struct billmgr_reply *rep)
{
    struct sp_client *c = arg;
    struct statepub *sp = c->sp;

    if (sp->draining) {
        sp_list_end(c, 0);
        return;
    }
    if (rep->status != RT_OK) {
        log_warning("cannot list department %ld of client \"%s\" (page %ld): %s: %s",
                    c->cc->department, c->cc->id, c->pager.page, rep->err_type, rep->message);
        sp_list_end(c, 1);
        goto pump;
    }
    long rows = sp_page_rows(c, rep->doc);
    if (rows < 0) {
        sp_list_end(c, 1);
        goto pump;
    }
    sp->stats.rows_seen += (uint64_t)rows;
    switch (pager_next(&c->pager, rep->doc, rows)) {
    case PAGER_MORE:
        /* The next page waits while a page's worth of rows waits for
         * views, so that a cycle holds at most about two pages. */
        if (c->waiting.n < (size_t)sp->page_size)
            sp_page_request(c);
        else
            c->list_wait = 1;
        break;
    case PAGER_CAPPED:
        log_warning("list of department %ld of client \"%s\" stopped after %ld pages",
                    c->cc->department, c->cc->id, c->pager.page);
        sp_list_end(c, 0);
        break;
    case PAGER_LAST:
    default: sp_list_end(c, 0); break;
    }
pump:
    sp_pump(sp);
}

/* Asks for the current page of the client's department. */
void sp_page_request(struct sp_client *c)
{
    c->list_wait = 0;
    if (pager_request(&c->pager, c->sp->bm) < 0) {
        log_warning("cannot list department %ld of client \"%s\": the API queue is full",
                    c->cc->department, c->cc->id);
        sp_list_end(c, 1);
    }
}

void sp_list_init(struct sp_client *c)
{
    struct statepub *sp = c->sp;
    pager_init(&c->pager, &sp->cfg->billmanager.api, sp->page_size, STATEPUB_MAX_PAGES,
               sp_page_done, c);
}
