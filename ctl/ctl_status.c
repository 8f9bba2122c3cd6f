/*
 * remotetaskctl --command status [--json]: what is in flight, at a glance.
 *
 * The daemon answers {"cmd":"status"} with one JSON object (bridge/daemon.h
 * lists its members); --json prints it as it came, indented, and the
 * default prints it as a few aligned tables with times as "12s ago". When
 * the daemon does not answer, what the store alone can tell (the outbox,
 * the links, the last times) is printed, and the exit status is 1.
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "clock.h"
#include "config.h"
#include "ctl.h"
#include "ctlproto.h"
#include "log.h"
#include "store.h"

/* The daemon asks the broker for every queue's depth before it answers,
 * each question bounded by amqp.connect_timeout: give it time. */
#define STATUS_TIMEOUT_MS 30000

/* "never", "just now", "12s ago", "5m ago", "3h ago", "2d ago". */
static const char *status_ago(int64_t ms, int64_t now, char *buf, size_t len)
{
    if (ms <= 0)
        return "never";
    int64_t s = (now - ms) / 1000;
    if (s < 0)
        snprintf(buf, len, "in the future (clock skew)");
    else if (s < 1)
        snprintf(buf, len, "just now");
    else if (s < 120)
        snprintf(buf, len, "%" PRId64 "s ago", s);
    else if (s < 2 * 3600)
        snprintf(buf, len, "%" PRId64 "m ago", s / 60);
    else if (s < 2 * 86400)
        snprintf(buf, len, "%" PRId64 "h ago", s / 3600);
    else
        snprintf(buf, len, "%" PRId64 "d ago", s / 86400);
    return buf;
}

/* A duration: "42s", "5m 3s", "3h 12m", "2d 4h". */
static const char *status_span(int64_t s, char *buf, size_t len)
{
    if (s < 60)
        snprintf(buf, len, "%" PRId64 "s", s);
    else if (s < 3600)
        snprintf(buf, len, "%" PRId64 "m %" PRId64 "s", s / 60, s % 60);
    else if (s < 86400)
        snprintf(buf, len, "%" PRId64 "h %" PRId64 "m", s / 3600, (s % 3600) / 60);
    else
        snprintf(buf, len, "%" PRId64 "d %" PRId64 "h", s / 86400, (s % 86400) / 3600);
    return buf;
}

static int64_t status_int(json_t *o, const char *key)
{
    return (int64_t)json_integer_value(json_object_get(o, key));
}

static const char *status_str(json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "";
}

/* A number of a queue row, "-" when the broker could not say. */
static const char *status_num(json_t *v, char *buf, size_t len)
{
    if (!json_is_integer(v))
        return "-";
    snprintf(buf, len, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    return buf;
}

static void status_print_last(const char *label, int64_t ms, int64_t now)
{
    char ago[64];
    printf("  %-22s %s\n", label, status_ago(ms, now, ago, sizeof(ago)));
}

/* The "key n, key n" list of an object of counters. */
static void status_print_counts(const char *label, json_t *o)
{
    const char *key;
    json_t *v;
    int first = 1;
    printf("  %-22s ", label);
    json_object_foreach(o, key, v)
    {
        printf("%s%s %" JSON_INTEGER_FORMAT, first ? "" : ", ", key, json_integer_value(v));
        first = 0;
    }
    printf("%s\n", first ? "none" : "");
}

static void status_print(json_t *r)
{
    int64_t now = status_int(r, "now_ms");
    char a[64], b[64], c[64];
    json_t *broker = json_object_get(r, "broker"), *bm = json_object_get(r, "billmanager");
    json_t *queues = json_object_get(r, "queues"), *outbox = json_object_get(r, "outbox");
    json_t *last = json_object_get(r, "last"), *errors = json_object_get(r, "errors");
    json_t *inflight = json_object_get(r, "inflight"), *roles = json_object_get(r, "roles");
    size_t i, width = strlen("QUEUE");
    json_t *q;

    if (!now)
        now = clock_wall_ms();
    printf("remotetaskd %s, instance \"%s\", pid %" PRId64 ", up %s, roles:", status_str(r, "version"),
           status_str(r, "instance"), status_int(r, "pid"),
           status_span(status_int(r, "uptime_s"), a, sizeof(a)));
    json_array_foreach(roles, i, q) printf(" %s", json_string_value(q));
    printf("\n\nconnections\n");
    printf("  %-22s %s%s, %" PRId64 " reconnects (%s)\n", "broker", status_str(broker, "state"),
           json_is_true(json_object_get(broker, "blocked")) ? ", BLOCKED by a resource alarm" : "",
           status_int(broker, "reconnects"), status_str(broker, "uri"));
    if (*status_str(broker, "last_error"))
        printf("  %-22s %s\n", "  last error", status_str(broker, "last_error"));
    printf("  %-22s %s, %" PRId64 " calls, last ok %s (%s)\n", "billmanager",
           status_str(bm, "state"), status_int(bm, "calls"),
           status_ago(status_int(bm, "last_ok_ms"), now, a, sizeof(a)), status_str(bm, "url"));
    if (*status_str(bm, "last_error"))
        printf("  %-22s %s, %s\n", "  last error", status_str(bm, "last_error"),
               status_ago(status_int(bm, "last_error_ms"), now, a, sizeof(a)));

    json_array_foreach(queues, i, q)
    {
        size_t n = strlen(status_str(q, "name"));
        if (n > width)
            width = n;
    }
    printf("\n  %-*s %9s %9s %9s\n", (int)width, "QUEUE", "READY", "UNACKED", "CONSUMERS");
    json_array_foreach(queues, i, q)
    {
        printf("  %-*s %9s %9s %9s\n", (int)width, status_str(q, "name"),
               status_num(json_object_get(q, "ready"), a, sizeof(a)),
               status_num(json_object_get(q, "unacked"), b, sizeof(b)),
               status_num(json_object_get(q, "consumers"), c, sizeof(c)));
    }
    printf("  (ready and consumers as the broker reports them; unacked: deliveries this "
           "instance holds)\n");

    printf("\nstate\n");
    if (json_object_get(outbox, "error"))
        printf("  %-22s cannot read: %s\n", "outbox", status_str(outbox, "error"));
    else if (status_int(outbox, "backlog"))
        printf("  %-22s %" PRId64 " waiting, oldest recorded %s\n", "outbox",
               status_int(outbox, "backlog"),
               status_ago(status_int(outbox, "oldest_ms"), now, a, sizeof(a)));
    else
        printf("  %-22s empty\n", "outbox");
    if (json_is_integer(json_object_get(r, "links")))
        printf("  %-22s %" PRId64 "\n", "links", status_int(r, "links"));
    if (inflight)
        printf("  %-22s %" PRId64 " API calls, %" PRId64 " unconfirmed publishes, %" PRId64
               " deliveries, %" PRId64 " checkevents\n",
               "in flight", status_int(inflight, "api_calls"),
               status_int(inflight, "unconfirmed"), status_int(inflight, "slots"),
               status_int(inflight, "checkevents"));
    status_print_last("last forward publish", status_int(last, "forward_publish_ms"), now);
    status_print_last("last forward apply", status_int(last, "forward_apply_ms"), now);
    status_print_last("last reverse cycle", status_int(last, "reverse_cycle_ms"), now);
    status_print_last("last reverse apply", status_int(last, "reverse_apply_ms"), now);

    if (errors) {
        json_t *dead = json_object_get(errors, "dead_lettered");
        printf("\nerrors\n");
        status_print_counts("dead-lettered forward", json_object_get(dead, "forward"));
        status_print_counts("dead-lettered reverse", json_object_get(dead, "reverse"));
        status_print_counts("retried", json_object_get(errors, "retried"));
        status_print_counts("retry copies resent", json_object_get(errors, "resent"));
        status_print_counts("API errors", json_object_get(errors, "api"));
        printf("  %-22s %" PRId64 "\n", "broker reconnects", status_int(errors, "reconnects"));
    }
}

/* What the store alone tells, into a JSON object like the daemon's. */
static json_t *status_from_store(const struct config *cfg, char *err, size_t errlen)
{
    uint64_t backlog = 0, links = 0;
    int64_t oldest = 0, now = clock_wall_ms();
    int64_t t[4] = {0, 0, 0, 0};
    static const char *const keys[4] = {"last_forward_apply_ms", "last_forward_publish_ms",
                                        "last_reverse_cycle_ms", "last_reverse_apply_ms"};
    struct store *st = store_open(cfg->state_dir, err, errlen);
    if (!st)
        return NULL;
    for (size_t i = 0; i < 4; i++) {
        bool found;
        if (store_meta_get_i64(st, keys[i], &t[i], &found) != RT_OK)
            t[i] = 0;
    }
    json_t *r = json_pack("{s:b,s:b,s:s,s:s,s:I,s:{s:I,s:I,s:I,s:I}}", "ok", 0, "running", 0,
                          "error", CTLPROTO_NOT_RUNNING, "instance", cfg->instance, "now_ms",
                          (json_int_t)now, "last", "forward_apply_ms", (json_int_t)t[0],
                          "forward_publish_ms", (json_int_t)t[1], "reverse_cycle_ms",
                          (json_int_t)t[2], "reverse_apply_ms", (json_int_t)t[3]);
    if (r && store_outbox_backlog(st, &backlog, &oldest) == RT_OK)
        json_object_set_new(r, "outbox",
                            json_pack("{s:I,s:I,s:I}", "backlog", (json_int_t)backlog,
                                      "oldest_ms", (json_int_t)oldest, "oldest_age_s",
                                      (json_int_t)(oldest ? (now - oldest) / 1000 : 0)));
    else if (r)
        json_object_set_new(r, "outbox", json_pack("{s:s}", "error", store_strerror(st)));
    if (r && store_link_count(st, NULL, &links) == RT_OK)
        json_object_set_new(r, "links", json_integer((json_int_t)links));
    store_free(st);
    if (!r)
        snprintf(err, errlen, "out of memory");
    return r;
}

static void status_print_store(json_t *r)
{
    json_t *outbox = json_object_get(r, "outbox"), *last = json_object_get(r, "last");
    int64_t now = status_int(r, "now_ms");
    char a[64];

    printf("what the store in this state_dir tells:\n");
    if (json_object_get(outbox, "error"))
        printf("  %-22s cannot read: %s\n", "outbox", status_str(outbox, "error"));
    else if (status_int(outbox, "backlog"))
        printf("  %-22s %" PRId64 " waiting, oldest recorded %s\n", "outbox",
               status_int(outbox, "backlog"),
               status_ago(status_int(outbox, "oldest_ms"), now, a, sizeof(a)));
    else
        printf("  %-22s empty\n", "outbox");
    if (json_is_integer(json_object_get(r, "links")))
        printf("  %-22s %" PRId64 "\n", "links", status_int(r, "links"));
    status_print_last("last forward publish", status_int(last, "forward_publish_ms"), now);
    status_print_last("last forward apply", status_int(last, "forward_apply_ms"), now);
    status_print_last("last reverse cycle", status_int(last, "reverse_cycle_ms"), now);
    status_print_last("last reverse apply", status_int(last, "reverse_apply_ms"), now);
}

int ctl_status(const struct ctl_args *args)
{
    char err[CONFIG_ERR_MAX > CTLPROTO_ERR_MAX ? CONFIG_ERR_MAX : CTLPROTO_ERR_MAX];
    json_t *resp = NULL;
    int status = 1;

    log_init("remotetaskctl", LOG_LEVEL_ERROR, 0);
    struct config *cfg = config_load(args->config, err, sizeof(err));
    if (!cfg) {
        fprintf(stderr, "remotetaskctl: %s\n", err);
        return 1;
    }
    json_t *req = json_pack("{s:s}", "cmd", "status");
    rt_status rc = req ? ctlproto_request(cfg->control_socket, req, &resp,
                                          args->timeout ? args->timeout * 1000 : STATUS_TIMEOUT_MS,
                                          err, sizeof(err))
                       : RT_REJECT;
    json_decref(req);
    if (rc == RT_OK && json_is_true(json_object_get(resp, "ok"))) {
        if (args->json) {
            json_dumpf(resp, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
            printf("\n");
        } else {
            status_print(resp);
        }
        status = 0;
        goto done;
    }
    if (rc == RT_OK) {
        const char *why = json_string_value(json_object_get(resp, "error"));
        fprintf(stderr, "remotetaskctl: status failed: %s\n", why ? why : "no reason given");
        goto done;
    }
    /* The daemon is not there (or did not answer): the store still tells
     * what waits and when things last happened. */
    char serr[512];
    json_t *local = status_from_store(cfg, serr, sizeof(serr));
    if (local) {
        if (args->json) {
            json_dumpf(local, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
            printf("\n");
        } else {
            status_print_store(local);
        }
        json_decref(local);
    } else {
        fprintf(stderr, "remotetaskctl: cannot read the store in \"%s\": %s\n", cfg->state_dir,
                serr);
    }
    if (strncmp(err, CTLPROTO_NOT_RUNNING, strlen(CTLPROTO_NOT_RUNNING)) == 0)
        fprintf(stderr, "remotetaskctl: remotetaskd is not running (no answer on %s)\n",
                cfg->control_socket);
    else
        fprintf(stderr, "remotetaskctl: remotetaskd did not answer: %s\n", err);
done:
    fflush(stdout);
    json_decref(resp);
    config_free(cfg);
    return status;
}
