/*
 * faults.h - what the cases of the fault suite share (issue 9).
 *
 * Each case is a cmocka program, tests/faults/fault_<case>.c, that runs
 * both daemons as processes (tests/integration/harness_daemon.h) against a
 * RabbitMQ node of the suite's own and two BILLmanager emulators, injects
 * one fault while tasks flow, and ends with exactly one line per case
 *
 *     fault NAME: sent=N applied=N lost=N duplicated=N recovered_in=S
 *
 * printed by fault_report(), which also appends the case's figures, what
 * the daemons logged and what `remotetaskctl --command status` showed
 * during the fault, and the notes of what else was checked, as one JSON
 * object to the file RT_FAULTS_OUT names (tests/faults/report.py turns
 * those into docs/RELIABILITY.md). A case fails when something was lost
 * or duplicated, or when one of its checks (fault_check) failed; every
 * check of a case runs even after one failed, so that one run tells all
 * that is wrong, and the report says which.
 *
 * The node: the cases freeze the broker, raise memory alarms and delete
 * queues, which the other integration tests must not see, so scripts/test
 * starts a second node for the suite and exports the path of its env file
 * as RT_FAULTS_NODE_ENV; faults_use_node() (run by faults_group_setup)
 * loads it into the environment, and every harness function talks to that
 * node. The cases run one at a time (ctest RESOURCE_LOCK faults_node).
 *
 * Lifecycle of a case:
 *
 *     struct fault_result r;
 *     struct harness_scenario *s = faults_scenario("fq", &opts);
 *     fault_begin(&r, "queue-deleted", 3, "Queue deleted under the consumer");
 *     ... start the daemons, let tasks flow ...
 *     fault_start(&r);           marks both daemons' logs, starts the clock
 *     ... inject the fault; fault_status(), fault_quote(), fault_check() ...
 *     fault_end(&r);             the fault is over: recovered_in counts from here
 *     fault_wait_recovered(&r, s, FAULTS_APPLY_DEADLINE_MS);
 *     fault_report(&r);          the line, the JSON object, pass or fail
 *
 * A case that needs two scenarios, a TLS listener or a mount of its own
 * makes them with faults_scenario() and registers its own clean-up with
 * faults_on_teardown(); faults_teardown (the cmocka teardown of every
 * case) undoes everything, also after a failure, keeping the scenario
 * directories of a failed case for the post-mortem.
 */
#ifndef RT_FAULTS_H
#define RT_FAULTS_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "broker.h"
#include "harness_daemon.h"
#include "harness_flow.h"

/* Tasks per case unless the issue says otherwise. */
#define FAULTS_TASKS 300
/* Deadlines for "everything arrived": generous for a loaded 2-core
 * machine with ASan; every wait ends as soon as its condition holds. */
#define FAULTS_APPLY_DEADLINE_MS 90000
#define FAULTS_SHORT_DEADLINE_MS 30000

/* Caps on what one case records for the report. */
#define FAULT_NAME_MAX  64
#define FAULT_TITLE_MAX 160
#define FAULT_QUOTE_MAX 600 /* bytes of one quoted log line */

/* ---- the node, scenarios and clean-up ------------------------------ */

/* Loads the env file named by RT_FAULTS_NODE_ENV (KEY=VALUE lines, as
 * tests/harness/rabbitnode writes them) into this process's environment,
 * so that every harness function talks to the suite's node. Fails the
 * test, saying how to run the suite, when the variable is unset or the
 * file cannot be read. */
void faults_use_node(void);

/* A cmocka group setup that runs faults_use_node() and makes stdout
 * line-buffered (the report lines interleave with cmocka's in order). */
int faults_group_setup(void **state);

/* harness_scenario_new() with the suite's defaults for what opts leaves 0:
 * heartbeat 5 s, poll_interval 5 s. The scenario is freed by
 * faults_teardown (kept on disk when the case failed). At most 4 per
 * case. */
struct harness_scenario *faults_scenario(const char *tag, const struct harness_scenario_opts *opts);

/* Runs fn(arg) in faults_teardown, before the scenarios are freed; the
 * last registered runs first. For what a case changes outside its
 * scenario: a mount, a process it started, a broker setting. At most 16
 * per case. fn must not fail the test (it is clean-up). */
void faults_on_teardown(void (*fn)(void *arg), void *arg);

/* The cmocka teardown of every case: runs the registered clean-ups, makes
 * sure the node runs (thawed, restarted), frees the scenarios. */
int faults_teardown(void **state);

/* Starts both daemons of a scenario, the server first. */
void faults_start_both(struct harness_scenario *s);

/* ---- the source side ------------------------------------------------- */

/* Creates count tasks in the source's mapped department in one
 * transaction, named prefix1..prefixN with a note and a deadline; returns
 * the first id (they are contiguous). */
long long faults_bulk(struct harness_scenario *s, int count, const char *prefix);

/* Creates them and records their events in the client's outbox (what
 * remotetaskctl taskevent does, in bulk), then wakes the client. Returns
 * the first id. */
long long faults_bulk_send(struct harness_scenario *s, int count, const char *prefix);

/* Changes a task on an emulator as an operator would (admin POST
 * /tasks/ID); fields is stolen. */
void faults_sim_change(struct harness_sim *sim, long long id, json_t *fields);

/* One task of an emulator (GET /tasks/ID, a new reference). */
json_t *faults_sim_task(struct harness_sim *sim, long long id);

/* Successful writes (task.edit with sok, outcome ok) in an emulator's call
 * log after entry since, in all (elid < 0), or to task elid only (elid 0:
 * creates, which carry no elid). */
long faults_sim_writes(struct harness_sim *sim, long long since, long long elid);

/* The number of the newest entry of an emulator's call log (0 if none). */
long long faults_sim_last_call(struct harness_sim *sim);

/* The target task made for source task src of the scenario (a new
 * reference), or NULL when there is none. */
json_t *faults_target_of(struct harness_scenario *s, long long src);

/* Waits until each source task first..first+count-1 has its target task;
 * returns 1 when they all do, 0 when the deadline passed. */
int faults_wait_sources(struct harness_scenario *s, long long first, int count,
                        long long timeout_ms);

/* Waits until the client's outbox is empty; 1 when it is, 0 when the
 * deadline passed. */
int faults_wait_outbox_empty(struct harness_scenario *s, long long timeout_ms);

/* Runs remotetaskctl -c config with args (NULL-terminated) and returns its
 * exit status; its output, without trailing blank space, goes to *out
 * (malloc'ed, never NULL; free it). Fails the test only when it cannot
 * run or does not exit within 30 s. */
int faults_ctl(const char *config, const char *const *args, char **out);

/* ---- the stores -------------------------------------------------------- */

/* The store file under a state_dir, into buf; returns buf. */
char *faults_store_path(char *buf, size_t len, const char *state_dir);

/* Runs the sqlite3 command-line tool on db with one SQL text (no shell)
 * and returns its exit status; what it printed (stdout and stderr, cut to
 * len, without trailing blank space) goes to out. Fails the test when
 * sqlite3 cannot run or does not end within 60 s. */
int faults_sqlite(const char *db, const char *sql, char *out, size_t len);

/* `PRAGMA integrity_check` on the store under state_dir: 1 when SQLite
 * says "ok", else 0 with its answer in out. */
int faults_store_ok(const char *state_dir, char *out, size_t len);

/* ---- metrics ------------------------------------------------------------ */

/* Adds `metrics: { listen = "127.0.0.1:PORT"; };` to a configuration file
 * (before its daemon starts) and returns PORT. */
int faults_enable_metrics(const char *config);

/* GET http://127.0.0.1:port/metrics: the body (malloc'ed; free it), or
 * NULL when no 200 answer came within 10 s. */
char *faults_scrape(int port);

/* The sum of the samples of family name whose labels hold every "k=\"v\""
 * of the NULL-terminated list want (NULL = all samples); -1 when no sample
 * matched. */
double faults_metric(const char *text, const char *name, const char *const *want);

/* ---- the broker, seen from the test ---------------------------------- */

/* Writes the name of the dead-letter queue that holds a client's letters
 * of one direction (broker_dead_queue_name) into buf and returns buf;
 * fails the test for a client id that cannot name a queue. */
char *faults_dead_queue(char *buf, size_t len, enum broker_dir dir, const char *client);

/* Asks the node for a queue's ready messages and consumers over a
 * connection of the test's own as user (passive declare; exact, and a
 * few milliseconds). Returns 1 with the figures, 0 when the queue does not
 * exist; fails the test when the node cannot be asked. */
int faults_queue_depth(struct harness_scenario *s, const char *user, const char *queue,
                       uint32_t *ready, uint32_t *consumers);

/* Waits until a queue holds no message, ready or unacknowledged (exact
 * figures of rabbitmqctl); 1 when it does, 0 when the deadline passed. */
int faults_wait_queue_empty(const char *queue, long long timeout_ms);

/* A connection of the test's own, to publish as a user and read queues. */
struct faults_amqp;

/* Connects as user with the scenario's AMQP password and declares the
 * scenario's topology (idempotent). Free with faults_amqp_close. */
struct faults_amqp *faults_amqp_open(struct harness_scenario *s, const char *user);

/* Publishes body on exchange with routing key, message id mid and the
 * given timestamp (0 = now), and waits for the broker's ack; fails the
 * test when the broker does not take it. */
void faults_amqp_publish(struct faults_amqp *a, const char *exchange, const char *key,
                         const char *mid, int64_t timestamp, const void *body, size_t len);

/* Fetches up to max messages of a queue with basic.get, acking each, and
 * returns them (copies the caller frees with broker_delivery_free, then
 * free() the array); *n receives how many. */
struct broker_delivery **faults_amqp_drain(struct faults_amqp *a, const char *queue, size_t max,
                                           size_t *n);

void faults_amqp_close(struct faults_amqp *a);

/* Declares a queue of the test's own, name, and binds it to exchange with
 * routing key: a tap that receives a copy of every message published
 * there from now on. faults_tap_close deletes it; faults_teardown does too
 * when a case failed first. */
void faults_tap_open(struct harness_scenario *s, const char *name, const char *exchange,
                     const char *key);
void faults_tap_close(struct harness_scenario *s, const char *name);

/* ---- a case's result -------------------------------------------------- */

struct fault_result {
    char name[FAULT_NAME_MAX];   /* the NAME of the line: "queue-deleted" */
    int number;                  /* the case's number in issue 9 */
    char title[FAULT_TITLE_MAX]; /* one line: what the fault is */
    struct harness_scenario *s;  /* the scenario whose figures are reported */
    size_t sent, applied, lost, duplicated;
    double recovered_in; /* seconds; -1 until fault_wait_recovered says */
    long long begun_ms;  /* harness_now_ms() at fault_begin */
    long long fault_start_ms, fault_end_ms;
    size_t mark_client, mark_server; /* the daemons' logs at fault_start */
    json_t *logged;                  /* [{daemon, line, count}] */
    json_t *status;                  /* [{daemon, when, took_ms, exit, members}] */
    json_t *notes;                   /* ["..."] */
    json_t *checks;                  /* [{what, ok}] */
    size_t failed;                   /* checks that failed */
    int reported;
};

/* Starts a case: zeroes r, names it, and takes s as the scenario whose
 * flow is counted. */
void fault_begin(struct fault_result *r, struct harness_scenario *s, const char *name, int number,
                 const char *title);

/* The fault begins now: marks both daemons' logs (fault_quote reads from
 * there) and notes the time. */
void fault_start(struct fault_result *r);

/* The fault is over now: recovered_in counts from here. */
void fault_end(struct fault_result *r);

/* Records a check: its text (printf-style) and whether it held. A failed
 * check is printed at once and makes fault_report fail the case; the case
 * goes on. Returns ok. */
int fault_check(struct fault_result *r, int ok, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Records a note for the report: a figure, something else that was
 * checked or seen (printf-style). */
void fault_note(struct fault_result *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Quotes what daemon d ("client", "server": who) logged since the fault
 * started: for each needle of the NULL-terminated list, the first line
 * that holds it and how many do. Returns how many lines held the first
 * needle. Secrets never reach the report: the scenario's passwords are
 * masked in every quoted line. */
size_t fault_quote(struct fault_result *r, const char *who, const struct harness_daemon *d,
                   const char *const *needles);

/* fault_quote with one needle, and a check that the daemon logged it
 * (what says what the line means). Returns the count. */
size_t fault_expect_log(struct fault_result *r, const char *who, const struct harness_daemon *d,
                        const char *needle, const char *what);

/* Runs `remotetaskctl --command status --json` for daemon d and records
 * the members named in the NULL-terminated list (dotted paths:
 * "broker.state", "queues") with the time it took and its exit status,
 * labelled when ("during the fault"). Returns the whole document (a new
 * reference; NULL when none was printed) for the case's own checks. */
json_t *fault_status(struct fault_result *r, const char *who, const struct harness_daemon *d,
                     const char *when, const char *const *members);

/* As fault_status, giving remotetaskctl at most timeout_ms (fault_status
 * gives it 30 s): when it has not answered by then it is killed and the
 * record says so (exit -1), without failing the test. */
json_t *fault_status_within(struct fault_result *r, const char *who, const struct harness_daemon *d,
                            const char *when, const char *const *members, long long timeout_ms);

/* Counts the scenario's flow now (harness_flow_count) into r without
 * waiting. */
void fault_count(struct fault_result *r);

/* Waits until every task of the source's department is on the target
 * with its fields (or the deadline passes), counts the flow into r and
 * sets recovered_in to the seconds from fault_end to that moment. Returns
 * 1 when everything arrived. */
int fault_wait_recovered(struct fault_result *r, long long timeout_ms);

/* Records as checks that both daemons of s still run (none crashed or
 * exited during the fault). */
void fault_check_running(struct fault_result *r, struct harness_scenario *s);

/* Stops both daemons of s with SIGTERM and records as checks that each
 * exited with status 0 and left no sanitizer report in its log. Call it
 * before fault_report, so that the report says so too. */
void fault_stop_both(struct fault_result *r, struct harness_scenario *s);

/* Prints the case's line, appends its JSON object to RT_FAULTS_OUT (by
 * default faults.jsonl next to the test program), and fails the test when
 * anything was lost or duplicated or a check failed. Releases what r
 * holds either way. */
void fault_report(struct fault_result *r);

/* A JSON member by dotted path ("broker.state"), borrowed, or NULL. */
json_t *faults_json_path(json_t *doc, const char *path);

#endif
