import Foundation

extension NATSConnection {
    /// Publishes into a JetStream stream and waits for the server's acknowledgement (the PubAck),
    /// without blocking a thread: a request to `subject` whose reply is the PubAck. `messageID`
    /// (the `Nats-Msg-Id` header) de-duplicates within the stream's duplicate window.
    ///
    /// Throws `.noResponders` when no stream captures `subject` (or JetStream is off), `.timeout`
    /// when the server does not answer in time, and `.status` with the server's description when
    /// the stream refuses the message (e.g. full).
    ///
    /// With `waitForLeader`, a publish that finds no responders is sent again every 100 ms until
    /// `timeout` has passed since the first try: in a JetStream cluster a stream has no leader for a
    /// few seconds after its leader's server dies (Raft elects another), and a message nobody
    /// received was not stored, so sending it again cannot store it twice.
    public func jetStreamPublish(
        _ subject: String,
        payload: Data,
        messageID: String? = nil,
        headers: [String: String] = [:],
        timeout: Duration = .seconds(5),
        waitForLeader: Bool = false
    ) async throws -> JetStreamPublishAck {
        var headers = headers
        if let messageID { headers["Nats-Msg-Id"] = messageID }
        let deadline = ContinuousClock.now + timeout
        while true {
            do {
                let left = ContinuousClock.now.duration(to: deadline)
                let answer = try await request(
                    subject,
                    payload: payload,
                    headers: headers,
                    timeout: max(left, .milliseconds(10))
                )
                return try JetStreamPublishAck(decoding: answer.payload, subject: subject)
            } catch let error as NATSError where error.kind == .noResponders && waitForLeader {
                guard ContinuousClock.now + .milliseconds(100) < deadline else { throw error }
                try await Task.sleep(for: .milliseconds(100))
            }
        }
    }
}

extension JetStreamPublishAck {
    /// The server's JSON answer to a stream publish: `{"stream":…,"seq":…,"duplicate":…}` or
    /// `{"error":{"code":…,"description":…}}`.
    private struct Wire: Decodable {
        struct Failure: Decodable {
            var code: Int?
            var description: String?
        }
        var stream: String?
        var seq: UInt64?
        var duplicate: Bool?
        var error: Failure?
    }

    init(decoding payload: Data, subject: String) throws(NATSError) {
        guard let wire = try? JSONDecoder().decode(Wire.self, from: payload) else {
            throw NATSError(
                kind: .invalidArgument,
                operation: "jetstream publish(\(subject))",
                message: "the answer is not a JetStream PubAck: \(String(decoding: payload.prefix(200), as: UTF8.self))"
            )
        }
        if let error = wire.error {
            throw NATSError(
                kind: .status(Int32(error.code ?? 0)),
                operation: "jetstream publish(\(subject))",
                message: error.description ?? "refused by the server (code \(error.code ?? 0))"
            )
        }
        guard let stream = wire.stream, let sequence = wire.seq else {
            throw NATSError(
                kind: .invalidArgument,
                operation: "jetstream publish(\(subject))",
                message: "the PubAck names no stream or sequence"
            )
        }
        self.init(stream: stream, sequence: sequence, duplicate: wire.duplicate ?? false)
    }
}
