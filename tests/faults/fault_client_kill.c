/*
 * fault_client_kill.c - issue 9, case 4: the client daemon killed with
 * SIGKILL mid-publish, 5 times during a 1,000-task burst.
 *
 * The source answers views in 10-30 ms with 4 in flight, so the relay is
 * still working through the burst at every kill; each kill comes once the
 * target has received at least 60 more tasks since the last restart, and
 * is checked to land while the client's outbox still holds events.
 * Required: lost 0, duplicated 0, and each task written to the target
 * exactly once (1,000 creates, no other write: a republished message with
 * fields already applied must not write again). Recorded: what the server
 * dropped as duplicates or superseded and counted unchanged (evidence of
 * the republished messages), and how many tasks reached the server in
 * more than one message, with the same or another message id.
 */
#include <inttypes.h>
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
#include "harness_sim.h"

#define BURST 1000
#define KILLS 5
/* Tasks the target must gain between two kills: the restarted client has
 * published again before it is killed again. */
#define PROGRESS 60

static const char *const client_members[] = {"broker.state", "outbox", "inflight",
                                             "counters.tasks_published", NULL};
static const char *const server_members[] = {"counters", "errors.retried", "errors.requeued", NULL};

/* From the server's debug lines "message ID: seq N of task T of client
 * \"C\"": how many deliveries it decoded, and how many tasks came in more
 * than one message under one id (redelivered) or under several ids
 * (published again with a new seq). */
struct deliveries {
    size_t lines;
    size_t tasks_multi_id;
    size_t tasks_same_id_again;
};

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void count_deliveries(struct harness_scenario *s, long long first, struct deliveries *out)
{
    char prefix[128];
    memset(out, 0, sizeof(*out));
    snprintf(prefix, sizeof(prefix), "debug: message %s:", s->client_id);
    char *log = harness_daemon_log_since(s->server, 0, (size_t)256 * 1024 * 1024);
    /* ids[i] is the list of message ids seen for task first + i. */
    char ***ids = calloc(BURST, sizeof(*ids));
    size_t *n_ids = calloc(BURST, sizeof(*n_ids));
    assert_true(ids && n_ids);
    for (char *line = log; *line;) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = '\0';
        char *at = strstr(line, prefix);
        if (at) {
            char *id = at + strlen("debug: message ");
            char *colon = strstr(id, ": seq ");
            long long task = 0;
            if (colon && sscanf(colon, ": seq %*u of task %lld", &task) == 1 && task >= first &&
                task < first + BURST) {
                *colon = '\0';
                size_t k = (size_t)(task - first);
                char **grown = realloc(ids[k], (n_ids[k] + 1) * sizeof(*grown));
                assert_non_null(grown);
                ids[k] = grown;
                ids[k][n_ids[k]++] = id;
                out->lines++;
            }
        }
        line = nl ? nl + 1 : line + strlen(line);
    }
    for (size_t k = 0; k < BURST; k++) {
        if (n_ids[k] > 1) {
            qsort(ids[k], n_ids[k], sizeof(*ids[k]), cmp_str);
            size_t distinct = 1, again = 0;
            for (size_t i = 1; i < n_ids[k]; i++) {
                if (strcmp(ids[k][i], ids[k][i - 1]) != 0)
                    distinct++;
                else
                    again = 1;
            }
            out->tasks_multi_id += distinct > 1;
            out->tasks_same_id_again += again;
        }
        free(ids[k]);
    }
    free(ids);
    free(n_ids);
    free(log);
}

static void test_client_kills(void **state)
{
    (void)state;
    struct harness_scenario_opts o = {.max_inflight = 4};
    struct harness_scenario *s = faults_scenario("fck", &o);
    struct fault_result r;
    int port = faults_enable_metrics(s->server_conf);
    fault_begin(&r, s, "client-sigkill", 4,
                "Client daemon killed with SIGKILL mid-publish, 5 times in a 1,000-task burst");

    json_decref(harness_sim_admin_ok(s->src, "POST", "/faults", "{\"latency_ms\":[10,30]}"));
    faults_start_both(s);
    long long first = faults_bulk_send(s, BURST, "ck-");

    fault_start(&r);
    size_t last = 0;
    for (int k = 1; k <= KILLS; k++) {
        harness_flow_wait_target_count(s, last + PROGRESS, FAULTS_APPLY_DEADLINE_MS);
        uint64_t backlog = harness_outbox_backlog(s->client_state);
        size_t on_target = harness_flow_target_count(s);
        long long unconfirmed = -1;
        if (k == 1) {
            json_t *st = fault_status(&r, "client", s->client, "just before the first SIGKILL",
                                      client_members);
            unconfirmed = json_integer_value(faults_json_path(st, "inflight.unconfirmed"));
            json_decref(st);
        }
        fault_check(&r, backlog > 0,
                    "SIGKILL %d lands mid-burst: the outbox holds %llu events, the target %zu of "
                    "%d tasks",
                    k, (unsigned long long)backlog, on_target, BURST);
        fault_check(&r, harness_daemon_running(s->client),
                    "the client daemon runs before SIGKILL %d", k);
        harness_daemon_kill(s->client);
        if (unconfirmed >= 0)
            fault_note(&r, "SIGKILL 1 with %lld publishes awaiting the broker's confirm",
                       unconfirmed);
        printf("fault %s: SIGKILL %d with %zu tasks on the target\n", r.name, k, on_target);
        harness_daemon_start(s->client);
        last = harness_flow_target_count(s);
    }
    fault_end(&r);
    static const char *const client_lines[] = {"started: instance", "connected to the broker",
                                               NULL};
    fault_quote(&r, "client", s->client, client_lines);
    static const char *const server_lines[] = {"debug: nothing to change for", "debug: dropped seq",
                                               NULL};
    fault_quote(&r, "server", s->server, server_lines);

    fault_wait_recovered(&r, FAULTS_APPLY_DEADLINE_MS);
    char fwd[BROKER_NAME_MAX];
    broker_queue_name(fwd, sizeof(fwd), BROKER_FORWARD, s->client_id);
    fault_check(&r, faults_wait_outbox_empty(s, FAULTS_APPLY_DEADLINE_MS),
                "the client's outbox empties");
    fault_check(&r, faults_wait_queue_empty(fwd, FAULTS_SHORT_DEADLINE_MS),
                "the server applies everything in %s", fwd);

    long writes = harness_sim_count(s->dst, "func=task.edit&write=1&outcome=ok");
    fault_check(&r, writes == BURST,
                "each task is written to the target once: %ld writes for %d tasks", writes, BURST);
    json_t *st = fault_status(&r, "server", s->server, "after the burst", server_members);
    char *text = faults_scrape(port);
    static const char *const dup[] = {"direction=\"forward\"", "outcome=\"duplicate\"", NULL};
    static const char *const unchanged[] = {"direction=\"forward\"", "outcome=\"unchanged\"", NULL};
    double dropped = text ? faults_metric(text, "remotetask_applied_total", dup) : -1;
    double same = text ? faults_metric(text, "remotetask_applied_total", unchanged) : -1;
    free(text);
    json_t *counters = faults_json_path(st, "counters");
    json_t *in_status = json_object_get(counters, "forward_duplicates");
    fault_note(&r,
               "the server dropped %.0f messages as duplicates or superseded "
               "(remotetask_applied_total{direction=\"forward\",outcome=\"duplicate\"}%s) and "
               "found %lld with fields already applied (status counters.forward_unchanged; "
               "metrics say %.0f); %ld target writes for %d tasks",
               dropped,
               in_status ? "" : "; status --json has no duplicate counter, so from /metrics",
               (long long)json_integer_value(json_object_get(counters, "forward_unchanged")), same,
               writes, BURST);
    json_decref(st);
    struct deliveries d;
    count_deliveries(s, first, &d);
    fault_note(&r,
               "the server decoded %zu task messages for the %d tasks: %zu tasks came in "
               "messages with more than one message id (published again with a new seq after a "
               "restart), %zu came again under the same id (redelivered)",
               d.lines, BURST, d.tasks_multi_id, d.tasks_same_id_again);

    fault_check_running(&r, s);
    fault_stop_both(&r, s);
    fault_report(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_client_kills, faults_teardown),
    };
    return cmocka_run_group_tests(tests, faults_group_setup, NULL);
}
