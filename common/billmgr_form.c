/*
 * billmgr_form.c - a BILLmanager call's request: its parameters (ordered,
 * capped copies) and the form body they make, percent-encoded per RFC
 * 3986. The credentials are added per attempt by billmgr_session.c.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "billmgr_int.h"

/* ---- parameters ---- */

void billmgr_params_init(struct billmgr_params *p)
{
    p->v = NULL;
    p->n = 0;
    p->cap = 0;
}

int billmgr_params_add(struct billmgr_params *p, const char *key, const char *value)
{
    if (!key || !*key || !value || p->n >= BILLMGR_MAX_PARAMS || strlen(value) > BILLMGR_MAX_VALUE)
        return -1;
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 8;
        if (cap > BILLMGR_MAX_PARAMS)
            cap = BILLMGR_MAX_PARAMS;
        struct billmgr_param *v = realloc(p->v, cap * sizeof(*v));
        if (!v)
            return -1;
        p->v = v;
        p->cap = cap;
    }
    char *k = strdup(key);
    char *val = strdup(value);
    if (!k || !val) {
        free(k);
        free(val);
        return -1;
    }
    p->v[p->n].key = k;
    p->v[p->n].value = val;
    p->n++;
    return 0;
}

int billmgr_params_addf(struct billmgr_params *p, const char *key, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n > BILLMGR_MAX_VALUE)
        return -1;
    char *value = malloc((size_t)n + 1);
    if (!value)
        return -1;
    va_start(ap, fmt);
    vsnprintf(value, (size_t)n + 1, fmt, ap);
    va_end(ap);
    int rc = billmgr_params_add(p, key, value);
    free(value);
    return rc;
}

void billmgr_params_release(struct billmgr_params *p)
{
    for (size_t i = 0; i < p->n; i++) {
        free(p->v[i].key);
        free(p->v[i].value);
    }
    free(p->v);
    billmgr_params_init(p);
}

/* ---- encoding ---- */

int billmgr_urlencode(struct buf *out, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    char chunk[192];
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        unsigned char c = *p;
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '.' || c == '_' || c == '~') {
            chunk[n++] = (char)c;
        } else {
            chunk[n++] = '%';
            chunk[n++] = hex[c >> 4];
            chunk[n++] = hex[c & 15];
        }
        if (n > sizeof(chunk) - 3) {
            if (buf_append(out, chunk, n) < 0)
                return -1;
            n = 0;
        }
    }
    return n ? buf_append(out, chunk, n) : 0;
}

int billmgr_form_pair(struct buf *out, const char *key, const char *value)
{
    if (out->len && buf_append(out, "&", 1) < 0)
        return -1;
    if (billmgr_urlencode(out, key) < 0 || buf_append(out, "=", 1) < 0)
        return -1;
    return billmgr_urlencode(out, value);
}

int billmgr_form_build(struct buf *out, const char *func, const struct billmgr_params *params,
                       const char *cred_key, const char *cred_value)
{
    if (billmgr_form_pair(out, "func", func) < 0 || billmgr_form_pair(out, "out", "json") < 0)
        return -1;
    for (size_t i = 0; params && i < params->n; i++)
        if (billmgr_form_pair(out, params->v[i].key, params->v[i].value) < 0)
            return -1;
    if (cred_key && billmgr_form_pair(out, cred_key, cred_value ? cred_value : "") < 0)
        return -1;
    return 0;
}
