/*
 * config_rules.c - the rules about more than one value (config_int.h):
 * the mapping lists client.departments, client.performers and
 * server.clients, whose entries may not repeat a department, a performer,
 * a client id or an AMQP user; and the rules across settings, once every
 * item is read: at least one role, the server's user, one password source
 * each for amqp and billmanager, TLS certificate and key together, the
 * BILLmanager connect timeout within its call timeout, and a department
 * that is not both a client's source and a server's target.
 */
#include <libconfig.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config_int.h"

/* ---- lists ----------------------------------------------------------- */

/* Checks that s is a list of at most max groups, not empty when required.
 * Returns its length or -1. An empty list may be written ( ) or [ ]. */
static int list_check(struct loader *l, const struct item *it, const config_setting_t *s,
                      size_t max, const char *like)
{
    int t = config_setting_type(s);
    int n = config_setting_length(s);
    if (t != CONFIG_TYPE_LIST && !(t == CONFIG_TYPE_ARRAY && n == 0))
        return config_fail(l, s, it->path, "must be a list of groups, like %s", like);
    if (n == 0 && (it->flags & ITEM_REQUIRED))
        return config_fail(l, s, it->path, "must not be empty, like %s", like);
    if ((size_t)n > max)
        return config_fail(l, s, it->path, "has %d entries; at most %zu are allowed", n, max);
    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        if (config_setting_type(e) != CONFIG_TYPE_GROUP) {
            char path[CONFIG_PATH_MAX];
            snprintf(path, sizeof(path), "%s[%d]", it->path, i);
            return config_fail(l, e, path, "must be a group, like %s", like);
        }
    }
    return n;
}

/* Refuses members of a list entry other than names (NULL-terminated). */
static int entry_known(struct loader *l, const config_setting_t *e, const char *epath,
                       const char *const *names)
{
    int n = config_setting_length(e);
    for (int i = 0; i < n; i++) {
        const config_setting_t *m = config_setting_get_elem(e, (unsigned)i);
        const char *name = config_setting_name(m);
        int known = 0;
        for (const char *const *k = names; *k; k++)
            if (name && strcmp(name, *k) == 0)
                known = 1;
        if (!known) {
            char path[CONFIG_PATH_MAX];
            snprintf(path, sizeof(path), "%s.%s", epath, name ? name : "?");
            return config_fail(l, m, path, "unknown setting");
        }
    }
    return 0;
}

/* A member holding a positive integer id (a BILLmanager object id). */
static int entry_id(struct loader *l, const config_setting_t *e, const char *epath,
                    const char *name, long *out)
{
    char path[CONFIG_PATH_MAX];
    const config_setting_t *m = config_setting_get_member(e, name);
    snprintf(path, sizeof(path), "%s.%s", epath, name);
    if (!m)
        return config_fail(l, e, path, "required setting is missing");
    int t = config_setting_type(m);
    if (t != CONFIG_TYPE_INT && t != CONFIG_TYPE_INT64)
        return config_fail(l, m, path, "must be an integer");
    long long v = config_setting_get_int64(m);
    if (v < 1 || v > LONG_MAX)
        return config_fail(l, m, path, "must be a positive id, not %lld", v);
    *out = (long)v;
    return 0;
}

/* A member holding a name: a string (or, with allow_int, an integer) of
 * 1..max characters from [A-Za-z0-9._-] (or any printable text when
 * !strict). On success *out is a new string the config owns. */
static int entry_name(struct loader *l, const config_setting_t *e, const char *epath,
                      const char *name, int allow_int, int strict, size_t max, char **out)
{
    char path[CONFIG_PATH_MAX];
    char num[32];
    const char *v;
    const config_setting_t *m = config_setting_get_member(e, name);
    snprintf(path, sizeof(path), "%s.%s", epath, name);
    if (!m)
        return config_fail(l, e, path, "required setting is missing");
    int t = config_setting_type(m);
    if (allow_int && (t == CONFIG_TYPE_INT || t == CONFIG_TYPE_INT64)) {
        snprintf(num, sizeof(num), "%lld", config_setting_get_int64(m));
        v = num;
    } else if (t == CONFIG_TYPE_STRING) {
        v = config_setting_get_string(m);
    } else {
        return config_fail(l, m, path,
                           allow_int ? "must be a string or an integer" : "must be a string");
    }
    size_t len = strlen(v);
    if (len == 0)
        return config_fail(l, m, path, "must not be empty");
    if (len > max)
        return config_fail(l, m, path, "must be at most %zu characters long", max);
    for (const char *p = v; *p; p++) {
        if (strict && !config_is_name_char((unsigned char)*p))
            return config_fail(l, m, path, "may hold only letters, digits, '.', '_' and '-'");
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            return config_fail(l, m, path, "must not hold control characters");
    }
    *out = strdup(v);
    return *out ? 0 : config_fail(l, m, path, "out of memory");
}

int config_read_departments(struct loader *l, const struct item *it, const config_setting_t *s)
{
    static const char *const names[] = {"local", "remote", NULL};
    static const char like[] = "( { local = 3; remote = 12; } )";
    struct config_client *c = &l->cfg->client;
    if (!s)
        return config_fail(l, config_lookup(&l->lc, "client"), it->path,
                           "required setting is missing: map at least one department, like %s",
                           like);
    int n = list_check(l, it, s, CONFIG_MAX_DEPARTMENTS, like);
    if (n < 0)
        return -1;
    c->departments = calloc((size_t)n + 1, sizeof(*c->departments));
    if (!c->departments)
        return config_fail(l, s, it->path, "out of memory");
    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        struct config_department_map *d = &c->departments[i];
        char epath[CONFIG_PATH_MAX];
        snprintf(epath, sizeof(epath), "%s[%d]", it->path, i);
        if (entry_known(l, e, epath, names) < 0 || entry_id(l, e, epath, "local", &d->local) < 0 ||
            entry_id(l, e, epath, "remote", &d->remote) < 0)
            return -1;
        for (int j = 0; j < i; j++) {
            if (c->departments[j].local == d->local)
                return config_fail(l, e, epath,
                                   "local department %ld is already mapped by %s[%d]: a department "
                                   "may be used by one mapping only",
                                   d->local, it->path, j);
            if (c->departments[j].remote == d->remote)
                return config_fail(
                    l, e, epath,
                    "remote department %ld is already mapped by %s[%d]: a department "
                    "may be used by one mapping only",
                    d->remote, it->path, j);
        }
        c->n_departments = (size_t)i + 1;
    }
    return 0;
}

int config_read_performers(struct loader *l, const struct item *it, const config_setting_t *s)
{
    static const char *const names[] = {"remote", "local", NULL};
    static const char like[] = "( { remote = 21; local = 1; } )";
    struct config_client *c = &l->cfg->client;
    if (!s)
        return 0;
    int n = list_check(l, it, s, CONFIG_MAX_PERFORMERS, like);
    if (n < 0)
        return -1;
    c->performers = calloc((size_t)n + 1, sizeof(*c->performers));
    if (!c->performers)
        return config_fail(l, s, it->path, "out of memory");
    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        struct config_performer_map *p = &c->performers[i];
        char epath[CONFIG_PATH_MAX];
        snprintf(epath, sizeof(epath), "%s[%d]", it->path, i);
        if (entry_known(l, e, epath, names) < 0 ||
            entry_id(l, e, epath, "remote", &p->remote) < 0 ||
            entry_id(l, e, epath, "local", &p->local) < 0)
            return -1;
        for (int j = 0; j < i; j++)
            if (c->performers[j].remote == p->remote)
                return config_fail(l, e, epath, "remote performer %ld is already mapped by %s[%d]",
                                   p->remote, it->path, j);
        c->n_performers = (size_t)i + 1;
    }
    return 0;
}

int config_read_clients(struct loader *l, const struct item *it, const config_setting_t *s)
{
    static const char *const names[] = {"id", "amqp_user", "department", NULL};
    static const char like[] = "( { id = \"7\"; amqp_user = \"reseller-a\"; department = 12; } )";
    struct config_server *sv = &l->cfg->server;
    if (!s)
        return config_fail(l, config_lookup(&l->lc, "server"), it->path,
                           "required setting is missing: list at least one client, like %s", like);
    int n = list_check(l, it, s, CONFIG_MAX_CLIENTS, like);
    if (n < 0)
        return -1;
    sv->clients = calloc((size_t)n + 1, sizeof(*sv->clients));
    if (!sv->clients)
        return config_fail(l, s, it->path, "out of memory");
    sv->n_clients = (size_t)n; /* entries are zeroed, so config_free can free them all */
    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        struct config_server_client *c = &sv->clients[i];
        char epath[CONFIG_PATH_MAX];
        snprintf(epath, sizeof(epath), "%s[%d]", it->path, i);
        if (entry_known(l, e, epath, names) < 0 ||
            entry_name(l, e, epath, "id", 1, 1, 64, &c->id) < 0 ||
            entry_name(l, e, epath, "amqp_user", 0, 0, 255, &c->amqp_user) < 0 ||
            entry_id(l, e, epath, "department", &c->department) < 0)
            return -1;
        if (strchr(c->id, '.'))
            return config_fail(
                l, config_setting_get_member(e, "id"), epath,
                "id may hold only letters, digits, '_' and '-' (it is part of queue names)");
        for (int j = 0; j < i; j++) {
            const struct config_server_client *o = &sv->clients[j];
            if (strcmp(o->id, c->id) == 0)
                return config_fail(l, e, epath, "client id \"%s\" is already used by %s[%d]", c->id,
                                   it->path, j);
            if (strcmp(o->amqp_user, c->amqp_user) == 0)
                return config_fail(l, e, epath, "amqp_user \"%s\" is already used by %s[%d]",
                                   config_showable(c->amqp_user) ? c->amqp_user : "?", it->path, j);
            if (o->department == c->department)
                return config_fail(l, e, epath,
                                   "department %ld is already used by %s[%d]: a department may be "
                                   "used by one mapping only",
                                   c->department, it->path, j);
        }
    }
    return 0;
}

/* ---- checks across settings ------------------------------------------ */

/* Sets *password from exactly one of: the inline password (already in
 * *password), the password file, the password of the uri. */
static int password_source(struct loader *l, const char *group, char **password, const char *file,
                           char **uri_password)
{
    char path[CONFIG_PATH_MAX];
    int sources = (*password != NULL) + (file[0] != '\0') + (uri_password && *uri_password);
    const config_setting_t *where;

    snprintf(path, sizeof(path), "%s.password_file", group);
    where = config_lookup(&l->lc, path);
    if (!where) {
        snprintf(path, sizeof(path), "%s.password", group);
        where = config_lookup(&l->lc, path);
    }
    if (!where)
        where = config_lookup(&l->lc, group);
    if (sources == 0)
        return config_fail(l, where, group, "no password: set %s.password_file", group);
    if (sources > 1)
        return config_fail(
            l, where, group,
            "more than one password: set only one of %s.password, %s.password_file%s", group, group,
            uri_password ? " and a password in amqp.uri" : "");
    if (uri_password && *uri_password) {
        *password = *uri_password;
        *uri_password = NULL;
    } else if (file[0]) {
        snprintf(path, sizeof(path), "%s.password_file", group);
        return config_read_password_file(l, where, path, file, password);
    }
    return 0;
}

int config_check_across(struct loader *l)
{
    struct config *cfg = l->cfg;

    if (!cfg->client.enabled && !cfg->server.enabled)
        return config_fail(l, NULL, NULL,
                           "neither client: nor server: is present: configure at least one role");

    /* With both roles in one process, this file's own user is the server
     * side's. Without a server: section, nothing this client should trust
     * publishes as its own user: the setting would make it apply states it
     * published itself, and is most likely amqp.uri's user copied by
     * mistake, which would dead-letter every state of the real server. */
    if (cfg->client.enabled && !cfg->server.enabled &&
        strcmp(cfg->client.server_user, cfg->amqp.user) == 0) {
        const char *su = cfg->client.server_user;
        return config_fail(
            l, config_lookup(&l->lc, "client.server_user"), "client.server_user",
            "\"%s\" is this file's own AMQP user (amqp.uri) and the file has no server: "
            "section: set the AMQP user the server side logs in as",
            config_showable(su) ? su : "?");
    }
    if (password_source(l, "amqp", &cfg->amqp.password, cfg->amqp.password_file, &l->uri_password) <
        0)
        return -1;
    if (password_source(l, "billmanager", &cfg->billmanager.password,
                        cfg->billmanager.password_file, NULL) < 0)
        return -1;
    if (!cfg->amqp.tls.cert_file[0] != !cfg->amqp.tls.key_file[0]) {
        const char *set = cfg->amqp.tls.cert_file[0] ? "amqp.tls.cert_file" : "amqp.tls.key_file";
        const char *unset = cfg->amqp.tls.cert_file[0] ? "amqp.tls.key_file" : "amqp.tls.cert_file";
        return config_fail(l, config_lookup(&l->lc, set), set,
                           "is set but %s is not: set both or neither", unset);
    }

    /* A connect timeout longer than the whole call is meaningless; the
     * default follows a short timeout instead of refusing it. */
    const config_setting_t *ct = config_lookup(&l->lc, "billmanager.connect_timeout");
    if (cfg->billmanager.connect_timeout > cfg->billmanager.timeout) {
        if (!ct)
            cfg->billmanager.connect_timeout = cfg->billmanager.timeout;
        else
            return config_fail(l, ct, "billmanager.connect_timeout",
                               "must be between 1 and billmanager.timeout (%d), not %d",
                               cfg->billmanager.timeout, cfg->billmanager.connect_timeout);
    }

    /* One BILLmanager on this side: a local department cannot be both a
     * source (client) and a target (server). */
    for (size_t i = 0; i < cfg->client.n_departments; i++) {
        for (size_t j = 0; j < cfg->server.n_clients; j++) {
            if (cfg->client.departments[i].local != cfg->server.clients[j].department)
                continue;
            const config_setting_t *e =
                config_setting_get_elem(config_lookup(&l->lc, "server.clients"), (unsigned)j);
            char path[CONFIG_PATH_MAX];
            snprintf(path, sizeof(path), "server.clients[%zu].department", j);
            return config_fail(
                l, e, path,
                "department %ld is also mapped by client.departments[%zu]: a department "
                "may be used by one mapping only",
                cfg->server.clients[j].department, i);
        }
    }
    return 0;
}
