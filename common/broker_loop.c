/*
 * broker_loop.c - the broker in the caller's event loop: what to poll and
 * how long to wait, broker_process() reading what the node sent without
 * blocking, and the dispatch of every frame to the part it concerns
 * (publish, consume, questions, declarations, the connection itself);
 * with the replies of the RPCs that wait for their answer.
 */
#include "broker.h"

#include <sys/ioctl.h>

#include "broker_int.h"
#include "log.h"
#include "netprobe.h"

/* broker_process() handles at most this many frames per call so that one
 * busy connection cannot starve the rest of the event loop; what is left
 * is reported by broker_wants_read_now() or by poll(). */
#define MAX_FRAMES_PER_CALL 4096

/* ---- polling and reading ---------------------------------------------- */

int broker_fd(const struct broker *b)
{
    if (!broker_connected(b))
        return -1;
    return amqp_get_sockfd(b->conn);
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

int broker_wants_read_now(const struct broker *b)
{
    if (!broker_connected(b))
        return 0;
    return amqp_frames_enqueued(b->conn) || amqp_data_in_buffer(b->conn);
}

/* How long a node may stay silent: two heartbeats, the AMQP rule, less a
 * tenth, so that the loss is declared within two heartbeats of the last
 * frame even when the loop wakes a little late. A live node sends
 * something at least every half heartbeat (RabbitMQ's heartbeat sender),
 * so 1.9 heartbeats of silence are more than three missed beats. */
static int64_t broker_silence_ms(int hb)
{
    return (int64_t)hb * 1900;
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
    int64_t left = b->last_frame_ms + broker_silence_ms(hb) - clock_mono_ms();
    if (left < 0)
        left = 0;
    return left < hb * 1000 / 2 ? (int)left : hb * 1000 / 2;
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
            b->last_frame_ms = clock_mono_ms();
        int rc = amqp_simple_wait_frame_noblock(b->conn, &f, &zero);
        if (rc == AMQP_STATUS_TIMEOUT)
            break;
        if (rc != AMQP_STATUS_OK) {
            broker_set_err(b, "AMQP connection to %s:%d lost: %s", b->host, b->port,
                           amqp_error_string2(rc));
            log_warning("%s", b->err);
            b->lost_to_silence = rc == AMQP_STATUS_HEARTBEAT_TIMEOUT;
            broker_mark_dead(b);
            break;
        }
        b->last_frame_ms = clock_mono_ms();
        broker_handle_frame(b, &f);
    }
    int hb = amqp_get_heartbeat(b->conn);
    if (!b->dead && hb > 0 && clock_mono_ms() - b->last_frame_ms >= broker_silence_ms(hb)) {
        broker_set_err(b,
                       "AMQP connection to %s:%d lost: nothing from the node for %.1f s (2 "
                       "heartbeats of %d s, "
                       "less a tenth)",
                       b->host, b->port, (double)broker_silence_ms(hb) / 1000.0, hb);
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

/* ---- replies from RPCs ------------------------------------------------ */

void broker_send_channel_close_ok(struct broker *b, amqp_channel_t ch)
{
    amqp_channel_close_ok_t ok = {0};
    if (amqp_send_method(b->conn, ch, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok) != AMQP_STATUS_OK)
        broker_mark_dead(b);
}

void broker_send_connection_close_ok(struct broker *b)
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
        b->last_frame_ms = clock_mono_ms();
    switch (r.reply_type) {
    case AMQP_RESPONSE_NORMAL: return RT_OK;
    case AMQP_RESPONSE_NONE:
        broker_set_err(b, "%s: no reply from the broker", what);
        broker_mark_dead(b);
        return RT_RETRY;
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
        broker_set_err(b, "%s: %s", what, amqp_error_string2(r.library_error));
        broker_mark_dead(b);
        return RT_RETRY;
    case AMQP_RESPONSE_SERVER_EXCEPTION: break;
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
