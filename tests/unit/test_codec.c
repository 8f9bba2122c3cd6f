/*
 * test_codec.c - the msgpack envelope: round trips, golden bytes, and every
 * way a body from outside can be refused.
 *
 * Bodies for the refusal tests are written by a small msgpack writer in
 * this file, independent of msgpack-c, so that the tests can produce what
 * the encoder never would (missing keys, wrong types, other integer
 * widths, huge declared lengths) and so that the golden vectors are
 * checked against a second implementation of the format.
 *
 * `test_codec --write-golden DIR` rewrites the golden vectors into DIR
 * (see tests/data/codec/README).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "buf.h"
#include "codec.h"

#define GOLDEN_DIR RT_TEST_DATA_DIR "/codec"

/* ------------------------------------------------------------------------
 * Fixed messages: the golden vectors encode exactly these.
 * ------------------------------------------------------------------------ */

static const char *const golden_notes[] = {
    "first note",
    "вторая заметка\nс переводом строки",
    "",
};

static void golden_msg(struct codec_msg *m, enum codec_kind kind)
{
    codec_msg_init(m, kind);
    m->client = "7";
    switch (kind) {
    case CODEC_TASK:
        m->task = 1042;
        m->seq = 3;
        m->ts = 1700000000123;
        m->fwd.department = 12;
        m->fwd.name = "Настроить VPS #1 & = + % ?";
        m->fwd.type = "postopen";
        m->fwd.note = "line one\nline two\r\n\ttabbed";
        m->fwd.deadline = "2024-05-01 12:30:00";
        m->fwd.item = "VPS-1 (vps1.example.com)";
        m->fwd.account = "ООО «Ромашка» <acct 55>";
        m->fwd.status = 1;
        m->fwd.rev_seq = 200;
        break;
    case CODEC_STATE:
        m->task = 1042;
        m->seq = 9;
        m->ts = 1700000300456;
        m->state.status = 2;
        m->state.performer_id = 21;
        m->state.performer = "Иван Петров";
        m->state.notes = (char **)golden_notes;
        m->state.nnotes = sizeof(golden_notes) / sizeof(golden_notes[0]);
        m->state.fwd_seq = 300;
        break;
    case CODEC_SYNC:
        m->ts = 1700000400000;
        m->sync.id = "chk-0001";
        break;
    case CODEC_SYNC_DONE:
        m->ts = 1700000401000;
        m->sync.id = "chk-0001";
        m->sync.count = 1234;
        break;
    }
}

static const enum codec_kind all_kinds[] = {CODEC_TASK, CODEC_STATE, CODEC_SYNC, CODEC_SYNC_DONE};
#define NKINDS (sizeof(all_kinds) / sizeof(all_kinds[0]))

/* ------------------------------------------------------------------------
 * An independent msgpack writer (shortest encodings, as the spec allows).
 * ------------------------------------------------------------------------ */

static void w_raw(struct buf *b, const void *p, size_t n)
{
    assert_int_equal(buf_append(b, p, n), 0);
}

static void w_byte(struct buf *b, unsigned c)
{
    uint8_t v = (uint8_t)c;
    w_raw(b, &v, 1);
}

static void w_be(struct buf *b, uint64_t v, int n)
{
    for (int i = n - 1; i >= 0; i--)
        w_byte(b, (unsigned)((v >> (8 * i)) & 0xff));
}

/* The shortest header msgpack allows for a value, length or count n: one
 * byte fix | n below fix_limit, else the first tag of the family (tag, of
 * width bytes) or the next ones (each twice as wide, up to max_width),
 * followed by n big-endian. */
static void w_head(struct buf *b, uint64_t n, unsigned fix, uint64_t fix_limit, unsigned tag,
                   int width, int max_width)
{
    if (n < fix_limit) {
        w_byte(b, fix | (unsigned)n);
        return;
    }
    while (width < max_width && (n >> (8 * width)) != 0) {
        width *= 2;
        tag++;
    }
    w_byte(b, tag);
    w_be(b, n, width);
}

/* positive fixint, uint 8/16/32/64 */
static void w_uint(struct buf *b, uint64_t v)
{
    w_head(b, v, 0x00, 128, 0xcc, 1, 8);
}

static void w_int(struct buf *b, int64_t v)
{
    if (v >= 0) {
        w_uint(b, (uint64_t)v);
    } else if (v >= -32) {
        w_byte(b, (unsigned)(uint8_t)(int8_t)v);
    } else if (v >= -128) {
        w_byte(b, 0xd0);
        w_be(b, (uint64_t)v, 1);
    } else if (v >= -32768) {
        w_byte(b, 0xd1);
        w_be(b, (uint64_t)v, 2);
    } else if (v >= INT32_MIN) {
        w_byte(b, 0xd2);
        w_be(b, (uint64_t)v, 4);
    } else {
        w_byte(b, 0xd3);
        w_be(b, (uint64_t)v, 8);
    }
}

/* fixstr, str 8/16/32 */
static void w_strn(struct buf *b, const char *s, size_t n)
{
    w_head(b, n, 0xa0, 32, 0xd9, 1, 4);
    if (n)
        w_raw(b, s, n);
}

static void w_str(struct buf *b, const char *s)
{
    w_strn(b, s ? s : "", s ? strlen(s) : 0);
}

/* fixmap, map 16/32 */
static void w_map(struct buf *b, uint64_t n)
{
    w_head(b, n, 0x80, 16, 0xde, 2, 4);
}

/* fixarray, array 16/32 */
static void w_arr(struct buf *b, uint64_t n)
{
    w_head(b, n, 0x90, 16, 0xdc, 2, 4);
}

/* ------------------------------------------------------------------------
 * A body builder: the fields of a message, with one key left out or one
 * value replaced by raw bytes, extra pairs appended, or the order reversed.
 * ------------------------------------------------------------------------ */

#define MAX_FIELDS 16

struct field {
    const char *key;
    struct buf val;
};

struct mutation {
    const char *omit;    /* key left out */
    const char *replace; /* key whose value is replaced by raw */
    const void *raw;
    size_t rawlen;
    const void *extra; /* whole key/value pairs appended to the map */
    size_t extralen;
    unsigned nextra;
    int reverse; /* write the pairs in reverse order */
};

static struct field *add_field(struct field *f, size_t *n, const char *key)
{
    assert_true(*n < MAX_FIELDS);
    f[*n].key = key;
    buf_init(&f[*n].val, 8u * 1024 * 1024);
    return &f[(*n)++];
}

static size_t msg_fields(const struct codec_msg *m, struct field *f)
{
    size_t n = 0;
    w_uint(&add_field(f, &n, "v")->val, 1);
    w_str(&add_field(f, &n, "kind")->val, codec_kind_name(m->kind));
    w_str(&add_field(f, &n, "client")->val, m->client);
    w_int(&add_field(f, &n, "task")->val, m->task);
    w_uint(&add_field(f, &n, "seq")->val, m->seq);
    w_int(&add_field(f, &n, "ts")->val, m->ts);
    switch (m->kind) {
    case CODEC_TASK:
        w_int(&add_field(f, &n, "department")->val, m->fwd.department);
        w_str(&add_field(f, &n, "name")->val, m->fwd.name);
        w_str(&add_field(f, &n, "type")->val, m->fwd.type);
        w_str(&add_field(f, &n, "note")->val, m->fwd.note);
        w_str(&add_field(f, &n, "deadline")->val, m->fwd.deadline);
        w_str(&add_field(f, &n, "item")->val, m->fwd.item);
        w_str(&add_field(f, &n, "account")->val, m->fwd.account);
        w_int(&add_field(f, &n, "status")->val, m->fwd.status);
        w_uint(&add_field(f, &n, "rev_seq")->val, m->fwd.rev_seq);
        break;
    case CODEC_STATE: {
        w_int(&add_field(f, &n, "status")->val, m->state.status);
        w_int(&add_field(f, &n, "performer_id")->val, m->state.performer_id);
        w_str(&add_field(f, &n, "performer")->val, m->state.performer);
        struct field *notes = add_field(f, &n, "notes");
        w_arr(&notes->val, m->state.nnotes);
        for (size_t i = 0; i < m->state.nnotes; i++)
            w_str(&notes->val, m->state.notes[i]);
        w_uint(&add_field(f, &n, "fwd_seq")->val, m->state.fwd_seq);
        break;
    }
    case CODEC_SYNC: w_str(&add_field(f, &n, "id")->val, m->sync.id); break;
    case CODEC_SYNC_DONE:
        w_str(&add_field(f, &n, "id")->val, m->sync.id);
        w_uint(&add_field(f, &n, "count")->val, m->sync.count);
        break;
    }
    return n;
}

static void build(struct buf *out, const struct codec_msg *m, const struct mutation *mu)
{
    struct field f[MAX_FIELDS];
    size_t n = msg_fields(m, f);
    size_t kept = 0;

    for (size_t i = 0; i < n; i++) {
        if (!(mu && mu->omit && strcmp(mu->omit, f[i].key) == 0))
            kept++;
    }
    w_map(out, kept + (mu ? mu->nextra : 0));
    for (size_t j = 0; j < n; j++) {
        size_t i = (mu && mu->reverse) ? n - 1 - j : j;
        if (mu && mu->omit && strcmp(mu->omit, f[i].key) == 0)
            continue;
        w_str(out, f[i].key);
        if (mu && mu->replace && strcmp(mu->replace, f[i].key) == 0)
            w_raw(out, mu->raw, mu->rawlen);
        else
            w_raw(out, f[i].val.data, f[i].val.len);
    }
    if (mu && mu->extralen)
        w_raw(out, mu->extra, mu->extralen);
    for (size_t i = 0; i < n; i++)
        buf_release(&f[i].val);
}

/* ------------------------------------------------------------------------
 * Assertion helpers.
 * ------------------------------------------------------------------------ */

static void assert_zeroed(const struct codec_msg *m)
{
    struct codec_msg zero;
    memset(&zero, 0, sizeof(zero));
    assert_memory_equal(m, &zero, sizeof(zero));
}

static void expect_reject(const void *data, size_t len, const char *why)
{
    struct codec_msg m;
    char err[256] = "";

    memset(&m, 0x5a, sizeof(m)); /* decode must not read what was there */
    rt_status st = codec_decode(data, len, &m, err, sizeof(err));
    if (st != RT_REJECT) {
        print_error("expected REJECT (%s), got %s\n", why, rt_status_name(st));
        codec_msg_release(&m);
        fail();
    }
    assert_zeroed(&m);
    if (!strstr(err, why)) {
        print_error("expected an error holding \"%s\", got \"%s\"\n", why, err);
        fail();
    }
}

static void expect_build_reject(const struct codec_msg *m, const struct mutation *mu,
                                const char *why)
{
    struct buf b;
    buf_init(&b, 16u * 1024 * 1024);
    build(&b, m, mu);
    expect_reject(b.data, b.len, why);
    buf_release(&b);
}

/* Decodes and compares with want. */
static void expect_decode(const void *data, size_t len, const struct codec_msg *want)
{
    struct codec_msg got;
    char err[256] = "";
    rt_status st = codec_decode(data, len, &got, err, sizeof(err));
    if (st != RT_OK) {
        print_error("decode failed: %s\n", err);
        fail();
    }
    assert_int_equal(got.v, CODEC_VERSION);
    assert_true(codec_msg_equal(&got, want));
    codec_msg_release(&got);
    assert_zeroed(&got);
}

static void expect_build_ok(const struct codec_msg *m, const struct mutation *mu)
{
    struct buf b;
    buf_init(&b, 16u * 1024 * 1024);
    build(&b, m, mu);
    expect_decode(b.data, b.len, m);
    buf_release(&b);
}

static void encode_ok(const struct codec_msg *m, struct buf *out)
{
    char err[256] = "";
    if (codec_encode(m, out, err, sizeof(err)) != 0) {
        print_error("encode failed: %s\n", err);
        fail();
    }
}

static void roundtrip(const struct codec_msg *m)
{
    struct buf b;
    buf_init(&b, CODEC_MAX_BODY);
    encode_ok(m, &b);
    expect_decode(b.data, b.len, m);
    buf_release(&b);
}

static void expect_encode_fail(const struct codec_msg *m, const char *why)
{
    struct buf b;
    char err[256] = "";
    buf_init(&b, CODEC_MAX_BODY);
    assert_int_equal(codec_encode(m, &b, err, sizeof(err)), -1);
    assert_int_equal(b.len, 0);
    if (!strstr(err, why)) {
        print_error("expected an encode error holding \"%s\", got \"%s\"\n", why, err);
        fail();
    }
    buf_release(&b);
}

/* ------------------------------------------------------------------------
 * Table-driven cases: each row a body and the verdict it must get.
 * ------------------------------------------------------------------------ */

/* The bytes of a table row and their count. */
#define BYTES(...) (const uint8_t[]){__VA_ARGS__}, sizeof((const uint8_t[]){__VA_ARGS__})
#define NROWS(t)   (sizeof(t) / sizeof((t)[0]))

/* The golden message of a kind with the value of one key replaced by raw
 * bytes; refused with why. */
struct replace_case {
    enum codec_kind kind;
    const char *key;
    const uint8_t *raw;
    size_t rawlen;
    const char *why;
};

static void expect_replace_rejects(const struct replace_case *c, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        struct codec_msg m;
        struct mutation mu = {.replace = c[i].key, .raw = c[i].raw, .rawlen = c[i].rawlen};
        golden_msg(&m, c[i].kind);
        expect_build_reject(&m, &mu, c[i].why);
    }
}

/* A whole body of raw bytes, refused with why. */
struct raw_case {
    const uint8_t *bytes;
    size_t len;
    const char *why;
};

static void expect_raw_rejects(const struct raw_case *c, size_t n)
{
    for (size_t i = 0; i < n; i++)
        expect_reject(c[i].bytes, c[i].len, c[i].why);
}

/* The golden message of a kind with nextra whole key/value pairs appended
 * to its map; decoded as the golden message when why is NULL, else
 * refused with why. */
struct extra_case {
    enum codec_kind kind;
    const uint8_t *extra;
    size_t extralen;
    unsigned nextra;
    const char *why;
};

static void expect_extra_cases(const struct extra_case *c, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        struct codec_msg m;
        struct mutation mu = {
            .extra = c[i].extra, .extralen = c[i].extralen, .nextra = c[i].nextra};
        golden_msg(&m, c[i].kind);
        if (c[i].why)
            expect_build_reject(&m, &mu, c[i].why);
        else
            expect_build_ok(&m, &mu);
    }
}

/* Calls check(m, key) for every key of the golden message of every kind. */
static void for_each_golden_key(void (*check)(const struct codec_msg *m, const char *key))
{
    for (size_t i = 0; i < NKINDS; i++) {
        struct codec_msg m;
        struct field f[MAX_FIELDS];
        golden_msg(&m, all_kinds[i]);
        size_t n = msg_fields(&m, f);
        for (size_t k = 0; k < n; k++)
            check(&m, f[k].key);
        for (size_t k = 0; k < n; k++)
            buf_release(&f[k].val);
    }
}

/* The golden message of a kind and its encoded body in b (which the
 * caller releases). */
static void golden_body(enum codec_kind kind, struct codec_msg *m, struct buf *b)
{
    golden_msg(m, kind);
    buf_init(b, CODEC_MAX_BODY);
    encode_ok(m, b);
}

static char *filled(size_t n, char c)
{
    char *s = malloc(n + 1);
    assert_non_null(s);
    memset(s, c, n);
    s[n] = '\0';
    return s;
}

/* n bytes of two-byte UTF-8 characters ("ж"), n even. */
static char *cyrillic(size_t n)
{
    char *s = malloc(n + 1);
    assert_non_null(s);
    for (size_t i = 0; i + 1 < n; i += 2) {
        s[i] = (char)0xd0;
        s[i + 1] = (char)0xb6;
    }
    s[n] = '\0';
    return s;
}

static void read_file(const char *path, struct buf *out)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        print_error("cannot open golden vector %s\n", path);
        fail();
    }
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        w_raw(out, chunk, n);
    fclose(f);
}

static void golden_path(char *out, size_t outlen, const char *dir, enum codec_kind kind)
{
    snprintf(out, outlen, "%s/%s.msgpack", dir, codec_kind_name(kind));
}

/* ------------------------------------------------------------------------
 * Names and lifecycle.
 * ------------------------------------------------------------------------ */

static void test_kind_names(void **state)
{
    enum codec_kind k = CODEC_TASK;
    for (size_t i = 0; i < NKINDS; i++) {
        enum codec_kind parsed = 0;
        assert_int_equal(codec_kind_parse(codec_kind_name(all_kinds[i]), &parsed), 0);
        assert_int_equal(parsed, all_kinds[i]);
    }
    assert_string_equal(codec_kind_name(CODEC_SYNC_DONE), "sync_done");
    assert_string_equal(codec_kind_name((enum codec_kind)0), "unknown");
    assert_string_equal(codec_kind_name((enum codec_kind)99), "unknown");
    assert_int_equal(codec_kind_parse("foo", &k), -1);
    assert_int_equal(codec_kind_parse("", &k), -1);
    assert_int_equal(codec_kind_parse("Task", &k), -1);
    assert_int_equal(codec_kind_parse(NULL, &k), -1);
    assert_int_equal(k, CODEC_TASK);
}

static void test_release_accepts_zeroed(void **state)
{
    struct codec_msg m;
    memset(&m, 0, sizeof(m));
    codec_msg_release(&m);
    codec_msg_release(NULL);
    assert_zeroed(&m);
}

/* ------------------------------------------------------------------------
 * Round trips.
 * ------------------------------------------------------------------------ */

static void test_roundtrip_each_kind(void **state)
{
    for (size_t i = 0; i < NKINDS; i++) {
        struct codec_msg m;
        golden_msg(&m, all_kinds[i]);
        roundtrip(&m);
    }
}

static void test_roundtrip_empty_and_null(void **state)
{
    struct codec_msg m;

    /* NULL text encodes as "", and decodes as an allocated "". */
    codec_msg_init(&m, CODEC_TASK);
    m.client = "c";
    m.task = 1;
    m.seq = 1;
    m.fwd.department = 1;
    roundtrip(&m);

    struct buf b;
    struct codec_msg got;
    char err[256];
    buf_init(&b, CODEC_MAX_BODY);
    encode_ok(&m, &b);
    assert_int_equal(codec_decode(b.data, b.len, &got, err, sizeof(err)), RT_OK);
    assert_non_null(got.fwd.name);
    assert_string_equal(got.fwd.name, "");
    assert_string_equal(got.fwd.deadline, "");
    codec_msg_release(&got);
    buf_release(&b);

    m.fwd.name = "";
    m.fwd.note = "";
    m.fwd.status = 0;
    roundtrip(&m);

    codec_msg_init(&m, CODEC_STATE);
    m.client = "c";
    m.task = INT64_MAX;
    m.seq = UINT64_MAX;
    m.ts = INT64_MAX;
    m.state.performer_id = INT64_MAX;
    roundtrip(&m); /* no notes, no performer */

    codec_msg_init(&m, CODEC_SYNC_DONE);
    m.client = "c";
    m.sync.id = "x";
    m.sync.count = UINT64_MAX;
    roundtrip(&m);
}

static void test_roundtrip_special_text(void **state)
{
    static const char *const texts[] = {
        "a&b=c+d%20e%",
        "line1\nline2\r\n",
        "tab\there \"quoted\" 'single' \\ back",
        "emoji \xf0\x9f\x98\x80 and CJK \xe4\xb8\xad\xe6\x96\x87",
        "max code point \xf4\x8f\xbf\xbf",
        "\x01\x02\x1f control characters are text too",
    };
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
        struct codec_msg m;
        golden_msg(&m, CODEC_TASK);
        m.fwd.name = (char *)texts[i];
        m.fwd.note = (char *)texts[i];
        m.fwd.item = (char *)texts[i];
        m.fwd.account = (char *)texts[i];
        roundtrip(&m);

        const char *notes[] = {texts[i], texts[i]};
        golden_msg(&m, CODEC_STATE);
        m.state.performer = (char *)texts[i];
        m.state.notes = (char **)notes;
        m.state.nnotes = 2;
        roundtrip(&m);
    }
}

static void test_roundtrip_max_lengths(void **state)
{
    struct codec_msg m;
    char *client = filled(CODEC_MAX_CLIENT, 'c');
    char *id = filled(CODEC_MAX_ID, 'i');
    char *name = cyrillic(CODEC_MAX_NAME);
    char *type = filled(CODEC_MAX_TYPE, 't');
    char *note = cyrillic(CODEC_MAX_NOTE);
    char *item = filled(CODEC_MAX_ITEM, 'i');
    char *account = cyrillic(CODEC_MAX_ACCOUNT);
    char *performer = cyrillic(CODEC_MAX_PERFORMER);
    char *entry = cyrillic(CODEC_MAX_NOTE_ENTRY);
    char **notes = calloc(CODEC_MAX_NOTES, sizeof(*notes));
    assert_non_null(notes);

    golden_msg(&m, CODEC_TASK);
    m.client = client;
    m.fwd.name = name;
    m.fwd.type = type;
    m.fwd.note = note;
    m.fwd.item = item;
    m.fwd.account = account;
    roundtrip(&m);

    /* The most entries, a few of them at their cap, the body under its. */
    for (size_t i = 0; i < CODEC_MAX_NOTES; i++)
        notes[i] = i < 8 ? entry : "n";
    golden_msg(&m, CODEC_STATE);
    m.client = client;
    m.state.performer = performer;
    m.state.notes = notes;
    m.state.nnotes = CODEC_MAX_NOTES;
    roundtrip(&m);

    golden_msg(&m, CODEC_SYNC_DONE);
    m.client = client;
    m.sync.id = id;
    roundtrip(&m);

    free(notes);
    free(entry);
    free(performer);
    free(account);
    free(item);
    free(note);
    free(type);
    free(name);
    free(id);
    free(client);
}

/* The order of keys on the wire does not matter to the decoder. */
static void test_decode_any_key_order(void **state)
{
    struct mutation mu = {.reverse = 1};
    for (size_t i = 0; i < NKINDS; i++) {
        struct codec_msg m;
        golden_msg(&m, all_kinds[i]);
        expect_build_ok(&m, &mu);
    }
}

/* ------------------------------------------------------------------------
 * Encoding refusals.
 * ------------------------------------------------------------------------ */

/* A text key of each kind one byte over its cap, and the reason that the
 * encoder (test_encode_over_caps) and the decoder (test_decode_over_caps)
 * both give. */
#define FIELD(f) offsetof(struct codec_msg, f)
static const struct {
    enum codec_kind kind;
    const char *key;
    size_t field; /* where the key's text is in struct codec_msg */
    size_t cap;
    const char *why;
} over_caps[] = {
    {CODEC_TASK, "client", FIELD(client), CODEC_MAX_CLIENT, "key \"client\" is 65 bytes, cap 64"},
    {CODEC_TASK, "name", FIELD(fwd.name), CODEC_MAX_NAME, "key \"name\" is 4097 bytes, cap 4096"},
    {CODEC_TASK, "type", FIELD(fwd.type), CODEC_MAX_TYPE, "key \"type\" is 129 bytes, cap 128"},
    {CODEC_TASK, "note", FIELD(fwd.note), CODEC_MAX_NOTE,
     "key \"note\" is 1048577 bytes, cap 1048576"},
    {CODEC_TASK, "deadline", FIELD(fwd.deadline), CODEC_MAX_DEADLINE,
     "key \"deadline\" is 33 bytes, cap 32"},
    {CODEC_TASK, "item", FIELD(fwd.item), CODEC_MAX_ITEM, "key \"item\" is 4097 bytes, cap 4096"},
    {CODEC_TASK, "account", FIELD(fwd.account), CODEC_MAX_ACCOUNT,
     "key \"account\" is 4097 bytes, cap 4096"},
    {CODEC_STATE, "performer", FIELD(state.performer), CODEC_MAX_PERFORMER,
     "key \"performer\" is 1025 bytes, cap 1024"},
    {CODEC_SYNC, "id", FIELD(sync.id), CODEC_MAX_ID, "key \"id\" is 65 bytes, cap 64"},
};

static void test_encode_over_caps(void **state)
{
    struct codec_msg m;
    char *big = filled(CODEC_MAX_NOTE + 1, 'x');

    for (size_t i = 0; i < NROWS(over_caps); i++) {
        golden_msg(&m, over_caps[i].kind);
        big[over_caps[i].cap + 1] = '\0';
        *(char **)((char *)&m + over_caps[i].field) = big;
        expect_encode_fail(&m, over_caps[i].why);
        big[over_caps[i].cap + 1] = 'x';
    }

    const char *entries[2] = {"ok", big};
    big[CODEC_MAX_NOTE_ENTRY + 1] = '\0';
    golden_msg(&m, CODEC_STATE);
    m.state.notes = (char **)entries;
    m.state.nnotes = 2;
    expect_encode_fail(&m, "key \"notes\" entry 1 is 65537 bytes, cap 65536");
    big[CODEC_MAX_NOTE_ENTRY + 1] = 'x';

    golden_msg(&m, CODEC_STATE);
    m.state.nnotes = CODEC_MAX_NOTES + 1;
    m.state.notes = calloc(m.state.nnotes, sizeof(char *));
    assert_non_null(m.state.notes);
    expect_encode_fail(&m, "key \"notes\" has 1001 entries, cap 1000");
    free(m.state.notes);

    free(big);
}

/* Every field under its cap, the whole over the body cap. */
static void test_encode_body_cap(void **state)
{
    struct codec_msg m;
    char *entry = filled(CODEC_MAX_NOTE_ENTRY, 'n');
    size_t n = CODEC_MAX_BODY / CODEC_MAX_NOTE_ENTRY + 1;
    char **notes = calloc(n, sizeof(*notes));
    assert_non_null(notes);
    for (size_t i = 0; i < n; i++)
        notes[i] = entry;

    golden_msg(&m, CODEC_STATE);
    m.state.notes = notes;
    m.state.nnotes = n;
    expect_encode_fail(&m, "encoded body passes the cap of 4194304 bytes");

    /* One entry fewer fits. */
    m.state.nnotes = n - 2;
    roundtrip(&m);

    free(notes);
    free(entry);
}

/* A number out of its range, a required text empty, notes without their
 * array. */
static void expect_encode_refuses_values(void)
{
    struct codec_msg m;

    golden_msg(&m, CODEC_TASK);
    m.client = NULL;
    expect_encode_fail(&m, "key \"client\" is empty");
    m.client = "";
    expect_encode_fail(&m, "key \"client\" is empty");

    golden_msg(&m, CODEC_TASK);
    m.kind = (enum codec_kind)0;
    expect_encode_fail(&m, "unknown kind 0");
    m.kind = (enum codec_kind)5;
    expect_encode_fail(&m, "unknown kind 5");

    golden_msg(&m, CODEC_TASK);
    m.task = 0;
    expect_encode_fail(&m, "key \"task\" is 0, must be > 0");
    m.task = -5;
    expect_encode_fail(&m, "key \"task\" is -5, must be > 0");

    golden_msg(&m, CODEC_STATE);
    m.seq = 0;
    expect_encode_fail(&m, "key \"seq\" is 0, must be > 0");

    golden_msg(&m, CODEC_SYNC);
    m.task = 7;
    expect_encode_fail(&m, "key \"task\" is 7, must be 0 for sync");

    golden_msg(&m, CODEC_SYNC);
    m.ts = -1;
    expect_encode_fail(&m, "key \"ts\" is -1, must be >= 0");

    golden_msg(&m, CODEC_SYNC);
    m.sync.id = "";
    expect_encode_fail(&m, "key \"id\" is empty");
    golden_msg(&m, CODEC_SYNC_DONE);
    m.sync.id = NULL;
    expect_encode_fail(&m, "key \"id\" is empty");

    golden_msg(&m, CODEC_TASK);
    m.fwd.department = 0;
    expect_encode_fail(&m, "key \"department\" is 0, must be > 0");

    golden_msg(&m, CODEC_TASK);
    m.fwd.status = 3;
    expect_encode_fail(&m, "key \"status\" is 3, must be 0, 1 or 2");
    golden_msg(&m, CODEC_STATE);
    m.state.status = -1;
    expect_encode_fail(&m, "key \"status\" is -1, must be 0, 1 or 2");

    golden_msg(&m, CODEC_STATE);
    m.state.performer_id = -1;
    expect_encode_fail(&m, "key \"performer_id\" is -1, must be >= 0");

    golden_msg(&m, CODEC_STATE);
    m.state.notes = NULL;
    m.state.nnotes = 2;
    expect_encode_fail(&m, "key \"notes\" has 2 entries but no array");
}

static void expect_encode_refuses_deadlines(void)
{
    static const char *const bad_deadlines[] = {
        "2024-05-01",           "2024-05-01T12:30:00", "2024-13-01 12:30:00",
        "2024-00-01 12:30:00",  "2024-05-32 12:30:00", "2024-05-01 24:00:00",
        "2024-05-01 12:60:00",  "2024-05-01 12:30:60", "2024-05-01 12:30:00 ",
        "２０２４-05-01 12:30", "abcd-ef-gh ij:kl:mn",
    };
    for (size_t i = 0; i < NROWS(bad_deadlines); i++) {
        struct codec_msg m;
        golden_msg(&m, CODEC_TASK);
        m.fwd.deadline = (char *)bad_deadlines[i];
        expect_encode_fail(&m, "key \"deadline\"");
    }
}

static void expect_encode_refuses_bad_utf8(void)
{
    /* Overlong "/", a UTF-16 surrogate, a byte that never occurs, a cut
     * sequence, a lone continuation byte, a code point past U+10FFFF. */
    static const char *const bad_utf8[] = {
        "a\xc0\xaf", "\xed\xa0\x80",     "x\xf5\x80\x80\x80", "cut \xe2\x82",
        "\x80",      "\xf4\x90\x80\x80", "\xe0\x80\xaf",
    };
    for (size_t i = 0; i < NROWS(bad_utf8); i++) {
        struct codec_msg m;
        golden_msg(&m, CODEC_TASK);
        m.fwd.name = (char *)bad_utf8[i];
        expect_encode_fail(&m, "key \"name\" is not valid UTF-8");
        const char *notes[] = {"fine", bad_utf8[i]};
        golden_msg(&m, CODEC_STATE);
        m.state.notes = (char **)notes;
        m.state.nnotes = 2;
        expect_encode_fail(&m, "key \"notes\" entry 1 is not valid UTF-8");
    }
}

static void test_encode_invalid_values(void **state)
{
    expect_encode_refuses_values();
    expect_encode_refuses_deadlines();
    expect_encode_refuses_bad_utf8();
}

/* encode appends, refuses to pass out's cap and leaves out as it was. */
static void test_encode_output_buffer(void **state)
{
    struct codec_msg m;
    struct buf whole, small;
    char err[256] = "";

    golden_msg(&m, CODEC_SYNC);
    buf_init(&whole, CODEC_MAX_BODY);
    encode_ok(&m, &whole);

    buf_init(&small, whole.len + 2);
    w_raw(&small, "AB", 2);
    encode_ok(&m, &small);
    assert_int_equal(small.len, whole.len + 2);
    assert_memory_equal(small.data, "AB", 2);
    assert_memory_equal(small.data + 2, whole.data, whole.len);

    buf_reset(&small);
    w_raw(&small, "ABC", 3);
    assert_int_equal(codec_encode(&m, &small, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "output buffer refused"));
    assert_int_equal(small.len, 3);
    assert_memory_equal(small.data, "ABC", 3);

    /* No error buffer is fine too. */
    m.sync.id = "";
    assert_int_equal(codec_encode(&m, &small, NULL, 0), -1);
    assert_int_equal(codec_encode(&m, &small, err, 1), -1);
    assert_string_equal(err, "");

    buf_release(&small);
    buf_release(&whole);
}

/* Same message, same bytes. */
static void test_encode_deterministic(void **state)
{
    for (size_t i = 0; i < NKINDS; i++) {
        struct codec_msg m;
        struct buf a, b;
        golden_msg(&m, all_kinds[i]);
        buf_init(&a, CODEC_MAX_BODY);
        buf_init(&b, CODEC_MAX_BODY);
        encode_ok(&m, &a);
        m.v = 77; /* ignored: the encoder always writes version 1 */
        encode_ok(&m, &b);
        assert_int_equal(a.len, b.len);
        assert_memory_equal(a.data, b.data, a.len);
        buf_release(&a);
        buf_release(&b);
    }
}

/* ------------------------------------------------------------------------
 * Golden vectors.
 * ------------------------------------------------------------------------ */

static void test_golden_vectors(void **state)
{
    for (size_t i = 0; i < NKINDS; i++) {
        struct codec_msg m;
        struct buf file, enc, indep;
        char path[512];

        golden_msg(&m, all_kinds[i]);
        golden_path(path, sizeof(path), GOLDEN_DIR, all_kinds[i]);
        buf_init(&file, CODEC_MAX_BODY);
        buf_init(&enc, CODEC_MAX_BODY);
        buf_init(&indep, CODEC_MAX_BODY);
        read_file(path, &file);
        encode_ok(&m, &enc);
        build(&indep, &m, NULL);

        /* The file, the encoder and the independent writer agree. */
        assert_int_equal(file.len, enc.len);
        assert_memory_equal(file.data, enc.data, enc.len);
        assert_int_equal(indep.len, enc.len);
        assert_memory_equal(indep.data, enc.data, enc.len);
        expect_decode(file.data, file.len, &m);

        buf_release(&indep);
        buf_release(&enc);
        buf_release(&file);
    }
}

/* The first bytes of the task vector, read by hand from the spec's table. */
static void test_golden_task_by_hand(void **state)
{
    static const uint8_t head[] = {
        0x8f,                                                 /* fixmap, 15 pairs */
        0xa1, 'v',  0x01,                                     /* "v": 1 */
        0xa4, 'k',  'i',  'n',  'd',                          /* "kind": */
        0xa4, 't',  'a',  's',  'k',                          /*   "task" */
        0xa6, 'c',  'l',  'i',  'e',  'n',  't',              /* "client": */
        0xa1, '7',                                            /*   "7" */
        0xa4, 't',  'a',  's',  'k',                          /* "task": */
        0xcd, 0x04, 0x12,                                     /*   uint16 1042 */
        0xa3, 's',  'e',  'q',  0x03,                         /* "seq": 3 */
        0xa2, 't',  's',                                      /* "ts": */
        0xcf, 0x00, 0x00, 0x01, 0x8b, 0xcf, 0xe5, 0x68, 0x7b, /* uint64 1700000000123 */
        0xaa, 'd',  'e',  'p',  'a',  'r',  't',  'm',  'e',  'n', 't', 0x0c, /* "department": 12 */
        0xa4, 'n',  'a',  'm',  'e',                                          /* "name": */
        0xd9, /*   str8 (the name is over 31 bytes) */
    };
    static const uint8_t tail[] = {
        0xa6, 's', 't', 'a', 't', 'u', 's', 0x01,       /* "status": 1 */
        0xa7, 'r', 'e', 'v', '_', 's', 'e', 'q',  0xcc, /* "rev_seq": */
        0xc8,                                           /*   uint8 200 */
    };
    static const uint8_t sync_done_head[] = {0x88, 0xa1, 'v', 0x01}; /* fixmap, 8 pairs */
    struct buf file;
    char path[512];

    buf_init(&file, CODEC_MAX_BODY);
    golden_path(path, sizeof(path), GOLDEN_DIR, CODEC_TASK);
    read_file(path, &file);
    assert_true(file.len > sizeof(head) + sizeof(tail));
    assert_memory_equal(file.data, head, sizeof(head));
    assert_memory_equal(file.data + file.len - sizeof(tail), tail, sizeof(tail));

    buf_reset(&file);
    golden_path(path, sizeof(path), GOLDEN_DIR, CODEC_SYNC_DONE);
    read_file(path, &file);
    assert_memory_equal(file.data, sync_done_head, sizeof(sync_done_head));
    /* ... "count": uint16 1234 ends the body. */
    static const uint8_t count[] = {0xa5, 'c', 'o', 'u', 'n', 't', 0xcd, 0x04, 0xd2};
    assert_memory_equal(file.data + file.len - sizeof(count), count, sizeof(count));
    buf_release(&file);
}

/* ------------------------------------------------------------------------
 * Decoding refusals.
 * ------------------------------------------------------------------------ */

static void expect_missing_refused(const struct codec_msg *m, const char *key)
{
    char why[64];
    struct mutation mu = {.omit = key};
    if (strcmp(key, "fwd_seq") == 0 || strcmp(key, "rev_seq") == 0)
        return; /* optional: test_optional_fwd_seq, test_optional_rev_seq */
    snprintf(why, sizeof(why), "missing required key \"%s\"", key);
    expect_build_reject(m, &mu, why);
}

static void test_missing_each_key(void **state)
{
    for_each_golden_key(expect_missing_refused);
}

/* A seq the other side had applied, optional on the wire: "fwd_seq" of a
 * state (a server older than the key does not send it) and "rev_seq" of a
 * task message (likewise a client). Absent, it decodes as 0 (unknown);
 * when present it must be a non-negative integer, and it is part of what
 * makes two messages equal. One row per key; cmocka runs each as a test of
 * its own (main). */
struct optional_seq {
    enum codec_kind kind;
    const char *key;
    uint64_t *(*field)(struct codec_msg *m);
};

static uint64_t *fwd_seq_of(struct codec_msg *m)
{
    return &m->state.fwd_seq;
}

static uint64_t *rev_seq_of(struct codec_msg *m)
{
    return &m->fwd.rev_seq;
}

static const struct optional_seq optional_seqs[] = {
    {CODEC_STATE, "fwd_seq", fwd_seq_of},
    {CODEC_TASK, "rev_seq", rev_seq_of},
};

static void test_optional_seq(void **state)
{
    const struct optional_seq *c = *state;
    struct codec_msg m, other;
    struct mutation omit = {.omit = c->key};

    golden_msg(&m, c->kind);
    uint64_t golden = *c->field(&m);
    *c->field(&m) = 0;
    expect_build_ok(&m, &omit);

    /* Omitted, it does not decode as the golden message's value, and the
     * rest of the message decodes as it was. */
    struct buf b;
    struct codec_msg got;
    char err[256] = "";
    buf_init(&b, 65536);
    build(&b, &m, &omit);
    assert_int_equal(codec_decode(b.data, b.len, &got, err, sizeof(err)), RT_OK);
    assert_int_equal(*c->field(&got), 0);
    assert_true(codec_msg_equal(&got, &m));
    *c->field(&m) = golden;
    assert_false(codec_msg_equal(&got, &m));
    codec_msg_release(&got);
    buf_release(&b);

    struct mutation big = {
        .replace = c->key, .raw = "\xcf\xff\xff\xff\xff\xff\xff\xff\xff", .rawlen = 9};
    *c->field(&m) = UINT64_MAX;
    expect_build_ok(&m, &big);
    roundtrip(&m);

    char why[64];
    struct mutation negative = {.replace = c->key, .raw = "\xff", .rawlen = 1};
    snprintf(why, sizeof(why), "key \"%s\" is -1, must be >= 0", c->key);
    expect_build_reject(&m, &negative, why);

    golden_msg(&m, c->kind);
    golden_msg(&other, c->kind);
    *c->field(&other) = *c->field(&m) + 1;
    assert_false(codec_msg_equal(&m, &other));
}

/* A value of each type, and which of the three types a key may want it
 * is. */
static const struct {
    const uint8_t *raw;
    size_t len;
    int is_int, is_str, is_arr;
} wrong_type_values[] = {
    {BYTES(0xc0), 0, 0, 0},                                                 /* nil */
    {BYTES(0xc3), 0, 0, 0},                                                 /* true */
    {BYTES(0xcb, 0x3f, 0xf0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00), 0, 0, 0}, /* float 64 */
    {BYTES(0xca, 0x3f, 0x80, 0x00, 0x00), 0, 0, 0},                         /* float 32 */
    {BYTES(0xa1, '1'), 0, 1, 0},                                            /* str */
    {BYTES(0x01), 1, 0, 0},                                                 /* int */
    {BYTES(0xc4, 0x01, 'x'), 0, 0, 0},                                      /* bin */
    {BYTES(0x91, 0xa1, 'x'), 0, 0, 1},                                      /* array */
    {BYTES(0x81, 0xa1, 'k', 0x01), 0, 0, 0},                                /* map */
    {BYTES(0xd4, 0x01, 0x00), 0, 0, 0},                                     /* fixext */
};

static void expect_wrong_types_refused(const struct codec_msg *m, const char *key)
{
    int want_str = strcmp(key, "kind") == 0 || strcmp(key, "client") == 0 ||
                   strcmp(key, "name") == 0 || strcmp(key, "type") == 0 ||
                   strcmp(key, "note") == 0 || strcmp(key, "deadline") == 0 ||
                   strcmp(key, "item") == 0 || strcmp(key, "account") == 0 ||
                   strcmp(key, "performer") == 0 || strcmp(key, "id") == 0;
    int want_arr = strcmp(key, "notes") == 0;
    int want_int = !want_str && !want_arr;
    for (size_t j = 0; j < NROWS(wrong_type_values); j++) {
        if ((want_str && wrong_type_values[j].is_str) ||
            (want_arr && wrong_type_values[j].is_arr) || (want_int && wrong_type_values[j].is_int))
            continue;
        char why[64];
        struct mutation mu = {
            .replace = key, .raw = wrong_type_values[j].raw, .rawlen = wrong_type_values[j].len};
        snprintf(why, sizeof(why), "key \"%s\" is not %s", key,
                 want_str   ? "a string"
                 : want_arr ? "an array"
                            : "an integer");
        expect_build_reject(m, &mu, why);
    }
}

/* Every key, given a value of each type it must not have. */
static void test_wrong_types(void **state)
{
    for_each_golden_key(expect_wrong_types_refused);

    /* An entry of "notes" that is not a string. */
    const struct replace_case notes[] = {
        {CODEC_STATE, "notes", BYTES(0x92, 0xa1, 'x', 0x05),
         "key \"notes\" entry 1 is not a string"},
    };
    expect_replace_rejects(notes, NROWS(notes));
}

/* Every integer width is accepted when the value fits; ranges are checked. */
static void test_integer_encodings(void **state)
{
    const struct {
        const uint8_t *raw;
        size_t len;
    } one[] = {
        {BYTES(0x01)},
        {BYTES(0xcc, 0x01)},
        {BYTES(0xcd, 0x00, 0x01)},
        {BYTES(0xce, 0x00, 0x00, 0x00, 0x01)},
        {BYTES(0xcf, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01)},
        {BYTES(0xd0, 0x01)},
        {BYTES(0xd1, 0x00, 0x01)},
        {BYTES(0xd2, 0x00, 0x00, 0x00, 0x01)},
        {BYTES(0xd3, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01)},
    };
    static const char *const keys_of_one[] = {"v", "status", "seq", "task"};
    struct codec_msg m;

    for (size_t i = 0; i < NROWS(one); i++) {
        for (size_t k = 0; k < NROWS(keys_of_one); k++) {
            /* v, status and seq equal 1 in this message, and so does task
             * when it is the key replaced. */
            golden_msg(&m, CODEC_TASK);
            m.seq = 1;
            if (strcmp(keys_of_one[k], "task") == 0)
                m.task = 1;
            struct mutation mu = {
                .replace = keys_of_one[k], .raw = one[i].raw, .rawlen = one[i].len};
            expect_build_ok(&m, &mu);
        }
    }

    /* int64 holding the largest value, uint64 holding its largest. */
    static const uint8_t i64_max[] = {0xd3, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    static const uint8_t u64_max[] = {0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    golden_msg(&m, CODEC_TASK);
    m.task = INT64_MAX;
    struct mutation mu = {.replace = "task", .raw = i64_max, .rawlen = sizeof(i64_max)};
    expect_build_ok(&m, &mu);
    golden_msg(&m, CODEC_TASK);
    m.seq = UINT64_MAX;
    mu = (struct mutation){.replace = "seq", .raw = u64_max, .rawlen = sizeof(u64_max)};
    expect_build_ok(&m, &mu);

    const struct replace_case refused[] = {
        {CODEC_TASK, "task", BYTES(0xcf, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00),
         "key \"task\" is 9223372036854775808, out of range"},
        {CODEC_TASK, "task", BYTES(0xd3, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00),
         "key \"task\" is -9223372036854775808, must be > 0"},
        {CODEC_TASK, "seq", BYTES(0xff), "key \"seq\" is -1, must be >= 0"},
        {CODEC_SYNC, "ts", BYTES(0xd0, 0x80), "key \"ts\" is -128, must be >= 0"},
        {CODEC_SYNC, "ts", BYTES(0xd1, 0xff, 0xfe), "key \"ts\" is -2, must be >= 0"},
        {CODEC_SYNC, "ts", BYTES(0xd2, 0x80, 0x00, 0x00, 0x00),
         "key \"ts\" is -2147483648, must be >= 0"},
        {CODEC_SYNC_DONE, "count", BYTES(0xff), "key \"count\" is -1, must be >= 0"},
        {CODEC_STATE, "status", BYTES(0x03), "key \"status\" is 3, must be 0, 1 or 2"},
        /* 65538 would be 2 if it were narrowed before the range check. */
        {CODEC_STATE, "status", BYTES(0xce, 0x00, 0x01, 0x00, 0x02),
         "key \"status\" is 65538, must be 0, 1 or 2"},
        {CODEC_STATE, "performer_id", BYTES(0xff), "key \"performer_id\" is -1, must be >= 0"},
        {CODEC_TASK, "department", BYTES(0xff), "key \"department\" is -1, must be > 0"},
        {CODEC_SYNC, "task", BYTES(0x03), "key \"task\" is 3, must be 0 for sync"},
    };
    expect_replace_rejects(refused, NROWS(refused));
}

static void test_version(void **state)
{
    const struct replace_case refused[] = {
        {CODEC_TASK, "v", BYTES(0x02), "version 2 not supported"},
        {CODEC_TASK, "v", BYTES(0x00), "version 0 not supported"},
        {CODEC_TASK, "v", BYTES(0xff), "version -1 not supported"},
        {CODEC_TASK, "v", BYTES(0xcd, 0x01, 0x00), "version 256 not supported"},
    };
    expect_replace_rejects(refused, NROWS(refused));

    /* The version is checked before anything else the kind needs. */
    struct codec_msg m;
    struct mutation mu = {.replace = "v", .raw = "\x02", .rawlen = 1, .omit = "client"};
    golden_msg(&m, CODEC_TASK);
    expect_build_reject(&m, &mu, "version 2 not supported");
}

static void test_unknown_kind(void **state)
{
    const struct replace_case refused[] = {
        {CODEC_SYNC, "kind", BYTES(0xa3, 'f', 'o', 'o'), "unknown kind \"foo\""},
        {CODEC_SYNC, "kind", BYTES(0xa0), "unknown kind \"\""},
        {CODEC_SYNC, "kind", BYTES(0xa4, 'T', 'A', 'S', 'K'), "unknown kind \"TASK\""},
        /* Text from outside is shown tamed, never raw. */
        {CODEC_SYNC, "kind", BYTES(0xa4, 'a', '\n', '"', 'b'), "unknown kind \"a??b\""},
        {CODEC_SYNC, "kind", BYTES(0xa5, 't', 'a', 's', 'k', 0x00),
         "key \"kind\" holds a NUL byte"},
    };
    expect_replace_rejects(refused, NROWS(refused));

    /* 40 bytes, shown cut to 32. */
    uint8_t longkind[1 + 1 + 40];
    longkind[0] = 0xd9;
    longkind[1] = 40;
    memset(longkind + 2, 'k', 40);
    struct codec_msg m;
    struct mutation mu = {.replace = "kind", .raw = longkind, .rawlen = sizeof(longkind)};
    golden_msg(&m, CODEC_SYNC);
    expect_build_reject(&m, &mu, "unknown kind \"kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk...\"");
}

static void test_decode_over_caps(void **state)
{
    struct codec_msg m;
    char *big = filled(CODEC_MAX_NOTE + 1, 'x');
    struct buf raw;
    buf_init(&raw, 2u * 1024 * 1024);

    for (size_t i = 0; i < NROWS(over_caps); i++) {
        golden_msg(&m, over_caps[i].kind);
        buf_reset(&raw);
        w_strn(&raw, big, over_caps[i].cap + 1);
        struct mutation mu = {.replace = over_caps[i].key, .raw = raw.data, .rawlen = raw.len};
        expect_build_reject(&m, &mu, over_caps[i].why);
    }

    /* One entry of "notes" over its cap. */
    golden_msg(&m, CODEC_STATE);
    buf_reset(&raw);
    w_arr(&raw, 2);
    w_str(&raw, "ok");
    w_strn(&raw, big, CODEC_MAX_NOTE_ENTRY + 1);
    struct mutation mu = {.replace = "notes", .raw = raw.data, .rawlen = raw.len};
    expect_build_reject(&m, &mu, "key \"notes\" entry 1 is 65537 bytes, cap 65536");

    /* Too many entries (the array cap applies before any is read). */
    buf_reset(&raw);
    w_arr(&raw, CODEC_MAX_NOTES + 1);
    for (size_t i = 0; i <= CODEC_MAX_NOTES; i++)
        w_str(&raw, "n");
    mu = (struct mutation){.replace = "notes", .raw = raw.data, .rawlen = raw.len};
    expect_build_reject(&m, &mu, "array of 1001 elements");

    /* A body over the body cap is refused before it is read. */
    uint8_t *huge = calloc(1, CODEC_MAX_BODY + 1);
    assert_non_null(huge);
    huge[0] = 0x80;
    expect_reject(huge, CODEC_MAX_BODY + 1, "body is 4194305 bytes, cap 4194304");
    free(huge);

    buf_release(&raw);
    free(big);
}

static void test_text_checks_on_decode(void **state)
{
    const struct replace_case refused[] = {
        {CODEC_TASK, "name", BYTES(0xa3, 'a', 0x00, 'b'), "key \"name\" holds a NUL byte"},
        {CODEC_TASK, "note", BYTES(0xa2, 0xc0, 0xaf), "key \"note\" is not valid UTF-8 (byte 0)"},
        {CODEC_TASK, "item", BYTES(0xa3, 0xed, 0xa0, 0x80), "key \"item\" is not valid UTF-8"},
        {CODEC_TASK, "account", BYTES(0xa2, 0xe2, 0x82), "key \"account\" is not valid UTF-8"},
        {CODEC_TASK, "deadline", BYTES(0xaa, '2', '0', '2', '4', '-', '0', '5', '-', '0', '1'),
         "key \"deadline\" is not empty nor"},
        {CODEC_TASK, "client", BYTES(0xa0), "key \"client\" is empty"},
        {CODEC_STATE, "notes", BYTES(0x91, 0xa2, 'x', 0x00),
         "key \"notes\" entry 0 holds a NUL byte"},
        {CODEC_SYNC_DONE, "id", BYTES(0xa0), "key \"id\" is empty"},
    };
    expect_replace_rejects(refused, NROWS(refused));
}

static void test_trailing_bytes(void **state)
{
    for (size_t i = 0; i < NKINDS; i++) {
        struct codec_msg m;
        struct buf b;
        golden_body(all_kinds[i], &m, &b);
        w_byte(&b, 0xc0);
        expect_reject(b.data, b.len, "1 trailing bytes after the map");
        encode_ok(&m, &b); /* a second whole body after the first */
        expect_reject(b.data, b.len, "trailing bytes after the map");
        buf_release(&b);
    }
}

/* Every proper prefix of a valid body is refused, and none crashes. */
static void test_truncated_prefixes(void **state)
{
    for (size_t i = 0; i < NKINDS; i++) {
        struct codec_msg m;
        struct buf b;
        golden_body(all_kinds[i], &m, &b);
        for (size_t len = 0; len < b.len; len++) {
            /* A copy of exactly len bytes, so ASan sees any read past it. */
            uint8_t *cut = malloc(len ? len : 1);
            assert_non_null(cut);
            memcpy(cut, b.data, len);
            expect_reject(cut, len, len == 0 ? "empty body" : "");
            free(cut);
        }
        buf_release(&b);
    }
    expect_reject(NULL, 0, "empty body");
    expect_reject(NULL, 5, "empty body");
}

/* Declared lengths far past the input are refused without allocating. */
static void test_huge_declared_lengths(void **state)
{
    const struct raw_case tops[] = {
        {BYTES(0xdf, 0xff, 0xff, 0xff, 0xff), "map of 4294967295 keys at byte 0, cap 64"},
        {BYTES(0xde, 0xff, 0xff), "map of 65535 keys"},
        {BYTES(0xdd, 0xff, 0xff, 0xff, 0xff), "array of 4294967295 elements"},
        {BYTES(0xdb, 0xff, 0xff, 0xff, 0xff), "string of 4294967295 bytes at byte 0 runs past"},
        {BYTES(0xc6, 0xff, 0xff, 0xff, 0xff), "truncated body"},
        {BYTES(0xc9, 0xff, 0xff, 0xff, 0xff, 0x01), "truncated body"},
        {BYTES(0x81, 0xa1, 'x', 0xdb, 0x7f, 0xff, 0xff, 0xff), "runs past the end"},
        {BYTES(0x81, 0xa1, 'x', 0xdd, 0xff, 0xff, 0xff, 0xff), "array of 4294967295 elements"},
        {BYTES(0x81, 0xa1, 'x', 0xdf, 0xff, 0xff, 0xff, 0xff), "map of 4294967295 keys"},
        {BYTES(0x81, 0xa1, 'x', 0xc6, 0xff, 0xff, 0xff, 0xff), "truncated body"},
        {BYTES(0x81, 0xa1, 'x', 0xc8, 0xff, 0xff, 0x01), "truncated body"},
        {BYTES(0x81, 0xa1, 'x', 0xd8, 0x01), "truncated body"},
        {BYTES(0x81, 0xa1, 'x', 0xcb, 0x00), "truncated body"},
        {BYTES(0x81, 0xa1, 'x', 0xcf, 0x00), "truncated body"},
        {BYTES(0x81, 0xda, 0xff, 0xff, 'x'), "runs past the end"},
        {BYTES(0x81, 0xa1, 'x', 0x9f), "truncated body"},
    };
    expect_raw_rejects(tops, NROWS(tops));

    /* Inside a known key of an otherwise valid message. */
    const struct replace_case inside[] = {
        {CODEC_STATE, "notes", BYTES(0xdd, 0xff, 0xff, 0xff, 0xff), "array of 4294967295 elements"},
        {CODEC_TASK, "name", BYTES(0xdb, 0xff, 0xff, 0xff, 0xf0), "string of 4294967280 bytes"},
    };
    expect_replace_rejects(inside, NROWS(inside));
}

static void test_structure(void **state)
{
    const struct raw_case refused[] = {
        {BYTES(0x90), "body is not a map"},
        {BYTES(0x01), "body is not a map"},
        {BYTES(0xa1, 'x'), "body is not a map"},
        {BYTES(0x80), "missing required key \"v\""},
        {BYTES(0x81, 0xa1, 'x', 0xc1), "invalid msgpack byte 0xc1 at byte 3"},
        {BYTES(0x81, 0x01, 0x01), "map key at byte 1 is not a string"},
        {BYTES(0x81, 0xc0, 0x01), "map key at byte 1 is not a string"},
    };
    expect_raw_rejects(refused, NROWS(refused));

    /* The same known key twice ("seq": 3, as the golden task has). */
    const struct extra_case twice[] = {
        {CODEC_TASK, BYTES(0xa3, 's', 'e', 'q', 0x03), 1, "duplicate key \"seq\""},
    };
    expect_extra_cases(twice, NROWS(twice));

    /* 65 pairs: 15 known, 50 unknown. */
    struct codec_msg m;
    struct buf extra;
    buf_init(&extra, 1024);
    golden_msg(&m, CODEC_TASK);
    for (int i = 0; i < 50; i++) {
        char key[16];
        snprintf(key, sizeof(key), "x%d", i);
        w_str(&extra, key);
        w_uint(&extra, (uint64_t)i);
    }
    struct mutation mu = {.extra = extra.data, .extralen = extra.len, .nextra = 50};
    expect_build_reject(&m, &mu, "map of 65 keys at byte 0, cap 64");
    /* 64 pairs are fine. */
    mu.nextra = 49;
    mu.extralen -= 5; /* the last pair is "x49": 49, 4 + 1 bytes */
    expect_build_ok(&m, &mu);
    buf_release(&extra);
}

static void test_nesting(void **state)
{
    const struct extra_case extras[] = {
        /* The body (level 1) holding "deep": {"a": [1, "x"]} (levels 2, 3). */
        {CODEC_SYNC, BYTES(0xa4, 'd', 'e', 'e', 'p', 0x81, 0xa1, 'a', 0x92, 0x01, 0xa1, 'x'), 1,
         NULL},
        /* One more level is refused, whether map or array, even empty:
         * "deep": {"a": {"b": []}} and "deep": [[{}]]. */
        {CODEC_SYNC, BYTES(0xa4, 'd', 'e', 'e', 'p', 0x81, 0xa1, 'a', 0x81, 0xa1, 'b', 0x90), 1,
         "nesting deeper than 3"},
        {CODEC_SYNC, BYTES(0xa4, 'd', 'e', 'e', 'p', 0x91, 0x91, 0x80), 1, "nesting deeper than 3"},
    };
    expect_extra_cases(extras, NROWS(extras));

    /* Inside a known key too: a note that is an array of arrays of maps. */
    const struct replace_case notes[] = {
        {CODEC_STATE, "notes", BYTES(0x91, 0x91, 0x81, 0xa1, 'k', 0x01), "nesting deeper than 3"},
        {CODEC_STATE, "notes", BYTES(0x91, 0x91, 0xa1, 'x'),
         "key \"notes\" entry 0 is not a string"},
    };
    expect_replace_rejects(notes, NROWS(notes));

    /* A deep chain cannot exhaust the stack: the walk stops at level 4. */
    uint8_t chain[100000];
    memset(chain, 0x91, sizeof(chain));
    chain[0] = 0x81;
    chain[1] = 0xa1;
    chain[2] = 'x';
    expect_reject(chain, sizeof(chain), "nesting deeper than 3");
}

/* Unknown keys are skipped whatever they hold; keys of another kind count
 * as unknown, even with a type their own kind would refuse. */
static void test_unknown_keys_ignored(void **state)
{
    struct buf extra;
    buf_init(&extra, 4096);

    w_str(&extra, "future_field");
    w_str(&extra, "some text");
    w_str(&extra, "nested"); /* {"inner": {"k": 1}, "list": [nil, false, true]} */
    w_map(&extra, 2);
    w_str(&extra, "inner");
    w_map(&extra, 1);
    w_str(&extra, "k");
    w_uint(&extra, 1);
    w_str(&extra, "list");
    w_arr(&extra, 3);
    w_byte(&extra, 0xc0);
    w_byte(&extra, 0xc2);
    w_byte(&extra, 0xc3);
    w_str(&extra, "floats");
    w_arr(&extra, 2);
    w_raw(&extra, "\xcb\x40\x09\x21\xfb\x54\x44\x2d\x18", 9);
    w_raw(&extra, "\xca\x40\x49\x0f\xdb", 5);
    w_str(&extra, "blob");
    w_raw(&extra,
          "\xc5\x00\x03"
          "xyz",
          6);
    w_str(&extra, "ext");
    w_raw(&extra,
          "\xc7\x02\x05"
          "ab",
          5);
    w_str(&extra, "fixext16");
    w_raw(&extra, "\xd8\x01", 2);
    w_raw(&extra, "0123456789abcdef", 16);
    w_str(&extra, "negative");
    w_int(&extra, -1000000);
    /* 0xff bytes in an unknown key name: never echoed, never checked. */
    w_raw(&extra, "\xa2\xff\xfe", 3);
    w_byte(&extra, 0x01);
    unsigned nextra = 8;

    for (size_t i = 0; i < NKINDS; i++) {
        struct codec_msg m;
        golden_msg(&m, all_kinds[i]);
        struct mutation mu = {.extra = extra.data, .extralen = extra.len, .nextra = nextra};
        expect_build_ok(&m, &mu);
    }

    /* Keys of other kinds, ill-typed for those kinds. */
    struct buf other;
    buf_init(&other, 1024);
    w_str(&other, "notes");
    w_str(&other, "not an array");
    w_str(&other, "name");
    w_uint(&other, 5);
    w_str(&other, "count");
    w_str(&other, "x");
    struct codec_msg m;
    golden_msg(&m, CODEC_SYNC);
    struct mutation mu = {.extra = other.data, .extralen = other.len, .nextra = 3};
    expect_build_ok(&m, &mu);

    buf_release(&other);
    buf_release(&extra);
}

/* The error buffer is optional and always terminated when given. */
static void test_decode_error_buffer(void **state)
{
    static const uint8_t bad[] = {0x90};
    struct codec_msg m;
    char err[8];

    assert_int_equal(codec_decode(bad, sizeof(bad), &m, NULL, 0), RT_REJECT);
    assert_zeroed(&m);
    memset(err, 'z', sizeof(err));
    assert_int_equal(codec_decode(bad, sizeof(bad), &m, err, sizeof(err)), RT_REJECT);
    assert_int_equal(strlen(err), sizeof(err) - 1);
}

/* ------------------------------------------------------------------------
 * Golden vector generator and main.
 * ------------------------------------------------------------------------ */

static int write_golden(const char *dir)
{
    for (size_t i = 0; i < NKINDS; i++) {
        struct codec_msg m;
        struct buf b;
        char path[512], err[256];

        golden_msg(&m, all_kinds[i]);
        golden_path(path, sizeof(path), dir, all_kinds[i]);
        buf_init(&b, CODEC_MAX_BODY);
        if (codec_encode(&m, &b, err, sizeof(err)) < 0) {
            fprintf(stderr, "cannot encode the %s vector: %s\n", codec_kind_name(all_kinds[i]),
                    err);
            buf_release(&b);
            return 1;
        }
        FILE *f = fopen(path, "wb");
        if (!f || fwrite(b.data, 1, b.len, f) != b.len || fclose(f) != 0) {
            fprintf(stderr, "cannot write %s\n", path);
            buf_release(&b);
            return 1;
        }
        printf("wrote %s (%zu bytes)\n", path, b.len);
        buf_release(&b);
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--write-golden") == 0)
        return write_golden(argv[2]);

    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kind_names),
        cmocka_unit_test(test_release_accepts_zeroed),
        cmocka_unit_test(test_roundtrip_each_kind),
        cmocka_unit_test(test_roundtrip_empty_and_null),
        cmocka_unit_test(test_roundtrip_special_text),
        cmocka_unit_test(test_roundtrip_max_lengths),
        cmocka_unit_test(test_decode_any_key_order),
        cmocka_unit_test(test_encode_over_caps),
        cmocka_unit_test(test_encode_body_cap),
        cmocka_unit_test(test_encode_invalid_values),
        cmocka_unit_test(test_encode_output_buffer),
        cmocka_unit_test(test_encode_deterministic),
        cmocka_unit_test(test_golden_vectors),
        cmocka_unit_test(test_golden_task_by_hand),
        cmocka_unit_test(test_missing_each_key),
        {"test_optional_fwd_seq", test_optional_seq, NULL, NULL, (void *)&optional_seqs[0]},
        {"test_optional_rev_seq", test_optional_seq, NULL, NULL, (void *)&optional_seqs[1]},
        cmocka_unit_test(test_wrong_types),
        cmocka_unit_test(test_integer_encodings),
        cmocka_unit_test(test_version),
        cmocka_unit_test(test_unknown_kind),
        cmocka_unit_test(test_decode_over_caps),
        cmocka_unit_test(test_text_checks_on_decode),
        cmocka_unit_test(test_trailing_bytes),
        cmocka_unit_test(test_truncated_prefixes),
        cmocka_unit_test(test_huge_declared_lengths),
        cmocka_unit_test(test_structure),
        cmocka_unit_test(test_nesting),
        cmocka_unit_test(test_unknown_keys_ignored),
        cmocka_unit_test(test_decode_error_buffer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
