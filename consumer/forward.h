/*
 * forward.h - the server's forward applier: task messages -> target tasks.
 *
 * The server role consumes remotetask.forward.<C> for every configured
 * client C and applies each task message through this side's BILLmanager
 * API (docs/ARCHITECTURE.md, "How a change travels"). One struct forward
 * lives inside the bridge's poll loop: the bridge dispatches the broker's
 * deliveries and confirms to it, drives billmgr (whose callbacks run the
 * applier's next step) and calls forward_tick() when it asks for a tick.
 *
 * A delivery is taken into a slot (there is one for every delivery the
 * broker may have unacknowledged: amqp.prefetch per client's queue, plus
 * billmanager.max_inflight of an earlier connection; applier.h), validated
 * (decodable, kind task or sync, the client of its queue, the AMQP user
 * configured for that client, for a task that client's department, a seq
 * its sender can have used: at most APPLIER_SEQ_MAX, and at most
 * APPLIER_SEQ_MAX_JUMP past the seq applied for the task) and applied when
 * its turn comes (at most billmanager.max_inflight at once, the clients
 * taking turns; a sync request, the client's checkevent, is handed to the
 * sync hook and acked at once):
 *
 *   LINK_LOOKUP -> (RECOVER_LIST -> RECOVER_VIEW)* -> CREATE | VIEW_TARGET -> EDIT
 *               -> COMMIT -> ACK
 *   or, on failure, RETRY_PUBLISH / DEAD_PUBLISH awaiting a confirm -> ACK
 *
 * Messages carry state: an older seq than the one applied is acked and
 * dropped, and of several deliveries for one task only the newest waits
 * behind the one being applied. A delivery is acked only once its outcome
 * is durable: the link committed in the store, or the retry or dead-letter
 * copy confirmed by the broker. Anything not acked is redelivered by the
 * broker after a reconnect or a restart, and applying it again is
 * harmless: the link's last_seq, and for an interrupted create the origin
 * block in the created task's note, tell what was already done.
 *
 * Interrupted creates: the link is written with dst_task 0 before the
 * create call, holding the highest target id known for the client then.
 * A delivery that finds such a link lists the department and views only
 * the unlinked tasks above that id (task ids grow), looking for the origin
 * block. A create whose failure proves that nothing was made (an API
 * error, HTTP 503 or 429, a call that never left) marks the link so, and
 * the next delivery creates at once: in normal operation nothing searches.
 *
 * Interrupted note edits: an update that appends a block commits its
 * intent first (common/linkset.h, "crash-safe note appends"); the next delivery
 * for the task views the target and, when the block is there, does not
 * write it again.
 *
 * Retries: a transient failure of the API republishes the body to the
 * client's retry exchange with x-rt-attempts + 1 and the reason in
 * x-rt-error, and the delay queue sends it back later. A store that fails
 * for now (locked, full) is this machine's problem, not the message's: the
 * delivery stays in its slot, unacknowledged, and the store step (link
 * lookup, intent, commit) runs again after a backoff (applier_defer); the
 * broker sends no more than prefetch meanwhile. Such a
 * copy carries this server's own AMQP login as user_id; the applier then
 * takes the sender from the x-rt-user header it wrote itself (only this
 * login can publish with its user_id, RabbitMQ checks that).
 * Permanent failures go to the client's dead-letter exchange (into
 * remotetask.dead.<C>.forward) with x-rt-reason, x-rt-kind, x-rt-client,
 * x-rt-task, x-rt-queue, x-rt-attempts, x-rt-message-id and x-rt-user.
 *
 * Answers the API client passes may still be unreadable where it matters
 * (billmgr_text_field: a field of the wrong type, such as repeated
 * elements where text belongs). Nothing is read from them as empty: a
 * list row whose id is not text, a view that is not the view of the task
 * asked for (its elid or id, one at least, must be that task) or whose
 * note, name, type, deadline or status is not text is a failure for now
 * (RT_RETRY, the reason naming the field), never a task "not ours"
 * (which would create it twice) nor an empty note (which would overwrite
 * the target's). A missed error means the target task is gone (and is
 * created again) only when its $object is elid or task; one naming the
 * function (func, or the configured function's name) is a configuration
 * error, logged at error once and retried, as is one naming anything else
 * or nothing.
 *
 * The target task's note gets one block per change of the source's native
 * note (common/notes.h), whose header "from client C, task T" also marks
 * the created task as made for (C, T). When the message describes a service
 * or an account (its item and account fields), the block starts with one
 * line "Regarding: <item>; <account>" so that target staff know what the
 * task is about; it is sent again only when that description changes.
 *
 * Not thread-safe: everything runs in the bridge's loop.
 */
#ifndef RT_FORWARD_H
#define RT_FORWARD_H

#include <stddef.h>
#include <stdint.h>

#include "applier.h"
#include "billmgr.h"
#include "broker.h"
#include "codec.h"
#include "config.h"
#include "store.h"

/* The first line of a block that describes the service and the account. */
#define FORWARD_REGARDING "Regarding: "

/* Why a message went to the dead-letter queue. */
enum forward_dead_kind {
    FORWARD_DEAD_NONE = 0,
    FORWARD_DEAD_UNDECODABLE,  /* too big, not msgpack, not a task or sync message */
    FORWARD_DEAD_UNAUTHORIZED, /* user_id or client not those of the queue */
    FORWARD_DEAD_DEPARTMENT,   /* not the department configured for the client */
    FORWARD_DEAD_API,          /* the API refused it (value, access, missed...) */
    FORWARD_DEAD_SEQ,          /* a seq no sender can have used (applier.h) */
};

/* Counters since forward_new(), for the status command and the metrics. */
struct forward_stats {
    /* The slots' counters (applier.h); its duplicates also counts the
     * messages dropped because their seq was already applied. */
    struct applier_stats applier;
    uint64_t created;          /* target tasks created (re-creations included) */
    uint64_t adopted;          /* tasks of an interrupted create found again */
    uint64_t updated;          /* messages that changed a target task */
    uint64_t unchanged;        /* messages with nothing to change */
    uint64_t dead_undecodable; /* dead letters (applier.dead) by reason */
    uint64_t dead_unauthorized;
    uint64_t dead_department;
    uint64_t dead_api;
    uint64_t dead_seq;
    uint64_t syncs;        /* sync requests handed to the sync hook (or ignored) */
    int64_t last_apply_ms; /* when a message was last applied (committed), 0 = never */
};

struct forward;

/* Called for a valid sync request (kind sync, authorized as task messages
 * are) of client (borrowed from the configuration) with the request's id
 * (borrowed for the call). The delivery is acked right after the hook
 * returns, so the hook must take the request over (copy what it keeps). */
typedef void (*forward_sync_fn)(void *arg, const char *client, const char *id);

/* Called each time a task message was applied and committed: client
 * (borrowed), the source task, the message's ts (when the client recorded
 * the change, ms since the epoch) and when the apply was committed (ms). */
typedef void (*forward_applied_fn)(void *arg, const char *client, int64_t task, int64_t event_ms,
                                   int64_t applied_ms);

/* Makes the applier for the server role of cfg. Borrows cfg, st, bm and br,
 * which must outlive it (cfg is read for the clients and the api names).
 * Starts nothing: consuming begins with forward_on_connected(). Returns
 * NULL with a reason in err when cfg has no server role or memory ran out.
 *
 * Teardown order: the bridge frees billmgr (billmgr_free cancels every call
 * without running its callback) BEFORE forward_free(), or calls
 * forward_free() only when forward_idle() says no call is in flight;
 * otherwise a callback would run on freed memory. */
struct forward *forward_new(const struct config *cfg, struct store *st, struct billmgr *bm,
                            struct broker *br, char *err, size_t errlen);

/* Frees the applier and every slot. Acks, rejects and publishes nothing:
 * the deliveries it held stay unacknowledged and the broker redelivers them
 * when the connection closes. Accepts NULL and a half-built object. See
 * forward_new() for the order with billmgr_free(). */
void forward_free(struct forward *f);

/* Does due work (store steps deferred, retry and dead-letter copies the
 * broker refused for the moment) and returns when it wants the next tick.
 * Both times are CLOCK_MONOTONIC milliseconds (applier_tick). */
int64_t forward_tick(struct forward *f, int64_t now_ms);

/* A message from a consumed queue (the bridge's broker on_delivery). The
 * applier copies what it needs; d may be freed when this returns. While
 * draining, deliveries are left unacknowledged (the broker gives them back
 * at close). A delivery from a queue that is not the forward queue of a
 * configured client (which only a bridge bug can cause) is rejected
 * without requeue: there is no client to route a dead letter to. A
 * delivery is never requeued for want of a slot (applier.h). */
void forward_on_delivery(struct forward *f, const struct broker_delivery *d);

/* The fate of a published message (the bridge's broker on_confirm); tags
 * the applier did not publish are ignored. */
void forward_on_confirm(struct forward *f, uint64_t tag, enum broker_fate fate);

/* The broker (re)connected and broker_declare() was done: every delivery
 * held from the previous connection is forgotten (its tag means nothing
 * now; the broker redelivers it), API calls still running for them finish
 * without acking, and broker_consume() is called for remotetask.forward.<C>
 * of every configured client (not while draining). A failing consume is
 * logged; the broker then closes the connection and the bridge reconnects. */
void forward_on_connected(struct forward *f);

/* Stops taking new work (SIGTERM, SIGHUP): new deliveries and those waiting
 * behind another for the same task are left unacknowledged; what is in
 * flight runs to its end. */
void forward_drain(struct forward *f);

/* 1 when no API call and no retry/dead-letter publish is in flight. */
int forward_idle(const struct forward *f);

/* Sets the hook that takes sync requests (NULL: none; a sync request is
 * then logged and acked). The bridge hands them to the state publisher;
 * consumer/ never includes producer/. */
void forward_set_sync_hook(struct forward *f, forward_sync_fn hook, void *arg);

/* Sets the hook told of every applied task message (NULL: none), for the
 * forward latency histogram. */
void forward_set_applied_hook(struct forward *f, forward_applied_fn hook, void *arg);

/* Deliveries of queue this applier holds unacknowledged on the current
 * connection (being applied, waiting behind another of their task, or
 * waiting for the confirm of their retry or dead-letter copy). */
size_t forward_unacked(const struct forward *f, const char *queue);

/* Copies the counters into *out. */
void forward_stats(const struct forward *f, struct forward_stats *out);

/* A static name of a dead-letter kind: "undecodable", "unauthorized",
 * "department", "api", "seq" ("none" for FORWARD_DEAD_NONE). */
const char *forward_dead_kind_name(enum forward_dead_kind kind);

/* ---- pure helpers, exported for the unit tests ---- */

/* Checks a decoded message that came from queue with the given user_id
 * against cfg's server clients. own_user is this server's AMQP login and
 * relayed_user the x-rt-user header (NULL when absent): a message carrying
 * own_user as user_id is a retry copy this server published, whose sender
 * is relayed_user. Kinds task and sync pass; only a task's department is
 * checked. On success returns FORWARD_DEAD_NONE and sets *client
 * (borrowed from cfg); otherwise the kind, with the reason in reason
 * (always NUL-terminated), and *client is set when the queue named one. */
enum forward_dead_kind forward_check(const struct config *cfg, const char *queue,
                                     const char *user_id, const char *own_user,
                                     const char *relayed_user, const struct codec_msg *m,
                                     const struct config_server_client **client, char *reason,
                                     size_t reasonlen);

/* What an update must send, computed from a message and the fp set of what
 * was applied (store_link.applied). The strings are malloc'd; release with
 * forward_plan_release(). */
struct forward_plan {
    int name;                            /* send the name */
    int type;                            /* send the type (never when api.task_type is set) */
    int deadline;                        /* send the deadline */
    int status;                          /* send the status */
    int stale;                           /* the message's status is older than the target's: kept */
    char *block;                         /* the text of a new note block, or NULL when none */
    char applied[STORE_APPLIED_MAX + 1]; /* the fp set once this is applied */
};

/* Fills *plan for message m (kind task) against applied ("" = nothing
 * applied yet, as for a create: then everything is sent). fixed_type is 1
 * when api.task_type is set, so the type is never changed. A message whose
 * "rev_seq" is known and below applied's LINKSET_LINK_REV_PUB was read
 * before the client applied the target's last published state: its status
 * is not sent and applied's "status" is kept (plan->stale); the other
 * fields are planned as usual. Returns 0, or -1
 * when memory ran out or the set does not fit (plan is then released). */
int forward_plan_make(const struct codec_msg *m, const char *applied, int fixed_type,
                      struct forward_plan *plan);

/* Frees the plan's strings; accepts a zeroed plan. */
void forward_plan_release(struct forward_plan *plan);

/* 1 when the plan changes nothing on the target (no field, no block). */
int forward_plan_empty(const struct forward_plan *plan);

/* The fp set describing a target task found again after an interrupted
 * create, from its current fields (name, type, deadline, status, note as
 * viewed) and the message being applied: the note prefix already applied
 * is what the task's first block for origin holds, when the message's
 * native note starts with it. Writes the set into out (outlen bytes).
 * Returns 0, or -1 when it does not fit. */
int forward_adopt_applied(const char *name, const char *type, const char *deadline, long status,
                          const char *note, const char *origin, const struct codec_msg *m,
                          char *out, size_t outlen);

#endif
