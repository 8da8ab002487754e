/* SPDX-License-Identifier: MIT */
/*
 * cli — `samepage`, the command line. One file per subcommand, over the
 * daemon connection and common/:
 *
 *   main.c     the subcommands, --help, --version
 *   run.c      run: a program with libsamepage preloaded
 *   status.c   status, status --watch
 *   set.c      set (KNOB=VALUE, --save), and waiting for run=2
 *   unmerge.c  unmerge
 *   reload.c   reload: samepage.conf checked, then SIGHUP to the daemon
 *   top.c      top: the live view, sampling and sorting
 *   metrics.c  metrics: the counters for Prometheus
 *   frame.c    top: a frame, on a terminal or in a log
 *   term.c     top: the terminal (keys, signals, the alternate screen)
 *   knobs.c    KNOB=VALUE arguments and what a change did
 *   procs.c    the processes the daemon serves, with what /proc says of them
 *   uffd.c     whether userfaultfd is within reach, and the commands that put it there
 *   daemon.c   samepaged: where it is, starting it (`samepage daemon`)
 *   connect.c  the connection to the daemon, and what its failures mean
 *   args.c     options and numbers a person typed
 *   fmt.c      numbers and times for people
 *
 * A thin user of the protocol (common/proto.h, common/conn.h): it holds no
 * memory of its own in the daemon (an observer connection). Exit status 0
 * for success, 1 for a failure, 2 for a usage error.
 */
#ifndef SAMEPAGE_CLI_H
#define SAMEPAGE_CLI_H

#include <getopt.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <signal.h>
#include <sys/types.h>
#include <termios.h>

#include "proto.h"

#define EXIT_USAGE 2

/* The one context of the command: what it talks to, and its buffer. */
struct cli {
	const char *sub;       /* the subcommand ("status"), for messages */
	char sock[108];        /* the daemon's socket */
	int fd;                /* the daemon connection, or -1 */
	pid_t daemon_pid;      /* learnt from D_PROCS; 0 until then */
	int told;              /* the last failure was told already (cli_fail adds nothing) */
	unsigned char buf[SP_MAX_MSG]; /* the last reply */
};

/* ---- args.c ---- */
/* getopt_long over a subcommand's argv (argv[0] its name): the option, -1
 * at the end, or '?' once a bad option was told on stderr. The parsers
 * below return 0, or -EINVAL once they told the person why (the command
 * then exits with EXIT_USAGE). */
int cli_getopt(struct cli *c, int argc, char **argv, const char *shorts,
	       const struct option *longs);
/* "samepage SUB: what" and where to get help, on stderr: -EINVAL. */
int cli_usage_error(struct cli *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A process id typed for option opt: 0 or -EINVAL. */
int cli_parse_pid(struct cli *c, const char *opt, const char *s, pid_t *out);
/* Seconds (decimals allowed) typed for option opt, as milliseconds within
 * [min_ms, max_ms]: 0 or -EINVAL. */
int cli_parse_secs(struct cli *c, const char *opt, const char *s, uint64_t min_ms,
		   uint64_t max_ms, uint64_t *out_ms);
/* A count typed for option opt, in [min, max]: 0 or -EINVAL. */
int cli_parse_count(struct cli *c, const char *opt, const char *s, uint64_t min, uint64_t max,
		    uint64_t *out);
/* Print text (a subcommand's --help) on stdout: 0. */
int cli_help(const char *text);

/* ---- daemon.c ---- */
int cmd_daemon(struct cli *c, int argc, char **argv);

/* ---- connect.c ---- */
/* How long a person waits for the daemon to answer. */
#define CLI_WAIT_S 10
/* Connect as an observer (starting a daemon when none answers and start
 * is set): 0 with c->fd, or -errno, not yet told. */
int cli_connect(struct cli *c, int start);
void cli_disconnect(struct cli *c);
/* One request and its reply (in c->buf): 0 or -errno as sp_call(). */
int cli_call(struct cli *c, uint16_t type, const void *req, uint32_t len, uint16_t want,
	     struct sp_msg *m);
/* The counters: of every process (pid 0) or of one. 0 or -errno (-ESRCH:
 * pid is not connected). */
int cli_stat(struct cli *c, pid_t pid, struct sp_stat_r *r);
/* Tell what err means for this subcommand, on stderr: 1. */
int cli_fail(struct cli *c, const char *what, int err);

/* ---- knobs.c ---- */
/* KNOB=VALUE, checked: 0 with *knob and *value, or -EINVAL once told. */
int knob_arg(struct cli *c, char *arg, int *knob, uint64_t *value);
/* "pages_to_scan = 500 (was 16384)", or "... (unchanged)", on stdout. */
void knob_print_change(int knob, uint32_t before, uint32_t after);

/* ---- procs.c ---- */
struct proc {
	struct sp_proc_ent e;  /* what the daemon knows */
	char comm[17];         /* /proc/PID/comm ("?" once gone) */
	char state;            /* /proc/PID/stat's state: R, S, T (stopped), ... or '?' */
	uint64_t scan_ticks;   /* CPU of its scanner thread (samepage-scan), clock ticks */
};
struct procs {
	struct proc *v;
	size_t n, cap;
};
/* Every process the daemon serves, with /proc's view of it; sets
 * c->daemon_pid. 0 or -errno. */
int procs_fetch(struct cli *c, struct procs *p);
void procs_free(struct procs *p);

/* ---- pidstat.c ---- */
/* One stat file (path): its command name (comm may be NULL), state
 * letter and utime + stime in clock ticks. 0 or -errno. */
int proc_read_stat(const char *path, char *comm, size_t clen, char *state, uint64_t *ticks);
/* utime + stime of a whole process, in clock ticks; -1 when gone. */
int64_t proc_cpu_ticks(pid_t pid);
/* One process's state letter from /proc/PID/stat, '?' when gone. */
char proc_state(pid_t pid);
/* CPU of the process's scanner threads, in clock ticks (0 when gone). */
uint64_t proc_scanner_ticks(pid_t pid);

/* ---- spawn.c ---- */
/* samepaged's path: $SAMEPAGE_DAEMON, else beside this program; *from
 * says which, for messages. */
void cli_daemon_bin(char *out, size_t len, const char **from);
/* The binary must be there and runnable: 0, or -errno told with the path. */
int cli_check_daemon_bin(const char *bin, const char *from);
/* Start the user's daemon and wait until it listens: 0 or -errno, the
 * reason told on stderr (the path tried, when it is not there). */
int cli_start_daemon(void);

/* ---- uffd.c ---- */
/* Whether this user can have userfaultfd; if not, say what that means
 * for cmd and the exact commands that give it. 0 or -errno. */
int uffd_check(const char *cmd);

/* ---- top: frame.c draws, term.c owns the terminal ---- */
enum top_key {
	TOP_PID, TOP_COMMAND, TOP_MERGING, TOP_ZERO, TOP_SAVED, TOP_VOLATILE, TOP_VMAS, TOP_CPU,
	TOP_STATE, TOP_NKEYS
};
/* One process's row. */
struct top_row {
	const struct proc *p;
	int64_t saved;      /* ksm_process_profit, bytes */
	double cpu;         /* its scanner's CPU, % of one CPU; < 0 not known yet */
	const char *state;
};
/* Everything a frame shows. */
struct top_frame {
	const struct sp_stat_r *stat;  /* NULL: the daemon did not answer (error says why) */
	const char *error;             /* with stat: why the rows are missing */
	pid_t daemon_pid;
	double scan_rate;              /* pages/s; < 0 not known yet */
	double cpu_scanners, cpu_daemon; /* % of one CPU; < 0 not known yet */
	const struct top_row *rows;
	size_t nrows;
	const double *spark;           /* saved bytes, oldest first */
	size_t nspark;
	double spark_span_s;           /* the time they cover */
	enum top_key sort;
	int reverse;
	double delay_s;
	int cols, lines;               /* the screen; lines 0: no limit (batch) */
	int tty;                       /* escapes and the keys line */
	int utf8;                      /* block characters for the sparkline */
};
/* Column names, as --sort takes them. */
const char *frame_key_name(enum top_key k);
/* The frame, into out. */
void frame_draw(FILE *out, const struct top_frame *f);

enum { TERM_TIMEOUT = 0, TERM_QUIT = -1, TERM_REDRAW = -2 };
/* The terminal, while top owns it. */
struct term {
	int on;            /* raw keys and the alternate screen are ours */
	int sfd;           /* signalfd of the signals top handles, or -1 */
	int keys;          /* stdin is a terminal: keys are read */
	int alt;           /* on the alternate screen (else the last frame stays) */
	struct termios saved; /* the settings to give back */
	sigset_t oldmask;     /* the signal mask to give back */
};
/* Take the terminal: keys without echo or line editing, the alternate
 * screen (alt; else the screen cleared, the last frame left on it), no
 * cursor; SIGINT, SIGTERM, SIGHUP, SIGWINCH, SIGTSTP and SIGCONT through
 * a signalfd. 0 or -errno. */
int term_open(struct term *t, int alt);
/* Give it back as it was. */
void term_close(struct term *t);
/* The window's size; 24 × 80 when unknown. */
void term_size(int *lines, int *cols);
/* Wait up to ms for a key: the key (> 0), TERM_TIMEOUT, TERM_QUIT (a
 * signal to stop) or TERM_REDRAW (resized, or back from a stop). */
int term_wait(struct term *t, int ms);

/* ---- subcommands ---- */
int cmd_run(struct cli *c, int argc, char **argv);
int cmd_status(struct cli *c, int argc, char **argv);
int cmd_set(struct cli *c, int argc, char **argv);
int cmd_unmerge(struct cli *c, int argc, char **argv);
int cmd_reload(struct cli *c, int argc, char **argv);
int cmd_top(struct cli *c, int argc, char **argv);
/* ---- metrics.c ---- */
int cmd_metrics(struct cli *c, int argc, char **argv);

/* ---- fmt.c ---- */
/* Bytes in binary units, one decimal: "1.2G", "512.0K", "300B". */
void fmt_bytes(char *buf, size_t len, double bytes);
/* Local time of day, "12:34:56". */
void fmt_clock(char *buf, size_t len);

#endif
