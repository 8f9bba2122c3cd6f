/*
 * fault_disk_full.c - issue 9, case 7: the disk under the stores fills,
 * and another process holds a store locked.
 *
 * Both daemons' state_dir are small tmpfs mounts (the suite runs as root,
 * as scripts/test does), filled with a file when the fault starts. Before
 * each fill the store's write-ahead log is checkpointed and truncated, so
 * that the daemon's next commit needs new blocks: without it SQLite could
 * go on reusing the pages its log already has and the fill would test
 * nothing.
 *
 * Disk full, required:
 *   - the server, whose disk is full first, does not ack a delivery it
 *     could not commit: the 100 task messages that arrive meanwhile stay
 *     in its queue, no retry copy is made, and each is applied once after
 *     space is freed;
 *   - `remotetaskctl --command taskevent` exits non-zero with "no space
 *     left" in its message (BILLmanager's handler must see the failure);
 *     the task is still delivered once space is back (reconciliation);
 *   - no daemon crashes, both stores pass `PRAGMA integrity_check`, and
 *     everything recorded before is delivered once.
 * Locked store, required: with another process holding both stores in an
 * exclusive transaction for 20 s while 100 tasks flow, no daemon crashes
 * and the work resumes: everything is applied once.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "faults.h"
#include "harness.h"
#include "harness_rabbit.h"
#include "harness_sim.h"

#define TMPFS_OPTS  "size=16m,mode=0700"
#define FIRST_BATCH 150
#define HELD_BATCH  100
#define DURING_FULL 5
#define LOCK_BATCH  100
#define LOCK_MS     20000
#define FILL_CHUNK  ((size_t)1024 * 1024)
#define FILLER      "filler"
#define SERVER_WAIT 8000
/* What status gets while the stores are locked: the daemons' loops wait in
 * SQLite's busy timeout then. */
#define LOCKED_STATUS_MS 8000

static const char *const server_members[] = {"broker.state",    "queues",   "errors.retried",
                                             "errors.requeued", "counters", NULL};
static const char *const client_members[] = {"broker.state", "outbox", "errors.outbox_deferred",
                                             "counters.tasks_published", NULL};

/* ---- the mounts ----------------------------------------------------- */

struct mounts {
    struct harness_scenario *s;
    char paths[2][PATH_MAX];
    int mounted[2];
    pid_t locker[2]; /* sqlite3 processes holding a store, 0 when none */
    int locker_in[2];
};

static struct mounts mounts;

static void mount_tmpfs(struct mounts *m, int i, const char *path)
{
    snprintf(m->paths[i], sizeof(m->paths[i]), "%s", path);
    if (mkdir(path, 0700) != 0 && errno != EEXIST)
        fail_msg("cannot create %s: %s", path, strerror(errno));
    if (mount("tmpfs", path, "tmpfs", 0, TMPFS_OPTS) != 0)
        fail_msg("cannot mount a tmpfs (%s) on %s: %s; the disk-full case needs root, as "
                 "scripts/test runs",
                 TMPFS_OPTS, path, strerror(errno));
    m->mounted[i] = 1;
}

static void stop_locker(struct mounts *m, int i, int commit)
{
    if (m->locker[i] <= 0)
        return;
    if (commit) {
        static const char end[] = "COMMIT;\n.quit\n";
        if (write(m->locker_in[i], end, sizeof(end) - 1) != (ssize_t)(sizeof(end) - 1))
            kill(m->locker[i], SIGKILL);
    } else {
        kill(m->locker[i], SIGKILL);
    }
    close(m->locker_in[i]);
    int status;
    while (waitpid(m->locker[i], &status, 0) < 0 && errno == EINTR)
        ;
    m->locker[i] = 0;
}

/* Clean-up: the lockers go, the daemons stop (their files are on the
 * mounts), the mounts go. */
static void undo_mounts(void *arg)
{
    struct mounts *m = arg;
    for (int i = 0; i < 2; i++)
        stop_locker(m, i, 0);
    if (m->s) {
        harness_daemon_kill(m->s->client);
        harness_daemon_kill(m->s->server);
    }
    for (int i = 0; i < 2; i++) {
        if (!m->mounted[i])
            continue;
        if (umount2(m->paths[i], 0) != 0 && umount2(m->paths[i], MNT_DETACH) != 0)
            fprintf(stderr, "fault disk-full: cannot unmount %s: %s\n", m->paths[i],
                    strerror(errno));
        m->mounted[i] = 0;
    }
}

/* Fills the file system of dir with dir/filler until it has no block left;
 * returns the bytes written. */
static size_t fill(const char *dir)
{
    char path[PATH_MAX];
    static char chunk[FILL_CHUNK];
    size_t total = 0, size = FILL_CHUNK;
    snprintf(path, sizeof(path), "%s/%s", dir, FILLER);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        fail_msg("cannot create %s: %s", path, strerror(errno));
    memset(chunk, 'x', sizeof(chunk));
    /* Big writes, then ever smaller ones, until not a byte more fits. */
    while (size) {
        ssize_t n = write(fd, chunk, size);
        if (n > 0) {
            total += (size_t)n;
            continue;
        }
        if (n < 0 && errno != ENOSPC) {
            int e = errno;
            close(fd);
            fail_msg("cannot fill %s: %s", path, strerror(e));
        }
        size /= 2;
    }
    close(fd);
    return total;
}

static void unfill(const char *dir)
{
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/%s", dir, FILLER);
    if (unlink(path) != 0)
        fail_msg("cannot remove %s: %s", path, strerror(errno));
}

/* Checkpoints the store's write-ahead log into the database and truncates
 * it to nothing, so that the next commit must grow it. */
static void truncate_wal(struct fault_result *r, const char *state_dir)
{
    char db[PATH_MAX], out[256];
    faults_store_path(db, sizeof(db), state_dir);
    for (int attempt = 0; attempt < 20; attempt++) {
        int rc = faults_sqlite(db, "PRAGMA wal_checkpoint(TRUNCATE);", out, sizeof(out));
        /* "busy|log frames|checkpointed": busy 0 when it completed. */
        if (rc == 0 && strncmp(out, "0|", 2) == 0)
            return;
        poll(NULL, 0, 100);
    }
    fault_check(r, 0, "the write-ahead log of %s could be truncated before the fill (%s)", db, out);
}

/* Starts sqlite3 holding the store in an exclusive transaction; returns
 * once it holds it. */
static void lock_store(struct mounts *m, int i, const char *state_dir)
{
    char db[PATH_MAX];
    int in[2], out[2];
    faults_store_path(db, sizeof(db), state_dir);
    if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0)
        fail_msg("pipe: %s", strerror(errno));
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        fail_msg("fork: %s", strerror(errno));
    if (pid == 0) {
        dup2(in[0], STDIN_FILENO);
        dup2(out[1], STDOUT_FILENO);
        dup2(out[1], STDERR_FILENO);
        execlp("sqlite3", "sqlite3", "-batch", db, (char *)NULL);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    m->locker[i] = pid;
    m->locker_in[i] = in[1];
    static const char begin[] = ".timeout 10000\nBEGIN EXCLUSIVE;\nSELECT 'locked';\n";
    if (write(in[1], begin, sizeof(begin) - 1) != (ssize_t)(sizeof(begin) - 1))
        fail_msg("cannot talk to sqlite3: %s", strerror(errno));
    char said[256] = "";
    size_t got = 0;
    long long deadline = harness_now_ms() + FAULTS_SHORT_DEADLINE_MS;
    while (!strstr(said, "locked")) {
        long long left = deadline - harness_now_ms();
        struct pollfd p = {.fd = out[0], .events = POLLIN};
        if (left <= 0 || poll(&p, 1, (int)left) <= 0)
            fail_msg("sqlite3 did not take the lock on %s", db);
        ssize_t n = read(out[0], said + got, sizeof(said) - 1 - got);
        if (n <= 0)
            fail_msg("sqlite3 ended before it took the lock on %s", db);
        got += (size_t)n;
        said[got] = '\0';
        if (strstr(said, "Error"))
            fail_msg("sqlite3 could not lock %s: %s", db, said);
    }
    close(out[0]);
}

/* ---- the case ------------------------------------------------------- */

static long long queue_messages(const char *queue)
{
    struct harness_queue q;
    return harness_rabbit_queue(queue, &q) ? q.messages : -1;
}

static void test_disk_full(void **state)
{
    (void)state;
    struct harness_scenario_opts o = {.max_inflight = 4};
    struct harness_scenario *s = faults_scenario("fdisk", &o);
    struct fault_result r;
    char fwd[BROKER_NAME_MAX], out[1024];
    broker_queue_name(fwd, sizeof(fwd), BROKER_FORWARD, s->client_id);
    fault_begin(&r, s, "disk-full", 7, "Disk full under both stores; a store locked for 20 s");
    memset(&mounts, 0, sizeof(mounts));
    mounts.s = s;
    faults_on_teardown(undo_mounts, &mounts);
    mount_tmpfs(&mounts, 0, s->client_state);
    mount_tmpfs(&mounts, 1, s->server_state);
    faults_start_both(s);
    faults_bulk_send(s, FIRST_BATCH, "df-");
    fault_check(&r, harness_flow_wait_all(s, FAULTS_APPLY_DEADLINE_MS, NULL),
                "the first %d tasks are applied", FIRST_BATCH);
    fault_check(&r, faults_wait_outbox_empty(s, FAULTS_SHORT_DEADLINE_MS),
                "the client's outbox is empty before the fault");

    /* The server's disk fills; task messages arrive. */
    json_t *st = fault_status(&r, "server", s->server, "before the fault", server_members);
    long long retried0 = json_integer_value(faults_json_path(st, "errors.retried.forward"));
    json_decref(st);
    long long writes0 = harness_sim_count(s->dst, "func=task.edit&write=1&outcome=ok");
    truncate_wal(&r, s->server_state);
    fault_start(&r);
    size_t filled = fill(s->server_state);
    long long held = faults_bulk_send(s, HELD_BATCH, "df-held-");
    fault_check(&r, faults_wait_outbox_empty(s, FAULTS_SHORT_DEADLINE_MS),
                "the client publishes the %d tasks of the held batch", HELD_BATCH);
    /* A few seconds in which the server tries: the fault, not a wait for
     * a condition. */
    poll(NULL, 0, SERVER_WAIT);
    long long in_queue = queue_messages(fwd);
    st = fault_status(&r, "server", s->server, "with its disk full", server_members);
    long long retried = json_integer_value(faults_json_path(st, "errors.retried.forward"));
    json_decref(st);
    long long writes = harness_sim_count(s->dst, "func=task.edit&write=1&outcome=ok");
    fault_note(&r,
               "%zu bytes filled the server's tmpfs; %lld s later %s held %lld messages, the "
               "server had made %lld retry copies and %lld target writes",
               filled, (long long)SERVER_WAIT / 1000, fwd, in_queue, retried - retried0,
               writes - writes0);
    fault_check(&r, in_queue == HELD_BATCH,
                "the server does not ack what it could not commit: %s holds %lld of the %d "
                "messages",
                fwd, in_queue, HELD_BATCH);
    fault_check(&r, retried == retried0,
                "the server holds the deliveries instead of sending retry copies (%lld made)",
                retried - retried0);
    fault_check(&r, harness_daemon_running(s->server), "the server runs with its disk full");
    static const char *const server_lines[] = {"full", NULL};
    fault_quote(&r, "server", s->server, server_lines);

    /* The client's disk fills too: taskevent must fail visibly. */
    long long during = faults_bulk(s, DURING_FULL, "df-during-");
    truncate_wal(&r, s->client_state);
    filled = fill(s->client_state);
    char elid[32];
    snprintf(elid, sizeof(elid), "%lld", during);
    const char *taskevent[] = {"--command", "taskevent", "--elid", elid, NULL};
    char *said = NULL;
    int rc = faults_ctl(s->client_conf, taskevent, &said);
    fault_check(&r, rc != 0, "taskevent with the client's disk full exits non-zero (%d)", rc);
    fault_check(&r, strcasestr(said, "no space left") != NULL,
                "taskevent says \"no space left\": %s", said);
    fault_note(&r, "%zu bytes filled the client's tmpfs; taskevent said: %s", filled, said);
    free(said);
    json_decref(fault_status(&r, "client", s->client, "with its disk full", client_members));
    static const char *const client_lines[] = {"full", NULL};
    fault_quote(&r, "client", s->client, client_lines);
    fault_check(&r, harness_daemon_running(s->client), "the client runs with its disk full");

    /* Space again. */
    unfill(s->client_state);
    unfill(s->server_state);
    fault_end(&r);
    long long freed_at = harness_now_ms();
    fault_check(&r, faults_wait_sources(s, held, HELD_BATCH, FAULTS_APPLY_DEADLINE_MS),
                "the held batch is applied once space is back");
    int all = harness_flow_wait_all(s, FAULTS_APPLY_DEADLINE_MS, NULL);
    fault_check(&r, all,
                "everything recorded before is delivered, and the tasks whose taskevent failed "
                "too (reconciliation)");
    fault_wait_recovered(&r, FAULTS_APPLY_DEADLINE_MS);
    fault_note(&r, "everything applied %.1f s after space was freed",
               (double)(harness_now_ms() - freed_at) / 1000.0);
    fault_check(&r, faults_wait_queue_empty(fwd, FAULTS_SHORT_DEADLINE_MS),
                "the server applies everything in %s", fwd);
    long long creates = harness_sim_count(s->dst, "func=task.edit&write=1&outcome=ok");
    fault_check(&r, creates == (long long)r.sent,
                "each task is written to the target once: %lld writes for %zu tasks", creates,
                r.sent);
    fault_check(&r, faults_store_ok(s->client_state, out, sizeof(out)),
                "the client's store passes PRAGMA integrity_check: %s", out);
    fault_check(&r, faults_store_ok(s->server_state, out, sizeof(out)),
                "the server's store passes PRAGMA integrity_check: %s", out);
    fault_check_running(&r, s);

    /* Both stores held by another process for 20 s while tasks flow. */
    long long locked_batch = faults_bulk_send(s, LOCK_BATCH, "df-lock-");
    lock_store(&mounts, 0, s->client_state);
    lock_store(&mounts, 1, s->server_state);
    long long locked_at = harness_now_ms();
    size_t on_target = harness_flow_target_count(s);
    /* The daemons' loops wait in SQLite's busy timeout meanwhile: status
     * gets 8 s each, so that the lock lasts its 20 s. */
    json_decref(fault_status_within(&r, "server", s->server, "with its store locked",
                                    server_members, LOCKED_STATUS_MS));
    json_decref(fault_status_within(&r, "client", s->client, "with its store locked",
                                    client_members, LOCKED_STATUS_MS));
    long long left = locked_at + LOCK_MS - harness_now_ms();
    if (left > 0)
        poll(NULL, 0, (int)left);
    fault_check(&r, harness_daemon_running(s->client) && harness_daemon_running(s->server),
                "both daemons run after %d s with their stores locked", LOCK_MS / 1000);
    size_t still = harness_flow_target_count(s);
    stop_locker(&mounts, 0, 1);
    stop_locker(&mounts, 1, 1);
    long long unlocked_at = harness_now_ms();
    fault_check(&r, faults_wait_sources(s, locked_batch, LOCK_BATCH, FAULTS_APPLY_DEADLINE_MS),
                "the work resumes: the %d tasks sent as the stores were locked are applied",
                LOCK_BATCH);
    fault_note(&r,
               "stores locked for %lld ms: %zu tasks on the target when the lock was taken, %zu "
               "when it was released; the %d tasks of that batch applied %.1f s after",
               unlocked_at - locked_at, on_target, still, LOCK_BATCH,
               (double)(harness_now_ms() - unlocked_at) / 1000.0);
    static const char *const lock_lines[] = {"locked", NULL};
    fault_quote(&r, "server", s->server, lock_lines);
    fault_quote(&r, "client", s->client, lock_lines);
    fault_count(&r);
    fault_check(&r, r.lost == 0 && r.duplicated == 0, "after the lock nothing is lost or doubled");
    fault_check(&r, faults_store_ok(s->client_state, out, sizeof(out)),
                "the client's store passes PRAGMA integrity_check after the lock: %s", out);
    fault_check(&r, faults_store_ok(s->server_state, out, sizeof(out)),
                "the server's store passes PRAGMA integrity_check after the lock: %s", out);

    fault_check_running(&r, s);
    fault_stop_both(&r, s);
    fault_report(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_disk_full, faults_teardown),
    };
    return cmocka_run_group_tests(tests, faults_group_setup, NULL);
}
