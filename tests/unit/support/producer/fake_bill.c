#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "fake_bill.h"
#include "fake_doc.h"
#include "http_stub.h"

struct fake_bill fake_bill = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* The answer of a view (fake_bill.lock held): sets *doc, returns the HTTP
 * status. */
static int fake_bill_view(const char *body, json_t **doc)
{
    char v[64];
    fake_bill.views++;
    fake_doc_form_get(body, "elid", v, sizeof v);
    long id = atol(v);
    if (fake_bill.fail_views > 0) {
        fake_bill.fail_views--;
        return 503;
    }
    if (fake_bill.view_missed[0]) {
        json_object_set_new(*doc, "error",
                            fake_doc_error("missed", fake_bill.view_missed, "unknown"));
    } else if (fake_bill.deny_views) {
        json_object_set_new(*doc, "error", fake_doc_error("access", "task.view", "no access"));
    } else if (id <= 0 || id >= FAKE_BILL_TASKS || !fake_bill.tasks[id].exists) {
        json_object_set_new(*doc, "error", fake_doc_error("missed", "elid", "gone"));
    } else if (!fake_bill.view_empty) {
        json_decref(*doc);
        *doc = fake_bill.view_doc(&fake_bill.tasks[id]);
        if (fake_bill.view_other)
            fake_doc_long(*doc, "id", 999);
        if (fake_bill.view_arrays[0]) {
            const char *key =
                strcmp(fake_bill.view_arrays, "*") == 0 ? NULL : fake_bill.view_arrays;
            json_t *spoiled = fake_doc_arrays(*doc, key);
            json_decref(*doc);
            *doc = spoiled;
        }
    }
    return 200;
}

/* The answer of a list page (fake_bill.lock held). */
static int fake_bill_list(const char *body, json_t **doc)
{
    char filter[8], cnt[16], num[16];
    int code = 200;

    fake_bill.lists++;
    fake_doc_form_get(body, "filter", filter, sizeof filter);
    fake_doc_form_get(body, "dept", fake_bill.last_filter, sizeof fake_bill.last_filter);
    fake_doc_form_get(body, "p_cnt", cnt, sizeof cnt);
    fake_doc_form_get(body, "p_num", num, sizeof num);
    long dept = atol(fake_bill.last_filter), pc = atol(cnt), pn = atol(num);
    fake_bill.last_p_num = pn;
    if (fake_bill.fail_lists > 0) {
        fake_bill.fail_lists--;
        code = 503;
    }
    json_t *elems = json_array();
    long total = 0;
    for (int i = 0; i < FAKE_BILL_TASKS; i++) {
        const struct fake_task *t = &fake_bill.tasks[i];
        if (!t->exists || strcmp(filter, "on") != 0 || t->department != dept)
            continue;
        if (total >= (pn - 1) * pc && total < pn * pc)
            json_array_append_new(elems, fake_bill.list_row(t));
        total++;
    }
    if (json_array_size(elems))
        json_object_set_new(*doc, "elem", elems);
    else
        json_decref(elems);
    fake_doc_long(*doc, "p_elems", total);
    fake_doc_long(*doc, "p_num", pn);
    fake_doc_long(*doc, "p_cnt", pc);
    if (fake_bill.list_arrays) {
        json_t *spoiled = fake_doc_arrays(*doc, NULL);
        json_decref(*doc);
        *doc = spoiled;
    }
    return code;
}

/* Answers one request body (http_stub's answer, on its thread): the HTTP
 * status, and *out the JSON text (malloc'd) for a 200, no body otherwise. */
static int fake_bill_answer(void *arg, const char *body, char **out)
{
    char func[64];
    json_t *doc = json_object();
    int code = 200;

    (void)arg;
    fake_doc_form_get(body, "func", func, sizeof func);
    pthread_mutex_lock(&fake_bill.lock);
    if (strcmp(func, "task.view") == 0)
        code = fake_bill_view(body, &doc);
    else if (strcmp(func, "task.list") == 0)
        code = fake_bill_list(body, &doc);
    else
        json_object_set_new(doc, "error", fake_doc_error("missed", "func", func));
    pthread_mutex_unlock(&fake_bill.lock);
    if (code != 200) {
        json_decref(doc);
        return code;
    }
    json_t *root = json_pack("{s:o}", "doc", doc);
    *out = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    return code;
}

int fake_bill_start(fake_bill_doc_fn view_doc, fake_bill_doc_fn list_row)
{
    char err[256];

    pthread_mutex_lock(&fake_bill.lock);
    memset(fake_bill.tasks, 0, sizeof fake_bill.tasks);
    fake_bill.view_doc = view_doc;
    fake_bill.list_row = list_row;
    fake_bill.views = fake_bill.lists = 0;
    fake_bill.fail_views = fake_bill.fail_lists = fake_bill.deny_views = 0;
    fake_bill.view_missed[0] = fake_bill.view_arrays[0] = '\0';
    fake_bill.view_other = fake_bill.view_empty = fake_bill.list_arrays = 0;
    fake_bill.last_filter[0] = '\0';
    fake_bill.last_p_num = 0;
    pthread_mutex_unlock(&fake_bill.lock);
    fake_bill.stub = http_stub_start(fake_bill_answer, NULL, err, sizeof err);
    if (!fake_bill.stub)
        fail_msg("%s", err);
    return http_stub_port(fake_bill.stub);
}

void fake_bill_stop(void)
{
    http_stub_stop(fake_bill.stub);
    fake_bill.stub = NULL;
}

void fake_bill_put(const struct fake_task *t)
{
    assert_true(t->id > 0 && t->id < FAKE_BILL_TASKS);
    pthread_mutex_lock(&fake_bill.lock);
    fake_bill.tasks[t->id] = *t;
    pthread_mutex_unlock(&fake_bill.lock);
}

int fake_bill_get(const int *field)
{
    pthread_mutex_lock(&fake_bill.lock);
    int v = *field;
    pthread_mutex_unlock(&fake_bill.lock);
    return v;
}

void fake_bill_set(int *field, int value)
{
    pthread_mutex_lock(&fake_bill.lock);
    *field = value;
    pthread_mutex_unlock(&fake_bill.lock);
}
