/*
 * remotetaskctl --command trace: a task's journey, from this side's store.
 *
 *   client role:  trace --elid N              local (source) task N
 *   server role:  trace --client C --elid N   client C's task N
 *                 trace [--client C] --target M   local (target) task M
 *
 * Each side journals what happened to its tasks (common/store_journal.h);
 * this prints the newest journal.entries rows of one task as a table in
 * time order, or with --json as one JSON document, under a line that says
 * where the task stands (the seqs sent, confirmed and applied, its target).
 * The store is opened read-only, so trace works while the daemon runs and
 * while it is down; rows the daemon has queued and not yet committed (at
 * most about a second's worth) are not there yet.
 *
 * Exit 0 with the rows (or with a note that there are none, when the
 * store still knows the task); 1 when the task is unknown here (no row,
 * no link, nothing sent or applied), the store cannot be read or the
 * configuration has no role for the question; 2 for a wrong command line.
 *
 * With --client on a configuration that is both client and server, the
 * question is about the server side; without it, about the client side.
 * On a server-only configuration with one client, --client may be left out.
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "config.h"
#include "ctl.h"
#include "log.h"
#include "store.h"
#include "store_journal.h"

/* "YYYY-MM-DD HH:MM:SS.mmm" and its NUL. */
#define TRACE_TIME_MAX 32

/* The question, resolved against the configuration. */
struct trace_query {
    enum store_side side;
    char client[STORE_CLIENT_MAX + 1];
    int64_t task;   /* the source task */
    int64_t target; /* the target task when known, else 0 */
};

/* What the store knows of the task besides its journal. */
struct trace_state {
    struct store_fwd fwd;   /* client side */
    struct store_rev rev;   /* client side */
    struct store_link link; /* server side */
};

static void trace_time(int64_t ms, char *out, size_t outlen)
{
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;
    char day[24];
    if (!localtime_r(&secs, &tm) || strftime(day, sizeof(day), "%Y-%m-%d %H:%M:%S", &tm) == 0) {
        snprintf(out, outlen, "%" PRId64, ms);
        return;
    }
    snprintf(out, outlen, "%s.%03d", day, (int)(ms % 1000));
}

/* Which side and which client the command line asks about. Returns 0, or
 * the exit status after printing why not. */
static int trace_resolve(const struct config *cfg, const struct ctl_args *args,
                         struct trace_query *q)
{
    memset(q, 0, sizeof(*q));
    if (args->elid && args->target) {
        fprintf(stderr, "remotetaskctl: trace: give --elid N (a source task) or --target M (a "
                        "target task), not both\n");
        return 2;
    }
    if (!args->elid && !args->target) {
        fprintf(stderr, "remotetaskctl: trace: which task? --elid N, or --target M on the "
                        "server side\n");
        return 2;
    }
    const char *client = args->client;
    if (client && strlen(client) > STORE_CLIENT_MAX) {
        fprintf(stderr, "remotetaskctl: trace: --client: a client id is at most %d bytes\n",
                STORE_CLIENT_MAX);
        return 2;
    }
    if (client && !*client) {
        fprintf(stderr, "remotetaskctl: trace: --client: the client id is empty\n");
        return 2;
    }
    if (args->target || client) {
        if (!cfg->server.enabled) {
            fprintf(stderr,
                    "remotetaskctl: trace: %s has no server: section, so it keeps no "
                    "journal of other clients' tasks; on the client side, use --elid N alone\n",
                    cfg->file);
            return 1;
        }
        q->side = STORE_SIDE_SERVER;
        q->task = args->elid;
        q->target = args->target;
        snprintf(q->client, sizeof(q->client), "%s", client ? client : "");
        return 0;
    }
    if (cfg->client.enabled) {
        q->side = STORE_SIDE_CLIENT;
        q->task = args->elid;
        snprintf(q->client, sizeof(q->client), "%s", cfg->client.id);
        return 0;
    }
    if (cfg->server.n_clients == 1) {
        q->side = STORE_SIDE_SERVER;
        q->task = args->elid;
        snprintf(q->client, sizeof(q->client), "%s", cfg->server.clients[0].id);
        return 0;
    }
    fprintf(stderr,
            "remotetaskctl: trace: %s serves %zu clients: say whose task %ld it is with "
            "--client C\n",
            cfg->file, cfg->server.n_clients, args->elid);
    return 2;
}

/* The source task of target task q->target (server side): by the link of
 * the client named, or of each configured client, or failing those by the
 * journal's rows. Returns 0 (q->task set), 1 after printing that no task
 * is known, or -1 after printing a store error. */
static int trace_find_target(const struct config *cfg, struct store *st, struct trace_query *q)
{
    struct store_link link;
    bool found = false;

    for (size_t i = 0; i < cfg->server.n_clients && !found; i++) {
        const char *id = q->client[0] ? q->client : cfg->server.clients[i].id;
        if (store_link_by_dst(st, id, q->target, &link) != RT_OK) {
            fprintf(stderr, "remotetaskctl: trace: %s\n", store_strerror(st));
            return -1;
        }
        if (link.found) {
            found = true;
            snprintf(q->client, sizeof(q->client), "%s", link.client);
            q->task = link.src_task;
        }
        if (q->client[0])
            break;
    }
    if (!found) {
        char client[STORE_CLIENT_MAX + 1];
        int64_t src = 0;
        if (store_journal_find_target(st, q->client[0] ? q->client : NULL, q->target, client, &src,
                                      &found) != RT_OK) {
            fprintf(stderr, "remotetaskctl: trace: %s\n", store_strerror(st));
            return -1;
        }
        if (found) {
            snprintf(q->client, sizeof(q->client), "%s", client);
            q->task = src;
        }
    }
    if (!found) {
        if (q->client[0])
            fprintf(stderr,
                    "remotetaskctl: trace: target task %" PRId64 " is unknown here: no task of "
                    "client \"%s\" is linked to it, and the journal does not name it\n",
                    q->target, q->client);
        else
            fprintf(stderr,
                    "remotetaskctl: trace: target task %" PRId64 " is unknown here: no "
                    "client's task is linked to it, and the journal does not name it\n",
                    q->target);
        return 1;
    }
    return 0;
}

/* Reads what the store holds for the task besides the journal; *known
 * tells whether it holds anything. Returns 0, or -1 after printing. */
static int trace_state_read(struct store *st, const struct trace_query *q, struct trace_state *s,
                            bool *known)
{
    rt_status r = RT_OK;
    memset(s, 0, sizeof(*s));
    if (q->side == STORE_SIDE_CLIENT) {
        r = store_fwd_get(st, q->client, q->task, &s->fwd);
        if (r == RT_OK)
            r = store_rev_get(st, q->client, q->task, &s->rev);
        *known = s->fwd.found || s->rev.found;
    } else {
        r = store_link_get(st, q->client, q->task, &s->link);
        *known = s->link.found;
    }
    if (r != RT_OK) {
        fprintf(stderr, "remotetaskctl: trace: %s\n", store_strerror(st));
        return -1;
    }
    return 0;
}

/* The line above the table: where the task stands. */
static void trace_print_head(const struct trace_query *q, const struct trace_state *s,
                             int64_t target)
{
    if (q->side == STORE_SIDE_CLIENT) {
        printf("task %" PRId64 " of client \"%s\" (client side):", q->task, q->client);
        if (s->fwd.found)
            printf(" forward seq %" PRIu64 " allocated, %" PRIu64 " confirmed;", s->fwd.seq,
                   s->fwd.fp_seq);
        else
            printf(" nothing forwarded;");
        if (s->rev.found)
            printf(" state seq %" PRIu64 " applied\n", s->rev.seq);
        else
            printf(" no state applied\n");
        return;
    }
    printf("task %" PRId64 " of client \"%s\" (server side)", q->task, q->client);
    if (s->link.found && s->link.dst_task > 0)
        printf(" -> target task %" PRId64 ": forward seq %" PRIu64 " applied, state seq %" PRIu64
               " published\n",
               s->link.dst_task, s->link.last_seq, s->link.rev_seq);
    else if (s->link.found)
        printf(": its target task is being created\n");
    else if (target)
        printf(" -> target task %" PRId64 ": no link now\n", target);
    else
        printf(": no link\n");
}

static void trace_print_table(const struct store_journal_row *rows, size_t n)
{
    char when[TRACE_TIME_MAX];
    printf("%-23s  %-15s  %6s  %7s  %s\n", "TIME", "EVENT", "SEQ", "TARGET", "DETAIL");
    for (size_t i = 0; i < n; i++) {
        const struct store_journal_row *w = &rows[i];
        char seq[24] = "-", target[24] = "-";
        trace_time(w->ts_ms, when, sizeof(when));
        if (w->seq)
            snprintf(seq, sizeof(seq), "%" PRIu64, w->seq);
        if (w->dst_task)
            snprintf(target, sizeof(target), "%" PRId64, w->dst_task);
        printf("%-23s  %-15s  %6s  %7s  %s\n", when, w->event, seq, target, w->detail);
    }
}

/* The JSON document of --json; NULL when memory ran out. */
static json_t *trace_json(const struct config *cfg, const struct trace_query *q,
                          const struct trace_state *s, int64_t target,
                          const struct store_journal_row *rows, size_t n)
{
    char when[TRACE_TIME_MAX];
    json_t *doc = json_object(), *list = json_array(), *state = json_object();
    if (!doc || !list || !state)
        goto fail;
    json_object_set_new(doc, "side", json_string(store_side_name(q->side)));
    json_object_set_new(doc, "client", json_string(q->client));
    json_object_set_new(doc, "task", json_integer(q->task));
    json_object_set_new(doc, "target", target ? json_integer(target) : json_null());
    json_object_set_new(doc, "journal_entries", json_integer(cfg->journal.entries));
    json_object_set_new(doc, "journal_days", json_integer(cfg->journal.days));
    if (q->side == STORE_SIDE_CLIENT) {
        json_object_set_new(state, "forward_seq", json_integer((json_int_t)s->fwd.seq));
        json_object_set_new(state, "forward_confirmed_seq",
                            json_integer((json_int_t)s->fwd.fp_seq));
        json_object_set_new(state, "state_applied_seq", json_integer((json_int_t)s->rev.seq));
    } else {
        json_object_set_new(state, "linked", json_boolean(s->link.found));
        json_object_set_new(state, "forward_applied_seq",
                            json_integer((json_int_t)s->link.last_seq));
        json_object_set_new(state, "state_published_seq",
                            json_integer((json_int_t)s->link.rev_seq));
    }
    json_object_set_new(doc, "state", state);
    state = NULL;
    for (size_t i = 0; i < n; i++) {
        const struct store_journal_row *w = &rows[i];
        trace_time(w->ts_ms, when, sizeof(when));
        json_t *e = json_pack(
            "{s:I,s:s,s:s,s:s,s:I,s:o,s:s,s:o,s:s}", "time_ms", (json_int_t)w->ts_ms, "time", when,
            "side", store_side_name(w->side), "client", w->client, "task", (json_int_t)w->src_task,
            "target", w->dst_task ? json_integer(w->dst_task) : json_null(), "event", w->event,
            "seq", w->seq ? json_integer((json_int_t)w->seq) : json_null(), "detail", w->detail);
        if (!e || json_array_append_new(list, e) < 0)
            goto fail;
    }
    json_object_set_new(doc, "entries", list);
    return doc;
fail:
    json_decref(state);
    json_decref(list);
    json_decref(doc);
    return NULL;
}

/* Prints what trace found, as JSON (--json) or as a head and a table:
 * 0, or 1 when it could not be written. */
static int trace_output(const struct config *cfg, const struct ctl_args *args,
                        const struct trace_query *q, const struct trace_state *s,
                        const struct store_journal_row *rows, size_t n)
{
    /* The link names the target; without one, the newest row that did. */
    int64_t target = s->link.dst_task ? s->link.dst_task : q->target;
    for (size_t i = n; i > 0 && !target && q->side == STORE_SIDE_SERVER; i--)
        target = rows[i - 1].dst_task;
    if (args->json) {
        json_t *doc = trace_json(cfg, q, s, target, rows, n);
        if (!doc || json_dumpf(doc, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER) < 0) {
            fprintf(stderr, "remotetaskctl: trace: cannot write the JSON document\n");
            json_decref(doc);
            return 1;
        }
        json_decref(doc);
        printf("\n");
    } else {
        trace_print_head(q, s, target);
        if (n)
            trace_print_table(rows, n);
        else
            printf("no journal rows%s\n", cfg->journal.entries == 0
                                              ? ": the journal is off (journal.entries = 0)"
                                              : " (pruned, or written before the journal existed)");
    }
    return fflush(stdout) == 0 ? 0 : 1;
}

int ctl_trace(const struct ctl_args *args)
{
    char err[CONFIG_ERR_MAX];
    struct trace_query q;
    struct trace_state s;
    struct store_journal_row *rows = NULL;
    size_t n = 0;
    bool known = false;
    struct store *st = NULL;
    int rc = 1;

    log_init("remotetaskctl", LOG_LEVEL_ERROR, 0);
    struct config *cfg = config_load(args->config, err, sizeof(err));
    if (!cfg) {
        fprintf(stderr, "remotetaskctl: %s\n", err);
        return 1;
    }
    if ((rc = trace_resolve(cfg, args, &q)) != 0)
        goto free_config;
    rc = 1;
    st = store_open_readonly(cfg->state_dir, err, sizeof(err));
    if (!st) {
        fprintf(stderr, "remotetaskctl: trace: %s\n", err);
        goto free_config;
    }
    if (q.target) {
        int found = trace_find_target(cfg, st, &q);
        if (found != 0)
            goto free_store;
    }
    if (trace_state_read(st, &q, &s, &known) < 0)
        goto free_store;
    size_t max = cfg->journal.entries > 0 ? (size_t)cfg->journal.entries
                                          : (size_t)STORE_JOURNAL_ENTRIES_DEFAULT;
    rows = calloc(max, sizeof(*rows));
    if (!rows) {
        fprintf(stderr, "remotetaskctl: trace: out of memory\n");
        goto free_store;
    }
    if (store_journal_read(st, q.side, q.client, q.task, max, rows, &n) != RT_OK) {
        fprintf(stderr, "remotetaskctl: trace: %s\n", store_strerror(st));
        goto free_rows;
    }
    if (n == 0 && !known) {
        fprintf(stderr,
                "remotetaskctl: trace: task %" PRId64 " of client \"%s\" is unknown on the %s "
                "side: no journal rows, %s\n",
                q.task, q.client, store_side_name(q.side),
                q.side == STORE_SIDE_CLIENT ? "nothing forwarded, no state applied" : "no link");
        goto free_rows;
    }
    rc = trace_output(cfg, args, &q, &s, rows, n);

free_rows:
    free(rows);
free_store:
    store_free(st);
free_config:
    config_free(cfg);
    return rc;
}
