/*
 * it_setup.c - broker-setup's least-privilege users against the real node
 * (issue 10, item 5; issue 13).
 *
 * `remotetaskctl -c server.conf --command broker-setup` prints rabbitmqctl
 * commands; this test applies them to the private node (each add_user as
 * the harness's own user creation with a throwaway password, each
 * set_permissions as printed), then shows that:
 *   - both daemons work with exactly those permissions: tasks forwarded
 *     and applied, a state returned, counted lost=0 duplicated=0;
 *   - client A's user can read none of client B's queues, cannot publish
 *     with B's identity (user_id), cannot write to B's retry or dead-letter
 *     exchanges, and cannot declare anything.
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

#include "broker.h"
#include "harness.h"
#include "harness_daemon.h"
#include "harness_flow.h"
#include "harness_rabbit.h"
#include "harness_sim.h"

#define DEADLINE_MS 60000
#define MAX_ARGS    16

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
            harness_scenario_print_logs(s);                                                        \
            fail_msg(__VA_ARGS__);                                                                 \
        }                                                                                          \
    } while (0)

/* Splits a line of POSIX shell words made of bare words and single-quoted
 * strings ('\'' for a quote) into argv, in place; stops at an unquoted #.
 * Returns the count. */
static int split_words(char *line, char **argv, int max)
{
    int n = 0;
    char *r = line, *w = line;
    while (*r) {
        while (*r == ' ')
            r++;
        if (!*r || *r == '#')
            break;
        assert_true(n < max);
        argv[n++] = w;
        while (*r && *r != ' ') {
            if (*r == '\'') {
                r++;
                while (*r && *r != '\'')
                    *w++ = *r++;
                assert_true(*r == '\'');
                r++;
            } else if (r[0] == '\\' && r[1]) {
                *w++ = r[1];
                r += 2;
            } else {
                *w++ = *r++;
            }
        }
        if (*r)
            r++;
        *w++ = '\0';
    }
    return n;
}

/* Applies broker-setup's output to the node. Returns how many commands
 * were applied. */
static size_t apply_setup(struct harness_scenario *s, char *text)
{
    size_t applied = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        char *argv[MAX_ARGS + 2];
        if (strncmp(line, "rabbitmqctl ", 12) != 0)
            continue;
        int n = split_words(line, argv, MAX_ARGS);
        EXPECT(s, n >= 2, "cannot read the command \"%s\"", line);
        if (strcmp(argv[1], "add_user") == 0) {
            /* The password goes on stdin in real life; here the harness's
             * user creation (with all permissions: the set_permissions
             * line that follows replaces them). */
            EXPECT(s, n == 3, "add_user takes one argument: \"%s\"", line);
            harness_rabbit_delete_user(argv[2]);
            harness_rabbit_adduser(argv[2], s->amqp_password);
        } else {
            EXPECT(s, strcmp(argv[1], "set_permissions") == 0, "unexpected command \"%s\"",
                   line);
            const char *args[MAX_ARGS + 2];
            args[0] = "-q";
            for (int i = 1; i < n; i++)
                args[i] = argv[i];
            args[n] = NULL;
            free(harness_rabbit_ctl(args));
        }
        applied++;
    }
    return applied;
}

/* ---- a connection of the test's own, as one of the users --------------- */

struct probe {
    struct broker *b;
    int taken;  /* acked, or returned as unroutable: the write was allowed */
    int failed; /* nacked, or lost with a connection the broker closed */
};

static void probe_confirm(void *arg, uint64_t tag, enum broker_fate fate)
{
    struct probe *p = arg;
    (void)tag;
    if (fate == BROKER_ACKED || fate == BROKER_RETURNED)
        p->taken++;
    else
        p->failed++;
}

static void probe_delivery(void *arg, const struct broker_delivery *d)
{
    (void)arg;
    (void)d;
}

static void probe_open(struct harness_scenario *s, struct probe *p, const char *user)
{
    struct broker_opts o;
    char err[256];
    memset(p, 0, sizeof(*p));
    harness_rabbit_opts(&o, user, s->amqp_password);
    o.on_confirm = probe_confirm;
    o.on_delivery = probe_delivery;
    o.cb_arg = p;
    p->b = broker_new(&o, err, sizeof(err));
    EXPECT(s, p->b, "broker_new: %s", err);
    EXPECT(s, broker_connect(p->b) == RT_OK, "%s cannot log in: %s", user,
           broker_strerror(p->b));
}

/* Publishes one message and waits for its fate or the connection's end:
 * 1 when the broker took it (or returned it as unroutable: the write
 * itself was allowed), 0 when it refused (the refusal closes the channel,
 * and with it the connection). */
static int probe_publish(struct harness_scenario *s, struct probe *p, const char *exchange,
                         const char *key, const char *user_id)
{
    struct broker_props props = {.message_id = "it-setup-probe", .user_id = user_id};
    if (!broker_connected(p->b))
        EXPECT(s, broker_connect(p->b) == RT_OK, "reconnect: %s", broker_strerror(p->b));
    int taken = p->taken, failed = p->failed;
    if (broker_publish(p->b, exchange, key, &props, "x", 1, NULL) != RT_OK)
        return 0;
    long long deadline = harness_now_ms() + DEADLINE_MS;
    while (broker_connected(p->b) && p->taken == taken && p->failed == failed) {
        EXPECT(s, harness_now_ms() < deadline, "no fate for a publish to %s", exchange);
        struct pollfd fd = {.fd = broker_fd(p->b), .events = POLLIN};
        (void)poll(&fd, 1, 100);
        (void)broker_process(p->b);
    }
    return p->taken > taken;
}

static void test_broker_setup(void **state)
{
    (void)state;
    struct harness_scenario_opts o = {.poll_interval = 5, .other_client = 1};
    struct harness_scenario *s = harness_scenario_new("itsetup", &o, &current);
    char *out = NULL, q[BROKER_NAME_MAX], x[BROKER_NAME_MAX];

    const char *args[] = {"--command", "broker-setup", NULL};
    int rc = harness_ctl(s->server_conf, args, NULL, &out);
    printf("broker-setup:\n%s", out);
    EXPECT(s, rc == 0, "broker-setup exited %d: %s", rc, out);
    EXPECT(s, !strstr(out, s->amqp_password), "broker-setup printed a password");
    size_t n = apply_setup(s, out);
    free(out);
    /* The server's user, and a user per client: add_user + set_permissions. */
    EXPECT(s, n == 6, "broker-setup gave %zu commands, not 6", n);

    /* The daemons work with exactly these permissions: the server declares
     * the topology, the client only finds it. */
    harness_daemon_start(s->server);
    long long deadline = harness_now_ms() + DEADLINE_MS;
    broker_queue_name(q, sizeof(q), BROKER_REVERSE, s->client_id);
    struct harness_queue hq;
    while (!harness_rabbit_queue(q, &hq)) {
        EXPECT(s, harness_now_ms() < deadline, "the server never declared %s", q);
        poll(NULL, 0, 200);
    }
    harness_daemon_start(s->client);
    json_t *f = json_pack("{s:i,s:i,s:s,s:s,s:s}", "department", (int)s->src_dept, "count", 20,
                          "name_prefix", "least privilege ", "type", "manual", "note", "lp");
    char *body = json_dumps(f, JSON_COMPACT);
    json_decref(f);
    json_t *r = harness_sim_admin_ok(s->src, "POST", "/tasks/bulk", body);
    free(body);
    long long first = json_integer_value(json_object_get(r, "first_id"));
    long long last = json_integer_value(json_object_get(r, "last_id"));
    json_decref(r);
    harness_record_events(s->client_state, s->client_id, first, last);
    harness_daemon_wake(s->client, 0);
    harness_flow_expect_all_applied(s, "least-privilege", DEADLINE_MS);
    EXPECT(s, harness_daemon_log_count(s->client, "may not declare") >= 1,
           "the client's user declared the topology itself");
    /* checkevent: a sync request out, states back, under the same rules. */
    const char *ce[] = {"--command", "checkevent", "--timeout", "30", NULL};
    rc = harness_ctl(s->client_conf, ce, NULL, &out);
    printf("checkevent: exit %d: %s", rc, out);
    EXPECT(s, rc == 0 && strstr(out, "checkevent:"), "checkevent exited %d: %s", rc, out);
    free(out);

    /* Client A (this scenario's client) against client B (the other). */
    struct probe a;
    probe_open(s, &a, s->client_user);
    struct broker_delivery *d = NULL;
    broker_queue_name(q, sizeof(q), BROKER_REVERSE, s->other_id);
    rt_status st = broker_get(a.b, q, &d, NULL);
    printf("A reads B's reverse queue: %s: %s\n", rt_status_name(st), broker_strerror(a.b));
    EXPECT(s, st == RT_REJECT && strstr(broker_strerror(a.b), "ACCESS_REFUSED"),
           "A's user could read %s (%s)", q, rt_status_name(st));
    broker_delivery_free(d);
    EXPECT(s, broker_connect(a.b) == RT_OK, "reconnect: %s", broker_strerror(a.b));
    broker_dead_queue_name(q, sizeof(q), BROKER_REVERSE, s->other_id);
    st = broker_get(a.b, q, &d, NULL);
    printf("A reads B's dead letters: %s: %s\n", rt_status_name(st), broker_strerror(a.b));
    EXPECT(s, st == RT_REJECT, "A's user could read %s", q);
    broker_delivery_free(d);
    /* A's own reverse queue: allowed. */
    EXPECT(s, broker_connect(a.b) == RT_OK, "reconnect: %s", broker_strerror(a.b));
    broker_queue_name(q, sizeof(q), BROKER_REVERSE, s->client_id);
    d = NULL;
    st = broker_get(a.b, q, &d, NULL);
    EXPECT(s, st == RT_OK, "A's user cannot read its own %s: %s", q, broker_strerror(a.b));
    if (d) {
        broker_reject(a.b, d->delivery_tag, 1);
        broker_delivery_free(d);
    }

    /* Publishing with B's identity: the broker checks user_id. */
    int took = probe_publish(s, &a, BROKER_EXCHANGE_FORWARD, s->other_id, s->other_user);
    printf("A publishes as B: %s (%s)\n", took ? "taken" : "refused", broker_strerror(a.b));
    EXPECT(s, !took, "the broker took a message from A's user with B's user_id");
    /* B's retry and dead-letter exchanges: not A's to write. */
    broker_retry_exchange(x, sizeof(x), s->other_id);
    took = probe_publish(s, &a, x, "reverse", NULL);
    printf("A writes to %s: %s (%s)\n", x, took ? "taken" : "refused", broker_strerror(a.b));
    EXPECT(s, !took, "A's user could write to %s", x);
    broker_dead_exchange(x, sizeof(x), s->other_id);
    took = probe_publish(s, &a, x, "forward", NULL);
    EXPECT(s, !took, "A's user could write to %s", x);
    /* Its own retry exchange: allowed. */
    broker_retry_exchange(x, sizeof(x), s->client_id);
    EXPECT(s, probe_publish(s, &a, x, "no-such-key", NULL), "A's user cannot write to %s", x);
    /* And nothing to declare. */
    if (!broker_connected(a.b))
        EXPECT(s, broker_connect(a.b) == RT_OK, "reconnect: %s", broker_strerror(a.b));
    const char *clients[] = {"itsetup-new"};
    st = broker_declare(a.b, clients, 1);
    printf("A declares a new client's topology: %s: %s\n", rt_status_name(st),
           broker_strerror(a.b));
    EXPECT(s, st != RT_OK, "A's user declared a topology");
    broker_free(a.b);

    harness_scenario_stop(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_broker_setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
