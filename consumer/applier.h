/*
 * applier.h - the delivery slots both appliers share.
 *
 * The forward applier (server) and the reverse applier (client) handle
 * deliveries the same way, whatever they apply: a delivery is taken into a
 * slot (at most max_slots at once: what the broker may have unacknowledged,
 * plus those of an earlier connection still finishing their API calls),
 * put in per task order behind the one in hand for the same task (only the
 * newest waits; an older seq is acked and dropped), applied by the owner,
 * and acked only once its outcome is durable. When applying fails, the
 * body goes to remotetask.retry (x-rt-attempts + 1, the reason in
 * x-rt-error) or to remotetask.dead (the reason and its origin in x-rt-*
 * headers), and the delivery is acked once the broker confirms that copy.
 * This file owns all of that; the owner owns the validation and the steps
 * of applying, which it runs while the slot is APPLIER_BUSY.
 *
 * Deliveries are bound to the connection they came on: a tag means nothing
 * on another one. applier_on_connected() starts a new epoch; a slot of an
 * older epoch never acks (the broker has redelivered its message) and
 * whatever it still does ends with a release.
 *
 * The owner keeps its per-delivery data in the slot's priv area (priv_size
 * bytes, zeroed whenever the slot is taken); ops->clear frees what it put
 * there. Not thread-safe: everything runs in the bridge's loop.
 */
#ifndef RT_APPLIER_H
#define RT_APPLIER_H

#include <stddef.h>
#include <stdint.h>

#include "broker.h"
#include "rt.h"

/* Texts copied from a delivery are cut to this (AMQP short strings are at
 * most 255 bytes). */
#define APPLIER_SHORT_MAX 256
/* A failure's reason (x-rt-error, x-rt-reason) is cut to this. */
#define APPLIER_REASON_MAX 512

enum applier_phase {
    APPLIER_FREE = 0,
    APPLIER_WAITING,       /* behind another delivery of the same task */
    APPLIER_BUSY,          /* the owner is validating or applying it */
    APPLIER_RETRY_PUBLISH, /* its copy goes to remotetask.retry */
    APPLIER_DEAD_PUBLISH,  /* its copy goes to remotetask.dead */
};

struct applier;

/* One delivery in hand, from applier_take() to its ack, or until it is
 * left to the broker to redeliver. The owner may read every field; it sets
 * client and task once it knows them (before applier_fail or
 * applier_schedule: the routing key and the x-rt-task header of the
 * copies, and the per task order) and nothing else directly. */
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
    int64_t attempts;               /* x-rt-attempts of the delivery, 0 when absent */
    unsigned char *body;            /* a copy, NULL when empty or over the cap */
    size_t len;
    int too_big;  /* the broker did not hand the body: over its cap */
    int64_t task; /* the source task, 0 until known */
    /* Set by applier_schedule(): in per task order, by seq. */
    int keyed;
    uint64_t seq;
    /* A failure on its way to remotetask.retry or remotetask.dead. */
    int dead_kind;
    const char *dead_kind_name; /* static: x-rt-kind */
    char reason[APPLIER_REASON_MAX];
    int pub_sent;
    uint64_t pub_tag;
    /* Per task order: next waits behind this one; prev is the one this
     * waits behind (phase APPLIER_WAITING). */
    struct applier_slot *next;
    struct applier_slot *prev;
    void *priv; /* the owner's data, priv_size bytes */
};

/* What the owner does for the slots. */
struct applier_ops {
    /* The slot's turn has come (it is APPLIER_BUSY): apply it, ending with
     * applier_ack(), applier_fail() or applier_release(). */
    void (*start)(void *owner, struct applier_slot *s);
    /* Frees what the owner keeps in s->priv; the area is zeroed after. */
    void (*clear)(void *owner, struct applier_slot *s);
    /* A dead-letter copy was confirmed (for counters by s->dead_kind).
     * May be NULL. */
    void (*dead)(void *owner, const struct applier_slot *s);
    /* A slot became free (acked, requeued or released). May be NULL; it
     * must not free the applier. */
    void (*released)(void *owner);
};

/* Counters since applier_new(). */
struct applier_stats {
    uint64_t deliveries; /* deliveries taken */
    uint64_t duplicates; /* dropped: older than the one in hand for the task */
    uint64_t superseded; /* dropped: a newer message for the task arrived meanwhile */
    uint64_t retried;    /* sent to a retry delay queue (confirmed) */
    uint64_t dead;       /* sent to remotetask.dead (confirmed) */
    uint64_t requeued;   /* given back to the queue: no slot, no memory, or a copy refused */
    size_t busy;         /* slots holding a delivery now */
};

/* Makes the slots of one applier. br is borrowed and must outlive it; dir
 * names the retry delay queues of the copies (BROKER_FORWARD for the
 * forward applier); ops and owner are borrowed too. At most max_slots
 * (>= 1) deliveries are held at once. Returns NULL when memory ran out. */
struct applier *applier_new(struct broker *br, enum broker_dir dir, size_t max_slots,
                            size_t priv_size, const struct applier_ops *ops, void *owner);

/* Frees every slot (ops->clear on each one in use) and the applier. Acks
 * and publishes nothing: the broker redelivers what was held. Accepts NULL. */
void applier_free(struct applier *a);

/* Who sent a delivery: user_id, unless that is own_user, the login of
 * this process, which only this process can publish with (RabbitMQ checks
 * user_id): then it is a retry copy we made and the sender is the
 * relayed_user we wrote in its x-rt-user header. Never NULL. */
const char *applier_sender(const char *user_id, const char *own_user, const char *relayed_user);

/* Takes a delivery into a free slot (APPLIER_BUSY, priv zeroed) and copies
 * what is needed of d (queue, message_id, tag, x-rt-attempts, the sender
 * computed with own_user, the body). Returns NULL when the delivery was
 * handled here already: left to the broker while draining, or requeued
 * when every slot is busy or memory ran out. */
struct applier_slot *applier_take(struct applier *a, const struct broker_delivery *d,
                                  const char *own_user);

/* Puts a validated slot (client set) in per task order for (client, task):
 * ops->start runs now, later when the one in hand for the task is done, or
 * never when a newer message makes this one pointless (it is then acked
 * and counted as a duplicate or superseded). */
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
 * starts (unless draining or of an older connection). s is not valid
 * after any of these four calls. */
void applier_release(struct applier_slot *s);

/* Sends the delivery to a retry delay queue (status RT_RETRY) or to
 * remotetask.dead (RT_REJECT, with kind and its static name kind_name in
 * the headers) with the formatted reason; it is acked once the copy is
 * confirmed. A slot of an older connection is only released. */
void applier_fail(struct applier_slot *s, rt_status status, int kind, const char *kind_name,
                  const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* 1 when the slot came on an older connection than the current one. */
int applier_stale(const struct applier_slot *s);

/* The fate of a published copy (the bridge's broker on_confirm); tags the
 * applier did not publish are ignored. Returns 1 when the tag was ours. */
int applier_on_confirm(struct applier *a, uint64_t tag, enum broker_fate fate);

/* The broker reconnected: a new epoch starts, and slots that are only
 * waiting or publishing are released (the broker redelivers them). Slots
 * in the owner's hands (APPLIER_BUSY) finish and never ack. */
void applier_on_connected(struct applier *a);

/* Publishes copies the broker refused for the moment (blocked, too many
 * unconfirmed) and returns when it wants the next tick: now_ms + 250 when
 * one still waits, now_ms + 1000 otherwise. */
int64_t applier_tick(struct applier *a, int64_t now_ms);

/* Stops taking work: new deliveries, waiting ones and copies not yet
 * published are left to the broker; busy slots run to their end. */
void applier_drain(struct applier *a);

/* 1 once applier_drain() was called. */
int applier_draining(const struct applier *a);

/* 1 when no slot is busy or publishing (waiting ones do not count: they
 * start only when another ends). */
int applier_idle(const struct applier *a);

/* How many slots there are, and slot i (0 <= i < count), for owners that
 * look for their own slots (by phase and priv). */
size_t applier_count(const struct applier *a);
struct applier_slot *applier_slot_at(const struct applier *a, size_t i);

/* Copies the counters into *out. */
void applier_stats(const struct applier *a, struct applier_stats *out);

/* ---- crash-safe note appends ------------------------------------------
 *
 * An edit that appends a block to a task's note is the one write an
 * applier cannot repeat blindly: fields are set to values (writing one
 * twice is harmless), but the note is written as what it was plus a block,
 * so a second write adds the block twice. A daemon killed after such an
 * edit landed and before its outcome was committed would write it again
 * when the broker redelivers the message. So, before the edit, the owner
 * commits an intent into the fp set it keeps for the task
 * (applier_pend_put): the message's seq, the length and fingerprint of the
 * whole note about to be written, and the fp set the edit produces (its
 * keys under APPLIER_PEND_PREFIX). The commit after the edit writes a set
 * without these keys. A message that finds an intent views the task first
 * (applier_pend_landed) and plans against applier_pend_base(): the set
 * after the pending edit when the note still starts with the note it
 * wrote (staff may have written after it), else the set before it. A new
 * intent is then built on that base, never on the unresolved one. Fields the two sets
 * disagree on are sent again, which is harmless; the note block is not. */

/* The keys of an intent in an fp set. */
#define APPLIER_PEND_SEQ    "pend_seq"
#define APPLIER_PEND_LEN    "pend_len"
#define APPLIER_PEND_FP     "pend_fp"
#define APPLIER_PEND_PREFIX "p."

/* 1 when the fp set holds an intent (APPLIER_PEND_LEN), else 0. */
int applier_pend_present(const char *applied);

/* Writes into out (outlen bytes) the fp set applied (NULL = "") without any
 * intent key. Returns 0, or -1 when it does not fit (out is then ""). */
int applier_pend_strip(const char *applied, char *out, size_t outlen);

/* Writes into out (outlen bytes) the intent of an edit for message seq
 * that writes note (the whole new note): applied (NULL = "") without any
 * older intent, plus APPLIER_PEND_SEQ, APPLIER_PEND_LEN and APPLIER_PEND_FP,
 * plus every key of after (the fp set the edit produces) whose value
 * differs from applied's, under APPLIER_PEND_PREFIX. Returns 0, or -1 when
 * the result does not fit in outlen or in STORE_APPLIED_MAX bytes (out is
 * then applied without an intent). */
int applier_pend_put(const char *applied, const char *after, uint64_t seq, const char *note,
                     char *out, size_t outlen);

/* Tells whether the edit whose intent applied holds landed, from the
 * task's note as viewed now (NULL counts as ""): it did when the note
 * starts with the whole note that edit wrote. *seq (may be NULL) receives
 * the intent's seq (0 when there is none). Returns 1 (landed) or 0 (did
 * not land, or no intent). */
int applier_pend_landed(const char *applied, const char *note, uint64_t *seq);

/* Writes into out (outlen bytes; may be applied itself) the fp set to plan
 * against: when landed, applied with the intent's keys moved back under
 * their own names (the set after the pending edit), else applied without
 * the intent (the set before it); either way without an intent. Returns 0,
 * or -1 when it does not fit (out is then ""). */
int applier_pend_base(const char *applied, int landed, char *out, size_t outlen);

#endif
