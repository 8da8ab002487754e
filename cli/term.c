/* SPDX-License-Identifier: MIT */
/*
 * term — the terminal while `samepage top` owns it: keys read one at a
 * time without echo, the alternate screen (the shell's screen comes back
 * as it was), no cursor. The signals that must give the terminal back
 * first (SIGINT, SIGTERM, SIGHUP, Ctrl-Z's SIGTSTP) and the ones that
 * redraw (SIGWINCH, SIGCONT) come through a signalfd, beside the keys,
 * so no handler and no global flag is needed.
 */
#define _GNU_SOURCE
#include "cli.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <unistd.h>

#define ALT_ENTER "\033[?1049h" /* the alternate screen */
#define ALT_LEAVE "\033[?1049l"
#define CLEAR "\033[H\033[2J"
#define HIDE "\033[?25l"       /* the cursor */
#define SHOW "\033[?25h"

static void put(const char *s)
{
	/* The terminal may be gone (SIGHUP): nothing to do about it. */
	if (write(STDOUT_FILENO, s, strlen(s)) < 0)
		return;
}

static int enter(struct term *t)
{
	struct termios raw = t->saved;

	if (t->keys) {
		/* ISIG stays: Ctrl-C and Ctrl-Z arrive as signals, through sfd. */
		raw.c_lflag &= (tcflag_t) ~(ICANON | ECHO);
		raw.c_cc[VMIN] = 0;
		raw.c_cc[VTIME] = 0;
		if (tcsetattr(STDIN_FILENO, TCSAFLUSH, &raw) < 0)
			return -errno;
	}
	put(t->alt ? ALT_ENTER HIDE : CLEAR HIDE);
	t->on = 1;
	return 0;
}

static void leave(struct term *t)
{
	if (!t->on)
		return;
	put(t->alt ? SHOW ALT_LEAVE : SHOW);
	if (t->keys)
		tcsetattr(STDIN_FILENO, TCSAFLUSH, &t->saved);
	t->on = 0;
}

int term_open(struct term *t, int alt)
{
	sigset_t set;

	memset(t, 0, sizeof(*t));
	t->sfd = -1;
	t->alt = alt;
	t->keys = isatty(STDIN_FILENO) && tcgetattr(STDIN_FILENO, &t->saved) == 0;
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGHUP);
	sigaddset(&set, SIGWINCH);
	sigaddset(&set, SIGTSTP);
	sigaddset(&set, SIGCONT);
	if (sigprocmask(SIG_BLOCK, &set, &t->oldmask) < 0)
		return -errno;
	t->sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
	if (t->sfd < 0) {
		int err = -errno;
		sigprocmask(SIG_SETMASK, &t->oldmask, NULL);
		return err;
	}
	int err = enter(t);
	if (err)
		term_close(t);
	return err;
}

void term_close(struct term *t)
{
	leave(t);
	if (t->sfd >= 0) {
		close(t->sfd);
		sigprocmask(SIG_SETMASK, &t->oldmask, NULL);
	}
	t->sfd = -1;
}

void term_size(int *lines, int *cols)
{
	struct winsize ws;

	if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_row && ws.ws_col) {
		*lines = ws.ws_row;
		*cols = ws.ws_col;
	} else {
		*lines = 24;
		*cols = 80;
	}
}

/* Ctrl-Z: the shell's screen back, stopped as any program is; the
 * terminal ours again once continued. */
static void suspend(struct term *t)
{
	sigset_t stop;

	leave(t);
	sigemptyset(&stop);
	sigaddset(&stop, SIGTSTP);
	sigprocmask(SIG_UNBLOCK, &stop, NULL);
	signal(SIGTSTP, SIG_DFL);
	raise(SIGTSTP);
	/* Continued. */
	sigprocmask(SIG_BLOCK, &stop, NULL);
	enter(t);
}

static int on_signal(struct term *t)
{
	struct signalfd_siginfo si;
	int ret = TERM_TIMEOUT;

	while (read(t->sfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
		switch (si.ssi_signo) {
		case SIGINT: case SIGTERM: case SIGHUP: return TERM_QUIT;
		case SIGTSTP: suspend(t); ret = TERM_REDRAW; break;
		default: ret = TERM_REDRAW; break; /* SIGWINCH, SIGCONT */
		}
	}
	return ret;
}

int term_wait(struct term *t, int ms)
{
	struct pollfd p[2] = { { .fd = t->sfd, .events = POLLIN },
			       { .fd = t->keys ? STDIN_FILENO : -1, .events = POLLIN } };
	unsigned char key;
	int n = poll(p, 2, ms);

	if (n < 0)
		return errno == EINTR ? TERM_TIMEOUT : TERM_QUIT;
	if (n == 0)
		return TERM_TIMEOUT;
	if (p[0].revents) {
		int r = on_signal(t);
		if (r != TERM_TIMEOUT)
			return r;
	}
	if (p[1].revents & (POLLHUP | POLLERR))
		return TERM_QUIT;
	if (p[1].revents && read(STDIN_FILENO, &key, 1) == 1)
		return key;
	return TERM_TIMEOUT;
}
