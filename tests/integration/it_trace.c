/*
 * it_trace.c - a task's journey, seen with `remotetaskctl --command trace`
 * on both sides (issue 11, item 1).
 *
 * A real RabbitMQ node (scripts/test's private node), two BILLmanager
 * emulators and two remotetaskd processes (harness_daemon.h). One source
 * task goes through everything the journal records:
 *   forwarded  created on the target;
 *   changed    renamed on the source, the target renamed;
 *   closed     closed by target staff, the state brought back by
 *              checkevent, the source closed;
 *   dead-lettered then replayed
 *              its note changed while the target's API user may not call
 *              task.edit: the server dead-letters the message with an
 *              "access" reason; the right given back, `dlq replay` sends it
 *              again and the note reaches the target.
 * Then trace on the client (--elid N), on the server (--client C --elid N
 * and --target M) must show those steps as rows, in time order, with
 * their seqs, targets and details (checked in the --json output, and the
 * tables printed); a task nobody knows exits 1 on both sides. The test
 * counts what was lost and duplicated on the way: the source task must be
 * on the target exactly once, with its last note.
 *
 * Every wait polls with a deadline; rows the daemons have queued reach the
 * store with their next commit or within about a second
 * (store_journal.h), which the waits for the rows allow for.
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

#include "harness.h"
#include "harness_daemon.h"
#include "harness_sim.h"
#include "notes.h"

/* Generous for a loaded 2-core machine with ASan; every wait ends as soon
 * as its condition holds. */
#define DEADLINE_MS 60000

static struct harness_scenario *current;

static int teardown(void **state)
{
    (void)state;
    harness_scenario_free(current);
    current = NULL;
    return 0;
}

#define EXPECT(s, cond, ...)                                                                       \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            if (s) {                                                                               \
                (s)->keep = 1;                                                                     \
                harness_scenario_print_logs(s);                                                    \
            }                                                                                      \
            fail_msg(__VA_ARGS__);                                                                 \
        }                                                                                          \
    } while (0)

/* ---- small helpers ------------------------------------------------------ */

static long long jint(const json_t *o, const char *key)
{
    return json_integer_value(json_object_get(o, key));
}

static const char *jstr(const json_t *o, const char *key)
{
    const char *v = json_string_value(json_object_get(o, key));
    return v ? v : "";
}

static json_t *sim_task(struct harness_sim *sim, long long id)
{
    char path[64];
    snprintf(path, sizeof(path), "/tasks/%lld", id);
    return harness_sim_admin_ok(sim, "GET", path, NULL);
}

/* Changes a task as staff would; fields is stolen. */
static void sim_change(struct harness_sim *sim, long long id, json_t *fields)
{
    char path[64];
    char *body = json_dumps(fields, JSON_COMPACT);
    json_decref(fields);
    assert_non_null(body);
    snprintf(path, sizeof(path), "/tasks/%lld", id);
    json_decref(harness_sim_admin_ok(sim, "POST", path, body));
    free(body);
}

/* The target's API user may (0) or may not (1) call task.edit. */
static void sim_seed_user(struct harness_sim *sim, int deny_edit)
{
    json_t *seed = json_pack("{s:[{s:s,s:s,s:[]}]}", "users", "login", HARNESS_SIM_LOGIN,
                             "password", HARNESS_SIM_PASSWORD, "deny");
    assert_non_null(seed);
    if (deny_edit)
        json_array_append_new(
            json_object_get(json_array_get(json_object_get(seed, "users"), 0), "deny"),
            json_string("task.edit"));
    char *body = json_dumps(seed, JSON_COMPACT);
    json_decref(seed);
    assert_non_null(body);
    json_decref(harness_sim_admin_ok(sim, "POST", "/seed", body));
    free(body);
}

static void taskevent(struct harness_scenario *s, long long task)
{
    char elid[32], *out;
    snprintf(elid, sizeof(elid), "%lld", task);
    int rc = harness_ctl_list(s->client_conf, &out, "--command", "taskevent", "--elid", elid,
                              (const char *)NULL);
    EXPECT(s, rc == 0, "taskevent exited %d: %s", rc, out);
    free(out);
}

/* The target tasks of (client, task), by the origin block of their note:
 * how many, and the last one's id and note. */
struct copies {
    const char *client;
    long long task;
    const char *want_name; /* NULL: any */
    const char *want_text; /* NULL: any; else a text the note must hold */
    size_t count;
    long long id;
    char name[256];
};

static int copies_ready(json_t *tasks, void *arg)
{
    struct copies *w = arg;
    char origin[NOTES_ORIGIN_MAX + 1];
    size_t i;
    json_t *t;
    int ok = 0;
    notes_origin_forward(origin, sizeof(origin), w->client, w->task);
    w->count = 0;
    json_array_foreach(tasks, i, t)
    {
        const char *note = jstr(t, "note");
        if (!notes_has_origin(note, origin))
            continue;
        w->count++;
        w->id = jint(t, "id");
        snprintf(w->name, sizeof(w->name), "%s", jstr(t, "name"));
        ok = (!w->want_name || strcmp(jstr(t, "name"), w->want_name) == 0) &&
             (!w->want_text || strstr(note, w->want_text));
    }
    return w->count >= 1 && ok;
}

static void wait_target(struct harness_scenario *s, struct copies *w, const char *what)
{
    int met = 0;
    w->client = s->client_id;
    json_decref(harness_wait_tasks(s->dst, s->dst_dept, copies_ready, w, DEADLINE_MS, &met));
    EXPECT(s, met, "%s: the target never showed it (%zu copies, name \"%s\")", what, w->count,
           w->name);
}

/* ---- the journal's rows ------------------------------------------------- */

/* One row the test expects, matched in order against trace's entries. */
struct want {
    const char *event;
    long long seq;      /* -1: any; 0: none (null) */
    long long target;   /* -1: any; 0: none (null) */
    const char *detail; /* NULL: any; else a text the detail holds */
    long long *got_seq; /* when not NULL, receives the row's seq */
};

/* The index after the first entry at or after from that matches w, or -1. */
static long match_from(json_t *entries, size_t from, const struct want *w)
{
    for (size_t i = from; i < json_array_size(entries); i++) {
        json_t *e = json_array_get(entries, i);
        if (strcmp(jstr(e, "event"), w->event) != 0)
            continue;
        json_t *seq = json_object_get(e, "seq"), *target = json_object_get(e, "target");
        if (w->seq == 0 && !json_is_null(seq))
            continue;
        if (w->seq > 0 && json_integer_value(seq) != w->seq)
            continue;
        if (w->target == 0 && !json_is_null(target))
            continue;
        if (w->target > 0 && json_integer_value(target) != w->target)
            continue;
        if (w->detail && !strstr(jstr(e, "detail"), w->detail))
            continue;
        if (w->got_seq)
            *w->got_seq = json_integer_value(seq);
        return (long)i + 1;
    }
    return -1;
}

/* Every want in order, as a subsequence of the entries (other rows may
 * come between: a reconciliation's echo, a state cycle). Returns the
 * index of the first want that is missing, or -1 when all are there. */
static long match_all(json_t *entries, const struct want *wants, size_t n)
{
    size_t at = 0;
    for (size_t k = 0; k < n; k++) {
        long next = match_from(entries, at, &wants[k]);
        if (next < 0)
            return (long)k;
        at = (size_t)next;
    }
    return -1;
}

/* Runs trace --json with args and parses it; *rc gets the exit status. */
static json_t *trace_json(struct harness_scenario *s, const char *conf, int *rc, const char *a1,
                          const char *v1, const char *a2, const char *v2)
{
    char *out;
    json_error_t jerr;
    *rc = harness_ctl_list(conf, &out, "--command", "trace", "--json", a1, v1, a2, v2,
                           (const char *)NULL);
    json_t *doc = *rc == 0 ? json_loads(out, 0, &jerr) : NULL;
    EXPECT(s, *rc != 0 || json_is_object(doc), "trace --json printed no JSON object:\n%s", out);
    free(out);
    return doc;
}

/* Polls trace --json until every want is there in order (the daemons
 * commit their last rows within about a second); fails the test with the
 * entries when the deadline passes. Returns the document (new reference). */
static json_t *wait_rows(struct harness_scenario *s, const char *conf, const char *side,
                         const struct want *wants, size_t n, const char *a1, const char *v1,
                         const char *a2, const char *v2)
{
    long long deadline = harness_now_ms() + DEADLINE_MS;
    for (;;) {
        int rc;
        json_t *doc = trace_json(s, conf, &rc, a1, v1, a2, v2);
        long missing = doc ? match_all(json_object_get(doc, "entries"), wants, n) : 0;
        if (doc && missing < 0)
            return doc;
        if (harness_now_ms() > deadline) {
            char *text = doc ? json_dumps(doc, JSON_INDENT(2)) : NULL;
            json_decref(doc);
            if (text)
                fprintf(stderr, "%s\n", text);
            EXPECT(s, 0,
                   "the %s side's trace lacks row %ld (%s, detail \"%s\") after %d ms "
                   "(exit %d; its document is above)",
                   side, missing, wants[missing].event,
                   wants[missing].detail ? wants[missing].detail : "", DEADLINE_MS, rc);
        }
        json_decref(doc);
        poll(NULL, 0, 250);
    }
}

/* Checks what every entry of a document says of itself. */
static void check_entries(struct harness_scenario *s, json_t *doc, const char *side,
                          const char *client, long long task)
{
    json_t *entries = json_object_get(doc, "entries");
    long long last = 0;
    EXPECT(s, strcmp(jstr(doc, "side"), side) == 0, "trace says side \"%s\"", jstr(doc, "side"));
    EXPECT(s, jint(doc, "task") == task, "trace says task %lld, not %lld", jint(doc, "task"), task);
    EXPECT(s, json_array_size(entries) > 0, "trace has no entries");
    for (size_t i = 0; i < json_array_size(entries); i++) {
        json_t *e = json_array_get(entries, i);
        EXPECT(s,
               strcmp(jstr(e, "side"), side) == 0 && strcmp(jstr(e, "client"), client) == 0 &&
                   jint(e, "task") == task,
               "entry %zu is of side %s, client %s, task %lld", i, jstr(e, "side"),
               jstr(e, "client"), jint(e, "task"));
        EXPECT(s, jint(e, "time_ms") >= last, "entry %zu is older than the one before it", i);
        EXPECT(s, strlen(jstr(e, "time")) == 23, "entry %zu has the time \"%s\"", i,
               jstr(e, "time"));
        last = jint(e, "time_ms");
    }
}

/* ---- the journey --------------------------------------------------------- */

static void test_trace_journey(void **state)
{
    (void)state;
    struct harness_scenario_opts o = {.poll_interval = 5};
    struct harness_scenario *s = harness_scenario_new("ittrace", &o, &current);
    char *out = NULL, elid[32], target[32];
    int rc;

    harness_daemon_start(s->server);
    harness_daemon_start(s->client);

    /* Nothing known yet: both sides say so and exit 1. */
    rc = harness_ctl_list(s->client_conf, &out, "--command", "trace", "--elid", "999999",
                          (const char *)NULL);
    EXPECT(s, rc == 1 && strstr(out, "unknown"), "trace of an unknown task exited %d: %s", rc, out);
    printf("client, unknown task: exit %d: %s", rc, out);
    free(out);
    rc = harness_ctl_list(s->server_conf, &out, "--command", "trace", "--client", s->client_id,
                          "--elid", "999999", (const char *)NULL);
    EXPECT(s, rc == 1 && strstr(out, "unknown"), "server trace of an unknown task exited %d: %s",
           rc, out);
    free(out);
    rc = harness_ctl_list(s->server_conf, &out, "--command", "trace", "--target", "999999",
                          (const char *)NULL);
    EXPECT(s, rc == 1 && strstr(out, "unknown"), "trace of an unknown target exited %d: %s", rc,
           out);
    printf("server, unknown target: exit %d: %s", rc, out);
    free(out);
    rc = harness_ctl_list(s->client_conf, &out, "--command", "trace", (const char *)NULL);
    EXPECT(s, rc == 2, "trace without a task exited %d: %s", rc, out);
    free(out);

    /* 1. Forwarded. */
    json_t *fields = json_pack("{s:i,s:s,s:s,s:s}", "department", (int)s->src_dept, "name",
                               "journey", "type", "manual", "note", "first words");
    char *body = json_dumps(fields, JSON_COMPACT);
    json_decref(fields);
    json_t *r = harness_sim_admin_ok(s->src, "POST", "/tasks", body);
    free(body);
    long long task = jint(r, "id");
    json_decref(r);
    assert_true(task > 0);
    snprintf(elid, sizeof(elid), "%lld", task);
    taskevent(s, task);
    struct copies c = {.task = task, .want_name = "journey"};
    wait_target(s, &c, "the forwarded task");
    long long dst = c.id;
    snprintf(target, sizeof(target), "%lld", dst);
    printf("source task %lld was created on the target as task %lld\n", task, dst);

    /* 2. Changed. */
    sim_change(s->src, task, json_pack("{s:s}", "name", "journey, renamed"));
    taskevent(s, task);
    c.want_name = "journey, renamed";
    wait_target(s, &c, "the renamed task");

    /* 3. Closed by target staff; checkevent brings the state now. */
    sim_change(s->dst, dst, json_pack("{s:i}", "status", 2));
    rc = harness_ctl_list(s->client_conf, &out, "--command", "checkevent", "--timeout", "60",
                          (const char *)NULL);
    EXPECT(s, rc == 0, "checkevent exited %d: %s", rc, out);
    free(out);
    json_t *t = sim_task(s->src, task);
    EXPECT(s, jint(t, "status") == 2, "the source task has status %lld after checkevent",
           jint(t, "status"));
    json_decref(t);

    /* 4. Dead-lettered: the note changes while the target refuses
     * task.edit. */
    sim_seed_user(s->dst, 1);
    sim_change(s->src, task, json_pack("{s:s}", "note", "first words\nthe last words"));
    taskevent(s, task);
    long long dead_seq = 0;
    const struct want dead[] = {
        {"dead-lettered", -1, -1, "access", &dead_seq},
    };
    json_decref(
        wait_rows(s, s->server_conf, "server", dead, 1, "--client", s->client_id, "--elid", elid));
    EXPECT(s, dead_seq > 0, "the dead-lettered row has no seq");

    /* 5. Replayed, once the cause is fixed. */
    sim_seed_user(s->dst, 0);
    rc = harness_ctl_list(s->server_conf, &out, "--command", "dlq", "replay", "--all",
                          (const char *)NULL);
    EXPECT(s, rc == 0 && strstr(out, "replayed 1"), "dlq replay --all exited %d: %s", rc, out);
    free(out);
    c.want_text = "the last words";
    wait_target(s, &c, "the replayed note");

    /* What was lost and duplicated on the way. */
    EXPECT(s, c.count == 1, "source task %lld is %zu times on the target", task, c.count);
    printf("journey: sent=1 applied=1 lost=0 duplicated=%zu\n", c.count - 1);

    /* The client side's rows, in order. */
    long long fwd1 = 0, fwd2 = 0, state_seq = 0;
    const struct want client_rows[] = {
        {"recorded", 0, 0, "event", NULL},        {"viewed", 0, 0, "ok", NULL},
        {"published", -1, 0, "status 0", &fwd1},  {"confirmed", -1, 0, NULL, NULL},
        {"recorded", 0, 0, NULL, NULL},           {"viewed", 0, 0, "ok", NULL},
        {"published", -1, 0, NULL, &fwd2},        {"confirmed", -1, 0, NULL, NULL},
        {"state", -1, 0, "status 2", &state_seq}, {"written", -1, 0, "status 2", NULL},
        {"published", dead_seq, 0, NULL, NULL},   {"confirmed", dead_seq, 0, NULL, NULL},
    };
    size_t n_client = sizeof(client_rows) / sizeof(client_rows[0]);
    json_t *cdoc =
        wait_rows(s, s->client_conf, "client", client_rows, n_client, "--elid", elid, NULL, NULL);
    check_entries(s, cdoc, "client", s->client_id, task);
    EXPECT(s, fwd1 == 1 && fwd2 > fwd1, "the client published seqs %lld then %lld", fwd1, fwd2);
    EXPECT(s, dead_seq > fwd2, "the dead-lettered seq %lld is not after %lld", dead_seq, fwd2);
    /* Each confirmed seq is the one published just before it. */
    json_t *ce = json_object_get(cdoc, "entries");
    for (size_t i = 0; i < json_array_size(ce); i++) {
        json_t *e = json_array_get(ce, i);
        if (strcmp(jstr(e, "event"), "confirmed") != 0)
            continue;
        long long seq = jint(e, "seq");
        int published = 0;
        for (size_t k = 0; k < i; k++) {
            json_t *p = json_array_get(ce, k);
            published |= strcmp(jstr(p, "event"), "published") == 0 && jint(p, "seq") == seq;
        }
        EXPECT(s, published, "confirmed seq %lld was never published before", seq);
    }
    size_t n_client_entries = json_array_size(ce);
    json_decref(cdoc);

    /* The server side's rows, by the client's task and by the target. */
    long long applied_seq = 0;
    const struct want server_rows[] = {
        {"received", fwd1, 0, "from", NULL},
        {"applied", fwd1, dst, "created", NULL},
        {"received", fwd2, -1, NULL, NULL},
        {"applied", fwd2, dst, "name", NULL},
        {"state-published", state_seq, dst, "status 2", NULL},
        {"confirmed", state_seq, dst, NULL, NULL},
        {"received", dead_seq, -1, NULL, NULL},
        {"dead-lettered", dead_seq, -1, "api: ", NULL},
        {"replayed", dead_seq, -1, "dead-letter", NULL},
        {"applied", dead_seq, dst, "note", &applied_seq},
    };
    size_t n_server = sizeof(server_rows) / sizeof(server_rows[0]);
    json_t *sdoc = wait_rows(s, s->server_conf, "server", server_rows, n_server, "--client",
                             s->client_id, "--elid", elid);
    check_entries(s, sdoc, "server", s->client_id, task);
    long long sdoc_target = jint(sdoc, "target");
    size_t n_server_entries = json_array_size(json_object_get(sdoc, "entries"));
    json_decref(sdoc);
    EXPECT(s, sdoc_target == dst, "the server's trace names target %lld, not %lld", sdoc_target,
           dst);
    json_t *tdoc = wait_rows(s, s->server_conf, "server", server_rows, n_server, "--target", target,
                             NULL, NULL);
    long long tdoc_task = jint(tdoc, "task");
    int tdoc_client = strcmp(jstr(tdoc, "client"), s->client_id) == 0;
    json_decref(tdoc);
    EXPECT(s, tdoc_task == task && tdoc_client, "trace --target %lld found task %lld", dst,
           tdoc_task);
    printf("client rows: %zu, server rows: %zu (checked %zu and %zu of them in order)\n",
           n_client_entries, n_server_entries, n_client, n_server);

    /* The tables, as an operator reads them; with the daemons down too. */
    harness_scenario_stop(s);
    rc = harness_ctl_list(s->client_conf, &out, "--command", "trace", "--elid", elid,
                          (const char *)NULL);
    printf("client: remotetaskctl --command trace --elid %s (daemon stopped), exit %d:\n%s", elid,
           rc, out);
    EXPECT(s,
           rc == 0 && strstr(out, "TIME") && strstr(out, "dead") == NULL && strstr(out, "written"),
           "the client's table (exit %d) is not as expected:\n%s", rc, out);
    free(out);
    rc = harness_ctl_list(s->server_conf, &out, "--command", "trace", "--target", target,
                          (const char *)NULL);
    printf("server: remotetaskctl --command trace --target %s (daemon stopped), exit %d:\n%s",
           target, rc, out);
    EXPECT(s,
           rc == 0 && strstr(out, "dead-lettered") && strstr(out, "replayed") &&
               strstr(out, "-> target task"),
           "the server's table (exit %d) is not as expected:\n%s", rc, out);
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_trace_journey, teardown),
    };
    return cmocka_run_group_tests_name("trace", tests, NULL, NULL);
}
