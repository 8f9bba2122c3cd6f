/*
 * daemon_loop.c - the daemon's loop (daemon_run, daemon.h): the signals,
 * one ppoll() over every part's descriptors with the nearest deadline as
 * its timeout, the work a pass allows, the store's one sync at the end of
 * a pass, and the drains a stop or a reload starts. What the daemon is
 * made of and how a reload or a takeover changes it is daemon.c's
 * (daemon_int.h).
 */
#include "clock.h"
#include "daemon.h"

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "billmgr.h"
#include "bridge.h"
#include "broker.h"
#include "daemon_int.h"
#include "log.h"

/* The longest ppoll() wait: a bound on how late anything the loop did not
 * ask a deadline for can be noticed. */
#define DAEMON_MAX_WAIT_MS 5000
/* How soon a failed sync of the store is tried again. */
#define DAEMON_SYNC_RETRY_MS 250
/* The longest a commit nobody waits for (a confirmation's, a deferral's,
 * the journal's) stays unsynced when no later sync covers it. */
#define DAEMON_SYNC_TRAIL_MS 1000
/* The longest a pass's sync is held while the poll keeps finding work. */
#define DAEMON_SYNC_HOLD_MS 5

/* ---- signals --------------------------------------------------------- */

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

/* The signal dispositions and mask daemon_run replaces, put back when it
 * returns. */
struct daemon_sigsave {
    sigset_t mask;
    struct sigaction term, intr, hup, pipe;
};

/* Blocks SIGTERM, SIGINT and SIGHUP outside ppoll() (*wait_mask is the
 * mask ppoll() waits with), sets their handler and ignores SIGPIPE,
 * keeping what was there in old. */
static void daemon_signals_set(struct daemon_sigsave *old, sigset_t *wait_mask)
{
    sigset_t block;
    struct sigaction sa, ign;

    daemon_sig_stop = 0;
    daemon_sig_hup = 0;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGHUP);
    sigprocmask(SIG_BLOCK, &block, &old->mask);
    *wait_mask = old->mask;
    sigdelset(wait_mask, SIGTERM);
    sigdelset(wait_mask, SIGINT);
    sigdelset(wait_mask, SIGHUP);

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = daemon_on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, &old->term);
    sigaction(SIGINT, &sa, &old->intr);
    sigaction(SIGHUP, &sa, &old->hup);
    /* A peer that hangs up (a control client, the broker) must show as an
     * EPIPE error, not kill the daemon. */
    memset(&ign, 0, sizeof(ign));
    ign.sa_handler = SIG_IGN;
    sigemptyset(&ign.sa_mask);
    sigaction(SIGPIPE, &ign, &old->pipe);
}

static void daemon_signals_restore(const struct daemon_sigsave *old)
{
    sigaction(SIGPIPE, &old->pipe, NULL);
    sigaction(SIGHUP, &old->hup, NULL);
    sigaction(SIGINT, &old->intr, NULL);
    sigaction(SIGTERM, &old->term, NULL);
    sigprocmask(SIG_SETMASK, &old->mask, NULL);
}

/* ---- a pass ---------------------------------------------------------- */

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
    int64_t best = DAEMON_MAX_WAIT_MS, mono = clock_mono_ms();
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
    else if (d->sync_trail)
        daemon_wait_min(&best, d->sync_trail - mono);
    return best;
}

/* Commits nobody waits for are synced by the next pass that syncs; when
 * none comes (the last confirmations of a drain, a lone deferral), they
 * are synced DAEMON_SYNC_TRAIL_MS after a pass first left them unsynced,
 * so that what an idle daemon did is on disk within that time. */
static void daemon_sync_trail(struct daemon *d, int64_t mono)
{
    if (store_durable(d->st, store_mark(d->st)))
        d->sync_trail = 0;
    else if (!d->sync_trail)
        d->sync_trail = mono + DAEMON_SYNC_TRAIL_MS;
    else if (mono >= d->sync_trail)
        store_want_sync(d->st);
}

/* 1 when the pass's sync waits for the next pass. A pass whose poll found
 * work ready holds it, and the next pass polls without waiting: the sync
 * comes when a poll finds nothing ready, so that in a burst one fsync
 * covers what several passes committed (the answers that arrived while
 * the last pass ran), and an idle daemon syncs at once. The hold ends
 * after DAEMON_SYNC_HOLD_MS whatever the poll finds, which bounds what it
 * adds to an ack or a publish. */
static int daemon_sync_hold(struct daemon *d, int busy, int64_t mono)
{
    if (busy && !d->sync_held)
        d->sync_held = mono;
    if (busy && mono - d->sync_held < DAEMON_SYNC_HOLD_MS)
        return 1;
    d->sync_held = 0;
    return 0;
}

/* The end of a loop pass (busy: its poll found work): one sync for every
 * commit of the pass that an ack or a publish waits for, then those go
 * out (store.h, group commits). A failed sync releases nothing; it is
 * tried again after DAEMON_SYNC_RETRY_MS, its cause logged once. */
static void daemon_sync(struct daemon *d, int busy)
{
    int64_t mono = clock_mono_ms();
    if (!d->st)
        return;
    daemon_sync_trail(d, mono);
    if (store_sync_wanted(d->st) && !(d->sync_retry && mono < d->sync_retry) &&
        !daemon_sync_hold(d, busy, mono)) {
        if (store_sync(d->st) == RT_OK) {
            if (d->sync_trouble[0])
                log_info("the store syncs again");
            d->sync_trouble[0] = '\0';
            d->sync_retry = 0;
        } else {
            const char *cause = store_strcause(d->st);
            if (strcmp(cause, d->sync_trouble) != 0)
                log_error("cannot sync the store (acks and publishes wait): %s",
                          store_strerror(d->st));
            snprintf(d->sync_trouble, sizeof(d->sync_trouble), "%s", cause);
            d->sync_retry = mono + DAEMON_SYNC_RETRY_MS;
        }
    }
    /* Arms the trail for what this pass committed and did not sync. */
    daemon_sync_trail(d, mono);
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
    commands_expire(&d->cmds, clock_mono_ms());
    commands_status_flush(d, clock_mono_ms());
    if (d->core)
        core_tick(d->core);
    daemon_sync(d, rc > 0);
    return 0;

no_memory:
    log_error("the event loop ran out of memory");
    return -1;
}

/* ---- the loop -------------------------------------------------------- */

/* The line that says the daemon works: its version, instance, roles and
 * control socket. */
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

/* What the loop does after a step of its turn. */
enum daemon_next {
    DAEMON_NEXT_GO_ON, /* on with the turn */
    DAEMON_NEXT_TURN,  /* this turn is over: the next one */
    DAEMON_NEXT_STOP,  /* out of the loop: stopped */
    DAEMON_NEXT_FAIL,  /* out of the loop: failed */
};

/* A standby's turn, holding nothing (no socket, no store, no broker): the
 * signals, then the lock. Once the lock is ours, the turn goes on as an
 * active daemon's. */
static enum daemon_next daemon_standby_turn(struct daemon *d, int64_t now,
                                            const sigset_t *wait_mask)
{
    if (daemon_sig_stop)
        return DAEMON_NEXT_STOP;
    if (daemon_sig_hup) {
        daemon_sig_hup = 0;
        daemon_standby_reload(d);
    }
    if (daemon_standby_step(d, now) < 0)
        return DAEMON_NEXT_FAIL;
    if (d->standby) {
        struct timespec ts = {.tv_sec = 0, .tv_nsec = DAEMON_STANDBY_POLL_MS * 1000000L};
        (void)ppoll(NULL, 0, &ts, wait_mask);
        return DAEMON_NEXT_TURN;
    }
    daemon_log_start(d);
    return DAEMON_NEXT_GO_ON;
}

/* The signals an active daemon heard and the drains they start: a stop
 * drains the core and ends the loop once it is idle or its time is up; a
 * reload applies the new configuration on the same terms. */
static enum daemon_next daemon_drains(struct daemon *d, int64_t now)
{
    if (daemon_sig_stop && !d->stopping) {
        d->stopping = 1;
        d->stop_deadline = now + DAEMON_STOP_DRAIN_MS;
        config_free(d->pending);
        d->pending = NULL;
        core_drain(d->core);
        log_info("stopping: waiting up to %d s for work in flight", DAEMON_STOP_DRAIN_MS / 1000);
    }
    if (daemon_sig_hup) {
        daemon_sig_hup = 0;
        daemon_reload_load(d);
    }
    if (d->stopping) {
        if (core_idle(d->core))
            return DAEMON_NEXT_STOP;
        if (now >= d->stop_deadline) {
            log_warning("stopping with work still in flight after %d s: it stays in the "
                        "outbox and the queues for the next start",
                        DAEMON_STOP_DRAIN_MS / 1000);
            return DAEMON_NEXT_STOP;
        }
    } else if (d->pending && (core_idle(d->core) || now >= d->reload_deadline)) {
        daemon_reload_apply(d);
    }
    return DAEMON_NEXT_GO_ON;
}

int daemon_run(struct daemon *d)
{
    struct daemon_sigsave saved;
    sigset_t wait_mask;
    int status = 0;

    daemon_signals_set(&saved, &wait_mask);
    if (d->standby)
        log_info("remotetaskd %s standing by: another remotetaskd (pid %ld) works \"%s\"; "
                 "taking over when it ends",
                 RT_VERSION, daemon_lock_holder(d->lock_fd), d->cfg->state_dir);
    else
        daemon_log_start(d);
    for (;;) {
        int64_t now = clock_mono_ms();
        enum daemon_next next = DAEMON_NEXT_GO_ON;
        if (d->standby)
            next = daemon_standby_turn(d, now, &wait_mask);
        if (next == DAEMON_NEXT_GO_ON)
            next = daemon_drains(d, now);
        if (next == DAEMON_NEXT_TURN)
            continue;
        if (next != DAEMON_NEXT_GO_ON) {
            status = next == DAEMON_NEXT_FAIL;
            break;
        }
        if (!d->core && !d->stopping && now >= d->rebuild_at && daemon_core_rebuild(d) < 0)
            d->rebuild_at = now + DAEMON_REBUILD_RETRY_MS;
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
    daemon_signals_restore(&saved);
    return status;
}
