#include "daemon.h"

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "backoff.h"
#include "billmgr.h"
#include "broker.h"
#include "config_opts.h"
#include "control.h"
#include "forward.h"
#include "log.h"
#include "relay.h"
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

/* Set by the signal handlers, read by the loop: the only thing a handler
 * does. Signals are blocked outside ppoll(), so they are seen at once. */
static volatile sig_atomic_t daemon_sig_stop;
static volatile sig_atomic_t daemon_sig_hup;

/* What one configuration builds and a reload replaces: the BILLmanager
 * client, the broker connection and the components. It is the broker's
 * callback argument, so that a broker being torn down reports its lost
 * publishes to the components built with it and to no others. */
struct daemon_core {
    struct config *cfg; /* borrowed from the daemon */
    struct store *st;   /* borrowed from the daemon */
    struct billmgr *bm;
    struct broker *br;
    struct relay *relay;  /* client role, else NULL */
    struct forward *fwd;  /* server role, else NULL */
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

static void daemon_on_confirm(void *arg, uint64_t tag, enum broker_fate fate)
{
    struct daemon_core *k = arg;
    /* Each component keeps the tags it published and ignores the others. */
    if (k->relay)
        relay_on_confirm(k->relay, tag, fate);
    if (k->fwd)
        forward_on_confirm(k->fwd, tag, fate);
}

static void daemon_on_delivery(void *arg, const struct broker_delivery *d)
{
    struct daemon_core *k = arg;
    if (k->fwd) {
        forward_on_delivery(k->fwd, d);
        return;
    }
    /* Only the server role consumes in this version; a delivery without a
     * consumer of ours goes back to its queue for whoever consumes it. */
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
    forward_free(k->fwd);
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

static struct daemon_core *daemon_core_new(struct config *cfg, struct store *st, char *err,
                                           size_t errlen)
{
    struct billmgr_opts bo;
    struct broker_opts o;
    char name[128], why[DAEMON_ERR_MAX];

    struct daemon_core *k = calloc(1, sizeof(*k));
    if (!k) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
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
        if (!k->relay) {
            snprintf(err, errlen, "cannot set up the client role: %s", why);
            goto free_core;
        }
    }
    if (cfg->server.enabled) {
        k->fwd = forward_new(cfg, st, k->bm, k->br, why, sizeof(why));
        if (!k->fwd) {
            snprintf(err, errlen, "cannot set up the server role: %s", why);
            goto free_core;
        }
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
    return (!k->relay || relay_idle(k->relay)) && (!k->fwd || forward_idle(k->fwd));
}

static void daemon_core_drain(struct daemon_core *k)
{
    if (!k)
        return;
    if (k->relay)
        relay_drain(k->relay);
    if (k->fwd)
        forward_drain(k->fwd);
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
        backoff_reset(&k->backoff);
        if (k->relay)
            relay_on_connected(k->relay);
        if (k->fwd)
            forward_on_connected(k->fwd);
        k->relay_next = 0;
        k->fwd_next = 0;
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
    if (k->fwd && now >= k->fwd_next)
        k->fwd_next = forward_tick(k->fwd, now);
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

/* The commands of the control socket, one line each. */
static const struct control_command daemon_commands[] = {
    {"ping", daemon_cmd_ping},
    {"wake", daemon_cmd_wake},
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
    d->core = daemon_core_new(cfg, d->st, err, errlen);
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
    daemon_core_free(d->core);
    control_free(d->ctl);
    store_free(d->st);
    config_free(d->pending);
    config_free(d->cfg);
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
    core = daemon_core_new(cfg, st, why, sizeof(why));
    if (!core) {
        log_error("configuration not reloaded: %s", why);
        goto keep_old;
    }

    daemon_core_free(d->core);
    d->core = core;
    if (ctl != d->ctl) {
        control_free(d->ctl);
        d->ctl = ctl;
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
    if (ctl != d->ctl)
        control_free(ctl);
    if (st != d->st)
        store_free(st);
    config_free(cfg);
    /* The old components were drained, which cannot be undone: make new
     * ones from the old configuration. */
    daemon_core_free(d->core);
    d->core = daemon_core_new(d->cfg, d->st, why, sizeof(why));
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
    } else {
        daemon_wait_min(&best, d->rebuild_at - mono);
    }
    int t = control_timeout_ms(d->ctl);
    if (t >= 0)
        daemon_wait_min(&best, t);
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
    if (daemon_fds_reserve(d, n + CONTROL_MAX_POLLFDS) < 0)
        goto no_memory;
    ctl_off = n;
    n_ctl = control_pollfds(d->ctl, d->fds + n, CONTROL_MAX_POLLFDS);
    n += n_ctl;

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
    if (k)
        daemon_core_tick(k);
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
            d->core = daemon_core_new(d->cfg, d->st, why, sizeof(why));
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
    daemon_core_free(d->core);
    d->core = NULL;
    log_info("stopped");

    sigaction(SIGPIPE, &old_pipe, NULL);
    sigaction(SIGHUP, &old_hup, NULL);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    sigprocmask(SIG_SETMASK, &old_mask, NULL);
    return status;
}
