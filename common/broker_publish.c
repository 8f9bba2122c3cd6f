/*
 * broker_publish.c - publishing on the confirm channel: the checks before
 * a message is written, the publishes that await their confirm in tag
 * order, and their fates (acked, nacked, returned as unroutable) reported
 * through on_confirm as basic.ack, basic.nack and basic.return arrive.
 * (The fate LOST of a connection that went is reported by its teardown.)
 */
#include "broker.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "broker_int.h"
#include "log.h"

static uint64_t hash_bytes(const void *p, size_t n)
{
    const unsigned char *s = p;
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 1099511628211ull;
    }
    return h;
}

static int pend_reserve(struct broker *b)
{
    if (b->pend_len < b->pend_cap)
        return 0;
    /* Slide the live entries down before growing: acks retire the oldest. */
    if (b->pend_head > 0) {
        memmove(b->pend, b->pend + b->pend_head, (b->pend_len - b->pend_head) * sizeof(*b->pend));
        b->pend_base += b->pend_head;
        b->pend_len -= b->pend_head;
        b->pend_head = 0;
        if (b->pend_len < b->pend_cap)
            return 0;
    }
    size_t cap = b->pend_cap ? b->pend_cap * 2 : 256;
    struct pending *p = realloc(b->pend, cap * sizeof(*p));
    if (!p)
        return -1;
    b->pend = p;
    b->pend_cap = cap;
    return 0;
}

/* The checks of broker_publish() before anything is written, and room for
 * its confirm: RT_OK, or the verdict with the reason set. */
static rt_status publish_check(struct broker *b, const char *exchange, const char *routing_key,
                               const struct broker_props *props, const void *body, size_t len)
{
    if (!broker_connected(b)) {
        broker_set_err(b, "publishing: not connected");
        return RT_RETRY;
    }
    if (!exchange || !routing_key || strlen(exchange) >= SHORTSTR ||
        strlen(routing_key) >= SHORTSTR) {
        broker_set_err(b, "publishing: invalid exchange or routing key");
        return RT_REJECT;
    }
    if (!props || !props->message_id || !*props->message_id ||
        strlen(props->message_id) >= SHORTSTR || props->n_headers > BROKER_MAX_HEADERS ||
        (props->n_headers && !props->headers) || (len && !body)) {
        broker_set_err(b, "publishing: a message_id and at most %d headers are required",
                       BROKER_MAX_HEADERS);
        return RT_REJECT;
    }
    if (b->blocked) {
        broker_set_err(b, "publishing: the broker has blocked this connection (resource alarm)");
        return RT_RETRY;
    }
    if (b->unconfirmed >= b->max_unconfirmed) {
        broker_set_err(b, "publishing: %zu messages already await a confirm", b->unconfirmed);
        return RT_RETRY;
    }
    if (!broker_can_write(b, len + 512)) {
        /* The node stopped reading (frozen, its link blackholed): nothing
         * is written, and two heartbeats without a frame end the
         * connection. */
        broker_set_err(b, "publishing: the broker at %s:%d is not reading (its socket is full)",
                       b->host, b->port);
        return RT_RETRY;
    }
    if (pend_reserve(b) != 0) {
        broker_set_err(b, "publishing: out of memory");
        return RT_RETRY;
    }
    return RT_OK;
}

/* The AMQP properties of a publish, fixed by the wire but for the id,
 * timestamp, user and headers; entries (room for BROKER_MAX_HEADERS) hold
 * the headers p points to. RT_REJECT when a header has no key or value. */
static rt_status publish_props(struct broker *b, const struct broker_props *props,
                               amqp_table_entry_t *entries, amqp_basic_properties_t *p)
{
    for (size_t i = 0; i < props->n_headers; i++) {
        const struct broker_header *h = &props->headers[i];
        if (!h->key || (h->type == BROKER_HEADER_STR && !h->str)) {
            broker_set_err(b, "publishing: header %zu has no key or value", i);
            return RT_REJECT;
        }
        entries[i] = h->type == BROKER_HEADER_INT ? broker_int_entry(h->key, h->num)
                                                  : broker_str_entry(h->key, h->str);
    }
    memset(p, 0, sizeof(*p));
    p->_flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG |
                AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_TIMESTAMP_FLAG | AMQP_BASIC_USER_ID_FLAG;
    p->content_type = amqp_cstring_bytes(BROKER_CONTENT_TYPE);
    p->delivery_mode = AMQP_DELIVERY_PERSISTENT;
    p->message_id = amqp_cstring_bytes(props->message_id);
    p->timestamp = (uint64_t)(props->timestamp > 0 ? props->timestamp : (int64_t)time(NULL));
    p->user_id = amqp_cstring_bytes(props->user_id ? props->user_id : b->user);
    if (props->n_headers) {
        p->_flags |= AMQP_BASIC_HEADERS_FLAG;
        p->headers.num_entries = (int)props->n_headers;
        p->headers.entries = entries;
    }
    return RT_OK;
}

rt_status broker_publish(struct broker *b, const char *exchange, const char *routing_key,
                         const struct broker_props *props, const void *body, size_t len,
                         uint64_t *tag_out)
{
    amqp_table_entry_t entries[BROKER_MAX_HEADERS];
    amqp_basic_properties_t p;
    rt_status st;

    if (!b)
        return RT_REJECT;
    if ((st = publish_check(b, exchange, routing_key, props, body, len)) != RT_OK ||
        (st = publish_props(b, props, entries, &p)) != RT_OK)
        return st;
    amqp_bytes_t content;
    content.len = len;
    content.bytes = (void *)body;

    int rc = amqp_basic_publish(b->conn, CH_PUBLISH, amqp_cstring_bytes(exchange),
                                amqp_cstring_bytes(routing_key), 1, 0, &p, content);
    if (rc != AMQP_STATUS_OK) {
        broker_set_err(b, "publishing to \"%s\" failed: %s", exchange, amqp_error_string2(rc));
        log_warning("%s", b->err);
        broker_mark_dead(b);
        return broker_finish_call(b, RT_RETRY);
    }
    uint64_t tag = b->next_tag++;
    struct pending *e = &b->pend[b->pend_len++];
    e->id_hash = hash_bytes(props->message_id, strlen(props->message_id));
    e->state = PEND_WAITING;
    b->unconfirmed++;
    if (tag_out)
        *tag_out = tag;
    return RT_OK;
}

size_t broker_unconfirmed(const struct broker *b)
{
    return b ? b->unconfirmed : 0;
}

int broker_blocked(const struct broker *b)
{
    return b && b->blocked;
}

/* ---- fates, from the frame dispatch ----------------------------------- */

/* Retires the entries confirmed by one basic.ack or basic.nack, oldest
 * first, and reports each fate. */
static void confirm(struct broker *b, uint64_t tag, int multiple, enum broker_fate fate)
{
    uint64_t first = b->pend_base + b->pend_head;
    uint64_t end = b->pend_base + b->pend_len;
    if (tag < first || tag >= end) {
        /* Already retired (a multiple ack overlapping an earlier one). */
        if (tag >= end)
            log_warning("AMQP broker confirmed unknown delivery tag %" PRIu64, tag);
        return;
    }
    for (uint64_t t = multiple ? first : tag; t <= tag && !b->dead; t++) {
        struct pending *e = &b->pend[t - b->pend_base];
        if (e->state == PEND_DONE)
            continue;
        enum broker_fate f =
            (fate == BROKER_ACKED && e->state == PEND_RETURNED) ? BROKER_RETURNED : fate;
        e->state = PEND_DONE;
        b->unconfirmed--;
        if (b->on_confirm) {
            b->depth++;
            b->on_confirm(b->cb_arg, t, f);
            b->depth--;
        }
    }
    while (b->pend_head < b->pend_len && b->pend[b->pend_head].state == PEND_DONE)
        b->pend_head++;
    if (b->pend_head == b->pend_len) {
        b->pend_base = b->next_tag;
        b->pend_head = b->pend_len = 0;
    }
}

/* A basic.return carries no delivery tag; the message_id (on every publish)
 * finds the oldest message still waiting with that id. Its basic.ack comes
 * next and is reported as RETURNED. */
static void mark_returned(struct broker *b, amqp_bytes_t message_id)
{
    uint64_t h = hash_bytes(message_id.bytes, message_id.len);
    for (size_t i = b->pend_head; i < b->pend_len; i++) {
        if (b->pend[i].state == PEND_WAITING && b->pend[i].id_hash == h) {
            b->pend[i].state = PEND_RETURNED;
            return;
        }
    }
    char id[SHORTSTR];
    broker_copy_bytes(id, sizeof(id), message_id);
    log_warning("AMQP broker returned message \"%s\", which is not awaiting a confirm", id);
}

/* basic.ack, basic.nack or basic.return: only the publish channel carries
 * them, and never in the middle of a returned message's content. */
void broker_publish_on_method(struct broker *b, amqp_channel_t ch, const amqp_method_t *m)
{
    if (ch != CH_PUBLISH || b->ret_state != CONTENT_IDLE) {
        broker_protocol_error(b, amqp_method_name(m->id), ch);
        return;
    }
    if (m->id == AMQP_BASIC_ACK_METHOD) {
        const amqp_basic_ack_t *a = m->decoded;
        confirm(b, a->delivery_tag, a->multiple, BROKER_ACKED);
    } else if (m->id == AMQP_BASIC_NACK_METHOD) {
        const amqp_basic_nack_t *a = m->decoded;
        confirm(b, a->delivery_tag, a->multiple, BROKER_NACKED);
    } else {
        const amqp_basic_return_t *r = m->decoded;
        broker_copy_bytes(b->ret_text, sizeof(b->ret_text), r->reply_text);
        b->ret_state = CONTENT_HEADER;
    }
}

/* The content header of a returned message: its message_id names the
 * publish that comes back. */
void broker_return_on_header(struct broker *b, const amqp_basic_properties_t *p, uint64_t size)
{
    char id[SHORTSTR] = "";
    if (p && (p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG)) {
        broker_copy_bytes(id, sizeof(id), p->message_id);
        mark_returned(b, p->message_id);
    }
    log_warning("AMQP broker returned message \"%s\": %s", id, b->ret_text);
    b->ret_size = size;
    b->ret_got = 0;
    b->ret_state = size ? CONTENT_BODY : CONTENT_IDLE;
}

/* A body frame of a returned message: counted, not kept. */
void broker_return_on_body(struct broker *b, amqp_bytes_t part)
{
    b->ret_got += part.len;
    if (b->ret_got > b->ret_size)
        broker_protocol_error(b, "returned body longer than announced", CH_PUBLISH);
    else if (b->ret_got == b->ret_size)
        b->ret_state = CONTENT_IDLE;
}
