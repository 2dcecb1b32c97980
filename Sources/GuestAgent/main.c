/*
 * hangar-guest-agent: /init of a Hangar microVM.
 *
 * Mounts the basics, loads the virtio modules the host listed, opens the virtio-serial port named
 * "hangar.agent", says READY, receives one JOB, runs it as uid 65534 in a cgroup with the job's
 * memory, pids and CPU limits, rlimits and a private size-bounded /tmp, streams its output with the
 * caps applied, reports how it ended, and reboots (qemu runs with -no-reboot, so it exits).
 *
 * `hangar-guest-agent --tsc-khz` (on the host) prints the host's TSC frequency: under TCG the guest's
 * TSC is the host's, and the kernel needs it (microvm has no PIT or HPET to calibrate against).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <net/if.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "protocol.h"

#define SANDBOX_ID 65534
#define CGROUP "/sys/fs/cgroup/job"

static int port = -1;

struct limits {
    uint64_t timeout_ms, cpu_time_ms, memory_bytes, pids, output_bytes, file_size_bytes, open_files,
        cpu_millis, loopback;
};

struct file_in {
    uint32_t mode;
    const char *path;
    uint32_t path_length;
    const uint8_t *content;
    uint32_t length;
};

struct job {
    char **argv;
    size_t argc;
    char **env;
    size_t envc;
    char *cwd;
    const uint8_t *stdin_data;
    size_t stdin_length;
    struct file_in *files;
    size_t filec;
    struct limits limits;
};

struct report {
    uint32_t kind, code, signal;
    uint64_t cpu_us, peak, run_ms, out_bytes, err_bytes, oom_kills;
    char message[MESSAGE_MAX];
};

/* ---- time and small helpers ---- */

static uint64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void put32(uint8_t *p, uint32_t v) {
    p[0] = v >> 24;
    p[1] = v >> 16;
    p[2] = v >> 8;
    p[3] = v;
}

static void put64(uint8_t *p, uint64_t v) {
    put32(p, (uint32_t)(v >> 32));
    put32(p + 4, (uint32_t)v);
}

static uint32_t get32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t get64(const uint8_t *p) { return (uint64_t)get32(p) << 32 | get32(p + 4); }

static int write_all(int fd, const void *data, size_t length) {
    const uint8_t *p = data;
    while (length > 0) {
        ssize_t n = write(fd, p, length);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        p += n;
        length -= (size_t)n;
    }
    return 0;
}

static int read_all(int fd, void *data, size_t length) {
    uint8_t *p = data;
    while (length > 0) {
        ssize_t n = read(fd, p, length);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        p += n;
        length -= (size_t)n;
    }
    return 0;
}

static int send_frame(uint8_t type, const void *payload, uint32_t length) {
    uint8_t header[5];
    header[0] = type;
    put32(header + 1, length);
    if (write_all(port, header, sizeof header) != 0) return -1;
    return length ? write_all(port, payload, length) : 0;
}

static void send_exit(const struct report *r) {
    uint8_t buffer[12 + 48 + MESSAGE_MAX];
    put32(buffer, r->kind);
    put32(buffer + 4, r->code);
    put32(buffer + 8, r->signal);
    put64(buffer + 12, r->cpu_us);
    put64(buffer + 20, r->peak);
    put64(buffer + 28, r->run_ms);
    put64(buffer + 36, r->out_bytes);
    put64(buffer + 44, r->err_bytes);
    put64(buffer + 52, r->oom_kills);
    size_t length = strnlen(r->message, MESSAGE_MAX);
    memcpy(buffer + 60, r->message, length);
    send_frame(FRAME_EXIT, buffer, (uint32_t)(60 + length));
}

static void power_off(void) {
    sync();
    reboot(RB_AUTOBOOT); /* qemu -no-reboot exits */
    for (;;) pause();
}

/* Reports a failure before the program could run and stops the VM. */
static void fail(uint32_t kind, const char *format, ...) {
    struct report r;
    memset(&r, 0, sizeof r);
    r.kind = kind;
    va_list args;
    va_start(args, format);
    vsnprintf(r.message, sizeof r.message, format, args);
    va_end(args);
    if (port >= 0) send_exit(&r);
    else fprintf(stderr, "hangar-guest-agent: %s\n", r.message);
    power_off();
}

static int write_file(const char *path, const char *text) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    int result = write_all(fd, text, strlen(text));
    close(fd);
    return result;
}

/* The value after `key` in a "key value" file such as memory.events; 0 when absent. */
static uint64_t read_keyed(const char *path, const char *key) {
    char text[4096];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, text, sizeof text - 1);
    close(fd);
    if (n <= 0) return 0;
    text[n] = 0;
    size_t key_length = strlen(key);
    for (char *line = text; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        if (strncmp(line, key, key_length) == 0 && line[key_length] == ' ')
            return strtoull(line + key_length + 1, NULL, 10);
    }
    return 0;
}

static uint64_t read_number(const char *path) {
    char text[64];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, text, sizeof text - 1);
    close(fd);
    if (n <= 0) return 0;
    text[n] = 0;
    return strtoull(text, NULL, 10);
}

/* ---- boot ---- */

static void load_modules(void) {
    FILE *list = fopen("/etc/hangar/modules", "re");
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

static void boot(void) {
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
    load_modules();
    port = open_port();
    if (port < 0) fail(KIND_ERROR, "guest: the virtio-serial port hangar.agent did not appear");
    if (mount("cgroup2", "/sys/fs/cgroup", "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0)
        fail(KIND_ERROR, "guest: cannot mount cgroup2: %s", strerror(errno));
    loopback_up();
    sethostname("sandbox", 7);
}

/* ---- the job ---- */

static void *grow(void *array, size_t count, size_t size) {
    void *bigger = realloc(array, (count + 2) * size);
    if (!bigger) fail(KIND_ERROR, "guest: out of memory reading the job");
    return bigger;
}

static char *copy_string(const uint8_t *value, uint32_t length) {
    if (memchr(value, 0, length)) fail(KIND_ERROR, "guest: a string in the job contains a NUL byte");
    char *s = malloc(length + 1);
    if (!s) fail(KIND_ERROR, "guest: out of memory reading the job");
    memcpy(s, value, length);
    s[length] = 0;
    return s;
}

static void parse_job(const uint8_t *data, size_t length, struct job *job) {
    memset(job, 0, sizeof *job);
    int have_limits = 0;
    size_t offset = 0;
    while (offset < length) {
        if (length - offset < 5) fail(KIND_ERROR, "guest: truncated job field");
        uint8_t tag = data[offset];
        uint32_t size = get32(data + offset + 1);
        offset += 5;
        if (size > length - offset) fail(KIND_ERROR, "guest: job field longer than the job");
        const uint8_t *value = data + offset;
        offset += size;
        switch (tag) {
        case FIELD_ARGV:
            job->argv = grow(job->argv, job->argc, sizeof(char *));
            job->argv[job->argc++] = copy_string(value, size);
            job->argv[job->argc] = NULL;
            break;
        case FIELD_ENV:
            job->env = grow(job->env, job->envc, sizeof(char *));
            job->env[job->envc++] = copy_string(value, size);
            job->env[job->envc] = NULL;
            break;
        case FIELD_CWD: job->cwd = copy_string(value, size); break;
        case FIELD_STDIN:
            job->stdin_data = value;
            job->stdin_length = size;
            break;
        case FIELD_FILE: {
            if (size < 8) fail(KIND_ERROR, "guest: truncated file field");
            struct file_in file = {.mode = get32(value), .path_length = get32(value + 4)};
            if (file.path_length == 0 || file.path_length > size - 8) fail(KIND_ERROR, "guest: bad file path length");
            file.path = copy_string(value + 8, file.path_length);
            file.content = value + 8 + file.path_length;
            file.length = size - 8 - file.path_length;
            job->files = grow(job->files, job->filec, sizeof(struct file_in));
            job->files[job->filec++] = file;
            break;
        }
        case FIELD_LIMITS: {
            if (size != 9 * 8) fail(KIND_ERROR, "guest: limits field has %u bytes, not 72", size);
            uint64_t *fields = &job->limits.timeout_ms;
            for (int i = 0; i < 9; i++) fields[i] = get64(value + 8 * i);
            have_limits = 1;
            break;
        }
        default: fail(KIND_ERROR, "guest: unknown job field %u", tag);
        }
    }
    if (job->argc == 0) fail(KIND_ERROR, "guest: the job has no argv");
    if (!have_limits) fail(KIND_ERROR, "guest: the job has no limits");
    if (!job->cwd) job->cwd = "/tmp";
    if (!job->env) {
        job->env = grow(NULL, 0, sizeof(char *));
        job->env[0] = NULL;
    }
}

static void make_parents(char *path) {
    for (char *slash = strchr(path + 1, '/'); slash; slash = strchr(slash + 1, '/')) {
        *slash = 0;
        if (mkdir(path, 0755) == 0) chown(path, SANDBOX_ID, SANDBOX_ID);
        *slash = '/';
    }
}

/* The private /tmp (size-bounded tmpfs), the working directory and the job's files. */
static void prepare_scratch(const struct job *job) {
    char options[64];
    snprintf(options, sizeof options, "size=%llu,mode=1777", (unsigned long long)job->limits.file_size_bytes);
    if (mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, options) != 0)
        fail(KIND_ERROR, "guest: cannot mount /tmp: %s", strerror(errno));
    if (strncmp(job->cwd, "/tmp/", 5) == 0) {
        char *path = malloc(strlen(job->cwd) + 2);
        sprintf(path, "%s/", job->cwd);
        make_parents(path);
        free(path);
    }
    for (size_t i = 0; i < job->filec; i++) {
        const struct file_in *file = &job->files[i];
        if (file->path[0] == '/' || strstr(file->path, ".."))
            fail(KIND_FAILED_TO_START, "file path \"%s\" must be relative, without \"..\"", file->path);
        char *path = malloc(strlen(job->cwd) + file->path_length + 2);
        sprintf(path, "%s/%s", job->cwd, file->path);
        make_parents(path);
        mode_t mode = file->mode ? (file->mode & 0777) : 0644;
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode);
        if (fd < 0 || write_all(fd, file->content, file->length) != 0)
            fail(KIND_FAILED_TO_START, "cannot write file %s: %s", file->path, strerror(errno));
        fchown(fd, SANDBOX_ID, SANDBOX_ID);
        fchmod(fd, mode);
        close(fd);
        free(path);
    }
}

/* The job's cgroup: memory (no swap in the VM), pids, CPU bandwidth. */
static void prepare_cgroup(const struct job *job) {
    write_file("/sys/fs/cgroup/cgroup.subtree_control", "+memory +pids +cpu");
    if (mkdir(CGROUP, 0755) != 0 && errno != EEXIST)
        fail(KIND_ERROR, "guest: cannot create the job cgroup: %s", strerror(errno));
    char value[64];
    snprintf(value, sizeof value, "%llu", (unsigned long long)job->limits.memory_bytes);
    if (write_file(CGROUP "/memory.max", value) != 0)
        fail(KIND_ERROR, "guest: cannot set memory.max: %s", strerror(errno));
    write_file(CGROUP "/memory.swap.max", "0");
    snprintf(value, sizeof value, "%llu", (unsigned long long)job->limits.pids);
    if (write_file(CGROUP "/pids.max", value) != 0)
        fail(KIND_ERROR, "guest: cannot set pids.max: %s", strerror(errno));
    snprintf(value, sizeof value, "%llu 100000", (unsigned long long)job->limits.cpu_millis * 100);
    write_file(CGROUP "/cpu.max", value);
}

static void kill_job(pid_t child) {
    write_file(CGROUP "/cgroup.kill", "1");
    kill(-child, SIGKILL);
    kill(child, SIGKILL);
}

/* In the child: join the cgroup, drop to 65534 with the rlimits, exec. Failures go to stderr. */
static void exec_child(const struct job *job, int in, int out, int err, int status_pipe) {
    setsid();
    char pid[32];
    snprintf(pid, sizeof pid, "%d", getpid());
    if (write_file(CGROUP "/cgroup.procs", pid) != 0) goto failed;
    dup2(in, 0);
    dup2(out, 1);
    dup2(err, 2);
    struct rlimit core = {0, 0};
    struct rlimit files = {job->limits.open_files, job->limits.open_files};
    struct rlimit size = {job->limits.file_size_bytes, job->limits.file_size_bytes};
    setrlimit(RLIMIT_CORE, &core);
    if (setrlimit(RLIMIT_NOFILE, &files) != 0 || setrlimit(RLIMIT_FSIZE, &size) != 0) goto failed;
    if (chdir(job->cwd) != 0) goto failed;
    gid_t group = SANDBOX_ID;
    if (setgroups(1, &group) != 0 || setgid(SANDBOX_ID) != 0 || setuid(SANDBOX_ID) != 0) goto failed;
    signal(SIGPIPE, SIG_DFL);
    environ = job->env;
    execvp(job->argv[0], job->argv);
failed:;
    int error = errno;
    write_all(status_pipe, &error, sizeof error);
    _exit(127);
}

struct stream {
    int fd;
    uint8_t frame;
    uint64_t total;
    uint64_t sent;
};

/* Reads what the stream has and forwards up to the cap; 1 when the stream went over the cap. */
static int pump(struct stream *s, uint64_t cap) {
    static uint8_t buffer[CHUNK_MAX];
    ssize_t n = read(s->fd, buffer, sizeof buffer);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return 0;
    if (n <= 0) {
        close(s->fd);
        s->fd = -1;
        return 0;
    }
    s->total += (uint64_t)n;
    if (s->sent < cap) {
        uint64_t room = cap - s->sent;
        uint32_t count = (uint64_t)n < room ? (uint32_t)n : (uint32_t)room;
        send_frame(s->frame, buffer, count);
        s->sent += count;
    }
    return s->total > cap;
}

static void run_job(const struct job *job) {
    prepare_scratch(job);
    prepare_cgroup(job);
    int in[2], out[2], err[2], status[2];
    if (pipe2(in, O_CLOEXEC) || pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC) || pipe2(status, O_CLOEXEC))
        fail(KIND_ERROR, "guest: pipe: %s", strerror(errno));
    uint64_t started = now_ms();
    pid_t child = fork();
    if (child < 0) fail(KIND_ERROR, "guest: fork: %s", strerror(errno));
    if (child == 0) exec_child(job, in[0], out[1], err[1], status[1]);
    close(in[0]);
    close(out[1]);
    close(err[1]);
    close(status[1]);
    int exec_error = 0;
    if (read_all(status[0], &exec_error, sizeof exec_error) != 0) exec_error = 0; /* EOF: exec worked */
    close(status[0]);

    struct report r;
    memset(&r, 0, sizeof r);
    struct stream streams[2] = {{out[0], FRAME_STDOUT, 0, 0}, {err[0], FRAME_STDERR, 0, 0}};
    fcntl(out[0], F_SETFL, O_NONBLOCK);
    fcntl(err[0], F_SETFL, O_NONBLOCK);
    fcntl(in[1], F_SETFL, O_NONBLOCK);
    int stdin_fd = in[1];
    size_t stdin_offset = 0;
    if (job->stdin_length == 0) {
        close(stdin_fd);
        stdin_fd = -1;
    }
    uint64_t deadline = started + job->limits.timeout_ms;
    int killed = -1, exited = 0, wait_status = 0;
    uint64_t drain_until = 0;
    while (1) {
        uint64_t now = now_ms();
        if (!exited) {
            pid_t done = waitpid(child, &wait_status, WNOHANG);
            if (done == child) {
                exited = 1;
                r.run_ms = now - started;
                kill_job(child); /* nothing the job started outlives it */
                drain_until = now + 1000;
            }
        }
        if (!exited && killed < 0) {
            if (now >= deadline) killed = KIND_TIMED_OUT;
            else if (job->limits.cpu_time_ms &&
                     read_keyed(CGROUP "/cpu.stat", "usage_usec") >= job->limits.cpu_time_ms * 1000)
                killed = KIND_CPU_TIME;
            if (killed >= 0) kill_job(child);
        }
        if (exited && streams[0].fd < 0 && streams[1].fd < 0) break;
        if (drain_until && now >= drain_until) break;
        struct pollfd fds[3] = {
            {streams[0].fd, POLLIN, 0}, {streams[1].fd, POLLIN, 0}, {stdin_fd, POLLOUT, 0}};
        poll(fds, 3, 20);
        for (int i = 0; i < 2; i++) {
            if (fds[i].revents && streams[i].fd >= 0 && pump(&streams[i], job->limits.output_bytes) &&
                killed < 0 && !exited) {
                killed = KIND_OUTPUT_LIMIT;
                kill_job(child);
            }
        }
        if (stdin_fd >= 0 && fds[2].revents) {
            ssize_t n = write(stdin_fd, job->stdin_data + stdin_offset, job->stdin_length - stdin_offset);
            if (n > 0) stdin_offset += (size_t)n;
            if ((n < 0 && errno != EAGAIN && errno != EINTR) || stdin_offset >= job->stdin_length) {
                close(stdin_fd);
                stdin_fd = -1;
            }
        }
    }
    if (!exited) {
        kill_job(child);
        waitpid(child, &wait_status, 0);
        r.run_ms = now_ms() - started;
    }
    r.out_bytes = streams[0].total;
    r.err_bytes = streams[1].total;
    r.cpu_us = read_keyed(CGROUP "/cpu.stat", "usage_usec");
    r.peak = read_number(CGROUP "/memory.peak");
    r.oom_kills = read_keyed(CGROUP "/memory.events", "oom_kill");
    if (WIFEXITED(wait_status)) r.code = (uint32_t)WEXITSTATUS(wait_status);
    if (WIFSIGNALED(wait_status)) r.signal = (uint32_t)WTERMSIG(wait_status);
    if (exec_error) {
        r.kind = KIND_FAILED_TO_START;
        snprintf(r.message, sizeof r.message, "cannot run %s: %s", job->argv[0], strerror(exec_error));
    } else if (killed >= 0) {
        r.kind = (uint32_t)killed;
    } else if (r.oom_kills > 0 && !(WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == 0)) {
        r.kind = KIND_OOM;
    } else {
        r.kind = WIFSIGNALED(wait_status) ? KIND_SIGNALED : KIND_EXITED;
    }
    send_exit(&r);
}

static void measure_tsc(void) {
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
 * swiftc links every executable target, this C one too, with swiftrt.o, which registers the image
 * with the Swift runtime and so pulls the runtime (and its start-up code, which needs /proc) out of
 * libswiftCore.a. There is no Swift code here: these two definitions satisfy swiftrt.o instead.
 */
void swift_addNewDSOImage(const void *sections) { (void)sections; }
int _swift_backtrace_isThunkFunction(const char *name) {
    (void)name;
    return 0;
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
    struct timespec ts;
    clock_gettime(CLOCK_BOOTTIME, &ts);
    uint8_t uptime[8];
    put64(uptime, (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000);
    if (send_frame(FRAME_READY, uptime, sizeof uptime) != 0) power_off();

    uint8_t header[5];
    if (read_all(port, header, sizeof header) != 0) fail(KIND_ERROR, "guest: the host closed the channel");
    uint32_t length = get32(header + 1);
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
