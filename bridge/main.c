/*
 * remotetaskd - the remotetask daemon.
 *
 *   remotetaskd -c FILE        run in the foreground (systemd supervises it)
 *   remotetaskd -n -c FILE     check FILE, print "configuration OK", exit 0/1
 *
 * It logs to stderr, or to syslog with -s. Exit status: 0 after SIGTERM or
 * SIGINT, 1 when it cannot start (configuration, store, control socket,
 * core dumps that cannot be turned off) or its loop fails, 2 for a wrong
 * command line.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>

#include "config.h"
#include "daemon.h"
#include "log.h"

#define REMOTETASKD_DEFAULT_CONFIG "/etc/remotetask/remotetask.conf"

static void usage(FILE *to)
{
    fprintf(to, "usage: remotetaskd [-n] [-s] [-c FILE]\n"
                "  -c, --config FILE  configuration file (default " REMOTETASKD_DEFAULT_CONFIG ")\n"
                "  -n, --check        check the configuration, print \"configuration OK\" and exit\n"
                "  -s, --syslog       log to syslog instead of stderr\n"
                "  -h, --help         this text\n"
                "  -V, --version      print the version\n");
}

/* The process holds the broker's and BILLmanager's passwords in memory
 * from the moment it reads its configuration: a core dump, or another
 * process of the same user attaching with ptrace or reading /proc/PID/mem,
 * would hand them out. Not dumpable stops all three (and makes the files
 * of /proc/PID root's), unless fs.suid_dumpable is 2, which dumps such a
 * process for root; a core limit of 0, soft and hard, then still stops a
 * dump to a file (a core_pattern pipe is told the limit and decides for
 * itself). Done before anything is read, also for -n. Returns 0, or -1
 * with a reason in err. */
static int main_no_core_dumps(char *err, size_t errlen)
{
    const struct rlimit none = {0, 0};
    if (setrlimit(RLIMIT_CORE, &none) < 0) {
        snprintf(err, errlen, "cannot set the core file size limit to 0: %s", strerror(errno));
        return -1;
    }
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0) {
        snprintf(err, errlen, "cannot make the process not dumpable: %s", strerror(errno));
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'}, {"check", no_argument, NULL, 'n'},
        {"syslog", no_argument, NULL, 's'},       {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},      {NULL, 0, NULL, 0},
    };
    const char *path = REMOTETASKD_DEFAULT_CONFIG;
    int check = 0, use_syslog = 0, c;
    char err[CONFIG_ERR_MAX];

    if (main_no_core_dumps(err, sizeof(err)) < 0) {
        fprintf(stderr, "remotetaskd: %s\n", err);
        return 1;
    }
    while ((c = getopt_long(argc, argv, "c:nshV", longopts, NULL)) != -1) {
        switch (c) {
        case 'c': path = optarg; break;
        case 'n': check = 1; break;
        case 's': use_syslog = 1; break;
        case 'h': usage(stdout); return 0;
        case 'V': printf("remotetaskd %s\n", RT_VERSION); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "remotetaskd: unexpected argument \"%s\"\n", argv[optind]);
        usage(stderr);
        return 2;
    }

    struct config *cfg = config_load(path, err, sizeof(err));
    if (!cfg) {
        fprintf(stderr, "remotetaskd: %s\n", err);
        return 1;
    }
    if (check) {
        printf("configuration OK\n");
        config_free(cfg);
        return 0;
    }
    /* The instance in the name tells apart the lines of two daemons that
     * share a host and a syslog. */
    char ident[64];
    snprintf(ident, sizeof(ident), "remotetaskd-%s", cfg->instance);
    log_init(ident, cfg->log_level, use_syslog);

    char derr[1024];
    struct daemon *d = daemon_new(cfg, derr, sizeof(derr));
    if (!d) {
        log_error("cannot start: %s", derr);
        /* With syslog the reason would not reach the person who started
         * it by hand; on stderr it was printed above already. */
        if (use_syslog)
            fprintf(stderr, "remotetaskd: cannot start: %s\n", derr);
        return 1;
    }
    int status = daemon_run(d);
    daemon_free(d);
    return status;
}
