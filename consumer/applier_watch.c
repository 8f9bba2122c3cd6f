/*
 * applier_watch.c - the retry copies watched until they come back
 * (applier.h; the store's side is store.h, "retry copies under watch").
 *
 * Once the broker confirms a retry copy, the delivery is acked and the
 * copy in the delay queue is the task's only message: the broker's
 * dead-lettering is what brings it back to the main queue. That step can
 * lose it with the broker's confirm already given (RabbitMQ 3.10's
 * at-least-once dead-lettering loses or strands messages when a quorum
 * queue's leader is killed; it_cluster met it: 5 tasks of 1,000), and so
 * can an operator who purges a delay queue. So the copy is written to the
 * store before the delivery is acked (the ack waits for the sync that
 * makes the row durable), the row goes when a delivery of the task with
 * that seq or a newer one is scheduled, and a row still there
 * APPLIER_WATCH_GRACE_MS after its copy was due back is sent again,
 * straight to the main queue (the retry exchange routes the direction's
 * own key there), and watched again. A copy that was only late comes
 * back twice: its seq makes the second one a duplicate, as a redelivery
 * is.
 */
#include "applier.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "applier_int.h"
#include "clock.h"
#include "log.h"
#include "store.h"
#include "store_journal.h"

/* How long after its delay a copy may take to come back before it is
 * taken as lost: the main queue may hold a backlog in front of it, and a
 * quorum queue's election takes seconds. A late copy only costs a
 * duplicate, a lost one this long. */
#define APPLIER_WATCH_GRACE_MS 60000
/* How often the store is asked for copies that are due. */
#define APPLIER_WATCH_CHECK_MS 5000
/* Copies sent again per look; when a look finds a full batch the next
 * one comes at once (a purged delay queue can leave thousands). */
#define APPLIER_WATCH_BATCH    64
#define APPLIER_WATCH_AGAIN_MS 250
/* Copies named one by one per look at warning level; the rest of the
 * look's are counted in one line (and named at debug level). */
#define APPLIER_WATCH_LOUD 5
/* A copy of a client this daemon no longer serves (removed from its
 * configuration) is kept, not sent to a queue nobody reads, and looked at
 * again this much later: a client put back gets its copies then, at the
 * cost of a day's wait, and one removed for good costs one line a day. */
#define APPLIER_WATCH_KEPT_MS (24LL * 3600 * 1000)

/* A local step of the watch failed: logged when the cause changes. */
static void applier_watch_trouble(struct applier *a, const char *what)
{
    const char *cause = store_strcause(a->st);
    if (strcmp(cause, a->watch_trouble) != 0) {
        log_warning("retry watch: %s: %s", what, store_strerror(a->st));
        applier_text_copy(a->watch_trouble, sizeof(a->watch_trouble), cause);
    }
}

void applier_watch_open(struct applier *a)
{
    uint64_t n = 0;
    if (!a->st)
        return;
    if (store_retry_count(a->st, (int)a->dir, &n) != RT_OK) {
        /* Unknown: look, as if there were some; the first look counts. */
        applier_watch_trouble(a, "counting the watched copies");
        n = 1;
    } else if (n) {
        log_info("%" PRIu64 " %s retry cop%s sent before a restart watched until %s back", n,
                 broker_dir_name(a->dir), n == 1 ? "y" : "ies", n == 1 ? "it comes" : "they come");
    }
    a->watched = n;
    a->watch_at = 0;
}

void applier_watch_put(struct applier_slot *s)
{
    struct applier *a = s->a;
    if (!a->st)
        return;
    if (!s->keyed) {
        /* Only a message whose seq is known can be told apart from its
         * copy; none is retried before it is read (applier.h). */
        log_debug("retry copy of a message of queue \"%s\" not watched: its task is not known",
                  s->queue);
        return;
    }
    unsigned tier = broker_retry_tier((unsigned)(s->attempts + 1));
    struct store_retry r;
    memset(&r, 0, sizeof(r));
    r.dir = (int)a->dir;
    applier_text_copy(r.client, sizeof(r.client), s->client);
    r.task = s->task;
    r.seq = s->seq;
    r.attempts = s->attempts + 1;
    r.due_ms = clock_wall_ms() + broker_retry_delay_ms(tier) + APPLIER_WATCH_GRACE_MS;
    applier_text_copy(r.user, sizeof(r.user), s->user);
    applier_text_copy(r.message_id, sizeof(r.message_id), s->message_id);
    applier_text_copy(r.reason, sizeof(r.reason), s->reason);
    r.body = s->body;
    r.len = s->body ? s->len : 0;
    if (store_retry_put(a->st, &r) != RT_OK) {
        /* The copy is in the broker all the same: only its watch is
         * missing, which matters only if the broker loses it too. */
        applier_watch_trouble(a, "a confirmed retry copy is not watched");
        return;
    }
    /* One more, or the same number when the put replaced the row of an
     * older copy of the task: the next look counts again. */
    a->watched++;
    if (a->watch_trouble[0]) {
        log_info("retry watch: the store takes the watched copies again");
        a->watch_trouble[0] = '\0';
    }
}

void applier_watch_clear(struct applier_slot *s)
{
    struct applier *a = s->a;
    uint64_t cleared = 0;
    if (!a->st || !a->watched)
        return;
    if (store_retry_clear(a->st, (int)a->dir, s->client, s->task, s->seq, &cleared) != RT_OK) {
        /* The row stays: at worst the copy is sent again, a duplicate. */
        applier_watch_trouble(a, "clearing the watch of a copy that came back");
        return;
    }
    if (cleared && a->watched)
        a->watched--;
}

/* Sends the watched copy r again to the main queue of its direction; 0
 * when the broker module took it. */
static int applier_watch_send(struct applier *a, const struct store_retry *r)
{
    char exchange[BROKER_NAME_MAX], key[BROKER_NAME_MAX];
    struct broker_header h[APPLIER_RETRY_HEADERS];
    struct broker_props props;
    uint64_t tag = 0;

    if (broker_retry_exchange(exchange, sizeof(exchange), r->client) < 0)
        return -1;
    applier_text_copy(key, sizeof(key), broker_dir_name(a->dir));
    memset(&props, 0, sizeof(props));
    props.message_id = r->message_id[0] ? r->message_id : NULL;
    props.headers = h;
    props.n_headers = applier_retry_headers(h, r->attempts, r->reason, r->user);
    /* Its confirm is not waited for: the row stays until the copy comes
     * back, and is due again if this one is lost as well. */
    return a->io->publish(a->br, exchange, key, &props, r->body, r->len, &tag) == RT_OK ? 0 : -1;
}

/* What a look did with one due copy. */
enum applier_watch_done {
    WATCH_SENT, /* sent again, due again a grace later */
    WATCH_KEPT, /* of a client no longer served: due again in a day */
    WATCH_SKIP, /* its queue names do not fit: left as it is */
    WATCH_STOP, /* the broker did not take it: the next look */
};

/* Sends the due copy r again, or keeps it when its client is no longer
 * served; loud: name it at warning level (else at debug). */
static enum applier_watch_done applier_watch_one(struct applier *a, const struct store_retry *r,
                                                 int64_t wall, int loud)
{
    char delay_q[BROKER_NAME_MAX], main_q[BROKER_NAME_MAX];
    unsigned tier = broker_retry_tier((unsigned)r->attempts);
    int level = loud ? LOG_LEVEL_WARNING : LOG_LEVEL_DEBUG;

    if (broker_retry_queue_name(delay_q, sizeof(delay_q), a->dir, r->client, tier) < 0 ||
        broker_queue_name(main_q, sizeof(main_q), a->dir, r->client) < 0)
        return WATCH_SKIP;
    if (a->ops->serves && !a->ops->serves(a->owner, r->client)) {
        log_msg(level,
                "the retry copy of task %" PRId64 " of client \"%s\" (attempt %" PRId64
                ") has not come back from \"%s\", but this daemon no longer serves that "
                "client: kept, not sent to \"%s\"; looked at again in 24 h",
                r->task, r->client, r->attempts, delay_q, main_q);
        if (store_retry_push(a->st, (int)a->dir, r->client, r->task, r->seq,
                             wall + APPLIER_WATCH_KEPT_MS) != RT_OK)
            applier_watch_trouble(a, "rescheduling a copy of a client no longer served");
        return WATCH_KEPT;
    }
    if (applier_watch_send(a, r) != 0)
        return WATCH_STOP;
    log_msg(level,
            "the retry copy of task %" PRId64 " of client \"%s\" (attempt %" PRId64
            ") has not come back from \"%s\" %" PRId64 " s after it was due: sent again to "
            "\"%s\"",
            r->task, r->client, r->attempts, delay_q,
            (wall - (r->due_ms - APPLIER_WATCH_GRACE_MS)) / 1000, main_q);
    a->stats.resent++;
    /* The forward applier runs on the server, the reverse one on the
     * client: the journal's side follows the direction. */
    store_journal_add(a->st, 0, a->dir == BROKER_FORWARD ? STORE_SIDE_SERVER : STORE_SIDE_CLIENT,
                      r->client, r->task, 0, JOURNAL_RETRIED, r->seq,
                      "attempt %" PRId64 ": the copy did not come back from \"%s\": sent again",
                      r->attempts, delay_q);
    if (store_retry_push(a->st, (int)a->dir, r->client, r->task, r->seq,
                         wall + APPLIER_WATCH_GRACE_MS) != RT_OK)
        applier_watch_trouble(a, "rescheduling a copy sent again");
    return WATCH_SENT;
}

int64_t applier_watch_due(struct applier *a, int64_t now_ms, int64_t next)
{
    struct store_retry due[APPLIER_WATCH_BATCH];
    size_t n = 0, sent = 0, kept = 0, i;

    if (!a->st || !a->watched || a->draining)
        return next;
    if (now_ms < a->watch_at)
        return next < a->watch_at ? next : a->watch_at;
    a->watch_at = now_ms + APPLIER_WATCH_CHECK_MS;
    if (!a->io->connected(a->br) || a->io->blocked(a->br))
        return next;
    /* The count is what keeps the clear off the path of every delivery
     * while nothing is watched; puts may have counted a replaced row. */
    uint64_t count = 0;
    if (store_retry_count(a->st, (int)a->dir, &count) == RT_OK) {
        a->watched = count;
        if (!count)
            return next;
    }
    int64_t wall = clock_wall_ms();
    if (store_retry_due(a->st, (int)a->dir, wall, APPLIER_WATCH_BATCH, due, &n) != RT_OK) {
        applier_watch_trouble(a, "reading the watched copies");
        return next;
    }
    for (i = 0; i < n; i++) {
        enum applier_watch_done d =
            applier_watch_one(a, &due[i], wall, sent + kept < APPLIER_WATCH_LOUD);
        if (d == WATCH_STOP)
            break;
        sent += d == WATCH_SENT;
        kept += d == WATCH_KEPT;
    }
    if (sent + kept > APPLIER_WATCH_LOUD)
        log_warning("%zu %s retry copies that had not come back: %zu sent again, %zu of "
                    "clients no longer served kept (the first %d named above)",
                    sent + kept, broker_dir_name(a->dir), sent, kept, APPLIER_WATCH_LOUD);
    /* A full batch looked at whole: more may be due at once. */
    if (n == APPLIER_WATCH_BATCH && i == n)
        a->watch_at = now_ms + APPLIER_WATCH_AGAIN_MS;
    store_retry_release(due, n);
    return next < a->watch_at ? next : a->watch_at;
}
