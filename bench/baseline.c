/*
 * baseline.c - what the broker itself can do, measured with librabbitmq
 * alone, so that the bridge's figures can be set beside it.
 *
 *   rtbench_baseline --port P --user U --password-file F [--host H]
 *                    [--count N] [--outstanding K] [--prefetch Q] [--note TEXT]
 *
 * It encodes one typical CODEC_TASK message (common/codec.h) with the
 * note the benchmark gives its tasks, so the body has the bridge's own
 * size, declares a private durable classic queue, publishes N persistent
 * copies through the default exchange with publisher confirms, keeping at
 * most K unconfirmed (pipelined, as the relay does), then consumes them
 * with manual acks and a prefetch of Q, acking each one (as the forward
 * applier does). It prints one line:
 *
 *   size=B count=N publish_s=S publish_rate=R consume_s=S consume_rate=R
 *
 * and deletes its queue. The password comes from a file (its first line),
 * never from argv. Exit 0 on success, 1 on any failure (the reason on
 * stderr), 2 on a usage error.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "codec.h"
#include "rmq.h"

#define BASELINE_PASSWORD_MAX 256
#define BASELINE_FRAME_MAX    131072
/* How long any single wait for the broker may take before the run is
 * declared failed: a healthy local node answers in milliseconds. */
#define BASELINE_WAIT_S 30

struct baseline_opts {
    const char *host;
    int port;
    const char *user;
    const char *password_file;
    long count;
    long outstanding;
    int prefetch;
    const char *note;
};

static double baseline_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Reads the first line of path into buf (at most len - 1 bytes). */
static int baseline_read_password(const char *path, char *buf, size_t len)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "baseline: cannot open the password file \"%s\": %s\n", path,
                strerror(errno));
        return -1;
    }
    if (!fgets(buf, (int)len, f)) {
        fprintf(stderr, "baseline: the password file \"%s\" is empty\n", path);
        fclose(f);
        return -1;
    }
    fclose(f);
    buf[strcspn(buf, "\r\n")] = '\0';
    return 0;
}

/* Describes a failed RPC reply; returns 0 when it was a normal reply. */
static int baseline_check(amqp_rpc_reply_t r, const char *what)
{
    switch (r.reply_type) {
    case AMQP_RESPONSE_NORMAL:
        return 0;
    case AMQP_RESPONSE_NONE:
        fprintf(stderr, "baseline: %s: no reply\n", what);
        break;
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
        fprintf(stderr, "baseline: %s: %s\n", what, amqp_error_string2(r.library_error));
        break;
    case AMQP_RESPONSE_SERVER_EXCEPTION:
        if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
            amqp_connection_close_t *m = r.reply.decoded;
            fprintf(stderr, "baseline: %s: connection closed: %.*s\n", what,
                    (int)m->reply_text.len, (const char *)m->reply_text.bytes);
        } else if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
            amqp_channel_close_t *m = r.reply.decoded;
            fprintf(stderr, "baseline: %s: channel closed: %.*s\n", what,
                    (int)m->reply_text.len, (const char *)m->reply_text.bytes);
        } else {
            fprintf(stderr, "baseline: %s: server method 0x%08x\n", what, r.reply.id);
        }
        break;
    }
    return -1;
}

/* The body of a typical forward message: what the relay publishes for one
 * of the benchmark's tasks. */
static int baseline_body(const char *note, struct buf *out)
{
    struct codec_msg m;
    char err[256];
    codec_msg_init(&m, CODEC_TASK);
    m.client = "bench";
    m.task = 1000000;
    m.seq = 1;
    m.ts = 1700000000000;
    m.fwd.department = 12;
    m.fwd.name = "bench-1000000";
    m.fwd.type = "";
    m.fwd.note = (char *)note;
    m.fwd.deadline = "";
    m.fwd.item = "";
    m.fwd.account = "";
    m.fwd.status = 0;
    if (codec_encode(&m, out, err, sizeof(err)) < 0) {
        fprintf(stderr, "baseline: cannot encode the message: %s\n", err);
        return -1;
    }
    return 0;
}

/* Reads the frames waiting (or, when block, waits up to BASELINE_WAIT_S for
 * one) and advances *confirmed with every basic.ack. A nack or anything
 * unexpected is a failure: the baseline must measure a clean run. */
static int baseline_read_confirms(amqp_connection_state_t conn, uint64_t *confirmed, int block)
{
    for (;;) {
        amqp_frame_t frame;
        struct timeval tv = {block ? BASELINE_WAIT_S : 0, 0};
        int rc = amqp_simple_wait_frame_noblock(conn, &frame, &tv);
        if (rc == AMQP_STATUS_TIMEOUT) {
            if (block) {
                fprintf(stderr, "baseline: no confirm within %d s\n", BASELINE_WAIT_S);
                return -1;
            }
            return 0;
        }
        if (rc != AMQP_STATUS_OK) {
            fprintf(stderr, "baseline: reading confirms: %s\n", amqp_error_string2(rc));
            return -1;
        }
        if (frame.frame_type != AMQP_FRAME_METHOD)
            continue;
        if (frame.payload.method.id == AMQP_BASIC_ACK_METHOD) {
            const amqp_basic_ack_t *ack = frame.payload.method.decoded;
            /* With multiple set, every tag up to this one is confirmed. */
            if (ack->delivery_tag > *confirmed)
                *confirmed = ack->multiple ? ack->delivery_tag : *confirmed + 1;
        } else if (frame.payload.method.id == AMQP_BASIC_NACK_METHOD) {
            fprintf(stderr, "baseline: the broker nacked a publish\n");
            return -1;
        } else {
            fprintf(stderr, "baseline: unexpected method 0x%08x while publishing\n",
                    frame.payload.method.id);
            return -1;
        }
        block = 0;
    }
}

static int baseline_publish(amqp_connection_state_t conn, amqp_bytes_t queue,
                            const struct buf *body, const struct baseline_opts *o, double *secs)
{
    amqp_basic_properties_t props;
    uint64_t confirmed = 0;
    double t0 = baseline_now();

    memset(&props, 0, sizeof(props));
    props._flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_CONTENT_TYPE_FLAG;
    props.delivery_mode = AMQP_DELIVERY_PERSISTENT;
    props.content_type = amqp_cstring_bytes("application/x-msgpack");
    amqp_bytes_t payload = {body->len, body->data};

    for (long i = 1; i <= o->count; i++) {
        int rc = amqp_basic_publish(conn, 1, amqp_empty_bytes, queue, 0, 0, &props, payload);
        if (rc != AMQP_STATUS_OK) {
            fprintf(stderr, "baseline: publish %ld failed: %s\n", i, amqp_error_string2(rc));
            return -1;
        }
        /* Take what has arrived without waiting; wait only when the
         * window of unconfirmed messages is full. */
        if (baseline_read_confirms(conn, &confirmed, 0) < 0)
            return -1;
        while ((uint64_t)i - confirmed >= (uint64_t)o->outstanding) {
            if (baseline_read_confirms(conn, &confirmed, 1) < 0)
                return -1;
        }
    }
    while (confirmed < (uint64_t)o->count) {
        if (baseline_read_confirms(conn, &confirmed, 1) < 0)
            return -1;
    }
    *secs = baseline_now() - t0;
    return 0;
}

static int baseline_consume(amqp_connection_state_t conn, amqp_bytes_t queue,
                            const struct baseline_opts *o, double *secs)
{
    amqp_basic_qos(conn, 1, 0, (uint16_t)o->prefetch, 0);
    if (baseline_check(amqp_get_rpc_reply(conn), "basic.qos") < 0)
        return -1;
    double t0 = baseline_now();
    amqp_basic_consume(conn, 1, queue, amqp_empty_bytes, 0, 0, 0, amqp_empty_table);
    if (baseline_check(amqp_get_rpc_reply(conn), "basic.consume") < 0)
        return -1;
    for (long got = 0; got < o->count;) {
        amqp_envelope_t env;
        struct timeval tv = {BASELINE_WAIT_S, 0};
        amqp_maybe_release_buffers(conn);
        amqp_rpc_reply_t r = amqp_consume_message(conn, &env, &tv, 0);
        if (r.reply_type != AMQP_RESPONSE_NORMAL) {
            fprintf(stderr, "baseline: consumed %ld of %ld, then: ", got, o->count);
            baseline_check(r, "consume");
            return -1;
        }
        int rc = amqp_basic_ack(conn, 1, env.delivery_tag, 0);
        amqp_destroy_envelope(&env);
        if (rc != AMQP_STATUS_OK) {
            fprintf(stderr, "baseline: ack failed: %s\n", amqp_error_string2(rc));
            return -1;
        }
        got++;
    }
    *secs = baseline_now() - t0;
    return 0;
}

static int baseline_usage(void)
{
    fprintf(stderr, "usage: rtbench_baseline --port P --user U --password-file F [--host H]\n"
                    "       [--count N] [--outstanding K] [--prefetch Q] [--note TEXT]\n");
    return 2;
}

int main(int argc, char **argv)
{
    struct baseline_opts o = {"127.0.0.1", 0, NULL, NULL, 20000, 256, 256, ""};
    char password[BASELINE_PASSWORD_MAX];
    char qname[128];
    struct buf body;
    double pub_s = 0, con_s = 0;
    int status = 1;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc)
            return baseline_usage();
        const char *v = argv[++i];
        if (!strcmp(a, "--host"))
            o.host = v;
        else if (!strcmp(a, "--port"))
            o.port = atoi(v);
        else if (!strcmp(a, "--user"))
            o.user = v;
        else if (!strcmp(a, "--password-file"))
            o.password_file = v;
        else if (!strcmp(a, "--count"))
            o.count = atol(v);
        else if (!strcmp(a, "--outstanding"))
            o.outstanding = atol(v);
        else if (!strcmp(a, "--prefetch"))
            o.prefetch = atoi(v);
        else if (!strcmp(a, "--note"))
            o.note = v;
        else
            return baseline_usage();
    }
    if (o.port <= 0 || o.port > 65535 || !o.user || !o.password_file || o.count <= 0 ||
        o.outstanding <= 0 || o.prefetch <= 0 || o.prefetch > 65535)
        return baseline_usage();
    if (baseline_read_password(o.password_file, password, sizeof(password)) < 0)
        return 1;

    buf_init(&body, CODEC_MAX_BODY);
    if (baseline_body(o.note, &body) < 0)
        goto out_body;

    amqp_connection_state_t conn = amqp_new_connection();
    if (!conn) {
        fprintf(stderr, "baseline: out of memory\n");
        goto out_body;
    }
    amqp_socket_t *sock = amqp_tcp_socket_new(conn);
    struct timeval ctv = {BASELINE_WAIT_S, 0};
    if (!sock || amqp_socket_open_noblock(sock, o.host, o.port, &ctv) != AMQP_STATUS_OK) {
        fprintf(stderr, "baseline: cannot connect to %s:%d\n", o.host, o.port);
        goto out_conn;
    }
    if (baseline_check(amqp_login(conn, "/", 0, BASELINE_FRAME_MAX, 0, AMQP_SASL_METHOD_PLAIN,
                                  o.user, password),
                       "login") < 0)
        goto out_conn;
    memset(password, 0, sizeof(password));
    amqp_channel_open(conn, 1);
    if (baseline_check(amqp_get_rpc_reply(conn), "channel.open") < 0)
        goto out_conn;
    amqp_confirm_select(conn, 1);
    if (baseline_check(amqp_get_rpc_reply(conn), "confirm.select") < 0)
        goto out_conn;
    snprintf(qname, sizeof(qname), "remotetask.bench.baseline.%ld", (long)getpid());
    amqp_bytes_t queue = amqp_cstring_bytes(qname);
    amqp_queue_declare(conn, 1, queue, 0, 1, 0, 0, amqp_empty_table);
    if (baseline_check(amqp_get_rpc_reply(conn), "queue.declare") < 0)
        goto out_conn;

    if (baseline_publish(conn, queue, &body, &o, &pub_s) < 0)
        goto out_queue;
    if (baseline_consume(conn, queue, &o, &con_s) < 0)
        goto out_queue;
    printf("size=%zu count=%ld publish_s=%.3f publish_rate=%.0f consume_s=%.3f "
           "consume_rate=%.0f\n",
           body.len, o.count, pub_s, (double)o.count / pub_s, con_s, (double)o.count / con_s);
    status = 0;

out_queue:
    /* A failed channel cannot delete; a fresh channel can. */
    amqp_channel_open(conn, 2);
    if (amqp_get_rpc_reply(conn).reply_type == AMQP_RESPONSE_NORMAL) {
        amqp_queue_delete(conn, 2, queue, 0, 0);
        if (baseline_check(amqp_get_rpc_reply(conn), "queue.delete") < 0)
            status = 1;
    }
    amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
out_conn:
    amqp_destroy_connection(conn);
out_body:
    buf_release(&body);
    memset(password, 0, sizeof(password));
    return status;
}
