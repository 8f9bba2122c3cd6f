#include "broker.h"

#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <linux/sockios.h>

#include "broker_int.h"
#include "buf.h"
#include "codec.h"
#include "log.h"
#include "netprobe.h"
#include "rmq.h"

#define DEFAULT_CONNECT_TIMEOUT_MS 10000
#define DEFAULT_MAX_MESSAGE ((size_t)CODEC_MAX_BODY)
#define DEFAULT_MAX_UNCONFIRMED 65536
#define FRAME_MAX 131072
/* A write goes to the socket only while the kernel's send queue holds less
 * than this fraction of the socket's buffer: a node that stopped reading
 * (frozen, blackholed) then never makes a write block. */
#define SEND_QUEUE_FRACTION 4
/* broker_process() handles at most this many frames per call so that one
 * busy connection cannot starve the rest of the event loop; what is left
 * is reported by broker_wants_read_now() or by poll(). */
#define MAX_FRAMES_PER_CALL 4096

/* ---- small helpers ---------------------------------------------------- */

void broker_set_err(struct broker *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b->err, sizeof(b->err), fmt, ap);
    va_end(ap);
}

static char *dup_or_empty(const char *s)
{
    return strdup(s ? s : "");
}

/* ---- lifecycle -------------------------------------------------------- */

/* Checks and copies the nodes of the options: the list, or the one of
 * host and port. Returns 0, or -1 with the reason in err. */
static int copy_nodes(struct broker *b, const struct broker_opts *o, char *err, size_t errlen)
{
    struct broker_node one = {o->host, o->port, o->ssl};
    const struct broker_node *list = o->n_nodes ? o->nodes : &one;
    size_t n = o->n_nodes ? o->n_nodes : 1;

    if (n > BROKER_MAX_NODES || !list) {
        snprintf(err, errlen, "broker: 1 to %d nodes are allowed", BROKER_MAX_NODES);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        if (!list[i].host || !*list[i].host || strlen(list[i].host) >= SHORTSTR) {
            snprintf(err, errlen, "broker: node %zu has no host", i + 1);
            return -1;
        }
        if (list[i].port <= 0 || list[i].port > 65535) {
            snprintf(err, errlen, "broker: port %d of node %zu is out of range", list[i].port, i + 1);
            return -1;
        }
        b->nodes[i].host = strdup(list[i].host);
        if (!b->nodes[i].host) {
            snprintf(err, errlen, "broker: out of memory");
            return -1;
        }
        b->nodes[i].port = list[i].port;
        b->nodes[i].ssl = list[i].ssl;
        snprintf(b->nodes[i].name, sizeof(b->nodes[i].name), "%s:%d", list[i].host, list[i].port);
        b->n_nodes = i + 1;
    }
    /* Like RabbitMQ's own clients, every process starts at a random node,
     * so that a fleet of daemons spreads over the cluster. */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t r = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ (uint64_t)getpid() << 40;
    for (size_t i = n; i > 1; i--) {
        r ^= r << 13;
        r ^= r >> 7;
        r ^= r << 17;
        size_t j = (size_t)(r % i);
        struct node t = b->nodes[i - 1];
        b->nodes[i - 1] = b->nodes[j];
        b->nodes[j] = t;
    }
    b->node = 0;
    b->host = b->nodes[0].host;
    b->port = b->nodes[0].port;
    b->ssl = b->nodes[0].ssl;
    return 0;
}

struct broker *broker_new(const struct broker_opts *o, char *err, size_t errlen)
{
    char why[256];
    if (err && errlen)
        err[0] = '\0';
    if (!o || (!o->n_nodes && (!o->host || !*o->host)) || !o->user || !*o->user) {
        if (err)
            snprintf(err, errlen, "broker: host and user are required");
        return NULL;
    }
    if (!o->n_nodes && (o->port <= 0 || o->port > 65535)) {
        if (err)
            snprintf(err, errlen, "broker: port %d is out of range", o->port);
        return NULL;
    }
    const char *qt = o->queue_type && *o->queue_type ? o->queue_type : "classic";
    if (strcmp(qt, "classic") != 0 && strcmp(qt, "quorum") != 0) {
        if (err)
            snprintf(err, errlen, "broker: queue type \"%.32s\" is neither classic nor quorum", qt);
        return NULL;
    }
    if (o->heartbeat < 0 || o->heartbeat > 3600 || o->prefetch < 0 || o->prefetch > 65535 ||
        o->connect_timeout_ms < 0) {
        if (err)
            snprintf(err, errlen, "broker: heartbeat, prefetch or connect timeout out of range");
        return NULL;
    }
    if ((o->cert_file && *o->cert_file) != (o->key_file && *o->key_file)) {
        if (err)
            snprintf(err, errlen, "broker: a client certificate needs both cert_file and key_file");
        return NULL;
    }

    struct broker *b = calloc(1, sizeof(*b));
    if (!b)
        goto fail_alloc;
    if (copy_nodes(b, o, why, sizeof(why)) < 0) {
        if (err)
            snprintf(err, errlen, "%s", why);
        broker_free(b);
        return NULL;
    }
    b->vhost = strdup(o->vhost && *o->vhost ? o->vhost : "/");
    b->user = strdup(o->user);
    b->password = dup_or_empty(o->password);
    b->ca_file = dup_or_empty(o->ca_file);
    b->cert_file = dup_or_empty(o->cert_file);
    b->key_file = dup_or_empty(o->key_file);
    b->queue_type = strdup(qt);
    b->connection_name =
        strdup(o->connection_name && *o->connection_name ? o->connection_name : "remotetask");
    if (!b->vhost || !b->user || !b->password || !b->ca_file || !b->cert_file ||
        !b->key_file || !b->queue_type || !b->connection_name)
        goto fail_alloc;
    b->verify_peer = o->verify_peer;
    b->verify_hostname = o->verify_hostname;
    b->heartbeat = o->heartbeat;
    b->prefetch = o->prefetch;
    b->connect_timeout_ms = o->connect_timeout_ms ? o->connect_timeout_ms : DEFAULT_CONNECT_TIMEOUT_MS;
    b->max_message = o->max_message ? o->max_message : DEFAULT_MAX_MESSAGE;
    b->max_unconfirmed = o->max_unconfirmed ? o->max_unconfirmed : DEFAULT_MAX_UNCONFIRMED;
    b->on_confirm = o->on_confirm;
    b->on_delivery = o->on_delivery;
    b->on_cancel = o->on_cancel;
    b->on_depth = o->on_depth;
    b->cb_arg = o->cb_arg;
    buf_init(&b->body, b->max_message);
    broker_set_err(b, "not connected");
    return b;

fail_alloc:
    if (err)
        snprintf(err, errlen, "broker: out of memory");
    broker_free(b);
    return NULL;
}

static void broker_teardown(struct broker *b, int polite);

void broker_free(struct broker *b)
{
    if (!b)
        return;
    if (b->conn)
        broker_teardown(b, !b->dead);
    for (size_t i = 0; i < b->n_nodes; i++) {
        netprobe_free(b->probes[i]);
        free(b->nodes[i].host);
    }
    broker_declare_free_clients(b);
    free(b->pend);
    free(b->consumers);
    free(b->acks);
    free(b->dq);
    buf_release(&b->body);
    free(b->vhost);
    free(b->user);
    if (b->password) {
        /* Scrub the secret before it goes back to the allocator. */
        volatile char *p = b->password;
        while (*p)
            *p++ = '\0';
        free(b->password);
    }
    free(b->ca_file);
    free(b->cert_file);
    free(b->key_file);
    free(b->queue_type);
    free(b->connection_name);
    free(b);
}

/* Destroys the connection and reports LOST for every unconfirmed publish.
 * The state is reset before the callbacks run, so a callback that tries to
 * publish again gets RT_RETRY ("not connected"). */
static void broker_teardown(struct broker *b, int polite)
{
    if (b->conn) {
        /* A node that stopped reading would hold the close RPC until its
         * timeout: then the connection is just dropped. */
        if (polite && broker_can_write(b, 64)) {
            amqp_rpc_reply_t r = amqp_connection_close(b->conn, AMQP_REPLY_SUCCESS);
            if (r.reply_type != AMQP_RESPONSE_NORMAL)
                log_debug("closing the AMQP connection to %s:%d was not acknowledged", b->host,
                          b->port);
        }
        amqp_destroy_connection(b->conn);
        b->conn = NULL;
    }
    b->dead = 0;
    b->blocked = 0;
    b->ret_state = CONTENT_IDLE;
    b->del_state = CONTENT_IDLE;
    buf_reset(&b->body);
    b->n_consumers = 0;
    b->n_acks = 0; /* unsent acks die with the connection: redelivered */
    b->scratch = SCRATCH_CLOSED;
    if (b->decl == DECL_FULL || b->decl == DECL_PASSIVE) {
        broker_declare_free_clients(b);
        b->decl_status = RT_RETRY;
        b->decl = DECL_DONE;
    }
    b->query = QUERY_CLOSED;
    /* Depth questions that will never be answered: their owner learns it
     * (found -1), after the state is reset. */
    struct depth_question *dq = b->dq;
    size_t dq_head = b->dq_head, dq_len = b->dq_len;
    b->dq = NULL;
    b->dq_head = b->dq_len = b->dq_cap = 0;
    for (size_t i = dq_head; i < dq_len && b->on_depth; i++) {
        b->depth++;
        b->on_depth(b->cb_arg, dq[i].queue, -1, 0, 0);
        b->depth--;
    }
    free(dq);

    struct pending *pend = b->pend;
    size_t head = b->pend_head, len = b->pend_len;
    uint64_t base = b->pend_base;
    b->pend = NULL;
    b->pend_head = b->pend_len = b->pend_cap = 0;
    b->unconfirmed = 0;
    b->next_tag = 1;
    b->pend_base = 1;
    if (len > head)
        log_info("AMQP connection to %s:%d closed with %zu publishes unconfirmed", b->host,
                 b->port, len - head);
    for (size_t i = head; i < len; i++) {
        if (pend[i].state == PEND_DONE || !b->on_confirm)
            continue;
        b->depth++;
        b->on_confirm(b->cb_arg, base + i, BROKER_LOST);
        b->depth--;
    }
    free(pend);
}

/* The outermost calls end here: a connection found dead is torn down. */
rt_status broker_finish_call(struct broker *b, rt_status st)
{
    if (b->dead && b->depth == 0)
        broker_teardown(b, 0);
    return st;
}

static void stop_probes(struct broker *b);

void broker_disconnect(struct broker *b)
{
    if (!b || b->depth)
        return;
    stop_probes(b);
    if (b->conn) {
        log_info("closing the AMQP connection to %s:%d", b->host, b->port);
        broker_teardown(b, !b->dead);
    }
}

int broker_connected(const struct broker *b)
{
    return b && b->conn && !b->dead;
}

const char *broker_strerror(const struct broker *b)
{
    return b ? b->err : "no broker";
}

int broker_fd(const struct broker *b)
{
    if (!broker_connected(b))
        return -1;
    return amqp_get_sockfd(b->conn);
}

int broker_wants_read_now(const struct broker *b)
{
    if (!broker_connected(b))
        return 0;
    return amqp_frames_enqueued(b->conn) || amqp_data_in_buffer(b->conn);
}

int broker_timeout_ms(const struct broker *b)
{
    if (b && b->connecting) {
        int best = -1;
        for (size_t i = 0; i < b->n_nodes; i++) {
            int t = netprobe_timeout_ms(b->probes[i]);
            if (t >= 0 && (best < 0 || t < best))
                best = t;
        }
        return best;
    }
    if (!broker_connected(b))
        return -1;
    int hb = amqp_get_heartbeat(b->conn);
    if (hb <= 0)
        return -1;
    /* Wake at the heartbeat deadline itself, not up to half a heartbeat
     * after it. */
    int64_t left = b->last_frame_ms + (int64_t)hb * 2000 - broker_now_ms();
    if (left < 0)
        left = 0;
    return left < hb * 1000 / 2 ? (int)left : hb * 1000 / 2;
}

size_t broker_pollfds(const struct broker *b, struct pollfd *fds, size_t room)
{
    size_t n = 0;
    if (!b)
        return 0;
    if (b->connecting) {
        for (size_t i = 0; i < b->n_nodes; i++) {
            int fd = netprobe_fd(b->probes[i]);
            if (fd < 0)
                continue;
            if (n < room)
                fds[n] = (struct pollfd){.fd = fd, .events = netprobe_events(b->probes[i])};
            n++;
        }
        return n;
    }
    if (!broker_connected(b))
        return 0;
    if (room)
        fds[0] = (struct pollfd){.fd = amqp_get_sockfd(b->conn),
                                 .events = (short)(POLLIN | (b->n_acks ? POLLOUT : 0))};
    return 1;
}

int broker_connecting(const struct broker *b)
{
    return b && b->connecting;
}

const char *broker_node(const struct broker *b)
{
    return b && b->n_nodes ? b->nodes[b->node].name : "";
}

/* Whether need more bytes can be written now without blocking. The kernel
 * queues what the peer has not acknowledged; a peer that stopped reading
 * fills the queue and a blocking write would wait for it (librabbitmq 0.11
 * writes with no deadline). An empty queue always takes a write. */
int broker_can_write(struct broker *b, size_t need)
{
    if (!b->conn)
        return 0;
    int fd = amqp_get_sockfd(b->conn), outq = 0, sndbuf = 0;
    socklen_t len = sizeof(sndbuf);
    if (fd < 0 || ioctl(fd, SIOCOUTQ, &outq) < 0 ||
        getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, &len) < 0)
        return 1; /* cannot tell: behave as before */
    if (outq <= 0)
        return 1;
    return (size_t)outq + need < (size_t)sndbuf / SEND_QUEUE_FRACTION;
}

/* ---- replies from RPCs ------------------------------------------------ */

void broker_send_channel_close_ok(struct broker *b, amqp_channel_t ch)
{
    amqp_channel_close_ok_t ok = {0};
    if (amqp_send_method(b->conn, ch, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok) != AMQP_STATUS_OK)
        broker_mark_dead(b);
}

static void broker_send_connection_close_ok(struct broker *b)
{
    amqp_connection_close_ok_t ok = {0};
    (void)amqp_send_method(b->conn, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
}

/* Turns the reply of an RPC into a verdict, with the reason in b->err.
 * A closed channel is answered with close-ok (it can be opened again); a
 * closed connection or a library failure marks the connection dead.
 * *code_out receives the broker's reply code (0 if none). */
rt_status broker_rpc_verdict(struct broker *b, amqp_rpc_reply_t r, amqp_channel_t ch,
                             const char *what, int *code_out)
{
    if (code_out)
        *code_out = 0;
    /* A reply is a frame from the node: a long run of RPCs (declaring
     * hundreds of queues) must not look like silence. */
    if (r.reply_type == AMQP_RESPONSE_NORMAL || r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION)
        b->last_frame_ms = broker_now_ms();
    switch (r.reply_type) {
    case AMQP_RESPONSE_NORMAL:
        return RT_OK;
    case AMQP_RESPONSE_NONE:
        broker_set_err(b, "%s: no reply from the broker", what);
        broker_mark_dead(b);
        return RT_RETRY;
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
        broker_set_err(b, "%s: %s", what, amqp_error_string2(r.library_error));
        broker_mark_dead(b);
        return RT_RETRY;
    case AMQP_RESPONSE_SERVER_EXCEPTION:
        break;
    }
    if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
        const amqp_connection_close_t *c = r.reply.decoded;
        char text[SHORTSTR];
        broker_copy_bytes(text, sizeof(text), c->reply_text);
        broker_set_err(b, "%s: the broker closed the connection: %u %s", what, c->reply_code, text);
        if (code_out)
            *code_out = c->reply_code;
        broker_send_connection_close_ok(b);
        broker_mark_dead(b);
        return RT_RETRY;
    }
    if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
        const amqp_channel_close_t *c = r.reply.decoded;
        char text[SHORTSTR];
        broker_copy_bytes(text, sizeof(text), c->reply_text);
        broker_set_err(b, "%s: refused by the broker: %u %s", what, c->reply_code, text);
        if (code_out)
            *code_out = c->reply_code;
        broker_send_channel_close_ok(b, ch);
        return RT_REJECT;
    }
    broker_set_err(b, "%s: unexpected reply %s", what, amqp_method_name(r.reply.id));
    broker_mark_dead(b);
    return RT_RETRY;
}

/* ---- connect ---------------------------------------------------------- */

/* The kernel must give up on a peer that vanished (no FIN, no RST) on its
 * own: librabbitmq 0.11 writes with no deadline, so a publish to a dead
 * peer would otherwise wait forever. TCP_USER_TIMEOUT bounds how long sent
 * data may stay unacknowledged; keepalive covers an idle connection. */
static void set_socket_options(struct broker *b)
{
    int fd = amqp_get_sockfd(b->conn);
    if (fd < 0)
        return;
    int hb = b->heartbeat > 0 ? b->heartbeat : 30;
    unsigned user_timeout_ms = (unsigned)hb * 2000u;
    if (user_timeout_ms < 10000)
        user_timeout_ms = 10000;
    int one = 1, idle = hb < 10 ? hb : 10, intvl = 5, cnt = 3;
    if (idle < 1)
        idle = 1;
    if (setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout_ms, sizeof(user_timeout_ms)) ||
        setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one)) ||
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle)) ||
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl)) ||
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt)))
        log_warning("cannot set TCP timeouts on the AMQP socket: %s", strerror(errno));
}

/* librabbitmq 0.11 does not load OpenSSL's default trust store, so an
 * empty ca_file means the distribution's bundle. */
static const char *system_ca_bundle(void)
{
    static const char *const paths[] = {
        "/etc/ssl/certs/ca-certificates.crt", /* Debian, Ubuntu, Alpine */
        "/etc/pki/tls/certs/ca-bundle.crt",   /* RHEL, Fedora */
        "/etc/ssl/ca-bundle.pem",             /* SUSE */
        "/etc/ssl/cert.pem",                  /* BSD, macOS */
    };
    for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
        if (access(paths[i], R_OK) == 0)
            return paths[i];
    }
    return NULL;
}

static rt_status setup_tls(struct broker *b, amqp_socket_t *s)
{
    amqp_ssl_socket_set_verify_peer(s, b->verify_peer);
    amqp_ssl_socket_set_verify_hostname(s, b->verify_hostname);
    if (amqp_ssl_socket_set_ssl_versions(s, AMQP_TLSv1_2, AMQP_TLSvLATEST) != AMQP_STATUS_OK)
        log_warning("cannot require TLS 1.2 or later for %s:%d", b->host, b->port);
    const char *ca = *b->ca_file ? b->ca_file : system_ca_bundle();
    if (ca) {
        if (amqp_ssl_socket_set_cacert(s, ca) != AMQP_STATUS_OK) {
            broker_set_err(b, "cannot load the CA file \"%s\"", ca);
            return RT_REJECT;
        }
    } else if (b->verify_peer) {
        broker_set_err(b, "no CA file given and no system CA bundle found to verify %s", b->host);
        return RT_REJECT;
    }
    if (*b->cert_file) {
        if (amqp_ssl_socket_set_key(s, b->cert_file, b->key_file) != AMQP_STATUS_OK) {
            broker_set_err(b, "cannot load the client certificate \"%s\" with key \"%s\"", b->cert_file,
                    b->key_file);
            return RT_REJECT;
        }
    }
    return RT_OK;
}

static rt_status login(struct broker *b)
{
    /* RabbitMQ sends connection.blocked, basic.cancel for a deleted queue
     * and a connection.close with a reason on a refused login only to
     * clients that announce these capabilities. */
    amqp_table_entry_t caps[] = {
        broker_bool_entry("connection.blocked", 1),     broker_bool_entry("consumer_cancel_notify", 1),
        broker_bool_entry("publisher_confirms", 1),     broker_bool_entry("basic.nack", 1),
        broker_bool_entry("authentication_failure_close", 1),
    };
    amqp_table_entry_t props[4];
    props[0].key = amqp_cstring_bytes("capabilities");
    props[0].value.kind = AMQP_FIELD_KIND_TABLE;
    props[0].value.value.table.num_entries = (int)(sizeof(caps) / sizeof(caps[0]));
    props[0].value.value.table.entries = caps;
    props[1] = broker_str_entry("connection_name", b->connection_name);
    props[2] = broker_str_entry("product", "remotetask");
    props[3] = broker_str_entry("information", "BILLmanager tasks proxy");
    amqp_table_t table = {(int)(sizeof(props) / sizeof(props[0])), props};

    amqp_rpc_reply_t r = amqp_login_with_properties(b->conn, b->vhost, 0, FRAME_MAX, b->heartbeat,
                                                    &table, AMQP_SASL_METHOD_PLAIN, b->user,
                                                    b->password);
    if (r.reply_type == AMQP_RESPONSE_NORMAL)
        return RT_OK;
    if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION && r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
        const amqp_connection_close_t *c = r.reply.decoded;
        char text[SHORTSTR];
        broker_copy_bytes(text, sizeof(text), c->reply_text);
        broker_send_connection_close_ok(b);
        if (c->reply_code == AMQP_ACCESS_REFUSED) {
            broker_set_err(b, "login refused for user \"%s\" on %s:%d", b->user, b->host, b->port);
            return RT_REJECT;
        }
        if (c->reply_code == AMQP_NOT_ALLOWED) {
            broker_set_err(b, "user \"%s\" may not use vhost \"%s\": %s", b->user, b->vhost, text);
            return RT_REJECT;
        }
        broker_set_err(b, "login for user \"%s\" failed: %u %s", b->user, c->reply_code, text);
        return RT_RETRY;
    }
    if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION)
        broker_set_err(b, "login for user \"%s\" on %s:%d failed: %s", b->user, b->host, b->port,
                amqp_error_string2(r.library_error));
    else
        broker_set_err(b, "login for user \"%s\" on %s:%d failed", b->user, b->host, b->port);
    return RT_RETRY;
}

static rt_status open_channels(struct broker *b)
{
    amqp_channel_open(b->conn, CH_PUBLISH);
    rt_status st = broker_rpc_verdict(b, amqp_get_rpc_reply(b->conn), CH_PUBLISH, "opening the publish channel", NULL);
    if (st != RT_OK)
        return RT_RETRY;
    amqp_confirm_select(b->conn, CH_PUBLISH);
    st = broker_rpc_verdict(b, amqp_get_rpc_reply(b->conn), CH_PUBLISH, "confirm.select", NULL);
    if (st != RT_OK)
        return RT_RETRY;
    amqp_channel_open(b->conn, CH_CONSUME);
    st = broker_rpc_verdict(b, amqp_get_rpc_reply(b->conn), CH_CONSUME, "opening the consume channel", NULL);
    if (st != RT_OK)
        return RT_RETRY;
    amqp_basic_qos(b->conn, CH_CONSUME, 0, (uint16_t)b->prefetch, 0);
    st = broker_rpc_verdict(b, amqp_get_rpc_reply(b->conn), CH_CONSUME, "basic.qos", NULL);
    if (st != RT_OK)
        return RT_RETRY;
    amqp_channel_open(b->conn, CH_QUERY);
    st = broker_rpc_verdict(b, amqp_get_rpc_reply(b->conn), CH_QUERY, "opening the query channel", NULL);
    if (st != RT_OK)
        return RT_RETRY;
    b->query = QUERY_OPEN;
    return RT_OK;
}

/* The options of a probe of node i. */
static void probe_opts(const struct broker *b, size_t i, struct netprobe_opts *po)
{
    memset(po, 0, sizeof(*po));
    po->host = b->nodes[i].host;
    po->port = b->nodes[i].port;
    po->ssl = b->nodes[i].ssl;
    po->ca_file = b->ca_file;
    po->cert_file = b->cert_file;
    po->key_file = b->key_file;
    po->verify_peer = b->verify_peer;
    po->verify_hostname = b->verify_hostname;
    po->timeout_ms = b->connect_timeout_ms;
}

/* librabbitmq says only "SSL peer verification failed": a probe of the
 * same node with the same settings names the cause (expired, unknown CA,
 * another host name). Blocks up to the connect timeout, but only after a
 * verification failure, which the node answered at once. */
static void explain_tls_failure(struct broker *b)
{
    struct netprobe_opts po;
    char why[128];
    probe_opts(b, b->node, &po);
    struct netprobe *p = netprobe_new(&po, why, sizeof(why));
    if (p && netprobe_run(p) == NETPROBE_FAILED && netprobe_verdict(p) == RT_REJECT)
        broker_set_err(b, "cannot connect to %s", netprobe_strerror(p));
    netprobe_free(p);
}

/* Connects to node i, blocking up to the connect timeout per step. */
static rt_status connect_node(struct broker *b, size_t i)
{
    b->node = i;
    b->host = b->nodes[i].host;
    b->port = b->nodes[i].port;
    b->ssl = b->nodes[i].ssl;
    b->query = QUERY_CLOSED;

    rt_status st = RT_RETRY;
    b->conn = amqp_new_connection();
    if (!b->conn) {
        broker_set_err(b, "out of memory for an AMQP connection");
        return RT_RETRY;
    }
    amqp_socket_t *s = b->ssl ? amqp_ssl_socket_new(b->conn) : amqp_tcp_socket_new(b->conn);
    if (!s) {
        broker_set_err(b, "cannot create an AMQP %s socket", b->ssl ? "TLS" : "TCP");
        goto fail_conn;
    }
    if (b->ssl && (st = setup_tls(b, s)) != RT_OK)
        goto fail_conn;

    struct timeval tv = broker_ms_to_tv(b->connect_timeout_ms);
    if (amqp_set_handshake_timeout(b->conn, &tv) != AMQP_STATUS_OK ||
        amqp_set_rpc_timeout(b->conn, &tv) != AMQP_STATUS_OK) {
        broker_set_err(b, "cannot set AMQP timeouts");
        st = RT_RETRY;
        goto fail_conn;
    }
    int rc = amqp_socket_open_noblock(s, b->host, b->port, &tv);
    if (rc != AMQP_STATUS_OK) {
        broker_set_err(b, "cannot connect to %s:%d: %s", b->host, b->port, amqp_error_string2(rc));
        /* A certificate that fails verification will fail again until
         * someone changes the configuration or the server's certificate. */
        st = (rc == AMQP_STATUS_SSL_PEER_VERIFY_FAILED || rc == AMQP_STATUS_SSL_HOSTNAME_VERIFY_FAILED)
                 ? RT_REJECT
                 : RT_RETRY;
        if (st == RT_REJECT)
            explain_tls_failure(b);
        goto fail_conn;
    }
    set_socket_options(b);
    if ((st = login(b)) != RT_OK)
        goto fail_conn;
    if ((st = open_channels(b)) != RT_OK)
        goto fail_conn;

    b->dead = 0;
    b->blocked = 0;
    b->lost_to_silence = 0;
    b->gen++;
    b->last_frame_ms = broker_now_ms();
    b->next_tag = 1;
    b->pend_base = 1;
    b->pend_head = b->pend_len = 0;
    b->unconfirmed = 0;
    log_info("connected to AMQP broker %s:%d%s as \"%s\" (heartbeat %d s)", b->host, b->port,
             b->ssl ? " over TLS" : "", b->user, amqp_get_heartbeat(b->conn));
    return RT_OK;

fail_conn:
    /* The caller decides how loudly to report it (the daemon rate-limits). */
    log_debug("AMQP connect failed: %s", b->err);
    amqp_destroy_connection(b->conn);
    b->conn = NULL;
    b->dead = 0;
    return st;
}

/* Where an attempt starts: after the node last connected to (the one just
 * lost, usually), or at the first of the shuffled order. */
static size_t first_node(const struct broker *b)
{
    return b->had_node ? (b->node + 1) % b->n_nodes : 0;
}

/* The reasons of several failed nodes, joined, into b->err. */
static void join_reasons(struct broker *b, char reasons[][ERR_MAX], size_t n)
{
    char all[sizeof(b->err)];
    size_t used = 0;
    all[0] = '\0';
    for (size_t i = 0; i < n && used + 4 < sizeof(all); i++) {
        int w = snprintf(all + used, sizeof(all) - used, "%s%s", i ? "; " : "", reasons[i]);
        if (w < 0)
            break;
        used += (size_t)w < sizeof(all) - used ? (size_t)w : sizeof(all) - used - 1;
    }
    broker_set_err(b, "%s%s", n > 1 ? "no node answered: " : "", all);
}

static void stop_probes(struct broker *b)
{
    for (size_t i = 0; i < b->n_nodes; i++) {
        netprobe_free(b->probes[i]);
        b->probes[i] = NULL;
    }
    b->connecting = 0;
}

rt_status broker_connect(struct broker *b)
{
    char reasons[BROKER_MAX_NODES][ERR_MAX];
    if (!b)
        return RT_REJECT;
    if (b->depth) {
        broker_set_err(b, "broker_connect called from a callback");
        return RT_REJECT;
    }
    stop_probes(b);
    if (b->conn)
        broker_teardown(b, !b->dead);
    size_t start = first_node(b);
    int all_reject = 1;
    for (size_t k = 0; k < b->n_nodes; k++) {
        size_t i = (start + k) % b->n_nodes;
        rt_status st = connect_node(b, i);
        if (st == RT_OK) {
            b->had_node = 1;
            return RT_OK;
        }
        all_reject &= st == RT_REJECT;
        snprintf(reasons[k], sizeof(reasons[k]), "%s", b->err);
    }
    join_reasons(b, reasons, b->n_nodes);
    return all_reject ? RT_REJECT : RT_RETRY;
}

void broker_connect_async(struct broker *b)
{
    char why[128];
    if (!b || b->connecting || b->conn || b->depth)
        return;
    b->probe_start = first_node(b);
    for (size_t i = 0; i < b->n_nodes; i++) {
        struct netprobe_opts po;
        probe_opts(b, i, &po);
        b->probes[i] = netprobe_new(&po, why, sizeof(why));
    }
    b->connecting = 1;
    broker_set_err(b, "connecting");
}

/* One turn of an attempt of broker_connect_async(): RT_OK while it runs
 * or once connected (broker_connected() tells), else its verdict. */
static rt_status broker_connect_progress(struct broker *b)
{
    char reasons[BROKER_MAX_NODES][ERR_MAX];
    size_t running = 0, n_failed = 0;
    int all_reject = 1;

    for (size_t i = 0; i < b->n_nodes; i++)
        if (b->probes[i])
            (void)netprobe_step(b->probes[i]);
    /* The first node in this attempt's order that answered gets the
     * connection; nodes still silent are not waited for. */
    for (size_t k = 0; k < b->n_nodes; k++) {
        size_t i = (b->probe_start + k) % b->n_nodes;
        struct netprobe *p = b->probes[i];
        enum netprobe_state ps = p ? netprobe_state(p) : NETPROBE_FAILED;
        if (ps == NETPROBE_ALIVE) {
            stop_probes(b);
            rt_status st = connect_node(b, i);
            if (st == RT_OK)
                b->had_node = 1;
            return st;
        }
        if (ps == NETPROBE_RUNNING) {
            running++;
            continue;
        }
        all_reject &= p ? netprobe_verdict(p) == RT_REJECT : 0;
        snprintf(reasons[n_failed++], sizeof(reasons[0]), "%s",
                 p ? netprobe_strerror(p) : "out of memory for a probe");
    }
    if (running)
        return RT_OK;
    stop_probes(b);
    join_reasons(b, reasons, n_failed);
    return all_reject ? RT_REJECT : RT_RETRY;
}

/* ---- incoming frames -------------------------------------------------- */

void broker_protocol_error(struct broker *b, const char *what, amqp_channel_t ch)
{
    broker_set_err(b, "AMQP protocol error: %s on channel %u", what, (unsigned)ch);
    log_error("%s", b->err);
    broker_mark_dead(b);
}

/* connection.close: the broker ends the connection. */
static void connection_closed(struct broker *b, const amqp_connection_close_t *c)
{
    char text[SHORTSTR];
    broker_copy_bytes(text, sizeof(text), c->reply_text);
    broker_set_err(b, "the broker closed the connection: %u %s", c->reply_code, text);
    log_warning("%s", b->err);
    broker_send_connection_close_ok(b);
    broker_mark_dead(b);
}

/* channel.close: what it means depends on the channel. */
static void channel_closed(struct broker *b, amqp_channel_t ch, const amqp_channel_close_t *c)
{
    char text[SHORTSTR];
    if (ch == CH_QUERY) {
        broker_query_on_close(b, c);
        return;
    }
    if (ch == CH_SCRATCH && (b->decl == DECL_FULL || b->decl == DECL_PASSIVE)) {
        broker_declare_on_close(b, c);
        return;
    }
    /* Either other channel closing leaves the connection unable to do
     * its job (confirms or deliveries would stop): start over. */
    broker_copy_bytes(text, sizeof(text), c->reply_text);
    broker_set_err(b, "the broker closed channel %u: %u %s", (unsigned)ch, c->reply_code, text);
    broker_send_channel_close_ok(b, ch);
    broker_mark_dead(b);
    if (ch == CH_CONSUME && b->get_state == GET_WAITING) {
        /* The refusal of a basic.get (no such queue, no access): the
         * caller reports it. */
        b->get_state = GET_REFUSED;
        return;
    }
    log_warning("%s", b->err);
}

/* channel.open-ok: the scratch channel opened again for a passive round,
 * or the query channel opened again after a refusal. */
static void channel_opened(struct broker *b, amqp_channel_t ch)
{
    if (ch == CH_SCRATCH && b->scratch == SCRATCH_OPENING && b->decl == DECL_PASSIVE)
        broker_declare_on_reopen(b);
    else
        broker_query_on_open(b, ch);
}

/* connection.blocked: a resource alarm on the broker; publishes wait. */
static void connection_blocked(struct broker *b, const amqp_connection_blocked_t *c)
{
    char text[SHORTSTR];
    broker_copy_bytes(text, sizeof(text), c->reason);
    b->blocked = 1;
    log_warning("AMQP broker blocked publishing: %s", text);
}

static void connection_unblocked(struct broker *b)
{
    b->blocked = 0;
    log_info("AMQP broker unblocked publishing");
}

/* A method frame, to the part of the broker it concerns. */
static void handle_method(struct broker *b, amqp_channel_t ch, const amqp_method_t *m)
{
    switch (m->id) {
    case AMQP_CONNECTION_CLOSE_METHOD: connection_closed(b, m->decoded); break;
    case AMQP_CONNECTION_BLOCKED_METHOD: connection_blocked(b, m->decoded); break;
    case AMQP_CONNECTION_UNBLOCKED_METHOD: connection_unblocked(b); break;
    case AMQP_CHANNEL_CLOSE_METHOD: channel_closed(b, ch, m->decoded); break;
    case AMQP_CHANNEL_OPEN_OK_METHOD: channel_opened(b, ch); break;
    case AMQP_CHANNEL_CLOSE_OK_METHOD: broker_scratch_on_close_ok(b, ch); break;
    case AMQP_EXCHANGE_DECLARE_OK_METHOD: broker_declare_on_ok(b, ch); break;
    case AMQP_QUEUE_DECLARE_OK_METHOD: broker_depth_on_declare_ok(b, ch, m->decoded); break;
    case AMQP_BASIC_ACK_METHOD:
    case AMQP_BASIC_NACK_METHOD:
    case AMQP_BASIC_RETURN_METHOD: broker_publish_on_method(b, ch, m); break;
    case AMQP_BASIC_DELIVER_METHOD: broker_consume_on_deliver(b, ch, m->decoded); break;
    case AMQP_BASIC_CANCEL_METHOD: broker_consume_on_cancel(b, m->decoded); break;
    case AMQP_BASIC_GET_OK_METHOD: broker_get_on_ok(b, ch, m->decoded); break;
    case AMQP_BASIC_GET_EMPTY_METHOD: broker_get_on_empty(b, ch); break;
    default:
        log_debug("ignoring AMQP method %s on channel %u", amqp_method_name(m->id), (unsigned)ch);
        break;
    }
}

/* A content header: of a returned publish or of a delivery. */
static void handle_header(struct broker *b, amqp_channel_t ch, const amqp_frame_t *f)
{
    const amqp_basic_properties_t *p = f->payload.properties.decoded;
    uint64_t size = f->payload.properties.body_size;
    if (ch == CH_PUBLISH && b->ret_state == CONTENT_HEADER)
        broker_return_on_header(b, p, size);
    else if (ch == CH_CONSUME && b->del_state == CONTENT_HEADER)
        broker_delivery_on_header(b, p, size);
    else
        broker_protocol_error(b, "unexpected content header", ch);
}

/* A body frame: of a returned publish or of a delivery. */
static void handle_body(struct broker *b, amqp_channel_t ch, amqp_bytes_t part)
{
    if (ch == CH_PUBLISH && b->ret_state == CONTENT_BODY)
        broker_return_on_body(b, part);
    else if (ch == CH_CONSUME && b->del_state == CONTENT_BODY)
        broker_delivery_on_body(b, part);
    else
        broker_protocol_error(b, "unexpected content body", ch);
}

void broker_handle_frame(struct broker *b, const amqp_frame_t *f)
{
    switch (f->frame_type) {
    case AMQP_FRAME_METHOD: handle_method(b, f->channel, &f->payload.method); break;
    case AMQP_FRAME_HEADER: handle_header(b, f->channel, f); break;
    case AMQP_FRAME_BODY: handle_body(b, f->channel, f->payload.body_fragment); break;
    default: break; /* heartbeats are handled by librabbitmq */
    }
    /* Everything needed from the frame was copied out; frames queued by an
     * RPC live in the same pools, so keep those until consumed. */
    if (!b->dead && amqp_frames_enqueued(b->conn) == 0)
        amqp_maybe_release_buffers(b->conn);
}


rt_status broker_process(struct broker *b)
{
    if (!b)
        return RT_REJECT;
    if (b->depth) {
        broker_set_err(b, "broker_process called from a callback");
        return RT_REJECT;
    }
    if (b->connecting)
        return broker_connect_progress(b);
    if (!b->conn) {
        broker_set_err(b, "not connected");
        return RT_RETRY;
    }
    broker_flush_acks(b);
    broker_flush_depth(b);
    for (int n = 0; n < MAX_FRAMES_PER_CALL && !b->dead; n++) {
        amqp_frame_t f;
        struct timeval zero = {0, 0};
        /* librabbitmq swallows heartbeat frames: bytes waiting to be read
         * are the node's sign of life too. */
        int avail = 0;
        if (amqp_data_in_buffer(b->conn) ||
            (ioctl(amqp_get_sockfd(b->conn), FIONREAD, &avail) == 0 && avail > 0))
            b->last_frame_ms = broker_now_ms();
        int rc = amqp_simple_wait_frame_noblock(b->conn, &f, &zero);
        if (rc == AMQP_STATUS_TIMEOUT)
            break;
        if (rc != AMQP_STATUS_OK) {
            broker_set_err(b, "AMQP connection to %s:%d lost: %s", b->host, b->port, amqp_error_string2(rc));
            log_warning("%s", b->err);
            b->lost_to_silence = rc == AMQP_STATUS_HEARTBEAT_TIMEOUT;
            broker_mark_dead(b);
            break;
        }
        b->last_frame_ms = broker_now_ms();
        broker_handle_frame(b, &f);
    }
    int hb = amqp_get_heartbeat(b->conn);
    if (!b->dead && hb > 0 && broker_now_ms() - b->last_frame_ms >= (int64_t)hb * 2000) {
        broker_set_err(b, "AMQP connection to %s:%d lost: nothing from the node for 2 heartbeats (%d s)",
                b->host, b->port, 2 * hb);
        log_warning("%s", b->err);
        b->lost_to_silence = 1;
        broker_mark_dead(b);
    }
    if (b->dead) {
        broker_teardown(b, 0);
        return RT_RETRY;
    }
    return RT_OK;
}

int broker_lost_to_silence(const struct broker *b)
{
    return b && b->lost_to_silence;
}

int64_t broker_silent_ms(const struct broker *b)
{
    if (!broker_connected(b))
        return 0;
    int64_t d = broker_now_ms() - b->last_frame_ms;
    return d > 0 ? d : 0;
}
