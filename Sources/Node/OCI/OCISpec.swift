import Foundation

// The parts of the OCI runtime specification (config.json, spec 1.0.2) that Hangar writes. Field
// names follow the spec exactly; optional fields left nil are omitted from the JSON.

/// A bundle's `config.json`.
struct OCISpec: Codable, Sendable, Equatable {
    var ociVersion = "1.0.2"
    var process: OCIProcess
    var root: OCIRoot
    var hostname: String?
    var mounts: [OCIMount]
    var linux: OCILinux
}

/// The container's one process: what it runs, as whom, with which limits.
struct OCIProcess: Codable, Sendable, Equatable {
    var terminal = false
    var user: OCIUser
    var args: [String]
    var env: [String]
    var cwd: String
    var capabilities: OCICapabilities
    var rlimits: [OCIRlimit]
    var noNewPrivileges = true
}

struct OCIUser: Codable, Sendable, Equatable {
    var uid: UInt32
    var gid: UInt32
    var additionalGids: [UInt32]?
}

/// Capability sets; all empty means the process holds none, not even in its bounding set.
struct OCICapabilities: Codable, Sendable, Equatable {
    var bounding: [String] = []
    var effective: [String] = []
    var inheritable: [String] = []
    var permitted: [String] = []
    var ambient: [String] = []
}

struct OCIRlimit: Codable, Sendable, Equatable {
    /// `RLIMIT_NOFILE`, `RLIMIT_FSIZE`, …
    var type: String
    var hard: UInt64
    var soft: UInt64
}

struct OCIRoot: Codable, Sendable, Equatable {
    /// Relative to the bundle directory.
    var path: String
    var readonly: Bool
}

struct OCIMount: Codable, Sendable, Equatable {
    var destination: String
    var type: String
    var source: String
    var options: [String]
}

struct OCILinux: Codable, Sendable, Equatable {
    var namespaces: [OCINamespace]
    var uidMappings: [OCIIDMapping]?
    var gidMappings: [OCIIDMapping]?
    var cgroupsPath: String?
    var resources: OCIResources
    var seccomp: OCISeccomp?
    var maskedPaths: [String]
    var readonlyPaths: [String]
}

struct OCINamespace: Codable, Sendable, Equatable {
    /// `pid`, `network`, `ipc`, `uts`, `mount`, `user`, `cgroup`.
    var type: String
    /// Join this existing namespace instead of creating one.
    var path: String? = nil
}

struct OCIIDMapping: Codable, Sendable, Equatable {
    var containerID: UInt32
    var hostID: UInt32
    var size: UInt32
}

struct OCIResources: Codable, Sendable, Equatable {
    var devices: [OCIDeviceRule]
    var memory: OCIMemory?
    var cpu: OCICPU?
    var pids: OCIPids?
}

struct OCIDeviceRule: Codable, Sendable, Equatable {
    var allow: Bool
    var access: String
}

struct OCIMemory: Codable, Sendable, Equatable {
    var limit: Int64
    /// Memory plus swap; equal to `limit` means no swap at all.
    var swap: Int64
}

struct OCICPU: Codable, Sendable, Equatable {
    var quota: Int64
    var period: UInt64
}

struct OCIPids: Codable, Sendable, Equatable {
    var limit: Int64
}

struct OCISeccomp: Codable, Sendable, Equatable {
    var defaultAction: String
    var defaultErrnoRet: UInt32?
    var architectures: [String]
    var syscalls: [OCISyscallRule]
}

struct OCISyscallRule: Codable, Sendable, Equatable {
    var names: [String]
    var action: String
    var errnoRet: UInt32?
    var args: [OCISyscallArgument]?
}

struct OCISyscallArgument: Codable, Sendable, Equatable {
    var index: UInt32
    var value: UInt64
    var valueTwo: UInt64?
    /// `SCMP_CMP_EQ`, `SCMP_CMP_MASKED_EQ`, …
    var op: String
}
