#include "relay_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "clock.h"
#include "codec.h"
#include "log.h"

/* ---- clocks and the store's trouble ---------------------------------- */

/* Now on the clock of the ticks, for schedules set between ticks. */
int64_t relay_clock_ms(const struct relay *r)
{
    return r->tick_now + (clock_mono_ms() - r->tick_mono);
}

/* A store call failed (what: the sentence's subject): logged once per
 * cause, and store work pauses for a backoff, so that a store waiting out
 * its busy timeout on every call does not stall the loop. The work itself
 * is kept: rows stay in the outbox, confirmed messages wait ACKED. */
void relay_store_failed(struct relay *r, const char *what)
{
    const char *why = store_strerror(r->st), *cause = store_strcause(r->st);
    r->store_backoff = r->store_backoff <= 0                              ? RELAY_STORE_RETRY_MIN_MS
                       : r->store_backoff >= RELAY_STORE_RETRY_MAX_MS / 2 ? RELAY_STORE_RETRY_MAX_MS
                                                                          : r->store_backoff * 2;
    r->store_retry_at = relay_clock_ms(r) + r->store_backoff;
    if (strcmp(cause, r->store_trouble) != 0) {
        log_warning("%s: %s; the work waits and is tried again (every %d s at most)", what, why,
                    RELAY_STORE_RETRY_MAX_MS / 1000);
        snprintf(r->store_trouble, sizeof r->store_trouble, "%s", cause);
    } else {
        log_debug("%s: %s", what, why);
    }
}

/* A write to the store worked (reads work while another process holds the
 * write lock, so only a write says the trouble is over). */
void relay_store_ok(struct relay *r)
{
    r->store_backoff = 0;
    r->store_retry_at = 0;
    if (r->store_trouble[0]) {
        log_info("the store works again (after: %s)", r->store_trouble);
        r->store_trouble[0] = '\0';
    }
}

/* 1 while store work waits for its backoff. */
int relay_store_paused(const struct relay *r, int64_t mono)
{
    return r->store_trouble[0] && mono < r->store_retry_at;
}

/* ---- the outbox ------------------------------------------------------ */

/* Reads due rows and takes those not already in progress into free slots.
 * It asks for a whole window's worth: the rows in progress are due too and
 * come first (oldest first_ms), so asking only for the free slots could
 * return nothing but rows already taken. */
static void relay_outbox_scan(struct relay *r, int64_t now_ms)
{
    size_t n = 0;

    r->woken = 0;
    r->next_scan_ms = now_ms + RELAY_SCAN_INTERVAL_MS;
    if (store_outbox_due(r->st, clock_wall_ms(), r->nslots, r->due, &n) != RT_OK) {
        relay_store_failed(r, "cannot read the outbox");
        r->more_due = 0;
        return;
    }
    r->more_due = n == r->nslots;
    for (size_t i = 0; i < n && r->used < r->nslots; i++) {
        const struct store_event *ev = &r->due[i];
        if (relay_slot_busy(r, ev->client, ev->task))
            continue;
        if (strcmp(ev->client, r->cfg->client.id) != 0) {
            /* Left from a configuration with another client id: the task
             * is still reconciled under the current id, so the old event
             * carries nothing that would be lost. */
            log_warning("event of task %" PRId64 " for client \"%s\", not this client \"%s\": "
                        "dropped",
                        ev->task, ev->client, r->cfg->client.id);
            if (store_outbox_done(r->st, ev->client, ev->task, ev->gen, NULL) == RT_OK)
                r->stats.dropped++;
            else
                relay_store_failed(r, "cannot drop an event of another client id");
            continue;
        }
        struct relay_slot *s = relay_slot_free_one(r);
        if (!s || relay_slot_take(r, s, ev) < 0)
            break;
    }
}

/* The end of the loop pass, before the store's sync. */
static void relay_pass_end(void *arg)
{
    relay_commit_confirmed(arg);
}

/* The store synced the loop pass's commits: the seqs they allocated may
 * go out, and the slots relay_pass_end freed take the next rows. The pump
 * must run here: the confirmations' own callbacks ran while their slots
 * were still taken, so with no other callback to come a drained window
 * would wait for the next tick (up to RELAY_SCAN_INTERVAL_MS) with a
 * backlog in the outbox. */
static void relay_synced(void *arg)
{
    struct relay *r = arg;
    relay_pump(r, relay_clock_ms(r));
}

/* Moves work forward: publishes what waits for the broker and fills free
 * slots from the outbox. Scans when woken, once per scan interval, or
 * when the last scan was full and at least a quarter of the window is
 * free again (so that a long backlog is read in batches, not row by row).
 * Called from the tick and at the end of every callback; callbacks that
 * arrive while it runs (a LOST from inside broker_publish) only change
 * slot states. */
void relay_pump(struct relay *r, int64_t now_ms)
{
    if (r->in_pump || r->draining)
        return;
    r->in_pump = 1;
    relay_publish_ready(r);
    size_t free_slots = r->nslots - r->used;
    size_t batch = r->nslots / 4 ? r->nslots / 4 : 1;
    if (free_slots > 0 && !relay_store_paused(r, now_ms) &&
        (r->woken || now_ms >= r->next_scan_ms || (r->more_due && free_slots >= batch)))
        relay_outbox_scan(r, now_ms);
    r->in_pump = 0;
}

/* ---- the component --------------------------------------------------- */

struct relay *relay_new(const struct config *cfg, struct store *st, struct billmgr *bm,
                        struct broker *br, char *err, size_t errlen)
{
    struct relay *r;

    if (!cfg || !cfg->client.enabled || !cfg->client.id || !st || !bm || !br) {
        snprintf(err, errlen,
                 "the relay needs a client section, a store, an API client and "
                 "a broker");
        return NULL;
    }
    r = calloc(1, sizeof *r);
    if (!r)
        goto fail_alloc;
    r->cfg = cfg;
    r->st = st;
    r->bm = bm;
    r->br = br;
    int inflight = cfg->billmanager.max_inflight > 0 ? cfg->billmanager.max_inflight : 1;
    r->nslots = (size_t)inflight * RELAY_WINDOW_PER_INFLIGHT;
    r->slots = calloc(r->nslots, sizeof *r->slots);
    r->due = calloc(r->nslots, sizeof *r->due);
    if (!r->slots || !r->due)
        goto fail_alloc;
    for (size_t i = 0; i < r->nslots; i++) {
        r->slots[i].r = r;
        buf_init(&r->slots[i].body, CODEC_MAX_BODY);
    }
    bool found = false;
    if (store_meta_get_i64(st, RELAY_META_LAST_PUBLISH, &r->stats.last_publish_ms, &found) !=
        RT_OK) {
        log_warning("cannot read the time of the last forward publish: %s", store_strerror(st));
        r->stats.last_publish_ms = 0;
    }
    if (store_listen_before(st, relay_pass_end, r) != RT_OK ||
        store_listen(st, relay_synced, r) != RT_OK) {
        snprintf(err, errlen, "%s", store_strerror(st));
        relay_free(r);
        return NULL;
    }
    relay_recon_init(r);
    r->woken = 1;
    /* Until the first tick gives its clock. */
    r->tick_mono = r->tick_now = clock_mono_ms();
    return r;

fail_alloc:
    relay_free(r);
    snprintf(err, errlen, "out of memory");
    return NULL;
}

void relay_free(struct relay *r)
{
    if (!r)
        return;
    store_unlisten(r->st, relay_pass_end, r);
    store_unlisten(r->st, relay_synced, r);
    for (size_t i = 0; r->slots && i < r->nslots; i++)
        buf_release(&r->slots[i].body);
    free(r->slots);
    free(r->due);
    free(r);
}

/* Follows the wall clock: its offset from the monotonic clock, and rows
 * of the outbox deferred by a clock that was ahead of it. At the first
 * tick, rows deferred further than the relay ever defers (written by a
 * clock that was ahead before a restart) become due; after a step back,
 * every deferred row moves back as far. */
static void relay_clock(struct relay *r, int64_t now_ms)
{
    int64_t mono = clock_mono_ms(), wall_ms = clock_wall_ms();
    int64_t skew = wall_ms - mono;
    r->tick_now = now_ms;
    r->tick_mono = mono;
    int first = !r->clock_known;
    if (!first && r->wall_skew - skew > RELAY_CLOCK_STEP_MS) {
        log_warning("the wall clock went back %" PRId64 " s: deferred events are moved back as "
                    "far",
                    (r->wall_skew - skew) / 1000);
        r->resched_back += r->wall_skew - skew;
        r->resched_pending = 1;
    }
    r->wall_skew = skew;
    r->clock_known = 1;
    if (first)
        r->resched_pending = 1;
    if (!r->resched_pending || relay_store_paused(r, now_ms))
        return;
    int64_t max =
        RELAY_BACKOFF_MAX_MS > RELAY_REJECT_DELAY_MS ? RELAY_BACKOFF_MAX_MS : RELAY_REJECT_DELAY_MS;
    uint64_t n = 0;
    if (store_outbox_reschedule(r->st, wall_ms, r->resched_back, max, &n) != RT_OK) {
        relay_store_failed(r, "cannot reschedule deferred events after a clock step");
        return;
    }
    if (n)
        log_info("%" PRIu64 " deferred outbox events rescheduled for the wall clock", n);
    r->resched_pending = 0;
    r->resched_back = 0;
}

int64_t relay_tick(struct relay *r, int64_t now_ms)
{
    relay_clock(r, now_ms);
    /* Confirmed messages whose commit the store refused; while it still
     * refuses, one try per backoff, not one per message. */
    for (size_t i = 0; i < r->nslots && !relay_store_paused(r, now_ms); i++)
        if (r->slots[i].state == SLOT_ACKED)
            relay_slot_commit(&r->slots[i]);
    if (!r->draining && !r->recon_running && now_ms >= r->next_recon_ms)
        relay_recon_start(r);
    relay_pump(r, now_ms);

    int64_t next = now_ms + RELAY_SCAN_INTERVAL_MS;
    if (!r->draining && !r->recon_running && r->next_recon_ms < next)
        next = r->next_recon_ms > now_ms ? r->next_recon_ms : now_ms;
    if (r->store_trouble[0] && r->store_retry_at < next)
        next = r->store_retry_at > now_ms ? r->store_retry_at : now_ms;
    return next;
}

void relay_on_confirm(struct relay *r, uint64_t tag, enum broker_fate fate)
{
    struct relay_slot *s = NULL;
    char reason[STORE_ERROR_MAX];

    for (size_t i = 0; i < r->nslots; i++) {
        if (r->slots[i].state == SLOT_PUBLISHED && r->slots[i].tag == tag) {
            s = &r->slots[i];
            break;
        }
    }
    if (!s)
        return;
    s->tag = 0;
    switch (fate) {
    case BROKER_ACKED:
        /* A lazy store (the daemon's) records the pass's confirmations
         * together at its end; otherwise each at once. Nothing waits for
         * that commit to be durable: lost in a power cut, the row is
         * viewed and sent again under a new seq, and the server finds
         * nothing changed against what it applied. So it asks for the
         * pass's end, not for a sync. */
        if (store_lazy(r->st)) {
            s->state = SLOT_CONFIRMED;
            store_want_pass_end(r->st);
        } else {
            relay_slot_commit(s);
        }
        break;
    case BROKER_NACKED:
    case BROKER_RETURNED: {
        int64_t delay = relay_backoff_ms(s->ev.attempts);
        if (fate == BROKER_NACKED)
            snprintf(reason, sizeof reason, "the broker refused the message (nack)");
        else
            snprintf(reason, sizeof reason,
                     "unroutable: no queue is bound to %s with routing key \"%s\"",
                     BROKER_EXCHANGE_FORWARD, r->cfg->client.id);
        log_warning("cannot forward task %" PRId64 " (seq %" PRIu64 "), retrying in %" PRId64
                    " ms: %s",
                    s->ev.task, s->seq, delay, reason);
        relay_slot_defer(s, delay, reason);
        break;
    }
    case BROKER_LOST:
    default:
        /* Fate unknown: publish the same message again once connected.
         * If it did arrive, the server drops the copy by its seq. */
        log_debug("publish of task %" PRId64 " (seq %" PRIu64 ") lost with the connection",
                  s->ev.task, s->seq);
        s->state = SLOT_READY;
        if (r->draining)
            relay_slot_release(s);
        break;
    }
    relay_pump(r, relay_clock_ms(r));
}

void relay_on_connected(struct relay *r)
{
    relay_pump(r, relay_clock_ms(r));
}

void relay_wake(struct relay *r, int reconcile)
{
    r->woken = 1;
    if (reconcile)
        relay_recon_start(r);
    relay_pump(r, relay_clock_ms(r));
}

void relay_drain(struct relay *r)
{
    r->draining = 1;
    r->recon_pending = 0;
    /* Messages waiting for the broker are not in flight: their rows stay
     * in the outbox and go out after the restart. */
    for (size_t i = 0; i < r->nslots; i++)
        if (r->slots[i].state == SLOT_READY)
            relay_slot_release(&r->slots[i]);
}

int relay_idle(const struct relay *r)
{
    return r->used == 0 && !r->recon.call;
}

void relay_stats(const struct relay *r, struct relay_stats *out)
{
    *out = r->stats;
    out->in_progress = r->used;
    out->unconfirmed = 0;
    for (size_t i = 0; i < r->nslots; i++)
        if (r->slots[i].state == SLOT_PUBLISHED)
            out->unconfirmed++;
    out->reconciling = r->recon_running;
}
