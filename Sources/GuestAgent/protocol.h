/*
 * The host <-> guest agent protocol over the virtio-serial port "hangar.agent".
 * Must match Sources/Node/MicroVM/GuestProtocol.swift.
 *
 * Every message is a frame: 1 byte type, 4 bytes big-endian payload length, the payload.
 *
 * guest -> host
 *   'R' READY   u64 guest uptime in ms when the agent was ready
 *   'O' STDOUT  a chunk of the program's stdout (at most CHUNK_MAX bytes)
 *   'E' STDERR  a chunk of the program's stderr
 *   'X' EXIT    u32 kind, u32 exit code, u32 signal, u64 cpu us, u64 peak memory bytes,
 *               u64 run ms, u64 stdout bytes, u64 stderr bytes, u64 oom kills, u64 forks refused at
 *               the pids limit, then a message
 * host -> guest
 *   'S' SEED    u64 host realtime in ns since the epoch, then 16-256 bytes of randomness; sent to a VM
 *               restored from a snapshot (every restored copy starts with the same RNG state and a
 *               stale clock). The agent mixes the bytes into the kernel's pool, forces a reseed of
 *               the CRNG, sets the clock and answers with a new READY. Before the JOB only.
 *   'J' JOB     a sequence of fields: 1 byte tag, 4 bytes big-endian length, the value
 *               (see FIELD_*); LIMITS is nine big-endian u64 (see struct limits)
 *   'A' ATTACH  u64 disk bytes: instead of a JOB, the VM becomes a stateful sandbox. The agent
 *               mounts /home/user, /root and /tmp as tmpfs of that size each, and execs
 *               the sandbox agent (/.hangar/agent, `hangar-sandbox-agent`) with the port as its
 *               channel and the filter at /.hangar/seccomp; from then on the port speaks
 *               proto/hangar/v1/agent.proto's frames. If the VM has no sandbox agent, an EXIT says so.
 */
#ifndef HANGAR_GUEST_PROTOCOL_H
#define HANGAR_GUEST_PROTOCOL_H

#define FRAME_READY 'R'
#define FRAME_STDOUT 'O'
#define FRAME_STDERR 'E'
#define FRAME_EXIT 'X'
#define FRAME_JOB 'J'
#define FRAME_SEED 'S'
#define FRAME_ATTACH 'A'

#define SEED_MIN 16
#define SEED_MAX 256

#define CHUNK_MAX 65536
#define JOB_MAX (256u << 20)
#define MESSAGE_MAX 2048

#define FIELD_ARGV 1   /* repeated: one argument */
#define FIELD_ENV 2    /* repeated: KEY=VALUE */
#define FIELD_CWD 3    /* absolute working directory */
#define FIELD_STDIN 4  /* the program's stdin */
#define FIELD_FILE 5   /* repeated: u32 mode, u32 path length, path, content */
#define FIELD_LIMITS 6 /* nine u64, see below */

/* EXIT kinds */
#define KIND_EXITED 0
#define KIND_SIGNALED 1
#define KIND_TIMED_OUT 2
#define KIND_CPU_TIME 3
#define KIND_OUTPUT_LIMIT 4
#define KIND_OOM 5
#define KIND_ERROR 6
#define KIND_FAILED_TO_START 7

#endif
