/*
 * broker.h - one AMQP connection to RabbitMQ (librabbitmq 0.11 and later).
 *
 * A broker object owns one connection with two channels: one in confirm
 * mode for publishing, one for consuming with manual acks. It never blocks
 * longer than a timeout and never exits or prints: it logs through log.h
 * and reports what the caller must do (OK, RETRY, REJECT) with a reason in
 * broker_strerror(), which never contains the password.
 *
 * The caller owns the event loop: it polls broker_fd() for input, calls
 * broker_process() when the fd is readable, when broker_wants_read_now()
 * says data is already buffered, and at least every broker_timeout_ms()
 * (heartbeats). Events come back through callbacks called from inside
 * broker_process() (and, for a lost connection, from broker_publish(),
 * broker_disconnect() and broker_free()):
 *
 *   on_confirm   the fate of a published message, by its delivery tag;
 *   on_delivery  a message from a consumed queue;
 *   on_cancel    the broker cancelled a consumer (its queue was deleted).
 *
 * A callback may call broker_publish(), broker_ack(), broker_reject() and
 * the read-only functions; it must not call broker_process(),
 * broker_connect(), broker_disconnect(), broker_declare(),
 * broker_consume(), broker_queue_depth(), broker_get() or broker_free().
 *
 * Connecting: broker_connect() connects at once, blocking up to the
 * connect timeout per step (for command-line tools and tests). The daemon
 * uses broker_connect_async(): it probes every node without blocking
 * (netprobe.h: TCP, TLS, the AMQP header) inside the caller's poll loop
 * (broker_pollfds(), broker_process()) and connects to the first node that
 * answers, so that a frozen or blackholed node never stops the loop.
 *
 * Writes never block either: before anything is written the kernel's send
 * queue is checked, and a node that stopped reading makes publishes return
 * RT_RETRY while acks wait in the broker object; the heartbeat timeout
 * (two heartbeats without a frame) then declares the connection lost.
 *
 * The wire (docs/ARCHITECTURE.md, "The wire": topology v2), per client C
 * (routing key C on the shared exchanges):
 *   remotetask.forward          exchange, shared: clients publish tasks
 *   remotetask.reverse          exchange, shared: the server publishes states
 *   remotetask.forward.C        queue (classic or quorum, single active
 *   remotetask.reverse.C        consumer), bound to the shared exchange with
 *                               key C and to remotetask.retry.C with key
 *                               "forward" / "reverse"; what the broker itself
 *                               dead-letters goes to remotetask.dead.C
 *   remotetask.retry.C          exchange of C's retries: key "<dir>.<tier>"
 *                               into the delay queue, whose TTL sends it back
 *                               through the same exchange with key "<dir>"
 *   remotetask.retry.C.<dir>.<tier>  delay queues (classic, or quorum with
 *                               at-least-once dead-lettering)
 *   remotetask.dead.C           exchange of C's dead letters, key "<dir>"
 *   remotetask.dead.C.forward   dead letters of task messages (the server's)
 *   remotetask.dead.C.reverse   dead letters of states (the client's)
 * Every queue a client can write to is capped (x-max-length, overflow
 * reject-publish: a full queue refuses, it never drops). Per-client
 * exchanges let an operator give each client's AMQP user write access to
 * its own retry and dead-letter exchanges only (broker-setup), so that no
 * client can aim a retry or a dead letter at another.
 */
#ifndef RT_BROKER_H
#define RT_BROKER_H

#include <poll.h>
#include <stddef.h>
#include <stdint.h>

#include "rt.h"

#define BROKER_EXCHANGE_FORWARD "remotetask.forward"
#define BROKER_EXCHANGE_REVERSE "remotetask.reverse"
/* Per-client exchanges and queues are named "<prefix>.<client>...". */
#define BROKER_RETRY_PREFIX "remotetask.retry"
#define BROKER_DEAD_PREFIX "remotetask.dead"
#define BROKER_CONTENT_TYPE "application/x-msgpack"

/* A client id becomes part of queue names and routing keys: 1 to
 * BROKER_CLIENT_MAX characters from [A-Za-z0-9_-]. */
#define BROKER_CLIENT_MAX 64
/* Enough for any name or key the helpers below produce. */
#define BROKER_NAME_MAX 256
/* At most this many queues are consumed on one connection. */
#define BROKER_MAX_CONSUMERS 1024
/* At most this many headers are sent with, or kept from, one message. */
#define BROKER_MAX_HEADERS 16
/* Number of retry delay tiers (1 s, 5 s, 30 s, 2 min, 10 min). */
#define BROKER_RETRY_TIERS 5
/* Every queue a client can write to holds at most this many messages and
 * bytes; past that the broker refuses publishes (nacks them), so that one
 * client cannot fill the broker's disk. */
#define BROKER_QUEUE_MAX_LENGTH 1000000
#define BROKER_QUEUE_MAX_BYTES  (1024LL * 1024 * 1024)
/* Quorum queues: deliveries of one message before the broker dead-letters
 * it (a redelivery after a lost connection counts). */
#define BROKER_DELIVERY_LIMIT 50

enum broker_dir {
    BROKER_FORWARD = 0, /* client -> server: tasks */
    BROKER_REVERSE = 1, /* server -> client: task state */
};

enum broker_fate {
    BROKER_ACKED = 0,    /* the broker took responsibility for it */
    BROKER_NACKED = 1,   /* the broker refused it (internal error): publish again */
    BROKER_RETURNED = 2, /* unroutable (no queue bound for the key): not sent */
    BROKER_LOST = 3,     /* the connection died first: fate unknown, publish again */
};

enum broker_header_type {
    BROKER_HEADER_STR = 0,
    BROKER_HEADER_INT = 1,
};

/* One message header. In a delivery the strings point into the broker
 * object and are valid during the on_delivery call only. */
struct broker_header {
    const char *key;
    enum broker_header_type type;
    const char *str; /* BROKER_HEADER_STR */
    int64_t num;     /* BROKER_HEADER_INT (booleans arrive as 0/1) */
};

/* Per-publish properties; everything else is fixed by the wire: persistent,
 * mandatory, content type application/x-msgpack. */
struct broker_props {
    const char *message_id; /* required, unique per message */
    int64_t timestamp;      /* seconds since the epoch; 0 = now */
    /* NULL = the login, which is what RabbitMQ accepts; anything else makes
     * the broker close the channel (and this module the connection). */
    const char *user_id;
    const struct broker_header *headers;
    size_t n_headers; /* at most BROKER_MAX_HEADERS */
};

/* A message received from a consumed queue. Every pointer is into the
 * broker object and valid during the on_delivery call only. */
struct broker_delivery {
    uint64_t delivery_tag; /* for broker_ack / broker_reject; opaque: it also names the
                              connection, so an ack after a reconnect is dropped */
    int redelivered;
    const char *queue; /* the queue it was consumed from */
    const char *exchange;
    const char *routing_key;
    const char *message_id;   /* "" when absent */
    const char *user_id;      /* "" when absent */
    const char *content_type; /* "" when absent */
    int64_t timestamp;        /* 0 when absent */
    /* The body, or NULL with too_big set when it was longer than
     * max_message: the caller decides (normally: reject to dead). */
    const void *body;
    size_t len; /* the body's length as announced, also when too_big */
    int too_big;
    const struct broker_header *headers; /* string and integer headers only */
    size_t n_headers;
};

/* One node of a broker cluster (amqp.uri as a list). */
struct broker_node {
    const char *host;
    int port;
    int ssl; /* amqps:// */
};

/* At most this many nodes in one broker object. */
#define BROKER_MAX_NODES 16

struct broker_opts {
    /* The node to connect to; ignored when n_nodes > 0. */
    const char *host;
    int port;
    const char *vhost;
    const char *user;
    const char *password; /* never logged, never in an error string */
    int ssl;
    /* The nodes of a cluster, 1 to BROKER_MAX_NODES, or n_nodes = 0 for
     * the one of host, port and ssl above. The broker tries them in an
     * order shuffled once at broker_new(), starting after the one it last
     * lost. TLS settings apply to every node that uses TLS. */
    const struct broker_node *nodes;
    size_t n_nodes;
    const char *ca_file;   /* NULL or "" = the system's CA bundle */
    const char *cert_file; /* NULL or "" = no client certificate */
    const char *key_file;
    int verify_peer;     /* on by default: callers set both to 1 */
    int verify_hostname;
    int heartbeat;            /* seconds, 0 = off */
    int prefetch;             /* basic.qos on the consume channel, 0 = unlimited */
    const char *queue_type;   /* "classic" (NULL) or "quorum" */
    int connect_timeout_ms;   /* TCP connect, TLS and AMQP handshake, each RPC; 0 = 10000 */
    const char *connection_name; /* shown by the management UI; NULL = "remotetask" */
    size_t max_message;       /* cap on a received body; 0 = CODEC_MAX_BODY */
    size_t max_unconfirmed;   /* cap on publishes awaiting a confirm; 0 = 65536 */

    void (*on_confirm)(void *arg, uint64_t tag, enum broker_fate fate);
    void (*on_delivery)(void *arg, const struct broker_delivery *d);
    void (*on_cancel)(void *arg, const char *queue); /* may be NULL */
    /* The answer to broker_depth_ask(): found 1 with the figures, 0 when
     * the queue does not exist, -1 when the connection went before the
     * answer came. May be NULL when broker_depth_ask() is never used. */
    void (*on_depth)(void *arg, const char *queue, int found, uint32_t ready,
                     uint32_t consumers);
    void *cb_arg;
};

struct broker;

/* Copies the options (the strings too) into a new, unconnected broker.
 * Returns NULL with a reason in err when an option is invalid (missing
 * host, user or callbacks, a bad queue_type) or memory ran out. Free with
 * broker_free(). */
struct broker *broker_new(const struct broker_opts *opts, char *err, size_t errlen);

/* Closes the connection politely if it is up (LOST is reported for every
 * unconfirmed publish), then frees everything. Accepts NULL. */
void broker_free(struct broker *b);

/* Opens the connection: TCP (or TLS with peer and hostname verification as
 * configured), login with the capabilities RabbitMQ needs to send
 * connection.blocked, consumer cancel notifications and confirms, the
 * publish channel in confirm mode, the consume channel with basic.qos.
 * Every step is bounded by connect_timeout_ms. Consumers are not restored:
 * call broker_declare() and broker_consume() again.
 * RT_OK: connected. RT_RETRY: refused, unreachable, timed out, or the
 * broker closed the connection (try again after a backoff). RT_REJECT:
 * login refused or the TLS peer failed verification (a configuration
 * problem). A call while connected disconnects first. */
rt_status broker_connect(struct broker *b);

/* Starts a connection attempt that never blocks: a probe (netprobe.h) to
 * every node at once. The caller then polls broker_pollfds() and calls
 * broker_process() until broker_connecting() is 0: the first node that
 * answers the AMQP header gets the connection (broker_connect()'s steps,
 * which a live node answers in milliseconds), and broker_process()
 * returns RT_OK with broker_connected() 1; when every probe failed it
 * returns RT_RETRY or RT_REJECT (RT_REJECT only when every node failed for
 * a reason that needs a person: a certificate, a refused login) with every
 * node's reason in broker_strerror(). Nodes are tried in an order shuffled
 * at broker_new(), starting after the node this broker last lost. Does
 * nothing while an attempt runs or the connection is up. */
void broker_connect_async(struct broker *b);

/* 1 while an attempt of broker_connect_async() runs. */
int broker_connecting(const struct broker *b);

/* "host:port" of the node the connection is to, or of the node it was to
 * last (before any connection: the first node of the order). Never NULL. */
const char *broker_node(const struct broker *b);

/* Closes the connection (politely when it is still up) and reports LOST
 * for every unconfirmed publish. Safe to call when not connected. */
void broker_disconnect(struct broker *b);

/* 1 when the connection is up. */
int broker_connected(const struct broker *b);

/* The reason for the last failure, never NULL, never the password. */
const char *broker_strerror(const struct broker *b);

/* Declares the whole topology for these clients (see the wire above),
 * idempotently, waiting for the broker's answer (for tools and tests;
 * creating thousands of queues takes the broker seconds, so the wait is up
 * to 30 connect timeouts), with queue_type for every queue: quorum queues get a
 * delivery limit and at-least-once dead-lettering.
 * A user without the permission to declare (a client's least-privilege
 * user, broker-setup) gets ACCESS_REFUSED: then each exchange and queue is
 * only checked to exist (a passive declare needs no permission), which is
 * RT_OK when the server side (or the operator) declared them, RT_RETRY
 * naming the first one missing otherwise.
 * RT_REJECT when a client id is invalid or a queue exists with other
 * arguments (PRECONDITION_FAILED: the reason names the queue and how to
 * migrate); RT_RETRY when the connection failed (it is then closed, see
 * broker_process). */
rt_status broker_declare(struct broker *b, const char *const *clients, size_t n_clients);

/* The same without waiting, for the daemon's loop: sends every
 * declaration at once (pipelined, nowait) and one question whose answer,
 * read by broker_process(), ends the round; a refusal for lack of
 * permission starts the look-ups by itself. RT_OK: the round is under way
 * (broker_declare_done() tells when it ended); RT_RETRY, RT_REJECT as
 * broker_declare() before anything was sent. One round at a time. */
rt_status broker_declare_begin(struct broker *b, const char *const *clients, size_t n_clients);

/* 1 once the round of broker_declare_begin() ended, with its verdict in
 * *st (as broker_declare()'s; a connection lost meanwhile is RT_RETRY),
 * else 0. */
int broker_declare_done(const struct broker *b, rt_status *st);

/* Publishes one message on the confirm channel and returns at once with its
 * delivery tag in *tag_out; the fate arrives later through on_confirm.
 * RT_RETRY without a tag when the broker has blocked the connection
 * (resource alarm; try again once broker_blocked() is 0), when
 * max_unconfirmed publishes await a confirm, or when the connection is down
 * or failed while writing (then LOST is reported for the unconfirmed
 * ones). RT_REJECT for invalid arguments (no message_id, too many
 * headers). */
rt_status broker_publish(struct broker *b, const char *exchange, const char *routing_key,
                         const struct broker_props *props, const void *body, size_t len,
                         uint64_t *tag_out);

/* Publishes awaiting a confirm. */
size_t broker_unconfirmed(const struct broker *b);

/* 1 while the broker has blocked publishing on this connection. */
int broker_blocked(const struct broker *b);

/* Milliseconds since the node last sent a frame (heartbeats included), 0
 * when not connected: longer than the heartbeat means the node has gone
 * silent, which librabbitmq turns into a lost connection at twice the
 * heartbeat. */
int64_t broker_silent_ms(const struct broker *b);

/* 1 when the last connection ended because the node went silent (missed
 * heartbeats), 0 when it ended otherwise (closed, refused, a consumer
 * cancelled) or is up. */
int broker_lost_to_silence(const struct broker *b);

/* Starts consuming a queue with manual acks on the consume channel;
 * deliveries arrive through on_delivery, at most prefetch unacknowledged
 * per queue. RT_REJECT when the queue does not exist or may not be
 * consumed (the broker closes the consume channel, so the connection is
 * closed too: reconnect), RT_RETRY on connection failure. At most
 * BROKER_MAX_CONSUMERS queues per connection. */
rt_status broker_consume(struct broker *b, const char *queue);

/* Acknowledges a delivery: the broker forgets the message. RT_RETRY when
 * the connection is down (the message will be redelivered). When the
 * broker is not reading (its socket's send queue is full) the ack waits in
 * the broker object and is sent by broker_process() once it can be; it is
 * then RT_OK, and lost with the connection like any unsent ack. */
rt_status broker_ack(struct broker *b, uint64_t delivery_tag);

/* Rejects a delivery: requeue = 1 puts it back in its queue, 0 drops it
 * (or dead-letters it, if its queue says so). RT_RETRY as broker_ack. */
rt_status broker_reject(struct broker *b, uint64_t delivery_tag, int requeue);

/* The socket to poll for input, or -1 when not connected. */
int broker_fd(const struct broker *b);

/* Fills fds[0..room) with what to poll: the connection's socket (POLLIN,
 * and POLLOUT while acks wait for room) or, during broker_connect_async(),
 * one entry per running probe. Returns how many entries it needs, which
 * may be more than room (call again with more room). */
size_t broker_pollfds(const struct broker *b, struct pollfd *fds, size_t room);

/* 1 when librabbitmq already holds received data or frames: the caller must
 * call broker_process() without polling first. */
int broker_wants_read_now(const struct broker *b);

/* The longest the caller may wait before calling broker_process() again,
 * in milliseconds (half the heartbeat, or the nearest probe deadline while
 * connecting), or -1 when there is no deadline. */
int broker_timeout_ms(const struct broker *b);

/* Reads and dispatches every frame available now, without blocking: confirms,
 * returns, deliveries, blocked/unblocked, consumer cancellations, depth
 * answers; sends waiting acks and a heartbeat when one is due. RT_OK: still
 * connected. RT_RETRY: the connection is lost or was closed by the broker
 * (the reason is in broker_strerror()); it has been torn down and LOST
 * reported for every unconfirmed publish: reconnect after a backoff.
 * During broker_connect_async() it advances the probes instead (see
 * there). */
rt_status broker_process(struct broker *b);

/* Asks the broker how many messages are ready in a queue and how many
 * consumers it has (a passive declare on a throwaway channel), waiting for
 * the answer up to the connect timeout: for tools, not for the daemon's
 * loop (broker_depth_ask()).
 * RT_REJECT when the queue does not exist, RT_RETRY on connection failure. */
rt_status broker_queue_depth(struct broker *b, const char *queue, uint32_t *ready,
                             uint32_t *consumers);

/* Asks the same without waiting: a passive declare on a channel of its
 * own, answered later through on_depth, in the order asked (a missing
 * queue makes the broker close that channel, which is opened again for
 * the questions after it). RT_OK: asked. RT_RETRY: not connected, or the
 * node is not reading (ask again later). RT_REJECT: no on_depth callback
 * or an invalid name. */
rt_status broker_depth_ask(struct broker *b, const char *queue);

/* Questions of broker_depth_ask() not answered yet. */
size_t broker_depth_pending(const struct broker *b);

/* Fetches one message from a queue with basic.get on the consume channel,
 * without auto-ack, waiting at most the connect timeout for the answer.
 * Frames for the other channels that arrive meanwhile (confirms) are
 * handled as broker_process() would, callbacks included.
 * RT_OK: *out is the message, a copy the caller owns and frees with
 * broker_delivery_free() (its queue is the queue asked for; its tag is for
 * broker_ack()/broker_reject(), as for a consumed delivery), or NULL when
 * the queue is empty. *remaining (may be NULL) receives how many messages
 * the broker says are left after this one (0 when empty).
 * RT_REJECT: the queue does not exist or may not be read (the broker closed
 * the consume channel, so the connection was closed too: reconnect), or a
 * call from a callback. RT_RETRY: not connected, no answer in time, or the
 * connection failed; it has been torn down. *out is NULL on failure. */
rt_status broker_get(struct broker *b, const char *queue, struct broker_delivery **out,
                     uint32_t *remaining);

/* Copies a delivery (its strings, headers and body) into one allocation
 * the caller owns, valid after the on_delivery call returns. Returns NULL
 * when memory ran out. Free with broker_delivery_free(). */
struct broker_delivery *broker_delivery_copy(const struct broker_delivery *d);

/* Frees a copy made by broker_delivery_copy() or broker_get(). Accepts
 * NULL. Never pass the delivery handed to on_delivery. */
void broker_delivery_free(struct broker_delivery *d);

/* Writes the name of a client's queue for a direction into buf:
 * "remotetask.forward.C" or "remotetask.reverse.C". Returns 0, or -1 when
 * the client id is invalid or buf is too small. */
int broker_queue_name(char *buf, size_t len, enum broker_dir dir, const char *client);

/* The exchange of a direction: BROKER_EXCHANGE_FORWARD or _REVERSE. */
const char *broker_exchange(enum broker_dir dir);

/* "forward" or "reverse": the routing key of a direction on a client's
 * retry and dead-letter exchanges. */
const char *broker_dir_name(enum broker_dir dir);

/* The retry tier for a delivery attempt: attempt 1 (the first retry) waits
 * in tier 0, ... attempts past the last tier stay in the last. */
unsigned broker_retry_tier(unsigned attempt);

/* The delay of a tier in milliseconds; tiers past the last are the last. */
unsigned broker_retry_delay_ms(unsigned tier);

/* Writes the name of a client's retry exchange: "remotetask.retry.C".
 * Returns 0, or -1 as broker_queue_name. */
int broker_retry_exchange(char *buf, size_t len, const char *client);

/* Writes the routing key on the client's retry exchange that delays a
 * message for this attempt: "forward.5s". (The key "forward" or
 * "reverse", broker_dir_name(), sends a message straight back to the
 * client's queue: what the delay queues do, and what replays use.)
 * Returns 0, or -1 when buf is too small. */
int broker_retry_key(char *buf, size_t len, enum broker_dir dir, unsigned attempt);

/* Writes the name of a delay queue: "remotetask.retry.C.forward.5s".
 * Returns 0, or -1 as broker_queue_name. */
int broker_retry_queue_name(char *buf, size_t len, enum broker_dir dir, const char *client,
                            unsigned tier);

/* Writes the name of a client's dead-letter exchange: "remotetask.dead.C"
 * (routing key: broker_dir_name()). Returns 0, or -1 as broker_queue_name. */
int broker_dead_exchange(char *buf, size_t len, const char *client);

/* Writes the name of a client's dead-letter queue for a direction:
 * "remotetask.dead.C.forward" (task messages the server could not apply,
 * read by the server's dlq commands) or "remotetask.dead.C.reverse"
 * (states the client could not apply, read by the client's). Returns 0,
 * or -1 as broker_queue_name. */
int broker_dead_queue_name(char *buf, size_t len, enum broker_dir dir, const char *client);

/* 1 when a client id is usable in names (see BROKER_CLIENT_MAX), else 0. */
int broker_client_valid(const char *client);

/* Finds an integer header of a delivery: returns 0 and sets *out, or -1
 * when it is absent or not an integer. */
int broker_delivery_header_int(const struct broker_delivery *d, const char *key, int64_t *out);

/* Finds a string header of a delivery: returns it (valid as long as the
 * delivery), or NULL when it is absent or not a string. */
const char *broker_delivery_header_str(const struct broker_delivery *d, const char *key);

#endif
