/*
 * forward_plan.c - the forward applier's message checks and edit plan
 * (forward.h, "pure helpers"): who may send a task message into which
 * queue, what an update must send against the applied fp set, and the fp
 * set of a task found again after an interrupted create (what a link
 * keeps of the reverse publisher's keys is common/linkset.c's). Pure
 * functions of a message, the configuration and fp sets: no store, no
 * API, no broker.
 */
#include "forward.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "applier.h"
#include "forward_int.h"
#include "fp.h"
#include "linkset.h"
#include "notes.h"

/* ---- message checks ---------------------------------------------------- */

const struct config_server_client *forward_queue_client(const struct config *cfg, const char *queue)
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

/* ---- the plan of an update -------------------------------------------- */

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
 * itself (LINKSET_LINK_REV_PUB; states that only moved the performer or the
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
 * LINKSET_LINK_REV_PUB is a link no state was confirmed for: the message's
 * status is then compared with the known one as before. */
static int forward_plan_status(const struct codec_msg *m, const char *applied,
                               struct forward_plan *plan)
{
    int64_t known = fp_set_get_int(applied, LINKSET_LINK_STATUS, -1);
    int64_t rev_pub = fp_set_get_int(applied, LINKSET_LINK_REV_PUB, 0);
    int64_t record = m->fwd.status;

    plan->stale =
        m->fwd.rev_seq != 0 && rev_pub > 0 && m->fwd.rev_seq < (uint64_t)rev_pub && known >= 0;
    if (plan->stale)
        record = known;
    else
        plan->status = known != m->fwd.status;
    return fp_set_put_int(plan->applied, sizeof(plan->applied), LINKSET_LINK_STATUS, record);
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

    if ((r = forward_plan_field(applied, LINKSET_LINK_NAME, m->fwd.name, plan->applied,
                                sizeof(plan->applied))) < 0)
        goto fail;
    plan->name = r;
    if ((r = forward_plan_field(applied, LINKSET_LINK_TYPE, m->fwd.type, plan->applied,
                                sizeof(plan->applied))) < 0)
        goto fail;
    plan->type = r && !fixed_type;
    if ((r = forward_plan_field(applied, LINKSET_LINK_DEADLINE, m->fwd.deadline, plan->applied,
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
    size_t applied_len = (size_t)fp_set_get_int(applied, LINKSET_LINK_NOTE_LEN, 0);
    fp_set_get(applied, LINKSET_LINK_NOTE_FP, applied_fp, sizeof(applied_fp));
    size_t off = notes_new_part(native, applied_len, applied_fp, &edited);
    const char *text = native + off;
    size_t native_len = strlen(native);
    fp_of_mem(native, native_len, fp);
    if (fp_set_put_int(plan->applied, sizeof(plan->applied), LINKSET_LINK_NOTE_LEN,
                       (int64_t)native_len) < 0 ||
        fp_set_put(plan->applied, sizeof(plan->applied), LINKSET_LINK_NOTE_FP, fp) < 0)
        goto fail;

    fp_of_str(about, fp);
    int about_changed =
        fp_set_get(applied, LINKSET_LINK_ABOUT, was, sizeof(was)) < 0 || strcmp(fp, was) != 0;
    if (fp_set_put(plan->applied, sizeof(plan->applied), LINKSET_LINK_ABOUT, fp) < 0)
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

/* ---- a task found again, and what a link keeps ------------------------ */

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
    if (fp_set_put(out, outlen, LINKSET_LINK_NAME, fp) < 0)
        goto done;
    fp_of_str(type, fp);
    if (fp_set_put(out, outlen, LINKSET_LINK_TYPE, fp) < 0)
        goto done;
    fp_of_str(deadline, fp);
    if (fp_set_put(out, outlen, LINKSET_LINK_DEADLINE, fp) < 0)
        goto done;
    if (fp_set_put_int(out, outlen, LINKSET_LINK_STATUS, status) < 0)
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
    if (fp_set_put(out, outlen, LINKSET_LINK_ABOUT, fp) < 0)
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
    if (fp_set_put_int(out, outlen, LINKSET_LINK_NOTE_LEN, (int64_t)note_len) < 0 ||
        fp_set_put(out, outlen, LINKSET_LINK_NOTE_FP, fp) < 0)
        goto done;
    rc = 0;
done:
    free(native);
    return rc;
}
