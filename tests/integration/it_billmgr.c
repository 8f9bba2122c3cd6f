/* Integration tests of common/billmgr against the BILLmanager emulator
 * (tests/sim/billsim.py): round trips of awkward text, every error type,
 * paging, session auth, faults, bad answers (not JSON, the wrong shape, a
 * login page, 100 MB, a trickle, a reset halfway) with the memory they
 * cost, concurrency limits and secrets. One emulator serves the whole
 * group; every test starts from cleared faults and an empty call log. */
#include <errno.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "billmgr.h"
#include "harness.h"
#include "harness_sim.h"

/* The password as it would travel URL-encoded: neither form may leak. */
#define PASSWORD_ENCODED "p%40ss%20w%3Ard%26%3D%2B%25%D0%96"

#define NAME_AWKWARD "Fix & check = 100% + more — Задача\nsecond line"
#define NOTE_AWKWARD "line 1\nline 2 & = + % ü\r\n  two spaces  \n\n%20 not decoded %41"

static struct harness_sim *sim;

/* Every error string any test saw, to check at the end that none holds
 * the password. */
static char seen_errors[64 * 1024];

static void remember_error(const char *type, const char *object, const char *message)
{
    size_t n = strlen(seen_errors);
    snprintf(seen_errors + n, sizeof(seen_errors) - n, "%s|%s|%s\n", type, object, message);
}

static int group_setup(void **state)
{
    sim = harness_sim_start(NULL, NULL);
    return 0;
}

static int group_teardown(void **state)
{
    harness_sim_free(sim);
    sim = NULL;
    return 0;
}

static int test_setup(void **state)
{
    json_decref(harness_sim_admin_ok(sim, "POST", "/faults/reset", NULL));
    json_decref(harness_sim_admin_ok(sim, "POST", "/up", NULL));
    json_decref(harness_sim_admin_ok(sim, "POST", "/calls/reset", NULL));
    return 0;
}

static struct billmgr *new_client(const char *password, int session, long timeout_ms,
                                  int max_inflight, size_t max_response)
{
    char err[256];
    struct billmgr_opts o;
    memset(&o, 0, sizeof(o));
    o.url = harness_sim_url(sim);
    o.login = HARNESS_SIM_LOGIN;
    o.password = password;
    o.auth_session = session;
    o.timeout_ms = timeout_ms;
    o.connect_timeout_ms = timeout_ms;
    o.max_inflight = max_inflight;
    o.max_response = max_response;
    o.verify_tls = 1;
    struct billmgr *bm = billmgr_new(&o, err, sizeof(err));
    if (!bm)
        fail_msg("billmgr_new: %s", err);
    return bm;
}

static struct billmgr *default_client(void)
{
    return new_client(HARNESS_SIM_PASSWORD, 0, 30000, 8, 0);
}

/* Makes a call that must fail with status and type, and returns nothing;
 * the error is remembered for the secrets check. */
static void expect_failure(struct billmgr *bm, const char *func, struct billmgr_params *p,
                           rt_status status, const char *type, const char *object)
{
    struct billmgr_error e;
    json_t *doc = (json_t *)1;
    rt_status st = billmgr_call_sync(bm, func, p, &doc, &e);
    remember_error(e.type, e.object, e.message);
    if (st != status || strcmp(e.type, type) != 0 || (object && strcmp(e.object, object) != 0))
        fail_msg("%s: want %s %s/%s, got %s %s/%s: %s", func, rt_status_name(status), type,
                 object ? object : "*", rt_status_name(st), e.type, e.object, e.message);
    assert_null(doc);
    assert_true(strlen(e.message) > 0);
}

static long create_task(struct billmgr *bm, const char *name, const char *note, long dept)
{
    struct billmgr_params p;
    struct billmgr_error e;
    json_t *doc = NULL;
    long id = 0;
    billmgr_params_init(&p);
    assert_int_equal(billmgr_params_add(&p, "sok", "ok"), 0);
    assert_int_equal(billmgr_params_addf(&p, "department", "%ld", dept), 0);
    assert_int_equal(billmgr_params_add(&p, "type", "postopen"), 0);
    assert_int_equal(billmgr_params_add(&p, "name", name), 0);
    assert_int_equal(billmgr_params_add(&p, "note", note), 0);
    assert_int_equal(billmgr_params_add(&p, "deadline", "2030-01-02 03:04:05"), 0);
    rt_status st = billmgr_call_sync(bm, "task.edit", &p, &doc, &e);
    billmgr_params_release(&p);
    if (st != RT_OK)
        fail_msg("create failed: %s %s/%s: %s", rt_status_name(st), e.type, e.object, e.message);
    assert_non_null(json_object_get(doc, "ok"));
    assert_int_equal(billmgr_long(doc, "id", &id), 0);
    assert_true(id > 0);
    json_decref(doc);
    return id;
}

static json_t *view_task(struct billmgr *bm, long id)
{
    struct billmgr_params p;
    struct billmgr_error e;
    json_t *doc = NULL;
    billmgr_params_init(&p);
    assert_int_equal(billmgr_params_addf(&p, "elid", "%ld", id), 0);
    rt_status st = billmgr_call_sync(bm, "task.edit", &p, &doc, &e);
    billmgr_params_release(&p);
    if (st != RT_OK)
        fail_msg("view of task %ld failed: %s %s: %s", id, rt_status_name(st), e.type, e.message);
    return doc;
}

/* ---- round trips ---- */

static void task_text_round_trips(void **state)
{
    struct billmgr *bm = default_client();
    long id = create_task(bm, NAME_AWKWARD, NOTE_AWKWARD, HARNESS_SIM_DEPT_A);

    json_t *doc = view_task(bm, id);
    assert_string_equal(billmgr_text(doc, "name"), NAME_AWKWARD);
    assert_string_equal(billmgr_text(doc, "note"), NOTE_AWKWARD);
    assert_string_equal(billmgr_text(doc, "deadline"), "2030-01-02 03:04:05");
    assert_string_equal(billmgr_text(doc, "type"), "postopen");
    long dept = 0, status = -1;
    assert_int_equal(billmgr_long(doc, "department", &dept), 0);
    assert_int_equal(dept, HARNESS_SIM_DEPT_A);
    assert_int_equal(billmgr_long(doc, "status", &status), 0);
    assert_int_equal(status, 0);
    json_decref(doc);

    /* What the emulator stored, seen without our client. */
    char path[64];
    snprintf(path, sizeof(path), "/tasks/%ld", id);
    json_t *raw = harness_sim_admin_ok(sim, "GET", path, NULL);
    assert_string_equal(json_string_value(json_object_get(raw, "name")), NAME_AWKWARD);
    assert_string_equal(json_string_value(json_object_get(raw, "note")), NOTE_AWKWARD);
    json_decref(raw);

    /* A change sends only some fields; the others stay. */
    struct billmgr_params p;
    struct billmgr_error e;
    json_t *ok = NULL;
    const char *note2 = NOTE_AWKWARD "\n[remote] answer: +1 & done = 100%";
    billmgr_params_init(&p);
    billmgr_params_add(&p, "sok", "ok");
    billmgr_params_addf(&p, "elid", "%ld", id);
    billmgr_params_add(&p, "note", note2);
    billmgr_params_add(&p, "status", "1");
    billmgr_params_addf(&p, "performer", "%d", HARNESS_SIM_STAFF_B);
    assert_int_equal(billmgr_call_sync(bm, "task.edit", &p, &ok, &e), RT_OK);
    billmgr_params_release(&p);
    assert_non_null(json_object_get(ok, "ok"));
    json_decref(ok);

    doc = view_task(bm, id);
    assert_string_equal(billmgr_text(doc, "name"), NAME_AWKWARD);
    assert_string_equal(billmgr_text(doc, "note"), note2);
    assert_int_equal(billmgr_long(doc, "status", &status), 0);
    assert_int_equal(status, 1);
    long performer = 0;
    assert_int_equal(billmgr_long(doc, "performer", &performer), 0);
    assert_int_equal(performer, HARNESS_SIM_STAFF_B);
    json_decref(doc);

    /* Credentials travelled in the body: the call log holds the calls. */
    assert_int_equal(harness_sim_count(sim, "func=task.edit&write=1"), 2);
    assert_int_equal(harness_sim_count(sim, "func=task.edit&write=0"), 2);
    billmgr_free(bm);
}

/* ---- error types ---- */

static void api_errors_are_rejects(void **state)
{
    struct billmgr *bm = default_client();
    struct billmgr_params p;
    long id = create_task(bm, "valid task", "", HARNESS_SIM_DEPT_A);

    /* missed: an unknown task, and an unknown function. */
    billmgr_params_init(&p);
    billmgr_params_add(&p, "elid", "99999999");
    expect_failure(bm, "task.edit", &p, RT_REJECT, "missed", "elid");
    billmgr_params_release(&p);
    expect_failure(bm, "no.such.func", NULL, RT_REJECT, "missed", "func");

    /* value: department, status, deadline, empty name. */
    billmgr_params_init(&p);
    billmgr_params_add(&p, "sok", "ok");
    billmgr_params_add(&p, "department", "999");
    billmgr_params_add(&p, "name", "x");
    expect_failure(bm, "task.edit", &p, RT_REJECT, "value", "department");
    billmgr_params_release(&p);

    billmgr_params_init(&p);
    billmgr_params_add(&p, "sok", "ok");
    billmgr_params_addf(&p, "elid", "%ld", id);
    billmgr_params_add(&p, "status", "7");
    expect_failure(bm, "task.edit", &p, RT_REJECT, "value", "status");
    billmgr_params_release(&p);

    billmgr_params_init(&p);
    billmgr_params_add(&p, "sok", "ok");
    billmgr_params_addf(&p, "elid", "%ld", id);
    billmgr_params_add(&p, "deadline", "tomorrow at noon");
    expect_failure(bm, "task.edit", &p, RT_REJECT, "value", "deadline");
    billmgr_params_release(&p);

    billmgr_params_init(&p);
    billmgr_params_add(&p, "sok", "ok");
    billmgr_params_addf(&p, "department", "%d", HARNESS_SIM_DEPT_A);
    billmgr_params_add(&p, "name", "");
    expect_failure(bm, "task.edit", &p, RT_REJECT, "value", "name");
    billmgr_params_release(&p);

    /* exists: a department whose name is taken. */
    billmgr_params_init(&p);
    billmgr_params_add(&p, "sok", "ok");
    billmgr_params_add(&p, "name", "Upstream");
    expect_failure(bm, "department.edit", &p, RT_REJECT, "exists", "name");
    billmgr_params_release(&p);

    /* Nothing above changed the task. */
    json_t *doc = view_task(bm, id);
    assert_string_equal(billmgr_text(doc, "name"), "valid task");
    assert_string_equal(billmgr_text(doc, "deadline"), "2030-01-02 03:04:05");
    long status = -1;
    assert_int_equal(billmgr_long(doc, "status", &status), 0);
    assert_int_equal(status, 0);
    json_decref(doc);
    billmgr_free(bm);

    /* auth: a wrong password. */
    bm = new_client("wrong " HARNESS_SIM_PASSWORD, 0, 30000, 8, 0);
    expect_failure(bm, "task", NULL, RT_REJECT, "auth", NULL);
    billmgr_free(bm);

    /* access: a user the emulator forbids task.delete. */
    json_decref(
        harness_sim_admin_ok(sim, "POST", "/seed",
                             "{\"users\": [{\"login\": \"limited\", \"password\": \"limited-pw\", "
                             "\"deny\": [\"task.delete\"]}]}"));
    char err[256];
    struct billmgr_opts o;
    memset(&o, 0, sizeof(o));
    o.url = harness_sim_url(sim);
    o.login = "limited";
    o.password = "limited-pw";
    bm = billmgr_new(&o, err, sizeof(err));
    assert_non_null(bm);
    billmgr_params_init(&p);
    billmgr_params_addf(&p, "elid", "%ld", id);
    expect_failure(bm, "task.delete", &p, RT_REJECT, "access", "task.delete");
    billmgr_params_release(&p);
    billmgr_free(bm);
}

/* ---- paging ---- */

struct id_set {
    long *ids;
    size_t n;
    size_t cap;
};

static int collect_id(void *arg, json_t *elem)
{
    struct id_set *s = arg;
    long id;
    if (billmgr_long(elem, "id", &id) < 0)
        fail_msg("a list row without an id");
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 1024;
        s->ids = realloc(s->ids, s->cap * sizeof(*s->ids));
        assert_non_null(s->ids);
    }
    s->ids[s->n++] = id;
    return 0;
}

static int cmp_long(const void *a, const void *b)
{
    long x = *(const long *)a, y = *(const long *)b;
    return (x > y) - (x < y);
}

static void list_pages_through_2500_tasks(void **state)
{
    /* A department of its own, so that other tests' tasks do not count. */
    json_decref(harness_sim_admin_ok(sim, "POST", "/seed",
                                     "{\"departments\": [{\"id\": 40, \"name\": \"Paging\"}]}"));
    json_t *bulk = harness_sim_admin_ok(
        sim, "POST", "/tasks/bulk",
        "{\"department\": 40, \"count\": 2500, \"name_prefix\": \"bulk-\", \"note\": \"n\"}");
    long first = (long)json_integer_value(json_object_get(bulk, "first_id"));
    long last = (long)json_integer_value(json_object_get(bulk, "last_id"));
    json_decref(bulk);
    assert_int_equal(last - first + 1, 2500);

    struct billmgr *bm = default_client();
    struct billmgr_params filter;
    struct billmgr_error e;
    struct id_set s = {0};
    billmgr_params_init(&filter);
    billmgr_params_add(&filter, "filter", "on");
    billmgr_params_add(&filter, "department", "40");
    rt_status st = billmgr_list_sync(bm, "task", &filter, collect_id, &s, &e);
    billmgr_params_release(&filter);
    if (st != RT_OK)
        fail_msg("list failed: %s %s: %s", rt_status_name(st), e.type, e.message);

    assert_int_equal(s.n, 2500);
    qsort(s.ids, s.n, sizeof(*s.ids), cmp_long);
    for (size_t i = 0; i < s.n; i++)
        assert_int_equal(s.ids[i], first + (long)i); /* distinct, all of them */
    free(s.ids);

    assert_int_equal(harness_sim_count(sim, "func=task"), 3);
    json_t *calls = harness_sim_admin_ok(sim, "GET", "/calls", NULL);
    json_t *list = json_object_get(calls, "calls");
    size_t i;
    json_t *c;
    int pages_seen = 0;
    json_array_foreach(list, i, c)
    {
        json_t *params = json_object_get(c, "params");
        if (strcmp(json_string_value(json_object_get(c, "func")), "task") != 0)
            continue;
        assert_string_equal(json_string_value(json_object_get(params, "p_cnt")), "1000");
        char want[16];
        snprintf(want, sizeof(want), "%d", ++pages_seen);
        assert_string_equal(json_string_value(json_object_get(params, "p_num")), want);
        assert_string_equal(json_string_value(json_object_get(params, "department")), "40");
    }
    assert_int_equal(pages_seen, 3);
    json_decref(calls);
    billmgr_free(bm);
}

static int stop_after_five(void *arg, json_t *elem)
{
    int *n = arg;
    return ++*n >= 5;
}

static void list_stops_when_asked(void **state)
{
    struct billmgr *bm = default_client();
    int n = 0;
    struct billmgr_error e;
    assert_int_equal(billmgr_list_sync(bm, "task", NULL, stop_after_five, &n, &e), RT_OK);
    assert_int_equal(n, 5);
    assert_int_equal(harness_sim_count(sim, "func=task"), 1);

    /* A list that fails: the emulator's validation of a filter. */
    struct billmgr_params filter;
    billmgr_params_init(&filter);
    billmgr_params_add(&filter, "filter", "on");
    billmgr_params_add(&filter, "department", "not-an-id");
    n = 0;
    assert_int_equal(billmgr_list_sync(bm, "task", &filter, stop_after_five, &n, &e), RT_REJECT);
    remember_error(e.type, e.object, e.message);
    assert_string_equal(e.type, "value");
    assert_int_equal(n, 0);
    billmgr_params_release(&filter);
    billmgr_free(bm);
}

/* ---- session auth ---- */

static void session_relogs_once_after_expiry(void **state)
{
    struct billmgr *bm = new_client(HARNESS_SIM_PASSWORD, 1, 30000, 8, 0);
    long id = create_task(bm, "session task", "via session", HARNESS_SIM_DEPT_A);
    json_decref(view_task(bm, id));
    assert_int_equal(harness_sim_count(sim, "func=auth"), 1);
    assert_int_equal(harness_sim_count(sim, "func=task.edit&outcome=ok"), 2);

    json_decref(harness_sim_admin_ok(sim, "POST", "/sessions/expire", NULL));
    json_t *doc = view_task(bm, id);
    assert_string_equal(billmgr_text(doc, "name"), "session task");
    json_decref(doc);
    assert_int_equal(harness_sim_count(sim, "func=auth"), 2);
    assert_int_equal(harness_sim_count(sim, "func=task.edit&outcome=auth"), 1);
    assert_int_equal(harness_sim_count(sim, "func=task.edit&outcome=ok"), 3);

    /* Calls in session mode carry no authinfo. */
    json_t *calls = harness_sim_admin_ok(sim, "GET", "/calls", NULL);
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(calls, "calls"), i, c)
    {
        json_t *params = json_object_get(c, "params");
        assert_null(json_object_get(params, "authinfo"));
    }
    json_decref(calls);
    billmgr_free(bm);
}

static void session_wrong_password_rejects_without_loop(void **state)
{
    struct billmgr *bm = new_client("not the password", 1, 30000, 8, 0);
    expect_failure(bm, "task", NULL, RT_REJECT, "auth", NULL);
    assert_int_equal(harness_sim_count(sim, "func=auth"), 1);
    assert_int_equal(harness_sim_count(sim, "func=task"), 0);
    assert_int_equal(billmgr_inflight(bm), 0);
    /* The next call tries once more, and only once. */
    expect_failure(bm, "task", NULL, RT_REJECT, "auth", NULL);
    assert_int_equal(harness_sim_count(sim, "func=auth"), 2);
    billmgr_free(bm);
}

/* ---- faults ---- */

static void http_503_is_retry(void **state)
{
    struct billmgr *bm = default_client();
    json_decref(harness_sim_admin_ok(sim, "POST", "/faults",
                                     "{\"error_rate\": 1.0, \"error_status\": 503}"));
    expect_failure(bm, "task", NULL, RT_RETRY, "http", NULL);
    expect_failure(bm, "task.edit", NULL, RT_RETRY, "http", NULL);
    assert_int_equal(harness_sim_count(sim, "outcome=http503"), 2);
    json_decref(harness_sim_admin_ok(sim, "POST", "/faults/reset", NULL));
    struct billmgr_error e;
    assert_int_equal(billmgr_call_sync(bm, "task", NULL, NULL, &e), RT_OK);
    billmgr_free(bm);
}

static void hang_is_timeout_retry(void **state)
{
    struct billmgr *bm = new_client(HARNESS_SIM_PASSWORD, 0, 1000, 8, 0);
    json_decref(harness_sim_admin_ok(sim, "POST", "/faults", "{\"hang_rate\": 1.0}"));
    long long t0 = harness_now_ms();
    expect_failure(bm, "task", NULL, RT_RETRY, "timeout", NULL);
    long long took = harness_now_ms() - t0;
    /* A generous bound: the call must come back, not to a schedule. */
    printf("hung call returned after %lld ms (timeout 1000 ms)\n", took);
    assert_true(took < 10000);
    billmgr_free(bm);
}

static void emulator_down_is_transport_retry(void **state)
{
    struct billmgr *bm = default_client();
    struct billmgr_error e;
    assert_int_equal(billmgr_call_sync(bm, "task", NULL, NULL, &e), RT_OK);
    json_decref(harness_sim_admin_ok(sim, "POST", "/down", NULL));
    expect_failure(bm, "task", NULL, RT_RETRY, "transport", NULL);
    json_decref(harness_sim_admin_ok(sim, "POST", "/up", NULL));
    assert_int_equal(billmgr_call_sync(bm, "task", NULL, NULL, &e), RT_OK);
    billmgr_free(bm);
}

static void answer_over_cap_is_toolarge_retry(void **state)
{
    struct billmgr *bm = default_client();
    size_t big = 200 * 1024;
    char *note = malloc(big + 1);
    assert_non_null(note);
    memset(note, 'n', big);
    note[big] = '\0';
    long id = create_task(bm, "big note", note, HARNESS_SIM_DEPT_A);
    free(note);
    billmgr_free(bm);

    bm = new_client(HARNESS_SIM_PASSWORD, 0, 30000, 8, 64 * 1024);
    struct billmgr_params p;
    billmgr_params_init(&p);
    billmgr_params_addf(&p, "elid", "%ld", id);
    expect_failure(bm, "task.edit", &p, RT_RETRY, "toolarge", NULL);
    billmgr_params_release(&p);
    /* The client is still usable for answers under the cap. */
    struct billmgr_error e;
    assert_int_equal(billmgr_call_sync(bm, "department", NULL, NULL, &e), RT_OK);
    billmgr_free(bm);
}

/* ---- bad answers ---- */

static long status_kb(const char *field)
{
    char line[256];
    long kb = -1;
    size_t n = strlen(field);
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return -1;
    while (fgets(line, sizeof(line), f))
        if (strncmp(line, field, n) == 0 && line[n] == ':')
            kb = strtol(line + n + 1, NULL, 10);
    fclose(f);
    return kb;
}

/* The most a process may have resident while it receives a bad answer:
 * the client buffers at most max_response (4 MiB) of it. */
#define BAD_ANSWER_MAX_RSS_KB (32L * 1024)

/* The probe: this program run again as "it_billmgr --rss-probe URL FUNC
 * ELID TIMEOUT_MS", with the password on its stdin (never in argv). It
 * makes one call in a fresh process, so that its peak RSS (VmHWM) is what
 * a process that receives the answer needs, not what the earlier tests
 * of this one left resident, and writes one line: STATUS TAB TYPE TAB
 * PEAK_KB TAB MESSAGE. */
static int rss_probe(int argc, char **argv)
{
    char password[256], err[256];
    if (argc != 6 || !fgets(password, sizeof(password), stdin))
        return 2;
    password[strcspn(password, "\n")] = '\0';
    struct billmgr_opts o;
    memset(&o, 0, sizeof(o));
    o.url = argv[2];
    o.login = HARNESS_SIM_LOGIN;
    o.password = password;
    o.timeout_ms = strtol(argv[5], NULL, 10);
    o.verify_tls = 1;
    struct billmgr *bm = billmgr_new(&o, err, sizeof(err));
    if (!bm)
        return 2;
    struct billmgr_params p;
    struct billmgr_error e;
    billmgr_params_init(&p);
    billmgr_params_add(&p, "elid", argv[4]);
    json_t *doc = NULL;
    rt_status st = billmgr_call_sync(bm, argv[3], &p, &doc, &e);
    json_decref(doc);
    billmgr_params_release(&p);
    billmgr_free(bm);
    explicit_bzero(password, sizeof(password));
    printf("%d\t%s\t%ld\t%s\n", (int)st, e.type, status_kb("VmHWM"), e.message);
    return 0;
}

/* Runs the probe for one call of func on task id and fills what it saw.
 * Fails the test when it cannot be run or does not answer in 60 s. */
static void run_probe(const char *func, long id, long timeout_ms, rt_status *st,
                      struct billmgr_error *e, long *peak_kb)
{
    char elid[32], timeout[32], line[1024];
    int in[2], out[2];
    snprintf(elid, sizeof(elid), "%ld", id);
    snprintf(timeout, sizeof(timeout), "%ld", timeout_ms);
    if (pipe(in) < 0 || pipe(out) < 0)
        fail_msg("pipe: %s", strerror(errno));
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        fail_msg("fork: %s", strerror(errno));
    if (pid == 0) {
        dup2(in[0], STDIN_FILENO);
        dup2(out[1], STDOUT_FILENO);
        close(in[0]);
        close(in[1]);
        close(out[0]);
        close(out[1]);
        execl("/proc/self/exe", "it_billmgr", "--rss-probe", harness_sim_url(sim), func, elid,
              timeout, (char *)NULL);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    if (write(in[1], HARNESS_SIM_PASSWORD "\n", strlen(HARNESS_SIM_PASSWORD) + 1) < 0)
        fail_msg("cannot hand the probe its password: %s", strerror(errno));
    close(in[1]);
    size_t n = 0;
    long long deadline = harness_now_ms() + 60000;
    for (;;) {
        struct pollfd pfd = {.fd = out[0], .events = POLLIN};
        long long left = deadline - harness_now_ms();
        if (left <= 0 || poll(&pfd, 1, (int)left) <= 0) {
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
            fail_msg("the probe did not answer within 60 s");
        }
        ssize_t k = read(out[0], line + n, sizeof(line) - 1 - n);
        if (k <= 0)
            break;
        n += (size_t)k;
        if (n == sizeof(line) - 1)
            break;
    }
    line[n] = '\0';
    close(out[0]);
    int wstatus;
    waitpid(pid, &wstatus, 0);
    if (!WIFEXITED(wstatus) || WEXITSTATUS(wstatus) != 0)
        fail_msg("the probe failed (status %d): %s", wstatus, line);
    char *f[4];
    char *cur = line;
    for (int i = 0; i < 3; i++) {
        f[i] = cur;
        cur = strchr(cur, '\t');
        if (!cur)
            fail_msg("the probe wrote \"%s\"", line);
        *cur++ = '\0';
    }
    f[3] = cur;
    f[3][strcspn(f[3], "\n")] = '\0';
    *st = (rt_status)atoi(f[0]);
    snprintf(e->type, sizeof(e->type), "%s", f[1]);
    e->object[0] = '\0';
    snprintf(e->message, sizeof(e->message), "%s", f[3]);
    *peak_kb = strtol(f[2], NULL, 10);
}

/* Makes one call of func (on task id when id > 0, with params p, which
 * may be NULL, otherwise) with bm under the emulator's current faults,
 * expects status and type, prints what a report needs; the message must
 * name the call (prefix, NULL = "func: ") and hold want (may be NULL).
 * With measure, the call runs in a fresh process (see rss_probe) with
 * bm's timeout, whose peak RSS must stay under BAD_ANSWER_MAX_RSS_KB. */
static void bad_call(struct billmgr *bm, const char *mode, const char *func, long id,
                     struct billmgr_params *p, rt_status status, const char *type,
                     const char *prefix, const char *want, long measure_timeout_ms)
{
    struct billmgr_error e;
    rt_status st;
    long peak = 0;
    long long t0 = harness_now_ms();
    if (measure_timeout_ms) {
        run_probe(func, id, measure_timeout_ms, &st, &e, &peak);
    } else {
        struct billmgr_params own;
        json_t *doc = (json_t *)1;
        if (id > 0) {
            billmgr_params_init(&own);
            assert_int_equal(billmgr_params_addf(&own, "elid", "%ld", id), 0);
            p = &own;
        }
        st = billmgr_call_sync(bm, func, p, &doc, &e);
        if (id > 0)
            billmgr_params_release(&own);
        if (st != RT_OK)
            assert_null(doc);
        json_decref(st == RT_OK ? doc : NULL);
    }
    long long took = harness_now_ms() - t0;
    remember_error(e.type, e.object, e.message);
    printf("bad answer %-22s %s %s in %lld ms: %s", mode, rt_status_name(st), e.type, took,
           e.message);
    if (measure_timeout_ms)
        printf(" [peak RSS of the process %ld kB]", peak);
    printf("\n");
    if (st != status || strcmp(e.type, type) != 0)
        fail_msg("%s: want %s %s, got %s %s: %s", mode, rt_status_name(status), type,
                 rt_status_name(st), e.type, e.message);
    char own_prefix[64];
    snprintf(own_prefix, sizeof(own_prefix), "%s: ", func);
    if (!prefix)
        prefix = own_prefix;
    if (strncmp(e.message, prefix, strlen(prefix)) != 0)
        fail_msg("%s: the message does not start with \"%s\": %s", mode, prefix, e.message);
    if (want && !strstr(e.message, want))
        fail_msg("%s: the message lacks \"%s\": %s", mode, want, e.message);
    for (const char *c = e.message; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7F)
            fail_msg("%s: a control character in the message", mode);
    if (measure_timeout_ms && (peak <= 0 || peak >= BAD_ANSWER_MAX_RSS_KB))
        fail_msg("%s: the peak RSS was %ld kB (limit %ld kB)", mode, peak, BAD_ANSWER_MAX_RSS_KB);
}

static void set_bad(const char *json)
{
    json_decref(harness_sim_admin_ok(sim, "POST", "/faults", json));
}

static void bad_off(void)
{
    json_decref(harness_sim_admin_ok(sim, "POST", "/faults/bad/off", NULL));
}

static struct billmgr_params *elid_params(struct billmgr_params *p, long id)
{
    billmgr_params_init(p);
    assert_int_equal(billmgr_params_addf(p, "elid", "%ld", id), 0);
    return p;
}

static long task_count_in(long dept)
{
    char path[64];
    snprintf(path, sizeof(path), "/tasks?department=%ld", dept);
    json_t *r = harness_sim_admin_ok(sim, "GET", path, NULL);
    long n = (long)json_array_size(json_object_get(r, "tasks"));
    json_decref(r);
    return n;
}

/* After a bad answer the same client, unchanged, reads the task whole:
 * nothing was lost on the client's side. */
static void healthy_again(struct billmgr *bm, long id, const char *name)
{
    bad_off();
    json_t *doc = view_task(bm, id);
    assert_string_equal(billmgr_text(doc, "name"), name);
    json_decref(doc);
}

static void bad_invalid_json_is_json_retry(void **state)
{
    struct billmgr *bm = default_client();
    struct billmgr_params p;
    long id = create_task(bm, "cut short", NOTE_AWKWARD, HARNESS_SIM_DEPT_A);
    set_bad("{\"bad_answer\": \"invalid_json\"}");
    bad_call(bm, "invalid_json", "task.edit", id, NULL, RT_RETRY, "json", NULL,
             "bytes, it ends early at byte", 0);
    bad_call(bm, "invalid_json (list)", "task", 0, NULL, RT_RETRY, "json", NULL,
             "it begins {\"doc\": {\"elem\": [{\"id\": {\"$\": ", 0);

    /* A write under it: the API made the task, the answer was lost. The
     * caller cannot tell, which is why it retries and searches. */
    long before = task_count_in(HARNESS_SIM_DEPT_A);
    billmgr_params_init(&p);
    billmgr_params_add(&p, "sok", "ok");
    billmgr_params_addf(&p, "department", "%d", HARNESS_SIM_DEPT_A);
    billmgr_params_add(&p, "name", "made under a bad answer");
    bad_call(bm, "invalid_json (create)", "task.edit", 0, &p, RT_RETRY, "json", NULL, NULL, 0);
    billmgr_params_release(&p);
    long made = task_count_in(HARNESS_SIM_DEPT_A) - before;
    printf("invalid_json create: %ld task made, 0 answers read\n", made);
    assert_int_equal(made, 1);
    assert_int_equal(harness_sim_count(sim, "outcome=invalid_json"), 3);
    healthy_again(bm, id, "cut short");
    billmgr_free(bm);
}

static void bad_wrong_shape_is_json_retry(void **state)
{
    struct billmgr *bm = default_client();
    struct billmgr_params p;
    long id = create_task(bm, "Shape", "the note", HARNESS_SIM_DEPT_A);
    /* The variants take turns: doc_array, top_array, elem_string,
     * error_string, fields_numbers, fields_arrays. */
    set_bad("{\"bad_answer\": \"wrong_shape\", \"bad_funcs\": [\"task.edit\"]}");
    static const struct {
        const char *mode, *want;
    } shapes[] = {
        {"wrong_shape:doc_array", "its doc is not an object"},
        {"wrong_shape:top_array", "the answer is not an object"},
        {"wrong_shape:elem_string", "doc.elem is a string, not a list"},
        {"wrong_shape:error_string", "doc.error is a string, not an error"},
        {"wrong_shape:fields_numbers", "doc.id is a number"},
    };
    for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++)
        bad_call(bm, shapes[i].mode, "task.edit", id, NULL, RT_RETRY, "json", NULL, shapes[i].want,
                 0);
    /* Repeated elements where text belongs: an API document still, which
     * the caller's field reader must refuse rather than read as "". */
    json_t *doc = NULL;
    struct billmgr_error e;
    assert_int_equal(billmgr_call_sync(bm, "task.edit", elid_params(&p, id), &doc, &e), RT_OK);
    billmgr_params_release(&p);
    const char *t = "x";
    assert_null(billmgr_text(doc, "name"));
    assert_int_equal(billmgr_text_field(doc, "name", &t), -1);
    assert_int_equal(billmgr_text_field(doc, "note", &t), -1);
    assert_null(t);
    printf("bad answer %-22s ok: billmgr_text(doc, \"name\") = NULL, "
           "billmgr_text_field(doc, \"name\") = -1\n",
           "wrong_shape:fields_arrays");
    json_decref(doc);
    assert_int_equal(harness_sim_count(sim, "outcome=wrong_shape"), 6);
    /* Other functions were not touched. */
    assert_int_equal(billmgr_call_sync(bm, "department", NULL, NULL, &e), RT_OK);
    healthy_again(bm, id, "Shape");
    billmgr_free(bm);
}

static void bad_html_login_is_json_retry(void **state)
{
    struct billmgr *bm = default_client();
    struct billmgr_params p;
    long id = create_task(bm, "walled", "", HARNESS_SIM_DEPT_A);
    set_bad("{\"bad_answer\": \"html_login\"}");
    bad_call(bm, "html_login", "task.edit", id, NULL, RT_RETRY, "json", NULL,
             "answer is not JSON (text/html; charset=utf-8, ", 0);
    /* The login wall kept the write from the API: nothing was made. */
    long before = task_count_in(HARNESS_SIM_DEPT_A);
    billmgr_params_init(&p);
    billmgr_params_add(&p, "sok", "ok");
    billmgr_params_addf(&p, "department", "%d", HARNESS_SIM_DEPT_A);
    billmgr_params_add(&p, "name", "stopped by the wall");
    bad_call(bm, "html_login (create)", "task.edit", 0, &p, RT_RETRY, "json", NULL,
             "a page titled \"BILLmanager - Log in\"", 0);
    billmgr_params_release(&p);
    assert_int_equal(task_count_in(HARNESS_SIM_DEPT_A), before);
    /* In session mode the login itself meets the wall, and says so. */
    struct billmgr *sbm = new_client(HARNESS_SIM_PASSWORD, 1, 30000, 8, 0);
    bad_call(sbm, "html_login (session)", "task", 0, NULL, RT_RETRY, "json",
             "login failed: auth: ", "a page titled \"BILLmanager - Log in\"", 0);
    billmgr_free(sbm);
    healthy_again(bm, id, "walled");
    billmgr_free(bm);
}

static void bad_huge_is_toolarge_retry_in_bounded_memory(void **state)
{
    struct billmgr *bm = default_client();
    long id = create_task(bm, "huge", "", HARNESS_SIM_DEPT_A);
    set_bad("{\"bad_answer\": \"huge\"}");
    bad_call(bm, "huge (Content-Length)", "task.edit", id, NULL, RT_RETRY, "toolarge", NULL,
             "answer of 104857600 bytes is larger than billmanager.max_response (4194304 bytes)",
             30000);
    set_bad("{\"huge_chunked\": true}");
    bad_call(bm, "huge (chunked)", "task.edit", id, NULL, RT_RETRY, "toolarge", NULL,
             "answer is larger than billmanager.max_response (4194304 bytes)", 30000);
    /* The same in this process, for the record and for the sanitizers. */
    bad_call(bm, "huge (chunked, here)", "task.edit", id, NULL, RT_RETRY, "toolarge", NULL, NULL,
             0);
    assert_int_equal(harness_sim_count(sim, "outcome=huge"), 3);
    healthy_again(bm, id, "huge");
    billmgr_free(bm);
}

static void bad_trickle_ends_within_the_timeout(void **state)
{
    /* A 4 s timeout: the body's rate is checked from 1 s after its first
     * byte, and one byte a second is far below it. */
    struct billmgr *bm = new_client(HARNESS_SIM_PASSWORD, 0, 4000, 8, 0);
    long id = create_task(bm, "trickled", NOTE_AWKWARD, HARNESS_SIM_DEPT_A);
    set_bad("{\"bad_answer\": \"trickle\"}");
    bad_call(bm, "trickle (1 byte/s)", "task.edit", id, NULL, RT_RETRY, "timeout", NULL,
             "answer arrives too slowly: ", 4000);
    /* Slower than the rate window: the total timeout ends it. */
    set_bad("{\"trickle_interval_s\": 10}");
    bad_call(bm, "trickle (1 byte/10 s)", "task.edit", id, NULL, RT_RETRY, "timeout", NULL,
             "Operation timed out after ", 4000);
    bad_call(bm, "trickle (1 byte/10 s, here)", "task.edit", id, NULL, RT_RETRY, "timeout", NULL,
             "Operation timed out after ", 0);
    assert_int_equal(harness_sim_count(sim, "outcome=trickle"), 3);
    healthy_again(bm, id, "trickled");
    billmgr_free(bm);
}

static void bad_reset_is_transport_retry(void **state)
{
    struct billmgr *bm = default_client();
    long id = create_task(bm, "reset", NOTE_AWKWARD, HARNESS_SIM_DEPT_A);
    set_bad("{\"bad_answer\": \"reset\", \"reset_after\": 40}");
    bad_call(bm, "reset", "task.edit", id, NULL, RT_RETRY, "transport", NULL,
             "answer cut off after 40 of ", 0);
    assert_int_equal(harness_sim_count(sim, "outcome=reset"), 1);
    healthy_again(bm, id, "reset");
    billmgr_free(bm);
}

/* ---- concurrency ---- */

struct async_state {
    struct billmgr *bm;
    int completed;
    int ok;
    int extra_started;
    long id;
};

static void async_done(void *arg, const struct billmgr_reply *r)
{
    struct async_state *s = arg;
    s->completed++;
    if (r->status == RT_OK && r->doc && billmgr_text(r->doc, "name"))
        s->ok++;
    else
        remember_error(r->err_type, r->err_object, r->message);
    /* Callbacks may start calls: the first ten each queue one more. */
    if (s->extra_started < 10) {
        struct billmgr_params p;
        billmgr_params_init(&p);
        billmgr_params_addf(&p, "elid", "%ld", s->id);
        s->extra_started++;
        if (billmgr_call(s->bm, "task.edit", &p, async_done, s) < 0)
            fail_msg("billmgr_call from a callback failed");
        billmgr_params_release(&p);
    }
}

static void concurrent_calls_respect_max_inflight(void **state)
{
    enum { CALLS = 50, MAX_INFLIGHT = 8 };
    struct async_state s = {0};
    s.bm = new_client(HARNESS_SIM_PASSWORD, 0, 30000, MAX_INFLIGHT, 0);
    s.id = create_task(s.bm, "concurrent", "", HARNESS_SIM_DEPT_A);
    json_decref(harness_sim_admin_ok(sim, "POST", "/calls/reset", NULL));
    json_decref(harness_sim_admin_ok(sim, "POST", "/faults", "{\"latency_ms\": 50}"));

    struct billmgr_params p;
    billmgr_params_init(&p);
    billmgr_params_addf(&p, "elid", "%ld", s.id);
    for (int i = 0; i < CALLS; i++)
        assert_int_equal(billmgr_call(s.bm, "task.edit", &p, async_done, &s), 0);
    billmgr_params_release(&p);
    assert_int_equal(billmgr_inflight(s.bm), CALLS);

    /* The daemon's loop in miniature. The sockets curl watches are the
     * connections in use: never more than max_inflight of them. */
    struct pollfd fds[64];
    size_t peak = 0;
    long long deadline = harness_now_ms() + 60000;
    while (s.completed < CALLS + 10) {
        size_t n = billmgr_pollfds(s.bm, fds, 64);
        assert_true(n <= 64);
        if (n > peak)
            peak = n;
        assert_true(n <= MAX_INFLIGHT);
        int timeout = billmgr_timeout_ms(s.bm);
        if (timeout < 0 || timeout > 200)
            timeout = 200;
        int rc = poll(fds, (nfds_t)n, timeout);
        assert_true(rc >= 0);
        billmgr_handle(s.bm, fds, n);
        if (harness_now_ms() > deadline)
            fail_msg("only %d of %d calls completed within 60 s", s.completed, CALLS + 10);
    }
    assert_int_equal(s.ok, CALLS + 10);
    assert_int_equal(billmgr_inflight(s.bm), 0);
    printf("peak sockets in use: %zu (max_inflight %d)\n", peak, MAX_INFLIGHT);
    assert_true(peak > 1); /* the calls did overlap */
    assert_int_equal(harness_sim_count(sim, "func=task.edit&outcome=ok"), CALLS + 10);
    billmgr_free(s.bm);
}

static void session_expiry_under_load_logs_in_once(void **state)
{
    enum { CALLS = 20 };
    struct async_state s = {0};
    s.bm = new_client(HARNESS_SIM_PASSWORD, 1, 30000, 8, 0);
    s.id = create_task(s.bm, "session load", "", HARNESS_SIM_DEPT_A);
    s.extra_started = 10; /* no calls from callbacks here */
    json_decref(harness_sim_admin_ok(sim, "POST", "/sessions/expire", NULL));
    json_decref(harness_sim_admin_ok(sim, "POST", "/faults", "{\"latency_ms\": 20}"));

    struct billmgr_params p;
    billmgr_params_init(&p);
    billmgr_params_addf(&p, "elid", "%ld", s.id);
    for (int i = 0; i < CALLS; i++)
        assert_int_equal(billmgr_call(s.bm, "task.edit", &p, async_done, &s), 0);
    billmgr_params_release(&p);

    struct pollfd fds[64];
    long long deadline = harness_now_ms() + 60000;
    while (s.completed < CALLS) {
        size_t n = billmgr_pollfds(s.bm, fds, 64);
        assert_true(n <= 8);
        int timeout = billmgr_timeout_ms(s.bm);
        if (timeout < 0 || timeout > 200)
            timeout = 200;
        assert_true(poll(fds, (nfds_t)n, timeout) >= 0);
        billmgr_handle(s.bm, fds, n);
        if (harness_now_ms() > deadline)
            fail_msg("only %d of %d calls completed within 60 s", s.completed, CALLS);
    }
    assert_int_equal(s.ok, CALLS);
    /* One login before the expiry, one after it, however many calls saw
     * the expired session. */
    assert_int_equal(harness_sim_count(sim, "func=auth"), 2);
    assert_int_equal(harness_sim_count(sim, "func=task.edit&outcome=ok"), CALLS + 1);
    billmgr_free(s.bm);
}

/* ---- the harness itself: restart, several emulators ---- */

static void restart_keeps_tasks_and_url(void **state)
{
    struct billmgr *bm = default_client();
    long id = create_task(bm, "survives a restart", "kept", HARNESS_SIM_DEPT_A);
    char url[256];
    snprintf(url, sizeof(url), "%s", harness_sim_url(sim));

    /* A second emulator alongside: its own ports and its own data. */
    const char *extra[] = {"--page-size", "100", NULL};
    struct harness_sim *other = harness_sim_start(NULL, extra);
    assert_int_not_equal(harness_sim_port(other), harness_sim_port(sim));
    assert_string_not_equal(harness_sim_dir(other), harness_sim_dir(sim));
    char path[64];
    snprintf(path, sizeof(path), "/tasks/%ld", id);
    assert_int_equal(harness_sim_admin(other, "GET", path, NULL, NULL), 404);
    harness_sim_free(other);

    harness_sim_restart(sim);
    assert_string_equal(harness_sim_url(sim), url);
    /* The same client: its cached connection died with the old process. */
    json_t *doc = view_task(bm, id);
    assert_string_equal(billmgr_text(doc, "name"), "survives a restart");
    json_decref(doc);

    harness_sim_kill(sim);
    expect_failure(bm, "task", NULL, RT_RETRY, "transport", NULL);
    harness_sim_restart(sim);
    doc = view_task(bm, id);
    assert_string_equal(billmgr_text(doc, "note"), "kept");
    json_decref(doc);
    billmgr_free(bm);
}

/* ---- secrets ---- */

static void assert_no_password(const char *where, const char *text)
{
    if (strstr(text, HARNESS_SIM_PASSWORD) || strstr(text, PASSWORD_ENCODED) ||
        strstr(text, "w:rd&") || strstr(text, "rd%26"))
        fail_msg("the password appears in %s", where);
}

static void password_never_leaks(void **state)
{
    /* Some traffic of both kinds, so that the log is not empty. */
    struct billmgr *bm = default_client();
    long id = create_task(bm, "secret check", "", HARNESS_SIM_DEPT_A);
    json_decref(view_task(bm, id));
    billmgr_free(bm);
    bm = new_client(HARNESS_SIM_PASSWORD, 1, 30000, 8, 0);
    json_decref(view_task(bm, id));
    billmgr_free(bm);

    assert_true(strlen(seen_errors) > 0);
    assert_no_password("an error string", seen_errors);

    json_t *calls = harness_sim_admin_ok(sim, "GET", "/calls", NULL);
    assert_true(json_array_size(json_object_get(calls, "calls")) >= 4);
    char *text = json_dumps(calls, 0); /* UTF-8 kept as is */
    assert_non_null(text);
    assert_no_password("the emulator's call log", text);
    free(text);
    json_decref(calls);

    /* The emulator's own log file, which saw every request. */
    char path[1024];
    snprintf(path, sizeof(path), "%s/sim.log", harness_sim_dir(sim));
    FILE *f = fopen(path, "r");
    if (f) {
        char line[4096];
        while (fgets(line, sizeof(line), f))
            assert_no_password("the emulator's log", line);
        fclose(f);
    }
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--rss-probe") == 0)
        return rss_probe(argc, argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(task_text_round_trips, test_setup),
        cmocka_unit_test_setup(api_errors_are_rejects, test_setup),
        cmocka_unit_test_setup(list_pages_through_2500_tasks, test_setup),
        cmocka_unit_test_setup(list_stops_when_asked, test_setup),
        cmocka_unit_test_setup(session_relogs_once_after_expiry, test_setup),
        cmocka_unit_test_setup(session_wrong_password_rejects_without_loop, test_setup),
        cmocka_unit_test_setup(http_503_is_retry, test_setup),
        cmocka_unit_test_setup(hang_is_timeout_retry, test_setup),
        cmocka_unit_test_setup(emulator_down_is_transport_retry, test_setup),
        cmocka_unit_test_setup(answer_over_cap_is_toolarge_retry, test_setup),
        cmocka_unit_test_setup(bad_huge_is_toolarge_retry_in_bounded_memory, test_setup),
        cmocka_unit_test_setup(bad_trickle_ends_within_the_timeout, test_setup),
        cmocka_unit_test_setup(bad_invalid_json_is_json_retry, test_setup),
        cmocka_unit_test_setup(bad_wrong_shape_is_json_retry, test_setup),
        cmocka_unit_test_setup(bad_html_login_is_json_retry, test_setup),
        cmocka_unit_test_setup(bad_reset_is_transport_retry, test_setup),
        cmocka_unit_test_setup(concurrent_calls_respect_max_inflight, test_setup),
        cmocka_unit_test_setup(session_expiry_under_load_logs_in_once, test_setup),
        cmocka_unit_test_setup(restart_keeps_tasks_and_url, test_setup),
        cmocka_unit_test_setup(password_never_leaks, test_setup),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
