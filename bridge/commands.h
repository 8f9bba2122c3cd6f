/*
 * commands.h - the commands remotetaskd answers on its control socket
 * (protocol: common/ctlproto.h; the socket itself: control.h).
 *
 *   ping        {"ok":true,"instance","pid","version","connected"}
 *   wake        {reconcile}: client role, the relay looks at the outbox
 *               now (and reconciles the departments when asked).
 *   checkevent  {timeout}: client role, publish a sync request and answer
 *               {"ok":true,"published":N,"updated":M} on its sync_done,
 *               or an error after timeout seconds (60 by default, at
 *               most 3600).
 *   status      the daemon's status JSON (daemon_status_json(), bridge.h),
 *               with queue depths at most OBSERVE_QUEUES_STATUS_AGE_MS
 *               (observe.h) old: when they are older, the broker is asked
 *               and the answer waits for its answers, at most
 *               COMMANDS_STATUS_WAIT_MS (a broker that does not answer
 *               leaves them unknown, never the status).
 *   resync      server role: a state cycle of every client now.
 *
 * A checkevent is a wait: its entry in struct commands keeps the control
 * client deferred until the broker confirms the request and the reverse
 * applier reports the server's sync_done for its id, or the time runs out.
 * The handlers get the daemon (bridge.h) as their argument; what the
 * status command needs of observe, they ask of the daemon, so that
 * commands and observe never include each other.
 */
#ifndef RT_COMMANDS_H
#define RT_COMMANDS_H

#include <stddef.h>
#include <stdint.h>

#include "broker.h"
#include "control.h"

/* checkevent: how long it waits for the server's sync_done by default, and
 * at most. The control client is kept a little longer than that, so that
 * the daemon's own answer ("no answer from the server side") reaches it
 * before control.c's generic timeout would. */
#define COMMANDS_CHECKEVENT_DEFAULT_S 60
#define COMMANDS_CHECKEVENT_MAX_S     3600
#define COMMANDS_CHECKEVENT_SLACK_MS  2000
/* How long a status waits for fresh queue depths before it answers with
 * what it has. */
#define COMMANDS_STATUS_WAIT_MS 500
/* Random bytes of a sync request's id (hex: twice as many characters). */
#define COMMANDS_SYNC_ID_BYTES 16

struct core;
struct daemon;

/* A checkevent waiting for the server's sync_done. */
struct commands_wait {
    struct control_client *cl; /* NULL: the entry is free */
    char id[2 * COMMANDS_SYNC_ID_BYTES + 1];
    int timeout_s;
    int64_t deadline;        /* monotonic ms */
    const struct core *core; /* the core whose broker published the request */
    uint64_t tag;            /* its delivery tag while the confirm is awaited */
    int confirming;
};

/* The state of the commands that outlive their call. All zero is the
 * start state; it owns nothing, so it needs no release. */
struct commands {
    struct commands_wait waits[CONTROL_MAX_CLIENTS];
    /* Status commands waiting for queue depths: client and deadline
     * (monotonic ms); cl NULL = free. */
    struct control_client *status_cl[CONTROL_MAX_CLIENTS];
    int64_t status_deadline[CONTROL_MAX_CLIENTS];
    uint64_t sync_published; /* checkevent requests published, confirmed */
    uint64_t sync_confirmed;
};

/* The command table for control_new(), with its length in *n. The table
 * is static; the handlers expect the struct daemon as control's arg. */
const struct control_command *commands_table(size_t *n);

/* The fate of a publish on core k's broker: answers the checkevent whose
 * sync request it was, if any (a nack, a return or a lost connection is
 * an error answer; an ack leaves it waiting for the sync_done). */
void commands_on_confirm(struct commands *c, const struct core *k, uint64_t tag,
                         enum broker_fate fate);

/* The reverse applier handled the sync_done of request id: answers the
 * checkevent waiting for it, or logs that nobody waits any more. */
void commands_on_sync_done(struct commands *c, const char *id, uint64_t count, uint64_t applied);

/* Answers the checkevents whose time ran out at mono (monotonic ms);
 * returns the nearest deadline left (monotonic ms), or -1. */
int64_t commands_expire(struct commands *c, int64_t mono);

/* Answers the status commands waiting for queue depths once the answers
 * are in or their wait at mono (monotonic ms) is over; returns the nearest
 * deadline left (monotonic ms), or -1. */
int64_t commands_status_flush(struct daemon *d, int64_t mono);

/* How many checkevents are waiting. */
size_t commands_waiting(const struct commands *c);

#endif
