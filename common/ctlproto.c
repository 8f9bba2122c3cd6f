#include "ctlproto.h"

#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "clock.h"

enum ctlproto_scan ctlproto_scan(const char *data, size_t len, size_t *line_len)
{
    size_t look = len < CTLPROTO_LINE_MAX ? len : CTLPROTO_LINE_MAX;
    const char *nl = look ? memchr(data, '\n', look) : NULL;
    if (nl) {
        *line_len = (size_t)(nl - data);
        return CTLPROTO_LINE;
    }
    return len >= CTLPROTO_LINE_MAX ? CTLPROTO_TOO_LONG : CTLPROTO_PARTIAL;
}

rt_status ctlproto_decode(const char *line, size_t len, json_t **out, char *err, size_t errlen)
{
    json_error_t jerr;

    *out = NULL;
    if (len >= CTLPROTO_LINE_MAX) {
        snprintf(err, errlen, "line longer than %zu bytes", CTLPROTO_LINE_MAX - 1);
        return RT_REJECT;
    }
    /* Without JSON_ALLOW_NUL jansson refuses "\u0000", so every string
     * handed on is a proper C string. */
    json_t *v = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!v) {
        snprintf(err, errlen, "not JSON: %s at column %d", jerr.text, jerr.column);
        return RT_REJECT;
    }
    if (!json_is_object(v)) {
        json_decref(v);
        snprintf(err, errlen, "not a JSON object");
        return RT_REJECT;
    }
    *out = v;
    return RT_OK;
}

char *ctlproto_encode(const json_t *msg, size_t *len_out, char *err, size_t errlen)
{
    char *text = json_dumps(msg, JSON_COMPACT);
    if (!text) {
        snprintf(err, errlen, "cannot encode the message as JSON");
        return NULL;
    }
    size_t n = strlen(text);
    if (n + 1 > CTLPROTO_LINE_MAX) {
        free(text);
        snprintf(err, errlen, "message of %zu bytes is longer than the %zu-byte line cap", n + 1,
                 CTLPROTO_LINE_MAX);
        return NULL;
    }
    char *line = realloc(text, n + 2);
    if (!line) {
        free(text);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    line[n] = '\n';
    line[n + 1] = '\0';
    *len_out = n + 1;
    return line;
}

int ctlproto_addr(const char *path, struct sockaddr_un *addr, char *err, size_t errlen)
{
    memset(addr, 0, sizeof(*addr));
    addr->sun_family = AF_UNIX;
    if (!path || !*path) {
        snprintf(err, errlen, "no control socket path");
        return -1;
    }
    size_t n = strlen(path);
    if (n >= sizeof(addr->sun_path)) {
        snprintf(err, errlen, "control socket path \"%s\" is longer than %zu bytes", path,
                 sizeof(addr->sun_path) - 1);
        return -1;
    }
    memcpy(addr->sun_path, path, n + 1);
    return 0;
}

/* Milliseconds left before deadline, 0 when it has passed. */
static int ctlproto_left(int64_t deadline)
{
    int64_t left = deadline - clock_mono_ms();
    if (left <= 0)
        return 0;
    return left > INT32_MAX ? INT32_MAX : (int)left;
}

/* Waits for events on fd until deadline. Returns 1 when ready, 0 on
 * timeout, -1 on a poll error (errno set). */
static int ctlproto_wait(int fd, short events, int64_t deadline)
{
    for (;;) {
        struct pollfd p = {.fd = fd, .events = events};
        int left = ctlproto_left(deadline);
        int rc = poll(&p, 1, left);
        if (rc > 0)
            return 1;
        if (rc == 0)
            return 0;
        if (errno != EINTR)
            return -1;
    }
}

/* Connects fd to addr before deadline. A listening Unix socket whose
 * backlog is full answers EAGAIN: the connect is tried again a little
 * later, since the daemon empties its backlog quickly. */
static rt_status ctlproto_connect(int fd, const struct sockaddr_un *addr, int64_t deadline,
                                  char *err, size_t errlen)
{
    for (;;) {
        if (connect(fd, (const struct sockaddr *)addr, sizeof(*addr)) == 0)
            return RT_OK;
        int e = errno;
        switch (e) {
        case EINTR: continue;
        case EAGAIN:
            if (ctlproto_left(deadline) == 0) {
                snprintf(err, errlen, "remotetaskd is too busy to accept on \"%s\"",
                         addr->sun_path);
                return RT_RETRY;
            }
            poll(NULL, 0, ctlproto_left(deadline) < 10 ? ctlproto_left(deadline) : 10);
            continue;
        case ENOENT:
            snprintf(err, errlen, CTLPROTO_NOT_RUNNING ": no control socket at \"%s\"",
                     addr->sun_path);
            return RT_RETRY;
        case ECONNREFUSED:
            snprintf(err, errlen, CTLPROTO_NOT_RUNNING ": nothing listens on \"%s\"",
                     addr->sun_path);
            return RT_RETRY;
        case EACCES:
        case EPERM:
            snprintf(err, errlen, "cannot connect to \"%s\": %s", addr->sun_path, strerror(e));
            return RT_REJECT;
        default:
            snprintf(err, errlen, "cannot connect to \"%s\": %s", addr->sun_path, strerror(e));
            return RT_RETRY;
        }
    }
}

/* Sends all of data before deadline. *peer_closed is set when the daemon
 * closed the connection first (EPIPE, ECONNRESET): it may have answered
 * before it did. */
static rt_status ctlproto_send_all(int fd, const char *data, size_t len, int64_t deadline,
                                   const char *path, int timeout_ms, int *peer_closed, char *err,
                                   size_t errlen)
{
    size_t off = 0;
    *peer_closed = 0;
    while (off < len) {
        ssize_t n = send(fd, data + off, len - off, MSG_NOSIGNAL);
        if (n > 0) {
            off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int w = ctlproto_wait(fd, POLLOUT, deadline);
            if (w > 0)
                continue;
            if (w == 0) {
                snprintf(err, errlen, "remotetaskd on \"%s\" took no request within %d ms", path,
                         timeout_ms);
                return RT_RETRY;
            }
        }
        *peer_closed = errno == EPIPE || errno == ECONNRESET;
        snprintf(err, errlen, "cannot send to remotetaskd on \"%s\": %s", path, strerror(errno));
        return RT_RETRY;
    }
    return RT_OK;
}

static rt_status ctlproto_read_line(int fd, struct buf *in, size_t *line_len, int64_t deadline,
                                    const char *path, int timeout_ms, char *err, size_t errlen)
{
    char chunk[4096];
    for (;;) {
        switch (ctlproto_scan(in->data ? in->data : "", in->len, line_len)) {
        case CTLPROTO_LINE: return RT_OK;
        case CTLPROTO_TOO_LONG:
            snprintf(err, errlen, "the answer of remotetaskd on \"%s\" is longer than %zu bytes",
                     path, CTLPROTO_LINE_MAX);
            return RT_REJECT;
        case CTLPROTO_PARTIAL: break;
        }
        ssize_t n = recv(fd, chunk, sizeof(chunk), 0);
        if (n > 0) {
            /* The buffer's cap sits one byte above the line cap, so that
             * an over-long answer is seen as one rather than refused. */
            size_t room = in->max - in->len;
            if (buf_append(in, chunk, (size_t)n < room ? (size_t)n : room) < 0) {
                snprintf(err, errlen, "out of memory");
                return RT_REJECT;
            }
            continue;
        }
        if (n == 0) {
            snprintf(err, errlen, "remotetaskd on \"%s\" closed the connection without an answer",
                     path);
            return RT_RETRY;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            int w = ctlproto_wait(fd, POLLIN, deadline);
            if (w > 0)
                continue;
            if (w == 0) {
                snprintf(err, errlen, "no answer from remotetaskd on \"%s\" within %d ms", path,
                         timeout_ms);
                return RT_RETRY;
            }
        }
        snprintf(err, errlen, "cannot read from remotetaskd on \"%s\": %s", path, strerror(errno));
        return RT_RETRY;
    }
}

rt_status ctlproto_request(const char *socket_path, const json_t *req, json_t **resp,
                           int timeout_ms, char *err, size_t errlen)
{
    struct sockaddr_un addr;
    struct buf in;
    size_t req_len, line_len = 0;
    char why[CTLPROTO_ERR_MAX];
    int peer_closed = 0;
    rt_status st;

    *resp = NULL;
    if (timeout_ms < 0)
        timeout_ms = 0;
    int64_t deadline = clock_mono_ms() + timeout_ms;
    if (ctlproto_addr(socket_path, &addr, err, errlen) < 0)
        return RT_REJECT;
    char *line = ctlproto_encode(req, &req_len, why, sizeof(why));
    if (!line) {
        snprintf(err, errlen, "cannot send the request: %s", why);
        return RT_REJECT;
    }
    buf_init(&in, CTLPROTO_LINE_MAX + 1);

    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "cannot make a socket: %s", strerror(errno));
        st = RT_RETRY;
        goto free_line;
    }
    st = ctlproto_connect(fd, &addr, deadline, err, errlen);
    if (st != RT_OK)
        goto close_fd;
    st = ctlproto_send_all(fd, line, req_len, deadline, socket_path, timeout_ms, &peer_closed, err,
                           errlen);
    if (st != RT_OK) {
        /* A daemon that refuses a connection (a peer it does not serve)
         * answers and closes as soon as it accepts, which is often before
         * the request is sent: its answer says why, which is worth more
         * than the send error. Without an answer the send error stands. */
        char read_err[CTLPROTO_ERR_MAX];
        if (!peer_closed || ctlproto_read_line(fd, &in, &line_len, deadline, socket_path,
                                               timeout_ms, read_err, sizeof(read_err)) != RT_OK)
            goto close_fd;
    } else {
        st = ctlproto_read_line(fd, &in, &line_len, deadline, socket_path, timeout_ms, err, errlen);
        if (st != RT_OK)
            goto close_fd;
    }
    st = ctlproto_decode(in.data, line_len, resp, why, sizeof(why));
    if (st != RT_OK)
        snprintf(err, errlen, "remotetaskd on \"%s\" answered a bad line: %s", socket_path, why);
close_fd:
    close(fd);
free_line:
    buf_release(&in);
    free(line);
    return st;
}
