#include "observe.h"

#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "clock.h"
#include "config.h"
#include "control.h"
#include "core.h"
#include "log.h"
#include "store.h"

/* Meta keys the components keep (read here for the status command). */
#define OBSERVE_META_LAST_FORWARD_APPLY   "last_forward_apply_ms"
#define OBSERVE_META_LAST_FORWARD_PUBLISH "last_forward_publish_ms"
#define OBSERVE_META_LAST_REVERSE_APPLY   "last_reverse_apply_ms"

/* ---- lifecycle ------------------------------------------------------- */

int observe_init(struct observe *o)
{
    memset(o, 0, sizeof(*o));
    o->started_ms = clock_wall_ms();
    o->started_mono = clock_mono_ms();
    o->api_last_ok = -1;
    o->api_reachable = -1;
    o->metrics = metrics_new();
    if (!o->metrics || metrics_describe_remotetask(o->metrics) < 0) {
        observe_release(o);
        return -1;
    }
    return 0;
}

void observe_release(struct observe *o)
{
    metrics_free(o->metrics);
    o->metrics = NULL;
    free(o->queues);
    o->queues = NULL;
    o->n_queues = 0;
}

/* ---- hooks ----------------------------------------------------------- */

void observe_on_api_call(struct observe *o, const char *func, rt_status status,
                         const char *err_type, double seconds)
{
    const char *outcome = status == RT_OK ? "ok" : status == RT_RETRY ? "retry" : "reject";

    o->api_calls++;
    /* An API error is an answer of the API: it is reachable. Only a call
     * that ended in transport (RT_RETRY) says it is not. */
    o->api_reachable = status != RT_RETRY;
    metrics_counter_add(o->metrics, METRICS_API_CALLS, 1, func, outcome, NULL);
    if (seconds >= 0)
        metrics_histogram_observe(o->metrics, METRICS_API_CALL_DURATION, seconds, func, NULL);
    if (status == RT_OK) {
        o->api_last_ok = 1;
        o->api_last_ok_ms = clock_wall_ms();
        return;
    }
    o->api_errors++;
    o->api_last_ok = 0;
    o->api_last_error_ms = clock_wall_ms();
    snprintf(o->api_last_error, sizeof(o->api_last_error), "%s: %s", func,
             err_type && *err_type ? err_type : "error");
    for (size_t i = 0; i < OBSERVE_API_ERR_KINDS; i++) {
        struct observe_api_err *e = &o->api_errs[i];
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
    o->api_errs_other++;
}

void observe_on_forward_applied(struct observe *o, int64_t event_ms, int64_t applied_ms)
{
    /* Messages of older clients carry no time of the event. */
    if (event_ms <= 0)
        return;
    double latency = (double)(applied_ms - event_ms) / 1000.0;
    metrics_histogram_observe(o->metrics, METRICS_FORWARD_LATENCY, latency > 0 ? latency : 0, NULL);
}

/* ---- totals ---------------------------------------------------------- */

/* Adds the counters of a component's stats to a total; gauges and times
 * are not summed (the current core's are the ones that mean something). */
static void observe_add_relay(struct relay_stats *to, const struct relay_stats *from)
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

/* The counters of an applier's slots, which both appliers' stats embed;
 * gauges (busy, running, slots) are not summed. */
static void observe_add_applier(struct applier_stats *to, const struct applier_stats *from)
{
    to->deliveries += from->deliveries;
    to->redelivered += from->redelivered;
    to->duplicates += from->duplicates;
    to->superseded += from->superseded;
    to->retried += from->retried;
    to->dead += from->dead;
    to->requeued += from->requeued;
    to->deferred += from->deferred;
    to->republished += from->republished;
    to->resent += from->resent;
}

static void observe_add_forward(struct forward_stats *to, const struct forward_stats *from)
{
    observe_add_applier(&to->applier, &from->applier);
    to->created += from->created;
    to->adopted += from->adopted;
    to->updated += from->updated;
    to->unchanged += from->unchanged;
    to->dead_undecodable += from->dead_undecodable;
    to->dead_unauthorized += from->dead_unauthorized;
    to->dead_department += from->dead_department;
    to->dead_api += from->dead_api;
    to->dead_seq += from->dead_seq;
    to->syncs += from->syncs;
}

static void observe_add_reverse(struct reverse_stats *to, const struct reverse_stats *from)
{
    observe_add_applier(&to->applier, &from->applier);
    to->applied += from->applied;
    to->unchanged += from->unchanged;
    to->syncs += from->syncs;
    to->dead_undecodable += from->dead_undecodable;
    to->dead_unauthorized += from->dead_unauthorized;
    to->dead_unknown_task += from->dead_unknown_task;
    to->dead_api += from->dead_api;
    to->dead_seq += from->dead_seq;
}

static void observe_add_statepub(struct statepub_stats *to, const struct statepub_stats *from)
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

/* The totals so far: the cores already retired plus k, the running one
 * (or NULL), whose gauges (busy slots, unconfirmed publishes...) are the
 * ones reported. */
static void observe_totals_now(const struct observe *o, const struct core *k,
                               struct observe_totals *t)
{
    struct observe_totals cur;

    *t = o->base;
    memset(&cur, 0, sizeof(cur));
    t->relay.in_progress = t->relay.unconfirmed = 0;
    t->fwd.applier.busy = t->rev.applier.busy = 0;
    t->sp.running = t->sp.viewing = t->sp.waiting = t->sp.unconfirmed = 0;
    if (!k)
        return;
    if (k->relay) {
        relay_stats(k->relay, &cur.relay);
        observe_add_relay(&t->relay, &cur.relay);
        t->relay.in_progress = cur.relay.in_progress;
        t->relay.unconfirmed = cur.relay.unconfirmed;
    }
    if (k->fwd) {
        forward_stats(k->fwd, &cur.fwd);
        observe_add_forward(&t->fwd, &cur.fwd);
        t->fwd.applier.busy = cur.fwd.applier.busy;
    }
    if (k->rev) {
        reverse_stats(k->rev, &cur.rev);
        observe_add_reverse(&t->rev, &cur.rev);
        t->rev.applier.busy = cur.rev.applier.busy;
    }
    if (k->sp) {
        statepub_stats(k->sp, &cur.sp);
        observe_add_statepub(&t->sp, &cur.sp);
        t->sp.running = cur.sp.running;
        t->sp.viewing = cur.sp.viewing;
        t->sp.waiting = cur.sp.waiting;
        t->sp.unconfirmed = cur.sp.unconfirmed;
    }
}

/* Broker connections established over the daemon's life, all cores. */
static uint64_t observe_reconnects(const struct observe *o, const struct core *k)
{
    uint64_t connects = o->base_connects + (k ? k->connects : 0);
    return connects > 1 ? connects - 1 : 0;
}

void observe_retire(struct observe *o, const struct core *k)
{
    struct observe_totals t;

    if (!k)
        return;
    memset(&t, 0, sizeof(t));
    if (k->relay)
        relay_stats(k->relay, &t.relay);
    if (k->fwd)
        forward_stats(k->fwd, &t.fwd);
    if (k->rev)
        reverse_stats(k->rev, &t.rev);
    if (k->sp)
        statepub_stats(k->sp, &t.sp);
    observe_add_relay(&o->base.relay, &t.relay);
    observe_add_forward(&o->base.fwd, &t.fwd);
    observe_add_reverse(&o->base.rev, &t.rev);
    observe_add_statepub(&o->base.sp, &t.sp);
    o->base_connects += k->connects;
}

/* ---- queues ---------------------------------------------------------- */

/* Adds a queue name to the list unless it is there already. */
static void observe_queue_add(struct observe_queue *q, size_t *n, size_t cap, const char *name)
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

/* Adds a client's forward and reverse queues, and the retry delay queues
 * and the dead-letter queue of the direction this instance consumes for it
 * (its applier's retries and dead letters). */
static void observe_queue_add_client(struct observe_queue *q, size_t *n, size_t cap,
                                     const char *client, enum broker_dir consumed)
{
    char name[BROKER_NAME_MAX];
    if (broker_queue_name(name, sizeof(name), BROKER_FORWARD, client) == 0)
        observe_queue_add(q, n, cap, name);
    if (broker_queue_name(name, sizeof(name), BROKER_REVERSE, client) == 0)
        observe_queue_add(q, n, cap, name);
    for (unsigned tier = 0; tier < BROKER_RETRY_TIERS; tier++)
        if (broker_retry_queue_name(name, sizeof(name), consumed, client, tier) == 0)
            observe_queue_add(q, n, cap, name);
    if (broker_dead_queue_name(name, sizeof(name), consumed, client) == 0)
        observe_queue_add(q, n, cap, name);
}

/* The queues this instance uses, in a stable order: per client its
 * forward, reverse, retry and dead-letter queues. Returns -1 when memory
 * ran out. */
static int observe_queues_list(struct observe *o, const struct config *cfg)
{
    size_t cap = (1 + cfg->server.n_clients) * (3 + BROKER_RETRY_TIERS), n = 0;
    struct observe_queue *q = calloc(cap, sizeof(*q));
    if (!q)
        return -1;
    if (cfg->client.enabled)
        observe_queue_add_client(q, &n, cap, cfg->client.id, BROKER_REVERSE);
    for (size_t i = 0; cfg->server.enabled && i < cfg->server.n_clients; i++)
        observe_queue_add_client(q, &n, cap, cfg->server.clients[i].id, BROKER_FORWARD);
    /* Keep what the broker said last for the queues still used. */
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < o->n_queues; j++)
            if (strcmp(q[i].name, o->queues[j].name) == 0)
                q[i] = o->queues[j];
    free(o->queues);
    o->queues = q;
    o->n_queues = n;
    return 0;
}

void observe_queues_refresh(struct observe *o, const struct config *cfg, struct core *k,
                            int64_t max_age_ms)
{
    int64_t mono = clock_mono_ms();

    if (o->queues_mono && mono - o->queues_mono < max_age_ms && o->n_queues)
        return;
    /* Questions out for less than the wait of a status: their answers are
     * on the way (or the broker is silent, which status then shows). */
    if (o->queues_asking && mono - o->queues_asked_mono < OBSERVE_QUEUES_ASK_TIMEOUT_MS)
        return;
    if (observe_queues_list(o, cfg) < 0)
        return;
    o->queues_asking = 0;
    int up = k && k->up && broker_connected(k->br);
    for (size_t i = 0; i < o->n_queues; i++) {
        struct observe_queue *q = &o->queues[i];
        q->asked = 0;
        if (!up) {
            q->known = 0;
            continue;
        }
        /* Answered later, through observe_on_depth(): the loop never waits
         * for the broker. */
        rt_status st = broker_depth_ask(k->br, q->name);
        if (st == RT_OK) {
            q->asked = 1;
            o->queues_asking++;
        } else {
            up = 0; /* not connected, or not reading: ask again next time */
        }
    }
    o->queues_asked_mono = mono;
    if (!o->queues_asking)
        o->queues_mono = mono;
}

void observe_on_depth(struct observe *o, const char *queue, int found, uint32_t ready,
                      uint32_t consumers)
{
    for (size_t i = 0; i < o->n_queues; i++) {
        struct observe_queue *q = &o->queues[i];
        if (!q->asked || strcmp(q->name, queue) != 0)
            continue;
        q->asked = 0;
        q->known = found > 0;
        if (found > 0) {
            q->ready = ready;
            q->consumers = consumers;
        }
        if (o->queues_asking && --o->queues_asking == 0)
            o->queues_mono = clock_mono_ms();
        return;
    }
}

int observe_queues_answered(const struct observe *o)
{
    return o->queues_asking == 0;
}

/* ---- metrics --------------------------------------------------------- */

static void observe_metrics_dead(struct metrics *m, const char *direction, uint64_t undecodable,
                                 uint64_t unauthorized, uint64_t department, uint64_t api,
                                 uint64_t seq, uint64_t other)
{
    metrics_counter_set(m, METRICS_DEAD_LETTERED, (double)seq, direction, "seq", NULL);
    metrics_counter_set(m, METRICS_DEAD_LETTERED, (double)undecodable, direction, "undecodable",
                        NULL);
    metrics_counter_set(m, METRICS_DEAD_LETTERED, (double)unauthorized, direction, "unauthorized",
                        NULL);
    metrics_counter_set(m, METRICS_DEAD_LETTERED, (double)department, direction, "department",
                        NULL);
    metrics_counter_set(m, METRICS_DEAD_LETTERED, (double)api, direction, "api", NULL);
    metrics_counter_set(m, METRICS_DEAD_LETTERED, (double)other, direction, "other", NULL);
}

/* The messages published and confirmed, per kind. */
static void observe_metrics_messages(struct metrics *m, const struct observe_totals *t,
                                     const struct observe_view *v)
{
    metrics_counter_set(m, METRICS_EVENTS_RECORDED, (double)t->relay.taken, NULL);
    metrics_counter_set(m, METRICS_MESSAGES_PUBLISHED, (double)t->relay.published, "task", NULL);
    metrics_counter_set(m, METRICS_MESSAGES_CONFIRMED, (double)t->relay.confirmed, "task", NULL);
    metrics_counter_set(m, METRICS_MESSAGES_PUBLISHED, (double)t->sp.published, "state", NULL);
    metrics_counter_set(m, METRICS_MESSAGES_CONFIRMED, (double)t->sp.confirmed, "state", NULL);
    metrics_counter_set(m, METRICS_MESSAGES_PUBLISHED, (double)v->sync_published, "sync", NULL);
    metrics_counter_set(m, METRICS_MESSAGES_CONFIRMED, (double)v->sync_confirmed, "sync", NULL);
    /* The publisher counts sync_done messages once confirmed only. */
    metrics_counter_set(m, METRICS_MESSAGES_PUBLISHED, (double)t->sp.syncs_served, "sync_done",
                        NULL);
    metrics_counter_set(m, METRICS_MESSAGES_CONFIRMED, (double)t->sp.syncs_served, "sync_done",
                        NULL);
    /* The appliers count their retry and dead-letter copies once
     * confirmed (and requeue the delivery otherwise). */
    uint64_t retried = t->fwd.applier.retried + t->rev.applier.retried,
             dead = t->fwd.applier.dead + t->rev.applier.dead;
    metrics_counter_set(m, METRICS_MESSAGES_PUBLISHED, (double)retried, "retry", NULL);
    metrics_counter_set(m, METRICS_MESSAGES_CONFIRMED, (double)retried, "retry", NULL);
    metrics_counter_set(m, METRICS_MESSAGES_PUBLISHED, (double)dead, "dead", NULL);
    metrics_counter_set(m, METRICS_MESSAGES_CONFIRMED, (double)dead, "dead", NULL);
}

/* What the appliers did with their deliveries. */
static void observe_metrics_applied(struct metrics *m, const struct observe_totals *t)
{
    metrics_counter_set(m, METRICS_APPLIED, (double)(t->fwd.created + t->fwd.adopted), "forward",
                        "created", NULL);
    metrics_counter_set(m, METRICS_APPLIED, (double)t->fwd.updated, "forward", "updated", NULL);
    metrics_counter_set(m, METRICS_APPLIED, (double)t->fwd.unchanged, "forward", "unchanged", NULL);
    metrics_counter_set(m, METRICS_APPLIED,
                        (double)(t->fwd.applier.duplicates + t->fwd.applier.superseded), "forward",
                        "duplicate", NULL);
    metrics_counter_set(m, METRICS_APPLIED, (double)t->rev.applied, "reverse", "updated", NULL);
    metrics_counter_set(m, METRICS_APPLIED, (double)t->rev.unchanged, "reverse", "unchanged", NULL);
    metrics_counter_set(m, METRICS_APPLIED,
                        (double)(t->rev.applier.duplicates + t->rev.applier.superseded), "reverse",
                        "duplicate", NULL);
    metrics_counter_set(m, METRICS_RETRIED, (double)t->fwd.applier.retried, "forward", NULL);
    metrics_counter_set(m, METRICS_RETRIED, (double)t->rev.applier.retried, "reverse", NULL);
    metrics_counter_set(m, METRICS_RETRY_RESENT, (double)t->fwd.applier.resent, "forward", NULL);
    metrics_counter_set(m, METRICS_RETRY_RESENT, (double)t->rev.applier.resent, "reverse", NULL);
    observe_metrics_dead(m, "forward", t->fwd.dead_undecodable, t->fwd.dead_unauthorized,
                         t->fwd.dead_department, t->fwd.dead_api, t->fwd.dead_seq, 0);
    observe_metrics_dead(m, "reverse", t->rev.dead_undecodable, t->rev.dead_unauthorized, 0,
                         t->rev.dead_api, t->rev.dead_seq, t->rev.dead_unknown_task);
}

/* The queues' depths, asked again when they are older than a scrape may
 * see them. */
static void observe_metrics_queues(struct observe *o, const struct observe_view *v)
{
    struct metrics *m = o->metrics;

    observe_queues_refresh(o, v->cfg, v->core, OBSERVE_QUEUES_METRICS_AGE_MS);
    metrics_reset(m, METRICS_QUEUE_READY);
    metrics_reset(m, METRICS_QUEUE_CONSUMERS);
    for (size_t i = 0; i < o->n_queues; i++) {
        if (!o->queues[i].known)
            continue;
        metrics_gauge_set(m, METRICS_QUEUE_READY, o->queues[i].ready, o->queues[i].name, NULL);
        metrics_gauge_set(m, METRICS_QUEUE_CONSUMERS, o->queues[i].consumers, o->queues[i].name,
                          NULL);
    }
}

/* The store's outbox and links, the work in flight, the control socket's
 * refusals and the store's commits and syncs. */
static void observe_metrics_work(struct observe *o, const struct observe_view *v,
                                 const struct observe_totals *t)
{
    struct metrics *m = o->metrics;
    const struct core *k = v->core;
    uint64_t backlog = 0, links = 0;
    int64_t oldest = 0;

    if (store_outbox_backlog(v->st, &backlog, &oldest) == RT_OK) {
        int64_t age = oldest ? clock_wall_ms() - oldest : 0;
        metrics_gauge_set(m, METRICS_OUTBOX_BACKLOG, (double)backlog, NULL);
        metrics_gauge_set(m, METRICS_OUTBOX_OLDEST_AGE, age > 0 ? (double)age / 1000.0 : 0, NULL);
    }
    if (store_link_count(v->st, NULL, &links) == RT_OK)
        metrics_gauge_set(m, METRICS_LINKS, (double)links, NULL);
    metrics_gauge_set(m, METRICS_INFLIGHT, k ? (double)billmgr_inflight(k->bm) : 0, "api_calls",
                      NULL);
    metrics_gauge_set(m, METRICS_INFLIGHT, k && k->up ? (double)broker_unconfirmed(k->br) : 0,
                      "unconfirmed", NULL);
    metrics_gauge_set(m, METRICS_INFLIGHT, (double)(t->fwd.applier.busy + t->rev.applier.busy),
                      "slots", NULL);
    metrics_gauge_set(m, METRICS_UP, k && k->up ? 1 : 0, NULL);
    metrics_counter_set(m, METRICS_CONTROL_REFUSED,
                        (double)(o->control_refused_base + control_refused(v->ctl)), NULL);
    struct store_sync_stats sync;
    store_sync_stats(v->st, &sync);
    metrics_counter_set(m, METRICS_STORE_COMMITS, (double)sync.commits, NULL);
    metrics_counter_set(m, METRICS_STORE_SYNCS, (double)sync.syncs, NULL);
}

/* The broker's state and node, the BILLmanager's reachability and the
 * state cycles of the server role. */
static void observe_metrics_links(struct observe *o, const struct observe_view *v)
{
    static const char *const states[] = {"connected", "blocked",    "unreachable",
                                         "refused",   "connecting", "reconnecting"};
    struct metrics *m = o->metrics;
    const struct core *k = v->core;
    const char *state = core_broker_state(k);

    for (size_t i = 0; i < sizeof(states) / sizeof(states[0]); i++)
        metrics_gauge_set(m, METRICS_BROKER_STATE, strcmp(states[i], state) == 0 ? 1 : 0, states[i],
                          NULL);
    metrics_reset(m, METRICS_BROKER_NODE);
    if (k)
        metrics_gauge_set(m, METRICS_BROKER_NODE, 1, broker_node(k->br), NULL);
    /* NaN until a call tells: an idle daemon is not an unreachable API. */
    metrics_gauge_set(m, METRICS_API_UP, o->api_reachable >= 0 ? o->api_reachable : NAN, NULL);
    metrics_gauge_set(m, METRICS_SYNC_INTERVAL,
                      v->cfg->server.enabled ? v->cfg->server.sync_interval : 0, NULL);
    if (k && k->sp) {
        struct statepub_stats ss;
        statepub_stats(k->sp, &ss);
        int64_t last = ss.last_cycle_ms ? ss.last_cycle_ms : o->started_ms;
        metrics_gauge_set(m, METRICS_REVERSE_CYCLE_LAST, (double)last / 1000.0, NULL);
        metrics_gauge_set(m, METRICS_REVERSE_CYCLE_DURATION,
                          (double)ss.last_cycle_duration_ms / 1000.0, NULL);
    }
}

/* Copies the running totals and the gauges into the registry. */
static void observe_metrics_update(struct observe *o, const struct observe_view *v)
{
    struct metrics *m = o->metrics;
    struct observe_totals t;

    observe_totals_now(o, v->core, &t);
    observe_metrics_messages(m, &t, v);
    observe_metrics_applied(m, &t);
    metrics_counter_set(m, METRICS_BROKER_RECONNECTS, (double)observe_reconnects(o, v->core), NULL);
    observe_metrics_queues(o, v);
    observe_metrics_work(o, v, &t);
    observe_metrics_links(o, v);

    uint64_t refused = metrics_refused(m);
    if (refused > o->metrics_refused) {
        log_warning("metrics: %" PRIu64 " series refused so far (label values too long or "
                    "caps reached)",
                    refused);
        o->metrics_refused = refused;
    }
}

int observe_metrics_render(struct observe *o, const struct observe_view *v, struct buf *out)
{
    observe_metrics_update(o, v);
    return metrics_render(o->metrics, out);
}

/* ---- status ---------------------------------------------------------- */

/* A meta time of the store, 0 when unknown. */
static json_int_t observe_meta_ms(struct store *st, const char *key)
{
    int64_t v = 0;
    bool found = false;
    if (store_meta_get_i64(st, key, &v, &found) != RT_OK || !found)
        return 0;
    return (json_int_t)v;
}

/* The roles of the configuration: "client", "server" or both. */
static json_t *observe_status_roles(const struct config *cfg)
{
    json_t *roles = json_array();
    if (cfg->client.enabled)
        json_array_append_new(roles, json_string("client"));
    if (cfg->server.enabled)
        json_array_append_new(roles, json_string("server"));
    return roles;
}

/* The queues as the broker last reported them, with what this instance
 * holds unacknowledged of each. */
static json_t *observe_status_queues(const struct observe *o, const struct core *k)
{
    json_t *queues = json_array();
    for (size_t i = 0; i < o->n_queues; i++) {
        const struct observe_queue *q = &o->queues[i];
        json_t *jq = json_pack("{s:s,s:I}", "name", q->name, "unacked",
                               (json_int_t)(k ? core_unacked(k, q->name) : 0));
        if (q->known) {
            json_object_set_new(jq, "ready", json_integer(q->ready));
            json_object_set_new(jq, "consumers", json_integer(q->consumers));
        } else {
            json_object_set_new(jq, "ready", json_null());
            json_object_set_new(jq, "consumers", json_null());
        }
        json_array_append_new(queues, jq);
    }
    return queues;
}

/* The members every status has: the instance, the broker, the
 * BILLmanager, the queues and the last times of each direction. */
static json_t *observe_status_base(const struct observe *o, const struct observe_view *v,
                                   int64_t now)
{
    const struct core *k = v->core;
    const struct config *cfg = v->cfg;
    json_t *roles = observe_status_roles(cfg);
    json_t *queues = observe_status_queues(o, k);
    const char *broker_state = core_broker_state(k);
    const char *api_state = o->api_last_ok < 0 ? "unknown" : o->api_last_ok ? "ok" : "failing";

    return json_pack(
        "{s:b,s:s,s:I,s:s,s:o,s:I,s:I,"
        "s:{s:s,s:b,s:b,s:I,s:s,s:s},"
        "s:{s:s,s:s,s:I,s:I,s:s,s:I},"
        "s:o,s:I,"
        "s:{s:I,s:I,s:I,s:I,s:I}}",
        "ok", 1, "instance", cfg->instance, "pid", (json_int_t)getpid(), "version", RT_VERSION,
        "roles", roles, "started_ms", (json_int_t)o->started_ms, "uptime_s",
        (json_int_t)((clock_mono_ms() - o->started_mono) / 1000), "broker", "state", broker_state,
        "connected", k && k->up, "blocked", k && k->up && broker_blocked(k->br), "reconnects",
        (json_int_t)observe_reconnects(o, k), "last_error",
        k ? k->last_error : "the components are not running", "uri", cfg->amqp.uri_redacted,
        "billmanager", "state", api_state, "url", cfg->billmanager.url, "calls",
        (json_int_t)o->api_calls, "last_ok_ms", (json_int_t)o->api_last_ok_ms, "last_error",
        o->api_last_error, "last_error_ms", (json_int_t)o->api_last_error_ms, "queues", queues,
        "queues_age_ms", (json_int_t)(o->queues_mono ? clock_mono_ms() - o->queues_mono : -1),
        "last", "forward_apply_ms", observe_meta_ms(v->st, OBSERVE_META_LAST_FORWARD_APPLY),
        "forward_publish_ms", observe_meta_ms(v->st, OBSERVE_META_LAST_FORWARD_PUBLISH),
        "reverse_cycle_ms", observe_meta_ms(v->st, STATEPUB_META_LAST_CYCLE), "reverse_apply_ms",
        observe_meta_ms(v->st, OBSERVE_META_LAST_REVERSE_APPLY), "now_ms", (json_int_t)now);
}

/* The outbox's backlog (or the store's error) and the store's commits. */
static void observe_status_store(json_t *resp, struct store *st, int outbox_ok, uint64_t backlog,
                                 int64_t oldest, int64_t now)
{
    if (outbox_ok)
        json_object_set_new(resp, "outbox",
                            json_pack("{s:I,s:I,s:I}", "backlog", (json_int_t)backlog, "oldest_ms",
                                      (json_int_t)oldest, "oldest_age_s",
                                      (json_int_t)(oldest ? (now - oldest) / 1000 : 0)));
    else
        json_object_set_new(resp, "outbox", json_pack("{s:s}", "error", store_strerror(st)));
    struct store_sync_stats ss;
    store_sync_stats(st, &ss);
    json_object_set_new(resp, "store",
                        json_pack("{s:I,s:I,s:I,s:I}", "commits", (json_int_t)ss.commits, "syncs",
                                  (json_int_t)ss.syncs, "checkpoints", (json_int_t)ss.checkpoints,
                                  "unsynced", (json_int_t)ss.unsynced));
}

/* The counters of the status command's "counters" member. */
static json_t *observe_status_counters(const struct observe_totals *t)
{
    json_t *counters =
        json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "events_recorded",
                  (json_int_t)t->relay.taken, "tasks_published", (json_int_t)t->relay.confirmed,
                  "reconciliations", (json_int_t)t->relay.reconciliations, "forward_created",
                  (json_int_t)(t->fwd.created + t->fwd.adopted), "forward_updated",
                  (json_int_t)t->fwd.updated, "forward_unchanged", (json_int_t)t->fwd.unchanged,
                  "reverse_cycles", (json_int_t)t->sp.cycles, "states_published",
                  (json_int_t)t->sp.confirmed, "syncs_served", (json_int_t)t->sp.syncs_served,
                  "reverse_updated", (json_int_t)t->rev.applied, "reverse_unchanged",
                  (json_int_t)t->rev.unchanged, "syncs_done", (json_int_t)t->rev.syncs);
    if (counters) {
        /* Messages dropped by seq: redeliveries, replays, republished
         * messages after a crash. */
        json_object_set_new(counters, "forward_duplicates",
                            json_integer((json_int_t)t->fwd.applier.duplicates));
        json_object_set_new(counters, "forward_superseded",
                            json_integer((json_int_t)t->fwd.applier.superseded));
        json_object_set_new(counters, "reverse_duplicates",
                            json_integer((json_int_t)t->rev.applier.duplicates));
        json_object_set_new(counters, "reverse_superseded",
                            json_integer((json_int_t)t->rev.applier.superseded));
    }
    return counters;
}

/* The counters of the status command's "errors" member. */
static json_t *observe_status_errors(const struct observe *o, const struct observe_view *v,
                                     const struct observe_totals *t)
{
    json_t *api = json_object();
    for (size_t i = 0; i < OBSERVE_API_ERR_KINDS && o->api_errs[i].count; i++)
        json_object_set_new(api, o->api_errs[i].type,
                            json_integer((json_int_t)o->api_errs[i].count));
    if (o->api_errs_other)
        json_object_set_new(api, "other", json_integer((json_int_t)o->api_errs_other));
    json_t *errs = json_pack(
        "{s:{s:{s:I,s:I,s:I,s:I},s:{s:I,s:I,s:I,s:I}},s:{s:I,s:I},s:o,s:I,s:I,s:I}",
        "dead_lettered", "forward", "undecodable", (json_int_t)t->fwd.dead_undecodable,
        "unauthorized", (json_int_t)t->fwd.dead_unauthorized, "department",
        (json_int_t)t->fwd.dead_department, "api", (json_int_t)t->fwd.dead_api, "reverse",
        "undecodable", (json_int_t)t->rev.dead_undecodable, "unauthorized",
        (json_int_t)t->rev.dead_unauthorized, "unknown_task", (json_int_t)t->rev.dead_unknown_task,
        "api", (json_int_t)t->rev.dead_api, "retried", "forward",
        (json_int_t)t->fwd.applier.retried, "reverse", (json_int_t)t->rev.applier.retried, "api",
        api, "reconnects", (json_int_t)observe_reconnects(o, v->core), "requeued",
        (json_int_t)(t->fwd.applier.requeued + t->rev.applier.requeued), "outbox_deferred",
        (json_int_t)t->relay.deferred);
    if (!errs)
        return NULL;
    json_t *dl = json_object_get(errs, "dead_lettered");
    json_object_set_new(json_object_get(dl, "forward"), "seq",
                        json_integer((json_int_t)t->fwd.dead_seq));
    json_object_set_new(json_object_get(dl, "reverse"), "seq",
                        json_integer((json_int_t)t->rev.dead_seq));
    /* A failing store holds deliveries in their slots and retries the
     * step: how often, and how often the broker refused a copy. */
    json_object_set_new(
        errs, "store_deferred",
        json_integer((json_int_t)(t->fwd.applier.deferred + t->rev.applier.deferred)));
    json_object_set_new(
        errs, "copies_republished",
        json_integer((json_int_t)(t->fwd.applier.republished + t->rev.applier.republished)));
    /* Retry copies the broker confirmed and never brought back from a
     * delay queue, sent again by the watch (consumer/applier_watch.c). */
    json_object_set_new(errs, "resent",
                        json_pack("{s:I,s:I}", "forward", (json_int_t)t->fwd.applier.resent,
                                  "reverse", (json_int_t)t->rev.applier.resent));
    json_object_set_new(
        errs, "redelivered",
        json_integer((json_int_t)(t->fwd.applier.redelivered + t->rev.applier.redelivered)));
    json_object_set_new(
        errs, "control_refused",
        json_integer((json_int_t)(o->control_refused_base + control_refused(v->ctl))));
    return errs;
}

json_t *observe_status(struct observe *o, const struct observe_view *v)
{
    const struct core *k = v->core;
    struct observe_totals t;
    uint64_t backlog = 0, links = 0;
    int64_t oldest = 0, now = clock_wall_ms();

    observe_totals_now(o, k, &t);
    int outbox_ok = store_outbox_backlog(v->st, &backlog, &oldest) == RT_OK;
    int links_ok = store_link_count(v->st, NULL, &links) == RT_OK;
    json_t *resp = observe_status_base(o, v, now);
    if (!resp)
        return NULL;
    observe_status_store(resp, v->st, outbox_ok, backlog, oldest, now);
    json_t *jb = json_object_get(resp, "broker");
    if (jb && k) {
        json_object_set_new(jb, "node", json_string(broker_node(k->br)));
        json_object_set_new(jb, "silent_ms", json_integer((json_int_t)broker_silent_ms(k->br)));
    }
    json_t *japi = json_object_get(resp, "billmanager");
    if (japi && o->api_reachable >= 0)
        json_object_set_new(japi, "reachable", json_boolean(o->api_reachable));
    if (links_ok)
        json_object_set_new(resp, "links", json_integer((json_int_t)links));
    else
        json_object_set_new(resp, "links", json_null());
    json_object_set_new(resp, "inflight",
                        json_pack("{s:I,s:I,s:I,s:I}", "api_calls",
                                  (json_int_t)(k ? billmgr_inflight(k->bm) : 0), "unconfirmed",
                                  (json_int_t)(k && k->up ? broker_unconfirmed(k->br) : 0), "slots",
                                  (json_int_t)(t.fwd.applier.busy + t.rev.applier.busy),
                                  "checkevents", (json_int_t)v->checkevents));
    json_object_set_new(resp, "counters", observe_status_counters(&t));
    json_object_set_new(resp, "errors", observe_status_errors(o, v, &t));
    return resp;
}
