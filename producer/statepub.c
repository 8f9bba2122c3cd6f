#include "statepub_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "log.h"

/* ---- clocks ---------------------------------------------------------- */

/* Now on the clock of the ticks (monotonic), for schedules set between
 * ticks: a wall clock set back must not stall them. */
static int64_t sp_clock_ms(const struct statepub *sp)
{
    return sp->tick_now + (clock_mono_ms() - sp->tick_mono);
}

/* ---- cycles ---------------------------------------------------------- */

/* Adds a sync request to a client's pending ones, dropping the oldest when
 * they are full (its client has long stopped waiting for it). */
static void sp_sync_add_pending(struct sp_client *c, const struct sp_sync *s)
{
    if (c->npend == STATEPUB_MAX_SYNCS) {
        log_warning("too many sync requests of client \"%s\" waiting: sync \"%s\" dropped",
                    c->cc->id, c->pend[0].id);
        memmove(&c->pend[0], &c->pend[1], (STATEPUB_MAX_SYNCS - 1) * sizeof c->pend[0]);
        c->npend--;
    }
    c->pend[c->npend++] = *s;
}

static void sp_cycle_start(struct sp_client *c, int64_t now)
{
    struct statepub *sp = c->sp;
    if (sp->draining || c->running)
        return;
    c->running = 1;
    c->listing = 1;
    c->list_wait = 0;
    c->failed = 0;
    pager_start(&c->pager, c->cc->department);
    c->jobs = 0;
    c->started_ms = now;
    c->cyc_views = c->cyc_published = c->cyc_confirmed = c->cyc_unchanged = 0;
    c->cyc_blind = 0;
    memcpy(c->cur, c->pend, c->npend * sizeof c->pend[0]);
    c->ncur = c->npend;
    c->npend = 0;
    log_debug("state cycle of client \"%s\" started (department %ld)", c->cc->id,
              c->cc->department);
    sp_page_request(c);
}

/* Ends the running cycle of c once its list is finished and every job it
 * took is done: answers its sync requests (when nothing failed) and
 * schedules the next cycle. */
void sp_cycle_maybe_end(struct sp_client *c)
{
    struct statepub *sp = c->sp;
    if (!c->running || c->listing || c->pager.call || c->jobs > 0)
        return;
    int64_t now = sp_clock_ms(sp), wall = clock_wall_ms();
    int64_t took = now - c->started_ms;
    c->running = 0;
    if (sp->draining) {
        c->ncur = c->npend = 0;
        log_debug("state cycle of client \"%s\" stopped by the shutdown", c->cc->id);
        return;
    }
    sp->stats.cycles++;
    sp->stats.last_cycle_ms = wall;
    sp->stats.last_cycle_duration_ms = took;
    if (store_meta_set_i64(sp->st, STATEPUB_META_LAST_CYCLE, wall) != RT_OK)
        log_warning("cannot record the time of the last state cycle: %s", store_strerror(sp->st));
    if (c->cyc_blind)
        log_warning("list of department %ld of client \"%s\" has no \"%s\" column: every "
                    "linked task was viewed",
                    c->cc->department, c->cc->id, sp->cfg->billmanager.api.field_updated);

    int64_t interval = (int64_t)sp->cfg->server.sync_interval * 1000;
    if (c->failed) {
        sp->stats.cycles_failed++;
        log_warning("state cycle of client \"%s\" incomplete after %" PRId64 " ms (%ld rows, "
                    "%" PRIu64 " views, %" PRIu64 " confirmed): what failed is published by "
                    "the next cycle",
                    c->cc->id, took, c->pager.seen, c->cyc_views, c->cyc_confirmed);
        /* The requests of this cycle go first, counts kept; the retry
         * comes soon only when a client waits for it. */
        struct sp_sync later[STATEPUB_MAX_SYNCS];
        size_t nlater = c->npend;
        memcpy(later, c->pend, nlater * sizeof later[0]);
        c->npend = 0;
        for (size_t i = 0; i < c->ncur; i++)
            sp_sync_add_pending(c, &c->cur[i]);
        for (size_t i = 0; i < nlater; i++)
            sp_sync_add_pending(c, &later[i]);
        c->ncur = 0;
        c->next_cycle_ms = now + (c->npend ? STATEPUB_RETRY_DELAY_MS : interval);
        if (c->again)
            c->next_cycle_ms = now;
        c->again = 0;
        return;
    }
    log_info("state cycle of client \"%s\" done in %" PRId64 " ms: %ld rows, %" PRIu64
             " views, %" PRIu64 " states published, %" PRIu64 " unchanged",
             c->cc->id, took, c->pager.seen, c->cyc_views, c->cyc_confirmed, c->cyc_unchanged);
    for (size_t i = 0; i < c->ncur; i++)
        sp_sync_done_queue(c, &c->cur[i]);
    c->ncur = 0;
    c->next_cycle_ms = c->again ? now : now + interval;
    c->again = 0;
    /* Requests that arrived during this cycle need one of their own. */
    if (c->npend)
        sp_cycle_start(c, now);
}

/* ---- moving work on ------------------------------------------------- */

/* Moves work forward: publishes what waits for the broker, starts views
 * and asks for the pages that waited for the view queue to shrink. Called from the
 * tick and at the end of every callback; a callback that arrives while it
 * runs (a LOST from inside broker_publish) only moves jobs between lists. */
void sp_pump(struct statepub *sp)
{
    if (sp->in_pump || sp->draining)
        return;
    sp->in_pump = 1;
    sp_publish_ready(sp);
    sp_views_start(sp);
    for (size_t i = 0; i < sp->nclients; i++) {
        struct sp_client *c = &sp->clients[i];
        if (c->list_wait && c->waiting.n < (size_t)sp->page_size)
            sp_page_request(c);
    }
    sp->in_pump = 0;
}

/* ---- confirms -------------------------------------------------------- */

static struct sp_job *sp_published_find(struct statepub *sp, uint64_t tag)
{
    /* The list is in tag order: a tag outside its range is another
     * component's, found without a walk. */
    if (!sp->published.head || tag < sp->published.head->tag || tag > sp->published.tail->tag)
        return NULL;
    for (struct sp_job *j = sp->published.head; j; j = j->next)
        if (j->tag == tag)
            return j;
    return NULL;
}

/* ---- the component --------------------------------------------------- */

struct statepub *statepub_new(const struct config *cfg, struct store *st, struct billmgr *bm,
                              struct broker *br, char *err, size_t errlen)
{
    struct statepub *sp;

    if (!cfg || !cfg->server.enabled || !st || !bm || !br) {
        snprintf(err, errlen,
                 "the state publisher needs a server section, a store, an API client and a "
                 "broker");
        return NULL;
    }
    sp = calloc(1, sizeof *sp);
    if (!sp)
        goto fail_alloc;
    sp->cfg = cfg;
    sp->st = st;
    sp->bm = bm;
    sp->br = br;
    sp->max_views = cfg->billmanager.max_inflight > 0 ? (size_t)cfg->billmanager.max_inflight : 1;
    sp->page_size = cfg->billmanager.api.page_size > 0 ? cfg->billmanager.api.page_size
                                                       : BILLMGR_DEFAULT_PAGE_SIZE;
    sp->nclients = cfg->server.n_clients;
    if (sp->nclients) {
        sp->clients = calloc(sp->nclients, sizeof *sp->clients);
        if (!sp->clients)
            goto fail_alloc;
    }
    for (size_t i = 0; i < sp->nclients; i++) {
        struct sp_client *c = &sp->clients[i];
        c->sp = sp;
        c->cc = &cfg->server.clients[i];
        sp_list_init(c);
    }
    sp->tick_now = sp->tick_mono = clock_mono_ms();
    bool found = false;
    if (store_meta_get_i64(st, STATEPUB_META_LAST_CYCLE, &sp->stats.last_cycle_ms, &found) !=
        RT_OK) {
        log_warning("cannot read the time of the last state cycle: %s", store_strerror(st));
        sp->stats.last_cycle_ms = 0;
    }
    if (store_listen(st, statepub_synced, sp) != RT_OK) {
        snprintf(err, errlen, "%s", store_strerror(st));
        statepub_free(sp);
        return NULL;
    }
    return sp;

fail_alloc:
    statepub_free(sp);
    snprintf(err, errlen, "out of memory");
    return NULL;
}

void statepub_free(struct statepub *sp)
{
    if (!sp)
        return;
    if (sp->st)
        store_unlisten(sp->st, statepub_synced, sp);
    for (size_t i = 0; sp->clients && i < sp->nclients; i++)
        sp_list_free(&sp->clients[i].waiting);
    sp_list_free(&sp->viewing);
    sp_list_free(&sp->ready);
    sp_list_free(&sp->published);
    sp_list_free(&sp->acked);
    free(sp->clients);
    free(sp);
}

int64_t statepub_tick(struct statepub *sp, int64_t now_ms)
{
    sp->tick_now = now_ms;
    sp->tick_mono = clock_mono_ms();
    if (!sp->started) {
        sp->started = 1;
        for (size_t i = 0; i < sp->nclients; i++)
            if (!sp->clients[i].running && !sp->clients[i].next_cycle_ms)
                sp->clients[i].next_cycle_ms = now_ms + STATEPUB_FIRST_CYCLE_DELAY_MS;
    }
    /* Commits the store refused: each job is tried once per tick, and none
     * after one that is refused again (each try may wait out the store's
     * busy timeout). */
    for (size_t n = sp->acked.n; n > 0 && sp->acked.head; n--) {
        struct sp_job *j = sp->acked.head;
        sp_list_unlink(j);
        if (sp_job_commit(j) == RT_RETRY)
            break;
    }
    for (size_t i = 0; i < sp->nclients && !sp->draining; i++) {
        struct sp_client *c = &sp->clients[i];
        if (!c->running && now_ms >= c->next_cycle_ms)
            sp_cycle_start(c, now_ms);
    }
    sp_pump(sp);

    int64_t next = now_ms + STATEPUB_TICK_MS;
    for (size_t i = 0; i < sp->nclients && !sp->draining; i++) {
        const struct sp_client *c = &sp->clients[i];
        if (!c->running && c->next_cycle_ms < next)
            next = c->next_cycle_ms > now_ms ? c->next_cycle_ms : now_ms;
    }
    return next;
}

void statepub_on_confirm(struct statepub *sp, uint64_t tag, enum broker_fate fate)
{
    struct sp_job *j = sp_published_find(sp, tag);
    if (!j)
        return;
    struct sp_client *c = j->c;
    sp_list_unlink(j);
    j->tag = 0;
    switch (fate) {
    case BROKER_ACKED:
        if (j->kind == JOB_STATE) {
            sp_job_commit(j);
        } else {
            sp->stats.syncs_served++;
            log_info("answered sync \"%s\" of client \"%s\": %" PRIu64 " states published",
                     j->sync.id, c->cc->id, j->sync.count);
            sp_job_finish(j, 1);
        }
        break;
    case BROKER_NACKED:
    case BROKER_RETURNED: {
        const char *why = fate == BROKER_NACKED ? "the broker refused it (nack)"
                                                : "unroutable: no queue is bound for the client";
        if (j->kind == JOB_STATE) {
            log_warning("cannot publish the state of task %" PRId64 " of client \"%s\" (source "
                        "task %" PRId64 ", seq %" PRIu64 "): %s; the next cycle publishes it "
                        "again",
                        j->dst_task, c->cc->id, j->src_task, j->seq, why);
            sp->stats.publish_failed++;
        } else {
            log_warning("cannot answer sync \"%s\" of client \"%s\": %s", j->sync.id, c->cc->id,
                        why);
        }
        sp_job_finish(j, 0);
        break;
    }
    case BROKER_LOST:
    default:
        /* Fate unknown: the same message again once connected. If it did
         * arrive, the client drops the copy by its seq. */
        if (sp->draining) {
            sp_job_finish(j, 0);
            break;
        }
        j->state = JOB_READY;
        sp_list_push_tail(&sp->ready, j);
        break;
    }
    sp_pump(sp);
}

void statepub_on_connected(struct statepub *sp)
{
    sp_pump(sp);
}

rt_status statepub_sync(struct statepub *sp, const char *client, const char *sync_id)
{
    struct sp_client *c = NULL;
    struct sp_sync s;

    for (size_t i = 0; client && i < sp->nclients; i++)
        if (strcmp(sp->clients[i].cc->id, client) == 0)
            c = &sp->clients[i];
    if (!c) {
        log_warning("sync request of unknown client \"%s\" ignored", client ? client : "");
        return RT_REJECT;
    }
    if (!sync_id || !*sync_id || strlen(sync_id) > CODEC_MAX_ID) {
        log_warning("sync request of client \"%s\" without a valid id ignored", c->cc->id);
        return RT_REJECT;
    }
    if (sp->draining) {
        log_info("sync request \"%s\" of client \"%s\" ignored: shutting down", sync_id, c->cc->id);
        return RT_REJECT;
    }
    memset(&s, 0, sizeof s);
    snprintf(s.id, sizeof s.id, "%s", sync_id);
    sp_sync_add_pending(c, &s);
    sp->stats.syncs_requested++;
    if (c->running) {
        log_info("sync request \"%s\" of client \"%s\": after the running cycle", sync_id,
                 c->cc->id);
        return RT_OK;
    }
    log_info("sync request \"%s\" of client \"%s\": cycle starting now", sync_id, c->cc->id);
    sp_cycle_start(c, sp_clock_ms(sp));
    sp_pump(sp);
    return RT_OK;
}

void statepub_kick(struct statepub *sp, int64_t now_ms)
{
    if (!sp || sp->draining)
        return;
    for (size_t i = 0; i < sp->nclients; i++) {
        struct sp_client *c = &sp->clients[i];
        if (c->running)
            c->again = 1;
        else
            c->next_cycle_ms = now_ms;
    }
    log_info("state cycles of every client requested now");
}

void statepub_drain(struct statepub *sp)
{
    sp->draining = 1;
    /* What waits for a view or for the broker is not in flight: the next
     * start's first cycle finds it changed again. */
    while (sp->ready.head)
        sp_job_finish(sp->ready.head, 0);
    for (size_t i = 0; i < sp->nclients; i++) {
        struct sp_client *c = &sp->clients[i];
        c->npend = 0;
        c->ncur = 0;
        c->list_wait = 0;
        if (!c->pager.call)
            c->listing = 0;
        while (c->waiting.head)
            sp_job_finish(c->waiting.head, 0);
        sp_cycle_maybe_end(c);
    }
}

int statepub_idle(const struct statepub *sp)
{
    if (sp->viewing.n || sp->ready.n || sp->published.n || sp->acked.n)
        return 0;
    for (size_t i = 0; i < sp->nclients; i++)
        if (sp->clients[i].waiting.n || sp->clients[i].pager.call)
            return 0;
    return 1;
}

void statepub_stats(const struct statepub *sp, struct statepub_stats *out)
{
    *out = sp->stats;
    out->running = 0;
    out->waiting = 0;
    for (size_t i = 0; i < sp->nclients; i++) {
        out->running += sp->clients[i].running ? 1 : 0;
        out->waiting += sp->clients[i].waiting.n;
    }
    out->viewing = sp->viewing.n;
    out->unconfirmed = sp->published.n;
}
