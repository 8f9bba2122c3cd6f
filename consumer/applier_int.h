/*
 * applier_int.h - what the applier's own files share; private to
 * consumer/applier*.c (and the unit tests that compile them in).
 *
 * The applier is six files of one concern each, five around one struct
 * applier:
 *   applier.c       the object and its slots: lifecycle, taking a delivery
 *                   into a slot, releasing it, a new connection, draining,
 *                   the tick that drives the other files, the counters;
 *   applier_order.c the order slots start in: per task order by seq, the
 *                   round robin across clients within max_running, and the
 *                   local trouble that holds every start (applier_defer);
 *   applier_copy.c  the retry and dead-letter copies: their route and
 *                   headers, publishing, a refusal's backoff, the confirm;
 *   applier_ack.c   the end of a delivery toward the broker: acks (held
 *                   until the store's sync, group commits), requeue,
 *                   discard;
 *   applier_view.c  the view of a task, read alike by both appliers;
 *   applier_watch.c the retry copies watched until they come back.
 * Callers see applier.h only. Nothing here is thread-safe: everything
 * runs in the bridge's loop.
 */
#ifndef RT_APPLIER_INT_H
#define RT_APPLIER_INT_H

#include <stddef.h>
#include <stdint.h>

#include "applier.h"

/* The broker calls the applier makes, in one table: applier_new() sets the
 * broker's own, and a unit test that compiles the applier in
 * (tests/unit/test_applier.c) puts a stand-in there to see every ack,
 * reject and publish. */
struct applier_io {
    rt_status (*ack)(struct broker *b, uint64_t tag);
    rt_status (*reject)(struct broker *b, uint64_t tag, int requeue);
    rt_status (*publish)(struct broker *b, const char *exchange, const char *key,
                         const struct broker_props *props, const void *body, size_t len,
                         uint64_t *tag);
    int (*connected)(const struct broker *b);
    int (*blocked)(const struct broker *b);
    const char *(*strerror)(const struct broker *b);
};

/* An ack that waits for the store's sync (applier_set_store). */
struct applier_held {
    uint64_t tag;
    uint64_t epoch; /* the connection it belongs to */
    uint64_t mark;  /* the store's last commit when it was asked for */
};

struct applier {
    struct broker *br;
    struct store *st; /* NULL: acks go out at once */
    struct applier_held *held;
    size_t n_held, held_cap;
    const struct applier_io *io;
    enum broker_dir dir;
    const struct applier_ops *ops;
    void *owner;
    size_t priv_size;
    struct applier_slot **slots;
    size_t nslots;
    size_t cap;       /* room in slots */
    size_t max_slots; /* what the owner sized for (applier_slots_for) */
    size_t max_running;
    size_t running; /* slots in the owner's hands */
    uint64_t epoch;
    uint64_t taken;
    int draining;
    int grown; /* more deliveries than max_slots came (logged once) */
    int pumping;
    int repump;
    char rr_client[APPLIER_SHORT_MAX];    /* the client whose slot started last */
    char trouble[APPLIER_REASON_MAX];     /* the deferred cause last logged, "" when none */
    uint64_t defers;                      /* applier_defer() calls, to see a resume work */
    char pub_trouble[APPLIER_REASON_MAX]; /* the refused copies' cause last logged */
    /* Backoffs run on the clock the ticks are given: between ticks it is
     * tick_now plus the monotonic time since. */
    int64_t tick_now;
    int64_t tick_mono;
    /* The retry copies under watch (applier_watch.c): how many rows of
     * this direction the store holds, as far as this applier knows; when
     * it next looks for due ones (tick clock); the cause last logged. */
    uint64_t watched;
    int64_t watch_at;
    char watch_trouble[APPLIER_REASON_MAX];
    struct applier_stats stats;
};

/* ---- applier.c: helpers every file uses ---- */

/* Copies src (NULL counts as "") into dst of size bytes, cut and always
 * terminated. */
void applier_text_copy(char *dst, size_t size, const char *src);

/* Now on the clock of the ticks (applier_tick). */
int64_t applier_clock_ms(const struct applier *a);

/* The next step of a capped doubling backoff: min the first time (prev
 * <= 0), then twice prev, at most max. */
int64_t applier_backoff(int64_t prev, int64_t min, int64_t max);

/* Tells the owner's journal (ops->journal) what happened to the slot's
 * task, the detail formatted; a delivery whose task is not known
 * (undecodable) has no journal to go to. */
void applier_journal(const struct applier_slot *s, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ---- applier_order.c ---- */

/* Starts READY slots while fewer than max_running are in the owner's
 * hands, in their turn (per task order, round robin across clients), none
 * while a deferred slot holds the gate. Re-entered from a start (which may
 * end its slot at once), it only asks the running loop to look again. */
void applier_pump(struct applier *a);

/* A local step worked after applier_defer() had logged a cause: says so
 * once and opens the gate. */
void applier_recovered(struct applier *a);

/* Runs ops->resume for the deferred slots due at now_ms, one at a time
 * while their cause persists (a store that waits out its busy timeout on
 * each call would stall the loop once per slot). Nothing while draining. */
void applier_resume_due(struct applier *a, int64_t now_ms);

/* ---- applier_copy.c ---- */

/* Publishes the retry or dead-letter copy of a slot in phase
 * APPLIER_RETRY_PUBLISH or APPLIER_DEAD_PUBLISH. A copy the broker cannot
 * take now waits for applier_copies_due(); one refused gets a backoff; a
 * slot whose connection is gone is released (s is then not valid). */
void applier_publish(struct applier_slot *s);

/* The headers of a retry copy, the first one's and one the watch sends
 * again alike: x-rt-attempts (the copy's attempt), x-rt-error (the
 * reason), x-rt-user (the sender). Fills h[0..APPLIER_RETRY_HEADERS) with
 * borrowed strings and returns APPLIER_RETRY_HEADERS. */
#define APPLIER_RETRY_HEADERS 3
size_t applier_retry_headers(struct broker_header *h, int64_t attempts, const char *reason,
                             const char *user);

/* Publishes the copies that are due at now_ms and the broker can take
 * (releases those not sent yet while draining); returns next, or earlier
 * when a copy still waits (no sooner than now_ms + 250). */
int64_t applier_copies_due(struct applier *a, int64_t now_ms, int64_t next);

/* ---- applier_watch.c ---- */

/* Learns how many copies the store watches for this direction (copies
 * sent before a restart): applier_set_store's part. */
void applier_watch_open(struct applier *a);

/* The retry copy of s was confirmed: watch it (before s is acked, so that
 * the ack waits for the sync of the row). A failure is logged; the copy
 * is in the broker all the same. */
void applier_watch_put(struct applier_slot *s);

/* A delivery of s's task with s's seq came back (applier_schedule): the
 * watch of that copy, or of an older one, ends. */
void applier_watch_clear(struct applier_slot *s);

/* Sends again the watched copies whose time is past (wall clock), at most
 * a batch per look, a look every few seconds (now_ms: the tick clock);
 * returns next, or earlier for the next look. */
int64_t applier_watch_due(struct applier *a, int64_t now_ms, int64_t next);

/* ---- applier_ack.c ---- */

/* Stops listening to the store's syncs and forgets the held acks (their
 * deliveries are redelivered): applier_free's part. */
void applier_held_free(struct applier *a);

#endif
