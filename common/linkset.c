/*
 * linkset.c - the edits of an applied set that are done as one unit
 * (linkset.h): the intent of a crash-safe note append, which both
 * appliers keep in their set, and what a forward apply keeps of the stored
 * link set. Pure functions over fp sets (common/fp.h) and the note as
 * viewed; the owners commit what they return.
 */
#include "linkset.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fp.h"
#include "log.h"
#include "store.h"

/* ---- crash-safe note appends ------------------------------------------- */

/* 1 for a key that belongs to an intent. */
static int linkset_pend_key(const char *key)
{
    return strcmp(key, LINKSET_PEND_SEQ) == 0 || strcmp(key, LINKSET_PEND_LEN) == 0 ||
           strcmp(key, LINKSET_PEND_FP) == 0 ||
           strncmp(key, LINKSET_PEND_PREFIX, strlen(LINKSET_PEND_PREFIX)) == 0;
}

int linkset_pend_present(const char *applied)
{
    char v[32];
    return applied && fp_set_get(applied, LINKSET_PEND_LEN, v, sizeof(v)) == 0;
}

/* linkset_pend_strip into a buffer that may not alias applied. */
static int linkset_strip_into(const char *applied, char *out, size_t outlen)
{
    char key[STORE_APPLIED_MAX + 1], value[STORE_APPLIED_MAX + 1];

    if (!outlen)
        return -1;
    out[0] = '\0';
    for (const char *p = applied ? applied : "";
         (p = fp_set_next(p, key, sizeof(key), value, sizeof(value)));) {
        if (!key[0] || linkset_pend_key(key))
            continue;
        if (fp_set_put(out, outlen, key, value) < 0) {
            out[0] = '\0';
            return -1;
        }
    }
    return 0;
}

int linkset_pend_strip(const char *applied, char *out, size_t outlen)
{
    char *tmp = malloc(outlen ? outlen : 1);
    int rc = -1;
    if (tmp && linkset_strip_into(applied, tmp, outlen) == 0) {
        memcpy(out, tmp, strlen(tmp) + 1);
        rc = 0;
    } else if (outlen) {
        out[0] = '\0';
    }
    free(tmp);
    return rc;
}

int linkset_pend_put(const char *applied, const char *after, uint64_t seq, const char *note,
                     char *out, size_t outlen)
{
    char key[STORE_APPLIED_MAX + 1], value[STORE_APPLIED_MAX + 1];
    char was[STORE_APPLIED_MAX + 1], pkey[STORE_APPLIED_MAX + 8], fp[FP_HEX_LEN + 1];
    size_t len = note ? strlen(note) : 0;
    char *tmp = malloc(outlen ? outlen : 1);
    int rc = -1;

    applied = applied ? applied : "";
    if (!tmp || linkset_strip_into(applied, tmp, outlen) < 0)
        goto done;
    fp_of_mem(note ? note : "", len, fp);
    if (fp_set_put_int(tmp, outlen, LINKSET_PEND_SEQ, (int64_t)seq) < 0 ||
        fp_set_put_int(tmp, outlen, LINKSET_PEND_LEN, (int64_t)len) < 0 ||
        fp_set_put(tmp, outlen, LINKSET_PEND_FP, fp) < 0)
        goto done;
    /* Only what the edit changes: the set after it is the set before it
     * with these keys replaced, which keeps the intent short. */
    for (const char *p = after ? after : "";
         (p = fp_set_next(p, key, sizeof(key), value, sizeof(value)));) {
        if (!key[0] || linkset_pend_key(key))
            continue;
        if (fp_set_get(applied, key, was, sizeof(was)) == 0 && strcmp(was, value) == 0)
            continue;
        snprintf(pkey, sizeof(pkey), "%s%s", LINKSET_PEND_PREFIX, key);
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
        linkset_pend_strip(applied, out, outlen);
    return rc;
}

int linkset_pend_landed(const char *applied, const char *note, uint64_t *seq)
{
    char want[FP_HEX_LEN + 1], got[FP_HEX_LEN + 1];
    int64_t len;

    applied = applied ? applied : "";
    note = note ? note : "";
    if (seq) {
        int64_t v = fp_set_get_int(applied, LINKSET_PEND_SEQ, 0);
        *seq = v > 0 ? (uint64_t)v : 0;
    }
    /* The note written was the note as viewed then plus the block: if the
     * task's note starts with all of it, the edit landed. Staff writing
     * after it only add to the end. Anything else (the middle edited, the
     * note replaced) counts as not landed and the block is written again,
     * which is then the better outcome too: its text is not there. */
    len = fp_set_get_int(applied, LINKSET_PEND_LEN, -1);
    if (len <= 0 || fp_set_get(applied, LINKSET_PEND_FP, want, sizeof(want)) < 0 ||
        strlen(note) < (size_t)len)
        return 0;
    fp_of_mem(note, (size_t)len, got);
    return strcmp(got, want) == 0;
}

int linkset_pend_base(const char *applied, int landed, char *out, size_t outlen)
{
    char key[STORE_APPLIED_MAX + 1], value[STORE_APPLIED_MAX + 1];
    size_t pl = strlen(LINKSET_PEND_PREFIX);
    char *tmp = malloc(outlen ? outlen : 1);

    applied = applied ? applied : "";
    if (!tmp || linkset_strip_into(applied, tmp, outlen) < 0)
        goto fail;
    for (const char *p = applied;
         landed && (p = fp_set_next(p, key, sizeof(key), value, sizeof(value)));) {
        if (strncmp(key, LINKSET_PEND_PREFIX, pl) != 0 || !key[pl])
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

/* ---- what a forward apply keeps ----------------------------------------- */

void linkset_applied_merge(const char *stored, const char *planned, int sends_status,
                           int same_target, char *out, size_t outlen)
{
    char state[STORE_FP_MAX + 1];

    snprintf(out, outlen, "%s", planned ? planned : "");
    if (!same_target)
        return;
    /* A status not sent now keeps the value stored: the reverse publisher
     * records there the target's own status changes. */
    if (!sends_status) {
        int64_t kept = fp_set_get_int(stored, LINKSET_LINK_STATUS, -1);
        if (kept >= 0)
            fp_set_put_int(out, outlen, LINKSET_LINK_STATUS, kept); /* replaces a value: fits */
    }
    /* The reverse publisher's fingerprint of the state it last published
     * stays: without it every forward apply would make its next cycle
     * publish the same state again. */
    if (fp_set_get(stored, LINKSET_LINK_STATE, state, sizeof(state)) == 0 &&
        fp_set_put(out, outlen, LINKSET_LINK_STATE, state) < 0)
        log_warning("the applied set of a link has no room for the key \"%s\": the next "
                    "reverse cycle publishes the task's state again",
                    LINKSET_LINK_STATE);
    /* Its record of the last state confirmed, and of the forward seq that
     * state had seen, stay too: they are what tells a stale message
     * (forward_plan_status) and when to publish again. */
    static const char *const keep[] = {LINKSET_LINK_REV_PUB, LINKSET_LINK_PUB_FWD};
    for (size_t i = 0; i < sizeof(keep) / sizeof(keep[0]); i++) {
        int64_t v = fp_set_get_int(stored, keep[i], -1);
        if (v >= 0 && fp_set_put_int(out, outlen, keep[i], v) < 0)
            log_warning("the applied set of a link has no room for the key \"%s\"", keep[i]);
    }
}
