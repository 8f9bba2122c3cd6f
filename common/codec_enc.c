/*
 * codec_enc.c - the encoder: msgpack-c's packer writing into a buf capped
 * at the body cap. The keys go out in the order codec.h lists them, each
 * value in its shortest encoding, so that one message always gives the
 * same bytes (the golden vectors in tests/data/codec pin them down).
 */
#include <stdint.h>
#include <string.h>

#include <msgpack.h>

#include "codec_int.h"

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
