/* Unit tests of common/billmgr: encoding, form bodies, answer mapping, the
 * JSON helpers, option checks and secrets, and hostile answers: not JSON,
 * the wrong shape, an HTML login page, a body that trickles, stalls, is
 * reset halfway or never ends. The transfer tests use loopback sockets
 * only (a closed port, a listener that never answers, a scripted server
 * thread of this program): no emulator, no outside network. */
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
#include <poll.h>
#include <pthread.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>

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
    return billmgr_parse_reply(code, "application/json", body, body ? strlen(body) : 0, 0, doc, e);
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
    assert_int_equal(billmgr_parse_reply(200, NULL, b.data, b.len, 0, &doc, &e), RT_REJECT);
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
    /* A short, cleaned excerpt of the answer says what came instead. */
    assert_string_equal(e.message, "answer is not JSON (application/json, 17 bytes, invalid "
                                   "syntax at byte 1): it begins <html>oops</html>");
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

/* 1 when s holds a control character (a byte below 0x20, or DEL). */
static int has_control(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7F)
            return 1;
    return 0;
}

static void expect_not_json(const char *body, size_t len, const char *ctype, const char *want)
{
    json_t *doc = (json_t *)1;
    struct billmgr_error e;
    assert_int_equal(billmgr_parse_reply(200, ctype, body, len, 0, &doc, &e), RT_RETRY);
    assert_null(doc);
    assert_string_equal(e.type, "json");
    if (!strstr(e.message, want))
        fail_msg("message \"%s\" lacks \"%s\"", e.message, want);
    assert_false(has_control(e.message));
}

static const char login_page[] =
    "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
    "<title>BILLmanager - Log in</title>\n</head>\n<body>\n<form method=\"post\">\n"
    "<input type=\"text\" name=\"username\">\n<input type=\"password\" name=\"password\">\n"
    "</form>\n</body>\n</html>\n";

static void reply_not_json_names_what_came(void **state)
{
    /* The login page of a login wall: its title, not its form. */
    expect_not_json(login_page, strlen(login_page), "text/html; charset=utf-8",
                    "answer is not JSON (text/html; charset=utf-8, 235 bytes, invalid syntax at "
                    "byte 1): a page titled \"BILLmanager - Log in\"");
    /* A page without a title: its start, blanks folded. */
    expect_not_json("\r\n  <html>\n\t<body>Bad Gateway</body>", 37, "text/html",
                    "it begins <html> <body>Bad Gateway</body>");
    /* JSON cut short. */
    expect_not_json("{\"doc\": {\"elem\": [", 18, "application/json",
                    "(application/json, 18 bytes, it ends early at byte 18): it begins "
                    "{\"doc\": {\"elem\": [");
    expect_not_json("{\"doc\": {}} trailing", 21, NULL,
                    "(no Content-Type, 21 bytes, text after the document");
    expect_not_json("{\"doc\": {\"a\": {\"$\": \"1\"}, \"a\": {\"$\": \"2\"}}}", 42, "",
                    "a key that appears twice");

    /* A long hostile body: at most BILLMGR_EXCERPT_MAX bytes of it. */
    char big[10000];
    memset(big, 'A', sizeof(big));
    json_t *doc;
    struct billmgr_error e;
    assert_int_equal(billmgr_parse_reply(200, "text/plain", big, sizeof(big), 0, &doc, &e),
                     RT_RETRY);
    size_t as = 0;
    for (const char *p = e.message; *p; p++)
        as += *p == 'A';
    assert_true(as > 0 && as <= BILLMGR_EXCERPT_MAX);
    assert_non_null(strstr(e.message, "AAA..."));

    /* Control characters, escape sequences and invalid UTF-8 never reach
     * the message; valid UTF-8 does. A hostile Content-Type is cleaned too. */
    const char nasty[] = "\x1b[31mred\r\nFAKE: line\x01\xff\xfe Задача";
    assert_int_equal(billmgr_parse_reply(200, "text/html\r\nX-Injected: 1", nasty,
                                         sizeof(nasty) - 1, 0, &doc, &e),
                     RT_RETRY);
    assert_false(has_control(e.message));
    assert_non_null(strstr(e.message, "text/html??X-Injected: 1"));
    assert_non_null(strstr(e.message, "it begins [31mred FAKE: line ?? Задача"));

    /* A body that echoes a form with credentials is not quoted at all. */
    const char echo[] = "error: bad request func=task&authinfo=remotetask%3As3cr";
    assert_int_equal(billmgr_parse_reply(200, "text/plain", echo, sizeof(echo) - 1, 0, &doc, &e),
                     RT_RETRY);
    assert_null(strstr(e.message, "s3cr"));
    assert_non_null(strstr(e.message, "withheld"));
}

static void expect_wrong_shape(const char *body, const char *want)
{
    json_t *doc = (json_t *)1;
    struct billmgr_error e;
    assert_int_equal(parse(200, body, &doc, &e), RT_RETRY);
    assert_null(doc);
    assert_string_equal(e.type, "json");
    if (!strstr(e.message, "answer is not an API document") || !strstr(e.message, want))
        fail_msg("%s: message \"%s\" lacks \"%s\"", body, e.message, want);
}

static void reply_wrong_shapes_retry(void **state)
{
    expect_wrong_shape("{\"doc\": []}", "its doc is not an object");
    expect_wrong_shape("[1, 2]", "the answer is not an object");
    expect_wrong_shape("{\"nodoc\": {}}", "it has no doc");
    expect_wrong_shape("{\"doc\": {\"elem\": \"x\"}}", "doc.elem is a string, not a list");
    expect_wrong_shape("{\"doc\": {\"error\": \"x\"}}", "doc.error is a string, not an error");
    expect_wrong_shape("{\"doc\": {\"error\": {\"$type\": {\"$\": \"missed\"}}}}",
                       "$type or $object that is not text");
    /* A view whose fields are numbers, or arrays of anything but elements. */
    expect_wrong_shape("{\"doc\": {\"id\": {\"$\": \"4\"}, \"name\": 5}}", "doc.name is a number");
    expect_wrong_shape("{\"doc\": {\"note\": {\"$\": 5}}}", "doc.note.$ is a number");
    expect_wrong_shape("{\"doc\": {\"note\": [\"a\", \"b\"]}}", "doc.note[0] is a string, not an");
    expect_wrong_shape("{\"doc\": {\"ok\": true}}", "doc.ok is true");
    expect_wrong_shape("{\"doc\": {\"x\": null}}", "doc.x is null");
    expect_wrong_shape("{\"doc\": {\"elem\": [{\"id\": {\"$\": \"1\"}}, [2]]}}",
                       "doc.elem[1] is an array, not an element");
    expect_wrong_shape("{\"doc\": {\"elem\": [{\"id\": {\"$\": 7.5}}]}}",
                       "doc.elem[0].id.$ is a number");
    /* A hostile key is not quoted. */
    expect_wrong_shape("{\"doc\": {\"pass word\\n\": 1}}", "doc.? is a number");

    /* Repeated elements are how BILLmanager writes lists: accepted. The
     * caller's reader then refuses a field that came as one. */
    json_t *doc = NULL;
    struct billmgr_error e;
    assert_int_equal(
        parse(200, "{\"doc\": {\"name\": [{\"$\": \"a\"}, {\"$\": \"b\"}]}}", &doc, &e), RT_OK);
    const char *t = "x";
    assert_int_equal(billmgr_text_field(doc, "name", &t), -1);
    assert_null(t);
    json_decref(doc);
}

static void reply_caps_nesting_and_values(void **state)
{
    struct buf b;
    json_t *doc = NULL;
    struct billmgr_error e;

    /* BILLMGR_MAX_DEPTH levels pass; one more does not. */
    for (int depth = BILLMGR_MAX_DEPTH; depth <= BILLMGR_MAX_DEPTH + 1; depth++) {
        buf_init(&b, 1 << 20);
        buf_append_str(&b, "{\"doc\": ");
        for (int i = 2; i < depth; i++)
            buf_append_str(&b, "{\"a\": ");
        buf_append_str(&b, "{}");
        for (int i = 1; i < depth; i++)
            buf_append_str(&b, "}");
        rt_status st = billmgr_parse_reply(200, NULL, b.data, b.len, 0, &doc, &e);
        if (depth == BILLMGR_MAX_DEPTH) {
            assert_int_equal(st, RT_OK);
            json_decref(doc);
        } else {
            assert_int_equal(st, RT_RETRY);
            assert_non_null(strstr(e.message, "nests deeper than 16 levels"));
        }
        buf_release(&b);
    }

    /* A document made to inflate (empty objects by the million) is refused
     * before it is parsed, whatever its size; the cap counts by page. */
    buf_init(&b, 8 << 20);
    buf_append_str(&b, "{\"doc\": {\"elem\": [{}");
    while (b.len < (4u << 20) - 16)
        buf_append_str(&b, ",{}");
    buf_append_str(&b, "]}}");
    assert_int_equal(billmgr_parse_reply(200, NULL, b.data, b.len, 0, &doc, &e), RT_RETRY);
    assert_string_equal(e.type, "json");
    char want[64];
    snprintf(want, sizeof(want), "it holds more than %zu values",
             BILLMGR_VALUES_BASE + BILLMGR_VALUES_PER_ROW * BILLMGR_DEFAULT_PAGE_SIZE);
    assert_non_null(strstr(e.message, want));
    buf_release(&b);

    /* A page of 200 rows of 13 fields passes the cap for pages of 200. */
    size_t cap = BILLMGR_VALUES_BASE + BILLMGR_VALUES_PER_ROW * 200;
    buf_init(&b, 8 << 20);
    buf_append_str(&b, "{\"doc\": {\"elem\": [");
    for (int r = 0; r < 200; r++) {
        buf_append_str(&b, r ? ", {" : "{");
        for (int f = 0; f < 13; f++)
            buf_printf(&b, "%s\"f%d\": {\"$\": \"v:,{[\"}", f ? ", " : "", f);
        buf_append_str(&b, "}");
    }
    buf_append_str(&b, "], \"p_elems\": {\"$\": \"200\"}}}");
    assert_int_equal(billmgr_parse_reply(200, NULL, b.data, b.len, cap, &doc, &e), RT_OK);
    assert_int_equal(json_array_size(json_object_get(doc, "elem")), 200);
    json_decref(doc);
    /* The same under a cap for pages of 10 rows: refused. */
    assert_int_equal(billmgr_parse_reply(200, NULL, b.data, b.len,
                                         BILLMGR_VALUES_BASE + BILLMGR_VALUES_PER_ROW * 10, &doc,
                                         &e),
                     RT_RETRY);
    buf_release(&b);
}

static void reply_api_error_texts_lose_control_characters(void **state)
{
    json_t *doc = NULL;
    struct billmgr_error e;
    assert_int_equal(parse(200,
                           "{\"doc\": {\"error\": {\"$type\": \"value\", \"$object\": \"na\\nme\", "
                           "\"msg\": {\"$\": \"bad\\r\\nFAKE LINE\\u001b[0m\"}}}}",
                           &doc, &e),
                     RT_REJECT);
    assert_string_equal(e.object, "na me");
    assert_string_equal(e.message, "bad  FAKE LINE [0m");
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

static void text_field_tells_missing_from_wrong(void **state)
{
    json_error_t jerr;
    json_t *o =
        json_loads("{\"name\": {\"$\": \"Задача\"}, \"bare\": \"plain\", \"empty\": {}, "
                   "\"attrs\": {\"$id\": \"3\"}, \"num\": 5, \"arr\": [{\"$\": \"a\"}], "
                   "\"numtext\": {\"$\": 5}, \"nul\": null, \"kids\": {\"$id\": \"1\", \"x\": {}}}",
                   0, &jerr);
    assert_non_null(o);
    const char *t = NULL;
    assert_int_equal(billmgr_text_field(o, "name", &t), 1);
    assert_string_equal(t, "Задача");
    assert_int_equal(billmgr_text_field(o, "bare", &t), 1);
    assert_string_equal(t, "plain");
    assert_int_equal(billmgr_text_field(o, "empty", &t), 1);
    assert_string_equal(t, "");
    assert_int_equal(billmgr_text_field(o, "attrs", &t), 1);
    assert_string_equal(t, "");
    assert_int_equal(billmgr_text_field(o, "missing", &t), 0);
    assert_null(t);
    const char *bad[] = {"num", "arr", "numtext", "nul", "kids"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        t = "x";
        assert_int_equal(billmgr_text_field(o, bad[i], &t), -1);
        assert_null(t);
    }
    assert_int_equal(billmgr_text_field(json_object_get(o, "num"), "x", &t), -1);
    assert_int_equal(billmgr_text_field(NULL, "x", &t), -1);
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

/* ---- a scripted server: hostile answers over loopback ---- */

enum script_kind {
    SCRIPT_WHOLE,   /* the answer, whole */
    SCRIPT_TRICKLE, /* its headers, then its body a byte every interval_ms */
    SCRIPT_STALL,   /* its headers and part bytes of its body, then silence */
    SCRIPT_RESET,   /* its headers and part bytes of its body, then a reset */
    SCRIPT_ENDLESS, /* 100 MiB of JSON-looking text, sized or chunked */
};

#define SCRIPT_ENDLESS_BYTES ((size_t)100 * 1024 * 1024)

/* One connection, one request, answered as kind says, on a thread of its
 * own. The thread never waits longer than 10 s for anything, and stops
 * writing when the client goes away. */
struct script {
    enum script_kind kind;
    const char *ctype;
    const char *body;
    size_t len;
    size_t part;
    long interval_ms;
    int chunked;
    int lfd;
    int port;
    pthread_t thread;
    size_t sent; /* body bytes written; read after the join */
};

static int send_all(int fd, const void *p, size_t len)
{
    const char *c = p;
    while (len > 0) {
        ssize_t k = send(fd, c, len, MSG_NOSIGNAL);
        if (k <= 0)
            return -1;
        c += k;
        len -= (size_t)k;
    }
    return 0;
}

/* 1 when the client closed its end (or broke the connection) within ms. */
static int client_gone(int fd, int ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    char c;
    if (poll(&p, 1, ms) <= 0)
        return 0;
    return recv(fd, &c, 1, MSG_DONTWAIT) <= 0;
}

/* Reads the request: its head, then Content-Length bytes of body. */
static int read_request(int fd)
{
    char req[65536];
    size_t n = 0;
    char *end = NULL;
    while (!end) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (n >= sizeof(req) - 1 || poll(&p, 1, 10000) <= 0)
            return -1;
        ssize_t k = recv(fd, req + n, sizeof(req) - 1 - n, 0);
        if (k <= 0)
            return -1;
        n += (size_t)k;
        req[n] = '\0';
        end = strstr(req, "\r\n\r\n");
    }
    const char *cl = strstr(req, "Content-Length: ");
    size_t want = (size_t)(end + 4 - req) + (cl ? strtoul(cl + 16, NULL, 10) : 0);
    while (n < want) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 10000) <= 0)
            return -1;
        ssize_t k = recv(fd, req, sizeof(req) < want - n ? sizeof(req) : want - n, 0);
        if (k <= 0)
            return -1;
        n += (size_t)k;
    }
    return 0;
}

static void *script_run(void *arg)
{
    struct script *sc = arg;
    char head[256];
    struct pollfd p = {.fd = sc->lfd, .events = POLLIN};
    if (poll(&p, 1, 10000) <= 0)
        return NULL;
    int fd = accept(sc->lfd, NULL, NULL);
    if (fd < 0)
        return NULL;
    if (read_request(fd) < 0)
        goto close_fd;
    if (sc->kind == SCRIPT_ENDLESS) {
        static char chunk[65536];
        const char *start = "{\"doc\": {\"elem\": [{\"name\": {\"$\": \"";
        memset(chunk, 'x', sizeof(chunk));
        memcpy(chunk, start, strlen(start));
        if (sc->chunked)
            snprintf(head, sizeof(head),
                     "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
        else
            snprintf(head, sizeof(head),
                     "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                     SCRIPT_ENDLESS_BYTES);
        if (send_all(fd, head, strlen(head)) < 0)
            goto close_fd;
        while (sc->sent < SCRIPT_ENDLESS_BYTES) {
            char size[16];
            snprintf(size, sizeof(size), "%zx\r\n", sizeof(chunk));
            if ((sc->chunked && send_all(fd, size, strlen(size)) < 0) ||
                send_all(fd, chunk, sizeof(chunk)) < 0 ||
                (sc->chunked && send_all(fd, "\r\n", 2) < 0))
                break;
            sc->sent += sizeof(chunk);
        }
        goto close_fd;
    }
    snprintf(head, sizeof(head),
             "HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
             "Connection: close\r\n\r\n",
             sc->ctype, sc->len);
    if (send_all(fd, head, strlen(head)) < 0)
        goto close_fd;
    switch (sc->kind) {
    case SCRIPT_WHOLE:
        if (send_all(fd, sc->body, sc->len) == 0)
            sc->sent = sc->len;
        break;
    case SCRIPT_TRICKLE:
        while (sc->sent < sc->len && send_all(fd, sc->body + sc->sent, 1) == 0) {
            sc->sent++;
            if (client_gone(fd, (int)sc->interval_ms))
                break;
        }
        break;
    case SCRIPT_STALL:
        if (send_all(fd, sc->body, sc->part) == 0)
            sc->sent = sc->part;
        client_gone(fd, 10000);
        break;
    case SCRIPT_RESET: {
        if (send_all(fd, sc->body, sc->part) < 0)
            break;
        sc->sent = sc->part;
        /* A reset discards what the peer has not acknowledged: wait for
         * it to have the part first. */
        for (int i = 0; i < 2000; i++) {
            int unacked = 0;
            if (ioctl(fd, TIOCOUTQ, &unacked) < 0 || unacked == 0)
                break;
            poll(NULL, 0, 1);
        }
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        break;
    }
    default: break;
    }
close_fd:
    close(fd);
    return NULL;
}

static void script_start(struct script *sc)
{
    sc->port = loopback_port(1, &sc->lfd);
    sc->sent = 0;
    assert_int_equal(pthread_create(&sc->thread, NULL, script_run, sc), 0);
}

static void script_join(struct script *sc)
{
    pthread_join(sc->thread, NULL);
    close(sc->lfd);
}

/* Makes one call of func against the script and returns its status, with
 * the error in *e; the client's total timeout is timeout_ms. */
static rt_status script_call(struct script *sc, const char *func, long timeout_ms,
                             struct billmgr_error *e)
{
    char url[128], err[256];
    script_start(sc);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/billmgr", sc->port);
    struct billmgr_opts o = base_opts(url);
    o.timeout_ms = timeout_ms;
    struct billmgr *bm = billmgr_new(&o, err, sizeof(err));
    assert_non_null(bm);
    json_t *doc = (json_t *)1;
    rt_status st = billmgr_call_sync(bm, func, NULL, &doc, e);
    if (st != RT_OK)
        assert_null(doc);
    json_decref(st == RT_OK ? doc : NULL);
    billmgr_free(bm); /* closes the connection: the script's writes fail */
    script_join(sc);
    assert_false(has_control(e->message));
    assert_null(strstr(e->message, "s3cr"));
    return st;
}

static void expect_in(const char *message, const char *want)
{
    if (!strstr(message, want))
        fail_msg("message \"%s\" lacks \"%s\"", message, want);
}

#ifdef __SANITIZE_ADDRESS__
/* libasan's: gives the memory of its quarantine back to the system. */
void __sanitizer_purge_allocator(void);
#endif

/* Without reset: the peak resident set size of this process since the
 * last reset, in kB. With reset: starts a measure from what is resident
 * now (Linux: clear_refs 5), after the sanitizer's quarantine of memory
 * freed by earlier tests is given back, and returns that size. */
static long peak_rss_kb(int reset)
{
#ifdef __SANITIZE_ADDRESS__
    if (reset)
        __sanitizer_purge_allocator();
#endif
    char line[256];
    long kb = -1;
    FILE *f = fopen("/proc/self/status", "r");
    assert_non_null(f);
    while (fgets(line, sizeof(line), f))
        if (strncmp(line, "VmHWM:", 6) == 0)
            kb = strtol(line + 6, NULL, 10);
    fclose(f);
    assert_true(kb > 0);
    if (reset) {
        f = fopen("/proc/self/clear_refs", "w");
        assert_non_null(f);
        assert_true(fputs("5", f) >= 0);
        assert_int_equal(fclose(f), 0);
        return peak_rss_kb(0);
    }
    return kb;
}

static void html_login_page_is_json_retry(void **state)
{
    struct script sc = {.kind = SCRIPT_WHOLE,
                        .ctype = "text/html; charset=utf-8",
                        .body = login_page,
                        .len = strlen(login_page)};
    struct billmgr_error e;
    assert_int_equal(script_call(&sc, "task.edit", 5000, &e), RT_RETRY);
    assert_string_equal(e.type, "json");
    expect_in(e.message, "task.edit: answer is not JSON (text/html; charset=utf-8, 235 bytes, "
                         "invalid syntax at byte 1): a page titled \"BILLmanager - Log in\"");
}

static void wrong_shape_over_the_wire_is_json_retry(void **state)
{
    const char *body = "{\"doc\": {\"elem\": \"x\"}}";
    struct script sc = {
        .kind = SCRIPT_WHOLE, .ctype = "application/json", .body = body, .len = strlen(body)};
    struct billmgr_error e;
    assert_int_equal(script_call(&sc, "task", 5000, &e), RT_RETRY);
    assert_string_equal(e.type, "json");
    assert_string_equal(e.message, "task: answer is not an API document (application/json, 22 "
                                   "bytes): doc.elem is a string, not a list");
}

static void trickling_body_ends_as_too_slow(void **state)
{
    /* A valid answer, a byte every 50 ms: with a 2 s timeout the rate is
     * checked from 0.5 s on, long before the answer could end. */
    char body[2048];
    memset(body, ' ', sizeof(body));
    memcpy(body, "{\"doc\": {}}", 11);
    struct script sc = {.kind = SCRIPT_TRICKLE,
                        .ctype = "application/json",
                        .body = body,
                        .len = sizeof(body),
                        .interval_ms = 50};
    struct billmgr_error e;
    assert_int_equal(script_call(&sc, "task.edit", 2000, &e), RT_RETRY);
    assert_string_equal(e.type, "timeout");
    expect_in(e.message, "task.edit: answer arrives too slowly: ");
    expect_in(e.message, "under 1024 bytes/s");
    assert_true(sc.sent < sizeof(body));
}

static void stalled_body_ends_at_the_timeout(void **state)
{
    const char *body = "{\"doc\": {\"name\": {\"$\": \"stalled\"}}}";
    struct script sc = {.kind = SCRIPT_STALL,
                        .ctype = "application/json",
                        .body = body,
                        .len = strlen(body),
                        .part = 5};
    struct billmgr_error e;
    assert_int_equal(script_call(&sc, "task.edit", 500, &e), RT_RETRY);
    assert_string_equal(e.type, "timeout");
    expect_in(e.message, "task.edit: ");
    expect_in(e.message, "5 out of 35 bytes");
}

static void reset_mid_body_is_transport_retry(void **state)
{
    char body[1000];
    memset(body, ' ', sizeof(body));
    memcpy(body, "{\"doc\": {}}", 11);
    struct script sc = {.kind = SCRIPT_RESET,
                        .ctype = "application/json",
                        .body = body,
                        .len = sizeof(body),
                        .part = 100};
    struct billmgr_error e;
    assert_int_equal(script_call(&sc, "task.edit", 5000, &e), RT_RETRY);
    assert_string_equal(e.type, "transport");
    expect_in(e.message, "task.edit: answer cut off after 100 of 1000 bytes: ");
}

static void echoed_password_is_scrubbed(void **state)
{
    /* A server (or a proxy's error page) that echoes the password, raw and
     * URL-encoded as it travelled, without naming authinfo. */
    const char *body = "bad request near s3cr%26t%3Dpa%2Bss%25word, s3cr&t=pa+ss%word";
    struct script sc = {
        .kind = SCRIPT_WHOLE, .ctype = "text/plain", .body = body, .len = strlen(body)};
    struct billmgr_error e;
    assert_int_equal(script_call(&sc, "task", 5000, &e), RT_RETRY);
    assert_string_equal(e.type, "json");
    expect_in(e.message, "it begins bad request near ***, ***");
}

/* The answer never accumulates: this process grows by far less than the
 * 100 MiB sent (the cap is 4 MiB). The growth is measured, not the total:
 * under the sanitizers this process carries what earlier tests left; the
 * integration test measures a fresh process against an absolute bound. */
static void endless_answer_is_toolarge_retry_in_bounded_memory(void **state)
{
    struct billmgr_error e;
    for (int chunked = 0; chunked <= 1; chunked++) {
        struct script sc = {.kind = SCRIPT_ENDLESS, .chunked = chunked};
        long base = peak_rss_kb(1);
        assert_int_equal(script_call(&sc, "task", 30000, &e), RT_RETRY);
        long peak = peak_rss_kb(0);
        printf("100 MiB answer (%s): %s; %zu bytes sent; peak RSS %ld kB, %ld kB above the "
               "%ld kB before\n",
               chunked ? "chunked" : "with a Content-Length", e.message, sc.sent, peak, peak - base,
               base);
        assert_string_equal(e.type, "toolarge");
        if (chunked) {
            expect_in(e.message, "task: answer is larger than billmanager.max_response "
                                 "(4194304 bytes)");
        } else {
            expect_in(e.message, "task: answer of 104857600 bytes is larger than "
                                 "billmanager.max_response (4194304 bytes)");
            /* Refused on its header: hardly any of the body was sent. */
            assert_true(sc.sent < SCRIPT_ENDLESS_BYTES);
        }
        assert_true(peak - base < 32 * 1024);
    }
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
        cmocka_unit_test(reply_not_json_names_what_came),
        cmocka_unit_test(reply_wrong_shapes_retry),
        cmocka_unit_test(reply_caps_nesting_and_values),
        cmocka_unit_test(reply_api_error_texts_lose_control_characters),
        cmocka_unit_test(text_field_tells_missing_from_wrong),
        cmocka_unit_test(text_and_long_helpers),
        cmocka_unit_test(new_refuses_bad_options),
        cmocka_unit_test(free_cancels_without_callbacks),
        cmocka_unit_test(debug_log_masks_secrets),
        cmocka_unit_test(refused_connection_is_transport_retry),
        cmocka_unit_test(silent_server_is_timeout_retry),
        cmocka_unit_test(html_login_page_is_json_retry),
        cmocka_unit_test(wrong_shape_over_the_wire_is_json_retry),
        cmocka_unit_test(trickling_body_ends_as_too_slow),
        cmocka_unit_test(stalled_body_ends_at_the_timeout),
        cmocka_unit_test(reset_mid_body_is_transport_retry),
        cmocka_unit_test(echoed_password_is_scrubbed),
        cmocka_unit_test(endless_answer_is_toolarge_retry_in_bounded_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
