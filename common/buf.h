/*
 * buf.h - a growable byte buffer with a hard cap.
 *
 * Every buffer that grows from outside input (an HTTP body, a message, a
 * control request) is a buf with a cap, so that a peer cannot make the
 * process grow without bound. The data is always NUL-terminated after len
 * bytes, so a buf holding text can be used as a C string.
 */
#ifndef RT_BUF_H
#define RT_BUF_H

#include <stddef.h>

struct buf {
    char *data; /* NULL until the first append; owned by the buf */
    size_t len; /* bytes used, not counting the terminating NUL */
    size_t cap; /* bytes allocated */
    size_t max; /* the cap on len */
};

/* Starts an empty buffer that will refuse to hold more than max bytes. */
void buf_init(struct buf *b, size_t max);

/* Appends n bytes. Returns 0, or -1 when the cap would be passed or memory
 * ran out; on -1 the buffer is unchanged. */
int buf_append(struct buf *b, const void *data, size_t n);

/* Appends a C string (without its NUL). Same returns as buf_append. */
int buf_append_str(struct buf *b, const char *s);

/* Appends printf-style text. Same returns as buf_append. */
int buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The contents as a C string: "" for an empty buffer, never NULL. */
const char *buf_cstr(const struct buf *b);

/* Empties the buffer, keeping its memory and its cap. */
void buf_reset(struct buf *b);

/* Frees the memory; the buf may be reused after buf_init. Accepts a
 * zeroed buf. */
void buf_release(struct buf *b);

/* Hands the data to the caller (who frees it with free()) and empties the
 * buffer. Returns a malloc'ed "" for an empty buffer, NULL on ENOMEM. */
char *buf_steal(struct buf *b);

#endif
