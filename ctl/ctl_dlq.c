/*
 * remotetaskctl --command dlq list|replay|purge: the dead letters of this
 * configuration's clients.
 *
 * Dead letters wait in one durable queue, remotetask.dead, shared by every
 * client of the broker; each carries its reason and origin in x-rt-*
 * headers (consumer/applier.c writes them). This command talks to the
 * broker directly, not to the daemon, so that it works while the daemon is
 * down. It takes a snapshot: as many messages as the queue held when it
 * started (at most DLQ_MAX_MESSAGES) are fetched with basic.get and held
 * unacknowledged, so that each is seen once; then the chosen ones are
 * acked (purge), or republished and acked once the broker confirmed the
 * copy (replay), and every other one is given back to the queue in its
 * place. Messages of clients this configuration does not name are never
 * touched. If this process dies half-way, the broker puts back everything
 * it held: nothing is lost, at worst a replay is published twice, which
 * the appliers drop as a duplicate by its seq.
 */
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "broker.h"
#include "config.h"
#include "config_opts.h"
#include "ctl.h"
#include "log.h"

/* The most dead letters one run looks at: enough for any sane backlog,
 * bounded so that the unacknowledged set stays reasonable. */
#define DLQ_MAX_MESSAGES 10000
/* How long the broker gets to confirm the replayed copies. */
#define DLQ_CONFIRM_TIMEOUT_MS 30000
/* Texts shown from a dead letter are cut to this. */
#define DLQ_TEXT_MAX 512

enum dlq_sub { DLQ_LIST, DLQ_REPLAY, DLQ_PURGE };

/* One dead letter fetched. */
struct dlq_letter {
    struct broker_delivery *d; /* owned; kept while it may be replayed */
    uint64_t tag;              /* on the consume channel */
    int mine;                  /* a client of this configuration */
    int chosen;                /* matched by the command's filter */
    int settled;               /* acked or requeued already */
    char id[DLQ_TEXT_MAX];
    char client[DLQ_TEXT_MAX];
    char queue[DLQ_TEXT_MAX];
    char reason[DLQ_TEXT_MAX];
    char kind[DLQ_TEXT_MAX];
    int64_t task;
    int64_t attempts;
    int64_t timestamp;
    /* Replay. */
    int published;
    uint64_t pub_tag;
    int fate_known;
    enum broker_fate fate;
};

struct dlq {
    const struct config *cfg;
    struct broker *b;
    struct dlq_letter *letters;
    size_t n, cap;
    size_t awaiting; /* replays published and not confirmed yet */
    /* The letters replayed, in publishing order: their delivery tags
     * ascend, so a confirm finds its letter by binary search. */
    size_t *published;
    size_t n_published;
};

/* ---- small helpers ------------------------------------------------------ */

/* Copies text from a message for display: cut to fit, control characters
 * (a terminal escape in a reason) shown as '?'. */
static void dlq_copy_text(char *dst, size_t size, const char *src)
{
    size_t i = 0;
    for (; src && src[i] && i + 1 < size; i++) {
        unsigned char c = (unsigned char)src[i];
        dst[i] = c < 0x20 || c == 0x7f ? '?' : (char)c;
    }
    dst[i] = '\0';
}

static const char *dlq_direction(const char *queue)
{
    size_t fl = strlen(BROKER_EXCHANGE_FORWARD ".");
    size_t rl = strlen(BROKER_EXCHANGE_REVERSE ".");
    if (strncmp(queue, BROKER_EXCHANGE_FORWARD ".", fl) == 0 && queue[fl])
        return "forward";
    if (strncmp(queue, BROKER_EXCHANGE_REVERSE ".", rl) == 0 && queue[rl])
        return "reverse";
    return "unknown";
}

static void dlq_time(int64_t ts, char *out, size_t len)
{
    struct tm tm;
    time_t t = (time_t)ts;
    if (ts <= 0 || !gmtime_r(&t, &tm) || strftime(out, len, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        snprintf(out, len, "-");
}

static int64_t dlq_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* 1 when id is client.id or one of server.clients[].id. */
static int dlq_client_ours(const struct config *cfg, const char *id)
{
    if (!*id)
        return 0;
    if (cfg->client.enabled && strcmp(cfg->client.id, id) == 0)
        return 1;
    return cfg->server.enabled && config_server_client_find(cfg, id) != NULL;
}

/* ---- broker callbacks --------------------------------------------------- */

static void dlq_on_confirm(void *arg, uint64_t tag, enum broker_fate fate)
{
    struct dlq *q = arg;
    size_t lo = 0, hi = q->n_published;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        struct dlq_letter *l = &q->letters[q->published[mid]];
        if (l->pub_tag < tag) {
            lo = mid + 1;
        } else if (l->pub_tag > tag) {
            hi = mid;
        } else {
            if (!l->fate_known) {
                l->fate_known = 1;
                l->fate = fate;
                q->awaiting--;
            }
            return;
        }
    }
}

/* Nothing is consumed on this connection: basic.get answers come back
 * from broker_get() itself. */
static void dlq_on_delivery(void *arg, const struct broker_delivery *d)
{
}

/* ---- fetching ----------------------------------------------------------- */

/* Keeps what is shown of a fetched message; the message itself is kept
 * only when it may be replayed. Returns 0, or -1 when memory ran out (the
 * message is then given back). */
static int dlq_keep(struct dlq *q, struct broker_delivery *d, enum dlq_sub sub, const char *want_id)
{
    if (q->n == q->cap) {
        size_t cap = q->cap ? q->cap * 2 : 64;
        struct dlq_letter *nl = realloc(q->letters, cap * sizeof(*nl));
        if (!nl) {
            broker_reject(q->b, d->delivery_tag, 1);
            broker_delivery_free(d);
            return -1;
        }
        q->letters = nl;
        q->cap = cap;
    }
    struct dlq_letter *l = &q->letters[q->n++];
    memset(l, 0, sizeof(*l));
    l->tag = d->delivery_tag;
    const char *client = broker_delivery_header_str(d, "x-rt-client");
    if (!client || !*client)
        client = d->routing_key; /* the dead exchange routes by client id */
    const char *mid = broker_delivery_header_str(d, "x-rt-message-id");
    if (!mid || !*mid)
        mid = d->message_id;
    dlq_copy_text(l->id, sizeof(l->id), mid);
    dlq_copy_text(l->client, sizeof(l->client), client);
    dlq_copy_text(l->queue, sizeof(l->queue), broker_delivery_header_str(d, "x-rt-queue"));
    dlq_copy_text(l->reason, sizeof(l->reason), broker_delivery_header_str(d, "x-rt-reason"));
    dlq_copy_text(l->kind, sizeof(l->kind), broker_delivery_header_str(d, "x-rt-kind"));
    if (broker_delivery_header_int(d, "x-rt-task", &l->task) < 0)
        l->task = 0;
    if (broker_delivery_header_int(d, "x-rt-attempts", &l->attempts) < 0)
        l->attempts = 0;
    l->timestamp = d->timestamp;
    l->mine = dlq_client_ours(q->cfg, client ? client : "");
    l->chosen = l->mine && (!want_id || strcmp(want_id, l->id) == 0);
    if (sub == DLQ_REPLAY && l->chosen)
        l->d = d;
    else
        broker_delivery_free(d);
    return 0;
}

/* Fetches the snapshot. Returns 0, or -1 after printing why not; *missing
 * is set when the queue does not exist at all. */
static int dlq_fetch(struct dlq *q, enum dlq_sub sub, const char *want_id, int *missing,
                     int *capped)
{
    uint32_t ready = 0, consumers = 0;
    *missing = 0;
    *capped = 0;
    rt_status st = broker_queue_depth(q->b, BROKER_QUEUE_DEAD, &ready, &consumers);
    if (st == RT_REJECT) {
        *missing = 1;
        return 0;
    }
    if (st != RT_OK) {
        fprintf(stderr, "remotetaskctl: cannot read queue %s: %s\n", BROKER_QUEUE_DEAD,
                broker_strerror(q->b));
        return -1;
    }
    /* Only what was there at the start: a replay that fails again comes
     * back to the queue, and must not be replayed again by this run. */
    size_t limit = ready;
    if (limit > DLQ_MAX_MESSAGES) {
        limit = DLQ_MAX_MESSAGES;
        *capped = 1;
    }
    for (size_t i = 0; i < limit; i++) {
        struct broker_delivery *d = NULL;
        st = broker_get(q->b, BROKER_QUEUE_DEAD, &d, NULL);
        if (st == RT_REJECT && i == 0) {
            *missing = 1;
            return 0;
        }
        if (st != RT_OK) {
            fprintf(stderr, "remotetaskctl: cannot read queue %s: %s\n", BROKER_QUEUE_DEAD,
                    broker_strerror(q->b));
            return -1;
        }
        if (!d)
            break; /* someone else took the rest meanwhile */
        if (dlq_keep(q, d, sub, want_id) < 0) {
            fprintf(stderr, "remotetaskctl: out of memory reading queue %s\n", BROKER_QUEUE_DEAD);
            return -1;
        }
    }
    return 0;
}

/* Gives back every message not settled yet, oldest first, so that they keep
 * their order in the queue. */
static void dlq_requeue_rest(struct dlq *q)
{
    for (size_t i = 0; i < q->n; i++) {
        struct dlq_letter *l = &q->letters[i];
        if (l->settled)
            continue;
        l->settled = 1;
        if (broker_reject(q->b, l->tag, 1) != RT_OK)
            /* The connection is gone: the broker requeues them itself. */
            return;
    }
}

static void dlq_release(struct dlq *q)
{
    for (size_t i = 0; i < q->n; i++)
        broker_delivery_free(q->letters[i].d);
    free(q->letters);
    free(q->published);
    q->letters = NULL;
    q->published = NULL;
    q->n = q->cap = q->n_published = 0;
}

/* ---- output ------------------------------------------------------------- */

static size_t dlq_count_chosen(const struct dlq *q)
{
    size_t n = 0;
    for (size_t i = 0; i < q->n; i++)
        n += q->letters[i].chosen != 0;
    return n;
}

static void dlq_print_table(const struct dlq *q)
{
    char when[32];
    printf("%-32s %-12s %-10s %-9s %-8s %-20s %s\n", "ID", "CLIENT", "TASK", "DIRECTION",
           "ATTEMPTS", "TIME", "REASON");
    for (size_t i = 0; i < q->n; i++) {
        const struct dlq_letter *l = &q->letters[i];
        if (!l->chosen)
            continue;
        dlq_time(l->timestamp, when, sizeof(when));
        printf("%-32s %-12s %-10" PRId64 " %-9s %-8" PRId64 " %-20s %s\n", l->id[0] ? l->id : "-",
               l->client, l->task, dlq_direction(l->queue), l->attempts, when,
               l->reason[0] ? l->reason : "-");
    }
}

/* Prints the chosen letters as a JSON array. Returns 0, or -1 when memory
 * ran out. */
static int dlq_print_json(const struct dlq *q)
{
    char when[32];
    json_t *arr = json_array();
    if (!arr)
        return -1;
    for (size_t i = 0; i < q->n; i++) {
        const struct dlq_letter *l = &q->letters[i];
        if (!l->chosen)
            continue;
        dlq_time(l->timestamp, when, sizeof(when));
        json_t *o =
            json_pack("{s:s,s:s,s:I,s:s,s:s,s:s,s:s,s:I,s:s,s:I}", "id", l->id, "client", l->client,
                      "task", (json_int_t)l->task, "direction", dlq_direction(l->queue), "queue",
                      l->queue, "reason", l->reason, "kind", l->kind, "attempts",
                      (json_int_t)l->attempts, "time", when, "timestamp", (json_int_t)l->timestamp);
        if (!o || json_array_append_new(arr, o) < 0) {
            json_decref(arr);
            return -1;
        }
    }
    char *text = json_dumps(arr, JSON_INDENT(2) | JSON_ENSURE_ASCII);
    json_decref(arr);
    if (!text)
        return -1;
    printf("%s\n", text);
    free(text);
    return 0;
}

/* ---- the sub-commands --------------------------------------------------- */

static int dlq_list(struct dlq *q, const struct ctl_args *args, int capped)
{
    int rc = 0;
    if (args->json) {
        if (dlq_print_json(q) < 0) {
            fprintf(stderr, "remotetaskctl: out of memory printing the dead letters\n");
            rc = 1;
        }
    } else if (dlq_count_chosen(q) == 0) {
        printf("no dead letters for this configuration's clients\n");
    } else {
        dlq_print_table(q);
    }
    if (capped)
        fprintf(stderr, "remotetaskctl: only the first %d messages of %s were read\n",
                DLQ_MAX_MESSAGES, BROKER_QUEUE_DEAD);
    dlq_requeue_rest(q);
    return rc;
}

static int dlq_purge(struct dlq *q, const struct ctl_args *args, int capped)
{
    size_t n = dlq_count_chosen(q);
    if (!args->yes) {
        if (n == 0) {
            printf("no dead letters for this configuration's clients: nothing to purge\n");
        } else {
            dlq_print_table(q);
            printf("would remove %zu dead letter%s: run again with --yes to remove %s\n", n,
                   n == 1 ? "" : "s", n == 1 ? "it" : "them");
        }
        dlq_requeue_rest(q);
        return 2;
    }
    size_t removed = 0;
    for (size_t i = 0; i < q->n; i++) {
        struct dlq_letter *l = &q->letters[i];
        if (!l->chosen)
            continue;
        l->settled = 1;
        if (broker_ack(q->b, l->tag) != RT_OK) {
            fprintf(stderr, "remotetaskctl: purge stopped after %zu: %s\n", removed,
                    broker_strerror(q->b));
            printf("purged %zu\n", removed);
            return 1;
        }
        removed++;
    }
    dlq_requeue_rest(q);
    if (capped)
        fprintf(stderr, "remotetaskctl: only the first %d messages of %s were read: run again\n",
                DLQ_MAX_MESSAGES, BROKER_QUEUE_DEAD);
    printf("purged %zu\n", removed);
    return 0;
}

/* Republishes one dead letter to the exchange it came from. Returns 0, or
 * -1 after printing why it cannot be (it stays a dead letter). */
static int dlq_publish(struct dlq *q, struct dlq_letter *l)
{
    const char *dir = dlq_direction(l->queue);
    const char *exchange = strcmp(dir, "forward") == 0   ? BROKER_EXCHANGE_FORWARD
                           : strcmp(dir, "reverse") == 0 ? BROKER_EXCHANGE_REVERSE
                                                         : NULL;
    if (!exchange) {
        fprintf(stderr,
                "remotetaskctl: %s: cannot replay: its queue \"%s\" is not a forward or "
                "reverse queue\n",
                l->id, l->queue);
        return -1;
    }
    if (!l->d || l->d->too_big || !broker_client_valid(l->client) || !l->id[0]) {
        fprintf(stderr, "remotetaskctl: %s: cannot replay: no body, id or valid client id\n",
                l->id[0] ? l->id : "(no id)");
        return -1;
    }
    /* The appliers take a copy published under this process's login only
     * with the original sender in x-rt-user (RabbitMQ checks user_id). */
    struct broker_header h[3];
    size_t nh = 0;
    h[nh++] = (struct broker_header){"x-rt-attempts", BROKER_HEADER_INT, NULL, 0};
    h[nh++] = (struct broker_header){"x-rt-replayed", BROKER_HEADER_INT, NULL, 1};
    const char *user = broker_delivery_header_str(l->d, "x-rt-user");
    if (user && *user)
        h[nh++] = (struct broker_header){"x-rt-user", BROKER_HEADER_STR, user, 0};
    struct broker_props props;
    memset(&props, 0, sizeof(props));
    props.message_id = l->id;
    props.headers = h;
    props.n_headers = nh;
    if (broker_publish(q->b, exchange, l->client, &props, l->d->body, l->d->len, &l->pub_tag) !=
        RT_OK) {
        fprintf(stderr, "remotetaskctl: %s: cannot replay: %s\n", l->id, broker_strerror(q->b));
        return -1;
    }
    l->published = 1;
    q->published[q->n_published++] = (size_t)(l - q->letters);
    q->awaiting++;
    return 0;
}

/* Reads confirms until every replay has its fate or the deadline passes. */
static void dlq_wait_confirms(struct dlq *q)
{
    int64_t deadline = dlq_now_ms() + DLQ_CONFIRM_TIMEOUT_MS;
    while (q->awaiting > 0 && broker_connected(q->b)) {
        int64_t left = deadline - dlq_now_ms();
        if (left <= 0)
            return;
        if (!broker_wants_read_now(q->b)) {
            struct pollfd pfd = {.fd = broker_fd(q->b), .events = POLLIN};
            int hb = broker_timeout_ms(q->b);
            int wait = left > 1000 ? 1000 : (int)left;
            if (hb >= 0 && hb < wait)
                wait = hb;
            if (poll(&pfd, 1, wait) < 0)
                continue; /* EINTR: look again */
        }
        if (broker_process(q->b) != RT_OK)
            return; /* LOST was reported for every replay still waiting */
    }
}

static int dlq_replay(struct dlq *q, const struct ctl_args *args, int capped)
{
    size_t n = dlq_count_chosen(q), failed = 0, replayed = 0;
    if (n == 0) {
        dlq_requeue_rest(q);
        if (args->id) {
            fprintf(stderr,
                    "remotetaskctl: no dead letter with id \"%s\" for this "
                    "configuration's clients\n",
                    args->id);
            return 1;
        }
        printf("replayed 0\n");
        return 0;
    }
    q->published = calloc(n, sizeof(*q->published));
    if (!q->published) {
        fprintf(stderr, "remotetaskctl: out of memory replaying %zu dead letters\n", n);
        dlq_requeue_rest(q);
        return 1;
    }
    for (size_t i = 0; i < q->n; i++) {
        struct dlq_letter *l = &q->letters[i];
        if (l->chosen && dlq_publish(q, l) < 0)
            failed++;
    }
    dlq_wait_confirms(q);
    for (size_t i = 0; i < q->n; i++) {
        struct dlq_letter *l = &q->letters[i];
        if (!l->published)
            continue;
        if (!l->fate_known || l->fate != BROKER_ACKED) {
            /* Left as a dead letter; a copy may still have gone out if the
             * connection died after publishing: a duplicate the appliers
             * drop by its seq. */
            fprintf(stderr, "remotetaskctl: %s: the broker did not take the replay (%s)\n", l->id,
                    !l->fate_known               ? "no confirm in time"
                    : l->fate == BROKER_RETURNED ? "no queue bound for its client"
                    : l->fate == BROKER_NACKED   ? "refused"
                                                 : "connection lost");
            failed++;
            continue;
        }
        l->settled = 1;
        if (broker_ack(q->b, l->tag) != RT_OK) {
            /* The copy is out and the dead letter comes back: replaying it
             * again later is harmless. */
            fprintf(stderr, "remotetaskctl: %s: replayed, but the dead letter stays: %s\n", l->id,
                    broker_strerror(q->b));
            failed++;
            continue;
        }
        replayed++;
    }
    dlq_requeue_rest(q);
    if (capped)
        fprintf(stderr, "remotetaskctl: only the first %d messages of %s were read: run again\n",
                DLQ_MAX_MESSAGES, BROKER_QUEUE_DEAD);
    printf("replayed %zu\n", replayed);
    if (failed)
        fprintf(stderr, "remotetaskctl: %zu dead letter%s not replayed\n", failed,
                failed == 1 ? "" : "s");
    return failed ? 1 : 0;
}

/* ---- the command -------------------------------------------------------- */

static int dlq_parse(const struct ctl_args *args, enum dlq_sub *sub)
{
    if (!args->sub) {
        fprintf(stderr, "remotetaskctl: dlq needs list, replay or purge\n");
        return -1;
    }
    if (strcmp(args->sub, "list") == 0)
        *sub = DLQ_LIST;
    else if (strcmp(args->sub, "replay") == 0)
        *sub = DLQ_REPLAY;
    else if (strcmp(args->sub, "purge") == 0)
        *sub = DLQ_PURGE;
    else {
        fprintf(stderr, "remotetaskctl: dlq: unknown action \"%s\" (list, replay or purge)\n",
                args->sub);
        return -1;
    }
    if (args->id && !*args->id) {
        fprintf(stderr, "remotetaskctl: dlq: --id needs a message id\n");
        return -1;
    }
    if (*sub == DLQ_REPLAY && !args->id == !args->all) {
        fprintf(stderr, "remotetaskctl: dlq replay needs exactly one of --id X and --all\n");
        return -1;
    }
    if (*sub != DLQ_REPLAY && args->all) {
        fprintf(stderr, "remotetaskctl: dlq %s takes no --all\n", args->sub);
        return -1;
    }
    if (*sub != DLQ_PURGE && args->yes) {
        fprintf(stderr, "remotetaskctl: dlq %s takes no --yes\n", args->sub);
        return -1;
    }
    if (*sub != DLQ_LIST && args->json) {
        fprintf(stderr, "remotetaskctl: dlq %s takes no --json\n", args->sub);
        return -1;
    }
    return 0;
}

int ctl_dlq(const struct ctl_args *args)
{
    char err[CONFIG_ERR_MAX], name[128];
    enum dlq_sub sub = DLQ_LIST;
    struct dlq q;
    int rc = 1, missing = 0, capped = 0;

    if (dlq_parse(args, &sub) < 0)
        return 2;
    /* Library warnings would interleave with the output; every failure is
     * reported below with its reason. */
    log_init("remotetaskctl", LOG_LEVEL_ERROR, 0);
    struct config *cfg = config_load(args->config, err, sizeof(err));
    if (!cfg) {
        fprintf(stderr, "remotetaskctl: %s\n", err);
        return 1;
    }
    memset(&q, 0, sizeof(q));
    q.cfg = cfg;

    struct broker_opts o;
    config_opts_broker(cfg, &o, name, sizeof(name));
    o.on_confirm = dlq_on_confirm;
    o.on_delivery = dlq_on_delivery;
    o.cb_arg = &q;
    q.b = broker_new(&o, err, sizeof(err));
    if (!q.b) {
        fprintf(stderr, "remotetaskctl: %s\n", err);
        goto free_cfg;
    }
    if (broker_connect(q.b) != RT_OK) {
        fprintf(stderr, "remotetaskctl: cannot connect to the broker at %s: %s\n",
                cfg->amqp.uri_redacted, broker_strerror(q.b));
        goto free_broker;
    }
    if (dlq_fetch(&q, sub, args->id, &missing, &capped) < 0)
        goto free_letters;
    if (missing) {
        /* No daemon ever declared the topology on this broker. */
        if (sub == DLQ_LIST && args->json) {
            printf("[]\n");
        } else {
            printf("no dead letters: queue %s does not exist on this broker\n", BROKER_QUEUE_DEAD);
        }
        rc = sub == DLQ_REPLAY && args->id ? 1 : 0;
        if (rc)
            fprintf(stderr, "remotetaskctl: no dead letter with id \"%s\"\n", args->id);
        goto free_letters;
    }
    switch (sub) {
    case DLQ_LIST: rc = dlq_list(&q, args, capped); break;
    case DLQ_REPLAY: rc = dlq_replay(&q, args, capped); break;
    case DLQ_PURGE: rc = dlq_purge(&q, args, capped); break;
    }

free_letters:
    dlq_release(&q);
free_broker:
    /* A polite close: whatever is still held goes back to the queue. */
    broker_free(q.b);
free_cfg:
    config_free(cfg);
    fflush(stdout);
    return rc;
}
