/*
 * remotetaskctl --command checkevent [--timeout S]: BILLmanager's
 * checkevent, through the broker.
 *
 * The daemon publishes a sync request for this client, and the server
 * side answers with the state of every task whose state changed followed
 * by a sync_done; the daemon answers this command once the reverse
 * applier has applied all of it. The control socket request waits a few
 * seconds longer than the daemon does, so that the daemon's own reason
 * ("no answer from the server side within S s") is what gets printed.
 */
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "config.h"
#include "ctl.h"
#include "ctlproto.h"
#include "log.h"

#define CHECKEVENT_DEFAULT_TIMEOUT_S 60
/* Beyond the daemon's own wait: its answer, not our timeout, says why. */
#define CHECKEVENT_SLACK_S 5

int ctl_checkevent(const struct ctl_args *args)
{
    char err[CONFIG_ERR_MAX > CTLPROTO_ERR_MAX ? CONFIG_ERR_MAX : CTLPROTO_ERR_MAX];
    int timeout = args->timeout ? args->timeout : CHECKEVENT_DEFAULT_TIMEOUT_S;
    json_t *resp = NULL;
    int status = 1;

    log_init("remotetaskctl", LOG_LEVEL_ERROR, 0);
    struct config *cfg = config_load(args->config, err, sizeof(err));
    if (!cfg) {
        fprintf(stderr, "remotetaskctl: %s\n", err);
        return 1;
    }
    if (!cfg->client.enabled) {
        fprintf(stderr,
                "remotetaskctl: %s has no client: section: checkevent asks the server side "
                "for the state of this client's tasks\n",
                cfg->file);
        config_free(cfg);
        return 1;
    }
    json_t *req = json_pack("{s:s,s:i}", "cmd", "checkevent", "timeout", timeout);
    if (!req) {
        fprintf(stderr, "remotetaskctl: out of memory\n");
        config_free(cfg);
        return 1;
    }
    rt_status rc = ctlproto_request(cfg->control_socket, req, &resp,
                                    (timeout + CHECKEVENT_SLACK_S) * 1000, err, sizeof(err));
    json_decref(req);
    if (rc != RT_OK) {
        if (strncmp(err, CTLPROTO_NOT_RUNNING, strlen(CTLPROTO_NOT_RUNNING)) == 0)
            fprintf(stderr, "remotetaskctl: remotetaskd is not running (no answer on %s)\n",
                    cfg->control_socket);
        else
            fprintf(stderr, "remotetaskctl: checkevent failed: %s\n", err);
        goto done;
    }
    if (!json_is_true(json_object_get(resp, "ok"))) {
        const char *why = json_string_value(json_object_get(resp, "error"));
        fprintf(stderr, "remotetaskctl: checkevent failed: %s\n", why ? why : "no reason given");
        goto done;
    }
    json_int_t updated = json_integer_value(json_object_get(resp, "updated"));
    json_int_t published = json_integer_value(json_object_get(resp, "published"));
    /* The wording is fixed (scripts and tests read it), plurals included. */
    printf("checkevent: %" JSON_INTEGER_FORMAT " tasks updated (%" JSON_INTEGER_FORMAT
           " states received)\n",
           updated, published);
    status = 0;
done:
    json_decref(resp);
    config_free(cfg);
    fflush(stdout);
    return status;
}
