/*
 * reverse.h - the client's reverse applier: state messages -> source tasks.
 *
 * The client role consumes remotetask.reverse.<client.id>, where the
 * server's timer publisher sends what its staff did with the tasks this
 * client forwarded (docs/ARCHITECTURE.md, "How a change travels"): the
 * target task's status, its performer, and its native note text. One
 * struct reverse lives inside the bridge's poll loop, like the forward
 * applier: the bridge dispatches the broker's deliveries and confirms to
 * it, drives billmgr (whose callbacks run the applier's next step) and
 * calls reverse_tick().
 *
 * A delivery is taken into a slot (applier.h: one for every delivery the
 * broker may send, per task order, newest waiting message wins, at most
 * billmanager.max_inflight applied at once, retry and dead-letter copies
 * acked on confirm), validated (decodable; kind state or sync_done; this
 * client's id; sent by client.server_user, which the configuration
 * requires: a state from any other sender, through any exchange, is
 * dead-lettered as unauthorized; a seq its sender can have used, at most
 * APPLIER_SEQ_MAX and at most APPLIER_SEQ_MAX_JUMP past the seq applied;
 * a state only for a task this client forwarded) and applied to source
 * task T:
 *
 *   REV lookup -> [VIEW T] -> [EDIT T] -> COMMIT rev -> ACK
 *
 * What changed is computed against the fp set of what was applied before
 * (store_rev.applied): the status, when the target changed it (below); the
 * performer, set through client.performers when the remote staff member is
 * mapped (cleared when the remote side has none and a mapped one was set
 * by us), and otherwise never guessed: a line "Performer on the remote
 * side: NAME" goes into the note instead; and the part of the remote
 * native note text not appended yet. Text goes into the source note as one
 * block from REVERSE_ORIGIN (common/notes.h), so it never travels forward
 * again. One task.edit carries everything that changed; nothing changed,
 * no call at all.
 *
 * A store that fails for now (locked, full) holds the delivery in its
 * slot, unacknowledged, and the store step runs again (applier_defer); no
 * retry copy is made for a local problem.
 *
 * The status of a state is written only when it is a change made on the
 * target: the server had applied the client's last confirmed task message
 * that changed the status forwarded (the state's fwd_seq; a dead-lettered
 * message that only renamed the task does not hold the states of the task
 * back), and the status differs
 * from the one the client knows the target has (key "status" of the rev
 * set, which the relay also sets to every status it forwards). The first
 * state of a task with no known status only records it. A status or
 * performer the source task already has is not written again. An edit
 * that appends a block commits its intent in the rev row first
 * (common/linkset.h, "crash-safe note appends"): after a crash between that edit and its
 * commit, the next state of the task views it and does not append the
 * block a second time.
 *
 * The view of T is read only when it is T's (its elid or id, one at
 * least, is T) and its note, status and performer are text or absent
 * (billmgr_text_field): otherwise the state is retried (RT_RETRY, the
 * reason naming the field), since a note read as empty would be
 * overwritten with the new block alone.
 *
 * A sync_done message answers a sync request (checkevent): once every
 * delivery taken before it has finished, the sync_done hook runs with the
 * request's id, the count the server sent and how many states this applier
 * applied with a change since reverse_expect_sync() registered that id.
 *
 * Not thread-safe: everything runs in the bridge's loop.
 */
#ifndef RT_REVERSE_H
#define RT_REVERSE_H

#include <stddef.h>
#include <stdint.h>

#include "applier.h"
#include "billmgr.h"
#include "broker.h"
#include "codec.h"
#include "config.h"
#include "store.h"

/* The origin of the blocks this applier appends to source notes: a state
 * message does not name the target task, so the origin is one constant. */
#define REVERSE_ORIGIN "from the remote side"
/* The block line for a remote performer that has no local mapping. */
#define REVERSE_PERFORMER_LINE    "Performer on the remote side: "
#define REVERSE_NO_PERFORMER_LINE "No performer on the remote side"
/* Sync ids registered by reverse_expect_sync() and not answered yet are
 * kept up to this many; a new one beyond it forgets the oldest. */
#define REVERSE_MAX_EXPECTED 64

/* Why a message went to the dead-letter queue. */
enum reverse_dead_kind {
    REVERSE_DEAD_NONE = 0,
    REVERSE_DEAD_UNDECODABLE,  /* too big, not msgpack, not a state or sync_done */
    REVERSE_DEAD_UNAUTHORIZED, /* not this client, or not the server's AMQP user */
    REVERSE_DEAD_UNKNOWN_TASK, /* a state for a task this client never forwarded */
    REVERSE_DEAD_API,          /* the API refused it (value, access, missed...) */
    REVERSE_DEAD_SEQ,          /* a seq no sender can have used (applier.h) */
};

/* Counters since reverse_new(), for the status command and the metrics. */
struct reverse_stats {
    /* The slots' counters (applier.h); its duplicates also counts the
     * states dropped because their seq was already applied. */
    struct applier_stats applier;
    uint64_t applied;          /* states that changed a source task */
    uint64_t unchanged;        /* states with nothing to change */
    uint64_t syncs;            /* sync_done messages handled */
    uint64_t dead_undecodable; /* dead letters (applier.dead) by reason */
    uint64_t dead_unauthorized;
    uint64_t dead_unknown_task;
    uint64_t dead_api;
    uint64_t dead_seq;
    int64_t last_apply_ms; /* when a state was last applied (committed), 0 = never */
};

struct reverse;

/* Called when a sync_done has been handled: id is the sync's id (borrowed
 * for the call), count the number of states the server published for it,
 * applied how many states changed a source task since reverse_expect_sync
 * (0 when the id was never registered, e.g. after a restart). */
typedef void (*reverse_sync_done_fn)(void *arg, const char *id, uint64_t count, uint64_t applied);

/* Makes the applier for the client role of cfg. Borrows cfg, st, bm and br,
 * which must outlive it. Starts nothing: consuming begins with
 * reverse_on_connected(). Returns NULL with a reason in err when cfg has no
 * client role or memory ran out.
 *
 * Teardown order: the bridge frees billmgr (which cancels every call
 * without running its callback) BEFORE reverse_free(), or calls
 * reverse_free() only when reverse_idle() says no call is in flight. */
struct reverse *reverse_new(const struct config *cfg, struct store *st, struct billmgr *bm,
                            struct broker *br, char *err, size_t errlen);

/* Frees the applier and every slot. Acks, rejects and publishes nothing:
 * the broker redelivers what it held. Accepts NULL and a half-built one. */
void reverse_free(struct reverse *r);

/* Sets the hook run for every sync_done handled (NULL: none). */
void reverse_set_sync_done_hook(struct reverse *r, reverse_sync_done_fn hook, void *arg);

/* Registers a sync request the bridge is about to publish, so that the
 * states applied from now on are counted for it. id is copied (at most
 * CODEC_MAX_ID bytes; a longer or empty one is ignored). Registering an id
 * again restarts its count. */
void reverse_expect_sync(struct reverse *r, const char *id);

/* Does due work (store steps deferred, copies the broker refused for the
 * moment, sync_done messages whose predecessors finished) and returns when
 * it wants the next tick. Both times are CLOCK_MONOTONIC milliseconds
 * (applier_tick). */
int64_t reverse_tick(struct reverse *r, int64_t now_ms);

/* A message from a consumed queue (the bridge's broker on_delivery). The
 * applier copies what it needs; d may be freed when this returns. A
 * delivery from a queue other than remotetask.reverse.<client.id> (a
 * bridge bug) is rejected without requeue. While draining, deliveries are
 * left unacknowledged. */
void reverse_on_delivery(struct reverse *r, const struct broker_delivery *d);

/* The fate of a published message (the bridge's broker on_confirm); tags
 * the applier did not publish are ignored. */
void reverse_on_confirm(struct reverse *r, uint64_t tag, enum broker_fate fate);

/* The broker (re)connected and broker_declare() was done: deliveries of
 * the previous connection are forgotten (API calls still running for them
 * finish without acking) and remotetask.reverse.<client.id> is consumed
 * (not while draining). A failing consume is logged; the broker then
 * closes the connection and the bridge reconnects. */
void reverse_on_connected(struct reverse *r);

/* Stops taking new work (SIGTERM, SIGHUP); what is in flight runs to its
 * end. */
void reverse_drain(struct reverse *r);

/* 1 when no API call and no retry/dead-letter publish is in flight. */
int reverse_idle(const struct reverse *r);

/* Copies the counters into *out. */
void reverse_stats(const struct reverse *r, struct reverse_stats *out);

/* A static name of a dead-letter kind: "undecodable", "unauthorized",
 * "unknown_task", "api", "seq" ("none" for REVERSE_DEAD_NONE). */
const char *reverse_dead_kind_name(enum reverse_dead_kind kind);

/* ---- pure helpers, exported for the unit tests ---- */

/* Checks a decoded message from queue with the given user_id against the
 * client role of cfg: this client's queue, kind state or sync_done, this
 * client's id, and the sender client.server_user (an empty server_user
 * trusts no sender). own_user
 * is this client's AMQP login and relayed_user the x-rt-user header (NULL
 * when absent): a message carrying own_user as user_id is a retry copy
 * this client published, whose sender is relayed_user. Returns
 * REVERSE_DEAD_NONE, or the kind with the reason in reason (always
 * NUL-terminated). */
enum reverse_dead_kind reverse_check(const struct config *cfg, const char *queue,
                                     const char *user_id, const char *own_user,
                                     const char *relayed_user, const struct codec_msg *m,
                                     char *reason, size_t reasonlen);

/* The local staff id client.performers maps remote to, or 0 when none. */
long reverse_performer_local(const struct config *cfg, int64_t remote);

/* What applying a state must change, computed from the state message and
 * the fp set of what was applied (store_rev.applied, "" for none). */
struct reverse_plan {
    int status;           /* send field_status = status_value */
    int status_value;     /* the message's status */
    int performer;        /* send field_performer = performer_local */
    long performer_local; /* the local staff id to set, 0 = none ("") */
    int verify;           /* first state of the task: compare with the task as viewed */
    int stale;            /* the state was read before the last confirmed task message was
                             applied: its status says nothing about the target */
    char *block;          /* the text of a new note block, or NULL when none */
    size_t notes_len;     /* bytes of the remote native text applied once done */
    char applied[STORE_APPLIED_MAX + 1]; /* the fp set once this is applied */
};

/* Fills *plan for state message m (kind state) against applied, with the
 * performer mapping of cfg. fwd_confirmed is the seq of the task's last
 * confirmed task message (store_fwd.fp_seq): the status is planned only
 * when m's fwd_seq is 0 (unknown) or at least the seq of the confirmed
 * message that last changed the status forwarded (applied's "sseq", which
 * the relay records; fwd_confirmed when absent), and differs from
 * applied's "status" (the status known on the target); with no "status"
 * in applied it is only recorded. applied's "sseq" is kept. Returns 0, or
 * -1 when memory ran out or the set does not fit (plan is then released).
 * Release with reverse_plan_release(). */
int reverse_plan_make(const struct config *cfg, const struct codec_msg *m, const char *applied,
                      uint64_t fwd_confirmed, struct reverse_plan *plan);

/* With the source task as viewed (its status, -1 when unknown; its
 * performer, 0 = none): drops the status and the performer from the plan
 * when the task has them already, so that nothing is written for nothing.
 * Clears verify. */
void reverse_plan_verify(struct reverse_plan *plan, long status, long performer);

/* 1 when the plan needs a view of the source task first (a block to append
 * to its current note, or the performer of a first state to verify). */
int reverse_plan_needs_view(const struct reverse_plan *plan);

/* 1 when the plan changes nothing on the source task. */
int reverse_plan_empty(const struct reverse_plan *plan);

/* Frees the plan's strings; accepts a zeroed plan. */
void reverse_plan_release(struct reverse_plan *plan);

#endif
