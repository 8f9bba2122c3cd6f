/*
 * taskview.h - what an answer of the task view (api.func_task_edit,
 * elid=N) says, read alike by the relay (the forward fields of a task)
 * and the state publisher (the state of a task).
 *
 * Two questions before any field is read. Is the answer the view of the
 * task asked for? The API leaves out the fields that have no value, so
 * the view of another task, or a document holding nothing, would read as
 * a task with every field empty: a name or a note cleared on the other
 * side, a status 0; billmgr_view_of() (common/billmgr.h) answers that,
 * for the appliers too. And when the answer is a missed error, what is
 * missing? Its $object names it (BILLMANAGER-API.md §2): the element
 * (elid, or task) means the task was deleted; "func", or the view
 * function's own name, is BILLmanager's answer to a function it does not
 * have, which says nothing about the task; anything else, or nothing, is
 * a failure like any other, since an event or a state is never dropped
 * on a guess. Pure functions; the callers say what each outcome costs.
 */
#ifndef RT_TASKVIEW_H
#define RT_TASKVIEW_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "billmgr.h"

enum taskview_missed {
    TASKVIEW_MISSED_NO = 0, /* not a missed error */
    TASKVIEW_MISSED_TASK,   /* the task was deleted */
    TASKVIEW_MISSED_FUNC,   /* the view function does not exist */
    TASKVIEW_MISSED_OTHER,  /* something else, or nothing, is missing */
};

/* What rep, the answer of a call of the view function func, says is
 * missing: TASKVIEW_MISSED_NO unless it is a refusal (RT_REJECT) of type
 * "missed". */
enum taskview_missed taskview_missed(const struct billmgr_reply *rep, const char *func);

#endif
