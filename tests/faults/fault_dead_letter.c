/*
 * fault_dead_letter.c - issue 9, case 10: a task message dead-lettered by
 * the server (the target API refused it for good), and what comes after.
 *
 * 300 tasks are forwarded; then one of them is renamed on the source to a
 * name of blanks, which the target's API refuses (a value error on
 * `name`): the server dead-letters that task message. Required
 * afterwards:
 *   - states of that task flow back at once: put in work on the target,
 *     it is in work on the source, though the last message the client
 *     sent for it never arrived;
 *   - a later change of that task on the source (a real name, a line
 *     added to the note) is forwarded and applied;
 *   - states flow back again: the task closed on the target is closed on
 *     the source;
 *   - `remotetaskctl --command dlq replay --id X` of the old letter is
 *     dropped by the server as stale (its seq is older than the one
 *     applied) instead of overwriting the newer fields: the target keeps
 *     the real name and the closed status, no write reaches it, and the
 *     server logs the drop.
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

#define SYNC_INTERVAL 2
#define FIXED_NAME    "dl-fixed & = + % after the dead letter"
#define ADDED_NOTE    "added after the dead letter"
/* A state comes back within a sync_interval or two; the margin is for a
 * loaded machine. */
#define STATE_DEADLINE_MS 15000

static const char *const server_members[] = {"errors.dead_lettered", "counters", NULL};
static const char *const client_members[] = {"outbox", "counters.reverse_updated", NULL};

/* The dead letters `dlq list --json` shows on the server for task: how
 * many, the (id, reason) of the first, and whether one has the id want
 * (NULL: not looked for). */
static int dead_letters(struct harness_scenario *s, long long task, char *id, size_t id_len,
                        char *reason, size_t reason_len, const char *want, int *found)
{
    const char *args[] = {"--command", "dlq", "list", "--json", NULL};
    char *out = NULL;
    int n = 0;
    if (found)
        *found = 0;
    if (faults_ctl(s->server_conf, args, &out) == 0) {
        json_error_t e;
        const char *p = strchr(out, '[');
        json_t *list = p ? json_loads(p, 0, &e) : NULL;
        size_t i;
        json_t *l;
        json_array_foreach(list, i, l)
        {
            if (json_integer_value(json_object_get(l, "task")) != task)
                continue;
            const char *lid = json_string_value(json_object_get(l, "id"));
            if (want && found && lid && strcmp(lid, want) == 0)
                *found = 1;
            if (!n++) {
                snprintf(id, id_len, "%s", lid ? lid : "");
                snprintf(reason, reason_len, "%s", json_string_value(json_object_get(l, "reason")));
            }
        }
        json_decref(list);
    }
    free(out);
    return n;
}

struct task_wait {
    long long id;
    const char *name; /* NULL: any */
    int status;       /* -1: any */
    const char *note; /* NULL: any */
};

static int task_done(json_t *tasks, void *arg)
{
    struct task_wait *w = arg;
    size_t i;
    json_t *t;
    json_array_foreach(tasks, i, t)
    {
        if (json_integer_value(json_object_get(t, "id")) != w->id)
            continue;
        const char *name = json_string_value(json_object_get(t, "name"));
        const char *note = json_string_value(json_object_get(t, "note"));
        return (!w->name || (name && strcmp(name, w->name) == 0)) &&
               (w->status < 0 || json_integer_value(json_object_get(t, "status")) == w->status) &&
               (!w->note || (note && strstr(note, w->note)));
    }
    return 0;
}

static int wait_task(struct harness_sim *sim, long dept, struct task_wait *w, long long timeout_ms)
{
    int met = 0;
    json_decref(harness_wait_tasks(sim, dept, task_done, w, timeout_ms, &met));
    return met;
}

static void test_dead_letter(void **state)
{
    (void)state;
    struct harness_scenario *s = faults_scenario("fdl", NULL);
    struct fault_result r;
    char repl[64], id[256] = "", reason[512] = "";
    snprintf(repl, sizeof(repl), "sync_interval = %d;", SYNC_INTERVAL);
    harness_config_replace(s->server_conf, "sync_interval = 300;", repl);
    fault_begin(&r, s, "dead-letter", 10, "A dead-lettered task message, then newer changes");
    faults_start_both(s);
    long long first = faults_bulk_send(s, FAULTS_TASKS, "dl-");
    fault_check(&r, harness_flow_wait_all(s, FAULTS_APPLY_DEADLINE_MS, NULL),
                "the %d tasks are forwarded", FAULTS_TASKS);
    long long x = first + 7;
    json_t *t = faults_target_of(s, x);
    long long target = t ? json_integer_value(json_object_get(t, "id")) : 0;
    json_decref(t);
    fault_check(&r, target > 0, "source task %lld has its target task %lld", x, target);

    /* The fault: a name of blanks, which the target refuses for good. */
    fault_start(&r);
    faults_sim_change(s->src, x, json_pack("{s:s}", "name", "   "));
    harness_record_event_list(s->client_state, s->client_id, (int64_t[]){x}, 1);
    harness_daemon_wake(s->client, 0);
    long long deadline = harness_now_ms() + FAULTS_SHORT_DEADLINE_MS;
    int letters = 0;
    while (!(letters = dead_letters(s, x, id, sizeof(id), reason, sizeof(reason), NULL, NULL)) &&
           harness_now_ms() < deadline)
        poll(NULL, 0, 300);
    fault_check(&r, letters == 1,
                "the server dead-letters the task message: %d letter(s) for "
                "task %lld, %s: \"%s\"",
                letters, x, id, reason);
    const char *seq_at = strrchr(id, ':');
    unsigned long long dead_seq = seq_at ? strtoull(seq_at + 1, NULL, 10) : 0;
    static const char *const server_lines[] = {"goes to", NULL};
    fault_quote(&r, "server", s->server, server_lines);
    json_decref(fault_status(&r, "server", s->server, "with the letter dead", server_members));
    json_decref(fault_status(&r, "client", s->client, "with the letter dead", client_members));

    /* States of the task flow back at once: staff put the target task in
     * work, and the source follows, though the message the client sent
     * last never arrived. */
    faults_sim_change(s->dst, target, json_pack("{s:i}", "status", 1));
    struct task_wait in_work = {.id = x, .name = NULL, .status = 1, .note = NULL};
    fault_check(&r, wait_task(s->src, s->src_dept, &in_work, STATE_DEADLINE_MS),
                "the task put in work on the target after the dead letter is in work on the "
                "source");

    /* A later change of the task is forwarded and applied. */
    json_t *src = faults_sim_task(s->src, x);
    char *note = NULL;
    if (asprintf(&note, "%s\n%s", json_string_value(json_object_get(src, "note")), ADDED_NOTE) < 0)
        fail_msg("out of memory");
    json_decref(src);
    faults_sim_change(s->src, x, json_pack("{s:s,s:s}", "name", FIXED_NAME, "note", note));
    free(note);
    harness_record_event_list(s->client_state, s->client_id, (int64_t[]){x}, 1);
    harness_daemon_wake(s->client, 0);
    struct task_wait fixed = {.id = target, .name = FIXED_NAME, .status = -1, .note = ADDED_NOTE};
    fault_check(&r, wait_task(s->dst, s->dst_dept, &fixed, FAULTS_SHORT_DEADLINE_MS),
                "a later change of the task (a real name, a line of note) is applied on the "
                "target");

    /* States flow again: closed on the target, closed on the source. */
    faults_sim_change(s->dst, target, json_pack("{s:i}", "status", 2));
    struct task_wait closed = {.id = x, .name = NULL, .status = 2, .note = NULL};
    fault_check(&r, wait_task(s->src, s->src_dept, &closed, FAULTS_SHORT_DEADLINE_MS),
                "the task closed on the target is closed on the source (states flow again)");
    static const char *const client_lines[] = {"updated from the remote side", "was read before",
                                               NULL};
    fault_quote(&r, "client", s->client, client_lines);

    /* The old letter replayed: dropped as stale, nothing overwritten. */
    char fwd[BROKER_NAME_MAX];
    broker_queue_name(fwd, sizeof(fwd), BROKER_FORWARD, s->client_id);
    fault_check(&r, faults_wait_queue_empty(fwd, FAULTS_SHORT_DEADLINE_MS), "%s is drained", fwd);
    long long mark = faults_sim_last_call(s->dst);
    size_t log_mark = harness_daemon_log_mark(s->server);
    const char *replay[] = {"--command", "dlq", "replay", "--id", id, NULL};
    char *out = NULL;
    int rc = faults_ctl(s->server_conf, replay, &out);
    fault_check(&r, rc == 0, "dlq replay --id %s exits 0: %s", id, out);
    free(out);
    char dropped[256];
    snprintf(dropped, sizeof(dropped), "dropped seq %llu of task %lld of client \"%s\"", dead_seq,
             x, s->client_id);
    deadline = harness_now_ms() + FAULTS_SHORT_DEADLINE_MS;
    while (!harness_daemon_log_count_since(s->server, log_mark, dropped) &&
           harness_now_ms() < deadline)
        poll(NULL, 0, 100);
    fault_expect_log(&r, "server", s->server, dropped, "that it dropped the replayed letter");
    fault_check(&r, faults_wait_queue_empty(fwd, FAULTS_SHORT_DEADLINE_MS),
                "the replayed letter was taken off %s", fwd);
    fault_end(&r);
    long writes = faults_sim_writes(s->dst, mark, -1);
    fault_check(&r, writes == 0, "the replay wrote nothing to the target (%ld writes)", writes);
    struct task_wait kept = {.id = target, .name = FIXED_NAME, .status = 2, .note = ADDED_NOTE};
    fault_check(&r, wait_task(s->dst, s->dst_dept, &kept, 0),
                "the target task keeps the newer name, note and closed status");
    /* Only the replayed letter must be gone: while the source's name was
     * still blank, a newer message of the task (the status the source
     * took from the target) may have been refused and dead-lettered too,
     * rightly. */
    char replayed[256], other[256];
    int still = 0;
    snprintf(replayed, sizeof(replayed), "%s", id);
    letters = dead_letters(s, x, other, sizeof(other), reason, sizeof(reason), replayed, &still);
    fault_check(&r, !still, "the replayed letter %s is no longer a dead letter", replayed);
    fault_note(&r, "%d dead letter(s) of task %lld left after the replay%s%s%s%s", letters, x,
               letters ? " (first: " : "", letters ? other : "", letters ? ", " : "",
               letters ? reason : "");
    if (letters)
        fault_note(&r, "a newer message of the task sent while its name was still blank was "
                       "refused too; the operator purges it, or replays it to have it dropped");

    fault_wait_recovered(&r, FAULTS_APPLY_DEADLINE_MS);
    fault_check_running(&r, s);
    fault_stop_both(&r, s);
    fault_report(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_dead_letter, faults_teardown),
    };
    return cmocka_run_group_tests(tests, faults_group_setup, NULL);
}
