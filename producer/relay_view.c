#include "relay_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "notes.h"
#include "store_journal.h"
#include "taskview.h"

/* Fields of the task view that BILLMANAGER-API.md marks [doc] rather than
 * [chosen], so they are not settings: the service and the customer. */
#define RELAY_FIELD_ITEM   "item"
#define RELAY_FIELD_CLIENT "client"

/* ---- the forward fields ---------------------------------------------- */

void relay_fields_release(struct relay_fields *f)
{
    if (!f)
        return;
    free(f->name);
    free(f->type);
    free(f->note);
    free(f->deadline);
    free(f->item);
    free(f->account);
    memset(f, 0, sizeof *f);
}

/* Reads obj.key as text into *text (NULL when absent). Returns 0, or -1
 * with out->unreadable set when it holds something else: read as "", a
 * name or a note would be cleared on the target. */
static int relay_field_text(json_t *obj, const char *key, const char **text,
                            struct relay_fields *out)
{
    if (billmgr_text_field(obj, key, text) >= 0)
        return 0;
    snprintf(out->unreadable, sizeof out->unreadable, "its field %s is not text", key);
    return -1;
}

/* "<prefix><s>" when s is set and not empty, else "". The receiving side
 * shows these as descriptions, so an unset reference must travel as ""
 * rather than as "service #". */
static char *relay_describe(const char *s, const char *prefix)
{
    if (!s || !*s)
        return strdup("");
    size_t n = strlen(prefix) + strlen(s) + 1;
    char *out = malloc(n);
    if (out)
        snprintf(out, n, "%s%s", prefix, s);
    return out;
}

int relay_fields_from_doc(const struct config *cfg, json_t *doc, struct relay_fields *out)
{
    const struct config_billmgr_api *api = &cfg->billmanager.api;
    const char *dept, *status, *name, *type, *note, *deadline, *item, *client;
    long v;

    memset(out, 0, sizeof *out);
    /* Not forwarded: one that cannot be read only makes reconciliation
     * view the task again. */
    const char *updated = billmgr_text(doc, api->field_updated);
    if (updated && strlen(updated) <= STORE_UPDATED_MAX)
        snprintf(out->updated, sizeof out->updated, "%s", updated);

    /* Only a department that is there and is an id may say "not mapped",
     * which ends the event without a message. */
    if (relay_field_text(doc, api->field_department, &dept, out) < 0)
        return RELAY_FIELDS_UNREADABLE;
    if (!dept || !*dept)
        return 0;
    if (billmgr_long(doc, api->field_department, &v) < 0) {
        snprintf(out->unreadable, sizeof out->unreadable,
                 "its field %s \"%.32s\" is not a department id", api->field_department, dept);
        return RELAY_FIELDS_UNREADABLE;
    }
    out->local_department = v;
    for (size_t i = 0; i < cfg->client.n_departments; i++) {
        if (cfg->client.departments[i].local == v) {
            out->department = cfg->client.departments[i].remote;
            break;
        }
    }
    if (out->department == 0)
        return 0;

    if (relay_field_text(doc, api->field_status, &status, out) < 0 ||
        relay_field_text(doc, api->field_name, &name, out) < 0 ||
        relay_field_text(doc, api->field_type, &type, out) < 0 ||
        relay_field_text(doc, api->field_note, &note, out) < 0 ||
        relay_field_text(doc, api->field_deadline, &deadline, out) < 0 ||
        relay_field_text(doc, RELAY_FIELD_ITEM, &item, out) < 0 ||
        relay_field_text(doc, RELAY_FIELD_CLIENT, &client, out) < 0)
        return RELAY_FIELDS_UNREADABLE;
    if (!status || !*status)
        out->status = 0;
    else if (billmgr_long(doc, api->field_status, &v) == 0 && v >= 0 && v <= 2)
        out->status = (int)v;
    else
        out->status = -1;

    out->name = strdup(name ? name : "");
    out->type = strdup(type ? type : "");
    out->note = notes_native(note ? note : "");
    out->deadline = strdup(deadline ? deadline : "");
    out->item = relay_describe(item, "service #");
    out->account = relay_describe(client, "client #");
    if (!out->name || !out->type || !out->note || !out->deadline || !out->item || !out->account)
        return -1;
    return 1;
}

void relay_fields_fp(const struct relay_fields *f, char out[FP_HEX_LEN + 1])
{
    struct fp h;
    fp_init(&h);
    fp_add_int(&h, f->department);
    fp_add_str(&h, f->name);
    fp_add_str(&h, f->type);
    fp_add_str(&h, f->note);
    fp_add_str(&h, f->deadline);
    fp_add_str(&h, f->item);
    fp_add_str(&h, f->account);
    fp_add_int(&h, f->status);
    fp_hex(&h, out);
}

/* ---- the answer of a view -------------------------------------------- */

/* The view of a task answered but cannot be read (why): the row is
 * deferred like any failure for now, never dropped nor sent with fields
 * read as empty. */
static void relay_slot_unreadable(struct relay_slot *s, const char *why)
{
    char reason[STORE_ERROR_MAX];
    int64_t delay = relay_backoff_ms(s->ev.attempts);
    snprintf(reason, sizeof reason, "viewing the task failed: %s", why);
    log_warning("cannot view task %" PRId64 ", retrying in %" PRId64 " ms: %s", s->ev.task, delay,
                why);
    relay_slot_defer(s, delay, reason);
}

/* The view's missed error names the task: it was deleted, and its row
 * ends without a message. */
static void relay_view_gone(struct relay_slot *s)
{
    struct relay *r = s->r;
    log_info("task %" PRId64 " is gone: nothing to forward", s->ev.task);
    relay_slot_journal(s, 0, JOURNAL_VIEWED, 0, "%s: missed: the task is gone: nothing to forward",
                       r->cfg->billmanager.api.func_task_edit);
    r->stats.dropped++;
    relay_slot_done(s);
}

/* The view's missed error names the view function: a configuration error
 * that says nothing about the task. The row waits RELAY_REJECT_DELAY_MS,
 * and the cause is logged at error once, not once per task every 5
 * minutes: every event fails the same way until it is fixed. */
static void relay_view_no_function(struct relay_slot *s, const struct billmgr_reply *rep)
{
    struct relay *r = s->r;
    const char *func = r->cfg->billmanager.api.func_task_edit;
    char reason[STORE_ERROR_MAX];

    snprintf(reason, sizeof reason,
             "viewing the task failed: the function \"%s\" does not exist on this "
             "BILLmanager (missed, object \"%s\")",
             func, rep->err_object);
    if (!r->func_missing)
        log_error("the function \"%s\" does not exist on this BILLmanager (it answers "
                  "missed, object \"%s\"): check billmanager.api.func_task_edit; task "
                  "events stay in the outbox and are retried every %d s",
                  func, rep->err_object, RELAY_REJECT_DELAY_MS / 1000);
    else
        log_debug("cannot view task %" PRId64 ", retrying in %d s: %s", s->ev.task,
                  RELAY_REJECT_DELAY_MS / 1000, reason);
    r->func_missing = 1;
    relay_slot_defer(s, RELAY_REJECT_DELAY_MS, reason);
}

/* Any other failed view: for now (RT_RETRY), the row waits the backoff of
 * its attempts; refused (access, auth, value...: a configuration problem
 * an operator fixes), it waits RELAY_REJECT_DELAY_MS rather than being
 * lost. */
static void relay_view_failed(struct relay_slot *s, const struct billmgr_reply *rep)
{
    char reason[STORE_ERROR_MAX];

    snprintf(reason, sizeof reason, "viewing the task failed: %s: %s", rep->err_type, rep->message);
    if (rep->status == RT_RETRY) {
        int64_t delay = relay_backoff_ms(s->ev.attempts);
        log_warning("cannot view task %" PRId64 ", retrying in %" PRId64 " ms: %s: %s", s->ev.task,
                    delay, rep->err_type, rep->message);
        relay_slot_defer(s, delay, reason);
        return;
    }
    log_error("cannot view task %" PRId64 ", retrying in %d s: %s: %s%s%s%s", s->ev.task,
              RELAY_REJECT_DELAY_MS / 1000, rep->err_type, rep->message,
              *rep->err_object ? " (object " : "", rep->err_object, *rep->err_object ? ")" : "");
    relay_slot_defer(s, RELAY_REJECT_DELAY_MS, reason);
}

/* The task is in a department that is not mapped: its row ends without a
 * message. */
static void relay_view_unmapped(struct relay_slot *s, const struct relay_fields *f)
{
    struct relay *r = s->r;
    log_debug("task %" PRId64 " is in department %" PRId64 ", which is not mapped: "
              "nothing to forward",
              s->ev.task, f->local_department);
    relay_slot_journal(s, 0, JOURNAL_VIEWED, 0,
                       "%s: ok; department %" PRId64 " is not mapped: "
                       "nothing to forward",
                       r->cfg->billmanager.api.func_task_edit, f->local_department);
    r->stats.dropped++;
    relay_slot_done(s);
}

/* The forward fields of a mapped task: unchanged since the last confirmed
 * message, the row ends; changed, a message goes out (none while
 * draining: the row waits in the outbox). */
static void relay_view_fields(struct relay_slot *s, const struct relay_fields *f)
{
    struct relay *r = s->r;
    struct store_fwd fwd;
    char fp[FP_HEX_LEN + 1];

    relay_fields_fp(f, fp);
    if (store_fwd_get(r->st, s->ev.client, s->ev.task, &fwd) != RT_OK) {
        relay_store_failed(r, "cannot read what was sent for a task (it is viewed again)");
        relay_slot_release(s);
        return;
    }
    relay_slot_journal(s, 0, JOURNAL_VIEWED, 0, "%s: ok", r->cfg->billmanager.api.func_task_edit);
    if (fwd.found && strcmp(fwd.fp, fp) == 0) {
        relay_slot_unchanged(s, f->updated);
    } else if (r->draining) {
        relay_slot_release(s);
    } else {
        memcpy(s->fp, fp, sizeof s->fp);
        snprintf(s->updated, sizeof s->updated, "%s", f->updated);
        relay_slot_prepare(s, f);
    }
}

/* A view that answered: the forward fields, when it is the task's view
 * and they can be read. */
static void relay_view_read(struct relay_slot *s, json_t *doc)
{
    struct relay *r = s->r;
    struct relay_fields f;
    char why[128], reason[STORE_ERROR_MAX];

    if (billmgr_view_of(doc, s->ev.task, why, sizeof why) < 0) {
        snprintf(reason, sizeof reason, "the view %s", why);
        relay_slot_unreadable(s, reason);
        return;
    }
    int got = relay_fields_from_doc(r->cfg, doc, &f);
    if (got == RELAY_FIELDS_UNREADABLE) {
        relay_slot_unreadable(s, f.unreadable);
    } else if (got < 0) {
        log_warning("cannot read the view of task %" PRId64 ": out of memory", s->ev.task);
        relay_slot_release(s);
    } else if (got == 0) {
        relay_view_unmapped(s, &f);
    } else {
        relay_view_fields(s, &f);
    }
    relay_fields_release(&f);
}

void relay_view_done(void *arg, const struct billmgr_reply *rep)
{
    struct relay_slot *s = arg;
    struct relay *r = s->r;

    if (s->state != SLOT_VIEWING)
        return;
    enum taskview_missed missed = taskview_missed(rep, r->cfg->billmanager.api.func_task_edit);
    if (missed == TASKVIEW_MISSED_TASK) {
        relay_view_gone(s);
    } else if (missed == TASKVIEW_MISSED_FUNC) {
        relay_view_no_function(s, rep);
    } else if (rep->status != RT_OK) {
        relay_view_failed(s, rep);
    } else {
        r->func_missing = 0;
        relay_view_read(s, rep->doc);
    }
    relay_pump(r, relay_clock_ms(r));
}
