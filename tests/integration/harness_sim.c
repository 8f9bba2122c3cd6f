#include "harness_sim.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <curl/curl.h>

#include "buf.h"
#include "harness.h"

/* How long the emulator may take to write its ready file, and to exit on
 * SIGTERM. Python starts in well under a second; the margins are for a
 * loaded 2-core machine. */
#define SIM_START_DEADLINE_MS 30000
#define SIM_STOP_DEADLINE_MS  10000
#define SIM_MAX_ARGS          64
#define SIM_MAX_ADMIN_ANSWER  ((size_t)256 * 1024 * 1024)

struct harness_sim {
    char *dir;
    char *db;
    char *ready;
    char *seed;
    char *logfile;
    char *outfile;
    char **extra; /* NULL-terminated copies */
    pid_t pid;    /* 0 when not running */
    int port;     /* 0 until the first start picked one */
    int admin_port;
    char url[128];
};

static char *sim_path(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (!p)
        fail_msg("out of memory");
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static void sim_write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f)
        fail_msg("cannot write %s: %s", path, strerror(errno));
    fputs(text, f);
    if (fclose(f) != 0)
        fail_msg("cannot write %s: %s", path, strerror(errno));
}

/* The end of the emulator's output, to explain a failure. */
static void sim_print_output(const struct harness_sim *sim)
{
    char text[4096];
    int fd = open(sim->outfile, O_RDONLY);
    if (fd < 0)
        return;
    off_t end = lseek(fd, 0, SEEK_END);
    off_t from = end > (off_t)sizeof(text) - 1 ? end - (off_t)sizeof(text) + 1 : 0;
    ssize_t n = pread(fd, text, sizeof(text) - 1, from);
    close(fd);
    if (n > 0) {
        text[n] = '\0';
        fprintf(stderr, "--- emulator output (%s) ---\n%s\n---\n", sim->outfile, text);
    }
}

static char *sim_default_seed(void)
{
    json_t *seed = json_pack(
        "{s:[{s:s,s:s}], s:[{s:i,s:s},{s:i,s:s}], s:[{s:i,s:s,s:s},{s:i,s:s,s:s}],"
        " s:[{s:i,s:s},{s:i,s:s}]}",
        "users", "login", HARNESS_SIM_LOGIN, "password", HARNESS_SIM_PASSWORD, "departments", "id",
        HARNESS_SIM_DEPT_A, "name", "Upstream", "id", HARNESS_SIM_DEPT_B, "name",
        "Reseller A tasks", "staff", "id", HARNESS_SIM_STAFF_A, "name", "alice", "realname",
        "Alice", "id", HARNESS_SIM_STAFF_B, "name", "bob", "realname", "Bob", "accounts", "id",
        HARNESS_SIM_ACCOUNT_A, "name", "acme", "id", HARNESS_SIM_ACCOUNT_B, "name", "reseller-a");
    if (!seed)
        fail_msg("cannot build the default seed");
    char *text = json_dumps(seed, JSON_INDENT(1));
    json_decref(seed);
    if (!text)
        fail_msg("out of memory");
    return text;
}

/* Reads the ready file if it is complete: the emulator writes it with a
 * rename, so a file that parses is the whole file. */
static int sim_read_ready(struct harness_sim *sim)
{
    json_error_t jerr;
    json_t *r = json_load_file(sim->ready, 0, &jerr);
    if (!r)
        return 0;
    json_int_t port = json_integer_value(json_object_get(r, "port"));
    json_int_t admin = json_integer_value(json_object_get(r, "admin_port"));
    json_decref(r);
    if (port <= 0 || port > 65535 || admin <= 0 || admin > 65535)
        fail_msg("emulator ready file %s has no valid port or admin_port", sim->ready);
    sim->port = (int)port;
    sim->admin_port = (int)admin;
    snprintf(sim->url, sizeof(sim->url), "http://127.0.0.1:%d/billmgr", sim->port);
    return 1;
}

static void sim_spawn(struct harness_sim *sim)
{
    char script[1024], port[16], admin[16];
    const char *argv[SIM_MAX_ARGS];
    size_t n = 0;

    snprintf(script, sizeof(script), "%s/tests/sim/billsim.py", RT_SOURCE_DIR);
    if (access(script, R_OK) != 0)
        fail_msg("the emulator %s is missing: %s", script, strerror(errno));
    snprintf(port, sizeof(port), "%d", sim->port);
    snprintf(admin, sizeof(admin), "%d", sim->admin_port);
    argv[n++] = "python3";
    argv[n++] = script;
    argv[n++] = "--db";
    argv[n++] = sim->db;
    argv[n++] = "--host";
    argv[n++] = "127.0.0.1";
    argv[n++] = "--port";
    argv[n++] = port;
    argv[n++] = "--admin-port";
    argv[n++] = admin;
    argv[n++] = "--ready-file";
    argv[n++] = sim->ready;
    argv[n++] = "--seed";
    argv[n++] = sim->seed;
    argv[n++] = "--log-file";
    argv[n++] = sim->logfile;
    for (size_t i = 0; sim->extra && sim->extra[i]; i++) {
        if (n >= SIM_MAX_ARGS - 1)
            fail_msg("too many emulator arguments");
        argv[n++] = sim->extra[i];
    }
    argv[n] = NULL;

    unlink(sim->ready);
    pid_t parent = getpid();
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        fail_msg("fork: %s", strerror(errno));
    if (pid == 0) {
        /* The emulator dies with the test, even when the test crashes. */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent)
            _exit(127);
        int fd = open(sim->outfile, O_WRONLY | O_CREAT | O_APPEND, 0600);
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
        execvp("python3", (char *const *)argv);
        fprintf(stderr, "cannot run python3: %s\n", strerror(errno));
        _exit(127);
    }
    sim->pid = pid;

    long long deadline = harness_now_ms() + SIM_START_DEADLINE_MS;
    for (;;) {
        if (sim_read_ready(sim))
            return;
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            sim->pid = 0;
            sim_print_output(sim);
            fail_msg("the emulator exited before it was ready (status %d)", status);
        }
        if (harness_now_ms() > deadline) {
            sim_print_output(sim);
            harness_sim_kill(sim);
            fail_msg("the emulator did not write %s within %d ms", sim->ready,
                     SIM_START_DEADLINE_MS);
        }
        poll(NULL, 0, 20);
    }
}

struct harness_sim *harness_sim_start(const char *seed_json, const char *const *extra_args)
{
    struct harness_sim *sim = calloc(1, sizeof(*sim));
    if (!sim)
        fail_msg("out of memory");
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        fail_msg("cannot initialise libcurl");
    sim->dir = harness_tmpdir("billsim");
    sim->db = sim_path(sim->dir, "sim.db");
    sim->ready = sim_path(sim->dir, "ready.json");
    sim->seed = sim_path(sim->dir, "seed.json");
    sim->logfile = sim_path(sim->dir, "sim.log");
    sim->outfile = sim_path(sim->dir, "sim.out");

    size_t n = 0;
    while (extra_args && extra_args[n])
        n++;
    sim->extra = calloc(n + 1, sizeof(*sim->extra));
    if (!sim->extra)
        fail_msg("out of memory");
    for (size_t i = 0; i < n; i++)
        if (!(sim->extra[i] = strdup(extra_args[i])))
            fail_msg("out of memory");

    /* The seed goes in a file so that the password is not in argv. */
    if (seed_json) {
        sim_write_file(sim->seed, seed_json);
    } else {
        char *text = sim_default_seed();
        sim_write_file(sim->seed, text);
        free(text);
    }
    chmod(sim->seed, 0600);
    sim_spawn(sim);
    return sim;
}

static void sim_signal_and_wait(struct harness_sim *sim, int sig)
{
    int status;
    if (!sim || sim->pid <= 0)
        return;
    kill(sim->pid, sig);
    long long deadline = harness_now_ms() + SIM_STOP_DEADLINE_MS;
    for (;;) {
        pid_t r = waitpid(sim->pid, &status, WNOHANG);
        if (r == sim->pid || (r < 0 && errno == ECHILD))
            break;
        if (harness_now_ms() > deadline) {
            kill(sim->pid, SIGKILL);
            waitpid(sim->pid, &status, 0);
            break;
        }
        poll(NULL, 0, 10);
    }
    sim->pid = 0;
}

void harness_sim_stop(struct harness_sim *sim)
{
    sim_signal_and_wait(sim, SIGTERM);
}

void harness_sim_kill(struct harness_sim *sim)
{
    sim_signal_and_wait(sim, SIGKILL);
}

void harness_sim_restart(struct harness_sim *sim)
{
    harness_sim_stop(sim);
    sim_spawn(sim);
}

static int sim_rm(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    remove(path);
    return 0;
}

void harness_sim_free(struct harness_sim *sim)
{
    if (!sim)
        return;
    harness_sim_stop(sim);
    const char *keep = getenv("RT_KEEP_TMP");
    if (sim->dir && !(keep && *keep))
        nftw(sim->dir, sim_rm, 16, FTW_DEPTH | FTW_PHYS);
    for (size_t i = 0; sim->extra && sim->extra[i]; i++)
        free(sim->extra[i]);
    free(sim->extra);
    free(sim->dir);
    free(sim->db);
    free(sim->ready);
    free(sim->seed);
    free(sim->logfile);
    free(sim->outfile);
    free(sim);
    curl_global_cleanup();
}

const char *harness_sim_url(const struct harness_sim *sim)
{
    return sim->url;
}

int harness_sim_port(const struct harness_sim *sim)
{
    return sim->port;
}

int harness_sim_admin_port(const struct harness_sim *sim)
{
    return sim->admin_port;
}

const char *harness_sim_dir(const struct harness_sim *sim)
{
    return sim->dir;
}

static size_t sim_write_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    return buf_append(userdata, ptr, size * nmemb) < 0 ? 0 : size * nmemb;
}

long harness_sim_admin(struct harness_sim *sim, const char *method, const char *path,
                       const char *body, json_t **out)
{
    char url[1024], errbuf[CURL_ERROR_SIZE] = "";
    struct buf answer;
    struct curl_slist *headers = NULL;
    long code = -1;

    if (out)
        *out = NULL;
    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", sim->admin_port, path);
    CURL *e = curl_easy_init();
    if (!e)
        fail_msg("out of memory");
    buf_init(&answer, SIM_MAX_ADMIN_ANSWER);
    headers = curl_slist_append(headers, "Content-Type: application/json");
    headers = curl_slist_append(headers, "Expect:");
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_PROXY, "");
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 60000L);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, sim_write_cb);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &answer);
    if (body) {
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(body));
    } else if (strcmp(method, "GET") != 0) {
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, "");
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)0);
    }
    CURLcode res = curl_easy_perform(e);
    if (res == CURLE_OK) {
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &code);
        if (out && answer.len) {
            json_error_t jerr;
            *out = json_loadb(answer.data, answer.len, 0, &jerr);
        }
    } else {
        fprintf(stderr, "admin %s %s failed: %s\n", method, path,
                errbuf[0] ? errbuf : curl_easy_strerror(res));
    }
    curl_slist_free_all(headers);
    curl_easy_cleanup(e);
    buf_release(&answer);
    return code;
}

json_t *harness_sim_admin_ok(struct harness_sim *sim, const char *method, const char *path,
                             const char *body)
{
    json_t *out = NULL;
    long code = harness_sim_admin(sim, method, path, body, &out);
    if (code < 200 || code > 299 || !out) {
        char *text = out ? json_dumps(out, JSON_COMPACT) : NULL;
        fail_msg("emulator admin %s %s answered %ld %s", method, path, code,
                 text ? text : "(no JSON)");
    }
    return out;
}

long harness_sim_count(struct harness_sim *sim, const char *query)
{
    char path[512];
    snprintf(path, sizeof(path), "/calls/count%s%s", query && *query ? "?" : "",
             query ? query : "");
    json_t *r = harness_sim_admin_ok(sim, "GET", path, NULL);
    json_t *c = json_object_get(r, "count");
    if (!json_is_integer(c))
        fail_msg("emulator admin GET %s gave no count", path);
    long n = (long)json_integer_value(c);
    json_decref(r);
    return n;
}
