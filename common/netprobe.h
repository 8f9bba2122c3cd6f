/*
 * netprobe.h - is an AMQP broker node alive? Asked without blocking.
 *
 * librabbitmq 0.11 connects, shakes hands over TLS and logs in with
 * blocking calls bounded only by a timeout, and a node that is frozen
 * (SIGSTOP, a blackholed link behind a live kernel) accepts the TCP
 * connection and then answers nothing. A daemon with one event loop that
 * called it directly would stop serving its control socket, its metrics
 * and its API calls for that long. A probe asks the node first, inside the
 * caller's poll loop: a non-blocking TCP connect, the TLS handshake (with
 * the same verification the connection will use) when the node is amqps,
 * then the AMQP 0-9-1 protocol header, and it waits for the first bytes
 * of the node's connection.start frame. A node that sends them is alive at
 * that moment, and the blocking connect that follows is a matter of
 * milliseconds; one that does not within the timeout is not tried.
 *
 * The probe also names why a TLS connection fails (the certificate has
 * expired, is signed by an unknown CA, names another host), which
 * librabbitmq reports only as "SSL peer verification failed".
 *
 * The caller polls netprobe_fd() for netprobe_events(), calls
 * netprobe_step() when the fd is ready or netprobe_timeout_ms() has
 * passed, until the state is ALIVE or FAILED; then frees the probe (which
 * closes its connection: the node sees a client that went away during the
 * handshake). Host names are resolved with getaddrinfo(), which blocks for
 * as long as the system's resolver takes: use addresses or a local resolver
 * for broker nodes.
 */
#ifndef RT_NETPROBE_H
#define RT_NETPROBE_H

#include <stddef.h>

#include "rt.h"

struct netprobe_opts {
    const char *host;
    int port;
    int ssl;               /* amqps: TLS before the AMQP header */
    const char *ca_file;   /* NULL or "" = the system's CA bundle */
    const char *cert_file; /* NULL or "" = no client certificate */
    const char *key_file;
    int verify_peer;
    int verify_hostname;
    int timeout_ms; /* for the whole probe; 0 = 10000 */
};

enum netprobe_state {
    NETPROBE_RUNNING = 0,
    NETPROBE_ALIVE,  /* the node answered the AMQP header */
    NETPROBE_FAILED, /* see netprobe_verdict() and netprobe_strerror() */
};

struct netprobe;

/* Starts a probe: resolves the host and begins a non-blocking connect.
 * Returns NULL only when memory ran out (err says so); any other failure,
 * an unknown host included, gives a probe in state FAILED. */
struct netprobe *netprobe_new(const struct netprobe_opts *o, char *err, size_t errlen);

/* Closes the probe's connection and frees it. Accepts NULL. */
void netprobe_free(struct netprobe *p);

/* The socket to poll (-1 once the probe ended) and the events it waits
 * for (POLLIN or POLLOUT). */
int netprobe_fd(const struct netprobe *p);
short netprobe_events(const struct netprobe *p);

/* Milliseconds until the probe's deadline (0 when it has passed), or -1
 * once it ended. */
int netprobe_timeout_ms(const struct netprobe *p);

/* Does whatever can be done now without blocking and returns the state.
 * Past the deadline a running probe fails ("no answer within N ms"). */
enum netprobe_state netprobe_step(struct netprobe *p);

/* The state, as the last step left it. */
enum netprobe_state netprobe_state(const struct netprobe *p);

/* For a failed probe: RT_REJECT when trying again cannot help until
 * someone changes a certificate or the configuration (the certificate did
 * not verify, the CA or client certificate files cannot be loaded, the
 * peer does not speak AMQP 0-9-1), else RT_RETRY. RT_OK otherwise. */
rt_status netprobe_verdict(const struct netprobe *p);

/* Why the probe failed, one line naming the node ("127.0.0.1:5671: TLS:
 * certificate verify failed: certificate has expired"); "" while it runs
 * or once it succeeded. Never holds a secret: the probe has none. */
const char *netprobe_strerror(const struct netprobe *p);

/* Runs a probe to its end, polling its socket: for command-line tools,
 * never for the daemon's loop. Returns its final state. */
enum netprobe_state netprobe_run(struct netprobe *p);

#endif
