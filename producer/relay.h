/*
 * relay.h - the client side of the forward path: outbox relay and
 * reconciliation.
 *
 * The relay turns rows of the store's outbox ("local task N changed") into
 * confirmed AMQP messages on remotetask.forward. For each due row it views
 * the task through the local BILLmanager API (func_task_edit, elid=N),
 * builds the forward fields (the department mapped to the remote id, name,
 * type, the native note, deadline, status, item and account descriptions),
 * and compares their fingerprint with the one the broker last confirmed
 * for the task: equal means nothing to send (this is what stops echoes of
 * the reverse applier's own changes); different means a new seq, a
 * CODEC_TASK message and a publish. The row leaves the outbox only when the
 * broker acks the message, in the same store transaction that records the
 * fingerprint; a row that received a newer event meanwhile stays and is
 * published again.
 *
 * At most 4 x billmanager.max_inflight rows are in progress at once
 * (viewing, waiting to publish, or waiting for a confirm), and never the
 * same (client, task) twice. Failures defer the row with a backoff of
 * 1 s x 2^attempts, capped at 5 minutes; a permanent API error (access,
 * auth, value...) defers it by 5 minutes: an event is never dropped for a
 * configuration problem. A missed error ends the row without a message
 * only when its $object names the task (elid, or task): the task was
 * deleted. One naming the function (func, or api.func_task_edit itself:
 * BILLmanager's answer to a function it does not have) is a configuration
 * error, logged at error once and retried every 5 minutes; one naming
 * anything else, or nothing, is retried like any permanent error. A task
 * whose department is there and is not mapped is done without a message
 * too. A view that cannot be read is deferred with the backoff and a
 * warning ("cannot view task N, retrying in D ms: its field F is not
 * text"), never read as empty: a view that is not the view of the task
 * (its elid or id, one at least, must be the task) or whose forwarded
 * field is not text (billmgr_text_field; repeated elements where text
 * belongs, say) would clear the name, type, deadline or note on the
 * target, reopen it with status 0, or drop the event as "not mapped".
 *
 * Reconciliation, every client.poll_interval seconds, at start and on
 * relay_wake(r, 1), lists each mapped local department page by page and
 * records an outbox event for every task whose `updated` column differs
 * from the value stored when it was last viewed (or that has none), so
 * that an event the BILLmanager handler missed is still delivered. A row
 * whose id cannot be read stops the reconciliation ("reconciliation
 * stopped: ..."), which counts as failed and runs again after
 * poll_interval: skipped, it could be the task whose event was missed.
 *
 * Everything is asynchronous: API calls go through billmgr_call() and their
 * callbacks run inside billmgr_handle(); publishes go through
 * broker_publish() and their fate arrives through relay_on_confirm(). The
 * relay never blocks and never calls a *_sync function.
 *
 * Clocks: schedules (ticks, scans, reconciliation) run on the clock the
 * ticks are given, which is CLOCK_MONOTONIC milliseconds, so that a wall
 * clock set back does not stall them; the relay reads the wall clock (ms
 * since the epoch, the store's time base) itself for what it stores or
 * sends, the outbox's deferrals included: when the wall clock has gone
 * back since the last tick, deferred rows are moved back as far.
 *
 * A store that fails for now (locked, full) loses no work: rows stay in
 * the outbox, a confirmed message whose commit failed waits in its slot
 * and is committed later, never published again for it. The cause is
 * logged once, and again when the store works; store work then pauses for
 * a backoff (RELAY_STORE_RETRY_MIN_MS doubling to RELAY_STORE_RETRY_MAX_MS),
 * so that a store waiting out its busy timeout on every call does not
 * stall the loop.
 *
 * Teardown order: the relay's API calls point into the relay, so
 * billmgr_free() (which cancels them without their callbacks) must run
 * BEFORE relay_free(); and the bridge must stop routing broker confirms to
 * a relay once it is freed (free the broker first, or stop dispatching).
 * relay_free() itself cancels nothing and calls nothing outside the relay.
 * Unconfirmed publishes and rows in progress stay in the outbox, so nothing
 * is lost by tearing down at any moment.
 */
#ifndef RT_RELAY_H
#define RT_RELAY_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "billmgr.h"
#include "broker.h"
#include "config.h"
#include "fp.h"
#include "store.h"

/* The window: rows in progress at once, per billmanager.max_inflight. */
#define RELAY_WINDOW_PER_INFLIGHT 4
/* Backoff of a deferred row: RELAY_BACKOFF_BASE_MS x 2^attempts, capped. */
#define RELAY_BACKOFF_BASE_MS 1000
#define RELAY_BACKOFF_MAX_MS  (5 * 60 * 1000)
/* Delay of a row whose view failed permanently (access, auth...). */
#define RELAY_REJECT_DELAY_MS (5 * 60 * 1000)
/* How often the outbox is polled for rows that became due without a wake
 * (deferred rows, events recorded while the control socket was down). */
#define RELAY_SCAN_INTERVAL_MS 1000
/* A wall clock that moved back by more than this between two ticks has
 * been set back (relay_tick). */
#define RELAY_CLOCK_STEP_MS 1000
/* Backoff of store work after the store failed for now. */
#define RELAY_STORE_RETRY_MIN_MS 250
#define RELAY_STORE_RETRY_MAX_MS 4000

/* relay_fields_from_doc: a forwarded field holds something other than
 * text, or the department is not an id. */
#define RELAY_FIELDS_UNREADABLE (-2)
#define RELAY_UNREADABLE_MAX    128

/* Counters since relay_new (gauges say so). */
struct relay_stats {
    uint64_t taken;              /* outbox rows taken into the window */
    uint64_t published;          /* messages handed to the broker */
    uint64_t confirmed;          /* messages acked by the broker and committed */
    uint64_t unchanged;          /* rows done without a message: fields unchanged */
    uint64_t deferred;           /* rows deferred after a failure */
    uint64_t dropped;            /* rows done without a message: task gone, not mapped */
    uint64_t reconciliations;    /* reconciliations completed */
    uint64_t reconcile_failed;   /* reconciliations ended by an API error */
    uint64_t reconcile_enqueued; /* outbox events recorded by reconciliation */
    int64_t last_publish_ms;     /* when a message was last confirmed (also
                                    from earlier runs, via the store); 0 = never */
    size_t in_progress;          /* gauge: rows in the window now */
    size_t unconfirmed;          /* gauge: publishes awaiting a confirm */
    int reconciling;             /* gauge: 1 while a reconciliation runs */
};

/* The forward fields of a task, as they travel (struct codec_task) plus
 * what the relay keeps about the view. Strings are malloc'd and owned;
 * relay_fields_release() frees them. */
struct relay_fields {
    int64_t local_department; /* the task's department here */
    int64_t department;       /* the mapped remote department */
    char *name;
    char *type;
    char *note;     /* the native note (notes_native) */
    char *deadline; /* "" when none */
    char *item;     /* "service #<item>" or "" */
    char *account;  /* "client #<client>" or "" */
    int status;
    /* The view's `updated` value; "" when absent or longer than
     * STORE_UPDATED_MAX (then reconciliation always re-checks the task). */
    char updated[STORE_UPDATED_MAX + 1];
    /* When relay_fields_from_doc returns RELAY_FIELDS_UNREADABLE: what was
     * wrong ("its field name is not text"), else "". */
    char unreadable[RELAY_UNREADABLE_MAX];
};

struct relay;

/* Makes the relay of the client role. cfg, st, bm and br are borrowed and
 * must outlive the relay (see the teardown order above); cfg->client must
 * be enabled. Starts nothing: the first relay_tick() starts the first
 * reconciliation and takes due rows. Returns NULL with a reason in err
 * (NUL-terminated when errlen > 0) when the config has no client role or
 * memory ran out. */
struct relay *relay_new(const struct config *cfg, struct store *st, struct billmgr *bm,
                        struct broker *br, char *err, size_t errlen);

/* Frees the relay and everything it holds. Accepts NULL. Must be called
 * after billmgr_free() of its billmgr (or with no API call of the relay in
 * flight), since it does not cancel calls; see the teardown order above. */
void relay_free(struct relay *r);

/* Does the work that is due at now_ms (CLOCK_MONOTONIC milliseconds):
 * commits acks the store refused earlier, publishes messages waiting for
 * the broker, starts a reconciliation when one is due, and takes due
 * outbox rows into free window slots. A wall clock that went back since
 * the last tick by more than RELAY_CLOCK_STEP_MS (against the monotonic
 * clock) moves the deferred rows of the outbox back as far; the first
 * tick makes rows deferred further than the relay ever defers due.
 * Returns the time on now_ms's clock at which it wants the next tick, at
 * most now_ms + RELAY_SCAN_INTERVAL_MS. */
int64_t relay_tick(struct relay *r, int64_t now_ms);

/* The fate of a publish. Tags the relay did not publish are ignored, so
 * the bridge may hand every confirm to every component. ACKED commits the
 * row; NACKED and RETURNED defer it with a backoff; LOST keeps the message
 * and publishes it again once connected (no attempt counted). May publish
 * (the broker allows that from its callbacks). */
void relay_on_confirm(struct relay *r, uint64_t tag, enum broker_fate fate);

/* The broker is (re)connected and its topology declared: publishes
 * waiting for it go out now. */
void relay_on_connected(struct relay *r);

/* An event was recorded (taskevent): take due rows now. With reconcile
 * set, also start a reconciliation now (or right after the running one). */
void relay_wake(struct relay *r, int reconcile);

/* Stops starting new work (SIGTERM): no new rows, views, publishes or
 * reconciliation pages. What is in flight finishes; rows not confirmed
 * stay in the outbox for the next start. Not undone. */
void relay_drain(struct relay *r);

/* 1 when the relay holds nothing: no row in its window (viewing, waiting
 * for the broker, awaiting a confirm, or confirmed and waiting for its
 * commit) and no reconciliation call in flight. After relay_drain() the
 * rows waiting for the broker are let go, so this becomes 1 as soon as
 * the calls and confirms in flight have arrived. */
int relay_idle(const struct relay *r);

/* Copies the counters into *out. */
void relay_stats(const struct relay *r, struct relay_stats *out);

/* ---- pure helpers, exported for the unit tests ---- */

/* Reads the forward fields of a task from the doc of a func_task_edit view
 * (values as stored: ids, not names), with the field names of
 * cfg->billmanager.api, mapping the department through
 * cfg->client.departments. Returns 1 with *out filled; 0 when the task's
 * department is missing (or empty) or not mapped (*out then holds only
 * local_department, and the updated value); RELAY_FIELDS_UNREADABLE with
 * out->unreadable saying what ("its field name is not text") when a
 * forwarded field (department, name, type, note, deadline, status, item,
 * client) holds something other than text (billmgr_text_field), or the
 * department is text but not an id; or -1 when memory ran out. A missing
 * status counts as 0; one that is text but not 0, 1 or 2 becomes -1,
 * which codec_encode() refuses (a permanent error of that row). The doc
 * is taken to be the view of the task: the caller checks its elid/id.
 * *out needs no initialization; release it with relay_fields_release()
 * after any return. */
int relay_fields_from_doc(const struct config *cfg, json_t *doc, struct relay_fields *out);

/* Frees the strings of *f and zeroes it. Accepts a zeroed struct. */
void relay_fields_release(struct relay_fields *f);

/* The fingerprint of exactly the fields that travel (department, name,
 * type, note, deadline, item, account, status), as FP_HEX_LEN hex digits. */
void relay_fields_fp(const struct relay_fields *f, char out[FP_HEX_LEN + 1]);

/* The delay before the next attempt of a row that failed attempts times
 * before this failure: RELAY_BACKOFF_BASE_MS x 2^attempts, capped at
 * RELAY_BACKOFF_MAX_MS. */
int64_t relay_backoff_ms(uint64_t attempts);

#endif
