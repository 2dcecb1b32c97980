import HangarNATS
import HangarShared

/// The scheduler's two JetStream streams. Both are file-stored work queues with one consumer (the
/// scheduler's durable `hangar-scheduler`, shared by every instance): a message is removed once
/// the scheduler has committed it to SQLite and acknowledged it, so a stream holds exactly the work
/// not yet in the store, and SQLite stays the one place of record. No maximum age (an old
/// unconsumed message is still accepted work); a byte limit that, when reached, refuses new
/// messages rather than dropping old ones.
enum SchedulerStreams {
    /// Admitted submissions (`hangar.intake.<tenant>`), de-duplicated by `<tenant>/<request id>`
    /// for two minutes (after that SQLite's unique key answers a replay).
    static var submissions: JetStreamStreamConfig {
        workQueue(Streams.submissions, capturing: Subjects.intakeWildcard, maxBytes: 256 * 1024 * 1024)
    }

    /// Node results (`hangar.node.<node>.result`), de-duplicated by `<job>/<attempt>`.
    static var results: JetStreamStreamConfig {
        workQueue(Streams.results, capturing: Subjects.nodeResultWildcard, maxBytes: 512 * 1024 * 1024)
    }

    /// A file-stored work queue of `subject` with a two-minute de-duplication window, no maximum
    /// age, and `maxBytes` after which new messages are refused.
    private static func workQueue(_ name: String, capturing subject: String, maxBytes: Int64) -> JetStreamStreamConfig {
        var config = JetStreamStreamConfig(
            name: name,
            subjects: [subject],
            storage: .file,
            retention: .workQueue,
            duplicateWindow: .seconds(120),
            maxAge: .zero,
            maxBytes: maxBytes
        )
        config.discardNew = true
        return config
    }

    /// Messages pulled per fetch.
    static let batch = 256

    /// How long a pulled message may go unacknowledged before the stream delivers it again (see
    /// `consume`): longer than a commit takes, even during a stream election (4-9 s), and short
    /// enough that a message pulled into a dead connection waits well inside a queue deadline.
    static let ackWait = Duration.seconds(10)

    /// Batches of one stream handed to the store and not yet committed, at most.
    static let commitsInFlight = 4

    /// How long a stopping scheduler keeps storing what its streams still hold (see `consume`).
    static let stopDrain = Duration.seconds(2)
}

extension Scheduler {
    /// Pulls `config`'s stream in batches and hands each batch to `handle`, for as long as the task
    /// runs. Creates the stream and the durable consumer if missing; when JetStream is unreachable
    /// (nats-server restarting, JetStream off) it logs why and tries again every second.
    ///
    /// `handle` decides a batch on the actor, queues its writes for the group commit and returns at
    /// once a task that ends when the batch is committed and settled: true, or false when it could
    /// not be stored (its messages come again). The next batch is pulled while earlier ones commit,
    /// at most `SchedulerStreams.commitsInFlight` at a time, so that what arrives during a commit
    /// goes into the next transaction instead of waiting for this one. After a failed batch the
    /// consumer pauses briefly.
    nonisolated func consume(
        _ config: JetStreamStreamConfig,
        with jetStream: JetStream,
        handle: @escaping @Sendable ([JetStreamMessage]) async -> Task<Bool, Never>
    ) async {
        var lastProblem = ""
        var committing: [Task<Bool, Never>] = []
        var bound: JetStreamPullConsumer?
        while !Task.isCancelled {
            do {
                try await jetStream.ensureStream(config)
                // A pull answered into a connection that then died (its server cut off) is
                // delivered again after the ack wait: kept short, so such a submission or result
                // waits seconds, not half a minute. A message still being committed when it comes
                // again is asked for later (`takeIntake`), so a short wait never runs one twice.
                try await jetStream.setAckWait(
                    stream: config.name,
                    durable: Streams.consumer,
                    to: SchedulerStreams.ackWait
                )
                let consumer = try await jetStream.pullSubscribe(
                    config.subjects[0],
                    durable: Streams.consumer,
                    stream: config.name,
                    ackWait: SchedulerStreams.ackWait
                )
                bound = consumer
                if !lastProblem.isEmpty {
                    logger.notice("stream consumer running again", metadata: ["stream": "\(config.name)"])
                    lastProblem = ""
                }
                var failures = 0
                while !Task.isCancelled {
                    if let holds = self.config.holdsLease, !holds() {
                        // Not leading by its own clock (its lease is suspended): take nothing; what
                        // the stream holds waits for this leader's return or for the next one.
                        try? await Task.sleep(for: .milliseconds(100))
                        continue
                    }
                    let messages: [JetStreamMessage]
                    do {
                        // At most two of the largest messages' worth per pull (see `fetchAvailable`).
                        messages = try await consumer.fetchAvailable(
                            max: SchedulerStreams.batch,
                            maxBytes: 2 * maxReplyBytes + 64 * 1024,
                            wait: .seconds(1)
                        )
                        failures = 0
                    } catch {
                        failures += 1
                        if failures >= 3 { throw error }  // bind again
                        try? await Task.sleep(for: .milliseconds(500))
                        continue
                    }
                    if Task.isCancelled {
                        // Pulled but not handled: hand them back for the next consumer.
                        for message in messages { try? message.nak() }
                        break
                    }
                    if let holds = self.config.holdsLease, !holds() {
                        // The lease was suspended while this pull waited: hand them back too.
                        for message in messages { try? message.nak() }
                        continue
                    }
                    if messages.isEmpty { continue }
                    committing.append(await handle(messages))
                    while committing.count >= SchedulerStreams.commitsInFlight {
                        if await !committing.removeFirst().value {
                            try? await Task.sleep(for: .milliseconds(200))
                        }
                    }
                }
            } catch {
                let problem = "\(error)"
                if problem != lastProblem {
                    logger.error(
                        "stream unavailable; retrying every second",
                        metadata: ["stream": "\(config.name)", "error": "\(problem)"]
                    )
                    lastProblem = problem
                }
                try? await Task.sleep(for: .seconds(1))
            }
        }
        // Stopping gracefully (SIGTERM): what the stream holds now (the results of the jobs that nodes
        // killed as they stopped, submissions accepted a moment ago, messages handed back above) is
        // stored too, for at most `stopDrain`. Cancelled: it stays in the stream for the next
        // scheduler. Either way what was handed over finishes committing and is acknowledged (on a
        // connection that is still open) before the scheduler's `run` returns.
        if let bound, stoppingGracefully.load(ordering: .sequentiallyConsistent) {
            let deadline = ContinuousClock.now + SchedulerStreams.stopDrain
            while ContinuousClock.now < deadline {
                let messages =
                    (try? await bound.fetchAvailable(
                        max: SchedulerStreams.batch,
                        maxBytes: 2 * maxReplyBytes + 64 * 1024,
                        wait: .milliseconds(100)
                    )) ?? []
                if messages.isEmpty { break }
                committing.append(await handle(messages))
            }
        }
        for commit in committing { _ = await commit.value }
    }

    /// Creates (or updates) both streams before serving, so that the first submission finds its
    /// stream. A failure is logged; submissions are then refused (`intake stream unavailable`) and
    /// the consumers keep trying.
    func ensureStreams(_ jetStream: JetStream) async {
        for stream in [SchedulerStreams.submissions, SchedulerStreams.results, SandboxStreams.events] {
            let config = streamConfig(stream)
            do {
                try await jetStream.ensureStream(config)
            } catch {
                logger.error("could not create stream", metadata: ["stream": "\(config.name)", "error": "\(error)"])
            }
        }
    }

    /// `stream` with the configured number of replicas.
    nonisolated func streamConfig(_ stream: JetStreamStreamConfig) -> JetStreamStreamConfig {
        var stream = stream
        stream.replicas = config.streamReplicas
        return stream
    }

    /// Settles one stream message after its batch: `ack` (stored or deliberately ignored), `nak`
    /// (not stored; delivered again shortly) or `term` (undecodable; never again).
    nonisolated func settle(_ message: JetStreamMessage, _ outcome: StreamOutcome) {
        do {
            switch outcome {
            case .ack: try message.ack()
            case .retry: try message.nak(delay: .milliseconds(500))
            case .discard: try message.term()
            }
        } catch {
            // Not fatal: an unacknowledged message is delivered again after the ack wait, and its
            // handling is idempotent.
            logger.warning("could not settle a stream message", metadata: ["error": "\(error)"])
        }
    }
}

extension Scheduler {
    /// Queues a stream batch's writes for the group commit and returns a task that, once they are
    /// committed (or failed), runs `settle` on the actor with the outcome. With nothing to write,
    /// the messages are settled at once.
    func commitStreamBatch(
        _ writes: [StoreWrite],
        _ outcomes: [(JetStreamMessage, StreamOutcome)],
        settle: @escaping @Sendable (isolated Scheduler, (any Error)?) -> Bool
    ) -> Task<Bool, Never> {
        guard !writes.isEmpty else {
            for (stream, outcome) in outcomes { self.settle(stream, outcome) }
            return Task { true }
        }
        let committed = committedSignal(.streamBatch(writes))
        return Task {
            let error = await committed()
            return settle(self, error)
        }
    }

    /// Queues `write` for the group commit now (so it keeps its place after writes queued before
    /// it) and returns a function that waits for the commit: nil when committed, else the error.
    nonisolated func committedSignal(_ write: StoreWrite) -> @Sendable () async -> (any Error)? {
        let (whenCommitted, committed) = Self.commitSignal()
        store.queue(write, whenCommitted: whenCommitted)
        return committed
    }

    /// A completion for a queued write, and a function that waits for it: nil when committed,
    /// else the error.
    nonisolated static func commitSignal() -> (
        whenCommitted: @Sendable ((any Error)?) -> Void, committed: @Sendable () async -> (any Error)?
    ) {
        let (outcome, continuation) = AsyncStream.makeStream(of: (any Error)?.self)
        let whenCommitted: @Sendable ((any Error)?) -> Void = { error in
            continuation.yield(error)
            continuation.finish()
        }
        return (
            whenCommitted,
            {
                for await error in outcome { return error }
                return CancellationError()
            }
        )
    }
}

/// What happens to a stream message once its batch is handled.
enum StreamOutcome {
    case ack, retry, discard
}
