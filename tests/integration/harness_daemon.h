/*
 * harness_daemon.h - run remotetaskd and remotetaskctl as real processes
 * for an integration test, and set up a whole forward-path scenario: two
 * emulated BILLmanagers, two AMQP users, a client and a server
 * configuration, and the two daemons.
 *
 * The binaries come from the build tree of the running test: a test program
 * lives in <build>/tests/, so remotetaskd is <build>/bridge/remotetaskd and
 * remotetaskctl <build>/ctl/remotetaskctl (found through /proc/self/exe; an
 * environment variable RT_REMOTETASKD / RT_REMOTETASKCTL overrides that).
 *
 * Every function here fails the running cmocka test (fail_msg) with a
 * clear line when something it needs is missing or does not happen within
 * its deadline; before failing on a daemon it prints the tail of that
 * daemon's log. Integration tests never skip.
 */
#ifndef RT_HARNESS_DAEMON_H
#define RT_HARNESS_DAEMON_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "harness_sim.h"
#include "rt.h"

/* How long a daemon may take to answer its first ping after it was started
 * (ASan start-up, the store's migration, the control socket), and to exit
 * after SIGTERM (the daemon itself waits up to 10 s for work in flight). */
#define HARNESS_DAEMON_START_MS 30000
#define HARNESS_DAEMON_STOP_MS  30000

/* ---- one remotetaskd process --------------------------------------- */

struct harness_daemon;

/* Describes a daemon run with the configuration file config (whose
 * control_socket is socket_path), logging its stderr to log_path (appended
 * to across restarts). name ("client", "server") labels its messages.
 * Nothing is started. Free with harness_daemon_free. */
struct harness_daemon *harness_daemon_new(const char *name, const char *config,
                                          const char *socket_path, const char *log_path);

/* Starts remotetaskd -c config and returns once it answers {"cmd":"ping"}
 * on its control socket; fails the test if it exits first or does not
 * answer within HARNESS_DAEMON_START_MS. Fails if it is already running. */
void harness_daemon_start(struct harness_daemon *d);

/* Starts remotetaskd -c config as a second daemon on a configuration whose
 * state_dir another one works (bridge/daemon.h): returns once its log,
 * from this start on, says it is "standing by"; a standby opens no control
 * socket, so harness_daemon_start's ping would never be answered. Fails the
 * test if it exits first, does not say so within HARNESS_DAEMON_START_MS
 * (it is then killed), or is already running. Once the active daemon ends
 * it takes over: stop, kill and the log functions work on it as on any. */
void harness_daemon_start_standby(struct harness_daemon *d);

/* Stops it with SIGTERM and waits up to HARNESS_DAEMON_STOP_MS; fails the
 * test unless it exits with status 0 (a sanitizer report, leaks included,
 * makes the status non-zero), if it had to be killed, or if it had already
 * ended by itself. Does nothing when it was not started, or was stopped or
 * killed by the harness since. */
void harness_daemon_stop(struct harness_daemon *d);

/* Kills it with SIGKILL (a crash) and reaps it. Does nothing when it is
 * not running. */
void harness_daemon_kill(struct harness_daemon *d);

/* 1 while the process is alive, 0 once it exited (it is then reaped, and
 * an unexpected exit is reported on stderr with the log's tail). */
int harness_daemon_running(struct harness_daemon *d);

/* Sends {"cmd":"wake","reconcile":...} to its control socket: RT_OK when
 * the daemon answered ok, RT_RETRY when it is not there. Never fails the
 * test: a daemon that is down picks the outbox up when it starts. */
rt_status harness_daemon_wake(struct harness_daemon *d, int reconcile);

/* Prints the last bytes (at most max, 0 = 8 KiB) of its log on stderr. */
void harness_daemon_print_log(const struct harness_daemon *d, size_t max);

/* Counts the lines of its log that contain needle. */
size_t harness_daemon_log_count(const struct harness_daemon *d, const char *needle);

/* Fails the test when its log holds a sanitizer report (AddressSanitizer,
 * LeakSanitizer, UndefinedBehaviorSanitizer "runtime error"). */
void harness_daemon_check_log(const struct harness_daemon *d);

/* The log file's path (owned by d) and the pid (0 when not running). */
const char *harness_daemon_log_path(const struct harness_daemon *d);
int harness_daemon_pid(const struct harness_daemon *d);

/* Stops the daemon (SIGTERM, then SIGKILL after the deadline; no
 * assertion: this is cleanup) and frees d. Accepts NULL. */
void harness_daemon_free(struct harness_daemon *d);

/* ---- remotetaskctl ---------------------------------------------------- */

/* Runs remotetaskctl -c config with args (NULL-terminated), without a
 * shell, with env_elid (may be NULL) as PARAM_elid in its environment.
 * Returns its exit status (128 + signal when it died of one); its stdout
 * and stderr, capped at 64 KiB, go to *output (malloc'ed, may be NULL) when
 * output is not NULL. Fails the test if it does not exit within 30 s. */
int harness_ctl(const char *config, const char *const *args, const char *env_elid, char **output);

/* harness_ctl with its arguments listed (NULL-terminated, at most 15) and
 * no PARAM_elid; *output is always set (malloc'ed, "" when it wrote
 * nothing). */
int harness_ctl_list(const char *config, char **output, ...);

/* As harness_ctl, with a deadline of timeout_ms, and without failing the
 * test when it passes: remotetaskctl is then killed and -1 returned, with
 * what it had printed in *output. For a test that measures whether a
 * command answers at all (a daemon whose loop is blocked). */
int harness_ctl_within(const char *config, const char *const *args, const char *env_elid,
                       char **output, long long timeout_ms);

/* ---- events ----------------------------------------------------------- */

/* Records the events "task N changed" for every N in first..last of client
 * in the store under state_dir in one transaction: what remotetaskctl
 * taskevent does, in bulk. Fails the test when the store refuses. */
void harness_record_events(const char *state_dir, const char *client, int64_t first, int64_t last);

/* The same for a list of task ids. */
void harness_record_event_list(const char *state_dir, const char *client, const int64_t *tasks,
                               size_t n);

/* How many outbox rows wait in the store under state_dir (0 when the
 * store holds none). Fails the test when the store cannot be read. */
uint64_t harness_outbox_backlog(const char *state_dir);

/* ---- waiting ------------------------------------------------------------ */

/* Polls the emulator's GET /tasks?department=dept every 150 ms until
 * done(tasks, arg) returns non-zero or timeout_ms passes. Returns the
 * "tasks" array of the last answer (a new reference, json_decref it) and
 * sets *met (may be NULL) to whether done() said yes. Never a fixed sleep:
 * it returns as soon as the condition holds. */
json_t *harness_wait_tasks(struct harness_sim *sim, long dept,
                           int (*done)(json_t *tasks, void *arg), void *arg, long long timeout_ms,
                           int *met);

/* GET /tasks?department=dept: the "tasks" array (new reference). */
json_t *harness_sim_tasks(struct harness_sim *sim, long dept);

/* ---- a forward-path scenario ---------------------------------------- */

struct harness_scenario_opts {
    int poll_interval;   /* client.poll_interval in seconds; 0 = 5 (the minimum) */
    int max_inflight;    /* billmanager.max_inflight of both daemons; 0 = 16 */
    int prefetch;        /* amqp.prefetch of both daemons; 0 = 64 */
    int billmgr_timeout; /* billmanager.timeout in seconds; 0 = 10 */
    int heartbeat;       /* amqp.heartbeat; 0 = 5 */
    /* An extra client of the server role, whose AMQP user is other_user
     * (created too) and whose department is HARNESS_SIM_DEPT_A of the
     * target: another client's department for authorization tests. */
    int other_client;
    /* The broker is the cluster of tests/integration/harness_cluster.h
     * (started by the caller) instead of scripts/test's node: the users
     * are the cluster's, amqp.uri lists every node, and the scenario's
     * queues are deleted through node 1 (heal the cluster before the
     * scenario is freed). queue_type stays "classic" unless the test
     * replaces it. */
    int cluster;
};

struct harness_scenario {
    char *dir;              /* the scratch directory of the scenario */
    char client_id[64];     /* client.id: "itf<N><pid>" */
    char other_id[64];      /* the extra server client's id, "" when none */
    char client_user[64];   /* the client daemon's AMQP login */
    char server_user[64];   /* the server daemon's AMQP login */
    char other_user[64];    /* the extra client's AMQP login, "" when none */
    char amqp_password[64]; /* every user's AMQP password (a throwaway) */
    char *client_conf, *server_conf;
    char *client_state, *server_state; /* state_dir of each side */
    struct harness_sim *src;           /* the source BILLmanager (client side) */
    struct harness_sim *dst;           /* the target BILLmanager (server side) */
    struct harness_daemon *client;
    struct harness_daemon *server;
    int keep;      /* keep the directory when freed (set for a failed test) */
    int cluster;   /* the broker is harness_cluster's (opts.cluster) */
    long src_dept; /* the mapped local department (3) */
    long dst_dept; /* the remote department it maps to (12) */
};

/* Builds a scenario: a scratch directory, both emulators (default seed),
 * the AMQP users, the password files (0600), the two configuration files
 * (log_level debug). The daemons are described but not started: call
 * harness_daemon_start on s->client and s->server. opts may be NULL (all
 * defaults). *slot (may be NULL) is set as soon as the scenario exists, so
 * that a teardown that calls harness_scenario_free(*slot) also frees one
 * whose construction failed half-way. */
struct harness_scenario *harness_scenario_new(const char *tag,
                                              const struct harness_scenario_opts *opts,
                                              struct harness_scenario **slot);

/* Stops both daemons, checking that each exits with status 0 and that no
 * sanitizer report is in their logs (fails the test otherwise), without
 * freeing anything. For the end of a successful test. */
void harness_scenario_stop(struct harness_scenario *s);

/* Prints the tails of both daemon logs (for a failure). */
void harness_scenario_print_logs(const struct harness_scenario *s);

/* Stops and frees everything: daemons, emulators, AMQP users, the
 * scenario's queues, and the directory (kept, with the emulators' and the
 * daemons' logs, when s->keep or RT_KEEP_TMP is set: a test that failed
 * sets keep for the post-mortem). Accepts NULL. */
void harness_scenario_free(struct harness_scenario *s);

/* ---- editing a scenario's configuration (issues 4 and 5) ------------- */

/* Replaces the first occurrence of old with repl in the configuration file
 * path (the scenario's client_conf or server_conf), keeping its mode: how
 * a test sets what harness_scenario_opts does not carry (sync_interval,
 * performers, server_user). Fails the test when old is not in the file.
 * A running daemon sees the change only after a restart (or SIGHUP). */
void harness_config_replace(const char *path, const char *old, const char *repl);

/* Appends text (whole settings, e.g. a "metrics: { ... };" group) to the
 * configuration file path. Fails the test when the file cannot be
 * written. */
void harness_config_append(const char *path, const char *text);

/* A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0 and
 * closed), for a listener a daemon opens (metrics.listen). */
int harness_free_port(void);

/* ---- looking at a running daemon (the fault suite, issue 9) --------- */

/* The configuration file the daemon runs with (owned by d). */
const char *harness_daemon_config(const struct harness_daemon *d);

/* As harness_daemon_stop, without failing the test: returns 0 when the
 * daemon exited with status 0 within HARNESS_DAEMON_STOP_MS of SIGTERM (or
 * was not running because the harness had stopped it), -1 with the reason
 * in why otherwise (it ended by itself before, it ended with another
 * status or a signal, it had to be killed). For a caller that records the
 * outcome as one of several checks. */
int harness_daemon_try_stop(struct harness_daemon *d, char *why, size_t len);

/* One reading of a process from /proc. */
struct harness_proc {
    long long at_ms; /* harness_now_ms() when it was read */
    long rss_kb;     /* VmRSS: resident now */
    long hwm_kb;     /* VmHWM: the peak resident set so far */
    long fds;        /* open file descriptors (entries of /proc/PID/fd) */
    double cpu_s;    /* utime + stime of /proc/PID/stat, in seconds */
};

/* Reads the running daemon's VmRSS and VmHWM (/proc/PID/status), its CPU
 * time (/proc/PID/stat) and its open descriptors (/proc/PID/fd) into *p.
 * Returns 0, or -1 with *p zeroed when the daemon is not running or /proc
 * could not be read. Never fails the test: a caller that needs the figure
 * asserts on the result. */
int harness_daemon_proc(const struct harness_daemon *d, struct harness_proc *p);

/* The CPU the process used between readings a and b (b taken later), in
 * percent of one core over the wall time between them; -1 when b is not
 * later than a. */
double harness_proc_cpu_percent(const struct harness_proc *a, const struct harness_proc *b);

/* What `remotetaskctl --command status --json` said about a daemon. */
struct harness_status {
    int exit_code;     /* remotetaskctl's exit status (1: the daemon is not running) */
    long long took_ms; /* how long remotetaskctl ran, start to exit */
    json_t *doc;       /* the parsed document, NULL when it printed none */
    char *output;      /* everything it printed, NUL-terminated (malloc'ed) */
};

/* Runs remotetaskctl -c <the daemon's configuration> --command status
 * --json, times it and parses the JSON document it prints into *out
 * (release with harness_status_release). Fails the test only when
 * remotetaskctl cannot run or does not exit within 30 s (harness_ctl);
 * a missing document or a non-zero exit is the caller's to judge. */
void harness_daemon_status(const struct harness_daemon *d, struct harness_status *out);

/* As harness_daemon_status, with a deadline: when remotetaskctl has not
 * exited within timeout_ms it is killed and exit_code is -1 (doc NULL,
 * output what it had printed); the test does not fail. */
void harness_daemon_status_within(const struct harness_daemon *d, struct harness_status *out,
                                  long long timeout_ms);

/* Frees what harness_daemon_status filled and zeroes *st. Accepts a zeroed
 * struct. */
void harness_status_release(struct harness_status *st);

/* The current size of the daemon's log: a mark, so that a test can later
 * read or count only what the daemon logged after it. The log is appended
 * to across restarts, so a mark stays valid. */
size_t harness_daemon_log_mark(const struct harness_daemon *d);

/* What the daemon logged since mark: at most max bytes (0 = 1 MiB) from
 * the mark on, cut at the last whole line, NUL-terminated (malloc'ed).
 * Never NULL (an empty string when nothing was logged). */
char *harness_daemon_log_since(const struct harness_daemon *d, size_t mark, size_t max);

/* Counts the lines logged since mark that contain needle (the whole rest
 * of the log is read, in pieces). */
size_t harness_daemon_log_count_since(const struct harness_daemon *d, size_t mark,
                                      const char *needle);

#endif
