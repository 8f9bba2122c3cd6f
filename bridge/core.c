#include "core.h"

#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "billmgr.h"
#include "clock.h"
#include "config_opts.h"
#include "log.h"
#include "relay.h"
#include "statepub.h"
#include "store_journal.h"

/* How often freed heap pages are given back (core_trim). */
#define CORE_TRIM_MS 60000

/* ---- broker callbacks ---------------------------------------------- */

static void core_on_confirm(void *arg, uint64_t tag, enum broker_fate fate)
{
    struct core *k = arg;
    /* Each component keeps the tags it published and ignores the others;
     * so does the owner for the checkevent requests it publishes itself. */
    if (k->relay)
        relay_on_confirm(k->relay, tag, fate);
    if (k->rev)
        reverse_on_confirm(k->rev, tag, fate);
    if (k->fwd)
        forward_on_confirm(k->fwd, tag, fate);
    if (k->sp)
        statepub_on_confirm(k->sp, tag, fate);
    k->hooks.on_confirm(k->hooks.arg, k, tag, fate);
}

static int core_has_prefix(const char *s, const char *prefix)
{
    return s && strncmp(s, prefix, strlen(prefix)) == 0;
}

static void core_on_delivery(void *arg, const struct broker_delivery *d)
{
    struct core *k = arg;
    /* The queue tells the direction: the server consumes the forward
     * queues of its clients, the client its own reverse queue. */
    if (k->fwd && core_has_prefix(d->queue, BROKER_EXCHANGE_FORWARD ".")) {
        forward_on_delivery(k->fwd, d);
        return;
    }
    if (k->rev && core_has_prefix(d->queue, BROKER_EXCHANGE_REVERSE ".")) {
        reverse_on_delivery(k->rev, d);
        return;
    }
    /* A delivery without a consumer of ours goes back to its queue for
     * whoever consumes it. */
    log_warning("delivery from queue \"%s\" with no component to take it: requeued", d->queue);
    broker_reject(k->br, d->delivery_tag, 1);
}

static void core_on_cancel(void *arg, const char *queue)
{
    struct core *k = arg;
    /* The queue was deleted under us. Reconnecting declares it again and
     * consumes it again; that cannot be done from inside a callback. */
    k->cancelled = 1;
    snprintf(k->cancelled_queue, sizeof(k->cancelled_queue), "%s", queue ? queue : "");
}

static void core_on_depth(void *arg, const char *queue, int found, uint32_t ready,
                          uint32_t consumers)
{
    struct core *k = arg;
    k->hooks.on_depth(k->hooks.arg, queue, found, ready, consumers);
}

/* A client's sync request reached the forward applier. */
static void core_on_sync(void *arg, const char *client, const char *id)
{
    struct core *k = arg;
    if (!k->sp)
        return;
    /* statepub logs why it refuses one; the client then times out. */
    if (statepub_sync(k->sp, client, id) == RT_OK)
        k->sp_next = 0;
}

/* ---- lifecycle ------------------------------------------------------ */

void core_free(struct core *k)
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

void core_disconnect(struct core *k)
{
    if (k && k->br)
        broker_disconnect(k->br);
}

/* Adds id to the list to declare unless it is there already. */
static void core_add_client(struct core *k, const char *id)
{
    for (size_t i = 0; i < k->n_clients; i++)
        if (strcmp(k->clients[i], id) == 0)
            return;
    k->clients[k->n_clients++] = id;
}

struct core *core_new(const struct config *cfg, struct store *st, const struct core_hooks *hooks,
                      char *err, size_t errlen)
{
    struct billmgr_opts bo;
    struct broker_opts o;
    char name[128], why[CORE_ERR_MAX];

    struct core *k = calloc(1, sizeof(*k));
    if (!k) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    k->cfg = cfg;
    k->st = st;
    k->hooks = *hooks;
    /* The journal's bounds are this configuration's (a reload changes
     * them); a journal that cannot be set up costs the trace, not a task. */
    if (store_journal_configure(st, cfg->journal.entries, cfg->journal.days) != RT_OK)
        log_warning("the task journal is off: %s", store_strerror(st));
    backoff_init(&k->backoff, CORE_RECONNECT_BASE_MS, CORE_RECONNECT_MAX_MS, 0);
    k->clients = calloc(cfg->server.n_clients + 1, sizeof(*k->clients));
    if (!k->clients) {
        snprintf(err, errlen, "out of memory");
        goto free_core;
    }
    if (cfg->client.enabled)
        core_add_client(k, cfg->client.id);
    for (size_t i = 0; cfg->server.enabled && i < cfg->server.n_clients; i++)
        core_add_client(k, cfg->server.clients[i].id);

    config_opts_billmgr(cfg, &bo);
    bo.on_call = hooks->on_api_call;
    bo.on_call_arg = hooks->arg;
    k->bm = billmgr_new(&bo, why, sizeof(why));
    if (!k->bm) {
        snprintf(err, errlen, "cannot set up the BILLmanager client: %s", why);
        goto free_core;
    }
    config_opts_broker(cfg, &o, name, sizeof(name));
    o.on_confirm = core_on_confirm;
    o.on_delivery = core_on_delivery;
    o.on_cancel = core_on_cancel;
    o.on_depth = core_on_depth;
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
        reverse_set_sync_done_hook(k->rev, hooks->on_sync_done, hooks->arg);
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
        forward_set_sync_hook(k->fwd, core_on_sync, k);
        forward_set_applied_hook(k->fwd, hooks->on_forward_applied, hooks->arg);
    }
    return k;

free_core:
    core_free(k);
    return NULL;
}

/* ---- work in flight ------------------------------------------------- */

int core_idle(const struct core *k)
{
    if (!k)
        return 1;
    return (!k->relay || relay_idle(k->relay)) && (!k->rev || reverse_idle(k->rev)) &&
           (!k->fwd || forward_idle(k->fwd)) && (!k->sp || statepub_idle(k->sp));
}

void core_drain(struct core *k)
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

/* ---- the connection ------------------------------------------------- */

/* The entry of amqp.uri of the node the broker is (or was last)
 * connected to, redacted: a line about a connection names its node. */
static const char *core_node_uri(const struct core *k)
{
    const char *node = broker_node(k->br);
    const struct config_amqp *a = &k->cfg->amqp;
    for (size_t i = 0; i < a->n_nodes; i++) {
        char name[300];
        snprintf(name, sizeof(name), "%s:%d", a->nodes[i].host, a->nodes[i].port);
        if (strcmp(name, node) == 0)
            return a->nodes[i].uri_redacted;
    }
    return a->uris_redacted;
}

/* The connection is gone (or must go): close what is left of it and
 * schedule the next attempt. */
static void core_lost(struct core *k, const char *why)
{
    log_warning("lost the broker connection to %s: %s; reconnecting", core_node_uri(k),
                why);
    broker_disconnect(k->br);
    k->up = 0;
    k->cancelled = 0;
    k->failures = 0;
    k->last_error[0] = '\0';
    backoff_reset(&k->backoff);
    k->reconnect_at = clock_mono_ms() + backoff_next(&k->backoff);
}

/* An attempt failed (st is RT_RETRY or RT_REJECT, the reason in the
 * broker): schedule the next. Failures are logged per state change, not
 * per attempt, so that a broker down for hours does not flood the log. */
static void core_connect_failed(struct core *k, rt_status st)
{
    const struct config *cfg = k->cfg;
    const char *why = broker_strerror(k->br);
    int changed = strcmp(why, k->last_error) != 0;
    k->failures++;
    k->last_verdict = st;
    unsigned delay = st == RT_REJECT ? CORE_RECONNECT_MAX_MS : backoff_next(&k->backoff);
    if (st == RT_REJECT && (changed || k->failures % CORE_RECONNECT_REMIND == 0))
        log_error("the broker at %s refused \"%s\": %s; fix the broker or the configuration, "
                  "retrying every %u s",
                  cfg->amqp.uris_redacted, cfg->amqp.user, why, CORE_RECONNECT_MAX_MS / 1000);
    else if (st != RT_REJECT && (changed || k->failures <= CORE_RECONNECT_LOUD))
        log_warning("cannot connect to the broker at %s: %s; retrying in %u ms",
                    cfg->amqp.uris_redacted, why, delay);
    else if (k->failures % CORE_RECONNECT_REMIND == 0)
        log_warning("still cannot connect to the broker at %s after %u attempts: %s",
                    cfg->amqp.uris_redacted, k->failures, why);
    else
        log_debug("cannot connect to the broker at %s (attempt %u): %s", cfg->amqp.uris_redacted,
                  k->failures, why);
    snprintf(k->last_error, sizeof(k->last_error), "%s", why);
    broker_disconnect(k->br);
    k->reconnect_at = clock_mono_ms() + delay;
}

/* The broker connection is up: declare every client's topology without
 * waiting (a fresh broker takes seconds to create thousands of queues, and
 * the loop goes on meanwhile); core_declared() goes on when it is done. */
static void core_connected(struct core *k)
{
    rt_status st = broker_declare_begin(k->br, k->clients, k->n_clients);
    if (st != RT_OK) {
        core_connect_failed(k, st);
        return;
    }
    k->declaring = 1;
    k->declare_deadline = clock_mono_ms() + CORE_DECLARE_TIMEOUT_MS;
}

/* The topology is declared: tell the components. */
static void core_declared(struct core *k)
{
    const struct config *cfg = k->cfg;
    if (k->failures)
        log_info("connected to the broker at %s (node %s) as \"%s\" after %u failed attempts",
                 core_node_uri(k), broker_node(k->br), cfg->amqp.user, k->failures);
    else
        log_info("connected to the broker at %s (node %s) as \"%s\"", core_node_uri(k),
                 broker_node(k->br), cfg->amqp.user);
    k->up = 1;
    k->failures = 0;
    k->last_verdict = RT_OK;
    k->last_error[0] = '\0';
    k->connects++;
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
}

void core_maintain(struct core *k, int allow_connect)
{
    if (k->up && !broker_connected(k->br)) {
        core_lost(k, broker_strerror(k->br));
    } else if (k->up && k->cancelled) {
        char why[BROKER_NAME_MAX + 64];
        snprintf(why, sizeof(why), "the broker cancelled the consumer of \"%s\"",
                 k->cancelled_queue);
        core_lost(k, why);
    }
    if (!k->up && !broker_connecting(k->br) && allow_connect && clock_mono_ms() >= k->reconnect_at)
        broker_connect_async(k->br);
    if (!allow_connect && broker_connecting(k->br))
        broker_disconnect(k->br); /* stopping: no new connection */
}

void core_process(struct core *k)
{
    /* broker_process() never blocks: the loop calls it on every turn, so
     * that heartbeats and buffered frames are never late, whichever of the
     * fds or the timeout ended the wait. */
    if (broker_connecting(k->br)) {
        rt_status st = broker_process(k->br);
        if (broker_connected(k->br))
            core_connected(k);
        else if (!broker_connecting(k->br))
            core_connect_failed(k, st == RT_OK ? RT_RETRY : st);
        return;
    }
    if (k->declaring) {
        rt_status st = broker_process(k->br);
        if (st == RT_OK && broker_declare_done(k->br, &st)) {
            k->declaring = 0;
            if (st == RT_OK)
                core_declared(k);
            else
                core_connect_failed(k, st);
        } else if (st != RT_OK) {
            k->declaring = 0;
            core_connect_failed(k, st);
        } else if (clock_mono_ms() >= k->declare_deadline) {
            k->declaring = 0;
            core_connect_failed(k, RT_RETRY);
        }
        return;
    }
    if (k->up && broker_process(k->br) != RT_OK)
        core_lost(k, broker_strerror(k->br));
}

const char *core_broker_state(const struct core *k)
{
    if (!k)
        return "disconnected";
    if (k->up) {
        int hb = k->cfg->amqp.heartbeat;
        if (broker_blocked(k->br))
            return "blocked";
        if (hb > 0 && broker_silent_ms(k->br) > (int64_t)hb * 1000)
            return "unreachable";
        return "connected";
    }
    if (k->declaring || (k->connects == 0 && k->failures == 0))
        return "connecting";
    /* Lost for a reason other than silence (the broker closed it, a
     * consumer was cancelled) and no attempt has failed since: the node
     * answers, the daemon is only on its way back. */
    if (k->failures == 0 && !broker_lost_to_silence(k->br))
        return "reconnecting";
    return k->last_verdict == RT_REJECT ? "refused" : "unreachable";
}

/* ---- the loop's schedule -------------------------------------------- */

/* A backlog's peak (a broker outage, a slow API) leaves freed heap pages
 * resident: malloc keeps them for the next allocation. Once a minute they
 * are given back, so that the daemon's RSS follows what it holds, not the
 * largest backlog it has seen (bench/soak checks it over an hour). */
static void core_trim(struct core *k, int64_t now)
{
#ifdef __GLIBC__
    if (now - k->trimmed_at < CORE_TRIM_MS)
        return;
    k->trimmed_at = now;
    malloc_trim(0);
#else
    (void)k;
    (void)now;
#endif
}

void core_tick(struct core *k)
{
    /* The components schedule on the monotonic clock (issue 13.5): a wall
     * clock set back must not stall them. They read the wall clock
     * themselves for what they store or send. */
    int64_t now = clock_mono_ms();
    /* Nothing publishes while the topology is being declared: on a fresh
     * broker an exchange may not exist yet, and a publish to it would cost
     * the connection. The ticks run once it is done (core_declared). */
    if (k->declaring)
        return;
    if (k->relay && now >= k->relay_next)
        k->relay_next = relay_tick(k->relay, now);
    if (k->rev && now >= k->rev_next)
        k->rev_next = reverse_tick(k->rev, now);
    if (k->fwd && now >= k->fwd_next)
        k->fwd_next = forward_tick(k->fwd, now);
    if (k->sp && now >= k->sp_next)
        k->sp_next = statepub_tick(k->sp, now);
    /* Journal rows nothing committed for a second, and pruning in small
     * batches: it keeps its own schedule, and the components above wake
     * the loop at least once a second. */
    store_journal_tick(k->st, now);
    core_trim(k, now);
}

/* Lowers *best (-1 = none yet) to the wait until a deadline in ms. */
static void core_wait_min(int64_t *best, int64_t wait)
{
    if (wait < 0)
        wait = 0;
    if (*best < 0 || wait < *best)
        *best = wait;
}

int64_t core_timeout_ms(const struct core *k, int connecting)
{
    int64_t best = -1, mono = clock_mono_ms();

    if (k->up || k->declaring || broker_connecting(k->br)) {
        if (broker_wants_read_now(k->br))
            return 0;
        int t = broker_timeout_ms(k->br);
        if (t >= 0)
            core_wait_min(&best, t);
    } else if (connecting) {
        core_wait_min(&best, k->reconnect_at - mono);
    }
    int t = billmgr_timeout_ms(k->bm);
    if (t >= 0)
        core_wait_min(&best, t);
    if (k->declaring)
        return best; /* no tick runs before the topology is there */
    if (k->relay)
        core_wait_min(&best, k->relay_next - mono);
    if (k->fwd)
        core_wait_min(&best, k->fwd_next - mono);
    if (k->rev)
        core_wait_min(&best, k->rev_next - mono);
    if (k->sp)
        core_wait_min(&best, k->sp_next - mono);
    return best;
}

/* ---- what the status command asks ----------------------------------- */

size_t core_unacked(const struct core *k, const char *queue)
{
    struct reverse_stats rs;

    if (k->fwd && core_has_prefix(queue, BROKER_EXCHANGE_FORWARD "."))
        return forward_unacked(k->fwd, queue);
    if (k->rev && core_has_prefix(queue, BROKER_EXCHANGE_REVERSE ".")) {
        char mine[BROKER_NAME_MAX];
        if (broker_queue_name(mine, sizeof(mine), BROKER_REVERSE, k->cfg->client.id) < 0 ||
            strcmp(mine, queue) != 0)
            return 0;
        reverse_stats(k->rev, &rs);
        return rs.applier.busy;
    }
    return 0; /* retry and dead queues are never consumed here */
}
