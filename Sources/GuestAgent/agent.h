/* Declarations shared by the guest agent's files; see main.c for what the agent does. */
#ifndef HANGAR_GUEST_AGENT_H
#define HANGAR_GUEST_AGENT_H

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <linux/random.h>
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

/* The virtio-serial port to the host; -1 until boot() opened it. */
extern int port;

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
    uint64_t cpu_us, peak, run_ms, out_bytes, err_bytes, oom_kills, pids_hits;
    char message[MESSAGE_MAX];
};

/* wire.c: frames to the host, failures, small file helpers */
uint64_t now_ms(void);
void put32(uint8_t *p, uint32_t v);
void put64(uint8_t *p, uint64_t v);
uint32_t get32(const uint8_t *p);
uint64_t get64(const uint8_t *p);
int write_all(int fd, const void *data, size_t length);
int read_all(int fd, void *data, size_t length);
int send_frame(uint8_t type, const void *payload, uint32_t length);
void send_exit(const struct report *r);
void power_off(void) __attribute__((noreturn));
void fail(uint32_t kind, const char *format, ...) __attribute__((noreturn, format(printf, 2, 3)));
int write_file(const char *path, const char *text);
uint64_t read_keyed(const char *path, const char *key);
uint64_t read_number(const char *path);

/* boot.c */
void boot(void);
void load_modules(const char *list_path);
void measure_tsc(void);
void reseed(const uint8_t *seed, uint32_t length);

/* share.c */
void mount_share(void);

/* job.c */
void parse_job(const uint8_t *data, size_t length, struct job *job);
void run_job(const struct job *job);

#endif
