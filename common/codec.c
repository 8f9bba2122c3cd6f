/*
 * codec.c - the message: kinds and their wire names, a message's lifecycle,
 * equality, and the reasons every part of the codec gives. The checks are
 * in codec_check.c, the encoder in codec_enc.c, the decoder in codec_dec.c
 * (codec_int.h says what they share).
 */
#include "codec.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec_int.h"

void codec_fail(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static const char *const codec_kind_names[] = {
    [CODEC_TASK] = "task",
    [CODEC_STATE] = "state",
    [CODEC_SYNC] = "sync",
    [CODEC_SYNC_DONE] = "sync_done",
};
int codec_kind_valid(enum codec_kind kind)
{
    return kind >= CODEC_TASK && kind <= CODEC_SYNC_DONE;
}

const char *codec_kind_name(enum codec_kind kind)
{
    return codec_kind_valid(kind) ? codec_kind_names[kind] : "unknown";
}

int codec_kind_parse(const char *name, enum codec_kind *out)
{
    if (!name)
        return -1;
    for (int k = CODEC_TASK; k <= CODEC_SYNC_DONE; k++) {
        if (strcmp(name, codec_kind_names[k]) == 0) {
            *out = (enum codec_kind)k;
            return 0;
        }
    }
    return -1;
}

void codec_msg_init(struct codec_msg *m, enum codec_kind kind)
{
    memset(m, 0, sizeof(*m));
    m->v = CODEC_VERSION;
    m->kind = kind;
}

void codec_msg_release(struct codec_msg *m)
{
    if (!m)
        return;
    free(m->client);
    free(m->fwd.name);
    free(m->fwd.type);
    free(m->fwd.note);
    free(m->fwd.deadline);
    free(m->fwd.item);
    free(m->fwd.account);
    free(m->state.performer);
    if (m->state.notes) {
        for (size_t i = 0; i < m->state.nnotes; i++)
            free(m->state.notes[i]);
        free(m->state.notes);
    }
    free(m->sync.id);
    memset(m, 0, sizeof(*m));
}

/* "key "name"" or "key "notes" entry 3", for error messages. */
void codec_label(char *out, size_t outlen, const char *key, size_t idx)
{
    if (idx == SIZE_MAX)
        snprintf(out, outlen, "key \"%s\"", key);
    else
        snprintf(out, outlen, "key \"%s\" entry %zu", key, idx);
}

static int codec_streq(const char *a, const char *b)
{
    return strcmp(a ? a : "", b ? b : "") == 0;
}

int codec_msg_equal(const struct codec_msg *a, const struct codec_msg *b)
{
    if (a->kind != b->kind || !codec_streq(a->client, b->client) || a->task != b->task ||
        a->seq != b->seq || a->ts != b->ts)
        return 0;
    switch (a->kind) {
    case CODEC_TASK:
        return a->fwd.department == b->fwd.department && a->fwd.status == b->fwd.status &&
               a->fwd.rev_seq == b->fwd.rev_seq && codec_streq(a->fwd.name, b->fwd.name) &&
               codec_streq(a->fwd.type, b->fwd.type) && codec_streq(a->fwd.note, b->fwd.note) &&
               codec_streq(a->fwd.deadline, b->fwd.deadline) &&
               codec_streq(a->fwd.item, b->fwd.item) && codec_streq(a->fwd.account, b->fwd.account);
    case CODEC_STATE:
        if (a->state.status != b->state.status || a->state.performer_id != b->state.performer_id ||
            a->state.fwd_seq != b->state.fwd_seq ||
            !codec_streq(a->state.performer, b->state.performer) ||
            a->state.nnotes != b->state.nnotes)
            return 0;
        for (size_t i = 0; i < a->state.nnotes; i++) {
            if (!codec_streq(a->state.notes[i], b->state.notes[i]))
                return 0;
        }
        return 1;
    case CODEC_SYNC: return codec_streq(a->sync.id, b->sync.id);
    case CODEC_SYNC_DONE:
        return codec_streq(a->sync.id, b->sync.id) && a->sync.count == b->sync.count;
    }
    return 1;
}
