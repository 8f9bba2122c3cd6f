/*
 * benchtool.c - the small steps bench/run needs that a shell cannot do
 * quickly or exactly: fill a store, watch a queue, load an API.
 *
 *   rtbench_tool outbox STATE_DIR CLIENT FIRST LAST
 *       Records the events "task N changed" for N in FIRST..LAST in one
 *       transaction (what remotetaskctl taskevent does, in bulk). Prints
 *       recorded_ms=<wall-clock ms of the events>.
 *   rtbench_tool pace STATE_DIR CLIENT FIRST LAST RATE SOCKET
 *       Records one event per task at RATE events/s, each in its own
 *       transaction followed by a {"cmd":"wake"} on the daemon's control
 *       socket, exactly as remotetaskctl taskevent does. Prints one line
 *       "TASK MS" per event (MS = the wall-clock ms stored as first_ms).
 *   rtbench_tool ping SOCKET TIMEOUT_S
 *       Waits until the daemon answers {"cmd":"ping"} on SOCKET (exit 1
 *       when it does not within TIMEOUT_S).
 *   rtbench_tool wake SOCKET
 *       Sends {"cmd":"wake","reconcile":false} once (exit 1 when refused).
 *   rtbench_tool backlog STATE_DIR
 *       Prints the number of outbox rows.
 *   rtbench_tool links STATE_DIR CLIENT SRC_FIRST DST_FIRST COUNT
 *       Creates COUNT links (server side) src SRC_FIRST+i -> dst DST_FIRST+i,
 *       last_seq 1, in one transaction: tasks as the forward applier
 *       leaves them after creating them.
 *   rtbench_tool qwait PORT USER PASSWORD_FILE QUEUE COUNT TIMEOUT_S
 *       Polls the ready-message count of QUEUE (passive queue.declare every
 *       10 ms; a missing queue counts 0) until it reaches COUNT. Prints
 *       met_ms=<wall-clock ms when it did> depth=<count>; exit 1 on timeout.
 *   rtbench_tool qdepth PORT USER PASSWORD_FILE QUEUE
 *       Prints the ready-message count (0 when the queue does not exist).
 *   rtbench_tool purge PORT USER PASSWORD_FILE QUEUE
 *       Purges QUEUE if it exists.
 *   rtbench_tool apiload CONFIG FIRST COUNT CALLS
 *       Views (func task.edit elid=N) tasks FIRST..FIRST+COUNT-1 round robin,
 *       CALLS times, through the same API client as the daemon (common/
 *       billmgr, billmanager.max_inflight calls in flight), and prints
 *       calls=<n> failed=<n> seconds=<s> rate=<calls/s>.
 *
 * Passwords are read from files (their first line), never from argv.
 * Exit 0 on success, 1 on failure (the reason on stderr), 2 on a usage
 * error.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include <jansson.h>

#include "billmgr.h"
#include "config.h"
#include "config_opts.h"
#include "ctlproto.h"
#include "rmq.h"
#include "store.h"

#define TOOL_PASSWORD_MAX 256
#define TOOL_FRAME_MAX    131072
#define TOOL_WAKE_MS      500
#define TOOL_POLL_MS      10

static int64_t tool_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static double tool_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void tool_sleep_until(double t)
{
    double d = t - tool_mono();
    if (d <= 0)
        return;
    struct timespec ts = {(time_t)d, (long)((d - (double)(time_t)d) * 1e9)};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* Parses a decimal integer argument; -1 (with a message) when it is not. */
static int tool_i64(const char *s, const char *what, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end) {
        fprintf(stderr, "rtbench_tool: %s \"%s\" is not an integer\n", what, s);
        return -1;
    }
    *out = v;
    return 0;
}

static struct store *tool_store(const char *dir)
{
    char err[512];
    struct store *st = store_open(dir, err, sizeof(err));
    if (!st)
        fprintf(stderr, "rtbench_tool: cannot open the store in \"%s\": %s\n", dir, err);
    return st;
}

/* ---- store steps ------------------------------------------------------ */

static int tool_outbox(char **a)
{
    int64_t first, last;
    if (tool_i64(a[2], "FIRST", &first) < 0 || tool_i64(a[3], "LAST", &last) < 0)
        return 2;
    struct store *st = tool_store(a[0]);
    if (!st)
        return 1;
    int64_t now = tool_wall_ms();
    if (store_begin(st) != RT_OK)
        goto store_failed;
    for (int64_t t = first; t <= last; t++) {
        if (store_outbox_add(st, a[1], t, now) != RT_OK) {
            store_rollback(st);
            goto store_failed;
        }
    }
    if (store_commit(st) != RT_OK)
        goto store_failed;
    store_free(st);
    printf("recorded_ms=%" PRId64 "\n", now);
    return 0;

store_failed:
    fprintf(stderr, "rtbench_tool: cannot record the events: %s\n", store_strerror(st));
    store_free(st);
    return 1;
}

static int tool_pace(char **a)
{
    int64_t first, last, rate;
    char err[512];
    if (tool_i64(a[2], "FIRST", &first) < 0 || tool_i64(a[3], "LAST", &last) < 0 ||
        tool_i64(a[4], "RATE", &rate) < 0 || rate <= 0)
        return 2;
    struct store *st = tool_store(a[0]);
    if (!st)
        return 1;
    json_t *req = json_pack("{s:s, s:b}", "cmd", "wake", "reconcile", 0);
    if (!req) {
        fprintf(stderr, "rtbench_tool: out of memory\n");
        store_free(st);
        return 1;
    }
    double t0 = tool_mono();
    int status = 0;
    for (int64_t t = first; t <= last; t++) {
        tool_sleep_until(t0 + (double)(t - first) / (double)rate);
        int64_t now = tool_wall_ms();
        if (store_outbox_add(st, a[1], t, now) != RT_OK) {
            fprintf(stderr, "rtbench_tool: cannot record task %" PRId64 ": %s\n", t,
                    store_strerror(st));
            status = 1;
            break;
        }
        json_t *resp = NULL;
        /* As taskevent: the event is on disk, the wake is best effort. */
        if (ctlproto_request(a[5], req, &resp, TOOL_WAKE_MS, err, sizeof(err)) != RT_OK)
            fprintf(stderr, "rtbench_tool: wake for task %" PRId64 " failed: %s\n", t, err);
        json_decref(resp);
        printf("%" PRId64 " %" PRId64 "\n", t, now);
    }
    json_decref(req);
    store_free(st);
    return status;
}

static int tool_ping(char **a)
{
    int64_t timeout_s;
    char err[512] = "";
    if (tool_i64(a[1], "TIMEOUT_S", &timeout_s) < 0)
        return 2;
    json_t *req = json_pack("{s:s}", "cmd", "ping");
    if (!req)
        return 1;
    double deadline = tool_mono() + (double)timeout_s;
    int status = 1;
    while (tool_mono() < deadline) {
        json_t *resp = NULL;
        rt_status rc = ctlproto_request(a[0], req, &resp, TOOL_WAKE_MS, err, sizeof(err));
        int ok = rc == RT_OK && json_is_true(json_object_get(resp, "ok"));
        json_decref(resp);
        if (ok) {
            status = 0;
            break;
        }
        if (rc == RT_REJECT)
            break;
        tool_sleep_until(tool_mono() + 0.05);
    }
    if (status)
        fprintf(stderr, "rtbench_tool: no answer on \"%s\": %s\n", a[0], err);
    json_decref(req);
    return status;
}

static int tool_wake(char **a)
{
    char err[512];
    json_t *resp = NULL;
    json_t *req = json_pack("{s:s, s:b}", "cmd", "wake", "reconcile", 0);
    if (!req)
        return 1;
    rt_status rc = ctlproto_request(a[0], req, &resp, TOOL_WAKE_MS, err, sizeof(err));
    int ok = rc == RT_OK && json_is_true(json_object_get(resp, "ok"));
    json_decref(resp);
    json_decref(req);
    if (!ok)
        fprintf(stderr, "rtbench_tool: wake on \"%s\" failed: %s\n", a[0],
                rc == RT_OK ? "refused" : err);
    return ok ? 0 : 1;
}

static int tool_backlog(char **a)
{
    uint64_t n = 0;
    struct store *st = tool_store(a[0]);
    if (!st)
        return 1;
    if (store_outbox_backlog(st, &n, NULL) != RT_OK) {
        fprintf(stderr, "rtbench_tool: cannot read the backlog: %s\n", store_strerror(st));
        store_free(st);
        return 1;
    }
    store_free(st);
    printf("%" PRIu64 "\n", n);
    return 0;
}

static int tool_links(char **a)
{
    int64_t src, dst, count;
    if (tool_i64(a[2], "SRC_FIRST", &src) < 0 || tool_i64(a[3], "DST_FIRST", &dst) < 0 ||
        tool_i64(a[4], "COUNT", &count) < 0)
        return 2;
    if (strlen(a[1]) > STORE_CLIENT_MAX) {
        fprintf(stderr, "rtbench_tool: client id too long\n");
        return 2;
    }
    struct store *st = tool_store(a[0]);
    if (!st)
        return 1;
    struct store_link l;
    memset(&l, 0, sizeof(l));
    snprintf(l.client, sizeof(l.client), "%s", a[1]);
    l.last_seq = 1;
    l.updated_ms = tool_wall_ms();
    if (store_begin(st) != RT_OK)
        goto store_failed;
    for (int64_t i = 0; i < count; i++) {
        l.src_task = src + i;
        l.dst_task = dst + i;
        if (store_link_put(st, &l) != RT_OK) {
            store_rollback(st);
            goto store_failed;
        }
    }
    if (store_commit(st) != RT_OK)
        goto store_failed;
    store_free(st);
    return 0;

store_failed:
    fprintf(stderr, "rtbench_tool: cannot write the links: %s\n", store_strerror(st));
    store_free(st);
    return 1;
}

/* ---- queue steps ------------------------------------------------------ */

struct tool_amqp {
    amqp_connection_state_t conn;
    int channel; /* the open channel; a new one after each channel error */
};

static int tool_reply_ok(amqp_rpc_reply_t r, const char *what)
{
    if (r.reply_type == AMQP_RESPONSE_NORMAL)
        return 1;
    if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION)
        fprintf(stderr, "rtbench_tool: %s: %s\n", what, amqp_error_string2(r.library_error));
    else if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION &&
             r.reply.id == AMQP_CONNECTION_CLOSE_METHOD)
        fprintf(stderr, "rtbench_tool: %s: the broker closed the connection\n", what);
    else if (r.reply_type != AMQP_RESPONSE_SERVER_EXCEPTION)
        fprintf(stderr, "rtbench_tool: %s: no reply\n", what);
    return 0;
}

static int tool_channel(struct tool_amqp *q)
{
    q->channel++;
    amqp_channel_open(q->conn, (amqp_channel_t)q->channel);
    return tool_reply_ok(amqp_get_rpc_reply(q->conn), "channel.open") ? 0 : -1;
}

static int tool_amqp_open(struct tool_amqp *q, const char *port_s, const char *user,
                          const char *password_file)
{
    char password[TOOL_PASSWORD_MAX];
    int64_t port;
    q->conn = NULL;
    q->channel = 0;
    if (tool_i64(port_s, "PORT", &port) < 0)
        return -1;
    FILE *f = fopen(password_file, "r");
    if (!f || !fgets(password, sizeof(password), f)) {
        fprintf(stderr, "rtbench_tool: cannot read the password file \"%s\"\n", password_file);
        if (f)
            fclose(f);
        return -1;
    }
    fclose(f);
    password[strcspn(password, "\r\n")] = '\0';
    q->conn = amqp_new_connection();
    amqp_socket_t *sock = q->conn ? amqp_tcp_socket_new(q->conn) : NULL;
    struct timeval tv = {10, 0};
    if (!sock || amqp_socket_open_noblock(sock, "127.0.0.1", (int)port, &tv) != AMQP_STATUS_OK) {
        fprintf(stderr, "rtbench_tool: cannot connect to 127.0.0.1:%d\n", (int)port);
        goto wipe;
    }
    if (!tool_reply_ok(amqp_login(q->conn, "/", 0, TOOL_FRAME_MAX, 0, AMQP_SASL_METHOD_PLAIN, user,
                                  password),
                       "login"))
        goto wipe;
    memset(password, 0, sizeof(password));
    return tool_channel(q);

wipe:
    memset(password, 0, sizeof(password));
    return -1;
}

static void tool_amqp_close(struct tool_amqp *q)
{
    if (!q->conn)
        return;
    amqp_connection_close(q->conn, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(q->conn);
    q->conn = NULL;
}

/* The ready-message count of queue: 0 and *exists = 0 when the broker
 * says it does not exist (that closes the channel: a new one is opened).
 * -1 on any other failure. */
static long tool_depth(struct tool_amqp *q, const char *queue, int *exists)
{
    amqp_queue_declare_ok_t *ok =
        amqp_queue_declare(q->conn, (amqp_channel_t)q->channel, amqp_cstring_bytes(queue), 1, 0,
                           0, 0, amqp_empty_table);
    amqp_rpc_reply_t r = amqp_get_rpc_reply(q->conn);
    if (ok && r.reply_type == AMQP_RESPONSE_NORMAL) {
        *exists = 1;
        return (long)ok->message_count;
    }
    if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION && r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
        amqp_channel_close_ok_t close_ok;
        const amqp_channel_close_t *m = r.reply.decoded;
        int not_found = m->reply_code == AMQP_NOT_FOUND;
        amqp_send_method(q->conn, (amqp_channel_t)q->channel, AMQP_CHANNEL_CLOSE_OK_METHOD,
                         &close_ok);
        if (!not_found) {
            fprintf(stderr, "rtbench_tool: queue \"%s\": %.*s\n", queue, (int)m->reply_text.len,
                    (const char *)m->reply_text.bytes);
            return -1;
        }
        *exists = 0;
        return tool_channel(q) < 0 ? -1 : 0;
    }
    tool_reply_ok(r, "queue.declare");
    return -1;
}

static int tool_qwait(char **a)
{
    struct tool_amqp q;
    int64_t want, timeout_s;
    int exists = 0;
    if (tool_i64(a[4], "COUNT", &want) < 0 || tool_i64(a[5], "TIMEOUT_S", &timeout_s) < 0)
        return 2;
    if (tool_amqp_open(&q, a[0], a[1], a[2]) < 0) {
        tool_amqp_close(&q);
        return 1;
    }
    double deadline = tool_mono() + (double)timeout_s;
    long depth = 0;
    int status = 1;
    for (;;) {
        depth = tool_depth(&q, a[3], &exists);
        if (depth < 0)
            break;
        if (depth >= want) {
            printf("met_ms=%" PRId64 " depth=%ld\n", tool_wall_ms(), depth);
            status = 0;
            break;
        }
        if (tool_mono() > deadline) {
            fprintf(stderr, "rtbench_tool: queue \"%s\" holds %ld messages, not %" PRId64
                            ", after %" PRId64 " s\n",
                    a[3], depth, want, timeout_s);
            break;
        }
        tool_sleep_until(tool_mono() + TOOL_POLL_MS / 1000.0);
    }
    tool_amqp_close(&q);
    return status;
}

static int tool_qdepth(char **a)
{
    struct tool_amqp q;
    int exists = 0;
    if (tool_amqp_open(&q, a[0], a[1], a[2]) < 0) {
        tool_amqp_close(&q);
        return 1;
    }
    long depth = tool_depth(&q, a[3], &exists);
    tool_amqp_close(&q);
    if (depth < 0)
        return 1;
    printf("%ld\n", depth);
    return 0;
}

static int tool_purge(char **a)
{
    struct tool_amqp q;
    int exists = 0, status = 1;
    if (tool_amqp_open(&q, a[0], a[1], a[2]) < 0) {
        tool_amqp_close(&q);
        return 1;
    }
    if (tool_depth(&q, a[3], &exists) < 0)
        goto close;
    if (exists) {
        amqp_queue_purge(q.conn, (amqp_channel_t)q.channel, amqp_cstring_bytes(a[3]));
        if (!tool_reply_ok(amqp_get_rpc_reply(q.conn), "queue.purge"))
            goto close;
    }
    status = 0;
close:
    tool_amqp_close(&q);
    return status;
}

/* ---- API load --------------------------------------------------------- */

struct tool_load {
    long done;
    long failed;
};

static void tool_load_done(void *arg, const struct billmgr_reply *r)
{
    struct tool_load *l = arg;
    l->done++;
    if (r->status != RT_OK)
        l->failed++;
}

static int tool_apiload(char **a)
{
    int64_t first, count, calls;
    char err[512];
    struct tool_load load = {0, 0};
    int status = 1;
    if (tool_i64(a[1], "FIRST", &first) < 0 || tool_i64(a[2], "COUNT", &count) < 0 ||
        tool_i64(a[3], "CALLS", &calls) < 0 || count <= 0 || calls <= 0)
        return 2;
    struct config *cfg = config_load(a[0], err, sizeof(err));
    if (!cfg) {
        fprintf(stderr, "rtbench_tool: %s\n", err);
        return 1;
    }
    struct billmgr_opts bo;
    config_opts_billmgr(cfg, &bo);
    bo.max_queued = (size_t)calls + 16;
    struct billmgr *bm = billmgr_new(&bo, err, sizeof(err));
    if (!bm) {
        fprintf(stderr, "rtbench_tool: %s\n", err);
        goto free_cfg;
    }
    size_t nfds = (size_t)cfg->billmanager.max_inflight + 8;
    struct pollfd *fds = calloc(nfds, sizeof(*fds));
    if (!fds) {
        fprintf(stderr, "rtbench_tool: out of memory\n");
        goto free_bm;
    }
    double t0 = tool_mono();
    for (int64_t i = 0; i < calls; i++) {
        struct billmgr_params p;
        billmgr_params_init(&p);
        int rc = billmgr_params_addf(&p, "elid", "%" PRId64, first + i % count);
        if (rc == 0)
            rc = billmgr_call(bm, cfg->billmanager.api.func_task_edit, &p, tool_load_done, &load);
        billmgr_params_release(&p);
        if (rc < 0) {
            fprintf(stderr, "rtbench_tool: cannot queue call %" PRId64 "\n", i);
            goto free_fds;
        }
    }
    while (load.done < calls) {
        size_t n = billmgr_pollfds(bm, fds, nfds);
        int to = billmgr_timeout_ms(bm);
        if (to < 0 || to > 100)
            to = 100;
        if (poll(fds, n, to) < 0 && errno != EINTR) {
            fprintf(stderr, "rtbench_tool: poll: %s\n", strerror(errno));
            goto free_fds;
        }
        billmgr_handle(bm, fds, n);
    }
    double secs = tool_mono() - t0;
    printf("calls=%" PRId64 " failed=%ld seconds=%.3f rate=%.0f\n", calls, load.failed, secs,
           (double)calls / secs);
    status = load.failed ? 1 : 0;
free_fds:
    free(fds);
free_bm:
    billmgr_free(bm);
free_cfg:
    config_free(cfg);
    return status;
}

/* ---- main ------------------------------------------------------------- */

struct tool_cmd {
    const char *name;
    int nargs;
    int (*fn)(char **args);
};

static const struct tool_cmd tool_cmds[] = {
    {"outbox", 4, tool_outbox}, {"pace", 6, tool_pace},     {"backlog", 1, tool_backlog},
    {"links", 5, tool_links},   {"qwait", 6, tool_qwait},   {"qdepth", 4, tool_qdepth},
    {"purge", 4, tool_purge},   {"apiload", 4, tool_apiload}, {"ping", 2, tool_ping},
    {"wake", 1, tool_wake},
};

int main(int argc, char **argv)
{
    if (argc >= 2) {
        for (size_t i = 0; i < sizeof(tool_cmds) / sizeof(tool_cmds[0]); i++) {
            if (!strcmp(argv[1], tool_cmds[i].name) && argc - 2 == tool_cmds[i].nargs)
                return tool_cmds[i].fn(argv + 2);
        }
    }
    fprintf(stderr, "usage: rtbench_tool outbox|pace|ping|wake|backlog|links|qwait|qdepth|purge|"
                    "apiload "
                    "ARGS... (see bench/benchtool.c)\n");
    return 2;
}
