/*
 * broker.c - the broker object: its options checked and copied (the node
 * list shuffled once), its memory freed with the password scrubbed, and
 * its reason for the last failure. The connection and everything done on
 * it live in broker_*.c (broker_int.h lists them).
 */
#include "broker.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "broker_int.h"
#include "buf.h"
#include "codec.h"
#include "netprobe.h"

#define DEFAULT_CONNECT_TIMEOUT_MS 10000
#define DEFAULT_MAX_MESSAGE        ((size_t)CODEC_MAX_BODY)
#define DEFAULT_MAX_UNCONFIRMED    65536

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
            snprintf(err, errlen, "broker: port %d of node %zu is out of range", list[i].port,
                     i + 1);
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
    if (!b->vhost || !b->user || !b->password || !b->ca_file || !b->cert_file || !b->key_file ||
        !b->queue_type || !b->connection_name)
        goto fail_alloc;
    b->verify_peer = o->verify_peer;
    b->verify_hostname = o->verify_hostname;
    b->heartbeat = o->heartbeat;
    b->prefetch = o->prefetch;
    b->connect_timeout_ms =
        o->connect_timeout_ms ? o->connect_timeout_ms : DEFAULT_CONNECT_TIMEOUT_MS;
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

const char *broker_strerror(const struct broker *b)
{
    return b ? b->err : "no broker";
}
