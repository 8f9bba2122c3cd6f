/*
 * billmgr_reply.c - the BILLmanager client's answers: an HTTP answer read
 * as an API document or refused (the bounds on a hostile answer, the
 * document's shape, a quote of what came instead, scrubbed of anything
 * that names a credential), the API's own error as RT_REJECT, and the
 * helpers that read the document's fields. billmgr.h says what each
 * outcome is and why.
 */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include "billmgr_int.h"

/* ---- reading a document's fields ---- */

const char *billmgr_text(json_t *obj, const char *key)
{
    json_t *v = json_is_object(obj) ? json_object_get(obj, key) : NULL;
    /* The API wraps text as {"$": "..."}; a bare string is accepted too, so
     * that a value the emulator or a newer version gives unwrapped reads
     * the same. */
    if (json_is_object(v))
        v = json_object_get(v, "$");
    return json_is_string(v) ? json_string_value(v) : NULL;
}

int billmgr_long(json_t *obj, const char *key, long *out)
{
    json_t *v = json_is_object(obj) ? json_object_get(obj, key) : NULL;
    if (json_is_integer(v)) {
        json_int_t i = json_integer_value(v);
        if (i < LONG_MIN || i > LONG_MAX)
            return -1;
        *out = (long)i;
        return 0;
    }
    const char *s = billmgr_text(obj, key);
    if (!s || !*s)
        return -1;
    char *end;
    errno = 0;
    long n = strtol(s, &end, 10);
    if (errno || *end || end == s)
        return -1;
    *out = n;
    return 0;
}

int billmgr_view_of(json_t *doc, int64_t elid, char *why, size_t whylen)
{
    static const char *const ids[] = {"elid", "id"};
    int named = 0;

    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        const char *t;
        int r = billmgr_text_field(doc, ids[i], &t);
        if (r < 0) {
            snprintf(why, whylen, "holds an %s that is not text", ids[i]);
            return -1;
        }
        if (r == 0)
            continue;
        char *end;
        errno = 0;
        long long v = strtoll(t, &end, 10);
        if (errno || end == t || *end || v != elid) {
            snprintf(why, whylen, "answers for task \"%.32s\"", t);
            return -1;
        }
        named = 1;
    }
    if (!named) {
        snprintf(why, whylen, "names no task");
        return -1;
    }
    return 0;
}

int billmgr_text_field(json_t *obj, const char *key, const char **out)
{
    *out = NULL;
    if (!json_is_object(obj))
        return -1;
    json_t *v = json_object_get(obj, key);
    if (!v)
        return 0;
    if (json_is_string(v)) {
        *out = json_string_value(v);
        return 1;
    }
    if (!json_is_object(v))
        return -1;
    json_t *t = json_object_get(v, "$");
    if (t) {
        if (!json_is_string(t))
            return -1;
        *out = json_string_value(t);
        return 1;
    }
    /* No text: an empty element, or one with attributes only ("$name"
     * keys), reads as ""; one with elements inside is not text at all. */
    const char *k;
    json_t *m;
    json_object_foreach(v, k, m)
    {
        if (k[0] != '$')
            return -1;
    }
    *out = "";
    return 1;
}

/* ---- what a message may quote of a hostile answer ---- */

/* The length of the UTF-8 sequence at p (at most n bytes there) when it is
 * a well-formed, shortest-form encoding of a character that is not a
 * control character (C1 included); 0 otherwise. */
static size_t billmgr_utf8_char(const unsigned char *p, size_t n)
{
    unsigned c = p[0];
    size_t len;
    unsigned cp;
    if (c < 0xC2 || c > 0xF4)
        return 0;
    len = c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    if (n < len)
        return 0;
    cp = c & (0x3F >> (len - 1));
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3F);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF) || (cp >= 0x80 && cp <= 0x9F))
        return 0;
    return len;
}

/* Writes into out (outlen bytes, NUL-terminated) at most max bytes of
 * text[0..len): leading blanks skipped, every run of blanks and control
 * characters as one space, invalid UTF-8 as '?', and "..." when cut. What
 * comes out is safe to put in a log line or an error string, but for the
 * secrets, which billmgr_scrub_secrets takes out. */
static void billmgr_excerpt(char *out, size_t outlen, const char *text, size_t len, size_t max)
{
    const unsigned char *p = (const unsigned char *)text;
    size_t i = 0, o = 0;
    int space = 0;
    if (max > outlen - 4)
        max = outlen - 4;
    while (i < len && (p[i] <= 0x20 || p[i] == 0x7F))
        i++;
    while (i < len) {
        if (p[i] <= 0x20 || p[i] == 0x7F) {
            space = 1;
            i++;
            continue;
        }
        size_t n = p[i] < 0x80 ? 1 : billmgr_utf8_char(p + i, len - i);
        if (o + space + (n ? n : 1) > max) {
            memcpy(out + o, "...", 3);
            o += 3;
            break;
        }
        if (space)
            out[o++] = ' ';
        space = 0;
        if (n) {
            memcpy(out + o, p + i, n);
            o += n;
            i += n;
        } else {
            out[o++] = '?';
            i++;
        }
    }
    out[o] = '\0';
}

/* Finds needle (lower case) in hay[0..len) ignoring ASCII case. Returns
 * its offset, or -1. */
static ssize_t billmgr_find_nocase(const char *hay, size_t len, const char *needle)
{
    size_t n = strlen(needle);
    for (size_t i = 0; n <= len && i <= len - n; i++) {
        size_t k = 0;
        while (k < n && tolower((unsigned char)hay[i + k]) == needle[k])
            k++;
        if (k == n)
            return (ssize_t)i;
    }
    return -1;
}

/* What to quote of an answer that is not an API document: the title of
 * an HTML page (a login wall says what it is there), else its start. Any
 * text that names a credential is withheld whole: a server that echoes
 * the request would echo authinfo. */
static void billmgr_quote(char *out, size_t outlen, const char *body, size_t len)
{
    char ex[BILLMGR_EXCERPT_MAX + 4];
    size_t head = len < 4096 ? len : 4096;
    ssize_t t = billmgr_find_nocase(body, head, "<title");
    const char *gt = t >= 0 ? memchr(body + t, '>', head - (size_t)t) : NULL;
    if (gt) {
        size_t from = (size_t)(gt + 1 - body);
        ssize_t end = billmgr_find_nocase(body + from, head - from, "</title");
        size_t n = end >= 0 ? (size_t)end : head - from;
        billmgr_excerpt(ex, sizeof(ex), body + from, n, BILLMGR_EXCERPT_MAX);
        snprintf(out, outlen, "a page titled \"%s\"", ex);
    } else {
        billmgr_excerpt(ex, sizeof(ex), body, len, BILLMGR_EXCERPT_MAX);
        snprintf(out, outlen, "it begins %s", ex);
    }
    static const char *const creds[] = {"authinfo", "password", "passwd", "auth="};
    for (size_t i = 0; i < sizeof(creds) / sizeof(creds[0]); i++)
        if (billmgr_find_nocase(out, strlen(out), creds[i]) >= 0) {
            snprintf(out, outlen, "(the text is withheld: it names a credential)");
            return;
        }
}

/* The Content-Type and size of an answer, for messages: printable ASCII
 * only, cut. */
static void billmgr_describe(char *out, size_t outlen, const char *content_type, size_t len)
{
    char ct[48];
    size_t o = 0;
    for (const char *c = content_type; c && *c && o < sizeof(ct) - 1; c++)
        ct[o++] = (*c > 0x20 && *c < 0x7F) || *c == ' ' ? *c : '?';
    ct[o] = '\0';
    snprintf(out, outlen, "%s, %zu bytes", o ? ct : "no Content-Type", len);
}

/* ---- the bounds and the shape of a document ---- */

/* One pass over a body before it is parsed: fails (with the reason in why)
 * when it nests deeper than BILLMGR_MAX_DEPTH or holds more than
 * max_values values, so that a document built to inflate in memory is
 * refused before jansson builds it. Anything that is not JSON passes, for
 * jansson to name. */
static int billmgr_prescan(const char *body, size_t len, size_t max_values, char *why,
                           size_t whylen)
{
    size_t values = 0;
    int depth = 0, in_string = 0, escape = 0;
    for (size_t i = 0; i < len; i++) {
        char c = body[i];
        if (in_string) {
            if (escape)
                escape = 0;
            else if (c == '\\')
                escape = 1;
            else if (c == '"')
                in_string = 0;
            continue;
        }
        switch (c) {
        case '"': in_string = 1; break;
        case '{':
        case '[':
            if (++depth > BILLMGR_MAX_DEPTH) {
                snprintf(why, whylen, "it nests deeper than %d levels", BILLMGR_MAX_DEPTH);
                return -1;
            }
            /* fall through */
        case ':':
        case ',':
            if (++values > max_values) {
                snprintf(why, whylen, "it holds more than %zu values", max_values);
                return -1;
            }
            break;
        case '}':
        case ']': depth--; break;
        default: break;
        }
    }
    return 0;
}

/* A key of a hostile document as it may appear in a message: an
 * identifier of at most 24 bytes, or "?". */
static const char *billmgr_safe_key(const char *key)
{
    size_t n = strlen(key);
    if (n == 0 || n > 24)
        return "?";
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)key[i]) && !strchr("_.$-", key[i]))
            return "?";
    return key;
}

static const char *billmgr_json_kind(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER:
    case JSON_REAL: return "a number";
    case JSON_TRUE: return "true";
    case JSON_FALSE: return "false";
    default: return "null";
    }
}

/* Checks that v, found at path (a NUL-terminated string in a buffer of
 * size bytes, restored on return), holds only what an API document holds
 * (see the top of billmgr.h). Returns 0, or -1 with the reason in why.
 * The recursion is as deep as the document, which the prescan capped. */
static int billmgr_walk(json_t *v, char *path, size_t size, char *why, size_t whylen)
{
    size_t plen = strlen(path);
    int rc = 0;
    if (json_is_object(v)) {
        const char *key;
        json_t *m;
        json_object_foreach(v, key, m)
        {
            snprintf(path + plen, size - plen, ".%s", billmgr_safe_key(key));
            if (billmgr_walk(m, path, size, why, whylen) < 0) {
                rc = -1;
                break;
            }
        }
    } else if (json_is_array(v)) {
        size_t i;
        json_t *m;
        json_array_foreach(v, i, m)
        {
            snprintf(path + plen, size - plen, "[%zu]", i);
            if (!json_is_object(m)) {
                snprintf(why, whylen, "%s is %s, not an element", path, billmgr_json_kind(m));
                rc = -1;
                break;
            }
            if (billmgr_walk(m, path, size, why, whylen) < 0) {
                rc = -1;
                break;
            }
        }
    } else if (!json_is_string(v)) {
        snprintf(why, whylen, "%s is %s", path, billmgr_json_kind(v));
        rc = -1;
    }
    path[plen] = '\0';
    return rc;
}

/* Checks the parts of doc whose type the API fixes. Returns 0, or -1 with
 * the reason in why. */
static int billmgr_check_doc(json_t *doc, char *why, size_t whylen)
{
    char path[128] = "doc";
    json_t *elem = json_object_get(doc, "elem");
    json_t *error = json_object_get(doc, "error");
    if (elem && !json_is_array(elem) && !json_is_object(elem)) {
        snprintf(why, whylen, "doc.elem is %s, not a list", billmgr_json_kind(elem));
        return -1;
    }
    if (error && !json_is_object(error)) {
        snprintf(why, whylen, "doc.error is %s, not an error", billmgr_json_kind(error));
        return -1;
    }
    if (error) {
        json_t *type = json_object_get(error, "$type");
        json_t *object = json_object_get(error, "$object");
        if ((type && !json_is_string(type)) || (object && !json_is_string(object))) {
            snprintf(why, whylen, "doc.error has a $type or $object that is not text");
            return -1;
        }
    }
    return billmgr_walk(doc, path, sizeof(path), why, whylen);
}

static const char *billmgr_json_error(const json_error_t *e)
{
    switch (json_error_code(e)) {
    case json_error_premature_end_of_input: return "it ends early";
    case json_error_end_of_input_expected: return "text after the document";
    case json_error_invalid_utf8: return "invalid UTF-8";
    case json_error_null_character: return "a NUL character in a string";
    case json_error_null_byte_in_key: return "a NUL character in a key";
    case json_error_duplicate_key: return "a key that appears twice";
    case json_error_stack_overflow: return "it nests too deep";
    case json_error_numeric_overflow: return "a number out of range";
    case json_error_out_of_memory: return "out of memory";
    default: return "invalid syntax";
    }
}

/* Control characters in an API error's texts become spaces: they are
 * the server's words, kept whole, but must not break a log line or a
 * dead letter's header. */
static void billmgr_uncontrol(char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7F)
            *s = ' ';
}

/* ---- an answer ---- */

/* The API's refusal of the call: its $type, $object and message, kept
 * whole but for control characters. */
static rt_status billmgr_api_error(json_t *error, struct billmgr_error *err)
{
    const char *type = json_string_value(json_object_get(error, "$type"));
    const char *object = json_string_value(json_object_get(error, "$object"));
    const char *msg = billmgr_text(error, "msg");
    if (!msg)
        msg = json_string_value(json_object_get(error, "$"));
    billmgr_set_error(err, type && *type ? type : "unknown", object ? object : "", "%s",
                      msg ? msg : "");
    billmgr_uncontrol(err->type);
    billmgr_uncontrol(err->object);
    billmgr_uncontrol(err->message);
    return RT_REJECT;
}

rt_status billmgr_parse_reply(long http_code, const char *content_type, const char *body,
                              size_t len, size_t max_values, json_t **doc_out,
                              struct billmgr_error *err)
{
    json_error_t jerr;
    char what[96], why[160], quote[BILLMGR_EXCERPT_MAX + 64];
    *doc_out = NULL;
    billmgr_clear_error(err);
    if (!max_values)
        max_values = BILLMGR_VALUES_BASE + BILLMGR_VALUES_PER_ROW * BILLMGR_DEFAULT_PAGE_SIZE;
    if (http_code != 200) {
        billmgr_set_error(err, "http", "", "HTTP status %ld", http_code);
        return RT_RETRY;
    }
    billmgr_describe(what, sizeof(what), content_type, body ? len : 0);
    if (!body || !len) {
        billmgr_set_error(err, "json", "", "answer is empty (%s)", what);
        return RT_RETRY;
    }
    if (billmgr_prescan(body, len, max_values, why, sizeof(why)) < 0) {
        billmgr_set_error(err, "json", "", "answer is not an API document (%s): %s", what, why);
        return RT_RETRY;
    }
    /* Strings with NUL bytes are refused (every text stays a C string) and
     * so are repeated keys. jansson's own error text is not used: it
     * quotes the answer, which is not ours to echo. */
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        billmgr_quote(quote, sizeof(quote), body, len);
        billmgr_set_error(err, "json", "", "answer is not JSON (%s, %s at byte %d): %s", what,
                          billmgr_json_error(&jerr), jerr.position, quote);
        return RT_RETRY;
    }
    json_t *doc = json_object_get(root, "doc");
    if (!json_is_object(doc)) {
        const char *kind = !json_is_object(root) ? "the answer is not an object"
                           : doc                 ? "its doc is not an object"
                                                 : "it has no doc";
        billmgr_set_error(err, "json", "", "answer is not an API document (%s): %s", what, kind);
        json_decref(root);
        return RT_RETRY;
    }
    if (billmgr_check_doc(doc, why, sizeof(why)) < 0) {
        billmgr_set_error(err, "json", "", "answer is not an API document (%s): %s", what, why);
        json_decref(root);
        return RT_RETRY;
    }
    json_t *error = json_object_get(doc, "error");
    if (error) {
        rt_status st = billmgr_api_error(error, err);
        json_decref(root);
        return st;
    }
    *doc_out = json_incref(doc);
    json_decref(root);
    return RT_OK;
}
