/*
 * observe.h - what remotetaskd shows of itself: the status command's JSON
 * and the Prometheus metrics.
 *
 * Both are built from the same numbers: the components' counters summed
 * over every core this daemon ran (a reload rebuilds the components with
 * counters at zero, and Prometheus counters must never go down), the
 * current core's gauges, what the BILLmanager calls found, the store's
 * outbox and links, and the depth of every queue this instance uses.
 *
 * Queue depths are asked from the broker (one passive declare per queue,
 * broker_depth_ask(): the loop never waits for the answers, which come
 * back through observe_on_depth()) only when someone looks: the status
 * command reuses them for up to OBSERVE_QUEUES_STATUS_AGE_MS and waits a
 * moment for fresh ones (commands.h says how long), a scrape of the
 * metrics serves what it has and asks again after
 * OBSERVE_QUEUES_METRICS_AGE_MS, so that a scraper cannot make the loop
 * talk to the broker more often. A broker that does not answer leaves the
 * depths unknown (null), never the daemon stuck. AMQP cannot ask the
 * broker how many deliveries are unacknowledged; "unacked" is what this
 * instance holds.
 *
 * What observe does not keep itself (the configuration, the core, the
 * store, the control socket, the commands' numbers) it reads from a
 * struct observe_view that its caller, the daemon, fills: observe includes
 * nothing of commands, nor the daemon's bridge.h. The daemon asks it for
 * the status JSON (on behalf of the status command) and for the metrics.
 */
#ifndef RT_OBSERVE_H
#define RT_OBSERVE_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "billmgr.h"
#include "broker.h"
#include "buf.h"
#include "forward.h"
#include "metrics.h"
#include "relay.h"
#include "reverse.h"
#include "rt.h"
#include "statepub.h"

#define OBSERVE_QUEUES_STATUS_AGE_MS  1000
#define OBSERVE_QUEUES_METRICS_AGE_MS 10000
/* Questions unanswered for this long are asked again. */
#define OBSERVE_QUEUES_ASK_TIMEOUT_MS 5000
/* Kinds of API errors counted one by one for the status command; more
 * kinds count as "other". The kinds come from the remote API's answers. */
#define OBSERVE_API_ERR_KINDS 16

struct config;
struct control;
struct core;
struct store;

/* One queue of the status command and the metrics, as the broker last
 * reported it. */
struct observe_queue {
    char name[BROKER_NAME_MAX];
    uint32_t ready;
    uint32_t consumers;
    int known; /* 0: the broker could not say (not connected, no such queue) */
    int asked; /* a question about it is out */
};

/* Counters of the components, summed over cores. */
struct observe_totals {
    struct relay_stats relay;
    struct forward_stats fwd;
    struct reverse_stats rev;
    struct statepub_stats sp;
};

/* API errors of one kind ($type, or http, timeout, transport...). */
struct observe_api_err {
    char type[BILLMGR_ERR_TYPE_MAX];
    uint64_t count;
};

struct observe {
    int64_t started_ms;   /* wall clock */
    int64_t started_mono; /* for the uptime */

    struct observe_totals base; /* counters of the cores already retired */
    uint64_t base_connects;     /* broker connections of those cores */

    struct observe_queue *queues;
    size_t n_queues;
    int64_t queues_mono; /* when the last answers were complete, monotonic ms; 0 = never */
    size_t queues_asking;     /* questions out */
    int64_t queues_asked_mono; /* when they were asked */

    /* The BILLmanager as the calls found it. */
    uint64_t api_calls;
    uint64_t api_errors;
    struct observe_api_err api_errs[OBSERVE_API_ERR_KINDS];
    uint64_t api_errs_other;
    int api_last_ok; /* the last call succeeded; -1 = no call yet */
    int api_reachable; /* the last call got an answer of the API; -1 = no call yet */
    int64_t api_last_ok_ms;
    int64_t api_last_error_ms;
    char api_last_error[BILLMGR_ERR_TYPE_MAX + 128];

    uint64_t control_refused_base; /* refusals of control sockets closed by reloads */

    struct metrics *metrics; /* the registry /metrics renders */
    uint64_t metrics_refused;
};

/* Zeroes o, notes the start time and makes the metrics registry with
 * remotetask's families. Returns -1 (out of memory) with o released. */
int observe_init(struct observe *o);

/* Frees the registry and the queue list. Accepts a zeroed or half-built
 * o. */
void observe_release(struct observe *o);

/* Counts a completed BILLmanager call (the billmgr_opts.on_call hook):
 * the api metrics and the status command's view of the BILLmanager. */
void observe_on_api_call(struct observe *o, const char *func, rt_status status,
                         const char *err_type, double seconds);

/* Observes the latency of an applied forward message (event to apply),
 * when the message carried the time of its event. */
void observe_on_forward_applied(struct observe *o, int64_t event_ms, int64_t applied_ms);

/* Asks the broker, without waiting, for the depth of every queue this
 * instance uses, unless the answers are younger than max_age_ms or
 * questions are already out. Marks every queue unknown when k's broker is
 * not connected. */
void observe_queues_refresh(struct observe *o, const struct config *cfg, struct core *k,
                            int64_t max_age_ms);

/* An answer to one of those questions (the broker's on_depth, through the
 * core's hook): found 1, 0 (no such queue) or -1 (connection lost). */
void observe_on_depth(struct observe *o, const char *queue, int found, uint32_t ready,
                      uint32_t consumers);

/* 1 when no question is waiting for its answer. */
int observe_queues_answered(const struct observe *o);

/* Adds the counters of k, a core about to be freed, to the totals carried
 * across reloads. Call it after core_disconnect(k): the broker's LOST
 * reports still move counters. Accepts NULL. */
void observe_retire(struct observe *o, const struct core *k);

/* What the status JSON and the metrics read besides o: the daemon's parts
 * and the numbers of its commands, filled by the daemon, which holds them
 * all. Borrowed for the call only. */
struct observe_view {
    const struct config *cfg;  /* the running configuration */
    struct core *core;         /* NULL after a failed rebuild */
    struct store *st;          /* the daemon's store */
    const struct control *ctl; /* the control socket, for its refusals */
    uint64_t sync_published;   /* checkevent's sync requests published */
    uint64_t sync_confirmed;   /* ... and confirmed by the broker */
    size_t checkevents;        /* checkevents waiting for their answer */
};

/* Copies the running totals and the gauges of v into o's registry and
 * renders it (metrics_render()) into out: the body of one scrape. Returns
 * 0, or -1 when out's cap was reached. */
int observe_metrics_render(struct observe *o, const struct observe_view *v, struct buf *out);

/* The status command's answer, a new reference, or NULL when memory ran
 * out. */
json_t *observe_status(struct observe *o, const struct observe_view *v);

#endif
