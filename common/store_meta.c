/*
 * store_meta.c - small named values kept in the store (store.h): the last
 * sync, the last apply and the like, as text or as integers.
 */
#include "store.h"
#include "store_db.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static rt_status store_meta_check_key(struct store *st, const char *key)
{
    if (!key || !*key)
        return store_db_reject(st, "meta key is empty");
    if (strnlen(key, STORE_META_KEY_MAX + 1) > STORE_META_KEY_MAX)
        return store_db_reject(st, "meta key is longer than %d bytes", STORE_META_KEY_MAX);
    return RT_OK;
}

rt_status store_meta_get(struct store *st, const char *key, char *buf, size_t buflen, bool *found)
{
    *found = false;
    if (buflen)
        buf[0] = '\0';
    rt_status r = store_meta_check_key(st, key);
    if (r != RT_OK)
        return r;
    sqlite3_stmt *s = store_db_stmt(st, ST_META_GET);
    store_db_bind_text(s, 1, key);
    sqlite3_stmt *row;
    r = store_db_row(st, s, "reading a meta value", &row);
    if (r != RT_OK || !row)
        return r;
    if (!buflen || store_db_column_text(row, 0, buf, buflen) < 0)
        r = store_db_reject(st, "meta value of \"%s\" does not fit in %zu bytes", key, buflen);
    else
        *found = true;
    store_db_reset(s);
    if (r != RT_OK && buflen)
        buf[0] = '\0';
    return r;
}

rt_status store_meta_set(struct store *st, const char *key, const char *value)
{
    rt_status r = store_meta_check_key(st, key);
    if (r != RT_OK)
        return r;
    if (!value)
        return store_db_reject(st, "meta value of \"%s\" is NULL", key);
    if (strnlen(value, STORE_META_VALUE_MAX + 1) > STORE_META_VALUE_MAX)
        return store_db_reject(st, "meta value of \"%s\" is longer than %d bytes", key,
                               STORE_META_VALUE_MAX);
    sqlite3_stmt *s = store_db_stmt(st, ST_META_SET);
    store_db_bind_text(s, 1, key);
    store_db_bind_text(s, 2, value);
    return store_db_run(st, s, "storing a meta value");
}

rt_status store_meta_get_i64(struct store *st, const char *key, int64_t *value, bool *found)
{
    *value = 0;
    char buf[32];
    rt_status r = store_meta_get(st, key, buf, sizeof buf, found);
    if (r != RT_OK || !*found)
        return r;
    char *end = NULL;
    errno = 0;
    long long v = strtoll(buf, &end, 10);
    if (errno || end == buf || *end) {
        *found = false;
        return store_db_reject(st, "meta value of \"%s\" is not an integer", key);
    }
    *value = (int64_t)v;
    return RT_OK;
}

rt_status store_meta_set_i64(struct store *st, const char *key, int64_t value)
{
    char buf[32];
    snprintf(buf, sizeof buf, "%" PRId64, value);
    return store_meta_set(st, key, buf);
}
