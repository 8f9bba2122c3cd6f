#include "billmgr.h"

#include <ctype.h>
#include <errno.h>
#include <sys/types.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <curl/curl.h>

#include "log.h"
#include "redact.h"

/* A call's form without credentials is built once when it is queued; this
 * caps it (BILLMGR_MAX_PARAMS values of BILLMGR_MAX_VALUE could otherwise
 * add up to gigabytes once percent-encoded). */
#define BILLMGR_MAX_FORM ((size_t)32 * 1024 * 1024)
/* The body is the form plus the credentials, which the operator wrote. */
#define BILLMGR_MAX_BODY (2 * BILLMGR_MAX_FORM)

/* billmgr_list_sync gives up after this many rows, so that a server that
 * ignores p_num and never reports p_elems cannot keep it paging forever. */
#define BILLMGR_LIST_MAX_ROWS 10000000L

/* The private poll loop of the sync helpers never sleeps longer than this,
 * so that it notices a deadline curl failed to announce. */
#define BILLMGR_SYNC_MAX_WAIT_MS 1000

struct billmgr_sock {
    curl_socket_t fd;
    short events;
};

/* One call, from billmgr_call to its callback. The same easy handle serves
 * a retry after a re-login. */
struct billmgr_xfer {
    struct billmgr *bm;
    struct billmgr_xfer *next;
    CURL *easy;
    char *func;
    char *form; /* func, out and the parameters, encoded; no credentials */
    billmgr_done_fn cb;
    void *arg;
    int is_login;
    int relogged;              /* a session call retried once already */
    unsigned long session_gen; /* the session this attempt used */
    struct buf body;           /* form + credentials; wiped after sending */
    struct buf resp;           /* the answer, capped at max_response */
    int toolarge;
    int overbudget; /* the answers being received together reached max_buffered */
    int tooslow;          /* the body came slower than BILLMGR_MIN_BODY_RATE */
    curl_off_t announced; /* the answer's Content-Length; -1 = none */
    long long body_t0_ms; /* when the first byte of the body came; 0 = none yet */
    char errbuf[CURL_ERROR_SIZE];
    double t0;
    /* A call that failed before any transfer (deferred to billmgr_handle,
     * so that callbacks never run inside billmgr_call). */
    rt_status fstatus;
    struct billmgr_error ferr;
};

struct billmgr_list {
    struct billmgr_xfer *head;
    struct billmgr_xfer *tail;
    size_t n;
};

struct billmgr {
    char *url;
    char *login;
    char *password;
    char *ca_file;
    int auth_session;
    long timeout_ms;
    long connect_timeout_ms;
    int max_inflight;
    size_t max_response;
    /* Bytes of every answer being received now, and their cap (twice
     * max_response): a flood of large answers to concurrent calls cannot
     * hold max_inflight × max_response in memory. */
    size_t buffered;
    size_t max_buffered;
    int verify_tls;
    int page_size;
    size_t max_queued;
    size_t max_values;   /* the prescan's cap on one document's values */
    long slow_window_ms; /* the body's rate is checked from this far in */
    void (*on_call)(void *arg, const char *func, rt_status status, const char *err_type,
                    double seconds);
    void *on_call_arg;

    CURLM *multi;
    struct curl_slist *headers;
    struct billmgr_sock *socks;
    size_t nsocks;
    size_t capsocks;
    long long deadline_ms; /* curl's timer, -1 = none */

    struct billmgr_list queue;   /* waiting to start, FIFO */
    struct billmgr_list running; /* in curl's multi handle */
    struct billmgr_list done;    /* failed before starting, to report */

    char *session; /* session id in session mode, NULL until logged in */
    unsigned long session_gen;
    struct billmgr_xfer *login_xfer; /* the func=auth transfer in flight */
};

/* ---- small helpers ---- */

static long long billmgr_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static double billmgr_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Copies text into a fixed field, cutting at a UTF-8 character boundary so
 * that a cut message is still valid text. */
static void billmgr_copy_text(char *dst, size_t size, const char *src)
{
    size_t n = src ? strlen(src) : 0;
    if (n >= size) {
        n = size - 1;
        while (n > 0 && ((unsigned char)src[n] & 0xC0) == 0x80)
            n--;
    }
    if (n)
        memcpy(dst, src, n);
    dst[n] = '\0';
}

static void billmgr_set_error(struct billmgr_error *e, const char *type, const char *object,
                              const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static void billmgr_set_error(struct billmgr_error *e, const char *type, const char *object,
                              const char *fmt, ...)
{
    char msg[BILLMGR_ERR_MESSAGE_MAX * 2];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    billmgr_copy_text(e->type, sizeof(e->type), type);
    billmgr_copy_text(e->object, sizeof(e->object), object);
    billmgr_copy_text(e->message, sizeof(e->message), msg);
}

static void billmgr_clear_error(struct billmgr_error *e)
{
    e->type[0] = '\0';
    e->object[0] = '\0';
    e->message[0] = '\0';
}

/* Frees a string that held a secret after overwriting it. */
static void billmgr_free_secret(char *s)
{
    if (s) {
        explicit_bzero(s, strlen(s));
        free(s);
    }
}

static void billmgr_wipe_buf(struct buf *b)
{
    if (b->data)
        explicit_bzero(b->data, b->cap);
    buf_release(b);
}

/* Replaces every occurrence of secret in s (a NUL-terminated string in a
 * field of size bytes) with "***". A server may echo what it was sent in
 * its error text; this keeps the password and the session id out of the
 * error strings this module hands out. */
static void billmgr_scrub(char *s, size_t size, const char *secret)
{
    static const char mask[] = "***";
    size_t slen = secret ? strlen(secret) : 0;
    char *p = s;
    if (!slen)
        return;
    while ((p = strstr(p, secret)) != NULL) {
        size_t tail = strlen(p + slen);
        size_t room = size - (size_t)(p - s) - 1; /* bytes available from p */
        size_t mlen = sizeof(mask) - 1;
        if (mlen > room)
            mlen = room;
        if (mlen + tail > room)
            tail = room - mlen;
        memmove(p + mlen, p + slen, tail);
        memcpy(p, mask, mlen);
        p[mlen + tail] = '\0';
        p += mlen;
    }
}

/* Takes the credentials out of an error's texts. A server may echo what
 * it was sent, raw or URL-encoded as it travelled. */
static void billmgr_scrub_secrets(struct billmgr *bm, struct billmgr_error *e)
{
    struct buf enc;
    buf_init(&enc, 4096);
    if (bm->password[0] && billmgr_urlencode(&enc, bm->password) == 0 &&
        strcmp(buf_cstr(&enc), bm->password) != 0) {
        billmgr_scrub(e->message, sizeof(e->message), buf_cstr(&enc));
        billmgr_scrub(e->object, sizeof(e->object), buf_cstr(&enc));
    }
    billmgr_wipe_buf(&enc);
    billmgr_scrub(e->message, sizeof(e->message), bm->password);
    billmgr_scrub(e->message, sizeof(e->message), bm->session);
    billmgr_scrub(e->object, sizeof(e->object), bm->password);
}

/* ---- lists ---- */

static void billmgr_list_push(struct billmgr_list *l, struct billmgr_xfer *x)
{
    x->next = NULL;
    if (l->tail)
        l->tail->next = x;
    else
        l->head = x;
    l->tail = x;
    l->n++;
}

static void billmgr_list_push_front(struct billmgr_list *l, struct billmgr_xfer *x)
{
    x->next = l->head;
    l->head = x;
    if (!l->tail)
        l->tail = x;
    l->n++;
}

static struct billmgr_xfer *billmgr_list_pop(struct billmgr_list *l)
{
    struct billmgr_xfer *x = l->head;
    if (!x)
        return NULL;
    l->head = x->next;
    if (!l->head)
        l->tail = NULL;
    x->next = NULL;
    l->n--;
    return x;
}

static void billmgr_list_remove(struct billmgr_list *l, struct billmgr_xfer *x)
{
    struct billmgr_xfer *prev = NULL;
    for (struct billmgr_xfer *p = l->head; p; prev = p, p = p->next) {
        if (p != x)
            continue;
        if (prev)
            prev->next = p->next;
        else
            l->head = p->next;
        if (l->tail == p)
            l->tail = prev;
        p->next = NULL;
        l->n--;
        return;
    }
}

/* Moves every element of from to the caller's list, leaving from empty. */
static struct billmgr_list billmgr_list_take(struct billmgr_list *from)
{
    struct billmgr_list l = *from;
    from->head = from->tail = NULL;
    from->n = 0;
    return l;
}

/* ---- parameters ---- */

void billmgr_params_init(struct billmgr_params *p)
{
    p->v = NULL;
    p->n = 0;
    p->cap = 0;
}

int billmgr_params_add(struct billmgr_params *p, const char *key, const char *value)
{
    if (!key || !*key || !value || p->n >= BILLMGR_MAX_PARAMS || strlen(value) > BILLMGR_MAX_VALUE)
        return -1;
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 8;
        if (cap > BILLMGR_MAX_PARAMS)
            cap = BILLMGR_MAX_PARAMS;
        struct billmgr_param *v = realloc(p->v, cap * sizeof(*v));
        if (!v)
            return -1;
        p->v = v;
        p->cap = cap;
    }
    char *k = strdup(key);
    char *val = strdup(value);
    if (!k || !val) {
        free(k);
        free(val);
        return -1;
    }
    p->v[p->n].key = k;
    p->v[p->n].value = val;
    p->n++;
    return 0;
}

int billmgr_params_addf(struct billmgr_params *p, const char *key, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n > BILLMGR_MAX_VALUE)
        return -1;
    char *value = malloc((size_t)n + 1);
    if (!value)
        return -1;
    va_start(ap, fmt);
    vsnprintf(value, (size_t)n + 1, fmt, ap);
    va_end(ap);
    int rc = billmgr_params_add(p, key, value);
    free(value);
    return rc;
}

void billmgr_params_release(struct billmgr_params *p)
{
    for (size_t i = 0; i < p->n; i++) {
        free(p->v[i].key);
        free(p->v[i].value);
    }
    free(p->v);
    billmgr_params_init(p);
}

/* ---- encoding ---- */

int billmgr_urlencode(struct buf *out, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    char chunk[192];
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        unsigned char c = *p;
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '.' || c == '_' || c == '~') {
            chunk[n++] = (char)c;
        } else {
            chunk[n++] = '%';
            chunk[n++] = hex[c >> 4];
            chunk[n++] = hex[c & 15];
        }
        if (n > sizeof(chunk) - 3) {
            if (buf_append(out, chunk, n) < 0)
                return -1;
            n = 0;
        }
    }
    return n ? buf_append(out, chunk, n) : 0;
}

static int billmgr_form_pair(struct buf *out, const char *key, const char *value)
{
    if (out->len && buf_append(out, "&", 1) < 0)
        return -1;
    if (billmgr_urlencode(out, key) < 0 || buf_append(out, "=", 1) < 0)
        return -1;
    return billmgr_urlencode(out, value);
}

int billmgr_form_build(struct buf *out, const char *func, const struct billmgr_params *params,
                       const char *cred_key, const char *cred_value)
{
    if (billmgr_form_pair(out, "func", func) < 0 || billmgr_form_pair(out, "out", "json") < 0)
        return -1;
    for (size_t i = 0; params && i < params->n; i++)
        if (billmgr_form_pair(out, params->v[i].key, params->v[i].value) < 0)
            return -1;
    if (cred_key && billmgr_form_pair(out, cred_key, cred_value ? cred_value : "") < 0)
        return -1;
    return 0;
}

/* ---- answers ---- */

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

/* ---- hostile answers ---- */

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
 * secrets that billmgr_finish scrubs. */
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
        json_decref(root);
        return RT_REJECT;
    }
    *doc_out = json_incref(doc);
    json_decref(root);
    return RT_OK;
}

/* ---- curl callbacks ---- */

static ssize_t billmgr_sock_find(struct billmgr *bm, curl_socket_t fd)
{
    for (size_t i = 0; i < bm->nsocks; i++)
        if (bm->socks[i].fd == fd)
            return (ssize_t)i;
    return -1;
}

static int billmgr_sock_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    struct billmgr *bm = userp;
    ssize_t i = billmgr_sock_find(bm, fd);
    if (what == CURL_POLL_REMOVE) {
        if (i >= 0)
            bm->socks[i] = bm->socks[--bm->nsocks];
        return 0;
    }
    short events =
        (short)(((what & CURL_POLL_IN) ? POLLIN : 0) | ((what & CURL_POLL_OUT) ? POLLOUT : 0));
    if (i < 0) {
        if (bm->nsocks == bm->capsocks) {
            size_t cap = bm->capsocks ? bm->capsocks * 2 : 16;
            struct billmgr_sock *s = realloc(bm->socks, cap * sizeof(*s));
            if (!s)
                return -1;
            bm->socks = s;
            bm->capsocks = cap;
        }
        i = (ssize_t)bm->nsocks++;
        bm->socks[i].fd = fd;
    }
    bm->socks[i].events = events;
    return 0;
}

static int billmgr_timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    struct billmgr *bm = userp;
    bm->deadline_ms = timeout_ms < 0 ? -1 : billmgr_now_ms() + timeout_ms;
    return 0;
}

/* Forgets what x's answer held in the budget of answers being received. */
static void billmgr_resp_drop(struct billmgr_xfer *x)
{
    struct billmgr *bm = x->bm;
    bm->buffered = bm->buffered > x->resp.len ? bm->buffered - x->resp.len : 0;
}

static size_t billmgr_write_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    struct billmgr_xfer *x = userdata;
    struct billmgr *bm = x->bm;
    size_t n = size * nmemb;
    if (n > bm->max_buffered || bm->buffered > bm->max_buffered - n) {
        x->overbudget = 1;
        return 0;
    }
    if (buf_append(&x->resp, ptr, n) < 0) {
        /* Over the cap, or out of memory: either way the transfer stops. */
        if (n > x->resp.max || x->resp.len > x->resp.max - n)
            x->toolarge = 1;
        return 0;
    }
    bm->buffered += n;
    /* A body that trickles would hold its slot until the total timeout; one
     * that has fallen below the rate once its window has passed ends now.
     * Time before the first byte is not counted: a server may think long
     * before it answers. */
    long long now = billmgr_now_ms();
    if (!x->body_t0_ms)
        x->body_t0_ms = now;
    long long took = now - x->body_t0_ms;
    if (took >= x->bm->slow_window_ms &&
        (double)x->resp.len < (double)BILLMGR_MIN_BODY_RATE * (double)took / 1000.0) {
        x->tooslow = 1;
        return 0;
    }
    return n;
}

/* Keeps the Content-Length of the answer, which curl forgets when the
 * transfer fails on it (over max_response): the message names the size. */
static size_t billmgr_header_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    struct billmgr_xfer *x = userdata;
    size_t n = size * nmemb;
    static const char name[] = "content-length:";
    if (n > sizeof(name) && strncasecmp(ptr, name, sizeof(name) - 1) == 0) {
        curl_off_t v = 0;
        size_t i = sizeof(name) - 1;
        while (i < n && (ptr[i] == ' ' || ptr[i] == '\t'))
            i++;
        size_t digits = 0;
        for (; i < n && ptr[i] >= '0' && ptr[i] <= '9' && digits < 18; i++, digits++)
            v = v * 10 + (ptr[i] - '0');
        x->announced = digits ? v : -1;
    }
    return n;
}

/* ---- transfers ---- */

static void billmgr_xfer_free(struct billmgr_xfer *x)
{
    if (!x)
        return;
    if (x->easy)
        curl_easy_cleanup(x->easy);
    billmgr_wipe_buf(&x->body);
    if (x->bm)
        billmgr_resp_drop(x);
    buf_release(&x->resp);
    free(x->func);
    free(x->form);
    free(x);
}

static struct billmgr_xfer *billmgr_xfer_new(struct billmgr *bm, const char *func,
                                             const struct billmgr_params *params)
{
    struct billmgr_xfer *x = calloc(1, sizeof(*x));
    struct buf form;
    if (!x)
        return NULL;
    x->bm = bm;
    buf_init(&x->body, BILLMGR_MAX_BODY);
    buf_init(&x->resp, bm->max_response);
    buf_init(&form, BILLMGR_MAX_FORM);
    x->func = strdup(func);
    x->easy = curl_easy_init();
    if (!x->func || !x->easy || billmgr_form_build(&form, func, params, NULL, NULL) < 0)
        goto free_form;
    x->form = buf_steal(&form);
    if (!x->form)
        goto free_form;
    x->t0 = billmgr_now_s();
    return x;

free_form:
    buf_release(&form);
    billmgr_xfer_free(x);
    return NULL;
}

/* Sets every option of an attempt; the easy handle is reset first, since it
 * may have served an earlier attempt of the same call. */
static int billmgr_xfer_setup(struct billmgr *bm, struct billmgr_xfer *x)
{
    CURL *e = x->easy;
    int bad = 0;
    curl_easy_reset(e);
    bad |= curl_easy_setopt(e, CURLOPT_URL, bm->url) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_PRIVATE, x) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->errbuf) != CURLE_OK;
    /* A daemon must not get SIGALRM/SIGPIPE from name lookups or writes. */
    bad |= curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_POST, 1L) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_POSTFIELDS, x->body.data) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)x->body.len) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_HTTPHEADER, bm->headers) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, billmgr_write_cb) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_WRITEDATA, x) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, billmgr_header_cb) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_HEADERDATA, x) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, bm->timeout_ms) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, bm->connect_timeout_ms) != CURLE_OK;
    /* A Content-Length over the cap fails the transfer before the body. */
    bad |= curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)bm->max_response) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, bm->verify_tls ? 1L : 0L) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, bm->verify_tls ? 2L : 0L) != CURLE_OK;
    if (bm->ca_file)
        bad |= curl_easy_setopt(e, CURLOPT_CAINFO, bm->ca_file) != CURLE_OK;
    /* The body carries the credentials. A proxy taken from http_proxy or
     * https_proxy in the environment would see them (in the clear for an
     * http:// URL) without the operator having configured it, and a
     * redirect would resend them to another host: neither is followed. */
    bad |= curl_easy_setopt(e, CURLOPT_PROXY, "") != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L) != CURLE_OK;
#if LIBCURL_VERSION_NUM >= 0x075500
    bad |= curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https") != CURLE_OK;
#else
    bad |= curl_easy_setopt(e, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS)) !=
           CURLE_OK;
#endif
    bad |= curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L) != CURLE_OK;
    return bad ? -1 : 0;
}

/* Starts one attempt of x: builds the body with the credentials and hands
 * the easy handle to the multi handle. Returns 0, or -1 (x untouched but
 * for its buffers) when memory or curl refused. */
static int billmgr_xfer_start(struct billmgr *bm, struct billmgr_xfer *x)
{
    int rc;
    billmgr_wipe_buf(&x->body);
    buf_init(&x->body, BILLMGR_MAX_BODY);
    billmgr_resp_drop(x);
    buf_reset(&x->resp);
    x->toolarge = 0;
    x->overbudget = 0;
    x->tooslow = 0;
    x->body_t0_ms = 0;
    x->announced = -1;
    x->errbuf[0] = '\0';
    rc = buf_append_str(&x->body, x->form);
    if (x->is_login) {
        rc |= billmgr_form_pair(&x->body, "username", bm->login);
        rc |= billmgr_form_pair(&x->body, "password", bm->password);
    } else if (bm->auth_session) {
        rc |= billmgr_form_pair(&x->body, "auth", bm->session);
    } else {
        /* authinfo is LOGIN:PASSWORD, encoded as one value. */
        rc |= billmgr_form_pair(&x->body, "authinfo", "");
        rc |= billmgr_urlencode(&x->body, bm->login);
        rc |= buf_append(&x->body, "%3A", 3);
        rc |= billmgr_urlencode(&x->body, bm->password);
    }
    if (rc || billmgr_xfer_setup(bm, x) < 0)
        goto wipe_body;
    if (curl_multi_add_handle(bm->multi, x->easy) != CURLM_OK)
        goto wipe_body;
    x->session_gen = bm->session_gen;
    billmgr_list_push(&bm->running, x);
    return 0;

wipe_body:
    billmgr_wipe_buf(&x->body);
    return -1;
}

/* Puts a call that could not start on the done list, to be reported from
 * billmgr_handle: callbacks never run inside billmgr_call. */
static void billmgr_defer_failure(struct billmgr *bm, struct billmgr_xfer *x, rt_status st,
                                  const struct billmgr_error *e)
{
    x->fstatus = st;
    x->ferr = *e;
    billmgr_list_push(&bm->done, x);
}

static void billmgr_complete(struct billmgr *bm, struct billmgr_xfer *x, rt_status st, json_t *doc,
                             const struct billmgr_error *e, long http_code)
{
    struct billmgr_reply r;
    r.status = st;
    r.err_type = e->type;
    r.err_object = e->object;
    r.message = e->message;
    r.doc = st == RT_OK ? doc : NULL;
    r.http_code = http_code;
    r.seconds = billmgr_now_s() - x->t0;
    if (st == RT_OK)
        log_debug("billmgr: call \"%s\" done in %.3f s", x->func, r.seconds);
    else
        log_debug("billmgr: call \"%s\" failed (%s, %s) in %.3f s: %s", x->func, rt_status_name(st),
                  e->type, r.seconds, e->message);
    if (bm->on_call)
        bm->on_call(bm->on_call_arg, x->func, st, e->type, r.seconds);
    if (x->cb)
        x->cb(x->arg, &r);
    billmgr_xfer_free(x);
}

/* Fails every queued call with the reason the login failed: none of them
 * can run without a session. */
static void billmgr_fail_queue(struct billmgr *bm, rt_status st, const struct billmgr_error *e)
{
    struct billmgr_error qe;
    billmgr_set_error(&qe, e->type, e->object, "login failed: %s", e->message);
    struct billmgr_list l = billmgr_list_take(&bm->queue);
    struct billmgr_xfer *x;
    while ((x = billmgr_list_pop(&l)) != NULL)
        billmgr_complete(bm, x, st, NULL, &qe, 0);
}

static void billmgr_login_done(struct billmgr *bm, struct billmgr_xfer *x, rt_status st,
                               json_t *doc, struct billmgr_error *e)
{
    bm->login_xfer = NULL;
    if (st == RT_OK) {
        json_t *auth = json_object_get(doc, "auth");
        const char *id = json_string_value(json_object_get(auth, "$id"));
        if (!id || !*id)
            id = billmgr_text(doc, "auth");
        if (id && *id) {
            billmgr_free_secret(bm->session);
            bm->session = strdup(id);
            if (bm->session) {
                bm->session_gen++;
                log_debug("billmgr: logged in to \"%s\" as \"%s\"", bm->url, bm->login);
            } else {
                billmgr_set_error(e, "transport", "", "out of memory");
                st = RT_RETRY;
            }
        } else {
            billmgr_set_error(e, "auth", "", "login answer carries no session id");
            st = RT_REJECT;
        }
    }
    json_decref(doc);
    billmgr_xfer_free(x);
    if (st != RT_OK) {
        log_debug("billmgr: login to \"%s\" as \"%s\" failed: %s", bm->url, bm->login, e->message);
        billmgr_fail_queue(bm, st, e);
    }
}

/* Maps a finished transfer to its outcome and reports it, or requeues it
 * for one retry after a re-login. */
static void billmgr_finish(struct billmgr *bm, struct billmgr_xfer *x, CURLcode res)
{
    struct billmgr_error e;
    json_t *doc = NULL;
    long code = 0;
    char *ctype = NULL;
    curl_off_t length = x->announced;
    rt_status st;

    curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &code);
    curl_easy_getinfo(x->easy, CURLINFO_CONTENT_TYPE, &ctype);
    billmgr_wipe_buf(&x->body);
    billmgr_clear_error(&e);
    if (res == CURLE_OK) {
        st = billmgr_parse_reply(code, ctype, x->resp.data, x->resp.len, bm->max_values, &doc, &e);
    } else if (x->toolarge || res == CURLE_FILESIZE_EXCEEDED) {
        /* Retried, not rejected: see "toolarge" at the top of billmgr.h. */
        st = RT_RETRY;
        if (length >= 0)
            billmgr_set_error(&e, "toolarge", "",
                              "answer of %" CURL_FORMAT_CURL_OFF_T " bytes is larger than "
                              "billmanager.max_response (%zu bytes)",
                              length, bm->max_response);
        else
            billmgr_set_error(&e, "toolarge", "",
                              "answer is larger than billmanager.max_response (%zu bytes)",
                              bm->max_response);
    } else if (x->overbudget) {
        st = RT_RETRY;
        billmgr_set_error(&e, "toolarge", "",
                          "answers received at once would hold more than %zu bytes (twice "
                          "billmanager.max_response): this one is retried",
                          bm->max_buffered);
    } else if (x->tooslow) {
        st = RT_RETRY;
        billmgr_set_error(&e, "timeout", "",
                          "answer arrives too slowly: %zu bytes of its body in %.1f s, under "
                          "%d bytes/s",
                          x->resp.len, (double)(billmgr_now_ms() - x->body_t0_ms) / 1000.0,
                          BILLMGR_MIN_BODY_RATE);
    } else if (res == CURLE_OPERATION_TIMEDOUT) {
        st = RT_RETRY;
        billmgr_set_error(&e, "timeout", "", "%s",
                          x->errbuf[0] ? x->errbuf : curl_easy_strerror(res));
    } else if (x->body_t0_ms) {
        /* A reset or a close in the middle of the body: the server may
         * have done the work, the answer is lost. */
        st = RT_RETRY;
        if (length >= 0)
            billmgr_set_error(&e, "transport", "",
                              "answer cut off after %zu of %" CURL_FORMAT_CURL_OFF_T " bytes: %s",
                              x->resp.len, length,
                              x->errbuf[0] ? x->errbuf : curl_easy_strerror(res));
        else
            billmgr_set_error(&e, "transport", "", "answer cut off after %zu bytes: %s",
                              x->resp.len, x->errbuf[0] ? x->errbuf : curl_easy_strerror(res));
    } else {
        st = RT_RETRY;
        billmgr_set_error(&e, "transport", "", "%s",
                          x->errbuf[0] ? x->errbuf : curl_easy_strerror(res));
    }
    billmgr_resp_drop(x);
    buf_release(&x->resp);
    buf_init(&x->resp, bm->max_response);
    if (st != RT_OK && st != RT_REJECT) {
        /* Every failure that is not the API's own answer names the call. */
        struct billmgr_error plain = e;
        billmgr_set_error(&e, plain.type, plain.object, "%s: %s", x->func, plain.message);
    }
    billmgr_scrub_secrets(bm, &e);

    if (x->is_login) {
        billmgr_login_done(bm, x, st, doc, &e);
        return;
    }
    if (st == RT_REJECT && bm->auth_session && !x->relogged && strcmp(e.type, "auth") == 0) {
        /* The session expired (or the server forgot it): log in again,
         * unless another call already did since this one started, and run
         * this call once more at the head of the queue. */
        x->relogged = 1;
        if (bm->session && x->session_gen == bm->session_gen) {
            billmgr_free_secret(bm->session);
            bm->session = NULL;
        }
        log_debug("billmgr: session expired during \"%s\", logging in again", x->func);
        billmgr_list_push_front(&bm->queue, x);
        return;
    }
    billmgr_complete(bm, x, st, doc, &e, code);
    json_decref(doc);
}

static void billmgr_start_login(struct billmgr *bm)
{
    struct billmgr_error e;
    struct billmgr_xfer *x = billmgr_xfer_new(bm, "auth", NULL);
    if (x) {
        x->is_login = 1;
        if (billmgr_xfer_start(bm, x) == 0) {
            bm->login_xfer = x;
            return;
        }
        billmgr_xfer_free(x);
    }
    /* Reported from billmgr_handle through the done list. */
    billmgr_set_error(&e, "transport", "", "cannot start the login: out of memory");
    struct billmgr_list l = billmgr_list_take(&bm->queue);
    while ((x = billmgr_list_pop(&l)) != NULL)
        billmgr_defer_failure(bm, x, RT_RETRY, &e);
}

/* Starts queued calls while there is room, logging in first in session
 * mode. */
static void billmgr_dispatch(struct billmgr *bm)
{
    while (bm->queue.head && bm->running.n < (size_t)bm->max_inflight) {
        if (bm->auth_session && !bm->session) {
            if (!bm->login_xfer)
                billmgr_start_login(bm);
            return;
        }
        struct billmgr_xfer *x = billmgr_list_pop(&bm->queue);
        if (billmgr_xfer_start(bm, x) < 0) {
            struct billmgr_error e;
            billmgr_set_error(&e, "transport", "", "cannot start the transfer: out of memory");
            billmgr_defer_failure(bm, x, RT_RETRY, &e);
        }
    }
}

static void billmgr_read_completions(struct billmgr *bm)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(bm->multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        CURL *easy = msg->easy_handle;
        CURLcode res = msg->data.result;
        char *priv = NULL;
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, &priv);
        struct billmgr_xfer *x = (struct billmgr_xfer *)priv;
        curl_multi_remove_handle(bm->multi, easy);
        billmgr_list_remove(&bm->running, x);
        billmgr_finish(bm, x, res);
    }
}

/* ---- the handle ---- */

struct billmgr *billmgr_new(const struct billmgr_opts *opts, char *err, size_t errlen)
{
    struct billmgr *bm;
    CURLU *u;
    char *scheme = NULL, *user = NULL, *pass = NULL;

    if (!opts->url || !*opts->url || !opts->login || !*opts->login) {
        snprintf(err, errlen, "billmanager url and login must be set");
        return NULL;
    }
    /* Credentials go in the body only: a URL with userinfo would put them
     * in every request line and error text. The URL is not quoted in the
     * errors below, since it might hold exactly such a password. */
    u = curl_url();
    if (!u) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (curl_url_set(u, CURLUPART_URL, opts->url, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK) {
        curl_url_cleanup(u);
        snprintf(err, errlen, "billmanager url is not a valid URL");
        return NULL;
    }
    char *query = NULL;
    int has_query = curl_url_get(u, CURLUPART_QUERY, &query, 0) == CURLUE_OK;
    if (query)
        explicit_bzero(query, strlen(query));
    curl_free(query);
    int has_user = curl_url_get(u, CURLUPART_USER, &user, 0) == CURLUE_OK;
    int has_pass = curl_url_get(u, CURLUPART_PASSWORD, &pass, 0) == CURLUE_OK;
    int scheme_ok = strcmp(scheme, "http") == 0 || strcmp(scheme, "https") == 0;
    curl_free(scheme);
    curl_free(user);
    if (pass)
        explicit_bzero(pass, strlen(pass));
    curl_free(pass);
    curl_url_cleanup(u);
    if (has_user || has_pass) {
        snprintf(err, errlen,
                 "billmanager url must not hold a user or password: "
                 "set login and password instead");
        return NULL;
    }
    if (has_query) {
        snprintf(err, errlen,
                 "billmanager url must not have a query string: "
                 "parameters and credentials travel in the POST body");
        return NULL;
    }
    if (!scheme_ok) {
        snprintf(err, errlen, "billmanager url must start with http:// or https://");
        return NULL;
    }

    bm = calloc(1, sizeof(*bm));
    if (!bm) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    bm->deadline_ms = -1;
    /* Reference-counted by libcurl; paired with curl_global_cleanup in
     * billmgr_free. */
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        free(bm);
        snprintf(err, errlen, "cannot initialise libcurl");
        return NULL;
    }
    bm->url = strdup(opts->url);
    bm->login = strdup(opts->login);
    bm->password = strdup(opts->password ? opts->password : "");
    bm->ca_file = opts->ca_file && *opts->ca_file ? strdup(opts->ca_file) : NULL;
    bm->auth_session = opts->auth_session ? 1 : 0;
    bm->timeout_ms = opts->timeout_ms > 0 ? opts->timeout_ms : BILLMGR_DEFAULT_TIMEOUT_MS;
    bm->connect_timeout_ms = opts->connect_timeout_ms > 0 ? opts->connect_timeout_ms
                                                          : BILLMGR_DEFAULT_CONNECT_TIMEOUT_MS;
    if (bm->connect_timeout_ms > bm->timeout_ms)
        bm->connect_timeout_ms = bm->timeout_ms;
    bm->max_inflight = opts->max_inflight > 0 ? opts->max_inflight : BILLMGR_DEFAULT_MAX_INFLIGHT;
    bm->max_response = opts->max_response ? opts->max_response : BILLMGR_DEFAULT_MAX_RESPONSE;
    bm->max_buffered = bm->max_response * 2;
    bm->verify_tls = opts->verify_tls ? 1 : 0;
    bm->page_size = opts->page_size > 0 ? opts->page_size : BILLMGR_DEFAULT_PAGE_SIZE;
    bm->max_queued = opts->max_queued ? opts->max_queued : BILLMGR_DEFAULT_MAX_QUEUED;
    bm->max_values = BILLMGR_VALUES_BASE + BILLMGR_VALUES_PER_ROW * (size_t)bm->page_size;
    bm->slow_window_ms =
        bm->timeout_ms / 4 < BILLMGR_SLOW_BODY_MS ? bm->timeout_ms / 4 : BILLMGR_SLOW_BODY_MS;
    bm->on_call = opts->on_call;
    bm->on_call_arg = opts->on_call_arg;
    if (!bm->url || !bm->login || !bm->password ||
        (opts->ca_file && *opts->ca_file && !bm->ca_file))
        goto fail_nomem;

    bm->multi = curl_multi_init();
    if (!bm->multi)
        goto fail_nomem;
    bm->headers = curl_slist_append(NULL, "Content-Type: application/x-www-form-urlencoded");
    /* No "Expect: 100-continue" round trip for large notes. */
    struct curl_slist *h = bm->headers ? curl_slist_append(bm->headers, "Expect:") : NULL;
    if (!h)
        goto fail_nomem;
    bm->headers = h;
    if (curl_multi_setopt(bm->multi, CURLMOPT_SOCKETFUNCTION, billmgr_sock_cb) != CURLM_OK ||
        curl_multi_setopt(bm->multi, CURLMOPT_SOCKETDATA, bm) != CURLM_OK ||
        curl_multi_setopt(bm->multi, CURLMOPT_TIMERFUNCTION, billmgr_timer_cb) != CURLM_OK ||
        curl_multi_setopt(bm->multi, CURLMOPT_TIMERDATA, bm) != CURLM_OK ||
        curl_multi_setopt(bm->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)bm->max_inflight) !=
            CURLM_OK ||
        curl_multi_setopt(bm->multi, CURLMOPT_MAXCONNECTS, (long)bm->max_inflight) != CURLM_OK) {
        snprintf(err, errlen, "cannot set up libcurl's multi handle");
        billmgr_free(bm);
        return NULL;
    }
    return bm;

fail_nomem:
    snprintf(err, errlen, "out of memory");
    billmgr_free(bm);
    return NULL;
}

static void billmgr_free_list(struct billmgr *bm, struct billmgr_list *l, int in_multi)
{
    struct billmgr_xfer *x;
    while ((x = billmgr_list_pop(l)) != NULL) {
        if (in_multi)
            curl_multi_remove_handle(bm->multi, x->easy);
        billmgr_xfer_free(x);
    }
}

void billmgr_free(struct billmgr *bm)
{
    if (!bm)
        return;
    if (bm->multi) {
        billmgr_free_list(bm, &bm->running, 1);
        curl_multi_cleanup(bm->multi);
    }
    billmgr_free_list(bm, &bm->queue, 0);
    billmgr_free_list(bm, &bm->done, 0);
    curl_slist_free_all(bm->headers);
    free(bm->socks);
    free(bm->url);
    free(bm->login);
    billmgr_free_secret(bm->password);
    billmgr_free_secret(bm->session);
    free(bm->ca_file);
    free(bm);
    curl_global_cleanup();
}

int billmgr_call(struct billmgr *bm, const char *func, const struct billmgr_params *params,
                 billmgr_done_fn cb, void *arg)
{
    if (!func || !*func || bm->queue.n >= bm->max_queued)
        return -1;
    struct billmgr_xfer *x = billmgr_xfer_new(bm, func, params);
    if (!x)
        return -1;
    x->cb = cb;
    x->arg = arg;
    if (log_get_level() >= LOG_LEVEL_DEBUG) {
        char shown[512];
        log_debug("billmgr: call \"%s\" queued: %s", func,
                  redact_form(x->form, shown, sizeof(shown)));
    }
    billmgr_list_push(&bm->queue, x);
    billmgr_dispatch(bm);
    return 0;
}

size_t billmgr_pollfds(struct billmgr *bm, struct pollfd *fds, size_t max)
{
    for (size_t i = 0; i < bm->nsocks && i < max; i++) {
        fds[i].fd = bm->socks[i].fd;
        fds[i].events = bm->socks[i].events;
        fds[i].revents = 0;
    }
    return bm->nsocks;
}

int billmgr_timeout_ms(struct billmgr *bm)
{
    if (bm->done.n)
        return 0;
    if (bm->deadline_ms < 0)
        return -1;
    long long left = bm->deadline_ms - billmgr_now_ms();
    if (left <= 0)
        return 0;
    return left > INT_MAX ? INT_MAX : (int)left;
}

void billmgr_handle(struct billmgr *bm, const struct pollfd *fds, size_t n)
{
    int running;
    for (size_t i = 0; i < n; i++) {
        if (!fds[i].revents || billmgr_sock_find(bm, fds[i].fd) < 0)
            continue;
        int flags = 0;
        if (fds[i].revents & POLLIN)
            flags |= CURL_CSELECT_IN;
        if (fds[i].revents & POLLOUT)
            flags |= CURL_CSELECT_OUT;
        if (fds[i].revents & (POLLERR | POLLHUP | POLLNVAL))
            flags |= CURL_CSELECT_ERR;
        curl_multi_socket_action(bm->multi, fds[i].fd, flags, &running);
    }
    if (bm->deadline_ms >= 0 && billmgr_now_ms() >= bm->deadline_ms) {
        bm->deadline_ms = -1;
        curl_multi_socket_action(bm->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    }
    billmgr_read_completions(bm);

    struct billmgr_list failed = billmgr_list_take(&bm->done);
    struct billmgr_xfer *x;
    while ((x = billmgr_list_pop(&failed)) != NULL)
        billmgr_complete(bm, x, x->fstatus, NULL, &x->ferr, 0);

    billmgr_dispatch(bm);
}

size_t billmgr_inflight(struct billmgr *bm)
{
    return bm->running.n - (bm->login_xfer ? 1 : 0) + bm->queue.n + bm->done.n;
}

/* ---- synchronous helpers ---- */

struct billmgr_sync {
    int done;
    rt_status status;
    struct billmgr_error err;
    json_t *doc;
};

static void billmgr_sync_cb(void *arg, const struct billmgr_reply *r)
{
    struct billmgr_sync *s = arg;
    s->done = 1;
    s->status = r->status;
    billmgr_copy_text(s->err.type, sizeof(s->err.type), r->err_type);
    billmgr_copy_text(s->err.object, sizeof(s->err.object), r->err_object);
    billmgr_copy_text(s->err.message, sizeof(s->err.message), r->message);
    s->doc = r->doc ? json_incref(r->doc) : NULL;
}

/* One round of the private poll loop. Returns -1 when memory ran out. */
static int billmgr_sync_round(struct billmgr *bm, struct pollfd **fds, size_t *cap)
{
    size_t n = billmgr_pollfds(bm, *fds, *cap);
    if (n > *cap) {
        struct pollfd *p = realloc(*fds, n * sizeof(*p));
        if (!p)
            return -1;
        *fds = p;
        *cap = n;
        n = billmgr_pollfds(bm, *fds, *cap);
    }
    int timeout = billmgr_timeout_ms(bm);
    if (timeout < 0 || timeout > BILLMGR_SYNC_MAX_WAIT_MS)
        timeout = BILLMGR_SYNC_MAX_WAIT_MS;
    int rc = poll(*fds, (nfds_t)n, timeout);
    if (rc < 0 && errno != EINTR)
        return -1;
    billmgr_handle(bm, *fds, rc > 0 ? n : 0);
    return 0;
}

rt_status billmgr_call_sync(struct billmgr *bm, const char *func,
                            const struct billmgr_params *params, json_t **doc_out,
                            struct billmgr_error *err)
{
    struct billmgr_sync s = {0};
    struct billmgr_error scratch;
    struct pollfd *fds = NULL;
    size_t cap = 0;

    if (!err)
        err = &scratch;
    if (doc_out)
        *doc_out = NULL;
    billmgr_clear_error(err);
    if (billmgr_call(bm, func, params, billmgr_sync_cb, &s) < 0) {
        billmgr_set_error(err, "transport", "", "cannot queue the call of \"%s\"",
                          func ? func : "");
        return RT_RETRY;
    }
    cap = (size_t)bm->max_inflight + 4;
    fds = calloc(cap, sizeof(*fds));
    if (!fds)
        cap = 0;
    while (!s.done) {
        if (billmgr_sync_round(bm, &fds, &cap) < 0) {
            /* The call is still queued with our stack frame as its arg:
             * it must not outlive this function, so wait without the
             * array (poll on no fds is a sleep until curl's deadline). */
            struct pollfd none;
            int timeout = billmgr_timeout_ms(bm);
            poll(&none, 0, timeout < 0 || timeout > 100 ? 100 : timeout);
            billmgr_handle(bm, NULL, 0);
        }
    }
    free(fds);
    *err = s.err;
    if (doc_out)
        *doc_out = s.doc;
    else
        json_decref(s.doc);
    return s.status;
}

rt_status billmgr_list_sync(struct billmgr *bm, const char *func,
                            const struct billmgr_params *filter, billmgr_elem_fn each, void *arg,
                            struct billmgr_error *err)
{
    struct billmgr_error scratch;
    long seen = 0;

    if (!err)
        err = &scratch;
    billmgr_clear_error(err);
    for (long page = 1;; page++) {
        struct billmgr_params p;
        json_t *doc = NULL;
        int bad = 0;
        billmgr_params_init(&p);
        for (size_t i = 0; filter && i < filter->n; i++)
            bad |= billmgr_params_add(&p, filter->v[i].key, filter->v[i].value);
        bad |= billmgr_params_addf(&p, "p_cnt", "%d", bm->page_size);
        bad |= billmgr_params_addf(&p, "p_num", "%ld", page);
        if (bad) {
            billmgr_params_release(&p);
            billmgr_set_error(err, "transport", "", "cannot build the list call of \"%s\"", func);
            return RT_RETRY;
        }
        rt_status st = billmgr_call_sync(bm, func, &p, &doc, err);
        billmgr_params_release(&p);
        if (st != RT_OK)
            return st;

        json_t *elems = json_object_get(doc, "elem");
        size_t rows = 0;
        int stop = 0;
        if (json_is_array(elems)) {
            size_t i;
            json_t *e;
            json_array_foreach(elems, i, e)
            {
                rows++;
                if (each(arg, e)) {
                    stop = 1;
                    break;
                }
            }
        } else if (json_is_object(elems)) {
            /* Some encoders give a one-row list as the row itself. */
            rows = 1;
            stop = each(arg, elems) != 0;
        }
        long total;
        int have_total = billmgr_long(doc, "p_elems", &total) == 0;
        json_decref(doc);
        seen += (long)rows;
        if (stop || rows == 0)
            return RT_OK;
        /* With p_elems known it decides, since a server may cap p_cnt below
         * what was asked; without it a short page is the last one. */
        if (have_total ? seen >= total : rows < (size_t)bm->page_size)
            return RT_OK;
        if (seen >= BILLMGR_LIST_MAX_ROWS) {
            /* A server that pages forever misbehaves like one whose answer
             * is too large: retried, see the top of billmgr.h. */
            billmgr_set_error(err, "toolarge", "", "list \"%s\" passed %ld rows", func,
                              BILLMGR_LIST_MAX_ROWS);
            return RT_RETRY;
        }
    }
}
