#include "statepub.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "buf.h"
#include "codec.h"
#include "log.h"
#include "notes.h"
#include "pager.h"
#include "store_journal.h"
#include "taskview.h"

/* The applied-set keys this module owns; the forward applier owns the
 * others, and reads "status" to skip the client's echo of a status. */
#define SP_KEY_STATE  "state"
#define SP_KEY_STATUS "status"
/* The seq of the last state whose publish was confirmed: the forward
 * applier keeps the target's status over a task message that had not seen
 * it (FORWARD_KEY_REV_PUB of consumer/forward.h; the same name, spelled
 * here since producer/ does not include consumer/). */
#define SP_KEY_REV_PUB "rev_pub"
/* The "fwd_seq" that state carried (FORWARD_KEY_PUB_FWD). */
#define SP_KEY_PUB_FWD "pub_fwd"
/* "<client>:<task>:r<seq>" or "<client>:sync_done:<id>". */
#define SP_MESSAGE_ID_MAX (STORE_CLIENT_MAX + CODEC_MAX_ID + 2 * 21 + 16)

enum job_kind {
    JOB_STATE = 0, /* the state of one linked task */
    JOB_SYNC_DONE, /* the end marker of a sync request */
};

enum job_state {
    JOB_WAITING = 0, /* listed as changed, waiting for a view slot */
    JOB_VIEWING,     /* the func_task_edit view is in flight */
    JOB_READY,       /* encoded, waiting for the broker to take it */
    JOB_PUBLISHING,  /* inside broker_publish (guards re-entrant confirms) */
    JOB_PUBLISHED,   /* published, awaiting its confirm under tag */
    JOB_ACKED,       /* confirmed; the store commit failed and is retried */
};

struct sp_job;

/* A doubly linked list of jobs. Every job is in exactly one list at any
 * time except while one function moves it, so that statepub_free() finds
 * and frees them all. */
struct sp_list {
    struct sp_job *head;
    struct sp_job *tail;
    size_t n;
};

struct sp_sync {
    char id[CODEC_MAX_ID + 1];
    uint64_t count; /* state messages confirmed for it so far */
};

struct sp_client;

/* One task in a cycle, or one sync_done. Jobs are allocated one by one,
 * so an API call's callback argument (a job) never moves; a call
 * cancelled by billmgr_free() leaves its job in the viewing list, where
 * statepub_free() finds it. */
struct sp_job {
    struct sp_job *prev;
    struct sp_job *next;
    struct sp_list *list;
    struct sp_client *c;
    enum job_kind kind;
    enum job_state state;
    int64_t src_task;
    int64_t dst_task;
    char lf[FP_HEX_LEN + 1]; /* the list-level fingerprint of the row */
    char sf[FP_HEX_LEN + 1]; /* the state fingerprint, once viewed */
    char *pname;             /* the performer's display name in the list */
    int status;              /* the status published */
    int64_t performer;       /* the performer published (its id, 0 = none) */
    size_t notes_len;        /* bytes of native note published */
    uint64_t fwd_seq;        /* the link's last_seq when the view was asked for */
    uint64_t seq;
    uint64_t mark; /* the store's commit that allocated seq (store_mark) */
    uint64_t tag;
    struct sp_sync sync; /* JOB_SYNC_DONE */
    char message_id[SP_MESSAGE_ID_MAX + 1];
    struct buf body;
};

/* A configured client and its cycle. */
struct sp_client {
    struct statepub *sp;
    const struct config_server_client *cc;
    int running;           /* a cycle runs */
    int listing;           /* its list has pages left */
    int list_wait;         /* the next page waits for the view queue to shrink */
    int failed;            /* something failed in this cycle */
    struct pager pager;    /* the department's list; its seen: rows listed in this cycle */
    int64_t started_ms;    /* monotonic */
    int64_t next_cycle_ms; /* monotonic */
    int again;             /* statepub_kick() during a cycle: one more right after it */
    size_t jobs;           /* state jobs of this cycle not finished */
    struct sp_list waiting;
    struct sp_sync cur[STATEPUB_MAX_SYNCS]; /* answered by the running cycle */
    size_t ncur;
    struct sp_sync pend[STATEPUB_MAX_SYNCS]; /* answered by the next one */
    size_t npend;
    /* This cycle's numbers, for its log line. */
    uint64_t cyc_views;
    uint64_t cyc_published;
    uint64_t cyc_confirmed;
    uint64_t cyc_unchanged;
    int cyc_blind; /* rows without `updated` were seen */
};

struct statepub {
    const struct config *cfg;
    struct store *st;
    struct billmgr *bm;
    struct broker *br;

    struct sp_client *clients;
    size_t nclients;
    size_t rr; /* the client whose turn it is to start a view */

    struct sp_list viewing;
    struct sp_list ready;
    struct sp_list published; /* in publish order, so in tag order */
    struct sp_list acked;
    size_t max_views;
    long page_size;

    int started;
    int draining;
    int in_pump;
    int func_missing; /* the view function was answered as missing (logged once) */
    char store_trouble[STORE_ERROR_MAX]; /* the commit failure last logged */
    /* Schedules run on the clock the ticks are given: between ticks it is
     * tick_now plus the monotonic time since. */
    int64_t tick_now;
    int64_t tick_mono;

    struct statepub_stats stats;
};

static void sp_pump(struct statepub *sp);
static void cycle_maybe_end(struct sp_client *c);
static void sp_page_request(struct sp_client *c);

/* The wall clock: for what is stored or sent (message times, the time of
 * the last cycle). */
static int64_t sp_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t sp_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Now on the clock of the ticks (monotonic), for schedules set between
 * ticks: a wall clock set back must not stall them. */
static int64_t sp_clock_ms(const struct statepub *sp)
{
    return sp->tick_now + (sp_mono_ms() - sp->tick_mono);
}

/* ---- pure helpers ---------------------------------------------------- */

size_t statepub_utf8_cut(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n <= max)
        return n;
    /* Step back over continuation bytes (10xxxxxx) so that the cut falls
     * before the lead byte of the sequence it would split. */
    n = max;
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
        n--;
    return n;
}

void statepub_row_fp(const struct config *cfg, json_t *row, char out[FP_HEX_LEN + 1])
{
    const struct config_billmgr_api *api = &cfg->billmanager.api;
    struct fp h;
    fp_init(&h);
    fp_add_str(&h, billmgr_text(row, api->field_status));
    fp_add_str(&h, billmgr_text(row, api->field_performer));
    fp_add_str(&h, billmgr_text(row, api->field_updated));
    fp_hex(&h, out);
}

void statepub_state_release(struct statepub_state *s)
{
    if (!s)
        return;
    free(s->performer);
    free(s->native);
    memset(s, 0, sizeof *s);
}

int statepub_state_from_doc(const struct config *cfg, json_t *doc, const char *performer_name,
                            struct statepub_state *out, char *err, size_t errlen)
{
    const struct config_billmgr_api *api = &cfg->billmanager.api;
    long v;

    memset(out, 0, sizeof *out);
    if (errlen)
        err[0] = '\0';
    /* A field of the wrong type is not an empty one: published as such,
     * it would clear the note, status and performer the client shows. */
    const char *const fields[] = {api->field_status, api->field_performer, api->field_note};
    const char *text[3];
    for (size_t i = 0; i < 3; i++) {
        if (billmgr_text_field(doc, fields[i], &text[i]) < 0) {
            snprintf(err, errlen, "its %s is not text", fields[i]);
            return -1;
        }
    }
    const char *status = text[0];
    if (!status || !*status) {
        out->status = 0;
    } else if (billmgr_long(doc, api->field_status, &v) == 0 && v >= 0 && v <= 2) {
        out->status = (int)v;
    } else {
        snprintf(err, errlen, "its %s \"%.32s\" is not 0, 1 or 2", api->field_status, status);
        return -1;
    }
    const char *performer = text[1];
    if (!performer || !*performer) {
        out->performer_id = 0;
    } else if (billmgr_long(doc, api->field_performer, &v) == 0 && v >= 0) {
        out->performer_id = v;
    } else {
        snprintf(err, errlen, "its %s \"%.32s\" is not a staff id", api->field_performer,
                 performer);
        return -1;
    }

    const char *name = performer_name ? performer_name : "";
    out->performer = strndup(name, statepub_utf8_cut(name, CODEC_MAX_PERFORMER));
    const char *note = text[2];
    out->native = notes_native(note ? note : "");
    if (!out->performer || !out->native) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    out->native_len = strlen(out->native);
    size_t keep = statepub_utf8_cut(out->native, CODEC_MAX_NOTE_ENTRY);
    if (keep < out->native_len) {
        /* One notes entry holds at most CODEC_MAX_NOTE_ENTRY bytes. The
         * status and performer must still travel, so the note is cut
         * (and the caller says so in the log) rather than the task
         * never published again. */
        out->native[keep] = '\0';
        out->native_len = keep;
        out->cut = 1;
    }
    return 0;
}

void statepub_state_fp(const struct statepub_state *s, char out[FP_HEX_LEN + 1])
{
    struct fp h;
    fp_init(&h);
    fp_add_int(&h, s->status);
    fp_add_int(&h, s->performer_id);
    fp_add_str(&h, s->performer);
    fp_add_str(&h, s->native);
    fp_hex(&h, out);
}

int statepub_applied_update(const char *applied, const char *state_fp, int status, char *out,
                            size_t outlen)
{
    const char *was = applied ? applied : "";
    size_t n = strlen(was);
    if (outlen == 0)
        return -1;
    char *tmp = malloc(outlen);
    if (!tmp || n >= outlen) {
        free(tmp);
        if (out != was)
            snprintf(out, outlen, "%s", was);
        return -1;
    }
    memcpy(tmp, was, n + 1);
    int bad = fp_set_put(tmp, outlen, SP_KEY_STATE, state_fp) < 0 ||
              fp_set_put_int(tmp, outlen, SP_KEY_STATUS, status) < 0;
    if (bad) {
        if (out != was)
            memmove(out, was, n + 1);
    } else {
        memcpy(out, tmp, strlen(tmp) + 1);
    }
    free(tmp);
    return bad ? -1 : 0;
}

/* ---- lists and jobs -------------------------------------------------- */

static void list_push_tail(struct sp_list *l, struct sp_job *j)
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

static void list_push_head(struct sp_list *l, struct sp_job *j)
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

static void list_unlink(struct sp_job *j)
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

static struct sp_job *job_new(struct sp_client *c, enum job_kind kind)
{
    struct sp_job *j = calloc(1, sizeof *j);
    if (!j)
        return NULL;
    j->c = c;
    j->kind = kind;
    buf_init(&j->body, CODEC_MAX_BODY);
    return j;
}

static void job_free(struct sp_job *j)
{
    if (!j)
        return;
    list_unlink(j);
    buf_release(&j->body);
    free(j->pname);
    free(j);
}

static void list_free(struct sp_list *l)
{
    while (l->head)
        job_free(l->head);
}

/* The job is over. A state job that failed makes its cycle incomplete,
 * which carries the cycle's sync requests over to another one. */
static void job_finish(struct sp_job *j, int ok)
{
    struct sp_client *c = j->c;
    enum job_kind kind = j->kind;
    job_free(j);
    if (kind != JOB_STATE)
        return;
    c->jobs--;
    if (!ok)
        c->failed = 1;
    cycle_maybe_end(c);
}

/* ---- publishing ------------------------------------------------------ */

/* Hands waiting jobs to the broker in order, up to the unconfirmed cap.
 * A refusal for now (down, blocked, too many unconfirmed) keeps the job
 * first in line; the next tick or statepub_on_connected() tries again. */
static void publish_ready(struct statepub *sp)
{
    if (sp->draining || !broker_connected(sp->br) || broker_blocked(sp->br))
        return;
    while (sp->ready.head && sp->published.n < STATEPUB_MAX_UNCONFIRMED) {
        struct sp_job *j = sp->ready.head;
        struct sp_client *c = j->c;
        uint64_t tag = 0;
        /* A seq goes out only once its allocation is on disk (the relay's
         * rule, producer/relay.c); jobs are in line in the order their seqs
         * were allocated, so none behind this one is durable either. */
        if (!store_durable(sp->st, j->mark)) {
            store_want_sync(sp->st);
            return;
        }
        struct broker_props props = {
            .message_id = j->message_id,
            .timestamp = sp_now_ms() / 1000,
            .user_id = NULL,
        };
        list_unlink(j);
        /* broker_publish may report LOST for earlier publishes from
         * inside; this job is in no list meanwhile, so it is not one. */
        j->state = JOB_PUBLISHING;
        rt_status st = broker_publish(sp->br, BROKER_EXCHANGE_REVERSE, c->cc->id, &props,
                                      j->body.data, j->body.len, &tag);
        if (st == RT_OK) {
            j->state = JOB_PUBLISHED;
            j->tag = tag;
            list_push_tail(&sp->published, j);
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
            list_push_head(&sp->ready, j);
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
        job_finish(j, 0);
    }
}

/* The store synced the loop pass's commits: the seqs they allocated may
 * go out. */
static void statepub_synced(void *arg)
{
    publish_ready(arg);
}

/* Encodes the sync_done of one request and puts it in line. */
static void sync_done_queue(struct sp_client *c, const struct sp_sync *s)
{
    struct statepub *sp = c->sp;
    struct codec_msg m;
    char err[256];

    struct sp_job *j = job_new(c, JOB_SYNC_DONE);
    if (!j) {
        log_error("cannot answer sync \"%s\" of client \"%s\": out of memory", s->id, c->cc->id);
        return;
    }
    j->sync = *s;
    codec_msg_init(&m, CODEC_SYNC_DONE);
    m.client = c->cc->id;
    m.task = 0;
    m.seq = 0;
    m.ts = sp_now_ms();
    m.sync.id = j->sync.id;
    m.sync.count = s->count;
    if (codec_encode(&m, &j->body, err, sizeof err) < 0) {
        log_error("cannot answer sync \"%s\" of client \"%s\": cannot encode: %s", s->id, c->cc->id,
                  err);
        job_free(j);
        return;
    }
    snprintf(j->message_id, sizeof j->message_id, "%s:sync_done:%s", c->cc->id, s->id);
    j->state = JOB_READY;
    list_push_tail(&sp->ready, j);
}

/* ---- cycles ---------------------------------------------------------- */

/* Adds a sync request to a client's pending ones, dropping the oldest when
 * they are full (its client has long stopped waiting for it). */
static void sync_add_pending(struct sp_client *c, const struct sp_sync *s)
{
    if (c->npend == STATEPUB_MAX_SYNCS) {
        log_warning("too many sync requests of client \"%s\" waiting: sync \"%s\" dropped",
                    c->cc->id, c->pend[0].id);
        memmove(&c->pend[0], &c->pend[1], (STATEPUB_MAX_SYNCS - 1) * sizeof c->pend[0]);
        c->npend--;
    }
    c->pend[c->npend++] = *s;
}

static void cycle_start(struct sp_client *c, int64_t now)
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
static void cycle_maybe_end(struct sp_client *c)
{
    struct statepub *sp = c->sp;
    if (!c->running || c->listing || c->pager.call || c->jobs > 0)
        return;
    int64_t now = sp_clock_ms(sp), wall = sp_now_ms();
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
            sync_add_pending(c, &c->cur[i]);
        for (size_t i = 0; i < nlater; i++)
            sync_add_pending(c, &later[i]);
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
        sync_done_queue(c, &c->cur[i]);
    c->ncur = 0;
    c->next_cycle_ms = c->again ? now : now + interval;
    c->again = 0;
    /* Requests that arrived during this cycle need one of their own. */
    if (c->npend)
        cycle_start(c, now);
}

/* 1 when the forward applier applied a task message the last state
 * published had not seen (fwd_seq is the link's last_seq now): that state
 * may have reached the client after the client confirmed the message, and
 * the client drops the status of such a state (consumer/reverse.c), so a
 * target status change would wait for the next one to reach the source.
 * The state is then published again, with the newer fwd_seq. A forward
 * apply that edited the target moved its `updated`, so the view was due
 * anyway and this costs a message; one that changed nothing costs a view
 * too. A link with no record of it (never published, or published by an
 * older version) says 0. */
static int sp_fwd_moved(const struct store_link *link, uint64_t fwd_seq)
{
    int64_t pub_fwd = fp_set_get_int(link->applied, SP_KEY_PUB_FWD, -1);
    return pub_fwd >= 0 && fwd_seq > (uint64_t)pub_fwd;
}
/* Takes one listed row (pager_row_fn) as a job when it is the target of
 * a link of the client and changed since the last cycle. Returns -1 when
 * the store or memory failed, or the performer cannot be read (logged):
 * a row that cannot be read may be a linked task whose state changed, so
 * the cycle fails (and is retried) rather than skip it. */
static int sp_page_row(void *arg, json_t *e, long id)
{
    struct sp_client *c = arg;
    struct statepub *sp = c->sp;
    const char *col_updated = sp->cfg->billmanager.api.field_updated;
    const char *col_performer = sp->cfg->billmanager.api.field_performer;
    struct store_link link;
    char lf[FP_HEX_LEN + 1];
    const char *pname;

    if (store_link_by_dst(sp->st, c->cc->id, id, &link) != RT_OK) {
        log_warning("cannot read the link of task %ld of client \"%s\": %s", id, c->cc->id,
                    store_strerror(sp->st));
        return -1;
    }
    if (!link.found)
        return 0;
    statepub_row_fp(sp->cfg, e, lf);
    const char *updated = billmgr_text(e, col_updated);
    int blind = !updated || !*updated;
    if (blind)
        c->cyc_blind = 1;
    else if (strcmp(lf, link.rev_fp) == 0 && !sp_fwd_moved(&link, link.last_seq))
        return 0;
    if (billmgr_text_field(e, col_performer, &pname) < 0) {
        log_warning("cannot list department %ld of client \"%s\" (page %ld): the %s of "
                    "task %ld is not text",
                    c->cc->department, c->cc->id, c->pager.page, col_performer, id);
        return -1;
    }
    struct sp_job *j = job_new(c, JOB_STATE);
    if (j)
        j->pname = strdup(pname ? pname : "");
    if (!j || !j->pname) {
        job_free(j);
        log_warning("cannot take task %ld of client \"%s\": out of memory", id, c->cc->id);
        return -1;
    }
    j->src_task = link.src_task;
    j->dst_task = id;
    j->fwd_seq = link.last_seq;
    memcpy(j->lf, lf, sizeof j->lf);
    j->state = JOB_WAITING;
    list_push_tail(&c->waiting, j);
    c->jobs++;
    return 0;
}

/* Takes the changed rows of one page as jobs. Returns the number of rows
 * on the page, or -1 when a row cannot be read, or the store or memory
 * failed (logged). */
static long sp_page_rows(struct sp_client *c, json_t *doc)
{
    const char *bad = "";
    long rows = pager_rows(doc, sp_page_row, c, &bad);
    if (rows == PAGER_NOMEM)
        log_warning("cannot read the list of client \"%s\": out of memory", c->cc->id);
    else if (rows == PAGER_BAD_ROW)
        log_warning("cannot list department %ld of client \"%s\" (page %ld): it has a row %s",
                    c->cc->department, c->cc->id, c->pager.page, bad);
    return rows < 0 ? -1 : rows;
}

/* The list is over, or failed: the cycle ends once its jobs are done. */
static void sp_list_end(struct sp_client *c, int failed)
{
    c->listing = 0;
    if (failed)
        c->failed = 1;
    cycle_maybe_end(c);
}

/* The answer of one page of a client's department (pager_page_fn). */
static void sp_page_done(void *arg, const struct billmgr_reply *rep)
{
    struct sp_client *c = arg;
    struct statepub *sp = c->sp;

    if (sp->draining) {
        sp_list_end(c, 0);
        return;
    }
    if (rep->status != RT_OK) {
        log_warning("cannot list department %ld of client \"%s\" (page %ld): %s: %s",
                    c->cc->department, c->cc->id, c->pager.page, rep->err_type, rep->message);
        sp_list_end(c, 1);
        goto pump;
    }
    long rows = sp_page_rows(c, rep->doc);
    if (rows < 0) {
        sp_list_end(c, 1);
        goto pump;
    }
    sp->stats.rows_seen += (uint64_t)rows;
    switch (pager_next(&c->pager, rep->doc, rows)) {
    case PAGER_MORE:
        /* The next page waits while a page's worth of rows waits for
         * views, so that a cycle holds at most about two pages. */
        if (c->waiting.n < (size_t)sp->page_size)
            sp_page_request(c);
        else
            c->list_wait = 1;
        break;
    case PAGER_CAPPED:
        log_warning("list of department %ld of client \"%s\" stopped after %ld pages",
                    c->cc->department, c->cc->id, c->pager.page);
        sp_list_end(c, 0);
        break;
    case PAGER_LAST:
    default: sp_list_end(c, 0); break;
    }
pump:
    sp_pump(sp);
}

/* Asks for the current page of the client's department. */
static void sp_page_request(struct sp_client *c)
{
    c->list_wait = 0;
    if (pager_request(&c->pager, c->sp->bm) < 0) {
        log_warning("cannot list department %ld of client \"%s\": the API queue is full",
                    c->cc->department, c->cc->id);
        sp_list_end(c, 1);
    }
}

/* ---- views ----------------------------------------------------------- */

/* Records the list-level fingerprint of a task whose state is what was
 * last published, so that the next cycle skips it without a view. A
 * failure only costs that view again: logged, not a failure of the
 * cycle. */
static void job_record_unchanged(struct sp_job *j)
{
    struct statepub *sp = j->c->sp;
    struct store_link cur;

    rt_status st = store_begin(sp->st);
    if (st == RT_OK)
        st = store_link_get(sp->st, j->c->cc->id, j->src_task, &cur);
    if (st == RT_OK && cur.found && cur.dst_task == j->dst_task) {
        snprintf(cur.rev_fp, sizeof cur.rev_fp, "%s", j->lf);
        st = store_link_put(sp->st, &cur);
    }
    if (st == RT_OK)
        st = store_commit(sp->st);
    if (st != RT_OK) {
        log_warning("cannot record task %" PRId64 " of client \"%s\" as unchanged: %s", j->dst_task,
                    j->c->cc->id, store_strerror(sp->st));
        store_rollback(sp->st);
    }
}

/* The state differs from what was last published: allocate a seq, encode
 * the message and put it in line for the broker. */
static void job_prepare(struct sp_job *j, const struct statepub_state *s)
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
        job_finish(j, 0);
        return;
    }
    j->mark = store_mark(sp->st);
    notes[0] = s->native;
    codec_msg_init(&m, CODEC_STATE);
    m.client = (char *)client;
    m.task = j->src_task;
    m.seq = j->seq;
    m.ts = sp_now_ms();
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
        job_finish(j, 0);
        return;
    }
    j->status = s->status;
    j->performer = s->performer_id;
    j->notes_len = s->native_len;
    snprintf(j->message_id, sizeof j->message_id, "%s:%" PRId64 ":r%" PRIu64, client, j->src_task,
             j->seq);
    j->state = JOB_READY;
    list_push_tail(&sp->ready, j);
}

/* The answer of a task view. */
static void view_done(void *arg, const struct billmgr_reply *rep)
{
    struct sp_job *j = arg;
    struct sp_client *c = j->c;
    struct statepub *sp = c->sp;
    struct statepub_state s;
    struct store_link link;
    char err[256];
    char applied_state[FP_HEX_LEN + 1];

    list_unlink(j);
    if (sp->draining) {
        job_finish(j, 0);
        return;
    }
    enum taskview_missed missed = taskview_missed(rep, sp->cfg->billmanager.api.func_task_edit);
    if (missed == TASKVIEW_MISSED_FUNC) {
        const char *func = sp->cfg->billmanager.api.func_task_edit;
        /* One line for the cause, not one per task every cycle: every
         * view fails the same way until the configuration is fixed. */
        if (!sp->func_missing)
            log_error("the function \"%s\" does not exist on this BILLmanager (it answers "
                      "missed, object \"%s\"): check billmanager.api.func_task_edit; no state "
                      "is published until it answers",
                      func, rep->err_object);
        else
            log_debug("cannot view task %" PRId64 " of client \"%s\": the function \"%s\" "
                      "does not exist",
                      j->dst_task, c->cc->id, func);
        sp->func_missing = 1;
        sp->stats.view_failed++;
        job_finish(j, 0);
        goto pump;
    }
    if (missed == TASKVIEW_MISSED_TASK) {
        /* Deleted between the list and the view: there is no state to
         * send, and the next cycle will not list it. */
        log_info("task %" PRId64 " of client \"%s\" (source task %" PRId64 ") is gone: no "
                 "state to publish",
                 j->dst_task, c->cc->id, j->src_task);
        job_finish(j, 1);
        goto pump;
    }
    if (rep->status != RT_OK) {
        log_warning("cannot view task %" PRId64 " of client \"%s\" (source task %" PRId64
                    "): %s: %s",
                    j->dst_task, c->cc->id, j->src_task, rep->err_type, rep->message);
        sp->stats.view_failed++;
        job_finish(j, 0);
        goto pump;
    }
    sp->func_missing = 0;
    if (taskview_of(rep->doc, j->dst_task, err, sizeof err) < 0) {
        log_warning("cannot view task %" PRId64 " of client \"%s\" (source task %" PRId64
                    "): the view %s",
                    j->dst_task, c->cc->id, j->src_task, err);
        sp->stats.view_failed++;
        job_finish(j, 0);
        goto pump;
    }
    sp->stats.views++;
    c->cyc_views++;
    if (statepub_state_from_doc(sp->cfg, rep->doc, j->pname, &s, err, sizeof err) < 0) {
        log_warning("cannot publish the state of task %" PRId64 " of client \"%s\" (source "
                    "task %" PRId64 "): %s",
                    j->dst_task, c->cc->id, j->src_task, err);
        statepub_state_release(&s);
        sp->stats.publish_failed++;
        job_finish(j, 0);
        goto pump;
    }
    if (s.cut)
        log_warning("note of task %" PRId64 " of client \"%s\" (source task %" PRId64 ") is "
                    "longer than %u bytes: only the first %zu are published",
                    j->dst_task, c->cc->id, j->src_task, (unsigned)CODEC_MAX_NOTE_ENTRY,
                    s.native_len);
    statepub_state_fp(&s, j->sf);

    /* Read the link again: the forward applier may have written it since
     * the list (a new target task, or its own status). */
    if (store_link_get(sp->st, c->cc->id, j->src_task, &link) != RT_OK) {
        log_warning("cannot read the link of task %" PRId64 " of client \"%s\": %s", j->dst_task,
                    c->cc->id, store_strerror(sp->st));
        statepub_state_release(&s);
        job_finish(j, 0);
        goto pump;
    }
    if (!link.found || link.dst_task != j->dst_task) {
        log_debug("task %" PRId64 " of client \"%s\" is no longer the target of source task "
                  "%" PRId64 ": nothing to publish",
                  j->dst_task, c->cc->id, j->src_task);
        statepub_state_release(&s);
        job_finish(j, 1);
        goto pump;
    }
    if (fp_set_get(link.applied, SP_KEY_STATE, applied_state, sizeof applied_state) == 0 &&
        strcmp(applied_state, j->sf) == 0 && !sp_fwd_moved(&link, j->fwd_seq)) {
        job_record_unchanged(j);
        sp->stats.unchanged++;
        c->cyc_unchanged++;
        log_debug("task %" PRId64 " of client \"%s\" unchanged: nothing to publish", j->dst_task,
                  c->cc->id);
        statepub_state_release(&s);
        job_finish(j, 1);
        goto pump;
    }
    job_prepare(j, &s);
    statepub_state_release(&s);
pump:
    sp_pump(sp);
}

/* Starts views while fewer than max_inflight are in flight, the clients
 * taking turns so that a large department does not hold up the others. */
static void views_start(struct statepub *sp)
{
    const char *func = sp->cfg->billmanager.api.func_task_edit;
    while (sp->viewing.n < sp->max_views) {
        struct sp_client *c = NULL;
        for (size_t k = 0; k < sp->nclients; k++) {
            struct sp_client *x = &sp->clients[(sp->rr + k) % sp->nclients];
            if (x->waiting.n) {
                c = x;
                sp->rr = (sp->rr + k + 1) % sp->nclients;
                break;
            }
        }
        if (!c)
            return;
        struct sp_job *j = c->waiting.head;
        struct billmgr_params p;
        struct store_link link;
        /* The task messages the forward applier had applied before this
         * view: their edits are in what the view reads. Read now, not when
         * the answer comes, since an edit committed meanwhile may have
         * landed after the view read the task; on a store error the value
         * from the list, older and so never too new, stays. */
        if (store_link_get(sp->st, c->cc->id, j->src_task, &link) == RT_OK && link.found)
            j->fwd_seq = link.last_seq;
        billmgr_params_init(&p);
        int bad = billmgr_params_addf(&p, "elid", "%" PRId64, j->dst_task);
        if (bad == 0)
            bad = billmgr_call(sp->bm, func, &p, view_done, j);
        billmgr_params_release(&p);
        if (bad < 0) {
            /* The job stays first in line for the next tick. */
            log_warning("cannot queue the view of task %" PRId64 " of client \"%s\": the API "
                        "queue is full",
                        j->dst_task, c->cc->id);
            return;
        }
        list_unlink(j);
        j->state = JOB_VIEWING;
        list_push_tail(&sp->viewing, j);
    }
}

/* Moves work forward: publishes what waits for the broker, starts views
 * and asks for the pages that waited for the view queue to shrink. Called from the
 * tick and at the end of every callback; a callback that arrives while it
 * runs (a LOST from inside broker_publish) only moves jobs between lists. */
static void sp_pump(struct statepub *sp)
{
    if (sp->in_pump || sp->draining)
        return;
    sp->in_pump = 1;
    publish_ready(sp);
    views_start(sp);
    for (size_t i = 0; i < sp->nclients; i++) {
        struct sp_client *c = &sp->clients[i];
        if (c->list_wait && c->waiting.n < (size_t)sp->page_size)
            sp_page_request(c);
    }
    sp->in_pump = 0;
}

/* ---- confirms and commits -------------------------------------------- */

/* Records in a link's applied set which task message a confirmed state had
 * seen (its fwd_seq, SP_KEY_PUB_FWD) and, when the state carried a status
 * the target changed itself (status_changed: it differs from the status
 * the link held, which is what the forward applier last wrote or statepub
 * last published), that state's seq (SP_KEY_REV_PUB). The forward applier
 * leaves the target's status alone for a task message that had not seen
 * that state; a state that only moved the performer or the notes must not
 * make the client's status changes stale. Neither value ever moves back: a
 * job confirmed after a newer one of the same task says less. Returns 0,
 * or -1 when the set is full (what fit stays). */
static int job_record_seqs(const struct sp_job *j, int status_changed, char *applied, size_t len)
{
    int64_t pub = fp_set_get_int(applied, SP_KEY_REV_PUB, 0);
    int64_t fwd = fp_set_get_int(applied, SP_KEY_PUB_FWD, 0);
    if (status_changed && (int64_t)j->seq > pub &&
        fp_set_put_int(applied, len, SP_KEY_REV_PUB, (int64_t)j->seq) < 0)
        return -1;
    if ((int64_t)j->fwd_seq > fwd &&
        fp_set_put_int(applied, len, SP_KEY_PUB_FWD, (int64_t)j->fwd_seq) < 0)
        return -1;
    if (fp_set_get_int(applied, SP_KEY_PUB_FWD, -1) < 0 &&
        fp_set_put_int(applied, len, SP_KEY_PUB_FWD, (int64_t)j->fwd_seq) < 0)
        return -1;
    return 0;
}

/* Records a confirmed state message: rev_fp, applied "state", "status",
 * SP_KEY_REV_PUB and SP_KEY_PUB_FWD, notes_sent, in one transaction that
 * re-reads the link and keeps what the forward applier wrote. On RT_RETRY
 * the job waits in the acked list and statepub_tick() tries again; the
 * status is returned. */
static rt_status job_commit(struct sp_job *j)
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
        int status_changed = fp_set_get_int(cur.applied, SP_KEY_STATUS, -1) != j->status;
        if (statepub_applied_update(cur.applied, j->sf, j->status, cur.applied,
                                    sizeof cur.applied) < 0 ||
            job_record_seqs(j, status_changed, cur.applied, sizeof cur.applied) < 0)
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
            list_push_tail(&sp->acked, j);
            return RT_RETRY;
        }
        /* Not recorded: the next cycle sees the state as new and
         * publishes it again, which the client takes as a newer seq. */
        log_error("cannot record the confirmed state of task %" PRId64 " of client \"%s\" (seq "
                  "%" PRIu64 "): %s",
                  j->dst_task, c->cc->id, j->seq, why);
        job_finish(j, 0);
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
    job_finish(j, 1);
    return RT_OK;
}

static struct sp_job *published_find(struct statepub *sp, uint64_t tag)
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
        pager_init(&c->pager, &cfg->billmanager.api, sp->page_size, STATEPUB_MAX_PAGES,
                   sp_page_done, c);
    }
    sp->tick_now = sp->tick_mono = sp_mono_ms();
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
        list_free(&sp->clients[i].waiting);
    list_free(&sp->viewing);
    list_free(&sp->ready);
    list_free(&sp->published);
    list_free(&sp->acked);
    free(sp->clients);
    free(sp);
}

int64_t statepub_tick(struct statepub *sp, int64_t now_ms)
{
    sp->tick_now = now_ms;
    sp->tick_mono = sp_mono_ms();
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
        list_unlink(j);
        if (job_commit(j) == RT_RETRY)
            break;
    }
    for (size_t i = 0; i < sp->nclients && !sp->draining; i++) {
        struct sp_client *c = &sp->clients[i];
        if (!c->running && now_ms >= c->next_cycle_ms)
            cycle_start(c, now_ms);
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
    struct sp_job *j = published_find(sp, tag);
    if (!j)
        return;
    struct sp_client *c = j->c;
    list_unlink(j);
    j->tag = 0;
    switch (fate) {
    case BROKER_ACKED:
        if (j->kind == JOB_STATE) {
            job_commit(j);
        } else {
            sp->stats.syncs_served++;
            log_info("answered sync \"%s\" of client \"%s\": %" PRIu64 " states published",
                     j->sync.id, c->cc->id, j->sync.count);
            job_finish(j, 1);
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
        job_finish(j, 0);
        break;
    }
    case BROKER_LOST:
    default:
        /* Fate unknown: the same message again once connected. If it did
         * arrive, the client drops the copy by its seq. */
        if (sp->draining) {
            job_finish(j, 0);
            break;
        }
        j->state = JOB_READY;
        list_push_tail(&sp->ready, j);
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
    sync_add_pending(c, &s);
    sp->stats.syncs_requested++;
    if (c->running) {
        log_info("sync request \"%s\" of client \"%s\": after the running cycle", sync_id,
                 c->cc->id);
        return RT_OK;
    }
    log_info("sync request \"%s\" of client \"%s\": cycle starting now", sync_id, c->cc->id);
    cycle_start(c, sp_clock_ms(sp));
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
        job_finish(sp->ready.head, 0);
    for (size_t i = 0; i < sp->nclients; i++) {
        struct sp_client *c = &sp->clients[i];
        c->npend = 0;
        c->ncur = 0;
        c->list_wait = 0;
        if (!c->pager.call)
            c->listing = 0;
        while (c->waiting.head)
            job_finish(c->waiting.head, 0);
        cycle_maybe_end(c);
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
