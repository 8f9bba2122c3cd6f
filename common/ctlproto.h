/*
 * ctlproto.h - the control socket's protocol, shared by remotetaskd and
 * remotetaskctl.
 *
 * A Unix stream socket. The client connects, writes one request line, the
 * server writes one response line and closes. A line is one compact JSON
 * object followed by "\n", at most CTLPROTO_LINE_MAX bytes with its
 * newline. Requests name a command: {"cmd":"ping"}; responses say whether
 * it worked: {"ok":true,...} or {"ok":false,"error":"..."}.
 *
 * The client side is ctlproto_request(); the server side (bridge/control.c)
 * uses the framing helpers ctlproto_scan(), ctlproto_decode() and
 * ctlproto_encode(), so that both ends frame lines the same way.
 */
#ifndef RT_CTLPROTO_H
#define RT_CTLPROTO_H

#include <stddef.h>
#include <sys/un.h>

#include <jansson.h>

#include "rt.h"

/* The cap on one line, its newline included: a peer that sends more is
 * refused rather than buffered. */
#define CTLPROTO_LINE_MAX ((size_t)64 * 1024)

/* The start of ctlproto_request()'s reason when no daemon is there at all
 * (no socket file, or nothing listening on it), as opposed to a daemon
 * that did not answer: a caller may test for it with strncmp(). */
#define CTLPROTO_NOT_RUNNING "remotetaskd is not running"

/* Room for a reason written by the functions below. */
#define CTLPROTO_ERR_MAX 512

enum ctlproto_scan {
    CTLPROTO_PARTIAL = 0,  /* no newline yet, and there is room for more */
    CTLPROTO_LINE = 1,     /* a whole line is there */
    CTLPROTO_TOO_LONG = 2, /* no newline within CTLPROTO_LINE_MAX bytes */
};

/* Looks for the end of the first line in data[0..len). On CTLPROTO_LINE
 * *line_len is the line's length without its newline; otherwise it is left
 * alone. Never reads past len. */
enum ctlproto_scan ctlproto_scan(const char *data, size_t len, size_t *line_len);

/* Parses one line (without its newline) as a JSON object. RT_OK: *out is a
 * new reference the caller json_decref's. RT_REJECT with a reason in err:
 * the line is not JSON, not an object, holds a NUL or a duplicate key, or
 * is longer than the cap; *out is then NULL. */
rt_status ctlproto_decode(const char *line, size_t len, json_t **out, char *err, size_t errlen);

/* Encodes msg as one compact line ending in "\n". Returns a malloc'ed,
 * NUL-terminated string the caller frees, with its length (newline
 * included) in *len_out; NULL with a reason in err when msg cannot be
 * encoded or the line would pass CTLPROTO_LINE_MAX. */
char *ctlproto_encode(const json_t *msg, size_t *len_out, char *err, size_t errlen);

/* Fills a Unix socket address from path. Returns 0, or -1 with a reason in
 * err when path is empty or too long for sun_path. */
int ctlproto_addr(const char *path, struct sockaddr_un *addr, char *err, size_t errlen);

/* Sends one request to the daemon listening on socket_path and waits for
 * its answer, all of it within timeout_ms (connect, write and read).
 * RT_OK: *resp is a new reference to the answer object (json_decref it);
 * whether the command worked is in its "ok" member. A daemon may answer
 * and close before it has read the request (a peer it does not serve):
 * that answer is returned as RT_OK too.
 * RT_RETRY: the daemon is not there (no socket file, nothing listening),
 * did not answer in time, or closed without an answer; err says which in a
 * sentence an operator can act on.
 * RT_REJECT: the path is unusable, access to the socket was refused, the
 * request cannot be encoded, or the answer is not a JSON object line.
 * On failure *resp is NULL. Never raises SIGPIPE. */
rt_status ctlproto_request(const char *socket_path, const json_t *req, json_t **resp,
                           int timeout_ms, char *err, size_t errlen);

#endif
