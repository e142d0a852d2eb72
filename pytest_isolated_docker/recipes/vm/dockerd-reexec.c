/*
 * What dockerd executes when it executes itself, in the machine backend's VM.
 *
 * dockerd runs helpers by executing its own binary again ("/proc/self/exe") with the helper's name
 * as argv[0]; for every container on a bridge network it does so once, as "set-ipv6", only to
 * write one sysctl inside the container's network namespace. Under TCG that costs dockerd's whole
 * Go start-up, about 0.3 s per container. The VM recipe points that path of dockerd at this
 * program (see the Dockerfile): it does "set-ipv6" itself, as dockerd 20.10 does (the same
 * arguments, file, value and exit codes), and hands every other helper (image layers, archives,
 * namespaces) to dockerd unchanged, argv[0] included.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#ifndef DOCKERD
#define DOCKERD "/usr/sbin/dockerd"
#endif

/* set-ipv6 <network namespace file> <interface or "all"> <"true" to enable, else disable> */
static int set_ipv6(int argc, char **argv)
{
    char path[256];
    int namespace, sysctl;
    const char *value;

    if (argc < 4) {
        fprintf(stderr, "invalid number of arguments for %s\n", argv[0]);
        return 1;
    }
    namespace = open(argv[1], O_RDONLY | O_CLOEXEC);
    if (namespace < 0 || setns(namespace, CLONE_NEWNET) != 0) {
        fprintf(stderr, "setting into container netns %s failed: %m\n", argv[1]);
        return namespace < 0 ? 2 : 3;
    }
    if (snprintf(path, sizeof path, "/proc/sys/net/ipv6/conf/%s/disable_ipv6", argv[2])
            >= (int)sizeof path) {
        fprintf(stderr, "interface name too long: %s\n", argv[2]);
        return 4;
    }
    value = strcmp(argv[3], "true") == 0 ? "0\n" : "1\n";
    sysctl = open(path, O_WRONLY | O_CLOEXEC);
    if (sysctl < 0 || write(sysctl, value, 2) != 2) {
        fprintf(stderr, "failed to set %s: %m\n", path);
        return 4;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc > 0 && strcmp(argv[0], "set-ipv6") == 0)
        return set_ipv6(argc, argv);
    execv(DOCKERD, argv);
    fprintf(stderr, "cannot execute %s: %m\n", DOCKERD);
    return 127;
}
