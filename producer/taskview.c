#include "taskview.h"

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
