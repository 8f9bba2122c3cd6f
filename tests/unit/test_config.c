/*
 * test_config.c - config_load: the examples, the defaults, every bound,
 * unknown settings, syntax errors, password files, duplicates, missing
 * settings, the AMQP uri (one node or a list of them) and the client's
 * server_user.
 *
 * Valid files are written into a fresh temporary directory per test, with
 * their password files created beside them (mode 0600), because git does
 * not keep file modes. The examples are copied there too: they name their
 * password files relatively ("amqp.password"), which config_load resolves
 * against the directory of the file. Broken files that need no password
 * file live in tests/data/config/ and use inline passwords, so that every
 * error can be checked for leaking them.
 */
#include <errno.h>
#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "broker.h"
#include "config.h"
#include "config_opts.h"

#define DATA_DIR    RT_TEST_DATA_DIR "/config"
#define EXAMPLE_DIR RT_TEST_DATA_DIR "/../../config"

/* The passwords of the generated files and of the data files: no error
 * may contain them. */
#define AMQP_PW      "AmqpS3cret!"
#define BM_PW        "BmS3cret!"
#define URI_PW       "UriS3cret"
#define DATA_AMQP_PW "DataAmqpS3cret"
#define DATA_BM_PW   "DataBmS3cret"

struct fixture {
    char dir[256];
    char path[512]; /* dir/test.conf */
    char err[CONFIG_ERR_MAX];
};

/* ---- helpers --------------------------------------------------------- */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void write_file(const char *dir, const char *name, const char *text, mode_t mode)
{
    char path[600];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    unlink(path);
    FILE *f = fopen(path, "w");
    if (!f)
        fail_msg("cannot create %s: %s", path, strerror(errno));
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(chmod(path, mode), 0);
}

static char *read_whole(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        fail_msg("cannot open %s: %s", path, strerror(errno));
    char *text = calloc(1, 65536);
    assert_non_null(text);
    size_t n = fread(text, 1, 65535, f);
    assert_true(n > 0 && n < 65535);
    fclose(f);
    return text;
}

static int setup(void **state)
{
    struct fixture *fx = calloc(1, sizeof(*fx));
    const char *tmp = getenv("TMPDIR");
    if (!fx)
        return -1;
    snprintf(fx->dir, sizeof(fx->dir), "%s/test_config.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(fx->dir)) {
        free(fx);
        return -1;
    }
    snprintf(fx->path, sizeof(fx->path), "%s/test.conf", fx->dir);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *fx = *state;
    nftw(fx->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(fx);
    return 0;
}

/* Fails unless err holds none of the passwords the tests use. */
static void assert_no_secret(const char *err)
{
    static const char *const secrets[] = {
        AMQP_PW, BM_PW, URI_PW, DATA_AMQP_PW, DATA_BM_PW, "amqp-from-file", "billmgr-from-file"};
    for (size_t i = 0; i < sizeof(secrets) / sizeof(secrets[0]); i++)
        if (strstr(err, secrets[i]))
            fail_msg("error leaks a password: %s", err);
}

/* Loads path, which must fail with an error that starts "PATH:LINE: " (or
 * "PATH: " when line is 0) followed by want. */
static void expect_error(const char *path, int line, const char *want)
{
    char err[CONFIG_ERR_MAX] = "";
    char prefix[700];
    struct config *cfg = config_load(path, err, sizeof(err));
    if (cfg) {
        config_free(cfg);
        fail_msg("%s loaded, but should fail with \"%s\"", path, want);
    }
    if (line > 0)
        snprintf(prefix, sizeof(prefix), "%s:%d: ", path, line);
    else
        snprintf(prefix, sizeof(prefix), "%s: ", path);
    if (strncmp(err, prefix, strlen(prefix)) != 0 || !strstr(err + strlen(prefix), want) ||
        strncmp(err + strlen(prefix), want, strlen(want)) != 0)
        fail_msg("error \"%s\" is not \"%s%s\"", err, prefix, want);
    assert_no_secret(err);
}

static struct config *expect_load(const char *path)
{
    char err[CONFIG_ERR_MAX] = "";
    struct config *cfg = config_load(path, err, sizeof(err));
    if (!cfg)
        fail_msg("%s does not load: %s", path, err);
    return cfg;
}

/* ---- a generated file ------------------------------------------------ */

/* The pieces of a generated file; NULL takes the default. Every piece sits
 * on a line of its own, so an error's line is known. */
struct parts {
    const char *top, *amqp_uri, *amqp_pw, *amqp, *tls, *bm_pw, *bm, *api;
    /* server_user: the rest of the client's id line; NULL = the default
     * server_user = "upstream" (amqp.uri's user is "rt"). */
    const char *server_user, *client_deps, *client, *server_clients, *server, *metrics;
    int no_client, no_server;
};

enum {
    L_TOP = 2,
    L_AMQP_URI = 4,
    L_AMQP_PW = 5,
    L_AMQP = 6,
    L_TLS = 7,
    L_BM_PW = 12,
    L_BM = 13,
    L_API = 14,
    L_CLIENT = 16,
    L_CLIENT_ID = 17, /* id and server_user */
    L_CLIENT_DEPS = 18,
    L_CLIENT_EXTRA = 19,
    L_SERVER = 21,
    L_SERVER_CLIENTS = 22,
    L_SERVER_EXTRA = 23,
    L_METRICS = 25,
};

#define OR(a, b) ((a) ? (a) : (b))

static void write_conf(struct fixture *fx, const struct parts *p)
{
    char text[8192];
    char client[1024];
    char server[1024];

    if (p->no_client)
        snprintf(client, sizeof(client), "#\n#\n#\n#\n#\n");
    else
        snprintf(client, sizeof(client),
                 "client: {\n  id = \"7\"; %s\n  departments = %s;\n  %s\n};\n",
                 OR(p->server_user, "server_user = \"upstream\";"),
                 OR(p->client_deps, "( { local = 3; remote = 12; } )"), OR(p->client, ""));
    if (p->no_server)
        snprintf(server, sizeof(server), "#\n#\n#\n#\n");
    else
        snprintf(server, sizeof(server), "server: {\n  clients = %s;\n  %s\n};\n",
                 OR(p->server_clients,
                    "( { id = \"9\"; amqp_user = \"reseller-b\"; department = 4; } )"),
                 OR(p->server, ""));
    snprintf(text, sizeof(text),
             "# generated by test_config\n"                  /* 1 */
             "%s\n"                                          /* 2 top */
             "amqp: {\n"                                     /* 3 */
             "  uri = %s;\n"                                 /* 4 */
             "  %s\n"                                        /* 5 password */
             "  %s\n"                                        /* 6 */
             "  tls: { %s };\n"                              /* 7 */
             "};\n"                                          /* 8 */
             "billmanager: {\n"                              /* 9 */
             "  url = \"https://127.0.0.1:1500/billmgr\";\n" /* 10 */
             "  login = \"remotetask\";\n"                   /* 11 */
             "  %s\n"                                        /* 12 password */
             "  %s\n"                                        /* 13 */
             "  api: { %s };\n"                              /* 14 */
             "};\n"                                          /* 15 */
             "%s"                                            /* 16..20 client, 17 id */
             "%s"                                            /* 21..24 server */
             "metrics: { %s };\n",                           /* 25 */
             OR(p->top, ""), OR(p->amqp_uri, "\"amqp://rt@127.0.0.1:5672/%2f\""),
             OR(p->amqp_pw, "password = \"" AMQP_PW "\";"), OR(p->amqp, ""), OR(p->tls, ""),
             OR(p->bm_pw, "password = \"" BM_PW "\";"), OR(p->bm, ""), OR(p->api, ""), client,
             server, OR(p->metrics, ""));
    write_file(fx->dir, "test.conf", text, 0600);
}

/* ---- the examples ---------------------------------------------------- */

static void copy_example(struct fixture *fx, const char *name)
{
    char src[600];
    snprintf(src, sizeof(src), "%s/%s", EXAMPLE_DIR, name);
    char *text = read_whole(src);
    write_file(fx->dir, "test.conf", text, 0644);
    free(text);
    write_file(fx->dir, "amqp.password", "amqp-from-file\n", 0600);
    write_file(fx->dir, "billmgr.password", "billmgr-from-file\r\n", 0600);
}

static void test_client_example_loads(void **state)
{
    struct fixture *fx = *state;
    copy_example(fx, "client.conf.example");
    struct config *cfg = expect_load(fx->path);

    assert_string_equal(cfg->file, fx->path);
    assert_string_equal(cfg->instance, "reseller-a");
    assert_string_equal(cfg->state_dir, "/var/lib/remotetask");
    assert_int_equal(cfg->log_level, LOG_LEVEL_INFO);
    assert_string_equal(cfg->amqp.host, "127.0.0.1");
    assert_int_equal(cfg->amqp.port, 5672);
    assert_string_equal(cfg->amqp.vhost, "/");
    assert_string_equal(cfg->amqp.user, "reseller-a");
    assert_false(cfg->amqp.ssl);
    assert_string_equal(cfg->amqp.password, "amqp-from-file");
    /* The directory may be reached through a symbolic link (/tmp). */
    assert_non_null(strstr(cfg->amqp.password_file, "/amqp.password"));
    assert_int_equal(cfg->amqp.password_file[0], '/');
    assert_string_equal(cfg->billmanager.password, "billmgr-from-file");
    assert_string_equal(cfg->billmanager.url, "https://127.0.0.1:1500/billmgr");
    assert_string_equal(cfg->billmanager.login, "remotetask");
    assert_true(cfg->client.enabled);
    assert_false(cfg->server.enabled);
    assert_string_equal(cfg->client.id, "7");
    /* The server example's AMQP user. */
    assert_string_equal(cfg->client.server_user, "upstream");
    assert_int_equal(cfg->amqp.n_nodes, 1);
    assert_string_equal(cfg->amqp.uris_redacted, "amqp://reseller-a@127.0.0.1:5672/%2f");
    assert_int_equal(cfg->client.n_departments, 1);
    assert_int_equal(cfg->client.departments[0].local, 3);
    assert_int_equal(cfg->client.departments[0].remote, 12);
    assert_int_equal(cfg->client.n_performers, 0);
    assert_false(cfg->metrics.enabled);
    assert_int_equal(cfg->journal.entries, 100);
    assert_int_equal(cfg->journal.days, 30);
    assert_null(config_server_client_find(cfg, "7"));
    config_free(cfg);
}

static void test_server_example_loads(void **state)
{
    struct fixture *fx = *state;
    copy_example(fx, "server.conf.example");
    struct config *cfg = expect_load(fx->path);

    assert_string_equal(cfg->instance, "upstream");
    assert_true(cfg->amqp.ssl);
    assert_int_equal(cfg->amqp.port, 5671);
    assert_string_equal(cfg->amqp.queue_type, "quorum");
    assert_false(cfg->client.enabled);
    assert_true(cfg->server.enabled);
    assert_int_equal(cfg->server.sync_interval, 300);
    assert_int_equal(cfg->server.n_clients, 2);
    const struct config_server_client *c = config_server_client_find(cfg, "8");
    assert_non_null(c);
    assert_string_equal(c->amqp_user, "reseller-b");
    assert_int_equal(c->department, 13);
    assert_null(config_server_client_find(cfg, "9"));
    assert_null(config_server_client_find(cfg, NULL));
    assert_true(cfg->metrics.enabled);
    assert_string_equal(cfg->metrics.host, "127.0.0.1");
    assert_int_equal(cfg->metrics.port, 9464);
    config_free(cfg);
}

/* Every setting an example leaves out, and every one it sets, is in the
 * example: an operator reads the example as the list of settings. */
static void test_examples_list_every_setting(void **state)
{
    static const char *const names[] = {"instance",
                                        "state_dir",
                                        "control_socket",
                                        "log_level",
                                        "uri",
                                        "password_file",
                                        "password",
                                        "heartbeat",
                                        "prefetch",
                                        "queue_type",
                                        "connect_timeout",
                                        "ca_file",
                                        "cert_file",
                                        "key_file",
                                        "verify_peer",
                                        "verify_hostname",
                                        "url",
                                        "login",
                                        "timeout",
                                        "max_inflight",
                                        "max_response",
                                        "verify_tls",
                                        "auth",
                                        "page_size",
                                        "func_task",
                                        "func_task_edit",
                                        "func_department",
                                        "func_user",
                                        "field_name",
                                        "field_note",
                                        "field_type",
                                        "field_deadline",
                                        "field_status",
                                        "field_performer",
                                        "field_department",
                                        "field_updated",
                                        "task_type",
                                        "listen"};
    (void)state;
    for (int e = 0; e < 2; e++) {
        char path[600];
        snprintf(path, sizeof(path), "%s/%s", EXAMPLE_DIR,
                 e ? "server.conf.example" : "client.conf.example");
        char *text = read_whole(path);
        for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
            char needle[64];
            snprintf(needle, sizeof(needle), "%s = ", names[i]);
            if (!strstr(text, needle))
                fail_msg("%s does not show the setting %s", path, names[i]);
        }
        free(text);
    }
}

/* ---- defaults -------------------------------------------------------- */

static void test_defaults(void **state)
{
    struct fixture *fx = *state;
    struct parts p = {0};
    write_conf(fx, &p);
    struct config *cfg = expect_load(fx->path);

    assert_string_equal(cfg->instance, "remotetask");
    assert_string_equal(cfg->state_dir, "/var/lib/remotetask");
    assert_string_equal(cfg->control_socket, "/run/remotetask/remotetaskd.sock");
    assert_int_equal(cfg->log_level, LOG_LEVEL_INFO);
    assert_string_equal(cfg->amqp.password, AMQP_PW);
    assert_string_equal(cfg->amqp.password_file, "");
    assert_int_equal(cfg->amqp.heartbeat, 30);
    assert_int_equal(cfg->amqp.prefetch, 64);
    assert_string_equal(cfg->amqp.queue_type, "classic");
    assert_int_equal(cfg->amqp.connect_timeout, 10);
    assert_string_equal(cfg->amqp.tls.ca_file, "");
    assert_string_equal(cfg->amqp.tls.cert_file, "");
    assert_string_equal(cfg->amqp.tls.key_file, "");
    assert_true(cfg->amqp.tls.verify_peer);
    assert_true(cfg->amqp.tls.verify_hostname);
    assert_string_equal(cfg->billmanager.password, BM_PW);
    assert_int_equal(cfg->billmanager.timeout, 30);
    assert_int_equal(cfg->billmanager.connect_timeout, 10);
    assert_int_equal(cfg->billmanager.max_inflight, 16);
    assert_int_equal(cfg->billmanager.max_response, 4194304);
    assert_string_equal(cfg->billmanager.ca_file, "");
    assert_true(cfg->billmanager.verify_tls);
    const struct config_billmgr_api *api = &cfg->billmanager.api;
    assert_string_equal(api->auth, "authinfo");
    assert_int_equal(api->page_size, 200);
    assert_string_equal(api->func_task, "task");
    assert_string_equal(api->func_task_edit, "task.edit");
    assert_string_equal(api->func_department, "department");
    assert_string_equal(api->func_user, "user");
    assert_string_equal(api->field_name, "name");
    assert_string_equal(api->field_note, "note");
    assert_string_equal(api->field_type, "type");
    assert_string_equal(api->field_deadline, "deadline");
    assert_string_equal(api->field_status, "status");
    assert_string_equal(api->field_performer, "performer");
    assert_string_equal(api->field_department, "department");
    assert_string_equal(api->field_updated, "updated");
    assert_string_equal(api->task_type, "");
    assert_int_equal(cfg->client.poll_interval, 60);
    assert_int_equal(cfg->server.sync_interval, 300);
    assert_false(cfg->metrics.enabled);
    assert_string_equal(cfg->metrics.listen, "");
    assert_int_equal(cfg->journal.entries, 100);
    assert_int_equal(cfg->journal.days, 30);
    config_free(cfg);
}

/* The journal's bounds, set; 0 entries (no journal) is a value. */
static void test_journal_settings(void **state)
{
    struct fixture *fx = *state;
    struct parts p = {.top = "journal: { entries = 0; days = 7; };"};
    write_conf(fx, &p);
    struct config *cfg = expect_load(fx->path);
    assert_int_equal(cfg->journal.entries, 0);
    assert_int_equal(cfg->journal.days, 7);
    config_free(cfg);
    p.top = "journal: { entries = 10000; days = 3650; };";
    write_conf(fx, &p);
    cfg = expect_load(fx->path);
    assert_int_equal(cfg->journal.entries, 10000);
    assert_int_equal(cfg->journal.days, 3650);
    config_free(cfg);
}

/* A short billmanager.timeout pulls the default connect_timeout down
 * instead of refusing it. */
static void test_connect_timeout_follows_short_timeout(void **state)
{
    struct fixture *fx = *state;
    struct parts p = {.bm = "timeout = 4;"};
    write_conf(fx, &p);
    struct config *cfg = expect_load(fx->path);
    assert_int_equal(cfg->billmanager.timeout, 4);
    assert_int_equal(cfg->billmanager.connect_timeout, 4);
    config_free(cfg);
}

static void test_values_are_read(void **state)
{
    struct fixture *fx = *state;
    struct parts p = {
        /* Big numbers in comments and strings are not integers. */
        .top = "instance = \"a.b_c-9\"; log_level = \"debug\"; state_dir = \"state\"; "
               "# 99999999999",
        .amqp = "heartbeat = 0; prefetch = 65535; queue_type = \"quorum\"; connect_timeout = 300;",
        .tls = "verify_peer = false; verify_hostname = false;",
        .bm = "timeout = 3600; connect_timeout = 3600; max_inflight = 256; "
              "max_response = 1073741824; verify_tls = false;",
        .api = "auth = \"session\"; page_size = 100000; func_task = \"mytask\"; task_type = "
               "\"postopen\"; /* 99999999999 */ field_note = \"n99999999999\";",
        .client = "poll_interval = 86400; performers = ( { remote = 21; local = 1; } );",
        .server = "sync_interval = 86400;",
        .metrics = "listen = \"[::1]:9464\";",
    };
    write_conf(fx, &p);
    struct config *cfg = expect_load(fx->path);
    assert_string_equal(cfg->instance, "a.b_c-9");
    assert_int_equal(cfg->log_level, LOG_LEVEL_DEBUG);
    assert_int_equal(cfg->state_dir[0], '/');
    assert_non_null(strstr(cfg->state_dir, "/state"));
    assert_int_equal(cfg->amqp.heartbeat, 0);
    assert_int_equal(cfg->amqp.prefetch, 65535);
    assert_string_equal(cfg->amqp.queue_type, "quorum");
    assert_int_equal(cfg->amqp.connect_timeout, 300);
    assert_false(cfg->amqp.tls.verify_peer);
    assert_false(cfg->amqp.tls.verify_hostname);
    assert_int_equal(cfg->billmanager.timeout, 3600);
    assert_int_equal(cfg->billmanager.connect_timeout, 3600);
    assert_int_equal(cfg->billmanager.max_inflight, 256);
    assert_int_equal(cfg->billmanager.max_response, 1073741824);
    assert_false(cfg->billmanager.verify_tls);
    assert_string_equal(cfg->billmanager.api.auth, "session");
    assert_int_equal(cfg->billmanager.api.page_size, 100000);
    assert_string_equal(cfg->billmanager.api.func_task, "mytask");
    assert_string_equal(cfg->billmanager.api.task_type, "postopen");
    assert_string_equal(cfg->billmanager.api.field_note, "n99999999999");
    assert_int_equal(cfg->client.poll_interval, 86400);
    assert_int_equal(cfg->client.n_performers, 1);
    assert_int_equal(cfg->client.performers[0].remote, 21);
    assert_int_equal(cfg->client.performers[0].local, 1);
    assert_int_equal(cfg->server.sync_interval, 86400);
    assert_true(cfg->metrics.enabled);
    assert_string_equal(cfg->metrics.host, "::1");
    assert_int_equal(cfg->metrics.port, 9464);
    config_free(cfg);
}

/* ---- bounds and types ------------------------------------------------ */

struct bad_case {
    int line; /* which piece of the generated file holds text */
    const char *text;
    const char *want; /* what follows "FILE:LINE: " */
};

static const struct bad_case bad_cases[] = {
    {L_TOP, "instance = \"\";", "instance: must not be empty"},
    {L_TOP, "instance = \"a b\";", "instance: may hold only letters, digits, '.', '_' and '-'"},
    {L_TOP, "instance = \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\";",
     "instance: must be at most 64 characters long"},
    {L_TOP, "instance = 5;", "instance: must be a string (in double quotes)"},
    {L_TOP, "log_level = \"verbose\";",
     "log_level: must be \"error\", \"warning\", \"info\" or \"debug\", not \"verbose\""},
    {L_TOP, "state_dir = \"\";", "state_dir: must not be empty"},
    {L_TOP,
     "control_socket = \"/run/remotetask/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
     "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.sock\";",
     "control_socket: \"/run/remotetask/aaaa"},
    {L_AMQP, "heartbeat = -1;", "amqp.heartbeat: must be between 0 and 3600, not -1"},
    {L_AMQP, "heartbeat = 3601;", "amqp.heartbeat: must be between 0 and 3600, not 3601"},
    {L_AMQP, "prefetch = 0;", "amqp.prefetch: must be between 1 and 65535, not 0"},
    {L_AMQP, "prefetch = 65536;", "amqp.prefetch: must be between 1 and 65535, not 65536"},
    {L_AMQP, "prefetch = \"64\";", "amqp.prefetch: must be an integer"},
    {L_AMQP, "prefetch = 6.4;", "amqp.prefetch: must be an integer"},
    {L_AMQP, "prefetch = 4294967360;",
     "prefetch: the integer does not fit in 32 bits (at most 2147483647)"},
    {L_AMQP, "prefetch = -2147483649;",
     "prefetch: the integer does not fit in 32 bits (at most -2147483648)"},
    {L_AMQP, "prefetch = 70000L;", "amqp.prefetch: must be between 1 and 65535, not 70000"},
    {L_AMQP, "queue_type = \"lazy\";",
     "amqp.queue_type: must be \"classic\" or \"quorum\", not \"lazy\""},
    {L_AMQP, "connect_timeout = 0;", "amqp.connect_timeout: must be between 1 and 300, not 0"},
    {L_AMQP, "connect_timeout = 301;", "amqp.connect_timeout: must be between 1 and 300, not 301"},
    {L_TLS, "verify_peer = 1;", "amqp.tls.verify_peer: must be true or false"},
    {L_TLS, "verify_hostname = \"yes\";", "amqp.tls.verify_hostname: must be true or false"},
    {L_TLS, "ca_file = \"no-such-ca.pem\";", "amqp.tls.ca_file: cannot open \""},
    {L_BM, "timeout = 0;", "billmanager.timeout: must be between 1 and 3600, not 0"},
    {L_BM, "timeout = 3601;", "billmanager.timeout: must be between 1 and 3600, not 3601"},
    {L_BM, "connect_timeout = 0;",
     "billmanager.connect_timeout: must be between 1 and 3600, not 0"},
    {L_BM, "connect_timeout = 31;",
     "billmanager.connect_timeout: must be between 1 and billmanager.timeout (30), not 31"},
    {L_BM, "max_inflight = 0;", "billmanager.max_inflight: must be between 1 and 256, not 0"},
    {L_BM, "max_inflight = 257;", "billmanager.max_inflight: must be between 1 and 256, not 257"},
    {L_BM, "max_response = 65535;",
     "billmanager.max_response: must be between 65536 and 1073741824, not 65535"},
    {L_BM, "max_response = 1073741825;",
     "billmanager.max_response: must be between 65536 and 1073741824, not 1073741825"},
    {L_BM, "verify_tls = 0;", "billmanager.verify_tls: must be true or false"},
    {L_BM, "ca_file = \"/nonexistent/ca.pem\";",
     "billmanager.ca_file: cannot open \"/nonexistent/ca.pem\": No such file or directory"},
    {L_API, "auth = \"basic\";",
     "billmanager.api.auth: must be \"authinfo\" or \"session\", not \"basic\""},
    {L_API, "page_size = 0;", "billmanager.api.page_size: must be between 1 and 100000, not 0"},
    {L_API, "page_size = 100001;",
     "billmanager.api.page_size: must be between 1 and 100000, not 100001"},
    {L_API, "func_task = \"\";", "billmanager.api.func_task: must not be empty"},
    {L_API, "field_name = \"a&b\";",
     "billmanager.api.field_name: may hold only letters, digits, '.', '_' and '-'"},
    {L_API, "fnuc_task = \"task\";", "billmanager.api.fnuc_task: unknown setting"},
    {L_CLIENT_EXTRA, "poll_interval = 4;",
     "client.poll_interval: must be between 5 and 86400, not 4"},
    {L_CLIENT_EXTRA, "poll_interval = 86401;",
     "client.poll_interval: must be between 5 and 86400, not 86401"},
    {L_CLIENT_EXTRA, "performers = ( { remote = 21; local = -1; } );",
     "client.performers[0].local: must be a positive id, not -1"},
    {L_CLIENT_EXTRA, "performers = ( { remote = 21; } );",
     "client.performers[0].local: required setting is missing"},
    {L_CLIENT_EXTRA, "performers = ( 21 );",
     "client.performers[0]: must be a group, like ( { remote = 21; local = 1; } )"},
    {L_SERVER_EXTRA, "sync_interval = 0;",
     "server.sync_interval: must be between 1 and 86400, not 0"},
    {L_SERVER_EXTRA, "sync_interval = 86401;",
     "server.sync_interval: must be between 1 and 86400, not 86401"},
    {L_SERVER_CLIENTS, "( { id = \"9\"; amqp_user = \"b\"; department = \"4\"; } )",
     "server.clients[0].department: must be an integer"},
    {L_SERVER_CLIENTS, "( { id = \"9 9\"; amqp_user = \"b\"; department = 4; } )",
     "server.clients[0].id: may hold only letters, digits, '.', '_' and '-'"},
    {L_SERVER_CLIENTS, "( { id = \"9\"; department = 4; } )",
     "server.clients[0].amqp_user: required setting is missing"},
    {L_METRICS, "listen = \"127.0.0.1:0\";",
     "metrics.listen: the port must be between 1 and 65535"},
    {L_METRICS, "listen = \"127.0.0.1:65536\";",
     "metrics.listen: the port must be between 1 and 65535"},
    {L_METRICS, "listen = \"127.0.0.1\";",
     "metrics.listen: must be \"HOST:PORT\", like \"127.0.0.1:9464\""},
    {L_METRICS, "listen = \"example.com:9464\";",
     "metrics.listen: the host must be an IP address or \"localhost\""},
    {L_METRICS, "listen = \"::1:9464\";",
     "metrics.listen: an IPv6 address goes in brackets: \"[::1]:9464\""},
    {L_METRICS, "listen = \"[::1]\";",
     "metrics.listen: must be \"HOST:PORT\", like \"[::1]:9464\""},
    {L_METRICS, "listne = \"127.0.0.1:9464\";", "metrics.listne: unknown setting"},
    {L_TOP, "journal: { entries = -1; };", "journal.entries: must be between 0 and 10000, not -1"},
    {L_TOP, "journal: { entries = 10001; };",
     "journal.entries: must be between 0 and 10000, not 10001"},
    {L_TOP, "journal: { days = 0; };", "journal.days: must be between 1 and 3650, not 0"},
    {L_TOP, "journal: { days = 3651; };", "journal.days: must be between 1 and 3650, not 3651"},
    {L_TOP, "journal: { dyas = 3; };", "journal.dyas: unknown setting"},
};

static void test_bad_values_refused(void **state)
{
    struct fixture *fx = *state;
    for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
        const struct bad_case *c = &bad_cases[i];
        struct parts p = {0};
        switch (c->line) {
        case L_TOP: p.top = c->text; break;
        case L_AMQP: p.amqp = c->text; break;
        case L_TLS: p.tls = c->text; break;
        case L_BM: p.bm = c->text; break;
        case L_API: p.api = c->text; break;
        case L_CLIENT_EXTRA: p.client = c->text; break;
        case L_SERVER_CLIENTS: p.server_clients = c->text; break;
        case L_SERVER_EXTRA: p.server = c->text; break;
        case L_METRICS: p.metrics = c->text; break;
        default: fail_msg("case %zu: no piece for line %d", i, c->line);
        }
        write_conf(fx, &p);
        expect_error(fx->path, c->line, c->want);
    }
}

/* The largest and smallest values of each bound load. */
static void test_bounds_accepted(void **state)
{
    struct fixture *fx = *state;
    struct parts p = {
        .amqp = "heartbeat = 3600; prefetch = 1; connect_timeout = 1;",
        .bm = "timeout = 1; connect_timeout = 1; max_inflight = 1; max_response = 65536;",
        .api = "page_size = 1;",
        .client = "poll_interval = 5;",
        .server = "sync_interval = 1;",
        .metrics = "listen = \"localhost:65535\";",
    };
    write_conf(fx, &p);
    struct config *cfg = expect_load(fx->path);
    assert_int_equal(cfg->amqp.heartbeat, 3600);
    assert_int_equal(cfg->amqp.prefetch, 1);
    assert_int_equal(cfg->billmanager.max_response, 65536);
    assert_int_equal(cfg->client.poll_interval, 5);
    assert_int_equal(cfg->server.sync_interval, 1);
    assert_string_equal(cfg->metrics.host, "localhost");
    assert_int_equal(cfg->metrics.port, 65535);
    config_free(cfg);
}

/* ---- data files ------------------------------------------------------ */

struct data_case {
    const char *file;
    int line;
    const char *want;
};

static const struct data_case data_cases[] = {
    {"unknown_setting.conf", 6, "amqp.prefetc: unknown setting"},
    {"unknown_in_list.conf", 16, "client.departments[1].lcoal: unknown setting"},
    {"syntax_error.conf", 7, "syntax error"},
    {"include.conf", 16, "@include is not supported: keep the configuration in one file"},
    {"bigint.conf", 6, "prefetch: the integer does not fit in 32 bits"},
    {"dup_local.conf", 16,
     "client.departments[1]: local department 3 is already mapped by client.departments[0]"},
    {"dup_remote.conf", 16,
     "client.departments[1]: remote department 12 is already mapped by client.departments[0]"},
    {"dup_performer.conf", 17,
     "client.performers[1]: remote performer 21 is already mapped by client.performers[0]"},
    {"dup_server_department.conf", 15,
     "server.clients[1]: department 12 is already used by server.clients[0]"},
    {"dup_client_id.conf", 15,
     "server.clients[1]: client id \"7\" is already used by "
     "server.clients[0]"},
    {"dup_amqp_user.conf", 15,
     "server.clients[1]: amqp_user \"a\" is already used by server.clients[0]"},
    {"dup_client_server_department.conf", 18,
     "server.clients[0].department: department 3 is also mapped by client.departments[0]"},
    {"no_role.conf", 0, "neither client: nor server: is present"},
    {"missing_client_id.conf", 12, "client.id: required setting is missing"},
    {"missing_departments.conf", 12, "client.departments: required setting is missing"},
    {"empty_departments.conf", 14, "client.departments: must not be empty"},
    {"missing_clients.conf", 12, "server.clients: required setting is missing"},
    {"departments_not_list.conf", 14, "client.departments: must be a list of groups"},
    {"department_zero.conf", 14, "client.departments[0].local: must be a positive id, not 0"},
    {"amqp_not_group.conf", 3, "amqp: must be a group"},
    {"missing_amqp_uri.conf", 3, "amqp.uri: required setting is missing"},
    {"missing_login.conf", 7, "billmanager.login: required setting is missing"},
    {"missing_billmanager.conf", 0, "billmanager: required group is missing"},
};

static void test_data_files_refused(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(data_cases) / sizeof(data_cases[0]); i++) {
        char path[600];
        snprintf(path, sizeof(path), "%s/%s", DATA_DIR, data_cases[i].file);
        expect_error(path, data_cases[i].line, data_cases[i].want);
    }
}

static void test_data_file_valid(void **state)
{
    (void)state;
    struct config *cfg = expect_load(DATA_DIR "/valid_both.conf");
    assert_true(cfg->client.enabled);
    assert_true(cfg->server.enabled);
    assert_int_equal(cfg->client.n_performers, 2);
    /* Two remote staff members may map to one local one. */
    assert_int_equal(cfg->client.performers[1].local, 1);
    /* An integer id is kept as its decimal string. */
    assert_non_null(config_server_client_find(cfg, "9"));
    assert_string_equal(cfg->amqp.password, DATA_AMQP_PW);
    assert_string_equal(cfg->billmanager.password, DATA_BM_PW);
    config_free(cfg);
}

static void test_missing_file(void **state)
{
    struct fixture *fx = *state;
    char path[600];
    snprintf(path, sizeof(path), "%s/none.conf", fx->dir);
    expect_error(path, 0, "cannot open: No such file or directory");
    expect_error(fx->dir, 0, "not a regular file");
}

static void test_unknown_top_level_setting(void **state)
{
    struct fixture *fx = *state;
    struct parts p = {.top = "log_levle = \"debug\";"};
    write_conf(fx, &p);
    expect_error(fx->path, L_TOP, "log_levle: unknown setting");
}

static void test_roles_required(void **state)
{
    struct fixture *fx = *state;
    struct parts p = {.no_client = 1, .no_server = 1};
    write_conf(fx, &p);
    expect_error(fx->path, 0, "neither client: nor server: is present");

    struct parts client_only = {.no_server = 1};
    write_conf(fx, &client_only);
    struct config *cfg = expect_load(fx->path);
    assert_true(cfg->client.enabled);
    assert_false(cfg->server.enabled);
    assert_int_equal(cfg->server.n_clients, 0);
    config_free(cfg);
}

static void test_client_id_integer(void **state)
{
    struct fixture *fx = *state;
    write_file(fx->dir, "test.conf",
               "amqp: { uri = \"amqp://rt@h/%2f\"; password = \"" AMQP_PW "\"; };\n"
               "billmanager: { url = \"http://h/\"; login = \"l\"; password = \"" BM_PW "\"; };\n"
               "client: { id = 42; server_user = \"up\";\n"
               "  departments = ( { local = 1; remote = 2; } ); };\n",
               0600);
    struct config *cfg = expect_load(fx->path);
    assert_string_equal(cfg->client.id, "42");
    config_free(cfg);
    write_file(fx->dir, "test.conf",
               "amqp: { uri = \"amqp://rt@h/%2f\"; password = \"" AMQP_PW "\"; };\n"
               "billmanager: { url = \"http://h/\"; login = \"l\"; password = \"" BM_PW "\"; };\n"
               "client: { id = 4.2; server_user = \"up\";\n"
               "  departments = ( { local = 1; remote = 2; } ); };\n",
               0600);
    expect_error(fx->path, 3, "client.id: must be a string or an integer");
}

/* ---- password files -------------------------------------------------- */

static void test_password_file_read(void **state)
{
    struct fixture *fx = *state;
    struct parts p = {.amqp_pw = "password_file = \"amqp.pw\";",
                      .bm_pw = "password_file = \"bm.pw\";"};
    write_conf(fx, &p);
    write_file(fx->dir, "amqp.pw", "amqp-from-file\r\nsecond line\n", 0600);
    write_file(fx->dir, "bm.pw", "billmgr-from-file", 0400);
    struct config *cfg = expect_load(fx->path);
    assert_string_equal(cfg->amqp.password, "amqp-from-file");
    assert_string_equal(cfg->billmanager.password, "billmgr-from-file");
    assert_non_null(strstr(cfg->billmanager.password_file, "/bm.pw"));
    config_free(cfg);
}

static void test_password_file_refused(void **state)
{
    struct fixture *fx = *state;
    char want[700];
    char pwpath[600];
    struct parts p = {.amqp_pw = "password_file = \"amqp.pw\";"};
    write_conf(fx, &p);

    /* The error shows the resolved path, which goes through realpath. */
    char *real = realpath(fx->dir, NULL);
    assert_non_null(real);
    snprintf(pwpath, sizeof(pwpath), "%s/amqp.pw", real);
    free(real);

    write_file(fx->dir, "amqp.pw", "amqp-from-file\n", 0644);
    snprintf(want, sizeof(want),
             "amqp.password_file: \"%s\" is readable by group or others (mode 0644): chmod 600 it",
             pwpath);
    expect_error(fx->path, L_AMQP_PW, want);

    write_file(fx->dir, "amqp.pw", "amqp-from-file\n", 0604);
    snprintf(want, sizeof(want),
             "amqp.password_file: \"%s\" is readable by group or others (mode 0604): chmod 600 it",
             pwpath);
    expect_error(fx->path, L_AMQP_PW, want);

    write_file(fx->dir, "amqp.pw", "amqp-from-file\n", 0620);
    snprintf(want, sizeof(want),
             "amqp.password_file: \"%s\" is writable by group or others (mode 0620): chmod 600 it",
             pwpath);
    expect_error(fx->path, L_AMQP_PW, want);

    write_file(fx->dir, "amqp.pw", "\r\nsecond\n", 0600);
    expect_error(fx->path, L_AMQP_PW, "amqp.password_file: \"");
    char err[CONFIG_ERR_MAX];
    assert_null(config_load(fx->path, err, sizeof(err)));
    assert_non_null(strstr(err, "is empty"));

    char *big = malloc(5001);
    assert_non_null(big);
    memset(big, 'x', 5000);
    big[5000] = '\0';
    write_file(fx->dir, "amqp.pw", big, 0600);
    free(big);
    assert_null(config_load(fx->path, err, sizeof(err)));
    assert_non_null(strstr(err, "is longer than 4096 bytes"));

    unlink(pwpath);
    snprintf(want, sizeof(want),
             "amqp.password_file: cannot open \"%s\": No such file or directory", pwpath);
    expect_error(fx->path, L_AMQP_PW, want);

    assert_int_equal(mkdir(pwpath, 0700), 0);
    snprintf(want, sizeof(want), "amqp.password_file: \"%s\" is not a regular file", pwpath);
    expect_error(fx->path, L_AMQP_PW, want);
    assert_int_equal(rmdir(pwpath), 0);
}

static void test_password_sources(void **state)
{
    struct fixture *fx = *state;

    struct parts none = {.amqp_pw = "#"};
    write_conf(fx, &none);
    expect_error(fx->path, 3, "amqp: no password: set amqp.password_file");

    struct parts bm_none = {.bm_pw = "#"};
    write_conf(fx, &bm_none);
    expect_error(fx->path, 9, "billmanager: no password: set billmanager.password_file");

    write_file(fx->dir, "amqp.pw", "amqp-from-file\n", 0600);
    struct parts two = {.amqp_pw = "password = \"" AMQP_PW "\"; password_file = \"amqp.pw\";"};
    write_conf(fx, &two);
    expect_error(fx->path, L_AMQP_PW, "amqp: more than one password: set only one of");

    struct parts uri_and_inline = {.amqp_uri = "\"amqp://rt:" URI_PW "@127.0.0.1/%2f\""};
    write_conf(fx, &uri_and_inline);
    expect_error(fx->path, L_AMQP_PW, "amqp: more than one password");

    /* An unquoted numeric password is refused without being shown. */
    struct parts numeric = {.amqp_pw = "password = 99999999999;"};
    write_conf(fx, &numeric);
    expect_error(fx->path, L_AMQP_PW, "password: the integer does not fit in 32 bits");
    char err[CONFIG_ERR_MAX];
    assert_null(config_load(fx->path, err, sizeof(err)));
    assert_null(strstr(err, "99999999999"));

    struct parts empty = {.amqp_pw = "password = \"\";"};
    write_conf(fx, &empty);
    expect_error(fx->path, L_AMQP_PW, "amqp.password: must not be empty");
}

/* ---- the AMQP uri ---------------------------------------------------- */

static struct config *load_uri(struct fixture *fx, const char *uri, const char *pw)
{
    char quoted[512];
    struct parts p = {.amqp_uri = quoted, .amqp_pw = pw};
    snprintf(quoted, sizeof(quoted), "\"%s\"", uri);
    write_conf(fx, &p);
    return expect_load(fx->path);
}

static void test_uri_parsed(void **state)
{
    struct fixture *fx = *state;
    struct config *cfg = load_uri(fx, "amqp://rt@broker.example/%2f", NULL);
    assert_string_equal(cfg->amqp.host, "broker.example");
    assert_int_equal(cfg->amqp.port, 5672);
    assert_string_equal(cfg->amqp.vhost, "/");
    assert_string_equal(cfg->amqp.user, "rt");
    assert_false(cfg->amqp.ssl);
    assert_string_equal(cfg->amqp.uri_redacted, "amqp://rt@broker.example/%2f");
    config_free(cfg);

    cfg = load_uri(fx, "amqps://rt@broker.example/prod", NULL);
    assert_true(cfg->amqp.ssl);
    assert_int_equal(cfg->amqp.port, 5671);
    assert_string_equal(cfg->amqp.vhost, "prod");
    config_free(cfg);

    cfg = load_uri(fx, "amqps://r%40t@[::1]:15671/%2fa", NULL);
    assert_string_equal(cfg->amqp.user, "r@t");
    assert_string_equal(cfg->amqp.host, "::1");
    assert_int_equal(cfg->amqp.port, 15671);
    assert_string_equal(cfg->amqp.vhost, "/a");
    config_free(cfg);

    /* Without a path librabbitmq takes the default vhost "/". */
    cfg = load_uri(fx, "amqp://rt@h:1234", NULL);
    assert_int_equal(cfg->amqp.port, 1234);
    assert_string_equal(cfg->amqp.vhost, "/");
    config_free(cfg);
}

static void test_uri_password(void **state)
{
    struct fixture *fx = *state;
    struct config *cfg = load_uri(fx, "amqp://rt:" URI_PW "@127.0.0.1:5672/%2f", "#");
    assert_string_equal(cfg->amqp.password, URI_PW);
    assert_string_equal(cfg->amqp.user, "rt");
    assert_null(strstr(cfg->amqp.uri_redacted, URI_PW));
    assert_string_equal(cfg->amqp.uri_redacted, "amqp://rt:***@127.0.0.1:5672/%2f");
    config_free(cfg);

    /* Percent-encoded characters in the password are decoded. */
    cfg = load_uri(fx, "amqp://rt:a%40b@127.0.0.1/%2f", "#");
    assert_string_equal(cfg->amqp.password, "a@b");
    config_free(cfg);
}

static void test_uri_refused(void **state)
{
    struct fixture *fx = *state;
    static const struct {
        const char *uri;
        const char *want;
    } cases[] = {
        {"http://rt@h/%2f", "amqp.uri: must start with amqp:// or amqps://"},
        {"amqp://127.0.0.1:5672/%2f", "amqp.uri: \"amqp://127.0.0.1:5672/%2f\" names no user: "
                                      "write amqp://USER@HOST:PORT/VHOST"},
        {"amqp://:" URI_PW "@127.0.0.1/%2f",
         "amqp.uri: \"amqp://:***@127.0.0.1/%2f\" names no user"},
        {"amqp://rt:" URI_PW "@127.0.0.1:99999/%2f",
         "amqp.uri: \"amqp://rt:***@127.0.0.1:99999/%2f\" is not a valid AMQP URI"},
        {"amqp://rt:" URI_PW "@127.0.0.1/a/b",
         "amqp.uri: \"amqp://rt:***@127.0.0.1/a/b\" is not a valid"},
        {"amqp://rt@127.0.0.1/", "amqp.uri: \"amqp://rt@127.0.0.1/\" names an empty virtual host"},
        {"amqp://rt:@127.0.0.1/%2f",
         "amqp.uri: \"amqp://rt:***@127.0.0.1/%2f\" holds an empty password"},
        {"", "amqp.uri: must not be empty"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char quoted[512];
        struct parts p = {.amqp_uri = quoted, .amqp_pw = "#"};
        snprintf(quoted, sizeof(quoted), "\"%s\"", cases[i].uri);
        write_conf(fx, &p);
        expect_error(fx->path, L_AMQP_URI, cases[i].want);
    }
}

/* ---- amqp.uri as a list of nodes ------------------------------------- */

/* The list form of an example: its commented "#uri = ( ... );" block in
 * place of its single uri, so that the form the example documents is
 * known to load. */
static void uncomment_uri_list(struct fixture *fx, const char *example)
{
    char src[600];
    snprintf(src, sizeof(src), "%s/%s", EXAMPLE_DIR, example);
    char *text = read_whole(src);
    char *out = calloc(1, strlen(text) + 16);
    assert_non_null(out);
    int in_list = 0, found = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        const char *t = line + strspn(line, " ");
        if (strncmp(t, "uri = \"", 7) == 0) {
            strcat(out, "#");
        } else if (strncmp(t, "#uri = (", 8) == 0 || in_list) {
            char *hash = strchr(line, '#');
            memmove(hash, hash + 1, strlen(hash));
            in_list = !strstr(line, ");");
            found = 1;
        }
        strcat(out, line);
        strcat(out, "\n");
    }
    if (!found)
        fail_msg("%s shows no list form of amqp.uri", example);
    write_file(fx->dir, "test.conf", out, 0644);
    write_file(fx->dir, "amqp.password", "amqp-from-file\n", 0600);
    write_file(fx->dir, "billmgr.password", "billmgr-from-file\n", 0600);
    free(out);
    free(text);
}

static void test_examples_uri_list_loads(void **state)
{
    struct fixture *fx = *state;
    static const char *const names[] = {"client.conf.example", "server.conf.example"};
    static const char *const users[] = {"reseller-a", "upstream"};
    for (int e = 0; e < 2; e++) {
        uncomment_uri_list(fx, names[e]);
        struct config *cfg = expect_load(fx->path);
        assert_int_equal(cfg->amqp.n_nodes, 3);
        assert_string_equal(cfg->amqp.user, users[e]);
        assert_string_equal(cfg->amqp.host, "mq1.example.net");
        assert_string_equal(cfg->amqp.nodes[2].host, "mq3.example.net");
        assert_true(cfg->amqp.nodes[2].ssl);
        assert_string_equal(cfg->amqp.password, "amqp-from-file");
        config_free(cfg);
    }
}

static struct config *load_uri_list(struct fixture *fx, const char *list)
{
    struct parts p = {.amqp_uri = list};
    write_conf(fx, &p);
    return expect_load(fx->path);
}

static void test_uri_list_parsed(void **state)
{
    struct fixture *fx = *state;
    struct config *cfg = load_uri_list(fx, "(\n"
                                           "    \"amqps://rt@node1:5671/%2f\",\n"
                                           "    \"amqps://rt@node2/%2f\",\n"
                                           "    \"amqps://rt@node3:5673/%2f\"\n"
                                           "  )");
    const struct config_amqp *a = &cfg->amqp;
    assert_int_equal(a->n_nodes, 3);
    /* The fields of one node are the first entry's. */
    assert_string_equal(a->host, "node1");
    assert_int_equal(a->port, 5671);
    assert_true(a->ssl);
    assert_string_equal(a->user, "rt");
    assert_string_equal(a->vhost, "/");
    assert_string_equal(a->uri, "amqps://rt@node1:5671/%2f");
    assert_string_equal(a->uri_redacted, "amqps://rt@node1:5671/%2f");
    assert_string_equal(a->uris_redacted, "amqps://rt@node1:5671/%2f, amqps://rt@node2/%2f, "
                                          "amqps://rt@node3:5673/%2f");
    assert_string_equal(a->nodes[1].host, "node2");
    assert_int_equal(a->nodes[1].port, 5671);
    assert_string_equal(a->nodes[1].uri_redacted, "amqps://rt@node2/%2f");
    assert_string_equal(a->nodes[2].host, "node3");
    assert_int_equal(a->nodes[2].port, 5673);
    assert_true(a->nodes[2].ssl);
    /* The password comes from the password setting, once for all. */
    assert_string_equal(a->password, AMQP_PW);

    /* What the broker gets: every node, and the first as its one node. */
    struct broker_opts bo;
    char name[128];
    config_opts_broker(cfg, &bo, name, sizeof(name));
    assert_int_equal(bo.n_nodes, 3);
    assert_non_null(bo.nodes);
    for (size_t i = 0; i < 3; i++) {
        assert_string_equal(bo.nodes[i].host, a->nodes[i].host);
        assert_int_equal(bo.nodes[i].port, a->nodes[i].port);
        assert_int_equal(bo.nodes[i].ssl, 1);
    }
    assert_string_equal(bo.host, "node1");
    assert_int_equal(bo.port, 5671);
    assert_int_equal(bo.ssl, 1);
    assert_string_equal(bo.user, "rt");
    assert_string_equal(bo.password, AMQP_PW);
    config_free(cfg);

    /* An array ([ ]) is a list too, and one entry is a cluster of one. */
    cfg = load_uri_list(fx, "[ \"amqp://rt@node1/%2fprod\" ]");
    assert_int_equal(cfg->amqp.n_nodes, 1);
    assert_string_equal(cfg->amqp.host, "node1");
    assert_int_equal(cfg->amqp.port, 5672);
    assert_false(cfg->amqp.ssl);
    assert_string_equal(cfg->amqp.vhost, "/prod");
    assert_string_equal(cfg->amqp.uris_redacted, "amqp://rt@node1/%2fprod");
    config_free(cfg);

    /* A host named twice on other ports is two nodes; so are 16 entries. */
    char list[2048] = "(";
    for (int i = 0; i < 16; i++) {
        char e[64];
        snprintf(e, sizeof(e), "%s\"amqp://rt@127.0.0.1:%d/%%2f\"", i ? ", " : " ", 5000 + i);
        strcat(list, e);
    }
    strcat(list, " )");
    cfg = load_uri_list(fx, list);
    assert_int_equal(cfg->amqp.n_nodes, 16);
    assert_int_equal(cfg->amqp.nodes[15].port, 5015);
    config_opts_broker(cfg, &bo, name, sizeof(name));
    assert_int_equal(bo.n_nodes, 16);
    assert_int_equal(bo.nodes[15].port, 5015);
    config_free(cfg);
}

/* The single string is a list of one: the nodes the broker gets. */
static void test_uri_string_is_one_node(void **state)
{
    struct fixture *fx = *state;
    struct config *cfg = load_uri(fx, "amqp://rt:" URI_PW "@broker.example:5673/%2f", "#");
    const struct config_amqp *a = &cfg->amqp;
    assert_int_equal(a->n_nodes, 1);
    assert_string_equal(a->nodes[0].host, "broker.example");
    assert_int_equal(a->nodes[0].port, 5673);
    assert_false(a->nodes[0].ssl);
    assert_string_equal(a->nodes[0].uri_redacted, "amqp://rt:***@broker.example:5673/%2f");
    assert_string_equal(a->uris_redacted, a->uri_redacted);
    assert_string_equal(a->password, URI_PW);
    struct broker_opts bo;
    char name[128];
    config_opts_broker(cfg, &bo, name, sizeof(name));
    assert_int_equal(bo.n_nodes, 1);
    assert_string_equal(bo.nodes[0].host, "broker.example");
    assert_int_equal(bo.nodes[0].port, 5673);
    assert_int_equal(bo.nodes[0].ssl, 0);
    assert_string_equal(bo.host, "broker.example");
    config_free(cfg);
}

static void test_uri_list_refused(void **state)
{
    struct fixture *fx = *state;
    static const struct {
        const char *list; /* the value of uri, starting on L_AMQP_URI */
        int line;         /* the line of the error, from L_AMQP_URI */
        const char *want;
    } cases[] = {
        /* A password in a list entry, also in a list of one. */
        {"(\n  \"amqp://rt@n1/%2f\",\n  \"amqp://rt:" URI_PW "@n2/%2f\"\n)", 2,
         "amqp.uri[1]: \"amqp://rt:***@n2/%2f\" holds a password: in a list of nodes, give the "
         "one password of every node with amqp.password_file (or amqp.password)"},
        {"( \"amqp://rt:" URI_PW "@n1/%2f\" )", 0,
         "amqp.uri[0]: \"amqp://rt:***@n1/%2f\" holds a password"},
        {"( \"amqp://rt:@n1/%2f\" )", 0,
         "amqp.uri[0]: \"amqp://rt:***@n1/%2f\" holds an empty "
         "password"},
        /* Schemes are not mixed. */
        {"( \"amqp://rt@n1/%2f\",\n  \"amqps://rt@n2/%2f\" )", 1,
         "amqp.uri[1]: \"amqps://rt@n2/%2f\" uses amqps:// but amqp.uri[0] uses amqp://: use one "
         "scheme for every node (the same password goes to each, so one node without TLS "
         "exposes it)"},
        {"( \"amqps://rt@n1/%2f\", \"amqps://rt@n2/%2f\",\n  \"amqp://rt@n3/%2f\" )", 1,
         "amqp.uri[2]: \"amqp://rt@n3/%2f\" uses amqp:// but amqp.uri[0] uses amqps://"},
        /* One user, one virtual host. */
        {"( \"amqp://rt@n1/%2f\",\n  \"amqp://other@n2/%2f\" )", 1,
         "amqp.uri[1]: \"amqp://other@n2/%2f\" names another user than amqp.uri[0] "
         "(\"amqp://rt@n1/%2f\"): every node is logged in to as the same user"},
        {"( \"amqp://rt@n1/%2f\",\n  \"amqp://rt@n2/prod\" )", 1,
         "amqp.uri[1]: \"amqp://rt@n2/prod\" names another virtual host than amqp.uri[0] "
         "(\"amqp://rt@n1/%2f\"): the nodes of one cluster serve the same virtual host"},
        /* Each node once: the default port is the port, a host name is
         * not case-sensitive. */
        {"( \"amqp://rt@n1/%2f\", \"amqp://rt@n2/%2f\",\n  \"amqp://rt@N1:5672/%2f\" )", 1,
         "amqp.uri[2]: \"amqp://rt@N1:5672/%2f\" names the same host and port as amqp.uri[0] "
         "(\"amqp://rt@n1/%2f\"): list each node once"},
        /* Every entry is checked as a single uri is. */
        {"( \"amqp://rt@n1/%2f\",\n  \"http://rt@n2/%2f\" )", 1,
         "amqp.uri[1]: \"http://rt@n2/%2f\" must start with amqp:// or amqps://"},
        {"( \"amqp://rt@n1/%2f\",\n  \"amqp://n2/%2f\" )", 1,
         "amqp.uri[1]: \"amqp://n2/%2f\" names no user: write amqp://USER@HOST:PORT/VHOST"},
        {"( \"amqp://rt@n1/%2f\",\n  \"amqp://rt@n2:99999/%2f\" )", 1,
         "amqp.uri[1]: \"amqp://rt@n2:99999/%2f\" is not a valid AMQP URI"},
        {"( \"amqp://rt@n1/%2f\",\n  \"amqp://rt@n2/\" )", 1,
         "amqp.uri[1]: \"amqp://rt@n2/\" names an empty virtual host"},
        {"( \"amqp://rt@n1/%2f\",\n  \"\" )", 1, "amqp.uri[1]: must not be empty"},
        {"( \"amqp://rt@n1/%2f\",\n  5672 )", 1,
         "amqp.uri[1]: must be a string (in double quotes)"},
        {"( \"amqp://rt@n1/%2f\",\n  ( \"amqp://rt@n2/%2f\" ) )", 1,
         "amqp.uri[1]: must be a string (in double quotes)"},
        /* The list itself. */
        {"( )", 0,
         "amqp.uri: must not be empty: list at least one node, like ( "
         "\"amqps://USER@node1:5671/%2f\", \"amqps://USER@node2:5671/%2f\" )"},
        {"5672", 0, "amqp.uri: must be a string, or a list of strings for the nodes of a cluster"},
        {"{ host = \"n1\"; }", 0,
         "amqp.uri: must be a string, or a list of strings for the nodes of a cluster"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct parts p = {.amqp_uri = cases[i].list};
        write_conf(fx, &p);
        expect_error(fx->path, L_AMQP_URI + cases[i].line, cases[i].want);
    }

    /* 17 entries are one too many. */
    char list[2048] = "(";
    for (int i = 0; i < 17; i++) {
        char e[64];
        snprintf(e, sizeof(e), "%s\"amqp://rt@n%d/%%2f\"", i ? ", " : " ", i);
        strcat(list, e);
    }
    strcat(list, " )");
    struct parts p = {.amqp_uri = list};
    write_conf(fx, &p);
    expect_error(fx->path, L_AMQP_URI, "amqp.uri: has 17 entries; at most 16 are allowed");
}

/* An error names the line where its entry starts, also for the last
 * entry of a list closed on a line of its own (libconfig would date it by
 * the ")"), and for entries that span lines or share one. */
static void test_uri_list_error_lines(void **state)
{
    struct fixture *fx = *state;
    static const struct {
        const char *list;
        int line;
        const char *want;
    } cases[] = {
        {"(\n  \"amqp://rt@n1/%2f\",\n  \"amqp://other@n2/%2f\"\n\n)", 2, "amqp.uri[1]: "},
        {"[\n  \"amqp://rt@n1/%2f\", \"amqp://rt@n2/%2f\",\n  # a comment: \"x\", 99999999\n"
         "  \"amqp://rt@n1/%2f\"\n  ]",
         3, "amqp.uri[2]: "},
        {"( \"amqp://rt@n1/%2f\",\n  \"amqp://rt@n1/%2f\" /* uri = ( \"a\" ) */\n)", 1,
         "amqp.uri[1]: "},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct parts p = {.amqp_uri = cases[i].list,
                          .top = "# uri = ( \"amqp://rt@elsewhere/%2f\" );"};
        write_conf(fx, &p);
        expect_error(fx->path, L_AMQP_URI + cases[i].line, cases[i].want);
    }

    /* Another list named "uri" before amqp: (a mistake inside a list
     * entry, found later) does not lend its lines to amqp.uri. */
    struct parts decoy = {
        .top = "client: { id = \"7\"; server_user = \"up\"; departments = ( { local = 3; "
               "remote = 12; uri = ( \"a\", \"b\" ); } ); };",
        .amqp_uri = "( \"amqp://rt@n1/%2f\",\n  \"amqp://other@n2/%2f\"\n)",
        .no_client = 1,
    };
    write_conf(fx, &decoy);
    expect_error(fx->path, L_AMQP_URI + 1, "amqp.uri[1]: ");
}

/* ---- client.server_user ---------------------------------------------- */

static void test_server_user_required(void **state)
{
    struct fixture *fx = *state;
    static const char want[] =
        "client.server_user: is required: the AMQP user of the server side, the only one "
        "allowed to send this client its tasks' states";

    /* Missing: the error names the line of the client group. */
    struct parts missing = {.server_user = "#"};
    write_conf(fx, &missing);
    expect_error(fx->path, L_CLIENT, want);

    struct parts empty = {.server_user = "server_user = \"\";"};
    write_conf(fx, &empty);
    expect_error(fx->path, L_CLIENT_ID, want);

    struct parts present = {.server_user = "server_user = \"provider\";"};
    write_conf(fx, &present);
    struct config *cfg = expect_load(fx->path);
    assert_string_equal(cfg->client.server_user, "provider");
    config_free(cfg);

    /* Without a client section nothing asks for it. */
    struct parts server_only = {.no_client = 1};
    write_conf(fx, &server_only);
    cfg = expect_load(fx->path);
    assert_false(cfg->client.enabled);
    config_free(cfg);
}

/* server_user equal to amqp.uri's own user: right for one process with
 * both roles, refused for a client alone, which would apply states it
 * published itself. */
static void test_server_user_own_user(void **state)
{
    struct fixture *fx = *state;
    struct parts client_only = {.server_user = "server_user = \"rt\";", .no_server = 1};
    write_conf(fx, &client_only);
    expect_error(fx->path, L_CLIENT_ID,
                 "client.server_user: \"rt\" is this file's own AMQP user (amqp.uri) and the file "
                 "has no server: section: set the AMQP user the server side logs in as");

    struct parts both = {.server_user = "server_user = \"rt\";"};
    write_conf(fx, &both);
    struct config *cfg = expect_load(fx->path);
    assert_true(cfg->client.enabled);
    assert_true(cfg->server.enabled);
    assert_string_equal(cfg->client.server_user, cfg->amqp.user);
    config_free(cfg);

    /* The same with the user of a list. */
    struct parts list = {.amqp_uri = "( \"amqp://rt@n1/%2f\", \"amqp://rt@n2/%2f\" )",
                         .server_user = "server_user = \"rt\";",
                         .no_server = 1};
    write_conf(fx, &list);
    expect_error(fx->path, L_CLIENT_ID, "client.server_user: \"rt\" is this file's own AMQP user");
}

static void test_billmanager_url_refused(void **state)
{
    struct fixture *fx = *state;
    char text[1024];
    static const struct {
        const char *url;
        const char *want;
    } cases[] = {
        {"ftp://h/billmgr", "billmanager.url: must start with http:// or https://"},
        {"https://admin:" BM_PW "@h/billmgr",
         "billmanager.url: must not hold credentials: use billmanager.login and "
         "billmanager.password_file"},
        {"https:///billmgr", "billmanager.url: names no host"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        snprintf(text, sizeof(text),
                 "amqp: { uri = \"amqp://rt@h/%%2f\"; password = \"" AMQP_PW "\"; };\n"
                 "billmanager: {\n"
                 "  url = \"%s\";\n"
                 "  login = \"l\"; password = \"" BM_PW "\"; };\n"
                 "client: { id = 1; server_user = \"up\";\n"
                 "  departments = ( { local = 1; remote = 2; } ); };\n",
                 cases[i].url);
        write_file(fx->dir, "test.conf", text, 0600);
        expect_error(fx->path, 3, cases[i].want);
    }
}

/* ---- TLS files ------------------------------------------------------- */

static void test_tls_files(void **state)
{
    struct fixture *fx = *state;
    write_file(fx->dir, "ca.pem", "ca\n", 0644);
    write_file(fx->dir, "cert.pem", "cert\n", 0644);
    write_file(fx->dir, "key.pem", "key\n", 0600);

    struct parts ok = {.tls = "ca_file = \"ca.pem\"; cert_file = \"cert.pem\"; key_file = "
                              "\"key.pem\";"};
    write_conf(fx, &ok);
    struct config *cfg = expect_load(fx->path);
    assert_int_equal(cfg->amqp.tls.ca_file[0], '/');
    assert_non_null(strstr(cfg->amqp.tls.cert_file, "/cert.pem"));
    assert_non_null(strstr(cfg->amqp.tls.key_file, "/key.pem"));
    config_free(cfg);

    struct parts cert_only = {.tls = "cert_file = \"cert.pem\";"};
    write_conf(fx, &cert_only);
    expect_error(fx->path, L_TLS,
                 "amqp.tls.cert_file: is set but amqp.tls.key_file is not: set both or neither");

    struct parts key_only = {.tls = "key_file = \"key.pem\";"};
    write_conf(fx, &key_only);
    expect_error(fx->path, L_TLS,
                 "amqp.tls.key_file: is set but amqp.tls.cert_file is not: set both or neither");
}

/* ---- the API --------------------------------------------------------- */

static void test_free_and_find_accept_null(void **state)
{
    (void)state;
    config_free(NULL);
    assert_null(config_server_client_find(NULL, "7"));
    char err[CONFIG_ERR_MAX] = "";
    assert_null(config_load(NULL, err, sizeof(err)));
    assert_non_null(strstr(err, "no configuration file given"));
    /* A NULL err is allowed: the reason is just not reported. */
    assert_null(config_load(DATA_DIR "/no_role.conf", NULL, 0));
}

/* An error longer than err is cut, not overflowed, and stays terminated. */
static void test_err_truncated(void **state)
{
    (void)state;
    char err[16];
    memset(err, 'z', sizeof(err));
    assert_null(config_load(DATA_DIR "/no_role.conf", err, sizeof(err)));
    assert_int_equal(strlen(err), sizeof(err) - 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_client_example_loads, setup, teardown),
        cmocka_unit_test_setup_teardown(test_server_example_loads, setup, teardown),
        cmocka_unit_test(test_examples_list_every_setting),
        cmocka_unit_test_setup_teardown(test_defaults, setup, teardown),
        cmocka_unit_test_setup_teardown(test_journal_settings, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connect_timeout_follows_short_timeout, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_values_are_read, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_values_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bounds_accepted, setup, teardown),
        cmocka_unit_test(test_data_files_refused),
        cmocka_unit_test(test_data_file_valid),
        cmocka_unit_test_setup_teardown(test_missing_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_top_level_setting, setup, teardown),
        cmocka_unit_test_setup_teardown(test_roles_required, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_id_integer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_password_file_read, setup, teardown),
        cmocka_unit_test_setup_teardown(test_password_file_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_password_sources, setup, teardown),
        cmocka_unit_test_setup_teardown(test_uri_parsed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_uri_password, setup, teardown),
        cmocka_unit_test_setup_teardown(test_uri_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_examples_uri_list_loads, setup, teardown),
        cmocka_unit_test_setup_teardown(test_uri_list_parsed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_uri_string_is_one_node, setup, teardown),
        cmocka_unit_test_setup_teardown(test_uri_list_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_uri_list_error_lines, setup, teardown),
        cmocka_unit_test_setup_teardown(test_server_user_required, setup, teardown),
        cmocka_unit_test_setup_teardown(test_server_user_own_user, setup, teardown),
        cmocka_unit_test_setup_teardown(test_billmanager_url_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tls_files, setup, teardown),
        cmocka_unit_test(test_free_and_find_accept_null),
        cmocka_unit_test(test_err_truncated),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
