#include "harness_rabbit.h"

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

#define CTL_OUTPUT_MAX (4u * 1024 * 1024)
/* A rabbitmqctl call, a kill or a restart of the node (7-13 s measured). */
#define SCRIPT_DEADLINE_MS 120000
#define MAX_ARGS 32
/* A management API answer: the bindings of vhost "/" are the largest. */
#define MGMT_ANSWER_MAX (16u * 1024 * 1024)
/* A management API request on a busy node; a frozen one never answers. */
#define MGMT_TIMEOUT_MS 60000L
#define MGMT_CREDENTIALS_MAX 512

void harness_rabbit_opts(struct broker_opts *o, const char *user, const char *pass)
{
    memset(o, 0, sizeof(*o));
    o->host = "127.0.0.1";
    o->port = atoi(harness_env("RT_AMQP_PORT"));
    o->vhost = "/";
    o->user = user;
    o->password = pass;
    o->verify_peer = 1;
    o->verify_hostname = 1;
    o->heartbeat = 10;
    o->prefetch = 64;
    o->queue_type = "classic";
    o->connect_timeout_ms = 5000;
    o->connection_name = "remotetask integration test";
}

const char *harness_rabbit_tls_file(const char *name)
{
    static char path[1024];
    snprintf(path, sizeof(path), "%s/%s", harness_env("RT_TLS_DIR"), name);
    return path;
}

void harness_rabbit_tls_opts(struct broker_opts *o, const char *user, const char *pass)
{
    static char ca[1024];
    harness_rabbit_opts(o, user, pass);
    snprintf(ca, sizeof(ca), "%s", harness_rabbit_tls_file("ca.pem"));
    o->host = "localhost";
    o->port = atoi(harness_env("RT_AMQPS_PORT"));
    o->ssl = 1;
    o->ca_file = ca;
}

char *harness_rabbit_unique(char *buf, size_t len, const char *tag)
{
    static unsigned counter;
    snprintf(buf, len, "%s-%ld-%u", tag, (long)getpid(), ++counter);
    return buf;
}

/* Runs "rabbitnode CMD DIR args..." without a shell. Feeds stdin_text (may
 * be NULL) to its standard input, collects its standard output into *out
 * (if out is not NULL) and returns its exit status, or -1 when it could not
 * run or passed the deadline (then it is killed). */
static int run_script_q(const char *cmd, const char *const *args, const char *stdin_text,
                        char **out, int quiet)
{
    const char *script = harness_env("RT_RABBITNODE");
    const char *dir = harness_env("RT_RABBIT_DIR");
    const char *argv[MAX_ARGS + 4];
    size_t n = 0;
    argv[n++] = script;
    argv[n++] = cmd;
    argv[n++] = dir;
    for (size_t i = 0; args && args[i]; i++) {
        if (n == MAX_ARGS + 3)
            fail_msg("rabbitnode %s: too many arguments", cmd);
        argv[n++] = args[i];
    }
    argv[n] = NULL;

    int in[2], outp[2];
    if (pipe2(in, O_CLOEXEC) != 0 || pipe2(outp, O_CLOEXEC) != 0)
        fail_msg("pipe: %s", strerror(errno));
    pid_t pid = fork();
    if (pid < 0)
        fail_msg("fork: %s", strerror(errno));
    if (pid == 0) {
        dup2(in[0], 0);
        dup2(outp[1], 1);
        if (quiet) {
            int null = open("/dev/null", O_WRONLY);
            if (null >= 0)
                dup2(null, 2);
        }
        execv(script, (char *const *)argv);
        _exit(127);
    }
    close(in[0]);
    close(outp[1]);
    if (stdin_text) {
        /* The password is a line; the pipe holds it without blocking. */
        size_t len = strlen(stdin_text);
        if (write(in[1], stdin_text, len) != (ssize_t)len || write(in[1], "\n", 1) != 1)
            fprintf(stderr, "harness: cannot write to rabbitnode's stdin\n");
    }
    close(in[1]);

    struct buf b;
    buf_init(&b, CTL_OUTPUT_MAX);
    long long deadline = harness_now_ms() + SCRIPT_DEADLINE_MS;
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
        if (buf_append(&b, chunk, (size_t)got) != 0) {
            /* Over the cap: keep draining so the child can finish. */
            continue;
        }
    }
    close(outp[0]);
    if (timed_out) {
        kill(pid, SIGKILL);
        fprintf(stderr, "harness: rabbitnode %s did not finish within %d s\n", cmd,
                SCRIPT_DEADLINE_MS / 1000);
    }
    int status;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) {
            buf_release(&b);
            fail_msg("waitpid: %s", strerror(errno));
        }
    }
    if (out)
        *out = buf_steal(&b);
    buf_release(&b);
    if (timed_out)
        return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static int run_script(const char *cmd, const char *const *args, const char *stdin_text, char **out)
{
    return run_script_q(cmd, args, stdin_text, out, 0);
}

/* "USER:PASSWORD" of the harness's administrator, from the file rabbitnode
 * wrote (RT_RABBIT_MGMT_CREDENTIALS), into out. */
static void mgmt_credentials(char *out, size_t len)
{
    const char *path = harness_env("RT_RABBIT_MGMT_CREDENTIALS");
    FILE *f = fopen(path, "re");
    if (!f)
        fail_msg("cannot open the management credentials %s: %s", path, strerror(errno));
    char *got = fgets(out, (int)len, f);
    fclose(f);
    if (!got)
        fail_msg("the management credentials file %s is empty", path);
    out[strcspn(out, "\r\n")] = '\0';
    if (!strchr(out, ':'))
        fail_msg("the management credentials file %s does not hold USER:PASSWORD", path);
}

static size_t mgmt_write_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    return buf_append(userdata, ptr, size * nmemb) < 0 ? 0 : size * nmemb;
}

/* One request to the node's management API as the harness's administrator:
 * method on path (already escaped), with a JSON body or NULL. Returns the
 * HTTP status and, when out is not NULL, the answer (malloc'ed, NUL
 * terminated; free() it). Fails the test when there is no answer. The
 * credentials go in the Authorization header only: error messages name
 * the method and path, never them. */
static long mgmt_request(const char *method, const char *path, const char *body, char **out)
{
    char url[2048], userpwd[MGMT_CREDENTIALS_MAX], errbuf[CURL_ERROR_SIZE] = "";
    struct curl_slist *headers = NULL;
    struct buf answer;
    long code = -1;

    if (out)
        *out = NULL;
    if ((size_t)snprintf(url, sizeof(url), "http://127.0.0.1:%s%s",
                         harness_env("RT_RABBIT_MGMT_PORT"), path) >= sizeof(url))
        fail_msg("management API path too long: %.100s...", path);
    mgmt_credentials(userpwd, sizeof(userpwd));
    /* libcurl counts these: this pair and harness_sim's may nest. */
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
        fail_msg("management API %s %s: %s", method, path,
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

/* As mgmt_request, and fails the test unless the status is 2xx (or 404
 * when missing_ok). Returns the status. */
static long mgmt_expect(const char *method, const char *path, const char *body, int missing_ok)
{
    char *answer = NULL;
    long code = mgmt_request(method, path, body, &answer);
    if ((code < 200 || code > 299) && !(missing_ok && code == 404)) {
        fprintf(stderr, "harness: the management API answered: %.500s\n", answer);
        free(answer);
        fail_msg("management API %s %s: HTTP %ld", method, path, code);
    }
    free(answer);
    return code;
}

/* path + the percent-escaped name, into out. */
static void mgmt_path(char *out, size_t len, const char *prefix, const char *name)
{
    char *esc = curl_easy_escape(NULL, name, 0);
    if (!esc)
        fail_msg("out of memory");
    if ((size_t)snprintf(out, len, "%s%s", prefix, esc) >= len)
        fail_msg("management API path too long for \"%.100s\"", name);
    curl_free(esc);
}

/* A JSON document from a json_pack() result, for a request body (free()
 * it). */
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

void harness_rabbit_adduser(const char *user, const char *pass)
{
    char path[1024];
    mgmt_path(path, sizeof(path), "/api/users/", user);
    char *body = mgmt_body(json_pack("{s:s, s:s}", "password", pass, "tags", ""));
    (void)mgmt_expect("PUT", path, body, 0);
    explicit_bzero(body, strlen(body));
    free(body);
    mgmt_path(path, sizeof(path), "/api/permissions/%2F/", user);
    body = mgmt_body(json_pack("{s:s, s:s, s:s}", "configure", ".*", "write", ".*", "read", ".*"));
    (void)mgmt_expect("PUT", path, body, 0);
    free(body);
}

void harness_rabbit_delete_user(const char *user)
{
    char path[1024];
    mgmt_path(path, sizeof(path), "/api/users/", user);
    /* A user that is not there is what cleanup wants. */
    (void)mgmt_expect("DELETE", path, NULL, 1);
}

void harness_rabbit_freeze(void)
{
    int rc = run_script("freeze", NULL, NULL, NULL);
    if (rc != 0)
        fail_msg("rabbitnode freeze failed (exit %d)", rc);
}

void harness_rabbit_thaw(void)
{
    int rc = run_script("thaw", NULL, NULL, NULL);
    if (rc != 0)
        fail_msg("rabbitnode thaw failed (exit %d)", rc);
}

void harness_rabbit_ensure_up(void)
{
    if (run_script_q("status", NULL, NULL, NULL, 1) == 0)
        return;
    (void)run_script_q("thaw", NULL, NULL, NULL, 1);
    if (run_script_q("status", NULL, NULL, NULL, 1) == 0)
        return;
    (void)run_script_q("kill", NULL, NULL, NULL, 1);
    harness_rabbit_restart();
}

void harness_rabbit_kill(void)
{
    int rc = run_script("kill", NULL, NULL, NULL);
    if (rc != 0)
        fail_msg("rabbitnode kill failed (exit %d)", rc);
}

void harness_rabbit_restart(void)
{
    int rc = run_script("restart", NULL, NULL, NULL);
    if (rc != 0)
        fail_msg("rabbitnode restart failed (exit %d)", rc);
}

char *harness_rabbit_ctl(const char *const *args)
{
    char *out = NULL;
    int rc = run_script("ctl", args, NULL, &out);
    if (rc != 0) {
        fprintf(stderr, "harness: rabbitmqctl output: %s\n", out ? out : "");
        free(out);
        fail_msg("rabbitmqctl %s failed (exit %d)", args && args[0] ? args[0] : "", rc);
    }
    if (!out)
        fail_msg("out of memory");
    return out;
}

void harness_rabbit_delete_queue(const char *name)
{
    char path[1024];
    mgmt_path(path, sizeof(path), "/api/queues/%2F/", name);
    /* A queue that is not there is what cleanup wants. */
    (void)mgmt_expect("DELETE", path, NULL, 1);
}

static json_t *ctl_json(const char *const *args)
{
    char *out = harness_rabbit_ctl(args);
    json_error_t e;
    json_t *j = json_loads(out, 0, &e);
    if (!j || !json_is_array(j)) {
        fprintf(stderr, "harness: rabbitmqctl said: %s\n", out);
        free(out);
        fail_msg("rabbitmqctl %s: not a JSON array: %s", args[1], e.text);
    }
    free(out);
    return j;
}

static void arg_value(const json_t *v, char *out, size_t len)
{
    if (json_is_string(v))
        snprintf(out, len, "%s", json_string_value(v));
    else if (json_is_integer(v))
        snprintf(out, len, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    else if (json_is_boolean(v))
        snprintf(out, len, "%s", json_is_true(v) ? "true" : "false");
    else {
        char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        snprintf(out, len, "%s", s ? s : "?");
        free(s);
    }
}

static const char *str_or_empty(const json_t *v)
{
    const char *s = json_string_value(v);
    return s ? s : "";
}

static void parse_queue(const json_t *o, struct harness_queue *q)
{
    memset(q, 0, sizeof(*q));
    snprintf(q->name, sizeof(q->name), "%s", str_or_empty(json_object_get(o, "name")));
    snprintf(q->type, sizeof(q->type), "%s", str_or_empty(json_object_get(o, "type")));
    q->messages = (long)json_integer_value(json_object_get(o, "messages"));
    q->consumers = (long)json_integer_value(json_object_get(o, "consumers"));
    const json_t *args = json_object_get(o, "arguments");
    size_t i;
    const json_t *a;
    /* Each argument is [key, type, value]. */
    json_array_foreach(args, i, a)
    {
        if (q->n_args == HARNESS_QUEUE_MAX_ARGS)
            break;
        struct harness_queue_arg *qa = &q->args[q->n_args++];
        snprintf(qa->key, sizeof(qa->key), "%s", str_or_empty(json_array_get(a, 0)));
        arg_value(json_array_get(a, 2), qa->value, sizeof(qa->value));
    }
}

size_t harness_rabbit_list_queues(struct harness_queue **out)
{
    const char *args[] = {"-q", "list_queues", "name", "messages", "consumers", "arguments",
                          "type", "--formatter", "json", NULL};
    json_t *j = ctl_json(args);
    size_t n = json_array_size(j);
    struct harness_queue *qs = calloc(n ? n : 1, sizeof(*qs));
    if (!qs)
        fail_msg("out of memory");
    for (size_t i = 0; i < n; i++)
        parse_queue(json_array_get(j, i), &qs[i]);
    json_decref(j);
    *out = qs;
    return n;
}

int harness_rabbit_queue(const char *name, struct harness_queue *q)
{
    struct harness_queue *qs;
    size_t n = harness_rabbit_list_queues(&qs);
    int found = 0;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(qs[i].name, name) == 0) {
            *q = qs[i];
            found = 1;
            break;
        }
    }
    free(qs);
    return found;
}

const char *harness_queue_arg(const struct harness_queue *q, const char *key)
{
    for (size_t i = 0; i < q->n_args; i++) {
        if (strcmp(q->args[i].key, key) == 0)
            return q->args[i].value;
    }
    return NULL;
}

int harness_rabbit_has_binding(const char *exchange, const char *queue, const char *key)
{
    char path[2048], tail[1024];
    char *answer = NULL;
    /* The bindings between exactly these two; the default exchange ("")
     * binds every queue implicitly and has no such resource, so it is
     * looked for in the whole list. */
    if (exchange[0]) {
        mgmt_path(tail, sizeof(tail), "", exchange);
        snprintf(path, sizeof(path), "/api/bindings/%%2F/e/%s", tail);
        mgmt_path(tail, sizeof(tail), "/q/", queue);
        if (strlen(path) + strlen(tail) >= sizeof(path))
            fail_msg("management API path too long for \"%.100s\"", queue);
        strcat(path, tail);
    } else {
        snprintf(path, sizeof(path), "/api/bindings/%%2F");
    }
    long code = mgmt_request("GET", path, NULL, &answer);
    if (code == 404) {
        /* The exchange or the queue does not exist: no binding. */
        free(answer);
        return 0;
    }
    json_error_t e;
    json_t *j = code == 200 ? json_loads(answer, 0, &e) : NULL;
    if (!j || !json_is_array(j)) {
        fprintf(stderr, "harness: the management API answered: %.500s\n", answer);
        free(answer);
        json_decref(j);
        fail_msg("management API GET %s: HTTP %ld, not a JSON array", path, code);
    }
    free(answer);
    size_t i;
    json_t *o;
    int found = 0;
    json_array_foreach(j, i, o)
    {
        const char *s = json_string_value(json_object_get(o, "source"));
        const char *d = json_string_value(json_object_get(o, "destination"));
        const char *t = json_string_value(json_object_get(o, "destination_type"));
        const char *k = json_string_value(json_object_get(o, "routing_key"));
        if (s && d && t && k && strcmp(t, "queue") == 0 && strcmp(s, exchange) == 0 &&
            strcmp(d, queue) == 0 && strcmp(k, key) == 0) {
            found = 1;
            break;
        }
    }
    json_decref(j);
    return found;
}
