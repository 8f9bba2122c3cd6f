/*
 * billmgr_transport.c - the BILLmanager client's transport: curl's multi
 * handle driven by the owner's poll loop (its sockets, its timer), one
 * transfer (its options, the body with the credentials, the answer under
 * its caps and its rate), and what a finished transfer says: the answer
 * for billmgr_reply.c to read, or a failure of the transport named.
 */
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/types.h>

#include <curl/curl.h>

#include "billmgr_int.h"

/* ---- curl's callbacks ---- */

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
    bm->deadline_ms = timeout_ms < 0 ? -1 : clock_mono_ms() + timeout_ms;
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
    long long now = clock_mono_ms();
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

/* ---- the multi handle ---- */

int billmgr_transport_init(struct billmgr *bm, char *err, size_t errlen)
{
    bm->multi = curl_multi_init();
    if (!bm->multi) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    bm->headers = curl_slist_append(NULL, "Content-Type: application/x-www-form-urlencoded");
    /* No "Expect: 100-continue" round trip for large notes. */
    struct curl_slist *h = bm->headers ? curl_slist_append(bm->headers, "Expect:") : NULL;
    if (!h) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    bm->headers = h;
    if (curl_multi_setopt(bm->multi, CURLMOPT_SOCKETFUNCTION, billmgr_sock_cb) != CURLM_OK ||
        curl_multi_setopt(bm->multi, CURLMOPT_SOCKETDATA, bm) != CURLM_OK ||
        curl_multi_setopt(bm->multi, CURLMOPT_TIMERFUNCTION, billmgr_timer_cb) != CURLM_OK ||
        curl_multi_setopt(bm->multi, CURLMOPT_TIMERDATA, bm) != CURLM_OK ||
        curl_multi_setopt(bm->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)bm->max_inflight) !=
            CURLM_OK ||
        curl_multi_setopt(bm->multi, CURLMOPT_MAXCONNECTS, (long)bm->max_inflight) != CURLM_OK) {
        snprintf(err, errlen, "cannot set up libcurl's multi handle");
        return -1;
    }
    return 0;
}

void billmgr_transport_stop(struct billmgr *bm)
{
    struct billmgr_xfer *x;
    if (!bm->multi)
        return;
    while ((x = billmgr_xfers_pop(&bm->running)) != NULL) {
        curl_multi_remove_handle(bm->multi, x->easy);
        billmgr_xfer_free(x);
    }
    curl_multi_cleanup(bm->multi);
}

/* ---- one transfer ---- */

void billmgr_xfer_free(struct billmgr_xfer *x)
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

struct billmgr_xfer *billmgr_xfer_new(struct billmgr *bm, const char *func,
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

int billmgr_xfer_start(struct billmgr *bm, struct billmgr_xfer *x)
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
    rc |= billmgr_session_credentials(bm, x, &x->body);
    if (rc || billmgr_xfer_setup(bm, x) < 0)
        goto wipe_body;
    if (curl_multi_add_handle(bm->multi, x->easy) != CURLM_OK)
        goto wipe_body;
    x->session_gen = bm->session_gen;
    billmgr_xfers_push(&bm->running, x);
    return 0;

wipe_body:
    billmgr_wipe_buf(&x->body);
    return -1;
}

/* ---- a finished transfer ---- */

/* curl's own text for a failed transfer, or its code's description. */
static const char *billmgr_curl_text(const struct billmgr_xfer *x, CURLcode res)
{
    return x->errbuf[0] ? x->errbuf : curl_easy_strerror(res);
}

/* Names why a transfer failed before its answer was whole: the caps, the
 * rate, a timeout, a cut or a failed connection. Every such failure says
 * nothing against the call and is RT_RETRY (see the top of billmgr.h). */
static rt_status billmgr_transfer_failed(struct billmgr *bm, struct billmgr_xfer *x, CURLcode res,
                                         struct billmgr_error *e)
{
    curl_off_t length = x->announced;

    if (x->toolarge || res == CURLE_FILESIZE_EXCEEDED) {
        /* Retried, not rejected: see "toolarge" at the top of billmgr.h. */
        if (length >= 0)
            billmgr_set_error(e, "toolarge", "",
                              "answer of %" CURL_FORMAT_CURL_OFF_T " bytes is larger than "
                              "billmanager.max_response (%zu bytes)",
                              length, bm->max_response);
        else
            billmgr_set_error(e, "toolarge", "",
                              "answer is larger than billmanager.max_response (%zu bytes)",
                              bm->max_response);
    } else if (x->overbudget) {
        billmgr_set_error(e, "toolarge", "",
                          "answers received at once would hold more than %zu bytes (twice "
                          "billmanager.max_response): this one is retried",
                          bm->max_buffered);
    } else if (x->tooslow) {
        billmgr_set_error(e, "timeout", "",
                          "answer arrives too slowly: %zu bytes of its body in %.1f s, under "
                          "%d bytes/s",
                          x->resp.len, (double)(clock_mono_ms() - x->body_t0_ms) / 1000.0,
                          BILLMGR_MIN_BODY_RATE);
    } else if (res == CURLE_OPERATION_TIMEDOUT) {
        billmgr_set_error(e, "timeout", "", "%s", billmgr_curl_text(x, res));
    } else if (x->body_t0_ms) {
        /* A reset or a close in the middle of the body: the server may
         * have done the work, the answer is lost. */
        if (length >= 0)
            billmgr_set_error(e, "transport", "",
                              "answer cut off after %zu of %" CURL_FORMAT_CURL_OFF_T " bytes: %s",
                              x->resp.len, length, billmgr_curl_text(x, res));
        else
            billmgr_set_error(e, "transport", "", "answer cut off after %zu bytes: %s", x->resp.len,
                              billmgr_curl_text(x, res));
    } else {
        billmgr_set_error(e, "transport", "", "%s", billmgr_curl_text(x, res));
    }
    return RT_RETRY;
}

/* What a finished transfer says: the answer read (billmgr_parse_reply)
 * or the transfer's failure, the error naming the call unless it is the
 * API's own, and no credential in any text. Frees the answer's buffer and
 * wipes the body. On RT_OK *doc is a new reference the caller drops. */
static rt_status billmgr_outcome(struct billmgr *bm, struct billmgr_xfer *x, CURLcode res,
                                 json_t **doc, struct billmgr_error *e, long *code)
{
    char *ctype = NULL;
    rt_status st;

    curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, code);
    curl_easy_getinfo(x->easy, CURLINFO_CONTENT_TYPE, &ctype);
    billmgr_wipe_buf(&x->body);
    billmgr_clear_error(e);
    if (res == CURLE_OK)
        st = billmgr_parse_reply(*code, ctype, x->resp.data, x->resp.len, bm->max_values, doc, e);
    else
        st = billmgr_transfer_failed(bm, x, res, e);
    billmgr_resp_drop(x);
    buf_release(&x->resp);
    buf_init(&x->resp, bm->max_response);
    if (st != RT_OK && st != RT_REJECT) {
        /* Every failure that is not the API's own answer names the call. */
        struct billmgr_error plain = *e;
        billmgr_set_error(e, plain.type, plain.object, "%s: %s", x->func, plain.message);
    }
    billmgr_scrub_secrets(bm, e);
    return st;
}

/* Maps a finished transfer to its outcome and reports it, unless the
 * session takes it (the login's answer, or a retry after a re-login). */
static void billmgr_finish(struct billmgr *bm, struct billmgr_xfer *x, CURLcode res)
{
    struct billmgr_error e;
    json_t *doc = NULL;
    long code = 0;

    rt_status st = billmgr_outcome(bm, x, res, &doc, &e, &code);
    if (billmgr_session_answer(bm, x, st, doc, &e))
        return;
    billmgr_complete(bm, x, st, doc, &e, code);
    json_decref(doc);
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
        billmgr_xfers_remove(&bm->running, x);
        billmgr_finish(bm, x, res);
    }
}

/* ---- the owner's poll loop ---- */

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
    long long left = bm->deadline_ms - clock_mono_ms();
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
    if (bm->deadline_ms >= 0 && clock_mono_ms() >= bm->deadline_ms) {
        bm->deadline_ms = -1;
        curl_multi_socket_action(bm->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    }
    billmgr_read_completions(bm);
    billmgr_report_deferred(bm);
    billmgr_dispatch(bm);
}
