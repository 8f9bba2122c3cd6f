/*
 * store_retry.c - the retry copies under watch (store.h): one row per
 * (dir, client, task) from the broker's confirm of a copy sent to a delay
 * queue until a delivery of the task with that seq or a newer one comes
 * back, with what the applier needs to send the copy again.
 */
#include "store.h"
#include "store_db.h"

#include <stdlib.h>
#include <string.h>

/* A direction fits in a few bits (enum broker_dir); anything else is a
 * caller's mistake, refused rather than stored under a key nobody reads. */
#define STORE_RETRY_DIR_MAX 15

static rt_status store_retry_check_dir(struct store *st, int dir)
{
    if (dir < 0 || dir > STORE_RETRY_DIR_MAX)
        return store_db_reject(st, "retry watch: direction %d out of range", dir);
    return RT_OK;
}

static rt_status store_retry_check_text(struct store *st, const char *v, size_t max,
                                        const char *what)
{
    if (v && strlen(v) > max)
        return store_db_reject(st, "retry watch: %s is longer than %zu bytes", what, max);
    return RT_OK;
}

/* The statement id keyed by (client, task, dir, seq), ?1..?4, once the
 * keys are checked; NULL with the refusal recorded. */
static sqlite3_stmt *store_retry_key_stmt(struct store *st, enum store_stmt_id id, int dir,
                                          const char *client, int64_t task, uint64_t seq)
{
    if (store_db_check_client(st, client) != RT_OK || store_retry_check_dir(st, dir) != RT_OK ||
        store_db_check_u64(st, seq, "seq") != RT_OK)
        return NULL;
    sqlite3_stmt *s = store_db_task_stmt(st, id, client, task);
    store_db_bind_i64(s, 3, dir);
    store_db_bind_u64(s, 4, seq);
    return s;
}

rt_status store_retry_put(struct store *st, const struct store_retry *r)
{
    rt_status v = store_retry_check_text(st, r->user, STORE_RETRY_TEXT_MAX - 1, "the user");
    if (v == RT_OK)
        v = store_retry_check_text(st, r->message_id, STORE_RETRY_TEXT_MAX - 1, "the message id");
    if (v == RT_OK)
        v = store_retry_check_text(st, r->reason, STORE_ERROR_MAX, "the reason");
    if (v == RT_OK && r->len > STORE_RETRY_BODY_MAX)
        v = store_db_reject(st, "retry watch: a body of %zu bytes is over %zu", r->len,
                            STORE_RETRY_BODY_MAX);
    if (v != RT_OK)
        return v;
    sqlite3_stmt *s = store_retry_key_stmt(st, ST_RETRY_PUT, r->dir, r->client, r->task, r->seq);
    if (!s)
        return RT_REJECT;
    store_db_bind_i64(s, 5, r->attempts);
    store_db_bind_i64(s, 6, r->due_ms);
    store_db_bind_text(s, 7, r->user);
    store_db_bind_text(s, 8, r->message_id);
    store_db_bind_text(s, 9, r->reason);
    /* An empty body is stored as an empty blob, never NULL (NOT NULL). */
    sqlite3_bind_blob(s, 10, r->len ? (const void *)r->body : "", (int)r->len, SQLITE_TRANSIENT);
    return store_db_run(st, s, "watching a retry copy");
}

rt_status store_retry_clear(struct store *st, int dir, const char *client, int64_t task,
                            uint64_t seq, uint64_t *cleared)
{
    if (cleared)
        *cleared = 0;
    sqlite3_stmt *s = store_retry_key_stmt(st, ST_RETRY_CLEAR, dir, client, task, seq);
    if (!s)
        return RT_REJECT;
    return store_db_run_changes(st, s, "clearing a retry watch", cleared);
}

/* store_db_row_fn of store_retry_due(): the texts, then a copy of the
 * body. */
static rt_status store_retry_read(struct store *st, sqlite3_stmt *s, void *row)
{
    struct store_retry *r = row;
    memset(r, 0, sizeof(*r));
    if (store_db_column_text(s, 0, r->client, sizeof(r->client)) < 0 ||
        store_db_column_text(s, 5, r->user, sizeof(r->user)) < 0 ||
        store_db_column_text(s, 6, r->message_id, sizeof(r->message_id)) < 0 ||
        store_db_column_text(s, 7, r->reason, sizeof(r->reason)) < 0)
        return store_db_reject(st, "a watched retry copy holds a text over its cap");
    r->task = sqlite3_column_int64(s, 1);
    r->seq = store_db_column_u64(s, 2);
    r->attempts = sqlite3_column_int64(s, 3);
    r->due_ms = sqlite3_column_int64(s, 4);
    const void *body = sqlite3_column_blob(s, 8);
    size_t len = (size_t)sqlite3_column_bytes(s, 8);
    if (len > STORE_RETRY_BODY_MAX)
        return store_db_reject(st, "a watched retry copy holds a body over %zu bytes",
                               STORE_RETRY_BODY_MAX);
    if (len) {
        r->body = malloc(len);
        if (!r->body) {
            /* Not the file's fault: the same read may work later. */
            store_db_reject(st, "out of memory reading a watched retry copy");
            return RT_RETRY;
        }
        memcpy(r->body, body, len);
        r->len = len;
    }
    return RT_OK;
}

rt_status store_retry_due(struct store *st, int dir, int64_t now_ms, size_t max,
                          struct store_retry *out, size_t *n)
{
    *n = 0;
    memset(out, 0, max * sizeof(*out));
    rt_status r = store_retry_check_dir(st, dir);
    if (r != RT_OK)
        return r;
    sqlite3_stmt *s = store_db_stmt(st, ST_RETRY_DUE);
    store_db_bind_i64(s, 1, dir);
    store_db_bind_i64(s, 2, now_ms);
    store_db_bind_limit(s, 3, max);
    r = store_db_rows(st, s, "reading the watched retry copies", store_retry_read, out,
                      sizeof(*out), max, n);
    if (r != RT_OK) {
        /* store_db_rows() drops the rows read before a failure: their
         * bodies are freed here, whatever row failed. */
        store_retry_release(out, max);
    }
    return r;
}

void store_retry_release(struct store_retry *out, size_t n)
{
    for (size_t i = 0; out && i < n; i++) {
        free(out[i].body);
        out[i].body = NULL;
        out[i].len = 0;
    }
}

rt_status store_retry_push(struct store *st, int dir, const char *client, int64_t task,
                           uint64_t seq, int64_t due_ms)
{
    sqlite3_stmt *s = store_retry_key_stmt(st, ST_RETRY_PUSH, dir, client, task, seq);
    if (!s)
        return RT_REJECT;
    store_db_bind_i64(s, 5, due_ms);
    return store_db_run(st, s, "rescheduling a retry watch");
}

rt_status store_retry_count(struct store *st, int dir, uint64_t *n)
{
    *n = 0;
    rt_status r = store_retry_check_dir(st, dir);
    if (r != RT_OK)
        return r;
    sqlite3_stmt *s = store_db_stmt(st, ST_RETRY_COUNT);
    store_db_bind_i64(s, 1, dir);
    sqlite3_int64 count = 0;
    r = store_db_run_ints(st, s, "counting the watched retry copies", NULL, &count, NULL);
    if (r == RT_OK && count > 0)
        *n = (uint64_t)count;
    return r;
}
