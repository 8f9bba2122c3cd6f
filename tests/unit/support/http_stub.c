/* The loopback HTTP/1.1 server of the unit tests; see http_stub.h. */
#include "http_stub.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>

struct http_stub {
    int lfd;     /* the listening socket */
    int wake[2]; /* a pipe: a byte on wake[0] tells the thread to stop */
    int port;
    http_stub_answer_fn answer;
    void *arg;
    pthread_t thread;
    char req[HTTP_STUB_MAX_REQUEST + 1]; /* the request being read; the thread's own */
};

/* Waits until fd is readable or the stub is told to stop; returns 1 for
 * the first, 0 for the second (or a poll failure, which ends the thread
 * as well: there is nothing to recover with in a test). */
static int wait_readable(struct http_stub *s, int fd)
{
    struct pollfd p[2] = {{.fd = fd, .events = POLLIN}, {.fd = s->wake[0], .events = POLLIN}};
    for (;;) {
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            return 0;
        }
        if (p[1].revents)
            return 0;
        if (p[0].revents)
            return 1;
    }
}

/* Sends all of len bytes; MSG_NOSIGNAL because a client that gave up
 * must not kill the test program with SIGPIPE. Returns 0 or -1. */
static int send_all(int fd, const char *p, size_t len)
{
    while (len > 0) {
        ssize_t k = send(fd, p, len, MSG_NOSIGNAL);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return -1;
        p += k;
        len -= (size_t)k;
    }
    return 0;
}

static const char *reason(int code)
{
    switch (code) {
    case 200: return "OK";
    case 413: return "Payload Too Large";
    case 503: return "Service Unavailable";
    default: return "X";
    }
}

static void respond(int c, int code, const char *body)
{
    char head[256];
    size_t bl = body ? strlen(body) : 0;
    int hl = snprintf(head, sizeof head,
                      "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                      "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                      code, reason(code), bl);
    if (send_all(c, head, (size_t)hl) < 0 || (bl && send_all(c, body, bl) < 0))
        fprintf(stderr, "http_stub: the answer could not be sent\n");
}

/* Reads one request from c and answers it; returns 0 to go on serving, -1
 * when told to stop. */
static int serve_one(struct http_stub *s, int c)
{
    size_t n = 0;
    const char *body = NULL;
    size_t clen = 0;
    for (;;) {
        if (!wait_readable(s, c))
            return -1;
        if (n == HTTP_STUB_MAX_REQUEST) {
            respond(c, 413, NULL);
            return 0;
        }
        ssize_t k = read(c, s->req + n, HTTP_STUB_MAX_REQUEST - n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return 0; /* closed or broken before the whole request came */
        n += (size_t)k;
        s->req[n] = '\0';
        if (!body) {
            char *end = strstr(s->req, "\r\n\r\n");
            if (!end)
                continue;
            body = end + 4;
            *end = '\0'; /* the header search stays within the head */
            const char *cl = strcasestr(s->req, "\r\nContent-Length:");
            clen = cl ? strtoul(cl + 17, NULL, 10) : 0;
            *end = '\r';
            if (clen > HTTP_STUB_MAX_REQUEST - (size_t)(body - s->req)) {
                respond(c, 413, NULL);
                return 0;
            }
        }
        if (n - (size_t)(body - s->req) >= clen)
            break;
    }
    s->req[(size_t)(body - s->req) + clen] = '\0';
    char *out = NULL;
    int code = s->answer(s->arg, body, &out);
    respond(c, code, out);
    free(out);
    return 0;
}

static void *serve(void *arg)
{
    struct http_stub *s = arg;
    while (wait_readable(s, s->lfd)) {
        int c = accept(s->lfd, NULL, NULL);
        if (c < 0)
            continue;
        int rc = serve_one(s, c);
        close(c);
        if (rc < 0)
            break;
    }
    return NULL;
}

struct http_stub *http_stub_start(http_stub_answer_fn answer, void *arg, char *err, size_t errlen)
{
    struct sockaddr_in a = {.sin_family = AF_INET};
    socklen_t al = sizeof a;
    struct http_stub *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "http_stub: out of memory");
        return NULL;
    }
    s->answer = answer;
    s->arg = arg;
    s->wake[0] = s->wake[1] = -1;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    s->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s->lfd < 0 || bind(s->lfd, (struct sockaddr *)&a, sizeof a) < 0 || listen(s->lfd, 64) < 0 ||
        getsockname(s->lfd, (struct sockaddr *)&a, &al) < 0) {
        snprintf(err, errlen, "http_stub: loopback socket: %s", strerror(errno));
        goto close_socket;
    }
    s->port = ntohs(a.sin_port);
    if (pipe(s->wake) < 0) {
        snprintf(err, errlen, "http_stub: pipe: %s", strerror(errno));
        goto close_socket;
    }
    int rc = pthread_create(&s->thread, NULL, serve, s);
    if (rc != 0) {
        snprintf(err, errlen, "http_stub: thread: %s", strerror(rc));
        goto close_pipe;
    }
    return s;

close_pipe:
    close(s->wake[0]);
    close(s->wake[1]);
close_socket:
    if (s->lfd >= 0)
        close(s->lfd);
    free(s);
    return NULL;
}

int http_stub_port(const struct http_stub *s)
{
    return s->port;
}

void http_stub_stop(struct http_stub *s)
{
    if (!s)
        return;
    /* The byte stays unread, so every later wait sees it too. */
    while (write(s->wake[1], "x", 1) < 0 && errno == EINTR)
        ;
    pthread_join(s->thread, NULL);
    close(s->wake[0]);
    close(s->wake[1]);
    close(s->lfd);
    free(s);
}
