#include "metrics_http.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <microhttpd.h>

#include "clock.h"
#include "log.h"

#define METRICS_HTTP_PATH         "/metrics"
#define METRICS_HTTP_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"
/* How often a connection with an incomplete request is looked at for an
 * end of stream libmicrohttpd did not see (metrics_http_cut_ended). */
#define METRICS_HTTP_LOOK_MS 200

/* A connection libmicrohttpd holds, and when its current request must be
 * done (see METRICS_HTTP_REQUEST_S). */
struct metrics_http_conn {
    struct MHD_Connection *conn; /* NULL: the entry is free */
    int fd;
    int64_t deadline; /* monotonic ms */
    int answering;    /* its request is whole: the handler has run for it */
    int cut;          /* shut down already; libmicrohttpd closes it next */
};

struct metrics_http {
    struct MHD_Daemon *mhd;
    int epoll_fd;
    int port;
    metrics_http_render_fn render;
    void *arg;
    /* The last message libmicrohttpd logged: it says why a start failed
     * (errno is not reliable after MHD_start_daemon). */
    char last_log[256];
    /* One entry per connection: libmicrohttpd holds at most
     * METRICS_HTTP_MAX_CONNECTIONS. */
    struct metrics_http_conn conns[METRICS_HTTP_MAX_CONNECTIONS];
};

/* The entry of a connection, or NULL when it has none. */
static struct metrics_http_conn *metrics_http_entry(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    struct metrics_http_conn *e = ci ? ci->socket_context : NULL;
    return e && e->conn == c ? e : NULL;
}

/* libmicrohttpd's log lines. At run time they are about peers (a
 * connection refused at the limit, a malformed request): debug level, so
 * that a misbehaving scraper cannot flood the log. */
__attribute__((format(printf, 2, 0))) static void metrics_http_logger(void *cls, const char *fmt,
                                                                      va_list ap)
{
    struct metrics_http *h = cls;
    vsnprintf(h->last_log, sizeof(h->last_log), fmt, ap);
    size_t n = strlen(h->last_log);
    while (n > 0 && (h->last_log[n - 1] == '\n' || h->last_log[n - 1] == '\r'))
        h->last_log[--n] = '\0';
    log_debug("metrics endpoint: %s", h->last_log);
}

/* Queues a response and drops our reference to it. */
static enum MHD_Result metrics_http_answer(struct MHD_Connection *c, unsigned int code,
                                           struct MHD_Response *r)
{
    if (!r)
        return MHD_NO; /* out of memory: libmicrohttpd closes the connection */
    enum MHD_Result ret = MHD_queue_response(c, code, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result metrics_http_text(struct MHD_Connection *c, unsigned int code,
                                         const char *text, const char *allow)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(text), (void *)text, MHD_RESPMEM_PERSISTENT);
    if (!r)
        return MHD_NO;
    if (MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; charset=utf-8") ==
            MHD_NO ||
        (allow && MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, allow) == MHD_NO)) {
        MHD_destroy_response(r);
        return MHD_NO;
    }
    return metrics_http_answer(c, code, r);
}

static enum MHD_Result metrics_http_scrape(struct metrics_http *h, struct MHD_Connection *c)
{
    struct buf body;
    buf_init(&body, METRICS_HTTP_MAX_BODY);
    if (h->render(h->arg, &body) < 0) {
        buf_release(&body);
        log_warning("metrics endpoint: cannot render the metrics: answering 500");
        return metrics_http_text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "cannot render the metrics\n",
                                 NULL);
    }
    size_t len = body.len;
    char *data = buf_steal(&body);
    if (!data)
        return MHD_NO;
    /* MUST_FREE: libmicrohttpd free()s data with the response. */
    struct MHD_Response *r = MHD_create_response_from_buffer(len, data, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(data);
        return MHD_NO;
    }
    if (MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, METRICS_HTTP_CONTENT_TYPE) ==
            MHD_NO ||
        MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store") == MHD_NO) {
        MHD_destroy_response(r);
        return MHD_NO;
    }
    return metrics_http_answer(c, MHD_HTTP_OK, r);
}

/* Every request is answered on its first call: none of them has a body
 * worth reading (a body sent anyway is discarded with the connection). */
static enum MHD_Result metrics_http_access(void *cls, struct MHD_Connection *c, const char *url,
                                           const char *method, const char *version,
                                           const char *upload_data, size_t *upload_data_size,
                                           void **con_cls)
{
    struct metrics_http *h = cls;
    (void)version;
    (void)upload_data;
    (void)upload_data_size;
    (void)con_cls;

    struct metrics_http_conn *e = metrics_http_entry(c);
    if (e)
        e->answering = 1;

    if (strcmp(url, METRICS_HTTP_PATH) != 0)
        return metrics_http_text(c, MHD_HTTP_NOT_FOUND,
                                 "not found: the metrics are at " METRICS_HTTP_PATH "\n", NULL);
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
        return metrics_http_text(c, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed\n",
                                 "GET, HEAD");
    return metrics_http_scrape(h, c);
}

/* A connection starts: its first request is due within
 * METRICS_HTTP_REQUEST_S. A connection closes: its entry is free again. */
static void metrics_http_notify(void *cls, struct MHD_Connection *c, void **socket_context,
                                enum MHD_ConnectionNotificationCode toe)
{
    struct metrics_http *h = cls;
    struct metrics_http_conn *e = *socket_context;

    if (toe == MHD_CONNECTION_NOTIFY_CLOSED) {
        if (e)
            memset(e, 0, sizeof(*e));
        *socket_context = NULL;
        return;
    }
    const union MHD_ConnectionInfo *fdi =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    for (size_t i = 0; i < METRICS_HTTP_MAX_CONNECTIONS && fdi; i++) {
        if (h->conns[i].conn)
            continue;
        h->conns[i] = (struct metrics_http_conn){
            .conn = c,
            .fd = fdi->connect_fd,
            .deadline = clock_mono_ms() + (int64_t)METRICS_HTTP_REQUEST_S * 1000,
        };
        *socket_context = &h->conns[i];
        return;
    }
    /* More connections than libmicrohttpd's limit, or no fd: cannot
     * happen; such a connection has only the idle timeout. */
    *socket_context = NULL;
}

/* A request is done (answered, or ended by an error): the next one on the
 * same connection has METRICS_HTTP_REQUEST_S again. */
static void metrics_http_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                                   enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)con_cls;
    (void)toe;
    struct metrics_http_conn *e = metrics_http_entry(c);
    if (e) {
        e->deadline = clock_mono_ms() + (int64_t)METRICS_HTTP_REQUEST_S * 1000;
        e->answering = 0;
    }
}

/* Shuts down the connections whose request is overdue. libmicrohttpd only
 * closes a connection that has been idle for METRICS_HTTP_TIMEOUT_S, so a
 * peer that sends a byte now and then (slowloris) would hold its slot for
 * ever, and with every slot held no scrape would get in. shutdown() leaves
 * the fd to libmicrohttpd, which sees the end of the stream and closes the
 * connection itself. Returns how many were cut. */
static int metrics_http_cut_overdue(struct metrics_http *h)
{
    int64_t now = clock_mono_ms();
    int cut = 0;
    for (size_t i = 0; i < METRICS_HTTP_MAX_CONNECTIONS; i++) {
        struct metrics_http_conn *e = &h->conns[i];
        if (!e->conn || e->cut || now < e->deadline)
            continue;
        log_debug("metrics endpoint: a request took more than %d s: connection closed",
                  METRICS_HTTP_REQUEST_S);
        shutdown(e->fd, SHUT_RDWR);
        e->cut = 1;
        cut++;
    }
    return cut;
}

/* Shuts down the connections whose peer ended its side of the stream
 * before a whole request came. libmicrohttpd does not always see such an
 * end: when the first bytes of a request and the end arrive together
 * before it takes the connection from the listen queue, it reads the
 * bytes and then waits, holding the connection until its idle timeout.
 * A flood of half requests and hang-ups (issue 9, case 11) kept every
 * slot taken that way. Only connections whose request is incomplete are
 * looked at: a peer may end its side after a whole request and still read
 * the answer. The loop comes back every METRICS_HTTP_LOOK_MS while there
 * are any (metrics_http_timeout_ms), since nothing else may wake it.
 * Returns how many were cut. */
static int metrics_http_cut_ended(struct metrics_http *h)
{
    int cut = 0;
    for (size_t i = 0; i < METRICS_HTTP_MAX_CONNECTIONS; i++) {
        struct metrics_http_conn *e = &h->conns[i];
        char byte;
        if (!e->conn || e->cut || e->answering)
            continue;
        ssize_t n = recv(e->fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
        if (n > 0 || (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)))
            continue;
        log_debug("metrics endpoint: the peer ended the connection in the middle of a request");
        shutdown(e->fd, SHUT_RDWR);
        e->cut = 1;
        cut++;
    }
    return cut;
}

/* Fills sa from host and port. Returns its length, or 0 when host is not
 * an IP literal nor "localhost". */
static socklen_t metrics_http_addr(const char *host, int port, struct sockaddr_storage *sa)
{
    memset(sa, 0, sizeof(*sa));
    if (strcmp(host, "localhost") == 0)
        host = "127.0.0.1";
    struct sockaddr_in *v4 = (struct sockaddr_in *)sa;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        return sizeof(*v4);
    }
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)sa;
    if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        return sizeof(*v6);
    }
    return 0;
}

struct metrics_http *metrics_http_new(const char *host, int port, metrics_http_render_fn render,
                                      void *arg, char *err, size_t errlen)
{
    struct sockaddr_storage sa;
    const char *lb = "", *rb = "";

    if (!host || !render || port < 0 || port > 65535) {
        snprintf(err, errlen, "metrics endpoint: no host, port or render callback");
        return NULL;
    }
    if (strchr(host, ':'))
        lb = "[", rb = "]";
    if (metrics_http_addr(host, port, &sa) == 0) {
        snprintf(err, errlen, "metrics endpoint: \"%s\" is not an IP address or \"localhost\"",
                 host);
        return NULL;
    }
    struct metrics_http *h = calloc(1, sizeof(*h));
    if (!h) {
        snprintf(err, errlen, "metrics endpoint: out of memory");
        return NULL;
    }
    h->render = render;
    h->arg = arg;
    h->epoll_fd = -1;

    /* No MHD_USE_INTERNAL_POLLING_THREAD: the daemon's loop drives it. */
    unsigned int flags = MHD_USE_EPOLL | MHD_USE_ERROR_LOG;
    if (sa.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    errno = 0;
    /* clang-format off */
    h->mhd = MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, metrics_http_access, h,
        /* First, so that it hears about the options that follow. */
        MHD_OPTION_EXTERNAL_LOGGER, metrics_http_logger, h,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned int)METRICS_HTTP_MAX_CONNECTIONS,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned int)METRICS_HTTP_MAX_PER_IP,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)METRICS_HTTP_TIMEOUT_S,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)METRICS_HTTP_MEMORY_LIMIT,
        MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned int)METRICS_HTTP_BACKLOG,
        MHD_OPTION_NOTIFY_CONNECTION, metrics_http_notify, h,
        MHD_OPTION_NOTIFY_COMPLETED, metrics_http_completed, h,
        MHD_OPTION_END);
    /* clang-format on */
    if (!h->mhd) {
        int e = errno;
        const char *why = h->last_log[0] ? h->last_log : "libmicrohttpd failed";
        if (!h->last_log[0] && e)
            why = strerror(e);
        snprintf(err, errlen, "metrics endpoint: cannot listen on %s%s%s:%d: %s", lb, host, rb,
                 port, why);
        goto fail_free;
    }
    const union MHD_DaemonInfo *fdi = MHD_get_daemon_info(h->mhd, MHD_DAEMON_INFO_EPOLL_FD);
    const union MHD_DaemonInfo *pi = MHD_get_daemon_info(h->mhd, MHD_DAEMON_INFO_BIND_PORT);
    if (!fdi || fdi->epoll_fd < 0 || !pi) {
        snprintf(err, errlen, "metrics endpoint: libmicrohttpd has no epoll support");
        goto fail_stop;
    }
    h->epoll_fd = fdi->epoll_fd;
    h->port = pi->port;
    return h;

fail_stop:
    MHD_stop_daemon(h->mhd);
fail_free:
    free(h);
    return NULL;
}

void metrics_http_free(struct metrics_http *h)
{
    if (!h)
        return;
    if (h->mhd)
        MHD_stop_daemon(h->mhd);
    free(h);
}

int metrics_http_pollfd(const struct metrics_http *h)
{
    return h->epoll_fd;
}

int metrics_http_timeout_ms(const struct metrics_http *h)
{
    MHD_UNSIGNED_LONG_LONG t;
    int64_t best = -1;
    if (MHD_get_timeout(h->mhd, &t) == MHD_YES)
        best = t > (MHD_UNSIGNED_LONG_LONG)INT_MAX ? INT_MAX : (int64_t)t;
    int64_t now = clock_mono_ms();
    for (size_t i = 0; i < METRICS_HTTP_MAX_CONNECTIONS; i++) {
        const struct metrics_http_conn *e = &h->conns[i];
        if (!e->conn || e->cut)
            continue;
        int64_t left = e->deadline > now ? e->deadline - now : 0;
        /* An incomplete request is looked at again soon: its peer may
         * have ended the stream unseen (metrics_http_cut_ended). */
        if (!e->answering && left > METRICS_HTTP_LOOK_MS)
            left = METRICS_HTTP_LOOK_MS;
        if (best < 0 || left < best)
            best = left;
    }
    return (int)best;
}

void metrics_http_handle(struct metrics_http *h)
{
    /* In external epoll mode MHD_run never blocks: it takes what epoll
     * reports ready and returns. A connection cut here is reported by
     * epoll at once, so a second run closes it and frees its slot. */
    MHD_run(h->mhd);
    if (metrics_http_cut_overdue(h) + metrics_http_cut_ended(h) > 0)
        MHD_run(h->mhd);
}

int metrics_http_port(const struct metrics_http *h)
{
    return h->port;
}
