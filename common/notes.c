#include "notes.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "fp.h"

#define NOTES_HEAD "--- remotetask: "
#define NOTES_TAIL " ---"
#define NOTES_END "--- remotetask: end ---"
/* Notes are capped by the codec (1 MiB) and the API; this cap only keeps a
 * pathological input from growing without bound. */
#define NOTES_MAX ((size_t)16 * 1024 * 1024)

/* The length of the line starting at p, without its newline. */
static size_t notes_line_len(const char *p)
{
    return strcspn(p, "\n");
}

/* 1 when the line at p (of length n) is a block header (not the end line). */
static int notes_is_head(const char *p, size_t n)
{
    if (n && p[n - 1] == '\r') /* a line edited in a browser may end in CRLF */
        n--;
    size_t hl = strlen(NOTES_HEAD), tl = strlen(NOTES_TAIL);
    if (n < hl + tl + 1 || strncmp(p, NOTES_HEAD, hl) != 0)
        return 0;
    if (strncmp(p + n - tl, NOTES_TAIL, tl) != 0)
        return 0;
    return !(n == strlen(NOTES_END) && strncmp(p, NOTES_END, n) == 0);
}

static int notes_is_end(const char *p, size_t n)
{
    if (n && p[n - 1] == '\r')
        n--;
    return n == strlen(NOTES_END) && strncmp(p, NOTES_END, n) == 0;
}

char *notes_native(const char *note)
{
    struct buf out;
    const char *p = note ? note : "";
    buf_init(&out, NOTES_MAX);
    if (buf_append(&out, "", 0) < 0)
        return NULL;
    while (*p) {
        size_t n = notes_line_len(p);
        if (!notes_is_head(p, n)) {
            /* An ordinary line: keep it with its newline. */
            size_t take = n + (p[n] == '\n');
            if (buf_append(&out, p, take) < 0)
                goto fail;
            p += take;
            continue;
        }
        /* Drop the separator the bridge put before the block: the newline
         * ending the previous line and one blank line. */
        for (int i = 0; i < 2 && out.len && out.data[out.len - 1] == '\n'; i++)
            out.data[--out.len] = '\0';
        p += n + (p[n] == '\n');
        while (*p) {
            size_t m = notes_line_len(p);
            int end = notes_is_end(p, m);
            p += m;
            if (end) {
                break; /* the newline after the end line stays with the text after it */
            }
            p += (*p == '\n');
        }
    }
    return buf_steal(&out);
fail:
    buf_release(&out);
    return NULL;
}

char *notes_append(const char *note, const char *origin, const char *text)
{
    struct buf out;
    if (!origin || strlen(origin) > NOTES_ORIGIN_MAX || strchr(origin, '\n'))
        return NULL;
    note = note ? note : "";
    text = text ? text : "";
    buf_init(&out, NOTES_MAX);
    if (buf_append_str(&out, note) < 0)
        goto fail;
    if (*note) {
        /* End the last line, then one blank line before the block. */
        if (note[strlen(note) - 1] != '\n' && buf_append_str(&out, "\n") < 0)
            goto fail;
        if (buf_append_str(&out, "\n") < 0)
            goto fail;
    }
    if (buf_printf(&out, NOTES_HEAD "%s" NOTES_TAIL "\n", origin) < 0)
        goto fail;
    if (*text) {
        if (buf_append_str(&out, text) < 0)
            goto fail;
        if (text[strlen(text) - 1] != '\n' && buf_append_str(&out, "\n") < 0)
            goto fail;
    }
    if (buf_append_str(&out, NOTES_END) < 0)
        goto fail;
    return buf_steal(&out);
fail:
    buf_release(&out);
    return NULL;
}

int notes_has_origin(const char *note, const char *origin)
{
    const char *p = note ? note : "";
    size_t ol = strlen(origin);
    while (*p) {
        size_t n = notes_line_len(p);
        size_t core = n && p[n - 1] == '\r' ? n - 1 : n;
        if (notes_is_head(p, n) && core == strlen(NOTES_HEAD) + ol + strlen(NOTES_TAIL) &&
            strncmp(p + strlen(NOTES_HEAD), origin, ol) == 0)
            return 1;
        p += n + (p[n] == '\n');
    }
    return 0;
}

void notes_origin_forward(char *buf, size_t len, const char *client, int64_t task)
{
    snprintf(buf, len, "from client %s, task %lld", client, (long long)task);
}

size_t notes_new_part(const char *native, size_t applied_len, const char *applied_fp,
                      int *edited)
{
    size_t len = strlen(native);
    size_t off = 0;
    *edited = 0;
    if (applied_len) {
        char fp[FP_HEX_LEN + 1];
        if (applied_len > len) {
            *edited = 1;
        } else {
            fp_of_mem(native, applied_len, fp);
            if (strcmp(fp, applied_fp ? applied_fp : "") != 0)
                *edited = 1;
            else
                off = applied_len;
        }
    }
    while (off < len && (native[off] == '\n' || native[off] == '\r'))
        off++;
    return off;
}
