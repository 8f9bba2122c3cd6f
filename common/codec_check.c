/*
 * codec_check.c - the rules on the values of a message: ranges, caps,
 * required text, UTF-8, the deadline's format. The encoder runs them before
 * packing and the decoder after reading (codec_int.h), so that what one
 * accepts the other accepts too.
 */
#include <inttypes.h>
#include <stdint.h>
#include <string.h>

#include "codec_int.h"

/* Returns the offset of the first byte that breaks UTF-8, or len when the
 * text is valid. Overlong forms, surrogates and code points past U+10FFFF
 * are invalid, as RFC 3629 says: BILLmanager stores UTF-8 and a byte
 * string that only looks like it would be mangled or refused there. */
static size_t codec_utf8_bad(const unsigned char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i];
        size_t n;
        unsigned lo = 0x80, hi = 0xbf;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xc2 && c <= 0xdf) {
            n = 1;
        } else if (c >= 0xe0 && c <= 0xef) {
            n = 2;
            if (c == 0xe0)
                lo = 0xa0;
            else if (c == 0xed)
                hi = 0x9f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 3;
            if (c == 0xf0)
                lo = 0x90;
            else if (c == 0xf4)
                hi = 0x8f;
        } else {
            return i;
        }
        if (len - i - 1 < n)
            return i;
        /* Only the first continuation byte has the narrowed range. */
        if (s[i + 1] < lo || s[i + 1] > hi)
            return i;
        for (size_t k = 2; k <= n; k++) {
            if (s[i + k] < 0x80 || s[i + k] > 0xbf)
                return i;
        }
        i += n + 1;
    }
    return len;
}

/* Checks one text field: the cap, non-empty when required, UTF-8. NULL
 * reads as "". */
static int codec_check_text(const char *key, size_t idx, const char *s, size_t cap, int required,
                            char *err, size_t errlen)
{
    char label[64];
    size_t len = s ? strlen(s) : 0;

    if (len == 0 && required) {
        codec_label(label, sizeof(label), key, idx);
        codec_fail(err, errlen, "%s is empty", label);
        return -1;
    }
    if (len > cap) {
        codec_label(label, sizeof(label), key, idx);
        codec_fail(err, errlen, "%s is %zu bytes, cap %zu", label, len, cap);
        return -1;
    }
    size_t bad = codec_utf8_bad((const unsigned char *)s, len);
    if (bad != len) {
        codec_label(label, sizeof(label), key, idx);
        codec_fail(err, errlen, "%s is not valid UTF-8 (byte %zu)", label, bad);
        return -1;
    }
    return 0;
}

static int codec_digits(const char *s, int from, int n)
{
    int v = 0;
    for (int i = from; i < from + n; i++)
        v = v * 10 + (s[i] - '0');
    return v;
}

/* "" or "YYYY-MM-DD HH:MM:SS" with plausible fields: the format the target
 * API takes. Calendar details (30 February) are left to that API. */
static int codec_deadline_ok(const char *s)
{
    static const char pattern[] = "dddd-dd-dd dd:dd:dd";

    if (!s || !*s)
        return 1;
    if (strlen(s) != sizeof(pattern) - 1)
        return 0;
    for (size_t i = 0; i < sizeof(pattern) - 1; i++) {
        if (pattern[i] == 'd') {
            if (s[i] < '0' || s[i] > '9')
                return 0;
        } else if (s[i] != pattern[i]) {
            return 0;
        }
    }
    int month = codec_digits(s, 5, 2), day = codec_digits(s, 8, 2);
    int hour = codec_digits(s, 11, 2), min = codec_digits(s, 14, 2);
    int sec = codec_digits(s, 17, 2);
    return month >= 1 && month <= 12 && day >= 1 && day <= 31 && hour <= 23 && min <= 59 &&
           sec <= 59;
}

static int codec_check_status(int status, char *err, size_t errlen)
{
    if (status < 0 || status > 2) {
        codec_fail(err, errlen, "key \"status\" is %d, must be 0, 1 or 2", status);
        return -1;
    }
    return 0;
}

/* The fields every kind carries: the kind itself, the client, and the
 * task, seq and ts, whose rules depend on whether the kind is per task. */
static int codec_check_common(const struct codec_msg *m, char *err, size_t errlen)
{
    if (!codec_kind_valid(m->kind)) {
        codec_fail(err, errlen, "unknown kind %d", (int)m->kind);
        return -1;
    }
    if (codec_check_text("client", SIZE_MAX, m->client, CODEC_MAX_CLIENT, 1, err, errlen) < 0)
        return -1;

    int per_task = m->kind == CODEC_TASK || m->kind == CODEC_STATE;
    if (per_task && m->task <= 0) {
        codec_fail(err, errlen, "key \"task\" is %" PRId64 ", must be > 0", m->task);
        return -1;
    }
    if (!per_task && m->task != 0) {
        codec_fail(err, errlen, "key \"task\" is %" PRId64 ", must be 0 for %s", m->task,
                   codec_kind_name(m->kind));
        return -1;
    }
    /* The link table starts every task at seq 0, so the first message of
     * a task must be newer than that to be applied. */
    if (per_task && m->seq == 0) {
        codec_fail(err, errlen, "key \"seq\" is 0, must be > 0");
        return -1;
    }
    if (m->ts < 0) {
        codec_fail(err, errlen, "key \"ts\" is %" PRId64 ", must be >= 0", m->ts);
        return -1;
    }
    return 0;
}

/* The forward fields of a task message. */
static int codec_check_task(const struct codec_task *t, char *err, size_t errlen)
{
    if (t->department <= 0) {
        codec_fail(err, errlen, "key \"department\" is %" PRId64 ", must be > 0", t->department);
        return -1;
    }
    const struct {
        const char *key;
        const char *text;
        size_t cap;
    } texts[] = {
        {"name", t->name, CODEC_MAX_NAME}, {"type", t->type, CODEC_MAX_TYPE},
        {"note", t->note, CODEC_MAX_NOTE}, {"deadline", t->deadline, CODEC_MAX_DEADLINE},
        {"item", t->item, CODEC_MAX_ITEM}, {"account", t->account, CODEC_MAX_ACCOUNT},
    };
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
        if (codec_check_text(texts[i].key, SIZE_MAX, texts[i].text, texts[i].cap, 0, err, errlen) <
            0)
            return -1;
    }
    if (!codec_deadline_ok(t->deadline)) {
        codec_fail(err, errlen, "key \"deadline\" is not empty nor \"YYYY-MM-DD HH:MM:SS\"");
        return -1;
    }
    return codec_check_status(t->status, err, errlen);
}

/* What the target side did with a task: status, performer, notes. */
static int codec_check_state(const struct codec_state *s, char *err, size_t errlen)
{
    if (codec_check_status(s->status, err, errlen) < 0)
        return -1;
    if (s->performer_id < 0) {
        codec_fail(err, errlen, "key \"performer_id\" is %" PRId64 ", must be >= 0",
                   s->performer_id);
        return -1;
    }
    if (codec_check_text("performer", SIZE_MAX, s->performer, CODEC_MAX_PERFORMER, 0, err, errlen) <
        0)
        return -1;
    if (s->nnotes > CODEC_MAX_NOTES) {
        codec_fail(err, errlen, "key \"notes\" has %zu entries, cap %u", s->nnotes,
                   (unsigned)CODEC_MAX_NOTES);
        return -1;
    }
    if (s->nnotes > 0 && !s->notes) {
        codec_fail(err, errlen, "key \"notes\" has %zu entries but no array", s->nnotes);
        return -1;
    }
    for (size_t i = 0; i < s->nnotes; i++) {
        if (codec_check_text("notes", i, s->notes[i], CODEC_MAX_NOTE_ENTRY, 0, err, errlen) < 0)
            return -1;
    }
    return 0;
}

int codec_check(const struct codec_msg *m, char *err, size_t errlen)
{
    if (codec_check_common(m, err, errlen) < 0)
        return -1;
    switch (m->kind) {
    case CODEC_TASK: return codec_check_task(&m->fwd, err, errlen);
    case CODEC_STATE: return codec_check_state(&m->state, err, errlen);
    case CODEC_SYNC:
    case CODEC_SYNC_DONE:
        return codec_check_text("id", SIZE_MAX, m->sync.id, CODEC_MAX_ID, 1, err, errlen);
    }
    return 0;
}
