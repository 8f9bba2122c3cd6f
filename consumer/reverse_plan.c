/*
 * reverse_plan.c - the reverse applier's message checks and the plan of a
 * state (reverse.h, "pure helpers"): who may send a state into this
 * client's queue, the performer mapping, and what applying a state must
 * change on the source task against the applied fp set: its status (only
 * a change made on the target), its performer, a block of the remote
 * note text. Pure functions of a message, the configuration and fp sets:
 * no store, no API, no broker.
 */
#include "reverse.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "applier.h"
#include "fp.h"
#include "linkset.h"
#include "notes.h"
#include "reverse_int.h"

/* ---- message checks ---------------------------------------------------- */

enum reverse_dead_kind reverse_check(const struct config *cfg, const char *queue,
                                     const char *user_id, const char *own_user,
                                     const char *relayed_user, const struct codec_msg *m,
                                     char *reason, size_t reasonlen)
{
    char mine[BROKER_NAME_MAX];
    const char *id = cfg->client.id ? cfg->client.id : "";
    const char *server = cfg->client.server_user ? cfg->client.server_user : "";
    const char *sender = applier_sender(user_id, own_user, relayed_user);

    if (reasonlen)
        reason[0] = '\0';
    if (broker_queue_name(mine, sizeof(mine), BROKER_REVERSE, id) < 0 || !queue ||
        strcmp(queue, mine) != 0) {
        snprintf(reason, reasonlen, "queue \"%s\" is not the reverse queue of client %s",
                 queue ? queue : "", id);
        return REVERSE_DEAD_UNAUTHORIZED;
    }
    if (m->kind != CODEC_STATE && m->kind != CODEC_SYNC_DONE) {
        snprintf(reason, reasonlen, "unexpected kind \"%s\"", codec_kind_name(m->kind));
        return REVERSE_DEAD_UNDECODABLE;
    }
    if (!m->client || strcmp(m->client, id) != 0) {
        snprintf(reason, reasonlen, "client \"%s\" of the message is not this client (%s)",
                 m->client ? m->client : "", id);
        return REVERSE_DEAD_UNAUTHORIZED;
    }
    /* The configuration requires server_user; without one no sender is
     * trusted, rather than every one. */
    if (!*server || strcmp(sender, server) != 0) {
        snprintf(reason, reasonlen, "user_id \"%s\" is not the AMQP user of the server side",
                 sender);
        return REVERSE_DEAD_UNAUTHORIZED;
    }
    return REVERSE_DEAD_NONE;
}

long reverse_performer_local(const struct config *cfg, int64_t remote)
{
    if (remote <= 0)
        return 0;
    for (size_t i = 0; i < cfg->client.n_performers; i++)
        if (cfg->client.performers[i].remote == remote)
            return cfg->client.performers[i].local;
    return 0;
}

/* ---- the plan of a state ---------------------------------------------- */

void reverse_plan_release(struct reverse_plan *plan)
{
    if (!plan)
        return;
    free(plan->block);
    memset(plan, 0, sizeof(*plan));
}

int reverse_plan_empty(const struct reverse_plan *plan)
{
    return !plan->status && !plan->performer && !plan->block;
}

int reverse_plan_needs_view(const struct reverse_plan *plan)
{
    /* A status is planned only against a known one (reverse_plan_status),
     * so only the performer of a first state needs the task as it is. */
    return plan->block || (plan->verify && plan->performer);
}

void reverse_plan_verify(struct reverse_plan *plan, long status, long performer)
{
    if (plan->status && status == plan->status_value)
        plan->status = 0;
    if (plan->performer && performer == plan->performer_local)
        plan->performer = 0;
    plan->verify = 0;
}

/* The remote native text: the state's notes joined (the server sends one
 * entry, the whole text), with any block removed again so that a forged
 * origin header never reaches the source note. NULL when memory ran out. */
static char *reverse_native(const struct codec_msg *m)
{
    struct buf joined;
    char *native;

    buf_init(&joined, (size_t)CODEC_MAX_NOTES * (CODEC_MAX_NOTE_ENTRY + 1));
    if (buf_append(&joined, "", 0) < 0)
        return NULL;
    for (size_t i = 0; i < m->state.nnotes; i++) {
        if ((i && buf_append_str(&joined, "\n") < 0) ||
            buf_append_str(&joined, m->state.notes[i] ? m->state.notes[i] : "") < 0) {
            buf_release(&joined);
            return NULL;
        }
    }
    native = notes_native(buf_cstr(&joined));
    buf_release(&joined);
    return native;
}

/* The performer part of a plan: what to send, and the line for the block
 * when the remote performer cannot be mapped (a malloc'd string, "" for
 * none; NULL when memory ran out). */
static char *reverse_plan_performer(const struct config *cfg, const struct codec_msg *m,
                                    const char *applied, struct reverse_plan *plan)
{
    char now[FP_HEX_LEN + 1], was[FP_HEX_LEN + 1];
    const char *name = m->state.performer ? m->state.performer : "";
    int64_t remote = m->state.performer_id;
    int64_t prev = fp_set_get_int(applied, LINKSET_REV_PERFORMER, 0);
    long set_by_us = (long)fp_set_get_int(applied, LINKSET_REV_PLOCAL, 0);
    long local = reverse_performer_local(cfg, remote);
    char *line = NULL;

    fp_of_str(name, now);
    if (fp_set_get(applied, LINKSET_REV_PNAME, was, sizeof(was)) < 0)
        fp_of_str("", was); /* nothing applied yet: as if there was no performer */
    int changed = remote != prev || strcmp(now, was) != 0;

    if (!changed) {
        line = strdup("");
    } else if (local > 0) {
        /* A mapped staff member: set it, unless it is the one set already. */
        if (local != set_by_us || plan->verify) {
            plan->performer = 1;
            plan->performer_local = local;
        }
        set_by_us = local;
        line = strdup("");
    } else if (remote == 0) {
        if (set_by_us > 0) {
            /* We set the performer: the remote side has none now, nor do we. */
            plan->performer = 1;
            plan->performer_local = 0;
            set_by_us = 0;
            line = strdup("");
        } else {
            line = strdup(prev > 0 ? REVERSE_NO_PERFORMER_LINE : "");
        }
    } else {
        /* Never guess a local staff member: say who it is, in the note. */
        size_t n = strlen(REVERSE_PERFORMER_LINE) + strlen(name) + 32;
        line = malloc(n);
        if (line) {
            if (*name)
                snprintf(line, n, "%s%s", REVERSE_PERFORMER_LINE, name);
            else
                snprintf(line, n, "%sstaff member %" PRId64, REVERSE_PERFORMER_LINE, remote);
            for (char *p = line; *p; p++) /* it must stay one line */
                if (*p == '\n' || *p == '\r')
                    *p = ' ';
        }
    }
    if (fp_set_put_int(plan->applied, sizeof(plan->applied), LINKSET_REV_PERFORMER, remote) < 0 ||
        fp_set_put(plan->applied, sizeof(plan->applied), LINKSET_REV_PNAME, now) < 0 ||
        fp_set_put_int(plan->applied, sizeof(plan->applied), LINKSET_REV_PLOCAL, set_by_us) < 0) {
        free(line);
        return NULL;
    }
    return line;
}

/* The status part of a plan: whether the state's status is a change made
 * on the target, and the status the client then knows the target has.
 *
 * Key "status" of the set is that known status: the status of the last
 * task message the relay had confirmed (producer/relay_slot.c records it in the
 * same transaction) or of the last state applied here, whichever came
 * last. A state's status is a change made on the target only when
 *
 *  1. the server had applied the client's last confirmed task message that
 *     changed the status it forwarded (state fwd_seq >= the set's
 *     LINKSET_REV_STATUS_SEQ, which the relay records; fwd_confirmed, the
 *     last confirmed message, for a row written before that key): an
 *     older state shows the target before the client's own status change
 *     reached it, and writing it back would undo that change on the source
 *     (an operator closes a task while the client is down; the first state
 *     after the restart still says "open"). A state that missed only
 *     messages that forwarded the same status (a rename, a line of note;
 *     one the server dead-lettered) cannot undo a status change of the
 *     source, so the target's own change goes through at once. fwd_seq 0
 *     comes from a server that does not say: only rule 2 can be applied
 *     then;
 *  2. it differs from the known status: the same status is the target
 *     merely holding what the client forwarded, or what was applied here.
 *
 * With no known status at all (a task forwarded before the relay recorded
 * it) the first state cannot tell an echo from a change: it is recorded as
 * the baseline and not written. A stale state records nothing: the known
 * status stays what the relay forwarded.
 *
 * Why this cannot ping-pong: each side writes only what the other side
 * changed. The client writes a status here only when it differs from what
 * it knows the target has, i.e. when target staff changed it, and records
 * it as known; the relay then forwards the source's status (now the same),
 * which the forward applier compares with the status statepub published
 * and does not write. The server publishes a state only when the target's
 * state fingerprint moved; the forward applier's own status write makes the
 * next state carry the status the client forwarded (and its fwd_seq), which
 * rule 2 finds equal to the known status. So a value crosses at most once
 * each way per change, and a stale copy is never applied: rule 1 drops it. */
static int reverse_plan_status(const struct codec_msg *m, const char *applied,
                               uint64_t fwd_confirmed, struct reverse_plan *plan)
{
    int64_t known = fp_set_get_int(applied, LINKSET_REV_STATUS, -1);
    int64_t sseq = fp_set_get_int(applied, LINKSET_REV_STATUS_SEQ, -1);
    uint64_t need = sseq >= 0 && (uint64_t)sseq <= fwd_confirmed ? (uint64_t)sseq : fwd_confirmed;
    int fresh = m->state.fwd_seq == 0 || m->state.fwd_seq >= need;
    int64_t record = known;

    plan->status_value = m->state.status;
    if (known < 0 || known > 2)
        known = -1;
    if (!fresh) {
        plan->stale = 1;
    } else if (known < 0) {
        record = m->state.status; /* the baseline */
    } else if (known != m->state.status) {
        plan->status = 1;
        record = m->state.status;
    }
    if (record >= 0 && record <= 2 &&
        fp_set_put_int(plan->applied, sizeof(plan->applied), LINKSET_REV_STATUS, record) < 0)
        return -1;
    /* The relay's key stays as the relay wrote it. */
    if (sseq >= 0 &&
        fp_set_put_int(plan->applied, sizeof(plan->applied), LINKSET_REV_STATUS_SEQ, sseq) < 0)
        return -1;
    return 0;
}

int reverse_plan_make(const struct config *cfg, const struct codec_msg *m, const char *applied,
                      uint64_t fwd_confirmed, struct reverse_plan *plan)
{
    char *native = NULL, *line = NULL;
    char fp[FP_HEX_LEN + 1], applied_fp[FP_HEX_LEN + 1];
    struct buf block;
    int edited;

    memset(plan, 0, sizeof(*plan));
    buf_init(&block,
             (size_t)CODEC_MAX_NOTES * (CODEC_MAX_NOTE_ENTRY + 1) + CODEC_MAX_PERFORMER + 64);
    applied = applied ? applied : "";

    /* The first state of the task: the performer part is compared with the
     * task as viewed ("pname" is written with every state applied; the
     * relay writes only "status"). */
    plan->verify = fp_set_get(applied, LINKSET_REV_PNAME, fp, sizeof(fp)) < 0;
    if (reverse_plan_status(m, applied, fwd_confirmed, plan) < 0)
        goto fail;

    if (!(line = reverse_plan_performer(cfg, m, applied, plan)))
        goto fail;

    if (!(native = reverse_native(m)))
        goto fail;
    size_t applied_len = (size_t)fp_set_get_int(applied, LINKSET_REV_NOTES_LEN, 0);
    fp_set_get(applied, LINKSET_REV_NOTES_FP, applied_fp, sizeof(applied_fp));
    size_t off = notes_new_part(native, applied_len, applied_fp, &edited);
    const char *text = native + off;
    plan->notes_len = strlen(native);
    fp_of_mem(native, plan->notes_len, fp);
    if (fp_set_put_int(plan->applied, sizeof(plan->applied), LINKSET_REV_NOTES_LEN,
                       (int64_t)plan->notes_len) < 0 ||
        fp_set_put(plan->applied, sizeof(plan->applied), LINKSET_REV_NOTES_FP, fp) < 0)
        goto fail;

    if (*line) {
        if (buf_printf(&block, "%s\n", line) < 0)
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
    free(line);
    return 0;
fail:
    buf_release(&block);
    free(native);
    free(line);
    reverse_plan_release(plan);
    return -1;
}
