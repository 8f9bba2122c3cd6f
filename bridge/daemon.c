/*
 * daemon.c - what the daemon is made of and how it changes (daemon.h):
 * the wiring of the core's hooks to commands and observe, the core's
 * lifecycle, the state_dir's lock and the standby, opening and freeing,
 * and a reload. Its loop is daemon_loop.c's (daemon_int.h).
 */
#include "daemon.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bridge.h"
#include "broker.h"
#include "clock.h"
#include "daemon_int.h"
#include "log.h"

#define DAEMON_LOCK_NAME "remotetaskd.lock"

/* ---- wiring: the core's hooks and the metrics endpoint --------------- */

/* The core reports to the daemon; these pass each report on to the file
 * that keeps what it changes. */
static void daemon_on_api_call(void *arg, const char *func, rt_status status, const char *err_type,
                               double seconds)
{
    struct daemon *d = arg;
    observe_on_api_call(&d->obs, func, status, err_type, seconds);
}

static void daemon_on_confirm(void *arg, struct core *k, uint64_t tag, enum broker_fate fate)
{
    struct daemon *d = arg;
    commands_on_confirm(&d->cmds, k, tag, fate);
}

static void daemon_on_sync_done(void *arg, const char *id, uint64_t count, uint64_t applied)
{
    struct daemon *d = arg;
    commands_on_sync_done(&d->cmds, id, count, applied);
}

static void daemon_on_depth(void *arg, const char *queue, int found, uint32_t ready,
                            uint32_t consumers)
{
    struct daemon *d = arg;
    observe_on_depth(&d->obs, queue, found, ready, consumers);
    /* A status waiting for these answers goes out as soon as they are in. */
    if (observe_queues_answered(&d->obs))
        commands_status_flush(d, clock_mono_ms());
}

static void daemon_on_forward_applied(void *arg, const char *client, int64_t task, int64_t event_ms,
                                      int64_t applied_ms)
{
    struct daemon *d = arg;
    (void)client;
    (void)task;
    observe_on_forward_applied(&d->obs, event_ms, applied_ms);
}

/* ---- what observe reads of the daemon -------------------------------- */

/* What observe_status() and observe_metrics_render() read of d besides
 * d->obs: its parts, and the numbers of its commands. */
static struct observe_view daemon_observe_view(struct daemon *d)
{
    return (struct observe_view){
        .cfg = d->cfg,
        .core = d->core,
        .st = d->st,
        .ctl = d->ctl,
        .sync_published = d->cmds.sync_published,
        .sync_confirmed = d->cmds.sync_confirmed,
        .checkevents = commands_waiting(&d->cmds),
    };
}

/* A scrape of /metrics. */
static int daemon_metrics_render(void *arg, struct buf *out)
{
    struct daemon *d = arg;
    struct observe_view v = daemon_observe_view(d);
    return observe_metrics_render(&d->obs, &v, out);
}

json_t *daemon_status_json(struct daemon *d)
{
    struct observe_view v = daemon_observe_view(d);
    return observe_status(&d->obs, &v);
}

void daemon_status_refresh(struct daemon *d)
{
    observe_queues_refresh(&d->obs, d->cfg, d->core, OBSERVE_QUEUES_STATUS_AGE_MS);
}

int daemon_status_ready(const struct daemon *d)
{
    return observe_queues_answered(&d->obs);
}

/* ---- the core's lifecycle -------------------------------------------- */

/* Builds a core for cfg and st that reports to d. */
static struct core *daemon_core_new(struct daemon *d, const struct config *cfg, struct store *st,
                                    char *err, size_t errlen)
{
    const struct core_hooks hooks = {
        .arg = d,
        .on_api_call = daemon_on_api_call,
        .on_confirm = daemon_on_confirm,
        .on_sync_done = daemon_on_sync_done,
        .on_forward_applied = daemon_on_forward_applied,
        .on_depth = daemon_on_depth,
    };
    return core_new(cfg, st, &hooks, err, errlen);
}

/* Frees the running core after adding its counters to the totals. */
void daemon_core_retire(struct daemon *d)
{
    if (!d->core)
        return;
    /* Acks and publishes that wait for the pass's sync go out while the
     * connection is there (else their deliveries come again, as
     * duplicates). */
    if (d->st) {
        store_want_sync(d->st);
        (void)store_sync(d->st);
    }
    /* Tear down first: the broker's LOST reports still move counters. */
    core_disconnect(d->core);
    observe_retire(&d->obs, d->core);
    core_free(d->core);
    d->core = NULL;
}

/* Makes new components from the running configuration, after a failed
 * reload or a failed rebuild. Returns -1 after logging why; the caller
 * says when to try again. */
int daemon_core_rebuild(struct daemon *d)
{
    char why[CORE_ERR_MAX];
    d->core = daemon_core_new(d, d->cfg, d->st, why, sizeof(why));
    if (d->core)
        return 0;
    log_error("cannot restart the components: %s; trying again in %d s", why,
              DAEMON_REBUILD_RETRY_MS / 1000);
    return -1;
}

/* ---- the one active daemon of a state_dir ---------------------------- */

/* Creates dir and its missing parents (mode 0750), as store_open() does. */
static int daemon_mkdirs(const char *dir)
{
    char path[4096];
    if (snprintf(path, sizeof(path), "%s", dir) >= (int)sizeof(path))
        return -1;
    for (char *p = path + 1;; p++) {
        if (*p == '/' || !*p) {
            char c = *p;
            *p = '\0';
            if (mkdir(path, 0750) < 0 && errno != EEXIST)
                return -1;
            if (!c)
                return 0;
            *p = c;
        }
    }
}

/* Opens the lock file of the state_dir. Returns the fd, or -1 with err. */
static int daemon_lock_open(const char *state_dir, char *err, size_t errlen)
{
    char path[4096];
    if (daemon_mkdirs(state_dir) < 0 ||
        snprintf(path, sizeof(path), "%s/%s", state_dir, DAEMON_LOCK_NAME) >= (int)sizeof(path)) {
        snprintf(err, errlen, "cannot create the state directory \"%s\": %s", state_dir,
                 strerror(errno));
        return -1;
    }
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0)
        snprintf(err, errlen, "cannot open \"%s\": %s", path, strerror(errno));
    return fd;
}

/* Takes the lock if it is free: 1 taken, 0 held by another process. The
 * holder writes its pid into the file for the standby's log line. */
static int daemon_lock_try(int fd)
{
    if (flock(fd, LOCK_EX | LOCK_NB) < 0)
        return 0;
    char pid[32];
    int n = snprintf(pid, sizeof(pid), "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) == 0 && pwrite(fd, pid, (size_t)n, 0) != n)
        log_debug("cannot write the pid into the lock file");
    return 1;
}

/* The pid the lock file names, 0 when unknown. */
long daemon_lock_holder(int fd)
{
    char buf[32] = {0};
    ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
    return n > 0 ? strtol(buf, NULL, 10) : 0;
}

/* ---- lifecycle ------------------------------------------------------- */

/* The daemon's store: its commits are lazy, and the loop syncs them once
 * per pass (daemon_sync). A store that refuses lazy commits still works,
 * one sync per commit. */
static struct store *daemon_store_open(const char *dir, char *why, size_t whylen)
{
    struct store *st = store_open_timeout(dir, STORE_BUSY_DAEMON_MS, why, whylen);
    if (st && store_set_lazy(st, true) != RT_OK)
        log_warning("the store syncs every commit: %s", store_strerror(st));
    return st;
}

/* What the active daemon opens once it holds the lock: the store, the
 * control socket, the metrics endpoint and the core. */
static int daemon_open(struct daemon *d, char *err, size_t errlen)
{
    char why[CORE_ERR_MAX];
    const struct control_command *commands;
    size_t n_commands;
    const struct config *cfg = d->cfg;

    d->st = daemon_store_open(cfg->state_dir, why, sizeof(why));
    if (!d->st) {
        snprintf(err, errlen, "cannot open the store in \"%s\": %s", cfg->state_dir, why);
        return -1;
    }
    commands = commands_table(&n_commands);
    d->ctl = control_new(cfg->control_socket, commands, n_commands, d, why, sizeof(why));
    if (!d->ctl) {
        snprintf(err, errlen, "%s", why);
        return -1;
    }
    if (cfg->metrics.enabled) {
        d->mh = metrics_http_new(cfg->metrics.host, cfg->metrics.port, daemon_metrics_render, d,
                                 why, sizeof(why));
        if (!d->mh) {
            snprintf(err, errlen, "metrics.listen: %s", why);
            return -1;
        }
    }
    d->core = daemon_core_new(d, cfg, d->st, err, errlen);
    if (!d->core)
        return -1;
    return 0;
}

struct daemon *daemon_new(struct config *cfg, char *err, size_t errlen)
{
    struct daemon *d = calloc(1, sizeof(*d));
    if (!d) {
        snprintf(err, errlen, "out of memory");
        config_free(cfg);
        return NULL;
    }
    d->cfg = cfg;
    d->lock_fd = -1;
    if (observe_init(&d->obs) < 0) {
        snprintf(err, errlen, "out of memory");
        goto free_daemon;
    }
    d->lock_fd = daemon_lock_open(cfg->state_dir, err, errlen);
    if (d->lock_fd < 0)
        goto free_daemon;
    if (!daemon_lock_try(d->lock_fd)) {
        /* Another remotetaskd works this store (an active one of a pair on
         * one host): this one waits, holding nothing, and takes over the
         * moment the other one ends. */
        d->standby = 1;
        return d;
    }
    if (daemon_open(d, err, errlen) < 0)
        goto free_daemon;
    return d;

free_daemon:
    daemon_free(d);
    return NULL;
}

int daemon_standby(const struct daemon *d)
{
    return d && d->standby;
}

/* SIGHUP while standing by: the new file is checked and kept for the
 * takeover; an invalid one changes nothing. */
void daemon_standby_reload(struct daemon *d)
{
    char err[CONFIG_ERR_MAX];
    struct config *cfg = config_load(d->cfg->file, err, sizeof(err));
    if (!cfg) {
        log_error("configuration not reloaded, keeping the running one: %s", err);
        return;
    }
    if (strcmp(cfg->state_dir, d->cfg->state_dir) != 0)
        log_warning("state_dir changed to \"%s\": a standby keeps waiting for \"%s\" until it "
                    "restarts",
                    cfg->state_dir, d->cfg->state_dir);
    config_free(d->pending);
    d->pending = NULL;
    struct config *old = d->cfg;
    /* The lock stays the one of the old state_dir. */
    free(cfg->state_dir);
    cfg->state_dir = strdup(old->state_dir);
    if (!cfg->state_dir) {
        config_free(cfg);
        return;
    }
    d->cfg = cfg;
    config_free(old);
    log_set_level(cfg->log_level);
    log_info("configuration reloaded from \"%s\" (standing by)", cfg->file);
}

/* A standby's turn of the loop: try the lock; once it is ours, open
 * everything as a starting daemon would. Returns -1 when that fails. */
int daemon_standby_step(struct daemon *d, int64_t now)
{
    char err[CORE_ERR_MAX];
    if (now < d->standby_next)
        return 0;
    d->standby_next = now + DAEMON_STANDBY_POLL_MS;
    if (!daemon_lock_try(d->lock_fd))
        return 0;
    d->standby = 0;
    log_info("the active remotetaskd of \"%s\" is gone: taking over", d->cfg->state_dir);
    if (daemon_open(d, err, sizeof(err)) < 0) {
        log_error("cannot take over: %s", err);
        return -1;
    }
    return 0;
}

void daemon_free(struct daemon *d)
{
    if (!d)
        return;
    daemon_core_retire(d);
    /* Deferred checkevents are told through their gone callback. */
    control_free(d->ctl);
    metrics_http_free(d->mh);
    observe_release(&d->obs);
    store_free(d->st);
    if (d->lock_fd >= 0)
        close(d->lock_fd); /* releases the lock for a standby */
    config_free(d->pending);
    config_free(d->cfg);
    free(d->fds);
    free(d);
}

/* ---- reload ---------------------------------------------------------- */

/* SIGHUP: loads the file again. A valid configuration waits in d->pending
 * while the components drain; an invalid one changes nothing. */
void daemon_reload_load(struct daemon *d)
{
    char err[CONFIG_ERR_MAX];
    struct config *cfg = config_load(d->cfg->file, err, sizeof(err));
    if (!cfg) {
        log_error("configuration not reloaded, keeping the running one: %s", err);
        return;
    }
    if (d->stopping) {
        config_free(cfg);
        return;
    }
    if (d->pending) {
        /* A second SIGHUP during the drain: the newer file wins. */
        config_free(d->pending);
        d->pending = cfg;
        return;
    }
    d->pending = cfg;
    d->reload_deadline = clock_mono_ms() + DAEMON_RELOAD_DRAIN_MS;
    core_drain(d->core);
    log_info("reloading the configuration from \"%s\": draining for up to %d s", cfg->file,
             DAEMON_RELOAD_DRAIN_MS / 1000);
}

/* What a new configuration runs with: the store, the control socket and
 * the metrics endpoint are the running ones unless their setting changed;
 * the core is always new. */
struct daemon_parts {
    struct store *st;
    struct control *ctl;
    struct metrics_http *mh;
    struct core *core;
};

/* Builds the parts cfg needs. Returns -1 after logging why; p then holds
 * what was built, for daemon_reload_keep_old to free. */
static int daemon_reload_build(struct daemon *d, const struct config *cfg, struct daemon_parts *p)
{
    char why[CORE_ERR_MAX];

    *p = (struct daemon_parts){.st = d->st, .ctl = d->ctl, .mh = d->mh, .core = NULL};
    if (strcmp(cfg->state_dir, d->cfg->state_dir) != 0) {
        p->st = daemon_store_open(cfg->state_dir, why, sizeof(why));
        if (!p->st) {
            log_error("configuration not reloaded: cannot open the store in \"%s\": %s",
                      cfg->state_dir, why);
            return -1;
        }
    }
    if (strcmp(cfg->control_socket, d->cfg->control_socket) != 0) {
        size_t n_commands;
        const struct control_command *commands = commands_table(&n_commands);
        p->ctl = control_new(cfg->control_socket, commands, n_commands, d, why, sizeof(why));
        if (!p->ctl) {
            log_error("configuration not reloaded: %s", why);
            return -1;
        }
    }
    if (cfg->metrics.enabled != d->cfg->metrics.enabled ||
        (cfg->metrics.enabled && (strcmp(cfg->metrics.host, d->cfg->metrics.host) != 0 ||
                                  cfg->metrics.port != d->cfg->metrics.port))) {
        p->mh = NULL;
        if (cfg->metrics.enabled) {
            p->mh = metrics_http_new(cfg->metrics.host, cfg->metrics.port, daemon_metrics_render, d,
                                     why, sizeof(why));
            if (!p->mh) {
                log_error("configuration not reloaded: metrics.listen: %s", why);
                p->mh = d->mh;
                return -1;
            }
        }
    }
    p->core = daemon_core_new(d, cfg, p->st, why, sizeof(why));
    if (!p->core) {
        log_error("configuration not reloaded: %s", why);
        return -1;
    }
    return 0;
}

/* Puts cfg and its parts p in place of the running ones, freeing what
 * they replace. */
static void daemon_reload_commit(struct daemon *d, struct config *cfg, struct daemon_parts *p)
{
    daemon_core_retire(d);
    d->core = p->core;
    if (p->ctl != d->ctl) {
        d->obs.control_refused_base += control_refused(d->ctl);
        control_free(d->ctl);
        d->ctl = p->ctl;
    }
    if (p->mh != d->mh) {
        metrics_http_free(d->mh);
        d->mh = p->mh;
    }
    if (p->st != d->st) {
        store_free(d->st);
        d->st = p->st;
    }
    if (strcmp(cfg->instance, d->cfg->instance) != 0)
        log_warning("instance renamed from \"%s\" to \"%s\": log lines keep the old name "
                    "until remotetaskd restarts",
                    d->cfg->instance, cfg->instance);
    config_free(d->cfg);
    d->cfg = cfg;
    log_set_level(cfg->log_level);
    log_info("configuration reloaded from \"%s\"", cfg->file);
}

/* Frees cfg and what was built for it, and goes on with the running
 * configuration. */
static void daemon_reload_keep_old(struct daemon *d, struct config *cfg, struct daemon_parts *p)
{
    if (p->mh != d->mh)
        metrics_http_free(p->mh);
    if (p->ctl != d->ctl)
        control_free(p->ctl);
    if (p->st != d->st)
        store_free(p->st);
    config_free(cfg);
    /* The old components were drained, which cannot be undone: make new
     * ones from the old configuration. */
    daemon_core_retire(d);
    if (daemon_core_rebuild(d) < 0)
        d->rebuild_at = clock_mono_ms() + DAEMON_REBUILD_RETRY_MS;
}

/* After the drain: builds everything the new configuration needs before
 * tearing anything down, so that a failure leaves the old configuration
 * running (with fresh components, since the old ones were drained). */
void daemon_reload_apply(struct daemon *d)
{
    struct config *cfg = d->pending;
    struct daemon_parts p;

    d->pending = NULL;
    if (daemon_reload_build(d, cfg, &p) < 0)
        daemon_reload_keep_old(d, cfg, &p);
    else
        daemon_reload_commit(d, cfg, &p);
}
