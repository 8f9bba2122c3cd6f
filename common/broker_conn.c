/*
 * broker_conn.c - the connection: made to one node of the list (at once,
 * or by probing every node without blocking and taking the first that
 * answers), over TCP or TLS, logged in with the capabilities the broker
 * needs, its channels opened; guarded so that no write blocks on a node
 * that stopped reading; silence told apart from other losses; and torn
 * down, with every part told what the loss means for it.
 */
#include "broker.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <linux/sockios.h>

#include "broker_int.h"
#include "buf.h"
#include "log.h"
#include "netprobe.h"

#define FRAME_MAX 131072
/* A write goes to the socket only while the kernel's send queue holds less
 * than this fraction of the socket's buffer: a node that stopped reading
 * (frozen, blackholed) then never makes a write block. */
#define SEND_QUEUE_FRACTION 4

/* ---- one node: socket, TLS, login, channels --------------------------- */

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
            broker_set_err(b, "cannot load the client certificate \"%s\" with key \"%s\"",
                           b->cert_file, b->key_file);
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
        broker_bool_entry("connection.blocked", 1),
        broker_bool_entry("consumer_cancel_notify", 1),
        broker_bool_entry("publisher_confirms", 1),
        broker_bool_entry("basic.nack", 1),
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

    amqp_rpc_reply_t r =
        amqp_login_with_properties(b->conn, b->vhost, 0, FRAME_MAX, b->heartbeat, &table,
                                   AMQP_SASL_METHOD_PLAIN, b->user, b->password);
    if (r.reply_type == AMQP_RESPONSE_NORMAL)
        return RT_OK;
    if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION &&
        r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
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
    rt_status st = broker_rpc_verdict(b, amqp_get_rpc_reply(b->conn), CH_PUBLISH,
                                      "opening the publish channel", NULL);
    if (st != RT_OK)
        return RT_RETRY;
    amqp_confirm_select(b->conn, CH_PUBLISH);
    st = broker_rpc_verdict(b, amqp_get_rpc_reply(b->conn), CH_PUBLISH, "confirm.select", NULL);
    if (st != RT_OK)
        return RT_RETRY;
    amqp_channel_open(b->conn, CH_CONSUME);
    st = broker_rpc_verdict(b, amqp_get_rpc_reply(b->conn), CH_CONSUME,
                            "opening the consume channel", NULL);
    if (st != RT_OK)
        return RT_RETRY;
    amqp_basic_qos(b->conn, CH_CONSUME, 0, (uint16_t)b->prefetch, 0);
    st = broker_rpc_verdict(b, amqp_get_rpc_reply(b->conn), CH_CONSUME, "basic.qos", NULL);
    if (st != RT_OK)
        return RT_RETRY;
    amqp_channel_open(b->conn, CH_QUERY);
    st = broker_rpc_verdict(b, amqp_get_rpc_reply(b->conn), CH_QUERY, "opening the query channel",
                            NULL);
    if (st != RT_OK)
        return RT_RETRY;
    b->query = QUERY_OPEN;
    return RT_OK;
}

/* ---- the node list: at once, or probed without blocking --------------- */

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
        st = (rc == AMQP_STATUS_SSL_PEER_VERIFY_FAILED ||
              rc == AMQP_STATUS_SSL_HOSTNAME_VERIFY_FAILED)
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
    b->last_frame_ms = clock_mono_ms();
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
rt_status broker_connect_progress(struct broker *b)
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

/* ---- the connection's state and the write guard ----------------------- */

int broker_connecting(const struct broker *b)
{
    return b && b->connecting;
}

const char *broker_node(const struct broker *b)
{
    return b && b->n_nodes ? b->nodes[b->node].name : "";
}

int broker_connected(const struct broker *b)
{
    return b && b->conn && !b->dead;
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

int broker_lost_to_silence(const struct broker *b)
{
    return b && b->lost_to_silence;
}

int64_t broker_silent_ms(const struct broker *b)
{
    if (!broker_connected(b))
        return 0;
    int64_t d = clock_mono_ms() - b->last_frame_ms;
    return d > 0 ? d : 0;
}

/* ---- losing the connection -------------------------------------------- */

/* Destroys the connection and reports LOST for every unconfirmed publish.
 * The state is reset before the callbacks run, so a callback that tries to
 * publish again gets RT_RETRY ("not connected"). */
void broker_teardown(struct broker *b, int polite)
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
        log_info("AMQP connection to %s:%d closed with %zu publishes unconfirmed", b->host, b->port,
                 len - head);
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
