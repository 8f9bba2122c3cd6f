/*
 * config_opts.h - the options of the common/ modules, filled from a config.
 *
 * common/ must not know struct config (the dependency rule), so each of its
 * modules takes a struct of its own; these functions are the one place that
 * fills them. The filled structs borrow the config's strings: keep the
 * config alive until the module's _new() has copied them.
 */
#ifndef RT_CONFIG_OPTS_H
#define RT_CONFIG_OPTS_H

#include "billmgr.h"
#include "broker.h"
#include "config.h"

/* The BILLmanager client of this side. */
void config_opts_billmgr(const struct config *cfg, struct billmgr_opts *out);

/* The broker connection of this instance; callbacks and their arg are left
 * NULL for the caller to set. connection_name is "remotetask <instance>".
 * nodes and n_nodes are every entry of amqp.uri (at least one), borrowed
 * from the config like the strings; host, port and ssl are the first's. */
void config_opts_broker(const struct config *cfg, struct broker_opts *out, char *name_buf,
                        size_t name_len);

#endif
