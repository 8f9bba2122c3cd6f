/*
 * test_journal.c - the task journal of the store (common/store_journal.h)
 * against a real database in a temporary directory: rows ride in the
 * caller's transactions and go with a rollback, a flush and store_free()
 * write what is queued, a second handle sees nothing before a commit,
 * pruning keeps the newest rows per task and drops old ones in bounded
 * batches, the journal turned off empties itself, details are cut and
 * cleaned, and the read-only handle of `trace` reads it all.
 */
#include <ftw.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "store.h"
#include "store_db.h"
#include "store_journal.h"

#define C      STORE_SIDE_CLIENT
#define S      STORE_SIDE_SERVER
#define DAY_MS (24LL * 60 * 60 * 1000)

struct fixture {
    char dir[64];
    char state[128];
    char db[192];
};

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    strcpy(f->dir, "/tmp/rt-test-journal-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->state, sizeof f->state, "%s/state", f->dir);
    snprintf(f->db, sizeof f->db, "%s/%s", f->state, STORE_FILE_NAME);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    int rc = nftw(f->dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return rc == 0 ? 0 : -1;
}

#define OK(st, call)                                                                               \
    do {                                                                                           \
        rt_status r_ = (call);                                                                     \
        if (r_ != RT_OK)                                                                           \
            fail_msg("%s: %s: %s", #call, rt_status_name(r_), store_strerror(st));                 \
    } while (0)

static struct store *open_journal(const struct fixture *f, int entries, int days)
{
    char err[512];
    struct store *st = store_open(f->state, err, sizeof err);
    if (!st)
        fail_msg("store_open: %s", err);
    OK(st, store_journal_configure(st, entries, days));
    return st;
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Rows in the file, counted by a connection of its own (what is on disk
 * for anyone else, not what one handle holds). */
static int disk_rows(const struct fixture *f, const char *where)
{
    sqlite3 *h = NULL;
    sqlite3_stmt *s = NULL;
    char sql[256];
    snprintf(sql, sizeof sql, "SELECT COUNT(*) FROM journal%s%s", where ? " WHERE " : "",
             where ? where : "");
    assert_int_equal(sqlite3_open_v2(f->db, &h, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_busy_timeout(h, 5000);
    assert_int_equal(sqlite3_prepare_v2(h, sql, -1, &s, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    int n = sqlite3_column_int(s, 0);
    sqlite3_finalize(s);
    sqlite3_close(h);
    return n;
}

/* PRAGMA synchronous of the handle's connection: 2 is FULL. */
static int synchronous(struct store *st)
{
    sqlite3_stmt *s = NULL;
    assert_int_equal(sqlite3_prepare_v2(st->db, "PRAGMA synchronous", -1, &s, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    int v = sqlite3_column_int(s, 0);
    sqlite3_finalize(s);
    return v;
}

static size_t read_rows(struct store *st, enum store_side side, const char *client, int64_t task,
                        struct store_journal_row *rows, size_t max)
{
    size_t n = 99999;
    OK(st, store_journal_read(st, side, client, task, max, rows, &n));
    return n;
}

/* ---- durability: the caller's transactions --------------------------- */

/* Rows wait in memory and ride in a commit of the caller's once
 * STORE_JOURNAL_BATCH_ROWS of them wait (added inside the transaction or
 * before it); nothing is on disk before. */
static void test_rows_ride_in_commits(void **state)
{
    struct fixture *f = *state;
    struct store *st = open_journal(f, 100, 30);

    store_journal_add(st, 0, C, "c1", 7, 0, JOURNAL_VIEWED, 0, "task.edit: ok");
    assert_int_equal(disk_rows(f, NULL), 0);
    struct store_journal_stats js;
    store_journal_stats(st, &js);
    assert_int_equal(js.queued, 1);

    /* One row more is no batch: the commit leaves them queued. */
    OK(st, store_begin(st));
    OK(st, store_fwd_confirm(st, "c1", 7, 1, "fp", 1000));
    store_journal_add(st, 0, C, "c1", 7, 0, JOURNAL_CONFIRMED, 1, NULL);
    OK(st, store_commit(st));
    store_journal_stats(st, &js);
    if (js.queued == 2)
        assert_int_equal(disk_rows(f, NULL), 0);
    else /* a loaded machine took STORE_JOURNAL_BATCH_MS between the adds */
        assert_int_equal(disk_rows(f, NULL), 2);

    /* A batch: the next commit carries every row, those added inside it
     * too, and nothing is on disk before that commit. */
    int before = disk_rows(f, NULL);
    OK(st, store_begin(st));
    for (int i = 0; i < STORE_JOURNAL_BATCH_ROWS; i++)
        store_journal_add(st, 0, C, "c1", 8, 0, JOURNAL_RECORDED, 0, "row %d", i);
    assert_int_equal(disk_rows(f, NULL), before);
    OK(st, store_commit(st));
    assert_int_equal(disk_rows(f, NULL), 2 + STORE_JOURNAL_BATCH_ROWS);
    store_journal_stats(st, &js);
    assert_int_equal(js.queued, 0);
    assert_int_equal(js.written, 2 + STORE_JOURNAL_BATCH_ROWS);

    struct store_journal_row rows[4];
    assert_int_equal(read_rows(st, C, "c1", 7, rows, 4), 2);
    assert_string_equal(rows[0].event, "viewed");
    assert_string_equal(rows[0].detail, "task.edit: ok");
    assert_int_equal(rows[0].seq, 0);
    assert_string_equal(rows[1].event, "confirmed");
    assert_int_equal(rows[1].seq, 1);
    assert_string_equal(rows[1].detail, "");
    assert_int_equal(rows[1].side, C);
    assert_string_equal(rows[1].client, "c1");
    assert_int_equal(rows[1].src_task, 7);
    assert_true(rows[0].ts_ms > 0 && rows[0].ts_ms <= rows[1].ts_ms);
    store_free(st);
}

/* A row that waited STORE_JOURNAL_BATCH_MS rides in the next commit, even
 * alone (waited for with a deadline: commits are made until it lands). */
static void test_old_row_rides_alone(void **state)
{
    struct fixture *f = *state;
    struct store *st = open_journal(f, 100, 30);
    store_journal_add(st, 0, C, "c1", 7, 0, JOURNAL_VIEWED, 0, "alone");
    int64_t deadline = wall_ms() + 10000;
    while (disk_rows(f, NULL) == 0) {
        if (wall_ms() > deadline)
            fail_msg("a lone row never rode in a commit within 10 s");
        OK(st, store_begin(st));
        OK(st, store_meta_set(st, "k", "v"));
        OK(st, store_commit(st));
        struct timespec pause = {0, 20 * 1000 * 1000};
        nanosleep(&pause, NULL);
    }
    struct store_journal_stats js;
    store_journal_stats(st, &js);
    assert_int_equal(js.queued, 0);
    assert_int_equal(js.written, 1);
    store_free(st);
}

/* A rollback drops the rows added inside the transaction (they describe
 * work that did not happen) and keeps those queued before it. */
static void test_rollback_drops_its_rows(void **state)
{
    struct fixture *f = *state;
    struct store *st = open_journal(f, 100, 30);

    store_journal_add(st, 0, S, "c1", 7, 0, JOURNAL_RECEIVED, 3, "before");
    OK(st, store_begin(st));
    store_journal_add(st, 0, S, "c1", 7, 88, JOURNAL_APPLIED, 3, "inside");
    OK(st, store_rollback(st));
    OK(st, store_journal_flush(st));
    struct store_journal_row rows[4];
    assert_int_equal(read_rows(st, S, "c1", 7, rows, 4), 1);
    assert_string_equal(rows[0].detail, "before");
    struct store_journal_stats js;
    store_journal_stats(st, &js);
    assert_int_equal(js.dropped, 0);
    assert_int_equal(js.queued, 0);
    store_free(st);
}

/* store_journal_flush writes the queue without any other work, and leaves
 * the handle's commits synced (synchronous = FULL) afterwards; store_free
 * writes what is queued; flush refuses to run inside a transaction. */
static void test_flush_and_free_write_the_queue(void **state)
{
    struct fixture *f = *state;
    struct store *st = open_journal(f, 100, 30);

    store_journal_add(st, 0, C, "c1", 1, 0, JOURNAL_RECORDED, 0, "1 event");
    OK(st, store_journal_flush(st));
    assert_int_equal(disk_rows(f, NULL), 1);
    OK(st, store_journal_flush(st)); /* nothing queued: nothing to do */
    assert_int_equal(disk_rows(f, NULL), 1);

    OK(st, store_begin(st));
    assert_int_equal(store_journal_flush(st), RT_REJECT);
    OK(st, store_rollback(st));

    store_journal_add(st, 0, C, "c1", 1, 0, JOURNAL_VIEWED, 0, "queued at exit");
    store_free(st);
    assert_int_equal(disk_rows(f, NULL), 2);

    /* The handle's own commits are still synced after a journal flush,
     * which itself is not (the private header reaches the connection). */
    st = open_journal(f, 100, 30);
    assert_int_equal(synchronous(st), 2);
    store_journal_add(st, 0, C, "c1", 1, 0, JOURNAL_VIEWED, 0, "x");
    struct store_sync_stats s0, s1;
    store_sync_stats(st, &s0);
    OK(st, store_journal_flush(st));
    assert_int_equal(synchronous(st), 2);
    /* ... and the counters say so: a commit, no sync. */
    store_sync_stats(st, &s1);
    assert_int_equal(s1.commits - s0.commits, 1);
    assert_int_equal(s1.syncs - s0.syncs, 0);
    /* The next synced commit covers it, and counts one sync. */
    OK(st, store_outbox_add(st, "c1", 9, 1000));
    store_sync_stats(st, &s0);
    assert_int_equal(s0.syncs - s1.syncs, 1);
    store_free(st);
    assert_int_equal(disk_rows(f, NULL), 3);

    /* A lazy handle (the daemon's) stays lazy after a flush and a prune:
     * set back to FULL, each of its commits would sync inside SQLite,
     * which the group commits exist to avoid. */
    st = open_journal(f, 100, 30);
    OK(st, store_set_lazy(st, true));
    assert_int_equal(synchronous(st), 1);
    store_journal_add(st, 0, C, "c1", 1, 0, JOURNAL_VIEWED, 0, "y");
    OK(st, store_journal_flush(st));
    assert_int_equal(synchronous(st), 1);
    uint64_t gone = 0;
    OK(st, store_journal_prune(st, 1, &gone));
    assert_int_equal(synchronous(st), 1);
    store_free(st);
    assert_int_equal(disk_rows(f, NULL), 4);
}

/* Without store_journal_configure (remotetaskctl's taskevent, resync) and
 * with entries = 0, adding does nothing. */
static void test_off_adds_nothing(void **state)
{
    struct fixture *f = *state;
    char err[512];
    struct store *st = store_open(f->state, err, sizeof err);
    assert_non_null(st);
    store_journal_add(st, 0, C, "c1", 1, 0, JOURNAL_RECORDED, 0, "not configured");
    OK(st, store_begin(st));
    OK(st, store_commit(st));
    store_free(st);
    assert_int_equal(disk_rows(f, NULL), 0);

    st = open_journal(f, 0, 30);
    store_journal_add(st, 0, C, "c1", 1, 0, JOURNAL_RECORDED, 0, "off");
    OK(st, store_journal_flush(st));
    store_free(st);
    assert_int_equal(disk_rows(f, NULL), 0);
}

/* Bounds of the settings, and a read-only handle cannot be configured. */
static void test_configure_bounds(void **state)
{
    struct fixture *f = *state;
    char err[512];
    struct store *st = store_open(f->state, err, sizeof err);
    assert_non_null(st);
    assert_int_equal(store_journal_configure(st, -1, 30), RT_REJECT);
    assert_non_null(strstr(store_strerror(st), "entries"));
    assert_int_equal(store_journal_configure(st, STORE_JOURNAL_ENTRIES_MAX + 1, 30), RT_REJECT);
    assert_int_equal(store_journal_configure(st, 100, 0), RT_REJECT);
    assert_non_null(strstr(store_strerror(st), "days"));
    assert_int_equal(store_journal_configure(st, 100, STORE_JOURNAL_DAYS_MAX + 1), RT_REJECT);
    OK(st, store_journal_configure(st, STORE_JOURNAL_ENTRIES_MAX, STORE_JOURNAL_DAYS_MAX));
    store_free(st);
    st = store_open_readonly(f->state, err, sizeof err);
    assert_non_null(st);
    assert_int_equal(store_journal_configure(st, 100, 30), RT_REJECT);
    assert_non_null(strstr(store_strerror(st), "read-only"));
    store_free(st);
}

/* A queue that reaches its cap (nothing commits: the store fails for a
 * long time) drops new rows and counts them; a bad client id is dropped. */
static void test_queue_cap(void **state)
{
    struct fixture *f = *state;
    struct store *st = open_journal(f, 100, 30);
    char longid[STORE_CLIENT_MAX + 2];
    memset(longid, 'x', sizeof longid - 1);
    longid[sizeof longid - 1] = '\0';

    for (int i = 0; i < STORE_JOURNAL_QUEUE_MAX + 3; i++)
        store_journal_add(st, 0, C, "c1", i + 1, 0, JOURNAL_RECORDED, 0, NULL);
    store_journal_add(st, 0, C, longid, 1, 0, JOURNAL_RECORDED, 0, NULL);
    store_journal_add(st, 0, C, "", 1, 0, JOURNAL_RECORDED, 0, NULL);
    struct store_journal_stats js;
    store_journal_stats(st, &js);
    assert_int_equal(js.queued, STORE_JOURNAL_QUEUE_MAX);
    assert_int_equal(js.dropped, 5);
    OK(st, store_journal_flush(st));
    assert_int_equal(disk_rows(f, NULL), STORE_JOURNAL_QUEUE_MAX);
    store_free(st);
}

/* ---- reading ---------------------------------------------------------- */

/* Rows come back in time order, whatever the order written (a row stamped
 * with the time an event was recorded comes before later ones), only the
 * newest max, and only those of the task and side asked for. */
static void test_read_order_and_scope(void **state)
{
    struct fixture *f = *state;
    struct store *st = open_journal(f, 100, 30);
    int64_t t = wall_ms();

    store_journal_add(st, t + 20, C, "c1", 5, 0, JOURNAL_VIEWED, 0, "second");
    store_journal_add(st, t + 10, C, "c1", 5, 0, JOURNAL_RECORDED, 0, "first");
    store_journal_add(st, t + 30, C, "c1", 5, 0, JOURNAL_PUBLISHED, 3, "third");
    store_journal_add(st, t + 30, C, "c1", 5, 0, JOURNAL_CONFIRMED, 3, "fourth");
    store_journal_add(st, t + 15, S, "c1", 5, 88, JOURNAL_APPLIED, 3, "server side");
    store_journal_add(st, t + 15, C, "c2", 5, 0, JOURNAL_RECORDED, 0, "other client");
    store_journal_add(st, t + 15, C, "c1", 6, 0, JOURNAL_RECORDED, 0, "other task");
    OK(st, store_journal_flush(st));

    struct store_journal_row rows[8];
    assert_int_equal(read_rows(st, C, "c1", 5, rows, 8), 4);
    assert_string_equal(rows[0].detail, "first");
    assert_string_equal(rows[1].detail, "second");
    assert_string_equal(rows[2].detail, "third");
    assert_string_equal(rows[3].detail, "fourth");
    assert_int_equal(rows[2].seq, 3);
    /* The newest two by the order written. */
    assert_int_equal(read_rows(st, C, "c1", 5, rows, 2), 2);
    assert_string_equal(rows[0].detail, "third");
    assert_string_equal(rows[1].detail, "fourth");
    assert_int_equal(read_rows(st, S, "c1", 5, rows, 8), 1);
    assert_int_equal(rows[0].dst_task, 88);
    assert_int_equal(read_rows(st, C, "c9", 5, rows, 8), 0);
    assert_int_equal(read_rows(st, C, "c1", 5, rows, 0), 0);
    size_t n = 0;
    assert_int_equal(store_journal_read(st, C, "", 5, 8, rows, &n), RT_REJECT);
    store_free(st);
}

/* The server side's rows name the target: the newest row of a target task
 * gives its client and source task. */
static void test_find_target(void **state)
{
    struct fixture *f = *state;
    struct store *st = open_journal(f, 100, 30);
    store_journal_add(st, 0, S, "c1", 5, 0, JOURNAL_RECEIVED, 1, NULL);
    store_journal_add(st, 0, S, "c1", 5, 88, JOURNAL_APPLIED, 1, "created");
    store_journal_add(st, 0, S, "c2", 9, 91, JOURNAL_APPLIED, 1, "created");
    store_journal_add(st, 0, C, "c3", 4, 77, JOURNAL_STATE, 1, "client side: not a target");
    OK(st, store_journal_flush(st));

    char client[STORE_CLIENT_MAX + 1];
    int64_t src = 0;
    bool found = false;
    OK(st, store_journal_find_target(st, NULL, 88, client, &src, &found));
    assert_true(found);
    assert_string_equal(client, "c1");
    assert_int_equal(src, 5);
    OK(st, store_journal_find_target(st, "c1", 91, client, &src, &found));
    assert_false(found);
    OK(st, store_journal_find_target(st, "c2", 91, client, &src, &found));
    assert_true(found);
    assert_int_equal(src, 9);
    OK(st, store_journal_find_target(st, NULL, 77, client, &src, &found));
    assert_false(found);
    store_free(st);
}

/* Details are one clean line: control characters become spaces, bytes
 * that are not UTF-8 become '?', and a long text is cut on a character
 * boundary with "..."; event names are capped too. */
static void test_detail_cut_and_cleaned(void **state)
{
    struct fixture *f = *state;
    struct store *st = open_journal(f, 100, 30);
    char big[600];
    /* "é" (2 bytes) repeated: a cut at any byte count could split one. */
    for (size_t i = 0; i + 2 < sizeof big; i += 2) {
        big[i] = (char)0xC3;
        big[i + 1] = (char)0xA9;
    }
    big[sizeof big - 2] = '\0';

    store_journal_add(st, 0, C, "c1", 1, 0, JOURNAL_DEAD, 0, "api: access\n\tdenied\x7f");
    store_journal_add(st, 0, C, "c1", 1, 0, JOURNAL_DEAD, 0, "bad \xff\xfe utf8 \xed\xa0\x80 end");
    store_journal_add(st, 0, C, "c1", 1, 0, JOURNAL_DEAD, 0, "%s", big);
    store_journal_add(st, 0, C, "c1", 1, 0, "an-event-name-far-longer-than-its-cap", 0, NULL);
    OK(st, store_journal_flush(st));

    struct store_journal_row rows[8];
    assert_int_equal(read_rows(st, C, "c1", 1, rows, 8), 4);
    assert_string_equal(rows[0].detail, "api: access  denied ");
    assert_string_equal(rows[1].detail, "bad ?? utf8 ??? end");
    size_t len = strlen(rows[2].detail);
    assert_true(len <= STORE_JOURNAL_DETAIL_MAX);
    assert_true(len >= STORE_JOURNAL_DETAIL_MAX - 4);
    assert_string_equal(rows[2].detail + len - 3, "...");
    /* Whole characters before the mark. */
    assert_int_equal((len - 3) % 2, 0);
    assert_int_equal((unsigned char)rows[2].detail[len - 5], 0xC3);
    assert_int_equal(strlen(rows[3].event), STORE_JOURNAL_EVENT_MAX);
    assert_string_equal(rows[3].event + STORE_JOURNAL_EVENT_MAX - 3, "...");
    store_free(st);
}

/* ---- pruning ---------------------------------------------------------- */

/* The newest `entries` rows of each task stay; a batch deletes at most
 * STORE_JOURNAL_PRUNE_BATCH rows, and the next ones finish the work. */
static void test_prune_by_count(void **state)
{
    struct fixture *f = *state;
    struct store *st = open_journal(f, 10, 30);
    int64_t t = wall_ms();

    for (int i = 1; i <= 25; i++)
        store_journal_add(st, t, C, "c1", 1, 0, JOURNAL_VIEWED, 0, "row %d", i);
    for (int i = 1; i <= 4; i++)
        store_journal_add(st, t, S, "c1", 1, 0, JOURNAL_RECEIVED, (uint64_t)i, NULL);
    for (int i = 1; i <= 1200; i++)
        store_journal_add(st, t, C, "c2", 2, 0, JOURNAL_VIEWED, 0, "row %d", i);
    OK(st, store_journal_flush(st));
    assert_int_equal(disk_rows(f, NULL), 1229);

    uint64_t gone = 0, total = 0;
    OK(st, store_journal_prune(st, t, &gone));
    assert_true(gone > 0 && gone <= STORE_JOURNAL_PRUNE_BATCH);
    total += gone;
    for (int i = 0; i < 10 && gone; i++) {
        OK(st, store_journal_prune(st, t, &gone));
        assert_true(gone <= STORE_JOURNAL_PRUNE_BATCH);
        total += gone;
    }
    assert_int_equal(gone, 0);
    assert_int_equal(total, 15 + 1190);
    assert_int_equal(disk_rows(f, "side = 1 AND client = 'c1'"), 10);
    assert_int_equal(disk_rows(f, "side = 2 AND client = 'c1'"), 4);
    assert_int_equal(disk_rows(f, "client = 'c2'"), 10);
    struct store_journal_row rows[16];
    assert_int_equal(read_rows(st, C, "c1", 1, rows, 16), 10);
    assert_string_equal(rows[0].detail, "row 16");
    assert_string_equal(rows[9].detail, "row 25");
    struct store_journal_stats js;
    store_journal_stats(st, &js);
    assert_int_equal(js.pruned, total);
    store_free(st);
}

/* Rows older than `days` go, oldest first, in bounded batches; younger
 * ones stay. store_journal_tick prunes on its first call. */
static void test_prune_by_age(void **state)
{
    struct fixture *f = *state;
    struct store *st = open_journal(f, 10000, 2);
    int64_t now = wall_ms();

    for (int i = 0; i < 700; i++)
        store_journal_add(st, now - 3 * DAY_MS + i, C, "c1", 100 + i, 0, JOURNAL_RECORDED, 0, NULL);
    for (int i = 0; i < 5; i++)
        store_journal_add(st, now - DAY_MS, C, "c1", 100 + i, 0, JOURNAL_VIEWED, 0, NULL);
    OK(st, store_journal_flush(st));

    uint64_t gone = 0;
    OK(st, store_journal_prune(st, now, &gone));
    assert_int_equal(gone, STORE_JOURNAL_PRUNE_BATCH);
    assert_int_equal(disk_rows(f, NULL), 705 - STORE_JOURNAL_PRUNE_BATCH);
    /* The daemon's tick runs the next batch at once (the first is due). */
    store_journal_tick(st, 1);
    assert_int_equal(disk_rows(f, NULL), 5);
    OK(st, store_journal_prune(st, now, &gone));
    assert_int_equal(gone, 0);
    store_free(st);
}

/* Turned off (entries = 0), the journal empties itself in batches. */
static void test_off_empties(void **state)
{
    struct fixture *f = *state;
    struct store *st = open_journal(f, 100, 30);
    for (int i = 0; i < 600; i++)
        store_journal_add(st, 0, S, "c1", i, 0, JOURNAL_RECEIVED, 1, NULL);
    OK(st, store_journal_flush(st));
    OK(st, store_journal_configure(st, 0, 30));
    uint64_t gone = 0;
    OK(st, store_journal_prune(st, wall_ms(), &gone));
    assert_int_equal(gone, STORE_JOURNAL_PRUNE_BATCH);
    OK(st, store_journal_prune(st, wall_ms(), &gone));
    assert_int_equal(gone, 100);
    assert_int_equal(disk_rows(f, NULL), 0);
    store_free(st);
}

/* ---- the read-only handle of trace ------------------------------------ */

static void test_readonly_reads(void **state)
{
    struct fixture *f = *state;
    struct store *w = open_journal(f, 100, 30);
    store_journal_add(w, 0, C, "c1", 3, 0, JOURNAL_PUBLISHED, 1, NULL);
    OK(w, store_journal_flush(w));

    char err[512];
    struct store *r = store_open_readonly(f->state, err, sizeof err);
    if (!r)
        fail_msg("store_open_readonly: %s", err);
    struct store_journal_row rows[4];
    assert_int_equal(read_rows(r, C, "c1", 3, rows, 4), 1);
    /* A row the writer only queued is not there yet; once committed it is. */
    store_journal_add(w, 0, C, "c1", 3, 0, JOURNAL_CONFIRMED, 1, NULL);
    assert_int_equal(read_rows(r, C, "c1", 3, rows, 4), 1);
    OK(w, store_journal_flush(w));
    assert_int_equal(read_rows(r, C, "c1", 3, rows, 4), 2);
    /* Adding through the reader does nothing. */
    store_journal_add(r, 0, C, "c1", 3, 0, JOURNAL_VIEWED, 0, NULL);
    store_free(r);
    store_free(w);
    assert_int_equal(disk_rows(f, NULL), 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_rows_ride_in_commits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_old_row_rides_alone, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rollback_drops_its_rows, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flush_and_free_write_the_queue, setup, teardown),
        cmocka_unit_test_setup_teardown(test_off_adds_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_configure_bounds, setup, teardown),
        cmocka_unit_test_setup_teardown(test_queue_cap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_read_order_and_scope, setup, teardown),
        cmocka_unit_test_setup_teardown(test_find_target, setup, teardown),
        cmocka_unit_test_setup_teardown(test_detail_cut_and_cleaned, setup, teardown),
        cmocka_unit_test_setup_teardown(test_prune_by_count, setup, teardown),
        cmocka_unit_test_setup_teardown(test_prune_by_age, setup, teardown),
        cmocka_unit_test_setup_teardown(test_off_empties, setup, teardown),
        cmocka_unit_test_setup_teardown(test_readonly_reads, setup, teardown),
    };
    return cmocka_run_group_tests_name("journal", tests, NULL, NULL);
}
