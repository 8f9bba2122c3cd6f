/*
 * billmgr.h - the BILLmanager API client (libcurl multi + jansson).
 *
 * One struct billmgr talks to one BILLmanager installation (one URL, one
 * login). Calls are asynchronous: billmgr_call() queues a call, and the
 * owner's poll() loop drives every transfer through billmgr_pollfds(),
 * billmgr_timeout_ms() and billmgr_handle(), which run the completion
 * callbacks. At most max_inflight transfers run at once; the rest wait in
 * FIFO order. billmgr_call_sync() and billmgr_list_sync() are the same
 * machinery with a private poll loop, for the CLI and simple callers.
 *
 * Requests follow the API contract (§1; tests/sim/billsim.py plays it): a
 * POST to the configured URL with an application/x-www-form-urlencoded
 * body holding func, out=json, the caller's parameters in order and the
 * credentials (authinfo=LOGIN:PASSWORD, or auth=SESSION in session mode).
 * Credentials are only ever in the body:
 * never in the URL, a log line, an error string or a reply.
 *
 * Outcomes (the contract's §2):
 *   HTTP 200, an API document without error    RT_OK
 *   doc.error, an object                       RT_REJECT, type/object/msg kept
 *     (type auth in session mode: one re-login and one retry of the call
 *      first; a second auth error, or a failed login, is RT_REJECT)
 *   HTTP status other than 200                 RT_RETRY, type "http"
 *   connect failure, reset, DNS, TLS, or an
 *     answer cut off before its end            RT_RETRY, type "transport"
 *   total or connect timeout, or a body that
 *     arrives too slowly (below)               RT_RETRY, type "timeout"
 *   body not JSON (an HTML login page, a
 *     truncated text), or not an API document
 *     (below)                                  RT_RETRY, type "json"
 *   answer larger than max_response            RT_RETRY, type "toolarge"
 *
 * Only a well-formed API error is a refusal of this call. Everything else
 * is an API that misbehaves (a proxy, an outage, a login wall in front of
 * it, a broken link), which says nothing against the call: it is worth
 * trying again once the API is healthy, so a transient fault never sends
 * a message to the dead-letter queue for good. (Nor may a caller count
 * such a failure as "not done": the API may have run a write whose answer
 * was lost on the way; consumer/forward.c searches for a create whose
 * answer it never read before it creates again.)
 *
 * "toolarge" is retried too. With a cap far above anything the bridge
 * reads (BILLMGR_DEFAULT_MAX_RESPONSE), an answer over it is a server or
 * proxy misbehaving far more often than a real answer. When it is a real
 * answer after all, the retries keep failing loudly, with the size in the
 * message, until an operator raises billmanager.max_response; then they
 * succeed and nothing is lost. A retry of an oversized answer costs at
 * most max_response bytes, or nothing when the Content-Length announces
 * the size.
 *
 * What a hostile answer can cost:
 * - bytes: the body is buffered up to max_response (a Content-Length
 *   over it ends the transfer before the body; a longer body ends it when
 *   the cap is reached), and every answer being received at once holds at
 *   most twice max_response together: a call whose answer would pass that
 *   ends as "toolarge" (RT_RETRY), so that max_inflight concurrent hostile
 *   answers cannot hold max_inflight × max_response;
 * - time: the call ends within timeout_ms (curl's total timeout, which
 *   runs on the owner's poll loop through billmgr_timeout_ms even on an
 *   idle connection); a body that has started but arrives slower than
 *   BILLMGR_MIN_BODY_RATE bytes/s over the first min(timeout_ms / 4,
 *   BILLMGR_SLOW_BODY_MS) after its first byte ends sooner, as "timeout";
 * - the parse: before jansson builds a tree, one pass over the body
 *   counts its values (every "{", "[", ":" and "," outside strings) and
 *   its nesting; more than BILLMGR_MAX_DEPTH levels, or more values than
 *   BILLMGR_VALUES_BASE + BILLMGR_VALUES_PER_ROW x page_size, is refused
 *   unparsed. jansson is given JSON_REJECT_DUPLICATES (BILLmanager's JSON
 *   mirrors its XML, where repeated elements become arrays, so a repeated
 *   key is ambiguous, never meant). The tree of a body within these caps
 *   takes at most about 150 bytes per value plus a copy of its strings:
 *   with page_size 200 (the configuration's default; 29,696 values) under
 *   5 MB, with 1000 (this module's default) under 20 MB, plus at most
 *   max_response for the strings, on top of the max_response buffer.
 *   Answers are parsed one at a time, as their transfers complete, and a
 *   tree outlives its callback only when the caller keeps a reference.
 * An API document is what BILLmanager's out=json gives: a root object
 * holding a "doc" object, in which every value is text (a string, as
 * "$" or a "$attribute" or bare), an object or an array of objects
 * (repeated elements); "elem", when present, is a list (an array, or one
 * row as an object); "error", when present, is an object whose "$type"
 * and "$object" are text. A number, true, false or null anywhere, an
 * array holding anything but objects, or an "elem" or "error" of another
 * type is not an API document: BILLmanager never writes those, so such an
 * answer comes from something else, and reading it as one would turn a
 * field of the wrong type into an empty value.
 *
 * Messages of these failures start with the function ("task.edit: answer
 * is not JSON (text/html; charset=utf-8, 621 bytes, invalid syntax at byte
 * 1): a page titled \"BILLmanager - Log in\"") and quote at most
 * BILLMGR_EXCERPT_MAX bytes of the answer, with control characters,
 * invalid UTF-8 and anything that looks like a credential (the password,
 * plain or URL-encoded, the session id, or text naming authinfo, password
 * or auth=) taken out. An API error's own texts are kept, cut to their
 * fields' sizes, with control characters turned into spaces.
 *
 * Not thread-safe: one struct billmgr belongs to one thread.
 */
#ifndef RT_BILLMGR_H
#define RT_BILLMGR_H

#include <poll.h>
#include <stddef.h>

#include <jansson.h>

#include "buf.h"
#include "rt.h"

/* Defaults used when a field of billmgr_opts is 0. */
#define BILLMGR_DEFAULT_TIMEOUT_MS         30000L
#define BILLMGR_DEFAULT_CONNECT_TIMEOUT_MS 10000L
#define BILLMGR_DEFAULT_MAX_INFLIGHT       16
/* 4 MiB: the largest answers the bridge reads are one task's view and one
 * list page. The emulator's view of a task with a 64 KiB note is 66 KB,
 * a page of 200 task rows 72 KB; a note at the codec's cap (1 MiB) fits
 * even with every character JSON-escaped to three times its size. */
#define BILLMGR_DEFAULT_MAX_RESPONSE ((size_t)4 * 1024 * 1024)
#define BILLMGR_DEFAULT_PAGE_SIZE    1000
#define BILLMGR_DEFAULT_MAX_QUEUED   ((size_t)65536)

/* Caps on what one call may carry: parameters are built by the bridge, but
 * their values (names, notes) come from the other side. */
#define BILLMGR_MAX_PARAMS 256
#define BILLMGR_MAX_VALUE  ((size_t)4 * 1024 * 1024)

/* Caps on the parse of one answer (see the top of this file): nesting, and
 * the values a document may hold, by the page size a list asks for. The
 * emulator's task rows take 51 values each; real rows may have more
 * columns. */
#define BILLMGR_MAX_DEPTH      16
#define BILLMGR_VALUES_BASE    ((size_t)4096)
#define BILLMGR_VALUES_PER_ROW ((size_t)128)

/* A body that has started must keep coming at this rate, measured over the
 * first min(timeout_ms / 4, BILLMGR_SLOW_BODY_MS) after its first byte. */
#define BILLMGR_MIN_BODY_RATE 1024
#define BILLMGR_SLOW_BODY_MS  10000L

/* The most bytes of an answer quoted in an error message. */
#define BILLMGR_EXCERPT_MAX 64

/* Caps on the error texts kept from an answer; longer texts are cut. */
#define BILLMGR_ERR_TYPE_MAX    32
#define BILLMGR_ERR_OBJECT_MAX  128
#define BILLMGR_ERR_MESSAGE_MAX 512

/* How to reach one BILLmanager. Independent of config.h: the daemon fills
 * it from struct config's billmanager section. billmgr_new copies every
 * string, so the struct and its strings may be freed after the call. */
struct billmgr_opts {
    const char *url; /* http:// or https://, without user:password@ */
    const char *login;
    const char *password;    /* never logged */
    int auth_session;        /* 0 = authinfo on every call; 1 = func=auth
                                session, re-login once when it expires */
    long timeout_ms;         /* whole transfer; 0 = BILLMGR_DEFAULT_TIMEOUT_MS */
    long connect_timeout_ms; /* 0 = the smaller of 10 s and timeout_ms */
    int max_inflight;        /* concurrent transfers; 0 = 16 */
    size_t max_response;     /* cap on one answer's body; 0 = 4 MiB */
    const char *ca_file;     /* NULL or "" = the system's CA store */
    int verify_tls;          /* 1 = verify the peer and its name (do this) */
    int page_size;           /* p_cnt of billmgr_list_sync, and the rows of
                                a page the parse allows for; 0 = 1000 */
    size_t max_queued;       /* cap on calls waiting to start; 0 = 65536 */
    /* Optional observer, for metrics: called once per completed call
     * (billmgr_call and the sync helpers alike), just before the call's
     * own callback, with the API function, the outcome, the error type
     * ("" on RT_OK, never NULL) and the seconds from billmgr_call to
     * completion. A call retried after a re-login is reported once; the
     * login itself and calls cancelled by billmgr_free are not reported.
     * Everything it gets is borrowed for the duration of the call. It
     * must not call into bm. NULL = no observer. */
    void (*on_call)(void *arg, const char *func, rt_status status, const char *err_type,
                    double seconds);
    void *on_call_arg;
};

/* An ordered list of request parameters (key=value), owned copies. */
struct billmgr_param {
    char *key;
    char *value;
};

struct billmgr_params {
    struct billmgr_param *v;
    size_t n;
    size_t cap;
};

/* The error of a failed call, as copies that outlive the call. Every field
 * is a NUL-terminated string, "" when unknown; all are "" on RT_OK. */
struct billmgr_error {
    char type[BILLMGR_ERR_TYPE_MAX];       /* API $type, or http, timeout,
                                              transport, json, toolarge */
    char object[BILLMGR_ERR_OBJECT_MAX];   /* API $object, e.g. a field name */
    char message[BILLMGR_ERR_MESSAGE_MAX]; /* API msg text or curl's text */
};

/* What a completed call hands its callback. Everything is borrowed and
 * valid during the callback only. */
struct billmgr_reply {
    rt_status status;
    const char *err_type;   /* "" on RT_OK, never NULL */
    const char *err_object; /* "" when the API named none, never NULL */
    const char *message;    /* "" on RT_OK, never NULL */
    json_t *doc;            /* the answer's "doc" object on RT_OK, else NULL;
                               json_incref it to keep it */
    long http_code;         /* 0 when no answer arrived */
    double seconds;         /* from billmgr_call to completion, including
                               time queued and any re-login */
};

struct billmgr;

/* Called once per call when it completes. May call billmgr_call (new calls
 * are queued, never run inside the callback); must not call billmgr_free. */
typedef void (*billmgr_done_fn)(void *arg, const struct billmgr_reply *r);

/* Called once per element of a list; return 0 to go on, anything else to
 * stop listing (billmgr_list_sync then returns RT_OK). elem is borrowed. */
typedef int (*billmgr_elem_fn)(void *arg, json_t *elem);

/* ---- parameters ---- */

/* Starts an empty list. */
void billmgr_params_init(struct billmgr_params *p);

/* Appends key=value (both copied). key must be non-empty. Returns 0, or -1
 * when the list holds BILLMGR_MAX_PARAMS already, the value is longer than
 * BILLMGR_MAX_VALUE, or memory ran out; on -1 the list is unchanged. */
int billmgr_params_add(struct billmgr_params *p, const char *key, const char *value);

/* Appends key=printf(fmt, ...). Same returns as billmgr_params_add. */
int billmgr_params_addf(struct billmgr_params *p, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Frees every copy; the list may be reused after billmgr_params_init.
 * Accepts a zeroed list. */
void billmgr_params_release(struct billmgr_params *p);

/* ---- the handle ---- */

/* Makes a client from opts (copied). Sends nothing yet. Returns NULL with a
 * reason in err (which never holds the password) when opts are invalid (no
 * url, a url with credentials or a query string or a scheme other than
 * http/https, no login)
 * or curl cannot be set up. Free with billmgr_free. */
struct billmgr *billmgr_new(const struct billmgr_opts *opts, char *err, size_t errlen);

/* Cancels every call in flight or queued without calling its callback,
 * wipes the credentials from memory and frees everything. Accepts NULL. */
void billmgr_free(struct billmgr *bm);

/* Queues a call of func with params (copied; NULL = none) and returns at
 * once; cb(arg, reply) runs later from billmgr_handle (or a sync helper).
 * Returns 0, or -1 when the call could not be queued (memory, the
 * max_queued cap, a parameter too large, func empty): cb is then never
 * called. */
int billmgr_call(struct billmgr *bm, const char *func, const struct billmgr_params *params,
                 billmgr_done_fn cb, void *arg);

/* Fills fds with the sockets curl wants watched now (fd, events; revents
 * zeroed) and returns how many there are. When that is more than max only
 * the first max are filled: call again with a larger array (max_inflight +
 * 4 entries is always enough in practice). */
size_t billmgr_pollfds(struct billmgr *bm, struct pollfd *fds, size_t max);

/* Milliseconds until billmgr_handle must be called even if no socket is
 * ready: 0 = now, -1 = no deadline (nothing to do until a socket is). */
int billmgr_timeout_ms(struct billmgr *bm);

/* To be called after poll() with the fds billmgr_pollfds gave (their
 * revents filled in), or with n = 0 when only the timeout expired. Drives
 * curl for ready sockets and an expired timer, runs the completion
 * callbacks and starts queued calls. */
void billmgr_handle(struct billmgr *bm, const struct pollfd *fds, size_t n);

/* Calls not yet completed: running plus queued. */
size_t billmgr_inflight(struct billmgr *bm);

/* 1 when a call made now would start at once: no call waits in the queue
 * and fewer than max_inflight run. Background work (the state cycles)
 * asks this before taking a slot that a latency-bound call (an apply)
 * could want, since the queue is first come, first served. */
int billmgr_has_room(struct billmgr *bm);

/* ---- synchronous helpers ---- */

/* Makes one call and waits for it in a private poll loop (which also
 * drives, and runs the callbacks of, any other call in flight on bm).
 * On RT_OK *doc_out (when doc_out is not NULL) is a new reference to the
 * answer's doc object, which the caller json_decref's; otherwise it is set
 * to NULL. err (may be NULL) receives the reason of a failure. A call that
 * cannot be queued returns RT_RETRY with type "transport". */
rt_status billmgr_call_sync(struct billmgr *bm, const char *func,
                            const struct billmgr_params *params, json_t **doc_out,
                            struct billmgr_error *err);

/* Lists func page by page (p_cnt = page_size, p_num = 1, 2, ...) with the
 * filter parameters (may be NULL) added to every page, and calls each(arg,
 * elem) for every row, until p_elems rows were seen, a page comes back
 * empty or short, or each() asks to stop. Rows that move between pages
 * while listing (created or deleted meanwhile) may be missed or seen twice:
 * callers that need every row reconcile again later. Returns the first
 * failing page's status with its reason in err; rows already handed to
 * each() stay handed. A list that passes 10,000,000 rows (a server that
 * ignores p_num) ends as RT_RETRY, type "toolarge". */
rt_status billmgr_list_sync(struct billmgr *bm, const char *func,
                            const struct billmgr_params *filter, billmgr_elem_fn each, void *arg,
                            struct billmgr_error *err);

/* ---- JSON helpers ---- */

/* obj.key.$ as a C string borrowed from obj, or NULL when obj is not an
 * object, the key is missing or holds no text. It cannot tell a missing
 * field from one of the wrong type: a caller that writes what it reads
 * to the other side uses billmgr_text_field instead. */
const char *billmgr_text(json_t *obj, const char *key);

/* Reads obj.key as text, telling the three cases apart:
 *   1   *out is the text, borrowed from obj: {"$": "..."}, a bare string,
 *       or "" for an element without text ({}, or "$attribute" keys
 *       only, which is how an empty field can come);
 *   0   *out = NULL: obj is an object without the key (the API leaves out
 *       fields that have no value);
 *  -1   *out = NULL: the key holds something else (a number, an array, an
 *       object whose "$" is not a string, or one holding elements rather
 *       than text), or obj is not an object. A
 *       caller must refuse such an answer rather than read the field as
 *       empty: writing "" to the other side would erase a name or a note. */
int billmgr_text_field(json_t *obj, const char *key, const char **out);

/* 0 when doc, the answer of a view of task elid, is that task's view: its
 * "elid" and "id", those it has and one at least, are elid. Otherwise -1
 * with why set ("names no task", "answers for task \"9\"", "holds an elid
 * that is not text"): the fields such an answer leaves out (the API
 * leaves out those without a value) would travel as empty. Both sides'
 * readers of a view use it. */
int billmgr_view_of(json_t *doc, int64_t elid, char *why, size_t whylen);

/* obj.key.$ parsed as a whole decimal number into *out. Returns 0, or -1
 * (and leaves *out alone) when the text is missing, empty, not a number or
 * out of range. */
int billmgr_long(json_t *obj, const char *key, long *out);

/* ---- building blocks, exported for the unit tests ---- */

/* Appends s percent-encoded per RFC 3986: A-Z a-z 0-9 - . _ ~ stay, every
 * other byte (UTF-8 bytes, space, & = + % newline) becomes %XX. Returns 0,
 * or -1 when out's cap is reached (out then holds a prefix). */
int billmgr_urlencode(struct buf *out, const char *s);

/* Appends the form body of a call: func=FUNC&out=json, then every
 * parameter in order, then cred_key=cred_value when cred_key is not NULL.
 * Returns 0 or -1 as billmgr_urlencode. */
int billmgr_form_build(struct buf *out, const char *func, const struct billmgr_params *params,
                       const char *cred_key, const char *cred_value);

/* Maps one HTTP answer (status code, Content-Type, body) to the call's
 * outcome as the top of this file says, except "toolarge", "timeout" and
 * "transport", which only the transfer can tell. content_type (may be
 * NULL) is only quoted in messages: an answer is read as JSON whatever it
 * says. max_values caps the values of the document (0 = BILLMGR_VALUES_BASE
 * + BILLMGR_VALUES_PER_ROW x BILLMGR_DEFAULT_PAGE_SIZE). The messages do
 * not name the function (billmgr_call's replies add it) and are not
 * scrubbed of the credentials, which this function does not know. On
 * RT_OK *doc_out is a new reference to the doc object (caller
 * json_decref's) and err is all ""; otherwise *doc_out is NULL and err
 * holds the reason. doc_out and err must not be NULL. */
rt_status billmgr_parse_reply(long http_code, const char *content_type, const char *body,
                              size_t len, size_t max_values, json_t **doc_out,
                              struct billmgr_error *err);

#endif
