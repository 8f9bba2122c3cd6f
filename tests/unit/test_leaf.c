/* Unit tests of the small leaf modules: buf, backoff, redact, log. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "backoff.h"
#include "buf.h"
#include "log.h"
#include "redact.h"

static void buf_appends_until_cap(void **state)
{
    struct buf b;
    buf_init(&b, 10);
    assert_string_equal(buf_cstr(&b), "");
    assert_int_equal(buf_append_str(&b, "hello"), 0);
    assert_int_equal(buf_printf(&b, "%d", 1234), 0);
    assert_string_equal(buf_cstr(&b), "hello1234");
    /* Two more bytes would pass the cap of 10: refused, buffer unchanged. */
    assert_int_equal(buf_append(&b, "ab", 2), -1);
    assert_int_equal(buf_printf(&b, "%s", "ab"), -1);
    assert_int_equal(b.len, 9);
    assert_int_equal(buf_append(&b, "a", 1), 0);
    assert_int_equal(b.len, 10);
    buf_reset(&b);
    assert_string_equal(buf_cstr(&b), "");
    buf_release(&b);
}

static void buf_grows_and_steals(void **state)
{
    struct buf b;
    char chunk[1000];
    memset(chunk, 'x', sizeof(chunk));
    buf_init(&b, 1 << 20);
    for (int i = 0; i < 100; i++)
        assert_int_equal(buf_append(&b, chunk, sizeof(chunk)), 0);
    assert_int_equal(b.len, 100000);
    assert_int_equal(b.data[b.len], '\0');
    char *p = buf_steal(&b);
    assert_int_equal(strlen(p), 100000);
    free(p);
    assert_null(b.data);
    p = buf_steal(&b);
    assert_string_equal(p, "");
    free(p);
}

static void buf_refuses_size_overflow(void **state)
{
    struct buf b;
    buf_init(&b, (size_t)-1);
    assert_int_equal(buf_append_str(&b, "a"), 0);
    assert_int_equal(buf_append(&b, "x", (size_t)-1), -1);
    buf_release(&b);
}

static void backoff_grows_within_bounds(void **state)
{
    struct backoff b;
    backoff_init(&b, 100, 5000, 42);
    unsigned last_ceiling = 100;
    for (int i = 0; i < 20; i++) {
        unsigned d = backoff_next(&b);
        assert_true(d >= 50);
        assert_true(d <= 5000);
        assert_true(d <= last_ceiling);
        if (last_ceiling < 5000)
            last_ceiling = last_ceiling * 2 > 5000 ? 5000 : last_ceiling * 2;
    }
    backoff_reset(&b);
    assert_true(backoff_next(&b) <= 100);
}

static void backoff_is_jittered(void **state)
{
    struct backoff b;
    unsigned seen[2000] = {0};
    int distinct = 0;
    backoff_init(&b, 1000, 1000, 7);
    for (int i = 0; i < 200; i++) {
        unsigned d = backoff_next(&b);
        assert_true(d >= 500 && d <= 1000);
        if (!seen[d]++)
            distinct++;
    }
    /* 200 draws over 501 values: lockstep clients would give one value. */
    assert_true(distinct > 50);
}

static void redact_uri_hides_password(void **state)
{
    char out[256];
    assert_string_equal(redact_uri("amqp://u:s3cret@h:5672/%2f", out, sizeof(out)),
                        "amqp://u:***@h:5672/%2f");
    assert_string_equal(redact_uri("amqps://u@h/", out, sizeof(out)), "amqps://u@h/");
    assert_string_equal(redact_uri("amqp://h", out, sizeof(out)), "amqp://h");
    /* An '@' inside the password: the last '@' ends the userinfo. */
    assert_string_equal(redact_uri("amqp://u:a@b@h/v", out, sizeof(out)), "amqp://u:***@h/v");
    assert_null(strstr(redact_uri("amqp://u:a@b@h/v", out, sizeof(out)), "a@b"));
}

static void redact_form_hides_secrets(void **state)
{
    char out[256];
    assert_string_equal(redact_form("func=task&authinfo=me%3Apw&out=json", out, sizeof(out)),
                        "func=task&authinfo=***&out=json");
    assert_string_equal(redact_form("username=me&password=pw", out, sizeof(out)),
                        "username=me&password=***");
    assert_string_equal(redact_form("auth=abc&elid=5", out, sizeof(out)), "auth=***&elid=5");
    assert_string_equal(redact_form("note=password", out, sizeof(out)), "note=password");
    /* Cut short, never past the buffer, and still no secret. */
    char small[12];
    redact_form("authinfo=me:pw&x=1", small, sizeof(small));
    assert_null(strstr(small, "pw"));
}

static void log_levels_parse(void **state)
{
    enum log_level l;
    assert_int_equal(log_level_parse("debug", &l), 0);
    assert_int_equal(l, LOG_LEVEL_DEBUG);
    assert_int_equal(log_level_parse("warning", &l), 0);
    assert_int_equal(l, LOG_LEVEL_WARNING);
    assert_int_equal(log_level_parse("verbose", &l), -1);
    assert_int_equal(log_level_parse(NULL, &l), -1);
    assert_string_equal(log_level_name(LOG_LEVEL_ERROR), "error");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(buf_appends_until_cap),
        cmocka_unit_test(buf_grows_and_steals),
        cmocka_unit_test(buf_refuses_size_overflow),
        cmocka_unit_test(backoff_grows_within_bounds),
        cmocka_unit_test(backoff_is_jittered),
        cmocka_unit_test(redact_uri_hides_password),
        cmocka_unit_test(redact_form_hides_secrets),
        cmocka_unit_test(log_levels_parse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
