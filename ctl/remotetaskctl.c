/*
 * remotetaskctl - the operator's tool for remotetaskd.
 *
 *   remotetaskctl [-c FILE] --command NAME [options]
 *
 * A table of commands; each lives in ctl_<name>.c. Unknown commands and
 * malformed options are refused with exit status 2 and a line saying what
 * was wrong.
 *
 * Without -c the configuration is the one *.conf file of the configuration
 * directory (RT_CONF_DIR, or $REMOTETASK_CONF_DIR): BILLmanager's
 * documentation tells the provider to run
 * "/usr/local/mgr5/sbin/remotetaskctl --command checkevent" as it is, and
 * that must work on a host with one instance. With none or several files
 * it exits 2 naming what it found, rather than guess.
 */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include "ctl.h"

/* The configuration directory the package installs; dist/CMakeLists.txt
 * passes its RT_CONF_DIR so that both name the same place. */
#ifndef RT_CONF_DIR
#define RT_CONF_DIR "/etc/remotetask"
#endif
/* Overrides RT_CONF_DIR (for tests, and for a host laid out otherwise). */
#define CTL_CONF_DIR_ENV "REMOTETASK_CONF_DIR"
/* The *.conf names listed when there are several (the count says all). */
#define CTL_CONF_SHOWN_MAX 10

struct ctl_command {
    const char *name;
    int (*run)(const struct ctl_args *args);
    const char *help;
};

static const struct ctl_command ctl_commands[] = {
    {"check", ctl_check,
     "verify the configuration, the BILLmanager login and departments, the broker login"},
    {"taskevent", ctl_taskevent,
     "record that local task --elid N changed (the BILLmanager event handler runs this)"},
    {"checkevent", ctl_checkevent,
     "fetch the server side's state of this client's tasks now [--timeout S]"},
    {"status", ctl_status, "queues, backlog, links, last times, errors [--json]"},
    {"dlq", ctl_dlq, "dead letters: list [--json], replay --id X|--all, purge [--id X] --yes"},
    {"resync", ctl_resync, "publish the current state again: --elid N (a task) or --all"},
    {"trace", ctl_trace,
     "a task's journey: --elid N; server side --client C --elid N or --target M [--json]"},
    {"broker-setup", ctl_broker_setup,
     "print the rabbitmqctl commands that give each AMQP user what its role needs"},
};

static void usage(FILE *to)
{
    fprintf(to, "usage: remotetaskctl [-c FILE] --command NAME [options]\n"
                "  -c, --config FILE   configuration file (default: the only *.conf in\n"
                "                      " RT_CONF_DIR ", or in $" CTL_CONF_DIR_ENV ")\n"
                "  --command NAME      what to do:\n");
    for (size_t i = 0; i < sizeof(ctl_commands) / sizeof(ctl_commands[0]); i++)
        fprintf(to, "      %-14s %s\n", ctl_commands[i].name, ctl_commands[i].help);
    fprintf(to, "  --elid N            a task id (taskevent, resync, trace)\n"
                "  --client C          whose task --elid is (trace, server side)\n"
                "  --target M          a target task id (trace, server side)\n"
                "  --id X, --all       the dead letter(s) to act on (dlq)\n"
                "  --yes               really remove (dlq purge)\n"
                "  --json              machine-readable output (status, trace)\n"
                "  -h, --help          this text\n");
}

/* A whole positive decimal number that fits a long, or -1. */
static long parse_id(const char *s)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v <= 0)
        return -1;
    return v;
}

/* remotetaskctl reads the password files (check, dlq) and holds them in
 * memory: as remotetaskd, it never leaves a core dump and cannot be
 * attached to by another process of its user. Returns 0 or -1 (errno). */
static int no_core_dumps(void)
{
    const struct rlimit none = {0, 0};
    if (setrlimit(RLIMIT_CORE, &none) < 0)
        return -1;
    return prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Is name a configuration file's name: "X.conf" with X not empty and not
 * hidden (an editor's ".x.conf.swp" or a "x.conf~" is not one)? */
static int is_conf_name(const char *name)
{
    size_t n = strlen(name);
    return name[0] != '.' && n > 5 && strcmp(name + n - 5, ".conf") == 0;
}

/* Finds the one configuration file of the configuration directory. Returns
 * a malloc'ed path, or NULL after printing why (nothing there, several
 * files, an unreadable directory) and that -c picks one. */
static char *find_config(void)
{
    const char *env = getenv(CTL_CONF_DIR_ENV);
    const char *dir = env && *env ? env : RT_CONF_DIR;
    char *names[CTL_CONF_SHOWN_MAX];
    size_t found = 0;
    char *path = NULL;

    DIR *d = opendir(dir);
    if (!d) {
        fprintf(stderr,
                "remotetaskctl: no -c FILE given, and the configuration directory \"%s\" cannot "
                "be read: %s; pass -c FILE\n",
                dir, strerror(errno));
        return NULL;
    }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!is_conf_name(e->d_name))
            continue;
        /* A directory or a socket named x.conf is not a file to read;
         * a symbolic link to a file is (stat follows it). */
        char full[PATH_MAX];
        struct stat st;
        if (snprintf(full, sizeof(full), "%s/%s", dir, e->d_name) >= (int)sizeof(full) ||
            stat(full, &st) < 0 || !S_ISREG(st.st_mode))
            continue;
        if (found < CTL_CONF_SHOWN_MAX && !(names[found] = strdup(e->d_name))) {
            fprintf(stderr, "remotetaskctl: out of memory\n");
            goto free_names;
        }
        found++;
    }
    closedir(d);
    d = NULL;
    size_t kept = found < CTL_CONF_SHOWN_MAX ? found : CTL_CONF_SHOWN_MAX;
    qsort(names, kept, sizeof(names[0]), cmp_names);
    if (found == 1) {
        size_t n = strlen(dir) + 1 + strlen(names[0]) + 1;
        path = malloc(n);
        if (path)
            snprintf(path, n, "%s/%s", dir, names[0]);
        else
            fprintf(stderr, "remotetaskctl: out of memory\n");
    } else if (found == 0) {
        fprintf(stderr,
                "remotetaskctl: no -c FILE given, and there is no configuration file (*.conf) in "
                "\"%s\": pass -c FILE\n",
                dir);
    } else {
        fprintf(stderr,
                "remotetaskctl: no -c FILE given, and \"%s\" holds %zu configuration files:", dir,
                found);
        for (size_t i = 0; i < kept; i++)
            fprintf(stderr, "%s %s", i ? "," : "", names[i]);
        if (found > kept)
            fprintf(stderr, " and %zu more", found - kept);
        fprintf(stderr, "; pass -c FILE to say which instance\n");
    }

free_names:
    if (d)
        closedir(d);
    for (size_t i = 0; i < found && i < CTL_CONF_SHOWN_MAX; i++)
        free(names[i]);
    return path;
}

enum {
    OPT_COMMAND = 256,
    OPT_ELID,
    OPT_JSON,
    OPT_ID,
    OPT_ALL,
    OPT_YES,
    OPT_TIMEOUT,
    OPT_CLIENT,
    OPT_TARGET
};

/* A task id option (--elid, --target): 0, or 2 after saying what was wrong. */
static int ctl_opt_id(const char *name, const char *value, long *out)
{
    if ((*out = parse_id(value)) < 0) {
        fprintf(stderr, "remotetaskctl: %s: \"%s\" is not a task id\n", name, value);
        return 2;
    }
    return 0;
}

/* One option into args: 0, -1 for --help (printed), or the exit status
 * of a bad option (2, after saying what was wrong). */
static int ctl_opt(int c, struct ctl_args *args)
{
    switch (c) {
    case 'c': args->config = optarg; return 0;
    case OPT_COMMAND: args->command = optarg; return 0;
    case OPT_ELID: return ctl_opt_id("--elid", optarg, &args->elid);
    case OPT_CLIENT: args->client = optarg; return 0;
    case OPT_TARGET: return ctl_opt_id("--target", optarg, &args->target);
    case OPT_JSON: args->json = true; return 0;
    case OPT_ID: args->id = optarg; return 0;
    case OPT_ALL: args->all = true; return 0;
    case OPT_YES: args->yes = true; return 0;
    case OPT_TIMEOUT: {
        long t = parse_id(optarg);
        if (t < 0 || t > 3600) {
            fprintf(stderr, "remotetaskctl: --timeout: \"%s\" is not 1..3600 seconds\n", optarg);
            return 2;
        }
        args->timeout = (int)t;
        return 0;
    }
    case 'h': usage(stdout); return -1;
    default: usage(stderr); return 2;
    }
}

/* The command line into args: 0, -1 for --help, or 2 (said why). */
static int ctl_parse(int argc, char **argv, struct ctl_args *args)
{
    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'},
        {"command", required_argument, NULL, OPT_COMMAND},
        {"elid", required_argument, NULL, OPT_ELID},
        {"json", no_argument, NULL, OPT_JSON},
        {"id", required_argument, NULL, OPT_ID},
        {"all", no_argument, NULL, OPT_ALL},
        {"yes", no_argument, NULL, OPT_YES},
        {"timeout", required_argument, NULL, OPT_TIMEOUT},
        {"client", required_argument, NULL, OPT_CLIENT},
        {"target", required_argument, NULL, OPT_TARGET},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *env_elid = getenv("PARAM_elid");
    int c, rc;

    while ((c = getopt_long(argc, argv, "c:h", longopts, NULL)) != -1)
        if ((rc = ctl_opt(c, args)) != 0)
            return rc;
    /* BILLmanager runs event handlers with the call's parameters in the
     * environment (PARAM_elid): the handler needs no arguments of its own. */
    if (!args->elid && env_elid && *env_elid && ctl_opt_id("PARAM_elid", env_elid, &args->elid))
        return 2;
    if (!args->command) {
        fprintf(stderr, "remotetaskctl: --command is required\n");
        usage(stderr);
        return 2;
    }
    if (optind < argc)
        args->sub = argv[optind++];
    if (optind < argc) {
        fprintf(stderr, "remotetaskctl: unexpected argument \"%s\"\n", argv[optind]);
        return 2;
    }
    return 0;
}

int main(int argc, char **argv)
{
    struct ctl_args args = {0};
    const struct ctl_command *cmd = NULL;
    char *found_config = NULL;
    int rc;

    if (no_core_dumps() < 0) {
        fprintf(stderr, "remotetaskctl: cannot turn core dumps off: %s\n", strerror(errno));
        return 1;
    }
    if ((rc = ctl_parse(argc, argv, &args)) != 0)
        return rc < 0 ? 0 : rc;
    for (size_t i = 0; i < sizeof(ctl_commands) / sizeof(ctl_commands[0]); i++)
        if (strcmp(ctl_commands[i].name, args.command) == 0)
            cmd = &ctl_commands[i];
    if (!cmd) {
        fprintf(stderr, "remotetaskctl: unknown command \"%s\" (see --help)\n", args.command);
        return 2;
    }
    if (!args.config) {
        if (!(found_config = find_config()))
            return 2;
        args.config = found_config;
    }
    rc = cmd->run(&args);
    free(found_config);
    return rc;
}
