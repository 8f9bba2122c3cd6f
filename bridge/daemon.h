/*
 * daemon.h - remotetaskd's one event loop and the objects it drives.
 *
 * A daemon owns the configuration, the store, the control socket server
 * (control.h, answering the commands of commands.h), the Prometheus
 * endpoint when metrics.listen is set (metrics_http.h, rendering what
 * observe.h gathers) and one core (core.h): the BILLmanager client, the
 * broker connection and the components of the configured roles. It is
 * where the parts are wired together: the core's hooks reach the
 * checkevent waits and the counters through here.
 *
 * daemon_run() is the loop: one ppoll() over the broker's socket, curl's
 * sockets, the control sockets and the metrics endpoint, with the signals
 * SIGTERM, SIGINT and SIGHUP unblocked only inside it:
 *
 *   SIGTERM, SIGINT  drain (no new work), wait up to 10 s for work in flight
 *                    (API calls, confirms) to finish, close the broker
 *                    politely, return 0;
 *   SIGHUP           load the configuration file again: an invalid file is
 *                    logged and the old configuration kept; a valid one is
 *                    applied after a drain of up to 5 s by rebuilding the
 *                    core (the store is reopened only if state_dir changed,
 *                    the control socket and the metrics endpoint only if
 *                    their address did). Counters are carried across the
 *                    rebuild, so that they never go down.
 *
 * A core that cannot be rebuilt (its parts failed to set up) is tried
 * again every 5 s; meanwhile the control socket answers.
 *
 * One daemon works a store at a time: it holds an exclusive lock on
 * <state_dir>/remotetaskd.lock (flock) for its life. A second daemon
 * started on the same state_dir (an active/standby pair on one host, the
 * same configuration file) stands by: it opens nothing (no store, no
 * control socket, no metrics endpoint, no broker connection, so it holds
 * no delivery), tries the lock every 250 ms and, the moment the kernel
 * drops it (the active one stopped or died), opens everything and works
 * as a daemon that just started. SIGTERM ends a standby at once, SIGHUP
 * checks and keeps the file for the takeover.
 */
#ifndef RT_DAEMON_H
#define RT_DAEMON_H

#include <stddef.h>

#include "config.h"

/* How long SIGTERM waits for work in flight, and SIGHUP before rebuilding. */
#define DAEMON_STOP_DRAIN_MS   10000
#define DAEMON_RELOAD_DRAIN_MS 5000

struct daemon;

/* Builds a daemon from cfg, which it takes over (freed by daemon_free, or
 * replaced on reload): takes the state_dir's lock (when another daemon
 * holds it, the daemon stands by and opens the rest when it takes over:
 * see above), opens the store in cfg->state_dir, makes the
 * BILLmanager client, the broker object (not connected yet), the
 * components of the configured roles and binds the control socket.
 * Returns NULL with a reason in err when any of these fails (the store
 * cannot be opened, the control socket cannot be bound or another daemon
 * answers on it); cfg is then freed too. */
struct daemon *daemon_new(struct config *cfg, char *err, size_t errlen);

/* 1 while the daemon stands by for another one on its state_dir. */
int daemon_standby(const struct daemon *d);

/* Runs the loop until SIGTERM or SIGINT. Blocks SIGTERM, SIGINT and SIGHUP
 * outside ppoll(), installs flag-setting handlers for them, ignores
 * SIGPIPE; restores the previous mask and handlers before returning.
 * Returns the process's exit status: 0 after a clean stop, 1 when the loop
 * could not go on (poll failed). */
int daemon_run(struct daemon *d);

/* Closes the broker politely, frees the components, the clients, the
 * control socket (removing its file), the store and the configuration.
 * Accepts NULL. */
void daemon_free(struct daemon *d);

#endif
