import Foundation
import Glibc

/// A saved microVM whose guest agent has said READY and waits for its job, to start warm VMs from
/// without booting: qemu's migration stream (`migrate` to a descriptor over QMP), kept in an
/// anonymous memory file, so nothing of it is on disk and it goes when the node does. Every VM
/// restored from it (`-incoming fd:5`) reads its own open file description of that file and gets
/// fresh RAM (copy-on-write: the VM has no disk, and the file is only read); its agent is then sent a
/// SEED frame, which reseeds the guest kernel's RNG and sets its clock (see ``GuestProtocol/encodeSeed()``).
///
/// A restored VM must be started with the same qemu arguments as the saved one: the same memory
/// size and vCPUs, kernel, initramfs and command line, which is why a snapshot belongs to one
/// ``MicroVMHost`` and one (memory, vCPUs) shape.
final class MicroVMSnapshot: Sendable {
    /// The migration stream.
    private let fd: Int32
    let bytes: Int
    let memoryBytes: UInt64
    let vcpus: Int
    /// Boot → agent ready of the VM it was taken from.
    let bootTime: Duration
    /// From READY until the stream was complete.
    let saveTime: Duration

    private init(fd: Int32, bytes: Int, memoryBytes: UInt64, vcpus: Int, bootTime: Duration, saveTime: Duration) {
        self.fd = fd
        self.bytes = bytes
        self.memoryBytes = memoryBytes
        self.vcpus = vcpus
        self.bootTime = bootTime
        self.saveTime = saveTime
    }

    deinit { close(fd) }

    /// A new read-only descriptor of the stream at offset 0, for one restore; the caller closes it.
    func reader() throws(MicroVMError) -> Int32 {
        let copy = open("/proc/self/fd/\(fd)", O_RDONLY | O_CLOEXEC)
        guard copy >= 0 else { throw MicroVMError("cannot reopen the snapshot: \(String(cString: strerror(errno)))") }
        return copy
    }

    /// A snapshot of stream bytes that did not come from qemu (tests of the cold-boot fallback).
    static func unchecked(_ stream: Data, memoryBytes: UInt64, vcpus: Int) throws(MicroVMError) -> MicroVMSnapshot {
        let fd = try MicroVMHost.memoryFile(stream)
        return MicroVMSnapshot(
            fd: fd,
            bytes: stream.count,
            memoryBytes: memoryBytes,
            vcpus: vcpus,
            bootTime: .zero,
            saveTime: .zero
        )
    }

    /// Boots a VM of this shape with a QMP monitor, waits for its agent's READY and saves it. The VM is killed afterwards whatever happens.
    static func take(host: MicroVMHost, memoryBytes: UInt64, vcpus: Int) async throws(MicroVMError) -> MicroVMSnapshot {
        let file = GlibcExtensions.anonymousFile(named: "hangar-microvm-snapshot")
        guard file >= 0 else { throw MicroVMError("memfd_create: \(String(cString: strerror(errno)))") }
        var monitor: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &monitor) == 0 else {
            close(file)
            throw MicroVMError("socketpair: \(String(cString: strerror(errno)))")
        }
        let timeout = host.configuration.bootTimeout + .seconds(60)
        let spawned = host.spawn(memoryBytes: memoryBytes, vcpus: vcpus, lifetime: timeout, extra: .monitor(monitor[1]))
        close(monitor[1])
        let vm: MicroVMHost.RunningVM
        switch spawned {
        case .failure(let error):
            close(monitor[0])
            close(file)
            throw error
        case .success(let running): vm = running
        }
        let ready = await GuestChannel(
            fd: vm.channel,
            mode: .handshake(greeting: Data()),
            outputLimit: 0,
            bootTimeout: host.configuration.bootTimeout,
            jobDeadline: .zero,
            spawned: vm.spawned
        ).run()
        var saved: Result<Duration, MicroVMError> = .failure(MicroVMError("the agent did not get ready"))
        if ready.isReady, let bootTime = ready.readyAfter {
            let began = ContinuousClock.now
            let deadline = began + .seconds(60)
            let socket = monitor[0]
            saved = await Self.onThread { () -> Result<Duration, MicroVMError> in
                do throws(MicroVMError) {
                    try Self.save(monitor: socket, to: file, deadline: deadline)
                    return .success(ContinuousClock.now - began)
                } catch {
                    return .failure(error)
                }
            }
            if case .success(let saveTime) = saved {
                vm.process.kill()
                _ = try? await vm.process.wait()
                close(vm.channel)
                close(monitor[0])
                var status = stat()
                fstat(file, &status)
                return MicroVMSnapshot(
                    fd: file,
                    bytes: Int(status.st_size),
                    memoryBytes: memoryBytes,
                    vcpus: vcpus,
                    bootTime: bootTime,
                    saveTime: saveTime
                )
            }
        }
        vm.process.kill()
        let result = try? await vm.process.wait()
        if ready.isReady { close(vm.channel) }
        close(monitor[0])
        close(file)
        var why: String
        switch saved {
        case .failure(let error) where ready.isReady: why = error.description
        default:
            why = MicroVMHost.Boot(channel: ready, process: result).describeFailure()
        }
        if why.isEmpty { why = "unknown failure" }
        throw MicroVMError("cannot take a snapshot of a microVM: \(why)")
    }

    /// Over QMP: hand qemu `file` and migrate into it, wait until that completed. The VM is not
    /// paused first: a restore resumes only a VM that was running when it was saved (an idle guest
    /// converges at once; qemu pauses it for the last pass). The bandwidth cap (32 MiB/s by
    /// default) is lifted, as the stream goes to memory.
    private static func save(monitor: Int32, to file: Int32, deadline: ContinuousClock.Instant) throws(MicroVMError) {
        var qmp = QMPClient(fd: monitor, deadline: deadline)
        try qmp.connect()
        try qmp.execute("migrate-set-parameters", arguments: ["max-bandwidth": 1 << 40])
        try qmp.execute("getfd", arguments: ["fdname": "snapshot"], passing: file)
        try qmp.execute("migrate", arguments: ["uri": "fd:snapshot"])
        while true {
            let status = try qmp.execute("query-migrate") as? [String: Any] ?? [:]
            switch status["status"] as? String {
            case "completed": return
            case "failed", "cancelled":
                throw MicroVMError(
                    "migration \(status["status"]!): \(status["error-desc"] as? String ?? "no reason given")"
                )
            default:
                guard ContinuousClock.now < deadline else {
                    throw MicroVMError("the migration did not complete in time")
                }
                usleep(20_000)
            }
        }
    }

    private static func onThread<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { continuation in
            let thread = Thread { continuation.resume(returning: body()) }
            thread.name = "hangar-microvm-snapshot"
            thread.start()
        }
    }
}
