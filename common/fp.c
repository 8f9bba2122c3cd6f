#include "fp.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void fp_init(struct fp *f)
{
    XXH3_64bits_reset(&f->state);
}

void fp_add_mem(struct fp *f, const void *p, size_t n)
{
    uint64_t len = n;
    XXH3_64bits_update(&f->state, &len, sizeof(len));
    if (n)
        XXH3_64bits_update(&f->state, p, n);
}

void fp_add_str(struct fp *f, const char *s)
{
    fp_add_mem(f, s ? s : "", s ? strlen(s) : 0);
}

void fp_add_int(struct fp *f, int64_t v)
{
    fp_add_mem(f, &v, sizeof(v));
}

void fp_hex(const struct fp *f, char out[FP_HEX_LEN + 1])
{
    snprintf(out, FP_HEX_LEN + 1, "%016" PRIx64, (uint64_t)XXH3_64bits_digest(&f->state));
}

void fp_of_mem(const void *p, size_t n, char out[FP_HEX_LEN + 1])
{
    struct fp f;
    fp_init(&f);
    fp_add_mem(&f, p, n);
    fp_hex(&f, out);
}

void fp_of_str(const char *s, char out[FP_HEX_LEN + 1])
{
    fp_of_mem(s ? s : "", s ? strlen(s) : 0, out);
}

/* Finds "key=" at the start of a pair; returns the value's start and its
 * length, or NULL. */
static const char *fp_set_find(const char *set, const char *key, size_t *vlen)
{
    size_t klen = strlen(key);
    const char *p = set;
    while (p && *p) {
        size_t pair = strcspn(p, ";");
        if (pair > klen && strncmp(p, key, klen) == 0 && p[klen] == '=') {
            *vlen = pair - klen - 1;
            return p + klen + 1;
        }
        p += pair;
        if (*p == ';')
            p++;
    }
    return NULL;
}

int fp_set_get(const char *set, const char *key, char *out, size_t outlen)
{
    size_t vlen;
    const char *v = fp_set_find(set, key, &vlen);
    if (outlen)
        out[0] = '\0';
    if (!v || vlen >= outlen)
        return -1;
    memcpy(out, v, vlen);
    out[vlen] = '\0';
    return 0;
}

int64_t fp_set_get_int(const char *set, const char *key, int64_t def)
{
    char buf[32], *end;
    if (fp_set_get(set, key, buf, sizeof(buf)) < 0 || !buf[0])
        return def;
    long long v = strtoll(buf, &end, 10);
    return *end ? def : (int64_t)v;
}

int fp_set_put(char *set, size_t setlen, const char *key, const char *value)
{
    if (strpbrk(key, ";=") || strpbrk(value, ";=") || !*key)
        return -1;
    char tmp[1024];
    size_t o = 0;
    const char *p = set;
    size_t klen = strlen(key);
    /* Copy every other pair, then append key=value. */
    while (*p) {
        size_t pair = strcspn(p, ";");
        int same = pair > klen && strncmp(p, key, klen) == 0 && p[klen] == '=';
        if (!same && pair) {
            if (o + pair + 2 > sizeof(tmp))
                return -1;
            if (o)
                tmp[o++] = ';';
            memcpy(tmp + o, p, pair);
            o += pair;
        }
        p += pair;
        if (*p == ';')
            p++;
    }
    int n = snprintf(tmp + o, sizeof(tmp) - o, "%s%s=%s", o ? ";" : "", key, value);
    if (n < 0 || (size_t)n >= sizeof(tmp) - o || o + (size_t)n + 1 > setlen)
        return -1;
    memcpy(set, tmp, o + (size_t)n + 1);
    return 0;
}

const char *fp_set_next(const char *p, char *key, size_t keylen, char *value, size_t valuelen)
{
    while (*p == ';')
        p++;
    if (!*p)
        return NULL;
    size_t n = strcspn(p, ";");
    const char *eq = memchr(p, '=', n);
    if (keylen)
        key[0] = '\0';
    if (valuelen)
        value[0] = '\0';
    if (eq && n <= FP_SET_PAIR_MAX) {
        snprintf(key, keylen, "%.*s", (int)(eq - p), p);
        snprintf(value, valuelen, "%.*s", (int)(n - (size_t)(eq - p) - 1), eq + 1);
    }
    return p + n;
}

int fp_set_del(char *set, const char *key)
{
    size_t klen = strlen(key);
    char *out = set;
    const char *p = set;
    int removed = 0;
    /* Writing never overtakes reading: out only ever moves behind p. */
    while (*p) {
        size_t pair = strcspn(p, ";");
        int same = pair > klen && strncmp(p, key, klen) == 0 && p[klen] == '=';
        removed += same;
        if (!same && pair) {
            if (out != set)
                *out++ = ';';
            memmove(out, p, pair);
            out += pair;
        }
        p += pair;
        if (*p == ';')
            p++;
    }
    *out = '\0';
    return removed;
}

int fp_set_put_int(char *set, size_t setlen, const char *key, int64_t value)
{
    char buf[32];
    snprintf(buf, sizeof(buf), "%" PRId64, value);
    return fp_set_put(set, setlen, key, buf);
}
