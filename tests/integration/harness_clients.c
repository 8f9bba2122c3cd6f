#include "harness_clients.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "buf.h"
#include "harness.h"
#include "harness_flow.h"
#include "harness_rabbit.h"
#include "rmq.h"

/* The seed and the configuration grow by about 100 bytes per client. */
#define HC_TEXT_MAX ((size_t)1024 * 1024)
/* How long the broker may take to confirm one batch of publishes on a
 * loaded machine. */
#define HC_CONFIRM_MS 60000
/* The body of every task message the harness publishes. */
#define HC_NOTE "queued by the many-clients harness"

static void hc_write_file(const char *path, const char *text, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0)
        fail_msg("cannot write %s: %s", path, strerror(errno));
    size_t len = strlen(text);
    if (write(fd, text, len) != (ssize_t)len || close(fd) != 0)
        fail_msg("cannot write %s: %s", path, strerror(errno));
    if (chmod(path, mode) != 0)
        fail_msg("cannot chmod %s: %s", path, strerror(errno));
}

struct harness_clients *harness_clients_new(const char *tag, size_t n, long first_dept,
                                            struct harness_clients **slot)
{
    static unsigned counter;
    if (n < 1 || n > HARNESS_CLIENTS_MAX)
        fail_msg("harness_clients_new: %zu clients (1..%d)", n, HARNESS_CLIENTS_MAX);
    struct harness_clients *cs = calloc(1, sizeof(*cs));
    if (!cs)
        fail_msg("out of memory");
    if (slot)
        *slot = cs;
    cs->c = calloc(n, sizeof(*cs->c));
    if (!cs->c)
        fail_msg("out of memory");
    counter++;
    long pid = (long)getpid();
    /* A throwaway password for a private test node, different per run. */
    snprintf(cs->password, sizeof(cs->password), "hc-%ld-%u-%lld", pid, counter, harness_now_ms());
    snprintf(cs->server_user, sizeof(cs->server_user), "%s%u%ld-server", tag, counter, pid);
    harness_rabbit_adduser(cs->server_user, cs->password);
    for (size_t i = 0; i < n; i++) {
        struct harness_client *c = &cs->c[i];
        /* Zero-padded: ids sort in index order. */
        snprintf(c->id, sizeof(c->id), "%s%u%ldc%03zu", tag, counter, pid, i);
        snprintf(c->user, sizeof(c->user), "%s%u%ld-c%03zu", tag, counter, pid, i);
        c->dept = first_dept + (long)i;
        harness_rabbit_adduser(c->user, cs->password);
        /* Counted only once the user exists, so that free deletes only
         * what was made. */
        cs->n = i + 1;
    }
    return cs;
}

/* Deletes the queues and exchanges of every client over one plain AMQP
 * connection as the server's user: rabbitmqctl would take a second per
 * queue. Cleanup: the first refusal ends it, with a line. */
static void hc_delete_topology(const struct harness_clients *cs)
{
    amqp_connection_state_t conn = amqp_new_connection();
    if (!conn)
        return;
    amqp_socket_t *sock = amqp_tcp_socket_new(conn);
    struct timeval tv = {.tv_sec = 5};
    const char *port = getenv("RT_AMQP_PORT");
    if (!sock || !port ||
        amqp_socket_open_noblock(sock, "127.0.0.1", atoi(port), &tv) != AMQP_STATUS_OK)
        goto destroy;
    amqp_rpc_reply_t r =
        amqp_login(conn, "/", 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, cs->server_user, cs->password);
    if (r.reply_type != AMQP_RESPONSE_NORMAL)
        goto destroy;
    if (!amqp_channel_open(conn, 1) || amqp_get_rpc_reply(conn).reply_type != AMQP_RESPONSE_NORMAL)
        goto close_conn;
    char name[BROKER_NAME_MAX];
    for (size_t i = 0; i < cs->n; i++) {
        const char *id = cs->c[i].id;
        for (int dir = 0; dir < 2; dir++) {
            enum broker_dir d = (enum broker_dir)dir;
            const char *names[2 + BROKER_RETRY_TIERS];
            char buf[2 + BROKER_RETRY_TIERS][BROKER_NAME_MAX];
            size_t k = 0;
            if (broker_queue_name(buf[k], sizeof(buf[k]), d, id) == 0)
                names[k] = buf[k], k++;
            if (broker_dead_queue_name(buf[k], sizeof(buf[k]), d, id) == 0)
                names[k] = buf[k], k++;
            for (unsigned tier = 0; tier < BROKER_RETRY_TIERS; tier++)
                if (broker_retry_queue_name(buf[k], sizeof(buf[k]), d, id, tier) == 0)
                    names[k] = buf[k], k++;
            for (size_t q = 0; q < k; q++) {
                amqp_queue_delete(conn, 1, amqp_cstring_bytes(names[q]), 0, 0);
                if (amqp_get_rpc_reply(conn).reply_type != AMQP_RESPONSE_NORMAL) {
                    fprintf(stderr, "harness_clients: cannot delete queue %s\n", names[q]);
                    goto close_conn;
                }
            }
        }
        if (broker_retry_exchange(name, sizeof(name), id) == 0) {
            amqp_exchange_delete(conn, 1, amqp_cstring_bytes(name), 0);
            if (amqp_get_rpc_reply(conn).reply_type != AMQP_RESPONSE_NORMAL)
                goto close_conn;
        }
        if (broker_dead_exchange(name, sizeof(name), id) == 0) {
            amqp_exchange_delete(conn, 1, amqp_cstring_bytes(name), 0);
            if (amqp_get_rpc_reply(conn).reply_type != AMQP_RESPONSE_NORMAL)
                goto close_conn;
        }
    }
    amqp_channel_close(conn, 1, AMQP_REPLY_SUCCESS);
close_conn:
    amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
destroy:
    amqp_destroy_connection(conn);
}

void harness_clients_free(struct harness_clients *cs)
{
    if (!cs)
        return;
    for (size_t i = 0; i < cs->n; i++) {
        broker_free(cs->c[i].conn);
        cs->c[i].conn = NULL;
    }
    if (cs->server_user[0]) {
        hc_delete_topology(cs);
        for (size_t i = 0; i < cs->n; i++)
            harness_rabbit_delete_user(cs->c[i].user);
        harness_rabbit_delete_user(cs->server_user);
    }
    explicit_bzero(cs->password, sizeof(cs->password));
    free(cs->c);
    free(cs);
}

char *harness_clients_seed(const struct harness_clients *cs)
{
    struct buf b;
    buf_init(&b, HC_TEXT_MAX);
    json_t *pw = json_string(HARNESS_SIM_PASSWORD);
    char *pw_text = pw ? json_dumps(pw, JSON_ENCODE_ANY) : NULL;
    json_decref(pw);
    if (!pw_text)
        fail_msg("out of memory");
    int rc = buf_printf(&b,
                        "{\"users\": [{\"login\": \"%s\", \"password\": %s}],\n"
                        " \"staff\": [{\"id\": %d, \"name\": \"alice\"}, {\"id\": %d, "
                        "\"name\": \"bob\"}],\n"
                        " \"accounts\": [{\"id\": %d, \"name\": \"acme\"}, {\"id\": %d, "
                        "\"name\": \"reseller-a\"}],\n"
                        " \"departments\": [",
                        HARNESS_SIM_LOGIN, pw_text, HARNESS_SIM_STAFF_A, HARNESS_SIM_STAFF_B,
                        HARNESS_SIM_ACCOUNT_A, HARNESS_SIM_ACCOUNT_B);
    free(pw_text);
    for (size_t i = 0; i < cs->n; i++)
        rc |= buf_printf(&b, "%s{\"id\": %ld, \"name\": \"Reseller %zu\"}", i ? ", " : "",
                         cs->c[i].dept, i);
    rc |= buf_printf(&b, "]}\n");
    if (rc || buf_append(&b, "", 0) < 0)
        fail_msg("the seed of %zu clients passes %zu bytes", cs->n, HC_TEXT_MAX);
    return buf_steal(&b);
}

void harness_clients_server_conf(const struct harness_clients *cs,
                                 const struct harness_clients_server *o)
{
    char amqp_pw[1024], api_pw[1024];
    snprintf(amqp_pw, sizeof(amqp_pw), "%s/server-amqp.password", o->dir);
    snprintf(api_pw, sizeof(api_pw), "%s/server-billmgr.password", o->dir);
    char line[128];
    snprintf(line, sizeof(line), "%s\n", cs->password);
    hc_write_file(amqp_pw, line, 0600);
    explicit_bzero(line, sizeof(line));
    snprintf(line, sizeof(line), "%s\n", HARNESS_SIM_PASSWORD);
    hc_write_file(api_pw, line, 0600);

    struct buf b;
    buf_init(&b, HC_TEXT_MAX);
    /* The strings that go in (paths, ids, URLs) come from this harness and
     * hold no quote or backslash. */
    int rc = buf_printf(&b,
                        "# written by tests/integration/harness_clients.c\n"
                        "instance = \"many-clients\";\n"
                        "state_dir = \"%s\";\n"
                        "control_socket = \"%s\";\n"
                        "log_level = \"%s\";\n"
                        "amqp: {\n"
                        "  uri = \"amqp://%s@127.0.0.1:%s/%%2f\";\n"
                        "  password_file = \"%s\";\n"
                        "  heartbeat = 30;\n"
                        "  prefetch = %d;\n"
                        "  queue_type = \"classic\";\n"
                        "  connect_timeout = 30;\n"
                        "};\n"
                        "billmanager: {\n"
                        "  url = \"%s\";\n"
                        "  login = \"%s\";\n"
                        "  password_file = \"%s\";\n"
                        "  timeout = 30;\n"
                        "  max_inflight = %d;\n"
                        "};\n"
                        "server: {\n"
                        "  sync_interval = %d;\n"
                        "  clients = (\n",
                        o->state_dir, o->socket, o->log_level ? o->log_level : "info",
                        cs->server_user, harness_env("RT_AMQP_PORT"), amqp_pw, o->prefetch, o->url,
                        HARNESS_SIM_LOGIN, api_pw, o->max_inflight, o->sync_interval);
    for (size_t i = 0; i < cs->n; i++)
        rc |= buf_printf(&b, "    { id = \"%s\"; amqp_user = \"%s\"; department = %ld; }%s\n",
                         cs->c[i].id, cs->c[i].user, cs->c[i].dept, i + 1 < cs->n ? "," : "");
    rc |= buf_printf(&b, "  );\n};\n");
    if (rc || buf_append(&b, "", 0) < 0)
        fail_msg("the configuration of %zu clients passes %zu bytes", cs->n, HC_TEXT_MAX);
    hc_write_file(o->path, b.data, 0600);
    buf_release(&b);
}

/* ---- connections ------------------------------------------------------ */

static void hc_confirm(void *arg, uint64_t tag, enum broker_fate fate)
{
    struct harness_client *c = arg;
    (void)tag;
    if (fate == BROKER_ACKED)
        c->acked++;
    else
        c->refused++;
}

static void hc_delivery(void *arg, const struct broker_delivery *d)
{
    (void)arg;
    (void)d;
}

/* A connection as user whose confirms are counted in *counts. */
static struct broker *hc_open(const char *user, const char *pass, struct harness_client *counts)
{
    struct broker_opts o;
    char err[512];
    harness_rabbit_opts(&o, user, pass);
    /* A client of the harness sits idle between phases without anyone
     * calling broker_process(): heartbeats would end it. */
    o.heartbeat = 0;
    /* A loaded node may answer an RPC (a declare, a basic.get) slowly. */
    o.connect_timeout_ms = 30000;
    o.on_confirm = hc_confirm;
    o.on_delivery = hc_delivery;
    o.cb_arg = counts;
    struct broker *b = broker_new(&o, err, sizeof(err));
    if (!b)
        fail_msg("broker_new: %s", err);
    if (broker_connect(b) != RT_OK) {
        snprintf(err, sizeof(err), "%s", broker_strerror(b));
        broker_free(b);
        fail_msg("cannot connect to the broker as %s: %s", user, err);
    }
    return b;
}

void harness_clients_connect(struct harness_clients *cs, size_t i)
{
    struct harness_client *c = &cs->c[i];
    if (!c->conn)
        c->conn = hc_open(c->user, cs->password, c);
}

long long harness_clients_declare(struct harness_clients *cs)
{
    struct harness_client scratch;
    memset(&scratch, 0, sizeof(scratch));
    const char **ids = calloc(cs->n, sizeof(*ids));
    if (!ids)
        fail_msg("out of memory");
    for (size_t i = 0; i < cs->n; i++)
        ids[i] = cs->c[i].id;
    struct broker *b = hc_open(cs->server_user, cs->password, &scratch);
    long long t0 = harness_now_ms();
    rt_status st = broker_declare(b, ids, cs->n);
    long long took = harness_now_ms() - t0;
    char err[512];
    snprintf(err, sizeof(err), "%s", broker_strerror(b));
    broker_free(b);
    free(ids);
    if (st != RT_OK)
        fail_msg("declaring the topology of %zu clients: %s", cs->n, err);
    return took;
}

/* Runs the connection until it has at least want confirms, or fails the
 * test at the deadline. */
static void hc_wait_confirms(struct harness_client *c, uint64_t want)
{
    long long deadline = harness_now_ms() + HC_CONFIRM_MS;
    while (c->acked + c->refused < want) {
        if (harness_now_ms() > deadline)
            fail_msg("client %s: %llu of %llu publishes confirmed after %d ms", c->id,
                     (unsigned long long)(c->acked + c->refused), (unsigned long long)want,
                     HC_CONFIRM_MS);
        struct pollfd pfd = {.fd = broker_fd(c->conn), .events = POLLIN};
        if (!broker_wants_read_now(c->conn))
            poll(&pfd, 1, 100);
        if (broker_process(c->conn) != RT_OK)
            fail_msg("client %s: connection lost waiting for confirms: %s", c->id,
                     broker_strerror(c->conn));
    }
}

/* Publishes the task messages of harness_clients_publish without waiting
 * for their confirms; returns the confirm count to wait for. */
static uint64_t hc_send(struct harness_clients *cs, size_t i, long long first_task, size_t count,
                        const char *name_prefix)
{
    struct harness_client *c = &cs->c[i];
    harness_clients_connect(cs, i);
    for (size_t k = 0; k < count; k++) {
        long long task = first_task + (long long)k;
        char name[128], mid[160], err[256];
        snprintf(name, sizeof(name), "%s%lld", name_prefix, task);
        snprintf(mid, sizeof(mid), "%s:%lld:1", c->id, task);
        struct codec_msg m;
        codec_msg_init(&m, CODEC_TASK);
        m.client = c->id;
        m.task = task;
        m.seq = 1;
        m.ts = 1;
        m.fwd.department = c->dept;
        m.fwd.name = name;
        m.fwd.type = "manual";
        m.fwd.note = HC_NOTE;
        m.fwd.deadline = "";
        m.fwd.item = "";
        m.fwd.account = "";
        m.fwd.status = 0;
        struct buf body;
        buf_init(&body, CODEC_MAX_BODY);
        if (codec_encode(&m, &body, err, sizeof(err)) < 0)
            fail_msg("codec_encode: %s", err);
        struct broker_props p;
        memset(&p, 0, sizeof(p));
        p.message_id = mid;
        rt_status st =
            broker_publish(c->conn, BROKER_EXCHANGE_FORWARD, c->id, &p, body.data, body.len, NULL);
        buf_release(&body);
        if (st != RT_OK)
            fail_msg("client %s: publishing task %lld: %s", c->id, task, broker_strerror(c->conn));
    }
    return c->acked + c->refused + count;
}

void harness_clients_publish(struct harness_clients *cs, size_t i, long long first_task,
                             size_t count, const char *name_prefix)
{
    struct harness_client *c = &cs->c[i];
    uint64_t refused0 = c->refused;
    hc_wait_confirms(c, hc_send(cs, i, first_task, count, name_prefix));
    if (c->refused != refused0)
        fail_msg("client %s: the broker refused or returned %llu of %zu task messages", c->id,
                 (unsigned long long)(c->refused - refused0), count);
}

void harness_clients_publish_all(struct harness_clients *cs, long long first_task, size_t count,
                                 const char *name_prefix)
{
    uint64_t *want = calloc(cs->n, sizeof(*want)), *refused0 = calloc(cs->n, sizeof(*refused0));
    if (!want || !refused0)
        fail_msg("out of memory");
    for (size_t i = 0; i < cs->n; i++) {
        refused0[i] = cs->c[i].refused;
        want[i] = hc_send(cs, i, first_task, count, name_prefix);
    }
    for (size_t i = 0; i < cs->n; i++) {
        struct harness_client *c = &cs->c[i];
        hc_wait_confirms(c, want[i]);
        if (c->refused != refused0[i])
            fail_msg("client %s: the broker refused or returned %llu of %zu task messages", c->id,
                     (unsigned long long)(c->refused - refused0[i]), count);
    }
    free(want);
    free(refused0);
}

size_t harness_clients_drain_reverse(struct harness_clients *cs, size_t i,
                                     void (*fn)(void *arg, size_t i, const struct codec_msg *m),
                                     void *arg)
{
    struct harness_client *c = &cs->c[i];
    char queue[BROKER_NAME_MAX];
    if (broker_queue_name(queue, sizeof(queue), BROKER_REVERSE, c->id) != 0)
        fail_msg("client id %s makes no queue name", c->id);
    harness_clients_connect(cs, i);
    size_t n = 0;
    for (;;) {
        struct broker_delivery *d = NULL;
        rt_status st = broker_get(c->conn, queue, &d, NULL);
        if (st != RT_OK)
            fail_msg("client %s: basic.get on %s: %s", c->id, queue, broker_strerror(c->conn));
        if (!d)
            break;
        struct codec_msg m;
        char err[256];
        if (codec_decode(d->body, d->len, &m, err, sizeof(err)) != RT_OK)
            fail_msg("client %s: message %s in %s does not decode: %s", c->id, d->message_id, queue,
                     err);
        if (!m.client || strcmp(m.client, c->id) != 0)
            fail_msg("client %s: %s holds a message of client \"%s\"", c->id, queue,
                     m.client ? m.client : "");
        if (fn)
            fn(arg, i, &m);
        codec_msg_release(&m);
        if (broker_ack(c->conn, d->delivery_tag) != RT_OK)
            fail_msg("client %s: ack on %s: %s", c->id, queue, broker_strerror(c->conn));
        broker_delivery_free(d);
        n++;
    }
    return n;
}

/* ---- counting --------------------------------------------------------- */

/* The client whose id is the origin of note ("from client <id>, task "),
 * or -1. */
static long hc_origin_client(const struct harness_clients *cs, const char *note)
{
    static const char marker[] = "--- remotetask: from client ";
    const char *p = note ? strstr(note, marker) : NULL;
    if (!p)
        return -1;
    p += sizeof(marker) - 1;
    size_t len = strcspn(p, ",");
    /* Ids sort in index order: a binary search. */
    size_t lo = 0, hi = cs->n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strncmp(cs->c[mid].id, p, len);
        if (c == 0 && cs->c[mid].id[len] != '\0')
            c = 1; /* the key is a prefix of this id: the id sorts after it */
        if (c == 0)
            return (long)mid;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

size_t harness_clients_count(struct harness_clients *cs, struct harness_sim *sim,
                             long long max_task, struct harness_clients_count *out)
{
    json_t *r = harness_sim_admin_ok(sim, "GET", "/tasks", NULL);
    json_t *tasks = json_object_get(r, "tasks");
    if (!json_is_array(tasks))
        fail_msg("the emulator's GET /tasks gave no tasks array");
    memset(out, 0, cs->n * sizeof(*out));
    size_t width = (size_t)max_task + 1;
    unsigned char *seen = calloc(cs->n, width);
    if (!seen)
        fail_msg("out of memory");
    size_t foreign = 0, k;
    json_t *t;
    json_array_foreach(tasks, k, t)
    {
        const char *note = json_string_value(json_object_get(t, "note"));
        long i = hc_origin_client(cs, note);
        long long src = i >= 0 ? harness_flow_note_origin(note, cs->c[i].id) : 0;
        if (src <= 0) {
            foreign++;
            continue;
        }
        if (src > max_task ||
            json_integer_value(json_object_get(t, "department")) != cs->c[i].dept) {
            out[i].misplaced++;
            continue;
        }
        if (seen[(size_t)i * width + (size_t)src]++)
            out[i].duplicated++;
        else
            out[i].applied++;
    }
    free(seen);
    json_decref(r);
    return foreign;
}

long long harness_clients_target(const struct harness_clients *cs, size_t i, json_t *tasks,
                                 long long src)
{
    size_t k;
    json_t *t;
    json_array_foreach(tasks, k, t)
    {
        const char *note = json_string_value(json_object_get(t, "note"));
        if (json_integer_value(json_object_get(t, "department")) == cs->c[i].dept &&
            harness_flow_note_origin(note, cs->c[i].id) == src)
            return json_integer_value(json_object_get(t, "id"));
    }
    return 0;
}
