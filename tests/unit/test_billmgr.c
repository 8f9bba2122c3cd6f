/* Unit tests of common/billmgr: encoding, form bodies, answer mapping, the
 * JSON helpers, option checks and secrets. The transfer tests use loopback
 * sockets only (a closed port, a listener that never answers): no emulator,
 * no outside network. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cmocka.h>

#include "billmgr.h"
#include "buf.h"
#include "log.h"

#define SECRET "s3cr&t=pa+ss%word"

static void encode_expect(const char *in, const char *want)
{
    struct buf b;
    buf_init(&b, 1 << 20);
    assert_int_equal(billmgr_urlencode(&b, in), 0);
    assert_string_equal(buf_cstr(&b), want);
    buf_release(&b);
}

static void urlencode_rfc3986(void **state)
{
    encode_expect("", "");
    encode_expect("AZaz09-._~", "AZaz09-._~");
    encode_expect("a b&c=d+e%f\n\r\t", "a%20b%26c%3Dd%2Be%25f%0A%0D%09");
    encode_expect("Задача ü €", "%D0%97%D0%B0%D0%B4%D0%B0%D1%87%D0%B0%20%C3%BC%20%E2%82%AC");
    encode_expect("!*'();:@/?#[]", "%21%2A%27%28%29%3B%3A%40%2F%3F%23%5B%5D");
}

static void urlencode_long_and_capped(void **state)
{
    /* Longer than the encoder's internal chunk, all escaped. */
    char in[1001];
    memset(in, ' ', 1000);
    in[1000] = '\0';
    struct buf b;
    buf_init(&b, 1 << 20);
    assert_int_equal(billmgr_urlencode(&b, in), 0);
    assert_int_equal(b.len, 3000);
    for (size_t i = 0; i < 3000; i += 3)
        assert_memory_equal(b.data + i, "%20", 3);
    buf_release(&b);

    /* The cap of the output buffer is honoured. */
    buf_init(&b, 10);
    assert_int_equal(billmgr_urlencode(&b, "a&b&c&d"), -1);
    assert_true(b.len <= 10);
    buf_release(&b);
}

static void params_build_and_cap(void **state)
{
    struct billmgr_params p;
    billmgr_params_init(&p);
    assert_int_equal(billmgr_params_add(&p, "", "x"), -1);
    assert_int_equal(billmgr_params_add(&p, "k", NULL), -1);
    assert_int_equal(billmgr_params_addf(&p, "elid", "%ld", 42L), 0);
    assert_string_equal(p.v[0].key, "elid");
    assert_string_equal(p.v[0].value, "42");
    for (size_t i = 1; i < BILLMGR_MAX_PARAMS; i++)
        assert_int_equal(billmgr_params_addf(&p, "k", "%zu", i), 0);
    assert_int_equal(p.n, BILLMGR_MAX_PARAMS);
    assert_int_equal(billmgr_params_add(&p, "one", "too many"), -1);
    assert_int_equal(p.n, BILLMGR_MAX_PARAMS);
    billmgr_params_release(&p);
    assert_int_equal(p.n, 0);
    assert_null(p.v);
    billmgr_params_release(&p); /* released twice: harmless */
}

static void form_body_in_order(void **state)
{
    struct billmgr_params p;
    struct buf b;
    billmgr_params_init(&p);
    assert_int_equal(billmgr_params_add(&p, "sok", "ok"), 0);
    assert_int_equal(billmgr_params_add(&p, "name", "Fix & check = 100% + more"), 0);
    assert_int_equal(billmgr_params_add(&p, "note", "line 1\nline 2"), 0);
    assert_int_equal(billmgr_params_add(&p, "deadline", ""), 0);

    buf_init(&b, 1 << 20);
    assert_int_equal(billmgr_form_build(&b, "task.edit", &p, "authinfo", "user:p&ss"), 0);
    assert_string_equal(buf_cstr(&b), "func=task.edit&out=json&sok=ok"
                                      "&name=Fix%20%26%20check%20%3D%20100%25%20%2B%20more"
                                      "&note=line%201%0Aline%202&deadline="
                                      "&authinfo=user%3Ap%26ss");
    buf_reset(&b);
    assert_int_equal(billmgr_form_build(&b, "task", NULL, NULL, NULL), 0);
    assert_string_equal(buf_cstr(&b), "func=task&out=json");
    buf_release(&b);
    billmgr_params_release(&p);
}

/* ---- answer mapping ---- */

static rt_status parse(long code, const char *body, json_t **doc, struct billmgr_error *e)
{
    return billmgr_parse_reply(code, body, body ? strlen(body) : 0, doc, e);
}

static void reply_ok_gives_doc(void **state)
{
    json_t *doc = NULL;
    struct billmgr_error e;
    rt_status st = parse(200, "{\"doc\": {\"ok\": {}, \"id\": {\"$\": \"17\"}}}", &doc, &e);
    assert_int_equal(st, RT_OK);
    assert_non_null(doc);
    assert_non_null(json_object_get(doc, "ok"));
    long id = 0;
    assert_int_equal(billmgr_long(doc, "id", &id), 0);
    assert_int_equal(id, 17);
    assert_string_equal(e.type, "");
    assert_string_equal(e.object, "");
    assert_string_equal(e.message, "");
    json_decref(doc);
}

static void expect_api_error(const char *type, const char *object, const char *msg)
{
    char body[1024];
    json_t *doc = (json_t *)1;
    struct billmgr_error e;
    snprintf(body, sizeof(body),
             "{\"doc\": {\"error\": {\"$type\": \"%s\", \"$object\": \"%s\", "
             "\"msg\": {\"$\": \"%s\"}}}}",
             type, object, msg);
    assert_int_equal(parse(200, body, &doc, &e), RT_REJECT);
    assert_null(doc);
    assert_string_equal(e.type, type);
    assert_string_equal(e.object, object);
    assert_string_equal(e.message, msg);
}

static void reply_api_errors_reject(void **state)
{
    expect_api_error("auth", "", "Invalid username or password");
    expect_api_error("access", "task.delete", "Access denied");
    expect_api_error("missed", "elid", "Task 99 not found");
    expect_api_error("value", "deadline", "Bad value of deadline");
    expect_api_error("exists", "name", "Department exists");
    expect_api_error("license", "", "Some other error type");
}

static void reply_error_without_details(void **state)
{
    json_t *doc = NULL;
    struct billmgr_error e;
    assert_int_equal(parse(200, "{\"doc\": {\"error\": {}}}", &doc, &e), RT_REJECT);
    assert_null(doc);
    assert_string_equal(e.type, "unknown");
    assert_string_equal(e.object, "");
    assert_string_equal(e.message, "");
    /* A message given as the error's own text. */
    assert_int_equal(
        parse(200, "{\"doc\": {\"error\": {\"$type\": \"value\", \"$\": \"bad\"}}}", &doc, &e),
        RT_REJECT);
    assert_string_equal(e.type, "value");
    assert_string_equal(e.message, "bad");
}

static void reply_long_message_cut_on_utf8(void **state)
{
    /* 600 two-byte characters: the kept message ends on a whole one. */
    struct buf b;
    json_t *doc = NULL;
    struct billmgr_error e;
    buf_init(&b, 1 << 20);
    buf_append_str(&b, "{\"doc\": {\"error\": {\"$type\": \"value\", \"msg\": {\"$\": \"");
    for (int i = 0; i < 600; i++)
        buf_append_str(&b, "я");
    buf_append_str(&b, "\"}}}}");
    assert_int_equal(billmgr_parse_reply(200, b.data, b.len, &doc, &e), RT_REJECT);
    size_t n = strlen(e.message);
    assert_true(n < sizeof(e.message));
    assert_true(n > 400);
    assert_int_equal(n % 2, 0);
    assert_int_equal(memcmp(e.message + n - 2, "я", 2), 0);
    buf_release(&b);
}

static void reply_transport_failures_retry(void **state)
{
    json_t *doc = (json_t *)1;
    struct billmgr_error e;
    assert_int_equal(parse(503, "Service Unavailable", &doc, &e), RT_RETRY);
    assert_null(doc);
    assert_string_equal(e.type, "http");
    assert_non_null(strstr(e.message, "503"));
    assert_int_equal(parse(500, "{\"doc\": {\"ok\": {}}}", &doc, &e), RT_RETRY);
    assert_string_equal(e.type, "http");
    assert_int_equal(parse(302, "", &doc, &e), RT_RETRY);
    assert_string_equal(e.type, "http");
    assert_int_equal(parse(200, "<html>oops</html>", &doc, &e), RT_RETRY);
    assert_string_equal(e.type, "json");
    assert_null(strstr(e.message, "oops")); /* the answer is not echoed */
    assert_int_equal(parse(200, "", &doc, &e), RT_RETRY);
    assert_string_equal(e.type, "json");
    assert_int_equal(parse(200, NULL, &doc, &e), RT_RETRY);
    assert_string_equal(e.type, "json");
    assert_int_equal(parse(200, "{\"nodoc\": {}}", &doc, &e), RT_RETRY);
    assert_string_equal(e.type, "json");
    assert_int_equal(parse(200, "{\"doc\": \"text\"}", &doc, &e), RT_RETRY);
    assert_string_equal(e.type, "json");
    assert_int_equal(parse(200, "[1, 2]", &doc, &e), RT_RETRY);
    assert_string_equal(e.type, "json");
    assert_int_equal(parse(200, "{\"doc\": {\"x\": \"a\\u0000b\"}}", &doc, &e), RT_RETRY);
    assert_string_equal(e.type, "json");
}

/* ---- JSON helpers ---- */

static void text_and_long_helpers(void **state)
{
    json_error_t jerr;
    json_t *o =
        json_loads("{\"name\": {\"$\": \"Задача\"}, \"bare\": \"plain\", "
                   "\"n\": {\"$\": \"-12\"}, \"i\": 7, \"empty\": {\"$\": \"\"}, "
                   "\"junk\": {\"$\": \"12x\"}, \"big\": {\"$\": \"99999999999999999999\"}, "
                   "\"noval\": {\"$id\": \"3\"}, \"num\": {\"$\": 5}}",
                   0, &jerr);
    assert_non_null(o);
    assert_string_equal(billmgr_text(o, "name"), "Задача");
    assert_string_equal(billmgr_text(o, "bare"), "plain");
    assert_string_equal(billmgr_text(o, "empty"), "");
    assert_null(billmgr_text(o, "missing"));
    assert_null(billmgr_text(o, "noval"));
    assert_null(billmgr_text(o, "num"));
    assert_null(billmgr_text(NULL, "name"));
    assert_null(billmgr_text(json_object_get(o, "i"), "x"));

    long v = 1234;
    assert_int_equal(billmgr_long(o, "n", &v), 0);
    assert_int_equal(v, -12);
    assert_int_equal(billmgr_long(o, "i", &v), 0);
    assert_int_equal(v, 7);
    v = 1234;
    assert_int_equal(billmgr_long(o, "empty", &v), -1);
    assert_int_equal(billmgr_long(o, "junk", &v), -1);
    assert_int_equal(billmgr_long(o, "big", &v), -1);
    assert_int_equal(billmgr_long(o, "name", &v), -1);
    assert_int_equal(billmgr_long(o, "missing", &v), -1);
    assert_int_equal(billmgr_long(NULL, "n", &v), -1);
    assert_int_equal(v, 1234);
    json_decref(o);
}

/* ---- the handle ---- */

static struct billmgr_opts base_opts(const char *url)
{
    struct billmgr_opts o;
    memset(&o, 0, sizeof(o));
    o.url = url;
    o.login = "remotetask";
    o.password = SECRET;
    o.verify_tls = 1;
    return o;
}

static void new_refuses_bad_options(void **state)
{
    char err[256];
    struct billmgr_opts o = base_opts(NULL);
    assert_null(billmgr_new(&o, err, sizeof(err)));
    assert_true(strlen(err) > 0);

    o = base_opts("https://remotetask:"
                  "hunter2"
                  "@billing.example.com:1500/billmgr");
    assert_null(billmgr_new(&o, err, sizeof(err)));
    assert_non_null(strstr(err, "user or password"));
    assert_null(strstr(err, "hunter2"));

    o = base_opts("https://billing.example.com/billmgr?authinfo=remotetask:hunter2");
    assert_null(billmgr_new(&o, err, sizeof(err)));
    assert_non_null(strstr(err, "query"));
    assert_null(strstr(err, "hunter2"));

    o = base_opts("ftp://billing.example.com/billmgr");
    assert_null(billmgr_new(&o, err, sizeof(err)));
    assert_non_null(strstr(err, "http"));

    o = base_opts("not a url at all");
    assert_null(billmgr_new(&o, err, sizeof(err)));

    o = base_opts("https://billing.example.com:1500/billmgr");
    o.login = "";
    assert_null(billmgr_new(&o, err, sizeof(err)));

    o = base_opts("https://billing.example.com:1500/billmgr");
    struct billmgr *bm = billmgr_new(&o, err, sizeof(err));
    assert_non_null(bm);
    assert_int_equal(billmgr_inflight(bm), 0);
    assert_int_equal(billmgr_timeout_ms(bm), -1);
    billmgr_free(bm);
    billmgr_free(NULL);
}

static int cb_calls;

static void count_cb(void *arg, const struct billmgr_reply *r)
{
    cb_calls++;
}

static void free_cancels_without_callbacks(void **state)
{
    char err[256];
    struct billmgr_opts o = base_opts("http://127.0.0.1:9/billmgr");
    o.max_inflight = 1;
    o.max_queued = 2;
    struct billmgr *bm = billmgr_new(&o, err, sizeof(err));
    assert_non_null(bm);
    cb_calls = 0;
    assert_int_equal(billmgr_call(bm, "", NULL, count_cb, NULL), -1);
    assert_int_equal(billmgr_call(bm, NULL, NULL, count_cb, NULL), -1);
    /* One starts, two wait, the fourth passes the queue's cap. */
    assert_int_equal(billmgr_call(bm, "task", NULL, count_cb, NULL), 0);
    assert_int_equal(billmgr_call(bm, "task", NULL, count_cb, NULL), 0);
    assert_int_equal(billmgr_call(bm, "task", NULL, count_cb, NULL), 0);
    assert_int_equal(billmgr_call(bm, "task", NULL, count_cb, NULL), -1);
    assert_int_equal(billmgr_inflight(bm), 3);
    /* curl asks for a timer call at once to start the transfer. */
    assert_int_equal(billmgr_timeout_ms(bm), 0);
    billmgr_free(bm);
    assert_int_equal(cb_calls, 0);
}

static void debug_log_masks_secrets(void **state)
{
    char err[256];
    char path[] = "/tmp/test_billmgr_log.XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    int saved = dup(STDERR_FILENO);
    assert_true(saved >= 0);
    fflush(stderr);
    assert_true(dup2(fd, STDERR_FILENO) >= 0);
    log_init("test_billmgr", LOG_LEVEL_DEBUG, 0);

    struct billmgr_opts o = base_opts("http://127.0.0.1:9/billmgr");
    struct billmgr *bm = billmgr_new(&o, err, sizeof(err));
    assert_non_null(bm);
    struct billmgr_params p;
    billmgr_params_init(&p);
    billmgr_params_add(&p, "name", "staff member");
    billmgr_params_add(&p, "password", SECRET);
    assert_int_equal(billmgr_call(bm, "user.edit", &p, count_cb, NULL), 0);
    billmgr_params_release(&p);
    billmgr_free(bm);

    fflush(stderr);
    dup2(saved, STDERR_FILENO);
    close(saved);
    log_init("test_billmgr", LOG_LEVEL_WARNING, 0);

    char text[8192];
    ssize_t n = pread(fd, text, sizeof(text) - 1, 0);
    close(fd);
    unlink(path);
    assert_true(n > 0);
    text[n] = '\0';
    assert_non_null(strstr(text, "user.edit"));
    assert_non_null(strstr(text, "password=***"));
    assert_null(strstr(text, "s3cr"));
    assert_null(strstr(text, "s3cr%26t"));
    assert_null(strstr(text, "authinfo"));
}

/* ---- transfers over loopback ---- */

/* A TCP port on 127.0.0.1 that is listening (never accepting) when listen
 * is set, or that was just closed (connection refused) otherwise. */
static int loopback_port(int do_listen, int *fd_out)
{
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    if (do_listen) {
        assert_int_equal(listen(fd, 16), 0);
        *fd_out = fd;
    } else {
        close(fd);
        *fd_out = -1;
    }
    return ntohs(sa.sin_port);
}

static void refused_connection_is_transport_retry(void **state)
{
    char url[128], err[256];
    int fd;
    int port = loopback_port(0, &fd);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/billmgr", port);
    struct billmgr_opts o = base_opts(url);
    o.timeout_ms = 5000;
    struct billmgr *bm = billmgr_new(&o, err, sizeof(err));
    assert_non_null(bm);
    struct billmgr_error e;
    json_t *doc = (json_t *)1;
    rt_status st = billmgr_call_sync(bm, "task", NULL, &doc, &e);
    assert_int_equal(st, RT_RETRY);
    assert_null(doc);
    assert_string_equal(e.type, "transport");
    assert_true(strlen(e.message) > 0);
    assert_null(strstr(e.message, "s3cr"));
    assert_int_equal(billmgr_inflight(bm), 0);

    /* The same in session mode: the login fails and takes the call along. */
    billmgr_free(bm);
    o.auth_session = 1;
    bm = billmgr_new(&o, err, sizeof(err));
    assert_non_null(bm);
    st = billmgr_call_sync(bm, "task", NULL, NULL, &e);
    assert_int_equal(st, RT_RETRY);
    assert_string_equal(e.type, "transport");
    assert_non_null(strstr(e.message, "login"));
    assert_int_equal(billmgr_inflight(bm), 0);
    billmgr_free(bm);
}

static void silent_server_is_timeout_retry(void **state)
{
    char url[128], err[256];
    int fd;
    int port = loopback_port(1, &fd);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/billmgr", port);
    struct billmgr_opts o = base_opts(url);
    o.timeout_ms = 300;
    struct billmgr *bm = billmgr_new(&o, err, sizeof(err));
    assert_non_null(bm);
    struct billmgr_error e;
    rt_status st = billmgr_call_sync(bm, "task.edit", NULL, NULL, &e);
    assert_int_equal(st, RT_RETRY);
    assert_string_equal(e.type, "timeout");
    assert_null(strstr(e.message, "s3cr"));
    billmgr_free(bm);
    close(fd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(urlencode_rfc3986),
        cmocka_unit_test(urlencode_long_and_capped),
        cmocka_unit_test(params_build_and_cap),
        cmocka_unit_test(form_body_in_order),
        cmocka_unit_test(reply_ok_gives_doc),
        cmocka_unit_test(reply_api_errors_reject),
        cmocka_unit_test(reply_error_without_details),
        cmocka_unit_test(reply_long_message_cut_on_utf8),
        cmocka_unit_test(reply_transport_failures_retry),
        cmocka_unit_test(text_and_long_helpers),
        cmocka_unit_test(new_refuses_bad_options),
        cmocka_unit_test(free_cancels_without_callbacks),
        cmocka_unit_test(debug_log_masks_secrets),
        cmocka_unit_test(refused_connection_is_transport_retry),
        cmocka_unit_test(silent_server_is_timeout_retry),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
