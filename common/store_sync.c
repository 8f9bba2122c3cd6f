/*
 * store_sync.c - group commits: many commits, one fsync (store.h).
 *
 * SQLite in WAL mode with synchronous=NORMAL writes a commit's pages to the
 * WAL without syncing it; syncing the WAL file afterwards makes every
 * commit written before the sync durable, since the WAL is only ever
 * appended to (and rewound only after a checkpoint, which syncs it first).
 * So a lazy handle counts its commits (the commit hook) and, when asked,
 * syncs the WAL through the file object SQLite itself uses
 * (SQLITE_FCNTL_JOURNAL_POINTER): no write of its own, exactly one fsync.
 *
 * The WAL hook replaces SQLite's automatic checkpoint (the same threshold,
 * the same PASSIVE mode) only to count what checkpoints cost.
 */
#include "store_db.h"

/* SQLite's own default for automatic checkpoints, in WAL pages. */
#define STORE_CHECKPOINT_PAGES 1000

/* Before every commit, explicit or not. A commit that then fails still
 * counts: its number is only ever compared with synced, and a sync covers
 * it as well as any other. */
static int store_sync_commit_hook(void *arg)
{
    struct store *st = arg;
    st->commits++;
    st->sync_stats.commits++;
    if (!st->lazy) {
        /* synchronous=FULL syncs the WAL in this commit. */
        st->synced = st->commits;
        st->sync_stats.syncs++;
    }
    return 0;
}

static int store_sync_wal_hook(void *arg, sqlite3 *db, const char *name, int pages)
{
    struct store *st = arg;
    int done = 0;

    if (pages < STORE_CHECKPOINT_PAGES)
        return SQLITE_OK;
    /* As the automatic checkpoint would: a failure here (another process
     * reading) only postpones it to a later commit. */
    if (sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_PASSIVE, NULL, &done) ==
            SQLITE_OK &&
        done > 0) {
        st->sync_stats.checkpoints++;
        st->sync_stats.syncs += 2;
    }
    return SQLITE_OK;
}

void store_sync_on_open(struct store *st)
{
    sqlite3_commit_hook(st->db, store_sync_commit_hook, st);
    sqlite3_wal_hook(st->db, store_sync_wal_hook, st);
}

/* One fsync of the WAL. */
static rt_status store_sync_wal(struct store *st)
{
    sqlite3_file *f = NULL;
    int rc = sqlite3_file_control(st->db, "main", SQLITE_FCNTL_JOURNAL_POINTER, &f);
    if (rc == SQLITE_OK && f && f->pMethods)
        rc = f->pMethods->xSync(f, SQLITE_SYNC_NORMAL);
    if (rc != SQLITE_OK)
        return store_db_fail(st, rc, "syncing the write-ahead log");
    st->sync_stats.syncs++;
    return RT_OK;
}

/* Makes every commit made so far durable. */
static rt_status store_sync_now(struct store *st)
{
    if (st->synced >= st->commits)
        return RT_OK;
    uint64_t upto = st->commits;
    rt_status r = store_sync_wal(st);
    if (r == RT_OK)
        st->synced = upto;
    return r;
}

rt_status store_set_lazy(struct store *st, bool lazy)
{
    if (st->in_txn)
        return store_db_reject(st, "synchronous mode changed inside a transaction");
    if (st->lazy == lazy)
        return RT_OK;
    if (!lazy) {
        rt_status r = store_sync_now(st);
        if (r != RT_OK)
            return r;
    }
    int rc = sqlite3_exec(st->db, lazy ? "PRAGMA synchronous = NORMAL" : "PRAGMA synchronous = FULL",
                          NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        return store_db_fail(st, rc, "setting the synchronous mode");
    st->lazy = lazy;
    return RT_OK;
}

bool store_sync_relax(struct store *st)
{
    if (st->lazy || st->in_txn)
        return false;
    if (sqlite3_exec(st->db, "PRAGMA synchronous = NORMAL", NULL, NULL, NULL) != SQLITE_OK)
        return false;
    st->lazy = true; /* so that the commit hook counts it as not synced */
    return true;
}

void store_sync_relax_end(struct store *st, bool relaxed)
{
    if (!relaxed)
        return;
    /* Not store_set_lazy(false): that would sync what was relaxed. */
    (void)sqlite3_exec(st->db, "PRAGMA synchronous = FULL", NULL, NULL, NULL);
    st->lazy = false;
}

uint64_t store_mark(const struct store *st)
{
    return st->commits;
}

bool store_durable(const struct store *st, uint64_t mark)
{
    return !st->lazy || st->synced >= mark;
}

void store_want_sync(struct store *st)
{
    st->want_sync = true;
}

void store_want_pass_end(struct store *st)
{
    st->want_pass_end = true;
}

bool store_sync_wanted(const struct store *st)
{
    return st->want_sync || st->want_pass_end;
}

/* The listeners of the end of the pass: what they commit is in the sync
 * that follows. */
static void store_sync_pass_end(struct store *st)
{
    st->notifying = true;
    for (size_t i = 0; i < STORE_LISTENERS_MAX; i++)
        if (st->listeners[i].fn && st->listeners[i].before)
            st->listeners[i].fn(st->listeners[i].arg);
    st->notifying = false;
}

rt_status store_sync(struct store *st)
{
    if (st->in_txn || st->notifying)
        return store_db_reject(st, "store_sync inside a transaction or a listener");
    bool pass = st->want_sync || st->want_pass_end;
    if (pass)
        store_sync_pass_end(st);
    st->want_pass_end = false;
    /* Only a pass end was asked for: its commit waits for the next sync
     * (nobody waits for it), so no fsync now. */
    bool sync = st->want_sync || !pass;
    rt_status r = sync ? store_sync_now(st) : RT_OK;
    if (r != RT_OK) {
        st->want_sync = true;
        return r;
    }
    if (!pass)
        return RT_OK;
    st->want_sync = false;
    st->notifying = true;
    for (size_t i = 0; i < STORE_LISTENERS_MAX; i++)
        if (st->listeners[i].fn && !st->listeners[i].before)
            st->listeners[i].fn(st->listeners[i].arg);
    st->notifying = false;
    return RT_OK;
}


rt_status store_commit_durable(struct store *st)
{
    rt_status r = store_commit(st);
    if (r == RT_OK && st->lazy)
        r = store_sync_now(st);
    return r;
}

static rt_status store_sync_listen(struct store *st, void (*fn)(void *arg), void *arg, bool before)
{
    for (size_t i = 0; i < STORE_LISTENERS_MAX; i++)
        if (!st->listeners[i].fn) {
            st->listeners[i] = (struct store_listener){fn, arg, before};
            return RT_OK;
        }
    return store_db_reject(st, "more than %d store listeners", STORE_LISTENERS_MAX);
}

rt_status store_listen(struct store *st, void (*fn)(void *arg), void *arg)
{
    return store_sync_listen(st, fn, arg, false);
}

rt_status store_listen_before(struct store *st, void (*fn)(void *arg), void *arg)
{
    return store_sync_listen(st, fn, arg, true);
}

bool store_lazy(const struct store *st)
{
    return st->lazy;
}

void store_unlisten(struct store *st, void (*fn)(void *arg), void *arg)
{
    for (size_t i = 0; i < STORE_LISTENERS_MAX; i++)
        if (st->listeners[i].fn == fn && st->listeners[i].arg == arg)
            st->listeners[i] = (struct store_listener){0};
}

void store_sync_stats(const struct store *st, struct store_sync_stats *out)
{
    *out = st->sync_stats;
    out->unsynced = st->lazy && st->commits > st->synced ? st->commits - st->synced : 0;
}
