/*
 * forward_int.h - what the forward applier's own files share; private to
 * consumer/forward*.c (and the unit test that compiles them in).
 *
 * The forward applier is five files of one concern each, around one
 * struct forward and one struct forward_slot per delivery:
 *   forward.c         the component: lifecycle, deliveries taken and
 *                     checked, sync requests, the broker's events, the
 *                     applier's callbacks, the counters;
 *   forward_plan.c    the message checks and the edit plan: pure
 *                     functions of a message, the configuration and the
 *                     applied fp set (forward.h, "pure helpers");
 *   forward_apply.c   the apply state machine: LINK_LOOKUP, then an update
 *                     (VIEW_TARGET, EDIT, an interrupted note edit
 *                     resolved) or a create, then COMMIT and the ack; the
 *                     API calls and their failures;
 *   forward_recover.c an interrupted create: the department listed and its
 *                     unlinked tasks viewed for the origin block, the task
 *                     found adopted, a create that surely made nothing;
 *   forward_link.c    the link in the store: every write of a step in one
 *                     transaction (an intent synced before the call it
 *                     guards), the seq bounds, the highest target id per
 *                     client.
 * The slot steps are fwd_slot_*: each ends the slot (ack, fail, defer,
 * release) or leaves it waiting for an API answer (forward_on_reply).
 * Callers see forward.h only. Not thread-safe: everything runs in the
 * bridge's loop.
 */
#ifndef RT_FORWARD_INT_H
#define RT_FORWARD_INT_H

#include <stddef.h>
#include <stdint.h>

#include "applier.h"
#include "forward.h"
#include "notes.h"

/* The queue of client C is FORWARD_QUEUE_PREFIX C (broker_queue_name). */
#define FORWARD_QUEUE_PREFIX "remotetask.forward."
#define FORWARD_REASON_MAX   APPLIER_REASON_MAX
/* A recovery that lists a department gives up past this many rows and
 * creates the task: a department that large is not one client's tasks. */
#define FORWARD_RECOVER_MAX_ROWS 1000000L
/* The store meta key of the last successful apply. */
#define FORWARD_META_LAST_APPLY "last_forward_apply_ms"
/* Links read at once when the highest target id of a client is computed. */
#define FORWARD_SCAN_BATCH 256

/* Where a delivery is while the applier holds it (applier.h keeps the
 * phases around it: waiting, publishing a retry or dead-letter copy). */
enum forward_state {
    FS_NONE = 0,
    FS_LINK_LOOKUP,  /* reading the link (synchronous, never seen from outside) */
    FS_RECOVER_LIST, /* listing the department after an interrupted create */
    FS_RECOVER_VIEW, /* viewing an unlinked task of that department */
    FS_CREATE,       /* func_task_edit sok=ok without elid */
    FS_VIEW_TARGET,  /* viewing the target for its current note */
    FS_EDIT,         /* func_task_edit sok=ok elid=dst */
    FS_COMMIT,       /* writing the link (synchronous) */
};

/* What a slot does again when it resumes after applier_defer() (a store
 * step that failed for now). */
enum forward_resume {
    FR_START = 0, /* the link lookup and everything after it */
    FR_PENDING,   /* the intent of a note edit, then the edit (note) */
    FR_ADOPT,     /* the link of an interrupted create's task found again */
    FR_LIST,      /* the department's page, listed again */
    FR_RECREATE,  /* the intent of a create, then the create */
    FR_COMMIT,    /* the commit of an applied message (commit_counter, commit_what) */
};

/* What the forward applier keeps for one delivery: the priv area of its
 * applier slot, which holds the delivery itself. */
struct forward_slot {
    struct forward *f;
    struct applier_slot *as;
    enum forward_state state;
    const struct config_server_client *client; /* NULL: the queue names none */
    struct codec_msg msg;
    int decoded;
    char origin[NOTES_ORIGIN_MAX + 1];
    struct store_link link;
    struct forward_plan plan;
    /* The link holds an intent of a note edit (applier.h): the view of the
     * target tells whether it landed. */
    int pending;
    int landed;            /* it did: plan against the set after it */
    uint64_t commit_seq;   /* last_seq to commit when above msg.seq: a newer
                              message's edit that landed */
    const char *pend_note; /* the note about to be written, for the intent */
    char *note;            /* the whole note of the pending edit (owned) */
    enum forward_resume resume;
    uint64_t *commit_counter; /* what a resumed commit counts */
    const char *commit_what;  /* and logs */
    /* Recovery of an interrupted create: only ids above after can be it;
     * the unlinked ones of one page. */
    int64_t after;
    long page;
    long seen;
    int list_done;
    int64_t *cand;
    size_t ncand;
    size_t icand;
};

struct forward {
    const struct config *cfg;
    struct store *st;
    struct billmgr *bm;
    struct broker *br;
    const struct config_billmgr_api *api;
    struct applier *ap;
    struct forward_stats stats; /* the counters these files keep; the slots' are in ap */
    uint64_t applied_dups;      /* dropped at the link lookup: seq already applied */
    /* Per configured client (same index as cfg->server.clients): the
     * highest target task id of its links, once max_known says it was read
     * from the store; this process writes every link, so it keeps it. */
    int64_t *max_dst;
    unsigned char *max_known;
    forward_sync_fn sync_hook;
    void *sync_arg;
    forward_applied_fn applied_hook;
    void *applied_arg;
    /* A function was answered as missing and logged at error: not again
     * until an API call succeeds. */
    int func_missing;
};

/* What a write of the link records (fwd_link_write). */
enum fwd_link_write {
    FWD_LINK_INTENT,    /* a create is about to be made: dst_task = 0 */
    FWD_LINK_NO_CREATE, /* that create surely made nothing: no search needed */
    FWD_LINK_ADOPT,     /* an interrupted create's task found: dst_task, applied */
    FWD_LINK_PENDING,   /* a note edit is about to be made: its intent */
    FWD_LINK_APPLIED,   /* the message is applied: dst_task, last_seq, applied */
};

/* ---- forward.c ---- */

/* Copies src (NULL counts as "") into dst of size bytes, cut and always
 * terminated. */
void forward_copy(char *dst, size_t size, const char *src);

/* ---- forward_plan.c ---- */

/* The configured client whose forward queue this is, or NULL. */
const struct config_server_client *forward_queue_client(const struct config *cfg,
                                                        const char *queue);

/* ---- forward_link.c ---- */

/* Writes the slot's link in one transaction, re-read inside it so that
 * what the reverse publisher wrote meanwhile (rev_seq, rev_fp, notes_sent,
 * the target's own status in applied) is kept; what says what changes.
 * FWD_LINK_APPLIED also records the time of the last apply and the
 * journal's row of the message. An intent (FWD_LINK_INTENT,
 * FWD_LINK_PENDING) is synced before this returns; the rest rides the
 * loop pass's sync (store.h). On RT_OK s->link is the link written;
 * otherwise the store's status, nothing written. */
rt_status fwd_link_write(struct forward_slot *s, enum fwd_link_write what);

/* A target task id this process saw linked or made for client c. */
void forward_seen_dst(struct forward *f, const struct config_server_client *c, int64_t dst);

/* 1 when the message's seq is further past the last seq applied for its
 * task (link, found or not) than a sender can have gone
 * (APPLIER_SEQ_MAX_JUMP): the message is dead-lettered, and the slot is
 * gone. */
int forward_seq_jump(struct forward_slot *s, const struct store_link *link);

/* 1 when the seq of a task message cannot be one its sender used: above
 * APPLIER_SEQ_MAX, or too far past the seq applied for the task (the slot
 * is then gone, dead-lettered). Checked before the message takes its
 * place in per task order, where a forged seq would make the real
 * messages of the task look older than it. When the store cannot be read
 * now, fwd_slot_start() checks again. */
int forward_seq_invalid(struct forward *f, struct forward_slot *s);

/* ---- forward_apply.c ---- */

/* LINK_LOOKUP, the slot's turn: what was applied decides the path. */
void fwd_slot_start(struct forward_slot *s);

/* An update of the linked target task (after a found interrupted create
 * too): resolves an interrupted note edit, plans, edits, commits. */
void fwd_slot_update(struct forward_slot *s);

/* The create of the target task, its intent already written. */
void fwd_slot_create(struct forward_slot *s);

/* The intent of a create, then the create. */
void fwd_slot_create_intent(struct forward_slot *s);

/* Commits the intent of the edit that writes s->note, then makes it. */
void fwd_slot_pend_edit(struct forward_slot *s);

/* The message is applied: commit (counting it in *counter, what for the
 * log and the journal), then ack. */
void fwd_slot_commit(struct forward_slot *s, uint64_t *counter, const char *what);

/* Queues an API call of func for the slot, which then waits in state.
 * params are released; params_ok 0 (a value did not fit) dead-letters
 * the message. */
void fwd_slot_call(struct forward_slot *s, enum forward_state state, const char *func,
                   struct billmgr_params *p, int params_ok);

/* Views task elid for the slot, which then waits in state. */
void fwd_slot_view(struct forward_slot *s, enum forward_state state, int64_t elid);

/* Sends the delivery to a retry delay queue (RT_RETRY) or to the
 * dead-letter queue (RT_REJECT) with the reason (applier_fail). */
void fwd_slot_fail(struct forward_slot *s, rt_status status, enum forward_dead_kind kind,
                   const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* A store step failed with st. For now (RT_RETRY): the delivery waits in
 * its slot, unacknowledged, and resume runs again (applier_defer). For
 * good: a retry copy, as for any failure. */
void fwd_slot_store_failed(struct forward_slot *s, rt_status st, enum forward_resume resume);

/* The outcome of a failed API call (what names it in the reason): a
 * retry, or a dead letter naming the call and the API's error. */
void fwd_slot_api_failed(struct forward_slot *s, const char *what, const struct billmgr_reply *r);

/* A row of the task's journey (store_journal.h): the server side's, keyed
 * by the client's task, with the target task once it is known. */
void fwd_slot_journal(const struct forward_slot *s, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* What a missed error names (the API contract's §2: $object is the
 * missing object), read as producer/taskview.c (taskview_missed) reads it. The element (elid,
 * or task) is the task asked for: it is gone. "func", or the name of a
 * function this applier calls, is BILLmanager's answer to a function it
 * does not have: a configuration error that says nothing about the task.
 * Anything else, or nothing, is not read as a deletion either: a target
 * task is never made again on a guess, which could make it twice. */
enum forward_missed {
    FORWARD_MISSED_NO = 0, /* not a missed error */
    FORWARD_MISSED_TASK,   /* the task asked for is gone */
    FORWARD_MISSED_FUNC,   /* the function called does not exist */
    FORWARD_MISSED_OTHER,  /* something else, or nothing, is named */
};

enum forward_missed forward_missed_what(const struct forward *f, const struct billmgr_reply *r);

/* ---- forward_recover.c ---- */

/* A link whose create was started and never committed (dst_task 0, maybe
 * made): lists the department from its first page for the task it made. */
void fwd_recover_begin(struct forward_slot *s);

/* Lists the department's page s->page (FS_RECOVER_LIST). */
void fwd_slot_list_page(struct forward_slot *s);

/* The answer of a listed page, of a viewed candidate. */
void fwd_recover_listed(struct forward_slot *s, const struct billmgr_reply *r);
void fwd_recover_viewed(struct forward_slot *s, const struct billmgr_reply *r);

/* Records the task found again (s->link) as the link's target, then
 * updates it. */
void fwd_slot_adopt(struct forward_slot *s);

/* A create surely made no task: the link's intent says so, and the next
 * delivery creates at once instead of searching the department. */
void fwd_slot_no_create(struct forward_slot *s);

/* 1 when the failed create's answer proves that no task was made. */
int forward_create_not_made(const struct billmgr_reply *r);

#endif
