#include "netprobe.h"
#include "clock.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#define NETPROBE_DEFAULT_TIMEOUT_MS 10000
#define NETPROBE_HOST_MAX 256

/* The AMQP 0-9-1 protocol header: what a client sends first. */
static const unsigned char netprobe_amqp_header[8] = {'A', 'M', 'Q', 'P', 0, 0, 9, 1};

enum netprobe_phase {
    NETPROBE_CONNECT = 0, /* TCP connect in progress */
    NETPROBE_TLS,         /* TLS handshake */
    NETPROBE_SEND,        /* sending the protocol header */
    NETPROBE_RECV,        /* waiting for the first byte of connection.start */
    NETPROBE_DONE,
};

struct netprobe {
    char host[NETPROBE_HOST_MAX];
    int port;
    int use_tls;
    int verify_peer;
    int verify_hostname;
    int timeout_ms;
    int64_t deadline; /* monotonic ms */

    struct addrinfo *addrs, *cur;
    int fd;
    short events;
    enum netprobe_phase phase;
    enum netprobe_state state;
    rt_status verdict;

    SSL_CTX *ctx;
    SSL *ssl;
    size_t sent; /* bytes of the protocol header written */
    char err[700];
};

static void netprobe_close(struct netprobe *p)
{
    if (p->ssl) {
        SSL_free(p->ssl);
        p->ssl = NULL;
    }
    if (p->fd >= 0) {
        close(p->fd);
        p->fd = -1;
    }
    p->events = 0;
}

/* Ends the probe as failed, with the reason prefixed by the node. */
static void netprobe_fail(struct netprobe *p, rt_status verdict, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void netprobe_fail(struct netprobe *p, rt_status verdict, const char *fmt, ...)
{
    char why[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    /* A host name is at most 255 bytes: both fit. */
    snprintf(p->err, sizeof(p->err), "%.255s:%d: %.390s", p->host, p->port, why);
    netprobe_close(p);
    p->phase = NETPROBE_DONE;
    p->state = NETPROBE_FAILED;
    p->verdict = verdict;
}

/* OpenSSL's first queued error as text, or what fallback says. */
static const char *netprobe_ssl_error(char *buf, size_t len, const char *fallback)
{
    unsigned long e = ERR_get_error();
    if (!e) {
        snprintf(buf, len, "%s", fallback);
        return buf;
    }
    ERR_error_string_n(e, buf, len);
    ERR_clear_error();
    return buf;
}

/* ---- TCP -------------------------------------------------------------- */

/* Starts a non-blocking connect to the current address; on an immediate
 * failure moves to the next one. Returns 0 when a connect is under way or
 * done, -1 when no address is left (the probe has failed). */
static int netprobe_connect_next(struct netprobe *p, int last_errno)
{
    for (; p->cur; p->cur = p->cur->ai_next) {
        int fd = socket(p->cur->ai_family, p->cur->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                        p->cur->ai_protocol);
        if (fd < 0) {
            last_errno = errno;
            continue;
        }
        int one = 1;
        (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (connect(fd, p->cur->ai_addr, p->cur->ai_addrlen) == 0 || errno == EINPROGRESS) {
            p->fd = fd;
            p->events = POLLOUT;
            p->phase = NETPROBE_CONNECT;
            return 0;
        }
        last_errno = errno;
        close(fd);
    }
    netprobe_fail(p, RT_RETRY, "cannot connect: %s", strerror(last_errno ? last_errno : ECONNREFUSED));
    return -1;
}

/* ---- TLS -------------------------------------------------------------- */

static int netprobe_is_ip(const char *host)
{
    unsigned char buf[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

/* The context: TLS 1.2 or later, the CA file or the system's store, the
 * client certificate. Returns 0, or -1 with the probe failed. */
static int netprobe_tls_context(struct netprobe *p, const struct netprobe_opts *o)
{
    char why[256];
    p->ctx = SSL_CTX_new(TLS_client_method());
    if (!p->ctx) {
        netprobe_fail(p, RT_RETRY, "TLS: %s", netprobe_ssl_error(why, sizeof(why), "out of memory"));
        return -1;
    }
    SSL_CTX_set_min_proto_version(p->ctx, TLS1_2_VERSION);
    int loaded = o->ca_file && *o->ca_file ? SSL_CTX_load_verify_locations(p->ctx, o->ca_file, NULL)
                                           : SSL_CTX_set_default_verify_paths(p->ctx);
    if (loaded != 1) {
        netprobe_fail(p, RT_REJECT, "TLS: cannot load the CA file \"%s\": %s",
                      o->ca_file && *o->ca_file ? o->ca_file : "(system store)",
                      netprobe_ssl_error(why, sizeof(why), "unreadable"));
        return -1;
    }
    if (o->cert_file && *o->cert_file) {
        if (SSL_CTX_use_certificate_chain_file(p->ctx, o->cert_file) != 1 ||
            SSL_CTX_use_PrivateKey_file(p->ctx, o->key_file ? o->key_file : "", SSL_FILETYPE_PEM) != 1 ||
            SSL_CTX_check_private_key(p->ctx) != 1) {
            netprobe_fail(p, RT_REJECT, "TLS: cannot load the client certificate \"%s\" with key \"%s\": %s",
                          o->cert_file, o->key_file ? o->key_file : "",
                          netprobe_ssl_error(why, sizeof(why), "unreadable"));
            return -1;
        }
    }
    SSL_CTX_set_verify(p->ctx, p->verify_peer ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
    return 0;
}

/* The TCP connection is up: start the handshake on it. */
static int netprobe_tls_begin(struct netprobe *p)
{
    char why[256];
    p->ssl = SSL_new(p->ctx);
    if (!p->ssl || SSL_set_fd(p->ssl, p->fd) != 1) {
        netprobe_fail(p, RT_RETRY, "TLS: %s", netprobe_ssl_error(why, sizeof(why), "out of memory"));
        return -1;
    }
    int is_ip = netprobe_is_ip(p->host);
    if (!is_ip)
        SSL_set_tlsext_host_name(p->ssl, p->host);
    if (p->verify_peer && p->verify_hostname) {
        X509_VERIFY_PARAM *param = SSL_get0_param(p->ssl);
        int ok = is_ip ? X509_VERIFY_PARAM_set1_ip_asc(param, p->host)
                       : X509_VERIFY_PARAM_set1_host(param, p->host, 0);
        if (ok != 1) {
            netprobe_fail(p, RT_REJECT, "TLS: cannot check the host name \"%s\"", p->host);
            return -1;
        }
    }
    p->phase = NETPROBE_TLS;
    return 0;
}

/* What a failed SSL call means: wait for the socket, or fail the probe. */
static void netprobe_tls_wait_or_fail(struct netprobe *p, int rc, const char *what)
{
    char why[256];
    int e = SSL_get_error(p->ssl, rc);
    if (e == SSL_ERROR_WANT_READ) {
        p->events = POLLIN;
        return;
    }
    if (e == SSL_ERROR_WANT_WRITE) {
        p->events = POLLOUT;
        return;
    }
    long vr = SSL_get_verify_result(p->ssl);
    if (p->phase == NETPROBE_TLS && p->verify_peer && vr != X509_V_OK) {
        ERR_clear_error();
        /* The one failure that only a person can fix: the certificate. */
        netprobe_fail(p, RT_REJECT, "TLS: certificate verify failed: %s",
                      X509_verify_cert_error_string(vr));
        return;
    }
    if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0)) {
        netprobe_fail(p, RT_RETRY, "TLS: the node closed the connection during the %s", what);
        return;
    }
    netprobe_fail(p, RT_RETRY, "TLS: %s failed: %s", what,
                  netprobe_ssl_error(why, sizeof(why), "unknown error"));
}

/* ---- the probe -------------------------------------------------------- */

struct netprobe *netprobe_new(const struct netprobe_opts *o, char *err, size_t errlen)
{
    struct netprobe *p = calloc(1, sizeof(*p));
    if (!p) {
        if (err && errlen)
            snprintf(err, errlen, "out of memory for a connection probe");
        return NULL;
    }
    p->fd = -1;
    p->state = NETPROBE_RUNNING;
    p->verdict = RT_OK;
    snprintf(p->host, sizeof(p->host), "%s", o && o->host ? o->host : "");
    p->port = o ? o->port : 0;
    p->use_tls = o && o->ssl;
    p->verify_peer = o && o->verify_peer;
    p->verify_hostname = o && o->verify_hostname;
    p->timeout_ms = o && o->timeout_ms > 0 ? o->timeout_ms : NETPROBE_DEFAULT_TIMEOUT_MS;
    p->deadline = clock_mono_ms() + p->timeout_ms;
    if (!o || !p->host[0] || p->port <= 0 || p->port > 65535) {
        netprobe_fail(p, RT_REJECT, "no host or port to probe");
        return p;
    }
    if (p->use_tls && netprobe_tls_context(p, o) < 0)
        return p;

    char port[16];
    snprintf(port, sizeof(port), "%d", p->port);
    struct addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    int rc = getaddrinfo(p->host, port, &hints, &p->addrs);
    if (rc != 0) {
        netprobe_fail(p, RT_RETRY, "cannot resolve the host: %s", gai_strerror(rc));
        return p;
    }
    p->cur = p->addrs;
    if (netprobe_connect_next(p, 0) == 0)
        (void)netprobe_step(p);
    return p;
}

void netprobe_free(struct netprobe *p)
{
    if (!p)
        return;
    netprobe_close(p);
    if (p->ctx)
        SSL_CTX_free(p->ctx);
    if (p->addrs)
        freeaddrinfo(p->addrs);
    /* Errors this probe queued in OpenSSL's thread-local queue must not be
     * read by the next user of the library (librabbitmq's own TLS). */
    ERR_clear_error();
    free(p);
}

int netprobe_fd(const struct netprobe *p)
{
    return p && p->state == NETPROBE_RUNNING ? p->fd : -1;
}

short netprobe_events(const struct netprobe *p)
{
    return p && p->state == NETPROBE_RUNNING ? p->events : 0;
}

int netprobe_timeout_ms(const struct netprobe *p)
{
    if (!p || p->state != NETPROBE_RUNNING)
        return -1;
    int64_t left = p->deadline - clock_mono_ms();
    return left > 0 ? (int)(left > INT32_MAX ? INT32_MAX : left) : 0;
}

enum netprobe_state netprobe_state(const struct netprobe *p)
{
    return p ? p->state : NETPROBE_FAILED;
}

rt_status netprobe_verdict(const struct netprobe *p)
{
    if (!p)
        return RT_RETRY;
    return p->state == NETPROBE_FAILED ? p->verdict : RT_OK;
}

const char *netprobe_strerror(const struct netprobe *p)
{
    return p ? p->err : "no probe";
}

static const char *netprobe_phase_name(enum netprobe_phase ph)
{
    switch (ph) {
    case NETPROBE_CONNECT: return "TCP connect";
    case NETPROBE_TLS: return "TLS handshake";
    case NETPROBE_SEND:
    case NETPROBE_RECV: return "AMQP handshake";
    case NETPROBE_DONE: break;
    }
    return "probe";
}

/* The TCP connect finished, one way or the other. */
static void netprobe_step_connect(struct netprobe *p)
{
    int soerr = 0;
    socklen_t len = sizeof(soerr);
    struct pollfd pfd = {.fd = p->fd, .events = POLLOUT};
    if (poll(&pfd, 1, 0) <= 0)
        return; /* still connecting */
    if (getsockopt(p->fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0)
        soerr = errno;
    if (soerr) {
        close(p->fd);
        p->fd = -1;
        p->cur = p->cur ? p->cur->ai_next : NULL;
        (void)netprobe_connect_next(p, soerr);
        return;
    }
    if (p->use_tls) {
        if (netprobe_tls_begin(p) == 0)
            p->events = POLLOUT;
        return;
    }
    p->phase = NETPROBE_SEND;
    p->events = POLLOUT;
}

static void netprobe_step_send(struct netprobe *p)
{
    while (p->sent < sizeof(netprobe_amqp_header)) {
        const unsigned char *b = netprobe_amqp_header + p->sent;
        size_t n = sizeof(netprobe_amqp_header) - p->sent;
        if (p->ssl) {
            int rc = SSL_write(p->ssl, b, (int)n);
            if (rc <= 0) {
                netprobe_tls_wait_or_fail(p, rc, "AMQP handshake");
                return;
            }
            p->sent += (size_t)rc;
            continue;
        }
        ssize_t rc = send(p->fd, b, n, MSG_NOSIGNAL);
        if (rc < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
                p->events = POLLOUT;
                return;
            }
            netprobe_fail(p, RT_RETRY, "sending the AMQP header: %s", strerror(errno));
            return;
        }
        p->sent += (size_t)rc;
    }
    p->phase = NETPROBE_RECV;
    p->events = POLLIN;
}

static void netprobe_step_recv(struct netprobe *p)
{
    unsigned char first;
    ssize_t n;
    if (p->ssl) {
        int rc = SSL_read(p->ssl, &first, 1);
        if (rc <= 0) {
            netprobe_tls_wait_or_fail(p, rc, "AMQP handshake");
            return;
        }
        n = rc;
    } else {
        n = recv(p->fd, &first, 1, 0);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                return;
            netprobe_fail(p, RT_RETRY, "waiting for the AMQP handshake: %s", strerror(errno));
            return;
        }
    }
    if (n == 0) {
        netprobe_fail(p, RT_RETRY, "the node closed the connection without an AMQP handshake");
        return;
    }
    /* connection.start comes in a method frame (type 1). A broker of
     * another protocol version answers with its own protocol header. */
    if (first != 1) {
        netprobe_fail(p, RT_REJECT, "the node does not speak AMQP 0-9-1 (it answered 0x%02x)", first);
        return;
    }
    netprobe_close(p);
    p->phase = NETPROBE_DONE;
    p->state = NETPROBE_ALIVE;
}

enum netprobe_state netprobe_step(struct netprobe *p)
{
    if (!p)
        return NETPROBE_FAILED;
    if (p->state != NETPROBE_RUNNING)
        return p->state;
    switch (p->phase) {
    case NETPROBE_CONNECT:
        netprobe_step_connect(p);
        if (p->phase != NETPROBE_TLS || p->state != NETPROBE_RUNNING)
            break;
        /* Start the handshake at once. */
        __attribute__((fallthrough));
    case NETPROBE_TLS: {
        int rc = SSL_connect(p->ssl);
        if (rc == 1) {
            p->phase = NETPROBE_SEND;
            netprobe_step_send(p);
        } else {
            netprobe_tls_wait_or_fail(p, rc, "TLS handshake");
        }
        break;
    }
    case NETPROBE_SEND:
        netprobe_step_send(p);
        break;
    case NETPROBE_RECV:
        netprobe_step_recv(p);
        break;
    case NETPROBE_DONE:
        break;
    }
    if (p->state == NETPROBE_RUNNING && p->phase == NETPROBE_SEND)
        netprobe_step_send(p);
    if (p->state == NETPROBE_RUNNING && p->phase == NETPROBE_RECV && p->ssl &&
        SSL_pending(p->ssl) > 0)
        netprobe_step_recv(p);
    if (p->state == NETPROBE_RUNNING && clock_mono_ms() >= p->deadline)
        netprobe_fail(p, RT_RETRY, "no answer within %d ms (during the %s)", p->timeout_ms,
                      netprobe_phase_name(p->phase));
    return p->state;
}

enum netprobe_state netprobe_run(struct netprobe *p)
{
    while (p && p->state == NETPROBE_RUNNING) {
        struct pollfd pfd = {.fd = p->fd, .events = p->events};
        int wait = netprobe_timeout_ms(p);
        if (poll(&pfd, 1, wait < 0 ? 0 : wait) < 0 && errno != EINTR) {
            netprobe_fail(p, RT_RETRY, "poll: %s", strerror(errno));
            break;
        }
        (void)netprobe_step(p);
    }
    return netprobe_state(p);
}
