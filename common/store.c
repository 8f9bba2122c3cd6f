#include "store.h"
#include "store_db.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
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

/* The file's path in a reason (STORE_ERR_MAX, store_db.h) is cut to
 * this. */
#define STORE_PATH_SHOWN 512
/* The cause's share of a reason (store_strerror), the operation's and
 * SQLite's words taking the rest. */
#define STORE_CAUSE_SHOWN 640
/* The pause between two attempts to open a database another process is
 * setting up. */
#define STORE_OPEN_RETRY_MS 20
#define STORE_DIR_MODE      0750
#define STORE_FILE_MODE     0640

/* The page cache of a connection, in KiB (see connect_db). */
#define STORE_CACHE_KIB_STR "512"

/*
 * The schema, one migration per version: migrations[i] takes a database
 * from user_version i to i + 1. A new version appends one string here and
 * bumps STORE_SCHEMA_VERSION; a released string is never edited, since
 * databases in the field already ran it.
 */
static const char *const migrations[] = {
    /* 1: the first schema. */
    "CREATE TABLE outbox ("
    "  client TEXT NOT NULL,"
    "  task INTEGER NOT NULL,"
    "  gen INTEGER NOT NULL,"
    "  events INTEGER NOT NULL,"
    "  first_ms INTEGER NOT NULL,"
    "  last_ms INTEGER NOT NULL,"
    "  attempts INTEGER NOT NULL DEFAULT 0,"
    "  next_ms INTEGER NOT NULL,"
    "  last_error TEXT,"
    "  PRIMARY KEY (client, task));"
    "CREATE INDEX outbox_first_ms ON outbox (first_ms);"
    "CREATE TABLE fwd ("
    "  client TEXT NOT NULL,"
    "  task INTEGER NOT NULL,"
    "  seq INTEGER NOT NULL DEFAULT 0,"
    "  fp TEXT NOT NULL DEFAULT '',"
    "  fp_seq INTEGER NOT NULL DEFAULT 0,"
    "  sent_ms INTEGER NOT NULL DEFAULT 0,"
    "  PRIMARY KEY (client, task));"
    "CREATE TABLE links ("
    "  client TEXT NOT NULL,"
    "  src_task INTEGER NOT NULL,"
    "  dst_task INTEGER NOT NULL,"
    "  last_seq INTEGER NOT NULL DEFAULT 0,"
    "  rev_seq INTEGER NOT NULL DEFAULT 0,"
    "  rev_fp TEXT NOT NULL DEFAULT '',"
    "  notes_sent INTEGER NOT NULL DEFAULT 0,"
    "  updated_ms INTEGER NOT NULL DEFAULT 0,"
    "  PRIMARY KEY (client, src_task));"
    "CREATE INDEX links_dst ON links (client, dst_task);"
    "CREATE TABLE rev ("
    "  client TEXT NOT NULL,"
    "  task INTEGER NOT NULL,"
    "  seq INTEGER NOT NULL DEFAULT 0,"
    "  notes_applied INTEGER NOT NULL DEFAULT 0,"
    "  PRIMARY KEY (client, task));"
    "CREATE TABLE meta ("
    "  key TEXT PRIMARY KEY NOT NULL,"
    "  value TEXT NOT NULL);",
    /* 2: what the forward path needs to skip work: the task's `updated`
     * value when last seen (reconciliation), and the fingerprint sets of
     * what was last applied on each side. */
    "ALTER TABLE fwd ADD COLUMN updated TEXT NOT NULL DEFAULT '';"
    "ALTER TABLE links ADD COLUMN applied TEXT NOT NULL DEFAULT '';"
    "ALTER TABLE rev ADD COLUMN applied TEXT NOT NULL DEFAULT '';",
    /* 3: the journal of each task's journey (store_journal.h). id is the
     * rowid, so rows keep the order they were written in; the index serves
     * both a task's trace and the pruning of its oldest rows. */
    "CREATE TABLE journal ("
    "  id INTEGER PRIMARY KEY,"
    "  ts_ms INTEGER NOT NULL,"
    "  side INTEGER NOT NULL,"
    "  client TEXT NOT NULL,"
    "  src_task INTEGER NOT NULL,"
    "  dst_task INTEGER NOT NULL DEFAULT 0,"
    "  event TEXT NOT NULL,"
    "  seq INTEGER NOT NULL DEFAULT 0,"
    "  detail TEXT NOT NULL DEFAULT '');"
    "CREATE INDEX journal_task ON journal (side, client, src_task);",
};

#define MIGRATION_COUNT ((int)(sizeof migrations / sizeof migrations[0]))

_Static_assert(sizeof migrations / sizeof migrations[0] == STORE_SCHEMA_VERSION,
               "STORE_SCHEMA_VERSION must be the number of migrations");

/* Every statement the store runs (enum store_stmt_id, store_db.h) is
 * prepared once at open: the outbox relay makes tens of thousands of calls
 * and should not parse SQL for each. */

#define LINK_COLUMNS                                                                       \
    "client, src_task, dst_task, last_seq, rev_seq, rev_fp, notes_sent, updated_ms, applied"

static const char *const stmt_sql[ST_COUNT] = {
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    /* A new event makes a waiting row due now: MIN keeps a row that was
     * already due as it is. */
    [ST_OUTBOX_ADD] = "INSERT INTO outbox"
                      " (client, task, gen, events, first_ms, last_ms, attempts, next_ms)"
                      " VALUES (?1, ?2, 1, 1, ?3, ?3, 0, ?3)"
                      " ON CONFLICT (client, task) DO UPDATE SET"
                      " gen = gen + 1, events = events + 1, last_ms = excluded.last_ms,"
                      " next_ms = MIN(next_ms, excluded.next_ms)",
    [ST_OUTBOX_DUE] = "SELECT client, task, gen, events, first_ms, last_ms, attempts"
                      " FROM outbox WHERE next_ms <= ?1"
                      " ORDER BY first_ms, client, task LIMIT ?2",
    [ST_OUTBOX_DONE] = "DELETE FROM outbox WHERE client = ?1 AND task = ?2 AND gen = ?3",
    [ST_OUTBOX_DEFER] = "UPDATE outbox SET attempts = attempts + 1, next_ms = ?3,"
                        " last_error = ?4 WHERE client = ?1 AND task = ?2",
    [ST_OUTBOX_BACKLOG] = "SELECT COUNT(*), COALESCE(MIN(first_ms), 0) FROM outbox",
    [ST_FWD_NEXT] = "INSERT INTO fwd (client, task, seq) VALUES (?1, ?2, 1)"
                    " ON CONFLICT (client, task) DO UPDATE SET seq = seq + 1"
                    " RETURNING seq",
    [ST_FWD_GET] = "SELECT seq, fp_seq, fp, sent_ms, updated FROM fwd"
                   " WHERE client = ?1 AND task = ?2",
    /* A confirmation for a seq older than the recorded one describes
     * fields that were replaced since: it must not overwrite them. */
    [ST_FWD_CONFIRM] = "INSERT INTO fwd (client, task, seq, fp, fp_seq, sent_ms)"
                       " VALUES (?1, ?2, ?3, ?4, ?3, ?5)"
                       " ON CONFLICT (client, task) DO UPDATE SET"
                       " seq = MAX(seq, excluded.seq), fp = excluded.fp,"
                       " fp_seq = excluded.fp_seq, sent_ms = excluded.sent_ms"
                       " WHERE excluded.fp_seq >= fp_seq",
    [ST_FWD_SEEN] = "INSERT INTO fwd (client, task, updated) VALUES (?1, ?2, ?3)"
                    " ON CONFLICT (client, task) DO UPDATE SET updated = excluded.updated",
    [ST_LINK_GET] = "SELECT " LINK_COLUMNS " FROM links WHERE client = ?1 AND src_task = ?2",
    /* INDEXED BY: without statistics the planner prefers the primary key,
     * whose order serves the ORDER BY, and scans every link of the client
     * for each call; the state publisher calls this once per listed row,
     * which made a cycle quadratic in the number of links. */
    [ST_LINK_BY_DST] = "SELECT " LINK_COLUMNS " FROM links INDEXED BY links_dst"
                       " WHERE client = ?1 AND dst_task = ?2 ORDER BY src_task LIMIT 1",
    [ST_LINK_PUT] = "INSERT INTO links (" LINK_COLUMNS ")"
                    " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
                    " ON CONFLICT (client, src_task) DO UPDATE SET"
                    " dst_task = excluded.dst_task, last_seq = excluded.last_seq,"
                    " rev_seq = excluded.rev_seq, rev_fp = excluded.rev_fp,"
                    " notes_sent = excluded.notes_sent, updated_ms = excluded.updated_ms,"
                    " applied = excluded.applied",
    [ST_LINK_NEXT_REV] = "UPDATE links SET rev_seq = rev_seq + 1"
                         " WHERE client = ?1 AND src_task = ?2 RETURNING rev_seq",
    [ST_LINK_COUNT] = "SELECT COUNT(*) FROM links WHERE client = ?1",
    [ST_LINK_COUNT_ALL] = "SELECT COUNT(*) FROM links",
    [ST_LINK_LIST] = "SELECT " LINK_COLUMNS " FROM links WHERE client = ?1 AND src_task > ?2"
                     " ORDER BY src_task LIMIT ?3",
    [ST_REV_GET] = "SELECT seq, notes_applied, applied FROM rev WHERE client = ?1 AND task = ?2",
    [ST_REV_PUT] = "INSERT INTO rev (client, task, seq, notes_applied, applied)"
                   " VALUES (?1, ?2, ?3, ?4, ?5)"
                   " ON CONFLICT (client, task) DO UPDATE SET"
                   " seq = excluded.seq, notes_applied = excluded.notes_applied,"
                   " applied = excluded.applied",
    [ST_META_GET] = "SELECT value FROM meta WHERE key = ?1",
    [ST_META_SET] = "INSERT INTO meta (key, value) VALUES (?1, ?2)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    /* ?2 = 0 stands for every task of the client. */
    [ST_FWD_FORGET] = "UPDATE fwd SET fp = '', updated = ''"
                      " WHERE client = ?1 AND (?2 = 0 OR task = ?2)",
    [ST_OUTBOX_ADD_KNOWN] = "INSERT INTO outbox"
                            " (client, task, gen, events, first_ms, last_ms, attempts, next_ms)"
                            " SELECT client, task, 1, 1, ?2, ?2, 0, ?2 FROM fwd WHERE client = ?1"
                            " ON CONFLICT (client, task) DO UPDATE SET"
                            " gen = gen + 1, events = events + 1, last_ms = excluded.last_ms,"
                            " next_ms = MIN(next_ms, excluded.next_ms)",
    /* ?1 NULL stands for every client, ?2 = 0 for every task. */
    [ST_LINK_FORGET_FP] = "UPDATE links SET rev_fp = ''"
                          " WHERE (?1 IS NULL OR client = ?1) AND (?2 = 0 OR src_task = ?2)",
    /* The links whose applied set still holds a "state" key (GLOB: case
     * sensitive, as the keys are); each batch
     * removes the key from the rows it returns, so the next one moves on. */
    [ST_LINK_STATE_BATCH] = "SELECT client, src_task, applied FROM links"
                            " WHERE (?1 IS NULL OR client = ?1) AND (?2 = 0 OR src_task = ?2)"
                            " AND (';' || applied) GLOB '*;state=*'"
                            " ORDER BY client, src_task LIMIT ?3",
    [ST_LINK_SET_APPLIED] = "UPDATE links SET applied = ?3 WHERE client = ?1 AND src_task = ?2",
    /* ?1 now, ?2 how far the clock went back, ?3 the longest deferral. */
    [ST_OUTBOX_RESCHEDULE] =
        "UPDATE outbox SET next_ms = MAX(?1, MIN(next_ms - ?2, ?1 + ?3))"
        " WHERE next_ms > ?1 AND next_ms <> MAX(?1, MIN(next_ms - ?2, ?1 + ?3))",
};

/* ---- errors ------------------------------------------------------------ */

/* Busy and locked outlasted the busy timeout; I/O errors, a full disk and
 * lack of memory may pass. Everything else (corruption, constraint,
 * misuse, read-only) will not get better by trying again. */
static rt_status status_of(int rc)
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

static rt_status reject(struct store *st, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static rt_status reject(struct store *st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(st->err, sizeof st->err, fmt, ap);
    va_end(ap);
    memcpy(st->cause, st->err, sizeof st->cause);
    return RT_REJECT;
}

/* Records a failed SQLite call, in words an operator acts on: a full disk
 * and a lock held by another process are named as such (BILLmanager's
 * event handler shows remotetaskctl's message), with SQLite's own words
 * after them. SQLite rolls a transaction back by itself after some errors
 * (a full disk, an I/O error); the caller must then know that its earlier
 * updates are gone, so the message says so. */
static rt_status db_fail(struct store *st, int rc, const char *what)
{
    int sys = sqlite3_system_errno(st->db);
    int primary = rc & 0xff;
    const char *msg = sqlite3_errmsg(st->db);
    const char *detail = NULL; /* SQLite's or the system's words, after the code */

    if (primary == SQLITE_FULL || (primary == SQLITE_IOERR && (sys == ENOSPC || sys == EDQUOT))) {
        snprintf(st->cause, sizeof st->cause, "no space left on the device holding %.*s",
                 STORE_PATH_SHOWN, st->path);
        detail = primary == SQLITE_FULL ? msg : strerror(sys);
    } else if (primary == SQLITE_IOERR) {
        snprintf(st->cause, sizeof st->cause, "I/O error on %.*s: %s", STORE_PATH_SHOWN, st->path,
                 sys ? strerror(sys) : msg);
    } else if (primary == SQLITE_BUSY || primary == SQLITE_LOCKED) {
        snprintf(st->cause, sizeof st->cause, "%.*s is locked by another process (waited %d ms)",
                 STORE_PATH_SHOWN, st->path, st->busy_ms);
    } else {
        snprintf(st->cause, sizeof st->cause, "%s", msg);
    }
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
    return status_of(rc);
}

const char *store_strerror(const struct store *st)
{
    return st ? st->err : "no store";
}

const char *store_strcause(const struct store *st)
{
    return st ? st->cause : "no store";
}

/* Client ids come from configuration and from messages: bounded here, at
 * the one door, rather than trusted. */
static rt_status check_client(struct store *st, const char *client)
{
    if (!client || !*client)
        return reject(st, "client id is empty");
    size_t len = strnlen(client, STORE_CLIENT_MAX + 1);
    if (len > STORE_CLIENT_MAX)
        return reject(st, "client id is longer than %d bytes", STORE_CLIENT_MAX);
    return RT_OK;
}

/* The same, for the store's other files (store_db.h). */
rt_status store_db_fail(struct store *st, int rc, const char *what)
{
    return db_fail(st, rc, what);
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

rt_status store_db_check_client(struct store *st, const char *client)
{
    return check_client(st, client);
}

/* SQLite integers are signed 64-bit. */
static rt_status check_u64(struct store *st, uint64_t v, const char *what)
{
    if (v > (uint64_t)INT64_MAX)
        return reject(st, "%s %" PRIu64 " is out of range", what, v);
    return RT_OK;
}

static rt_status check_fp(struct store *st, const char *fp)
{
    if (fp && strnlen(fp, STORE_FP_MAX + 1) > STORE_FP_MAX)
        return reject(st, "fingerprint is longer than %d bytes", STORE_FP_MAX);
    return RT_OK;
}

/* ---- statements -------------------------------------------------------- */

/* The cached statement, ready to bind. Statements are reset as soon as a
 * call is done with them, so none keeps a read snapshot open between
 * calls (that would hold back WAL checkpoints and other writers). */
static sqlite3_stmt *stmt(struct store *st, enum store_stmt_id id)
{
    return st->stmt[id];
}

static void stmt_done(sqlite3_stmt *s)
{
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
}

/* Binding is to a statement known to have these parameters: a failure here
 * means SQLITE_RANGE or SQLITE_NOMEM, which the next step reports too. The
 * text stays the caller's (SQLITE_STATIC): every call resets its
 * statement before returning. */
static void bind_text(sqlite3_stmt *s, int i, const char *v)
{
    if (v)
        sqlite3_bind_text(s, i, v, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(s, i);
}

static void bind_i64(sqlite3_stmt *s, int i, int64_t v)
{
    sqlite3_bind_int64(s, i, (sqlite3_int64)v);
}

static void bind_u64(sqlite3_stmt *s, int i, uint64_t v)
{
    sqlite3_bind_int64(s, i, (sqlite3_int64)v);
}

static void bind_limit(sqlite3_stmt *s, int i, size_t max)
{
    sqlite3_bind_int64(s, i, max > (size_t)INT64_MAX ? INT64_MAX : (sqlite3_int64)max);
}

static uint64_t column_u64(sqlite3_stmt *s, int i)
{
    sqlite3_int64 v = sqlite3_column_int64(s, i);
    return v < 0 ? 0 : (uint64_t)v;
}

/* Copies a text column into a fixed buffer. Returns -1 if it does not fit,
 * which for a value this module wrote means the file was altered. */
static int column_text(sqlite3_stmt *s, int i, char *dst, size_t size)
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

/* Runs a statement that returns no rows (or whose rows are not wanted) to
 * its end, which is when an autocommit write is committed. */
static rt_status run(struct store *st, sqlite3_stmt *s, const char *what)
{
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW)
        ;
    rt_status r = rc == SQLITE_DONE ? RT_OK : db_fail(st, rc, what);
    stmt_done(s);
    return r;
}

/* Runs a statement that returns at most one row of integers: the first
 * row's column 0 and 1 go to *a and *b (either may be NULL), *found tells
 * whether there was a row. The statement is run to its end, so a write
 * with RETURNING is committed before this returns. */
static rt_status run_ints(struct store *st, sqlite3_stmt *s, const char *what, bool *found,
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
    rt_status r = rc == SQLITE_DONE ? RT_OK : db_fail(st, rc, what);
    stmt_done(s);
    if (found)
        *found = got;
    return r;
}

/* ---- open and close ---------------------------------------------------- */

static void open_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void open_err(char *err, size_t errlen, const char *fmt, ...)
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
static int make_one_dir(const char *path, const char *state_dir, char *err, size_t errlen)
{
    struct stat sb;
    if (mkdir(path, STORE_DIR_MODE) == 0) {
        if (chmod(path, STORE_DIR_MODE) < 0) {
            open_err(err, errlen, "cannot set the mode of \"%s\": %s", path, strerror(errno));
            return -1;
        }
        return 0;
    }
    int saved = errno;
    if (saved == EEXIST && stat(path, &sb) == 0) {
        if (S_ISDIR(sb.st_mode))
            return 0;
        open_err(err, errlen, "state_dir \"%s\": \"%s\" is not a directory", state_dir, path);
        return -1;
    }
    open_err(err, errlen, "cannot create state_dir \"%s\": %s: %s", state_dir, path,
             strerror(saved));
    return -1;
}

/* Makes sure state_dir is a directory, creating it and any missing parent
 * (mkdir -p), as the daemon may be the first to run on a fresh system. */
static int make_dir(const char *state_dir, char *err, size_t errlen)
{
    struct stat sb;
    if (stat(state_dir, &sb) == 0) {
        if (S_ISDIR(sb.st_mode))
            return 0;
        open_err(err, errlen, "state_dir \"%s\" is not a directory", state_dir);
        return -1;
    }
    if (errno != ENOENT && errno != ENOTDIR) {
        open_err(err, errlen, "cannot use state_dir \"%s\": %s", state_dir, strerror(errno));
        return -1;
    }
    char path[PATH_MAX];
    size_t len = strlen(state_dir);
    if (len >= sizeof path) {
        open_err(err, errlen, "state_dir \"%s\" is too long", state_dir);
        return -1;
    }
    memcpy(path, state_dir, len + 1);
    for (size_t i = 1; i < len; i++) {
        if (path[i] != '/' || path[i - 1] == '/')
            continue;
        path[i] = '\0';
        bool exists = stat(path, &sb) == 0;
        if (exists && !S_ISDIR(sb.st_mode)) {
            open_err(err, errlen, "state_dir \"%s\": \"%s\" is not a directory", state_dir, path);
            return -1;
        }
        if (!exists && make_one_dir(path, state_dir, err, errlen) < 0)
            return -1;
        path[i] = '/';
    }
    return make_one_dir(path, state_dir, err, errlen);
}

/* Creates the database file with the store's mode before SQLite opens it:
 * SQLite would create it 0644, and it gives the -wal and -shm files the
 * mode of the database file. An existing file is left as it is. */
static int make_file(const char *path, char *err, size_t errlen)
{
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, STORE_FILE_MODE);
    if (fd >= 0) {
        int rc = fchmod(fd, STORE_FILE_MODE);
        int saved = errno;
        close(fd);
        if (rc < 0) {
            open_err(err, errlen, "cannot set the mode of \"%s\": %s", path, strerror(saved));
            return -1;
        }
        return 0;
    }
    int saved = errno;
    struct stat sb;
    if (saved == EEXIST && stat(path, &sb) == 0) {
        if (S_ISREG(sb.st_mode))
            return 0;
        open_err(err, errlen, "\"%s\" is not a regular file", path);
        return -1;
    }
    open_err(err, errlen, "cannot create \"%s\": %s", path, strerror(saved));
    return -1;
}

/* Runs one SQL text (no parameters), for the set-up done once per open. */
static rt_status exec_sql(struct store *st, const char *sql, const char *what)
{
    int rc = sqlite3_exec(st->db, sql, NULL, NULL, NULL);
    return rc == SQLITE_OK ? RT_OK : db_fail(st, rc, what);
}

/* Switches the file to WAL, so that readers never block the writer and the
 * CLI can record an event while the daemon reads. The mode is stored in
 * the file: after the first open this is a no-op. */
static rt_status set_wal(struct store *st)
{
    sqlite3_stmt *s = NULL;
    int rc = sqlite3_prepare_v2(st->db, "PRAGMA journal_mode = WAL", -1, &s, NULL);
    if (rc != SQLITE_OK)
        return db_fail(st, rc, "setting WAL mode");
    rc = sqlite3_step(s);
    if (rc != SQLITE_ROW) {
        rt_status r = db_fail(st, rc, "setting WAL mode");
        sqlite3_finalize(s);
        return r;
    }
    const char *mode = (const char *)sqlite3_column_text(s, 0);
    bool wal = mode && strcasecmp(mode, "wal") == 0;
    rt_status r = wal ? RT_OK
                      : reject(st, "the database cannot use WAL mode (journal mode is \"%s\")",
                               mode ? mode : "unknown");
    sqlite3_finalize(s);
    return r;
}

static rt_status read_version(struct store *st, int *version)
{
    sqlite3_stmt *s = NULL;
    int rc = sqlite3_prepare_v2(st->db, "PRAGMA user_version", -1, &s, NULL);
    if (rc != SQLITE_OK)
        return db_fail(st, rc, "reading the schema version");
    rc = sqlite3_step(s);
    rt_status r = RT_OK;
    if (rc == SQLITE_ROW)
        *version = sqlite3_column_int(s, 0);
    else
        r = db_fail(st, rc, "reading the schema version");
    sqlite3_finalize(s);
    return r;
}

/* Brings the schema to MIGRATION_COUNT in one IMMEDIATE transaction, so
 * that two processes opening a new file at once do not both create it: the
 * second waits, then sees the version the first wrote. */
static rt_status migrate(struct store *st, const char *path)
{
    rt_status r = exec_sql(st, "BEGIN IMMEDIATE", "starting the schema migration");
    if (r != RT_OK)
        return r;
    int version = 0;
    r = read_version(st, &version);
    if (r != RT_OK)
        goto rollback;
    if (version < 0 || version > MIGRATION_COUNT) {
        r = reject(st,
                   "\"%s\" has schema version %d, but this remotetask knows versions up to %d:"
                   " it was written by a newer remotetask",
                   path, version, MIGRATION_COUNT);
        goto rollback;
    }
    for (int v = version; v < MIGRATION_COUNT; v++) {
        char what[64];
        snprintf(what, sizeof what, "schema migration to version %d", v + 1);
        r = exec_sql(st, migrations[v], what);
        if (r != RT_OK)
            goto rollback;
    }
    if (version < MIGRATION_COUNT) {
        /* PRAGMA takes no bound parameters; the number is ours. */
        char sql[64];
        snprintf(sql, sizeof sql, "PRAGMA user_version = %d", MIGRATION_COUNT);
        r = exec_sql(st, sql, "setting the schema version");
        if (r != RT_OK)
            goto rollback;
    }
    return exec_sql(st, "COMMIT", "committing the schema migration");

rollback:
    sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
    return r;
}

static rt_status prepare_all(struct store *st)
{
    for (int i = 0; i < ST_COUNT; i++) {
        int rc = sqlite3_prepare_v3(st->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT,
                                    &st->stmt[i], NULL);
        if (rc != SQLITE_OK)
            return db_fail(st, rc, "preparing a statement");
    }
    return RT_OK;
}

static int64_t monotonic_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Opens the connection and readies the file: WAL, durable commits, the
 * current schema. On failure st->db is closed again and st->err says why. */
static rt_status connect_db(struct store *st, const char *path)
{
    /* NOMUTEX: a handle belongs to one thread (see store.h). */
    int rc = sqlite3_open_v2(path, &st->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        snprintf(st->err, sizeof st->err, "%s",
                 st->db ? sqlite3_errmsg(st->db) : sqlite3_errstr(rc));
        sqlite3_close(st->db);
        st->db = NULL;
        return status_of(rc);
    }
    sqlite3_extended_result_codes(st->db, 1);
    sqlite3_busy_timeout(st->db, st->busy_ms);
    store_sync_on_open(st);
    /* In WAL mode synchronous=NORMAL may lose the last commits on a power
     * loss; the outbox promises that a recorded event is never lost, so
     * every commit is synced, unless the handle's owner syncs them itself
     * (store_set_lazy, store_sync.c). */
    rt_status r = set_wal(st);
    if (r == RT_OK)
        r = exec_sql(st, "PRAGMA synchronous = FULL", "setting synchronous mode");
    /* The default page cache is 2 MB per connection, about a third of a
     * daemon's own heap at 10,000 links. Every lookup is by an index, so a
     * small cache costs only re-reads from the kernel's page cache. */
    if (r == RT_OK)
        r = exec_sql(st, "PRAGMA cache_size = -" STORE_CACHE_KIB_STR, "setting the cache size");
    if (r == RT_OK)
        r = migrate(st, path);
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
        open_err(err, errlen, "state_dir is empty");
        return NULL;
    }
    if (make_dir(state_dir, err, errlen) < 0)
        return NULL;
    char path[PATH_MAX];
    int n = snprintf(path, sizeof path, "%s/%s", state_dir, STORE_FILE_NAME);
    if (n < 0 || (size_t)n >= sizeof path) {
        open_err(err, errlen, "state_dir \"%s\" is too long", state_dir);
        return NULL;
    }
    if (make_file(path, err, errlen) < 0)
        return NULL;

    struct store *st = calloc(1, sizeof *st);
    if (!st) {
        open_err(err, errlen, "out of memory opening \"%s\"", path);
        return NULL;
    }
    memcpy(st->path, path, sizeof st->path);
    /* Opening (the migration) waits as long as the CLI would: a daemon
     * starting beside a long transaction should start, not fail. */
    st->busy_ms = STORE_BUSY_TIMEOUT_MS > busy_ms ? STORE_BUSY_TIMEOUT_MS : busy_ms;
    /* While two processes open a new file at once, one switching it to WAL,
     * SQLite can answer the other "locked" or an I/O error at once,
     * without waiting through the busy timeout. Those are transient: the
     * whole connection is retried, fresh, until the busy timeout passed. */
    int64_t deadline = monotonic_ms() + STORE_BUSY_TIMEOUT_MS;
    rt_status r;
    while ((r = connect_db(st, path)) == RT_RETRY && monotonic_ms() < deadline)
        sqlite3_sleep(STORE_OPEN_RETRY_MS);
    if (r == RT_OK)
        r = prepare_all(st);
    if (r != RT_OK) {
        open_err(err, errlen, "cannot open \"%s\": %s", path, st->err);
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
        open_err(err, errlen, "state_dir is empty");
        return NULL;
    }
    int n = snprintf(path, sizeof path, "%s/%s", state_dir, STORE_FILE_NAME);
    if (n < 0 || (size_t)n >= sizeof path) {
        open_err(err, errlen, "state_dir \"%s\" is too long", state_dir);
        return NULL;
    }
    /* A reader creates nothing: no store yet means nothing was recorded. */
    if (stat(path, &sb) < 0) {
        open_err(err, errlen, "there is no store \"%s\": %s", path, strerror(errno));
        return NULL;
    }
    struct store *st = calloc(1, sizeof *st);
    if (!st) {
        open_err(err, errlen, "out of memory opening \"%s\"", path);
        return NULL;
    }
    memcpy(st->path, path, sizeof st->path);
    st->readonly = true;
    st->busy_ms = STORE_BUSY_TIMEOUT_MS;
    int version = 0;
    int rc = sqlite3_open_v2(path, &st->db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL);
    rt_status r;
    if (rc != SQLITE_OK) {
        snprintf(st->err, sizeof st->err, "%s",
                 st->db ? sqlite3_errmsg(st->db) : sqlite3_errstr(rc));
        r = RT_REJECT;
    } else {
        sqlite3_extended_result_codes(st->db, 1);
        sqlite3_busy_timeout(st->db, st->busy_ms);
        r = read_version(st, &version);
    }
    /* Another version's schema is not read: an older one lacks tables this
     * code reads, a newer one may mean something else by them. */
    if (r == RT_OK && version > MIGRATION_COUNT)
        r = reject(st,
                   "it has schema version %d, but this remotetask knows versions up to %d:"
                   " it was written by a newer remotetask",
                   version, MIGRATION_COUNT);
    else if (r == RT_OK && version < MIGRATION_COUNT)
        r = reject(st,
                   "it has schema version %d, older than this remotetask's %d: start this "
                   "version's remotetaskd once to bring it up to date",
                   version, MIGRATION_COUNT);
    if (r == RT_OK)
        r = prepare_all(st);
    if (r != RT_OK) {
        open_err(err, errlen, "cannot read \"%s\": %s", path, st->err);
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
        return reject(st, "a transaction is already open");
    /* SQLite would take the write lock for a reader and refuse only its
     * first write. */
    if (st->readonly)
        return reject(st, "the store was opened read-only");
    rt_status r = run(st, stmt(st, ST_BEGIN), "BEGIN IMMEDIATE");
    if (r == RT_OK) {
        st->in_txn = true;
        store_journal_on_begin(st);
    }
    return r;
}

rt_status store_commit(struct store *st)
{
    if (!st->in_txn)
        return reject(st, "commit without an open transaction");
    /* The journal's rows ride in this transaction: no sync of their own. */
    rt_status r = store_journal_on_commit(st);
    if (r == RT_OK)
        r = run(st, stmt(st, ST_COMMIT), "COMMIT");
    if (r != RT_OK && !sqlite3_get_autocommit(st->db))
        run(st, stmt(st, ST_ROLLBACK), "ROLLBACK");
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
    return run(st, stmt(st, ST_ROLLBACK), "ROLLBACK");
}

/* ---- outbox ------------------------------------------------------------ */

rt_status store_outbox_add(struct store *st, const char *client, int64_t task, int64_t now_ms)
{
    rt_status r = check_client(st, client);
    if (r != RT_OK)
        return r;
    sqlite3_stmt *s = stmt(st, ST_OUTBOX_ADD);
    bind_text(s, 1, client);
    bind_i64(s, 2, task);
    bind_i64(s, 3, now_ms);
    return run(st, s, "recording an outbox event");
}

rt_status store_outbox_due(struct store *st, int64_t now_ms, size_t max, struct store_event *out,
                           size_t *n)
{
    *n = 0;
    if (max == 0)
        return RT_OK;
    sqlite3_stmt *s = stmt(st, ST_OUTBOX_DUE);
    bind_i64(s, 1, now_ms);
    bind_limit(s, 2, max);
    rt_status r = RT_OK;
    int rc = SQLITE_DONE;
    while (*n < max && (rc = sqlite3_step(s)) == SQLITE_ROW) {
        struct store_event *e = &out[*n];
        memset(e, 0, sizeof *e);
        if (column_text(s, 0, e->client, sizeof e->client) < 0) {
            r = reject(st, "the outbox holds a client id longer than %d bytes", STORE_CLIENT_MAX);
            break;
        }
        e->task = sqlite3_column_int64(s, 1);
        e->gen = column_u64(s, 2);
        e->events = column_u64(s, 3);
        e->first_ms = sqlite3_column_int64(s, 4);
        e->last_ms = sqlite3_column_int64(s, 5);
        e->attempts = column_u64(s, 6);
        (*n)++;
    }
    if (r == RT_OK && *n < max && rc != SQLITE_DONE)
        r = db_fail(st, rc, "reading the due outbox events");
    stmt_done(s);
    if (r != RT_OK)
        *n = 0;
    return r;
}

rt_status store_outbox_done(struct store *st, const char *client, int64_t task, uint64_t gen,
                            bool *deleted)
{
    if (deleted)
        *deleted = false;
    rt_status r = check_client(st, client);
    if (r == RT_OK)
        r = check_u64(st, gen, "generation");
    if (r != RT_OK)
        return r;
    sqlite3_stmt *s = stmt(st, ST_OUTBOX_DONE);
    bind_text(s, 1, client);
    bind_i64(s, 2, task);
    bind_u64(s, 3, gen);
    r = run(st, s, "deleting an outbox event");
    if (r == RT_OK && deleted)
        *deleted = sqlite3_changes(st->db) > 0;
    return r;
}

/* Cuts an error text to STORE_ERROR_MAX bytes without splitting a UTF-8
 * sequence, so that the status command can show it as JSON. */
static size_t error_len(const char *error)
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
    rt_status r = check_client(st, client);
    if (r != RT_OK)
        return r;
    sqlite3_stmt *s = stmt(st, ST_OUTBOX_DEFER);
    bind_text(s, 1, client);
    bind_i64(s, 2, task);
    bind_i64(s, 3, next_ms);
    if (error)
        sqlite3_bind_text(s, 4, error, (int)error_len(error), SQLITE_STATIC);
    else
        sqlite3_bind_null(s, 4);
    return run(st, s, "deferring an outbox event");
}

rt_status store_outbox_reschedule(struct store *st, int64_t now_ms, int64_t back_ms,
                                  int64_t max_delay_ms, uint64_t *n)
{
    if (n)
        *n = 0;
    if (back_ms < 0 || max_delay_ms < 0)
        return reject(st, "negative clock step or delay");
    sqlite3_stmt *s = stmt(st, ST_OUTBOX_RESCHEDULE);
    bind_i64(s, 1, now_ms);
    bind_i64(s, 2, back_ms);
    bind_i64(s, 3, max_delay_ms);
    rt_status r = run(st, s, "rescheduling deferred outbox events");
    if (r == RT_OK && n)
        *n = (uint64_t)sqlite3_changes(st->db);
    return r;
}

rt_status store_outbox_backlog(struct store *st, uint64_t *count, int64_t *oldest_first_ms)
{
    sqlite3_int64 c = 0, oldest = 0;
    rt_status r =
        run_ints(st, stmt(st, ST_OUTBOX_BACKLOG), "counting the outbox", NULL, &c, &oldest);
    if (count)
        *count = r == RT_OK && c > 0 ? (uint64_t)c : 0;
    if (oldest_first_ms)
        *oldest_first_ms = r == RT_OK ? oldest : 0;
    return r;
}

/* ---- forward sequence numbers ------------------------------------------ */

rt_status store_fwd_next_seq(struct store *st, const char *client, int64_t task, uint64_t *seq)
{
    *seq = 0;
    rt_status r = check_client(st, client);
    if (r != RT_OK)
        return r;
    sqlite3_stmt *s = stmt(st, ST_FWD_NEXT);
    bind_text(s, 1, client);
    bind_i64(s, 2, task);
    bool found = false;
    sqlite3_int64 v = 0;
    r = run_ints(st, s, "allocating a forward seq", &found, &v, NULL);
    if (r != RT_OK)
        return r;
    if (!found || v <= 0)
        return reject(st, "allocating a forward seq for task %" PRId64 " returned nothing", task);
    *seq = (uint64_t)v;
    return RT_OK;
}

rt_status store_fwd_get(struct store *st, const char *client, int64_t task, struct store_fwd *out)
{
    memset(out, 0, sizeof *out);
    rt_status r = check_client(st, client);
    if (r != RT_OK)
        return r;
    sqlite3_stmt *s = stmt(st, ST_FWD_GET);
    bind_text(s, 1, client);
    bind_i64(s, 2, task);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        out->found = true;
        out->seq = column_u64(s, 0);
        out->fp_seq = column_u64(s, 1);
        if (column_text(s, 2, out->fp, sizeof out->fp) < 0)
            r = reject(st, "the stored fingerprint of task %" PRId64 " is too long", task);
        out->sent_ms = sqlite3_column_int64(s, 3);
        if (r == RT_OK && column_text(s, 4, out->updated, sizeof out->updated) < 0)
            r = reject(st, "the stored updated value of task %" PRId64 " is too long", task);
    } else if (rc != SQLITE_DONE) {
        r = db_fail(st, rc, "reading a forward seq");
    }
    stmt_done(s);
    if (r != RT_OK)
        memset(out, 0, sizeof *out);
    return r;
}

rt_status store_fwd_confirm(struct store *st, const char *client, int64_t task, uint64_t seq,
                            const char *fp, int64_t now_ms)
{
    rt_status r = check_client(st, client);
    if (r == RT_OK)
        r = check_u64(st, seq, "seq");
    if (r == RT_OK)
        r = check_fp(st, fp);
    if (r != RT_OK)
        return r;
    sqlite3_stmt *s = stmt(st, ST_FWD_CONFIRM);
    bind_text(s, 1, client);
    bind_i64(s, 2, task);
    bind_u64(s, 3, seq);
    bind_text(s, 4, fp ? fp : "");
    bind_i64(s, 5, now_ms);
    return run(st, s, "recording a forward confirmation");
}

rt_status store_fwd_seen(struct store *st, const char *client, int64_t task, const char *updated)
{
    rt_status r = check_client(st, client);
    if (r != RT_OK)
        return r;
    updated = updated ? updated : "";
    if (strlen(updated) > STORE_UPDATED_MAX)
        return reject(st, "the updated value of task %" PRId64 " is longer than %d bytes", task,
                      STORE_UPDATED_MAX);
    sqlite3_stmt *s = stmt(st, ST_FWD_SEEN);
    bind_text(s, 1, client);
    bind_i64(s, 2, task);
    bind_text(s, 3, updated);
    return run(st, s, "recording when a task was last seen");
}

/* ---- links ------------------------------------------------------------- */

static int read_link(sqlite3_stmt *s, struct store_link *out)
{
    memset(out, 0, sizeof *out);
    out->found = true;
    if (column_text(s, 0, out->client, sizeof out->client) < 0)
        return -1;
    out->src_task = sqlite3_column_int64(s, 1);
    out->dst_task = sqlite3_column_int64(s, 2);
    out->last_seq = column_u64(s, 3);
    out->rev_seq = column_u64(s, 4);
    if (column_text(s, 5, out->rev_fp, sizeof out->rev_fp) < 0)
        return -1;
    out->notes_sent = column_u64(s, 6);
    out->updated_ms = sqlite3_column_int64(s, 7);
    if (column_text(s, 8, out->applied, sizeof out->applied) < 0)
        return -1;
    return 0;
}

/* Runs a link query expected to return at most one row. */
static rt_status link_one(struct store *st, sqlite3_stmt *s, struct store_link *out)
{
    rt_status r = RT_OK;
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        if (read_link(s, out) < 0)
            r = reject(st, "a stored link holds a value longer than its cap");
    } else if (rc != SQLITE_DONE) {
        r = db_fail(st, rc, "reading a link");
    }
    stmt_done(s);
    if (r != RT_OK || rc != SQLITE_ROW)
        memset(out, 0, sizeof *out);
    return r;
}

rt_status store_link_get(struct store *st, const char *client, int64_t src_task,
                         struct store_link *out)
{
    memset(out, 0, sizeof *out);
    rt_status r = check_client(st, client);
    if (r != RT_OK)
        return r;
    sqlite3_stmt *s = stmt(st, ST_LINK_GET);
    bind_text(s, 1, client);
    bind_i64(s, 2, src_task);
    return link_one(st, s, out);
}

rt_status store_link_by_dst(struct store *st, const char *client, int64_t dst_task,
                            struct store_link *out)
{
    memset(out, 0, sizeof *out);
    rt_status r = check_client(st, client);
    if (r != RT_OK)
        return r;
    sqlite3_stmt *s = stmt(st, ST_LINK_BY_DST);
    bind_text(s, 1, client);
    bind_i64(s, 2, dst_task);
    return link_one(st, s, out);
}

rt_status store_link_put(struct store *st, const struct store_link *link)
{
    rt_status r = check_client(st, link->client);
    if (r == RT_OK)
        r = check_u64(st, link->last_seq, "last_seq");
    if (r == RT_OK)
        r = check_u64(st, link->rev_seq, "rev_seq");
    if (r == RT_OK)
        r = check_u64(st, link->notes_sent, "notes_sent");
    if (r == RT_OK && strnlen(link->rev_fp, sizeof link->rev_fp) == sizeof link->rev_fp)
        r = reject(st, "rev_fp is not terminated within %d bytes", STORE_FP_MAX);
    if (r == RT_OK && strnlen(link->applied, sizeof link->applied) == sizeof link->applied)
        r = reject(st, "applied is not terminated within %d bytes", STORE_APPLIED_MAX);
    if (r != RT_OK)
        return r;
    sqlite3_stmt *s = stmt(st, ST_LINK_PUT);
    bind_text(s, 1, link->client);
    bind_i64(s, 2, link->src_task);
    bind_i64(s, 3, link->dst_task);
    bind_u64(s, 4, link->last_seq);
    bind_u64(s, 5, link->rev_seq);
    bind_text(s, 6, link->rev_fp);
    bind_u64(s, 7, link->notes_sent);
    bind_i64(s, 8, link->updated_ms);
    bind_text(s, 9, link->applied);
    return run(st, s, "storing a link");
}

rt_status store_link_next_rev_seq(struct store *st, const char *client, int64_t src_task,
                                  uint64_t *seq)
{
    *seq = 0;
    rt_status r = check_client(st, client);
    if (r != RT_OK)
        return r;
    sqlite3_stmt *s = stmt(st, ST_LINK_NEXT_REV);
    bind_text(s, 1, client);
    bind_i64(s, 2, src_task);
    bool found = false;
    sqlite3_int64 v = 0;
    r = run_ints(st, s, "allocating a reverse seq", &found, &v, NULL);
    if (r != RT_OK)
        return r;
    if (!found)
        return reject(st, "no link for client \"%s\" task %" PRId64, client, src_task);
    *seq = v > 0 ? (uint64_t)v : 0;
    return RT_OK;
}

rt_status store_link_count(struct store *st, const char *client, uint64_t *n)
{
    *n = 0;
    sqlite3_stmt *s;
    if (client) {
        rt_status r = check_client(st, client);
        if (r != RT_OK)
            return r;
        s = stmt(st, ST_LINK_COUNT);
        bind_text(s, 1, client);
    } else {
        s = stmt(st, ST_LINK_COUNT_ALL);
    }
    sqlite3_int64 c = 0;
    rt_status r = run_ints(st, s, "counting links", NULL, &c, NULL);
    if (r == RT_OK && c > 0)
        *n = (uint64_t)c;
    return r;
}

rt_status store_link_list(struct store *st, const char *client, int64_t after_src_task, size_t max,
                          struct store_link *out, size_t *n)
{
    *n = 0;
    rt_status r = check_client(st, client);
    if (r != RT_OK || max == 0)
        return r;
    sqlite3_stmt *s = stmt(st, ST_LINK_LIST);
    bind_text(s, 1, client);
    bind_i64(s, 2, after_src_task);
    bind_limit(s, 3, max);
    int rc = SQLITE_DONE;
    while (*n < max && (rc = sqlite3_step(s)) == SQLITE_ROW) {
        if (read_link(s, &out[*n]) < 0) {
            r = reject(st, "a stored link holds a value longer than its cap");
            break;
        }
        (*n)++;
    }
    if (r == RT_OK && *n < max && rc != SQLITE_DONE)
        r = db_fail(st, rc, "listing links");
    stmt_done(s);
    if (r != RT_OK)
        *n = 0;
    return r;
}

/* ---- reverse applied state --------------------------------------------- */

rt_status store_rev_get(struct store *st, const char *client, int64_t task, struct store_rev *out)
{
    memset(out, 0, sizeof *out);
    rt_status r = check_client(st, client);
    if (r != RT_OK)
        return r;
    sqlite3_stmt *s = stmt(st, ST_REV_GET);
    bind_text(s, 1, client);
    bind_i64(s, 2, task);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        out->found = true;
        sqlite3_int64 seq = sqlite3_column_int64(s, 0);
        sqlite3_int64 notes = sqlite3_column_int64(s, 1);
        out->seq = seq > 0 ? (uint64_t)seq : 0;
        out->notes_applied = notes > 0 ? (uint64_t)notes : 0;
        if (column_text(s, 2, out->applied, sizeof out->applied) < 0)
            r = reject(st, "the stored reverse state of task %" PRId64 " is too long", task);
    } else if (rc != SQLITE_DONE) {
        r = db_fail(st, rc, "reading reverse state");
    }
    stmt_done(s);
    if (r != RT_OK)
        memset(out, 0, sizeof *out);
    return r;
}

rt_status store_rev_put(struct store *st, const char *client, int64_t task, uint64_t seq,
                        uint64_t notes_applied, const char *applied)
{
    rt_status r = check_client(st, client);
    if (r == RT_OK)
        r = check_u64(st, seq, "seq");
    if (r == RT_OK)
        r = check_u64(st, notes_applied, "notes_applied");
    applied = applied ? applied : "";
    if (r == RT_OK && strlen(applied) > STORE_APPLIED_MAX)
        r = reject(st, "applied is longer than %d bytes", STORE_APPLIED_MAX);
    if (r != RT_OK)
        return r;
    sqlite3_stmt *s = stmt(st, ST_REV_PUT);
    bind_text(s, 1, client);
    bind_i64(s, 2, task);
    bind_u64(s, 3, seq);
    bind_u64(s, 4, notes_applied);
    bind_text(s, 5, applied);
    return run(st, s, "storing reverse state");
}

/* ---- meta -------------------------------------------------------------- */

static rt_status check_key(struct store *st, const char *key)
{
    if (!key || !*key)
        return reject(st, "meta key is empty");
    if (strnlen(key, STORE_META_KEY_MAX + 1) > STORE_META_KEY_MAX)
        return reject(st, "meta key is longer than %d bytes", STORE_META_KEY_MAX);
    return RT_OK;
}

rt_status store_meta_get(struct store *st, const char *key, char *buf, size_t buflen, bool *found)
{
    *found = false;
    if (buflen)
        buf[0] = '\0';
    rt_status r = check_key(st, key);
    if (r != RT_OK)
        return r;
    sqlite3_stmt *s = stmt(st, ST_META_GET);
    bind_text(s, 1, key);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        if (!buflen || column_text(s, 0, buf, buflen) < 0)
            r = reject(st, "meta value of \"%s\" does not fit in %zu bytes", key, buflen);
        else
            *found = true;
    } else if (rc != SQLITE_DONE) {
        r = db_fail(st, rc, "reading a meta value");
    }
    stmt_done(s);
    if (r != RT_OK && buflen)
        buf[0] = '\0';
    return r;
}

rt_status store_meta_set(struct store *st, const char *key, const char *value)
{
    rt_status r = check_key(st, key);
    if (r != RT_OK)
        return r;
    if (!value)
        return reject(st, "meta value of \"%s\" is NULL", key);
    if (strnlen(value, STORE_META_VALUE_MAX + 1) > STORE_META_VALUE_MAX)
        return reject(st, "meta value of \"%s\" is longer than %d bytes", key,
                      STORE_META_VALUE_MAX);
    sqlite3_stmt *s = stmt(st, ST_META_SET);
    bind_text(s, 1, key);
    bind_text(s, 2, value);
    return run(st, s, "storing a meta value");
}

rt_status store_meta_get_i64(struct store *st, const char *key, int64_t *value, bool *found)
{
    *value = 0;
    char buf[32];
    rt_status r = store_meta_get(st, key, buf, sizeof buf, found);
    if (r != RT_OK || !*found)
        return r;
    char *end = NULL;
    errno = 0;
    long long v = strtoll(buf, &end, 10);
    if (errno || end == buf || *end) {
        *found = false;
        return reject(st, "meta value of \"%s\" is not an integer", key);
    }
    *value = (int64_t)v;
    return RT_OK;
}

rt_status store_meta_set_i64(struct store *st, const char *key, int64_t value)
{
    char buf[32];
    snprintf(buf, sizeof buf, "%" PRId64, value);
    return store_meta_set(st, key, buf);
}

/* ---- resync ------------------------------------------------------------ */

rt_status store_fwd_forget(struct store *st, const char *client, int64_t task, uint64_t *n)
{
    if (n)
        *n = 0;
    rt_status r = check_client(st, client);
    if (r != RT_OK)
        return r;
    sqlite3_stmt *s = stmt(st, ST_FWD_FORGET);
    bind_text(s, 1, client);
    bind_i64(s, 2, task);
    r = run(st, s, "forgetting what was sent for a task");
    if (r == RT_OK && n)
        *n = (uint64_t)sqlite3_changes(st->db);
    return r;
}

rt_status store_outbox_add_known(struct store *st, const char *client, int64_t now_ms, uint64_t *n)
{
    if (n)
        *n = 0;
    rt_status r = check_client(st, client);
    if (r != RT_OK)
        return r;
    sqlite3_stmt *s = stmt(st, ST_OUTBOX_ADD_KNOWN);
    bind_text(s, 1, client);
    bind_i64(s, 2, now_ms);
    r = run(st, s, "recording events for every known task");
    if (r == RT_OK && n)
        *n = (uint64_t)sqlite3_changes(st->db);
    return r;
}

/* Removes every "state=..." entry from an fp set (k=v;k=v), in place. */
static void applied_drop_state(char *set)
{
    static const char key[] = "state=";
    char *out = set;
    const char *p = set;
    while (*p) {
        size_t n = strcspn(p, ";");
        if (!(n >= sizeof(key) - 1 && strncmp(p, key, sizeof(key) - 1) == 0) && n > 0) {
            if (out != set)
                *out++ = ';';
            memmove(out, p, n);
            out += n;
        }
        p += n;
        if (*p == ';')
            p++;
    }
    *out = '\0';
}

/* Rows handled per batch by store_link_forget_state(). */
#define STORE_FORGET_BATCH 256

struct forget_row {
    char client[STORE_CLIENT_MAX + 1];
    int64_t src_task;
    char applied[STORE_APPLIED_MAX + 1];
};

/* Reads the next batch of links that still hold a "state" key. */
static rt_status forget_batch(struct store *st, const char *client, int64_t src_task,
                              struct forget_row *rows, size_t *n)
{
    *n = 0;
    sqlite3_stmt *s = stmt(st, ST_LINK_STATE_BATCH);
    bind_text(s, 1, client);
    bind_i64(s, 2, src_task);
    bind_limit(s, 3, STORE_FORGET_BATCH);
    rt_status r = RT_OK;
    int rc = SQLITE_DONE;
    while (*n < STORE_FORGET_BATCH && (rc = sqlite3_step(s)) == SQLITE_ROW) {
        struct forget_row *row = &rows[*n];
        if (column_text(s, 0, row->client, sizeof row->client) < 0 ||
            column_text(s, 2, row->applied, sizeof row->applied) < 0) {
            r = reject(st, "a stored link holds a value longer than its cap");
            break;
        }
        row->src_task = sqlite3_column_int64(s, 1);
        (*n)++;
    }
    if (r == RT_OK && *n < STORE_FORGET_BATCH && rc != SQLITE_DONE)
        r = db_fail(st, rc, "listing links to forget");
    stmt_done(s);
    return r;
}

rt_status store_link_forget_state(struct store *st, const char *client, int64_t src_task,
                                  uint64_t *n)
{
    if (n)
        *n = 0;
    rt_status r = client ? check_client(st, client) : RT_OK;
    if (r != RT_OK)
        return r;
    struct forget_row *rows = malloc(STORE_FORGET_BATCH * sizeof(*rows));
    if (!rows)
        return reject(st, "out of memory forgetting published state");
    bool own_txn = !st->in_txn;
    if (own_txn && (r = store_begin(st)) != RT_OK)
        goto free_rows;

    sqlite3_stmt *s = stmt(st, ST_LINK_FORGET_FP);
    bind_text(s, 1, client);
    bind_i64(s, 2, src_task);
    if ((r = run(st, s, "forgetting published state")) != RT_OK)
        goto rollback;
    uint64_t touched = (uint64_t)sqlite3_changes(st->db);

    for (;;) {
        size_t got = 0;
        if ((r = forget_batch(st, client, src_task, rows, &got)) != RT_OK)
            goto rollback;
        if (got == 0)
            break;
        for (size_t i = 0; i < got; i++) {
            char before[STORE_APPLIED_MAX + 1];
            memcpy(before, rows[i].applied, sizeof before);
            applied_drop_state(rows[i].applied);
            if (strcmp(before, rows[i].applied) == 0) {
                /* The query and the parser disagree about the set: stop
                 * rather than loop on the same row. */
                r = reject(st, "cannot remove the state key of link (%s, %" PRId64 ")",
                           rows[i].client, rows[i].src_task);
                goto rollback;
            }
            s = stmt(st, ST_LINK_SET_APPLIED);
            bind_text(s, 1, rows[i].client);
            bind_i64(s, 2, rows[i].src_task);
            bind_text(s, 3, rows[i].applied);
            if ((r = run(st, s, "forgetting published state")) != RT_OK)
                goto rollback;
        }
    }
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
