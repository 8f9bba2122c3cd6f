/*
 * bridge.h - struct daemon, shared by the files of bridge/ and private to
 * them: daemon.c owns it and runs the loop over it, commands.c answers
 * the control commands from it, observe.c builds the status JSON and the
 * metrics. Nothing outside bridge/ includes this header; the public face
 * of the daemon is daemon.h.
 *
 * commands and observe meet only here, in the daemon: neither includes
 * the other. observe reads what it does not keep itself from a struct
 * observe_view that daemon.c fills from struct daemon (the commands'
 * numbers among it), and the status command reaches observe through the
 * daemon_status_* functions below.
 */
#ifndef RT_BRIDGE_H
#define RT_BRIDGE_H

#include <poll.h>
#include <stddef.h>
#include <stdint.h>

#include "commands.h"
#include "config.h"
#include "control.h"
#include "core.h"
#include "metrics_http.h"
#include "observe.h"
#include "store.h"

struct daemon {
    struct config *cfg; /* the running configuration, owned */
    /* The exclusive lock on <state_dir>/remotetaskd.lock: one daemon works
     * a store at a time; another on the same state_dir stands by. */
    int lock_fd;
    int standby;          /* the lock is another process's: waiting for it */
    int64_t standby_next; /* monotonic ms: the next try */
    struct store *st;     /* lazy commits: synced by the loop (daemon_sync) */
    int64_t sync_retry;   /* monotonic ms: the next try after a failed sync, 0 = none */
    int64_t sync_trail;   /* monotonic ms: when commits nobody waited for get synced, 0 = none */
    int64_t sync_held;    /* monotonic ms: since when the pass's sync is held, 0 = not held */
    char sync_trouble[STORE_ERROR_MAX]; /* the failed sync's cause last logged */
    struct control *ctl;
    struct metrics_http *mh; /* NULL when metrics.listen is not set */
    struct core *core;       /* NULL only after a failed rebuild */
    int64_t rebuild_at;      /* monotonic ms, when core is NULL */

    struct config *pending; /* a valid new configuration waiting for the drain */
    int64_t reload_deadline;
    int stopping;
    int64_t stop_deadline;

    struct pollfd *fds; /* the loop's poll set, grown as needed */
    size_t fds_cap;

    struct commands cmds; /* checkevents waiting, sync counters */
    struct observe obs;   /* totals, queue depths, API view, metrics */
};

/* The status command's side of observe, for commands.c (daemon.c).
 *
 * daemon_status_json: the status JSON of d (observe_status()), a new
 * reference, or NULL when memory ran out.
 * daemon_status_refresh: asks the broker, without waiting, for the queue
 * depths that are older than OBSERVE_QUEUES_STATUS_AGE_MS.
 * daemon_status_ready: 1 when no question about a depth is waiting for its
 * answer. */
json_t *daemon_status_json(struct daemon *d);
void daemon_status_refresh(struct daemon *d);
int daemon_status_ready(const struct daemon *d);

#endif
