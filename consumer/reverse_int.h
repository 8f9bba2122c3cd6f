/*
 * reverse_int.h - what the reverse applier's own files share; private to
 * consumer/reverse*.c (and the unit test that compiles them in).
 *
 * The reverse applier is four files of one concern each, around one
 * struct reverse and one struct reverse_slot per delivery:
 *   reverse.c       the component: lifecycle, deliveries taken and
 *                   checked, the broker's events, the applier's callbacks,
 *                   the counters;
 *   reverse_plan.c  the message checks and the plan of a state: pure
 *                   functions of a message, the configuration and the
 *                   applied fp set (reverse.h, "pure helpers");
 *   reverse_apply.c the apply steps: the lookup, the view of the source
 *                   task (an interrupted note edit resolved), the edit,
 *                   the commit of the rev row and the ack;
 *   reverse_sync.c  sync requests: the ids the bridge waits for, and each
 *                   sync_done answered once the deliveries before it are
 *                   done.
 * The slot steps are rev_slot_*: each ends the slot (ack, fail, defer,
 * release) or leaves it waiting for an API answer. Callers see reverse.h
 * only. Not thread-safe: everything runs in the bridge's loop.
 */
#ifndef RT_REVERSE_INT_H
#define RT_REVERSE_INT_H

#include <stddef.h>
#include <stdint.h>

#include "applier.h"
#include "reverse.h"

#define REVERSE_REASON_MAX APPLIER_REASON_MAX
/* The store meta key of the last successful apply. */
#define REVERSE_META_LAST_APPLY "last_reverse_apply_ms"

/* Where a delivery is while the applier holds it (applier.h keeps the
 * phases around it: waiting, publishing a retry or dead-letter copy). */
enum reverse_step {
    RS_NONE = 0,
    RS_LOOKUP,    /* reading what was forwarded and applied (synchronous) */
    RS_VIEW,      /* viewing the source task for its note, status, performer */
    RS_EDIT,      /* func_task_edit sok=ok elid=T */
    RS_COMMIT,    /* writing the rev row (synchronous) */
    RS_SYNC_WAIT, /* a sync_done waiting for the deliveries taken before it */
};

/* What a slot does again when it resumes after applier_defer() (a store
 * step that failed for now). */
enum reverse_resume {
    RR_START = 0, /* the lookup and everything after it */
    RR_PENDING,   /* the intent of a note edit, then the edit (note) */
    RR_COMMIT,    /* the commit of an applied state (commit_changed) */
};

/* What the reverse applier keeps for one delivery: the priv area of its
 * applier slot, which holds the delivery itself. */
struct reverse_slot {
    struct reverse *r;
    struct applier_slot *as;
    enum reverse_step step;
    struct codec_msg msg;
    struct reverse_plan plan;
    /* The rev row holds the intent of an earlier note edit (applier.h):
     * the view of the task tells whether it landed. */
    int pending;
    int landed;             /* it did: plan against the set after it */
    uint64_t commit_seq;    /* seq to commit when above msg.seq (a newer state's
                               edit that landed) */
    uint64_t fwd_confirmed; /* the task's last confirmed forward seq when the plan was made */
    char applied[STORE_APPLIED_MAX + 1]; /* the rev row's set as read */
    char *note;                          /* the whole note of the pending edit (owned) */
    enum reverse_resume resume;
    int commit_changed; /* what a resumed commit counts */
};

/* A sync request registered by the bridge and not answered yet. */
struct reverse_expected {
    char id[CODEC_MAX_ID + 1];
    uint64_t applied; /* states applied with a change since it was registered */
};

struct reverse {
    const struct config *cfg;
    struct store *st;
    struct billmgr *bm;
    struct broker *br;
    const struct config_billmgr_api *api;
    char queue[BROKER_NAME_MAX]; /* remotetask.reverse.<client.id> */
    struct applier *ap;
    reverse_sync_done_fn sync_hook;
    void *sync_arg;
    struct reverse_expected expected[REVERSE_MAX_EXPECTED];
    size_t nexpected;
    int checking; /* reverse_sync_check() is running: a nested call only asks again */
    int recheck;
    struct reverse_stats stats; /* the counters these files keep; the slots' are in ap */
    uint64_t applied_dups;      /* dropped at the lookup: seq already applied */
};

/* ---- reverse_sync.c ---- */

/* Finishes every sync_done (a slot waiting in RS_SYNC_WAIT) whose
 * predecessors are done: the hook, then the ack. Finishing one frees a
 * slot, which calls this again: the nested call only asks the running
 * one to look once more. */
void reverse_sync_check(struct reverse *r);

/* A state was applied with a change: it counts for every sync id
 * registered and not answered yet. */
void reverse_sync_count_applied(struct reverse *r);

/* ---- reverse_apply.c ---- */

/* The state's turn has come: is it new, and what does it change? */
void rev_slot_start(struct reverse_slot *s);

/* Commits the intent of the edit that writes s->note, then makes it. */
void rev_slot_pend_edit(struct reverse_slot *s);

/* The state is applied (changed: the source task took something) or had
 * nothing to change: the rev row and the time of the last apply in one
 * transaction, then the ack. */
void rev_slot_commit(struct reverse_slot *s, int changed);

/* Sends the delivery to a retry delay queue (RT_RETRY) or to the
 * dead-letter queue (RT_REJECT) with the reason (applier_fail). */
void rev_slot_fail(struct reverse_slot *s, rt_status status, enum reverse_dead_kind kind,
                   const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* A row of the task's journey (store_journal.h): the client side's, for
 * the state in hand. */
void rev_slot_journal(const struct reverse_slot *s, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* 1 when the seq of a state cannot be one its sender used (above
 * APPLIER_SEQ_MAX, or too far past the seq applied; the slot is then
 * gone, dead-lettered): checked before the state takes its place in per
 * task order; rev_slot_start() checks again when the store cannot be read
 * now. */
int reverse_seq_invalid(struct reverse *r, struct reverse_slot *s);

#endif
