/*
 * store_db.h - the store's handle, for the store's own files only.
 *
 * store.c owns the connection, the schema and the transactions; the files
 * that add a concern to the store (store_journal.c) need the same handle
 * and the same way of reporting a failure. This header gives them both.
 * Nothing outside common/store*.c includes it: callers see struct store
 * as the opaque type of store.h.
 */
#ifndef RT_STORE_DB_H
#define RT_STORE_DB_H

#include <limits.h>
#include <sqlite3.h>
#include <stdbool.h>

#include "store.h"

/* A reason holds SQLite's words, the file's path (cut to
 * STORE_PATH_SHOWN bytes) and what failed. */
#define STORE_ERR_MAX 1024

/* Every statement store.c runs, prepared once at open (store.c). */
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

/* Records a failed SQLite call (rc) made while doing what, in the words
 * store_strerror() gives; returns RT_RETRY or RT_REJECT as store.h says. */
rt_status store_db_fail(struct store *st, int rc, const char *what);

/* Records a refusal of this module (a value over its cap, misuse) as the
 * handle's reason; returns RT_REJECT. */
rt_status store_db_reject(struct store *st, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* RT_OK for a client id the store accepts (1..STORE_CLIENT_MAX bytes),
 * else RT_REJECT with the reason kept. */
rt_status store_db_check_client(struct store *st, const char *client);

/* Installs the commit and WAL hooks of group commits on st->db
 * (store_sync.c); connect_db() calls it once the connection is open. */
void store_sync_on_open(struct store *st);

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
