/*
 * config_file.c - the configuration file as text, and the files its
 * settings name (config_int.h).
 *
 * Before libconfig sees the text, a prescan refuses what libconfig would
 * take wrongly (integers it would wrap, @include) and dates the entries of
 * amqp.uri's list; after the parse, every setting the table does not know
 * is refused. A file a setting names is opened without blocking and must
 * be a regular file; a password file must also be private to its owner.
 * Everything read is capped, and text that may hold a password is wiped.
 */
#include <errno.h>
#include <fcntl.h>
#include <libconfig.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config_int.h"

/* ---- files ----------------------------------------------------------- */

/* Opens path without blocking (a FIFO must not hang the load) and checks
 * it is a regular file. Returns the descriptor, or -1 after writing the
 * error about setting s. */
int config_open_regular(struct loader *l, const config_setting_t *s, const char *setting,
                        const char *path, struct stat *st)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0)
        return config_fail(l, s, setting, "cannot open \"%s\": %s", path, strerror(errno));
    if (fstat(fd, st) < 0) {
        int e = errno;
        close(fd);
        return config_fail(l, s, setting, "cannot stat \"%s\": %s", path, strerror(e));
    }
    if (!S_ISREG(st->st_mode)) {
        close(fd);
        return config_fail(l, s, setting, "\"%s\" is not a regular file", path);
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
int config_read_password_file(struct loader *l, const config_setting_t *s, const char *setting,
                              const char *path, char **out)
{
    char buf[CONFIG_PASSWORD_MAX + 2];
    struct stat st;
    int rc = -1;
    int fd = config_open_regular(l, s, setting, path, &st);
    if (fd < 0)
        return -1;
    if (st.st_mode & (S_IRGRP | S_IROTH)) {
        config_fail(l, s, setting,
                    "\"%s\" is readable by group or others (mode %04o): chmod 600 it", path,
                    (unsigned)(st.st_mode & 07777));
        goto close_fd;
    }
    if (st.st_mode & (S_IWGRP | S_IWOTH)) {
        config_fail(l, s, setting,
                    "\"%s\" is writable by group or others (mode %04o): chmod 600 it", path,
                    (unsigned)(st.st_mode & 07777));
        goto close_fd;
    }
    ssize_t n = read_capped(fd, buf, CONFIG_PASSWORD_MAX + 1);
    if (n < 0) {
        config_fail(l, s, setting, "cannot read \"%s\": %s", path, strerror(errno));
        goto close_fd;
    }
    size_t len = strcspn(buf, "\n");
    if (len < (size_t)n && buf[len] == '\0') {
        config_fail(l, s, setting, "\"%s\" holds a NUL byte", path);
        goto wipe_buf;
    }
    if (len > CONFIG_PASSWORD_MAX) {
        config_fail(l, s, setting, "the first line of \"%s\" is longer than %d bytes", path,
                    CONFIG_PASSWORD_MAX);
        goto wipe_buf;
    }
    while (len > 0 && buf[len - 1] == '\r')
        len--;
    if (len == 0) {
        config_fail(l, s, setting, "\"%s\" is empty: its first line must hold the password", path);
        goto wipe_buf;
    }
    *out = strndup(buf, len);
    if (!*out) {
        config_fail(l, s, setting, "out of memory");
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

/* The prescan's place in the text. i may end past len after an
 * unterminated string or comment: every loop stops at len. */
struct prescan {
    const char *text;
    size_t len;
    size_t i;
    int line;
};

/* Skips a string from its opening quote to past its closing one. */
static void prescan_string(struct prescan *p)
{
    const char *text = p->text;
    size_t len = p->len, i = p->i;
    for (i++; i < len && text[i] != '"'; i++) {
        if (text[i] == '\\' && i + 1 < len)
            i++;
        if (text[i] == '\n')
            p->line++;
    }
    p->i = i + 1;
}

/* Skips a comment: "#" or "//" up to the end of the line, or a block from
 * its opening to past its closing. */
static void prescan_comment(struct prescan *p)
{
    const char *text = p->text;
    size_t len = p->len, i = p->i;
    if (text[i] == '#' || text[i + 1] == '/') {
        while (i < len && text[i] != '\n')
            i++;
        p->i = i;
        return;
    }
    for (i += 2; i < len && !(text[i] == '*' && i + 1 < len && text[i + 1] == '/'); i++)
        if (text[i] == '\n')
            p->line++;
    p->i = i + 2;
}

/* Reads the digits of an integer (hex after "0x") from p->i into *v,
 * which stops at 0xffffffff: *big says it went past. */
static void prescan_digits(struct prescan *p, int hex, unsigned long long *v, int *big)
{
    const char *text = p->text;
    size_t len = p->len, i = p->i;
    *v = 0;
    *big = 0;
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
        *v = *v * (hex ? 16u : 10u) + (unsigned)dv;
        if (*v > 0xffffffffULL)
            *big = 1, *v = 0xffffffffULL;
    }
    p->i = i;
}

/* Reads a number that starts at p->i; refuses an integer that libconfig
 * would wrap. name is the setting it belongs to, for the error. */
static int prescan_number(struct loader *l, struct prescan *p, const char *name, size_t name_len)
{
    const char *text = p->text;
    size_t len = p->len, start = p->i;
    char next = start + 1 < len ? text[start + 1] : '\0';
    int hex = text[start] == '0' && (next == 'x' || next == 'X');
    unsigned long long v;
    int big;

    if (hex)
        p->i += 2;
    prescan_digits(p, hex, &v, &big);
    size_t i = p->i;
    if (!hex && i < len && (text[i] == '.' || text[i] == 'e' || text[i] == 'E')) {
        /* A float: its digits are not an integer. */
        while (i < len && ((text[i] >= '0' && text[i] <= '9') || text[i] == '.' || text[i] == 'e' ||
                           text[i] == 'E' || text[i] == '+' || text[i] == '-'))
            i++;
        p->i = i;
        return 0;
    }
    if (i < len && text[i] == 'L') {
        p->i = i + 1;
        return 0;
    }
    /* The number itself is not shown: an unquoted numeric password must
     * not reach the error. */
    int negative = start > 0 && text[start - 1] == '-';
    unsigned long long limit = negative ? 2147483648ULL : 2147483647ULL;
    if (big || v > limit)
        return config_fail_line(l, p->line,
                                "%.*s: the integer does not fit in 32 bits (at most %s%llu); "
                                "libconfig would silently change it",
                                (int)(name_len > 64 ? 64 : name_len), name, negative ? "-" : "",
                                limit);
    return 0;
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
    struct prescan p = {.text = text, .len = len, .i = 0, .line = 1};
    int line_start = 1;
    const char *name = "?"; /* the last name seen: the setting a number belongs to */
    size_t name_len = 1;
    struct uri_scan uri = {0};

    while (p.i < len) {
        char c = text[p.i];
        char next = p.i + 1 < len ? text[p.i + 1] : '\0';
        if (c == '\n') {
            p.line++;
            line_start = 1;
            p.i++;
            continue;
        }
        if (c == ' ' || c == '\t' || c == '\r') {
            p.i++;
            continue;
        }
        if (line_start && c == '@' && strncmp(text + p.i, "@include", 8) == 0)
            return config_fail_line(
                l, p.line, "@include is not supported: keep the configuration in one file");
        line_start = 0;
        if (c == '"') {
            uri_scan_token(l, &uri, URI_TOK_VALUE, p.line);
            prescan_string(&p);
        } else if (c == '#' || (c == '/' && (next == '/' || next == '*'))) {
            prescan_comment(&p);
        } else if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '*') {
            name = text + p.i;
            while (p.i < len && (config_is_name_char(text[p.i]) || text[p.i] == '*'))
                p.i++;
            name_len = (size_t)(text + p.i - name);
            uri_scan_token(l, &uri,
                           name_len == 3 && strncmp(name, "uri", 3) == 0 ? URI_TOK_URI
                                                                         : URI_TOK_VALUE,
                           p.line);
        } else if (c >= '0' && c <= '9') {
            uri_scan_token(l, &uri, URI_TOK_VALUE, p.line);
            if (prescan_number(l, &p, name, name_len) < 0)
                return -1;
        } else {
            uri_scan_token(l, &uri, (unsigned char)c, p.line);
            p.i++;
        }
    }
    return 0;
}

/* Reads the file (a regular file, at most CONFIG_FILE_MAX bytes) and parses
 * it. The text is wiped afterwards since it may hold passwords. */
int config_parse_file(struct loader *l)
{
    struct stat st;
    char *text;
    int rc = -1;
    int fd = open(l->file, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0)
        return config_fail(l, NULL, NULL, "cannot open: %s", strerror(errno));
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return config_fail(l, NULL, NULL, "not a regular file");
    }
    if (st.st_size > CONFIG_FILE_MAX) {
        close(fd);
        return config_fail(l, NULL, NULL, "larger than %d bytes", CONFIG_FILE_MAX);
    }
    text = malloc(CONFIG_FILE_MAX + 1);
    if (!text) {
        close(fd);
        return config_fail(l, NULL, NULL, "out of memory");
    }
    ssize_t n = read_capped(fd, text, CONFIG_FILE_MAX + 1);
    int read_errno = errno;
    close(fd);
    if (n < 0) {
        config_fail(l, NULL, NULL, "cannot read: %s", strerror(read_errno));
        goto free_text;
    }
    if (n > CONFIG_FILE_MAX) {
        config_fail(l, NULL, NULL, "larger than %d bytes", CONFIG_FILE_MAX);
        goto free_text;
    }
    if (memchr(text, '\0', (size_t)n)) {
        config_fail(l, NULL, NULL, "holds a NUL byte: not a text file");
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
int config_walk_unknown(struct loader *l, const config_setting_t *group, const char *prefix)
{
    int n = config_setting_length(group);
    for (int i = 0; i < n; i++) {
        const config_setting_t *s = config_setting_get_elem(group, (unsigned)i);
        const char *name = config_setting_name(s);
        char path[CONFIG_PATH_MAX];
        snprintf(path, sizeof(path), "%s%s%s", prefix, *prefix ? "." : "", name ? name : "?");
        const struct item *it = config_item_find(path);
        if (!it)
            return config_fail(l, s, path, "unknown setting");
        if (it->type != IT_GROUP)
            continue;
        if (config_setting_type(s) != CONFIG_TYPE_GROUP)
            return config_fail(l, s, path, "must be a group, like %s: { ... };", name);
        if (config_walk_unknown(l, s, path) < 0)
            return -1;
    }
    return 0;
}
