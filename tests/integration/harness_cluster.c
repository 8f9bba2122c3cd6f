#include "harness_cluster.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <jansson.h>

#include "buf.h"
#include "harness.h"

/* The script caps its own waits (a new cluster 120 s, a node 90 s, a wait
 * after a thaw 150 s); this is the backstop for a script that hangs. */
#define SCRIPT_DEADLINE_MS 200000
#define SCRIPT_OUTPUT_MAX  (4u * 1024 * 1024)
#define SCRIPT_ERRLINE_MAX 512
#define MAX_ARGS           32
#define MAX_NODES          9
#define ENV_FILE_MAX       (64u * 1024)
/* A management API answer about one queue or the users. */
#define MGMT_ANSWER_MAX      (4u * 1024 * 1024)
#define MGMT_TIMEOUT_MS      30000L
#define MGMT_CREDENTIALS_MAX 512
/* How long a quorum queue may take to elect a new leader. */
#define LEADER_DEADLINE_MS 60000
#define LEADER_POLL_MS     100

enum node_state {
    NODE_UP = 0, /* what the harness last made it; the script knows better */
    NODE_DOWN,   /* killed or stopped */
    NODE_FROZEN,
};

struct cluster_node {
    char name[128];
    int amqp_port, amqps_port, mgmt_port;
    enum node_state state;
};

/* The one cluster of the test program. */
static struct {
    int active;   /* started or attached, not stopped yet */
    int attached; /* scripts/test's: never stopped here */
    int n;
    int lifeline; /* write end of the pipe the script's watcher reads; -1 */
    char dir[1024], script[1024], credentials[1024], tls_dir[1024];
    struct cluster_node node[MAX_NODES + 1]; /* 1..n */
} cl = {.lifeline = -1};

static void need_cluster(void)
{
    if (!cl.active)
        fail_msg("no cluster: call harness_cluster_start() in the group setup first");
}

static struct cluster_node *node_at(int i)
{
    need_cluster();
    if (i < 1 || i > cl.n)
        fail_msg("node %d is not a node of the cluster (1..%d)", i, cl.n);
    return &cl.node[i];
}

/* How one run of the script goes. */
struct script_run {
    const char *stdin_text;            /* one line for its standard input, or NULL */
    int stdin_fd;                      /* >= 0: this is its standard input instead */
    char **out;                        /* its standard output (malloc'ed), or NULL */
    int quiet;                         /* do not copy its standard error to ours */
    char last_err[SCRIPT_ERRLINE_MAX]; /* the last line it wrote there */
};

/* Keeps the last complete line of what arrives on the script's stderr,
 * and copies it to ours unless quiet. */
static void take_stderr(struct script_run *r, struct buf *line, const char *data, size_t len)
{
    if (!r->quiet)
        (void)!write(2, data, len);
    for (size_t k = 0; k < len; k++) {
        if (data[k] == '\n') {
            if (line->len)
                snprintf(r->last_err, sizeof(r->last_err), "%s", buf_cstr(line));
            buf_reset(line);
        } else {
            /* A line longer than the cap keeps its beginning. */
            (void)buf_append(line, &data[k], 1);
        }
    }
}

/* Runs "rabbitcluster CMD DIR args..." without a shell and returns its exit
 * status, or -1 when it could not run or passed the deadline (then it is
 * killed). */
static int run_script(const char *cmd, const char *const *args, struct script_run *r)
{
    const char *argv[MAX_ARGS + 4];
    size_t n = 0;
    argv[n++] = cl.script;
    argv[n++] = cmd;
    argv[n++] = cl.dir;
    for (size_t i = 0; args && args[i]; i++) {
        if (n == MAX_ARGS + 3)
            fail_msg("rabbitcluster %s: too many arguments", cmd);
        argv[n++] = args[i];
    }
    argv[n] = NULL;
    r->last_err[0] = '\0';
    if (r->out)
        *r->out = NULL;

    int in[2] = {-1, -1}, outp[2], errp[2];
    if ((r->stdin_fd < 0 && pipe2(in, O_CLOEXEC) != 0) || pipe2(outp, O_CLOEXEC) != 0 ||
        pipe2(errp, O_CLOEXEC) != 0)
        fail_msg("pipe: %s", strerror(errno));
    pid_t pid = fork();
    if (pid < 0)
        fail_msg("fork: %s", strerror(errno));
    if (pid == 0) {
        dup2(r->stdin_fd >= 0 ? r->stdin_fd : in[0], 0);
        dup2(outp[1], 1);
        dup2(errp[1], 2);
        execv(cl.script, (char *const *)argv);
        _exit(127);
    }
    if (r->stdin_fd < 0) {
        close(in[0]);
        if (r->stdin_text) {
            /* A password is a line; the pipe holds it without blocking. */
            size_t len = strlen(r->stdin_text);
            if (write(in[1], r->stdin_text, len) != (ssize_t)len || write(in[1], "\n", 1) != 1)
                fprintf(stderr, "harness: cannot write to rabbitcluster's stdin\n");
        }
        close(in[1]);
    }
    close(outp[1]);
    close(errp[1]);

    struct buf out, line;
    buf_init(&out, SCRIPT_OUTPUT_MAX);
    buf_init(&line, SCRIPT_ERRLINE_MAX - 1);
    long long deadline = harness_now_ms() + SCRIPT_DEADLINE_MS;
    int timed_out = 0, open_fds = 2;
    struct pollfd p[2] = {{.fd = outp[0], .events = POLLIN}, {.fd = errp[0], .events = POLLIN}};
    while (open_fds > 0) {
        long long left = deadline - harness_now_ms();
        if (left <= 0) {
            timed_out = 1;
            break;
        }
        int got = poll(p, 2, (int)left);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            fail_msg("poll: %s", strerror(errno));
        for (int k = 0; k < 2; k++) {
            if (p[k].fd < 0 || !p[k].revents)
                continue;
            char chunk[4096];
            ssize_t len = read(p[k].fd, chunk, sizeof(chunk));
            if (len < 0 && errno == EINTR)
                continue;
            if (len <= 0) {
                close(p[k].fd);
                p[k].fd = -1;
                open_fds--;
            } else if (k == 0) {
                /* Over the cap the rest is dropped, and the child can finish. */
                (void)buf_append(&out, chunk, (size_t)len);
            } else {
                take_stderr(r, &line, chunk, (size_t)len);
            }
        }
    }
    for (int k = 0; k < 2; k++) {
        if (p[k].fd >= 0)
            close(p[k].fd);
    }
    if (line.len)
        snprintf(r->last_err, sizeof(r->last_err), "%s", buf_cstr(&line));
    buf_release(&line);
    if (timed_out) {
        kill(pid, SIGKILL);
        fprintf(stderr, "harness: rabbitcluster %s did not finish within %d s\n", cmd,
                SCRIPT_DEADLINE_MS / 1000);
        snprintf(r->last_err, sizeof(r->last_err), "rabbitcluster %s did not finish within %d s",
                 cmd, SCRIPT_DEADLINE_MS / 1000);
    }
    int status;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) {
            buf_release(&out);
            fail_msg("waitpid: %s", strerror(errno));
        }
    }
    if (r->out) {
        *r->out = buf_steal(&out);
        if (!*r->out)
            fail_msg("out of memory");
    }
    buf_release(&out);
    if (timed_out)
        return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* Runs the script and fails the test unless it exits 0. */
static void script_ok(const char *what, const char *cmd, const char *const *args)
{
    struct script_run r = {.stdin_fd = -1};
    int rc = run_script(cmd, args, &r);
    if (rc != 0)
        fail_msg("%s failed (rabbitcluster %s, exit %d): %s", what, cmd, rc,
                 r.last_err[0] ? r.last_err : "no reason given");
}

/* Runs a per-node command ("kill DIR I") and fails the test unless it
 * exits 0. */
static void node_cmd(const char *what, const char *cmd, int i)
{
    char idx[16];
    (void)node_at(i);
    snprintf(idx, sizeof(idx), "%d", i);
    const char *args[] = {idx, NULL};
    char full[128];
    snprintf(full, sizeof(full), "%s node %d", what, i);
    script_ok(full, cmd, args);
}

/* Copies value into a field of the cluster, failing the test when it does
 * not fit: a path cut short would name another file. */
static void set_field(char *dst, size_t len, const char *key, const char *value)
{
    if ((size_t)snprintf(dst, len, "%s", value) >= len)
        fail_msg("%s in %s/env is too long", key, cl.dir);
}

static int port_value(const char *key, const char *value)
{
    char *end;
    long v = strtol(value, &end, 10);
    if (*value == '\0' || *end != '\0' || v < 1 || v > 65535)
        fail_msg("%s in %s/env is not a port: \"%.40s\"", key, cl.dir, value);
    return (int)v;
}

/* Reads DIR/env (KEY=VALUE lines, as the script writes them) into cl. */
static void read_env(void)
{
    char path[1100];
    snprintf(path, sizeof(path), "%s/env", cl.dir);
    FILE *f = fopen(path, "re");
    if (!f)
        fail_msg("cannot open the cluster's env %s: %s", path, strerror(errno));
    char line[2048];
    size_t total = 0;
    cl.n = 0;
    while (fgets(line, sizeof(line), f)) {
        total += strlen(line);
        if (total > ENV_FILE_MAX) {
            fclose(f);
            fail_msg("%s is larger than %u bytes", path, ENV_FILE_MAX);
        }
        line[strcspn(line, "\r\n")] = '\0';
        char *eq = strchr(line, '=');
        if (!eq)
            continue;
        *eq = '\0';
        const char *key = line, *value = eq + 1;
        int i;
        char rest[64];
        if (strcmp(key, "RT_CLUSTER_NODES") == 0) {
            cl.n = atoi(value);
            if (cl.n < 1 || cl.n > MAX_NODES) {
                fclose(f);
                fail_msg("RT_CLUSTER_NODES in %s is not 1..%d: \"%.20s\"", path, MAX_NODES, value);
            }
        } else if (strcmp(key, "RT_CLUSTER_SCRIPT") == 0) {
            set_field(cl.script, sizeof(cl.script), key, value);
        } else if (strcmp(key, "RT_CLUSTER_MGMT_CREDENTIALS") == 0) {
            set_field(cl.credentials, sizeof(cl.credentials), key, value);
        } else if (strcmp(key, "RT_CLUSTER_TLS_DIR") == 0) {
            set_field(cl.tls_dir, sizeof(cl.tls_dir), key, value);
        } else if (sscanf(key, "RT_CLUSTER_%63[A-Z_]%d", rest, &i) == 2 && i >= 1 &&
                   i <= MAX_NODES) {
            struct cluster_node *nd = &cl.node[i];
            if (strcmp(rest, "NODE_") == 0)
                set_field(nd->name, sizeof(nd->name), key, value);
            else if (strcmp(rest, "AMQP_PORT_") == 0)
                nd->amqp_port = port_value(key, value);
            else if (strcmp(rest, "AMQPS_PORT_") == 0)
                nd->amqps_port = port_value(key, value);
            else if (strcmp(rest, "MGMT_PORT_") == 0)
                nd->mgmt_port = port_value(key, value);
        }
    }
    fclose(f);
    if (cl.n == 0 || !cl.script[0] || !cl.credentials[0] || !cl.tls_dir[0])
        fail_msg("%s lacks RT_CLUSTER_NODES, _SCRIPT, _MGMT_CREDENTIALS or _TLS_DIR", path);
    for (int i = 1; i <= cl.n; i++) {
        struct cluster_node *nd = &cl.node[i];
        if (!nd->name[0] || !nd->amqp_port || !nd->amqps_port || !nd->mgmt_port)
            fail_msg("%s lacks the name or a port of node %d", path, i);
        nd->state = NODE_UP;
    }
}

/* What to do when a cluster of n nodes cannot start: skip the program
 * when the environment says so, else fail the test. */
static void start_failed(int n, const char *reason)
{
    const char *prefix = "rabbitcluster: ";
    if (strncmp(reason, prefix, strlen(prefix)) == 0)
        reason += strlen(prefix);
    const char *skip = getenv("RT_CLUSTER_SKIP");
    if (skip && strcmp(skip, "1") == 0) {
        printf("cluster tests skipped: %s\n", reason);
        fflush(stdout);
        /* The watcher sees the lifeline close and stops what remains. */
        exit(HARNESS_CLUSTER_SKIPPED);
    }
    fail_msg("the cluster of %d nodes did not start: %s (on a machine that cannot run them, "
             "RT_CLUSTER_SKIP=1 skips the cluster tests)",
             n, reason);
}

void harness_cluster_start(int n)
{
    if (cl.active)
        fail_msg("harness_cluster_start() called twice");
    if (n < 0 || n > MAX_NODES)
        fail_msg("harness_cluster_start(%d): a cluster has 1 to %d nodes", n, MAX_NODES);
    memset(cl.node, 0, sizeof(cl.node));
    const char *attach = getenv("RT_CLUSTER_DIR");
    if (attach && *attach) {
        if (snprintf(cl.dir, sizeof(cl.dir), "%s", attach) >= (int)sizeof(cl.dir))
            fail_msg("RT_CLUSTER_DIR is too long");
        read_env();
        if (n && n != cl.n)
            fail_msg("the cluster in RT_CLUSTER_DIR=%s has %d nodes, the test needs %d", cl.dir,
                     cl.n, n);
        cl.attached = 1;
        cl.active = 1;
        return;
    }

    char *dir = harness_tmpdir("cluster");
    int fits = snprintf(cl.dir, sizeof(cl.dir), "%s", dir) < (int)sizeof(cl.dir);
    free(dir);
    if (!fits)
        fail_msg("the scratch directory's path is too long");
    if (snprintf(cl.script, sizeof(cl.script), "%s/tests/harness/rabbitcluster", RT_SOURCE_DIR) >=
        (int)sizeof(cl.script))
        fail_msg("the source directory's path is too long");

    /* The lifeline: the script's watcher holds the read end and stops the
     * cluster when this program's write end closes, however it ends. Both
     * ends close on exec, so that no other child holds them. */
    int life[2];
    if (pipe2(life, O_CLOEXEC) != 0)
        fail_msg("pipe: %s", strerror(errno));
    char count[16];
    snprintf(count, sizeof(count), "%d", n ? n : 3);
    const char *args[] = {"-n", count, "--lifeline", NULL};
    struct script_run r = {.stdin_fd = life[0]};
    long long t0 = harness_now_ms();
    int rc = run_script("start", args, &r);
    close(life[0]);
    cl.lifeline = life[1];
    if (rc != 0) {
        close(cl.lifeline);
        cl.lifeline = -1;
        char reason[SCRIPT_ERRLINE_MAX + 64];
        snprintf(reason, sizeof(reason), "%s", r.last_err[0] ? r.last_err : "no reason given");
        start_failed(n ? n : 3, reason);
    }
    read_env();
    cl.active = 1;
    fprintf(stderr, "harness: %d-node cluster in %s running after %lld ms\n", cl.n, cl.dir,
            harness_now_ms() - t0);
}

void harness_cluster_heal(void)
{
    need_cluster();
    /* "start DIR" on an existing cluster thaws the frozen nodes, starts the
     * stopped ones and waits until every node runs in the cluster. */
    script_ok("bringing every node of the cluster back", "start", NULL);
    for (int i = 1; i <= cl.n; i++)
        cl.node[i].state = NODE_UP;
}

void harness_cluster_stop(void)
{
    if (!cl.active)
        return;
    if (cl.attached) {
        harness_cluster_heal();
    } else {
        /* Nothing of a test's own cluster is read again: killing it
         * spares the 5 s a graceful stop of RabbitMQ 3.10 waits. */
        const char *args[] = {"--kill", NULL};
        struct script_run r = {.stdin_fd = -1};
        int rc = run_script("stop", args, &r);
        if (cl.lifeline >= 0)
            close(cl.lifeline);
        cl.lifeline = -1;
        cl.active = 0;
        if (rc != 0)
            fail_msg("stopping the cluster in %s failed (exit %d): %s", cl.dir, rc, r.last_err);
    }
    cl.active = 0;
}

int harness_cluster_nodes(void)
{
    need_cluster();
    return cl.n;
}

int harness_cluster_amqp_port(int i)
{
    return node_at(i)->amqp_port;
}

int harness_cluster_amqps_port(int i)
{
    return node_at(i)->amqps_port;
}

const char *harness_cluster_node_name(int i)
{
    return node_at(i)->name;
}

int harness_cluster_node_index(const char *name)
{
    need_cluster();
    for (int i = 1; i <= cl.n; i++) {
        if (name && strcmp(cl.node[i].name, name) == 0)
            return i;
    }
    return 0;
}

void harness_cluster_opts(struct broker_opts *o, int i, const char *user, const char *pass)
{
    memset(o, 0, sizeof(*o));
    o->host = "127.0.0.1";
    o->port = node_at(i)->amqp_port;
    o->vhost = "/";
    o->user = user;
    o->password = pass;
    o->verify_peer = 1;
    o->verify_hostname = 1;
    o->heartbeat = 10;
    o->prefetch = 64;
    o->queue_type = "classic";
    o->connect_timeout_ms = 5000;
    o->connection_name = "remotetask cluster test";
}

const char *harness_cluster_tls_file(const char *name)
{
    static char path[1200];
    need_cluster();
    snprintf(path, sizeof(path), "%s/%s", cl.tls_dir, name);
    return path;
}

char *harness_cluster_uris(char *buf, size_t len, const char *user)
{
    need_cluster();
    if (len == 0)
        fail_msg("harness_cluster_uris: no room at all for %d URIs", cl.n);
    char *esc = curl_easy_escape(NULL, user, 0);
    if (!esc)
        fail_msg("out of memory");
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 1; i <= cl.n; i++) {
        int w = snprintf(buf + used, len - used, "%s\"amqp://%s@127.0.0.1:%d/%%2f\"",
                         i > 1 ? ", " : "", esc, cl.node[i].amqp_port);
        if (w < 0 || (size_t)w >= len - used) {
            curl_free(esc);
            fail_msg("harness_cluster_uris: %zu bytes are too few for %d URIs", len, cl.n);
        }
        used += (size_t)w;
    }
    curl_free(esc);
    return buf;
}

/* The node the harness asks about the cluster: the first one it has not
 * taken down. */
static struct cluster_node *mgmt_node(void)
{
    need_cluster();
    for (int i = 1; i <= cl.n; i++) {
        if (cl.node[i].state == NODE_UP)
            return &cl.node[i];
    }
    fail_msg("every node of the cluster is down or frozen: no management API to ask");
    return NULL;
}

/* "USER:PASSWORD" of the harness's administrator, from the file the script
 * wrote, into out. */
static void mgmt_credentials(char *out, size_t len)
{
    FILE *f = fopen(cl.credentials, "re");
    if (!f)
        fail_msg("cannot open the management credentials %s: %s", cl.credentials, strerror(errno));
    char *got = fgets(out, (int)len, f);
    fclose(f);
    if (!got)
        fail_msg("the management credentials file %s is empty", cl.credentials);
    out[strcspn(out, "\r\n")] = '\0';
    if (!strchr(out, ':'))
        fail_msg("the management credentials file %s does not hold USER:PASSWORD", cl.credentials);
}

static size_t mgmt_write_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    return buf_append(userdata, ptr, size * nmemb) < 0 ? 0 : size * nmemb;
}

/* One request to node nd's management API as the harness's administrator
 * (the pattern of harness_rabbit.c's, for a port of the cluster): method on
 * path (already escaped), with a JSON body or NULL. Returns the HTTP status
 * and, when out is not NULL, the answer (malloc'ed; free() it). Fails the
 * test when there is no answer. The credentials go in the Authorization
 * header only: messages name the method and path, never them. */
static long mgmt_request(const struct cluster_node *nd, const char *method, const char *path,
                         const char *body, char **out)
{
    char url[2048], userpwd[MGMT_CREDENTIALS_MAX], errbuf[CURL_ERROR_SIZE] = "";
    struct curl_slist *headers = NULL;
    struct buf answer;
    long code = -1;

    if (out)
        *out = NULL;
    if ((size_t)snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", nd->mgmt_port, path) >=
        sizeof(url))
        fail_msg("management API path too long: %.100s...", path);
    mgmt_credentials(userpwd, sizeof(userpwd));
    /* libcurl counts these: this pair and the other harnesses' may nest. */
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        fail_msg("cannot initialise libcurl");
    CURL *e = curl_easy_init();
    if (!e)
        fail_msg("out of memory");
    buf_init(&answer, MGMT_ANSWER_MAX);
    headers = curl_slist_append(headers, "Content-Type: application/json");
    headers = curl_slist_append(headers, "Expect:");
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_PROXY, "");
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, MGMT_TIMEOUT_MS);
    curl_easy_setopt(e, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
    curl_easy_setopt(e, CURLOPT_USERPWD, userpwd);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, mgmt_write_cb);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &answer);
    if (body) {
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(body));
    }
    CURLcode res = curl_easy_perform(e);
    explicit_bzero(userpwd, sizeof(userpwd));
    if (res == CURLE_OK)
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &code);
    curl_slist_free_all(headers);
    curl_easy_cleanup(e);
    curl_global_cleanup();
    if (res != CURLE_OK) {
        buf_release(&answer);
        fail_msg("management API of %s: %s %s: %s", nd->name, method, path,
                 errbuf[0] ? errbuf : curl_easy_strerror(res));
    }
    if (out) {
        *out = buf_steal(&answer);
        if (!*out)
            fail_msg("out of memory");
    }
    buf_release(&answer);
    return code;
}

/* As mgmt_request to a node that is up, and fails the test unless the
 * status is 2xx (or 404 when missing_ok). */
static void mgmt_expect(const char *method, const char *path, const char *body, int missing_ok)
{
    char *answer = NULL;
    struct cluster_node *nd = mgmt_node();
    long code = mgmt_request(nd, method, path, body, &answer);
    if ((code < 200 || code > 299) && !(missing_ok && code == 404)) {
        fprintf(stderr, "harness: the management API answered: %.500s\n", answer);
        free(answer);
        fail_msg("management API of %s: %s %s: HTTP %ld", nd->name, method, path, code);
    }
    free(answer);
}

/* prefix + the percent-escaped name, into out. */
static void mgmt_path(char *out, size_t len, const char *prefix, const char *name)
{
    char *esc = curl_easy_escape(NULL, name, 0);
    if (!esc)
        fail_msg("out of memory");
    if ((size_t)snprintf(out, len, "%s%s", prefix, esc) >= len)
        fail_msg("management API path too long for \"%.100s\"", name);
    curl_free(esc);
}

static char *mgmt_body(json_t *doc)
{
    if (!doc)
        fail_msg("out of memory");
    char *text = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    if (!text)
        fail_msg("out of memory");
    return text;
}

void harness_cluster_adduser(const char *user, const char *pass)
{
    char path[1024];
    mgmt_path(path, sizeof(path), "/api/users/", user);
    char *body = mgmt_body(json_pack("{s:s, s:s}", "password", pass, "tags", ""));
    mgmt_expect("PUT", path, body, 0);
    explicit_bzero(body, strlen(body));
    free(body);
    mgmt_path(path, sizeof(path), "/api/permissions/%2F/", user);
    body = mgmt_body(json_pack("{s:s, s:s, s:s}", "configure", ".*", "write", ".*", "read", ".*"));
    mgmt_expect("PUT", path, body, 0);
    free(body);
}

void harness_cluster_delete_user(const char *user)
{
    char path[1024];
    mgmt_path(path, sizeof(path), "/api/users/", user);
    mgmt_expect("DELETE", path, NULL, 1);
}

void harness_cluster_declare_queue(const char *name, const char *type)
{
    char path[1024];
    mgmt_path(path, sizeof(path), "/api/queues/%2F/", name);
    char *body = mgmt_body(json_pack("{s:b, s:b, s:{s:s}}", "durable", 1, "auto_delete", 0,
                                     "arguments", "x-queue-type", type));
    mgmt_expect("PUT", path, body, 0);
    free(body);
}

void harness_cluster_delete_queue(const char *name)
{
    char path[1024];
    mgmt_path(path, sizeof(path), "/api/queues/%2F/", name);
    mgmt_expect("DELETE", path, NULL, 1);
}

void harness_cluster_kill(int i)
{
    node_cmd("killing", "kill", i);
    cl.node[i].state = NODE_DOWN;
}

void harness_cluster_stop_node(int i)
{
    node_cmd("stopping", "stop", i);
    cl.node[i].state = NODE_DOWN;
}

void harness_cluster_start_node(int i)
{
    node_cmd("starting", "start", i);
    cl.node[i].state = NODE_UP;
}

void harness_cluster_freeze(int i)
{
    node_cmd("freezing", "freeze", i);
    cl.node[i].state = NODE_FROZEN;
}

void harness_cluster_thaw(int i)
{
    node_cmd("thawing", "thaw", i);
    /* Running again; whether it is back in the cluster is for
     * harness_cluster_wait_node() to find out, and the harness asks
     * others until then. */
    cl.node[i].state = NODE_DOWN;
}

void harness_cluster_wait_node(int i)
{
    node_cmd("waiting for", "wait", i);
    cl.node[i].state = NODE_UP;
}

int harness_cluster_node_up(int i)
{
    char idx[16];
    (void)node_at(i);
    snprintf(idx, sizeof(idx), "%d", i);
    const char *args[] = {idx, NULL};
    struct script_run r = {.stdin_fd = -1, .quiet = 1};
    return run_script("status", args, &r) == 0;
}

/* Runs rabbitcluster ctl against node i; its exit status, with its
 * standard output in *out and its last error line in err. */
static int ctl_run(int i, const char *const *args, char **out, char *err, size_t err_len)
{
    char idx[16];
    const char *argv[MAX_ARGS + 1];
    size_t n = 0;
    (void)node_at(i);
    snprintf(idx, sizeof(idx), "%d", i);
    argv[n++] = idx;
    for (size_t k = 0; args && args[k]; k++) {
        if (n == MAX_ARGS)
            fail_msg("rabbitcluster ctl: too many arguments");
        argv[n++] = args[k];
    }
    argv[n] = NULL;
    *out = NULL;
    struct script_run r = {.stdin_fd = -1, .out = out};
    int rc = run_script("ctl", argv, &r);
    snprintf(err, err_len, "%s", r.last_err);
    return rc;
}

char *harness_cluster_ctl(int i, const char *const *args)
{
    char *out, err[512];
    int rc = ctl_run(i, args, &out, err, sizeof(err));
    if (rc != 0) {
        fprintf(stderr, "harness: rabbitmqctl output: %s\n", out ? out : "");
        free(out);
        fail_msg("rabbitmqctl %s against node %d failed (exit %d): %s",
                 args && args[0] ? args[0] : "", i, rc, err);
    }
    return out;
}

char *harness_cluster_ctl_try(int i, const char *const *args)
{
    char *out, err[512];
    if (ctl_run(i, args, &out, err, sizeof(err)) == 0)
        return out;
    fprintf(stderr, "harness: rabbitmqctl %s against node %d failed: %s\n",
            args && args[0] ? args[0] : "", i, err);
    free(out);
    return NULL;
}

int harness_cluster_queue_leader(const char *queue)
{
    char path[1024], *answer = NULL;
    struct cluster_node *nd = mgmt_node();
    mgmt_path(path, sizeof(path), "/api/queues/%2F/", queue);
    long code = mgmt_request(nd, "GET", path, NULL, &answer);
    if (code == 404) {
        free(answer);
        fail_msg("no queue \"%s\" in vhost / (asked %s)", queue, nd->name);
    }
    json_error_t e;
    json_t *q = code == 200 ? json_loads(answer, 0, &e) : NULL;
    if (!json_is_object(q)) {
        fprintf(stderr, "harness: the management API answered: %.500s\n", answer);
        free(answer);
        json_decref(q);
        fail_msg("management API of %s: GET %s: HTTP %ld, not a JSON object", nd->name, path, code);
    }
    free(answer);
    const char *type = json_string_value(json_object_get(q, "type"));
    int quorum = type && strcmp(type, "quorum") == 0;
    /* A quorum queue's leader as its members elected it; a classic queue's
     * home node. */
    const char *where = json_string_value(json_object_get(q, quorum ? "leader" : "node"));
    int idx = harness_cluster_node_index(where);
    json_decref(q);
    /* A leader the harness took down is one the cluster has not replaced
     * yet. */
    if (idx && cl.node[idx].state != NODE_UP)
        idx = 0;
    return idx;
}

int harness_cluster_wait_leader(const char *queue, int not_on)
{
    long long deadline = harness_now_ms() + LEADER_DEADLINE_MS;
    for (;;) {
        int idx = harness_cluster_queue_leader(queue);
        if (idx && idx != not_on)
            return idx;
        if (harness_now_ms() > deadline)
            fail_msg("queue \"%s\" had no leader on a running node other than node %d "
                     "within %d s",
                     queue, not_on, LEADER_DEADLINE_MS / 1000);
        (void)poll(NULL, 0, LEADER_POLL_MS);
    }
}
