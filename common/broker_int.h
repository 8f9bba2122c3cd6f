/*
 * broker_int.h - the broker object's state, for the broker's own files only.
 *
 * broker.h is the contract with callers, to whom struct broker is opaque.
 * The broker itself is split into files of one concern each (broker.c and
 * broker_*.c, listed in docs/ARCHITECTURE.md); they share what this header
 * holds: the channel numbers, struct broker with the state of every part,
 * the small helpers all of them use, and the functions one part calls in
 * another, each with its contract. Nothing outside common/broker*.c
 * includes it.
 *
 * The rules every part keeps:
 *   - A connection that fails is only marked (broker_mark_dead()); the
 *     outermost public call tears it down (broker_finish_call(), or
 *     broker_process() itself), never a function that may run under a
 *     callback, whose caller still walks the state.
 *   - Every callback of the owner runs between b->depth++ and b->depth--,
 *     so that the functions a callback may not call can refuse.
 *   - Writes that must not wait for the node (publishes, acks, depth
 *     questions, the polite close) first ask broker_can_write(), so that
 *     a node that stopped reading never blocks the caller's loop.
 */
#ifndef RT_BROKER_INT_H
#define RT_BROKER_INT_H

#include <stdint.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "broker.h"
#include "clock.h"
#include "buf.h"
#include "netprobe.h"
#include "rmq.h"

/* Channel numbers: the publish channel is in confirm mode, the consume
 * channel carries deliveries; RPCs that may make the broker close their
 * channel (declarations, passive declares) run on a scratch channel that
 * is opened for the occasion, so a refusal never costs the other two. */
#define CH_PUBLISH 1
#define CH_CONSUME 2
#define CH_SCRATCH 3
/* Depth questions of the daemon (broker_depth_ask), asked without waiting:
 * a missing queue closes this channel only. */
#define CH_QUERY 4

/* Room for a reason (broker_strerror). */
#define ERR_MAX 512
/* Room for "host:port" of a node. */
#define NODE_NAME_MAX (SHORTSTR + 8)
/* Room for the keys and string values of one delivery's headers. */
#define HEADER_ARENA 8192
#define SHORTSTR     256

/* Where a channel is in receiving a content (method, header, body). */
enum content_state {
    CONTENT_IDLE = 0,
    CONTENT_HEADER, /* method seen, header frame expected */
    CONTENT_BODY,   /* header seen, body frames expected */
};

/* States of a published message awaiting its confirm. */
enum pend_state {
    PEND_WAITING = 0,
    PEND_RETURNED, /* basic.return seen: its ack means RETURNED */
    PEND_DONE,
};

struct pending {
    uint64_t id_hash; /* of the message_id, to match a basic.return */
    uint8_t state;
};

struct consumer {
    char queue[SHORTSTR];
    char tag[SHORTSTR];
};

/* One node of the cluster, as configured. */
struct node {
    char *host;
    int port;
    int ssl;
    char name[NODE_NAME_MAX]; /* "host:port" */
};

/* An ack or reject that waits until the node reads again. */
enum ack_op {
    ACK_ACK = 0,
    ACK_REJECT,
    ACK_REQUEUE,
};

struct pending_ack {
    uint64_t tag;
    enum ack_op op;
};

/* A question of broker_depth_ask(). */
struct depth_question {
    char queue[SHORTSTR];
    int sent; /* on the query channel as it is now */
};

/* Where a round of declarations is. */
enum declare_phase {
    DECL_NONE = 0,
    DECL_FULL,    /* declarations sent, their answer awaited */
    DECL_PASSIVE, /* refused for lack of permission: look-ups sent (or to send) */
    DECL_DONE,    /* answered: decl_status */
};

/* The scratch channel (declarations, blocking depth questions). */
enum scratch_state {
    SCRATCH_CLOSED = 0,
    SCRATCH_OPEN,
    SCRATCH_OPENING, /* channel.open sent, open-ok awaited */
    SCRATCH_CLOSING, /* channel.close sent, close-ok awaited */
};

/* The query channel: open, or closed by the broker and being opened. */
enum query_state {
    QUERY_CLOSED = 0,
    QUERY_OPEN,
    QUERY_OPENING,
};

/* Where broker_get() is in its exchange with the broker. */
enum get_state {
    GET_IDLE = 0,
    GET_WAITING, /* basic.get sent, get-ok or get-empty expected */
    GET_CONTENT, /* get-ok seen, its header and body expected */
    GET_DONE,    /* answered: a message (get_msg, NULL if no memory) or empty */
    GET_REFUSED, /* the broker closed the consume channel instead */
};

struct broker {
    /* Options, with the strings copied. */
    char *vhost, *user, *password, *ca_file, *cert_file, *key_file;
    char *queue_type, *connection_name;
    int verify_peer, verify_hostname, heartbeat, prefetch, connect_timeout_ms;
    size_t max_message, max_unconfirmed;
    void (*on_confirm)(void *arg, uint64_t tag, enum broker_fate fate);
    void (*on_delivery)(void *arg, const struct broker_delivery *d);
    void (*on_cancel)(void *arg, const char *queue);
    void (*on_depth)(void *arg, const char *queue, int found, uint32_t ready, uint32_t consumers);
    void *cb_arg;

    /* The nodes in the order they are tried (shuffled once), and the one
     * connected to or last connected to; host, port and ssl are its. */
    struct node nodes[BROKER_MAX_NODES];
    size_t n_nodes;
    size_t node;
    int had_node; /* a connection was made: the next attempt starts after node */
    const char *host;
    int port, ssl;

    /* broker_connect_async(): one probe per node while connecting. */
    struct netprobe *probes[BROKER_MAX_NODES];
    int connecting;
    size_t probe_start; /* the node tried first in this attempt */

    amqp_connection_state_t conn; /* NULL when not connected */
    int dead;                     /* the connection failed; torn down at the next safe point */
    int depth;                    /* > 0 while a callback runs */
    int blocked;                  /* connection.blocked received */
    int64_t last_frame_ms;        /* monotonic: when the node last sent anything */
    int lost_to_silence;          /* the last connection ended on missed heartbeats */
    uint64_t gen;                 /* connections made: the top bits of delivery tags */
    char err[ERR_MAX];

    /* Publishes awaiting a confirm: pend[i] is delivery tag pend_base + i;
     * entries before pend_head are done. */
    struct pending *pend;
    size_t pend_head, pend_len, pend_cap;
    uint64_t pend_base, next_tag;
    size_t unconfirmed;

    /* The content being received on the publish channel (a return). */
    enum content_state ret_state;
    uint64_t ret_size, ret_got;
    char ret_text[SHORTSTR];

    /* The content being received on the consume channel (a delivery). */
    enum content_state del_state;
    uint64_t del_size, del_got;
    struct buf body;
    struct broker_delivery d;
    char d_queue[SHORTSTR], d_exchange[SHORTSTR], d_key[SHORTSTR];
    char d_message_id[SHORTSTR], d_user_id[SHORTSTR], d_content_type[SHORTSTR];
    struct broker_header d_headers[BROKER_MAX_HEADERS];
    char d_arena[HEADER_ARENA];

    struct consumer *consumers;
    size_t n_consumers, consumers_cap;

    /* Acks and rejects that wait for the node to read again. */
    struct pending_ack *acks;
    size_t n_acks, acks_cap;

    /* A round of declarations (broker_declare_begin) and the scratch
     * channel it uses. */
    enum declare_phase decl;
    rt_status decl_status;
    char **decl_clients;
    size_t decl_n;
    enum scratch_state scratch;

    /* Depth questions, oldest first; answered in order on CH_QUERY. */
    struct depth_question *dq;
    size_t dq_head, dq_len, dq_cap;
    enum query_state query;

    /* broker_get(): the message copied for the caller, and its state. */
    enum get_state get_state;
    int get_nomem;
    uint32_t get_remaining;
    struct broker_delivery *get_msg;
    char get_queue[SHORTSTR];
};

/* ---- helpers every part uses ------------------------------------------ */

/* Copies AMQP bytes into a C string, cut to fit; NUL bytes end it early,
 * which is what a C string reader would see anyway. */
static inline void broker_copy_bytes(char *dst, size_t dstlen, amqp_bytes_t src)
{
    size_t n = src.len < dstlen - 1 ? src.len : dstlen - 1;
    if (n)
        memcpy(dst, src.bytes, n);
    dst[n] = '\0';
}

static inline struct timeval broker_ms_to_tv(int ms)
{
    struct timeval tv;
    tv.tv_sec = ms / 1000;
    tv.tv_usec = (ms % 1000) * 1000;
    return tv;
}

/* Marks the connection as failed; it is torn down by the outermost call
 * (never from inside a callback, whose caller still walks our state). */
static inline void broker_mark_dead(struct broker *b)
{
    b->dead = 1;
}

/* Entries of an AMQP field table (client properties, queue arguments,
 * message headers); the strings are not copied. */
static inline amqp_table_entry_t broker_bool_entry(const char *key, int v)
{
    amqp_table_entry_t e;
    e.key = amqp_cstring_bytes(key);
    e.value.kind = AMQP_FIELD_KIND_BOOLEAN;
    e.value.value.boolean = v ? 1 : 0;
    return e;
}

static inline amqp_table_entry_t broker_str_entry(const char *key, const char *v)
{
    amqp_table_entry_t e;
    e.key = amqp_cstring_bytes(key);
    e.value.kind = AMQP_FIELD_KIND_UTF8;
    e.value.value.bytes = amqp_cstring_bytes(v);
    return e;
}

static inline amqp_table_entry_t broker_int_entry(const char *key, int64_t v)
{
    amqp_table_entry_t e;
    e.key = amqp_cstring_bytes(key);
    e.value.kind = AMQP_FIELD_KIND_I64;
    e.value.value.i64 = v;
    return e;
}

/* ---- the names (broker_names.c) --------------------------------------- */

/* Writes the routing key on a client's retry exchange that delays a
 * message in this tier: "forward.5s" (broker_retry_key() for a tier rather
 * than an attempt). Returns 0, or -1 when buf is too small. */
int broker_retry_tier_key(char *buf, size_t len, enum broker_dir dir, unsigned tier);

/* ---- the object (broker.c) -------------------------------------------- */

/* Writes the reason broker_strerror() returns; never pass the password. */
void broker_set_err(struct broker *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- the connection (broker_conn.c) ----------------------------------- */

/* One turn of an attempt of broker_connect_async(), for broker_process():
 * RT_OK while it runs or once connected (broker_connected() tells), else
 * the attempt's verdict with every node's reason. */
rt_status broker_connect_progress(struct broker *b);

/* Whether need more bytes can be written now without blocking (the write
 * guard): 0 when the socket's send queue already holds a good part of its
 * buffer (a node that stopped reading), 1 otherwise and when it cannot be
 * told. */
int broker_can_write(struct broker *b, size_t need);

/* Destroys the connection (politely, with connection.close, when polite
 * and the node reads) and resets every part's state: consumers, waiting
 * acks, the scratch and query channels, a round of declarations (ended
 * RT_RETRY); then depth questions are answered -1 and unconfirmed
 * publishes LOST through the callbacks, so that a callback that publishes
 * again gets RT_RETRY. */
void broker_teardown(struct broker *b, int polite);

/* The outermost public calls end here: a connection found dead is torn
 * down (unless a callback is running) and st is returned. */
rt_status broker_finish_call(struct broker *b, rt_status st);

/* ---- the event loop (broker_loop.c) ----------------------------------- */

/* Answers the broker's connection.close (the connection is over anyway:
 * a failure to send is ignored). */
void broker_send_connection_close_ok(struct broker *b);

/* Answers the broker's channel.close of channel ch, which can then be
 * opened again; a failed write marks the connection dead. */
void broker_send_channel_close_ok(struct broker *b, amqp_channel_t ch);

/* Turns the reply of an RPC on channel ch into a verdict, with the reason
 * (naming what) in b->err: RT_OK; RT_REJECT when the broker closed the
 * channel (answered with close-ok: it can be opened again); RT_RETRY with
 * the connection marked dead when the broker closed the connection, did
 * not answer or the library failed. *code_out (may be NULL) receives the
 * broker's reply code, 0 if none. */
rt_status broker_rpc_verdict(struct broker *b, amqp_rpc_reply_t r, amqp_channel_t ch,
                             const char *what, int *code_out);

/* A frame that breaks the protocol (what, on channel ch): logged as an
 * error, the connection marked dead. */
void broker_protocol_error(struct broker *b, const char *what, amqp_channel_t ch);

/* Handles one frame read from the connection as broker_process() does,
 * for the calls that wait for an answer (broker_declare(), broker_get()). */
void broker_handle_frame(struct broker *b, const amqp_frame_t *f);

/* ---- the topology (broker_topology.c) --------------------------------- */

/* Open and close the scratch channel, waiting for the broker's answer:
 * RT_OK, or RT_RETRY with the reason (the connection marked dead unless
 * only the channel was refused). */
rt_status broker_scratch_open(struct broker *b);
rt_status broker_scratch_close(struct broker *b);

/* Frees the client list of a round of declarations. */
void broker_declare_free_clients(struct broker *b);

/* The answers to a round, from the frame dispatch: exchange.declare-ok
 * on channel ch ends the round (on another channel, or with no round
 * running, it is a protocol error); channel.close of the scratch channel
 * during a round is the refusal of one declaration (answered with
 * close-ok); channel.open-ok of the scratch channel reopened for the
 * look-ups starts them; channel.close-ok on ch is expected only for the
 * scratch channel closed after a round. */
void broker_declare_on_ok(struct broker *b, amqp_channel_t ch);
void broker_declare_on_close(struct broker *b, const amqp_channel_close_t *c);
void broker_declare_on_reopen(struct broker *b);
void broker_scratch_on_close_ok(struct broker *b, amqp_channel_t ch);

/* ---- the questions (broker_query.c) ----------------------------------- */

/* Sends the depth questions not sent yet while the query channel is open
 * and the node reads. */
void broker_flush_depth(struct broker *b);

/* The frames about questions, from the frame dispatch: channel.close of
 * the query channel (the oldest question answered "no such queue", the
 * rest asked again once it is open again), its channel.open-ok on ch,
 * queue.declare-ok on ch (the oldest depth question's answer),
 * basic.get-ok and basic.get-empty on ch (broker_get()'s answer). Any of
 * them on a channel or at a time it does not belong is a protocol error. */
void broker_query_on_close(struct broker *b, const amqp_channel_close_t *c);
void broker_query_on_open(struct broker *b, amqp_channel_t ch);
void broker_depth_on_declare_ok(struct broker *b, amqp_channel_t ch,
                                const amqp_queue_declare_ok_t *ok);
void broker_get_on_ok(struct broker *b, amqp_channel_t ch, const amqp_basic_get_ok_t *g);
void broker_get_on_empty(struct broker *b, amqp_channel_t ch);

/* ---- publishing (broker_publish.c) ------------------------------------ */

/* basic.ack, basic.nack or basic.return on channel ch, from the frame
 * dispatch: the fates of publishes (a protocol error on another channel
 * or inside a returned message's content). */
void broker_publish_on_method(struct broker *b, amqp_channel_t ch, const amqp_method_t *m);

/* The content header and body frames of a returned message: the header
 * marks its publish RETURNED (its basic.ack follows), the body is counted
 * and dropped. */
void broker_return_on_header(struct broker *b, const amqp_basic_properties_t *p, uint64_t size);
void broker_return_on_body(struct broker *b, amqp_bytes_t part);

/* ---- consuming (broker_consume.c) ------------------------------------- */

/* A basic.deliver or basic.get-ok (tag is the broker's, on this
 * connection): starts a delivery from queue in b->d, whose content header
 * and body follow. */
void broker_delivery_begin(struct broker *b, const char *queue, uint64_t tag, int redelivered,
                           amqp_bytes_t exchange, amqp_bytes_t routing_key);

/* The frames of consuming, from the frame dispatch: basic.deliver on
 * channel ch (a protocol error on another channel or inside a delivery's
 * content), basic.cancel of a consumer (on_cancel is told), and the
 * content header and body frames of a delivery, the last of which hands
 * it over (to on_delivery, or to broker_get()). */
void broker_consume_on_deliver(struct broker *b, amqp_channel_t ch, const amqp_basic_deliver_t *d);
void broker_consume_on_cancel(struct broker *b, const amqp_basic_cancel_t *c);
void broker_delivery_on_header(struct broker *b, const amqp_basic_properties_t *p, uint64_t size);
void broker_delivery_on_body(struct broker *b, amqp_bytes_t part);

/* Sends the acks and rejects that wait, in order, while the node reads. */
void broker_flush_acks(struct broker *b);

#endif
