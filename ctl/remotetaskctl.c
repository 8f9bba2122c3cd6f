/*
 * remotetaskctl - the operator's tool for remotetaskd.
 *
 *   remotetaskctl [-c FILE] --command NAME [options]
 *
 * A table of commands; each lives in ctl_<name>.c. Unknown commands and
 * malformed options are refused with exit status 2 and a line saying what
 * was wrong.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"

#define CTL_DEFAULT_CONFIG "/etc/remotetask/remotetask.conf"

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
    {"broker-setup", ctl_broker_setup,
     "print the rabbitmqctl commands that give each AMQP user what its role needs"},
};

static void usage(FILE *to)
{
    fprintf(to, "usage: remotetaskctl [-c FILE] --command NAME [options]\n"
                "  -c, --config FILE   configuration file (default " CTL_DEFAULT_CONFIG ")\n"
                "  --command NAME      what to do:\n");
    for (size_t i = 0; i < sizeof(ctl_commands) / sizeof(ctl_commands[0]); i++)
        fprintf(to, "      %-14s %s\n", ctl_commands[i].name, ctl_commands[i].help);
    fprintf(to, "  --elid N            a task id (taskevent, resync)\n"
                "  --id X, --all       the dead letter(s) to act on (dlq)\n"
                "  --yes               really remove (dlq purge)\n"
                "  --json              machine-readable output (status)\n"
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

int main(int argc, char **argv)
{
    enum { OPT_COMMAND = 256, OPT_ELID, OPT_JSON, OPT_ID, OPT_ALL, OPT_YES, OPT_TIMEOUT };
    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'}, {"command", required_argument, NULL, OPT_COMMAND},
        {"elid", required_argument, NULL, OPT_ELID}, {"json", no_argument, NULL, OPT_JSON},
        {"id", required_argument, NULL, OPT_ID},    {"all", no_argument, NULL, OPT_ALL},
        {"yes", no_argument, NULL, OPT_YES},        {"timeout", required_argument, NULL, OPT_TIMEOUT},
        {"help", no_argument, NULL, 'h'},           {NULL, 0, NULL, 0},
    };
    struct ctl_args args = {.config = CTL_DEFAULT_CONFIG};
    const char *env_elid = getenv("PARAM_elid");
    int c;

    while ((c = getopt_long(argc, argv, "c:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'c': args.config = optarg; break;
        case OPT_COMMAND: args.command = optarg; break;
        case OPT_ELID:
            if ((args.elid = parse_id(optarg)) < 0) {
                fprintf(stderr, "remotetaskctl: --elid: \"%s\" is not a task id\n", optarg);
                return 2;
            }
            break;
        case OPT_JSON: args.json = true; break;
        case OPT_ID: args.id = optarg; break;
        case OPT_ALL: args.all = true; break;
        case OPT_YES: args.yes = true; break;
        case OPT_TIMEOUT: {
            long t = parse_id(optarg);
            if (t < 0 || t > 3600) {
                fprintf(stderr, "remotetaskctl: --timeout: \"%s\" is not 1..3600 seconds\n",
                        optarg);
                return 2;
            }
            args.timeout = (int)t;
            break;
        }
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    /* BILLmanager runs event handlers with the call's parameters in the
     * environment (PARAM_elid): the handler needs no arguments of its own. */
    if (!args.elid && env_elid && *env_elid) {
        if ((args.elid = parse_id(env_elid)) < 0) {
            fprintf(stderr, "remotetaskctl: PARAM_elid: \"%s\" is not a task id\n", env_elid);
            return 2;
        }
    }
    if (!args.command) {
        fprintf(stderr, "remotetaskctl: --command is required\n");
        usage(stderr);
        return 2;
    }
    if (optind < argc)
        args.sub = argv[optind++];
    if (optind < argc) {
        fprintf(stderr, "remotetaskctl: unexpected argument \"%s\"\n", argv[optind]);
        return 2;
    }
    for (size_t i = 0; i < sizeof(ctl_commands) / sizeof(ctl_commands[0]); i++)
        if (strcmp(ctl_commands[i].name, args.command) == 0)
            return ctl_commands[i].run(&args);
    fprintf(stderr, "remotetaskctl: unknown command \"%s\" (see --help)\n", args.command);
    return 2;
}
