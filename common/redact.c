#include "redact.h"

#include <stdio.h>
#include <string.h>

char *redact_uri(const char *uri, char *out, size_t outlen)
{
    if (!outlen)
        return out;
    const char *scheme = strstr(uri, "://");
    const char *auth = scheme ? scheme + 3 : uri;
    const char *end = auth + strcspn(auth, "/?#");
    const char *at = NULL;
    for (const char *p = auth; p < end; p++)
        if (*p == '@')
            at = p; /* the last '@' ends the userinfo */
    const char *colon = at ? memchr(auth, ':', (size_t)(at - auth)) : NULL;
    if (!colon) {
        snprintf(out, outlen, "%s", uri);
        return out;
    }
    snprintf(out, outlen, "%.*s***%s", (int)(colon + 1 - uri), uri, at);
    return out;
}

static int redact_is_secret(const char *key, size_t n)
{
    static const char *const secrets[] = {"password", "authinfo", "auth", "passwd"};
    for (size_t i = 0; i < sizeof(secrets) / sizeof(secrets[0]); i++)
        if (strlen(secrets[i]) == n && strncmp(secrets[i], key, n) == 0)
            return 1;
    return 0;
}

char *redact_form(const char *form, char *out, size_t outlen)
{
    size_t o = 0;
    const char *p = form;
    if (!outlen)
        return out;
    out[0] = '\0';
    while (*p && o + 1 < outlen) {
        size_t pair = strcspn(p, "&");
        const char *eq = memchr(p, '=', pair);
        size_t keylen = eq ? (size_t)(eq - p) : pair;
        int n;
        if (eq && redact_is_secret(p, keylen))
            n = snprintf(out + o, outlen - o, "%.*s=***", (int)keylen, p);
        else
            n = snprintf(out + o, outlen - o, "%.*s", (int)pair, p);
        if (n < 0 || (size_t)n >= outlen - o)
            break;
        o += (size_t)n;
        p += pair;
        if (*p == '&') {
            if (o + 1 < outlen)
                out[o++] = '&';
            out[o] = '\0';
            p++;
        }
    }
    return out;
}
