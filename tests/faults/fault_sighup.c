/*
 * fault_sighup.c - issue 9, case 8: an invalid configuration on SIGHUP,
 * then a valid change, while tasks flow.
 *
 * The target answers in 50-100 ms with 4 calls in flight. Three invalid
 * files are loaded with SIGHUP, one after the other, each put right
 * afterwards, each right after a batch of 100 tasks was sent (so that the
 * batch flows across the SIGHUP):
 *   - the client's file with a syntax error;
 *   - the server's file with the required `department` of its client
 *     entry removed;
 *   - the server's AMQP password file made 0644.
 * Required each time: the daemon logs the error with the file and the
 * line, keeps running on the old configuration (same pid, still
 * connected) and the tasks keep flowing (the batch is applied).
 *
 * Then a valid change to the server while another batch of 100 is in
 * flight: sync_interval 300 -> 2, billmanager.max_inflight 4 -> 1, and a
 * new client added. Required: nothing in flight is lost or duplicated,
 * and the new values take effect: the new client's queue is consumed,
 * state cycles come every 2 s (status counters.reverse_cycles), and the
 * target never sees two calls of the server at once (with every call
 * delayed by 150 ms, consecutive calls in its call log are 150 ms apart at
 * least; before the change, with 4 in flight, they were not).
 */
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "faults.h"
#include "harness.h"
#include "harness_rabbit.h"
#include "harness_sim.h"

/* Three batches of 100: the 300 tasks of the case, one per invalid file. */
#define BAD_BATCH    100
#define THIRD_BATCH  100
#define NEW_SYNC     2
#define CHECK_TASKS  10
#define SLOW_MS      150
#define NOT_RELOADED "configuration not reloaded"
#define RELOADED     "configuration reloaded from"

static const char *const members[] = {"pid", "uptime_s", "broker.state", "counters", NULL};

/* Sends SIGHUP and waits until the daemon's log holds one more line with
 * needle than before; returns that line (malloc'ed) or NULL. */
static char *hup_and_wait(struct harness_daemon *d, const char *needle)
{
    size_t mark = harness_daemon_log_mark(d);
    if (kill(harness_daemon_pid(d), SIGHUP) != 0)
        fail_msg("cannot send SIGHUP to pid %d", harness_daemon_pid(d));
    long long deadline = harness_now_ms() + FAULTS_SHORT_DEADLINE_MS;
    while (harness_now_ms() < deadline) {
        char *text = harness_daemon_log_since(d, mark, 0);
        char *at = strstr(text, needle);
        if (at) {
            while (at > text && at[-1] != '\n')
                at--;
            at[strcspn(at, "\n")] = '\0';
            char *line = strdup(at);
            free(text);
            if (!line)
                fail_msg("out of memory");
            return line;
        }
        free(text);
        poll(NULL, 0, 50);
    }
    return NULL;
}

/* 1 when line names file as "FILE:LINE:". */
static int names_file_line(const char *line, const char *file)
{
    const char *at = line ? strstr(line, file) : NULL;
    if (!at)
        return 0;
    at += strlen(file);
    if (*at++ != ':' || *at < '0' || *at > '9')
        return 0;
    while (*at >= '0' && *at <= '9')
        at++;
    return *at == ':';
}

/* An invalid file: SIGHUP, the error with file and line; what status
 * says meanwhile (remotetaskctl reads the same file to find the daemon). */
static void bad_reload(struct fault_result *r, struct harness_scenario *s, struct harness_daemon *d,
                       const char *who, const char *file, const char *what, const char *must_say,
                       size_t applied_before)
{
    size_t pending = applied_before + BAD_BATCH - harness_flow_target_count(s);
    fault_check(r, pending > 0,
                "%s: the SIGHUP comes with %zu of the %d tasks sent just before "
                "still to be applied",
                what, pending, BAD_BATCH);
    char *line = hup_and_wait(d, NOT_RELOADED);
    const char *needles[] = {must_say, NULL};
    fault_quote(r, who, d, needles);
    fault_check(r, line != NULL, "%s: the %s logs \"%s\"", what, who, NOT_RELOADED);
    fault_check(r, names_file_line(line, file), "%s: the error names %s and the line: %s", what,
                file, line ? line : "(none)");
    fault_check(r, line && strstr(line, must_say), "%s: the error says \"%s\"", what, must_say);
    free(line);
    char when[128];
    snprintf(when, sizeof(when), "with %s in its file", what);
    json_decref(fault_status(r, who, d, when, members));
}

/* After the file was put right: the daemon runs on its old configuration,
 * and the tasks flowed meanwhile. */
static void bad_reload_after(struct fault_result *r, struct harness_scenario *s,
                             struct harness_daemon *d, const char *who, const char *what, int pid,
                             long long first)
{
    char when[128];
    snprintf(when, sizeof(when), "after %s was put right", what);
    json_t *st = fault_status(r, who, d, when, members);
    const char *broker = json_string_value(faults_json_path(st, "broker.state"));
    fault_check(r,
                harness_daemon_running(d) && harness_daemon_pid(d) == pid &&
                    json_integer_value(json_object_get(st, "pid")) == pid,
                "%s: the %s kept running (pid %d)", what, who, pid);
    fault_check(r, broker && strcmp(broker, "connected") == 0,
                "%s: the %s stayed connected to the broker (%s)", what, who,
                broker ? broker : "no status");
    json_decref(st);
    fault_check(r, faults_wait_sources(s, first, BAD_BATCH, FAULTS_APPLY_DEADLINE_MS),
                "%s: tasks keep flowing on the old configuration: the %d sent across the SIGHUP "
                "are applied",
                what, BAD_BATCH);
}

/* The smallest gap between consecutive calls of the call log after entry
 * since, in ms, and how many gaps are below below_ms. */
static double call_gaps(struct harness_sim *sim, long long since, long long upto, double below_ms,
                        size_t *n_below, size_t *n_calls)
{
    char path[64];
    snprintf(path, sizeof(path), "/calls?since=%lld", since);
    json_t *r = harness_sim_admin_ok(sim, "GET", path, NULL);
    json_t *calls = json_object_get(r, "calls");
    double prev = -1, min = 1e9;
    size_t i;
    json_t *c;
    *n_below = *n_calls = 0;
    json_array_foreach(calls, i, c)
    {
        if (upto && json_integer_value(json_object_get(c, "n")) > upto)
            break;
        double ts = json_real_value(json_object_get(c, "ts")) * 1000.0;
        (*n_calls)++;
        if (prev >= 0) {
            if (ts - prev < min)
                min = ts - prev;
            if (ts - prev < below_ms)
                (*n_below)++;
        }
        prev = ts;
    }
    json_decref(r);
    return min;
}

static void test_sighup(void **state)
{
    (void)state;
    struct harness_scenario_opts o = {.max_inflight = 4, .other_client = 1};
    struct harness_scenario *s = faults_scenario("fhup", &o);
    struct fault_result r;
    char other_entry[512], other_queue[BROKER_NAME_MAX], pw[1024];
    fault_begin(&r, s, "sighup-config", 8, "Invalid configuration on SIGHUP, then a valid change");

    /* The server starts without the extra client: it is the one added by
     * the valid change. */
    snprintf(other_entry, sizeof(other_entry),
             ",\n    { id = \"%s\"; amqp_user = \"%s\"; department = %d; }", s->other_id,
             s->other_user, HARNESS_SIM_DEPT_A);
    harness_config_replace(s->server_conf, other_entry, "");
    broker_queue_name(other_queue, sizeof(other_queue), BROKER_FORWARD, s->other_id);
    snprintf(pw, sizeof(pw), "%s/server-amqp.password", s->dir);

    json_decref(harness_sim_admin_ok(s->dst, "POST", "/faults", "{\"latency_ms\":[50,100]}"));
    faults_start_both(s);
    long long calls0 = faults_sim_last_call(s->dst);

    /* The invalid files, each with a batch flowing across its SIGHUP. */
    fault_start(&r);
    int cpid = harness_daemon_pid(s->client), spid = harness_daemon_pid(s->server);
    size_t before = harness_flow_target_count(s);
    long long first = faults_bulk_send(s, BAD_BATCH, "hup1-");
    harness_config_append(s->client_conf, "this line is not libconfig\n");
    bad_reload(&r, s, s->client, "client", s->client_conf, "a syntax error", "syntax error",
               before);
    harness_config_replace(s->client_conf, "this line is not libconfig\n", "");
    bad_reload_after(&r, s, s->client, "client", "a syntax error", cpid, first);

    char with_dept[64], user_end[160], user_dept[224];
    snprintf(with_dept, sizeof(with_dept), "department = %ld; }", s->dst_dept);
    snprintf(user_end, sizeof(user_end), "amqp_user = \"%s\"; }", s->client_user);
    snprintf(user_dept, sizeof(user_dept), "amqp_user = \"%s\"; %s", s->client_user, with_dept);
    before = harness_flow_target_count(s);
    first = faults_bulk_send(s, BAD_BATCH, "hup2-");
    harness_config_replace(s->server_conf, user_dept, user_end);
    bad_reload(&r, s, s->server, "server", s->server_conf, "a client without its department",
               "department: required setting is missing", before);
    harness_config_replace(s->server_conf, user_end, user_dept);
    bad_reload_after(&r, s, s->server, "server", "a client without its department", spid, first);

    before = harness_flow_target_count(s);
    first = faults_bulk_send(s, BAD_BATCH, "hup3-");
    if (chmod(pw, 0644) != 0)
        fail_msg("cannot chmod %s", pw);
    bad_reload(&r, s, s->server, "server", s->server_conf, "a password file made 0644",
               "readable by group or others", before);
    if (chmod(pw, 0600) != 0)
        fail_msg("cannot chmod %s", pw);
    bad_reload_after(&r, s, s->server, "server", "a password file made 0644", spid, first);
    fault_check(&r, harness_flow_wait_all(s, FAULTS_APPLY_DEADLINE_MS, NULL),
                "all %d tasks sent so far are applied", 3 * BAD_BATCH);
    size_t below = 0, n_calls = 0;
    long long calls1 = faults_sim_last_call(s->dst);
    double min_before = call_gaps(s->dst, calls0, calls1, 40, &below, &n_calls);
    fault_note(
        &r,
        "with max_inflight 4 the target's %zu calls of the first three batches came as close "
        "as %.1f ms, %zu pairs under 40 ms apart",
        n_calls, min_before, below);

    /* The valid change, with a batch in flight. */
    json_t *st = fault_status(&r, "server", s->server, "before the valid change", members);
    long long cycles0 = json_integer_value(faults_json_path(st, "counters.reverse_cycles"));
    json_decref(st);
    faults_bulk_send(s, THIRD_BATCH, "hup4-");
    harness_flow_wait_target_count(s, 3 * BAD_BATCH + 10, FAULTS_APPLY_DEADLINE_MS);
    harness_config_replace(s->server_conf, "sync_interval = 300;", "sync_interval = 2;");
    harness_config_replace(s->server_conf, "max_inflight = 4;", "max_inflight = 1;");
    char added[640];
    snprintf(added, sizeof(added), "%s%s", with_dept, other_entry);
    harness_config_replace(s->server_conf, with_dept, added);
    size_t in_flight = 3 * BAD_BATCH + THIRD_BATCH - harness_flow_target_count(s);
    char *line = hup_and_wait(s->server, RELOADED);
    fault_end(&r);
    const char *needles[] = {"reloading the configuration", RELOADED, NULL};
    fault_quote(&r, "server", s->server, needles);
    fault_check(&r, line != NULL, "the valid change is loaded: \"%s\"", line ? line : "(none)");
    free(line);
    fault_check(
        &r, in_flight > 0,
        "the valid change came with %zu tasks of the batch sent before it still to be applied",
        in_flight);
    fault_wait_recovered(&r, FAULTS_APPLY_DEADLINE_MS);

    /* The new values. A new client: its queue is consumed. */
    uint32_t ready = 0, consumers = 0;
    long long deadline = harness_now_ms() + FAULTS_SHORT_DEADLINE_MS;
    int consumed = 0;
    while (!consumed && harness_now_ms() < deadline) {
        consumed = faults_queue_depth(s, s->server_user, other_queue, &ready, &consumers) &&
                   consumers == 1;
        if (!consumed)
            poll(NULL, 0, 200);
    }
    fault_check(&r, consumed, "the client added by the change is served: %s has %u consumer",
                other_queue, consumers);
    /* sync_interval 2: cycles come every 2 s (with 300, one in 5 minutes). */
    long long cycles = cycles0;
    deadline = harness_now_ms() + FAULTS_SHORT_DEADLINE_MS;
    while (cycles < cycles0 + 4 && harness_now_ms() < deadline) {
        poll(NULL, 0, 500);
        st = fault_status(&r, "server", s->server, "after the valid change", members);
        cycles = json_integer_value(faults_json_path(st, "counters.reverse_cycles"));
        json_decref(st);
    }
    fault_check(&r, cycles >= cycles0 + 4,
                "sync_interval 2 takes effect: status counters.reverse_cycles went from %lld to "
                "%lld",
                cycles0, cycles);
    /* max_inflight 1: no two calls of the server at once. */
    json_decref(harness_sim_admin_ok(s->dst, "POST", "/faults", "{\"latency_ms\":150}"));
    long long calls2 = faults_sim_last_call(s->dst);
    long long fourth = faults_bulk_send(s, CHECK_TASKS, "hup5-");
    fault_check(&r, faults_wait_sources(s, fourth, CHECK_TASKS, FAULTS_APPLY_DEADLINE_MS),
                "the %d tasks sent with max_inflight 1 are applied", CHECK_TASKS);
    double min_after = call_gaps(s->dst, calls2, 0, SLOW_MS * 0.95, &below, &n_calls);
    fault_check(&r, n_calls >= CHECK_TASKS && below == 0,
                "max_inflight 1 takes effect: %zu calls at %d ms each, never two at once "
                "(closest %.1f ms apart)",
                n_calls, SLOW_MS, min_after);
    json_decref(harness_sim_admin_ok(s->dst, "POST", "/faults/reset", NULL));

    fault_check(&r, harness_flow_wait_all(s, FAULTS_APPLY_DEADLINE_MS, NULL),
                "every task sent is on the target with its fields");
    fault_count(&r);
    fault_check_running(&r, s);
    fault_stop_both(&r, s);
    fault_report(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_sighup, faults_teardown),
    };
    return cmocka_run_group_tests(tests, faults_group_setup, NULL);
}
