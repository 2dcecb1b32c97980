/* Frames to the host, reporting failures, and small file helpers. */
#define _GNU_SOURCE
#include "agent.h"

int port = -1;

uint64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void put32(uint8_t *p, uint32_t v) {
    p[0] = v >> 24;
    p[1] = v >> 16;
    p[2] = v >> 8;
    p[3] = v;
}

void put64(uint8_t *p, uint64_t v) {
    put32(p, (uint32_t)(v >> 32));
    put32(p + 4, (uint32_t)v);
}

uint32_t get32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

uint64_t get64(const uint8_t *p) { return (uint64_t)get32(p) << 32 | get32(p + 4); }

int write_all(int fd, const void *data, size_t length) {
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

int read_all(int fd, void *data, size_t length) {
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

int send_frame(uint8_t type, const void *payload, uint32_t length) {
    uint8_t header[5];
    header[0] = type;
    put32(header + 1, length);
    if (write_all(port, header, sizeof header) != 0) return -1;
    return length ? write_all(port, payload, length) : 0;
}

void send_exit(const struct report *r) {
    uint8_t buffer[12 + 56 + MESSAGE_MAX];
    put32(buffer, r->kind);
    put32(buffer + 4, r->code);
    put32(buffer + 8, r->signal);
    put64(buffer + 12, r->cpu_us);
    put64(buffer + 20, r->peak);
    put64(buffer + 28, r->run_ms);
    put64(buffer + 36, r->out_bytes);
    put64(buffer + 44, r->err_bytes);
    put64(buffer + 52, r->oom_kills);
    put64(buffer + 60, r->pids_hits);
    size_t length = strnlen(r->message, MESSAGE_MAX);
    memcpy(buffer + 68, r->message, length);
    send_frame(FRAME_EXIT, buffer, (uint32_t)(68 + length));
}

void power_off(void) {
    sync();
    reboot(RB_AUTOBOOT); /* qemu -no-reboot exits */
    for (;;) pause();
}

/* Reports a failure before the program could run and stops the VM. */
void fail(uint32_t kind, const char *format, ...) {
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

int write_file(const char *path, const char *text) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    int result = write_all(fd, text, strlen(text));
    close(fd);
    return result;
}

/* The value after `key` in a "key value" file such as memory.events; 0 when absent. */
uint64_t read_keyed(const char *path, const char *key) {
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

uint64_t read_number(const char *path) {
    char text[64];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, text, sizeof text - 1);
    close(fd);
    if (n <= 0) return 0;
    text[n] = 0;
    return strtoull(text, NULL, 10);
}

