#include "store_journal.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "store_db.h"

/* A detail is formatted into this much before it is cut, so that a cut
 * shows ("..."), whatever the caller passed. */
#define JOURNAL_FORMAT_MAX 1024
/* The first room of the queue; it doubles up to STORE_JOURNAL_QUEUE_MAX. */
#define JOURNAL_QUEUE_FIRST 32
#define JOURNAL_DAY_MS      (24LL * 60 * 60 * 1000)
#define JOURNAL_CUT_MARK    "..."

/* The journal's statements, prepared the first time the journal is used
 * on a handle (a handle of the command line that never reads it prepares
 * none). */
enum journal_stmt_id {
    JS_INSERT,
    JS_READ,
    JS_AGE,
    JS_NEXT_TASK,
    JS_NTH,
    JS_DELETE_TASK,
    JS_FIND_DST,
    JS_COUNT
};

static const char *const journal_sql[JS_COUNT] = {
    [JS_INSERT] = "INSERT INTO journal"
                  " (ts_ms, side, client, src_task, dst_task, event, seq, detail)"
                  " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    [JS_READ] = "SELECT id, ts_ms, side, client, src_task, dst_task, event, seq, detail"
                " FROM journal WHERE side = ?1 AND client = ?2 AND src_task = ?3"
                " ORDER BY id DESC LIMIT ?4",
    /* Only the oldest ?2 rows (in the order written) are looked at, so the
     * statement never scans the table: rows are written in time order, and
     * those a wall clock set back wrote out of it wait for a later batch.
     * ?3 = 1 (the journal is off) takes them whatever their age. */
    [JS_AGE] = "DELETE FROM journal WHERE id IN (SELECT id FROM"
               " (SELECT id, ts_ms FROM journal ORDER BY id LIMIT ?2)"
               " WHERE ts_ms < ?1 OR ?3 = 1)",
    /* The next task after the cursor, one step of the index. */
    [JS_NEXT_TASK] = "SELECT side, client, src_task FROM journal"
                     " WHERE (side, client, src_task) > (?1, ?2, ?3)"
                     " ORDER BY side, client, src_task LIMIT 1",
    /* The newest row of the task that is past the count (OFFSET = entries). */
    [JS_NTH] = "SELECT id FROM journal WHERE side = ?1 AND client = ?2 AND src_task = ?3"
               " ORDER BY id DESC LIMIT 1 OFFSET ?4",
    [JS_DELETE_TASK] = "DELETE FROM journal WHERE id IN (SELECT id FROM journal"
                       " WHERE side = ?1 AND client = ?2 AND src_task = ?3 AND id <= ?4"
                       " ORDER BY id LIMIT ?5)",
    [JS_FIND_DST] = "SELECT client, src_task FROM journal"
                    " WHERE side = 2 AND dst_task = ?1 AND (?2 IS NULL OR client = ?2)"
                    " ORDER BY id DESC LIMIT 1",
};

/* A row waiting in memory. */
struct journal_entry {
    int64_t ts_ms;
    int side;
    int64_t src_task;
    int64_t dst_task;
    uint64_t seq;
    char client[STORE_CLIENT_MAX + 1];
    char event[STORE_JOURNAL_EVENT_MAX + 1];
    char detail[STORE_JOURNAL_DETAIL_MAX + 1];
};

struct store_journal {
    sqlite3_stmt *stmt[JS_COUNT];
    bool prepared;
    bool configured;
    int entries;
    int days;
    /* The queue: rows [0, len) in the order added. Rows from mark on were
     * added inside the open transaction; inserted of them are in it. */
    struct journal_entry *q;
    size_t len;
    size_t cap;
    size_t mark;
    size_t inserted;
    int64_t first_at; /* monotonic ms: when the queue last became non-empty */
    bool force;       /* the next commit writes the queue whatever its size */
    int64_t next_prune;
    bool walked; /* the last batch reached the end of the tasks */
    /* The pruning walk: the last task whose count was checked. */
    int cur_side;
    char cur_client[STORE_CLIENT_MAX + 1];
    int64_t cur_task;
    struct store_journal_stats stats;
};

const char *store_side_name(enum store_side side)
{
    switch (side) {
    case STORE_SIDE_CLIENT: return "client";
    case STORE_SIDE_SERVER: return "server";
    }
    return "?";
}

/* ---- text -------------------------------------------------------------- */

/* The length of the UTF-8 sequence at p (at most left bytes), or 0 when
 * it is not one (RFC 3629: no overlong forms, no surrogates, nothing past
 * U+10FFFF), which is what jansson accepts when trace prints JSON. */
static size_t utf8_len(const unsigned char *p, size_t left)
{
    unsigned char c = p[0];
    size_t n;
    unsigned char lo = 0x80, hi = 0xBF;

    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        n = 2;
    else if (c >= 0xE0 && c <= 0xEF)
        n = 3;
    else if (c >= 0xF0 && c <= 0xF4)
        n = 4;
    else
        return 0;
    if (c == 0xE0)
        lo = 0xA0;
    else if (c == 0xED)
        hi = 0x9F;
    else if (c == 0xF0)
        lo = 0x90;
    else if (c == 0xF4)
        hi = 0x8F;
    if (left < n || p[1] < lo || p[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++)
        if (p[i] < 0x80 || p[i] > 0xBF)
            return 0;
    return n;
}

/* Copies src into dst (size bytes, size > sizeof JOURNAL_CUT_MARK) as one
 * clean line: control characters become spaces, bytes that are not UTF-8
 * become '?', and a text that does not fit is cut on a character boundary
 * and ends with JOURNAL_CUT_MARK. */
static void journal_clean(char *dst, size_t size, const char *src)
{
    const unsigned char *p = (const unsigned char *)(src ? src : "");
    const size_t mark = sizeof(JOURNAL_CUT_MARK) - 1, room = size - 1;
    size_t left = strlen((const char *)p), out = 0;
    size_t keep = 0; /* the last boundary after which the mark still fits */

    while (left) {
        size_t n = utf8_len(p, left);
        size_t width = n ? n : 1;
        if (out + width > room) {
            memcpy(dst + keep, JOURNAL_CUT_MARK, mark);
            out = keep + mark;
            break;
        }
        if (!n)
            dst[out] = '?';
        else if (n == 1 && (*p < 0x20 || *p == 0x7f))
            dst[out] = ' ';
        else
            memcpy(dst + out, p, n);
        out += width;
        p += width;
        left -= width;
        if (out + mark <= room)
            keep = out;
    }
    dst[out] = '\0';
}

/* ---- statements -------------------------------------------------------- */

/* The journal's part of the handle, made and prepared when first needed.
 * NULL with the reason in the handle when that failed. */
static struct store_journal *journal_get(struct store *st, rt_status *r)
{
    struct store_journal *j = st->journal;
    *r = RT_OK;
    if (!j) {
        j = calloc(1, sizeof(*j));
        if (!j) {
            *r = RT_RETRY;
            store_db_reject(st, "out of memory for the journal");
            return NULL;
        }
        st->journal = j;
    }
    if (!j->prepared) {
        for (int i = 0; i < JS_COUNT; i++) {
            if (j->stmt[i])
                continue;
            int rc = sqlite3_prepare_v3(st->db, journal_sql[i], -1, SQLITE_PREPARE_PERSISTENT,
                                        &j->stmt[i], NULL);
            if (rc != SQLITE_OK) {
                *r = store_db_fail(st, rc, "preparing the journal's statements");
                return NULL;
            }
        }
        j->prepared = true;
    }
    return j;
}

static void copy_column(sqlite3_stmt *s, int i, char *dst, size_t size)
{
    const unsigned char *t = sqlite3_column_text(s, i);
    snprintf(dst, size, "%s", t ? (const char *)t : "");
}

/* ---- configuration ----------------------------------------------------- */

rt_status store_journal_configure(struct store *st, int entries, int days)
{
    rt_status r;
    if (st->readonly)
        return store_db_reject(st, "the journal cannot be written through a read-only handle");
    if (entries < 0 || entries > STORE_JOURNAL_ENTRIES_MAX)
        return store_db_reject(st, "journal entries %d is not 0..%d", entries,
                               STORE_JOURNAL_ENTRIES_MAX);
    if (days < 1 || days > STORE_JOURNAL_DAYS_MAX)
        return store_db_reject(st, "journal days %d is not 1..%d", days, STORE_JOURNAL_DAYS_MAX);
    struct store_journal *j = journal_get(st, &r);
    if (!j)
        return r;
    j->entries = entries;
    j->days = days;
    j->configured = true;
    j->next_prune = 0; /* new bounds: a batch at the next tick */
    return RT_OK;
}

/* ---- the queue --------------------------------------------------------- */

void store_journal_add(struct store *st, int64_t ts_ms, enum store_side side, const char *client,
                       int64_t src_task, int64_t dst_task, const char *event, uint64_t seq,
                       const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    store_journal_vadd(st, ts_ms, side, client, src_task, dst_task, event, seq, fmt, ap);
    va_end(ap);
}

void store_journal_vadd(struct store *st, int64_t ts_ms, enum store_side side, const char *client,
                        int64_t src_task, int64_t dst_task, const char *event, uint64_t seq,
                        const char *fmt, va_list ap)
{
    struct store_journal *j = st ? st->journal : NULL;
    char text[JOURNAL_FORMAT_MAX];

    if (!j || !j->configured || j->entries == 0)
        return;
    if (!client || !*client || strnlen(client, STORE_CLIENT_MAX + 1) > STORE_CLIENT_MAX ||
        j->len >= STORE_JOURNAL_QUEUE_MAX) {
        j->stats.dropped++;
        return;
    }
    if (j->len == j->cap) {
        size_t cap = j->cap ? j->cap * 2 : JOURNAL_QUEUE_FIRST;
        if (cap > STORE_JOURNAL_QUEUE_MAX)
            cap = STORE_JOURNAL_QUEUE_MAX;
        struct journal_entry *q = realloc(j->q, cap * sizeof(*q));
        if (!q) {
            j->stats.dropped++;
            return;
        }
        j->q = q;
        j->cap = cap;
    }
    struct journal_entry *e = &j->q[j->len];
    e->ts_ms = ts_ms > 0 ? ts_ms : clock_wall_ms();
    e->side = (int)side;
    e->src_task = src_task;
    e->dst_task = dst_task;
    e->seq = seq > (uint64_t)INT64_MAX ? (uint64_t)INT64_MAX : seq;
    snprintf(e->client, sizeof(e->client), "%s", client);
    journal_clean(e->event, sizeof(e->event), event);
    text[0] = '\0';
    if (fmt)
        vsnprintf(text, sizeof(text), fmt, ap);
    journal_clean(e->detail, sizeof(e->detail), text);
    if (j->len == 0)
        j->first_at = clock_mono_ms();
    j->len++;
}

/* Inserts the queued rows not yet in the open transaction. Returns RT_OK,
 * also when an insert failed but the transaction goes on (the rest stays
 * queued), or the failure when SQLite rolled the transaction back. */
static rt_status journal_insert_queued(struct store *st, struct store_journal *j)
{
    sqlite3_stmt *s = j->stmt[JS_INSERT];
    while (j->inserted < j->len) {
        const struct journal_entry *e = &j->q[j->inserted];
        sqlite3_bind_int64(s, 1, e->ts_ms);
        sqlite3_bind_int(s, 2, e->side);
        store_db_bind_text(s, 3, e->client);
        sqlite3_bind_int64(s, 4, e->src_task);
        sqlite3_bind_int64(s, 5, e->dst_task);
        store_db_bind_text(s, 6, e->event);
        sqlite3_bind_int64(s, 7, (sqlite3_int64)e->seq);
        store_db_bind_text(s, 8, e->detail);
        int rc = sqlite3_step(s);
        store_db_reset(s);
        if (rc != SQLITE_DONE) {
            /* The caller's work must not fail for the journal: unless
             * SQLite gave up the whole transaction, it commits without
             * the rest, which waits for the next commit. */
            if (sqlite3_get_autocommit(st->db))
                return store_db_fail(st, rc, "writing the journal");
            return RT_OK;
        }
        j->inserted++;
    }
    return RT_OK;
}

void store_journal_on_begin(struct store *st)
{
    struct store_journal *j = st->journal;
    if (!j)
        return;
    j->mark = j->len;
    j->inserted = 0;
}

rt_status store_journal_on_commit(struct store *st)
{
    struct store_journal *j = st->journal;
    if (!j || !j->prepared || j->len == 0)
        return RT_OK;
    if (!j->force && j->len < STORE_JOURNAL_BATCH_ROWS &&
        clock_mono_ms() - j->first_at < STORE_JOURNAL_BATCH_MS)
        return RT_OK;
    return journal_insert_queued(st, j);
}

void store_journal_on_end(struct store *st, bool ok)
{
    struct store_journal *j = st->journal;
    if (!j)
        return;
    if (ok) {
        size_t done = j->inserted;
        if (done) {
            memmove(j->q, j->q + done, (j->len - done) * sizeof(*j->q));
            j->len -= done;
            j->stats.written += done;
            if (j->len)
                j->first_at = clock_mono_ms();
        }
    } else if (j->len > j->mark) {
        /* Rows of work that was undone; the caller does it again and adds
         * them again. */
        j->len = j->mark;
    }
    j->mark = j->len;
    j->inserted = 0;
}

/* Runs body (a prune batch, or nothing: the commit writes the queue) in a
 * transaction whose commit is not synced: the journal never asks the
 * disk for a sync of its own, the next synced commit carries it. */
static rt_status journal_txn(struct store *st, struct store_journal *j, int64_t prune_at,
                             uint64_t *deleted);

rt_status store_journal_flush(struct store *st)
{
    rt_status r;
    if (st->in_txn)
        return store_db_reject(st, "the journal is written by store_commit() inside a transaction");
    struct store_journal *j = st->journal;
    if (!j || j->len == 0)
        return RT_OK;
    if (!journal_get(st, &r))
        return r;
    return journal_txn(st, j, 0, NULL);
}

void store_journal_on_free(struct store *st)
{
    struct store_journal *j = st->journal;
    if (!j)
        return;
    j->force = true;
    if (j->len && j->prepared && st->db && !st->readonly && !st->in_txn &&
        store_begin(st) == RT_OK && store_commit(st) != RT_OK)
        j->stats.dropped += j->len;
    for (int i = 0; i < JS_COUNT; i++)
        sqlite3_finalize(j->stmt[i]);
    free(j->q);
    free(j);
    st->journal = NULL;
}

void store_journal_stats(const struct store *st, struct store_journal_stats *out)
{
    memset(out, 0, sizeof(*out));
    if (!st || !st->journal)
        return;
    *out = st->journal->stats;
    out->queued = st->journal->len;
}

/* ---- pruning ----------------------------------------------------------- */

/* Moves the walk to the next task after the cursor; *found is false at the
 * end of the tasks (the walk starts over). */
static rt_status journal_next_task(struct store *st, struct store_journal *j, bool *found)
{
    sqlite3_stmt *s = j->stmt[JS_NEXT_TASK];
    sqlite3_bind_int(s, 1, j->cur_side);
    store_db_bind_text(s, 2, j->cur_client);
    sqlite3_bind_int64(s, 3, j->cur_task);
    int rc = sqlite3_step(s);
    rt_status r = RT_OK;
    *found = rc == SQLITE_ROW;
    if (rc == SQLITE_ROW) {
        j->cur_side = sqlite3_column_int(s, 0);
        copy_column(s, 1, j->cur_client, sizeof(j->cur_client));
        j->cur_task = sqlite3_column_int64(s, 2);
    } else if (rc != SQLITE_DONE) {
        r = store_db_fail(st, rc, "walking the journal's tasks");
    }
    store_db_reset(s);
    return r;
}

/* Deletes at most max rows of the cursor's task past its count. */
static rt_status journal_trim_task(struct store *st, struct store_journal *j, uint64_t max,
                                   uint64_t *deleted)
{
    sqlite3_stmt *s = j->stmt[JS_NTH];
    sqlite3_bind_int(s, 1, j->cur_side);
    store_db_bind_text(s, 2, j->cur_client);
    sqlite3_bind_int64(s, 3, j->cur_task);
    sqlite3_bind_int64(s, 4, j->entries);
    int rc = sqlite3_step(s);
    sqlite3_int64 upto = rc == SQLITE_ROW ? sqlite3_column_int64(s, 0) : 0;
    store_db_reset(s);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        return store_db_fail(st, rc, "counting a task's journal");
    if (rc != SQLITE_ROW)
        return RT_OK;
    s = j->stmt[JS_DELETE_TASK];
    sqlite3_bind_int(s, 1, j->cur_side);
    store_db_bind_text(s, 2, j->cur_client);
    sqlite3_bind_int64(s, 3, j->cur_task);
    sqlite3_bind_int64(s, 4, upto);
    sqlite3_bind_int64(s, 5, (sqlite3_int64)max);
    rt_status r = store_db_run(st, s, "pruning a task's journal");
    if (r == RT_OK)
        *deleted += (uint64_t)sqlite3_changes(st->db);
    return r;
}

/* One batch inside the open transaction. */
static rt_status journal_prune_batch(struct store *st, struct store_journal *j, int64_t now_ms,
                                     uint64_t *deleted)
{
    sqlite3_stmt *s = j->stmt[JS_AGE];
    sqlite3_bind_int64(s, 1, now_ms - (int64_t)j->days * JOURNAL_DAY_MS);
    sqlite3_bind_int64(s, 2, STORE_JOURNAL_PRUNE_BATCH);
    sqlite3_bind_int(s, 3, j->entries == 0);
    rt_status r = store_db_run(st, s, "pruning the journal's oldest rows");
    if (r != RT_OK)
        return r;
    *deleted += (uint64_t)sqlite3_changes(st->db);
    j->walked = j->entries == 0;
    if (j->entries == 0)
        return RT_OK;
    for (int k = 0; k < STORE_JOURNAL_PRUNE_TASKS && *deleted < STORE_JOURNAL_PRUNE_BATCH; k++) {
        int side = j->cur_side;
        char client[STORE_CLIENT_MAX + 1];
        int64_t task = j->cur_task;
        bool found;
        memcpy(client, j->cur_client, sizeof(client));
        if ((r = journal_next_task(st, j, &found)) != RT_OK)
            return r;
        if (!found) {
            j->walked = true;
            j->cur_side = 0;
            j->cur_client[0] = '\0';
            j->cur_task = 0;
            break;
        }
        uint64_t before = *deleted;
        if ((r = journal_trim_task(st, j, STORE_JOURNAL_PRUNE_BATCH - *deleted, deleted)) != RT_OK)
            return r;
        if (*deleted >= STORE_JOURNAL_PRUNE_BATCH && *deleted > before) {
            /* The batch ended inside this task: the next one looks at it
             * again, in case rows of it are left over. */
            j->cur_side = side;
            memcpy(j->cur_client, client, sizeof(client));
            j->cur_task = task;
        }
    }
    return RT_OK;
}

static rt_status journal_txn(struct store *st, struct store_journal *j, int64_t prune_at,
                             uint64_t *deleted)
{
    uint64_t gone = 0;
    rt_status r;
    /* The journal's own rows are not worth a sync (store_sync.c). */
    bool relaxed = store_sync_relax(st);

    j->force = true;
    if ((r = store_begin(st)) != RT_OK)
        goto restore_sync;
    if (prune_at && (r = journal_prune_batch(st, j, prune_at, &gone)) != RT_OK) {
        store_rollback(st);
        goto restore_sync;
    }
    if ((r = store_commit(st)) == RT_OK) {
        j->stats.pruned += gone;
        if (deleted)
            *deleted = gone;
    }
restore_sync:
    j->force = false;
    store_sync_relax_end(st, relaxed);
    return r;
}

rt_status store_journal_prune(struct store *st, int64_t now_ms, uint64_t *deleted)
{
    rt_status r;
    if (deleted)
        *deleted = 0;
    if (st->in_txn)
        return store_db_reject(st, "the journal is pruned outside transactions");
    struct store_journal *j = journal_get(st, &r);
    if (!j)
        return r;
    if (!j->configured)
        return RT_OK;
    return journal_txn(st, j, now_ms > 0 ? now_ms : 1, deleted);
}

int64_t store_journal_tick(struct store *st, int64_t now_ms)
{
    struct store_journal *j = st->journal;
    if (!j || !j->configured || st->in_txn)
        return now_ms + STORE_JOURNAL_PRUNE_MS;
    int64_t mono = clock_mono_ms();
    bool flush = j->len > 0 && mono - j->first_at >= STORE_JOURNAL_FLUSH_MS;
    bool prune = now_ms >= j->next_prune;
    if (flush || prune) {
        uint64_t gone = 0;
        rt_status r = journal_txn(st, j, prune ? clock_wall_ms() : 0, &gone);
        if (r != RT_OK && j->len)
            j->first_at = mono; /* not before another STORE_JOURNAL_FLUSH_MS */
        /* A walk over every task that found nothing to delete: the next
         * one can wait (rows grow past their bounds slowly). */
        if (prune)
            j->next_prune =
                now_ms + (r == RT_OK && gone == 0 && j->walked ? STORE_JOURNAL_PRUNE_IDLE_MS
                                                               : STORE_JOURNAL_PRUNE_MS);
    }
    int64_t next = j->next_prune;
    if (j->len) {
        int64_t at = now_ms + (j->first_at + STORE_JOURNAL_FLUSH_MS - mono);
        if (at < next)
            next = at;
    }
    return next > now_ms ? next : now_ms;
}

/* ---- reading ----------------------------------------------------------- */

static int row_cmp(const void *a, const void *b)
{
    const struct store_journal_row *x = a, *y = b;
    if (x->ts_ms != y->ts_ms)
        return x->ts_ms < y->ts_ms ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

rt_status store_journal_read(struct store *st, enum store_side side, const char *client,
                             int64_t src_task, size_t max, struct store_journal_row *out, size_t *n)
{
    rt_status r;
    *n = 0;
    if ((r = store_db_check_client(st, client)) != RT_OK || max == 0)
        return r;
    struct store_journal *j = journal_get(st, &r);
    if (!j)
        return r;
    sqlite3_stmt *s = j->stmt[JS_READ];
    sqlite3_bind_int(s, 1, (int)side);
    store_db_bind_text(s, 2, client);
    sqlite3_bind_int64(s, 3, src_task);
    sqlite3_bind_int64(s, 4, max > (size_t)INT64_MAX ? INT64_MAX : (sqlite3_int64)max);
    int rc = SQLITE_DONE;
    while (*n < max && (rc = sqlite3_step(s)) == SQLITE_ROW) {
        struct store_journal_row *w = &out[*n];
        memset(w, 0, sizeof(*w));
        w->id = sqlite3_column_int64(s, 0);
        w->ts_ms = sqlite3_column_int64(s, 1);
        w->side = (enum store_side)sqlite3_column_int(s, 2);
        copy_column(s, 3, w->client, sizeof(w->client));
        w->src_task = sqlite3_column_int64(s, 4);
        w->dst_task = sqlite3_column_int64(s, 5);
        /* Written by this module, cut already; cut again against a file
         * edited by hand, and cleaned for the terminal and for JSON. */
        const unsigned char *t = sqlite3_column_text(s, 6);
        journal_clean(w->event, sizeof(w->event), (const char *)t);
        sqlite3_int64 seq = sqlite3_column_int64(s, 7);
        w->seq = seq > 0 ? (uint64_t)seq : 0;
        t = sqlite3_column_text(s, 8);
        journal_clean(w->detail, sizeof(w->detail), (const char *)t);
        (*n)++;
    }
    if (*n < max && rc != SQLITE_DONE)
        r = store_db_fail(st, rc, "reading the journal");
    store_db_reset(s);
    if (r != RT_OK) {
        *n = 0;
        return r;
    }
    qsort(out, *n, sizeof(*out), row_cmp);
    return RT_OK;
}

rt_status store_journal_find_target(struct store *st, const char *client, int64_t dst_task,
                                    char *client_out, int64_t *src_task, bool *found)
{
    rt_status r;
    *found = false;
    *src_task = 0;
    client_out[0] = '\0';
    if (client && (r = store_db_check_client(st, client)) != RT_OK)
        return r;
    struct store_journal *j = journal_get(st, &r);
    if (!j)
        return r;
    sqlite3_stmt *s = j->stmt[JS_FIND_DST];
    sqlite3_bind_int64(s, 1, dst_task);
    store_db_bind_text(s, 2, client);
    int rc = sqlite3_step(s);
    r = RT_OK;
    if (rc == SQLITE_ROW) {
        copy_column(s, 0, client_out, STORE_CLIENT_MAX + 1);
        *src_task = sqlite3_column_int64(s, 1);
        *found = true;
    } else if (rc != SQLITE_DONE) {
        r = store_db_fail(st, rc, "looking for a target task in the journal");
    }
    store_db_reset(s);
    return r;
}
