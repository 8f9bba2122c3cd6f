/*
 * harness.h - what every integration test shares.
 *
 * Integration tests run under scripts/test, which starts a private RabbitMQ
 * node and exports where it is (RT_AMQP_PORT, ...). A test never skips:
 * when what it needs is missing it fails and says how to run it.
 */
#ifndef RT_HARNESS_H
#define RT_HARNESS_H

/* The value of an environment variable the harness must have set; fails
 * the running test (cmocka fail_msg) with a clear line when it is unset. */
const char *harness_env(const char *name);

/* Milliseconds from a monotonic clock. */
long long harness_now_ms(void);

/* A fresh scratch directory under $RT_TEST_TMP (or /tmp), created; the
 * caller frees the returned string. */
char *harness_tmpdir(const char *tag);

#endif
