/*
 * remotetaskctl --command check: is this instance ready to run?
 *
 * One line per check, "ok" or "FAIL" first so that a person and a script
 * read it the same way; the exit status is 0 only when every check passed.
 * Checks go on after a failure where they can, so that one run shows every
 * problem. Nothing is changed anywhere: the API calls only list, and the
 * broker connection declares nothing.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "billmgr.h"
#include "broker.h"
#include "config.h"
#include "config_opts.h"
#include "ctl.h"
#include "log.h"

/* The ids of the departments the BILLmanager listed. */
struct check_depts {
    long *ids;
    char **names;
    size_t n, cap;
};

static int check_collect_dept(void *arg, json_t *elem)
{
    struct check_depts *d = arg;
    long id;
    if (billmgr_long(elem, "id", &id) < 0)
        return 0;
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 64;
        long *ids = realloc(d->ids, cap * sizeof(*ids));
        if (!ids)
            return 1;
        d->ids = ids;
        char **names = realloc(d->names, cap * sizeof(*names));
        if (!names)
            return 1;
        d->names = names;
        d->cap = cap;
    }
    const char *name = billmgr_text(elem, "locale_name");
    if (!name)
        name = billmgr_text(elem, "name");
    d->ids[d->n] = id;
    d->names[d->n] = strdup(name ? name : "");
    d->n++;
    return 0;
}

static void check_depts_release(struct check_depts *d)
{
    for (size_t i = 0; i < d->n; i++)
        free(d->names[i]);
    free(d->ids);
    free(d->names);
}

static void check_line(int ok, const char *what, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void check_line(int ok, const char *what, const char *fmt, ...)
{
    va_list ap;
    printf("%-4s  %-22s ", ok ? "ok" : "FAIL", what);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
}

/* Checks one configured department against the list; returns 1 if found. */
static int check_department(const struct check_depts *d, long id, const char *role)
{
    char what[64];
    snprintf(what, sizeof(what), "department %ld", id);
    for (size_t i = 0; i < d->n; i++) {
        if (d->ids[i] == id) {
            check_line(1, what, "exists (\"%s\", %s)", d->names[i], role);
            return 1;
        }
    }
    check_line(0, what, "not found in the BILLmanager (used by %s)", role);
    return 0;
}

static int check_billmanager(const struct config *cfg)
{
    struct billmgr_opts o;
    struct billmgr_error berr;
    struct check_depts depts = {0};
    char err[512];
    int failed = 0;

    memset(&berr, 0, sizeof(berr));
    config_opts_billmgr(cfg, &o);
    struct billmgr *bm = billmgr_new(&o, err, sizeof(err));
    if (!bm) {
        check_line(0, "billmanager", "%s", err);
        return 1;
    }
    /* Listing the departments proves the login and answers the next
     * question in the same call. */
    rt_status st = billmgr_list_sync(bm, cfg->billmanager.api.func_department, NULL,
                                     check_collect_dept, &depts, &berr);
    if (st != RT_OK) {
        char why[700];
        if (strcmp(berr.type, "auth") == 0)
            snprintf(why, sizeof(why), "login refused for \"%s\": %s", cfg->billmanager.login,
                     berr.message[0] ? berr.message : "bad credentials");
        else
            snprintf(why, sizeof(why), "cannot list departments (%s): %s", berr.type,
                     berr.message);
        check_line(0, "billmanager", "%s at %s", why, cfg->billmanager.url);
        failed = 1;
        goto free_bm;
    }
    check_line(1, "billmanager", "logged in as \"%s\" at %s", cfg->billmanager.login,
               cfg->billmanager.url);
    for (size_t i = 0; i < cfg->client.n_departments; i++)
        failed |= !check_department(&depts, cfg->client.departments[i].local, "client.departments");
    for (size_t i = 0; i < cfg->server.n_clients; i++)
        failed |= !check_department(&depts, cfg->server.clients[i].department, "server.clients");
free_bm:
    check_depts_release(&depts);
    billmgr_free(bm);
    return failed;
}

static void check_ignore_confirm(void *arg, uint64_t tag, enum broker_fate fate)
{
}

static void check_ignore_delivery(void *arg, const struct broker_delivery *d)
{
}

/* Logs in to every node of amqp.uri, one line each: a cluster with one
 * node that refuses (a certificate, a firewall) must show it before the
 * day that node is the only one left. */
static int check_broker(const struct config *cfg)
{
    struct broker_opts o;
    char name[128], err[512], what[64];
    int failed = 0;

    for (size_t i = 0; i < cfg->amqp.n_nodes; i++) {
        const struct config_amqp_node *n = &cfg->amqp.nodes[i];
        config_opts_broker(cfg, &o, name, sizeof(name));
        o.nodes = NULL;
        o.n_nodes = 0;
        o.host = n->host;
        o.port = n->port;
        o.ssl = n->ssl;
        o.on_confirm = check_ignore_confirm;
        o.on_delivery = check_ignore_delivery;
        if (cfg->amqp.n_nodes > 1)
            snprintf(what, sizeof(what), "broker node %zu", i + 1);
        else
            snprintf(what, sizeof(what), "broker");
        struct broker *b = broker_new(&o, err, sizeof(err));
        if (!b) {
            check_line(0, what, "%s", err);
            failed = 1;
            continue;
        }
        rt_status st = broker_connect(b);
        if (st == RT_OK) {
            check_line(1, what, "logged in as \"%s\" at %s", cfg->amqp.user, n->uri_redacted);
        } else {
            check_line(0, what, "%s (%s)", broker_strerror(b), n->uri_redacted);
            failed = 1;
        }
        broker_free(b);
    }
    return failed;
}

int ctl_check(const struct ctl_args *args)
{
    char err[CONFIG_ERR_MAX];
    int failed = 0;

    /* Library warnings would interleave with the check lines: the lines
     * already carry every reason. */
    log_init("remotetaskctl", LOG_LEVEL_ERROR, 0);
    struct config *cfg = config_load(args->config, err, sizeof(err));
    if (!cfg) {
        check_line(0, "configuration", "%s", err);
        return 1;
    }
    check_line(1, "configuration", "%s", cfg->file);
    failed |= check_billmanager(cfg);
    failed |= check_broker(cfg);
    config_free(cfg);
    fflush(stdout);
    return failed ? 1 : 0;
}
