/* Bringing the guest up: mounts, modules, the port, loopback; and the host-side TSC measurement. */
#define _GNU_SOURCE
#include "agent.h"

/* Loads the modules `list_path` names, one path per line, dependencies first. */
void load_modules(const char *list_path) {
    FILE *list = fopen(list_path, "re");
    if (!list) return;
    char path[512];
    while (fgets(path, sizeof path, list)) {
        path[strcspn(path, "\n")] = 0;
        if (!path[0]) continue;
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) fail(KIND_ERROR, "guest: cannot open module %s: %s", path, strerror(errno));
        if (syscall(SYS_finit_module, fd, "", 0) != 0 && errno != EEXIST)
            fail(KIND_ERROR, "guest: cannot load module %s: %s", path, strerror(errno));
        close(fd);
    }
    fclose(list);
}

static void loopback_up(void) {
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) return;
    struct ifreq request;
    memset(&request, 0, sizeof request);
    strcpy(request.ifr_name, "lo");
    if (ioctl(s, SIOCGIFFLAGS, &request) == 0) {
        request.ifr_flags |= IFF_UP | IFF_RUNNING;
        ioctl(s, SIOCSIFFLAGS, &request);
    }
    close(s);
}

/* Opens the port named "hangar.agent"; the devices appear shortly after the modules load. */
static int open_port(void) {
    for (int attempt = 0; attempt < 1000; attempt++) {
        DIR *ports = opendir("/sys/class/virtio-ports");
        struct dirent *entry;
        while (ports && (entry = readdir(ports))) {
            if (entry->d_name[0] == '.') continue;
            char path[512], name[64] = {0};
            snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", entry->d_name);
            int fd = open(path, O_RDONLY | O_CLOEXEC);
            if (fd < 0) continue;
            ssize_t n = read(fd, name, sizeof name - 1);
            close(fd);
            if (n > 0 && strncmp(name, "hangar.agent", 12) == 0) {
                snprintf(path, sizeof path, "/dev/%s", entry->d_name);
                int device = open(path, O_RDWR | O_CLOEXEC);
                if (device >= 0) {
                    closedir(ports);
                    return device;
                }
            }
        }
        if (ports) closedir(ports);
        usleep(10000);
    }
    return -1;
}

void boot(void) {
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
    /* The initramfs has no /dev/console, so init starts without fds 0-2: fill them, or the job's
     * pipes would land there and the child's dup2 calls would overwrite one another. */
    int null = open("/dev/null", O_RDWR);
    if (null > 0) {
        dup2(null, 0);
        close(null);
    }
    int console = open("/dev/console", O_RDWR);
    if (console < 0) console = open("/dev/null", O_RDWR);
    if (console >= 0) {
        if (console != 1) dup2(console, 1);
        if (console != 2) dup2(console, 2);
        if (console > 2) close(console);
    }
    load_modules("/etc/hangar/modules");
    port = open_port();
    if (port < 0) fail(KIND_ERROR, "guest: the virtio-serial port hangar.agent did not appear");
    if (mount("cgroup2", "/sys/fs/cgroup", "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0)
        fail(KIND_ERROR, "guest: cannot mount cgroup2: %s", strerror(errno));
    loopback_up();
    sethostname("sandbox", 7);
}

void measure_tsc(void) {
    uint32_t lo, hi;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC_RAW, &a);
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    uint64_t t0 = (uint64_t)hi << 32 | lo;
    struct timespec pause_for = {0, 100000000};
    nanosleep(&pause_for, NULL);
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    clock_gettime(CLOCK_MONOTONIC_RAW, &b);
    uint64_t t1 = (uint64_t)hi << 32 | lo;
    uint64_t ns = (uint64_t)(b.tv_sec - a.tv_sec) * 1000000000ull + (uint64_t)(b.tv_nsec - a.tv_nsec);
    printf("%llu\n", (unsigned long long)((t1 - t0) * 1000000ull / ns));
}


/*
 * After a snapshot restore every copy of the VM has the same kernel RNG state and the clock of the
 * moment the snapshot was taken. `seed` is the SEED payload: u64 host realtime in ns, then fresh
 * bytes from the host's getrandom. They are credited to the input pool and the CRNG is reseeded at
 * once, so /dev/urandom and getrandom differ in each copy from here on; then the clock is set.
 */
void reseed(const uint8_t *seed, uint32_t length) {
    uint32_t bytes = length - 8;
    struct {
        struct rand_pool_info info;
        uint8_t data[SEED_MAX];
    } entropy;
    entropy.info.entropy_count = (int)(bytes * 8);
    entropy.info.buf_size = (int)bytes;
    memcpy(entropy.data, seed + 8, bytes);
    int random = open("/dev/urandom", O_RDWR | O_CLOEXEC);
    if (random < 0) fail(KIND_ERROR, "guest: cannot open /dev/urandom: %s", strerror(errno));
    if (ioctl(random, RNDADDENTROPY, &entropy.info) != 0)
        fail(KIND_ERROR, "guest: RNDADDENTROPY: %s", strerror(errno));
    if (ioctl(random, RNDRESEEDCRNG) != 0) fail(KIND_ERROR, "guest: RNDRESEEDCRNG: %s", strerror(errno));
    close(random);
    uint64_t ns = get64(seed);
    struct timespec now = {.tv_sec = (time_t)(ns / 1000000000ull), .tv_nsec = (long)(ns % 1000000000ull)};
    if (clock_settime(CLOCK_REALTIME, &now) != 0) fail(KIND_ERROR, "guest: clock_settime: %s", strerror(errno));
}
