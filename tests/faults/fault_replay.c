/*
 * fault_replay.c - issue 9, case 5: duplicated, replayed and reordered
 * messages.
 *
 * Real messages are captured from the flow: for the time of the capture a
 * tap queue of the test's own is bound to remotetask.forward and one to
 * remotetask.reverse with the client's routing key, so each receives a
 * copy of every task message the client publishes and every state
 * message the server publishes. The flow: 300 tasks forwarded, 20 of them
 * changed on the source (a second task message each), 20 target tasks
 * put in work and then closed by staff (two newer state messages each).
 * Then the captured messages are published again as the right AMQP user
 * (the client's for task messages, the server's for states): the same
 * body twice, an older seq after a newer one, and a message whose ts and
 * timestamp are from yesterday.
 *
 * Required: no effect on either BILLmanager (no successful task.edit with
 * sok in either emulator's call log), nothing dead-lettered (the
 * dead-letter queues keep their depth), and a debug line on the receiving
 * daemon for each message it dropped ("dropped seq N of task T of client
 * C" on the server, "dropped state seq N of task T" on the client), quoted
 * in the report.
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
#include <time.h>

#include <cmocka.h>
#include <jansson.h>

#include "buf.h"
#include "codec.h"
#include "faults.h"
#include "harness.h"
#include "harness_sim.h"

#define CHANGED       20
#define SYNC_INTERVAL 2
#define CAPTURE_MAX   4000
#define DAY_MS        (24LL * 3600 * 1000)

static const char *const server_members[] = {"counters", "errors.dead_lettered", NULL};
static const char *const client_members[] = {"counters", "errors.dead_lettered", NULL};

/* One captured message, decoded. */
struct captured {
    struct broker_delivery *d;
    struct codec_msg m;
};

struct capture {
    struct captured *c;
    size_t n;
};

static void capture_read(struct harness_scenario *s, const char *tap, struct capture *out)
{
    struct faults_amqp *a = faults_amqp_open(s, s->server_user);
    size_t n = 0;
    struct broker_delivery **ds = faults_amqp_drain(a, tap, CAPTURE_MAX, &n);
    faults_amqp_close(a);
    out->c = calloc(n ? n : 1, sizeof(*out->c));
    assert_non_null(out->c);
    out->n = 0;
    for (size_t i = 0; i < n; i++) {
        char err[256];
        struct captured *c = &out->c[out->n];
        if (ds[i]->too_big ||
            codec_decode(ds[i]->body, ds[i]->len, &c->m, err, sizeof(err)) != RT_OK) {
            broker_delivery_free(ds[i]);
            continue;
        }
        c->d = ds[i];
        out->n++;
    }
    free(ds);
}

static void capture_release(struct capture *cap)
{
    for (size_t i = 0; i < cap->n; i++) {
        broker_delivery_free(cap->c[i].d);
        codec_msg_release(&cap->c[i].m);
    }
    free(cap->c);
    memset(cap, 0, sizeof(*cap));
}

/* The captured message of kind for task with the highest (newest = 1) or
 * lowest (newest = 0) seq, or NULL. */
static struct captured *capture_find(struct capture *cap, enum codec_kind kind, int64_t task,
                                     int newest)
{
    struct captured *best = NULL;
    for (size_t i = 0; i < cap->n; i++) {
        struct captured *c = &cap->c[i];
        if (c->m.kind != kind || c->m.task != task)
            continue;
        if (!best || (newest ? c->m.seq > best->m.seq : c->m.seq < best->m.seq))
            best = c;
    }
    return best;
}

/* A task with messages of kind under two seqs at least (want_multi), or
 * with exactly one (!want_multi), other than except; 0 when none. */
static int64_t capture_pick(struct capture *cap, enum codec_kind kind, int want_multi,
                            int64_t except)
{
    for (size_t i = 0; i < cap->n; i++) {
        struct captured *c = &cap->c[i];
        if (c->m.kind != kind || c->m.task == except)
            continue;
        struct captured *lo = capture_find(cap, kind, c->m.task, 0);
        struct captured *hi = capture_find(cap, kind, c->m.task, 1);
        if (want_multi ? lo->m.seq < hi->m.seq : lo->m.seq == hi->m.seq)
            return c->m.task;
    }
    return 0;
}

/* Publishes a captured message again; with yesterday set, with its ts and
 * the AMQP timestamp a day old (the body re-encoded). */
static void replay(struct faults_amqp *a, const char *exchange, const char *key, struct captured *c,
                   int yesterday)
{
    if (!yesterday) {
        faults_amqp_publish(a, exchange, key, c->d->message_id, c->d->timestamp, c->d->body,
                            c->d->len);
        return;
    }
    struct codec_msg m = c->m;
    struct buf body;
    char err[256];
    m.ts = (int64_t)time(NULL) * 1000 - DAY_MS;
    buf_init(&body, CODEC_MAX_BODY);
    if (codec_encode(&m, &body, err, sizeof(err)) != 0)
        fail_msg("cannot encode the message of yesterday: %s", err);
    faults_amqp_publish(a, exchange, key, c->d->message_id, (int64_t)time(NULL) - DAY_MS / 1000,
                        body.data, body.len);
    buf_release(&body);
}

struct status_wait {
    long long first;
    int count;
    int status;
};

static int source_status_done(json_t *src, void *arg)
{
    struct status_wait *w = arg;
    int n = 0;
    size_t i;
    json_t *t;
    json_array_foreach(src, i, t)
    {
        long long id = json_integer_value(json_object_get(t, "id"));
        if (id >= w->first && id < w->first + w->count &&
            json_integer_value(json_object_get(t, "status")) == w->status)
            n++;
    }
    return n == w->count;
}

/* Staff on the target set the status of the target tasks of source tasks
 * first..first+count-1; waits until the source tasks show it. */
static int target_status(struct harness_scenario *s, long long first, int count, int status)
{
    for (int i = 0; i < count; i++) {
        json_t *t = faults_target_of(s, first + i);
        if (!t)
            return 0;
        faults_sim_change(s->dst, json_integer_value(json_object_get(t, "id")),
                          json_pack("{s:i}", "status", status));
        json_decref(t);
    }
    struct status_wait w = {.first = first, .count = count, .status = status};
    int met = 0;
    json_decref(harness_wait_tasks(s->src, s->src_dept, source_status_done, &w,
                                   FAULTS_APPLY_DEADLINE_MS, &met));
    return met;
}

/* Waits until the daemon's log holds at least want lines with needle since
 * the fault began. */
static size_t wait_log(struct fault_result *r, const struct harness_daemon *d, size_t mark,
                       const char *needle, size_t want)
{
    long long deadline = harness_now_ms() + FAULTS_SHORT_DEADLINE_MS;
    size_t n;
    while ((n = harness_daemon_log_count_since(d, mark, needle)) < want &&
           harness_now_ms() < deadline)
        poll(NULL, 0, 100);
    (void)r;
    return n;
}

static void test_replay(void **state)
{
    (void)state;
    struct harness_scenario *s = faults_scenario("frp", NULL);
    struct fault_result r;
    char repl[64], tap_fwd[BROKER_NAME_MAX], tap_rev[BROKER_NAME_MAX];
    char fwd[BROKER_NAME_MAX], rev[BROKER_NAME_MAX], dead_f[BROKER_NAME_MAX],
        dead_r[BROKER_NAME_MAX];
    snprintf(repl, sizeof(repl), "sync_interval = %d;", SYNC_INTERVAL);
    harness_config_replace(s->server_conf, "sync_interval = 300;", repl);
    broker_queue_name(fwd, sizeof(fwd), BROKER_FORWARD, s->client_id);
    broker_queue_name(rev, sizeof(rev), BROKER_REVERSE, s->client_id);
    faults_dead_queue(dead_f, sizeof(dead_f), BROKER_FORWARD, s->client_id);
    faults_dead_queue(dead_r, sizeof(dead_r), BROKER_REVERSE, s->client_id);
    snprintf(tap_fwd, sizeof(tap_fwd), "faults.tap.%s.forward", s->client_id);
    snprintf(tap_rev, sizeof(tap_rev), "faults.tap.%s.reverse", s->client_id);
    fault_begin(&r, s, "replay", 5, "Duplicated, replayed and reordered messages");

    /* The capture: taps on both exchanges, then real traffic both ways. */
    faults_tap_open(s, tap_fwd, BROKER_EXCHANGE_FORWARD, s->client_id);
    faults_tap_open(s, tap_rev, BROKER_EXCHANGE_REVERSE, s->client_id);
    faults_start_both(s);
    long long first = faults_bulk_send(s, FAULTS_TASKS, "rp-");
    fault_check(&r, harness_flow_wait_all(s, FAULTS_APPLY_DEADLINE_MS, NULL),
                "the %d tasks are forwarded", FAULTS_TASKS);
    int64_t changed[CHANGED];
    for (int i = 0; i < CHANGED; i++) {
        char name[64];
        changed[i] = first + i;
        snprintf(name, sizeof(name), "rp-changed-%d", i);
        faults_sim_change(s->src, changed[i], json_pack("{s:s}", "name", name));
    }
    harness_record_event_list(s->client_state, s->client_id, changed, CHANGED);
    harness_daemon_wake(s->client, 0);
    fault_check(&r, harness_flow_wait_all(s, FAULTS_APPLY_DEADLINE_MS, NULL),
                "the %d changed tasks are forwarded again", CHANGED);
    long long closed = first + CHANGED;
    fault_check(&r, target_status(s, closed, CHANGED, 1),
                "%d target tasks put in work come back to the source", CHANGED);
    fault_check(&r, target_status(s, closed, CHANGED, 2),
                "the same %d target tasks closed come back to the source", CHANGED);
    fault_check(&r, faults_wait_outbox_empty(s, FAULTS_APPLY_DEADLINE_MS),
                "the client's outbox empties");
    fault_check(&r,
                faults_wait_queue_empty(fwd, FAULTS_SHORT_DEADLINE_MS) &&
                    faults_wait_queue_empty(rev, FAULTS_SHORT_DEADLINE_MS),
                "%s and %s are drained", fwd, rev);

    struct capture cf, cr;
    capture_read(s, tap_fwd, &cf);
    capture_read(s, tap_rev, &cr);
    faults_tap_close(s, tap_fwd);
    faults_tap_close(s, tap_rev);
    fault_note(&r, "captured %zu task messages and %zu state messages from the flow", cf.n, cr.n);
    int64_t x = capture_pick(&cf, CODEC_TASK, 1, 0), z = capture_pick(&cf, CODEC_TASK, 0, x);
    int64_t y = capture_pick(&cr, CODEC_STATE, 1, 0), w = capture_pick(&cr, CODEC_STATE, 0, y);
    fault_check(&r, x && z && y && w,
                "the capture holds a task with two task messages (%" PRId64
                "), one with one (%" PRId64 "), a task with two states (%" PRId64
                ") and one with one (%" PRId64 ")",
                x, z, y, w);
    if (!(x && z && y && w)) {
        capture_release(&cf);
        capture_release(&cr);
        fault_report(&r);
        return;
    }
    struct captured *x_new = capture_find(&cf, CODEC_TASK, x, 1);
    struct captured *x_old = capture_find(&cf, CODEC_TASK, x, 0);
    struct captured *z_one = capture_find(&cf, CODEC_TASK, z, 1);
    struct captured *y_new = capture_find(&cr, CODEC_STATE, y, 1);
    struct captured *y_old = capture_find(&cr, CODEC_STATE, y, 0);
    struct captured *w_one = capture_find(&cr, CODEC_STATE, w, 1);

    /* The baseline: call logs, dead-letter depths, the logs' marks. */
    long long src_mark = faults_sim_last_call(s->src), dst_mark = faults_sim_last_call(s->dst);
    uint32_t dead_f0 = 0, dead_r0 = 0, dead_f1 = 0, dead_r1 = 0;
    faults_queue_depth(s, s->server_user, dead_f, &dead_f0, NULL);
    faults_queue_depth(s, s->server_user, dead_r, &dead_r0, NULL);
    fault_start(&r);
    struct faults_amqp *as_client = faults_amqp_open(s, s->client_user);
    replay(as_client, BROKER_EXCHANGE_FORWARD, s->client_id, x_new, 0);
    replay(as_client, BROKER_EXCHANGE_FORWARD, s->client_id, x_new, 0);
    replay(as_client, BROKER_EXCHANGE_FORWARD, s->client_id, x_old, 0);
    replay(as_client, BROKER_EXCHANGE_FORWARD, s->client_id, z_one, 1);
    faults_amqp_close(as_client);
    struct faults_amqp *as_server = faults_amqp_open(s, s->server_user);
    replay(as_server, BROKER_EXCHANGE_REVERSE, s->client_id, y_new, 0);
    replay(as_server, BROKER_EXCHANGE_REVERSE, s->client_id, y_new, 0);
    replay(as_server, BROKER_EXCHANGE_REVERSE, s->client_id, y_old, 0);
    replay(as_server, BROKER_EXCHANGE_REVERSE, s->client_id, w_one, 1);
    faults_amqp_close(as_server);
    fault_note(&r,
               "published again as %s: task %" PRId64 " seq %" PRIu64 " twice (%s), seq %" PRIu64
               " after it, task %" PRId64 " seq %" PRIu64 " with yesterday's ts; as %s: state of "
               "task %" PRId64 " seq %" PRIu64 " twice, seq %" PRIu64 " after it, task %" PRId64
               " seq %" PRIu64 " with yesterday's ts",
               "the client's user", x, x_new->m.seq, x_new->d->message_id, x_old->m.seq, z,
               z_one->m.seq, "the server's user", y, y_new->m.seq, y_old->m.seq, w, w_one->m.seq);

    /* Each dropped message leaves one debug line on the daemon that got
     * it. */
    struct {
        const struct harness_daemon *d;
        const char *who;
        char needle[256];
        size_t want;
        const char *what;
    } drops[6];
    size_t mark_c = r.mark_client, mark_s = r.mark_server;
    const char *C = s->client_id;
    snprintf(drops[0].needle, sizeof(drops[0].needle),
             "dropped seq %" PRIu64 " of task %" PRId64 " of client \"%s\"", x_new->m.seq, x, C);
    snprintf(drops[1].needle, sizeof(drops[1].needle),
             "dropped seq %" PRIu64 " of task %" PRId64 " of client \"%s\"", x_old->m.seq, x, C);
    snprintf(drops[2].needle, sizeof(drops[2].needle),
             "dropped seq %" PRIu64 " of task %" PRId64 " of client \"%s\"", z_one->m.seq, z, C);
    snprintf(drops[3].needle, sizeof(drops[3].needle),
             "dropped state seq %" PRIu64 " of task %" PRId64 ":", y_new->m.seq, y);
    snprintf(drops[4].needle, sizeof(drops[4].needle),
             "dropped state seq %" PRIu64 " of task %" PRId64 ":", y_old->m.seq, y);
    snprintf(drops[5].needle, sizeof(drops[5].needle),
             "dropped state seq %" PRIu64 " of task %" PRId64 ":", w_one->m.seq, w);
    for (size_t i = 0; i < 6; i++) {
        drops[i].d = i < 3 ? s->server : s->client;
        drops[i].who = i < 3 ? "server" : "client";
        drops[i].want = i % 3 == 0 ? 2 : 1;
        drops[i].what = i % 3 == 0   ? "the same body twice"
                        : i % 3 == 1 ? "an older seq after a newer one"
                                     : "a message from yesterday";
    }
    for (size_t i = 0; i < 6; i++) {
        size_t n =
            wait_log(&r, drops[i].d, i < 3 ? mark_s : mark_c, drops[i].needle, drops[i].want);
        const char *needles[] = {drops[i].needle, NULL};
        fault_quote(&r, drops[i].who, drops[i].d, needles);
        fault_check(&r, n == drops[i].want,
                    "%s: the %s logged a dropped message %zu times (\"%s\"), expected %zu",
                    drops[i].what, drops[i].who, n, drops[i].needle, drops[i].want);
    }
    fault_check(&r,
                faults_wait_queue_empty(fwd, FAULTS_SHORT_DEADLINE_MS) &&
                    faults_wait_queue_empty(rev, FAULTS_SHORT_DEADLINE_MS),
                "every replayed message was taken off %s and %s", fwd, rev);
    fault_end(&r);
    json_decref(fault_status(&r, "server", s->server, "after the replays", server_members));
    json_decref(fault_status(&r, "client", s->client, "after the replays", client_members));

    long w_src = faults_sim_writes(s->src, src_mark, -1);
    long w_dst = faults_sim_writes(s->dst, dst_mark, -1);
    fault_check(&r, w_src == 0 && w_dst == 0,
                "the replays wrote nothing: %ld writes on the source, %ld on the target", w_src,
                w_dst);
    faults_queue_depth(s, s->server_user, dead_f, &dead_f1, NULL);
    faults_queue_depth(s, s->server_user, dead_r, &dead_r1, NULL);
    fault_check(&r, dead_f1 == dead_f0 && dead_r1 == dead_r0,
                "nothing was dead-lettered: %s %u -> %u, %s %u -> %u", dead_f, dead_f0, dead_f1,
                dead_r, dead_r0, dead_r1);
    capture_release(&cf);
    capture_release(&cr);

    fault_wait_recovered(&r, FAULTS_SHORT_DEADLINE_MS);
    fault_check_running(&r, s);
    fault_stop_both(&r, s);
    fault_report(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_replay, faults_teardown),
    };
    return cmocka_run_group_tests(tests, faults_group_setup, NULL);
}
