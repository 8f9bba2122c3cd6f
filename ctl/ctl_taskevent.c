/*
 * remotetaskctl --command taskevent [--elid N]: what BILLmanager's event
 * handler runs after task.edit.
 *
 * The event goes into the store's outbox first, so that it is durable
 * before anything else happens and whether or not the daemon runs; only
 * then is the daemon told, best effort and briefly, so that it publishes
 * at once instead of at its next outbox scan. The daemon being down is not
 * an error: it reads the outbox when it starts. No API call, no broker:
 * the handler runs inside a BILLmanager request and must be quick.
 *
 * Without a task id (a create: BILLmanager gives the new id only in its
 * answer) nothing can be recorded for a task; the daemon is asked for a
 * reconciliation, which finds the new task.
 */
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

/* How long the daemon gets to take the wake-up: it only sets a flag, so a
 * daemon that needs longer is busy, and the outbox scan catches up. */
#define TASKEVENT_WAKE_TIMEOUT_MS 500

/* Records the event. Returns 0, or -1 after printing why it was not. */
static int taskevent_record(const struct config *cfg, long elid)
{
    char err[512];
    struct store *st = store_open(cfg->state_dir, err, sizeof(err));
    if (!st) {
        fprintf(stderr,
                "remotetaskctl: event for task %ld NOT recorded: cannot open the store "
                "in \"%s\": %s\n",
                elid, cfg->state_dir, err);
        return -1;
    }
    rt_status rc = store_outbox_add(st, cfg->client.id, elid, clock_wall_ms());
    if (rc != RT_OK)
        fprintf(stderr, "remotetaskctl: event for task %ld NOT recorded: %s\n", elid,
                store_strerror(st));
    store_free(st);
    return rc == RT_OK ? 0 : -1;
}

/* Tells the daemon; writes what happened into out (a phrase). */
static void taskevent_wake(const struct config *cfg, bool reconcile, int timeout_ms,
                           const char *later, char *out, size_t outlen)
{
    char err[CTLPROTO_ERR_MAX];
    json_t *resp = NULL;
    json_t *req = json_pack("{s:s,s:b}", "cmd", "wake", "reconcile", reconcile);
    if (!req) {
        snprintf(out, outlen, "daemon not notified (out of memory): %s", later);
        return;
    }
    rt_status rc = ctlproto_request(cfg->control_socket, req, &resp, timeout_ms, err, sizeof(err));
    json_decref(req);
    if (rc != RT_OK) {
        /* The common case of a daemon that is not running gets the short
         * sentence; anything else shows the reason. */
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
        snprintf(out, outlen, "daemon refused the wake-up (%s): %s", why ? why : "no reason",
                 later);
    }
    json_decref(resp);
}

int ctl_taskevent(const struct ctl_args *args)
{
    char err[CONFIG_ERR_MAX], how[1024];

    /* The store and the config loader log only on trouble that the lines
     * below report anyway. */
    log_init("remotetaskctl", LOG_LEVEL_ERROR, 0);
    struct config *cfg = config_load(args->config, err, sizeof(err));
    if (!cfg) {
        fprintf(stderr, "remotetaskctl: %s\n", err);
        return 1;
    }
    if (!cfg->client.enabled) {
        fprintf(stderr,
                "remotetaskctl: %s has no client: section: task events are recorded "
                "for the client role only\n",
                cfg->file);
        config_free(cfg);
        return 1;
    }
    int timeout_ms = args->timeout ? args->timeout * 1000 : TASKEVENT_WAKE_TIMEOUT_MS;
    if (args->elid) {
        if (taskevent_record(cfg, args->elid) < 0) {
            config_free(cfg);
            return 1;
        }
        taskevent_wake(cfg, false, timeout_ms, "it will pick the event up when it starts", how,
                       sizeof(how));
        printf("recorded event for task %ld; %s\n", args->elid, how);
    } else {
        taskevent_wake(cfg, true, timeout_ms, "its first reconciliation will find the task", how,
                       sizeof(how));
        printf("no task id (a new task): nothing recorded; %s%s\n", how,
               strcmp(how, "daemon notified") == 0 ? ": its reconciliation will find the task"
                                                   : "");
    }
    config_free(cfg);
    fflush(stdout);
    return 0;
}
