/// The core's memory of recently ended jobs: the attempt (and node) each was counted from, so that a
/// result sent again after the job ended is told from a late one. Holds the last `limit` jobs,
/// oldest out first, keyed by ``CompactJobID``: no string is kept per job.
public struct EndedJobs: Sendable {
    private var counted: [CompactJobID: LostAttempt] = [:]
    private var order: [CompactJobID] = []
    private var head = 0
    /// How many ended jobs are remembered.
    public let limit: Int

    init(limit: Int) {
        self.limit = limit
    }

    /// Whether job `id` ended recently (its result may come again as a duplicate).
    public func remembers(_ id: String) -> Bool { counted[CompactJobID(id)] != nil }

    /// The attempt job `id` was counted from, if it ended recently.
    func countedAttempt(of id: String) -> LostAttempt? { counted[CompactJobID(id)] }

    /// Remembers that job `id` ended with `attempt` counted, forgetting the oldest beyond `limit`.
    mutating func remember(_ id: String, _ attempt: LostAttempt) {
        let key = CompactJobID(id)
        counted[key] = attempt
        order.append(key)
        if order.count - head > limit {
            counted.removeValue(forKey: order[head])
            head += 1
            if head > limit {
                order.removeFirst(head)
                head = 0
            }
        }
    }
}

/// A job id as a value of fixed size, for the core's memory of ended jobs (``SchedulerCore``
/// remembers the last 100,000): an id of up to 32 UTF-8 bytes (every id `JobID.make` gives has 24)
/// is kept in four words, so that this memory holds no string per job (no allocation kept alive,
/// no pointer to follow when hashing or comparing). A longer id, which only a caller naming its own
/// jobs can give, keeps its string. Two keys are equal exactly when their ids are.
struct CompactJobID: Hashable, Sendable {
    private struct Words: Hashable, Sendable {
        var a: UInt64 = 0, b: UInt64 = 0, c: UInt64 = 0, d: UInt64 = 0
    }

    private var words = Words()
    /// The id's length in UTF-8 bytes when it is in `words`; `UInt8.max` when it is in `long`.
    private var count: UInt8
    private var long: String?

    init(_ id: String) {
        var id = id
        var words = Words()
        let count = id.withUTF8 { utf8 -> Int? in
            guard utf8.count <= MemoryLayout<Words>.size else { return nil }
            withUnsafeMutableBytes(of: &words) { $0.copyMemory(from: UnsafeRawBufferPointer(utf8)) }
            return utf8.count
        }
        if let count {
            self.words = words
            self.count = UInt8(count)
            self.long = nil
        } else {
            self.count = .max
            self.long = id
        }
    }
}
