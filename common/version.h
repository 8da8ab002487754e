/* SPDX-License-Identifier: MIT */
/*
 * version — what `--version` prints. SAMEPAGE_RELEASE comes from the build
 * (the release being made); a build that does not say is a development one.
 */
#ifndef SAMEPAGE_VERSION_H
#define SAMEPAGE_VERSION_H

#ifndef SAMEPAGE_RELEASE
#define SAMEPAGE_RELEASE "dev"
#endif

#endif
