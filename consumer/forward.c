#include "forward.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "applier.h"
#include "fp.h"
#include "log.h"
#include "notes.h"
#include "store_journal.h"

/* The queue of client C is FORWARD_QUEUE_PREFIX C (broker_queue_name). */
#define FORWARD_QUEUE_PREFIX "remotetask.forward."
#define FORWARD_REASON_MAX   APPLIER_REASON_MAX
/* A recovery that lists a department gives up past this many rows and
 * creates the task: a department that large is not one client's tasks. */
#define FORWARD_RECOVER_MAX_ROWS 1000000L
/* The store meta key of the last successful apply. */
#define FORWARD_META_LAST_APPLY "last_forward_apply_ms"
/* The applied set of a link whose create is under way (dst_task 0):
 * FORWARD_KEY_CREATING is 1 while a create may have made the task (then a
 * later delivery looks for it), 0 once a create surely failed; absent (a
 * link written by an older version) counts as 1. FORWARD_KEY_AFTER is the
 * highest target task id known for the client when the create started:
 * only tasks above it can be the one it made. */
#define FORWARD_KEY_CREATING "creating"
#define FORWARD_KEY_AFTER    "after"
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
    struct forward_stats stats; /* the counters this file keeps; the slots' are in ap */
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

static void slot_start(struct forward_slot *s);
static void slot_update(struct forward_slot *s);
static void slot_create(struct forward_slot *s);
static void slot_no_create(struct forward_slot *s);
static void slot_adopt(struct forward_slot *s);
static void slot_pend_edit(struct forward_slot *s);
static void slot_fail(struct forward_slot *s, rt_status status, enum forward_dead_kind kind,
                      const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void slot_store_failed(struct forward_slot *s, rt_status st, enum forward_resume resume);
static void slot_journal(const struct forward_slot *s, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int64_t forward_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void forward_copy(char *dst, size_t size, const char *src)
{
    snprintf(dst, size, "%s", src ? src : "");
}

const char *forward_dead_kind_name(enum forward_dead_kind kind)
{
    switch (kind) {
    case FORWARD_DEAD_NONE: return "none";
    case FORWARD_DEAD_UNDECODABLE: return "undecodable";
    case FORWARD_DEAD_UNAUTHORIZED: return "unauthorized";
    case FORWARD_DEAD_DEPARTMENT: return "department";
    case FORWARD_DEAD_API: return "api";
    case FORWARD_DEAD_SEQ: return "seq";
    }
    return "none";
}

/* ---- pure helpers ------------------------------------------------------ */

/* The client whose forward queue this is, or NULL. */
static const struct config_server_client *forward_queue_client(const struct config *cfg,
                                                               const char *queue)
{
    size_t pl = strlen(FORWARD_QUEUE_PREFIX);
    if (!queue || strncmp(queue, FORWARD_QUEUE_PREFIX, pl) != 0)
        return NULL;
    return config_server_client_find(cfg, queue + pl);
}

enum forward_dead_kind forward_check(const struct config *cfg, const char *queue,
                                     const char *user_id, const char *own_user,
                                     const char *relayed_user, const struct codec_msg *m,
                                     const struct config_server_client **client, char *reason,
                                     size_t reasonlen)
{
    const struct config_server_client *c = forward_queue_client(cfg, queue);
    const char *sender = applier_sender(user_id, own_user, relayed_user);

    *client = c;
    if (reasonlen)
        reason[0] = '\0';
    if (!c) {
        snprintf(reason, reasonlen, "queue \"%s\" is not the forward queue of a configured client",
                 queue ? queue : "");
        return FORWARD_DEAD_UNAUTHORIZED;
    }
    if (m->kind != CODEC_TASK && m->kind != CODEC_SYNC) {
        snprintf(reason, reasonlen, "unexpected kind \"%s\"", codec_kind_name(m->kind));
        return FORWARD_DEAD_UNDECODABLE;
    }
    if (!m->client || strcmp(m->client, c->id) != 0) {
        snprintf(reason, reasonlen, "client \"%s\" of the message is not client %s of queue \"%s\"",
                 m->client ? m->client : "", c->id, queue);
        return FORWARD_DEAD_UNAUTHORIZED;
    }
    if (strcmp(sender, c->amqp_user) != 0) {
        snprintf(reason, reasonlen, "user_id \"%s\" is not the AMQP user of client %s", sender,
                 c->id);
        return FORWARD_DEAD_UNAUTHORIZED;
    }
    /* A sync request names no department: the client's own is listed. */
    if (m->kind == CODEC_TASK && m->fwd.department != c->department) {
        snprintf(reason, reasonlen, "department %" PRId64 " is not the department of client %s",
                 m->fwd.department, c->id);
        return FORWARD_DEAD_DEPARTMENT;
    }
    return FORWARD_DEAD_NONE;
}

/* The line that describes the service and the account of a task, "" when
 * the message has neither. Newlines become spaces: it must stay one line.
 * A malloc'd string, NULL when memory ran out. */
static char *forward_regarding(const struct codec_msg *m)
{
    const char *item = m->fwd.item ? m->fwd.item : "";
    const char *account = m->fwd.account ? m->fwd.account : "";
    size_t n;
    char *line;

    if (!*item && !*account)
        return strdup("");
    n = strlen(FORWARD_REGARDING) + strlen(item) + strlen(account) + 3;
    line = malloc(n);
    if (!line)
        return NULL;
    snprintf(line, n, "%s%s%s%s", FORWARD_REGARDING, item, *item && *account ? "; " : "", account);
    for (char *p = line; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    return line;
}

void forward_plan_release(struct forward_plan *plan)
{
    if (!plan)
        return;
    free(plan->block);
    memset(plan, 0, sizeof(*plan));
}

int forward_plan_empty(const struct forward_plan *plan)
{
    return !plan->name && !plan->type && !plan->deadline && !plan->status && !plan->block;
}

/* 1 when the fingerprint of value differs from the one under key in set,
 * and puts the new one into out. -1 when out is full. */
static int forward_plan_field(const char *set, const char *key, const char *value, char *out,
                              size_t outlen)
{
    char now[FP_HEX_LEN + 1], was[FP_HEX_LEN + 1];
    fp_of_str(value, now);
    int changed = fp_set_get(set, key, was, sizeof(was)) < 0 || strcmp(now, was) != 0;
    if (fp_set_put(out, outlen, key, now) < 0)
        return -1;
    return changed;
}

/* The status part of a plan: whether the message's status is written to
 * the target, and the status the link then records as the target's.
 *
 * The conflict rule: when the status changes on both sides at once, the
 * target's wins. The relay reads the source task and builds its message
 * at one moment; if target staff changed the status before that moment
 * reached the client (statepub published the change, the client had not
 * applied it yet), the message still carries the source's older status,
 * and writing it would undo the target's change. The message says which
 * state the client had applied when it read the task ("rev_seq"); the
 * link says which confirmed state last carried a status the target changed
 * itself (FORWARD_KEY_REV_PUB; states that only moved the performer or the
 * notes don't count, so they never make the client's own status change
 * stale). A message that had not seen that state is stale:
 * its status is left alone, and "status" keeps the target's. The client
 * then receives the target's state and, by the reverse rule
 * (consumer/reverse.c), writes it to the source: statepub publishes again
 * once this message's seq is applied (its state then carries a fwd_seq the
 * client accepts), so both sides end with the target's status. The other
 * fields of a stale message are applied: the target changed only its
 * status.
 *
 * rev_seq 0 is a client that does not say (older than the key), and no
 * FORWARD_KEY_REV_PUB is a link no state was confirmed for: the message's
 * status is then compared with the known one as before. */
static int forward_plan_status(const struct codec_msg *m, const char *applied,
                               struct forward_plan *plan)
{
    int64_t known = fp_set_get_int(applied, "status", -1);
    int64_t rev_pub = fp_set_get_int(applied, FORWARD_KEY_REV_PUB, 0);
    int64_t record = m->fwd.status;

    plan->stale = m->fwd.rev_seq != 0 && rev_pub > 0 && m->fwd.rev_seq < (uint64_t)rev_pub &&
                  known >= 0;
    if (plan->stale)
        record = known;
    else
        plan->status = known != m->fwd.status;
    return fp_set_put_int(plan->applied, sizeof(plan->applied), "status", record);
}

int forward_plan_make(const struct codec_msg *m, const char *applied, int fixed_type,
                      struct forward_plan *plan)
{
    char *native = NULL, *about = NULL;
    char fp[FP_HEX_LEN + 1], was[FP_HEX_LEN + 1];
    struct buf block;
    int r, edited;

    memset(plan, 0, sizeof(*plan));
    buf_init(&block, (size_t)CODEC_MAX_NOTE + CODEC_MAX_ITEM + CODEC_MAX_ACCOUNT + 64);
    applied = applied ? applied : "";

    if ((r = forward_plan_field(applied, "name", m->fwd.name, plan->applied,
                                sizeof(plan->applied))) < 0)
        goto fail;
    plan->name = r;
    if ((r = forward_plan_field(applied, "type", m->fwd.type, plan->applied,
                                sizeof(plan->applied))) < 0)
        goto fail;
    plan->type = r && !fixed_type;
    if ((r = forward_plan_field(applied, "deadline", m->fwd.deadline, plan->applied,
                                sizeof(plan->applied))) < 0)
        goto fail;
    plan->deadline = r;
    if (forward_plan_status(m, applied, plan) < 0)
        goto fail;

    /* The source sends its native note; removing blocks again keeps a
     * forged origin header out of the target's note. */
    native = notes_native(m->fwd.note);
    about = forward_regarding(m);
    if (!native || !about)
        goto fail;
    char applied_fp[FP_HEX_LEN + 1];
    size_t applied_len = (size_t)fp_set_get_int(applied, "note_len", 0);
    fp_set_get(applied, "note_fp", applied_fp, sizeof(applied_fp));
    size_t off = notes_new_part(native, applied_len, applied_fp, &edited);
    const char *text = native + off;
    size_t native_len = strlen(native);
    fp_of_mem(native, native_len, fp);
    if (fp_set_put_int(plan->applied, sizeof(plan->applied), "note_len", (int64_t)native_len) < 0 ||
        fp_set_put(plan->applied, sizeof(plan->applied), "note_fp", fp) < 0)
        goto fail;

    fp_of_str(about, fp);
    int about_changed = fp_set_get(applied, "about", was, sizeof(was)) < 0 || strcmp(fp, was) != 0;
    if (fp_set_put(plan->applied, sizeof(plan->applied), "about", fp) < 0)
        goto fail;
    if (about_changed && *about) {
        if (buf_printf(&block, "%s\n", about) < 0)
            goto fail;
        if (*text && buf_append_str(&block, "\n") < 0)
            goto fail;
    }
    if (*text && buf_append_str(&block, text) < 0)
        goto fail;
    if (block.len) {
        plan->block = buf_steal(&block);
        if (!plan->block)
            goto fail;
    }
    buf_release(&block);
    free(native);
    free(about);
    return 0;
fail:
    buf_release(&block);
    free(native);
    free(about);
    forward_plan_release(plan);
    return -1;
}

/* The text of the first block of origin in note: a pointer into note and
 * its length (the lines between the header and the end line, with their
 * newlines), or NULL when there is none. The header and end lines are
 * taken from notes_append() so that the format lives in notes.c only. */
static const char *forward_block_text(const char *note, const char *origin, size_t *len)
{
    char *frame = notes_append("", origin, "");
    const char *found = NULL;
    if (!frame || !note)
        goto free_frame;
    /* frame is "HEADER\nEND". */
    char *nl = strchr(frame, '\n');
    if (!nl)
        goto free_frame;
    *nl = '\0';
    const char *head = frame, *end = nl + 1;
    size_t hl = strlen(head), el = strlen(end);
    for (const char *p = note; *p;) {
        size_t n = strcspn(p, "\n");
        size_t core = n && p[n - 1] == '\r' ? n - 1 : n;
        const char *next = p + n + (p[n] == '\n');
        if (!found && core == hl && strncmp(p, head, hl) == 0) {
            found = next;
        } else if (found) {
            if (core == el && strncmp(p, end, el) == 0) {
                *len = (size_t)(p - found);
                goto free_frame;
            }
        }
        p = next;
    }
    if (found) /* an end line someone deleted: the block runs to the end */
        *len = strlen(found);
free_frame:
    free(frame);
    return found;
}

int forward_adopt_applied(const char *name, const char *type, const char *deadline, long status,
                          const char *note, const char *origin, const struct codec_msg *m,
                          char *out, size_t outlen)
{
    char fp[FP_HEX_LEN + 1];
    char *native = NULL;
    size_t blen = 0, note_len = 0;
    int rc = -1;

    if (outlen)
        out[0] = '\0';
    fp_of_str(name, fp);
    if (fp_set_put(out, outlen, "name", fp) < 0)
        goto done;
    fp_of_str(type, fp);
    if (fp_set_put(out, outlen, "type", fp) < 0)
        goto done;
    fp_of_str(deadline, fp);
    if (fp_set_put(out, outlen, "deadline", fp) < 0)
        goto done;
    if (fp_set_put_int(out, outlen, "status", status) < 0)
        goto done;

    const char *text = forward_block_text(note, origin, &blen);
    const char *text_end = text ? text + blen : NULL;
    /* The create wrote [Regarding line, blank line,] then the note text. */
    fp_of_str("", fp);
    size_t rl = strlen(FORWARD_REGARDING);
    if (text && blen >= rl && strncmp(text, FORWARD_REGARDING, rl) == 0) {
        const char *eol = memchr(text, '\n', blen);
        size_t ll = eol ? (size_t)(eol - text) : blen;
        if (ll && text[ll - 1] == '\r')
            ll--;
        fp_of_mem(text, ll, fp);
        text = eol ? eol + 1 : text_end;
        if (text < text_end && *text == '\n')
            text++;
    }
    if (fp_set_put(out, outlen, "about", fp) < 0)
        goto done;

    native = notes_native(m->fwd.note);
    if (!native)
        goto done;
    if (text) {
        size_t tl = (size_t)(text_end - text);
        if (tl && text[tl - 1] == '\n') /* notes_append ended the text with one */
            tl--;
        size_t lead = strspn(native, "\r\n");
        if (tl && strlen(native + lead) >= tl && memcmp(native + lead, text, tl) == 0)
            note_len = lead + tl;
    }
    fp_of_mem(native, note_len, fp);
    if (fp_set_put_int(out, outlen, "note_len", (int64_t)note_len) < 0 ||
        fp_set_put(out, outlen, "note_fp", fp) < 0)
        goto done;
    rc = 0;
done:
    free(native);
    return rc;
}

void forward_applied_merge(const char *stored, const struct forward_plan *plan, int same_target,
                           char *out, size_t outlen)
{
    char state[STORE_FP_MAX + 1];

    forward_copy(out, outlen, plan->applied);
    if (!same_target)
        return;
    /* A status not sent now keeps the value stored: the reverse publisher
     * records there the target's own status changes. */
    if (!plan->status) {
        int64_t kept = fp_set_get_int(stored, "status", -1);
        if (kept >= 0)
            fp_set_put_int(out, outlen, "status", kept); /* replaces a value: fits */
    }
    /* The reverse publisher's fingerprint of the state it last published
     * stays: without it every forward apply would make its next cycle
     * publish the same state again. */
    if (fp_set_get(stored, FORWARD_KEY_STATE, state, sizeof(state)) == 0 &&
        fp_set_put(out, outlen, FORWARD_KEY_STATE, state) < 0)
        log_warning("the applied set of a link has no room for the key \"%s\": the next "
                    "reverse cycle publishes the task's state again",
                    FORWARD_KEY_STATE);
    /* Its record of the last state confirmed, and of the forward seq that
     * state had seen, stay too: they are what tells a stale message
     * (forward_plan_status) and when to publish again. */
    static const char *const keep[] = {FORWARD_KEY_REV_PUB, FORWARD_KEY_PUB_FWD};
    for (size_t i = 0; i < sizeof(keep) / sizeof(keep[0]); i++) {
        int64_t v = fp_set_get_int(stored, keep[i], -1);
        if (v >= 0 && fp_set_put_int(out, outlen, keep[i], v) < 0)
            log_warning("the applied set of a link has no room for the key \"%s\"", keep[i]);
    }
}

/* ---- slots ------------------------------------------------------------- */

/* A row of the task's journey (store_journal.h): the server side's, keyed
 * by the client's task, with the target task once it is known. */
static void slot_journal(const struct forward_slot *s, const char *event, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    store_journal_vadd(s->f->st, 0, STORE_SIDE_SERVER, s->client->id, s->msg.task, s->link.dst_task,
                       event, s->msg.seq, fmt, ap);
    va_end(ap);
}

/* The row of an applied message, written in the transaction of its link:
 * what the target task took (s->commit_what says how it was applied). */
static void slot_journal_applied(const struct forward_slot *s)
{
    const struct forward_plan *p = &s->plan;
    const char *what = s->commit_what ? s->commit_what : "";
    const char *stale = p->stale ? "; the target's newer status is kept" : "";
    const char *restart = strstr(what, "restart") ? " (its edit landed before a restart)" : "";

    char fields[64] = "";

    if (strcmp(what, "created") == 0) {
        slot_journal(s, JOURNAL_APPLIED, "created%s", stale);
        return;
    }
    if (forward_plan_empty(p)) {
        slot_journal(s, JOURNAL_APPLIED, "unchanged%s%s", restart, stale);
        return;
    }
    snprintf(fields, sizeof(fields), "%s%s%s%s%s", p->name ? ", name" : "", p->type ? ", type" : "",
             p->deadline ? ", deadline" : "", p->status ? ", status" : "",
             p->block ? ", note" : "");
    slot_journal(s, JOURNAL_APPLIED, "changed %s%s%s", fields[0] ? fields + 2 : "nothing", restart,
                 stale);
}

/* Acks the delivery and frees the slot (applier_ack); what this file
 * keeps in it is freed by forward_slot_clear. */
static void slot_ack(struct forward_slot *s)
{
    applier_ack(s->as);
}

/* Sends the delivery to a retry delay queue (RT_RETRY) or to the
 * dead-letter queue (RT_REJECT) with the reason (applier_fail). */
static void slot_fail(struct forward_slot *s, rt_status status, enum forward_dead_kind kind,
                      const char *fmt, ...)
{
    char reason[FORWARD_REASON_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof(reason), fmt, ap);
    va_end(ap);
    applier_fail(s->as, status, (int)kind, forward_dead_kind_name(kind), "%s", reason);
}

/* A store step failed. For now (busy, locked, full, an I/O error): the
 * delivery waits in its slot, unacknowledged, and the step runs again
 * (applier_defer); a retry copy would only move a local problem into the
 * broker. For good (a corrupt row): a retry copy, as for any failure. */
static void slot_store_failed(struct forward_slot *s, rt_status st, enum forward_resume resume)
{
    if (st == RT_RETRY) {
        /* The cause without the statement: one condition, one warning. */
        log_debug("task %" PRId64 " of client \"%s\" waits for the store: %s", s->msg.task,
                  s->client->id, store_strerror(s->f->st));
        s->resume = resume;
        applier_defer(s->as, "store: %s", store_strcause(s->f->st));
        return;
    }
    slot_fail(s, RT_RETRY, FORWARD_DEAD_NONE, "store: %s", store_strerror(s->f->st));
}

/* 1 when the message's seq is further past the last seq applied for its
 * task (link, found or not) than a sender can have gone
 * (APPLIER_SEQ_MAX_JUMP): the message is dead-lettered, and the slot is
 * gone. */
static int forward_seq_jump(struct forward_slot *s, const struct store_link *link)
{
    uint64_t last = link->found ? link->last_seq : 0;
    if (s->msg.seq <= last || s->msg.seq - last <= APPLIER_SEQ_MAX_JUMP)
        return 0;
    slot_fail(s, RT_REJECT, FORWARD_DEAD_SEQ,
              "seq %" PRIu64 " of task %" PRId64 " is %" PRIu64 " past seq %" PRIu64
              ", the last applied, more than the %" PRIu64 " a sender can have used: forged or "
              "corrupt",
              s->msg.seq, s->msg.task, s->msg.seq - last, last, APPLIER_SEQ_MAX_JUMP);
    return 1;
}

/* 1 when the seq of a task message cannot be one its sender used: above
 * APPLIER_SEQ_MAX, or too far past the seq applied for the task. Checked
 * before the message takes its place in per task order, where a forged
 * seq would make the real messages of the task look older than it. When
 * the store cannot be read now, slot_start() checks again. */
static int forward_seq_invalid(struct forward *f, struct forward_slot *s)
{
    struct store_link link;
    if (s->msg.seq > APPLIER_SEQ_MAX) {
        slot_fail(s, RT_REJECT, FORWARD_DEAD_SEQ,
                  "seq %" PRIu64 " of task %" PRId64 " is above %" PRIu64
                  ", more than a sender can have used: forged or corrupt",
                  s->msg.seq, s->msg.task, APPLIER_SEQ_MAX);
        return 1;
    }
    if (applier_troubled(f->ap) ||
        store_link_get(f->st, s->client->id, s->msg.task, &link) != RT_OK)
        return 0;
    return forward_seq_jump(s, &link);
}

/* Writes the link in one transaction, re-read inside it so that what the
 * reverse publisher wrote meanwhile (rev_seq, rev_fp, notes_sent, the
 * target's own status in applied) is kept. */
enum slot_write {
    SLOT_WRITE_INTENT,    /* a create is about to be made: dst_task = 0 */
    SLOT_WRITE_NO_CREATE, /* that create surely made nothing: no search needed */
    SLOT_WRITE_ADOPT,     /* an interrupted create's task found: dst_task, applied */
    SLOT_WRITE_PENDING,   /* a note edit is about to be made: its intent */
    SLOT_WRITE_APPLIED,   /* the message is applied: dst_task, last_seq, applied */
};

/* The index of client c in the configuration. */
static size_t forward_client_index(const struct forward *f, const struct config_server_client *c)
{
    return (size_t)(c - f->cfg->server.clients);
}

/* A target task id this process saw linked or made for client c. */
static void forward_seen_dst(struct forward *f, const struct config_server_client *c, int64_t dst)
{
    size_t i = forward_client_index(f, c);
    if (dst > f->max_dst[i])
        f->max_dst[i] = dst;
}

/* The highest target task id of client c's links: read from the store the
 * first time (one pass over the links), then kept by forward_seen_dst. */
static rt_status forward_max_dst(struct forward *f, const struct config_server_client *c,
                                 int64_t *out)
{
    size_t i = forward_client_index(f, c);
    if (!f->max_known[i]) {
        struct store_link *batch = malloc(FORWARD_SCAN_BATCH * sizeof(*batch));
        int64_t after = INT64_MIN;
        size_t n;
        if (!batch)
            return RT_RETRY;
        do {
            rt_status st = store_link_list(f->st, c->id, after, FORWARD_SCAN_BATCH, batch, &n);
            if (st != RT_OK) {
                free(batch);
                return st;
            }
            for (size_t k = 0; k < n; k++) {
                forward_seen_dst(f, c, batch[k].dst_task);
                after = batch[k].src_task;
            }
        } while (n == FORWARD_SCAN_BATCH);
        free(batch);
        f->max_known[i] = 1;
    }
    *out = f->max_dst[i];
    return RT_OK;
}

static rt_status slot_link_write(struct forward_slot *s, enum slot_write what)
{
    struct forward *f = s->f;
    struct store_link cur;
    int64_t now = forward_now_ms();
    int64_t after = 0;
    rt_status st;

    /* Task ids grow: whatever the create makes is above every target id
     * known now, which bounds the search after an interrupted one. */
    if (what == SLOT_WRITE_INTENT && (st = forward_max_dst(f, s->client, &after)) != RT_OK)
        return st;
    if ((st = store_begin(f->st)) != RT_OK)
        return st;
    if ((st = store_link_get(f->st, s->client->id, s->msg.task, &cur)) != RT_OK)
        goto rollback;
    if (!cur.found) {
        memset(&cur, 0, sizeof(cur));
        forward_copy(cur.client, sizeof(cur.client), s->client->id);
        cur.src_task = s->msg.task;
    }
    switch (what) {
    case SLOT_WRITE_INTENT:
        if (cur.dst_task) {
            /* A new target task: what the reverse side knew of the old one
             * is void, but rev_seq must keep growing. */
            cur.rev_fp[0] = '\0';
            cur.notes_sent = 0;
        }
        cur.dst_task = 0;
        cur.last_seq = 0;
        cur.applied[0] = '\0';
        /* Two short integers: they always fit. */
        fp_set_put_int(cur.applied, sizeof(cur.applied), FORWARD_KEY_CREATING, 1);
        fp_set_put_int(cur.applied, sizeof(cur.applied), FORWARD_KEY_AFTER, after);
        break;
    case SLOT_WRITE_NO_CREATE:
        if (cur.dst_task != 0)
            break; /* not an intent (cannot happen: only the create path calls this) */
        cur.applied[0] = '\0';
        fp_set_put_int(cur.applied, sizeof(cur.applied), FORWARD_KEY_CREATING, 0);
        break;
    case SLOT_WRITE_ADOPT:
        cur.dst_task = s->link.dst_task;
        forward_copy(cur.applied, sizeof(cur.applied), s->link.applied);
        break;
    case SLOT_WRITE_PENDING: {
        /* The intent goes on the set this plan was made against: the one
         * stored, or, after an earlier intent was found to have landed,
         * the set after that edit. What the reverse publisher wrote
         * meanwhile (status, state) stays at the top level. */
        char base[STORE_APPLIED_MAX + 1], set[STORE_APPLIED_MAX + 1];
        if (applier_pend_base(cur.applied, s->landed, base, sizeof(base)) < 0)
            forward_copy(base, sizeof(base), cur.applied);
        /* The sets are a few fixed keys, far below the cap; should one not
         * fit, the edit goes ahead unprotected rather than never. */
        if (applier_pend_put(base, s->plan.applied, s->msg.seq, s->pend_note, set, sizeof(set)) < 0)
            log_warning("no room for the intent of the note edit of task %" PRId64
                        " of client \"%s\": a crash before its commit would append it twice",
                        s->msg.task, s->client->id);
        forward_copy(cur.applied, sizeof(cur.applied), set);
        break;
    }
    case SLOT_WRITE_APPLIED: {
        char applied[STORE_APPLIED_MAX + 1];
        forward_applied_merge(cur.applied, &s->plan, cur.dst_task == s->link.dst_task, applied,
                              sizeof(applied));
        cur.dst_task = s->link.dst_task;
        cur.last_seq = s->commit_seq > s->msg.seq ? s->commit_seq : s->msg.seq;
        forward_copy(cur.applied, sizeof(cur.applied), applied);
        break;
    }
    }
    cur.updated_ms = now;
    if ((st = store_link_put(f->st, &cur)) != RT_OK)
        goto rollback;
    if (what == SLOT_WRITE_APPLIED &&
        (st = store_meta_set_i64(f->st, FORWARD_META_LAST_APPLY, now)) != RT_OK)
        goto rollback;
    if (what == SLOT_WRITE_APPLIED)
        slot_journal_applied(s);
    /* An intent is what a redelivery after a crash looks for before it
     * creates or appends again: it is on disk before the call it guards.
     * The rest rides the loop pass's one sync (store.h), before the ack. */
    if (what == SLOT_WRITE_INTENT || what == SLOT_WRITE_PENDING)
        st = store_commit_durable(f->st);
    else
        st = store_commit(f->st);
    if (st != RT_OK)
        return st;
    s->link = cur;
    if (what == SLOT_WRITE_APPLIED)
        f->stats.last_apply_ms = now;
    return RT_OK;
rollback:
    store_rollback(f->st);
    return st;
}

/* The message is applied: commit, then ack. */
static void slot_commit(struct forward_slot *s, uint64_t *counter, const char *what)
{
    s->state = FS_COMMIT;
    s->commit_what = what; /* for the journal's row, and a resumed commit */
    rt_status st = slot_link_write(s, SLOT_WRITE_APPLIED);
    if (st != RT_OK) {
        /* The target has the change: only the commit is tried again, and
         * the delivery stays unacknowledged until it is durable. */
        s->commit_counter = counter;
        s->commit_what = what;
        slot_store_failed(s, st, FR_COMMIT);
        return;
    }
    (*counter)++;
    log_debug("%s task %" PRId64 " of client \"%s\" (seq %" PRIu64 ") on target task %" PRId64,
              what, s->msg.task, s->client->id, s->msg.seq, s->link.dst_task);
    if (s->f->applied_hook)
        s->f->applied_hook(s->f->applied_arg, s->client->id, s->msg.task, s->msg.ts,
                           s->f->stats.last_apply_ms);
    slot_ack(s);
}

static void forward_on_reply(void *arg, const struct billmgr_reply *r);

/* A create surely made no task (it never left, or the answer proves it was
 * not done): the link's intent says so, and the next delivery creates at
 * once instead of searching the department. Failing to record that only
 * costs that search. */
static void slot_no_create(struct forward_slot *s)
{
    if (slot_link_write(s, SLOT_WRITE_NO_CREATE) != RT_OK)
        log_warning("cannot record that the create of task %" PRId64 " of client \"%s\" made "
                    "nothing (its next delivery searches the department): %s",
                    s->msg.task, s->client->id, store_strerror(s->f->st));
}

/* 1 when the failed create's answer proves that no task was made. An
 * error document is BILLmanager refusing the call (its transaction rolled
 * back). HTTP 503 and 429 are a server or proxy turning the request away
 * before the application ran it. Everything else may come after the task
 * was made: a timeout or a reset (curl's "transport" does not say whether
 * the request was sent), another 5xx (a proxy's 502/504 once the backend
 * had it, a 500 from a crash after the insert), an unreadable or too
 * large answer; then the search is the only way to know. */
static int forward_create_not_made(const struct billmgr_reply *r)
{
    if (r->status == RT_REJECT)
        return strcmp(r->err_type, "toolarge") != 0;
    return strcmp(r->err_type, "http") == 0 && (r->http_code == 503 || r->http_code == 429);
}

/* Queues an API call for the slot, which then waits in state. params are
 * released. */
static void slot_call(struct forward_slot *s, enum forward_state state, const char *func,
                      struct billmgr_params *p, int params_ok)
{
    s->state = state;
    if (!params_ok) {
        billmgr_params_release(p);
        if (state == FS_CREATE)
            slot_no_create(s);
        slot_fail(s, RT_REJECT, FORWARD_DEAD_API,
                  "api: cannot build the call of \"%s\" (a value over %zu bytes)", func,
                  (size_t)BILLMGR_MAX_VALUE);
        return;
    }
    int rc = billmgr_call(s->f->bm, func, p, forward_on_reply, s);
    billmgr_params_release(p);
    if (rc < 0) {
        if (state == FS_CREATE)
            slot_no_create(s);
        slot_fail(s, RT_RETRY, FORWARD_DEAD_NONE, "api: cannot queue the call of \"%s\"", func);
    }
}

/* What a missed error names (BILLMANAGER-API.md §2: $object is the
 * missing object), read as producer/relay.c reads it. The element (elid,
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

static enum forward_missed forward_missed_what(const struct forward *f,
                                               const struct billmgr_reply *r)
{
    const char *o = r->err_object;
    if (r->status != RT_REJECT || strcmp(r->err_type, "missed") != 0)
        return FORWARD_MISSED_NO;
    if (strcmp(o, "elid") == 0 || strcmp(o, "task") == 0)
        return FORWARD_MISSED_TASK;
    if (strcmp(o, "func") == 0 || strcmp(o, f->api->func_task_edit) == 0 ||
        strcmp(o, f->api->func_task) == 0)
        return FORWARD_MISSED_FUNC;
    return FORWARD_MISSED_OTHER;
}

/* The outcome of a failed API call: a retry, or a dead letter whose
 * reason names the call and the API's error. A missed error that does not
 * name the task is retried: a missing function until an operator fixes
 * the configuration (logged at error once, not once per message), any
 * other until the API says what it means. */
static void slot_api_failed(struct forward_slot *s, const char *what, const struct billmgr_reply *r)
{
    struct forward *f = s->f;
    int listing = s->state == FS_RECOVER_LIST;
    const char *func = listing ? f->api->func_task : f->api->func_task_edit;

    switch (forward_missed_what(f, r)) {
    case FORWARD_MISSED_FUNC:
        if (!f->func_missing)
            log_error("the function \"%s\" does not exist on this BILLmanager (it answers missed, "
                      "object \"%s\"): check billmanager.api.%s; task messages are retried "
                      "until it answers",
                      func, r->err_object, listing ? "func_task" : "func_task_edit");
        f->func_missing = 1;
        slot_fail(s, RT_RETRY, FORWARD_DEAD_NONE,
                  "api: %s: the function \"%s\" does not exist on this BILLmanager (missed, "
                  "object \"%s\")",
                  what, func, r->err_object);
        return;
    case FORWARD_MISSED_OTHER:
        slot_fail(s, RT_RETRY, FORWARD_DEAD_NONE,
                  "api: %s: missed, object \"%s\", which is not the task%s%s", what, r->err_object,
                  *r->message ? ": " : "", r->message);
        return;
    default: break;
    }
    slot_fail(s, r->status == RT_RETRY ? RT_RETRY : RT_REJECT, FORWARD_DEAD_API,
              "api: %s: %s%s%s%s%s%s", what, r->err_type, *r->err_object ? " (" : "", r->err_object,
              *r->err_object ? ")" : "", *r->message ? ": " : "", r->message);
}

/* "a" or "an" before word. */
static const char *forward_article(const char *word)
{
    return word[0] && strchr("aeiouAEIOU", word[0]) ? "an" : "a";
}

/* Reads the answer of the view of task elid: out[i] = the text of
 * fields[i], NULL when the API left it out (as it does a field without a
 * value). That is trusted only from the view of that very task: its
 * "elid" and "id", those it has and one at least, must be elid. Returns
 * 0, or -1 with why set ("names no task", "answers for task \"9\"",
 * "holds a note that is not text") when the answer is not that view or a
 * field holds something other than text: read as empty, such a field
 * would erase what the target holds, or hide the origin block of a task
 * already made. */
static int forward_view_read(json_t *doc, int64_t elid, const char *const *fields, const char **out,
                             size_t n, char *why, size_t whylen)
{
    static const char *const ids[] = {"elid", "id"};
    int named = 0;

    for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++) {
        const char *t;
        int r = billmgr_text_field(doc, ids[i], &t);
        if (r < 0) {
            snprintf(why, whylen, "holds %s %s that is not text", forward_article(ids[i]), ids[i]);
            return -1;
        }
        if (r == 0)
            continue;
        char *end;
        errno = 0;
        long long v = strtoll(t, &end, 10);
        if (errno || end == t || *end || v != elid) {
            snprintf(why, whylen, "answers for task \"%.32s\"", t);
            return -1;
        }
        named = 1;
    }
    if (!named) {
        snprintf(why, whylen, "names no task");
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        if (billmgr_text_field(doc, fields[i], &out[i]) < 0) {
            snprintf(why, whylen, "holds %s %s that is not text", forward_article(fields[i]),
                     fields[i]);
            return -1;
        }
    }
    return 0;
}

/* The intent of a create, then the create. */
static void slot_create_intent(struct forward_slot *s)
{
    rt_status st = slot_link_write(s, SLOT_WRITE_INTENT);
    if (st != RT_OK) {
        slot_store_failed(s, st, FR_RECREATE);
        return;
    }
    slot_create(s);
}

static void slot_recreate(struct forward_slot *s)
{
    log_warning("target task %" PRId64 " of task %" PRId64 " of client \"%s\" is gone, creating "
                "it again",
                s->link.dst_task, s->msg.task, s->client->id);
    slot_create_intent(s);
}

static void slot_create(struct forward_slot *s)
{
    const struct config_billmgr_api *api = s->f->api;
    struct billmgr_params p;
    char *note;
    int ok = 1;

    forward_plan_release(&s->plan);
    if (forward_plan_make(&s->msg, "", api->task_type[0] != '\0', &s->plan) < 0) {
        slot_fail(s, RT_RETRY, FORWARD_DEAD_NONE, "out of memory planning the create");
        return;
    }
    /* The block is there even with no text: its header marks the task as
     * made for (client, task), which a redelivered create looks for. */
    note = notes_append("", s->origin, s->plan.block ? s->plan.block : "");
    if (!note) {
        slot_fail(s, RT_RETRY, FORWARD_DEAD_NONE, "out of memory building the note");
        return;
    }
    const char *type = api->task_type[0] ? api->task_type : s->msg.fwd.type;
    billmgr_params_init(&p);
    ok &= billmgr_params_add(&p, "sok", "ok") == 0;
    ok &= billmgr_params_addf(&p, api->field_department, "%ld", s->client->department) == 0;
    ok &= billmgr_params_add(&p, api->field_name, s->msg.fwd.name ? s->msg.fwd.name : "") == 0;
    if (type && *type)
        ok &= billmgr_params_add(&p, api->field_type, type) == 0;
    ok &= billmgr_params_add(&p, api->field_note, note) == 0;
    if (s->msg.fwd.deadline && *s->msg.fwd.deadline)
        ok &= billmgr_params_add(&p, api->field_deadline, s->msg.fwd.deadline) == 0;
    if (s->msg.fwd.status != 0)
        ok &= billmgr_params_addf(&p, api->field_status, "%d", s->msg.fwd.status) == 0;
    free(note);
    slot_call(s, FS_CREATE, api->func_task_edit, &p, ok);
}

/* Changes the target: the fields the plan marks, and note when not NULL. */
static void slot_edit(struct forward_slot *s, const char *note)
{
    const struct config_billmgr_api *api = s->f->api;
    const struct codec_task *t = &s->msg.fwd;
    struct billmgr_params p;
    int ok = 1;

    billmgr_params_init(&p);
    ok &= billmgr_params_add(&p, "sok", "ok") == 0;
    ok &= billmgr_params_addf(&p, "elid", "%" PRId64, s->link.dst_task) == 0;
    if (s->plan.name)
        ok &= billmgr_params_add(&p, api->field_name, t->name ? t->name : "") == 0;
    if (s->plan.type)
        ok &= billmgr_params_add(&p, api->field_type, t->type ? t->type : "") == 0;
    if (s->plan.deadline)
        ok &= billmgr_params_add(&p, api->field_deadline, t->deadline ? t->deadline : "") == 0;
    if (s->plan.status)
        ok &= billmgr_params_addf(&p, api->field_status, "%d", t->status) == 0;
    if (note)
        ok &= billmgr_params_add(&p, api->field_note, note) == 0;
    slot_call(s, FS_EDIT, api->func_task_edit, &p, ok);
}

static void slot_view(struct forward_slot *s, enum forward_state state, int64_t elid)
{
    struct billmgr_params p;
    billmgr_params_init(&p);
    int ok = billmgr_params_addf(&p, "elid", "%" PRId64, elid) == 0;
    slot_call(s, state, s->f->api->func_task_edit, &p, ok);
}

/* Logs a message whose status lost to a newer change on the target
 * (forward_plan_status): an operator reading the log sees why the source's
 * status did not reach the target. */
static void slot_log_stale(const struct forward_slot *s)
{
    if (s->plan.stale)
        log_info("task message seq %" PRIu64 " of task %" PRId64 " of client \"%s\" was read "
                 "before the client applied state %" PRId64 " (it had seen %" PRIu64 "): the "
                 "target's status is kept",
                 s->msg.seq, s->msg.task, s->client->id,
                 fp_set_get_int(s->link.applied, FORWARD_KEY_REV_PUB, 0), s->msg.fwd.rev_seq);
}

static void slot_update(struct forward_slot *s)
{
    if (applier_pend_present(s->link.applied)) {
        /* A note edit was under way when the daemon stopped: the target
         * tells whether it landed, and the plan is made against that. */
        s->pending = 1;
        slot_view(s, FS_VIEW_TARGET, s->link.dst_task);
        return;
    }
    forward_plan_release(&s->plan);
    if (forward_plan_make(&s->msg, s->link.applied, s->f->api->task_type[0] != '\0', &s->plan) <
        0) {
        slot_fail(s, RT_RETRY, FORWARD_DEAD_NONE, "out of memory planning the update");
        return;
    }
    slot_log_stale(s);
    if (forward_plan_empty(&s->plan)) {
        slot_commit(s, &s->f->stats.unchanged, "nothing to change for");
        return;
    }
    if (s->plan.block) /* a note is appended to what the target holds now */
        slot_view(s, FS_VIEW_TARGET, s->link.dst_task);
    else
        slot_edit(s, NULL);
}

static void slot_list_page(struct forward_slot *s)
{
    const struct config_billmgr_api *api = s->f->api;
    struct billmgr_params p;
    int ok = 1;

    billmgr_params_init(&p);
    ok &= billmgr_params_add(&p, "filter", "on") == 0;
    ok &= billmgr_params_addf(&p, api->field_department, "%ld", s->client->department) == 0;
    ok &= billmgr_params_addf(&p, "p_cnt", "%d", api->page_size) == 0;
    ok &= billmgr_params_addf(&p, "p_num", "%ld", s->page) == 0;
    slot_call(s, FS_RECOVER_LIST, api->func_task, &p, ok);
}

/* Views the next unlinked task of the page, lists the next page, or, when
 * the department is done, creates the task. */
static void slot_recover_next(struct forward_slot *s)
{
    if (s->icand < s->ncand) {
        slot_view(s, FS_RECOVER_VIEW, s->cand[s->icand++]);
        return;
    }
    if (!s->list_done) {
        s->page++;
        slot_list_page(s);
        return;
    }
    log_info("no target task found for the interrupted create of task %" PRId64 " of client "
             "\"%s\", creating it",
             s->msg.task, s->client->id);
    slot_create(s);
}

/* Keeps the ids of a page's rows that no link of this client points to. */
static void slot_listed(struct forward_slot *s, json_t *doc)
{
    json_t *elems = json_object_get(doc, "elem");
    size_t rows = json_is_array(elems) ? json_array_size(elems) : json_is_object(elems) ? 1 : 0;
    long total;
    int have_total = billmgr_long(doc, "p_elems", &total) == 0;

    free(s->cand);
    s->cand = rows ? calloc(rows, sizeof(*s->cand)) : NULL;
    s->ncand = s->icand = 0;
    if (rows && !s->cand) {
        slot_fail(s, RT_RETRY, FORWARD_DEAD_NONE, "out of memory listing the department");
        return;
    }
    for (size_t i = 0; i < rows; i++) {
        json_t *e = json_is_array(elems) ? json_array_get(elems, i) : elems;
        struct store_link other;
        const char *text;
        long id;
        /* A row that cannot be read may be the task the create made: a
         * search that skipped it would make the task a second time. */
        int got = billmgr_text_field(e, "id", &text);
        if (got <= 0 || billmgr_long(e, "id", &id) < 0 || id <= 0) {
            slot_fail(s, RT_RETRY, FORWARD_DEAD_NONE,
                      "api: the list of department %ld has a row %s", s->client->department,
                      got < 0    ? "whose id is not text"
                      : got == 0 ? "without an id"
                                 : "whose id is not a task id");
            return;
        }
        if (id <= s->after)
            continue;
        rt_status st = store_link_by_dst(s->f->st, s->client->id, id, &other);
        if (st != RT_OK) {
            slot_store_failed(s, st, FR_LIST); /* the same page again */
            return;
        }
        if (!other.found)
            s->cand[s->ncand++] = id;
    }
    s->seen += (long)rows;
    s->list_done =
        rows == 0 || (have_total ? s->seen >= total : rows < (size_t)s->f->api->page_size);
    if (!s->list_done && s->seen >= FORWARD_RECOVER_MAX_ROWS) {
        log_warning("department %ld passed %ld rows while looking for task %" PRId64
                    " of client \"%s\"; creating it",
                    s->client->department, FORWARD_RECOVER_MAX_ROWS, s->msg.task, s->client->id);
        s->list_done = 1;
    }
    slot_recover_next(s);
}

/* A candidate viewed: it is ours when its note holds our origin block. A
 * view that cannot tell (not the candidate's, or fields that are not
 * text) is retried: taken as "not ours", it would make the task again. */
static void slot_recover_viewed(struct forward_slot *s, json_t *doc)
{
    const struct config_billmgr_api *api = s->f->api;
    enum { V_NOTE, V_NAME, V_TYPE, V_DEADLINE, V_STATUS, V_N };
    const char *const fields[V_N] = {api->field_note, api->field_name, api->field_type,
                                     api->field_deadline, api->field_status};
    const char *v[V_N] = {NULL};
    int64_t id = s->cand[s->icand - 1];
    long status = 0;
    char why[128];

    if (forward_view_read(doc, id, fields, v, V_N, why, sizeof(why)) < 0) {
        slot_fail(s, RT_RETRY, FORWARD_DEAD_NONE,
                  "api: the view of task %" PRId64 " of department %ld %s", id,
                  s->client->department, why);
        return;
    }
    if (!notes_has_origin(v[V_NOTE], s->origin)) {
        slot_recover_next(s);
        return;
    }
    billmgr_long(doc, api->field_status, &status);
    s->link.dst_task = id;
    forward_seen_dst(s->f, s->client, s->link.dst_task);
    if (forward_adopt_applied(v[V_NAME], v[V_TYPE], v[V_DEADLINE], status, v[V_NOTE], s->origin,
                              &s->msg, s->link.applied, sizeof(s->link.applied)) < 0)
        s->link.applied[0] = '\0'; /* cannot happen with the fixed keys: resend all */
    slot_adopt(s);
}

/* Records the task found again (s->link) as the link's target. */
static void slot_adopt(struct forward_slot *s)
{
    rt_status st = slot_link_write(s, SLOT_WRITE_ADOPT);
    if (st != RT_OK) {
        slot_store_failed(s, st, FR_ADOPT);
        return;
    }
    s->f->stats.adopted++;
    slot_journal(s, JOURNAL_APPLIED, "adopted: the task an interrupted create made");
    log_info("found target task %" PRId64 " of the interrupted create of task %" PRId64
             " of client \"%s\"",
             s->link.dst_task, s->msg.task, s->client->id);
    slot_update(s);
}

/* The intent of an earlier note edit found in the link (slot_update), and
 * the target's note as it is now: which set to plan against, and the plan.
 *
 * The intent was written for seq P. The message in hand has seq M > the
 * link's last_seq; usually M == P (the same message redelivered), but a
 * newer one may come first, or an older one from a retry queue. When the
 * note shows P's edit landed, P is applied in full (one call wrote all its
 * fields and the note): the base is the set after it. M == P then plans
 * nothing (committed without a call); M > P plans only what M adds to P,
 * so P's block is never written again; M < P is older than what the
 * target holds: nothing is sent and the link records P as applied (P's
 * redelivery is then dropped as a duplicate). When it did not land, the
 * base is the set before P, and M is applied as if P never ran (for
 * M >= P that writes P's text too, once). Returns 0 when s->plan is made,
 * -1 when the slot failed. */
static int slot_plan_resolved(struct forward_slot *s, const char *note)
{
    char base[STORE_APPLIED_MAX + 1];
    uint64_t pseq = 0;

    s->pending = 0;
    s->landed = applier_pend_landed(s->link.applied, note, &pseq);
    if (applier_pend_base(s->link.applied, s->landed, base, sizeof(base)) < 0) {
        slot_fail(s, RT_RETRY, FORWARD_DEAD_NONE, "the applied set of the link is unreadable");
        return -1;
    }
    log_info("the note edit of seq %" PRIu64 " of task %" PRId64 " of client \"%s\" was "
             "interrupted and %s; applying seq %" PRIu64,
             pseq, s->msg.task, s->client->id, s->landed ? "had landed" : "had not landed",
             s->msg.seq);
    forward_plan_release(&s->plan);
    if (s->landed && pseq > s->msg.seq) {
        s->commit_seq = pseq;
        forward_copy(s->plan.applied, sizeof(s->plan.applied), base);
        return 0;
    }
    if (forward_plan_make(&s->msg, base, s->f->api->task_type[0] != '\0', &s->plan) < 0) {
        slot_fail(s, RT_RETRY, FORWARD_DEAD_NONE, "out of memory planning the update");
        return -1;
    }
    slot_log_stale(s);
    return 0;
}

/* The target viewed (its note as it is now): resolve an interrupted edit,
 * then append the block, committing the intent of that edit first. */
static void slot_target_viewed(struct forward_slot *s, const char *current)
{
    struct forward *f = s->f;

    if (s->pending) {
        if (slot_plan_resolved(s, current) < 0)
            return;
        if (forward_plan_empty(&s->plan)) {
            slot_commit(s, s->landed ? &f->stats.updated : &f->stats.unchanged,
                        s->landed ? "updated (before a restart)" : "nothing to change for");
            return;
        }
        if (!s->plan.block) {
            slot_edit(s, NULL);
            return;
        }
    }
    char *note = notes_append(current, s->origin, s->plan.block);
    if (!note) {
        slot_fail(s, RT_RETRY, FORWARD_DEAD_NONE, "out of memory building the note");
        return;
    }
    free(s->note);
    s->note = note;
    slot_pend_edit(s);
}

/* Commits the intent of the edit that writes s->note, then makes it. */
static void slot_pend_edit(struct forward_slot *s)
{
    s->pend_note = s->note;
    rt_status st = slot_link_write(s, SLOT_WRITE_PENDING);
    s->pend_note = NULL;
    if (st != RT_OK) {
        slot_store_failed(s, st, FR_PENDING);
        return;
    }
    slot_edit(s, s->note); /* the note stays the slot's until it is cleared */
}

static void forward_on_reply(void *arg, const struct billmgr_reply *r)
{
    struct forward_slot *s = arg;
    struct forward *f = s->f;
    char why[128];

    if (r->status == RT_OK)
        f->func_missing = 0;
    switch (s->state) {
    case FS_RECOVER_LIST:
        if (r->status != RT_OK) {
            slot_api_failed(s, "listing the department", r);
            return;
        }
        slot_listed(s, r->doc);
        return;
    case FS_RECOVER_VIEW:
        if (forward_missed_what(f, r) == FORWARD_MISSED_TASK) { /* deleted: not ours anyway */
            slot_recover_next(s);
            return;
        }
        if (r->status != RT_OK) {
            slot_api_failed(s, "viewing a task of the department", r);
            return;
        }
        slot_recover_viewed(s, r->doc);
        return;
    case FS_CREATE: {
        long id;
        if (r->status != RT_OK) {
            if (forward_create_not_made(r))
                slot_no_create(s);
            slot_api_failed(s, "creating the task", r);
            return;
        }
        if (billmgr_long(r->doc, "id", &id) < 0 || id <= 0) {
            /* It may exist: the retry looks for it by its origin block. */
            const char *text;
            int got = billmgr_text_field(r->doc, "id", &text);
            slot_fail(s, RT_RETRY, FORWARD_DEAD_NONE, "api: the create answered without an id%s",
                      got < 0    ? " (its id is not text)"
                      : got == 0 ? ""
                                 : " (its id is not a task id)");
            return;
        }
        s->link.dst_task = id;
        forward_seen_dst(f, s->client, id);
        log_info("created target task %ld for task %" PRId64 " of client \"%s\"", id, s->msg.task,
                 s->client->id);
        slot_commit(s, &f->stats.created, "created");
        return;
    }
    case FS_VIEW_TARGET: {
        if (forward_missed_what(f, r) == FORWARD_MISSED_TASK) {
            slot_recreate(s);
            return;
        }
        if (r->status != RT_OK) {
            slot_api_failed(s, "viewing the target task", r);
            return;
        }
        /* An unreadable note read as empty would be overwritten with the
         * new block alone, and what target staff wrote with it. */
        const char *const field[1] = {f->api->field_note};
        const char *note = NULL;
        if (forward_view_read(r->doc, s->link.dst_task, field, &note, 1, why, sizeof(why)) < 0) {
            slot_fail(s, RT_RETRY, FORWARD_DEAD_NONE, "api: the view of target task %" PRId64 " %s",
                      s->link.dst_task, why);
            return;
        }
        slot_target_viewed(s, note);
        return;
    }
    case FS_EDIT:
        if (forward_missed_what(f, r) == FORWARD_MISSED_TASK) {
            slot_recreate(s);
            return;
        }
        if (r->status != RT_OK) {
            slot_api_failed(s, "changing the target task", r);
            return;
        }
        slot_commit(s, &f->stats.updated, "updated");
        return;
    default:
        /* Not waiting for a call: cannot happen, every call has one state. */
        log_error("API answer for task %" PRId64 " of client \"%s\" in an unexpected state %d",
                  s->msg.task, s->client ? s->client->id : "", (int)s->state);
        return;
    }
}

/* LINK_LOOKUP: what was applied decides the path. */
static void slot_start(struct forward_slot *s)
{
    struct forward *f = s->f;

    s->state = FS_LINK_LOOKUP;
    rt_status st = store_link_get(f->st, s->client->id, s->msg.task, &s->link);
    if (st != RT_OK) {
        slot_store_failed(s, st, FR_START);
        return;
    }
    if (forward_seq_jump(s, &s->link))
        return;
    if (s->link.found && s->link.dst_task > 0 && s->link.last_seq >= s->msg.seq) {
        f->stats.duplicates++;
        log_debug("dropped seq %" PRIu64 " of task %" PRId64 " of client \"%s\": seq %" PRIu64
                  " is applied",
                  s->msg.seq, s->msg.task, s->client->id, s->link.last_seq);
        slot_journal(s, JOURNAL_DROPPED, "duplicate: seq %" PRIu64 " is applied", s->link.last_seq);
        slot_ack(s);
        return;
    }
    if (s->link.found && s->link.dst_task > 0) {
        forward_seen_dst(f, s->client, s->link.dst_task);
        slot_update(s);
        return;
    }
    if (s->link.found && fp_set_get_int(s->link.applied, FORWARD_KEY_CREATING, 1) != 0) {
        /* dst_task 0: a create was started and never committed; it may
         * have made the task. Only a task made after the intent can be
         * it, and its id is above every id known then: listing the
         * department costs its pages, but only those rows are viewed. */
        s->after = fp_set_get_int(s->link.applied, FORWARD_KEY_AFTER, 0);
        s->page = 1;
        s->seen = 0;
        s->list_done = 0;
        slot_list_page(s);
        return;
    }
    if ((st = slot_link_write(s, SLOT_WRITE_INTENT)) != RT_OK) {
        slot_store_failed(s, st, FR_START);
        return;
    }
    slot_create(s);
}

/* A valid sync request: handed to the hook (which only queues a cycle),
 * then acked. Without a hook nothing could answer it; the client's
 * checkevent then times out, which tells its operator more than a dead
 * letter would. */
static void forward_sync(struct forward *f, struct forward_slot *s)
{
    f->stats.syncs++;
    if (f->sync_hook) {
        log_info("sync request \"%s\" of client \"%s\" received", s->msg.sync.id, s->client->id);
        f->sync_hook(f->sync_arg, s->client->id, s->msg.sync.id);
    } else {
        log_warning("sync request \"%s\" of client \"%s\" ignored: nothing here publishes "
                    "task states",
                    s->msg.sync.id, s->client->id);
    }
    applier_ack(s->as);
}

void forward_on_delivery(struct forward *f, const struct broker_delivery *d)
{
    char err[FORWARD_REASON_MAX];

    struct applier_slot *as = applier_take(f->ap, d, f->cfg->amqp.user);
    if (!as)
        return; /* left to the broker or requeued */
    struct forward_slot *s = as->priv;
    s->f = f;
    s->as = as;
    s->state = FS_LINK_LOOKUP;
    s->client = forward_queue_client(f->cfg, as->queue);
    if (!s->client) {
        /* Not a queue this applier consumes: there is no client to route a
         * dead letter to, and requeueing would loop. */
        log_error("message from unexpected queue \"%s\" rejected", as->queue);
        applier_discard(as);
        return;
    }
    forward_copy(as->client, sizeof(as->client), s->client->id);
    if (as->too_big) {
        slot_fail(s, RT_REJECT, FORWARD_DEAD_UNDECODABLE,
                  "undecodable: body of %zu bytes is over the cap", as->len);
        return;
    }
    if (codec_decode(as->body, as->len, &s->msg, err, sizeof(err)) != RT_OK) {
        slot_fail(s, RT_REJECT, FORWARD_DEAD_UNDECODABLE, "undecodable: %s", err);
        return;
    }
    as->task = s->msg.task;
    const struct config_server_client *c;
    enum forward_dead_kind kind =
        forward_check(f->cfg, as->queue, d->user_id, f->cfg->amqp.user,
                      broker_delivery_header_str(d, "x-rt-user"), &s->msg, &c, err, sizeof(err));
    if (kind != FORWARD_DEAD_NONE) {
        slot_fail(s, RT_REJECT, kind, "%s", err);
        return;
    }
    if (s->msg.kind == CODEC_SYNC) {
        forward_sync(f, s);
        return;
    }
    if (as->attempts)
        slot_journal(s, JOURNAL_RECEIVED, "from \"%s\", attempt %" PRId64, as->user,
                     as->attempts + 1);
    else
        slot_journal(s, JOURNAL_RECEIVED, "from \"%s\"", as->user);
    if (s->msg.kind == CODEC_TASK && forward_seq_invalid(f, s))
        return;
    s->decoded = 1;
    notes_origin_forward(s->origin, sizeof(s->origin), s->client->id, s->msg.task);
    log_debug("message %s: seq %" PRIu64 " of task %" PRId64 " of client \"%s\"",
              as->message_id[0] ? as->message_id : "without id", s->msg.seq, s->msg.task,
              s->client->id);
    applier_schedule(as, s->msg.task, s->msg.seq);
}

void forward_on_confirm(struct forward *f, uint64_t tag, enum broker_fate fate)
{
    if (f)
        applier_on_confirm(f->ap, tag, fate);
}

void forward_on_connected(struct forward *f)
{
    if (!f)
        return;
    applier_on_connected(f->ap);
    if (applier_draining(f->ap))
        return;
    for (size_t i = 0; i < f->cfg->server.n_clients; i++) {
        char queue[BROKER_NAME_MAX];
        const char *id = f->cfg->server.clients[i].id;
        if (broker_queue_name(queue, sizeof(queue), BROKER_FORWARD, id) < 0) {
            log_error("client id \"%s\" cannot name a queue", id);
            continue;
        }
        rt_status st = broker_consume(f->br, queue);
        if (st != RT_OK) {
            log_error("cannot consume queue \"%s\": %s", queue, broker_strerror(f->br));
            return; /* the connection is closed: the bridge reconnects */
        }
        log_info("consuming queue \"%s\"", queue);
    }
}

int64_t forward_tick(struct forward *f, int64_t now_ms)
{
    return applier_tick(f->ap, now_ms);
}

void forward_drain(struct forward *f)
{
    if (f)
        applier_drain(f->ap);
}

int forward_idle(const struct forward *f)
{
    return !f || applier_idle(f->ap);
}

void forward_set_sync_hook(struct forward *f, forward_sync_fn hook, void *arg)
{
    f->sync_hook = hook;
    f->sync_arg = arg;
}

void forward_set_applied_hook(struct forward *f, forward_applied_fn hook, void *arg)
{
    f->applied_hook = hook;
    f->applied_arg = arg;
}

size_t forward_unacked(const struct forward *f, const char *queue)
{
    size_t n = 0;
    if (!f)
        return 0;
    for (size_t i = 0; i < applier_count(f->ap); i++) {
        const struct applier_slot *as = applier_slot_at(f->ap, i);
        if (as && as->phase != APPLIER_FREE && !applier_stale(as) && strcmp(as->queue, queue) == 0)
            n++;
    }
    return n;
}

void forward_stats(const struct forward *f, struct forward_stats *out)
{
    struct applier_stats a;

    memset(out, 0, sizeof(*out));
    if (!f)
        return;
    *out = f->stats;
    applier_stats(f->ap, &a);
    out->deliveries = a.deliveries;
    out->duplicates += a.duplicates;
    out->superseded = a.superseded;
    out->retried = a.retried;
    out->dead = a.dead;
    out->requeued = a.requeued;
    out->redelivered = a.redelivered;
    out->deferred = a.deferred;
    out->republished = a.republished;
    out->busy = a.busy;
    out->running = a.running;
}

/* applier callbacks: the slot's turn, what to free, a dead letter's kind. */
static void forward_slot_start(void *owner, struct applier_slot *as)
{
    (void)owner;
    slot_start(as->priv);
}

/* A slot whose store step failed for now: that step again. */
static void forward_slot_resume(void *owner, struct applier_slot *as)
{
    struct forward_slot *s = as->priv;
    (void)owner;
    switch (s->resume) {
    case FR_START: slot_start(s); return;
    case FR_PENDING: slot_pend_edit(s); return;
    case FR_ADOPT: slot_adopt(s); return;
    case FR_LIST: slot_list_page(s); return;
    case FR_RECREATE: slot_create_intent(s); return;
    case FR_COMMIT: slot_commit(s, s->commit_counter, s->commit_what); return;
    }
}

static void forward_slot_clear(void *owner, struct applier_slot *as)
{
    struct forward_slot *s = as->priv;
    (void)owner;
    codec_msg_release(&s->msg);
    forward_plan_release(&s->plan);
    free(s->cand);
    free(s->note);
}

static void forward_slot_dead(void *owner, const struct applier_slot *as)
{
    struct forward *f = owner;
    switch ((enum forward_dead_kind)as->dead_kind) {
    case FORWARD_DEAD_UNDECODABLE: f->stats.dead_undecodable++; break;
    case FORWARD_DEAD_UNAUTHORIZED: f->stats.dead_unauthorized++; break;
    case FORWARD_DEAD_DEPARTMENT: f->stats.dead_department++; break;
    case FORWARD_DEAD_SEQ: f->stats.dead_seq++; break;
    default: f->stats.dead_api++; break;
    }
}

/* What the applier tells of a delivery, into the task's journal. */
static void forward_slot_journal(void *owner, const struct applier_slot *as, const char *event,
                                 const char *detail)
{
    const struct forward_slot *s = as->priv;
    struct forward *f = owner;
    store_journal_add(f->st, 0, STORE_SIDE_SERVER, s->client ? s->client->id : as->client, as->task,
                      s->link.dst_task, event, s->msg.seq, "%s", detail);
}

static const struct applier_ops forward_ops = {
    .start = forward_slot_start,
    .resume = forward_slot_resume,
    .clear = forward_slot_clear,
    .dead = forward_slot_dead,
    .released = NULL,
    .journal = forward_slot_journal,
};

struct forward *forward_new(const struct config *cfg, struct store *st, struct billmgr *bm,
                            struct broker *br, char *err, size_t errlen)
{
    struct forward *f;

    if (!cfg || !st || !bm || !br) {
        snprintf(err, errlen, "forward applier: missing config, store, billmgr or broker");
        return NULL;
    }
    if (!cfg->server.enabled || cfg->server.n_clients == 0) {
        snprintf(err, errlen, "forward applier: the configuration has no server clients");
        return NULL;
    }
    f = calloc(1, sizeof(*f));
    if (!f)
        goto fail;
    f->cfg = cfg;
    f->st = st;
    f->bm = bm;
    f->br = br;
    f->api = &cfg->billmanager.api;
    f->max_dst = calloc(cfg->server.n_clients, sizeof(*f->max_dst));
    f->max_known = calloc(cfg->server.n_clients, sizeof(*f->max_known));
    if (!f->max_dst || !f->max_known)
        goto fail;
    /* basic.qos is per consumer: prefetch deliveries of each client's
     * queue, plus the slots of an earlier connection still in an API call
     * (at most max_inflight are). */
    int inflight = cfg->billmanager.max_inflight > 0 ? cfg->billmanager.max_inflight : 1;
    size_t max_slots = applier_slots_for(cfg->amqp.prefetch, cfg->server.n_clients, inflight);
    f->ap = applier_new(br, BROKER_FORWARD, max_slots, (size_t)inflight,
                        sizeof(struct forward_slot), &forward_ops, f);
    if (!f->ap || applier_set_store(f->ap, st) != RT_OK)
        goto fail;
    return f;
fail:
    snprintf(err, errlen, "forward applier: out of memory");
    forward_free(f);
    return NULL;
}

void forward_free(struct forward *f)
{
    if (!f)
        return;
    applier_free(f->ap);
    free(f->max_dst);
    free(f->max_known);
    free(f);
}
