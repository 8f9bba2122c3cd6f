/*
 * codec_dec.c - the decoder: a bounded reader over untrusted bytes.
 *
 * msgpack-c's unpacker allocates storage for a declared element count
 * before it reads the elements, so a few bytes can ask for gigabytes. This
 * reader allocates only for strings it keeps, and only after checking
 * that the declared length lies inside the input; containers are walked,
 * never stored, under a depth cap and a count cap. A first pass checks the
 * whole body's structure and notes where each known key's value starts;
 * a second reads the keys the kind requires; codec_check() (codec_check.c)
 * then applies the rules the encoder applies.
 */
#include <inttypes.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec_int.h"

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
/* The tags whose byte alone says what the value is: positive and negative
 * fixint, fixmap, fixarray, fixstr, nil, false and true. Returns 0 when t
 * is none of them. */
static int codec_head_fixed(struct codec_head *h, uint8_t t)
{
    if (t <= 0x7f) {
        h->type = CT_INT;
        h->u = t;
    } else if (t >= 0xe0) {
        h->type = CT_INT;
        h->neg = 1;
        h->i = (int8_t)t;
    } else if (t <= 0x8f) {
        h->type = CT_MAP;
        h->count = t & 0x0f;
    } else if (t <= 0x9f) {
        h->type = CT_ARRAY;
        h->count = t & 0x0f;
    } else if (t <= 0xbf) {
        h->type = CT_STR;
        h->count = t & 0x1f;
    } else if (t == 0xc0 || t == 0xc2 || t == 0xc3) { /* nil, false, true */
        h->type = CT_OTHER;
    } else {
        return 0;
    }
    return 1;
}

/* bin 8/16/32 (0xc4..0xc6), ext 8/16/32 (0xc7..0xc9), float 32/64 (0xca,
 * 0xcb) and fixext 1..16 (0xd4..0xd8): values the decoder only steps over,
 * so their header says how many payload bytes follow (skip). */
static int codec_head_opaque(struct codec_rd *r, struct codec_head *h, uint8_t t)
{
    uint64_t n = 0;
    int rc = 0;

    h->type = CT_OTHER;
    if (t <= 0xc6) {
        rc = codec_rd_len(r, (size_t)1 << (t - 0xc4), &n);
        h->skip = n;
    } else if (t <= 0xc9) { /* ext: length, type byte, data */
        rc = codec_rd_len(r, (size_t)1 << (t - 0xc7), &n);
        h->skip = n + 1;
    } else if (t <= 0xcb) {
        h->skip = t == 0xca ? 4 : 8;
    } else { /* fixext: type byte, data */
        h->skip = ((uint64_t)1 << (t - 0xd4)) + 1;
    }
    return rc;
}

/* Sign-extends the w-byte value n without shifting into the sign. */
static int64_t codec_sign_extend(uint64_t n, size_t w)
{
    uint64_t sign = (uint64_t)1 << (w * 8 - 1);
    if (!(n & sign))
        return (int64_t)n;
    if (w == 8)
        return -(int64_t)(~n) - 1; /* ~n <= INT64_MAX here */
    return -(int64_t)((sign << 1) - n);
}

/* uint 8/16/32/64 (0xcc..0xcf) and int 8/16/32/64 (0xd0..0xd3): the value
 * follows the tag. */
static int codec_head_int(struct codec_rd *r, struct codec_head *h, uint8_t t)
{
    uint64_t n;

    h->type = CT_INT;
    if (t <= 0xcf)
        return codec_rd_len(r, (size_t)1 << (t - 0xcc), &h->u);
    size_t w = (size_t)1 << (t - 0xd0);
    if (codec_rd_len(r, w, &n) < 0)
        return -1;
    int64_t v = codec_sign_extend(n, w);
    if (v < 0) {
        h->neg = 1;
        h->i = v;
    } else {
        h->u = (uint64_t)v;
    }
    return 0;
}

/* str 8/16/32 (0xd9..0xdb), array 16/32 (0xdc, 0xdd) and map 16/32 (0xde,
 * 0xdf): a length or a count follows the tag. */
static int codec_head_counted(struct codec_rd *r, struct codec_head *h, uint8_t t)
{
    if (t <= 0xdb) {
        h->type = CT_STR;
        return codec_rd_len(r, (size_t)1 << (t - 0xd9), &h->count);
    }
    if (t <= 0xdd) {
        h->type = CT_ARRAY;
        return codec_rd_len(r, (size_t)2 << (t - 0xdc), &h->count);
    }
    h->type = CT_MAP;
    return codec_rd_len(r, (size_t)2 << (t - 0xde), &h->count);
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
    int rc = 0;

    if (codec_head_fixed(h, t))
        rc = 0;
    else if ((t >= 0xc4 && t <= 0xcb) || (t >= 0xd4 && t <= 0xd8))
        rc = codec_head_opaque(r, h, t);
    else if (t >= 0xcc && t <= 0xd3)
        rc = codec_head_int(r, h, t);
    else if (t >= 0xd9 && t <= 0xdf)
        rc = codec_head_counted(r, h, t);
    else { /* 0xc1 is never used */
        codec_fail(err, errlen, "invalid msgpack byte 0x%02x at byte %zu", t, h->at);
        return -1;
    }
    if (rc < 0) {
        codec_truncated(r, err, errlen);
        return -1;
    }
    /* Of the heads a tag alone makes, only a fixstr's can fail the check
     * (its length against the input); for the others it is a no-op. */
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
/* Positions a reader at a known key's value and reads its header, which
 * must be an integer's. */
static int codec_get_int_head(const struct codec_rd *body, const struct codec_keys *keys,
                              enum codec_key k, struct codec_head *h, char *err, size_t errlen)
{
    struct codec_rd r;

    if (codec_at(body, keys, k, &r, err, errlen) < 0 || codec_rd_head(&r, h, err, errlen) < 0)
        return -1;
    if (h->type != CT_INT) {
        codec_fail(err, errlen, "key \"%s\" is not an integer", codec_key_names[k]);
        return -1;
    }
    return 0;
}

static int codec_get_int(const struct codec_rd *body, const struct codec_keys *keys,
                         enum codec_key k, int64_t *out, char *err, size_t errlen)
{
    struct codec_head h;

    if (codec_get_int_head(body, keys, k, &h, err, errlen) < 0)
        return -1;
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
    struct codec_head h;

    if (codec_get_int_head(body, keys, k, &h, err, errlen) < 0)
        return -1;
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

/* The version, then the kind: what the rest of the body means depends on
 * both, so they are read first. */
static int codec_read_kind(const struct codec_rd *body, const struct codec_keys *keys,
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
    return 0;
}

static int codec_read_task(const struct codec_rd *body, const struct codec_keys *keys,
                           struct codec_task *t, char *err, size_t errlen)
{
    if (codec_get_int(body, keys, CK_DEPARTMENT, &t->department, err, errlen) < 0 ||
        codec_get_str(body, keys, CK_NAME, &t->name, err, errlen) < 0 ||
        codec_get_str(body, keys, CK_TYPE, &t->type, err, errlen) < 0 ||
        codec_get_str(body, keys, CK_NOTE, &t->note, err, errlen) < 0 ||
        codec_get_str(body, keys, CK_DEADLINE, &t->deadline, err, errlen) < 0 ||
        codec_get_str(body, keys, CK_ITEM, &t->item, err, errlen) < 0 ||
        codec_get_str(body, keys, CK_ACCOUNT, &t->account, err, errlen) < 0 ||
        codec_get_status(body, keys, &t->status, err, errlen) < 0)
        return -1;
    /* Optional: a client older than the key does not send it, and its
     * message then says nothing about which state it had seen. */
    if (keys->at[CK_REV_SEQ] &&
        codec_get_uint(body, keys, CK_REV_SEQ, &t->rev_seq, err, errlen) < 0)
        return -1;
    return 0;
}

static int codec_read_state(const struct codec_rd *body, const struct codec_keys *keys,
                            struct codec_state *s, char *err, size_t errlen)
{
    if (codec_get_status(body, keys, &s->status, err, errlen) < 0 ||
        codec_get_int(body, keys, CK_PERFORMER_ID, &s->performer_id, err, errlen) < 0 ||
        codec_get_str(body, keys, CK_PERFORMER, &s->performer, err, errlen) < 0 ||
        codec_get_notes(body, keys, s, err, errlen) < 0)
        return -1;
    /* Optional: a server older than the key does not send it, and its
     * state then says nothing about which task message it had seen. */
    if (keys->at[CK_FWD_SEQ] &&
        codec_get_uint(body, keys, CK_FWD_SEQ, &s->fwd_seq, err, errlen) < 0)
        return -1;
    return 0;
}

/* Second pass: reads the keys the kind requires, in a fixed order so that
 * the first problem reported does not depend on the order of the map. */
static int codec_read(const struct codec_rd *body, const struct codec_keys *keys,
                      struct codec_msg *m, char *err, size_t errlen)
{
    if (codec_read_kind(body, keys, m, err, errlen) < 0 ||
        codec_get_str(body, keys, CK_CLIENT, &m->client, err, errlen) < 0 ||
        codec_get_int(body, keys, CK_TASK, &m->task, err, errlen) < 0 ||
        codec_get_uint(body, keys, CK_SEQ, &m->seq, err, errlen) < 0 ||
        codec_get_int(body, keys, CK_TS, &m->ts, err, errlen) < 0)
        return -1;

    switch (m->kind) {
    case CODEC_TASK: return codec_read_task(body, keys, &m->fwd, err, errlen);
    case CODEC_STATE: return codec_read_state(body, keys, &m->state, err, errlen);
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
