/*
 * remotetaskctl --command broker-setup: the rabbitmqctl commands that give
 * every AMQP user of this configuration exactly what its role needs.
 *
 * Nothing is run and nothing secret is printed: each add_user reads the
 * user's password from its standard input when the operator runs it. The
 * permissions follow the wire of topology v2 (common/broker.h):
 *
 *   the server's user   configure, write and read on the shared exchanges
 *                       and on every name of its clients (it declares the
 *                       whole topology, consumes the forward queues,
 *                       publishes states, retries and dead letters);
 *   a client C's user   configure nothing; write only to remotetask.forward
 *                       (its tasks, its checkevent requests) and to its own
 *                       remotetask.retry.C and remotetask.dead.C (its
 *                       reverse retries and dead letters); read only its
 *                       remotetask.reverse.C and remotetask.dead.C.reverse.
 *
 * So a client's user can neither read another client's queues nor bind a
 * queue of its own to the shared exchanges (binding needs read on the
 * exchange), and RabbitMQ checks the user_id of every message against the
 * login, so no user can publish with another's identity. A client that
 * may not declare finds the topology its server declared (broker.h,
 * broker_declare). Topic permissions do not apply: every exchange of
 * remotetask is direct.
 */
#include <stdio.h>
#include <string.h>

#include "broker.h"
#include "config.h"
#include "ctl.h"
#include "log.h"

/* Prints s between single quotes for a POSIX shell. */
static void setup_quoted(const char *s)
{
    putchar('\'');
    for (; *s; s++) {
        if (*s == '\'')
            fputs("'\\''", stdout);
        else
            putchar(*s);
    }
    putchar('\'');
}

static void setup_user(const char *vhost, const char *user, const char *configure,
                       const char *write, const char *read)
{
    fputs("rabbitmqctl add_user ", stdout);
    setup_quoted(user);
    fputs("   # reads the password from standard input\n", stdout);
    fputs("rabbitmqctl set_permissions -p ", stdout);
    setup_quoted(vhost);
    putchar(' ');
    setup_quoted(user);
    putchar(' ');
    setup_quoted(configure);
    putchar(' ');
    setup_quoted(write);
    putchar(' ');
    setup_quoted(read);
    putchar('\n');
}

/* The server's permission: the shared exchanges, and every name that
 * belongs to one of its clients. Client ids hold only [A-Za-z0-9_-], so
 * they need no escaping in a regular expression. */
static int setup_server_regex(const struct config *cfg, char *buf, size_t len)
{
    size_t used = 0;
    int n = snprintf(buf, len, "^remotetask\\.(forward|reverse)$|^remotetask\\.(forward|reverse|"
                               "retry|dead)\\.(");
    if (n < 0 || (size_t)n >= len)
        return -1;
    used = (size_t)n;
    for (size_t i = 0; i < cfg->server.n_clients; i++) {
        n = snprintf(buf + used, len - used, "%s%s", i ? "|" : "", cfg->server.clients[i].id);
        if (n < 0 || (size_t)n >= len - used)
            return -1;
        used += (size_t)n;
    }
    n = snprintf(buf + used, len - used, ")(\\..*)?$");
    return n < 0 || (size_t)n >= len - used ? -1 : 0;
}

static void setup_client(const char *vhost, const char *client, const char *user)
{
    char write[BROKER_NAME_MAX * 2], read[BROKER_NAME_MAX * 2];
    snprintf(write, sizeof(write), "^remotetask\\.(forward|retry\\.%s|dead\\.%s)$", client, client);
    snprintf(read, sizeof(read), "^remotetask\\.(reverse\\.%s|dead\\.%s\\.reverse)$", client,
             client);
    printf("# client \"%s\": user \"%s\" publishes its tasks and its own retries and dead "
           "letters,\n# reads its reverse queue and its dead letters, declares nothing\n",
           client, user);
    setup_user(vhost, user, "^$", write, read);
}

int ctl_broker_setup(const struct ctl_args *args)
{
    char err[CONFIG_ERR_MAX];
    char server_re[CONFIG_MAX_CLIENTS * (BROKER_CLIENT_MAX + 1) + 256];

    log_init("remotetaskctl", LOG_LEVEL_ERROR, 0);
    struct config *cfg = config_load(args->config, err, sizeof(err));
    if (!cfg) {
        fprintf(stderr, "remotetaskctl: %s\n", err);
        return 1;
    }
    const char *vhost = cfg->amqp.vhost;
    printf("# RabbitMQ users and permissions for remotetask instance \"%s\" (%s)\n",
           cfg->instance, cfg->file);
    printf("# Run on one node of the broker (users and permissions are cluster-wide). Each\n"
           "# add_user reads the password from standard input: this text holds no secret.\n"
           "# Topic permissions do not apply: every remotetask exchange is direct.\n");
    if (strcmp(vhost, "/") != 0) {
        fputs("rabbitmqctl add_vhost ", stdout);
        setup_quoted(vhost);
        putchar('\n');
    }
    if (cfg->server.enabled) {
        if (setup_server_regex(cfg, server_re, sizeof(server_re)) < 0) {
            fprintf(stderr, "remotetaskctl: too many clients for one permission\n");
            config_free(cfg);
            return 1;
        }
        printf("# the server side: user \"%s\" declares and uses the topology of its %zu "
               "client%s\n",
               cfg->amqp.user, cfg->server.n_clients, cfg->server.n_clients == 1 ? "" : "s");
        setup_user(vhost, cfg->amqp.user, server_re, server_re, server_re);
        for (size_t i = 0; i < cfg->server.n_clients; i++) {
            const struct config_server_client *c = &cfg->server.clients[i];
            if (strcmp(c->amqp_user, cfg->amqp.user) == 0) {
                printf("# client \"%s\" shares the server's user: nothing more for it\n", c->id);
                continue;
            }
            setup_client(vhost, c->id, c->amqp_user);
        }
    }
    if (cfg->client.enabled) {
        if (cfg->server.enabled && config_server_client_find(cfg, cfg->client.id)) {
            printf("# this file's client \"%s\" is one of its server's clients: done above\n",
                   cfg->client.id);
        } else if (cfg->server.enabled) {
            printf("# this file's own client \"%s\" runs as the server's user: done above\n",
                   cfg->client.id);
        } else {
            setup_client(vhost, cfg->client.id, cfg->amqp.user);
            printf("# the server side's user \"%s\" gets its permissions from the server's "
                   "configuration (broker-setup there)\n",
                   cfg->client.server_user);
        }
    }
    config_free(cfg);
    fflush(stdout);
    return 0;
}
