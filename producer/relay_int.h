/*
 * relay_int.h - what the relay's own files share; private to
 * producer/relay*.c (and the unit test, which compiles them in).
 *
 * The relay is four files of one concern each:
 *   relay.c        the component: its lifecycle, the clocks, the store's
 *                  trouble and its backoff, the pump that moves work on,
 *                  the outbox scan that fills free slots, confirms handed
 *                  to their slot, and the store's group-commit listeners
 *   relay_slot.c   a row in progress, one slot: taken and viewed, a seq
 *                  allocated and the message encoded, published once the
 *                  seq is durable, confirmed and recorded (on its own or
 *                  with the loop pass's other confirmations), deferred, or
 *                  done without a message
 *   relay_view.c   the answer of a view: the forward fields read from it
 *                  (pure, exported by relay.h), and what each answer does
 *                  with its row
 *   relay_recon.c  reconciliation: each mapped department listed through
 *                  the pager (pager.h), an event for every task whose
 *                  `updated` moved
 *
 * The contract between them:
 * - The slots are one array the relay owns, allocated once: a slot is the
 *   argument of its view call and stays valid as long as the relay. A slot
 *   not FREE is owned by exactly one row, and r->used counts them; only
 *   relay_slot_take() fills a slot, only relay_slot_release() (which every
 *   ending calls) frees it. No (client, task) is in two slots at once.
 * - Every callback (a view's or a page's answer, a confirm, a wake) ends
 *   with relay_pump(), which is never re-entered (in_pump) and does nothing
 *   while draining: a callback that arrives while it runs (a LOST from
 *   inside broker_publish) only changes slot states.
 * - A seq goes out only once the commit that allocated it is durable
 *   (slot mark, store_durable); relay_synced() publishes what waited. With
 *   a lazy store the confirmations of a loop pass wait SLOT_CONFIRMED and
 *   relay_commit_confirmed() records them in one transaction at its end
 *   (relay_pass_end); a commit the store refused for now waits SLOT_ACKED
 *   and relay_tick() tries it again.
 * - A store failure goes through relay_store_failed(), which logs it once
 *   per cause and pauses store work for a backoff; a write that works says
 *   so with relay_store_ok(). Nothing is lost by a failure: the row stays in
 *   the outbox.
 * - Times: schedules on the ticks' clock (relay_clock_ms, monotonic), what
 *   is stored or sent on the wall clock (clock_wall_ms, common/clock.h).
 */
#ifndef RT_RELAY_INT_H
#define RT_RELAY_INT_H

#include <stdbool.h>
#include <stdint.h>

#include "buf.h"
#include "pager.h"
#include "relay.h"

/* The meta key the status command reads. */
#define RELAY_META_LAST_PUBLISH "last_forward_publish_ms"
/* "<client>:<task>:<seq>": a client id and two 64-bit numbers. */
#define RELAY_MESSAGE_ID_MAX (STORE_CLIENT_MAX + 2 * 21 + 3)
/* A reconciliation stops paging a department past this many pages: a
 * server that ignores p_num would otherwise keep it paging forever. */
#define RELAY_RECONCILE_MAX_PAGES 100000L

enum relay_slot_state {
    SLOT_FREE = 0,
    SLOT_VIEWING,    /* the func_task_edit view is in flight */
    SLOT_READY,      /* encoded, waiting for the broker to take it */
    SLOT_PUBLISHING, /* inside broker_publish (guards re-entrant confirms) */
    SLOT_PUBLISHED,  /* published, awaiting its confirm under tag */
    SLOT_CONFIRMED,  /* confirmed; its commit waits for the end of the loop pass */
    SLOT_ACKED,      /* confirmed; the store commit failed and is retried */
};

/* One row in progress. The slots are an array owned by the relay, so an
 * API call's callback argument (a slot) stays valid for as long as the
 * relay lives, and a call cancelled by billmgr_free() leaks nothing. */
struct relay_slot {
    struct relay *r;
    enum relay_slot_state state;
    struct store_event ev;
    uint64_t seq;
    uint64_t mark; /* the store's commit that allocated seq (store_mark) */
    bool deleted;  /* SLOT_CONFIRMED, committed: its outbox row is gone */
    uint64_t tag;
    int status; /* the status the message carries */
    /* The last state the client had applied to the task before the view
     * was asked for (0 = none, or unknown): the message's "rev_seq". */
    uint64_t rev_seq;
    char fp[FP_HEX_LEN + 1];
    char updated[STORE_UPDATED_MAX + 1];
    char message_id[RELAY_MESSAGE_ID_MAX + 1];
    struct buf body;
};

struct relay {
    const struct config *cfg;
    struct store *st;
    struct billmgr *bm;
    struct broker *br;

    struct relay_slot *slots;
    size_t nslots;
    size_t used;             /* slots not FREE */
    struct store_event *due; /* scratch for store_outbox_due, nslots rows */

    int draining;
    int func_missing;     /* the view function was reported missing (logged once) */
    int in_pump;          /* relay_pump is on the stack: do not re-enter it */
    int woken;            /* scan the outbox at the next pump */
    int more_due;         /* the last scan filled its batch: more rows may be due */
    int64_t next_scan_ms; /* on the tick's clock */

    /* Schedules run on the clock the ticks are given (monotonic): between
     * ticks it is tick_now plus the monotonic time since. The wall clock
     * only stamps what is stored; wall_skew is how far it was ahead of the
     * monotonic clock at the last tick, so that a step back shows. */
    int64_t tick_now;
    int64_t tick_mono;
    int64_t wall_skew;
    int clock_known;      /* a tick has set wall_skew */
    int resched_pending;  /* rows still to move after a clock step */
    int64_t resched_back; /* by how much */

    /* The store failed for now: the cause last logged, and when store work
     * (scans, commits) is tried again. */
    char store_trouble[STORE_ERROR_MAX];
    int64_t store_retry_at;
    int64_t store_backoff;

    /* Reconciliation: one chain of page calls at a time. */
    int recon_running;
    int recon_pending; /* asked for again while running */
    size_t recon_dept; /* index into cfg->client.departments */
    struct pager recon;
    uint64_t recon_listed;
    uint64_t recon_added;
    int64_t next_recon_ms; /* monotonic; 0 = at the first tick */

    struct relay_stats stats;
};

/* ---- relay.c: the component's helpers ------------------------------- */

/* Now on the clock of the ticks, for schedules set between ticks. */
int64_t relay_clock_ms(const struct relay *r);

/* A store call failed (what: the sentence's subject): logged once per
 * cause, and store work pauses for a backoff. The work itself is kept:
 * rows stay in the outbox, confirmed messages wait ACKED. */
void relay_store_failed(struct relay *r, const char *what);

/* A write to the store worked: the trouble, if any, is over (logged). */
void relay_store_ok(struct relay *r);

/* 1 while store work waits for its backoff (mono: the ticks' clock). */
int relay_store_paused(const struct relay *r, int64_t mono);

/* Moves work forward: publishes what waits for the broker and fills free
 * slots from the outbox. Not re-entered; nothing while draining. */
void relay_pump(struct relay *r, int64_t now_ms);

/* ---- relay_slot.c: a row in progress -------------------------------- */

/* A row of the task's journey (store_journal.h), the client side's, at
 * ts_ms (0 = now). */
void relay_slot_journal(const struct relay_slot *s, int64_t ts_ms, const char *event, uint64_t seq,
                        const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* 1 when a slot holds (client, task). */
int relay_slot_busy(const struct relay *r, const char *client, int64_t task);

/* A FREE slot, or NULL when the window is full. */
struct relay_slot *relay_slot_free_one(struct relay *r);

/* Takes the due row ev into the free slot s and starts its view (its
 * answer goes to relay_view_done). Returns 0, or -1 when the state applied
 * to the task cannot be read or the call cannot be queued (logged; the
 * slot stays FREE and the row due). */
int relay_slot_take(struct relay *r, struct relay_slot *s, const struct store_event *ev);

/* Lets go of a row: it stays in the outbox as the store has it. */
void relay_slot_release(struct relay_slot *s);

/* The row failed (reason): not due again before delay_ms from now. */
void relay_slot_defer(struct relay_slot *s, int64_t delay_ms, const char *reason);

/* The row needs no message: it leaves the outbox unless a newer event
 * arrived meanwhile. */
void relay_slot_done(struct relay_slot *s);

/* The fields did not change since the last confirmed message: remember
 * the updated value and end the row. */
void relay_slot_unchanged(struct relay_slot *s, const char *updated);

/* The fields changed (s->fp and s->updated set from them): allocate a seq,
 * encode the message and publish it once the seq is durable. */
void relay_slot_prepare(struct relay_slot *s, const struct relay_fields *f);

/* Hands every READY slot whose seq is durable to the broker. */
void relay_publish_ready(struct relay *r);

/* Records a confirmed message in a transaction of its own; on RT_RETRY
 * the slot waits ACKED. */
void relay_slot_commit(struct relay_slot *s);

/* Records every SLOT_CONFIRMED slot in one transaction (each on its own
 * should that fail). */
void relay_commit_confirmed(struct relay *r);

/* ---- relay_view.c: the answer of a view ----------------------------- */

/* The answer of the view of a slot's task (billmgr_done_fn; arg is the
 * slot). Ends with relay_pump(). */
void relay_view_done(void *arg, const struct billmgr_reply *rep);

/* ---- relay_recon.c: reconciliation ---------------------------------- */

/* Sets up the reconciliation's pager (relay_new). */
void relay_recon_init(struct relay *r);

/* Starts a reconciliation now, or right after the running one. Nothing
 * while draining. */
void relay_recon_start(struct relay *r);

#endif
