/*
 * test_broker.c - the parts of common/broker that need no broker: names,
 * retry tiers, header lookup, option checks and the not-connected state.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "broker.h"

static void test_client_valid(void **state)
{
    char longest[BROKER_CLIENT_MAX + 2];
    assert_true(broker_client_valid("7"));
    assert_true(broker_client_valid("reseller-A_2"));
    assert_false(broker_client_valid(NULL));
    assert_false(broker_client_valid(""));
    assert_false(broker_client_valid("a.b")); /* dots would make names ambiguous */
    assert_false(broker_client_valid("a b"));
    assert_false(broker_client_valid("a#"));
    memset(longest, 'x', BROKER_CLIENT_MAX);
    longest[BROKER_CLIENT_MAX] = '\0';
    assert_true(broker_client_valid(longest));
    longest[BROKER_CLIENT_MAX] = 'x';
    longest[BROKER_CLIENT_MAX + 1] = '\0';
    assert_false(broker_client_valid(longest));
}

static void test_queue_names(void **state)
{
    char buf[BROKER_NAME_MAX];
    assert_int_equal(broker_queue_name(buf, sizeof(buf), BROKER_FORWARD, "7"), 0);
    assert_string_equal(buf, "remotetask.forward.7");
    assert_int_equal(broker_queue_name(buf, sizeof(buf), BROKER_REVERSE, "7"), 0);
    assert_string_equal(buf, "remotetask.reverse.7");
    assert_string_equal(broker_exchange(BROKER_FORWARD), "remotetask.forward");
    assert_string_equal(broker_exchange(BROKER_REVERSE), "remotetask.reverse");
    assert_int_equal(broker_queue_name(buf, sizeof(buf), BROKER_FORWARD, "bad id"), -1);
    char tiny[8];
    assert_int_equal(broker_queue_name(tiny, sizeof(tiny), BROKER_FORWARD, "7"), -1);
    assert_string_equal(tiny, "");
}

static void test_retry_tiers(void **state)
{
    assert_int_equal(broker_retry_tier(0), 0);
    assert_int_equal(broker_retry_tier(1), 0);
    assert_int_equal(broker_retry_tier(2), 1);
    assert_int_equal(broker_retry_tier(5), 4);
    assert_int_equal(broker_retry_tier(6), BROKER_RETRY_TIERS - 1);
    assert_int_equal(broker_retry_tier(100000), BROKER_RETRY_TIERS - 1);
    assert_int_equal(broker_retry_delay_ms(0), 1000);
    assert_int_equal(broker_retry_delay_ms(1), 5000);
    assert_int_equal(broker_retry_delay_ms(2), 30000);
    assert_int_equal(broker_retry_delay_ms(3), 120000);
    assert_int_equal(broker_retry_delay_ms(4), 600000);
    assert_int_equal(broker_retry_delay_ms(99), 600000);
    for (unsigned t = 1; t < BROKER_RETRY_TIERS; t++)
        assert_true(broker_retry_delay_ms(t) > broker_retry_delay_ms(t - 1));

    char buf[BROKER_NAME_MAX];
    assert_int_equal(broker_retry_key(buf, sizeof(buf), BROKER_FORWARD, 1), 0);
    assert_string_equal(buf, "forward.1s");
    assert_int_equal(broker_retry_key(buf, sizeof(buf), BROKER_REVERSE, 2), 0);
    assert_string_equal(buf, "reverse.5s");
    assert_int_equal(broker_retry_key(buf, sizeof(buf), BROKER_FORWARD, 40), 0);
    assert_string_equal(buf, "forward.10m");
    assert_int_equal(broker_retry_exchange(buf, sizeof(buf), "7"), 0);
    assert_string_equal(buf, "remotetask.retry.7");
    assert_int_equal(broker_retry_exchange(buf, sizeof(buf), ""), -1);
    assert_int_equal(broker_dead_exchange(buf, sizeof(buf), "7"), 0);
    assert_string_equal(buf, "remotetask.dead.7");
    assert_int_equal(broker_dead_exchange(buf, sizeof(buf), "a.b"), -1);
    assert_int_equal(broker_dead_queue_name(buf, sizeof(buf), BROKER_FORWARD, "7"), 0);
    assert_string_equal(buf, "remotetask.dead.7.forward");
    assert_int_equal(broker_dead_queue_name(buf, sizeof(buf), BROKER_REVERSE, "c-1"), 0);
    assert_string_equal(buf, "remotetask.dead.c-1.reverse");
    assert_string_equal(broker_dir_name(BROKER_FORWARD), "forward");
    assert_string_equal(broker_dir_name(BROKER_REVERSE), "reverse");
    assert_int_equal(broker_retry_queue_name(buf, sizeof(buf), BROKER_FORWARD, "7", 3), 0);
    assert_string_equal(buf, "remotetask.retry.7.forward.2m");
    assert_int_equal(broker_retry_queue_name(buf, sizeof(buf), BROKER_REVERSE, "c-1", 0), 0);
    assert_string_equal(buf, "remotetask.retry.c-1.reverse.1s");
}

static void test_header_lookup(void **state)
{
    struct broker_header h[] = {
        {.key = "x-rt-attempts", .type = BROKER_HEADER_INT, .num = 3},
        {.key = "x-rt-reason", .type = BROKER_HEADER_STR, .str = "value error"},
    };
    struct broker_delivery d = {.headers = h, .n_headers = 2};
    int64_t v = 0;
    assert_int_equal(broker_delivery_header_int(&d, "x-rt-attempts", &v), 0);
    assert_int_equal(v, 3);
    assert_int_equal(broker_delivery_header_int(&d, "x-rt-reason", &v), -1);
    assert_int_equal(broker_delivery_header_int(&d, "missing", &v), -1);
    assert_string_equal(broker_delivery_header_str(&d, "x-rt-reason"), "value error");
    assert_null(broker_delivery_header_str(&d, "x-rt-attempts"));
    assert_null(broker_delivery_header_str(&d, "missing"));
    struct broker_delivery empty = {0};
    assert_null(broker_delivery_header_str(&empty, "x"));
}

static void noop_confirm(void *arg, uint64_t tag, enum broker_fate fate)
{
}

static void test_new_checks_options(void **state)
{
    char err[256];
    struct broker_opts o = {.host = "127.0.0.1", .port = 5672, .user = "u", .password = "p"};
    o.queue_type = "stream";
    assert_null(broker_new(&o, err, sizeof(err)));
    assert_non_null(strstr(err, "stream"));
    o.queue_type = "quorum";
    o.port = 0;
    assert_null(broker_new(&o, err, sizeof(err)));
    o.port = 5672;
    o.host = "";
    assert_null(broker_new(&o, err, sizeof(err)));
    o.host = "127.0.0.1";
    o.cert_file = "client.pem";
    assert_null(broker_new(&o, err, sizeof(err)));
    o.cert_file = NULL;
    assert_null(broker_new(NULL, err, sizeof(err)));
    broker_free(NULL);
}

static void test_not_connected(void **state)
{
    char err[256];
    struct broker_opts o = {.host = "127.0.0.1", .port = 5672, .user = "u",
                            .password = "s3cret-pw", .on_confirm = noop_confirm};
    struct broker *b = broker_new(&o, err, sizeof(err));
    assert_non_null(b);
    assert_false(broker_connected(b));
    assert_int_equal(broker_fd(b), -1);
    assert_false(broker_wants_read_now(b));
    assert_int_equal(broker_timeout_ms(b), -1);
    assert_int_equal(broker_unconfirmed(b), 0);
    assert_false(broker_blocked(b));
    struct broker_props p = {.message_id = "m"};
    uint64_t tag = 42;
    assert_int_equal(broker_publish(b, "remotetask.forward", "7", &p, "x", 1, &tag), RT_RETRY);
    assert_int_equal(tag, 42);
    assert_int_equal(broker_process(b), RT_RETRY);
    assert_int_equal(broker_ack(b, 1), RT_RETRY);
    assert_int_equal(broker_reject(b, 1, 1), RT_RETRY);
    assert_int_equal(broker_consume(b, "q"), RT_RETRY);
    assert_int_equal(broker_queue_depth(b, "q", NULL, NULL), RT_RETRY);
    const char *clients[] = {"7"};
    assert_int_equal(broker_declare(b, clients, 1), RT_RETRY);
    assert_non_null(strstr(broker_strerror(b), "not connected"));
    assert_null(strstr(broker_strerror(b), "s3cret-pw"));
    broker_disconnect(b);
    broker_free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_client_valid),
        cmocka_unit_test(test_queue_names),
        cmocka_unit_test(test_retry_tiers),
        cmocka_unit_test(test_header_lookup),
        cmocka_unit_test(test_new_checks_options),
        cmocka_unit_test(test_not_connected),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
