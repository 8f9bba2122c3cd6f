#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>
#include <time.h>

#define LOG_LINE_MAX 2048

static struct {
    char ident[64];
    enum log_level level;
    int use_syslog;
} log_state = {"remotetask", LOG_LEVEL_INFO, 0};

static const char *const log_names[] = {"error", "warning", "info", "debug"};

void log_init(const char *ident, enum log_level level, int use_syslog)
{
    if (log_state.use_syslog)
        closelog();
    snprintf(log_state.ident, sizeof(log_state.ident), "%s", ident ? ident : "remotetask");
    log_state.level = level;
    log_state.use_syslog = use_syslog;
    if (use_syslog)
        openlog(log_state.ident, LOG_PID | LOG_NDELAY, LOG_DAEMON);
}

void log_set_level(enum log_level level)
{
    log_state.level = level;
}

enum log_level log_get_level(void)
{
    return log_state.level;
}

int log_level_parse(const char *name, enum log_level *out)
{
    for (size_t i = 0; i < sizeof(log_names) / sizeof(log_names[0]); i++) {
        if (name && strcmp(name, log_names[i]) == 0) {
            *out = (enum log_level)i;
            return 0;
        }
    }
    return -1;
}

const char *log_level_name(enum log_level level)
{
    if ((unsigned)level < sizeof(log_names) / sizeof(log_names[0]))
        return log_names[level];
    return "unknown";
}

/* Escapes control characters so that a task name or an API message holding
 * a newline cannot make a line that looks like another log line. */
static void log_sanitize(char *dst, size_t dstlen, const char *src)
{
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)src; *p && o + 5 < dstlen; p++) {
        if (*p < 0x20 || *p == 0x7f) {
            o += (size_t)snprintf(dst + o, dstlen - o, "\\x%02x", *p);
        } else {
            dst[o++] = (char)*p;
        }
    }
    dst[o] = '\0';
}

void log_msg(enum log_level level, const char *fmt, ...)
{
    char raw[LOG_LINE_MAX];
    char line[LOG_LINE_MAX];
    va_list ap;

    if (level > log_state.level)
        return;
    va_start(ap, fmt);
    vsnprintf(raw, sizeof(raw), fmt, ap);
    va_end(ap);
    log_sanitize(line, sizeof(line), raw);

    if (log_state.use_syslog) {
        static const int prio[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};
        syslog(prio[level], "%s", line);
        return;
    }
    struct timespec ts;
    struct tm tm;
    char when[32];
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
    fprintf(stderr, "%s.%03ldZ %s %s: %s\n", when, ts.tv_nsec / 1000000L, log_state.ident,
            log_names[level], line);
}
