/*
 * test_store.c - the SQLite store against a real database in a temporary
 * directory: schema and migrations, the outbox, sequence numbers, links,
 * transactions, several handles and processes writing at once, and a
 * database that is full or locked by another process.
 *
 * The test sees the handle through the store's private header
 * (store_db.h): it reaches the handle's SQLite connection to cap its size
 * with PRAGMA max_page_count, which holds for that connection only, and
 * reads its busy timeout.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "store.h"
#include "store_db.h"

struct fixture {
    char dir[64];    /* the mkdtemp directory, removed after the test */
    char state[128]; /* dir/state: the state_dir given to the store */
    char db[192];    /* state/remotetask.db */
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
    strcpy(f->dir, "/tmp/rt-test-store-XXXXXX");
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

static struct store *open_ok(const struct fixture *f)
{
    char err[512];
    struct store *st = store_open(f->state, err, sizeof err);
    if (!st)
        fail_msg("store_open(\"%s\"): %s", f->state, err);
    return st;
}

/* Fails the test with the store's reason unless the call returned OK. */
#define OK(st, call)                                                                               \
    do {                                                                                           \
        rt_status r_ = (call);                                                                     \
        if (r_ != RT_OK)                                                                           \
            fail_msg("%s: %s: %s", #call, rt_status_name(r_), store_strerror(st));                 \
    } while (0)

/* The integer the first row of sql has in its first column, read through
 * a handle of its own. */
static int query_int(const char *db, const char *sql)
{
    sqlite3 *h = NULL;
    assert_int_equal(sqlite3_open_v2(db, &h, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *s = NULL;
    assert_int_equal(sqlite3_prepare_v2(h, sql, -1, &s, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    int v = sqlite3_column_int(s, 0);
    sqlite3_finalize(s);
    sqlite3_close(h);
    return v;
}

static int user_version(const char *db)
{
    return query_int(db, "PRAGMA user_version");
}

static void exec_raw(const char *db, const char *sql)
{
    sqlite3 *h = NULL;
    assert_int_equal(sqlite3_open_v2(db, &h, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    sqlite3_busy_timeout(h, 5000);
    int rc = sqlite3_exec(h, sql, NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        fail_msg("%s: %s", sql, sqlite3_errmsg(h));
    sqlite3_close(h);
}

static uint64_t backlog(struct store *st)
{
    uint64_t n = 0;
    OK(st, store_outbox_backlog(st, &n, NULL));
    return n;
}

/* ---- open ------------------------------------------------------------- */

static void test_open_creates_and_reopen_keeps(void **state)
{
    struct fixture *f = *state;
    /* A missing parent is created too. */
    snprintf(f->state, sizeof f->state, "%s/a/b/state", f->dir);
    snprintf(f->db, sizeof f->db, "%s/%s", f->state, STORE_FILE_NAME);

    struct store *st = open_ok(f);
    struct stat sb;
    assert_int_equal(stat(f->state, &sb), 0);
    assert_true(S_ISDIR(sb.st_mode));
    assert_int_equal(sb.st_mode & 07777, 0750);
    assert_int_equal(stat(f->db, &sb), 0);
    assert_true(S_ISREG(sb.st_mode));
    assert_int_equal(sb.st_mode & 07777, 0640);

    OK(st, store_outbox_add(st, "7", 42, 1000));
    OK(st, store_meta_set(st, "last_sync", "yesterday"));
    store_free(st);

    assert_int_equal(user_version(f->db), STORE_SCHEMA_VERSION);

    st = open_ok(f);
    assert_int_equal(backlog(st), 1);
    char buf[64];
    bool found = false;
    OK(st, store_meta_get(st, "last_sync", buf, sizeof buf, &found));
    assert_true(found);
    assert_string_equal(buf, "yesterday");
    store_free(st);

    /* The WAL files got the database's mode, not the umask's. */
    char wal[256];
    snprintf(wal, sizeof wal, "%s-wal", f->db);
    st = open_ok(f);
    OK(st, store_outbox_add(st, "7", 43, 1000));
    assert_int_equal(stat(wal, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0640);
    store_free(st);
}

static void test_journal_mode_is_wal(void **state)
{
    struct fixture *f = *state;
    store_free(open_ok(f));
    sqlite3 *h = NULL;
    assert_int_equal(sqlite3_open_v2(f->db, &h, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *s = NULL;
    assert_int_equal(sqlite3_prepare_v2(h, "PRAGMA journal_mode", -1, &s, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(s), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(s, 0), "wal");
    sqlite3_finalize(s);
    sqlite3_close(h);
}

static void test_future_version_refused(void **state)
{
    struct fixture *f = *state;
    store_free(open_ok(f));
    exec_raw(f->db, "PRAGMA user_version = 99");

    char err[512] = "untouched";
    struct store *st = store_open(f->state, err, sizeof err);
    assert_null(st);
    assert_non_null(strstr(err, "schema version 99"));
    assert_non_null(strstr(err, "newer"));
    /* Refusing did not rewrite the version. */
    assert_int_equal(user_version(f->db), 99);
}

static void test_state_dir_is_a_file(void **state)
{
    struct fixture *f = *state;
    int fd = open(f->state, O_CREAT | O_WRONLY, 0600);
    assert_true(fd >= 0);
    close(fd);

    char err[512] = "";
    assert_null(store_open(f->state, err, sizeof err));
    assert_non_null(strstr(err, "is not a directory"));
    assert_non_null(strstr(err, f->state));

    /* Also when the file is a parent of state_dir. */
    char below[192];
    snprintf(below, sizeof below, "%s/sub", f->state);
    err[0] = '\0';
    assert_null(store_open(below, err, sizeof err));
    assert_non_null(strstr(err, "is not a directory"));

    err[0] = 'x';
    assert_null(store_open("", err, sizeof err));
    assert_non_null(strstr(err, "empty"));
}

static void test_not_a_database_refused(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(mkdir(f->state, 0750), 0);
    FILE *fp = fopen(f->db, "w");
    assert_non_null(fp);
    for (int i = 0; i < 64; i++)
        fputs("this is not an SQLite database, it is a text file. ", fp);
    fclose(fp);
    char err[512] = "";
    assert_null(store_open(f->state, err, sizeof err));
    assert_non_null(strstr(err, f->db));
}

/* ---- outbox ----------------------------------------------------------- */

static void test_outbox_coalesces(void **state)
{
    struct fixture *f = *state;
    struct store *st = open_ok(f);
    OK(st, store_outbox_add(st, "7", 42, 1000));
    OK(st, store_outbox_add(st, "7", 42, 1100));
    OK(st, store_outbox_add(st, "7", 42, 1200));
    assert_int_equal(backlog(st), 1);

    struct store_event ev[4];
    size_t n = 99;
    OK(st, store_outbox_due(st, 2000, 4, ev, &n));
    assert_int_equal(n, 1);
    assert_string_equal(ev[0].client, "7");
    assert_int_equal(ev[0].task, 42);
    assert_int_equal(ev[0].events, 3);
    assert_int_equal(ev[0].gen, 3);
    assert_int_equal(ev[0].first_ms, 1000);
    assert_int_equal(ev[0].last_ms, 1200);
    assert_int_equal(ev[0].attempts, 0);

    /* The same task of another client is another row. */
    OK(st, store_outbox_add(st, "8", 42, 1300));
    assert_int_equal(backlog(st), 2);
    store_free(st);
}

static void test_outbox_done_keeps_newer_event(void **state)
{
    struct fixture *f = *state;
    struct store *st = open_ok(f);
    OK(st, store_outbox_add(st, "7", 42, 1000));

    struct store_event ev[1];
    size_t n = 0;
    OK(st, store_outbox_due(st, 1000, 1, ev, &n));
    assert_int_equal(n, 1);
    uint64_t gen = ev[0].gen;

    /* An event recorded while the message was being published. */
    OK(st, store_outbox_add(st, "7", 42, 1050));

    bool deleted = true;
    OK(st, store_outbox_done(st, "7", 42, gen, &deleted));
    assert_false(deleted);
    assert_int_equal(backlog(st), 1);

    OK(st, store_outbox_due(st, 1100, 1, ev, &n));
    assert_int_equal(n, 1);
    assert_true(ev[0].gen > gen);
    OK(st, store_outbox_done(st, "7", 42, ev[0].gen, &deleted));
    assert_true(deleted);
    assert_int_equal(backlog(st), 0);

    /* A row that is gone: nothing to delete, not an error. */
    OK(st, store_outbox_done(st, "7", 42, ev[0].gen, &deleted));
    assert_false(deleted);
    store_free(st);
}

static void test_outbox_defer_and_due(void **state)
{
    struct fixture *f = *state;
    struct store *st = open_ok(f);
    OK(st, store_outbox_add(st, "7", 1, 1000));
    OK(st, store_outbox_add(st, "7", 2, 1001));

    OK(st, store_outbox_defer(st, "7", 1, 5000, "broker unreachable"));
    struct store_event ev[4];
    size_t n = 0;
    OK(st, store_outbox_due(st, 4999, 4, ev, &n));
    assert_int_equal(n, 1);
    assert_int_equal(ev[0].task, 2);

    OK(st, store_outbox_due(st, 5000, 4, ev, &n));
    assert_int_equal(n, 2);
    assert_int_equal(ev[0].task, 1); /* oldest first_ms first */
    assert_int_equal(ev[0].attempts, 1);
    assert_int_equal(ev[1].task, 2);

    /* A new event is not held back by the old backoff; attempts stay. */
    OK(st, store_outbox_defer(st, "7", 1, 9000, NULL));
    OK(st, store_outbox_due(st, 3000, 4, ev, &n));
    assert_int_equal(n, 1);
    OK(st, store_outbox_add(st, "7", 1, 3000));
    OK(st, store_outbox_due(st, 3000, 4, ev, &n));
    assert_int_equal(n, 2);
    assert_int_equal(ev[0].task, 1);
    assert_int_equal(ev[0].attempts, 2);
    assert_int_equal(ev[0].first_ms, 1000);

    /* max caps the batch. */
    OK(st, store_outbox_due(st, 3000, 1, ev, &n));
    assert_int_equal(n, 1);
    assert_int_equal(ev[0].task, 1);
    OK(st, store_outbox_due(st, 3000, 0, ev, &n));
    assert_int_equal(n, 0);

    /* A very long error is cut, not refused. */
    char big[4 * STORE_ERROR_MAX];
    memset(big, 'e', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    OK(st, store_outbox_defer(st, "7", 2, 100, big));
    store_free(st);
    assert_int_equal(query_int(f->db, "SELECT length(last_error) FROM outbox WHERE task = 2"),
                     STORE_ERROR_MAX);
}

/* A backlog recorded in one millisecond (a reconciliation's page, a bulk
 * import) is read a batch at a time without sorting it: the due scan's
 * index covers its whole order (migration 5). On the old index, on
 * first_ms alone, every scan sorted the whole backlog to return a batch,
 * and the relay's drain of 20,000 such rows spent most of its time there. */
static void test_outbox_due_scan_is_bounded(void **state)
{
    struct fixture *f = *state;
    struct store *st = open_ok(f);
    enum { ROWS = 3000, BATCH = 16 };

    OK(st, store_begin(st));
    for (int64_t t = ROWS; t >= 1; t--)
        OK(st, store_outbox_add(st, "7", t, 1000));
    OK(st, store_commit(st));
    OK(st, store_outbox_defer(st, "7", 2, 9000, NULL));

    sqlite3_stmt *s = store_db_stmt(st, ST_OUTBOX_DUE);
    assert_non_null(s);
    sqlite3_stmt_status(s, SQLITE_STMTSTATUS_SORT, 1);
    sqlite3_stmt_status(s, SQLITE_STMTSTATUS_VM_STEP, 1);
    struct store_event ev[BATCH];
    size_t n = 0;
    OK(st, store_outbox_due(st, 5000, BATCH, ev, &n));
    assert_int_equal(n, BATCH);
    /* Equal first_ms: by task, and the deferred row is skipped. */
    assert_int_equal(ev[0].task, 1);
    assert_int_equal(ev[1].task, 3);
    assert_int_equal(ev[BATCH - 1].task, BATCH + 1);
    assert_int_equal(sqlite3_stmt_status(s, SQLITE_STMTSTATUS_SORT, 0), 0);
    /* A few dozen steps per row returned, whatever the backlog: the old
     * plan took more than ten per row of the backlog. */
    int steps = sqlite3_stmt_status(s, SQLITE_STMTSTATUS_VM_STEP, 0);
    if (steps > 100 * BATCH)
        fail_msg("the due scan took %d steps for %d rows of %d", steps, BATCH, ROWS);
    store_free(st);
}

static void test_outbox_backlog(void **state)
{
    struct fixture *f = *state;
    struct store *st = open_ok(f);
    uint64_t count = 99;
    int64_t oldest = 99;
    OK(st, store_outbox_backlog(st, &count, &oldest));
    assert_int_equal(count, 0);
    assert_int_equal(oldest, 0);

    OK(st, store_outbox_add(st, "7", 5, 3000));
    OK(st, store_outbox_add(st, "7", 6, 2000));
    OK(st, store_outbox_add(st, "9", 7, 4000));
    OK(st, store_outbox_add(st, "7", 6, 5000)); /* coalesces, keeps first_ms */
    OK(st, store_outbox_backlog(st, &count, &oldest));
    assert_int_equal(count, 3);
    assert_int_equal(oldest, 2000);
    store_free(st);
}

static void test_client_id_checked(void **state)
{
    struct fixture *f = *state;
    struct store *st = open_ok(f);
    char id[STORE_CLIENT_MAX + 2];
    memset(id, 'c', STORE_CLIENT_MAX);
    id[STORE_CLIENT_MAX] = '\0';
    OK(st, store_outbox_add(st, id, 1, 1000));

    struct store_event ev[1];
    size_t n = 0;
    OK(st, store_outbox_due(st, 1000, 1, ev, &n));
    assert_int_equal(n, 1);
    assert_string_equal(ev[0].client, id);

    id[STORE_CLIENT_MAX] = 'c';
    id[STORE_CLIENT_MAX + 1] = '\0';
    assert_int_equal(store_outbox_add(st, id, 1, 1000), RT_REJECT);
    assert_non_null(strstr(store_strerror(st), "client id"));
    assert_int_equal(store_outbox_add(st, "", 1, 1000), RT_REJECT);
    assert_int_equal(store_outbox_add(st, NULL, 1, 1000), RT_REJECT);
    uint64_t seq = 0;
    assert_int_equal(store_fwd_next_seq(st, id, 1, &seq), RT_REJECT);
    struct store_link l;
    assert_int_equal(store_link_get(st, id, 1, &l), RT_REJECT);

    /* A client id is data, never SQL. */
    OK(st, store_outbox_add(st, "x'); DROP TABLE outbox; --", 2, 1000));
    assert_int_equal(backlog(st), 2);
    store_free(st);
}

/* ---- sequence numbers ------------------------------------------------- */

static void test_fwd_seq_survives_reopen(void **state)
{
    struct fixture *f = *state;
    struct store *st = open_ok(f);
    uint64_t last = 0;
    for (int i = 0; i < 5; i++) {
        uint64_t seq = 0;
        OK(st, store_fwd_next_seq(st, "7", 42, &seq));
        assert_true(seq > last);
        last = seq;
    }
    assert_int_equal(last, 5);
    /* Sequences are per task. */
    uint64_t other = 0;
    OK(st, store_fwd_next_seq(st, "7", 43, &other));
    assert_int_equal(other, 1);
    store_free(st);

    st = open_ok(f);
    uint64_t seq = 0;
    OK(st, store_fwd_next_seq(st, "7", 42, &seq));
    assert_int_equal(seq, 6);
    store_free(st);
}

static void test_fwd_confirm(void **state)
{
    struct fixture *f = *state;
    struct store *st = open_ok(f);
    struct store_fwd fw;
    OK(st, store_fwd_get(st, "7", 42, &fw));
    assert_false(fw.found);

    uint64_t s1 = 0, s2 = 0;
    OK(st, store_fwd_next_seq(st, "7", 42, &s1));
    OK(st, store_fwd_next_seq(st, "7", 42, &s2));
    OK(st, store_fwd_get(st, "7", 42, &fw));
    assert_true(fw.found);
    assert_int_equal(fw.seq, 2);
    assert_int_equal(fw.fp_seq, 0);
    assert_string_equal(fw.fp, "");

    OK(st, store_fwd_confirm(st, "7", 42, s2, "fp-two", 5000));
    /* A late confirmation of an older message does not replace it. */
    OK(st, store_fwd_confirm(st, "7", 42, s1, "fp-one", 6000));
    OK(st, store_fwd_get(st, "7", 42, &fw));
    assert_int_equal(fw.seq, 2);
    assert_int_equal(fw.fp_seq, 2);
    assert_string_equal(fw.fp, "fp-two");
    assert_int_equal(fw.sent_ms, 5000);

    /* The next seq follows the confirmed one. */
    uint64_t s3 = 0;
    OK(st, store_fwd_next_seq(st, "7", 42, &s3));
    assert_int_equal(s3, 3);

    char fp[STORE_FP_MAX + 2];
    memset(fp, 'f', sizeof fp - 1);
    fp[sizeof fp - 1] = '\0';
    assert_int_equal(store_fwd_confirm(st, "7", 42, s3, fp, 7000), RT_REJECT);
    assert_int_equal(store_fwd_confirm(st, "7", 42, UINT64_MAX, "x", 7000), RT_REJECT);
    store_free(st);
}

/* ---- links ------------------------------------------------------------ */

static struct store_link make_link(const char *client, int64_t src, int64_t dst)
{
    struct store_link l;
    memset(&l, 0, sizeof l);
    snprintf(l.client, sizeof l.client, "%s", client);
    l.src_task = src;
    l.dst_task = dst;
    l.last_seq = 1;
    l.updated_ms = 1000;
    return l;
}

static void test_links(void **state)
{
    struct fixture *f = *state;
    struct store *st = open_ok(f);
    struct store_link l = make_link("7", 100, 9100);
    struct store_link got;
    OK(st, store_link_get(st, "7", 100, &got));
    assert_false(got.found);
    OK(st, store_link_by_dst(st, "7", 9100, &got));
    assert_false(got.found);

    OK(st, store_link_put(st, &l));
    OK(st, store_link_get(st, "7", 100, &got));
    assert_true(got.found);
    assert_string_equal(got.client, "7");
    assert_int_equal(got.src_task, 100);
    assert_int_equal(got.dst_task, 9100);
    assert_int_equal(got.last_seq, 1);
    assert_string_equal(got.rev_fp, "");

    /* Upsert: the same key replaces every field. */
    l.last_seq = 7;
    l.rev_seq = 3;
    snprintf(l.rev_fp, sizeof l.rev_fp, "state-fp");
    l.notes_sent = 4;
    l.updated_ms = 2000;
    OK(st, store_link_put(st, &l));
    OK(st, store_link_by_dst(st, "7", 9100, &got));
    assert_true(got.found);
    assert_int_equal(got.src_task, 100);
    assert_int_equal(got.last_seq, 7);
    assert_int_equal(got.rev_seq, 3);
    assert_string_equal(got.rev_fp, "state-fp");
    assert_int_equal(got.notes_sent, 4);
    assert_int_equal(got.updated_ms, 2000);

    /* The target id belongs to its client: another client's lookup misses. */
    OK(st, store_link_by_dst(st, "8", 9100, &got));
    assert_false(got.found);

    uint64_t rs = 0;
    OK(st, store_link_next_rev_seq(st, "7", 100, &rs));
    assert_int_equal(rs, 4);
    OK(st, store_link_get(st, "7", 100, &got));
    assert_int_equal(got.rev_seq, 4);
    assert_int_equal(store_link_next_rev_seq(st, "7", 101, &rs), RT_REJECT);
    assert_non_null(strstr(store_strerror(st), "no link"));

    uint64_t count = 0;
    OK(st, store_link_count(st, "7", &count));
    assert_int_equal(count, 1);
    store_free(st);
}

static void test_links_list_paging(void **state)
{
    struct fixture *f = *state;
    struct store *st = open_ok(f);
    const int total = 2500;
    OK(st, store_begin(st));
    /* Inserted out of order: the list must come back sorted. */
    for (int i = 0; i < total; i++) {
        int64_t src = 1 + (int64_t)((i * 7919) % total);
        struct store_link l = make_link("7", src, 100000 + src);
        OK(st, store_link_put(st, &l));
    }
    for (int i = 1; i <= 10; i++) {
        struct store_link l = make_link("8", i, 200000 + i);
        OK(st, store_link_put(st, &l));
    }
    OK(st, store_commit(st));

    uint64_t count = 0;
    OK(st, store_link_count(st, "7", &count));
    assert_int_equal(count, total);
    OK(st, store_link_count(st, "8", &count));
    assert_int_equal(count, 10);
    OK(st, store_link_count(st, NULL, &count));
    assert_int_equal(count, total + 10);
    OK(st, store_link_count(st, "nobody", &count));
    assert_int_equal(count, 0);

    enum { PAGE = 1000 };
    struct store_link *page = calloc(PAGE, sizeof *page);
    assert_non_null(page);
    int64_t after = 0;
    int seen = 0, batches = 0;
    for (;;) {
        size_t n = 0;
        OK(st, store_link_list(st, "7", after, PAGE, page, &n));
        batches++;
        for (size_t i = 0; i < n; i++) {
            assert_int_equal(page[i].src_task, after + 1); /* sorted, none skipped */
            assert_int_equal(page[i].dst_task, 100000 + page[i].src_task);
            assert_string_equal(page[i].client, "7");
            assert_true(page[i].found);
            after = page[i].src_task;
            seen++;
        }
        if (n < PAGE)
            break;
    }
    assert_int_equal(seen, total);
    assert_int_equal(batches, 3);
    free(page);
    store_free(st);
}

/* ---- migration 2: updated, applied ------------------------------------ */

static void test_migration_2_columns(void **state)
{
    struct fixture *f = *state;
    struct store *st = open_ok(f);
    struct store_fwd fw;
    OK(st, store_fwd_seen(st, "7", 42, "2026-11-29 12:00:00"));
    OK(st, store_fwd_get(st, "7", 42, &fw));
    assert_true(fw.found);
    assert_int_equal(fw.seq, 0);
    assert_string_equal(fw.updated, "2026-11-29 12:00:00");
    uint64_t seq = 0;
    OK(st, store_fwd_next_seq(st, "7", 42, &seq));
    assert_int_equal(seq, 1);
    OK(st, store_fwd_get(st, "7", 42, &fw));
    assert_string_equal(fw.updated, "2026-11-29 12:00:00");
    char longer[STORE_UPDATED_MAX + 2];
    memset(longer, '9', sizeof longer - 1);
    longer[sizeof longer - 1] = '\0';
    assert_int_equal(store_fwd_seen(st, "7", 42, longer), RT_REJECT);

    struct store_link l = {0}, got;
    strcpy(l.client, "7");
    l.src_task = 5;
    l.dst_task = 50;
    strcpy(l.applied, "name=abc;status=2");
    OK(st, store_link_put(st, &l));
    OK(st, store_link_get(st, "7", 5, &got));
    assert_string_equal(got.applied, "name=abc;status=2");

    struct store_rev rv;
    OK(st, store_rev_put(st, "7", 5, 3, 1, "status=1;performer=21"));
    OK(st, store_rev_get(st, "7", 5, &rv));
    assert_string_equal(rv.applied, "status=1;performer=21");
    store_free(st);
}

/* A database at version 1 (as the first release wrote it) is migrated with
 * its rows kept. */
static void test_migrates_version_1(void **state)
{
    struct fixture *f = *state;
    struct store *st = open_ok(f);
    store_free(st);
    exec_raw(f->db, "DROP TABLE outbox; DROP TABLE fwd; DROP TABLE links; DROP TABLE rev;"
                    "DROP TABLE meta; DROP TABLE journal; DROP TABLE retry;"
                    "PRAGMA user_version = 0;");
    /* The tables exactly as migration 1 made them, with a row in each. */
    exec_raw(f->db,
             "CREATE TABLE outbox (client TEXT NOT NULL, task INTEGER NOT NULL, gen INTEGER NOT "
             "NULL, events INTEGER NOT NULL, first_ms INTEGER NOT NULL, last_ms INTEGER NOT NULL, "
             "attempts INTEGER NOT NULL DEFAULT 0, next_ms INTEGER NOT NULL, last_error TEXT, "
             "PRIMARY KEY (client, task));"
             "CREATE INDEX outbox_first_ms ON outbox (first_ms);"
             "CREATE TABLE fwd (client TEXT NOT NULL, task INTEGER NOT NULL, seq INTEGER NOT NULL "
             "DEFAULT 0, fp TEXT NOT NULL DEFAULT '', fp_seq INTEGER NOT NULL DEFAULT 0, sent_ms "
             "INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (client, task));"
             "CREATE TABLE links (client TEXT NOT NULL, src_task INTEGER NOT NULL, dst_task "
             "INTEGER NOT NULL, last_seq INTEGER NOT NULL DEFAULT 0, rev_seq INTEGER NOT NULL "
             "DEFAULT 0, rev_fp TEXT NOT NULL DEFAULT '', notes_sent INTEGER NOT NULL DEFAULT 0, "
             "updated_ms INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (client, src_task));"
             "CREATE INDEX links_dst ON links (client, dst_task);"
             "CREATE TABLE rev (client TEXT NOT NULL, task INTEGER NOT NULL, seq INTEGER NOT NULL "
             "DEFAULT 0, notes_applied INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (client, task));"
             "CREATE TABLE meta (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL);"
             "INSERT INTO fwd (client, task, seq, fp, fp_seq) VALUES ('7', 9, 4, 'abc', 4);"
             "INSERT INTO links (client, src_task, dst_task, last_seq) VALUES ('7', 9, 90, 4);"
             "PRAGMA user_version = 1;");
    st = open_ok(f);
    assert_int_equal(user_version(f->db), STORE_SCHEMA_VERSION);
    struct store_fwd fw;
    OK(st, store_fwd_get(st, "7", 9, &fw));
    assert_int_equal(fw.seq, 4);
    assert_string_equal(fw.fp, "abc");
    assert_string_equal(fw.updated, "");
    struct store_link l;
    OK(st, store_link_get(st, "7", 9, &l));
    assert_int_equal(l.dst_task, 90);
    assert_string_equal(l.applied, "");
    store_free(st);
}

/* A database at version 2 gets the journal (migration 3), the retry
 * watch (migration 4) and the outbox's due index (migration 5) with its
 * rows kept, and this version's rule for the file holds: the version is 5
 * now, which an older remotetask refuses as
 * "written by a newer one" (test_future_version_refused shows the
 * refusal). */
static void test_migrates_version_2(void **state)
{
    struct fixture *f = *state;
    struct store *st = open_ok(f);
    OK(st, store_fwd_confirm(st, "7", 9, 4, "abc", 1000));
    store_free(st);
    exec_raw(f->db, "DROP TABLE journal; DROP TABLE retry; DROP INDEX outbox_due;"
                    "CREATE INDEX outbox_first_ms ON outbox (first_ms);"
                    "PRAGMA user_version = 2;");
    assert_int_equal(user_version(f->db), 2);

    st = open_ok(f);
    assert_int_equal(user_version(f->db), 5);
    assert_int_equal(STORE_SCHEMA_VERSION, 5);
    struct store_fwd fw;
    OK(st, store_fwd_get(st, "7", 9, &fw));
    assert_int_equal(fw.seq, 4);
    store_free(st);
    /* The table and its index exist as the journal uses them. */
    exec_raw(f->db, "INSERT INTO journal (ts_ms, side, client, src_task, event)"
                    " VALUES (1, 1, '7', 9, 'recorded');"
                    "SELECT id FROM journal INDEXED BY journal_task"
                    " WHERE side = 1 AND client = '7' AND src_task = 9;"
                    /* Migration 5: the due index replaced the old one. */
                    "SELECT task FROM outbox INDEXED BY outbox_due ORDER BY first_ms;");
    assert_int_equal(query_int(f->db, "SELECT COUNT(*) FROM sqlite_schema WHERE type = 'index'"
                                      " AND name = 'outbox_first_ms'"),
                     0);
}

/* The read-only handle of remotetaskctl's trace: reads what a writer
 * committed, also while the writer holds its handle open, writes nothing,
 * creates nothing, and reads only this version's schema. */
static void test_open_readonly(void **state)
{
    struct fixture *f = *state;
    char err[512] = "";

    /* No store yet: an error, and nothing is created. */
    assert_null(store_open_readonly(f->state, err, sizeof err));
    assert_non_null(strstr(err, "there is no store"));
    struct stat sb;
    assert_int_equal(stat(f->state, &sb), -1);

    struct store *w = open_ok(f);
    OK(w, store_fwd_confirm(w, "7", 9, 4, "abc", 1000));
    struct store *r = store_open_readonly(f->state, err, sizeof err);
    if (!r)
        fail_msg("store_open_readonly: %s", err);
    struct store_fwd fw;
    OK(r, store_fwd_get(r, "7", 9, &fw));
    assert_int_equal(fw.seq, 4);
    /* A commit of the writer after the reader opened is seen. */
    OK(w, store_fwd_confirm(w, "7", 9, 5, "abd", 2000));
    OK(r, store_fwd_get(r, "7", 9, &fw));
    assert_int_equal(fw.seq, 5);
    /* Writes are refused. */
    assert_int_equal(store_outbox_add(r, "7", 1, 1000), RT_REJECT);
    assert_int_equal(store_begin(r), RT_REJECT);
    assert_int_equal(backlog(w), 0);
    store_free(r);
    store_free(w);

    /* Another version's schema is refused, and left as it was. */
    exec_raw(f->db, "PRAGMA user_version = 99");
    assert_null(store_open_readonly(f->state, err, sizeof err));
    assert_non_null(strstr(err, "newer"));
    exec_raw(f->db, "PRAGMA user_version = 2");
    assert_null(store_open_readonly(f->state, err, sizeof err));
    assert_non_null(strstr(err, "older"));
    assert_int_equal(user_version(f->db), 2);
}

/* ---- rev and meta ----------------------------------------------------- */

static void test_rev_and_meta(void **state)
{
    struct fixture *f = *state;
    struct store *st = open_ok(f);
    struct store_rev rv;
    OK(st, store_rev_get(st, "7", 42, &rv));
    assert_false(rv.found);
    OK(st, store_rev_put(st, "7", 42, 5, 2, "status=1"));
    OK(st, store_rev_put(st, "7", 42, 6, 3, NULL));
    OK(st, store_rev_get(st, "7", 42, &rv));
    assert_true(rv.found);
    assert_int_equal(rv.seq, 6);
    assert_int_equal(rv.notes_applied, 3);
    OK(st, store_rev_get(st, "8", 42, &rv));
    assert_false(rv.found);

    char buf[16];
    bool found = true;
    OK(st, store_meta_get(st, "last_sync", buf, sizeof buf, &found));
    assert_false(found);
    assert_string_equal(buf, "");
    OK(st, store_meta_set(st, "last_sync", "a"));
    OK(st, store_meta_set(st, "last_sync", "b"));
    OK(st, store_meta_get(st, "last_sync", buf, sizeof buf, &found));
    assert_true(found);
    assert_string_equal(buf, "b");

    OK(st, store_meta_set(st, "long", "0123456789abcdefXYZ"));
    assert_int_equal(store_meta_get(st, "long", buf, sizeof buf, &found), RT_REJECT);
    assert_false(found);

    int64_t v = 1;
    OK(st, store_meta_get_i64(st, "apply_ms", &v, &found));
    assert_false(found);
    assert_int_equal(v, 0);
    OK(st, store_meta_set_i64(st, "apply_ms", -1234567890123LL));
    OK(st, store_meta_get_i64(st, "apply_ms", &v, &found));
    assert_true(found);
    assert_int_equal(v, -1234567890123LL);
    assert_int_equal(store_meta_get_i64(st, "last_sync", &v, &found), RT_REJECT);

    char key[STORE_META_KEY_MAX + 2];
    memset(key, 'k', sizeof key - 1);
    key[sizeof key - 1] = '\0';
    assert_int_equal(store_meta_set(st, key, "v"), RT_REJECT);
    store_free(st);
}

/* ---- transactions ----------------------------------------------------- */

static void test_transaction_rollback_and_commit(void **state)
{
    struct fixture *f = *state;
    struct store *st = open_ok(f);

    OK(st, store_begin(st));
    assert_int_equal(store_begin(st), RT_REJECT); /* no nesting */
    struct store_link l = make_link("7", 1, 11);
    OK(st, store_link_put(st, &l));
    uint64_t seq = 0;
    OK(st, store_fwd_next_seq(st, "7", 1, &seq));
    OK(st, store_outbox_add(st, "7", 1, 1000));
    OK(st, store_meta_set(st, "k", "v"));
    OK(st, store_rollback(st));

    struct store_link got;
    OK(st, store_link_get(st, "7", 1, &got));
    assert_false(got.found);
    struct store_fwd fw;
    OK(st, store_fwd_get(st, "7", 1, &fw));
    assert_false(fw.found);
    assert_int_equal(backlog(st), 0);
    bool found = true;
    char buf[8];
    OK(st, store_meta_get(st, "k", buf, sizeof buf, &found));
    assert_false(found);

    /* Rollback without a transaction is harmless; commit is misuse. */
    OK(st, store_rollback(st));
    assert_int_equal(store_commit(st), RT_REJECT);

    OK(st, store_begin(st));
    OK(st, store_link_put(st, &l));
    OK(st, store_fwd_next_seq(st, "7", 1, &seq));
    OK(st, store_commit(st));
    store_free(st);

    /* Committed work is there for another handle. */
    st = open_ok(f);
    OK(st, store_link_get(st, "7", 1, &got));
    assert_true(got.found);
    OK(st, store_fwd_get(st, "7", 1, &fw));
    assert_int_equal(fw.seq, 1);

    /* Freeing a handle with an open transaction rolls it back. */
    OK(st, store_begin(st));
    OK(st, store_outbox_add(st, "7", 99, 1000));
    store_free(st);
    st = open_ok(f);
    assert_int_equal(backlog(st), 0);
    store_free(st);
}

/* ---- concurrency ------------------------------------------------------ */

static void test_two_handles(void **state)
{
    struct fixture *f = *state;
    struct store *a = open_ok(f);
    struct store *b = open_ok(f);
    for (int i = 0; i < 200; i++) {
        OK(a, store_outbox_add(a, "7", i, 1000 + i));
        OK(b, store_outbox_add(b, "7", 1000 + i, 1000 + i));
        uint64_t sa = 0, sb = 0;
        OK(a, store_fwd_next_seq(a, "7", 1, &sa));
        OK(b, store_fwd_next_seq(b, "7", 1, &sb));
        assert_int_equal(sa, 2 * (uint64_t)i + 1);
        assert_int_equal(sb, 2 * (uint64_t)i + 2);
    }
    assert_int_equal(backlog(a), 400);
    assert_int_equal(backlog(b), 400);

    /* A transaction on one handle is invisible to the other until commit,
     * and the other's reads are not blocked meanwhile (WAL). */
    OK(a, store_begin(a));
    OK(a, store_outbox_add(a, "7", 5000, 1));
    assert_int_equal(backlog(b), 400);
    OK(a, store_commit(a));
    assert_int_equal(backlog(b), 401);
    store_free(a);
    store_free(b);
}

enum { PROC_EVENTS = 500, PROC_SEQS = 200 };

/* The child's half of the race: its own handle, opened after fork(), as a
 * CLI process would. Reports by exit status and, for the seqs it got,
 * through the pipe. Never returns. */
static void child_writer(const char *state_dir, int go_fd, int seq_fd)
{
    char err[512];
    struct store *st = store_open(state_dir, err, sizeof err);
    if (!st) {
        fprintf(stderr, "child: store_open: %s\n", err);
        _exit(2);
    }
    char c;
    if (read(go_fd, &c, 1) != 1)
        _exit(3);
    int status = 0;
    for (int i = 0; i < PROC_EVENTS && !status; i++) {
        if (store_outbox_add(st, "child", i, 1000 + i) != RT_OK) {
            fprintf(stderr, "child: outbox_add %d: %s\n", i, store_strerror(st));
            status = 4;
        }
        if (i < PROC_SEQS && !status) {
            uint64_t seq = 0;
            if (store_fwd_next_seq(st, "7", 1, &seq) != RT_OK) {
                fprintf(stderr, "child: next_seq: %s\n", store_strerror(st));
                status = 5;
            } else if (write(seq_fd, &seq, sizeof seq) != (ssize_t)sizeof seq) {
                status = 6;
            }
        }
    }
    store_free(st);
    _exit(status);
}

static void test_two_processes(void **state)
{
    struct fixture *f = *state;
    int go[2], seqs[2];
    assert_int_equal(pipe(go), 0);
    assert_int_equal(pipe(seqs), 0);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(go[1]);
        close(seqs[0]);
        child_writer(f->state, go[0], seqs[1]);
    }
    close(go[0]);
    close(seqs[1]);

    /* Both processes open a store that does not exist yet at the same time:
     * one creates the schema, the other waits and finds it. */
    struct store *st = open_ok(f);
    assert_int_equal(write(go[1], "g", 1), 1);
    close(go[1]);

    bool got[2 * PROC_SEQS + 1];
    memset(got, 0, sizeof got);
    for (int i = 0; i < PROC_EVENTS; i++) {
        OK(st, store_outbox_add(st, "parent", i, 1000 + i));
        if (i < PROC_SEQS) {
            uint64_t seq = 0;
            OK(st, store_fwd_next_seq(st, "7", 1, &seq));
            assert_true(seq >= 1 && seq <= 2 * PROC_SEQS);
            assert_false(got[seq]);
            got[seq] = true;
        }
    }

    /* The child's seqs, until it closes its end. */
    uint64_t seq;
    ssize_t r;
    int child_seqs = 0;
    while ((r = read(seqs[0], &seq, sizeof seq)) == (ssize_t)sizeof seq) {
        assert_true(seq >= 1 && seq <= 2 * PROC_SEQS);
        assert_false(got[seq]); /* no seq handed out twice */
        got[seq] = true;
        child_seqs++;
    }
    assert_int_equal(r, 0);
    close(seqs[0]);

    int wstatus = 0;
    assert_int_equal(waitpid(pid, &wstatus, 0), pid);
    assert_true(WIFEXITED(wstatus));
    assert_int_equal(WEXITSTATUS(wstatus), 0);
    assert_int_equal(child_seqs, PROC_SEQS);

    assert_int_equal(backlog(st), 2 * PROC_EVENTS);
    struct store_event *ev = calloc(2 * PROC_EVENTS + 1, sizeof *ev);
    assert_non_null(ev);
    size_t n = 0;
    OK(st, store_outbox_due(st, INT64_MAX, 2 * PROC_EVENTS + 1, ev, &n));
    assert_int_equal(n, 2 * PROC_EVENTS);
    int per_client[2] = {0, 0};
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(ev[i].events, 1);
        per_client[strcmp(ev[i].client, "child") == 0]++;
    }
    assert_int_equal(per_client[0], PROC_EVENTS);
    assert_int_equal(per_client[1], PROC_EVENTS);
    free(ev);

    struct store_fwd fw;
    OK(st, store_fwd_get(st, "7", 1, &fw));
    assert_int_equal(fw.seq, 2 * PROC_SEQS);
    store_free(st);
}

/* ---- resync: forgetting what was sent and published ------------------- */

static void test_fwd_forget(void **state)
{
    struct fixture *f = *state;
    struct store *st = open_ok(f);
    struct store_fwd fw;
    uint64_t seq = 0, n = 99;

    /* Two tasks of client 7 sent and seen, one of client 8. */
    for (int64_t task = 1; task <= 2; task++) {
        OK(st, store_fwd_next_seq(st, "7", task, &seq));
        OK(st, store_fwd_confirm(st, "7", task, seq, "fp-sent", 1000));
        OK(st, store_fwd_seen(st, "7", task, "2024-01-01 10:00:00"));
    }
    OK(st, store_fwd_next_seq(st, "8", 1, &seq));
    OK(st, store_fwd_confirm(st, "8", 1, seq, "fp-other", 1000));
    OK(st, store_fwd_seen(st, "8", 1, "2024-01-01 10:00:00"));

    /* One task: its fingerprint and updated go, its seqs stay. */
    OK(st, store_fwd_forget(st, "7", 2, &n));
    assert_int_equal(n, 1);
    OK(st, store_fwd_get(st, "7", 2, &fw));
    assert_true(fw.found);
    assert_string_equal(fw.fp, "");
    assert_string_equal(fw.updated, "");
    assert_int_equal(fw.seq, 1);
    assert_int_equal(fw.fp_seq, 1);
    OK(st, store_fwd_get(st, "7", 1, &fw));
    assert_string_equal(fw.fp, "fp-sent");
    assert_string_equal(fw.updated, "2024-01-01 10:00:00");

    /* The next message still goes after every earlier one, and its
     * confirmation is recorded again. */
    OK(st, store_fwd_next_seq(st, "7", 2, &seq));
    assert_int_equal(seq, 2);
    OK(st, store_fwd_confirm(st, "7", 2, seq, "fp-again", 2000));
    OK(st, store_fwd_get(st, "7", 2, &fw));
    assert_string_equal(fw.fp, "fp-again");

    /* A task never sent: nothing to forget, not an error. */
    OK(st, store_fwd_forget(st, "7", 3, &n));
    assert_int_equal(n, 0);
    OK(st, store_fwd_get(st, "7", 3, &fw));
    assert_false(fw.found);

    /* Task 0: every task of the client, no other client's. */
    OK(st, store_fwd_forget(st, "7", 0, &n));
    assert_int_equal(n, 2);
    OK(st, store_fwd_get(st, "7", 1, &fw));
    assert_string_equal(fw.fp, "");
    assert_string_equal(fw.updated, "");
    OK(st, store_fwd_get(st, "8", 1, &fw));
    assert_string_equal(fw.fp, "fp-other");
    assert_string_equal(fw.updated, "2024-01-01 10:00:00");

    assert_int_equal(store_fwd_forget(st, "", 1, NULL), RT_REJECT);
    store_free(st);
}

static void test_outbox_add_known(void **state)
{
    struct fixture *f = *state;
    struct store *st = open_ok(f);
    struct store_event ev[8];
    size_t got = 0;
    uint64_t seq = 0, n = 0;

    OK(st, store_fwd_next_seq(st, "7", 10, &seq));
    OK(st, store_fwd_seen(st, "7", 11, "2024-01-01 10:00:00"));
    OK(st, store_fwd_next_seq(st, "8", 12, &seq));
    /* Task 10 already waits, deferred: the new event makes it due now. */
    OK(st, store_outbox_add(st, "7", 10, 100));
    OK(st, store_outbox_defer(st, "7", 10, 1000000, "API down"));

    OK(st, store_outbox_add_known(st, "7", 500, &n));
    assert_int_equal(n, 2);
    OK(st, store_outbox_due(st, 500, 8, ev, &got));
    assert_int_equal(got, 2);
    for (size_t i = 0; i < got; i++) {
        assert_string_equal(ev[i].client, "7");
        assert_true(ev[i].task == 10 || ev[i].task == 11);
        if (ev[i].task == 10) {
            /* Coalesced into the waiting row: its first event is kept. */
            assert_int_equal(ev[i].events, 2);
            assert_int_equal(ev[i].first_ms, 100);
            assert_int_equal(ev[i].last_ms, 500);
            assert_int_equal(ev[i].attempts, 1);
        } else {
            assert_int_equal(ev[i].events, 1);
            assert_int_equal(ev[i].first_ms, 500);
        }
    }
    /* A client with no known task records nothing. */
    OK(st, store_outbox_add_known(st, "9", 600, &n));
    assert_int_equal(n, 0);
    assert_int_equal(backlog(st), 2);
    store_free(st);
}

static void test_link_forget_state(void **state)
{
    struct fixture *f = *state;
    struct store *st = open_ok(f);
    struct store_link l, got;
    uint64_t n = 0;

    /* Client 7: links 100 and 101 with published state, 102 without;
     * client 8: link 100 with published state. */
    const struct {
        const char *client;
        int64_t src;
        const char *applied;
    } rows[] = {
        {"7", 100, "name=aa;state=s100;status=1"},
        {"7", 101, "state=s101"},
        {"7", 102, "name=bb;note_len=3"},
        {"8", 100, "status=2;state=s800"},
    };
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        l = make_link(rows[i].client, rows[i].src, rows[i].src + 9000);
        l.rev_seq = 5;
        l.notes_sent = 7;
        snprintf(l.rev_fp, sizeof l.rev_fp, "lf-%s-%" PRId64, rows[i].client, rows[i].src);
        snprintf(l.applied, sizeof l.applied, "%s", rows[i].applied);
        OK(st, store_link_put(st, &l));
    }

    /* One link: only its rev_fp and state key go. */
    OK(st, store_link_forget_state(st, "7", 100, &n));
    assert_int_equal(n, 1);
    OK(st, store_link_get(st, "7", 100, &got));
    assert_string_equal(got.rev_fp, "");
    assert_string_equal(got.applied, "name=aa;status=1");
    assert_int_equal(got.rev_seq, 5);
    assert_int_equal(got.notes_sent, 7);
    assert_int_equal(got.last_seq, 1);
    assert_int_equal(got.dst_task, 9100);
    OK(st, store_link_get(st, "7", 101, &got));
    assert_string_equal(got.rev_fp, "lf-7-101");
    assert_string_equal(got.applied, "state=s101");

    /* Every link of client 7, not client 8's. */
    OK(st, store_link_forget_state(st, "7", 0, &n));
    assert_int_equal(n, 3);
    OK(st, store_link_get(st, "7", 101, &got));
    assert_string_equal(got.rev_fp, "");
    assert_string_equal(got.applied, "");
    OK(st, store_link_get(st, "7", 102, &got));
    assert_string_equal(got.rev_fp, "");
    assert_string_equal(got.applied, "name=bb;note_len=3");
    OK(st, store_link_get(st, "8", 100, &got));
    assert_string_equal(got.rev_fp, "lf-8-100");
    assert_string_equal(got.applied, "status=2;state=s800");

    /* Every client; inside a caller's transaction, which it commits. */
    OK(st, store_begin(st));
    OK(st, store_link_forget_state(st, NULL, 0, &n));
    assert_int_equal(n, 4);
    OK(st, store_commit(st));
    OK(st, store_link_get(st, "8", 100, &got));
    assert_string_equal(got.rev_fp, "");
    assert_string_equal(got.applied, "status=2");

    /* An unknown link is not an error. */
    OK(st, store_link_forget_state(st, "7", 555, &n));
    assert_int_equal(n, 0);
    store_free(st);
}

static void test_link_forget_state_many(void **state)
{
    struct fixture *f = *state;
    struct store *st = open_ok(f);
    struct store_link l, got;
    const int total = 700; /* more than one batch */
    uint64_t n = 0;

    OK(st, store_begin(st));
    for (int i = 1; i <= total; i++) {
        l = make_link("7", i, 5000 + i);
        snprintf(l.rev_fp, sizeof l.rev_fp, "lf");
        snprintf(l.applied, sizeof l.applied, "status=1;state=s%d;name=n%d", i, i);
        OK(st, store_link_put(st, &l));
    }
    OK(st, store_commit(st));
    OK(st, store_link_forget_state(st, "7", 0, &n));
    assert_int_equal(n, total);
    for (int i = 1; i <= total; i++) {
        char want[64];
        OK(st, store_link_get(st, "7", i, &got));
        snprintf(want, sizeof want, "status=1;name=n%d", i);
        assert_string_equal(got.applied, want);
        assert_string_equal(got.rev_fp, "");
    }
    store_free(st);
}

/* ---- trouble: a full database, a lock held by another process -------- */

/* SQLITE_FULL (here the connection's page cap; a full disk answers the
 * same) is RT_RETRY with words an operator acts on, and the store works
 * again once there is room. */
static void test_full_database_is_named(void **state)
{
    struct fixture *f = *state;
    struct store *st = open_ok(f);
    OK(st, store_outbox_add(st, "7", 1, 1000));
    char sql[96];
    snprintf(sql, sizeof sql, "PRAGMA max_page_count = %d", 1);
    assert_int_equal(sqlite3_exec(st->db, sql, NULL, NULL, NULL), SQLITE_OK);
    rt_status r = RT_OK;
    char note[4096];
    memset(note, 'x', sizeof note - 1);
    note[sizeof note - 1] = '\0';
    for (int i = 0; i < 1000 && r == RT_OK; i++)
        r = store_outbox_defer(st, "7", 1, 2000 + i, note) == RT_OK
                ? store_outbox_add(st, "7", 100 + i, 1000)
                : RT_RETRY;
    assert_int_equal(r, RT_RETRY);
    printf("full: %s\n", store_strerror(st));
    assert_non_null(strstr(store_strerror(st), "no space left on the device holding "));
    assert_non_null(strstr(store_strerror(st), f->db));
    char cause[STORE_ERR_MAX];
    snprintf(cause, sizeof cause, "no space left on the device holding %s", f->db);
    assert_string_equal(store_strcause(st), cause);
    assert_int_equal(sqlite3_exec(st->db, "PRAGMA max_page_count = 1073741823", NULL, NULL, NULL),
                     SQLITE_OK);
    OK(st, store_outbox_add(st, "7", 5000, 1000));
    store_free(st);
}

/* A lock another process holds past the busy timeout: RT_RETRY after that
 * timeout (the daemon's is short), "locked" in the reason. */
static void test_locked_database_is_named(void **state)
{
    struct fixture *f = *state;
    char err[256];
    struct store *st = store_open_timeout(f->state, 50, err, sizeof err);
    assert_non_null(st);
    assert_int_equal(st->busy_ms, 50);
    struct store *other = open_ok(f);
    OK(other, store_begin(other));
    OK(other, store_outbox_add(other, "7", 1, 1000));
    assert_int_equal(store_outbox_add(st, "7", 2, 1000), RT_RETRY);
    printf("locked: %s\n", store_strerror(st));
    assert_non_null(strstr(store_strerror(st), "is locked by another process (waited 50 ms"));
    assert_non_null(strstr(store_strerror(st), f->db));
    char cause[STORE_ERR_MAX];
    snprintf(cause, sizeof cause, "%s is locked by another process (waited 50 ms)", f->db);
    assert_string_equal(store_strcause(st), cause);
    assert_int_equal(store_begin(st), RT_RETRY);
    /* Another statement, the same condition: the same cause. */
    assert_string_equal(store_strcause(st), cause);
    assert_non_null(strstr(store_strerror(st), "BEGIN IMMEDIATE failed: "));
    OK(other, store_commit(other));
    OK(st, store_outbox_add(st, "7", 2, 1000));
    assert_int_equal(backlog(st), 2);
    /* store_open() keeps the command line's longer wait. */
    assert_int_equal(other->busy_ms, STORE_BUSY_TIMEOUT_MS);
    store_free(other);
    store_free(st);
}

/* Rows deferred by a wall clock that was ahead: moved back by the step,
 * capped at the longest deferral, never before now; due rows untouched. */
static void test_outbox_reschedule(void **state)
{
    struct fixture *f = *state;
    struct store *st = open_ok(f);
    const int64_t now = 1000000000;
    struct store_event ev[8];
    size_t n = 0;
    OK(st, store_outbox_add(st, "7", 1, now - 5));
    OK(st, store_outbox_add(st, "7", 2, now));
    OK(st, store_outbox_defer(st, "7", 2, now + 1000, "x"));
    OK(st, store_outbox_add(st, "7", 3, now));
    OK(st, store_outbox_defer(st, "7", 3, now + 3600 * 1000 + 1000, "x"));
    OK(st, store_outbox_add(st, "7", 4, now));
    OK(st, store_outbox_defer(st, "7", 4, now + 10LL * 86400 * 1000, "x"));
    uint64_t moved = 0;
    OK(st, store_outbox_reschedule(st, now, 3600 * 1000, 300 * 1000, &moved));
    assert_int_equal(moved, 3);
    OK(st, store_outbox_due(st, now, 8, ev, &n));
    assert_int_equal(n, 2); /* 1, and 2 (its second, less an hour) */
    OK(st, store_outbox_due(st, now + 999, 8, ev, &n));
    assert_int_equal(n, 2);
    OK(st, store_outbox_due(st, now + 1000, 8, ev, &n));
    assert_int_equal(n, 3); /* 3: an hour and a second ahead, less the hour */
    OK(st, store_outbox_due(st, now + 300 * 1000 - 1, 8, ev, &n));
    assert_int_equal(n, 3);
    OK(st, store_outbox_due(st, now + 300 * 1000, 8, ev, &n));
    assert_int_equal(n, 4); /* 4: ten days ahead, capped */
    /* Again with no step: nothing past the cap is left, nothing moves. */
    OK(st, store_outbox_reschedule(st, now, 0, 300 * 1000, &moved));
    assert_int_equal(moved, 0);
    assert_int_equal(store_outbox_reschedule(st, now, -1, 0, NULL), RT_REJECT);
    store_free(st);
}

/* Group commits (store_sync.c): lazy commits are durable only after
 * store_sync(), which syncs once for all of them and runs the listeners
 * only when a sync was wanted; store_commit_durable() syncs at once. */
static int synced_calls;

static void count_synced(void *arg)
{
    (void)arg;
    synced_calls++;
}

/* A store_listen_before() listener: the pass's gathered commit. */
static int pass_end_calls;

static void commit_at_pass_end(void *arg)
{
    pass_end_calls++;
    assert_int_equal(store_outbox_add(arg, "c1", 10 + pass_end_calls, 1000), RT_OK);
}

static void test_group_commits(void **state)
{
    struct fixture *f = *state;
    struct store *st = open_ok(f);
    struct store_sync_stats before, after;

    synced_calls = 0;
    assert_int_equal(store_listen(st, count_synced, NULL), RT_OK);
    /* Synced commits: durable as they return, one sync each. */
    store_sync_stats(st, &before);
    assert_int_equal(store_outbox_add(st, "c1", 1, 1000), RT_OK);
    assert_true(store_durable(st, store_mark(st)));
    store_sync_stats(st, &after);
    assert_int_equal(after.commits - before.commits, 1);
    assert_int_equal(after.syncs - before.syncs, 1);

    /* Lazy: three commits, none durable, then one sync for them all. */
    assert_int_equal(store_set_lazy(st, true), RT_OK);
    store_sync_stats(st, &before);
    assert_int_equal(store_outbox_add(st, "c1", 2, 1000), RT_OK);
    uint64_t first = store_mark(st);
    assert_int_equal(store_begin(st), RT_OK);
    assert_int_equal(store_outbox_add(st, "c1", 3, 1000), RT_OK);
    assert_int_equal(store_commit(st), RT_OK);
    uint64_t seq = 0;
    assert_int_equal(store_fwd_next_seq(st, "c1", 2, &seq), RT_OK);
    uint64_t last = store_mark(st);
    assert_true(last >= first + 2);
    assert_false(store_durable(st, first));
    assert_false(store_durable(st, last));
    store_sync_stats(st, &after);
    assert_int_equal(after.commits - before.commits, 3);
    assert_int_equal(after.syncs - before.syncs, 0);
    /* Inside a transaction a sync is refused. */
    assert_int_equal(store_begin(st), RT_OK);
    assert_int_equal(store_sync(st), RT_REJECT);
    assert_int_equal(store_rollback(st), RT_OK);
    /* Nobody asked: the commits are synced, the listeners not run. */
    assert_int_equal(store_sync(st), RT_OK);
    assert_true(store_durable(st, last));
    assert_int_equal(synced_calls, 0);
    store_sync_stats(st, &after);
    assert_int_equal(after.syncs - before.syncs, 1);
    /* Asked for with nothing to sync: the listeners run, no sync. */
    store_want_sync(st);
    assert_true(store_sync_wanted(st));
    assert_int_equal(store_sync(st), RT_OK);
    assert_false(store_sync_wanted(st));
    assert_int_equal(synced_calls, 1);
    store_sync_stats(st, &after);
    assert_int_equal(after.syncs - before.syncs, 1);

    /* Only a pass end asked for: the listeners run before and after, and
     * what the one before commits is not synced (nobody waits for it). */
    pass_end_calls = 0;
    assert_int_equal(store_listen_before(st, commit_at_pass_end, st), RT_OK);
    struct store_sync_stats pass0, pass1;
    store_sync_stats(st, &pass0);
    store_want_pass_end(st);
    assert_true(store_sync_wanted(st));
    assert_int_equal(store_sync(st), RT_OK);
    assert_false(store_sync_wanted(st));
    assert_int_equal(pass_end_calls, 1);
    assert_int_equal(synced_calls, 2);
    store_sync_stats(st, &pass1);
    assert_int_equal(pass1.commits - pass0.commits, 1);
    assert_int_equal(pass1.syncs - pass0.syncs, 0);
    assert_false(store_durable(st, store_mark(st)));
    /* A sync wanted as well: one fsync covers both passes' commits. */
    store_want_pass_end(st);
    store_want_sync(st);
    assert_int_equal(store_sync(st), RT_OK);
    assert_int_equal(pass_end_calls, 2);
    assert_int_equal(synced_calls, 3);
    assert_true(store_durable(st, store_mark(st)));
    store_sync_stats(st, &pass1);
    assert_int_equal(pass1.commits - pass0.commits, 2);
    assert_int_equal(pass1.syncs - pass0.syncs, 1);
    store_unlisten(st, commit_at_pass_end, st);
    store_sync_stats(st, &before);
    after = before;

    /* A durable commit is on disk when it returns. */
    assert_int_equal(store_begin(st), RT_OK);
    assert_int_equal(store_outbox_add(st, "c1", 4, 1000), RT_OK);
    assert_int_equal(store_commit_durable(st), RT_OK);
    assert_true(store_durable(st, store_mark(st)));
    store_sync_stats(st, &after);
    assert_int_equal(after.syncs - before.syncs, 1);

    /* Back to synced commits: what is pending is synced first. */
    assert_int_equal(store_outbox_add(st, "c1", 5, 1000), RT_OK);
    assert_false(store_durable(st, store_mark(st)));
    assert_int_equal(store_set_lazy(st, false), RT_OK);
    assert_true(store_durable(st, store_mark(st)));
    store_unlisten(st, count_synced, NULL);
    store_want_sync(st);
    assert_int_equal(store_sync(st), RT_OK);
    assert_int_equal(synced_calls, 3);
    uint64_t backlog = 0;
    int64_t oldest = 0;
    assert_int_equal(store_outbox_backlog(st, &backlog, &oldest), RT_OK);
    assert_int_equal(backlog, 7);
    store_free(st);
}

/* The retry watch: a confirmed copy is kept with its body until a
 * delivery of its seq or a newer one comes back; an older copy never
 * replaces a newer one's watch; due rows come earliest first, per
 * direction; pushing moves one row's time; caps are refused. */
static void test_retry_watch(void **state)
{
    struct fixture *f = *state;
    struct store *st = open_ok(f);
    unsigned char body[3] = {0x81, 0x00, 0xff};
    struct store_retry r;
    memset(&r, 0, sizeof(r));
    r.dir = 0;
    snprintf(r.client, sizeof(r.client), "c1");
    r.task = 7;
    r.seq = 3;
    r.attempts = 1;
    r.due_ms = 5000;
    snprintf(r.user, sizeof(r.user), "c1-user");
    snprintf(r.message_id, sizeof(r.message_id), "c1:7:3");
    snprintf(r.reason, sizeof(r.reason), "HTTP status 503");
    r.body = body;
    r.len = sizeof(body);
    OK(st, store_retry_put(st, &r));
    /* Another task, due earlier; and the same task in the other direction. */
    r.task = 8;
    r.due_ms = 4000;
    OK(st, store_retry_put(st, &r));
    r.dir = 1;
    r.task = 7;
    OK(st, store_retry_put(st, &r));
    uint64_t n = 0;
    OK(st, store_retry_count(st, 0, &n));
    assert_int_equal(n, 2);

    /* An older copy of task 7 does not replace the watch of seq 3. */
    r.dir = 0;
    r.seq = 2;
    r.attempts = 9;
    OK(st, store_retry_put(st, &r));

    struct store_retry due[4];
    size_t got = 0;
    /* The look reads its rows in the index's order: no sort (migration
     * 5; without it every look sorted every watched copy). */
    sqlite3_stmt *ds = store_db_stmt(st, ST_RETRY_DUE);
    sqlite3_stmt_status(ds, SQLITE_STMTSTATUS_SORT, 1);
    OK(st, store_retry_due(st, 0, 4999, 4, due, &got));
    assert_int_equal(sqlite3_stmt_status(ds, SQLITE_STMTSTATUS_SORT, 0), 0);
    assert_int_equal(got, 1);
    assert_int_equal(due[0].task, 8);
    store_retry_release(due, got);
    OK(st, store_retry_due(st, 0, 5000, 4, due, &got));
    assert_int_equal(got, 2);
    assert_int_equal(due[1].task, 7);
    assert_int_equal(due[1].seq, 3);
    assert_int_equal(due[1].attempts, 1);
    assert_int_equal(due[1].len, sizeof(body));
    assert_memory_equal(due[1].body, body, sizeof(body));
    assert_string_equal(due[1].user, "c1-user");
    assert_string_equal(due[1].message_id, "c1:7:3");
    assert_string_equal(due[1].reason, "HTTP status 503");
    store_retry_release(due, got);
    assert_null(due[0].body);

    /* Sent again: due later. */
    OK(st, store_retry_push(st, 0, "c1", 7, 3, 9000));
    OK(st, store_retry_due(st, 0, 8999, 4, due, &got));
    assert_int_equal(got, 1);
    store_retry_release(due, got);

    /* An older seq coming back clears nothing; the copy's own seq does,
     * in its direction only. */
    uint64_t cleared = 9;
    OK(st, store_retry_clear(st, 0, "c1", 7, 2, &cleared));
    assert_int_equal(cleared, 0);
    OK(st, store_retry_clear(st, 0, "c1", 7, 3, &cleared));
    assert_int_equal(cleared, 1);
    OK(st, store_retry_clear(st, 0, "c1", 8, 40, &cleared));
    assert_int_equal(cleared, 1);
    OK(st, store_retry_count(st, 0, &n));
    assert_int_equal(n, 0);
    OK(st, store_retry_count(st, 1, &n));
    assert_int_equal(n, 1);

    /* Caps: a body over STORE_RETRY_BODY_MAX, a direction out of range. */
    r.len = STORE_RETRY_BODY_MAX + 1;
    assert_int_equal(store_retry_put(st, &r), RT_REJECT);
    assert_non_null(strstr(store_strerror(st), "body"));
    r.len = sizeof(body);
    r.dir = 99;
    assert_int_equal(store_retry_put(st, &r), RT_REJECT);
    store_free(st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_open_creates_and_reopen_keeps, setup, teardown),
        cmocka_unit_test_setup_teardown(test_journal_mode_is_wal, setup, teardown),
        cmocka_unit_test_setup_teardown(test_migration_2_columns, setup, teardown),
        cmocka_unit_test_setup_teardown(test_migrates_version_1, setup, teardown),
        cmocka_unit_test_setup_teardown(test_migrates_version_2, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_readonly, setup, teardown),
        cmocka_unit_test_setup_teardown(test_future_version_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_state_dir_is_a_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_a_database_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outbox_coalesces, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outbox_done_keeps_newer_event, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outbox_defer_and_due, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outbox_backlog, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outbox_due_scan_is_bounded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_id_checked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fwd_seq_survives_reopen, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fwd_confirm, setup, teardown),
        cmocka_unit_test_setup_teardown(test_links, setup, teardown),
        cmocka_unit_test_setup_teardown(test_links_list_paging, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rev_and_meta, setup, teardown),
        cmocka_unit_test_setup_teardown(test_transaction_rollback_and_commit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_two_handles, setup, teardown),
        cmocka_unit_test_setup_teardown(test_two_processes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fwd_forget, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outbox_add_known, setup, teardown),
        cmocka_unit_test_setup_teardown(test_link_forget_state, setup, teardown),
        cmocka_unit_test_setup_teardown(test_link_forget_state_many, setup, teardown),
        cmocka_unit_test_setup_teardown(test_full_database_is_named, setup, teardown),
        cmocka_unit_test_setup_teardown(test_locked_database_is_named, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outbox_reschedule, setup, teardown),
        cmocka_unit_test_setup_teardown(test_group_commits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retry_watch, setup, teardown),
    };
    return cmocka_run_group_tests_name("store", tests, NULL, NULL);
}
