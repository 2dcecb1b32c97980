import Foundation
import GRDB
import HangarShared
import Logging

/// The last store log entry this store applied (table `store_log`, one row), written in the same
/// transaction as the entry's changes: a store knows exactly where it stands in the log.
enum StoreLogPosition {
    static func createTable(_ db: Database) throws {
        try db.execute(
            sql: """
                CREATE TABLE store_log (
                    id INTEGER PRIMARY KEY CHECK (id = 1),
                    applied_seq INTEGER NOT NULL,
                    term INTEGER NOT NULL
                );
                INSERT INTO store_log (id, applied_seq, term) VALUES (1, 0, 0);
                """
        )
    }

    static func read(_ db: Database) throws -> (sequence: UInt64, term: UInt64) {
        let row = try Row.fetchOne(db.cachedStatement(sql: "SELECT applied_seq, term FROM store_log WHERE id = 1"))
        let sequence: Int64 = row?["applied_seq"] ?? 0
        let term: Int64 = row?["term"] ?? 0
        return (UInt64(sequence), UInt64(term))
    }

    static func write(_ db: Database, sequence: UInt64, term: UInt64) throws {
        try db.cachedStatement(sql: "UPDATE store_log SET applied_seq = ?, term = ? WHERE id = 1").execute(
            arguments: [Int64(sequence), Int64(term)]
        )
    }
}

/// A leading store's side of the log: its term, where it stands, and how its batches become
/// entries and get appended (fenced by the expected last sequence).
struct StoreLogWriter: Sendable {
    let log: any StoreLog
    let term: UInt64
    let holder: String
    /// The largest entry the log takes (the NATS server's `max_payload`, less room for headers).
    let maxEntryBytes: Int
    /// Called once when the log shows a newer leader.
    let onDeposed: @Sendable (StoreLogDeposedError) -> Void
    /// The last entry in the log as this store knows it (appended by it, or applied).
    var position: UInt64
    /// The last entry applied to this store (at most `position`).
    var applied: UInt64 = 0
    /// How long an append is retried while the log is unreachable before its writes fail.
    var appendPatience: Duration = .seconds(20)
    /// Set once the log showed a newer leader: every later write fails with it at once.
    var deposed: StoreLogDeposedError?

    /// `writes` as log entries of at most `maxEntryBytes`, each with the indexes of its writes,
    /// and the writes refused (not encodable, or larger than an entry may be).
    func entries(for writes: [StoreWrite], at: Int64) -> (entries: [(Data, [Int])], refused: [(Int, any Error)]) {
        var header = Hangar_V1_StoreLogEntry()
        header.term = term
        header.holder = holder
        header.atMs = at
        let headerBytes = (try? header.serializedData()) ?? Data()
        var entries: [(Data, [Int])] = []
        var refused: [(Int, any Error)] = []
        var current = headerBytes
        var indexes: [Int] = []
        for (index, write) in writes.enumerated() {
            let bytes: Data
            do {
                var record = Hangar_V1_StoreLogWrite()
                record.ops = try write.logOperations()
                bytes = try record.serializedData()
            } catch {
                refused.append((index, error))
                continue
            }
            // Field 4 (`writes`), length-delimited: the tag, the length, the bytes.
            var field = Data([0x22])
            var length = UInt64(bytes.count)
            while length >= 0x80 {
                field.append(UInt8(length & 0x7F) | 0x80)
                length >>= 7
            }
            field.append(UInt8(length))
            field.append(bytes)
            if headerBytes.count + field.count > maxEntryBytes {
                refused.append(
                    (
                        index,
                        StoreLogDecodingError(
                            description:
                                "a store write of \(bytes.count) bytes is larger than the store log takes (\(maxEntryBytes) bytes)"
                        )
                    )
                )
                continue
            }
            if current.count + field.count > maxEntryBytes, !indexes.isEmpty {
                entries.append((current, indexes))
                current = headerBytes
                indexes = []
            }
            current.append(field)
            indexes.append(index)
        }
        if !indexes.isEmpty { entries.append((current, indexes)) }
        return (entries, refused)
    }

    /// Appends `entry` after `position` and returns its sequence. When the log has entries after
    /// `position` it reads the next one: a newer term means this store no longer leads (deposed);
    /// this very entry (an append whose answer was lost) is taken as appended; an older leader's
    /// entry is applied and the append tried after it.
    func append(_ entry: Data, after position: inout UInt64, committer: GroupCommitter) async throws -> UInt64 {
        let messageID = "\(holder).\(term).\(UUID().uuidString)"
        let deadline = ContinuousClock.now + appendPatience
        while true {
            do {
                return try await log.append(entry, after: position, messageID: messageID)
            } catch .notAfter {
                guard let next = try? await log.entry(at: position + 1) else {
                    try await pause(until: deadline)
                    continue
                }
                if next == entry { return position + 1 }
                let decoded = try Hangar_V1_StoreLogEntry(serializedBytes: next)
                if decoded.term > term {
                    let error = StoreLogDeposedError(newerTerm: decoded.term, term: term)
                    let first = committer.logWriter.withLock { writer in
                        defer { writer?.deposed = error }
                        return writer?.deposed == nil
                    }
                    if first { onDeposed(error) }
                    throw error
                }
                let writes = try decoded.writes.map { try StoreWrite(logWrite: $0) }
                // In order: after every entry before it.
                await committer.awaitPendingApply()
                _ = await committer.applyLogged(
                    term: decoded.term,
                    at: decoded.atMs,
                    writes: writes,
                    sequence: position + 1
                )
                position += 1
                committer.logWriter.withLock {
                    $0?.position = position
                    $0?.applied = position
                }
            } catch .unavailable(let detail) {
                guard ContinuousClock.now < deadline else {
                    throw StoreLogError.unavailable("\(detail) (for \(appendPatience))")
                }
                try await pause(until: deadline)
            }
        }
    }

    private func pause(until deadline: ContinuousClock.Instant) async throws {
        guard ContinuousClock.now < deadline else {
            throw StoreLogError.unavailable("no answer for \(appendPatience)")
        }
        try await Task.sleep(for: .milliseconds(100))
    }
}

extension StoreWrite {
    /// The write a log entry's write records (several operations: a stream batch).
    init(logWrite: Hangar_V1_StoreLogWrite) throws {
        let writes = try logWrite.ops.map { try StoreWrite(logOperation: $0) }
        self = writes.count == 1 ? writes[0] : .streamBatch(writes)
    }
}

extension Store {
    /// While this store leads a store log (`lead`): the last entry it appended and applied.
    public var leadingLogPosition: UInt64? { committer.logWriter.withLock { $0?.applied } }

    /// The last store log entry applied to this store (0: none) and the term that wrote it.
    public func logPosition() async throws -> (sequence: UInt64, term: UInt64) {
        try await pool.read { try StoreLogPosition.read($0) }
    }

    /// Applies the log's entries after this store's position, up to `last` (nil: the log's end
    /// as it is now). Returns the position reached. Throws `StoreLogGapError` if the log no
    /// longer holds an entry this store needs.
    @discardableResult
    public func catchUp(from log: any StoreLog, through last: UInt64? = nil) async throws -> UInt64 {
        let target: UInt64
        if let last {
            target = last
        } else {
            target = try await log.bounds().last
        }
        var position = try await logPosition().sequence
        while position < target {
            position = try await applyNext(from: log, after: position) ?? position
        }
        return position
    }

    /// Applies the log's entries as they come, until cancelled: what a standby does, so that it
    /// holds what the leader knows when it takes over. `onApplied` hears each new position.
    public func follow(
        _ log: any StoreLog,
        logger: Logger,
        onApplied: @Sendable (UInt64) -> Void = { _ in }
    ) async {
        var position = (try? await logPosition().sequence) ?? 0
        var quiet = 0
        var lastProblem = ""
        while !Task.isCancelled {
            do {
                if let next = try await applyNext(from: log, after: position) {
                    position = next
                    quiet = 0
                    onApplied(position)
                    continue
                }
                quiet += 1
                try await Task.sleep(for: .milliseconds(quiet < 40 ? 10 : 50))
            } catch is CancellationError {
                return
            } catch {
                // Logged once per distinct problem; tried again every second.
                if "\(error)" != lastProblem {
                    logger.error(
                        "could not apply the store log",
                        metadata: ["position": "\(position)", "error": "\(error)"]
                    )
                    lastProblem = "\(error)"
                }
                try? await Task.sleep(for: .seconds(1))
            }
        }
    }

    /// Applies entry `position + 1` if the log holds it; returns the new position, or nil if the
    /// log has nothing after `position` yet.
    private func applyNext(from log: any StoreLog, after position: UInt64) async throws -> UInt64? {
        let sequence = position + 1
        var read = try await log.entry(at: sequence)
        if read == nil {
            let bounds = try await log.bounds()
            if bounds.first > sequence { throw StoreLogGapError(needed: sequence, first: bounds.first) }
            guard bounds.last >= sequence else { return nil }
            // Appended between the read and the bounds: read it again.
            read = try await log.entry(at: sequence)
        }
        guard let data = read else {
            throw StoreLogError.unavailable("entry \(sequence) could not be read, though the log holds it")
        }
        let entry: Hangar_V1_StoreLogEntry
        let writes: [StoreWrite]
        do {
            entry = try Hangar_V1_StoreLogEntry(serializedBytes: data)
            writes = try entry.writes.map { try StoreWrite(logWrite: $0) }
        } catch {
            throw StoreLogDecodingError(
                description: "store log entry \(sequence) cannot be applied (written by a newer scheduler?): \(error)"
            )
        }
        _ = try await GroupCommitter.applyEntry(
            term: entry.term,
            at: entry.atMs,
            writes: writes,
            sequence: sequence,
            in: pool
        )
        return sequence
    }

    /// Makes this store the writer of `log` in `term`: catches up to the log's end, appends the
    /// term's first entry (which fences any older leader's later appends), and from then on
    /// appends every batch to the log before applying it. Call it before writing anything;
    /// `onDeposed` hears once if the log shows a newer leader (the writes then fail).
    public func lead(
        _ log: any StoreLog,
        term: UInt64,
        holder: String,
        maxEntryBytes: Int,
        onDeposed: @escaping @Sendable (StoreLogDeposedError) -> Void
    ) async throws {
        let position = try await catchUp(from: log)
        let end = try await log.bounds().last
        guard end >= position else {
            throw StoreLogError.notAfter(
                position,
                "the store log ends at entry \(end), before this store's entry \(position): the stream "
                    + "\(Streams.storeLog) was recreated, or this store belongs to another cluster; start this "
                    + "scheduler on an empty --db or on a backup of another scheduler's store"
            )
        }
        var writer = StoreLogWriter(
            log: log,
            term: term,
            holder: holder,
            maxEntryBytes: maxEntryBytes,
            onDeposed: onDeposed,
            position: position
        )
        var start = Hangar_V1_StoreLogEntry()
        start.term = term
        start.holder = holder
        start.atMs = unixMilliseconds()
        start.termStart = true
        let data = try start.serializedData()
        var after = position
        let sequence = try await writer.append(data, after: &after, committer: committer)
        _ = try await GroupCommitter.applyEntry(
            term: term,
            at: start.atMs,
            writes: [],
            sequence: sequence,
            in: pool
        )
        writer.position = sequence
        writer.applied = sequence
        committer.logWriter.withLock { $0 = writer }
    }
}
