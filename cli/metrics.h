/* SPDX-License-Identifier: MIT */
/* metrics — `samepage metrics`: see metrics.c. */
#ifndef SAMEPAGE_CLI_METRICS_H
#define SAMEPAGE_CLI_METRICS_H

/* argv: the arguments after "metrics". The exit status. */
int cmd_metrics(int argc, char **argv);

#endif
