/*
 * fault_tls.c - issue 9, case 9: TLS faults on both legs.
 *
 * The broker leg: three TLS listeners (tests/faults/tlsfault.py) stand
 * where the broker should be, each presenting a certificate that must not
 * be trusted: one signed by a CA nobody trusts, one expired, one for
 * another host name (the two last signed by the node's own test CA, which
 * the configurations trust). For each, `remotetaskctl --command check`
 * must name the cause in one line. Then a daemon runs against each (the
 * scenario's client and server, and a third daemon on a copy of the
 * client's configuration) for one step of the reconnect backoff: each
 * must log the cause once per attempt and attempt no faster than the
 * schedule of bridge/core.h (a TLS failure waits CORE_RECONNECT_MAX_MS at
 * once). The listeners record every connection: none may start with the
 * plain AMQP header (no fall back to plain text) and none may carry a byte
 * after its handshake (nothing sent unverified).
 *
 * The BILLmanager leg: both emulators serve HTTPS with a self-signed
 * certificate, which the configurations do not trust (billmanager.ca_file
 * is the test CA). With the broker fixed (the node's own TLS listener,
 * SIGHUP), `check` names the cause in one line; the client's calls fail
 * as RETRY "transport" with curl's cause in its log and nothing reaches
 * the emulator (its call log stays empty: no call was ever made without
 * verification). Then the client trusts its emulator's certificate
 * (SIGHUP): its tasks are published and the server's creates fail the same
 * way, retried; then the server trusts its emulator too (SIGHUP), and
 * every task arrives: sent=N applied=N lost=0 duplicated=0.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
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
#include <jansson.h>

#include "faults.h"
#include "harness.h"
#include "harness_sim.h"

/* The wait of bridge/core.h (CORE_RECONNECT_MAX_MS) after a TLS failure:
 * a certificate that failed verification fails again until someone
 * changes it, so the daemon waits the longest delay at once. The core's
 * header is private to bridge/; keep this in step with it. */
#define TLS_RECONNECT_MS 30000
/* Two clocks (the daemon's monotonic one, the listener's wall clock) and
 * a thread start between them. */
#define TLS_GAP_SLACK_MS 500
/* Tasks sent once both legs are fixed. */
#define TLS_TASKS 50
/* The listener writes its port within this. */
#define TLS_LISTENER_START_MS 15000
/* openssl making five keys and certificates on a loaded machine. */
#define TLS_CERTS_MS 60000
/* How long the daemons face the bad broker certificates: one whole step
 * of the backoff after the first attempt, and room for a slow machine. */
#define TLS_BACKOFF_WATCH_MS (TLS_RECONNECT_MS + 30000)
/* A config file of the scenario, read whole. */
#define TLS_CONF_MAX ((size_t)64 * 1024)

/* One bad broker certificate: its listener and what a client must say. */
struct tls_bad {
    const char *name;  /* the certificate's files in the certs directory */
    const char *cause; /* what check and the daemon must name */
    const char *title;
    pid_t pid; /* the listener */
    int port;
    char events[PATH_MAX];
    size_t conns_before; /* connections before the daemons started */
};

static struct tls_bad bads[] = {
    {.name = "other",
     .cause = "unable to get local issuer certificate",
     .title = "a certificate from another CA"},
    {.name = "expired", .cause = "certificate has expired", .title = "an expired certificate"},
    {.name = "wronghost",
     .cause = "hostname mismatch",
     .title = "a certificate for another host name"},
};
#define N_BADS (sizeof(bads) / sizeof(bads[0]))

/* curl's words for a self-signed certificate (OpenSSL 3 writes
 * "self-signed", older versions "self signed"). */
static const char *const selfsigned_causes[] = {"self-signed certificate",
                                                "self signed certificate", NULL};

static const char *const broker_members[] = {"broker.state", "broker.connected",
                                             "broker.last_error", "broker.reconnects", NULL};
static const char *const api_members[] = {"billmanager.state",     "billmanager.last_error",
                                          "billmanager.reachable", "errors.api",
                                          "outbox.backlog",        NULL};

/* ---- small helpers ------------------------------------------------------ */

static char *tls_path(const char *dir, const char *name)
{
    char *p = NULL;
    if (asprintf(&p, "%s/%s", dir, name) < 0)
        fail_msg("out of memory");
    return p;
}

/* Runs argv (no shell) and fails the test unless it exits 0 within
 * timeout_ms. */
static void tls_run(const char *const *argv, long long timeout_ms)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        fail_msg("fork: %s", strerror(errno));
    if (pid == 0) {
        execvp(argv[0], (char *const *)argv);
        fprintf(stderr, "cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    long long deadline = harness_now_ms() + timeout_ms;
    int status = 0;
    for (;;) {
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid)
            break;
        if (w < 0 && errno != EINTR)
            fail_msg("waitpid: %s", strerror(errno));
        if (harness_now_ms() >= deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            fail_msg("%s %s did not end within %lld ms", argv[0], argv[1], timeout_ms);
        }
        poll(NULL, 0, 50);
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail_msg("%s %s failed (status %d)", argv[0], argv[1], status);
}

static char *tls_read_file(const char *path)
{
    FILE *f = fopen(path, "re");
    if (!f)
        fail_msg("cannot read %s: %s", path, strerror(errno));
    char *text = calloc(1, TLS_CONF_MAX + 1);
    if (!text)
        fail_msg("out of memory");
    size_t n = fread(text, 1, TLS_CONF_MAX, f);
    fclose(f);
    text[n] = '\0';
    return text;
}

static void tls_write_file(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    size_t n = strlen(text);
    if (fd < 0 || write(fd, text, n) != (ssize_t)n)
        fail_msg("cannot write %s: %s", path, strerror(errno));
    close(fd);
}

/* ---- the listeners -------------------------------------------------------- */

static void tls_listener_stop(void *arg)
{
    struct tls_bad *b = arg;
    if (b->pid > 0) {
        kill(b->pid, SIGTERM);
        waitpid(b->pid, NULL, 0);
        b->pid = 0;
    }
}

static void tls_listener_start(struct tls_bad *b, const char *dir, const char *certs)
{
    char script[PATH_MAX], cert[PATH_MAX], key[PATH_MAX], portfile[PATH_MAX];
    snprintf(script, sizeof(script), "%s/tests/faults/tlsfault.py", RT_SOURCE_DIR);
    snprintf(cert, sizeof(cert), "%s/%s.pem", certs, b->name);
    snprintf(key, sizeof(key), "%s/%s.key", certs, b->name);
    snprintf(portfile, sizeof(portfile), "%s/listener-%s.port", dir, b->name);
    snprintf(b->events, sizeof(b->events), "%s/listener-%s.jsonl", dir, b->name);
    char logpath[PATH_MAX];
    snprintf(logpath, sizeof(logpath), "%s/listener-%s.log", dir, b->name);
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        fail_msg("fork: %s", strerror(errno));
    if (pid == 0) {
        int fd = open(logpath, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            dup2(fd, STDOUT_FILENO);
            dup2(fd, STDERR_FILENO);
        }
        execlp("python3", "python3", script, "listen", "--cert", cert, "--key", key, "--port-file",
               portfile, "--events", b->events, (char *)NULL);
        _exit(127);
    }
    b->pid = pid;
    faults_on_teardown(tls_listener_stop, b);
    long long deadline = harness_now_ms() + TLS_LISTENER_START_MS;
    for (;;) {
        FILE *f = fopen(portfile, "re");
        if (f) {
            int ok = fscanf(f, "%d", &b->port) == 1;
            fclose(f);
            if (ok && b->port > 0)
                return;
        }
        if (waitpid(pid, NULL, WNOHANG) == pid) {
            b->pid = 0;
            fail_msg("the TLS listener for %s exited before listening (see %s)", b->name, logpath);
        }
        if (harness_now_ms() >= deadline)
            fail_msg("the TLS listener for %s did not listen within %d ms", b->name,
                     TLS_LISTENER_START_MS);
        poll(NULL, 0, 50);
    }
}

/* What a listener saw, from connection from on. */
struct tls_seen {
    size_t conns;      /* connections */
    size_t not_tls;    /* that did not start with a TLS handshake record */
    size_t plain_amqp; /* that started with the plain AMQP header */
    size_t completed;  /* handshakes the client completed */
    size_t sent_after; /* that carried bytes after a failed handshake, or
                          application data after a completed one */
    double min_gap_s;  /* the shortest time between two connections, -1
                          with fewer than two */
    char first_error[128];
};

static void tls_seen(const struct tls_bad *b, size_t from, struct tls_seen *out)
{
    memset(out, 0, sizeof(*out));
    out->min_gap_s = -1;
    double last_t = -1;
    FILE *f = fopen(b->events, "re");
    if (!f)
        return; /* no connection yet */
    char line[2048];
    size_t n = 0;
    while (fgets(line, sizeof(line), f)) {
        if (n++ < from)
            continue;
        json_error_t jerr;
        json_t *ev = json_loads(line, 0, &jerr);
        if (!ev)
            fail_msg("the listener for %s wrote a line that is not JSON: %s", b->name, line);
        out->conns++;
        /* The listener writes a connection's line when it is done with it,
         * so lines may come out of order by a few milliseconds: only the
         * gaps between attempts of a backoff matter here. */
        double t = json_number_value(json_object_get(ev, "t"));
        if (last_t >= 0 && (out->min_gap_s < 0 || t - last_t < out->min_gap_s))
            out->min_gap_s = t > last_t ? t - last_t : last_t - t;
        last_t = t;
        out->not_tls += !json_is_true(json_object_get(ev, "tls"));
        out->plain_amqp += json_is_true(json_object_get(ev, "plain_amqp"));
        const char *hs = json_string_value(json_object_get(ev, "handshake"));
        out->completed += hs && strcmp(hs, "ok") == 0;
        out->sent_after += json_integer_value(json_object_get(ev, "after")) > 0 ||
                           json_integer_value(json_object_get(ev, "app")) > 0;
        const char *err = json_string_value(json_object_get(ev, "error"));
        if (err && *err && !out->first_error[0])
            snprintf(out->first_error, sizeof(out->first_error), "%s", err);
        json_decref(ev);
    }
    fclose(f);
}

/* Records as checks that every connection a listener saw since from was
 * TLS, never the plain AMQP header, and carried nothing after its
 * handshake; returns the connections. */
static size_t tls_check_listener(struct fault_result *r, const struct tls_bad *b, size_t from,
                                 const char *who)
{
    struct tls_seen seen;
    tls_seen(b, from, &seen);
    fault_check(r, seen.not_tls == 0 && seen.plain_amqp == 0,
                "%s: every one of the %zu connections to the listener with %s began a TLS "
                "handshake (%zu did not, %zu sent the plain AMQP header)",
                who, seen.conns, b->title, seen.not_tls, seen.plain_amqp);
    fault_check(r, seen.sent_after == 0,
                "%s: no connection to the listener with %s carried a byte after its handshake "
                "(%zu did; %zu handshakes completed, the client's alert: %s)",
                who, b->title, seen.sent_after, seen.completed,
                seen.first_error[0] ? seen.first_error : "none");
    return seen.conns;
}

/* ---- configurations --------------------------------------------------- */

/* Copies the configuration src to dst with each (old, new) pair of the
 * NULL-terminated list replaced once. */
static void tls_conf_copy(const char *src, const char *dst, const char *const *pairs)
{
    char *text = tls_read_file(src);
    tls_write_file(dst, text);
    free(text);
    for (size_t i = 0; pairs && pairs[i]; i += 2)
        harness_config_replace(dst, pairs[i], pairs[i + 1]);
}

/* The line of `check`'s output that begins with "FAIL  " and holds what,
 * copied into out; returns how many lines did. */
static int tls_check_lines(const char *output, const char *what, char *out, size_t len)
{
    int n = 0;
    out[0] = '\0';
    for (const char *line = output; line && *line;) {
        const char *nl = strchr(line, '\n');
        size_t l = nl ? (size_t)(nl - line) : strlen(line);
        char one[1024];
        snprintf(one, sizeof(one), "%.*s", (int)(l < sizeof(one) - 1 ? l : sizeof(one) - 1), line);
        if (strncmp(one, "FAIL  ", 6) == 0 && strstr(one, what)) {
            if (!n++)
                snprintf(out, len, "%s", one);
        }
        line = nl ? nl + 1 : NULL;
    }
    return n;
}

/* Runs check on config and records that it fails naming cause in exactly
 * one line about what ("broker", "billmanager"). */
static void tls_expect_check(struct fault_result *r, const char *config, const char *what,
                             const char *const *causes, const char *label)
{
    const char *args[] = {"--command", "check", NULL};
    char *out = NULL;
    char line[1024];
    int rc = faults_ctl(config, args, &out);
    int lines = tls_check_lines(out, what, line, sizeof(line));
    int named = 0;
    for (size_t i = 0; causes[i]; i++)
        named |= strstr(line, causes[i]) != NULL;
    fault_check(r, rc != 0 && lines == 1 && named,
                "check with %s exits non-zero (%d) with one FAIL line for the %s naming \"%s\" "
                "(%d such lines): %s",
                label, rc, what, causes[0], lines, line[0] ? line : out);
    free(out);
}

/* SIGHUP to a daemon, and a wait for its "configuration reloaded" line. */
static void tls_reload(struct fault_result *r, struct harness_daemon *d, const char *who)
{
    size_t mark = harness_daemon_log_mark(d);
    int pid = harness_daemon_pid(d);
    if (pid <= 0 || kill(pid, SIGHUP) != 0)
        fail_msg("cannot send SIGHUP to the %s daemon", who);
    long long deadline = harness_now_ms() + FAULTS_SHORT_DEADLINE_MS;
    while (harness_daemon_log_count_since(d, mark, "configuration reloaded from") == 0) {
        if (harness_now_ms() >= deadline || !harness_daemon_running(d))
            break;
        poll(NULL, 0, 50);
    }
    fault_check(r, harness_daemon_log_count_since(d, mark, "configuration reloaded from") == 1,
                "the %s daemon reloads its configuration on SIGHUP", who);
}

/* Waits until the daemon logged needle since mark (1), or the deadline
 * passed (0). */
static int tls_wait_log(struct harness_daemon *d, size_t mark, const char *needle,
                        long long timeout_ms)
{
    long long deadline = harness_now_ms() + timeout_ms;
    while (harness_daemon_log_count_since(d, mark, needle) == 0) {
        if (harness_now_ms() >= deadline)
            return 0;
        poll(NULL, 0, 100);
    }
    return 1;
}

static void tls_daemon_free(void *arg)
{
    harness_daemon_free(arg);
}

/* An HTTPS emulator in place of one of the scenario's: the default seed,
 * the self-signed certificate. The old one is stopped and freed. */
static struct harness_sim *tls_https_sim(struct harness_sim *old, const char *certs)
{
    char cert[PATH_MAX], key[PATH_MAX];
    snprintf(cert, sizeof(cert), "%s/selfsigned.pem", certs);
    snprintf(key, sizeof(key), "%s/selfsigned.key", certs);
    const char *args[] = {"--tls-cert", cert, "--tls-key", key, NULL};
    struct harness_sim *sim = harness_sim_start(NULL, args);
    harness_sim_free(old);
    return sim;
}

/* ---- the case ------------------------------------------------------------ */

static void test_tls(void **state)
{
    (void)state;
    struct harness_scenario *s = faults_scenario("ftls", NULL);
    struct fault_result r;
    char *certs = tls_path(s->dir, "certs");
    char test_ca[PATH_MAX], test_ca_key[PATH_MAX], selfsigned[PATH_MAX];
    snprintf(test_ca, sizeof(test_ca), "%s/ca.pem", harness_env("RT_TLS_DIR"));
    snprintf(test_ca_key, sizeof(test_ca_key), "%s/ca.key", harness_env("RT_TLS_DIR"));
    snprintf(selfsigned, sizeof(selfsigned), "%s/selfsigned.pem", certs);
    fault_begin(&r, s, "tls", 9,
                "TLS faults on both legs: broker certificate from another CA, expired, for "
                "another host; BILLmanager over https with a self-signed certificate");

    char script[PATH_MAX];
    snprintf(script, sizeof(script), "%s/tests/faults/tlsfault.py", RT_SOURCE_DIR);
    const char *mk[] = {"python3",  script,      "certs", "--ca", test_ca,
                        "--ca-key", test_ca_key, "--out", certs,  NULL};
    tls_run(mk, TLS_CERTS_MS);
    for (size_t i = 0; i < N_BADS; i++)
        tls_listener_start(&bads[i], s->dir, certs);

    /* Both emulators serve https with the self-signed certificate. */
    char old_src[128], old_dst[128], src_url[PATH_MAX + 128], dst_url[PATH_MAX + 128];
    snprintf(old_src, sizeof(old_src), "%s\"", harness_sim_url(s->src));
    snprintf(old_dst, sizeof(old_dst), "%s\"", harness_sim_url(s->dst));
    s->src = tls_https_sim(s->src, certs);
    s->dst = tls_https_sim(s->dst, certs);
    snprintf(src_url, sizeof(src_url), "https://127.0.0.1:%d/billmgr\";\n  ca_file = \"%s\"",
             harness_sim_port(s->src), test_ca);
    snprintf(dst_url, sizeof(dst_url), "https://127.0.0.1:%d/billmgr\";\n  ca_file = \"%s\"",
             harness_sim_port(s->dst), test_ca);
    harness_config_replace(s->client_conf, old_src, src_url);
    harness_config_replace(s->server_conf, old_dst, dst_url);

    /* The broker: amqps to a bad listener, trusting the node's test CA. */
    char plain_uri[2][256], bad_uri[N_BADS][256], good_uri[2][256], tls_group[PATH_MAX + 64];
    const char *users[2] = {s->client_user, s->server_user};
    for (int i = 0; i < 2; i++) {
        snprintf(plain_uri[i], sizeof(plain_uri[i]), "amqp://%s@127.0.0.1:%s/%%2f", users[i],
                 harness_env("RT_AMQP_PORT"));
        snprintf(good_uri[i], sizeof(good_uri[i]), "amqps://%s@localhost:%s/%%2f", users[i],
                 harness_env("RT_AMQPS_PORT"));
    }
    for (size_t i = 0; i < N_BADS; i++)
        snprintf(bad_uri[i], sizeof(bad_uri[i]), "amqps://%s@localhost:%d/%%2f",
                 i == 1 ? s->server_user : s->client_user, bads[i].port);
    snprintf(tls_group, sizeof(tls_group),
             "  connect_timeout = 5;\n  tls: { ca_file = \"%s\"; };\n", test_ca);
    harness_config_replace(s->client_conf, "  connect_timeout = 5;\n", tls_group);
    harness_config_replace(s->server_conf, "  connect_timeout = 5;\n", tls_group);

    /* check, for each bad broker certificate, on a copy of the client's
     * configuration (the scenario's own files are edited below). */
    char *check_conf = tls_path(s->dir, "check.conf");
    for (size_t i = 0; i < N_BADS; i++) {
        char uri[256];
        snprintf(uri, sizeof(uri), "amqps://%s@localhost:%d/%%2f", s->client_user, bads[i].port);
        const char *pairs[] = {plain_uri[0], uri, NULL};
        tls_conf_copy(s->client_conf, check_conf, pairs);
        const char *causes[] = {bads[i].cause, NULL};
        char label[128];
        snprintf(label, sizeof(label), "a broker presenting %s", bads[i].title);
        tls_expect_check(&r, check_conf, "broker", causes, label);
        tls_check_listener(&r, &bads[i], 0, "check");
    }
    /* check names the BILLmanager's cause too (both configurations). */
    tls_expect_check(&r, s->client_conf, "billmanager", selfsigned_causes,
                     "the source BILLmanager's self-signed certificate");
    tls_expect_check(&r, s->server_conf, "billmanager", selfsigned_causes,
                     "the target BILLmanager's self-signed certificate");

    /* The daemons against the bad listeners: the client against the one
     * from another CA, the server against the expired one, a third daemon
     * (a copy of the client's configuration with a state of its own)
     * against the one for another host. */
    harness_config_replace(s->client_conf, plain_uri[0], bad_uri[0]);
    harness_config_replace(s->server_conf, plain_uri[1], bad_uri[1]);
    char *third_conf = tls_path(s->dir, "wronghost.conf");
    char *third_state = tls_path(s->dir, "wronghost-state");
    char *third_sock = tls_path(s->dir, "wronghost.sock");
    char *third_log = tls_path(s->dir, "wronghost.log");
    char old_state[PATH_MAX + 16], new_state[PATH_MAX + 16], old_sock[PATH_MAX + 16],
        new_sock[PATH_MAX + 16];
    snprintf(old_state, sizeof(old_state), "\"%s\"", s->client_state);
    snprintf(new_state, sizeof(new_state), "\"%s\"", third_state);
    snprintf(old_sock, sizeof(old_sock), "\"%s/client.sock\"", s->dir);
    snprintf(new_sock, sizeof(new_sock), "\"%s\"", third_sock);
    const char *third_pairs[] = {bad_uri[0], bad_uri[2], old_state, new_state,
                                 old_sock,   new_sock,   NULL};
    tls_conf_copy(s->client_conf, third_conf, third_pairs);
    struct harness_daemon *third =
        harness_daemon_new("wronghost", third_conf, third_sock, third_log);
    faults_on_teardown(tls_daemon_free, third);

    for (size_t i = 0; i < N_BADS; i++) {
        struct tls_seen seen;
        tls_seen(&bads[i], 0, &seen);
        bads[i].conns_before = seen.conns;
    }
    /* The fault starts with the daemons: their first attempt is at once. */
    fault_start(&r);
    long long watch_start = harness_now_ms(), deadline = watch_start + TLS_BACKOFF_WATCH_MS;
    faults_start_both(s);
    harness_daemon_start(third);
    struct harness_daemon *ds[N_BADS] = {s->client, s->server, third};
    const char *who[N_BADS] = {"client", "server", "wronghost"};

    /* One step of the backoff: every daemon tries again after
     * CORE_RECONNECT_MAX_MS. The wait ends as soon as each listener saw a
     * second attempt. */
    for (;;) {
        size_t done = 0;
        for (size_t i = 0; i < N_BADS; i++) {
            struct tls_seen seen;
            tls_seen(&bads[i], bads[i].conns_before, &seen);
            done += seen.conns >= 2;
        }
        if (done == N_BADS || harness_now_ms() >= deadline)
            break;
        poll(NULL, 0, 200);
    }
    double watched_s = (double)(harness_now_ms() - watch_start) / 1000.0;
    json_t *st = fault_status(&r, "client", s->client, "facing a certificate from another CA",
                              broker_members);
    const char *last = json_string_value(faults_json_path(st, "broker.last_error"));
    fault_check(&r, last && strstr(last, bads[0].cause),
                "status of the client names the cause as the broker's last error: %s",
                last ? last : "(none)");
    json_decref(st);
    st = fault_status(&r, "server", s->server, "facing an expired certificate", broker_members);
    last = json_string_value(faults_json_path(st, "broker.last_error"));
    fault_check(&r, last && strstr(last, bads[1].cause),
                "status of the server names the cause as the broker's last error: %s",
                last ? last : "(none)");
    json_decref(st);
    for (size_t i = 0; i < N_BADS; i++) {
        size_t attempts = tls_check_listener(&r, &bads[i], bads[i].conns_before, who[i]);
        struct tls_seen seen;
        tls_seen(&bads[i], bads[i].conns_before, &seen);
        /* The schedule: a TLS failure waits the longest delay at once, so
         * no two attempts are closer than that (the daemon's own timer
         * may fire a few milliseconds early by the listener's clock). */
        size_t allowed = 1 + (size_t)(watched_s * 1000.0 / TLS_RECONNECT_MS);
        fault_check(&r,
                    attempts >= 2 && attempts <= allowed &&
                        seen.min_gap_s * 1000.0 >= TLS_RECONNECT_MS - TLS_GAP_SLACK_MS,
                    "the %s daemon facing %s retried with backoff: %zu attempts in %.1f s, "
                    "%.1f s apart at the least (at least 2 attempts, at most %zu, each %d s "
                    "after the last, as a TLS failure waits)",
                    who[i], bads[i].title, attempts, watched_s, seen.min_gap_s, allowed,
                    TLS_RECONNECT_MS / 1000);
        const char *needles[] = {bads[i].cause, "connected to the broker", NULL};
        size_t logged = fault_quote(&r, who[i], ds[i], needles);
        fault_check(&r, logged == attempts,
                    "the %s daemon logged the cause (\"%s\") once per attempt: %zu lines for %zu "
                    "attempts",
                    who[i], bads[i].cause, logged, attempts);
        fault_check(&r, harness_daemon_log_count(ds[i], "connected to the broker") == 0,
                    "the %s daemon never reported a broker connection", who[i]);
    }
    const char *refused[] = {"refused", NULL};
    fault_quote(&r, "client", s->client, refused);
    harness_daemon_stop(third);

    /* The broker fixed: the node's own TLS listener; the BILLmanagers
     * still untrusted. */
    harness_config_replace(s->client_conf, bad_uri[0], good_uri[0]);
    harness_config_replace(s->server_conf, bad_uri[1], good_uri[1]);
    size_t mark_client = harness_daemon_log_mark(s->client);
    size_t mark_server = harness_daemon_log_mark(s->server);
    tls_reload(&r, s->server, "server");
    tls_reload(&r, s->client, "client");
    fault_check(
        &r,
        tls_wait_log(s->client, mark_client, "connected to the broker", FAULTS_SHORT_DEADLINE_MS) &&
            tls_wait_log(s->server, mark_server, "connected to the broker",
                         FAULTS_SHORT_DEADLINE_MS),
        "both daemons connect to the node's TLS listener once it is configured");

    /* The BILLmanager leg: the client cannot view its tasks. */
    long long first = faults_bulk_send(s, TLS_TASKS, "tls-");
    int failed_view =
        tls_wait_log(s->client, mark_client, "cannot view task", FAULTS_SHORT_DEADLINE_MS);
    size_t cause_lines = 0;
    for (size_t i = 0; selfsigned_causes[i]; i++)
        cause_lines += harness_daemon_log_count_since(s->client, mark_client, selfsigned_causes[i]);
    fault_check(&r, failed_view && cause_lines > 0,
                "the client's views of its tasks fail with curl's cause in its log (%zu lines "
                "name the self-signed certificate)",
                cause_lines);
    const char *client_api_lines[] = {"cannot view task", "transport", NULL};
    fault_quote(&r, "client", s->client, client_api_lines);
    st = fault_status(&r, "client", s->client, "facing the self-signed BILLmanager", api_members);
    fault_check(&r, json_integer_value(faults_json_path(st, "errors.api.transport")) > 0,
                "the client counts its failed calls as transport errors (%lld)",
                (long long)json_integer_value(faults_json_path(st, "errors.api.transport")));
    json_decref(st);
    fault_check(&r, harness_sim_count(s->src, "") == 0,
                "no call reached the source BILLmanager while its certificate was untrusted "
                "(%ld calls in its log): nothing was sent without verification",
                harness_sim_count(s->src, ""));

    /* The client trusts its BILLmanager: its tasks go out, and the
     * server's creates fail the same way. */
    char untrusted[PATH_MAX + 32], trusted[PATH_MAX + 32];
    snprintf(untrusted, sizeof(untrusted), "  ca_file = \"%s\";\n  login", test_ca);
    snprintf(trusted, sizeof(trusted), "  ca_file = \"%s\";\n  login", selfsigned);
    harness_config_replace(s->client_conf, untrusted, trusted);
    tls_reload(&r, s->client, "client");
    int server_failed =
        tls_wait_log(s->server, mark_server, "apply failed for task", FAULTS_SHORT_DEADLINE_MS);
    size_t server_cause = 0;
    for (size_t i = 0; selfsigned_causes[i]; i++)
        server_cause +=
            harness_daemon_log_count_since(s->server, mark_server, selfsigned_causes[i]);
    fault_check(&r, server_failed && server_cause > 0,
                "the server's creates fail and are retried with curl's cause in its log (%zu "
                "lines name the self-signed certificate)",
                server_cause);
    const char *server_api_lines[] = {"apply failed for task", NULL};
    fault_quote(&r, "server", s->server, server_api_lines);
    json_decref(
        fault_status(&r, "server", s->server, "facing the self-signed BILLmanager", api_members));
    fault_check(&r, harness_sim_count(s->dst, "") == 0,
                "no call reached the target BILLmanager while its certificate was untrusted "
                "(%ld calls in its log)",
                harness_sim_count(s->dst, ""));

    /* Both legs fixed. */
    harness_config_replace(s->server_conf, untrusted, trusted);
    tls_reload(&r, s->server, "server");
    fault_end(&r);
    fault_check(&r, faults_wait_sources(s, first, TLS_TASKS, FAULTS_APPLY_DEADLINE_MS),
                "all %d tasks arrive once both legs trust the right certificates", TLS_TASKS);
    fault_wait_recovered(&r, FAULTS_APPLY_DEADLINE_MS);
    const char *args[] = {"--command", "check", NULL};
    char *out = NULL;
    int rc = faults_ctl(s->client_conf, args, &out);
    fault_check(&r, rc == 0, "check passes on the fixed client configuration (%d): %s", rc, out);
    free(out);
    fault_note(&r, "check's lines and the daemons' were one per cause; the listeners saw only TLS "
                   "handshakes, none followed by a byte");

    fault_check_running(&r, s);
    fault_stop_both(&r, s);
    free(certs);
    free(check_conf);
    free(third_conf);
    free(third_state);
    free(third_sock);
    free(third_log);
    fault_report(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_tls, faults_teardown),
    };
    return cmocka_run_group_tests(tests, faults_group_setup, NULL);
}
