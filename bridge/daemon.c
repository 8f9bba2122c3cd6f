#include "daemon.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "billmgr.h"
#include "bridge.h"
#include "broker.h"
#include "log.h"
#include "now.h"

/* The longest ppoll() wait: a bound on how late anything the loop did not
 * ask a deadline for can be noticed. */
#define DAEMON_MAX_WAIT_MS 5000
/* How soon a failed sync of the store is tried again. */
#define DAEMON_SYNC_RETRY_MS 250
/* How soon a failed rebuild of the components is tried again. */
#define DAEMON_REBUILD_RETRY_MS 5000
/* How often a standby daemon tries the lock of the active one. The kernel
 * drops a lock the moment its holder dies, so this is the takeover time. */
#define DAEMON_STANDBY_POLL_MS 250
#define DAEMON_LOCK_NAME "remotetaskd.lock"

/* Set by the signal handlers, read by the loop: the only thing a handler
 * does. Signals are blocked outside ppoll(), so they are seen at once. */
static volatile sig_atomic_t daemon_sig_stop;
static volatile sig_atomic_t daemon_sig_hup;

static void daemon_on_signal(int sig)
{
    if (sig == SIGHUP)
        daemon_sig_hup = 1;
    else
        daemon_sig_stop = 1;
}

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
        commands_status_flush(d, now_mono_ms());
}

static void daemon_on_forward_applied(void *arg, const char *client, int64_t task, int64_t event_ms,
                                      int64_t applied_ms)
{
    struct daemon *d = arg;
    (void)client;
    (void)task;
    observe_on_forward_applied(&d->obs, event_ms, applied_ms);
}

/* ---- what observe reads of the daemon ------------------------------- */

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

/* ---- the core's lifecycle ------------------------------------------- */

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
static void daemon_core_retire(struct daemon *d)
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

/* ---- the one active daemon of a state_dir --------------------------- */

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
static long daemon_lock_holder(int fd)
{
    char buf[32] = {0};
    ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
    return n > 0 ? strtol(buf, NULL, 10) : 0;
}

/* ---- lifecycle ------------------------------------------------------ */

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
static void daemon_standby_reload(struct daemon *d)
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
static int daemon_standby_step(struct daemon *d, int64_t now)
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

/* ---- reload --------------------------------------------------------- */

/* SIGHUP: loads the file again. A valid configuration waits in d->pending
 * while the components drain; an invalid one changes nothing. */
static void daemon_reload_load(struct daemon *d)
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
    d->reload_deadline = now_mono_ms() + DAEMON_RELOAD_DRAIN_MS;
    core_drain(d->core);
    log_info("reloading the configuration from \"%s\": draining for up to %d s", cfg->file,
             DAEMON_RELOAD_DRAIN_MS / 1000);
}

/* After the drain: builds everything the new configuration needs before
 * tearing anything down, so that a failure leaves the old configuration
 * running (with fresh components, since the old ones were drained). */
static void daemon_reload_apply(struct daemon *d)
{
    struct config *cfg = d->pending;
    struct store *st = d->st;
    struct control *ctl = d->ctl;
    struct metrics_http *mh = d->mh;
    struct core *core = NULL;
    char why[CORE_ERR_MAX];

    d->pending = NULL;
    if (strcmp(cfg->state_dir, d->cfg->state_dir) != 0) {
        st = daemon_store_open(cfg->state_dir, why, sizeof(why));
        if (!st) {
            log_error("configuration not reloaded: cannot open the store in \"%s\": %s",
                      cfg->state_dir, why);
            goto keep_old;
        }
    }
    if (strcmp(cfg->control_socket, d->cfg->control_socket) != 0) {
        size_t n_commands;
        const struct control_command *commands = commands_table(&n_commands);
        ctl = control_new(cfg->control_socket, commands, n_commands, d, why, sizeof(why));
        if (!ctl) {
            log_error("configuration not reloaded: %s", why);
            goto keep_old;
        }
    }
    if (cfg->metrics.enabled != d->cfg->metrics.enabled ||
        (cfg->metrics.enabled && (strcmp(cfg->metrics.host, d->cfg->metrics.host) != 0 ||
                                  cfg->metrics.port != d->cfg->metrics.port))) {
        mh = NULL;
        if (cfg->metrics.enabled) {
            mh = metrics_http_new(cfg->metrics.host, cfg->metrics.port, daemon_metrics_render, d,
                                  why, sizeof(why));
            if (!mh) {
                log_error("configuration not reloaded: metrics.listen: %s", why);
                mh = d->mh;
                goto keep_old;
            }
        }
    }
    core = daemon_core_new(d, cfg, st, why, sizeof(why));
    if (!core) {
        log_error("configuration not reloaded: %s", why);
        goto keep_old;
    }

    daemon_core_retire(d);
    d->core = core;
    if (ctl != d->ctl) {
        d->obs.control_refused_base += control_refused(d->ctl);
        control_free(d->ctl);
        d->ctl = ctl;
    }
    if (mh != d->mh) {
        metrics_http_free(d->mh);
        d->mh = mh;
    }
    if (st != d->st) {
        store_free(d->st);
        d->st = st;
    }
    if (strcmp(cfg->instance, d->cfg->instance) != 0)
        log_warning("instance renamed from \"%s\" to \"%s\": log lines keep the old name "
                    "until remotetaskd restarts",
                    d->cfg->instance, cfg->instance);
    config_free(d->cfg);
    d->cfg = cfg;
    log_set_level(cfg->log_level);
    log_info("configuration reloaded from \"%s\"", cfg->file);
    return;

keep_old:
    if (mh != d->mh)
        metrics_http_free(mh);
    if (ctl != d->ctl)
        control_free(ctl);
    if (st != d->st)
        store_free(st);
    config_free(cfg);
    /* The old components were drained, which cannot be undone: make new
     * ones from the old configuration. */
    daemon_core_retire(d);
    d->core = daemon_core_new(d, d->cfg, d->st, why, sizeof(why));
    if (!d->core) {
        log_error("cannot restart the components: %s; trying again in %d s", why,
                  DAEMON_REBUILD_RETRY_MS / 1000);
        d->rebuild_at = now_mono_ms() + DAEMON_REBUILD_RETRY_MS;
    }
}

/* ---- the loop ------------------------------------------------------- */

/* Makes room for n pollfd entries. */
static int daemon_fds_reserve(struct daemon *d, size_t n)
{
    if (n <= d->fds_cap)
        return 0;
    struct pollfd *fds = realloc(d->fds, n * sizeof(*fds));
    if (!fds)
        return -1;
    d->fds = fds;
    d->fds_cap = n;
    return 0;
}

/* Lowers *best (-1 = none yet) to the wait until a deadline in ms. */
static void daemon_wait_min(int64_t *best, int64_t wait)
{
    if (wait < 0)
        wait = 0;
    if (*best < 0 || wait < *best)
        *best = wait;
}

/* How long ppoll() may wait: until the nearest thing the core, the
 * control socket, the metrics endpoint, a checkevent, the drain or a
 * rebuild needs, and never longer than DAEMON_MAX_WAIT_MS. */
static int64_t daemon_timeout(struct daemon *d)
{
    int64_t best = DAEMON_MAX_WAIT_MS, mono = now_mono_ms();
    int t;

    if (d->core) {
        int64_t c = core_timeout_ms(d->core, !d->stopping);
        if (c >= 0)
            daemon_wait_min(&best, c);
    } else {
        daemon_wait_min(&best, d->rebuild_at - mono);
    }
    t = control_timeout_ms(d->ctl);
    if (t >= 0)
        daemon_wait_min(&best, t);
    if (d->mh && (t = metrics_http_timeout_ms(d->mh)) >= 0)
        daemon_wait_min(&best, t);
    int64_t w = commands_expire(&d->cmds, mono);
    if (w >= 0)
        daemon_wait_min(&best, w - mono);
    w = commands_status_flush(d, mono);
    if (w >= 0)
        daemon_wait_min(&best, w - mono);
    if (d->stopping)
        daemon_wait_min(&best, d->stop_deadline - mono);
    if (d->pending)
        daemon_wait_min(&best, d->reload_deadline - mono);
    if (d->sync_retry)
        daemon_wait_min(&best, d->sync_retry - mono);
    else if (d->st && store_sync_wanted(d->st))
        daemon_wait_min(&best, 0); /* asked for by a listener of the last sync */
    return best;
}

/* The end of a loop pass: one sync for every commit of the pass that an
 * ack or a publish waits for, then those go out (store.h, group commits).
 * A failed sync releases nothing; it is tried again after
 * DAEMON_SYNC_RETRY_MS, its cause logged once. */
static void daemon_sync(struct daemon *d)
{
    int64_t mono = now_mono_ms();
    if (!d->st || !store_sync_wanted(d->st) || (d->sync_retry && mono < d->sync_retry))
        return;
    if (store_sync(d->st) == RT_OK) {
        if (d->sync_trouble[0])
            log_info("the store syncs again");
        d->sync_trouble[0] = '\0';
        d->sync_retry = 0;
        return;
    }
    const char *cause = store_strcause(d->st);
    if (strcmp(cause, d->sync_trouble) != 0)
        log_error("cannot sync the store (acks and publishes wait): %s", store_strerror(d->st));
    snprintf(d->sync_trouble, sizeof(d->sync_trouble), "%s", cause);
    d->sync_retry = mono + DAEMON_SYNC_RETRY_MS;
}

/* One ppoll() and the work it allows. Returns 0, or -1 when polling failed
 * for a reason other than a signal. */
static int daemon_iterate(struct daemon *d, const sigset_t *wait_mask)
{
    struct core *k = d->core;
    size_t n = 0, bm_off = 0, n_bm = 0, ctl_off, n_ctl;

    if (k) {
        for (;;) {
            size_t room = d->fds_cap - n;
            size_t n_br = broker_pollfds(k->br, d->fds + n, room);
            if (n_br <= room) {
                n += n_br;
                break;
            }
            if (daemon_fds_reserve(d, n + n_br) < 0)
                goto no_memory;
        }
        bm_off = n;
        for (;;) {
            size_t room = d->fds_cap - n;
            n_bm = billmgr_pollfds(k->bm, d->fds + n, room);
            if (n_bm <= room)
                break;
            if (daemon_fds_reserve(d, n + n_bm) < 0)
                goto no_memory;
        }
        n += n_bm;
    }
    if (daemon_fds_reserve(d, n + CONTROL_MAX_POLLFDS + 1) < 0)
        goto no_memory;
    ctl_off = n;
    n_ctl = control_pollfds(d->ctl, d->fds + n, CONTROL_MAX_POLLFDS);
    n += n_ctl;
    if (d->mh)
        d->fds[n++] = (struct pollfd){.fd = metrics_http_pollfd(d->mh), .events = POLLIN};

    int64_t wait = daemon_timeout(d);
    struct timespec ts = {.tv_sec = wait / 1000, .tv_nsec = (wait % 1000) * 1000000};
    int rc = ppoll(d->fds, n, &ts, wait_mask);
    if (rc < 0) {
        if (errno == EINTR)
            return 0; /* a signal: its flag is read at the top of the loop */
        log_error("the event loop cannot poll: %s", strerror(errno));
        return -1;
    }

    if (k) {
        core_process(k);
        billmgr_handle(k->bm, d->fds + bm_off, n_bm);
    }
    control_handle(d->ctl, d->fds + ctl_off, n_ctl);
    /* Cheap when nothing is ready (libmicrohttpd polls its epoll set
     * without waiting), so it runs on every turn. */
    if (d->mh)
        metrics_http_handle(d->mh);
    commands_expire(&d->cmds, now_mono_ms());
    commands_status_flush(d, now_mono_ms());
    if (d->core)
        core_tick(d->core);
    daemon_sync(d);
    return 0;

no_memory:
    log_error("the event loop ran out of memory");
    return -1;
}

static void daemon_log_start(const struct daemon *d)
{
    const struct config *cfg = d->cfg;
    char roles[256] = "";
    if (cfg->client.enabled)
        snprintf(roles, sizeof(roles), "client \"%s\"", cfg->client.id);
    if (cfg->server.enabled) {
        size_t len = strlen(roles);
        snprintf(roles + len, sizeof(roles) - len, "%sserver for %zu client%s", len ? " and " : "",
                 cfg->server.n_clients, cfg->server.n_clients == 1 ? "" : "s");
    }
    log_info("remotetaskd %s started: instance \"%s\", %s, control socket \"%s\"", RT_VERSION,
             cfg->instance, roles, cfg->control_socket);
}

int daemon_run(struct daemon *d)
{
    sigset_t block, old_mask, wait_mask;
    struct sigaction sa, old_term, old_int, old_hup, old_pipe, ign;
    int status = 0;

    daemon_sig_stop = 0;
    daemon_sig_hup = 0;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGHUP);
    sigprocmask(SIG_BLOCK, &block, &old_mask);
    wait_mask = old_mask;
    sigdelset(&wait_mask, SIGTERM);
    sigdelset(&wait_mask, SIGINT);
    sigdelset(&wait_mask, SIGHUP);

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = daemon_on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, &old_term);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGHUP, &sa, &old_hup);
    /* A peer that hangs up (a control client, the broker) must show as an
     * EPIPE error, not kill the daemon. */
    memset(&ign, 0, sizeof(ign));
    ign.sa_handler = SIG_IGN;
    sigemptyset(&ign.sa_mask);
    sigaction(SIGPIPE, &ign, &old_pipe);

    if (d->standby)
        log_info("remotetaskd %s standing by: another remotetaskd (pid %ld) works \"%s\"; "
                 "taking over when it ends",
                 RT_VERSION, daemon_lock_holder(d->lock_fd), d->cfg->state_dir);
    else
        daemon_log_start(d);
    for (;;) {
        int64_t now = now_mono_ms();
        if (d->standby) {
            /* Holding nothing: no socket, no store, no broker. */
            if (daemon_sig_stop)
                break;
            if (daemon_sig_hup) {
                daemon_sig_hup = 0;
                daemon_standby_reload(d);
            }
            if (daemon_standby_step(d, now) < 0) {
                status = 1;
                break;
            }
            if (d->standby) {
                struct timespec ts = {.tv_sec = 0, .tv_nsec = DAEMON_STANDBY_POLL_MS * 1000000L};
                (void)ppoll(NULL, 0, &ts, &wait_mask);
                continue;
            }
            daemon_log_start(d);
        }
        if (daemon_sig_stop && !d->stopping) {
            d->stopping = 1;
            d->stop_deadline = now + DAEMON_STOP_DRAIN_MS;
            config_free(d->pending);
            d->pending = NULL;
            core_drain(d->core);
            log_info("stopping: waiting up to %d s for work in flight",
                     DAEMON_STOP_DRAIN_MS / 1000);
        }
        if (daemon_sig_hup) {
            daemon_sig_hup = 0;
            daemon_reload_load(d);
        }
        if (d->stopping) {
            if (core_idle(d->core))
                break;
            if (now >= d->stop_deadline) {
                log_warning("stopping with work still in flight after %d s: it stays in the "
                            "outbox and the queues for the next start",
                            DAEMON_STOP_DRAIN_MS / 1000);
                break;
            }
        } else if (d->pending && (core_idle(d->core) || now >= d->reload_deadline)) {
            daemon_reload_apply(d);
        }
        if (!d->core && !d->stopping && now >= d->rebuild_at) {
            char why[CORE_ERR_MAX];
            d->core = daemon_core_new(d, d->cfg, d->st, why, sizeof(why));
            if (!d->core) {
                log_error("cannot restart the components: %s; trying again in %d s", why,
                          DAEMON_REBUILD_RETRY_MS / 1000);
                d->rebuild_at = now + DAEMON_REBUILD_RETRY_MS;
            }
        }
        if (d->core)
            core_maintain(d->core, !d->stopping);
        if (daemon_iterate(d, &wait_mask) < 0) {
            status = 1;
            break;
        }
    }

    /* Closes the broker politely: unacked deliveries go back to their
     * queues, unconfirmed publishes stay in the outbox. */
    daemon_core_retire(d);
    log_info("stopped");

    sigaction(SIGPIPE, &old_pipe, NULL);
    sigaction(SIGHUP, &old_hup, NULL);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    sigprocmask(SIG_SETMASK, &old_mask, NULL);
    return status;
}
