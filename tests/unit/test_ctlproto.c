/* Unit tests of common/ctlproto: line framing, caps, and requests over a
 * real Unix socket in a temporary directory (the server is a forked child
 * or a socket that never answers). */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "ctlproto.h"

struct fixture {
    char dir[64];
    char path[128];
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    if (!f)
        return -1;
    snprintf(f->dir, sizeof(f->dir), "/tmp/ctlproto.XXXXXX");
    if (!mkdtemp(f->dir)) {
        free(f);
        return -1;
    }
    snprintf(f->path, sizeof(f->path), "%s/ctl.sock", f->dir);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    unlink(f->path);
    rmdir(f->dir);
    free(f);
    return 0;
}

/* A listening socket at path. */
static int listen_at(const char *path)
{
    struct sockaddr_un addr;
    char err[CTLPROTO_ERR_MAX];
    assert_int_equal(ctlproto_addr(path, &addr, err, sizeof(err)), 0);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&addr, sizeof(addr)), 0);
    assert_int_equal(listen(fd, 4), 0);
    return fd;
}

enum serve_mode {
    SERVE_ECHO,    /* answer {"ok":true,"got":<the request>} */
    SERVE_RAW,     /* answer the given bytes as they are */
    SERVE_HANG_UP, /* read the request, close without an answer */
};

/* Forks a child that serves one connection on lfd, then exits. The child
 * leaves with _exit(), so that it never runs the parent's cmocka or
 * sanitizer exit handlers. */
static pid_t serve_one(int lfd, enum serve_mode mode, const char *raw, size_t raw_len)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid > 0)
        return pid;
    signal(SIGPIPE, SIG_IGN);
    int fd = accept(lfd, NULL, NULL);
    if (fd < 0)
        _exit(10);
    char req[4096];
    size_t len = 0;
    while (len < sizeof(req) - 1) {
        ssize_t n = read(fd, req + len, sizeof(req) - 1 - len);
        if (n <= 0)
            _exit(11);
        len += (size_t)n;
        if (memchr(req, '\n', len))
            break;
    }
    req[len] = '\0';
    if (mode == SERVE_ECHO) {
        char *nl = strchr(req, '\n');
        if (nl)
            *nl = '\0';
        char out[4200];
        int n = snprintf(out, sizeof(out), "{\"ok\":true,\"got\":%s}\n", req);
        if (write(fd, out, (size_t)n) != n)
            _exit(12);
    } else if (mode == SERVE_RAW) {
        size_t off = 0;
        while (off < raw_len) {
            ssize_t n = write(fd, raw + off, raw_len - off);
            if (n <= 0)
                break; /* the client may hang up on an over-long line */
            off += (size_t)n;
        }
    }
    close(fd);
    _exit(0);
}

static void wait_child(pid_t pid)
{
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

/* ---- framing ---- */

static void scan_finds_lines_and_caps(void **state)
{
    size_t line_len = 12345;
    assert_int_equal(ctlproto_scan("", 0, &line_len), CTLPROTO_PARTIAL);
    assert_int_equal(ctlproto_scan("{\"cmd\"", 6, &line_len), CTLPROTO_PARTIAL);
    assert_int_equal(line_len, 12345); /* untouched unless a line is found */
    assert_int_equal(ctlproto_scan("{}\nrest", 7, &line_len), CTLPROTO_LINE);
    assert_int_equal(line_len, 2);
    assert_int_equal(ctlproto_scan("\n", 1, &line_len), CTLPROTO_LINE);
    assert_int_equal(line_len, 0);

    /* The longest line allowed: cap - 1 bytes and its newline. */
    char *big = malloc(CTLPROTO_LINE_MAX + 10);
    assert_non_null(big);
    memset(big, 'x', CTLPROTO_LINE_MAX + 10);
    big[CTLPROTO_LINE_MAX - 1] = '\n';
    assert_int_equal(ctlproto_scan(big, CTLPROTO_LINE_MAX + 10, &line_len), CTLPROTO_LINE);
    assert_int_equal(line_len, CTLPROTO_LINE_MAX - 1);
    /* One byte more and it is too long, even if a newline follows. */
    big[CTLPROTO_LINE_MAX - 1] = 'x';
    big[CTLPROTO_LINE_MAX] = '\n';
    assert_int_equal(ctlproto_scan(big, CTLPROTO_LINE_MAX + 10, &line_len), CTLPROTO_TOO_LONG);
    assert_int_equal(ctlproto_scan(big, CTLPROTO_LINE_MAX, &line_len), CTLPROTO_TOO_LONG);
    assert_int_equal(ctlproto_scan(big, CTLPROTO_LINE_MAX - 1, &line_len), CTLPROTO_PARTIAL);
    free(big);
}

static void decode_takes_objects_only(void **state)
{
    char err[CTLPROTO_ERR_MAX];
    json_t *v = NULL;
    const char *ok = "{\"cmd\":\"wake\",\"reconcile\":true}";

    assert_int_equal(ctlproto_decode(ok, strlen(ok), &v, err, sizeof(err)), RT_OK);
    assert_string_equal(json_string_value(json_object_get(v, "cmd")), "wake");
    assert_true(json_is_true(json_object_get(v, "reconcile")));
    json_decref(v);

    const char *bad[] = {
        "[1,2]",                         /* not an object */
        "{\"cmd\":",                     /* truncated */
        "{\"cmd\":\"a\"} trailing",      /* more after the object */
        "{\"cmd\":\"a\",\"cmd\":\"b\"}", /* duplicate key */
        "{\"cmd\":\"a\\u0000b\"}",       /* NUL inside a string */
        "",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        v = (json_t *)1;
        err[0] = '\0';
        assert_int_equal(ctlproto_decode(bad[i], strlen(bad[i]), &v, err, sizeof(err)), RT_REJECT);
        assert_null(v);
        assert_true(err[0] != '\0');
    }
    /* A line within the bytes given is all that is read. */
    assert_int_equal(ctlproto_decode("{}garbage", 2, &v, err, sizeof(err)), RT_OK);
    json_decref(v);
}

static void encode_is_one_line_within_the_cap(void **state)
{
    char err[CTLPROTO_ERR_MAX];
    size_t len = 0;
    json_t *msg = json_pack("{s:s,s:s}", "cmd", "ping", "text", "two\nlines");
    char *line = ctlproto_encode(msg, &len, err, sizeof(err));
    assert_non_null(line);
    assert_int_equal(len, strlen(line));
    assert_int_equal(line[len - 1], '\n');
    /* The newline inside the value is escaped: the line has one newline. */
    assert_ptr_equal(strchr(line, '\n'), line + len - 1);

    json_t *back = NULL;
    size_t line_len = 0;
    assert_int_equal(ctlproto_scan(line, len, &line_len), CTLPROTO_LINE);
    assert_int_equal(ctlproto_decode(line, line_len, &back, err, sizeof(err)), RT_OK);
    assert_true(json_equal(msg, back));
    json_decref(back);
    free(line);
    json_decref(msg);

    /* A message that would pass the cap is refused with a reason. */
    char *text = malloc(CTLPROTO_LINE_MAX);
    assert_non_null(text);
    memset(text, 'a', CTLPROTO_LINE_MAX - 1);
    text[CTLPROTO_LINE_MAX - 1] = '\0';
    msg = json_pack("{s:s}", "t", text);
    free(text);
    err[0] = '\0';
    assert_null(ctlproto_encode(msg, &len, err, sizeof(err)));
    assert_non_null(strstr(err, "line cap"));
    json_decref(msg);
}

static void addr_refuses_long_and_empty_paths(void **state)
{
    struct sockaddr_un addr;
    char err[CTLPROTO_ERR_MAX], path[300];
    memset(path, 'p', sizeof(path) - 1);
    path[sizeof(path) - 1] = '\0';
    assert_int_equal(ctlproto_addr(path, &addr, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "longer than"));
    assert_int_equal(ctlproto_addr("", &addr, err, sizeof(err)), -1);
    assert_int_equal(ctlproto_addr("/run/x.sock", &addr, err, sizeof(err)), 0);
    assert_string_equal(addr.sun_path, "/run/x.sock");
}

/* ---- requests ---- */

static void request_round_trip(void **state)
{
    struct fixture *f = *state;
    char err[CTLPROTO_ERR_MAX];
    json_t *resp = NULL;
    int lfd = listen_at(f->path);
    pid_t pid = serve_one(lfd, SERVE_ECHO, NULL, 0);

    json_t *req = json_pack("{s:s,s:b}", "cmd", "wake", "reconcile", 1);
    assert_int_equal(ctlproto_request(f->path, req, &resp, 10000, err, sizeof(err)), RT_OK);
    assert_true(json_is_true(json_object_get(resp, "ok")));
    /* The server received exactly the request. */
    assert_true(json_equal(json_object_get(resp, "got"), req));
    json_decref(resp);
    json_decref(req);
    wait_child(pid);
    close(lfd);
}

static void request_without_daemon_is_retry(void **state)
{
    struct fixture *f = *state;
    char err[CTLPROTO_ERR_MAX];
    json_t *resp = (json_t *)1;
    json_t *req = json_pack("{s:s}", "cmd", "ping");

    /* No socket file at all. */
    assert_int_equal(ctlproto_request(f->path, req, &resp, 1000, err, sizeof(err)), RT_RETRY);
    assert_null(resp);
    assert_int_equal(strncmp(err, CTLPROTO_NOT_RUNNING, strlen(CTLPROTO_NOT_RUNNING)), 0);
    assert_non_null(strstr(err, "no control socket"));
    assert_non_null(strstr(err, f->path));

    /* A socket file left behind by a daemon that died: nothing listens. */
    int lfd = listen_at(f->path);
    close(lfd);
    assert_int_equal(ctlproto_request(f->path, req, &resp, 1000, err, sizeof(err)), RT_RETRY);
    assert_int_equal(strncmp(err, CTLPROTO_NOT_RUNNING, strlen(CTLPROTO_NOT_RUNNING)), 0);
    assert_non_null(strstr(err, "nothing listens"));
    json_decref(req);
}

static void request_to_silent_server_times_out(void **state)
{
    struct fixture *f = *state;
    char err[CTLPROTO_ERR_MAX];
    json_t *resp = (json_t *)1;
    /* The kernel completes the connection from the backlog, but nobody
     * ever accepts or answers. */
    int lfd = listen_at(f->path);
    json_t *req = json_pack("{s:s}", "cmd", "ping");
    assert_int_equal(ctlproto_request(f->path, req, &resp, 200, err, sizeof(err)), RT_RETRY);
    assert_null(resp);
    assert_non_null(strstr(err, "no answer"));
    assert_non_null(strstr(err, "200 ms"));
    json_decref(req);
    close(lfd);
}

static void request_hang_up_is_retry(void **state)
{
    struct fixture *f = *state;
    char err[CTLPROTO_ERR_MAX];
    json_t *resp = (json_t *)1;
    int lfd = listen_at(f->path);
    pid_t pid = serve_one(lfd, SERVE_HANG_UP, NULL, 0);
    json_t *req = json_pack("{s:s}", "cmd", "ping");
    assert_int_equal(ctlproto_request(f->path, req, &resp, 10000, err, sizeof(err)), RT_RETRY);
    assert_null(resp);
    assert_non_null(strstr(err, "without an answer"));
    json_decref(req);
    wait_child(pid);
    close(lfd);
}

static void request_bad_answers_are_rejected(void **state)
{
    struct fixture *f = *state;
    char err[CTLPROTO_ERR_MAX];
    json_t *resp = (json_t *)1;
    json_t *req = json_pack("{s:s}", "cmd", "ping");
    int lfd = listen_at(f->path);

    const char not_json[] = "this is not json\n";
    pid_t pid = serve_one(lfd, SERVE_RAW, not_json, sizeof(not_json) - 1);
    assert_int_equal(ctlproto_request(f->path, req, &resp, 10000, err, sizeof(err)), RT_REJECT);
    assert_null(resp);
    assert_non_null(strstr(err, "bad line"));
    wait_child(pid);

    /* An answer longer than the cap is refused, not buffered. */
    size_t big_len = CTLPROTO_LINE_MAX + 4096;
    char *big = malloc(big_len);
    assert_non_null(big);
    memset(big, ' ', big_len);
    big[big_len - 1] = '\n';
    pid = serve_one(lfd, SERVE_RAW, big, big_len);
    assert_int_equal(ctlproto_request(f->path, req, &resp, 10000, err, sizeof(err)), RT_REJECT);
    assert_null(resp);
    assert_non_null(strstr(err, "longer than"));
    wait_child(pid);
    free(big);

    json_decref(req);
    close(lfd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(scan_finds_lines_and_caps),
        cmocka_unit_test(decode_takes_objects_only),
        cmocka_unit_test(encode_is_one_line_within_the_cap),
        cmocka_unit_test(addr_refuses_long_and_empty_paths),
        cmocka_unit_test_setup_teardown(request_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(request_without_daemon_is_retry, setup, teardown),
        cmocka_unit_test_setup_teardown(request_to_silent_server_times_out, setup, teardown),
        cmocka_unit_test_setup_teardown(request_hang_up_is_retry, setup, teardown),
        cmocka_unit_test_setup_teardown(request_bad_answers_are_rejected, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
