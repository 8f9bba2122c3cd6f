/*
 * fuzz_codec.c - libFuzzer target for the message decoder.
 *
 * Any byte string goes to codec_decode. A refusal must leave the message
 * zeroed. An accepted message must encode again, decode again to an equal
 * message, and encode a second time to the same bytes: what the decoder
 * lets in, the rest of the bridge can send on. Any broken property aborts,
 * which libFuzzer reports as a crash with the input saved.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "codec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fuzz_die(const char *what, const char *err)
{
    fprintf(stderr, "fuzz_codec: %s%s%s\n", what, err ? ": " : "", err ? err : "");
    abort();
}

static int fuzz_zeroed(const struct codec_msg *m)
{
    static const struct codec_msg zero;
    return memcmp(m, &zero, sizeof(zero)) == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct codec_msg first, second;
    struct buf once, twice;
    char err[256];

    /* A short error buffer on odd sizes exercises the truncation path. */
    size_t errlen = (size & 1) ? 5 : sizeof(err);
    rt_status st = codec_decode(data, size, &first, err, errlen);
    if (st == RT_RETRY)
        fuzz_die("decode returned RETRY", NULL);
    if (st == RT_REJECT) {
        if (!fuzz_zeroed(&first))
            fuzz_die("a refused message was not zeroed", NULL);
        if (strlen(err) >= errlen)
            fuzz_die("error not terminated", NULL);
        return 0;
    }

    buf_init(&once, CODEC_MAX_BODY);
    buf_init(&twice, CODEC_MAX_BODY);
    if (codec_encode(&first, &once, err, sizeof(err)) != 0)
        fuzz_die("an accepted message does not encode", err);
    if (codec_decode(once.data, once.len, &second, err, sizeof(err)) != RT_OK)
        fuzz_die("an encoded message does not decode", err);
    if (!codec_msg_equal(&first, &second))
        fuzz_die("the message changed through encode and decode", NULL);
    if (codec_encode(&second, &twice, err, sizeof(err)) != 0)
        fuzz_die("a decoded message does not encode", err);
    if (once.len != twice.len || memcmp(once.data, twice.data, once.len) != 0)
        fuzz_die("the same message encoded to different bytes", NULL);
    /* The canonical form is never longer than what was read. */
    if (once.len > size)
        fuzz_die("the encoding grew past the input", NULL);

    codec_msg_release(&second);
    codec_msg_release(&first);
    buf_release(&twice);
    buf_release(&once);
    return 0;
}
