/*
 * applier_view.c - the view of a task, as both appliers read it
 * (applier.h, "the view of a task"): only from the view of that very task,
 * and only fields that are text or absent.
 */
#include "applier.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "billmgr.h"

/* "a" or "an" before word. */
static const char *applier_article(const char *word)
{
    return word[0] && strchr("aeiouAEIOU", word[0]) ? "an" : "a";
}

int applier_view_read(json_t *doc, int64_t elid, const char *const *fields, const char **out,
                      size_t n, char *why, size_t whylen)
{
    if (billmgr_view_of(doc, elid, why, whylen) < 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (billmgr_text_field(doc, fields[i], &out[i]) < 0) {
            snprintf(why, whylen, "holds %s %s that is not text", applier_article(fields[i]),
                     fields[i]);
            return -1;
        }
    }
    return 0;
}
