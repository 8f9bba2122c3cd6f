/*
 * store_rev.c - the client side's reverse state (store.h): per source
 * task, the last state seq applied, the notes already copied back and
 * what was last applied to the task.
 */
#include "store.h"
#include "store_db.h"

#include <inttypes.h>
#include <string.h>

/* store_db_get_fn of store_rev_get(). */
static rt_status store_rev_read(struct store *st, sqlite3_stmt *s, int64_t task, void *row)
{
    struct store_rev *out = row;
    out->found = true;
    out->seq = store_db_column_u64(s, 0);
    out->notes_applied = store_db_column_u64(s, 1);
    if (store_db_column_text(s, 2, out->applied, sizeof out->applied) < 0)
        return store_db_reject(st, "the stored reverse state of task %" PRId64 " is too long",
                               task);
    return RT_OK;
}

rt_status store_rev_get(struct store *st, const char *client, int64_t task, struct store_rev *out)
{
    return store_db_get(st, ST_REV_GET, client, task, "reading reverse state", store_rev_read, out,
                        sizeof *out);
}

rt_status store_rev_put(struct store *st, const char *client, int64_t task, uint64_t seq,
                        uint64_t notes_applied, const char *applied)
{
    rt_status r = store_db_check_client(st, client);
    if (r == RT_OK)
        r = store_db_check_u64(st, seq, "seq");
    if (r == RT_OK)
        r = store_db_check_u64(st, notes_applied, "notes_applied");
    applied = applied ? applied : "";
    if (r == RT_OK && strlen(applied) > STORE_APPLIED_MAX)
        r = store_db_reject(st, "applied is longer than %d bytes", STORE_APPLIED_MAX);
    if (r != RT_OK)
        return r;
    sqlite3_stmt *s = store_db_task_stmt(st, ST_REV_PUT, client, task);
    store_db_bind_u64(s, 3, seq);
    store_db_bind_u64(s, 4, notes_applied);
    store_db_bind_text(s, 5, applied);
    return store_db_run(st, s, "storing reverse state");
}
