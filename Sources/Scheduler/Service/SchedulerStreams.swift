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

    /// Messages pulled per fetch, and so at most per SQLite transaction.
    static let batch = 256
}

extension Scheduler {
    /// Pulls `config`'s stream in batches and hands each batch to `handle`, for as long as the task
    /// runs. Creates the stream and the durable consumer if missing; when JetStream is unreachable
    /// (nats-server restarting, JetStream off) it logs why and tries again every second. `handle`
    /// returns false when the batch could not be stored: the consumer then pauses briefly.
    nonisolated func consume(
        _ config: JetStreamStreamConfig,
        with jetStream: JetStream,
        handle: @escaping @Sendable ([JetStreamMessage]) async -> Bool
    ) async {
        var lastProblem = ""
        while !Task.isCancelled {
            do {
                try await jetStream.ensureStream(config)
                let consumer = try await jetStream.pullSubscribe(
                    config.subjects[0],
                    durable: Streams.consumer,
                    stream: config.name,
                    ackWait: .seconds(30)
                )
                if !lastProblem.isEmpty {
                    logger.notice("stream consumer running again", metadata: ["stream": "\(config.name)"])
                    lastProblem = ""
                }
                // One pull is always in flight: the next batch arrives while this one is committed.
                let fetch = {
                    Task { try await consumer.fetchAvailable(max: SchedulerStreams.batch, wait: .seconds(1)) }
                }
                var next: Task<[JetStreamMessage], any Error>?
                defer {
                    // Stopping: hand back what was pulled and not handled, for the next consumer.
                    if let next { Task { for message in (try? await next.value) ?? [] { try? message.nak() } } }
                }
                var failures = 0
                while !Task.isCancelled {
                    let pulling = next ?? fetch()
                    next = nil
                    let messages: [JetStreamMessage]
                    do {
                        messages = try await pulling.value
                        failures = 0
                    } catch {
                        failures += 1
                        if failures >= 3 { throw error }  // bind again
                        try? await Task.sleep(for: .milliseconds(500))
                        continue
                    }
                    if messages.isEmpty { continue }
                    next = fetch()
                    if await !handle(messages) {
                        try? await Task.sleep(for: .milliseconds(200))
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
    }

    /// Creates (or updates) both streams before serving, so that the first submission finds its
    /// stream. A failure is logged; submissions are then refused (`intake stream unavailable`) and
    /// the consumers keep trying.
    func ensureStreams(_ jetStream: JetStream) async {
        for config in [SchedulerStreams.submissions, SchedulerStreams.results] {
            do {
                try await jetStream.ensureStream(config)
            } catch {
                logger.error("could not create stream", metadata: ["stream": "\(config.name)", "error": "\(error)"])
            }
        }
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

/// What happens to a stream message once its batch is handled.
enum StreamOutcome {
    case ack, retry, discard
}
