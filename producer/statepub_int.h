/*
 * statepub_int.h - what the state publisher's own files share; private to
 * producer/statepub*.c (and the unit test, which compiles them in).
 *
 * The publisher is four files of one concern each:
 *   statepub.c       the component and its cycles: lifecycle, the clocks,
 *                    the tick, a cycle's start and end (sync requests
 *                    answered or carried over, the next cycle scheduled),
 *                    sync requests and kicks, confirms handed to their
 *                    job, the pump that moves work on
 *   statepub_list.c  a client's department listed through the pager
 *                    (pager.h): the changed rows of linked tasks become
 *                    jobs, the next page waits while a page's worth waits
 *                    for views
 *   statepub_view.c  the views and the state fingerprints: the row and
 *                    state fingerprints and the state read from a view
 *                    (pure, exported by statepub.h), the views started
 *                    within max_inflight with the clients taking turns and
 *                    yielding the API to waiting calls beyond a floor, and
 *                    what each answer does with its job
 *   statepub_pub.c   the jobs and their messages: the lists a job lives
 *                    in, a state's seq and message, the publish of what is
 *                    durable, a sync_done, and the commit of a confirmed
 *                    state
 *
 * The contract between them:
 * - A job is allocated on its own (sp_job_new), so a view call's argument
 *   never moves, and is in exactly one list at any time (a client's
 *   waiting list, or viewing, ready, published, acked) except while one
 *   function moves it, so that statepub_free() finds them all. It ends in
 *   sp_job_finish() (which frees it and, for a state, may end its cycle)
 *   or sp_job_free() before it was counted in a cycle.
 * - A cycle ends (sp_cycle_maybe_end) once its list is finished, no page
 *   call is in flight and every state job it took is finished; a job that
 *   failed makes the cycle incomplete.
 * - Every callback (a page's or a view's answer, a confirm) ends with
 *   sp_pump(), which is never re-entered (in_pump) and does nothing while
 *   draining: a callback that arrives while it runs (a LOST from inside
 *   broker_publish) only moves jobs between lists.
 * - A seq goes out only once the commit that allocated it is durable (the
 *   job's mark, store_durable); jobs are ready in the order their seqs were
 *   allocated, and statepub_synced() publishes what waited.
 * - Times: schedules on the ticks' clock (monotonic), what is stored or
 *   sent on the wall clock (clock_wall_ms, common/clock.h).
 */
#ifndef RT_STATEPUB_INT_H
#define RT_STATEPUB_INT_H

#include <stdint.h>

#include "buf.h"
#include "codec.h"
#include "pager.h"
#include "statepub.h"

/* "<client>:<task>:r<seq>" or "<client>:sync_done:<id>". */
#define SP_MESSAGE_ID_MAX (STORE_CLIENT_MAX + CODEC_MAX_ID + 2 * 21 + 16)

enum sp_job_kind {
    JOB_STATE = 0, /* the state of one linked task */
    JOB_SYNC_DONE, /* the end marker of a sync request */
};

enum sp_job_state {
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
    enum sp_job_kind kind;
    enum sp_job_state state;
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

/* ---- statepub.c: the component and its cycles ----------------------- */

/* Moves work forward: publishes what waits for the broker, starts views
 * and asks for the pages that waited for the view queue to shrink. Not
 * re-entered; nothing while draining. */
void sp_pump(struct statepub *sp);

/* Ends the running cycle of c once its list is finished and every job it
 * took is done: answers its sync requests (when nothing failed) and
 * schedules the next cycle. */
void sp_cycle_maybe_end(struct sp_client *c);

/* ---- statepub_list.c: a client's department, page by page ----------- */

/* Sets up the client's pager (statepub_new). */
void sp_list_init(struct sp_client *c);

/* Asks for the current page of the client's department; a call that
 * cannot be queued fails the cycle's list (logged). */
void sp_page_request(struct sp_client *c);

/* 1 when the forward applier applied a task message the last state
 * published had not seen (fwd_seq is the link's last_seq now), so that the
 * state must go again. */
int sp_fwd_moved(const struct store_link *link, uint64_t fwd_seq);

/* ---- statepub_view.c: the views ------------------------------------- */

/* Starts views while statepub_view_may_start() says so (at most
 * max_inflight; beyond max_inflight / 4 only while the API has room and a
 * reserve for the appliers, since a cycle is background work), the
 * clients taking turns. */
void sp_views_start(struct statepub *sp);

/* ---- statepub_pub.c: jobs and their messages ------------------------ */

/* Appends j to l (j in no list). */
void sp_list_push_tail(struct sp_list *l, struct sp_job *j);

/* Takes j out of its list, if any. */
void sp_list_unlink(struct sp_job *j);

/* Frees every job of l. */
void sp_list_free(struct sp_list *l);

/* A job of client c in no list, or NULL when memory ran out. */
struct sp_job *sp_job_new(struct sp_client *c, enum sp_job_kind kind);

/* Frees j (taken out of its list first). Accepts NULL. */
void sp_job_free(struct sp_job *j);

/* The job is over (ok: it did what it had to): freed, and a state job's
 * cycle may end; one that failed makes its cycle incomplete. */
void sp_job_finish(struct sp_job *j, int ok);

/* The state s differs from what was last published: allocate a seq,
 * encode the message and put it in line for the broker (or finish the job
 * failed, logged). */
void sp_job_prepare(struct sp_job *j, const struct statepub_state *s);

/* Encodes the sync_done of one request and puts it in line. */
void sp_sync_done_queue(struct sp_client *c, const struct sp_sync *s);

/* Hands ready jobs to the broker in order, up to the unconfirmed cap, as
 * long as their seqs are durable. */
void sp_publish_ready(struct statepub *sp);

/* The store synced the loop pass's commits (store_listen): the seqs they
 * allocated may go out. */
void statepub_synced(void *arg);

/* Records a confirmed state message in one transaction; on RT_RETRY the
 * job waits in the acked list. Returns the store's status. */
rt_status sp_job_commit(struct sp_job *j);

#endif
