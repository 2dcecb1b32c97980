import Foundation
import HangarShared
import SwiftProtobuf

/// One coverage-guided run: a name (`scripts/fuzz` runs `fuzz-<name>`), what it feeds, the function
/// called with each input, and the seeds written into `Fuzz/corpus/<name>/`.
struct FuzzTarget: Sendable {
    var name: String
    var summary: String
    var run: @Sendable (Data) -> Void
    var seeds: @Sendable () -> [(name: String, bytes: Data)]
    /// For protobuf targets: the editable form the custom mutator works on (see Mutator.swift).
    var textForm: TextForm? = nil
}

/// A target for a message that is only decoded (and whose encodings are checked).
func messageTarget<M: Message & Equatable>(
    _ name: String,
    _ type: M.Type,
    _ summary: String,
    extra: (@Sendable (M) -> Void)? = nil,
    valid: @escaping @Sendable () -> [(String, M)]
) -> FuzzTarget {
    FuzzTarget(
        name: name,
        summary: summary,
        run: { data in
            if let message = decodeAndCheck(M.self, data) { extra?(message) }
        },
        seeds: { protobufSeeds(valid()) },
        textForm: TextForm(M.self)
    )
}

/// Every target, in the order `scripts/fuzz` runs them.
let allTargets: [FuzzTarget] = [
    submitTarget,
    messageTarget("cancel", Hangar_V1_CancelRequest.self, "tenant -> scheduler: CancelRequest") {
        [("job", .with { $0.jobID = "j0123456789abcdefghjk0001" }), ("empty", .init())]
    },
    messageTarget("heartbeat", Hangar_V1_NodeHeartbeat.self, "node -> scheduler: NodeHeartbeat") {
        [("full", Samples.heartbeat), ("minimal", .with { $0.nodeID = "n1" })]
    },
    messageTarget("attempt-result", Hangar_V1_AttemptResult.self, "node -> scheduler: AttemptResult") {
        [
            ("succeeded", Samples.attemptResult),
            (
                "minimal",
                .with {
                    $0.jobID = "j1"
                    $0.attempt = 1
                }
            ),
        ]
    },
    messageTarget(
        "assignment",
        Hangar_V1_Assignment.self,
        "scheduler -> node: Assignment",
        extra: { assignment in
            // What the node agent checks before it runs anything (NodeAgent.admit).
            _ = Subjects.isValidToken(assignment.jobID)
            checkEncodings(assignment.spec)
        },
        valid: {
            [
                ("full", Samples.assignment),
                (
                    "minimal",
                    .with {
                        $0.jobID = "j1"
                        $0.attempt = 1
                    }
                ),
            ]
        }
    ),
    messageTarget("cancel-attempt", Hangar_V1_CancelAttempt.self, "scheduler -> node: CancelAttempt") {
        [
            (
                "full",
                .with {
                    $0.jobID = "j1"
                    $0.attempt = 2
                    $0.reason = "cancelled by tenant"
                }
            )
        ]
    },
    messageTarget("assign-reply", Hangar_V1_AssignReply.self, "node -> scheduler: AssignReply") {
        [
            (
                "ack",
                .with {
                    $0.ack = .with {
                        $0.jobID = "j1"
                        $0.attempt = 1
                    }
                }
            ),
            (
                "refused",
                .with {
                    $0.refused = .with {
                        $0.reason = .noFreeSlot
                        $0.message = "all 4 slots in use"
                    }
                }
            ),
        ]
    },
    messageTarget("result-ack", Hangar_V1_ResultAck.self, "scheduler -> node: ResultAck") {
        [
            (
                "stale",
                .with {
                    $0.jobID = "j1"
                    $0.attempt = 3
                    $0.stale = true
                }
            )
        ]
    },
    messageTarget("admin-nodes", Hangar_V1_NodesRequest.self, "operator -> scheduler: NodesRequest") {
        [("empty", .init())]
    },
    messageTarget("admin-job", Hangar_V1_JobRequest.self, "operator -> scheduler: JobRequest") {
        [("job", .with { $0.jobID = "j0123456789abcdefghjk0001" })]
    },
    messageTarget("admin-drain", Hangar_V1_DrainRequest.self, "operator -> scheduler: DrainRequest") {
        [
            (
                "drain",
                .with {
                    $0.nodeID = "n1"
                    $0.drain = true
                    $0.deadlineMs = 60_000
                    $0.actor = "ops"
                }
            )
        ]
    },
    messageTarget("admin-eligibility", Hangar_V1_EligibilityRequest.self, "operator -> scheduler: EligibilityRequest") {
        [
            (
                "off",
                .with {
                    $0.nodeID = "n1"
                    $0.eligible = false
                    $0.actor = "ops"
                }
            )
        ]
    },
    messageTarget("admin-audit", Hangar_V1_AuditRequest.self, "operator -> scheduler: AuditRequest") {
        [
            (
                "list",
                .with {
                    $0.tenant = "acme"
                    $0.jobID = "j1"
                    $0.sinceMs = 1_700_000_000_000
                    $0.limit = 50
                }
            ),
            ("verify", .with { $0.verify = true }),
        ]
    },
    tenantsTarget,
    subjectsTarget,
    dnsTarget,
]

/// Sample messages for the seed corpora.
enum Samples {
    static var limits: Hangar_V1_Limits {
        .with {
            $0.timeoutMs = 5000
            $0.cpuTimeMs = 2000
            $0.memoryBytes = 128 << 20
            $0.pids = 64
            $0.outputBytes = 1 << 20
            $0.fileSizeBytes = 16 << 20
            $0.openFiles = 128
            $0.cpuMillis = 500
        }
    }

    static var spec: Hangar_V1_JobSpec {
        .with {
            $0.runtime = "process"
            $0.template = "host"
            $0.argv = ["/bin/sh", "-c", "echo hi"]
            $0.stdin = Data("input".utf8)
            $0.env = ["LANG": "C.UTF-8", "X": "1"]
            $0.cwd = "/tmp/work"
            $0.files = [
                .with {
                    $0.path = "data/in.txt"
                    $0.content = Data("abc".utf8)
                    $0.mode = 0o600
                }
            ]
            $0.limits = limits
            $0.network = .with { $0.mode = .networkLoopback }
        }
    }

    static var heartbeat: Hangar_V1_NodeHeartbeat {
        .with {
            $0.nodeID = "node-1"
            $0.incarnation = "i-42"
            $0.sequence = 17
            $0.capacity = .with {
                $0.cpuMillis = 4000
                $0.memoryBytes = 8 << 30
                $0.slotsTotal = 8
                $0.slotsUsed = 2
                $0.cpuMillisUsed = 1500
                $0.memoryBytesUsed = 1 << 30
            }
            $0.runtimes = [
                .with {
                    $0.name = "process"
                    $0.available = true
                    $0.detail = "bwrap 0.8.0"
                },
                .with {
                    $0.name = "gvisor"
                    $0.available = false
                    $0.detail = "runsc not found"
                },
            ]
            $0.templates = ["host"]
            $0.labels = ["zone": "a", "arch": "x86_64"]
            $0.health = .healthy
            $0.version = "0.1.0"
            $0.sentAtMs = 1_700_000_000_000
            $0.runningJobs = ["j1/1", "j2/3"]
        }
    }

    static var attemptResult: Hangar_V1_AttemptResult {
        .with {
            $0.jobID = "j0123456789abcdefghjk0001"
            $0.attempt = 1
            $0.nodeID = "node-1"
            $0.status = .succeeded
            $0.exitCode = 0
            $0.stdout = Data("hello\n".utf8)
            $0.stderr = Data([0xFF, 0x00, 0x80])
            $0.stdoutTruncated = true
            $0.usage = .with {
                $0.cpuTimeUs = 1234
                $0.peakMemoryBytes = 1 << 20
                $0.stdoutBytes = 6
            }
            $0.startMs = 12
            $0.runMs = 34
            $0.message = "done"
        }
    }

    static var assignment: Hangar_V1_Assignment {
        .with {
            $0.jobID = "j0123456789abcdefghjk0001"
            $0.tenant = "acme"
            $0.attempt = 1
            $0.spec = spec
            $0.assignedAtMs = 1_700_000_000_000
        }
    }
}

// MARK: - Hostile protobuf seeds

/// Valid encodings plus inputs that stress the binary decoder: truncations, lengths that claim more
/// than there is, overlong varints, deep unknown groups, and bytes that are no protobuf at all.
func protobufSeeds<M: Message>(_ valid: [(String, M)]) -> [(name: String, bytes: Data)] {
    var seeds: [(name: String, bytes: Data)] = []
    for (name, message) in valid {
        guard let bytes: Data = try? message.serializedBytes() else { continue }
        seeds.append(("valid-\(name)", bytes))
        if bytes.count > 1 {
            seeds.append(("truncated-\(name)", bytes.prefix(bytes.count / 2)))
            seeds.append(("truncated-last-byte-\(name)", bytes.dropLast()))
        }
        // The same message twice: proto merges concatenated encodings.
        seeds.append(("concatenated-\(name)", bytes + bytes))
        // The message followed by unknown fields of every wire type.
        seeds.append(("unknown-fields-\(name)", bytes + Hostile.unknownFieldsOfEveryType))
    }
    seeds.append(("empty", Data()))
    seeds.append(contentsOf: Hostile.protobuf)
    return seeds
}

enum Hostile {
    static func varint(_ value: UInt64) -> [UInt8] {
        var value = value
        var bytes: [UInt8] = []
        while value >= 0x80 {
            bytes.append(UInt8(value & 0x7F) | 0x80)
            value >>= 7
        }
        bytes.append(UInt8(value))
        return bytes
    }

    static func tag(_ field: UInt64, _ wireType: UInt64) -> [UInt8] { varint(field << 3 | wireType) }

    /// Field 1000 as varint, fixed64, length-delimited, group and fixed32.
    static var unknownFieldsOfEveryType: Data {
        var bytes: [UInt8] = []
        bytes += tag(1000, 0) + varint(UInt64.max)
        bytes += tag(1001, 1) + [1, 2, 3, 4, 5, 6, 7, 8]
        bytes += tag(1002, 2) + varint(3) + [0x61, 0x62, 0x63]
        bytes += tag(1003, 3) + tag(1, 0) + varint(7) + tag(1003, 4)
        bytes += tag(1004, 5) + [1, 2, 3, 4]
        return Data(bytes)
    }

    static var protobuf: [(name: String, bytes: Data)] {
        var seeds: [(String, Data)] = []
        // Length-delimited field 1 claiming 4 GiB and 2^63 bytes with almost nothing behind it.
        seeds.append(("length-4GiB", Data(tag(1, 2) + varint(0xFFFF_FFFF) + [0x41])))
        seeds.append(("length-2^63", Data(tag(1, 2) + varint(1 << 63) + [0x41])))
        // An 11-byte varint (one byte too long) and a 10-byte varint with high bits set.
        seeds.append(("varint-overlong", Data(tag(2, 0) + [UInt8](repeating: 0xFF, count: 10) + [0x01])))
        seeds.append(
            ("varint-10-bytes", Data(tag(3, 0) + [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]))
        )
        // Field number 0, the largest field number, and one past it.
        seeds.append(("field-zero", Data(tag(0, 0) + [1])))
        seeds.append(("field-max", Data(tag(536_870_911, 0) + [1])))
        seeds.append(("field-too-large", Data(varint(536_870_912 << 3) + [1])))
        // Wire types 6 and 7 do not exist; an end-group with no start.
        seeds.append(("wiretype-6", Data(tag(1, 6) + [1])))
        seeds.append(("wiretype-7", Data(tag(1, 7) + [1])))
        seeds.append(("end-group-alone", Data(tag(5, 4))))
        // Unknown groups (field 15: one-byte tags) nested 99, 100 and 1000 deep; the default depth
        // limit is 100.
        for depth in [99, 100, 1000] {
            let open = Array(repeating: tag(15, 3), count: depth).joined()
            let close = Array(repeating: tag(15, 4), count: depth).joined()
            seeds.append(("unknown-groups-depth-\(depth)", Data(open) + Data(close)))
        }
        // Unterminated groups 2000 deep.
        seeds.append(("unknown-groups-unterminated", Data(Array(repeating: tag(15, 3), count: 2000).joined())))
        // Length-delimited fields nested 500 deep (the decoder may parse them as messages).
        var nested: [UInt8] = tag(1, 0) + [1]
        for _ in 0..<500 { nested = tag(5, 2) + varint(UInt64(nested.count)) + nested }
        seeds.append(("length-delimited-nested-500", Data(nested)))
        // 1000 one-byte strings in field 4 (argv in SubmitRequest), 1000 empty map entries in field 7
        // (env / labels) and 2000 packed varints in field 3. (Seeds stay small: large ones slow every
        // mutation down; libFuzzer grows inputs up to -max_len by itself.)
        seeds.append(("repeated-1000", Data(Array(repeating: tag(4, 2) + [1, 0x61], count: 1000).joined())))
        seeds.append(("map-entries-1000", Data(Array(repeating: tag(7, 2) + [0], count: 1000).joined())))
        let packed = [UInt8](repeating: 0x01, count: 2000)
        seeds.append(("packed-2000", Data(tag(3, 2) + varint(UInt64(packed.count)) + packed)))
        // Invalid UTF-8 in string field 1 and field 2, and a string holding NUL bytes.
        seeds.append(("string-invalid-utf8", Data(tag(1, 2) + [3, 0xC3, 0x28, 0xFF] + tag(2, 2) + [2, 0xED, 0xA0])))
        seeds.append(("string-nul", Data(tag(1, 2) + [3, 0x61, 0x00, 0x62])))
        // Garbage.
        var generator = SplitMix64(seed: 0x4A4E_4741_5230)
        seeds.append(("garbage-256", Data((0..<256).map { _ in UInt8(truncatingIfNeeded: generator.next()) })))
        seeds.append(("garbage-ff", Data(repeating: 0xFF, count: 64)))
        seeds.append(("garbage-text", Data("{\"job_id\": \"j1\"}\n".utf8)))
        return seeds
    }
}

/// A small deterministic generator for garbage seeds.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
