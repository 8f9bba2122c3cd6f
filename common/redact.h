/*
 * redact.h - take secrets out of text before it is shown.
 *
 * Secrets (passwords, authinfo, AMQP URIs with a password) must never reach
 * a log line, an error string, a URL or argv. These helpers produce a copy
 * that is safe to show.
 */
#ifndef RT_REDACT_H
#define RT_REDACT_H

#include <stddef.h>

/* Copies a URI into out (always NUL-terminated, cut to outlen) with the
 * password of its userinfo, if any, replaced by "***":
 * "amqp://u:p@h/" -> "amqp://u:***@h/". Returns out. */
char *redact_uri(const char *uri, char *out, size_t outlen);

/* Copies a form-encoded string (a=1&b=2) into out with the values of the
 * keys "password", "authinfo", "auth" and "passwd" replaced by "***".
 * Returns out. */
char *redact_form(const char *form, char *out, size_t outlen);

#endif
