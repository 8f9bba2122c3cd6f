/*
 * config_values.c - the table walked (config_int.h): every setting read,
 * defaulted and checked on its own, in the table's order, and the checks
 * of single settings the table names (control_socket, billmanager.url,
 * metrics.listen, client.server_user).
 *
 * A value is checked against its type and bounds before it is stored; a
 * string stored belongs to the config at once, so that a later error
 * frees it with the rest. A secret (IT_SECRET) is never echoed.
 */
#include <arpa/inet.h>
#include <libconfig.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "config_int.h"

/* ---- values ---------------------------------------------------------- */

/* Makes a relative path relative to the file's directory. Returns a new
 * string, or NULL when memory ran out. "" stays "" (unset). */
static char *resolve_path(const struct loader *l, const char *path)
{
    char *out = NULL;
    if (path[0] == '\0' || path[0] == '/')
        return strdup(path);
    if (asprintf(&out, "%s/%s", l->dir, path) < 0)
        return NULL;
    return out;
}

static int store_string(struct loader *l, const struct item *it, const config_setting_t *s,
                        const char *v)
{
    char **field = config_field_str(l->cfg, it->offset);
    size_t len = strlen(v);

    if (s && it->type != IT_SECRET && config_has_control(v))
        return config_fail(l, s, it->path, "must not hold control characters");
    if (s && len < (size_t)it->min)
        return config_fail(l, s, it->path, "must not be empty");
    if (s && len > (size_t)it->max)
        return config_fail(l, s, it->path, "must be at most %lld characters long", it->max);
    if (s && (it->type == IT_NAME || it->type == IT_ID)) {
        for (const char *p = v; *p; p++)
            if (!config_is_name_char((unsigned char)*p))
                return config_fail(l, s, it->path,
                                   "may hold only letters, digits, '.', '_' and '-'");
        /* A client id is part of queue names and routing keys, where a dot
         * would make "a.forward" ambiguous. */
        if (it->type == IT_ID && strchr(v, '.'))
            return config_fail(
                l, s, it->path,
                "may hold only letters, digits, '_' and '-' (it is part of queue names)");
    }
    if (s && (it->type == IT_ENUM || it->type == IT_LOG_LEVEL)) {
        size_t vl = strlen(v);
        int found = 0;
        for (const char *a = it->allowed; *a;) {
            size_t al = strcspn(a, "|");
            if (al == vl && strncmp(a, v, vl) == 0)
                found = 1;
            a += al + (a[al] == '|');
        }
        if (!found) {
            char list[256] = "";
            size_t o = 0;
            for (const char *a = it->allowed; *a && o < sizeof(list);) {
                size_t al = strcspn(a, "|");
                int last = a[al] == '\0';
                int w = snprintf(list + o, sizeof(list) - o, "%s\"%.*s\"",
                                 o == 0 ? "" : (last ? " or " : ", "), (int)al, a);
                if (w < 0)
                    break;
                o += (size_t)w;
                a += al + !last;
            }
            if (config_showable(v))
                return config_fail(l, s, it->path, "must be %s, not \"%s\"", list, v);
            return config_fail(l, s, it->path, "must be %s", list);
        }
    }
    if (it->type == IT_LOG_LEVEL) {
        enum log_level lv = LOG_LEVEL_INFO;
        log_level_parse(v, &lv);
        memcpy((char *)l->cfg + it->offset, &lv, sizeof(lv));
        return 0;
    }
    if (it->type == IT_PATH || it->type == IT_FILE)
        *field = resolve_path(l, v);
    else
        *field = strdup(v);
    if (!*field)
        return config_fail(l, s, it->path, "out of memory");
    if (it->type == IT_FILE && (*field)[0] != '\0') {
        struct stat st;
        int fd = config_open_regular(l, s, it->path, *field, &st);
        if (fd < 0)
            return -1;
        close(fd);
    }
    return 0;
}

static int load_string(struct loader *l, const struct item *it, const config_setting_t *s)
{
    char num[32];
    const char *v;

    if (!s) {
        if (!it->def)
            return 0; /* unset, and NULL says so (the password sources) */
        return store_string(l, it, NULL, it->def);
    }
    switch (config_setting_type(s)) {
    case CONFIG_TYPE_STRING: v = config_setting_get_string(s); break;
    case CONFIG_TYPE_INT:
    case CONFIG_TYPE_INT64:
        if (it->type == IT_ID) {
            snprintf(num, sizeof(num), "%lld", config_setting_get_int64(s));
            v = num;
            break;
        }
        /* fall through */
    default:
        return config_fail(l, s, it->path,
                           it->type == IT_ID ? "must be a string or an integer"
                                             : "must be a string (in double quotes)");
    }
    return store_string(l, it, s, v ? v : "");
}

static int load_number(struct loader *l, const struct item *it, const config_setting_t *s)
{
    long long v = it->idef;
    if (s) {
        int t = config_setting_type(s);
        if (it->type == IT_BOOL) {
            if (t != CONFIG_TYPE_BOOL)
                return config_fail(l, s, it->path, "must be true or false");
            v = config_setting_get_bool(s);
        } else {
            if (t != CONFIG_TYPE_INT && t != CONFIG_TYPE_INT64)
                return config_fail(l, s, it->path, "must be an integer");
            v = config_setting_get_int64(s);
            if (v < it->min || v > it->max)
                return config_fail(l, s, it->path, "must be between %lld and %lld, not %lld",
                                   it->min, it->max, v);
        }
    }
    char *field = (char *)l->cfg + it->offset;
    if (it->type == IT_BOOL) {
        bool b = v != 0;
        memcpy(field, &b, sizeof(b));
    } else if (it->type == IT_SIZE) {
        size_t z = (size_t)v;
        memcpy(field, &z, sizeof(z));
    } else {
        int i = (int)v;
        memcpy(field, &i, sizeof(i));
    }
    return 0;
}

/* Reads every item of the table, in order. A missing required setting is
 * an error only when its group is present or required itself. */
int config_load_items(struct loader *l)
{
    for (size_t i = 0; i < config_n_items; i++) {
        const struct item *it = &config_items[i];
        const struct item *parent = config_item_parent(it);
        const config_setting_t *pg = NULL;
        const config_setting_t *s = config_lookup(&l->lc, it->path);
        int rc = 0;

        /* In an absent optional group, settings take their defaults and
         * lists stay empty. */
        if (parent)
            pg = config_lookup(&l->lc, parent->path);
        if (!s && (it->flags & ITEM_REQUIRED) && it->type != IT_LIST &&
            (!parent || pg || (parent->flags & ITEM_REQUIRED))) {
            if (it->type == IT_GROUP)
                return config_fail(l, NULL, it->path, "required group is missing");
            return config_fail(l, pg, it->path, "required setting is missing");
        }
        switch (it->type) {
        case IT_GROUP:
            if (s && config_setting_type(s) != CONFIG_TYPE_GROUP)
                return config_fail(l, s, it->path, "must be a group");
            if (it->offset != NO_FIELD) {
                bool present = s != NULL;
                memcpy((char *)l->cfg + it->offset, &present, sizeof(present));
            }
            break;
        case IT_LIST:
            if (!parent || pg)
                rc = it->check(l, it, s);
            break;
        case IT_INT:
        case IT_SIZE:
        case IT_BOOL: rc = load_number(l, it, s); break;
        default:
            rc = load_string(l, it, s);
            if (rc == 0 && it->check)
                rc = it->check(l, it, s);
            break;
        }
        if (rc < 0)
            return -1;
    }
    return 0;
}

/* ---- checks of one setting ------------------------------------------- */

int config_check_socket_path(struct loader *l, const struct item *it, const config_setting_t *s)
{
    struct sockaddr_un sa;
    size_t len = strlen(l->cfg->control_socket);
    if (len >= sizeof(sa.sun_path))
        return config_fail(l, s, it->path,
                           "\"%s\" is %zu bytes long; a socket path must be shorter than %zu bytes",
                           l->cfg->control_socket, len, sizeof(sa.sun_path));
    return 0;
}

/* A client applies the state messages of one sender only, its server
 * side: without that check any other client of the same broker could
 * publish states for this one (through the retry exchange, for one). */
int config_check_server_user(struct loader *l, const struct item *it, const config_setting_t *s)
{
    if (!l->cfg->client.enabled || l->cfg->client.server_user[0])
        return 0;
    return config_fail(
        l, s ? s : config_lookup(&l->lc, "client"), it->path,
        "is required: the AMQP user of the server side, the only one allowed to send "
        "this client its tasks' states");
}

int config_check_http_url(struct loader *l, const struct item *it, const config_setting_t *s)
{
    const char *url = l->cfg->billmanager.url;
    const char *auth;
    size_t auth_len;
    if (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0)
        return config_fail(l, s, it->path, "must start with http:// or https://");
    config_uri_authority(url, &auth, &auth_len);
    /* Credentials in a URL end up in logs and argv; they have their own
     * settings. */
    if (memchr(auth, '@', auth_len))
        return config_fail(l, s, it->path,
                           "must not hold credentials: use billmanager.login and "
                           "billmanager.password_file");
    if (auth_len == 0 || *auth == ':')
        return config_fail(l, s, it->path, "names no host");
    if (strchr(url, ' '))
        return config_fail(l, s, it->path, "must not hold spaces (write them as %%20)");
    return 0;
}

/* "host:port" where host is an IPv4 literal, "[IPv6]" or "localhost". */
int config_check_listen(struct loader *l, const struct item *it, const config_setting_t *s)
{
    struct config_metrics *m = &l->cfg->metrics;
    const char *v = m->listen;
    char host[INET6_ADDRSTRLEN + 1];
    const char *colon;
    size_t hlen;
    unsigned char addr[sizeof(struct in6_addr)];
    int ok;

    if (!v[0]) {
        m->enabled = false;
        m->host = strdup("");
        return m->host ? 0 : config_fail(l, s, it->path, "out of memory");
    }
    if (v[0] == '[') {
        const char *close_br = strchr(v, ']');
        if (!close_br || close_br[1] != ':')
            return config_fail(l, s, it->path, "must be \"HOST:PORT\", like \"[::1]:9464\"");
        hlen = (size_t)(close_br - v - 1);
        if (hlen >= sizeof(host))
            return config_fail(l, s, it->path, "is not an IPv6 address in brackets");
        memcpy(host, v + 1, hlen);
        host[hlen] = '\0';
        colon = close_br + 1;
        ok = inet_pton(AF_INET6, host, addr) == 1;
    } else {
        colon = strrchr(v, ':');
        if (!colon)
            return config_fail(l, s, it->path, "must be \"HOST:PORT\", like \"127.0.0.1:9464\"");
        hlen = (size_t)(colon - v);
        if (memchr(v, ':', hlen))
            return config_fail(l, s, it->path, "an IPv6 address goes in brackets: \"[::1]:9464\"");
        if (hlen >= sizeof(host))
            return config_fail(l, s, it->path, "the host must be an IP address or \"localhost\"");
        memcpy(host, v, hlen);
        host[hlen] = '\0';
        ok = strcmp(host, "localhost") == 0 || inet_pton(AF_INET, host, addr) == 1;
    }
    if (!ok)
        return config_fail(l, s, it->path, "the host must be an IP address or \"localhost\"");
    const char *port = colon + 1;
    long p = 0;
    if (!*port || strlen(port) > 5)
        p = -1;
    for (const char *c = port; p >= 0 && *c; c++)
        p = (*c >= '0' && *c <= '9') ? p * 10 + (*c - '0') : -1;
    if (p < 1 || p > 65535)
        return config_fail(l, s, it->path, "the port must be between 1 and 65535");
    m->host = strdup(host);
    if (!m->host)
        return config_fail(l, s, it->path, "out of memory");
    m->port = (int)p;
    m->enabled = true;
    return 0;
}
