/* Unit tests of consumer/reverse: the pure helpers (validation, the plan of
 * a state against the applied fp set, the performer mapping, the block
 * text), and the applier driven in-process: a state applied with one view
 * and one edit against a loopback BILLmanager stand-in, duplicates and
 * unchanged states costing no call, and a sync_done answered only after
 * the state delivered before it.
 *
 * Unit test programs link rtconfig and rtcommon only, so the applier's
 * sources (reverse*.c and the delivery slots they run on, applier*.c) are
 * compiled into this program. The broker is never connected: acks then
 * fail quietly (the messages would be redelivered), which changes nothing
 * of what the applier does. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <poll.h>
#include <pthread.h>

#include <cmocka.h>

#include "../../consumer/applier.c"
#include "../../consumer/applier_ack.c"
#include "../../consumer/applier_copy.c"
#include "../../consumer/applier_order.c"
#include "../../consumer/applier_view.c"
#include "../../consumer/applier_watch.c"
#include "../../consumer/reverse.c"
#include "../../consumer/reverse_apply.c"
#include "../../consumer/reverse_plan.c"
#include "../../consumer/reverse_sync.c"

#include "http_stub.h"

static struct config_performer_map test_performers[] = {
    {.remote = 21, .local = 1},
    {.remote = 22, .local = 2},
};

static struct config test_cfg_storage;

static struct config *test_config(void)
{
    struct config *cfg = &test_cfg_storage;
    struct config_billmgr_api *api = &cfg->billmanager.api;
    memset(cfg, 0, sizeof(*cfg));
    cfg->client.enabled = true;
    cfg->client.id = "7";
    cfg->client.server_user = "upstream";
    cfg->client.performers = test_performers;
    cfg->client.n_performers = 2;
    cfg->amqp.user = "reseller-a";
    cfg->amqp.prefetch = 4;
    api->func_task = "task";
    api->func_task_edit = "task.edit";
    api->field_note = "note";
    api->field_status = "status";
    api->field_performer = "performer";
    api->page_size = 1000;
    return cfg;
}

/* A state message with borrowed strings (never released). */
static char *test_notes[2];

static void test_state(struct codec_msg *m, int64_t task, uint64_t seq, int status,
                       int64_t performer_id, const char *performer, const char *native)
{
    codec_msg_init(m, CODEC_STATE);
    m->client = "7";
    m->task = task;
    m->seq = seq;
    m->state.status = status;
    m->state.performer_id = performer_id;
    m->state.performer = (char *)performer;
    test_notes[0] = (char *)native;
    m->state.notes = test_notes;
    m->state.nnotes = native && *native ? 1 : 0;
}

/* The cases of cmocka test name in a table of n rows where test(i) is the
 * test a row starts (NULL in a case's row): the rows after that one, up to
 * the next such row. Returns how many, the first in *first. */
static size_t test_rows(const char *name, size_t n, const char *(*test)(size_t), size_t *first)
{
    size_t i = 0, end;

    while (i < n && !(test(i) && strcmp(test(i), name) == 0))
        i++;
    assert_true(i < n);
    for (end = ++i; end < n && !test(end); end++)
        ;
    *first = i;
    return end - i;
}

/* ---- validation -------------------------------------------------------- */

/* A message offered to reverse_check() and what it must answer. The
 * message is a state of task 5 from client (kind changed to kind), or,
 * for CODEC_SYNC_DONE, the sync_done "abc"; own_user is always this
 * client's login, "reseller-a". */
struct check_case {
    const char *why;
    const char *queue;
    const char *user_id;
    const char *relayed;     /* x-rt-user, NULL when absent */
    const char *client;      /* the message's */
    enum codec_kind kind;    /* 0: CODEC_STATE */
    const char *server_user; /* client.server_user, NULL: "upstream" */
    enum reverse_dead_kind want;
    const char *reason;    /* the whole reason, when checked */
    const char *in_reason; /* a part of it, when checked */
    const char *test;      /* set in a row that starts the cases of that cmocka test */
};

/* clang-format off */
#define CHECK(...) {__VA_ARGS__, NULL}
/* clang-format on */
#define Q7 "remotetask.reverse.7"

/* Each test's messages, in the order they are checked. */
static const struct check_case check_cases[] = {
    {.test = "check_accepts_states_and_sync_done_of_the_server"},
    CHECK("a state", Q7, "upstream", NULL, "7", 0, NULL, REVERSE_DEAD_NONE, "", NULL),
    CHECK("a sync_done", Q7, "upstream", NULL, "7", CODEC_SYNC_DONE, NULL, REVERSE_DEAD_NONE, "",
          NULL),
    {.test = "check_refuses_other_queues_kinds_clients_and_users"},
    CHECK("another client's queue", "remotetask.reverse.8", "upstream", NULL, "7", 0, NULL,
          REVERSE_DEAD_UNAUTHORIZED, NULL, "remotetask.reverse.8"),
    CHECK("another client", Q7, "upstream", NULL, "8", 0, NULL, REVERSE_DEAD_UNAUTHORIZED, NULL,
          "\"8\""),
    CHECK("another sender", Q7, "intruder", NULL, "7", 0, NULL, REVERSE_DEAD_UNAUTHORIZED, NULL,
          "intruder"),
    CHECK("a task message", Q7, "upstream", NULL, "7", CODEC_TASK, NULL, REVERSE_DEAD_UNDECODABLE,
          NULL, "task"),
    CHECK("a sync request", Q7, "upstream", NULL, "7", CODEC_SYNC, NULL, REVERSE_DEAD_UNDECODABLE,
          NULL, NULL),
    {.test = "check_takes_the_sender_of_our_own_retry_copy"},
    /* Our own login with the server's user in x-rt-user: our retry copy. */
    CHECK("our retry copy", Q7, "reseller-a", "upstream", "7", 0, NULL, REVERSE_DEAD_NONE, NULL,
          NULL),
    /* Our own login without it is not the server. */
    CHECK("our login alone", Q7, "reseller-a", NULL, "7", 0, NULL, REVERSE_DEAD_UNAUTHORIZED, NULL,
          NULL),
    /* x-rt-user counts only on a message carrying our own login. */
    CHECK("x-rt-user of another", Q7, "intruder", "upstream", "7", 0, NULL,
          REVERSE_DEAD_UNAUTHORIZED, NULL, NULL),
    /* Another client's user claiming the server's login in x-rt-user
     * (through the retry exchange, say): its own user counts. */
    CHECK("x-rt-user of another client", Q7, "reseller-b", "upstream", "7", 0, NULL,
          REVERSE_DEAD_UNAUTHORIZED,
          "user_id \"reseller-b\" is not the AMQP user of the server side", NULL),
    /* No server_user configured (the configuration requires one): no
     * sender is trusted, rather than every one. */
    CHECK("no server_user, a sender", Q7, "anyone", NULL, "7", 0, "", REVERSE_DEAD_UNAUTHORIZED,
          NULL, NULL),
    CHECK("no server_user, no sender", Q7, "", NULL, "7", 0, "", REVERSE_DEAD_UNAUTHORIZED, NULL,
          NULL),
};

static const char *check_row_test(size_t i)
{
    return check_cases[i].test;
}

/* Runs the cases of the cmocka test named *state in order; a failure
 * names its case. */
static void check_test(void **state)
{
    size_t first,
        n = test_rows(*state, sizeof(check_cases) / sizeof(check_cases[0]), check_row_test, &first);

    assert_true(n >= 1);
    for (size_t i = first; i < first + n; i++) {
        const struct check_case *c = &check_cases[i];
        struct config *cfg = test_config();
        struct codec_msg m;
        char reason[256];

        if (c->kind == CODEC_SYNC_DONE) {
            codec_msg_init(&m, CODEC_SYNC_DONE);
            m.sync.id = "abc";
        } else {
            test_state(&m, 5, 1, 1, 0, "", "");
            m.kind = c->kind ? c->kind : CODEC_STATE;
        }
        m.client = (char *)c->client;
        if (c->server_user)
            cfg->client.server_user = (char *)c->server_user;
        enum reverse_dead_kind got = reverse_check(cfg, c->queue, c->user_id, "reseller-a",
                                                   c->relayed, &m, reason, sizeof(reason));
        if (got != c->want || (c->reason && strcmp(reason, c->reason) != 0) ||
            (c->in_reason && !strstr(reason, c->in_reason)))
            print_error("check \"%s\": %s, reason \"%s\"\n", c->why, reverse_dead_kind_name(got),
                        reason);
        assert_int_equal(got, c->want);
        if (c->reason)
            assert_string_equal(reason, c->reason);
        if (c->in_reason)
            assert_non_null(strstr(reason, c->in_reason));
    }
}

/* clang-format off */
#define CHECK_TEST(name) {#name, check_test, NULL, NULL, (void *)#name}
/* clang-format on */

static void performers_map_remote_to_local(void **state)
{
    struct config *cfg = test_config();
    (void)state;
    assert_int_equal(reverse_performer_local(cfg, 21), 1);
    assert_int_equal(reverse_performer_local(cfg, 22), 2);
    assert_int_equal(reverse_performer_local(cfg, 23), 0);
    assert_int_equal(reverse_performer_local(cfg, 0), 0);
    cfg->client.n_performers = 0;
    assert_int_equal(reverse_performer_local(cfg, 21), 0);
}

static void dead_kinds_have_names(void **state)
{
    static const struct {
        enum reverse_dead_kind kind;
        const char *name;
    } names[] = {
        {REVERSE_DEAD_NONE, "none"},
        {REVERSE_DEAD_UNDECODABLE, "undecodable"},
        {REVERSE_DEAD_UNAUTHORIZED, "unauthorized"},
        {REVERSE_DEAD_UNKNOWN_TASK, "unknown_task"},
        {REVERSE_DEAD_API, "api"},
    };
    (void)state;
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        assert_string_equal(reverse_dead_kind_name(names[i].kind), names[i].name);
}

/* ---- plans ------------------------------------------------------------- */

/* A state of task 5 planned (reverse_plan_make) against an applied set,
 * and what the plan must say. */
struct plan_case {
    const char *why;
    uint64_t seq; /* the state: seq, status, performer, remote note, fwd_seq */
    int status;
    int64_t performer_id;
    const char *performer; /* NULL: "" */
    const char *native;    /* NULL: "" */
    uint64_t fwd_seq;
    const char *applied; /* the set planned against; "#N": case N's plan's set (from 1) */
    uint64_t confirmed;  /* the task's last confirmed forward seq */
    const char *want;    /* what the plan says, as facts (plan_fact) */
    const char *block;   /* the block it holds, when checked */
    const char *test;    /* set in a row that starts the cases of that cmocka test */
};

/* A case: every field but test. */
/* clang-format off */
#define PLAN(...) {__VA_ARGS__, NULL}
/* clang-format on */

/* Each test's plans, in the order they are made. */
static const struct plan_case plan_cases[] = {
    {.test = "first_state_is_verified_against_the_task"},
    /* No known status (a task forwarded before the relay recorded one):
     * the first state cannot tell an echo from a change, so its status
     * is only recorded, whatever it is. */
    PLAN("first state, no known status", 1, 2, 0, NULL, NULL, 0, "", 0,
         "status=no stale=no verify=yes performer=no block=no empty=yes view=no key.status=2",
         NULL),
    /* The same with a fwd_seq: still only the baseline. */
    PLAN("first state with a fwd_seq", 1, 1, 0, NULL, NULL, 3, "", 3, "status=no key.status=1",
         NULL),
    /* A mapped performer on the first state is compared with the task. */
    PLAN("mapped performer of a first state", 1, 0, 21, "Ann Smith", NULL, 0, "status=0", 0,
         "verify=yes performer=yes view=yes viewed=0,1 performer=no verify=no empty=yes", NULL),
    /* The defect of it_forward test_client_stop: the source task is closed
     * while the client is down and forwarded when it starts; a state the
     * server read before it applied that message still says "open". */
    {.test = "stale_state_never_reverts_a_forwarded_status"},
    /* The relay confirmed seq 2 (status 2, closed); the state had seen
     * seq 1 only and shows the target still open. The known status
     * stays the forwarded one. */
    PLAN("stale", 1, 0, 0, NULL, NULL, 1, "status=2", 2,
         "stale=yes status=no empty=yes key.status=2", NULL),
    /* Stale with no known status: nothing is recorded either. */
    PLAN("stale, no known status", 1, 0, 0, NULL, NULL, 1, "", 2,
         "stale=yes status=no key.status=-1", NULL),
    /* Once the server applied seq 2 the target is closed too: the state
     * that says so is not a change. */
    PLAN("seq 2 applied", 2, 2, 0, NULL, NULL, 2, "status=2", 2, "stale=no status=no empty=yes",
         NULL),
    /* Newer than what the client confirmed (its next message is still
     * unconfirmed): fresh. */
    PLAN("newer than confirmed", 3, 2, 0, NULL, NULL, 3, "status=2", 2, "stale=no status=no", NULL),
    /* Issue 9, case 10: the last task message the client confirmed (seq 2, a
     * rename) was dead-lettered by the server, so every state of the task
     * carries fwd_seq 1. It forwarded the status the target was known to have
     * ("sseq" stays 1, the relay's record of the message that last changed
     * the status forwarded): a state that missed it cannot undo a status
     * change of the source, and the target's own change goes through at once.
     * A missed message that did change the status keeps the state stale. */
    {.test = "state_missing_only_a_rename_is_not_stale"},
    /* "sseq" is the relay's, and stays. */
    PLAN("missed a rename", 4, 1, 0, NULL, NULL, 1, "status=0;sseq=1", 2,
         "stale=no status=yes value=1 key.status=1 key.sseq=1", NULL),
    /* Seq 2 closed the task on the source: a state that missed it would
     * reopen the source. */
    PLAN("missed a status change", 4, 1, 0, NULL, NULL, 1, "status=2;sseq=2", 2,
         "stale=yes status=no key.status=2", NULL),
    /* A row the relay wrote before it kept "sseq": the last confirmed
     * message counts, as before. */
    PLAN("no sseq", 4, 1, 0, NULL, NULL, 1, "status=0", 2, "stale=yes", NULL),
    /* The state's status equals the one the client knows the target has: an
     * echo of the client's own forward, never written. */
    {.test = "equal_status_is_not_written"},
    PLAN("open", 4, 0, 0, NULL, NULL, 7, "status=0", 7, "status=no empty=yes key.status=0", NULL),
    PLAN("in work", 4, 1, 0, NULL, NULL, 7, "status=1", 7, "status=no empty=yes key.status=1",
         NULL),
    PLAN("closed", 4, 2, 0, NULL, NULL, 7, "status=2", 7, "status=no empty=yes key.status=2", NULL),
    /* Target staff changed the status after the server applied every task
     * message the client sent: the source takes it. */
    {.test = "target_change_is_applied"},
    /* The relay's key alone is not a first state for the status: no
     * view is needed to write it. */
    PLAN("closed on the target", 4, 2, 0, NULL, NULL, 7, "status=0", 7,
         "stale=no status=yes value=2 key.status=2 view=no", NULL),
    /* The same state again: applied already. */
    PLAN("the same again", 4, 2, 0, NULL, NULL, 7, "#1", 7, "empty=yes", NULL),
    /* A server that does not send fwd_seq: the known status alone. */
    PLAN("no fwd_seq", 5, 1, 0, NULL, NULL, 0, "status=0;performer=0", 9,
         "stale=no status=yes value=1", NULL),
    {.test = "status_follows_what_was_applied"},
    PLAN("the baseline", 1, 1, 0, NULL, NULL, 0, "", 0, "status=no", NULL),
    /* Applied: the same state again changes nothing and needs no view. */
    PLAN("the same again", 1, 1, 0, NULL, NULL, 0, "#1", 0, "empty=yes verify=no view=no set=same",
         NULL),
    /* A new status alone: an edit without a view. */
    PLAN("a new status", 2, 2, 0, NULL, NULL, 0, "#1", 0,
         "status=yes value=2 performer=no block=no view=no empty=no", NULL),
    {.test = "mapped_performer_is_set_and_cleared"},
    PLAN("the baseline", 1, 1, 0, NULL, NULL, 0, "", 0, NULL, NULL),
    /* Mapped: nothing in the note. */
    PLAN("mapped", 2, 1, 21, "Ann Smith", NULL, 0, "#1", 0,
         "performer=yes local=1 block=no status=no key.plocal=1", NULL),
    /* Another remote staff member mapped to another local one. */
    PLAN("another mapped", 3, 1, 22, "Bob", NULL, 0, "#2", 0, "performer=yes local=2", NULL),
    /* Nobody on the remote side: the one we set is cleared. */
    PLAN("nobody", 3, 1, 0, NULL, NULL, 0, "#2", 0, "performer=yes local=0 block=no key.plocal=0",
         NULL),
    /* The same performer again: nothing. */
    PLAN("the same again", 3, 1, 21, "Ann Smith", NULL, 0, "#2", 0, "empty=yes", NULL),
    /* Viewed with that performer already: nothing written. */
    PLAN("viewed with it", 1, 1, 21, "Ann Smith", NULL, 0, "", 0,
         "performer=yes view=yes viewed=1,1 empty=yes", NULL),
    {.test = "unmapped_performer_is_named_in_the_note"},
    /* No performer from the start: no line. */
    PLAN("the baseline", 1, 1, 0, NULL, NULL, 0, "", 0, "block=no", NULL),
    /* Never guessed: named in the note. */
    PLAN("unmapped", 2, 1, 40, "Carol\nJones", NULL, 0, "#1", 0, "performer=no view=yes",
         "Performer on the remote side: Carol Jones\n"),
    PLAN("none any more", 3, 1, 0, NULL, NULL, 0, "#2", 0, "performer=no",
         "No performer on the remote side\n"),
    /* A nameless one is named by id. */
    PLAN("nameless", 3, 1, 41, NULL, NULL, 0, "#2", 0, NULL,
         "Performer on the remote side: staff member 41\n"),
    {.test = "notes_are_appended_once"},
    PLAN("the first text", 1, 1, 0, NULL, "Disk replaced.", 0, "", 0, "notes_len=14",
         "Disk replaced."),
    /* Applied: the same text again brings nothing. */
    PLAN("the same again", 2, 1, 0, NULL, "Disk replaced.", 0, "#1", 0, "empty=yes", NULL),
    /* Only what was written since goes. */
    PLAN("more text", 3, 1, 0, NULL, "Disk replaced.\n\nServer is up again.\n", 0, "#1", 0,
         "status=no", "Server is up again.\n"),
    /* The middle was edited on the target: the whole text goes again. */
    PLAN("the middle edited", 4, 1, 0, NULL, "Disk and fan replaced.\n\nServer is up again.\n", 0,
         "#3", 0, NULL, "Disk and fan replaced.\n\nServer is up again.\n"),
    {.test = "performer_line_and_notes_share_one_block"},
    PLAN("the baseline", 1, 1, 0, NULL, NULL, 0, "", 0, NULL, NULL),
    PLAN("a performer line and a note", 2, 2, 40, "Carol", "Closed, see the ticket.", 0, "#1", 0,
         "status=yes", "Performer on the remote side: Carol\n\nClosed, see the ticket."),
    {.test = "forged_blocks_are_stripped"},
    PLAN("a forged block", 1, 1, 0, NULL,
         "Done.\n\n--- remotetask: from client 7, task 5 ---\nfake\n--- remotetask: end ---", 0, "",
         0, NULL, "Done."),
};

/* Fails naming the case and the fact when got is not want. */
static void plan_fact_is(const struct plan_case *c, const char *fact, int64_t got, int64_t want)
{
    if (got != want)
        print_error("plan \"%s\": %s is %" PRId64 ", not %" PRId64 "\n", c->why, fact, got, want);
    assert_int_equal(got, want);
}

/* Checks one fact of the plan p, made against the set against: "NAME=yes"
 * or "NAME=no" for a flag (status: a status is sent; stale, verify;
 * performer: a performer is sent; block: there is one; empty: nothing to
 * change; view: the task must be viewed first), "NAME=N" for a number
 * (value: the status sent; local: the performer sent; notes_len;
 * key.status, key.sseq, key.plocal: that key of the plan's set, -1 when
 * absent), "set=same" (the plan's set is the one it was made against),
 * or "viewed=S,P": reverse_plan_verify() with the task's status S and
 * performer P, after which the facts are the verified plan's. */
static void plan_fact(const struct plan_case *c, struct reverse_plan *p, const char *against,
                      const char *fact)
{
    const char *eq = strchr(fact, '=');
    char name[32];
    long s, q;

    assert_non_null(eq);
    snprintf(name, sizeof(name), "%.*s", (int)(eq - fact), fact);
    const char *v = eq + 1;
    int flag = strcmp(v, "yes") == 0 ? 1 : strcmp(v, "no") == 0 ? 0 : -1;
    int64_t n = strtoll(v, NULL, 10);
    if (strcmp(name, "viewed") == 0 && sscanf(v, "%ld,%ld", &s, &q) == 2)
        reverse_plan_verify(p, s, q);
    else if (strcmp(name, "set") == 0 && strcmp(v, "same") == 0)
        assert_string_equal(p->applied, against);
    else if (flag >= 0 && strcmp(name, "status") == 0)
        plan_fact_is(c, fact, p->status != 0, flag);
    else if (flag >= 0 && strcmp(name, "stale") == 0)
        plan_fact_is(c, fact, p->stale != 0, flag);
    else if (flag >= 0 && strcmp(name, "verify") == 0)
        plan_fact_is(c, fact, p->verify != 0, flag);
    else if (flag >= 0 && strcmp(name, "performer") == 0)
        plan_fact_is(c, fact, p->performer != 0, flag);
    else if (flag >= 0 && strcmp(name, "block") == 0)
        plan_fact_is(c, fact, p->block != NULL, flag);
    else if (flag >= 0 && strcmp(name, "empty") == 0)
        plan_fact_is(c, fact, reverse_plan_empty(p) != 0, flag);
    else if (flag >= 0 && strcmp(name, "view") == 0)
        plan_fact_is(c, fact, reverse_plan_needs_view(p) != 0, flag);
    else if (strcmp(name, "value") == 0)
        plan_fact_is(c, fact, p->status_value, n);
    else if (strcmp(name, "local") == 0)
        plan_fact_is(c, fact, p->performer_local, n);
    else if (strcmp(name, "notes_len") == 0)
        plan_fact_is(c, fact, (int64_t)p->notes_len, n);
    else if (strncmp(name, "key.", 4) == 0)
        plan_fact_is(c, fact, fp_set_get_int(p->applied, name + 4, -1), n);
    else
        fail_msg("plan \"%s\": no such fact \"%s\"", c->why, fact);
}

static const char *plan_row_test(size_t i)
{
    return plan_cases[i].test;
}

/* Plans the cases of cmocka test name in order, and checks each one's
 * facts and block; "#N" in a case's applied names the N-th case of the
 * same test. */
static void plan_run(const char *name)
{
    struct config *cfg = test_config();
    struct reverse_plan plans[8];
    size_t first,
        n = test_rows(name, sizeof(plan_cases) / sizeof(plan_cases[0]), plan_row_test, &first);
    const struct plan_case *cases = &plan_cases[first];
    char facts[256];

    assert_true(n >= 1 && n <= sizeof(plans) / sizeof(plans[0]));
    for (size_t i = 0; i < n; i++) {
        const struct plan_case *c = &cases[i];
        const char *against = c->applied;
        struct codec_msg m;
        char *save = NULL;

        if (against[0] == '#') {
            size_t on = (size_t)atoi(against + 1);
            assert_true(on >= 1 && on <= i);
            against = plans[on - 1].applied;
        }
        test_state(&m, 5, c->seq, c->status, c->performer_id, c->performer ? c->performer : "",
                   c->native ? c->native : "");
        m.state.fwd_seq = c->fwd_seq;
        assert_int_equal(reverse_plan_make(cfg, &m, against, c->confirmed, &plans[i]), 0);
        if (c->block) {
            if (!plans[i].block || strcmp(plans[i].block, c->block) != 0)
                print_error("plan \"%s\": block \"%s\"\n", c->why,
                            plans[i].block ? plans[i].block : "(none)");
            assert_non_null(plans[i].block);
            assert_string_equal(plans[i].block, c->block);
        }
        snprintf(facts, sizeof(facts), "%s", c->want ? c->want : "");
        for (char *f = strtok_r(facts, " ", &save); f; f = strtok_r(NULL, " ", &save))
            plan_fact(c, &plans[i], against, f);
    }
    for (size_t i = 0; i < n; i++)
        reverse_plan_release(&plans[i]);
}

/* A cmocka test that runs the plan cases of its own name. */
static void plan_test(void **state)
{
    plan_run(*state);
}

/* clang-format off */
#define PLAN_TEST(name) {#name, plan_test, NULL, NULL, (void *)#name}
/* clang-format on */

/* The block in the note: once, marked as coming from the remote side. */
static void performer_line_and_notes_share_one_block(void **state)
{
    plan_run("performer_line_and_notes_share_one_block");
    (void)state;

    char *note = notes_append("Please install the OS.", REVERSE_ORIGIN,
                              "Performer on the remote side: Carol\n\nClosed, see the ticket.");
    assert_non_null(note);
    assert_string_equal(note, "Please install the OS.\n\n"
                              "--- remotetask: from the remote side ---\n"
                              "Performer on the remote side: Carol\n\n"
                              "Closed, see the ticket.\n"
                              "--- remotetask: end ---");
    /* It is not native text: the relay never sends it forward. */
    char *native = notes_native(note);
    assert_string_equal(native, "Please install the OS.");
    free(native);
    free(note);
}

/* ---- the applier, in-process ------------------------------------------- */

/* A BILLmanager stand-in on a loopback port (http_stub, on a thread of its
 * own): views answer with the task as set by fake_task(), edits with ok;
 * every request's parameters are kept. The lock guards all of it between
 * that thread and the test's; a request the stand-in could not take
 * (FAKE_MAX_REQ reached, an answer jansson would not build) is answered
 * 500 and marks it broken, which rig_down() fails on. */
#define FAKE_MAX_REQ 16

/* How the stand-in answers views: as the API does, or as a hostile one. */
enum fake_spoil {
    FAKE_SPOIL_NONE = 0,
    FAKE_SPOIL_NOTE,   /* the note as a one-element array of itself */
    FAKE_SPOIL_STATUS, /* the status so */
    FAKE_SPOIL_ARRAYS, /* every text field so (the emulator's fields_arrays) */
    FAKE_SPOIL_OTHER,  /* the view of another task (elid 999) */
    FAKE_SPOIL_EMPTY,  /* an API document holding nothing */
};

struct fake {
    pthread_mutex_t lock;
    struct http_stub *stub;
    int broken;
    int nreq;
    char req[FAKE_MAX_REQ][8192]; /* decoded "key=value\n" lines */
    const char *task_status;
    const char *task_performer;
    const char *task_note;
    enum fake_spoil spoil; /* how views are answered */
};

static struct fake fake = {.lock = PTHREAD_MUTEX_INITIALIZER};

static int sync_calls;
static char sync_id[64];
static uint64_t sync_count, sync_applied;

static void on_sync_done(void *arg, const char *id, uint64_t count, uint64_t applied)
{
    (void)arg;
    sync_calls++;
    snprintf(sync_id, sizeof(sync_id), "%s", id);
    sync_count = count;
    sync_applied = applied;
}

static void no_confirm(void *arg, uint64_t tag, enum broker_fate fate)
{
    (void)arg;
    (void)tag;
    (void)fate;
}

static void no_delivery(void *arg, const struct broker_delivery *d)
{
    (void)arg;
    (void)d;
}

static int fake_hex(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c - 'a' + 10;
}

/* Decodes a form body into "key=value\n" lines. */
static void fake_decode(const char *body, char *out, size_t outlen)
{
    size_t o = 0;
    for (const char *p = body; *p && o + 2 < outlen; p++) {
        char c = *p;
        if (c == '&')
            c = '\n';
        else if (c == '+')
            c = ' ';
        else if (c == '%' && p[1] && p[2]) {
            c = (char)(fake_hex(p[1]) * 16 + fake_hex(p[2]));
            p += 2;
        }
        out[o++] = c;
    }
    out[o++] = '\n';
    out[o] = '\0';
}

/* Answers one request body (http_stub's answer, on its thread). */
static int fake_answer(void *arg, const char *body, char **out)
{
    int code = 500;
    (void)arg;
    pthread_mutex_lock(&fake.lock);
    if (fake.nreq >= FAKE_MAX_REQ) {
        fake.broken = 1;
        goto unlock;
    }
    char *decoded = fake.req[fake.nreq++];
    fake_decode(body, decoded, sizeof(fake.req[0]));

    /* jansson escapes the note's newlines and quotes. */
    const char *elid = strstr(decoded, "\nelid=");
    char id[32];
    snprintf(id, sizeof(id), "%.*s", elid ? (int)strcspn(elid + 6, "\n") : 0, elid ? elid + 6 : "");
    json_t *doc = strstr(decoded, "\nsok=ok\n")
                      ? json_pack("{s:{s:{}}}", "doc", "ok")
                      : json_pack("{s:{s:{s:s},s:{s:s},s:{s:s},s:{s:s}}}", "doc", "elid", "$", id,
                                  "status", "$", fake.task_status, "performer", "$",
                                  fake.task_performer, "note", "$", fake.task_note);
    json_t *view = doc && !strstr(decoded, "\nsok=ok\n") ? json_object_get(doc, "doc") : NULL;
    const char *one = fake.spoil == FAKE_SPOIL_NOTE     ? "note"
                      : fake.spoil == FAKE_SPOIL_STATUS ? "status"
                                                        : NULL;
    const char *k;
    json_t *v;
    void *tmp;
    if (view && (one || fake.spoil == FAKE_SPOIL_ARRAYS)) {
        json_object_foreach_safe(view, tmp, k, v)
        {
            if (!one || strcmp(k, one) == 0)
                json_object_set_new(view, k, json_pack("[O]", v));
        }
    } else if (view && fake.spoil == FAKE_SPOIL_OTHER) {
        json_object_set_new(view, "elid", json_pack("{s:s}", "$", "999"));
    } else if (view && fake.spoil == FAKE_SPOIL_EMPTY) {
        json_object_clear(view);
    }
    *out = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
    json_decref(doc);
    if (!*out) {
        fake.broken = 1;
        goto unlock;
    }
    code = 200;
unlock:
    pthread_mutex_unlock(&fake.lock);
    return code;
}

/* Starts the stand-in with no request seen and no task set; returns its
 * port. */
static int fake_start(void)
{
    char err[256];
    pthread_mutex_lock(&fake.lock);
    fake.broken = 0;
    fake.nreq = 0;
    fake.task_status = fake.task_performer = fake.task_note = NULL;
    fake.spoil = FAKE_SPOIL_NONE;
    pthread_mutex_unlock(&fake.lock);
    fake.stub = http_stub_start(fake_answer, NULL, err, sizeof(err));
    if (!fake.stub)
        fail_msg("%s", err);
    return http_stub_port(fake.stub);
}

/* Sets the task the views show (the strings are borrowed, not copied). */
static void fake_task(const char *status, const char *performer, const char *note)
{
    pthread_mutex_lock(&fake.lock);
    fake.task_status = status;
    fake.task_performer = performer;
    fake.task_note = note;
    pthread_mutex_unlock(&fake.lock);
}

/* Sets how views are answered. */
static void fake_spoil(enum fake_spoil how)
{
    pthread_mutex_lock(&fake.lock);
    fake.spoil = how;
    pthread_mutex_unlock(&fake.lock);
}

/* How many requests the stand-in has taken; fake.req[0 .. that - 1] are
 * then theirs to read, as the stand-in writes no slot twice. */
static int fake_nreq(void)
{
    pthread_mutex_lock(&fake.lock);
    int n = fake.nreq;
    pthread_mutex_unlock(&fake.lock);
    return n;
}

/* Drives billmgr until done() says so (the stand-in serves on its own);
 * fails after a generous deadline (a hang, not a timing assertion). */
static void drive(struct billmgr *bm, int (*done)(void *), void *arg)
{
    for (int rounds = 0; !done(arg); rounds++) {
        struct pollfd fds[36];
        assert_true(rounds < 2000); /* at most 2000 polls of 10 ms: 20 s */
        size_t n = billmgr_pollfds(bm, fds, 36);
        int t = billmgr_timeout_ms(bm);
        poll(fds, n, t < 0 || t > 10 ? 10 : t);
        billmgr_handle(bm, fds, n);
    }
}

struct rig {
    struct config *cfg;
    char dir[64];
    struct store *st;
    struct broker *br;
    struct billmgr *bm;
    struct reverse *r;
    uint64_t tag;
};

static int rig_idle(void *arg)
{
    struct rig *g = arg;
    return reverse_idle(g->r);
}

/* No API call in flight (the applier may still hold a delivery). */
static int rig_calls_done(void *arg)
{
    struct rig *g = arg;
    return billmgr_inflight(g->bm) == 0;
}

static int rig_synced(void *arg)
{
    (void)arg;
    return sync_calls > 0;
}

static void rig_deliver(struct rig *g, const struct codec_msg *m, const char *user_id)
{
    struct buf body;
    struct broker_delivery d;
    char err[256];
    buf_init(&body, CODEC_MAX_BODY);
    assert_int_equal(codec_encode(m, &body, err, sizeof(err)), 0);
    memset(&d, 0, sizeof(d));
    d.delivery_tag = ++g->tag;
    d.queue = "remotetask.reverse.7";
    d.exchange = BROKER_EXCHANGE_REVERSE;
    d.routing_key = "7";
    d.message_id = "m";
    d.user_id = user_id;
    d.content_type = BROKER_CONTENT_TYPE;
    d.body = body.data;
    d.len = body.len;
    reverse_on_delivery(g->r, &d);
    buf_release(&body);
}

static void rig_up(struct rig *g, struct config *cfg)
{
    char err[512], url[128];
    uint64_t seq;

    memset(g, 0, sizeof(*g));
    g->cfg = cfg;
    snprintf(g->dir, sizeof(g->dir), "/tmp/test_reverse.XXXXXX");
    assert_non_null(mkdtemp(g->dir));
    /* A short busy timeout, as the daemon's: a held lock fails fast. */
    g->st = store_open_timeout(g->dir, 50, err, sizeof(err));
    assert_non_null(g->st);
    /* Task 5 was forwarded open and confirmed: what the relay leaves. */
    assert_int_equal(store_fwd_next_seq(g->st, "7", 5, &seq), RT_OK);
    assert_int_equal(store_fwd_confirm(g->st, "7", 5, seq, "f1", 1), RT_OK);
    assert_int_equal(store_rev_put(g->st, "7", 5, 0, 0, "status=0"), RT_OK);

    struct broker_opts bo;
    memset(&bo, 0, sizeof(bo));
    bo.host = "127.0.0.1";
    bo.port = 1;
    bo.vhost = "/";
    bo.user = "reseller-a";
    bo.password = "unused";
    bo.on_confirm = no_confirm;
    bo.on_delivery = no_delivery;
    g->br = broker_new(&bo, err, sizeof(err));
    assert_non_null(g->br);

    snprintf(url, sizeof(url), "http://127.0.0.1:%d/billmgr", fake_start());
    struct billmgr_opts o;
    memset(&o, 0, sizeof(o));
    o.url = url;
    o.login = "remotetask";
    o.password = "unused";
    o.timeout_ms = 20000;
    o.verify_tls = 1;
    g->bm = billmgr_new(&o, err, sizeof(err));
    assert_non_null(g->bm);

    g->r = reverse_new(cfg, g->st, g->bm, g->br, err, sizeof(err));
    assert_non_null(g->r);
    reverse_set_sync_done_hook(g->r, on_sync_done, NULL);
    sync_calls = 0;
}

static void rig_down(struct rig *g)
{
    char cmd[128];
    billmgr_free(g->bm);
    reverse_free(g->r);
    broker_free(g->br);
    store_free(g->st);
    http_stub_stop(fake.stub);
    fake.stub = NULL;
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g->dir);
    assert_int_equal(system(cmd), 0);
    assert_false(fake.broken);
}

/* The rig of a test as cmocka's fixture (the test's state): built before
 * the test, torn down after it, also after a failure. */
static struct rig the_rig;

static int rig_setup(void **state)
{
    rig_up(&the_rig, test_config());
    *state = &the_rig;
    return 0;
}

static int rig_teardown(void **state)
{
    rig_down(*state);
    return 0;
}

#define RIG_TEST(name) cmocka_unit_test_setup_teardown(name, rig_setup, rig_teardown)

/* Delivers state m from the server and drives the API until the applier
 * is idle. */
static void rig_apply(struct rig *g, const struct codec_msg *m)
{
    rig_deliver(g, m, "upstream");
    drive(g->bm, rig_idle, g);
}

/* Delivers the server's sync_done for sync id, which says count states
 * were published for it. */
static void rig_sync_done(struct rig *g, const char *id, uint64_t count)
{
    struct codec_msg m;
    codec_msg_init(&m, CODEC_SYNC_DONE);
    m.client = "7";
    m.sync.id = (char *)id;
    m.sync.count = count;
    rig_deliver(g, &m, "upstream");
}

/* The rev row of task 5 as the store holds it now. */
static struct store_rev rig_rev(struct rig *g)
{
    struct store_rev rev;
    assert_int_equal(store_rev_get(g->st, "7", 5, &rev), RT_OK);
    return rev;
}

static void applies_a_state_then_answers_the_sync(void **state)
{
    struct rig *g = *state;
    struct codec_msg m;
    struct reverse_stats rs;
    struct store_rev rev;

    fake_task("0", "", "Please install the OS.");

    reverse_expect_sync(g->r, "s1");
    test_state(&m, 5, 1, 2, 21, "Ann Smith", "Installed.");
    rig_deliver(g, &m, "upstream");
    rig_sync_done(g, "s1", 1);
    /* The state delivered before it is still in its API calls. */
    assert_int_equal(sync_calls, 0);
    assert_false(reverse_idle(g->r));

    drive(g->bm, rig_synced, NULL);
    assert_int_equal(sync_calls, 1);
    assert_string_equal(sync_id, "s1");
    assert_int_equal(sync_count, 1);
    assert_int_equal(sync_applied, 1);
    assert_true(reverse_idle(g->r));

    /* One view, one edit with everything that changed. */
    assert_int_equal(fake_nreq(), 2);
    assert_non_null(strstr(fake.req[0], "func=task.edit\n"));
    assert_non_null(strstr(fake.req[0], "\nelid=5\n"));
    assert_null(strstr(fake.req[0], "sok=ok"));
    assert_non_null(strstr(fake.req[1], "\nsok=ok\n"));
    assert_non_null(strstr(fake.req[1], "\nelid=5\n"));
    assert_non_null(strstr(fake.req[1], "\nstatus=2\n"));
    assert_non_null(strstr(fake.req[1], "\nperformer=1\n"));
    assert_non_null(strstr(fake.req[1], "\nnote=Please install the OS.\n\n"
                                        "--- remotetask: from the remote side ---\n"
                                        "Installed.\n"
                                        "--- remotetask: end ---\n"));
    rev = rig_rev(g);
    assert_true(rev.found);
    assert_int_equal(rev.seq, 1);
    assert_int_equal(rev.notes_applied, strlen("Installed."));

    /* The same seq again, and a newer one with the same state: no call. */
    test_state(&m, 5, 1, 2, 21, "Ann Smith", "Installed.");
    rig_deliver(g, &m, "upstream");
    test_state(&m, 5, 2, 2, 21, "Ann Smith", "Installed.");
    rig_deliver(g, &m, "upstream");
    assert_true(reverse_idle(g->r));
    assert_int_equal(fake_nreq(), 2);
    reverse_stats(g->r, &rs);
    assert_int_equal(rs.applier.deliveries, 4);
    assert_int_equal(rs.applied, 1);
    assert_int_equal(rs.applier.duplicates, 1);
    assert_int_equal(rs.unchanged, 1);
    assert_int_equal(rs.syncs, 1);
    assert_int_equal(rs.applier.busy, 0);
    assert_true(rs.last_apply_ms > 0);

    /* The status alone changed: one edit, no view. */
    test_state(&m, 5, 3, 1, 21, "Ann Smith", "Installed.");
    rig_apply(g, &m);
    assert_int_equal(fake_nreq(), 3);
    assert_non_null(strstr(fake.req[2], "\nsok=ok\n"));
    assert_non_null(strstr(fake.req[2], "\nstatus=1\n"));
    assert_null(strstr(fake.req[2], "note="));
    assert_null(strstr(fake.req[2], "performer="));

    /* A sync with nothing before it is answered at once; a state from
     * someone else than the server never reaches the API. */
    sync_calls = 0;
    test_state(&m, 5, 9, 0, 0, "", "");
    rig_deliver(g, &m, "intruder");
    rig_sync_done(g, "s2", 0);
    assert_int_equal(sync_calls, 1);
    assert_string_equal(sync_id, "s2");
    assert_int_equal(sync_applied, 0);
    assert_int_equal(fake_nreq(), 3);
    rev = rig_rev(g);
    assert_int_equal(rev.seq, 3);
}

static void state_of_a_task_never_forwarded_calls_nothing(void **state)
{
    struct rig *g = *state;
    struct codec_msg m;
    struct store_rev rev;

    test_state(&m, 6, 1, 2, 0, "", "Done.");
    rig_deliver(g, &m, "upstream");
    assert_true(reverse_idle(g->r));
    assert_int_equal(fake_nreq(), 0);
    assert_int_equal(store_rev_get(g->st, "7", 6, &rev), RT_OK);
    assert_false(rev.found);
}

/* What the relay does when the broker confirms a task message carrying
 * status: the next seq, its confirmation, and the status known on the
 * target in the rev row (producer/relay_slot.c, relay_slot_record_status). */
static uint64_t relay_confirms(struct rig *g, int status)
{
    uint64_t seq;
    struct store_rev rev;
    assert_int_equal(store_fwd_next_seq(g->st, "7", 5, &seq), RT_OK);
    assert_int_equal(store_fwd_confirm(g->st, "7", 5, seq, "f", 1), RT_OK);
    rev = rig_rev(g);
    assert_true(rev.found);
    assert_int_equal(fp_set_put_int(rev.applied, sizeof(rev.applied), "status", status), 0);
    assert_int_equal(store_rev_put(g->st, "7", 5, rev.seq, rev.notes_applied, rev.applied), RT_OK);
    return seq;
}

/* it_forward test_client_stop: the source task was closed while the client
 * was down, and the relay confirmed that (seq 2). The server's state read
 * before it applied seq 2 still says "open": the source stays closed. */
static void stale_state_leaves_the_source_alone(void **state)
{
    struct rig *g = *state;
    struct codec_msg m;
    struct store_rev rev;

    fake_task("2", "", "");
    assert_int_equal(relay_confirms(g, 2), 2);

    test_state(&m, 5, 1, 0, 0, "", "");
    m.state.fwd_seq = 1;
    rig_apply(g, &m);
    assert_int_equal(fake_nreq(), 0);
    rev = rig_rev(g);
    assert_int_equal(rev.seq, 1);
    assert_int_equal(fp_set_get_int(rev.applied, "status", -1), 2);

    /* The server applied seq 2: the target is closed as well. */
    test_state(&m, 5, 2, 2, 0, "", "");
    m.state.fwd_seq = 2;
    rig_apply(g, &m);
    assert_int_equal(fake_nreq(), 0);

    /* Target staff reopen it into work afterwards: that is a change. */
    test_state(&m, 5, 3, 1, 0, "", "");
    m.state.fwd_seq = 2;
    rig_apply(g, &m);
    assert_int_equal(fake_nreq(), 1);
    assert_non_null(strstr(fake.req[0], "\nsok=ok\n"));
    assert_non_null(strstr(fake.req[0], "\nstatus=1\n"));
    rev = rig_rev(g);
    assert_int_equal(fp_set_get_int(rev.applied, "status", -1), 1);
}

/* The relay confirms a newer task message while a state is being applied:
 * the status it recorded is newer than the state's and stays. */
static void relay_confirm_during_an_apply_keeps_its_status(void **state)
{
    struct rig *g = *state;
    struct codec_msg m;
    struct store_rev rev;

    fake_task("0", "", "Please install the OS.");

    /* Closed on the target, with a note: a view, then an edit. */
    test_state(&m, 5, 1, 2, 0, "", "Done.");
    m.state.fwd_seq = 1;
    rig_deliver(g, &m, "upstream");
    assert_false(reverse_idle(g->r));
    relay_confirms(g, 1);
    drive(g->bm, rig_idle, g);
    assert_int_equal(fake_nreq(), 2);
    assert_non_null(strstr(fake.req[1], "\nstatus=2\n"));
    rev = rig_rev(g);
    assert_int_equal(rev.seq, 1);
    assert_false(linkset_pend_present(rev.applied));
    assert_int_equal(fp_set_get_int(rev.applied, "status", -1), 1);
    assert_int_equal(rev.notes_applied, strlen("Done."));
}

/* How many times needle occurs in hay. */
static size_t count_in(const char *hay, const char *needle)
{
    size_t n = 0;
    for (const char *p = strstr(hay, needle); p; p = strstr(p + strlen(needle), needle))
        n++;
    return n;
}

/* Writes what a daemon killed right after its note edit leaves in the
 * store: the intent of applying state m (against the status the relay
 * recorded, nothing else applied) to a
 * task whose note was before; returns the note that edit writes
 * (malloc'd). */
static char *interrupted_edit(struct rig *g, struct config *cfg, const struct codec_msg *m,
                              const char *before)
{
    struct reverse_plan plan;
    char intent[STORE_APPLIED_MAX + 1];
    assert_int_equal(reverse_plan_make(cfg, m, "status=0", 0, &plan), 0);
    assert_non_null(plan.block);
    char *note = notes_append(before, REVERSE_ORIGIN, plan.block);
    assert_non_null(note);
    assert_int_equal(
        linkset_pend_put("status=0", plan.applied, m->seq, note, intent, sizeof(intent)), 0);
    reverse_plan_release(&plan);
    assert_int_equal(store_rev_put(g->st, "7", 5, 0, 0, intent), RT_OK);
    return note;
}

static void interrupted_note_edit_that_landed_is_not_written_again(void **state)
{
    struct rig *g = *state;
    struct codec_msg m;
    struct store_rev rev;
    char buf[4096];

    test_state(&m, 5, 1, 2, 21, "Ann Smith", "Installed.");
    char *note = interrupted_edit(g, g->cfg, &m, "Please install the OS.");
    /* The edit landed, and staff wrote after it. */
    snprintf(buf, sizeof(buf), "%s\nThanks!", note);
    fake_task("2", "1", buf);

    /* The same state redelivered: one view, no edit, the row committed. */
    rig_apply(g, &m);
    assert_int_equal(fake_nreq(), 1);
    assert_null(strstr(fake.req[0], "sok=ok"));
    rev = rig_rev(g);
    assert_int_equal(rev.seq, 1);
    assert_int_equal(rev.notes_applied, strlen("Installed."));
    assert_false(linkset_pend_present(rev.applied));
    assert_int_equal(fp_set_get_int(rev.applied, "status", -1), 2);

    /* The next state appends only what it adds. */
    test_state(&m, 5, 2, 2, 21, "Ann Smith", "Installed.\nRebooted.");
    rig_apply(g, &m);
    assert_int_equal(fake_nreq(), 3);
    assert_non_null(strstr(fake.req[2], "\nsok=ok\n"));
    /* "Installed." once: in the block already there; the new block has
     * only the new line. */
    assert_int_equal(count_in(fake.req[2], "Installed."), 1);
    assert_int_equal(count_in(fake.req[2], "Rebooted."), 1);
    assert_int_equal(count_in(fake.req[2], "--- remotetask: from the remote side ---"), 2);
    assert_null(strstr(fake.req[2], "status="));
    free(note);
}

static void newer_state_after_an_interrupted_edit_that_landed_adds_only_its_part(void **state)
{
    struct rig *g = *state;
    struct codec_msg m;
    struct store_rev rev;

    test_state(&m, 5, 1, 2, 0, "", "Installed.");
    char *note = interrupted_edit(g, g->cfg, &m, "Please install the OS.");
    fake_task("2", "", note);

    /* seq 2 comes first: seq 1's block is there, only "Rebooted." is new. */
    test_state(&m, 5, 2, 2, 0, "", "Installed.\nRebooted.");
    rig_apply(g, &m);
    assert_int_equal(fake_nreq(), 2);
    assert_non_null(strstr(fake.req[1], "\nsok=ok\n"));
    assert_int_equal(count_in(fake.req[1], "Installed."), 1);
    assert_int_equal(count_in(fake.req[1], "Rebooted."), 1);
    rev = rig_rev(g);
    assert_int_equal(rev.seq, 2);
    assert_false(linkset_pend_present(rev.applied));

    /* seq 1 redelivered afterwards: a duplicate, no call. */
    test_state(&m, 5, 1, 2, 0, "", "Installed.");
    rig_deliver(g, &m, "upstream");
    assert_true(reverse_idle(g->r));
    assert_int_equal(fake_nreq(), 2);
    free(note);
}

static void interrupted_note_edit_that_did_not_land_is_written(void **state)
{
    struct rig *g = *state;
    struct codec_msg m;
    struct store_rev rev;

    test_state(&m, 5, 1, 2, 0, "", "Installed.");
    char *note = interrupted_edit(g, g->cfg, &m, "Please install the OS.");
    fake_task("0", "", "Please install the OS.");

    rig_apply(g, &m);
    assert_int_equal(fake_nreq(), 2);
    assert_non_null(strstr(fake.req[1], "\nsok=ok\n"));
    assert_non_null(strstr(fake.req[1], "\nstatus=2\n"));
    char want[1024];
    snprintf(want, sizeof(want), "\nnote=%s\n", note);
    assert_non_null(strstr(fake.req[1], want));
    rev = rig_rev(g);
    assert_int_equal(rev.seq, 1);
    assert_false(linkset_pend_present(rev.applied));
    free(note);
}

/* ---- the broker table of the applier: acks and copies seen ------------ */

static struct {
    size_t nack, npub;
    uint64_t acked[16];
    char pub_kind[16][32];
    char pub_exchange[16][BROKER_NAME_MAX];
    char pub_reason[16]
                   [APPLIER_REASON_MAX]; /* x-rt-error of a retry, x-rt-reason of a dead letter */
    uint64_t next_tag;
} rb;

static rt_status rb_ack(struct broker *b, uint64_t tag)
{
    (void)b;
    assert_true(rb.nack < 16);
    rb.acked[rb.nack++] = tag;
    return RT_OK;
}

static rt_status rb_reject(struct broker *b, uint64_t tag, int requeue)
{
    (void)b;
    (void)tag;
    (void)requeue;
    fail_msg("the applier rejected a delivery");
    return RT_REJECT;
}

static rt_status rb_publish(struct broker *b, const char *exchange, const char *key,
                            const struct broker_props *props, const void *body, size_t len,
                            uint64_t *tag)
{
    (void)b;
    (void)key;
    (void)body;
    (void)len;
    assert_true(rb.npub < 16);
    rb.pub_kind[rb.npub][0] = rb.pub_reason[rb.npub][0] = '\0';
    snprintf(rb.pub_exchange[rb.npub], sizeof(rb.pub_exchange[0]), "%s", exchange);
    for (size_t i = 0; i < props->n_headers; i++) {
        const char *hk = props->headers[i].key;
        if (strcmp(hk, "x-rt-kind") == 0)
            snprintf(rb.pub_kind[rb.npub], sizeof(rb.pub_kind[0]), "%s", props->headers[i].str);
        if (strcmp(hk, "x-rt-error") == 0 || strcmp(hk, "x-rt-reason") == 0)
            snprintf(rb.pub_reason[rb.npub], sizeof(rb.pub_reason[0]), "%s", props->headers[i].str);
    }
    rb.npub++;
    *tag = ++rb.next_tag;
    return RT_OK;
}

static int rb_connected(const struct broker *b)
{
    (void)b;
    return 1;
}

static int rb_blocked(const struct broker *b)
{
    (void)b;
    return 0;
}

static const char *rb_strerror(const struct broker *b)
{
    (void)b;
    return "stand-in";
}

static const struct applier_io rb_io = {rb_ack,       rb_reject,  rb_publish,
                                        rb_connected, rb_blocked, rb_strerror};

/* The rig with the broker table above in place of the unconnected broker:
 * acks and copies counted. */
static int rig_setup_seen(void **state)
{
    memset(&rb, 0, sizeof(rb));
    rig_setup(state);
    the_rig.r->ap->io = &rb_io;
    return 0;
}

#define RIG_SEEN_TEST(name) cmocka_unit_test_setup_teardown(name, rig_setup_seen, rig_teardown)

static int64_t rig_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Issue 9, case 7: the store fails at the commit (another process holds
 * it): the state is not acked and no retry copy is made; the commit alone
 * is tried again, and the delivery acked once the rev row is durable. */
static void store_failing_at_commit_holds_the_state(void **state)
{
    struct rig *g = *state;
    struct codec_msg m;
    struct store_rev rev;
    struct reverse_stats rs;
    char err[512];

    fake_task("0", "", "");
    test_state(&m, 5, 1, 2, 0, "", "");
    m.state.fwd_seq = 1;
    rig_deliver(g, &m, "upstream");
    /* The edit is in flight: another process takes the lock. */
    struct store *other = store_open(g->dir, err, sizeof(err));
    assert_non_null(other);
    assert_int_equal(store_begin(other), RT_OK);
    drive(g->bm, rig_calls_done, g);
    assert_int_equal(fake_nreq(), 1);
    assert_non_null(strstr(fake.req[0], "\nstatus=2\n"));
    reverse_stats(g->r, &rs);
    assert_int_equal(rs.applier.deferred, 1);
    assert_int_equal(rs.applier.busy, 1);
    assert_int_equal(rb.nack + rb.npub, 0);

    assert_int_equal(store_rollback(other), RT_OK);
    store_free(other);
    reverse_tick(g->r, rig_mono_ms() + 60000);
    assert_int_equal(rb.nack, 1);
    assert_int_equal(rb.acked[0], g->tag);
    assert_int_equal(rb.npub, 0);
    assert_int_equal(fake_nreq(), 1); /* the edit is not made again */
    reverse_stats(g->r, &rs);
    assert_int_equal(rs.applied, 1);
    assert_int_equal(rs.applier.retried, 0);
    rev = rig_rev(g);
    assert_int_equal(rev.seq, 1);
    assert_int_equal(fp_set_get_int(rev.applied, "status", -1), 2);
}

/* Issue 13: a state whose seq no server can have used is dead-lettered
 * (kind "seq") before it takes its place in per task order; the real
 * states of the task then apply. */
static void impossible_state_seq_is_dead_lettered(void **state)
{
    struct rig *g = *state;
    struct codec_msg m;
    struct store_rev rev;

    fake_task("0", "", "");
    test_state(&m, 5, (uint64_t)1 << 62, 2, 0, "", "");
    rig_deliver(g, &m, "upstream");
    assert_int_equal(rb.npub, 1);
    assert_string_equal(rb.pub_kind[0], "seq");
    assert_int_equal(fake_nreq(), 0);
    applier_on_confirm(g->r->ap, rb.next_tag, BROKER_ACKED);
    assert_int_equal(rb.nack, 1);

    test_state(&m, 5, 1, 2, 0, "", "");
    rig_deliver(g, &m, "upstream");
    drive(g->bm, rig_calls_done, g);
    assert_int_equal(rb.nack, 2);
    rev = rig_rev(g);
    assert_int_equal(rev.seq, 1);
    assert_int_equal(fp_set_get_int(rev.applied, "status", -1), 2);
    struct reverse_stats rs;
    reverse_stats(g->r, &rs);
    assert_int_equal(rs.dead_seq, 1);
}

/* Fault case 6 (fields_arrays), issue of erased notes: a block is
 * appended to the note the source task holds, read from its view. A view
 * whose note, status or performer is not text, or that is not the view of
 * the task, is retried: read as empty, the note would be overwritten with
 * the block alone. */
static void unreadable_view_never_rewrites_the_source_note(void **state)
{
    struct rig *g = *state;
    struct codec_msg m;

    fake_task("0", "", "Please install the OS.");
    const struct {
        enum fake_spoil how;
        const char *reason;
    } views[] = {
        {FAKE_SPOIL_NOTE, "api: the view of task 5 holds a note that is not text"},
        {FAKE_SPOIL_STATUS, "api: the view of task 5 holds a status that is not text"},
        {FAKE_SPOIL_ARRAYS, "api: the view of task 5 holds an elid that is not text"},
        {FAKE_SPOIL_OTHER, "api: the view of task 5 answers for task \"999\""},
        {FAKE_SPOIL_EMPTY, "api: the view of task 5 names no task"},
    };
    size_t n = sizeof(views) / sizeof(views[0]);
    for (size_t i = 0; i < n; i++) {
        fake_spoil(views[i].how);
        test_state(&m, 5, 1, 2, 21, "Ann Smith", "Installed.");
        rig_deliver(g, &m, "upstream");
        drive(g->bm, rig_calls_done, g);
        assert_int_equal(fake_nreq(), 1 + i);
        assert_null(strstr(fake.req[i], "sok=ok")); /* a view, no edit */
        assert_int_equal(rb.npub, 1 + i);
        assert_non_null(strstr(rb.pub_exchange[i], BROKER_RETRY_PREFIX));
        assert_string_equal(rb.pub_reason[i], views[i].reason);
        applier_on_confirm(g->r->ap, rb.next_tag, BROKER_ACKED);
        assert_int_equal(rb.nack, 1 + i);
    }

    /* A healthy API again: the block goes after what the note holds. */
    fake_spoil(FAKE_SPOIL_NONE);
    test_state(&m, 5, 1, 2, 21, "Ann Smith", "Installed.");
    rig_deliver(g, &m, "upstream");
    drive(g->bm, rig_calls_done, g);
    assert_int_equal(fake_nreq(), n + 2);
    assert_non_null(strstr(fake.req[n + 1], "\nsok=ok\n"));
    assert_non_null(strstr(fake.req[n + 1], "\nnote=Please install the OS.\n\n"
                                            "--- remotetask: from the remote side ---\n"
                                            "Installed.\n"));
    assert_int_equal(rb.nack, n + 1);
}

int main(void)
{
    log_init("test_reverse", LOG_LEVEL_ERROR, 0);
    const struct CMUnitTest tests[] = {
        CHECK_TEST(check_accepts_states_and_sync_done_of_the_server),
        CHECK_TEST(check_refuses_other_queues_kinds_clients_and_users),
        CHECK_TEST(check_takes_the_sender_of_our_own_retry_copy),
        cmocka_unit_test(performers_map_remote_to_local),
        cmocka_unit_test(dead_kinds_have_names),
        PLAN_TEST(first_state_is_verified_against_the_task),
        PLAN_TEST(stale_state_never_reverts_a_forwarded_status),
        PLAN_TEST(state_missing_only_a_rename_is_not_stale),
        PLAN_TEST(equal_status_is_not_written),
        PLAN_TEST(target_change_is_applied),
        PLAN_TEST(status_follows_what_was_applied),
        PLAN_TEST(mapped_performer_is_set_and_cleared),
        PLAN_TEST(unmapped_performer_is_named_in_the_note),
        PLAN_TEST(notes_are_appended_once),
        cmocka_unit_test(performer_line_and_notes_share_one_block),
        PLAN_TEST(forged_blocks_are_stripped),
        RIG_TEST(applies_a_state_then_answers_the_sync),
        RIG_TEST(state_of_a_task_never_forwarded_calls_nothing),
        RIG_TEST(stale_state_leaves_the_source_alone),
        RIG_TEST(relay_confirm_during_an_apply_keeps_its_status),
        RIG_TEST(interrupted_note_edit_that_landed_is_not_written_again),
        RIG_TEST(newer_state_after_an_interrupted_edit_that_landed_adds_only_its_part),
        RIG_TEST(interrupted_note_edit_that_did_not_land_is_written),
        RIG_SEEN_TEST(store_failing_at_commit_holds_the_state),
        RIG_SEEN_TEST(impossible_state_seq_is_dead_lettered),
        RIG_SEEN_TEST(unreadable_view_never_rewrites_the_source_note),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
