/*
 * store_schema.c - the store's tables and the statements run on them
 * (store_db.h): the migrations that take a database from one schema
 * version to the next, the SQL of every statement of enum store_stmt_id,
 * and preparing them once per open.
 */
#include "store_db.h"

#include <stdio.h>

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
    /* 4: the retry copies an applier watches until they come back from
     * the broker's delay queues (store.h, store_retry.c). */
    "CREATE TABLE retry ("
    "  dir INTEGER NOT NULL,"
    "  client TEXT NOT NULL,"
    "  task INTEGER NOT NULL,"
    "  seq INTEGER NOT NULL,"
    "  attempts INTEGER NOT NULL,"
    "  due_ms INTEGER NOT NULL,"
    "  user TEXT NOT NULL DEFAULT '',"
    "  message_id TEXT NOT NULL DEFAULT '',"
    "  reason TEXT NOT NULL DEFAULT '',"
    "  body BLOB NOT NULL,"
    "  PRIMARY KEY (dir, client, task));",
    /* 5: indexes that cover the whole order of the two due scans. On
     * first_ms alone, outbox rows recorded in the same millisecond (a
     * reconciliation's page, a bulk import) were sorted again by (client,
     * task) on every scan: each scan read and sorted every row of the
     * backlog to return 64, and draining a backlog of n rows cost n^2/16
     * row reads. The retry watch's look (ST_RETRY_DUE) had no index at
     * all: every look read and sorted every watched copy, bodies and all.
     * Now a scan stops after the rows it returns. */
    "DROP INDEX IF EXISTS outbox_first_ms;"
    "CREATE INDEX IF NOT EXISTS outbox_due ON outbox (first_ms, client, task, next_ms);"
    "CREATE INDEX IF NOT EXISTS retry_due ON retry (dir, due_ms, client, task);",
};

#define MIGRATION_COUNT ((int)(sizeof migrations / sizeof migrations[0]))

_Static_assert(sizeof migrations / sizeof migrations[0] == STORE_SCHEMA_VERSION,
               "STORE_SCHEMA_VERSION must be the number of migrations");

/* Every statement the store runs (enum store_stmt_id, store_db.h) is
 * prepared once at open: the outbox relay makes tens of thousands of calls
 * and should not parse SQL for each. */

#define LINK_COLUMNS                                                                               \
    "client, src_task, dst_task, last_seq, rev_seq, rev_fp, notes_sent, updated_ms, applied"

static const char *const store_schema_sql[ST_COUNT] = {
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
    /* The links whose applied set still holds a "state" key
     * (LINKSET_LINK_STATE, common/linkset.h; GLOB: case sensitive, as the
     * keys are); each batch removes the key from the rows it returns, so
     * the next one moves on. */
    [ST_LINK_STATE_BATCH] = "SELECT client, src_task, applied FROM links"
                            " WHERE (?1 IS NULL OR client = ?1) AND (?2 = 0 OR src_task = ?2)"
                            " AND (';' || applied) GLOB '*;state=*'"
                            " ORDER BY client, src_task LIMIT ?3",
    [ST_LINK_SET_APPLIED] = "UPDATE links SET applied = ?3 WHERE client = ?1 AND src_task = ?2",
    /* ?1 now, ?2 how far the clock went back, ?3 the longest deferral. */
    [ST_OUTBOX_RESCHEDULE] =
        "UPDATE outbox SET next_ms = MAX(?1, MIN(next_ms - ?2, ?1 + ?3))"
        " WHERE next_ms > ?1 AND next_ms <> MAX(?1, MIN(next_ms - ?2, ?1 + ?3))",
    /* A copy of an older seq never replaces the watch of a newer one. */
    [ST_RETRY_PUT] = "INSERT INTO retry"
                     " (client, task, dir, seq, attempts, due_ms, user, message_id, reason, body)"
                     " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
                     " ON CONFLICT (dir, client, task) DO UPDATE SET"
                     " seq = excluded.seq, attempts = excluded.attempts,"
                     " due_ms = excluded.due_ms, user = excluded.user,"
                     " message_id = excluded.message_id, reason = excluded.reason,"
                     " body = excluded.body WHERE excluded.seq >= seq",
    [ST_RETRY_CLEAR] = "DELETE FROM retry WHERE client = ?1 AND task = ?2 AND dir = ?3"
                       " AND seq <= ?4",
    [ST_RETRY_DUE] = "SELECT client, task, seq, attempts, due_ms, user, message_id, reason, body"
                     " FROM retry WHERE dir = ?1 AND due_ms <= ?2"
                     " ORDER BY due_ms, client, task LIMIT ?3",
    [ST_RETRY_PUSH] = "UPDATE retry SET due_ms = ?5"
                      " WHERE client = ?1 AND task = ?2 AND dir = ?3 AND seq = ?4",
    [ST_RETRY_COUNT] = "SELECT COUNT(*) FROM retry WHERE dir = ?1",
};

/* Reads PRAGMA user_version. */
static rt_status store_schema_version(struct store *st, int *version)
{
    sqlite3_stmt *s = NULL;
    int rc = sqlite3_prepare_v2(st->db, "PRAGMA user_version", -1, &s, NULL);
    if (rc != SQLITE_OK)
        return store_db_fail(st, rc, "reading the schema version");
    rc = sqlite3_step(s);
    rt_status r = RT_OK;
    if (rc == SQLITE_ROW)
        *version = sqlite3_column_int(s, 0);
    else
        r = store_db_fail(st, rc, "reading the schema version");
    sqlite3_finalize(s);
    return r;
}

/* The one transaction makes two processes opening a new file at once not
 * both create it: the second waits, then sees the version the first
 * wrote. */
rt_status store_schema_migrate(struct store *st, const char *path)
{
    rt_status r = store_db_exec(st, "BEGIN IMMEDIATE", "starting the schema migration");
    if (r != RT_OK)
        return r;
    int version = 0;
    r = store_schema_version(st, &version);
    if (r != RT_OK)
        goto rollback;
    if (version < 0 || version > MIGRATION_COUNT) {
        r = store_db_reject(st,
                            "\"%s\" has schema version %d, but this remotetask knows versions up"
                            " to %d: it was written by a newer remotetask",
                            path, version, MIGRATION_COUNT);
        goto rollback;
    }
    for (int v = version; v < MIGRATION_COUNT; v++) {
        char what[64];
        snprintf(what, sizeof what, "schema migration to version %d", v + 1);
        r = store_db_exec(st, migrations[v], what);
        if (r != RT_OK)
            goto rollback;
    }
    if (version < MIGRATION_COUNT) {
        /* PRAGMA takes no bound parameters; the number is ours. */
        char sql[64];
        snprintf(sql, sizeof sql, "PRAGMA user_version = %d", MIGRATION_COUNT);
        r = store_db_exec(st, sql, "setting the schema version");
        if (r != RT_OK)
            goto rollback;
    }
    return store_db_exec(st, "COMMIT", "committing the schema migration");

rollback:
    sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
    return r;
}

/* Another version's schema is not read: an older one lacks tables this
 * code reads, a newer one may mean something else by them. */
rt_status store_schema_check(struct store *st)
{
    int version = 0;
    rt_status r = store_schema_version(st, &version);
    if (r == RT_OK && version > MIGRATION_COUNT)
        r = store_db_reject(st,
                            "it has schema version %d, but this remotetask knows versions up to"
                            " %d: it was written by a newer remotetask",
                            version, MIGRATION_COUNT);
    else if (r == RT_OK && version < MIGRATION_COUNT)
        r = store_db_reject(st,
                            "it has schema version %d, older than this remotetask's %d: start"
                            " this version's remotetaskd once to bring it up to date",
                            version, MIGRATION_COUNT);
    return r;
}

rt_status store_schema_prepare(struct store *st)
{
    for (int i = 0; i < ST_COUNT; i++) {
        int rc = sqlite3_prepare_v3(st->db, store_schema_sql[i], -1, SQLITE_PREPARE_PERSISTENT,
                                    &st->stmt[i], NULL);
        if (rc != SQLITE_OK)
            return store_db_fail(st, rc, "preparing a statement");
    }
    return RT_OK;
}
