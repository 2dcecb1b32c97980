/*
 * hangar-guest-agent: /init of a Hangar microVM.
 *
 * Mounts the basics, loads the virtio modules the host listed, opens the virtio-serial port named
 * "hangar.agent", says READY, (after a snapshot restore: takes a SEED and says READY again) receives one JOB (or an
 * ATTACH, which makes the VM a stateful sandbox: see protocol.h), runs it as uid 65534 in a cgroup with the job's
 * memory, pids and CPU limits, rlimits and a private size-bounded /tmp, streams its output with the
 * caps applied, reports how it ended, and reboots (qemu runs with -no-reboot, so it exits). A job or
 * sandbox with host path grants gets them from a virtiofs share before it starts (share.c).
 *
 * `hangar-guest-agent --tsc-khz` (on the host) prints the host's TSC frequency: under TCG the guest's
 * TSC is the host's, and the kernel needs it (microvm has no PIT or HPET to calibrate against).
 */
#define _GNU_SOURCE
#include "agent.h"

/*
 * swiftc links every executable target, this C one too, with swiftrt.o, which registers the image
 * with the Swift runtime and so pulls the runtime (and its start-up code, which needs /proc) out of
 * libswiftCore.a. There is no Swift code here: these two definitions satisfy swiftrt.o instead.
 */
void swift_addNewDSOImage(const void *sections) { (void)sections; }
int _swift_backtrace_isThunkFunction(const char *name) {
    (void)name;
    return 0;
}

/* READY with the guest's uptime in ms. */
static void say_ready(void) {
    struct timespec ts;
    clock_gettime(CLOCK_BOOTTIME, &ts);
    uint8_t uptime[8];
    put64(uptime, (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000);
    if (send_frame(FRAME_READY, uptime, sizeof uptime) != 0) power_off();
}

/* ATTACH: the VM becomes a stateful sandbox whose first process is the sandbox agent. Its "user"
 * commands run as uid 1000 of a user namespace that maps it onto the agent's uid 0, so /home/user
 * belongs to uid 0 here: that is `user` to them. */
static void attach(uint32_t length) {
    uint8_t payload[8];
    if (length != sizeof payload) fail(KIND_ERROR, "guest: a %u-byte ATTACH frame", length);
    if (read_all(port, payload, sizeof payload) != 0) fail(KIND_ERROR, "guest: the attach frame was cut short");
    unsigned long long disk = (unsigned long long)get64(payload);
    if (access("/.hangar/agent", X_OK) != 0) fail(KIND_ERROR, "guest: this VM has no sandbox agent");
    struct {
        const char *path, *options;
    } places[] = {{"/home/user", "mode=0755"}, {"/root", "mode=0700"}, {"/tmp", "mode=1777"}};
    mkdir("/home", 0755);
    for (size_t index = 0; index < sizeof places / sizeof places[0]; index++) {
        char options[128];
        snprintf(options, sizeof options, "size=%llu,%s", disk, places[index].options);
        mkdir(places[index].path, 0755);
        if (mount("tmpfs", places[index].path, "tmpfs", MS_NOSUID | MS_NODEV, options) != 0)
            fail(KIND_ERROR, "guest: cannot mount %s: %s", places[index].path, strerror(errno));
    }
    mount_share();
    /* The port is fd 3 of the sandbox agent, kept across the exec. */
    if (port == 3 ? fcntl(3, F_SETFD, 0) != 0 : dup2(port, 3) != 3) fail(KIND_ERROR, "guest: fd 3: %s", strerror(errno));
    /* `--port`: a node that hangs up (it restarts) leaves the sandbox running for the next one; with
     * no node for 600 s (ProcessSandbox.orphanTimeout) the agent ends, and with it the VM. */
    char *const arguments[] = {"hangar-sandbox-agent", "--port", "3", "--orphan-ms", "600000",
                               "--seccomp-file", "/.hangar/seccomp", NULL};
    char *const environment[] = {"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", NULL};
    execve("/.hangar/agent", arguments, environment);
    fail(KIND_ERROR, "guest: cannot start the sandbox agent: %s", strerror(errno));
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--tsc-khz") == 0) {
        measure_tsc();
        return 0;
    }
    if (getpid() != 1) {
        fprintf(stderr, "hangar-guest-agent runs as /init inside a Hangar microVM (or with --tsc-khz)\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    boot();
    say_ready();

    uint8_t header[5];
    uint32_t length;
    for (;;) {
        if (read_all(port, header, sizeof header) != 0) fail(KIND_ERROR, "guest: the host closed the channel");
        length = get32(header + 1);
        if (header[0] != FRAME_SEED) break;
        if (length < 8 + SEED_MIN || length > 8 + SEED_MAX) fail(KIND_ERROR, "guest: a %u-byte SEED frame", length);
        uint8_t seed[8 + SEED_MAX];
        if (read_all(port, seed, length) != 0) fail(KIND_ERROR, "guest: the seed frame was cut short");
        reseed(seed, length);
        say_ready();
    }
    if (header[0] == FRAME_ATTACH) attach(length);
    if (header[0] != FRAME_JOB) fail(KIND_ERROR, "guest: expected a JOB frame, got type %u", header[0]);
    if (length > JOB_MAX) fail(KIND_ERROR, "guest: the job is %u bytes, more than %u", length, JOB_MAX);
    uint8_t *data = malloc(length ? length : 1);
    if (!data) fail(KIND_ERROR, "guest: no memory for a %u-byte job", length);
    if (read_all(port, data, length) != 0) fail(KIND_ERROR, "guest: the job frame was cut short");
    struct job job;
    parse_job(data, length, &job);
    run_job(&job);
    power_off();
    return 0;
}
