/*
 * store_links.c - the server side's links (store.h): each source task's
 * target task, the last forward seq applied, the reverse seqs and what was
 * last published back; and forgetting that for a resync.
 */
#include "store.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "fp.h"
#include "linkset.h"
#include "store_db.h"

/* Rows handled per batch by store_link_forget_state(). */
#define STORE_FORGET_BATCH 256

/* Copies a row of LINK_COLUMNS (store_schema.c) into out; -1 when a text
 * does not fit its field. */
static int store_link_columns(sqlite3_stmt *s, struct store_link *out)
{
    memset(out, 0, sizeof *out);
    out->found = true;
    if (store_db_column_text(s, 0, out->client, sizeof out->client) < 0)
        return -1;
    out->src_task = sqlite3_column_int64(s, 1);
    out->dst_task = sqlite3_column_int64(s, 2);
    out->last_seq = store_db_column_u64(s, 3);
    out->rev_seq = store_db_column_u64(s, 4);
    if (store_db_column_text(s, 5, out->rev_fp, sizeof out->rev_fp) < 0)
        return -1;
    out->notes_sent = store_db_column_u64(s, 6);
    out->updated_ms = sqlite3_column_int64(s, 7);
    if (store_db_column_text(s, 8, out->applied, sizeof out->applied) < 0)
        return -1;
    return 0;
}

/* store_db_row_fn of the queries that return LINK_COLUMNS. */
static rt_status store_link_read(struct store *st, sqlite3_stmt *s, void *row)
{
    if (store_link_columns(s, row) < 0)
        return store_db_reject(st, "a stored link holds a value longer than its cap");
    return RT_OK;
}

/* store_db_get_fn of the link getters. */
static rt_status store_link_get_read(struct store *st, sqlite3_stmt *s, int64_t task, void *row)
{
    (void)task; /* the link's row holds it */
    return store_link_read(st, s, row);
}

rt_status store_link_get(struct store *st, const char *client, int64_t src_task,
                         struct store_link *out)
{
    return store_db_get(st, ST_LINK_GET, client, src_task, "reading a link", store_link_get_read,
                        out, sizeof *out);
}

rt_status store_link_by_dst(struct store *st, const char *client, int64_t dst_task,
                            struct store_link *out)
{
    return store_db_get(st, ST_LINK_BY_DST, client, dst_task, "reading a link", store_link_get_read,
                        out, sizeof *out);
}

/* RT_OK for a link whose every field store_link_put() can store. */
static rt_status store_link_check(struct store *st, const struct store_link *link)
{
    rt_status r = store_db_check_client(st, link->client);
    if (r == RT_OK)
        r = store_db_check_u64(st, link->last_seq, "last_seq");
    if (r == RT_OK)
        r = store_db_check_u64(st, link->rev_seq, "rev_seq");
    if (r == RT_OK)
        r = store_db_check_u64(st, link->notes_sent, "notes_sent");
    if (r == RT_OK && strnlen(link->rev_fp, sizeof link->rev_fp) == sizeof link->rev_fp)
        r = store_db_reject(st, "rev_fp is not terminated within %d bytes", STORE_FP_MAX);
    if (r == RT_OK && strnlen(link->applied, sizeof link->applied) == sizeof link->applied)
        r = store_db_reject(st, "applied is not terminated within %d bytes", STORE_APPLIED_MAX);
    return r;
}

rt_status store_link_put(struct store *st, const struct store_link *link)
{
    rt_status r = store_link_check(st, link);
    if (r != RT_OK)
        return r;
    sqlite3_stmt *s = store_db_task_stmt(st, ST_LINK_PUT, link->client, link->src_task);
    store_db_bind_i64(s, 3, link->dst_task);
    store_db_bind_u64(s, 4, link->last_seq);
    store_db_bind_u64(s, 5, link->rev_seq);
    store_db_bind_text(s, 6, link->rev_fp);
    store_db_bind_u64(s, 7, link->notes_sent);
    store_db_bind_i64(s, 8, link->updated_ms);
    store_db_bind_text(s, 9, link->applied);
    return store_db_run(st, s, "storing a link");
}

rt_status store_link_next_rev_seq(struct store *st, const char *client, int64_t src_task,
                                  uint64_t *seq)
{
    bool found = false;
    rt_status r = store_db_next_seq(st, ST_LINK_NEXT_REV, client, src_task,
                                    "allocating a reverse seq", &found, seq);
    if (r == RT_OK && !found)
        return store_db_reject(st, "no link for client \"%s\" task %" PRId64, client, src_task);
    return r;
}

rt_status store_link_count(struct store *st, const char *client, uint64_t *n)
{
    *n = 0;
    sqlite3_stmt *s;
    if (client) {
        rt_status r = store_db_check_client(st, client);
        if (r != RT_OK)
            return r;
        s = store_db_stmt(st, ST_LINK_COUNT);
        store_db_bind_text(s, 1, client);
    } else {
        s = store_db_stmt(st, ST_LINK_COUNT_ALL);
    }
    sqlite3_int64 c = 0;
    rt_status r = store_db_run_ints(st, s, "counting links", NULL, &c, NULL);
    if (r == RT_OK && c > 0)
        *n = (uint64_t)c;
    return r;
}

rt_status store_link_list(struct store *st, const char *client, int64_t after_src_task, size_t max,
                          struct store_link *out, size_t *n)
{
    *n = 0;
    rt_status r = store_db_check_client(st, client);
    if (r != RT_OK || max == 0)
        return r;
    sqlite3_stmt *s = store_db_task_stmt(st, ST_LINK_LIST, client, after_src_task);
    store_db_bind_limit(s, 3, max);
    return store_db_rows(st, s, "listing links", store_link_read, out, sizeof *out, max, n);
}

/* ---- resync ------------------------------------------------------------ */

struct store_forget_row {
    char client[STORE_CLIENT_MAX + 1];
    int64_t src_task;
    char applied[STORE_APPLIED_MAX + 1];
};

/* store_db_row_fn of store_link_forget_batch(). */
static rt_status store_link_forget_read(struct store *st, sqlite3_stmt *s, void *out)
{
    struct store_forget_row *row = out;
    if (store_db_column_text(s, 0, row->client, sizeof row->client) < 0 ||
        store_db_column_text(s, 2, row->applied, sizeof row->applied) < 0)
        return store_db_reject(st, "a stored link holds a value longer than its cap");
    row->src_task = sqlite3_column_int64(s, 1);
    return RT_OK;
}

/* Reads the next batch of links that still hold a "state" key. */
static rt_status store_link_forget_batch(struct store *st, const char *client, int64_t src_task,
                                         struct store_forget_row *rows, size_t *n)
{
    sqlite3_stmt *s = store_db_stmt(st, ST_LINK_STATE_BATCH);
    store_db_bind_text(s, 1, client);
    store_db_bind_i64(s, 2, src_task);
    store_db_bind_limit(s, 3, STORE_FORGET_BATCH);
    return store_db_rows(st, s, "listing links to forget", store_link_forget_read, rows,
                         sizeof *rows, STORE_FORGET_BATCH, n);
}

/* Removes the "state" key from the applied set of every link of a batch. */
static rt_status store_link_forget_rows(struct store *st, struct store_forget_row *rows, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (fp_set_del(rows[i].applied, LINKSET_LINK_STATE) == 0) {
            /* The query and the parser disagree about the set: stop
             * rather than loop on the same row. */
            return store_db_reject(st, "cannot remove the state key of link (%s, %" PRId64 ")",
                                   rows[i].client, rows[i].src_task);
        }
        sqlite3_stmt *s =
            store_db_task_stmt(st, ST_LINK_SET_APPLIED, rows[i].client, rows[i].src_task);
        store_db_bind_text(s, 3, rows[i].applied);
        rt_status r = store_db_run(st, s, "forgetting published state");
        if (r != RT_OK)
            return r;
    }
    return RT_OK;
}

/* The work of store_link_forget_state() inside its transaction: rev_fp
 * cleared in one statement, then the "state" keys batch by batch until no
 * link holds one. */
static rt_status store_link_forget_all(struct store *st, const char *client, int64_t src_task,
                                       struct store_forget_row *rows, uint64_t *touched)
{
    sqlite3_stmt *s = store_db_task_stmt(st, ST_LINK_FORGET_FP, client, src_task);
    rt_status r = store_db_run_changes(st, s, "forgetting published state", touched);
    if (r != RT_OK)
        return r;
    for (;;) {
        size_t got = 0;
        if ((r = store_link_forget_batch(st, client, src_task, rows, &got)) != RT_OK)
            return r;
        if (got == 0)
            return RT_OK;
        if ((r = store_link_forget_rows(st, rows, got)) != RT_OK)
            return r;
    }
}

rt_status store_link_forget_state(struct store *st, const char *client, int64_t src_task,
                                  uint64_t *n)
{
    if (n)
        *n = 0;
    rt_status r = client ? store_db_check_client(st, client) : RT_OK;
    if (r != RT_OK)
        return r;
    struct store_forget_row *rows = malloc(STORE_FORGET_BATCH * sizeof(*rows));
    if (!rows)
        return store_db_reject(st, "out of memory forgetting published state");
    bool own_txn = !st->in_txn;
    if (own_txn && (r = store_begin(st)) != RT_OK)
        goto free_rows;
    uint64_t touched = 0;
    if ((r = store_link_forget_all(st, client, src_task, rows, &touched)) != RT_OK)
        goto rollback;
    if (own_txn && (r = store_commit(st)) != RT_OK)
        goto free_rows;
    if (n)
        *n = touched;
    free(rows);
    return RT_OK;

rollback:
    if (own_txn)
        store_rollback(st);
free_rows:
    free(rows);
    return r;
}
