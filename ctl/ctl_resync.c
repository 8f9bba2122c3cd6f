/*
 * remotetaskctl --command resync --elid N | --all: publish the current
 * state again, even where nothing changed, for when the other side lost
 * or mangled what it had (a restored backup, a task edited by hand).
 *
 * Both sides skip work by remembering what they last published: the
 * client the fingerprint of a task's forward fields (and its `updated`
 * value, for the reconciliation), the server the fingerprint of each
 * linked task's state. Resync forgets those in the store, which is
 * durable and works whether the daemon runs or not, and then tells the
 * daemon, best effort:
 *   client role: the task gets an outbox event (every known task with
 *     --all, plus a reconciliation for the ones never seen), so the relay
 *     views it and, its fingerprint being gone, publishes it;
 *   server role: --elid is the TARGET task id, the one an operator sees in
 *     this BILLmanager; the link is found for each configured client and
 *     its published state forgotten, so the next state cycle publishes it;
 *     the daemon is asked to run that cycle now.
 * The appliers on the other side compare what arrives with what they
 * applied, so a resync of an unchanged task costs messages, not writes.
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "clock.h"
#include "config.h"
#include "ctl.h"
#include "ctlproto.h"
#include "log.h"
#include "store.h"

/* The daemon only sets a flag for either request. */
#define RESYNC_DAEMON_TIMEOUT_MS 2000

/* Sends req to the daemon; writes a phrase saying what happened into out.
 * unknown_later is what to say when the daemon does not know the command,
 * later when it is not running. Takes req. */
static void resync_tell(const struct config *cfg, json_t *req, int timeout_ms,
                        const char *unknown_later, const char *later, char *out, size_t outlen)
{
    char err[CTLPROTO_ERR_MAX];
    json_t *resp = NULL;
    if (!req) {
        snprintf(out, outlen, "daemon not notified (out of memory): %s", later);
        return;
    }
    rt_status rc = ctlproto_request(cfg->control_socket, req, &resp, timeout_ms, err, sizeof(err));
    json_decref(req);
    if (rc != RT_OK) {
        if (strncmp(err, CTLPROTO_NOT_RUNNING, strlen(CTLPROTO_NOT_RUNNING)) == 0)
            snprintf(out, outlen, "daemon not running: %s", later);
        else
            snprintf(out, outlen, "daemon not notified (%s): %s", err, later);
        return;
    }
    if (json_is_true(json_object_get(resp, "ok"))) {
        snprintf(out, outlen, "daemon notified");
    } else {
        const char *why = json_string_value(json_object_get(resp, "error"));
        why = why ? why : "no reason given";
        if (strncmp(why, "unknown command", strlen("unknown command")) == 0)
            snprintf(out, outlen, "this daemon does not take the request: %s", unknown_later);
        else
            snprintf(out, outlen, "daemon refused the request (%s): %s", why, later);
    }
    json_decref(resp);
}

/* The client role. Returns 0, or -1 after printing why it failed. */
static int resync_client(const struct config *cfg, struct store *st, const struct ctl_args *args,
                         int timeout_ms)
{
    const char *c = cfg->client.id;
    uint64_t forgot = 0, queued = 0;
    char how[1024];

    rt_status r = store_begin(st);
    if (r == RT_OK && args->all) {
        r = store_fwd_forget(st, c, 0, &forgot);
        if (r == RT_OK)
            r = store_outbox_add_known(st, c, clock_wall_ms(), &queued);
    } else if (r == RT_OK) {
        r = store_fwd_forget(st, c, args->elid, &forgot);
        if (r == RT_OK)
            r = store_outbox_add(st, c, args->elid, clock_wall_ms());
        queued = 1;
    }
    if (r == RT_OK)
        r = store_commit(st);
    if (r != RT_OK) {
        fprintf(stderr, "remotetaskctl: client %s: nothing recorded: %s\n", c, store_strerror(st));
        store_rollback(st);
        return -1;
    }
    json_t *req = json_pack("{s:s,s:b}", "cmd", "wake", "reconcile", args->all);
    resync_tell(cfg, req, timeout_ms, "it publishes at its next outbox scan",
                "it publishes when it starts", how, sizeof(how));
    if (args->all)
        printf("client %s: forgot what was sent for %" PRIu64 " task%s, recorded %" PRIu64
               " event%s%s; %s\n",
               c, forgot, forgot == 1 ? "" : "s", queued, queued == 1 ? "" : "s",
               " (a reconciliation finds the tasks never sent)", how);
    else
        printf("client %s: task %ld: %s, recorded an event to publish its current state; %s\n", c,
               args->elid, forgot ? "forgot what was sent" : "never sent before", how);
    return 0;
}

/* The server role. Returns 0; 1 when --elid names no linked task (nothing
 * printed: the caller decides how bad that is); -1 after printing why it
 * failed. */
static int resync_server(const struct config *cfg, struct store *st, const struct ctl_args *args,
                         int timeout_ms)
{
    uint64_t total = 0;
    char how[1024];

    for (size_t i = 0; i < cfg->server.n_clients; i++) {
        const char *c = cfg->server.clients[i].id;
        uint64_t n = 0;
        rt_status r;
        if (args->all) {
            r = store_link_forget_state(st, c, 0, &n);
        } else {
            struct store_link link;
            r = store_link_by_dst(st, c, args->elid, &link);
            if (r == RT_OK && !link.found)
                continue;
            if (r == RT_OK)
                r = store_link_forget_state(st, c, link.src_task, &n);
            if (r == RT_OK && n)
                printf("server: task %ld is task %" PRId64 " of client %s: forgot the state "
                       "published for it\n",
                       args->elid, link.src_task, c);
        }
        if (r != RT_OK) {
            fprintf(stderr, "remotetaskctl: server: client %s: %s\n", c, store_strerror(st));
            return -1;
        }
        total += n;
    }
    if (!args->all && total == 0)
        return 1;
    if (args->all)
        printf("server: forgot the state published for %" PRIu64 " linked task%s\n", total,
               total == 1 ? "" : "s");
    char later[128];
    snprintf(later, sizeof(later), "the next state cycle (every %d s) republishes",
             cfg->server.sync_interval);
    resync_tell(cfg, json_pack("{s:s}", "cmd", "resync"), timeout_ms, later,
                "its first state cycle republishes", how, sizeof(how));
    printf("server: %s\n", how);
    return 0;
}

int ctl_resync(const struct ctl_args *args)
{
    char err[CONFIG_ERR_MAX];
    int failed = 0;

    if (args->sub) {
        fprintf(stderr, "remotetaskctl: resync takes no action word (\"%s\")\n", args->sub);
        return 2;
    }
    if (!args->elid == !args->all) {
        fprintf(stderr, "remotetaskctl: resync needs exactly one of --elid N and --all\n");
        return 2;
    }
    log_init("remotetaskctl", LOG_LEVEL_ERROR, 0);
    struct config *cfg = config_load(args->config, err, sizeof(err));
    if (!cfg) {
        fprintf(stderr, "remotetaskctl: %s\n", err);
        return 1;
    }
    struct store *st = store_open(cfg->state_dir, err, sizeof(err));
    if (!st) {
        fprintf(stderr, "remotetaskctl: cannot open the store in \"%s\": %s\n", cfg->state_dir,
                err);
        config_free(cfg);
        return 1;
    }
    int timeout_ms = args->timeout ? args->timeout * 1000 : RESYNC_DAEMON_TIMEOUT_MS;
    if (cfg->client.enabled)
        failed |= resync_client(cfg, st, args, timeout_ms) < 0;
    if (cfg->server.enabled) {
        int rc = resync_server(cfg, st, args, timeout_ms);
        if (rc == 1 && cfg->client.enabled) {
            /* With both roles an id is first a source task id. */
            printf("server: task %ld is not a linked target task\n", args->elid);
        } else if (rc == 1) {
            fprintf(stderr,
                    "remotetaskctl: server: task %ld is not linked to any client of "
                    "this configuration\n",
                    args->elid);
            failed = 1;
        } else if (rc < 0) {
            failed = 1;
        }
    }
    store_free(st);
    config_free(cfg);
    fflush(stdout);
    return failed ? 1 : 0;
}
