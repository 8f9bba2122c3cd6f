#include "taskview.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum taskview_missed taskview_missed(const struct billmgr_reply *rep, const char *func)
{
    const char *o = rep->err_object;
    if (rep->status != RT_REJECT || strcmp(rep->err_type, "missed") != 0)
        return TASKVIEW_MISSED_NO;
    if (strcmp(o, "elid") == 0 || strcmp(o, "task") == 0)
        return TASKVIEW_MISSED_TASK;
    if (strcmp(o, "func") == 0 || strcmp(o, func) == 0)
        return TASKVIEW_MISSED_FUNC;
    return TASKVIEW_MISSED_OTHER;
}

int taskview_of(json_t *doc, int64_t elid, char *why, size_t whylen)
{
    static const char *const ids[] = {"elid", "id"};
    int named = 0;

    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        const char *t;
        int r = billmgr_text_field(doc, ids[i], &t);
        if (r < 0) {
            snprintf(why, whylen, "holds an %s that is not text", ids[i]);
            return -1;
        }
        if (r == 0)
            continue;
        char *end;
        errno = 0;
        long long v = strtoll(t, &end, 10);
        if (errno || end == t || *end || v != elid) {
            snprintf(why, whylen, "answers for task \"%.32s\"", t);
            return -1;
        }
        named = 1;
    }
    if (!named) {
        snprintf(why, whylen, "names no task");
        return -1;
    }
    return 0;
}
