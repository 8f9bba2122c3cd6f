/*
 * broker_topology.c - declaring the wire (broker.h has the picture): the
 * shared exchanges and, per client, its retry and dead-letter exchanges,
 * its queues, delay queues and dead-letter queues with their arguments.
 *
 * A round of declarations runs on the scratch channel without waiting
 * (broker_declare_begin(), answered through broker_process()) or waiting
 * (broker_declare()); a user that may not declare falls back to looking
 * every name up. The frames that answer a round arrive through the
 * frame dispatch (broker_handle_frame()) at broker_declare_on_*().
 */
#include "broker.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker_int.h"
#include "log.h"

rt_status broker_scratch_open(struct broker *b)
{
    amqp_channel_open(b->conn, CH_SCRATCH);
    return broker_rpc_verdict(b, amqp_get_rpc_reply(b->conn), CH_SCRATCH, "opening a channel",
                              NULL) == RT_OK
               ? RT_OK
               : RT_RETRY;
}

rt_status broker_scratch_close(struct broker *b)
{
    amqp_rpc_reply_t r = amqp_channel_close(b->conn, CH_SCRATCH, AMQP_REPLY_SUCCESS);
    return broker_rpc_verdict(b, r, CH_SCRATCH, "closing a channel", NULL) == RT_OK ? RT_OK
                                                                                    : RT_RETRY;
}

/* What the declarations of one round do. */
struct declare_ctx {
    int passive; /* only check that things exist (no permission to declare) */
};

/* Declarations are pipelined: every exchange.declare, queue.declare and
 * queue.bind goes out with nowait, without waiting for a reply, and one
 * RPC at the end (declare_sync) tells whether all of them were taken. The
 * broker handles a channel's methods in order and, on the first refusal,
 * closes the channel and ignores the rest: the reply to that RPC is then
 * the refusal, whose text names what was refused. Hundreds of clients are
 * declared in one round trip instead of one per name, so the loop is held
 * milliseconds, not seconds. */
static rt_status declare_send(struct broker *b, amqp_method_number_t id, void *method)
{
    if (b->dead)
        return RT_RETRY;
    int rc = amqp_send_method(b->conn, CH_SCRATCH, id, method);
    if (rc != AMQP_STATUS_OK) {
        broker_set_err(b, "declaring the topology: %s", amqp_error_string2(rc));
        broker_mark_dead(b);
        return RT_RETRY;
    }
    return RT_OK;
}

static rt_status declare_exchange(struct broker *b, struct declare_ctx *c, const char *name)
{
    amqp_exchange_declare_t m;
    memset(&m, 0, sizeof(m));
    m.exchange = amqp_cstring_bytes(name);
    m.type = amqp_cstring_bytes("direct");
    m.passive = c->passive ? 1 : 0;
    m.durable = 1;
    m.nowait = 1;
    m.arguments = amqp_empty_table;
    return declare_send(b, AMQP_EXCHANGE_DECLARE_METHOD, &m);
}

static rt_status declare_queue(struct broker *b, struct declare_ctx *c, const char *name,
                               amqp_table_entry_t *args, int n_args)
{
    amqp_queue_declare_t m;
    memset(&m, 0, sizeof(m));
    m.queue = amqp_cstring_bytes(name);
    m.passive = c->passive ? 1 : 0;
    m.durable = 1;
    m.nowait = 1;
    m.arguments = (amqp_table_t){c->passive ? 0 : n_args, c->passive ? NULL : args};
    return declare_send(b, AMQP_QUEUE_DECLARE_METHOD, &m);
}

static rt_status bind_queue(struct broker *b, struct declare_ctx *c, const char *queue,
                            const char *exchange, const char *key)
{
    if (c->passive)
        return RT_OK; /* a binding cannot be looked up over AMQP */
    amqp_queue_bind_t m;
    memset(&m, 0, sizeof(m));
    m.queue = amqp_cstring_bytes(queue);
    m.exchange = amqp_cstring_bytes(exchange);
    m.routing_key = amqp_cstring_bytes(key);
    m.nowait = 1;
    m.arguments = amqp_empty_table;
    return declare_send(b, AMQP_QUEUE_BIND_METHOD, &m);
}

/* The name RabbitMQ's refusal text quotes ("... for queue 'X' in vhost",
 * "no queue 'X' in vhost", "access to exchange 'X' in vhost"), or "". */
static void refused_name(const char *text, char *out, size_t len)
{
    static const char *const marks[] = {"queue '", "exchange '"};
    out[0] = '\0';
    for (size_t i = 0; i < sizeof(marks) / sizeof(marks[0]); i++) {
        const char *p = strstr(text, marks[i]);
        if (!p)
            continue;
        p += strlen(marks[i]);
        const char *e = strchr(p, '\'');
        if (e && (size_t)(e - p) < len) {
            snprintf(out, len, "%.*s", (int)(e - p), p);
            return;
        }
    }
}

/* The one question after the pipelined declarations, sent without
 * waiting: a passive declare of the first exchange, answered (declare-ok,
 * handled in declare_answer) only once everything before it was taken,
 * or by the refusal of the first one that was not. */
static rt_status declare_sync(struct broker *b)
{
    amqp_exchange_declare_t m;
    memset(&m, 0, sizeof(m));
    m.exchange = amqp_cstring_bytes(BROKER_EXCHANGE_FORWARD);
    m.type = amqp_cstring_bytes("direct");
    m.passive = 1;
    m.durable = 1;
    m.arguments = amqp_empty_table;
    return declare_send(b, AMQP_EXCHANGE_DECLARE_METHOD, &m);
}

/* The arguments every queue a client may write to carries; n entries of
 * args are used. quorum adds what quorum queues need: at-least-once
 * dead-lettering (which needs reject-publish) and, for queues that are
 * consumed, a delivery limit. */
static int queue_caps(const struct broker *b, amqp_table_entry_t *args, int n, int consumed,
                      int dead_letters)
{
    int quorum = strcmp(b->queue_type, "quorum") == 0;
    args[n++] = broker_str_entry("x-queue-type", b->queue_type);
    args[n++] = broker_int_entry("x-max-length", BROKER_QUEUE_MAX_LENGTH);
    args[n++] = broker_int_entry("x-max-length-bytes", BROKER_QUEUE_MAX_BYTES);
    args[n++] = broker_str_entry("x-overflow", "reject-publish");
    if (quorum && consumed)
        args[n++] = broker_int_entry("x-delivery-limit", BROKER_DELIVERY_LIMIT);
    if (quorum && dead_letters)
        args[n++] = broker_str_entry("x-dead-letter-strategy", "at-least-once");
    return n;
}

/* One client's per-direction queues: the main queue, its delay queues and
 * its dead-letter queue. */
static rt_status declare_client_dir(struct broker *b, struct declare_ctx *c, const char *client,
                                    enum broker_dir dir, const char *retry_x, const char *dead_x)
{
    char queue[BROKER_NAME_MAX], key[BROKER_NAME_MAX];
    const char *dn = broker_dir_name(dir);
    amqp_table_entry_t args[12];
    rt_status st;

    if (broker_dead_queue_name(queue, sizeof(queue), dir, client) != 0)
        return RT_REJECT;
    int n = queue_caps(b, args, 0, 0, 0);
    if ((st = declare_queue(b, c, queue, args, n)) != RT_OK ||
        (st = bind_queue(b, c, queue, dead_x, dn)) != RT_OK)
        return st;

    if (broker_queue_name(queue, sizeof(queue), dir, client) != 0)
        return RT_REJECT;
    n = queue_caps(b, args, 0, 1, 1);
    args[n++] = broker_bool_entry("x-single-active-consumer", 1);
    args[n++] = broker_str_entry("x-dead-letter-exchange", dead_x);
    args[n++] = broker_str_entry("x-dead-letter-routing-key", dn);
    if ((st = declare_queue(b, c, queue, args, n)) != RT_OK ||
        (st = bind_queue(b, c, queue, broker_exchange(dir), client)) != RT_OK ||
        (st = bind_queue(b, c, queue, retry_x, dn)) != RT_OK)
        return st;

    /* A delay queue holds a message until its TTL, then dead-letters it
     * back through the client's retry exchange to the main queue. */
    for (unsigned tier = 0; tier < BROKER_RETRY_TIERS; tier++) {
        if (broker_retry_queue_name(queue, sizeof(queue), dir, client, tier) ||
            broker_retry_tier_key(key, sizeof(key), dir, tier))
            return RT_REJECT;
        n = queue_caps(b, args, 0, 0, 1);
        args[n++] = broker_int_entry("x-message-ttl", broker_retry_delay_ms(tier));
        args[n++] = broker_str_entry("x-dead-letter-exchange", retry_x);
        args[n++] = broker_str_entry("x-dead-letter-routing-key", dn);
        if ((st = declare_queue(b, c, queue, args, n)) != RT_OK ||
            (st = bind_queue(b, c, queue, retry_x, key)) != RT_OK)
            return st;
    }
    return RT_OK;
}

static rt_status declare_client(struct broker *b, struct declare_ctx *c, const char *client)
{
    char retry_x[BROKER_NAME_MAX], dead_x[BROKER_NAME_MAX];
    rt_status st;
    if (broker_retry_exchange(retry_x, sizeof(retry_x), client) ||
        broker_dead_exchange(dead_x, sizeof(dead_x), client))
        return RT_REJECT;
    if ((st = declare_exchange(b, c, retry_x)) != RT_OK ||
        (st = declare_exchange(b, c, dead_x)) != RT_OK)
        return st;
    for (int dir = BROKER_FORWARD; dir <= BROKER_REVERSE; dir++)
        if ((st = declare_client_dir(b, c, client, (enum broker_dir)dir, retry_x, dead_x)) != RT_OK)
            return st;
    return RT_OK;
}

/* Sends the declarations (or, passive, the look-ups) of the whole
 * topology, pipelined, and the question whose answer ends the round. */
static rt_status declare_all(struct broker *b, struct declare_ctx *c)
{
    rt_status st = declare_exchange(b, c, BROKER_EXCHANGE_FORWARD);
    if (st == RT_OK)
        st = declare_exchange(b, c, BROKER_EXCHANGE_REVERSE);
    for (size_t i = 0; i < b->decl_n && st == RT_OK; i++)
        st = declare_client(b, c, b->decl_clients[i]);
    if (st == RT_OK)
        st = declare_sync(b);
    return st;
}

void broker_declare_free_clients(struct broker *b)
{
    for (size_t i = 0; i < b->decl_n; i++)
        free(b->decl_clients[i]);
    free(b->decl_clients);
    b->decl_clients = NULL;
    b->decl_n = 0;
}

/* Ends a round: its verdict, the client list forgotten. */
static void declare_end(struct broker *b, rt_status st)
{
    b->decl = DECL_DONE;
    b->decl_status = st;
    broker_declare_free_clients(b);
    if (st != RT_OK)
        log_warning("declaring the AMQP topology failed: %s", b->err);
}

/* A round of declarations sent: its answer (declare-ok) came. */
static void declare_ok(struct broker *b)
{
    /* The scratch channel is closed, without waiting for close-ok. */
    amqp_channel_close_t m;
    memset(&m, 0, sizeof(m));
    m.reply_code = AMQP_REPLY_SUCCESS;
    m.reply_text = amqp_cstring_bytes("done");
    if (amqp_send_method(b->conn, CH_SCRATCH, AMQP_CHANNEL_CLOSE_METHOD, &m) != AMQP_STATUS_OK)
        broker_mark_dead(b);
    b->scratch = SCRATCH_CLOSING;
    declare_end(b, RT_OK);
}

/* The broker refused one of the round's declarations (and closed the
 * scratch channel, which was answered with close-ok). */
static void declare_refusal(struct broker *b, int code, const char *text)
{
    char name[SHORTSTR], why[ERR_MAX];
    refused_name(text, name, sizeof(name));
    b->scratch = SCRATCH_CLOSED;
    if (b->decl == DECL_FULL && code == AMQP_ACCESS_REFUSED) {
        /* A least-privilege user (broker-setup) may not declare: the
         * server side, whose user may, declares every client's topology.
         * The same names are looked up instead (a passive declare needs no
         * permission), on the scratch channel opened again. */
        log_info("user \"%s\" may not declare \"%s\" (%u %s); checking that the topology exists",
                 b->user, name, code, text);
        amqp_channel_open_t m;
        memset(&m, 0, sizeof(m));
        if (amqp_send_method(b->conn, CH_SCRATCH, AMQP_CHANNEL_OPEN_METHOD, &m) != AMQP_STATUS_OK) {
            broker_mark_dead(b);
            return;
        }
        b->scratch = SCRATCH_OPENING;
        b->decl = DECL_PASSIVE;
        return;
    }
    if (b->decl == DECL_PASSIVE && code == AMQP_NOT_FOUND) {
        broker_set_err(b,
                       "\"%s\" does not exist and user \"%s\" may not declare it: start the server "
                       "side first (it declares every client's queues) or give the user the "
                       "permissions of remotetaskctl --command broker-setup",
                       name, b->user);
        declare_end(b, RT_RETRY);
        return;
    }
    if (code == AMQP_PRECONDITION_FAILED) {
        /* The arguments of a queue never change in place (a classic queue
         * meeting queue_type = "quorum", or an older remotetask's
         * topology): say what to do instead of reconnecting for ever. */
        const char *p = strstr(text, "inequivalent arg");
        snprintf(why, sizeof(why), "%.120s", p ? p : text);
        broker_set_err(
            b,
            "queue \"%s\" exists with other arguments than amqp.queue_type \"%s\" asks for "
            "(%s); a queue cannot change in place: let it drain (status shows 0 ready), "
            "rabbitmqctl delete_queue %s, restart remotetaskd; or set queue_type back",
            name, b->queue_type, why, name);
        declare_end(b, RT_REJECT);
        return;
    }
    broker_set_err(b, "declaring the topology: refused by the broker: %u %s", code, text);
    declare_end(b, RT_REJECT);
}

/* The scratch channel was opened again for the passive round. */
void broker_declare_on_reopen(struct broker *b)
{
    struct declare_ctx c = {.passive = 1};
    b->scratch = SCRATCH_OPEN;
    if (declare_all(b, &c) != RT_OK)
        declare_end(b, RT_RETRY);
}

rt_status broker_declare_begin(struct broker *b, const char *const *clients, size_t n_clients)
{
    struct declare_ctx c = {0};
    if (!broker_connected(b)) {
        if (b)
            broker_set_err(b, "declaring the topology: not connected");
        return RT_RETRY;
    }
    if (b->depth || b->decl == DECL_FULL || b->decl == DECL_PASSIVE) {
        broker_set_err(b, "broker_declare_begin called from a callback or during a round");
        return RT_REJECT;
    }
    for (size_t i = 0; i < n_clients; i++) {
        if (!broker_client_valid(clients[i])) {
            broker_set_err(
                b, "client id \"%.80s\" is not usable in queue names (1-%d of A-Z a-z 0-9 _ -)",
                clients[i] ? clients[i] : "", BROKER_CLIENT_MAX);
            return RT_REJECT;
        }
    }
    if (b->scratch != SCRATCH_CLOSED) {
        broker_set_err(b, "declaring the topology: the scratch channel is busy");
        return RT_RETRY;
    }
    b->decl_clients = calloc(n_clients ? n_clients : 1, sizeof(*b->decl_clients));
    if (!b->decl_clients) {
        broker_set_err(b, "declaring the topology: out of memory");
        return RT_RETRY;
    }
    for (size_t i = 0; i < n_clients; i++) {
        if (!(b->decl_clients[b->decl_n] = strdup(clients[i]))) {
            broker_declare_free_clients(b);
            broker_set_err(b, "declaring the topology: out of memory");
            return RT_RETRY;
        }
        b->decl_n++;
    }
    if (broker_scratch_open(b) != RT_OK) {
        broker_declare_free_clients(b);
        return broker_finish_call(b, RT_RETRY);
    }
    b->scratch = SCRATCH_OPEN;
    b->decl = DECL_FULL;
    if (declare_all(b, &c) != RT_OK) {
        broker_declare_free_clients(b);
        b->decl = DECL_NONE;
        return broker_finish_call(b, RT_RETRY);
    }
    return RT_OK;
}

int broker_declare_done(const struct broker *b, rt_status *st)
{
    if (!b || b->decl != DECL_DONE)
        return 0;
    if (st)
        *st = b->decl_status;
    return 1;
}

rt_status broker_declare(struct broker *b, const char *const *clients, size_t n_clients)
{
    rt_status st = broker_declare_begin(b, clients, n_clients);
    if (st != RT_OK)
        return st;
    /* Creating thousands of queues takes the broker a while: the answer is
     * waited for far longer than one RPC, while the frames are handled as
     * broker_process() would. */
    int64_t deadline = clock_mono_ms() + (int64_t)b->connect_timeout_ms * 30;
    while ((b->decl != DECL_DONE || b->scratch == SCRATCH_CLOSING) && !b->dead) {
        int64_t left = deadline - clock_mono_ms();
        if (left <= 0) {
            broker_set_err(b, "declaring the topology: no answer within %d s",
                           b->connect_timeout_ms * 30 / 1000);
            broker_mark_dead(b);
            break;
        }
        amqp_frame_t f;
        struct timeval tv = broker_ms_to_tv(left > 1000 ? 1000 : (int)left);
        int rc = amqp_simple_wait_frame_noblock(b->conn, &f, &tv);
        if (rc == AMQP_STATUS_TIMEOUT)
            continue;
        if (rc != AMQP_STATUS_OK) {
            broker_set_err(b, "AMQP connection to %s:%d lost: %s", b->host, b->port,
                           amqp_error_string2(rc));
            broker_mark_dead(b);
            break;
        }
        b->last_frame_ms = clock_mono_ms();
        broker_handle_frame(b, &f);
    }
    if (b->dead) {
        broker_declare_free_clients(b);
        b->decl = DECL_NONE;
        return broker_finish_call(b, RT_RETRY);
    }
    b->decl = DECL_NONE;
    return b->decl_status;
}

/* ---- answers, from the frame dispatch --------------------------------- */

/* exchange.declare-ok: only the question that ends a round of
 * declarations is answered so. */
void broker_declare_on_ok(struct broker *b, amqp_channel_t ch)
{
    if (ch != CH_SCRATCH || (b->decl != DECL_FULL && b->decl != DECL_PASSIVE)) {
        broker_protocol_error(b, "exchange.declare-ok", ch);
        return;
    }
    declare_ok(b);
}

/* channel.close on the scratch channel during a round: the broker refused
 * one of its declarations. */
void broker_declare_on_close(struct broker *b, const amqp_channel_close_t *c)
{
    char text[SHORTSTR];
    broker_copy_bytes(text, sizeof(text), c->reply_text);
    broker_send_channel_close_ok(b, CH_SCRATCH);
    declare_refusal(b, c->reply_code, text);
}

/* channel.close-ok: only the scratch channel is closed without waiting
 * for it (after a round). */
void broker_scratch_on_close_ok(struct broker *b, amqp_channel_t ch)
{
    if (ch == CH_SCRATCH && b->scratch == SCRATCH_CLOSING) {
        b->scratch = SCRATCH_CLOSED;
        return;
    }
    broker_protocol_error(b, "channel.close-ok", ch);
}
