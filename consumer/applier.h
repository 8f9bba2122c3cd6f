/*
 * applier.h - the delivery slots both appliers share.
 *
 * The forward applier (server) and the reverse applier (client) handle
 * deliveries the same way, whatever they apply: a delivery is taken into a
 * slot, validated by the owner, put in per task order behind the one in
 * hand for the same task (only the newest waits; an older seq is acked and
 * dropped), started when its turn comes, applied by the owner, and acked
 * only once its outcome is durable. When applying fails, the body goes to
 * the client's retry exchange (x-rt-attempts + 1, the reason in
 * x-rt-error) or to its dead-letter exchange (the reason and its origin in
 * x-rt-* headers), and the delivery is acked once the broker confirms that
 * copy. The applier's files own all of that (applier_int.h says which
 * file owns what); the owner owns the validation and the steps of
 * applying, which it runs while the slot is APPLIER_BUSY.
 *
 * A slot for every delivery. basic.qos is per consumer: the broker sends at
 * most prefetch unacknowledged deliveries per consumed queue, so the owner
 * sizes the slots with applier_slots_for(): prefetch x the queues it
 * consumes, plus max_running for the slots of a previous connection still
 * in the owner's hands (applier_on_connected). A delivery is never given
 * back for lack of a slot (a requeue comes straight back, and on a quorum
 * queue counts toward its delivery limit): should the broker send more
 * than that, the applier grows and says so once.
 *
 * Fairness. At most max_running slots (billmanager.max_inflight) are in the
 * owner's hands at once; the others wait APPLIER_READY and are started
 * round robin across clients, oldest first within a client, so that a
 * client with a thousand queued tasks delays another client's one task by
 * at most one round.
 *
 * Local trouble. When a local step fails for now (the store is locked or
 * full), the owner calls applier_defer(): the delivery stays in its slot,
 * neither acked nor copied to a retry queue (a retry copy is for a problem
 * of the message, not of this machine), and ops->resume runs after a
 * backoff that grows to APPLIER_DEFER_MAX_MS. The cause is logged once,
 * and again when a step works again; meanwhile no new slot is started and
 * only one deferred slot is tried per tick, so that a store that waits out
 * its busy timeout on every call does not stall the loop. The broker stops
 * sending once prefetch deliveries are unacknowledged.
 *
 * A copy the broker refuses (nack) or returns keeps its slot and is
 * published again after a backoff that grows to APPLIER_REPUBLISH_MAX_MS,
 * the cause logged once: the delivery is never requeued for it.
 *
 * Deliveries are bound to the connection they came on: a tag means nothing
 * on another one. applier_on_connected() starts a new epoch; a slot of an
 * older epoch never acks (the broker has redelivered its message) and
 * whatever it still does ends with a release.
 *
 * The owner keeps its per-delivery data in the slot's priv area (priv_size
 * bytes, zeroed whenever the slot is taken); ops->clear frees what it put
 * there. Not thread-safe: everything runs in the bridge's loop. Times are
 * on the clock applier_tick() is given (CLOCK_MONOTONIC milliseconds in
 * the daemon, so that a wall clock set back stalls nothing); between ticks
 * the applier moves it on by the monotonic clock.
 */
#ifndef RT_APPLIER_H
#define RT_APPLIER_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "broker.h"
#include "rt.h"

struct store;

/* Texts copied from a delivery are cut to this (AMQP short strings are at
 * most 255 bytes). */
#define APPLIER_SHORT_MAX 256
/* A failure's reason (x-rt-error, x-rt-reason) is cut to this. */
#define APPLIER_REASON_MAX 512
/* x-rt-attempts is written by whoever published the message: a value
 * outside 0..APPLIER_ATTEMPTS_MAX is taken as that bound. */
#define APPLIER_ATTEMPTS_MAX 1000000
/* Seqs a sender can have used. A seq is allocated per publish, one at a
 * time, by a store that holds it in a signed 64-bit integer: a task
 * message or a state whose seq is above APPLIER_SEQ_MAX, or more than
 * APPLIER_SEQ_MAX_JUMP above the seq applied for its task, is forged or
 * corrupt, and is dead-lettered before it can make the real messages of
 * the task look like duplicates (2^32 publishes of one task would take a
 * century at one a second). */
#define APPLIER_SEQ_MAX      ((uint64_t)1 << 48)
#define APPLIER_SEQ_MAX_JUMP ((uint64_t)1 << 32)

/* 1 when seq cannot have been sent for a task whose last applied seq is
 * last: above APPLIER_SEQ_MAX, or more than APPLIER_SEQ_MAX_JUMP past
 * last (last = 0 when nothing was applied). why then says so, for the
 * dead letter. Both appliers refuse such a message before it is applied. */
int applier_seq_impossible(uint64_t seq, uint64_t last, int64_t task, char *why, size_t whylen);
/* Backoff of a deferred local step (applier_defer). */
#define APPLIER_DEFER_MIN_MS 250
#define APPLIER_DEFER_MAX_MS 4000
/* Backoff of a copy the broker refused or returned. */
#define APPLIER_REPUBLISH_MIN_MS 1000
#define APPLIER_REPUBLISH_MAX_MS 60000

enum applier_phase {
    APPLIER_FREE = 0,
    APPLIER_WAITING,       /* behind another delivery of the same task */
    APPLIER_READY,         /* first of its task, waiting for its turn (fairness) */
    APPLIER_BUSY,          /* the owner is validating or applying it */
    APPLIER_RETRY_PUBLISH, /* its copy goes to the client's retry exchange */
    APPLIER_DEAD_PUBLISH,  /* its copy goes to the client's dead-letter exchange */
};

struct applier;

/* One delivery in hand, from applier_take() to its ack, or until it is
 * left to the broker to redeliver. The owner may read every field; it sets
 * client and task once it knows them (before applier_fail or
 * applier_schedule: the routing key and the x-rt-task header of the
 * copies, the per task order and the round robin) and nothing else
 * directly. */
struct applier_slot {
    struct applier *a;
    enum applier_phase phase;
    uint64_t epoch; /* the connection it came on */
    uint64_t order; /* taken in this order: 1, 2, ... for the life of the applier */
    uint64_t tag;
    char queue[APPLIER_SHORT_MAX];
    char message_id[APPLIER_SHORT_MAX];
    char user[APPLIER_SHORT_MAX];   /* the sender: x-rt-user of the copies */
    char client[APPLIER_SHORT_MAX]; /* the client it belongs to, "" until known */
    int64_t attempts;               /* x-rt-attempts of the delivery, 0..APPLIER_ATTEMPTS_MAX */
    unsigned char *body;            /* a copy, NULL when empty or over the cap */
    size_t len;
    int too_big;  /* the broker did not hand the body: over its cap */
    int replayed; /* x-rt-replayed: `dlq replay` sent it back from the dead letters */
    int64_t task; /* the source task, 0 until known */
    /* Set by applier_schedule(): in per task order, by seq. */
    int keyed;
    uint64_t seq;
    /* Started by the scheduler: one of the max_running in the owner's hands. */
    int running;
    /* applier_defer(): ops->resume runs at resume_at. */
    int deferred;
    int64_t resume_at;
    int64_t defer_ms;
    /* A failure on its way to the retry or dead-letter exchange. */
    int dead_kind;
    const char *dead_kind_name; /* static: x-rt-kind */
    char reason[APPLIER_REASON_MAX];
    int pub_sent;
    uint64_t pub_tag;
    int64_t pub_at;    /* not published before this (a refused copy) */
    int64_t pub_delay; /* the backoff of the next refusal */
    /* Per task order: next waits behind this one; prev is the one this
     * waits behind (phase APPLIER_WAITING). */
    struct applier_slot *next;
    struct applier_slot *prev;
    void *priv; /* the owner's data, priv_size bytes */
};

/* What the owner does for the slots. */
struct applier_ops {
    /* The slot's turn has come (it is APPLIER_BUSY): apply it, ending with
     * applier_ack(), applier_fail(), applier_defer() or applier_release(). */
    void (*start)(void *owner, struct applier_slot *s);
    /* A slot deferred by applier_defer() is due: run the step again, with
     * the same endings as start. May be NULL for an owner that never
     * defers. */
    void (*resume)(void *owner, struct applier_slot *s);
    /* Frees what the owner keeps in s->priv; the area is zeroed after. */
    void (*clear)(void *owner, struct applier_slot *s);
    /* A dead-letter copy was confirmed (for counters by s->dead_kind).
     * May be NULL. */
    void (*dead)(void *owner, const struct applier_slot *s);
    /* A slot became free (acked, requeued or released). May be NULL; it
     * must not free the applier. */
    void (*released)(void *owner);
    /* Something happened to the task of a slot whose task is known, for
     * the owner's journal (common/store_journal.h): event is one of its
     * names (replayed, dropped, retried, dead-lettered, held), detail a
     * sentence (the reason; borrowed for the call). May be NULL. */
    void (*journal)(void *owner, const struct applier_slot *s, const char *event,
                    const char *detail);
    /* 1 when the owner serves client now (its queue of this direction is
     * consumed here): a watched retry copy of a client it no longer serves
     * is kept, not sent again to a queue nobody reads (applier_watch.c).
     * May be NULL: every client is served. */
    int (*serves)(void *owner, const char *client);
};

/* Counters since applier_new(): the delivery slots' own, the same for
 * both appliers, whose stats embed them (forward_stats, reverse_stats) so
 * that they are counted and summed alike. */
struct applier_stats {
    uint64_t deliveries;  /* deliveries taken */
    uint64_t redelivered; /* of which the broker marked redelivered */
    uint64_t duplicates;  /* dropped: older than the one in hand for the task */
    uint64_t superseded;  /* dropped: a newer message for the task arrived meanwhile */
    uint64_t retried;     /* sent to a retry delay queue (confirmed) */
    uint64_t dead;        /* sent to the dead-letter exchange (confirmed) */
    uint64_t requeued;    /* given back to the queue: out of memory only */
    uint64_t deferred;    /* local steps deferred (applier_defer) */
    uint64_t republished; /* copies published again after a nack or a return */
    uint64_t resent;      /* retry copies that did not come back, sent again */
    size_t busy;          /* slots holding a delivery now */
    size_t running;       /* slots in the owner's hands now */
    size_t slots;         /* slots allocated */
};

/* The slots an owner needs: prefetch deliveries for each of queues
 * consumed queues, plus max_running of an earlier connection still in the
 * owner's hands. prefetch 0 (unlimited) counts as 1; the result is at
 * least 1. */
size_t applier_slots_for(int prefetch, size_t queues, int max_running);

/* Makes the slots of one applier. br is borrowed and must outlive it; dir
 * names the retry delay queues of the copies (BROKER_FORWARD for the
 * forward applier); ops and owner are borrowed too. max_slots (>= 1) is
 * what applier_slots_for() says; max_running (>= 1) is how many slots may
 * be in the owner's hands at once. Returns NULL when memory ran out. */
struct applier *applier_new(struct broker *br, enum broker_dir dir, size_t max_slots,
                            size_t max_running, size_t priv_size, const struct applier_ops *ops,
                            void *owner);

/* Acks wait for the store's sync from now on: an ack asked for while a
 * commit of st is not yet on disk is sent by the listener that runs after
 * the loop pass's store_sync() (store.h, group commits). Without this
 * call (the unit tests' stand-ins) acks go out at once. RT_REJECT when the
 * store has no room for another listener. */
rt_status applier_set_store(struct applier *a, struct store *st);

/* Frees every slot (ops->clear on each one in use) and the applier. Acks
 * and publishes nothing: the broker redelivers what was held. Accepts NULL. */
void applier_free(struct applier *a);

/* Who sent a delivery: user_id, unless that is own_user, the login of
 * this process, which only this process can publish with (RabbitMQ checks
 * user_id): then it is a retry copy we made and the sender is the
 * relayed_user we wrote in its x-rt-user header. Never NULL. */
const char *applier_sender(const char *user_id, const char *own_user, const char *relayed_user);

/* Takes a delivery into a free slot (APPLIER_BUSY, priv zeroed) and copies
 * what is needed of d (queue, message_id, tag, x-rt-attempts clamped to
 * 0..APPLIER_ATTEMPTS_MAX, the sender computed with own_user, the body).
 * Returns NULL when the delivery was handled here already: left to the
 * broker while draining, or requeued when memory ran out. */
struct applier_slot *applier_take(struct applier *a, const struct broker_delivery *d,
                                  const char *own_user);

/* Puts a validated slot (client set) in per task order for (client, task):
 * it waits APPLIER_READY for its turn, later behind the one in hand for
 * the task, or never when a newer message makes this one pointless (it is
 * then acked and counted as a duplicate or superseded). ops->start runs
 * when its turn comes, possibly before this returns. */
void applier_schedule(struct applier_slot *s, int64_t task, uint64_t seq);

/* Acks the delivery (unless it came on an older connection: the broker
 * redelivers it, which applying by seq makes harmless) and frees the slot. */
void applier_ack(struct applier_slot *s);

/* Gives the delivery back to its queue (when its connection is still the
 * current one) and frees the slot. */
void applier_requeue(struct applier_slot *s);

/* Rejects the delivery without requeue (for a delivery there is no client
 * to route a dead letter to) and frees the slot. */
void applier_discard(struct applier_slot *s);

/* Frees the slot without a word to the broker, which redelivers the
 * message when its connection closes. The delivery waiting behind it
 * becomes READY (unless draining or of an older connection). s is not
 * valid after any of these four calls. */
void applier_release(struct applier_slot *s);

/* Sends the delivery to a retry delay queue (status RT_RETRY) or to the
 * dead-letter exchange (RT_REJECT, with kind and its static name kind_name
 * in the headers) with the formatted reason; it is acked once the copy is
 * confirmed. A slot of an older connection is only released. */
void applier_fail(struct applier_slot *s, rt_status status, int kind, const char *kind_name,
                  const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* A local step of a BUSY slot failed for now (the formatted cause, e.g.
 * the store's reason): the slot keeps the delivery, unacked, and
 * ops->resume runs after a backoff (APPLIER_DEFER_MIN_MS, doubling per
 * deferral of this slot up to APPLIER_DEFER_MAX_MS). The cause is logged
 * at warning level when it differs from the last one logged, at debug
 * otherwise. A slot of an older connection, or one deferred while
 * draining, is released instead (the broker redelivers it). */
void applier_defer(struct applier_slot *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* 1 while a deferred cause has not been followed by a step that worked:
 * the owner may skip optional store reads (they would only wait out the
 * store's busy timeout again). */
int applier_troubled(const struct applier *a);

/* 1 when the slot came on an older connection than the current one. */
int applier_stale(const struct applier_slot *s);

/* The fate of a published copy (the bridge's broker on_confirm); tags the
 * applier did not publish are ignored. Returns 1 when the tag was ours. */
int applier_on_confirm(struct applier *a, uint64_t tag, enum broker_fate fate);

/* The broker reconnected: a new epoch starts, and slots that are only
 * waiting, ready, deferred or publishing are released (the broker
 * redelivers them). Slots in an API call (APPLIER_BUSY, not deferred)
 * finish and never ack. */
void applier_on_connected(struct applier *a);

/* Does what is due at now_ms (CLOCK_MONOTONIC milliseconds): deferred
 * slots whose time has come (one per tick while the cause persists),
 * copies the broker refused for the moment (blocked, too many unconfirmed,
 * nacked, returned), and READY slots. Returns when it wants the next tick,
 * on now_ms's clock: at most now_ms + 1000, and no sooner than
 * now_ms + 250 for a copy that waits for the broker. */
int64_t applier_tick(struct applier *a, int64_t now_ms);

/* Stops taking work: new deliveries, waiting, ready and deferred ones and
 * copies not yet published are left to the broker; slots in an API call
 * run to their end. */
void applier_drain(struct applier *a);

/* 1 once applier_drain() was called. */
int applier_draining(const struct applier *a);

/* 1 when no slot is busy or publishing (waiting and ready ones do not
 * count: they start only when another ends). */
int applier_idle(const struct applier *a);

/* How many slots there are, and slot i (0 <= i < count), for owners that
 * look for their own slots (by phase and priv). */
size_t applier_count(const struct applier *a);
struct applier_slot *applier_slot_at(const struct applier *a, size_t i);

/* Copies the counters into *out. */
void applier_stats(const struct applier *a, struct applier_stats *out);

/* ---- the view of a task ------------------------------------------------
 *
 * Before an applier appends a block to a task's note it views the task:
 * the block goes after what the note holds now. The forward applier also
 * views the tasks of a department to find the one an interrupted create
 * made. A field read as empty from an answer that is not what it seems
 * would erase what the task holds, so the view is read here, alike for
 * both. */

/* Reads the answer of the view of task elid: out[i] = the text of
 * fields[i], NULL when the API left it out (as it does a field without a
 * value). That is trusted only from the view of that very task: its
 * "elid" and "id", those it has and one at least, must be elid. Returns
 * 0, or -1 with why (whylen bytes) set ("names no task", "answers for task
 * \"9\"", "holds a note that is not text") when the answer is not that
 * view or a field holds something other than text: read as empty, such a
 * field would overwrite the task's note with the new block alone, or hide
 * the origin block of a task already made. The texts are doc's. */
int applier_view_read(json_t *doc, int64_t elid, const char *const *fields, const char **out,
                      size_t n, char *why, size_t whylen);

#endif
