/*
 * broker_consume.c - consuming: the consumers of the consume channel, the
 * deliveries received on it (method, content header, body, kept within
 * max_message and handed to on_delivery, or to broker_get()), the copies
 * a caller keeps, and the acks and rejects, sent at once or kept in order
 * while the node is not reading.
 */
#include "broker.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker_int.h"
#include "buf.h"
#include "log.h"

/* The delivery tags handed to the owner carry the connection they came on
 * in their top bits: an ack of a delivery of an earlier connection (an
 * API call that finished after a reconnect) is dropped here, never sent
 * on the new connection, where its tag would name another delivery or
 * none (the broker closes the channel on an unknown tag). AMQP tags count
 * from 1 per channel; 2^48 of them is centuries of deliveries. */
#define TAG_BITS 48
#define TAG_MASK ((UINT64_C(1) << TAG_BITS) - 1)

/* ---- consumers -------------------------------------------------------- */

rt_status broker_consume(struct broker *b, const char *queue)
{
    if (!broker_connected(b)) {
        if (b)
            broker_set_err(b, "consuming: not connected");
        return RT_RETRY;
    }
    if (b->depth) {
        broker_set_err(b, "broker_consume called from a callback");
        return RT_REJECT;
    }
    if (!queue || !*queue || strlen(queue) >= SHORTSTR || !b->on_delivery) {
        broker_set_err(b, "consuming: a queue name and an on_delivery callback are required");
        return RT_REJECT;
    }
    if (b->n_consumers == BROKER_MAX_CONSUMERS) {
        broker_set_err(b, "consuming \"%s\": already %d consumers on this connection", queue,
                       BROKER_MAX_CONSUMERS);
        return RT_REJECT;
    }
    if (b->n_consumers == b->consumers_cap) {
        size_t cap = b->consumers_cap ? b->consumers_cap * 2 : 8;
        struct consumer *cs = realloc(b->consumers, cap * sizeof(*cs));
        if (!cs) {
            broker_set_err(b, "consuming \"%s\": out of memory", queue);
            return RT_RETRY;
        }
        b->consumers = cs;
        b->consumers_cap = cap;
    }
    char what[SHORTSTR + 32];
    snprintf(what, sizeof(what), "consuming queue \"%s\"", queue);
    amqp_basic_consume_ok_t *ok = amqp_basic_consume(b->conn, CH_CONSUME, amqp_cstring_bytes(queue),
                                                     amqp_empty_bytes, 0, 0, 0, amqp_empty_table);
    rt_status st = broker_rpc_verdict(b, amqp_get_rpc_reply(b->conn), CH_CONSUME, what, NULL);
    if (st == RT_REJECT) {
        /* The consume channel is gone and with it every consumer: the
         * connection cannot deliver any more. */
        log_warning("%s", b->err);
        broker_mark_dead(b);
    }
    if (st != RT_OK)
        return broker_finish_call(b, st);
    struct consumer *c = &b->consumers[b->n_consumers++];
    snprintf(c->queue, sizeof(c->queue), "%s", queue);
    broker_copy_bytes(c->tag, sizeof(c->tag), ok->consumer_tag);
    log_debug("consuming queue \"%s\"", queue);
    return RT_OK;
}

static const char *consumer_queue(struct broker *b, amqp_bytes_t tag, size_t *index)
{
    char t[SHORTSTR];
    broker_copy_bytes(t, sizeof(t), tag);
    for (size_t i = 0; i < b->n_consumers; i++) {
        if (strcmp(b->consumers[i].tag, t) == 0) {
            if (index)
                *index = i;
            return b->consumers[i].queue;
        }
    }
    return NULL;
}

/* basic.deliver: a message of a consumed queue begins. */
void broker_consume_on_deliver(struct broker *b, amqp_channel_t ch, const amqp_basic_deliver_t *d)
{
    if (ch != CH_CONSUME || b->del_state != CONTENT_IDLE) {
        broker_protocol_error(b, "basic.deliver", ch);
        return;
    }
    broker_delivery_begin(b, consumer_queue(b, d->consumer_tag, NULL), d->delivery_tag,
                          d->redelivered, d->exchange, d->routing_key);
}

/* basic.cancel: the broker cancelled a consumer (its queue was deleted). */
void broker_consume_on_cancel(struct broker *b, const amqp_basic_cancel_t *c)
{
    size_t i;
    const char *q = consumer_queue(b, c->consumer_tag, &i);
    char queue[SHORTSTR];
    snprintf(queue, sizeof(queue), "%s", q ? q : "");
    if (q) {
        b->consumers[i] = b->consumers[b->n_consumers - 1];
        b->n_consumers--;
    }
    log_warning("AMQP broker cancelled the consumer of queue \"%s\"", queue);
    if (b->on_cancel) {
        b->depth++;
        b->on_cancel(b->cb_arg, queue);
        b->depth--;
    }
}

/* ---- deliveries ------------------------------------------------------- */

/* A basic.deliver or basic.get-ok: the content header and body follow. */
void broker_delivery_begin(struct broker *b, const char *queue, uint64_t tag, int redelivered,
                           amqp_bytes_t exchange, amqp_bytes_t routing_key)
{
    memset(&b->d, 0, sizeof(b->d));
    snprintf(b->d_queue, sizeof(b->d_queue), "%s", queue ? queue : "");
    broker_copy_bytes(b->d_exchange, sizeof(b->d_exchange), exchange);
    broker_copy_bytes(b->d_key, sizeof(b->d_key), routing_key);
    b->d.delivery_tag = ((b->gen & 0xffff) << TAG_BITS) | (tag & TAG_MASK);
    b->d.redelivered = redelivered ? 1 : 0;
    b->d.queue = b->d_queue;
    b->d.exchange = b->d_exchange;
    b->d.routing_key = b->d_key;
    b->d.message_id = b->d.user_id = b->d.content_type = "";
    buf_reset(&b->body);
    b->del_state = CONTENT_HEADER;
}

/* A header's value as the owner sees it: a string (its bytes in *sv) or an
 * integer (booleans as 0/1, unsigned 64-bit values past INT64_MAX cut to
 * it). Returns 0, or -1 for the kinds not kept. */
static int header_value(const amqp_field_value_t *v, struct broker_header *h, amqp_bytes_t *sv)
{
    h->type = BROKER_HEADER_INT;
    switch (v->kind) {
    case AMQP_FIELD_KIND_UTF8:
    case AMQP_FIELD_KIND_BYTES:
        h->type = BROKER_HEADER_STR;
        *sv = v->value.bytes;
        return 0;
    case AMQP_FIELD_KIND_BOOLEAN: h->num = v->value.boolean ? 1 : 0; return 0;
    case AMQP_FIELD_KIND_I8: h->num = v->value.i8; return 0;
    case AMQP_FIELD_KIND_U8: h->num = v->value.u8; return 0;
    case AMQP_FIELD_KIND_I16: h->num = v->value.i16; return 0;
    case AMQP_FIELD_KIND_U16: h->num = v->value.u16; return 0;
    case AMQP_FIELD_KIND_I32: h->num = v->value.i32; return 0;
    case AMQP_FIELD_KIND_U32: h->num = v->value.u32; return 0;
    case AMQP_FIELD_KIND_I64: h->num = v->value.i64; return 0;
    case AMQP_FIELD_KIND_U64:
        h->num = v->value.u64 > INT64_MAX ? INT64_MAX : (int64_t)v->value.u64;
        return 0;
    default: return -1;
    }
}

/* Copies the string and integer headers of a delivery into the broker's
 * fixed storage; what does not fit is dropped with a debug line. */
static void copy_headers(struct broker *b, const amqp_table_t *t)
{
    size_t used = 0, n = 0;
    for (int i = 0; t && i < t->num_entries; i++) {
        const amqp_table_entry_t *e = &t->entries[i];
        struct broker_header h = {0};
        amqp_bytes_t sv = {0, NULL};
        if (header_value(&e->value, &h, &sv) != 0)
            continue; /* arrays (x-death), tables, floats: not ours */
        size_t need = e->key.len + 1 + (h.type == BROKER_HEADER_STR ? sv.len + 1 : 0);
        if (n == BROKER_MAX_HEADERS || need > sizeof(b->d_arena) - used) {
            log_debug("dropping headers of a delivery past the %d kept", (int)n);
            break;
        }
        char *key = b->d_arena + used;
        broker_copy_bytes(key, e->key.len + 1, e->key);
        used += e->key.len + 1;
        h.key = key;
        if (h.type == BROKER_HEADER_STR) {
            char *s = b->d_arena + used;
            broker_copy_bytes(s, sv.len + 1, sv);
            used += sv.len + 1;
            h.str = s;
        }
        b->d_headers[n++] = h;
    }
    b->d.headers = b->d_headers;
    b->d.n_headers = n;
}

static void dispatch_delivery(struct broker *b)
{
    b->d.body = b->d.too_big ? NULL : (const void *)buf_cstr(&b->body);
    if (b->get_state == GET_CONTENT) {
        /* The answer to broker_get(): a copy for the caller, not a
         * callback. */
        b->get_msg = broker_delivery_copy(&b->d);
        b->get_nomem = b->get_msg == NULL;
        b->get_state = GET_DONE;
    } else if (b->on_delivery) {
        b->depth++;
        b->on_delivery(b->cb_arg, &b->d);
        b->depth--;
    }
    buf_reset(&b->body);
    b->del_state = CONTENT_IDLE;
}

/* The content header of a delivery (consumed, or broker_get()'s answer):
 * its properties and headers are kept; an empty body completes it. */
void broker_delivery_on_header(struct broker *b, const amqp_basic_properties_t *p, uint64_t size)
{
    if (p && (p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG)) {
        broker_copy_bytes(b->d_message_id, sizeof(b->d_message_id), p->message_id);
        b->d.message_id = b->d_message_id;
    }
    if (p && (p->_flags & AMQP_BASIC_USER_ID_FLAG)) {
        broker_copy_bytes(b->d_user_id, sizeof(b->d_user_id), p->user_id);
        b->d.user_id = b->d_user_id;
    }
    if (p && (p->_flags & AMQP_BASIC_CONTENT_TYPE_FLAG)) {
        broker_copy_bytes(b->d_content_type, sizeof(b->d_content_type), p->content_type);
        b->d.content_type = b->d_content_type;
    }
    if (p && (p->_flags & AMQP_BASIC_TIMESTAMP_FLAG))
        b->d.timestamp = p->timestamp > INT64_MAX ? INT64_MAX : (int64_t)p->timestamp;
    copy_headers(b, p && (p->_flags & AMQP_BASIC_HEADERS_FLAG) ? &p->headers : NULL);
    b->d.len = (size_t)size;
    b->d.too_big = size > b->max_message || size > SIZE_MAX;
    b->del_size = size;
    b->del_got = 0;
    if (size == 0) {
        dispatch_delivery(b);
        return;
    }
    b->del_state = CONTENT_BODY;
}

/* A body frame of a delivery: kept up to max_message; the last one
 * completes the delivery. */
void broker_delivery_on_body(struct broker *b, amqp_bytes_t part)
{
    b->del_got += part.len;
    if (b->del_got > b->del_size) {
        broker_protocol_error(b, "delivered body longer than announced", CH_CONSUME);
        return;
    }
    /* An oversized body is read and dropped: the caller still gets the
     * delivery (too_big) so it can dead-letter it. */
    if (!b->d.too_big && buf_append(&b->body, part.bytes, part.len) != 0) {
        b->d.too_big = 1;
        buf_reset(&b->body);
    }
    if (b->del_got == b->del_size)
        dispatch_delivery(b);
}

struct broker_delivery *broker_delivery_copy(const struct broker_delivery *d)
{
    if (!d)
        return NULL;
    /* One block: the struct, the header array, then every string and the
     * body, so that one free() releases it all. */
    const char *strs[6] = {d->queue,      d->exchange, d->routing_key,
                           d->message_id, d->user_id,  d->content_type};
    size_t need = sizeof(*d) + d->n_headers * sizeof(struct broker_header);
    for (size_t i = 0; i < 6; i++)
        need += strlen(strs[i] ? strs[i] : "") + 1;
    for (size_t i = 0; i < d->n_headers; i++) {
        need += strlen(d->headers[i].key) + 1;
        if (d->headers[i].type == BROKER_HEADER_STR)
            need += strlen(d->headers[i].str ? d->headers[i].str : "") + 1;
    }
    size_t body_len = d->body && !d->too_big ? d->len : 0;
    need += body_len + 1;

    struct broker_delivery *c = malloc(need);
    if (!c)
        return NULL;
    *c = *d;
    struct broker_header *h = (struct broker_header *)(c + 1);
    char *p = (char *)(h + d->n_headers);
    const char **dst[6] = {&c->queue,      &c->exchange, &c->routing_key,
                           &c->message_id, &c->user_id,  &c->content_type};
    for (size_t i = 0; i < 6; i++) {
        size_t n = strlen(strs[i] ? strs[i] : "");
        memcpy(p, strs[i] ? strs[i] : "", n + 1);
        *dst[i] = p;
        p += n + 1;
    }
    for (size_t i = 0; i < d->n_headers; i++) {
        h[i] = d->headers[i];
        size_t n = strlen(d->headers[i].key);
        memcpy(p, d->headers[i].key, n + 1);
        h[i].key = p;
        p += n + 1;
        if (h[i].type == BROKER_HEADER_STR) {
            const char *v = d->headers[i].str ? d->headers[i].str : "";
            n = strlen(v);
            memcpy(p, v, n + 1);
            h[i].str = p;
            p += n + 1;
        }
    }
    c->headers = d->n_headers ? h : NULL;
    /* The body is NUL-terminated too, as the broker's own buffer is. */
    if (body_len)
        memcpy(p, d->body, body_len);
    p[body_len] = '\0';
    c->body = d->too_big ? NULL : (const void *)p;
    return c;
}

void broker_delivery_free(struct broker_delivery *d)
{
    free(d);
}

int broker_delivery_header_int(const struct broker_delivery *d, const char *key, int64_t *out)
{
    for (size_t i = 0; d && key && i < d->n_headers; i++) {
        if (strcmp(d->headers[i].key, key) == 0) {
            if (d->headers[i].type != BROKER_HEADER_INT)
                return -1;
            if (out)
                *out = d->headers[i].num;
            return 0;
        }
    }
    return -1;
}

const char *broker_delivery_header_str(const struct broker_delivery *d, const char *key)
{
    for (size_t i = 0; d && key && i < d->n_headers; i++) {
        if (strcmp(d->headers[i].key, key) == 0)
            return d->headers[i].type == BROKER_HEADER_STR ? d->headers[i].str : NULL;
    }
    return NULL;
}

/* ---- acks and rejects ------------------------------------------------- */

/* Sends one ack or reject now. 0, or -1 when the connection failed. */
static int send_ack(struct broker *b, uint64_t tag, enum ack_op op)
{
    int rc = op == ACK_ACK ? amqp_basic_ack(b->conn, CH_CONSUME, tag, 0)
                           : amqp_basic_reject(b->conn, CH_CONSUME, tag, op == ACK_REQUEUE);
    if (rc != AMQP_STATUS_OK) {
        broker_set_err(b, "%s failed: %s", op == ACK_ACK ? "ack" : "reject",
                       amqp_error_string2(rc));
        broker_mark_dead(b);
        return -1;
    }
    return 0;
}

/* An ack or reject: sent now, or kept in order behind those that wait for
 * the node to read again. */
static rt_status queue_ack(struct broker *b, uint64_t tag, enum ack_op op)
{
    if (!broker_connected(b)) {
        if (b)
            broker_set_err(b, "%s: not connected", op == ACK_ACK ? "ack" : "reject");
        return RT_RETRY;
    }
    if ((tag >> TAG_BITS) != (b->gen & 0xffff)) {
        /* A delivery of a connection that is gone: the broker gave it back
         * to its queue when that connection closed. */
        log_debug("%s of delivery %" PRIu64 " of an earlier connection dropped",
                  op == ACK_ACK ? "ack" : "reject", tag & TAG_MASK);
        return RT_OK;
    }
    tag &= TAG_MASK;
    if (b->n_acks == 0 && broker_can_write(b, 64))
        return send_ack(b, tag, op) == 0 ? RT_OK : broker_finish_call(b, RT_RETRY);
    if (b->n_acks == b->acks_cap) {
        size_t cap = b->acks_cap ? b->acks_cap * 2 : 64;
        struct pending_ack *a = realloc(b->acks, cap * sizeof(*a));
        if (!a) {
            broker_set_err(b, "out of memory for an ack");
            return RT_RETRY; /* the delivery stays unacked: redelivered later */
        }
        b->acks = a;
        b->acks_cap = cap;
    }
    b->acks[b->n_acks++] = (struct pending_ack){tag, op};
    return RT_OK;
}

void broker_flush_acks(struct broker *b)
{
    size_t i = 0;
    while (i < b->n_acks && !b->dead && broker_can_write(b, 64)) {
        if (send_ack(b, b->acks[i].tag, b->acks[i].op) < 0)
            break;
        i++;
    }
    if (i) {
        memmove(b->acks, b->acks + i, (b->n_acks - i) * sizeof(*b->acks));
        b->n_acks -= i;
    }
}

rt_status broker_ack(struct broker *b, uint64_t delivery_tag)
{
    return queue_ack(b, delivery_tag, ACK_ACK);
}

rt_status broker_reject(struct broker *b, uint64_t delivery_tag, int requeue)
{
    return queue_ack(b, delivery_tag, requeue ? ACK_REQUEUE : ACK_REJECT);
}
