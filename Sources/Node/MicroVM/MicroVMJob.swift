import Foundation
import HangarShared

/// Checks a job spec for the microvm runtime and encodes it as the agent's JOB frame.
enum MicroVMJob {
    /// Files a job may bring.
    static let maxFiles = 256

    /// The JOB frame for `spec`, or why the spec cannot run in a microVM.
    static func frame(_ spec: Hangar_V1_JobSpec, limits: JobLimits) throws(InvalidJob) -> Data {
        guard let program = spec.argv.first, !program.isEmpty else { throw InvalidJob(message: "argv is empty") }
        if (spec.argv + [spec.cwd]).contains(where: { $0.utf8.contains(0) }) {
            throw InvalidJob(message: "argv and cwd must not contain NUL bytes")
        }
        guard spec.template.isEmpty || spec.template == "host" else {
            throw InvalidJob(
                message: "template \"\(spec.template)\" is not available in the microvm runtime (only host)"
            )
        }
        let loopback: Bool
        switch spec.network.mode {
        case .networkNone: loopback = false
        case .networkLoopback: loopback = true
        default:
            throw InvalidJob(
                message: "network mode \(spec.network.mode) is not supported by the microvm runtime "
                    + "(the VM has no network device; only loopback inside the guest)"
            )
        }
        guard spec.filesOut.isEmpty else {
            // The scheduler rejects these (UNSUPPORTED); a node never runs one and returns nothing.
            throw InvalidJob(message: "files_out is not supported by the microvm runtime")
        }
        let workdir = spec.cwd.isEmpty ? "/tmp" : spec.cwd
        guard workdir.hasPrefix("/"), !workdir.pathComponents().contains("..") else {
            throw InvalidJob(message: "cwd must be an absolute path without \"..\", got \"\(spec.cwd)\"")
        }
        let inScratch = workdir == "/tmp" || workdir.hasPrefix("/tmp/")
        if !spec.files.isEmpty {
            guard inScratch else { throw InvalidJob(message: "files need a working directory under /tmp") }
            guard spec.files.count <= maxFiles else {
                throw InvalidJob(message: "at most \(maxFiles) files, got \(spec.files.count)")
            }
            let total = spec.files.reduce(UInt64(0)) { $0 + UInt64($1.content.count) }
            guard total <= limits.fileSizeBytes else {
                throw InvalidJob(message: "files total \(total) bytes, more than the \(limits.fileSizeBytes)-byte /tmp")
            }
            var seen = Set<String>()
            for file in spec.files {
                let parts = file.path.pathComponents(omittingEmpty: false)
                guard !file.path.isEmpty, file.path.utf8.count <= 4096, !file.path.utf8.contains(0),
                    parts.allSatisfy({ !$0.isEmpty && $0 != "." && $0 != ".." }), seen.insert(file.path).inserted
                else {
                    throw InvalidJob(
                        message:
                            "file path \"\(file.path)\" must be relative, unique, without \".\", \"..\" or empty parts"
                    )
                }
            }
        }
        var env = spec.env
        for (key, value) in env where key.isEmpty || key.contains("=") || (key + value).utf8.contains(0) {
            throw InvalidJob(message: "invalid environment variable name \"\(key)\"")
        }
        if env["PATH"] == nil { env["PATH"] = ProcessRuntime.defaultPath }
        if env["HOME"] == nil { env["HOME"] = "/tmp" }
        return GuestProtocol.encodeJob(
            argv: spec.argv,
            environment: env.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" },
            cwd: workdir,
            stdin: spec.stdin,
            files: spec.files.map { (path: $0.path, mode: $0.mode, content: $0.content) },
            limits: GuestLimits(
                timeoutMs: JobLimits.milliseconds(limits.timeout),
                cpuTimeMs: limits.cpuTime.map(JobLimits.milliseconds) ?? 0,
                memoryBytes: limits.memoryBytes,
                pids: UInt64(limits.pids),
                outputBytes: UInt64(limits.outputBytes),
                fileSizeBytes: limits.fileSizeBytes,
                openFiles: UInt64(limits.openFiles),
                cpuMillis: UInt64(limits.cpuMillis),
                loopback: loopback
            )
        )
    }
}
