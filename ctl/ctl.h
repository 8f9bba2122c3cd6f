/*
 * ctl.h - what the commands of remotetaskctl share.
 *
 * remotetaskctl is a table of commands (remotetaskctl.c); each command is a
 * function in its own file, named ctl_<command>.c, that takes the parsed
 * arguments and returns the process's exit status:
 *   0  done (for check: every check passed)
 *   1  the command ran and failed (a check failed, the daemon said no)
 *   2  the command line was wrong
 */
#ifndef RT_CTL_H
#define RT_CTL_H

#include <stdbool.h>

struct ctl_args {
    const char *config; /* -c FILE */
    const char *command;
    const char *sub;    /* dlq list|replay|purge */
    long elid;          /* --elid N, 0 = not given */
    const char *client; /* --client C (trace, server side) */
    long target;        /* --target M (trace, server side), 0 = not given */
    const char *id;     /* --id X */
    bool all;           /* --all */
    bool yes;           /* --yes */
    bool json;          /* --json */
    int timeout;        /* --timeout S, 0 = the command's default */
};

/* remotetaskctl --command check: configuration, BILLmanager login and
 * departments, broker login; one line per check on stdout. */
int ctl_check(const struct ctl_args *args);

/* remotetaskctl --command taskevent [--elid N]: records in the store that
 * local task N changed (durable before anything else, also while the
 * daemon is down), then tells the daemon, best effort. Without an elid (a
 * task being created) it asks the daemon for a reconciliation instead.
 * What the BILLmanager event handler runs; exit 0 once recorded. */
int ctl_taskevent(const struct ctl_args *args);

/* remotetaskctl --command dlq list|replay|purge: the dead letters of this
 * configuration's clients (client.id, server.clients[].id) in the broker's
 * remotetask.dead queue; other clients' letters are never touched.
 *   list [--json] [--id X]  shows them (id, client, task, direction,
 *                           attempts, time, reason) and leaves them there;
 *   replay --id X | --all   republishes each to the exchange it came from
 *                           (x-rt-attempts 0, x-rt-replayed 1, x-rt-user
 *                           kept) and removes it once the broker confirmed
 *                           the copy; "replayed N"; an unknown id exits 1;
 *   purge [--id X] --yes    removes them; without --yes shows what would
 *                           go and exits 2.
 * Talks to the broker, not to the daemon. */
int ctl_dlq(const struct ctl_args *args);

/* remotetaskctl --command resync --elid N | --all: forgets in the store
 * what was last published, so that the current state is published again
 * even if unchanged, then tells the daemon (best effort). Client role: N
 * is a local (source) task; it gets an outbox event (--all: every known
 * task, and a reconciliation). Server role: N is a local (target) task
 * linked to a configured client; the daemon is asked for a state cycle
 * now. Exit 1 when N is linked nowhere (server role only) or the store
 * refuses. */
int ctl_resync(const struct ctl_args *args);

/* remotetaskctl --command broker-setup: prints, for this configuration,
 * the rabbitmqctl commands that create every AMQP user it names (each
 * add_user reads its password from standard input) with least-privilege
 * permissions per role (ctl_broker_setup.c says which). Runs nothing,
 * prints no secret. */
int ctl_broker_setup(const struct ctl_args *args);

/* remotetaskctl --command checkevent [--timeout S]: asks the server side
 * for the state of this client's tasks now, waits for it to be applied
 * (60 s by default) and prints "checkevent: M tasks updated (N states
 * received)". Exit 1 with a message on timeout, or when the daemon or the
 * broker cannot be reached. */
int ctl_checkevent(const struct ctl_args *args);

/* remotetaskctl --command trace --elid N | --client C --elid N |
 * [--client C] --target M [--json]: the journal of one task, read from
 * the store (read-only; the daemon may be down), as a table in time order
 * or as JSON, under a line saying where the task stands. The client side
 * with --elid alone (N a local task); the server side with --client (C's
 * task N) or --target (M a local task). Exit 1 when the task is unknown
 * here (no journal row, no link, nothing sent or applied), when the store
 * cannot be read, or when the configuration lacks the side asked about;
 * 2 for --elid and --target together, or neither. */
int ctl_trace(const struct ctl_args *args);

/* remotetaskctl --command status [--json]: the daemon's status as tables
 * (or its JSON, indented). When the daemon does not answer, prints what
 * the store tells and exits 1 with "remotetaskd is not running". */
int ctl_status(const struct ctl_args *args);

#endif
