/*
 * metrics_http.h - the Prometheus endpoint: GET /metrics over libmicrohttpd.
 *
 * The server runs inside the daemon's single poll loop, never in a thread
 * of its own: libmicrohttpd is started in external epoll mode, the loop
 * watches one file descriptor (metrics_http_pollfd(), for POLLIN) and
 * honours one timeout (metrics_http_timeout_ms()), and calls
 * metrics_http_handle() when either fires. Every scrape calls the render
 * callback the daemon gave, inside metrics_http_handle(), so the numbers
 * are as fresh as the loop's own state.
 *
 * Answers: GET or HEAD /metrics gives 200 with the text exposition format
 * 0.0.4 (Content-Type "text/plain; version=0.0.4; charset=utf-8"); other
 * methods on /metrics give 405; any other path gives 404; a render that
 * fails gives 500. What a scraper can make the process hold is bounded:
 * at most METRICS_HTTP_MAX_CONNECTIONS connections (libmicrohttpd stops
 * accepting at the limit: more wait in the kernel's listen queue, of
 * METRICS_HTTP_BACKLOG, until one closes), of which at most
 * METRICS_HTTP_MAX_PER_IP from one address (so that one remote host cannot
 * take every slot; more from it are closed at once),
 * METRICS_HTTP_MEMORY_LIMIT bytes of request per connection (longer
 * request lines or headers get 414 or 431), idle connections closed after
 * METRICS_HTTP_TIMEOUT_S seconds, and a body of at most
 * METRICS_HTTP_MAX_BODY bytes. A request body is never read: the answer
 * goes out on the headers and the connection is closed after it.
 *
 * Every request must also be received and answered within
 * METRICS_HTTP_REQUEST_S seconds of the connection's start or of the end
 * of its previous request, or its connection is closed: the idle timeout
 * alone lets a peer that sends one byte now and then (slowloris) hold a
 * slot for ever, and 16 such peers keep every scrape out. Longer than the
 * idle timeout, so that a request that starts just before a kept-alive
 * connection would go idle still has time to finish. A connection whose
 * peer ended the stream before its request was whole is closed within
 * 200 ms (libmicrohttpd alone may hold it until the idle timeout).
 */
#ifndef RT_METRICS_HTTP_H
#define RT_METRICS_HTTP_H

#include <stddef.h>

#include "buf.h"

#define METRICS_HTTP_MAX_CONNECTIONS 16
#define METRICS_HTTP_MAX_PER_IP      8
#define METRICS_HTTP_BACKLOG         64
#define METRICS_HTTP_TIMEOUT_S       5
#define METRICS_HTTP_REQUEST_S       10
#define METRICS_HTTP_MEMORY_LIMIT    ((size_t)32 * 1024)
#define METRICS_HTTP_MAX_BODY        ((size_t)8 * 1024 * 1024)

/* Fills out (an empty buf capped at METRICS_HTTP_MAX_BODY) with the body
 * of one scrape. Returns 0, or -1 to answer 500 (metrics_render() failing
 * on the cap, say). Runs inside metrics_http_handle(). */
typedef int (*metrics_http_render_fn)(void *arg, struct buf *out);

struct metrics_http;

/* Listens on host:port: host is an IPv4 or IPv6 literal (without
 * brackets) or "localhost" (127.0.0.1), as config's metrics.host holds
 * it; port 0 picks a free port (see metrics_http_port). render and arg are
 * borrowed and must stay valid until metrics_http_free. Returns NULL with
 * a reason naming the address in err (an invalid host, the port taken,
 * no memory). */
struct metrics_http *metrics_http_new(const char *host, int port, metrics_http_render_fn render,
                                      void *arg, char *err, size_t errlen);

/* Closes the listening socket and every connection (a scrape in progress
 * is cut) and frees the server. Accepts NULL. */
void metrics_http_free(struct metrics_http *h);

/* The file descriptor to watch for POLLIN: libmicrohttpd's epoll set,
 * which becomes readable when the listening socket or a connection is. It
 * stays the same for the life of the server. */
int metrics_http_pollfd(const struct metrics_http *h);

/* Milliseconds until metrics_http_handle() must run even if the fd is not
 * readable (a connection's idle timeout or request deadline, or the next
 * look at an incomplete request): 0 = now, -1 = no deadline. */
int metrics_http_timeout_ms(const struct metrics_http *h);

/* Accepts connections, reads requests and writes answers that are ready,
 * without blocking, and closes idle connections and those whose request
 * is overdue. Call it after poll() when
 * the fd was readable or the timeout expired; calling it more often is
 * harmless. */
void metrics_http_handle(struct metrics_http *h);

/* The port the server listens on (the one picked, for port 0). */
int metrics_http_port(const struct metrics_http *h);

#endif
