/*
 * fault_retry_lost.c - a retry copy the broker confirmed and then lost.
 *
 * Seen on RabbitMQ 3.10.8 (tests/integration/it_cluster.c: a node of a
 * three-node cluster SIGKILLed): the broker confirmed the retry copy of a
 * delivery whose create the target's API had answered 503, the applier
 * acked the delivery on that confirm, and the copy never came back from
 * its delay queue: the task was lost. The appliers watch each confirmed
 * retry copy for that (consumer/applier*.c, common/store*): a copy that
 * has not come back 60 s after it was due (its confirm, its tier's delay,
 * 60 s of grace, looked at every 5 s) is published again straight to the
 * client's queue, with a warning line ("the retry copy of task T of client
 * "C" (attempt N) has not come back from "<delay queue>" S s after it was
 * due: sent again to "<queue>"") and errors.resent.<dir> in status.
 *
 * Here the broker loses the copies on purpose, on the suite's single node:
 * while the target's API answers 503 to a share of the task.edit calls
 * (the creates of 300 new tasks), a thief in the test takes every copy out
 * of remotetask.retry.<client>.forward.1s with basic.get before its 1 s TTL
 * sends it back, and acks it. The window ends when the thief has taken
 * STEAL_ENOUGH copies or each task is either on the target or stolen;
 * then the API is healthy and the thief gone.
 * Required:
 *   - the thief took copies, each a first retry (else nothing was tested);
 *   - every task reaches the target once (lost 0, duplicated 0), which
 *     only the watch can bring about for the stolen ones;
 *   - the server says so: at least one "has not come back from" line
 *     naming the delay queue and the client's queue per stolen copy, and
 *     errors.resent.forward of status at least the copies stolen.
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
#include "harness_sim.h"

/* A share of the creates answered 503 while the thief works, until it
 * has taken STEAL_ENOUGH copies: too many for a pass by luck, few enough
 * that the window lasts a few seconds and every copy is due within a look
 * or two of the watch. */
#define REFUSE_SETTINGS "{\"funcs\":[\"task.edit\"],\"error_rate\":0.2,\"error_status\":503}"
#define STEAL_ENOUGH    32
/* The thief takes at most this many copies per sweep of the delay queue,
 * and pauses between sweeps: far below the 1 s TTL, so that no copy
 * expires before it is taken. */
#define THIEF_BATCH    64
#define THIEF_PAUSE_MS 20
/* How often the window looks at the target's tasks (an HTTP call). */
#define LOOK_EVERY_MS 500
/* The window ends at the latest after this, should a copy the thief
 * missed wait in a longer tier. */
#define WINDOW_MAX_MS 30000
/* A stolen copy is sent again 60 s after it was due (1 s after its
 * confirm), at the next look of the watch (every 5 s): about 66 s after
 * the last theft, plus applying it; the rest is margin for a loaded
 * machine. */
#define RECOVER_DEADLINE_MS FAULTS_APPLY_DEADLINE_MS

static const char *const server_members[] = {"errors.resent", "errors.api", "counters", NULL};

/* The test's thief on the first delay queue of the client's forward
 * direction. */
struct thief {
    struct faults_amqp *a;
    char queue[BROKER_NAME_MAX]; /* remotetask.retry.<client>.forward.1s */
    char key[BROKER_NAME_MAX];   /* forward.1s: the key of a first retry */
    size_t stolen;               /* copies taken and acked */
    size_t odd;                  /* of them, not a first retry of the forward direction */
    char first_mid[256];         /* the message id of the first copy taken */
};

/* The x-rt-attempts header of a delivery, or -1 when it has none. */
static int64_t attempts_of(const struct broker_delivery *d)
{
    for (size_t i = 0; i < d->n_headers; i++)
        if (strcmp(d->headers[i].key, "x-rt-attempts") == 0 &&
            d->headers[i].type == BROKER_HEADER_INT)
            return d->headers[i].num;
    return -1;
}

/* The clean-up of a case that failed while the thief was connected. */
static void thief_close(void *arg)
{
    struct thief *t = arg;
    faults_amqp_close(t->a);
    t->a = NULL;
}

/* Takes (and acks) what the delay queue holds now. */
static void thief_steal(struct thief *t)
{
    size_t n = 0;
    struct broker_delivery **got = faults_amqp_drain(t->a, t->queue, THIEF_BATCH, &n);
    for (size_t i = 0; i < n; i++) {
        const struct broker_delivery *d = got[i];
        if (!t->stolen && !t->first_mid[0])
            snprintf(t->first_mid, sizeof(t->first_mid), "%s", d->message_id);
        if (strcmp(d->routing_key, t->key) != 0 || attempts_of(d) != 1)
            t->odd++;
        broker_delivery_free(got[i]);
    }
    free(got);
    t->stolen += n;
}

static void test_retry_lost(void **state)
{
    (void)state;
    struct harness_scenario *s = faults_scenario("frl", NULL);
    struct fault_result r;
    /* Static: faults_teardown closes its connection when the case fails
     * past this frame. */
    static struct thief t;
    char fwd[BROKER_NAME_MAX], needle[2 * BROKER_NAME_MAX];
    memset(&t, 0, sizeof(t));
    fault_begin(&r, s, "retry-lost", 13, "A retry copy the broker confirmed and then lost");
    if (broker_retry_queue_name(t.queue, sizeof(t.queue), BROKER_FORWARD, s->client_id,
                                broker_retry_tier(1)) != 0 ||
        broker_retry_key(t.key, sizeof(t.key), BROKER_FORWARD, 1) != 0 ||
        broker_queue_name(fwd, sizeof(fwd), BROKER_FORWARD, s->client_id) != 0)
        fail_msg("client id \"%s\" cannot name its queues", s->client_id);
    faults_start_both(s);
    /* The thief connects as the server's user, who may read every queue
     * of the node; the daemons have declared the delay queue by now. */
    t.a = faults_amqp_open(s, s->server_user);
    faults_on_teardown(thief_close, &t);

    fault_start(&r);
    json_decref(harness_sim_admin_ok(s->dst, "POST", "/faults", REFUSE_SETTINGS));
    faults_bulk_send(s, FAULTS_TASKS, "rl-");
    /* A stolen task cannot arrive before the watch sends it again (60 s
     * on), so during the window applied + stolen counts each task once:
     * when it reaches the tasks sent, every first create was answered and
     * every copy of a refused one taken. */
    long long deadline = harness_now_ms() + WINDOW_MAX_MS, look_at = 0;
    size_t applied = 0;
    while (applied + t.stolen < FAULTS_TASKS && t.stolen < STEAL_ENOUGH &&
           harness_now_ms() < deadline) {
        thief_steal(&t);
        if (harness_now_ms() >= look_at) {
            applied = harness_flow_target_count(s);
            look_at = harness_now_ms() + LOOK_EVERY_MS;
        }
        poll(NULL, 0, THIEF_PAUSE_MS);
    }
    json_decref(harness_sim_admin_ok(s->dst, "POST", "/faults/reset", NULL));
    /* A copy of a create refused just before the reset may still be on its
     * way; one the last sweep misses comes back by its TTL, as it should. */
    thief_steal(&t);
    thief_close(&t);
    fault_end(&r);

    long refused = harness_sim_count(s->dst, "func=task.edit&outcome=http503");
    fault_check(&r, refused > 0, "the target's API answered 503 to %ld task.edit calls", refused);
    fault_check(&r, t.stolen > 0,
                "the thief took %zu confirmed retry copies out of %s before their TTL ended "
                "(first: %s)",
                t.stolen, t.queue, t.first_mid[0] ? t.first_mid : "none");
    fault_check(&r, t.odd == 0,
                "every copy taken was a first retry (key %s, x-rt-attempts 1): %zu were not", t.key,
                t.odd);
    fault_note(&r, "at the end of the window %zu tasks were on the target and %zu stolen, of %d",
               applied, t.stolen, FAULTS_TASKS);

    fault_wait_recovered(&r, RECOVER_DEADLINE_MS);

    /* The scenario's daemons log at debug level, where the watch names
     * every copy it sends again (past the first few of a look at debug
     * level, the rest counted in one warning line). */
    snprintf(needle, sizeof(needle), "has not come back from \"%s\"", t.queue);
    size_t resent_logged = harness_daemon_log_count_since(s->server, r.mark_server, needle);
    snprintf(needle, sizeof(needle), "sent again to \"%s\"", fwd);
    size_t sent_to_queue = harness_daemon_log_count_since(s->server, r.mark_server, needle);
    static const char *const server_lines[] = {
        "has not come back from",
        "forward retry copies that had not come back:", "apply failed for task", NULL};
    fault_quote(&r, "server", s->server, server_lines);
    json_t *st = fault_status(&r, "server", s->server, "after the recovery", server_members);
    json_t *v = faults_json_path(st, "errors.resent.forward");
    long long resent = json_is_integer(v) ? (long long)json_integer_value(v) : -1;
    json_decref(st);
    fault_note(&r, "stolen=%zu sent_again_lines=%zu errors.resent.forward=%lld", t.stolen,
               resent_logged, resent);
    fault_check(&r, resent_logged >= t.stolen,
                "the server logged %zu copies that had not come back from %s, for %zu stolen",
                resent_logged, t.queue, t.stolen);
    fault_check(&r, sent_to_queue == resent_logged,
                "each of those lines says the copy was sent again to %s (%zu of %zu)", fwd,
                sent_to_queue, resent_logged);
    fault_check(&r, resent >= (long long)t.stolen,
                "status counts %lld copies sent again (errors.resent.forward), for %zu stolen",
                resent, t.stolen);

    fault_check_running(&r, s);
    fault_stop_both(&r, s);
    fault_report(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_retry_lost, faults_teardown),
    };
    return cmocka_run_group_tests(tests, faults_group_setup, NULL);
}
