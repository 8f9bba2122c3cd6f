/*
 * billmgr_int.h - what the BILLmanager client's own files share; private to
 * common/billmgr*.c.
 *
 * The client is six files of one concern each:
 *   billmgr.c            the handle: its options, its lifecycle, the queue
 *                        of calls and their completion
 *   billmgr_transport.c  curl's multi handle driven by the owner's poll
 *                        loop, one transfer, and what a finished transfer
 *                        says (caps, timeouts, transport failures)
 *   billmgr_session.c    the credentials: how a call carries them (authinfo,
 *                        or a session and its one shared re-login), and
 *                        keeping them out of errors and freed memory
 *   billmgr_reply.c      an answer's body: the bounds on a hostile one, the
 *                        API document, its error, the JSON helpers
 *   billmgr_form.c       a call's parameters and its form body
 *   billmgr_sync.c       the synchronous helpers (one call, a whole list)
 *
 * The contract callers see is billmgr.h. This header holds the state that
 * crosses files and the functions one file gives the others. A call lives
 * in exactly one of the handle's three lists of transfers at a time
 * (queue, running, done), or is the login transfer, and is freed once,
 * by billmgr_complete() or billmgr_xfer_free(). Not thread-safe, as the
 * client itself.
 */
#ifndef RT_BILLMGR_INT_H
#define RT_BILLMGR_INT_H

#include <curl/curl.h>

#include "billmgr.h"
#include "clock.h"

/* A call's form without credentials is built once when it is queued; this
 * caps it (BILLMGR_MAX_PARAMS values of BILLMGR_MAX_VALUE could otherwise
 * add up to gigabytes once percent-encoded). */
#define BILLMGR_MAX_FORM ((size_t)32 * 1024 * 1024)
/* The body is the form plus the credentials, which the operator wrote. */
#define BILLMGR_MAX_BODY (2 * BILLMGR_MAX_FORM)

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
    int overbudget;       /* the answers being received together reached max_buffered */
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

/* A FIFO list of transfers, linked through their next. */
struct billmgr_xfers {
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

    struct billmgr_xfers queue;   /* waiting to start, FIFO */
    struct billmgr_xfers running; /* in curl's multi handle */
    struct billmgr_xfers done;    /* failed before starting, to report */

    char *session; /* session id in session mode, NULL until logged in */
    unsigned long session_gen;
    struct billmgr_xfer *login_xfer; /* the func=auth transfer in flight */
};

/* ---- billmgr.c: clocks, errors, lists, the queue of calls ---- */

/* The monotonic clock in seconds, with microseconds: the calls' durations
 * (clock.h has it in milliseconds). */
double billmgr_now_s(void);

/* Copies text into a fixed field of size bytes, cutting at a UTF-8
 * character boundary so that a cut message is still valid text. src may
 * be NULL (""). */
void billmgr_copy_text(char *dst, size_t size, const char *src);

/* Fills every field of e, each cut to its size. */
void billmgr_set_error(struct billmgr_error *e, const char *type, const char *object,
                       const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* Sets every field of e to "". */
void billmgr_clear_error(struct billmgr_error *e);

void billmgr_xfers_push(struct billmgr_xfers *l, struct billmgr_xfer *x);
void billmgr_xfers_push_front(struct billmgr_xfers *l, struct billmgr_xfer *x);
/* The head of l, unlinked, or NULL when l is empty. */
struct billmgr_xfer *billmgr_xfers_pop(struct billmgr_xfers *l);
/* Unlinks x from l; nothing happens when x is not in l. */
void billmgr_xfers_remove(struct billmgr_xfers *l, struct billmgr_xfer *x);
/* Moves every element of from to the returned list, leaving from empty. */
struct billmgr_xfers billmgr_xfers_take(struct billmgr_xfers *from);

/* Starts queued calls while there is room, once the session allows. */
void billmgr_dispatch(struct billmgr *bm);

/* Puts a call that could not start on the done list with its outcome, to
 * be reported from billmgr_handle: callbacks never run inside
 * billmgr_call. */
void billmgr_defer_failure(struct billmgr *bm, struct billmgr_xfer *x, rt_status st,
                           const struct billmgr_error *e);

/* Reports every call of the done list. */
void billmgr_report_deferred(struct billmgr *bm);

/* Hands a call's outcome to the observer and to its callback, then frees
 * x. doc (borrowed; NULL unless st is RT_OK) stays the caller's. */
void billmgr_complete(struct billmgr *bm, struct billmgr_xfer *x, rt_status st, json_t *doc,
                      const struct billmgr_error *e, long http_code);

/* ---- billmgr_transport.c: curl's multi handle and the transfers ---- */

/* Sets up bm's multi handle and request headers. Returns 0, or -1 with the
 * reason in err; the caller then frees bm with billmgr_free. */
int billmgr_transport_init(struct billmgr *bm, char *err, size_t errlen);

/* Frees every running transfer (without its callback) and then the multi
 * handle. Accepts a handle whose multi handle was never made. */
void billmgr_transport_stop(struct billmgr *bm);

/* A new call of func with params (copied), its form built, not queued.
 * NULL when memory ran out or the form passes BILLMGR_MAX_FORM. */
struct billmgr_xfer *billmgr_xfer_new(struct billmgr *bm, const char *func,
                                      const struct billmgr_params *params);

/* Starts one attempt of x: the body with the credentials, the easy
 * handle's options, into the multi handle and the running list. Returns
 * 0, or -1 (x untouched but for its buffers) when memory or curl
 * refused. */
int billmgr_xfer_start(struct billmgr *bm, struct billmgr_xfer *x);

/* Frees x, wiping its body; accepts NULL. x must be in no list. */
void billmgr_xfer_free(struct billmgr_xfer *x);

/* ---- billmgr_session.c: the credentials ---- */

/* Appends the credentials of x's attempt to body: username and password
 * for the login, auth=SESSION in session mode, authinfo=LOGIN:PASSWORD
 * otherwise. Returns 0, or non-zero when body's cap or memory refused. */
int billmgr_session_credentials(struct billmgr *bm, const struct billmgr_xfer *x, struct buf *body);

/* 1 when calls may start now: authinfo mode, or a session is open.
 * Otherwise starts the login unless it is running (a login that cannot
 * start fails the queued calls through the done list) and returns 0. */
int billmgr_session_ready(struct billmgr *bm);

/* Gives the session its say over a finished transfer: the login's own
 * answer opens the session (or fails the queue), and a call refused for
 * an expired session goes back to the head of the queue for one retry
 * after a new login. Returns 1 when it took x (and doc), 0 when the call
 * completes with this outcome. */
int billmgr_session_answer(struct billmgr *bm, struct billmgr_xfer *x, rt_status st, json_t *doc,
                           struct billmgr_error *e);

/* Takes the password (plain and URL-encoded) and the session id out of an
 * error's texts: a server may echo what it was sent. */
void billmgr_scrub_secrets(struct billmgr *bm, struct billmgr_error *e);

/* Overwrites a string that held a secret, then frees it; accepts NULL. */
void billmgr_free_secret(char *s);

/* Overwrites a buffer's whole allocation, then releases it. */
void billmgr_wipe_buf(struct buf *b);

/* ---- billmgr_form.c ---- */

/* Appends "&KEY=VALUE" (no "&" on an empty out), both percent-encoded.
 * Returns 0, or -1 when out's cap or memory refused. */
int billmgr_form_pair(struct buf *out, const char *key, const char *value);

#endif
