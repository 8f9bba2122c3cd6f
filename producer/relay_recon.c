#include "relay_int.h"

#include <inttypes.h>
#include <string.h>

#include "clock.h"
#include "log.h"
#include "store_journal.h"

/* 1 when a listed task needs an outbox event: nothing was recorded for it,
 * the list has no usable `updated` value, or it differs from the one
 * recorded when the task was last viewed. */
static int relay_recon_needs_event(const struct store_fwd *fwd, const char *updated)
{
    if (!updated || !*updated || strlen(updated) > STORE_UPDATED_MAX)
        return 1;
    return !fwd->found || strcmp(fwd->updated, updated) != 0;
}

/* How a reconciliation ended. */
enum relay_recon_end {
    RECON_DONE = 0, /* every department listed */
    RECON_FAILED,   /* an API or store error stopped it (logged) */
    RECON_STOPPED,  /* relay_drain stopped it */
};

static void relay_recon_run(struct relay *r);

static void relay_recon_finish(struct relay *r, enum relay_recon_end how)
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
struct relay_recon_batch {
    struct relay *r;
    int64_t now;
    uint64_t added;
};

/* One listed row (pager_row_fn), inside the page's transaction: an event
 * when the task needs one. -1 when the store failed. */
static int relay_recon_row(void *arg, json_t *row, long id)
{
    struct relay_recon_batch *pg = arg;
    struct relay *r = pg->r;
    const char *client = r->cfg->client.id;
    const char *col_updated = r->cfg->billmanager.api.field_updated;
    struct store_fwd fwd;

    if (store_fwd_get(r->st, client, id, &fwd) != RT_OK)
        return -1;
    const char *listed = billmgr_text(row, col_updated);
    if (!relay_recon_needs_event(&fwd, listed))
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
    struct relay_recon_batch pg = {.r = r, .now = clock_wall_ms(), .added = 0};
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

void relay_recon_start(struct relay *r)
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

void relay_recon_init(struct relay *r)
{
    pager_init(&r->recon, &r->cfg->billmanager.api, r->cfg->billmanager.api.page_size,
               RELAY_RECONCILE_MAX_PAGES, relay_recon_page, r);
}
