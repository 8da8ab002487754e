/* SPDX-License-Identifier: MIT */
/* A statically linked program (Makefile: -static), as busybox or a Go
 * binary: nothing can preload libsamepage into it. */
#include <stdio.h>

int main(void)
{
	puts("hello from a static program");
	return 0;
}
