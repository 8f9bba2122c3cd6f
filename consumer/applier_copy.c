/*
 * applier_copy.c - the retry and dead-letter copies (applier.h): when
 * applying fails, the body goes to the client's retry exchange
 * (x-rt-attempts + 1, the reason in x-rt-error) or to its dead-letter
 * exchange (the reason and its origin in x-rt-* headers), and the delivery
 * is acked once the broker confirms that copy. A copy the broker refuses
 * (nack) or returns keeps its slot and is published again after a backoff,
 * the cause logged once: the delivery is never requeued for it.
 */
#include "applier.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "applier_int.h"
#include "log.h"
#include "store_journal.h"

/* Writes the exchange and the routing key of the slot's copy; key is ""
 * when the client cannot name one. */
static void applier_copy_route(const struct applier_slot *s, char *exchange, size_t elen, char *key,
                               size_t klen)
{
    int dead = s->phase == APPLIER_DEAD_PUBLISH;
    /* Each client has its own retry and dead-letter exchanges, so that a
     * copy can only ever reach that client's queues. */
    exchange[0] = key[0] = '\0';
    if (dead) {
        if (broker_dead_exchange(exchange, elen, s->client) == 0)
            applier_text_copy(key, klen, broker_dir_name(s->a->dir));
    } else if (broker_retry_exchange(exchange, elen, s->client) < 0 ||
               broker_retry_key(key, klen, s->a->dir, (unsigned)(s->attempts + 1)) < 0) {
        key[0] = '\0';
    }
}

/* The copy of s was refused (nack, return, or a publish the broker module
 * turned down): it keeps its slot and goes again after a backoff. The
 * cause is logged once, until a copy is taken again. */
static void applier_refused(struct applier_slot *s, const char *why)
{
    struct applier *a = s->a;
    char exchange[BROKER_NAME_MAX], key[BROKER_NAME_MAX], cause[APPLIER_REASON_MAX];
    int retry = s->phase == APPLIER_RETRY_PUBLISH;

    applier_copy_route(s, exchange, sizeof(exchange), key, sizeof(key));
    s->pub_sent = 0;
    s->pub_delay =
        applier_backoff(s->pub_delay, APPLIER_REPUBLISH_MIN_MS, APPLIER_REPUBLISH_MAX_MS);
    s->pub_at = applier_clock_ms(a) + s->pub_delay;
    snprintf(cause, sizeof(cause), "%s copies to \"%s\": %s", retry ? "retry" : "dead-letter",
             exchange, why);
    if (strcmp(cause, a->pub_trouble) != 0) {
        log_warning("the %s copy of task %" PRId64 " of client \"%s\" was not taken (%s): the "
                    "message stays unacknowledged and its copy is published again, every %d s "
                    "at most, until the broker takes it",
                    retry ? "retry" : "dead-letter", s->task, s->client, cause,
                    APPLIER_REPUBLISH_MAX_MS / 1000);
        applier_text_copy(a->pub_trouble, sizeof(a->pub_trouble), cause);
    } else {
        log_debug("the %s copy of task %" PRId64 " of client \"%s\" was not taken again (%s): "
                  "next try in %" PRId64 " ms",
                  retry ? "retry" : "dead-letter", s->task, s->client, cause, s->pub_delay);
    }
}

size_t applier_retry_headers(struct broker_header *h, int64_t attempts, const char *reason,
                             const char *user)
{
    h[0] = (struct broker_header){"x-rt-attempts", BROKER_HEADER_INT, NULL, attempts};
    h[1] = (struct broker_header){"x-rt-error", BROKER_HEADER_STR, reason, 0};
    h[2] = (struct broker_header){"x-rt-user", BROKER_HEADER_STR, user, 0};
    return APPLIER_RETRY_HEADERS;
}

/* Publishes the retry or dead-letter copy of the slot's delivery. */
void applier_publish(struct applier_slot *s)
{
    struct applier *a = s->a;
    struct broker_header h[8];
    struct broker_props props;
    char key[BROKER_NAME_MAX], mid[APPLIER_SHORT_MAX + 48], exchange[BROKER_NAME_MAX];
    size_t n = 0;
    int dead = s->phase == APPLIER_DEAD_PUBLISH;

    memset(&props, 0, sizeof(props));
    memset(h, 0, sizeof(h));
    applier_copy_route(s, exchange, sizeof(exchange), key, sizeof(key));
    if (dead) {
        h[n++] = (struct broker_header){"x-rt-reason", BROKER_HEADER_STR, s->reason, 0};
        h[n++] = (struct broker_header){"x-rt-kind", BROKER_HEADER_STR,
                                        s->dead_kind_name ? s->dead_kind_name : "", 0};
        h[n++] = (struct broker_header){"x-rt-client", BROKER_HEADER_STR, s->client, 0};
        h[n++] = (struct broker_header){"x-rt-task", BROKER_HEADER_INT, NULL, s->task};
        h[n++] = (struct broker_header){"x-rt-queue", BROKER_HEADER_STR, s->queue, 0};
        h[n++] = (struct broker_header){"x-rt-attempts", BROKER_HEADER_INT, NULL, s->attempts};
        h[n++] = (struct broker_header){"x-rt-message-id", BROKER_HEADER_STR, s->message_id, 0};
        h[n++] = (struct broker_header){"x-rt-user", BROKER_HEADER_STR, s->user, 0};
    } else {
        n = applier_retry_headers(h, s->attempts + 1, s->reason, s->user);
    }
    if (s->message_id[0])
        applier_text_copy(mid, sizeof(mid), s->message_id);
    else
        snprintf(mid, sizeof(mid), "%s:%" PRIu64 ":%" PRIu64, s->queue, s->epoch, s->tag);
    props.message_id = mid;
    props.headers = h;
    props.n_headers = n;

    rt_status st = key[0]
                       ? a->io->publish(a->br, exchange, key, &props, s->body, s->len, &s->pub_tag)
                       : RT_REJECT;
    if (st == RT_OK) {
        s->pub_sent = 1;
        if (s->pub_delay)
            a->stats.republished++;
        return;
    }
    if (st == RT_RETRY && !a->io->connected(a->br)) {
        /* The connection is gone with the delivery: the broker redelivers. */
        log_debug("publish to \"%s\" failed for a message of queue \"%s\", left to redelivery: %s",
                  exchange, s->queue, a->io->strerror(a->br));
        applier_release(s);
        return;
    }
    if (st == RT_RETRY)
        return; /* blocked or too many unconfirmed: applier_tick tries again */
    /* Invalid for the broker module (which only a bug can cause): the
     * message is neither requeued nor lost; its copy is tried again. */
    log_error("cannot publish to \"%s\" a message of queue \"%s\": %s", exchange, s->queue,
              key[0] ? a->io->strerror(a->br) : "no routing key for its client");
    applier_refused(s, key[0] ? "refused by the broker module" : "no routing key");
}

/* Gives back the slot's place among the max_running. */
static void applier_stop_running(struct applier_slot *s)
{
    if (!s->running)
        return;
    s->running = 0;
    if (s->a->running)
        s->a->running--;
}

void applier_fail(struct applier_slot *s, rt_status status, int kind, const char *kind_name,
                  const char *fmt, ...)
{
    struct applier *a = s->a;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->reason, sizeof(s->reason), fmt, ap);
    va_end(ap);

    if (applier_stale(s)) {
        log_debug("failure of task %" PRId64 " of client \"%s\" after a reconnect (the message is "
                  "redelivered): %s",
                  s->task, s->client, s->reason);
        applier_release(s);
        return;
    }
    applier_stop_running(s);
    s->deferred = 0;
    s->pub_sent = 0;
    s->pub_at = 0;
    s->pub_delay = 0;
    if (status == RT_RETRY) {
        log_warning("apply failed for task %" PRId64 " of client \"%s\", retried (attempt %" PRId64
                    "): %s",
                    s->task, s->client, s->attempts + 1, s->reason);
        s->phase = APPLIER_RETRY_PUBLISH;
    } else {
        log_error("message %s of queue \"%s\" (task %" PRId64 " of client \"%s\") goes to "
                  "%s.%s.%s: %s",
                  s->message_id[0] ? s->message_id : "without id", s->queue, s->task, s->client,
                  BROKER_DEAD_PREFIX, s->client, broker_dir_name(a->dir), s->reason);
        s->dead_kind = kind;
        s->dead_kind_name = kind_name;
        s->phase = APPLIER_DEAD_PUBLISH;
    }
    applier_publish(s); /* s may be gone after this */
    applier_pump(a);
}

int applier_on_confirm(struct applier *a, uint64_t tag, enum broker_fate fate)
{
    if (!a)
        return 0;
    for (size_t i = 0; i < a->nslots; i++) {
        struct applier_slot *s = a->slots[i];
        if ((s->phase != APPLIER_RETRY_PUBLISH && s->phase != APPLIER_DEAD_PUBLISH) ||
            !s->pub_sent || s->pub_tag != tag)
            continue;
        int retry = s->phase == APPLIER_RETRY_PUBLISH;
        switch (fate) {
        case BROKER_ACKED:
            if (retry) {
                a->stats.retried++;
                applier_journal(s, JOURNAL_RETRIED, "attempt %" PRId64 ": %s", s->attempts + 1,
                                s->reason);
                applier_watch_put(s);
            } else {
                a->stats.dead++;
                applier_journal(s, JOURNAL_DEAD, "%s", s->reason);
                if (a->ops->dead)
                    a->ops->dead(a->owner, s);
            }
            if (a->pub_trouble[0]) {
                log_info("the broker takes copies again (after: %s)", a->pub_trouble);
                a->pub_trouble[0] = '\0';
            }
            applier_ack(s);
            break;
        case BROKER_NACKED:
        case BROKER_RETURNED:
            /* Never a requeue: it would come straight back, and count
             * toward a quorum queue's delivery limit. */
            applier_refused(s, fate == BROKER_NACKED ? "refused by the broker (nack)"
                                                     : "returned as unroutable");
            break;
        case BROKER_LOST:
            /* The connection went with the delivery: the broker redelivers. */
            applier_release(s);
            break;
        }
        return 1;
    }
    return 0;
}

int64_t applier_copies_due(struct applier *a, int64_t now_ms, int64_t next)
{
    for (size_t i = 0; i < a->nslots; i++) {
        struct applier_slot *s = a->slots[i];
        if ((s->phase != APPLIER_RETRY_PUBLISH && s->phase != APPLIER_DEAD_PUBLISH) || s->pub_sent)
            continue;
        if (a->draining) {
            applier_release(s); /* not sent yet: the broker gives it back at close */
            continue;
        }
        if (now_ms >= s->pub_at && a->io->connected(a->br) && !a->io->blocked(a->br))
            applier_publish(s);
        if ((s->phase == APPLIER_RETRY_PUBLISH || s->phase == APPLIER_DEAD_PUBLISH) &&
            !s->pub_sent) {
            int64_t at = s->pub_at > now_ms + 250 ? s->pub_at : now_ms + 250;
            if (at < next)
                next = at;
        }
    }
    return next;
}
