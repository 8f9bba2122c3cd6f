/*
 * config_table.c - the one table of settings (config_int.h): for every
 * setting of the file its path, its type, its default, its bounds and
 * where it goes in struct config, with the two look-ups by path.
 *
 * The table is a user interface: the example files and remotetask.conf(5)
 * document its paths, defaults and bounds, and tests/dist/test_deb.sh
 * reads it (and the numeric macros of the headers this file includes) to
 * check the manual page against it.
 */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "config_int.h"
#include "store_journal.h"

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
const struct item config_items[] = {
    STR("instance", IT_NAME, 0, "remotetask", 1, 64, instance, NULL),
    STR("state_dir", IT_PATH, 0, "/var/lib/remotetask", 1, CONFIG_STRING_MAX, state_dir, NULL),
    STR("control_socket", IT_PATH, 0, "/run/remotetask/remotetaskd.sock", 1, CONFIG_STRING_MAX,
        control_socket, config_check_socket_path),
    ENUM("log_level", IT_LOG_LEVEL, "info", "error|warning|info|debug", log_level),

    GROUP("amqp", ITEM_REQUIRED, NO_FIELD),
    /* A string or a list of strings, read whole by config_read_amqp_uri. */
    LIST("amqp.uri", ITEM_REQUIRED, config_read_amqp_uri),
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
        config_check_http_url),
    STR("billmanager.login", IT_STRING, ITEM_REQUIRED, NULL, 1, 256, billmanager.login, NULL),
    STR("billmanager.password", IT_SECRET, 0, NULL, 1, CONFIG_PASSWORD_MAX, billmanager.password,
        NULL),
    STR("billmanager.password_file", IT_PATH, 0, "", 0, CONFIG_STRING_MAX,
        billmanager.password_file, NULL),
    INT("billmanager.timeout", IT_INT, 30, 1, 3600, billmanager.timeout),
    /* Its upper bound is billmanager.timeout, checked across settings
     * (config_rules.c). */
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
    STR("client.server_user", IT_STRING, 0, "", 0, 255, client.server_user,
        config_check_server_user),
    LIST("client.departments", ITEM_REQUIRED, config_read_departments),
    LIST("client.performers", 0, config_read_performers),

    GROUP("server", 0, F(server.enabled)),
    INT("server.sync_interval", IT_INT, 300, 1, 86400, server.sync_interval),
    LIST("server.clients", ITEM_REQUIRED, config_read_clients),

    GROUP("metrics", 0, NO_FIELD),
    STR("metrics.listen", IT_STRING, 0, "", 0, 300, metrics.listen, config_check_listen),

    /* The bounds are the store's (store_journal.h). */
    GROUP("journal", 0, NO_FIELD),
    INT("journal.entries", IT_INT, STORE_JOURNAL_ENTRIES_DEFAULT, 0, STORE_JOURNAL_ENTRIES_MAX,
        journal.entries),
    INT("journal.days", IT_INT, STORE_JOURNAL_DAYS_DEFAULT, 1, STORE_JOURNAL_DAYS_MAX,
        journal.days),
};

const size_t config_n_items = sizeof(config_items) / sizeof(config_items[0]);

/* ---- look-ups -------------------------------------------------------- */

const struct item *config_item_find(const char *path)
{
    for (size_t i = 0; i < config_n_items; i++)
        if (strcmp(config_items[i].path, path) == 0)
            return &config_items[i];
    return NULL;
}

/* The group that holds a path ("amqp.tls" for "amqp.tls.ca_file"), or
 * NULL for a top-level setting. */
const struct item *config_item_parent(const struct item *it)
{
    char parent[CONFIG_PATH_MAX];
    const char *dot = strrchr(it->path, '.');
    if (!dot)
        return NULL;
    snprintf(parent, sizeof(parent), "%.*s", (int)(dot - it->path), it->path);
    return config_item_find(parent);
}
