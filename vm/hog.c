/*
 * hog: a verified memory-pressure program for the zramd swap test guest.
 *
 * Maps MIB MiB of anonymous memory and writes every 4 KiB page with a pattern
 * that depends only on (seed, pass, page index), so it can be recomputed on
 * the way back.  Per page:
 *   - one page in 16 is same-filled (one 8-byte word repeated): the kind of
 *     page zram and zramd store without a payload (`same_pages`);
 *   - every other page is 1/4 pseudo-random (xorshift64 from the page index,
 *     incompressible) and 3/4 a short repeating pattern (compresses well), so
 *     a page compresses to roughly a third: "partly compressible";
 *   - the first 8 bytes of a non-same page hold its index and pass, so a page
 *     that comes back at the wrong place is told apart from a corrupted one.
 *
 * With PASSES > 1 each later pass walks the memory again, verifies every
 * page against the previous pass and rewrites it with the next pass's
 * pattern: the page is swapped in, dirtied and must be swapped out again,
 * which pushes more data through swap with the same footprint.  A final pass
 * verifies every byte.
 *
 * Output lines (machine-readable, one per event):
 *   HOG-PASS pass=P action=fill|rewrite|verify pages=N bad_pages=B seconds=S
 *   HOG-STAT pass=P file=F <contents of F on one line>  (with -s F)
 *   HOG-RESULT pages=N bad_pages=B bad_bytes=X seconds=S ok=0|1
 * Exit status: 0 when every byte matched, 1 on any mismatch, 2 on errors.
 *
 * Usage: hog [-p PASSES] [-S SEED] [-s STATFILE]... [-x PAGE] MIB
 * -x PAGE flips one byte of page PAGE after the fill pass: a self-test that
 * the verification (and everything that reports it) can fail.
 * Built with `gcc -O2 -static` so the guest needs no libraries.
 */
#define _GNU_SOURCE
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE_BYTES 4096
#define WORDS (PAGE_BYTES / 8)
#define RANDOM_WORDS (WORDS / 4)  /* incompressible head of a page */
#define SAME_EVERY 16             /* one page in 16 is same-filled */
#define MAX_STATFILES 8
#define MAX_REPORTED 8            /* mismatching pages printed in detail */

static const char *statfiles[MAX_STATFILES];
static int n_statfiles;

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint64_t mix(uint64_t x)  /* splitmix64 finalizer: seeds per page */
{
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

/* Writes the expected contents of page `index` in pass `pass` to `out`. */
static void make_page(uint64_t *out, uint64_t seed, uint64_t pass, uint64_t index)
{
	uint64_t key = mix(seed ^ mix(pass ^ mix(index)));
	if (index % SAME_EVERY == SAME_EVERY - 1) {
		for (int w = 0; w < WORDS; w++)
			out[w] = key;
		return;
	}
	out[0] = index << 8 | (pass & 0xff);
	uint64_t x = key | 1;
	for (int w = 1; w < RANDOM_WORDS; w++) {  /* xorshift64 */
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		out[w] = x;
	}
	/* A 64-byte motif repeated: compressible, but not same-filled. */
	for (int w = RANDOM_WORDS; w < WORDS; w++)
		out[w] = key + (w & 7);
}

static void print_stats(int pass)
{
	for (int i = 0; i < n_statfiles; i++) {
		char buf[4096];
		FILE *f = fopen(statfiles[i], "r");
		size_t n = 0;
		if (f) {
			n = fread(buf, 1, sizeof buf - 1, f);
			fclose(f);
		}
		buf[n] = 0;
		for (size_t j = 0; j < n; j++)
			if (buf[j] == '\n')
				buf[j] = ' ';
		printf("HOG-STAT pass=%d file=%s %s\n", pass, statfiles[i], f ? buf : "unreadable");
	}
	fflush(stdout);
}

/* Compares one page; returns the number of differing bytes. */
static long check_page(const uint64_t *got, const uint64_t *want, uint64_t index,
		       int pass, long *reported)
{
	if (memcmp(got, want, PAGE_BYTES) == 0)
		return 0;
	const unsigned char *g = (const unsigned char *)got, *w = (const unsigned char *)want;
	long bad = 0, first = -1;
	for (int i = 0; i < PAGE_BYTES; i++)
		if (g[i] != w[i]) {
			if (first < 0)
				first = i;
			bad++;
		}
	if ((*reported)++ < MAX_REPORTED)
		printf("HOG-MISMATCH pass=%d page=%" PRIu64 " first_offset=%ld bad_bytes=%ld "
		       "got_word0=%016" PRIx64 " want_word0=%016" PRIx64 "\n",
		       pass, index, first, bad, got[0], want[0]);
	return bad;
}

int main(int argc, char **argv)
{
	int passes = 2, opt;
	long long corrupt_index = -1;
	uint64_t seed = 0x7a72616d64ULL;  /* "zramd" */
	while ((opt = getopt(argc, argv, "p:S:s:x:")) != -1) {
		switch (opt) {
		case 'p': passes = atoi(optarg); break;
		case 'x': corrupt_index = atoll(optarg); break;
		case 'S': seed = strtoull(optarg, NULL, 0); break;
		case 's':
			if (n_statfiles < MAX_STATFILES)
				statfiles[n_statfiles++] = optarg;
			break;
		default: goto usage;
		}
	}
	if (optind != argc - 1 || passes < 1) {
usage:
		fprintf(stderr, "usage: hog [-p PASSES] [-S SEED] [-s STATFILE]... [-x PAGE] MIB\n");
		return 2;
	}
	uint64_t pages = strtoull(argv[optind], NULL, 0) * (1024 * 1024 / PAGE_BYTES);
	uint64_t *mem = mmap(NULL, pages * PAGE_BYTES, PROT_READ | PROT_WRITE,
			     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (mem == MAP_FAILED) {
		perror("hog: mmap");
		return 2;
	}
	static uint64_t want[WORDS];
	long bad_pages = 0, bad_bytes = 0, reported = 0;
	double t0 = now();

	for (int pass = 0; pass <= passes; pass++) {
		/* pass 0 fills, 1..passes-1 verify the previous pass and rewrite,
		   the last verifies only. */
		const char *action = pass == 0 ? "fill" : pass < passes ? "rewrite" : "verify";
		long pass_bad = 0;
		double t = now();
		for (uint64_t i = 0; i < pages; i++) {
			uint64_t *page = mem + i * WORDS;
			if (pass > 0) {
				make_page(want, seed, pass - 1, i);
				long b = check_page(page, want, i, pass - 1, &reported);
				if (b) {
					pass_bad++;
					bad_bytes += b;
				}
			}
			if (pass < passes) {
				make_page(want, seed, pass, i);
				memcpy(page, want, PAGE_BYTES);
			}
		}
		bad_pages += pass_bad;
		printf("HOG-PASS pass=%d action=%s pages=%" PRIu64 " bad_pages=%ld seconds=%.3f\n",
		       pass, action, pages, pass_bad, now() - t);
		fflush(stdout);
		print_stats(pass);
		if (pass == 0 && corrupt_index >= 0 && (uint64_t)corrupt_index < pages)
			((unsigned char *)mem)[corrupt_index * PAGE_BYTES + 100] ^= 0x5a;
	}
	printf("HOG-RESULT pages=%" PRIu64 " passes=%d bad_pages=%ld bad_bytes=%ld seconds=%.3f ok=%d\n",
	       pages, passes, bad_pages, bad_bytes, now() - t0, bad_pages == 0);
	fflush(stdout);
	return bad_pages ? 1 : 0;
}
