/*
 * swapon-prio: enable swap on DEVICE with a priority and discard, for the
 * zramd swap test guest, whose busybox swapon has no -p.
 *
 * Striping needs equal priorities: the kernel uses swap devices of the same
 * priority round-robin, while `swapon` without -p gives each new device a
 * lower (negative) priority than the last, so they would fill one by one.
 *
 * Usage: swapon-prio PRIORITY DEVICE   (PRIORITY 0..32767; always discards,
 * like `swapon --discard`: the whole device once, then freed pages)
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

int main(int argc, char **argv)
{
    char *end;
    long prio;

    if (argc != 3) {
        fprintf(stderr, "usage: swapon-prio PRIORITY DEVICE\n");
        return 2;
    }
    prio = strtol(argv[1], &end, 10);
    if (*argv[1] == '\0' || *end != '\0' || prio < 0 || prio > SWAP_FLAG_PRIO_MASK) {
        fprintf(stderr, "swapon-prio: priority must be 0..%d, not %s\n", SWAP_FLAG_PRIO_MASK, argv[1]);
        return 2;
    }
    if (swapon(argv[2], SWAP_FLAG_PREFER | ((int)prio << SWAP_FLAG_PRIO_SHIFT) | SWAP_FLAG_DISCARD) != 0) {
        fprintf(stderr, "swapon-prio: %s: %s\n", argv[2], strerror(errno));
        return 1;
    }
    return 0;
}
