#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "stderr_capture.h"

static struct {
    char path[64];
    int fd;
    int saved;
} stderr_capture;

void stderr_capture_begin(void)
{
    snprintf(stderr_capture.path, sizeof stderr_capture.path, "/tmp/rt-stderr.XXXXXX");
    stderr_capture.fd = mkstemp(stderr_capture.path);
    assert_true(stderr_capture.fd >= 0);
    fflush(stderr);
    stderr_capture.saved = dup(STDERR_FILENO);
    assert_true(stderr_capture.saved >= 0);
    assert_true(dup2(stderr_capture.fd, STDERR_FILENO) >= 0);
}

int stderr_capture_end(const char *needle)
{
    static char text[64 * 1024];
    fflush(stderr);
    dup2(stderr_capture.saved, STDERR_FILENO);
    close(stderr_capture.saved);
    ssize_t n = pread(stderr_capture.fd, text, sizeof text - 1, 0);
    close(stderr_capture.fd);
    unlink(stderr_capture.path);
    text[n > 0 ? n : 0] = '\0';
    fputs(text, stderr); /* shown as if never captured */
    int count = 0;
    for (const char *p = text; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        count++;
    return count;
}
