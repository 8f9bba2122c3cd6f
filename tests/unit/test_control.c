/* Unit tests of bridge/control: the control socket server over real Unix
 * sockets in a temporary directory, driven the way the daemon drives it
 * (control_pollfds, poll, control_handle), with the clients in forked
 * children or on non-blocking sockets of the test.
 *
 * - who may connect: the socket file is 0660 and owned by the server's
 *   effective uid and gid; root and the server's own uid are served,
 *   every other uid is refused by the SO_PEERCRED check even when the
 *   file's mode lets it connect (members of the server's group too), is
 *   counted, and is logged once per uid. These tests need root (to run
 *   children as other uids); the suite runs as root, and a test that
 *   cannot setuid fails, it does not skip.
 * - the worst inputs: a 10 MB line, a line without a newline and a
 *   hang-up, invalid JSON, JSON that is not an object, an unknown command,
 *   wrong types, binary, nesting past the parser's depth, more connections
 *   than CONTROL_MAX_CLIENTS at once: each gets its error (or is dropped),
 *   and afterwards the server holds no client, no descriptor more than
 *   before, and answers a good ping.
 *
 * bridge/control.c is compiled into this program (below), so that the
 * tests can look at its slots: the unit tests link the common libraries
 * only, and the server is one file.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
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
#include <dirent.h>
#include <unistd.h>

#include <cmocka.h>

#include "../../bridge/control.c"

#define DEADLINE_MS 20000
/* Unprivileged ids for the children; 65534 is Debian's nobody/nogroup. */
#define UID_DAEMON 65534
#define GID_DAEMON 65534
#define UID_OTHER  65533
#define UID_OTHER2 65532

/* What a child reports through its exit status. */
enum child_exit {
    CHILD_SERVED = 0,     /* {"ok":true} */
    CHILD_REFUSED = 3,    /* {"ok":false,"error":"permission denied..."} */
    CHILD_NO_ANSWER = 4,  /* RT_RETRY: no answer, closed */
    CHILD_NO_CONNECT = 5, /* RT_REJECT: connect refused by the file's mode */
    CHILD_CANNOT_SETID = 6,
    CHILD_OTHER = 7,
};

struct fixture {
    char dir[256];
    char path[300];
    char log[300];
    struct control *c;
    int pings;
};

/* The server's log lines go to the fixture's file while it runs (inside
 * pump()), so that they can be counted; cmocka's own lines stay on the
 * test's stderr. */
static int log_fd = -1;

static void cmd_ping(void *arg, struct control_client *cl, json_t *req)
{
    struct fixture *f = arg;
    (void)req;
    f->pings++;
    control_reply(cl, json_pack("{s:b,s:b}", "ok", 1, "pong", 1));
}

static const struct control_command commands[] = {
    {"ping", cmd_ping},
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

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

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    const char *tmp = getenv("RT_TEST_TMP");
    snprintf(f->dir, sizeof(f->dir), "%s/control.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    assert_non_null(mkdtemp(f->dir));
    /* Other uids must reach the socket file: the directory is searchable
     * (the file's mode and the peer check are what is tested). */
    assert_int_equal(chmod(f->dir, 0711), 0);
    snprintf(f->path, sizeof(f->path), "%s/ctl.sock", f->dir);
    snprintf(f->log, sizeof(f->log), "%s/log", f->dir);
    log_fd = open(f->log, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0600);
    assert_true(log_fd >= 0);
    log_init("test_control", LOG_LEVEL_INFO, 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    control_free(f->c);
    close(log_fd);
    log_fd = -1;
    unlink(f->path);
    unlink(f->log);
    rmdir(f->dir);
    free(f);
    return 0;
}

static void start_server(struct fixture *f)
{
    char err[512];
    f->c = control_new(f->path, commands, 1, f, err, sizeof(err));
    if (!f->c)
        fail_msg("control_new: %s", err);
}

/* One turn of the daemon's loop, at most max_ms long. */
static void pump(struct control *c, int max_ms)
{
    struct pollfd fds[CONTROL_MAX_POLLFDS];
    size_t n = control_pollfds(c, fds, CONTROL_MAX_POLLFDS);
    int t = control_timeout_ms(c);
    if (t < 0 || t > max_ms)
        t = max_ms;
    assert_true(poll(fds, n, t) >= 0);
    fflush(stderr);
    int saved = dup(STDERR_FILENO);
    assert_true(saved >= 0);
    assert_int_equal(dup2(log_fd, STDERR_FILENO), STDERR_FILENO);
    control_handle(c, fds, n);
    fflush(stderr);
    dup2(saved, STDERR_FILENO);
    close(saved);
}

static size_t clients_held(const struct control *c)
{
    size_t n = 0;
    for (size_t i = 0; i < CONTROL_MAX_CLIENTS; i++)
        n += c->clients[i] != NULL;
    return n;
}

/* Lines of the captured log holding needle. */
static size_t log_count(struct fixture *f, const char *needle)
{
    FILE *fp = fopen(f->log, "r");
    assert_non_null(fp);
    char line[4096];
    size_t n = 0;
    while (fgets(line, sizeof(line), fp))
        n += strstr(line, needle) != NULL;
    fclose(fp);
    return n;
}

/* ---- children ---------------------------------------------------------- */

struct ids {
    uid_t uid;
    gid_t gid;
    gid_t extra; /* a supplementary group, 0 = none */
};

/* Becomes ids (unless they are root's), sends ping, and exits with what
 * happened. Runs in a child: never returns. */
static void child_ping(const char *path, const struct ids *as)
{
    if (as->uid != 0) {
        gid_t groups[1] = {as->extra};
        if (setgroups(as->extra ? 1 : 0, groups) < 0 || setgid(as->gid) < 0 ||
            setuid(as->uid) < 0 || getuid() != as->uid || geteuid() != as->uid)
            _exit(CHILD_CANNOT_SETID);
    }
    char err[CTLPROTO_ERR_MAX];
    json_t *resp = NULL;
    json_t *req = json_pack("{s:s}", "cmd", "ping");
    rt_status st = ctlproto_request(path, req, &resp, 10000, err, sizeof(err));
    if (st == RT_RETRY)
        _exit(CHILD_NO_ANSWER);
    if (st == RT_REJECT)
        _exit(strstr(err, "Permission denied") ? CHILD_NO_CONNECT : CHILD_OTHER);
    if (json_is_true(json_object_get(resp, "ok")))
        _exit(CHILD_SERVED);
    const char *e = json_string_value(json_object_get(resp, "error"));
    _exit(e && strstr(e, "permission denied") ? CHILD_REFUSED : CHILD_OTHER);
}

/* Forks a child that pings as ids while the server runs here; returns the
 * child's exit status. */
static int ping_as(struct fixture *f, uid_t uid, gid_t gid, gid_t extra)
{
    struct ids as = {.uid = uid, .gid = gid, .extra = extra};
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        child_ping(f->path, &as);
    int64_t deadline = now_ms() + DEADLINE_MS;
    int status = 0;
    for (;;) {
        pid_t w = waitpid(pid, &status, WNOHANG);
        assert_true(w >= 0);
        if (w == pid)
            break;
        if (now_ms() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            fail_msg("the child pinging as uid %u did not finish within %d ms", (unsigned)uid,
                     DEADLINE_MS);
        }
        pump(f->c, 20);
    }
    assert_true(WIFEXITED(status));
    return WEXITSTATUS(status);
}

static void need_root(void)
{
    if (geteuid() != 0)
        fail_msg("this test runs children as other uids and needs root (the suite runs as root)");
}

/* ---- who may connect ----------------------------------------------------- */

static void socket_is_the_daemons_and_only_root_and_it_are_served(void **state)
{
    struct fixture *f = *state;
    struct stat st;
    need_root();

    /* The server runs as an unprivileged user, as under systemd: its
     * effective ids make the file, and its uid is the one let in besides
     * root. The directory is that user's, as /run/remotetask is. */
    assert_int_equal(chown(f->dir, UID_DAEMON, GID_DAEMON), 0);
    assert_int_equal(setegid(GID_DAEMON), 0);
    assert_int_equal(seteuid(UID_DAEMON), 0);
    start_server(f);
    assert_int_equal(seteuid(0), 0);
    assert_int_equal(setegid(0), 0);

    assert_int_equal(lstat(f->path, &st), 0);
    assert_true(S_ISSOCK(st.st_mode));
    assert_int_equal(st.st_mode & 07777, 0660);
    assert_int_equal(st.st_uid, UID_DAEMON);
    assert_int_equal(st.st_gid, GID_DAEMON);

    /* Root and the daemon's user are served. */
    assert_int_equal(ping_as(f, 0, 0, 0), CHILD_SERVED);
    assert_int_equal(ping_as(f, UID_DAEMON, GID_DAEMON, 0), CHILD_SERVED);
    assert_int_equal(f->pings, 2);
    assert_int_equal(control_refused(f->c), 0);

    /* The file's mode is the first gate: another user cannot connect. */
    assert_int_equal(ping_as(f, UID_OTHER, UID_OTHER, 0), CHILD_NO_CONNECT);
    assert_int_equal(control_refused(f->c), 0);

    /* A member of the daemon's group gets through the mode, and is
     * refused by the peer check (the documented choice). */
    assert_int_equal(ping_as(f, UID_OTHER, UID_OTHER, GID_DAEMON), CHILD_REFUSED);
    assert_int_equal(control_refused(f->c), 1);

    /* With the mode opened to everyone, the peer check alone holds: the
     * other uid is refused again (counted, not logged twice), a third uid
     * is refused and logged, and nobody's request reached a command. */
    assert_int_equal(chmod(f->path, 0666), 0);
    assert_int_equal(ping_as(f, UID_OTHER, UID_OTHER, 0), CHILD_REFUSED);
    assert_int_equal(ping_as(f, UID_OTHER2, UID_OTHER2, 0), CHILD_REFUSED);
    assert_int_equal(control_refused(f->c), 3);
    assert_int_equal(f->pings, 2);
    assert_int_equal(clients_held(f->c), 0);
    char want[128];
    snprintf(want, sizeof(want), "control connection refused from uid %u (pid ", UID_OTHER);
    assert_int_equal(log_count(f, want), 1);
    snprintf(want, sizeof(want), "control connection refused from uid %u (pid ", UID_OTHER2);
    assert_int_equal(log_count(f, want), 1);
    assert_int_equal(log_count(f, "warning: control connection refused"), 2);

    /* Root is still served, and after all that the daemon's user too. */
    assert_int_equal(ping_as(f, 0, 0, 0), CHILD_SERVED);
    assert_int_equal(ping_as(f, UID_DAEMON, GID_DAEMON, 0), CHILD_SERVED);
}

/* A burst of refused connections takes no slot and cannot hold the loop:
 * each is closed at accept, all are counted, one line is logged. */
static void refused_burst_is_counted_and_logged_once(void **state)
{
    struct fixture *f = *state;
    enum { BURST = 200 };
    need_root();
    start_server(f);
    assert_int_equal(chmod(f->path, 0666), 0);
    size_t fds_before = count_fds();

    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (setgroups(0, NULL) < 0 || setgid(UID_OTHER) < 0 || setuid(UID_OTHER) < 0)
            _exit(CHILD_CANNOT_SETID);
        int refused = 0;
        for (int i = 0; i < BURST; i++) {
            char err[CTLPROTO_ERR_MAX];
            json_t *resp = NULL, *req = json_pack("{s:s}", "cmd", "ping");
            if (ctlproto_request(f->path, req, &resp, 10000, err, sizeof(err)) == RT_OK &&
                !json_is_true(json_object_get(resp, "ok")))
                refused++;
            json_decref(resp);
            json_decref(req);
        }
        _exit(refused == BURST ? 0 : CHILD_OTHER);
    }
    int64_t deadline = now_ms() + DEADLINE_MS;
    int status = 0;
    while (waitpid(pid, &status, WNOHANG) == 0) {
        if (now_ms() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            fail_msg("the burst did not end within %d ms", DEADLINE_MS);
        }
        pump(f->c, 20);
        /* A refused peer never holds a slot past the turn it came in. */
        assert_int_equal(clients_held(f->c), 0);
    }
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    assert_int_equal(control_refused(f->c), BURST);
    assert_int_equal(log_count(f, "control connection refused from uid"), 1);
    assert_int_equal(f->pings, 0);
    assert_int_equal(count_fds(), fds_before);
    assert_int_equal(ping_as(f, 0, 0, 0), CHILD_SERVED);
}

/* ---- the worst inputs ------------------------------------------------------ */

/* A non-blocking client socket connected to the server. */
static int client_connect(const char *path)
{
    struct sockaddr_un addr;
    char err[CTLPROTO_ERR_MAX];
    assert_int_equal(ctlproto_addr(path, &addr, err, sizeof(err)), 0);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    assert_int_equal(connect(fd, (struct sockaddr *)&addr, sizeof(addr)), 0);
    return fd;
}

/* Sends data (all of it, pumping the server while the socket is full) and
 * reads until the server closes; returns what came back (malloc'ed). The
 * peer may close before all was sent (an over-long request): sending then
 * stops. */
static char *exchange(struct fixture *f, const void *data, size_t len)
{
    int fd = client_connect(f->path);
    size_t off = 0;
    struct buf in;
    buf_init(&in, 1 << 20);
    int64_t deadline = now_ms() + DEADLINE_MS;
    int writing = 1;
    for (;;) {
        if (now_ms() > deadline)
            fail_msg("no end of the exchange within %d ms (%zu of %zu bytes sent)", DEADLINE_MS,
                     off, len);
        while (writing && off < len) {
            ssize_t n = send(fd, (const char *)data + off, len - off, MSG_NOSIGNAL);
            if (n > 0) {
                off += (size_t)n;
                continue;
            }
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                break;
            writing = 0; /* EPIPE, ECONNRESET: the server is done with us */
        }
        char chunk[4096];
        ssize_t n = recv(fd, chunk, sizeof(chunk), 0);
        if (n > 0) {
            assert_int_equal(buf_append(&in, chunk, (size_t)n), 0);
            continue;
        }
        if (n == 0 || (n < 0 && errno == ECONNRESET))
            break;
        assert_true(errno == EAGAIN || errno == EWOULDBLOCK);
        pump(f->c, 10);
    }
    close(fd);
    return buf_steal(&in);
}

/* The server's answer to data must be one error line holding want. */
static void expect_error(struct fixture *f, const void *data, size_t len, const char *want)
{
    char *got = exchange(f, data, len);
    json_t *resp = NULL;
    char err[CTLPROTO_ERR_MAX];
    size_t line_len = 0;
    if (ctlproto_scan(got, strlen(got), &line_len) != CTLPROTO_LINE ||
        ctlproto_decode(got, line_len, &resp, err, sizeof(err)) != RT_OK)
        fail_msg("the answer is not one JSON line: \"%.200s\"", got);
    const char *e = json_string_value(json_object_get(resp, "error"));
    if (json_is_true(json_object_get(resp, "ok")) || !e || !strstr(e, want))
        fail_msg("the answer \"%.300s\" is not an error saying \"%s\"", got, want);
    json_decref(resp);
    free(got);
}

/* Pumps until the server holds no client (every connection answered,
 * dropped or timed out). */
static void wait_no_clients(struct fixture *f)
{
    int64_t deadline = now_ms() + DEADLINE_MS;
    while (clients_held(f->c) > 0) {
        if (now_ms() > deadline)
            fail_msg("the server still holds %zu clients after %d ms", clients_held(f->c),
                     DEADLINE_MS);
        pump(f->c, 50);
    }
}

static void worst_requests_get_errors(void **state)
{
    struct fixture *f = *state;
    start_server(f);
    size_t fds_before = count_fds();

    /* 10 MB without a newline: refused once the cap is passed, not
     * buffered. */
    size_t big_len = (size_t)10 * 1024 * 1024;
    char *big = malloc(big_len);
    assert_non_null(big);
    memset(big, 'x', big_len);
    expect_error(f, big, big_len, "the request is longer than 65536 bytes");
    /* The same in one line that ends in a newline past the cap. */
    big[big_len - 1] = '\n';
    expect_error(f, big, big_len, "the request is longer than 65536 bytes");
    /* Nesting past jansson's depth limit, within the line cap. */
    memset(big, '[', CTLPROTO_LINE_MAX - 2);
    big[CTLPROTO_LINE_MAX - 2] = '\n';
    expect_error(f, big, CTLPROTO_LINE_MAX - 1, "bad request: not JSON");
    free(big);

    static const char not_json[] = "{\"cmd\":\n";
    expect_error(f, not_json, sizeof(not_json) - 1, "bad request: not JSON");
    static const char array[] = "[\"ping\"]\n";
    expect_error(f, array, sizeof(array) - 1, "not a JSON object");
    static const char number[] = "42\n";
    expect_error(f, number, sizeof(number) - 1, "bad request: not JSON");
    static const char no_cmd[] = "{\"command\":\"ping\"}\n";
    expect_error(f, no_cmd, sizeof(no_cmd) - 1, "no \"cmd\" string");
    static const char cmd_number[] = "{\"cmd\":5}\n";
    expect_error(f, cmd_number, sizeof(cmd_number) - 1, "no \"cmd\" string");
    static const char cmd_array[] = "{\"cmd\":[\"ping\"]}\n";
    expect_error(f, cmd_array, sizeof(cmd_array) - 1, "no \"cmd\" string");
    static const char dup[] = "{\"cmd\":\"ping\",\"cmd\":\"ping\"}\n";
    expect_error(f, dup, sizeof(dup) - 1, "bad request");
    static const char nul[] = "{\"cmd\":\"pi\\u0000ng\"}\n";
    expect_error(f, nul, sizeof(nul) - 1, "bad request");
    static const char binary[] = "\x00\xff\xfe{\x01\x02\"cmd\x80\n";
    expect_error(f, binary, sizeof(binary) - 1, "bad request: not JSON");

    /* An unknown command of 10 KB is named back cut short. */
    char unknown[10 * 1024 + 16];
    memcpy(unknown, "{\"cmd\":\"", 8);
    memset(unknown + 8, 'z', 10 * 1024);
    memcpy(unknown + 8 + 10 * 1024, "\"}\n", 3);
    char *got = exchange(f, unknown, 8 + 10 * 1024 + 3);
    assert_non_null(strstr(got, "unknown command"));
    assert_true(strlen(got) < 256);
    free(got);

    assert_int_equal(f->pings, 0);
    wait_no_clients(f);
    assert_int_equal(count_fds(), fds_before);
    assert_int_equal(ping_as(f, 0, 0, 0), CHILD_SERVED);
}

static void broken_and_crowded_connections_are_dropped(void **state)
{
    struct fixture *f = *state;
    enum { CROWD = 3 * CONTROL_MAX_CLIENTS };
    start_server(f);
    size_t fds_before = count_fds();

    /* Half a request, then a hang-up: dropped without an answer. */
    int fd = client_connect(f->path);
    assert_int_equal(send(fd, "{\"cmd\":\"pi", 10, MSG_NOSIGNAL), 10);
    while (clients_held(f->c) == 0)
        pump(f->c, 10);
    close(fd);
    wait_no_clients(f);

    /* Many connections at once, all silent at first: the server holds
     * CONTROL_MAX_CLIENTS, the rest wait in the backlog. */
    int fds[CROWD];
    for (int i = 0; i < CROWD; i++)
        fds[i] = client_connect(f->path);
    for (int i = 0; i < 20; i++)
        pump(f->c, 5);
    assert_int_equal(clients_held(f->c), CONTROL_MAX_CLIENTS);

    /* A third hangs up, a third sends garbage, a third sends a good ping:
     * every good ping is answered once slots free up, the rest dropped. */
    for (int i = 0; i < CROWD; i++) {
        if (i % 3 == 0) {
            close(fds[i]);
            fds[i] = -1;
        } else if (i % 3 == 1) {
            assert_int_equal(send(fds[i], "\x01\x02garbage\n", 10, MSG_NOSIGNAL), 10);
        } else {
            assert_int_equal(send(fds[i], "{\"cmd\":\"ping\"}\n", 15, MSG_NOSIGNAL), 15);
        }
    }
    int answered = 0, errors = 0, open = 2 * CROWD / 3;
    int64_t deadline = now_ms() + DEADLINE_MS;
    while (open > 0) {
        if (now_ms() > deadline)
            fail_msg("%d connections of the crowd got nothing within %d ms", open, DEADLINE_MS);
        pump(f->c, 10);
        for (int i = 0; i < CROWD; i++) {
            char line[512];
            if (fds[i] < 0)
                continue;
            ssize_t n = recv(fds[i], line, sizeof(line) - 1, MSG_DONTWAIT);
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                continue;
            if (n > 0) {
                line[n] = '\0';
                answered += strstr(line, "\"pong\":true") != NULL;
                errors += strstr(line, "bad request") != NULL;
            }
            close(fds[i]);
            fds[i] = -1;
            open--;
        }
    }
    assert_int_equal(answered, CROWD / 3);
    assert_int_equal(errors, CROWD / 3);
    wait_no_clients(f);

    /* A client that sends part of a request and waits is dropped at its
     * deadline. */
    fd = client_connect(f->path);
    assert_int_equal(send(fd, "{\"cmd\":", 7, MSG_NOSIGNAL), 7);
    deadline = now_ms() + CONTROL_CLIENT_TIMEOUT_MS + DEADLINE_MS;
    for (;;) {
        char c;
        ssize_t n = recv(fd, &c, 1, MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno == ECONNRESET))
            break;
        assert_true(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK));
        if (now_ms() > deadline)
            fail_msg("a silent client was not dropped");
        pump(f->c, 100);
    }
    close(fd);
    wait_no_clients(f);

    assert_int_equal(count_fds(), fds_before);
    assert_int_equal(ping_as(f, 0, 0, 0), CHILD_SERVED);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(socket_is_the_daemons_and_only_root_and_it_are_served,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(refused_burst_is_counted_and_logged_once, setup, teardown),
        cmocka_unit_test_setup_teardown(worst_requests_get_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(broken_and_crowded_connections_are_dropped, setup,
                                        teardown),
    };
    signal(SIGPIPE, SIG_IGN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
