/*
 * store_db.c - how the store's files talk to SQLite (store_db.h): a failure
 * named in words an operator acts on, the checks of what callers pass, and
 * the few ways a prepared statement is run and its rows read.
 */
#include "store_db.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* The file's path in a reason (STORE_ERR_MAX) is cut to this. */
#define STORE_PATH_SHOWN 512
/* The cause's share of a reason (store_strerror), the operation's and
 * SQLite's words taking the rest. */
#define STORE_CAUSE_SHOWN 640

/* ---- failures ---------------------------------------------------------- */

/* Busy and locked outlasted the busy timeout; I/O errors, a full disk and
 * lack of memory may pass. Everything else (corruption, constraint,
 * misuse, read-only) will not get better by trying again. */
rt_status store_db_status(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
    case SQLITE_IOERR:
    case SQLITE_FULL:
    case SQLITE_NOMEM:
    case SQLITE_PROTOCOL: return RT_RETRY;
    default: return RT_REJECT;
    }
}

/* Names the condition behind rc in st->cause; returns the words to show
 * after SQLite's code in st->err, or NULL for none. A full disk and a lock
 * held by another process are named as such (BILLmanager's event handler
 * shows remotetaskctl's message), with SQLite's own words after them. */
static const char *store_db_cause(struct store *st, int rc)
{
    int sys = sqlite3_system_errno(st->db);
    int primary = rc & 0xff;
    const char *msg = sqlite3_errmsg(st->db);

    if (primary == SQLITE_FULL || (primary == SQLITE_IOERR && (sys == ENOSPC || sys == EDQUOT))) {
        snprintf(st->cause, sizeof st->cause, "no space left on the device holding %.*s",
                 STORE_PATH_SHOWN, st->path);
        return primary == SQLITE_FULL ? msg : strerror(sys);
    }
    if (primary == SQLITE_IOERR)
        snprintf(st->cause, sizeof st->cause, "I/O error on %.*s: %s", STORE_PATH_SHOWN, st->path,
                 sys ? strerror(sys) : msg);
    else if (primary == SQLITE_BUSY || primary == SQLITE_LOCKED)
        snprintf(st->cause, sizeof st->cause, "%.*s is locked by another process (waited %d ms)",
                 STORE_PATH_SHOWN, st->path, st->busy_ms);
    else
        snprintf(st->cause, sizeof st->cause, "%s", msg);
    return NULL;
}

/* SQLite rolls a transaction back by itself after some errors (a full
 * disk, an I/O error); the caller must then know that its earlier updates
 * are gone, so the message says so. */
rt_status store_db_fail(struct store *st, int rc, const char *what)
{
    const char *detail = store_db_cause(st, rc);

    if (detail)
        snprintf(st->err, sizeof st->err, "%s failed: %.*s (SQLite code %d: %s)", what,
                 STORE_CAUSE_SHOWN, st->cause, rc, detail);
    else
        snprintf(st->err, sizeof st->err, "%s failed: %.*s (SQLite code %d)", what,
                 STORE_CAUSE_SHOWN, st->cause, rc);
    if (st->in_txn && sqlite3_get_autocommit(st->db)) {
        st->in_txn = false;
        size_t len = strlen(st->err);
        snprintf(st->err + len, sizeof st->err - len, "; the transaction was rolled back");
    }
    return store_db_status(rc);
}

rt_status store_db_reject(struct store *st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(st->err, sizeof st->err, fmt, ap);
    va_end(ap);
    memcpy(st->cause, st->err, sizeof st->cause);
    return RT_REJECT;
}

/* ---- checks ------------------------------------------------------------ */

/* Client ids come from configuration and from messages: bounded here, at
 * the one door, rather than trusted. */
rt_status store_db_check_client(struct store *st, const char *client)
{
    if (!client || !*client)
        return store_db_reject(st, "client id is empty");
    size_t len = strnlen(client, STORE_CLIENT_MAX + 1);
    if (len > STORE_CLIENT_MAX)
        return store_db_reject(st, "client id is longer than %d bytes", STORE_CLIENT_MAX);
    return RT_OK;
}

/* SQLite integers are signed 64-bit. */
rt_status store_db_check_u64(struct store *st, uint64_t v, const char *what)
{
    if (v > (uint64_t)INT64_MAX)
        return store_db_reject(st, "%s %" PRIu64 " is out of range", what, v);
    return RT_OK;
}

rt_status store_db_check_fp(struct store *st, const char *fp)
{
    if (fp && strnlen(fp, STORE_FP_MAX + 1) > STORE_FP_MAX)
        return store_db_reject(st, "fingerprint is longer than %d bytes", STORE_FP_MAX);
    return RT_OK;
}

/* ---- statements -------------------------------------------------------- */

sqlite3_stmt *store_db_stmt(struct store *st, enum store_stmt_id id)
{
    return st->stmt[id];
}

void store_db_reset(sqlite3_stmt *s)
{
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
}

void store_db_bind_text(sqlite3_stmt *s, int i, const char *v)
{
    if (v)
        sqlite3_bind_text(s, i, v, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(s, i);
}

void store_db_bind_i64(sqlite3_stmt *s, int i, int64_t v)
{
    sqlite3_bind_int64(s, i, (sqlite3_int64)v);
}

void store_db_bind_u64(sqlite3_stmt *s, int i, uint64_t v)
{
    sqlite3_bind_int64(s, i, (sqlite3_int64)v);
}

void store_db_bind_limit(sqlite3_stmt *s, int i, size_t max)
{
    sqlite3_bind_int64(s, i, max > (size_t)INT64_MAX ? INT64_MAX : (sqlite3_int64)max);
}

sqlite3_stmt *store_db_task_stmt(struct store *st, enum store_stmt_id id, const char *client,
                                 int64_t task)
{
    sqlite3_stmt *s = store_db_stmt(st, id);
    store_db_bind_text(s, 1, client);
    store_db_bind_i64(s, 2, task);
    return s;
}

uint64_t store_db_column_u64(sqlite3_stmt *s, int i)
{
    sqlite3_int64 v = sqlite3_column_int64(s, i);
    return v < 0 ? 0 : (uint64_t)v;
}

int store_db_column_text(sqlite3_stmt *s, int i, char *dst, size_t size)
{
    const unsigned char *t = sqlite3_column_text(s, i);
    size_t n = (size_t)sqlite3_column_bytes(s, i);
    if (!t)
        n = 0;
    if (n >= size)
        return -1;
    if (n)
        memcpy(dst, t, n);
    dst[n] = '\0';
    return 0;
}

/* ---- running them ------------------------------------------------------ */

rt_status store_db_exec(struct store *st, const char *sql, const char *what)
{
    int rc = sqlite3_exec(st->db, sql, NULL, NULL, NULL);
    return rc == SQLITE_OK ? RT_OK : store_db_fail(st, rc, what);
}

rt_status store_db_run(struct store *st, sqlite3_stmt *s, const char *what)
{
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW)
        ;
    rt_status r = rc == SQLITE_DONE ? RT_OK : store_db_fail(st, rc, what);
    store_db_reset(s);
    return r;
}

rt_status store_db_run_changes(struct store *st, sqlite3_stmt *s, const char *what, uint64_t *n)
{
    rt_status r = store_db_run(st, s, what);
    if (r == RT_OK && n)
        *n = (uint64_t)sqlite3_changes(st->db);
    return r;
}

/* The statement is run to its end, so a write with RETURNING is committed
 * before this returns. */
rt_status store_db_run_ints(struct store *st, sqlite3_stmt *s, const char *what, bool *found,
                            sqlite3_int64 *a, sqlite3_int64 *b)
{
    bool got = false;
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        if (got)
            continue;
        got = true;
        if (a)
            *a = sqlite3_column_int64(s, 0);
        if (b)
            *b = sqlite3_column_int64(s, 1);
    }
    rt_status r = rc == SQLITE_DONE ? RT_OK : store_db_fail(st, rc, what);
    store_db_reset(s);
    if (found)
        *found = got;
    return r;
}

rt_status store_db_row(struct store *st, sqlite3_stmt *s, const char *what, sqlite3_stmt **row)
{
    *row = NULL;
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        *row = s;
        return RT_OK;
    }
    rt_status r = rc == SQLITE_DONE ? RT_OK : store_db_fail(st, rc, what);
    store_db_reset(s);
    return r;
}

rt_status store_db_get(struct store *st, enum store_stmt_id id, const char *client, int64_t task,
                       const char *what, store_db_get_fn *read, void *out, size_t size)
{
    memset(out, 0, size);
    rt_status r = store_db_check_client(st, client);
    if (r != RT_OK)
        return r;
    sqlite3_stmt *s;
    r = store_db_row(st, store_db_task_stmt(st, id, client, task), what, &s);
    if (r != RT_OK || !s)
        return r;
    r = read(st, s, task, out);
    store_db_reset(s);
    if (r != RT_OK)
        memset(out, 0, size);
    return r;
}

rt_status store_db_next_seq(struct store *st, enum store_stmt_id id, const char *client,
                            int64_t task, const char *what, bool *found, uint64_t *seq)
{
    *found = false;
    *seq = 0;
    rt_status r = store_db_check_client(st, client);
    if (r != RT_OK)
        return r;
    sqlite3_int64 v = 0;
    r = store_db_run_ints(st, store_db_task_stmt(st, id, client, task), what, found, &v, NULL);
    if (r == RT_OK && v > 0)
        *seq = (uint64_t)v;
    return r;
}

rt_status store_db_client_write(struct store *st, enum store_stmt_id id, const char *client,
                                int64_t v, const char *what, uint64_t *n)
{
    if (n)
        *n = 0;
    rt_status r = store_db_check_client(st, client);
    if (r != RT_OK)
        return r;
    return store_db_run_changes(st, store_db_task_stmt(st, id, client, v), what, n);
}

/* A full batch stops without another step: whether more rows follow is
 * the caller's next question, not this one's. */
rt_status store_db_rows(struct store *st, sqlite3_stmt *s, const char *what, store_db_row_fn *read,
                        void *out, size_t size, size_t max, size_t *n)
{
    rt_status r = RT_OK;
    int rc = SQLITE_DONE;
    *n = 0;
    while (*n < max && (rc = sqlite3_step(s)) == SQLITE_ROW) {
        r = read(st, s, (char *)out + *n * size);
        if (r != RT_OK)
            break;
        (*n)++;
    }
    if (r == RT_OK && *n < max && rc != SQLITE_DONE)
        r = store_db_fail(st, rc, what);
    store_db_reset(s);
    if (r != RT_OK)
        *n = 0;
    return r;
}
