#include "pager.h"

/* The list column holding a row's id [doc]. */
#define PAGER_COLUMN_ID "id"

void pager_init(struct pager *pg, const struct config_billmgr_api *api, long page_size,
                long max_pages, pager_page_fn on_page, void *arg)
{
    pg->api = api;
    pg->page_size = page_size;
    pg->max_pages = max_pages;
    pg->on_page = on_page;
    pg->arg = arg;
    pg->department = 0;
    pg->page = 1;
    pg->seen = 0;
    pg->call = 0;
}

void pager_start(struct pager *pg, long department)
{
    pg->department = department;
    pg->page = 1;
    pg->seen = 0;
}

/* The answer of a page call: the call is over before the owner hears of
 * it, so that the owner may ask for the next page from its callback. */
static void pager_answered(void *arg, const struct billmgr_reply *rep)
{
    struct pager *pg = arg;
    pg->call = 0;
    pg->on_page(pg->arg, rep);
}

int pager_request(struct pager *pg, struct billmgr *bm)
{
    struct billmgr_params p;
    int bad = 0;

    billmgr_params_init(&p);
    bad |= billmgr_params_add(&p, "filter", "on");
    bad |= billmgr_params_addf(&p, pg->api->field_department, "%ld", pg->department);
    bad |= billmgr_params_addf(&p, "p_cnt", "%ld", pg->page_size);
    bad |= billmgr_params_addf(&p, "p_num", "%ld", pg->page);
    if (bad == 0)
        bad = billmgr_call(bm, pg->api->func_task, &p, pager_answered, pg);
    billmgr_params_release(&p);
    if (bad < 0)
        return -1;
    pg->call = 1;
    return 0;
}

int pager_has_rows(json_t *doc)
{
    json_t *elems = json_object_get(doc, "elem");
    return json_is_array(elems) || json_is_object(elems);
}

long pager_rows(json_t *doc, pager_row_fn row, void *arg, const char **bad)
{
    json_t *elems = json_object_get(doc, "elem");
    long rows = 0, out;
    size_t i;
    json_t *e;

    if (json_is_object(elems)) {
        /* Some encoders give a one-row list as the row itself. */
        json_t *one = json_array();
        if (!one || json_array_append(one, elems) < 0) {
            json_decref(one);
            return PAGER_NOMEM;
        }
        elems = one;
    } else if (json_is_array(elems)) {
        json_incref(elems);
    } else {
        return 0;
    }
    json_array_foreach(elems, i, e)
    {
        const char *text;
        long id;
        rows++;
        int got = billmgr_text_field(e, PAGER_COLUMN_ID, &text);
        if (got <= 0 || billmgr_long(e, PAGER_COLUMN_ID, &id) < 0 || id <= 0) {
            *bad = got < 0    ? "whose id is not text"
                   : got == 0 ? "without an id"
                              : "whose id is not a task id";
            out = PAGER_BAD_ROW;
            goto release_rows;
        }
        if (row(arg, e, id) < 0) {
            out = PAGER_STOPPED;
            goto release_rows;
        }
    }
    out = rows;
release_rows:
    json_decref(elems);
    return out;
}

enum pager_next pager_next(struct pager *pg, json_t *doc, long rows)
{
    long total = 0;

    pg->seen += rows;
    int have_total = billmgr_long(doc, "p_elems", &total) == 0;
    /* With p_elems known it decides, since a server may cap p_cnt below
     * what was asked; without it a short page is the last one. */
    int last = rows == 0 || (have_total ? pg->seen >= total : rows < pg->page_size);
    if (last)
        return PAGER_LAST;
    if (pg->page >= pg->max_pages)
        return PAGER_CAPPED;
    pg->page++;
    return PAGER_MORE;
}
