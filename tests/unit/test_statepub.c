/* Unit tests of producer/statepub: the pure helpers (row and state
 * fingerprints, the state read from a view, the applied-set update, the
 * UTF-8 cut), and the publisher driven end to end against a real store (in
 * a temporary directory), a real billmgr client talking to a small
 * BILLmanager stand-in on a loopback socket (a thread of this program),
 * and a recording stand-in for the broker: the producer's fixture
 * (tests/unit/support/producer), shared with test_relay.
 *
 * The unit-test target links rtconfig and rtcommon only, so the publisher
 * is compiled into this program by including its sources. The broker is
 * replaced by the fixture's definitions of the four broker functions the
 * publisher calls; nothing else in rtcommon refers to them, so the linker
 * never pulls the broker's own. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <pthread.h>

#include <cmocka.h>

#include "../../producer/statepub.c"
#include "../../producer/statepub_list.c"
#include "../../producer/statepub_pub.c"
#include "../../producer/statepub_view.c"
#include "../../producer/pager.c"
#include "../../producer/taskview.c"

#include "config.h"
#include "fake_bill.h"
#include "fake_broker.h"
#include "fake_doc.h"
#include "fixture.h"
#include "log.h"
#include "stderr_capture.h"

/* ---- the BILLmanager stand-in's half of this test ------------------- */

/* Lists without the mtime column (guarded by fake_bill.lock). */
static int no_updated;

/* How the stand-in answers views or lists: as the API does, or as a
 * hostile one would. */
enum sim_spoil {
    SPOIL_NONE = 0,
    SPOIL_NOTE,   /* the note (remark) as a one-element array of itself */
    SPOIL_ARRAYS, /* every text field so, in list rows too (fields_arrays) */
    SPOIL_OTHER,  /* the view of another task (id 999) */
    SPOIL_EMPTY,  /* an API document holding nothing */
};

/* Views answered as how says. */
static void spoil_views(int how)
{
    pthread_mutex_lock(&fake_bill.lock);
    snprintf(fake_bill.view_arrays, sizeof fake_bill.view_arrays, "%s",
             how == SPOIL_NOTE     ? "remark"
             : how == SPOIL_ARRAYS ? "*"
                                   : "");
    fake_bill.view_other = how == SPOIL_OTHER;
    fake_bill.view_empty = how == SPOIL_EMPTY;
    pthread_mutex_unlock(&fake_bill.lock);
}

/* The task as the view ("task.view") shows it: ids, with the custom field
 * names of the test config. */
static json_t *task_doc(const struct fake_task *t)
{
    json_t *d = json_object();
    fake_doc_long(d, "id", t->id);
    fake_doc_long(d, "dept", t->department);
    fake_doc_text(d, "subject", "a task");
    fake_doc_text(d, "remark", t->note);
    fake_doc_text(d, "mtime", t->updated);
    fake_doc_long(d, "state", t->status);
    if (t->performer)
        fake_doc_long(d, "staff", t->performer);
    else
        fake_doc_text(d, "staff", "");
    return d;
}

/* The task as a list row ("task.list") shows it: display names. */
static json_t *task_row(const struct fake_task *t)
{
    json_t *e = json_object();
    fake_doc_long(e, "id", t->id);
    fake_doc_text(e, "dept", "Reseller tasks");
    fake_doc_long(e, "state", t->status);
    if (t->performer) {
        char name[32];
        snprintf(name, sizeof name, "Staff %ld", t->performer);
        fake_doc_text(e, "staff", name);
    }
    if (!no_updated)
        fake_doc_text(e, "mtime", t->updated);
    fake_doc_text(e, "subject", "a task");
    return e;
}

static void sim_task(long id, long dept, int status, long performer, const char *note,
                     const char *upd)
{
    struct fake_task t = {
        .exists = 1, .id = id, .department = dept, .status = status, .performer = performer};
    snprintf(t.note, sizeof t.note, "%s", note);
    snprintf(t.updated, sizeof t.updated, "%s", upd);
    fake_bill_put(&t);
}

/* Changes a task as staff on this side would: `updated` moves too. */
static void sim_touch(long id, int status, long performer, const char *note, const char *upd)
{
    pthread_mutex_lock(&fake_bill.lock);
    struct fake_task *t = &fake_bill.tasks[id];
    t->status = status;
    t->performer = performer;
    if (note)
        snprintf(t->note, sizeof t->note, "%s", note);
    snprintf(t->updated, sizeof t->updated, "%s", upd);
    pthread_mutex_unlock(&fake_bill.lock);
}

/* ---- the fixture ----------------------------------------------------- */

static void make_statepub(struct fixture *fx)
{
    char err[256];
    fx->sp = statepub_new(fx->cfg, fx->st, fx->bm, (struct broker *)&fx->fake_br, err, sizeof err);
    assert_non_null(fx->sp);
}

static void release_statepub(struct fixture *fx)
{
    statepub_free(fx->sp);
}

/* Calls of other work (an applier's) a test made on the publisher's
 * billmgr and not yet answered, and the publisher's views answered when
 * they were made. */
static int other_left;
static uint64_t views_at_other;

/* The publisher's tick, and on every turn the limit on views: at most
 * max_inflight from the publisher, and nothing else queued in billmgr
 * beyond one page call per client and the other work. While other work
 * waits for the API (two of its calls or more unanswered, with
 * max_inflight 2), the publisher keeps to its floor of one view once one
 * of the views it had running when that work came is answered: it starts
 * no view in the freed slot. */
static void tick_statepub(struct fixture *fx)
{
    statepub_tick(fx->sp, clock_mono_ms());
    assert_true(fx->sp->viewing.n <= 2);
    assert_true(billmgr_inflight(fx->bm) <= 2 + fx->sp->nclients + (size_t)other_left);
    struct statepub_stats st;
    statepub_stats(fx->sp, &st);
    if (other_left >= 2 && st.views > views_at_other)
        assert_true(fx->sp->viewing.n <= 1);
}

static const struct fixture_kind statepub_kind = {
    .name = "statepub",
    .amqp_user = "srv",
    .api = "field_performer = \"staff\"; field_note = \"remark\";",
    .role = "server: { sync_interval = 3600;\n"
            "  clients = ( { id = \"7\"; amqp_user = \"a7\"; department = 12; },\n"
            "              { id = \"8\"; amqp_user = \"a8\"; department = 13; } ); };",
    .busy_ms = 0,
    .view_doc = task_doc,
    .list_row = task_row,
    .make = make_statepub,
    .release = release_statepub,
    .tick = tick_statepub,
};

static int setup(void **state)
{
    no_updated = 0;
    other_left = 0;
    views_at_other = 0;
    *state = fixture_new(&statepub_kind);
    return 0;
}

static int teardown(void **state)
{
    fixture_free(*state);
    return 0;
}

static struct statepub_stats stats_of(struct fixture *fx)
{
    struct statepub_stats s;
    statepub_stats(fx->sp, &s);
    return s;
}

static uint64_t want_cycles;

/* want_cycles cycles completed and none running. */
static int cycles_done(struct fixture *fx)
{
    struct statepub_stats s = stats_of(fx);
    return s.cycles >= want_cycles && s.running == 0 && statepub_idle(fx->sp);
}

/* No API call in flight and nothing viewing or waiting (publishes may
 * await their confirm). */
static int calls_done(struct fixture *fx)
{
    return billmgr_inflight(fx->bm) == 0 && fx->sp->viewing.n == 0 && stats_of(fx).waiting == 0;
}

/* The four states of seed() encoded and waiting for the broker. */
static int four_ready(struct fixture *fx)
{
    return fx->sp->ready.n >= 4 && calls_done(fx);
}

static size_t want_published;

static int published_n(struct fixture *fx)
{
    (void)fx;
    return fake_broker.n >= want_published;
}

/* Gives every publish not yet confirmed the fate given, in order, until
 * none is left (acks may release sync_done messages, which get the same). */
static void confirm_all(struct fixture *fx, enum broker_fate fate)
{
    while (fake_broker.confirmed < fake_broker.n) {
        struct fake_published *p = &fake_broker.pub[fake_broker.confirmed++];
        statepub_on_confirm(fx->sp, p->tag, fate);
    }
}

static void link_add(struct fixture *fx, const char *client, int64_t src, int64_t dst,
                     const char *applied)
{
    struct store_link l;
    memset(&l, 0, sizeof l);
    snprintf(l.client, sizeof l.client, "%s", client);
    l.src_task = src;
    l.dst_task = dst;
    l.last_seq = 1;
    snprintf(l.applied, sizeof l.applied, "%s", applied);
    assert_int_equal(store_link_put(fx->st, &l), RT_OK);
}

static struct store_link link_of(struct fixture *fx, const char *client, int64_t src)
{
    struct store_link l;
    assert_int_equal(store_link_get(fx->st, client, src, &l), RT_OK);
    assert_true(l.found);
    return l;
}

/* The published message with this message id, or fails. */
static struct fake_published *find_pub(const char *message_id)
{
    for (size_t i = 0; i < fake_broker.n; i++)
        if (strcmp(fake_broker.pub[i].message_id, message_id) == 0)
            return &fake_broker.pub[i];
    fail_msg("no message %s was published", message_id);
    return NULL;
}

static size_t count_kind(enum codec_kind kind)
{
    size_t n = 0;
    for (size_t i = 0; i < fake_broker.n; i++)
        n += fake_broker.pub[i].msg.kind == kind;
    return n;
}

#define FWD_BLOCK(text)                                                                            \
    "\n\n--- remotetask: from client 7, task 101 ---\n" text "\n--- remotetask: end ---"

/* Three linked tasks of client 7 (department 12), one unlinked, one of
 * client 8 (department 13), and one of another department. */
static void seed(struct fixture *fx)
{
    sim_task(1, 12, 0, 0, "please set it up" FWD_BLOCK("Server for customer"),
             "2024-05-01 10:00:01");
    sim_task(2, 12, 1, 21, "On it.\n", "2024-05-01 10:00:02");
    sim_task(3, 12, 2, 0, "", "2024-05-01 10:00:03");
    sim_task(4, 12, 0, 0, "not linked", "2024-05-01 10:00:04");
    sim_task(5, 13, 1, 0, "other client", "2024-05-01 10:00:05");
    sim_task(6, 14, 1, 0, "other department", "2024-05-01 10:00:06");
    link_add(fx, "7", 101, 1, "name=0123456789abcdef;status=0;note_len=5");
    link_add(fx, "7", 102, 2, "");
    link_add(fx, "7", 103, 3, "");
    link_add(fx, "8", 105, 5, "");
    link_add(fx, "8", 106, 6, ""); /* linked, but not in client 8's department */
}

/* The first cycle of every client publishes every linked task (nothing
 * was published before) and commits on the acks. */
static void first_cycles(struct fixture *fx)
{
    seed(fx);
    want_published = 4;
    fixture_run_until(fx, published_n, "the first states");
    confirm_all(fx, BROKER_ACKED);
    want_cycles = 2;
    fixture_run_until(fx, cycles_done, "the first cycles");
}

/* ---- pure helpers ---------------------------------------------------- */

static void utf8_cut_never_splits_a_sequence(void **state)
{
    (void)state;
    assert_int_equal(statepub_utf8_cut("abc", 5), 3);
    assert_int_equal(statepub_utf8_cut("abc", 3), 3);
    assert_int_equal(statepub_utf8_cut("abcdef", 4), 4);
    /* "aé" is 61 C3 A9: a cut at 2 would split é. */
    assert_int_equal(statepub_utf8_cut("a\xC3\xA9z", 2), 1);
    assert_int_equal(statepub_utf8_cut("a\xC3\xA9z", 3), 3);
    /* A 4-byte sequence (U+1F600) after one byte. */
    assert_int_equal(statepub_utf8_cut("x\xF0\x9F\x98\x80y", 4), 1);
    assert_int_equal(statepub_utf8_cut("x\xF0\x9F\x98\x80y", 5), 5);
    assert_int_equal(statepub_utf8_cut("", 0), 0);
}

/* When a cycle may start a view (issue 12): its floor of max_inflight / 4
 * whatever else runs, beyond it only with room in the API and a quarter of
 * max_inflight left for the appliers, never more than max_inflight. */
static void views_leave_a_reserve_for_applies(void **state)
{
    (void)state;
    /* max_inflight 16: floor 4, reserve 4. */
    assert_true(statepub_view_may_start(0, 16, 16, 0));
    assert_true(statepub_view_may_start(3, 16, 16, 0));
    assert_false(statepub_view_may_start(4, 16, 11, 0)); /* no room */
    assert_true(statepub_view_may_start(4, 16, 11, 1));
    assert_false(statepub_view_may_start(4, 16, 12, 1)); /* the reserve */
    assert_true(statepub_view_may_start(11, 16, 11, 1));
    assert_false(statepub_view_may_start(12, 16, 12, 1));
    assert_false(statepub_view_may_start(16, 16, 0, 1));
    /* max_inflight 2: floor 1, no reserve (the fixture's). */
    assert_true(statepub_view_may_start(0, 2, 2, 0));
    assert_false(statepub_view_may_start(1, 2, 1, 0));
    assert_true(statepub_view_may_start(1, 2, 1, 1));
    assert_false(statepub_view_may_start(2, 2, 0, 1));
    /* max_inflight 1: floor 1. */
    assert_true(statepub_view_may_start(0, 1, 1, 0));
    assert_false(statepub_view_may_start(1, 1, 0, 1));
}

static void row_fp_covers_status_performer_updated(void **state)
{
    struct fixture *fx = *state;
    char a[FP_HEX_LEN + 1], b[FP_HEX_LEN + 1];
    struct fake_task t = {.exists = 1, .id = 4, .department = 12, .status = 1, .performer = 21};
    snprintf(t.updated, sizeof t.updated, "2024-01-02 03:04:05");

    json_t *row = task_row(&t);
    statepub_row_fp(fx->cfg, row, a);
    assert_int_equal(strlen(a), FP_HEX_LEN);
    /* Columns that are not part of the state do not count. */
    fake_doc_text(row, "subject", "renamed");
    fake_doc_text(row, "dept", "Elsewhere");
    statepub_row_fp(fx->cfg, row, b);
    assert_string_equal(a, b);
    /* Each of the three does. */
    fake_doc_text(row, "state", "2");
    statepub_row_fp(fx->cfg, row, b);
    assert_string_not_equal(a, b);
    json_decref(row);
    row = task_row(&t);
    fake_doc_text(row, "staff", "Staff 22");
    statepub_row_fp(fx->cfg, row, b);
    assert_string_not_equal(a, b);
    json_object_del(row, "staff");
    statepub_row_fp(fx->cfg, row, b);
    assert_string_not_equal(a, b);
    json_decref(row);
    row = task_row(&t);
    fake_doc_text(row, "mtime", "2024-01-02 03:04:06");
    statepub_row_fp(fx->cfg, row, b);
    assert_string_not_equal(a, b);
    json_decref(row);
}

static void state_read_from_view(void **state)
{
    struct fixture *fx = *state;
    struct statepub_state s, g;
    char err[256], a[FP_HEX_LEN + 1], b[FP_HEX_LEN + 1];
    struct fake_task t = {.exists = 1, .id = 4, .department = 12, .status = 2, .performer = 21};
    snprintf(t.note, sizeof t.note, "%s", "done, rebooted" FWD_BLOCK("please"));

    json_t *doc = task_doc(&t);
    assert_int_equal(statepub_state_from_doc(fx->cfg, doc, "Staff 21", &s, err, sizeof err), 0);
    assert_int_equal(s.status, 2);
    assert_int_equal(s.performer_id, 21);
    assert_string_equal(s.performer, "Staff 21");
    assert_string_equal(s.native, "done, rebooted");
    assert_int_equal(s.native_len, strlen("done, rebooted"));
    assert_false(s.cut);
    statepub_state_fp(&s, a);

    /* The forward blocks are not part of the state: more of them, same fp. */
    snprintf(t.note, sizeof t.note, "%s",
             "done, rebooted" FWD_BLOCK("please") FWD_BLOCK("and quickly"));
    json_decref(doc);
    doc = task_doc(&t);
    assert_int_equal(statepub_state_from_doc(fx->cfg, doc, "Staff 21", &g, err, sizeof err), 0);
    statepub_state_fp(&g, b);
    assert_string_equal(a, b);
    statepub_state_release(&g);

    /* Each part of the state counts. */
    assert_int_equal(statepub_state_from_doc(fx->cfg, doc, "Someone else", &g, err, sizeof err), 0);
    statepub_state_fp(&g, b);
    assert_string_not_equal(a, b);
    statepub_state_release(&g);
    t.performer = 0;
    snprintf(t.note, sizeof t.note, "%s", "done, rebooted");
    json_decref(doc);
    doc = task_doc(&t);
    assert_int_equal(statepub_state_from_doc(fx->cfg, doc, NULL, &g, err, sizeof err), 0);
    assert_int_equal(g.performer_id, 0);
    assert_string_equal(g.performer, "");
    statepub_state_fp(&g, b);
    assert_string_not_equal(a, b);
    statepub_state_release(&g);

    /* A missing status is 0; one that is not 0..2 or a bad performer is
     * an error naming the field. */
    json_object_del(doc, "state");
    assert_int_equal(statepub_state_from_doc(fx->cfg, doc, NULL, &g, err, sizeof err), 0);
    assert_int_equal(g.status, 0);
    statepub_state_release(&g);
    fake_doc_text(doc, "state", "3");
    assert_int_equal(statepub_state_from_doc(fx->cfg, doc, NULL, &g, err, sizeof err), -1);
    assert_non_null(strstr(err, "state"));
    statepub_state_release(&g);
    fake_doc_text(doc, "state", "1");
    fake_doc_text(doc, "staff", "bob");
    assert_int_equal(statepub_state_from_doc(fx->cfg, doc, NULL, &g, err, sizeof err), -1);
    assert_non_null(strstr(err, "staff"));
    statepub_state_release(&g);
    json_decref(doc);

    /* A native note over one notes entry is cut at a UTF-8 boundary. */
    size_t big = CODEC_MAX_NOTE_ENTRY + 10;
    char *note = malloc(big + 1);
    assert_non_null(note);
    memset(note, 'a', big);
    note[CODEC_MAX_NOTE_ENTRY - 1] = '\xC3'; /* é straddles the cap */
    note[CODEC_MAX_NOTE_ENTRY] = '\xA9';
    note[big] = '\0';
    doc = json_object();
    fake_doc_text(doc, "remark", note);
    assert_int_equal(statepub_state_from_doc(fx->cfg, doc, "", &g, err, sizeof err), 0);
    assert_true(g.cut);
    assert_int_equal(g.native_len, CODEC_MAX_NOTE_ENTRY - 1);
    assert_int_equal(strlen(g.native), CODEC_MAX_NOTE_ENTRY - 1);
    statepub_state_release(&g);
    statepub_state_release(&g); /* released twice: harmless */
    json_decref(doc);
    free(note);
    statepub_state_release(&s);
}

static void applied_update_keeps_forward_keys(void **state)
{
    (void)state;
    char out[STORE_APPLIED_MAX + 1];
    char v[64];

    assert_int_equal(statepub_applied_update("name=aa;status=0;note_len=5;note_fp=bb",
                                             "0123456789abcdef", 2, out, sizeof out),
                     0);
    assert_int_equal(fp_set_get(out, "name", v, sizeof v), 0);
    assert_string_equal(v, "aa");
    assert_int_equal(fp_set_get(out, "note_fp", v, sizeof v), 0);
    assert_string_equal(v, "bb");
    assert_int_equal(fp_set_get_int(out, "note_len", -1), 5);
    assert_int_equal(fp_set_get_int(out, "status", -1), 2);
    assert_int_equal(fp_set_get(out, "state", v, sizeof v), 0);
    assert_string_equal(v, "0123456789abcdef");

    /* In place, and from nothing. */
    assert_int_equal(statepub_applied_update(out, "fedcba9876543210", 1, out, sizeof out), 0);
    assert_int_equal(fp_set_get_int(out, "status", -1), 1);
    assert_int_equal(fp_set_get(out, "name", v, sizeof v), 0);
    assert_int_equal(statepub_applied_update(NULL, "fedcba9876543210", 0, out, sizeof out), 0);
    assert_string_not_equal(out, "");
    assert_int_equal(fp_set_get_int(out, "status", -1), 0);

    /* Too small: the set is left as it was. */
    char small[24];
    assert_int_equal(statepub_applied_update("name=aa", "0123456789abcdef", 1, small, sizeof small),
                     -1);
    assert_string_equal(small, "name=aa");
}

/* ---- the publisher driven end to end --------------------------------- */

static void first_cycle_publishes_linked_tasks_and_commits(void **state)
{
    struct fixture *fx = *state;
    seed(fx);
    want_published = 4;
    fixture_run_until(fx, published_n, "the first states");
    fixture_run_until(fx, calls_done, "the views");
    assert_int_equal(fake_broker.n, 4); /* tasks 1, 2, 3 of client 7; 5 of client 8 */
    assert_int_equal(fake_bill_get(&fake_bill.views), 4);

    struct fake_published *p = find_pub("7:101:r1");
    assert_string_equal(p->exchange, BROKER_EXCHANGE_REVERSE);
    assert_string_equal(p->key, "7");
    assert_int_equal(p->msg.kind, CODEC_STATE);
    assert_string_equal(p->msg.client, "7");
    assert_int_equal(p->msg.task, 101);
    assert_int_equal(p->msg.seq, 1);
    assert_int_equal(p->msg.state.status, 0);
    assert_int_equal(p->msg.state.performer_id, 0);
    assert_string_equal(p->msg.state.performer, "");
    assert_int_equal(p->msg.state.nnotes, 1);
    assert_string_equal(p->msg.state.notes[0], "please set it up"); /* native only */
    /* The task message the forward applier had applied when the task was
     * read: the client applies a status only from a state that saw its
     * last one. */
    assert_int_equal(p->msg.state.fwd_seq, 1);

    p = find_pub("7:102:r1");
    assert_int_equal(p->msg.state.status, 1);
    assert_int_equal(p->msg.state.performer_id, 21);
    assert_string_equal(p->msg.state.performer, "Staff 21");
    assert_string_equal(p->msg.state.notes[0], "On it.\n");
    p = find_pub("7:103:r1");
    assert_int_equal(p->msg.state.status, 2);
    assert_int_equal(p->msg.state.nnotes, 0); /* an empty note travels as none */
    p = find_pub("8:105:r1");
    assert_string_equal(p->key, "8");
    assert_int_equal(p->msg.state.status, 1);

    /* Nothing recorded before the broker's ack. */
    struct store_link l = link_of(fx, "7", 101);
    assert_string_equal(l.rev_fp, "");
    assert_int_equal(l.rev_seq, 1);
    assert_false(statepub_idle(fx->sp));
    statepub_on_confirm(fx->sp, 100000, BROKER_ACKED); /* not ours: ignored */
    assert_string_equal(link_of(fx, "7", 101).rev_fp, "");

    confirm_all(fx, BROKER_ACKED);
    want_cycles = 2;
    fixture_run_until(fx, cycles_done, "the end of the cycles");
    l = link_of(fx, "7", 101);
    assert_int_equal(strlen(l.rev_fp), FP_HEX_LEN);
    assert_int_equal(l.notes_sent, strlen("please set it up"));
    assert_int_equal(l.dst_task, 1);
    assert_int_equal(l.last_seq, 1);
    char v[FP_HEX_LEN + 1];
    assert_int_equal(fp_set_get(l.applied, "state", v, sizeof v), 0);
    assert_int_equal(fp_set_get_int(l.applied, "status", -1), 0);
    assert_int_equal(fp_set_get_int(l.applied, "note_len", -1), 5); /* forward's key kept */
    assert_int_equal(fp_set_get(l.applied, "name", v, sizeof v), 0);
    assert_string_equal(v, "0123456789abcdef");
    assert_int_equal(fp_set_get_int(link_of(fx, "7", 103).applied, "status", -1), 2);

    struct statepub_stats s = stats_of(fx);
    assert_int_equal(s.cycles, 2);
    assert_int_equal(s.cycles_failed, 0);
    assert_int_equal(s.rows_seen, 5); /* 4 in department 12, 1 in 13 */
    assert_int_equal(s.views, 4);
    assert_int_equal(s.published, 4);
    assert_int_equal(s.confirmed, 4);
    assert_int_equal(s.unchanged, 0);
    assert_true(s.last_cycle_ms > 0);
    assert_true(s.last_cycle_duration_ms >= 0);
    assert_int_equal(s.unconfirmed, 0);
    bool found = false;
    int64_t last = 0;
    assert_int_equal(store_meta_get_i64(fx->st, STATEPUB_META_LAST_CYCLE, &last, &found), RT_OK);
    assert_true(found);
    assert_int_equal(last, s.last_cycle_ms);
}

static void later_cycles_view_only_changed_rows(void **state)
{
    struct fixture *fx = *state;
    first_cycles(fx);
    int views = fake_bill_get(&fake_bill.views), lists = fake_bill_get(&fake_bill.lists);

    /* Nothing changed: the list pages only (department 12 holds 4 tasks
     * in pages of 2), no view, no publish; a sync_done with count 0. */
    assert_int_equal(statepub_sync(fx->sp, "7", "s1"), RT_OK);
    want_published = 5;
    fixture_run_until(fx, published_n, "the sync_done");
    struct fake_published *p = &fake_broker.pub[4];
    assert_int_equal(p->msg.kind, CODEC_SYNC_DONE);
    assert_string_equal(p->exchange, BROKER_EXCHANGE_REVERSE);
    assert_string_equal(p->key, "7");
    assert_string_equal(p->message_id, "7:sync_done:s1");
    assert_string_equal(p->msg.client, "7");
    assert_string_equal(p->msg.sync.id, "s1");
    assert_int_equal(p->msg.sync.count, 0);
    assert_int_equal(fake_bill_get(&fake_bill.views), views);
    assert_int_equal(fake_bill_get(&fake_bill.lists) - lists, 2);
    assert_string_equal(fake_bill.last_filter, "12");
    confirm_all(fx, BROKER_ACKED);
    assert_int_equal(stats_of(fx).syncs_served, 1);

    /* Only `updated` moved (the forward applier's own edit): one view,
     * nothing published, and the next cycle skips the task again. */
    sim_touch(2, 1, 21, NULL, "2024-05-02 09:00:00");
    assert_int_equal(statepub_sync(fx->sp, "7", "s2"), RT_OK);
    want_published = 6;
    fixture_run_until(fx, published_n, "the second sync_done");
    assert_int_equal(fake_broker.pub[5].msg.kind, CODEC_SYNC_DONE);
    assert_int_equal(fake_broker.pub[5].msg.sync.count, 0);
    assert_int_equal(fake_bill_get(&fake_bill.views), views + 1);
    assert_int_equal(stats_of(fx).unchanged, 1);
    confirm_all(fx, BROKER_ACKED);
    assert_int_equal(statepub_sync(fx->sp, "7", "s3"), RT_OK);
    want_published = 7;
    fixture_run_until(fx, published_n, "the third sync_done");
    assert_int_equal(fake_bill_get(&fake_bill.views), views + 1);
    confirm_all(fx, BROKER_ACKED);

    /* A real change: one view, one state with the next seq, then its
     * sync_done counting it. */
    sim_touch(3, 1, 22, "Rebooted.", "2024-05-02 10:00:00");
    /* The forward applier applied seq 4 meanwhile: the state says so. */
    struct store_link fl = link_of(fx, "7", 103);
    fl.last_seq = 4;
    assert_int_equal(store_link_put(fx->st, &fl), RT_OK);
    assert_int_equal(statepub_sync(fx->sp, "7", "s4"), RT_OK);
    want_published = 8;
    fixture_run_until(fx, published_n, "the changed state");
    fixture_run_until(fx, calls_done, "the views");
    assert_int_equal(fake_broker.n, 8); /* the sync_done waits for the ack */
    p = &fake_broker.pub[7];
    assert_string_equal(p->message_id, "7:103:r2");
    assert_int_equal(p->msg.seq, 2);
    assert_int_equal(p->msg.state.status, 1);
    assert_int_equal(p->msg.state.performer_id, 22);
    assert_string_equal(p->msg.state.performer, "Staff 22");
    assert_string_equal(p->msg.state.notes[0], "Rebooted.");
    assert_int_equal(p->msg.state.fwd_seq, 4);
    assert_int_equal(fake_bill_get(&fake_bill.views), views + 2);
    confirm_all(fx, BROKER_ACKED);
    assert_int_equal(fake_broker.n, 9);
    assert_string_equal(fake_broker.pub[8].msg.sync.id, "s4");
    assert_int_equal(fake_broker.pub[8].msg.sync.count, 1);
    confirm_all(fx, BROKER_ACKED);
    assert_int_equal(link_of(fx, "7", 103).notes_sent, strlen("Rebooted."));

    struct statepub_stats s = stats_of(fx);
    assert_int_equal(s.syncs_requested, 4);
    assert_int_equal(s.syncs_served, 4);
    assert_int_equal(s.confirmed, 5);
    assert_int_equal(s.cycles, 6);

    /* The confirm recorded which state was published and which task
     * message it had seen: the forward applier reads both. */
    fl = link_of(fx, "7", 103);
    assert_int_equal(fp_set_get_int(fl.applied, "rev_pub", -1), 2);
    assert_int_equal(fp_set_get_int(fl.applied, "pub_fwd", -1), 4);

    /* The forward applier applies seq 5 without an edit (its status was
     * stale): `updated` did not move, yet the client may have dropped
     * state 2's status as older than seq 5. The same state goes again,
     * now saying it saw seq 5: one view, one message. */
    fl.last_seq = 5;
    assert_int_equal(store_link_put(fx->st, &fl), RT_OK);
    assert_int_equal(statepub_sync(fx->sp, "7", "s5"), RT_OK);
    want_published = 10;
    fixture_run_until(fx, published_n, "the state published again");
    fixture_run_until(fx, calls_done, "the views");
    p = &fake_broker.pub[9];
    assert_string_equal(p->message_id, "7:103:r3");
    assert_int_equal(p->msg.state.status, 1);
    assert_string_equal(p->msg.state.notes[0], "Rebooted.");
    assert_int_equal(p->msg.state.fwd_seq, 5);
    assert_int_equal(fake_bill_get(&fake_bill.views), views + 3);
    confirm_all(fx, BROKER_ACKED);
    assert_int_equal(fake_broker.n, 11);
    assert_int_equal(fake_broker.pub[10].msg.sync.count, 1);
    confirm_all(fx, BROKER_ACKED);
    /* rev_pub stays at state 2, the last that changed the status: state 3
     * repeats it, and must not make the client's own status changes look
     * stale. pub_fwd moves on. */
    fl = link_of(fx, "7", 103);
    assert_int_equal(fp_set_get_int(fl.applied, "rev_pub", -1), 2);
    assert_int_equal(fp_set_get_int(fl.applied, "pub_fwd", -1), 5);

    /* Once: the next cycle views nothing and publishes nothing. */
    assert_int_equal(statepub_sync(fx->sp, "7", "s6"), RT_OK);
    want_published = 12;
    fixture_run_until(fx, published_n, "the sixth sync_done");
    assert_int_equal(fake_broker.pub[11].msg.sync.count, 0);
    assert_int_equal(fake_bill_get(&fake_bill.views), views + 3);
    confirm_all(fx, BROKER_ACKED);
}

static void sync_during_a_cycle_queues_one_more(void **state)
{
    struct fixture *fx = *state;
    first_cycles(fx);
    int lists = fake_bill_get(&fake_bill.lists);

    sim_touch(1, 2, 0, NULL, "2024-05-03 10:00:00");
    assert_int_equal(statepub_sync(fx->sp, "7", "a"), RT_OK);
    /* The cycle runs (its first page is in flight): a second request
     * waits for a cycle of its own, a third joins that one. */
    assert_int_equal(stats_of(fx).running, 1);
    assert_int_equal(statepub_sync(fx->sp, "7", "b"), RT_OK);
    assert_int_equal(statepub_sync(fx->sp, "7", "c"), RT_OK);
    assert_int_equal(stats_of(fx).running, 1);
    want_published = 5;
    fixture_run_until(fx, published_n, "the changed state");
    fixture_run_until(fx, calls_done, "the first cycle's views");
    assert_int_equal(fake_broker.n, 5);
    assert_string_equal(fake_broker.pub[4].message_id, "7:101:r2");
    assert_int_equal(fake_broker.pub[4].msg.state.status, 2);

    /* Its ack ends the first cycle: "a" is answered (count 1), and the
     * next cycle starts for "b" and "c". */
    confirm_all(fx, BROKER_ACKED);
    assert_int_equal(fake_broker.pub[5].msg.kind, CODEC_SYNC_DONE);
    assert_string_equal(fake_broker.pub[5].msg.sync.id, "a");
    assert_int_equal(fake_broker.pub[5].msg.sync.count, 1);
    assert_int_equal(stats_of(fx).running, 1);
    want_published = 8;
    fixture_run_until(fx, published_n, "the second cycle's answers");
    assert_string_equal(fake_broker.pub[6].msg.sync.id, "b");
    assert_int_equal(fake_broker.pub[6].msg.sync.count, 0);
    assert_string_equal(fake_broker.pub[7].msg.sync.id, "c");
    confirm_all(fx, BROKER_ACKED);
    assert_int_equal(fake_bill_get(&fake_bill.lists) - lists, 4); /* two cycles of two pages */
    assert_int_equal(stats_of(fx).syncs_served, 3);

    /* Requests that cannot be taken. */
    assert_int_equal(statepub_sync(fx->sp, "9", "x"), RT_REJECT);
    assert_int_equal(statepub_sync(fx->sp, "7", ""), RT_REJECT);
    char longid[CODEC_MAX_ID + 2];
    memset(longid, 'i', sizeof longid - 1);
    longid[sizeof longid - 1] = '\0';
    assert_int_equal(statepub_sync(fx->sp, "7", longid), RT_REJECT);
    assert_int_equal(stats_of(fx).syncs_requested, 3);
}

static void failures_carry_the_sync_and_publish_again(void **state)
{
    struct fixture *fx = *state;
    first_cycles(fx);

    /* A view fails: the cycle is incomplete, its sync is not answered but
     * retried soon, and the task is viewed again by that retry. */
    sim_touch(2, 2, 21, NULL, "2024-05-04 10:00:00");
    fake_bill_set(&fake_bill.fail_views, 1);
    assert_int_equal(statepub_sync(fx->sp, "7", "f1"), RT_OK);
    want_cycles = 3;
    fixture_run_until(fx, cycles_done, "the failed cycle");
    assert_int_equal(fake_broker.n, 4);
    struct statepub_stats s = stats_of(fx);
    assert_int_equal(s.cycles_failed, 1);
    assert_int_equal(s.view_failed, 1);
    struct sp_client *c = &fx->sp->clients[0];
    assert_int_equal(c->npend, 1);
    int64_t now = clock_mono_ms();
    assert_true(c->next_cycle_ms > now);
    assert_true(c->next_cycle_ms <= now + STATEPUB_RETRY_DELAY_MS);

    /* A list page fails: the same. */
    fake_bill_set(&fake_bill.fail_lists, 1);
    assert_int_equal(statepub_sync(fx->sp, "7", "f2"), RT_OK);
    want_cycles = 4;
    fixture_run_until(fx, cycles_done, "the cycle whose list failed");
    assert_int_equal(stats_of(fx).cycles_failed, 2);
    assert_int_equal(c->npend, 2);

    /* The broker nacks the state: nothing recorded, the cycle is
     * incomplete again. */
    assert_int_equal(statepub_sync(fx->sp, "7", "f3"), RT_OK);
    want_published = 5;
    fixture_run_until(fx, published_n, "the state");
    assert_string_equal(fake_broker.pub[4].message_id, "7:102:r2");
    confirm_all(fx, BROKER_NACKED);
    want_cycles = 5;
    fixture_run_until(fx, cycles_done, "the nacked cycle");
    assert_int_equal(stats_of(fx).publish_failed, 1);
    assert_int_equal(fp_set_get_int(link_of(fx, "7", 102).applied, "status", -1), 1);
    assert_int_equal(c->npend, 3);

    /* Lost with the connection: published again once connected, with the
     * same message id and no second view. */
    int views = fake_bill_get(&fake_bill.views);
    assert_int_equal(statepub_sync(fx->sp, "7", "f4"), RT_OK);
    want_published = 6;
    fixture_run_until(fx, published_n, "the state again");
    assert_string_equal(fake_broker.pub[5].message_id, "7:102:r3");
    fake_broker.connected = 0;
    confirm_all(fx, BROKER_LOST);
    statepub_on_connected(fx->sp);
    assert_int_equal(fake_broker.n, 6);
    fake_broker.connected = 1;
    statepub_on_connected(fx->sp);
    assert_int_equal(fake_broker.n, 7);
    assert_string_equal(fake_broker.pub[6].message_id, "7:102:r3");
    assert_int_equal(fake_bill_get(&fake_bill.views), views + 1);

    /* Acked at last: every waiting request is answered, oldest first,
     * each counting the one state confirmed for it. */
    confirm_all(fx, BROKER_ACKED);
    assert_int_equal(fake_broker.n, 11);
    const char *ids[] = {"f1", "f2", "f3", "f4"};
    for (size_t i = 0; i < 4; i++) {
        assert_int_equal(fake_broker.pub[7 + i].msg.kind, CODEC_SYNC_DONE);
        assert_string_equal(fake_broker.pub[7 + i].msg.sync.id, ids[i]);
        assert_int_equal(fake_broker.pub[7 + i].msg.sync.count, 1);
    }
    confirm_all(fx, BROKER_ACKED);
    assert_int_equal(fp_set_get_int(link_of(fx, "7", 102).applied, "status", -1), 2);
    assert_int_equal(c->npend, 0);
    assert_true(statepub_idle(fx->sp));
}

static void commit_respects_a_recreated_link(void **state)
{
    struct fixture *fx = *state;
    first_cycles(fx);

    sim_touch(3, 0, 0, NULL, "2024-05-05 10:00:00");
    sim_task(9, 12, 0, 0, "", "2024-05-05 10:00:00");
    assert_int_equal(statepub_sync(fx->sp, "7", "r"), RT_OK);
    want_published = 5;
    fixture_run_until(fx, published_n, "the state");
    fixture_run_until(fx, calls_done, "the rest of the list");
    /* Meanwhile the forward applier made a new target task for 103. */
    struct store_link l = link_of(fx, "7", 103);
    l.dst_task = 9;
    l.rev_fp[0] = '\0';
    snprintf(l.applied, sizeof l.applied, "name=abc");
    assert_int_equal(store_link_put(fx->st, &l), RT_OK);
    confirm_all(fx, BROKER_ACKED);
    l = link_of(fx, "7", 103);
    assert_string_equal(l.rev_fp, "");
    assert_string_equal(l.applied, "name=abc");
    confirm_all(fx, BROKER_ACKED);
    want_cycles = 3;
    fixture_run_until(fx, cycles_done, "the cycle");
    assert_int_equal(stats_of(fx).cycles_failed, 0);
}

static void paging_and_the_view_limit(void **state)
{
    struct fixture *fx = *state;
    /* Eleven linked tasks of client 7: six pages of two, at most two
     * views at once (run_until checks that on every turn). */
    for (long id = 10; id < 21; id++) {
        sim_task(id, 12, 1, 0, "n", "2024-05-06 10:00:00");
        link_add(fx, "7", 1000 + id, id, "");
    }
    want_published = 11;
    fixture_run_until(fx, published_n, "every state");
    confirm_all(fx, BROKER_ACKED);
    want_cycles = 2;
    fixture_run_until(fx, cycles_done, "the cycles");
    assert_int_equal(fake_bill_get(&fake_bill.views), 11);
    /* Client 7: 6 pages; client 8: one empty page. */
    assert_int_equal(fake_bill_get(&fake_bill.lists), 7);
    assert_int_equal(stats_of(fx).rows_seen, 11);
    assert_int_equal(count_kind(CODEC_STATE), 11);
}

static void other_done(void *arg, const struct billmgr_reply *rep)
{
    (void)arg;
    assert_int_equal(rep->status, RT_OK);
    other_left--;
}

static int others_and_states_done(struct fixture *fx)
{
    return other_left == 0 && published_n(fx);
}

/* The publisher's window full: two views running, more jobs waiting. */
static int window_full(struct fixture *fx)
{
    return fx->sp->viewing.n == 2 && stats_of(fx).waiting > 0;
}

/* Issue 12: a cycle is background work. With other calls waiting for the
 * API (an applier's, here six views queued while the publisher's two
 * views run and more of its jobs wait), the publisher starts no view
 * beyond its floor of max_inflight / 4 (one), so that they do not wait
 * behind a window of its views (tick_statepub checks it on every turn);
 * once they are answered it uses the whole window, and every state is
 * published. */
static void cycle_yields_the_api_to_other_calls(void **state)
{
    struct fixture *fx = *state;
    /* One page holds every row, so that jobs wait for a view while the
     * window is full (the fixture's pages of two would empty it). */
    fx->sp->page_size = 20;
    for (long id = 10; id < 21; id++) {
        sim_task(id, 12, 1, 0, "n", "2024-05-06 10:00:00");
        link_add(fx, "7", 1000 + id, id, "");
    }
    fixture_run_until(fx, window_full, "two views of the cycle with jobs waiting");
    views_at_other = stats_of(fx).views;
    other_left = 6;
    for (int i = 0; i < 6; i++) {
        struct billmgr_params p;
        billmgr_params_init(&p);
        assert_int_equal(billmgr_params_addf(&p, "elid", "%d", 10 + i), 0);
        assert_int_equal(billmgr_call(fx->bm, "task.view", &p, other_done, NULL), 0);
        billmgr_params_release(&p);
    }
    assert_false(billmgr_has_room(fx->bm));
    want_published = 11;
    fixture_run_until(fx, others_and_states_done, "the other calls and every state");
    confirm_all(fx, BROKER_ACKED);
    assert_int_equal(fake_bill_get(&fake_bill.views), 17);
    assert_int_equal(count_kind(CODEC_STATE), 11);
}

static void rows_without_updated_are_always_viewed(void **state)
{
    struct fixture *fx = *state;
    first_cycles(fx);
    int views = fake_bill_get(&fake_bill.views);
    fake_bill_set(&no_updated, 1);
    assert_int_equal(statepub_sync(fx->sp, "7", "b"), RT_OK);
    want_published = 5;
    fixture_run_until(fx, published_n, "the sync_done");
    confirm_all(fx, BROKER_ACKED);
    /* Three linked tasks viewed, none changed. */
    assert_int_equal(fake_bill_get(&fake_bill.views) - views, 3);
    assert_int_equal(stats_of(fx).unchanged, 3);
    assert_int_equal(count_kind(CODEC_STATE), 4);
}

static void drain_lets_go_and_free_is_safe_in_flight(void **state)
{
    struct fixture *fx = *state;
    seed(fx);
    fake_broker.connected = 0; /* states wait for the broker */
    fixture_run_until(fx, four_ready, "the views");
    assert_int_equal(stats_of(fx).running, 2);
    assert_false(statepub_idle(fx->sp));
    assert_int_equal(statepub_sync(fx->sp, "7", "d"), RT_OK);
    statepub_drain(fx->sp);
    assert_true(statepub_idle(fx->sp));
    assert_int_equal(stats_of(fx).running, 0);
    assert_int_equal(statepub_sync(fx->sp, "7", "e"), RT_REJECT);
    fake_broker.connected = 1;
    statepub_on_connected(fx->sp);
    statepub_tick(fx->sp, clock_mono_ms() + 3600 * 1000);
    assert_int_equal(fake_broker.n, 0); /* no new work while draining */
    assert_int_equal(billmgr_inflight(fx->bm), 0);
    assert_string_equal(link_of(fx, "7", 101).rev_fp, "");

    /* Calls in flight at teardown: billmgr_free (in teardown) cancels
     * them first, then statepub_free; the sanitizers watch for leaks. */
    char err[128];
    struct statepub *sp2 =
        statepub_new(fx->cfg, fx->st, fx->bm, (struct broker *)&fx->fake_br, err, sizeof err);
    assert_non_null(sp2);
    assert_int_equal(statepub_sync(sp2, "7", "t"), RT_OK);
    assert_true(billmgr_inflight(fx->bm) > 0);
    assert_false(statepub_idle(sp2));
    statepub_free(fx->sp);
    fx->sp = sp2;
}

/* Issue 13: cycles run on the clock the ticks are given, the monotonic
 * one, so that a wall clock set back an hour stalls nothing: the next
 * cycle is due sync_interval after the last ended on that clock. */
static void cycles_keep_time_on_the_monotonic_clock(void **state)
{
    struct fixture *fx = *state;
    first_cycles(fx);
    int64_t now = clock_mono_ms();
    int64_t next = statepub_tick(fx->sp, now);
    assert_true(next > now && next <= now + STATEPUB_TICK_MS);
    assert_int_equal(stats_of(fx).running, 0); /* sync_interval is an hour */
    struct sp_client *c = &fx->sp->clients[0];
    assert_true(c->next_cycle_ms > now && c->next_cycle_ms <= now + 3600 * 1000);
    statepub_tick(fx->sp, now + 3600 * 1000 + 1000);
    assert_int_equal(stats_of(fx).running, 2);
    want_cycles = 4;
    fixture_run_until(fx, cycles_done, "the cycles an hour later");
}

static void new_refuses_a_config_without_server(void **state)
{
    struct fixture *fx = *state;
    char err[128] = "";
    fx->cfg->server.enabled = false;
    assert_null(
        statepub_new(fx->cfg, fx->st, fx->bm, (struct broker *)&fx->fake_br, err, sizeof err));
    assert_non_null(strstr(err, "server"));
    fx->cfg->server.enabled = true;
    statepub_free(NULL);
}

/* Fault case 6 (fields_arrays): a status, performer or note that is not
 * text is an error naming the field, never an empty value (which would
 * publish an empty note, status 0 and no performer to the client). */
static void state_fields_that_are_not_text_are_refused(void **state)
{
    struct fixture *fx = *state;
    struct statepub_state g;
    char err[256];
    struct fake_task t = {.exists = 1, .id = 4, .department = 12, .status = 2, .performer = 21};
    snprintf(t.note, sizeof t.note, "%s", "done, rebooted");
    const char *fields[] = {"remark", "state", "staff"};
    for (size_t i = 0; i < 3; i++) {
        json_t *view = task_doc(&t);
        json_t *doc = fake_doc_arrays(view, fields[i]);
        json_decref(view);
        assert_int_equal(statepub_state_from_doc(fx->cfg, doc, "Staff 21", &g, err, sizeof err),
                         -1);
        char want[64];
        snprintf(want, sizeof want, "its %s is not text", fields[i]);
        assert_string_equal(err, want);
        statepub_state_release(&g);
        json_decref(doc);
    }
}

static size_t published_before;

/* The cycle awaited is over (whatever waits for the broker), or a state
 * was published meanwhile, which a test of what must not be published
 * then tells. */
static int cycle_over_or_published(struct fixture *fx)
{
    struct statepub_stats s = stats_of(fx);
    return (s.cycles >= want_cycles && s.running == 0) || fake_broker.n > published_before;
}

/* Asks client 7 for a state cycle (a sync request) and runs it. */
static void sync_cycle(struct fixture *fx, const char *id)
{
    published_before = fake_broker.n;
    assert_int_equal(statepub_sync(fx->sp, "7", id), RT_OK);
    want_cycles = stats_of(fx).cycles + 1;
    fixture_run_until(fx, cycle_over_or_published, "the cycle of the sync");
}

/* Fault case 6: views that cannot be read (a note, or every field, that
 * is not text; the view of another task; a document holding nothing) and
 * list rows whose id is not text publish nothing: the cycle is incomplete
 * and its sync waits, until a healthy API publishes the real state. */
static void unreadable_answers_publish_no_state(void **state)
{
    struct fixture *fx = *state;
    first_cycles(fx);
    sim_touch(2, 2, 21, "On it.\nDone.\n", "2024-05-04 10:00:00");

    const int views[] = {SPOIL_NOTE, SPOIL_ARRAYS, SPOIL_OTHER, SPOIL_EMPTY};
    uint64_t failed = stats_of(fx).cycles_failed;
    for (size_t i = 0; i < 4; i++) {
        char id[8];
        snprintf(id, sizeof id, "v%zu", i);
        spoil_views(views[i]);
        sync_cycle(fx, id);
        assert_int_equal(fake_broker.n, 4);
        assert_int_equal(stats_of(fx).cycles_failed, failed + 1 + i);
    }
    spoil_views(SPOIL_NONE);
    fake_bill_set(&fake_bill.list_arrays, 1);
    sync_cycle(fx, "l");
    assert_int_equal(fake_broker.n, 4);
    assert_int_equal(stats_of(fx).cycles_failed, failed + 5);
    assert_int_equal(fx->sp->clients[0].npend, 5);

    /* Healthy again: the real state, then every sync waiting. */
    fake_bill_set(&fake_bill.list_arrays, 0);
    assert_int_equal(statepub_sync(fx->sp, "7", "ok"), RT_OK);
    want_published = 5;
    fixture_run_until(fx, published_n, "the state");
    struct fake_published *p = find_pub("7:102:r2");
    assert_int_equal(p->msg.state.status, 2);
    assert_int_equal(p->msg.state.performer_id, 21);
    assert_string_equal(p->msg.state.notes[0], "On it.\nDone.\n");
    confirm_all(fx, BROKER_ACKED);
    assert_int_equal(count_kind(CODEC_SYNC_DONE), 6);
}

/* A missed error says the target task is gone only when its $object names
 * the element (elid, or task). The function (func, or its name: a
 * misspelt api.func_task_edit) says nothing about the task: no state is
 * published, the cycle is incomplete (its sync waits), and the cause is
 * logged at error once, not once per task or cycle. */
static void missed_function_is_not_a_gone_task(void **state)
{
    struct fixture *fx = *state;
    first_cycles(fx);
    sim_touch(2, 2, 21, NULL, "2024-05-04 10:00:00");
    uint64_t failed = stats_of(fx).cycles_failed;

    const char *objects[] = {"func", "task.view"};
    uint64_t fails[2];
    stderr_capture_begin();
    for (size_t i = 0; i < 2; i++) {
        snprintf(fake_bill.view_missed, sizeof fake_bill.view_missed, "%s", objects[i]);
        sync_cycle(fx, objects[i]);
        fails[i] = stats_of(fx).cycles_failed;
    }
    int lines = stderr_capture_end("check billmanager.api.func_task_edit");
    assert_int_equal(fails[0], failed + 1);
    assert_int_equal(fails[1], failed + 2);
    assert_int_equal(lines, 1);
    assert_int_equal(count_kind(CODEC_SYNC_DONE), 0);
    assert_int_equal(fx->sp->clients[0].npend, 2);

    /* The task gone: nothing to publish, and the cycle is complete. */
    snprintf(fake_bill.view_missed, sizeof fake_bill.view_missed, "elid");
    sync_cycle(fx, "gone");
    assert_int_equal(stats_of(fx).cycles_failed, failed + 2);
    assert_int_equal(fake_broker.n, 4 + 3);
    assert_int_equal(count_kind(CODEC_SYNC_DONE), 3);
}

int main(void)
{
    log_init("test_statepub", LOG_LEVEL_ERROR, 0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(utf8_cut_never_splits_a_sequence),
        cmocka_unit_test(views_leave_a_reserve_for_applies),
        cmocka_unit_test(applied_update_keeps_forward_keys),
        cmocka_unit_test_setup_teardown(row_fp_covers_status_performer_updated, setup, teardown),
        cmocka_unit_test_setup_teardown(state_read_from_view, setup, teardown),
        cmocka_unit_test_setup_teardown(first_cycle_publishes_linked_tasks_and_commits, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(later_cycles_view_only_changed_rows, setup, teardown),
        cmocka_unit_test_setup_teardown(sync_during_a_cycle_queues_one_more, setup, teardown),
        cmocka_unit_test_setup_teardown(failures_carry_the_sync_and_publish_again, setup, teardown),
        cmocka_unit_test_setup_teardown(commit_respects_a_recreated_link, setup, teardown),
        cmocka_unit_test_setup_teardown(paging_and_the_view_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(cycle_yields_the_api_to_other_calls, setup, teardown),
        cmocka_unit_test_setup_teardown(rows_without_updated_are_always_viewed, setup, teardown),
        cmocka_unit_test_setup_teardown(drain_lets_go_and_free_is_safe_in_flight, setup, teardown),
        cmocka_unit_test_setup_teardown(cycles_keep_time_on_the_monotonic_clock, setup, teardown),
        cmocka_unit_test_setup_teardown(new_refuses_a_config_without_server, setup, teardown),
        cmocka_unit_test_setup_teardown(state_fields_that_are_not_text_are_refused, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(unreadable_answers_publish_no_state, setup, teardown),
        cmocka_unit_test_setup_teardown(missed_function_is_not_a_gone_task, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
