/*
 * pager.h - one department's task list, page by page, without blocking:
 * what the relay's reconciliation and the state publisher's cycles share.
 *
 * The owner embeds a struct pager and drives it. pager_start() picks a
 * department and goes back to its first page; pager_request() asks for
 * the current page (api.func_task with filter=on, <field_department>=D,
 * p_cnt = page_size, p_num = page) through the owner's billmgr, and the answer
 * comes to the owner's page callback inside billmgr_handle(). There the
 * owner hands the answer to pager_rows(), which gives each row to a row
 * callback with its id and stops at the first row whose id cannot be read
 * (skipped, it could be the very task whose change was missed), and then
 * asks pager_next() whether the department has another page. The owner
 * decides what a failure means and says it in its own words: the pager
 * logs nothing.
 *
 * The last page: with p_elems in the answer, the one after which the rows
 * read reach it (a server may cap p_cnt below what was asked); without
 * it, a page shorter than page_size; and always a page with no rows. A
 * department also ends after max_pages pages, since a server that ignores
 * p_num would otherwise keep it paging forever (PAGER_CAPPED).
 *
 * A page call points at the pager: billmgr_free() (which cancels calls
 * without their callbacks) must run before the memory holding the pager
 * is freed, which is the teardown order of the relay and the publisher.
 * Not thread-safe; everything runs on the owner's loop.
 */
#ifndef RT_PAGER_H
#define RT_PAGER_H

#include <stddef.h>

#include <jansson.h>

#include "billmgr.h"
#include "config.h"

/* pager_rows(): the row callback stopped the page (it said why). */
#define PAGER_STOPPED (-1)
/* pager_rows(): a row whose id cannot be read; *bad says how. */
#define PAGER_BAD_ROW (-2)
/* pager_rows(): memory ran out. */
#define PAGER_NOMEM (-3)

/* The answer of a page call, borrowed for the callback's duration. The
 * pager no longer has a call in flight when it runs. */
typedef void (*pager_page_fn)(void *arg, const struct billmgr_reply *rep);

/* One row of a page (borrowed) and its id, > 0. Returns 0 to go on, -1 to
 * stop the page (pager_rows then returns PAGER_STOPPED). */
typedef int (*pager_row_fn)(void *arg, json_t *row, long id);

/* What pager_next() found. */
enum pager_next {
    PAGER_MORE = 0, /* another page: page moved on, pager_request() asks for it */
    PAGER_LAST,     /* that was the department's last page */
    PAGER_CAPPED,   /* not the last, but max_pages were read: the owner stops */
};

/* Embedded in its owner; the fields are the owner's to read. */
struct pager {
    const struct config_billmgr_api *api; /* borrowed: func_task, field_department */
    long page_size;
    long max_pages;
    pager_page_fn on_page;
    void *arg;
    long department; /* the department listed */
    long page;       /* the page asked for or answered last, from 1 */
    long seen;       /* rows of the department read so far */
    int call;        /* 1 while a page call is in flight */
};

/* Sets up *pg for pages of page_size rows (p_cnt), at most max_pages per
 * department, answered to on_page(arg, ...). api is borrowed and must
 * outlive it. Asks for nothing. */
void pager_init(struct pager *pg, const struct config_billmgr_api *api, long page_size,
                long max_pages, pager_page_fn on_page, void *arg);

/* Lists department from its first page on: page 1, no row read. Asks for
 * nothing; pager_request() does. */
void pager_start(struct pager *pg, long department);

/* Asks bm for the current page. Returns 0 with pg->call set, or -1 when
 * the call could not be queued (the API queue is full; nothing is in
 * flight and no callback will come). */
int pager_request(struct pager *pg, struct billmgr *bm);

/* 1 when doc, an answered page, holds rows to read (its "elem" is a list,
 * or one row given as itself), 0 when it holds none: for an owner that
 * opens a store transaction only around rows. */
int pager_has_rows(json_t *doc);

/* Gives the rows of doc, an answered page, to row(arg, row, id) in order.
 * Returns the number of rows read (0 when there are none), or:
 * PAGER_BAD_ROW with *bad set ("without an id", "whose id is not text",
 * "whose id is not a task id") at a row whose id cannot be read, before
 * it is given; PAGER_STOPPED when row() returned -1; PAGER_NOMEM. Rows
 * given before a failure stay given. */
long pager_rows(json_t *doc, pager_row_fn row, void *arg, const char **bad);

/* After the rows of the current page (rows of them, read from doc):
 * counts them and says whether another page follows; on PAGER_MORE the
 * current page becomes the next one. */
enum pager_next pager_next(struct pager *pg, json_t *doc, long rows);

#endif
