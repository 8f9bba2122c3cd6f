/*
 * harness_clients.h - many clients of one server side, played by the test
 * itself (issue 10, item 4).
 *
 * What a server daemon sees of a client is its AMQP user publishing task
 * messages to remotetask.forward with the client's id as routing key, and
 * what it gives back is state messages in remotetask.reverse.<id>. So N
 * clients need no N client daemons: this harness makes N clients (an id,
 * an AMQP user of its own and a target department each), writes the
 * emulator's seed and the server daemon's configuration for them,
 * publishes real task messages (common/codec.h) as each client's own user
 * (the broker checks user_id against the login, as in production), reads
 * each client's reverse queue as that user, and counts per client what
 * the target BILLmanager holds (the origin block of the target's note,
 * harness_flow.h).
 *
 * Ids sort in index order ("<tag><pid>c007" before "<tag><pid>c010"), so a
 * client's index is also its place in the applier's round robin, which
 * goes through clients in the order of their ids.
 *
 * Every function fails the running cmocka test (fail_msg) with a clear
 * line when the broker, the node or the emulator does not do what was
 * asked. Integration tests never skip.
 */
#ifndef RT_HARNESS_CLIENTS_H
#define RT_HARNESS_CLIENTS_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "broker.h"
#include "codec.h"
#include "harness_sim.h"

/* Client ids and logins stay well inside BROKER_CLIENT_MAX. */
#define HARNESS_CLIENT_ID_MAX 48
/* At most this many clients in one harness (a server's configuration has
 * no cap of its own; broker.h consumes at most BROKER_MAX_CONSUMERS). */
#define HARNESS_CLIENTS_MAX 1000

struct harness_client {
    char id[HARNESS_CLIENT_ID_MAX];   /* client id: routing key, queue names */
    char user[HARNESS_CLIENT_ID_MAX]; /* its own AMQP login */
    long dept;                        /* its department on the target */
    struct broker *conn;              /* its connection, NULL until used */
    uint64_t acked, refused;          /* confirms received on conn */
};

struct harness_clients {
    size_t n;
    char password[64];        /* every client's AMQP password (a throwaway) */
    char server_user[64];     /* the server daemon's AMQP login (created too) */
    struct harness_client *c; /* n entries */
};

/* Makes n clients (1..HARNESS_CLIENTS_MAX) named after tag, whose target
 * departments are first_dept .. first_dept + n - 1, their AMQP users and
 * the server's user (the node's management API). Free with
 * harness_clients_free. *slot (may be NULL) is set as soon as the object
 * exists, so that a teardown frees one whose construction failed half-way. */
struct harness_clients *harness_clients_new(const char *tag, size_t n, long first_dept,
                                            struct harness_clients **slot);

/* Closes the clients' connections, deletes every client's queues (14 of
 * topology v2) and exchanges (its retry and dead-letter exchanges) and
 * every AMQP user it made. Cleanup: a failure is reported, not asserted.
 * Accepts NULL. */
void harness_clients_free(struct harness_clients *cs);

/* The emulator's seed document for the clients' departments (named
 * "Reseller <index>"), with the default seed's API user, staff and
 * accounts: a malloc'ed JSON text for harness_sim_start. */
char *harness_clients_seed(const struct harness_clients *cs);

/* What a server configuration needs beyond the clients. */
struct harness_clients_server {
    const char *path; /* the file to write (mode 0600) */
    const char *dir;  /* where the password files go */
    const char *state_dir;
    const char *socket;    /* control_socket */
    const char *url;       /* billmanager.url (the target emulator) */
    int max_inflight;      /* billmanager.max_inflight */
    int prefetch;          /* amqp.prefetch */
    int sync_interval;     /* server.sync_interval, seconds */
    const char *log_level; /* "info", "debug" */
};

/* Writes a server-only configuration whose server.clients are the
 * clients (id, amqp_user, department), logging in to the broker as
 * cs->server_user and to the emulator as the default seed's user, with
 * the password files next to it. */
void harness_clients_server_conf(const struct harness_clients *cs,
                                 const struct harness_clients_server *o);

/* Declares the topology of every client (broker_declare as the server's
 * user, what the server daemon does on every connect) and returns how long
 * it took in milliseconds. */
long long harness_clients_declare(struct harness_clients *cs);

/* Publishes count task messages of client i as its own user: source tasks
 * first_task .. first_task + count - 1, seq 1, department the client's,
 * named "<name_prefix><task>", pipelined; returns once the broker
 * confirmed every one. Fails the test when the broker refuses or returns
 * one (a missing queue: the topology was not declared). */
void harness_clients_publish(struct harness_clients *cs, size_t i, long long first_task,
                             size_t count, const char *name_prefix);

/* harness_clients_publish for every client, with the confirms of all of
 * them awaited together at the end: the broker syncs its disk before it
 * confirms a persistent message, and one client at a time would wait for
 * that once per client. */
void harness_clients_publish_all(struct harness_clients *cs, long long first_task, size_t count,
                                 const char *name_prefix);

/* Opens client i's connection now (it is opened by the first publish
 * otherwise): for a test that must publish at a moment without the
 * connection's handshake in the way. */
void harness_clients_connect(struct harness_clients *cs, size_t i);

/* Reads every message of client i's reverse queue as its own user
 * (basic.get, ack each), decodes it and calls fn with it (fn may be NULL).
 * Returns how many there were. Fails the test on a message that does not
 * decode or is not addressed to client i. */
size_t harness_clients_drain_reverse(struct harness_clients *cs, size_t i,
                                     void (*fn)(void *arg, size_t i, const struct codec_msg *m),
                                     void *arg);

/* What the target holds for one client. */
struct harness_clients_count {
    size_t applied;    /* distinct source tasks with a target task in its department */
    size_t duplicated; /* target tasks beyond one per source task */
    size_t misplaced;  /* its tasks in another client's department */
};

/* Counts, from one GET /tasks of the emulator, the target tasks of every
 * client by their origin, into out[0..n) (zeroed first). A task counts
 * for client i when its note holds the origin block of i; its source task
 * must be in 1..max_task (others count as misplaced). Returns the number
 * of tasks that carry no origin of any client. */
size_t harness_clients_count(struct harness_clients *cs, struct harness_sim *sim,
                             long long max_task, struct harness_clients_count *out);

/* The target task id of client i's source task src (0 when it has none),
 * from a GET /tasks answer (tasks: its "tasks" array). */
long long harness_clients_target(const struct harness_clients *cs, size_t i, json_t *tasks,
                                 long long src);

#endif
