/*
 * config_int.h - what the files of the configuration loader share; private
 * to config/config*.c.
 *
 * The loader is six files of one concern each:
 *   config.c        the entry points (config_load, config_free, the
 *                   server client lookup), the state of one load and how
 *                   an error is written
 *   config_table.c  the one table of settings: path, type, default,
 *                   bounds and place in struct config of each
 *   config_file.c   the file as text: the prescan (huge integers,
 *                   @include, the lines of amqp.uri's entries), parsing,
 *                   unknown settings; and the files settings name
 *                   (regular files, password files)
 *   config_values.c the table walked: each value read, defaulted and
 *                   checked on its own, and the checks of single settings
 *                   (control_socket, billmanager.url, metrics.listen,
 *                   client.server_user)
 *   config_amqp.c   amqp.uri: one URI or the list of a cluster's nodes,
 *                   its entries checked against each other
 *   config_rules.c  the mapping lists (client.departments,
 *                   client.performers, server.clients) with their
 *                   no-duplicate rules, and the rules across settings
 *                   (roles, users, password sources, TLS pairs, timeouts)
 *
 * The contract callers see is config.h. This header holds the state of one
 * load (struct loader), the table's vocabulary and the functions one file
 * gives the others. The rules all of them keep: every check that refuses
 * writes its error through config_fail() (or its variants) and returns -1,
 * so that the first error found is the one reported; an error never shows
 * a secret; a string the loader stores is owned by l->cfg from then on,
 * so that config_free() frees it whatever step failed after it. Secrets
 * are wiped before they are freed. Like config_load, nothing here keeps
 * state outside the loader.
 */
#ifndef RT_CONFIG_INT_H
#define RT_CONFIG_INT_H

#include <libconfig.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

#include "config.h"

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

/* The char * field of cfg at offset (an item's offset of a string type). */
static inline char **config_field_str(struct config *cfg, size_t offset)
{
    return (char **)(void *)((char *)cfg + offset);
}

/* ---- config.c: errors and text --------------------------------------- */

/* Writes "FILE:LINE: SETTING: message" into the loader's err. where gives
 * the file and line (NULL, or a setting without a line, leaves the line
 * out); setting may be NULL for errors about the whole file. Returns -1 so
 * that callers can `return config_fail(...)`. */
int config_fail(struct loader *l, const config_setting_t *where, const char *setting,
                const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* Like config_fail, on a line known better than libconfig knows it
 * (line > 0; otherwise where's line). */
int config_fail_at(struct loader *l, const config_setting_t *where, int line, const char *setting,
                   const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* Like config_fail, for errors found in the text before libconfig parsed
 * it: "FILE:LINE: message". */
int config_fail_line(struct loader *l, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* True when s can be echoed in an error: short and without control
 * characters, so that an error line cannot be forged or flooded. */
int config_showable(const char *s);

/* A character of a name: [A-Za-z0-9._-]. */
int config_is_name_char(int c);

/* True when s holds a control character. */
int config_has_control(const char *s);

/* ---- config_table.c: the table --------------------------------------- */

/* Every setting of the file, in the order of the checks. */
extern const struct item config_items[];
extern const size_t config_n_items;

/* The item of a path ("amqp.tls.ca_file"), or NULL when the table does not
 * know it. */
const struct item *config_item_find(const char *path);

/* The group that holds a path ("amqp.tls" for "amqp.tls.ca_file"), or
 * NULL for a top-level setting. */
const struct item *config_item_parent(const struct item *it);

/* ---- config_file.c: the text and the files it names ------------------ */

/* Reads l->file (a regular file, at most CONFIG_FILE_MAX bytes), prescans
 * and parses it into l->lc (l->lc_ready set once l->lc needs
 * config_destroy). The text is wiped afterwards since it may hold
 * passwords. Returns 0, or -1 with the error written. */
int config_parse_file(struct loader *l);

/* Refuses every setting of group (whose path is prefix, "" for the root)
 * the table does not know. Returns 0 or -1. */
int config_walk_unknown(struct loader *l, const config_setting_t *group, const char *prefix);

/* Opens path without blocking (a FIFO must not hang the load) and checks
 * it is a regular file (st filled). Returns the descriptor, or -1 after
 * writing the error about setting s. */
int config_open_regular(struct loader *l, const config_setting_t *s, const char *setting,
                        const char *path, struct stat *st);

/* Reads a password file: a regular file that neither group nor others may
 * read or write, whose first line, without its line ending, is the
 * password. On success *out is a new string the caller owns (wipe it). */
int config_read_password_file(struct loader *l, const config_setting_t *s, const char *setting,
                              const char *path, char **out);

/* ---- config_values.c: the table walked ------------------------------- */

/* Reads every item of the table, in order, into l->cfg. Returns 0 or -1. */
int config_load_items(struct loader *l);

/* The checks of single settings that the table names. */
int config_check_socket_path(struct loader *l, const struct item *it, const config_setting_t *s);
int config_check_server_user(struct loader *l, const struct item *it, const config_setting_t *s);
int config_check_http_url(struct loader *l, const struct item *it, const config_setting_t *s);
int config_check_listen(struct loader *l, const struct item *it, const config_setting_t *s);

/* ---- config_amqp.c: amqp.uri ----------------------------------------- */

/* The table's reader of amqp.uri: the nodes into l->cfg->amqp, a single
 * URI's password into l->uri_password. */
int config_read_amqp_uri(struct loader *l, const struct item *it, const config_setting_t *s);

/* The authority of a URI: what follows "://" up to the path. */
void config_uri_authority(const char *uri, const char **start, size_t *len);

/* ---- config_rules.c: lists and rules across settings ----------------- */

/* The table's readers of the mapping lists. */
int config_read_departments(struct loader *l, const struct item *it, const config_setting_t *s);
int config_read_performers(struct loader *l, const struct item *it, const config_setting_t *s);
int config_read_clients(struct loader *l, const struct item *it, const config_setting_t *s);

/* The checks that involve more than one setting, once every item is read;
 * sets the two password fields from their one source each. Returns 0 or
 * -1. */
int config_check_across(struct loader *l);

#endif
