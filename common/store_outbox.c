/*
 * store_outbox.c - the client side's forward state (store.h): the outbox
 * of task events not yet published, and per source task the forward seqs
 * and what the broker last confirmed (the fwd table).
 */
#include "store.h"
#include "store_db.h"

#include <inttypes.h>
#include <string.h>

/* ---- outbox ------------------------------------------------------------ */

rt_status store_outbox_add(struct store *st, const char *client, int64_t task, int64_t now_ms)
{
    rt_status r = store_db_check_client(st, client);
    if (r != RT_OK)
        return r;
    sqlite3_stmt *s = store_db_task_stmt(st, ST_OUTBOX_ADD, client, task);
    store_db_bind_i64(s, 3, now_ms);
    return store_db_run(st, s, "recording an outbox event");
}

rt_status store_outbox_add_known(struct store *st, const char *client, int64_t now_ms, uint64_t *n)
{
    return store_db_client_write(st, ST_OUTBOX_ADD_KNOWN, client, now_ms,
                                 "recording events for every known task", n);
}

/* store_db_row_fn of store_outbox_due(). */
static rt_status store_outbox_read(struct store *st, sqlite3_stmt *s, void *row)
{
    struct store_event *e = row;
    memset(e, 0, sizeof *e);
    if (store_db_column_text(s, 0, e->client, sizeof e->client) < 0)
        return store_db_reject(st, "the outbox holds a client id longer than %d bytes",
                               STORE_CLIENT_MAX);
    e->task = sqlite3_column_int64(s, 1);
    e->gen = store_db_column_u64(s, 2);
    e->events = store_db_column_u64(s, 3);
    e->first_ms = sqlite3_column_int64(s, 4);
    e->last_ms = sqlite3_column_int64(s, 5);
    e->attempts = store_db_column_u64(s, 6);
    return RT_OK;
}

rt_status store_outbox_due(struct store *st, int64_t now_ms, size_t max, struct store_event *out,
                           size_t *n)
{
    *n = 0;
    if (max == 0)
        return RT_OK;
    sqlite3_stmt *s = store_db_stmt(st, ST_OUTBOX_DUE);
    store_db_bind_i64(s, 1, now_ms);
    store_db_bind_limit(s, 2, max);
    return store_db_rows(st, s, "reading the due outbox events", store_outbox_read, out,
                         sizeof *out, max, n);
}

rt_status store_outbox_done(struct store *st, const char *client, int64_t task, uint64_t gen,
                            bool *deleted)
{
    if (deleted)
        *deleted = false;
    rt_status r = store_db_check_client(st, client);
    if (r == RT_OK)
        r = store_db_check_u64(st, gen, "generation");
    if (r != RT_OK)
        return r;
    sqlite3_stmt *s = store_db_task_stmt(st, ST_OUTBOX_DONE, client, task);
    store_db_bind_u64(s, 3, gen);
    uint64_t changed = 0;
    r = store_db_run_changes(st, s, "deleting an outbox event", &changed);
    if (r == RT_OK && deleted)
        *deleted = changed > 0;
    return r;
}

/* Cuts an error text to STORE_ERROR_MAX bytes without splitting a UTF-8
 * sequence, so that the status command can show it as JSON. */
static size_t store_outbox_error_len(const char *error)
{
    size_t len = strnlen(error, STORE_ERROR_MAX + 1);
    if (len <= STORE_ERROR_MAX)
        return len;
    len = STORE_ERROR_MAX;
    while (len > 0 && ((unsigned char)error[len] & 0xC0) == 0x80)
        len--;
    return len;
}

rt_status store_outbox_defer(struct store *st, const char *client, int64_t task, int64_t next_ms,
                             const char *error)
{
    rt_status r = store_db_check_client(st, client);
    if (r != RT_OK)
        return r;
    sqlite3_stmt *s = store_db_task_stmt(st, ST_OUTBOX_DEFER, client, task);
    store_db_bind_i64(s, 3, next_ms);
    if (error)
        sqlite3_bind_text(s, 4, error, (int)store_outbox_error_len(error), SQLITE_STATIC);
    else
        sqlite3_bind_null(s, 4);
    return store_db_run(st, s, "deferring an outbox event");
}

rt_status store_outbox_reschedule(struct store *st, int64_t now_ms, int64_t back_ms,
                                  int64_t max_delay_ms, uint64_t *n)
{
    if (n)
        *n = 0;
    if (back_ms < 0 || max_delay_ms < 0)
        return store_db_reject(st, "negative clock step or delay");
    sqlite3_stmt *s = store_db_stmt(st, ST_OUTBOX_RESCHEDULE);
    store_db_bind_i64(s, 1, now_ms);
    store_db_bind_i64(s, 2, back_ms);
    store_db_bind_i64(s, 3, max_delay_ms);
    return store_db_run_changes(st, s, "rescheduling deferred outbox events", n);
}

rt_status store_outbox_backlog(struct store *st, uint64_t *count, int64_t *oldest_first_ms)
{
    sqlite3_int64 c = 0, oldest = 0;
    rt_status r = store_db_run_ints(st, store_db_stmt(st, ST_OUTBOX_BACKLOG), "counting the outbox",
                                    NULL, &c, &oldest);
    if (count)
        *count = r == RT_OK && c > 0 ? (uint64_t)c : 0;
    if (oldest_first_ms)
        *oldest_first_ms = r == RT_OK ? oldest : 0;
    return r;
}

/* ---- forward sequence numbers ------------------------------------------ */

rt_status store_fwd_next_seq(struct store *st, const char *client, int64_t task, uint64_t *seq)
{
    bool found = false;
    rt_status r =
        store_db_next_seq(st, ST_FWD_NEXT, client, task, "allocating a forward seq", &found, seq);
    if (r == RT_OK && (!found || *seq == 0))
        return store_db_reject(st, "allocating a forward seq for task %" PRId64 " returned nothing",
                               task);
    return r;
}

/* store_db_get_fn of store_fwd_get(). */
static rt_status store_fwd_read(struct store *st, sqlite3_stmt *s, int64_t task, void *row)
{
    struct store_fwd *out = row;
    rt_status r = RT_OK;
    out->found = true;
    out->seq = store_db_column_u64(s, 0);
    out->fp_seq = store_db_column_u64(s, 1);
    if (store_db_column_text(s, 2, out->fp, sizeof out->fp) < 0)
        r = store_db_reject(st, "the stored fingerprint of task %" PRId64 " is too long", task);
    out->sent_ms = sqlite3_column_int64(s, 3);
    if (r == RT_OK && store_db_column_text(s, 4, out->updated, sizeof out->updated) < 0)
        r = store_db_reject(st, "the stored updated value of task %" PRId64 " is too long", task);
    return r;
}

rt_status store_fwd_get(struct store *st, const char *client, int64_t task, struct store_fwd *out)
{
    return store_db_get(st, ST_FWD_GET, client, task, "reading a forward seq", store_fwd_read, out,
                        sizeof *out);
}

rt_status store_fwd_forget(struct store *st, const char *client, int64_t task, uint64_t *n)
{
    return store_db_client_write(st, ST_FWD_FORGET, client, task,
                                 "forgetting what was sent for a task", n);
}

rt_status store_fwd_confirm(struct store *st, const char *client, int64_t task, uint64_t seq,
                            const char *fp, int64_t now_ms)
{
    rt_status r = store_db_check_client(st, client);
    if (r == RT_OK)
        r = store_db_check_u64(st, seq, "seq");
    if (r == RT_OK)
        r = store_db_check_fp(st, fp);
    if (r != RT_OK)
        return r;
    sqlite3_stmt *s = store_db_task_stmt(st, ST_FWD_CONFIRM, client, task);
    store_db_bind_u64(s, 3, seq);
    store_db_bind_text(s, 4, fp ? fp : "");
    store_db_bind_i64(s, 5, now_ms);
    return store_db_run(st, s, "recording a forward confirmation");
}

rt_status store_fwd_seen(struct store *st, const char *client, int64_t task, const char *updated)
{
    rt_status r = store_db_check_client(st, client);
    if (r != RT_OK)
        return r;
    updated = updated ? updated : "";
    if (strlen(updated) > STORE_UPDATED_MAX)
        return store_db_reject(st, "the updated value of task %" PRId64 " is longer than %d bytes",
                               task, STORE_UPDATED_MAX);
    sqlite3_stmt *s = store_db_task_stmt(st, ST_FWD_SEEN, client, task);
    store_db_bind_text(s, 3, updated);
    return store_db_run(st, s, "recording when a task was last seen");
}
