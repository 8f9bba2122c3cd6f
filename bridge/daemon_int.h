/*
 * daemon_int.h - what daemon.c gives daemon_loop.c; private to them.
 *
 * daemon.c keeps what the daemon is made of and how it changes: the
 * wiring of the core's hooks, the core's lifecycle, the state_dir's lock
 * and the standby, opening and freeing, and a reload (build the new parts
 * before freeing the old; a failure keeps the old configuration).
 * daemon_loop.c runs the loop over it (daemon_run): signals, the poll set
 * and its timeout, a pass, the drains. The loop calls the functions below
 * only between passes, never from inside a part's callback.
 */
#ifndef RT_DAEMON_INT_H
#define RT_DAEMON_INT_H

#include <stdint.h>

#include "bridge.h"

/* How soon a failed rebuild of the components is tried again. */
#define DAEMON_REBUILD_RETRY_MS 5000
/* How often a standby daemon tries the lock of the active one. The kernel
 * drops a lock the moment its holder dies, so this is the takeover time. */
#define DAEMON_STANDBY_POLL_MS 250

/* Frees the running core, if any, after the pass's pending sync and after
 * adding its counters to the totals carried across reloads. */
void daemon_core_retire(struct daemon *d);

/* Makes new components from the running configuration, after a failed
 * reload or a failed rebuild. Returns -1 after logging why; the caller
 * sets d->rebuild_at. */
int daemon_core_rebuild(struct daemon *d);

/* The pid the lock file fd names, 0 when unknown: for the log line of a
 * daemon standing by. */
long daemon_lock_holder(int fd);

/* SIGHUP while standing by: the new file is checked and kept for the
 * takeover; an invalid one changes nothing. */
void daemon_standby_reload(struct daemon *d);

/* A standby's try at the lock at now (monotonic ms), at most every
 * DAEMON_STANDBY_POLL_MS; once the lock is ours, opens everything as a
 * starting daemon would (d->standby becomes 0). Returns -1 when that
 * fails. */
int daemon_standby_step(struct daemon *d, int64_t now);

/* SIGHUP: loads the file again. A valid configuration waits in d->pending
 * while the core drains; an invalid one changes nothing. */
void daemon_reload_load(struct daemon *d);

/* After the drain: applies d->pending, or keeps the running configuration
 * with fresh components when a part of the new one cannot be built. */
void daemon_reload_apply(struct daemon *d);

#endif
