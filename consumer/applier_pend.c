/*
 * applier_pend.c - the intents of crash-safe note appends (applier.h,
 * "crash-safe note appends"): the keys an intent adds to a task's fp set,
 * and what a later message reads from them. Pure functions over fp sets
 * (common/fp.h) and the note as viewed; the owners commit what they
 * return.
 */
#include "applier.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fp.h"
#include "store.h"

/* 1 for a key that belongs to an intent. */
static int applier_pend_key(const char *key)
{
    return strcmp(key, APPLIER_PEND_SEQ) == 0 || strcmp(key, APPLIER_PEND_LEN) == 0 ||
           strcmp(key, APPLIER_PEND_FP) == 0 ||
           strncmp(key, APPLIER_PEND_PREFIX, strlen(APPLIER_PEND_PREFIX)) == 0;
}

/* Reads the "k=v" item of an fp set at p into key and value (both
 * STORE_APPLIED_MAX + 1 bytes; a set is never longer) and returns where
 * the next one starts, or NULL at the end. A malformed item (no '=')
 * comes back with an empty key, for the caller to skip. */
static const char *applier_set_item(const char *p, char *key, char *value)
{
    while (*p == ';')
        p++;
    if (!*p)
        return NULL;
    size_t n = strcspn(p, ";");
    const char *eq = memchr(p, '=', n);
    key[0] = value[0] = '\0';
    if (eq && n <= STORE_APPLIED_MAX) {
        snprintf(key, STORE_APPLIED_MAX + 1, "%.*s", (int)(eq - p), p);
        snprintf(value, STORE_APPLIED_MAX + 1, "%.*s", (int)(n - (size_t)(eq - p) - 1), eq + 1);
    }
    return p + n;
}

int applier_pend_present(const char *applied)
{
    char v[32];
    return applied && fp_set_get(applied, APPLIER_PEND_LEN, v, sizeof(v)) == 0;
}

/* applier_pend_strip into a buffer that may not alias applied. */
static int applier_strip_into(const char *applied, char *out, size_t outlen)
{
    char key[STORE_APPLIED_MAX + 1], value[STORE_APPLIED_MAX + 1];

    if (!outlen)
        return -1;
    out[0] = '\0';
    for (const char *p = applied ? applied : ""; (p = applier_set_item(p, key, value));) {
        if (!key[0] || applier_pend_key(key))
            continue;
        if (fp_set_put(out, outlen, key, value) < 0) {
            out[0] = '\0';
            return -1;
        }
    }
    return 0;
}

int applier_pend_strip(const char *applied, char *out, size_t outlen)
{
    char *tmp = malloc(outlen ? outlen : 1);
    int rc = -1;
    if (tmp && applier_strip_into(applied, tmp, outlen) == 0) {
        memcpy(out, tmp, strlen(tmp) + 1);
        rc = 0;
    } else if (outlen) {
        out[0] = '\0';
    }
    free(tmp);
    return rc;
}

int applier_pend_put(const char *applied, const char *after, uint64_t seq, const char *note,
                     char *out, size_t outlen)
{
    char key[STORE_APPLIED_MAX + 1], value[STORE_APPLIED_MAX + 1];
    char was[STORE_APPLIED_MAX + 1], pkey[STORE_APPLIED_MAX + 8], fp[FP_HEX_LEN + 1];
    size_t len = note ? strlen(note) : 0;
    char *tmp = malloc(outlen ? outlen : 1);
    int rc = -1;

    applied = applied ? applied : "";
    if (!tmp || applier_strip_into(applied, tmp, outlen) < 0)
        goto done;
    fp_of_mem(note ? note : "", len, fp);
    if (fp_set_put_int(tmp, outlen, APPLIER_PEND_SEQ, (int64_t)seq) < 0 ||
        fp_set_put_int(tmp, outlen, APPLIER_PEND_LEN, (int64_t)len) < 0 ||
        fp_set_put(tmp, outlen, APPLIER_PEND_FP, fp) < 0)
        goto done;
    /* Only what the edit changes: the set after it is the set before it
     * with these keys replaced, which keeps the intent short. */
    for (const char *p = after ? after : ""; (p = applier_set_item(p, key, value));) {
        if (!key[0] || applier_pend_key(key))
            continue;
        if (fp_set_get(applied, key, was, sizeof(was)) == 0 && strcmp(was, value) == 0)
            continue;
        snprintf(pkey, sizeof(pkey), "%s%s", APPLIER_PEND_PREFIX, key);
        if (fp_set_put(tmp, outlen, pkey, value) < 0)
            goto done;
    }
    if (strlen(tmp) > STORE_APPLIED_MAX)
        goto done;
    memcpy(out, tmp, strlen(tmp) + 1);
    rc = 0;
done:
    free(tmp);
    if (rc < 0)
        applier_pend_strip(applied, out, outlen);
    return rc;
}

int applier_pend_landed(const char *applied, const char *note, uint64_t *seq)
{
    char want[FP_HEX_LEN + 1], got[FP_HEX_LEN + 1];
    int64_t len;

    applied = applied ? applied : "";
    note = note ? note : "";
    if (seq) {
        int64_t v = fp_set_get_int(applied, APPLIER_PEND_SEQ, 0);
        *seq = v > 0 ? (uint64_t)v : 0;
    }
    /* The note written was the note as viewed then plus the block: if the
     * task's note starts with all of it, the edit landed. Staff writing
     * after it only add to the end. Anything else (the middle edited, the
     * note replaced) counts as not landed and the block is written again,
     * which is then the better outcome too: its text is not there. */
    len = fp_set_get_int(applied, APPLIER_PEND_LEN, -1);
    if (len <= 0 || fp_set_get(applied, APPLIER_PEND_FP, want, sizeof(want)) < 0 ||
        strlen(note) < (size_t)len)
        return 0;
    fp_of_mem(note, (size_t)len, got);
    return strcmp(got, want) == 0;
}

int applier_pend_base(const char *applied, int landed, char *out, size_t outlen)
{
    char key[STORE_APPLIED_MAX + 1], value[STORE_APPLIED_MAX + 1];
    size_t pl = strlen(APPLIER_PEND_PREFIX);
    char *tmp = malloc(outlen ? outlen : 1);

    applied = applied ? applied : "";
    if (!tmp || applier_strip_into(applied, tmp, outlen) < 0)
        goto fail;
    for (const char *p = applied; landed && (p = applier_set_item(p, key, value));) {
        if (strncmp(key, APPLIER_PEND_PREFIX, pl) != 0 || !key[pl])
            continue;
        if (fp_set_put(tmp, outlen, key + pl, value) < 0)
            goto fail;
    }
    memcpy(out, tmp, strlen(tmp) + 1);
    free(tmp);
    return 0;
fail:
    free(tmp);
    if (outlen)
        out[0] = '\0';
    return -1;
}
