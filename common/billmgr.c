/*
 * billmgr.c - the BILLmanager client's handle: its options and their
 * defaults, its lifecycle, the queue of calls (at most max_inflight
 * running, the rest waiting in FIFO order) and the completion of a call.
 * The other files of the client are named in billmgr_int.h.
 */
#include "billmgr.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>

#include "billmgr_int.h"
#include "log.h"
#include "redact.h"

double billmgr_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Copies text into a fixed field, cutting at a UTF-8 character boundary so
 * that a cut message is still valid text. */
void billmgr_copy_text(char *dst, size_t size, const char *src)
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

void billmgr_set_error(struct billmgr_error *e, const char *type, const char *object,
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

void billmgr_clear_error(struct billmgr_error *e)
{
    e->type[0] = '\0';
    e->object[0] = '\0';
    e->message[0] = '\0';
}

/* ---- lists of transfers ---- */

void billmgr_xfers_push(struct billmgr_xfers *l, struct billmgr_xfer *x)
{
    x->next = NULL;
    if (l->tail)
        l->tail->next = x;
    else
        l->head = x;
    l->tail = x;
    l->n++;
}

void billmgr_xfers_push_front(struct billmgr_xfers *l, struct billmgr_xfer *x)
{
    x->next = l->head;
    l->head = x;
    if (!l->tail)
        l->tail = x;
    l->n++;
}

struct billmgr_xfer *billmgr_xfers_pop(struct billmgr_xfers *l)
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

void billmgr_xfers_remove(struct billmgr_xfers *l, struct billmgr_xfer *x)
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

struct billmgr_xfers billmgr_xfers_take(struct billmgr_xfers *from)
{
    struct billmgr_xfers l = *from;
    from->head = from->tail = NULL;
    from->n = 0;
    return l;
}

/* ---- the handle ---- */

/* Refuses a URL that curl cannot parse, or that holds a user, a password
 * or a query string, or whose scheme is not http or https. Credentials go
 * in the body only: a URL with userinfo would put them in every request
 * line and error text. The URL is not quoted in the errors, since it
 * might hold exactly such a password. Returns 0, or -1 with the reason in
 * err. */
static int billmgr_check_url(const char *url, char *err, size_t errlen)
{
    CURLU *u;
    char *scheme = NULL, *user = NULL, *pass = NULL;

    u = curl_url();
    if (!u) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK) {
        curl_url_cleanup(u);
        snprintf(err, errlen, "billmanager url is not a valid URL");
        return -1;
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
        return -1;
    }
    if (has_query) {
        snprintf(err, errlen,
                 "billmanager url must not have a query string: "
                 "parameters and credentials travel in the POST body");
        return -1;
    }
    if (!scheme_ok) {
        snprintf(err, errlen, "billmanager url must start with http:// or https://");
        return -1;
    }
    return 0;
}

/* Copies opts into bm, with the defaults of billmgr.h for fields left 0.
 * Returns 0, or -1 when memory ran out (bm then holds what was copied,
 * for billmgr_free). */
static int billmgr_take_opts(struct billmgr *bm, const struct billmgr_opts *opts)
{
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
        return -1;
    return 0;
}

struct billmgr *billmgr_new(const struct billmgr_opts *opts, char *err, size_t errlen)
{
    struct billmgr *bm;

    if (!opts->url || !*opts->url || !opts->login || !*opts->login) {
        snprintf(err, errlen, "billmanager url and login must be set");
        return NULL;
    }
    if (billmgr_check_url(opts->url, err, errlen) < 0)
        return NULL;

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
    if (billmgr_take_opts(bm, opts) < 0) {
        snprintf(err, errlen, "out of memory");
        billmgr_free(bm);
        return NULL;
    }
    if (billmgr_transport_init(bm, err, errlen) < 0) {
        billmgr_free(bm);
        return NULL;
    }
    return bm;
}

/* Frees every call of a list that is not in the multi handle. */
static void billmgr_xfers_free(struct billmgr_xfers *l)
{
    struct billmgr_xfer *x;
    while ((x = billmgr_xfers_pop(l)) != NULL)
        billmgr_xfer_free(x);
}

void billmgr_free(struct billmgr *bm)
{
    if (!bm)
        return;
    billmgr_transport_stop(bm);
    billmgr_xfers_free(&bm->queue);
    billmgr_xfers_free(&bm->done);
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
    billmgr_xfers_push(&bm->queue, x);
    billmgr_dispatch(bm);
    return 0;
}

size_t billmgr_inflight(struct billmgr *bm)
{
    return bm->running.n - (bm->login_xfer ? 1 : 0) + bm->queue.n + bm->done.n;
}

int billmgr_has_room(struct billmgr *bm)
{
    return bm->queue.n == 0 && bm->running.n < (size_t)bm->max_inflight;
}

/* ---- the queue of calls ---- */

void billmgr_dispatch(struct billmgr *bm)
{
    while (bm->queue.head && bm->running.n < (size_t)bm->max_inflight) {
        if (!billmgr_session_ready(bm))
            return;
        struct billmgr_xfer *x = billmgr_xfers_pop(&bm->queue);
        if (billmgr_xfer_start(bm, x) < 0) {
            struct billmgr_error e;
            billmgr_set_error(&e, "transport", "", "cannot start the transfer: out of memory");
            billmgr_defer_failure(bm, x, RT_RETRY, &e);
        }
    }
}

void billmgr_defer_failure(struct billmgr *bm, struct billmgr_xfer *x, rt_status st,
                           const struct billmgr_error *e)
{
    x->fstatus = st;
    x->ferr = *e;
    billmgr_xfers_push(&bm->done, x);
}

void billmgr_complete(struct billmgr *bm, struct billmgr_xfer *x, rt_status st, json_t *doc,
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

void billmgr_report_deferred(struct billmgr *bm)
{
    struct billmgr_xfers failed = billmgr_xfers_take(&bm->done);
    struct billmgr_xfer *x;
    while ((x = billmgr_xfers_pop(&failed)) != NULL)
        billmgr_complete(bm, x, x->fstatus, NULL, &x->ferr, 0);
}
