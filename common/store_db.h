/*
 * store_db.h - the store's handle and its way of talking to SQLite, for the
 * store's own files only.
 *
 * store.h is the contract with callers, to whom struct store is opaque.
 * The store itself is split into files of one concern each:
 *   store.c         opening and closing the database, transactions
 *   store_schema.c  the tables (migrations) and every statement run on them
 *   store_db.c      what every file below uses: failures named, checks of
 *                   what callers pass, running statements and reading rows
 *   store_outbox.c  client side: the outbox and the forward seqs
 *   store_links.c   server side: links and their reverse seqs
 *   store_rev.c     client side: what reverse messages applied
 *   store_meta.c    small named values
 *   store_journal.c each task's journal (store_journal.h)
 *   store_sync.c    group commits
 * They share what this header holds: the handle, the table of prepared
 * statements, and the functions of store_db.c, store_schema.c,
 * store_journal.c and store_sync.c that another of them calls, each with
 * its contract. Nothing outside common/store*.c includes it.
 *
 * The rules every statement of the table is run by:
 *   - A call takes it with store_db_stmt(), binds, steps, and leaves it
 *     reset (store_db_reset) before it returns, whatever happened, so that
 *     no statement keeps a read snapshot open between calls (that would
 *     hold back WAL checkpoints and other writers). The run and read
 *     helpers below reset it themselves.
 *   - Bound text stays the caller's (SQLITE_STATIC): the rule above makes
 *     it outlive its use.
 *   - A failed SQLite call is recorded with store_db_fail(), a refusal of
 *     the store (a value over its cap, misuse) with store_db_reject(): the
 *     handle then holds the reason store_strerror() gives.
 */
#ifndef RT_STORE_DB_H
#define RT_STORE_DB_H

#include <limits.h>
#include <sqlite3.h>
#include <stdbool.h>

#include "store.h"

/* A reason holds SQLite's words, the file's path (cut to
 * STORE_PATH_SHOWN bytes, store_db.c) and what failed. */
#define STORE_ERR_MAX 1024

/* Every statement the store's files run, prepared once at open; the SQL
 * of each is in store_schema.c. */
enum store_stmt_id {
    ST_BEGIN,
    ST_COMMIT,
    ST_ROLLBACK,
    ST_OUTBOX_ADD,
    ST_OUTBOX_DUE,
    ST_OUTBOX_DONE,
    ST_OUTBOX_DEFER,
    ST_OUTBOX_BACKLOG,
    ST_FWD_NEXT,
    ST_FWD_GET,
    ST_FWD_CONFIRM,
    ST_FWD_SEEN,
    ST_LINK_GET,
    ST_LINK_BY_DST,
    ST_LINK_PUT,
    ST_LINK_NEXT_REV,
    ST_LINK_COUNT,
    ST_LINK_COUNT_ALL,
    ST_LINK_LIST,
    ST_REV_GET,
    ST_REV_PUT,
    ST_META_GET,
    ST_META_SET,
    ST_FWD_FORGET,
    ST_OUTBOX_ADD_KNOWN,
    ST_LINK_FORGET_FP,
    ST_LINK_STATE_BATCH,
    ST_LINK_SET_APPLIED,
    ST_OUTBOX_RESCHEDULE,
    ST_RETRY_PUT,
    ST_RETRY_CLEAR,
    ST_RETRY_DUE,
    ST_RETRY_PUSH,
    ST_RETRY_COUNT,
    ST_COUNT
};

struct store_journal; /* store_journal.c */

struct store {
    sqlite3 *db;
    sqlite3_stmt *stmt[ST_COUNT];
    bool in_txn;   /* store_begin() opened a transaction not yet ended */
    bool readonly; /* store_open_readonly(): reads only */
    int busy_ms;   /* the busy timeout of this handle */
    /* The journal's queue and statements; NULL until the journal is
     * configured or read (store_journal.c). */
    struct store_journal *journal;
    /* Group commits (store_sync.c). commits counts every commit SQLite
     * made on this handle (its commit hook), synced those known to be on
     * disk; a listener runs after a store_sync() that someone asked for. */
    bool lazy;      /* store_set_lazy(): commits are synced by store_sync() */
    bool want_sync; /* store_want_sync() since the last store_sync() */
    bool want_pass_end; /* store_want_pass_end() since the last store_sync() */
    bool notifying; /* the listeners are running */
    uint64_t commits;
    uint64_t synced;
    struct store_sync_stats sync_stats;
    struct store_listener {
        void (*fn)(void *arg);
        void *arg;
        bool before; /* store_listen_before: at the end of the pass, before the sync */
    } listeners[STORE_LISTENERS_MAX];
    char path[PATH_MAX];
    char err[STORE_ERR_MAX];
    char cause[STORE_ERR_MAX]; /* err without the operation (store_strcause) */
};

/* ---- failures and checks (store_db.c) -------------------------------- */

/* What a failed SQLite result code rc means for a caller: RT_RETRY for
 * the conditions that may pass (busy, locked, I/O, full, out of memory),
 * RT_REJECT for the rest. */
rt_status store_db_status(int rc);

/* Records a failed SQLite call (rc) made while doing what, in the words
 * store_strerror() gives; returns RT_RETRY or RT_REJECT as store.h says.
 * When SQLite rolled the open transaction back by itself, in_txn is
 * cleared and the reason says so. */
rt_status store_db_fail(struct store *st, int rc, const char *what);

/* Records a refusal of this module (a value over its cap, misuse) as the
 * handle's reason; returns RT_REJECT. */
rt_status store_db_reject(struct store *st, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* RT_OK for a client id the store accepts (1..STORE_CLIENT_MAX bytes),
 * else RT_REJECT with the reason kept. */
rt_status store_db_check_client(struct store *st, const char *client);

/* RT_OK for a number SQLite can hold (at most INT64_MAX), else RT_REJECT
 * naming it as what. */
rt_status store_db_check_u64(struct store *st, uint64_t v, const char *what);

/* RT_OK for a fingerprint of at most STORE_FP_MAX bytes (NULL is ""). */
rt_status store_db_check_fp(struct store *st, const char *fp);

/* ---- statements (store_db.c) ----------------------------------------- */

/* The prepared statement id of the handle, ready to bind. */
sqlite3_stmt *store_db_stmt(struct store *st, enum store_stmt_id id);

/* Resets s and clears its bindings. */
void store_db_reset(sqlite3_stmt *s);

/* Bind parameter i of s. Binding is to a statement known to have these
 * parameters: a failure means SQLITE_RANGE or SQLITE_NOMEM, which the next
 * step reports too. bind_text binds NULL for a NULL v; bind_limit caps max
 * at INT64_MAX. */
void store_db_bind_text(sqlite3_stmt *s, int i, const char *v);
void store_db_bind_i64(sqlite3_stmt *s, int i, int64_t v);
void store_db_bind_u64(sqlite3_stmt *s, int i, uint64_t v);
void store_db_bind_limit(sqlite3_stmt *s, int i, size_t max);

/* The statement id with client bound to ?1 and task (or another
 * integer) to ?2, for the many statements keyed by (client, task); the
 * caller checked the client. */
sqlite3_stmt *store_db_task_stmt(struct store *st, enum store_stmt_id id, const char *client,
                                 int64_t task);

/* Column i of the current row as a count: a negative value (which this
 * module never writes) reads as 0. */
uint64_t store_db_column_u64(sqlite3_stmt *s, int i);

/* Copies text column i into dst (NUL-terminated). Returns -1 when it does
 * not fit in size, which for a value this module wrote means the file was
 * altered. */
int store_db_column_text(sqlite3_stmt *s, int i, char *dst, size_t size);

/* Runs one SQL text without parameters (the set-up done once per open). */
rt_status store_db_exec(struct store *st, const char *sql, const char *what);

/* Runs s to its end (which is when an autocommit write is committed),
 * its rows, if any, unread; then resets it. A failure is recorded with
 * what. */
rt_status store_db_run(struct store *st, sqlite3_stmt *s, const char *what);

/* As store_db_run(); on RT_OK *n (may be NULL) receives the number of rows
 * the write changed. */
rt_status store_db_run_changes(struct store *st, sqlite3_stmt *s, const char *what, uint64_t *n);

/* As store_db_run(), for a statement that returns at most one row of
 * integers (a count, a write with RETURNING): the first row's columns 0
 * and 1 go to *a and *b (either may be NULL), *found (may be NULL) tells
 * whether there was a row. */
rt_status store_db_run_ints(struct store *st, sqlite3_stmt *s, const char *what, bool *found,
                            sqlite3_int64 *a, sqlite3_int64 *b);

/* Steps s once, for a query of at most one row. RT_OK with *row = s when
 * there is a row: the caller reads its columns, then calls
 * store_db_reset(s). RT_OK with *row NULL when there is none, or the
 * failure recorded with what and *row NULL: s is reset already. */
rt_status store_db_row(struct store *st, sqlite3_stmt *s, const char *what, sqlite3_stmt **row);

/* Copies the row a getter found for (client, task) into out; returns
 * RT_OK, or the refusal recorded with store_db_reject(). */
typedef rt_status store_db_get_fn(struct store *st, sqlite3_stmt *s, int64_t task, void *out);

/* The one shape of every getter keyed by (client, task) (the fwd, links
 * and rev tables): clears out (size bytes), checks the client, runs
 * statement id for (client, task) and, when it returns a row, has read()
 * copy it into out. No row leaves out cleared (its found false) and
 * returns RT_OK; on any failure (recorded with what) out is cleared
 * again. */
rt_status store_db_get(struct store *st, enum store_stmt_id id, const char *client, int64_t task,
                       const char *what, store_db_get_fn *read, void *out, size_t size);

/* For a write keyed by (client, task) that returns the seq it allocated
 * (RETURNING): checks the client, runs statement id to its end; *found
 * tells whether it returned a row, *seq is its value (0 when none, or not
 * positive). */
rt_status store_db_next_seq(struct store *st, enum store_stmt_id id, const char *client,
                            int64_t task, const char *what, bool *found, uint64_t *seq);

/* For a write of a client's rows keyed by the client and one integer (a
 * task id, a time): *n (may be NULL) is 0, the client is checked, then
 * statement id is run as store_db_run_changes() runs it. */
rt_status store_db_client_write(struct store *st, enum store_stmt_id id, const char *client,
                                int64_t v, const char *what, uint64_t *n);

/* Copies the current row of s into the array element at row; returns
 * RT_OK, or the refusal recorded with store_db_reject(). */
typedef rt_status store_db_row_fn(struct store *st, sqlite3_stmt *s, void *row);

/* Reads at most max rows of s into out[0..*n), an array of elements of
 * size bytes, one read() per row; then resets s. On a failure (of SQLite,
 * recorded with what, or of read()) *n is 0. */
rt_status store_db_rows(struct store *st, sqlite3_stmt *s, const char *what, store_db_row_fn *read,
                        void *out, size_t size, size_t max, size_t *n);

/* ---- the schema (store_schema.c) ------------------------------------- */

/* Brings the schema of a writable connection up to STORE_SCHEMA_VERSION
 * in one IMMEDIATE transaction; a file written by a newer version is
 * refused (RT_REJECT) and left as it is. path names the file in the
 * reason. */
rt_status store_schema_migrate(struct store *st, const char *path);

/* For a read-only connection: RT_OK when the file's schema is exactly
 * STORE_SCHEMA_VERSION, else RT_REJECT saying which side is newer. */
rt_status store_schema_check(struct store *st);

/* Prepares every statement of enum store_stmt_id into st->stmt (the ones
 * prepared before a failure are finalized by store_free()). */
rt_status store_schema_prepare(struct store *st);

/* ---- group commits (store_sync.c) ------------------------------------ */

/* Installs the commit and WAL hooks of group commits on st->db;
 * store.c calls it once the connection is open. */
void store_sync_on_open(struct store *st);

/* For one transaction nobody waits for (the journal's own): a synced
 * handle commits it without a sync, counted as not synced, until
 * store_sync_relax_end(relaxed). Returns true when it relaxed the handle
 * (a lazy one is left as it is, and so is one inside a transaction). The
 * next synced commit or sync covers the relaxed one. */
bool store_sync_relax(struct store *st);
void store_sync_relax_end(struct store *st, bool relaxed);

/* ---- the journal's part in the store's life (store_journal.c) --------
 *
 * store.c calls these at the points of a transaction's life, so that
 * journal rows go to disk inside the transactions the components already
 * commit: rows queued since the last commit are inserted just before
 * COMMIT; rows queued inside a transaction that is rolled back (or whose
 * COMMIT failed) are dropped with it, since they describe work that did
 * not happen; rows queued before it stay queued. Each accepts a handle
 * whose journal was never set up (then it does nothing). */

/* store_begin() opened a transaction. */
void store_journal_on_begin(struct store *st);

/* Just before COMMIT: inserts the queued rows into the open transaction.
 * A failing insert stops there without failing the transaction (the rows
 * not written stay queued) and returns RT_OK; only when SQLite rolled the
 * whole transaction back for it does it return that failure
 * (store_db_fail), which store_commit() then reports. */
rt_status store_journal_on_commit(struct store *st);

/* After COMMIT: ok tells whether it succeeded (the rows written are then
 * dequeued) or not (the rows queued inside the transaction are dropped). */
void store_journal_on_end(struct store *st, bool ok);

/* store_free(): writes what is still queued (one transaction, after any
 * open one was rolled back) and frees the journal's part of the handle. */
void store_journal_on_free(struct store *st);

#endif
