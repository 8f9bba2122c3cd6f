#include "harness_daemon.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <libgen.h>
#include <limits.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "broker.h"
#include "buf.h"
#include "ctlproto.h"
#include "harness.h"
#include "harness_cluster.h"
#include "harness_rabbit.h"
#include "rmq.h"
#include "store.h"

/* remotetaskctl's output is a few lines; the cap only bounds a runaway. */
#define CTL_OUTPUT_MAX  ((size_t)64 * 1024)
#define CTL_DEADLINE_MS 30000
/* How often a starting daemon is pinged, and how long one ping may take. */
#define PING_INTERVAL_MS 50
#define PING_TIMEOUT_MS  1000
#define WAIT_POLL_MS     150
#define LOG_TAIL_DEFAULT ((size_t)8192)

struct harness_daemon {
    char *name;
    char *config;
    char *socket;
    char *log;
    pid_t pid; /* 0 when not running */
    unsigned starts;
};

static char *hd_strdup(const char *s)
{
    char *p = strdup(s ? s : "");
    if (!p)
        fail_msg("out of memory");
    return p;
}

static char *hd_path(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (!p)
        fail_msg("out of memory");
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

/* The build tree's binary rel ("bridge/remotetaskd") next to the running
 * test program, which lives in <build>/tests; env names an override. */
static void hd_binary(char *out, size_t len, const char *env, const char *rel)
{
    const char *over = getenv(env);
    if (over && *over) {
        snprintf(out, len, "%s", over);
    } else {
        char self[PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
        if (n <= 0)
            fail_msg("cannot read /proc/self/exe: %s", strerror(errno));
        self[n] = '\0';
        snprintf(out, len, "%s/../%s", dirname(self), rel);
    }
    if (access(out, X_OK) != 0)
        fail_msg("%s is missing (%s): build it first (make %s), or set %s", out, strerror(errno),
                 strrchr(rel, '/') + 1, env);
}

static long long hd_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void hd_write_file(const char *path, const char *text, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0)
        fail_msg("cannot write %s: %s", path, strerror(errno));
    size_t len = strlen(text);
    if (write(fd, text, len) != (ssize_t)len || close(fd) != 0)
        fail_msg("cannot write %s: %s", path, strerror(errno));
    /* open() applies the umask: make the mode exactly what was asked. */
    if (chmod(path, mode) != 0)
        fail_msg("cannot chmod %s: %s", path, strerror(errno));
}

/* Appends one line to a daemon's log, so that a reader of the log sees
 * where each run starts and what the harness did to it. */
static void hd_log_mark(const struct harness_daemon *d, const char *what)
{
    FILE *f = fopen(d->log, "a");
    if (!f)
        return;
    fprintf(f, "=== harness: %s %s (wall %lld ms) ===\n", what, d->name, hd_wall_ms());
    fclose(f);
}

struct harness_daemon *harness_daemon_new(const char *name, const char *config,
                                          const char *socket_path, const char *log_path)
{
    struct harness_daemon *d = calloc(1, sizeof(*d));
    if (!d)
        fail_msg("out of memory");
    d->name = hd_strdup(name);
    d->config = hd_strdup(config);
    d->socket = hd_strdup(socket_path);
    d->log = hd_strdup(log_path);
    return d;
}

const char *harness_daemon_log_path(const struct harness_daemon *d)
{
    return d->log;
}

int harness_daemon_pid(const struct harness_daemon *d)
{
    return (int)d->pid;
}

void harness_daemon_print_log(const struct harness_daemon *d, size_t max)
{
    if (!d)
        return;
    if (!max)
        max = LOG_TAIL_DEFAULT;
    int fd = open(d->log, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "--- %s daemon: no log at %s ---\n", d->name, d->log);
        return;
    }
    char *text = malloc(max + 1);
    if (!text) {
        close(fd);
        return;
    }
    off_t end = lseek(fd, 0, SEEK_END);
    off_t from = end > (off_t)max ? end - (off_t)max : 0;
    ssize_t n = pread(fd, text, max, from);
    close(fd);
    if (n < 0)
        n = 0;
    text[n] = '\0';
    /* Start at a line boundary when the tail was cut. */
    char *start = text;
    if (from > 0) {
        char *nl = strchr(text, '\n');
        if (nl)
            start = nl + 1;
    }
    fprintf(stderr, "--- last %zu bytes of the %s daemon's log (%s) ---\n%s--- end of %s log ---\n",
            (size_t)n, d->name, d->log, start, d->name);
    free(text);
}

/* Reaps the process if it exited; returns 1 while it runs. */
static int hd_reap(struct harness_daemon *d, int *status_out)
{
    int status;
    if (d->pid <= 0)
        return 0;
    pid_t r = waitpid(d->pid, &status, WNOHANG);
    if (r == 0)
        return 1;
    if (r == d->pid && status_out)
        *status_out = status;
    d->pid = 0;
    return 0;
}

int harness_daemon_running(struct harness_daemon *d)
{
    int status = 0;
    pid_t pid = d->pid;
    if (hd_reap(d, &status))
        return 1;
    if (pid > 0) {
        fprintf(stderr, "harness: the %s daemon (pid %d) exited unexpectedly (%s %d)\n", d->name,
                (int)pid, WIFSIGNALED(status) ? "signal" : "status",
                WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
        harness_daemon_print_log(d, 0);
    }
    return 0;
}

static rt_status hd_request(const struct harness_daemon *d, json_t *req, json_t **resp,
                            int timeout_ms)
{
    char err[CTLPROTO_ERR_MAX];
    rt_status st = ctlproto_request(d->socket, req, resp, timeout_ms, err, sizeof(err));
    json_decref(req);
    return st;
}

/* Forks and execs remotetaskd -c config with its output appended to the
 * log, and returns its pid (also in d->pid) without waiting for anything. */
static pid_t hd_spawn(struct harness_daemon *d, const char *what)
{
    char bin[PATH_MAX];
    if (d->pid > 0 && hd_reap(d, NULL))
        fail_msg("the %s daemon is already running (pid %d)", d->name, (int)d->pid);
    hd_binary(bin, sizeof(bin), "RT_REMOTETASKD", "bridge/remotetaskd");
    d->starts++;
    hd_log_mark(d, what ? what : d->starts == 1 ? "start" : "restart");

    const char *argv[] = {bin, "-c", d->config, NULL};
    pid_t parent = getpid();
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        fail_msg("fork: %s", strerror(errno));
    if (pid == 0) {
        /* A daemon never outlives the test program, even one that crashed. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        int fd = open(d->log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            dup2(fd, STDOUT_FILENO);
            dup2(fd, STDERR_FILENO);
            close(fd);
        }
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull >= 0) {
            dup2(devnull, STDIN_FILENO);
            close(devnull);
        }
        execv(bin, (char *const *)argv);
        fprintf(stderr, "cannot run %s: %s\n", bin, strerror(errno));
        _exit(127);
    }
    d->pid = pid;
    return pid;
}

void harness_daemon_start(struct harness_daemon *d)
{
    pid_t pid = hd_spawn(d, NULL);
    long long deadline = harness_now_ms() + HARNESS_DAEMON_START_MS;
    for (;;) {
        json_t *resp = NULL;
        json_t *req = json_pack("{s:s}", "cmd", "ping");
        if (!req)
            fail_msg("out of memory");
        if (hd_request(d, req, &resp, PING_TIMEOUT_MS) == RT_OK) {
            int ok = json_is_true(json_object_get(resp, "ok"));
            json_int_t rpid = json_integer_value(json_object_get(resp, "pid"));
            json_decref(resp);
            /* The answer must come from this process, not from a
             * previous run that still holds the socket. */
            if (ok && (rpid == 0 || rpid == pid))
                return;
        }
        int status = 0;
        if (!hd_reap(d, &status)) {
            harness_daemon_print_log(d, 0);
            fail_msg("the %s daemon exited during start-up (%s %d); its log is above", d->name,
                     WIFSIGNALED(status) ? "signal" : "status",
                     WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
        }
        if (harness_now_ms() > deadline) {
            harness_daemon_print_log(d, 0);
            harness_daemon_kill(d);
            fail_msg("the %s daemon did not answer a ping on %s within %d ms", d->name, d->socket,
                     HARNESS_DAEMON_START_MS);
        }
        poll(NULL, 0, PING_INTERVAL_MS);
    }
}

void harness_daemon_start_standby(struct harness_daemon *d)
{
    /* The mark precedes the start, so only this run's line counts. */
    size_t mark = harness_daemon_log_mark(d);
    (void)hd_spawn(d, "standby start");
    long long deadline = harness_now_ms() + HARNESS_DAEMON_START_MS;
    for (;;) {
        if (harness_daemon_log_count_since(d, mark, "standing by") > 0)
            return;
        int status = 0;
        if (!hd_reap(d, &status)) {
            harness_daemon_print_log(d, 0);
            fail_msg("the %s daemon exited before it stood by (%s %d); its log is above", d->name,
                     WIFSIGNALED(status) ? "signal" : "status",
                     WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
        }
        if (harness_now_ms() > deadline) {
            harness_daemon_print_log(d, 0);
            harness_daemon_kill(d);
            fail_msg("the %s daemon did not log \"standing by\" within %d ms", d->name,
                     HARNESS_DAEMON_START_MS);
        }
        poll(NULL, 0, PING_INTERVAL_MS);
    }
}

/* Signals the daemon and waits for it; returns its wait status, or -1 when
 * it had to be killed after the deadline. */
static int hd_signal_wait(struct harness_daemon *d, int sig, long long deadline_ms)
{
    int status = 0;
    if (d->pid <= 0)
        return 0;
    kill(d->pid, sig);
    long long deadline = harness_now_ms() + deadline_ms;
    for (;;) {
        pid_t r = waitpid(d->pid, &status, WNOHANG);
        if (r == d->pid || (r < 0 && errno == ECHILD))
            break;
        if (harness_now_ms() > deadline) {
            kill(d->pid, SIGKILL);
            waitpid(d->pid, &status, 0);
            d->pid = 0;
            return -1;
        }
        poll(NULL, 0, 10);
    }
    d->pid = 0;
    return status;
}

void harness_daemon_stop(struct harness_daemon *d)
{
    int status = 0;
    if (d->pid <= 0)
        return;
    pid_t pid = d->pid;
    if (!hd_reap(d, &status)) {
        /* It ended by itself: a crash, an exit on an error, a sanitizer. */
        harness_daemon_print_log(d, 0);
        fail_msg("the %s daemon (pid %d) had already ended (%s %d) when it was to be stopped",
                 d->name, (int)pid, WIFSIGNALED(status) ? "signal" : "status",
                 WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
    }
    hd_log_mark(d, "SIGTERM to");
    long long t0 = harness_now_ms();
    status = hd_signal_wait(d, SIGTERM, HARNESS_DAEMON_STOP_MS);
    if (status == -1) {
        harness_daemon_print_log(d, 0);
        fail_msg("the %s daemon did not exit within %d ms of SIGTERM (killed)", d->name,
                 HARNESS_DAEMON_STOP_MS);
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        harness_daemon_print_log(d, 0);
        fail_msg("the %s daemon ended with %s %d after SIGTERM, not status 0", d->name,
                 WIFSIGNALED(status) ? "signal" : "status",
                 WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
    }
    fprintf(stderr, "harness: %s daemon stopped by SIGTERM in %lld ms\n", d->name,
            harness_now_ms() - t0);
}

void harness_daemon_kill(struct harness_daemon *d)
{
    if (d->pid <= 0)
        return;
    hd_log_mark(d, "SIGKILL to");
    (void)hd_signal_wait(d, SIGKILL, HARNESS_DAEMON_STOP_MS);
}

rt_status harness_daemon_wake(struct harness_daemon *d, int reconcile)
{
    json_t *resp = NULL;
    json_t *req = json_pack("{s:s,s:b}", "cmd", "wake", "reconcile", reconcile);
    if (!req)
        fail_msg("out of memory");
    rt_status st = hd_request(d, req, &resp, PING_TIMEOUT_MS);
    if (st != RT_OK)
        return RT_RETRY;
    int ok = json_is_true(json_object_get(resp, "ok"));
    json_decref(resp);
    return ok ? RT_OK : RT_REJECT;
}

/* Reads the whole log (capped at 256 MiB) into a malloc'ed string. */
static char *hd_read_log(const struct harness_daemon *d)
{
    struct buf b;
    char chunk[65536];
    buf_init(&b, (size_t)256 * 1024 * 1024);
    int fd = open(d->log, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n;
        while ((n = read(fd, chunk, sizeof(chunk))) > 0)
            if (buf_append(&b, chunk, (size_t)n) < 0)
                break;
        close(fd);
    }
    if (buf_append(&b, "", 0) < 0) {
        buf_release(&b);
        fail_msg("out of memory");
    }
    return buf_steal(&b);
}

size_t harness_daemon_log_count(const struct harness_daemon *d, const char *needle)
{
    char *text = hd_read_log(d);
    size_t count = 0;
    char *line = text;
    while (line && *line) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = '\0';
        if (strstr(line, needle))
            count++;
        line = nl ? nl + 1 : NULL;
    }
    free(text);
    return count;
}

void harness_daemon_check_log(const struct harness_daemon *d)
{
    static const char *const reports[] = {"ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                                          "runtime error:", "SUMMARY: UndefinedBehaviorSanitizer"};
    for (size_t i = 0; i < sizeof(reports) / sizeof(reports[0]); i++) {
        if (harness_daemon_log_count(d, reports[i])) {
            harness_daemon_print_log(d, 32768);
            fail_msg("the %s daemon's log %s holds a sanitizer report (\"%s\")", d->name, d->log,
                     reports[i]);
        }
    }
}

void harness_daemon_free(struct harness_daemon *d)
{
    if (!d)
        return;
    if (d->pid > 0 && hd_reap(d, NULL)) {
        hd_log_mark(d, "cleanup SIGTERM to");
        (void)hd_signal_wait(d, SIGTERM, HARNESS_DAEMON_STOP_MS);
    }
    free(d->name);
    free(d->config);
    free(d->socket);
    free(d->log);
    free(d);
}

/* ---- remotetaskctl ---------------------------------------------------- */

/* Runs remotetaskctl; returns its exit status, or -1 when it was killed
 * at the deadline (its output so far then goes to *output too). */
static int hd_ctl_run(const char *config, const char *const *args, const char *env_elid,
                      char **output, long long timeout_ms)
{
    char bin[PATH_MAX];
    const char *argv[32];
    size_t n = 0;
    hd_binary(bin, sizeof(bin), "RT_REMOTETASKCTL", "ctl/remotetaskctl");
    argv[n++] = bin;
    argv[n++] = "-c";
    argv[n++] = config;
    for (size_t i = 0; args && args[i]; i++) {
        if (n == sizeof(argv) / sizeof(argv[0]) - 1)
            fail_msg("harness_ctl: too many arguments");
        argv[n++] = args[i];
    }
    argv[n] = NULL;

    int outp[2];
    if (pipe2(outp, O_CLOEXEC) != 0)
        fail_msg("pipe: %s", strerror(errno));
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        fail_msg("fork: %s", strerror(errno));
    if (pid == 0) {
        dup2(outp[1], STDOUT_FILENO);
        dup2(outp[1], STDERR_FILENO);
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull >= 0) {
            dup2(devnull, STDIN_FILENO);
            close(devnull);
        }
        if (env_elid)
            setenv("PARAM_elid", env_elid, 1);
        else
            unsetenv("PARAM_elid");
        execv(bin, (char *const *)argv);
        fprintf(stderr, "cannot run %s: %s\n", bin, strerror(errno));
        _exit(127);
    }
    close(outp[1]);

    struct buf b;
    buf_init(&b, CTL_OUTPUT_MAX);
    long long deadline = harness_now_ms() + timeout_ms;
    int timed_out = 0;
    for (;;) {
        long long left = deadline - harness_now_ms();
        if (left <= 0) {
            timed_out = 1;
            break;
        }
        struct pollfd p = {.fd = outp[0], .events = POLLIN};
        int r = poll(&p, 1, (int)left);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            timed_out = r == 0;
            break;
        }
        char chunk[4096];
        ssize_t got = read(outp[0], chunk, sizeof(chunk));
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            break;
        /* Over the cap: keep draining so that the child can finish. */
        (void)buf_append(&b, chunk, (size_t)got);
    }
    close(outp[0]);
    if (timed_out)
        kill(pid, SIGKILL);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (buf_append(&b, "", 0) < 0)
        fail_msg("out of memory");
    if (output)
        *output = buf_steal(&b);
    buf_release(&b);
    if (timed_out)
        return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int harness_ctl(const char *config, const char *const *args, const char *env_elid, char **output)
{
    char *text = NULL;
    int rc = hd_ctl_run(config, args, env_elid, &text, CTL_DEADLINE_MS);
    if (rc == -1) {
        fprintf(stderr, "remotetaskctl output: %s\n", text ? text : "");
        free(text);
        fail_msg("remotetaskctl did not finish within %d ms", CTL_DEADLINE_MS);
    }
    if (output)
        *output = text;
    else
        free(text);
    return rc;
}

int harness_ctl_within(const char *config, const char *const *args, const char *env_elid,
                       char **output, long long timeout_ms)
{
    return hd_ctl_run(config, args, env_elid, output, timeout_ms);
}

/* ---- events ----------------------------------------------------------- */

static void hd_record(const char *state_dir, const char *client, const int64_t *list, int64_t first,
                      size_t n)
{
    char err[512];
    struct store *st = store_open(state_dir, err, sizeof(err));
    if (!st)
        fail_msg("cannot open the store in %s: %s", state_dir, err);
    rt_status rs = store_begin(st);
    for (size_t i = 0; rs == RT_OK && i < n; i++) {
        int64_t task = list ? list[i] : first + (int64_t)i;
        rs = store_outbox_add(st, client, task, hd_wall_ms());
    }
    if (rs == RT_OK)
        rs = store_commit(st);
    if (rs != RT_OK) {
        char reason[512];
        snprintf(reason, sizeof(reason), "%s", store_strerror(st));
        store_rollback(st);
        store_free(st);
        fail_msg("cannot record %zu events in %s: %s", n, state_dir, reason);
    }
    store_free(st);
}

void harness_record_events(const char *state_dir, const char *client, int64_t first, int64_t last)
{
    if (last < first)
        return;
    hd_record(state_dir, client, NULL, first, (size_t)(last - first + 1));
}

void harness_record_event_list(const char *state_dir, const char *client, const int64_t *tasks,
                               size_t n)
{
    if (n)
        hd_record(state_dir, client, tasks, 0, n);
}

uint64_t harness_outbox_backlog(const char *state_dir)
{
    char err[512];
    uint64_t count = 0;
    struct store *st = store_open(state_dir, err, sizeof(err));
    if (!st)
        fail_msg("cannot open the store in %s: %s", state_dir, err);
    if (store_outbox_backlog(st, &count, NULL) != RT_OK) {
        snprintf(err, sizeof(err), "%s", store_strerror(st));
        store_free(st);
        fail_msg("cannot read the outbox in %s: %s", state_dir, err);
    }
    store_free(st);
    return count;
}

/* ---- waiting ------------------------------------------------------------ */

json_t *harness_sim_tasks(struct harness_sim *sim, long dept)
{
    char path[128];
    snprintf(path, sizeof(path), "/tasks?department=%ld", dept);
    json_t *r = harness_sim_admin_ok(sim, "GET", path, NULL);
    json_t *tasks = json_object_get(r, "tasks");
    if (!json_is_array(tasks))
        fail_msg("emulator GET %s gave no tasks array", path);
    json_incref(tasks);
    json_decref(r);
    return tasks;
}

json_t *harness_wait_tasks(struct harness_sim *sim, long dept,
                           int (*done)(json_t *tasks, void *arg), void *arg, long long timeout_ms,
                           int *met)
{
    long long deadline = harness_now_ms() + timeout_ms;
    for (;;) {
        json_t *tasks = harness_sim_tasks(sim, dept);
        int ok = done(tasks, arg);
        if (ok || harness_now_ms() >= deadline) {
            if (met)
                *met = ok != 0;
            return tasks;
        }
        json_decref(tasks);
        poll(NULL, 0, WAIT_POLL_MS);
    }
}

/* ---- a forward-path scenario ---------------------------------------- */

static void hd_write_password(const char *path, const char *password)
{
    size_t n = strlen(password) + 2;
    char *text = malloc(n);
    if (!text)
        fail_msg("out of memory");
    snprintf(text, n, "%s\n", password);
    hd_write_file(path, text, 0600);
    free(text);
}

/* Writes one configuration file with libconfig syntax. The strings that go
 * in (paths, ids, URLs) come from this harness and hold no quote or
 * backslash. */
static void hd_write_config(const struct harness_scenario *s, const struct harness_scenario_opts *o,
                            int server)
{
    const char *side = server ? "server" : "client";
    const char *user = server ? s->server_user : s->client_user;
    char *conf = server ? s->server_conf : s->client_conf;
    char uri[1024], list[1000];
    struct buf b;
    buf_init(&b, 65536);
    int rc = 0;
    if (s->cluster)
        snprintf(uri, sizeof(uri), "( %s )", harness_cluster_uris(list, sizeof(list), user));
    else
        snprintf(uri, sizeof(uri), "\"amqp://%s@127.0.0.1:%s/%%2f\"", user,
                 harness_env("RT_AMQP_PORT"));
    rc |= buf_printf(&b,
                     "# written by tests/integration/harness_daemon.c\n"
                     "instance = \"itf-%s\";\n"
                     "state_dir = \"%s\";\n"
                     "control_socket = \"%s/%s.sock\";\n"
                     "log_level = \"debug\";\n"
                     "amqp: {\n"
                     "  uri = %s;\n"
                     "  password_file = \"%s/%s-amqp.password\";\n"
                     "  heartbeat = %d;\n"
                     "  prefetch = %d;\n"
                     "  queue_type = \"classic\";\n"
                     "  connect_timeout = 5;\n"
                     "};\n"
                     "billmanager: {\n"
                     "  url = \"%s\";\n"
                     "  login = \"%s\";\n"
                     "  password_file = \"%s/%s-billmgr.password\";\n"
                     "  timeout = %d;\n"
                     "  connect_timeout = %d;\n"
                     "  max_inflight = %d;\n"
                     "};\n",
                     side, server ? s->server_state : s->client_state, s->dir, side, uri, s->dir,
                     side, o->heartbeat ? o->heartbeat : 5, o->prefetch ? o->prefetch : 64,
                     harness_sim_url(server ? s->dst : s->src), HARNESS_SIM_LOGIN, s->dir, side,
                     o->billmgr_timeout ? o->billmgr_timeout : 10,
                     o->billmgr_timeout && o->billmgr_timeout < 5 ? o->billmgr_timeout : 5,
                     o->max_inflight ? o->max_inflight : 16);
    if (!server) {
        /* server_user is required: the server daemon's login, the only
         * sender whose states the client applies. */
        rc |= buf_printf(&b,
                         "client: {\n"
                         "  id = \"%s\";\n"
                         "  poll_interval = %d;\n"
                         "  server_user = \"%s\";\n"
                         "  departments = ( { local = %ld; remote = %ld; } );\n"
                         "};\n",
                         s->client_id, o->poll_interval ? o->poll_interval : 5, s->server_user,
                         s->src_dept, s->dst_dept);
    } else {
        rc |= buf_printf(&b,
                         "server: {\n"
                         "  sync_interval = 300;\n"
                         "  clients = (\n"
                         "    { id = \"%s\"; amqp_user = \"%s\"; department = %ld; }",
                         s->client_id, s->client_user, s->dst_dept);
        if (s->other_id[0])
            rc |= buf_printf(&b, ",\n    { id = \"%s\"; amqp_user = \"%s\"; department = %d; }",
                             s->other_id, s->other_user, HARNESS_SIM_DEPT_A);
        rc |= buf_printf(&b, "\n  );\n};\n");
    }
    if (rc || buf_append(&b, "", 0) < 0)
        fail_msg("cannot build the %s configuration", side);
    hd_write_file(conf, b.data, 0600);
    buf_release(&b);
}

struct harness_scenario *harness_scenario_new(const char *tag,
                                              const struct harness_scenario_opts *opts,
                                              struct harness_scenario **slot)
{
    static unsigned counter;
    struct harness_scenario_opts o = {0};
    char name[256];
    if (opts)
        o = *opts;

    struct harness_scenario *s = calloc(1, sizeof(*s));
    if (!s)
        fail_msg("out of memory");
    if (slot)
        *slot = s;
    s->cluster = o.cluster;
    counter++;
    s->dir = harness_tmpdir(tag);
    /* The control sockets live in the directory: sun_path holds 108 bytes. */
    if (strlen(s->dir) + strlen("/client.sock") >= sizeof(((struct sockaddr_un *)0)->sun_path))
        fail_msg("the scratch directory %s is too long for a control socket path; set "
                 "RT_TEST_TMP to a shorter directory",
                 s->dir);
    s->src_dept = HARNESS_SIM_DEPT_A;
    s->dst_dept = HARNESS_SIM_DEPT_B;
    /* Ids and users unique per test and per run, so that queues and users
     * of other tests and earlier runs never collide with this one's. */
    snprintf(s->client_id, sizeof(s->client_id), "itf%u%ld", counter, (long)getpid());
    snprintf(s->client_user, sizeof(s->client_user), "itf%u%ld-client", counter, (long)getpid());
    snprintf(s->server_user, sizeof(s->server_user), "itf%u%ld-server", counter, (long)getpid());
    if (o.other_client) {
        snprintf(s->other_id, sizeof(s->other_id), "itf%u%ldother", counter, (long)getpid());
        snprintf(s->other_user, sizeof(s->other_user), "itf%u%ld-other", counter, (long)getpid());
    }
    /* A throwaway password for a private test node, different per run. */
    snprintf(s->amqp_password, sizeof(s->amqp_password), "itf-%ld-%u-%lld", (long)getpid(), counter,
             hd_wall_ms());

    s->src = harness_sim_start(NULL, NULL);
    s->dst = harness_sim_start(NULL, NULL);
    void (*adduser)(const char *, const char *) =
        s->cluster ? harness_cluster_adduser : harness_rabbit_adduser;
    adduser(s->client_user, s->amqp_password);
    adduser(s->server_user, s->amqp_password);
    if (s->other_user[0])
        adduser(s->other_user, s->amqp_password);

    s->client_conf = hd_path(s->dir, "client.conf");
    s->server_conf = hd_path(s->dir, "server.conf");
    s->client_state = hd_path(s->dir, "client-state");
    s->server_state = hd_path(s->dir, "server-state");
    const char *sides[] = {"client", "server"};
    for (int i = 0; i < 2; i++) {
        snprintf(name, sizeof(name), "%s/%s-amqp.password", s->dir, sides[i]);
        hd_write_password(name, s->amqp_password);
        snprintf(name, sizeof(name), "%s/%s-billmgr.password", s->dir, sides[i]);
        hd_write_password(name, HARNESS_SIM_PASSWORD);
    }
    hd_write_config(s, &o, 0);
    hd_write_config(s, &o, 1);

    char sock[PATH_MAX], log[PATH_MAX];
    snprintf(sock, sizeof(sock), "%s/client.sock", s->dir);
    snprintf(log, sizeof(log), "%s/client.log", s->dir);
    s->client = harness_daemon_new("client", s->client_conf, sock, log);
    snprintf(sock, sizeof(sock), "%s/server.sock", s->dir);
    snprintf(log, sizeof(log), "%s/server.log", s->dir);
    s->server = harness_daemon_new("server", s->server_conf, sock, log);
    return s;
}

void harness_scenario_stop(struct harness_scenario *s)
{
    harness_daemon_stop(s->client);
    harness_daemon_stop(s->server);
    harness_daemon_check_log(s->client);
    harness_daemon_check_log(s->server);
}

void harness_scenario_print_logs(const struct harness_scenario *s)
{
    if (!s)
        return;
    harness_daemon_print_log(s->client, 0);
    harness_daemon_print_log(s->server, 0);
}

/* Deletes the queues of one client id with one plain AMQP connection:
 * rabbitmqctl would take a second per queue. Cleanup: failures are only
 * reported. */
static void hd_delete_queues(int port, const char *user, const char *pass, const char *client)
{
    amqp_connection_state_t conn = amqp_new_connection();
    if (!conn)
        return;
    amqp_socket_t *sock = amqp_tcp_socket_new(conn);
    struct timeval tv = {.tv_sec = 5};
    if (!sock || port <= 0 ||
        amqp_socket_open_noblock(sock, "127.0.0.1", port, &tv) != AMQP_STATUS_OK)
        goto destroy;
    amqp_rpc_reply_t r = amqp_login(conn, "/", 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, user, pass);
    if (r.reply_type != AMQP_RESPONSE_NORMAL)
        goto destroy;
    if (!amqp_channel_open(conn, 1) || amqp_get_rpc_reply(conn).reply_type != AMQP_RESPONSE_NORMAL)
        goto close_conn;
    char name[BROKER_NAME_MAX];
    for (int dir = 0; dir < 2; dir++) {
        if (broker_queue_name(name, sizeof(name), (enum broker_dir)dir, client) == 0) {
            amqp_queue_delete(conn, 1, amqp_cstring_bytes(name), 0, 0);
            if (amqp_get_rpc_reply(conn).reply_type != AMQP_RESPONSE_NORMAL)
                goto close_conn;
        }
        for (unsigned tier = 0; tier < BROKER_RETRY_TIERS; tier++) {
            if (broker_retry_queue_name(name, sizeof(name), (enum broker_dir)dir, client, tier) !=
                0)
                continue;
            amqp_queue_delete(conn, 1, amqp_cstring_bytes(name), 0, 0);
            if (amqp_get_rpc_reply(conn).reply_type != AMQP_RESPONSE_NORMAL)
                goto close_conn;
        }
        if (broker_dead_queue_name(name, sizeof(name), (enum broker_dir)dir, client) == 0) {
            amqp_queue_delete(conn, 1, amqp_cstring_bytes(name), 0, 0);
            if (amqp_get_rpc_reply(conn).reply_type != AMQP_RESPONSE_NORMAL)
                goto close_conn;
        }
    }
    /* The client's own exchanges go with its queues. */
    if (broker_retry_exchange(name, sizeof(name), client) == 0) {
        amqp_exchange_delete(conn, 1, amqp_cstring_bytes(name), 0);
        if (amqp_get_rpc_reply(conn).reply_type != AMQP_RESPONSE_NORMAL)
            goto close_conn;
    }
    if (broker_dead_exchange(name, sizeof(name), client) == 0) {
        amqp_exchange_delete(conn, 1, amqp_cstring_bytes(name), 0);
        if (amqp_get_rpc_reply(conn).reply_type != AMQP_RESPONSE_NORMAL)
            goto close_conn;
    }
    amqp_channel_close(conn, 1, AMQP_REPLY_SUCCESS);
close_conn:
    amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
destroy:
    amqp_destroy_connection(conn);
}

static int hd_rm(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    remove(path);
    return 0;
}

void harness_scenario_free(struct harness_scenario *s)
{
    if (!s)
        return;
    const char *keep_env = getenv("RT_KEEP_TMP");
    int keep = s->keep || (keep_env && *keep_env);
    harness_daemon_free(s->client);
    harness_daemon_free(s->server);
    if (keep && !(keep_env && *keep_env)) {
        /* harness_sim_free keeps its directory only for RT_KEEP_TMP. */
        if (s->src)
            fprintf(stderr, "harness: the source emulator's files are in %s\n",
                    harness_sim_dir(s->src));
        if (s->dst)
            fprintf(stderr, "harness: the target emulator's files are in %s\n",
                    harness_sim_dir(s->dst));
        setenv("RT_KEEP_TMP", "1", 1);
        harness_sim_free(s->src);
        harness_sim_free(s->dst);
        unsetenv("RT_KEEP_TMP");
    } else {
        harness_sim_free(s->src);
        harness_sim_free(s->dst);
    }
    const char *port = getenv("RT_AMQP_PORT");
    int amqp_port = s->cluster ? harness_cluster_amqp_port(1) : port ? atoi(port) : 0;
    void (*deluser)(const char *) =
        s->cluster ? harness_cluster_delete_user : harness_rabbit_delete_user;
    if (s->server_user[0]) {
        hd_delete_queues(amqp_port, s->server_user, s->amqp_password, s->client_id);
        if (s->other_id[0])
            hd_delete_queues(amqp_port, s->server_user, s->amqp_password, s->other_id);
    }
    if (s->client_user[0])
        deluser(s->client_user);
    if (s->server_user[0])
        deluser(s->server_user);
    if (s->other_user[0])
        deluser(s->other_user);
    if (s->dir && !keep)
        nftw(s->dir, hd_rm, 16, FTW_DEPTH | FTW_PHYS);
    else if (s->dir)
        fprintf(stderr, "harness: kept %s (daemon logs, configurations, stores)\n", s->dir);
    free(s->client_conf);
    free(s->server_conf);
    free(s->client_state);
    free(s->server_state);
    free(s->dir);
    free(s);
}

/* ---- editing a scenario's configuration (issues 4 and 5) ------------- */

/* Configuration files of the harness are a few KiB; the cap bounds a
 * mistake (a wrong path to a huge file). */
#define CONF_MAX ((size_t)1024 * 1024)

static char *hd_read_conf(const char *path)
{
    struct buf b;
    char chunk[4096];
    buf_init(&b, CONF_MAX);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        fail_msg("cannot read %s: %s", path, strerror(errno));
    ssize_t n;
    while ((n = read(fd, chunk, sizeof(chunk))) > 0) {
        if (buf_append(&b, chunk, (size_t)n) < 0) {
            close(fd);
            buf_release(&b);
            fail_msg("%s is larger than %zu bytes", path, CONF_MAX);
        }
    }
    close(fd);
    if (n < 0 || buf_append(&b, "", 0) < 0) {
        buf_release(&b);
        fail_msg("cannot read %s", path);
    }
    return buf_steal(&b);
}

void harness_config_replace(const char *path, const char *old, const char *repl)
{
    char *text = hd_read_conf(path);
    char *at = strstr(text, old);
    if (!at) {
        free(text);
        fail_msg("harness_config_replace: \"%s\" is not in %s", old, path);
    }
    struct buf b;
    buf_init(&b, CONF_MAX);
    if (buf_append(&b, text, (size_t)(at - text)) < 0 || buf_append(&b, repl, strlen(repl)) < 0 ||
        buf_append(&b, at + strlen(old), strlen(at + strlen(old))) < 0 ||
        buf_append(&b, "", 0) < 0) {
        free(text);
        buf_release(&b);
        fail_msg("harness_config_replace: %s would exceed %zu bytes", path, CONF_MAX);
    }
    free(text);
    hd_write_file(path, b.data, 0600);
    buf_release(&b);
}

void harness_config_append(const char *path, const char *text)
{
    char *old = hd_read_conf(path);
    struct buf b;
    buf_init(&b, CONF_MAX);
    if (buf_append(&b, old, strlen(old)) < 0 || buf_append(&b, text, strlen(text)) < 0 ||
        buf_append(&b, "", 0) < 0) {
        free(old);
        buf_release(&b);
        fail_msg("harness_config_append: %s would exceed %zu bytes", path, CONF_MAX);
    }
    free(old);
    hd_write_file(path, b.data, 0600);
    buf_release(&b);
}

int harness_free_port(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
    socklen_t len = sizeof(sa);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        fail_msg("socket: %s", strerror(errno));
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &len) != 0) {
        int e = errno;
        close(fd);
        fail_msg("cannot find a free port on 127.0.0.1: %s", strerror(e));
    }
    close(fd);
    return ntohs(sa.sin_port);
}

/* ---- looking at a running daemon (the fault suite, issue 9) --------- */

/* A status line of /proc/PID/status is short; the file is a few KiB. */
#define PROC_STATUS_MAX 16384
/* Log windows read at once: a debug log of a busy minute is a few MiB. */
#define LOG_SINCE_DEFAULT ((size_t)1024 * 1024)
#define LOG_CHUNK         ((size_t)256 * 1024)

const char *harness_daemon_config(const struct harness_daemon *d)
{
    return d->config;
}

int harness_daemon_try_stop(struct harness_daemon *d, char *why, size_t len)
{
    int status = 0;
    if (d->pid <= 0)
        return 0;
    pid_t pid = d->pid;
    if (!hd_reap(d, &status)) {
        snprintf(why, len, "the %s daemon (pid %d) had already ended (%s %d)", d->name, (int)pid,
                 WIFSIGNALED(status) ? "signal" : "status",
                 WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
        return -1;
    }
    hd_log_mark(d, "SIGTERM to");
    status = hd_signal_wait(d, SIGTERM, HARNESS_DAEMON_STOP_MS);
    if (status == -1) {
        snprintf(why, len, "the %s daemon did not exit within %d ms of SIGTERM (killed)", d->name,
                 HARNESS_DAEMON_STOP_MS);
        return -1;
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        snprintf(why, len, "the %s daemon ended with %s %d after SIGTERM, not status 0", d->name,
                 WIFSIGNALED(status) ? "signal" : "status",
                 WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
        return -1;
    }
    return 0;
}

/* Reads a small /proc file whole into buf (NUL-terminated); -1 when it
 * cannot. */
static int hd_read_proc(const char *path, char *buf, size_t len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    size_t got = 0;
    ssize_t n;
    while (got < len - 1 && (n = read(fd, buf + got, len - 1 - got)) > 0)
        got += (size_t)n;
    close(fd);
    buf[got] = '\0';
    return got ? 0 : -1;
}

/* The value in kB of a "Key:   N kB" line of /proc/PID/status, or -1. */
static long hd_status_kb(const char *text, const char *key)
{
    const char *p = strstr(text, key);
    if (!p)
        return -1;
    return strtol(p + strlen(key), NULL, 10);
}

int harness_daemon_proc(const struct harness_daemon *d, struct harness_proc *p)
{
    char path[64], text[PROC_STATUS_MAX];
    memset(p, 0, sizeof(*p));
    if (d->pid <= 0)
        return -1;
    p->at_ms = harness_now_ms();
    snprintf(path, sizeof(path), "/proc/%d/status", (int)d->pid);
    if (hd_read_proc(path, text, sizeof(text)) < 0)
        goto fail;
    p->rss_kb = hd_status_kb(text, "\nVmRSS:");
    p->hwm_kb = hd_status_kb(text, "\nVmHWM:");
    /* A zombie has no memory lines: it is not running. */
    if (p->rss_kb < 0 || p->hwm_kb < 0)
        goto fail;

    /* utime and stime are the 14th and 15th fields; the second, the
     * command name in parentheses, may hold spaces, so count from the
     * last ')'. */
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)d->pid);
    if (hd_read_proc(path, text, sizeof(text)) < 0)
        goto fail;
    const char *at = strrchr(text, ')');
    if (!at)
        goto fail;
    at++;
    for (int field = 3; field < 14; field++) {
        at += strspn(at, " ");
        at += strcspn(at, " ");
    }
    char *end;
    unsigned long long utime = strtoull(at, &end, 10);
    unsigned long long stime = strtoull(end, NULL, 10);
    long ticks = sysconf(_SC_CLK_TCK);
    p->cpu_s = (double)(utime + stime) / (double)(ticks > 0 ? ticks : 100);

    snprintf(path, sizeof(path), "/proc/%d/fd", (int)d->pid);
    DIR *dir = opendir(path);
    if (!dir)
        goto fail;
    struct dirent *e;
    while ((e = readdir(dir)) != NULL)
        if (e->d_name[0] != '.')
            p->fds++;
    closedir(dir);
    return 0;

fail:
    memset(p, 0, sizeof(*p));
    return -1;
}

double harness_proc_cpu_percent(const struct harness_proc *a, const struct harness_proc *b)
{
    if (b->at_ms <= a->at_ms)
        return -1;
    return 100.0 * (b->cpu_s - a->cpu_s) / ((double)(b->at_ms - a->at_ms) / 1000.0);
}

void harness_daemon_status(const struct harness_daemon *d, struct harness_status *out)
{
    harness_daemon_status_within(d, out, CTL_DEADLINE_MS);
    if (out->exit_code == -1) {
        fprintf(stderr, "remotetaskctl output: %s\n", out->output);
        fail_msg("remotetaskctl --command status did not finish within %d ms", CTL_DEADLINE_MS);
    }
}

void harness_daemon_status_within(const struct harness_daemon *d, struct harness_status *out,
                                  long long timeout_ms)
{
    static const char *const args[] = {"--command", "status", "--json", NULL};
    memset(out, 0, sizeof(*out));
    long long t0 = harness_now_ms();
    out->exit_code = hd_ctl_run(d->config, args, NULL, &out->output, timeout_ms);
    out->took_ms = harness_now_ms() - t0;
    if (!out->output && !(out->output = strdup("")))
        fail_msg("out of memory");
    /* The document may follow other lines (a warning first). */
    const char *p = strchr(out->output, '{');
    if (p) {
        json_error_t e;
        out->doc = json_loadb(p, strlen(p), JSON_DISABLE_EOF_CHECK, &e);
    }
}

void harness_status_release(struct harness_status *st)
{
    if (!st)
        return;
    json_decref(st->doc);
    free(st->output);
    memset(st, 0, sizeof(*st));
}

size_t harness_daemon_log_mark(const struct harness_daemon *d)
{
    struct stat sb;
    if (stat(d->log, &sb) != 0)
        return 0;
    return (size_t)sb.st_size;
}

/* Reads up to max bytes of the log from offset from into a malloc'ed,
 * NUL-terminated string; *got receives how many were read. */
static char *hd_read_range(const struct harness_daemon *d, size_t from, size_t max, size_t *got)
{
    char *text = malloc(max + 1);
    if (!text)
        fail_msg("out of memory");
    *got = 0;
    int fd = open(d->log, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n;
        while (*got < max && (n = pread(fd, text + *got, max - *got, (off_t)(from + *got))) > 0)
            *got += (size_t)n;
        close(fd);
    }
    text[*got] = '\0';
    return text;
}

char *harness_daemon_log_since(const struct harness_daemon *d, size_t mark, size_t max)
{
    size_t got;
    char *text = hd_read_range(d, mark, max ? max : LOG_SINCE_DEFAULT, &got);
    /* A line being written (or cut by the cap) is left for the next look. */
    char *nl = strrchr(text, '\n');
    if (nl)
        nl[1] = '\0';
    else
        text[0] = '\0';
    return text;
}

size_t harness_daemon_log_count_since(const struct harness_daemon *d, size_t mark,
                                      const char *needle)
{
    size_t count = 0, at = mark, got;
    for (;;) {
        char *text = hd_read_range(d, at, LOG_CHUNK, &got);
        char *nl = strrchr(text, '\n');
        if (!nl) {
            /* Nothing, or one unfinished (or huge) line: done. */
            free(text);
            break;
        }
        nl[1] = '\0';
        at += (size_t)(nl + 1 - text);
        for (char *line = text; *line;) {
            char *end = strchr(line, '\n');
            *end = '\0';
            if (strstr(line, needle))
                count++;
            line = end + 1;
        }
        free(text);
        if (got < LOG_CHUNK)
            break;
    }
    return count;
}

int harness_ctl_list(const char *config, char **output, ...)
{
    const char *args[16];
    size_t n = 0;
    va_list ap;
    va_start(ap, output);
    const char *a;
    while ((a = va_arg(ap, const char *)) != NULL && n < sizeof(args) / sizeof(args[0]) - 1)
        args[n++] = a;
    va_end(ap);
    args[n] = NULL;
    *output = NULL;
    int rc = harness_ctl(config, args, NULL, output);
    if (!*output)
        *output = strdup("");
    assert_non_null(*output);
    return rc;
}
