/*
 * control.h - remotetaskd's control socket server (protocol: ctlproto.h).
 *
 * A Unix stream socket at the configured path, mode 0660. Each connection
 * carries one request line and gets one response line, then is closed.
 *
 * Who may talk to it. The daemon creates the socket file, so it is owned
 * by the daemon's effective uid and gid (the directory's group instead if
 * the directory is set-group-ID; the unit's /run/remotetask is not): the
 * mode lets the daemon's user and group connect. Every accepted connection
 * is then checked with SO_PEERCRED: uid 0 and the daemon's own effective
 * uid are served; any other uid, members of the daemon's group included,
 * is refused, as issue 9 asks: the peer gets one line,
 * {"ok":false,"error":"permission denied: ..."}, without its request being
 * read, and the connection is closed; no slot is taken. Each refused uid
 * is logged once at warning level with the uid and the pid (the first
 * CONTROL_REFUSED_UIDS uids; later ones at debug level) and every refusal
 * is counted (control_refused()). The group is refused because every
 * command of the socket acts on the daemon (checkevent publishes, resync
 * republishes) and BILLmanager's handlers, the only automated callers,
 * run as root; an operator who is not root uses sudo. taskevent needs no
 * socket for its effect (it writes the store; telling the daemon is best
 * effort), so a group member who may write the store still records events.
 * Everything is non-blocking and driven by the daemon's poll loop through
 * control_pollfds(), control_timeout_ms() and control_handle(). At most
 * CONTROL_MAX_CLIENTS connections are served at once (more wait in the
 * listen backlog until one ends); each must send its request within
 * CONTROL_CLIENT_TIMEOUT_MS, and a slow reader of its answer is dropped
 * after the same time.
 *
 * Commands are a table the owner passes to control_new(): the "cmd" member
 * of a request picks the handler. A handler gets a client handle and
 * answers with control_reply(), during its call or later (a command that
 * waits for something, like checkevent waiting for a sync_done, calls
 * control_defer() and replies when ready).
 */
#ifndef RT_CONTROL_H
#define RT_CONTROL_H

#include <poll.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#define CONTROL_MAX_CLIENTS       16
#define CONTROL_CLIENT_TIMEOUT_MS 5000
/* Entries control_pollfds() may fill: the listener and every client. */
#define CONTROL_MAX_POLLFDS (1 + CONTROL_MAX_CLIENTS)

struct control;
struct control_client;

/* Runs one command. req is the request object, borrowed for the call. The
 * handler must, before it returns, either answer with control_reply() or
 * call control_defer() and answer later; if it does neither, the client
 * gets {"ok":false,"error":"command \"x\" gave no answer"}. */
typedef void (*control_handler_fn)(void *arg, struct control_client *cl, json_t *req);

/* Tells a deferred command that its client is gone (it hung up, its
 * deadline passed, or the server is being freed): after this call the
 * handle is invalid and must not be passed to control_reply(). */
typedef void (*control_gone_fn)(void *arg, struct control_client *cl);

struct control_command {
    const char *name; /* the "cmd" of a request */
    control_handler_fn run;
};

/* Binds and listens on path. A file already there is removed only when it
 * is a socket that nobody answers on (connect gives ECONNREFUSED: a daemon
 * that died); a live daemon on it, or a file that is not a socket, makes
 * this fail. The directory must exist. The socket's mode is 0660.
 * commands[0..n) is borrowed for the server's life; arg is handed to every
 * handler. Returns NULL with a reason in err on failure. */
struct control *control_new(const char *path, const struct control_command *commands,
                            size_t n_commands, void *arg, char *err, size_t errlen);

/* Closes every connection (telling deferred commands through their gone
 * callback), closes the listener and removes the socket file if it is
 * still the one this server made. Accepts NULL. */
void control_free(struct control *c);

/* The path it listens on, as given to control_new(). */
const char *control_path(const struct control *c);

/* Connections refused by the peer check (another uid, or a peer whose
 * credentials could not be read) since this server was made. A reload
 * that keeps the socket keeps the server and its count; one that moves
 * the socket starts a new count. */
uint64_t control_refused(const struct control *c);

/* Fills fds (at most max entries; CONTROL_MAX_POLLFDS is always enough)
 * with the listener and the client sockets, revents zeroed, and returns
 * how many. */
size_t control_pollfds(struct control *c, struct pollfd *fds, size_t max);

/* Milliseconds until control_handle() must run even if no socket is ready
 * (the nearest client deadline, 0 when an answered client waits to be
 * cleaned up), or -1 when there is none. Deadlines use CLOCK_MONOTONIC. */
int control_timeout_ms(const struct control *c);

/* Handles the fds control_pollfds() gave, their revents filled in: accepts,
 * reads requests and runs their handlers, writes answers, drops clients
 * whose deadline passed. n = 0 only checks deadlines. */
void control_handle(struct control *c, const struct pollfd *fds, size_t n);

/* Answers a client: resp (a JSON object; the reference is stolen) is
 * written as one line, then the connection is closed. The handle is
 * invalid after this call. An answer too large for a line is replaced by
 * an error answer saying so. */
void control_reply(struct control_client *cl, json_t *resp);

/* Answers {"ok":false,"error":<printf text>}; as control_reply(). */
void control_reply_error(struct control_client *cl, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Keeps a client waiting for an answer up to timeout_ms from now (instead
 * of CONTROL_CLIENT_TIMEOUT_MS) and registers gone(arg, cl), called if the
 * client goes away before control_reply(). When the time runs out the
 * client is told {"ok":false,"error":"timed out ..."} after gone() ran. */
void control_defer(struct control_client *cl, int timeout_ms, control_gone_fn gone, void *arg);

#endif
