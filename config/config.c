/*
 * config.c - the configuration file, loaded into one validated struct.
 *
 * One table (config_items below) says, for every scalar setting, its path,
 * its type, its default, its bounds and where it goes in struct config.
 * Loading walks the file once to refuse unknown settings, then walks the
 * table to read, default and check every value, then runs the few checks
 * that involve more than one setting (password sources, duplicate
 * departments, the server's user). The four lists (amqp.uri,
 * client.departments, client.performers, server.clients) have small
 * readers of their own that report errors the same way.
 */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <libconfig.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "broker.h"
#include "redact.h"
#include "rmq.h"
#include "store_journal.h"

_Static_assert(CONFIG_MAX_AMQP_NODES <= BROKER_MAX_NODES,
               "every node of amqp.uri must fit in one broker object");

/* Caps on what is read from outside: the file itself, one password file,
 * one string setting. */
#define CONFIG_FILE_MAX     (1024 * 1024)
#define CONFIG_PASSWORD_MAX 4096
#define CONFIG_STRING_MAX   4096

/* A path in an error message, or a setting's path with a list index. */
#define CONFIG_PATH_MAX 128

/* At most this many lists named "uri" have the lines of their entries
 * recorded (amqp.uri is one; others are errors found later). */
#define CONFIG_URI_LISTS 4

/* The lines on which the entries of a list named "uri" start, as the
 * prescan saw them: libconfig dates a list entry by the token after it, so
 * the last entry of a list whose ")" stands on a line of its own would be
 * reported one line too late. */
struct uri_lines {
    int name_line; /* the line of "uri", which libconfig gets right */
    int n;         /* entries seen, counted past the cap */
    int line[CONFIG_MAX_AMQP_NODES];
};

/* The state of one config_load call. */
struct loader {
    const char *file; /* as the caller named it: errors show it */
    char *dir;        /* absolute directory of the file, for relative paths */
    config_t lc;
    int lc_ready;
    struct config *cfg;
    char *uri_password; /* the password found in amqp.uri, if any */
    struct uri_lines uri_lines[CONFIG_URI_LISTS];
    int n_uri_lines;
    char *err;
    size_t errlen;
};

enum item_type {
    IT_GROUP,     /* a group; offset is its `enabled` flag or NO_FIELD */
    IT_LIST,      /* a list, read by the item's check function */
    IT_STRING,    /* char *; min/max bound the length; no control characters */
    IT_NAME,      /* char *; a STRING of [A-Za-z0-9._-] only */
    IT_ID,        /* char *; a NAME that may also be written as an integer */
    IT_PATH,      /* char *; relative to the file's directory; "" = unset */
    IT_FILE,      /* char *; a PATH that must name a readable regular file */
    IT_SECRET,    /* char *; never shown, wiped when freed; NULL when unset */
    IT_ENUM,      /* char *; one of `allowed` */
    IT_LOG_LEVEL, /* enum log_level; one of `allowed` */
    IT_INT,       /* int; between min and max */
    IT_SIZE,      /* size_t; between min and max */
    IT_BOOL,      /* bool */
};

#define ITEM_REQUIRED 0x1u /* missing is an error when its group is present */
#define ITEM_WIPE     0x2u /* may hold a secret: wiped when freed */

#define NO_FIELD SIZE_MAX

struct item;
typedef int (*item_check_fn)(struct loader *l, const struct item *it, const config_setting_t *s);

struct item {
    const char *path;
    enum item_type type;
    unsigned flags;
    const char *def;     /* default of the string types */
    long long idef;      /* default of INT, SIZE and BOOL */
    long long min, max;  /* INT, SIZE: the value; string types: the length */
    const char *allowed; /* ENUM, LOG_LEVEL: the values, '|' between them */
    size_t offset;       /* into struct config */
    /* Runs after the value is stored (s is NULL when the default was used);
     * for a LIST it reads the whole list (s NULL when absent). */
    item_check_fn check;
};

static int check_socket_path(struct loader *l, const struct item *it, const config_setting_t *s);
static int check_server_user(struct loader *l, const struct item *it, const config_setting_t *s);
static int check_http_url(struct loader *l, const struct item *it, const config_setting_t *s);
static int check_listen(struct loader *l, const struct item *it, const config_setting_t *s);
static int read_amqp_uri(struct loader *l, const struct item *it, const config_setting_t *s);
static int read_departments(struct loader *l, const struct item *it, const config_setting_t *s);
static int read_performers(struct loader *l, const struct item *it, const config_setting_t *s);
static int read_clients(struct loader *l, const struct item *it, const config_setting_t *s);

#define F(field) offsetof(struct config, field)
#define GROUP(p, fl, off)                                                                          \
    {                                                                                              \
        .path = p, .type = IT_GROUP, .flags = fl, .offset = off                                    \
    }
#define LIST(p, fl, fn)                                                                            \
    {                                                                                              \
        .path = p, .type = IT_LIST, .flags = fl, .offset = NO_FIELD, .check = fn                   \
    }
#define STR(p, t, fl, d, lo, hi, field, fn)                                                        \
    {                                                                                              \
        .path = p, .type = t, .flags = fl, .def = d, .min = lo, .max = hi, .offset = F(field),     \
        .check = fn                                                                                \
    }
#define ENUM(p, t, d, values, field)                                                               \
    {                                                                                              \
        .path = p, .type = t, .def = d, .min = 1, .max = 64, .allowed = values, .offset = F(field) \
    }
#define INT(p, t, d, lo, hi, field)                                                                \
    {                                                                                              \
        .path = p, .type = t, .idef = d, .min = lo, .max = hi, .offset = F(field)                  \
    }
#define BOOL(p, d, field)                                                                          \
    {                                                                                              \
        .path = p, .type = IT_BOOL, .idef = d, .offset = F(field)                                  \
    }

/* Every setting of the file. The order is the order of the checks, so a
 * value that others depend on (amqp.uri before the password sources) comes
 * first. Paths, defaults and bounds are a user interface: the example
 * files document them. */
static const struct item config_items[] = {
    STR("instance", IT_NAME, 0, "remotetask", 1, 64, instance, NULL),
    STR("state_dir", IT_PATH, 0, "/var/lib/remotetask", 1, CONFIG_STRING_MAX, state_dir, NULL),
    STR("control_socket", IT_PATH, 0, "/run/remotetask/remotetaskd.sock", 1, CONFIG_STRING_MAX,
        control_socket, check_socket_path),
    ENUM("log_level", IT_LOG_LEVEL, "info", "error|warning|info|debug", log_level),

    GROUP("amqp", ITEM_REQUIRED, NO_FIELD),
    /* A string or a list of strings, read whole by read_amqp_uri. */
    LIST("amqp.uri", ITEM_REQUIRED, read_amqp_uri),
    STR("amqp.password", IT_SECRET, 0, NULL, 1, CONFIG_PASSWORD_MAX, amqp.password, NULL),
    STR("amqp.password_file", IT_PATH, 0, "", 0, CONFIG_STRING_MAX, amqp.password_file, NULL),
    INT("amqp.heartbeat", IT_INT, 30, 0, 3600, amqp.heartbeat),
    INT("amqp.prefetch", IT_INT, 64, 1, 65535, amqp.prefetch),
    ENUM("amqp.queue_type", IT_ENUM, "classic", "classic|quorum", amqp.queue_type),
    INT("amqp.connect_timeout", IT_INT, 10, 1, 300, amqp.connect_timeout),
    GROUP("amqp.tls", 0, NO_FIELD),
    STR("amqp.tls.ca_file", IT_FILE, 0, "", 0, CONFIG_STRING_MAX, amqp.tls.ca_file, NULL),
    STR("amqp.tls.cert_file", IT_FILE, 0, "", 0, CONFIG_STRING_MAX, amqp.tls.cert_file, NULL),
    STR("amqp.tls.key_file", IT_FILE, 0, "", 0, CONFIG_STRING_MAX, amqp.tls.key_file, NULL),
    BOOL("amqp.tls.verify_peer", 1, amqp.tls.verify_peer),
    BOOL("amqp.tls.verify_hostname", 1, amqp.tls.verify_hostname),

    GROUP("billmanager", ITEM_REQUIRED, NO_FIELD),
    STR("billmanager.url", IT_STRING, ITEM_REQUIRED, NULL, 1, CONFIG_STRING_MAX, billmanager.url,
        check_http_url),
    STR("billmanager.login", IT_STRING, ITEM_REQUIRED, NULL, 1, 256, billmanager.login, NULL),
    STR("billmanager.password", IT_SECRET, 0, NULL, 1, CONFIG_PASSWORD_MAX, billmanager.password,
        NULL),
    STR("billmanager.password_file", IT_PATH, 0, "", 0, CONFIG_STRING_MAX,
        billmanager.password_file, NULL),
    INT("billmanager.timeout", IT_INT, 30, 1, 3600, billmanager.timeout),
    /* Its upper bound is billmanager.timeout, checked in check_billmgr. */
    INT("billmanager.connect_timeout", IT_INT, 10, 1, 3600, billmanager.connect_timeout),
    INT("billmanager.max_inflight", IT_INT, 16, 1, 256, billmanager.max_inflight),
    INT("billmanager.max_response", IT_SIZE, 4194304, 65536, 1073741824, billmanager.max_response),
    STR("billmanager.ca_file", IT_FILE, 0, "", 0, CONFIG_STRING_MAX, billmanager.ca_file, NULL),
    BOOL("billmanager.verify_tls", 1, billmanager.verify_tls),
    GROUP("billmanager.api", 0, NO_FIELD),
    ENUM("billmanager.api.auth", IT_ENUM, "authinfo", "authinfo|session", billmanager.api.auth),
    INT("billmanager.api.page_size", IT_INT, 200, 1, 100000, billmanager.api.page_size),
    STR("billmanager.api.func_task", IT_NAME, 0, "task", 1, 64, billmanager.api.func_task, NULL),
    STR("billmanager.api.func_task_edit", IT_NAME, 0, "task.edit", 1, 64,
        billmanager.api.func_task_edit, NULL),
    STR("billmanager.api.func_department", IT_NAME, 0, "department", 1, 64,
        billmanager.api.func_department, NULL),
    STR("billmanager.api.func_user", IT_NAME, 0, "user", 1, 64, billmanager.api.func_user, NULL),
    STR("billmanager.api.field_name", IT_NAME, 0, "name", 1, 64, billmanager.api.field_name, NULL),
    STR("billmanager.api.field_note", IT_NAME, 0, "note", 1, 64, billmanager.api.field_note, NULL),
    STR("billmanager.api.field_type", IT_NAME, 0, "type", 1, 64, billmanager.api.field_type, NULL),
    STR("billmanager.api.field_deadline", IT_NAME, 0, "deadline", 1, 64,
        billmanager.api.field_deadline, NULL),
    STR("billmanager.api.field_status", IT_NAME, 0, "status", 1, 64, billmanager.api.field_status,
        NULL),
    STR("billmanager.api.field_performer", IT_NAME, 0, "performer", 1, 64,
        billmanager.api.field_performer, NULL),
    STR("billmanager.api.field_department", IT_NAME, 0, "department", 1, 64,
        billmanager.api.field_department, NULL),
    STR("billmanager.api.field_updated", IT_NAME, 0, "updated", 1, 64,
        billmanager.api.field_updated, NULL),
    STR("billmanager.api.task_type", IT_NAME, 0, "", 0, 64, billmanager.api.task_type, NULL),

    GROUP("client", 0, F(client.enabled)),
    STR("client.id", IT_ID, ITEM_REQUIRED, NULL, 1, 64, client.id, NULL),
    INT("client.poll_interval", IT_INT, 60, 5, 86400, client.poll_interval),
    STR("client.server_user", IT_STRING, 0, "", 0, 255, client.server_user, check_server_user),
    LIST("client.departments", ITEM_REQUIRED, read_departments),
    LIST("client.performers", 0, read_performers),

    GROUP("server", 0, F(server.enabled)),
    INT("server.sync_interval", IT_INT, 300, 1, 86400, server.sync_interval),
    LIST("server.clients", ITEM_REQUIRED, read_clients),

    GROUP("metrics", 0, NO_FIELD),
    STR("metrics.listen", IT_STRING, 0, "", 0, 300, metrics.listen, check_listen),

    /* The bounds are the store's (store_journal.h). */
    GROUP("journal", 0, NO_FIELD),
    INT("journal.entries", IT_INT, STORE_JOURNAL_ENTRIES_DEFAULT, 0, STORE_JOURNAL_ENTRIES_MAX,
        journal.entries),
    INT("journal.days", IT_INT, STORE_JOURNAL_DAYS_DEFAULT, 1, STORE_JOURNAL_DAYS_MAX,
        journal.days),
};

#define N_ITEMS (sizeof(config_items) / sizeof(config_items[0]))

/* ---- errors ---------------------------------------------------------- */

/* Writes "FILE:LINE: SETTING: message" into the caller's err. where gives
 * the file and line (NULL, or a setting without a line, leaves the line
 * out); setting may be NULL for errors about the whole file. Returns -1 so
 * that callers can `return fail(...)`. */
static int fail(struct loader *l, const config_setting_t *where, const char *setting,
                const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static int vfail(struct loader *l, const config_setting_t *where, int line, const char *setting,
                 const char *fmt, va_list ap) __attribute__((format(printf, 5, 0)));

static int vfail(struct loader *l, const config_setting_t *where, int line, const char *setting,
                 const char *fmt, va_list ap)
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

static int fail(struct loader *l, const config_setting_t *where, const char *setting,
                const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfail(l, where, 0, setting, fmt, ap);
    va_end(ap);
    return -1;
}

/* Like fail, on a line known better than libconfig knows it (line > 0;
 * otherwise where's line). */
static int fail_at(struct loader *l, const config_setting_t *where, int line, const char *setting,
                   const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static int fail_at(struct loader *l, const config_setting_t *where, int line, const char *setting,
                   const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfail(l, where, line, setting, fmt, ap);
    va_end(ap);
    return -1;
}

/* Like fail, for errors found in the text before libconfig parsed it:
 * "FILE:LINE: message". */
static int fail_line(struct loader *l, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail_line(struct loader *l, int line, const char *fmt, ...)
{
    char msg[CONFIG_ERR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    snprintf(l->err, l->errlen, "%s:%d: %s", l->file, line, msg);
    return -1;
}

/* True when s can be echoed in an error: short and without control
 * characters, so that an error line cannot be forged or flooded. */
static int showable(const char *s)
{
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++, n++)
        if (*p < 0x20 || *p == 0x7f || n >= 64)
            return 0;
    return 1;
}

/* ---- small helpers --------------------------------------------------- */

static char **field_str(struct config *cfg, size_t offset)
{
    return (char **)(void *)((char *)cfg + offset);
}

static const struct item *item_find(const char *path)
{
    for (size_t i = 0; i < N_ITEMS; i++)
        if (strcmp(config_items[i].path, path) == 0)
            return &config_items[i];
    return NULL;
}

/* The group that holds a path ("amqp.tls" for "amqp.tls.ca_file"), or
 * NULL for a top-level setting. */
static const struct item *item_parent(const struct item *it)
{
    char parent[CONFIG_PATH_MAX];
    const char *dot = strrchr(it->path, '.');
    if (!dot)
        return NULL;
    snprintf(parent, sizeof(parent), "%.*s", (int)(dot - it->path), it->path);
    return item_find(parent);
}

static int is_name_char(int c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
}

static int has_control(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p < 0x20 || *p == 0x7f)
            return 1;
    return 0;
}

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

/* Opens path without blocking (a FIFO must not hang the load) and checks
 * it is a regular file. Returns the descriptor, or -1 after writing the
 * error about setting s. */
static int open_regular(struct loader *l, const config_setting_t *s, const char *setting,
                        const char *path, struct stat *st)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0)
        return fail(l, s, setting, "cannot open \"%s\": %s", path, strerror(errno));
    if (fstat(fd, st) < 0) {
        int e = errno;
        close(fd);
        return fail(l, s, setting, "cannot stat \"%s\": %s", path, strerror(e));
    }
    if (!S_ISREG(st->st_mode)) {
        close(fd);
        return fail(l, s, setting, "\"%s\" is not a regular file", path);
    }
    return fd;
}

/* Reads up to cap bytes of fd into buf (cap + 1 bytes long, NUL-terminated).
 * Returns the byte count or -1 with errno set. */
static ssize_t read_capped(int fd, char *buf, size_t cap)
{
    size_t n = 0;
    while (n < cap) {
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        if (r == 0)
            break;
        n += (size_t)r;
    }
    buf[n] = '\0';
    return (ssize_t)n;
}

/* Reads a password file: a regular file that neither group nor others may
 * read or write (a password file anyone can read is no secret), whose
 * first line, without its line ending, is the password. On success *out is
 * a new string the config owns. */
static int read_password_file(struct loader *l, const config_setting_t *s, const char *setting,
                              const char *path, char **out)
{
    char buf[CONFIG_PASSWORD_MAX + 2];
    struct stat st;
    int rc = -1;
    int fd = open_regular(l, s, setting, path, &st);
    if (fd < 0)
        return -1;
    if (st.st_mode & (S_IRGRP | S_IROTH)) {
        fail(l, s, setting, "\"%s\" is readable by group or others (mode %04o): chmod 600 it", path,
             (unsigned)(st.st_mode & 07777));
        goto close_fd;
    }
    if (st.st_mode & (S_IWGRP | S_IWOTH)) {
        fail(l, s, setting, "\"%s\" is writable by group or others (mode %04o): chmod 600 it", path,
             (unsigned)(st.st_mode & 07777));
        goto close_fd;
    }
    ssize_t n = read_capped(fd, buf, CONFIG_PASSWORD_MAX + 1);
    if (n < 0) {
        fail(l, s, setting, "cannot read \"%s\": %s", path, strerror(errno));
        goto close_fd;
    }
    size_t len = strcspn(buf, "\n");
    if (len < (size_t)n && buf[len] == '\0') {
        fail(l, s, setting, "\"%s\" holds a NUL byte", path);
        goto wipe_buf;
    }
    if (len > CONFIG_PASSWORD_MAX) {
        fail(l, s, setting, "the first line of \"%s\" is longer than %d bytes", path,
             CONFIG_PASSWORD_MAX);
        goto wipe_buf;
    }
    while (len > 0 && buf[len - 1] == '\r')
        len--;
    if (len == 0) {
        fail(l, s, setting, "\"%s\" is empty: its first line must hold the password", path);
        goto wipe_buf;
    }
    *out = strndup(buf, len);
    if (!*out) {
        fail(l, s, setting, "out of memory");
        goto wipe_buf;
    }
    rc = 0;
wipe_buf:
    explicit_bzero(buf, sizeof(buf));
close_fd:
    close(fd);
    return rc;
}

/* ---- the file -------------------------------------------------------- */

/* A token of the prescan, for uri_scan_token: a punctuation character
 * itself, or one of these. */
#define URI_TOK_URI   256 /* the name "uri" */
#define URI_TOK_VALUE 257 /* a string, a number, another name */

/* Follows `uri = ( ... );` through the tokens of the prescan, recording the
 * line on which each entry of the list starts (struct uri_lines). */
struct uri_scan {
    int state; /* 0 elsewhere, 1 after "uri", 2 after "uri =", 3 in its list */
    int depth; /* brackets open inside the list */
    int name_line;
};

static void uri_scan_token(struct loader *l, struct uri_scan *u, int tok, int line)
{
    struct uri_lines *rec;

    switch (u->state) {
    case 1:
        if (tok == '=' || tok == ':') {
            u->state = 2;
            return;
        }
        break;
    case 2:
        if ((tok == '(' || tok == '[') && l->n_uri_lines < CONFIG_URI_LISTS) {
            rec = &l->uri_lines[l->n_uri_lines++];
            rec->name_line = u->name_line;
            rec->n = 0;
            u->state = 3;
            u->depth = 0;
            return;
        }
        break;
    case 3:
        rec = &l->uri_lines[l->n_uri_lines - 1];
        if (tok == '(' || tok == '[' || tok == '{') {
            u->depth++;
        } else if (tok == ')' || tok == ']' || tok == '}') {
            if (u->depth-- == 0)
                u->state = 0;
        } else if ((tok == URI_TOK_VALUE || tok == URI_TOK_URI) && u->depth == 0) {
            if (rec->n < CONFIG_MAX_AMQP_NODES)
                rec->line[rec->n] = line;
            rec->n++;
        }
        return;
    default: break;
    }
    u->state = 0;
    if (tok == URI_TOK_URI) {
        u->state = 1;
        u->name_line = line;
    }
}

/* Refuses what libconfig 1.5 accepts silently but wrongly: an integer that
 * does not fit in 32 bits without an L suffix is wrapped (99999999999 reads
 * as 1215752191), which would turn a typo into a plausible value; and
 * @include, which would make the configuration more than the one file that
 * SIGHUP re-reads. A small lexer skips strings and comments so that
 * neither is mistaken for a number; on the way it dates the entries of a
 * list named "uri" (struct uri_lines). */
static int prescan(struct loader *l, const char *text, size_t len)
{
    int line = 1;
    int line_start = 1;
    size_t i = 0;
    const char *name = "?"; /* the last name seen: the setting a number belongs to */
    size_t name_len = 1;
    struct uri_scan uri = {0};

    while (i < len) {
        char c = text[i];
        char next = i + 1 < len ? text[i + 1] : '\0';
        if (c == '\n') {
            line++;
            line_start = 1;
            i++;
            continue;
        }
        if (c == ' ' || c == '\t' || c == '\r') {
            i++;
            continue;
        }
        if (line_start && c == '@' && strncmp(text + i, "@include", 8) == 0)
            return fail_line(l, line,
                             "@include is not supported: keep the configuration in one file");
        line_start = 0;
        if (c == '"') {
            uri_scan_token(l, &uri, URI_TOK_VALUE, line);
            for (i++; i < len && text[i] != '"'; i++) {
                if (text[i] == '\\' && i + 1 < len)
                    i++;
                if (text[i] == '\n')
                    line++;
            }
            i++;
        } else if (c == '#' || (c == '/' && next == '/')) {
            while (i < len && text[i] != '\n')
                i++;
        } else if (c == '/' && next == '*') {
            for (i += 2; i < len && !(text[i] == '*' && i + 1 < len && text[i + 1] == '/'); i++)
                if (text[i] == '\n')
                    line++;
            i += 2;
        } else if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '*') {
            name = text + i;
            while (i < len && (is_name_char(text[i]) || text[i] == '*'))
                i++;
            name_len = (size_t)(text + i - name);
            uri_scan_token(
                l, &uri,
                name_len == 3 && strncmp(name, "uri", 3) == 0 ? URI_TOK_URI : URI_TOK_VALUE, line);
        } else if (c >= '0' && c <= '9') {
            size_t start = i;
            uri_scan_token(l, &uri, URI_TOK_VALUE, line);
            int hex = c == '0' && (next == 'x' || next == 'X');
            unsigned long long v = 0;
            int big = 0;
            if (hex)
                i += 2;
            for (; i < len; i++) {
                char d = text[i];
                int dv;
                if (d >= '0' && d <= '9')
                    dv = d - '0';
                else if (hex && d >= 'a' && d <= 'f')
                    dv = d - 'a' + 10;
                else if (hex && d >= 'A' && d <= 'F')
                    dv = d - 'A' + 10;
                else
                    break;
                v = v * (hex ? 16u : 10u) + (unsigned)dv;
                if (v > 0xffffffffULL)
                    big = 1, v = 0xffffffffULL;
            }
            if (!hex && i < len && (text[i] == '.' || text[i] == 'e' || text[i] == 'E')) {
                /* A float: its digits are not an integer. */
                while (i < len &&
                       ((text[i] >= '0' && text[i] <= '9') || text[i] == '.' || text[i] == 'e' ||
                        text[i] == 'E' || text[i] == '+' || text[i] == '-'))
                    i++;
                continue;
            }
            if (i < len && text[i] == 'L') {
                i++;
                continue;
            }
            /* The number itself is not shown: an unquoted numeric
             * password must not reach the error. */
            int negative = start > 0 && text[start - 1] == '-';
            unsigned long long limit = negative ? 2147483648ULL : 2147483647ULL;
            if (big || v > limit)
                return fail_line(l, line,
                                 "%.*s: the integer does not fit in 32 bits (at most %s%llu); "
                                 "libconfig would silently change it",
                                 (int)(name_len > 64 ? 64 : name_len), name, negative ? "-" : "",
                                 limit);
        } else {
            uri_scan_token(l, &uri, (unsigned char)c, line);
            i++;
        }
    }
    return 0;
}

/* Reads the file (a regular file, at most CONFIG_FILE_MAX bytes) and parses
 * it. The text is wiped afterwards since it may hold passwords. */
static int parse_file(struct loader *l)
{
    struct stat st;
    char *text;
    int rc = -1;
    int fd = open(l->file, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0)
        return fail(l, NULL, NULL, "cannot open: %s", strerror(errno));
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return fail(l, NULL, NULL, "not a regular file");
    }
    if (st.st_size > CONFIG_FILE_MAX) {
        close(fd);
        return fail(l, NULL, NULL, "larger than %d bytes", CONFIG_FILE_MAX);
    }
    text = malloc(CONFIG_FILE_MAX + 1);
    if (!text) {
        close(fd);
        return fail(l, NULL, NULL, "out of memory");
    }
    ssize_t n = read_capped(fd, text, CONFIG_FILE_MAX + 1);
    int read_errno = errno;
    close(fd);
    if (n < 0) {
        fail(l, NULL, NULL, "cannot read: %s", strerror(read_errno));
        goto free_text;
    }
    if (n > CONFIG_FILE_MAX) {
        fail(l, NULL, NULL, "larger than %d bytes", CONFIG_FILE_MAX);
        goto free_text;
    }
    if (memchr(text, '\0', (size_t)n)) {
        fail(l, NULL, NULL, "holds a NUL byte: not a text file");
        goto free_text;
    }
    if (prescan(l, text, (size_t)n) < 0)
        goto free_text;

    config_init(&l->lc);
    l->lc_ready = 1;
    if (config_read_string(&l->lc, text) != CONFIG_TRUE) {
        const char *f = config_error_file(&l->lc);
        snprintf(l->err, l->errlen, "%s:%d: %s", f ? f : l->file, config_error_line(&l->lc),
                 config_error_text(&l->lc));
        goto free_text;
    }
    rc = 0;
free_text:
    explicit_bzero(text, (size_t)(n > 0 ? n : 0));
    free(text);
    return rc;
}

/* Refuses every setting the table does not know: they are typos, and a
 * typo silently ignored is a default silently used. Lists are checked by
 * their readers. */
static int walk_unknown(struct loader *l, const config_setting_t *group, const char *prefix)
{
    int n = config_setting_length(group);
    for (int i = 0; i < n; i++) {
        const config_setting_t *s = config_setting_get_elem(group, (unsigned)i);
        const char *name = config_setting_name(s);
        char path[CONFIG_PATH_MAX];
        snprintf(path, sizeof(path), "%s%s%s", prefix, *prefix ? "." : "", name ? name : "?");
        const struct item *it = item_find(path);
        if (!it)
            return fail(l, s, path, "unknown setting");
        if (it->type != IT_GROUP)
            continue;
        if (config_setting_type(s) != CONFIG_TYPE_GROUP)
            return fail(l, s, path, "must be a group, like %s: { ... };", name);
        if (walk_unknown(l, s, path) < 0)
            return -1;
    }
    return 0;
}

/* ---- the table ------------------------------------------------------- */

static int store_string(struct loader *l, const struct item *it, const config_setting_t *s,
                        const char *v)
{
    char **field = field_str(l->cfg, it->offset);
    size_t len = strlen(v);

    if (s && it->type != IT_SECRET && has_control(v))
        return fail(l, s, it->path, "must not hold control characters");
    if (s && len < (size_t)it->min)
        return fail(l, s, it->path, "must not be empty");
    if (s && len > (size_t)it->max)
        return fail(l, s, it->path, "must be at most %lld characters long", it->max);
    if (s && (it->type == IT_NAME || it->type == IT_ID)) {
        for (const char *p = v; *p; p++)
            if (!is_name_char((unsigned char)*p))
                return fail(l, s, it->path, "may hold only letters, digits, '.', '_' and '-'");
        /* A client id is part of queue names and routing keys, where a dot
         * would make "a.forward" ambiguous. */
        if (it->type == IT_ID && strchr(v, '.'))
            return fail(l, s, it->path,
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
            if (showable(v))
                return fail(l, s, it->path, "must be %s, not \"%s\"", list, v);
            return fail(l, s, it->path, "must be %s", list);
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
        return fail(l, s, it->path, "out of memory");
    if (it->type == IT_FILE && (*field)[0] != '\0') {
        struct stat st;
        int fd = open_regular(l, s, it->path, *field, &st);
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
        return fail(l, s, it->path,
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
                return fail(l, s, it->path, "must be true or false");
            v = config_setting_get_bool(s);
        } else {
            if (t != CONFIG_TYPE_INT && t != CONFIG_TYPE_INT64)
                return fail(l, s, it->path, "must be an integer");
            v = config_setting_get_int64(s);
            if (v < it->min || v > it->max)
                return fail(l, s, it->path, "must be between %lld and %lld, not %lld", it->min,
                            it->max, v);
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
static int load_items(struct loader *l)
{
    for (size_t i = 0; i < N_ITEMS; i++) {
        const struct item *it = &config_items[i];
        const struct item *parent = item_parent(it);
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
                return fail(l, NULL, it->path, "required group is missing");
            return fail(l, pg, it->path, "required setting is missing");
        }
        switch (it->type) {
        case IT_GROUP:
            if (s && config_setting_type(s) != CONFIG_TYPE_GROUP)
                return fail(l, s, it->path, "must be a group");
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

static int check_socket_path(struct loader *l, const struct item *it, const config_setting_t *s)
{
    struct sockaddr_un sa;
    size_t len = strlen(l->cfg->control_socket);
    if (len >= sizeof(sa.sun_path))
        return fail(l, s, it->path,
                    "\"%s\" is %zu bytes long; a socket path must be shorter than %zu bytes",
                    l->cfg->control_socket, len, sizeof(sa.sun_path));
    return 0;
}

/* The authority of a URI: what follows "://" up to the path. */
static void uri_authority(const char *uri, const char **start, size_t *len)
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
    const char *auth;
    size_t auth_len;
    int rc = -1;

    if (config_setting_type(e) != CONFIG_TYPE_STRING)
        return fail_at(l, e, line, path, "must be a string (in double quotes)");
    const char *uri = config_setting_get_string(e);
    size_t len = strlen(uri);
    if (has_control(uri))
        return fail_at(l, e, line, path, "must not hold control characters");
    if (len == 0)
        return fail_at(l, e, line, path, "must not be empty");
    if (len > CONFIG_STRING_MAX)
        return fail_at(l, e, line, path, "must be at most %d characters long", CONFIG_STRING_MAX);

    out->redacted = malloc(len + 8);
    if (!out->redacted)
        return fail_at(l, e, line, path, "out of memory");
    redact_uri(uri, out->redacted, len + 8);

    if (strncmp(uri, "amqp://", 7) != 0 && strncmp(uri, "amqps://", 8) != 0) {
        if (in_list)
            return fail_at(l, e, line, path, "\"%s\" must start with amqp:// or amqps://",
                           out->redacted);
        return fail_at(l, e, line, path, "must start with amqp:// or amqps://");
    }
    uri_authority(uri, &auth, &auth_len);
    const char *at = NULL;
    for (const char *p = auth; p < auth + auth_len; p++)
        if (*p == '@')
            at = p;
    if (!at || at == auth || *auth == ':')
        return fail_at(l, e, line, path, "\"%s\" names no user: write amqp://USER@HOST:PORT/VHOST",
                       out->redacted);
    int has_password = memchr(auth, ':', (size_t)(at - auth)) != NULL;

    char *copy = strdup(uri);
    if (!copy)
        return fail_at(l, e, line, path, "out of memory");
    int r = amqp_parse_url(copy, &ci);
    if (r != AMQP_STATUS_OK) {
        fail_at(l, e, line, path, "\"%s\" is not a valid AMQP URI (amqp://USER@HOST:PORT/VHOST)",
                out->redacted);
        goto wipe_copy;
    }
    if (!ci.user[0]) {
        fail_at(l, e, line, path, "\"%s\" names no user", out->redacted);
        goto wipe_copy;
    }
    if (!ci.host[0]) {
        fail_at(l, e, line, path, "\"%s\" names no host", out->redacted);
        goto wipe_copy;
    }
    if (!ci.vhost[0]) {
        fail_at(l, e, line, path, "\"%s\" names an empty virtual host; write /%%2f for \"/\"",
                out->redacted);
        goto wipe_copy;
    }
    out->host = strdup(ci.host);
    out->vhost = strdup(ci.vhost);
    out->user = strdup(ci.user);
    out->port = ci.port;
    out->ssl = ci.ssl != 0;
    if (has_password)
        out->password = strdup(ci.password);
    if (!out->host || !out->vhost || !out->user || (has_password && !out->password)) {
        fail_at(l, e, line, path, "out of memory");
        goto wipe_copy;
    }
    if (has_password && !out->password[0]) {
        fail_at(l, e, line, path, "\"%s\" holds an empty password", out->redacted);
        goto wipe_copy;
    }
    /* Several copies of one secret are more places to leak it, and one
     * password file changes it for every node at once. */
    if (has_password && in_list) {
        fail_at(l, e, line, path,
                "\"%s\" holds a password: in a list of nodes, give the one password of every "
                "node with amqp.password_file (or amqp.password)",
                out->redacted);
        goto wipe_copy;
    }
    rc = 0;
wipe_copy:
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
        return fail_at(l, e, line, path,
                       "\"%s\" uses %s but amqp.uri[0] uses %s: use one scheme for every node "
                       "(the same password goes to each, so one node without TLS exposes it)",
                       u->redacted, u->ssl ? "amqps://" : "amqp://",
                       first->ssl ? "amqps://" : "amqp://");
    if (strcmp(u->user, first->user) != 0)
        return fail_at(l, e, line, path,
                       "\"%s\" names another user than amqp.uri[0] (\"%s\"): every node is "
                       "logged in to as the same user",
                       u->redacted, first->redacted);
    if (strcmp(u->vhost, first->vhost) != 0)
        return fail_at(l, e, line, path,
                       "\"%s\" names another virtual host than amqp.uri[0] (\"%s\"): the nodes "
                       "of one cluster serve the same virtual host",
                       u->redacted, first->redacted);
    for (size_t j = 0; j < i; j++) {
        const struct config_amqp_node *o = &a->nodes[j];
        if (o->port == u->port && strcasecmp(o->host, u->host) == 0)
            return fail_at(l, e, line, path,
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

/* amqp.uri: one URI, or a list of them (one per node of a cluster), into
 * a->nodes and the first entry's fields. The password of a single URI is
 * kept in l->uri_password for password_source. */
static int read_amqp_uri(struct loader *l, const struct item *it, const config_setting_t *s)
{
    static const char like[] =
        "( \"amqps://USER@node1:5671/%2f\", \"amqps://USER@node2:5671/%2f\" )";
    struct config_amqp *a = &l->cfg->amqp;
    struct uri_entry first = {0};
    struct uri_entry u = {0};
    int rc = -1;

    if (!s)
        return fail(l, config_lookup(&l->lc, "amqp"), it->path, "required setting is missing");
    int t = config_setting_type(s);
    int in_list = t == CONFIG_TYPE_LIST || t == CONFIG_TYPE_ARRAY;
    int n = in_list ? config_setting_length(s) : 1;
    if (t == CONFIG_TYPE_GROUP || (!in_list && t != CONFIG_TYPE_STRING))
        return fail(l, s, it->path,
                    "must be a string, or a list of strings for the nodes of a cluster, like %s",
                    like);
    if (n == 0)
        return fail(l, s, it->path, "must not be empty: list at least one node, like %s", like);
    if (n > CONFIG_MAX_AMQP_NODES)
        return fail(l, s, it->path, "has %d entries; at most %d are allowed", n,
                    CONFIG_MAX_AMQP_NODES);

    a->nodes = calloc((size_t)n, sizeof(*a->nodes));
    a->broker_nodes = calloc((size_t)n, sizeof(*a->broker_nodes));
    if (!a->nodes || !a->broker_nodes)
        return fail(l, s, it->path, "out of memory");
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
        struct config_amqp_node *node = &a->nodes[i];
        node->uri_redacted = strdup(cur->redacted);
        node->host = strdup(cur->host);
        node->port = cur->port;
        node->ssl = cur->ssl;
        a->n_nodes = (size_t)i + 1;
        if (!node->uri_redacted || !node->host) {
            fail_at(l, e, line, path, "out of memory");
            goto release_entries;
        }
        a->broker_nodes[i].host = node->host;
        a->broker_nodes[i].port = node->port;
        a->broker_nodes[i].ssl = node->ssl;
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
        fail(l, s, it->path, "out of memory");
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

/* A client applies the state messages of one sender only, its server
 * side: without that check any other client of the same broker could
 * publish states for this one (through the retry exchange, for one). */
static int check_server_user(struct loader *l, const struct item *it, const config_setting_t *s)
{
    if (!l->cfg->client.enabled || l->cfg->client.server_user[0])
        return 0;
    return fail(l, s ? s : config_lookup(&l->lc, "client"), it->path,
                "is required: the AMQP user of the server side, the only one allowed to send "
                "this client its tasks' states");
}

static int check_http_url(struct loader *l, const struct item *it, const config_setting_t *s)
{
    const char *url = l->cfg->billmanager.url;
    const char *auth;
    size_t auth_len;
    if (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0)
        return fail(l, s, it->path, "must start with http:// or https://");
    uri_authority(url, &auth, &auth_len);
    /* Credentials in a URL end up in logs and argv; they have their own
     * settings. */
    if (memchr(auth, '@', auth_len))
        return fail(l, s, it->path,
                    "must not hold credentials: use billmanager.login and "
                    "billmanager.password_file");
    if (auth_len == 0 || *auth == ':')
        return fail(l, s, it->path, "names no host");
    if (strchr(url, ' '))
        return fail(l, s, it->path, "must not hold spaces (write them as %%20)");
    return 0;
}

/* "host:port" where host is an IPv4 literal, "[IPv6]" or "localhost". */
static int check_listen(struct loader *l, const struct item *it, const config_setting_t *s)
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
        return m->host ? 0 : fail(l, s, it->path, "out of memory");
    }
    if (v[0] == '[') {
        const char *close_br = strchr(v, ']');
        if (!close_br || close_br[1] != ':')
            return fail(l, s, it->path, "must be \"HOST:PORT\", like \"[::1]:9464\"");
        hlen = (size_t)(close_br - v - 1);
        if (hlen >= sizeof(host))
            return fail(l, s, it->path, "is not an IPv6 address in brackets");
        memcpy(host, v + 1, hlen);
        host[hlen] = '\0';
        colon = close_br + 1;
        ok = inet_pton(AF_INET6, host, addr) == 1;
    } else {
        colon = strrchr(v, ':');
        if (!colon)
            return fail(l, s, it->path, "must be \"HOST:PORT\", like \"127.0.0.1:9464\"");
        hlen = (size_t)(colon - v);
        if (memchr(v, ':', hlen))
            return fail(l, s, it->path, "an IPv6 address goes in brackets: \"[::1]:9464\"");
        if (hlen >= sizeof(host))
            return fail(l, s, it->path, "the host must be an IP address or \"localhost\"");
        memcpy(host, v, hlen);
        host[hlen] = '\0';
        ok = strcmp(host, "localhost") == 0 || inet_pton(AF_INET, host, addr) == 1;
    }
    if (!ok)
        return fail(l, s, it->path, "the host must be an IP address or \"localhost\"");
    const char *port = colon + 1;
    long p = 0;
    if (!*port || strlen(port) > 5)
        p = -1;
    for (const char *c = port; p >= 0 && *c; c++)
        p = (*c >= '0' && *c <= '9') ? p * 10 + (*c - '0') : -1;
    if (p < 1 || p > 65535)
        return fail(l, s, it->path, "the port must be between 1 and 65535");
    m->host = strdup(host);
    if (!m->host)
        return fail(l, s, it->path, "out of memory");
    m->port = (int)p;
    m->enabled = true;
    return 0;
}

/* ---- lists ----------------------------------------------------------- */

/* Checks that s is a list of at most max groups, not empty when required.
 * Returns its length or -1. An empty list may be written ( ) or [ ]. */
static int list_check(struct loader *l, const struct item *it, const config_setting_t *s,
                      size_t max, const char *like)
{
    int t = config_setting_type(s);
    int n = config_setting_length(s);
    if (t != CONFIG_TYPE_LIST && !(t == CONFIG_TYPE_ARRAY && n == 0))
        return fail(l, s, it->path, "must be a list of groups, like %s", like);
    if (n == 0 && (it->flags & ITEM_REQUIRED))
        return fail(l, s, it->path, "must not be empty, like %s", like);
    if ((size_t)n > max)
        return fail(l, s, it->path, "has %d entries; at most %zu are allowed", n, max);
    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(s, (unsigned)i);
        if (config_setting_type(e) != CONFIG_TYPE_GROUP) {
            char path[CONFIG_PATH_MAX];
            snprintf(path, sizeof(path), "%s[%d]", it->path, i);
            return fail(l, e, path, "must be a group, like %s", like);
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
            return fail(l, m, path, "unknown setting");
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
        return fail(l, e, path, "required setting is missing");
    int t = config_setting_type(m);
    if (t != CONFIG_TYPE_INT && t != CONFIG_TYPE_INT64)
        return fail(l, m, path, "must be an integer");
    long long v = config_setting_get_int64(m);
    if (v < 1 || v > LONG_MAX)
        return fail(l, m, path, "must be a positive id, not %lld", v);
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
        return fail(l, e, path, "required setting is missing");
    int t = config_setting_type(m);
    if (allow_int && (t == CONFIG_TYPE_INT || t == CONFIG_TYPE_INT64)) {
        snprintf(num, sizeof(num), "%lld", config_setting_get_int64(m));
        v = num;
    } else if (t == CONFIG_TYPE_STRING) {
        v = config_setting_get_string(m);
    } else {
        return fail(l, m, path, allow_int ? "must be a string or an integer" : "must be a string");
    }
    size_t len = strlen(v);
    if (len == 0)
        return fail(l, m, path, "must not be empty");
    if (len > max)
        return fail(l, m, path, "must be at most %zu characters long", max);
    for (const char *p = v; *p; p++) {
        if (strict && !is_name_char((unsigned char)*p))
            return fail(l, m, path, "may hold only letters, digits, '.', '_' and '-'");
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            return fail(l, m, path, "must not hold control characters");
    }
    *out = strdup(v);
    return *out ? 0 : fail(l, m, path, "out of memory");
}

static int read_departments(struct loader *l, const struct item *it, const config_setting_t *s)
{
    static const char *const names[] = {"local", "remote", NULL};
    static const char like[] = "( { local = 3; remote = 12; } )";
    struct config_client *c = &l->cfg->client;
    if (!s)
        return fail(l, config_lookup(&l->lc, "client"), it->path,
                    "required setting is missing: map at least one department, like %s", like);
    int n = list_check(l, it, s, CONFIG_MAX_DEPARTMENTS, like);
    if (n < 0)
        return -1;
    c->departments = calloc((size_t)n + 1, sizeof(*c->departments));
    if (!c->departments)
        return fail(l, s, it->path, "out of memory");
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
                return fail(l, e, epath,
                            "local department %ld is already mapped by %s[%d]: a department "
                            "may be used by one mapping only",
                            d->local, it->path, j);
            if (c->departments[j].remote == d->remote)
                return fail(l, e, epath,
                            "remote department %ld is already mapped by %s[%d]: a department "
                            "may be used by one mapping only",
                            d->remote, it->path, j);
        }
        c->n_departments = (size_t)i + 1;
    }
    return 0;
}

static int read_performers(struct loader *l, const struct item *it, const config_setting_t *s)
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
        return fail(l, s, it->path, "out of memory");
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
                return fail(l, e, epath, "remote performer %ld is already mapped by %s[%d]",
                            p->remote, it->path, j);
        c->n_performers = (size_t)i + 1;
    }
    return 0;
}

static int read_clients(struct loader *l, const struct item *it, const config_setting_t *s)
{
    static const char *const names[] = {"id", "amqp_user", "department", NULL};
    static const char like[] = "( { id = \"7\"; amqp_user = \"reseller-a\"; department = 12; } )";
    struct config_server *sv = &l->cfg->server;
    if (!s)
        return fail(l, config_lookup(&l->lc, "server"), it->path,
                    "required setting is missing: list at least one client, like %s", like);
    int n = list_check(l, it, s, CONFIG_MAX_CLIENTS, like);
    if (n < 0)
        return -1;
    sv->clients = calloc((size_t)n + 1, sizeof(*sv->clients));
    if (!sv->clients)
        return fail(l, s, it->path, "out of memory");
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
            return fail(
                l, config_setting_get_member(e, "id"), epath,
                "id may hold only letters, digits, '_' and '-' (it is part of queue names)");
        for (int j = 0; j < i; j++) {
            const struct config_server_client *o = &sv->clients[j];
            if (strcmp(o->id, c->id) == 0)
                return fail(l, e, epath, "client id \"%s\" is already used by %s[%d]", c->id,
                            it->path, j);
            if (strcmp(o->amqp_user, c->amqp_user) == 0)
                return fail(l, e, epath, "amqp_user \"%s\" is already used by %s[%d]",
                            showable(c->amqp_user) ? c->amqp_user : "?", it->path, j);
            if (o->department == c->department)
                return fail(l, e, epath,
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
        return fail(l, where, group, "no password: set %s.password_file", group);
    if (sources > 1)
        return fail(l, where, group,
                    "more than one password: set only one of %s.password, %s.password_file%s",
                    group, group, uri_password ? " and a password in amqp.uri" : "");
    if (uri_password && *uri_password) {
        *password = *uri_password;
        *uri_password = NULL;
    } else if (file[0]) {
        snprintf(path, sizeof(path), "%s.password_file", group);
        return read_password_file(l, where, path, file, password);
    }
    return 0;
}

static int check_across(struct loader *l)
{
    struct config *cfg = l->cfg;

    if (!cfg->client.enabled && !cfg->server.enabled)
        return fail(l, NULL, NULL,
                    "neither client: nor server: is present: configure at least one role");

    /* With both roles in one process, this file's own user is the server
     * side's. Without a server: section, nothing this client should trust
     * publishes as its own user: the setting would make it apply states it
     * published itself, and is most likely amqp.uri's user copied by
     * mistake, which would dead-letter every state of the real server. */
    if (cfg->client.enabled && !cfg->server.enabled &&
        strcmp(cfg->client.server_user, cfg->amqp.user) == 0) {
        const char *su = cfg->client.server_user;
        return fail(l, config_lookup(&l->lc, "client.server_user"), "client.server_user",
                    "\"%s\" is this file's own AMQP user (amqp.uri) and the file has no server: "
                    "section: set the AMQP user the server side logs in as",
                    showable(su) ? su : "?");
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
        return fail(l, config_lookup(&l->lc, set), set, "is set but %s is not: set both or neither",
                    unset);
    }

    /* A connect timeout longer than the whole call is meaningless; the
     * default follows a short timeout instead of refusing it. */
    const config_setting_t *ct = config_lookup(&l->lc, "billmanager.connect_timeout");
    if (cfg->billmanager.connect_timeout > cfg->billmanager.timeout) {
        if (!ct)
            cfg->billmanager.connect_timeout = cfg->billmanager.timeout;
        else
            return fail(l, ct, "billmanager.connect_timeout",
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
            return fail(l, e, path,
                        "department %ld is also mapped by client.departments[%zu]: a department "
                        "may be used by one mapping only",
                        cfg->server.clients[j].department, i);
        }
    }
    return 0;
}

/* ---- the exported functions ------------------------------------------ */

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
        fail(&l, NULL, NULL, "no configuration file given");
        return NULL;
    }
    l.cfg = calloc(1, sizeof(*l.cfg));
    if (!l.cfg) {
        fail(&l, NULL, NULL, "out of memory");
        return NULL;
    }
    l.cfg->file = strdup(path);
    if (!l.cfg->file) {
        fail(&l, NULL, NULL, "out of memory");
        goto free_cfg;
    }
    if (parse_file(&l) < 0)
        goto free_cfg;
    l.dir = config_dir_of(path);
    if (!l.dir) {
        fail(&l, NULL, NULL, "cannot resolve its directory: %s", strerror(errno));
        goto free_cfg;
    }
    if (walk_unknown(&l, config_root_setting(&l.lc), "") < 0 || load_items(&l) < 0 ||
        check_across(&l) < 0)
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
    for (size_t i = 0; i < N_ITEMS; i++) {
        const struct item *it = &config_items[i];
        switch (it->type) {
        case IT_STRING:
        case IT_NAME:
        case IT_ID:
        case IT_PATH:
        case IT_FILE:
        case IT_SECRET:
        case IT_ENUM: {
            char **field = field_str(cfg, it->offset);
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
