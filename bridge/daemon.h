/*
 * daemon.h - remotetaskd's one event loop and the objects it drives.
 *
 * A daemon owns the configuration, the store, the BILLmanager client, the
 * broker connection, the components of its roles (producer/relay and
 * consumer/reverse for the client role, consumer/forward and
 * producer/statepub for the server role), the control socket server and,
 * when metrics.listen is set, the Prometheus endpoint (bridge/metrics_http).
 * It is the only place that knows producer/ and consumer/ both: a sync
 * request the forward applier receives goes to statepub_sync(), and the
 * reverse applier's sync_done answers the checkevent that waits for it.
 *
 * Control commands (common/ctlproto.h): ping; wake {reconcile}; checkevent
 * {timeout} (client role: publish a sync request, answer
 * {"ok":true,"published":N,"updated":M} on its sync_done, or an error
 * after timeout seconds, 60 by default); status (JSON: roles, broker and
 * BILLmanager state, per queue the depth and consumers the broker reports,
 * asked when the command runs, and the deliveries this instance holds
 * unacknowledged, which AMQP cannot ask the broker for; outbox, links,
 * last times, error counts); resync (server role: a state cycle of every
 * client now). Metrics are the components' running totals, kept across
 * reloads so that counters never go down; queue gauges are at most 10 s
 * old. daemon_run() is the loop: one ppoll() over the broker's
 * socket, curl's sockets and the control sockets, with the signals
 * SIGTERM, SIGINT and SIGHUP unblocked only inside it:
 *
 *   SIGTERM, SIGINT  drain (no new work), wait up to 10 s for work in flight
 *                    (API calls, confirms) to finish, close the broker
 *                    politely, return 0;
 *   SIGHUP           load the configuration file again: an invalid file is
 *                    logged and the old configuration kept; a valid one is
 *                    applied after a drain of up to 5 s by rebuilding the
 *                    components, the BILLmanager client and the broker
 *                    (the store is reopened only if state_dir changed).
 *
 * The broker connection is retried forever with a backoff of 500 ms to
 * 30 s; a refused login or TLS failure is retried at the longest delay, as
 * the operator may fix the broker side without touching remotetaskd.
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
 * replaced on reload): opens the store in cfg->state_dir, makes the
 * BILLmanager client, the broker object (not connected yet), the
 * components of the configured roles and binds the control socket.
 * Returns NULL with a reason in err when any of these fails (the store
 * cannot be opened, the control socket cannot be bound or another daemon
 * answers on it); cfg is then freed too. */
struct daemon *daemon_new(struct config *cfg, char *err, size_t errlen);

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
