/*
 * config_amqp.c - amqp.uri (config_int.h): one URI, or a list of them for
 * the nodes of one RabbitMQ cluster.
 *
 * Every entry is parsed with librabbitmq's own parser, and the entries of
 * a list are checked against each other: one scheme, one user, one
 * virtual host, no node twice, and no password in a list (it comes once,
 * from amqp.password_file or amqp.password). Errors name the entry by its
 * index and show it redacted; the line of a list entry comes from the
 * prescan (struct uri_lines), which dates it better than libconfig.
 */
#include <libconfig.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "broker.h"
#include "config_int.h"
#include "redact.h"
#include "rmq.h"

_Static_assert(CONFIG_MAX_AMQP_NODES <= BROKER_MAX_NODES,
               "every node of amqp.uri must fit in one broker object");

/* The authority of a URI: what follows "://" up to the path. */
void config_uri_authority(const char *uri, const char **start, size_t *len)
{
    const char *p = strstr(uri, "://");
    p = p ? p + 3 : uri;
    *start = p;
    *len = strcspn(p, "/?#");
}

/* One entry of amqp.uri, parsed. */
struct uri_entry {
    char *redacted; /* the entry with any password replaced by "***" */
    char *host;
    int port;
    char *vhost;
    char *user;
    bool ssl;
    char *password; /* NULL when the entry holds none; never shown */
};

static void uri_entry_release(struct uri_entry *u)
{
    free(u->redacted);
    free(u->host);
    free(u->vhost);
    free(u->user);
    if (u->password) {
        explicit_bzero(u->password, strlen(u->password));
        free(u->password);
    }
    memset(u, 0, sizeof(*u));
}

/* The checks of entry e's text before librabbitmq parses it: a string of
 * printable characters, not too long, of the amqp or amqps scheme, with a
 * user. Sets out->redacted, *uri (libconfig's string) and *has_password
 * (the text holds one: librabbitmq would default a missing one to
 * "guest"). */
static int uri_text_check(struct loader *l, const config_setting_t *e, int line, const char *path,
                          int in_list, struct uri_entry *out, const char **uri, int *has_password)
{
    const char *auth;
    size_t auth_len;

    if (config_setting_type(e) != CONFIG_TYPE_STRING)
        return config_fail_at(l, e, line, path, "must be a string (in double quotes)");
    *uri = config_setting_get_string(e);
    size_t len = strlen(*uri);
    if (config_has_control(*uri))
        return config_fail_at(l, e, line, path, "must not hold control characters");
    if (len == 0)
        return config_fail_at(l, e, line, path, "must not be empty");
    if (len > CONFIG_STRING_MAX)
        return config_fail_at(l, e, line, path, "must be at most %d characters long",
                              CONFIG_STRING_MAX);

    out->redacted = malloc(len + 8);
    if (!out->redacted)
        return config_fail_at(l, e, line, path, "out of memory");
    redact_uri(*uri, out->redacted, len + 8);

    if (strncmp(*uri, "amqp://", 7) != 0 && strncmp(*uri, "amqps://", 8) != 0) {
        if (in_list)
            return config_fail_at(l, e, line, path, "\"%s\" must start with amqp:// or amqps://",
                                  out->redacted);
        return config_fail_at(l, e, line, path, "must start with amqp:// or amqps://");
    }
    config_uri_authority(*uri, &auth, &auth_len);
    const char *at = NULL;
    for (const char *p = auth; p < auth + auth_len; p++)
        if (*p == '@')
            at = p;
    if (!at || at == auth || *auth == ':')
        return config_fail_at(l, e, line, path,
                              "\"%s\" names no user: write amqp://USER@HOST:PORT/VHOST",
                              out->redacted);
    *has_password = memchr(auth, ':', (size_t)(at - auth)) != NULL;
    return 0;
}

/* What librabbitmq parsed of entry e (ci), checked and copied into out. */
static int uri_fields_take(struct loader *l, const config_setting_t *e, int line, const char *path,
                           int in_list, int has_password, const struct amqp_connection_info *ci,
                           struct uri_entry *out)
{
    if (!ci->user[0])
        return config_fail_at(l, e, line, path, "\"%s\" names no user", out->redacted);
    if (!ci->host[0])
        return config_fail_at(l, e, line, path, "\"%s\" names no host", out->redacted);
    if (!ci->vhost[0])
        return config_fail_at(l, e, line, path,
                              "\"%s\" names an empty virtual host; write /%%2f for \"/\"",
                              out->redacted);
    out->host = strdup(ci->host);
    out->vhost = strdup(ci->vhost);
    out->user = strdup(ci->user);
    out->port = ci->port;
    out->ssl = ci->ssl != 0;
    if (has_password)
        out->password = strdup(ci->password);
    if (!out->host || !out->vhost || !out->user || (has_password && !out->password))
        return config_fail_at(l, e, line, path, "out of memory");
    if (has_password && !out->password[0])
        return config_fail_at(l, e, line, path, "\"%s\" holds an empty password", out->redacted);
    /* Several copies of one secret are more places to leak it, and one
     * password file changes it for every node at once. */
    if (has_password && in_list)
        return config_fail_at(l, e, line, path,
                              "\"%s\" holds a password: in a list of nodes, give the one password "
                              "of every node with amqp.password_file (or amqp.password)",
                              out->redacted);
    return 0;
}

/* Parses one entry of amqp.uri (e, the setting holding it, dated on line
 * when line > 0) with librabbitmq's own parser, so that the daemon and the
 * library agree on what it means. librabbitmq quietly defaults a missing
 * user or password to "guest"; both are looked for in the text first so
 * that a missing user is an error and a missing password comes from
 * password_file instead. path names the entry in errors; in a list, errors
 * show the entry's redacted text so that the operator sees which node. */
static int parse_amqp_uri(struct loader *l, const config_setting_t *e, int line, const char *path,
                          int in_list, struct uri_entry *out)
{
    struct amqp_connection_info ci;
    const char *uri;
    int has_password = 0;
    int rc = -1;

    if (uri_text_check(l, e, line, path, in_list, out, &uri, &has_password) < 0)
        return -1;
    /* librabbitmq parses in place: a copy, wiped after, holds the
     * password while it does. */
    size_t len = strlen(uri);
    char *copy = strdup(uri);
    if (!copy)
        return config_fail_at(l, e, line, path, "out of memory");
    if (amqp_parse_url(copy, &ci) != AMQP_STATUS_OK)
        config_fail_at(l, e, line, path,
                       "\"%s\" is not a valid AMQP URI (amqp://USER@HOST:PORT/VHOST)",
                       out->redacted);
    else
        rc = uri_fields_take(l, e, line, path, in_list, has_password, &ci, out);
    explicit_bzero(copy, len);
    free(copy);
    return rc;
}

/* Checks entry u (amqp.uri[i]) against the entries before it: one cluster
 * is logged in to with one user and one password, serves one virtual
 * host, and lists each node once. */
static int check_amqp_node(struct loader *l, const config_setting_t *e, int line, const char *path,
                           size_t i, const struct uri_entry *u, const struct uri_entry *first)
{
    struct config_amqp *a = &l->cfg->amqp;

    /* The one password goes to every node: a node without TLS would hand
     * it, in clear text, to anyone on the path to that node. */
    if (u->ssl != first->ssl)
        return config_fail_at(
            l, e, line, path,
            "\"%s\" uses %s but amqp.uri[0] uses %s: use one scheme for every node "
            "(the same password goes to each, so one node without TLS exposes it)",
            u->redacted, u->ssl ? "amqps://" : "amqp://", first->ssl ? "amqps://" : "amqp://");
    if (strcmp(u->user, first->user) != 0)
        return config_fail_at(l, e, line, path,
                              "\"%s\" names another user than amqp.uri[0] (\"%s\"): every node is "
                              "logged in to as the same user",
                              u->redacted, first->redacted);
    if (strcmp(u->vhost, first->vhost) != 0)
        return config_fail_at(
            l, e, line, path,
            "\"%s\" names another virtual host than amqp.uri[0] (\"%s\"): the nodes "
            "of one cluster serve the same virtual host",
            u->redacted, first->redacted);
    for (size_t j = 0; j < i; j++) {
        const struct config_amqp_node *o = &a->nodes[j];
        if (o->port == u->port && strcasecmp(o->host, u->host) == 0)
            return config_fail_at(
                l, e, line, path,
                "\"%s\" names the same host and port as amqp.uri[%zu] (\"%s\"): list "
                "each node once",
                u->redacted, j, o->uri_redacted);
    }
    return 0;
}

/* The line on which entry i of the list s starts, from the prescan, or 0
 * when it is not known better than libconfig knows it. */
static int uri_entry_line(const struct loader *l, const config_setting_t *s, int i)
{
    int name_line = (int)config_setting_source_line(s);
    int n = config_setting_length(s);
    for (int k = 0; k < l->n_uri_lines; k++) {
        const struct uri_lines *u = &l->uri_lines[k];
        if (u->name_line == name_line && u->n == n && i < CONFIG_MAX_AMQP_NODES)
            return u->line[i];
    }
    return 0;
}

/* Joins the redacted entries with ", " into a->uris_redacted. */
static int join_redacted(struct config_amqp *a)
{
    size_t len = 1;
    for (size_t i = 0; i < a->n_nodes; i++)
        len += strlen(a->nodes[i].uri_redacted) + 2;
    a->uris_redacted = malloc(len);
    if (!a->uris_redacted)
        return -1;
    a->uris_redacted[0] = '\0';
    for (size_t i = 0; i < a->n_nodes; i++) {
        if (i > 0)
            strcat(a->uris_redacted, ", ");
        strcat(a->uris_redacted, a->nodes[i].uri_redacted);
    }
    return 0;
}

/* Adds entry u as node i of a and of the broker's list of nodes, which
 * shares its strings. Returns -1 when memory ran out. */
static int uri_node_add(struct config_amqp *a, int i, const struct uri_entry *u)
{
    struct config_amqp_node *node = &a->nodes[i];
    node->uri_redacted = strdup(u->redacted);
    node->host = strdup(u->host);
    node->port = u->port;
    node->ssl = u->ssl;
    a->n_nodes = (size_t)i + 1;
    if (!node->uri_redacted || !node->host)
        return -1;
    a->broker_nodes[i].host = node->host;
    a->broker_nodes[i].port = node->port;
    a->broker_nodes[i].ssl = node->ssl;
    return 0;
}

/* amqp.uri: one URI, or a list of them (one per node of a cluster), into
 * a->nodes and the first entry's fields. The password of a single URI is
 * kept in l->uri_password for the password sources (config_rules.c). */
int config_read_amqp_uri(struct loader *l, const struct item *it, const config_setting_t *s)
{
    static const char like[] =
        "( \"amqps://USER@node1:5671/%2f\", \"amqps://USER@node2:5671/%2f\" )";
    struct config_amqp *a = &l->cfg->amqp;
    struct uri_entry first = {0};
    struct uri_entry u = {0};
    int rc = -1;

    if (!s)
        return config_fail(l, config_lookup(&l->lc, "amqp"), it->path,
                           "required setting is missing");
    int t = config_setting_type(s);
    int in_list = t == CONFIG_TYPE_LIST || t == CONFIG_TYPE_ARRAY;
    int n = in_list ? config_setting_length(s) : 1;
    if (t == CONFIG_TYPE_GROUP || (!in_list && t != CONFIG_TYPE_STRING))
        return config_fail(
            l, s, it->path,
            "must be a string, or a list of strings for the nodes of a cluster, like %s", like);
    if (n == 0)
        return config_fail(l, s, it->path, "must not be empty: list at least one node, like %s",
                           like);
    if (n > CONFIG_MAX_AMQP_NODES)
        return config_fail(l, s, it->path, "has %d entries; at most %d are allowed", n,
                           CONFIG_MAX_AMQP_NODES);

    a->nodes = calloc((size_t)n, sizeof(*a->nodes));
    a->broker_nodes = calloc((size_t)n, sizeof(*a->broker_nodes));
    if (!a->nodes || !a->broker_nodes)
        return config_fail(l, s, it->path, "out of memory");
    for (int i = 0; i < n; i++) {
        const config_setting_t *e = in_list ? config_setting_get_elem(s, (unsigned)i) : s;
        int line = in_list ? uri_entry_line(l, s, i) : 0;
        char path[CONFIG_PATH_MAX];
        if (in_list)
            snprintf(path, sizeof(path), "%s[%d]", it->path, i);
        else
            snprintf(path, sizeof(path), "%s", it->path);
        struct uri_entry *cur = i == 0 ? &first : &u;
        if (parse_amqp_uri(l, e, line, path, in_list, cur) < 0 ||
            (i > 0 && check_amqp_node(l, e, line, path, (size_t)i, cur, &first) < 0))
            goto release_entries;
        if (uri_node_add(a, i, cur) < 0) {
            config_fail_at(l, e, line, path, "out of memory");
            goto release_entries;
        }
        if (i > 0)
            uri_entry_release(&u);
    }

    /* The first entry is what code that knows one node uses. */
    const config_setting_t *e0 = in_list ? config_setting_get_elem(s, 0) : s;
    a->uri = strdup(config_setting_get_string(e0));
    a->uri_redacted = strdup(first.redacted);
    a->host = strdup(first.host);
    a->vhost = strdup(first.vhost);
    a->user = strdup(first.user);
    a->port = first.port;
    a->ssl = first.ssl;
    if (!a->uri || !a->uri_redacted || !a->host || !a->vhost || !a->user || join_redacted(a) < 0) {
        config_fail(l, s, it->path, "out of memory");
        goto release_entries;
    }
    l->uri_password = first.password;
    first.password = NULL;
    rc = 0;
release_entries:
    uri_entry_release(&first);
    uri_entry_release(&u);
    return rc;
}
