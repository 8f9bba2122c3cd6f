#include "clock.h"
#include "control.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "ctlproto.h"
#include "log.h"

/* The longest command name quoted back in an error. */
#define CONTROL_CMD_SHOWN 64
/* The listen backlog: connections past CONTROL_MAX_CLIENTS wait there. */
#define CONTROL_BACKLOG 64
/* Refused uids remembered so that each is logged once; a uid past this
 * many is logged at debug level only, so that the log stays bounded. */
#define CONTROL_REFUSED_UIDS 32

enum control_state {
    CONTROL_READING = 0, /* waiting for the request line */
    CONTROL_PENDING = 1, /* request dispatched, no answer yet */
    CONTROL_WRITING = 2, /* answer being written */
    CONTROL_DONE = 3,    /* fd closed; freed by the next sweep */
};

struct control_client {
    struct control *srv;
    int fd;
    enum control_state state;
    struct buf in;
    char *out;
    size_t out_len, out_off;
    int64_t deadline; /* monotonic ms */
    int in_handler;   /* its handler is running right now */
    int deferred;
    control_gone_fn gone;
    void *gone_arg;
};

struct control {
    int fd;
    char *path;
    dev_t dev; /* of the socket file this server made */
    ino_t ino;
    int bound;
    const struct control_command *commands;
    size_t n_commands;
    void *arg;
    struct control_client *clients[CONTROL_MAX_CLIENTS];
    uid_t self; /* the daemon's effective uid, which may connect besides root */
    uint64_t refused;
    uid_t refused_uids[CONTROL_REFUSED_UIDS]; /* logged already */
    size_t n_refused_uids;
};

/* Is a live daemon behind the socket file at path? Returns 1 (yes), 0 (no:
 * the file may be removed), -1 with err set (cannot tell). */
static int control_probe(const struct sockaddr_un *addr, char *err, size_t errlen)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "cannot make a socket: %s", strerror(errno));
        return -1;
    }
    int rc = connect(fd, (const struct sockaddr *)addr, sizeof(*addr));
    int e = errno;
    close(fd);
    if (rc == 0 || e == EAGAIN)
        return 1; /* someone accepts (or has a full backlog): alive */
    if (e == ECONNREFUSED)
        return 0;
    snprintf(err, errlen, "cannot check the control socket \"%s\": %s", addr->sun_path,
             strerror(e));
    return -1;
}

/* Removes a socket file left by a daemon that died, and only that. */
static int control_clear_stale(const char *path, const struct sockaddr_un *addr, char *err,
                               size_t errlen)
{
    struct stat st;
    if (lstat(path, &st) < 0) {
        if (errno == ENOENT)
            return 0;
        snprintf(err, errlen, "cannot check the control socket \"%s\": %s", path, strerror(errno));
        return -1;
    }
    if (!S_ISSOCK(st.st_mode)) {
        snprintf(err, errlen,
                 "control socket \"%s\" exists and is not a socket: remove it or set another "
                 "control_socket",
                 path);
        return -1;
    }
    int live = control_probe(addr, err, errlen);
    if (live < 0)
        return -1;
    if (live) {
        snprintf(err, errlen, "another remotetaskd is running: it answers on \"%s\"", path);
        return -1;
    }
    if (unlink(path) < 0 && errno != ENOENT) {
        snprintf(err, errlen, "cannot remove the stale control socket \"%s\": %s", path,
                 strerror(errno));
        return -1;
    }
    log_info("removed the stale control socket \"%s\" (nothing answered on it)", path);
    return 0;
}

struct control *control_new(const char *path, const struct control_command *commands,
                            size_t n_commands, void *arg, char *err, size_t errlen)
{
    struct sockaddr_un addr;
    struct stat st;
    char why[CTLPROTO_ERR_MAX];

    if (ctlproto_addr(path, &addr, why, sizeof(why)) < 0) {
        snprintf(err, errlen, "%s", why);
        return NULL;
    }
    struct control *c = calloc(1, sizeof(*c));
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    c->fd = -1;
    c->self = geteuid();
    c->commands = commands;
    c->n_commands = n_commands;
    c->arg = arg;
    c->path = strdup(path);
    if (!c->path) {
        snprintf(err, errlen, "out of memory");
        goto free_control;
    }
    if (control_clear_stale(path, &addr, err, errlen) < 0)
        goto free_control;
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        snprintf(err, errlen, "cannot make a socket: %s", strerror(errno));
        goto free_control;
    }
    /* The umask makes the file 0660 from the moment it exists, so that no
     * other user can connect in the window before the chmod below. The
     * daemon has one thread, so the process-wide umask is ours to borrow. */
    mode_t old_mask = umask(0117);
    int rc = bind(c->fd, (const struct sockaddr *)&addr, sizeof(addr));
    int e = errno;
    umask(old_mask);
    if (rc < 0) {
        snprintf(err, errlen, "cannot bind the control socket \"%s\": %s%s", path, strerror(e),
                 e == ENOENT ? " (its directory must exist)" : "");
        goto free_control;
    }
    if (stat(path, &st) < 0) {
        snprintf(err, errlen, "cannot stat the control socket \"%s\": %s", path, strerror(errno));
        goto free_control;
    }
    c->bound = 1;
    c->dev = st.st_dev;
    c->ino = st.st_ino;
    if (chmod(path, 0660) < 0) {
        snprintf(err, errlen, "cannot set the mode of the control socket \"%s\": %s", path,
                 strerror(errno));
        goto free_control;
    }
    if (listen(c->fd, CONTROL_BACKLOG) < 0) {
        snprintf(err, errlen, "cannot listen on the control socket \"%s\": %s", path,
                 strerror(errno));
        goto free_control;
    }
    return c;

free_control:
    control_free(c);
    return NULL;
}

static void control_client_close(struct control_client *cl)
{
    /* Closing a Unix socket with unread input resets the connection, and
     * the peer may then lose the answer written just before (an over-long
     * request is refused while its tail is still arriving). What has
     * arrived is discarded first, within a bound. */
    char scratch[4096];
    for (int i = 0; cl->fd >= 0 && i < 64; i++)
        if (recv(cl->fd, scratch, sizeof(scratch), MSG_DONTWAIT) <= 0)
            break;
    if (cl->fd >= 0)
        close(cl->fd);
    cl->fd = -1;
    cl->state = CONTROL_DONE;
}

/* Tells a deferred command that its client is gone, once. */
static void control_client_gone(struct control_client *cl)
{
    control_gone_fn gone = cl->gone;
    cl->gone = NULL;
    if (cl->state == CONTROL_PENDING && gone)
        gone(cl->gone_arg, cl);
}

static void control_client_free(struct control_client *cl)
{
    if (!cl)
        return;
    if (cl->fd >= 0)
        close(cl->fd);
    buf_release(&cl->in);
    free(cl->out);
    free(cl);
}

void control_free(struct control *c)
{
    struct stat st;

    if (!c)
        return;
    for (size_t i = 0; i < CONTROL_MAX_CLIENTS; i++) {
        struct control_client *cl = c->clients[i];
        if (!cl)
            continue;
        control_client_gone(cl);
        control_client_free(cl);
        c->clients[i] = NULL;
    }
    if (c->fd >= 0)
        close(c->fd);
    /* Another daemon may have replaced the file meanwhile (after an
     * operator removed ours): only our own file is removed. */
    if (c->bound && c->path && stat(c->path, &st) == 0 && st.st_dev == c->dev &&
        st.st_ino == c->ino)
        unlink(c->path);
    free(c->path);
    free(c);
}

const char *control_path(const struct control *c)
{
    return c->path;
}

uint64_t control_refused(const struct control *c)
{
    return c ? c->refused : 0;
}

size_t control_pollfds(struct control *c, struct pollfd *fds, size_t max)
{
    size_t n = 0, used = 0;
    for (size_t i = 0; i < CONTROL_MAX_CLIENTS; i++)
        used += c->clients[i] != NULL;
    /* While every slot is taken, new connections wait in the listen
     * backlog (their own timeout decides how long) instead of being
     * accepted only to be turned away. */
    if (n < max && c->fd >= 0 && used < CONTROL_MAX_CLIENTS)
        fds[n++] = (struct pollfd){.fd = c->fd, .events = POLLIN};
    for (size_t i = 0; i < CONTROL_MAX_CLIENTS && n < max; i++) {
        struct control_client *cl = c->clients[i];
        if (!cl || cl->fd < 0)
            continue;
        /* A pending client is watched for input too: that is how a hang-up
         * is noticed while its command is still running. */
        short ev = cl->state == CONTROL_WRITING ? POLLOUT : POLLIN;
        fds[n++] = (struct pollfd){.fd = cl->fd, .events = ev};
    }
    return n;
}

int control_timeout_ms(const struct control *c)
{
    int64_t now = clock_mono_ms(), best = -1;
    for (size_t i = 0; i < CONTROL_MAX_CLIENTS; i++) {
        const struct control_client *cl = c->clients[i];
        if (!cl)
            continue;
        if (cl->state == CONTROL_DONE)
            return 0;
        int64_t left = cl->deadline - now;
        if (left < 0)
            left = 0;
        if (best < 0 || left < best)
            best = left;
    }
    return best > INT32_MAX ? INT32_MAX : (int)best;
}

/* Writes what it can of the answer; closes the connection when all of it
 * went, or when the peer is gone. */
static void control_client_flush(struct control_client *cl)
{
    while (cl->out_off < cl->out_len) {
        ssize_t n = send(cl->fd, cl->out + cl->out_off, cl->out_len - cl->out_off, MSG_NOSIGNAL);
        if (n > 0) {
            cl->out_off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        log_debug("control client went away before its answer was written: %s",
                  n < 0 ? strerror(errno) : "closed");
        break;
    }
    control_client_close(cl);
}

void control_reply(struct control_client *cl, json_t *resp)
{
    char why[CTLPROTO_ERR_MAX];
    size_t len = 0;

    if (cl->state != CONTROL_READING && cl->state != CONTROL_PENDING) {
        /* A second answer to one request: a bug in a handler, harmless to
         * the client, which got the first. */
        log_warning("control answer dropped: the client was already answered");
        json_decref(resp);
        return;
    }
    char *line = resp ? ctlproto_encode(resp, &len, why, sizeof(why)) : NULL;
    json_decref(resp);
    if (!line) {
        json_t *e = json_pack("{s:b,s:s}", "ok", 0, "error",
                              resp ? why : "out of memory building the answer");
        line = e ? ctlproto_encode(e, &len, why, sizeof(why)) : NULL;
        json_decref(e);
    }
    if (!line) {
        log_warning("cannot answer a control client: %s", why);
        control_client_close(cl);
        return;
    }
    cl->out = line;
    cl->out_len = len;
    cl->out_off = 0;
    cl->state = CONTROL_WRITING;
    cl->gone = NULL;
    cl->deadline = clock_mono_ms() + CONTROL_CLIENT_TIMEOUT_MS;
    control_client_flush(cl);
}

void control_reply_error(struct control_client *cl, const char *fmt, ...)
{
    char text[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    control_reply(cl, json_pack("{s:b,s:s}", "ok", 0, "error", text));
}

void control_defer(struct control_client *cl, int timeout_ms, control_gone_fn gone, void *arg)
{
    if (cl->state != CONTROL_PENDING)
        return;
    cl->deferred = 1;
    cl->gone = gone;
    cl->gone_arg = arg;
    cl->deadline = clock_mono_ms() + (timeout_ms > 0 ? timeout_ms : 0);
}

static void control_dispatch(struct control *c, struct control_client *cl, json_t *req)
{
    json_t *cmd = json_object_get(req, "cmd");
    if (!json_is_string(cmd)) {
        control_reply_error(cl, "the request has no \"cmd\" string");
        return;
    }
    const char *name = json_string_value(cmd);
    for (size_t i = 0; i < c->n_commands; i++) {
        if (strcmp(c->commands[i].name, name) != 0)
            continue;
        cl->in_handler = 1;
        c->commands[i].run(c->arg, cl, req);
        cl->in_handler = 0;
        if (cl->state == CONTROL_PENDING && !cl->deferred)
            control_reply_error(cl, "command \"%.*s\" gave no answer", CONTROL_CMD_SHOWN, name);
        return;
    }
    log_debug("control request for an unknown command \"%.*s\"", CONTROL_CMD_SHOWN, name);
    control_reply_error(cl, "unknown command \"%.*s\"", CONTROL_CMD_SHOWN, name);
}

/* Reads what has arrived; dispatches a complete request line. */
static void control_client_read(struct control *c, struct control_client *cl)
{
    char chunk[4096];
    for (;;) {
        ssize_t n = recv(cl->fd, chunk, sizeof(chunk), 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n <= 0) {
            /* A hang-up before the answer: nobody will read it. */
            control_client_gone(cl);
            control_client_close(cl);
            return;
        }
        if (cl->state == CONTROL_PENDING)
            return; /* one request per connection: the rest is dropped, a
                       chunk per turn so that a chatty peer cannot hold
                       the loop */
        size_t room = cl->in.max - cl->in.len;
        if (buf_append(&cl->in, chunk, (size_t)n < room ? (size_t)n : room) < 0) {
            control_reply_error(cl, "out of memory reading the request");
            return;
        }
        size_t line_len = 0;
        switch (ctlproto_scan(cl->in.data, cl->in.len, &line_len)) {
        case CTLPROTO_PARTIAL: continue;
        case CTLPROTO_TOO_LONG:
            control_reply_error(cl, "the request is longer than %zu bytes", CTLPROTO_LINE_MAX);
            return;
        case CTLPROTO_LINE: break;
        }
        char why[CTLPROTO_ERR_MAX];
        json_t *req = NULL;
        cl->state = CONTROL_PENDING;
        if (ctlproto_decode(cl->in.data, line_len, &req, why, sizeof(why)) != RT_OK) {
            control_reply_error(cl, "bad request: %s", why);
            return;
        }
        control_dispatch(c, cl, req);
        json_decref(req);
        buf_release(&cl->in);
        if (cl->state != CONTROL_PENDING)
            return;
    }
}

/* Logs a refused uid the first time it is seen (up to
 * CONTROL_REFUSED_UIDS uids), at debug level after that. */
static void control_log_refused(struct control *c, uid_t uid, pid_t pid)
{
    for (size_t i = 0; i < c->n_refused_uids; i++) {
        if (c->refused_uids[i] == uid) {
            log_debug("control connection refused from uid %u (pid %d) again", (unsigned)uid,
                      (int)pid);
            return;
        }
    }
    if (c->n_refused_uids == CONTROL_REFUSED_UIDS) {
        log_debug("control connection refused from uid %u (pid %d)", (unsigned)uid, (int)pid);
        return;
    }
    c->refused_uids[c->n_refused_uids++] = uid;
    log_warning("control connection refused from uid %u (pid %d): only root and the daemon's "
                "user (uid %u) may use the control socket \"%s\"; further refusals of this uid "
                "are not logged",
                (unsigned)uid, (int)pid, (unsigned)c->self, c->path);
}

/* Is the peer of a connection just accepted root or the daemon's own user?
 * Otherwise the connection is answered with one error line, without
 * reading the request, and closed: the file's mode is the first gate, and
 * this one holds even when the mode or the directory was loosened. */
static int control_peer_allowed(struct control *c, int fd)
{
    static const char refusal[] = "{\"ok\":false,\"error\":\"permission denied: only root and "
                                  "the daemon's user may use the control socket\"}\n";
    struct ucred peer;
    socklen_t len = sizeof(peer);

    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &len) < 0 || len != sizeof(peer)) {
        log_warning("control connection dropped: cannot tell who it is from: %s", strerror(errno));
        c->refused++;
        close(fd);
        return 0;
    }
    if (peer.uid == 0 || peer.uid == c->self)
        return 1;
    c->refused++;
    control_log_refused(c, peer.uid, peer.pid);
    /* What the peer sent already is discarded first, so that the close
     * does not reset the connection before the line is read. */
    char scratch[4096];
    for (int i = 0; i < 16; i++)
        if (recv(fd, scratch, sizeof(scratch), MSG_DONTWAIT) <= 0)
            break;
    (void)send(fd, refusal, sizeof(refusal) - 1, MSG_DONTWAIT | MSG_NOSIGNAL);
    close(fd);
    return 0;
}

static void control_accept(struct control *c)
{
    /* Only free slots take a connection: the others wait in the backlog.
     * Refused peers take no slot, so the number of connections taken per
     * call is bounded on its own: a flood of them cannot hold the loop. */
    for (int taken = 0; taken < CONTROL_BACKLOG; taken++) {
        size_t slot = 0;
        while (slot < CONTROL_MAX_CLIENTS && c->clients[slot])
            slot++;
        if (slot == CONTROL_MAX_CLIENTS)
            return;
        int fd;
        do
            fd = accept4(c->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        while (fd < 0 && errno == EINTR);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                log_warning("cannot accept on the control socket \"%s\": %s", c->path,
                            strerror(errno));
            return;
        }
        if (!control_peer_allowed(c, fd))
            continue;
        struct control_client *cl = calloc(1, sizeof(*cl));
        if (!cl) {
            log_warning("control connection dropped: out of memory");
            close(fd);
            return;
        }
        cl->srv = c;
        cl->fd = fd;
        cl->state = CONTROL_READING;
        buf_init(&cl->in, CTLPROTO_LINE_MAX);
        cl->deadline = clock_mono_ms() + CONTROL_CLIENT_TIMEOUT_MS;
        c->clients[slot] = cl;
    }
}

static struct control_client *control_find_fd(struct control *c, int fd)
{
    for (size_t i = 0; i < CONTROL_MAX_CLIENTS; i++)
        if (c->clients[i] && c->clients[i]->fd == fd)
            return c->clients[i];
    return NULL;
}

/* Deadlines, then frees the clients that are done. */
static void control_sweep(struct control *c)
{
    int64_t now = clock_mono_ms();
    for (size_t i = 0; i < CONTROL_MAX_CLIENTS; i++) {
        struct control_client *cl = c->clients[i];
        if (!cl)
            continue;
        if (cl->state != CONTROL_DONE && now >= cl->deadline) {
            switch (cl->state) {
            case CONTROL_READING:
                log_debug("control client sent no request within %d ms: dropped",
                          CONTROL_CLIENT_TIMEOUT_MS);
                control_client_close(cl);
                break;
            case CONTROL_PENDING:
                control_client_gone(cl);
                control_reply_error(cl, "timed out waiting for the answer");
                break;
            case CONTROL_WRITING:
                log_debug("control client did not read its answer within %d ms: dropped",
                          CONTROL_CLIENT_TIMEOUT_MS);
                control_client_close(cl);
                break;
            case CONTROL_DONE: break;
            }
        }
        if (cl->state == CONTROL_DONE && !cl->in_handler) {
            control_client_free(cl);
            c->clients[i] = NULL;
        }
    }
}

void control_handle(struct control *c, const struct pollfd *fds, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!fds[i].revents)
            continue;
        if (fds[i].fd == c->fd) {
            control_accept(c);
            continue;
        }
        struct control_client *cl = control_find_fd(c, fds[i].fd);
        if (!cl || cl->fd < 0)
            continue;
        if (cl->state == CONTROL_WRITING) {
            if (fds[i].revents & (POLLOUT | POLLERR | POLLHUP))
                control_client_flush(cl);
        } else if (cl->state == CONTROL_READING || cl->state == CONTROL_PENDING) {
            control_client_read(c, cl);
        }
    }
    control_sweep(c);
}
