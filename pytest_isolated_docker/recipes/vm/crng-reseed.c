/*
 * crng-reseed FILE: mix FILE (the host's entropy seed) into the kernel's random pool and have
 * the kernel reseed its generator from the pool now (RNDRESEEDCRNG), rather than at its next
 * periodic reseed. VMs restored from one snapshot start with the same random state; init.sh runs
 * this before anything that holds keys starts. (A program of its own: under TCG, starting perl
 * for one ioctl costs a tenth of a second of a VM's start.)
 */
#include <fcntl.h>
#include <linux/random.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    char seed[4096];
    ssize_t length;
    int source, pool;

    if (argc != 2) {
        fprintf(stderr, "usage: %s SEED-FILE\n", argc > 0 ? argv[0] : "crng-reseed");
        return 2;
    }
    source = open(argv[1], O_RDONLY | O_CLOEXEC);
    if (source < 0) {
        fprintf(stderr, "crng-reseed: %s: %m\n", argv[1]);
        return 1;
    }
    length = read(source, seed, sizeof seed);
    pool = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
    if (length <= 0 || pool < 0 || write(pool, seed, (size_t)length) != length) {
        fprintf(stderr, "crng-reseed: cannot mix the seed in: %m\n");
        return 1;
    }
    if (ioctl(pool, RNDRESEEDCRNG) != 0) {
        fprintf(stderr, "crng-reseed: reseed: %m\n");
        return 1;
    }
    return 0;
}
