#include "harness_flow.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"
#include "harness_sim.h"
#include "notes.h"

/* Fails the test after printing both daemons' logs. */
#define EXPECT(s, cond, ...)                                                                       \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            harness_scenario_print_logs(s);                                                        \
            fail_msg(__VA_ARGS__);                                                                 \
        }                                                                                          \
    } while (0)

static const char *jstr(const json_t *o, const char *key)
{
    const char *v = json_string_value(json_object_get(o, key));
    return v ? v : "";
}

static long long jint(const json_t *o, const char *key)
{
    const json_t *v = json_object_get(o, key);
    if (json_is_integer(v))
        return json_integer_value(v);
    if (json_is_string(v))
        return strtoll(json_string_value(v), NULL, 10);
    return 0;
}

static json_t *task_by_id(json_t *tasks, long long id)
{
    size_t i;
    json_t *t;
    json_array_foreach(tasks, i, t)
    {
        if (jint(t, "id") == id)
            return t;
    }
    return NULL;
}

long long harness_flow_note_origin(const char *note, const char *client)
{
    char prefix[160], origin[NOTES_ORIGIN_MAX + 1];
    snprintf(prefix, sizeof(prefix), "--- remotetask: from client %s, task ", client);
    const char *p = strstr(note, prefix);
    if (!p)
        return 0;
    long long task = strtoll(p + strlen(prefix), NULL, 10);
    notes_origin_forward(origin, sizeof(origin), client, task);
    return task > 0 && notes_has_origin(note, origin) ? task : 0;
}

static int cmp_ll(const void *a, const void *b)
{
    long long x = *(const long long *)a, y = *(const long long *)b;
    return x < y ? -1 : x > y;
}

int harness_flow_fields_match(const json_t *src, const json_t *dst, char *why, size_t len)
{
    static const char *const keys[] = {"name", "type", "deadline"};
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        if (strcmp(jstr(src, keys[i]), jstr(dst, keys[i])) != 0) {
            snprintf(why, len, "task %lld -> %lld: %s \"%s\" on the target, \"%s\" on the source",
                     jint(src, "id"), jint(dst, "id"), keys[i], jstr(dst, keys[i]),
                     jstr(src, keys[i]));
            return 0;
        }
    }
    if (jint(src, "status") != jint(dst, "status")) {
        snprintf(why, len, "task %lld -> %lld: status %lld on the target, %lld on the source",
                 jint(src, "id"), jint(dst, "id"), jint(dst, "status"), jint(src, "status"));
        return 0;
    }
    /* The note arrives in blocks (one per change of the source's text):
     * every line of the source's note must be in the target's note. */
    const char *note = jstr(src, "note"), *target = jstr(dst, "note");
    while (*note) {
        size_t n = strcspn(note, "\n");
        char line[1024];
        if (n && n < sizeof(line)) {
            memcpy(line, note, n);
            line[n] = '\0';
            if (!strstr(target, line)) {
                snprintf(why, len, "task %lld -> %lld: the target's note lacks \"%s\"",
                         jint(src, "id"), jint(dst, "id"), line);
                return 0;
            }
        }
        note += n + (note[n] == '\n');
    }
    return 1;
}

void harness_flow_count(const char *client, json_t *src, json_t *dst, struct harness_flow_count *c)
{
    size_t n = json_array_size(src);
    memset(c, 0, sizeof(*c));
    c->sent = n;
    long long *ids = calloc(n ? n : 1, sizeof(*ids));
    size_t *hits = calloc(n ? n : 1, sizeof(*hits));
    json_t **first = calloc(n ? n : 1, sizeof(*first));
    json_t **by_id = calloc(n ? n : 1, sizeof(*by_id));
    assert_true(ids && hits && first && by_id);
    for (size_t i = 0; i < n; i++)
        ids[i] = jint(json_array_get(src, i), "id");
    qsort(ids, n, sizeof(*ids), cmp_ll);
    for (size_t i = 0; i < n; i++) {
        json_t *t = json_array_get(src, i);
        long long *k = bsearch(&(long long){jint(t, "id")}, ids, n, sizeof(*ids), cmp_ll);
        by_id[k - ids] = t;
    }
    size_t i;
    json_t *t;
    json_array_foreach(dst, i, t)
    {
        long long origin = harness_flow_note_origin(jstr(t, "note"), client);
        long long *k = origin ? bsearch(&origin, ids, n, sizeof(*ids), cmp_ll) : NULL;
        if (!k) {
            c->foreign++;
            continue;
        }
        size_t at = (size_t)(k - ids);
        if (hits[at]++ == 0)
            first[at] = t;
    }
    for (size_t j = 0; j < n; j++) {
        if (!hits[j]) {
            if (!c->lost)
                c->first_lost = ids[j];
            c->lost++;
            continue;
        }
        c->applied++;
        c->duplicated += hits[j] - 1;
        char why[512];
        if (!harness_flow_fields_match(by_id[j], first[j], why, sizeof(why))) {
            if (!c->stale) {
                snprintf(c->first_stale, sizeof(c->first_stale), "%s", why);
                c->first_stale_id = ids[j];
            }
            c->stale++;
        }
    }
    free(ids);
    free(hits);
    free(first);
    free(by_id);
}

int harness_flow_done(json_t *dst, void *arg)
{
    struct harness_flow_wait *w = arg;
    harness_flow_count(w->client, w->src, dst, &w->count);
    return w->count.lost == 0 && w->count.stale == 0;
}

int harness_flow_wait_all(struct harness_scenario *s, long long timeout_ms,
                          struct harness_flow_count *c)
{
    struct harness_flow_wait w = {.client = s->client_id};
    w.src = harness_sim_tasks(s->src, s->src_dept);
    int met = 0;
    json_decref(harness_wait_tasks(s->dst, s->dst_dept, harness_flow_done, &w, timeout_ms, &met));
    json_decref(w.src);
    if (c)
        *c = w.count;
    return met;
}

size_t harness_flow_expect_all_applied(struct harness_scenario *s, const char *scenario,
                                       long long timeout_ms)
{
    struct harness_flow_wait w = {.client = s->client_id};
    w.src = harness_sim_tasks(s->src, s->src_dept);
    long long t0 = harness_now_ms();
    int met = 0;
    json_t *dst = harness_wait_tasks(s->dst, s->dst_dept, harness_flow_done, &w, timeout_ms, &met);
    const struct harness_flow_count *c = &w.count;
    printf("%s: sent=%zu applied=%zu lost=%zu duplicated=%zu\n", scenario, c->sent, c->applied,
           c->lost, c->duplicated);
    printf("%s: waited %lld ms for the target; stale=%zu foreign=%zu\n", scenario,
           harness_now_ms() - t0, c->stale, c->foreign);
    fflush(stdout);
    if (!met || c->duplicated || c->foreign) {
        if (c->lost)
            fprintf(stderr, "%s: first lost source task: %lld\n", scenario, c->first_lost);
        if (c->stale) {
            /* The expected fields are those the test gave the source; say
             * too what the source holds now, in case something else (the
             * reverse path) changed it since. */
            json_t *now = harness_sim_tasks(s->src, s->src_dept);
            json_t *t = task_by_id(now, c->first_stale_id);
            fprintf(stderr,
                    "%s: first stale task: %s; source task %lld now has name \"%s\" status %lld "
                    "deadline \"%s\"\n",
                    scenario, c->first_stale, c->first_stale_id, t ? jstr(t, "name") : "?",
                    t ? jint(t, "status") : -1, t ? jstr(t, "deadline") : "?");
            json_decref(now);
        }
    }
    json_decref(dst);
    json_decref(w.src);
    EXPECT(s, c->lost == 0, "%s: %zu source tasks never reached the target within %lld ms",
           scenario, c->lost, timeout_ms);
    EXPECT(s, c->stale == 0, "%s: %zu target tasks do not hold their final fields (%s)", scenario,
           c->stale, c->first_stale);
    EXPECT(s, c->duplicated == 0, "%s: %zu duplicated target tasks", scenario, c->duplicated);
    EXPECT(s, c->foreign == 0, "%s: %zu target tasks without a known origin", scenario, c->foreign);
    return c->sent;
}

size_t harness_flow_target_count(struct harness_scenario *s)
{
    json_t *dst = harness_sim_tasks(s->dst, s->dst_dept);
    size_t n = 0, i;
    json_t *t;
    json_array_foreach(dst, i, t)
    {
        if (harness_flow_note_origin(jstr(t, "note"), s->client_id))
            n++;
    }
    json_decref(dst);
    return n;
}

struct count_wait {
    const char *client;
    size_t at_least;
};

static int count_done(json_t *dst, void *arg)
{
    struct count_wait *w = arg;
    size_t n = 0, i;
    json_t *t;
    json_array_foreach(dst, i, t)
    {
        if (harness_flow_note_origin(jstr(t, "note"), w->client))
            n++;
    }
    return n >= w->at_least;
}

void harness_flow_wait_target_count(struct harness_scenario *s, size_t n, long long timeout_ms)
{
    struct count_wait w = {.client = s->client_id, .at_least = n};
    int met = 0;
    json_decref(harness_wait_tasks(s->dst, s->dst_dept, count_done, &w, timeout_ms, &met));
    EXPECT(s, met, "the target did not get %zu tasks within %lld ms (it has %zu)", n, timeout_ms,
           harness_flow_target_count(s));
}
