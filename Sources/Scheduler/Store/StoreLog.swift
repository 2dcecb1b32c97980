import Foundation

/// The replicated log a leading scheduler's store writes ahead to (see `Store.lead`): an ordered
/// sequence of entries, numbered from 1, that only accepts an entry right after a given sequence.
/// `JetStreamStoreLog` keeps it in a replicated JetStream stream.
public protocol StoreLog: Sendable {
    /// Appends `entry` as the entry right after `sequence` and returns its sequence. The same
    /// `messageID` sent again (a retry whose first answer was lost) stores nothing new and returns
    /// the first one's sequence. Throws `StoreLogError.notAfter` if the log's last entry is not
    /// `sequence` (another writer appended meanwhile), `.unavailable` when it could not be reached.
    func append(_ entry: Data, after sequence: UInt64, messageID: String) async throws(StoreLogError) -> UInt64

    /// The entry at `sequence`, or nil if the log does not hold it (not written yet, or removed by
    /// its retention).
    func entry(at sequence: UInt64) async throws(StoreLogError) -> Data?

    /// The sequences of the oldest entry the log holds and of the newest it ever stored (0: none).
    func bounds() async throws(StoreLogError) -> (first: UInt64, last: UInt64)
}

/// Why the store log refused or could not take an entry.
public enum StoreLogError: Error, CustomStringConvertible {
    /// The log's last entry is not the one the writer named: someone else appended.
    case notAfter(UInt64, String)
    /// The log could not be reached or did not answer in time.
    case unavailable(String)

    public var description: String {
        switch self {
        case .notAfter(let sequence, let detail):
            "the store log has entries after \(sequence) that this scheduler did not write: \(detail)"
        case .unavailable(let detail): "the store log is unavailable: \(detail)"
        }
    }
}

/// A newer leader writes the store log: this scheduler must stop acting.
public struct StoreLogDeposedError: Error, CustomStringConvertible {
    /// The term of the entry that showed it.
    public var newerTerm: UInt64
    /// This scheduler's term.
    public var term: UInt64

    public var description: String {
        "this scheduler (term \(term)) no longer leads: a scheduler of term \(newerTerm) writes the store log"
    }
}

/// The store log holds no entry this store needs next.
public struct StoreLogGapError: Error, CustomStringConvertible {
    /// The entry this store needs.
    public var needed: UInt64
    /// The oldest entry the log holds.
    public var first: UInt64

    public var description: String {
        "the store log no longer holds entry \(needed) (its oldest is \(first)): this store is too far behind; "
            + "restore a backup of another scheduler's store (it records its log position) and start again"
    }
}
