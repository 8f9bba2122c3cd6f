/*
 * log.h - the process's log: stderr in the foreground, syslog as a service.
 *
 * This is the one module with process-wide state (the level and the
 * destination), as in redis and mosquitto: every other module logs through
 * it without carrying a logger around. Lines read "problem first, subject
 * quoted": `log_warning("API call failed for task %ld: %s", id, why)`.
 * Never pass a secret (password, authinfo, AMQP URI with a password) here.
 */
#ifndef RT_LOG_H
#define RT_LOG_H

enum log_level {
    LOG_LEVEL_ERROR = 0,
    LOG_LEVEL_WARNING = 1,
    LOG_LEVEL_INFO = 2,
    LOG_LEVEL_DEBUG = 3,
};

/* Sets the program name shown in every line and where lines go. With
 * use_syslog the lines go to syslog(3) under the daemon facility; otherwise
 * to stderr with a timestamp. May be called again (SIGHUP). */
void log_init(const char *ident, enum log_level level, int use_syslog);

/* Changes the level only. */
void log_set_level(enum log_level level);

/* The current level. */
enum log_level log_get_level(void);

/* Parses "error", "warning", "info" or "debug"; returns 0 and sets *out, or
 * -1 for anything else. */
int log_level_parse(const char *name, enum log_level *out);

/* The name of a level, a static string. */
const char *log_level_name(enum log_level level);

/* Writes one line if level is enabled. The line is cut at 2 KiB and control
 * characters in it are escaped, so text from outside cannot forge lines. */
void log_msg(enum log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define log_error(...) log_msg(LOG_LEVEL_ERROR, __VA_ARGS__)
#define log_warning(...) log_msg(LOG_LEVEL_WARNING, __VA_ARGS__)
#define log_info(...) log_msg(LOG_LEVEL_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_LEVEL_DEBUG, __VA_ARGS__)

#endif
