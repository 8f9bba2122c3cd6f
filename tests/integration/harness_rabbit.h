/*
 * harness_rabbit.h - drive the private RabbitMQ node of the tests.
 *
 * scripts/test starts the node with tests/harness/rabbitnode and exports
 * its env file (RT_RABBIT_DIR, RT_RABBIT_NODE, RT_AMQP_PORT, RT_AMQPS_PORT,
 * RT_TLS_DIR, RT_RABBITNODE, RT_RABBIT_MGMT_PORT,
 * RT_RABBIT_MGMT_CREDENTIALS). These helpers read that environment (a test
 * fails, never skips, when it is missing). Users, queue deletion and
 * bindings go through the node's management HTTP API (libcurl, a few
 * milliseconds a call); the node's life (kill, freeze, restart) and the
 * queue figures go through the script, run with fork/exec (never through a
 * shell). Every helper fails the running cmocka test with a clear message
 * when the node does not do what was asked.
 */
#ifndef RT_HARNESS_RABBIT_H
#define RT_HARNESS_RABBIT_H

#include <stddef.h>

#include "broker.h"

#define HARNESS_QUEUE_MAX_ARGS 16

struct harness_queue_arg {
    char key[64];
    char value[256]; /* strings as is, numbers in decimal, booleans "true"/"false" */
};

struct harness_queue {
    char name[256];
    char type[32]; /* "classic", "quorum" */
    long messages; /* ready + unacknowledged */
    long consumers;
    size_t n_args;
    struct harness_queue_arg args[HARNESS_QUEUE_MAX_ARGS];
};

/* Fills opts for a plain AMQP connection to the node as user/pass:
 * 127.0.0.1, RT_AMQP_PORT, vhost "/", heartbeat 10 s, prefetch 64, classic
 * queues, connect timeout 5 s, no callbacks (the test sets them). The
 * strings must outlive the broker_new() call only. */
void harness_rabbit_opts(struct broker_opts *opts, const char *user, const char *pass);

/* As harness_rabbit_opts, over TLS to RT_AMQPS_PORT with host "localhost",
 * the test CA and peer and hostname verification on. */
void harness_rabbit_tls_opts(struct broker_opts *opts, const char *user, const char *pass);

/* The path of a file of the test CA (ca.pem, wrong-ca.pem, client.pem,
 * client.key, ...) in a static buffer valid until the next call. */
const char *harness_rabbit_tls_file(const char *name);

/* Writes "<tag>-<pid>-<n>" into buf: a name no other test run uses, for
 * client ids, users and queues. Returns buf. */
char *harness_rabbit_unique(char *buf, size_t len, const char *tag);

/* Adds a user with all permissions on vhost "/" over the management API
 * (the password only in the request's body, never in argv or a message). */
void harness_rabbit_adduser(const char *user, const char *pass);

/* SIGKILLs the node (a crash) and returns when it is gone. */
void harness_rabbit_kill(void);

/* SIGSTOPs the node: it keeps its sockets open but answers nothing, like a
 * peer behind a dead link. Follow with harness_rabbit_kill() or _thaw(). */
void harness_rabbit_freeze(void);

/* SIGCONTs a frozen node. */
void harness_rabbit_thaw(void);

/* Starts the node again with its data after a kill; returns when it
 * accepts connections. */
void harness_rabbit_restart(void);

/* Brings the node back to running whatever a failed test left it in
 * (frozen, killed); for teardowns. Fails the test when it cannot. */
void harness_rabbit_ensure_up(void);

/* Runs rabbitmqctl against the node with args (NULL-terminated) and returns
 * its standard output (malloc'ed, capped at 4 MiB), or fails the test when
 * it exits non-zero. */
char *harness_rabbit_ctl(const char *const *args);

/* Every queue of vhost "/": returns the count and a malloc'ed array in
 * *out (free() it). The figures are rabbitmqctl list_queues', exact at the
 * time of the call: the management API's lag behind the queues by a
 * statistics interval or more, which tests comparing or waiting on counts
 * cannot afford. */
size_t harness_rabbit_list_queues(struct harness_queue **out);

/* Looks one queue up: 1 with *q filled, 0 when it does not exist. Exact
 * figures, as harness_rabbit_list_queues(). */
int harness_rabbit_queue(const char *name, struct harness_queue *q);

/* The value of a queue argument (x-queue-type, x-message-ttl, ...), or
 * NULL when the queue does not have it. */
const char *harness_queue_arg(const struct harness_queue *q, const char *key);

/* 1 when exchange is bound to queue with routing key, else 0. */
int harness_rabbit_has_binding(const char *exchange, const char *queue, const char *key);

/* Deletes a queue if it exists (test cleanup); fails the test on any other
 * refusal. */
void harness_rabbit_delete_queue(const char *name);

/* Deletes a user if it exists (test cleanup); fails the test on any other
 * refusal. */
void harness_rabbit_delete_user(const char *user);

#endif
