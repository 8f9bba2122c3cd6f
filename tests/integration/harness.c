#include "harness.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

const char *harness_env(const char *name)
{
    const char *v = getenv(name);
    if (!v || !*v)
        fail_msg("%s is not set: integration tests run under scripts/test, which starts "
                 "the private RabbitMQ node and the emulator",
                 name);
    return v;
}

long long harness_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

char *harness_tmpdir(const char *tag)
{
    const char *base = getenv("RT_TEST_TMP");
    char tmpl[512];
    snprintf(tmpl, sizeof(tmpl), "%s/%s.XXXXXX", base && *base ? base : "/tmp", tag);
    if (!mkdtemp(tmpl))
        fail_msg("cannot create a scratch directory under %s", base ? base : "/tmp");
    return strdup(tmpl);
}
