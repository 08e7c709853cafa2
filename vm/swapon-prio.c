/*
 * swapon-prio: enable swap on DEVICE with a priority and discard, for the
 * zramd swap test guest, whose busybox swapon has no -p.
 *
 * Striping needs equal priorities: the kernel uses swap devices of the same
 * priority round-robin, while `swapon` without -p gives each new device a
 * lower (negative) priority than the last, so they would fill one by one.
 *
 * Usage: swapon-prio PRIORITY DEVICE [DISCARD]
 * PRIORITY 0..32767. DISCARD is util-linux's `swapon --discard=POLICY`:
 *   both   (default, `swapon --discard`) the whole device once at swapon,
 *          then each swap cluster as it is freed
 *   once   the whole device at swapon only (SWAP_FLAG_DISCARD_ONCE)
 *   pages  freed clusters only, no discard at swapon (SWAP_FLAG_DISCARD_PAGES)
 *   none   no discard at all
 * Built with `gcc -O2 -static` so the guest needs no libraries.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/swap.h>

#ifndef SWAP_FLAG_DISCARD
#define SWAP_FLAG_DISCARD 0x10000
#endif
#ifndef SWAP_FLAG_DISCARD_ONCE
#define SWAP_FLAG_DISCARD_ONCE 0x20000
#endif
#ifndef SWAP_FLAG_DISCARD_PAGES
#define SWAP_FLAG_DISCARD_PAGES 0x40000
#endif

/* The swapon(2) flags of a discard policy, or -1 for an unknown name. */
static int discard_flags(const char *policy)
{
    if (strcmp(policy, "both") == 0)
        return SWAP_FLAG_DISCARD;
    if (strcmp(policy, "once") == 0)
        return SWAP_FLAG_DISCARD | SWAP_FLAG_DISCARD_ONCE;
    if (strcmp(policy, "pages") == 0)
        return SWAP_FLAG_DISCARD | SWAP_FLAG_DISCARD_PAGES;
    if (strcmp(policy, "none") == 0)
        return 0;
    return -1;
}

int main(int argc, char **argv)
{
    char *end;
    long prio;
    int discard;

    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: swapon-prio PRIORITY DEVICE [both|once|pages|none]\n");
        return 2;
    }
    discard = discard_flags(argc == 4 ? argv[3] : "both");
    if (discard < 0) {
        fprintf(stderr, "swapon-prio: discard policy must be both, once, pages or none, not %s\n", argv[3]);
        return 2;
    }
    prio = strtol(argv[1], &end, 10);
    if (*argv[1] == '\0' || *end != '\0' || prio < 0 || prio > SWAP_FLAG_PRIO_MASK) {
        fprintf(stderr, "swapon-prio: priority must be 0..%d, not %s\n", SWAP_FLAG_PRIO_MASK, argv[1]);
        return 2;
    }
    if (swapon(argv[2], SWAP_FLAG_PREFER | ((int)prio << SWAP_FLAG_PRIO_SHIFT) | discard) != 0) {
        fprintf(stderr, "swapon-prio: %s: %s\n", argv[2], strerror(errno));
        return 1;
    }
    return 0;
}
