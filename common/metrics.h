/*
 * metrics.h - a small registry of Prometheus metrics, rendered as text.
 *
 * One struct metrics holds families (a name, a type, a help text and up to
 * METRICS_MAX_LABELS label names) and their series (one per combination of
 * label values). The daemon registers the families once, moves the numbers
 * as things happen (or copies them from the components' *_stats structs
 * just before a scrape) and renders the whole registry in the Prometheus
 * text exposition format 0.0.4 for bridge/metrics_http.
 *
 * Label values may come from outside (API function names from the
 * configuration, queue names), so the registry is bounded: at most
 * METRICS_MAX_SERIES series in all and METRICS_MAX_SERIES_PER_FAMILY in
 * one family; a label value longer than METRICS_LABEL_VALUE_MAX bytes or
 * not valid UTF-8 is refused rather than cut (two cut values could
 * collide into one series). Whatever is refused is counted, see
 * metrics_refused().
 *
 * Lookups are linear scans: a registry holds a few dozen families and a
 * few hundred series, and an observation costs a few string compares.
 * Not thread-safe: one registry belongs to one thread, as the poll loop
 * does.
 *
 * The families of remotetask (metrics_describe_remotetask() registers
 * them all; the METRICS_* name macros below spell them):
 *
 * Counters
 *   remotetask_events_recorded_total
 *       task events the relay took from the outbox (recorded by taskevent
 *       or by reconciliation), coalesced events counting once.
 *   remotetask_messages_published_total{kind}
 *       messages handed to the broker, kind = task | state | sync |
 *       sync_done | retry | dead.
 *   remotetask_messages_confirmed_total{kind}
 *       of those, the ones the broker acknowledged (basic.ack) and that
 *       were committed in the store.
 *   remotetask_applied_total{direction,outcome}
 *       messages applied through the local BILLmanager API, direction =
 *       forward | reverse, outcome = created | updated | unchanged |
 *       duplicate (a seq already applied or superseded: nothing done).
 *   remotetask_retried_total{direction}
 *       deliveries sent to a retry delay queue after a transient failure.
 *   remotetask_retry_copies_resent_total{direction}
 *       retry copies the broker confirmed but never brought back from
 *       their delay queue, sent again to the main queue by the watch
 *       (consumer/applier_watch.c).
 *   remotetask_dead_lettered_total{direction,reason}
 *       deliveries sent to remotetask.dead, reason = undecodable |
 *       unauthorized | department | api | other.
 *   remotetask_broker_reconnects_total
 *       AMQP connections established after the first one.
 *   remotetask_api_calls_total{func,outcome}
 *       completed BILLmanager API calls, outcome = ok | retry | reject.
 *
 * Gauges
 *   remotetask_queue_messages_ready{queue}
 *       messages ready in each queue this instance uses, as the broker
 *       last reported them.
 *   remotetask_queue_consumers{queue}
 *       consumers of each of those queues.
 *   remotetask_outbox_backlog
 *       outbox rows waiting to be published.
 *   remotetask_outbox_oldest_age_seconds
 *       age of the oldest waiting outbox event; 0 when the outbox is empty.
 *   remotetask_inflight{what}
 *       work in progress, what = api_calls (running and queued API calls) |
 *       unconfirmed (publishes awaiting a confirm) | slots (deliveries
 *       held by the appliers).
 *   remotetask_links
 *       source task to target task links in the store.
 *   remotetask_up
 *       1 while the daemon runs and its broker connection is up, else 0.
 *
 * Histograms (buckets in seconds: 0.005 0.01 0.025 0.05 0.1 0.25 0.5 1 2.5
 * 5 10 30 60 +Inf)
 *   remotetask_api_call_duration_seconds{func}
 *       time from queuing a BILLmanager API call to its completion,
 *       re-login included.
 *   remotetask_forward_latency_seconds
 *       on the server: time from the event being recorded on the client
 *       (the message's ts, the outbox row's first_ms) to its apply on the
 *       target being committed.
 */
#ifndef RT_METRICS_H
#define RT_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"

/* Bounds on what a registry holds. */
#define METRICS_MAX_LABELS            3
#define METRICS_MAX_FAMILIES          64
#define METRICS_MAX_SERIES            4096
#define METRICS_MAX_SERIES_PER_FAMILY 512
#define METRICS_NAME_MAX              96  /* family and label names, bytes */
#define METRICS_HELP_MAX              256 /* help texts, bytes */
#define METRICS_LABEL_VALUE_MAX       128 /* label values, bytes */

/* The fixed upper bounds of every histogram's buckets, in seconds; +Inf
 * follows them. */
#define METRICS_BUCKETS 13
/* clang-format off */
#define METRICS_BUCKET_BOUNDS \
    { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60 }
/* clang-format on */

/* The names of remotetask's families (meanings in the comment above). */
#define METRICS_EVENTS_RECORDED    "remotetask_events_recorded_total"
#define METRICS_MESSAGES_PUBLISHED "remotetask_messages_published_total"
#define METRICS_MESSAGES_CONFIRMED "remotetask_messages_confirmed_total"
#define METRICS_APPLIED            "remotetask_applied_total"
#define METRICS_RETRIED            "remotetask_retried_total"
#define METRICS_RETRY_RESENT       "remotetask_retry_copies_resent_total"
#define METRICS_DEAD_LETTERED      "remotetask_dead_lettered_total"
#define METRICS_BROKER_RECONNECTS  "remotetask_broker_reconnects_total"
#define METRICS_API_CALLS          "remotetask_api_calls_total"
#define METRICS_QUEUE_READY        "remotetask_queue_messages_ready"
#define METRICS_QUEUE_CONSUMERS    "remotetask_queue_consumers"
#define METRICS_OUTBOX_BACKLOG     "remotetask_outbox_backlog"
#define METRICS_OUTBOX_OLDEST_AGE  "remotetask_outbox_oldest_age_seconds"
#define METRICS_INFLIGHT           "remotetask_inflight"
#define METRICS_LINKS              "remotetask_links"
#define METRICS_UP                 "remotetask_up"
#define METRICS_BROKER_STATE       "remotetask_broker_state"
#define METRICS_BROKER_NODE        "remotetask_broker_node_info"
#define METRICS_API_UP             "remotetask_api_up"
#define METRICS_REVERSE_CYCLE_LAST "remotetask_reverse_cycle_last_timestamp_seconds"
#define METRICS_REVERSE_CYCLE_DURATION "remotetask_reverse_cycle_duration_seconds"
#define METRICS_SYNC_INTERVAL      "remotetask_sync_interval_seconds"
#define METRICS_CONTROL_REFUSED    "remotetask_control_refused_total"
#define METRICS_STORE_COMMITS      "remotetask_store_commits_total"
#define METRICS_STORE_SYNCS        "remotetask_store_syncs_total"
#define METRICS_API_CALL_DURATION  "remotetask_api_call_duration_seconds"
#define METRICS_FORWARD_LATENCY    "remotetask_forward_latency_seconds"

enum metrics_type {
    METRICS_COUNTER,
    METRICS_GAUGE,
    METRICS_HISTOGRAM,
};

struct metrics;

/* Makes an empty registry. Returns NULL when memory ran out. Free it with
 * metrics_free. */
struct metrics *metrics_new(void);

/* Frees the registry and every series. Accepts NULL. */
void metrics_free(struct metrics *m);

/* Registers a family: its name ([a-zA-Z_:][a-zA-Z0-9_:]*, at most
 * METRICS_NAME_MAX bytes), its type, a help text (UTF-8, at most
 * METRICS_HELP_MAX bytes; copied) and its label names, given as one
 * comma-separated string such as "direction,outcome" (NULL or "" = no
 * labels; each [a-zA-Z_][a-zA-Z0-9_]*, not starting with "__", never "le"
 * for a histogram, no duplicates, at most METRICS_MAX_LABELS). A family without labels has its one
 * series at 0 from now on, so it is rendered before anything moves it.
 * Registering the same name again with the same type and labels is a
 * no-op that returns 0 (the help text of the first call stays). Returns 0,
 * or -1 for an invalid name, label list or help text, a name registered
 * with another type or labels, METRICS_MAX_FAMILIES reached, or no
 * memory; on -1 the registry is unchanged. */
int metrics_describe(struct metrics *m, const char *name, enum metrics_type type, const char *help,
                     const char *labels);

/* Registers every family listed at the top of this file. Returns 0, or
 * -1 when memory ran out (some families may then be registered). */
int metrics_describe_remotetask(struct metrics *m);

/* The observations below take the value first and then the family's
 * label values, in the order its labels were described, ended by NULL:
 *
 *     metrics_counter_add(m, METRICS_APPLIED, 1, "forward", "created", NULL);
 *     metrics_gauge_set(m, METRICS_OUTBOX_BACKLOG, 12, NULL);
 *
 * (value first, so that the compiler checks the NULL sentinel). Each
 * returns 0, or -1 without changing anything when the family is not
 * described or has another type, the number of label values is not the
 * family's, a label value is too long or not UTF-8, a new series would
 * pass a cap, or memory ran out. A -1 for the label values or a cap also
 * counts in metrics_refused(). */

/* Adds v (>= 0, finite) to a counter. */
int metrics_counter_add(struct metrics *m, const char *name, double v, ...)
    __attribute__((sentinel));

/* Sets a counter to v (>= 0, finite), for counters whose running total is
 * kept elsewhere (the components' *_stats); the caller keeps it from going
 * down. */
int metrics_counter_set(struct metrics *m, const char *name, double v, ...)
    __attribute__((sentinel));

/* Sets a gauge to v (any value; NaN and infinities too). */
int metrics_gauge_set(struct metrics *m, const char *name, double v, ...) __attribute__((sentinel));

/* Adds v (may be negative) to a gauge. */
int metrics_gauge_add(struct metrics *m, const char *name, double v, ...) __attribute__((sentinel));

/* Observes v in a histogram: every bucket whose bound is >= v counts it,
 * the sum grows by v and the count by one. NaN is refused (it would make
 * the sum NaN forever). */
int metrics_histogram_observe(struct metrics *m, const char *name, double v, ...)
    __attribute__((sentinel));

/* Drops every series of a family (a family without labels goes back to its
 * one series at 0), for gauges whose label values change, such as the
 * queues after a reload. Returns 0, or -1 when the family is not
 * described. */
int metrics_reset(struct metrics *m, const char *name);

/* Appends the registry to out in the text exposition format 0.0.4: the
 * families in registration order, each with "# HELP" and "# TYPE" lines,
 * then its series in the order they were created; a histogram's series as
 * cumulative NAME_bucket{...,le="..."} lines ending with le="+Inf", then
 * NAME_sum and NAME_count. Label values are escaped (\\, \" and \n), help
 * texts too (\\ and \n). Returns 0, or -1 when out's cap was reached (out
 * then holds a prefix: do not serve it). */
int metrics_render(const struct metrics *m, struct buf *out);

/* Series refused so far: label values too long, not UTF-8 or of the wrong
 * number, and new series past a cap. The daemon logs it when it grows. */
uint64_t metrics_refused(const struct metrics *m);

/* Series held now, all families together. */
size_t metrics_series(const struct metrics *m);

#endif
