/*
 * scale.c - the steps of bench/run's "scale" case (issue 10, item 4): one
 * server daemon and N clients, the clients played by this tool, each with
 * an AMQP user of its own (as in production, the broker checks the
 * messages' user_id against the login).
 *
 *   rtbench_scale users MGMT_PORT CREDENTIALS_FILE PASSWORD_FILE PREFIX N
 *       Adds the AMQP users PREFIX-c000 .. PREFIX-c<N-1> with the password
 *       of PASSWORD_FILE and every permission on vhost "/", over the
 *       node's management API (one keep-alive connection; rabbitmqctl
 *       would boot an Erlang VM per user). CREDENTIALS_FILE holds the
 *       management administrator's "USER:PASSWORD".
 *   rtbench_scale delusers MGMT_PORT CREDENTIALS_FILE PREFIX N
 *       Deletes those users (a missing one is no error).
 *   rtbench_scale publish AMQP_PORT PASSWORD_FILE USER_PREFIX ID_PREFIX N FIRST_DEPT K
 *       Opens one connection per client (user USER_PREFIX-c<i>, client id
 *       ID_PREFIXc<i>, department FIRST_DEPT + i), then publishes K task
 *       messages per client (source tasks 1..K, seq 1, named "scale-<k>",
 *       encoded with common/codec.h) over all of them at once and waits
 *       for every confirm. Prints
 *         connect_ms=<opening the N connections> start_ms=<wall clock of
 *         the first publish> confirmed_ms=<wall clock of the last confirm>
 *         published=<N*K>
 *   rtbench_scale cycle LOG FROM_BYTE N TIMEOUT_S SOCKET|-
 *       With a SOCKET, sends the daemon's {"cmd":"resync"} (a state cycle
 *       of every client now; the published states are not forgotten, as
 *       remotetaskctl resync would) and prints kick_ms=<wall clock>. Then
 *       reads the daemon's log from byte FROM_BYTE until N distinct
 *       clients logged "state cycle of client ... done in", and prints
 *         end_ms=<the last such line's time> lines=<done lines>
 *         views=<sum> published=<sum> unchanged=<sum> rows=<sum>
 *         client_max_ms=<the longest cycle of one client>
 *       Exit 1 when that does not happen within TIMEOUT_S.
 *   rtbench_scale logtime LOG FROM_BYTE TEXT TIMEOUT_S
 *       Waits until a line holding TEXT appears in LOG after FROM_BYTE and
 *       prints its time as ms=<wall clock ms>.
 *   rtbench_scale cleanup AMQP_PORT USER PASSWORD_FILE ID_PREFIX N
 *       Deletes the 14 queues and the 2 exchanges of each client
 *       ID_PREFIXc<i>, over one connection.
 *
 * Passwords are read from files (their first line), never from argv.
 * Exit 0 on success, 1 on failure (the reason on stderr), 2 on a usage
 * error.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>
#include <jansson.h>

#include "broker.h"
#include "buf.h"
#include "codec.h"
#include "ctlproto.h"
#include "log.h"
#include "rmq.h"

#define SCALE_PASSWORD_MAX 256
#define SCALE_CLIENTS_MAX  1000
#define SCALE_ID_MAX       48
/* A management API answer is a few bytes; the cap bounds a wrong port. */
#define SCALE_MGMT_ANSWER_MAX ((size_t)64 * 1024)
#define SCALE_MGMT_TIMEOUT_MS 60000L
/* How long the broker may take to confirm everything on a loaded node. */
#define SCALE_CONFIRM_S 300
/* The daemon's log is read whole from FROM_BYTE on each look. */
#define SCALE_LOG_MAX ((size_t)256 * 1024 * 1024)
#define SCALE_POLL_MS 50
#define SCALE_NOTE                                                                                 \
    "The customer ordered a dedicated server with a custom RAID layout. Install the operating "    \
    "system, configure RAID 10 over the four disks, set up the management network and hand the "   \
    "server over to the customer with the access details. Call the customer before the "           \
    "handover."

static int64_t scale_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static double scale_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void scale_sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

static int scale_long(const char *s, const char *what, long min, long max, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < min || v > max) {
        fprintf(stderr, "rtbench_scale: %s \"%s\" is not an integer in %ld..%ld\n", what, s, min,
                max);
        return -1;
    }
    *out = v;
    return 0;
}

/* The first line of path into buf; -1 with a message when it cannot. */
static int scale_read_secret(const char *path, char *buf, size_t len)
{
    FILE *f = fopen(path, "re");
    if (!f || !fgets(buf, (int)len, f)) {
        fprintf(stderr, "rtbench_scale: cannot read \"%s\"\n", path);
        if (f)
            fclose(f);
        return -1;
    }
    fclose(f);
    buf[strcspn(buf, "\r\n")] = '\0';
    return 0;
}

static void scale_name(char *buf, size_t len, const char *prefix, const char *sep, long i)
{
    snprintf(buf, len, "%s%sc%03ld", prefix, sep, i);
}

/* ---- management API ------------------------------------------------- */

struct scale_mgmt {
    CURL *curl;
    char base[128];
    struct buf answer;
};

static size_t scale_mgmt_write(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    struct buf *b = userdata;
    return buf_append(b, ptr, size * nmemb) < 0 ? 0 : size * nmemb;
}

static int scale_mgmt_open(struct scale_mgmt *m, const char *port, const char *creds_file)
{
    char creds[SCALE_PASSWORD_MAX];
    memset(m, 0, sizeof(*m));
    buf_init(&m->answer, SCALE_MGMT_ANSWER_MAX);
    if (scale_read_secret(creds_file, creds, sizeof(creds)) < 0)
        return -1;
    snprintf(m->base, sizeof(m->base), "http://127.0.0.1:%s", port);
    m->curl = curl_easy_init();
    if (!m->curl) {
        explicit_bzero(creds, sizeof(creds));
        fprintf(stderr, "rtbench_scale: out of memory\n");
        return -1;
    }
    curl_easy_setopt(m->curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(m->curl, CURLOPT_PROXY, "");
    curl_easy_setopt(m->curl, CURLOPT_TIMEOUT_MS, SCALE_MGMT_TIMEOUT_MS);
    curl_easy_setopt(m->curl, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
    /* curl copies the string. */
    curl_easy_setopt(m->curl, CURLOPT_USERPWD, creds);
    explicit_bzero(creds, sizeof(creds));
    curl_easy_setopt(m->curl, CURLOPT_WRITEFUNCTION, scale_mgmt_write);
    curl_easy_setopt(m->curl, CURLOPT_WRITEDATA, &m->answer);
    return 0;
}

static void scale_mgmt_close(struct scale_mgmt *m)
{
    if (m->curl)
        curl_easy_cleanup(m->curl);
    m->curl = NULL;
    buf_release(&m->answer);
}

/* One request; returns the HTTP status, or -1 when none came. body may
 * be NULL. The path's parts are ours ([A-Za-z0-9-]), not escaped. */
static long scale_mgmt(struct scale_mgmt *m, const char *method, const char *path, const char *body)
{
    char url[512];
    struct curl_slist *h = NULL;
    snprintf(url, sizeof(url), "%s%s", m->base, path);
    m->answer.len = 0;
    curl_easy_setopt(m->curl, CURLOPT_URL, url);
    curl_easy_setopt(m->curl, CURLOPT_CUSTOMREQUEST, method);
    if (body) {
        h = curl_slist_append(h, "Content-Type: application/json");
        curl_easy_setopt(m->curl, CURLOPT_POSTFIELDS, body);
    } else {
        curl_easy_setopt(m->curl, CURLOPT_POSTFIELDS, NULL);
        curl_easy_setopt(m->curl, CURLOPT_NOBODY, 0L);
        curl_easy_setopt(m->curl, CURLOPT_HTTPGET, 1L);
        curl_easy_setopt(m->curl, CURLOPT_CUSTOMREQUEST, method);
    }
    curl_easy_setopt(m->curl, CURLOPT_HTTPHEADER, h);
    long code = -1;
    CURLcode rc = curl_easy_perform(m->curl);
    if (rc == CURLE_OK)
        curl_easy_getinfo(m->curl, CURLINFO_RESPONSE_CODE, &code);
    else
        fprintf(stderr, "rtbench_scale: %s %s: %s\n", method, path, curl_easy_strerror(rc));
    curl_easy_setopt(m->curl, CURLOPT_HTTPHEADER, NULL);
    curl_slist_free_all(h);
    return code;
}

static int scale_users(char **a)
{
    long n;
    char password[SCALE_PASSWORD_MAX], user[SCALE_ID_MAX], path[256];
    struct scale_mgmt m;
    int status = 1;
    if (scale_long(a[4], "N", 1, SCALE_CLIENTS_MAX, &n) < 0)
        return 2;
    if (scale_read_secret(a[2], password, sizeof(password)) < 0)
        return 1;
    json_t *pj = json_pack("{s:s, s:s}", "password", password, "tags", "");
    explicit_bzero(password, sizeof(password));
    char *body = pj ? json_dumps(pj, 0) : NULL;
    json_decref(pj);
    const char *perms = "{\"configure\": \".*\", \"write\": \".*\", \"read\": \".*\"}";
    if (!body || scale_mgmt_open(&m, a[0], a[1]) < 0)
        goto free_body;
    for (long i = 0; i < n; i++) {
        scale_name(user, sizeof(user), a[3], "-", i);
        snprintf(path, sizeof(path), "/api/users/%s", user);
        long code = scale_mgmt(&m, "PUT", path, body);
        if (code != 201 && code != 204) {
            fprintf(stderr, "rtbench_scale: adding user %s: HTTP %ld\n", user, code);
            goto close;
        }
        snprintf(path, sizeof(path), "/api/permissions/%%2F/%s", user);
        code = scale_mgmt(&m, "PUT", path, perms);
        if (code != 201 && code != 204) {
            fprintf(stderr, "rtbench_scale: permissions of %s: HTTP %ld\n", user, code);
            goto close;
        }
    }
    status = 0;
close:
    scale_mgmt_close(&m);
free_body:
    if (body) {
        explicit_bzero(body, strlen(body));
        free(body);
    }
    return status;
}

static int scale_delusers(char **a)
{
    long n;
    char user[SCALE_ID_MAX], path[256];
    struct scale_mgmt m;
    int status = 0;
    if (scale_long(a[3], "N", 1, SCALE_CLIENTS_MAX, &n) < 0)
        return 2;
    if (scale_mgmt_open(&m, a[0], a[1]) < 0) {
        scale_mgmt_close(&m);
        return 1;
    }
    for (long i = 0; i < n; i++) {
        scale_name(user, sizeof(user), a[2], "-", i);
        snprintf(path, sizeof(path), "/api/users/%s", user);
        long code = scale_mgmt(&m, "DELETE", path, NULL);
        if (code != 204 && code != 404) {
            fprintf(stderr, "rtbench_scale: deleting user %s: HTTP %ld\n", user, code);
            status = 1;
        }
    }
    scale_mgmt_close(&m);
    return status;
}

/* ---- publishing as N clients ------------------------------------------ */

struct scale_client {
    char id[SCALE_ID_MAX];
    char user[SCALE_ID_MAX];
    long dept;
    struct broker *b;
    long acked, refused;
};

static void scale_confirm(void *arg, uint64_t tag, enum broker_fate fate)
{
    struct scale_client *c = arg;
    (void)tag;
    if (fate == BROKER_ACKED)
        c->acked++;
    else
        c->refused++;
}

static void scale_delivery(void *arg, const struct broker_delivery *d)
{
    (void)arg;
    (void)d;
}

static int scale_connect(struct scale_client *c, long port, const char *password)
{
    struct broker_opts o;
    char err[512];
    memset(&o, 0, sizeof(o));
    o.host = "127.0.0.1";
    o.port = (int)port;
    o.vhost = "/";
    o.user = c->user;
    o.password = password;
    o.verify_peer = 1;
    o.verify_hostname = 1;
    /* Nobody runs the connections' heartbeats while the others publish. */
    o.heartbeat = 0;
    o.queue_type = "classic";
    o.connect_timeout_ms = 30000;
    o.connection_name = "rtbench_scale";
    o.on_confirm = scale_confirm;
    o.on_delivery = scale_delivery;
    o.cb_arg = c;
    c->b = broker_new(&o, err, sizeof(err));
    if (!c->b) {
        fprintf(stderr, "rtbench_scale: %s\n", err);
        return -1;
    }
    if (broker_connect(c->b) != RT_OK) {
        fprintf(stderr, "rtbench_scale: cannot connect as %s: %s\n", c->user,
                broker_strerror(c->b));
        return -1;
    }
    return 0;
}

static int scale_publish_one(struct scale_client *c, long task)
{
    char name[64], mid[128], err[256];
    struct codec_msg m;
    struct buf body;
    snprintf(name, sizeof(name), "scale-%ld", task);
    snprintf(mid, sizeof(mid), "%s:%ld:1", c->id, task);
    codec_msg_init(&m, CODEC_TASK);
    m.client = c->id;
    m.task = task;
    m.seq = 1;
    m.ts = scale_wall_ms();
    m.fwd.department = c->dept;
    m.fwd.name = name;
    m.fwd.type = "manual";
    m.fwd.note = SCALE_NOTE;
    m.fwd.deadline = "";
    m.fwd.item = "";
    m.fwd.account = "";
    buf_init(&body, CODEC_MAX_BODY);
    if (codec_encode(&m, &body, err, sizeof(err)) < 0) {
        fprintf(stderr, "rtbench_scale: codec_encode: %s\n", err);
        buf_release(&body);
        return -1;
    }
    struct broker_props p;
    memset(&p, 0, sizeof(p));
    p.message_id = mid;
    rt_status st =
        broker_publish(c->b, BROKER_EXCHANGE_FORWARD, c->id, &p, body.data, body.len, NULL);
    buf_release(&body);
    if (st != RT_OK) {
        fprintf(stderr, "rtbench_scale: client %s: publish: %s\n", c->id, broker_strerror(c->b));
        return -1;
    }
    return 0;
}

/* Runs every connection until each has want confirms. */
static int scale_wait_confirms(struct scale_client *cs, long n, long want)
{
    double deadline = scale_mono() + SCALE_CONFIRM_S;
    for (long i = 0; i < n; i++) {
        struct scale_client *c = &cs[i];
        while (c->acked + c->refused < want) {
            if (scale_mono() > deadline) {
                fprintf(stderr, "rtbench_scale: client %s: %ld of %ld confirms\n", c->id,
                        c->acked + c->refused, want);
                return -1;
            }
            struct pollfd pfd = {.fd = broker_fd(c->b), .events = POLLIN};
            if (!broker_wants_read_now(c->b))
                poll(&pfd, 1, 100);
            if (broker_process(c->b) != RT_OK) {
                fprintf(stderr, "rtbench_scale: client %s: %s\n", c->id, broker_strerror(c->b));
                return -1;
            }
        }
        if (c->refused) {
            fprintf(stderr, "rtbench_scale: client %s: %ld publishes refused or returned\n", c->id,
                    c->refused);
            return -1;
        }
    }
    return 0;
}

static int scale_publish(char **a)
{
    long port, n, dept, k;
    char password[SCALE_PASSWORD_MAX];
    int status = 1;
    if (scale_long(a[0], "AMQP_PORT", 1, 65535, &port) < 0 ||
        scale_long(a[4], "N", 1, SCALE_CLIENTS_MAX, &n) < 0 ||
        scale_long(a[5], "FIRST_DEPT", 1, 1L << 40, &dept) < 0 ||
        scale_long(a[6], "K", 1, 100000, &k) < 0)
        return 2;
    if (scale_read_secret(a[1], password, sizeof(password)) < 0)
        return 1;
    struct scale_client *cs = calloc((size_t)n, sizeof(*cs));
    if (!cs) {
        fprintf(stderr, "rtbench_scale: out of memory\n");
        goto wipe;
    }
    double t0 = scale_mono();
    for (long i = 0; i < n; i++) {
        scale_name(cs[i].user, sizeof(cs[i].user), a[2], "-", i);
        scale_name(cs[i].id, sizeof(cs[i].id), a[3], "", i);
        cs[i].dept = dept + i;
        if (scale_connect(&cs[i], port, password) < 0)
            goto close;
    }
    double connect_s = scale_mono() - t0;
    int64_t start = scale_wall_ms();
    /* Round robin over the clients, as their messages would arrive. */
    for (long t = 1; t <= k; t++)
        for (long i = 0; i < n; i++)
            if (scale_publish_one(&cs[i], t) < 0)
                goto close;
    if (scale_wait_confirms(cs, n, k) < 0)
        goto close;
    printf("connect_ms=%.0f start_ms=%" PRId64 " confirmed_ms=%" PRId64 " published=%ld\n",
           connect_s * 1000.0, start, scale_wall_ms(), n * k);
    status = 0;
close:
    for (long i = 0; cs && i < n; i++)
        broker_free(cs[i].b);
    free(cs);
wipe:
    explicit_bzero(password, sizeof(password));
    return status;
}

/* ---- the daemon's state cycles ---------------------------------------- */

/* The wall-clock ms of a log line ("2026-01-02T03:04:05.678Z ..."), or -1. */
static int64_t scale_line_ms(const char *line)
{
    struct tm tm;
    int ms = 0;
    memset(&tm, 0, sizeof(tm));
    if (sscanf(line, "%4d-%2d-%2dT%2d:%2d:%2d.%3dZ", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
               &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &ms) != 7)
        return -1;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return (int64_t)timegm(&tm) * 1000 + ms;
}

/* The log from byte from on, NUL-terminated (malloc'ed), or NULL. */
static char *scale_read_log(const char *path, long from)
{
    FILE *f = fopen(path, "re");
    if (!f) {
        fprintf(stderr, "rtbench_scale: cannot open \"%s\": %s\n", path, strerror(errno));
        return NULL;
    }
    struct buf b;
    char chunk[65536];
    size_t got;
    buf_init(&b, SCALE_LOG_MAX);
    if (fseek(f, from, SEEK_SET) != 0)
        goto fail;
    while ((got = fread(chunk, 1, sizeof(chunk), f)) > 0)
        if (buf_append(&b, chunk, got) < 0)
            goto fail;
    /* An empty log still gives a string. */
    if (buf_append(&b, "", 0) < 0)
        goto fail;
    fclose(f);
    return buf_steal(&b);
fail:
    fprintf(stderr, "rtbench_scale: cannot read \"%s\" (over %zu bytes?)\n", path, SCALE_LOG_MAX);
    fclose(f);
    buf_release(&b);
    return NULL;
}

struct scale_cycles {
    long clients; /* distinct clients with a done line */
    long lines;
    int64_t end_ms;
    long client_max_ms;
    unsigned long rows, views, published, unchanged;
};

/* Parses every "state cycle of client "X" done in" line of text. seen
 * remembers the clients (ids are compared as text; at most max of them). */
static int scale_parse_cycles(const char *text, struct scale_cycles *c, char (*seen)[SCALE_ID_MAX],
                              long max)
{
    static const char needle[] = "state cycle of client \"";
    memset(c, 0, sizeof(*c));
    for (const char *p = strstr(text, needle); p; p = strstr(p + 1, needle)) {
        const char *id = p + sizeof(needle) - 1, *q = strchr(id, '"');
        long ms, rows;
        unsigned long views, published, unchanged;
        if (!q || sscanf(q,
                         "\" done in %ld ms: %ld rows, %lu views, %lu states published, %lu "
                         "unchanged",
                         &ms, &rows, &views, &published, &unchanged) != 5)
            continue;
        const char *line = p;
        while (line > text && line[-1] != '\n')
            line--;
        int64_t at = scale_line_ms(line);
        if (at > c->end_ms)
            c->end_ms = at;
        c->lines++;
        c->rows += (unsigned long)rows;
        c->views += views;
        c->published += published;
        c->unchanged += unchanged;
        if (ms > c->client_max_ms)
            c->client_max_ms = ms;
        size_t len = (size_t)(q - id);
        if (len >= SCALE_ID_MAX)
            continue;
        long i;
        for (i = 0; i < c->clients; i++)
            if (strlen(seen[i]) == len && strncmp(seen[i], id, len) == 0)
                break;
        if (i == c->clients && c->clients < max) {
            memcpy(seen[c->clients], id, len);
            seen[c->clients][len] = '\0';
            c->clients++;
        }
    }
    return 0;
}

static int scale_cycle(char **a)
{
    long from, n, timeout_s;
    if (scale_long(a[1], "FROM_BYTE", 0, 1L << 40, &from) < 0 ||
        scale_long(a[2], "N", 1, SCALE_CLIENTS_MAX, &n) < 0 ||
        scale_long(a[3], "TIMEOUT_S", 1, 86400, &timeout_s) < 0)
        return 2;
    if (strcmp(a[4], "-") != 0) {
        char err[CTLPROTO_ERR_MAX];
        json_t *resp = NULL, *req = json_pack("{s:s}", "cmd", "resync");
        int64_t kick = scale_wall_ms();
        rt_status st =
            req ? ctlproto_request(a[4], req, &resp, 10000, err, sizeof(err)) : RT_REJECT;
        int ok = st == RT_OK && json_is_true(json_object_get(resp, "ok"));
        json_decref(req);
        json_decref(resp);
        if (!ok) {
            fprintf(stderr, "rtbench_scale: the daemon refused resync: %s\n",
                    st == RT_OK ? "not ok" : err);
            return 1;
        }
        printf("kick_ms=%" PRId64 " ", kick);
    }
    char(*seen)[SCALE_ID_MAX] = calloc((size_t)n, SCALE_ID_MAX);
    if (!seen)
        return 1;
    double deadline = scale_mono() + (double)timeout_s;
    struct scale_cycles c;
    for (;;) {
        char *text = scale_read_log(a[0], from);
        if (!text) {
            free(seen);
            return 1;
        }
        scale_parse_cycles(text, &c, seen, n);
        free(text);
        if (c.clients >= n)
            break;
        if (scale_mono() > deadline) {
            fprintf(stderr, "rtbench_scale: %ld of %ld clients finished a state cycle in %ld s\n",
                    c.clients, n, timeout_s);
            free(seen);
            return 1;
        }
        scale_sleep_ms(SCALE_POLL_MS);
    }
    free(seen);
    printf("end_ms=%" PRId64 " lines=%ld rows=%lu views=%lu published=%lu unchanged=%lu "
           "client_max_ms=%ld\n",
           c.end_ms, c.lines, c.rows, c.views, c.published, c.unchanged, c.client_max_ms);
    return 0;
}

static int scale_logtime(char **a)
{
    long from, timeout_s;
    if (scale_long(a[1], "FROM_BYTE", 0, 1L << 40, &from) < 0 ||
        scale_long(a[3], "TIMEOUT_S", 1, 86400, &timeout_s) < 0)
        return 2;
    double deadline = scale_mono() + (double)timeout_s;
    for (;;) {
        char *text = scale_read_log(a[0], from);
        if (!text)
            return 1;
        char *at = strstr(text, a[2]);
        if (at) {
            while (at > text && at[-1] != '\n')
                at--;
            printf("ms=%" PRId64 "\n", scale_line_ms(at));
            free(text);
            return 0;
        }
        free(text);
        if (scale_mono() > deadline) {
            fprintf(stderr, "rtbench_scale: no \"%s\" in \"%s\" within %ld s\n", a[2], a[0],
                    timeout_s);
            return 1;
        }
        scale_sleep_ms(SCALE_POLL_MS);
    }
}

/* ---- cleanup ---------------------------------------------------------- */

static int scale_ok(amqp_connection_state_t conn, const char *what, const char *name)
{
    amqp_rpc_reply_t r = amqp_get_rpc_reply(conn);
    if (r.reply_type == AMQP_RESPONSE_NORMAL)
        return 1;
    fprintf(stderr, "rtbench_scale: %s %s failed\n", what, name);
    return 0;
}

static int scale_cleanup(char **a)
{
    long port, n;
    char password[SCALE_PASSWORD_MAX], id[SCALE_ID_MAX], name[BROKER_NAME_MAX];
    int status = 1;
    if (scale_long(a[0], "AMQP_PORT", 1, 65535, &port) < 0 ||
        scale_long(a[4], "N", 1, SCALE_CLIENTS_MAX, &n) < 0)
        return 2;
    if (scale_read_secret(a[2], password, sizeof(password)) < 0)
        return 1;
    amqp_connection_state_t conn = amqp_new_connection();
    amqp_socket_t *sock = conn ? amqp_tcp_socket_new(conn) : NULL;
    struct timeval tv = {.tv_sec = 10};
    if (!sock || amqp_socket_open_noblock(sock, "127.0.0.1", (int)port, &tv) != AMQP_STATUS_OK) {
        fprintf(stderr, "rtbench_scale: cannot connect to 127.0.0.1:%ld\n", port);
        goto destroy;
    }
    amqp_rpc_reply_t r =
        amqp_login(conn, "/", 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, a[1], password);
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        fprintf(stderr, "rtbench_scale: login as %s refused\n", a[1]);
        goto destroy;
    }
    amqp_channel_open(conn, 1);
    if (!scale_ok(conn, "channel.open", ""))
        goto close_conn;
    for (long i = 0; i < n; i++) {
        scale_name(id, sizeof(id), a[3], "", i);
        for (int dir = 0; dir < 2; dir++) {
            enum broker_dir d = (enum broker_dir)dir;
            if (broker_queue_name(name, sizeof(name), d, id) == 0) {
                amqp_queue_delete(conn, 1, amqp_cstring_bytes(name), 0, 0);
                if (!scale_ok(conn, "queue.delete", name))
                    goto close_conn;
            }
            if (broker_dead_queue_name(name, sizeof(name), d, id) == 0) {
                amqp_queue_delete(conn, 1, amqp_cstring_bytes(name), 0, 0);
                if (!scale_ok(conn, "queue.delete", name))
                    goto close_conn;
            }
            for (unsigned tier = 0; tier < BROKER_RETRY_TIERS; tier++) {
                if (broker_retry_queue_name(name, sizeof(name), d, id, tier) != 0)
                    continue;
                amqp_queue_delete(conn, 1, amqp_cstring_bytes(name), 0, 0);
                if (!scale_ok(conn, "queue.delete", name))
                    goto close_conn;
            }
        }
        if (broker_retry_exchange(name, sizeof(name), id) == 0) {
            amqp_exchange_delete(conn, 1, amqp_cstring_bytes(name), 0);
            if (!scale_ok(conn, "exchange.delete", name))
                goto close_conn;
        }
        if (broker_dead_exchange(name, sizeof(name), id) == 0) {
            amqp_exchange_delete(conn, 1, amqp_cstring_bytes(name), 0);
            if (!scale_ok(conn, "exchange.delete", name))
                goto close_conn;
        }
    }
    status = 0;
    amqp_channel_close(conn, 1, AMQP_REPLY_SUCCESS);
close_conn:
    amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
destroy:
    if (conn)
        amqp_destroy_connection(conn);
    explicit_bzero(password, sizeof(password));
    return status;
}

/* ---- main ------------------------------------------------------------- */

struct scale_cmd {
    const char *name;
    int nargs;
    int (*fn)(char **args);
};

static const struct scale_cmd scale_cmds[] = {
    {"users", 5, scale_users}, {"delusers", 4, scale_delusers}, {"publish", 7, scale_publish},
    {"cycle", 5, scale_cycle}, {"logtime", 4, scale_logtime},   {"cleanup", 5, scale_cleanup},
};

int main(int argc, char **argv)
{
    /* The connections of N clients would log a line each. */
    log_init("rtbench_scale", LOG_LEVEL_WARNING, 0);
    if (argc >= 2) {
        for (size_t i = 0; i < sizeof(scale_cmds) / sizeof(scale_cmds[0]); i++) {
            if (!strcmp(argv[1], scale_cmds[i].name) && argc - 2 == scale_cmds[i].nargs)
                return scale_cmds[i].fn(argv + 2);
        }
    }
    fprintf(stderr, "usage: rtbench_scale users|delusers|publish|cycle|logtime|cleanup ARGS... "
                    "(see bench/scale.c)\n");
    return 2;
}
