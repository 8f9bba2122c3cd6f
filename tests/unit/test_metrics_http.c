/* Unit tests of bridge/metrics_http: a real libmicrohttpd server on a
 * loopback port, driven the way the daemon drives it (its epoll fd and
 * timeout in one poll loop, here together with a libcurl multi handle
 * making the requests), and the body checked by Prometheus' own promtool.
 * promtool comes from Debian's prometheus package; without it the test
 * fails, it does not skip. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cmocka.h>
#include <curl/curl.h>

#include <microhttpd.h>

#include "billmgr.h"
#include "buf.h"
#include "metrics.h"
#include "metrics_http.h"

#define DEADLINE_MS 10000

struct fixture {
    struct metrics *m;
    struct metrics_http *h;
    int renders;
    int fail_render;
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int render_cb(void *arg, struct buf *out)
{
    struct fixture *fx = arg;
    fx->renders++;
    if (fx->fail_render)
        return -1;
    return metrics_render(fx->m, out);
}

static int setup(void **state)
{
    char err[256];
    struct fixture *fx = calloc(1, sizeof(*fx));
    assert_non_null(fx);
    fx->m = metrics_new();
    assert_non_null(fx->m);
    assert_int_equal(metrics_describe_remotetask(fx->m), 0);
    fx->h = metrics_http_new("127.0.0.1", 0, render_cb, fx, err, sizeof(err));
    if (!fx->h)
        fail_msg("cannot start the metrics endpoint: %s", err);
    assert_true(metrics_http_port(fx->h) > 0);
    assert_true(metrics_http_pollfd(fx->h) >= 0);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *fx = *state;
    metrics_http_free(fx->h);
    metrics_free(fx->m);
    free(fx);
    return 0;
}

/* One loop turn as the daemon does it: poll the server's fd (and curl's,
 * through curl_multi_poll when a multi handle is given) for at most the
 * server's timeout, then let the server work. */
static void drive(struct metrics_http *h, CURLM *multi, int max_ms)
{
    int t = metrics_http_timeout_ms(h);
    if (t < 0 || t > max_ms)
        t = max_ms;
    if (multi) {
        struct curl_waitfd w = {.fd = metrics_http_pollfd(h), .events = CURL_WAIT_POLLIN};
        assert_int_equal(curl_multi_poll(multi, &w, 1, t, NULL), CURLM_OK);
    } else {
        struct pollfd p = {.fd = metrics_http_pollfd(h), .events = POLLIN};
        assert_true(poll(&p, 1, t) >= 0);
    }
    metrics_http_handle(h);
}

struct reply {
    long code;
    char ctype[128];
    struct buf body;
    struct buf headers;
};

static size_t write_cb(char *p, size_t size, size_t n, void *arg)
{
    return buf_append(arg, p, size * n) < 0 ? 0 : size * n;
}

/* Requests METHOD url_path from the server at host:port while driving it.
 * Fails the test when no answer came within DEADLINE_MS. */
static void fetch_at(struct metrics_http *h, const char *host, const char *method, const char *path,
                     struct reply *r)
{
    char url[256];
    snprintf(url, sizeof(url), "http://%s:%d%s", host, metrics_http_port(h), path);
    memset(r, 0, sizeof(*r));
    buf_init(&r->body, METRICS_HTTP_MAX_BODY);
    buf_init(&r->headers, 64 * 1024);

    CURLM *multi = curl_multi_init();
    CURL *e = curl_easy_init();
    assert_non_null(multi);
    assert_non_null(e);
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &r->body);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, write_cb);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, &r->headers);
    curl_easy_setopt(e, CURLOPT_NOPROXY, "*");
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)DEADLINE_MS);
    if (strcmp(method, "HEAD") == 0)
        curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    else if (strcmp(method, "POST") == 0)
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, "a=1");
    assert_int_equal(curl_multi_add_handle(multi, e), CURLM_OK);

    int64_t deadline = now_ms() + DEADLINE_MS;
    int running = 1;
    CURLcode result = CURLE_OK;
    for (;;) {
        assert_int_equal(curl_multi_perform(multi, &running), CURLM_OK);
        CURLMsg *msg;
        int left;
        while ((msg = curl_multi_info_read(multi, &left)) != NULL)
            if (msg->msg == CURLMSG_DONE)
                result = msg->data.result;
        if (!running)
            break;
        if (now_ms() > deadline)
            fail_msg("no answer to %s %s within %d ms", method, url, DEADLINE_MS);
        drive(h, multi, 100);
    }
    if (result != CURLE_OK)
        fail_msg("%s %s failed: %s", method, url, curl_easy_strerror(result));
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &r->code);
    char *ct = NULL;
    curl_easy_getinfo(e, CURLINFO_CONTENT_TYPE, &ct);
    snprintf(r->ctype, sizeof(r->ctype), "%s", ct ? ct : "");
    curl_multi_remove_handle(multi, e);
    curl_easy_cleanup(e);
    curl_multi_cleanup(multi);
}

static void fetch(struct metrics_http *h, const char *method, const char *path, struct reply *r)
{
    fetch_at(h, "127.0.0.1", method, path, r);
}

static void reply_release(struct reply *r)
{
    buf_release(&r->body);
    buf_release(&r->headers);
}

/* ---- promtool ---- */

/* The path of promtool in PATH, or a failed test saying how to get it. */
static void promtool_path(char *out, size_t len)
{
    const char *path = getenv("PATH");
    char *copy = strdup(path && *path ? path : "/usr/local/bin:/usr/bin:/bin");
    assert_non_null(copy);
    char *save = NULL;
    for (char *dir = strtok_r(copy, ":", &save); dir; dir = strtok_r(NULL, ":", &save)) {
        snprintf(out, len, "%s/promtool", dir);
        if (access(out, X_OK) == 0) {
            free(copy);
            return;
        }
    }
    free(copy);
    fail_msg("promtool is not installed (not found in PATH): it comes with Debian's "
             "prometheus package, which scripts/lib.sh installs");
}

/* Runs `promtool check metrics` with text on its stdin. Returns its exit
 * status and puts what it printed in report. */
static int promtool_check(const char *text, size_t len, char *report, size_t reportlen)
{
    char tool[4096];
    promtool_path(tool, sizeof(tool));
    int in[2], out[2];
    assert_int_equal(pipe(in), 0);
    assert_int_equal(pipe(out), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(in[0], STDIN_FILENO);
        dup2(out[1], STDOUT_FILENO);
        dup2(out[1], STDERR_FILENO);
        close(in[0]);
        close(in[1]);
        close(out[0]);
        close(out[1]);
        execl(tool, "promtool", "check", "metrics", (char *)NULL);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    /* Bodies here are a few KiB, but write in a loop anyway: promtool
     * reads all of stdin before it prints, so nothing can deadlock. */
    size_t off = 0;
    while (off < len) {
        ssize_t n = write(in[1], text + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        assert_true(n > 0);
        off += (size_t)n;
    }
    close(in[1]);
    size_t got = 0;
    for (;;) {
        ssize_t n = read(out[0], report + got, reportlen - 1 - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
        if (got == reportlen - 1)
            break;
    }
    report[got] = '\0';
    close(out[0]);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    return WEXITSTATUS(status);
}

/* ---- tests ---- */

/* Every family moved once, with label values that need escaping. */
static void fill(struct metrics *m)
{
    assert_int_equal(metrics_counter_add(m, METRICS_EVENTS_RECORDED, 5, NULL), 0);
    assert_int_equal(metrics_counter_set(m, METRICS_MESSAGES_PUBLISHED, 4, "task", NULL), 0);
    assert_int_equal(metrics_counter_set(m, METRICS_MESSAGES_PUBLISHED, 1, "dead", NULL), 0);
    assert_int_equal(metrics_counter_set(m, METRICS_MESSAGES_CONFIRMED, 4, "task", NULL), 0);
    assert_int_equal(metrics_counter_add(m, METRICS_APPLIED, 2, "forward", "created", NULL), 0);
    assert_int_equal(metrics_counter_add(m, METRICS_APPLIED, 1, "forward", "duplicate", NULL), 0);
    assert_int_equal(metrics_counter_add(m, METRICS_RETRIED, 1, "forward", NULL), 0);
    assert_int_equal(
        metrics_counter_add(m, METRICS_DEAD_LETTERED, 1, "forward", "unauthorized", NULL), 0);
    assert_int_equal(metrics_counter_add(m, METRICS_BROKER_RECONNECTS, 1, NULL), 0);
    assert_int_equal(metrics_counter_add(m, METRICS_API_CALLS, 3, "task.edit", "ok", NULL), 0);
    assert_int_equal(
        metrics_counter_add(m, METRICS_API_CALLS, 1, "odd \"func\"\\\nname ü", "reject", NULL), 0);
    assert_int_equal(metrics_gauge_set(m, METRICS_QUEUE_READY, 12, "remotetask.forward.7", NULL),
                     0);
    assert_int_equal(metrics_gauge_set(m, METRICS_QUEUE_READY, 0, "remotetask.dead", NULL), 0);
    assert_int_equal(metrics_gauge_set(m, METRICS_QUEUE_CONSUMERS, 1, "remotetask.forward.7", NULL),
                     0);
    assert_int_equal(metrics_gauge_set(m, METRICS_OUTBOX_BACKLOG, 3, NULL), 0);
    assert_int_equal(metrics_gauge_set(m, METRICS_OUTBOX_OLDEST_AGE, 42.5, NULL), 0);
    assert_int_equal(metrics_gauge_set(m, METRICS_INFLIGHT, 2, "api_calls", NULL), 0);
    assert_int_equal(metrics_gauge_set(m, METRICS_INFLIGHT, 1, "unconfirmed", NULL), 0);
    assert_int_equal(metrics_gauge_set(m, METRICS_INFLIGHT, 0, "slots", NULL), 0);
    assert_int_equal(metrics_gauge_set(m, METRICS_LINKS, 2, NULL), 0);
    assert_int_equal(metrics_gauge_set(m, METRICS_UP, 1, NULL), 0);
    assert_int_equal(
        metrics_histogram_observe(m, METRICS_API_CALL_DURATION, 0.012, "task.edit", NULL), 0);
    assert_int_equal(metrics_histogram_observe(m, METRICS_API_CALL_DURATION, 31, "task.edit", NULL),
                     0);
    assert_int_equal(metrics_histogram_observe(m, METRICS_FORWARD_LATENCY, 0.7, NULL), 0);
    assert_int_equal(metrics_histogram_observe(m, METRICS_FORWARD_LATENCY, 120, NULL), 0);
}

static void scrape_is_valid_for_promtool(void **state)
{
    struct fixture *fx = *state;
    char report[8192];
    struct reply r;

    fill(fx->m);
    fetch(fx->h, "GET", "/metrics", &r);
    assert_int_equal(r.code, 200);
    assert_string_equal(r.ctype, "text/plain; version=0.0.4; charset=utf-8");
    assert_int_equal(fx->renders, 1);

    /* The body is the registry's rendering, byte for byte. */
    struct buf want;
    buf_init(&want, METRICS_HTTP_MAX_BODY);
    assert_int_equal(metrics_render(fx->m, &want), 0);
    assert_int_equal(r.body.len, want.len);
    assert_memory_equal(r.body.data, want.data, want.len);
    buf_release(&want);
    assert_non_null(strstr(buf_cstr(&r.body),
                           "remotetask_api_calls_total{func=\"odd \\\"func\\\"\\\\\\nname ü\","
                           "outcome=\"reject\"} 1\n"));

    int rc = promtool_check(r.body.data, r.body.len, report, sizeof(report));
    if (rc != 0 || report[0])
        fail_msg("promtool check metrics exited %d:\n%s\nbody:\n%s", rc, report, buf_cstr(&r.body));

    /* The same promtool does find problems: a counter without _total and
     * a broken line. */
    static const char bad_lint[] = "# HELP rt_calls Calls.\n# TYPE rt_calls counter\nrt_calls 1\n";
    assert_int_not_equal(promtool_check(bad_lint, strlen(bad_lint), report, sizeof(report)), 0);
    assert_non_null(strstr(report, "_total"));
    static const char bad_syntax[] = "rt_x{le=\"1} 1\n";
    assert_int_not_equal(promtool_check(bad_syntax, strlen(bad_syntax), report, sizeof(report)), 0);
    reply_release(&r);
}

static void every_scrape_renders_afresh(void **state)
{
    struct fixture *fx = *state;
    struct reply r;

    fetch(fx->h, "GET", "/metrics", &r);
    assert_int_equal(r.code, 200);
    assert_non_null(strstr(buf_cstr(&r.body), "\nremotetask_links 0\n"));
    reply_release(&r);

    assert_int_equal(metrics_gauge_set(fx->m, METRICS_LINKS, 17, NULL), 0);
    fetch(fx->h, "GET", "/metrics", &r);
    assert_int_equal(r.code, 200);
    assert_non_null(strstr(buf_cstr(&r.body), "\nremotetask_links 17\n"));
    assert_int_equal(fx->renders, 2);
    reply_release(&r);
}

static void other_paths_and_methods(void **state)
{
    struct fixture *fx = *state;
    struct reply r;

    fetch(fx->h, "GET", "/", &r);
    assert_int_equal(r.code, 404);
    reply_release(&r);
    fetch(fx->h, "GET", "/metrics/extra", &r);
    assert_int_equal(r.code, 404);
    reply_release(&r);
    fetch(fx->h, "GET", "/metric", &r);
    assert_int_equal(r.code, 404);
    reply_release(&r);

    fetch(fx->h, "POST", "/metrics", &r);
    assert_int_equal(r.code, 405);
    assert_non_null(strstr(buf_cstr(&r.headers), "Allow: GET, HEAD\r\n"));
    reply_release(&r);
    assert_int_equal(fx->renders, 0);

    fetch(fx->h, "HEAD", "/metrics", &r);
    assert_int_equal(r.code, 200);
    assert_int_equal(r.body.len, 0);
    assert_string_equal(r.ctype, "text/plain; version=0.0.4; charset=utf-8");
    reply_release(&r);
}

static void failed_render_is_500(void **state)
{
    struct fixture *fx = *state;
    struct reply r;

    fx->fail_render = 1;
    fetch(fx->h, "GET", "/metrics", &r);
    assert_int_equal(r.code, 500);
    assert_null(strstr(buf_cstr(&r.body), "remotetask_"));
    reply_release(&r);

    /* The server goes on serving. */
    fx->fail_render = 0;
    fetch(fx->h, "GET", "/metrics", &r);
    assert_int_equal(r.code, 200);
    reply_release(&r);
    assert_int_equal(fx->renders, 2);
}

/* A TCP connection to 127.0.0.1:port from the loopback address from (all
 * of 127.0.0.0/8 is this host: a second address is a second "peer" for
 * the per-address limit). */
static int connect_from(const char *from, int port)
{
    struct sockaddr_in sa, src;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    memset(&src, 0, sizeof(src));
    src.sin_family = AF_INET;
    assert_int_equal(inet_pton(AF_INET, from, &src.sin_addr), 1);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&src, sizeof(src)), 0);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    return fd;
}

static int connect_port(int port)
{
    return connect_from("127.0.0.1", port);
}

/* Drives the server until fd is readable or closed; fails after the
 * deadline. Returns what recv() gave (0 = closed by the server). */
static ssize_t wait_readable(struct metrics_http *h, int fd, char *data, size_t len)
{
    int64_t deadline = now_ms() + DEADLINE_MS;
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        assert_true(poll(&p, 1, 0) >= 0);
        if (p.revents) {
            ssize_t n = recv(fd, data, len, 0);
            return n < 0 && errno == ECONNRESET ? 0 : n;
        }
        if (now_ms() > deadline)
            fail_msg("the metrics endpoint did not answer within %d ms", DEADLINE_MS);
        drive(h, NULL, 50);
    }
}

/* Drives the server for a few turns without waiting for anything in
 * particular, then says whether fd has data or was closed. A bounded look
 * for something that must NOT happen: it can miss a late answer (a false
 * pass), never invent one. */
static int answered_after_a_while(struct metrics_http *h, int fd)
{
    for (int i = 0; i < 20; i++)
        drive(h, NULL, 10);
    struct pollfd p = {.fd = fd, .events = POLLIN};
    assert_true(poll(&p, 1, 0) >= 0);
    return p.revents != 0;
}

/* Connection i of a full house: METRICS_HTTP_MAX_PER_IP from each of
 * 127.0.0.1, 127.0.0.2, ... */
static const char *house_addr(size_t i)
{
    static const char *const addrs[] = {"127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"};
    size_t k = i / METRICS_HTTP_MAX_PER_IP;
    assert_true(k < sizeof(addrs) / sizeof(addrs[0]));
    return addrs[k];
}

/* Drives the server until it holds connections (its timeout becomes a
 * deadline once it holds any), then a few turns more so that it takes
 * every one waiting. */
static void wait_held(struct fixture *fx)
{
    int64_t deadline = now_ms() + DEADLINE_MS;
    while (metrics_http_timeout_ms(fx->h) < 0) {
        if (now_ms() > deadline)
            fail_msg("the metrics endpoint took no connection within %d ms", DEADLINE_MS);
        drive(fx->h, NULL, 50);
    }
    for (int i = 0; i < 20; i++)
        drive(fx->h, NULL, 5);
}

static void connections_are_capped(void **state)
{
    struct fixture *fx = *state;
    int port = metrics_http_port(fx->h);
    int fds[METRICS_HTTP_MAX_CONNECTIONS];
    char data[4096];
    static const char req[] = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

    /* No connection, no deadline. */
    assert_int_equal(metrics_http_timeout_ms(fx->h), -1);

    /* The server takes the first connections up to its limit, at most
     * METRICS_HTTP_MAX_PER_IP from one address; it takes them from the
     * kernel's accept queue in order. Every one of them sends half a
     * request, so that the server holds it. */
    for (size_t i = 0; i < METRICS_HTTP_MAX_CONNECTIONS; i++) {
        fds[i] = connect_from(house_addr(i), port);
        assert_int_equal(send(fds[i], "GET /metrics HTTP/1.1\r\n", 23, MSG_NOSIGNAL), 23);
    }
    wait_held(fx);
    /* The held connections have their idle timeout as the deadline. */
    int t = metrics_http_timeout_ms(fx->h);
    assert_true(t >= 0 && t <= METRICS_HTTP_TIMEOUT_S * 1000);

    /* One more, from an address that has none yet, is left waiting (in
     * the kernel's queue or closed at once, depending on the
     * libmicrohttpd version): never served meanwhile. */
    int extra = connect_from(house_addr(METRICS_HTTP_MAX_CONNECTIONS), port);
    assert_int_equal(send(extra, req, strlen(req), MSG_NOSIGNAL), (ssize_t)strlen(req));
    int answered = answered_after_a_while(fx->h, extra);
    if (answered) {
        ssize_t n = recv(extra, data, sizeof(data) - 1, 0);
        assert_true(n <= 0); /* closed, not served */
    }

    /* A held connection is served in full. */
    assert_int_equal(send(fds[0], req + 23, strlen(req) - 23, MSG_NOSIGNAL),
                     (ssize_t)(strlen(req) - 23));
    ssize_t n = wait_readable(fx->h, fds[0], data, sizeof(data) - 1);
    assert_true(n > 0);
    data[n] = '\0';
    assert_non_null(strstr(data, "HTTP/1.1 200"));
    close(fds[0]);

    /* With room again, a waiting connection is served now. */
    if (!answered) {
        n = wait_readable(fx->h, extra, data, sizeof(data) - 1);
        assert_true(n > 0);
        data[n] = '\0';
        assert_non_null(strstr(data, "HTTP/1.1 200"));
    }
    close(extra);
    for (size_t i = 1; i < METRICS_HTTP_MAX_CONNECTIONS; i++)
        close(fds[i]);
    struct reply r;
    fetch(fx->h, "GET", "/metrics", &r);
    assert_int_equal(r.code, 200);
    reply_release(&r);
}

/* One address holds at most METRICS_HTTP_MAX_PER_IP connections: one more
 * from it is closed at once, while another address is served. */
static void one_address_cannot_take_every_slot(void **state)
{
    struct fixture *fx = *state;
    int port = metrics_http_port(fx->h);
    int fds[METRICS_HTTP_MAX_PER_IP];
    char data[4096];
    static const char req[] = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

    for (size_t i = 0; i < METRICS_HTTP_MAX_PER_IP; i++) {
        fds[i] = connect_from("127.0.0.2", port);
        assert_int_equal(send(fds[i], "GET /metrics HTTP/1.1\r\n", 23, MSG_NOSIGNAL), 23);
    }
    wait_held(fx);
    int more = connect_from("127.0.0.2", port);
    send(more, req, strlen(req), MSG_NOSIGNAL);
    ssize_t n = wait_readable(fx->h, more, data, sizeof(data) - 1);
    assert_true(n <= 0); /* closed without an answer */
    close(more);

    struct reply r;
    fetch(fx->h, "GET", "/metrics", &r); /* from 127.0.0.1 */
    assert_int_equal(r.code, 200);
    reply_release(&r);
    for (size_t i = 0; i < METRICS_HTTP_MAX_PER_IP; i++)
        close(fds[i]);
}

/* ---- the worst requests ---- */

static size_t count_fds(void)
{
    size_t n = 0;
    DIR *d = opendir("/proc/self/fd");
    assert_non_null(d);
    while (readdir(d))
        n++;
    closedir(d);
    return n;
}

/* Sends data on a new connection (as much as the server takes: it may
 * close first), then reads until the server closes; returns the first
 * bytes of what came back (malloc'ed, NUL-terminated) and in *answers how
 * many status lines it held. */
static char *raw_exchange(struct fixture *fx, const void *data, size_t len, int *answers)
{
    int fd = connect_port(metrics_http_port(fx->h));
    assert_int_equal(fcntl(fd, F_SETFL, O_NONBLOCK), 0);
    struct buf in;
    buf_init(&in, 8 * 1024 * 1024);
    size_t off = 0;
    int writing = 1;
    int64_t deadline = now_ms() + DEADLINE_MS;
    for (;;) {
        if (now_ms() > deadline)
            fail_msg("the metrics endpoint did not close within %d ms (%zu of %zu bytes sent)",
                     DEADLINE_MS, off, len);
        while (writing && off < len) {
            ssize_t n = send(fd, (const char *)data + off, len - off, MSG_NOSIGNAL);
            if (n > 0) {
                off += (size_t)n;
                continue;
            }
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                break;
            writing = 0;
        }
        char chunk[16384];
        ssize_t n = recv(fd, chunk, sizeof(chunk), 0);
        if (n > 0) {
            assert_int_equal(buf_append(&in, chunk, (size_t)n), 0);
            continue;
        }
        if (n == 0 || (n < 0 && errno == ECONNRESET))
            break;
        assert_true(errno == EAGAIN || errno == EWOULDBLOCK);
        drive(fx->h, NULL, 10);
    }
    close(fd);
    int count = 0;
    for (const char *p = buf_cstr(&in); (p = strstr(p, "HTTP/1.1 ")) != NULL; p += 9)
        count++;
    *answers = count;
    return buf_steal(&in);
}

/* The answer to data starts with want ("" = the connection is closed
 * without an answer). */
static void expect_answer(struct fixture *fx, const void *data, size_t len, const char *want)
{
    int answers = 0;
    char *got = raw_exchange(fx, data, len, &answers);
    if (*want ? strncmp(got, want, strlen(want)) != 0 : *got != '\0')
        fail_msg("wanted \"%s\", got \"%.100s\"", want, got);
    free(got);
}

static void worst_requests(void **state)
{
    struct fixture *fx = *state;
    size_t fds_before = count_fds();
    int answers = 0;

    /* Headers past the connection's memory limit: 431, however they
     * come (one huge header, or thousands of small ones). */
    size_t big_len = 4 * METRICS_HTTP_MEMORY_LIMIT;
    char *big = malloc(big_len + 256);
    assert_non_null(big);
    int h = snprintf(big, 256, "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ");
    memset(big + h, 'a', big_len);
    memcpy(big + h + big_len, "\r\n\r\n", 4);
    expect_answer(fx, big, (size_t)h + big_len + 4, "HTTP/1.1 431");
    size_t off = (size_t)snprintf(big, 256, "GET /metrics HTTP/1.1\r\nHost: x\r\n");
    while (off + 16 < big_len) {
        memcpy(big + off, "X-A: b\r\n", 8);
        off += 8;
    }
    memcpy(big + off, "\r\n", 2);
    expect_answer(fx, big, off + 2, "HTTP/1.1 431");
    /* A request line past it: 414. */
    memcpy(big, "GET /", 5);
    memset(big + 5, 'a', big_len);
    memcpy(big + 5 + big_len, " HTTP/1.1\r\n\r\n", 13);
    expect_answer(fx, big, 5 + big_len + 13, "HTTP/1.1 414");
    free(big);

    /* A body of 100 MB announced, 2 MB of it sent: the answer goes out on
     * the headers and the connection is closed; the body is not read. */
    size_t body_len = 2 * 1024 * 1024;
    char *post = malloc(body_len + 256);
    assert_non_null(post);
    h = snprintf(post, 256, "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n",
                 100 * 1024 * 1024);
    memset(post + h, 'b', body_len);
    expect_answer(fx, post, (size_t)h + body_len, "HTTP/1.1 405");
    h = snprintf(post, 256, "GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n",
                 100 * 1024 * 1024);
    memset(post + h, 'b', body_len);
    char *got = raw_exchange(fx, post, (size_t)h + body_len, &answers);
    assert_int_equal(answers, 1);
    free(got);
    free(post);

    /* Bad request lines, binary, other methods and paths. */
    static const char garbage[] = "GARBAGE\r\n\r\n";
    expect_answer(fx, garbage, sizeof(garbage) - 1, "");
    static const char http09[] = "GET /metrics\r\n\r\n";
    expect_answer(fx, http09, sizeof(http09) - 1, "HTTP/1.1 400");
    static const char binary[] = "\x00\x01\xff\xfe\r\n\x80\x81\r\n\r\n";
    got = raw_exchange(fx, binary, sizeof(binary) - 1, &answers);
    assert_true(answers == 0 || strncmp(got, "HTTP/1.1 400", 12) == 0);
    free(got);
    static const char del[] = "DELETE /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    expect_answer(fx, del, sizeof(del) - 1, "HTTP/1.1 405");
    static const char up[] =
        "GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    expect_answer(fx, up, sizeof(up) - 1, "HTTP/1.1 404");
    static const char chunked[] =
        "POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        "ffffffffffffffff\r\nxxxx";
    expect_answer(fx, chunked, sizeof(chunked) - 1, "HTTP/1.1 404");

    /* Pipelined requests: libmicrohttpd 0.9.75 answers the first and
     * closes the connection ("Connection: close"), dropping the rest; a
     * version that serves pipelines answers each in order. Either way one
     * render per answered scrape, and the connection ends. */
    struct buf pipe;
    buf_init(&pipe, 64 * 1024);
    for (int i = 0; i < 20; i++)
        assert_int_equal(buf_append_str(&pipe, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), 0);
    assert_int_equal(
        buf_append_str(&pipe, "GET /nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"), 0);
    int renders = fx->renders;
    got = raw_exchange(fx, pipe.data, pipe.len, &answers);
    assert_true(answers >= 1 && answers <= 21);
    assert_int_equal(strncmp(got, "HTTP/1.1 200", 12), 0);
    assert_int_equal(fx->renders, renders + (answers < 20 ? answers : 20));
    assert_true(answers < 21 || strstr(got, "HTTP/1.1 404"));
    free(got);
    buf_release(&pipe);

    /* A reset in the middle of a request. */
    int fd = connect_port(metrics_http_port(fx->h));
    assert_int_equal(send(fd, "GET /metrics HTTP/1.1\r\nHo", 26, MSG_NOSIGNAL), 26);
    for (int i = 0; i < 10; i++)
        drive(fx->h, NULL, 5);
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)), 0);
    close(fd);

    /* Afterwards: every connection closed, no descriptor more than before,
     * and a scrape is served. */
    int64_t deadline = now_ms() + DEADLINE_MS;
    while (metrics_http_timeout_ms(fx->h) >= 0 || count_fds() != fds_before) {
        if (now_ms() > deadline)
            fail_msg("the endpoint still holds connections (%zu fds, %zu before)", count_fds(),
                     fds_before);
        drive(fx->h, NULL, 50);
    }
    struct reply r;
    fetch(fx->h, "GET", "/metrics", &r);
    assert_int_equal(r.code, 200);
    reply_release(&r);
}

/* Peers that end the stream in the middle of a request, before the server
 * takes their connections: libmicrohttpd alone holds each until its idle
 * timeout; the endpoint sees the end and closes them before that could
 * happen, so that a flood of them cannot keep the slots taken. */
static void hang_up_mid_request_frees_the_slot(void **state)
{
    struct fixture *fx = *state;
    int port = metrics_http_port(fx->h);
    enum { N = 4 };
    int fds[N];
    char data[64];

    /* All sent and ended before the server runs at all. */
    for (int i = 0; i < N; i++) {
        fds[i] = connect_port(port);
        assert_int_equal(send(fds[i], "GET /metrics HTTP/1.1\r\nHost", 27, MSG_NOSIGNAL), 27);
        assert_int_equal(shutdown(fds[i], SHUT_WR), 0);
    }
    int64_t start = now_ms();
    for (int i = 0; i < N; i++) {
        ssize_t n = wait_readable(fx->h, fds[i], data, sizeof(data));
        assert_true(n <= 0); /* closed, no answer */
        close(fds[i]);
    }
    int64_t took = now_ms() - start;
    if (took >= METRICS_HTTP_TIMEOUT_S * 1000)
        fail_msg("the hung-up connections were closed after %lld ms: by the idle timeout (%d s), "
                 "not because their peers had ended them",
                 (long long)took, METRICS_HTTP_TIMEOUT_S);

    /* A peer that ends its side after a whole request still gets the
     * answer. */
    int fd = connect_port(port);
    static const char req[] = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_int_equal(send(fd, req, sizeof(req) - 1, MSG_NOSIGNAL), (ssize_t)(sizeof(req) - 1));
    assert_int_equal(shutdown(fd, SHUT_WR), 0);
    ssize_t n = wait_readable(fx->h, fd, data, sizeof(data) - 1);
    assert_true(n > 0);
    data[n] = '\0';
    assert_non_null(strstr(data, "HTTP/1.1 200"));
    close(fd);
}

/* A peer that sends a byte now and then is never idle, so the idle
 * timeout alone would let it hold its slot for ever; the request deadline
 * closes it. */
static void slowloris_is_cut_at_the_request_deadline(void **state)
{
    struct fixture *fx = *state;
    int fd = connect_port(metrics_http_port(fx->h));
    assert_int_equal(fcntl(fd, F_SETFL, O_NONBLOCK), 0);
    static const char req[] = "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ";
    assert_int_equal(send(fd, req, sizeof(req) - 1, MSG_NOSIGNAL), (ssize_t)(sizeof(req) - 1));

    /* One byte every 200 ms, well inside the idle timeout, until the
     * server closes the connection. */
    int64_t start = now_ms(), next = start;
    int64_t deadline =
        start + (METRICS_HTTP_REQUEST_S + METRICS_HTTP_TIMEOUT_S) * 1000 + DEADLINE_MS;
    size_t sent = 0;
    for (;;) {
        if (now_ms() > deadline)
            fail_msg("a connection trickling one byte every 200 ms was still open after %lld ms",
                     (long long)(now_ms() - start));
        if (now_ms() >= next) {
            if (send(fd, "a", 1, MSG_NOSIGNAL) != 1)
                break; /* reset: closed */
            sent++;
            next = now_ms() + 200;
        }
        char c;
        ssize_t n = recv(fd, &c, 1, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK))
            break;
        assert_true(n < 0); /* no answer to half a request */
        drive(fx->h, NULL, 20);
    }
    close(fd);
    /* It was kept past the idle timeout: the idle timeout did not close it
     * (a byte came every 200 ms), the request deadline did. */
    assert_true(sent > (size_t)METRICS_HTTP_TIMEOUT_S * 5);
    struct reply r;
    fetch(fx->h, "GET", "/metrics", &r);
    assert_int_equal(r.code, 200);
    reply_release(&r);
}

static void addresses(void **state)
{
    struct fixture *fx = *state;
    char err[256];

    assert_null(metrics_http_new("metrics.example.com", 0, render_cb, fx, err, sizeof(err)));
    assert_non_null(strstr(err, "metrics.example.com"));
    assert_null(metrics_http_new("127.0.0.1", 70000, render_cb, fx, err, sizeof(err)));
    assert_null(metrics_http_new("127.0.0.1", 0, NULL, fx, err, sizeof(err)));

    /* The port of the fixture's server is taken. */
    int port = metrics_http_port(fx->h);
    char want[64];
    snprintf(want, sizeof(want), "127.0.0.1:%d", port);
    assert_null(metrics_http_new("127.0.0.1", port, render_cb, fx, err, sizeof(err)));
    assert_non_null(strstr(err, want));

    /* localhost and IPv6 literals. */
    struct metrics_http *h = metrics_http_new("localhost", 0, render_cb, fx, err, sizeof(err));
    if (!h)
        fail_msg("%s", err);
    struct reply r;
    fetch_at(h, "127.0.0.1", "GET", "/metrics", &r);
    assert_int_equal(r.code, 200);
    reply_release(&r);
    metrics_http_free(h);

    h = metrics_http_new("::1", 0, render_cb, fx, err, sizeof(err));
    if (!h)
        fail_msg("%s", err);
    fetch_at(h, "[::1]", "GET", "/metrics", &r);
    assert_int_equal(r.code, 200);
    reply_release(&r);
    metrics_http_free(h);
    metrics_http_free(NULL);
}

/* ---- the billmgr observer across a re-login ---- */

/* A BILLmanager stand-in in session mode whose first session expires at
 * once: the first call is answered with an auth error, so billmgr logs in
 * again and repeats the call. It runs in a libmicrohttpd thread of its
 * own, because billmgr_call_sync polls privately. */
struct fake_bm {
    int logins;
    int calls;
};

static enum MHD_Result fake_bm_access(void *cls, struct MHD_Connection *c, const char *url,
                                      const char *method, const char *version,
                                      const char *upload_data, size_t *upload_data_size,
                                      void **con_cls)
{
    struct fake_bm *f = cls;
    struct buf *body = *con_cls;
    (void)url;
    (void)method;
    (void)version;
    if (!body) {
        body = calloc(1, sizeof(*body));
        if (!body)
            return MHD_NO;
        buf_init(body, 64 * 1024);
        *con_cls = body;
        return MHD_YES;
    }
    if (*upload_data_size) {
        if (buf_append(body, upload_data, *upload_data_size) < 0)
            return MHD_NO;
        *upload_data_size = 0;
        return MHD_YES;
    }
    const char *answer;
    if (strstr(buf_cstr(body), "func=auth")) {
        f->logins++;
        answer = f->logins == 1 ? "{\"doc\":{\"auth\":{\"$id\":\"s1\"}}}"
                                : "{\"doc\":{\"auth\":{\"$id\":\"s2\"}}}";
    } else {
        f->calls++;
        answer = strstr(buf_cstr(body), "auth=s1")
                     ? "{\"doc\":{\"error\":{\"$type\":\"auth\",\"msg\":{\"$\":\"expired\"}}}}"
                     : "{\"doc\":{\"elid\":{\"$\":\"5\"}}}";
    }
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(answer), (void *)answer, MHD_RESPMEM_PERSISTENT);
    if (!r)
        return MHD_NO;
    enum MHD_Result ret = MHD_queue_response(c, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    return ret;
}

static void fake_bm_done(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)c;
    (void)toe;
    struct buf *body = *con_cls;
    if (body) {
        buf_release(body);
        free(body);
        *con_cls = NULL;
    }
}

struct seen_calls {
    struct metrics *m;
    int n;
};

static void count_call(void *arg, const char *func, rt_status status, const char *err_type,
                       double seconds)
{
    struct seen_calls *s = arg;
    (void)err_type;
    s->n++;
    assert_int_equal(
        metrics_counter_add(s->m, METRICS_API_CALLS, 1, func, rt_status_name(status), NULL), 0);
    assert_int_equal(
        metrics_histogram_observe(s->m, METRICS_API_CALL_DURATION, seconds, func, NULL), 0);
}

static void api_call_observed_once_across_relogin(void **state)
{
    struct fixture *fx = *state;
    struct fake_bm f = {0};
    struct seen_calls seen = {.m = fx->m};
    char url[128], err[256];

    struct sockaddr_in sa;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct MHD_Daemon *d =
        MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO, 0, NULL, NULL,
                         fake_bm_access, &f, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
                         MHD_OPTION_NOTIFY_COMPLETED, fake_bm_done, NULL, MHD_OPTION_END);
    assert_non_null(d);
    const union MHD_DaemonInfo *pi = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    assert_non_null(pi);
    snprintf(url, sizeof(url), "http://127.0.0.1:%u/billmgr", (unsigned)pi->port);

    struct billmgr_opts o;
    memset(&o, 0, sizeof(o));
    o.url = url;
    o.login = "remotetask";
    o.password = "secret";
    o.auth_session = 1;
    o.timeout_ms = DEADLINE_MS;
    o.on_call = count_call;
    o.on_call_arg = &seen;
    struct billmgr *bm = billmgr_new(&o, err, sizeof(err));
    if (!bm)
        fail_msg("%s", err);
    struct billmgr_error e;
    json_t *doc = NULL;
    rt_status st = billmgr_call_sync(bm, "task.edit", NULL, &doc, &e);
    if (st != RT_OK)
        fail_msg("the call failed: %s %s", e.type, e.message);
    json_decref(doc);
    billmgr_free(bm);
    MHD_stop_daemon(d);

    /* Two logins and two transfers of the call, one observation. */
    assert_int_equal(f.logins, 2);
    assert_int_equal(f.calls, 2);
    assert_int_equal(seen.n, 1);
    struct reply r;
    fetch(fx->h, "GET", "/metrics", &r);
    assert_int_equal(r.code, 200);
    assert_non_null(strstr(buf_cstr(&r.body),
                           "remotetask_api_calls_total{func=\"task.edit\",outcome=\"ok\"} 1\n"));
    assert_null(strstr(buf_cstr(&r.body), "func=\"auth\""));
    assert_non_null(strstr(buf_cstr(&r.body),
                           "remotetask_api_call_duration_seconds_count{func=\"task.edit\"} 1\n"));
    reply_release(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(scrape_is_valid_for_promtool, setup, teardown),
        cmocka_unit_test_setup_teardown(every_scrape_renders_afresh, setup, teardown),
        cmocka_unit_test_setup_teardown(other_paths_and_methods, setup, teardown),
        cmocka_unit_test_setup_teardown(failed_render_is_500, setup, teardown),
        cmocka_unit_test_setup_teardown(connections_are_capped, setup, teardown),
        cmocka_unit_test_setup_teardown(one_address_cannot_take_every_slot, setup, teardown),
        cmocka_unit_test_setup_teardown(worst_requests, setup, teardown),
        cmocka_unit_test_setup_teardown(hang_up_mid_request_frees_the_slot, setup, teardown),
        cmocka_unit_test_setup_teardown(slowloris_is_cut_at_the_request_deadline, setup, teardown),
        cmocka_unit_test_setup_teardown(addresses, setup, teardown),
        cmocka_unit_test_setup_teardown(api_call_observed_once_across_relogin, setup, teardown),
    };
    curl_global_init(CURL_GLOBAL_DEFAULT);
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
