/*
 * store.c - the store's database (store.h): opening it (the state
 * directory, the file, WAL, the schema), closing it, and the transactions
 * the other store files run their statements in. What each table holds is
 * in the store_*.c files store_db.h lists.
 */
#include "store.h"
#include "clock.h"
#include "store_db.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* The pause between two attempts to open a database another process is
 * setting up. */
#define STORE_OPEN_RETRY_MS 20
#define STORE_DIR_MODE      0750
#define STORE_FILE_MODE     0640

/* The page cache of a connection, in KiB (see store_connect). */
#define STORE_CACHE_KIB_STR "512"

const char *store_strerror(const struct store *st)
{
    return st ? st->err : "no store";
}

const char *store_strcause(const struct store *st)
{
    return st ? st->cause : "no store";
}

/* ---- open and close ---------------------------------------------------- */

static void store_open_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void store_open_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* Creates one directory level with the store's mode; an existing directory
 * is fine (another process may have won the race), anything else at that
 * path is an error. The mode is set explicitly so that it does not depend
 * on the umask. */
static int store_mkdir_one(const char *path, const char *state_dir, char *err, size_t errlen)
{
    struct stat sb;
    if (mkdir(path, STORE_DIR_MODE) == 0) {
        if (chmod(path, STORE_DIR_MODE) < 0) {
            store_open_err(err, errlen, "cannot set the mode of \"%s\": %s", path, strerror(errno));
            return -1;
        }
        return 0;
    }
    int saved = errno;
    if (saved == EEXIST && stat(path, &sb) == 0) {
        if (S_ISDIR(sb.st_mode))
            return 0;
        store_open_err(err, errlen, "state_dir \"%s\": \"%s\" is not a directory", state_dir, path);
        return -1;
    }
    store_open_err(err, errlen, "cannot create state_dir \"%s\": %s: %s", state_dir, path,
                   strerror(saved));
    return -1;
}

/* Makes sure state_dir is a directory, creating it and any missing parent
 * (mkdir -p), as the daemon may be the first to run on a fresh system. */
static int store_mkdir(const char *state_dir, char *err, size_t errlen)
{
    struct stat sb;
    if (stat(state_dir, &sb) == 0) {
        if (S_ISDIR(sb.st_mode))
            return 0;
        store_open_err(err, errlen, "state_dir \"%s\" is not a directory", state_dir);
        return -1;
    }
    if (errno != ENOENT && errno != ENOTDIR) {
        store_open_err(err, errlen, "cannot use state_dir \"%s\": %s", state_dir, strerror(errno));
        return -1;
    }
    char path[PATH_MAX];
    size_t len = strlen(state_dir);
    if (len >= sizeof path) {
        store_open_err(err, errlen, "state_dir \"%s\" is too long", state_dir);
        return -1;
    }
    memcpy(path, state_dir, len + 1);
    for (size_t i = 1; i < len; i++) {
        if (path[i] != '/' || path[i - 1] == '/')
            continue;
        path[i] = '\0';
        bool exists = stat(path, &sb) == 0;
        if (exists && !S_ISDIR(sb.st_mode)) {
            store_open_err(err, errlen, "state_dir \"%s\": \"%s\" is not a directory", state_dir,
                           path);
            return -1;
        }
        if (!exists && store_mkdir_one(path, state_dir, err, errlen) < 0)
            return -1;
        path[i] = '/';
    }
    return store_mkdir_one(path, state_dir, err, errlen);
}

/* The database file's path inside state_dir, into path (PATH_MAX bytes). */
static int store_file_path(const char *state_dir, char *path, char *err, size_t errlen)
{
    int n = snprintf(path, PATH_MAX, "%s/%s", state_dir, STORE_FILE_NAME);
    if (n < 0 || n >= PATH_MAX) {
        store_open_err(err, errlen, "state_dir \"%s\" is too long", state_dir);
        return -1;
    }
    return 0;
}

/* Creates the database file with the store's mode before SQLite opens it:
 * SQLite would create it 0644, and it gives the -wal and -shm files the
 * mode of the database file. An existing file is left as it is. */
static int store_mkfile(const char *path, char *err, size_t errlen)
{
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, STORE_FILE_MODE);
    if (fd >= 0) {
        int rc = fchmod(fd, STORE_FILE_MODE);
        int saved = errno;
        close(fd);
        if (rc < 0) {
            store_open_err(err, errlen, "cannot set the mode of \"%s\": %s", path, strerror(saved));
            return -1;
        }
        return 0;
    }
    int saved = errno;
    struct stat sb;
    if (saved == EEXIST && stat(path, &sb) == 0) {
        if (S_ISREG(sb.st_mode))
            return 0;
        store_open_err(err, errlen, "\"%s\" is not a regular file", path);
        return -1;
    }
    store_open_err(err, errlen, "cannot create \"%s\": %s", path, strerror(saved));
    return -1;
}

/* A handle for the database at path, not yet connected. */
static struct store *store_alloc(const char *path, char *err, size_t errlen)
{
    struct store *st = calloc(1, sizeof *st);
    if (!st) {
        store_open_err(err, errlen, "out of memory opening \"%s\"", path);
        return NULL;
    }
    memcpy(st->path, path, sizeof st->path);
    return st;
}

/* Opens the connection to st->path with flags, waiting st->busy_ms for a
 * lock. On failure returns SQLite's code with its words in st->err, and
 * st->db is closed again. */
static int store_sqlite_open(struct store *st, int flags)
{
    /* NOMUTEX: a handle belongs to one thread (see store.h). */
    int rc = sqlite3_open_v2(st->path, &st->db, flags | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        snprintf(st->err, sizeof st->err, "%s",
                 st->db ? sqlite3_errmsg(st->db) : sqlite3_errstr(rc));
        sqlite3_close(st->db);
        st->db = NULL;
        return rc;
    }
    sqlite3_extended_result_codes(st->db, 1);
    sqlite3_busy_timeout(st->db, st->busy_ms);
    return SQLITE_OK;
}

/* Switches the file to WAL, so that readers never block the writer and the
 * CLI can record an event while the daemon reads. The mode is stored in
 * the file: after the first open this is a no-op. */
static rt_status store_set_wal(struct store *st)
{
    sqlite3_stmt *s = NULL;
    int rc = sqlite3_prepare_v2(st->db, "PRAGMA journal_mode = WAL", -1, &s, NULL);
    if (rc != SQLITE_OK)
        return store_db_fail(st, rc, "setting WAL mode");
    rc = sqlite3_step(s);
    if (rc != SQLITE_ROW) {
        rt_status r = store_db_fail(st, rc, "setting WAL mode");
        sqlite3_finalize(s);
        return r;
    }
    const char *mode = (const char *)sqlite3_column_text(s, 0);
    bool wal = mode && strcasecmp(mode, "wal") == 0;
    rt_status r =
        wal ? RT_OK
            : store_db_reject(st, "the database cannot use WAL mode (journal mode is \"%s\")",
                              mode ? mode : "unknown");
    sqlite3_finalize(s);
    return r;
}

/* Opens the connection and readies the file: WAL, durable commits, the
 * current schema. On failure st->db is closed again and st->err says why. */
static rt_status store_connect(struct store *st, const char *path)
{
    int rc = store_sqlite_open(st, SQLITE_OPEN_READWRITE);
    if (rc != SQLITE_OK)
        return store_db_status(rc);
    store_sync_on_open(st);
    /* In WAL mode synchronous=NORMAL may lose the last commits on a power
     * loss; the outbox promises that a recorded event is never lost, so
     * every commit is synced, unless the handle's owner syncs them itself
     * (store_set_lazy, store_sync.c). */
    rt_status r = store_set_wal(st);
    if (r == RT_OK)
        r = store_db_exec(st, "PRAGMA synchronous = FULL", "setting synchronous mode");
    /* The default page cache is 2 MB per connection, about a third of a
     * daemon's own heap at 10,000 links. Every lookup is by an index, so a
     * small cache costs only re-reads from the kernel's page cache. */
    if (r == RT_OK)
        r = store_db_exec(st, "PRAGMA cache_size = -" STORE_CACHE_KIB_STR,
                          "setting the cache size");
    if (r == RT_OK)
        r = store_schema_migrate(st, path);
    if (r != RT_OK) {
        sqlite3_close(st->db);
        st->db = NULL;
    }
    return r;
}

struct store *store_open(const char *state_dir, char *err, size_t errlen)
{
    return store_open_timeout(state_dir, STORE_BUSY_TIMEOUT_MS, err, errlen);
}

struct store *store_open_timeout(const char *state_dir, int busy_ms, char *err, size_t errlen)
{
    if (errlen)
        err[0] = '\0';
    if (!state_dir || !*state_dir) {
        store_open_err(err, errlen, "state_dir is empty");
        return NULL;
    }
    if (store_mkdir(state_dir, err, errlen) < 0)
        return NULL;
    char path[PATH_MAX];
    if (store_file_path(state_dir, path, err, errlen) < 0)
        return NULL;
    if (store_mkfile(path, err, errlen) < 0)
        return NULL;

    struct store *st = store_alloc(path, err, errlen);
    if (!st)
        return NULL;
    /* Opening (the migration) waits as long as the CLI would: a daemon
     * starting beside a long transaction should start, not fail. */
    st->busy_ms = STORE_BUSY_TIMEOUT_MS > busy_ms ? STORE_BUSY_TIMEOUT_MS : busy_ms;
    /* While two processes open a new file at once, one switching it to WAL,
     * SQLite can answer the other "locked" or an I/O error at once,
     * without waiting through the busy timeout. Those are transient: the
     * whole connection is retried, fresh, until the busy timeout passed. */
    int64_t deadline = clock_mono_ms() + STORE_BUSY_TIMEOUT_MS;
    rt_status r;
    while ((r = store_connect(st, path)) == RT_RETRY && clock_mono_ms() < deadline)
        sqlite3_sleep(STORE_OPEN_RETRY_MS);
    if (r == RT_OK)
        r = store_schema_prepare(st);
    if (r != RT_OK) {
        store_open_err(err, errlen, "cannot open \"%s\": %s", path, st->err);
        goto free_store;
    }
    st->busy_ms = busy_ms > 0 ? busy_ms : 0;
    sqlite3_busy_timeout(st->db, st->busy_ms);
    st->err[0] = st->cause[0] = '\0';
    return st;

free_store:
    store_free(st);
    return NULL;
}

struct store *store_open_readonly(const char *state_dir, char *err, size_t errlen)
{
    char path[PATH_MAX];
    struct stat sb;

    if (errlen)
        err[0] = '\0';
    if (!state_dir || !*state_dir) {
        store_open_err(err, errlen, "state_dir is empty");
        return NULL;
    }
    if (store_file_path(state_dir, path, err, errlen) < 0)
        return NULL;
    /* A reader creates nothing: no store yet means nothing was recorded. */
    if (stat(path, &sb) < 0) {
        store_open_err(err, errlen, "there is no store \"%s\": %s", path, strerror(errno));
        return NULL;
    }
    struct store *st = store_alloc(path, err, errlen);
    if (!st)
        return NULL;
    st->readonly = true;
    st->busy_ms = STORE_BUSY_TIMEOUT_MS;
    rt_status r = RT_REJECT;
    if (store_sqlite_open(st, SQLITE_OPEN_READONLY) == SQLITE_OK)
        r = store_schema_check(st);
    if (r == RT_OK)
        r = store_schema_prepare(st);
    if (r != RT_OK) {
        store_open_err(err, errlen, "cannot read \"%s\": %s", path, st->err);
        store_free(st);
        return NULL;
    }
    st->err[0] = st->cause[0] = '\0';
    return st;
}

void store_free(struct store *st)
{
    if (!st)
        return;
    if (st->in_txn)
        store_rollback(st);
    /* What the journal still holds is written now: a clean stop loses no
     * row of it. */
    store_journal_on_free(st);
    /* A clean stop leaves nothing unsynced behind. */
    if (st->db && st->lazy)
        (void)store_set_lazy(st, false);
    for (int i = 0; i < ST_COUNT; i++)
        sqlite3_finalize(st->stmt[i]); /* NULL is a no-op */
    if (st->db && !sqlite3_get_autocommit(st->db))
        sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
    sqlite3_close(st->db); /* NULL is a no-op */
    free(st);
}

/* ---- transactions ------------------------------------------------------ */

rt_status store_begin(struct store *st)
{
    if (st->in_txn)
        return store_db_reject(st, "a transaction is already open");
    /* SQLite would take the write lock for a reader and refuse only its
     * first write. */
    if (st->readonly)
        return store_db_reject(st, "the store was opened read-only");
    rt_status r = store_db_run(st, store_db_stmt(st, ST_BEGIN), "BEGIN IMMEDIATE");
    if (r == RT_OK) {
        st->in_txn = true;
        store_journal_on_begin(st);
    }
    return r;
}

rt_status store_commit(struct store *st)
{
    if (!st->in_txn)
        return store_db_reject(st, "commit without an open transaction");
    /* The journal's rows ride in this transaction: no sync of their own. */
    rt_status r = store_journal_on_commit(st);
    if (r == RT_OK)
        r = store_db_run(st, store_db_stmt(st, ST_COMMIT), "COMMIT");
    if (r != RT_OK && !sqlite3_get_autocommit(st->db))
        store_db_run(st, store_db_stmt(st, ST_ROLLBACK), "ROLLBACK");
    st->in_txn = false;
    store_journal_on_end(st, r == RT_OK);
    return r;
}

rt_status store_rollback(struct store *st)
{
    if (st->in_txn)
        store_journal_on_end(st, false);
    st->in_txn = false;
    if (sqlite3_get_autocommit(st->db))
        return RT_OK;
    return store_db_run(st, store_db_stmt(st, ST_ROLLBACK), "ROLLBACK");
}
