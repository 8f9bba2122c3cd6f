#include "statepub_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "linkset.h"
#include "log.h"
#include "store_journal.h"

/* ---- lists and jobs -------------------------------------------------- */

void sp_list_push_tail(struct sp_list *l, struct sp_job *j)
{
    j->list = l;
    j->next = NULL;
    j->prev = l->tail;
    if (l->tail)
        l->tail->next = j;
    else
        l->head = j;
    l->tail = j;
    l->n++;
}

static void sp_list_push_head(struct sp_list *l, struct sp_job *j)
{
    j->list = l;
    j->prev = NULL;
    j->next = l->head;
    if (l->head)
        l->head->prev = j;
    else
        l->tail = j;
    l->head = j;
    l->n++;
}

void sp_list_unlink(struct sp_job *j)
{
    struct sp_list *l = j->list;
    if (!l)
        return;
    if (j->prev)
        j->prev->next = j->next;
    else
        l->head = j->next;
    if (j->next)
        j->next->prev = j->prev;
    else
        l->tail = j->prev;
    l->n--;
    j->list = NULL;
    j->prev = j->next = NULL;
}

struct sp_job *sp_job_new(struct sp_client *c, enum sp_job_kind kind)
{
    struct sp_job *j = calloc(1, sizeof *j);
    if (!j)
        return NULL;
    j->c = c;
    j->kind = kind;
    buf_init(&j->body, CODEC_MAX_BODY);
    return j;
}

void sp_job_free(struct sp_job *j)
{
    if (!j)
        return;
    sp_list_unlink(j);
    buf_release(&j->body);
    free(j->pname);
    free(j);
}

void sp_list_free(struct sp_list *l)
{
    while (l->head)
        sp_job_free(l->head);
}

/* The job is over. A state job that failed makes its cycle incomplete,
 * which carries the cycle's sync requests over to another one. */
void sp_job_finish(struct sp_job *j, int ok)
{
    struct sp_client *c = j->c;
    enum sp_job_kind kind = j->kind;
    sp_job_free(j);
    if (kind != JOB_STATE)
        return;
    c->jobs--;
    if (!ok)
        c->failed = 1;
    sp_cycle_maybe_end(c);
}

/* ---- publishing ------------------------------------------------------ */

/* Hands waiting jobs to the broker in order, up to the unconfirmed cap.
 * A refusal for now (down, blocked, too many unconfirmed) keeps the job
 * first in line; the next tick or statepub_on_connected() tries again. */
void sp_publish_ready(struct statepub *sp)
{
    if (sp->draining || !broker_connected(sp->br) || broker_blocked(sp->br))
        return;
    while (sp->ready.head && sp->published.n < STATEPUB_MAX_UNCONFIRMED) {
        struct sp_job *j = sp->ready.head;
        struct sp_client *c = j->c;
        uint64_t tag = 0;
        /* A seq goes out only once its allocation is on disk (the relay's
         * rule, producer/relay_slot.c); jobs are in line in the order their
         * seqs were allocated, so none behind this one is durable either. */
        if (!store_durable(sp->st, j->mark)) {
            store_want_sync(sp->st);
            return;
        }
        struct broker_props props = {
            .message_id = j->message_id,
            .timestamp = clock_wall_ms() / 1000,
            .user_id = NULL,
        };
        sp_list_unlink(j);
        /* broker_publish may report LOST for earlier publishes from
         * inside; this job is in no list meanwhile, so it is not one. */
        j->state = JOB_PUBLISHING;
        rt_status st = broker_publish(sp->br, BROKER_EXCHANGE_REVERSE, c->cc->id, &props,
                                      j->body.data, j->body.len, &tag);
        if (st == RT_OK) {
            j->state = JOB_PUBLISHED;
            j->tag = tag;
            sp_list_push_tail(&sp->published, j);
            if (j->kind == JOB_STATE) {
                sp->stats.published++;
                c->cyc_published++;
                if (j->performer)
                    store_journal_add(sp->st, 0, STORE_SIDE_SERVER, c->cc->id, j->src_task,
                                      j->dst_task, JOURNAL_STATEPUB, j->seq,
                                      "status %d, performer %" PRId64, j->status, j->performer);
                else
                    store_journal_add(sp->st, 0, STORE_SIDE_SERVER, c->cc->id, j->src_task,
                                      j->dst_task, JOURNAL_STATEPUB, j->seq,
                                      "status %d, no performer", j->status);
                log_debug("published the state of task %" PRId64 " of client \"%s\" (source "
                          "task %" PRId64 ", seq %" PRIu64 ", tag %" PRIu64 ")",
                          j->dst_task, c->cc->id, j->src_task, j->seq, tag);
            }
            continue;
        }
        j->state = JOB_READY;
        if (st == RT_RETRY) {
            sp_list_push_head(&sp->ready, j);
            log_debug("cannot publish to client \"%s\" yet: %s", c->cc->id,
                      broker_strerror(sp->br));
            return;
        }
        if (j->kind == JOB_STATE) {
            log_error("cannot publish the state of task %" PRId64 " of client \"%s\" (source "
                      "task %" PRId64 "): the broker refused it: %s",
                      j->dst_task, c->cc->id, j->src_task, broker_strerror(sp->br));
            sp->stats.publish_failed++;
        } else {
            log_error("cannot answer sync \"%s\" of client \"%s\": the broker refused it: %s",
                      j->sync.id, c->cc->id, broker_strerror(sp->br));
        }
        sp_job_finish(j, 0);
    }
}

/* The store synced the loop pass's commits: the seqs they allocated may
 * go out. */
void statepub_synced(void *arg)
{
    sp_publish_ready(arg);
}

/* Encodes the sync_done of one request and puts it in line. */
void sp_sync_done_queue(struct sp_client *c, const struct sp_sync *s)
{
    struct statepub *sp = c->sp;
    struct codec_msg m;
    char err[256];

    struct sp_job *j = sp_job_new(c, JOB_SYNC_DONE);
    if (!j) {
        log_error("cannot answer sync \"%s\" of client \"%s\": out of memory", s->id, c->cc->id);
        return;
    }
    j->sync = *s;
    codec_msg_init(&m, CODEC_SYNC_DONE);
    m.client = c->cc->id;
    m.task = 0;
    m.seq = 0;
    m.ts = clock_wall_ms();
    m.sync.id = j->sync.id;
    m.sync.count = s->count;
    if (codec_encode(&m, &j->body, err, sizeof err) < 0) {
        log_error("cannot answer sync \"%s\" of client \"%s\": cannot encode: %s", s->id, c->cc->id,
                  err);
        sp_job_free(j);
        return;
    }
    snprintf(j->message_id, sizeof j->message_id, "%s:sync_done:%s", c->cc->id, s->id);
    j->state = JOB_READY;
    sp_list_push_tail(&sp->ready, j);
}

/* The state differs from what was last published: allocate a seq, encode
 * the message and put it in line for the broker. */
void sp_job_prepare(struct sp_job *j, const struct statepub_state *s)
{
    struct statepub *sp = j->c->sp;
    const char *client = j->c->cc->id;
    char err[256];
    struct codec_msg m;
    char *notes[1];

    if (store_link_next_rev_seq(sp->st, client, j->src_task, &j->seq) != RT_OK) {
        log_warning("cannot allocate a reverse seq for task %" PRId64 " of client \"%s\" "
                    "(source task %" PRId64 "): %s",
                    j->dst_task, client, j->src_task, store_strerror(sp->st));
        sp_job_finish(j, 0);
        return;
    }
    j->mark = store_mark(sp->st);
    notes[0] = s->native;
    codec_msg_init(&m, CODEC_STATE);
    m.client = (char *)client;
    m.task = j->src_task;
    m.seq = j->seq;
    m.ts = clock_wall_ms();
    m.state.status = s->status;
    m.state.performer_id = s->performer_id;
    m.state.performer = s->performer;
    m.state.notes = s->native_len ? notes : NULL;
    m.state.nnotes = s->native_len ? 1 : 0;
    m.state.fwd_seq = j->fwd_seq;
    buf_reset(&j->body);
    if (codec_encode(&m, &j->body, err, sizeof err) < 0) {
        log_error("cannot publish the state of task %" PRId64 " of client \"%s\" (source task "
                  "%" PRId64 "): cannot encode: %s",
                  j->dst_task, client, j->src_task, err);
        sp->stats.publish_failed++;
        sp_job_finish(j, 0);
        return;
    }
    j->status = s->status;
    j->performer = s->performer_id;
    j->notes_len = s->native_len;
    snprintf(j->message_id, sizeof j->message_id, "%s:%" PRId64 ":r%" PRIu64, client, j->src_task,
             j->seq);
    j->state = JOB_READY;
    sp_list_push_tail(&sp->ready, j);
}

/* ---- confirms and commits -------------------------------------------- */

/* Records in a link's applied set which task message a confirmed state had
 * seen (its fwd_seq, LINKSET_LINK_PUB_FWD) and, when the state carried a status
 * the target changed itself (status_changed: it differs from the status
 * the link held, which is what the forward applier last wrote or statepub
 * last published), that state's seq (LINKSET_LINK_REV_PUB). The forward applier
 * leaves the target's status alone for a task message that had not seen
 * that state; a state that only moved the performer or the notes must not
 * make the client's status changes stale. Neither value ever moves back: a
 * job confirmed after a newer one of the same task says less. Returns 0,
 * or -1 when the set is full (what fit stays). */
static int sp_job_record_seqs(const struct sp_job *j, int status_changed, char *applied, size_t len)
{
    int64_t pub = fp_set_get_int(applied, LINKSET_LINK_REV_PUB, 0);
    int64_t fwd = fp_set_get_int(applied, LINKSET_LINK_PUB_FWD, 0);
    if (status_changed && (int64_t)j->seq > pub &&
        fp_set_put_int(applied, len, LINKSET_LINK_REV_PUB, (int64_t)j->seq) < 0)
        return -1;
    if ((int64_t)j->fwd_seq > fwd &&
        fp_set_put_int(applied, len, LINKSET_LINK_PUB_FWD, (int64_t)j->fwd_seq) < 0)
        return -1;
    if (fp_set_get_int(applied, LINKSET_LINK_PUB_FWD, -1) < 0 &&
        fp_set_put_int(applied, len, LINKSET_LINK_PUB_FWD, (int64_t)j->fwd_seq) < 0)
        return -1;
    return 0;
}

/* Records a confirmed state message: rev_fp, applied "state", "status",
 * LINKSET_LINK_REV_PUB and LINKSET_LINK_PUB_FWD, notes_sent, in one transaction that
 * re-reads the link and keeps what the forward applier wrote. On RT_RETRY
 * the job waits in the acked list and statepub_tick() tries again; the
 * status is returned. */
rt_status sp_job_commit(struct sp_job *j)
{
    struct sp_client *c = j->c;
    struct statepub *sp = c->sp;
    struct store_link cur;
    int stale = 0;

    rt_status st = store_begin(sp->st);
    if (st == RT_OK)
        st = store_link_get(sp->st, c->cc->id, j->src_task, &cur);
    if (st == RT_OK) {
        /* A link re-created for a new target task meanwhile starts over:
         * what was published about the old one says nothing about it. */
        stale = !cur.found || cur.dst_task != j->dst_task;
    }
    if (st == RT_OK && !stale) {
        snprintf(cur.rev_fp, sizeof cur.rev_fp, "%s", j->lf);
        int status_changed = fp_set_get_int(cur.applied, LINKSET_LINK_STATUS, -1) != j->status;
        if (statepub_applied_update(cur.applied, j->sf, j->status, cur.applied,
                                    sizeof cur.applied) < 0 ||
            sp_job_record_seqs(j, status_changed, cur.applied, sizeof cur.applied) < 0)
            log_error("cannot record the published state of task %" PRId64 " of client "
                      "\"%s\": its applied set is full",
                      j->dst_task, c->cc->id);
        cur.notes_sent = j->notes_len;
        st = store_link_put(sp->st, &cur);
    }
    /* In the transaction that records it: the row is there exactly when
     * the confirmation is. */
    if (st == RT_OK && !stale)
        store_journal_add(sp->st, 0, STORE_SIDE_SERVER, c->cc->id, j->src_task, j->dst_task,
                          JOURNAL_CONFIRMED, j->seq, "state delivered to the broker");
    if (st == RT_OK)
        st = store_commit(sp->st);
    if (st != RT_OK) {
        const char *why = store_strerror(sp->st);
        store_rollback(sp->st);
        if (st == RT_RETRY) {
            /* Once per cause: the store may refuse every job of a cycle. */
            const char *cause = store_strcause(sp->st);
            if (strcmp(cause, sp->store_trouble) != 0)
                log_warning("cannot record the confirmed state of task %" PRId64 " of client "
                            "\"%s\" (seq %" PRIu64 "), will retry: %s",
                            j->dst_task, c->cc->id, j->seq, why);
            else
                log_debug("cannot record the confirmed state of task %" PRId64 " of client "
                          "\"%s\" yet: %s",
                          j->dst_task, c->cc->id, why);
            snprintf(sp->store_trouble, sizeof sp->store_trouble, "%s", cause);
            j->state = JOB_ACKED;
            sp_list_push_tail(&sp->acked, j);
            return RT_RETRY;
        }
        /* Not recorded: the next cycle sees the state as new and
         * publishes it again, which the client takes as a newer seq. */
        log_error("cannot record the confirmed state of task %" PRId64 " of client \"%s\" (seq "
                  "%" PRIu64 "): %s",
                  j->dst_task, c->cc->id, j->seq, why);
        sp_job_finish(j, 0);
        return st;
    }
    if (sp->store_trouble[0]) {
        log_info("the store records confirmed states again (after: %s)", sp->store_trouble);
        sp->store_trouble[0] = '\0';
    }
    sp->stats.confirmed++;
    c->cyc_confirmed++;
    for (size_t i = 0; i < c->ncur; i++)
        c->cur[i].count++;
    log_debug("state of task %" PRId64 " of client \"%s\" delivered (source task %" PRId64
              ", seq %" PRIu64 ")",
              j->dst_task, c->cc->id, j->src_task, j->seq);
    sp_job_finish(j, 1);
    return RT_OK;
}
