/*
 * fp.h - fingerprints of field values, and small sets of them.
 *
 * A fingerprint says "these fields are what they were": the relay compares
 * the fingerprint of a task's forward fields with the one last confirmed,
 * the appliers compare per-field fingerprints to send only what changed.
 * It is XXH3-64 (libxxhash) over the fields, each prefixed by its length so
 * that ("ab","c") and ("a","bc") differ. 64 bits make an accidental match
 * of two different states practically impossible (2^-64 per comparison);
 * it is not a defence against someone crafting collisions, which nobody
 * gains anything from here.
 *
 * A fingerprint set is a short text "k=v;k=v" kept in the store, e.g.
 * "name=5f0c...;status=2;note_len=120". Keys and values hold no ';' or '='.
 */
#ifndef RT_FP_H
#define RT_FP_H

#include <stddef.h>
#include <stdint.h>

/* The state is kept inside struct fp (no allocation per fingerprint); its
 * layout comes from the same package as the library. */
#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

/* Hex digits of a fingerprint, without the NUL. */
#define FP_HEX_LEN 16

struct fp {
    XXH3_state_t state;
};

/* Starts a fingerprint. */
void fp_init(struct fp *f);

/* Adds a text field; NULL counts as "". */
void fp_add_str(struct fp *f, const char *s);

/* Adds bytes. */
void fp_add_mem(struct fp *f, const void *p, size_t n);

/* Adds an integer field. */
void fp_add_int(struct fp *f, int64_t v);

/* Writes the fingerprint as FP_HEX_LEN hex digits and a NUL into out. The
 * struct may be added to further afterwards. */
void fp_hex(const struct fp *f, char out[FP_HEX_LEN + 1]);

/* The fingerprint of one string, in one call. */
void fp_of_str(const char *s, char out[FP_HEX_LEN + 1]);

/* The fingerprint of the first n bytes of p, in one call. */
void fp_of_mem(const void *p, size_t n, char out[FP_HEX_LEN + 1]);

/* Copies the value of key in set into out. Returns 0, or -1 when the key is
 * absent (out is then "") or the value does not fit. */
int fp_set_get(const char *set, const char *key, char *out, size_t outlen);

/* The value of key in set as an integer; def when absent or not a number. */
int64_t fp_set_get_int(const char *set, const char *key, int64_t def);

/* Sets key to value in set (a NUL-terminated string in a buffer of setlen
 * bytes), replacing an old value. Returns 0, or -1 when the result would
 * not fit or key/value hold ';' or '=' (set is then unchanged). */
int fp_set_put(char *set, size_t setlen, const char *key, const char *value);

/* fp_set_put with an integer value. */
int fp_set_put_int(char *set, size_t setlen, const char *key, int64_t value);

/* Steps through the pairs of a set: from p (the set, then what the last
 * call returned), copies the next pair's key and value (each cut to its
 * buffer) and returns where the one after starts, or NULL at the end. A
 * pair without '=', or longer than FP_SET_PAIR_MAX, comes back with an
 * empty key, for the caller to skip; empty pairs are passed over. */
#define FP_SET_PAIR_MAX 512
const char *fp_set_next(const char *p, char *key, size_t keylen, char *value, size_t valuelen);

/* Removes every pair of key from set, in place (empty pairs go too).
 * Returns how many pairs of key there were. */
int fp_set_del(char *set, const char *key);

#endif
