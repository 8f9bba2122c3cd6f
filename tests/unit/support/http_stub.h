/* A loopback HTTP/1.1 server for unit tests: the transport half of a
 * BILLmanager stand-in, shared so that each test keeps only the half that
 * is its own (what BILLmanager answers).
 *
 * The contract:
 * - http_stub_start() listens on 127.0.0.1 at a port the kernel picks and
 *   serves from a thread of its own until http_stub_stop().
 * - Connections are taken one at a time, one request per connection: the
 *   answer carries "Connection: close" and the stub closes its end after
 *   it. A client with more requests in flight waits in the listen backlog.
 * - Only the request body matters: the request line and the headers are
 *   read (for Content-Length) and otherwise ignored, so any method works,
 *   though the clients under test send POST.
 * - The request, head and body, is capped at HTTP_STUB_MAX_REQUEST bytes:
 *   a longer one is answered 413 without calling answer(), a connection
 *   closed or broken before the whole request arrived is dropped unanswered.
 * - answer() runs on the stub's thread, never two at a time; whatever it
 *   shares with the test's thread it guards itself. It must not call
 *   cmocka assertions (they jump within the calling thread): it records a
 *   failure for the test's thread to check instead. */
#ifndef RT_TESTS_HTTP_STUB_H
#define RT_TESTS_HTTP_STUB_H

#include <stddef.h>

/* The most bytes one request may take, head and body together. */
#define HTTP_STUB_MAX_REQUEST 65536

/* Answers one request: body is the request body, NUL-terminated (Content-
 * Length bytes; the empty string when there is none). Returns the HTTP
 * status and sets *out to a malloc'd, NUL-terminated response body, which
 * the stub sends with any status and frees; *out left NULL sends none. The
 * response's Content-Type is application/json. */
typedef int (*http_stub_answer_fn)(void *arg, const char *body, char **out);

struct http_stub;

/* Listens on 127.0.0.1, port 0, and starts the serving thread, which hands
 * each request body to answer(arg, ...). Returns the stub, or NULL with
 * the reason in err (errlen bytes, always terminated) when the socket or
 * the thread cannot be had; nothing is left open then. */
struct http_stub *http_stub_start(http_stub_answer_fn answer, void *arg, char *err, size_t errlen);

/* The port the stub listens on (host byte order). */
int http_stub_port(const struct http_stub *s);

/* Stops the thread (a request being served is finished or dropped first),
 * joins it, closes the sockets and frees the stub. Accepts NULL. */
void http_stub_stop(struct http_stub *s);

#endif
