/*
 * config.h - the configuration file, loaded into one validated struct.
 *
 * The file is libconfig syntax; its setting names are a user interface
 * (see config/client.conf.example and config/server.conf.example) and are
 * listed, with their types, defaults and bounds, in one table in
 * config_table.c. Loading either yields a complete struct config in which
 * every value has been checked, or an error that names the file, the line
 * and the setting.
 * Nothing is half-applied: the caller keeps its old struct until the new
 * one loaded (SIGHUP).
 */
#ifndef RT_CONFIG_H
#define RT_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "log.h"

/* Caps: a configuration is written by an operator, but still bounded. */
#define CONFIG_MAX_DEPARTMENTS 256
#define CONFIG_MAX_PERFORMERS  1024
#define CONFIG_MAX_CLIENTS     256
#define CONFIG_ERR_MAX         512
/* Entries of amqp.uri: the nodes of one RabbitMQ cluster (BROKER_MAX_NODES). */
#define CONFIG_MAX_AMQP_NODES 16

struct broker_node; /* common/broker.h */

struct config_tls {
    char *ca_file;   /* "" = the system's CA store */
    char *cert_file; /* "" = no client certificate */
    char *key_file;
    bool verify_peer;
    bool verify_hostname;
};

/* One node of the broker: one entry of amqp.uri. */
struct config_amqp_node {
    char *uri_redacted; /* the entry with any password replaced by "***" */
    char *host;
    int port;
    bool ssl; /* amqps:// */
};

/* amqp.uri is one URI or a list of them, one per node of a RabbitMQ
 * cluster; a single string is a list of one. Every entry names the same
 * user and virtual host and the same scheme, so uri, uri_redacted, host,
 * port, vhost, user and ssl below describe the first entry and stay right
 * for code that knows one node only. */
struct config_amqp {
    char *uri;          /* the first entry as written, may hold a password: never log it */
    char *uri_redacted; /* the first entry with any password replaced by "***" */
    /* Every entry, redacted, joined by ", ": what the file configures, for
     * a line about the configuration as a whole. A line about a connection
     * names the node in use (nodes[i].uri_redacted) instead. */
    char *uris_redacted;
    /* The first entry, parsed. */
    char *host;
    int port;
    char *vhost;
    char *user;
    bool ssl;                       /* amqps:// */
    struct config_amqp_node *nodes; /* every entry, in the order written */
    size_t n_nodes;                 /* 1..CONFIG_MAX_AMQP_NODES */
    /* The same nodes as the broker takes them (broker_opts.nodes), filled by
     * config_load so that they live as long as the config; their strings
     * are those of nodes. */
    struct broker_node *broker_nodes;
    char *password;      /* from password, password_file or the uri; never log */
    char *password_file; /* resolved path, "" when the password came another way */
    int heartbeat;       /* seconds, 0..3600 (0 = off) */
    int prefetch;        /* 1..65535 */
    char *queue_type;    /* "classic" or "quorum" */
    int connect_timeout; /* seconds */
    struct config_tls tls;
};

/* The BILLmanager API settings that BILLMANAGER-API.md marks [chosen] are
 * settings here, so that an operator can adapt to a real installation. */
struct config_billmgr_api {
    char *auth;             /* "authinfo" (every call) or "session" (func=auth) */
    int page_size;          /* p_cnt when listing */
    char *func_task;        /* "task" */
    char *func_task_edit;   /* "task.edit" */
    char *func_department;  /* "department" */
    char *func_user;        /* "user" */
    char *field_name;       /* "name" */
    char *field_note;       /* "note" */
    char *field_type;       /* "type" */
    char *field_deadline;   /* "deadline" */
    char *field_status;     /* "status" */
    char *field_performer;  /* "performer" */
    char *field_department; /* "department" */
    char *field_updated;    /* "updated" */
    char *task_type;        /* type given to tasks created on the target, "" = as sent */
};

struct config_billmgr {
    char *url;
    char *login;
    char *password;      /* from password or password_file; never log */
    char *password_file; /* resolved path, "" when password was given inline */
    int timeout;         /* seconds per call, 1..3600 */
    int connect_timeout; /* seconds, 1..timeout */
    int max_inflight;    /* 1..256 */
    size_t max_response; /* bytes, cap on one answer */
    char *ca_file;
    bool verify_tls;
    struct config_billmgr_api api;
};

struct config_department_map {
    long local;
    long remote;
};

struct config_performer_map {
    long remote;
    long local;
};

struct config_client {
    bool enabled; /* a client: section is present */
    char *id;
    int poll_interval; /* seconds */
    /* The AMQP user of the server side, the only sender whose state
     * messages are applied; required, never "". */
    char *server_user;
    struct config_department_map *departments;
    size_t n_departments;
    struct config_performer_map *performers;
    size_t n_performers;
};

struct config_server_client {
    char *id;
    char *amqp_user;
    long department;
};

struct config_server {
    bool enabled;      /* a server: section is present */
    int sync_interval; /* seconds */
    struct config_server_client *clients;
    size_t n_clients;
};

struct config_metrics {
    bool enabled; /* metrics.listen is set and not "" */
    char *listen; /* "host:port" as written */
    char *host;
    int port;
};

/* The journal of each task's journey (common/store_journal.h). */
struct config_journal {
    int entries; /* rows kept per task, 0..10000; 0 = no journal */
    int days;    /* rows older than this go, 1..3650 */
};

struct config {
    char *file; /* the path it was loaded from */
    char *instance;
    char *state_dir;
    char *control_socket;
    enum log_level log_level;
    struct config_amqp amqp;
    struct config_billmgr billmanager;
    struct config_client client;
    struct config_server server;
    struct config_metrics metrics;
    struct config_journal journal;
};

/* Loads and validates path. On success returns a new struct config (free it
 * with config_free) and leaves err untouched. On failure returns NULL and
 * writes into err (errlen bytes, NUL-terminated) one line such as
 *   "/etc/remotetask/a.conf:12: amqp.prefetch: must be between 1 and 65535"
 * naming the file, the line (when known) and the setting; err never holds
 * a password. Password files readable or writable by group or others are
 * refused. A department used by two mappings is refused. At least one of
 * client: and server: must be present. amqp.uri is a string or a list of
 * 1 to CONFIG_MAX_AMQP_NODES strings with one user, one virtual host, one
 * scheme and no node twice; a list entry may not hold a password (the
 * password comes once, from amqp.password_file or amqp.password). With
 * client:, client.server_user is required, and it may be this file's own
 * AMQP user only when the file has a server: section too (one process
 * with both roles). Relative paths in the file
 * (state_dir, control_socket, password files, TLS and CA files) are taken
 * relative to the directory that holds the file. The file is one file:
 * @include is refused, and so are unknown settings (they are typos). */
struct config *config_load(const char *path, char *err, size_t errlen);

/* Frees a config; accepts NULL and half-built ones. Password memory is
 * wiped before it is freed. */
void config_free(struct config *cfg);

/* The client entry of the server section whose id is id, or NULL. */
const struct config_server_client *config_server_client_find(const struct config *cfg,
                                                             const char *id);

#endif
