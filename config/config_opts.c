#include "config_opts.h"

#include <stdio.h>
#include <string.h>

void config_opts_billmgr(const struct config *cfg, struct billmgr_opts *out)
{
    const struct config_billmgr *b = &cfg->billmanager;
    memset(out, 0, sizeof(*out));
    out->url = b->url;
    out->login = b->login;
    out->password = b->password;
    out->auth_session = strcmp(b->api.auth, "session") == 0;
    out->timeout_ms = (long)b->timeout * 1000;
    out->connect_timeout_ms = (long)b->connect_timeout * 1000;
    out->max_inflight = b->max_inflight;
    out->max_response = b->max_response;
    out->ca_file = b->ca_file;
    out->verify_tls = b->verify_tls;
    out->page_size = b->api.page_size;
}

void config_opts_broker(const struct config *cfg, struct broker_opts *out, char *name_buf,
                        size_t name_len)
{
    const struct config_amqp *a = &cfg->amqp;
    memset(out, 0, sizeof(*out));
    snprintf(name_buf, name_len, "remotetask %s", cfg->instance);
    out->host = a->host;
    out->port = a->port;
    out->vhost = a->vhost;
    out->user = a->user;
    out->password = a->password;
    out->ssl = a->ssl;
    /* Every node of amqp.uri; host, port and ssl above stay the first
     * node's for a broker that knows one node only. */
    out->nodes = a->broker_nodes;
    out->n_nodes = a->n_nodes;
    out->ca_file = a->tls.ca_file;
    out->cert_file = a->tls.cert_file;
    out->key_file = a->tls.key_file;
    out->verify_peer = a->tls.verify_peer;
    out->verify_hostname = a->tls.verify_hostname;
    out->heartbeat = a->heartbeat;
    out->prefetch = a->prefetch;
    out->queue_type = a->queue_type;
    out->connect_timeout_ms = a->connect_timeout * 1000;
    out->connection_name = name_buf;
}
