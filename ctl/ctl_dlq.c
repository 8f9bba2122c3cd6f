/*
 * remotetaskctl --command dlq list|replay|purge: the dead letters of this
 * configuration's clients.
 *
 * Dead letters wait in per-client, per-direction queues: the server role
 * reads remotetask.dead.C.forward of each of its clients C (task messages
 * it could not apply), the client role remotetask.dead.C.reverse of its own
 * id (states it could not apply). An operator's AMQP users can be given
 * read access to exactly those (broker-setup), so no tenant sees or
 * removes another's. Each letter carries its reason and origin in x-rt-*
 * headers (consumer/applier.c writes them), or, when the broker itself
 * dead-lettered it (a quorum queue's delivery limit, a full queue), the
 * broker's x-first-death-reason.
 *
 * What is replayed is trusted only as far as the broker vouches for it:
 * the letter's user_id, which RabbitMQ checks against the publisher's
 * login. A letter written by this side (user_id = its own login) was made
 * by its applier, so its x-rt-user names the original sender; a letter
 * whose user_id is the peer's (the client's user for forward letters, the
 * server's for reverse ones) is the peer's own message, dead-lettered by
 * the broker. Anything else was planted by someone else: it is listed,
 * marked untrusted, and never replayed (purge removes it). A replay goes
 * back through the client's own retry exchange (remotetask.retry.C, key
 * "forward" or "reverse"), so it can only reach that client's queue.
 *
 * This command talks to the broker directly, not to the daemon, so that it
 * works while the daemon is down. It takes a snapshot: as many messages as
 * each queue held when it started (at most DLQ_MAX_MESSAGES in all) are
 * fetched with basic.get and held unacknowledged, so that each is seen
 * once; then the chosen ones are acked (purge), or republished and acked
 * once the broker confirmed the copy (replay), and every other one is given
 * back to its queue in its place. If this process dies half-way, the
 * broker puts back everything it held: nothing is lost, at worst a replay
 * is published twice, which the appliers drop as a duplicate by its seq.
 */
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "broker.h"
#include "clock.h"
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
    int chosen;                /* matched by the command's filter */
    int trusted;               /* written by this side or by the peer (see above) */
    enum broker_dir dir;       /* of the queue it was read from */
    int settled;               /* acked or requeued already */
    char id[DLQ_TEXT_MAX];
    char client[DLQ_TEXT_MAX]; /* of the queue it was read from */
    char queue[DLQ_TEXT_MAX];  /* the queue it was dead-lettered from */
    char by[DLQ_TEXT_MAX];     /* its user_id: who wrote it, as the broker checked */
    char sender[DLQ_TEXT_MAX]; /* the original sender, for a trusted letter */
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

static void dlq_time(int64_t ts, char *out, size_t len)
{
    struct tm tm;
    time_t t = (time_t)ts;
    if (ts <= 0 || !gmtime_r(&t, &tm) || strftime(out, len, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        snprintf(out, len, "-");
}

/* Who may have written a letter of client's dir queue and what the
 * original sender was: 1 with sender filled when the broker vouches for it
 * (see the top of this file), else 0. */
static int dlq_trust(const struct config *cfg, enum broker_dir dir, const char *client,
                     const struct broker_delivery *d, char *sender, size_t len)
{
    const char *by = d->user_id ? d->user_id : "";
    const char *peer = NULL;
    sender[0] = '\0';
    if (dir == BROKER_FORWARD) {
        const struct config_server_client *sc = config_server_client_find(cfg, client);
        peer = sc ? sc->amqp_user : NULL;
    } else {
        peer = cfg->client.server_user;
    }
    if (*by && strcmp(by, cfg->amqp.user) == 0) {
        const char *relayed = broker_delivery_header_str(d, "x-rt-user");
        if (!relayed || !*relayed)
            return 0;
        snprintf(sender, len, "%s", relayed);
        return 1;
    }
    if (*by && peer && *peer && strcmp(by, peer) == 0) {
        snprintf(sender, len, "%s", peer);
        return 1;
    }
    return 0;
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
static int dlq_keep(struct dlq *q, struct broker_delivery *d, enum dlq_sub sub, const char *want_id,
                    enum broker_dir dir, const char *client)
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
    l->dir = dir;
    char sender[DLQ_TEXT_MAX];
    l->trusted = dlq_trust(q->cfg, dir, client, d, sender, sizeof(sender));
    dlq_copy_text(l->sender, sizeof(l->sender), sender);
    dlq_copy_text(l->by, sizeof(l->by), d->user_id);
    /* The x-rt-* headers mean something only in a letter this side wrote:
     * anyone else could have put anything there. */
    int ours = l->trusted && strcmp(d->user_id, q->cfg->amqp.user) == 0;
    const char *mid = ours ? broker_delivery_header_str(d, "x-rt-message-id") : NULL;
    if (!mid || !*mid)
        mid = d->message_id;
    dlq_copy_text(l->id, sizeof(l->id), mid);
    dlq_copy_text(l->client, sizeof(l->client), client);
    if (ours) {
        dlq_copy_text(l->queue, sizeof(l->queue), broker_delivery_header_str(d, "x-rt-queue"));
        dlq_copy_text(l->reason, sizeof(l->reason), broker_delivery_header_str(d, "x-rt-reason"));
        dlq_copy_text(l->kind, sizeof(l->kind), broker_delivery_header_str(d, "x-rt-kind"));
        if (broker_delivery_header_int(d, "x-rt-task", &l->task) < 0)
            l->task = 0;
        if (broker_delivery_header_int(d, "x-rt-attempts", &l->attempts) < 0)
            l->attempts = 0;
    } else {
        const char *why = broker_delivery_header_str(d, "x-first-death-reason");
        char reason[DLQ_TEXT_MAX];
        if (l->trusted)
            snprintf(reason, sizeof(reason), "broker: %s", why && *why ? why : "dead-lettered");
        else
            snprintf(reason, sizeof(reason), "untrusted: written by \"%.200s\", not by this side "
                     "or the peer", d->user_id[0] ? d->user_id : "(no user_id)");
        dlq_copy_text(l->reason, sizeof(l->reason), reason);
        broker_queue_name(l->queue, sizeof(l->queue), dir, client);
    }
    l->timestamp = d->timestamp;
    l->chosen = !want_id || strcmp(want_id, l->id) == 0;
    if (sub == DLQ_REPLAY && l->chosen)
        l->d = d;
    else
        broker_delivery_free(d);
    return 0;
}

/* Fetches the snapshot of one dead-letter queue. Returns 0, or -1 after
 * printing why not; *missing is set when the queue does not exist. */
static int dlq_fetch_queue(struct dlq *q, enum dlq_sub sub, const char *want_id,
                           enum broker_dir dir, const char *client, int *missing, int *capped)
{
    char name[BROKER_NAME_MAX];
    uint32_t ready = 0, consumers = 0;
    *missing = 0;
    if (broker_dead_queue_name(name, sizeof(name), dir, client) < 0) {
        fprintf(stderr, "remotetaskctl: client id \"%s\" is not usable in queue names\n", client);
        return -1;
    }
    rt_status st = broker_queue_depth(q->b, name, &ready, &consumers);
    if (st == RT_REJECT) {
        *missing = 1;
        return 0;
    }
    if (st != RT_OK) {
        fprintf(stderr, "remotetaskctl: cannot read queue %s: %s\n", name, broker_strerror(q->b));
        return -1;
    }
    /* Only what was there at the start: a replay that fails again comes
     * back to the queue, and must not be replayed again by this run. */
    size_t limit = ready;
    if (q->n + limit > DLQ_MAX_MESSAGES) {
        limit = q->n < DLQ_MAX_MESSAGES ? DLQ_MAX_MESSAGES - q->n : 0;
        *capped = 1;
    }
    for (size_t i = 0; i < limit; i++) {
        struct broker_delivery *d = NULL;
        st = broker_get(q->b, name, &d, NULL);
        if (st == RT_REJECT && i == 0) {
            *missing = 1;
            return 0;
        }
        if (st != RT_OK) {
            fprintf(stderr, "remotetaskctl: cannot read queue %s: %s\n", name,
                    broker_strerror(q->b));
            return -1;
        }
        if (!d)
            break; /* someone else took the rest meanwhile */
        if (dlq_keep(q, d, sub, want_id, dir, client) < 0) {
            fprintf(stderr, "remotetaskctl: out of memory reading queue %s\n", name);
            return -1;
        }
    }
    return 0;
}

/* Fetches the snapshot of every dead-letter queue this configuration
 * reads. Returns 0, or -1 after printing why not; *missing is set when
 * none of them exists (no daemon declared the topology yet). */
static int dlq_fetch(struct dlq *q, enum dlq_sub sub, const char *want_id, int *missing,
                     int *capped)
{
    const struct config *cfg = q->cfg;
    int found = 0, miss;
    *capped = 0;
    for (size_t i = 0; cfg->server.enabled && i < cfg->server.n_clients; i++) {
        if (dlq_fetch_queue(q, sub, want_id, BROKER_FORWARD, cfg->server.clients[i].id, &miss,
                            capped) < 0)
            return -1;
        found |= !miss;
    }
    if (cfg->client.enabled) {
        if (dlq_fetch_queue(q, sub, want_id, BROKER_REVERSE, cfg->client.id, &miss, capped) < 0)
            return -1;
        found |= !miss;
    }
    *missing = !found;
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
               l->client, l->task, broker_dir_name(l->dir), l->attempts, when,
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
            json_pack("{s:s,s:s,s:I,s:s,s:s,s:s,s:s,s:I,s:s,s:I,s:s,s:b}", "id", l->id, "client",
                      l->client, "task", (json_int_t)l->task, "direction",
                      broker_dir_name(l->dir), "queue", l->queue, "reason", l->reason, "kind",
                      l->kind, "attempts", (json_int_t)l->attempts, "time", when, "timestamp",
                      (json_int_t)l->timestamp, "written_by", l->by, "trusted", l->trusted);
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
        fprintf(stderr, "remotetaskctl: only the first %d dead letters were read\n",
                DLQ_MAX_MESSAGES);
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
        fprintf(stderr, "remotetaskctl: only the first %d dead letters were read: run again\n",
                DLQ_MAX_MESSAGES);
    printf("purged %zu\n", removed);
    return 0;
}

/* Republishes one dead letter to its client's queue, through the client's
 * own retry exchange. Returns 0, or -1 after printing why it cannot be
 * (it stays a dead letter). */
static int dlq_publish(struct dlq *q, struct dlq_letter *l)
{
    char exchange[BROKER_NAME_MAX];
    if (!l->trusted) {
        fprintf(stderr, "remotetaskctl: %s: not replayed: %s\n", l->id[0] ? l->id : "(no id)",
                l->reason);
        return -1;
    }
    if (!l->d || l->d->too_big || broker_retry_exchange(exchange, sizeof(exchange), l->client) < 0 ||
        !l->id[0]) {
        fprintf(stderr, "remotetaskctl: %s: cannot replay: no body, id or valid client id\n",
                l->id[0] ? l->id : "(no id)");
        return -1;
    }
    /* The appliers take a copy published under this process's login only
     * with the original sender in x-rt-user (RabbitMQ checks user_id), and
     * that sender comes from what the broker vouched for, never from a
     * header someone else could have written. */
    struct broker_header h[3];
    size_t nh = 0;
    h[nh++] = (struct broker_header){"x-rt-attempts", BROKER_HEADER_INT, NULL, 0};
    h[nh++] = (struct broker_header){"x-rt-replayed", BROKER_HEADER_INT, NULL, 1};
    h[nh++] = (struct broker_header){"x-rt-user", BROKER_HEADER_STR, l->sender, 0};
    struct broker_props props;
    memset(&props, 0, sizeof(props));
    props.message_id = l->id;
    props.headers = h;
    props.n_headers = nh;
    if (broker_publish(q->b, exchange, broker_dir_name(l->dir), &props, l->d->body, l->d->len,
                       &l->pub_tag) != RT_OK) {
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
    int64_t deadline = clock_mono_ms() + DLQ_CONFIRM_TIMEOUT_MS;
    while (q->awaiting > 0 && broker_connected(q->b)) {
        int64_t left = deadline - clock_mono_ms();
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
        fprintf(stderr, "remotetaskctl: only the first %d dead letters were read: run again\n",
                DLQ_MAX_MESSAGES);
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
            printf("no dead letters: no dead-letter queue of this configuration's clients "
                   "exists on this broker\n");
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
