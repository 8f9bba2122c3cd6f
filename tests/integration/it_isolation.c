/*
 * it_isolation.c - the appliers with several clients, a slow API and
 * hostile peers, end to end (issue 13, daemon side; issue 9, case 7 for
 * remotetaskctl taskevent).
 *
 * A real RabbitMQ node (scripts/test's private node), BILLmanager
 * emulators and remotetaskd processes (tests/integration/harness_daemon.h).
 *
 * 1. Turns and no requeue: three clients, each with 100 task messages
 *    queued before the server starts, a target API that answers every
 *    task.edit after 200 ms, one server daemon with max_inflight 4 and
 *    prefetch 20 (60 deliveries may be in hand at once, which the old
 *    applier's 2 x prefetch slots could not hold: it requeued the rest,
 *    which came straight back). Every task is applied once (lost 0,
 *    duplicated 0), the daemon requeued nothing and the broker redelivered
 *    nothing, and each client's first task is created within two rounds of
 *    max_inflight of the others' (the target's ids give the order; one
 *    round for consumers registered one after the other).
 * 2. Hostile peers: client B's AMQP user publishes a state for client A's
 *    task through A's retry exchange (key "reverse") and straight to
 *    remotetask.reverse with A's key (once more claiming the server's
 *    login in x-rt-user): nothing is written to A's source and each is
 *    dead-lettered as unauthorized. A dead letter B plants in A's forward
 *    dead-letter queue is refused by `dlq replay` on the server. A task
 *    message with seq 2^62 from A's own user is dead-lettered (kind
 *    "seq"), and A's next real change of that task is applied.
 * 3. A full disk: with state_dir on a 1 MiB tmpfs that is full,
 *    `remotetaskctl --command taskevent` exits non-zero saying "no space
 *    left" (BILLmanager's handler must see it), and records the event
 *    once there is room again. Needs root, as scripts/test has.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <jansson.h>

#include "broker.h"
#include "buf.h"
#include "codec.h"
#include "harness.h"
#include "harness_daemon.h"
#include "harness_flow.h"
#include "harness_rabbit.h"
#include "harness_sim.h"
#include "store.h"

/* Generous for a loaded 2-core machine with ASan; every wait ends as soon
 * as its condition holds. */
#define DEADLINE_MS 180000

#define FAIR_CLIENTS  3
#define FAIR_TASKS    100
#define FAIR_INFLIGHT 4
#define FAIR_PREFETCH 20
#define FAIR_LATENCY  200
#define THIRD_DEPT    13

static struct harness_scenario *current;
static char third_id[96], third_user[96];
static char mounted[PATH_MAX];

static int teardown(void **state)
{
    (void)state;
    if (current && third_id[0]) {
        char q[BROKER_NAME_MAX];
        for (int dir = BROKER_FORWARD; dir <= BROKER_REVERSE; dir++) {
            if (broker_queue_name(q, sizeof(q), (enum broker_dir)dir, third_id) == 0)
                harness_rabbit_delete_queue(q);
            if (broker_dead_queue_name(q, sizeof(q), (enum broker_dir)dir, third_id) == 0)
                harness_rabbit_delete_queue(q);
            for (unsigned tier = 0; tier < BROKER_RETRY_TIERS; tier++)
                if (broker_retry_queue_name(q, sizeof(q), (enum broker_dir)dir, third_id, tier) ==
                    0)
                    harness_rabbit_delete_queue(q);
        }
        harness_rabbit_delete_user(third_user);
    }
    third_id[0] = third_user[0] = '\0';
    harness_scenario_free(current);
    current = NULL;
    if (mounted[0]) {
        umount2(mounted, MNT_DETACH);
        mounted[0] = '\0';
    }
    return 0;
}

#define EXPECT(s, cond, ...)                                                                       \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            if (s) {                                                                               \
                harness_scenario_print_logs(s);                                                    \
                (s)->keep = 1;                                                                     \
            }                                                                                      \
            fail_msg(__VA_ARGS__);                                                                 \
        }                                                                                          \
    } while (0)

/* ---- a broker connection of the test's own ------------------------------ */

struct tconn {
    struct broker *b;
    int acked, failed;
};

static void tconn_confirm(void *arg, uint64_t tag, enum broker_fate fate)
{
    struct tconn *t = arg;
    (void)tag;
    if (fate == BROKER_ACKED)
        t->acked++;
    else
        t->failed++;
}

static void tconn_delivery(void *arg, const struct broker_delivery *d)
{
    (void)arg;
    (void)d;
}

static void tconn_open(struct tconn *t, const char *user, const char *pass)
{
    struct broker_opts o;
    char err[512];
    memset(t, 0, sizeof(*t));
    harness_rabbit_opts(&o, user, pass);
    o.on_confirm = tconn_confirm;
    o.on_delivery = tconn_delivery;
    o.cb_arg = t;
    t->b = broker_new(&o, err, sizeof(err));
    if (!t->b)
        fail_msg("broker_new: %s", err);
    if (broker_connect(t->b) != RT_OK)
        fail_msg("broker_connect as %s: %s", user, broker_strerror(t->b));
}

/* Publishes and waits for the broker's verdict: 1 when it took the
 * message, 0 when it refused or returned it. */
static int tconn_publish(struct tconn *t, const char *exchange, const char *key, const char *id,
                         const struct broker_header *h, size_t nh, const struct buf *body)
{
    struct broker_props p;
    memset(&p, 0, sizeof(p));
    p.message_id = id;
    p.headers = h;
    p.n_headers = nh;
    int acked = t->acked, failed = t->failed;
    if (broker_publish(t->b, exchange, key, &p, body->data, body->len, NULL) != RT_OK)
        fail_msg("publishing %s: %s", id, broker_strerror(t->b));
    long long deadline = harness_now_ms() + 10000;
    while (t->acked == acked && t->failed == failed) {
        if (harness_now_ms() > deadline)
            fail_msg("no confirm for %s", id);
        struct pollfd pfd = {.fd = broker_fd(t->b), .events = POLLIN};
        if (!broker_wants_read_now(t->b))
            poll(&pfd, 1, 100);
        if (broker_process(t->b) != RT_OK)
            fail_msg("connection lost publishing %s: %s", id, broker_strerror(t->b));
    }
    return t->acked > acked;
}

/* ---- messages ----------------------------------------------------------- */

static void encode(const struct codec_msg *m, struct buf *out)
{
    char err[256];
    buf_init(out, CODEC_MAX_BODY);
    if (codec_encode(m, out, err, sizeof(err)) < 0)
        fail_msg("codec_encode: %s", err);
}

static void task_body(struct buf *out, const char *client, long long task, uint64_t seq, long dept,
                      const char *name)
{
    struct codec_msg m;
    codec_msg_init(&m, CODEC_TASK);
    m.client = (char *)client;
    m.task = task;
    m.seq = seq;
    m.ts = 1;
    m.fwd.department = dept;
    m.fwd.name = (char *)name;
    m.fwd.type = "manual";
    m.fwd.note = "queued by it_isolation";
    m.fwd.deadline = "";
    m.fwd.item = "";
    m.fwd.account = "";
    m.fwd.status = 0;
    encode(&m, out);
}

/* ---- what the emulators and the daemons say -------------------------- */

/* The target tasks of dept whose origin is client: how many source tasks
 * have one, how many copies beyond one there are, and the smallest target
 * id (0 when none). */
struct origin_count {
    const char *client;
    size_t want;
    size_t applied;
    size_t duplicated;
    long long first_id;
};

static int origin_done(json_t *tasks, void *arg)
{
    struct origin_count *c = arg;
    static unsigned char seen[FAIR_TASKS + 1];
    size_t i;
    json_t *t;
    memset(seen, 0, sizeof(seen));
    c->applied = c->duplicated = 0;
    c->first_id = 0;
    json_array_foreach(tasks, i, t)
    {
        long long src =
            harness_flow_note_origin(json_string_value(json_object_get(t, "note")), c->client);
        if (src <= 0 || src > FAIR_TASKS)
            continue;
        long long id = json_integer_value(json_object_get(t, "id"));
        if (!c->first_id || id < c->first_id)
            c->first_id = id;
        if (seen[src]++)
            c->duplicated++;
        else
            c->applied++;
    }
    return c->applied >= c->want;
}

/* How many target ids in all of the departments are below id. */
static size_t rank_of(struct harness_sim *sim, const long *depts, size_t n, long long id)
{
    size_t below = 0;
    for (size_t d = 0; d < n; d++) {
        json_t *tasks = harness_sim_tasks(sim, depts[d]);
        size_t i;
        json_t *t;
        json_array_foreach(tasks, i, t)
        {
            if (json_integer_value(json_object_get(t, "id")) < id)
                below++;
        }
        json_decref(tasks);
    }
    return below;
}

/* GET on the node's management API as the harness's administrator: the
 * parsed answer (new reference), or NULL when it did not answer 200. */
static size_t mgmt_write(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    return buf_append(userdata, ptr, size * nmemb) < 0 ? 0 : size * nmemb;
}

static json_t *mgmt_get(const char *path)
{
    char url[1024], creds[512];
    const char *file = harness_env("RT_RABBIT_MGMT_CREDENTIALS");
    FILE *f = fopen(file, "re");
    if (!f || !fgets(creds, sizeof(creds), f))
        fail_msg("cannot read the management credentials %s", file);
    fclose(f);
    creds[strcspn(creds, "\r\n")] = '\0';
    snprintf(url, sizeof(url), "http://127.0.0.1:%s%s", harness_env("RT_RABBIT_MGMT_PORT"), path);
    struct buf answer;
    buf_init(&answer, 1024 * 1024);
    CURL *e = curl_easy_init();
    if (!e)
        fail_msg("out of memory");
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_PROXY, "");
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 10000L);
    curl_easy_setopt(e, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
    curl_easy_setopt(e, CURLOPT_USERPWD, creds);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, mgmt_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &answer);
    long code = 0;
    CURLcode res = curl_easy_perform(e);
    if (res == CURLE_OK)
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &code);
    curl_easy_cleanup(e);
    explicit_bzero(creds, sizeof(creds));
    json_t *doc = NULL;
    if (res == CURLE_OK && code == 200 && buf_append(&answer, "", 0) == 0)
        doc = json_loads(answer.data, 0, NULL);
    buf_release(&answer);
    return doc;
}

/* The broker's count of a queue's redeliveries, read once its statistics
 * show acks for all of want messages (they lag by a statistics interval):
 * -1 when they never do within the deadline. */
static long long queue_redelivered(const char *queue, long long want)
{
    char path[512];
    snprintf(path, sizeof(path), "/api/queues/%%2F/%s", queue);
    long long deadline = harness_now_ms() + 30000;
    for (;;) {
        json_t *q = mgmt_get(path);
        json_t *stats = json_object_get(q, "message_stats");
        long long ack = json_integer_value(json_object_get(stats, "ack"));
        long long redeliver = json_integer_value(json_object_get(stats, "redeliver"));
        long long messages = json_integer_value(json_object_get(q, "messages"));
        json_decref(q);
        if (ack >= want && messages == 0)
            return redeliver;
        if (harness_now_ms() > deadline)
            return -1;
        poll(NULL, 0, 200);
    }
}

/* The letters `dlq list --json` shows for task with kind (NULL: any), or,
 * when want_id is not NULL, with that id (an untrusted letter shows no
 * task: its headers are anyone's): how many, and the id of the first in
 * id (idlen bytes). */
static int letters(struct harness_scenario *s, const char *conf, long long task, const char *kind,
                   const char *want_id, char *id, size_t idlen)
{
    char *out;
    int rc = harness_ctl_list(conf, &out, "--command", "dlq", "list", "--json", (const char *)NULL);
    json_t *arr = json_loads(out, 0, NULL);
    EXPECT(s, rc == 0 && json_is_array(arr), "dlq list --json exited %d with:\n%s", rc, out);
    free(out);
    int n = 0;
    size_t i;
    json_t *l;
    json_array_foreach(arr, i, l)
    {
        const char *lid = json_string_value(json_object_get(l, "id"));
        if (want_id ? !lid || strcmp(lid, want_id) != 0
                    : json_integer_value(json_object_get(l, "task")) != task)
            continue;
        const char *k = json_string_value(json_object_get(l, "kind"));
        if (kind && (!k || strcmp(k, kind) != 0))
            continue;
        if (!n++ && id)
            snprintf(id, idlen, "%s", json_string_value(json_object_get(l, "id")));
        printf("  letter %s: kind %s, trusted %s, reason \"%s\"\n",
               json_string_value(json_object_get(l, "id")), k ? k : "?",
               json_is_true(json_object_get(l, "trusted")) ? "yes" : "no",
               json_string_value(json_object_get(l, "reason")));
    }
    json_decref(arr);
    return n;
}

static int wait_letters(struct harness_scenario *s, const char *conf, long long task,
                        const char *kind, const char *want_id, int want, char *id, size_t idlen)
{
    long long deadline = harness_now_ms() + 60000;
    int n;
    while ((n = letters(s, conf, task, kind, want_id, id, idlen)) < want &&
           harness_now_ms() < deadline)
        poll(NULL, 0, 300);
    return n;
}

static json_t *sim_task(struct harness_sim *sim, long long id)
{
    char path[64];
    snprintf(path, sizeof(path), "/tasks/%lld", id);
    return harness_sim_admin_ok(sim, "GET", path, NULL);
}

/* ---- 1. turns across clients, no requeue -------------------------------- */

static void test_turns_without_requeue(void **state)
{
    (void)state;
    struct harness_scenario_opts o = {
        .other_client = 1, .max_inflight = FAIR_INFLIGHT, .prefetch = FAIR_PREFETCH};
    struct harness_scenario *s = harness_scenario_new("itiso", &o, &current);
    snprintf(third_id, sizeof(third_id), "%sthird", s->client_id);
    snprintf(third_user, sizeof(third_user), "%s-third", s->client_user);
    harness_rabbit_adduser(third_user, s->amqp_password);
    char entry[512];
    snprintf(entry, sizeof(entry),
             ",\n    { id = \"%s\"; amqp_user = \"%s\"; department = %d; }\n  );\n};\n", third_id,
             third_user, THIRD_DEPT);
    harness_config_replace(s->server_conf, "\n  );\n};\n", entry);
    json_decref(harness_sim_admin_ok(
        s->dst, "POST", "/seed", "{\"departments\": [{\"id\": 13, \"name\": \"Reseller C\"}]}"));
    char faults[128];
    snprintf(faults, sizeof(faults), "{\"latency_ms\": %d, \"funcs\": [\"task.edit\"]}",
             FAIR_LATENCY);
    json_decref(harness_sim_admin_ok(s->dst, "POST", "/faults", faults));

    const char *ids[FAIR_CLIENTS] = {s->client_id, s->other_id, third_id};
    const char *users[FAIR_CLIENTS] = {s->client_user, s->other_user, third_user};
    const long depts[FAIR_CLIENTS] = {s->dst_dept, HARNESS_SIM_DEPT_A, THIRD_DEPT};

    /* The topology, then 100 queued task messages per client, each
     * published by its client's user: all of them wait when the server
     * starts. */
    struct tconn t;
    tconn_open(&t, s->server_user, s->amqp_password);
    assert_int_equal(broker_declare(t.b, ids, FAIR_CLIENTS), RT_OK);
    broker_free(t.b);
    for (int c = 0; c < FAIR_CLIENTS; c++) {
        tconn_open(&t, users[c], s->amqp_password);
        for (long long task = 1; task <= FAIR_TASKS; task++) {
            struct buf body;
            char name[64], mid[128];
            snprintf(name, sizeof(name), "queued task %lld", task);
            snprintf(mid, sizeof(mid), "%s:%lld:1", ids[c], task);
            task_body(&body, ids[c], task, 1, depts[c], name);
            EXPECT(s, tconn_publish(&t, BROKER_EXCHANGE_FORWARD, ids[c], mid, NULL, 0, &body),
                   "the broker refused task %lld of client %s", task, ids[c]);
            buf_release(&body);
        }
        broker_free(t.b);
    }

    long long started = harness_now_ms();
    harness_daemon_start(s->server);
    struct origin_count counts[FAIR_CLIENTS];
    for (int c = 0; c < FAIR_CLIENTS; c++) {
        counts[c] = (struct origin_count){.client = ids[c], .want = FAIR_TASKS};
        int met = 0;
        json_decref(
            harness_wait_tasks(s->dst, depts[c], origin_done, &counts[c], DEADLINE_MS, &met));
        EXPECT(s, met, "client %s: %zu of %d tasks applied", ids[c], counts[c].applied, FAIR_TASKS);
    }
    long long took = harness_now_ms() - started;

    /* Settled: no copy arrives late. */
    char q[BROKER_NAME_MAX];
    long long redelivered = 0;
    for (int c = 0; c < FAIR_CLIENTS; c++) {
        assert_int_equal(broker_queue_name(q, sizeof(q), BROKER_FORWARD, ids[c]), 0);
        long long r = queue_redelivered(q, FAIR_TASKS);
        EXPECT(s, r >= 0, "the statistics of %s never showed its %d acks", q, FAIR_TASKS);
        redelivered += r;
    }
    for (int c = 0; c < FAIR_CLIENTS; c++) {
        int met = 0;
        json_decref(harness_wait_tasks(s->dst, depts[c], origin_done, &counts[c], 0, &met));
    }
    struct harness_status st;
    harness_daemon_status(s->server, &st);
    json_t *requeued = json_object_get(json_object_get(st.doc, "errors"), "requeued");
    EXPECT(s, json_is_integer(requeued), "status --json has no errors.requeued:\n%s", st.output);
    long long nrequeued = json_integer_value(requeued);
    harness_status_release(&st);

    size_t worst = 0;
    for (int c = 0; c < FAIR_CLIENTS; c++) {
        size_t rank = rank_of(s->dst, depts, FAIR_CLIENTS, counts[c].first_id);
        if (rank > worst)
            worst = rank;
        printf("turns: client %s sent=%d applied=%zu lost=%zu duplicated=%zu first created "
               "as number %zu of %d\n",
               ids[c], FAIR_TASKS, counts[c].applied, FAIR_TASKS - counts[c].applied,
               counts[c].duplicated, rank + 1, FAIR_CLIENTS * FAIR_TASKS);
    }
    printf("turns: %d deliveries in %lld ms, max_inflight %d, prefetch %d per queue, "
           "requeued=%lld redelivered=%lld\n",
           FAIR_CLIENTS * FAIR_TASKS, took, FAIR_INFLIGHT, FAIR_PREFETCH, nrequeued, redelivered);
    for (int c = 0; c < FAIR_CLIENTS; c++) {
        EXPECT(s, counts[c].applied == FAIR_TASKS, "client %s lost %zu tasks", ids[c],
               FAIR_TASKS - counts[c].applied);
        EXPECT(s, counts[c].duplicated == 0, "client %s has %zu duplicates", ids[c],
               counts[c].duplicated);
    }
    EXPECT(s, nrequeued == 0, "the server requeued %lld deliveries", nrequeued);
    EXPECT(s, redelivered == 0, "the broker redelivered %lld messages", redelivered);
    /* Turns, not arrival order: with one queue drained first, the last
     * client's first task would be created as number 201. The bound is the
     * max_inflight in hand when a client's first delivery arrived, one turn
     * of each client, and one more round of max_inflight: the daemon
     * registers its consumers one after the other, and on a loaded machine
     * the last consume-ok can land after the first round has been
     * dispatched (a run at load average 10 saw number 8). */
    EXPECT(s, worst < 2 * FAIR_INFLIGHT + FAIR_CLIENTS,
           "a client's first task was created as number %zu, more than two rounds of "
           "max_inflight %d after the others' (turns broken)",
           worst + 1, FAIR_INFLIGHT);
    harness_scenario_stop(s);
}

/* ---- 2. hostile peers --------------------------------------------------- */

static int named(json_t *tasks, void *arg)
{
    const char **want = arg; /* {origin client, source task as text, name} */
    size_t i;
    json_t *t;
    json_array_foreach(tasks, i, t)
    {
        const char *note = json_string_value(json_object_get(t, "note"));
        const char *name = json_string_value(json_object_get(t, "name"));
        if (harness_flow_note_origin(note, want[0]) == atoll(want[1]) &&
            (!want[2] || (name && strcmp(name, want[2]) == 0)))
            return 1;
    }
    return 0;
}

static void test_hostile_peers(void **state)
{
    (void)state;
    struct harness_scenario_opts o = {.other_client = 1};
    struct harness_scenario *s = harness_scenario_new("itiso", &o, &current);
    char *out = NULL, elid[32], mid[128], id[256];
    harness_daemon_start(s->server);
    harness_daemon_start(s->client);

    /* A task of client A on the target. */
    json_t *r = harness_sim_admin_ok(s->src, "POST", "/tasks",
                                     "{\"department\": 3, \"name\": \"Install the OS\", "
                                     "\"type\": \"manual\", \"note\": \"first words\"}");
    long long x = json_integer_value(json_object_get(r, "id"));
    json_decref(r);
    snprintf(elid, sizeof(elid), "%lld", x);
    harness_record_event_list(s->client_state, s->client_id, (int64_t[]){x}, 1);
    harness_daemon_wake(s->client, 0);
    const char *want[] = {s->client_id, elid, NULL};
    int met = 0;
    json_decref(harness_wait_tasks(s->dst, s->dst_dept, named, want, DEADLINE_MS, &met));
    EXPECT(s, met, "task %lld never reached the target", x);

    /* States for A's task from B's user: through A's retry exchange, to
     * the reverse exchange with A's key, and once more claiming the
     * server's login in x-rt-user. */
    long src_writes = harness_sim_count(s->src, "func=task.edit&write=1");
    struct tconn b;
    tconn_open(&b, s->other_user, s->amqp_password);
    char *forged_notes[] = {"forged by another client"};
    struct codec_msg m;
    codec_msg_init(&m, CODEC_STATE);
    m.client = s->client_id;
    m.task = x;
    m.seq = 1000;
    m.ts = 1;
    m.state.status = 2;
    m.state.notes = forged_notes;
    m.state.nnotes = 1;
    m.state.fwd_seq = 1000;
    struct buf body;
    encode(&m, &body);
    char retry_x[BROKER_NAME_MAX];
    assert_int_equal(broker_retry_exchange(retry_x, sizeof(retry_x), s->client_id), 0);
    struct broker_header claim[] = {{"x-rt-user", BROKER_HEADER_STR, s->server_user, 0}};
    snprintf(mid, sizeof(mid), "%s:%lld:r1000", s->client_id, x);
    EXPECT(s, tconn_publish(&b, retry_x, "reverse", mid, NULL, 0, &body),
           "the broker refused the state through %s", retry_x);
    EXPECT(s, tconn_publish(&b, BROKER_EXCHANGE_REVERSE, s->client_id, mid, NULL, 0, &body),
           "the broker refused the state to %s", BROKER_EXCHANGE_REVERSE);
    EXPECT(s, tconn_publish(&b, retry_x, "reverse", mid, claim, 1, &body),
           "the broker refused the state claiming the server's login");
    buf_release(&body);
    printf("hostile: 3 states for task %lld of %s published by %s\n", x, s->client_id,
           s->other_user);
    int n = wait_letters(s, s->client_conf, x, "unauthorized", NULL, 3, NULL, 0);
    EXPECT(s, n == 3, "%d of the 3 forged states were dead-lettered as unauthorized", n);
    json_t *src = sim_task(s->src, x);
    long long status = json_integer_value(json_object_get(src, "status"));
    const char *note = json_string_value(json_object_get(src, "note"));
    int forged_in = note && strstr(note, "forged") != NULL;
    json_decref(src);
    long writes = harness_sim_count(s->src, "func=task.edit&write=1") - src_writes;
    printf("hostile: forged states: %d dead-lettered as unauthorized, %ld writes to the source, "
           "status %lld\n",
           n, writes, status);
    EXPECT(s, writes == 0 && status == 0 && !forged_in,
           "a forged state reached the source: %ld writes, status %lld", writes, status);

    /* A dead letter B plants in A's forward dead-letter queue, holding a
     * task message of A with seq 2^62: the server's dlq replay refuses it. */
    char dead_x[BROKER_NAME_MAX], fq[BROKER_NAME_MAX];
    assert_int_equal(broker_dead_exchange(dead_x, sizeof(dead_x), s->client_id), 0);
    assert_int_equal(broker_queue_name(fq, sizeof(fq), BROKER_FORWARD, s->client_id), 0);
    char forged_id[128];
    snprintf(forged_id, sizeof(forged_id), "%s:%lld:4611686018427387904", s->client_id, x);
    struct broker_header fh[] = {
        {"x-rt-reason", BROKER_HEADER_STR, "api: forged", 0},
        {"x-rt-kind", BROKER_HEADER_STR, "api", 0},
        {"x-rt-client", BROKER_HEADER_STR, s->client_id, 0},
        {"x-rt-task", BROKER_HEADER_INT, NULL, x},
        {"x-rt-queue", BROKER_HEADER_STR, fq, 0},
        {"x-rt-user", BROKER_HEADER_STR, s->client_user, 0},
        {"x-rt-message-id", BROKER_HEADER_STR, forged_id, 0},
    };
    task_body(&body, s->client_id, x, (uint64_t)1 << 62, s->dst_dept, "planted by another client");
    EXPECT(s, tconn_publish(&b, dead_x, "forward", forged_id, fh, 7, &body),
           "the broker refused the planted letter");
    buf_release(&body);
    broker_free(b.b);
    long dst_writes = harness_sim_count(s->dst, "func=task.edit&write=1");
    EXPECT(s, wait_letters(s, s->server_conf, 0, NULL, forged_id, 1, id, sizeof(id)) == 1,
           "the planted letter is not listed");
    int rc = harness_ctl_list(s->server_conf, &out, "--command", "dlq", "replay", "--id", forged_id,
                              (const char *)NULL);
    printf("hostile: dlq replay --id %s (planted by %s): exit %d: %s", forged_id, s->other_user, rc,
           out);
    EXPECT(s, rc == 1 && strstr(out, "not replayed"), "the planted letter's replay exited %d: %s",
           rc, out);
    free(out);
    EXPECT(s, letters(s, s->server_conf, 0, NULL, forged_id, NULL, 0) == 1,
           "the planted letter vanished when its replay was refused");

    /* A task message of A's own user with seq 2^62: dead-lettered as an
     * impossible seq; A's next real change of the task is applied. */
    struct tconn a;
    tconn_open(&a, s->client_user, s->amqp_password);
    task_body(&body, s->client_id, x, (uint64_t)1 << 62, s->dst_dept, "seq 2^62");
    snprintf(mid, sizeof(mid), "%s:%lld:seq62", s->client_id, x);
    EXPECT(s, tconn_publish(&a, BROKER_EXCHANGE_FORWARD, s->client_id, mid, NULL, 0, &body),
           "the broker refused the task message with seq 2^62");
    buf_release(&body);
    broker_free(a.b);
    n = wait_letters(s, s->server_conf, x, "seq", NULL, 1, NULL, 0);
    EXPECT(s, n == 1, "the task message with seq 2^62 was not dead-lettered as \"seq\" (%d)", n);
    EXPECT(s, harness_sim_count(s->dst, "func=task.edit&write=1") == dst_writes,
           "the planted letter or the seq 2^62 wrote to the target");

    r = harness_sim_admin_ok(s->src, "POST", (snprintf(mid, sizeof(mid), "/tasks/%lld", x), mid),
                             "{\"name\": \"Install Debian 12\"}");
    json_decref(r);
    harness_record_event_list(s->client_state, s->client_id, (int64_t[]){x}, 1);
    harness_daemon_wake(s->client, 0);
    const char *renamed[] = {s->client_id, elid, "Install Debian 12"};
    json_decref(harness_wait_tasks(s->dst, s->dst_dept, named, renamed, DEADLINE_MS, &met));
    EXPECT(s, met, "A's next change of task %lld after the seq 2^62 was not applied", x);
    struct store *sst = NULL;
    char err[512];
    sst = store_open(s->server_state, err, sizeof(err));
    EXPECT(s, sst, "store_open: %s", err);
    struct store_link link;
    assert_int_equal(store_link_get(sst, s->client_id, x, &link), RT_OK);
    store_free(sst);
    printf("hostile: after the seq 2^62, A's next message applied: the link of task %lld holds "
           "seq %llu\n",
           x, (unsigned long long)link.last_seq);
    EXPECT(s, link.found && link.last_seq < 100, "the link holds seq %llu",
           (unsigned long long)link.last_seq);
    harness_scenario_stop(s);
}

/* ---- 3. taskevent on a full disk ---------------------------------------- */

/* Writes a file until the file system is full. */
static void fill(const char *dir)
{
    char path[PATH_MAX], chunk[65536];
    snprintf(path, sizeof(path), "%s/filler", dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        fail_msg("cannot create %s: %s", path, strerror(errno));
    memset(chunk, 'f', sizeof(chunk));
    while (write(fd, chunk, sizeof(chunk)) > 0)
        ;
    /* The last few bytes. */
    while (write(fd, chunk, 1) > 0)
        ;
    close(fd);
}

static void test_taskevent_on_a_full_disk(void **state)
{
    (void)state;
    if (geteuid() != 0)
        fail_msg("this test mounts a tmpfs: run it as root (scripts/test does)");
    struct harness_scenario *s = harness_scenario_new("itiso", NULL, &current);
    snprintf(mounted, sizeof(mounted), "%s/tmpfs", s->dir);
    if (mkdir(mounted, 0700) != 0 ||
        mount("tmpfs", mounted, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0700") != 0) {
        int e = errno;
        mounted[0] = '\0';
        fail_msg("cannot mount a tmpfs: %s", strerror(e));
    }
    char old[PATH_MAX + 32], repl[PATH_MAX + 32], *out = NULL;
    snprintf(old, sizeof(old), "state_dir = \"%s\";", s->client_state);
    snprintf(repl, sizeof(repl), "state_dir = \"%s/state\";", mounted);
    harness_config_replace(s->client_conf, old, repl);

    int rc = harness_ctl_list(s->client_conf, &out, "--command", "taskevent", "--elid", "5",
                              (const char *)NULL);
    EXPECT(s, rc == 0, "taskevent with room exited %d: %s", rc, out);
    free(out);
    fill(mounted);
    rc = harness_ctl_list(s->client_conf, &out, "--command", "taskevent", "--elid", "6",
                          (const char *)NULL);
    printf("disk full: taskevent --elid 6: exit %d: %s", rc, out);
    EXPECT(s, rc != 0 && strstr(out, "no space left"),
           "taskevent on a full disk exited %d without \"no space left\": %s", rc, out);
    free(out);

    char filler[PATH_MAX + 16];
    snprintf(filler, sizeof(filler), "%s/filler", mounted);
    assert_int_equal(unlink(filler), 0);
    rc = harness_ctl_list(s->client_conf, &out, "--command", "taskevent", "--elid", "6",
                          (const char *)NULL);
    EXPECT(s, rc == 0, "taskevent with room again exited %d: %s", rc, out);
    free(out);
    char err[512], dir[PATH_MAX + 16];
    snprintf(dir, sizeof(dir), "%s/state", mounted);
    struct store *st = store_open(dir, err, sizeof(err));
    EXPECT(s, st, "store_open: %s", err);
    uint64_t backlog = 0;
    assert_int_equal(store_outbox_backlog(st, &backlog, NULL), RT_OK);
    store_free(st);
    printf("disk full: after space was freed the outbox holds %llu events (5 and 6)\n",
           (unsigned long long)backlog);
    EXPECT(s, backlog == 2, "the outbox holds %llu events, not 2", (unsigned long long)backlog);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_turns_without_requeue, teardown),
        cmocka_unit_test_teardown(test_hostile_peers, teardown),
        cmocka_unit_test_teardown(test_taskevent_on_a_full_disk, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
