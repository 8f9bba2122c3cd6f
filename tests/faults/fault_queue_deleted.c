/*
 * fault_queue_deleted.c - issue 9, case 3: the client's forward queue is
 * deleted under the server's consumer while tasks flow.
 *
 * The target answers slowly (200-300 ms a call, 4 in flight) so that
 * messages wait in remotetask.forward.<client> when an operator (here the
 * management API) deletes it. Required: the server notices the consumer
 * cancel, declares the topology again and consumes again within 5 s;
 * tasks published after that are applied; the messages the broker lost
 * with the queue are recovered by `remotetaskctl --command resync --all`
 * on the client, each applied exactly once: the target's call log after
 * the resync holds one create per lost task and no other write.
 */
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "faults.h"
#include "harness.h"
#include "harness_rabbit.h"
#include "harness_sim.h"

/* The bound on "consumes again". */
#define RECONSUME_MS 5000
/* Messages that must wait in the queue when it is deleted. */
#define READY_AT_DELETE 40
#define FIRST_BATCH     250
#define SECOND_BATCH    50

static const char *const server_members[] = {"broker.state",
                                             "broker.connected",
                                             "broker.reconnects",
                                             "broker.last_error",
                                             "queues",
                                             "errors.reconnects",
                                             NULL};
static const char *const client_members[] = {"broker.state", "outbox", "errors.outbox_deferred",
                                             "counters.tasks_published", NULL};

static void test_queue_deleted(void **state)
{
    (void)state;
    struct harness_scenario_opts o = {.max_inflight = 4};
    struct harness_scenario *s = faults_scenario("fqd", &o);
    struct fault_result r;
    char fwd[BROKER_NAME_MAX];
    uint32_t ready = 0, consumers = 0;
    assert_int_equal(broker_queue_name(fwd, sizeof(fwd), BROKER_FORWARD, s->client_id), 0);
    fault_begin(&r, s, "queue-deleted", 3, "Queue deleted under the consumer");

    /* Slow enough that the queue fills whatever the machine's load: the
     * client publishes as fast as the source answers. Fast again once the
     * queue is gone. */
    json_decref(harness_sim_admin_ok(s->dst, "POST", "/faults", "{\"latency_ms\":[200,300]}"));
    faults_start_both(s);
    faults_bulk_send(s, FIRST_BATCH, "qd-");

    /* The flow runs and messages wait in the queue. */
    long long deadline = harness_now_ms() + FAULTS_SHORT_DEADLINE_MS;
    int waiting = 0;
    while (harness_now_ms() < deadline) {
        if (faults_queue_depth(s, s->server_user, fwd, &ready, &consumers) &&
            ready >= READY_AT_DELETE && harness_flow_target_count(s) >= 5) {
            waiting = 1;
            break;
        }
        poll(NULL, 0, 50);
    }
    fault_check(&r, waiting,
                "%u messages wait in %s and tasks are being applied when it is "
                "deleted (at least %d wanted)",
                ready, fwd, READY_AT_DELETE);
    size_t applied_before = harness_flow_target_count(s);
    uint32_t ready_at_delete = ready;

    fault_start(&r);
    harness_rabbit_delete_queue(fwd);
    long long deleted_at = harness_now_ms();
    json_decref(harness_sim_admin_ok(s->dst, "POST", "/faults", "{\"latency_ms\":[2,5]}"));
    json_decref(fault_status(&r, "server", s->server, "right after the deletion", server_members));
    json_decref(fault_status(&r, "client", s->client, "right after the deletion", client_members));

    /* Consumed again: the queue exists with a consumer. */
    long long back_at = 0;
    deadline = deleted_at + FAULTS_SHORT_DEADLINE_MS;
    while (harness_now_ms() < deadline) {
        if (faults_queue_depth(s, s->server_user, fwd, &ready, &consumers) && consumers >= 1) {
            back_at = harness_now_ms();
            break;
        }
        poll(NULL, 0, 50);
    }
    fault_end(&r);
    fault_check(&r, back_at && back_at - deleted_at <= RECONSUME_MS,
                "the server consumes %s again %lld ms after it was deleted (at most %d ms)", fwd,
                back_at ? back_at - deleted_at : -1, RECONSUME_MS);
    fault_expect_log(&r, "server", s->server, "cancelled the consumer",
                     "that the broker cancelled its consumer");
    static const char *const server_lines[] = {"consuming queue", "connected to the broker", NULL};
    fault_quote(&r, "server", s->server, server_lines);
    static const char *const client_lines[] = {"unroutable", NULL};
    size_t unroutable = fault_quote(&r, "client", s->client, client_lines);
    fault_note(&r,
               "%zu tasks were on the target when %s was deleted with %u messages ready; the "
               "client logged %zu unroutable publishes while it was gone",
               applied_before, fwd, ready_at_delete, unroutable);

    /* Tasks published after that are applied without anyone's help. */
    long long second = faults_bulk_send(s, SECOND_BATCH, "qd2-");
    fault_check(&r, faults_wait_sources(s, second, SECOND_BATCH, FAULTS_APPLY_DEADLINE_MS),
                "the %d tasks published after the queue came back are applied", SECOND_BATCH);

    /* Everything the client will send by itself is sent and applied. */
    fault_check(&r, faults_wait_outbox_empty(s, FAULTS_APPLY_DEADLINE_MS),
                "the client's outbox empties (unroutable publishes retried)");
    fault_check(&r, faults_wait_queue_empty(fwd, FAULTS_SHORT_DEADLINE_MS),
                "the server applies everything in %s", fwd);
    fault_count(&r);
    size_t lost_with_queue = r.lost;
    fault_check(&r, lost_with_queue > 0,
                "the broker lost messages with the queue (%zu source tasks without a target "
                "task before the resync)",
                lost_with_queue);

    /* The operator's recovery: resync --all on the client. Each lost task
     * must be created once, and nothing else written. */
    long long mark = faults_sim_last_call(s->dst);
    const char *resync[] = {"--command", "resync", "--all", NULL};
    char *out = NULL;
    int rc = faults_ctl(s->client_conf, resync, &out);
    fault_check(&r, rc == 0, "remotetaskctl --command resync --all exits 0 (%d: %s)", rc, out);
    free(out);
    fault_wait_recovered(&r, FAULTS_APPLY_DEADLINE_MS);
    fault_check(&r, faults_wait_outbox_empty(s, FAULTS_APPLY_DEADLINE_MS),
                "the client's outbox empties after the resync");
    fault_check(&r, faults_wait_queue_empty(fwd, FAULTS_SHORT_DEADLINE_MS),
                "the server applies every resynced message");
    long creates = faults_sim_writes(s->dst, mark, 0);
    long writes = faults_sim_writes(s->dst, mark, -1);
    fault_check(&r, creates == (long)lost_with_queue,
                "the resync creates each lost task once: %ld creates for %zu lost tasks", creates,
                lost_with_queue);
    fault_check(&r, writes == creates,
                "the resync writes nothing to the tasks that had arrived: %ld other writes",
                writes - creates);
    json_t *st = fault_status(&r, "server", s->server, "after the resync", server_members);
    fault_note(&r, "after the resync the server counts %lld tasks created, %lld unchanged",
               (long long)json_integer_value(faults_json_path(st, "counters.forward_created")),
               (long long)json_integer_value(faults_json_path(st, "counters.forward_unchanged")));
    json_decref(st);

    fault_check_running(&r, s);
    fault_stop_both(&r, s);
    fault_report(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_queue_deleted, faults_teardown),
    };
    return cmocka_run_group_tests(tests, faults_group_setup, NULL);
}
