/*
 * it_cluster_harness.c - the cluster harness (harness_cluster.h and
 * tests/harness/rabbitcluster) on a real three-node cluster of its own.
 *
 * It starts the cluster, sees three running nodes in cluster_status, puts
 * 100 persistent messages with confirms in a quorum queue through node 1,
 * kills the node holding the queue's leader, finds the 100 messages
 * through another node once a new leader is elected, starts the killed
 * node again, stops a node for a while and starts it, freezes one while
 * 10 more messages go in and thaws it, and at the end takes every message
 * out through yet another node, counting what was lost and what came
 * twice. The times the cluster took are printed, never asserted.
 */
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "broker.h"
#include "harness.h"
#include "harness_cluster.h"
#include "log.h"

#define N_NODES  3
#define N_FIRST  100 /* published before the failures */
#define N_FROZEN 10  /* published while a node is frozen */
#define N_TOTAL  (N_FIRST + N_FROZEN)
#define WAIT_MS  60000
#define PASSWORD "cluster-harness-secret"

struct ctx {
    struct broker *b;
    size_t n_acked, n_other; /* confirms: acked, anything else */
    char user[64];
    char queue[128];
};

static void on_confirm(void *arg, uint64_t tag, enum broker_fate fate)
{
    struct ctx *c = arg;
    (void)tag;
    if (fate == BROKER_ACKED)
        c->n_acked++;
    else
        c->n_other++;
}

static void on_delivery(void *arg, const struct broker_delivery *d)
{
    (void)arg;
    (void)d;
    fail_msg("a delivery arrived, but this test consumes nothing");
}

/* A connection to node i as the test's user; fails the test otherwise. */
static void connect_to(struct ctx *c, int i)
{
    struct broker_opts o;
    char err[256];
    broker_free(c->b);
    harness_cluster_opts(&o, i, c->user, PASSWORD);
    o.queue_type = "quorum";
    o.on_confirm = on_confirm;
    o.on_delivery = on_delivery;
    o.cb_arg = c;
    c->b = broker_new(&o, err, sizeof(err));
    if (!c->b)
        fail_msg("broker_new: %s", err);
    rt_status st = broker_connect(c->b);
    if (st != RT_OK)
        fail_msg("connecting to node %d: %s (%s)", i, broker_strerror(c->b), rt_status_name(st));
}

/* Publishes messages first..last-1 ("m-NNN") to the queue through the
 * default exchange and waits for every confirm. */
static void publish_range(struct ctx *c, int first, int last)
{
    size_t acked0 = c->n_acked, other0 = c->n_other;
    for (int k = first; k < last; k++) {
        char id[32];
        snprintf(id, sizeof(id), "m-%03d", k);
        struct broker_props p = {.message_id = id};
        uint64_t tag;
        rt_status st = broker_publish(c->b, "", c->queue, &p, id, strlen(id), &tag);
        if (st != RT_OK)
            fail_msg("publishing %s: %s", id, broker_strerror(c->b));
    }
    size_t want = (size_t)(last - first);
    long long deadline = harness_now_ms() + WAIT_MS;
    while (c->n_acked - acked0 + c->n_other - other0 < want) {
        if (harness_now_ms() > deadline)
            fail_msg("%zu of %zu confirms within %d s", c->n_acked - acked0 + c->n_other - other0,
                     want, WAIT_MS / 1000);
        struct pollfd p = {.fd = broker_fd(c->b), .events = POLLIN};
        if (!broker_wants_read_now(c->b))
            (void)poll(&p, 1, 100);
        if (broker_process(c->b) != RT_OK)
            fail_msg("waiting for confirms: %s", broker_strerror(c->b));
    }
    assert_int_equal(c->n_other - other0, 0);
    assert_int_equal(c->n_acked - acked0, want);
}

/* The queue's ready messages as node i tells them (a passive declare
 * through it), with the test's user. */
static uint32_t depth_via(struct ctx *c, int i)
{
    uint32_t ready = 0, consumers = 0;
    connect_to(c, i);
    rt_status st = broker_queue_depth(c->b, c->queue, &ready, &consumers);
    if (st != RT_OK)
        fail_msg("the depth of %s through node %d: %s", c->queue, i, broker_strerror(c->b));
    return ready;
}

/* The leader of the queue as rabbitmqctl list_queues on node i sees it:
 * a view independent of the harness's management API call. */
static int ctl_leader(const char *queue, int i)
{
    const char *args[] = {"-q", "list_queues", "name", "leader", "--formatter", "json", NULL};
    char *out = harness_cluster_ctl(i, args);
    json_error_t e;
    json_t *qs = json_loads(out, 0, &e);
    if (!json_is_array(qs))
        fail_msg("list_queues is not a JSON array (%s): %.300s", e.text, out);
    free(out);
    int idx = -1;
    size_t k;
    json_t *q;
    json_array_foreach(qs, k, q)
    {
        const char *name = json_string_value(json_object_get(q, "name"));
        if (name && strcmp(name, queue) == 0)
            idx = harness_cluster_node_index(json_string_value(json_object_get(q, "leader")));
    }
    json_decref(qs);
    if (idx < 0)
        fail_msg("list_queues on node %d does not show %s", i, queue);
    return idx;
}

/* A node that is neither a nor b. */
static int other_than(int a, int b)
{
    for (int i = 1; i <= N_NODES; i++) {
        if (i != a && i != b)
            return i;
    }
    fail_msg("no node other than %d and %d", a, b);
    return 0;
}

static int group_setup(void **state)
{
    (void)state;
    harness_cluster_start(N_NODES);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    harness_cluster_stop();
    return 0;
}

static int ctx_setup(void **state)
{
    struct ctx *c = calloc(1, sizeof(*c));
    if (!c)
        return -1;
    *state = c;
    return 0;
}

static int ctx_teardown(void **state)
{
    struct ctx *c = *state;
    if (c) {
        broker_free(c->b);
        free(c);
    }
    *state = NULL;
    return 0;
}

static void test_three_nodes_run_in_one_cluster(void **state)
{
    (void)state;
    assert_int_equal(harness_cluster_nodes(), N_NODES);
    const char *args[] = {"-q", "cluster_status", "--formatter", "json", NULL};
    char *out = harness_cluster_ctl(2, args);
    json_error_t e;
    json_t *st = json_loads(out, 0, &e);
    if (!json_is_object(st))
        fail_msg("cluster_status is not a JSON object (%s): %.300s", e.text, out);
    free(out);
    json_t *running = json_object_get(st, "running_nodes");
    json_t *disk = json_object_get(st, "disk_nodes");
    assert_int_equal(json_array_size(running), N_NODES);
    assert_int_equal(json_array_size(disk), N_NODES);
    for (int i = 1; i <= N_NODES; i++) {
        int found = 0;
        size_t k;
        json_t *v;
        json_array_foreach(running, k, v)
        {
            if (json_is_string(v) &&
                strcmp(json_string_value(v), harness_cluster_node_name(i)) == 0)
                found = 1;
        }
        if (!found)
            fail_msg("node %d (%s) is not among cluster_status's running nodes", i,
                     harness_cluster_node_name(i));
        assert_true(harness_cluster_node_up(i));
    }
    json_decref(st);

    /* A classic queue lives on the node that declared it: node 1, whose
     * management API the harness uses while every node is up. */
    char classic[64];
    snprintf(classic, sizeof(classic), "clh-%ld.classic", (long)getpid());
    harness_cluster_declare_queue(classic, "classic");
    assert_int_equal(harness_cluster_queue_leader(classic), 1);
    harness_cluster_delete_queue(classic);

    char uris[1024];
    harness_cluster_uris(uris, sizeof(uris), "alice");
    printf("cluster: 3 nodes running in one cluster; URIs for a configuration: %s\n", uris);
    char want[64];
    snprintf(want, sizeof(want), "\"amqp://alice@127.0.0.1:%d/%%2f\"",
             harness_cluster_amqp_port(3));
    assert_non_null(strstr(uris, want));
}

static void test_quorum_queue_through_node_failures(void **state)
{
    struct ctx *c = *state;
    char unique[32];
    snprintf(unique, sizeof(unique), "clh-%ld", (long)getpid());
    snprintf(c->user, sizeof(c->user), "%s-user", unique);
    snprintf(c->queue, sizeof(c->queue), "%s.quorum", unique);
    harness_cluster_adduser(c->user, PASSWORD);
    harness_cluster_declare_queue(c->queue, "quorum");

    /* 100 persistent messages, each confirmed, through node 1. */
    connect_to(c, 1);
    publish_range(c, 0, N_FIRST);
    int leader = harness_cluster_wait_leader(c->queue, 0);
    printf("cluster: %d messages confirmed through node 1; the leader is on node %d\n", N_FIRST,
           leader);

    /* The leader's node crashes: another member takes over, and the
     * messages are all there through a node that is not the old leader's. */
    long long t0 = harness_now_ms();
    harness_cluster_kill(leader);
    long long t1 = harness_now_ms();
    int next = harness_cluster_wait_leader(c->queue, leader);
    long long t2 = harness_now_ms();
    printf("cluster: node %d killed (the script took %lld ms); node %d leads, seen %lld ms after "
           "the kill began\n",
           leader, t1 - t0, next, t2 - t0);
    int via = other_than(leader, 0);
    assert_int_equal(ctl_leader(c->queue, via), next);
    uint32_t ready = depth_via(c, via);
    printf("cluster: through node %d the queue holds %u of %d messages (%d lost)\n", via, ready,
           N_FIRST, N_FIRST - (int)ready);
    assert_int_equal(ready, N_FIRST);

    /* The killed node comes back with its data and rejoins. */
    t0 = harness_now_ms();
    harness_cluster_start_node(leader);
    printf("cluster: node %d back in the cluster %lld ms after its start\n", leader,
           harness_now_ms() - t0);
    for (int i = 1; i <= N_NODES; i++)
        assert_true(harness_cluster_node_up(i));

    /* A graceful stop of the current leader's node for a while. */
    int stopped = harness_cluster_wait_leader(c->queue, 0);
    t0 = harness_now_ms();
    harness_cluster_stop_node(stopped);
    t1 = harness_now_ms();
    next = harness_cluster_wait_leader(c->queue, stopped);
    t2 = harness_now_ms();
    via = other_than(stopped, 0);
    ready = depth_via(c, via);
    printf("cluster: node %d stopped in %lld ms, node %d leads %lld ms later; %u messages "
           "through node %d\n",
           stopped, t1 - t0, next, t2 - t1, ready, via);
    assert_int_equal(ready, N_FIRST);
    t0 = harness_now_ms();
    harness_cluster_start_node(stopped);
    printf("cluster: node %d back in the cluster %lld ms after its start\n", stopped,
           harness_now_ms() - t0);

    /* A frozen follower: the other two still confirm, and it comes back
     * once thawed. */
    leader = harness_cluster_wait_leader(c->queue, 0);
    int frozen = other_than(leader, 0);
    via = other_than(leader, frozen);
    harness_cluster_freeze(frozen);
    connect_to(c, via);
    publish_range(c, N_FIRST, N_TOTAL);
    harness_cluster_thaw(frozen);
    t0 = harness_now_ms();
    harness_cluster_wait_node(frozen);
    printf("cluster: %d messages confirmed through node %d while node %d was frozen; it runs in "
           "the cluster %lld ms after the thaw\n",
           N_FROZEN, via, frozen, harness_now_ms() - t0);

    /* Every message out, through a node the publishers did not use last. */
    via = other_than(via, 0);
    connect_to(c, via);
    int seen[N_TOTAL] = {0};
    int got = 0, duplicated = 0, foreign = 0;
    for (;;) {
        struct broker_delivery *d = NULL;
        rt_status st = broker_get(c->b, c->queue, &d, NULL);
        if (st != RT_OK)
            fail_msg("basic.get through node %d: %s", via, broker_strerror(c->b));
        if (!d)
            break;
        int k = -1;
        if (sscanf(d->message_id, "m-%d", &k) == 1 && k >= 0 && k < N_TOTAL) {
            if (seen[k]++)
                duplicated++;
        } else {
            foreign++;
        }
        got++;
        assert_int_equal(broker_ack(c->b, d->delivery_tag), RT_OK);
        broker_delivery_free(d);
        if (got > 2 * N_TOTAL)
            fail_msg("more than %d messages in %s", 2 * N_TOTAL, c->queue);
    }
    int lost = 0;
    for (int k = 0; k < N_TOTAL; k++)
        lost += seen[k] == 0;
    printf("cluster: %d messages taken out through node %d: %d lost, %d duplicated, %d unknown\n",
           got, via, lost, duplicated, foreign);
    assert_int_equal(lost, 0);
    assert_int_equal(duplicated, 0);
    assert_int_equal(foreign, 0);

    broker_free(c->b);
    c->b = NULL;
    harness_cluster_delete_queue(c->queue);
    harness_cluster_delete_user(c->user);
}

int main(void)
{
    log_init("it_cluster_harness", LOG_LEVEL_WARNING, 0);
    /* The figures in order with the script's lines on stderr. */
    setvbuf(stdout, NULL, _IOLBF, 0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_three_nodes_run_in_one_cluster),
        cmocka_unit_test_setup_teardown(test_quorum_queue_through_node_failures, ctx_setup,
                                        ctx_teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
