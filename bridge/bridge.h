/*
 * bridge.h - struct daemon, shared by the files of bridge/ and private to
 * them: daemon.c owns it and runs the loop over it, commands.c answers
 * the control commands from it, observe.c builds the status JSON and the
 * metrics from it. Nothing outside bridge/ includes this header; the
 * public face of the daemon is daemon.h.
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
    int standby; /* the lock is another process's: waiting for it */
    int64_t standby_next; /* monotonic ms: the next try */
    struct store *st;   /* lazy commits: synced once per loop pass */
    int64_t sync_retry; /* monotonic ms: the next try after a failed sync, 0 = none */
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

#endif
