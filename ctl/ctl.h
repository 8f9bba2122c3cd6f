/*
 * ctl.h - what the commands of remotetaskctl share.
 *
 * remotetaskctl is a table of commands (remotetaskctl.c); each command is a
 * function in its own file, named ctl_<command>.c, that takes the parsed
 * arguments and returns the process's exit status:
 *   0  done (for check: every check passed)
 *   1  the command ran and failed (a check failed, the daemon said no)
 *   2  the command line was wrong
 */
#ifndef RT_CTL_H
#define RT_CTL_H

#include <stdbool.h>

struct ctl_args {
    const char *config; /* -c FILE */
    const char *command;
    const char *sub;    /* dlq list|replay|purge */
    long elid;          /* --elid N, 0 = not given */
    const char *id;     /* --id X */
    bool all;           /* --all */
    bool yes;           /* --yes */
    bool json;          /* --json */
    int timeout;        /* --timeout S, 0 = the command's default */
};

/* remotetaskctl --command check: configuration, BILLmanager login and
 * departments, broker login; one line per check on stdout. */
int ctl_check(const struct ctl_args *args);

/* remotetaskctl --command taskevent [--elid N]: records in the store that
 * local task N changed (durable before anything else, also while the
 * daemon is down), then tells the daemon, best effort. Without an elid (a
 * task being created) it asks the daemon for a reconciliation instead.
 * What the BILLmanager event handler runs; exit 0 once recorded. */
int ctl_taskevent(const struct ctl_args *args);

#endif
