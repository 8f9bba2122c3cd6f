#include "daemon.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "backoff.h"
#include "billmgr.h"
#include "broker.h"
#include "codec.h"
#include "config_opts.h"
#include "control.h"
#include "forward.h"
#include "log.h"
#include "metrics.h"
#include "metrics_http.h"
#include "relay.h"
#include "reverse.h"
#include "statepub.h"
#include "store.h"

/* Broker reconnects: 500 ms doubling up to 30 s. A refused login or TLS
 * failure waits the longest delay at once. */
#define DAEMON_RECONNECT_BASE_MS 500
#define DAEMON_RECONNECT_MAX_MS  30000
/* Connection failures logged at warning level one by one; after these,
 * only a changed reason, and a reminder every DAEMON_RECONNECT_REMIND
 * attempts (about half an hour at the longest delay). */
#define DAEMON_RECONNECT_LOUD   3
#define DAEMON_RECONNECT_REMIND 60
/* The longest ppoll() wait. Component ticks are scheduled on the wall
 * clock, which may jump: waking now and then keeps a jump from stalling
 * them. */
#define DAEMON_MAX_WAIT_MS 5000
/* How soon a failed rebuild of the components is tried again. */
#define DAEMON_REBUILD_RETRY_MS 5000
/* Room for a reason passed between the daemon's own functions. */
#define DAEMON_ERR_MAX 512
/* checkevent: how long it waits for the server's sync_done by default, and
 * at most. The control client is kept a little longer than that, so that
 * the daemon's own answer ("no answer from the server side") reaches it
 * before control.c's generic timeout would. */
#define DAEMON_CHECKEVENT_DEFAULT_S 60
#define DAEMON_CHECKEVENT_MAX_S     3600
#define DAEMON_CHECKEVENT_SLACK_MS  2000
/* Random bytes of a sync request's id (hex: twice as many characters). */
#define DAEMON_SYNC_ID_BYTES 16
/* Queue depths are asked from the broker (one passive declare per queue,
 * each bounded by amqp.connect_timeout) when the status command runs, and
 * reused for this long by a status that follows at once; a scrape of the
 * metrics reuses them for up to DAEMON_QUEUES_METRICS_AGE_MS, so that a
 * scraper cannot make the loop talk to the broker more often. */
#define DAEMON_QUEUES_STATUS_AGE_MS  1000
#define DAEMON_QUEUES_METRICS_AGE_MS 10000
/* Kinds of API errors counted one by one for the status command; more
 * kinds count as "other". The kinds come from the remote API's answers. */
#define DAEMON_API_ERR_KINDS 16
/* Meta keys the components keep (read here for the status command). */
#define DAEMON_META_LAST_FORWARD_APPLY   "last_forward_apply_ms"
#define DAEMON_META_LAST_FORWARD_PUBLISH "last_forward_publish_ms"
#define DAEMON_META_LAST_REVERSE_APPLY   "last_reverse_apply_ms"

/* Set by the signal handlers, read by the loop: the only thing a handler
 * does. Signals are blocked outside ppoll(), so they are seen at once. */
static volatile sig_atomic_t daemon_sig_stop;
static volatile sig_atomic_t daemon_sig_hup;

struct daemon;

/* What one configuration builds and a reload replaces: the BILLmanager
 * client, the broker connection and the components. It is the broker's
 * callback argument, so that a broker being torn down reports its lost
 * publishes to the components built with it and to no others. */
struct daemon_core {
    struct daemon *d;   /* the owner: waits, metrics and totals live there */
    struct config *cfg; /* borrowed from the daemon */
    struct store *st;   /* borrowed from the daemon */
    struct billmgr *bm;
    struct broker *br;
    struct relay *relay;  /* client role, else NULL */
    struct reverse *rev;  /* client role, else NULL */
    struct forward *fwd;  /* server role, else NULL */
    struct statepub *sp;  /* server role, else NULL */
    const char **clients; /* ids to declare, borrowed from cfg */
    size_t n_clients;

    int up;        /* connected and declared */
    int cancelled; /* the broker cancelled a consumer: reconnect */
    char cancelled_queue[BROKER_NAME_MAX];
    struct backoff backoff;
    int64_t reconnect_at; /* monotonic ms */
    unsigned failures;    /* connection attempts failed in a row */
    char last_error[DAEMON_ERR_MAX];
    int64_t relay_next; /* wall-clock ms: when the component wants a tick */
    int64_t fwd_next;
    int64_t rev_next;
    int64_t sp_next;
};

/* A checkevent waiting for the server's sync_done. */
struct daemon_wait {
    struct control_client *cl; /* NULL: the entry is free */
    char id[2 * DAEMON_SYNC_ID_BYTES + 1];
    int timeout_s;
    int64_t deadline;         /* monotonic ms */
    struct daemon_core *core; /* the core whose broker published the request */
    uint64_t tag;             /* its delivery tag while the confirm is awaited */
    int confirming;
};

/* One queue of the status command and the metrics, as the broker last
 * reported it. */
struct daemon_queue {
    char name[BROKER_NAME_MAX];
    uint32_t ready;
    uint32_t consumers;
    int known; /* 0: the broker could not say (not connected, no such queue) */
};

/* Counters of the components, summed over every core this daemon ran: a
 * reload rebuilds the components with counters at zero, and Prometheus
 * counters must never go down. */
struct daemon_totals {
    struct relay_stats relay;
    struct forward_stats fwd;
    struct reverse_stats rev;
    struct statepub_stats sp;
};

/* API errors of one kind ($type, or http, timeout, transport...). */
struct daemon_api_err {
    char type[BILLMGR_ERR_TYPE_MAX];
    uint64_t count;
};

struct daemon {
    struct config *cfg;
    struct store *st;
    struct control *ctl;
    struct daemon_core *core; /* NULL only after a failed rebuild */
    int64_t rebuild_at;       /* monotonic ms, when core is NULL */

    struct config *pending; /* a valid new configuration waiting for the drain */
    int64_t reload_deadline;
    int stopping;
    int64_t stop_deadline;

    struct pollfd *fds;
    size_t fds_cap;

    int64_t started_ms;   /* wall clock */
    int64_t started_mono; /* for the uptime */
    uint64_t connects;    /* broker connections established, all cores */

    struct daemon_wait waits[CONTROL_MAX_CLIENTS];
    uint64_t sync_published; /* checkevent requests published, confirmed */
    uint64_t sync_confirmed;

    struct daemon_totals base; /* counters of the cores already freed */

    struct daemon_queue *queues;
    size_t n_queues;
    int64_t queues_mono; /* when they were asked, monotonic ms; 0 = never */

    /* The BILLmanager as the calls found it. */
    uint64_t api_calls;
    uint64_t api_errors;
    struct daemon_api_err api_errs[DAEMON_API_ERR_KINDS];
    uint64_t api_errs_other;
    int api_last_ok;       /* the last call succeeded; -1 = no call yet */
    int64_t api_last_ok_ms;
    int64_t api_last_error_ms;
    char api_last_error[BILLMGR_ERR_TYPE_MAX + 128];

    struct metrics *metrics;
    struct metrics_http *mh; /* NULL when metrics.listen is not set */
    uint64_t metrics_refused;
};

static int64_t daemon_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The store's time base, handed to the components. */
static int64_t daemon_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void daemon_on_signal(int sig)
{
    if (sig == SIGHUP)
        daemon_sig_hup = 1;
    else
        daemon_sig_stop = 1;
}

/* ---- broker callbacks ---------------------------------------------- */

static void daemon_wait_confirmed(struct daemon_core *k, uint64_t tag, enum broker_fate fate);

static void daemon_on_confirm(void *arg, uint64_t tag, enum broker_fate fate)
{
    struct daemon_core *k = arg;
    /* Each component keeps the tags it published and ignores the others;
     * so do the checkevent requests the daemon publishes itself. */
    if (k->relay)
        relay_on_confirm(k->relay, tag, fate);
    if (k->rev)
        reverse_on_confirm(k->rev, tag, fate);
    if (k->fwd)
        forward_on_confirm(k->fwd, tag, fate);
    if (k->sp)
        statepub_on_confirm(k->sp, tag, fate);
    daemon_wait_confirmed(k, tag, fate);
}

static int daemon_has_prefix(const char *s, const char *prefix)
{
    return s && strncmp(s, prefix, strlen(prefix)) == 0;
}

static void daemon_on_delivery(void *arg, const struct broker_delivery *d)
{
    struct daemon_core *k = arg;
    /* The queue tells the direction: the server consumes the forward
     * queues of its clients, the client its own reverse queue. */
    if (k->fwd && daemon_has_prefix(d->queue, BROKER_EXCHANGE_FORWARD ".")) {
        forward_on_delivery(k->fwd, d);
        return;
    }
    if (k->rev && daemon_has_prefix(d->queue, BROKER_EXCHANGE_REVERSE ".")) {
        reverse_on_delivery(k->rev, d);
        return;
    }
    /* A delivery without a consumer of ours goes back to its queue for
     * whoever consumes it. */
    log_warning("delivery from queue \"%s\" with no component to take it: requeued", d->queue);
    broker_reject(k->br, d->delivery_tag, 1);
}

static void daemon_on_cancel(void *arg, const char *queue)
{
    struct daemon_core *k = arg;
    /* The queue was deleted under us. Reconnecting declares it again and
     * consumes it again; that cannot be done from inside a callback. */
    k->cancelled = 1;
    snprintf(k->cancelled_queue, sizeof(k->cancelled_queue), "%s", queue ? queue : "");
}

/* ---- the core: billmgr, broker, components --------------------------- */

static void daemon_core_free(struct daemon_core *k)
{
    if (!k)
        return;
    /* The order matters (relay.h, forward.h): the broker's LOST reports go
     * to live components; billmgr_free cancels the components' API calls
     * without running their callbacks, so the components go last. */
    if (k->br)
        broker_disconnect(k->br);
    billmgr_free(k->bm);
    broker_free(k->br);
    relay_free(k->relay);
    reverse_free(k->rev);
    forward_free(k->fwd);
    statepub_free(k->sp);
    free(k->clients);
    free(k);
}

/* Adds id to the list to declare unless it is there already. */
static void daemon_core_add_client(struct daemon_core *k, const char *id)
{
    for (size_t i = 0; i < k->n_clients; i++)
        if (strcmp(k->clients[i], id) == 0)
            return;
    k->clients[k->n_clients++] = id;
}

static void daemon_on_api_call(void *arg, const char *func, rt_status status,
                               const char *err_type, double seconds);
static void daemon_on_sync(void *arg, const char *client, const char *id);
static void daemon_on_sync_done(void *arg, const char *id, uint64_t count, uint64_t applied);
static void daemon_on_forward_applied(void *arg, const char *client, int64_t task,
                                      int64_t event_ms, int64_t applied_ms);

static struct daemon_core *daemon_core_new(struct daemon *d, struct config *cfg, struct store *st,
                                           char *err, size_t errlen)
{
    struct billmgr_opts bo;
    struct broker_opts o;
    char name[128], why[DAEMON_ERR_MAX];

    struct daemon_core *k = calloc(1, sizeof(*k));
    if (!k) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    k->d = d;
    k->cfg = cfg;
    k->st = st;
    backoff_init(&k->backoff, DAEMON_RECONNECT_BASE_MS, DAEMON_RECONNECT_MAX_MS, 0);
    k->clients = calloc(cfg->server.n_clients + 1, sizeof(*k->clients));
    if (!k->clients) {
        snprintf(err, errlen, "out of memory");
        goto free_core;
    }
    if (cfg->client.enabled)
        daemon_core_add_client(k, cfg->client.id);
    for (size_t i = 0; cfg->server.enabled && i < cfg->server.n_clients; i++)
        daemon_core_add_client(k, cfg->server.clients[i].id);

    config_opts_billmgr(cfg, &bo);
    bo.on_call = daemon_on_api_call;
    bo.on_call_arg = d;
    k->bm = billmgr_new(&bo, why, sizeof(why));
    if (!k->bm) {
        snprintf(err, errlen, "cannot set up the BILLmanager client: %s", why);
        goto free_core;
    }
    config_opts_broker(cfg, &o, name, sizeof(name));
    o.on_confirm = daemon_on_confirm;
    o.on_delivery = daemon_on_delivery;
    o.on_cancel = daemon_on_cancel;
    o.cb_arg = k;
    k->br = broker_new(&o, why, sizeof(why));
    if (!k->br) {
        snprintf(err, errlen, "cannot set up the broker connection: %s", why);
        goto free_core;
    }
    if (cfg->client.enabled) {
        k->relay = relay_new(cfg, st, k->bm, k->br, why, sizeof(why));
        if (k->relay)
            k->rev = reverse_new(cfg, st, k->bm, k->br, why, sizeof(why));
        if (!k->relay || !k->rev) {
            snprintf(err, errlen, "cannot set up the client role: %s", why);
            goto free_core;
        }
        reverse_set_sync_done_hook(k->rev, daemon_on_sync_done, k);
    }
    if (cfg->server.enabled) {
        k->fwd = forward_new(cfg, st, k->bm, k->br, why, sizeof(why));
        if (k->fwd)
            k->sp = statepub_new(cfg, st, k->bm, k->br, why, sizeof(why));
        if (!k->fwd || !k->sp) {
            snprintf(err, errlen, "cannot set up the server role: %s", why);
            goto free_core;
        }
        /* consumer/ and producer/ never include each other: the sync
         * requests the applier receives reach the publisher through here. */
        forward_set_sync_hook(k->fwd, daemon_on_sync, k);
        forward_set_applied_hook(k->fwd, daemon_on_forward_applied, k);
    }
    return k;

free_core:
    daemon_core_free(k);
    return NULL;
}

static int daemon_core_idle(const struct daemon_core *k)
{
    if (!k)
        return 1;
    return (!k->relay || relay_idle(k->relay)) && (!k->rev || reverse_idle(k->rev)) &&
           (!k->fwd || forward_idle(k->fwd)) && (!k->sp || statepub_idle(k->sp));
}

static void daemon_core_drain(struct daemon_core *k)
{
    if (!k)
        return;
    if (k->relay)
        relay_drain(k->relay);
    if (k->rev)
        reverse_drain(k->rev);
    if (k->fwd)
        forward_drain(k->fwd);
    if (k->sp)
        statepub_drain(k->sp);
}

/* The connection is gone (or must go): close what is left of it and
 * schedule the next attempt. */
static void daemon_core_lost(struct daemon_core *k, const char *why)
{
    log_warning("lost the broker connection to %s: %s; reconnecting", k->cfg->amqp.uri_redacted,
                why);
    broker_disconnect(k->br);
    k->up = 0;
    k->cancelled = 0;
    k->failures = 0;
    k->last_error[0] = '\0';
    backoff_reset(&k->backoff);
    k->reconnect_at = daemon_mono_ms() + backoff_next(&k->backoff);
}

/* One connection attempt: connect, declare every client's topology, then
 * tell the components. Failures are logged per state change, not per
 * attempt, so that a broker down for hours does not flood the log. */
static void daemon_core_connect(struct daemon_core *k)
{
    const struct config *cfg = k->cfg;
    rt_status st = broker_connect(k->br);
    if (st == RT_OK)
        st = broker_declare(k->br, k->clients, k->n_clients);
    if (st == RT_OK) {
        if (k->failures)
            log_info("connected to the broker at %s as \"%s\" after %u failed attempts",
                     cfg->amqp.uri_redacted, cfg->amqp.user, k->failures);
        else
            log_info("connected to the broker at %s as \"%s\"", cfg->amqp.uri_redacted,
                     cfg->amqp.user);
        k->up = 1;
        k->failures = 0;
        k->last_error[0] = '\0';
        k->d->connects++;
        backoff_reset(&k->backoff);
        if (k->relay)
            relay_on_connected(k->relay);
        if (k->rev)
            reverse_on_connected(k->rev);
        if (k->fwd)
            forward_on_connected(k->fwd);
        if (k->sp)
            statepub_on_connected(k->sp);
        k->relay_next = 0;
        k->rev_next = 0;
        k->fwd_next = 0;
        k->sp_next = 0;
        return;
    }

    const char *why = broker_strerror(k->br);
    int changed = strcmp(why, k->last_error) != 0;
    k->failures++;
    unsigned delay = st == RT_REJECT ? DAEMON_RECONNECT_MAX_MS : backoff_next(&k->backoff);
    if (st == RT_REJECT && (changed || k->failures % DAEMON_RECONNECT_REMIND == 0))
        log_error("the broker at %s refused \"%s\": %s; fix the broker or the configuration, "
                  "retrying every %u s",
                  cfg->amqp.uri_redacted, cfg->amqp.user, why, DAEMON_RECONNECT_MAX_MS / 1000);
    else if (st != RT_REJECT && (changed || k->failures <= DAEMON_RECONNECT_LOUD))
        log_warning("cannot connect to the broker at %s: %s; retrying in %u ms",
                    cfg->amqp.uri_redacted, why, delay);
    else if (k->failures % DAEMON_RECONNECT_REMIND == 0)
        log_warning("still cannot connect to the broker at %s after %u attempts: %s",
                    cfg->amqp.uri_redacted, k->failures, why);
    else
        log_debug("cannot connect to the broker at %s (attempt %u): %s", cfg->amqp.uri_redacted,
                  k->failures, why);
    snprintf(k->last_error, sizeof(k->last_error), "%s", why);
    broker_disconnect(k->br);
    k->reconnect_at = daemon_mono_ms() + delay;
}

/* Notices a connection that died outside broker_process() (inside a
 * publish, or a consumer cancelled), and connects when it is time. */
static void daemon_core_maintain(struct daemon_core *k, int allow_connect)
{
    if (k->up && !broker_connected(k->br)) {
        daemon_core_lost(k, broker_strerror(k->br));
    } else if (k->up && k->cancelled) {
        char why[BROKER_NAME_MAX + 64];
        snprintf(why, sizeof(why), "the broker cancelled the consumer of \"%s\"",
                 k->cancelled_queue);
        daemon_core_lost(k, why);
    }
    if (!k->up && allow_connect && daemon_mono_ms() >= k->reconnect_at)
        daemon_core_connect(k);
}

/* Runs the component ticks that are due. */
static void daemon_core_tick(struct daemon_core *k)
{
    int64_t now = daemon_wall_ms();
    if (k->relay && now >= k->relay_next)
        k->relay_next = relay_tick(k->relay, now);
    if (k->rev && now >= k->rev_next)
        k->rev_next = reverse_tick(k->rev, now);
    if (k->fwd && now >= k->fwd_next)
        k->fwd_next = forward_tick(k->fwd, now);
    if (k->sp && now >= k->sp_next)
        k->sp_next = statepub_tick(k->sp, now);
}

/* ---- totals --------------------------------------------------------- */

/* Adds the counters of a component's stats to a total; gauges and times
 * are not summed (the current core's are the ones that mean something). */
static void daemon_add_relay(struct relay_stats *to, const struct relay_stats *from)
{
    to->taken += from->taken;
    to->published += from->published;
    to->confirmed += from->confirmed;
    to->unchanged += from->unchanged;
    to->deferred += from->deferred;
    to->dropped += from->dropped;
    to->reconciliations += from->reconciliations;
    to->reconcile_failed += from->reconcile_failed;
    to->reconcile_enqueued += from->reconcile_enqueued;
}

static void daemon_add_forward(struct forward_stats *to, const struct forward_stats *from)
{
    to->deliveries += from->deliveries;
    to->created += from->created;
    to->adopted += from->adopted;
    to->updated += from->updated;
    to->unchanged += from->unchanged;
    to->duplicates += from->duplicates;
    to->superseded += from->superseded;
    to->retried += from->retried;
    to->dead += from->dead;
    to->dead_undecodable += from->dead_undecodable;
    to->dead_unauthorized += from->dead_unauthorized;
    to->dead_department += from->dead_department;
    to->dead_api += from->dead_api;
    to->requeued += from->requeued;
    to->syncs += from->syncs;
}

static void daemon_add_reverse(struct reverse_stats *to, const struct reverse_stats *from)
{
    to->deliveries += from->deliveries;
    to->applied += from->applied;
    to->unchanged += from->unchanged;
    to->duplicates += from->duplicates;
    to->superseded += from->superseded;
    to->syncs += from->syncs;
    to->retried += from->retried;
    to->dead += from->dead;
    to->dead_undecodable += from->dead_undecodable;
    to->dead_unauthorized += from->dead_unauthorized;
    to->dead_unknown_task += from->dead_unknown_task;
    to->dead_api += from->dead_api;
    to->requeued += from->requeued;
}

static void daemon_add_statepub(struct statepub_stats *to, const struct statepub_stats *from)
{
    to->cycles += from->cycles;
    to->cycles_failed += from->cycles_failed;
    to->rows_seen += from->rows_seen;
    to->views += from->views;
    to->view_failed += from->view_failed;
    to->published += from->published;
    to->confirmed += from->confirmed;
    to->publish_failed += from->publish_failed;
    to->unchanged += from->unchanged;
    to->syncs_requested += from->syncs_requested;
    to->syncs_served += from->syncs_served;
}

/* The totals so far: the cores already freed plus the running one, whose
 * gauges (busy slots, unconfirmed publishes...) are the ones reported. */
static void daemon_totals_now(const struct daemon *d, struct daemon_totals *t)
{
    const struct daemon_core *k = d->core;
    struct daemon_totals cur;

    *t = d->base;
    memset(&cur, 0, sizeof(cur));
    t->relay.in_progress = t->relay.unconfirmed = 0;
    t->fwd.busy = t->rev.busy = 0;
    t->sp.running = t->sp.viewing = t->sp.waiting = t->sp.unconfirmed = 0;
    if (!k)
        return;
    if (k->relay) {
        relay_stats(k->relay, &cur.relay);
        daemon_add_relay(&t->relay, &cur.relay);
        t->relay.in_progress = cur.relay.in_progress;
        t->relay.unconfirmed = cur.relay.unconfirmed;
    }
    if (k->fwd) {
        forward_stats(k->fwd, &cur.fwd);
        daemon_add_forward(&t->fwd, &cur.fwd);
        t->fwd.busy = cur.fwd.busy;
    }
    if (k->rev) {
        reverse_stats(k->rev, &cur.rev);
        daemon_add_reverse(&t->rev, &cur.rev);
        t->rev.busy = cur.rev.busy;
    }
    if (k->sp) {
        statepub_stats(k->sp, &cur.sp);
        daemon_add_statepub(&t->sp, &cur.sp);
        t->sp.running = cur.sp.running;
        t->sp.viewing = cur.sp.viewing;
        t->sp.waiting = cur.sp.waiting;
        t->sp.unconfirmed = cur.sp.unconfirmed;
    }
}

/* Frees the daemon's core after adding its counters to the totals. */
static void daemon_core_retire(struct daemon *d, struct daemon_core *k)
{
    struct daemon_totals t;

    if (!k)
        return;
    /* Tear down first: the broker's LOST reports still move counters. */
    if (k->br)
        broker_disconnect(k->br);
    memset(&t, 0, sizeof(t));
    if (k->relay)
        relay_stats(k->relay, &t.relay);
    if (k->fwd)
        forward_stats(k->fwd, &t.fwd);
    if (k->rev)
        reverse_stats(k->rev, &t.rev);
    if (k->sp)
        statepub_stats(k->sp, &t.sp);
    daemon_add_relay(&d->base.relay, &t.relay);
    daemon_add_forward(&d->base.fwd, &t.fwd);
    daemon_add_reverse(&d->base.rev, &t.rev);
    daemon_add_statepub(&d->base.sp, &t.sp);
    daemon_core_free(k);
}

/* ---- hooks of the components and of billmgr --------------------------- */

/* Every completed BILLmanager call: the metrics and the status command's
 * view of the BILLmanager connection. */
static void daemon_on_api_call(void *arg, const char *func, rt_status status,
                               const char *err_type, double seconds)
{
    struct daemon *d = arg;
    const char *outcome = status == RT_OK ? "ok" : status == RT_RETRY ? "retry" : "reject";

    d->api_calls++;
    metrics_counter_add(d->metrics, METRICS_API_CALLS, 1, func, outcome, NULL);
    if (seconds >= 0)
        metrics_histogram_observe(d->metrics, METRICS_API_CALL_DURATION, seconds, func, NULL);
    if (status == RT_OK) {
        d->api_last_ok = 1;
        d->api_last_ok_ms = daemon_wall_ms();
        return;
    }
    d->api_errors++;
    d->api_last_ok = 0;
    d->api_last_error_ms = daemon_wall_ms();
    snprintf(d->api_last_error, sizeof(d->api_last_error), "%s: %s", func,
             err_type && *err_type ? err_type : "error");
    for (size_t i = 0; i < DAEMON_API_ERR_KINDS; i++) {
        struct daemon_api_err *e = &d->api_errs[i];
        if (e->count && strcmp(e->type, err_type) == 0) {
            e->count++;
            return;
        }
        if (!e->count) {
            snprintf(e->type, sizeof(e->type), "%s", err_type && *err_type ? err_type : "error");
            e->count = 1;
            return;
        }
    }
    d->api_errs_other++;
}

/* A client's sync request reached the forward applier. */
static void daemon_on_sync(void *arg, const char *client, const char *id)
{
    struct daemon_core *k = arg;
    if (!k->sp)
        return;
    /* statepub logs why it refuses one; the client then times out. */
    if (statepub_sync(k->sp, client, id) == RT_OK)
        k->sp_next = 0;
}

static void daemon_on_forward_applied(void *arg, const char *client, int64_t task,
                                      int64_t event_ms, int64_t applied_ms)
{
    struct daemon_core *k = arg;
    (void)client;
    (void)task;
    /* Messages of older clients carry no time of the event. */
    if (event_ms <= 0)
        return;
    double latency = (double)(applied_ms - event_ms) / 1000.0;
    metrics_histogram_observe(k->d->metrics, METRICS_FORWARD_LATENCY, latency > 0 ? latency : 0,
                              NULL);
}

/* ---- checkevent waits ------------------------------------------------- */

static struct daemon_wait *daemon_wait_by_id(struct daemon *d, const char *id)
{
    for (size_t i = 0; i < CONTROL_MAX_CLIENTS; i++)
        if (d->waits[i].cl && strcmp(d->waits[i].id, id) == 0)
            return &d->waits[i];
    return NULL;
}

/* Answers a waiting checkevent and frees its entry. */
static void daemon_wait_reply(struct daemon_wait *w, json_t *resp)
{
    struct control_client *cl = w->cl;
    memset(w, 0, sizeof(*w));
    control_reply(cl, resp);
}

static void daemon_wait_gone(void *arg, struct control_client *cl)
{
    struct daemon *d = arg;
    for (size_t i = 0; i < CONTROL_MAX_CLIENTS; i++)
        if (d->waits[i].cl == cl)
            memset(&d->waits[i], 0, sizeof(d->waits[i]));
}

/* The fate of a sync request a checkevent published. */
static void daemon_wait_confirmed(struct daemon_core *k, uint64_t tag, enum broker_fate fate)
{
    struct daemon *d = k->d;
    for (size_t i = 0; i < CONTROL_MAX_CLIENTS; i++) {
        struct daemon_wait *w = &d->waits[i];
        if (!w->cl || !w->confirming || w->core != k || w->tag != tag)
            continue;
        w->confirming = 0;
        switch (fate) {
        case BROKER_ACKED:
            d->sync_confirmed++;
            return; /* now the server's sync_done is awaited */
        case BROKER_NACKED:
            daemon_wait_reply(w, json_pack("{s:b,s:s}", "ok", 0, "error",
                                           "the broker refused the sync request (nack): "
                                           "try again"));
            return;
        case BROKER_RETURNED:
            daemon_wait_reply(w, json_pack("{s:b,s:s}", "ok", 0, "error",
                                           "the sync request could not be routed: no forward "
                                           "queue is bound for this client on the broker"));
            return;
        case BROKER_LOST:
            daemon_wait_reply(w, json_pack("{s:b,s:s}", "ok", 0, "error",
                                           "the broker connection was lost before the sync "
                                           "request was confirmed: try again"));
            return;
        }
    }
}

/* The reverse applier handled a sync_done. */
static void daemon_on_sync_done(void *arg, const char *id, uint64_t count, uint64_t applied)
{
    struct daemon_core *k = arg;
    struct daemon_wait *w = daemon_wait_by_id(k->d, id);
    if (!w) {
        log_info("sync \"%s\" done: %" PRIu64 " states received, %" PRIu64
                 " tasks updated (nobody waits for it any more)",
                 id, count, applied);
        return;
    }
    log_info("checkevent: sync \"%s\" done, %" PRIu64 " states received, %" PRIu64
             " tasks updated",
             id, count, applied);
    daemon_wait_reply(w, json_pack("{s:b,s:I,s:I}", "ok", 1, "published", (json_int_t)count,
                                   "updated", (json_int_t)applied));
}

/* Answers the checkevents whose time ran out; returns the nearest
 * deadline left (monotonic ms), or -1. */
static int64_t daemon_waits_expire(struct daemon *d, int64_t mono)
{
    int64_t next = -1;
    for (size_t i = 0; i < CONTROL_MAX_CLIENTS; i++) {
        struct daemon_wait *w = &d->waits[i];
        if (!w->cl)
            continue;
        if (mono >= w->deadline) {
            log_warning("checkevent: no sync_done for \"%s\" within %d s", w->id, w->timeout_s);
            char msg[128];
            snprintf(msg, sizeof(msg), "no answer from the server side within %d s",
                     w->timeout_s);
            daemon_wait_reply(w, json_pack("{s:b,s:s}", "ok", 0, "error", msg));
        } else if (next < 0 || w->deadline < next) {
            next = w->deadline;
        }
    }
    return next;
}

/* A sync id: random hex, so that a restarted daemon never mistakes an old
 * request's sync_done for a new one. */
static void daemon_sync_id(char out[2 * DAEMON_SYNC_ID_BYTES + 1])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char raw[DAEMON_SYNC_ID_BYTES];
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
        for (size_t i = got; i < sizeof(raw); i++, x = x * 6364136223846793005u + 1442695040888963407u)
            raw[i] = (unsigned char)(x >> 56);
    }
    for (size_t i = 0; i < sizeof(raw); i++) {
        out[2 * i] = hex[raw[i] >> 4];
        out[2 * i + 1] = hex[raw[i] & 15];
    }
    out[2 * DAEMON_SYNC_ID_BYTES] = '\0';
}

/* ---- queues ----------------------------------------------------------- */

/* Adds a queue name to the list unless it is there already. */
static void daemon_queue_add(struct daemon_queue *q, size_t *n, size_t cap, const char *name)
{
    for (size_t i = 0; i < *n; i++)
        if (strcmp(q[i].name, name) == 0)
            return;
    if (*n >= cap)
        return;
    memset(&q[*n], 0, sizeof(q[*n]));
    snprintf(q[*n].name, sizeof(q[*n].name), "%s", name);
    (*n)++;
}

/* Adds a client's forward and reverse queues and the retry delay queues of
 * the direction this instance consumes for it (its applier's retries). */
static void daemon_queue_add_client(struct daemon_queue *q, size_t *n, size_t cap,
                                    const char *client, enum broker_dir consumed)
{
    char name[BROKER_NAME_MAX];
    if (broker_queue_name(name, sizeof(name), BROKER_FORWARD, client) == 0)
        daemon_queue_add(q, n, cap, name);
    if (broker_queue_name(name, sizeof(name), BROKER_REVERSE, client) == 0)
        daemon_queue_add(q, n, cap, name);
    for (unsigned tier = 0; tier < BROKER_RETRY_TIERS; tier++)
        if (broker_retry_queue_name(name, sizeof(name), consumed, client, tier) == 0)
            daemon_queue_add(q, n, cap, name);
}

/* The queues this instance uses, in a stable order: per client its
 * forward, reverse and retry queues, then remotetask.dead. Returns -1 when
 * memory ran out. */
static int daemon_queues_list(struct daemon *d)
{
    const struct config *cfg = d->cfg;
    size_t cap = (1 + cfg->server.n_clients) * (2 + BROKER_RETRY_TIERS) + 1, n = 0;
    struct daemon_queue *q = calloc(cap, sizeof(*q));
    if (!q)
        return -1;
    if (cfg->client.enabled)
        daemon_queue_add_client(q, &n, cap, cfg->client.id, BROKER_REVERSE);
    for (size_t i = 0; cfg->server.enabled && i < cfg->server.n_clients; i++)
        daemon_queue_add_client(q, &n, cap, cfg->server.clients[i].id, BROKER_FORWARD);
    daemon_queue_add(q, &n, cap, BROKER_QUEUE_DEAD);
    /* Keep what the broker said last for the queues still used. */
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < d->n_queues; j++)
            if (strcmp(q[i].name, d->queues[j].name) == 0)
                q[i] = d->queues[j];
    free(d->queues);
    d->queues = q;
    d->n_queues = n;
    return 0;
}

/* Asks the broker for the depth of every queue, unless it was asked less
 * than max_age_ms ago. Each question is a passive declare on a throwaway
 * channel, bounded by amqp.connect_timeout; the loop waits for them, which
 * is why they are only asked when someone looks. */
static void daemon_queues_refresh(struct daemon *d, int64_t max_age_ms)
{
    struct daemon_core *k = d->core;
    int64_t mono = daemon_mono_ms();

    if (d->queues_mono && mono - d->queues_mono < max_age_ms && d->n_queues)
        return;
    if (daemon_queues_list(d) < 0)
        return;
    int up = k && k->up && broker_connected(k->br);
    for (size_t i = 0; i < d->n_queues; i++) {
        struct daemon_queue *q = &d->queues[i];
        if (!up) {
            q->known = 0;
            continue;
        }
        rt_status st = broker_queue_depth(k->br, q->name, &q->ready, &q->consumers);
        q->known = st == RT_OK;
        if (st == RT_RETRY) {
            /* The connection failed: the loop notices and reconnects. */
            up = 0;
        }
    }
    d->queues_mono = daemon_mono_ms();
}

/* Deliveries this instance holds unacknowledged on a queue. */
static size_t daemon_queue_unacked(const struct daemon *d, const char *queue)
{
    const struct daemon_core *k = d->core;
    struct reverse_stats rs;

    if (!k)
        return 0;
    if (k->fwd && daemon_has_prefix(queue, BROKER_EXCHANGE_FORWARD "."))
        return forward_unacked(k->fwd, queue);
    if (k->rev && daemon_has_prefix(queue, BROKER_EXCHANGE_REVERSE ".")) {
        char mine[BROKER_NAME_MAX];
        if (broker_queue_name(mine, sizeof(mine), BROKER_REVERSE, d->cfg->client.id) < 0 ||
            strcmp(mine, queue) != 0)
            return 0;
        reverse_stats(k->rev, &rs);
        return rs.busy;
    }
    return 0; /* retry and dead queues are never consumed here */
}

/* ---- metrics ---------------------------------------------------------- */

static void daemon_metrics_dead(struct metrics *m, const char *direction, uint64_t undecodable,
                                uint64_t unauthorized, uint64_t department, uint64_t api,
                                uint64_t other)
{
    metrics_counter_set(m, METRICS_DEAD_LETTERED, (double)undecodable, direction, "undecodable",
                        NULL);
    metrics_counter_set(m, METRICS_DEAD_LETTERED, (double)unauthorized, direction, "unauthorized",
                        NULL);
    metrics_counter_set(m, METRICS_DEAD_LETTERED, (double)department, direction, "department",
                        NULL);
    metrics_counter_set(m, METRICS_DEAD_LETTERED, (double)api, direction, "api", NULL);
    metrics_counter_set(m, METRICS_DEAD_LETTERED, (double)other, direction, "other", NULL);
}

/* Copies the running totals and the gauges into the registry. */
static void daemon_metrics_update(struct daemon *d)
{
    struct metrics *m = d->metrics;
    struct daemon_core *k = d->core;
    struct daemon_totals t;
    uint64_t backlog = 0, links = 0;
    int64_t oldest = 0;

    daemon_totals_now(d, &t);
    metrics_counter_set(m, METRICS_EVENTS_RECORDED, (double)t.relay.taken, NULL);
    metrics_counter_set(m, METRICS_MESSAGES_PUBLISHED, (double)t.relay.published, "task", NULL);
    metrics_counter_set(m, METRICS_MESSAGES_CONFIRMED, (double)t.relay.confirmed, "task", NULL);
    metrics_counter_set(m, METRICS_MESSAGES_PUBLISHED, (double)t.sp.published, "state", NULL);
    metrics_counter_set(m, METRICS_MESSAGES_CONFIRMED, (double)t.sp.confirmed, "state", NULL);
    metrics_counter_set(m, METRICS_MESSAGES_PUBLISHED, (double)d->sync_published, "sync", NULL);
    metrics_counter_set(m, METRICS_MESSAGES_CONFIRMED, (double)d->sync_confirmed, "sync", NULL);
    /* The publisher counts sync_done messages once confirmed only. */
    metrics_counter_set(m, METRICS_MESSAGES_PUBLISHED, (double)t.sp.syncs_served, "sync_done",
                        NULL);
    metrics_counter_set(m, METRICS_MESSAGES_CONFIRMED, (double)t.sp.syncs_served, "sync_done",
                        NULL);
    /* The appliers count their retry and dead-letter copies once
     * confirmed (and requeue the delivery otherwise). */
    uint64_t retried = t.fwd.retried + t.rev.retried, dead = t.fwd.dead + t.rev.dead;
    metrics_counter_set(m, METRICS_MESSAGES_PUBLISHED, (double)retried, "retry", NULL);
    metrics_counter_set(m, METRICS_MESSAGES_CONFIRMED, (double)retried, "retry", NULL);
    metrics_counter_set(m, METRICS_MESSAGES_PUBLISHED, (double)dead, "dead", NULL);
    metrics_counter_set(m, METRICS_MESSAGES_CONFIRMED, (double)dead, "dead", NULL);

    metrics_counter_set(m, METRICS_APPLIED, (double)(t.fwd.created + t.fwd.adopted), "forward",
                        "created", NULL);
    metrics_counter_set(m, METRICS_APPLIED, (double)t.fwd.updated, "forward", "updated", NULL);
    metrics_counter_set(m, METRICS_APPLIED, (double)t.fwd.unchanged, "forward", "unchanged", NULL);
    metrics_counter_set(m, METRICS_APPLIED, (double)(t.fwd.duplicates + t.fwd.superseded),
                        "forward", "duplicate", NULL);
    metrics_counter_set(m, METRICS_APPLIED, (double)t.rev.applied, "reverse", "updated", NULL);
    metrics_counter_set(m, METRICS_APPLIED, (double)t.rev.unchanged, "reverse", "unchanged", NULL);
    metrics_counter_set(m, METRICS_APPLIED, (double)(t.rev.duplicates + t.rev.superseded),
                        "reverse", "duplicate", NULL);
    metrics_counter_set(m, METRICS_RETRIED, (double)t.fwd.retried, "forward", NULL);
    metrics_counter_set(m, METRICS_RETRIED, (double)t.rev.retried, "reverse", NULL);
    daemon_metrics_dead(m, "forward", t.fwd.dead_undecodable, t.fwd.dead_unauthorized,
                        t.fwd.dead_department, t.fwd.dead_api, 0);
    daemon_metrics_dead(m, "reverse", t.rev.dead_undecodable, t.rev.dead_unauthorized, 0,
                        t.rev.dead_api, t.rev.dead_unknown_task);
    metrics_counter_set(m, METRICS_BROKER_RECONNECTS,
                        (double)(d->connects > 1 ? d->connects - 1 : 0), NULL);

    daemon_queues_refresh(d, DAEMON_QUEUES_METRICS_AGE_MS);
    metrics_reset(m, METRICS_QUEUE_READY);
    metrics_reset(m, METRICS_QUEUE_CONSUMERS);
    for (size_t i = 0; i < d->n_queues; i++) {
        if (!d->queues[i].known)
            continue;
        metrics_gauge_set(m, METRICS_QUEUE_READY, d->queues[i].ready, d->queues[i].name, NULL);
        metrics_gauge_set(m, METRICS_QUEUE_CONSUMERS, d->queues[i].consumers, d->queues[i].name,
                          NULL);
    }
    if (store_outbox_backlog(d->st, &backlog, &oldest) == RT_OK) {
        int64_t age = oldest ? daemon_wall_ms() - oldest : 0;
        metrics_gauge_set(m, METRICS_OUTBOX_BACKLOG, (double)backlog, NULL);
        metrics_gauge_set(m, METRICS_OUTBOX_OLDEST_AGE, age > 0 ? (double)age / 1000.0 : 0, NULL);
    }
    if (store_link_count(d->st, NULL, &links) == RT_OK)
        metrics_gauge_set(m, METRICS_LINKS, (double)links, NULL);
    metrics_gauge_set(m, METRICS_INFLIGHT, k ? (double)billmgr_inflight(k->bm) : 0, "api_calls",
                      NULL);
    metrics_gauge_set(m, METRICS_INFLIGHT, k && k->up ? (double)broker_unconfirmed(k->br) : 0,
                      "unconfirmed", NULL);
    metrics_gauge_set(m, METRICS_INFLIGHT, (double)(t.fwd.busy + t.rev.busy), "slots", NULL);
    metrics_gauge_set(m, METRICS_UP, k && k->up ? 1 : 0, NULL);

    uint64_t refused = metrics_refused(m);
    if (refused > d->metrics_refused) {
        log_warning("metrics: %" PRIu64 " series refused so far (label values too long or "
                    "caps reached)",
                    refused);
        d->metrics_refused = refused;
    }
}

/* A scrape of /metrics. */
static int daemon_metrics_render(void *arg, struct buf *out)
{
    struct daemon *d = arg;
    daemon_metrics_update(d);
    return metrics_render(d->metrics, out);
}

/* ---- control commands ---------------------------------------------- */

static void daemon_cmd_ping(void *arg, struct control_client *cl, json_t *req)
{
    struct daemon *d = arg;
    control_reply(cl, json_pack("{s:b,s:s,s:I,s:s,s:b}", "ok", 1, "instance", d->cfg->instance,
                                "pid", (json_int_t)getpid(), "version", RT_VERSION, "connected",
                                d->core && d->core->up));
}

static void daemon_cmd_wake(void *arg, struct control_client *cl, json_t *req)
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

static void daemon_cmd_checkevent(void *arg, struct control_client *cl, json_t *req)
{
    struct daemon *d = arg;
    struct daemon_core *k = d->core;
    json_t *jt = json_object_get(req, "timeout");
    int timeout_s = DAEMON_CHECKEVENT_DEFAULT_S;
    struct daemon_wait *w = NULL;
    char err[256];

    if (jt) {
        if (!json_is_integer(jt) || json_integer_value(jt) < 1 ||
            json_integer_value(jt) > DAEMON_CHECKEVENT_MAX_S) {
            control_reply_error(cl, "\"timeout\" must be 1..%d seconds", DAEMON_CHECKEVENT_MAX_S);
            return;
        }
        timeout_s = (int)json_integer_value(jt);
    }
    if (!d->cfg->client.enabled) {
        control_reply_error(cl, "instance \"%s\" has no client role: checkevent asks the server "
                                "side for the state of this client's tasks",
                            d->cfg->instance);
        return;
    }
    if (!k || !k->rev) {
        control_reply_error(cl, "the components are not running (see the log): try again later");
        return;
    }
    if (!k->up || !broker_connected(k->br)) {
        control_reply_error(cl, "the broker is not connected: %s",
                            k->last_error[0] ? k->last_error : "connecting");
        return;
    }
    if (d->stopping || d->pending) {
        control_reply_error(cl, "remotetaskd is %s: try again in a moment",
                            d->stopping ? "stopping" : "reloading its configuration");
        return;
    }
    for (size_t i = 0; i < CONTROL_MAX_CLIENTS && !w; i++)
        if (!d->waits[i].cl)
            w = &d->waits[i];
    if (!w) {
        control_reply_error(cl, "too many checkevent commands waiting: try again later");
        return;
    }

    struct codec_msg m;
    struct buf body;
    char message_id[BROKER_CLIENT_MAX + 2 * DAEMON_SYNC_ID_BYTES + 16];
    uint64_t tag = 0;

    daemon_sync_id(w->id);
    codec_msg_init(&m, CODEC_SYNC);
    m.client = d->cfg->client.id;
    m.task = 0;
    m.seq = 0;
    m.ts = daemon_wall_ms();
    m.sync.id = w->id;
    buf_init(&body, CODEC_MAX_BODY);
    if (codec_encode(&m, &body, err, sizeof(err)) < 0) {
        buf_release(&body);
        memset(w, 0, sizeof(*w));
        control_reply_error(cl, "cannot encode the sync request: %s", err);
        return;
    }
    /* Registered before publishing: the states the server sends for it
     * may come before anything else is heard of the request. */
    reverse_expect_sync(k->rev, w->id);
    snprintf(message_id, sizeof(message_id), "%s:sync:%s", d->cfg->client.id, w->id);
    struct broker_props props = {.message_id = message_id};
    rt_status st = broker_publish(k->br, BROKER_EXCHANGE_FORWARD, d->cfg->client.id, &props,
                                  body.data, body.len, &tag);
    buf_release(&body);
    if (st != RT_OK) {
        memset(w, 0, sizeof(*w));
        control_reply_error(cl, "the broker did not take the sync request: %s",
                            broker_blocked(k->br) ? "it blocks publishing (resource alarm)"
                                                  : broker_strerror(k->br));
        return;
    }
    d->sync_published++;
    w->cl = cl;
    w->timeout_s = timeout_s;
    w->deadline = daemon_mono_ms() + (int64_t)timeout_s * 1000;
    w->core = k;
    w->tag = tag;
    w->confirming = 1;
    log_info("checkevent: sync request \"%s\" published, waiting up to %d s", w->id, timeout_s);
    control_defer(cl, timeout_s * 1000 + DAEMON_CHECKEVENT_SLACK_MS, daemon_wait_gone, d);
}

static void daemon_cmd_resync(void *arg, struct control_client *cl, json_t *req)
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
    statepub_kick(d->core->sp, daemon_wall_ms());
    d->core->sp_next = 0;
    control_reply(cl, json_pack("{s:b}", "ok", 1));
}

/* A meta time of the store, 0 when unknown. */
static json_int_t daemon_meta_ms(struct store *st, const char *key)
{
    int64_t v = 0;
    bool found = false;
    if (store_meta_get_i64(st, key, &v, &found) != RT_OK || !found)
        return 0;
    return (json_int_t)v;
}

/* The counters of the status command's "errors" member. */
static json_t *daemon_status_errors(const struct daemon *d, const struct daemon_totals *t)
{
    json_t *api = json_object();
    for (size_t i = 0; i < DAEMON_API_ERR_KINDS && d->api_errs[i].count; i++)
        json_object_set_new(api, d->api_errs[i].type,
                            json_integer((json_int_t)d->api_errs[i].count));
    if (d->api_errs_other)
        json_object_set_new(api, "other", json_integer((json_int_t)d->api_errs_other));
    return json_pack(
        "{s:{s:{s:I,s:I,s:I,s:I},s:{s:I,s:I,s:I,s:I}},s:{s:I,s:I},s:o,s:I,s:I,s:I}",
        "dead_lettered", "forward", "undecodable", (json_int_t)t->fwd.dead_undecodable,
        "unauthorized", (json_int_t)t->fwd.dead_unauthorized, "department",
        (json_int_t)t->fwd.dead_department, "api", (json_int_t)t->fwd.dead_api, "reverse",
        "undecodable", (json_int_t)t->rev.dead_undecodable, "unauthorized",
        (json_int_t)t->rev.dead_unauthorized, "unknown_task",
        (json_int_t)t->rev.dead_unknown_task, "api", (json_int_t)t->rev.dead_api, "retried",
        "forward", (json_int_t)t->fwd.retried, "reverse", (json_int_t)t->rev.retried, "api", api,
        "reconnects", (json_int_t)(d->connects > 1 ? d->connects - 1 : 0), "requeued",
        (json_int_t)(t->fwd.requeued + t->rev.requeued), "outbox_deferred",
        (json_int_t)t->relay.deferred);
}

/* The status command's answer. Queue depths are asked from the broker now
 * (see DAEMON_QUEUES_STATUS_AGE_MS); "unacked" is what this instance holds
 * unacknowledged, since AMQP has no way to ask the broker for it. */
static json_t *daemon_status(struct daemon *d)
{
    struct daemon_core *k = d->core;
    struct daemon_totals t;
    uint64_t backlog = 0, links = 0;
    int64_t oldest = 0, now = daemon_wall_ms();
    json_t *roles = json_array(), *queues = json_array();

    daemon_totals_now(d, &t);
    daemon_queues_refresh(d, DAEMON_QUEUES_STATUS_AGE_MS);
    if (d->cfg->client.enabled)
        json_array_append_new(roles, json_string("client"));
    if (d->cfg->server.enabled)
        json_array_append_new(roles, json_string("server"));
    for (size_t i = 0; i < d->n_queues; i++) {
        const struct daemon_queue *q = &d->queues[i];
        json_t *o = json_pack("{s:s,s:I}", "name", q->name, "unacked",
                              (json_int_t)daemon_queue_unacked(d, q->name));
        if (q->known) {
            json_object_set_new(o, "ready", json_integer(q->ready));
            json_object_set_new(o, "consumers", json_integer(q->consumers));
        } else {
            json_object_set_new(o, "ready", json_null());
            json_object_set_new(o, "consumers", json_null());
        }
        json_array_append_new(queues, o);
    }
    int outbox_ok = store_outbox_backlog(d->st, &backlog, &oldest) == RT_OK;
    int links_ok = store_link_count(d->st, NULL, &links) == RT_OK;
    const char *broker_state = k && k->up ? "connected" : "disconnected";
    const char *api_state = d->api_last_ok < 0 ? "unknown" : d->api_last_ok ? "ok" : "failing";

    json_t *resp = json_pack(
        "{s:b,s:s,s:I,s:s,s:o,s:I,s:I,"
        "s:{s:s,s:b,s:b,s:I,s:s,s:s},"
        "s:{s:s,s:s,s:I,s:I,s:s,s:I},"
        "s:o,s:I,"
        "s:{s:I,s:I,s:I,s:I,s:I}}",
        "ok", 1, "instance", d->cfg->instance, "pid", (json_int_t)getpid(), "version", RT_VERSION,
        "roles", roles, "started_ms", (json_int_t)d->started_ms, "uptime_s",
        (json_int_t)((daemon_mono_ms() - d->started_mono) / 1000),
        "broker", "state", broker_state, "connected", k && k->up, "blocked",
        k && k->up && broker_blocked(k->br), "reconnects",
        (json_int_t)(d->connects > 1 ? d->connects - 1 : 0), "last_error",
        k ? k->last_error : "the components are not running", "uri", d->cfg->amqp.uri_redacted,
        "billmanager", "state", api_state, "url", d->cfg->billmanager.url, "calls",
        (json_int_t)d->api_calls, "last_ok_ms", (json_int_t)d->api_last_ok_ms, "last_error",
        d->api_last_error, "last_error_ms", (json_int_t)d->api_last_error_ms,
        "queues", queues, "queues_age_ms",
        (json_int_t)(d->queues_mono ? daemon_mono_ms() - d->queues_mono : -1),
        "last", "forward_apply_ms", daemon_meta_ms(d->st, DAEMON_META_LAST_FORWARD_APPLY),
        "forward_publish_ms", daemon_meta_ms(d->st, DAEMON_META_LAST_FORWARD_PUBLISH),
        "reverse_cycle_ms", daemon_meta_ms(d->st, STATEPUB_META_LAST_CYCLE),
        "reverse_apply_ms", daemon_meta_ms(d->st, DAEMON_META_LAST_REVERSE_APPLY), "now_ms",
        (json_int_t)now);
    if (!resp)
        return NULL;
    if (outbox_ok)
        json_object_set_new(resp, "outbox",
                            json_pack("{s:I,s:I,s:I}", "backlog", (json_int_t)backlog,
                                      "oldest_ms", (json_int_t)oldest, "oldest_age_s",
                                      (json_int_t)(oldest ? (now - oldest) / 1000 : 0)));
    else
        json_object_set_new(resp, "outbox", json_pack("{s:s}", "error", store_strerror(d->st)));
    if (links_ok)
        json_object_set_new(resp, "links", json_integer((json_int_t)links));
    else
        json_object_set_new(resp, "links", json_null());
    size_t waiting = 0;
    for (size_t i = 0; i < CONTROL_MAX_CLIENTS; i++)
        waiting += d->waits[i].cl != NULL;
    json_object_set_new(resp, "inflight",
                        json_pack("{s:I,s:I,s:I,s:I}", "api_calls",
                                  (json_int_t)(k ? billmgr_inflight(k->bm) : 0), "unconfirmed",
                                  (json_int_t)(k && k->up ? broker_unconfirmed(k->br) : 0),
                                  "slots", (json_int_t)(t.fwd.busy + t.rev.busy), "checkevents",
                                  (json_int_t)waiting));
    json_object_set_new(
        resp, "counters",
        json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "events_recorded",
                  (json_int_t)t.relay.taken, "tasks_published", (json_int_t)t.relay.confirmed,
                  "reconciliations", (json_int_t)t.relay.reconciliations, "forward_created",
                  (json_int_t)(t.fwd.created + t.fwd.adopted), "forward_updated",
                  (json_int_t)t.fwd.updated, "forward_unchanged", (json_int_t)t.fwd.unchanged,
                  "reverse_cycles", (json_int_t)t.sp.cycles, "states_published",
                  (json_int_t)t.sp.confirmed, "syncs_served", (json_int_t)t.sp.syncs_served,
                  "reverse_updated", (json_int_t)t.rev.applied, "reverse_unchanged",
                  (json_int_t)t.rev.unchanged, "syncs_done", (json_int_t)t.rev.syncs));
    json_object_set_new(resp, "errors", daemon_status_errors(d, &t));
    return resp;
}

static void daemon_cmd_status(void *arg, struct control_client *cl, json_t *req)
{
    struct daemon *d = arg;
    (void)req;
    json_t *resp = daemon_status(d);
    if (!resp) {
        control_reply_error(cl, "out of memory");
        return;
    }
    control_reply(cl, resp);
}

/* The commands of the control socket, one line each. */
static const struct control_command daemon_commands[] = {
    {"ping", daemon_cmd_ping},
    {"wake", daemon_cmd_wake},
    {"checkevent", daemon_cmd_checkevent},
    {"status", daemon_cmd_status},
    {"resync", daemon_cmd_resync},
};

/* ---- lifecycle ------------------------------------------------------ */

struct daemon *daemon_new(struct config *cfg, char *err, size_t errlen)
{
    char why[DAEMON_ERR_MAX];
    struct daemon *d = calloc(1, sizeof(*d));
    if (!d) {
        snprintf(err, errlen, "out of memory");
        config_free(cfg);
        return NULL;
    }
    d->cfg = cfg;
    d->started_ms = daemon_wall_ms();
    d->started_mono = daemon_mono_ms();
    d->api_last_ok = -1;
    d->metrics = metrics_new();
    if (!d->metrics || metrics_describe_remotetask(d->metrics) < 0) {
        snprintf(err, errlen, "out of memory");
        goto free_daemon;
    }
    d->st = store_open(cfg->state_dir, why, sizeof(why));
    if (!d->st) {
        snprintf(err, errlen, "cannot open the store in \"%s\": %s", cfg->state_dir, why);
        goto free_daemon;
    }
    d->ctl = control_new(cfg->control_socket, daemon_commands,
                         sizeof(daemon_commands) / sizeof(daemon_commands[0]), d, why, sizeof(why));
    if (!d->ctl) {
        snprintf(err, errlen, "%s", why);
        goto free_daemon;
    }
    if (cfg->metrics.enabled) {
        d->mh = metrics_http_new(cfg->metrics.host, cfg->metrics.port, daemon_metrics_render, d,
                                 why, sizeof(why));
        if (!d->mh) {
            snprintf(err, errlen, "metrics.listen: %s", why);
            goto free_daemon;
        }
    }
    d->core = daemon_core_new(d, cfg, d->st, err, errlen);
    if (!d->core)
        goto free_daemon;
    return d;

free_daemon:
    daemon_free(d);
    return NULL;
}

void daemon_free(struct daemon *d)
{
    if (!d)
        return;
    daemon_core_retire(d, d->core);
    d->core = NULL;
    /* Deferred checkevents are told through daemon_wait_gone. */
    control_free(d->ctl);
    metrics_http_free(d->mh);
    metrics_free(d->metrics);
    store_free(d->st);
    config_free(d->pending);
    config_free(d->cfg);
    free(d->queues);
    free(d->fds);
    free(d);
}

/* ---- reload --------------------------------------------------------- */

/* SIGHUP: loads the file again. A valid configuration waits in d->pending
 * while the components drain; an invalid one changes nothing. */
static void daemon_reload_load(struct daemon *d)
{
    char err[CONFIG_ERR_MAX];
    struct config *cfg = config_load(d->cfg->file, err, sizeof(err));
    if (!cfg) {
        log_error("configuration not reloaded, keeping the running one: %s", err);
        return;
    }
    if (d->stopping) {
        config_free(cfg);
        return;
    }
    if (d->pending) {
        /* A second SIGHUP during the drain: the newer file wins. */
        config_free(d->pending);
        d->pending = cfg;
        return;
    }
    d->pending = cfg;
    d->reload_deadline = daemon_mono_ms() + DAEMON_RELOAD_DRAIN_MS;
    daemon_core_drain(d->core);
    log_info("reloading the configuration from \"%s\": draining for up to %d s", cfg->file,
             DAEMON_RELOAD_DRAIN_MS / 1000);
}

/* After the drain: builds everything the new configuration needs before
 * tearing anything down, so that a failure leaves the old configuration
 * running (with fresh components, since the old ones were drained). */
static void daemon_reload_apply(struct daemon *d)
{
    struct config *cfg = d->pending;
    struct store *st = d->st;
    struct control *ctl = d->ctl;
    struct metrics_http *mh = d->mh;
    struct daemon_core *core = NULL;
    char why[DAEMON_ERR_MAX];

    d->pending = NULL;
    if (strcmp(cfg->state_dir, d->cfg->state_dir) != 0) {
        st = store_open(cfg->state_dir, why, sizeof(why));
        if (!st) {
            log_error("configuration not reloaded: cannot open the store in \"%s\": %s",
                      cfg->state_dir, why);
            goto keep_old;
        }
    }
    if (strcmp(cfg->control_socket, d->cfg->control_socket) != 0) {
        ctl =
            control_new(cfg->control_socket, daemon_commands,
                        sizeof(daemon_commands) / sizeof(daemon_commands[0]), d, why, sizeof(why));
        if (!ctl) {
            log_error("configuration not reloaded: %s", why);
            goto keep_old;
        }
    }
    if (cfg->metrics.enabled != d->cfg->metrics.enabled ||
        (cfg->metrics.enabled && (strcmp(cfg->metrics.host, d->cfg->metrics.host) != 0 ||
                                  cfg->metrics.port != d->cfg->metrics.port))) {
        mh = NULL;
        if (cfg->metrics.enabled) {
            mh = metrics_http_new(cfg->metrics.host, cfg->metrics.port, daemon_metrics_render, d,
                                  why, sizeof(why));
            if (!mh) {
                log_error("configuration not reloaded: metrics.listen: %s", why);
                mh = d->mh;
                goto keep_old;
            }
        }
    }
    core = daemon_core_new(d, cfg, st, why, sizeof(why));
    if (!core) {
        log_error("configuration not reloaded: %s", why);
        goto keep_old;
    }

    daemon_core_retire(d, d->core);
    d->core = core;
    if (ctl != d->ctl) {
        control_free(d->ctl);
        d->ctl = ctl;
    }
    if (mh != d->mh) {
        metrics_http_free(d->mh);
        d->mh = mh;
    }
    if (st != d->st) {
        store_free(d->st);
        d->st = st;
    }
    if (strcmp(cfg->instance, d->cfg->instance) != 0)
        log_warning("instance renamed from \"%s\" to \"%s\": log lines keep the old name "
                    "until remotetaskd restarts",
                    d->cfg->instance, cfg->instance);
    config_free(d->cfg);
    d->cfg = cfg;
    log_set_level(cfg->log_level);
    log_info("configuration reloaded from \"%s\"", cfg->file);
    return;

keep_old:
    if (mh != d->mh)
        metrics_http_free(mh);
    if (ctl != d->ctl)
        control_free(ctl);
    if (st != d->st)
        store_free(st);
    config_free(cfg);
    /* The old components were drained, which cannot be undone: make new
     * ones from the old configuration. */
    daemon_core_retire(d, d->core);
    d->core = daemon_core_new(d, d->cfg, d->st, why, sizeof(why));
    if (!d->core) {
        log_error("cannot restart the components: %s; trying again in %d s", why,
                  DAEMON_REBUILD_RETRY_MS / 1000);
        d->rebuild_at = daemon_mono_ms() + DAEMON_REBUILD_RETRY_MS;
    }
}

/* ---- the loop ------------------------------------------------------- */

/* Makes room for n pollfd entries. */
static int daemon_fds_reserve(struct daemon *d, size_t n)
{
    if (n <= d->fds_cap)
        return 0;
    struct pollfd *fds = realloc(d->fds, n * sizeof(*fds));
    if (!fds)
        return -1;
    d->fds = fds;
    d->fds_cap = n;
    return 0;
}

/* Lowers *best (-1 = none yet) to the wait until a deadline in ms. */
static void daemon_wait_min(int64_t *best, int64_t wait)
{
    if (wait < 0)
        wait = 0;
    if (*best < 0 || wait < *best)
        *best = wait;
}

static int64_t daemon_timeout(struct daemon *d)
{
    int64_t best = DAEMON_MAX_WAIT_MS, mono = daemon_mono_ms(), wall = daemon_wall_ms();
    struct daemon_core *k = d->core;

    if (k) {
        if (k->up) {
            if (broker_wants_read_now(k->br))
                return 0;
            int t = broker_timeout_ms(k->br);
            if (t >= 0)
                daemon_wait_min(&best, t);
        } else if (!d->stopping) {
            daemon_wait_min(&best, k->reconnect_at - mono);
        }
        int t = billmgr_timeout_ms(k->bm);
        if (t >= 0)
            daemon_wait_min(&best, t);
        if (k->relay)
            daemon_wait_min(&best, k->relay_next - wall);
        if (k->fwd)
            daemon_wait_min(&best, k->fwd_next - wall);
        if (k->rev)
            daemon_wait_min(&best, k->rev_next - wall);
        if (k->sp)
            daemon_wait_min(&best, k->sp_next - wall);
    } else {
        daemon_wait_min(&best, d->rebuild_at - mono);
    }
    int t = control_timeout_ms(d->ctl);
    if (t >= 0)
        daemon_wait_min(&best, t);
    if (d->mh && (t = metrics_http_timeout_ms(d->mh)) >= 0)
        daemon_wait_min(&best, t);
    int64_t w = daemon_waits_expire(d, mono);
    if (w >= 0)
        daemon_wait_min(&best, w - mono);
    if (d->stopping)
        daemon_wait_min(&best, d->stop_deadline - mono);
    if (d->pending)
        daemon_wait_min(&best, d->reload_deadline - mono);
    return best;
}

/* One ppoll() and the work it allows. Returns 0, or -1 when polling failed
 * for a reason other than a signal. */
static int daemon_iterate(struct daemon *d, const sigset_t *wait_mask)
{
    struct daemon_core *k = d->core;
    size_t n = 0, bm_off = 0, n_bm = 0, ctl_off, n_ctl;

    if (k && k->up && broker_fd(k->br) >= 0) {
        if (daemon_fds_reserve(d, 1) < 0)
            goto no_memory;
        d->fds[n++] = (struct pollfd){.fd = broker_fd(k->br), .events = POLLIN};
    }
    if (k) {
        bm_off = n;
        for (;;) {
            size_t room = d->fds_cap - n;
            n_bm = billmgr_pollfds(k->bm, d->fds + n, room);
            if (n_bm <= room)
                break;
            if (daemon_fds_reserve(d, n + n_bm) < 0)
                goto no_memory;
        }
        n += n_bm;
    }
    if (daemon_fds_reserve(d, n + CONTROL_MAX_POLLFDS + 1) < 0)
        goto no_memory;
    ctl_off = n;
    n_ctl = control_pollfds(d->ctl, d->fds + n, CONTROL_MAX_POLLFDS);
    n += n_ctl;
    if (d->mh)
        d->fds[n++] = (struct pollfd){.fd = metrics_http_pollfd(d->mh), .events = POLLIN};

    int64_t wait = daemon_timeout(d);
    struct timespec ts = {.tv_sec = wait / 1000, .tv_nsec = (wait % 1000) * 1000000};
    int rc = ppoll(d->fds, n, &ts, wait_mask);
    if (rc < 0) {
        if (errno == EINTR)
            return 0; /* a signal: its flag is read at the top of the loop */
        log_error("the event loop cannot poll: %s", strerror(errno));
        return -1;
    }

    if (k) {
        /* broker_process() never blocks: it is called on every turn, so
         * that heartbeats and buffered frames are never late, whichever
         * of the fds or the timeout ended the wait. */
        if (k->up && broker_process(k->br) != RT_OK)
            daemon_core_lost(k, broker_strerror(k->br));
        billmgr_handle(k->bm, d->fds + bm_off, n_bm);
    }
    control_handle(d->ctl, d->fds + ctl_off, n_ctl);
    /* Cheap when nothing is ready (libmicrohttpd polls its epoll set
     * without waiting), so it runs on every turn. */
    if (d->mh)
        metrics_http_handle(d->mh);
    daemon_waits_expire(d, daemon_mono_ms());
    if (d->core)
        daemon_core_tick(d->core);
    return 0;

no_memory:
    log_error("the event loop ran out of memory");
    return -1;
}

static void daemon_log_start(const struct daemon *d)
{
    const struct config *cfg = d->cfg;
    char roles[256] = "";
    if (cfg->client.enabled)
        snprintf(roles, sizeof(roles), "client \"%s\"", cfg->client.id);
    if (cfg->server.enabled) {
        size_t len = strlen(roles);
        snprintf(roles + len, sizeof(roles) - len, "%sserver for %zu client%s", len ? " and " : "",
                 cfg->server.n_clients, cfg->server.n_clients == 1 ? "" : "s");
    }
    log_info("remotetaskd %s started: instance \"%s\", %s, control socket \"%s\"", RT_VERSION,
             cfg->instance, roles, cfg->control_socket);
}

int daemon_run(struct daemon *d)
{
    sigset_t block, old_mask, wait_mask;
    struct sigaction sa, old_term, old_int, old_hup, old_pipe, ign;
    int status = 0;

    daemon_sig_stop = 0;
    daemon_sig_hup = 0;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGHUP);
    sigprocmask(SIG_BLOCK, &block, &old_mask);
    wait_mask = old_mask;
    sigdelset(&wait_mask, SIGTERM);
    sigdelset(&wait_mask, SIGINT);
    sigdelset(&wait_mask, SIGHUP);

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = daemon_on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, &old_term);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGHUP, &sa, &old_hup);
    /* A peer that hangs up (a control client, the broker) must show as an
     * EPIPE error, not kill the daemon. */
    memset(&ign, 0, sizeof(ign));
    ign.sa_handler = SIG_IGN;
    sigemptyset(&ign.sa_mask);
    sigaction(SIGPIPE, &ign, &old_pipe);

    daemon_log_start(d);
    for (;;) {
        int64_t now = daemon_mono_ms();
        if (daemon_sig_stop && !d->stopping) {
            d->stopping = 1;
            d->stop_deadline = now + DAEMON_STOP_DRAIN_MS;
            config_free(d->pending);
            d->pending = NULL;
            daemon_core_drain(d->core);
            log_info("stopping: waiting up to %d s for work in flight",
                     DAEMON_STOP_DRAIN_MS / 1000);
        }
        if (daemon_sig_hup) {
            daemon_sig_hup = 0;
            daemon_reload_load(d);
        }
        if (d->stopping) {
            if (daemon_core_idle(d->core))
                break;
            if (now >= d->stop_deadline) {
                log_warning("stopping with work still in flight after %d s: it stays in the "
                            "outbox and the queues for the next start",
                            DAEMON_STOP_DRAIN_MS / 1000);
                break;
            }
        } else if (d->pending && (daemon_core_idle(d->core) || now >= d->reload_deadline)) {
            daemon_reload_apply(d);
        }
        if (!d->core && !d->stopping && now >= d->rebuild_at) {
            char why[DAEMON_ERR_MAX];
            d->core = daemon_core_new(d, d->cfg, d->st, why, sizeof(why));
            if (!d->core) {
                log_error("cannot restart the components: %s; trying again in %d s", why,
                          DAEMON_REBUILD_RETRY_MS / 1000);
                d->rebuild_at = now + DAEMON_REBUILD_RETRY_MS;
            }
        }
        if (d->core)
            daemon_core_maintain(d->core, !d->stopping);
        if (daemon_iterate(d, &wait_mask) < 0) {
            status = 1;
            break;
        }
    }

    /* Closes the broker politely: unacked deliveries go back to their
     * queues, unconfirmed publishes stay in the outbox. */
    daemon_core_retire(d, d->core);
    d->core = NULL;
    log_info("stopped");

    sigaction(SIGPIPE, &old_pipe, NULL);
    sigaction(SIGHUP, &old_hup, NULL);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    sigprocmask(SIG_SETMASK, &old_mask, NULL);
    return status;
}
