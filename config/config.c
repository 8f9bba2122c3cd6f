/*
 * config.c - the configuration file, loaded into one validated struct:
 * the entry points of config.h and how the loader writes an error.
 *
 * One table (config_table.c) says, for every scalar setting, its path,
 * its type, its default, its bounds and where it goes in struct config.
 * Loading reads and prescans the file and walks it once to refuse unknown
 * settings (config_file.c), then walks the table to read, default and
 * check every value (config_values.c), then runs the few checks that
 * involve more than one setting (config_rules.c: password sources,
 * duplicate departments, the server's user). The four lists (amqp.uri in
 * config_amqp.c; client.departments, client.performers, server.clients in
 * config_rules.c) have small readers of their own that report errors the
 * same way. config_int.h says what the files share.
 */
#include "config.h"

#include <errno.h>
#include <libconfig.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config_int.h"

/* ---- errors ---------------------------------------------------------- */

static int config_vfail(struct loader *l, const config_setting_t *where, int line,
                        const char *setting, const char *fmt, va_list ap)
    __attribute__((format(printf, 5, 0)));

static int config_vfail(struct loader *l, const config_setting_t *where, int line,
                        const char *setting, const char *fmt, va_list ap)
{
    char msg[CONFIG_ERR_MAX];
    char at[CONFIG_ERR_MAX];
    const char *file = l->file;

    if (!l->err || !l->errlen)
        return -1;
    if (where) {
        const char *f = config_setting_source_file(where);
        if (f)
            file = f;
        if (line <= 0)
            line = (int)config_setting_source_line(where);
    }
    if (line > 0)
        snprintf(at, sizeof(at), "%s:%d", file, line);
    else
        snprintf(at, sizeof(at), "%s", file);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    if (setting)
        snprintf(l->err, l->errlen, "%s: %s: %s", at, setting, msg);
    else
        snprintf(l->err, l->errlen, "%s: %s", at, msg);
    return -1;
}

int config_fail(struct loader *l, const config_setting_t *where, const char *setting,
                const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    config_vfail(l, where, 0, setting, fmt, ap);
    va_end(ap);
    return -1;
}

int config_fail_at(struct loader *l, const config_setting_t *where, int line, const char *setting,
                   const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    config_vfail(l, where, line, setting, fmt, ap);
    va_end(ap);
    return -1;
}

int config_fail_line(struct loader *l, int line, const char *fmt, ...)
{
    char msg[CONFIG_ERR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    snprintf(l->err, l->errlen, "%s:%d: %s", l->file, line, msg);
    return -1;
}

/* ---- text ------------------------------------------------------------ */

int config_showable(const char *s)
{
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++, n++)
        if (*p < 0x20 || *p == 0x7f || n >= 64)
            return 0;
    return 1;
}

int config_is_name_char(int c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
}

int config_has_control(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p < 0x20 || *p == 0x7f)
            return 1;
    return 0;
}

/* ---- the load and the config ----------------------------------------- */

static void wipe_string(const config_setting_t *s)
{
    if (s && config_setting_type(s) == CONFIG_TYPE_STRING) {
        char *v = (char *)(uintptr_t)config_setting_get_string(s);
        if (v)
            explicit_bzero(v, strlen(v));
    }
}

/* libconfig keeps its own copies of the strings it parsed; those holding
 * secrets are wiped before the tree is freed, every entry of a list too
 * (amqp.uri: a list entry with a password is refused, but was parsed). */
static void wipe_tree(struct loader *l)
{
    static const char *const secret_paths[] = {"amqp.uri", "amqp.password", "billmanager.password"};
    for (size_t i = 0; i < sizeof(secret_paths) / sizeof(secret_paths[0]); i++) {
        config_setting_t *s = config_lookup(&l->lc, secret_paths[i]);
        int t = s ? config_setting_type(s) : CONFIG_TYPE_NONE;
        if (t == CONFIG_TYPE_LIST || t == CONFIG_TYPE_ARRAY) {
            int n = config_setting_length(s);
            for (int k = 0; k < n; k++)
                wipe_string(config_setting_get_elem(s, (unsigned)k));
        } else {
            wipe_string(s);
        }
    }
}

/* The absolute directory of the file as named (not of a symbolic link's
 * target): relative paths in the file are taken from there. */
static char *config_dir_of(const char *file)
{
    char *dir = strdup(file);
    if (!dir)
        return NULL;
    char *slash = strrchr(dir, '/');
    const char *name = dir;
    if (!slash)
        name = ".";
    else if (slash == dir)
        name = "/";
    else
        *slash = '\0';
    char *real = realpath(name, NULL);
    free(dir);
    return real;
}

/* Frees what the loader holds besides the config, wiping secrets. */
static void loader_release(struct loader *l)
{
    if (l->lc_ready) {
        wipe_tree(l);
        config_destroy(&l->lc);
        l->lc_ready = 0;
    }
    if (l->uri_password) {
        explicit_bzero(l->uri_password, strlen(l->uri_password));
        free(l->uri_password);
        l->uri_password = NULL;
    }
    free(l->dir);
    l->dir = NULL;
}

struct config *config_load(const char *path, char *err, size_t errlen)
{
    char scratch[CONFIG_ERR_MAX];
    struct loader l;

    memset(&l, 0, sizeof(l));
    l.file = path ? path : "(null)";
    l.err = err && errlen ? err : scratch;
    l.errlen = err && errlen ? errlen : sizeof(scratch);

    if (!path || !path[0]) {
        config_fail(&l, NULL, NULL, "no configuration file given");
        return NULL;
    }
    l.cfg = calloc(1, sizeof(*l.cfg));
    if (!l.cfg) {
        config_fail(&l, NULL, NULL, "out of memory");
        return NULL;
    }
    l.cfg->file = strdup(path);
    if (!l.cfg->file) {
        config_fail(&l, NULL, NULL, "out of memory");
        goto free_cfg;
    }
    if (config_parse_file(&l) < 0)
        goto free_cfg;
    l.dir = config_dir_of(path);
    if (!l.dir) {
        config_fail(&l, NULL, NULL, "cannot resolve its directory: %s", strerror(errno));
        goto free_cfg;
    }
    if (config_walk_unknown(&l, config_root_setting(&l.lc), "") < 0 || config_load_items(&l) < 0 ||
        config_check_across(&l) < 0)
        goto free_cfg;
    loader_release(&l);
    return l.cfg;

free_cfg:
    config_free(l.cfg);
    loader_release(&l);
    return NULL;
}

static void free_wiped(char *s)
{
    if (!s)
        return;
    explicit_bzero(s, strlen(s));
    free(s);
}

void config_free(struct config *cfg)
{
    if (!cfg)
        return;
    for (size_t i = 0; i < config_n_items; i++) {
        const struct item *it = &config_items[i];
        switch (it->type) {
        case IT_STRING:
        case IT_NAME:
        case IT_ID:
        case IT_PATH:
        case IT_FILE:
        case IT_SECRET:
        case IT_ENUM: {
            char **field = config_field_str(cfg, it->offset);
            if (it->type == IT_SECRET || (it->flags & ITEM_WIPE))
                free_wiped(*field);
            else
                free(*field);
            *field = NULL;
            break;
        }
        default: break;
        }
    }
    free(cfg->file);
    free_wiped(cfg->amqp.uri);
    free(cfg->amqp.uri_redacted);
    free(cfg->amqp.uris_redacted);
    for (size_t i = 0; cfg->amqp.nodes && i < cfg->amqp.n_nodes; i++) {
        free(cfg->amqp.nodes[i].uri_redacted);
        free(cfg->amqp.nodes[i].host);
    }
    free(cfg->amqp.nodes);
    free(cfg->amqp.broker_nodes);
    free(cfg->amqp.host);
    free(cfg->amqp.vhost);
    free(cfg->amqp.user);
    free(cfg->metrics.host);
    free(cfg->client.departments);
    free(cfg->client.performers);
    for (size_t i = 0; cfg->server.clients && i < cfg->server.n_clients; i++) {
        free(cfg->server.clients[i].id);
        free(cfg->server.clients[i].amqp_user);
    }
    free(cfg->server.clients);
    free(cfg);
}

const struct config_server_client *config_server_client_find(const struct config *cfg,
                                                             const char *id)
{
    if (!cfg || !id)
        return NULL;
    for (size_t i = 0; i < cfg->server.n_clients; i++)
        if (cfg->server.clients[i].id && strcmp(cfg->server.clients[i].id, id) == 0)
            return &cfg->server.clients[i];
    return NULL;
}
