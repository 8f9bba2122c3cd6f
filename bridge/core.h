/*
 * core.h - what one configuration builds and a reload replaces: the
 * BILLmanager client, the broker connection and the components of the
 * configured roles (producer/relay and consumer/reverse for the client
 * role, consumer/forward and producer/statepub for the server role).
 *
 * The core connects and reconnects the broker (backoff of 500 ms to 30 s;
 * a refused login or TLS failure waits the longest delay at once, as the
 * operator may fix the broker side without touching remotetaskd) without
 * ever blocking the loop on a silent node: an attempt probes every node of
 * amqp.uri (broker_connect_async()) and connects to the first that
 * answers. It declares every client's topology on each connect, hands
 * confirms and deliveries to the components and runs their ticks. It is the broker's
 * callback argument, so that a broker being torn down reports its lost
 * publishes to the components built with it and to no others.
 *
 * It is also where consumer/ and producer/ meet on the server side: a
 * sync request the forward applier receives goes to statepub_sync().
 * What the rest of the daemon must hear of (API calls, confirms, a
 * sync_done, an applied forward message) goes out through struct
 * core_hooks. Private to bridge/: the daemon's loop, commands.c and
 * observe.c read the fields of struct core.
 */
#ifndef RT_CORE_H
#define RT_CORE_H

#include <stddef.h>
#include <stdint.h>

#include "backoff.h"
#include "broker.h"
#include "config.h"
#include "forward.h"
#include "reverse.h"
#include "rt.h"
#include "store.h"

/* Broker reconnects: 500 ms doubling up to 30 s. A refused login or TLS
 * failure waits the longest delay at once. */
#define CORE_RECONNECT_BASE_MS 500
#define CORE_RECONNECT_MAX_MS  30000
/* Connection failures logged at warning level one by one; after these,
 * only a changed reason, and a reminder every CORE_RECONNECT_REMIND
 * attempts (about half an hour at the longest delay). */
#define CORE_RECONNECT_LOUD   3
#define CORE_RECONNECT_REMIND 60
/* How long the broker may take to answer a round of declarations (a
 * fresh broker creates thousands of queues for hundreds of clients). */
#define CORE_DECLARE_TIMEOUT_MS 300000
/* Room for a reason kept or passed by the core. */
#define CORE_ERR_MAX 512

struct core;

/* What the owner hears from a core. Every hook gets arg; all must be set.
 * They run inside broker_process(), billmgr_handle() or core_disconnect(),
 * so they must not free the core. */
struct core_hooks {
    void *arg;
    /* Every completed BILLmanager call (billmgr_opts.on_call). */
    void (*on_api_call)(void *arg, const char *func, rt_status status, const char *err_type,
                        double seconds);
    /* The fate of every publish on the core's broker, after the components
     * had theirs: the owner's own publishes (checkevent's sync requests)
     * are among them. */
    void (*on_confirm)(void *arg, struct core *k, uint64_t tag, enum broker_fate fate);
    /* The reverse applier handled a sync_done (reverse.h). */
    reverse_sync_done_fn on_sync_done;
    /* The forward applier applied a message (forward.h). */
    forward_applied_fn on_forward_applied;
    /* The answer to a queue depth question (broker_opts.on_depth). */
    void (*on_depth)(void *arg, const char *queue, int found, uint32_t ready,
                     uint32_t consumers);
};

struct core {
    const struct config *cfg; /* borrowed from the owner */
    struct store *st;         /* borrowed from the owner */
    struct core_hooks hooks;
    struct billmgr *bm;
    struct broker *br;
    struct relay *relay;  /* client role, else NULL */
    struct reverse *rev;  /* client role, else NULL */
    struct forward *fwd;  /* server role, else NULL */
    struct statepub *sp;  /* server role, else NULL */
    const char **clients; /* ids to declare, borrowed from cfg */
    size_t n_clients;

    int up;            /* connected and declared */
    int declaring;     /* connected, the topology's round not answered yet */
    int64_t declare_deadline; /* monotonic ms */
    uint64_t connects; /* broker connections this core established */
    rt_status last_verdict; /* of the last failed attempt: RETRY or REJECT */
    int cancelled;     /* the broker cancelled a consumer: reconnect */
    char cancelled_queue[BROKER_NAME_MAX];
    struct backoff backoff;
    int64_t reconnect_at; /* monotonic ms */
    unsigned failures;    /* connection attempts failed in a row */
    char last_error[CORE_ERR_MAX];
    /* Monotonic ms: when each component wants a tick. Setting one to 0
     * makes it run on the next turn of the loop (a wake, a resync). */
    int64_t relay_next;
    int64_t fwd_next;
    int64_t rev_next;
    int64_t sp_next;
    int64_t trimmed_at; /* monotonic ms: the last malloc_trim (core_tick) */
};

/* Builds the BILLmanager client, the broker object (not connected yet:
 * core_maintain() connects it) and the components of cfg's roles. cfg and
 * st are borrowed and must outlive the core; hooks is copied. Returns NULL
 * with a reason in err when a part cannot be set up. */
struct core *core_new(const struct config *cfg, struct store *st, const struct core_hooks *hooks,
                      char *err, size_t errlen);

/* Closes the broker (its LOST reports reach the components and
 * hooks.on_confirm), then frees the BILLmanager client (cancelling the
 * components' API calls without running their callbacks), the broker and
 * the components, in that order. Accepts NULL and half-built cores. */
void core_free(struct core *k);

/* Closes the broker connection now, so that its LOST reports move the
 * components' counters before they are read; the core stays usable and
 * reconnects when core_maintain() is told to. Accepts NULL. */
void core_disconnect(struct core *k);

/* Whether no component has work in flight (API calls, unconfirmed
 * publishes, unacknowledged deliveries). NULL counts as idle. */
int core_idle(const struct core *k);

/* Tells every component to take no new work; what is in flight goes on.
 * Accepts NULL. */
void core_drain(struct core *k);

/* Notices a connection that died outside core_process() (inside a
 * publish, or a consumer cancelled) and, when allow_connect is set and
 * the backoff allows, starts one connection attempt, which
 * core_process() carries on: probe, connect, declare, tell the
 * components. Failures are logged per change of reason, not per attempt. */
void core_maintain(struct core *k, int allow_connect);

/* Reads what the broker sent (confirms, deliveries, heartbeats) without
 * blocking, or advances a connection attempt; a failed connection is
 * closed and its reconnect scheduled. Call it on every turn of the loop. */
void core_process(struct core *k);

/* Runs the component ticks that are due. */
void core_tick(struct core *k);

/* Milliseconds until the core needs the loop again: broker frames
 * buffered (0), the broker's heartbeat, the next reconnect attempt (only
 * when connecting is set), the BILLmanager client's timers, the
 * components' ticks; 0 when it is due now, -1 when nothing is scheduled. */
int64_t core_timeout_ms(const struct core *k, int connecting);

/* What status and the metrics say of the broker connection: "connected",
 * "blocked" (a resource alarm), "unreachable" (connected, but the node has
 * sent nothing for longer than the heartbeat; or not connected and the
 * last attempt failed for a reason that may pass), "refused" (the last
 * attempt failed for a reason that needs a person: login, certificate,
 * topology), "reconnecting" (the connection ended for another reason
 * than silence — the broker closed it, a consumer was cancelled — and no
 * attempt has failed since), or "connecting" (the first attempt after
 * start, or the topology being declared). */
const char *core_broker_state(const struct core *k);

/* Deliveries this instance holds unacknowledged on queue: the forward
 * applier's per queue, the reverse applier's on this client's reverse
 * queue, 0 for any other (retry and dead queues are never consumed). */
size_t core_unacked(const struct core *k, const char *queue);

#endif
