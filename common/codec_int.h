/*
 * codec_int.h - what the codec's own files share; private to common/codec*.c.
 *
 * The codec is four files of one concern each: codec.c (the message: its
 * kinds, its lifecycle, equality), codec_check.c (the rules on the values
 * of a message), codec_enc.c (the encoder) and codec_dec.c (the bounded
 * reader of untrusted bytes). Encoder and decoder run the same
 * codec_check(), which is what makes what one accepts acceptable to the
 * other (codec.h). Nothing outside common/codec*.c includes this header:
 * callers see codec.h only.
 */
#ifndef RT_CODEC_INT_H
#define RT_CODEC_INT_H

#include <stddef.h>

#include "codec.h"

/* Writes a reason into err, cut to errlen bytes and always terminated when
 * errlen > 0; err may be NULL (no reason wanted). */
void codec_fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* 1 when kind is one of enum codec_kind's values, 0 otherwise. */
int codec_kind_valid(enum codec_kind kind);

/* Writes "key \"KEY\"" into out, or "key \"KEY\" entry IDX" when idx is
 * not SIZE_MAX: how a reason names the field it is about. */
void codec_label(char *out, size_t outlen, const char *key, size_t idx);

/* Every rule on the values of a message (codec_check.c). The encoder runs
 * it before packing, the decoder after reading, so the two accept the same
 * set. Returns 0, or -1 with the reason in err naming the key. */
int codec_check(const struct codec_msg *m, char *err, size_t errlen);

#endif
