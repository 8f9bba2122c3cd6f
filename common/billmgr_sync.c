/*
 * billmgr_sync.c - the BILLmanager client's synchronous helpers, for the
 * command line and simple callers: one call waited for in a private poll
 * loop (the same machinery as the owner's loop), and a whole list read
 * page by page.
 */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>

#include "billmgr_int.h"

/* billmgr_list_sync gives up after this many rows, so that a server that
 * ignores p_num and never reports p_elems cannot keep it paging forever. */
#define BILLMGR_LIST_MAX_ROWS 10000000L

/* The private poll loop of the sync helpers never sleeps longer than this,
 * so that it notices a deadline curl failed to announce. */
#define BILLMGR_SYNC_MAX_WAIT_MS 1000

struct billmgr_sync {
    int done;
    rt_status status;
    struct billmgr_error err;
    json_t *doc;
};

static void billmgr_sync_cb(void *arg, const struct billmgr_reply *r)
{
    struct billmgr_sync *s = arg;
    s->done = 1;
    s->status = r->status;
    billmgr_copy_text(s->err.type, sizeof(s->err.type), r->err_type);
    billmgr_copy_text(s->err.object, sizeof(s->err.object), r->err_object);
    billmgr_copy_text(s->err.message, sizeof(s->err.message), r->message);
    s->doc = r->doc ? json_incref(r->doc) : NULL;
}

/* One round of the private poll loop. Returns -1 when memory ran out. */
static int billmgr_sync_round(struct billmgr *bm, struct pollfd **fds, size_t *cap)
{
    size_t n = billmgr_pollfds(bm, *fds, *cap);
    if (n > *cap) {
        struct pollfd *p = realloc(*fds, n * sizeof(*p));
        if (!p)
            return -1;
        *fds = p;
        *cap = n;
        n = billmgr_pollfds(bm, *fds, *cap);
    }
    int timeout = billmgr_timeout_ms(bm);
    if (timeout < 0 || timeout > BILLMGR_SYNC_MAX_WAIT_MS)
        timeout = BILLMGR_SYNC_MAX_WAIT_MS;
    int rc = poll(*fds, (nfds_t)n, timeout);
    if (rc < 0 && errno != EINTR)
        return -1;
    billmgr_handle(bm, *fds, rc > 0 ? n : 0);
    return 0;
}

rt_status billmgr_call_sync(struct billmgr *bm, const char *func,
                            const struct billmgr_params *params, json_t **doc_out,
                            struct billmgr_error *err)
{
    struct billmgr_sync s = {0};
    struct billmgr_error scratch;
    struct pollfd *fds = NULL;
    size_t cap = 0;

    if (!err)
        err = &scratch;
    if (doc_out)
        *doc_out = NULL;
    billmgr_clear_error(err);
    if (billmgr_call(bm, func, params, billmgr_sync_cb, &s) < 0) {
        billmgr_set_error(err, "transport", "", "cannot queue the call of \"%s\"",
                          func ? func : "");
        return RT_RETRY;
    }
    cap = (size_t)bm->max_inflight + 4;
    fds = calloc(cap, sizeof(*fds));
    if (!fds)
        cap = 0;
    while (!s.done) {
        if (billmgr_sync_round(bm, &fds, &cap) < 0) {
            /* The call is still queued with our stack frame as its arg:
             * it must not outlive this function, so wait without the
             * array (poll on no fds is a sleep until curl's deadline). */
            struct pollfd none;
            int timeout = billmgr_timeout_ms(bm);
            poll(&none, 0, timeout < 0 || timeout > 100 ? 100 : timeout);
            billmgr_handle(bm, NULL, 0);
        }
    }
    free(fds);
    *err = s.err;
    if (doc_out)
        *doc_out = s.doc;
    else
        json_decref(s.doc);
    return s.status;
}

/* The parameters of one page of a list: the filter, then p_cnt and
 * p_num. Returns 0, or non-zero when a parameter could not be added (p
 * must be released either way). */
static int billmgr_list_page_params(struct billmgr_params *p, const struct billmgr_params *filter,
                                    int page_size, long page)
{
    int bad = 0;
    billmgr_params_init(p);
    for (size_t i = 0; filter && i < filter->n; i++)
        bad |= billmgr_params_add(p, filter->v[i].key, filter->v[i].value);
    bad |= billmgr_params_addf(p, "p_cnt", "%d", page_size);
    bad |= billmgr_params_addf(p, "p_num", "%ld", page);
    return bad;
}

/* Hands each row of a page's doc.elem to each() until it asks to stop
 * (*stop = 1). Returns the rows handed. */
static size_t billmgr_list_rows(json_t *doc, billmgr_elem_fn each, void *arg, int *stop)
{
    json_t *elems = json_object_get(doc, "elem");
    size_t rows = 0;
    *stop = 0;
    if (json_is_array(elems)) {
        size_t i;
        json_t *e;
        json_array_foreach(elems, i, e)
        {
            rows++;
            if (each(arg, e)) {
                *stop = 1;
                break;
            }
        }
    } else if (json_is_object(elems)) {
        /* Some encoders give a one-row list as the row itself. */
        rows = 1;
        *stop = each(arg, elems) != 0;
    }
    return rows;
}

rt_status billmgr_list_sync(struct billmgr *bm, const char *func,
                            const struct billmgr_params *filter, billmgr_elem_fn each, void *arg,
                            struct billmgr_error *err)
{
    struct billmgr_error scratch;
    long seen = 0;

    if (!err)
        err = &scratch;
    billmgr_clear_error(err);
    for (long page = 1;; page++) {
        struct billmgr_params p;
        json_t *doc = NULL;
        if (billmgr_list_page_params(&p, filter, bm->page_size, page)) {
            billmgr_params_release(&p);
            billmgr_set_error(err, "transport", "", "cannot build the list call of \"%s\"", func);
            return RT_RETRY;
        }
        rt_status st = billmgr_call_sync(bm, func, &p, &doc, err);
        billmgr_params_release(&p);
        if (st != RT_OK)
            return st;

        int stop;
        size_t rows = billmgr_list_rows(doc, each, arg, &stop);
        long total;
        int have_total = billmgr_long(doc, "p_elems", &total) == 0;
        json_decref(doc);
        seen += (long)rows;
        if (stop || rows == 0)
            return RT_OK;
        /* With p_elems known it decides, since a server may cap p_cnt below
         * what was asked; without it a short page is the last one. */
        if (have_total ? seen >= total : rows < (size_t)bm->page_size)
            return RT_OK;
        if (seen >= BILLMGR_LIST_MAX_ROWS) {
            /* A server that pages forever misbehaves like one whose answer
             * is too large: retried, see the top of billmgr.h. */
            billmgr_set_error(err, "toolarge", "", "list \"%s\" passed %ld rows", func,
                              BILLMGR_LIST_MAX_ROWS);
            return RT_RETRY;
        }
    }
}
