import Foundation
import HangarShared

/// The code contexts of one stateful sandbox (issue 17): each a kernel (``CodeKernel``) that the
/// sandbox's agent runs as a background command, with its own state. The node writes a cell to the
/// kernel's stdin and turns the frames the kernel writes to its stdout into `CodeRunEvent`s for the
/// tenant; it enforces the cell's timeout (SIGINT, then SIGKILL after ``interruptGrace``) and the
/// output the node forwards for one cell (``maxCellOutputBytes`` unless set otherwise).
public actor CodeContexts {
    /// A cell's timeout when its request sets none.
    public static let defaultTimeout = Duration.seconds(300)
    /// How long an interrupted cell has to stop before its interpreter is killed.
    public static let interruptGrace = Duration.seconds(2)
    /// Bytes of stdout and stderr forwarded for one cell by default; past them the cell is interrupted.
    public static let maxCellOutputBytes = 8 << 20
    /// Most code contexts one sandbox may hold.
    public static let maxContexts = 16
    /// How long a new kernel has to say it is ready.
    static let readyTimeout = Duration.seconds(30)

    private let agent: SandboxAgentChannel
    private let environment: [String: String]
    private let cellOutputBytes: Int
    private var kernels: [String: CodeKernelSession] = [:]
    /// The default context of each language, made by the first run that names none.
    private var defaults: [String: String] = [:]
    private var made = 0

    /// The contexts of the sandbox behind `agent`, whose commands get `environment` by default;
    /// at most `cellOutputBytes` of a cell's output are forwarded.
    public init(
        agent: SandboxAgentChannel,
        environment: [String: String],
        cellOutputBytes: Int = CodeContexts.maxCellOutputBytes
    ) {
        self.agent = agent
        self.environment = environment
        self.cellOutputBytes = cellOutputBytes
    }

    /// Starts a new context and returns once its kernel is ready; `isDefault`: it is to be its
    /// language's default context (``prepareDefault(language:)``).
    public func create(
        _ request: Hangar_V1_CodeContextCreate,
        isDefault: Bool = false
    ) async throws(CodeContextFailure)
        -> Hangar_V1_CodeContextInfo
    {
        let language = request.language.isEmpty ? "python" : request.language
        guard CodeKernel.languages.contains(language) else {
            throw CodeContextFailure(
                .sandboxInvalidRequest,
                "language '\(language.prefix(64))' has no kernel; use \(CodeKernel.languages.joined(separator: ", "))"
            )
        }
        guard kernels.count < Self.maxContexts else {
            throw CodeContextFailure(
                .sandboxLimitExceeded,
                "this sandbox holds \(Self.maxContexts) code contexts already; remove one first"
            )
        }
        made += 1
        let id = "ctx-\(made)"
        let session = CodeKernelSession(
            id: id,
            language: language,
            cwd: request.cwd,
            environment: environment.merging(request.env) { _, own in own },
            cellOutputBytes: cellOutputBytes,
            isDefault: isDefault,
            agent: agent
        )
        kernels[id] = session
        do {
            try await session.start()
        } catch {
            kernels[id] = nil
            throw error
        }
        return await session.info
    }

    /// Takes over a context whose kernel (`pid`, serving `context`) a node before this one started
    /// in the re-adopted sandbox: the context keeps its id and state. Its environment is the
    /// sandbox's (what its create added is not known any more: a later restart of it goes
    /// without). False when the kernel cannot be taken over or the sandbox holds as many
    /// contexts as it may.
    func restore(pid: UInt32, _ context: CodeKernel.Context) async -> Bool {
        guard kernels[context.id] == nil, kernels.count < Self.maxContexts else { return false }
        let session = CodeKernelSession(
            id: context.id,
            language: context.language,
            cwd: context.cwd,
            environment: environment,
            cellOutputBytes: cellOutputBytes,
            isDefault: context.isDefault,
            agent: agent
        )
        kernels[context.id] = session
        do {
            try await session.start(adopting: pid)
        } catch {
            kernels[context.id] = nil
            return false
        }
        made = max(made, Int(context.id.dropFirst(4)) ?? 0)
        if context.isDefault && defaults[context.language] == nil { defaults[context.language] = context.id }
        return true
    }

    /// Every context, oldest first.
    public func list() async -> [Hangar_V1_CodeContextInfo] {
        var infos: [Hangar_V1_CodeContextInfo] = []
        for id in kernels.keys.sorted(by: Self.creationOrder) {
            if let session = kernels[id] { infos.append(await session.info) }
        }
        return infos
    }

    /// Replaces the kernel of `id` by a new one: its state is gone, its id, language, working
    /// directory and environment stay.
    public func restart(_ id: String) async throws(CodeContextFailure) -> Hangar_V1_CodeContextInfo {
        guard let old = kernels[id] else { throw Self.notFound(id) }
        await old.stop("the context was restarted")
        let session = await old.successor()
        kernels[id] = session
        try await session.start()
        return await session.info
    }

    /// Ends the kernel of `id` and forgets the context.
    public func remove(_ id: String) async throws(CodeContextFailure) {
        guard let session = kernels.removeValue(forKey: id) else { throw Self.notFound(id) }
        defaults = defaults.filter { $0.value != id }
        await session.stop("the context was removed")
    }

    /// Runs one cell: in context `request.contextID`, or in the default context of its language
    /// (made now if need be). The stream ends after `done` or a `failure`.
    public func run(_ request: Hangar_V1_CodeRunRequest) async -> AsyncStream<Hangar_V1_CodeRunEvent> {
        let session: CodeKernelSession
        do throws(CodeContextFailure) {
            session = try await context(for: request)
        } catch {
            return Self.single(.with { $0.failure = error.error })
        }
        let timeout =
            request.timeoutMs > 0 ? Duration.milliseconds(Int64(request.timeoutMs)) : Self.defaultTimeout
        return await session.run(request.code, timeout: timeout)
    }

    private func context(
        for request: Hangar_V1_CodeRunRequest
    ) async throws(CodeContextFailure)
        -> CodeKernelSession
    {
        if !request.contextID.isEmpty {
            guard let session = kernels[request.contextID] else { throw Self.notFound(request.contextID) }
            return session
        }
        let language = request.language.isEmpty ? "python" : request.language
        let id = try await prepareDefault(language: language)
        guard let session = kernels[id] else { throw Self.notFound(id) }
        return session
    }

    /// Makes the default context of `language` unless it exists (what the first run naming no
    /// context does), and returns its id: a warm sandbox's first cell then finds its kernel ready.
    @discardableResult
    public func prepareDefault(language: String = "python") async throws(CodeContextFailure) -> String {
        if let id = defaults[language], kernels[id] != nil { return id }
        let info = try await create(.with { $0.language = language }, isDefault: true)
        defaults[language] = info.id
        return info.id
    }

    private static func notFound(_ id: String) -> CodeContextFailure {
        CodeContextFailure(.sandboxContextNotFound, "no code context '\(id.prefix(64))' in this sandbox")
    }

    /// `ctx-2` before `ctx-10`.
    private static func creationOrder(_ a: String, _ b: String) -> Bool {
        let (x, y) = (Int(a.dropFirst(4)) ?? 0, Int(b.dropFirst(4)) ?? 0)
        return x < y
    }

    static func single(_ event: Hangar_V1_CodeRunEvent) -> AsyncStream<Hangar_V1_CodeRunEvent> {
        AsyncStream { continuation in
            continuation.yield(event)
            continuation.finish()
        }
    }
}

/// Why a code-context request failed, as the tenant's answer says it.
public struct CodeContextFailure: Error, Sendable, CustomStringConvertible {
    /// The answer's error.
    public let error: Hangar_V1_SandboxError

    init(_ code: Hangar_V1_SandboxErrorCode, _ message: String) {
        error = .with {
            $0.code = code
            $0.message = message
        }
    }

    public var description: String { error.message }
}
