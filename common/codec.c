#include "codec.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <msgpack.h>

/* ------------------------------------------------------------------------
 * Shared: errors, kinds, the checks both directions apply.
 * ------------------------------------------------------------------------ */

static void codec_fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void codec_fail(char *err, size_t errlen, const char *fmt, ...)
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

static int codec_kind_valid(enum codec_kind kind)
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

/* "key "name"" or "key "notes" entry 3", for error messages. */
static void codec_label(char *out, size_t outlen, const char *key, size_t idx)
{
    if (idx == SIZE_MAX)
        snprintf(out, outlen, "key \"%s\"", key);
    else
        snprintf(out, outlen, "key \"%s\" entry %zu", key, idx);
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

/* Every rule on the values of a message. The encoder runs it before
 * packing, the decoder after reading, so the two accept the same set. */
static int codec_check(const struct codec_msg *m, char *err, size_t errlen)
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

    switch (m->kind) {
    case CODEC_TASK: {
        const struct codec_task *t = &m->fwd;
        if (t->department <= 0) {
            codec_fail(err, errlen, "key \"department\" is %" PRId64 ", must be > 0",
                       t->department);
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
            if (codec_check_text(texts[i].key, SIZE_MAX, texts[i].text, texts[i].cap, 0, err,
                                 errlen) < 0)
                return -1;
        }
        if (!codec_deadline_ok(t->deadline)) {
            codec_fail(err, errlen, "key \"deadline\" is not empty nor \"YYYY-MM-DD HH:MM:SS\"");
            return -1;
        }
        return codec_check_status(t->status, err, errlen);
    }
    case CODEC_STATE: {
        const struct codec_state *s = &m->state;
        if (codec_check_status(s->status, err, errlen) < 0)
            return -1;
        if (s->performer_id < 0) {
            codec_fail(err, errlen, "key \"performer_id\" is %" PRId64 ", must be >= 0",
                       s->performer_id);
            return -1;
        }
        if (codec_check_text("performer", SIZE_MAX, s->performer, CODEC_MAX_PERFORMER, 0, err,
                             errlen) < 0)
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
    case CODEC_SYNC:
    case CODEC_SYNC_DONE:
        return codec_check_text("id", SIZE_MAX, m->sync.id, CODEC_MAX_ID, 1, err, errlen);
    }
    return 0;
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
               a->fwd.rev_seq == b->fwd.rev_seq &&
               codec_streq(a->fwd.name, b->fwd.name) && codec_streq(a->fwd.type, b->fwd.type) &&
               codec_streq(a->fwd.note, b->fwd.note) &&
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

/* ------------------------------------------------------------------------
 * Encoding: msgpack-c's packer writing into a buf capped at the body cap.
 * ------------------------------------------------------------------------ */

struct codec_sink {
    struct buf body;
    int over; /* the cap, not memory, stopped a write */
};

static int codec_sink_write(void *data, const char *p, size_t n)
{
    struct codec_sink *sink = data;
    if (n > sink->body.max - sink->body.len) {
        sink->over = 1;
        return -1;
    }
    return buf_append(&sink->body, p, n) == 0 ? 0 : -1;
}

static int codec_pack_str(msgpack_packer *pk, const char *s)
{
    size_t len = s ? strlen(s) : 0;
    if (msgpack_pack_str(pk, len) != 0)
        return -1;
    return len ? msgpack_pack_str_body(pk, s, len) : 0;
}

static int codec_pack_kv_str(msgpack_packer *pk, const char *key, const char *s)
{
    return codec_pack_str(pk, key) == 0 && codec_pack_str(pk, s) == 0 ? 0 : -1;
}

static int codec_pack_kv_int(msgpack_packer *pk, const char *key, int64_t v)
{
    return codec_pack_str(pk, key) == 0 && msgpack_pack_int64(pk, v) == 0 ? 0 : -1;
}

static int codec_pack_kv_uint(msgpack_packer *pk, const char *key, uint64_t v)
{
    return codec_pack_str(pk, key) == 0 && msgpack_pack_uint64(pk, v) == 0 ? 0 : -1;
}

/* Packs the whole map; 0, or -1 when a write failed. The order of the keys
 * here is the wire order the golden vectors pin down. */
static int codec_pack(msgpack_packer *pk, const struct codec_msg *m)
{
    static const size_t nkeys[] = {
        [CODEC_TASK] = 6 + 9,
        [CODEC_STATE] = 6 + 5,
        [CODEC_SYNC] = 6 + 1,
        [CODEC_SYNC_DONE] = 6 + 2,
    };

    if (msgpack_pack_map(pk, nkeys[m->kind]) != 0 ||
        codec_pack_kv_uint(pk, "v", CODEC_VERSION) < 0 ||
        codec_pack_kv_str(pk, "kind", codec_kind_name(m->kind)) < 0 ||
        codec_pack_kv_str(pk, "client", m->client) < 0 ||
        codec_pack_kv_int(pk, "task", m->task) < 0 || codec_pack_kv_uint(pk, "seq", m->seq) < 0 ||
        codec_pack_kv_int(pk, "ts", m->ts) < 0)
        return -1;

    switch (m->kind) {
    case CODEC_TASK:
        if (codec_pack_kv_int(pk, "department", m->fwd.department) < 0 ||
            codec_pack_kv_str(pk, "name", m->fwd.name) < 0 ||
            codec_pack_kv_str(pk, "type", m->fwd.type) < 0 ||
            codec_pack_kv_str(pk, "note", m->fwd.note) < 0 ||
            codec_pack_kv_str(pk, "deadline", m->fwd.deadline) < 0 ||
            codec_pack_kv_str(pk, "item", m->fwd.item) < 0 ||
            codec_pack_kv_str(pk, "account", m->fwd.account) < 0 ||
            codec_pack_kv_int(pk, "status", m->fwd.status) < 0 ||
            codec_pack_kv_uint(pk, "rev_seq", m->fwd.rev_seq) < 0)
            return -1;
        return 0;
    case CODEC_STATE:
        if (codec_pack_kv_int(pk, "status", m->state.status) < 0 ||
            codec_pack_kv_int(pk, "performer_id", m->state.performer_id) < 0 ||
            codec_pack_kv_str(pk, "performer", m->state.performer) < 0 ||
            codec_pack_str(pk, "notes") < 0 || msgpack_pack_array(pk, m->state.nnotes) != 0)
            return -1;
        for (size_t i = 0; i < m->state.nnotes; i++) {
            if (codec_pack_str(pk, m->state.notes[i]) < 0)
                return -1;
        }
        return codec_pack_kv_uint(pk, "fwd_seq", m->state.fwd_seq);
    case CODEC_SYNC: return codec_pack_kv_str(pk, "id", m->sync.id);
    case CODEC_SYNC_DONE:
        if (codec_pack_kv_str(pk, "id", m->sync.id) < 0 ||
            codec_pack_kv_uint(pk, "count", m->sync.count) < 0)
            return -1;
        return 0;
    }
    return -1;
}

int codec_encode(const struct codec_msg *m, struct buf *out, char *err, size_t errlen)
{
    struct codec_sink sink;
    msgpack_packer pk;
    int rc = -1;

    if (codec_check(m, err, errlen) < 0)
        return -1;

    /* Packing into a private buffer first keeps out unchanged on failure
     * and enforces the body cap whatever out's own cap is. */
    buf_init(&sink.body, CODEC_MAX_BODY);
    sink.over = 0;
    msgpack_packer_init(&pk, &sink, codec_sink_write);
    if (codec_pack(&pk, m) < 0) {
        if (sink.over)
            codec_fail(err, errlen, "encoded body passes the cap of %u bytes",
                       (unsigned)CODEC_MAX_BODY);
        else
            codec_fail(err, errlen, "out of memory encoding the body");
        goto release_body;
    }
    if (buf_append(out, sink.body.data, sink.body.len) < 0) {
        codec_fail(err, errlen, "output buffer refused %zu bytes (cap %zu, %zu used)",
                   sink.body.len, out->max, out->len);
        goto release_body;
    }
    rc = 0;
release_body:
    buf_release(&sink.body);
    return rc;
}

/* ------------------------------------------------------------------------
 * Decoding: a bounded reader over the bytes.
 *
 * msgpack-c's unpacker allocates storage for a declared element count
 * before it reads the elements, so a few bytes can ask for gigabytes. This
 * reader allocates only for strings it keeps, and only after checking
 * that the declared length lies inside the input; containers are walked,
 * never stored, under a depth cap and a count cap.
 * ------------------------------------------------------------------------ */

struct codec_rd {
    const uint8_t *start;
    const uint8_t *p;
    const uint8_t *end;
};

/* The keys the decoder knows, across all kinds. */
enum codec_key {
    CK_V,
    CK_KIND,
    CK_CLIENT,
    CK_TASK,
    CK_SEQ,
    CK_TS,
    CK_DEPARTMENT,
    CK_NAME,
    CK_TYPE,
    CK_NOTE,
    CK_DEADLINE,
    CK_ITEM,
    CK_ACCOUNT,
    CK_STATUS,
    CK_PERFORMER_ID,
    CK_PERFORMER,
    CK_NOTES,
    CK_ID,
    CK_COUNT,
    CK_FWD_SEQ,
    CK_REV_SEQ,
    CK_NKEYS
};

static const char *const codec_key_names[CK_NKEYS] = {
    [CK_V] = "v",
    [CK_KIND] = "kind",
    [CK_CLIENT] = "client",
    [CK_TASK] = "task",
    [CK_SEQ] = "seq",
    [CK_TS] = "ts",
    [CK_DEPARTMENT] = "department",
    [CK_NAME] = "name",
    [CK_TYPE] = "type",
    [CK_NOTE] = "note",
    [CK_DEADLINE] = "deadline",
    [CK_ITEM] = "item",
    [CK_ACCOUNT] = "account",
    [CK_STATUS] = "status",
    [CK_PERFORMER_ID] = "performer_id",
    [CK_PERFORMER] = "performer",
    [CK_NOTES] = "notes",
    [CK_ID] = "id",
    [CK_COUNT] = "count",
    [CK_FWD_SEQ] = "fwd_seq",
    [CK_REV_SEQ] = "rev_seq",
};

/* Where each known key's value starts, from the first pass. */
struct codec_keys {
    const uint8_t *at[CK_NKEYS]; /* NULL: the key is absent */
};

static size_t codec_rd_off(const struct codec_rd *r)
{
    return (size_t)(r->p - r->start);
}

static size_t codec_rd_left(const struct codec_rd *r)
{
    return (size_t)(r->end - r->p);
}

static uint64_t codec_be(const uint8_t *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

/* Takes n bytes: their start, or NULL when fewer are left. */
static const uint8_t *codec_rd_take(struct codec_rd *r, size_t n)
{
    if (n > codec_rd_left(r))
        return NULL;
    const uint8_t *p = r->p;
    r->p += n;
    return p;
}

/* Reads the big-endian length or count of n bytes that follows a tag. */
static int codec_rd_len(struct codec_rd *r, size_t n, uint64_t *out)
{
    const uint8_t *p = codec_rd_take(r, n);
    if (!p)
        return -1;
    *out = codec_be(p, n);
    return 0;
}

static void codec_truncated(const struct codec_rd *r, char *err, size_t errlen)
{
    codec_fail(err, errlen, "truncated body at byte %zu", codec_rd_off(r));
}

/* What a tag byte announces, enough to walk or type-check a value. */
enum codec_type { CT_INT, CT_STR, CT_ARRAY, CT_MAP, CT_OTHER };

struct codec_head {
    enum codec_type type;
    size_t at;      /* offset of the tag byte */
    uint64_t count; /* CT_STR: bytes; CT_ARRAY: elements; CT_MAP: pairs */
    uint64_t skip;  /* CT_OTHER: payload bytes after the header */
    int neg;        /* CT_INT: the value is negative, in i; else in u */
    int64_t i;
    uint64_t u;
};

/* Refuses a header whose declared length runs past the input or whose
 * declared count passes a cap, before anyone acts on it. */
static int codec_head_check(const struct codec_rd *r, const struct codec_head *h, char *err,
                            size_t errlen)
{
    if (h->type == CT_STR && h->count > codec_rd_left(r)) {
        codec_fail(err, errlen, "string of %" PRIu64 " bytes at byte %zu runs past the end",
                   h->count, h->at);
        return -1;
    }
    if (h->type == CT_OTHER && h->skip > codec_rd_left(r)) {
        codec_truncated(r, err, errlen);
        return -1;
    }
    if (h->type == CT_MAP && h->count > CODEC_MAX_MAP_KEYS) {
        codec_fail(err, errlen, "map of %" PRIu64 " keys at byte %zu, cap %u", h->count, h->at,
                   (unsigned)CODEC_MAX_MAP_KEYS);
        return -1;
    }
    if (h->type == CT_ARRAY && h->count > CODEC_MAX_ARRAY) {
        codec_fail(err, errlen, "array of %" PRIu64 " elements at byte %zu, cap %u", h->count,
                   h->at, (unsigned)CODEC_MAX_ARRAY);
        return -1;
    }
    return 0;
}

/* Reads one value's header: the tag, its length bytes and, for integers,
 * the value itself. The payload of a string (count bytes) or of a bin,
 * ext or float (skip bytes) is left for the caller, who may step over it
 * without checking again: codec_head_check has. */
static int codec_rd_head(struct codec_rd *r, struct codec_head *h, char *err, size_t errlen)
{
    memset(h, 0, sizeof(*h));
    h->at = codec_rd_off(r);
    const uint8_t *tp = codec_rd_take(r, 1);
    if (!tp) {
        codec_truncated(r, err, errlen);
        return -1;
    }
    uint8_t t = *tp;
    uint64_t n = 0;
    int rc = 0;

    if (t <= 0x7f) {
        h->type = CT_INT;
        h->u = t;
        return 0;
    }
    if (t >= 0xe0) {
        h->type = CT_INT;
        h->neg = 1;
        h->i = (int8_t)t;
        return 0;
    }
    if (t >= 0x80 && t <= 0x8f) {
        h->type = CT_MAP;
        h->count = t & 0x0f;
        return 0;
    }
    if (t >= 0x90 && t <= 0x9f) {
        h->type = CT_ARRAY;
        h->count = t & 0x0f;
        return 0;
    }
    if (t >= 0xa0 && t <= 0xbf) {
        h->type = CT_STR;
        h->count = t & 0x1f;
        return codec_head_check(r, h, err, errlen);
    }
    switch (t) {
    case 0xc0: /* nil */
    case 0xc2: /* false */
    case 0xc3: /* true */ h->type = CT_OTHER; return 0;
    case 0xc4:
    case 0xc5:
    case 0xc6: /* bin 8/16/32 */
        h->type = CT_OTHER;
        rc = codec_rd_len(r, (size_t)1 << (t - 0xc4), &n);
        h->skip = n;
        break;
    case 0xc7:
    case 0xc8:
    case 0xc9: /* ext 8/16/32: length, type byte, data */
        h->type = CT_OTHER;
        rc = codec_rd_len(r, (size_t)1 << (t - 0xc7), &n);
        h->skip = n + 1;
        break;
    case 0xca: /* float 32 */
        h->type = CT_OTHER;
        h->skip = 4;
        break;
    case 0xcb: /* float 64 */
        h->type = CT_OTHER;
        h->skip = 8;
        break;
    case 0xcc:
    case 0xcd:
    case 0xce:
    case 0xcf: /* uint 8/16/32/64 */
        h->type = CT_INT;
        rc = codec_rd_len(r, (size_t)1 << (t - 0xcc), &h->u);
        break;
    case 0xd0:
    case 0xd1:
    case 0xd2:
    case 0xd3: { /* int 8/16/32/64 */
        size_t w = (size_t)1 << (t - 0xd0);
        h->type = CT_INT;
        rc = codec_rd_len(r, w, &n);
        if (rc == 0) {
            /* Sign-extend from w bytes without shifting into the sign. */
            int64_t v;
            uint64_t sign = (uint64_t)1 << (w * 8 - 1);
            if (!(n & sign))
                v = (int64_t)n;
            else if (w == 8)
                v = -(int64_t)(~n) - 1; /* ~n <= INT64_MAX here */
            else
                v = -(int64_t)((sign << 1) - n);
            if (v < 0) {
                h->neg = 1;
                h->i = v;
            } else {
                h->u = (uint64_t)v;
            }
        }
        break;
    }
    case 0xd4:
    case 0xd5:
    case 0xd6:
    case 0xd7:
    case 0xd8: /* fixext 1..16 + type */
        h->type = CT_OTHER;
        h->skip = ((uint64_t)1 << (t - 0xd4)) + 1;
        break;
    case 0xd9:
    case 0xda:
    case 0xdb: /* str 8/16/32 */
        h->type = CT_STR;
        rc = codec_rd_len(r, (size_t)1 << (t - 0xd9), &h->count);
        break;
    case 0xdc:
    case 0xdd: /* array 16/32 */
        h->type = CT_ARRAY;
        rc = codec_rd_len(r, (size_t)2 << (t - 0xdc), &h->count);
        break;
    case 0xde:
    case 0xdf: /* map 16/32 */
        h->type = CT_MAP;
        rc = codec_rd_len(r, (size_t)2 << (t - 0xde), &h->count);
        break;
    default: /* 0xc1 is never used */
        codec_fail(err, errlen, "invalid msgpack byte 0x%02x at byte %zu", t, h->at);
        return -1;
    }
    if (rc < 0) {
        codec_truncated(r, err, errlen);
        return -1;
    }
    return codec_head_check(r, h, err, errlen);
}

/* Walks over one value of any type. depth is the nesting level the value
 * sits at if it is a container (the body's map is at 1). Recursion is
 * bounded by CODEC_MAX_DEPTH, and every element consumes at least one
 * byte, so the walk is linear in the input. */
static int codec_skip(struct codec_rd *r, int depth, char *err, size_t errlen)
{
    struct codec_head h;

    if (codec_rd_head(r, &h, err, errlen) < 0)
        return -1;
    switch (h.type) {
    case CT_INT: return 0;
    case CT_STR:
        r->p += h.count; /* checked against the end by codec_rd_head */
        return 0;
    case CT_OTHER:
        r->p += (size_t)h.skip; /* checked by codec_rd_head */
        return 0;
    case CT_ARRAY:
    case CT_MAP:
        if (depth > CODEC_MAX_DEPTH) {
            codec_fail(err, errlen, "nesting deeper than %d at byte %zu", CODEC_MAX_DEPTH, h.at);
            return -1;
        }
        for (uint64_t i = 0; i < h.count * (h.type == CT_MAP ? 2 : 1); i++) {
            if (codec_skip(r, depth + 1, err, errlen) < 0)
                return -1;
        }
        return 0;
    }
    return -1;
}

static int codec_key_lookup(const uint8_t *s, size_t len)
{
    for (int k = 0; k < CK_NKEYS; k++) {
        if (strlen(codec_key_names[k]) == len && memcmp(codec_key_names[k], s, len) == 0)
            return k;
    }
    return -1;
}

/* First pass: checks the whole body's structure and notes where each known
 * key's value starts. */
static int codec_scan(struct codec_rd *r, struct codec_keys *keys, char *err, size_t errlen)
{
    struct codec_head h;

    memset(keys, 0, sizeof(*keys));
    if (codec_rd_head(r, &h, err, errlen) < 0)
        return -1;
    if (h.type != CT_MAP) {
        codec_fail(err, errlen, "body is not a map");
        return -1;
    }
    for (uint64_t i = 0; i < h.count; i++) {
        struct codec_head kh;
        if (codec_rd_head(r, &kh, err, errlen) < 0)
            return -1;
        if (kh.type != CT_STR) {
            codec_fail(err, errlen, "map key at byte %zu is not a string", kh.at);
            return -1;
        }
        int k = codec_key_lookup(r->p, (size_t)kh.count);
        r->p += kh.count;
        if (k >= 0) {
            if (keys->at[k]) {
                codec_fail(err, errlen, "duplicate key \"%s\"", codec_key_names[k]);
                return -1;
            }
            keys->at[k] = r->p;
        }
        if (codec_skip(r, 2, err, errlen) < 0)
            return -1;
    }
    if (codec_rd_left(r) != 0) {
        codec_fail(err, errlen, "%zu trailing bytes after the map", codec_rd_left(r));
        return -1;
    }
    return 0;
}

/* Positions a reader at a known key's value; fails when the key is absent. */
static int codec_at(const struct codec_rd *body, const struct codec_keys *keys, enum codec_key k,
                    struct codec_rd *r, char *err, size_t errlen)
{
    if (!keys->at[k]) {
        codec_fail(err, errlen, "missing required key \"%s\"", codec_key_names[k]);
        return -1;
    }
    r->start = body->start;
    r->p = keys->at[k];
    r->end = body->end;
    return 0;
}

static int codec_get_int(const struct codec_rd *body, const struct codec_keys *keys,
                         enum codec_key k, int64_t *out, char *err, size_t errlen)
{
    struct codec_rd r;
    struct codec_head h;

    if (codec_at(body, keys, k, &r, err, errlen) < 0 || codec_rd_head(&r, &h, err, errlen) < 0)
        return -1;
    if (h.type != CT_INT) {
        codec_fail(err, errlen, "key \"%s\" is not an integer", codec_key_names[k]);
        return -1;
    }
    if (!h.neg && h.u > INT64_MAX) {
        codec_fail(err, errlen, "key \"%s\" is %" PRIu64 ", out of range", codec_key_names[k], h.u);
        return -1;
    }
    *out = h.neg ? h.i : (int64_t)h.u;
    return 0;
}

static int codec_get_uint(const struct codec_rd *body, const struct codec_keys *keys,
                          enum codec_key k, uint64_t *out, char *err, size_t errlen)
{
    struct codec_rd r;
    struct codec_head h;

    if (codec_at(body, keys, k, &r, err, errlen) < 0 || codec_rd_head(&r, &h, err, errlen) < 0)
        return -1;
    if (h.type != CT_INT) {
        codec_fail(err, errlen, "key \"%s\" is not an integer", codec_key_names[k]);
        return -1;
    }
    if (h.neg) {
        codec_fail(err, errlen, "key \"%s\" is %" PRId64 ", must be >= 0", codec_key_names[k], h.i);
        return -1;
    }
    *out = h.u;
    return 0;
}

/* A status travels as an integer but is kept in an int: range-check it
 * before narrowing. */
static int codec_get_status(const struct codec_rd *body, const struct codec_keys *keys, int *out,
                            char *err, size_t errlen)
{
    int64_t v;
    if (codec_get_int(body, keys, CK_STATUS, &v, err, errlen) < 0)
        return -1;
    if (v < 0 || v > 2) {
        codec_fail(err, errlen, "key \"status\" is %" PRId64 ", must be 0, 1 or 2", v);
        return -1;
    }
    *out = (int)v;
    return 0;
}

/* Copies a string value whose header h was just read from r into a new C
 * string. A NUL inside would cut the C string short and make two
 * different bodies decode alike, so it is refused. */
static char *codec_copy_str(struct codec_rd *r, const struct codec_head *h, const char *key,
                            size_t idx, char *err, size_t errlen)
{
    size_t len = (size_t)h->count;
    const uint8_t *s = r->p;
    r->p += len;

    if (memchr(s, '\0', len)) {
        char label[64];
        codec_label(label, sizeof(label), key, idx);
        codec_fail(err, errlen, "%s holds a NUL byte", label);
        return NULL;
    }
    char *copy = malloc(len + 1);
    if (!copy) {
        codec_fail(err, errlen, "out of memory decoding key \"%s\"", key);
        return NULL;
    }
    memcpy(copy, s, len);
    copy[len] = '\0';
    return copy;
}

static int codec_get_str(const struct codec_rd *body, const struct codec_keys *keys,
                         enum codec_key k, char **out, char *err, size_t errlen)
{
    struct codec_rd r;
    struct codec_head h;

    if (codec_at(body, keys, k, &r, err, errlen) < 0 || codec_rd_head(&r, &h, err, errlen) < 0)
        return -1;
    if (h.type != CT_STR) {
        codec_fail(err, errlen, "key \"%s\" is not a string", codec_key_names[k]);
        return -1;
    }
    *out = codec_copy_str(&r, &h, codec_key_names[k], SIZE_MAX, err, errlen);
    return *out ? 0 : -1;
}

static int codec_get_notes(const struct codec_rd *body, const struct codec_keys *keys,
                           struct codec_state *st, char *err, size_t errlen)
{
    struct codec_rd r;
    struct codec_head h;

    if (codec_at(body, keys, CK_NOTES, &r, err, errlen) < 0 ||
        codec_rd_head(&r, &h, err, errlen) < 0)
        return -1;
    if (h.type != CT_ARRAY) {
        codec_fail(err, errlen, "key \"notes\" is not an array");
        return -1;
    }
    if (h.count == 0)
        return 0;
    /* h.count is at most CODEC_MAX_ARRAY here (codec_rd_head). */
    st->notes = calloc((size_t)h.count, sizeof(*st->notes));
    if (!st->notes) {
        codec_fail(err, errlen, "out of memory decoding key \"notes\"");
        return -1;
    }
    for (size_t i = 0; i < (size_t)h.count; i++) {
        struct codec_head eh;
        if (codec_rd_head(&r, &eh, err, errlen) < 0)
            return -1;
        if (eh.type != CT_STR) {
            codec_fail(err, errlen, "key \"notes\" entry %zu is not a string", i);
            return -1;
        }
        st->notes[i] = codec_copy_str(&r, &eh, "notes", i, err, errlen);
        if (!st->notes[i])
            return -1;
        /* Count as we go so that release frees exactly what exists. */
        st->nnotes = i + 1;
    }
    return 0;
}

/* Second pass: reads the keys the kind requires, in a fixed order so that
 * the first problem reported does not depend on the order of the map. */
static int codec_read(const struct codec_rd *body, const struct codec_keys *keys,
                      struct codec_msg *m, char *err, size_t errlen)
{
    int64_t v;
    char *kind = NULL;

    if (codec_get_int(body, keys, CK_V, &v, err, errlen) < 0)
        return -1;
    if (v != CODEC_VERSION) {
        codec_fail(err, errlen, "version %" PRId64 " not supported", v);
        return -1;
    }
    m->v = CODEC_VERSION;

    if (codec_get_str(body, keys, CK_KIND, &kind, err, errlen) < 0)
        return -1;
    if (codec_kind_parse(kind, &m->kind) < 0) {
        /* The name comes from outside: show a short, printable form. */
        char shown[36];
        size_t n = 0;
        for (const char *c = kind; *c && n < 32; c++, n++)
            shown[n] = (*c >= 0x20 && *c < 0x7f && *c != '"') ? *c : '?';
        shown[n] = '\0';
        codec_fail(err, errlen, "unknown kind \"%s%s\"", shown, strlen(kind) > 32 ? "..." : "");
        free(kind);
        return -1;
    }
    free(kind);

    if (codec_get_str(body, keys, CK_CLIENT, &m->client, err, errlen) < 0 ||
        codec_get_int(body, keys, CK_TASK, &m->task, err, errlen) < 0 ||
        codec_get_uint(body, keys, CK_SEQ, &m->seq, err, errlen) < 0 ||
        codec_get_int(body, keys, CK_TS, &m->ts, err, errlen) < 0)
        return -1;

    switch (m->kind) {
    case CODEC_TASK:
        if (codec_get_int(body, keys, CK_DEPARTMENT, &m->fwd.department, err, errlen) < 0 ||
            codec_get_str(body, keys, CK_NAME, &m->fwd.name, err, errlen) < 0 ||
            codec_get_str(body, keys, CK_TYPE, &m->fwd.type, err, errlen) < 0 ||
            codec_get_str(body, keys, CK_NOTE, &m->fwd.note, err, errlen) < 0 ||
            codec_get_str(body, keys, CK_DEADLINE, &m->fwd.deadline, err, errlen) < 0 ||
            codec_get_str(body, keys, CK_ITEM, &m->fwd.item, err, errlen) < 0 ||
            codec_get_str(body, keys, CK_ACCOUNT, &m->fwd.account, err, errlen) < 0 ||
            codec_get_status(body, keys, &m->fwd.status, err, errlen) < 0)
            return -1;
        /* Optional: a client older than the key does not send it, and its
         * message then says nothing about which state it had seen. */
        if (keys->at[CK_REV_SEQ] &&
            codec_get_uint(body, keys, CK_REV_SEQ, &m->fwd.rev_seq, err, errlen) < 0)
            return -1;
        return 0;
    case CODEC_STATE:
        if (codec_get_status(body, keys, &m->state.status, err, errlen) < 0 ||
            codec_get_int(body, keys, CK_PERFORMER_ID, &m->state.performer_id, err, errlen) < 0 ||
            codec_get_str(body, keys, CK_PERFORMER, &m->state.performer, err, errlen) < 0 ||
            codec_get_notes(body, keys, &m->state, err, errlen) < 0)
            return -1;
        /* Optional: a server older than the key does not send it, and its
         * state then says nothing about which task message it had seen. */
        if (keys->at[CK_FWD_SEQ] &&
            codec_get_uint(body, keys, CK_FWD_SEQ, &m->state.fwd_seq, err, errlen) < 0)
            return -1;
        return 0;
    case CODEC_SYNC: return codec_get_str(body, keys, CK_ID, &m->sync.id, err, errlen);
    case CODEC_SYNC_DONE:
        if (codec_get_str(body, keys, CK_ID, &m->sync.id, err, errlen) < 0 ||
            codec_get_uint(body, keys, CK_COUNT, &m->sync.count, err, errlen) < 0)
            return -1;
        return 0;
    }
    return -1;
}

rt_status codec_decode(const void *data, size_t len, struct codec_msg *out, char *err,
                       size_t errlen)
{
    struct codec_rd body;
    struct codec_keys keys;

    memset(out, 0, sizeof(*out));
    if (len > CODEC_MAX_BODY) {
        codec_fail(err, errlen, "body is %zu bytes, cap %u", len, (unsigned)CODEC_MAX_BODY);
        return RT_REJECT;
    }
    if (!data || len == 0) {
        codec_fail(err, errlen, "empty body");
        return RT_REJECT;
    }
    body.start = data;
    body.p = data;
    body.end = body.start + len;

    struct codec_rd scan = body;
    if (codec_scan(&scan, &keys, err, errlen) < 0 ||
        codec_read(&body, &keys, out, err, errlen) < 0 || codec_check(out, err, errlen) < 0)
        goto release_msg;
    return RT_OK;

release_msg:
    codec_msg_release(out);
    return RT_REJECT;
}
