/*
 * fault_control.c - issue 9, case 11: the control socket and the metrics
 * endpoint of the server daemon, under another uid and under floods of
 * garbage, while tasks flow.
 *
 * 1. Who may talk to the control socket: it is 0660 and the daemon's
 *    (here root's: the suite runs as root); with the file's mode opened to
 *    0666, so that the mode does not stop it first, a process of uid 65534
 *    is refused by the daemon's SO_PEERCRED check (twice: logged once),
 *    and root is served.
 * 2. A warm-up: 300 tasks and the same flood as below, once; then the
 *    server's RSS and open descriptors are read once every connection of
 *    the warm-up has ended. (A tenth of the flood was not enough: the
 *    allocator's high-water mark follows how many large buffers are live
 *    at once, which only the full flood reaches; a second and third full
 *    flood then moved RSS by 92 kB and 60 kB.)
 * 3. The fault: 300 tasks sent in 6 batches 4 s apart while a child
 *    process floods the server daemon with 1,000 malformed or oversized
 *    control requests (lines of 10 MB, no newline, invalid JSON, JSON
 *    that is not an object, unknown commands, wrong types, binary,
 *    nesting past the parser's depth, half a request then a hang-up, half
 *    a request and silence; up to 24 at once, beyond CONTROL_MAX_CLIENTS)
 *    and 10,000 garbage HTTP requests to /metrics (bad request lines,
 *    binary, headers and URLs past the memory limit, bodies of 100 MB
 *    announced, other methods and paths, HTTP/0.9, bad chunked bodies,
 *    pipelines, partial requests left hanging, bytes trickled every
 *    500 ms, resets and hang-ups mid-request; up to 48 at once from 8
 *    loopback addresses), with a few good pings and scrapes
 *    among them (the scrapes from a ninth address, as a Prometheus
 *    elsewhere: from the flood's addresses the per-address limit may turn
 *    them away). `status` is asked during the flood.
 * 4. Required: every connection of the flood ended by the daemon's doing
 *    (none left open past 40 s), no garbage answered as a success, every
 *    control error answer the one its input calls for, every good ping
 *    and scrape in the flood answered; afterwards a good ping and a good
 *    scrape are served, the server's RSS is within 1 MB (1,024 kB) of its
 *    value after the warm-up and its descriptors are as many; both
 *    daemons ran throughout and stop cleanly; lost 0, duplicated 0.
 *
 * What the flood found, fixed in bridge/metrics_http.c with a unit test
 * each: connections whose peer sent a byte now and then were never idle
 * and held their slots for ever (now cut 10 s into a request), and half
 * requests whose hang-up came before libmicrohttpd took the connection
 * were held until the idle timeout (now seen and closed), so that a flood
 * of 10,000 took 331 s instead of 40.
 *
 * The server's state cycle is moved out of the case's time
 * (sync_interval 86400 s): a cycle over all the case's tasks between the
 * two readings would move RSS by what the cycle holds, which is not what
 * this case measures. The tasks are forwarded and applied as ever.
 *
 * The server daemon runs with ASan's quarantine off (quarantine_size_mb=0)
 * for this case: with it, ASan keeps up to 256 MB of freed memory out of
 * reuse by design, and RSS would measure the quarantine, not the daemon.
 * Redzones and LeakSanitizer stay on.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "buf.h"
#include "ctlproto.h"
#include "faults.h"
#include "harness.h"

#define WARM_TASKS 300
#define CTL_FLOOD  1000
#define HTTP_FLOOD 10000
/* Connections open at once: beyond the daemon's 16 of each kind. */
#define CTL_AT_ONCE  24
#define HTTP_AT_ONCE 48
#define HTTP_SOURCES 8 /* 127.0.0.1 .. 127.0.0.8; good scrapes from 127.0.0.9 */
/* A connection the daemon has not closed by then counts as stuck. */
#define CONN_DEADLINE_MS 40000
#define TRICKLE_MS       500
#define RSS_SLACK_KB     1024
#define UID_OTHER        65534
#define BIG_LINE         ((size_t)10 * 1024 * 1024)
#define SETTLE_MS        60000
/* The fault's tasks go in batches this far apart while the flood runs. */
#define BATCHES        6
#define BATCH_EVERY_MS 4000

static const char *const server_members[] = {"broker.state", "counters", "errors", NULL};

/* ---- the flood ----------------------------------------------------------- */

enum flood_mode {
    SEND_READ,   /* send it all, read until the daemon closes */
    SEND_HANGUP, /* send it all, close at once */
    SEND_RESET,  /* send it all, close with a reset (SO_LINGER 0) */
    SEND_WAIT,   /* send it all (a partial request), wait for the daemon to close */
    TRICKLE,     /* send it, then one byte every TRICKLE_MS until the daemon closes */
};

/* What a good answer looks like. */
enum flood_expect {
    EXPECT_ANY,     /* anything: a valid request it may serve or not */
    EXPECT_NOTHING, /* the daemon may answer or not; never a success */
    EXPECT_ERROR,   /* control: {"ok":false,...} holding want */
    EXPECT_OK,      /* control: {"ok":true}; HTTP: 200 */
    EXPECT_STATUS,  /* HTTP: a status line starting with want */
};

struct flood_kind {
    const char *name;
    int http;
    enum flood_mode mode;
    enum flood_expect expect;
    const char *want;
    int weight; /* per 1,000 requests of its listener; 0 = fixed count */
    int fixed;  /* when weight is 0: how many in a full flood */
    const char *data;
    size_t len;
    /* From an address no other kind uses (HTTP): a scraper elsewhere,
     * whom the per-address limit the flood meets does not concern. */
    int own_address;
};

struct flood_tally {
    long issued, answered, closed, reset, connect_failed, stuck, met, missed, success_to_garbage;
    long longest_ms; /* the longest a connection of the kind was open */
    char first_miss[160];
};

struct flood {
    struct flood_kind *kinds;
    size_t n_kinds;
    struct flood_tally *tally;
    const char *ctl_path;
    int http_port;
};

/* One connection of the flood. */
struct flood_conn {
    int fd;
    const struct flood_kind *k;
    struct flood_tally *t;
    size_t off;
    int phase; /* 0 connecting (TCP), 1 sending, 2 reading */
    int64_t started, deadline, next_trickle;
    char head[256];
    size_t head_len, got;
};

static int64_t flood_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Judges what came back once the daemon closed (or reset) the connection. */
static void flood_judge(struct flood_conn *c, int reset)
{
    struct flood_tally *t = c->t;
    const struct flood_kind *k = c->k;
    c->head[c->head_len] = '\0';
    if (c->got)
        t->answered++;
    else if (reset)
        t->reset++;
    else
        t->closed++;
    int success = c->got && (k->http ? strncmp(c->head, "HTTP/1.1 200", 12) == 0
                                     : strstr(c->head, "\"ok\":true") != NULL);
    /* Requests that no daemon should serve as a success. */
    int garbage = k->expect == EXPECT_NOTHING || k->expect == EXPECT_ERROR ||
                  (k->expect == EXPECT_STATUS && strncmp(k->want, "HTTP/1.1 200", 12) != 0);
    int ok;
    switch (k->expect) {
    case EXPECT_ANY: ok = 1; break;
    case EXPECT_NOTHING: ok = !success; break;
    case EXPECT_ERROR:
        /* No answer at all is allowed when the daemon closed first (the
         * request was cut), an answer must be the error asked for. */
        ok = !c->got || (strstr(c->head, "\"ok\":false") && strstr(c->head, k->want));
        break;
    case EXPECT_OK: ok = success; break;
    case EXPECT_STATUS: ok = !c->got || strncmp(c->head, k->want, strlen(k->want)) == 0; break;
    default: ok = 0;
    }
    if (garbage && success)
        t->success_to_garbage++;
    if (ok) {
        t->met++;
    } else {
        if (!t->missed)
            snprintf(t->first_miss, sizeof(t->first_miss), "%.150s",
                     c->got ? c->head : (reset ? "(reset)" : "(closed, no answer)"));
        t->missed++;
    }
}

static void flood_close(struct flood_conn *c)
{
    int64_t open_ms = flood_now() - c->started;
    if (c->t && open_ms > c->t->longest_ms)
        c->t->longest_ms = (long)open_ms;
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->k = NULL;
}

/* Opens a connection for kind k; returns 0, or -1 to try again later (a
 * full backlog). */
static int flood_open(struct flood *f, struct flood_conn *c, const struct flood_kind *k,
                      struct flood_tally *t, unsigned seq)
{
    memset(c, 0, sizeof(*c));
    c->fd = -1;
    if (!k->http) {
        struct sockaddr_un addr;
        char err[CTLPROTO_ERR_MAX];
        if (ctlproto_addr(f->ctl_path, &addr, err, sizeof(err)) < 0)
            _exit(20);
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
            _exit(21);
        if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
            int e = errno;
            close(fd);
            if (e == EAGAIN)
                return -1;
            t->issued++;
            t->connect_failed++;
            return 0;
        }
        c->fd = fd;
        c->phase = 1;
    } else {
        struct sockaddr_in sa, src;
        memset(&sa, 0, sizeof(sa));
        sa.sin_family = AF_INET;
        sa.sin_port = htons((uint16_t)f->http_port);
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        memset(&src, 0, sizeof(src));
        src.sin_family = AF_INET;
        src.sin_addr.s_addr =
            htonl(INADDR_LOOPBACK + (k->own_address ? HTTP_SOURCES : seq % HTTP_SOURCES));
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
            _exit(22);
        if (bind(fd, (struct sockaddr *)&src, sizeof(src)) < 0)
            _exit(23);
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 && errno != EINPROGRESS) {
            close(fd);
            t->issued++;
            t->connect_failed++;
            return 0;
        }
        c->fd = fd;
        c->phase = 0;
    }
    c->k = k;
    c->t = t;
    t->issued++;
    c->started = flood_now();
    c->deadline = c->started + CONN_DEADLINE_MS;
    return 0;
}

/* Sends what it can; moves on to reading, hanging up or trickling. */
static void flood_send(struct flood_conn *c)
{
    const struct flood_kind *k = c->k;
    while (c->off < k->len) {
        ssize_t n = send(c->fd, k->data + c->off, k->len - c->off, MSG_NOSIGNAL);
        if (n > 0) {
            c->off += (size_t)n;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        /* The daemon closed first (it refused the rest): read what it
         * said. */
        c->phase = 2;
        return;
    }
    switch (k->mode) {
    case SEND_HANGUP:
        c->t->closed++;
        c->t->met++;
        flood_close(c);
        return;
    case SEND_RESET: {
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        c->t->reset++;
        c->t->met++;
        flood_close(c);
        return;
    }
    case TRICKLE: c->next_trickle = flood_now() + TRICKLE_MS; /* fall through */
    default: c->phase = 2;
    }
}

/* Reads what came; judges and closes at the end of the stream. */
static void flood_read(struct flood_conn *c)
{
    char chunk[16384];
    for (;;) {
        ssize_t n = recv(c->fd, chunk, sizeof(chunk), 0);
        if (n > 0) {
            size_t room = sizeof(c->head) - 1 - c->head_len;
            size_t take = (size_t)n < room ? (size_t)n : room;
            memcpy(c->head + c->head_len, chunk, take);
            c->head_len += take;
            c->got += (size_t)n;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        flood_judge(c, n < 0);
        flood_close(c);
        return;
    }
}

/* Runs counts[i] requests of each kind (in an interleaved order), at most
 * at_once of each listener at a time, until every connection ended. */
static void flood_run(struct flood *f, const long *counts)
{
    long total = 0, left[64];
    for (size_t i = 0; i < f->n_kinds; i++)
        total += left[i] = counts[i];
    struct flood_conn conns[CTL_AT_ONCE + HTTP_AT_ONCE];
    for (size_t i = 0; i < sizeof(conns) / sizeof(conns[0]); i++)
        conns[i].fd = -1, conns[i].k = NULL;
    unsigned seq = 0;
    size_t next_kind[2] = {0, 0};
    int64_t backlog_full_until = 0;

    for (;;) {
        int active = 0;
        /* Fill free slots: control ones first, then HTTP ones. */
        for (size_t i = 0; i < sizeof(conns) / sizeof(conns[0]); i++) {
            int http = i >= CTL_AT_ONCE;
            if (conns[i].k) {
                active++;
                continue;
            }
            if (total == 0 || (!http && flood_now() < backlog_full_until))
                continue;
            /* The next kind of this listener with requests left, round
             * robin, so that kinds interleave. */
            const struct flood_kind *k = NULL;
            size_t ki = 0;
            for (size_t tries = 0; tries < f->n_kinds && !k; tries++) {
                ki = (next_kind[http] + tries) % f->n_kinds;
                if (f->kinds[ki].http == http && left[ki] > 0)
                    k = &f->kinds[ki];
            }
            if (!k)
                continue;
            next_kind[http] = ki + 1;
            if (flood_open(f, &conns[i], k, &f->tally[ki], seq++) < 0) {
                backlog_full_until = flood_now() + 5;
                continue;
            }
            left[ki]--;
            total--;
            if (conns[i].k)
                active++;
        }
        if (active == 0 && total == 0)
            break;

        struct pollfd pfds[CTL_AT_ONCE + HTTP_AT_ONCE];
        size_t map[CTL_AT_ONCE + HTTP_AT_ONCE], n = 0;
        int64_t now = flood_now();
        int timeout = 20;
        for (size_t i = 0; i < sizeof(conns) / sizeof(conns[0]); i++) {
            struct flood_conn *c = &conns[i];
            if (!c->k)
                continue;
            if (now > c->deadline) {
                c->t->stuck++;
                flood_close(c);
                continue;
            }
            short ev = c->phase == 2 ? POLLIN : POLLOUT;
            pfds[n] = (struct pollfd){.fd = c->fd, .events = ev};
            map[n++] = i;
        }
        if (poll(pfds, n, timeout) < 0 && errno != EINTR)
            _exit(24);
        now = flood_now();
        for (size_t j = 0; j < n; j++) {
            struct flood_conn *c = &conns[map[j]];
            if (c->phase == 0 && pfds[j].revents) {
                int err = 0;
                socklen_t len = sizeof(err);
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err) {
                    c->t->connect_failed++;
                    flood_close(c);
                    continue;
                }
                c->phase = 1;
            }
            if (c->phase == 1 && (pfds[j].revents & (POLLOUT | POLLERR | POLLHUP)))
                flood_send(c);
            if (c->k && c->phase == 2 && (pfds[j].revents & (POLLIN | POLLERR | POLLHUP)))
                flood_read(c);
            if (c->k && c->phase == 2 && c->k->mode == TRICKLE && now >= c->next_trickle) {
                if (send(c->fd, "a", 1, MSG_NOSIGNAL) != 1 && errno != EAGAIN)
                    flood_read(c); /* the daemon is gone from it: judge */
                else
                    c->next_trickle = now + TRICKLE_MS;
            }
        }
    }
}

/* ---- the kinds of garbage ----------------------------------------------- */

static char *big_line;     /* BIG_LINE bytes of 'x', no newline */
static char nested[60002]; /* '[' x 60000, newline */
static char unknown_cmd[1100];
static char binary_ctl[2049]; /* random bytes, then a newline */
static char binary_http[512];
static char *huge_header, *many_headers, *long_url, *huge_post, *get_body;
static size_t huge_header_len, many_headers_len, long_url_len, huge_post_len, get_body_len;
static char pipeline[1024];

#define S(x) x, sizeof(x) - 1

static struct flood_kind kinds_template[] = {
    /* control socket */
    {"ctl: 10 MB without a newline", 0, SEND_READ, EXPECT_ERROR, "longer than 65536 bytes", 0, 20,
     NULL, 0, 0},
    {"ctl: line without a newline, hang-up", 0, SEND_HANGUP, EXPECT_NOTHING, NULL, 100, 0,
     S("{\"cmd\":\"ping\"}"), 0},
    {"ctl: half a request, hang-up", 0, SEND_HANGUP, EXPECT_NOTHING, NULL, 100, 0,
     S("{\"cmd\":\"pi"), 0},
    {"ctl: half a request, silence", 0, SEND_WAIT, EXPECT_NOTHING, NULL, 0, 24,
     S("{\"cmd\":\"status\""), 0},
    {"ctl: invalid JSON", 0, SEND_READ, EXPECT_ERROR, "bad request: not JSON", 100, 0,
     S("{\"cmd\":\n"), 0},
    {"ctl: JSON not an object", 0, SEND_READ, EXPECT_ERROR, "not a JSON object", 100, 0,
     S("[\"ping\"]\n"), 0},
    {"ctl: unknown command", 0, SEND_READ, EXPECT_ERROR, "unknown command", 100, 0, NULL, 0, 0},
    {"ctl: cmd of the wrong type", 0, SEND_READ, EXPECT_ERROR, "no \\\"cmd\\\" string", 60, 0,
     S("{\"cmd\":5}\n"), 0},
    {"ctl: checkevent timeout of the wrong type", 0, SEND_READ, EXPECT_ERROR, "\\\"timeout\\\"", 40,
     0, S("{\"cmd\":\"checkevent\",\"timeout\":\"soon\"}\n"), 0},
    {"ctl: binary", 0, SEND_READ, EXPECT_ERROR, "bad request", 100, 0, NULL, 0, 0},
    {"ctl: nesting past the parser's depth", 0, SEND_READ, EXPECT_ERROR, "bad request: not JSON",
     100, 0, NULL, 0, 0},
    {"ctl: good ping", 0, SEND_READ, EXPECT_OK, NULL, 30, 0, S("{\"cmd\":\"ping\"}\n"), 0},
    /* metrics endpoint */
    {"http: bad request line", 1, SEND_READ, EXPECT_NOTHING, NULL, 90, 0, S("GARBAGE\r\n\r\n"), 0},
    {"http: binary", 1, SEND_READ, EXPECT_NOTHING, NULL, 90, 0, NULL, 0, 0},
    {"http: header past the memory limit", 1, SEND_READ, EXPECT_STATUS, "HTTP/1.1 431", 30, 0, NULL,
     0, 0},
    {"http: thousands of headers", 1, SEND_READ, EXPECT_STATUS, "HTTP/1.1 431", 30, 0, NULL, 0, 0},
    {"http: URL past the memory limit", 1, SEND_READ, EXPECT_STATUS, "HTTP/1.1 414", 30, 0, NULL, 0,
     0},
    {"http: POST with 100 MB announced", 1, SEND_READ, EXPECT_STATUS, "HTTP/1.1 405", 30, 0, NULL,
     0, 0},
    {"http: GET with a body", 1, SEND_READ, EXPECT_ANY, NULL, 30, 0, NULL, 0, 0},
    {"http: other methods", 1, SEND_READ, EXPECT_STATUS, "HTTP/1.1 405", 90, 0,
     S("DELETE /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"), 0},
    {"http: other paths", 1, SEND_READ, EXPECT_STATUS, "HTTP/1.1 404", 90, 0,
     S("GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"), 0},
    {"http: HTTP/0.9", 1, SEND_READ, EXPECT_STATUS, "HTTP/1.1 400", 80, 0,
     S("GET /metrics\r\n\r\n"), 0},
    {"http: bad chunked body", 1, SEND_READ, EXPECT_NOTHING, NULL, 80, 0,
     S("POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
       "ffffffffffffffff\r\nxxxx"),
     0},
    /* libmicrohttpd answers the first and closes with the others unread,
     * which resets the connection: the answer may be lost with it. */
    {"http: pipelined scrapes", 1, SEND_READ, EXPECT_STATUS, "HTTP/1.1 200", 30, 0, NULL, 0, 0},
    {"http: partial request, silence", 1, SEND_WAIT, EXPECT_NOTHING, NULL, 0, 48, S("GET /metr"),
     0},
    {"http: a byte every 500 ms", 1, TRICKLE, EXPECT_NOTHING, NULL, 0, 32,
     S("GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: "), 0},
    {"http: reset mid-request", 1, SEND_RESET, EXPECT_NOTHING, NULL, 90, 0,
     S("GET /metrics HTTP/1.1\r\nHo"), 0},
    {"http: hang-up mid-request", 1, SEND_HANGUP, EXPECT_NOTHING, NULL, 90, 0,
     S("GET /metrics HTTP/1.1\r\nHost"), 0},
    {"http: good scrape", 1, SEND_READ, EXPECT_OK, NULL, 20, 0,
     S("GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"), 1},
};

static void kinds_data(void)
{
    unsigned rnd = 12345;
    big_line = malloc(BIG_LINE);
    assert_non_null(big_line);
    memset(big_line, 'x', BIG_LINE);
    memset(nested, '[', sizeof(nested) - 2);
    nested[sizeof(nested) - 2] = '\n';
    int n = snprintf(unknown_cmd, sizeof(unknown_cmd), "{\"cmd\":\"");
    memset(unknown_cmd + n, 'z', 1000);
    memcpy(unknown_cmd + n + 1000, "\"}\n", 3);
    for (size_t i = 0; i < sizeof(binary_ctl) - 1; i++) {
        int c = rand_r(&rnd) % 256;
        binary_ctl[i] = (char)(c == '\n' ? 0 : c);
    }
    binary_ctl[0] = (char)0xff; /* never valid JSON */
    binary_ctl[sizeof(binary_ctl) - 1] = '\n';
    for (size_t i = 0; i < sizeof(binary_http); i++)
        binary_http[i] = (char)(rand_r(&rnd) % 256);

    struct buf b;
    buf_init(&b, 4 * 1024 * 1024);
    assert_int_equal(buf_append_str(&b, "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: "), 0);
    for (int i = 0; i < 100 * 1024; i++)
        assert_int_equal(buf_append(&b, "a", 1), 0);
    assert_int_equal(buf_append_str(&b, "\r\n\r\n"), 0);
    huge_header_len = b.len;
    huge_header = buf_steal(&b);
    assert_int_equal(buf_append_str(&b, "GET /metrics HTTP/1.1\r\nHost: x\r\n"), 0);
    for (int i = 0; i < 5000; i++)
        assert_int_equal(buf_append_str(&b, "X-A: b\r\n"), 0);
    assert_int_equal(buf_append_str(&b, "\r\n"), 0);
    many_headers_len = b.len;
    many_headers = buf_steal(&b);
    assert_int_equal(buf_append_str(&b, "GET /"), 0);
    for (int i = 0; i < 100 * 1024; i++)
        assert_int_equal(buf_append(&b, "u", 1), 0);
    assert_int_equal(buf_append_str(&b, " HTTP/1.1\r\nHost: x\r\n\r\n"), 0);
    long_url_len = b.len;
    long_url = buf_steal(&b);
    assert_int_equal(buf_append_str(&b, "POST /metrics HTTP/1.1\r\nHost: x\r\n"
                                        "Content-Length: 104857600\r\n\r\n"),
                     0);
    for (int i = 0; i < 256 * 1024; i++)
        assert_int_equal(buf_append(&b, "p", 1), 0);
    huge_post_len = b.len;
    huge_post = buf_steal(&b);
    assert_int_equal(buf_append_str(&b, "GET /metrics HTTP/1.1\r\nHost: x\r\n"
                                        "Content-Length: 10485760\r\n\r\n"),
                     0);
    for (int i = 0; i < 256 * 1024; i++)
        assert_int_equal(buf_append(&b, "g", 1), 0);
    get_body_len = b.len;
    get_body = buf_steal(&b);
    size_t off = 0;
    for (int i = 0; i < 9; i++)
        off += (size_t)snprintf(pipeline + off, sizeof(pipeline) - off,
                                "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    snprintf(pipeline + off, sizeof(pipeline) - off,
             "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");

    for (size_t i = 0; i < sizeof(kinds_template) / sizeof(kinds_template[0]); i++) {
        struct flood_kind *k = &kinds_template[i];
        const char *name = k->name;
#define DATA(p, l) (k->data = (p), k->len = (l))
        if (strstr(name, "10 MB"))
            DATA(big_line, BIG_LINE);
        else if (strstr(name, "nesting"))
            DATA(nested, sizeof(nested) - 1);
        else if (strstr(name, "unknown command"))
            DATA(unknown_cmd, strlen(unknown_cmd));
        else if (strcmp(name, "ctl: binary") == 0)
            DATA(binary_ctl, sizeof(binary_ctl));
        else if (strcmp(name, "http: binary") == 0)
            DATA(binary_http, sizeof(binary_http));
        else if (strstr(name, "header past"))
            DATA(huge_header, huge_header_len);
        else if (strstr(name, "thousands of headers"))
            DATA(many_headers, many_headers_len);
        else if (strstr(name, "URL past"))
            DATA(long_url, long_url_len);
        else if (strstr(name, "100 MB"))
            DATA(huge_post, huge_post_len);
        else if (strstr(name, "GET with a body"))
            DATA(get_body, get_body_len);
        else if (strstr(name, "pipelined"))
            DATA(pipeline, strlen(pipeline));
#undef DATA
        assert_non_null(k->data);
    }
}

static void kinds_free(void)
{
    free(big_line);
    free(huge_header);
    free(many_headers);
    free(long_url);
    free(huge_post);
    free(get_body);
}

#define N_KINDS (sizeof(kinds_template) / sizeof(kinds_template[0]))

/* How many of each kind a flood of ctl_total control and http_total HTTP
 * requests holds, in counts[]. */
static void flood_counts(long ctl_total, long http_total, long *counts)
{
    long fixed[2] = {0, 0}, weight[2] = {0, 0};
    for (size_t i = 0; i < N_KINDS; i++) {
        const struct flood_kind *k = &kinds_template[i];
        counts[i] = k->weight ? 0 : k->fixed;
        fixed[k->http] += counts[i];
        weight[k->http] += k->weight;
    }
    long want[2] = {ctl_total, http_total}, given[2] = {0, 0};
    for (size_t i = 0; i < N_KINDS; i++) {
        const struct flood_kind *k = &kinds_template[i];
        if (!k->weight)
            continue;
        counts[i] = (want[k->http] - fixed[k->http]) * k->weight / weight[k->http];
        given[k->http] += counts[i];
    }
    /* What rounding left goes to the first weighted kind of each. */
    for (size_t i = 0; i < N_KINDS; i++) {
        const struct flood_kind *k = &kinds_template[i];
        if (k->weight && given[k->http] + fixed[k->http] < want[k->http]) {
            counts[i] += want[k->http] - fixed[k->http] - given[k->http];
            given[k->http] = want[k->http] - fixed[k->http];
        }
    }
}

/* Floods in a child process, so that the test can ask status meanwhile;
 * the child writes its tallies to out (binary) and exits 0. */
static pid_t flood_start(const char *ctl_path, int http_port, const long *counts, const char *out)
{
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid > 0)
        return pid;
    signal(SIGPIPE, SIG_IGN);
    struct flood_tally tally[N_KINDS];
    memset(tally, 0, sizeof(tally));
    struct flood f = {.kinds = kinds_template,
                      .n_kinds = N_KINDS,
                      .tally = tally,
                      .ctl_path = ctl_path,
                      .http_port = http_port};
    flood_run(&f, counts);
    int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || write(fd, tally, sizeof(tally)) != (ssize_t)sizeof(tally))
        _exit(30);
    close(fd);
    _exit(0);
}

/* Reads the tallies of a flood child that ended with status. */
static void flood_read_tally(int status, const char *out, struct flood_tally *tally)
{
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail_msg("the flood process failed (status 0x%x)", status);
    int fd = open(out, O_RDONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    assert_int_equal(read(fd, tally, sizeof(struct flood_tally) * N_KINDS),
                     (ssize_t)(sizeof(struct flood_tally) * N_KINDS));
    close(fd);
}

/* Waits for the flood child (it ends by itself: every connection has a
 * deadline) and reads its tallies. */
static void flood_wait(pid_t pid, const char *out, struct flood_tally *tally)
{
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    flood_read_tally(status, out, tally);
}

/* ---- the daemon, seen from the test ------------------------------------- */

/* {"cmd":"ping"} as uid (0 = as the test), in a child for another uid:
 * 0 served, 1 refused with "permission denied", 2 anything else. */
static int ping_as(const char *path, uid_t uid, char *why, size_t len)
{
    int p[2];
    assert_int_equal(pipe(p), 0);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(p[0]);
        char err[CTLPROTO_ERR_MAX] = "";
        int rc = 2;
        if (uid && (setgroups(0, NULL) < 0 || setgid(uid) < 0 || setuid(uid) < 0)) {
            snprintf(err, sizeof(err), "cannot become uid %u: %s", (unsigned)uid, strerror(errno));
        } else {
            json_t *req = json_pack("{s:s}", "cmd", "ping"), *resp = NULL;
            if (ctlproto_request(path, req, &resp, 20000, err, sizeof(err)) == RT_OK) {
                const char *e = json_string_value(json_object_get(resp, "error"));
                rc = json_is_true(json_object_get(resp, "ok")) ? 0
                     : e && strstr(e, "permission denied")     ? 1
                                                               : 2;
                snprintf(err, sizeof(err), "%s", e ? e : "ok");
            }
        }
        if (write(p[1], err, strlen(err)) < 0)
            _exit(3);
        _exit(rc);
    }
    close(p[1]);
    ssize_t n = read(p[0], why, len - 1);
    why[n > 0 ? n : 0] = '\0';
    close(p[0]);
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    return WEXITSTATUS(status);
}

/* Connections of the listeners that the daemon still holds: TCP ones on
 * the metrics port established or half-closed by the peer (the states in
 * which the daemon has a descriptor; after its close() a connection
 * lingers in other states without one), and accepted Unix ones on the
 * control socket (/proc/net/unix shows the listener's path on them). */
static long held_connections(int port, const char *sock)
{
    long n = 0;
    char line[1024];
    const char *tcp[] = {"/proc/net/tcp", "/proc/net/tcp6"};
    for (size_t i = 0; i < 2; i++) {
        FILE *fp = fopen(tcp[i], "r");
        if (!fp)
            continue;
        while (fgets(line, sizeof(line), fp)) {
            char local[128];
            unsigned st;
            if (sscanf(line, " %*u: %127s %*s %x", local, &st) != 2)
                continue;
            const char *colon = strrchr(local, ':');
            if (colon && strtol(colon + 1, NULL, 16) == port && (st == 0x01 || st == 0x08))
                n++;
        }
        fclose(fp);
    }
    FILE *fp = fopen("/proc/net/unix", "r");
    assert_non_null(fp);
    while (fgets(line, sizeof(line), fp)) {
        unsigned st;
        char path[PATH_MAX];
        if (sscanf(line, "%*s %*s %*s %*s %*s %x %*s %4095s", &st, path) == 2 && st == 3 &&
            strcmp(path, sock) == 0)
            n++;
    }
    fclose(fp);
    return n;
}

/* Waits until the daemon holds no connection of the flood (the slow ones
 * end at the daemon's timeouts), then reads it. Returns the reading; held
 * says how many were left when the deadline passed. */
static struct harness_proc settle(struct harness_daemon *d, int port, const char *sock, long *held)
{
    struct harness_proc p;
    long long deadline = harness_now_ms() + SETTLE_MS;
    while ((*held = held_connections(port, sock)) > 0 && harness_now_ms() < deadline)
        poll(NULL, 0, 100);
    assert_int_equal(harness_daemon_proc(d, &p), 0);
    return p;
}

/* Prints the flood's table, one line per kind, and records four checks
 * over all kinds: all sent, none left open, no garbage served as a
 * success, every answer the one asked for (the kinds that failed are
 * named). */
static void note_tallies(struct fault_result *r, const char *phase, const struct flood_tally *t,
                         const long *counts, long long took_ms)
{
    long ctl = 0, http = 0, unsent = 0, stuck = 0, success = 0, missed = 0;
    char which[4][512] = {"", "", "", ""};
    for (size_t i = 0; i < N_KINDS; i++) {
        const struct flood_kind *k = &kinds_template[i];
        long bad[4] = {t[i].issued != counts[i], t[i].stuck, t[i].success_to_garbage, t[i].missed};
        (k->http ? &http : &ctl)[0] += t[i].issued;
        unsent += counts[i] - t[i].issued;
        stuck += t[i].stuck;
        success += t[i].success_to_garbage;
        missed += t[i].missed;
        for (int j = 0; j < 4; j++)
            if (bad[j] && strlen(which[j]) + strlen(k->name) + 3 < sizeof(which[j]))
                strcat(strcat(which[j], which[j][0] ? "; " : ""), k->name);
        printf("fault control-flood: %s %-42s issued %5ld answered %5ld closed %5ld reset %4ld "
               "connect-failed %3ld stuck %ld longest %5ld ms as-expected %5ld not %ld%s%s\n",
               phase, k->name, t[i].issued, t[i].answered, t[i].closed, t[i].reset,
               t[i].connect_failed, t[i].stuck, t[i].longest_ms, t[i].met, t[i].missed,
               t[i].missed ? ", first: " : "", t[i].missed ? t[i].first_miss : "");
    }
    fault_check(r, unsent == 0, "%s: every request of the flood was sent (%ld not: %s)", phase,
                unsent, which[0][0] ? which[0] : "-");
    fault_check(r, stuck == 0,
                "%s: the daemon ended every connection by itself within %d s (%ld left open: %s)",
                phase, CONN_DEADLINE_MS / 1000, stuck, which[1][0] ? which[1] : "-");
    fault_check(r, success == 0, "%s: no garbage was answered as a success (%ld were: %s)", phase,
                success, which[2][0] ? which[2] : "-");
    fault_check(r, missed == 0,
                "%s: every answer was the one its request calls for (%ld were not: %s)", phase,
                missed, which[3][0] ? which[3] : "-");
    fault_note(r,
               "%s: %ld control requests and %ld HTTP requests sent to the server daemon in "
               "%.1f s",
               phase, ctl, http, (double)took_ms / 1000.0);
}

static void test_control_flood(void **state)
{
    (void)state;
    struct harness_scenario *s = faults_scenario("fctl", NULL);
    struct fault_result r;
    char sock[PATH_MAX], out[PATH_MAX], why[CTLPROTO_ERR_MAX];
    struct flood_tally tally[N_KINDS];
    long counts[N_KINDS];
    struct stat st;

    int port = faults_enable_metrics(s->server_conf);
    harness_config_replace(s->server_conf, "sync_interval = 300;", "sync_interval = 86400;");
    snprintf(sock, sizeof(sock), "%s/server.sock", s->dir);
    snprintf(out, sizeof(out), "%s/flood.tally", s->dir);
    fault_begin(&r, s, "control-flood", 11,
                "Control socket and metrics endpoint: another uid refused; 1,000 malformed control "
                "requests and 10,000 garbage HTTP requests while tasks flow");
    kinds_data();

    /* The server daemon alone runs without ASan's quarantine (see the top
     * of the file); the client as every other case. */
    const char *asan = getenv("ASAN_OPTIONS");
    char *saved = asan ? strdup(asan) : NULL;
    char quiet[2048];
    snprintf(quiet, sizeof(quiet), "%s%squarantine_size_mb=0", asan ? asan : "",
             asan && *asan ? ":" : "");
    setenv("ASAN_OPTIONS", quiet, 1);
    harness_daemon_start(s->server);
    if (saved)
        setenv("ASAN_OPTIONS", saved, 1);
    else
        unsetenv("ASAN_OPTIONS");
    free(saved);
    harness_daemon_start(s->client);

    /* 1. Who may talk to the control socket. */
    assert_int_equal(lstat(sock, &st), 0);
    fault_check(&r, S_ISSOCK(st.st_mode) && (st.st_mode & 07777) == 0660,
                "the control socket is a socket of mode 0660 (found %o)",
                (unsigned)(st.st_mode & 07777));
    fault_check(&r, st.st_uid == geteuid() && st.st_gid == getegid(),
                "the control socket is owned by the daemon's user and group (%u:%u, the daemon "
                "runs as %u:%u)",
                (unsigned)st.st_uid, (unsigned)st.st_gid, (unsigned)geteuid(), (unsigned)getegid());
    assert_int_equal(chmod(s->dir, 0711), 0);
    assert_int_equal(chmod(sock, 0666), 0);
    int got = ping_as(sock, UID_OTHER, why, sizeof(why));
    fault_check(&r, got == 1,
                "uid %d is refused by the peer check with the mode opened to 0666 (%s)", UID_OTHER,
                why);
    got = ping_as(sock, UID_OTHER, why, sizeof(why));
    fault_check(&r, got == 1, "uid %d is refused again (%s)", UID_OTHER, why);
    got = ping_as(sock, 0, why, sizeof(why));
    fault_check(&r, got == 0, "root is served (%s)", why);
    assert_int_equal(chmod(sock, 0660), 0);
    assert_int_equal(chmod(s->dir, 0700), 0);
    char needle[96];
    snprintf(needle, sizeof(needle), "warning: control connection refused from uid %d", UID_OTHER);
    size_t refusals = harness_daemon_log_count(s->server, needle);
    fault_check(&r, refusals == 1, "the refused uid is logged once for two refusals (%zu lines)",
                refusals);

    /* 2. Warm-up: tasks and a tenth of the flood, then the baseline. */
    long held = 0;
    long long t0 = harness_now_ms();
    faults_bulk_send(s, WARM_TASKS, "ctl-warm-");
    flood_counts(CTL_FLOOD, HTTP_FLOOD, counts);
    pid_t pid = flood_start(sock, port, counts, out);
    flood_wait(pid, out, tally);
    note_tallies(&r, "warm-up", tally, counts, harness_now_ms() - t0);
    fault_check(&r, harness_flow_wait_all(s, FAULTS_APPLY_DEADLINE_MS, NULL),
                "the %d tasks of the warm-up arrive", WARM_TASKS);
    t0 = harness_now_ms();
    struct harness_proc warm = settle(s->server, port, sock, &held);
    printf("fault control-flood: settled after the warm-up in %lld ms\n", harness_now_ms() - t0);
    fault_check(&r, held == 0, "the daemon closed every connection of the warm-up (%ld held)",
                held);

    /* 3. The fault: the full flood, and 300 tasks sent in batches while
     * it runs, so that they flow through the whole of it. */
    fault_start(&r);
    t0 = harness_now_ms();
    flood_counts(CTL_FLOOD, HTTP_FLOOD, counts);
    pid = flood_start(sock, port, counts, out);
    long long firsts[BATCHES];
    size_t applied_before = harness_flow_target_count(s);
    int batches = 0, status_asked = 0, done = 0, status = 0;
    while (!done) {
        long long now = harness_now_ms();
        if (batches < BATCHES && now >= t0 + (long long)batches * BATCH_EVERY_MS) {
            firsts[batches] = faults_bulk_send(s, FAULTS_TASKS / BATCHES, "ctl-");
            batches++;
        }
        /* status answers during the flood (it may wait behind the
         * flood's connections for a slot). */
        if (!status_asked && now >= t0 + 3 * BATCH_EVERY_MS) {
            status_asked = 1;
            json_decref(fault_status_within(&r, "server", s->server, "during the flood",
                                            server_members, 60000));
            struct harness_proc mid;
            if (harness_daemon_proc(s->server, &mid) == 0)
                fault_note(&r,
                           "during the flood the server held %ld descriptors and %ld kB "
                           "resident",
                           mid.fds, mid.rss_kb);
        }
        pid_t w = waitpid(pid, &status, WNOHANG);
        assert_true(w >= 0);
        done = w == pid;
        if (!done)
            poll(NULL, 0, 100);
    }
    flood_read_tally(status, out, tally);
    size_t applied_during = harness_flow_target_count(s) - applied_before;
    fault_end(&r);
    fault_check(&r, batches == BATCHES && status_asked,
                "the %d batches of tasks and the status question all came while the flood ran "
                "(%d batches)",
                BATCHES, batches);
    fault_note(&r,
               "%zu of the %d tasks sent during the flood were applied on the target before "
               "it ended",
               applied_during, FAULTS_TASKS);
    note_tallies(&r, "flood", tally, counts, harness_now_ms() - t0);
    static const char *const lines[] = {"control connection refused", "metrics endpoint:",
                                        "control request for an unknown command", NULL};
    fault_quote(&r, "server", s->server, lines);

    /* 4. Afterwards. */
    got = ping_as(sock, 0, why, sizeof(why));
    fault_check(&r, got == 0, "after the flood a good ping is answered (%s)", why);
    char *body = faults_scrape(port);
    fault_check(&r, body && strstr(body, "remotetask_"),
                "after the flood a good scrape is answered with the metrics");
    free(body);
    int arrived = 1;
    for (int i = 0; i < BATCHES; i++)
        arrived &=
            faults_wait_sources(s, firsts[i], FAULTS_TASKS / BATCHES, FAULTS_APPLY_DEADLINE_MS);
    fault_check(&r, arrived, "the %d tasks sent during the flood arrive", FAULTS_TASKS);
    fault_wait_recovered(&r, FAULTS_APPLY_DEADLINE_MS);
    t0 = harness_now_ms();
    struct harness_proc after = settle(s->server, port, sock, &held);
    printf("fault control-flood: settled after the flood in %lld ms\n", harness_now_ms() - t0);
    fault_check(&r, held == 0, "the daemon closed every connection of the flood (%ld held)", held);
    long grew = after.rss_kb - warm.rss_kb;
    fault_note(&r,
               "server RSS %ld kB after the warm-up, %ld kB after the flood (%+ld kB; peak %ld "
               "kB); descriptors %ld and %ld",
               warm.rss_kb, after.rss_kb, grew, after.hwm_kb, warm.fds, after.fds);
    /* Flat means no growth: the daemon gives freed heap pages back once a
     * minute (core.c, malloc_trim), so it may well end lower. */
    fault_check(&r, grew <= RSS_SLACK_KB,
                "the server's RSS after the flood is at most %d kB above its value after the "
                "warm-up (%ld kB, then %ld kB)",
                RSS_SLACK_KB, warm.rss_kb, after.rss_kb);
    fault_check(&r, after.fds == warm.fds,
                "the server holds as many descriptors after the flood as after the warm-up (%ld, "
                "then %ld)",
                warm.fds, after.fds);
    kinds_free();
    fault_check_running(&r, s);
    fault_stop_both(&r, s);
    fault_report(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_control_flood, faults_teardown),
    };
    return cmocka_run_group_tests(tests, faults_group_setup, NULL);
}
