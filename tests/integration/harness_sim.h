/*
 * harness_sim.h - run the BILLmanager emulator (tests/sim/billsim.py) for
 * an integration test.
 *
 * Each emulator gets its own scratch directory (database, seed file, ready
 * file, logs), its own free ports and its own process, so a test may run
 * several at once (a source and a target BILLmanager). Stop and restart
 * keep the database and the ports, so a daemon configured with the URL
 * finds the same BILLmanager again with the same tasks.
 *
 * Every function here fails the running cmocka test (fail_msg) with a
 * clear line when the emulator cannot be started or answered: integration
 * tests never skip.
 */
#ifndef RT_HARNESS_SIM_H
#define RT_HARNESS_SIM_H

#include <jansson.h>

/* The API user of the default seed. The password is a throwaway test
 * credential; it holds every character that needs encoding (space, & = +
 * % :, UTF-8) so that each test exercises the encoding of authinfo. */
#define HARNESS_SIM_LOGIN    "remotetask"
#define HARNESS_SIM_PASSWORD "p@ss w:rd&=+%Ж"

/* What the default seed holds besides the user: departments 3 "Upstream"
 * and 12 "Reseller A tasks", staff 1 alice and 21 bob, accounts 5 acme and
 * 7 reseller-a. */
#define HARNESS_SIM_DEPT_A    3
#define HARNESS_SIM_DEPT_B    12
#define HARNESS_SIM_STAFF_A   1
#define HARNESS_SIM_STAFF_B   21
#define HARNESS_SIM_ACCOUNT_A 5
#define HARNESS_SIM_ACCOUNT_B 7

struct harness_sim;

/* Starts an emulator on free ports with a fresh database, seeded from
 * seed_json (the --seed document; NULL = the default seed above), with
 * extra_args (a NULL-terminated list of further command-line arguments,
 * e.g. {"--page-size", "100", NULL}; may be NULL). Returns when it wrote
 * its ready file. Free with harness_sim_free. */
struct harness_sim *harness_sim_start(const char *seed_json, const char *const *extra_args);

/* Stops the emulator (SIGTERM, then SIGKILL if it has not exited within
 * 10 s) and keeps its directory. Accepts a stopped emulator. */
void harness_sim_stop(struct harness_sim *sim);

/* Kills the emulator with SIGKILL, as a crash would. */
void harness_sim_kill(struct harness_sim *sim);

/* Starts a stopped (or killed) emulator again with the same database and
 * the same ports; stops it first when it is running. */
void harness_sim_restart(struct harness_sim *sim);

/* Stops the emulator and removes its directory (kept when RT_KEEP_TMP is
 * set, for a post-mortem). Accepts NULL. */
void harness_sim_free(struct harness_sim *sim);

/* The API URL, "http://127.0.0.1:PORT/billmgr"; owned by sim. */
const char *harness_sim_url(const struct harness_sim *sim);

/* The API and admin ports. */
int harness_sim_port(const struct harness_sim *sim);
int harness_sim_admin_port(const struct harness_sim *sim);

/* The scratch directory (sim.db, sim.log, sim.out live there); owned by
 * sim. */
const char *harness_sim_dir(const struct harness_sim *sim);

/* Calls the admin API: method ("GET", "POST") on path ("/faults",
 * "/calls?since=3"), with body (a JSON text, or NULL for none). Returns the
 * HTTP status, or -1 when no answer came (the message is printed). When
 * out is not NULL it receives the parsed JSON answer (new reference,
 * json_decref it), or NULL when the answer was not JSON. */
long harness_sim_admin(struct harness_sim *sim, const char *method, const char *path,
                       const char *body, json_t **out);

/* harness_sim_admin that fails the test unless the answer is a 2xx with a
 * JSON body; returns that body (new reference, json_decref it). */
json_t *harness_sim_admin_ok(struct harness_sim *sim, const char *method, const char *path,
                             const char *body);

/* GET /calls/count with query (e.g. "func=auth", "write=1", or "" for all
 * calls) and returns the count; fails the test on any error. */
long harness_sim_count(struct harness_sim *sim, const char *query);

#endif
