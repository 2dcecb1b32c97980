import Foundation
import Glibc
import Synchronization

/// Containment beyond the process group that the monitor thread drives: in the process runtime, the
/// job's cgroup. The monitor polls ``check()`` while the program runs and calls ``killAll()``
/// whenever it kills the program.
public protocol SandboxContainment: Sendable {
    /// How often the monitor thread calls ``check()`` while the program runs; nil for never.
    var checkInterval: Duration? { get }

    /// Called on the monitor thread; a limit here gets the sandbox killed, with kill reason
    /// ``SandboxResult/KillReason/timedOut`` and ``SandboxResult/exceededLimit`` set.
    func check() -> SandboxLimit?

    /// Kills every process of the sandbox, wherever it sits in the process tree. Called on the
    /// monitor thread each time it kills the program.
    func killAll()
}

/// One program for ``SandboxProcess`` to spawn, with its limits.
public struct SandboxCommand: Sendable {
    /// Absolute path of the program; it is not looked up in `PATH`.
    public var executable: String
    /// The whole argv, including argv[0].
    public var arguments: [String]
    /// The complete environment as `KEY=VALUE` strings; nothing is inherited from the node.
    public var environment: [String]
    /// Written to the program's stdin, which is closed afterwards.
    public var stdin: Data
    /// Wall-clock limit counted from the spawn; at the deadline the process group is killed.
    public var timeout: Duration
    /// Bytes kept per stream (stdout, stderr); a stream going over it gets the process group killed.
    public var outputLimit: Int
    /// Descriptors the child receives as 3, 4, … in this order. They are duplicated when the
    /// ``SandboxProcess`` is created, so the caller may close its own copies right after.
    public var inheritedFiles: [Int32]
    /// How long to keep reading the pipes after a kill, or after the program exited while
    /// something else still holds them, before closing them regardless.
    public var drainTimeout: Duration
    /// Polled and killed along with the program, if set.
    public var containment: (any SandboxContainment)?
    /// Whether the program copies the sandbox's output through pipes of its own (runc in the
    /// foreground does): then a kill (timeout, output limit, cancel) kills the sandbox's processes
    /// through ``containment`` only and lets the program finish copying what they wrote and exit,
    /// so no output written before the kill is lost; its process group is killed when
    /// ``relayDrainTimeout`` runs out. Without a containment it changes nothing.
    public var relaysOutput = false
    /// How long a program that ``relaysOutput`` has after a kill to pass the rest on and exit.
    public static let relayDrainTimeout = Duration.seconds(2)
    /// Gets the kept output as it is read (the job's own program only; see ``OutputTap``).
    public var tap: OutputTap?
    /// Where the process is noted while it runs (the node's ``NodeResources/ledger``), so that a
    /// node started after this one crashed can kill its process group; nil for nowhere.
    public var ledger: SandboxLedger?

    /// A command; see the properties for what each argument means.
    public init(
        executable: String,
        arguments: [String],
        environment: [String] = [],
        stdin: Data = Data(),
        timeout: Duration,
        outputLimit: Int,
        inheritedFiles: [Int32] = [],
        drainTimeout: Duration = .seconds(2),
        containment: (any SandboxContainment)? = nil,
        ledger: SandboxLedger? = nil
    ) {
        self.executable = executable
        self.arguments = arguments
        self.environment = environment
        self.stdin = stdin
        self.timeout = timeout
        self.outputLimit = outputLimit
        self.inheritedFiles = inheritedFiles
        self.drainTimeout = drainTimeout
        self.containment = containment
        self.ledger = ledger
    }
}

/// What happened to a process spawned by ``SandboxProcess``.
public struct SandboxResult: Sendable {
    /// How the process ended, as `wait4` reported it.
    public enum Termination: Sendable, Equatable {
        case exited(Int32)
        case signaled(Int32)
        /// Reaped by someone else (the node ignores SIGCHLD), so the status is unknown.
        case lost
    }

    /// Why the monitor killed the process group, if it did.
    public enum KillReason: Sendable, Equatable {
        case timedOut
        case outputLimit
        case cancelled
    }

    /// The process id; it has been reaped by the time the result exists.
    public var pid: pid_t
    public var termination: Termination
    public var killReason: KillReason?
    /// The limit the ``SandboxContainment`` reported, when that is why the monitor killed the
    /// process (the kill reason is then `.timedOut`).
    public var exceededLimit: SandboxLimit?
    /// At most `outputLimit` bytes of each stream.
    public var stdout = Data()
    public var stderr = Data()
    public var stdoutTruncated = false
    public var stderrTruncated = false
    /// Bytes read from each stream, including those beyond the cap.
    public var stdoutBytes: UInt64 = 0
    public var stderrBytes: UInt64 = 0
    /// From creating the ``SandboxProcess`` until `posix_spawn` returned.
    public var spawnTime: Duration = .zero
    /// From the spawn until the process was seen to exit.
    public var runTime: Duration = .zero
    /// User plus system CPU time of the process and the descendants it waited for.
    public var cpuTimeMicroseconds: UInt64 = 0
    /// Largest resident set of the process or a waited-for descendant.
    public var peakMemoryBytes: UInt64 = 0

    /// A result with no output and no resource figures yet.
    public init(pid: pid_t, termination: Termination) {
        self.pid = pid
        self.termination = termination
    }
}

/// A limit that a ``SandboxContainment`` watches, beyond the wall clock and the output cap.
public enum SandboxLimit: Sendable, Equatable {
    /// The CPU time of all the sandbox's processes together.
    case cpuTime
}

/// Why a ``SandboxProcess`` could not start.
public struct SandboxSpawnError: Error, Sendable, CustomStringConvertible {
    public var description: String

    /// An error that reads `description`.
    public init(_ description: String) {
        self.description = description
    }
}

/// A child process spawned with `posix_spawn` and watched by its own thread, which cannot hang:
/// only fds 0, 1, 2 (plus ``SandboxCommand/inheritedFiles``) reach the child, it runs in a new
/// session with default signal state, a `poll()` loop feeds stdin, caps stdout and stderr and
/// enforces the deadline, and the child is always reaped.
///
/// The spawn itself happens on the monitor thread, never on the caller's: `bwrap --die-with-parent`
/// (`PR_SET_PDEATHSIG`) fires when the spawning *thread* exits, and a cooperative-pool thread may
/// retire while the job runs. The monitor thread lives until the child is reaped.
public final class SandboxProcess: Sendable {
    private let cancelRequested = Atomic<Bool>(false)
    /// The process's pid once spawned; 0 before (or when the spawn failed).
    private let spawnedPID = Atomic<Int32>(0)
    /// Write end of the wake-up pipe; -1 once the monitor closed it. Writes happen under the lock so
    /// they never race the close (and never hit a closed reader, which would raise SIGPIPE).
    private let wakeWriter: Mutex<Int32>
    private let completion = Mutex(Completion())

    private struct Completion {
        var result: Result<SandboxResult, SandboxSpawnError>?
        var waiters: [CheckedContinuation<Result<SandboxResult, SandboxSpawnError>, Never>] = []
        /// Whether the monitor has announced the pid (or the spawn failed, or the process ended).
        var announced = false
        var spawnWaiters: [CheckedContinuation<Void, Never>] = []
    }

    /// Prepares the pipes and starts the monitor thread, which spawns the program.
    /// - Throws: ``SandboxSpawnError`` when the command is malformed or descriptors run out;
    ///   failures of `posix_spawn` itself are reported by ``wait()``.
    public init(_ command: SandboxCommand) throws(SandboxSpawnError) {
        let created = ContinuousClock.now
        try Self.validate(command)
        let fds = try ChildDescriptors(inheriting: command.inheritedFiles)
        wakeWriter = Mutex(fds.wakeWrite)
        let job = MonitorJob(command: command, fds: fds, created: created, ledger: command.ledger)
        let thread = Thread { [self] in
            self.finish(
                job.run(
                    cancelRequested: self.cancelRequested,
                    spawned: { self.announce($0) },
                    closeWaker: self.closeWaker
                )
            )
        }
        thread.name = "hangar-sandbox"
        thread.start()
    }

    /// Spawns `command`, waits for it, and kills it if the calling task is cancelled.
    public static func run(_ command: SandboxCommand) async throws(SandboxSpawnError) -> SandboxResult {
        try await SandboxProcess(command).waitKillingOnCancellation()
    }

    /// The process's pid once it is spawned (it may have ended since); nil before, or when the
    /// spawn failed.
    public var pid: pid_t? {
        let pid = spawnedPID.load(ordering: .sequentiallyConsistent)
        return pid > 0 ? pid : nil
    }

    /// The process's pid once the monitor thread has announced it; nil when the spawn failed. The
    /// spawned program can be up and answering before the monitor thread gets to announce its pid:
    /// whoever needs the pid (to save it for a later node) waits for it here.
    public func spawned() async -> pid_t? {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let ready = completion.withLock { state in
                if state.announced { return true }
                state.spawnWaiters.append(continuation)
                return false
            }
            if ready { continuation.resume() }
        }
        return pid
    }

    /// Whether the process has ended and its result is in (``wait()`` would return at once).
    public var hasEnded: Bool { completion.withLock { $0.result != nil } }

    /// Kills the process group; the result's ``SandboxResult/killReason`` becomes `.cancelled`
    /// unless the process had already ended. Safe to call any number of times, from anywhere.
    public func kill() {
        cancelRequested.store(true, ordering: .sequentiallyConsistent)
        wakeWriter.withLock { fd in
            guard fd >= 0 else { return }
            var byte: UInt8 = 1
            _ = Glibc.write(fd, &byte, 1)  // non-blocking; a full pipe already wakes the monitor
        }
    }

    /// Waits until the process has ended and been reaped.
    /// - Throws: ``SandboxSpawnError`` when `posix_spawn` failed.
    public func wait() async throws(SandboxSpawnError) -> SandboxResult {
        try await waitForResult().get()
    }

    /// Like ``wait()``, and calls ``kill()`` if the calling task is cancelled meanwhile.
    public func waitKillingOnCancellation() async throws(SandboxSpawnError) -> SandboxResult {
        try await withTaskCancellationHandler {
            await waitForResult()
        } onCancel: {
            kill()
        }.get()
    }

    private func waitForResult() async -> Result<SandboxResult, SandboxSpawnError> {
        await withCheckedContinuation { continuation in
            let ready = completion.withLock { state -> Result<SandboxResult, SandboxSpawnError>? in
                if let result = state.result { return result }
                state.waiters.append(continuation)
                return nil
            }
            if let ready { continuation.resume(returning: ready) }
        }
    }

    private func closeWaker() {
        wakeWriter.withLock { fd in
            if fd >= 0 { Glibc.close(fd) }
            fd = -1
        }
    }

    private func announce(_ pid: pid_t) {
        spawnedPID.store(pid, ordering: .sequentiallyConsistent)
        let waiters = completion.withLock { state in
            state.announced = true
            defer { state.spawnWaiters = [] }
            return state.spawnWaiters
        }
        for waiter in waiters { waiter.resume() }
    }

    private func finish(_ result: Result<SandboxResult, SandboxSpawnError>) {
        let (waiters, spawnWaiters) = completion.withLock { state in
            state.result = result
            state.announced = true
            defer { (state.waiters, state.spawnWaiters) = ([], []) }
            return (state.waiters, state.spawnWaiters)
        }
        for waiter in spawnWaiters { waiter.resume() }
        for waiter in waiters { waiter.resume(returning: result) }
    }

    private static func validate(_ command: SandboxCommand) throws(SandboxSpawnError) {
        guard command.executable.hasPrefix("/") else {
            throw SandboxSpawnError("executable must be an absolute path, got \"\(command.executable)\"")
        }
        guard !command.arguments.isEmpty else { throw SandboxSpawnError("arguments are empty (argv[0] is required)") }
        guard command.outputLimit >= 0 else { throw SandboxSpawnError("outputLimit is negative") }
        let strings = [command.executable] + command.arguments + command.environment
        if strings.contains(where: { $0.utf8.contains(0) }) {
            throw SandboxSpawnError("executable, arguments and environment must not contain NUL bytes")
        }
    }
}

/// The descriptors of one spawn. Child-side descriptors are all >= the number the child gets, so
/// the `dup2` file actions that place them at 0, 1, 2, 3… cannot overwrite one another.
private struct ChildDescriptors: Sendable {
    var stdinRead: Int32 = -1, stdinWrite: Int32 = -1
    var stdoutRead: Int32 = -1, stdoutWrite: Int32 = -1
    var stderrRead: Int32 = -1, stderrWrite: Int32 = -1
    var wakeRead: Int32 = -1, wakeWrite: Int32 = -1
    var inherited: [Int32] = []

    /// The descriptors the child gets, in order: 0, 1, 2, 3…
    var childSide: [Int32] { [stdinRead, stdoutWrite, stderrWrite] + inherited }

    init(inheriting files: [Int32]) throws(SandboxSpawnError) {
        let lowest = Int32(3 + files.count)
        var opened: [Int32] = []
        do {
            (stdinRead, stdinWrite) = try Self.pipe(lowest: lowest, &opened)
            (stdoutRead, stdoutWrite) = try Self.pipe(lowest: lowest, &opened)
            (stderrRead, stderrWrite) = try Self.pipe(lowest: lowest, &opened)
            (wakeRead, wakeWrite) = try Self.pipe(lowest: lowest, &opened)
            for fd in [stdinWrite, stdoutRead, stderrRead, wakeRead, wakeWrite] {
                _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)  // our ends only
            }
            for file in files {
                inherited.append(try Self.duplicate(file, lowest: lowest, &opened))
            }
        } catch {
            for fd in opened { close(fd) }
            throw error
        }
    }

    private static func pipe(lowest: Int32, _ opened: inout [Int32]) throws(SandboxSpawnError) -> (Int32, Int32) {
        var ends: [Int32] = [-1, -1]
        guard GlibcExtensions.pipeCloexec(&ends) == 0 else {
            throw SandboxSpawnError("pipe2 failed: \(String(cString: strerror(errno)))")
        }
        opened += ends
        return (
            try duplicate(ends[0], lowest: lowest, &opened, closing: true),
            try duplicate(ends[1], lowest: lowest, &opened, closing: true)
        )
    }

    /// A close-on-exec copy of `fd` numbered at least `lowest`; `closing` replaces `fd` by it.
    private static func duplicate(
        _ fd: Int32,
        lowest: Int32,
        _ opened: inout [Int32],
        closing: Bool = false
    ) throws(SandboxSpawnError) -> Int32 {
        if closing && fd >= lowest { return fd }
        let copy = fcntl(fd, F_DUPFD_CLOEXEC, lowest)
        guard copy >= 0 else {
            throw SandboxSpawnError("cannot duplicate descriptor \(fd): \(String(cString: strerror(errno)))")
        }
        opened.append(copy)
        if closing {
            close(fd)
            opened.removeAll { $0 == fd }
        }
        return copy
    }
}

/// GNU extensions the Swift Glibc module does not import (they sit behind `_GNU_SOURCE`), looked up
/// at run time. glibc has had `pipe2` since 2.9 and `posix_spawn_file_actions_addclosefrom_np`
/// since 2.34.
enum GlibcExtensions {
    /// `POSIX_SPAWN_SETSID` from `<spawn.h>` (glibc 2.26+), also hidden behind `_GNU_SOURCE`.
    static let spawnSetSID: Int32 = 0x80

    private typealias Pipe2 = @convention(c) (UnsafeMutablePointer<Int32>?, Int32) -> Int32
    private typealias AddClosefrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>?, Int32) -> Int32
    private typealias MemfdCreate = @convention(c) (UnsafePointer<CChar>?, UInt32) -> Int32

    private static let pipe2: Pipe2? = symbol("pipe2")
    private static let addClosefrom: AddClosefrom? = symbol("posix_spawn_file_actions_addclosefrom_np")
    private static let memfdCreate: MemfdCreate? = symbol("memfd_create")

    private static func symbol<T>(_ name: String) -> T? {
        guard let handle = dlopen(nil, RTLD_NOW), let address = dlsym(handle, name) else { return nil }
        return unsafeBitCast(address, to: T.self)
    }

    /// `pipe2(fds, O_CLOEXEC)`, or `pipe` then `FD_CLOEXEC` where `pipe2` is missing.
    static func pipeCloexec(_ fds: UnsafeMutablePointer<Int32>) -> Int32 {
        if let pipe2 { return pipe2(fds, O_CLOEXEC) }
        guard pipe(fds) == 0 else { return -1 }
        _ = fcntl(fds[0], F_SETFD, FD_CLOEXEC)
        _ = fcntl(fds[1], F_SETFD, FD_CLOEXEC)
        return 0
    }

    /// Adds "close every descriptor from `lowest` up" to `actions`; false when glibc lacks it, in
    /// which case only close-on-exec keeps stray descriptors out of the child.
    static func addClosefrom(_ actions: inout posix_spawn_file_actions_t, _ lowest: Int32) -> Bool {
        guard let addClosefrom else { return false }
        return addClosefrom(&actions, lowest) == 0
    }

    /// An anonymous close-on-exec memory file, or an unlinked temporary file without `memfd_create`.
    static func anonymousFile(named name: String) -> Int32 {
        if let memfdCreate { return memfdCreate(name, 1) }  // MFD_CLOEXEC
        var template = Array("/tmp/hangar-XXXXXX".utf8CString)
        let fd = mkstemp(&template)
        if fd >= 0 {
            unlink(template)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        }
        return fd
    }
}

/// Everything the monitor thread owns: the command and the parent's ends of the pipes.
private struct MonitorJob: Sendable {
    let command: SandboxCommand
    let fds: ChildDescriptors
    let created: ContinuousClock.Instant
    /// Where the process is noted while it runs (``SandboxCommand/ledger``), so that a node
    /// started after this one crashed can kill its process group.
    let ledger: SandboxLedger?

    /// Spawns the program, watches it, reaps it. Runs on the dedicated monitor thread.
    func run(
        cancelRequested: borrowing Atomic<Bool>,
        spawned announce: (pid_t) -> Void,
        closeWaker: () -> Void
    ) -> Result<SandboxResult, SandboxSpawnError> {
        var blocked = sigset_t()
        sigemptyset(&blocked)
        sigaddset(&blocked, SIGPIPE)  // a reader that went away gives EPIPE instead of killing the node
        pthread_sigmask(SIG_BLOCK, &blocked, nil)

        let spawned = spawn()
        for fd in fds.childSide { close(fd) }
        switch spawned {
        case .failure(let error):
            for fd in [fds.stdinWrite, fds.stdoutRead, fds.stderrRead, fds.wakeRead] { close(fd) }
            closeWaker()
            return .failure(error)
        case .success(let pid):
            announce(pid)
            let noted =
                ledger?.isOpen == true
                ? SandboxLedger.startTime(of: pid).map { SandboxLedger.Resource.process(pid: pid, start: $0) } : nil
            if let noted { ledger?.made(noted) }
            var loop = PollLoop(pid: pid, command: command, fds: fds)
            loop.run(cancelRequested: cancelRequested)
            closeWaker()
            close(fds.wakeRead)
            var result = loop.reap()
            if let noted { ledger?.gone(noted) }
            result.spawnTime = loop.started - created
            return .success(result)
        }
    }

    private func spawn() -> Result<pid_t, SandboxSpawnError> {
        var actions = posix_spawn_file_actions_t()
        var attributes = posix_spawnattr_t()
        posix_spawn_file_actions_init(&actions)
        posix_spawnattr_init(&attributes)
        defer {
            posix_spawn_file_actions_destroy(&actions)
            posix_spawnattr_destroy(&attributes)
        }
        let childSide = fds.childSide
        for (target, source) in childSide.enumerated() {
            guard posix_spawn_file_actions_adddup2(&actions, source, Int32(target)) == 0 else {
                return .failure(SandboxSpawnError("posix_spawn_file_actions_adddup2 failed"))
            }
        }
        _ = GlibcExtensions.addClosefrom(&actions, Int32(childSide.count))
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        var allSignals = sigset_t()
        sigfillset(&allSignals)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        posix_spawnattr_setsigdefault(&attributes, &allSignals)
        let flags = GlibcExtensions.spawnSetSID | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF
        posix_spawnattr_setflags(&attributes, Int16(flags))

        let argv = command.arguments.map { strdup($0) } + [nil]
        let envp = command.environment.map { strdup($0) } + [nil]
        defer { for pointer in argv + envp { free(pointer) } }
        var pid: pid_t = 0
        let status = posix_spawn(&pid, command.executable, &actions, &attributes, argv, envp)
        guard status == 0 else {
            return .failure(
                SandboxSpawnError("cannot start \(command.executable): \(String(cString: strerror(status)))")
            )
        }
        return .success(pid)
    }
}

// MARK: - The poll loop

/// The monitor thread's view of a running child. Owned by that thread alone.
private struct PollLoop {
    typealias Instant = ContinuousClock.Instant

    let pid: pid_t
    let command: SandboxCommand
    let wakeRead: Int32
    var stdinFD: Int32
    var stdinOffset = 0
    var stdout: Capture
    var stderr: Capture
    let clock = ContinuousClock()
    let started: Instant
    let deadline: Instant
    var exitedAt: Instant?
    /// When to stop waiting for the pipes; set by a kill or by the program's exit.
    var drainUntil: Instant?
    /// When to next call the containment's check, if it wants checks.
    var nextCheck: Instant?
    var killReason: SandboxResult.KillReason?
    var exceededLimit: SandboxLimit?

    init(pid: pid_t, command: SandboxCommand, fds: ChildDescriptors) {
        self.pid = pid
        self.command = command
        wakeRead = fds.wakeRead
        stdinFD = fds.stdinWrite
        stdout = Capture(fd: fds.stdoutRead, limit: command.outputLimit, tap: command.tap, stream: .stdout)
        stderr = Capture(fd: fds.stderrRead, limit: command.outputLimit, tap: command.tap, stream: .stderr)
        started = clock.now
        deadline = started + command.timeout
        if let interval = command.containment?.checkInterval { nextCheck = started + interval }
        if command.stdin.isEmpty { closeStdin() }
    }

    /// Returns once the program exited and its pipes are closed, or the drain time ran out.
    mutating func run(cancelRequested: borrowing Atomic<Bool>) {
        var scratch = [UInt8](repeating: 0, count: 64 * 1024)
        var idle = Duration.milliseconds(1)
        while true {
            let now = clock.now
            if exitedAt == nil && hasExited() {
                exitedAt = now
                if drainUntil == nil { drainUntil = now + command.drainTimeout }
            }
            if exitedAt == nil && killReason == nil {
                if cancelRequested.load(ordering: .sequentiallyConsistent) {
                    terminate(.cancelled)
                } else if now >= deadline {
                    terminate(.timedOut)
                } else if let check = nextCheck, now >= check, let containment = command.containment {
                    nextCheck = now + (containment.checkInterval ?? .seconds(1))
                    if let limit = containment.check() {
                        exceededLimit = limit
                        terminate(.timedOut)
                    }
                }
            }
            let streamsOpen = stdout.isOpen || stderr.isOpen
            if exitedAt != nil && !streamsOpen { return }
            if let drainUntil, now >= drainUntil { return }
            // Open pipes wake us on output and EOF; the exit itself is only seen by asking, so ask
            // every 50 ms, and more eagerly (1, 2, 4… ms) once the pipes are closed and exit is near.
            var timeout = streamsOpen ? Duration.milliseconds(50) : idle
            if !streamsOpen { idle = min(idle * 2, .milliseconds(50)) }
            if exitedAt == nil && killReason == nil {
                timeout = min(timeout, deadline - now)
                if let nextCheck { timeout = min(timeout, nextCheck - now) }
            }
            if let drainUntil { timeout = min(timeout, drainUntil - now) }
            pollOnce(timeout: timeout, scratch: &scratch)
        }
    }

    /// Closes what is left, sweeps the process group and reaps the child with `wait4`.
    mutating func reap() -> SandboxResult {
        closeStdin()
        stdout.close()
        stderr.close()
        // Nothing the job started may outlive it. The child is not reaped yet, so its pid (the
        // group id, thanks to setsid) cannot have been reused by an unrelated process group.
        Glibc.kill(-pid, SIGKILL)
        var status: Int32 = 0
        var usage = rusage()
        var reaped: pid_t
        repeat { reaped = wait4(pid, &status, 0, &usage) } while reaped < 0 && errno == EINTR

        let termination: SandboxResult.Termination
        if reaped != pid {
            termination = .lost
        } else if status & 0x7f == 0 {
            termination = .exited((status >> 8) & 0xff)
        } else {
            termination = .signaled(status & 0x7f)
        }
        var result = SandboxResult(pid: pid, termination: termination)
        result.killReason = killReason
        result.exceededLimit = exceededLimit
        result.stdout = stdout.data
        result.stderr = stderr.data
        result.stdoutTruncated = stdout.truncated
        result.stderrTruncated = stderr.truncated
        result.stdoutBytes = stdout.total
        result.stderrBytes = stderr.total
        result.runTime = (exitedAt ?? clock.now) - started
        if reaped == pid {
            let user = UInt64(usage.ru_utime.tv_sec) * 1_000_000 + UInt64(usage.ru_utime.tv_usec)
            let system = UInt64(usage.ru_stime.tv_sec) * 1_000_000 + UInt64(usage.ru_stime.tv_usec)
            result.cpuTimeMicroseconds = user + system
            result.peakMemoryBytes = UInt64(usage.ru_maxrss) * 1024
        }
        return result
    }

    /// Whether the child has exited, without reaping it (`WNOWAIT`), so its pid stays reserved.
    private func hasExited() -> Bool {
        var info = siginfo_t()
        if waitid(P_PID, id_t(pid), &info, WEXITED | WNOHANG | WNOWAIT) != 0 {
            return errno == ECHILD  // reaped behind our back (SIGCHLD ignored): it is gone
        }
        return info.si_signo == SIGCHLD
    }

    private mutating func terminate(_ reason: SandboxResult.KillReason) {
        guard killReason == nil else { return }
        killReason = reason
        let relayed = command.relaysOutput && command.containment != nil
        if !relayed {
            Glibc.kill(-pid, SIGKILL)
            Glibc.kill(pid, SIGKILL)
        }
        // A relaying program is killed by reap() once it exited or the drain time ran out.
        command.containment?.killAll()
        let limit =
            clock.now + (relayed ? max(command.drainTimeout, SandboxCommand.relayDrainTimeout) : command.drainTimeout)
        drainUntil = min(drainUntil ?? limit, limit)
        closeStdin()
    }

    private mutating func pollOnce(timeout: Duration, scratch: inout [UInt8]) {
        // poll() ignores negative descriptors, so closed streams can keep their slot.
        var entries = [
            pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0),
            pollfd(fd: stdinFD, events: Int16(POLLOUT), revents: 0),
            pollfd(fd: stdout.fd, events: Int16(POLLIN), revents: 0),
            pollfd(fd: stderr.fd, events: Int16(POLLIN), revents: 0),
        ]
        guard poll(&entries, nfds_t(entries.count), Self.milliseconds(timeout)) > 0 else { return }
        if entries[0].revents != 0 {
            var sink = [UInt8](repeating: 0, count: 64)
            while Glibc.read(wakeRead, &sink, sink.count) > 0 {}
        }
        if entries[1].revents != 0 { writeStdin() }
        if entries[2].revents != 0 && stdout.read(&scratch) { terminate(.outputLimit) }
        if entries[3].revents != 0 && stderr.read(&scratch) { terminate(.outputLimit) }
    }

    private mutating func writeStdin() {
        guard stdinFD >= 0 else { return }
        let remaining = command.stdin.count - stdinOffset
        let written = command.stdin.withUnsafeBytes { bytes in
            Glibc.write(stdinFD, bytes.baseAddress! + stdinOffset, min(remaining, 64 * 1024))
        }
        if written > 0 {
            stdinOffset += written
            if stdinOffset >= command.stdin.count { closeStdin() }
        } else if written == 0 || (errno != EAGAIN && errno != EINTR) {
            closeStdin()  // EPIPE: the program does not want the rest
        }
    }

    private mutating func closeStdin() {
        if stdinFD >= 0 { Glibc.close(stdinFD) }
        stdinFD = -1
    }

    private static func milliseconds(_ duration: Duration) -> Int32 {
        guard duration > .zero else { return 0 }
        let (seconds, attoseconds) = duration.components
        return Int32(clamping: seconds * 1000 + (attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000)
    }
}

/// One captured output stream, capped at `limit` bytes.
private struct Capture {
    private(set) var fd: Int32
    let limit: Int
    private(set) var data = Data()
    private(set) var total: UInt64 = 0
    private(set) var truncated = false
    let tap: OutputTap?
    let stream: OutputTap.Stream

    init(fd: Int32, limit: Int, tap: OutputTap? = nil, stream: OutputTap.Stream = .stdout) {
        self.fd = fd
        self.limit = limit
        self.tap = tap
        self.stream = stream
    }

    var isOpen: Bool { fd >= 0 }

    /// Reads what is available; true when this read took the stream over its limit.
    mutating func read(_ scratch: inout [UInt8]) -> Bool {
        let count = scratch.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        guard count > 0 else {
            if count == 0 || (errno != EAGAIN && errno != EINTR) { close() }
            return false
        }
        total += UInt64(count)
        let room = limit - data.count
        if room > 0 {
            let kept = scratch[0..<min(room, count)]
            tap?.send(stream, UInt64(data.count), Data(kept))
            data.append(contentsOf: kept)
        }
        guard total > UInt64(limit), !truncated else { return false }
        truncated = true
        return true
    }

    mutating func close() {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
    }
}
