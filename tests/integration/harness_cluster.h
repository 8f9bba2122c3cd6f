/*
 * harness_cluster.h - a private RabbitMQ cluster for a test.
 *
 * harness_cluster_start() starts a cluster of the test's own with
 * tests/harness/rabbitcluster in a scratch directory under $RT_TEST_TMP,
 * or, when RT_CLUSTER_DIR names a cluster that scripts/test started, reads
 * that one's DIR/env. Its nodes are numbered 1..harness_cluster_nodes(), as
 * the script numbers them; each listens on 127.0.0.1 on ports of its own.
 *
 * A cluster the test started is stopped by harness_cluster_stop(), which
 * the group teardown calls; should the program die first (a crash, a
 * ctest timeout), the script's watcher sees the pipe the program held
 * close and stops it. A cluster scripts/test started is never stopped
 * here: harness_cluster_stop() brings every node back instead, for the
 * next program.
 *
 * The nodes' life (kill, stop, start, freeze, thaw, waits, rabbitmqctl)
 * goes through the script, run with fork/exec and never through a shell;
 * users and where a queue lives go through the management API of a node
 * that is up (libcurl). Every helper fails the running cmocka test with a
 * clear message when the cluster does not do what was asked within its
 * deadline. Nothing is skipped, except as harness_cluster_start() says.
 */
#ifndef RT_HARNESS_CLUSTER_H
#define RT_HARNESS_CLUSTER_H

#include <stddef.h>

#include "broker.h"

/* The exit status of a program whose cluster tests were skipped
 * (RT_CLUSTER_SKIP=1): ctest's SKIP_RETURN_CODE. */
#define HARNESS_CLUSTER_SKIPPED 77

/* Starts a cluster of n nodes (0 = 3) and returns when every node runs in
 * it, or attaches to the one RT_CLUSTER_DIR names (n must then be 0 or its
 * size). Call it from the group setup, once. When the cluster cannot start
 * (too little memory, no ports, a node that does not boot) it fails the
 * test with the script's reason; with RT_CLUSTER_SKIP=1 in the environment
 * it prints "cluster tests skipped: <reason>" and exits the program with
 * HARNESS_CLUSTER_SKIPPED instead. */
void harness_cluster_start(int n);

/* Stops a cluster harness_cluster_start() started: kills every node
 * (nothing of it is read again) and its epmd, whatever state a failed test
 * left them in; for an attached one, harness_cluster_heal(). Safe to call
 * twice, or without a start. */
void harness_cluster_stop(void);

/* Brings every node back to running in the cluster: thaws the frozen,
 * starts the killed and stopped, waits for all. For teardowns of tests
 * that take nodes down. */
void harness_cluster_heal(void);

/* The number of nodes. */
int harness_cluster_nodes(void);

/* Node i's AMQP port, AMQPS port and Erlang node name ("rtc123a@localhost",
 * valid until harness_cluster_stop()). Fail the test for a node that does
 * not exist, as every function taking i does. */
int harness_cluster_amqp_port(int i);
int harness_cluster_amqps_port(int i);
const char *harness_cluster_node_name(int i);

/* The node index (1..n) of an Erlang node name, or 0 when it is none of
 * the cluster's. */
int harness_cluster_node_index(const char *name);

/* As harness_rabbit_opts(), for a plain AMQP connection to node i. */
void harness_cluster_opts(struct broker_opts *opts, int i, const char *user, const char *pass);

/* The path of a file of the cluster's test CA (ca.pem, client.pem, ...)
 * in a static buffer valid until the next call. */
const char *harness_cluster_tls_file(const char *name);

/* Writes every node's URI for a configuration's list into buf:
 * "amqp://USER@127.0.0.1:PORT_1/%2f", "amqp://USER@127.0.0.1:PORT_2/%2f", ...
 * (each quoted, separated by ", ", the password never in them: it goes in
 * a password file). Fails the test when buf is too small. Returns buf. */
char *harness_cluster_uris(char *buf, size_t len, const char *user);

/* Adds a user with all permissions on vhost "/" to the whole cluster over
 * the management API (the password only in the request's body). */
void harness_cluster_adduser(const char *user, const char *pass);

/* Deletes a user if it exists (test cleanup). */
void harness_cluster_delete_user(const char *user);

/* Declares a durable queue of vhost "/" of a type ("classic", "quorum")
 * over the management API of a node that is up; a quorum queue gets a
 * member on every node. Fails the test when the cluster refuses. */
void harness_cluster_declare_queue(const char *name, const char *type);

/* Deletes a queue if it exists (test cleanup). */
void harness_cluster_delete_queue(const char *name);

/* SIGKILLs node i (a crash) and returns when its processes are gone. */
void harness_cluster_kill(int i);

/* Stops node i gracefully and returns when it has stopped. */
void harness_cluster_stop_node(int i);

/* Starts node i again with its data and returns when it runs in the
 * cluster and accepts connections. */
void harness_cluster_start_node(int i);

/* SIGSTOPs node i: its sockets stay open, it answers nothing. Follow with
 * harness_cluster_thaw() or _kill(). */
void harness_cluster_freeze(int i);

/* SIGCONTs node i; harness_cluster_wait_node() then waits until it is
 * back in the cluster. A freeze shorter than the net tick time (60 s)
 * goes unnoticed by the others; after a longer one they have declared the
 * node down, and autoheal restarts it once thawed (about 70 s). */
void harness_cluster_thaw(int i);

/* Returns when node i runs in the cluster and accepts connections, and the
 * cluster, as node i sees it, holds every node that should be up; fails
 * the test after 150 s. */
void harness_cluster_wait_node(int i);

/* 1 when node i runs in the cluster (rabbitcluster status), else 0. */
int harness_cluster_node_up(int i);

/* Runs rabbitmqctl against node i with args (NULL-terminated) and returns
 * its standard output (malloc'ed, capped at 4 MiB), or fails the test when
 * it exits non-zero. */
char *harness_cluster_ctl(int i, const char *const *args);

/* As harness_cluster_ctl, for what a failing test prints: NULL (with a
 * line on stderr) when rabbitmqctl fails, never a test failure. */
char *harness_cluster_ctl_try(int i, const char *const *args);

/* Where a queue of vhost "/" lives, asked of a node that is up: the index
 * of the node holding a quorum queue's leader or a classic queue, 0 when
 * the queue has no leader on a running node right now (an election is
 * under way). Fails the test when the queue does not exist. */
int harness_cluster_queue_leader(const char *queue);

/* Waits until a quorum queue has a leader on a node other than not_on (0:
 * any node) and returns that node's index; fails the test at the deadline
 * (60 s). */
int harness_cluster_wait_leader(const char *queue, int not_on);

#endif
