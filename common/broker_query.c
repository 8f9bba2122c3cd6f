/*
 * broker_query.c - the questions about queues: how deep a queue is
 * (waiting, on the scratch channel, for tools; or without waiting, on the
 * query channel, for the daemon's loop) and one message fetched with
 * basic.get (for the dead-letter commands).
 *
 * A missing queue makes the broker close the channel it was asked on, so
 * no question runs on the publish channel, and only basic.get, which
 * needs the consume channel, can cost the connection.
 */
#include "broker.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker_int.h"
#include "log.h"

/* ---- depth questions -------------------------------------------------- */

rt_status broker_queue_depth(struct broker *b, const char *queue, uint32_t *ready,
                             uint32_t *consumers)
{
    if (!broker_connected(b)) {
        if (b)
            broker_set_err(b, "queue depth: not connected");
        return RT_RETRY;
    }
    if (b->depth) {
        broker_set_err(b, "broker_queue_depth called from a callback");
        return RT_REJECT;
    }
    if (!queue || strlen(queue) >= SHORTSTR) {
        broker_set_err(b, "queue depth: invalid queue name");
        return RT_REJECT;
    }
    if (broker_scratch_open(b) != RT_OK)
        return broker_finish_call(b, RT_RETRY);
    char what[SHORTSTR + 32];
    snprintf(what, sizeof(what), "looking up queue \"%s\"", queue);
    amqp_queue_declare_ok_t *ok = amqp_queue_declare(b->conn, CH_SCRATCH, amqp_cstring_bytes(queue),
                                                     1, 0, 0, 0, amqp_empty_table);
    rt_status st = broker_rpc_verdict(b, amqp_get_rpc_reply(b->conn), CH_SCRATCH, what, NULL);
    if (st == RT_OK) {
        if (ready)
            *ready = ok->message_count;
        if (consumers)
            *consumers = ok->consumer_count;
        st = broker_scratch_close(b);
    }
    return broker_finish_call(b, st);
}

/* Sends the depth questions not sent on the query channel as it is now. */
void broker_flush_depth(struct broker *b)
{
    for (size_t i = b->dq_head; i < b->dq_len && b->query == QUERY_OPEN && !b->dead; i++) {
        struct depth_question *q = &b->dq[i];
        if (q->sent)
            continue;
        if (!broker_can_write(b, 64 + strlen(q->queue)))
            return;
        amqp_queue_declare_t req;
        memset(&req, 0, sizeof(req));
        req.queue = amqp_cstring_bytes(q->queue);
        req.passive = 1;
        req.durable = 1;
        req.arguments = amqp_empty_table;
        if (amqp_send_method(b->conn, CH_QUERY, AMQP_QUEUE_DECLARE_METHOD, &req) !=
            AMQP_STATUS_OK) {
            broker_set_err(b, "asking the depth of \"%s\" failed", q->queue);
            broker_mark_dead(b);
            return;
        }
        q->sent = 1;
    }
}

rt_status broker_depth_ask(struct broker *b, const char *queue)
{
    if (!b || !b->on_depth || !queue || !*queue || strlen(queue) >= SHORTSTR) {
        if (b)
            broker_set_err(b, "queue depth: no on_depth callback or an invalid queue name");
        return RT_REJECT;
    }
    if (!broker_connected(b)) {
        broker_set_err(b, "queue depth: not connected");
        return RT_RETRY;
    }
    if (b->dq_head == b->dq_len)
        b->dq_head = b->dq_len = 0;
    if (b->dq_len == b->dq_cap) {
        if (b->dq_head > 0) {
            memmove(b->dq, b->dq + b->dq_head, (b->dq_len - b->dq_head) * sizeof(*b->dq));
            b->dq_len -= b->dq_head;
            b->dq_head = 0;
        }
        if (b->dq_len == b->dq_cap) {
            size_t cap = b->dq_cap ? b->dq_cap * 2 : 16;
            struct depth_question *q = realloc(b->dq, cap * sizeof(*q));
            if (!q) {
                broker_set_err(b, "queue depth: out of memory");
                return RT_RETRY;
            }
            b->dq = q;
            b->dq_cap = cap;
        }
    }
    struct depth_question *q = &b->dq[b->dq_len++];
    snprintf(q->queue, sizeof(q->queue), "%s", queue);
    q->sent = 0;
    broker_flush_depth(b);
    return broker_finish_call(b, RT_OK);
}

size_t broker_depth_pending(const struct broker *b)
{
    return b ? b->dq_len - b->dq_head : 0;
}

/* The answer to the oldest depth question. */
static void depth_answer(struct broker *b, int found, uint32_t ready, uint32_t consumers)
{
    if (b->dq_head == b->dq_len || !b->dq[b->dq_head].sent) {
        broker_protocol_error(b, "an answer to a depth question never asked", CH_QUERY);
        return;
    }
    char queue[SHORTSTR];
    snprintf(queue, sizeof(queue), "%s", b->dq[b->dq_head].queue);
    b->dq_head++;
    if (b->on_depth) {
        b->depth++;
        b->on_depth(b->cb_arg, queue, found, ready, consumers);
        b->depth--;
    }
}

/* The broker closed the query channel: the oldest question is answered
 * by the refusal (a missing queue), the broker dropped those sent after
 * it, so they are asked again once the channel is open again. */
void broker_query_on_close(struct broker *b, const amqp_channel_close_t *c)
{
    char text[SHORTSTR];
    broker_copy_bytes(text, sizeof(text), c->reply_text);
    broker_send_channel_close_ok(b, CH_QUERY);
    if (c->reply_code != AMQP_NOT_FOUND)
        log_warning("the broker refused a queue depth question: %u %s", c->reply_code, text);
    depth_answer(b, 0, 0, 0);
    for (size_t i = b->dq_head; i < b->dq_len; i++)
        b->dq[i].sent = 0;
    amqp_channel_open_t open;
    memset(&open, 0, sizeof(open));
    if (b->dead ||
        amqp_send_method(b->conn, CH_QUERY, AMQP_CHANNEL_OPEN_METHOD, &open) != AMQP_STATUS_OK) {
        broker_mark_dead(b);
        return;
    }
    b->query = QUERY_OPENING;
}

/* queue.declare-ok: on the query channel, the answer to the oldest depth
 * question; no other channel asks without waiting. */
void broker_depth_on_declare_ok(struct broker *b, amqp_channel_t ch,
                                const amqp_queue_declare_ok_t *ok)
{
    if (ch != CH_QUERY) {
        broker_protocol_error(b, "queue.declare-ok", ch);
        return;
    }
    depth_answer(b, 1, ok->message_count, ok->consumer_count);
}

/* channel.open-ok of the query channel, opened again after a refusal: the
 * questions the broker dropped are asked again. */
void broker_query_on_open(struct broker *b, amqp_channel_t ch)
{
    if (ch != CH_QUERY || b->query != QUERY_OPENING) {
        broker_protocol_error(b, "channel.open-ok", ch);
        return;
    }
    b->query = QUERY_OPEN;
    broker_flush_depth(b);
}

/* ---- basic.get -------------------------------------------------------- */

/* The checks of broker_get() before anything is sent: RT_OK, or the
 * verdict with the reason set. */
static rt_status get_check(struct broker *b, const char *queue)
{
    if (!broker_connected(b)) {
        broker_set_err(b, "reading a message: not connected");
        return RT_RETRY;
    }
    if (b->depth) {
        broker_set_err(b, "broker_get called from a callback");
        return RT_REJECT;
    }
    if (!queue || !*queue || strlen(queue) >= SHORTSTR) {
        broker_set_err(b, "reading a message: invalid queue name");
        return RT_REJECT;
    }
    return RT_OK;
}

/* Sends basic.get. It is sent by hand and its answer read frame by frame,
 * like everything else: amqp_basic_get() followed by amqp_read_message()
 * would wait without a deadline for the content. RT_RETRY with the
 * connection marked dead when it could not be sent. */
static rt_status get_send(struct broker *b, const char *queue)
{
    amqp_basic_get_t req;
    memset(&req, 0, sizeof(req));
    req.queue = amqp_cstring_bytes(queue);
    req.no_ack = 0;
    snprintf(b->get_queue, sizeof(b->get_queue), "%s", queue);
    b->get_msg = NULL;
    b->get_nomem = 0;
    b->get_remaining = 0;
    int rc = amqp_send_method(b->conn, CH_CONSUME, AMQP_BASIC_GET_METHOD, &req);
    if (rc != AMQP_STATUS_OK) {
        broker_set_err(b, "reading a message from \"%s\" failed: %s", queue,
                       amqp_error_string2(rc));
        broker_mark_dead(b);
        return RT_RETRY;
    }
    b->get_state = GET_WAITING;
    return RT_OK;
}

/* Reads frames, handled as broker_process() would, until the answer to
 * basic.get is in, the connection failed or the connect timeout passed. */
static void get_wait(struct broker *b, const char *queue)
{
    int64_t deadline = clock_mono_ms() + b->connect_timeout_ms;
    while (!b->dead && (b->get_state == GET_WAITING || b->get_state == GET_CONTENT)) {
        int64_t left = deadline - clock_mono_ms();
        if (left <= 0) {
            /* A late answer would arrive in the middle of something else:
             * this connection cannot be trusted any more. */
            broker_set_err(b, "reading a message from \"%s\": no answer within %d ms", queue,
                           b->connect_timeout_ms);
            broker_mark_dead(b);
            break;
        }
        amqp_frame_t f;
        struct timeval tv = broker_ms_to_tv((int)left);
        int rc = amqp_simple_wait_frame_noblock(b->conn, &f, &tv);
        if (rc == AMQP_STATUS_TIMEOUT)
            continue;
        if (rc != AMQP_STATUS_OK) {
            broker_set_err(b, "AMQP connection to %s:%d lost: %s", b->host, b->port,
                           amqp_error_string2(rc));
            broker_mark_dead(b);
            break;
        }
        broker_handle_frame(b, &f);
    }
}

/* broker_get()'s verdict once the wait ended: the message handed over, or
 * why there is none. */
static rt_status get_result(struct broker *b, const char *queue, struct broker_delivery **out,
                            uint32_t *remaining)
{
    enum get_state gs = b->get_state;
    struct broker_delivery *msg = b->get_msg;
    b->get_state = GET_IDLE;
    b->get_msg = NULL;
    if (gs == GET_REFUSED) {
        char why[sizeof(b->err)];
        snprintf(why, sizeof(why), "%s", b->err);
        broker_set_err(b, "reading a message from \"%s\": %s", queue, why);
        broker_delivery_free(msg);
        return broker_finish_call(b, RT_REJECT);
    }
    if (b->dead || gs != GET_DONE) {
        broker_delivery_free(msg);
        return broker_finish_call(b, RT_RETRY);
    }
    if (b->get_nomem) {
        /* The message is ours unacknowledged: give it back. */
        broker_set_err(b, "reading a message from \"%s\": out of memory", queue);
        b->get_nomem = 0;
        uint64_t tag = b->d.delivery_tag;
        char why[sizeof(b->err)];
        snprintf(why, sizeof(why), "%s", b->err);
        if (broker_reject(b, tag, 1) == RT_OK)
            broker_set_err(b, "%s", why);
        return RT_RETRY;
    }
    *out = msg;
    if (remaining)
        *remaining = b->get_remaining;
    return RT_OK;
}

rt_status broker_get(struct broker *b, const char *queue, struct broker_delivery **out,
                     uint32_t *remaining)
{
    if (out)
        *out = NULL;
    if (remaining)
        *remaining = 0;
    if (!b || !out)
        return RT_REJECT;
    rt_status st = get_check(b, queue);
    if (st != RT_OK)
        return st;
    if (get_send(b, queue) != RT_OK)
        return broker_finish_call(b, RT_RETRY);
    get_wait(b, queue);
    return get_result(b, queue, out, remaining);
}

/* basic.get-ok: the message broker_get() asked for begins. */
void broker_get_on_ok(struct broker *b, amqp_channel_t ch, const amqp_basic_get_ok_t *g)
{
    if (ch != CH_CONSUME || b->del_state != CONTENT_IDLE || b->get_state != GET_WAITING) {
        broker_protocol_error(b, "basic.get-ok", ch);
        return;
    }
    b->get_remaining = g->message_count;
    b->get_state = GET_CONTENT;
    broker_delivery_begin(b, b->get_queue, g->delivery_tag, g->redelivered, g->exchange,
                          g->routing_key);
}

/* basic.get-empty: the queue broker_get() asked had no message. */
void broker_get_on_empty(struct broker *b, amqp_channel_t ch)
{
    if (ch != CH_CONSUME || b->get_state != GET_WAITING) {
        broker_protocol_error(b, "basic.get-empty", ch);
        return;
    }
    b->get_remaining = 0;
    b->get_state = GET_DONE;
}
