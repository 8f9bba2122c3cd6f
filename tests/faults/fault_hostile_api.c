/*
 * fault_hostile_api.c - issue 9, case 6: hostile or broken BILLmanager
 * answers, on the target's API (the server daemon) and on the source's
 * (the client daemon), while tasks flow.
 *
 * The emulator's bad answers (tests/sim/README.md, "Bad answers"), each
 * in a window of its own, first on the target's API, then on the
 * source's, while a batch of new tasks and a few changes to tasks already
 * on the target travel: half a JSON document; JSON of the wrong shape in
 * the five variants the API client refuses; repeated elements where text
 * belongs (fields_arrays: an API document still, which only the caller
 * can refuse), on every call for ARRAYS_S seconds; a 200 answer holding
 * BILLmanager's HTML login page; 100 MB announced by its Content-Length;
 * 100 MB chunked, on a few calls and then on every call for HUGE_ALL_S
 * seconds (as many at once as billmanager.max_inflight lets through); a
 * body that trickles one byte a second; a connection reset halfway
 * through the body. A window of a few calls uses bad_next (exactly those
 * calls spoiled, the others answered well); every window ends with the
 * bad answers switched off.
 *
 * Required:
 * - every spoiled call ends as RETRY or REJECT with a message that names
 *   what was wrong: per window, the daemon's API client counts one failed
 *   call of the mode's kind (json, toolarge, timeout, transport) per bad
 *   answer the emulator's call log holds, and the daemon logs one failed
 *   call ("apply failed for task", "cannot view task", "reconciliation
 *   stopped") per bad answer it had to read (all but the answers to a
 *   change that went through, whose content nobody reads); the lines are
 *   quoted;
 * - the daemons' peak memory (VmHWM) stays under 32 MB; under ASan, whose
 *   shadow memory alone passes that, its growth over the baseline taken
 *   before the first fault must (both figures are reported);
 * - nothing applied twice and nothing lost once the API is healthy: each
 *   source task has one target task with its fields, and each change's
 *   line is in its target note once.
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

/* Tasks on the target before the first fault; changes to them travel
 * during the faults (CHANGES per window, each task changed once). */
#define FIRST_BATCH 50
#define BATCH       14
#define CHANGES     2
/* Spoiled calls per mode and side; wrong_shape sends each of the five
 * variants the API client refuses once. */
#define BAD_CALLS      4
#define SHAPE_VARIANTS 5
/* fields_arrays, on every call for this long. */
#define ARRAYS_S 3
/* 100 MB chunked answers on every call for this long: as many in flight
 * as the daemon allows (billmanager.max_inflight). */
#define HUGE_ALL_S 2
/* How long one window may take to serve its bad answers and to have the
 * daemon finish those calls (a trickled answer takes a few seconds). */
#define WINDOW_DEADLINE_MS 30000
/* Once the bad answers are out, how long the daemon may take to end those
 * calls: a trickled body is given up after a quarter of the call's
 * timeout (2.5 s here). */
#define SETTLE_MS 10000
/* The quarantine of freed blocks the daemons get under ASan (see
 * test_hostile_api). */
#define ASAN_QUARANTINE_MB 4
/* The bound on a daemon's resident memory. */
#define RSS_MAX_KB 32768L

/* The note faults_bulk gives every task. */
#define BULK_NOTE "fault suite & = + %\nsecond line"

struct mode {
    const char *name;     /* in the report */
    const char *settings; /* POST /faults; bad_next, bad_rate added */
    const char *outcome;  /* in the emulator's call log */
    /* The API client's error kind for it, or NULL when the answer is an
     * API document the client cannot refuse (fields_arrays: repeated
     * elements where text belongs), which the caller must. */
    const char *err_type;
    const char *needle; /* what the daemon's log says of it */
    int calls;          /* spoiled calls (bad_next), or 0: */
    int seconds;        /* every call spoiled for this long */
};

static const struct mode modes[] = {
    {"invalid_json", "\"bad_answer\": \"invalid_json\"", "invalid_json", "json",
     "answer is not JSON", BAD_CALLS, 0},
    /* The variants take turns from the first, so these are doc_array,
     * top_array, elem_string, error_string and fields_numbers. */
    {"wrong_shape", "\"bad_answer\": \"wrong_shape\", \"bad_variant\": \"\"", "wrong_shape", "json",
     "not an API document", SHAPE_VARIANTS, 0},
    {"wrong_shape:fields_arrays",
     "\"bad_answer\": \"wrong_shape\", \"bad_variant\": \"fields_arrays\"", "wrong_shape", NULL,
     NULL, 0, ARRAYS_S},
    {"html_login", "\"bad_answer\": \"html_login\"", "html_login", "json", "a page titled",
     BAD_CALLS, 0},
    {"huge", "\"bad_answer\": \"huge\", \"huge_chunked\": false", "huge", "toolarge",
     "is larger than billmanager.max_response", BAD_CALLS, 0},
    {"huge_chunked", "\"bad_answer\": \"huge\", \"huge_chunked\": true", "huge", "toolarge",
     "answer is larger than billmanager.max_response", BAD_CALLS, 0},
    {"huge_chunked (every call)", "\"bad_answer\": \"huge\", \"huge_chunked\": true", "huge",
     "toolarge", "answer is larger than billmanager.max_response", 0, HUGE_ALL_S},
    {"trickle", "\"bad_answer\": \"trickle\"", "trickle", "timeout", "answer arrives too slowly",
     BAD_CALLS, 0},
    {"reset", "\"bad_answer\": \"reset\"", "reset", "transport", "answer cut off after", BAD_CALLS,
     0},
};
#define N_MODES (sizeof(modes) / sizeof(modes[0]))

/* One side of the flow: its API, its daemon, and the lines that daemon
 * writes for a call that failed (one per call). */
struct side {
    const char *name;
    struct harness_sim *sim;
    struct harness_daemon *d;
    const char *const *failures;
};

/* The server's calls are the forward applier's and, while a state cycle
 * runs, the state publisher's list and views: a spoiled answer may land on
 * any of them. */
static const char *const server_failures[] = {"apply failed for task", "cannot view task",
                                              "cannot list department", NULL};
static const char *const client_failures[] = {"cannot view task", "reconciliation stopped", NULL};

static const char *const status_members[] = {"billmanager.state", "billmanager.last_error",
                                             "errors.api",        "errors.retried",
                                             "outbox.backlog",    NULL};

/* The daemon's API errors from one status --json: of kind err_type into
 * *kind (when err_type is not NULL), of every kind into *all; -1 each
 * when it did not answer. One reading, so that the two agree. */
static void api_errors(const struct harness_daemon *d, const char *err_type, long *kind, long *all)
{
    struct harness_status st;
    harness_daemon_status(d, &st);
    json_t *api = faults_json_path(st.doc, "errors.api");
    *kind = *all = -1;
    if (json_is_object(api)) {
        *kind = *all = 0;
        const char *k;
        json_t *v;
        json_object_foreach(api, k, v)
        {
            *all += (long)json_integer_value(v);
            if (err_type && strcmp(k, err_type) == 0)
                *kind += (long)json_integer_value(v);
        }
    }
    harness_status_release(&st);
}

/* The lines a daemon wrote since mark for failed calls. */
static long failure_lines(const struct side *sd, size_t mark)
{
    long n = 0;
    for (size_t i = 0; sd->failures[i]; i++)
        n += (long)harness_daemon_log_count_since(sd->d, mark, sd->failures[i]);
    return n;
}

/* The calls an emulator spoiled with outcome since call number since, and
 * of those the changes of an existing task (task.edit with sok and elid),
 * whose answer a caller needs only to know that it went through. */
static long spoiled_calls(struct harness_sim *sim, long long since, const char *outcome,
                          long *edits)
{
    char path[64];
    snprintf(path, sizeof(path), "/calls?since=%lld", since);
    json_t *r = harness_sim_admin_ok(sim, "GET", path, NULL);
    long n = 0;
    size_t i;
    json_t *c;
    *edits = 0;
    json_array_foreach(json_object_get(r, "calls"), i, c)
    {
        const char *o = json_string_value(json_object_get(c, "outcome"));
        if (!o || strcmp(o, outcome) != 0)
            continue;
        n++;
        json_t *params = json_object_get(c, "params");
        if (json_is_true(json_object_get(c, "write")) && json_object_get(params, "elid"))
            (*edits)++;
    }
    json_decref(r);
    return n;
}

/* The peak resident set of a daemon so far (VmHWM), in kB; 0 when it
 * could not be read. */
static long hwm_kb(const struct harness_daemon *d)
{
    struct harness_proc p;
    return harness_daemon_proc(d, &p) == 0 ? p.hwm_kb : 0;
}

/* Changes CHANGES tasks of the first batch, from *next on, as an operator
 * would (a line added to the note), and records their events. */
static void change_tasks(struct harness_scenario *s, long long first, int *next, int window)
{
    int64_t ids[CHANGES];
    for (int i = 0; i < CHANGES; i++) {
        long long id = first + (*next)++;
        char note[256];
        snprintf(note, sizeof(note), "%s\nhostile change %d of task %lld", BULK_NOTE, window, id);
        faults_sim_change(s->src, id, json_pack("{s:s}", "note", note));
        ids[i] = id;
    }
    harness_record_event_list(s->client_state, s->client_id, ids, CHANGES);
}

/* Counts the occurrences of needle in text. */
static int occurrences(const char *text, const char *needle)
{
    int n = 0;
    for (const char *at = text; (at = strstr(at, needle)) != NULL; at += strlen(needle))
        n++;
    return n;
}

/* One window: mode m on the API of one side while a batch and a few
 * changes travel. Every spoiled call must end as a failure the API client
 * counts (of the mode's kind) and the caller logs, once. */
static void window(struct fault_result *r, struct harness_scenario *s, const struct mode *m,
                   const struct side *sd, long long first, int *next_change, int number)
{
    char body[320];
    size_t mark = harness_daemon_log_mark(sd->d);
    long long since = faults_sim_last_call(sd->sim);
    long kind_before, all_before;
    api_errors(sd->d, m->err_type, &kind_before, &all_before);
    if (m->calls)
        snprintf(body, sizeof(body), "{%s, \"bad_next\": %d, \"bad_rate\": 0}", m->settings,
                 m->calls);
    else
        snprintf(body, sizeof(body), "{%s, \"bad_next\": 0, \"bad_rate\": 1.0}", m->settings);
    json_decref(harness_sim_admin_ok(sd->sim, "POST", "/faults", body));

    char prefix[32];
    snprintf(prefix, sizeof(prefix), "h%d-", number);
    faults_bulk_send(s, BATCH, prefix);
    change_tasks(s, first, next_change, number);
    harness_daemon_wake(s->client, 0);

    long long deadline = harness_now_ms() + WINDOW_DEADLINE_MS, served_at = 0;
    if (m->seconds) {
        /* The fault lasts a given time: every call meanwhile is spoiled.
         * On a busy machine the batch may reach this side's API only
         * later: the fault stays on until it has spoiled a call (or the
         * window's deadline). */
        poll(NULL, 0, m->seconds * 1000);
        long unused = 0;
        while (spoiled_calls(sd->sim, since, m->outcome, &unused) == 0 &&
               harness_now_ms() < deadline)
            poll(NULL, 0, 200);
        json_decref(harness_sim_admin_ok(sd->sim, "POST", "/faults/bad/off", NULL));
        served_at = harness_now_ms();
    }
    /* The emulator spoiled its calls, and the daemon ended each of them. */
    long bad = 0, kind = 0, all = 0, lines = 0, edits = 0, used = 0;
    int budget = m->err_type && strcmp(m->err_type, "toolarge") == 0;
    for (;;) {
        bad = spoiled_calls(sd->sim, since, m->outcome, &edits);
        /* An answer the API client passes matters only where the caller
         * reads it: not for a change, whose answer says only "ok". */
        used = m->err_type ? bad : bad - edits;
        api_errors(sd->d, m->err_type, &kind, &all);
        kind -= kind_before;
        all -= all_before;
        lines = failure_lines(sd, mark);
        if (!served_at && bad >= m->calls)
            served_at = harness_now_ms();
        /* A huge answer also fails calls that were never spoiled: the API
         * client holds at most twice max_response of answers at once, and
         * a call beyond that budget fails as "toolarge" too (and is
         * retried). Each failed call must still be logged once. */
        if (budget && kind > used)
            used = kind;
        int api_done = m->err_type ? all >= bad : 1;
        if ((served_at && api_done && lines >= used) || harness_now_ms() >= deadline ||
            (served_at && harness_now_ms() - served_at >= SETTLE_MS))
            break;
        poll(NULL, 0, 100);
    }
    if (!m->seconds)
        json_decref(harness_sim_admin_ok(sd->sim, "POST", "/faults/bad/off", NULL));
    if (m->calls)
        fault_check(r, bad == m->calls, "%s on the %s's API: %ld calls spoiled (%d wanted)",
                    m->name, sd->name, bad, m->calls);
    else
        fault_check(r, bad > 0, "%s on the %s's API for %d s: %ld calls spoiled", m->name, sd->name,
                    m->seconds, bad);
    if (m->err_type)
        fault_check(r, budget ? kind >= bad && all == kind : kind == bad && all == bad,
                    "%s on the %s's API: its API client failed %ld calls as \"%s\" (%ld of any "
                    "kind) for %ld spoiled",
                    m->name, sd->name, kind, m->err_type, all, bad);
    else
        fault_note(r,
                   "%s on the %s's API: %ld spoiled answers are API documents, which the API "
                   "client passes (%ld calls failed there); the callers must refuse them",
                   m->name, sd->name, bad, all);
    fault_check(r, lines == used,
                "%s on the %s's API: the %s daemon logged %ld failed calls (\"%s\"%s) for %ld "
                "spoiled answers it had to read (%ld spoiled, %ld of them answers to a change "
                "that went through); peak memory now %ld kB",
                m->name, sd->name, sd->name, lines, sd->failures[0],
                sd->failures[1] ? " and the like" : "", used, bad, m->err_type ? 0 : edits,
                hwm_kb(sd->d));
}

static void test_hostile_api(void **state)
{
    (void)state;
    struct harness_scenario *s = faults_scenario("fha", NULL);
    struct fault_result r;
    fault_begin(&r, s, "hostile-api", 6,
                "Hostile or broken BILLmanager answers: not JSON, wrong shape, HTML login page, "
                "100 MB, one byte a second, reset mid-body");
#if defined(__SANITIZE_ADDRESS__)
    /* ASan keeps every freed block in a quarantine (256 MB by default) to
     * catch a use after free, so under it a daemon's peak memory measures
     * how much it allocated in all, not how much it held at once. The
     * daemons of this case get a small quarantine: their peak then
     * measures what they hold, plus ASan's shadow and at most this. */
    char asan[1024];
    const char *opts = getenv("ASAN_OPTIONS");
    snprintf(asan, sizeof(asan), "%s%squarantine_size_mb=%d", opts && *opts ? opts : "",
             opts && *opts ? ":" : "", ASAN_QUARANTINE_MB);
    setenv("ASAN_OPTIONS", asan, 1);
    fault_note(&r, "under ASan the daemons run with ASAN_OPTIONS=%s", asan);
#endif
    faults_start_both(s);
    long long first = faults_bulk_send(s, FIRST_BATCH, "h0-");
    fault_check(&r, faults_wait_sources(s, first, FIRST_BATCH, FAULTS_APPLY_DEADLINE_MS),
                "the first %d tasks arrive before the faults", FIRST_BATCH);
    long base_client = hwm_kb(s->client), base_server = hwm_kb(s->server);
    fault_note(&r, "VmHWM before the faults: client %ld kB, server %ld kB", base_client,
               base_server);

    fault_start(&r);
    int next_change = 0, number = 1;
    const struct side target = {"server", s->dst, s->server, server_failures};
    const struct side source = {"client", s->src, s->client, client_failures};
    for (size_t i = 0; i < N_MODES; i++)
        window(&r, s, &modes[i], &target, first, &next_change, number++);
    json_decref(
        fault_status(&r, "server", s->server, "after the target's bad answers", status_members));
    for (size_t i = 0; i < N_MODES; i++)
        window(&r, s, &modes[i], &source, first, &next_change, number++);
    json_decref(
        fault_status(&r, "client", s->client, "after the source's bad answers", status_members));
    fault_end(&r);

    /* What the daemons said about each kind of bad answer. */
    for (size_t i = 0; i < N_MODES; i++) {
        int quoted = !modes[i].needle;
        for (size_t k = 0; k < i && !quoted; k++)
            quoted = modes[k].needle && strcmp(modes[k].needle, modes[i].needle) == 0;
        if (quoted)
            continue;
        char what[128];
        snprintf(what, sizeof(what), "the %s answers", modes[i].name);
        fault_expect_log(&r, "server", s->server, modes[i].needle, what);
        fault_expect_log(&r, "client", s->client, modes[i].needle, what);
    }
    const char *server_lines[] = {"apply failed for task", "the create answered without an id",
                                  "found target task", "no target task found",
                                  "cannot view task", NULL};
    fault_quote(&r, "server", s->server, server_lines);
    const char *client_lines[] = {"cannot view task", "reconciliation stopped",
                                  "which is not mapped", NULL};
    fault_quote(&r, "client", s->client, client_lines);

    /* Healthy again: everything arrives once. */
    fault_wait_recovered(&r, FAULTS_APPLY_DEADLINE_MS);
    json_t *dst = harness_sim_tasks(s->dst, s->dst_dept);
    int changed = 0, once = 0;
    for (int i = 0; i < next_change; i++) {
        long long id = first + i;
        size_t k;
        json_t *t;
        json_array_foreach(dst, k, t)
        {
            if (harness_flow_note_origin(json_string_value(json_object_get(t, "note")),
                                         s->client_id) != id)
                continue;
            const char *note = json_string_value(json_object_get(t, "note"));
            int n = 0;
            for (int w = 1; w < number; w++) {
                char m[128];
                snprintf(m, sizeof(m), "hostile change %d of task %lld", w, id);
                n += occurrences(note ? note : "", m);
            }
            changed++;
            once += n == 1;
        }
    }
    json_decref(dst);
    fault_check(&r, changed == next_change && once == next_change,
                "each of the %d changes made during the faults is in its target note exactly "
                "once (%d target tasks found, %d hold it once)",
                next_change, changed, once);

    /* Memory. */
    long peak_client = hwm_kb(s->client), peak_server = hwm_kb(s->server);
    fault_note(&r,
               "VmHWM after the faults: client %ld kB (%+ld kB over the baseline), server %ld kB "
               "(%+ld kB)",
               peak_client, peak_client - base_client, peak_server, peak_server - base_server);
#if defined(__SANITIZE_ADDRESS__)
    fault_check(
        &r, peak_client - base_client < RSS_MAX_KB && peak_server - base_server < RSS_MAX_KB,
        "under ASan the daemons' peak memory grew by less than %ld kB over the baseline "
        "(client %+ld kB, server %+ld kB; absolute peaks %ld and %ld kB include ASan's "
        "shadow and quarantine)",
        RSS_MAX_KB, peak_client - base_client, peak_server - base_server, peak_client, peak_server);
#else
    fault_check(&r, peak_client < RSS_MAX_KB && peak_server < RSS_MAX_KB,
                "the daemons' peak memory stayed under %ld kB (client %ld kB, server %ld kB)",
                RSS_MAX_KB, peak_client, peak_server);
#endif
    fault_check_running(&r, s);
    fault_stop_both(&r, s);
    fault_report(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_hostile_api, faults_teardown),
    };
    return cmocka_run_group_tests(tests, faults_group_setup, NULL);
}
