import Foundation
import HangarNATS
import HangarShared

/// The store log in the JetStream stream `HANGAR_LOG` (subject `hangar.store.log`): file storage,
/// limits retention, as many copies as the other streams. An append is a publish with
/// `Nats-Expected-Last-Sequence` (the server refuses it if anything was appended after that
/// sequence) and `Nats-Msg-Id` (a retry is de-duplicated); it returns once a majority of the
/// stream's servers stored it.
public struct JetStreamStoreLog: StoreLog {
    /// How long the stream keeps an entry: a scheduler whose store is further behind starts from a
    /// backup of another's store (see README, "Cluster").
    public static let defaultRetention: Duration = .seconds(7 * 24 * 3600)

    private let nats: NATSConnection
    private let jetStream: JetStream
    private let timeout: Duration

    /// The log on `nats`, each call waiting at most `timeout` for the server.
    public init(nats: NATSConnection, timeout: Duration = .seconds(5)) throws(NATSError) {
        self.nats = nats
        self.jetStream = try nats.jetStream(timeout: timeout)
        self.timeout = timeout
    }

    /// Creates the stream (or updates it to) `replicas` copies keeping entries for `retention`.
    public func ensure(replicas: Int, retention: Duration = defaultRetention) async throws(NATSError) {
        var config = JetStreamStreamConfig(
            name: Streams.storeLog,
            subjects: [Subjects.storeLog],
            duplicateWindow: .seconds(600),
            maxAge: retention
        )
        config.replicas = replicas
        try await jetStream.ensureStream(config)
    }

    public func append(_ entry: Data, after sequence: UInt64, messageID: String) async throws(StoreLogError) -> UInt64 {
        do {
            let ack = try await nats.jetStreamPublish(
                Subjects.storeLog,
                payload: entry,
                messageID: messageID,
                headers: ["Nats-Expected-Last-Sequence": String(sequence)],
                timeout: timeout,
                waitForLeader: true
            )
            return ack.sequence
        } catch let error as NATSError where error.message.contains("wrong last sequence") {
            throw .notAfter(sequence, error.message)
        } catch {
            throw .unavailable("\(error)")
        }
    }

    public func entry(at sequence: UInt64) async throws(StoreLogError) -> Data? {
        do {
            return try await jetStream.message(stream: Streams.storeLog, sequence: sequence)?.payload
        } catch {
            throw .unavailable("\(error)")
        }
    }

    public func bounds() async throws(StoreLogError) -> (first: UInt64, last: UInt64) {
        let status: JetStreamStreamStatus?
        do {
            status = try await jetStream.streamStatus(Streams.storeLog)
        } catch {
            throw .unavailable("\(error)")
        }
        guard let status else { throw .unavailable("there is no stream \(Streams.storeLog)") }
        return (status.firstSequence, status.lastSequence)
    }
}
