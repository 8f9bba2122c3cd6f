/*
 * it_prometheus.c - the alerting rules on a real Prometheus (issue 11, item
 * 4): Debian's prometheus, started privately on a free port, scrapes a
 * scenario's two daemons (tests/integration/harness_daemon.h) with the
 * configuration and rules of dist/prometheus/, and its HTTP API shows that
 *
 * - every alert of dist/prometheus/remotetask.rules.yml is loaded, healthy
 *   (/api/v1/rules);
 * - both targets are up (/api/v1/targets);
 * - once Prometheus sees remotetask_api_up 1 for both daemons,
 *   RemotetaskApiUnreachable is not active (/api/v1/query, /api/v1/alerts);
 *   an outage of the target BILLmanager's API (the emulator's down switch)
 *   while a task travels makes it go pending for the server's instance
 *   only, then firing; once the API is back and the task applied, it is
 *   gone (/api/v1/alerts);
 * - the tasks sent during the outage arrive once each: the test prints
 *   sent, applied, lost and duplicated.
 *
 * The configuration is dist/prometheus/prometheus.yml rendered: the two
 * targets are the daemons' metrics ports, scrape_interval and
 * evaluation_interval 1 s, and rule_files the rendered rules. The rules are
 * dist/prometheus/remotetask.rules.yml with every "for: 5m" made "for:
 * 10s" (RULES_FOR): a pending alert needs no more than one evaluation with
 * the expression true, but a test cannot wait 5 minutes to see it fire.
 * Everything else in both files is as shipped.
 *
 * A missing /usr/bin/prometheus fails the test (it is part of the test
 * environment that scripts/lib.sh installs).
 */
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
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <jansson.h>

#include "buf.h"
#include "harness.h"
#include "harness_daemon.h"
#include "harness_flow.h"
#include "harness_sim.h"

#define PROMETHEUS "/usr/bin/prometheus"
/* Prometheus starts (replays an empty WAL, loads the rules) in a second or
 * two; under a loaded machine far longer. */
#define READY_DEADLINE_MS 60000
/* Scrapes and evaluations run every second: a state shows within a few. */
#define STATE_DEADLINE_MS 30000
/* The forward retry tiers are 1 s, 5 s and 30 s: a task first tried during
 * the outage is applied by the third retry at the latest. */
#define APPLY_DEADLINE_MS 90000
#define API_ANSWER_MAX    ((size_t)4 * 1024 * 1024)
#define FILE_MAX          ((size_t)1024 * 1024)
#define RULES_FOR         "for: 10s"
#define OUTAGE_TASKS      3

#define EXPECT(s, cond, ...)                                                                       \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            prom_print_log();                                                                      \
            harness_scenario_print_logs(s);                                                        \
            fail_msg(__VA_ARGS__);                                                                 \
        }                                                                                          \
    } while (0)

static struct harness_scenario *current;

/* The private Prometheus: its process, port and log. */
static pid_t prom_pid;
static int prom_port;
static char prom_log[1024];

static void prom_print_log(void)
{
    if (!prom_log[0])
        return;
    FILE *f = fopen(prom_log, "r");
    if (!f)
        return;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, size > 8192 ? size - 8192 : 0, SEEK_SET);
    char chunk[8193];
    size_t n = fread(chunk, 1, sizeof(chunk) - 1, f);
    chunk[n] = '\0';
    fclose(f);
    fprintf(stderr, "---- the tail of %s:\n%s\n----\n", prom_log, chunk);
}

/* Stops Prometheus (SIGTERM, then SIGKILL after 15 s); cleanup, never
 * fails. */
static void prom_stop(void)
{
    if (prom_pid <= 0)
        return;
    kill(prom_pid, SIGTERM);
    long long deadline = harness_now_ms() + 15000;
    int status;
    while (waitpid(prom_pid, &status, WNOHANG) == 0) {
        if (harness_now_ms() > deadline) {
            kill(prom_pid, SIGKILL);
            waitpid(prom_pid, &status, 0);
            break;
        }
        poll(NULL, 0, 50);
    }
    prom_pid = 0;
}

static int teardown(void **state)
{
    (void)state;
    prom_stop();
    harness_scenario_free(current);
    current = NULL;
    return 0;
}

/* ---- files ------------------------------------------------------------------ */

static char *read_file(struct harness_scenario *s, const char *path)
{
    struct buf b;
    char chunk[8192];
    buf_init(&b, FILE_MAX);
    FILE *f = fopen(path, "r");
    EXPECT(s, f, "cannot read %s: %s", path, strerror(errno));
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        EXPECT(s, buf_append(&b, chunk, n) == 0, "%s is larger than %zu bytes", path, FILE_MAX);
    fclose(f);
    char *text = buf_steal(&b);
    EXPECT(s, text, "out of memory");
    return text;
}

static void write_file(struct harness_scenario *s, const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    EXPECT(s, f, "cannot write %s: %s", path, strerror(errno));
    EXPECT(s, fputs(text, f) >= 0 && fclose(f) == 0, "cannot write %s", path);
}

/* Replaces every occurrence of old in *text with repl (*text is
 * reallocated) and returns how many there were. */
static size_t replace_all(char **text, const char *old, const char *repl)
{
    size_t olen = strlen(old), rlen = strlen(repl), count = 0;
    for (const char *p = *text; (p = strstr(p, old)) != NULL; p += olen)
        count++;
    if (!count)
        return 0;
    char *out = malloc(strlen(*text) + count * rlen + 1), *w = out;
    if (!out)
        fail_msg("out of memory");
    const char *p = *text, *q;
    while ((q = strstr(p, old)) != NULL) {
        memcpy(w, p, (size_t)(q - p));
        w += q - p;
        memcpy(w, repl, rlen);
        w += rlen;
        p = q + olen;
    }
    strcpy(w, p);
    free(*text);
    *text = out;
    return count;
}

/* Replaces old in *text, failing the test when the shipped file no longer
 * holds it (the file and this test must change together). */
static void render(struct harness_scenario *s, char **text, const char *file, const char *old,
                   const char *repl)
{
    EXPECT(s, replace_all(text, old, repl) > 0,
           "dist/prometheus/%s no longer holds \"%s\", which this test renders", file, old);
}

/* The alert names of a rules file: its "- alert: NAME" lines. Returns how
 * many (at most max), names copied into names[i] (64 bytes each). */
static size_t alert_names(const char *rules, char names[][64], size_t max)
{
    size_t n = 0;
    for (const char *p = rules; (p = strstr(p, "- alert: ")) != NULL && n < max; n++) {
        p += strlen("- alert: ");
        size_t len = strcspn(p, " \r\n");
        snprintf(names[n], 64, "%.*s", (int)(len < 63 ? len : 63), p);
    }
    return n;
}

/* ---- the HTTP API ------------------------------------------------------------ */

static size_t http_write(char *ptr, size_t size, size_t nmemb, void *arg)
{
    return buf_append(arg, ptr, size * nmemb) < 0 ? 0 : size * nmemb;
}

/* GET http://127.0.0.1:prom_port<path>: the HTTP status (0 when no answer
 * came) and the body in *body (malloc'ed, NUL-terminated; may be NULL). */
static long prom_get(const char *path, char **body)
{
    char url[256];
    struct buf b;
    long code = 0;
    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", prom_port, path);
    buf_init(&b, API_ANSWER_MAX);
    CURL *c = curl_easy_init();
    if (!c)
        fail_msg("curl_easy_init failed");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, http_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 10L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    if (curl_easy_perform(c) == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    curl_easy_cleanup(c);
    if (body)
        *body = buf_steal(&b);
    else
        buf_release(&b);
    return code;
}

/* GET path of the API and its "data" member (a new reference), after
 * checking "status": "success". */
static json_t *prom_api(struct harness_scenario *s, const char *path)
{
    char *body = NULL;
    long code = prom_get(path, &body);
    EXPECT(s, code == 200, "GET %s from Prometheus answered HTTP %ld: %s", path, code,
           body ? body : "");
    json_error_t err;
    json_t *doc = json_loads(body, 0, &err);
    EXPECT(s, doc, "GET %s: not JSON (%s): %.200s", path, err.text, body);
    free(body);
    const char *status = json_string_value(json_object_get(doc, "status"));
    EXPECT(s, status && strcmp(status, "success") == 0, "GET %s: status %s", path,
           status ? status : "missing");
    json_t *data = json_incref(json_object_get(doc, "data"));
    json_decref(doc);
    EXPECT(s, data, "GET %s: no data", path);
    return data;
}

/* Starts Prometheus with the configuration file config, its data under
 * dir, on a free port; returns once /-/ready answers 200. */
static void prom_start(struct harness_scenario *s, const char *config, const char *dir)
{
    EXPECT(s, access(PROMETHEUS, X_OK) == 0,
           "%s is missing: install Debian's prometheus package (the test environment needs it)",
           PROMETHEUS);
    char data[1024], a_config[1200], a_data[1200], a_listen[128];
    snprintf(data, sizeof(data), "%s/prometheus-data", dir);
    snprintf(prom_log, sizeof(prom_log), "%s/prometheus.log", dir);
    prom_port = harness_free_port();
    snprintf(a_config, sizeof(a_config), "--config.file=%s", config);
    snprintf(a_data, sizeof(a_data), "--storage.tsdb.path=%s", data);
    snprintf(a_listen, sizeof(a_listen), "--web.listen-address=127.0.0.1:%d", prom_port);
    fflush(NULL);
    pid_t pid = fork();
    EXPECT(s, pid >= 0, "fork failed: %s", strerror(errno));
    if (pid == 0) {
        int fd = open(prom_log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        int nul = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (fd < 0 || nul < 0)
            _exit(126);
        dup2(nul, STDIN_FILENO);
        dup2(fd, STDOUT_FILENO);
        dup2(fd, STDERR_FILENO);
        execl(PROMETHEUS, PROMETHEUS, a_config, a_data, a_listen, "--log.level=info", (char *)NULL);
        _exit(127);
    }
    prom_pid = pid;
    long long started = harness_now_ms(), deadline = started + READY_DEADLINE_MS;
    for (;;) {
        int status;
        EXPECT(s, waitpid(pid, &status, WNOHANG) == 0,
               "prometheus exited at start (status %d); its log says why",
               WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        if (prom_get("/-/ready", NULL) == 200)
            break;
        EXPECT(s, harness_now_ms() < deadline, "prometheus was not ready within %d ms",
               READY_DEADLINE_MS);
        poll(NULL, 0, 100);
    }
    printf("prometheus: ready on 127.0.0.1:%d after %lld ms\n", prom_port,
           harness_now_ms() - started);
}

/* ---- what the API says ------------------------------------------------------- */

/* The active targets whose health is "up", and all of them. */
static void targets_up(struct harness_scenario *s, size_t *up, size_t *all, char *why, size_t len)
{
    json_t *data = prom_api(s, "/api/v1/targets?state=active");
    json_t *targets = json_object_get(data, "activeTargets"), *t;
    size_t i;
    *up = *all = 0;
    why[0] = '\0';
    json_array_foreach(targets, i, t)
    {
        const char *health = json_string_value(json_object_get(t, "health"));
        const char *url = json_string_value(json_object_get(t, "scrapeUrl"));
        const char *err = json_string_value(json_object_get(t, "lastError"));
        (*all)++;
        if (health && strcmp(health, "up") == 0)
            (*up)++;
        else
            snprintf(why, len, "%s is %s (%s)", url ? url : "?", health ? health : "?",
                     err ? err : "");
    }
    json_decref(data);
}

/* The state ("pending", "firing") of alert name for instance, or "" when
 * it is not active; *others counts that alert's active instances besides
 * it. */
static void alert_state(struct harness_scenario *s, const char *name, const char *instance,
                        char *state, size_t len, size_t *others)
{
    json_t *data = prom_api(s, "/api/v1/alerts");
    json_t *alerts = json_object_get(data, "alerts"), *a;
    size_t i;
    state[0] = '\0';
    *others = 0;
    json_array_foreach(alerts, i, a)
    {
        json_t *labels = json_object_get(a, "labels");
        const char *an = json_string_value(json_object_get(labels, "alertname"));
        const char *in = json_string_value(json_object_get(labels, "instance"));
        if (!an || strcmp(an, name) != 0)
            continue;
        if (in && strcmp(in, instance) == 0) {
            const char *st = json_string_value(json_object_get(a, "state"));
            const char *sev = json_string_value(json_object_get(labels, "severity"));
            const char *desc = json_string_value(
                json_object_get(json_object_get(a, "annotations"), "description"));
            EXPECT(s, sev && strcmp(sev, "critical") == 0, "%s has severity %s, not critical", name,
                   sev ? sev : "none");
            EXPECT(s, desc && strstr(desc, instance), "%s's description does not name %s: %s", name,
                   instance, desc ? desc : "none");
            snprintf(state, len, "%s", st ? st : "?");
        } else {
            (*others)++;
        }
    }
    json_decref(data);
}

/* Waits until alert name of instance is in state want ("" = not active);
 * returns how long it took. Another instance with the alert fails the
 * test. */
static long long wait_alert(struct harness_scenario *s, const char *name, const char *instance,
                            const char *want, long long timeout_ms)
{
    long long start = harness_now_ms(), deadline = start + timeout_ms;
    char state[32];
    size_t others;
    for (;;) {
        alert_state(s, name, instance, state, sizeof(state), &others);
        EXPECT(s, others == 0, "%s is active for %zu other instance(s) than %s", name, others,
               instance);
        if (strcmp(state, want) == 0)
            return harness_now_ms() - start;
        EXPECT(s, harness_now_ms() < deadline, "%s of %s is \"%s\", not \"%s\", after %lld ms",
               name, instance, state, want, timeout_ms);
        poll(NULL, 0, 200);
    }
}

/* How many series the instant query expr returns now. */
static size_t prom_query_count(struct harness_scenario *s, const char *expr)
{
    char path[512];
    char *q = curl_easy_escape(NULL, expr, 0);
    EXPECT(s, q, "out of memory");
    snprintf(path, sizeof(path), "/api/v1/query?query=%s", q);
    curl_free(q);
    json_t *data = prom_api(s, path);
    size_t n = json_array_size(json_object_get(data, "result"));
    json_decref(data);
    return n;
}

/* ---- the test ------------------------------------------------------------------ */

static void add_tasks(struct harness_scenario *s, int n)
{
    json_t *f = json_pack("{s:i,s:i,s:s,s:s,s:s}", "department", (int)s->src_dept, "count", n,
                          "name_prefix", "during the outage ", "type", "manual", "note",
                          "sent while the target API was down");
    char *body = json_dumps(f, JSON_COMPACT);
    json_decref(f);
    EXPECT(s, body, "out of memory");
    json_t *r = harness_sim_admin_ok(s->src, "POST", "/tasks/bulk", body);
    free(body);
    long long first = json_integer_value(json_object_get(r, "first_id"));
    long long last = json_integer_value(json_object_get(r, "last_id"));
    json_decref(r);
    EXPECT(s, last - first + 1 == n, "the emulator made %lld tasks, not %d", last - first + 1, n);
    harness_record_events(s->client_state, s->client_id, first, last);
    harness_daemon_wake(s->client, 0);
}

static void test_api_outage_alert(void **state)
{
    (void)state;
    struct harness_scenario_opts o = {.poll_interval = 3600};
    struct harness_scenario *s = harness_scenario_new("itprom", &o, &current);
    int cport = harness_free_port(), sport = harness_free_port();
    while (sport == cport)
        sport = harness_free_port();
    char text[256], client_target[64], server_target[64];
    snprintf(client_target, sizeof(client_target), "127.0.0.1:%d", cport);
    snprintf(server_target, sizeof(server_target), "127.0.0.1:%d", sport);
    snprintf(text, sizeof(text), "metrics: { listen = \"%s\"; };\n", client_target);
    harness_config_append(s->client_conf, text);
    snprintf(text, sizeof(text), "metrics: { listen = \"%s\"; };\n", server_target);
    harness_config_append(s->server_conf, text);
    harness_daemon_start(s->server);
    harness_daemon_start(s->client);

    /* Render the shipped files into the scenario's directory. */
    char src[1024], rules_path[1200], config_path[1200];
    snprintf(src, sizeof(src), "%s/dist/prometheus/remotetask.rules.yml", RT_SOURCE_DIR);
    char *rules = read_file(s, src);
    char names[32][64];
    size_t n_alerts = alert_names(rules, names, 32);
    EXPECT(s, n_alerts > 0, "%s holds no alert", src);
    size_t n_for = replace_all(&rules, "for: 5m", RULES_FOR);
    EXPECT(s, n_for > 0,
           "%s has no \"for: 5m\" any more: RemotetaskApiUnreachable's wait is "
           "what this test shortens",
           src);
    snprintf(rules_path, sizeof(rules_path), "%s/remotetask.rules.yml", s->dir);
    write_file(s, rules_path, rules);
    free(rules);
    snprintf(src, sizeof(src), "%s/dist/prometheus/prometheus.yml", RT_SOURCE_DIR);
    char *config = read_file(s, src);
    render(s, &config, "prometheus.yml", "scrape_interval: 15s", "scrape_interval: 1s");
    render(s, &config, "prometheus.yml", "evaluation_interval: 15s", "evaluation_interval: 1s");
    render(s, &config, "prometheus.yml", "127.0.0.1:9464", client_target);
    render(s, &config, "prometheus.yml", "127.0.0.1:9465", server_target);
    char rules_item[1300];
    snprintf(rules_item, sizeof(rules_item), "- %s", rules_path);
    render(s, &config, "prometheus.yml", "- remotetask.rules.yml", rules_item);
    snprintf(config_path, sizeof(config_path), "%s/prometheus.yml", s->dir);
    write_file(s, config_path, config);
    free(config);
    printf("prometheus: rules rendered with %zu \"for: 5m\" made \"%s\"\n", n_for, RULES_FOR);

    prom_start(s, config_path, s->dir);

    /* The rules: every alert of the shipped file, loaded and healthy. */
    json_t *data = prom_api(s, "/api/v1/rules?type=alert");
    json_t *groups = json_object_get(data, "groups"), *g, *r;
    size_t i, j, loaded = 0, matched = 0;
    json_array_foreach(groups, i, g)
    {
        json_array_foreach(json_object_get(g, "rules"), j, r)
        {
            const char *name = json_string_value(json_object_get(r, "name"));
            const char *health = json_string_value(json_object_get(r, "health"));
            const char *err = json_string_value(json_object_get(r, "lastError"));
            loaded++;
            EXPECT(s, health && strcmp(health, "err") != 0, "rule %s has health %s: %s",
                   name ? name : "?", health ? health : "none", err ? err : "");
            for (size_t k = 0; name && k < n_alerts; k++)
                if (strcmp(names[k], name) == 0)
                    matched++;
        }
    }
    json_decref(data);
    printf("prometheus: /api/v1/rules lists %zu alerting rules, %zu of the %zu in "
           "remotetask.rules.yml\n",
           loaded, matched, n_alerts);
    EXPECT(s, loaded == n_alerts && matched == n_alerts,
           "Prometheus loaded %zu alerting rules, %zu of them the file's %zu", loaded, matched,
           n_alerts);

    /* The targets: both daemons, up. */
    size_t up = 0, all = 0;
    char why[512];
    long long deadline = harness_now_ms() + STATE_DEADLINE_MS;
    for (;;) {
        targets_up(s, &up, &all, why, sizeof(why));
        if (all == 2 && up == 2)
            break;
        EXPECT(s, harness_now_ms() < deadline, "%zu of %zu targets up after %d ms: %s", up, all,
               STATE_DEADLINE_MS, why);
        poll(NULL, 0, 200);
    }
    printf("prometheus: /api/v1/targets: %zu of %zu targets up\n", up, all);

    /* Before the outage both daemons' API answers, as Prometheus sees it,
     * and the alert is not active for anyone. (A scrape taken before a
     * daemon's first API call may read remotetask_api_up 0 and make the
     * alert pending for an evaluation: wait for both to say 1, then for
     * the alert to be inactive.) */
    deadline = harness_now_ms() + STATE_DEADLINE_MS;
    size_t answering;
    while ((answering = prom_query_count(s, "remotetask_api_up == 1")) != 2) {
        EXPECT(s, harness_now_ms() < deadline,
               "Prometheus sees remotetask_api_up == 1 for %zu of 2 daemons after %d ms", answering,
               STATE_DEADLINE_MS);
        poll(NULL, 0, 200);
    }
    wait_alert(s, "RemotetaskApiUnreachable", server_target, "", STATE_DEADLINE_MS);

    /* The outage: tasks travel while the target's API is down. */
    json_decref(harness_sim_admin_ok(s->dst, "POST", "/down", NULL));
    long long down_at = harness_now_ms();
    add_tasks(s, OUTAGE_TASKS);
    long long pending_ms =
        wait_alert(s, "RemotetaskApiUnreachable", server_target, "pending", STATE_DEADLINE_MS);
    printf("prometheus: RemotetaskApiUnreachable pending for %s %lld ms after the API went "
           "down\n",
           server_target, pending_ms);
    long long firing_ms =
        wait_alert(s, "RemotetaskApiUnreachable", server_target, "firing", STATE_DEADLINE_MS);
    printf("prometheus: ... firing %lld ms later (%s)\n", firing_ms, RULES_FOR);
    EXPECT(s, harness_flow_target_count(s) == 0, "tasks were applied while the API was down");
    json_decref(harness_sim_admin_ok(s->dst, "POST", "/up", NULL));
    printf("prometheus: target API up again after %lld ms\n", harness_now_ms() - down_at);

    size_t sent = harness_flow_expect_all_applied(s, "prometheus-api-outage", APPLY_DEADLINE_MS);
    EXPECT(s, sent == OUTAGE_TASKS, "the source holds %zu tasks, not %d", sent, OUTAGE_TASKS);
    long long gone_ms =
        wait_alert(s, "RemotetaskApiUnreachable", server_target, "", STATE_DEADLINE_MS);
    printf("prometheus: RemotetaskApiUnreachable gone %lld ms after the tasks were applied\n",
           gone_ms);

    prom_stop();
    harness_scenario_stop(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_api_outage_alert, teardown),
    };
    setvbuf(stdout, NULL, _IOLBF, 0);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
