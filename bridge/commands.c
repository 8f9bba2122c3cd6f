#include "commands.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "bridge.h"
#include "buf.h"
#include "clock.h"
#include "codec.h"
#include "log.h"
#include "relay.h"
#include "reverse.h"
#include "statepub.h"

/* ---- checkevent waits ------------------------------------------------ */

static struct commands_wait *commands_wait_by_id(struct commands *c, const char *id)
{
    for (size_t i = 0; i < CONTROL_MAX_CLIENTS; i++)
        if (c->waits[i].cl && strcmp(c->waits[i].id, id) == 0)
            return &c->waits[i];
    return NULL;
}

/* Answers a waiting checkevent and frees its entry. */
static void commands_wait_reply(struct commands_wait *w, json_t *resp)
{
    struct control_client *cl = w->cl;
    memset(w, 0, sizeof(*w));
    control_reply(cl, resp);
}

static void commands_wait_gone(void *arg, struct control_client *cl)
{
    struct commands *c = arg;
    for (size_t i = 0; i < CONTROL_MAX_CLIENTS; i++)
        if (c->waits[i].cl == cl)
            memset(&c->waits[i], 0, sizeof(c->waits[i]));
}

void commands_on_confirm(struct commands *c, const struct core *k, uint64_t tag,
                         enum broker_fate fate)
{
    for (size_t i = 0; i < CONTROL_MAX_CLIENTS; i++) {
        struct commands_wait *w = &c->waits[i];
        if (!w->cl || !w->confirming || w->core != k || w->tag != tag)
            continue;
        w->confirming = 0;
        switch (fate) {
        case BROKER_ACKED:
            c->sync_confirmed++;
            return; /* now the server's sync_done is awaited */
        case BROKER_NACKED:
            commands_wait_reply(w, json_pack("{s:b,s:s}", "ok", 0, "error",
                                             "the broker refused the sync request (nack): "
                                             "try again"));
            return;
        case BROKER_RETURNED:
            commands_wait_reply(w, json_pack("{s:b,s:s}", "ok", 0, "error",
                                             "the sync request could not be routed: no forward "
                                             "queue is bound for this client on the broker"));
            return;
        case BROKER_LOST:
            commands_wait_reply(w, json_pack("{s:b,s:s}", "ok", 0, "error",
                                             "the broker connection was lost before the sync "
                                             "request was confirmed: try again"));
            return;
        }
    }
}

void commands_on_sync_done(struct commands *c, const char *id, uint64_t count, uint64_t applied)
{
    struct commands_wait *w = commands_wait_by_id(c, id);
    if (!w) {
        log_info("sync \"%s\" done: %" PRIu64 " states received, %" PRIu64
                 " tasks updated (nobody waits for it any more)",
                 id, count, applied);
        return;
    }
    log_info("checkevent: sync \"%s\" done, %" PRIu64 " states received, %" PRIu64 " tasks updated",
             id, count, applied);
    commands_wait_reply(w, json_pack("{s:b,s:I,s:I}", "ok", 1, "published", (json_int_t)count,
                                     "updated", (json_int_t)applied));
}

int64_t commands_expire(struct commands *c, int64_t mono)
{
    int64_t next = -1;
    for (size_t i = 0; i < CONTROL_MAX_CLIENTS; i++) {
        struct commands_wait *w = &c->waits[i];
        if (!w->cl)
            continue;
        if (mono >= w->deadline) {
            log_warning("checkevent: no sync_done for \"%s\" within %d s", w->id, w->timeout_s);
            char msg[128];
            snprintf(msg, sizeof(msg), "no answer from the server side within %d s", w->timeout_s);
            commands_wait_reply(w, json_pack("{s:b,s:s}", "ok", 0, "error", msg));
        } else if (next < 0 || w->deadline < next) {
            next = w->deadline;
        }
    }
    return next;
}

size_t commands_waiting(const struct commands *c)
{
    size_t waiting = 0;
    for (size_t i = 0; i < CONTROL_MAX_CLIENTS; i++)
        waiting += c->waits[i].cl != NULL;
    return waiting;
}

/* A sync id: random hex, so that a restarted daemon never mistakes an old
 * request's sync_done for a new one. */
static void commands_sync_id(char out[2 * COMMANDS_SYNC_ID_BYTES + 1])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char raw[COMMANDS_SYNC_ID_BYTES];
    size_t got = 0;

    while (got < sizeof(raw)) {
        ssize_t n = getrandom(raw + got, sizeof(raw) - got, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    if (got < sizeof(raw)) {
        /* No entropy source (a very old kernel): the time and the pid
         * still tell this request from the earlier ones. */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t x = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
        x ^= (uint64_t)getpid() << 32;
        for (size_t i = got; i < sizeof(raw);
             i++, x = x * 6364136223846793005u + 1442695040888963407u)
            raw[i] = (unsigned char)(x >> 56);
    }
    for (size_t i = 0; i < sizeof(raw); i++) {
        out[2 * i] = hex[raw[i] >> 4];
        out[2 * i + 1] = hex[raw[i] & 15];
    }
    out[2 * COMMANDS_SYNC_ID_BYTES] = '\0';
}

/* ---- the handlers ---------------------------------------------------- */

static void commands_ping(void *arg, struct control_client *cl, json_t *req)
{
    struct daemon *d = arg;
    (void)req;
    control_reply(cl, json_pack("{s:b,s:s,s:I,s:s,s:b}", "ok", 1, "instance", d->cfg->instance,
                                "pid", (json_int_t)getpid(), "version", RT_VERSION, "connected",
                                d->core && d->core->up));
}

static void commands_wake(void *arg, struct control_client *cl, json_t *req)
{
    struct daemon *d = arg;
    json_t *rec = json_object_get(req, "reconcile");
    if (rec && !json_is_boolean(rec)) {
        control_reply_error(cl, "\"reconcile\" must be true or false");
        return;
    }
    if (!d->cfg->client.enabled) {
        control_reply_error(cl, "instance \"%s\" has no client role: there is nothing to wake",
                            d->cfg->instance);
        return;
    }
    /* Without a relay (a rebuild failed) the event waits in the outbox for
     * the relay the next rebuild makes: it is recorded all the same. */
    if (d->core && d->core->relay) {
        relay_wake(d->core->relay, json_is_true(rec));
        d->core->relay_next = 0;
    }
    control_reply(cl, json_pack("{s:b}", "ok", 1));
}

/* Why a checkevent cannot be taken now, if it cannot: answers cl and
 * returns -1. Otherwise returns 0 with the wait it asks for in
 * *timeout_s. */
static int commands_checkevent_refused(struct daemon *d, struct control_client *cl, json_t *req,
                                       int *timeout_s)
{
    struct core *k = d->core;
    json_t *jt = json_object_get(req, "timeout");

    *timeout_s = COMMANDS_CHECKEVENT_DEFAULT_S;
    if (jt) {
        if (!json_is_integer(jt) || json_integer_value(jt) < 1 ||
            json_integer_value(jt) > COMMANDS_CHECKEVENT_MAX_S) {
            control_reply_error(cl, "\"timeout\" must be 1..%d seconds", COMMANDS_CHECKEVENT_MAX_S);
            return -1;
        }
        *timeout_s = (int)json_integer_value(jt);
    }
    if (!d->cfg->client.enabled) {
        control_reply_error(cl, "instance \"%s\" has no client role: checkevent asks the server "
                                "side for the state of this client's tasks",
                            d->cfg->instance);
        return -1;
    }
    if (!k || !k->rev) {
        control_reply_error(cl, "the components are not running (see the log): try again later");
        return -1;
    }
    if (!k->up || !broker_connected(k->br)) {
        control_reply_error(cl, "the broker is not connected: %s",
                            k->last_error[0] ? k->last_error : "connecting");
        return -1;
    }
    if (d->stopping || d->pending) {
        control_reply_error(cl, "remotetaskd is %s: try again in a moment",
                            d->stopping ? "stopping" : "reloading its configuration");
        return -1;
    }
    return 0;
}

/* Publishes the sync request of w (its id already drawn) on k's broker,
 * the reverse applier told to expect its states first. On failure answers
 * cl and returns -1; w stays free. */
static int commands_sync_publish(struct daemon *d, struct core *k, struct commands_wait *w,
                                 struct control_client *cl, uint64_t *tag)
{
    struct codec_msg m;
    struct buf body;
    char message_id[BROKER_CLIENT_MAX + 2 * COMMANDS_SYNC_ID_BYTES + 16];
    char err[256];

    codec_msg_init(&m, CODEC_SYNC);
    m.client = d->cfg->client.id;
    m.task = 0;
    m.seq = 0;
    m.ts = clock_wall_ms();
    m.sync.id = w->id;
    buf_init(&body, CODEC_MAX_BODY);
    if (codec_encode(&m, &body, err, sizeof(err)) < 0) {
        buf_release(&body);
        memset(w, 0, sizeof(*w));
        control_reply_error(cl, "cannot encode the sync request: %s", err);
        return -1;
    }
    /* Registered before publishing: the states the server sends for it
     * may come before anything else is heard of the request. */
    reverse_expect_sync(k->rev, w->id);
    snprintf(message_id, sizeof(message_id), "%s:sync:%s", d->cfg->client.id, w->id);
    struct broker_props props = {.message_id = message_id};
    rt_status st = broker_publish(k->br, BROKER_EXCHANGE_FORWARD, d->cfg->client.id, &props,
                                  body.data, body.len, tag);
    buf_release(&body);
    if (st != RT_OK) {
        memset(w, 0, sizeof(*w));
        control_reply_error(cl, "the broker did not take the sync request: %s",
                            broker_blocked(k->br) ? "it blocks publishing (resource alarm)"
                                                  : broker_strerror(k->br));
        return -1;
    }
    return 0;
}

static void commands_checkevent(void *arg, struct control_client *cl, json_t *req)
{
    struct daemon *d = arg;
    struct commands *c = &d->cmds;
    struct core *k = d->core;
    struct commands_wait *w = NULL;
    uint64_t tag = 0;
    int timeout_s;

    if (commands_checkevent_refused(d, cl, req, &timeout_s) < 0)
        return;
    for (size_t i = 0; i < CONTROL_MAX_CLIENTS && !w; i++)
        if (!c->waits[i].cl)
            w = &c->waits[i];
    if (!w) {
        control_reply_error(cl, "too many checkevent commands waiting: try again later");
        return;
    }
    commands_sync_id(w->id);
    if (commands_sync_publish(d, k, w, cl, &tag) < 0)
        return;
    c->sync_published++;
    w->cl = cl;
    w->timeout_s = timeout_s;
    w->deadline = clock_mono_ms() + (int64_t)timeout_s * 1000;
    w->core = k;
    w->tag = tag;
    w->confirming = 1;
    log_info("checkevent: sync request \"%s\" published, waiting up to %d s", w->id, timeout_s);
    control_defer(cl, timeout_s * 1000 + COMMANDS_CHECKEVENT_SLACK_MS, commands_wait_gone, c);
}

static void commands_resync(void *arg, struct control_client *cl, json_t *req)
{
    struct daemon *d = arg;
    (void)req;
    if (!d->cfg->server.enabled) {
        control_reply_error(cl, "instance \"%s\" has no server role: there is no state to "
                                "publish again",
                            d->cfg->instance);
        return;
    }
    if (!d->core || !d->core->sp) {
        control_reply_error(cl, "the components are not running (see the log): the first "
                                "cycle after they start publishes the state");
        return;
    }
    statepub_kick(d->core->sp, clock_mono_ms());
    d->core->sp_next = 0;
    control_reply(cl, json_pack("{s:b}", "ok", 1));
}

static void commands_status_reply(struct daemon *d, struct control_client *cl)
{
    json_t *resp = daemon_status_json(d);
    if (!resp) {
        control_reply_error(cl, "out of memory");
        return;
    }
    control_reply(cl, resp);
}

static void commands_status_gone(void *arg, struct control_client *cl)
{
    struct commands *c = arg;
    for (size_t i = 0; i < CONTROL_MAX_CLIENTS; i++)
        if (c->status_cl[i] == cl)
            c->status_cl[i] = NULL;
}

int64_t commands_status_flush(struct daemon *d, int64_t mono)
{
    struct commands *c = &d->cmds;
    int64_t next = -1;
    int answered = daemon_status_ready(d);
    for (size_t i = 0; i < CONTROL_MAX_CLIENTS; i++) {
        struct control_client *cl = c->status_cl[i];
        if (!cl)
            continue;
        if (answered || mono >= c->status_deadline[i]) {
            c->status_cl[i] = NULL;
            commands_status_reply(d, cl);
        } else if (next < 0 || c->status_deadline[i] < next) {
            next = c->status_deadline[i];
        }
    }
    return next;
}

static void commands_status(void *arg, struct control_client *cl, json_t *req)
{
    struct daemon *d = arg;
    struct commands *c = &d->cmds;
    (void)req;
    daemon_status_refresh(d);
    /* A blocked connection is not read by the broker (a resource alarm),
     * and an unreachable one answers nothing: waiting for depths would only
     * delay the answer that says so. */
    if (daemon_status_ready(d) || strcmp(core_broker_state(d->core), "connected") != 0) {
        commands_status_reply(d, cl);
        return;
    }
    for (size_t i = 0; i < CONTROL_MAX_CLIENTS; i++) {
        if (c->status_cl[i])
            continue;
        c->status_cl[i] = cl;
        c->status_deadline[i] = clock_mono_ms() + COMMANDS_STATUS_WAIT_MS;
        control_defer(cl, COMMANDS_STATUS_WAIT_MS + COMMANDS_CHECKEVENT_SLACK_MS,
                      commands_status_gone, c);
        return;
    }
    commands_status_reply(d, cl); /* never: one slot per control client */
}

/* The commands of the control socket, one line each. */
static const struct control_command commands_list[] = {
    {"ping", commands_ping},
    {"wake", commands_wake},
    {"checkevent", commands_checkevent},
    {"status", commands_status},
    {"resync", commands_resync},
};

const struct control_command *commands_table(size_t *n)
{
    *n = sizeof(commands_list) / sizeof(commands_list[0]);
    return commands_list;
}
